//! git2 access to the config repository: fetch, diff between commits, read files at a commit.
//!
//! The bot keeps a bare mirror of the config repository in its state directory and fetches
//! only the refs it needs: the default branch (`refs/heads/<branch>`) and pull request heads
//! (`refs/pull/<N>/head`, which GitHub serves read-only, even for forks). The remote is a
//! `https://` URL with a token (GitHub) or a local path / `file://` URL (tests, sandbox).
//! All functions are blocking; async callers use `tokio::task::spawn_blocking`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use git2::{AutotagOption, Cred, DiffOptions, FetchOptions, Oid, RemoteCallbacks, Repository};

use tkgops_domain::files::TreeReader;

/// Errors of git operations.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// A libgit2 operation failed.
    #[error("git {op}: {source}")]
    Git {
        /// What was being done (e.g. "fetch refs/pull/7/head").
        op: String,
        /// The libgit2 error (never contains the token: it is passed through a callback).
        source: git2::Error,
    },
    /// A SHA or ref did not resolve.
    #[error("git: {0} not found")]
    NotFound(String),
}

fn git(op: impl Into<String>) -> impl FnOnce(git2::Error) -> GitError {
    let op = op.into();
    move |source| GitError::Git { op, source }
}

/// The bot's bare mirror of the config repository.
///
/// Holds one open libgit2 repository (opening one costs about a millisecond, more than a
/// whole diff), shared by clones and serialised by a mutex: every operation is short and
/// blocking, and callers run them on `spawn_blocking` threads.
#[derive(Clone)]
pub struct ConfigRepo {
    path: PathBuf,
    remote_url: String,
    /// The HTTPS password for GitHub remotes; replaced before fetches when it is refreshed
    /// (GitHub App installation tokens last an hour).
    token: Arc<Mutex<Option<String>>>,
    repo: Arc<Mutex<Repository>>,
}

impl std::fmt::Debug for ConfigRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigRepo")
            .field("path", &self.path)
            .field("remote_url", &self.remote_url)
            .finish()
    }
}

impl ConfigRepo {
    /// Opens (or initialises) the bare mirror at `path` fetching from `remote_url`; `token` is
    /// used as the HTTPS password (`x-access-token`) for GitHub remotes.
    ///
    /// Errors: [`GitError::Git`] when the directory cannot be initialised.
    pub fn open(
        path: &Path,
        remote_url: &str,
        token: Option<String>,
    ) -> Result<ConfigRepo, GitError> {
        let repo = match Repository::open_bare(path) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(path).ok();
                Repository::init_bare(path).map_err(git("init"))?
            }
        };
        Ok(ConfigRepo {
            path: path.to_path_buf(),
            remote_url: remote_url.to_string(),
            token: Arc::new(Mutex::new(token)),
            repo: Arc::new(Mutex::new(repo)),
        })
    }

    /// Removes the lock files a process killed in the middle of a write left in the mirror
    /// (`refs/**.lock`, `logs/**.lock`, and `HEAD.lock`, `config.lock`, `packed-refs.lock` at
    /// the top): libgit2, like git, refuses to write a ref whose `.lock` file exists, so a kill
    /// at the wrong instant would otherwise fail every later pin or fetch of that ref for good
    /// (found by the chaos harness: a SIGKILL during the trusted-policy pin). Returns the removed
    /// paths, relative to the mirror.
    ///
    /// Call it only while this process is the mirror's one writer: after the journal of the same
    /// state directory is open (sled holds it exclusively) and, with leader election, the Lease
    /// is held.
    ///
    /// Errors: [`GitError::Git`] when a directory cannot be read or a lock file removed.
    pub fn remove_stale_locks(&self) -> Result<Vec<String>, GitError> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    walk(&path, root, out)?;
                } else if path.extension().is_some_and(|x| x == "lock") {
                    std::fs::remove_file(&path)?;
                    let rel = path.strip_prefix(root).unwrap_or(&path);
                    out.push(rel.display().to_string());
                }
            }
            Ok(())
        }
        let _repo = self.repo()?;
        let io = |e: std::io::Error| GitError::Git {
            op: "remove stale lock files".into(),
            source: git2::Error::from_str(&e.to_string()),
        };
        let mut removed = Vec::new();
        for dir in ["refs", "logs"] {
            walk(&self.path.join(dir), &self.path, &mut removed).map_err(io)?;
        }
        for top in [
            "HEAD.lock",
            "config.lock",
            "packed-refs.lock",
            "FETCH_HEAD.lock",
        ] {
            let path = self.path.join(top);
            if path.exists() {
                std::fs::remove_file(&path).map_err(io)?;
                removed.push(top.to_string());
            }
        }
        Ok(removed)
    }

    /// Whether the remote is reached over HTTPS (and needs a token).
    pub fn is_https(&self) -> bool {
        self.remote_url.starts_with("https://")
    }

    /// Replaces the token used for the next fetches (all clones share it).
    pub fn set_token(&self, token: Option<String>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    fn repo(&self) -> Result<MutexGuard<'_, Repository>, GitError> {
        // A panic while holding the lock cannot leave libgit2 state inconsistent for readers.
        Ok(self.repo.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Fetches `refspecs` (e.g. `+refs/pull/7/head:refs/tkgops/pull/7`) from the remote.
    ///
    /// Errors: [`GitError::Git`] for network, authentication or missing-ref failures.
    pub fn fetch(&self, refspecs: &[String]) -> Result<(), GitError> {
        let repo = self.repo()?;
        let mut remote = repo
            .remote_anonymous(&self.remote_url)
            .map_err(git("remote"))?;
        let callbacks = self.callbacks();
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(callbacks);
        fo.download_tags(AutotagOption::None);
        fo.proxy_options(self.proxy_options());
        let specs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
        remote
            .fetch(&specs, Some(&mut fo), None)
            .map_err(git(format!("fetch {}", refspecs.join(" "))))
    }

    /// The proxy of fetches and pushes: the one the environment gives for the remote URL by
    /// the rules of [`tkgops_providers::proxy`] (`HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`,
    /// `NO_PROXY`), the same as the bot's other clients; none for a path or `file://` remote.
    /// libgit2's own detection (`ProxyOptions::auto`) is not used: it also reads git's
    /// `http.proxy` configuration and has its own `NO_PROXY` rules.
    fn proxy_options(&self) -> git2::ProxyOptions<'static> {
        let mut po = git2::ProxyOptions::new();
        if let Some(proxy) = tkgops_providers::proxy::proxy_for(&self.remote_url) {
            tracing::debug!(proxy = %proxy.redacted(), "git goes through a proxy");
            po.url(proxy.expose());
        }
        po
    }

    /// The credential callbacks of fetches and pushes: the token as the HTTPS password
    /// (`x-access-token`), offered once (libgit2 asks again after a rejection, forever if the
    /// answer never changes).
    fn callbacks(&self) -> RemoteCallbacks<'static> {
        let mut callbacks = RemoteCallbacks::new();
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut offered = false;
        callbacks.credentials(move |_url, _user, _allowed| {
            if offered {
                return Err(git2::Error::from_str(
                    "the git remote rejected the credentials (token expired, revoked or without access)",
                ));
            }
            offered = true;
            match &token {
                Some(t) => Cred::userpass_plaintext("x-access-token", t),
                None => Cred::default(),
            }
        });
        callbacks
    }

    /// The names of the directories directly under `dir` (e.g. `clusters`) at commit `sha`,
    /// sorted; empty when `dir` does not exist there.
    ///
    /// Errors: [`GitError::NotFound`] when `sha` is unknown.
    pub fn list_dirs(&self, sha: &str, dir: &str) -> Result<Vec<String>, GitError> {
        let repo = self.repo()?;
        let tree = repo
            .find_commit(oid(sha)?)
            .map_err(|_| GitError::NotFound(sha.to_string()))?
            .tree()
            .map_err(git("tree"))?;
        let Ok(entry) = tree.get_path(Path::new(dir)) else {
            return Ok(Vec::new());
        };
        let Ok(sub) = repo.find_tree(entry.id()) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<String> = sub
            .iter()
            .filter(|e| e.kind() == Some(git2::ObjectType::Tree))
            .filter_map(|e| e.name().ok().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Creates a commit on top of `parent` that writes `files` (path, content), authored and
    /// committed by `author` (name, e-mail) with `message`; returns its SHA. Nothing is pushed.
    /// The same inputs give the same tree (the commit SHA also depends on the time).
    ///
    /// Errors: [`GitError`] when `parent` is unknown or an object cannot be written.
    pub fn commit_files(
        &self,
        parent: &str,
        files: &[(String, Vec<u8>)],
        message: &str,
        author: (&str, &str),
    ) -> Result<String, GitError> {
        self.commit_files_at(parent, files, message, author, None)
    }

    /// As [`Self::commit_files`], with author and committer time `when` (seconds since the
    /// epoch, UTC) instead of now: the same inputs then give the same commit SHA, so a
    /// restarted bot recreates a commit instead of making a second one.
    ///
    /// Errors: as [`Self::commit_files`].
    pub fn commit_files_at(
        &self,
        parent: &str,
        files: &[(String, Vec<u8>)],
        message: &str,
        author: (&str, &str),
        when: Option<i64>,
    ) -> Result<String, GitError> {
        let repo = self.repo()?;
        let parent = repo
            .find_commit(oid(parent)?)
            .map_err(|_| GitError::NotFound(parent.to_string()))?;
        let base = parent.tree().map_err(git("tree"))?;
        let mut update = git2::build::TreeUpdateBuilder::new();
        for (path, content) in files {
            let blob = repo.blob(content).map_err(git("write blob"))?;
            update.upsert(path.as_str(), blob, git2::FileMode::Blob);
        }
        let tree_id = update
            .create_updated(&repo, &base)
            .map_err(git("write tree"))?;
        let tree = repo.find_tree(tree_id).map_err(git("tree"))?;
        let sig = match when {
            Some(t) => git2::Signature::new(author.0, author.1, &git2::Time::new(t, 0)),
            None => git2::Signature::now(author.0, author.1),
        }
        .map_err(git("signature"))?;
        let id = repo
            .commit(None, &sig, &sig, message, &tree, &[&parent])
            .map_err(git("commit"))?;
        Ok(id.to_string())
    }

    /// Pushes commit `sha` to branch `branch` of the remote, replacing what the branch held
    /// (the branch is the bot's own: a bump branch of a schedule).
    ///
    /// Errors: [`GitError::Git`] for network or authentication failures, or when the remote
    /// rejects the update (e.g. a protected branch), with its reason.
    pub fn push_branch(&self, sha: &str, branch: &str) -> Result<(), GitError> {
        let repo = self.repo()?;
        let local = format!("refs/tkgops/push/{branch}");
        repo.reference(&local, oid(sha)?, true, "tkgops push")
            .map_err(git("ref"))?;
        let mut remote = repo
            .remote_anonymous(&self.remote_url)
            .map_err(git("remote"))?;
        let mut callbacks = self.callbacks();
        let rejected: Arc<Mutex<Option<String>>> = Arc::default();
        let r = rejected.clone();
        callbacks.push_update_reference(move |refname, status| {
            if let Some(why) = status {
                *r.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{refname}: {why}"));
            }
            Ok(())
        });
        let mut po = git2::PushOptions::new();
        po.remote_callbacks(callbacks);
        po.proxy_options(self.proxy_options());
        let spec = format!("+{local}:refs/heads/{branch}");
        remote
            .push(&[spec.as_str()], Some(&mut po))
            .map_err(git(format!("push {branch}")))?;
        let why = rejected.lock().unwrap_or_else(|p| p.into_inner()).take();
        match why {
            Some(why) => Err(GitError::Git {
                op: format!("push {branch}"),
                source: git2::Error::from_str(&format!("the remote rejected the update: {why}")),
            }),
            None => Ok(()),
        }
    }

    /// Fetches `refs/heads/<branch>` and returns its tip SHA.
    ///
    /// Errors: [`GitError`] when the fetch fails or the branch does not exist.
    pub fn fetch_branch(&self, branch: &str) -> Result<String, GitError> {
        let local = format!("refs/tkgops/heads/{branch}");
        self.fetch(&[format!("+refs/heads/{branch}:{local}")])?;
        self.resolve(&local)
    }

    /// Fetches `refs/pull/<number>/head` and returns the PR head SHA.
    ///
    /// Errors: [`GitError`] when the fetch fails or the ref does not exist.
    pub fn fetch_pull_head(&self, number: u64) -> Result<String, GitError> {
        let local = format!("refs/tkgops/pull/{number}");
        self.fetch(&[format!("+refs/pull/{number}/head:{local}")])?;
        self.resolve(&local)
    }

    /// Resolves a ref or SHA to a commit SHA.
    ///
    /// Errors: [`GitError::NotFound`] when it does not resolve to a commit.
    pub fn resolve(&self, rev: &str) -> Result<String, GitError> {
        let repo = self.repo()?;
        let obj = repo
            .revparse_single(rev)
            .map_err(|_| GitError::NotFound(rev.to_string()))?;
        let commit = obj
            .peel_to_commit()
            .map_err(|_| GitError::NotFound(rev.to_string()))?;
        Ok(commit.id().to_string())
    }

    /// Whether `sha` exists in the mirror as a commit.
    pub fn has_commit(&self, sha: &str) -> bool {
        self.resolve(sha).is_ok()
    }

    /// The merge base of two commits.
    ///
    /// Errors: [`GitError`] when either is unknown or they share no history.
    pub fn merge_base(&self, a: &str, b: &str) -> Result<String, GitError> {
        let repo = self.repo()?;
        let (a, b) = (oid(a)?, oid(b)?);
        Ok(repo
            .merge_base(a, b)
            .map_err(git("merge-base"))?
            .to_string())
    }

    /// The first parent of `sha` (`None` for a root commit).
    ///
    /// Errors: [`GitError::NotFound`] when `sha` is unknown.
    pub fn first_parent(&self, sha: &str) -> Result<Option<String>, GitError> {
        let repo = self.repo()?;
        let commit = repo
            .find_commit(oid(sha)?)
            .map_err(|_| GitError::NotFound(sha.to_string()))?;
        Ok(commit.parent_ids().next().map(|p| p.to_string()))
    }

    /// The parents of commit `sha`, first parent first (empty for a root commit).
    ///
    /// Errors: [`GitError::NotFound`] when `sha` is unknown.
    pub fn parents(&self, sha: &str) -> Result<Vec<String>, GitError> {
        let repo = self.repo()?;
        let commit = repo
            .find_commit(oid(sha)?)
            .map_err(|_| GitError::NotFound(sha.to_string()))?;
        Ok(commit.parent_ids().map(|p| p.to_string()).collect())
    }

    /// The first-parent history of `tip`, newest first: `tip`, its first parent, and so on,
    /// stopping before `stop` (exclusive) when it is reached, at a root commit, or after
    /// `limit` commits. On a default branch this is the order in which merges entered it (a
    /// merge commit, a squashed commit or each rebased commit is one entry).
    ///
    /// Errors: [`GitError::NotFound`] when `tip` is unknown.
    pub fn first_parent_chain(
        &self,
        tip: &str,
        stop: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, GitError> {
        let repo = self.repo()?;
        let stop = stop.map(oid).transpose()?;
        let mut out = Vec::new();
        let mut at = Some(oid(tip)?);
        while let Some(id) = at {
            if Some(id) == stop || out.len() >= limit {
                break;
            }
            let commit = repo
                .find_commit(id)
                .map_err(|_| GitError::NotFound(id.to_string()))?;
            out.push(id.to_string());
            at = commit.parent_ids().next();
        }
        Ok(out)
    }

    /// How the pull request whose head was `head` entered the default branch as `merged` (the
    /// pull request's `merge_commit_sha`), as GitHub makes merges:
    /// - a merge commit has two parents, `[base tip, head]`;
    /// - "Squash and merge" makes one commit on top of the base tip;
    /// - "Rebase and merge" re-applies each of the pull request's commits on top of the base
    ///   tip (same author, time and message, new committer) and `merge_commit_sha` is the last.
    ///
    /// A single-parent `merged` is a rebase when the pull request's own commits (`head`'s
    /// history not reachable from `merged`) match, in order, the same number of first-parent
    /// commits ending at `merged` by author, author time and message; else it is a squash. The
    /// base is never a commit of the pull request.
    ///
    /// Errors: [`GitError::NotFound`] when `merged` or `head` is unknown (fetch the pull
    /// request's head first).
    pub fn merge_shape(
        &self,
        merged: &crate::MergeSha,
        head: &crate::HeadSha,
    ) -> Result<MergeShape, GitError> {
        let (merged, head) = (merged.as_str(), head.as_str());
        let repo = self.repo()?;
        let merged_id = oid(merged)?;
        let commit = repo
            .find_commit(merged_id)
            .map_err(|_| GitError::NotFound(merged.to_string()))?;
        let parents: Vec<Oid> = commit.parent_ids().collect();
        let Some(first) = parents.first().copied() else {
            return Ok(MergeShape {
                method: MergeMethod::Squash,
                base: None,
                commits: vec![merged.to_string()],
            });
        };
        if parents.len() > 1 {
            return Ok(MergeShape {
                method: MergeMethod::Merge,
                base: Some(first.to_string()),
                commits: vec![merged.to_string()],
            });
        }
        // The pull request's own commits that the default branch does not contain, oldest first.
        let mut walk = repo.revwalk().map_err(git("revwalk"))?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
            .map_err(git("revwalk"))?;
        walk.push(oid(head)?)
            .map_err(|_| GitError::NotFound(head.to_string()))?;
        walk.hide(merged_id).map_err(git("revwalk"))?;
        let own: Vec<Oid> = walk
            .take(MAX_REBASED_COMMITS + 1)
            .collect::<Result<_, _>>()
            .map_err(git("revwalk"))?;
        let squash = MergeShape {
            method: MergeMethod::Squash,
            base: Some(first.to_string()),
            commits: vec![merged.to_string()],
        };
        if own.len() < 2 || own.len() > MAX_REBASED_COMMITS {
            // One commit rebased or squashed is the same shape: base is the single parent.
            return Ok(squash);
        }
        let sig = |c: &git2::Commit<'_>| {
            let a = c.author();
            (
                a.name_bytes().to_vec(),
                a.email_bytes().to_vec(),
                a.when().seconds(),
                c.message_bytes().to_vec(),
            )
        };
        let mut chain = Vec::new();
        let mut at = merged_id;
        for _ in 0..own.len() {
            let c = repo.find_commit(at).map_err(git("find commit"))?;
            if c.parent_count() != 1 {
                return Ok(squash);
            }
            chain.push(c.clone());
            at = c.parent_id(0).map_err(git("parent"))?;
        }
        chain.reverse();
        for (o, c) in own.iter().zip(&chain) {
            let o = repo.find_commit(*o).map_err(git("find commit"))?;
            if sig(&o) != sig(c) {
                return Ok(squash);
            }
        }
        Ok(MergeShape {
            method: MergeMethod::Rebase,
            base: Some(at.to_string()),
            commits: chain.iter().map(|c| c.id().to_string()).collect(),
        })
    }

    /// The blob ids of the policy files at commit `sha` (`tkgops.yaml` and each `CODEOWNERS`
    /// location GitHub reads), in a fixed order; `None` where a file is absent. Two commits
    /// have the same policy exactly when their fingerprints are equal.
    ///
    /// Errors: [`GitError::NotFound`] when `sha` is unknown.
    pub fn policy_fingerprint(&self, sha: &str) -> Result<PolicyFingerprint, GitError> {
        let repo = self.repo()?;
        let tree = repo
            .find_commit(oid(sha)?)
            .map_err(|_| GitError::NotFound(sha.to_string()))?
            .tree()
            .map_err(git("tree"))?;
        Ok(PolicyFingerprint(
            POLICY_PATHS
                .iter()
                .map(|p| {
                    let blob = tree.get_path(Path::new(p)).ok().map(|e| e.id().to_string());
                    (p.to_string(), blob)
                })
                .collect(),
        ))
    }

    /// Points the mirror's ref `name` (under `refs/tkgops/`) at `sha`, so the commit is kept
    /// even when the branch that held it is rewritten (the trusted policy commit).
    ///
    /// Errors: [`GitError`] when `sha` is unknown or the ref cannot be written.
    pub fn pin(&self, name: &str, sha: &str) -> Result<(), GitError> {
        let repo = self.repo()?;
        repo.reference(
            &format!("refs/tkgops/{name}"),
            oid(sha)?,
            true,
            "tkgops pin",
        )
        .map_err(git("pin"))?;
        Ok(())
    }

    /// A commit (not on any branch) whose tree is `onto`'s with the changes of each commit of
    /// `reverts` (newest first) taken back out, as `git revert --no-commit` does, mainline 1
    /// for merge commits. `Ok(None)` when a revert conflicts.
    ///
    /// Errors: [`GitError`] when a commit is unknown or an object cannot be written.
    pub fn revert_onto(&self, onto: &str, reverts: &[String]) -> Result<Option<String>, GitError> {
        let repo = self.repo()?;
        let mut current = repo
            .find_commit(oid(onto)?)
            .map_err(|_| GitError::NotFound(onto.to_string()))?;
        for sha in reverts {
            let c = repo
                .find_commit(oid(sha)?)
                .map_err(|_| GitError::NotFound(sha.clone()))?;
            let mainline = if c.parent_count() > 1 { 1 } else { 0 };
            let mut index = repo
                .revert_commit(&c, &current, mainline, None)
                .map_err(git("revert"))?;
            if index.has_conflicts() {
                return Ok(None);
            }
            let tree_id = index.write_tree_to(&repo).map_err(git("write tree"))?;
            let tree = repo.find_tree(tree_id).map_err(git("tree"))?;
            let sig = git2::Signature::new("tkgops", "tkgops@localhost", &git2::Time::new(0, 0))
                .map_err(git("signature"))?;
            let id = repo
                .commit(
                    None,
                    &sig,
                    &sig,
                    &format!("tkgops: without {sha}"),
                    &tree,
                    &[&current],
                )
                .map_err(git("commit"))?;
            current = repo.find_commit(id).map_err(git("find commit"))?;
        }
        Ok(Some(current.id().to_string()))
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: &str, descendant: &str) -> bool {
        let (Ok(repo), Ok(a), Ok(d)) = (self.repo(), oid(ancestor), oid(descendant)) else {
            return false;
        };
        a == d || repo.graph_descendant_of(d, a).unwrap_or(false)
    }

    /// Paths changed between two commits (added, modified, deleted; both sides of a rename),
    /// limited to `tkgops.yaml` and `clusters/`. Unchanged subtrees are skipped by OID, so the
    /// cost scales with the change, not the repository.
    ///
    /// Errors: [`GitError`] when a commit is unknown.
    pub fn changed_paths(&self, base: &str, head: &str) -> Result<Vec<String>, GitError> {
        self.diff_paths(base, head, &["tkgops.yaml", "clusters/"])
    }

    /// Every path changed between two commits (both sides of a rename), sorted: what
    /// `CODEOWNERS` is checked against.
    ///
    /// Errors: [`GitError`] when a commit is unknown.
    pub fn changed_paths_all(&self, base: &str, head: &str) -> Result<Vec<String>, GitError> {
        self.diff_paths(base, head, &[])
    }

    fn diff_paths(
        &self,
        base: &str,
        head: &str,
        pathspecs: &[&str],
    ) -> Result<Vec<String>, GitError> {
        let repo = self.repo()?;
        let tree_of = |sha: &str| -> Result<git2::Tree<'_>, GitError> {
            let c = repo
                .find_commit(oid(sha)?)
                .map_err(|_| GitError::NotFound(sha.to_string()))?;
            c.tree().map_err(git("tree"))
        };
        let (bt, ht) = (tree_of(base)?, tree_of(head)?);
        let mut opts = DiffOptions::new();
        for p in pathspecs {
            opts.pathspec(p);
        }
        let diff = repo
            .diff_tree_to_tree(Some(&bt), Some(&ht), Some(&mut opts))
            .map_err(git("diff"))?;
        let mut out = Vec::new();
        for d in diff.deltas() {
            for f in [d.old_file(), d.new_file()] {
                if let Some(p) = f.path().and_then(|p| p.to_str()) {
                    if !out.iter().any(|x: &String| x == p) {
                        out.push(p.to_string());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// A reader of the files at commit `sha`.
    ///
    /// Errors: [`GitError::NotFound`] when `sha` is unknown.
    pub fn tree(&self, sha: &str) -> Result<GitTree, GitError> {
        let repo = self.repo()?;
        let tree = repo
            .find_commit(oid(sha)?)
            .map_err(|_| GitError::NotFound(sha.to_string()))?
            .tree_id();
        Ok(GitTree {
            repo: self.repo.clone(),
            tree,
            dirs: Mutex::new(HashMap::new()),
        })
    }
}

/// The most commits a rebase merge is matched over (GitHub lists at most 250 commits of a
/// pull request); a longer pull request is judged as one squashed change of its single parent.
pub const MAX_REBASED_COMMITS: usize = 250;

/// The files that make up the policy (security rule 1): `tkgops.yaml` and every location of
/// `CODEOWNERS` GitHub reads.
pub const POLICY_PATHS: &[&str] = &[
    "tkgops.yaml",
    ".github/CODEOWNERS",
    "CODEOWNERS",
    "docs/CODEOWNERS",
];

/// How a pull request was merged (GitHub's `merge_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMethod {
    /// A merge commit with parents `[base tip, head]`.
    Merge,
    /// One new commit on top of the base tip.
    Squash,
    /// The pull request's commits re-applied on top of the base tip.
    Rebase,
}

/// What a merge added to the default branch ([`ConfigRepo::merge_shape`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeShape {
    /// How it was merged.
    pub method: MergeMethod,
    /// The default branch's tip just before the merge (`None` for a root commit).
    pub base: Option<String>,
    /// The first-parent commits the merge added, oldest first (one, except for a rebase).
    pub commits: Vec<String>,
}

/// The blob ids of the policy files at one commit ([`ConfigRepo::policy_fingerprint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFingerprint(pub Vec<(String, Option<String>)>);

impl PolicyFingerprint {
    /// The policy files whose content differs between `self` and `other`.
    pub fn differing(&self, other: &PolicyFingerprint) -> Vec<String> {
        self.0
            .iter()
            .zip(&other.0)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0.clone())
            .collect()
    }
}

fn oid(sha: &str) -> Result<Oid, GitError> {
    Oid::from_str(sha).map_err(|_| GitError::NotFound(sha.to_string()))
}

/// The files of one commit, read from the object database (no checkout).
///
/// Every directory is read once per `GitTree`: a lookup of `clusters/<name>/tkgops.yaml`
/// reads the entries of `clusters` from a memo instead of inflating (and hash-checking) the
/// whole `clusters` tree again, so reading every cluster's file of a fleet of N clusters costs
/// O(N), not O(N²) (the fleet benchmark's 1,000-cluster stall).
pub struct GitTree {
    repo: Arc<Mutex<Repository>>,
    tree: Oid,
    /// Directory path (`""` for the root) → its entries (name → object id, is a tree).
    dirs: Mutex<HashMap<String, Arc<DirEntries>>>,
}

/// The entries of one directory: name → (object id, whether it is a tree).
type DirEntries = HashMap<String, (Oid, bool)>;

impl GitTree {
    /// The entries of directory `dir` (`""` for the root, no trailing slash), `None` when it
    /// is absent or not a directory. Read from the object database once, then from the memo.
    fn dir(&self, repo: &Repository, dir: &str) -> Option<Arc<DirEntries>> {
        if let Some(d) = self.dirs.lock().unwrap_or_else(|p| p.into_inner()).get(dir) {
            return Some(d.clone());
        }
        let id = if dir.is_empty() {
            self.tree
        } else {
            let (parent, name) = dir.rsplit_once('/').unwrap_or(("", dir));
            match self.dir(repo, parent)?.get(name) {
                Some((id, true)) => *id,
                _ => return None,
            }
        };
        let tree = repo.find_tree(id).ok()?;
        let entries: DirEntries = tree
            .iter()
            .filter_map(|e| {
                let name = e.name().ok()?.to_string();
                Some((name, (e.id(), e.kind() == Some(git2::ObjectType::Tree))))
            })
            .collect();
        let entries = Arc::new(entries);
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_string(), entries.clone());
        Some(entries)
    }
}

impl TreeReader for GitTree {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        let repo = self.repo.lock().unwrap_or_else(|p| p.into_inner());
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let (id, false) = *self.dir(&repo, dir)?.get(name)? else {
            return None;
        };
        let blob = repo.find_blob(id).ok()?;
        Some(blob.content().to_vec())
    }
}

impl ConfigRepo {
    /// Opens an existing repository (bare or with a work tree) for local planning
    /// (`tkgops plan --repo PATH`); nothing is fetched.
    ///
    /// Errors: [`GitError::Git`] when `path` is not a git repository.
    pub fn open_local(path: &Path) -> Result<ConfigRepo, GitError> {
        let repo = Repository::open(path).map_err(git("open"))?;
        Ok(ConfigRepo {
            path: path.to_path_buf(),
            remote_url: String::new(),
            token: Arc::new(Mutex::new(None)),
            repo: Arc::new(Mutex::new(repo)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeadSha, MergeSha};

    /// A kill during a ref write leaves its `.lock` file: every later write of that ref fails
    /// until the lock is removed at the next start.
    #[test]
    fn a_stale_ref_lock_blocks_the_pin_until_it_is_removed() {
        let f = Fixture::new();
        let c0 = f.commit(&[], "a", "1", ("x", 1), "c0");
        f.mirror.pin("trusted-policy", &c0.to_string()).unwrap();
        let lock = f._dir.path().join("refs/tkgops/trusted-policy.lock");
        std::fs::write(&lock, "").unwrap();
        let err = f.mirror.pin("trusted-policy", &c0.to_string()).unwrap_err();
        assert!(err.to_string().contains("lock"), "{err}");
        std::fs::write(f._dir.path().join("packed-refs.lock"), "").unwrap();
        let removed = f.mirror.remove_stale_locks().unwrap();
        assert_eq!(
            removed,
            ["refs/tkgops/trusted-policy.lock", "packed-refs.lock"]
        );
        assert!(!lock.exists());
        f.mirror.pin("trusted-policy", &c0.to_string()).unwrap();
        assert!(f.mirror.remove_stale_locks().unwrap().is_empty());
    }

    /// A bare repository with `main` = c0, and helpers to commit on top of a commit.
    struct Fixture {
        _dir: tempfile::TempDir,
        repo: Repository,
        mirror: ConfigRepo,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let repo = Repository::init_bare(dir.path()).unwrap();
            let mirror = ConfigRepo::open_local(dir.path()).unwrap();
            Fixture {
                _dir: dir,
                repo,
                mirror,
            }
        }

        /// A commit writing `path` = `content` on top of `parents` (first parent's tree),
        /// authored by `author` at `when` with `message`.
        fn commit(
            &self,
            parents: &[Oid],
            path: &str,
            content: &str,
            author: (&str, i64),
            message: &str,
        ) -> Oid {
            let parents: Vec<git2::Commit<'_>> = parents
                .iter()
                .map(|p| self.repo.find_commit(*p).unwrap())
                .collect();
            let base = match parents.first() {
                Some(p) => p.tree().unwrap(),
                None => {
                    let empty = self.repo.treebuilder(None).unwrap().write().unwrap();
                    self.repo.find_tree(empty).unwrap()
                }
            };
            let blob = self.repo.blob(content.as_bytes()).unwrap();
            let mut update = git2::build::TreeUpdateBuilder::new();
            update.upsert(path, blob, git2::FileMode::Blob);
            let tree_id = update.create_updated(&self.repo, &base).unwrap();
            let tree = self.repo.find_tree(tree_id).unwrap();
            let sig = git2::Signature::new(
                author.0,
                &format!("{}@example.com", author.0),
                &git2::Time::new(author.1, 0),
            )
            .unwrap();
            let committer =
                git2::Signature::new("GitHub", "noreply@github.com", &git2::Time::new(9_999, 0))
                    .unwrap();
            let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
            self.repo
                .commit(None, &sig, &committer, message, &tree, &refs)
                .unwrap()
        }
    }

    #[test]
    fn merge_shapes_are_told_apart_and_the_base_is_never_a_commit_of_the_pull_request() {
        let f = Fixture::new();
        let c0 = f.commit(&[], "tkgops.yaml", "v0", ("admin", 1), "root");
        let other = f.commit(&[c0], "other", "x", ("bob", 2), "someone else's change");
        // The pull request: two commits on c0.
        let p1 = f.commit(&[c0], "tkgops.yaml", "v1", ("eve", 3), "policy");
        let p2 = f.commit(&[p1], "clusters/a/x", "a", ("eve", 4), "cluster");
        let s = |o: Oid| o.to_string();

        // A merge commit: parents [base tip, head].
        let m = f.commit(&[other, p2], "clusters/a/x", "a", ("GitHub", 5), "Merge");
        let shape = f
            .mirror
            .merge_shape(&MergeSha::new(s(m)), &HeadSha::new(s(p2)))
            .unwrap();
        assert_eq!(shape.method, MergeMethod::Merge);
        assert_eq!(shape.base, Some(s(other)));
        assert_eq!(shape.commits, vec![s(m)]);

        // A squash: one commit on the base tip.
        let sq = f.commit(&[other], "tkgops.yaml", "v1", ("eve", 6), "Squashed (#1)");
        let shape = f
            .mirror
            .merge_shape(&MergeSha::new(s(sq)), &HeadSha::new(s(p2)))
            .unwrap();
        assert_eq!(shape.method, MergeMethod::Squash);
        assert_eq!(shape.base, Some(s(other)));

        // A rebase: each commit re-applied with the same author, time and message.
        let r1 = f.commit(&[other], "tkgops.yaml", "v1", ("eve", 3), "policy");
        let r2 = f.commit(&[r1], "clusters/a/x", "a", ("eve", 4), "cluster");
        let shape = f
            .mirror
            .merge_shape(&MergeSha::new(s(r2)), &HeadSha::new(s(p2)))
            .unwrap();
        assert_eq!(shape.method, MergeMethod::Rebase);
        assert_eq!(shape.base, Some(s(other)), "never the first rebased commit");
        assert_eq!(shape.commits, vec![s(r1), s(r2)]);

        // Policy fingerprints: the first rebased commit changed the policy, the second not.
        let (f_other, f_r1, f_r2) = (
            f.mirror.policy_fingerprint(&s(other)).unwrap(),
            f.mirror.policy_fingerprint(&s(r1)).unwrap(),
            f.mirror.policy_fingerprint(&s(r2)).unwrap(),
        );
        assert_eq!(f_other.differing(&f_r1), vec!["tkgops.yaml".to_string()]);
        assert_eq!(f_r1, f_r2);

        // The first-parent history, newest first, stops before `stop`.
        assert_eq!(
            f.mirror
                .first_parent_chain(&s(r2), Some(&s(c0)), 100)
                .unwrap(),
            vec![s(r2), s(r1), s(other)]
        );
    }

    #[test]
    fn revert_onto_takes_a_commits_change_back_out_or_says_it_conflicts() {
        let f = Fixture::new();
        let s = |o: Oid| o.to_string();
        let c0 = f.commit(
            &[],
            "clusters/a/config",
            "workers: 3\n",
            ("admin", 1),
            "root",
        );
        let pushed = f.commit(&[c0], "clusters/a/extra", "x\n", ("eve", 2), "direct push");
        let approved = f.commit(
            &[pushed],
            "clusters/a/config",
            "workers: 6\n",
            ("bob", 3),
            "approved",
        );
        let head = f
            .mirror
            .revert_onto(&s(approved), &[s(pushed)])
            .unwrap()
            .expect("no conflict");
        let tree = f.mirror.tree(&head).unwrap();
        assert_eq!(tree.read("clusters/a/config").unwrap(), b"workers: 6\n");
        assert!(
            tree.read("clusters/a/extra").is_none(),
            "the push is left out"
        );
        // A change the approved commit builds on cannot be taken out.
        let c1 = f.commit(
            &[c0],
            "clusters/a/config",
            "workers: 4\n",
            ("eve", 4),
            "push",
        );
        let c2 = f.commit(
            &[c1],
            "clusters/a/config",
            "workers: 5\n",
            ("bob", 5),
            "approved",
        );
        assert_eq!(f.mirror.revert_onto(&s(c2), &[s(c1)]).unwrap(), None);
    }
}

#[cfg(test)]
mod tree_tests {
    use super::*;

    /// A commit's files read through [`GitTree`]: nested and root files, absent files and
    /// directories (`None`), and the same directory read for many files (the memo) gives each
    /// file's own content.
    #[test]
    fn a_git_tree_reads_files_at_any_depth_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let mirror = ConfigRepo::open_local(dir.path()).unwrap();
        let empty = repo.treebuilder(None).unwrap().write().unwrap();
        let mut update = git2::build::TreeUpdateBuilder::new();
        let mut files = vec![("tkgops.yaml".to_string(), "root".to_string())];
        for i in 0..50 {
            files.push((format!("clusters/c{i}/tkgops.yaml"), format!("cluster {i}")));
        }
        files.push(("a/b/c/d.txt".into(), "deep".into()));
        for (path, content) in &files {
            let blob = repo.blob(content.as_bytes()).unwrap();
            update.upsert(path, blob, git2::FileMode::Blob);
        }
        let tree_id = update
            .create_updated(&repo, &repo.find_tree(empty).unwrap())
            .unwrap();
        let sig = git2::Signature::new("t", "t@example.com", &git2::Time::new(1, 0)).unwrap();
        let commit = repo
            .commit(
                None,
                &sig,
                &sig,
                "c",
                &repo.find_tree(tree_id).unwrap(),
                &[],
            )
            .unwrap();
        let tree = mirror.tree(&commit.to_string()).unwrap();
        for (path, content) in &files {
            assert_eq!(
                tree.read(path).as_deref(),
                Some(content.as_bytes()),
                "{path}"
            );
        }
        for absent in [
            "nope.yaml",
            "clusters",
            "clusters/c1",
            "clusters/c99/tkgops.yaml",
            "a/b/x/d.txt",
            "",
        ] {
            assert_eq!(tree.read(absent), None, "{absent:?}");
        }
    }
}
