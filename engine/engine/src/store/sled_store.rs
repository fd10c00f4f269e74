//! [`Store`] on sled 0.34.
//!
//! Trees:
//! - `runs`: run id → [`RunRecord`] JSON.
//! - `active`: `seq (u64 BE) ‖ run id` → empty, one entry per non-terminal run. Resume reads this
//!   tree only, in `seq` order, so its cost does not grow with the history.
//! - `by_origin`: `origin ‖ 0x00 ‖ seq (u64 BE) ‖ run id` → empty (origins contain no NUL).
//! - `meta`: the bot's key-value state.
//!
//! `put_run` does not use sled transactions (nor batches). With 40 concurrent runs, each
//! calling `flush_async` after a transaction, sled 0.34.7 deadlocked (engine benchmark, gdb):
//! both tokio workers waited in `TransactionalTrees::stage` for sled's global write lock, while
//! every I/O pool thread sat in `iobuf::flush` waiting for the read lock or for a log write that
//! itself needed a pool thread. Without transactions the same hang still occurred through pool
//! starvation alone (every pool thread in `make_stable`), hence the group-commit flush below
//! (at most one `flush_async` in flight). Avoiding transactions also keeps sled out of its
//! global reader/writer-lock mode, which the first transaction switches on for good.
//! Instead of a transaction, plain inserts are ordered so that every crash-recovered prefix is
//! consistent: index entries are added before the record and removed after it, so an index is
//! at worst a superset, and readers check each entry against the record.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{RunRecord, Store, StoreError};

/// Page cache budget of the sled database, in bytes (sled's default is 1 GiB, too much for the
/// 200 MB resident-memory target).
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// The sled-backed [`Store`]. Cheap to share behind an `Arc`.
///
/// sled holds a file lock on its directory: opening the same path a second time in one process
/// fails until every handle of the first database (this value and all clones of the `Arc` it is
/// in) has been dropped.
pub struct SledStore {
    db: sled::Db,
    /// Number of writes completed so far (assigned after each write returns).
    written: AtomicU64,
    /// Group commit: at most one `flush_async` in flight; holds the `written` value the last
    /// completed flush covers.
    flushed: tokio::sync::Mutex<u64>,
    trees: Trees,
}

/// The trees of the journal (cheap to clone: sled trees are reference-counted handles), moved
/// into `spawn_blocking` so that sled's synchronous calls never run on an async worker.
#[derive(Clone)]
struct Trees {
    runs: sled::Tree,
    active: sled::Tree,
    by_origin: sled::Tree,
    meta: sled::Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the database in directory `path`.
    ///
    /// Errors: [`StoreError::Sled`] if the directory cannot be created or read, is corrupt, or is
    /// locked by another open database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()?;
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
        Ok(SledStore {
            trees: Trees {
                runs: db.open_tree("runs")?,
                active: db.open_tree("active")?,
                by_origin: db.open_tree("by_origin")?,
                meta: db.open_tree("meta")?,
            },
            db,
            written: AtomicU64::new(0),
            flushed: tokio::sync::Mutex::new(0),
        })
    }

    /// Flushes every write completed before this call to disk (fsync). Errors: I/O.
    ///
    /// Group commit: concurrent callers share one `flush_async` (sled 0.34.7 deadlocks when
    /// more concurrent `flush_async` calls are in flight than its I/O thread pool has threads:
    /// they occupy every pool thread waiting for a log write that needs a pool thread).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.flushed.lock().await;
        if *flushed >= mine {
            return Ok(()); // a flush that started after our write already completed
        }
        let target = self.written.load(Ordering::SeqCst);
        self.db.flush_async().await?;
        *flushed = target;
        Ok(())
    }

    /// Runs `f` on the trees in tokio's blocking pool (sled's calls are synchronous and may
    /// wait for disk). Errors: those of `f`, or [`StoreError::Task`] if the task panicked.
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

impl Trees {
    fn decode(key: &[u8], bytes: &[u8]) -> Result<RunRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Codec {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })
    }

    fn get_run(&self, id: &[u8]) -> Result<Option<RunRecord>, StoreError> {
        match self.runs.get(id)? {
            Some(bytes) => Ok(Some(Self::decode(id, &bytes)?)),
            None => Ok(None),
        }
    }
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

#[async_trait]
impl Store for SledStore {
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let truncated;
        let run = if run.has_oversized_error() {
            let mut r = run.clone();
            r.truncate_errors();
            truncated = r;
            &truncated
        } else {
            run
        };
        let json = serde_json::to_vec(run).map_err(|source| StoreError::Codec {
            key: run.id.clone(),
            source,
        })?;
        let (id, seq, origin, terminal) = (
            run.id.clone(),
            run.seq,
            run.origin.clone(),
            run.state.is_terminal(),
        );
        self.blocking(move |t| {
            let akey = active_key(seq, &id);
            // Write order keeps every crash-recovered prefix consistent without a transaction:
            // index entries are added before the record and removed after it, so an index is
            // only ever a superset (readers check each entry against the record).
            if let Some(origin) = &origin {
                let okey = origin_key(origin, seq, &id);
                if !t.by_origin.contains_key(&okey)? {
                    t.by_origin.insert(okey, &[][..])?;
                }
            }
            if !terminal && !t.active.contains_key(&akey)? {
                t.active.insert(akey.as_slice(), &[][..])?;
            }
            t.runs.insert(id.as_bytes(), json)?;
            if terminal {
                t.active.remove(akey.as_slice())?;
            }
            Ok(())
        })
        .await?;
        self.flush().await
    }

    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let id = id.to_string();
        self.blocking(move |t| t.get_run(id.as_bytes())).await
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
        // of use), so no flush is needed here. Start at 1. It may write, hence the blocking pool.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || Ok(db.generate_id()? + 1))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.blocking(move |t| Ok(t.meta.insert(key.as_bytes(), value).map(|_| ())?))
            .await?;
        self.flush().await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        self.blocking(move |t| Ok(t.meta.get(key.as_bytes())?.map(|v| v.to_vec())))
            .await
    }

    async fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.blocking(move |t| Ok(t.meta.remove(key.as_bytes()).map(|_| ())?))
            .await?;
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
