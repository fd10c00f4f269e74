//! Plan latency benchmark (prints figures; `cargo bench --bench plan`).
//!
//! Builds a real git config repository of 1,000 cluster requests, then a PR branch touching 10
//! of them, and measures what the bot does for a new head SHA, excluding GitHub's latency:
//! git diff of merge-base..head, loading and validating the 10 changed requests, rendering
//! their workflows and the comment Markdown. Target (docs/design.md): under 20 ms.

use std::time::{Duration, Instant};

use tkgops::gitops::ConfigRepo;
use tkgops_domain::workflow::markdown::render_plan;
use tkgops_domain::workflow::{plan, Catalog, PlanInput};
use tkgops_emulators::git_remote::{commit_on_branch, init_remote};

const CLUSTERS: usize = 1000;
const TOUCHED: usize = 10;

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let repo_cfg =
        std::fs::read_to_string(format!("{root}/examples/config-repo/tkgops.yaml")).unwrap();
    let cfg = std::fs::read_to_string(format!(
        "{root}/examples/requests/team-a-prod/cluster-config.yaml"
    ))
    .unwrap();
    let settings =
        std::fs::read_to_string(format!("{root}/examples/requests/team-a-prod/tkgops.yaml"))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("remote.git");

    let mut files: Vec<(String, String)> = vec![("tkgops.yaml".into(), repo_cfg)];
    for i in 0..CLUSTERS {
        let name = format!("cluster-{i:04}");
        files.push((
            format!("clusters/{name}/cluster-config.yaml"),
            cfg.replace("team-a-prod", &name),
        ));
        files.push((format!("clusters/{name}/tkgops.yaml"), settings.clone()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    init_remote(&remote, &refs).unwrap();

    let mut changed: Vec<(String, String)> = Vec::new();
    for i in 0..TOUCHED {
        let name = format!("new-{i:02}");
        changed.push((
            format!("clusters/{name}/cluster-config.yaml"),
            cfg.replace("team-a-prod", &name),
        ));
        changed.push((format!("clusters/{name}/tkgops.yaml"), settings.clone()));
    }
    let refs: Vec<(&str, &str)> = changed
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    commit_on_branch(&remote, "main", "pr", "Add 10 clusters", &refs).unwrap();

    let git = ConfigRepo::open_local(&remote).unwrap();
    let base = git.resolve("refs/heads/main").unwrap();
    let head = git.resolve("refs/heads/pr").unwrap();
    let catalog = Catalog::builtin().unwrap();

    let executable = tkgops::executors::executable_kinds();
    let mut samples: Vec<Duration> = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let mb = git.merge_base(&base, &head).unwrap();
        let paths = git.changed_paths(&mb, &head).unwrap();
        let (bt, ht, st) = (
            git.tree(&mb).unwrap(),
            git.tree(&head).unwrap(),
            git.tree(&base).unwrap(),
        );
        let p = plan(&PlanInput {
            base: &bt,
            head: &ht,
            settings: &st,
            base_sha: &mb,
            head_sha: &head,
            changed_paths: &paths,
            catalog: &catalog,
            executable: &executable,
            repository: "acme/tkg-clusters",
            history: Default::default(),
        });
        let md = render_plan(&p, &catalog, true).unwrap();
        assert_eq!(p.clusters.len(), TOUCHED);
        std::hint::black_box(md);
        samples.push(t.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = samples[samples.len() / 2];
    println!(
        "plan latency, PR touching {TOUCHED} clusters in a repository of {CLUSTERS}: median {:.2} ms, p90 {:.2} ms, min {:.2} ms (target < 20 ms; ratio to target {:.2}x)",
        ms(median),
        ms(samples[samples.len() * 9 / 10]),
        ms(samples[0]),
        ms(median) / 20.0
    );
}
