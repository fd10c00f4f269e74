//! The local filesystem, for the domain: [`LocalFiles`] (paths given to `tkgops validate`) and
//! an operator's replacement workflow catalog on the bot host ([`catalog_from_dir`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use tkgops_domain::files::{FileKind, Files};
use tkgops_domain::workflow::{Catalog, CatalogError};

/// [`Files`] over the local filesystem (`std::fs`); symbolic links are followed.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalFiles;

impl Files for LocalFiles {
    fn kind(&self, path: &Path) -> FileKind {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => FileKind::File { len: m.len() },
            Ok(m) if m.is_dir() => FileKind::Dir,
            Ok(_) => FileKind::Other,
            Err(_) => FileKind::Missing,
        }
    }

    fn read(&self, path: &Path, limit: usize) -> Result<Vec<u8>, String> {
        let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.take(limit as u64)
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        Ok(buf)
    }

    fn list(&self, path: &Path) -> Result<Vec<PathBuf>, String> {
        std::fs::read_dir(path)
            .map_err(|e| e.to_string())?
            .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
            .collect()
    }

    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
}

/// Errors reading a catalog directory.
#[derive(Debug, thiserror::Error)]
pub enum CatalogDirError {
    /// A directory or file of the catalog could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The path being read.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The files do not make a valid catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Loads `dir/workflows/*.yaml` and every file below `dir/templates/` (an operator's
/// replacement catalog on the bot host, `catalogDir:`), as [`Catalog::from_files`] takes them.
///
/// Errors: [`CatalogDirError::Io`] when a directory or file cannot be read,
/// [`CatalogDirError::Catalog`] when the files do not make a valid catalog.
pub fn catalog_from_dir(dir: &Path) -> Result<Catalog, CatalogDirError> {
    let mut files = Vec::new();
    for sub in ["workflows", "templates"] {
        collect_files(&dir.join(sub), sub, &mut files)?;
    }
    Ok(Catalog::from_files(files)?)
}

fn collect_files(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, String)>,
) -> Result<(), CatalogDirError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CatalogDirError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, &format!("{prefix}/{name}"), out)?;
        } else {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            out.push((format!("{prefix}/{name}"), text));
        }
    }
    Ok(())
}
