//! `tkgops-sandbox`: the whole tkgops story on loopback (emulated GitHub, Kubernetes and TMC,
//! moto for EC2, the bot, and a pull request that adds a cluster request), or with `--serve`
//! the same world without a story, to drive like GitHub. `scripts/sandbox.sh` is the
//! documented way to run it.

use std::process::ExitCode;

use clap::Parser;

/// Run the whole story locally: emulated GitHub, Kubernetes and TMC, moto for EC2, the bot, and
/// a pull request that adds a cluster request.
#[derive(Parser)]
#[command(name = "tkgops-sandbox", version, about)]
struct Cli {
    #[command(flatten)]
    args: tkgops_sandbox::SandboxArgs,
}

fn main() -> ExitCode {
    tkgops_providers::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(tkgops::redact::stderr)
        .init();
    let cli = Cli::parse();
    let serve = cli.args.serve;
    let outcome = tokio::runtime::Runtime::new()
        .map_err(|e| tkgops_sandbox::SandboxError(e.to_string()))
        .and_then(|rt| {
            if serve {
                rt.block_on(tkgops_sandbox::serve(cli.args)).map(|()| true)
            } else if cli.args.chaos {
                rt.block_on(tkgops_sandbox::chaos::run(cli.args))
            } else {
                rt.block_on(tkgops_sandbox::run(cli.args))
            }
        });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
