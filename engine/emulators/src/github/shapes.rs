//! Response bodies built from GitHub's own OpenAPI examples (`tests/fixtures/github/*.json`,
//! MIT License, Copyright (c) 2020 Octokit contributors; see the README there).
//!
//! Every builder starts from the official example, re-targets its URLs at the emulator and
//! overrides the fields that carry state, so octocrab's strict models parse the result exactly as
//! they parse GitHub's answers.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

const PULL_REQUEST: &str = include_str!("../../../../tests/fixtures/github/pull-request.json");
const PULL_REQUEST_SIMPLE: &str =
    include_str!("../../../../tests/fixtures/github/pull-request-simple.json");
const ISSUE_COMMENT: &str = include_str!("../../../../tests/fixtures/github/issue-comment.json");
const STATUS: &str = include_str!("../../../../tests/fixtures/github/status.json");
const COMBINED_STATUS: &str =
    include_str!("../../../../tests/fixtures/github/combined-commit-status.json");
const REVIEW: &str = include_str!("../../../../tests/fixtures/github/pull-request-review.json");
const DIFF_ENTRIES: &str = include_str!("../../../../tests/fixtures/github/diff-entry-items.json");

struct Templates {
    pull: Value,
    simple_keys: Vec<String>,
    comment: Value,
    status: Value,
    combined: Value,
    review: Value,
    diff_entry: Value,
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
            diff_entry: diff.get(0).cloned().unwrap_or(Value::Null),
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
        let reps: [(&str, &str); 3] = [
            ("https://api.github.com", self.api),
            ("octocat/Hello-World", &full),
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
        v["labels"] = json!([]);
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
        v["head"] = json!({
            "label": format!("{}:{}", self.owner, p.head_ref),
            "ref": p.head_ref,
            "sha": p.head_sha,
            "user": owner_user,
            "repo": repo,
        });
        v["base"] = json!({
            "label": format!("{}:{}", self.owner, p.base_ref),
            "ref": p.base_ref,
            "sha": p.base_sha,
            "user": owner_user,
            "repo": repo,
        });
        v["author_association"] = json!(if p.author == self.owner {
            "OWNER"
        } else {
            "COLLABORATOR"
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
        v["author_association"] = json!(if login == self.owner {
            "OWNER"
        } else {
            "COLLABORATOR"
        });
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
        v["submitted_at"] = json!(ts(r.submitted_at));
        v["commit_id"] = json!(r.commit_id);
        v
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
    pub submitted_at: &'a DateTime<Utc>,
}

fn walk_strings(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| walk_strings(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| walk_strings(x, f)),
        _ => {}
    }
}
