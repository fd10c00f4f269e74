//! [`Store`] on sled 0.34.
//!
//! Trees:
//! - `runs`: run id → the run's header: `0x01 ‖ generation (u32 BE) ‖ step count (u32 BE) ‖
//!   terminal (0 or 1) ‖` the JSON of the run without its steps. Records of earlier versions hold the whole
//!   [`RunRecord`] as JSON (first byte `{`): they are still read, and the first write of such
//!   a run rewrites it in the new form.
//! - `steps`: under `run id ‖ 0x00 ‖ generation (u32 BE)` (run ids contain no NUL): `‖ 0x00`
//!   → the [`StepSpec`]s of the run's steps (a JSON array, written once with the whole run),
//!   and `‖ 0x01 ‖ step index (u32 BE)` → that step's progress (state, attempts, times, error,
//!   output), the only part a step transition changes. A step that has not started and has no
//!   attempts (a `Pending` step as submitted) has no progress record. A step transition writes
//!   its step's progress only ([`Store::put_run_steps`]): a record of a few hundred bytes and
//!   a flush, not the whole run; a submission writes the header, the specs and the indexes.
//!   The header
//!   names the generation of the run's steps: a write of the whole run ([`Store::put_run`]: a
//!   submission, a re-plan's new steps, a failure, a cancellation, a retry) writes every step
//!   under the next generation, then the header that switches to them, then removes the
//!   earlier generations, so a reader never sees the steps of two writes mixed.
//! - `active`: `seq (u64 BE) ‖ run id` → empty, one entry per non-terminal run. Resume reads this
//!   tree only, in `seq` order, so its cost does not grow with the history.
//! - `by_origin`: `origin ‖ 0x00 ‖ seq (u64 BE) ‖ run id` → empty (origins contain no NUL).
//! - `deployed`: cluster → [`DeployedCommit`] JSON, written with the terminal write of a run
//!   that ended `Succeeded`.
//! - `meta`: the engine's cancellation requests, and the bot's state as versions before its
//!   typed journal kept it.
//! - `fence`: `highest` → the highest fencing token ([`SledStore::fence`]) the store has
//!   seen (u64 BE).
//! - `schema`: `version` → the store's schema version (u32 BE, [`SCHEMA_VERSION`]).
//! - any other name: a [`JournalTree`] handed out by [`SledStore::tree`] (the bot's journal).
//!
//! Schema versions ([`SCHEMA_VERSION`]): a journal without a `schema` record is of version 1
//! ([`SCHEMA_VERSION_UNRECORDED`]), the layout above as versions before the record wrote it,
//! where a run may still be a whole JSON record of an even earlier version. Version 2 is the
//! same layout with every run in the split form. [`SledStore::open`] reads the version first:
//! a newer one is refused ([`StoreError::NewerSchema`], naming both versions) before anything
//! is written; an older one is migrated in place before the store is handed out:
//! - 1 → 2: every whole run record is written again in the split form (its steps under a new
//!   generation, then the header that switches to them: the order of any whole write, so each
//!   run is old or new after a crash, never a mix), then flushed; then the version record is
//!   written and flushed, last. A crash before the version record leaves a valid version 1
//!   journal (version 1 reads both forms), and the next open runs the migration again: runs
//!   already rewritten are in the split form and skipped, so each step is idempotent.
//!
//! Every migration write is checked against the handle's fencing state like any other write;
//! the migration runs while the process holds sled's file lock, before the store is handed out
//! (and, with leader election, after the process acquired the Lease: the bot opens the journal
//! only then).
//!
//! The history ([`Store::list_runs`]) is a scan of the `runs` tree in the blocking pool: it
//! decodes every header (a few hundred bytes each) and reads the steps of the runs that pass
//! the filter, so its cost grows with the runs kept. Retention bounds them: [`SledStore::prune`]
//! deletes terminal runs older than a retention, keeping each cluster's latest succeeded run.
//!
//! Fencing: a process that holds the leader-election Lease calls [`SledStore::fence`] once per
//! acquisition with the Lease's transition count. The store keeps the highest token it has
//! seen (on disk and in memory); every write of the store and of its [`JournalTree`]s first
//! compares the handle's token with the highest one (two atomic loads) and is refused with
//! [`StoreError::StaleFencingToken`] when it is older. [`FencingHandle::observe`] raises the
//! highest token in memory when the process learns of a newer holder, so its writes stop at
//! once, before the process exits.
//!
//! Writes do not use sled transactions (nor batches). With 40 concurrent runs, each
//! calling `flush_async` after a transaction, sled 0.34.7 deadlocked (engine benchmark, gdb):
//! both tokio workers waited in `TransactionalTrees::stage` for sled's global write lock, while
//! every I/O pool thread sat in `iobuf::flush` waiting for the read lock or for a log write that
//! itself needed a pool thread. Without transactions the same hang still occurred through pool
//! starvation alone (every pool thread in `make_stable`), hence the group-commit flush below
//! (at most one flush in flight). Avoiding transactions also keeps sled out of its
//! global reader/writer-lock mode, which the first transaction switches on for good.
//!
//! Instead of a transaction, plain inserts are ordered so that every crash-recovered prefix
//! (sled recovers a prefix of its log) is consistent:
//! - index entries are added before the header and removed after it, so an index is at worst
//!   a superset, and readers check each entry against the record;
//! - a header that starts or keeps a run going is written before its steps (a `Running` run
//!   with steps still `Pending` is a run between two steps); a header that ends a run is
//!   written after its steps (steps that ended under a `Running` run are finished on resume);
//! - after a terminal header: the cluster's deployed commit, then the `active` entry's removal.
//!   [`SledStore::open`] repairs the one prefix this cannot make consistent, a terminal header
//!   whose deployed commit or removal from `active` is missing: it finds the run through the
//!   `active` entry that is still there.
//!
//! Threads: point reads and writes (a header, a few steps, a journal entry) run on the calling
//! task, as sled serves them from its page cache and appends them to its in-memory log buffer
//! (a cache miss reads one page). The flush, which waits for the disk, runs on the calling
//! thread inside `tokio::task::block_in_place` on a multi-thread runtime (the worker's other
//! tasks move to another thread meanwhile; sled writes the log on one of its I/O threads and
//! the caller waits for it), and through `flush_async` (sled's I/O threads) on a
//! current-thread runtime, where blocking is not allowed. Scans (`list_active`,
//! `list_runs_by_origin`, `scan_meta`, [`JournalTree::scan_prefix`]) run in tokio's blocking
//! pool. On a disk with a fast fsync, each thread hand-off costs about as much as the write
//! itself (engine benchmark: a `flush_async` takes 14 context switches, a hop to the blocking
//! pool for each insert 2 more), hence no hop for inserts and one fewer for the flush.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    AttemptRecord, DeployedCommit, RunRecord, RunState, StepRecord, StepState, Store, StoreError,
};
use crate::step::StepSpec;

/// Page cache budget of the sled database, in bytes (sled's default is 1 GiB, too much for the
/// 200 MB resident-memory target).
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// How long [`SledStore::open`] waits for the database's file lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often [`SledStore::open`] tries the lock again while it waits.
const LOCK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// First byte of a run header in the split form (records of earlier versions start with `{`).
const HEADER_V1: u8 = 1;

/// Length of the header's prefix: version, generation, step count, terminal.
const HEADER_PREFIX_LEN: usize = 10;

/// The schema version of the journal this build writes, and the newest it reads (module docs,
/// "Schema versions"). Recorded in the `schema` tree at open.
pub const SCHEMA_VERSION: u32 = 2;

/// The schema version of a journal that records none: written before the store recorded its
/// version.
pub const SCHEMA_VERSION_UNRECORDED: u32 = 1;

/// Key of the schema version in the `schema` tree.
const SCHEMA_KEY: &[u8] = b"version";

/// Trees the store keeps its own records in: [`SledStore::tree`] refuses them.
const RESERVED_TREES: &[&str] = &[
    "schema",
    "runs",
    "steps",
    "active",
    "by_origin",
    "deployed",
    "meta",
    "fence",
    "__sled__default",
];

/// Key of the highest fencing token in the `fence` tree.
const FENCE_KEY: &[u8] = b"highest";

/// The sled-backed [`Store`]. Cheap to share behind an `Arc`.
///
/// sled holds a file lock on its directory: opening the same path a second time in one process
/// fails until every handle of the first database (this value, all clones of the `Arc` it is
/// in, and every [`JournalTree`] it handed out) has been dropped.
pub struct SledStore {
    flusher: Arc<Flusher>,
    trees: Trees,
}

/// Group commit of the database's writes: at most one flush in flight.
struct Flusher {
    db: sled::Db,
    /// Number of writes completed so far (assigned after each write returns).
    written: AtomicU64,
    /// Holds the `written` value the last completed flush covers.
    flushed: tokio::sync::Mutex<u64>,
    /// The fencing state of this database handle.
    fence: Arc<FenceState>,
}

/// The fencing tokens of one open database: the token this process writes under, and the
/// highest token seen. Both 0 until [`SledStore::fence`] (an unfenced store: leader election
/// off).
#[derive(Debug, Default)]
struct FenceState {
    token: AtomicU64,
    highest: AtomicU64,
}

impl FenceState {
    /// Ok when the handle's token is not older than the highest one seen.
    ///
    /// Errors: [`StoreError::StaleFencingToken`].
    #[inline]
    fn check(&self) -> Result<(), StoreError> {
        let token = self.token.load(Ordering::Acquire);
        let highest = self.highest.load(Ordering::Acquire);
        if token < highest {
            return Err(StoreError::StaleFencingToken { token, highest });
        }
        Ok(())
    }
}

/// A cheap, cloneable handle on a store's fencing state ([`SledStore::fencing`]), for the
/// leader elector: it can learn of a newer lease holder without holding the store.
#[derive(Clone, Debug)]
pub struct FencingHandle(Arc<FenceState>);

impl FencingHandle {
    /// Records that a lease holder with fencing token `token` exists (in memory): from now on
    /// every write under an older token is refused with [`StoreError::StaleFencingToken`].
    /// A token not newer than the highest seen changes nothing.
    pub fn observe(&self, token: u64) {
        self.0.highest.fetch_max(token, Ordering::AcqRel);
    }

    /// The token this store writes under (0 when it was never fenced).
    pub fn token(&self) -> u64 {
        self.0.token.load(Ordering::Acquire)
    }

    /// Ok while writes are allowed (the token is not older than the highest seen).
    ///
    /// Errors: [`StoreError::StaleFencingToken`].
    pub fn check(&self) -> Result<(), StoreError> {
        self.0.check()
    }
}

impl Flusher {
    /// Flushes every write completed before this call to disk (fsync). Errors: I/O.
    ///
    /// Concurrent callers share one flush (sled 0.34.7 deadlocks when more concurrent
    /// `flush_async` calls are in flight than its I/O thread pool has threads: they occupy
    /// every pool thread waiting for a log write that needs a pool thread). The flush runs on
    /// the caller's thread (see the module docs), never on a pool thread.
    async fn flush(&self) -> Result<(), StoreError> {
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.flushed.lock().await;
        if *flushed >= mine {
            return Ok(()); // a flush that started after our write already completed
        }
        let target = self.written.load(Ordering::SeqCst);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            // The caller's thread waits for the disk; its worker's other tasks do not.
            tokio::task::block_in_place(|| self.db.flush())?;
        } else {
            self.db.flush_async().await?;
        }
        *flushed = target;
        Ok(())
    }
}

/// The trees of the journal (cheap to clone: sled trees are reference-counted handles), moved
/// into `spawn_blocking` for scans.
#[derive(Clone)]
struct Trees {
    runs: sled::Tree,
    steps: sled::Tree,
    active: sled::Tree,
    by_origin: sled::Tree,
    deployed: sled::Tree,
    meta: sled::Tree,
    fence: sled::Tree,
    schema: sled::Tree,
}

/// What [`SledStore::prune`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// The ids of the runs deleted, in `seq` order.
    pub removed: Vec<String>,
    /// Terminal runs older than the retention that were kept: the latest succeeded run of
    /// their cluster (or the run its deployed commit names).
    pub kept: Vec<String>,
    /// Step records removed whose run header was already gone (what a crash in the middle of
    /// an earlier prune left).
    pub orphan_steps: usize,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the database in directory `path`, and repairs what a crash in the
    /// middle of a run's terminal write left (see the module docs).
    ///
    /// The database's file lock is waited for up to `LOCK_WAIT` (5 s): the process (or, in one
    /// process, the database) that held it a moment ago may still be letting go of it (sled's
    /// flusher thread releases it after the last handle is dropped).
    ///
    /// Errors: [`StoreError::Sled`] if the directory cannot be created or read, is corrupt, or is
    /// still locked by another open database after `LOCK_WAIT`; [`StoreError::Codec`] if a
    /// run header found through the `active` index does not decode.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use backon::{BlockingRetryable, ConstantBuilder};
        let open = || {
            sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_CAPACITY_BYTES)
                .open()
        };
        let db = open
            .retry(
                ConstantBuilder::default()
                    .with_delay(LOCK_RETRY_DELAY)
                    .with_max_times((LOCK_WAIT.as_millis() / LOCK_RETRY_DELAY.as_millis()) as usize),
            )
            .when(|e| matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock")))
            .call()?;
        Self::from_db(db)
    }

    /// A fresh database in a unique temporary location (shared memory on Linux), deleted when
    /// dropped. For tests and benchmarks; flushes there do not reach a disk.
    ///
    /// Errors: [`StoreError::Sled`] if it cannot be created.
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        let schema = db.open_tree("schema")?;
        let found = read_schema_version(&schema)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let store = SledStore {
            trees: Trees {
                runs: db.open_tree("runs")?,
                steps: db.open_tree("steps")?,
                active: db.open_tree("active")?,
                by_origin: db.open_tree("by_origin")?,
                deployed: db.open_tree("deployed")?,
                meta: db.open_tree("meta")?,
                fence: db.open_tree("fence")?,
                schema,
            },
            flusher: Arc::new(Flusher {
                db,
                written: AtomicU64::new(0),
                flushed: tokio::sync::Mutex::new(0),
                fence: Arc::default(),
            }),
        };
        if store.trees.repair()? > 0 {
            store.flusher.db.flush()?;
        }
        if found < SCHEMA_VERSION {
            store.migrate(found)?;
        }
        Ok(store)
    }

    /// Migrates the journal from schema version `from` to [`SCHEMA_VERSION`] in place (module
    /// docs, "Schema versions"): each step writes its new records and flushes, and the version
    /// record is written (and flushed) last.
    ///
    /// Errors: [`StoreError::StaleFencingToken`] under a stale fencing token,
    /// [`StoreError::Sled`], [`StoreError::Codec`] for a run record that does not decode.
    fn migrate(&self, from: u32) -> Result<(), StoreError> {
        let fence = &self.flusher.fence;
        if from < 2 {
            // 1 → 2: whole run records in the split form.
            let mut whole = Vec::new();
            for entry in self.trees.runs.iter() {
                let (key, bytes) = entry?;
                if split_prefix(&bytes).is_none() {
                    whole.push(key);
                }
            }
            for key in whole {
                if let Some(run) = self.trees.get_run(&key)? {
                    fence.check()?;
                    self.trees.put_whole(&run)?;
                }
            }
            self.flusher.db.flush()?;
        }
        fence.check()?;
        self.trees
            .schema
            .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
        self.flusher.db.flush()?;
        tracing::info!(
            from,
            to = SCHEMA_VERSION,
            "migrated the journal to a new store schema version"
        );
        Ok(())
    }

    /// The store schema version recorded in the journal ([`SCHEMA_VERSION`] once opened).
    ///
    /// Errors: [`StoreError::Sled`] on I/O failure, [`StoreError::Corrupt`] for a record that
    /// is not 4 bytes.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        read_schema_version(&self.trees.schema)
    }

    /// Deletes the terminal runs that finished (or, without an end time, last changed) more
    /// than `retention` before `now`, with their steps and index entries, keeping for each
    /// cluster its latest succeeded run and the run its deployed commit names (the deployed
    /// commit itself is never touched). Also removes step records left by a prune a crash
    /// cut short. Flushes before returning.
    ///
    /// Each run is deleted header first (compare-and-swap against the header read, so a run
    /// written meanwhile, e.g. retried, is kept), then its `by_origin` entry, then its steps:
    /// a crash leaves at worst index entries that readers skip and step records the next prune
    /// removes. Cost: a scan of the `runs` and `steps` trees in the blocking pool. Run it at
    /// start and about daily.
    ///
    /// Errors: [`StoreError::StaleFencingToken`] (checked before each run's deletion; the runs
    /// before it stay deleted), [`StoreError::Sled`], [`StoreError::Codec`] and
    /// [`StoreError::Corrupt`] for records that do not decode, [`StoreError::Task`].
    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        retention: std::time::Duration,
    ) -> Result<PruneReport, StoreError> {
        self.flusher.fence.check()?;
        let cutoff = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| now.checked_sub_signed(r))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let fence = self.flusher.fence.clone();
        let report = self.blocking(move |t| t.prune(cutoff, &fence)).await?;
        self.flush().await?;
        Ok(report)
    }

    /// The named tree `name` of this database, for state the engine does not interpret (the
    /// bot's journal), written with the same group-commit flush as the runs. Opening a tree
    /// twice yields two handles of the same tree.
    ///
    /// Errors: [`StoreError::ReservedTree`] for a tree the store keeps its own records in
    /// (`runs`, `steps`, `active`, `by_origin`, `deployed`, `meta`); [`StoreError::Sled`] on
    /// I/O failure.
    pub fn tree(&self, name: &str) -> Result<JournalTree, StoreError> {
        if RESERVED_TREES.contains(&name) {
            return Err(StoreError::ReservedTree(name.to_string()));
        }
        Ok(JournalTree {
            tree: self.flusher.db.open_tree(name)?,
            flusher: self.flusher.clone(),
        })
    }

    /// Flushes every write completed before this call to disk (fsync). Errors: I/O.
    ///
    /// Group commit: concurrent callers share one `flush_async`.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    /// Makes `token` (the leader-election Lease's transition count at this process's
    /// acquisition) the fencing token every later write of this store and its
    /// [`JournalTree`]s carries. Call once per acquisition, before the first write.
    ///
    /// The highest token is kept in the store (flushed before this returns): a token older
    /// than it is refused, here and at every write, so a process that lost the lease cannot
    /// write after a newer holder fenced the store. Returns the highest token seen before.
    ///
    /// Errors: [`StoreError::StaleFencingToken`] when `token` is older than the highest one
    /// recorded (nothing is changed); [`StoreError::Sled`] on I/O failure;
    /// [`StoreError::Corrupt`] when the recorded token is not 8 bytes.
    pub async fn fence(&self, token: u64) -> Result<u64, StoreError> {
        let recorded = match self.trees.fence.get(FENCE_KEY)? {
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: "fence",
                    detail: format!("highest token of {} bytes", v.len()),
                })?)
            }
            None => 0,
        };
        let fence = &self.flusher.fence;
        let highest = recorded.max(fence.highest.load(Ordering::Acquire));
        if token < highest {
            fence.highest.fetch_max(highest, Ordering::AcqRel);
            return Err(StoreError::StaleFencingToken { token, highest });
        }
        self.trees.fence.insert(FENCE_KEY, &token.to_be_bytes())?;
        self.flusher.flush().await?;
        fence.token.store(token, Ordering::Release);
        fence.highest.fetch_max(token, Ordering::AcqRel);
        Ok(recorded)
    }

    /// A handle on this store's fencing state ([`FencingHandle::observe`]).
    pub fn fencing(&self) -> FencingHandle {
        FencingHandle(self.flusher.fence.clone())
    }

    /// Runs `f` on the trees in tokio's blocking pool (for scans, which may read many pages).
    /// Errors: those of `f`, or [`StoreError::Task`] if the task panicked.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let trees = self.trees.clone();
        tokio::task::spawn_blocking(move || f(&trees))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// A run's own fields as the header stores them (borrowed, for writing).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeaderOut<'a> {
    id: &'a str,
    cluster: &'a str,
    workflow: &'a str,
    commit_sha: &'a str,
    origin: &'a Option<String>,
    state: RunState,
    seq: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: &'a Option<String>,
}

/// A run's own fields as the header stores them (owned, for reading).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    id: String,
    cluster: String,
    workflow: String,
    commit_sha: String,
    #[serde(default)]
    origin: Option<String>,
    state: RunState,
    seq: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// A decoded `runs` entry.
enum Stored {
    /// A whole run, as versions before the split form wrote it.
    Whole(Box<RunRecord>),
    /// A header whose steps are in the `steps` tree under `generation`.
    Split {
        generation: u32,
        count: u32,
        header: Box<Header>,
    },
}

/// Whether the `runs` entry `bytes` is of a run that ended (read from the header's prefix
/// without decoding it; a whole record of an earlier version is decoded).
fn stored_terminal(key: &[u8], bytes: &[u8]) -> Result<bool, StoreError> {
    if split_prefix(bytes).is_some() {
        return Ok(bytes[HEADER_PREFIX_LEN - 1] == 1);
    }
    match decode_stored(key, bytes)? {
        Stored::Whole(r) => Ok(r.state.is_terminal()),
        Stored::Split { header, .. } => Ok(header.state.is_terminal()),
    }
}

fn codec(key: &[u8], source: serde_json::Error) -> StoreError {
    StoreError::Codec {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    }
}

/// `(generation, step count)` of a header in the split form; `None` for an earlier version's
/// whole record.
fn split_prefix(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < HEADER_PREFIX_LEN || bytes[0] != HEADER_V1 {
        return None;
    }
    let mut g = [0u8; 4];
    g.copy_from_slice(&bytes[1..5]);
    let mut c = [0u8; 4];
    c.copy_from_slice(&bytes[5..9]);
    Some((u32::from_be_bytes(g), u32::from_be_bytes(c)))
}

fn decode_stored(key: &[u8], bytes: &[u8]) -> Result<Stored, StoreError> {
    match split_prefix(bytes) {
        Some((generation, count)) => {
            let header: Header =
                serde_json::from_slice(&bytes[HEADER_PREFIX_LEN..]).map_err(|e| codec(key, e))?;
            Ok(Stored::Split {
                generation,
                count,
                header: Box::new(header),
            })
        }
        None => serde_json::from_slice(bytes)
            .map(|r| Stored::Whole(Box::new(r)))
            .map_err(|e| codec(key, e)),
    }
}

/// The header of `run` in the split form, its steps under `generation`. Error strings longer
/// than [`super::MAX_ERROR_BYTES`] are truncated.
fn encode_header(run: &RunRecord, generation: u32) -> Result<Vec<u8>, StoreError> {
    let count = u32::try_from(run.steps.len()).map_err(|_| StoreError::Corrupt {
        tree: "runs",
        detail: format!("run {} has {} steps", run.id, run.steps.len()),
    })?;
    let out = HeaderOut {
        id: &run.id,
        cluster: &run.cluster,
        workflow: &run.workflow,
        commit_sha: &run.commit_sha,
        origin: &run.origin,
        state: run.state,
        seq: run.seq,
        created_at: run.created_at,
        updated_at: run.updated_at,
        finished_at: run.finished_at,
        error: run.error.as_deref().map(super::truncate_error),
        note: &run.note,
    };
    let mut bytes = Vec::with_capacity(HEADER_PREFIX_LEN + 256);
    bytes.push(HEADER_V1);
    bytes.extend_from_slice(&generation.to_be_bytes());
    bytes.extend_from_slice(&count.to_be_bytes());
    bytes.push(u8::from(run.state.is_terminal()));
    serde_json::to_writer(&mut bytes, &out).map_err(|source| StoreError::Codec {
        key: run.id.clone(),
        source,
    })?;
    Ok(bytes)
}

/// A step's progress as its record stores it (borrowed, for writing): everything of a
/// [`StepRecord`] but its spec.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProgressOut<'a> {
    state: StepState,
    attempts: &'a [AttemptRecord],
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    error: &'a Option<String>,
    output: &'a Option<serde_json::Value>,
    #[serde(skip_serializing_if = "is_zero")]
    attempts_before_retry: u32,
}

/// A step's progress as its record stores it (owned, for reading).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Progress {
    state: StepState,
    attempts: Vec<AttemptRecord>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<String>,
    output: Option<serde_json::Value>,
    #[serde(default)]
    attempts_before_retry: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The part of a generation's keys holding the specs.
const SPECS_PART: u8 = 0;
/// The part of a generation's keys holding each step's progress.
const PROGRESS_PART: u8 = 1;

/// Whether `step` is as submitted (`Pending`, nothing recorded): it needs no progress record.
fn as_submitted(step: &StepRecord) -> bool {
    step.state == StepState::Pending
        && step.attempts.is_empty()
        && step.started_at.is_none()
        && step.finished_at.is_none()
        && step.error.is_none()
        && step.output.is_none()
        && step.attempts_before_retry == 0
}

/// A step's progress record, error strings truncated.
fn encode_progress(run_id: &str, step: &StepRecord) -> Result<Vec<u8>, StoreError> {
    let truncated;
    let step = if step.has_oversized_error() {
        let mut s = step.clone();
        s.truncate_errors();
        truncated = s;
        &truncated
    } else {
        step
    };
    serde_json::to_vec(&ProgressOut {
        state: step.state,
        attempts: &step.attempts,
        started_at: step.started_at,
        finished_at: step.finished_at,
        error: &step.error,
        output: &step.output,
        attempts_before_retry: step.attempts_before_retry,
    })
    .map_err(|source| StoreError::Codec {
        key: format!("{run_id}/{}", step.spec.id),
        source,
    })
}

/// The specs of `run`'s steps, as one JSON array.
fn encode_specs(run: &RunRecord) -> Result<Vec<u8>, StoreError> {
    let specs: Vec<&StepSpec> = run.steps.iter().map(|s| &s.spec).collect();
    serde_json::to_vec(&specs).map_err(|source| StoreError::Codec {
        key: format!("{}/specs", run.id),
        source,
    })
}

fn steps_prefix(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k
}

fn specs_key(id: &str, generation: u32) -> Vec<u8> {
    let mut k = steps_prefix(id);
    k.reserve(5);
    k.extend_from_slice(&generation.to_be_bytes());
    k.push(SPECS_PART);
    k
}

fn progress_key(id: &str, generation: u32, index: usize) -> Vec<u8> {
    let mut k = steps_prefix(id);
    k.reserve(9);
    k.extend_from_slice(&generation.to_be_bytes());
    k.push(PROGRESS_PART);
    k.extend_from_slice(&(index as u32).to_be_bytes());
    k
}

fn active_key(seq: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn origin_prefix(origin: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(origin.len() + 1);
    k.extend_from_slice(origin.as_bytes());
    k.push(0);
    k
}

fn origin_key(origin: &str, seq: u64, id: &str) -> Vec<u8> {
    let mut k = origin_prefix(origin);
    k.reserve(8 + id.len());
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn split_seq<'k>(
    tree: &'static str,
    key: &'k [u8],
    at: usize,
) -> Result<(u64, &'k [u8]), StoreError> {
    if key.len() < at + 8 {
        return Err(StoreError::Corrupt {
            tree,
            detail: format!("key of {} bytes", key.len()),
        });
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[at..at + 8]);
    Ok((u64::from_be_bytes(seq), &key[at + 8..]))
}

/// The schema version recorded in `schema`, [`SCHEMA_VERSION_UNRECORDED`] when none is.
fn read_schema_version(schema: &sled::Tree) -> Result<u32, StoreError> {
    match schema.get(SCHEMA_KEY)? {
        None => Ok(SCHEMA_VERSION_UNRECORDED),
        Some(v) => Ok(u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
            StoreError::Corrupt {
                tree: "schema",
                detail: format!("version of {} bytes", v.len()),
            }
        })?)),
    }
}

/// What [`Trees::prune`] needs of a terminal run's header.
struct Finished {
    id: sled::IVec,
    header: sled::IVec,
    cluster: String,
    state: RunState,
    seq: u64,
    origin: Option<String>,
    ended: DateTime<Utc>,
}

impl Trees {
    /// The own fields of every run (its steps not read), with its key, in key order.
    fn headers(&self) -> Result<Vec<(sled::IVec, sled::IVec, Header)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.runs.iter() {
            let (key, bytes) = entry?;
            let header = match decode_stored(&key, &bytes)? {
                Stored::Split { header, .. } => *header,
                Stored::Whole(r) => Header {
                    id: r.id,
                    cluster: r.cluster,
                    workflow: r.workflow,
                    commit_sha: r.commit_sha,
                    origin: r.origin,
                    state: r.state,
                    seq: r.seq,
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                    finished_at: r.finished_at,
                    error: r.error,
                    note: r.note,
                },
            };
            out.push((key, bytes, header));
        }
        Ok(out)
    }

    /// [`SledStore::prune`] with the cutoff time, in the blocking pool.
    fn prune(&self, cutoff: DateTime<Utc>, fence: &FenceState) -> Result<PruneReport, StoreError> {
        let mut finished: Vec<Finished> = self
            .headers()?
            .into_iter()
            .filter(|(_, _, h)| h.state.is_terminal())
            .map(|(id, header, h)| Finished {
                id,
                header,
                ended: h.finished_at.unwrap_or(h.updated_at),
                cluster: h.cluster,
                state: h.state,
                seq: h.seq,
                origin: h.origin,
            })
            .collect();
        finished.sort_by_key(|f| f.seq);
        // Per cluster: its latest succeeded run, and the run its deployed commit names.
        let mut keep = std::collections::HashSet::new();
        let mut latest: std::collections::HashMap<&str, &Finished> = Default::default();
        for f in finished.iter().filter(|f| f.state == RunState::Succeeded) {
            let newer = latest
                .get(f.cluster.as_str())
                .is_none_or(|l| (l.ended, l.seq) <= (f.ended, f.seq));
            if newer {
                latest.insert(f.cluster.as_str(), f);
            }
        }
        for f in latest.values() {
            keep.insert(f.id.clone());
        }
        for f in &finished {
            if let Some(d) = self.get_deployed(&f.cluster)? {
                if let Some(id) = d.run_id {
                    keep.insert(sled::IVec::from(id.as_bytes()));
                }
            }
        }
        let mut report = PruneReport::default();
        for f in finished.iter().filter(|f| f.ended < cutoff) {
            let id = String::from_utf8_lossy(&f.id).into_owned();
            if keep.contains(&f.id) {
                report.kept.push(id);
                continue;
            }
            fence.check()?;
            // Header first, and only if nobody wrote the run since it was read.
            if self
                .runs
                .compare_and_swap(&f.id, Some(&f.header), None as Option<&[u8]>)?
                .is_err()
            {
                continue;
            }
            if let Some(origin) = &f.origin {
                self.by_origin.remove(origin_key(origin, f.seq, &id))?;
            }
            self.active.remove(active_key(f.seq, &id))?;
            for entry in self.steps.scan_prefix(steps_prefix(&id)) {
                let (key, _) = entry?;
                self.steps.remove(key)?;
            }
            report.removed.push(id);
        }
        // Step records whose run is gone (a prune a crash cut short).
        let mut orphans = Vec::new();
        for entry in self.steps.iter() {
            let (key, _) = entry?;
            let Some(nul) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            if !self.runs.contains_key(&key[..nul])? {
                orphans.push(key);
            }
        }
        if !orphans.is_empty() {
            fence.check()?;
        }
        for key in orphans {
            self.steps.remove(key)?;
            report.orphan_steps += 1;
        }
        Ok(report)
    }

    /// The run `id` with its steps, or `None`.
    fn get_run(&self, id: &[u8]) -> Result<Option<RunRecord>, StoreError> {
        let Some(bytes) = self.runs.get(id)? else {
            return Ok(None);
        };
        let (generation, count, header) = match decode_stored(id, &bytes)? {
            Stored::Whole(run) => return Ok(Some(*run)),
            Stored::Split {
                generation,
                count,
                header,
            } => (generation, count, header),
        };
        let id_text = String::from_utf8_lossy(id);
        let key = specs_key(&id_text, generation);
        let Some(b) = self.steps.get(&key)? else {
            return Err(StoreError::Corrupt {
                tree: "steps",
                detail: format!("run {id_text}: the specs of generation {generation} are missing"),
            });
        };
        let specs: Vec<StepSpec> = serde_json::from_slice(&b).map_err(|e| codec(&key, e))?;
        if specs.len() != count as usize {
            return Err(StoreError::Corrupt {
                tree: "steps",
                detail: format!(
                    "run {id_text}: {} specs in generation {generation}, the header says {count}",
                    specs.len()
                ),
            });
        }
        let mut steps = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            let key = progress_key(&id_text, generation, index);
            let step = match self.steps.get(&key)? {
                None => StepRecord::pending(spec),
                Some(b) => {
                    let p: Progress = serde_json::from_slice(&b).map_err(|e| codec(&key, e))?;
                    StepRecord {
                        spec,
                        state: p.state,
                        attempts: p.attempts,
                        started_at: p.started_at,
                        finished_at: p.finished_at,
                        error: p.error,
                        output: p.output,
                        attempts_before_retry: p.attempts_before_retry,
                    }
                }
            };
            steps.push(step);
        }
        let h = *header;
        let updated_at = steps
            .iter()
            .filter_map(StepRecord::last_change)
            .fold(h.updated_at, DateTime::max);
        Ok(Some(RunRecord {
            id: h.id,
            cluster: h.cluster,
            workflow: h.workflow,
            commit_sha: h.commit_sha,
            origin: h.origin,
            state: h.state,
            seq: h.seq,
            created_at: h.created_at,
            updated_at,
            finished_at: h.finished_at,
            steps,
            error: h.error,
            note: h.note,
        }))
    }

    /// Records `run` (which ended `Succeeded`) as its cluster's deployed commit.
    fn put_deployed(&self, run: &RunRecord) -> Result<(), StoreError> {
        let fact = DeployedCommit {
            commit_sha: run.commit_sha.clone(),
            run_id: Some(run.id.clone()),
            finished_at: run.finished_at,
        };
        let json = serde_json::to_vec(&fact).map_err(|source| StoreError::Codec {
            key: run.cluster.clone(),
            source,
        })?;
        self.deployed.insert(run.cluster.as_bytes(), json)?;
        Ok(())
    }

    fn get_deployed(&self, cluster: &str) -> Result<Option<DeployedCommit>, StoreError> {
        match self.deployed.get(cluster.as_bytes())? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| codec(cluster.as_bytes(), e)),
            None => Ok(None),
        }
    }

    /// What a terminal header requires after it: the deployed commit of a succeeded run, then
    /// the removal of its `active` entry.
    fn after_terminal(&self, run: &RunRecord) -> Result<(), StoreError> {
        if run.state == RunState::Succeeded {
            self.put_deployed(run)?;
        }
        self.active.remove(active_key(run.seq, &run.id))?;
        Ok(())
    }

    /// Writes the whole `run`: indexes, every step under the next generation, the header that
    /// switches to them, what a terminal header requires, and the removal of the earlier
    /// generations (see the module docs for the order).
    fn put_whole(&self, run: &RunRecord) -> Result<(), StoreError> {
        let id = run.id.as_str();
        let previous = self.runs.get(id.as_bytes())?;
        let generation = previous
            .as_deref()
            .and_then(split_prefix)
            .map_or(1, |(g, _)| g.wrapping_add(1));
        let header = encode_header(run, generation)?;
        let terminal = run.state.is_terminal();
        if let Some(origin) = &run.origin {
            let okey = origin_key(origin, run.seq, id);
            if !self.by_origin.contains_key(&okey)? {
                self.by_origin.insert(okey, &[][..])?;
            }
        }
        let akey = active_key(run.seq, id);
        if !terminal && !self.active.contains_key(&akey)? {
            self.active.insert(akey, &[][..])?;
        }
        self.steps
            .insert(specs_key(id, generation), encode_specs(run)?)?;
        for (index, step) in run.steps.iter().enumerate() {
            if !as_submitted(step) {
                self.steps.insert(
                    progress_key(id, generation, index),
                    encode_progress(id, step)?,
                )?;
            }
        }
        self.runs.insert(id.as_bytes(), header)?;
        if terminal {
            self.after_terminal(run)?;
        }
        if previous.is_some() {
            // The earlier generations (a crash may have left more than one).
            let prefix = steps_prefix(id);
            for entry in self.steps.scan_prefix(&prefix) {
                let (key, _) = entry?;
                let g = key.get(prefix.len()..prefix.len() + 4);
                if g != Some(&generation.to_be_bytes()[..]) {
                    self.steps.remove(key)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the steps `indexes` of `run` and, when `header`, its header, in the order of the
    /// module docs. Returns `false` (nothing written) when the stored run is not in the split
    /// form with as many steps as `run`: the caller writes the whole run instead.
    fn put_part(
        &self,
        run: &RunRecord,
        indexes: &[usize],
        header: bool,
    ) -> Result<bool, StoreError> {
        let id = run.id.as_str();
        let Some(stored) = self.runs.get(id.as_bytes())? else {
            return Ok(false);
        };
        let Some((generation, count)) = split_prefix(&stored) else {
            return Ok(false);
        };
        if count as usize != run.steps.len() || indexes.iter().any(|i| *i >= run.steps.len()) {
            return Ok(false);
        }
        let mut indexes = indexes.to_vec();
        indexes.sort_unstable();
        indexes.dedup();
        let terminal = run.state.is_terminal();
        if header && !terminal {
            self.runs
                .insert(id.as_bytes(), encode_header(run, generation)?)?;
        }
        for index in indexes {
            let key = progress_key(id, generation, index);
            if as_submitted(&run.steps[index]) {
                self.steps.remove(key)?;
            } else {
                self.steps
                    .insert(key, encode_progress(id, &run.steps[index])?)?;
            }
        }
        if header && terminal {
            self.runs
                .insert(id.as_bytes(), encode_header(run, generation)?)?;
            self.after_terminal(run)?;
        }
        Ok(true)
    }

    /// Finishes what a crash cut short after a run's header was written or before it was:
    /// every `active` entry whose run ended gets the deployed commit of a succeeded run and
    /// is removed; an entry whose run was never written is removed. Returns how many entries
    /// were repaired.
    fn repair(&self) -> Result<usize, StoreError> {
        let mut repaired = 0;
        for entry in self.active.iter() {
            let (key, _) = entry?;
            let (_, id) = split_seq("active", &key, 0)?;
            let Some(bytes) = self.runs.get(id)? else {
                self.active.remove(&key)?;
                repaired += 1;
                continue;
            };
            if !stored_terminal(id, &bytes)? {
                continue;
            }
            let Some(run) = self.get_run(id)? else {
                continue;
            };
            if run.state == RunState::Succeeded {
                let newer = self.get_deployed(&run.cluster)?.is_some_and(|d| {
                    d.run_id.as_deref() != Some(run.id.as_str())
                        && d.finished_at.is_some()
                        && d.finished_at > run.finished_at
                });
                if !newer {
                    self.put_deployed(&run)?;
                }
            }
            self.active.remove(&key)?;
            repaired += 1;
        }
        Ok(repaired)
    }
}

#[async_trait]
impl Store for SledStore {
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        self.flusher.fence.check()?;
        self.trees.put_whole(run)?;
        self.flush().await
    }

    async fn put_run_steps(
        &self,
        run: &RunRecord,
        steps: &[usize],
        header: bool,
    ) -> Result<(), StoreError> {
        self.flusher.fence.check()?;
        if !self.trees.put_part(run, steps, header)? {
            self.trees.put_whole(run)?;
        }
        self.flush().await
    }

    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.trees.get_run(id.as_bytes())
    }

    async fn deployed(&self, cluster: &str) -> Result<Option<DeployedCommit>, StoreError> {
        self.trees.get_deployed(cluster)
    }

    async fn list_active(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.blocking(|t| {
            let mut out = Vec::with_capacity(t.active.len());
            for entry in t.active.iter() {
                let (key, _) = entry?;
                let (seq, id) = split_seq("active", &key, 0)?;
                // Skip stale index entries defensively (the record is the source of truth).
                if let Some(run) = t.get_run(id)? {
                    if !run.state.is_terminal() && run.seq == seq {
                        out.push(run);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_runs(&self, filter: &super::RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        let filter = filter.clone();
        self.blocking(move |t| {
            let mut out = Vec::new();
            for (key, _, h) in t.headers()? {
                let passes = filter.cluster.as_ref().is_none_or(|c| *c == h.cluster)
                    && filter.state.is_none_or(|s| s == h.state);
                if passes {
                    if let Some(run) = t.get_run(&key)? {
                        out.push(run);
                    }
                }
            }
            out.sort_by_key(|r| r.seq);
            Ok(out)
        })
        .await
    }

    async fn list_runs_by_origin(&self, origin: &str) -> Result<Vec<RunRecord>, StoreError> {
        let origin = origin.to_string();
        self.blocking(move |t| {
            let mut out = Vec::new();
            let prefix = origin_prefix(&origin);
            for entry in t.by_origin.scan_prefix(&prefix) {
                let (key, _) = entry?;
                let (seq, id) = split_seq("by_origin", &key, prefix.len())?;
                if let Some(run) = t.get_run(id)? {
                    if run.seq == seq && run.origin.as_deref() == Some(origin.as_str()) {
                        out.push(run);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn next_seq(&self) -> Result<u64, StoreError> {
        // sled's id generator is monotonic across crashes (it persists a high-water mark ahead
        // of use, once per million ids), so no flush is needed here. Start at 1.
        Ok(self.flusher.db.generate_id()? + 1)
    }

    async fn import_deployed(&self, cluster: &str, commit_sha: &str) -> Result<bool, StoreError> {
        self.flusher.fence.check()?;
        if self.trees.deployed.contains_key(cluster.as_bytes())? {
            return Ok(false);
        }
        let fact = DeployedCommit {
            commit_sha: commit_sha.to_string(),
            run_id: None,
            finished_at: None,
        };
        let json = serde_json::to_vec(&fact).map_err(|source| StoreError::Codec {
            key: cluster.to_string(),
            source,
        })?;
        self.trees.deployed.insert(cluster.as_bytes(), json)?;
        self.flush().await?;
        Ok(true)
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.flusher.fence.check()?;
        self.trees.meta.insert(key.as_bytes(), value)?;
        self.flush().await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.trees.meta.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    async fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        self.flusher.fence.check()?;
        self.trees.meta.remove(key.as_bytes())?;
        self.flush().await
    }

    async fn delete_meta_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.flusher.fence.check()?;
        for key in keys {
            self.trees.meta.remove(key.as_bytes())?;
        }
        self.flush().await
    }

    async fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |t| {
            let mut out = Vec::new();
            for entry in t.meta.scan_prefix(prefix.as_bytes()) {
                let (k, v) = entry?;
                let key = String::from_utf8(k.to_vec()).map_err(|e| StoreError::Corrupt {
                    tree: "meta",
                    detail: format!("non-UTF-8 key: {e}"),
                })?;
                out.push((key, v.to_vec()));
            }
            Ok(out)
        })
        .await
    }
}

/// One write of [`JournalTree::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key` (nothing happens when it is absent).
    Remove {
        /// The key.
        key: Vec<u8>,
    },
}

/// A named tree of the journal database ([`SledStore::tree`]) for state the engine does not
/// interpret: keys and values are bytes chosen by its user (the bot's typed journal). Every
/// write is flushed before it returns, with the store's group commit, and carries the store's
/// fencing token: under a token older than the highest seen it fails with
/// [`StoreError::StaleFencingToken`] and writes nothing. Cheap to clone.
#[derive(Clone)]
pub struct JournalTree {
    tree: sled::Tree,
    flusher: Arc<Flusher>,
}

impl std::fmt::Debug for JournalTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalTree")
            .field("name", &String::from_utf8_lossy(&self.tree.name()))
            .finish_non_exhaustive()
    }
}

impl JournalTree {
    /// The value of `key`, or `None`. Errors: [`StoreError::Sled`] on I/O failure.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// Whether `key` has a value. Errors: [`StoreError::Sled`] on I/O failure.
    pub async fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(key)?)
    }

    /// Applies `ops` one after the other, in order, then flushes once. Not atomic: a crash
    /// keeps a prefix of `ops`, so order them so that every prefix is consistent.
    ///
    /// Errors: [`StoreError::Sled`] on I/O failure (the ops before the failing one may be
    /// applied).
    pub async fn apply(&self, ops: &[TreeOp]) -> Result<(), StoreError> {
        self.flusher.fence.check()?;
        for op in ops {
            match op {
                TreeOp::Put { key, value } => {
                    self.tree.insert(key.as_slice(), value.as_slice())?;
                }
                TreeOp::Remove { key } => {
                    self.tree.remove(key.as_slice())?;
                }
            }
        }
        self.flusher.flush().await
    }

    /// Sets `key` to `value` and flushes. Errors: [`StoreError::Sled`] on I/O failure.
    pub async fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.flusher.fence.check()?;
        self.tree.insert(key, value)?;
        self.flusher.flush().await
    }

    /// Removes `key` (no error if absent) and flushes. Errors: [`StoreError::Sled`] on I/O
    /// failure.
    pub async fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.flusher.fence.check()?;
        self.tree.remove(key)?;
        self.flusher.flush().await
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order (in tokio's blocking
    /// pool). Errors: [`StoreError::Sled`] on I/O failure, [`StoreError::Task`] if the scan
    /// task failed.
    pub async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let tree = self.tree.clone();
        let prefix = prefix.to_vec();
        tokio::task::spawn_blocking(move || {
            tree.scan_prefix(prefix)
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Whether the tree holds no key. Errors: [`StoreError::Sled`] on I/O failure.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.tree.first()?.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AttemptRecord, StepState};
    use tkgops_domain::step::{RetryPolicy, StepInputs, StepSpec, WorkloadTarget};

    fn spec(id: &str) -> StepSpec {
        StepSpec {
            id: id.into(),
            title: format!("Step {id}"),
            timeout_secs: 60,
            retry: RetryPolicy::default(),
            inputs: StepInputs::KubeWaitCluster(WorkloadTarget {
                management_cluster: "mc".into(),
                kubeconfig: None,
                namespace: "ns".into(),
                cluster_name: "wl".into(),
            }),
        }
    }

    fn run(id: &str, steps: &[&str]) -> RunRecord {
        let now = Utc::now();
        RunRecord {
            id: id.into(),
            cluster: "team-a-prod".into(),
            workflow: "upgrade-cluster".into(),
            commit_sha: "c0ffee".into(),
            origin: Some("github:pr/7".into()),
            state: RunState::Queued,
            seq: 1,
            created_at: now,
            updated_at: now,
            finished_at: None,
            steps: steps.iter().map(|s| StepRecord::pending(spec(s))).collect(),
            error: None,
            note: None,
        }
    }

    /// Starts step `idx` of `r` (attempt 1) as the engine does.
    fn start(r: &mut RunRecord, idx: usize) {
        let now = Utc::now();
        r.state = RunState::Running;
        let s = &mut r.steps[idx];
        s.state = StepState::Running;
        s.started_at = Some(now);
        s.attempts.push(AttemptRecord {
            number: 1,
            started_at: now,
            finished_at: None,
            error: None,
            outcome: None,
        });
    }

    fn succeed(r: &mut RunRecord, idx: usize) {
        let s = &mut r.steps[idx];
        s.state = StepState::Succeeded;
        s.finished_at = Some(Utc::now());
        s.output = Some(serde_json::json!({"ok": idx}));
        s.attempts[0].outcome = Some("succeeded".into());
    }

    /// `r` as the store gives it back: `updated_at` is the latest time recorded on it.
    fn same(a: &RunRecord, b: &RunRecord) {
        let mut b = b.clone();
        b.updated_at = a.updated_at;
        assert_eq!(a, &b);
    }

    fn step_keys(store: &SledStore, id: &str) -> Vec<Vec<u8>> {
        store
            .trees
            .steps
            .scan_prefix(steps_prefix(id))
            .map(|e| e.unwrap().0.to_vec())
            .collect()
    }

    #[tokio::test]
    async fn a_step_transition_writes_that_step_and_nothing_else() {
        let store = SledStore::temporary().unwrap();
        let mut r = run("r1", &["a", "b", "c"]);
        store.put_run(&r).await.unwrap();
        let header = store.trees.runs.get("r1").unwrap().unwrap();
        // A submitted run: its header, its specs, no progress yet.
        assert_eq!(step_keys(&store, "r1"), vec![specs_key("r1", 1)]);
        let spec_a = store.trees.steps.get(specs_key("r1", 1)).unwrap().unwrap();

        start(&mut r, 0);
        store.put_run_steps(&r, &[0], true).await.unwrap();
        succeed(&mut r, 0);
        start(&mut r, 1);
        store.put_run_steps(&r, &[0, 1], false).await.unwrap();

        // The run's own record was written once more (its start), step `c` never.
        let header_now = store.trees.runs.get("r1").unwrap().unwrap();
        assert_ne!(header, header_now);
        assert_eq!(split_prefix(&header_now), Some((1, 3)));
        assert_eq!(
            step_keys(&store, "r1"),
            vec![
                specs_key("r1", 1),
                progress_key("r1", 1, 0),
                progress_key("r1", 1, 1)
            ]
        );
        // The specs are written with the whole run only: what changed is the progress.
        assert_eq!(
            store.trees.steps.get(specs_key("r1", 1)).unwrap().unwrap(),
            spec_a
        );
        let progress_a = store
            .trees
            .steps
            .get(progress_key("r1", 1, 0))
            .unwrap()
            .unwrap();
        assert!(progress_a.len() < 400, "{} bytes", progress_a.len());
        let back = store.get_run("r1").await.unwrap().unwrap();
        same(&back, &r);
        assert_eq!(back.state, RunState::Running);
        assert_eq!(
            back.steps.iter().map(|s| s.state).collect::<Vec<_>>(),
            vec![StepState::Succeeded, StepState::Running, StepState::Pending]
        );
        // The read time is the latest one recorded: step `b`'s start.
        assert_eq!(
            back.updated_at,
            r.steps[1].started_at.unwrap().max(header_time(&header_now))
        );
        assert_eq!(store.list_active().await.unwrap().len(), 1);
    }

    fn header_time(bytes: &[u8]) -> DateTime<Utc> {
        let h: Header = serde_json::from_slice(&bytes[HEADER_PREFIX_LEN..]).unwrap();
        h.updated_at
    }

    #[tokio::test]
    async fn a_whole_write_switches_every_step_at_once_and_drops_the_old_ones() {
        let store = SledStore::temporary().unwrap();
        store.put_run(&run("r1", &["a", "b", "c"])).await.unwrap();
        // A re-plan replaces the steps: two others.
        let replanned = run("r1", &["x", "y"]);
        store.put_run(&replanned).await.unwrap();
        let back = store.get_run("r1").await.unwrap().unwrap();
        same(&back, &replanned);
        let keys = step_keys(&store, "r1");
        assert_eq!(keys, vec![specs_key("r1", 2)]);
        // A partial write whose steps do not match the stored ones writes the whole run.
        let mut other = run("r1", &["p"]);
        start(&mut other, 0);
        store.put_run_steps(&other, &[0], true).await.unwrap();
        same(&store.get_run("r1").await.unwrap().unwrap(), &other);
        assert_eq!(
            step_keys(&store, "r1"),
            vec![specs_key("r1", 3), progress_key("r1", 3, 0)]
        );
    }

    #[tokio::test]
    async fn records_of_earlier_versions_are_read_and_rewritten_on_their_first_write() {
        let store = SledStore::temporary().unwrap();
        let mut r = run("old", &["a", "b"]);
        start(&mut r, 0);
        // As versions before the split form wrote it: the whole run as JSON, and its indexes.
        store
            .trees
            .runs
            .insert("old", serde_json::to_vec(&r).unwrap())
            .unwrap();
        store
            .trees
            .active
            .insert(active_key(1, "old"), &[][..])
            .unwrap();
        store
            .trees
            .by_origin
            .insert(origin_key("github:pr/7", 1, "old"), &[][..])
            .unwrap();
        assert_eq!(store.get_run("old").await.unwrap().unwrap(), r);
        assert_eq!(store.list_active().await.unwrap(), vec![r.clone()]);
        assert_eq!(
            store.list_runs_by_origin("github:pr/7").await.unwrap(),
            vec![r.clone()]
        );
        succeed(&mut r, 0);
        start(&mut r, 1);
        store.put_run_steps(&r, &[0, 1], false).await.unwrap();
        let header = store.trees.runs.get("old").unwrap().unwrap();
        assert_eq!(split_prefix(&header), Some((1, 2)));
        same(&store.get_run("old").await.unwrap().unwrap(), &r);
    }

    #[tokio::test]
    async fn a_succeeded_run_records_its_clusters_deployed_commit() {
        let store = SledStore::temporary().unwrap();
        let mut r = run("r1", &["a"]);
        store.put_run(&r).await.unwrap();
        assert_eq!(store.deployed("team-a-prod").await.unwrap(), None);
        start(&mut r, 0);
        store.put_run_steps(&r, &[0], true).await.unwrap();
        succeed(&mut r, 0);
        r.state = RunState::Succeeded;
        r.finished_at = Some(Utc::now());
        store.put_run_steps(&r, &[0], true).await.unwrap();
        assert_eq!(
            store.deployed("team-a-prod").await.unwrap(),
            Some(DeployedCommit {
                commit_sha: "c0ffee".into(),
                run_id: Some("r1".into()),
                finished_at: r.finished_at,
            })
        );
        assert!(store.list_active().await.unwrap().is_empty());
        // A failed run of the cluster leaves the fact as it is; an import does not replace it.
        let mut failed = run("r2", &["a"]);
        failed.seq = 2;
        failed.commit_sha = "bad".into();
        failed.state = RunState::Failed;
        store.put_run(&failed).await.unwrap();
        assert!(!store.import_deployed("team-a-prod", "older").await.unwrap());
        assert_eq!(
            store
                .deployed("team-a-prod")
                .await
                .unwrap()
                .unwrap()
                .commit_sha,
            "c0ffee"
        );
        assert!(store.import_deployed("team-b-prod", "older").await.unwrap());
        assert_eq!(
            store.deployed("team-b-prod").await.unwrap(),
            Some(DeployedCommit {
                commit_sha: "older".into(),
                run_id: None,
                finished_at: None
            })
        );
    }

    /// A crash right after a run's terminal header, before its deployed commit and the removal
    /// of its `active` entry: opening the database finishes the write.
    #[tokio::test]
    async fn opening_finishes_a_terminal_write_a_crash_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = run("r1", &["a"]);
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_run(&r).await.unwrap();
            // A submission cut short after its index entry: no run record.
            store
                .trees
                .active
                .insert(active_key(9, "ghost"), &[][..])
                .unwrap();
            start(&mut r, 0);
            succeed(&mut r, 0);
            r.state = RunState::Succeeded;
            r.finished_at = Some(Utc::now());
            // The prefix of the terminal write that reached the disk: its step and header.
            store
                .trees
                .steps
                .insert(
                    progress_key("r1", 1, 0),
                    encode_progress("r1", &r.steps[0]).unwrap(),
                )
                .unwrap();
            store
                .trees
                .runs
                .insert("r1", encode_header(&r, 1).unwrap())
                .unwrap();
            store.flush().await.unwrap();
            assert_eq!(store.deployed("team-a-prod").await.unwrap(), None);
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.deployed("team-a-prod").await.unwrap().unwrap().run_id,
            Some("r1".into())
        );
        assert_eq!(store.trees.active.len(), 0);
        assert!(store.list_active().await.unwrap().is_empty());
        same(&store.get_run("r1").await.unwrap().unwrap(), &r);
    }

    #[tokio::test]
    async fn named_trees_are_flushed_and_the_stores_own_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert!(matches!(
                store.tree("runs"),
                Err(StoreError::ReservedTree(t)) if t == "runs"
            ));
            let t = store.tree("bot").unwrap();
            assert!(t.is_empty().await.unwrap());
            t.apply(&[
                TreeOp::Put {
                    key: b"a/1".to_vec(),
                    value: b"one".to_vec(),
                },
                TreeOp::Put {
                    key: b"a/2".to_vec(),
                    value: b"two".to_vec(),
                },
                TreeOp::Put {
                    key: b"b".to_vec(),
                    value: b"three".to_vec(),
                },
                TreeOp::Remove {
                    key: b"a/1".to_vec(),
                },
            ])
            .await
            .unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let t = store.tree("bot").unwrap();
        assert_eq!(
            t.scan_prefix(b"a/").await.unwrap(),
            vec![(b"a/2".to_vec(), b"two".to_vec())]
        );
        assert_eq!(t.get(b"b").await.unwrap(), Some(b"three".to_vec()));
        t.remove(b"b").await.unwrap();
        assert!(!t.contains(b"b").await.unwrap());
    }

    /// A store fenced with a token refuses writes, of runs and of journal trees, once a newer
    /// token is known (observed in memory, or recorded by a later holder on disk), and
    /// refuses to be fenced again with an older token after a reopen.
    #[tokio::test]
    async fn a_write_under_a_stale_fencing_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(store.fence(3).await.unwrap(), 0);
            let t = store.tree("bot").unwrap();
            t.insert(b"k", b"v").await.unwrap();
            store.put_run(&run("r1", &["a"])).await.unwrap();
            // The elector learns of a newer holder (token 4): every write is refused now.
            let fencing = store.fencing();
            assert_eq!(fencing.token(), 3);
            fencing.observe(4);
            let refused = |e: StoreError| {
                assert!(
                    matches!(
                        e,
                        StoreError::StaleFencingToken {
                            token: 3,
                            highest: 4
                        }
                    ),
                    "{e}"
                )
            };
            refused(t.insert(b"k", b"w").await.unwrap_err());
            refused(t.remove(b"k").await.unwrap_err());
            refused(store.put_run(&run("r2", &["a"])).await.unwrap_err());
            refused(store.put_meta("m", b"x").await.unwrap_err());
            assert_eq!(t.get(b"k").await.unwrap(), Some(b"v".to_vec()));
            assert!(store.get_run("r2").await.unwrap().is_none());
        }
        {
            // The newer holder opens the store and fences it with its token.
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(store.fence(5).await.unwrap(), 3);
            store.put_meta("m", b"x").await.unwrap();
        }
        // An older holder that opens the store afterwards cannot fence it, and so cannot write.
        let store = SledStore::open(dir.path()).unwrap();
        let e = store.fence(4).await.unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::StaleFencingToken {
                    token: 4,
                    highest: 5
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("fencing token 4 is older than 5"),
            "{e}"
        );
        let e = store.put_meta("m", b"y").await.unwrap_err();
        assert!(matches!(e, StoreError::StaleFencingToken { .. }), "{e}");
        assert_eq!(store.get_meta("m").await.unwrap(), Some(b"x".to_vec()));
        // The same token again (a renewal seen after a restart) is accepted.
        assert_eq!(store.fence(5).await.unwrap(), 5);
        store.put_meta("m", b"z").await.unwrap();
    }
}
