//! Shared test helpers: example inputs, golden snapshots (insta, with redactions of volatile
//! text), the `tkgops` and `tkgops-crashpoint` binaries, typed step inputs and in-memory commits.

use std::path::PathBuf;

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

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Asserts that `actual` equals the snapshot `tests/golden/<name>.snap` (insta), after
/// redacting what changes from run to run: SHAs, durations, ports, generated IDs, temporary
/// paths, schedule fire times and the machine counts a wait happened to see. A mismatch fails;
/// `INSTA_UPDATE=always` (or `cargo insta review`) accepts it (README "Golden files").
pub fn assert_golden(name: &str, actual: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("tests/golden"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    for (re, rep) in [
        (r"\b[0-9a-f]{40}\b", "<sha>"),
        (r"`[0-9a-f]{7}`", "`<sha>`"),
        (r"(head|base|commit) [0-9a-f]{7}\b", "$1 <sha>"),
        (r"@[0-9a-f]{12}#", "@<sha>#"),
        (r"\| (\d+[hms] ?)+\|", "| <duration> |"),
        (r"succeeded in [0-9hms ]+\.", "succeeded in <duration>."),
        // How many machines a wait saw roll depends on when it started watching.
        (r"\d+ node\(s\) rolled", "<n> node(s) rolled"),
        // Scheduled stories fire at the schedule's next fire after today.
        (
            r"fire \d{4}-\d{2}-\d{2} \d{2}:\d{2} [A-Za-z_/]+",
            "fire <time>",
        ),
        // Estimates measured from earlier runs in the sandbox depend on its speed.
        (
            r"about \S+ \(\S+ per node, measured over",
            "about <duration> (<duration> per node, measured over",
        ),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:<port>"),
        (r"vpc-[0-9a-f]{8,17}", "vpc-<id>"),
        (r"subnet-[0-9a-f]{8,17}", "subnet-<id>"),
        (r"/tmp/[^\s\x22']+", "<tmp>"),
    ] {
        settings.add_filter(re, rep);
    }
    settings.bind(|| insta::assert_snapshot!(name, actual));
}

/// The `tkgops` binary of this build (`target/<profile>/tkgops`, beside the test binary's
/// `deps/` directory). Integration tests of another package get no `CARGO_BIN_EXE_tkgops`, so
/// it is located here and, when a filtered `cargo test -p tkgops-sandbox` did not build it,
/// built once with the cargo that builds this test. A filtered run after a change should
/// `cargo build --bin tkgops` first: a binary left by an earlier build tests old code
/// (`scripts/test.sh` builds it with everything else).
pub fn tkgops_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| workspace_bin("tkgops")).clone()
}

/// The test-only `tkgops-crashpoint` binary of this build (`tkgops serve` with crash points,
/// `engine/sandbox/src/bin/tkgops-crashpoint.rs`), found or built as [`tkgops_bin`].
pub fn crashpoint_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| workspace_bin("tkgops-crashpoint"))
        .clone()
}

/// The workspace binary `name` beside the test binary's `deps/` directory, built with
/// `cargo build --bin <name>` (the test build's profile) when absent.
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        // Workspace-wide (no `-p`): the same feature set as the test build, so nothing
        // but the binary is rebuilt.
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--locked", "--profile", &profile])
            .args(["--bin", name])
            .current_dir(root())
            .status()
            .unwrap_or_else(|e| panic!("running cargo build --bin {name}: {e}"));
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    bin
}

/// Typed step inputs of kind `kind` (wire name, e.g. `kube.apply`) from their JSON form, as the
/// journal stores them. Panics when `inputs` does not match the kind's inputs type.
pub fn step_inputs(kind: &str, inputs: serde_json::Value) -> tkgops_engine::StepInputs {
    serde_json::from_value(serde_json::json!({ "kind": kind, "inputs": inputs }))
        .unwrap_or_else(|e| panic!("inputs of {kind}: {e}"))
}

/// Runs one attempt of `ctx.step` on a provider's method for the step's kind and returns the
/// output as the engine journals it (JSON), so the provider tests check the journal's format.
/// The bot's executor table (`tkgops::executors::StepTable`) routes kinds in production; these
/// implementations panic on a kind the provider does not execute.
#[async_trait::async_trait]
pub trait ExecuteStep {
    /// The output of one attempt of `ctx.step`, as JSON. Errors: the provider's.
    async fn execute(
        &self,
        ctx: &tkgops_engine::StepContext,
    ) -> Result<serde_json::Value, tkgops_engine::StepError>;
}

/// `output` as the engine journals it.
fn journalled<O: serde::Serialize>(
    output: Result<O, tkgops_engine::StepError>,
) -> Result<serde_json::Value, tkgops_engine::StepError> {
    output.map(|o| serde_json::to_value(o).expect("output as JSON"))
}

#[async_trait::async_trait]
impl ExecuteStep for tkgops_providers::aws::AwsExecutor {
    async fn execute(
        &self,
        ctx: &tkgops_engine::StepContext,
    ) -> Result<serde_json::Value, tkgops_engine::StepError> {
        use tkgops_engine::StepInputs as I;
        match &ctx.step.inputs {
            I::AwsPreflight(i) => journalled(self.preflight(ctx, i).await),
            I::AwsRemoveSubnetTags(i) => journalled(self.remove_subnet_tags(ctx, i).await),
            other => panic!("the AWS provider does not execute {}", other.kind()),
        }
    }
}

#[async_trait::async_trait]
impl ExecuteStep for tkgops_providers::tmc::TmcExecutor {
    async fn execute(
        &self,
        ctx: &tkgops_engine::StepContext,
    ) -> Result<serde_json::Value, tkgops_engine::StepError> {
        use tkgops_engine::StepInputs as I;
        match &ctx.step.inputs {
            I::TmcAttach(i) => journalled(self.attach(ctx, i).await),
            I::TmcDetach(i) => journalled(self.detach(ctx, i).await),
            other => panic!("the TMC provider does not execute {}", other.kind()),
        }
    }
}

#[async_trait::async_trait]
impl ExecuteStep for tkgops_providers::kube::KubeProvider {
    async fn execute(
        &self,
        ctx: &tkgops_engine::StepContext,
    ) -> Result<serde_json::Value, tkgops_engine::StepError> {
        use tkgops_engine::StepInputs as I;
        match &ctx.step.inputs {
            I::KubePreflight(i) => journalled(self.preflight(ctx, i).await),
            I::KubeApply(i) => journalled(self.apply(ctx, i).await),
            I::KubeWaitCluster(t) => journalled(self.wait_cluster(ctx, t).await),
            I::KubeReadKubeconfig(t) => journalled(self.read_kubeconfig(ctx, t).await),
            I::PackagesRollout(i) => journalled(self.packages_rollout(ctx, i).await),
            I::KubeUpgradeCluster(i) => journalled(self.upgrade_cluster(ctx, i).await),
            I::KubeWaitControlPlane(i) => journalled(self.wait_control_plane(ctx, i).await),
            I::KubeWaitMachineDeployments(i) => {
                journalled(self.wait_machine_deployments(ctx, i).await)
            }
            I::PackagesUpdate(i) => journalled(self.packages_update(ctx, i).await),
            I::PackagesVerify(t) => journalled(self.packages_verify(ctx, t).await),
            I::KubeCheckOwner(i) => journalled(self.check_owner(ctx, i).await),
            I::KubeDeleteCluster(i) => journalled(self.delete_cluster(ctx, i).await),
            other => panic!("the Kubernetes provider does not execute {}", other.kind()),
        }
    }
}

/// Starts `bin serve` (the `tkgops` binary, or one that parses the same command line such as
/// `tkgops-crashpoint`) against `env` with the configuration `cfg` (written to
/// `workdir/bot.yaml`), the environment's variables plus `extra_env`, its log in
/// `workdir/bot-<name>.log`. The process is killed when the handle is dropped.
pub fn spawn_serve(
    bin: &std::path::Path,
    env: &tkgops_sandbox::Environment,
    cfg: &tkgops::BotConfig,
    name: &str,
    extra_env: &[(&str, &str)],
) -> tokio::process::Child {
    let path = env.workdir.join("bot.yaml");
    std::fs::write(&path, serde_yaml::to_string(cfg).unwrap()).unwrap();
    let log = std::fs::File::create(env.workdir.join(format!("bot-{name}.log"))).unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .envs(env.bot_env())
        .envs(extra_env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawning {} serve: {e}", bin.display()))
}

/// The number of `ec2:<action>` requests tkgops sent to moto naming `subnet` as a resource.
pub fn ec2_calls_on(env: &tkgops_sandbox::Environment, action: &str, subnet: &str) -> usize {
    env.moto
        .recorded()
        .unwrap()
        .iter()
        .filter(|r| r.is_tkgops_action_on(action, subnet))
        .count()
}

/// The sandbox's subnets that the example cluster request names (its private and public ones).
pub fn requested_subnets(env: &tkgops_sandbox::Environment) -> Vec<String> {
    let (_, files) = tkgops_sandbox::request_files(None, &env.vpc);
    let request: String = files.iter().map(|(_, c)| c.as_str()).collect();
    env.vpc
        .private_subnet_ids
        .iter()
        .chain(&env.vpc.public_subnet_ids)
        .filter(|id| request.contains(id.as_str()))
        .cloned()
        .collect()
}

/// Sends SIGTERM to `child` (the `kill` utility: no signal crate in this workspace).
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("the bot is running");
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success(), "kill -TERM {pid}: {status}");
}

/// Sends SIGTERM to `child` and asserts it exits 0 within `within` (`what` names it in the
/// failure).
pub async fn stop_with_sigterm(
    child: &mut tokio::process::Child,
    within: std::time::Duration,
    what: &str,
) {
    sigterm(child);
    let status = tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {within:?} of SIGTERM"))
        .unwrap();
    assert_eq!(status.code(), Some(0), "{what}: {status}");
}

/// Asserts that the create story of team-a-prod (pull request `pr`, whose commits `shas` are
/// checked for statuses) had each side effect exactly once, from the emulators' and moto's
/// own records: one changing create (apply) of the Cluster on the management cluster, one TMC
/// `POST /v1alpha1/clusters`, one EC2 `CreateTags` per subnet the request names, one changing
/// write per PackageInstall on the workload cluster, one sticky comment, and no commit status
/// posted twice with the same context, state and description.
pub fn assert_create_effects_once(env: &tkgops_sandbox::Environment, pr: u64, shas: &[&str]) {
    use std::collections::BTreeMap;
    const CLUSTER: &str = "team-a-prod";
    let mgmt = env
        .kube
        .cluster(tkgops_sandbox::MANAGEMENT_CLUSTER)
        .expect("the management cluster");
    let cluster_creates: Vec<_> = mgmt
        .writes()
        .into_iter()
        .filter(|w| w.gvr.plural == "clusters" && w.name == CLUSTER && !w.dry_run)
        .filter(|w| w.changed && matches!(w.verb.as_str(), "apply" | "create"))
        .collect();
    assert_eq!(
        cluster_creates.len(),
        1,
        "the Cluster was created once: {cluster_creates:?}"
    );
    let tmc_posts = env
        .tmc
        .faults()
        .log()
        .all()
        .into_iter()
        .filter(|r| r.method == http::Method::POST && r.path == "/v1alpha1/clusters")
        .count();
    assert_eq!(tmc_posts, 1, "TMC saw one cluster POST");
    let subnets = requested_subnets(env);
    assert!(
        !subnets.is_empty(),
        "the request names the sandbox's subnets"
    );
    for subnet in &subnets {
        assert_eq!(
            ec2_calls_on(env, "CreateTags", subnet),
            1,
            "subnet {subnet} was tagged once"
        );
    }
    let workload = env.kube.cluster(CLUSTER).expect("the workload cluster");
    let mut package_writes: BTreeMap<String, usize> = BTreeMap::new();
    for w in workload.writes() {
        if w.gvr.plural == "packageinstalls" && !w.dry_run && w.changed {
            *package_writes.entry(w.name.clone()).or_default() += 1;
        }
    }
    assert!(!package_writes.is_empty(), "PackageInstalls were applied");
    for (name, n) in &package_writes {
        assert_eq!(*n, 1, "PackageInstall {name} was written {n} times");
    }
    assert_eq!(
        crate::e2e::bot_comments(env, pr).len(),
        1,
        "one sticky comment"
    );
    for sha in shas {
        let mut seen: BTreeMap<(String, String, String), usize> = BTreeMap::new();
        for s in env.github.statuses(sha) {
            *seen
                .entry((s.context, s.state, s.description.unwrap_or_default()))
                .or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "statuses posted twice on {sha}: {twice:?}"
        );
    }
}
