//! The durable journal of runs, steps and attempts, on sled.
//!
//! [`Store`] is the object-safe seam the engine, the bot and the tests use; [`SledStore`] is the
//! implementation. Every write method flushes (`flush_async`) before returning, so a record the
//! caller saw written survives `kill -9` and power loss.
//!
//! A run is stored as a small header and one record per step, so that a step transition
//! writes that step only ([`Store::put_run_steps`]); records written by earlier versions (one
//! JSON document per run) are still read. A run that ends `Succeeded` also records its
//! cluster's [`DeployedCommit`] in the same flush. [`SledStore::tree`] hands out named trees
//! of the same database for state the engine does not interpret (the bot's journal).
//!
//! Secrets never enter the store: step inputs and outputs are secret-free by contract, and error
//! strings are truncated to [`MAX_ERROR_BYTES`] on write.

#![warn(missing_docs)]

mod records;
mod sled_store;

use async_trait::async_trait;

pub use records::{
    truncate_error, AttemptRecord, DeployedCommit, RunRecord, RunState, StepRecord, StepState,
    MAX_ERROR_BYTES, MAX_INTERRUPTED_ATTEMPTS, OUTCOME_INTERRUPTED, OUTCOME_PERMANENT,
    OUTCOME_SHUTDOWN, OUTCOME_SUCCEEDED, OUTCOME_TIMEOUT, OUTCOME_TRANSIENT,
};
pub use sled_store::{
    FencingHandle, JournalTree, PruneReport, SledStore, TreeOp, SCHEMA_VERSION,
    SCHEMA_VERSION_UNRECORDED,
};

/// Which runs [`Store::list_runs`] returns: every condition set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only the runs of this cluster ([`RunRecord::cluster`]).
    pub cluster: Option<String>,
    /// Only the runs in this state.
    pub state: Option<RunState>,
}

impl RunFilter {
    /// Whether `run` passes the filter.
    pub fn matches(&self, run: &RunRecord) -> bool {
        self.cluster.as_ref().is_none_or(|c| *c == run.cluster)
            && self.state.is_none_or(|s| s == run.state)
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed (I/O, corruption, file lock held by another `Db`).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded or decoded.
    #[error("record {key:?}: {source}")]
    Codec {
        /// The key of the record.
        key: String,
        /// The serde_json error.
        #[source]
        source: serde_json::Error,
    },
    /// A blocking-pool task running a sled call failed (panicked or was cancelled).
    #[error("store task: {0}")]
    Task(String),
    /// A key or index entry had an unexpected shape.
    #[error("corrupt entry in tree {tree}: {detail}")]
    Corrupt {
        /// The sled tree.
        tree: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// [`SledStore::tree`] was asked for a tree the store keeps its own records in.
    #[error("tree {0:?} is the store's own")]
    ReservedTree(String),
    /// The journal was written by a newer tkgops: its schema version `found` is newer than
    /// the [`SCHEMA_VERSION`] this one reads. It is not opened (nor changed), so that nothing
    /// is misread or overwritten.
    #[error(
        "the journal has store schema version {found}, written by a newer tkgops; this version \
         reads store schema versions up to {supported}: run a tkgops at least as new as the one \
         that wrote it (or restore a backup taken before the upgrade)"
    )]
    NewerSchema {
        /// The version recorded in the journal.
        found: u32,
        /// The newest version this build reads ([`SCHEMA_VERSION`]).
        supported: u32,
    },
    /// A write (or [`SledStore::fence`]) under a fencing token older than the highest one the
    /// store has seen: another process acquired the lease since this one did, so this one must
    /// not write. Nothing was written.
    #[error(
        "write refused: fencing token {token} is older than {highest}, the token of a newer \
         lease holder (this process no longer holds the lease)"
    )]
    StaleFencingToken {
        /// The token this handle writes under.
        token: u64,
        /// The highest token the store has seen.
        highest: u64,
    },
}

/// The durable run journal and the bot's key-value state. Object-safe; shared as
/// `Arc<dyn Store>`.
///
/// Every write method of a fenced [`SledStore`] ([`SledStore::fence`]) also fails with
/// [`StoreError::StaleFencingToken`], writing nothing, once a newer lease holder's token is
/// known.
#[async_trait]
pub trait Store: Send + Sync {
    /// Writes `run` (replacing any record with the same id) and updates the indexes (active runs,
    /// runs by origin) crash-consistently (readers never see a non-terminal run missing from the
    /// active index), then flushes to disk before returning. Error strings longer than
    /// [`MAX_ERROR_BYTES`] are truncated in the stored copy. `id`, `seq` and `origin` of a
    /// run must never change between writes.
    ///
    /// Errors: [`StoreError::Sled`] on I/O failure, [`StoreError::Codec`] if encoding fails.
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError>;

    /// Writes what changed in `run` since it was last written: the steps at the indexes
    /// `steps`, and the run's own fields (state, error, note, times) when `header`. One flush;
    /// each record is written in an order that keeps every crash-recovered prefix consistent (a
    /// run that ends is written after its steps, one that starts before them). When the run
    /// ends `Succeeded`, its cluster's [`DeployedCommit`] is recorded in the same flush. The
    /// run must have been written with [`Store::put_run`] with the same steps before (else
    /// this is a [`Store::put_run`]). The default implementation is [`Store::put_run`].
    ///
    /// Errors: as [`Store::put_run`].
    async fn put_run_steps(
        &self,
        run: &RunRecord,
        steps: &[usize],
        header: bool,
    ) -> Result<(), StoreError> {
        let _ = (steps, header);
        self.put_run(run).await
    }

    /// The run with id `id`, or `None`. Errors: I/O or a record that does not decode.
    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;

    /// The commit `cluster` last ran successfully from (its latest run that ended
    /// `Succeeded`), or `None` when no run of it succeeded. Written by [`Store::put_run`] and
    /// [`Store::put_run_steps`] with the run's terminal write.
    ///
    /// Errors: I/O or a record that does not decode.
    async fn deployed(&self, cluster: &str) -> Result<Option<DeployedCommit>, StoreError>;

    /// Every non-terminal run, ordered by `seq`. Cost is proportional to the number of active
    /// runs, not to the history. Errors: I/O or a record that does not decode.
    async fn list_active(&self) -> Result<Vec<RunRecord>, StoreError>;

    /// Every run that passes `filter` (any state when it sets none), ordered by `seq`, for
    /// the run history (`tkgops runs`, the admin endpoint, `tkgops journal export`).
    ///
    /// Cost: a scan of every run header in the journal (a cluster or state filter is checked
    /// on the header, before the run's steps are read), in tokio's blocking pool; about
    /// proportional to the number of runs kept, which retention ([`SledStore::prune`])
    /// bounds. Errors: as [`Store::get_run`].
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError>;

    /// Every run (any state) whose [`RunRecord::origin`] is `origin`, ordered by `seq`.
    /// Errors: as [`Store::get_run`].
    async fn list_runs_by_origin(&self, origin: &str) -> Result<Vec<RunRecord>, StoreError>;

    /// A new submission sequence number, strictly greater than every number returned before,
    /// also across restarts and crashes (not necessarily contiguous). Errors: I/O.
    async fn next_seq(&self) -> Result<u64, StoreError>;

    /// Records `commit_sha` as the commit `cluster` last ran successfully from when no fact is
    /// recorded for it (flushed), for journals written before the store kept the fact (the
    /// bot's migration). Returns whether it was recorded. Errors: I/O.
    async fn import_deployed(&self, cluster: &str, commit_sha: &str) -> Result<bool, StoreError>;

    /// Writes the state `key` = `value` of the `meta` tree and flushes before returning: the
    /// engine's durable cancellation requests ([`crate::CANCEL_PREFIX`]), and the bot's state
    /// as versions before its typed journal kept it (read once by its migration). Errors: I/O.
    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// The state stored under `key` in the `meta` tree, or `None`. Errors: I/O.
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes `key` (no error if absent) and flushes before returning. Errors: I/O.
    async fn delete_meta(&self, key: &str) -> Result<(), StoreError>;

    /// Removes every key of `keys` (no error for absent ones) and flushes once before
    /// returning. Errors: I/O (the keys before the failing one may be removed).
    async fn delete_meta_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            self.delete_meta(key).await?;
        }
        Ok(())
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order. Errors: I/O or a
    /// key that is not UTF-8.
    async fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}
