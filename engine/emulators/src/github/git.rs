//! git2 operations of the GitHub emulator on the bare repository (the config repository's remote).
//!
//! Every function opens the repository afresh: `git2::Repository` is not `Sync`, opening a local
//! bare repository takes microseconds, and it always sees what tests pushed in the meantime.

use std::path::Path;

use git2::{BranchType, Oid, Repository, Signature};

/// One changed file between two commits, in the terms of GitHub's "diff entry".
pub(super) struct FileChange {
    pub filename: String,
    pub previous_filename: Option<String>,
    /// `added`, `removed`, `modified`, `renamed`, `copied`, `changed` or `unchanged`.
    pub status: &'static str,
    pub additions: usize,
    pub deletions: usize,
    /// Blob id of the new side (the old side for removed files).
    pub blob_sha: String,
    /// Unified diff hunks without the file header; `None` for binary files.
    pub patch: Option<String>,
}

/// Outcome of a merge attempt.
pub(super) enum MergeOutcome {
    /// The merge commit created on the base branch.
    Merged(Oid),
    /// The trees conflict; nothing was written.
    Conflict,
}

pub(super) fn open(path: &Path) -> Result<Repository, git2::Error> {
    Repository::open_bare(path).or_else(|_| Repository::open(path))
}

/// The tip of local branch `name`, or `None` when the branch does not exist.
pub(super) fn branch_tip(repo: &Repository, name: &str) -> Result<Option<Oid>, git2::Error> {
    match repo.find_branch(name, BranchType::Local) {
        Ok(b) => Ok(b.get().peel_to_commit().ok().map(|c| c.id())),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) if e.code() == git2::ErrorCode::InvalidSpec => Ok(None),
        Err(e) => Err(e),
    }
}

/// Points `refs/pull/<n>/head` at `oid` (GitHub's read-only PR ref).
pub(super) fn set_pull_ref(repo: &Repository, n: u64, oid: Oid) -> Result<(), git2::Error> {
    let name = format!("refs/pull/{n}/head");
    if repo.refname_to_id(&name).ok() == Some(oid) {
        return Ok(());
    }
    repo.reference(
        &name,
        oid,
        true,
        "tkgops github emulator: pull request head",
    )?;
    Ok(())
}

/// Resolves a ref name, branch, tag or (full) commit SHA to a commit id; `None` if unknown.
pub(super) fn resolve_commit(repo: &Repository, spec: &str) -> Option<Oid> {
    if spec.is_empty() || spec.starts_with('-') {
        return None;
    }
    let obj = repo.revparse_single(spec).ok()?;
    obj.peel_to_commit().ok().map(|c| c.id())
}

/// Whether `head` merges cleanly into `base`.
pub(super) fn mergeable(repo: &Repository, base: Oid, head: Oid) -> Result<bool, git2::Error> {
    let b = repo.find_commit(base)?;
    let h = repo.find_commit(head)?;
    let idx = repo.merge_commits(&b, &h, None)?;
    Ok(!idx.has_conflicts())
}

/// Number of commits reachable from `head` but not from `base`.
pub(super) fn commit_count(repo: &Repository, base: Oid, head: Oid) -> Result<usize, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push(head)?;
    walk.hide(base)?;
    Ok(walk.count())
}

/// The signature GitHub gives `login` on commits it makes for them:
/// `login <login@users.noreply.github.com>` (brackets of an App's `name[bot]` dropped).
fn user_signature(login: &str) -> Result<Signature<'static>, git2::Error> {
    let email = format!("{}@users.noreply.github.com", login.replace(['[', ']'], ""));
    Signature::now(login, &email)
}

/// The committer of every commit GitHub makes on the web (merges, squashes, rebases).
fn github_committer() -> Result<Signature<'static>, git2::Error> {
    Signature::now("GitHub", "noreply@github.com")
}

/// The commits of a pull request whose head is `head` and whose base was `base`: reachable
/// from `head` but not from `base`, oldest first (parents before children, as GitHub lists
/// `GET /pulls/{n}/commits`).
pub(super) fn pull_commits(
    repo: &Repository,
    base: Oid,
    head: Oid,
) -> Result<Vec<Oid>, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME | git2::Sort::REVERSE)?;
    walk.push(head)?;
    walk.hide(base)?;
    walk.collect()
}

/// The tip of `base_branch` and the tree of its merge with `head` (`None` on conflicts).
fn merge_tree(
    repo: &Repository,
    base_branch: &str,
    head: Oid,
) -> Result<(Oid, Option<Oid>), git2::Error> {
    let base_tip = branch_tip(repo, base_branch)?.ok_or_else(|| {
        git2::Error::from_str(&format!("base branch {base_branch} does not exist"))
    })?;
    let b = repo.find_commit(base_tip)?;
    let h = repo.find_commit(head)?;
    let mut idx = repo.merge_commits(&b, &h, None)?;
    if idx.has_conflicts() {
        return Ok((base_tip, None));
    }
    Ok((base_tip, Some(idx.write_tree_to(repo)?)))
}

/// Creates the merge commit of `head` into branch `base_branch` (parents: base tip, head;
/// author `merger`, committer GitHub) and moves the branch to it. Fails with
/// [`MergeOutcome::Conflict`] when the trees conflict.
pub(super) fn merge_into(
    repo: &Repository,
    base_branch: &str,
    head: Oid,
    message: &str,
    merger: &str,
) -> Result<MergeOutcome, git2::Error> {
    let (base_tip, Some(tree_id)) = merge_tree(repo, base_branch, head)? else {
        return Ok(MergeOutcome::Conflict);
    };
    let b = repo.find_commit(base_tip)?;
    let h = repo.find_commit(head)?;
    let tree = repo.find_tree(tree_id)?;
    let refname = format!("refs/heads/{base_branch}");
    let oid = repo.commit(
        Some(&refname),
        &user_signature(merger)?,
        &github_committer()?,
        message,
        &tree,
        &[&b, &h],
    )?;
    Ok(MergeOutcome::Merged(oid))
}

/// Squash-merges `head` into branch `base_branch`: one commit whose only parent is the base
/// tip and whose tree is the merge result (author `author`, committer GitHub), then moves the
/// branch to it. [`MergeOutcome::Conflict`] when the trees conflict.
pub(super) fn squash_into(
    repo: &Repository,
    base_branch: &str,
    head: Oid,
    message: &str,
    author: &str,
) -> Result<MergeOutcome, git2::Error> {
    let (base_tip, Some(tree_id)) = merge_tree(repo, base_branch, head)? else {
        return Ok(MergeOutcome::Conflict);
    };
    let b = repo.find_commit(base_tip)?;
    let tree = repo.find_tree(tree_id)?;
    let refname = format!("refs/heads/{base_branch}");
    let oid = repo.commit(
        Some(&refname),
        &user_signature(author)?,
        &github_committer()?,
        message,
        &tree,
        &[&b],
    )?;
    Ok(MergeOutcome::Merged(oid))
}

/// Rebase-merges: re-applies each of `commits` (the pull request's, oldest first; merge
/// commits are left out, as `git rebase` does) onto the tip of `base_branch` as a new commit
/// with the same author (name, e-mail, time) and message, committer GitHub and one parent,
/// then moves the branch to the last one ([`MergeOutcome::Merged`]). Nothing is written
/// ([`MergeOutcome::Conflict`]) when a commit does not apply cleanly, when there is nothing to
/// re-apply, or when the result's tree differs from the merge of `head` (GitHub refuses an
/// "unsafe" rebase).
pub(super) fn rebase_onto(
    repo: &Repository,
    base_branch: &str,
    head: Oid,
    commits: &[Oid],
) -> Result<MergeOutcome, git2::Error> {
    let (base_tip, Some(expected_tree)) = merge_tree(repo, base_branch, head)? else {
        return Ok(MergeOutcome::Conflict);
    };
    let committer = github_committer()?;
    let mut onto = repo.find_commit(base_tip)?;
    let mut replayed = 0usize;
    for oid in commits {
        let c = repo.find_commit(*oid)?;
        if c.parent_count() > 1 {
            continue;
        }
        let mut idx = repo.cherrypick_commit(&c, &onto, 0, None)?;
        if idx.has_conflicts() {
            return Ok(MergeOutcome::Conflict);
        }
        let tree = repo.find_tree(idx.write_tree_to(repo)?)?;
        let message = String::from_utf8_lossy(c.message_bytes()).into_owned();
        let new = repo.commit(None, &c.author(), &committer, &message, &tree, &[&onto])?;
        onto = repo.find_commit(new)?;
        replayed += 1;
    }
    if replayed == 0 || onto.tree_id() != expected_tree {
        return Ok(MergeOutcome::Conflict);
    }
    repo.reference_matching(
        &format!("refs/heads/{base_branch}"),
        onto.id(),
        true,
        base_tip,
        "tkgops github emulator: rebase merge",
    )?;
    Ok(MergeOutcome::Merged(onto.id()))
}

/// One commit as `GET /pulls/{n}/commits` shows it.
pub(super) struct CommitView {
    pub sha: String,
    pub tree: String,
    pub message: String,
    pub author_name: String,
    pub author_email: String,
    /// Author time, UTC.
    pub author_date: chrono::DateTime<chrono::Utc>,
    pub committer_name: String,
    pub committer_email: String,
    pub committer_date: chrono::DateTime<chrono::Utc>,
    pub parents: Vec<String>,
}

/// The fields of commit `oid` that the commit listings show.
pub(super) fn commit_view(repo: &Repository, oid: Oid) -> Result<CommitView, git2::Error> {
    let c = repo.find_commit(oid)?;
    let utc = |t: git2::Time| chrono::DateTime::from_timestamp(t.seconds(), 0).unwrap_or_default();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (a, m) = (c.author(), c.committer());
    Ok(CommitView {
        sha: oid.to_string(),
        tree: c.tree_id().to_string(),
        message: text(c.message_bytes()),
        author_name: text(a.name_bytes()),
        author_email: text(a.email_bytes()),
        author_date: utc(a.when()),
        committer_name: text(m.name_bytes()),
        committer_email: text(m.email_bytes()),
        committer_date: utc(m.when()),
        parents: c.parent_ids().map(|p| p.to_string()).collect(),
    })
}

/// The files changed by `head` relative to its merge base with `base` (GitHub's three-dot diff).
pub(super) fn changed_files(
    repo: &Repository,
    base: Oid,
    head: Oid,
) -> Result<Vec<FileChange>, git2::Error> {
    let mb = repo.merge_base(base, head).unwrap_or(base);
    let old_tree = repo.find_commit(mb)?.tree()?;
    let new_tree = repo.find_commit(head)?.tree()?;
    let mut diff = repo.diff_tree_to_tree(Some(&old_tree), Some(&new_tree), None)?;
    let mut find = git2::DiffFindOptions::new();
    find.renames(true);
    diff.find_similar(Some(&mut find))?;
    let mut out = Vec::new();
    for i in 0..diff.deltas().len() {
        let Some(delta) = diff.get_delta(i) else {
            continue;
        };
        let status = match delta.status() {
            git2::Delta::Added | git2::Delta::Untracked => "added",
            git2::Delta::Deleted => "removed",
            git2::Delta::Modified => "modified",
            git2::Delta::Renamed => "renamed",
            git2::Delta::Copied => "copied",
            git2::Delta::Unmodified => "unchanged",
            _ => "changed",
        };
        let new_path = delta
            .new_file()
            .path()
            .map(|p| p.to_string_lossy().into_owned());
        let old_path = delta
            .old_file()
            .path()
            .map(|p| p.to_string_lossy().into_owned());
        let filename = new_path
            .clone()
            .or_else(|| old_path.clone())
            .unwrap_or_default();
        let previous_filename = if status == "renamed" { old_path } else { None };
        let blob = if status == "removed" {
            delta.old_file().id()
        } else {
            delta.new_file().id()
        };
        let binary = delta.flags().is_binary();
        let (mut additions, mut deletions, mut patch) = (0, 0, None);
        if let Ok(Some(mut p)) = git2::Patch::from_diff(&diff, i) {
            if let Ok((_, a, d)) = p.line_stats() {
                additions = a;
                deletions = d;
            }
            if !binary && !p.delta().flags().is_binary() {
                if let Ok(buf) = p.to_buf() {
                    let text = String::from_utf8_lossy(&buf);
                    let hunks: Vec<&str> =
                        text.lines().skip_while(|l| !l.starts_with("@@")).collect();
                    if !hunks.is_empty() {
                        patch = Some(hunks.join("\n"));
                    }
                }
            }
        }
        out.push(FileChange {
            filename,
            previous_filename,
            status,
            additions,
            deletions,
            blob_sha: blob.to_string(),
            patch,
        });
    }
    Ok(out)
}

/// The tip of every local branch: name → commit.
pub(super) fn branch_tips(
    repo: &Repository,
) -> Result<std::collections::BTreeMap<String, Oid>, git2::Error> {
    let mut out = std::collections::BTreeMap::new();
    for b in repo.branches(Some(BranchType::Local))? {
        let (b, _) = b?;
        if let (Ok(Some(name)), Ok(commit)) = (b.name(), b.get().peel_to_commit()) {
            out.insert(name.to_string(), commit.id());
        }
    }
    Ok(out)
}

/// Whether `ancestor` is `descendant` or one of its ancestors.
pub(super) fn is_ancestor(repo: &Repository, ancestor: Oid, descendant: Oid) -> bool {
    ancestor == descendant
        || repo
            .graph_descendant_of(descendant, ancestor)
            .unwrap_or(false)
}

/// One commit of a `push` payload.
pub(super) struct PushCommit {
    pub id: String,
    pub tree_id: String,
    pub message: String,
    /// RFC 3339 with the committer's offset.
    pub timestamp: String,
    pub author_name: String,
    pub author_email: String,
    pub committer_name: String,
    pub committer_email: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub modified: Vec<String>,
}

/// The commit `oid` with the files it changed relative to its first parent.
pub(super) fn commit_info(repo: &Repository, oid: Oid) -> Result<PushCommit, git2::Error> {
    let c = repo.find_commit(oid)?;
    let tree = c.tree()?;
    let parent_tree = match c.parents().next() {
        Some(p) => Some(p.tree()?),
        None => None,
    };
    let diff = repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)?;
    let (mut added, mut removed, mut modified) = (Vec::new(), Vec::new(), Vec::new());
    for d in diff.deltas() {
        let path = |f: git2::DiffFile<'_>| {
            f.path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match d.status() {
            git2::Delta::Added => added.push(path(d.new_file())),
            git2::Delta::Deleted => removed.push(path(d.old_file())),
            _ => modified.push(path(d.new_file())),
        }
    }
    let time = c.committer().when();
    let timestamp = chrono::FixedOffset::east_opt(time.offset_minutes() * 60)
        .and_then(|off| {
            chrono::DateTime::from_timestamp(time.seconds(), 0).map(|t| t.with_timezone(&off))
        })
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    let text = |s: Result<&str, git2::Error>| s.unwrap_or("").to_string();
    let (author, committer) = (c.author(), c.committer());
    Ok(PushCommit {
        id: oid.to_string(),
        tree_id: tree.id().to_string(),
        message: text(c.message()),
        timestamp,
        author_name: text(author.name()),
        author_email: text(author.email()),
        committer_name: text(committer.name()),
        committer_email: text(committer.email()),
        added,
        removed,
        modified,
    })
}

/// The commits a push of `branch` from `before` (`None`: a new branch) to `after` brings,
/// oldest first, at most `limit` (the newest ones). For a new branch these are the commits
/// no other branch has.
pub(super) fn push_commits(
    repo: &Repository,
    branch: &str,
    before: Option<Oid>,
    after: Oid,
    limit: usize,
) -> Result<Vec<PushCommit>, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)?;
    walk.push(after)?;
    match before {
        Some(b) => {
            // A forced push: hide what both sides share.
            let base = repo.merge_base(b, after).unwrap_or(b);
            walk.hide(base)?;
        }
        None => {
            for (name, tip) in branch_tips(repo)? {
                if name != branch {
                    walk.hide(tip)?;
                }
            }
        }
    }
    let mut ids: Vec<Oid> = walk.take(limit).collect::<Result<_, _>>()?;
    ids.reverse();
    ids.into_iter().map(|o| commit_info(repo, o)).collect()
}
