//! `tkgops`: the command-line entry point (validate, plan, serve). The local story is the
//! separate `tkgops-sandbox` binary, so no emulator is part of this one.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use tkgops::cli::{Cli, Command, HistorySource, JournalCommand, Output, RunsCommand};
use tkgops::gitops::ConfigRepo;
use tkgops::serve;
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
        // The production serve path, with no step-executor wrapper (the test-only crash points
        // live in the sandbox's `tkgops-crashpoint`, never in this binary).
        Command::Serve { config } => Ok(serve::serve_command(&config, None)?),
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
