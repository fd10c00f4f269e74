//! Helpers shared by the domain's integration tests: the repository's example inputs and
//! fixtures, in-memory commits, the step kinds a bot executes, and the golden snapshots of
//! `tests/golden/` (insta). Each test file compiles its own copy and uses part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use tkgops_domain::files::MemoryTree;
use tkgops_domain::step::StepKind;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `tests/fixtures/<p>`.
pub fn fixture(p: &str) -> PathBuf {
    root().join("tests/fixtures").join(p)
}

/// The example repository settings shipped in `examples/`.
pub fn example_repo_config() -> String {
    std::fs::read_to_string(root().join("examples/config-repo/tkgops.yaml"))
        .expect("example tkgops.yaml")
}

/// The example cluster request: (cluster-config.yaml, tkgops.yaml).
pub fn example_request() -> (String, String) {
    let dir = root().join("examples/requests/team-a-prod");
    (
        std::fs::read_to_string(dir.join("cluster-config.yaml"))
            .expect("example cluster-config.yaml"),
        std::fs::read_to_string(dir.join("tkgops.yaml")).expect("example tkgops.yaml"),
    )
}

/// An in-memory commit holding `files` (`(path, contents)`), for the planner.
pub fn tree(files: &[(&str, &str)]) -> MemoryTree {
    MemoryTree(
        files
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect(),
    )
}

/// The step kinds a bot executes: every kind (the bot's executors cover them all), so the
/// plans here are what a running bot would plan.
pub fn executable() -> BTreeSet<StepKind> {
    StepKind::ALL.iter().copied().collect()
}

/// Asserts that `actual` equals the snapshot `tests/golden/<name>.snap`, after redacting what a
/// test's inputs fix but the goldens keep generic: commit SHAs and the example's VPC and subnet
/// IDs. A mismatch fails; `INSTA_UPDATE=always` (or `cargo insta review`) accepts it (README
/// "Golden files").
pub fn assert_golden(name: &str, actual: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("tests/golden"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    for (re, rep) in [
        (r"\b[0-9a-f]{40}\b", "<sha>"),
        (r"`[0-9a-f]{7}`", "`<sha>`"),
        (r"(head|base|commit) [0-9a-f]{7}\b", "$1 <sha>"),
        (r"vpc-[0-9a-f]{8,17}", "vpc-<id>"),
        (r"subnet-[0-9a-f]{8,17}", "subnet-<id>"),
    ] {
        settings.add_filter(re, rep);
    }
    settings.bind(|| insta::assert_snapshot!(name, actual));
}
