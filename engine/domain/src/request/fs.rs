//! The entry point of `tkgops validate PATH...`: which files a path names (a TKG file, a
//! cluster directory, a config repository) and their findings. Files are read through
//! [`Files`], which the caller implements (the CLI over the local filesystem).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::files::{FileKind, Files};

use super::settings::{
    parse_cluster_settings, parse_repo_config, ClusterSettings, RepoConfig, SCHEMA,
};
use super::tkgconfig::{parse_tkg_config, MAX_CONFIG_BYTES};
use super::{validate, Finding, Severity};

/// Rule ID of a path that cannot be read (missing, not a regular file, no config in a directory).
pub const IO_RULE: &str = "TKGOPS-IO";

/// Name of the TKG cluster configuration file in a cluster directory.
pub const CLUSTER_CONFIG_FILE: &str = "cluster-config.yaml";
/// Name of tkgops's own file (repository root: [`RepoConfig`]; cluster dir: [`ClusterSettings`]).
pub const TKGOPS_FILE: &str = "tkgops.yaml";
/// Directory of the cluster requests in a config repository.
pub const CLUSTERS_DIR: &str = "clusters";

/// Result of [`validate_paths`]: all findings (in input order, each file's sorted by line) and
/// whether some input could not be read or parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValidateReport {
    /// Every finding, paths as given on the command line (joined with file names).
    pub findings: Vec<Finding>,
    /// True when some input was missing, unreadable or unparsable.
    pub unreadable: bool,
}

impl ValidateReport {
    /// Exit code of `tkgops validate`: 2 if some input was unreadable or unparsable, else 1 if
    /// any finding is an error, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.unreadable {
            2
        } else if self.findings.iter().any(|f| f.severity == Severity::Error) {
            1
        } else {
            0
        }
    }
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

struct Run<'f> {
    fs: &'f dyn Files,
    report: ValidateReport,
    repos: HashMap<PathBuf, Option<RepoConfig>>,
}

impl Run<'_> {
    fn is_file(&self, p: &Path) -> bool {
        matches!(self.fs.kind(p), FileKind::File { .. })
    }

    fn is_dir(&self, p: &Path) -> bool {
        self.fs.kind(p) == FileKind::Dir
    }

    fn is_repo_root(&self, p: &Path) -> bool {
        self.is_file(&p.join(TKGOPS_FILE)) && self.is_dir(&p.join(CLUSTERS_DIR))
    }

    /// Reads a regular file of at most [`MAX_CONFIG_BYTES`]; never opens FIFOs or devices.
    fn read_capped(&self, p: &Path) -> Result<Vec<u8>, String> {
        let len = match self.fs.kind(p) {
            FileKind::File { len } => len,
            FileKind::Missing => return Err("cannot read: no such file or directory".into()),
            FileKind::Dir | FileKind::Other => return Err("not a regular file".into()),
        };
        let too_big = |len: u64| {
            format!("file is {len} bytes, larger than the {MAX_CONFIG_BYTES} byte (1 MiB) limit")
        };
        if len > MAX_CONFIG_BYTES as u64 {
            return Err(too_big(len));
        }
        let buf = self
            .fs
            .read(p, MAX_CONFIG_BYTES + 1)
            .map_err(|e| format!("cannot read: {e}"))?;
        if buf.len() > MAX_CONFIG_BYTES {
            return Err(too_big(buf.len() as u64));
        }
        Ok(buf)
    }

    fn io(&mut self, path: &Path, msg: impl Into<String>) {
        self.report.findings.push(Finding::new(
            show(path),
            None,
            IO_RULE,
            Severity::Error,
            msg,
        ));
        self.report.unreadable = true;
    }

    fn read(&mut self, p: &Path) -> Option<Vec<u8>> {
        match self.read_capped(p) {
            Ok(b) => Some(b),
            Err(e) => {
                let rule = if e.contains("1 MiB") {
                    super::tkgconfig::PARSE
                } else {
                    IO_RULE
                };
                self.report
                    .findings
                    .push(Finding::new(show(p), None, rule, Severity::Error, e));
                self.report.unreadable = true;
                None
            }
        }
    }

    fn bad(&mut self, mut fs: Vec<Finding>) {
        self.report.findings.append(&mut fs);
        self.report.unreadable = true;
    }

    /// Parses (once) the repository `tkgops.yaml` under `root`.
    fn repo(&mut self, root: &Path) -> Option<RepoConfig> {
        if let Some(r) = self.repos.get(root) {
            return r.clone();
        }
        let p = root.join(TKGOPS_FILE);
        let parsed = self
            .read(&p)
            .and_then(|b| match parse_repo_config(&show(&p), &b) {
                Ok(r) => Some(r),
                Err(fs) => {
                    self.bad(fs);
                    None
                }
            });
        self.repos.insert(root.to_path_buf(), parsed.clone());
        parsed
    }

    /// The repository root above `dir` (a directory with `tkgops.yaml` and `clusters/`).
    fn find_repo(&mut self, dir: &Path) -> Option<RepoConfig> {
        let root = dir
            .ancestors()
            .find(|a| self.is_repo_root(a))
            .map(Path::to_path_buf)
            .or_else(|| {
                let abs = self.fs.canonicalize(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })?;
                abs.ancestors()
                    .find(|a| self.is_repo_root(a))
                    .map(Path::to_path_buf)
            })?;
        self.repo(&root)
    }

    fn settings(&mut self, p: &Path) -> Option<ClusterSettings> {
        let b = self.read(p)?;
        match parse_cluster_settings(&show(p), &b) {
            Ok(s) => Some(s),
            Err(fs) => {
                self.bad(fs);
                None
            }
        }
    }

    /// Validates one TKG config file with an optional settings file and repo config.
    fn config_file(
        &mut self,
        p: &Path,
        settings: Option<ClusterSettings>,
        repo: Option<&RepoConfig>,
    ) {
        let Some(bytes) = self.read(p) else { return };
        match parse_tkg_config(&show(p), &bytes) {
            Ok(cfg) => {
                let mut fs = validate(&cfg, settings.as_ref(), repo);
                self.report.findings.append(&mut fs);
            }
            Err(f) => self.bad(vec![f]),
        }
    }

    /// Validates a cluster directory; `in_repo`: settings are required.
    fn cluster_dir(&mut self, dir: &Path, repo: Option<&RepoConfig>, in_repo: bool) {
        let cfg = dir.join(CLUSTER_CONFIG_FILE);
        if !self.is_file(&cfg) {
            self.io(
                dir,
                format!("directory has no {CLUSTER_CONFIG_FILE} (TKG cluster configuration file)"),
            );
            return;
        }
        let sp = dir.join(TKGOPS_FILE);
        let settings = if self.is_file(&sp) {
            match self.settings(&sp) {
                Some(s) => Some(s),
                None => return self.config_file(&cfg, None, repo),
            }
        } else {
            if in_repo {
                self.report.findings.push(Finding::new(
                    show(&sp),
                    None,
                    SCHEMA,
                    Severity::Error,
                    "missing tkgops.yaml (cluster settings: managementCluster, tkr)",
                ));
            }
            None
        };
        self.config_file(&cfg, settings, repo);
    }

    fn repo_root(&mut self, root: &Path) {
        let repo = self.repo(root);
        let clusters = root.join(CLUSTERS_DIR);
        let mut dirs: Vec<PathBuf> = match self.fs.list(&clusters) {
            Ok(entries) => entries.into_iter().filter(|p| self.is_dir(p)).collect(),
            Err(e) => return self.io(&clusters, format!("cannot read directory: {e}")),
        };
        dirs.sort();
        for d in dirs {
            self.cluster_dir(&d, repo.as_ref(), true);
        }
    }

    fn path(&mut self, p: &Path) {
        if self.is_dir(p) {
            if self.is_repo_root(p) {
                self.repo_root(p);
            } else if self.is_file(&p.join(CLUSTER_CONFIG_FILE)) {
                let repo = self.find_repo(p.parent().unwrap_or(Path::new("")));
                self.cluster_dir(p, repo.as_ref(), repo.is_some());
            } else {
                self.io(
                    p,
                    format!("directory is neither a cluster directory ({CLUSTER_CONFIG_FILE}) nor a config repository ({TKGOPS_FILE} and {CLUSTERS_DIR}/)"),
                );
            }
            return;
        }
        if !self.is_file(p) {
            let msg = if self.fs.kind(p) == FileKind::Missing {
                "no such file or directory"
            } else {
                "not a regular file"
            };
            return self.io(p, msg);
        }
        let dir = p.parent().unwrap_or(Path::new(""));
        if p.file_name().is_some_and(|n| n == TKGOPS_FILE) {
            if self.is_repo_root(dir) {
                self.repo(dir);
            } else if self.is_file(&dir.join(CLUSTER_CONFIG_FILE)) {
                let repo = self.find_repo(dir.parent().unwrap_or(Path::new("")));
                self.cluster_dir(dir, repo.as_ref(), false);
            } else {
                self.settings(p);
            }
            return;
        }
        let sp = dir.join(TKGOPS_FILE);
        let settings = if self.is_file(&sp) && !self.is_repo_root(dir) {
            self.settings(&sp)
        } else {
            None
        };
        let repo = self.find_repo(dir);
        self.config_file(p, settings, repo.as_ref());
    }
}

/// Validates the given paths for `tkgops validate PATH...`, reading them through `fs`. Each
/// path may be:
/// - a TKG cluster configuration file: validated with a sibling `tkgops.yaml` as
///   [`ClusterSettings`] when present and the policy of the repository root found by walking up
///   to a directory holding `tkgops.yaml` and `clusters/`;
/// - a `tkgops.yaml`: the repository config, or the cluster's settings with its config;
/// - a cluster directory (`cluster-config.yaml` and `tkgops.yaml`);
/// - a config repository root: its `tkgops.yaml` and every `clusters/*/`.
///
/// Missing paths, non-regular files, directories without a config (`TKGOPS-IO`) and files that
/// do not parse (`TKGOPS-PARSE`, `TKGOPS-SCHEMA`) are reported as findings and set
/// [`ValidateReport::unreadable`]. Files larger than 1 MiB are never read whole. Finding paths
/// are the given paths joined with the file names.
pub fn validate_paths(fs: &dyn Files, paths: &[PathBuf]) -> ValidateReport {
    let mut run = Run {
        fs,
        report: ValidateReport::default(),
        repos: HashMap::new(),
    };
    for p in paths {
        run.path(p);
    }
    run.report
}
