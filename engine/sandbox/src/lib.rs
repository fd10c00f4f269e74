//! tkgops-sandbox: config repository, emulators, moto and the bot wired together on loopback.
//!
//! [`Environment`] is the emulated world (GitHub with a bare git remote, a management cluster
//! with simulated Cluster API / kapp-controller / TMC agent controllers, TMC, and moto's EC2
//! seeded with a VPC); [`run`] tells the whole story with it: a PR adds a cluster request, the
//! bot plans it, an approver merges, the bot creates, attaches and equips the cluster, and the
//! PR conversation and final state are printed. The end-to-end tests use the same pieces.

pub mod moto;

pub use tkgops_emulators::git_remote::{commit_on_branch, init_remote};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use git2::Repository;

use moto::{seed_vpc, MotoServer, SeededVpc};
use tkgops::config::{BotConfig, GithubSettings};
use tkgops_emulators::github::{GithubEmulator, GithubEmulatorOptions};
use tkgops_emulators::kube::controllers::{
    seed_management_cluster, start_controllers, ControllerOptions, Controllers,
};
use tkgops_emulators::kube::{Gvr, KubeEmulator};
use tkgops_emulators::tmc::{TmcEmulator, TmcEmulatorOptions};

/// Name of the emulated management cluster.
pub const MANAGEMENT_CLUSTER: &str = "mc-aws-1";
/// Token the emulated GitHub accepts (and the bot uses).
pub const GITHUB_TOKEN: &str = "ghs_sandboxtoken";
/// CSP API token the emulated TMC accepts.
pub const TMC_TOKEN: &str = "tmc-sandbox-api-token";
/// The PR author in the story.
pub const AUTHOR: &str = "platform-dev";
/// The approver in the story (listed in the example `tkgops.yaml`).
pub const APPROVER: &str = "alice";

/// The example config repository and request shipped in `examples/`.
const EXAMPLE_REPO_CONFIG: &str = include_str!("../../../examples/config-repo/tkgops.yaml");
const EXAMPLE_README: &str = include_str!("../../../examples/config-repo/README.md");
const EXAMPLE_CLUSTER_CONFIG: &str =
    include_str!("../../../examples/requests/team-a-prod/cluster-config.yaml");
const EXAMPLE_CLUSTER_SETTINGS: &str =
    include_str!("../../../examples/requests/team-a-prod/tkgops.yaml");
/// Settings used with `--request FILE` (tkgops's own settings for a bare TKG file).
const DEFAULT_CLUSTER_SETTINGS: &str = "managementCluster: mc-aws-1\ntkr: v1.23.8+vmware.2-tkg.1\ntmc:\n  clusterGroup: default\nlabels:\n  env: sandbox\n";

/// Command-line arguments of `tkgops-sandbox` (`scripts/sandbox.sh` passes its own through).
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Exit when the story is told: 0 only when everything succeeded. Without it the sandbox keeps
    /// serving so a person can look around (Ctrl-C to stop).
    #[arg(long)]
    pub exit: bool,
    /// Use this TKG cluster configuration file instead of the example request (tkgops's own
    /// settings get defaults). A valid file goes through the whole story; an invalid one stops
    /// at the plan with the findings on the PR.
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// Working directory (kept afterwards); a temporary one by default.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Give up waiting for the run after this long (humantime).
    #[arg(long, default_value = "5m")]
    pub timeout: humantime::Duration,
}

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
#[error("sandbox: {0}")]
pub struct SandboxError(pub String);

fn err(context: &str) -> impl FnOnce(String) -> SandboxError + '_ {
    move |e| SandboxError(format!("{context}: {e}"))
}

macro_rules! ctx {
    ($e:expr, $c:expr) => {
        $e.map_err(|e| SandboxError(format!("{}: {}", $c, e)))
    };
}

/// The emulated world on loopback.
pub struct Environment {
    /// Working directory (bare remote, kubeconfigs, bot state).
    pub workdir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    /// moto's EC2 server.
    pub moto: MotoServer,
    /// The VPC seeded in moto.
    pub vpc: SeededVpc,
    /// AWS region of the seeded VPC.
    pub region: String,
    /// The Kubernetes API emulator (management and workload clusters).
    pub kube: KubeEmulator,
    _controllers: Controllers,
    /// The TMC emulator.
    pub tmc: TmcEmulator,
    /// The GitHub emulator.
    pub github: GithubEmulator,
    /// The config repository's bare remote.
    pub remote: PathBuf,
}

/// Timing knobs (fast for tests).
#[derive(Clone, Debug)]
pub struct Timings {
    /// Bot poll interval.
    pub poll: Duration,
    /// Readiness / TMC poll interval.
    pub wait_poll: Duration,
    /// Minimum interval between comment edits.
    pub comment: Duration,
    /// Simulated controller tick.
    pub controller_tick: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            poll: Duration::from_millis(500),
            wait_poll: Duration::from_millis(200),
            comment: Duration::from_millis(300),
            controller_tick: Duration::from_millis(100),
        }
    }
}

impl Environment {
    /// Starts moto (seeding a VPC with one private and one public subnet per AZ in `region`),
    /// the Kubernetes emulator with the management cluster and its controllers, TMC, and GitHub
    /// over a new bare config repository whose `main` holds the example `tkgops.yaml`.
    ///
    /// Errors: [`SandboxError`] naming the part that failed (e.g. moto not installed).
    pub async fn start(
        workdir: Option<&Path>,
        region: &str,
        azs: &[&str],
        vpc_cidr: &str,
        timings: &Timings,
    ) -> Result<Environment, SandboxError> {
        tkgops_providers::install_crypto_provider();
        let (workdir, tempdir) = match workdir {
            Some(w) => {
                ctx!(std::fs::create_dir_all(w), "creating the working directory")?;
                (w.to_path_buf(), None)
            }
            None => {
                let t = ctx!(tempfile::tempdir(), "creating a temporary directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let moto = MotoServer::start()
            .await
            .map_err(|e| SandboxError(format!("starting moto: {e}")))?;
        let ec2 = moto.ec2_client(region);
        let vpc = seed_vpc(&ec2, vpc_cidr, azs)
            .await
            .map_err(|e| SandboxError(format!("seeding the VPC in moto: {e}")))?;

        let kube = KubeEmulator::new();
        let mgmt = ctx!(
            kube.add_cluster(MANAGEMENT_CLUSTER).await,
            "starting the management cluster"
        )?;
        ctx!(
            seed_management_cluster(&mgmt),
            "seeding the management cluster"
        )?;
        let controllers = start_controllers(
            &kube,
            MANAGEMENT_CLUSTER,
            ControllerOptions {
                tick: timings.controller_tick,
                ..ControllerOptions::default()
            },
        );
        let kubeconfig_path = workdir.join(format!("{MANAGEMENT_CLUSTER}.kubeconfig"));
        ctx!(
            std::fs::write(&kubeconfig_path, mgmt.kubeconfig_yaml()),
            "writing the management kubeconfig"
        )?;

        let tmc = ctx!(
            TmcEmulator::start(TmcEmulatorOptions {
                api_token: TMC_TOKEN.into(),
                org_id: "sandbox-org".into(),
                ..TmcEmulatorOptions::default()
            })
            .await,
            "starting the TMC emulator"
        )?;

        let remote = workdir.join("config-repo.git");
        let repo_config = sandbox_repo_config(&kubeconfig_path, &tmc.url())
            .map_err(err("rendering tkgops.yaml"))?;
        ctx!(
            init_remote(
                &remote,
                &[
                    ("tkgops.yaml", repo_config.as_str()),
                    ("README.md", EXAMPLE_README)
                ]
            ),
            "creating the config repository"
        )?;
        let github = ctx!(
            GithubEmulator::start(GithubEmulatorOptions {
                owner: "acme".into(),
                repo: "tkg-clusters".into(),
                default_branch: "main".into(),
                token: GITHUB_TOKEN.into(),
                bare_repo: remote.clone(),
            })
            .await,
            "starting the GitHub emulator"
        )?;
        Ok(Environment {
            workdir,
            _tempdir: tempdir,
            moto,
            vpc,
            region: region.to_string(),
            kube,
            _controllers: controllers,
            tmc,
            github,
            remote,
        })
    }

    /// The bot configuration pointing at this environment (state in `workdir/bot-state`).
    pub fn bot_config(&self, timings: &Timings) -> BotConfig {
        BotConfig {
            github: GithubSettings {
                api_url: self.github.api_url(),
                owner: "acme".into(),
                repo: "tkg-clusters".into(),
                token_env: "TKGOPS_SANDBOX_GITHUB_TOKEN".into(),
                clone_url: Some(self.remote.display().to_string()),
            },
            state_dir: self.workdir.join("bot-state"),
            poll_interval: timings.poll,
            kube_poll_interval: timings.wait_poll,
            tmc_poll_interval: timings.wait_poll,
            comment_min_interval: timings.comment,
            tmc_token_env: "TKGOPS_SANDBOX_TMC_TOKEN".into(),
            aws_endpoint_url: Some(self.moto.endpoint_url()),
            catalog_dir: None,
            listen: None,
            webhook_secret_env: "TKGOPS_SANDBOX_WEBHOOK_SECRET".into(),
        }
    }

    /// Environment variables the bot process needs for this environment (tokens, AWS test
    /// credentials for moto).
    pub fn bot_env(&self) -> Vec<(String, String)> {
        vec![
            ("TKGOPS_SANDBOX_GITHUB_TOKEN".into(), GITHUB_TOKEN.into()),
            ("TKGOPS_SANDBOX_TMC_TOKEN".into(), TMC_TOKEN.into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    /// Commits `files` (path, contents) on a new branch `branch` of the config repository and
    /// opens a pull request from it as [`AUTHOR`]. Returns the PR number.
    ///
    /// Errors: [`SandboxError`] when git or the emulator fail.
    pub fn open_pull_request(
        &self,
        branch: &str,
        title: &str,
        files: &[(String, String)],
    ) -> Result<u64, SandboxError> {
        let owned: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        ctx!(
            commit_on_branch(&self.remote, "main", branch, title, &owned),
            "committing the request"
        )?;
        ctx!(
            self.github
                .open_pull_request(branch, title, "Adds a cluster request.", AUTHOR),
            "opening the PR"
        )
    }

    /// Waits until the commit status `context` of `sha` is no longer pending (the bot writes the
    /// final comment before the final status, so the comment is final then too); returns its
    /// state.
    ///
    /// Errors: [`SandboxError`] after `timeout`.
    pub async fn wait_status(
        &self,
        sha: &str,
        context: &str,
        timeout: Duration,
    ) -> Result<String, SandboxError> {
        self.github
            .wait_until(timeout, |gh| {
                gh.statuses(sha)
                    .into_iter()
                    .find(|s| s.context == context && s.state != "pending")
                    .map(|s| s.state)
            })
            .await
            .ok_or_else(|| {
                SandboxError(format!(
                    "timed out waiting for commit status {context} on {sha}"
                ))
            })
    }

    /// The PR conversation: every comment with its author, then the statuses of `sha`.
    pub fn conversation(&self, pr: u64) -> String {
        let mut out = String::new();
        for c in self.github.comments(pr) {
            out.push_str(&format!("----- comment by {} -----\n{}\n", c.user, c.body));
        }
        out
    }

    /// The final state of `cluster`: Cluster phase and conditions, TMC phase and health, and
    /// each PackageInstall's condition, one line each.
    pub fn final_state(&self, cluster: &str, namespace: &str) -> String {
        let mut out = String::new();
        let cluster_gvr = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
        match self
            .kube
            .cluster(MANAGEMENT_CLUSTER)
            .and_then(|m| m.get(&cluster_gvr, Some(namespace), cluster))
        {
            Some(obj) => {
                let phase = obj
                    .pointer("/status/phase")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-");
                out.push_str(&format!("Cluster {namespace}/{cluster}: phase {phase}\n"));
                for c in obj
                    .pointer("/status/conditions")
                    .and_then(|v| v.as_array())
                    .cloned()
                    .unwrap_or_default()
                {
                    out.push_str(&format!(
                        "  condition {}={}{}\n",
                        c.get("type").and_then(|v| v.as_str()).unwrap_or("?"),
                        c.get("status").and_then(|v| v.as_str()).unwrap_or("?"),
                        c.get("reason")
                            .and_then(|v| v.as_str())
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ));
                }
            }
            None => out.push_str(&format!(
                "Cluster {namespace}/{cluster}: not found on {MANAGEMENT_CLUSTER}\n"
            )),
        }
        match self.tmc.cluster(cluster) {
            Some(c) => out.push_str(&format!(
                "TMC cluster {cluster}: phase {}, health {}\n",
                c.pointer("/status/phase")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-"),
                c.pointer("/status/health")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
            )),
            None => out.push_str(&format!("TMC cluster {cluster}: not attached\n")),
        }
        let pkgi = Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls");
        if let Some(w) = self.kube.cluster(cluster) {
            for p in w.list(&pkgi, None) {
                let cond = p
                    .pointer("/status/conditions/0/type")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-");
                out.push_str(&format!(
                    "PackageInstall {}/{}: {} (version {})\n",
                    p.pointer("/metadata/namespace")
                        .and_then(|v| v.as_str())
                        .unwrap_or("-"),
                    p.pointer("/metadata/name")
                        .and_then(|v| v.as_str())
                        .unwrap_or("-"),
                    cond,
                    p.pointer("/status/version")
                        .and_then(|v| v.as_str())
                        .unwrap_or("-")
                ));
            }
        }
        out
    }
}

/// The example `tkgops.yaml` with the management cluster's kubeconfig and the TMC endpoints
/// pointed at this environment.
fn sandbox_repo_config(kubeconfig: &Path, tmc_url: &str) -> Result<String, String> {
    let mut v: serde_yaml::Value =
        serde_yaml::from_str(EXAMPLE_REPO_CONFIG).map_err(|e| e.to_string())?;
    if let Some(mcs) = v
        .get_mut("managementClusters")
        .and_then(|m| m.as_sequence_mut())
    {
        for mc in mcs {
            mc["kubeconfig"] =
                serde_yaml::from_str(&format!("{{file: {:?}}}", kubeconfig.display().to_string()))
                    .map_err(|e| e.to_string())?;
        }
    }
    v["tmc"]["endpoint"] = serde_yaml::Value::String(tmc_url.to_string());
    v["tmc"]["cspEndpoint"] = serde_yaml::Value::String(tmc_url.to_string());
    let body = serde_yaml::to_string(&v).map_err(|e| e.to_string())?;
    Ok(format!("# Repository settings for tkgops (sandbox copy of examples/config-repo/tkgops.yaml).\n{body}"))
}

/// Parses a TKG configuration file with the project's parser; an unparsable file (an invalid
/// request, which the plan will report) reads as empty.
fn parse_request(config: &str) -> tkgops_domain::request::TkgConfig {
    tkgops_domain::request::parse_tkg_config("request", config.as_bytes()).unwrap_or_default()
}

/// Reads variable `key` of a TKG configuration file (empty when absent, unset or unparsable).
pub fn tkg_var(config: &str, key: &str) -> String {
    parse_request(config).get(key).unwrap_or("").to_string()
}

/// Rewrites the AWS network identifiers of a TKG configuration file to the sandbox's seeded VPC
/// (moto assigns its own IDs), keeping every other line as written. Only variables that are
/// set are rewritten, on the line the parser found them.
pub fn map_request_to_vpc(config: &str, vpc: &SeededVpc) -> String {
    let parsed = parse_request(config);
    let ids: [(&str, Option<&String>); 7] = [
        ("AWS_VPC_ID", Some(&vpc.vpc_id)),
        ("AWS_PRIVATE_SUBNET_ID", vpc.private_subnet_ids.first()),
        ("AWS_PRIVATE_SUBNET_ID_1", vpc.private_subnet_ids.get(1)),
        ("AWS_PRIVATE_SUBNET_ID_2", vpc.private_subnet_ids.get(2)),
        ("AWS_PUBLIC_SUBNET_ID", vpc.public_subnet_ids.first()),
        ("AWS_PUBLIC_SUBNET_ID_1", vpc.public_subnet_ids.get(1)),
        ("AWS_PUBLIC_SUBNET_ID_2", vpc.public_subnet_ids.get(2)),
    ];
    let mut lines: Vec<String> = config.lines().map(String::from).collect();
    for (key, id) in ids {
        if let (Some(id), Some(_), Some(line)) = (id, parsed.get(key), parsed.line(key)) {
            if let Some(l) = lines.get_mut(line as usize - 1) {
                *l = format!("{key}: {id}");
            }
        }
    }
    lines.join("\n") + "\n"
}

/// The files of the request the story adds: the example, or `--request FILE` with default
/// settings, mapped onto the sandbox VPC. Returns (cluster name, files).
pub fn request_files(request: Option<&str>, vpc: &SeededVpc) -> (String, Vec<(String, String)>) {
    let (config, settings) = match request {
        Some(text) => (text.to_string(), DEFAULT_CLUSTER_SETTINGS.to_string()),
        None => (
            EXAMPLE_CLUSTER_CONFIG.to_string(),
            EXAMPLE_CLUSTER_SETTINGS.to_string(),
        ),
    };
    let mut name = tkg_var(&config, "CLUSTER_NAME");
    if name.is_empty() {
        name = "unnamed-cluster".into();
    }
    let config = map_request_to_vpc(&config, vpc);
    (
        name.clone(),
        vec![
            (format!("clusters/{name}/cluster-config.yaml"), config),
            (format!("clusters/{name}/tkgops.yaml"), settings),
        ],
    )
}

/// Region, AZs and VPC CIDR to seed moto with for a request (defaults: the example's).
pub fn network_of(request: Option<&str>) -> (String, Vec<String>, String) {
    let cfg = parse_request(request.unwrap_or(EXAMPLE_CLUSTER_CONFIG));
    let var = |k: &str| cfg.get(k).unwrap_or("").to_string();
    let region = Some(var("AWS_REGION"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "us-west-2".into());
    let mut azs: Vec<String> = ["AWS_NODE_AZ", "AWS_NODE_AZ_1", "AWS_NODE_AZ_2"]
        .iter()
        .map(|k| var(k))
        .filter(|a| !a.is_empty() && a.starts_with(&region))
        .collect();
    azs.dedup();
    if azs.is_empty() {
        azs = vec![
            format!("{region}a"),
            format!("{region}b"),
            format!("{region}c"),
        ];
    }
    let cidr = Some(var("AWS_VPC_CIDR"))
        .filter(|s| s.parse::<ipnet::IpNet>().is_ok())
        .unwrap_or_else(|| "10.0.0.0/16".into());
    (region, azs, cidr)
}

/// Tells the whole story (see the module docs). Returns whether everything succeeded: for a
/// valid request, the run succeeded; for an invalid one, the plan failed with findings on the
/// PR and nothing was merged (then the result is `false`, the expected non-zero exit).
///
/// Errors: [`SandboxError`] when a part of the environment cannot be started.
pub async fn run(args: SandboxArgs) -> Result<bool, SandboxError> {
    let request = match &args.request {
        Some(p) => Some(ctx!(std::fs::read(p), format!("reading {}", p.display()))?),
        None => None,
    };
    let request_text = request
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).to_string());
    let (region, azs, cidr) = network_of(request_text.as_deref());
    let az_refs: Vec<&str> = azs.iter().map(String::as_str).collect();
    let timings = Timings::default();
    println!("==> starting moto (EC2, {region}), the Kubernetes, TMC and GitHub emulators");
    let env =
        Environment::start(args.workdir.as_deref(), &region, &az_refs, &cidr, &timings).await?;
    let cfg = env.bot_config(&timings);
    let (cluster, files) = request_files(request_text.as_deref(), &env.vpc);

    println!(
        "==> starting the bot (state in {})",
        cfg.state_dir.display()
    );
    let creds = tkgops::serve::Credentials {
        github_token: GITHUB_TOKEN.into(),
        tmc_token: Some(TMC_TOKEN.into()),
    };
    for (k, v) in env
        .bot_env()
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
    {
        if std::env::var_os(&k).is_none() {
            // Only the AWS SDK's default chain reads these; set before any client exists.
            std::env::set_var(k, v);
        }
    }
    let bot = Arc::new(
        tkgops::serve::build_with(&cfg, creds)
            .await
            .map_err(|e| SandboxError(e.to_string()))?,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let b = bot.clone();
    let poll = cfg.poll_interval;
    let bot_task = tokio::spawn(async move {
        b.run(poll, Duration::from_secs(5), async move {
            let _ = stop_rx.await;
        })
        .await
    });

    println!("==> {AUTHOR} opens a pull request adding clusters/{cluster}/");
    let pr = env.open_pull_request(
        &format!("add-{cluster}"),
        &format!("Add cluster {cluster}"),
        &files,
    )?;
    let head = ctx!(
        Repository::open_bare(&env.remote).and_then(|r| r
            .revparse_single(&format!("refs/heads/add-{cluster}"))
            .map(|o| o.id().to_string())),
        "reading the PR head"
    )?;
    let plan_state = env
        .wait_status(&head, tkgops::PLAN_CONTEXT, Duration::from_secs(120))
        .await?;
    println!("==> plan posted on PR #{pr} (tkgops/plan: {plan_state})\n");
    println!("{}", env.conversation(pr));

    let ok = if plan_state != "success" {
        println!("==> the plan has errors: nothing is merged or executed");
        false
    } else {
        println!("==> {APPROVER} approves and merges PR #{pr}");
        ctx!(
            env.github.submit_review(pr, APPROVER, "APPROVED"),
            "approving"
        )?;
        let merge = ctx!(env.github.merge_pull_request(pr, APPROVER), "merging")?;
        let apply = env
            .wait_status(&merge, tkgops::APPLY_CONTEXT, Duration::from(args.timeout))
            .await?;
        println!("==> run finished (tkgops/apply: {apply}); the PR conversation:\n");
        println!("{}", env.conversation(pr));
        println!("==> final state\n{}", env.final_state(&cluster, "default"));
        apply == "success"
    };

    if !args.exit {
        println!("==> sandbox is still serving (Ctrl-C to stop):");
        println!("    GitHub API   {}", env.github.api_url());
        println!("    TMC          {}", env.tmc.url());
        println!("    EC2 (moto)   {}", env.moto.endpoint_url());
        println!(
            "    mgmt cluster {}",
            env.workdir
                .join(format!("{MANAGEMENT_CLUSTER}.kubeconfig"))
                .display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(());
    let _ = bot_task.await;
    Ok(ok)
}
