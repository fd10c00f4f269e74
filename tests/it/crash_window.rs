//! Kills between a side effect and its journal write (README "Chaos harness"): the test-only
//! `tkgops-crashpoint` (the real `tkgops serve` with crash points around its step executor)
//! aborts right after each side-effecting step of the create story returned success and
//! before the engine journaled it, and once right after the engine journaled the TMC attach
//! attempt's start. Each time the process dies of SIGABRT and is started again (the crash
//! point spent); the run ends `success` with every side effect exactly once, as the emulators
//! and moto recorded them, and the journal shows each crashed step's interrupted attempt.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use tkgops_engine::store::{RunFilter, SledStore, Store, OUTCOME_INTERRUPTED, OUTCOME_SUCCEEDED};
use tkgops_sandbox::crashpoint::{ABORT_LINE, ENV_POINTS, ENV_STATE_DIR};
use tkgops_sandbox::{Environment, Timings};

use crate::e2e::{merge_create, start_env};
use crate::support::{assert_create_effects_once, crashpoint_bin, spawn_serve, stop_with_sigterm};

/// SIGABRT: what `std::process::abort` ends the crash-point process with.
const SIGABRT: i32 = 6;

/// The crash points, in the order the create run reaches them, and the step each hits:
/// the subnet tagging (AWS preflight), the Cluster's server-side apply, the TMC attach (inside
/// the step, then after its POST) and the PackageInstalls.
const POINTS: [(&str, &str); 5] = [
    ("after:aws-preflight", "aws-preflight"),
    ("after:team-a-prod/apply-cluster", "apply-cluster"),
    ("before:tmc.attach", "tmc-attach"),
    ("after:tmc.attach", "tmc-attach"),
    ("after:packages", "packages"),
];

/// Waits (up to 2 minutes) for the crash-point process `child` to abort at `point`; panics
/// with its log otherwise.
async fn expect_abort(
    env: &Environment,
    child: &mut tokio::process::Child,
    name: &str,
    point: &str,
) {
    let log_path = env.workdir.join(format!("bot-{name}.log"));
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = status
        .unwrap_or_else(|_| panic!("bot {name} did not reach the crash point {point}:\n{log}"))
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "bot {name}: {status}\n{log}"
    );
    assert!(
        log.contains(&format!("{ABORT_LINE} {point}:1")),
        "bot {name} aborted elsewhere than at {point}:\n{log}"
    );
}

/// The create story under `tkgops-crashpoint` with the [`POINTS`]: five aborts, five restarts,
/// then `tkgops/apply` `success` and an exactly-once audit: one changing Cluster create, one
/// TMC cluster POST, one CreateTags per subnet, each PackageInstall created once, one sticky
/// comment, no commit status posted twice; the journal has each crashed step's first attempts
/// `interrupted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_after_each_side_effect_before_its_journal_write_repeats_no_side_effect() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let bin = crashpoint_bin();
    let cfg = env.bot_config(&timings);
    let points: Vec<&str> = POINTS.iter().map(|(p, _)| *p).collect();
    let points = points.join(",");
    let state = env.workdir.join("crash-points");
    let state = state.to_str().unwrap();
    let crash_env = [(ENV_POINTS, points.as_str()), (ENV_STATE_DIR, state)];
    let mut bot = spawn_serve(&bin, &env, &cfg, "0", &crash_env);

    let (pr, head, merge) = merge_create(&env).await;

    for (n, (point, _)) in POINTS.iter().enumerate() {
        expect_abort(&env, &mut bot, &n.to_string(), point).await;
        bot = spawn_serve(&bin, &env, &cfg, &(n + 1).to_string(), &crash_env);
    }
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr));
    stop_with_sigterm(&mut bot, Duration::from_secs(15), "the last bot").await;

    assert_create_effects_once(&env, pr, &[&head, &merge]);

    // The journal (every process is gone: sled's lock is free): each crashed step's first
    // attempts were interrupted, so the window was hit, and its last attempt succeeded.
    let store = SledStore::open(&env.workdir.join("bot-state/journal")).unwrap();
    let runs = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let mut crashes: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, step) in POINTS {
        *crashes.entry(step).or_default() += 1;
    }
    for (step, n) in crashes {
        let record = runs[0]
            .steps
            .iter()
            .find(|s| s.spec.id == step)
            .unwrap_or_else(|| panic!("no step {step}"));
        let outcomes: Vec<_> = record
            .attempts
            .iter()
            .map(|a| a.outcome.clone().unwrap_or_default())
            .collect();
        let mut want = vec![OUTCOME_INTERRUPTED; n];
        want.push(OUTCOME_SUCCEEDED);
        assert_eq!(outcomes, want, "step {step}: {:?}", record.attempts);
    }
}
