//! `tkgops-sandbox --chaos --seed N` (README "Chaos harness"): the create, upgrade and delete
//! stories in one sandbox against the real `tkgops serve` binary, while a seeded schedule kills
//! (SIGKILL, sometimes SIGTERM) and restarts the bot and injects faults through the emulators'
//! fault modules; then an audit from the emulators' and moto's own request records (never the
//! bot's journal) that every run finished as expected and every side effect happened exactly
//! once.
//!
//! The seed decides the schedule (the delays between kills, which signal, which faults); the
//! moment a delay elapses is wall-clock time, so one seed explores the same kind of
//! interleavings run after run, not bit-for-bit the same one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tkgops_emulators::faults::{Fault, FaultAction};

use crate::stories::{merge_change, Change, EXAMPLE_TKR, UPGRADABLE_TKR};
use crate::{
    network_of, request_files, Environment, SandboxArgs, SandboxError, Signals, Timings, APPROVER,
    MANAGEMENT_CLUSTER, SECOND_APPROVER,
};

const CLUSTER: &str = "team-a-prod";
const SETTINGS: &str = "clusters/team-a-prod/tkgops.yaml";
/// The bot's `shutdownGrace` under chaos.
const GRACE: Duration = Duration::from_secs(3);
/// How long a SIGTERMed bot may take beyond [`GRACE`] before that is a violation.
const EXIT_MARGIN: Duration = Duration::from_secs(10);
/// How many times the bot is stopped per seed (then it runs undisturbed to the end).
const KILLS: u32 = 6;

/// What the chaos schedule did, for the report.
#[derive(Default, Debug)]
struct Tally {
    sigkills: u32,
    sigterms: u32,
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

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `tkgops` binary beside this one (`target/<profile>/`), or `TKGOPS_BIN`.
fn tkgops_bin() -> Result<PathBuf, SandboxError> {
    if let Some(p) = std::env::var_os("TKGOPS_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = ctx!(std::env::current_exe(), "locating tkgops-sandbox")?;
    let bin = exe
        .parent()
        .map(|d| d.join(format!("tkgops{}", std::env::consts::EXE_SUFFIX)))
        .filter(|b| b.exists())
        .ok_or_else(|| {
            SandboxError(format!(
                "--chaos runs the real bot: no tkgops binary beside {} (cargo build --bin tkgops, or set TKGOPS_BIN)",
                exe.display()
            ))
        })?;
    Ok(bin)
}

/// One fault from the catalog, chosen with `rng`, injected into its emulator. Returns its name.
fn inject_fault(env: &Environment, rng: &mut StdRng) -> String {
    let status = |code: u16| {
        FaultAction::Status {
        code,
        body: format!(
            "{{\"message\":\"injected {code}\",\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"code\":{code}}}"
        ),
    }
    };
    // Once each: a step retries within its budget (5 attempts), which interrupted attempts
    // (the kills) also spend.
    let times = Some(1);
    let (name, target, fault) = match rng.gen_range(0..10) {
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
        7 => (
            "kube 410 Gone on a Cluster API read/watch",
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
    env: &Environment,
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
                lock(tally).violations.push(format!(
                    "bot {} exited by itself with {status} (see bot-{}.log)",
                    bot.generation, bot.generation
                ));
                bot.restart()?;
            }
            _ = tokio::time::sleep(delay) => {
                if rng.gen_bool(0.7) {
                    let f = inject_fault(env, rng);
                    println!("==> chaos: injecting {f}");
                    lock(tally).faults.push(f);
                }
                kills += 1;
                if rng.gen_bool(0.25) {
                    println!("==> chaos: SIGTERM to bot {}", bot.generation);
                    lock(tally).sigterms += 1;
                    bot.terminate(tally).await;
                } else {
                    println!("==> chaos: SIGKILL to bot {}", bot.generation);
                    lock(tally).sigkills += 1;
                    let _ = bot.child.kill().await;
                }
                bot.restart()?;
            }
        }
    }
    Ok(())
}

/// Offsets into the emulators' and moto's records where a phase (one merged change) began.
#[derive(Clone, Copy, Debug)]
struct Mark {
    kube: usize,
    tmc: usize,
    moto: usize,
}

fn mark(env: &Environment) -> Mark {
    Mark {
        kube: env
            .kube
            .cluster(MANAGEMENT_CLUSTER)
            .map_or(0, |c| c.writes().len()),
        tmc: env.tmc.faults().log().all().len(),
        moto: env.moto.recorded().map_or(0, |r| r.len()),
    }
}

/// `--chaos --seed N`: see the module documentation. Returns whether the audit passed.
///
/// Errors: [`SandboxError`] when a part cannot be started, a story cannot be driven (a wait
/// timed out), or a signal interrupted it.
pub async fn run(args: SandboxArgs) -> Result<bool, SandboxError> {
    let mut signals = Signals::new()?;
    let seed = args.seed;
    let bin = tkgops_bin()?;
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
    let mut cfg = env.bot_config(timings);
    cfg.shutdown_grace = GRACE;
    let config = env.workdir.join("chaos-bot.yaml");
    ctx!(
        serde_yaml::to_string(&cfg)
            .map_err(|e| e.to_string())
            .and_then(|y| std::fs::write(&config, y).map_err(|e| e.to_string())),
        "writing the bot configuration"
    )?;
    let bot_env = env.bot_env();
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
    let mut rng = StdRng::seed_from_u64(seed);
    let timeout = Duration::from(args.timeout);

    let stories = async {
        let r = stories(env, timeout).await;
        done.store(true, Ordering::Release);
        r
    };
    let chaos = chaos_loop(env, &mut bot, &mut rng, &tally, &done);
    let (told, chaos) = tokio::join!(stories, async {
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
    let phases = told?;

    let mut tally = tally.into_inner().unwrap_or_else(|e| e.into_inner());
    audit(env, &phases, &mut tally.violations);
    println!(
        "==> chaos seed {seed}: {} SIGKILL, {} SIGTERM, {} bot starts, {} faults injected ({})",
        tally.sigkills,
        tally.sigterms,
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

/// One merged change of the chaos stories: its PR, merge commit outcome and record offsets.
struct Phase {
    name: &'static str,
    pr: u64,
    apply: String,
    start: Mark,
    end: Mark,
}

/// Create (at an upgradable TKR), upgrade, delete; each merged and waited for.
async fn stories(env: &Environment, timeout: Duration) -> Result<Vec<Phase>, SandboxError> {
    let (_, files) = request_files(None, &env.vpc);
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(p, c)| (p, c.replace(EXAMPLE_TKR, UPGRADABLE_TKR)))
        .collect();
    let settings = files
        .iter()
        .find(|(p, _)| p == SETTINGS)
        .map(|(_, c)| c.clone())
        .unwrap_or_default();
    let mut phases = Vec::new();
    let changes = [
        (
            "create",
            Change {
                branch: "add-team-a-prod",
                title: "Add cluster team-a-prod",
                files: files.clone(),
                removed: Vec::new(),
                label: None,
                approvers: &[APPROVER],
            },
        ),
        (
            "upgrade",
            Change {
                branch: "upgrade-team-a-prod",
                title: "Upgrade team-a-prod",
                files: vec![(
                    SETTINGS.to_string(),
                    settings.replace(UPGRADABLE_TKR, EXAMPLE_TKR),
                )],
                removed: Vec::new(),
                label: None,
                approvers: &[APPROVER],
            },
        ),
        (
            "delete",
            Change {
                branch: "delete-team-a-prod",
                title: "Delete team-a-prod",
                files: Vec::new(),
                removed: files.iter().map(|(p, _)| p.clone()).collect(),
                label: Some(tkgops_domain::request::ALLOW_DELETE_LABEL),
                approvers: &[APPROVER, SECOND_APPROVER],
            },
        ),
    ];
    for (name, change) in changes {
        let start = mark(env);
        let (pr, apply) = merge_change(env, change, timeout).await?;
        phases.push(Phase {
            name,
            pr,
            apply: apply.clone(),
            start,
            end: mark(env),
        });
        if apply != "success" {
            break;
        }
    }
    Ok(phases)
}

/// Pushes a violation unless `n` is 1.
fn once(violations: &mut Vec<String>, what: String, n: usize) {
    if n != 1 {
        violations.push(format!("{what}: {n} times, want exactly once"));
    }
}

/// The exactly-once audit over the emulators' and moto's records; pushes each violation.
fn audit(env: &Environment, phases: &[Phase], violations: &mut Vec<String>) {
    for want in ["create", "upgrade", "delete"] {
        match phases.iter().find(|p| p.name == want) {
            Some(p) if p.apply == "success" => {}
            Some(p) => violations.push(format!(
                "{want} (PR #{}): tkgops/apply is {}, want success",
                p.pr, p.apply
            )),
            None => violations.push(format!("{want}: never ran (an earlier story failed)")),
        }
    }
    let mgmt = env.kube.cluster(MANAGEMENT_CLUSTER);
    let writes = mgmt.map(|c| c.writes()).unwrap_or_default();
    let tmc = env.tmc.faults().log().all();
    let moto = env.moto.recorded().unwrap_or_default();
    let subnets: Vec<String> = env
        .vpc
        .private_subnet_ids
        .iter()
        .chain(&env.vpc.public_subnet_ids)
        .cloned()
        .collect();
    let ec2_on = |range: &[crate::moto::RecordedRequest], action: &str, subnet: &str| {
        range
            .iter()
            .filter(|r| r.from_app(tkgops_providers::aws::APP_NAME))
            .filter(|r| r.param("Action") == Some(action))
            .filter(|r| {
                r.params
                    .iter()
                    .any(|(k, v)| k.starts_with("ResourceId.") && v == subnet)
            })
            .count()
    };
    for p in phases {
        let w = &writes[p.start.kube.min(writes.len())..p.end.kube.min(writes.len())];
        let t = &tmc[p.start.tmc.min(tmc.len())..p.end.tmc.min(tmc.len())];
        let m = &moto[p.start.moto.min(moto.len())..p.end.moto.min(moto.len())];
        let cluster_writes = |verbs: &[&str]| {
            w.iter()
                .filter(|x| x.gvr.plural == "clusters" && x.name == CLUSTER && !x.dry_run)
                .filter(|x| x.changed && verbs.contains(&x.verb.as_str()))
                .count()
        };
        let tmc_calls = |method: &Method, path: &str| {
            t.iter()
                .filter(|r| !r.faulted && r.method == *method && r.path == path)
                .count()
        };
        let name = p.name;
        match name {
            "create" => {
                once(
                    violations,
                    format!("{name}: Cluster {CLUSTER} create (apply)"),
                    cluster_writes(&["apply", "create"]),
                );
                once(
                    violations,
                    format!("{name}: TMC POST /v1alpha1/clusters"),
                    tmc_calls(&Method::POST, "/v1alpha1/clusters"),
                );
                let mut tagged = 0;
                for s in &subnets {
                    let n = ec2_on(m, "CreateTags", s);
                    if n > 0 {
                        tagged += 1;
                        once(violations, format!("{name}: EC2 CreateTags on {s}"), n);
                    }
                }
                if tagged == 0 {
                    violations.push(format!("{name}: no subnet was tagged"));
                }
            }
            "upgrade" => once(
                violations,
                format!("{name}: Cluster {CLUSTER} version change"),
                cluster_writes(&["apply", "patch", "update"]),
            ),
            "delete" => {
                once(
                    violations,
                    format!("{name}: Cluster {CLUSTER} delete"),
                    cluster_writes(&["delete"]),
                );
                once(
                    violations,
                    format!("{name}: TMC DELETE of the cluster"),
                    tmc_calls(&Method::DELETE, &format!("/v1alpha1/clusters/{CLUSTER}")),
                );
                let mut untagged = 0;
                for s in &subnets {
                    let n = ec2_on(m, "DeleteTags", s);
                    if n > 0 {
                        untagged += 1;
                        once(violations, format!("{name}: EC2 DeleteTags on {s}"), n);
                    }
                }
                if untagged == 0 {
                    violations.push(format!("{name}: no subnet was untagged"));
                }
            }
            _ => {}
        }
        // GitHub: one sticky comment per PR; no status posted twice with the same state and
        // description on the same commit and context.
        let sticky = env
            .github
            .comments(p.pr)
            .iter()
            .filter(|c| c.body.contains("<!-- tkgops:sticky -->"))
            .count();
        once(
            violations,
            format!("{name}: sticky comment on PR #{}", p.pr),
            sticky,
        );
    }
    // PackageInstalls on the workload cluster: each created once.
    if let Some(workload) = env.kube.cluster(CLUSTER) {
        let mut creates: BTreeMap<String, usize> = BTreeMap::new();
        for w in workload.writes() {
            if w.gvr.plural == "packageinstalls"
                && !w.dry_run
                && w.changed
                && matches!(w.verb.as_str(), "create" | "apply")
            {
                *creates.entry(w.name.clone()).or_default() += 1;
            }
        }
        for (name, n) in creates {
            once(violations, format!("PackageInstall {name} create"), n);
        }
    }
    let mut seen: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
    for sha in commits(&env.remote) {
        for s in env.github.statuses(&sha) {
            *seen
                .entry((
                    sha.clone(),
                    s.context,
                    s.state,
                    s.description.unwrap_or_default(),
                ))
                .or_default() += 1;
        }
    }
    for ((sha, context, state, description), n) in seen {
        if n > 1 {
            violations.push(format!(
                "commit status {context} {state} \"{description}\" on {}: posted {n} times",
                &sha[..7.min(sha.len())]
            ));
        }
    }
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
