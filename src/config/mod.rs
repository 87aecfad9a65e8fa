//! Loading `routes.yaml`: parsing, `${VAR}` substitution, validation and
//! template compilation, producing a [`Config`] that `serve`, `check` and
//! `render` all use. Loading is a pure function of the file's text and an
//! environment lookup, so it never reads process variables or files itself.
//!
//! Loading happens in phases so that every problem is reported at once:
//! the YAML is parsed into a tree (a syntax error stops here, alone); a
//! second pass over the text records where every node sits; variables are
//! substituted in string values; each top-level section and each route is
//! deserialized on its own into the `raw` structs, which reject unknown
//! keys; and `validate` turns those into the types below, collecting every
//! error with its path and its line and column.
//!
//! This module is the only one that knows the YAML library.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
use crate::template;

mod env;
mod locate;
mod path;
mod raw;
mod units;
mod validate;

#[cfg(test)]
mod tests;

pub use units::parse_duration;
pub use validate::{DEFAULT_API_URL, is_listen_address, private_key_problem, resolve_api_url};

/// A validated configuration with its templates compiled.
#[derive(Debug)]
pub struct Config {
    /// How to reach and authenticate to GitHub.
    pub github: GithubConfig,
    /// The HTTP listener.
    pub server: ServerConfig,
    /// The delivery store.
    pub store: StoreConfig,
    /// How failed dispatches are retried.
    pub retry: RetryConfig,
    /// Where failure alerts go.
    pub notify: Vec<NotifyTarget>,
    /// The routing table, in file order. Each compiled template holds the
    /// environment it was compiled in.
    pub routes: Vec<Route>,
}

impl Config {
    /// Finds a route by id.
    pub fn route(&self, id: &str) -> Option<&Route> {
        self.routes.iter().find(|route| route.id == id)
    }
}

/// The result of a successful load: the configuration and what `check`
/// should warn about.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Accepted but risky settings.
    pub warnings: Vec<ConfigWarning>,
    /// The text the file holds, by path (`routes[0].when`), of every value
    /// a `${VAR}` changed: what output shows in place of the value.
    pub written: BTreeMap<String, String>,
}

/// The `github` section.
#[derive(Debug, PartialEq)]
pub struct GithubConfig {
    /// The API base URL without a trailing slash; `GITHUB_API_URL` overrides
    /// the file.
    pub api_url: String,
    /// The token or GitHub App the relay authenticates as.
    pub credential: Credential,
    /// How fast requests go out per credential.
    pub pacing: Pacing,
    /// The timeout of one GitHub request.
    pub timeout: Duration,
}

/// How the relay authenticates to GitHub.
#[derive(Debug, PartialEq)]
pub enum Credential {
    /// A personal access token (classic or fine-grained).
    Token(Secret),
    /// A GitHub App.
    App(AppCredential),
}

/// A GitHub App's identity.
#[derive(Debug, PartialEq)]
pub struct AppCredential {
    /// The app id or client id (the JWT issuer).
    pub id: String,
    /// Where the app's private key comes from.
    pub private_key: PrivateKeySource,
    /// A fixed installation; when absent it is looked up per repository.
    pub installation_id: Option<u64>,
}

/// Where a GitHub App private key comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PrivateKeySource {
    /// A PEM file, read when the credential is first used.
    File(PathBuf),
    /// The PEM text itself, usually from an environment variable.
    Inline(Secret),
}

/// Pacing of mutating GitHub requests per credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// No pacing at all (benchmarks, GHES without limits).
    Off,
    /// GitHub's guidance by default: one at a time, 1 s apart, 80 a minute.
    Paced {
        /// Requests in flight at once.
        concurrency: u32,
        /// The least time between two requests.
        min_interval: Duration,
        /// The most requests in any minute.
        per_minute: u32,
    },
}

/// The `server` section.
#[derive(Debug)]
pub struct ServerConfig {
    /// The listen address from the file; `--listen` and `RELAY_LISTEN` win.
    pub listen: Option<String>,
    /// The default body limit of routes, in bytes.
    pub max_body: u64,
    /// The most bytes all bodies being received may hold at once; a body
    /// that would pass it is refused `503`.
    pub max_body_memory: u64,
    /// How long a request's body may take to arrive once its headers have.
    pub body_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The `store` section.
#[derive(Debug, PartialEq)]
pub struct StoreConfig {
    /// The store URL from the file; `RELAY_DATABASE_URL` wins.
    pub url: Option<String>,
    /// How long finished deliveries are kept.
    pub retention: Duration,
    /// SQLite's `synchronous` setting.
    pub synchronous: Synchronous,
}

/// SQLite's durability setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// Every commit reaches the disk before it returns (the default).
    Full,
    /// Faster; a power loss may lose the last commits, never corrupt.
    Normal,
}

/// The `retry` section.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Attempts before a dispatch fails for good.
    pub max_attempts: u32,
    /// The first backoff; it doubles on every retry.
    pub initial_backoff: Duration,
    /// The cap of one backoff.
    pub max_backoff: Duration,
    /// The time after which a dispatch fails whatever its attempts.
    pub give_up_after: Duration,
}

/// One failure alert destination.
#[derive(Debug, PartialEq)]
pub struct NotifyTarget {
    /// What kind of endpoint it is.
    pub kind: NotifyKind,
}

/// The kinds of failure alert endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifyKind {
    /// A Slack incoming webhook URL.
    Slack(Secret),
    /// A generic URL that receives a JSON POST.
    Url(Secret),
}

/// One route of the routing table.
#[derive(Debug)]
pub struct Route {
    /// The id; the webhook URL is `/hooks/{id}`.
    pub id: String,
    /// How senders authenticate.
    pub verify: Verify,
    /// The inbound rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// Requests for which this is false are answered and not dispatched.
    pub when: Option<template::Condition>,
    /// The targets, in order.
    pub dispatch: Vec<Target>,
    /// Patterns a templated `repo` must match, such as `acme/*`.
    pub allowed_repos: Vec<String>,
    /// The patterns as a `422` names them to the sender: comma-separated,
    /// with what a `${VAR}` put into one written as the variable again,
    /// since it may hold a secret.
    pub allowed_repos_as_written: String,
    /// The body limit in bytes.
    pub max_body: u64,
    /// Source addresses allowed to call the route; empty allows all.
    pub source_ips: Vec<ipnet::IpNet>,
    /// The template of the dedupe key; when absent the sender's delivery id
    /// is used where the verify method has one.
    pub dedupe_key: Option<template::StringTemplate>,
    /// Coalescing of bursts, if configured.
    pub debounce: Option<Debounce>,
    /// Where this route's permanent failures are reported: `None` means the
    /// top-level `notify` list, and an empty list (`notify: []`) nowhere.
    pub notify: Option<Vec<NotifyTarget>>,
    /// What of a request body this route's templates read; bodies are
    /// parsed to this shape.
    pub body_shape: template::BodyShape,
}

/// An inbound rate limit (token bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// The sustained rate.
    pub per_second: u32,
    /// The bucket size.
    pub burst: u32,
}

/// Coalescing a burst into one dispatch per target (the last payload wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    /// Quiet time after the last request before dispatching.
    pub window: Duration,
    /// The longest a burst may delay its dispatch (default: five minutes, or
    /// the window when that is longer).
    pub max_wait: Duration,
}

/// How a route authenticates its senders.
#[derive(Debug)]
pub enum Verify {
    /// No authentication (`verify: none`); `check` warns about it.
    None,
    /// An HMAC of the raw body.
    Hmac(HmacVerify),
    /// GitHub's `X-Hub-Signature-256`.
    Github {
        /// Accepted secrets; several while rotating.
        secrets: Vec<Secret>,
    },
    /// A header equal to a configured value.
    Token {
        /// The header name, lower-cased.
        header: String,
        /// Accepted values; several while rotating.
        values: Vec<Secret>,
    },
    /// HTTP Basic authentication.
    Basic {
        /// The expected user name.
        username: String,
        /// Accepted passwords; several while rotating.
        passwords: Vec<Secret>,
    },
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`; Svix's `svix-*` names too).
    StandardWebhooks(TimedSecrets),
    /// Contentful's signed canonical request.
    Contentful(TimedSecrets),
    /// Sanity's `sanity-webhook-signature: t=<ms>,v1=<base64url>`.
    Sanity(TimedSecrets),
    /// Ghost's `X-Ghost-Signature: sha256=<hex>, t=<ms>`.
    Ghost(TimedSecrets),
    /// Stripe's scheme, `Stripe-Signature: t=<s>,v1=<hex>`.
    Stripe(TimedSecrets),
    /// Slack's request signing, `X-Slack-Signature: v0=<hex>`.
    Slack(TimedSecrets),
    /// Amazon SNS: an RSA signature over the envelope.
    Sns(SnsVerify),
}

/// Secrets of a scheme that signs a timestamp, and how far that timestamp
/// may be from the relay's clock.
#[derive(Debug)]
pub struct TimedSecrets {
    /// Accepted secrets; several while rotating.
    pub secrets: Vec<Secret>,
    /// The largest accepted distance between the signed timestamp and now,
    /// either way.
    pub tolerance: Duration,
}

/// Settings of the `sns` method.
#[derive(Debug, Default)]
pub struct SnsVerify {
    /// Topics whose messages are accepted; never empty in a loaded
    /// configuration.
    pub topic_arns: Vec<String>,
    /// Local PEM certificates to verify with instead of fetching
    /// `SigningCertURL`; read when the routes are loaded.
    pub certificates: Vec<PinnedCertificate>,
}

/// A certificate file an `sns` route pins, with where routes.yaml names
/// it: the file is read after loading, and a file that cannot be read is
/// reported at that place, as a validation error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedCertificate {
    pub file: PathBuf,
    /// `routes.yaml:LINE:COLUMN`, as validation errors begin.
    pub written_at: String,
}

impl Verify {
    /// The method's name as written in `routes.yaml`.
    pub fn method(&self) -> &'static str {
        match self {
            Verify::None => "none",
            Verify::Hmac(_) => "hmac",
            Verify::Github { .. } => "github",
            Verify::Token { .. } => "token",
            Verify::Basic { .. } => "basic",
            Verify::StandardWebhooks(_) => "standard_webhooks",
            Verify::Contentful(_) => "contentful",
            Verify::Sanity(_) => "sanity",
            Verify::Ghost(_) => "ghost",
            Verify::Stripe(_) => "stripe",
            Verify::Slack(_) => "slack",
            Verify::Sns(_) => "sns",
        }
    }

    /// Whether the method authenticates the sender at all.
    pub fn authenticates(&self) -> bool {
        !matches!(self, Verify::None)
    }
}

/// Settings of the `hmac` method.
#[derive(Debug)]
pub struct HmacVerify {
    /// Accepted secrets; several while rotating.
    pub secrets: Vec<Secret>,
    /// The signature header, lower-cased.
    pub header: String,
    /// The hash function.
    pub algorithm: HmacAlgorithm,
    /// How the signature is written.
    pub encoding: SignatureEncoding,
    /// Text before the signature in the header, such as `sha256=`.
    pub prefix: Option<String>,
}

/// HMAC hash functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmacAlgorithm {
    /// HMAC-SHA1, for older senders.
    Sha1,
    /// HMAC-SHA256 (the default).
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// Encodings of a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureEncoding {
    /// Hexadecimal, either case (the default).
    Hex,
    /// Standard base64.
    Base64,
}

/// One dispatch target of a route.
#[derive(Debug)]
pub struct Target {
    /// The repository, `owner/name`.
    pub repo: RepoSpec,
    /// What is sent to it.
    pub kind: TargetKind,
    /// The fields whose text a `${VAR}` filled in: a message about what one
    /// of them rendered to does not quote it, since the variable may hold a
    /// secret and the message goes back to whoever sent the webhook.
    pub filled_from_variables: Vec<crate::routing::Field>,
}

/// A target's repository.
#[derive(Debug)]
pub enum RepoSpec {
    /// A fixed `owner/name`, checked at load.
    Static(String),
    /// A template, checked against `allowed_repos` on every render.
    Templated(template::StringTemplate),
}

impl RepoSpec {
    /// The repository as written.
    pub fn source(&self) -> &str {
        match self {
            RepoSpec::Static(repo) => repo,
            RepoSpec::Templated(template) => template.source(),
        }
    }
}

/// What a target sends.
#[derive(Debug)]
pub enum TargetKind {
    /// A `repository_dispatch` event.
    Repository {
        /// The event type, 1 to 100 characters once rendered.
        event_type: template::StringTemplate,
        /// The payload, an object of at most 10 keys under 64 KB.
        client_payload: template::ValueTemplate,
    },
    /// A `workflow_dispatch` of one workflow.
    Workflow {
        /// The workflow file name or id.
        workflow: template::StringTemplate,
        /// The branch or tag to run on.
        git_ref: template::StringTemplate,
        /// The inputs, at most 25, each rendered as a string.
        inputs: template::ValueTemplate,
    },
}

/// One configuration error, with the place it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given to [`load`].
    pub file: String,
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1.
    pub column: usize,
    /// The path of the offending value, such as
    /// `routes[1].dispatch[0].event_type`; empty for the whole file.
    pub path: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every error of one load, in file order, with the warnings found beside
/// them, so that one run of `check` says everything there is to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(errors: Vec<ConfigError>) -> Self {
        ConfigErrors {
            errors,
            warnings: Vec::new(),
        }
    }
}

impl fmt::Display for ConfigErrors {
    /// One line each, errors and warnings together in file order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines: Vec<((usize, usize, bool), String)> = self
            .errors
            .iter()
            .map(|e| ((e.line, e.column, false), e.to_string()))
            .chain(
                self.warnings
                    .iter()
                    .map(|w| ((w.line, w.column, true), w.to_string())),
            )
            .collect();
        // Stable, so that errors at one place keep their order.
        lines.sort_by_key(|(at, _)| *at);
        for (i, (_, line)) in lines.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(line)?;
        }
        Ok(())
    }
}

/// A setting that is accepted but deserves the operator's attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file name as given to [`load`].
    pub file: String,
    /// The path of the setting.
    pub path: String,
    /// Why it deserves attention.
    pub message: String,
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1.
    pub column: usize,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As an error is written, so that an editor or a CI matcher that
        // reads `file:line:col:` finds warnings too.
        write!(
            f,
            "{}:{}:{}: warning: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// The text of a configuration file's bytes. A UTF-8 byte order mark, which
/// Windows editors write and YAML allows, is dropped (left in, it reads as
/// a second document). Bytes that are not UTF-8 are placed by
/// `line:column`, which the caller puts after the file's name, as the
/// file's other errors are.
pub fn decode(bytes: Vec<u8>) -> Result<String, String> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_owned(),
            None => text,
        }),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1;
            let byte = e.as_bytes()[valid.len()];
            Err(format!(
                "{line}:{column}: byte 0x{byte:02X} is not UTF-8; save the file as UTF-8"
            ))
        }
    }
}

/// Loads a configuration from the text of `file_name`.
///
/// `env` looks up variables for `${VAR}` substitution and for the
/// `GITHUB_API_URL` override; the caller passes the process environment,
/// tests pass a map.
pub fn load(
    file_name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    validate::load(file_name, text, env)
}

/// A one-line description of the route at `index` for `dispatch-relay
/// check`, such as `blog-cms (hmac) -> acme/blog:cms-{{ body.model }}`. A
/// value set through `${VAR}` is shown as the file writes it (`written`,
/// from [`Loaded`]), since the variable may hold a secret.
pub fn summary(route: &Route, index: usize, written: &BTreeMap<String, String>) -> String {
    let shown = |path: String, value: &str| -> String {
        written
            .get(&path)
            .cloned()
            .unwrap_or_else(|| value.to_owned())
    };
    let targets: Vec<String> = route
        .dispatch
        .iter()
        .enumerate()
        .map(|(t, target)| {
            let at = |key: &str| format!("routes[{index}].dispatch[{t}].{key}");
            let repo = shown(at("repo"), target.repo.source());
            match &target.kind {
                TargetKind::Repository { event_type, .. } => {
                    format!("{repo}:{}", shown(at("event_type"), event_type.source()))
                }
                TargetKind::Workflow {
                    workflow, git_ref, ..
                } => format!(
                    "{repo}:{}@{}",
                    shown(at("workflow"), workflow.source()),
                    shown(at("ref"), git_ref.source())
                ),
            }
        })
        .collect();
    let mut line = format!(
        "{} ({}) -> {}",
        route.id,
        route.verify.method(),
        targets.join(", ")
    );
    if let Some(when) = &route.when {
        let when = shown(format!("routes[{index}].when"), when.source());
        line.push_str(&format!(" when {when}"));
    }
    line
}

/// Why a store url names no SQLite file. It says what is wrong without
/// quoting the url, which may hold a password.
#[derive(Debug, thiserror::Error)]
#[error("invalid store url: {0}; expected sqlite:PATH")]
pub struct BadStoreUrl(String);

/// The file a store url names: `sqlite:PATH`, `sqlite://PATH` or a bare
/// path. The message of a refusal never quotes the url, which may hold a
/// password.
pub fn sqlite_file(url: &str) -> Result<&str, BadStoreUrl> {
    let raw = if let Some(rest) = url.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        rest
    } else if let Some((scheme, _)) = url.split_once("://") {
        return Err(BadStoreUrl(format!(
            "the scheme `{scheme}` is not supported (the store is SQLite only)"
        )));
    } else {
        url
    };
    if raw.is_empty() {
        return Err(BadStoreUrl("it names no file".to_string()));
    }
    // `sqlite://user:password@host/file` is not a file name: refused
    // without being quoted, since it holds a password. (A file name may hold
    // an `@`, as in `sqlite://backup@2024.db`; a `:` before it may not.)
    let first_segment = raw.split('/').next().unwrap_or("");
    if url.starts_with("sqlite://")
        && first_segment
            .split_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
    {
        return Err(BadStoreUrl(
            "it names a user or a host; a SQLite store is a file (`sqlite:PATH`)".to_string(),
        ));
    }
    Ok(raw)
}

/// The text as YAML, when it is; a file nested too deep is not read (see
/// [`locate::nested_too_deep`]).
fn any_yaml(text: &str) -> Option<serde_norway::Value> {
    if locate::nested_too_deep(text).is_some() {
        return None;
    }
    serde_norway::from_str(text).ok()
}

/// The ids of the routes in routes.yaml, read without loading the rest
/// (whose secrets a listing command need not have): `None` when the text
/// is not YAML with a `routes` list.
pub fn route_ids(text: &str) -> Option<Vec<String>> {
    let value = any_yaml(text)?;
    let routes = value.get("routes")?.as_sequence()?;
    Some(
        routes
            .iter()
            .filter_map(|route| route.get("id")?.as_str().map(str::to_owned))
            .collect(),
    )
}

/// Reads `store.url` from the text without validating the rest, so that the
/// inspection commands find the store even where the configuration's
/// secrets are not set. `${VAR}` in it is substituted as `serve` does; an
/// unset variable is an error, since the store's place is then unknown.
pub fn store_url(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let Some(value) = any_yaml(text) else {
        return Ok(None);
    };
    match value
        .get("store")
        .and_then(|s| s.get("url"))
        .and_then(|u| u.as_str())
    {
        None => Ok(None),
        Some(url) => env::substitute(url, env)
            .map(Some)
            .map_err(|e| format!("store.url: {e}")),
    }
}
