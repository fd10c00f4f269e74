//! The filesystem entry point of `tkgops validate PATH...`: the only I/O of [`crate::request`].

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

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

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
}

fn is_dir(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

fn is_repo_root(p: &Path) -> bool {
    is_file(&p.join(TKGOPS_FILE)) && is_dir(&p.join(CLUSTERS_DIR))
}

/// Reads a regular file of at most [`MAX_CONFIG_BYTES`]; never opens FIFOs or devices.
fn read_capped(p: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_CONFIG_BYTES as u64 {
        return Err(format!(
            "file is {} bytes, larger than the {} byte (1 MiB) limit",
            meta.len(),
            MAX_CONFIG_BYTES
        ));
    }
    let f = std::fs::File::open(p).map_err(|e| format!("cannot read: {e}"))?;
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(buf)
}

#[derive(Default)]
struct Run {
    report: ValidateReport,
    repos: HashMap<PathBuf, Option<RepoConfig>>,
}

impl Run {
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
        match read_capped(p) {
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
            .find(|a| is_repo_root(a))
            .map(Path::to_path_buf)
            .or_else(|| {
                let abs = std::fs::canonicalize(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })
                .ok()?;
                abs.ancestors()
                    .find(|a| is_repo_root(a))
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
        if !is_file(&cfg) {
            self.io(
                dir,
                format!("directory has no {CLUSTER_CONFIG_FILE} (TKG cluster configuration file)"),
            );
            return;
        }
        let sp = dir.join(TKGOPS_FILE);
        let settings = if is_file(&sp) {
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
        let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&clusters) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_dir(p))
                .collect(),
            Err(e) => return self.io(&clusters, format!("cannot read directory: {e}")),
        };
        dirs.sort();
        for d in dirs {
            self.cluster_dir(&d, repo.as_ref(), true);
        }
    }

    fn path(&mut self, p: &Path) {
        if is_dir(p) {
            if is_repo_root(p) {
                self.repo_root(p);
            } else if is_file(&p.join(CLUSTER_CONFIG_FILE)) {
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
        if !is_file(p) {
            let msg = if std::fs::metadata(p).is_ok() {
                "not a regular file"
            } else {
                "no such file or directory"
            };
            return self.io(p, msg);
        }
        let dir = p.parent().unwrap_or(Path::new(""));
        if p.file_name().is_some_and(|n| n == TKGOPS_FILE) {
            if is_repo_root(dir) {
                self.repo(dir);
            } else if is_file(&dir.join(CLUSTER_CONFIG_FILE)) {
                let repo = self.find_repo(dir.parent().unwrap_or(Path::new("")));
                self.cluster_dir(dir, repo.as_ref(), false);
            } else {
                self.settings(p);
            }
            return;
        }
        let sp = dir.join(TKGOPS_FILE);
        let settings = if is_file(&sp) && !is_repo_root(dir) {
            self.settings(&sp)
        } else {
            None
        };
        let repo = self.find_repo(dir);
        self.config_file(p, settings, repo.as_ref());
    }
}

/// Validates the given paths for `tkgops validate PATH...`. Each path may be:
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
pub fn validate_paths(paths: &[PathBuf]) -> ValidateReport {
    let mut run = Run::default();
    for p in paths {
        run.path(p);
    }
    run.report
}
