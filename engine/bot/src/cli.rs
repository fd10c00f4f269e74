//! The command line of `tkgops` (validate, plan, serve, runs, journal) as clap types, so that
//! the `tkgops` binary and the sandbox's test-only `tkgops-crashpoint` (README "Chaos harness")
//! parse exactly the same arguments. The commands themselves run in the binaries; `serve` is
//! [`crate::serve::serve_command`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// tkgops: Tanzu Kubernetes Grid cluster operations through GitOps pull requests.
#[derive(Parser)]
#[command(name = "tkgops", version, about)]
pub struct Cli {
    /// Format of the log lines on standard error: `text`, or `json` (one object per line,
    /// with the fields of the run, step, pull request or merge they are about). Overrides
    /// TKGOPS_LOG_FORMAT.
    #[arg(
        long,
        global = true,
        env = "TKGOPS_LOG_FORMAT",
        value_enum,
        default_value_t = crate::logs::LogFormat::Text
    )]
    pub log_format: crate::logs::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `tkgops`.
#[derive(Subcommand)]
pub enum Command {
    /// Check TKG cluster configuration files, cluster directories or whole config repositories
    /// against the reference-design rules. Exit 0: no errors; 1: errors; 2: unreadable input.
    Validate {
        /// Files or directories to check.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format: `text` (one line per finding), `json` (findings and a summary) or
        /// `sarif` (SARIF 2.1.0 for GitHub code scanning). The exit code is the same for all.
        #[arg(long, value_enum, default_value_t = crate::validate_format::Format::Text)]
        format: crate::validate_format::Format,
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
        /// The `runs` subcommand.
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// The journal itself.
    Journal {
        /// The `journal` subcommand.
        #[command(subcommand)]
        command: JournalCommand,
    },
}

/// Where `tkgops runs` reads from.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct HistorySource {
    /// The bot's stateDir, its journal not open by a running bot.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// A running bot's admin endpoint (its adminListen), e.g. http://127.0.0.1:8081.
    #[arg(long)]
    pub url: Option<String>,
}

/// Output format of `tkgops runs`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    /// A table (list) or text (show).
    Text,
    /// JSON: the journal's run records.
    Json,
}

/// The subcommands of `tkgops runs`.
#[derive(Subcommand)]
pub enum RunsCommand {
    /// The runs, oldest first: id, cluster, workflow, state, steps done, origin (the pull
    /// request), commit, creation time, duration.
    List {
        /// Where the runs are read from.
        #[command(flatten)]
        source: HistorySource,
        /// Only the runs of this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only the runs in this state: queued, running, succeeded, failed, cancelled.
        #[arg(long, value_parser = parse_run_state)]
        state: Option<tkgops_engine::RunState>,
        /// Output format: `text`, or `json` (the journal's run records).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// One run: its steps, attempts, errors, times, origin and commit.
    Show {
        /// The run's id.
        run_id: String,
        /// Where the runs are read from.
        #[command(flatten)]
        source: HistorySource,
        /// Output format: `text`, or `json` (the journal's run records).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// The subcommands of `tkgops journal`.
#[derive(Subcommand)]
pub enum JournalCommand {
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

/// A run state from its `--state` name (`queued`, `running`, `succeeded`, `failed`,
/// `cancelled`). Errors: the message clap shows for any other name.
pub fn parse_run_state(s: &str) -> Result<tkgops_engine::RunState, String> {
    crate::history::parse_state(s).ok_or_else(|| {
        format!("unknown state {s:?}: queued, running, succeeded, failed or cancelled")
    })
}
