//! How files reach the domain: the caller implements [`TreeReader`] over a git tree, a
//! directory or memory.

use std::collections::BTreeMap;

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
