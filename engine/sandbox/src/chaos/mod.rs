//! `tkgops-sandbox --chaos --seed N` (README "Chaos harness"): the create, packages, upgrade,
//! delete, queued-behind-a-failed-run and two-wave scheduled stories in one sandbox against
//! `tkgops serve` run by the test-only `tkgops-crashpoint` binary (the production serve path
//! with crash points, [`crate::crashpoint`]), while a seeded schedule kills (SIGKILL, sometimes
//! SIGTERM) and restarts the bot, aborts it at seeded crash points between a step's side effect
//! and its journal write (or just before the side effect), and injects faults through the
//! emulators' fault modules and the moto proxy; then an audit from the emulators' and moto's
//! own request records (never the bot's journal) that every run finished as expected and every
//! side effect happened exactly once.
//!
//! The seed decides the schedule (the delays between kills, which signal, which faults, which
//! crash points); the moment a delay elapses is wall-clock time, so one seed explores the same
//! kind of interleavings run after run, not bit-for-bit the same one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tkgops_emulators::faults::{Fault, FaultAction};

use crate::moto_proxy::MotoProxy;
use crate::{
    network_of, Environment, SandboxArgs, SandboxError, Signals, Timings, MANAGEMENT_CLUSTER,
};

mod audit;
mod stories;

use stories::Told;
/// The bot's `shutdownGrace` under chaos.
const GRACE: Duration = Duration::from_secs(3);
/// How long a SIGTERMed bot may take beyond [`GRACE`] before that is a violation.
const EXIT_MARGIN: Duration = Duration::from_secs(10);
/// How many times the bot is stopped per seed (then it runs undisturbed to the end).
const KILLS: u32 = 6;

/// The steps with a side effect, across the stories' workflows (`workflows/*.yaml` step ids):
/// where a crash point can sit.
const CRASH_STEPS: &[&str] = &[
    "aws-preflight",
    "apply-bootstrap-config",
    "apply-cluster",
    "tmc-attach",
    "packages",
    "packages-update",
    "upgrade-cluster",
    "tmc-detach",
    "delete-cluster",
    "remove-subnet-tags",
];
/// How many crash points a seed arms.
const CRASH_POINTS: usize = 2;

/// The seed's crash points, in `TKGOPS_CRASH_AT`'s syntax ([`crate::crashpoint::ENV_POINTS`]):
/// [`CRASH_POINTS`] distinct steps of [`CRASH_STEPS`], each `after` the side effect (before the
/// journal write) two times in three, else `before` it.
fn draw_crash_points(rng: &mut StdRng) -> Vec<String> {
    let mut steps: Vec<&str> = CRASH_STEPS.to_vec();
    let mut points = Vec::new();
    while points.len() < CRASH_POINTS && !steps.is_empty() {
        let step = steps.swap_remove(rng.gen_range(0..steps.len()));
        let when = if rng.gen_bool(2.0 / 3.0) {
            "after"
        } else {
            "before"
        };
        points.push(format!("{when}:{step}"));
    }
    points
}

/// What the chaos schedule did, for the report.
#[derive(Default, Debug)]
struct Tally {
    sigkills: u32,
    sigterms: u32,
    /// Aborts at a crash point (the bot's own, between a side effect and its journal write).
    crash_aborts: u32,
    faults: Vec<String>,
    violations: Vec<String>,
}

/// The `tkgops serve` process under chaos and how to start it again.
struct BotProcess {
    bin: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    workdir: PathBuf,
    generation: u32,
    child: tokio::process::Child,
}

impl BotProcess {
    fn spawn(
        bin: &Path,
        config: &Path,
        env: &[(String, String)],
        workdir: &Path,
        generation: u32,
    ) -> Result<tokio::process::Child, SandboxError> {
        let log = ctx!(
            std::fs::File::create(workdir.join(format!("bot-{generation}.log"))),
            "creating the bot's log"
        )?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        ctx!(cmd.spawn(), format!("starting {}", bin.display()))
    }

    /// Starts the next generation (after the previous one exited).
    fn restart(&mut self) -> Result<(), SandboxError> {
        self.generation += 1;
        self.child = Self::spawn(
            &self.bin,
            &self.config,
            &self.env,
            &self.workdir,
            self.generation,
        )?;
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit; a violation unless it is status 0 within
    /// [`GRACE`] + [`EXIT_MARGIN`].
    async fn terminate(&mut self, tally: &Mutex<Tally>) {
        // A signal before the bot installed its handlers would kill it like SIGKILL: wait
        // (up to 10 s) until it logged that it is ready.
        let log = self.workdir.join(format!("bot-{}.log", self.generation));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline
            && !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("tkgops bot ready"))
        {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(pid) = self.child.id() else {
            return;
        };
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        if !sent.is_ok_and(|s| s.success()) {
            lock(tally)
                .violations
                .push(format!("bot {}: kill -TERM failed", self.generation));
            return;
        }
        match tokio::time::timeout(GRACE + EXIT_MARGIN, self.child.wait()).await {
            Ok(Ok(status)) if status.code() == Some(0) => {}
            // A step that finished within the grace reached an armed crash point.
            Ok(Ok(_)) if self.crash_point().is_some() => self.crashed_at_point(tally),
            Ok(Ok(status)) => lock(tally).violations.push(format!(
                "bot {} exited with {status} after SIGTERM (want 0)",
                self.generation
            )),
            Ok(Err(e)) => lock(tally)
                .violations
                .push(format!("bot {}: waiting for it: {e}", self.generation)),
            Err(_) => {
                lock(tally).violations.push(format!(
                    "bot {} did not exit within {:?} of SIGTERM",
                    self.generation,
                    GRACE + EXIT_MARGIN
                ));
                let _ = self.child.kill().await;
            }
        }
    }
}

impl BotProcess {
    /// The crash point this generation aborted at, from its log ([`crate::crashpoint::ABORT_LINE`]).
    fn crash_point(&self) -> Option<String> {
        let log = self.workdir.join(format!("bot-{}.log", self.generation));
        std::fs::read_to_string(log).ok().and_then(|l| {
            l.lines()
                .find_map(|l| l.split(crate::crashpoint::ABORT_LINE).nth(1))
                .map(|p| p.trim().to_string())
        })
    }

    /// Reports and counts an abort at a crash point of this generation.
    fn crashed_at_point(&self, tally: &Mutex<Tally>) {
        println!(
            "==> chaos: bot {} aborted at crash point {}",
            self.generation,
            self.crash_point().unwrap_or_default()
        );
        lock(tally).crash_aborts += 1;
    }
}

fn lock<T>(t: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_pushes(
    t: &Mutex<Vec<tokio::task::JoinHandle<bool>>>,
) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<bool>>> {
    lock(t)
}

/// The `tkgops-crashpoint` binary beside this one (`target/<profile>/`), or
/// `TKGOPS_CRASHPOINT_BIN`: the production `tkgops serve` path with crash points.
fn crashpoint_bin() -> Result<PathBuf, SandboxError> {
    if let Some(p) = std::env::var_os("TKGOPS_CRASHPOINT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = ctx!(std::env::current_exe(), "locating tkgops-sandbox")?;
    let bin = exe
        .parent()
        .map(|d| d.join(format!("tkgops-crashpoint{}", std::env::consts::EXE_SUFFIX)))
        .filter(|b| b.exists())
        .ok_or_else(|| {
            SandboxError(format!(
                "--chaos runs the bot as tkgops-crashpoint: none beside {} (cargo build --bins, or set TKGOPS_CRASHPOINT_BIN)",
                exe.display()
            ))
        })?;
    Ok(bin)
}

/// How the schedule stops the bot. One more kind (e.g. an abort between a side effect and its
/// journal write) plugs in here: a variant, its draw weight in [`Stop::draw`], its action in
/// [`chaos_loop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// SIGKILL: the process dies at once.
    Kill,
    /// SIGTERM: a graceful shutdown that must exit 0 within the grace.
    Term,
}

impl Stop {
    /// SIGTERM one time in four, else SIGKILL.
    fn draw(rng: &mut StdRng) -> Stop {
        if rng.gen_bool(0.25) {
            Stop::Term
        } else {
            Stop::Kill
        }
    }
}

/// Where the seeded faults go beyond the emulators' fault tables.
struct Targets<'a> {
    env: &'a Environment,
    proxy: &'a MotoProxy,
    told: &'a Told,
    /// Push rejections armed, each answering whether a push was rejected.
    pushes: Mutex<Vec<tokio::task::JoinHandle<bool>>>,
}

/// One fault from the catalog, chosen with `rng`, injected into its emulator. Returns its name.
fn inject_fault(t: &Targets<'_>, rng: &mut StdRng) -> String {
    let env = t.env;
    let status = |code: u16| {
        FaultAction::Status {
        code,
        body: format!(
            "{{\"message\":\"injected {code}\",\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"code\":{code}}}"
        ),
    }
    };
    // Once each: a step retries within its budget (5 attempts); faults repeated up to 3 times
    // exhausted it once the retries of several faults met in one step.
    let times = Some(1);
    let draw = rng.gen_range(0..14);
    match draw {
        10 => {
            t.proxy.throttle_next();
            return "ec2 RequestLimitExceeded (503)".into();
        }
        11 => {
            // The record branch of the scheduled apply, known once the schedule is written and
            // pushed to twice (one wave commit each): the next of those pushes is rejected.
            let (branch, finished) = {
                let s = lock(&t.told.scheduled);
                (s.record_branch.clone(), s.finished || s.halted)
            };
            let pushed = wave_commits(&env.remote, &branch).map_or(0, |c| c.len());
            if !branch.is_empty() && !finished && pushed < 2 {
                if let Ok(armed) =
                    tkgops_emulators::git_remote::reject_next_push(&env.remote, &branch)
                {
                    let h = tokio::spawn(armed.lift_after_attempt(Duration::from_secs(5)));
                    lock_pushes(&t.pushes).push(h);
                    return "github git push rejected (record branch)".into();
                }
            }
        }
        _ => {}
    }
    let (name, target, fault) = match draw {
        0 => (
            "github 500",
            "github",
            Fault::new(None, "/repos/", status(500), times),
        ),
        1 => (
            "github 502",
            "github",
            Fault::new(None, "/repos/", status(502), times),
        ),
        2 => (
            "github 403 secondary rate limit (Retry-After 1)",
            "github",
            Fault::new(
                None,
                "/repos/",
                FaultAction::RetryAfter { code: 403, secs: 1 },
                Some(1),
            ),
        ),
        3 => (
            "github 429 (Retry-After 1)",
            "github",
            Fault::new(
                None,
                "/repos/",
                FaultAction::RetryAfter { code: 429, secs: 1 },
                Some(1),
            ),
        ),
        4 => (
            "kube 409 on a Cluster API write",
            "kube",
            Fault::new(
                Some(Method::PATCH),
                "/apis/cluster.x-k8s.io/",
                status(409),
                times,
            ),
        ),
        5 => (
            "kube 500",
            "kube",
            Fault::new(None, "/apis/", status(500), times),
        ),
        6 => (
            "kube slow (2 s)",
            "kube",
            Fault::new(
                None,
                "/apis/",
                FaultAction::Delay(Duration::from_secs(2)),
                times,
            ),
        ),
        12 => (
            "kube watch dropped after 2 events",
            "kube",
            Fault::new(
                Some(Method::GET),
                "/apis/",
                FaultAction::CloseAfterEvents(2),
                Some(1),
            )
            .with_query("watch=true"),
        ),
        13 => (
            "kube watch 410 Expired",
            "kube",
            Fault::new(
                Some(Method::GET),
                "/apis/",
                FaultAction::WatchExpired,
                Some(1),
            )
            .with_query("watch=true"),
        ),
        7 => (
            "kube 410 Gone on a Cluster API read",
            "kube",
            Fault::new(
                Some(Method::GET),
                "/apis/cluster.x-k8s.io/",
                status(410),
                Some(1),
            ),
        ),
        8 => (
            "tmc 503",
            "tmc",
            Fault::new(None, "/v1alpha1/clusters", status(503), times),
        ),
        // A 401 stands for an expired token: the client refreshes it and retries once. Two
        // armed at once would answer the retry with the fresh token a 401 too, which the real
        // TMC does only for revoked credentials (a permanent failure, rightly): while a TMC
        // fault is armed, a 503 instead.
        _ if env.tmc.faults().armed() > 0 => (
            "tmc 503",
            "tmc",
            Fault::new(None, "/v1alpha1/clusters", status(503), times),
        ),
        _ => (
            "tmc 401 (token expired)",
            "tmc",
            Fault::new(None, "/v1alpha1/", status(401), Some(1)),
        ),
    };
    match target {
        "github" => env.github.faults().inject(fault),
        "kube" => {
            if let Some(c) = env.kube.cluster(MANAGEMENT_CLUSTER) {
                c.faults().inject(fault)
            }
        }
        _ => env.tmc.faults().inject(fault),
    }
    name.to_string()
}

/// The chaos schedule: until `done`, waits a seeded delay, maybe injects a seeded fault, then
/// stops the bot (SIGKILL, or SIGTERM one time in four) and starts it again, [`KILLS`] times.
/// A bot that exits by itself is a violation (and is started again).
async fn chaos_loop(
    targets: &Targets<'_>,
    bot: &mut BotProcess,
    rng: &mut StdRng,
    tally: &Mutex<Tally>,
    done: &AtomicBool,
) -> Result<(), SandboxError> {
    let mut kills = 0;
    while !done.load(Ordering::Acquire) {
        let delay = if kills < KILLS {
            Duration::from_millis(rng.gen_range(300..2_500))
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            status = bot.child.wait() => {
                let status = ctx!(status, "waiting for the bot")?;
                if bot.crash_point().is_some() {
                    bot.crashed_at_point(tally);
                } else {
                    lock(tally).violations.push(format!(
                        "bot {} exited by itself with {status} (see bot-{}.log)",
                        bot.generation, bot.generation
                    ));
                }
                bot.restart()?;
            }
            _ = tokio::time::sleep(delay) => {
                if rng.gen_bool(0.7) {
                    let f = inject_fault(targets, rng);
                    println!("==> chaos: injecting {f}");
                    lock(tally).faults.push(f);
                }
                kills += 1;
                match Stop::draw(rng) {
                    Stop::Term => {
                        println!("==> chaos: SIGTERM to bot {}", bot.generation);
                        lock(tally).sigterms += 1;
                        bot.terminate(tally).await;
                    }
                    Stop::Kill => {
                        println!("==> chaos: SIGKILL to bot {}", bot.generation);
                        lock(tally).sigkills += 1;
                        let _ = bot.child.kill().await;
                    }
                }
                bot.restart()?;
            }
        }
    }
    Ok(())
}

/// Offsets into the management cluster's writes and TMC's request log at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    kube: usize,
    tmc: usize,
}

fn mark(env: &Environment) -> Mark {
    Mark {
        kube: env
            .kube
            .cluster(MANAGEMENT_CLUSTER)
            .map_or(0, |c| c.writes().len()),
        tmc: env.tmc.faults().log().all().len(),
    }
}

/// `--chaos --seed N`: see the module documentation. Returns whether the audit passed.
///
/// Errors: [`SandboxError`] when a part cannot be started, a story cannot be driven (a wait
/// timed out), or a signal interrupted it.
pub async fn run(args: SandboxArgs) -> Result<bool, SandboxError> {
    let mut signals = Signals::new()?;
    let seed = args.seed;
    let bin = crashpoint_bin()?;
    let (region, azs, cidr) = network_of(None);
    let az_refs: Vec<&str> = azs.iter().map(String::as_str).collect();
    let timings = Timings::default();
    println!("==> chaos seed {seed}: starting moto, the Kubernetes, TMC and GitHub emulators");
    let env = tokio::select! {
        env = Environment::start(args.workdir.as_deref(), &region, &az_refs, &cidr, &timings) => env?,
        sig = signals.recv() => return Err(SandboxError(format!("interrupted by {sig}"))),
    };
    let outcome = tokio::select! {
        r = chaos_in(&env, &bin, seed, &args, &timings) => r,
        sig = signals.recv() => Err(SandboxError(format!("interrupted by {sig}"))),
    };
    env.shutdown().await;
    outcome
}

async fn chaos_in(
    env: &Environment,
    bin: &Path,
    seed: u64,
    args: &SandboxArgs,
    timings: &Timings,
) -> Result<bool, SandboxError> {
    let proxy = MotoProxy::start(&env.moto.endpoint_url()).await?;
    let mut cfg = env.bot_config(timings);
    cfg.shutdown_grace = GRACE;
    cfg.aws_endpoint_url = Some(proxy.url().to_string());
    let config = env.workdir.join("chaos-bot.yaml");
    ctx!(
        serde_yaml::to_string(&cfg)
            .map_err(|e| e.to_string())
            .and_then(|y| std::fs::write(&config, y).map_err(|e| e.to_string())),
        "writing the bot configuration"
    )?;
    let mut rng = StdRng::seed_from_u64(seed);
    let crash_points = draw_crash_points(&mut rng);
    println!("==> chaos: crash points {}", crash_points.join(", "));
    let mut bot_env = env.bot_env();
    bot_env.push((
        crate::crashpoint::ENV_POINTS.to_string(),
        crash_points.join(","),
    ));
    // Each point fires once across restarts: the restarted bot goes past it.
    bot_env.push((
        crate::crashpoint::ENV_STATE_DIR.to_string(),
        env.workdir.join("crash-points").display().to_string(),
    ));
    let child = BotProcess::spawn(bin, &config, &bot_env, &env.workdir, 0)?;
    let mut bot = BotProcess {
        bin: bin.to_path_buf(),
        config,
        env: bot_env,
        workdir: env.workdir.clone(),
        generation: 0,
        child,
    };
    println!(
        "==> the bot runs as {} (logs: {}/bot-<n>.log)",
        bin.display(),
        env.workdir.display()
    );
    let tally = Mutex::new(Tally::default());
    let done = AtomicBool::new(false);
    let timeout = Duration::from(args.timeout);

    let told = Told::default();
    let targets = Targets {
        env,
        proxy: &proxy,
        told: &told,
        pushes: Mutex::default(),
    };
    let stories = async {
        let r = stories::tell(env, &told, timeout).await;
        done.store(true, Ordering::Release);
        r
    };
    let chaos = chaos_loop(&targets, &mut bot, &mut rng, &tally, &done);
    let (outcome, chaos) = tokio::join!(stories, async {
        tokio::select! {
            r = chaos => r,
            // The chaos loop only notices `done` between kills: stop it once told.
            _ = async {
                while !done.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } => Ok(()),
        }
    });
    chaos?;
    bot.terminate(&tally).await;
    outcome?;
    let pushes: Vec<_> = lock_pushes(&targets.pushes).drain(..).collect();
    let mut tally = tally.into_inner().unwrap_or_else(|e| e.into_inner());
    for h in pushes {
        if !h.await.unwrap_or(false) {
            tally
                .faults
                .push("(a push rejection lifted after 5 s: no push with new objects came)".into());
        }
    }
    if proxy.throttled() > 0 {
        println!(
            "==> chaos: moto proxy answered {} RequestLimitExceeded",
            proxy.throttled()
        );
    }
    let records = records(env, &told);
    audit::audit(
        &records,
        &lock(&told.phases),
        &lock(&told.queued),
        &lock(&told.scheduled),
        &mut tally.violations,
    );
    println!(
        "==> chaos seed {seed}: {} SIGKILL, {} SIGTERM, {} crash-point aborts, {} bot starts, {} faults injected ({})",
        tally.sigkills,
        tally.sigterms,
        tally.crash_aborts,
        bot.generation + 1,
        tally.faults.len(),
        tally.faults.join(", ")
    );
    if tally.violations.is_empty() {
        println!("exactly-once audit: ok");
        Ok(true)
    } else {
        for v in &tally.violations {
            println!("violation: {v}");
        }
        println!(
            "exactly-once audit: {} violation(s)",
            tally.violations.len()
        );
        Ok(false)
    }
}

/// Gathers what the audit reads from the emulators, moto and the bare remote.
fn records(env: &Environment, told: &Told) -> audit::Records {
    let phases = lock(&told.phases).clone();
    let record_branch = lock(&told.scheduled).record_branch.clone();
    let mut workload = std::collections::BTreeMap::new();
    for c in std::iter::once(stories::CLUSTER).chain(stories::FLEET) {
        if let Some(k) = env.kube.cluster(c) {
            workload.insert(c.to_string(), k.writes());
        }
    }
    let mut sticky = std::collections::BTreeMap::new();
    for p in &phases {
        let n = env
            .github
            .comments(p.pr)
            .iter()
            .filter(|c| c.body.contains("<!-- tkgops:sticky -->"))
            .count();
        sticky.insert(p.pr, n);
    }
    let mut statuses = Vec::new();
    for sha in commits(&env.remote) {
        for s in env.github.statuses(&sha) {
            statuses.push((
                sha.clone(),
                s.context,
                s.state,
                s.description.unwrap_or_default(),
            ));
        }
    }
    let prefix = format!("tkgops/schedule/{}/", stories::SCHEDULE);
    audit::Records {
        mgmt: env
            .kube
            .cluster(MANAGEMENT_CLUSTER)
            .map(|c| c.writes())
            .unwrap_or_default(),
        workload,
        tmc: env.tmc.faults().log().all(),
        moto: env.moto.recorded().unwrap_or_default(),
        subnets: env
            .vpc
            .private_subnet_ids
            .iter()
            .chain(&env.vpc.public_subnet_ids)
            .cloned()
            .collect(),
        sticky,
        statuses,
        schedule_prs: env
            .github
            .pull_requests()
            .into_iter()
            .filter(|p| p.head_ref.starts_with(&prefix))
            .map(|p| p.head_ref)
            .collect(),
        wave_commits: wave_commits(&env.remote, &record_branch),
    }
}

/// Messages of the commits on `branch` that `main` does not hold; `None` without the branch.
fn wave_commits(remote: &Path, branch: &str) -> Option<Vec<String>> {
    let repo = git2::Repository::open_bare(remote).ok()?;
    let tip = repo
        .find_reference(&format!("refs/heads/{branch}"))
        .ok()?
        .target()?;
    let mut walk = repo.revwalk().ok()?;
    walk.push(tip).ok()?;
    walk.hide_ref("refs/heads/main").ok()?;
    Some(
        walk.filter_map(Result::ok)
            .filter_map(|o| repo.find_commit(o).ok())
            .map(|c| {
                String::from_utf8_lossy(c.message_bytes())
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect(),
    )
}

/// Every commit reachable from a branch of the bare config repository at `remote`.
fn commits(remote: &Path) -> Vec<String> {
    let Ok(repo) = git2::Repository::open_bare(remote) else {
        return Vec::new();
    };
    let Ok(mut walk) = repo.revwalk() else {
        return Vec::new();
    };
    if walk.push_glob("refs/heads/*").is_err() {
        return Vec::new();
    }
    walk.filter_map(Result::ok).map(|o| o.to_string()).collect()
}
