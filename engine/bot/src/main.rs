//! `tkgops`: the command-line entry point (validate, plan, serve). The local story is the
//! separate `tkgops-sandbox` binary, so no emulator is part of this one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use tkgops::gitops::ConfigRepo;
use tkgops::{serve, BotConfig};
use tkgops_domain::workflow::{markdown, plan, Catalog, PlanInput};

/// mimalloc instead of glibc malloc: with the bot's worker and blocking threads, glibc's
/// per-thread arenas kept about twice the live heap resident during a 1,000-cluster fleet
/// upgrade (226 MiB resident for 110 MiB in use; README "Benchmarks").
///
/// Built with mimalloc's `no_thp` feature (workspace `Cargo.toml`): mimalloc 3 otherwise asks
/// for transparent huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), so every 2 MiB range
/// it touched became resident whole; at 1,000 clusters that was 260–295 MiB resident, 207 MiB
/// without. With the system's THP setting `always`, `MIMALLOC_ALLOW_THP=0` does the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tkgops: Tanzu Kubernetes Grid cluster operations through GitOps pull requests.
#[derive(Parser)]
#[command(name = "tkgops", version, about)]
struct Cli {
    /// Format of the log lines on standard error: `text`, or `json` (one object per line,
    /// with the fields of the run, step, pull request or merge they are about). Overrides
    /// TKGOPS_LOG_FORMAT.
    #[arg(
        long,
        global = true,
        env = "TKGOPS_LOG_FORMAT",
        value_enum,
        default_value_t = tkgops::logs::LogFormat::Text
    )]
    log_format: tkgops::logs::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check TKG cluster configuration files, cluster directories or whole config repositories
    /// against the reference-design rules. Exit 0: no errors; 1: errors; 2: unreadable input.
    Validate {
        /// Files or directories to check.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format: `text` (one line per finding), `json` (findings and a summary) or
        /// `sarif` (SARIF 2.1.0 for GitHub code scanning). The exit code is the same for all.
        #[arg(long, value_enum, default_value_t = tkgops::validate_format::Format::Text)]
        format: tkgops::validate_format::Format,
    },
    /// Print the plan (the PR comment Markdown) for the change between two commits of a local
    /// config repository. Reads no credentials. Exit 1 when the plan has errors.
    Plan {
        /// The config repository (a git work tree or bare repository).
        #[arg(long)]
        repo: PathBuf,
        /// The commit compared against (branch, tag or SHA); its tkgops.yaml is the policy.
        #[arg(long)]
        base: String,
        /// The commit to plan.
        #[arg(long)]
        head: String,
        /// The config repository's GitHub name (`owner/name`), part of the ownership label of
        /// the Clusters in the plan.
        #[arg(long, default_value = "local/config-repository")]
        repository: String,
        /// Also judge each planned Cluster on a real management cluster: the management-cluster
        /// preflight (TKG release, ClusterClass, TKR, identity) and a server-side dry run
        /// (`dryRun=All`) of the manifests, so CAPI's validation and the TKR resolver answer.
        /// Nothing is written. Needs --kubeconfig.
        #[arg(long, requires = "kubeconfig")]
        server_dry_run: bool,
        /// Kubeconfig of the management cluster for --server-dry-run (used for every
        /// management cluster the plan names).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Run the bot: poll GitHub, plan pull requests, run merged changes.
    Serve {
        /// The bot configuration file (YAML; see README "Running against GitHub").
        #[arg(long)]
        config: PathBuf,
    },
    /// The run history: `list` the runs, `show` one with its steps and attempts. Reads a
    /// journal no bot has open (--state-dir) or a running bot's admin endpoint (--url).
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// The journal itself.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
}

/// Where `tkgops runs` reads from.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct HistorySource {
    /// The bot's stateDir, its journal not open by a running bot.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// A running bot's admin endpoint (its adminListen), e.g. http://127.0.0.1:8081.
    #[arg(long)]
    url: Option<String>,
}

/// Output format of `tkgops runs`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    /// A table (list) or text (show).
    Text,
    /// JSON: the journal's run records.
    Json,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// The runs, oldest first: id, cluster, workflow, state, steps done, origin (the pull
    /// request), commit, creation time, duration.
    List {
        #[command(flatten)]
        source: HistorySource,
        /// Only the runs of this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only the runs in this state: queued, running, succeeded, failed, cancelled.
        #[arg(long, value_parser = parse_run_state)]
        state: Option<tkgops_engine::RunState>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// One run: its steps, attempts, errors, times, origin and commit.
    Show {
        /// The run's id.
        run_id: String,
        #[command(flatten)]
        source: HistorySource,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Write every run as JSON lines (one run per line, every field), for backup and audit.
    /// Runs hold no secrets. Reads a journal no bot has open.
    Export {
        /// The bot's stateDir.
        #[arg(long)]
        state_dir: PathBuf,
        /// The file to write (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

fn parse_run_state(s: &str) -> Result<tkgops_engine::RunState, String> {
    tkgops::history::parse_state(s).ok_or_else(|| {
        format!("unknown state {s:?}: queued, running, succeeded, failed or cancelled")
    })
}

fn main() -> ExitCode {
    tkgops_providers::install_crypto_provider();
    let cli = Cli::parse();
    tkgops::logs::init(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths, format } => {
            let report = tkgops_domain::request::validate_paths(&tkgops::local::LocalFiles, &paths);
            let cwd = std::env::current_dir().unwrap_or_default();
            let out =
                tkgops::validate_format::render(&report, format, env!("CARGO_PKG_VERSION"), &cwd);
            print!("{out}");
            Ok(ExitCode::from(report.exit_code() as u8))
        }
        Command::Plan {
            repo,
            base,
            head,
            repository,
            server_dry_run,
            kubeconfig,
        } => {
            let git = ConfigRepo::open_local(&repo)
                .with_context(|| format!("opening {}", repo.display()))?;
            let base_sha = git.resolve(&base)?;
            let head_sha = git.resolve(&head)?;
            let merge_base = git
                .merge_base(&base_sha, &head_sha)
                .unwrap_or_else(|_| base_sha.clone());
            let changed = git.changed_paths(&merge_base, &head_sha)?;
            let catalog = Catalog::builtin()?;
            let (bt, ht, st) = (
                git.tree(&merge_base)?,
                git.tree(&head_sha)?,
                git.tree(&base_sha)?,
            );
            let p = plan(&PlanInput {
                base: &bt,
                head: &ht,
                settings: &st,
                base_sha: &merge_base,
                head_sha: &head_sha,
                changed_paths: &changed,
                catalog: &catalog,
                executable: &tkgops::executors::executable_kinds(),
                repository: &repository,
                history: Default::default(),
            });
            let md = markdown::render_plan(&p, &catalog, true).map_err(anyhow::Error::msg)?;
            println!("{md}");
            if let (true, Some(kc)) = (server_dry_run, kubeconfig) {
                let rt = tokio::runtime::Runtime::new()?;
                let refused = rt.block_on(server_dry_run_plan(&p, &kc));
                if refused > 0 {
                    return Ok(ExitCode::from(1));
                }
            }
            Ok(if p.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Serve { config } => {
            let cfg = BotConfig::load(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            if cfg.leader_election.enabled {
                let code = rt.block_on(serve_elected(&cfg));
                // A lost lease must not wait for blocking tasks: everything written is flushed.
                rt.shutdown_timeout(std::time::Duration::from_millis(200));
                return code;
            }
            let served = rt.block_on(async {
                // Listening from here on: a SIGTERM during the start is not lost (nor fatal).
                let signal = shutdown_signal()?;
                let bot = serve::build(&cfg).await?;
                let admin = start_admin(&cfg, &bot).await?;
                let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
                let http = match &cfg.listen {
                    Some(listen) => Some(
                        serve::start_http_with(&bot, listen, cfg.webhook_secret_source(), async {
                            let _ = http_stopped.await;
                        })
                        .await?
                        .1,
                    ),
                    None => None,
                };
                bot.run(cfg.poll_interval, cfg.shutdown_grace, async {
                    let signal = signal.await;
                    tracing::info!(
                        signal,
                        grace = %humantime::format_duration(cfg.shutdown_grace),
                        "stopping: no new work; the steps in flight get the shutdown grace"
                    );
                })
                .await;
                let _ = stop_http.send(());
                if let Some(h) = http {
                    let _ = h.await;
                }
                admin.stop().await;
                // Every journal write was flushed when it returned; the bot (and its sled
                // handle) is dropped here.
                drop(bot);
                anyhow::Ok(())
            });
            // A blocking task still running (a git fetch, a file read) holds nothing the
            // next start needs: do not let it delay the exit past the grace.
            rt.shutdown_timeout(std::time::Duration::from_millis(500));
            served?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { command } => history_command(command),
        Command::Journal {
            command: JournalCommand::Export { state_dir, output },
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let store = tkgops::history::open_closed_journal(&state_dir)?;
            let count = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(file);
                    rt.block_on(tkgops::history::export(&store, &mut out))?
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    rt.block_on(tkgops::history::export(&store, &mut out))?
                }
            };
            eprintln!("exported {count} runs");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tkgops runs list|show`. Exit 0; 1 when `show` finds no such run.
fn history_command(command: RunsCommand) -> anyhow::Result<ExitCode> {
    use tkgops::history::{render_list, render_show, HistoryError, Source};
    let source = |s: HistorySource| -> anyhow::Result<Source> {
        Ok(match (s.state_dir, s.url) {
            (_, Some(url)) => Source::Url(url),
            (Some(dir), None) => Source::Journal(std::sync::Arc::new(
                tkgops::history::open_closed_journal(&dir)?,
            )),
            (None, None) => anyhow::bail!("--state-dir or --url is required"),
        })
    };
    let rt = tokio::runtime::Runtime::new()?;
    match command {
        RunsCommand::List {
            source: s,
            cluster,
            state,
            output,
        } => {
            let filter = tkgops_engine::store::RunFilter { cluster, state };
            let runs = rt.block_on(source(s)?.list(&filter))?;
            match output {
                Output::Text => print!("{}", render_list(&runs)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Show {
            run_id,
            source: s,
            output,
        } => match rt.block_on(source(s)?.get(&run_id)) {
            Ok(run) => {
                match output {
                    Output::Text => print!("{}", render_show(&run)),
                    Output::Json => println!("{}", serde_json::to_string_pretty(&run)?),
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(HistoryError::NotFound(id)) => {
                eprintln!("error: no run {id}");
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// The admin server of a running bot, stopped with [`Admin::stop`].
struct Admin(
    Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
);

impl Admin {
    async fn stop(self) {
        if let Some((stop, task)) = self.0 {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// Starts the read-only admin endpoint on `adminListen` when set.
async fn start_admin(cfg: &BotConfig, bot: &tkgops::Bot) -> anyhow::Result<Admin> {
    let Some(listen) = &cfg.admin_listen else {
        return Ok(Admin(None));
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_, task) = serve::start_admin_http(bot, listen, async {
        let _ = stopped.await;
    })
    .await?;
    Ok(Admin(Some((stop, task))))
}

/// Exit status of `tkgops serve` when it lost the leader-election Lease: the pod restarts and
/// waits as a standby.
const EXIT_LEASE_LOST: u8 = 3;

/// `tkgops serve` with leader election: a standby (serving `/healthz`, `/readyz` 503) until it
/// holds the Lease, then the bot on a journal fenced with the Lease's token. Exits 0 on
/// SIGTERM or Ctrl-C (releasing the Lease), [`EXIT_LEASE_LOST`] as soon as the Lease is lost.
async fn serve_elected(cfg: &BotConfig) -> anyhow::Result<ExitCode> {
    use tkgops::lease::{HeldLease, LeaderElector};
    let mut elector = LeaderElector::from_settings(&cfg.leader_election).await?;
    let lease = elector.lease();
    tracing::info!(%lease, identity = elector.identity(), "standby: taking part in leader election");
    let shutdown = shutdown_signal()?;
    tokio::pin!(shutdown);

    let (stop_standby, standby_stopped) = tokio::sync::oneshot::channel::<()>();
    let standby = match &cfg.listen {
        Some(listen) => Some(
            serve::start_standby_http(listen, &lease, async {
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
    let lost_exit = |why: tkgops::lease::Lost| {
        tracing::error!(%lease, reason = %why, "exiting: the lease was lost");
        Ok(ExitCode::from(EXIT_LEASE_LOST))
    };

    let bot = tokio::select! {
        b = serve::build_fenced(cfg, &held) => b?,
        why = held.lost() => return lost_exit(why),
    };
    let admin = start_admin(cfg, &bot).await?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = match &cfg.listen {
        Some(listen) => Some(
            serve::start_http_with(&bot, listen, cfg.webhook_secret_source(), async {
                let _ = http_stopped.await;
            })
            .await?
            .1,
        ),
        None => None,
    };
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
    let _ = stop_http.send(());
    if let Some(h) = http {
        let _ = h.await;
    }
    admin.stop().await;
    held.release().await;
    Ok(ExitCode::SUCCESS)
}

/// Listens for SIGTERM and SIGINT (Ctrl-C) from now on (a signal that arrives before the
/// future is polled is not lost); the future resolves at the first one with its name.
///
/// Errors: when the signal handlers cannot be installed.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
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

/// `tkgops plan --server-dry-run`: for every planned cluster, the `kube.preflight` checks and a
/// server-side dry run of its `kube.apply` manifests against the management cluster of
/// `kubeconfig`. Prints one line per check; returns how many were refused.
async fn server_dry_run_plan(
    p: &tkgops_domain::workflow::Plan,
    kubeconfig: &std::path::Path,
) -> usize {
    use tkgops_domain::step::StepInputs;
    let source =
        tkgops_providers::KubeconfigSource::File(kubeconfig.to_string_lossy().into_owned());
    let mut names = std::collections::BTreeMap::new();
    for c in &p.clusters {
        for s in &c.steps {
            if let StepInputs::KubeApply(i) = &s.inputs {
                names.insert(i.target.management_cluster.clone(), source.clone());
            }
        }
    }
    let provider =
        tkgops_providers::kube::KubeProvider::new(names, std::time::Duration::from_secs(5));
    let progress = tkgops_engine::ProgressSink::new(|_| {});
    let mut refused = 0;
    for c in &p.clusters {
        for s in &c.steps {
            let result = match &s.inputs {
                StepInputs::KubePreflight(i) => {
                    let mut i = i.clone();
                    i.target.kubeconfig = Some(source.clone());
                    tkgops_providers::kube::preflight::preflight(&provider, &progress, &i)
                        .await
                        .map(|v| format!("preflight passed: {}", serde_json::json!(v)))
                }
                StepInputs::KubeApply(i) => {
                    let mut i = i.clone();
                    i.target.kubeconfig = Some(source.clone());
                    provider
                        .server_dry_run(&i)
                        .await
                        .map(|objs| format!("server-side dry run accepted: {}", objs.join(", ")))
                }
                _ => continue,
            };
            match result {
                Ok(line) => println!("{}: {line}", c.cluster),
                Err(e) => {
                    refused += 1;
                    println!("{}: REFUSED: {e}", c.cluster);
                }
            }
        }
    }
    refused
}
