//! `tkgops-crashpoint`: TEST-ONLY. `tkgops serve` exactly as the production binary runs it
//! (the same command line, [`tkgops::serve::serve_command`]), with the bot's step executor
//! wrapped by the crash points of `TKGOPS_CRASH_AT` ([`tkgops_sandbox::crashpoint`]): the
//! process aborts right after a chosen step's side effect and before the engine journals it,
//! or right after the engine journaled an attempt's start. The chaos harness and
//! `tests/it/crash_window.rs` run it; nothing else should.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tkgops::cli::{Cli, Command};
use tkgops_sandbox::crashpoint::{CrashPoints, ENV_POINTS, ENV_STATE_DIR};

const ABOUT: &str =
    "TEST-ONLY: `tkgops serve` with crash points (aborts the bot between a step's side \
effect and its journal write). For the chaos harness and the crash-window tests; never deploy it.";

fn main() -> ExitCode {
    tkgops_providers::install_crypto_provider();
    let matches = Cli::command()
        .name("tkgops-crashpoint")
        .bin_name("tkgops-crashpoint")
        .about(ABOUT)
        .long_about(None)
        .after_help(format!(
            "Crash points (only `serve` runs):\n  {ENV_POINTS}=<before|after>:[<cluster>/]<step id or kind>[:<nth>][,...]\n      e.g. after:aws-preflight,before:tmc-attach,after:kube.apply:2\n  {ENV_STATE_DIR}=<dir>  each point fires at most once across restarts (marker files)"
        ))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    tkgops::logs::init(cli.log_format);
    let points = match CrashPoints::from_env() {
        Ok(points) => points,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Command::Serve { config } = cli.command else {
        eprintln!("error: tkgops-crashpoint runs only `serve`; use tkgops for the other commands");
        return ExitCode::from(2);
    };
    let listed: Vec<String> = points.points().map(ToString::to_string).collect();
    tracing::warn!(points = %listed.join(","), "TEST-ONLY tkgops-crashpoint: serving with crash points");
    match tkgops::serve::serve_command(&config, Some(points.wrapper())) {
        Ok(code) => code,
        Err(e) => {
            // As `tkgops` reports it: the error and its sources.
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(2)
        }
    }
}
