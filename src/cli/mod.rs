//! The command line: argument definitions (each doc comment is the `--help`
//! text) and the commands. Errors carry their exit code: 1 for invalid input
//! (bad configuration, bad flags), 2 for runtime failures.

mod deliveries;
mod reload;
mod render;
mod serve;
mod setup;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{self, Loaded};
use crate::github::preflight::{Budget, Verdict};
use crate::store::{self, Store};

/// A self-hosted gateway from webhooks to GitHub repository_dispatch and
/// workflow_dispatch, with a durable queue.
#[derive(Debug, Parser)]
#[command(name = "dispatch-relay", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    #[command(after_help = SERVE_ENVIRONMENT)]
    Serve {
        #[command(flatten)]
        config: ConfigFile,
        /// Address to listen on (overrides server.listen; default 0.0.0.0:8080).
        #[arg(long, env = "RELAY_LISTEN")]
        listen: Option<String>,
    },
    /// Validate routes.yaml exactly as `serve` would and summarise each route.
    Check {
        #[command(flatten)]
        config: ConfigFile,
        /// Also ask GitHub whether every static target repository is reachable.
        #[arg(long)]
        online: bool,
    },
    /// Dry run: evaluate `when`, render every target of a route for a body and
    /// print the dedupe key and the exact GitHub requests, without sending
    /// anything.
    Render {
        #[command(flatten)]
        config: ConfigFile,
        /// The route id.
        #[arg(long)]
        route: String,
        /// A file holding the request body (`-` for standard input).
        #[arg(long)]
        body: PathBuf,
        /// A request header, `Name: value`; repeat for several.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The query string of the webhook URL (`ref=main&env=prod`), as
        /// templates read it as `query` and signatures cover it.
        #[arg(long)]
        query: Option<String>,
        /// Check the signature too (skipped by default).
        #[arg(long)]
        verify: bool,
    },
    /// List recent deliveries from the store.
    Deliveries {
        #[command(flatten)]
        config: ConfigFile,
        /// pending, delivered or failed.
        #[arg(long)]
        status: Option<String>,
        /// Only deliveries of this route id.
        #[arg(long)]
        route: Option<String>,
        /// How many deliveries to list, newest first.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        /// One delivery by id: the webhook as stored, the request for each
        /// target, and every attempt to send it.
        #[arg(long, conflicts_with_all = ["status", "route", "limit"])]
        id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Render failed deliveries again with the current routes and re-queue
    /// their failed targets; targets already delivered are not sent again.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "failed"])))]
    Redeliver {
        #[command(flatten)]
        config: ConfigFile,
        /// One delivery by id.
        #[arg(long)]
        id: Option<String>,
        /// Every failed delivery (narrow with --route and --since).
        #[arg(long)]
        failed: bool,
        /// Only failed deliveries of this route (with --failed).
        // `requires = "failed"` is met by the flag's default, `false`; the
        // group above leaves `--failed` whenever `--id` is not given.
        #[arg(long, conflicts_with = "id")]
        route: Option<String>,
        /// Only deliveries that failed within this long, e.g. `2h` (with --failed).
        #[arg(long, conflicts_with = "id")]
        since: Option<String>,
    },
    /// One-time setup: `setup github-app` creates the relay's GitHub App.
    Setup {
        #[command(subcommand)]
        target: setup::SetupTarget,
    },
}

/// The `--config` flag every command that reads routes.yaml takes.
#[derive(Debug, clap::Args)]
pub struct ConfigFile {
    /// The routing table.
    #[arg(
        long = "config",
        value_name = "CONFIG",
        env = "RELAY_CONFIG",
        default_value = "routes.yaml"
    )]
    pub path: PathBuf,
}

/// The rest of the environment `serve` reads, for `serve --help`: clap
/// lists only the variables bound to a flag.
const SERVE_ENVIRONMENT: &str = "\
Environment:
  RELAY_DATABASE_URL  The store, `sqlite:PATH`; when not empty, wins over store.url (whose default is sqlite:dispatch-relay.db beside routes.yaml)
  RELAY_ADMIN_TOKEN   Bearer token of the admin API (/admin/...); unset, the admin API is off
  GITHUB_API_URL      GitHub's API base URL; when not empty, wins over github.api_url
  RUST_LOG            Log filter, such as `info` or `dispatch_relay=debug` [default: info]
  RELAY_LOG_FORMAT    `json` for one JSON object per line, or `pretty` [default: pretty]
  HTTPS_PROXY         Outbound HTTP proxy for every request the relay makes (NO_PROXY lists exceptions)
  SSL_CERT_FILE       Certificate authorities to trust, in PEM, as for a private GitHub Enterprise Server
  ${VAR}              Any variable routes.yaml names, substituted into its values
Every variable is described in docs/configuration.md.";

/// An error with its exit code.
#[derive(Debug)]
pub enum CliError {
    /// Exit 1: routes.yaml is invalid; one `file:line:col: message` line
    /// per error, printed as they are so that editors can jump to them.
    Config(String),
    /// Exit 1: the input (configuration, flags, files) is wrong.
    Invalid(anyhow::Error),
    /// Exit 2: something failed at runtime.
    Runtime(anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Config(_) | CliError::Invalid(_) => 1,
            CliError::Runtime(_) => 2,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Config(lines) => f.write_str(lines),
            CliError::Invalid(e) | CliError::Runtime(e) => write!(f, "{e:#}"),
        }
    }
}

pub fn invalid(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Invalid(e.into())
}

pub fn runtime(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Runtime(e.into())
}

/// Runs a command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve { config, listen } => serve::serve(&config.path, listen).await,
        Command::Check { config, online } => check(&config.path, online).await,
        Command::Render {
            config,
            route,
            body,
            headers,
            query,
            verify,
        } => render::render(
            &config.path,
            &route,
            render::Request {
                body: &body,
                headers: &headers,
                query: query.as_deref().unwrap_or_default(),
            },
            verify,
        ),
        Command::Deliveries {
            config,
            id: Some(id),
            json,
            ..
        } => deliveries::show(&config.path, &id, json).await,
        Command::Deliveries {
            config,
            status,
            route,
            limit,
            id: None,
            json,
        } => {
            deliveries::list(
                &config.path,
                status,
                route,
                usize::try_from(limit).unwrap_or(usize::MAX),
                json,
            )
            .await
        }
        Command::Redeliver {
            config,
            id,
            failed: _,
            route,
            since,
        } => deliveries::redeliver(&config.path, id, route, since).await,
        Command::Setup { target } => setup::run(target).await,
    }
}

/// The process environment, as the configuration loader sees it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A setting read from the environment, trimmed; an empty one (`NAME=` in
/// an env file) is unset. `${VAR}` substitution does not use this: there an
/// empty variable is an error worth naming.
pub fn process_setting(name: &str) -> Option<String> {
    process_env(name)
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Reads and loads the configuration: the one code path of `serve`, `check`,
/// `render` and `redeliver`.
pub fn load_config(path: &Path) -> Result<Loaded, CliError> {
    load_config_text(path).map(|(loaded, _)| loaded)
}

/// The text of routes.yaml as every command and the reloader read it (see
/// [`config::decode`]); the error names the file.
pub fn read_config_text(path: &Path) -> Result<String, String> {
    read_config_bytes(path).and_then(|bytes| decode_config(path, bytes))
}

fn read_config_bytes(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The text of the file's bytes, or where they stop being UTF-8, placed as
/// `file:line:column:` like every other fault of the file.
fn decode_config(path: &Path, bytes: Vec<u8>) -> Result<String, String> {
    config::decode(bytes).map_err(|e| format!("{}:{e}", path.display()))
}

/// Hands the memory freed by a configuration, or by loading one, back to
/// the system.
///
/// Loading a configuration makes many small allocations (the position of
/// every node of the file among them), on whichever thread runs it, and
/// glibc keeps what is freed in the arena of that thread for later use.
/// Reload after reload, each arena would then hold its own high-water
/// mark: a file of 3,000 routes took the relay from 91 MB to 340 MB over a
/// dozen reloads (decision 52). Trimming
/// returns every free page of every arena, so the resident memory after a
/// reload is that of the configurations in use.
pub(super) fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of the allocator's own
    // heaps to the system; it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Like [`load_config`], also returning the text that was loaded.
pub fn load_config_text(path: &Path) -> Result<(Loaded, String), CliError> {
    let bytes = read_config_bytes(path).map_err(|e| invalid(anyhow::anyhow!(e)))?;
    // Printed as the file's other faults are, without the `error:` of a
    // command that failed, so that editors and CI read its place.
    let text = decode_config(path, bytes).map_err(CliError::Config)?;
    let loaded = config::load(&path.display().to_string(), &text, &process_env)
        .map_err(|errors| CliError::Config(errors.to_string()))?;
    Ok((loaded, text))
}

/// Where the store lives: `RELAY_DATABASE_URL`, else `store.url`, else
/// `dispatch-relay.db` beside routes.yaml. An empty value (`RELAY_DATABASE_URL=`
/// in an env file, `url: ${DB_URL:-}`) is unset, as for `serve`.
pub fn store_path(config_path: &Path, configured: Option<&str>) -> Result<PathBuf, CliError> {
    let base = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (source, url) = match (
        process_setting("RELAY_DATABASE_URL"),
        configured.filter(|url| !url.trim().is_empty()),
    ) {
        (Some(url), _) => ("RELAY_DATABASE_URL", url),
        (None, Some(url)) => ("store.url", url.to_string()),
        (None, None) => ("the default store", "sqlite:dispatch-relay.db".to_string()),
    };
    store::sqlite_path(&url, base).map_err(|e| invalid(anyhow::anyhow!("{source}: {e}")))
}

/// Opens an existing store for the inspection commands.
pub fn open_existing_store(path: &Path) -> Result<Store, CliError> {
    let problem = match std::fs::metadata(path) {
        Err(_) => {
            // When the path came from the file, serve may have been given
            // another one in its environment.
            let hint = if process_setting("RELAY_DATABASE_URL").is_some() {
                ""
            } else {
                "; if serve's store is set by RELAY_DATABASE_URL, set it here too"
            };
            Some(format!(
                "no store at {} (has `dispatch-relay serve` run with this configuration?{hint})",
                path.display()
            ))
        }
        // Opening either would make it a new, empty store, which the
        // inspection commands never do: `serve` says what a 0-byte file
        // means.
        Ok(found) if found.is_dir() => Some(format!(
            "the store's path {} is a directory; name the store file in it",
            path.display()
        )),
        Ok(found) if found.len() == 0 => Some(format!(
            "the store file {} is empty (0 bytes), as a failed restore or a truncation leaves it: restore it from a backup (`serve` would start a new, empty store in it)",
            path.display()
        )),
        Ok(_) => None,
    };
    if let Some(problem) = problem {
        return Err(invalid(anyhow::anyhow!(problem)));
    }
    Store::open_beside_relay(path).map_err(runtime)
}

async fn check(path: &Path, online: bool) -> Result<(), CliError> {
    let loaded = load_config(path)?;
    // `serve` reads them at start and at every reload; so does `check`.
    crate::ingress::read_pinned_certificates(&loaded.config)
        .map_err(|e| CliError::Config(e.to_string()))?;
    // The store's location is refused by `serve` before it opens anything.
    store_path(path, loaded.config.store.url.as_deref())?;
    for warning in &loaded.warnings {
        eprintln!("{warning}");
    }
    println!(
        "{}: ok, {} route{}",
        path.display(),
        loaded.config.routes.len(),
        if loaded.config.routes.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    for (index, route) in loaded.config.routes.iter().enumerate() {
        println!("  {}", config::summary(route, index, &loaded.written));
    }
    if !online {
        return Ok(());
    }
    let config = &loaded.config;
    let client = crate::github::GitHubClient::new(&config.github.api_url, config.github.timeout)
        .map_err(runtime)?;
    let credentials = crate::github::app::Credentials::from_config(
        &config.github.credential,
        client.clone(),
        None,
    );
    let targets = crate::github::preflight::static_targets(config);
    // A repository is checked once for each kind of dispatch it gets (they
    // need different permissions), and counted once.
    let repos: BTreeSet<&str> = targets.iter().map(|t| t.repo.as_str()).collect();
    println!(
        "online: asking {} about {} repositor{}",
        config.github.api_url,
        repos.len(),
        if repos.len() == 1 { "y" } else { "ies" }
    );
    let findings =
        crate::github::preflight::check(&credentials, &client, &targets, Budget::Whole).await;
    let (mut failed, mut unanswered) = (BTreeSet::new(), BTreeSet::new());
    for finding in &findings {
        let repo = finding.target.repo.as_str();
        let checked = match finding.target.scope {
            crate::github::Scope::Contents => repo.to_owned(),
            crate::github::Scope::Workflow => format!("{repo} (workflow dispatch)"),
        };
        match &finding.verdict {
            Verdict::Ok => println!("  ok    {checked}"),
            // Not a failure: the dispatches get through GitHub's redirect.
            Verdict::Moved { now } => println!(
                "  ok    {checked}: renamed or transferred, now {now}: GitHub redirects its dispatches, and routes.yaml should say {now}"
            ),
            Verdict::Unanswered(reason) => {
                unanswered.insert(repo);
                println!("  ????  {checked}: not answered: {reason}");
            }
            Verdict::NotAsked(_) => {
                unanswered.insert(repo);
                println!("  ????  {checked}: not asked: GitHub rate-limited an earlier request");
            }
            Verdict::Fail(reason) => {
                failed.insert(repo);
                println!("  FAIL  {checked}: {reason}");
            }
        }
    }
    // Exit 1 says the configuration or the credential needs fixing; exit 2
    // that GitHub could not be asked, which running it again may settle.
    if !failed.is_empty() {
        return Err(invalid(anyhow::anyhow!(
            "{} of {} repositories cannot receive dispatches (reasons above)",
            failed.len(),
            repos.len()
        )));
    }
    if !unanswered.is_empty() {
        return Err(runtime(anyhow::anyhow!(
            "GitHub could not be asked about {} of {} repositories (reasons above)",
            unanswered.len(),
            repos.len()
        )));
    }
    Ok(())
}
