//! `dispatch-relay setup github-app`: creates the relay's GitHub App with
//! GitHub's manifest flow (design §7).
//!
//! The command serves a local page (`ingress::setup_page`) whose button
//! posts the App's manifest to GitHub's "create app" page. GitHub sends the
//! browser back with a one-time code, which this command exchanges
//! (`github::manifest::convert`) for the App's id and private key. The key is
//! written to a file only its owner can read, and the `github.app` block for
//! routes.yaml is printed with the link that installs the App. The private
//! key, the client secret and the webhook secret are never printed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use rand::RngCore;

use super::{CliError, invalid, load_config, process_env, process_setting, runtime};
use crate::config::{DEFAULT_API_URL, resolve_api_url};
use crate::github::GitHubClient;
use crate::github::manifest::{self, CreatedApp};
use crate::ingress::setup_page::{Callback, Outcome, Page, SetupListener};
use crate::secret::Secret;

/// The address tried first: a fixed port is easy to forward from a remote
/// machine (`ssh -L 3000:127.0.0.1:3000`); a free one is picked when taken.
const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// How long the code exchange may take.
const CONVERSION_TIMEOUT: Duration = Duration::from_secs(30);

/// What `setup` sets up.
#[derive(Debug, clap::Subcommand)]
pub enum SetupTarget {
    /// Create the relay's GitHub App with GitHub's manifest flow: serves a
    /// local page with a "Create GitHub App" button, writes the App's private
    /// key with mode 0600 and prints the `github.app` block for routes.yaml.
    GithubApp(AppSetup),
}

/// The options of `setup github-app`.
#[derive(Debug, Clone, clap::Args)]
pub struct AppSetup {
    /// Create the App in this organization instead of your personal account.
    #[arg(long)]
    pub org: Option<String>,
    /// The relay's public address, used as the App's homepage.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Address of the local setup page (default 127.0.0.1:3000, or a free
    /// port when that one is taken).
    #[arg(long)]
    pub listen: Option<String>,
    /// Where to write the App's private key.
    #[arg(long, default_value = "github-app.pem")]
    pub key_file: PathBuf,
    /// Replace the key file if it exists.
    #[arg(long)]
    pub force: bool,
    /// The App's name (default dispatch-relay-<random>; GitHub lets you edit
    /// it before creating the App).
    #[arg(long)]
    pub name: Option<String>,
    /// A routes.yaml to read `github.api_url` from (default: RELAY_CONFIG,
    /// else ./routes.yaml, when it exists and loads; GITHUB_API_URL
    /// overrides it).
    // Not read from RELAY_CONFIG: the container images set it, and setup
    // must treat that file as the default one (used when it loads), not as
    // one asked for on the command line.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs `setup`.
pub async fn run(target: SetupTarget) -> Result<(), CliError> {
    match target {
        SetupTarget::GithubApp(options) => github_app(options).await,
    }
}

/// Runs the whole flow; returns once the code has been exchanged (or the
/// exchange has failed) and the result page has been served.
pub async fn github_app(options: AppSetup) -> Result<(), CliError> {
    let api_url = api_url(options.config.as_deref())?;
    let web_url = process_setting("GITHUB_WEB_URL")
        .map(|v| v.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| manifest::web_url(&api_url));
    if let Some(org) = &options.org
        && !manifest::is_valid_org(org)
    {
        return Err(invalid(anyhow!(
            "--org {org:?} is not a GitHub organization name (letters, digits and single hyphens)"
        )));
    }
    let homepage = match &options.public_url {
        Some(url) => check_public_url(url)?,
        // GitHub requires a homepage; without the relay's public address,
        // the GitHub instance itself is a valid one on every installation.
        None => web_url.clone(),
    };
    let key_file = absolute(&options.key_file)?;
    check_key_file(&key_file, options.force)?;
    let name = match &options.name {
        Some(name) => check_name(name)?,
        None => format!("dispatch-relay-{}", random_hex(3)),
    };

    let listener = bind(options.listen.as_deref())?;
    let addr = listener.local_addr().map_err(runtime)?;
    let host = browser_host(addr);
    let local_url = format!("http://{host}:{}", addr.port());
    let state = random_hex(32);
    // The page hands out `state`, which is all a callback needs; only the
    // address printed in this terminal opens it, so another user of this
    // machine (or of the network, with `--listen 0.0.0.0`) cannot finish
    // the setup with an App of their own.
    let page_key = random_hex(16);
    let manifest = manifest::manifest(&name, &homepage, &format!("{local_url}/callback"));
    let page = Page {
        form_action: manifest::create_app_url(&web_url, options.org.as_deref(), &state),
        manifest: manifest.to_string(),
        app_name: name.clone(),
        github: web_url.clone(),
        org: options.org.clone(),
        key_file: key_file.display().to_string(),
        permissions: manifest::PERMISSIONS
            .iter()
            .map(|(n, l, w)| ((*n).to_owned(), (*l).to_owned(), (*w).to_owned()))
            .collect(),
    };
    let hosts = page_hosts(&host, addr.port());
    let (server, mut callbacks) = listener
        .start(page, state, page_key.clone(), hosts)
        .map_err(runtime)?;
    println!(
        "Open {local_url}/?key={page_key} in a browser to create the GitHub App on {web_url}."
    );
    println!("Waiting for GitHub to send the browser back (stop with Ctrl-C)...");
    flush_stdout();

    let Some(Callback { code, reply }) = callbacks.recv().await else {
        server.stop().await;
        return Err(runtime(anyhow!("the setup page stopped unexpectedly")));
    };
    let client = GitHubClient::new(&api_url, CONVERSION_TIMEOUT).map_err(runtime)?;
    let result = finish(&client, &code, &key_file, options.force, &api_url).await;
    let outcome = match &result {
        Ok(done) => Outcome::Created {
            app_name: done.app.name.clone(),
            app_id: done.app.id,
            key_file: key_file.display().to_string(),
            install_url: done.app.install_url(),
            config_block: done.block.clone(),
        },
        Err(failure) => Outcome::Failed {
            title: failure.title.clone(),
            detail: failure.page_detail(&web_url, options.org.as_deref()),
        },
    };
    // The browser may have gone away; the terminal still gets the result.
    let _ = reply.send(outcome);
    server.stop().await;

    match result {
        Ok(done) => {
            print_created(&done, &key_file);
            Ok(())
        }
        Err(failure) => Err(runtime(anyhow!(
            "{}: {}",
            failure.title,
            failure.page_detail(&web_url, options.org.as_deref())
        ))),
    }
}

/// The host the browser is sent to for a listener bound to `addr`.
fn browser_host(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        // The browser cannot be sent to 0.0.0.0; the local machine is the
        // address that works both directly and through an SSH tunnel.
        "127.0.0.1".to_owned()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    }
}

/// The `Host` headers the setup page answers to: the printed host and the
/// local machine's names, with the port and, on port 80, also without it.
fn page_hosts(host: &str, port: u16) -> Vec<String> {
    let names = [host, "localhost", "127.0.0.1", "[::1]"];
    let mut hosts: Vec<String> = names.iter().map(|name| format!("{name}:{port}")).collect();
    // A browser leaves the default port out of `Host`.
    if port == 80 {
        hosts.extend(names.iter().map(|name| (*name).to_owned()));
    }
    hosts
}

/// Tells the terminal what was created and what to do next.
fn print_created(done: &Done, key_file: &Path) {
    let app = &done.app;
    println!();
    println!("Created the GitHub App \"{}\" (id {}).", app.name, app.id);
    println!("Its private key is in {} (mode 0600).", key_file.display());
    println!();
    println!("Add this to routes.yaml:");
    println!();
    print!("{}", done.block);
    println!();
    println!(
        "Then install the App on the repositories it dispatches to (\"Only select repositories\"):"
    );
    println!("  {}", app.install_url());
    flush_stdout();
}

/// A finished setup: the App and the routes.yaml block.
struct Done {
    app: CreatedApp,
    block: String,
}

/// Why the setup failed after GitHub sent the browser back.
struct Failure {
    title: String,
    detail: String,
    /// Set when the App exists on GitHub although the setup failed, so the
    /// user can find it (to generate a key, or to delete it).
    created_slug: Option<String>,
}

impl Failure {
    fn page_detail(&self, web_url: &str, org: Option<&str>) -> String {
        match &self.created_slug {
            Some(slug) => format!(
                "{} The App was created: generate a new private key (or delete the App) at {}.",
                self.detail,
                manifest::app_settings_url(web_url, org, slug)
            ),
            None => self.detail.clone(),
        }
    }
}

async fn finish(
    client: &GitHubClient,
    code: &str,
    key_file: &Path,
    force: bool,
    api_url: &str,
) -> Result<Done, Failure> {
    // GitHub creates the App before it sends the browser back with the
    // code: what failed here is fetching its key, not creating it.
    let app = manifest::convert(client, code).await.map_err(|e| Failure {
        title: "The App's key could not be fetched".to_owned(),
        detail: match e {
            // Nothing was asked of GitHub, so whether it created an App is
            // not known.
            manifest::ConversionError::NotACode => format!(
                "{e}. Nothing was asked of GitHub. Run `dispatch-relay setup github-app` again; \
                 if GitHub did create an App, delete it from your GitHub settings (Developer \
                 settings, GitHub Apps) first."
            ),
            e => format!(
                "{e}. GitHub created the App before sending you back; delete it from your GitHub \
                 settings (Developer settings, GitHub Apps) and run `dispatch-relay setup github-app` \
                 again, or generate a private key on its settings page and configure it by hand."
            ),
        },
        created_slug: None,
    })?;
    if let Err(e) = write_key(key_file, &app.pem, force) {
        return Err(Failure {
            title: "The private key could not be written".to_owned(),
            detail: format!("{e:#}."),
            created_slug: Some(app.slug.clone()),
        });
    }
    let block = config_block(app.id, key_file, api_url);
    Ok(Done { app, block })
}

/// The `github` block to paste into routes.yaml. `api_url` is included only
/// when it is not GitHub.com's, since that is the default.
pub fn config_block(app_id: u64, key_file: &Path, api_url: &str) -> String {
    let mut block = String::from("github:\n");
    if api_url != DEFAULT_API_URL {
        block.push_str(&format!("  api_url: {api_url}\n"));
    }
    block.push_str(&format!(
        "  app:\n    id: {app_id}\n    private_key_file: {}\n    \
         # installation_id: optional; looked up per repository when absent\n",
        yaml_scalar(&key_file.display().to_string())
    ));
    block
}

/// A path as a YAML scalar: plain when that is unambiguous, quoted otherwise.
fn yaml_scalar(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c))
        && !text.starts_with(['-', '@']);
    if plain {
        text.to_owned()
    } else {
        serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"))
    }
}

/// The API base URL: `GITHUB_API_URL`, else routes.yaml's `github.api_url`
/// (which the loader already resolves with the same override), else
/// GitHub.com. The configuration is optional: a file named with `--config`
/// must load, while the default `routes.yaml` is only read when it exists
/// and loads, since a first setup often comes before a working file.
fn api_url(config: Option<&Path>) -> Result<String, CliError> {
    match config {
        Some(path) => Ok(load_config(path)?.config.github.api_url),
        None => {
            // RELAY_CONFIG names the default file where it is set (the
            // container images set it), but as a default: a file that does
            // not load is only a warning, as `./routes.yaml` is.
            let default = process_setting("RELAY_CONFIG")
                .map_or_else(|| PathBuf::from("routes.yaml"), PathBuf::from);
            if default.exists() {
                match load_config(&default) {
                    Ok(loaded) => return Ok(loaded.config.github.api_url),
                    Err(e) => eprintln!(
                        "warning: {} does not load, so its github.api_url is not used: {e}",
                        default.display()
                    ),
                }
            }
            Ok(resolve_api_url(process_env("GITHUB_API_URL"), None))
        }
    }
}

fn check_public_url(url: &str) -> Result<String, CliError> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
            Ok(url.to_owned())
        }
        _ => Err(invalid(anyhow!(
            "--public-url {url:?} is not an http(s) URL"
        ))),
    }
}

/// GitHub App names: at most 34 characters; GitHub turns them into the slug.
fn check_name(name: &str) -> Result<String, CliError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 34 {
        return Err(invalid(anyhow!(
            "--name must be 1 to 34 characters (GitHub's limit for App names)"
        )));
    }
    Ok(name.to_owned())
}

fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| runtime(anyhow!("cannot read the working directory: {e}")))?;
    Ok(cwd.join(path))
}

/// Refuses, before anything is created on GitHub, a key file that exists
/// (without `--force`) or whose directory does not.
fn check_key_file(path: &Path, force: bool) -> Result<(), CliError> {
    if path.exists() && !force {
        return Err(invalid(anyhow!(
            "{} already exists; pass --force to replace it, or --key-file to write elsewhere",
            path.display()
        )));
    }
    if path.is_dir() {
        return Err(invalid(anyhow!("{} is a directory", path.display())));
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(invalid(anyhow!(
            "the directory of {} does not exist",
            path.display()
        )));
    }
    Ok(())
}

/// Writes the key with mode 0600 from the moment the file exists. Without
/// `force` the file is created only if absent (checked atomically by the
/// system, not just before); with `force` the key goes to a new file beside
/// it, which then replaces the old one, so no reader ever sees a partial key.
fn write_key(path: &Path, pem: &Secret, force: bool) -> anyhow::Result<()> {
    let target = if force {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "github-app.pem".into());
        path.with_file_name(format!(".{name}.{}.tmp", random_hex(4)))
    } else {
        path.to_owned()
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let written = file
        .write_all(pem.expose().as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&target);
        return Err(e).with_context(|| format!("cannot write {}", target.display()));
    }
    if force && let Err(e) = std::fs::rename(&target, path) {
        let _ = std::fs::remove_file(&target);
        return Err(e).with_context(|| format!("cannot replace {}", path.display()));
    }
    Ok(())
}

fn bind(listen: Option<&str>) -> Result<SetupListener, CliError> {
    match listen {
        // A flag that names no address is the user's to fix (exit 1), as
        // `serve --listen` says; only one that cannot be bound is exit 2.
        Some(addr) if !crate::config::is_listen_address(addr) => Err(super::invalid(anyhow!(
            "--listen: `{addr}` is not an address to listen on; write `host:port`, such as `127.0.0.1:3000`"
        ))),
        Some(addr) => {
            SetupListener::bind(addr).map_err(|e| runtime(anyhow!("cannot listen on {addr}: {e}")))
        }
        None => SetupListener::bind(DEFAULT_LISTEN)
            .or_else(|_| SetupListener::bind("127.0.0.1:0"))
            .map_err(|e| runtime(anyhow!("cannot listen on 127.0.0.1: {e}"))),
    }
}

/// `bytes` random bytes from the system's generator, as hex.
fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    hex::encode(buffer)
}

fn flush_stdout() {
    // A closed stdout is not worth failing the setup for.
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::{self, Credential, PrivateKeySource};

    #[test]
    fn the_printed_block_loads_as_an_app_credential() {
        let block = config_block(
            4242,
            Path::new("/srv/relay keys/github-app.pem"),
            DEFAULT_API_URL,
        );
        assert!(!block.contains("api_url"));
        let loaded = config::load("routes.yaml", &format!("{block}routes: []\n"), &|_| None)
            .expect("the block loads");
        assert_eq!(loaded.config.github.api_url, DEFAULT_API_URL);
        let Credential::App(app) = &loaded.config.github.credential else {
            panic!("not an App credential");
        };
        assert_eq!(app.id, "4242");
        assert_eq!(app.installation_id, None);
        let PrivateKeySource::File(file) = &app.private_key else {
            panic!("not a key file");
        };
        assert_eq!(file, Path::new("/srv/relay keys/github-app.pem"));
    }

    #[test]
    fn the_block_names_a_ghes_api_url() {
        let block = config_block(7, Path::new("/k.pem"), "https://ghe.example.com/api/v3");
        assert!(block.contains("  api_url: https://ghe.example.com/api/v3\n"));
        let loaded = config::load("r.yaml", &format!("{block}routes: []\n"), &|_| None).unwrap();
        assert_eq!(
            loaded.config.github.api_url,
            "https://ghe.example.com/api/v3"
        );
    }

    #[test]
    fn the_key_is_private_and_never_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("github-app.pem");
        let pem = Secret::new("-----BEGIN RSA PRIVATE KEY-----\nx\n".into());
        write_key(&path, &pem, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pem.expose());

        let other = Secret::new("other".into());
        assert!(write_key(&path, &other, false).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pem.expose());
        assert!(check_key_file(&path, false).is_err());
        assert!(check_key_file(&path, true).is_ok());

        write_key(&path, &other, true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "other");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "the temporary file is gone");
    }

    #[test]
    fn a_key_file_in_a_missing_directory_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_key_file(&dir.path().join("nope/k.pem"), false).is_err());
        assert!(check_key_file(dir.path(), true).is_err());
        assert!(check_key_file(&dir.path().join("k.pem"), false).is_ok());
    }

    #[test]
    fn paths_are_quoted_only_when_needed() {
        assert_eq!(yaml_scalar("/srv/github-app.pem"), "/srv/github-app.pem");
        assert_eq!(yaml_scalar("/srv/a b.pem"), "\"/srv/a b.pem\"");
        assert_eq!(yaml_scalar("/srv/a: b"), "\"/srv/a: b\"");
    }

    #[test]
    fn flags_are_checked() {
        assert!(check_public_url("https://relay.example.com").is_ok());
        assert!(check_public_url("relay.example.com").is_err());
        assert!(check_public_url("ftp://relay.example.com").is_err());
        assert!(check_name("my relay").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(35)).is_err());
    }
}
