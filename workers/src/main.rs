//! `ttfd`: reads the command line and runs the role; see `ttfd --help`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = ttfd::cli::Cli::parse();
    match ttfd::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            ttfd::telemetry::report_fatal(&e);
            ExitCode::FAILURE
        }
    }
}
