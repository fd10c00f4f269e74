//! The bot's journal: everything the bot remembers between polls and across restarts, with a
//! typed method per fact (what it planned for a pull request, the digests approvals bind to,
//! merge records, cursors, the trusted policy and its ledger, schedule fires, webhook
//! deliveries), on its own sled tree of the engine's database ([`SledStore::tree`], named
//! [`TREE`]).
//!
//! Every write is flushed before it returns (the engine's group commit). Values are JSON of the
//! types below; keys are private to this module. The engine keeps the runs, and the one fact
//! about them the bot needs that is not its own, each cluster's deployed commit
//! ([`Store::deployed`]).
//!
//! The journal carries a schema version ([`SCHEMA_VERSION`]); a journal written by a newer
//! version is refused rather than misread. Journals of earlier versions (schema 0) kept this
//! state as string keys in the engine's `meta` tree.
//! [`BotJournal::open`] moves them here, once: each key is converted, written to the tree, and
//! only then removed from `meta`, so a crash in the middle leaves the rest to the next open and
//! a second open finds nothing left to move. The engine's own `meta` keys (cancellation
//! requests) stay where they are; a key this version does not know, or cannot read, is left in
//! `meta` and logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tkgops_engine::store::{JournalTree, SledStore, Store, StoreError, TreeOp};
use tkgops_engine::CANCEL_PREFIX;

use crate::reconcile::schedule::FireRecord;
use crate::sha::{HeadSha, MergeSha, PolicySha};
use crate::trust::{LedgerEntry, TrustedPolicy};

/// The name of the journal's sled tree.
pub const TREE: &str = "bot";

/// How many rollout measurements the plan's estimate averages at most (the most recent keys).
pub const ROLLOUT_SAMPLES: usize = 200;

/// The schema version of the journal this version writes: 1, the typed journal on its own
/// tree (0 was the string keys of the engine's `meta` tree).
pub const SCHEMA_VERSION: u32 = 1;

/// The key of the schema version.
const SCHEMA_KEY: &str = "schema";

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The database failed.
    #[error("journal: {0}")]
    Store(#[from] StoreError),
    /// An entry could not be encoded or decoded.
    #[error("journal entry {key}: {source}")]
    Codec {
        /// The entry's key.
        key: String,
        /// The serde_json error.
        #[source]
        source: serde_json::Error,
    },
    /// The journal was written by a newer version of tkgops (its schema is `found`, this
    /// version reads up to [`SCHEMA_VERSION`]): it is not opened, so that nothing is misread.
    #[error("the journal has schema version {found}, written by a newer tkgops; this version reads up to {SCHEMA_VERSION}")]
    NewerSchema {
        /// The journal's schema version.
        found: u32,
    },
}

impl From<JournalError> for crate::BotError {
    fn from(e: JournalError) -> Self {
        crate::BotError::Store(e.to_string())
    }
}

/// The cursors the poll loop lists GitHub from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The `updated_at` (GitHub's clock) of the newest closed pull request whose merge was
    /// handled. Each poll lists the pull requests closed since (with a 5 min overlap); on the
    /// very first start the last 24 h are scanned.
    ClosedPulls,
    /// The `updated_at` (GitHub's clock) of the newest comment read. Each poll lists the
    /// comments updated since, with a 5 min overlap; a bot that never polled starts 5 min
    /// before its first poll (old commands are not replayed).
    Comments,
}

impl Cursor {
    fn key(self) -> &'static str {
        match self {
            Cursor::ClosedPulls => "cursor/closed-pulls",
            Cursor::Comments => "cursor/comments",
        }
    }
}

/// What a pull request's head was planned as: the plan depends on the head, the allow-delete
/// label and the policy chain (the trusted policy commit, and the untrusted change the plan
/// warns of). A head planned as the same value is not planned again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedAs {
    /// The head SHA planned.
    pub head: HeadSha,
    /// Whether the pull request carried the label
    /// [`tkgops_domain::request::ALLOW_DELETE_LABEL`].
    pub allow_delete: bool,
    /// The trusted policy commit it was planned under.
    pub policy: PolicySha,
    /// The commit of the untrusted policy change on the default branch, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untrusted: Option<String>,
}

impl PlannedAs {
    /// Reads the text earlier versions kept: `<head>[+<label>]@<policy>[!<untrusted>]`.
    /// `None` when it has another shape.
    fn parse_legacy(text: &str) -> Option<PlannedAs> {
        let (head, chain) = text.split_once('@')?;
        let label = format!("+{}", tkgops_domain::request::ALLOW_DELETE_LABEL);
        let (head, allow_delete) = match head.strip_suffix(label.as_str()) {
            Some(h) => (h, true),
            None => (head, false),
        };
        let (policy, untrusted) = match chain.split_once('!') {
            Some((p, u)) => (p, Some(u.to_string())),
            None => (chain, None),
        };
        (!head.is_empty() && !policy.is_empty()).then(|| PlannedAs {
            head: HeadSha::new(head),
            allow_delete,
            policy: PolicySha::new(policy),
            untrusted,
        })
    }
}

/// The digests of what the plan of a head executes, by `<cluster>#<workflow>` (the domain's
/// [`tkgops_domain::workflow::Plan::digests`]): journalled before the plan's status is set,
/// so the merge runs exactly what was approved (security rule 2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlanDigests(pub BTreeMap<String, String>);

impl PlanDigests {
    /// The digest of the plan of `cluster`'s `workflow` (`-` for none).
    pub fn get(&self, cluster: &str, workflow: Option<&str>) -> Option<&str> {
        self.0
            .get(&format!("{cluster}#{}", workflow.unwrap_or("-")))
            .map(String::as_str)
    }

    /// Whether the digests name `cluster`'s `workflow`.
    pub fn contains(&self, cluster: &str, workflow: Option<&str>) -> bool {
        self.get(cluster, workflow).is_some()
    }

    /// The SHA-256 (hex) of the digests as JSON: what an approval given under this plan is
    /// stamped with ([`BotJournal::review_stamp`]); the same value as earlier versions computed
    /// over the journalled bytes.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(&self.0).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(json))
    }
}

/// The plan comment tkgops last wrote on a pull request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StickyComment {
    /// Its comment id (an edit that removed the marker still names it).
    pub comment_id: u64,
    /// The SHA-256 (hex) of the body tkgops wrote: an edit by someone else shows as another
    /// body (GitHub's second-granular `updated_at` hides an edit in the same second). `None`
    /// when a journal of an earlier version did not have it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

/// A cluster of a plan that is not run, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "NotRunWire")]
pub struct NotRun {
    /// The cluster.
    pub cluster: String,
    /// The intent's label (`create`, `upgrade`, …).
    pub intent: String,
    /// Why it is not run, for people.
    pub reason: String,
}

/// [`NotRun`] as it is read: a named record, or the `[cluster, intent, reason]` triple
/// earlier versions wrote.
#[derive(Deserialize)]
#[serde(untagged)]
enum NotRunWire {
    #[serde(rename_all = "camelCase")]
    Named {
        cluster: String,
        intent: String,
        reason: String,
    },
    Triple(String, String, String),
}

impl From<NotRunWire> for NotRun {
    fn from(w: NotRunWire) -> Self {
        match w {
            NotRunWire::Named {
                cluster,
                intent,
                reason,
            }
            | NotRunWire::Triple(cluster, intent, reason) => NotRun {
                cluster,
                intent,
                reason,
            },
        }
    }
}

/// What the bot remembers about a merge commit it handled (or a wave commit of a scheduled
/// apply): the pull request, the runs, the clusters not run and the plan Markdown shown
/// collapsed in the run comment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeRecord {
    /// Pull request number.
    pub pr: u64,
    /// Merge commit SHA.
    pub commit: MergeSha,
    /// Run ids submitted for it.
    pub run_ids: Vec<String>,
    /// Clusters of the plan that are not run, with the reason.
    pub not_run: Vec<NotRun>,
    /// The plan Markdown (without the marker), secret-free.
    pub plan_markdown: String,
    /// Why nothing was executed (approval missing, fork), if so.
    pub refused: Option<String>,
    /// Clusters not run because their plan at the merge commit differs from the plan approved
    /// for the head SHA (or none was approved): the merge did not do everything it says.
    #[serde(default)]
    pub changed_since_approval: Vec<String>,
    /// The hidden marker of the run comment, when it is not the pull request's sticky comment
    /// (the waves of a scheduled apply each have their own comment on the record pull request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// Notes shown under the run comment's header: how the merge entered the default branch
    /// (a rebase merge's range), the policy chain, changes a re-plan left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A rollout measurement of a succeeded run
/// ([`crate::reconcile::publish::rollout_measurement`]): the seconds its machine waits took and the
/// machines they saw replaced or added.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutSample {
    /// Seconds of the `kube.wait-control-plane` and `kube.wait-machine-deployments` steps.
    pub secs: f64,
    /// Machines those steps saw roll.
    pub nodes: u32,
}

/// Which object of a cluster a drifted field is on (the drift scan, [`crate::reconcile::drift`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DriftObject {
    /// The Cluster API Cluster on the management cluster.
    Cluster,
    /// The cluster in Tanzu Mission Control.
    TmcCluster,
    /// A PackageInstall (and its values Secret) on the workload cluster.
    PackageInstall,
}

impl std::fmt::Display for DriftObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriftObject::Cluster => "Cluster",
            DriftObject::TmcCluster => "TMC cluster",
            DriftObject::PackageInstall => "PackageInstall",
        })
    }
}

/// One drifted field of a cluster, and since when the scans see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftEntry {
    /// The object the field is on.
    pub object: DriftObject,
    /// The field, the value Git implies and the live value.
    #[serde(flatten)]
    pub field: tkgops_domain::drift::DriftField,
    /// The first scan that saw this field with this live value (bot clock).
    pub since: DateTime<Utc>,
}

/// The drift of one cluster tkgops deployed, as the last scan found it. Kept only while the
/// cluster has drift.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftRecord {
    /// The cluster's name (`clusters/<name>/`).
    pub cluster: String,
    /// The commit the cluster last ran (its deployed commit): what Git says is read there.
    pub commit: String,
    /// The drifted fields, object by object.
    pub fields: Vec<DriftEntry>,
    /// Drift tkgops cannot revert (the Cluster or the TMC cluster is gone or not tkgops's),
    /// one sentence each, with since when.
    #[serde(default)]
    pub unrevertible: Vec<(String, DateTime<Utc>)>,
    /// When the last scan looked at it (bot clock).
    pub scanned_at: DateTime<Utc>,
}

/// The last drift revert run of a cluster under `driftPolicy: revert` (README "Drift"), written
/// before the run is submitted so that a restart submits the same run id again (the engine
/// dedupes it) instead of a second revert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevertRecord {
    /// The cluster's name (`clusters/<name>/`).
    pub cluster: String,
    /// The deployed commit the run re-applies.
    pub commit: String,
    /// The run's id ([`crate::reconcile::drift::revert_run_id`]).
    pub run_id: String,
    /// The scan that found the drift and started the run (bot clock).
    pub scan_at: DateTime<Utc>,
    /// What it reverts, `object field` each.
    pub fields: Vec<String>,
}

/// The last drift scan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftScan {
    /// When it finished (bot clock).
    pub at: DateTime<Utc>,
    /// How many clusters it compared.
    pub clusters: usize,
    /// Clusters it could not compare, with why (e.g. a management cluster it could not reach).
    #[serde(default)]
    pub failed: Vec<(String, String)>,
}

/// The fleet dashboard issue ([`crate::reconcile::schedule`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardIssue {
    /// Its issue number.
    pub number: u64,
    /// The SHA-256 (hex) of the body GitHub last accepted (a body with the same digest is not
    /// written again); empty when not known.
    pub body_sha256: String,
}

/// A webhook delivery the bot answered ([`crate::webhook`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// When it was received (the webhook state's clock).
    pub received: DateTime<Utc>,
    /// Its `X-GitHub-Event`.
    pub event: String,
}

/// The bot's journal. Cheap to clone; clones share the tree.
#[derive(Clone)]
pub struct BotJournal {
    tree: JournalTree,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for BotJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotJournal").finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(value).map_err(|source| JournalError::Codec {
        key: key.to_string(),
        source,
    })
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, JournalError> {
    serde_json::from_slice(bytes).map_err(|source| JournalError::Codec {
        key: key.to_string(),
        source,
    })
}

fn pr_key(pr: u64, what: &str) -> String {
    format!("pr/{pr}/{what}")
}

fn fire_key(schedule: &str, fire: DateTime<Utc>) -> String {
    format!("schedule/{schedule}/fire/{}", fire.to_rfc3339())
}

/// An RFC 3339 time as earlier versions kept times.
fn parse_time(b: &[u8]) -> Option<DateTime<Utc>> {
    let s = std::str::from_utf8(b).ok()?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

impl BotJournal {
    /// The journal of `store`'s database (its tree [`TREE`]), after moving the state an
    /// earlier version kept in the engine's `meta` tree into it (see the module docs) and
    /// recording the schema version. Returns the journal and how many earlier keys it moved.
    ///
    /// Errors: [`JournalError::NewerSchema`] for a journal of a newer version;
    /// [`JournalError::Store`] when the database fails.
    pub async fn open(store: Arc<SledStore>) -> Result<(BotJournal, usize), JournalError> {
        let tree = store.tree(TREE)?;
        let journal = BotJournal { tree, store };
        let version: Option<u32> = journal.get(SCHEMA_KEY).await?;
        if let Some(found) = version.filter(|v| *v > SCHEMA_VERSION) {
            return Err(JournalError::NewerSchema { found });
        }
        // Always looked at (cheap: the engine keeps a few keys there), so that keys a crash
        // left in `meta` after the schema was recorded are moved too.
        let moved = journal.migrate().await?;
        if version != Some(SCHEMA_VERSION) {
            journal.put(SCHEMA_KEY, &SCHEMA_VERSION).await?;
        }
        Ok((journal, moved))
    }

    /// The engine's store of the same database (runs, deployed commits).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, JournalError> {
        match self.tree.get(key.as_bytes()).await? {
            Some(b) => decode(key, &b).map(Some),
            None => Ok(None),
        }
    }

    async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), JournalError> {
        let bytes = encode(key, value)?;
        Ok(self.tree.insert(key.as_bytes(), &bytes).await?)
    }

    async fn flag(&self, key: &str) -> Result<bool, JournalError> {
        Ok(self.tree.contains(key.as_bytes()).await?)
    }

    async fn set_flag(&self, key: &str) -> Result<(), JournalError> {
        Ok(self.tree.insert(key.as_bytes(), b"").await?)
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        Ok(self
            .tree
            .scan_prefix(prefix.as_bytes())
            .await?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    // --- Cursors.

    /// The cursor `kind`, `None` before the first poll that set it.
    ///
    /// Errors: [`JournalError`] when the journal cannot be read or the entry does not decode.
    pub async fn cursor(&self, kind: Cursor) -> Result<Option<DateTime<Utc>>, JournalError> {
        self.get(kind.key()).await
    }

    /// Sets the cursor `kind` to `at`. Errors: [`JournalError::Store`].
    pub async fn set_cursor(&self, kind: Cursor, at: DateTime<Utc>) -> Result<(), JournalError> {
        self.put(kind.key(), &at).await
    }

    // --- Pull requests.

    /// What pull request `pr`'s head was last planned as, `None` when it was not planned (or
    /// must be planned again). Errors: as [`BotJournal::cursor`].
    pub async fn planned(&self, pr: u64) -> Result<Option<PlannedAs>, JournalError> {
        self.get(&pr_key(pr, "planned")).await
    }

    /// Records that pull request `pr` was planned as `planned`. Errors: [`JournalError`].
    pub async fn set_planned(&self, pr: u64, planned: &PlannedAs) -> Result<(), JournalError> {
        self.put(&pr_key(pr, "planned"), planned).await
    }

    /// Forgets what pull request `pr` was planned as: the next poll plans it again.
    /// Errors: [`JournalError::Store`].
    pub async fn forget_planned(&self, pr: u64) -> Result<(), JournalError> {
        Ok(self.tree.remove(pr_key(pr, "planned").as_bytes()).await?)
    }

    /// The digests of what the plan of pull request `pr` at `head` executes (what approvals
    /// of that head are for), `None` when no plan of that head was posted.
    /// Errors: as [`BotJournal::cursor`].
    pub async fn approved_digests(
        &self,
        pr: u64,
        head: &HeadSha,
    ) -> Result<Option<PlanDigests>, JournalError> {
        self.get(&pr_key(pr, &format!("digests/{head}"))).await
    }

    /// Records the digests of the plan of pull request `pr` at `head`. Errors: [`JournalError`].
    pub async fn set_approved_digests(
        &self,
        pr: u64,
        head: &HeadSha,
        digests: &PlanDigests,
    ) -> Result<(), JournalError> {
        self.put(&pr_key(pr, &format!("digests/{head}")), digests)
            .await
    }

    /// The stamp of review `review` of pull request `pr`: the [`PlanDigests::hash`] of the
    /// plan it was given under, recorded when that plan changed after it (the approval is then
    /// stale for the new plan). `None` when never stamped. Errors: as [`BotJournal::cursor`].
    pub async fn review_stamp(&self, pr: u64, review: u64) -> Result<Option<String>, JournalError> {
        self.get(&pr_key(pr, &format!("review/{review}"))).await
    }

    /// Stamps review `review` of pull request `pr` with `hash`. Errors: [`JournalError`].
    pub async fn set_review_stamp(
        &self,
        pr: u64,
        review: u64,
        hash: &str,
    ) -> Result<(), JournalError> {
        self.put(&pr_key(pr, &format!("review/{review}")), &hash)
            .await
    }

    /// The plan comment tkgops last wrote on pull request `pr`. Errors: as
    /// [`BotJournal::cursor`].
    pub async fn sticky(&self, pr: u64) -> Result<Option<StickyComment>, JournalError> {
        self.get(&pr_key(pr, "sticky")).await
    }

    /// Records the plan comment tkgops wrote on pull request `pr`. Errors: [`JournalError`].
    pub async fn set_sticky(&self, pr: u64, sticky: &StickyComment) -> Result<(), JournalError> {
        self.put(&pr_key(pr, "sticky"), sticky).await
    }

    /// The clusters whose details comment the last plan of pull request `pr` posted (empty
    /// when it posted none). Errors: as [`BotJournal::cursor`].
    pub async fn plan_details(&self, pr: u64) -> Result<Vec<String>, JournalError> {
        Ok(self
            .get(&pr_key(pr, "plan-details"))
            .await?
            .unwrap_or_default())
    }

    /// Records the clusters whose details comment the plan of pull request `pr` posted.
    /// Errors: [`JournalError`].
    pub async fn set_plan_details(&self, pr: u64, clusters: &[String]) -> Result<(), JournalError> {
        self.put(&pr_key(pr, "plan-details"), &clusters).await
    }

    /// The merge commit of pull request `pr` once its merge was handled (the record is
    /// [`BotJournal::merge_record`]), else `None`. Errors: as [`BotJournal::cursor`].
    pub async fn merged(&self, pr: u64) -> Result<Option<MergeSha>, JournalError> {
        self.get(&pr_key(pr, "merged")).await
    }

    /// Records that the merge `merge` of pull request `pr` was handled. Errors: [`JournalError`].
    pub async fn set_merged(&self, pr: u64, merge: &MergeSha) -> Result<(), JournalError> {
        self.put(&pr_key(pr, "merged"), merge).await
    }

    // --- Merge records and their publication.

    /// The record of merge commit `commit`, if the bot handled that merge (or started a wave
    /// at it). Errors: as [`BotJournal::cursor`].
    pub async fn merge_record(
        &self,
        commit: &MergeSha,
    ) -> Result<Option<MergeRecord>, JournalError> {
        self.get(&format!("merge/{commit}")).await
    }

    /// Writes `record`, listing its commit as unpublished first (one flush; a crash after the
    /// record is written still republishes it). Errors: [`JournalError`].
    pub async fn put_merge_record(&self, record: &MergeRecord) -> Result<(), JournalError> {
        let key = format!("merge/{}", record.commit);
        let value = encode(&key, record)?;
        Ok(self
            .tree
            .apply(&[
                TreeOp::Put {
                    key: format!("unpublished/{}", record.commit).into_bytes(),
                    value: Vec::new(),
                },
                TreeOp::Put {
                    key: key.into_bytes(),
                    value,
                },
            ])
            .await?)
    }

    /// The merge commits whose final comment and `tkgops/apply` status GitHub has not
    /// accepted yet, in key order. Errors: [`JournalError::Store`].
    pub async fn unpublished(&self) -> Result<Vec<MergeSha>, JournalError> {
        Ok(self
            .scan("unpublished/")
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("unpublished/").map(MergeSha::new))
            .collect())
    }

    /// Lists `commit` as unpublished (its final comment and status will change).
    /// Errors: [`JournalError::Store`].
    pub async fn mark_unpublished(&self, commit: &MergeSha) -> Result<(), JournalError> {
        self.set_flag(&format!("unpublished/{commit}")).await
    }

    /// Whether `commit` is listed as unpublished. Errors: [`JournalError::Store`].
    pub async fn is_unpublished(&self, commit: &MergeSha) -> Result<bool, JournalError> {
        self.flag(&format!("unpublished/{commit}")).await
    }

    /// Removes `commit` from the unpublished list: GitHub accepted its final comment and
    /// status. Errors: [`JournalError::Store`].
    pub async fn mark_published(&self, commit: &MergeSha) -> Result<(), JournalError> {
        Ok(self
            .tree
            .remove(format!("unpublished/{commit}").as_bytes())
            .await?)
    }

    // --- Clusters.

    /// The latest run submitted for `cluster` (a retry only resumes a cluster's latest run).
    /// Errors: as [`BotJournal::cursor`].
    pub async fn last_run(&self, cluster: &str) -> Result<Option<String>, JournalError> {
        self.get(&format!("cluster/{cluster}/last-run")).await
    }

    /// Records `run_id` as the latest run submitted for `cluster`. Errors: [`JournalError`].
    pub async fn set_last_run(&self, cluster: &str, run_id: &str) -> Result<(), JournalError> {
        self.put(&format!("cluster/{cluster}/last-run"), &run_id)
            .await
    }

    /// The rollout measurements of succeeded runs, the [`ROLLOUT_SAMPLES`] greatest run ids
    /// at most; entries that do not decode are skipped. Errors: [`JournalError::Store`].
    pub async fn rollout_samples(&self) -> Result<Vec<RolloutSample>, JournalError> {
        Ok(self
            .scan("rollout/")
            .await?
            .iter()
            .rev()
            .take(ROLLOUT_SAMPLES)
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect())
    }

    /// Records the rollout measurement of succeeded run `run_id`. Errors: [`JournalError`].
    pub async fn add_rollout_sample(
        &self,
        run_id: &str,
        sample: RolloutSample,
    ) -> Result<(), JournalError> {
        self.put(&format!("rollout/{run_id}"), &sample).await
    }

    // --- Commands and comments.

    /// Whether the command in comment `comment` was answered. Errors: [`JournalError::Store`].
    pub async fn command_answered(&self, comment: u64) -> Result<bool, JournalError> {
        self.flag(&format!("command/{comment}")).await
    }

    /// Records that the command in comment `comment` was answered. Errors: [`JournalError`].
    pub async fn set_command_answered(&self, comment: u64) -> Result<(), JournalError> {
        self.set_flag(&format!("command/{comment}")).await
    }

    /// The `updated_at` of sticky comment `comment` when its run comment was last republished
    /// after an edit. Errors: as [`BotJournal::cursor`].
    pub async fn sticky_seen(&self, comment: u64) -> Result<Option<DateTime<Utc>>, JournalError> {
        self.get(&format!("sticky-seen/{comment}")).await
    }

    /// Records `at` as the `updated_at` of sticky comment `comment` republished.
    /// Errors: [`JournalError`].
    pub async fn set_sticky_seen(
        &self,
        comment: u64,
        at: DateTime<Utc>,
    ) -> Result<(), JournalError> {
        self.put(&format!("sticky-seen/{comment}"), &at).await
    }

    // --- The policy chain.

    /// The trusted policy commit ([`crate::trust`]), `None` before the first poll.
    /// Errors: as [`BotJournal::cursor`].
    pub async fn trusted_policy(&self) -> Result<Option<TrustedPolicy>, JournalError> {
        self.get("policy/trusted").await
    }

    /// Records the trusted policy commit. Errors: [`JournalError`].
    pub async fn set_trusted_policy(&self, policy: &TrustedPolicy) -> Result<(), JournalError> {
        self.put("policy/trusted", policy).await
    }

    /// The ledger entry of first-parent commit `commit` of the default branch: which merge
    /// added it and whether it was approved. Errors: as [`BotJournal::cursor`].
    pub async fn ledger_entry(&self, commit: &str) -> Result<Option<LedgerEntry>, JournalError> {
        self.get(&format!("ledger/{commit}")).await
    }

    /// Records `entry` as the ledger entry of each of `commits` (one flush).
    /// Errors: [`JournalError`].
    pub async fn put_ledger(
        &self,
        entry: &LedgerEntry,
        commits: &[String],
    ) -> Result<(), JournalError> {
        let value = encode("ledger", entry)?;
        let ops: Vec<TreeOp> = commits
            .iter()
            .map(|c| TreeOp::Put {
                key: format!("ledger/{c}").into_bytes(),
                value: value.clone(),
            })
            .collect();
        Ok(self.tree.apply(&ops).await?)
    }

    /// Whether the untrusted policy change at `commit` was reported.
    /// Errors: [`JournalError::Store`].
    pub async fn untrusted_reported(&self, commit: &str) -> Result<bool, JournalError> {
        self.flag(&format!("policy/untrusted-reported/{commit}"))
            .await
    }

    /// Records that the untrusted policy change at `commit` was reported.
    /// Errors: [`JournalError::Store`].
    pub async fn set_untrusted_reported(&self, commit: &str) -> Result<(), JournalError> {
        self.set_flag(&format!("policy/untrusted-reported/{commit}"))
            .await
    }

    // --- Schedules.

    /// The latest fire of `schedule` handled. Errors: as [`BotJournal::cursor`].
    pub async fn last_fire(&self, schedule: &str) -> Result<Option<DateTime<Utc>>, JournalError> {
        self.get(&format!("schedule/{schedule}/last-fire")).await
    }

    /// Records `fire` as the latest fire of `schedule` handled. Errors: [`JournalError`].
    pub async fn set_last_fire(
        &self,
        schedule: &str,
        fire: DateTime<Utc>,
    ) -> Result<(), JournalError> {
        self.put(&format!("schedule/{schedule}/last-fire"), &fire)
            .await
    }

    /// The record of `schedule`'s fire at `fire`. Errors: as [`BotJournal::cursor`].
    pub async fn fire(
        &self,
        schedule: &str,
        fire: DateTime<Utc>,
    ) -> Result<Option<FireRecord>, JournalError> {
        self.get(&fire_key(schedule, fire)).await
    }

    /// Every fire record of `schedule`, oldest first; records that do not decode are
    /// skipped. Errors: [`JournalError::Store`].
    pub async fn fires(&self, schedule: &str) -> Result<Vec<FireRecord>, JournalError> {
        Ok(self
            .scan(&format!("schedule/{schedule}/fire/"))
            .await?
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect())
    }

    /// Every fire record of every schedule, by schedule name then oldest first; records that
    /// do not decode are skipped. Errors: [`JournalError::Store`].
    pub async fn all_fires(&self) -> Result<Vec<FireRecord>, JournalError> {
        Ok(self
            .scan("schedule/")
            .await?
            .iter()
            .filter(|(k, _)| k.contains("/fire/"))
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect())
    }

    /// Writes `record` (keyed by its schedule and fire). Errors: [`JournalError`].
    pub async fn put_fire(&self, record: &FireRecord) -> Result<(), JournalError> {
        self.put(&fire_key(&record.schedule, record.fire), record)
            .await
    }

    /// How many bump pull requests `schedule` opened after `since` (for `maxPRsPerHour`).
    /// Errors: [`JournalError::Store`].
    pub async fn bump_pulls_opened_since(
        &self,
        schedule: &str,
        since: DateTime<Utc>,
    ) -> Result<u32, JournalError> {
        let prefix = format!("schedule/{schedule}/opened/");
        Ok(self
            .scan(&prefix)
            .await?
            .iter()
            .filter_map(|(k, _)| {
                let rest = k.strip_prefix(&prefix)?;
                parse_time(rest.split('/').next()?.as_bytes())
            })
            .filter(|t| *t > since)
            .count() as u32)
    }

    /// Records that `schedule` opened bump pull request `pr` at `at`. Errors: [`JournalError`].
    pub async fn record_bump_pull(
        &self,
        schedule: &str,
        at: DateTime<Utc>,
        pr: u64,
    ) -> Result<(), JournalError> {
        self.set_flag(&format!(
            "schedule/{schedule}/opened/{}/{pr}",
            at.to_rfc3339()
        ))
        .await
    }

    /// Whether the halt of `schedule`'s fire `fire` after `resumes` resumes was reported.
    /// Errors: [`JournalError::Store`].
    pub async fn halt_reported(
        &self,
        schedule: &str,
        fire: DateTime<Utc>,
        resumes: usize,
    ) -> Result<bool, JournalError> {
        self.flag(&format!(
            "schedule/{schedule}/halt-reported/{}/{resumes}",
            fire.to_rfc3339()
        ))
        .await
    }

    /// Records that the halt of `schedule`'s fire `fire` after `resumes` resumes was reported.
    /// Errors: [`JournalError::Store`].
    pub async fn set_halt_reported(
        &self,
        schedule: &str,
        fire: DateTime<Utc>,
        resumes: usize,
    ) -> Result<(), JournalError> {
        self.set_flag(&format!(
            "schedule/{schedule}/halt-reported/{}/{resumes}",
            fire.to_rfc3339()
        ))
        .await
    }

    // --- Drift.

    /// The drift of `cluster` found by the last scan, `None` when it had none.
    /// Errors: as [`BotJournal::cursor`].
    pub async fn drift(&self, cluster: &str) -> Result<Option<DriftRecord>, JournalError> {
        self.get(&format!("drift/cluster/{cluster}")).await
    }

    /// Every cluster's drift, by cluster name. Errors: as [`BotJournal::cursor`].
    pub async fn drifts(&self) -> Result<Vec<DriftRecord>, JournalError> {
        self.scan("drift/cluster/")
            .await?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// Records `record` as its cluster's drift. Errors: [`JournalError`].
    pub async fn put_drift(&self, record: &DriftRecord) -> Result<(), JournalError> {
        self.put(&format!("drift/cluster/{}", record.cluster), record)
            .await
    }

    /// Forgets `cluster`'s drift (the last scan found none). Errors: [`JournalError::Store`].
    pub async fn clear_drift(&self, cluster: &str) -> Result<(), JournalError> {
        Ok(self
            .tree
            .remove(format!("drift/cluster/{cluster}").as_bytes())
            .await?)
    }

    /// `cluster`'s last drift revert run, `None` when it had none. Errors: as
    /// [`BotJournal::cursor`].
    pub async fn revert(&self, cluster: &str) -> Result<Option<RevertRecord>, JournalError> {
        self.get(&format!("drift/revert/{cluster}")).await
    }

    /// Every cluster's last drift revert run, by cluster name. Errors: as
    /// [`BotJournal::cursor`].
    pub async fn reverts(&self) -> Result<Vec<RevertRecord>, JournalError> {
        self.scan("drift/revert/")
            .await?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// Records `record` as its cluster's last drift revert run (flushed before the run is
    /// submitted). Errors: [`JournalError`].
    pub async fn put_revert(&self, record: &RevertRecord) -> Result<(), JournalError> {
        self.put(&format!("drift/revert/{}", record.cluster), record)
            .await
    }

    /// The last drift scan, `None` before the first. Errors: as [`BotJournal::cursor`].
    pub async fn drift_scan(&self) -> Result<Option<DriftScan>, JournalError> {
        self.get("drift/scan").await
    }

    /// Records the last drift scan. Errors: [`JournalError`].
    pub async fn set_drift_scan(&self, scan: &DriftScan) -> Result<(), JournalError> {
        self.put("drift/scan", scan).await
    }

    /// The fleet dashboard issue, once the bot opened it. Errors: as [`BotJournal::cursor`].
    pub async fn dashboard(&self) -> Result<Option<DashboardIssue>, JournalError> {
        self.get("dashboard").await
    }

    /// Records the fleet dashboard issue and the digest of its body. Errors: [`JournalError`].
    pub async fn set_dashboard(&self, issue: &DashboardIssue) -> Result<(), JournalError> {
        self.put("dashboard", issue).await
    }

    // --- Webhook deliveries.

    /// The delivery `guid` (`X-GitHub-Delivery`), if it was recorded.
    /// Errors: as [`BotJournal::cursor`].
    pub async fn delivery(&self, guid: &str) -> Result<Option<Delivery>, JournalError> {
        self.get(&format!("webhook/delivery/{guid}")).await
    }

    /// Records delivery `guid` (flushed before it returns). Errors: [`JournalError`].
    pub async fn record_delivery(
        &self,
        guid: &str,
        delivery: &Delivery,
    ) -> Result<(), JournalError> {
        self.put(&format!("webhook/delivery/{guid}"), delivery)
            .await
    }

    /// The GUIDs of the recorded deliveries, in key order. Errors: [`JournalError::Store`].
    pub async fn deliveries(&self) -> Result<Vec<String>, JournalError> {
        Ok(self
            .scan("webhook/delivery/")
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("webhook/delivery/").map(str::to_string))
            .collect())
    }

    /// Removes the deliveries received before `cutoff`, and those that do not decode (one
    /// flush). Returns how many were removed. Errors: [`JournalError::Store`].
    pub async fn prune_deliveries(&self, cutoff: DateTime<Utc>) -> Result<usize, JournalError> {
        let ops: Vec<TreeOp> = self
            .scan("webhook/delivery/")
            .await?
            .into_iter()
            .filter(|(_, v)| {
                serde_json::from_slice::<Delivery>(v).map_or(true, |d| d.received < cutoff)
            })
            .map(|(k, _)| TreeOp::Remove {
                key: k.into_bytes(),
            })
            .collect();
        if !ops.is_empty() {
            self.tree.apply(&ops).await?;
        }
        Ok(ops.len())
    }

    // --- Migration from the `meta` tree of earlier versions.

    /// Moves every bot key of the engine's `meta` tree into the journal (see the module
    /// docs). Returns how many keys were moved.
    async fn migrate(&self) -> Result<usize, JournalError> {
        let old = self.store.scan_meta("").await?;
        if old.iter().all(|(k, _)| k.starts_with(CANCEL_PREFIX)) {
            return Ok(0);
        }
        let by_key: BTreeMap<&str, &[u8]> = old
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let mut ops = Vec::new();
        let mut moved: Vec<String> = Vec::new();
        let mut deployed: Vec<(String, String)> = Vec::new();
        let mut left = Vec::new();
        for (key, value) in &old {
            if key.starts_with(CANCEL_PREFIX) {
                continue;
            }
            match convert(key, value, &by_key) {
                Converted::Put(k, v) => {
                    ops.push(TreeOp::Put {
                        key: k.into_bytes(),
                        value: v,
                    });
                    moved.push(key.clone());
                }
                Converted::Deployed(cluster, commit) => {
                    deployed.push((cluster, commit));
                    moved.push(key.clone());
                }
                Converted::Dropped => moved.push(key.clone()),
                Converted::Unknown => left.push(key.clone()),
            }
        }
        // Written (and flushed) before anything is removed from `meta`.
        if !ops.is_empty() {
            self.tree.apply(&ops).await?;
        }
        for (cluster, commit) in &deployed {
            self.store.import_deployed(cluster, commit).await?;
        }
        self.store.delete_meta_many(&moved).await?;
        if !left.is_empty() {
            tracing::warn!(keys = ?left, "journal keys of an earlier version were not understood and stay in the engine's meta tree");
        }
        tracing::info!(
            moved = moved.len(),
            "moved the bot's state of an earlier version into its journal"
        );
        Ok(moved.len())
    }
}

/// What an earlier version's `meta` key becomes.
enum Converted {
    /// This journal entry.
    Put(String, Vec<u8>),
    /// The deployed commit of a cluster (the engine's fact now).
    Deployed(String, String),
    /// Nothing: its content moved with another key (the sticky comment's digest, the
    /// dashboard's digest).
    Dropped,
    /// Not understood: left in `meta`.
    Unknown,
}

/// `v` as JSON under `key`, else not understood.
fn json<T: Serialize>(key: String, v: &T) -> Converted {
    match serde_json::to_vec(v) {
        Ok(b) => Converted::Put(key, b),
        Err(_) => Converted::Unknown,
    }
}

/// The value as UTF-8 text, if it is.
fn text(v: &[u8]) -> Option<String> {
    String::from_utf8(v.to_vec()).ok()
}

/// The value re-encoded as `T` (it decodes as `T`), else not understood.
fn typed<T: Serialize + serde::de::DeserializeOwned>(key: String, v: &[u8]) -> Converted {
    match serde_json::from_slice::<T>(v) {
        Ok(t) => json(key, &t),
        Err(_) => Converted::Unknown,
    }
}

/// Converts the `meta` entry `key` = `value` of an earlier version; `all` is every entry (for
/// values split over two keys).
fn convert(key: &str, value: &[u8], all: &BTreeMap<&str, &[u8]>) -> Converted {
    let time = |k: &str| match parse_time(value) {
        Some(t) => json(k.to_string(), &t),
        None => Converted::Unknown,
    };
    match key {
        "poll/closed-cursor" => return time(Cursor::ClosedPulls.key()),
        "poll/comments-cursor" => return time(Cursor::Comments.key()),
        "policy/trusted" => return typed::<TrustedPolicy>(key.to_string(), value),
        "dashboard/digest" => {
            return if all.contains_key("dashboard/issue") {
                Converted::Dropped
            } else {
                Converted::Unknown
            }
        }
        "dashboard/issue" => {
            let Some(number) = text(value).and_then(|t| t.parse::<u64>().ok()) else {
                return Converted::Unknown;
            };
            let body_sha256 = all
                .get("dashboard/digest")
                .and_then(|d| text(d))
                .unwrap_or_default();
            return json(
                "dashboard".into(),
                &DashboardIssue {
                    number,
                    body_sha256,
                },
            );
        }
        _ => {}
    }
    if let Some(rest) = key.strip_prefix("pr/") {
        return convert_pr(rest, value, all);
    }
    if let Some(sha) = key.strip_prefix("merge/") {
        return typed::<MergeRecord>(format!("merge/{sha}"), value);
    }
    if let Some(sha) = key.strip_prefix("publish/pending/") {
        return Converted::Put(format!("unpublished/{sha}"), Vec::new());
    }
    if let Some(cluster) = key.strip_prefix("cluster/deployed/") {
        return match text(value) {
            Some(commit) => Converted::Deployed(cluster.to_string(), commit),
            None => Converted::Unknown,
        };
    }
    if let Some(cluster) = key.strip_prefix("cluster/last-run/") {
        return match text(value) {
            Some(run) => json(format!("cluster/{cluster}/last-run"), &run),
            None => Converted::Unknown,
        };
    }
    if let Some(run) = key.strip_prefix("history/rollout/") {
        return typed::<RolloutSample>(format!("rollout/{run}"), value);
    }
    if let Some(id) = key.strip_prefix("command/") {
        return Converted::Put(format!("command/{id}"), Vec::new());
    }
    if let Some(id) = key.strip_prefix("comment/sticky-seen/") {
        return time(&format!("sticky-seen/{id}"));
    }
    if key.starts_with("ledger/") {
        return typed::<LedgerEntry>(key.to_string(), value);
    }
    if key.starts_with("policy/untrusted-reported/") {
        return Converted::Put(key.to_string(), Vec::new());
    }
    if let Some(guid) = key.strip_prefix("webhook/delivery/") {
        let parsed = text(value).and_then(|t| {
            let (at, event) = t.split_once(' ').unwrap_or((t.as_str(), ""));
            Some(Delivery {
                received: parse_time(at.as_bytes())?,
                event: event.to_string(),
            })
        });
        return match parsed {
            Some(d) => json(format!("webhook/delivery/{guid}"), &d),
            None => Converted::Unknown,
        };
    }
    if let Some(rest) = key.strip_prefix("schedule/") {
        let Some((_, what)) = rest.split_once('/') else {
            return Converted::Unknown;
        };
        return if what == "last-fire" {
            time(key)
        } else if what.starts_with("fire/") {
            typed::<FireRecord>(key.to_string(), value)
        } else if what.starts_with("opened/") || what.starts_with("halt-reported/") {
            Converted::Put(key.to_string(), Vec::new())
        } else {
            Converted::Unknown
        };
    }
    Converted::Unknown
}

/// A `pr/<n>/…` key of the earlier version (`rest` is what follows `pr/`).
fn convert_pr(rest: &str, value: &[u8], all: &BTreeMap<&str, &[u8]>) -> Converted {
    let Some((n, what)) = rest.split_once('/') else {
        return Converted::Unknown;
    };
    let Ok(pr) = n.parse::<u64>() else {
        return Converted::Unknown;
    };
    match what {
        "planned" => match text(value).as_deref().and_then(PlannedAs::parse_legacy) {
            Some(p) => json(pr_key(pr, "planned"), &p),
            None => Converted::Unknown,
        },
        "merged" => match text(value) {
            Some(m) => json(pr_key(pr, "merged"), &MergeSha::new(m)),
            None => Converted::Unknown,
        },
        "plan-details" => typed::<Vec<String>>(pr_key(pr, "plan-details"), value),
        "sticky-digest" => {
            if all.contains_key(pr_key(pr, "sticky-id").as_str()) {
                Converted::Dropped
            } else {
                Converted::Unknown
            }
        }
        "sticky-id" => {
            let Some(comment_id) = text(value).and_then(|t| t.parse::<u64>().ok()) else {
                return Converted::Unknown;
            };
            let body_sha256 = all
                .get(pr_key(pr, "sticky-digest").as_str())
                .and_then(|d| text(d));
            json(
                pr_key(pr, "sticky"),
                &StickyComment {
                    comment_id,
                    body_sha256,
                },
            )
        }
        w if w.starts_with("digests/") => typed::<PlanDigests>(pr_key(pr, w), value),
        w if w.starts_with("review/") => match text(value) {
            Some(stamp) => json(pr_key(pr, w), &stamp),
            None => Converted::Unknown,
        },
        _ => Converted::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, h, 0, 0).unwrap()
    }

    async fn temporary() -> (Arc<SledStore>, BotJournal) {
        let store = Arc::new(SledStore::temporary().unwrap());
        let (journal, moved) = BotJournal::open(store.clone()).await.unwrap();
        assert_eq!(moved, 0);
        (store, journal)
    }

    /// The `meta` entries the previous version wrote, as it wrote them.
    fn previous_version() -> Vec<(String, Vec<u8>)> {
        let head = "a".repeat(40);
        let merge = "b".repeat(40);
        let digests = br#"{"team-a-prod#upgrade-cluster":"d1"}"#.to_vec();
        let merge_record = format!(
            r#"{{"pr":12,"commit":"{merge}","runIds":["team-a-prod@bbbbbbbbbbbb#upgrade-cluster"],"notRun":[["team-b-prod","upgrade","blocked by validation errors"]],"planMarkdown":"plan","refused":null,"changedSinceApproval":[]}}"#
        );
        let fire = r#"{"schedule":"weekly","fire":"2026-12-05T01:00:00Z","state":"missed","detail":"missed","updatedAt":"2026-12-05T02:00:00Z"}"#;
        let trusted = format!(
            r#"{{"commit":"{head}","source":"the default branch's tip at the first start","since":"2026-12-05T00:00:00Z"}}"#
        );
        let ledger = format!(
            r#"{{"pr":12,"merge":"{merge}","base":"{head}","method":"merge","approved":true}}"#
        );
        [
            ("poll/closed-cursor", b"2026-12-05T01:00:00+00:00".to_vec()),
            (
                "poll/comments-cursor",
                b"2026-12-05T02:00:00+00:00".to_vec(),
            ),
            (
                "pr/12/planned",
                format!("{head}+tkgops/allow-delete@{head}!{merge}").into_bytes(),
            ),
            ("pr/13/planned", format!("{merge}@{head}").into_bytes()),
            (&format!("pr/12/digests/{head}"), digests.clone()),
            ("pr/12/review/99", b"stamp-hash".to_vec()),
            ("pr/12/sticky-id", b"4242".to_vec()),
            ("pr/12/sticky-digest", b"body-hash".to_vec()),
            ("pr/12/plan-details", br#"["team-a-prod"]"#.to_vec()),
            ("pr/12/merged", merge.clone().into_bytes()),
            (&format!("merge/{merge}"), merge_record.into_bytes()),
            (&format!("publish/pending/{merge}"), Vec::new()),
            ("cluster/deployed/team-a-prod", merge.clone().into_bytes()),
            (
                "cluster/last-run/team-a-prod",
                b"team-a-prod@bbbbbbbbbbbb#upgrade-cluster".to_vec(),
            ),
            (
                "history/rollout/run-1",
                br#"{"secs":120.0,"nodes":3}"#.to_vec(),
            ),
            ("command/77", b"answered".to_vec()),
            (
                "comment/sticky-seen/4242",
                b"2026-12-05T03:00:00+00:00".to_vec(),
            ),
            ("policy/trusted", trusted.into_bytes()),
            (&format!("ledger/{merge}"), ledger.into_bytes()),
            (&format!("policy/untrusted-reported/{merge}"), Vec::new()),
            (
                "schedule/weekly/last-fire",
                b"2026-12-05T01:00:00+00:00".to_vec(),
            ),
            (
                "schedule/weekly/fire/2026-12-05T01:00:00+00:00",
                fire.as_bytes().to_vec(),
            ),
            (
                "schedule/weekly/opened/2026-12-05T01:30:00+00:00/31",
                Vec::new(),
            ),
            (
                "schedule/weekly/halt-reported/2026-12-05T01:00:00+00:00/0",
                Vec::new(),
            ),
            ("dashboard/issue", b"5".to_vec()),
            ("dashboard/digest", b"dash-hash".to_vec()),
            (
                "webhook/delivery/guid-1",
                b"2026-12-05T04:00:00+00:00 pull_request".to_vec(),
            ),
            // The engine's own, and one this version does not know: both stay.
            ("cancel/run-9", b"cancelled by @alice".to_vec()),
            ("mystery/key", b"?".to_vec()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Everything the previous version's journal says, read through the typed journal.
    async fn assert_reads_the_previous_version(journal: &BotJournal) {
        let (head, merge) = (HeadSha::new("a".repeat(40)), MergeSha::new("b".repeat(40)));
        let policy = PolicySha::new("a".repeat(40));
        assert_eq!(
            journal.cursor(Cursor::ClosedPulls).await.unwrap(),
            Some(t(1))
        );
        assert_eq!(journal.cursor(Cursor::Comments).await.unwrap(), Some(t(2)));
        assert_eq!(
            journal.planned(12).await.unwrap(),
            Some(PlannedAs {
                head: head.clone(),
                allow_delete: true,
                policy: policy.clone(),
                untrusted: Some(merge.to_string()),
            })
        );
        assert_eq!(
            journal.planned(13).await.unwrap(),
            Some(PlannedAs {
                head: HeadSha::new(merge.as_str()),
                allow_delete: false,
                policy: policy.clone(),
                untrusted: None,
            })
        );
        let digests = journal.approved_digests(12, &head).await.unwrap().unwrap();
        assert_eq!(
            digests.get("team-a-prod", Some("upgrade-cluster")),
            Some("d1")
        );
        // The stamp of an approval is the hash earlier versions took of the journalled bytes.
        assert_eq!(
            digests.hash(),
            crate::sha256_hex(br#"{"team-a-prod#upgrade-cluster":"d1"}"#)
        );
        assert_eq!(
            journal.review_stamp(12, 99).await.unwrap().as_deref(),
            Some("stamp-hash")
        );
        assert_eq!(
            journal.sticky(12).await.unwrap(),
            Some(StickyComment {
                comment_id: 4242,
                body_sha256: Some("body-hash".into())
            })
        );
        assert_eq!(journal.plan_details(12).await.unwrap(), ["team-a-prod"]);
        assert_eq!(journal.merged(12).await.unwrap(), Some(merge.clone()));
        let record = journal.merge_record(&merge).await.unwrap().unwrap();
        assert_eq!(record.pr, 12);
        assert_eq!(
            record.not_run,
            [NotRun {
                cluster: "team-b-prod".into(),
                intent: "upgrade".into(),
                reason: "blocked by validation errors".into(),
            }]
        );
        assert_eq!(
            journal.unpublished().await.unwrap(),
            std::slice::from_ref(&merge)
        );
        assert_eq!(
            journal.last_run("team-a-prod").await.unwrap().as_deref(),
            Some("team-a-prod@bbbbbbbbbbbb#upgrade-cluster")
        );
        assert_eq!(
            journal.rollout_samples().await.unwrap(),
            [RolloutSample {
                secs: 120.0,
                nodes: 3
            }]
        );
        assert_reads_the_previous_commands_policy_and_schedules(journal, &merge, &policy).await;
    }

    /// The second half of [`assert_reads_the_previous_version`].
    async fn assert_reads_the_previous_commands_policy_and_schedules(
        journal: &BotJournal,
        merge: &MergeSha,
        policy: &PolicySha,
    ) {
        assert!(journal.command_answered(77).await.unwrap());
        assert!(!journal.command_answered(78).await.unwrap());
        assert_eq!(journal.sticky_seen(4242).await.unwrap(), Some(t(3)));
        let trusted = journal.trusted_policy().await.unwrap().unwrap();
        assert_eq!(&trusted.commit, policy);
        let ledger = journal.ledger_entry(merge.as_str()).await.unwrap().unwrap();
        assert_eq!(
            (ledger.pr, ledger.merge, ledger.approved),
            (12, merge.clone(), true)
        );
        assert!(journal.untrusted_reported(merge.as_str()).await.unwrap());
        assert_eq!(journal.last_fire("weekly").await.unwrap(), Some(t(1)));
        let fire = journal.fire("weekly", t(1)).await.unwrap().unwrap();
        assert_eq!(fire.detail, "missed");
        assert_eq!(
            journal.fires("weekly").await.unwrap(),
            std::slice::from_ref(&fire)
        );
        assert_eq!(journal.all_fires().await.unwrap(), [fire]);
        assert_eq!(
            journal
                .bump_pulls_opened_since("weekly", t(1))
                .await
                .unwrap(),
            1
        );
        assert!(journal.halt_reported("weekly", t(1), 0).await.unwrap());
        assert!(!journal.halt_reported("weekly", t(1), 1).await.unwrap());
        assert_eq!(
            journal.dashboard().await.unwrap(),
            Some(DashboardIssue {
                number: 5,
                body_sha256: "dash-hash".into()
            })
        );
        assert_eq!(
            journal.delivery("guid-1").await.unwrap(),
            Some(Delivery {
                received: t(4),
                event: "pull_request".into()
            })
        );
        // The deployed commit is the engine's fact now.
        let deployed = journal
            .store()
            .deployed("team-a-prod")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(deployed.commit_sha, merge.as_str());
        assert_eq!(deployed.run_id, None);
    }

    #[tokio::test]
    async fn a_journal_of_the_previous_version_is_moved_in_once() {
        let dir = tempfile::tempdir().unwrap();
        let old = previous_version();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for (k, v) in &old {
                store.put_meta(k, v).await.unwrap();
            }
        }
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let (journal, moved) = BotJournal::open(store.clone()).await.unwrap();
        // Every key but the engine's and the unknown one.
        assert_eq!(moved, old.len() - 2);
        assert_reads_the_previous_version(&journal).await;
        let left: Vec<String> = store
            .scan_meta("")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, ["cancel/run-9", "mystery/key"]);
        drop(journal);
        drop(store);

        // Opening again moves nothing and reads the same.
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let (journal, moved) = BotJournal::open(store.clone()).await.unwrap();
        assert_eq!(moved, 0);
        assert_reads_the_previous_version(&journal).await;

        // A crash after the journal was written but before `meta` was cleaned: the keys left
        // are moved again, to the same values.
        for (k, v) in old.iter().filter(|(k, _)| k.starts_with("pr/12/")) {
            store.put_meta(k, v).await.unwrap();
        }
        drop(journal);
        let (journal, moved) = BotJournal::open(store.clone()).await.unwrap();
        assert_eq!(moved, 7);
        assert_reads_the_previous_version(&journal).await;
        assert_eq!(store.scan_meta("pr/").await.unwrap(), []);
    }

    #[tokio::test]
    async fn a_journal_of_a_newer_version_is_not_opened() {
        let (store, journal) = temporary().await;
        assert_eq!(
            journal.get::<u32>(SCHEMA_KEY).await.unwrap(),
            Some(SCHEMA_VERSION)
        );
        journal
            .put(SCHEMA_KEY, &(SCHEMA_VERSION + 1))
            .await
            .unwrap();
        let refused = BotJournal::open(store).await.unwrap_err();
        assert!(
            matches!(refused, JournalError::NewerSchema { found } if found == SCHEMA_VERSION + 1),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn typed_entries_read_back_as_written() {
        let (_, journal) = temporary().await;
        let merge = MergeSha::new("m1");
        let record = MergeRecord {
            pr: 3,
            commit: merge.clone(),
            run_ids: vec!["r".into()],
            not_run: vec![NotRun {
                cluster: "c".into(),
                intent: "create".into(),
                reason: "no action".into(),
            }],
            plan_markdown: "p".into(),
            refused: None,
            changed_since_approval: Vec::new(),
            marker: None,
            notes: Vec::new(),
        };
        assert!(journal.merge_record(&merge).await.unwrap().is_none());
        journal.put_merge_record(&record).await.unwrap();
        assert_eq!(journal.merge_record(&merge).await.unwrap(), Some(record));
        // Written with it: listed as unpublished until GitHub accepts the final comment.
        assert!(journal.is_unpublished(&merge).await.unwrap());
        journal.mark_published(&merge).await.unwrap();
        assert!(journal.unpublished().await.unwrap().is_empty());

        let planned = PlannedAs {
            head: HeadSha::new("h"),
            allow_delete: false,
            policy: PolicySha::new("p"),
            untrusted: None,
        };
        journal.set_planned(3, &planned).await.unwrap();
        assert_eq!(journal.planned(3).await.unwrap(), Some(planned));
        journal.forget_planned(3).await.unwrap();
        assert_eq!(journal.planned(3).await.unwrap(), None);
        // Another pull request's entries are not this one's.
        journal.set_merged(30, &merge).await.unwrap();
        assert_eq!(journal.merged(3).await.unwrap(), None);

        for (guid, h) in [("old", 1), ("new", 10)] {
            let d = Delivery {
                received: t(h),
                event: "push".into(),
            };
            journal.record_delivery(guid, &d).await.unwrap();
        }
        assert_eq!(journal.prune_deliveries(t(5)).await.unwrap(), 1);
        assert_eq!(journal.deliveries().await.unwrap(), ["new"]);
    }
}
