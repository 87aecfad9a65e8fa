//! The `dispatch-relay` binary: parses the command line, sets up logging and
//! hands over to `cli::run`, turning its error into an exit code.

use clap::Parser;
use dispatch_relay::cli::{self, Cli, Command};
use dispatch_relay::telemetry::{self, LogSettings};

/// Lets a command that prints end quietly when its reader goes away
/// (`dispatch-relay deliveries | head`), as command-line tools do. Rust
/// ignores SIGPIPE, so every print to a closed pipe would panic instead.
/// The servers and `check --online` keep ignoring it: their sockets report
/// a closed peer as an error of the write.
fn restore_default_sigpipe() {
    // SAFETY: `signal` only sets the process's disposition for SIGPIPE; no
    // code of these commands writes to a socket.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The settings the command line also reads from the environment.
const FLAG_VARIABLES: [&str; 2] = ["RELAY_CONFIG", "RELAY_LISTEN"];

/// Forgets an environment setting that is set but empty, as the relay's
/// other variables are read: an env file that leaves `RELAY_CONFIG=`
/// blank means the default, where clap would refuse every command with "a
/// value is required".
fn forget_empty_flag_variables() {
    for name in FLAG_VARIABLES {
        if std::env::var_os(name).is_some_and(|value| value.is_empty()) {
            // SAFETY: this runs first in `main`, before the runtime or
            // anything else has started a thread that could read the
            // environment at the same time.
            unsafe { std::env::remove_var(name) };
        }
    }
}

fn main() {
    forget_empty_flag_variables();
    run();
}

#[tokio::main]
async fn run() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` end here too, and are not errors.
            // Bad flags are invalid input: exit 1, not clap's 2, which the
            // relay keeps for failures at run time.
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    // `check --online` talks to GitHub over TLS, whose writes are not all
    // sent with MSG_NOSIGNAL: it keeps SIGPIPE ignored, like the servers.
    if !matches!(
        cli.command,
        Command::Serve { .. } | Command::Setup { .. } | Command::Check { online: true, .. }
    ) {
        restore_default_sigpipe();
    }
    // Inspection commands keep quiet unless asked; the server logs its work.
    let default_filter = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    telemetry::init(LogSettings::from_env_values(
        std::env::var("RELAY_LOG_FORMAT").ok().as_deref(),
        std::env::var("RUST_LOG").ok().as_deref(),
        default_filter,
    ));
    let result = cli::run(cli).await;
    telemetry::flush();
    match result {
        // The command's work is done. Returning would drop the runtime,
        // which waits for any blocking thread still running (a name lookup
        // held by a dead resolver, say) with no bound; the exit must not.
        Ok(()) => std::process::exit(0),
        Err(e @ cli::CliError::Config(_)) => {
            eprintln!("{e}");
            std::process::exit(e.exit_code());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
