//! tkgops-sandbox: config repository, emulators, moto and the bot wired together on loopback.
//!
//! [`Environment`] is the emulated world (GitHub with a bare git remote, its users and their
//! tokens, a management cluster with simulated Cluster API / kapp-controller / TMC agent
//! controllers, TMC, and moto's EC2 seeded with a VPC); [`run`] tells the whole story with it: a
//! PR adds a cluster request, the bot plans it, an approver merges, the bot creates, attaches and
//! equips the cluster, and the PR conversation and final state are printed. [`serve`] starts the
//! same world with the bot and no story, and writes what a person needs to drive it like GitHub
//! (API URL, git URL, user tokens, …) to a JSON file. The end-to-end tests use the same pieces.

pub mod moto;

pub use tkgops_emulators::git_remote::{commit_on_branch, init_remote};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use git2::Repository;

use moto::{seed_vpc, MotoServer, SeededVpc};
use tkgops::config::{BotConfig, GitHubSettings};
use tkgops_emulators::github::{
    GitHubAppOptions, GitHubEmulator, GitHubEmulatorOptions, Role, WebhookTarget,
};
use tkgops_emulators::kube::controllers::{
    seed_management_cluster_with, start_controllers, ControllerOptions, Controllers, ManagementSeed,
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
/// The second approver listed in the example `tkgops.yaml`.
pub const SECOND_APPROVER: &str = "bob";
/// A user with write access (may review, comment and merge) who is not an approver.
pub const OUTSIDER: &str = "outsider";
/// A user with the `read` role: may comment and review, may not merge, post statuses or edit
/// other people's comments (GitHub answers 403).
pub const READER: &str = "reader";
/// The human users of the emulated GitHub; each gets a personal access token
/// ([`Environment::users`]) and the role of [`role_of_user`].
pub const USERS: [&str; 5] = [AUTHOR, APPROVER, SECOND_APPROVER, OUTSIDER, READER];

/// The repository role of sandbox user `login`: [`Role::Read`] for [`READER`],
/// [`Role::Write`] for the others of [`USERS`] (and for anyone else, as the emulator's
/// default).
pub fn role_of_user(login: &str) -> Role {
    if login == READER {
        Role::Read
    } else {
        Role::Write
    }
}
/// The repository the emulated GitHub serves (`owner/name`).
pub const REPOSITORY: &str = "acme/tkg-clusters";
/// Id of the GitHub App installed on the emulated repository.
pub const GITHUB_APP_ID: u64 = 271_828;
/// Slug of that App; its installation tokens act as `tkgops[bot]`.
pub const GITHUB_APP_SLUG: &str = "tkgops";
/// The App's private key (PEM). TEST-ONLY: committed in `tests/fixtures/github/`, it protects
/// nothing outside the emulator.
pub const GITHUB_APP_PRIVATE_KEY: &str =
    include_str!("../../../tests/fixtures/github/test-only-app-private-key.pem");
const GITHUB_APP_PUBLIC_KEY: &str =
    include_str!("../../../tests/fixtures/github/test-only-app-public-key.pem");
/// Name of the JSON file [`serve`] writes into the working directory.
pub const ENV_FILE: &str = "sandbox-env.json";

/// The example config repository and request shipped in `examples/`.
const EXAMPLE_REPO_CONFIG: &str = include_str!("../../../examples/config-repo/tkgops.yaml");
const EXAMPLE_README: &str = include_str!("../../../examples/config-repo/README.md");
const EXAMPLE_CLUSTER_CONFIG: &str =
    include_str!("../../../examples/requests/team-a-prod/cluster-config.yaml");
const EXAMPLE_CLUSTER_SETTINGS: &str =
    include_str!("../../../examples/requests/team-a-prod/tkgops.yaml");
/// Settings used with `--request FILE` (tkgops's own settings for a bare TKG file).
const DEFAULT_CLUSTER_SETTINGS: &str = "managementCluster: mc-aws-1\ntkr: v1.25.7+vmware.2-tkg.1\ntmc:\n  clusterGroup: default\nlabels:\n  env: sandbox\n";

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
    /// Tell no story: start the emulators and the bot (receiving the emulated GitHub's signed
    /// webhooks), print one line `sandbox env: PATH` (a JSON file with the GitHub API and git
    /// URLs, the users' tokens, the management cluster's kubeconfig, TMC and EC2), and serve
    /// until SIGINT or SIGTERM.
    #[arg(long, conflicts_with_all = ["exit", "request"])]
    pub serve: bool,
    /// The story to tell: `create` (default), `upgrade`, `scale`, `packages`, `tmc-group`,
    /// `delete`, `scheduled-propose` or `scheduled-apply` (see `stories`). Day-2 stories
    /// first create the example cluster; `--request` is for `create` only.
    #[arg(long, value_enum, default_value_t = Story::Create, conflicts_with = "serve")]
    pub story: Story,
    /// Before the bot starts, apply this RBAC file to the management cluster instead of
    /// (over) `deploy/management-cluster-rbac.yaml`, e.g. a copy without a verb: the bot's
    /// ServiceAccount `tkg-system/tkgops` then has what it grants.
    #[arg(long, conflicts_with = "serve")]
    pub management_rbac: Option<PathBuf>,
    /// Run the bot as the sandbox's GitHub App (installation tokens minted with the App's JWT)
    /// instead of with a token.
    #[arg(long, conflicts_with = "serve")]
    pub github_app: bool,
    /// The chaos harness (README "Chaos harness"): the create, packages, upgrade, delete,
    /// queued-behind-a-failed-run and two-wave scheduled stories against `tkgops serve` run by
    /// `tkgops-crashpoint` (beside this binary, or `TKGOPS_CRASHPOINT_BIN`), killed and
    /// restarted at seeded points and aborted at seeded crash points while the emulators inject
    /// seeded faults; then the exactly-once audit from the emulators' and moto's records. Exit
    /// 0 only when it passes.
    #[arg(long, conflicts_with_all = ["serve", "request", "story", "management_rbac", "github_app"])]
    pub chaos: bool,
    /// The seed of the chaos schedule (kill delays, signals, faults, crash points).
    #[arg(long, default_value_t = 1, requires = "chaos")]
    pub seed: u64,
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

pub mod chaos;
pub mod crashpoint;
pub mod moto_proxy;
pub mod stories;
pub use stories::Story;

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
    pub github: GitHubEmulator,
    /// The config repository's bare remote.
    pub remote: PathBuf,
    /// The human users of the emulated GitHub ([`USERS`]) and their personal access tokens
    /// (fresh for every environment): login → token.
    pub users: BTreeMap<String, String>,
    /// The secret the emulated GitHub signs webhook deliveries with (and the bot verifies).
    pub webhook_secret: String,
}

/// The bot running in this process against an [`Environment`] ([`Environment::start_bot`]).
pub struct SandboxBot {
    /// Where its HTTP server listens (`/webhooks/github`, `/healthz`, `/readyz`).
    pub addr: SocketAddr,
    /// `http://ADDR/webhooks/github`, where the emulated GitHub delivers its webhooks.
    pub webhook_url: String,
    /// The bot's state directory (journal, git mirror).
    pub state_dir: PathBuf,
    /// The bot itself (e.g. to set its clock in the scheduled stories).
    pub bot: Arc<tkgops::Bot>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SandboxBot {
    /// Stops polling and the HTTP server, and waits for the bot to drain (at most 5 s).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A fresh random token with `prefix` (e.g. `ghp_`), 40 characters after it.
fn random_token(prefix: &str) -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{a}{}", &b[..8])
}

/// SIGINT and SIGTERM (Ctrl-C only, off Unix), listened to from creation on: a signal that
/// arrives before [`Signals::recv`] is awaited is not lost.
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening. Errors: [`SandboxError`] when the handlers cannot be installed.
    pub fn new() -> Result<Signals, SandboxError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: ctx!(signal(SignalKind::interrupt()), "listening for SIGINT")?,
                term: ctx!(signal(SignalKind::terminate()), "listening for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Waits for the next SIGINT or SIGTERM; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
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
        // A TKG 2.2 management cluster whose identity management is Pinniped (the example
        // tkgops.yaml declares `tkgVersion: "2.2"` and `identityManagementType: ldap`).
        ctx!(
            seed_management_cluster_with(
                &mgmt,
                &ManagementSeed {
                    region: region.to_string(),
                    pinniped_issuer: Some(
                        "https://pinniped-supervisor.tkg-mgmt.example:31234".into()
                    ),
                    ..ManagementSeed::default()
                }
            ),
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
        // The bot acts on the management cluster as the ServiceAccount of the shipped RBAC
        // (deploy/management-cluster-rbac.yaml), for its writes and its watches; a person
        // driving the sandbox gets the admin's kubeconfig.
        ctx!(
            apply_rbac(&mgmt, MANAGEMENT_CLUSTER_RBAC),
            "applying deploy/management-cluster-rbac.yaml"
        )?;
        let kubeconfig_path = workdir.join(format!("{MANAGEMENT_CLUSTER}.kubeconfig"));
        ctx!(
            std::fs::write(
                &kubeconfig_path,
                mgmt.service_account_kubeconfig_yaml(BOT_SA_NAMESPACE, BOT_SA_NAME)
            ),
            "writing the bot's management kubeconfig"
        )?;
        ctx!(
            std::fs::write(admin_kubeconfig_path(&workdir), mgmt.kubeconfig_yaml()),
            "writing the management cluster's admin kubeconfig"
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
        let users: BTreeMap<String, String> = USERS
            .iter()
            .map(|u| (u.to_string(), random_token("ghp_")))
            .collect();
        let github = ctx!(
            GitHubEmulator::start(GitHubEmulatorOptions {
                owner: "acme".into(),
                repo: "tkg-clusters".into(),
                default_branch: "main".into(),
                token: GITHUB_TOKEN.into(),
                users: users.clone(),
                roles: USERS
                    .iter()
                    .map(|u| (u.to_string(), role_of_user(u)))
                    .collect(),
                bare_repo: remote.clone(),
                webhook: None,
                app: Some(GitHubAppOptions::new(
                    GITHUB_APP_ID,
                    GITHUB_APP_SLUG,
                    GITHUB_APP_PUBLIC_KEY
                )),
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
            users,
            webhook_secret: random_token("whsec_"),
        })
    }

    /// Replaces the RBAC objects (ServiceAccounts, ClusterRoles, ClusterRoleBindings, Roles,
    /// RoleBindings) of the multi-document YAML `yaml` on the management cluster, as
    /// `kubectl apply --server-side --force-conflicts` would; e.g. a copy of
    /// `deploy/management-cluster-rbac.yaml` without a verb.
    ///
    /// Errors: [`SandboxError`] for YAML that does not parse, another kind, or a refused write.
    pub fn apply_management_rbac(&self, yaml: &str) -> Result<(), SandboxError> {
        let mgmt = self
            .kube
            .cluster(MANAGEMENT_CLUSTER)
            .ok_or_else(|| SandboxError("no management cluster".into()))?;
        apply_rbac(&mgmt, yaml).map_err(SandboxError)
    }

    /// A kubeconfig of the management cluster with a new token of the bot's ServiceAccount
    /// (`tkg-system/tkgops`, bound by the RBAC the environment applied).
    pub fn bot_management_kubeconfig_yaml(&self) -> Option<String> {
        self.kube
            .cluster(MANAGEMENT_CLUSTER)
            .map(|c| c.service_account_kubeconfig_yaml(BOT_SA_NAMESPACE, BOT_SA_NAME))
    }

    /// The personal access token of user `login` ([`USERS`]), if it is one.
    pub fn token_of(&self, login: &str) -> Option<&str> {
        self.users.get(login).map(String::as_str)
    }

    /// Starts the bot in this process against this environment ([`Environment::bot_config`]),
    /// with its HTTP server on a free loopback port, and points the emulated GitHub's webhook
    /// (signed with [`Environment::webhook_secret`]) at its `POST /webhooks/github`. Sets the
    /// AWS variables of [`Environment::bot_env`] that are unset (the SDK's default chain reads
    /// them). Stop it with [`SandboxBot::stop`].
    ///
    /// Errors: [`SandboxError`] when the bot cannot be built or its server cannot listen.
    pub async fn start_bot(&self, timings: &Timings) -> Result<SandboxBot, SandboxError> {
        self.start_bot_as(timings, false).await
    }

    /// [`Environment::start_bot`], authenticated to GitHub as the sandbox's GitHub App
    /// ([`GITHUB_APP_ID`], [`GITHUB_APP_PRIVATE_KEY`]: installation tokens minted with the App's
    /// JWT) when `as_app`, else with the bot's token.
    ///
    /// Errors: as [`Environment::start_bot`].
    pub async fn start_bot_as(
        &self,
        timings: &Timings,
        as_app: bool,
    ) -> Result<SandboxBot, SandboxError> {
        let cfg = self.bot_config(timings);
        for (k, v) in self
            .bot_env()
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
        {
            if std::env::var_os(&k).is_none() {
                // Only the AWS SDK's default chain reads these; set before any client exists.
                std::env::set_var(k, v);
            }
        }
        let auth = if as_app {
            tkgops_github::GitHubAuth::App {
                app_id: GITHUB_APP_ID,
                private_key: GITHUB_APP_PRIVATE_KEY.into(),
                installation_id: None,
            }
        } else {
            tkgops_github::GitHubAuth::Token(GITHUB_TOKEN.into())
        };
        let bot = Arc::new(
            tkgops::serve::build_with_auth(&cfg, auth, Some(TMC_TOKEN.into()))
                .await
                .map_err(|e| SandboxError(format!("starting the bot: {e}")))?,
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let (addr, http) = tkgops::serve::start_http(
            &bot,
            "127.0.0.1:0",
            Some(self.webhook_secret.clone()),
            until_stopped(stopped.clone()),
        )
        .await
        .map_err(|e| SandboxError(format!("starting the bot's HTTP server: {e}")))?;
        let webhook_url = format!("http://{addr}/webhooks/github");
        self.github
            .set_webhook(Some(WebhookTarget::new(&webhook_url, &self.webhook_secret)));
        let b = bot.clone();
        let (poll, grace) = (cfg.poll_interval, cfg.shutdown_grace);
        let run = tokio::spawn(async move { b.run(poll, grace, until_stopped(stopped)).await });
        Ok(SandboxBot {
            addr,
            webhook_url,
            state_dir: cfg.state_dir,
            bot,
            stop,
            tasks: vec![run, http],
        })
    }

    /// Stops everything this environment started and waits for moto's process to exit (the
    /// emulators stop when dropped). Dropping an environment kills moto too, without waiting.
    pub async fn shutdown(self) {
        let Environment { moto, github, .. } = self;
        github.set_webhook(None);
        moto.stop().await;
    }

    /// One line on the webhook deliveries so far: how many the emulated GitHub sent to the bot
    /// and how many the bot accepted (2xx), e.g. `webhooks: 7 delivered to the bot, 7 accepted`.
    pub fn webhook_summary(&self) -> String {
        let deliveries = self.github.deliveries();
        let accepted = deliveries.iter().filter(|d| d.succeeded()).count();
        format!(
            "webhooks: {} delivered to the bot, {accepted} accepted",
            deliveries.len()
        )
    }

    /// One line on the AWS API actions tkgops sent to moto so far, sorted, e.g.
    /// `aws actions by tkgops: ec2:CreateTags, ec2:DescribeSubnets`; what
    /// `deploy/aws/iam-policy.json` must allow (a test compares them).
    pub fn aws_actions_summary(&self) -> String {
        match self.moto.actions_sent_by(tkgops_providers::aws::APP_NAME) {
            Ok(a) => format!(
                "aws actions by tkgops: {}",
                a.into_iter().collect::<Vec<_>>().join(", ")
            ),
            Err(e) => format!("aws actions by tkgops: unknown ({e})"),
        }
    }

    /// One line on what the bot did on GitHub so far: every API route it called (the emulated
    /// GitHub's route templates with the method, e.g. `POST /repos/{o}/{r}/statuses/{sha}`),
    /// then `GIT fetch` when its mirror (`<stateDir>/config.git`) fetched the config repository
    /// and `GIT push` when it pushed a branch (its mirror keeps `refs/tkgops/push/*` for every
    /// push); what the GitHub App's permissions (`deploy/github-app.yml`) must cover.
    pub fn github_routes_summary(&self, bot: &SandboxBot) -> String {
        let mut items = self.github.bot_routes();
        if let Ok(repo) = Repository::open_bare(bot.state_dir.join("config.git")) {
            let has = |glob: &str| {
                repo.references_glob(glob)
                    .map(|mut refs| refs.next().is_some())
                    .unwrap_or(false)
            };
            if has("refs/tkgops/heads/*") {
                items.push("GIT fetch".into());
            }
            if has("refs/tkgops/push/*") {
                items.push("GIT push".into());
            }
        }
        format!("github routes by tkgops: {}", items.join(", "))
    }

    /// One line on what the bot's ServiceAccount asked of the management cluster so far, as the
    /// RBAC authorizer saw it (distinct verb, resource and namespace; `DENIED` marks a 403), e.g.
    /// `kubernetes access by tkgops: get /api, patch clusters.cluster.x-k8s.io in default`.
    pub fn kube_access_summary(&self) -> String {
        let user = format!("system:serviceaccount:{BOT_SA_NAMESPACE}:{BOT_SA_NAME}");
        let Some(mgmt) = self.kube.cluster(MANAGEMENT_CLUSTER) else {
            return "kubernetes access by tkgops: unknown (no management cluster)".into();
        };
        let items: Vec<String> = mgmt
            .authorizations()
            .into_iter()
            .filter(|a| a.user == user)
            .map(|a| {
                let what = if a.resource.starts_with('/') || a.api_group.is_empty() {
                    a.resource.clone()
                } else {
                    format!("{}.{}", a.resource, a.api_group)
                };
                let scope = if a.namespace.is_empty() {
                    String::new()
                } else {
                    format!(" in {}", a.namespace)
                };
                let denied = if a.allowed { "" } else { " DENIED" };
                format!("{} {what}{scope}{denied}", a.verb)
            })
            .collect();
        format!("kubernetes access by tkgops: {}", items.join(", "))
    }

    /// What a person needs to drive this environment like GitHub, as written by [`serve`]:
    /// the GitHub API, git and webhook URLs, the webhook secret, the users' tokens
    /// (`github.users`) and repository roles (`github.roles`: `reader` has `read`), the
    /// management cluster's kubeconfig, TMC's URL and moto's EC2 endpoint with the seeded VPC.
    pub fn env_json(&self, bot: &SandboxBot) -> serde_json::Value {
        let subnets = |ids: &[String]| -> Vec<serde_json::Value> {
            ids.iter()
                .zip(&self.vpc.azs)
                .map(|(id, az)| serde_json::json!({"az": az, "id": id}))
                .collect()
        };
        serde_json::json!({
            "github": {
                "apiUrl": self.github.api_url(),
                "repository": REPOSITORY,
                "gitUrl": self.github.clone_url(),
                "webhookUrl": bot.webhook_url,
                "webhookSecret": self.webhook_secret,
                "users": self.users,
                "roles": self
                    .users
                    .keys()
                    .map(|u| (u.clone(), self.github.role(u).as_str()))
                    .collect::<BTreeMap<_, _>>(),
                "bot": tkgops_emulators::github::DEFAULT_BOT_LOGIN,
            },
            "managementClusters": {
                MANAGEMENT_CLUSTER: {
                    "kubeconfig": admin_kubeconfig_path(&self.workdir),
                },
            },
            "tmc": {"url": self.tmc.url()},
            "ec2": {
                "endpointUrl": self.moto.endpoint_url(),
                "region": self.region,
                "vpc": {
                    "id": self.vpc.vpc_id,
                    "cidr": self.vpc.cidr,
                    "privateSubnets": subnets(&self.vpc.private_subnet_ids),
                    "publicSubnets": subnets(&self.vpc.public_subnet_ids),
                },
            },
            "bot": {
                "url": format!("http://{}", bot.addr),
                "stateDir": bot.state_dir,
            },
        })
    }

    /// The bot configuration pointing at this environment (state in `workdir/bot-state`).
    pub fn bot_config(&self, timings: &Timings) -> BotConfig {
        BotConfig {
            github: GitHubSettings {
                api_url: self.github.api_url(),
                owner: "acme".into(),
                repo: "tkg-clusters".into(),
                token_env: "TKGOPS_SANDBOX_GITHUB_TOKEN".into(),
                clone_url: Some(self.remote.display().to_string()),
                app_id: None,
                private_key_env: None,
                private_key_file: None,
                installation_id: None,
            },
            state_dir: self.workdir.join("bot-state"),
            poll_interval: timings.poll,
            kube_poll_interval: timings.wait_poll,
            tmc_poll_interval: timings.wait_poll,
            comment_min_interval: timings.comment,
            tmc_token_env: "TKGOPS_SANDBOX_TMC_TOKEN".into(),
            tmc_token_file: None,
            aws_endpoint_url: Some(self.moto.endpoint_url()),
            catalog_dir: None,
            listen: None,
            admin_listen: None,
            run_retention: std::time::Duration::from_secs(90 * 24 * 3600),
            drift_scan_interval: std::time::Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(5),
            webhook_secret_env: "TKGOPS_SANDBOX_WEBHOOK_SECRET".into(),
            webhook_secret_file: None,
            trusted_policy_commit: None,
            leader_election: Default::default(),
        }
    }

    /// Environment variables the bot process needs for this environment (tokens, webhook
    /// secret, AWS test credentials for moto).
    pub fn bot_env(&self) -> Vec<(String, String)> {
        vec![
            ("TKGOPS_SANDBOX_GITHUB_TOKEN".into(), GITHUB_TOKEN.into()),
            ("TKGOPS_SANDBOX_TMC_TOKEN".into(), TMC_TOKEN.into()),
            (
                "TKGOPS_SANDBOX_WEBHOOK_SECRET".into(),
                self.webhook_secret.clone(),
            ),
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
        // The control plane and the MachineDeployments: version and replicas.
        let s = |v: &serde_json::Value, p: &str| {
            v.pointer(p)
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| "-".into())
        };
        if let Some(mgmt) = self.kube.cluster(MANAGEMENT_CLUSTER) {
            let owned = |o: &serde_json::Value| {
                let str_at = |p: &str| o.pointer(p).and_then(|v| v.as_str());
                str_at("/metadata/labels/cluster.x-k8s.io~1cluster-name") == Some(cluster)
                    || str_at("/spec/clusterName") == Some(cluster)
            };
            let kcp = Gvr::new(
                "controlplane.cluster.x-k8s.io",
                "v1beta1",
                "kubeadmcontrolplanes",
            );
            for k in mgmt.list(&kcp, Some(namespace)).iter().filter(|o| owned(o)) {
                out.push_str(&format!(
                    "KubeadmControlPlane {}: version {}, {}/{} ready\n",
                    s(k, "/metadata/name"),
                    s(k, "/status/version"),
                    s(k, "/status/readyReplicas"),
                    s(k, "/spec/replicas")
                ));
            }
            let md = Gvr::new("cluster.x-k8s.io", "v1beta1", "machinedeployments");
            for m in mgmt.list(&md, Some(namespace)).iter().filter(|o| owned(o)) {
                out.push_str(&format!(
                    "MachineDeployment {}: version {}, {}/{} ready\n",
                    s(m, "/metadata/name"),
                    s(m, "/spec/template/spec/version"),
                    s(m, "/status/readyReplicas"),
                    s(m, "/spec/replicas")
                ));
            }
        }
        match self.tmc.cluster(cluster) {
            Some(c) => out.push_str(&format!(
                "TMC cluster {cluster}: phase {}, health {}, cluster group {}\n",
                c.pointer("/status/phase")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-"),
                c.pointer("/status/health")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-"),
                c.pointer("/spec/clusterGroupName")
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

/// The RBAC tkgops needs on a management cluster, as shipped.
pub const MANAGEMENT_CLUSTER_RBAC: &str =
    include_str!("../../../deploy/management-cluster-rbac.yaml");
/// The namespace of the bot's ServiceAccount on the management cluster (in
/// [`MANAGEMENT_CLUSTER_RBAC`]).
pub const BOT_SA_NAMESPACE: &str = "tkg-system";
/// The name of the bot's ServiceAccount on the management cluster.
pub const BOT_SA_NAME: &str = "tkgops";

/// Where the environment writes the management cluster's admin kubeconfig (the bot's is
/// `<workdir>/tkg-mgmt.kubeconfig`).
pub fn admin_kubeconfig_path(workdir: &Path) -> PathBuf {
    workdir.join(format!("{MANAGEMENT_CLUSTER}-admin.kubeconfig"))
}

/// Applies the RBAC objects of `yaml` to `cluster` (see [`Environment::apply_management_rbac`]).
fn apply_rbac(cluster: &tkgops_emulators::kube::EmulatedCluster, yaml: &str) -> Result<(), String> {
    use serde::Deserialize as _;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_json::Value::deserialize(doc).map_err(|e| e.to_string())?;
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let gvr = match kind.as_str() {
            "ServiceAccount" => Gvr::new("", "v1", "serviceaccounts"),
            "ClusterRole" => Gvr::new("rbac.authorization.k8s.io", "v1", "clusterroles"),
            "ClusterRoleBinding" => {
                Gvr::new("rbac.authorization.k8s.io", "v1", "clusterrolebindings")
            }
            "Role" => Gvr::new("rbac.authorization.k8s.io", "v1", "roles"),
            "RoleBinding" => Gvr::new("rbac.authorization.k8s.io", "v1", "rolebindings"),
            other => return Err(format!("unexpected kind {other:?} in the RBAC")),
        };
        cluster
            .apply(&gvr, v, "kubectl", true)
            .map_err(|e| format!("{kind}: {e}"))?;
    }
    Ok(())
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
///
/// A request for an existing VPC (`AWS_VPC_ID`) gets the seeded VPC with its `AWS_VPC_CIDR`
/// (default `10.0.0.0/16`): the request's IDs are mapped onto it. A request for a new VPC gets
/// a seeded VPC whose CIDR overlaps none of the request's networks ([`free_vpc_cidr`]), so the
/// preflight's overlap checks pass for every valid request.
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
    let cidr = if cfg.get("AWS_VPC_ID").is_some() {
        Some(var("AWS_VPC_CIDR"))
            .filter(|s| s.parse::<ipnet::IpNet>().is_ok())
            .unwrap_or_else(|| "10.0.0.0/16".into())
    } else {
        free_vpc_cidr(&cfg)
    };
    (region, azs, cidr)
}

/// The networks a request for a new VPC uses (TKG's defaults where unset), plus Docker's
/// bridge network.
fn request_networks(cfg: &tkgops_domain::request::TkgConfig) -> Vec<ipnet::IpNet> {
    let vars: [(&str, &str); 9] = [
        ("AWS_VPC_CIDR", "10.0.0.0/16"),
        ("CLUSTER_CIDR", "100.96.0.0/11"),
        ("SERVICE_CIDR", "100.64.0.0/13"),
        ("AWS_PRIVATE_NODE_CIDR", "10.0.0.0/24"),
        ("AWS_PRIVATE_NODE_CIDR_1", "10.0.2.0/24"),
        ("AWS_PRIVATE_NODE_CIDR_2", "10.0.4.0/24"),
        ("AWS_PUBLIC_NODE_CIDR", "10.0.1.0/24"),
        ("AWS_PUBLIC_NODE_CIDR_1", "10.0.3.0/24"),
        ("AWS_PUBLIC_NODE_CIDR_2", "10.0.5.0/24"),
    ];
    let mut nets: Vec<ipnet::IpNet> = vars
        .iter()
        .flat_map(|(k, default)| {
            cfg.get(k)
                .unwrap_or(default)
                .split(',')
                .filter_map(|c| c.trim().parse::<ipnet::IpNet>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    nets.extend("172.17.0.0/16".parse::<ipnet::IpNet>());
    nets
}

/// A /16 for the sandbox's own VPC that overlaps none of a new-VPC request's networks: the
/// first free one of `10.0.0.0/16` … `10.255.0.0/16`, `172.16.0.0/16` … `172.31.0.0/16`,
/// `192.168.0.0/16` (`10.0.0.0/16` as a last resort, which only an unusable request takes).
pub fn free_vpc_cidr(cfg: &tkgops_domain::request::TkgConfig) -> String {
    let taken = request_networks(cfg);
    let overlaps =
        |a: &ipnet::IpNet, b: &ipnet::IpNet| a.contains(&b.network()) || b.contains(&a.network());
    (0..=255u8)
        .map(|i| format!("10.{i}.0.0/16"))
        .chain((16..=31u8).map(|i| format!("172.{i}.0.0/16")))
        .chain(std::iter::once("192.168.0.0/16".to_string()))
        .find(|c| {
            c.parse::<ipnet::IpNet>()
                .is_ok_and(|net| !taken.iter().any(|t| overlaps(t, &net)))
        })
        .unwrap_or_else(|| "10.0.0.0/16".into())
}

/// Tells the whole story (see the module docs). Returns whether everything succeeded: for a
/// valid request, the run succeeded; for an invalid one, the plan failed with findings on the
/// PR and nothing was merged (then the result is `false`, the expected non-zero exit).
/// SIGINT or SIGTERM stops it at any point; moto and the bot are stopped on every way out.
///
/// Errors: [`SandboxError`] when a part of the environment cannot be started, or when a
/// signal interrupted the story.
pub async fn run(args: SandboxArgs) -> Result<bool, SandboxError> {
    if args.story != Story::Create && args.request.is_some() {
        return Err(SandboxError(
            "--request is for the create story only: the day-2 stories change the example cluster"
                .into(),
        ));
    }
    let mut signals = Signals::new()?;
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
    let env = tokio::select! {
        env = Environment::start(args.workdir.as_deref(), &region, &az_refs, &cidr, &timings) => env?,
        sig = signals.recv() => return Err(SandboxError(format!("interrupted by {sig}"))),
    };
    if let Some(path) = &args.management_rbac {
        let applied = ctx!(
            std::fs::read_to_string(path),
            format!("reading {}", path.display())
        )
        .and_then(|yaml| env.apply_management_rbac(&yaml));
        if let Err(e) = applied {
            env.shutdown().await;
            return Err(e);
        }
    }
    let bot = tokio::select! {
        bot = env.start_bot_as(&timings, args.github_app) => bot,
        sig = signals.recv() => Err(SandboxError(format!("interrupted by {sig}"))),
    };
    let bot = match bot {
        Ok(bot) => bot,
        Err(e) => {
            env.shutdown().await;
            return Err(e);
        }
    };
    let told = async {
        match args.story {
            Story::Create => story(&env, &bot, request_text.as_deref(), &args).await,
            other => stories::day2(&env, &bot, other, &args).await,
        }
    };
    let outcome = tokio::select! {
        r = told => r,
        sig = signals.recv() => Err(SandboxError(format!("interrupted by {sig}"))),
    };
    if outcome.is_ok() && !args.exit {
        println!("==> sandbox is still serving (Ctrl-C to stop):");
        println!("    GitHub API   {}", env.github.api_url());
        println!("    git          {}", env.github.clone_url());
        println!("    TMC          {}", env.tmc.url());
        println!("    EC2 (moto)   {}", env.moto.endpoint_url());
        println!(
            "    mgmt cluster {}",
            admin_kubeconfig_path(&env.workdir).display()
        );
        signals.recv().await;
    }
    // No more deliveries to a bot that is stopping.
    env.github.set_webhook(None);
    bot.stop().await;
    env.shutdown().await;
    outcome
}

/// The story of [`run`] in a started environment with the bot running.
async fn story(
    env: &Environment,
    bot: &SandboxBot,
    request: Option<&str>,
    args: &SandboxArgs,
) -> Result<bool, SandboxError> {
    let (cluster, files) = request_files(request, &env.vpc);
    println!(
        "==> the bot is running (state in {}, webhooks at {})",
        bot.state_dir.display(),
        bot.webhook_url
    );
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

    if plan_state != "success" {
        println!("==> the plan has errors: nothing is merged or executed");
        return Ok(false);
    }
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
    println!("==> {}", env.webhook_summary());
    println!("==> {}", env.aws_actions_summary());
    println!("==> {}", env.kube_access_summary());
    println!("==> {}", env.github_routes_summary(bot));
    Ok(apply == "success")
}

/// `--serve`: starts moto, the emulators (with the example config repository) and the bot with
/// its HTTP server receiving the emulated GitHub's signed webhooks, tells no story, writes
/// [`Environment::env_json`] to `WORKDIR/sandbox-env.json`, prints exactly one line
/// `sandbox env: PATH` to stdout, and serves until SIGINT or SIGTERM; then stops the bot and
/// moto. (Everything else goes to stderr.)
///
/// Errors: [`SandboxError`] when a part cannot be started or the file cannot be written.
pub async fn serve(args: SandboxArgs) -> Result<(), SandboxError> {
    let mut signals = Signals::new()?;
    // The example's region and AZs; a VPC clear of TKG's defaults for a new VPC, so that both
    // a request for an existing VPC (mapped onto this one's IDs) and one for a new VPC pass.
    let (region, azs, _) = network_of(None);
    let cidr = free_vpc_cidr(&parse_request(""));
    let az_refs: Vec<&str> = azs.iter().map(String::as_str).collect();
    let timings = Timings::default();
    let env = tokio::select! {
        env = Environment::start(args.workdir.as_deref(), &region, &az_refs, &cidr, &timings) => env?,
        sig = signals.recv() => return Err(SandboxError(format!("interrupted by {sig}"))),
    };
    let bot = tokio::select! {
        bot = env.start_bot(&timings) => bot,
        sig = signals.recv() => Err(SandboxError(format!("interrupted by {sig}"))),
    };
    let bot = match bot {
        Ok(bot) => bot,
        Err(e) => {
            env.shutdown().await;
            return Err(e);
        }
    };
    let path = env.workdir.join(ENV_FILE);
    let written = serde_json::to_vec_pretty(&env.env_json(&bot))
        .map_err(|e| e.to_string())
        .and_then(|json| std::fs::write(&path, json).map_err(|e| e.to_string()));
    let outcome = match written {
        Ok(()) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "sandbox env: {}", path.display());
            let _ = out.flush();
            drop(out);
            let sig = signals.recv().await;
            tracing::info!(signal = sig, "stopping the sandbox");
            Ok(())
        }
        Err(e) => Err(SandboxError(format!("writing {}: {e}", path.display()))),
    };
    // No more deliveries to a bot that is stopping.
    env.github.set_webhook(None);
    bot.stop().await;
    env.shutdown().await;
    outcome
}
