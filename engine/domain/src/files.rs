//! How files reach the domain: the caller implements [`TreeReader`] (one commit of the config
//! repository: a git tree, or memory) and [`Files`] (paths given to `tkgops validate`: the local
//! filesystem). The domain itself never opens a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Read access to the files of one commit of the config repository.
pub trait TreeReader {
    /// The contents of `path` (relative to the repository root) at this commit, `None` when absent.
    fn read(&self, path: &str) -> Option<Vec<u8>>;
}

/// A [`TreeReader`] over an in-memory map of paths to contents (tests, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct MemoryTree(pub BTreeMap<String, Vec<u8>>);

impl TreeReader for MemoryTree {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.0.get(path).cloned()
    }
}

/// What a path is, as [`Files::kind`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file of `len` bytes.
    File {
        /// Size in bytes.
        len: u64,
    },
    /// A directory.
    Dir,
    /// Something else that exists (FIFO, device, socket): never opened.
    Other,
    /// Nothing exists at the path (or it cannot be inspected).
    Missing,
}

/// Read access to the paths `tkgops validate` is given. Implemented by the caller; the CLI
/// implements it over the local filesystem.
pub trait Files {
    /// What `path` is; symbolic links are followed.
    fn kind(&self, path: &Path) -> FileKind;
    /// At most `limit` bytes of the regular file `path`. Errors: the I/O error as text.
    fn read(&self, path: &Path, limit: usize) -> Result<Vec<u8>, String>;
    /// The entries of directory `path`, as paths joined onto `path`, in any order. Errors: the
    /// I/O error as text.
    fn list(&self, path: &Path) -> Result<Vec<PathBuf>, String>;
    /// The absolute, canonical form of `path`, or `None` when it cannot be resolved.
    fn canonicalize(&self, path: &Path) -> Option<PathBuf>;
}
