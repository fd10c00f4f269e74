//! Graceful shutdown under load (issue "Proven under failure, aware of drift", point 2): the
//! real `tkgops serve` receives SIGTERM while a step is in flight, takes no new work, cuts the
//! step after its `shutdownGrace`, records the attempt as cut short by the shutdown, exits 0;
//! the next start resumes the run and finishes it with every side effect exactly once, as the
//! emulators and moto recorded them.

use std::time::Duration;

use axum::http::Method;
use tkgops_emulators::faults::{Fault, FaultAction};
use tkgops_engine::store::{RunFilter, SledStore, Store, OUTCOME_SHUTDOWN};
use tkgops_sandbox::{Environment, Timings, MANAGEMENT_CLUSTER};

use crate::e2e::{merge_create_until_tmc_attach, start_env};
use crate::support::{assert_create_effects_once, sigterm, stop_with_sigterm};

const CLUSTER: &str = "team-a-prod";
/// The bot's `shutdownGrace` in this test.
const GRACE: Duration = Duration::from_secs(2);
/// What the exit may take beyond the grace (recording the cut attempt, stopping the servers).
const MARGIN: Duration = Duration::from_secs(5);

/// `tkgops serve` against `env` with `shutdownGrace` [`GRACE`], its log in
/// `workdir/bot-<name>.log`.
fn spawn_bot(env: &Environment, timings: &Timings, name: &str) -> tokio::process::Child {
    let mut cfg = env.bot_config(timings);
    cfg.shutdown_grace = GRACE;
    crate::support::spawn_serve(&crate::support::tkgops_bin(), env, &cfg, name, &[])
}

/// SIGTERM while the TMC attach step is in flight (its CSP token exchange held by the TMC
/// emulator): exit 0 within the grace + margin, the attempt recorded as `shutdown` in the
/// journal; a new `tkgops serve` finishes the run `success`, and the Cluster was applied
/// once, TMC saw one cluster POST, each subnet was tagged once, one sticky comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_step_exits_0_and_the_next_start_finishes_the_run_exactly_once() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER).unwrap();
    // Hold the CSP token exchange (the first TMC call of the attach step) far past the grace.
    env.tmc.faults().inject(Fault::new(
        Some(Method::POST),
        "/csp/gateway/am/api/auth/api-tokens/authorize",
        FaultAction::Delay(Duration::from_secs(600)),
        Some(1),
    ));
    let mut first = spawn_bot(&env, &timings, "first");

    let (pr, merge) = merge_create_until_tmc_attach(&env).await;
    assert!(first.try_wait().unwrap().is_none(), "the bot runs the step");

    let sent = tokio::time::Instant::now();
    sigterm(&first);
    let status = tokio::time::timeout(GRACE + MARGIN, first.wait())
        .await
        .expect("tkgops serve did not exit within the grace + margin")
        .unwrap();
    let took = sent.elapsed();
    let log = std::fs::read_to_string(env.workdir.join("bot-first.log")).unwrap();
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    assert!(
        took >= GRACE,
        "the step in flight had its grace ({took:?})\n{log}"
    );
    assert!(log.contains("SIGTERM"), "the stop is logged:\n{log}");
    assert_eq!(
        env.github
            .statuses(&merge)
            .into_iter()
            .find(|s| s.context == "tkgops/apply")
            .map(|s| s.state)
            .as_deref(),
        Some("pending"),
        "the run is not finished"
    );

    // The journal (the process is gone: sled's lock is free): the attach attempt was cut
    // short by the shutdown and the step stays Running, to resume; nothing after it started.
    {
        let store = SledStore::open(&env.workdir.join("bot-state/journal")).unwrap();
        let runs = store.list_runs(&RunFilter::default()).await.unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        let run = &runs[0];
        assert!(!run.state.is_terminal(), "{:?}", run.state);
        let attach = run
            .steps
            .iter()
            .find(|s| s.spec.id == "tmc-attach")
            .expect("a tmc-attach step");
        let last = attach.attempts.last().expect("an attempt");
        assert_eq!(
            last.outcome.as_deref(),
            Some(OUTCOME_SHUTDOWN),
            "{:?}",
            attach.attempts
        );
        assert!(last.finished_at.is_some());
        assert_eq!(format!("{:?}", attach.state), "Running");
        let after: Vec<_> = run
            .steps
            .iter()
            .skip_while(|s| s.spec.id != "tmc-attach")
            .skip(1)
            .filter(|s| !s.attempts.is_empty())
            .map(|s| s.spec.id.clone())
            .collect();
        assert!(after.is_empty(), "steps started after the stop: {after:?}");
    }

    let mut second = spawn_bot(&env, &timings, "second");
    let apply = env
        .wait_status(&merge, "tkgops/apply", Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(apply, "success", "{}", env.conversation(pr));
    stop_with_sigterm(&mut second, GRACE + MARGIN, "the idle bot").await;

    // Exactly once, from the emulators' and moto's own records.
    let applies: Vec<_> = mgmt
        .writes()
        .into_iter()
        .filter(|w| w.gvr.plural == "clusters" && w.name == CLUSTER && w.verb == "apply")
        .filter(|w| !w.dry_run)
        .collect();
    assert_eq!(
        applies.len(),
        1,
        "the Cluster was applied once: {applies:?}"
    );
    assert_create_effects_once(&env, pr, &[&merge]);
    let store = SledStore::open(&env.workdir.join("bot-state/journal")).unwrap();
    let run = store
        .list_runs(&RunFilter::default())
        .await
        .unwrap()
        .remove(0);
    let attach = run
        .steps
        .iter()
        .find(|s| s.spec.id == "tmc-attach")
        .unwrap();
    let outcomes: Vec<_> = attach
        .attempts
        .iter()
        .map(|a| a.outcome.clone().unwrap_or_default())
        .collect();
    assert_eq!(outcomes, ["shutdown", "succeeded"], "{:?}", attach.attempts);
}
