//! Webhook deliveries of the GitHub emulator.
//!
//! Changes made through the REST API or the control API queue a [`Hook`]; one background task
//! ([`deliver`]) renders each into GitHub's payload and POSTs it to the configured URL with
//! GitHub's headers (`X-GitHub-Event`, a fresh `X-GitHub-Delivery` GUID, `X-Hub-Signature-256`
//! = `sha256=` hex HMAC-SHA256 of the body under the secret). Every attempt is recorded in the
//! state ([`WebhookDelivery`]); a failed one is not retried (GitHub does not retry either).
//! Pushes made outside the API (`git push` to the bare repository) are noticed by
//! [`watch_branches`], which compares the branch tips every [`WATCH_INTERVAL`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{api, git, Comment, HeadRepo, Pull, Review, Shared};

/// How often [`watch_branches`] compares the branch tips of the bare repository.
pub(super) const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// GitHub's limit for answering a delivery; a slower receiver is recorded as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The most commits a `push` payload lists (GitHub's limit).
const MAX_PUSH_COMMITS: usize = 20;

/// The id of the emulated repository webhook (`X-GitHub-Hook-ID`).
const HOOK_ID: u64 = 4_242_001;

/// Where webhook deliveries go.
#[derive(Clone)]
pub struct WebhookTarget {
    /// The receiver's URL, e.g. `http://127.0.0.1:8080/webhooks/github`.
    pub url: String,
    /// The webhook secret: deliveries carry `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of
    /// the body under it>`. Empty: no signature header (GitHub's behaviour without a secret).
    /// Never logged.
    pub secret: String,
}

impl WebhookTarget {
    /// A target posting to `url`, signing with `secret`.
    pub fn new(url: &str, secret: &str) -> Self {
        WebhookTarget {
            url: url.to_string(),
            secret: secret.to_string(),
        }
    }
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// One webhook delivery attempt, as GitHub lists them under "Recent Deliveries".
#[derive(Clone, Debug)]
pub struct WebhookDelivery {
    /// The `X-GitHub-Delivery` GUID (a redelivery keeps the original's).
    pub guid: String,
    /// The `X-GitHub-Event` name: `pull_request`, `pull_request_review`, `issue_comment`, `push`.
    pub event: String,
    /// The payload's `action` (`opened`, `synchronize`, `closed`, `submitted`, `created`, …);
    /// `None` for `push`.
    pub action: Option<String>,
    /// The URL it was posted to.
    pub url: String,
    /// The exact JSON body sent.
    pub body: String,
    /// The `X-Hub-Signature-256` header sent; `None` without a secret.
    pub signature: Option<String>,
    /// The receiver's HTTP status; `None` when no answer came (connection refused, timeout).
    pub status: Option<u16>,
    /// Why the delivery failed (no answer, or a non-2xx status); `None` when it succeeded.
    pub error: Option<String>,
    /// The receiver's answer body (at most 4,096 bytes).
    pub response: String,
    /// When it was sent.
    pub delivered_at: DateTime<Utc>,
    /// How long the receiver took to answer.
    pub duration: Duration,
    /// Whether this attempt was a redelivery ([`super::GitHubEmulator::redeliver`]).
    pub redelivery: bool,
}

impl WebhookDelivery {
    /// Whether the receiver answered with a 2xx status.
    pub fn succeeded(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }

    /// The body parsed as JSON (`Value::Null` if it does not parse, which never happens for
    /// the emulator's own payloads).
    pub fn payload(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A change to announce.
pub(super) enum Hook {
    /// `pull_request` (`opened`, `synchronize` with `before`, `closed`).
    Pull {
        action: &'static str,
        pull: Pull,
        sender: String,
        before: Option<String>,
    },
    /// `pull_request_review` `submitted` or `dismissed`.
    Review {
        action: &'static str,
        pull: Pull,
        review: Review,
        sender: String,
    },
    /// `issue_comment` (`created`, `edited` with the old body, `deleted`).
    Comment {
        action: &'static str,
        pull: Pull,
        comment: Comment,
        sender: String,
        old_body: Option<String>,
    },
    /// `push` to `refs/heads/<branch>`; `before`/`after` are `None` for a created/deleted branch.
    Push {
        branch: String,
        before: Option<git2::Oid>,
        after: Option<git2::Oid>,
        sender: String,
    },
    /// A recorded delivery sent again as is.
    Redeliver(Box<WebhookDelivery>),
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, GitHub's `X-Hub-Signature-256` of `body` under
/// the webhook secret `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delivery task: renders and posts every queued hook, one at a time, in order.
pub(super) async fn deliver(sh: Arc<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Hook>) {
    let client = reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .no_proxy()
        .build()
        .unwrap_or_default();
    while let Some(hook) = rx.recv().await {
        let target = sh.webhook.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(target) = target else {
            continue;
        };
        let (guid, event, action, body, redelivery) = match hook {
            Hook::Redeliver(d) => (d.guid, d.event, d.action, d.body, true),
            hook => match render(&sh, hook) {
                Ok((event, action, payload)) => (
                    uuid::Uuid::new_v4().to_string(),
                    event.to_string(),
                    action,
                    payload.to_string(),
                    false,
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "github emulator: cannot render a webhook payload");
                    continue;
                }
            },
        };
        let signature =
            (!target.secret.is_empty()).then(|| sign(target.secret.as_bytes(), body.as_bytes()));
        let repo_id = sh
            .ctx()
            .repository(&Utc::now())
            .get("id")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        let mut req = client
            .post(&target.url)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/tkgops-emulator")
            .header("x-github-event", &event)
            .header("x-github-delivery", &guid)
            .header("x-github-hook-id", HOOK_ID.to_string())
            .header("x-github-hook-installation-target-type", "repository")
            .header("x-github-hook-installation-target-id", repo_id.to_string())
            .body(body.clone());
        if let Some(sig) = &signature {
            req = req.header("x-hub-signature-256", sig);
        }
        let delivered_at = Utc::now();
        let started = Instant::now();
        let (status, error, response) = match req.send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                let mut text = resp.text().await.unwrap_or_default();
                if text.len() > 4096 {
                    let mut cut = 4096;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                let error = (!(200..300).contains(&code)).then(|| format!("HTTP {code}"));
                (Some(code), error, text)
            }
            Err(e) => (None, Some(e.to_string()), String::new()),
        };
        let duration = started.elapsed();
        match &error {
            None => tracing::debug!(%event, %guid, "github emulator: webhook delivered"),
            Some(e) => {
                tracing::warn!(%event, %guid, url = %target.url, error = %e, "github emulator: webhook delivery failed")
            }
        }
        sh.lock().deliveries.push(WebhookDelivery {
            guid,
            event,
            action,
            url: target.url,
            body,
            signature,
            status,
            error,
            response,
            delivered_at,
            duration,
            redelivery,
        });
    }
}

/// The event name, action and payload of a hook.
fn render(sh: &Shared, hook: Hook) -> Result<(&'static str, Option<String>, Value), String> {
    let ctx = sh.ctx();
    let now = Utc::now();
    let repo = sh.repo().map_err(|e| e.to_string())?;
    let comments_of = |n: u64| sh.lock().comments.iter().filter(|c| c.issue == n).count();
    match hook {
        Hook::Pull {
            action,
            pull,
            sender,
            before,
        } => {
            let pr = api::pull_json(sh, &repo, &pull, comments_of(pull.number), false)?;
            let mut v = json!({
                "action": action,
                "number": pull.number,
                "pull_request": pr,
                "repository": ctx.repository(&now),
                "sender": ctx.user(&sender),
            });
            if let Some(before) = before {
                v["before"] = json!(before);
                v["after"] = json!(pull.head_sha);
            }
            Ok(("pull_request", Some(action.to_string()), v))
        }
        Hook::Review {
            action,
            pull,
            review,
            sender,
        } => {
            let pr = api::pull_json(sh, &repo, &pull, comments_of(pull.number), false)?;
            let mut review = api::review_json(sh, &review);
            // Webhook payloads spell the review state in lowercase (`approved`, `dismissed`),
            // unlike the REST API (GitHub's webhook examples).
            if let Some(state) = review.get("state").and_then(Value::as_str) {
                review["state"] = json!(state.to_ascii_lowercase());
            }
            let v = json!({
                "action": action,
                "review": review,
                "pull_request": pr,
                "repository": ctx.repository(&now),
                "sender": ctx.user(&sender),
            });
            Ok(("pull_request_review", Some(action.to_string()), v))
        }
        Hook::Comment {
            action,
            pull,
            comment,
            sender,
            old_body,
        } => {
            let mut v = json!({
                "action": action,
                "issue": ctx.issue(&pull, comments_of(pull.number)),
                "comment": api::comment_json(sh, &comment),
                "repository": ctx.repository(&now),
                "sender": ctx.user(&sender),
            });
            if let Some(old) = old_body {
                v["changes"] = json!({"body": {"from": old}});
            }
            Ok(("issue_comment", Some(action.to_string()), v))
        }
        Hook::Push {
            branch,
            before,
            after,
            sender,
        } => {
            let zero = "0".repeat(40);
            let commits = match after {
                Some(a) => git::push_commits(&repo, &branch, before, a, MAX_PUSH_COMMITS)
                    .map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            let head_commit = match after {
                Some(a) => Some(git::commit_info(&repo, a).map_err(|e| e.to_string())?),
                None => None,
            };
            let forced = match (before, after) {
                (Some(b), Some(a)) => !git::is_ancestor(&repo, b, a),
                _ => false,
            };
            let before_s = before
                .map(|o| o.to_string())
                .unwrap_or_else(|| zero.clone());
            let after_s = after.map(|o| o.to_string()).unwrap_or(zero);
            let v = json!({
                "ref": format!("refs/heads/{branch}"),
                "before": before_s,
                "after": after_s,
                "created": before.is_none(),
                "deleted": after.is_none(),
                "forced": forced,
                "base_ref": null,
                "compare": format!("https://github.com/{}/{}/compare/{}...{}",
                    sh.opts.owner, sh.opts.repo, &before_s[..12], &after_s[..12]),
                "commits": commits.iter().map(|c| ctx.push_commit(c)).collect::<Vec<_>>(),
                "head_commit": head_commit.as_ref().map(|c| ctx.push_commit(c)),
                "repository": ctx.push_repository(&now),
                "pusher": {"name": sender, "email": ctx.noreply_email(&sender)},
                "sender": ctx.user(&sender),
            });
            Ok(("push", None, v))
        }
        Hook::Redeliver(_) => Err("a redelivery is sent as recorded".into()),
    }
}

/// Watches the bare repository's branch tips (every [`WATCH_INTERVAL`]): a moved, created or
/// deleted branch is announced as `push` (unless it is a fork PR's head, which lives in the
/// fork), and the open pull requests whose head it is are refreshed (announcing
/// `synchronize`).
pub(super) async fn watch_branches(sh: Arc<Shared>) {
    let mut last: BTreeMap<String, git2::Oid> = sh
        .repo()
        .and_then(|r| git::branch_tips(&r))
        .unwrap_or_default();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(repo) = sh.repo() else {
            continue;
        };
        let Ok(tips) = git::branch_tips(&repo) else {
            continue;
        };
        if tips == last {
            continue;
        }
        let mut changed: Vec<(String, Option<git2::Oid>, Option<git2::Oid>)> = tips
            .iter()
            .filter(|(b, oid)| last.get(*b) != Some(*oid))
            .map(|(b, oid)| (b.clone(), last.get(b).copied(), Some(*oid)))
            .collect();
        changed.extend(
            last.iter()
                .filter(|(b, _)| !tips.contains_key(*b))
                .map(|(b, oid)| (b.clone(), Some(*oid), None)),
        );
        last = tips;
        for (branch, before, after) in changed {
            let (in_fork, sender) = {
                let mut st = sh.lock();
                let in_fork = st
                    .pulls
                    .values()
                    .any(|p| p.head_ref == branch && p.head_repo != HeadRepo::Base);
                let sender = st
                    .pushers
                    .remove(&branch)
                    .or_else(|| {
                        st.pulls
                            .values()
                            .find(|p| p.open && p.head_ref == branch)
                            .map(|p| p.author.clone())
                    })
                    .unwrap_or_else(|| sh.opts.owner.clone());
                (in_fork, sender)
            };
            if !in_fork {
                sh.emit(Hook::Push {
                    branch: branch.clone(),
                    before,
                    after,
                    sender,
                });
            }
            let mut st = sh.lock();
            for p in st
                .pulls
                .values_mut()
                .filter(|p| p.open && p.head_ref == branch)
            {
                if let Err(e) = sh.refresh(&repo, p) {
                    tracing::warn!(error = %e, pr = p.number, "github emulator: refreshing a pull request failed");
                }
            }
        }
    }
}
