//! `tkgops serve`: assembles the bot from its configuration file and runs it.

use std::process::ExitCode;
use std::sync::Arc;

use tracing::info;

use crate::config::{BotConfig, ConfigError};
use crate::executors::Executors;
use crate::gitops::{ConfigRepo, GitError};
use crate::journal::BotJournal;
use crate::reconcile::publish::CommentPublisher;
use crate::redact::RedactingGitHub;
use crate::{Bot, BotParts};
use tkgops_domain::workflow::plan::load_repo_config;
use tkgops_domain::workflow::Catalog;
use tkgops_engine::store::{FencingHandle, SledStore, Store};
use tkgops_engine::{Engine, StepExecutor};
use tkgops_github::{GitHub, GitHubAuth, OctocrabClient, RetrySettings};

/// Errors assembling the bot.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid or a credential variable is unset.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// GitHub could not be reached or refused the token.
    #[error("github: {0}")]
    GitHub(String),
    /// The git mirror failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The journal could not be opened (another bot may hold its lock).
    #[error("store: {0}")]
    Store(String),
    /// The workflow catalog is invalid.
    #[error("catalog: {0}")]
    Catalog(String),
    /// The async runtime or the signal handlers could not be set up (`what` was being done).
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
}

/// Builds a bot from `cfg`: GitHub client, git mirror, sled database (the engine's runs and
/// the bot's journal, whose state of an earlier version is moved in on the way), executors,
/// engine; loads the management clusters from the default branch and resumes every unfinished
/// run.
///
/// Errors: [`ServeError`] for each part that cannot be set up.
pub async fn build(cfg: &BotConfig) -> Result<Bot, ServeError> {
    build_with_auth(cfg, cfg.github_auth()?, cfg.tmc_token()).await
}

/// Credentials of the bot, read from the environment variables the configuration names.
/// Debug output never shows them.
#[derive(Clone)]
pub struct Credentials {
    /// GitHub token (App installation token or PAT).
    pub github_token: String,
    /// TMC (CSP) API token, if TMC attach is used.
    pub tmc_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// As [`build`], with the credentials given instead of read from the environment.
///
/// Errors: [`ServeError`] for each part that cannot be set up.
pub async fn build_with(cfg: &BotConfig, creds: Credentials) -> Result<Bot, ServeError> {
    build_with_auth(cfg, GitHubAuth::Token(creds.github_token), creds.tmc_token).await
}

/// As [`build`], authenticating to GitHub with `auth` (a token or a GitHub App) and to TMC
/// with `tmc_token`. Every credential is registered with [`crate::redact`] first.
///
/// Errors: [`ServeError`] for each part that cannot be set up.
pub async fn build_with_auth(
    cfg: &BotConfig,
    auth: GitHubAuth,
    tmc_token: Option<String>,
) -> Result<Bot, ServeError> {
    build_fenced_with_auth(cfg, auth, tmc_token, None).await
}

/// As [`build`], for the holder of the leader-election Lease `held`: the journal is fenced
/// with its token (the Lease's transition count at the acquisition, [`SledStore::fence`])
/// before anything is written to it, and its fencing handle is handed to `held` at once, so
/// a Lease lost while the bot is still being built refuses the journal's writes too.
///
/// Errors: [`ServeError`] for each part that cannot be set up; [`ServeError::Store`] when the
/// journal was fenced by a newer holder already.
pub async fn build_fenced(
    cfg: &BotConfig,
    held: &crate::lease::HeldLease,
) -> Result<Bot, ServeError> {
    build_fenced_wrapped(cfg, held, None).await
}

/// [`build_fenced`], the step executor wrapped by `wrap` when given.
async fn build_fenced_wrapped(
    cfg: &BotConfig,
    held: &crate::lease::HeldLease,
    wrap: Option<&ExecutorWrapper>,
) -> Result<Bot, ServeError> {
    let fence = Fence {
        token: held.token(),
        on_fenced: &|h| held.set_fencing(h),
    };
    build_bot(cfg, cfg.github_auth()?, cfg.tmc_token(), Some(fence), wrap).await
}

/// How [`build_fenced_with_auth`] fences the journal.
pub struct Fence<'a> {
    /// The fencing token ([`SledStore::fence`]).
    pub token: u64,
    /// Called with the journal's fencing handle right after the journal was fenced, before
    /// anything else is written to it.
    pub on_fenced: &'a (dyn Fn(FencingHandle) + Send + Sync),
}

/// As [`build_with_auth`], fencing the journal with `fence` when given (see
/// [`build_fenced`]).
///
/// Errors: [`ServeError`] for each part that cannot be set up.
pub async fn build_fenced_with_auth(
    cfg: &BotConfig,
    auth: GitHubAuth,
    tmc_token: Option<String>,
    fence: Option<Fence<'_>>,
) -> Result<Bot, ServeError> {
    build_bot(cfg, auth, tmc_token, fence, None).await
}

/// [`build_fenced_with_auth`], the step executor wrapped by `wrap` when given
/// ([`ExecutorWrapper`]).
async fn build_bot(
    cfg: &BotConfig,
    auth: GitHubAuth,
    tmc_token: Option<String>,
    fence: Option<Fence<'_>>,
    wrap: Option<&ExecutorWrapper>,
) -> Result<Bot, ServeError> {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let github = github_client(cfg, auth, tmc_token.as_deref(), &metrics)?;
    let info = github
        .repository()
        .await
        .map_err(|e| ServeError::GitHub(e.to_string()))?;
    let clone_url = cfg
        .github
        .clone_url
        .clone()
        .unwrap_or(info.clone_url.clone());
    let git_token = if clone_url.starts_with("https://") {
        github
            .git_token()
            .await
            .map_err(|e| ServeError::GitHub(e.to_string()))?
    } else {
        None
    };
    let state_dir = cfg.state_dir.clone();
    // git2 and sled open files and may wait for disk: off the async workers.
    let (git, store) = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&state_dir).map_err(|e| ServeError::Store(e.to_string()))?;
        // The journal first: sled holds it exclusively, so from here this process is the only
        // writer of the state directory, and the mirror's stale lock files (a write cut by a
        // kill) can be removed.
        let store = SledStore::open(&state_dir.join("journal"))
            .map_err(|e| ServeError::Store(e.to_string()))?;
        let git = ConfigRepo::open(&state_dir.join("config.git"), &clone_url, git_token)?;
        for lock in git.remove_stale_locks()? {
            tracing::warn!(%lock, "removed a stale lock file from the git mirror (a write cut short by a kill)");
        }
        Ok::<_, ServeError>((git, store))
    })
    .await
    .map_err(|e| ServeError::Store(e.to_string()))??;
    let store = Arc::new(store);
    if let Some(fence) = fence {
        let before = store
            .fence(fence.token)
            .await
            .map_err(|e| ServeError::Store(e.to_string()))?;
        (fence.on_fenced)(store.fencing());
        info!(
            token = fence.token,
            before, "journal fenced with the lease's token"
        );
    }
    let (journal, moved) = BotJournal::open(store.clone())
        .await
        .map_err(|e| ServeError::Store(e.to_string()))?;
    if moved > 0 {
        info!(
            keys = moved,
            "moved the journal of an earlier version into the bot's journal tree"
        );
    }
    prune_runs(&store, cfg.run_retention).await;
    spawn_daily_prune(Arc::downgrade(&store), cfg.run_retention);
    let store: Arc<dyn Store> = store;
    let catalog = Arc::new(
        match &cfg.catalog_dir {
            Some(dir) => crate::local::catalog_from_dir(dir).map_err(|e| e.to_string()),
            None => Catalog::builtin().map_err(|e| e.to_string()),
        }
        .map_err(ServeError::Catalog)?,
    );

    let executors = Executors::new(cfg.kube_poll_interval);
    let g = git.clone();
    let branch = info.default_branch.clone();
    let tip = tokio::task::spawn_blocking(move || g.fetch_branch(&branch))
        .await
        .map_err(|e| ServeError::Store(e.to_string()))??;
    let g = git.clone();
    let repo_config =
        tokio::task::spawn_blocking(move || g.tree(&tip).map(|t| load_repo_config(&t).0))
            .await
            .map_err(|e| ServeError::Store(e.to_string()))??;
    if let Some(rc) = &repo_config {
        executors.update_management_clusters(rc);
    }
    let publisher = CommentPublisher::start(
        github.clone(),
        journal.clone(),
        catalog.clone(),
        cfg.comment_min_interval,
    );
    let table = match cfg.tmc_token_file_source() {
        Some(file) => executors.table_with(
            cfg.aws_endpoint_url.clone(),
            Arc::new(move || {
                file.accepted()
                    .into_iter()
                    .next()
                    .map(tkgops_providers::tmc::SecretToken::new)
            }),
            cfg.tmc_poll_interval,
        ),
        None => executors.table(
            cfg.aws_endpoint_url.clone(),
            tmc_token,
            cfg.tmc_poll_interval,
        ),
    };
    let engine = Engine::new(
        store.clone(),
        match wrap {
            Some(wrap) => wrap(table),
            None => table,
        },
        Arc::new(crate::metrics::MetricsObserver {
            metrics: metrics.clone(),
            inner: Arc::new(publisher.clone()),
        }),
    );
    // A run that waited behind another run of its cluster is planned again when its turn comes.
    engine.set_start_gate(Arc::new(crate::replan::Replanner {
        planner: crate::Planner {
            git: git.clone(),
            catalog: catalog.clone(),
            executable: crate::executors::executable_kinds(),
            repository: info.full_name.clone(),
        },
        journal: journal.clone(),
    }));
    let resumed = engine
        .resume_all()
        .await
        .map_err(|e| ServeError::Store(e.to_string()))?;
    info!(repo = %info.full_name, default_branch = %info.default_branch, resumed, "tkgops bot ready");
    let bot = Bot::new(BotParts {
        github,
        git,
        journal,
        engine,
        catalog,
        repo: info,
        executors,
        publisher,
        pinned_policy: cfg.trusted_policy_commit.clone(),
        metrics,
    });
    bot.set_drift_interval(Some(cfg.drift_scan_interval));
    Ok(bot)
}

/// Wraps the engine's step executor (the bot's [`crate::executors::StepTable`]) before the
/// engine gets it: how a test-only binary runs the production `serve` path with its own
/// executor around every step attempt (the sandbox's `tkgops-crashpoint`, README "Chaos
/// harness"). The `tkgops` binary passes none.
pub type ExecutorWrapper =
    Arc<dyn Fn(Arc<dyn StepExecutor>) -> Arc<dyn StepExecutor> + Send + Sync>;

/// `tkgops serve --config <config>`: loads the bot configuration file `config`, builds the bot
/// (its step executor wrapped by `wrap` when given), serves webhooks, the admin endpoint and
/// the poll loop until SIGTERM or Ctrl-C, then stops within `shutdownGrace`; with leader
/// election, as a standby until it holds the Lease. Blocks the calling thread on its own
/// Tokio runtime. Returns exit status 0 after a graceful stop, [`EXIT_LEASE_LOST`] when the
/// Lease was lost.
///
/// Errors: [`ServeError`] when the configuration, the runtime, the signal handlers, leader
/// election or a part of the bot cannot be set up.
pub fn serve_command(
    config: &std::path::Path,
    wrap: Option<ExecutorWrapper>,
) -> Result<ExitCode, ServeError> {
    let cfg = BotConfig::load(config)?;
    let rt = tokio::runtime::Runtime::new().map_err(io("starting the async runtime"))?;
    if cfg.leader_election.enabled {
        let code = rt.block_on(serve_elected(&cfg, wrap.as_ref()));
        // A lost lease must not wait for blocking tasks: everything written is flushed.
        rt.shutdown_timeout(std::time::Duration::from_millis(200));
        return code;
    }
    let served = rt.block_on(async {
        // Listening from here on: a SIGTERM during the start is not lost (nor fatal).
        let signal = shutdown_signal()?;
        let bot = build_bot(
            &cfg,
            cfg.github_auth()?,
            cfg.tmc_token(),
            None,
            wrap.as_ref(),
        )
        .await?;
        let admin = start_admin(&cfg, &bot).await?;
        let http = start_webhooks(&cfg, &bot).await?;
        bot.run(cfg.poll_interval, cfg.shutdown_grace, async {
            let signal = signal.await;
            info!(
                signal,
                grace = %humantime::format_duration(cfg.shutdown_grace),
                "stopping: no new work; the steps in flight get the shutdown grace"
            );
        })
        .await;
        http.stop().await;
        admin.stop().await;
        // Every journal write was flushed when it returned; the bot (and its sled
        // handle) is dropped here.
        drop(bot);
        Ok::<_, ServeError>(())
    });
    // A blocking task still running (a git fetch, a file read) holds nothing the
    // next start needs: do not let it delay the exit past the grace.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    served?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A [`ServeError::Io`] doing `what`.
fn io(what: &'static str) -> impl Fn(std::io::Error) -> ServeError {
    move |source| ServeError::Io { what, source }
}

/// A server of a running bot (admin endpoint, webhooks), stopped with [`Listener::stop`];
/// nothing when its address is not configured.
struct Listener(
    Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
);

impl Listener {
    /// Asks the server to stop and waits until it did.
    async fn stop(self) {
        if let Some((stop, task)) = self.0 {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// Starts the read-only admin endpoint on `adminListen` when set.
async fn start_admin(cfg: &BotConfig, bot: &Bot) -> Result<Listener, ServeError> {
    let Some(listen) = &cfg.admin_listen else {
        return Ok(Listener(None));
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_, task) = start_admin_http(bot, listen, async {
        let _ = stopped.await;
    })
    .await?;
    Ok(Listener(Some((stop, task))))
}

/// Starts the webhook, health and metrics server ([`start_http_with`]) on `listen` when set.
async fn start_webhooks(cfg: &BotConfig, bot: &Bot) -> Result<Listener, ServeError> {
    let Some(listen) = &cfg.listen else {
        return Ok(Listener(None));
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_, task) = start_http_with(bot, listen, cfg.webhook_secret_source(), async {
        let _ = stopped.await;
    })
    .await?;
    Ok(Listener(Some((stop, task))))
}

/// Exit status of `tkgops serve` when it lost the leader-election Lease: the pod restarts and
/// waits as a standby.
pub const EXIT_LEASE_LOST: u8 = 3;

/// `tkgops serve` with leader election: a standby (serving `/healthz`, `/readyz` 503) until it
/// holds the Lease, then the bot on a journal fenced with the Lease's token. Exits 0 on
/// SIGTERM or Ctrl-C (releasing the Lease), [`EXIT_LEASE_LOST`] as soon as the Lease is lost.
async fn serve_elected(
    cfg: &BotConfig,
    wrap: Option<&ExecutorWrapper>,
) -> Result<ExitCode, ServeError> {
    use crate::lease::{HeldLease, LeaderElector};
    let mut elector = LeaderElector::from_settings(&cfg.leader_election).await?;
    let lease = elector.lease();
    tracing::info!(%lease, identity = elector.identity(), "standby: taking part in leader election");
    let shutdown = shutdown_signal()?;
    tokio::pin!(shutdown);

    let (stop_standby, standby_stopped) = tokio::sync::oneshot::channel::<()>();
    let standby = match &cfg.listen {
        Some(listen) => Some(
            start_standby_http(listen, &lease, async {
                let _ = standby_stopped.await;
            })
            .await?,
        ),
        None => None,
    };
    let acquired = tokio::select! {
        l = elector.acquire(|_| {}) => Some(l?),
        _ = &mut shutdown => None,
    };
    let _ = stop_standby.send(());
    if let Some(h) = standby {
        let _ = h.await;
    }
    let Some(leadership) = acquired else {
        return Ok(ExitCode::SUCCESS);
    };
    let held = HeldLease::spawn(elector, leadership);
    let lost_exit = |why: crate::lease::Lost| {
        tracing::error!(%lease, reason = %why, "exiting: the lease was lost");
        Ok(ExitCode::from(EXIT_LEASE_LOST))
    };

    let bot = tokio::select! {
        b = build_fenced_wrapped(cfg, &held, wrap) => b?,
        why = held.lost() => return lost_exit(why),
    };
    let admin = start_admin(cfg, &bot).await?;
    let http = start_webhooks(cfg, &bot).await?;
    {
        let run = bot.run(cfg.poll_interval, cfg.shutdown_grace, async {
            tokio::select! {
                signal = &mut shutdown => tracing::info!(
                    signal,
                    grace = %humantime::format_duration(cfg.shutdown_grace),
                    "stopping: no new work; the steps in flight get the shutdown grace"
                ),
                _ = held.lost() => {}
            }
        });
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => {}
            // Lost: the journal refuses writes already; give the runs one retry period to
            // stop at a boundary, then exit without waiting for them.
            _ = async {
                held.lost().await;
                tokio::time::sleep(cfg.leader_election.retry_period).await;
            } => {}
        }
    }
    if let Some(why) = held.lost_now() {
        return lost_exit(why);
    }
    http.stop().await;
    admin.stop().await;
    held.release().await;
    Ok(ExitCode::SUCCESS)
}

/// Listens for SIGTERM and SIGINT (Ctrl-C) from now on (a signal that arrives before the
/// future is polled is not lost); the future resolves at the first one with its name.
///
/// Errors: [`ServeError::Io`] when the signal handlers cannot be installed.
fn shutdown_signal() -> Result<impl std::future::Future<Output = &'static str>, ServeError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(io("listening for SIGTERM"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(io("listening for SIGINT"))?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

/// Deletes the finished runs older than `retention` ([`SledStore::prune`]), logging what it
/// did; a failure is logged and retried at the next prune (the runs stay, nothing else
/// depends on it).
async fn prune_runs(store: &SledStore, retention: std::time::Duration) {
    match store.prune(chrono::Utc::now(), retention).await {
        Ok(r) => {
            if !r.removed.is_empty() || r.orphan_steps > 0 {
                info!(
                    removed = r.removed.len(),
                    kept_latest_succeeded = r.kept.len(),
                    orphan_steps = r.orphan_steps,
                    retention = %humantime::format_duration(retention),
                    "pruned finished runs older than the retention"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "pruning finished runs failed; tried again in a day"),
    }
}

/// How often finished runs are pruned while the bot runs.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Prunes every [`PRUNE_EVERY`] while the store is alive (the task holds it weakly, so it
/// never keeps the journal open after the bot is dropped).
fn spawn_daily_prune(store: std::sync::Weak<SledStore>, retention: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else {
                return;
            };
            prune_runs(&store, retention).await;
        }
    });
}

/// Starts the read-only admin HTTP server ([`crate::history::admin_router`]: the run
/// history) on `listen` (`adminListen`, by default `127.0.0.1:8081`), apart from the webhook
/// listener. Returns the bound address and the server task, which stops when `shutdown`
/// resolves.
///
/// Errors: [`ServeError::Config`] when `listen` is not an address or cannot be bound.
pub async fn start_admin_http(
    bot: &Bot,
    listen: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let bind_error = |message: String| {
        ServeError::Config(ConfigError::Invalid {
            path: "adminListen".into(),
            message,
        })
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| bind_error(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| bind_error(e.to_string()))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the admin endpoint (no authentication) listens beyond this host");
    }
    let app = crate::history::admin_router(bot.store());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "the admin HTTP server stopped");
        }
    });
    info!(%addr, "serving the read-only admin endpoint /admin/runs");
    Ok((addr, task))
}

/// The bot's GitHub client for `cfg`, authenticated with `auth`, behind the redaction
/// registry; every credential (`auth`'s secret, `tmc_token`, the AWS environment) is
/// registered with [`crate::redact`] first; `metrics` reads the client's API usage.
///
/// Errors: [`ServeError::GitHub`] when the client cannot be built.
fn github_client(
    cfg: &BotConfig,
    auth: GitHubAuth,
    tmc_token: Option<&str>,
    metrics: &crate::metrics::Metrics,
) -> Result<Arc<dyn GitHub>, ServeError> {
    tkgops_providers::install_crypto_provider();
    match &auth {
        GitHubAuth::Token(t) => crate::redact::register(t),
        GitHubAuth::App { private_key, .. } => {
            if let Some(pem) = private_key.current() {
                crate::redact::register(&pem);
            }
        }
    }
    if let Some(t) = tmc_token {
        crate::redact::register(t);
    }
    crate::redact::register_aws_environment();
    let client = OctocrabClient::with_auth(
        &cfg.github.api_url,
        auth,
        &cfg.github.owner,
        &cfg.github.repo,
        RetrySettings::default(),
    )
    .map_err(|e| ServeError::GitHub(e.to_string()))?;
    metrics.set_github_usage(client.usage());
    Ok(Arc::new(RedactingGitHub::new(Arc::new(client))))
}

/// Starts the bot's HTTP server ([`crate::webhook::router`]) on `listen` for `bot`, registering
/// `webhook_secret` as a secret (never logged). Returns the bound address and the server task;
/// the server stops when `shutdown` resolves.
///
/// Errors: [`ServeError::Config`] when `listen` is not an address or cannot be bound.
pub async fn start_http(
    bot: &Bot,
    listen: &str,
    webhook_secret: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    start_http_with(
        bot,
        listen,
        crate::secrets::RotatingSecret::fixed(webhook_secret),
        shutdown,
    )
    .await
}

/// As [`start_http`], with the webhook secret read from `webhook_secret` at each delivery
/// (a secret file rotates without a restart: [`crate::secrets::RotatingSecret`]).
///
/// Errors: as [`start_http`].
pub async fn start_http_with(
    bot: &Bot,
    listen: &str,
    webhook_secret: crate::secrets::RotatingSecret,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    if webhook_secret.accepted().is_empty() {
        tracing::warn!(
            "no webhook secret configured: every webhook delivery is refused; polling only"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        ServeError::Config(ConfigError::Invalid {
            path: "listen".into(),
            message: format!("cannot listen on {listen}: {e}"),
        })
    })?;
    let addr = listener.local_addr().map_err(|e| {
        ServeError::Config(ConfigError::Invalid {
            path: "listen".into(),
            message: e.to_string(),
        })
    })?;
    let app = crate::webhook::router(Arc::new(bot.webhook_state_with(webhook_secret)));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "the HTTP server stopped");
        }
    });
    info!(%addr, "serving /webhooks/github, /healthz, /readyz and /metrics");
    Ok((addr, task))
}

/// Starts the HTTP server of a standby replica on `listen`: `GET /healthz` answers 200 `ok`,
/// `GET /readyz` 503 `standby: …` naming `lease` (so a Service sends webhooks to the holder
/// only), `GET /metrics` an empty exposition, anything else 503. Returns the server task; it
/// stops when `shutdown` resolves.
///
/// Errors: [`ServeError::Config`] when `listen` is not an address or cannot be bound.
pub async fn start_standby_http(
    listen: &str,
    lease: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        ServeError::Config(ConfigError::Invalid {
            path: "listen".into(),
            message: format!("cannot listen on {listen}: {e}"),
        })
    })?;
    let standby = format!("standby: waiting for the lease {lease}\n");
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // An empty exposition: the standby is a healthy scrape target with nothing to report
        // (the holder of the lease reports the bot's metrics).
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        crate::metrics::CONTENT_TYPE,
                    )],
                    "# EOF\n",
                )
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let standby = standby.clone();
                async move { (StatusCode::SERVICE_UNAVAILABLE, standby) }
            }),
        )
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "standby: this replica does not hold the lease\n",
            )
        });
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "the standby HTTP server stopped");
        }
    }))
}
