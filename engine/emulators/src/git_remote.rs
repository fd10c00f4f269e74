//! A config repository's bare remote, as the people of the story edit it: an initial commit on
//! `main` and branches with files committed on top (what `git commit` + `git push` would make).
//! Used by the sandbox, the tests and the benchmarks to build repositories without a work tree.

use std::path::Path;

use git2::{Repository, Signature};

/// Creates the bare remote with one commit on `main` holding `files`.
pub fn init_remote(remote: &Path, files: &[(&str, &str)]) -> Result<(), git2::Error> {
    let repo = Repository::init_bare(remote)?;
    let sig = Signature::now("tkgops sandbox", "sandbox@tkgops.invalid")?;
    let tree = build_tree(&repo, None, files)?;
    let tree = repo.find_tree(tree)?;
    repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        "Initial config repository",
        &tree,
        &[],
    )?;
    repo.set_head("refs/heads/main")?;
    Ok(())
}

/// Commits `files` on top of `base` as a new branch `branch` in the bare repository `remote`.
pub fn commit_on_branch(
    remote: &Path,
    base: &str,
    branch: &str,
    message: &str,
    files: &[(&str, &str)],
) -> Result<String, git2::Error> {
    let repo = Repository::open_bare(remote)?;
    let parent = repo
        .find_reference(&format!("refs/heads/{base}"))?
        .peel_to_commit()?;
    let tree = build_tree(&repo, Some(parent.tree()?), files)?;
    let tree = repo.find_tree(tree)?;
    let sig = Signature::now("platform-dev", "platform-dev@example.invalid")?;
    let oid = repo.commit(
        Some(&format!("refs/heads/{branch}")),
        &sig,
        &sig,
        message,
        &tree,
        &[&parent],
    )?;
    Ok(oid.to_string())
}

/// Commits the removal of `paths` on top of `base` as a new branch `branch` in the bare
/// repository `remote` (what `git rm` + `git commit` + `git push` would make). Returns the
/// commit SHA.
///
/// Errors: git errors, e.g. when `base` does not exist.
pub fn remove_on_branch(
    remote: &Path,
    base: &str,
    branch: &str,
    message: &str,
    paths: &[&str],
) -> Result<String, git2::Error> {
    let repo = Repository::open_bare(remote)?;
    let parent = repo
        .find_reference(&format!("refs/heads/{base}"))?
        .peel_to_commit()?;
    let mut index = git2::Index::new()?;
    index.read_tree(&parent.tree()?)?;
    for path in paths {
        index.remove_path(Path::new(path))?;
    }
    let tree = repo.find_tree(index.write_tree_to(&repo)?)?;
    let sig = Signature::now("platform-dev", "platform-dev@example.invalid")?;
    let oid = repo.commit(
        Some(&format!("refs/heads/{branch}")),
        &sig,
        &sig,
        message,
        &tree,
        &[&parent],
    )?;
    Ok(oid.to_string())
}

fn build_tree(
    repo: &Repository,
    base: Option<git2::Tree<'_>>,
    files: &[(&str, &str)],
) -> Result<git2::Oid, git2::Error> {
    // Use an in-memory index so nested paths (clusters/<name>/file) are handled by libgit2.
    let mut index = git2::Index::new()?;
    if let Some(t) = &base {
        index.read_tree(t)?;
    }
    for (path, content) in files {
        let blob = repo.blob(content.as_bytes())?;
        let entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: content.len() as u32,
            id: blob,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        };
        index.add(&entry)?;
    }
    index.write_tree_to(repo)
}

/// A rejection of the next push to one branch, armed by [`reject_next_push`].
#[derive(Debug)]
pub struct PushRejection {
    lock: std::path::PathBuf,
    packs: std::path::PathBuf,
    before: usize,
}

/// Arms the bare remote to reject the next push to `branch` once, as a remote does whose ref
/// is locked by a concurrent update (git's `cannot lock ref`; libgit2's local transport reports
/// it per ref as the update's rejection reason): it takes the branch's ref lock
/// (`refs/heads/<branch>.lock`). [`PushRejection::lift_after_attempt`] releases it once a push
/// attempt sent its objects (a new pack under `objects/pack`).
///
/// Errors: I/O errors creating the lock, e.g. when another update holds it.
pub fn reject_next_push(remote: &Path, branch: &str) -> std::io::Result<PushRejection> {
    let lock = remote.join("refs/heads").join(format!("{branch}.lock"));
    if let Some(dir) = lock.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock)?;
    let packs = remote.join("objects/pack");
    let before = count_packs(&packs);
    Ok(PushRejection {
        lock,
        packs,
        before,
    })
}

fn count_packs(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count()
    })
}

impl PushRejection {
    /// Waits (polling every 20 ms, up to `timeout`) until a push attempt sent its objects to
    /// the remote, then releases the lock so the next attempt succeeds. Returns whether a push
    /// with new objects was rejected (`false`: none came within `timeout`, e.g. a retry whose
    /// objects the remote already holds; the lock is released all the same, so a rejection
    /// lasts at most `timeout`).
    pub async fn lift_after_attempt(self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rejected = false;
        while tokio::time::Instant::now() < deadline {
            if count_packs(&self.packs) > self.before {
                rejected = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Give the attempt's ref update the moment it needs to see the lock and fail.
        if rejected {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let _ = std::fs::remove_file(&self.lock);
        rejected
    }
}
