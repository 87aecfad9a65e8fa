//! The `dispatch-relay` binary: parses the command line, sets up logging and
//! hands over to `cli::run`, turning its error into an exit code.

use clap::Parser;
use dispatch_relay::cli::{self, Cli, Command};
use dispatch_relay::telemetry::{self, LogFormat};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let format = LogFormat::from_env_value(std::env::var("RELAY_LOG_FORMAT").ok().as_deref());
    // Inspection commands keep quiet unless asked; the server logs its work.
    let default_filter = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    telemetry::init(format, default_filter);
    let result = cli::run(cli).await;
    telemetry::flush();
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
