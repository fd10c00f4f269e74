//! Response bodies built from GitHub's own OpenAPI examples (`tests/fixtures/github/*.json`,
//! MIT License, Copyright (c) 2020 Octokit contributors; see the README there).
//!
//! Every builder starts from the official example, re-targets its URLs at the emulator and
//! overrides the fields that carry state, so octocrab's strict models parse the result exactly as
//! they parse GitHub's answers.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{GitHubAppOptions, HeadRepo, Pull};

const PULL_REQUEST: &str = include_str!("../../../../tests/fixtures/github/pull-request.json");
const PULL_REQUEST_SIMPLE: &str =
    include_str!("../../../../tests/fixtures/github/pull-request-simple.json");
const ISSUE_COMMENT: &str = include_str!("../../../../tests/fixtures/github/issue-comment.json");
const STATUS: &str = include_str!("../../../../tests/fixtures/github/status.json");
const COMBINED_STATUS: &str =
    include_str!("../../../../tests/fixtures/github/combined-commit-status.json");
const REVIEW: &str = include_str!("../../../../tests/fixtures/github/pull-request-review.json");
const COMMIT: &str = include_str!("../../../../tests/fixtures/github/commit.json");
const DIFF_ENTRIES: &str = include_str!("../../../../tests/fixtures/github/diff-entry-items.json");
const WEBHOOK_ISSUE_COMMENT: &str =
    include_str!("../../../../tests/fixtures/github/webhook-issue_comment-created.json");
const WEBHOOK_PUSH: &str =
    include_str!("../../../../tests/fixtures/github/webhook-push-event.json");

struct Templates {
    pull: Value,
    simple_keys: Vec<String>,
    comment: Value,
    status: Value,
    combined: Value,
    review: Value,
    /// The `commit` example without `stats` and `files` (the list items of
    /// `GET /pulls/{n}/commits` have neither).
    commit: Value,
    diff_entry: Value,
    /// The `issue` of the `issue_comment` webhook example.
    issue: Value,
    /// The `head_commit` of the `push` webhook example.
    push_commit: Value,
    /// The `repository` of the `push` webhook example (integer timestamps, owner with name).
    push_repository: Value,
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let parse = |s: &str| {
            serde_json::from_str::<Value>(s).expect("embedded GitHub example JSON is valid")
        };
        let simple = parse(PULL_REQUEST_SIMPLE);
        let simple_keys = simple
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let diff = parse(DIFF_ENTRIES);
        Templates {
            pull: parse(PULL_REQUEST),
            simple_keys,
            comment: parse(ISSUE_COMMENT),
            status: parse(STATUS),
            combined: parse(COMBINED_STATUS),
            review: parse(REVIEW),
            commit: {
                let mut c = parse(COMMIT);
                if let Some(o) = c.as_object_mut() {
                    o.remove("stats");
                    o.remove("files");
                }
                c
            },
            diff_entry: diff.get(0).cloned().unwrap_or(Value::Null),
            issue: parse(WEBHOOK_ISSUE_COMMENT)["issue"].clone(),
            push_commit: parse(WEBHOOK_PUSH)["head_commit"].clone(),
            push_repository: parse(WEBHOOK_PUSH)["repository"].clone(),
        }
    })
}

/// Formats a time the way GitHub does (`2011-01-26T19:01:12Z`).
pub(super) fn ts(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A small stable numeric id for a login (GitHub user ids are numbers).
fn user_id(login: &str) -> u64 {
    // FNV-1a, folded into a positive range JSON number consumers accept everywhere.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in login.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    1000 + h % 1_000_000_000
}

/// Where the emulated repository lives: used to re-target the examples' URLs.
pub(super) struct Ctx<'a> {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub api: &'a str,
    /// Repository owner login.
    pub owner: &'a str,
    /// Repository name.
    pub repo: &'a str,
    /// `file://` URL of the bare repository.
    pub clone_url: &'a str,
    /// Default branch name.
    pub default_branch: &'a str,
}

impl Ctx<'_> {
    fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    /// Re-targets every string of `v`: API host, `octocat/Hello-World`, `Hello-World`.
    fn retarget(&self, mut v: Value) -> Value {
        let full = self.full_name();
        let reps: [(&str, &str); 4] = [
            ("https://api.github.com", self.api),
            ("octocat/Hello-World", &full),
            ("Codertocat/Hello-World", &full),
            ("Hello-World", self.repo),
        ];
        walk_strings(&mut v, &|s| {
            let mut s = s.to_string();
            for (from, to) in reps.iter() {
                if s.contains(from) {
                    s = s.replace(from, to);
                }
            }
            s
        });
        v
    }

    /// The `user`/`owner`/`creator` object of `login` (Bot type when it ends with `[bot]`).
    pub fn user(&self, login: &str) -> Value {
        let mut u = templates()
            .comment
            .get("user")
            .cloned()
            .unwrap_or(Value::Null);
        let api = self.api;
        walk_strings(&mut u, &|s| {
            s.replace("https://api.github.com", api)
                .replace("octocat", login)
        });
        u["login"] = json!(login);
        u["id"] = json!(user_id(login));
        u["node_id"] = json!(format!("U_{}", user_id(login)));
        u["type"] = json!(if login.ends_with("[bot]") {
            "Bot"
        } else {
            "User"
        });
        u
    }

    /// The full repository object (`GET /repos/{o}/{r}`), from the example's `head.repo`.
    pub fn repository(&self, now: &DateTime<Utc>) -> Value {
        let mut r = self.retarget(templates().pull["head"]["repo"].clone());
        r["owner"] = self.user(self.owner);
        r["name"] = json!(self.repo);
        r["full_name"] = json!(self.full_name());
        r["default_branch"] = json!(self.default_branch);
        r["clone_url"] = json!(self.clone_url);
        r["git_url"] = json!(self.clone_url);
        r["mirror_url"] = Value::Null;
        r["private"] = json!(true);
        r["fork"] = json!(false);
        r["homepage"] = Value::Null;
        r["description"] = json!("tkgops config repository (emulated)");
        r["topics"] = json!([]);
        r["pushed_at"] = json!(ts(now));
        r["updated_at"] = json!(ts(now));
        r
    }

    /// A pull request in the full (`GET /pulls/{n}`) shape, or the list shape when `simple`.
    pub fn pull(&self, p: &PullView<'_>, now: &DateTime<Utc>, simple: bool) -> Value {
        let t = templates();
        let mut v = self.retarget(t.pull.clone());
        let n = p.number;
        walk_strings(&mut v, &|s| {
            s.replace("/pulls/1347", &format!("/pulls/{n}"))
                .replace("/pull/1347", &format!("/pull/{n}"))
                .replace("/issues/1347", &format!("/issues/{n}"))
                .replace(
                    "/statuses/6dcb09b5b57875f334f61aebed695e2e4193db5e",
                    &format!("/statuses/{}", p.head_sha),
                )
        });
        v["id"] = json!(100_000 + n);
        v["node_id"] = json!(format!("PR_{n}"));
        v["number"] = json!(n);
        v["state"] = json!(if p.open { "open" } else { "closed" });
        v["locked"] = json!(false);
        v["title"] = json!(p.title);
        v["user"] = self.user(p.author);
        v["body"] = json!(p.body);
        v["labels"] = Value::Array(p.labels.iter().map(|l| self.label(l)).collect());
        v["milestone"] = Value::Null;
        v["active_lock_reason"] = Value::Null;
        v["created_at"] = json!(ts(p.created_at));
        v["updated_at"] = json!(ts(p.updated_at));
        v["closed_at"] = json!(p.closed_at.map(ts));
        v["merged_at"] = json!(p.merged_at.map(ts));
        v["merge_commit_sha"] = json!(p.merge_commit_sha);
        v["assignee"] = Value::Null;
        v["assignees"] = json!([]);
        v["requested_reviewers"] = json!([]);
        v["requested_teams"] = json!([]);
        let repo = self.repository(now);
        let owner_user = self.user(self.owner);
        let (head_owner, head_repo) = match p.head_repo {
            HeadRepo::Base => (self.owner.to_string(), repo.clone()),
            HeadRepo::Fork { owner, name } => {
                (owner.clone(), self.fork_repository(owner, name, now))
            }
            HeadRepo::Deleted => (p.author.to_string(), Value::Null),
        };
        v["head"] = json!({
            "label": format!("{head_owner}:{}", p.head_ref),
            "ref": p.head_ref,
            "sha": p.head_sha,
            "user": self.user(&head_owner),
            "repo": head_repo,
        });
        v["base"] = json!({
            "label": format!("{}:{}", self.owner, p.base_ref),
            "ref": p.base_ref,
            "sha": p.base_sha,
            "user": owner_user,
            "repo": repo,
        });
        v["author_association"] = json!(match p.head_repo {
            HeadRepo::Base => self.association(p.author),
            _ => "CONTRIBUTOR",
        });
        v["auto_merge"] = Value::Null;
        v["draft"] = json!(false);
        v["merged"] = json!(p.merged);
        v["mergeable"] = json!(p.mergeable);
        v["rebaseable"] = json!(p.mergeable);
        v["mergeable_state"] = json!(match (p.open, p.mergeable) {
            (false, _) => "unknown",
            (true, Some(true)) => "clean",
            (true, Some(false)) => "dirty",
            (true, None) => "unknown",
        });
        v["merged_by"] = json!(p.merged_by.map(|m| self.user(m)));
        v["comments"] = json!(p.comments);
        v["review_comments"] = json!(0);
        v["maintainer_can_modify"] = json!(false);
        v["commits"] = json!(p.commits);
        v["additions"] = json!(p.additions);
        v["deletions"] = json!(p.deletions);
        v["changed_files"] = json!(p.changed_files);
        if simple {
            if let Some(obj) = v.as_object_mut() {
                obj.retain(|k, _| t.simple_keys.iter().any(|s| s == k));
            }
        }
        v
    }

    /// An issue comment (`issue-comment` example).
    pub fn comment(
        &self,
        id: u64,
        issue: u64,
        login: &str,
        body: &str,
        created: &DateTime<Utc>,
        updated: &DateTime<Utc>,
    ) -> Value {
        let mut v = self.retarget(templates().comment.clone());
        v["id"] = json!(id);
        v["node_id"] = json!(format!("IC_{id}"));
        v["url"] = json!(format!(
            "{}/repos/{}/issues/comments/{id}",
            self.api,
            self.full_name()
        ));
        v["html_url"] = json!(format!(
            "https://github.com/{}/pull/{issue}#issuecomment-{id}",
            self.full_name()
        ));
        v["issue_url"] = json!(format!(
            "{}/repos/{}/issues/{issue}",
            self.api,
            self.full_name()
        ));
        v["body"] = json!(body);
        v["user"] = self.user(login);
        v["created_at"] = json!(ts(created));
        v["updated_at"] = json!(ts(updated));
        v["author_association"] = json!(self.association(login));
        v
    }

    /// A commit status (`status` example); without `creator` when `with_creator` is false (the
    /// combined-status item shape).
    pub fn status(&self, s: &StatusView<'_>, with_creator: bool) -> Value {
        let mut v = self.retarget(templates().status.clone());
        v["url"] = json!(format!(
            "{}/repos/{}/statuses/{}",
            self.api,
            self.full_name(),
            s.sha
        ));
        v["id"] = json!(s.id);
        v["node_id"] = json!(format!("SC_{}", s.id));
        v["state"] = json!(s.state);
        v["description"] = json!(s.description);
        v["target_url"] = json!(s.target_url);
        v["context"] = json!(s.context);
        v["created_at"] = json!(ts(s.created_at));
        v["updated_at"] = json!(ts(s.created_at));
        if with_creator {
            v["creator"] = self.user(s.creator);
        } else if let Some(o) = v.as_object_mut() {
            o.remove("creator");
        }
        v
    }

    /// The combined status of `sha` (`combined-commit-status` example).
    pub fn combined(&self, sha: &str, state: &str, latest: &[StatusView<'_>]) -> Value {
        let mut v = self.retarget(templates().combined.clone());
        v["state"] = json!(state);
        v["statuses"] = Value::Array(latest.iter().map(|s| self.status(s, false)).collect());
        v["sha"] = json!(sha);
        v["total_count"] = json!(latest.len());
        v["repository"]["owner"] = self.user(self.owner);
        v["commit_url"] = json!(format!(
            "{}/repos/{}/commits/{sha}",
            self.api,
            self.full_name()
        ));
        v["url"] = json!(format!(
            "{}/repos/{}/commits/{sha}/status",
            self.api,
            self.full_name()
        ));
        v
    }

    /// A pull request review (`pull-request-review` example).
    pub fn review(&self, r: &ReviewView<'_>) -> Value {
        let mut v = self.retarget(templates().review.clone());
        let n = r.pull;
        walk_strings(&mut v, &|s| {
            s.replace("/pulls/12", &format!("/pulls/{n}"))
                .replace("/pull/12", &format!("/pull/{n}"))
        });
        let html = format!(
            "https://github.com/{}/pull/{n}#pullrequestreview-{}",
            self.full_name(),
            r.id
        );
        v["id"] = json!(r.id);
        v["node_id"] = json!(format!("PRR_{}", r.id));
        v["user"] = self.user(r.user);
        v["body"] = json!(r.body);
        v["state"] = json!(r.state);
        v["html_url"] = json!(html);
        v["_links"]["html"]["href"] = json!(html);
        match r.submitted_at {
            Some(t) => v["submitted_at"] = json!(ts(t)),
            None => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("submitted_at");
                }
            }
        }
        v["commit_id"] = json!(r.commit_id);
        v
    }

    /// A commit as `GET /pulls/{n}/commits` lists it (`commit` example): `sha`, `commit`
    /// (`message` without trailing newlines, `author`/`committer` name, e-mail and date,
    /// `tree`), `parents`; the top-level `author`/`committer` accounts are the users whose
    /// `<login>@users.noreply.github.com` address signed it, else `null` (the emulator knows
    /// no other e-mail addresses).
    pub fn commit(&self, c: &super::git::CommitView) -> Value {
        let mut v = self.retarget(templates().commit.clone());
        let full = self.full_name();
        let api = self.api;
        v["url"] = json!(format!("{api}/repos/{full}/commits/{}", c.sha));
        v["sha"] = json!(c.sha);
        v["node_id"] = json!(format!("C_{}", c.sha));
        v["html_url"] = json!(format!("https://github.com/{full}/commit/{}", c.sha));
        v["comments_url"] = json!(format!("{api}/repos/{full}/commits/{}/comments", c.sha));
        v["commit"]["url"] = json!(format!("{api}/repos/{full}/git/commits/{}", c.sha));
        v["commit"]["author"] = json!({
            "name": c.author_name, "email": c.author_email, "date": ts(&c.author_date),
        });
        v["commit"]["committer"] = json!({
            "name": c.committer_name, "email": c.committer_email, "date": ts(&c.committer_date),
        });
        v["commit"]["message"] = json!(c.message.trim_end_matches('\n'));
        v["commit"]["tree"] = json!({
            "url": format!("{api}/repos/{full}/git/trees/{}", c.tree), "sha": c.tree,
        });
        let account = |email: &str| {
            email
                .strip_suffix("@users.noreply.github.com")
                .map(|login| self.user(login))
                .unwrap_or(Value::Null)
        };
        v["author"] = account(&c.author_email);
        v["committer"] = account(&c.committer_email);
        v["parents"] = Value::Array(
            c.parents
                .iter()
                .map(|p| {
                    json!({
                        "url": format!("{api}/repos/{full}/commits/{p}"),
                        "html_url": format!("https://github.com/{full}/commit/{p}"),
                        "sha": p,
                    })
                })
                .collect(),
        );
        v
    }

    /// GitHub's `author_association` of `login` on the repository.
    fn association(&self, login: &str) -> &'static str {
        if login == self.owner {
            "OWNER"
        } else {
            "COLLABORATOR"
        }
    }

    /// `<login>@users.noreply.github.com`, the address GitHub shows for a user.
    pub fn noreply_email(&self, login: &str) -> String {
        format!("{}@users.noreply.github.com", login.replace(['[', ']'], ""))
    }

    /// A fork `owner/name` of the repository (`head.repo` of a fork PR).
    pub fn fork_repository(&self, owner: &str, name: &str, now: &DateTime<Utc>) -> Value {
        let full = format!("{owner}/{name}");
        let mut r = self.repository(now);
        let ours = self.full_name();
        walk_strings(&mut r, &|s| s.replace(&ours, &full));
        r["id"] = json!(user_id(&full));
        r["node_id"] = json!(format!("R_{}", user_id(&full)));
        r["owner"] = self.user(owner);
        r["name"] = json!(name);
        r["full_name"] = json!(full);
        r["fork"] = json!(true);
        r["private"] = json!(false);
        r["clone_url"] = json!(format!("https://github.com/{full}.git"));
        r["git_url"] = json!(format!("git://github.com/{full}.git"));
        r["ssh_url"] = json!(format!("git@github.com:{full}.git"));
        r["description"] = json!("a fork of the tkgops config repository (emulated)");
        r
    }

    /// A label object (GitHub's `label` schema) named `name`, with a stable id and colour.
    pub fn label(&self, name: &str) -> Value {
        let id = user_id(name);
        json!({
            "id": id,
            "node_id": format!("LA_{id}"),
            "url": format!("{}/repos/{}/labels/{}", self.api, self.full_name(), name),
            "name": name,
            "color": "ededed",
            "default": false,
            "description": Value::Null,
        })
    }

    /// The `issue` of an `issue_comment` payload for pull request `p` (webhook example shape,
    /// with the `pull_request` links GitHub adds for a PR).
    pub fn issue(&self, p: &Pull, comments: usize) -> Value {
        let mut v = self.retarget(templates().issue.clone());
        let full = self.full_name();
        let n = p.number;
        let api_issue = format!("{}/repos/{full}/issues/{n}", self.api);
        v["url"] = json!(api_issue);
        v["repository_url"] = json!(format!("{}/repos/{full}", self.api));
        v["labels_url"] = json!(format!("{api_issue}/labels{{/name}}"));
        v["comments_url"] = json!(format!("{api_issue}/comments"));
        v["events_url"] = json!(format!("{api_issue}/events"));
        v["html_url"] = json!(format!("https://github.com/{full}/pull/{n}"));
        v["id"] = json!(200_000 + n);
        v["node_id"] = json!(format!("I_{n}"));
        v["number"] = json!(n);
        v["title"] = json!(p.title);
        v["user"] = self.user(&p.author);
        v["labels"] = Value::Array(p.labels.iter().map(|l| self.label(l)).collect());
        v["state"] = json!(if p.open { "open" } else { "closed" });
        v["locked"] = json!(false);
        v["assignee"] = Value::Null;
        v["assignees"] = json!([]);
        v["milestone"] = Value::Null;
        v["comments"] = json!(comments);
        v["created_at"] = json!(ts(&p.created_at));
        v["updated_at"] = json!(ts(&p.updated_at));
        v["closed_at"] = json!(p.closed_at.as_ref().map(ts));
        v["author_association"] = json!(self.association(&p.author));
        v["body"] = json!(p.body);
        v["pull_request"] = json!({
            "url": format!("{}/repos/{full}/pulls/{n}", self.api),
            "html_url": format!("https://github.com/{full}/pull/{n}"),
            "diff_url": format!("https://github.com/{full}/pull/{n}.diff"),
            "patch_url": format!("https://github.com/{full}/pull/{n}.patch"),
        });
        v
    }

    /// A plain issue (not a pull request) `i` in the REST shape: [`Self::issue`] without the
    /// `pull_request` links, its `html_url` under `/issues/`.
    pub fn plain_issue(&self, i: &Pull, comments: usize) -> Value {
        let mut v = self.issue(i, comments);
        if let Some(o) = v.as_object_mut() {
            o.remove("pull_request");
        }
        v["html_url"] = json!(format!(
            "https://github.com/{}/issues/{}",
            self.full_name(),
            i.number
        ));
        v
    }

    /// One commit of a `push` payload (webhook example shape).
    pub fn push_commit(&self, c: &super::git::PushCommit) -> Value {
        let mut v = templates().push_commit.clone();
        let full = self.full_name();
        v["id"] = json!(c.id);
        v["tree_id"] = json!(c.tree_id);
        v["distinct"] = json!(true);
        v["message"] = json!(c.message);
        v["timestamp"] = json!(c.timestamp);
        v["url"] = json!(format!("https://github.com/{full}/commit/{}", c.id));
        v["author"] = json!({"name": c.author_name, "email": c.author_email});
        v["committer"] = json!({"name": c.committer_name, "email": c.committer_email});
        v["added"] = json!(c.added);
        v["removed"] = json!(c.removed);
        v["modified"] = json!(c.modified);
        v
    }

    /// The `repository` of a `push` payload: the repository with GitHub's push-payload
    /// quirks (Unix timestamps for `created_at` and `pushed_at`).
    pub fn push_repository(&self, now: &DateTime<Utc>) -> Value {
        let mut r = self.repository(now);
        let t = &templates().push_repository;
        if let (Some(obj), Some(tpl)) = (r.as_object_mut(), t.as_object()) {
            // Keep exactly the example's keys (the push repository differs from REST's).
            for (k, v) in tpl {
                obj.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if r.get("master_branch").is_some() {
            r["master_branch"] = json!(self.default_branch);
        }
        r["created_at"] = json!(now.timestamp() - 86_400);
        r["pushed_at"] = json!(now.timestamp());
        r["owner"]["name"] = json!(self.owner);
        r["owner"]["email"] = Value::Null;
        r
    }

    /// The App (`GET /app`, GitHub's `integration` shape).
    pub fn integration(&self, app: &GitHubAppOptions, created: &DateTime<Utc>) -> Value {
        json!({
            "id": app.app_id,
            "slug": app.slug,
            "client_id": format!("Iv1.{:016x}", app.app_id),
            "node_id": format!("A_{}", app.app_id),
            "owner": self.user(self.owner),
            "name": app.slug,
            "description": "tkgops GitOps bot (emulated GitHub App)",
            "external_url": "https://github.com/acme/tkgops",
            "html_url": format!("https://github.com/apps/{}", app.slug),
            "created_at": ts(created),
            "updated_at": ts(created),
            "permissions": app_permissions(),
            "events": ["issue_comment", "pull_request", "pull_request_review", "push"],
            "installations_count": 1,
        })
    }

    /// The App's installation on the repository owner (GitHub's `installation` shape).
    pub fn installation(&self, app: &GitHubAppOptions, created: &DateTime<Utc>) -> Value {
        let id = app.installation_id;
        json!({
            "id": id,
            "account": self.user(self.owner),
            "repository_selection": "selected",
            "access_tokens_url": format!("{}/app/installations/{id}/access_tokens", self.api),
            "repositories_url": format!("{}/installation/repositories", self.api),
            "html_url": format!("https://github.com/settings/installations/{id}"),
            "app_id": app.app_id,
            "app_slug": app.slug,
            "target_id": user_id(self.owner),
            "target_type": "User",
            "permissions": app_permissions(),
            "events": ["issue_comment", "pull_request", "pull_request_review", "push"],
            "created_at": ts(created),
            "updated_at": ts(created),
            "single_file_name": null,
            "has_multiple_single_files": false,
            "single_file_paths": [],
            "suspended_by": null,
            "suspended_at": null,
        })
    }

    /// One changed file of a pull request (`diff-entry-items` example).
    pub fn diff_entry(&self, f: &super::git::FileChange, head_sha: &str) -> Value {
        let mut v = self.retarget(templates().diff_entry.clone());
        let full = self.full_name();
        v["sha"] = json!(f.blob_sha);
        v["filename"] = json!(f.filename);
        v["status"] = json!(f.status);
        v["additions"] = json!(f.additions);
        v["deletions"] = json!(f.deletions);
        v["changes"] = json!(f.additions + f.deletions);
        v["blob_url"] = json!(format!(
            "https://github.com/{full}/blob/{head_sha}/{}",
            f.filename
        ));
        v["raw_url"] = json!(format!(
            "https://github.com/{full}/raw/{head_sha}/{}",
            f.filename
        ));
        v["contents_url"] = json!(format!(
            "{}/repos/{full}/contents/{}?ref={head_sha}",
            self.api, f.filename
        ));
        match &f.patch {
            Some(p) => v["patch"] = json!(p),
            None => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("patch");
                }
            }
        }
        if let Some(prev) = &f.previous_filename {
            v["previous_filename"] = json!(prev);
        }
        v
    }
}

/// The state of one pull request needed to render it.
pub(super) struct PullView<'a> {
    pub number: u64,
    pub head_repo: &'a HeadRepo,
    pub open: bool,
    pub title: &'a str,
    pub body: &'a str,
    pub author: &'a str,
    pub created_at: &'a DateTime<Utc>,
    pub updated_at: &'a DateTime<Utc>,
    pub closed_at: Option<&'a DateTime<Utc>>,
    pub merged_at: Option<&'a DateTime<Utc>>,
    pub merge_commit_sha: Option<&'a str>,
    pub merged_by: Option<&'a str>,
    pub merged: bool,
    pub mergeable: Option<bool>,
    pub head_ref: &'a str,
    pub head_sha: &'a str,
    pub base_ref: &'a str,
    pub base_sha: &'a str,
    pub comments: usize,
    pub commits: usize,
    pub additions: usize,
    pub deletions: usize,
    pub changed_files: usize,
    pub labels: &'a [String],
}

/// One commit status to render.
pub(super) struct StatusView<'a> {
    pub id: u64,
    pub sha: &'a str,
    pub state: &'a str,
    pub description: Option<&'a str>,
    pub target_url: Option<&'a str>,
    pub context: &'a str,
    pub creator: &'a str,
    pub created_at: &'a DateTime<Utc>,
}

/// One review to render.
pub(super) struct ReviewView<'a> {
    pub id: u64,
    pub pull: u64,
    pub user: &'a str,
    pub body: &'a str,
    pub state: &'a str,
    pub commit_id: &'a str,
    /// `None` while pending (the field is then absent, as on GitHub).
    pub submitted_at: Option<&'a DateTime<Utc>>,
}

/// The permissions of the emulated App and its installation tokens.
pub(super) fn app_permissions() -> Value {
    json!({
        // The bot pushes its own branches (bump and record pull requests).
        "contents": "write",
        "issues": "write",
        "metadata": "read",
        "pull_requests": "write",
        "statuses": "write",
    })
}

fn walk_strings(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| walk_strings(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| walk_strings(x, f)),
        _ => {}
    }
}
