//! Fleet benchmark (issue 8 item 11): a scheduled `apply` over a fleet on the emulators
//! (`cargo bench -p tkgops-sandbox --bench fleet`; harness = false, prints figures).
//!
//! The fleet is `TKGOPS_BENCH_CLUSTERS` clusters (default 1,000), `fleet-0000`…. They are
//! committed to the config repository at TKR v1.24.11 and seeded on the emulated management
//! cluster from their own plan's `kube.apply` manifests, as a create run would apply them. The
//! emulated Cluster API then provisions them. Then a schedule firing at the next minute (UTC)
//! is committed. It has two waves: `TKGOPS_BENCH_CANARY` canaries (default 10) and the rest,
//! at most `TKGOPS_BENCH_CONCURRENT` upgrades at a time (default 50), soak 0s. The real
//! `tkgops serve` binary is started on its real clock; the benchmark waits until the dashboard
//! says every cluster is upgraded, then prints:
//! - the bot's **peak resident memory** (`VmHWM`) and **CPU seconds** (user + system, from
//!   `/proc/<pid>/stat` at 100 ticks/s);
//! - **requests** to the management cluster, to the workload clusters and to GitHub (the
//!   emulators' request logs), in total and per cluster;
//! - **status change → next step**: for each `kube.wait-control-plane` and
//!   `kube.wait-machine-deployments` step, the time from the last change of what the wait gates
//!   on (its cluster's Cluster, KubeadmControlPlane, MachineDeployments and Machines seen on the
//!   emulator, and the workload API server's version) to the start of the run's next step (from
//!   the bot's journal), p50 / p99 / max; split into the wait's reaction (change → step
//!   finished) and the engine's hand-over (step finished → next step started), with the kinds
//!   of the last changes and the five slowest samples;
//! - **slot refill**: in the rest wave, the time from a run's finish to the start of the run
//!   that took its slot, p50 / p99 / max.
//!
//! Needs moto (`scripts/setup-venv.sh` or `TKGOPS_MOTO_SERVER`). With 1,000 clusters it runs for
//! several minutes on 2 cores; `TKGOPS_BENCH_CLUSTERS=50` takes well under one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use futures::StreamExt;
use tkgops_domain::files::MemoryTree;
use tkgops_domain::step::StepInputs;
use tkgops_domain::workflow::{plan_unbounded, Catalog, PlanInput};
use tkgops_emulators::kube::Gvr;
use tkgops_engine::store::{RunRecord, SledStore, Store};
use tkgops_providers::kube::KubeProvider;
use tkgops_sandbox::{network_of, request_files, Environment, Timings, MANAGEMENT_CLUSTER};

const OLD: &str = "v1.24.11+vmware.1-tkg.1";
const NEW: &str = "v1.25.7+vmware.2-tkg.1";

/// The system allocator, counting what the current thread holds: the wave plan's memory
/// (below) is measured on the thread that plans it, while the emulators run on others.
struct ThreadCounting;

thread_local! {
    static HELD: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn held_add(d: isize) {
    let _ = HELD.try_with(|h| h.set(h.get() + d));
}

// SAFETY: every call is forwarded to `System` with the same arguments; the counter is a plain
// thread-local integer (no allocation).
unsafe impl std::alloc::GlobalAlloc for ThreadCounting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        held_add(l.size() as isize);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        held_add(-(l.size() as isize));
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        held_add(new as isize - l.size() as isize);
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOCATOR: ThreadCounting = ThreadCounting;

/// The plan the bot makes of the rest wave at the fire (every cluster after the canaries has
/// its `tkr` bumped to the new TKR, planned without the cap) and what it holds: the heap
/// bytes the plan keeps, and the JSON size of its parts (steps with their inputs, rendered
/// manifests, field diffs, summaries). The bot keeps this plan for the whole wave
/// (`engine/bot/src/reconcile/wave.rs`, `wave_plan`).
fn wave_plan_figures(head: &MemoryTree, canary: usize, n: usize, catalog: &Catalog) -> String {
    let mut bumped = head.0.clone();
    let changed: Vec<String> = (canary..n)
        .map(|i| format!("clusters/fleet-{i:04}/tkgops.yaml"))
        .collect();
    for path in &changed {
        if let Some(text) = bumped.get_mut(path) {
            *text = String::from_utf8_lossy(text).replace(OLD, NEW).into_bytes();
        }
    }
    let bumped = MemoryTree(bumped);
    let executable = tkgops::executors::executable_kinds();
    let before = HELD.with(|h| h.get());
    let p = plan_unbounded(&PlanInput {
        base: head,
        head: &bumped,
        settings: head,
        base_sha: "2222222222222222222222222222222222222222",
        head_sha: "3333333333333333333333333333333333333333",
        changed_paths: &changed,
        catalog,
        executable: &executable,
        repository: "acme/tkg-clusters",
        history: Default::default(),
    });
    let held = HELD.with(|h| h.get()) - before;
    let size = |f: &dyn Fn(&tkgops_domain::workflow::ClusterPlan) -> usize| -> f64 {
        p.clusters.iter().map(f).sum::<usize>() as f64 / (1 << 20) as f64
    };
    let steps = size(&|c| serde_json::to_string(&c.steps).map_or(0, |s| s.len()));
    let manifests = size(&|c| serde_json::to_string(&c.manifests).map_or(0, |s| s.len()));
    let diffs = size(&|c| serde_json::to_string(&c.diffs).map_or(0, |s| s.len()));
    let summary = size(&|c| serde_json::to_string(&c.summary).map_or(0, |s| s.len()));
    format!(
        "wave plan: {} clusters, {:.1} MiB held; as JSON: steps {steps:.1} MiB, manifests {manifests:.1} MiB, diffs {diffs:.1} MiB, summaries {summary:.1} MiB",
        p.clusters.len(),
        held as f64 / (1 << 20) as f64
    )
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main_file(env: &Environment, path: &str) -> String {
    let repo = git2::Repository::open_bare(&env.remote).expect("config repository");
    let blob = repo
        .revparse_single(&format!("refs/heads/main:{path}"))
        .and_then(|o| o.peel_to_blob())
        .expect("file on main");
    String::from_utf8_lossy(blob.content()).into_owned()
}

/// The `tkgops` binary of this build profile (`target/<profile>/tkgops`), built when missing.
fn tkgops_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<bench>")
        .to_path_buf();
    // Built when missing; after a change, `cargo build --release --bin tkgops` first (a
    // binary left by an earlier build would be measured otherwise).
    let bin = profile_dir.join("tkgops");
    if !bin.exists() {
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release")
            .replace("debug", "dev");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--profile", &profile, "--bin", "tkgops"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .status()
            .expect("running cargo build --bin tkgops");
        assert!(status.success(), "cargo build --bin tkgops failed");
    }
    bin
}

/// `(peak resident memory in KiB, CPU seconds)` of process `pid`.
fn process_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (hwm, (ticks(11) + ticks(12)) as f64 / 100.0)
}

/// The `p` quantile (0..=1, nearest rank) of `v`, 0 when empty.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn percentiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)",
        at(0.5) * 1000.0,
        at(0.99) * 1000.0,
        v[v.len() - 1] * 1000.0,
        v.len()
    )
}

/// What a stalled fleet looks like, for the benchmark's error: Clusters paused, their
/// ClusterBootstrap's `status.resolvedTKR`, Cluster phases and Ready, the upgrades under way,
/// each issue's and pull request's first lines (the dashboard's schedules and fires), and the
/// bot's last warnings and errors from its log `bot_log`.
fn stall_report(
    mgmt: &tkgops_emulators::kube::EmulatedCluster,
    issues: &[tkgops_emulators::github::EmulatedIssue],
    bot_log: &std::path::Path,
) -> String {
    let clusters = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let bootstraps = Gvr::new("run.tanzu.vmware.com", "v1alpha3", "clusterbootstraps");
    let mut out = String::from("the fleet made no progress; its state:\n");
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for c in mgmt.list_shared(&clusters, Some("default")) {
        let name = c["metadata"]["name"].as_str().unwrap_or("");
        let ready = c["status"]["conditions"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == "Ready"))
            .map(|c| format!("{}/{}", c["status"], c["reason"]))
            .unwrap_or_default();
        *phases
            .entry(format!("{} Ready={ready}", c["status"]["phase"]))
            .or_default() += 1;
        if c["spec"]["paused"] == true || c["spec"]["topology"]["version"] != "v1.24.11+vmware.1" {
            let cb = mgmt.get_shared(&bootstraps, Some("default"), name);
            out.push_str(&format!(
                "  {name}: version {} paused {} tkr label {} ClusterBootstrap resolvedTKR {} Ready {ready}\n",
                c["spec"]["topology"]["version"],
                c["spec"]["paused"],
                c["metadata"]["labels"]["run.tanzu.vmware.com/tkr"],
                cb.map(|b| b["status"]["resolvedTKR"].to_string()).unwrap_or_else(|| "(none)".into()),
            ));
        }
    }
    out.push_str(&format!("  Clusters by phase: {phases:?}\n"));
    for i in issues {
        out.push_str(&format!(
            "  issue #{} {:?}, first lines:\n",
            i.number, i.title
        ));
        for l in i.body.lines().take(25) {
            out.push_str(&format!("    {l}\n"));
        }
    }
    let log = std::fs::read_to_string(bot_log).unwrap_or_default();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    out.push_str(&format!(
        "  the bot's last warnings and errors ({} in all; its whole log: {}):\n",
        problems.len(),
        bot_log.display()
    ));
    for l in &problems[problems.len().saturating_sub(15)..] {
        out.push_str(&format!("    {l}\n"));
    }
    out
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = env_usize("TKGOPS_BENCH_CLUSTERS", 1000);
    let canary = env_usize("TKGOPS_BENCH_CANARY", 10).min(n);
    let concurrent = env_usize("TKGOPS_BENCH_CONCURRENT", 50);
    println!(
        "fleet benchmark: {n} clusters, {canary} canaries, at most {concurrent} upgrades at a time"
    );
    let timings = Timings {
        poll: Duration::from_secs(2),
        wait_poll: Duration::from_secs(1),
        comment: Duration::from_secs(1),
        controller_tick: Duration::from_millis(200),
    };
    let (region, azs, cidr) = network_of(None);
    let azs: Vec<&str> = azs.iter().map(String::as_str).collect();
    let env = Environment::start(None, &region, &azs, &cidr, &timings)
        .await
        .expect("sandbox environment (moto: scripts/setup-venv.sh)");

    // 1. The fleet on main.
    let t0 = Instant::now();
    let repo_config = main_file(&env, "tkgops.yaml");
    let (_, example) = request_files(None, &env.vpc);
    let config = example
        .iter()
        .find(|(p, _)| p.ends_with("cluster-config.yaml"))
        .map(|(_, c)| c.clone())
        .expect("example config");
    let mut files: Vec<(String, String)> = Vec::new();
    for i in 0..n {
        let name = format!("fleet-{i:04}");
        let tier = if i < canary { "  tier: canary\n" } else { "" };
        files.push((
            format!("clusters/{name}/cluster-config.yaml"),
            config.replace("team-a-prod", &name),
        ));
        files.push((
            format!("clusters/{name}/tkgops.yaml"),
            format!("managementCluster: mc-aws-1\ntkr: {OLD}\ntmc:\n  clusterGroup: default\nlabels:\n  env: prod\n{tier}"),
        ));
    }
    let owned: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    tkgops_emulators::git_remote::commit_on_branch(&env.remote, "main", "main", "fleet", &owned)
        .expect("committing the fleet");

    // 2. The fleet on the management cluster, from its own plan's kube.apply manifests.
    let mut head: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(p, c)| (p.clone(), c.clone().into_bytes()))
        .collect();
    head.insert("tkgops.yaml".into(), repo_config.clone().into_bytes());
    let base = MemoryTree(BTreeMap::from([(
        "tkgops.yaml".to_string(),
        repo_config.clone().into_bytes(),
    )]));
    let head = MemoryTree(head);
    let changed: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
    let catalog = Catalog::builtin().expect("catalog");
    // The whole fleet in one plan: past plan.maxClusters, so without the cap (the seed is no
    // pull request).
    let p = plan_unbounded(&PlanInput {
        base: &base,
        head: &head,
        settings: &base,
        base_sha: "1111111111111111111111111111111111111111",
        head_sha: "2222222222222222222222222222222222222222",
        changed_paths: &changed,
        catalog: &catalog,
        executable: &tkgops::executors::executable_kinds(),
        repository: "acme/tkg-clusters",
        history: Default::default(),
    });
    let manifests: Vec<(String, String)> = p
        .clusters
        .iter()
        .filter_map(|c| {
            c.steps.iter().find_map(|s| match &s.inputs {
                StepInputs::KubeApply(i) => Some((c.cluster.clone(), i.manifests.clone())),
                _ => None,
            })
        })
        .collect();
    assert_eq!(
        manifests.len(),
        n,
        "every cluster plans a create: {:?}",
        p.all_findings()
            .iter()
            .take(5)
            .map(|f| format!("{} {}", f.rule, f.message))
            .collect::<Vec<_>>()
    );
    println!("{}", wave_plan_figures(&head, canary, n, &catalog));
    let rc = tkgops_domain::request::parse_repo_config("tkgops.yaml", repo_config.as_bytes())
        .expect("repository config");
    let mcs: BTreeMap<_, _> = rc
        .management_clusters
        .iter()
        .map(|m| (m.name.clone(), m.kubeconfig.clone()))
        .collect();
    let provider = KubeProvider::new(mcs, Duration::from_secs(1));
    let client = provider
        .management_client(MANAGEMENT_CLUSTER)
        .await
        .expect("management client");
    futures::stream::iter(manifests)
        .map(|(name, yaml)| {
            let (provider, client) = (provider.clone(), client.clone());
            async move {
                provider
                    .apply_yaml(&client, &yaml, "tkgops")
                    .await
                    .unwrap_or_else(|e| panic!("seeding {name}: {e:?}"));
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mgmt = env
        .kube
        .cluster(MANAGEMENT_CLUSTER)
        .expect("management cluster");
    let clusters = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let ready = || {
        mgmt.list(&clusters, Some("default"))
            .iter()
            .filter(|c| {
                c.pointer("/status/conditions")
                    .and_then(|v| v.as_array())
                    .is_some_and(|a| {
                        a.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .count()
    };
    // Checked every 2 s: listing the whole fleet at every change would cost more than the
    // emulated controllers themselves.
    while ready() < n {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            t0.elapsed() < Duration::from_secs(3600),
            "the fleet never got Ready"
        );
    }
    println!(
        "seeded: {n} Clusters Ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // 3. Changes of what the rollout waits gate on, timestamped as seen: the Cluster, its
    // KubeadmControlPlane, MachineDeployments and Machines (the workload API server's version
    // change is read from the emulator at the end).
    type Changes = BTreeMap<String, Vec<(DateTime<Utc>, &'static str)>>;
    let changes: Arc<Mutex<Changes>> = Arc::default();
    {
        let changes = changes.clone();
        let mut rx = mgmt.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let (what, cluster) = match ev.gvr.plural.as_str() {
                            "clusters" => ("Cluster", ev.object["metadata"]["name"].as_str()),
                            plural => {
                                let what = match plural {
                                    "kubeadmcontrolplanes" => "KubeadmControlPlane",
                                    "machinedeployments" => "MachineDeployment",
                                    "machines" => "Machine",
                                    _ => continue,
                                };
                                let label = ev.object["metadata"]["labels"]
                                    ["cluster.x-k8s.io/cluster-name"]
                                    .as_str();
                                (what, label)
                            }
                        };
                        let Some(cluster) = cluster else { continue };
                        if let Ok(mut c) = changes.lock() {
                            c.entry(cluster.to_string())
                                .or_default()
                                .push((Utc::now(), what));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                        eprintln!("benchmark: {k} change events lagged");
                    }
                    Err(_) => break,
                }
            }
        });
    }

    // 4. The schedule, firing at the next minute; the bot.
    // The next minute boundary at least 10 s away (the bot starts in between).
    let fire = (Utc::now() + chrono::Duration::seconds(70))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a minute");
    let schedule = format!(
        "schedules:\n  - name: fleet-apply\n    cron: \"{} {} * * *\"\n    window: 2h\n    selector: {{matchLabels: {{env: prod}}}}\n    target: latest-minor\n    action: apply\n    waves:\n      - {{name: canary, selector: {{matchLabels: {{tier: canary}}}}, maxConcurrent: {concurrent}}}\n      - {{name: rest, selector: {{}}, maxConcurrent: {concurrent}}}\n",
        fire.minute(),
        fire.hour()
    );
    let policy = format!("{repo_config}{schedule}");
    tkgops_emulators::git_remote::commit_on_branch(
        &env.remote,
        "main",
        "main",
        "fleet schedule",
        &[("tkgops.yaml", policy.as_str())],
    )
    .expect("committing the schedule");
    let cfg_path = env.workdir.join("bot.yaml");
    let mut cfg = env.bot_config(&timings);
    // For A/B runs: the drift scans (and their wake-up from the Cluster watch) off with 0.
    if let Ok(secs) = std::env::var("TKGOPS_BENCH_DRIFT_SCAN_SECS") {
        let secs = secs.parse().expect("TKGOPS_BENCH_DRIFT_SCAN_SECS: seconds");
        cfg.drift_scan_interval = Duration::from_secs(secs);
    }
    std::fs::write(&cfg_path, serde_yaml::to_string(&cfg).expect("bot config"))
        .expect("writing the bot config");
    let mgmt_log = mgmt.faults().log().clone();
    let github_log = env.github.faults().log().clone();
    let (mgmt_before, github_before) = (mgmt_log.all().len(), github_log.all().len());
    let workload_before: usize = (0..n)
        .filter_map(|i| env.kube.cluster(&format!("fleet-{i:04}")))
        .map(|w| w.faults().log().all().len())
        .sum();
    // The bot's log is kept beside the build (the emulators' temporary directory goes away
    // with the benchmark), for the stall diagnosis and for a look afterwards.
    let bot_log =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fleet-bot.log");
    let log_file = std::fs::File::create(&bot_log).expect("creating target/fleet-bot.log");
    let mut bot = tokio::process::Command::new(tkgops_bin())
        .arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .envs(env.bot_env())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawning tkgops serve");
    let pid = bot.id().expect("bot pid");
    println!("bot started (pid {pid}); the schedule fires at {fire}");
    let started = Instant::now();
    let done = format!("{n}/{n} cluster(s) upgraded in 2 wave(s)");
    // Checked every 2 s (not at every GitHub change: the dashboard of a large fleet is long),
    // with the progress printed every 30 s.
    let kcps = Gvr::new(
        "controlplane.cluster.x-k8s.io",
        "v1beta1",
        "kubeadmcontrolplanes",
    );
    // A stuck fleet ends the benchmark with a diagnosis instead of hanging: no progress (the
    // control planes and MachineDeployments at the new version, the Clusters Ready, the
    // dashboard) for `TKGOPS_BENCH_STALL_SECS` (default 600) after the fire.
    let stall_after = Duration::from_secs(env_usize("TKGOPS_BENCH_STALL_SECS", 600) as u64);
    let mds = Gvr::new("cluster.x-k8s.io", "v1beta1", "machinedeployments");
    let mut last_progress: Option<(Vec<usize>, Instant)> = None;
    let outcome = loop {
        let issues = env.github.issues();
        if let Some(i) = issues
            .iter()
            .find(|i| i.body.contains(&done) || i.body.contains('⛔'))
        {
            break i.clone();
        }
        let kcp_list = mgmt.list_shared(&kcps, Some("default"));
        let at_new = kcp_list
            .iter()
            .filter(|k| k["status"]["version"] == "v1.25.7+vmware.2")
            .count();
        if started.elapsed().as_secs() % 30 < 2 {
            println!(
                "  {:>5.0} s: {at_new}/{n} control planes at v1.25.7",
                started.elapsed().as_secs_f64()
            );
        }
        if Utc::now() > fire {
            let md_new = mgmt
                .list_shared(&mds, Some("default"))
                .iter()
                .filter(|m| {
                    m["spec"]["template"]["spec"]["version"] == "v1.25.7+vmware.2"
                        && m["status"]["updatedReplicas"] == m["spec"]["replicas"]
                })
                .count();
            let signature = vec![
                at_new,
                md_new,
                ready(),
                issues.iter().map(|i| i.body.len()).sum(),
            ];
            match &last_progress {
                Some((seen, _)) if *seen == signature => {}
                _ => last_progress = Some((signature, Instant::now())),
            }
            if let Some((_, since)) = &last_progress {
                if since.elapsed() >= stall_after || started.elapsed() > Duration::from_secs(7200) {
                    let _ = bot.kill().await;
                    eprintln!("{}", stall_report(&mgmt, &issues, &bot_log));
                    eprintln!(
                        "fleet: stalled clusters={n} no_progress_s={} (TKGOPS_BENCH_STALL_SECS)",
                        since.elapsed().as_secs()
                    );
                    std::process::exit(2);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let (hwm_kib, cpu) = process_usage(pid);
    let wall = started.elapsed().as_secs_f64();
    let from_fire = (Utc::now() - fire).num_milliseconds() as f64 / 1000.0;
    let _ = bot.kill().await;
    let _ = bot.wait().await;
    assert!(
        !outcome.body.contains('⛔'),
        "the apply halted:\n{}",
        outcome.body
    );
    let upgraded = mgmt
        .list(&clusters, Some("default"))
        .iter()
        .filter(|c| {
            c["spec"]["topology"]["version"]
                .as_str()
                .is_some_and(|v| NEW.starts_with(v) || v == NEW)
        })
        .count();

    // 5. Figures.
    let mgmt_requests = mgmt_log.all().len() - mgmt_before;
    let github_requests = github_log.all().len() - github_before;
    let workload_requests: usize = (0..n)
        .filter_map(|i| env.kube.cluster(&format!("fleet-{i:04}")))
        .map(|w| w.faults().log().all().len())
        .sum::<usize>()
        - workload_before;
    let store = SledStore::open(&env.workdir.join("bot-state").join("journal")).expect("journal");
    let record = env
        .github
        .pull_requests()
        .into_iter()
        .find(|p| p.head_ref.starts_with("tkgops/schedule/fleet-apply/apply-"))
        .expect("the record pull request");
    let runs: Vec<RunRecord> = store
        .list_runs_by_origin(&tkgops::pr_origin(record.number))
        .await
        .expect("the runs");
    let mut changes = changes.lock().map(|c| c.clone()).unwrap_or_default();
    for r in &runs {
        let at = env
            .kube
            .cluster(&r.cluster)
            .and_then(|w| w.kubernetes_version_changed_at());
        if let Some(at) = at {
            changes
                .entry(r.cluster.clone())
                .or_default()
                .push((DateTime::<Utc>::from(at), "workload /version"));
        }
    }
    // Per wait step: the last change of what it gates on before it finished → its finish (the
    // wait's reaction) → the start of the run's next step (the engine's hand-over).
    let mut reaction = Vec::new();
    let mut observe = Vec::new();
    let mut hand_over = Vec::new();
    let mut last_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut samples = Vec::new();
    for r in &runs {
        for (i, s) in r.steps.iter().enumerate() {
            let kind = s.spec.kind().as_str();
            if kind != "kube.wait-control-plane" && kind != "kube.wait-machine-deployments" {
                continue;
            }
            let (Some(done), Some(next)) =
                (s.finished_at, r.steps.get(i + 1).and_then(|n| n.started_at))
            else {
                continue;
            };
            let last = changes.get(&r.cluster).and_then(|v| {
                v.iter()
                    .filter(|(t, _)| *t <= done)
                    .max_by_key(|(t, _)| *t)
                    .copied()
            });
            if let Some((c, what)) = last {
                let secs = |d: chrono::Duration| d.num_milliseconds().max(0) as f64 / 1000.0;
                reaction.push(secs(next - c));
                observe.push(secs(done - c));
                hand_over.push(secs(next - done));
                *last_kind.entry(what).or_default() += 1;
                samples.push((
                    secs(next - c),
                    secs(done - c),
                    r.cluster.clone(),
                    kind,
                    what,
                ));
            }
        }
    }
    let mut finished: Vec<DateTime<Utc>> = runs.iter().filter_map(|r| r.finished_at).collect();
    finished.sort();
    let mut refill = Vec::new();
    let mut by_start: Vec<&RunRecord> = runs.iter().collect();
    by_start.sort_by_key(|r| r.created_at);
    for r in by_start.iter().skip(canary + concurrent) {
        if let Some(prev) = finished.iter().filter(|f| **f <= r.created_at).max() {
            refill.push((r.created_at - *prev).num_milliseconds().max(0) as f64 / 1000.0);
        }
    }
    let per = |x: usize| x as f64 / n.max(1) as f64;
    println!(
        "\n== fleet apply: {n} clusters, {} runs, {upgraded} Clusters at {NEW} ==",
        runs.len()
    );
    println!("wall time:                 {from_fire:.1} s from the fire to the fleet upgraded ({wall:.1} s from the bot's start)");
    println!(
        "bot peak resident memory:  {:.1} MiB ({:.0} KiB per cluster)",
        hwm_kib as f64 / 1024.0,
        per(hwm_kib as usize)
    );
    println!(
        "bot CPU time:              {cpu:.1} s ({:.1} ms per cluster)",
        per(1) * cpu * 1000.0
    );
    println!(
        "requests, management:      {mgmt_requests} ({:.1} per cluster)",
        per(mgmt_requests)
    );
    println!(
        "requests, workload:        {workload_requests} ({:.1} per cluster)",
        per(workload_requests)
    );
    println!(
        "requests, GitHub:          {github_requests} ({:.2} per cluster)",
        per(github_requests)
    );
    let reaction_ms = |p: f64| percentile(&reaction, p) * 1000.0;
    let (reaction_p50, reaction_p99) = (reaction_ms(0.5), reaction_ms(0.99));
    println!("status change → next step: {}", percentiles(reaction));
    println!("  status change → step done: {}", percentiles(observe));
    println!("  step done → next step:     {}", percentiles(hand_over));
    println!("  the last change before a wait finished, by kind: {last_kind:?}");
    samples.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    for (total, seen, cluster, step, what) in samples.iter().take(5) {
        println!("  slowest: {cluster} {step}: {what} change → done {seen:.1} s, → next step {total:.1} s");
    }
    println!("run finish → slot refill:  {}", percentiles(refill));
    let failed = runs
        .iter()
        .filter(|r| r.state == tkgops_engine::store::RunState::Failed)
        .count();
    // One line for scripts (README "Benchmarks").
    println!(
        "fleet: clusters={n} upgraded={upgraded} failed={failed} wall_s={from_fire:.1} bot_peak_rss_mib={:.1} bot_cpu_s_per_cluster={:.4} reaction_p50_ms={reaction_p50:.0} reaction_p99_ms={reaction_p99:.0} requests_per_cluster={:.1}",
        hwm_kib as f64 / 1024.0,
        cpu / n.max(1) as f64,
        per(mgmt_requests + workload_requests + github_requests),
    );
}
