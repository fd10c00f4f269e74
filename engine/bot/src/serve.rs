//! `tkgops serve`: assembles the bot from its configuration file and runs it.

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
use tkgops_engine::Engine;
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
    let fence = Fence {
        token: held.token(),
        on_fenced: &|h| held.set_fencing(h),
    };
    build_fenced_with_auth(cfg, cfg.github_auth()?, cfg.tmc_token(), Some(fence)).await
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
        let git = ConfigRepo::open(&state_dir.join("config.git"), &clone_url, git_token)?;
        let store = SledStore::open(&state_dir.join("journal"))
            .map_err(|e| ServeError::Store(e.to_string()))?;
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
    let engine = Engine::new(
        store.clone(),
        match cfg.tmc_token_file_source() {
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
