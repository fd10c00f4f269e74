//! The chaos harness (README "Chaos harness"): `tkgops-sandbox --chaos --seed N --exit` for
//! seeds 1, 2 and 3, each the create, packages, failed-run-with-a-queued-change, upgrade and
//! delete stories beside a two-wave scheduled apply, against the real `tkgops serve` killed and
//! restarted at seeded points under seeded faults, ending with the exactly-once audit from the
//! emulators', moto's and the bare remote's records.

use std::time::Duration;

/// Runs one seed; asserts exit 0 and the audit line, within 300 s (about 60 s alone; the three
/// seeds run at once on 2 cores).
async fn seed(n: u64) {
    let bin = env!("CARGO_BIN_EXE_tkgops-sandbox");
    // The harness runs the bot as the tkgops-crashpoint binary (built by `cargo build --bins`).
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--chaos",
        "--seed",
        &n.to_string(),
        "--exit",
        "--timeout",
        "200s",
    ])
    .env("TKGOPS_CRASHPOINT_BIN", crate::support::crashpoint_bin())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("seed {n} did not finish within 300 s"))
        .expect("running tkgops-sandbox --chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.starts_with("==> chaos") || l.starts_with("violation") || l.contains("audit:")
        })
        .collect();
    assert!(
        out.status.success() && stdout.contains("exactly-once audit: ok"),
        "seed {n}: {}\n{}\n{}",
        out.status,
        summary.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        summary
            .iter()
            .any(|l| l.contains("SIGKILL to bot") || l.contains("SIGTERM to bot")),
        "seed {n} stopped the bot at least once: {}",
        summary.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_seed_1_passes_the_exactly_once_audit() {
    seed(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_seed_2_passes_the_exactly_once_audit() {
    seed(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_seed_3_passes_the_exactly_once_audit() {
    seed(3).await;
}
