//! An in-process fake of the GitHub REST API that the integration tests and the benchmarks point
//! the relay at. It owns everything a test needs to stand in for api.github.com: a real HTTP
//! server on a loopback port, request matching and validation against GitHub's own OpenAPI
//! description (`tests/fixtures/github/openapi-subset.json`), GitHub's status codes, headers and
//! error bodies, the state a test sets up (tokens, repositories, a GitHub App and its
//! installations, latency, scripted failures), and the record of what the relay sent. Anything
//! the relay does that real GitHub would reject or that the description does not allow is kept as
//! a violation, and a fake dropped with violations it was not told to expect fails the test
//! that dropped it, so that no path of the relay sends what GitHub would refuse unseen. The file depends
//! on nothing else in the test tree, so a bench binary can include it with
//! `#[path = "..."] mod fake_github;`.

// A bench binary or a test suite uses only part of this API, and that must not warn.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use jsonschema::Validator;
use rand::Rng;
use serde_json::{Map, Value, json};

/// Where the OpenAPI description lives. The path is relative to the crate root, so the file works
/// unchanged from the test tree and from a bench binary of the same crate.
const SPEC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/github/openapi-subset.json"
);

/// The API version the relay must pin. GitHub answers unpinned requests with this version too,
/// but the relay pinning it is what keeps it safe from future breaking changes.
pub const API_VERSION: &str = "2022-11-28";

/// The versions GitHub currently accepts; any other value is refused with a 400.
const SUPPORTED_API_VERSIONS: &[&str] = &["2022-11-28", "2026-03-10"];

/// The documentation link GitHub puts on errors that are not tied to one operation.
const GENERIC_DOCS: &str = "https://docs.github.com/rest";
const PRIMARY_LIMIT_DOCS: &str =
    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
const SECONDARY_LIMIT_DOCS: &str = "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits";

/// GitHub's hourly allowance for an authenticated user on the `core` resource.
const RATE_LIMIT: u64 = 5000;

/// How long a `Scripted::Hang` holds its request. It only has to outlast any sensible client
/// timeout; dropping the fake ends it sooner.
const HANG_FOR: Duration = Duration::from_secs(3600);

/// How long an installation token lives unless a test says otherwise; GitHub's tokens last an hour.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// GitHub refuses App JWTs that expire more than ten minutes ahead of its clock. It documents
/// no limit on `exp - iat`: its own example backdates `iat` by a minute and sets `exp` ten
/// minutes ahead.
const MAX_JWT_LIFETIME_SECS: i64 = 600;

/// The two operations that carry dispatches; scripted answers apply to them only.
const OP_REPOSITORY_DISPATCH: &str = "repos/create-dispatch-event";
const OP_WORKFLOW_DISPATCH: &str = "actions/create-workflow-dispatch";
const OP_GET_REPO_INSTALLATION: &str = "apps/get-repo-installation";
const OP_CREATE_INSTALLATION_TOKEN: &str = "apps/create-installation-access-token";
const OP_GET_REPO: &str = "repos/get";
const OP_CREATE_FROM_MANIFEST: &str = "apps/create-from-manifest";

/// The private key of the test App, which the manifest conversion hands out.
pub const TEST_APP_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/app/test-app.pem"
);
/// Its public key, for `enable_app`.
pub const TEST_APP_PUBLIC_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/app/test-app.pub.pem"
);

/// An answer a test queues for the next dispatch to one repository, to exercise the relay's
/// handling of GitHub's failure modes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// Answer with this status and a GitHub-like body for it (500, 502, 503, 504, ...). A 2xx
    /// status answers with an empty body and counts as a successful dispatch.
    Status(u16),
    /// A 503 carrying `retry-after`, as a server asks to be left alone for a while.
    Unavailable { retry_after_secs: u64 },
    /// A 429 carrying `retry-after`, which is how GitHub signals some secondary limits.
    RateLimited { retry_after_secs: u64 },
    /// A 403 with `x-ratelimit-remaining: 0` and `x-ratelimit-reset` this many seconds ahead.
    PrimaryRateLimit { reset_in_secs: u64 },
    /// A successful dispatch (204) that spends the last request of the primary limit: it
    /// says `x-ratelimit-remaining: 0` and `x-ratelimit-reset` this many seconds ahead, and
    /// any request of its credential before the reset is refused, as GitHub does.
    LastOfTheLimit { reset_in_secs: u64 },
    /// The same primary limit answered with 429, which GitHub also uses for it.
    PrimaryRateLimitTooMany { reset_in_secs: u64 },
    /// A 403 with GitHub's secondary-rate-limit message, with `retry-after` when given.
    SecondaryRateLimit { retry_after_secs: Option<u64> },
    /// A 422 whose message is this text.
    Unprocessable(String),
    /// No answer at all for far longer than any client timeout.
    Hang,
    /// A 200 whose JSON body starts but never finishes, as when the connection stalls after
    /// the status line: the dispatch happened, its details never arrive.
    StalledBody,
    /// The 404 GitHub gives for a repository the token cannot see.
    NotFound,
    /// The 401 GitHub gives for an unknown or revoked token.
    BadCredentials,
    /// The 403 GitHub gives a personal access token not authorized for an organization that
    /// enforces SAML single sign-on, with `x-github-sso` naming where to authorize it.
    SamlEnforced,
    /// An HTML error page of this status from a proxy in front of GitHub, that never ends:
    /// a client that reads a body whole before bounding it never gets past it.
    ProxyPage { status: u16 },
    /// An error of this status from a proxy that quotes the request's `Authorization` header
    /// back in its body, as debugging proxies do.
    EchoingProxy { status: u16 },
    /// The 404 page of GitHub's web front, which an `api_url` without `/api/v3` reaches on
    /// GitHub Enterprise Server: HTML, with the `x-github-request-id` every GitHub answer has.
    WebFrontNotFound,
    /// A redirect of this status to `location`, as a proxy or a misconfigured front might
    /// send, unlike GitHub's own redirect of a renamed repository (which
    /// [`FakeGitHub::rename_repo`] plays).
    Redirect { status: u16, location: String },
}

impl Scripted {
    /// How long this answer tells the client to hold back every request of its credential:
    /// `retry-after`, the time left to `x-ratelimit-reset` (a whole second on GitHub's clock,
    /// read against `since_epoch`), or the minute GitHub asks for after a secondary limit that
    /// names no time. `None` for answers that are not rate limits.
    fn announced_wait(&self, since_epoch: Duration) -> Option<Duration> {
        match self {
            Scripted::RateLimited { retry_after_secs }
            | Scripted::SecondaryRateLimit {
                retry_after_secs: Some(retry_after_secs),
            } => Some(Duration::from_secs(*retry_after_secs)),
            Scripted::SecondaryRateLimit {
                retry_after_secs: None,
            } => Some(Duration::from_secs(60)),
            Scripted::PrimaryRateLimit { reset_in_secs }
            | Scripted::PrimaryRateLimitTooMany { reset_in_secs }
            | Scripted::LastOfTheLimit { reset_in_secs } => Some(
                Duration::from_secs(*reset_in_secs)
                    .saturating_sub(Duration::from_nanos(since_epoch.subsec_nanos().into())),
            ),
            _ => None,
        }
    }

    /// The same rate limit, announcing `secs` more seconds of waiting.
    fn with_wait(&self, secs: u64) -> Scripted {
        match self {
            Scripted::RateLimited { .. } => Scripted::RateLimited {
                retry_after_secs: secs,
            },
            Scripted::SecondaryRateLimit {
                retry_after_secs: Some(_),
            } => Scripted::SecondaryRateLimit {
                retry_after_secs: Some(secs),
            },
            // A request after the last one of the limit is refused by the limit itself.
            Scripted::PrimaryRateLimit { .. } | Scripted::LastOfTheLimit { .. } => {
                Scripted::PrimaryRateLimit {
                    reset_in_secs: secs,
                }
            }
            Scripted::PrimaryRateLimitTooMany { .. } => Scripted::PrimaryRateLimitTooMany {
                reset_in_secs: secs,
            },
            other => other.clone(),
        }
    }
}

/// The kind of request a scripted answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ScriptedOn {
    /// A dispatch of either kind, by repository.
    Dispatch,
    /// `GET /repos/{owner}/{repo}`, by repository.
    Repository,
    /// The App's lookup of a repository's installation, by repository.
    InstallationLookup,
    /// The App's request for an installation token, by installation id.
    TokenRequest,
}

/// A rate limit the fake announced. Until it ends, GitHub refuses every request of the
/// credential it holds back, and a client that sends one did not wait as it was told.
#[derive(Debug)]
struct Hold {
    until: Instant,
    limit: Scripted,
}

/// How near the end of a rate limit's wait a request may come without being refused.
const HOLD_ROUNDING: Duration = Duration::from_millis(100);

impl Grant {
    /// A personal access token's: it sees every repository and never expires.
    fn personal(permissions: Option<Map<String, Value>>) -> Grant {
        Grant {
            installation_id: None,
            expires_at: None,
            repositories: None,
            permissions,
            scopes: None,
        }
    }
}

/// Whom a rate limit holds back, as GitHub counts: an installation (every token minted for it
/// alike), any other token, or the App itself for requests signed with its JWT.
fn held_credential(shared: &Shared, req: &HttpRequest) -> Option<String> {
    let Credential::Token(token) = credential(req) else {
        return None;
    };
    match lock(&shared.tokens).get(&token) {
        Some(Grant {
            installation_id: Some(id),
            ..
        }) => Some(format!("installation {id}")),
        Some(_) => Some(format!("token {token}")),
        // A JWT is three dot-separated parts; no token the fake hands out has three.
        None if token.split('.').count() == 3 => Some("app".to_owned()),
        None => None,
    }
}

/// Requests to one path, held by [`FakeGitHub::hold`] until the test opens the gate.
pub struct Gate(Arc<GateState>);

struct GateState {
    method: String,
    path: String,
    open: tokio::sync::watch::Sender<bool>,
    /// How many requests have reached the gate, held or not.
    arrived: tokio::sync::watch::Sender<usize>,
}

impl GateState {
    /// Lets a request through once the gate is open.
    async fn pass(&self) {
        let mut open = self.open.subscribe();
        self.arrived.send_modify(|n| *n += 1);
        // The sender lives as long as this state, so waiting cannot fail.
        let _ = open.wait_for(|open| *open).await;
    }
}

impl Gate {
    /// Waits until `n` requests have reached the gate, or panics after `deadline`.
    pub async fn wait_for_arrivals(&self, n: usize, deadline: Duration) {
        let mut arrived = self.0.arrived.subscribe();
        let reached = tokio::time::timeout(deadline, arrived.wait_for(|count| *count >= n)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "{n} requests to {} {} were expected at the gate within {deadline:?}, {} came",
            self.0.method,
            self.0.path,
            *self.0.arrived.borrow()
        );
    }

    /// Lets every held request and every later one through.
    pub fn open(&self) {
        self.0.open.send_replace(true);
    }
}

/// One request the fake received, with the status it answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path without the query string, exactly as sent (still percent-encoded).
    pub path: String,
    /// The query string, without the `?`, when there was one.
    pub query: Option<String>,
    /// The operationId of the documented operation the request matched, if any.
    pub operation_id: Option<String>,
    /// Header names are lower-case, in the order they arrived.
    pub headers: Vec<(String, String)>,
    /// The body when it parsed as JSON.
    pub body: Option<Value>,
    pub received_at: Instant,
    /// The status the fake answered with; 0 means it never answered (`Scripted::Hang`).
    pub status: u16,
}

impl RecordedRequest {
    /// The first value of a header, looked up case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this was a repository_dispatch or workflow_dispatch request.
    pub fn is_dispatch(&self) -> bool {
        matches!(
            self.operation_id.as_deref(),
            Some(OP_REPOSITORY_DISPATCH | OP_WORKFLOW_DISPATCH)
        )
    }

    fn is_successful_dispatch(&self) -> bool {
        self.is_dispatch() && (200..300).contains(&self.status)
    }
}

/// The client id the fake gives the App `app_id`, in GitHub's form (`Iv23li...`).
pub fn app_client_id(app_id: u64) -> String {
    format!("Iv23li{app_id:014x}")
}

/// A workflow file a test declared.
#[derive(Debug, Clone)]
struct Workflow {
    file: String,
    refs: Vec<String>,
    inputs: Vec<String>,
}

/// A running fake. Dropping it stops the server.
pub struct FakeGitHub {
    url: String,
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
    /// Behind a mutex only so that the fake is `Sync` and can be shared between tasks.
    stopped: Mutex<mpsc::Receiver<()>>,
    /// Set by a test that sends what GitHub refuses on purpose.
    violations_expected: std::sync::atomic::AtomicBool,
}

impl FakeGitHub {
    /// Binds `127.0.0.1:0` and serves in the background until the value is dropped.
    ///
    /// The server runs on a thread of its own under its own actix System. That keeps it
    /// independent of the test's runtime flavour, and it keeps serving while a test blocks its
    /// own runtime or while the relay's requests hang.
    pub async fn start() -> FakeGitHub {
        let shared = Arc::new(Shared::new(spec()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stopped_tx, stopped_rx) = mpsc::channel();
        let for_server = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("fake-github".into())
            .spawn(move || {
                let system = actix_web::rt::System::new();
                let result = system.block_on(async move {
                    let data = web::Data::from(for_server);
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
                            .default_service(web::to(handle))
                    })
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .bind(("127.0.0.1", 0))?;
                    let addr: SocketAddr = server.addrs()[0];
                    let server = server.run();
                    // The receiver only disappears if the starting test was cancelled, in which
                    // case serving on is harmless until the process ends.
                    let _ = ready_tx.send((addr, server.handle()));
                    server.await
                });
                if let Err(error) = result {
                    eprintln!("fake GitHub server stopped with an error: {error}");
                }
                let _ = stopped_tx.send(());
            })
            .expect("spawn the fake GitHub server thread");
        let (addr, handle) = ready_rx
            .await
            .expect("the fake GitHub server failed to bind 127.0.0.1:0");
        let url = format!("http://{addr}");
        shared
            .base_url
            .set(url.clone())
            .expect("base URL is set once");
        FakeGitHub {
            url,
            shared,
            handle,
            stopped: Mutex::new(stopped_rx),
            violations_expected: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The base URL to give the relay as `GITHUB_API_URL`, like `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Accepts this personal access token (sent as `Bearer` or `token`) from now on.
    pub fn add_token(&self, token: &str) {
        self.add_personal_token(token, None);
    }

    /// Accepts this fine-grained personal access token with read-only access
    /// to contents: it sees repositories but may not dispatch to them.
    pub fn add_read_only_token(&self, token: &str) {
        let permissions = json!({"contents": "read", "metadata": "read"});
        self.add_personal_token(token, permissions.as_object().cloned());
    }

    /// Accepts this classic personal access token with `scopes`. Every repository of the fake
    /// is private, so without `repo` GitHub answers it 404 for each, as for one that does not
    /// exist; every answer names its scopes in `x-oauth-scopes`.
    pub fn add_classic_token(&self, token: &str, scopes: &[&str]) {
        let grant = Grant {
            scopes: Some(scopes.iter().map(|s| (*s).to_owned()).collect()),
            ..Grant::personal(None)
        };
        lock(&self.shared.tokens).insert(token.to_owned(), grant);
    }

    fn add_personal_token(&self, token: &str, permissions: Option<Map<String, Value>>) {
        lock(&self.shared.tokens).insert(token.to_owned(), Grant::personal(permissions));
    }

    /// Renames (or transfers) `former` to `now`, as a repository's owner can: `now` exists
    /// from here on, with what the test gave `former` (its installation and workflows), and
    /// GitHub redirects every request that names `former` to the repository's id.
    pub fn rename_repo(&self, former: &str, now: &str) {
        let (former_key, now_key) = (repo_key(former), repo_key(now));
        lock(&self.shared.repos).remove(&former_key);
        lock(&self.shared.repos).insert(now_key.clone());
        {
            let mut installations = lock(&self.shared.installations);
            if let Some(id) = installations.remove(&former_key) {
                installations.insert(now_key.clone(), id);
            }
        }
        {
            let mut workflows = lock(&self.shared.workflows);
            if let Some(declared) = workflows.remove(&former_key) {
                workflows.insert(now_key.clone(), declared);
            }
        }
        {
            let mut ids = lock(&self.shared.repository_ids);
            let next = 100_000 + ids.len() as u64;
            ids.entry(now.to_owned()).or_insert(next);
        }
        lock(&self.shared.moved).insert(former_key, now.to_owned());
    }

    /// Makes `owner/name` exist. Names are matched case-insensitively, as on GitHub.
    pub fn add_repo(&self, full_name: &str) {
        lock(&self.shared.repos).insert(repo_key(full_name));
    }

    /// Declares a workflow file of `owner/name`, dispatchable on `refs` with `inputs`. Once a
    /// repository has one, the fake answers as GitHub does for the others: 404 for a workflow
    /// the repository does not have, 422 for a ref it lacks or an input the workflow does not
    /// define. A repository with none takes any workflow.
    pub fn add_workflow(&self, full_name: &str, file: &str, refs: &[&str], inputs: &[&str]) {
        let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        lock(&self.shared.workflows)
            .entry(repo_key(full_name))
            .or_default()
            .push(Workflow {
                file: file.to_owned(),
                refs: owned(refs),
                inputs: owned(inputs),
            });
    }

    /// Delays every answer by this much, to keep requests in flight.
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.shared.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Holds every `method` request to `path` (as sent, without the query) until the gate is
    /// opened, so that a test can order what the relay does meanwhile. A held request is
    /// answered as usual once the gate opens; its arrival is what is recorded.
    pub fn hold(&self, method: &str, path: &str) -> Gate {
        let (open, _) = tokio::sync::watch::channel(false);
        let state = Arc::new(GateState {
            method: method.to_owned(),
            path: path.to_owned(),
            open,
            arrived: tokio::sync::watch::channel(0).0,
        });
        lock(&self.shared.gates).push(Arc::clone(&state));
        Gate(state)
    }

    /// Queues answers for the next dispatches (of either kind) to `owner/name`. They are used in
    /// order, one per request, after which normal behaviour resumes. Requests that GitHub would
    /// reject before reaching the repository (bad JSON, schema failures, missing `User-Agent`) do
    /// not use up a scripted answer.
    pub fn push_responses(&self, full_name: &str, answers: Vec<Scripted>) {
        self.shared
            .push_scripts(ScriptedOn::Dispatch, repo_key(full_name), answers);
    }

    /// Queues answers for the next `GET /repos/{owner}/{repo}` of `owner/name` (the preflight's
    /// request), used as [`FakeGitHub::push_responses`] uses its own.
    pub fn push_repo_responses(&self, full_name: &str, answers: Vec<Scripted>) {
        self.shared
            .push_scripts(ScriptedOn::Repository, repo_key(full_name), answers);
    }

    /// Counts `used` requests of the token's hour as spent, as another
    /// client of the same token would: the next answer says the rest.
    pub fn spend_rate(&self, used: u64) {
        lock(&self.shared.rate).used = used;
    }

    /// Queues answers for the App's next lookups of the installation that holds `owner/name`,
    /// given once GitHub has verified the App's JWT.
    pub fn push_installation_lookup_responses(&self, full_name: &str, answers: Vec<Scripted>) {
        self.shared
            .push_scripts(ScriptedOn::InstallationLookup, repo_key(full_name), answers);
    }

    /// Queues answers for the App's next token requests for installation `installation_id`,
    /// given once GitHub has verified the App's JWT.
    pub fn push_token_responses(&self, installation_id: u64, answers: Vec<Scripted>) {
        self.shared.push_scripts(
            ScriptedOn::TokenRequest,
            installation_id.to_string(),
            answers,
        );
    }

    /// Lets the GitHub App with this id authenticate with RS256 JWTs signed by the private key
    /// matching `public_key_pem`.
    pub fn enable_app(&self, app_id: u64, public_key_pem: &str) {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
            .expect("enable_app needs an RSA public key in PEM form");
        let client_id = app_client_id(app_id);
        *lock(&self.shared.app) = Some(AppConfig {
            app_id,
            client_id,
            key,
        });
    }

    /// The client id of the App `enable_app` set up, which GitHub accepts as a JWT's `iss` as
    /// well as the App id.
    pub fn app_client_id(&self) -> String {
        lock(&self.shared.app)
            .as_ref()
            .map(|app| app.client_id.clone())
            .expect("enable_app first")
    }

    /// Installs the App on `owner/name` (which also makes the repository exist). Installation
    /// tokens minted for `installation_id` can dispatch to every repository installed under it.
    pub fn add_installation(&self, full_name: &str, installation_id: u64) {
        let key = repo_key(full_name);
        lock(&self.shared.repos).insert(key.clone());
        lock(&self.shared.installations).insert(key, installation_id);
    }

    /// Suspends installation `installation_id`: GitHub still finds it for its repositories,
    /// saying when and by whom it was suspended, and answers every token request for it
    /// `403 This installation has been suspended`.
    pub fn suspend_installation(&self, installation_id: u64) {
        lock(&self.shared.suspended).insert(installation_id);
    }

    /// How long installation tokens minted from now on stay valid.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.shared.token_lifetime) = lifetime;
    }

    /// Limits what installation `installation_id` was granted, e.g.
    /// `{"contents": "write", "metadata": "read"}`; token requests asking for more are refused
    /// with GitHub's 422.
    pub fn set_installation_permissions(&self, installation_id: u64, permissions: Value) {
        let Value::Object(map) = permissions else {
            panic!("permissions are a JSON object");
        };
        lock(&self.shared.installation_permissions).insert(installation_id, map);
    }

    /// Issues installation tokens in GitHub's newer long format (hundreds of characters) instead
    /// of the classic 40-character `ghs_` form.
    pub fn set_long_tokens(&self, long: bool) {
        self.shared.long_tokens.store(long, Ordering::Relaxed);
    }

    /// Refuses workflow dispatches that carry `return_run_details`, as GitHub Enterprise Server
    /// releases from before the field do (422).
    pub fn set_reject_run_details(&self, reject: bool) {
        self.shared
            .reject_run_details
            .store(reject, Ordering::Relaxed);
    }

    /// Moves the fake's clock this many seconds ahead of the host's (negative: behind). It
    /// applies to JWT checks and to the `Date` header.
    pub fn set_clock_offset(&self, secs: i64) {
        self.shared.clock_offset_secs.store(secs, Ordering::Relaxed);
    }

    /// Makes every installation token issued so far expire now.
    pub fn expire_installation_tokens(&self) {
        let now = SystemTime::now() - Duration::from_secs(1);
        for grant in lock(&self.shared.tokens).values_mut() {
            if grant.installation_id.is_some() {
                grant.expires_at = Some(now);
            }
        }
    }

    /// The requests of one documented operation, e.g. `apps/create-installation-access-token`.
    pub fn requests_of(&self, operation_id: &str) -> Vec<RecordedRequest> {
        lock(&self.shared.log)
            .requests
            .iter()
            .filter(|r| r.operation_id.as_deref() == Some(operation_id))
            .cloned()
            .collect()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).requests.clone()
    }

    /// Every dispatch request, whatever it was answered (other operations,
    /// such as the relay's start-up preflight reads, are left out).
    pub fn dispatch_attempts(&self) -> Vec<RecordedRequest> {
        self.requests_where(RecordedRequest::is_dispatch)
    }

    /// Waits until a dispatch request has arrived, however it will be
    /// answered: with a latency set, one that is in flight.
    pub async fn wait_for_a_dispatch_attempt(&self, deadline: Duration) {
        let start = std::time::Instant::now();
        while self.dispatch_attempts().is_empty() {
            assert!(start.elapsed() < deadline, "the dispatch never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Only the dispatch requests that were answered with a 2xx.
    pub fn dispatches(&self) -> Vec<RecordedRequest> {
        self.requests_where(RecordedRequest::is_successful_dispatch)
    }

    /// How many `repository_dispatch` requests to `owner/name` were tried.
    pub fn dispatch_attempts_to(&self, repo: &str) -> usize {
        let path = format!("/repos/{repo}/dispatches");
        self.dispatch_attempts()
            .iter()
            .filter(|d| d.path == path)
            .count()
    }

    /// How many `repository_dispatch` requests to `owner/name` succeeded.
    pub fn dispatches_to(&self, repo: &str) -> usize {
        let path = format!("/repos/{repo}/dispatches");
        self.dispatches().iter().filter(|d| d.path == path).count()
    }

    fn requests_where(&self, keep: impl Fn(&RecordedRequest) -> bool) -> Vec<RecordedRequest> {
        lock(&self.shared.log)
            .requests
            .iter()
            .filter(|r| keep(r))
            .cloned()
            .collect()
    }

    /// How many dispatch requests were answered with a 2xx, without copying the record; the
    /// benchmarks poll it while a deep queue drains.
    pub fn dispatch_count(&self) -> usize {
        lock(&self.shared.log).successful_dispatches
    }

    /// Everything the relay did that GitHub or its API description does not allow.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.shared.log).violations.clone()
    }

    /// Dispatch requests received so far, counted on arrival: one that is
    /// still waiting for its answer is counted.
    pub fn dispatches_received(&self) -> u64 {
        self.shared.dispatches_received.load(Ordering::SeqCst)
    }

    /// The most requests the fake was answering at once.
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Lets the fake be dropped with violations: for a test that sends GitHub what it refuses
    /// on purpose, and checks the violations itself.
    pub fn expect_violations(&self) {
        self.violations_expected.store(true, Ordering::Relaxed);
    }

    /// Forgets recorded requests, violations and queued scripted answers. Tokens, repositories,
    /// the App and latency stay as they are.
    pub fn clear(&self) {
        let mut log = lock(&self.shared.log);
        log.requests.clear();
        log.violations.clear();
        log.successful_dispatches = 0;
        drop(log);
        lock(&self.shared.scripts).clear();
        lock(&self.shared.holds).clear();
    }

    /// Waits until at least `n` successful dispatches have been recorded and returns them all,
    /// or panics after `deadline` saying how many arrived and what the last requests were.
    pub async fn wait_for_dispatches(&self, n: usize, deadline: Duration) -> Vec<RecordedRequest> {
        match self.try_wait_for_dispatches(n, deadline).await {
            Ok(dispatches) => dispatches,
            Err(message) => panic!("{message}"),
        }
    }

    /// Like [`FakeGitHub::wait_for_dispatches`], but returns the explanation instead of panicking.
    pub async fn try_wait_for_dispatches(
        &self,
        n: usize,
        deadline: Duration,
    ) -> Result<Vec<RecordedRequest>, String> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // The waiter is registered before the count is read, so a request recorded between
            // the read and the await still wakes this loop.
            let notified = self.shared.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.shared.log).successful_dispatches >= n {
                return Ok(self.dispatches());
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return Err(self.describe_shortfall(n, deadline));
            }
        }
    }

    fn describe_shortfall(&self, n: usize, deadline: Duration) -> String {
        let log = lock(&self.shared.log);
        let arrived = log.successful_dispatches;
        let mut message = format!(
            "expected {n} successful dispatches within {deadline:?}, but {arrived} arrived \
             ({} requests in all)",
            log.requests.len()
        );
        let last = log.requests.len().saturating_sub(5);
        if log.requests.is_empty() {
            message.push_str("; no requests reached the fake");
        } else {
            message.push_str("; last requests:");
            for r in &log.requests[last..] {
                let _ = write!(message, "\n  {} {} -> {}", r.method, r.path, r.status);
                if let Some(body) = &r.body {
                    let _ = write!(message, " {body}");
                }
            }
        }
        if !log.violations.is_empty() {
            let _ = write!(message, "\nviolations: {:#?}", log.violations);
        }
        message
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        // A forced stop drops in-flight requests, including hung ones. The stop command is sent
        // when `stop` is called; its future only reports completion, so it need not be polled.
        drop(self.handle.stop(false));
        // Waiting for the thread makes the port reliably free afterwards, but a bounded wait
        // keeps a stuck shutdown from hanging the test.
        let _ = lock(&self.stopped).recv_timeout(Duration::from_secs(5));
        // Every test checks, on its way out, that nothing it made the relay send would have been
        // refused by GitHub. A test that already failed keeps its own message.
        if !std::thread::panicking() && !self.violations_expected.load(Ordering::Relaxed) {
            let violations = self.violations();
            assert!(
                violations.is_empty(),
                "the relay sent requests GitHub would refuse: {violations:#?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The API description, compiled once per process.

/// One documented operation with its validators compiled.
struct Operation {
    method: String,
    /// Path template split on `/`; `Some(name)` marks a `{name}` parameter segment.
    segments: Vec<Segment>,
    operation_id: String,
    docs_url: String,
    path_params: Vec<(String, Validator)>,
    /// The documented query parameters, with their schemas.
    query_params: Vec<(String, Validator)>,
    body: Option<BodySpec>,
    /// Compiled schemas of the documented JSON responses, by status, used to check that the fake
    /// itself only sends what GitHub documents.
    responses: HashMap<u16, Validator>,
}

enum Segment {
    Literal(String),
    Param(String),
}

struct BodySpec {
    required: bool,
    validator: Validator,
}

struct Spec {
    operations: Vec<Operation>,
}

fn spec() -> Arc<Spec> {
    static SPEC: OnceLock<Arc<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| Arc::new(Spec::load())).clone()
}

impl Spec {
    fn load() -> Spec {
        let text = std::fs::read_to_string(SPEC_PATH)
            .unwrap_or_else(|e| panic!("read the OpenAPI description at {SPEC_PATH}: {e}"));
        let doc: Value = serde_json::from_str(&text).expect("the OpenAPI description is JSON");
        // Every compiled schema carries the converted components, so `$ref`s into
        // `#/components/...` resolve inside the schema's own document.
        let components = convert_components(&doc["components"]);
        let mut operations = Vec::new();
        for (template, item) in doc["paths"].as_object().expect("paths is an object") {
            let item = item.as_object().expect("a path item is an object");
            for (method, op) in item {
                if !matches!(
                    method.as_str(),
                    "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
                ) {
                    continue;
                }
                operations.push(Operation::compile(
                    &doc,
                    &components,
                    template,
                    method,
                    op,
                    item.get("parameters"),
                ));
            }
        }
        // A literal segment is more specific than a parameter, so operations with more literals
        // are tried first, the way GitHub's router prefers them.
        operations.sort_by_key(|op| {
            std::cmp::Reverse(
                op.segments
                    .iter()
                    .filter(|s| matches!(s, Segment::Literal(_)))
                    .count(),
            )
        });
        Spec { operations }
    }

    /// Finds the operation for a method and raw path, with the decoded path parameters.
    fn find(&self, method: &str, path: &str) -> Option<(&Operation, Vec<(String, String)>)> {
        let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        'ops: for op in &self.operations {
            if !op.method.eq_ignore_ascii_case(method) || op.segments.len() != parts.len() {
                continue;
            }
            let mut params = Vec::new();
            for (segment, part) in op.segments.iter().zip(&parts) {
                match segment {
                    Segment::Literal(literal) if literal == part => {}
                    Segment::Param(name) if !part.is_empty() => {
                        params.push((name.clone(), percent_decode(part)));
                    }
                    _ => continue 'ops,
                }
            }
            return Some((op, params));
        }
        None
    }
}

impl Operation {
    fn compile(
        doc: &Value,
        components: &Value,
        template: &str,
        method: &str,
        op: &Value,
        shared_params: Option<&Value>,
    ) -> Operation {
        let operation_id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {template} has no operationId"))
            .to_owned();
        let segments = template
            .trim_start_matches('/')
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => Segment::Param(name.to_owned()),
                    None => Segment::Literal(s.to_owned()),
                },
            )
            .collect();
        let mut path_params = Vec::new();
        let mut query_params = Vec::new();
        let params = shared_params
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(op["parameters"].as_array().into_iter().flatten());
        for param in params {
            let param = resolve(doc, param);
            let list = match param["in"].as_str() {
                Some("path") => &mut path_params,
                Some("query") => &mut query_params,
                _ => continue,
            };
            if let (Some(name), Some(schema)) = (param["name"].as_str(), param.get("schema")) {
                list.push((name.to_owned(), compile_schema(schema, components)));
            }
        }
        let body = op.get("requestBody").map(|body| {
            let body = resolve(doc, body);
            let schema = &body["content"]["application/json"]["schema"];
            BodySpec {
                required: body["required"].as_bool().unwrap_or(false),
                validator: compile_schema(schema, components),
            }
        });
        let mut responses = HashMap::new();
        if let Some(documented) = op["responses"].as_object() {
            for (status, response) in documented {
                let response = resolve(doc, response);
                let schema = &response["content"]["application/json"]["schema"];
                if let (Ok(status), false) = (status.parse::<u16>(), schema.is_null()) {
                    responses.insert(status, compile_schema(schema, components));
                }
            }
        }
        Operation {
            method: method.to_owned(),
            segments,
            docs_url: op["externalDocs"]["url"]
                .as_str()
                .unwrap_or(GENERIC_DOCS)
                .to_owned(),
            operation_id,
            path_params,
            query_params,
            body,
            responses,
        }
    }

    fn is_dispatch(&self) -> bool {
        matches!(
            self.operation_id.as_str(),
            OP_REPOSITORY_DISPATCH | OP_WORKFLOW_DISPATCH
        )
    }
}

/// Follows a `$ref` to a component object (parameters, request bodies, responses).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local references are supported: {reference}"));
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("unresolved reference {reference}")),
            )
        }
        None => value,
    }
}

/// Compiles an OpenAPI 3.0 schema as JSON Schema draft 4, which OpenAPI 3.0 schemas are based on.
fn compile_schema(schema: &Value, components: &Value) -> Validator {
    // Wrapping the schema in `allOf` lets `components` sit beside it without being a sibling of
    // a `$ref`, which draft 4 would ignore.
    let document = json!({
        "allOf": [convert_schema(schema)],
        "components": components,
    });
    jsonschema::draft4::options()
        .build(&document)
        .unwrap_or_else(|e| panic!("compile schema {schema}: {e}"))
}

fn convert_components(components: &Value) -> Value {
    let schemas = components["schemas"]
        .as_object()
        .map(|schemas| {
            schemas
                .iter()
                .map(|(name, schema)| (name.clone(), convert_schema(schema)))
                .collect::<Map<_, _>>()
        })
        .unwrap_or_default();
    json!({ "schemas": schemas })
}

/// Turns an OpenAPI 3.0 schema object into draft 4 JSON Schema. OpenAPI's `nullable: true`
/// becomes an `anyOf` with `null`, siblings of `$ref` are dropped as OpenAPI 3.0 says, and
/// annotation-only keywords that draft 4 does not know are removed. The walk follows the schema's
/// structure so that a property that happens to be named `nullable` is left alone.
fn convert_schema(schema: &Value) -> Value {
    let Some(object) = schema.as_object() else {
        return schema.clone();
    };
    if let Some(reference) = object.get("$ref") {
        return json!({ "$ref": reference });
    }
    let mut out = Map::new();
    let mut nullable = false;
    for (key, value) in object {
        let converted = match key.as_str() {
            "nullable" => {
                nullable = value.as_bool().unwrap_or(false);
                continue;
            }
            "example" | "examples" | "discriminator" | "xml" | "externalDocs" | "deprecated"
            | "readOnly" | "writeOnly" => continue,
            k if k.starts_with("x-") => continue,
            "properties" | "patternProperties" => Value::Object(
                value
                    .as_object()
                    .map(|props| {
                        props
                            .iter()
                            .map(|(name, s)| (name.clone(), convert_schema(s)))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            "items" | "additionalProperties" | "not" => convert_schema(value),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                value
                    .as_array()
                    .map(|list| list.iter().map(convert_schema).collect())
                    .unwrap_or_default(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    if nullable {
        json!({ "anyOf": [{ "type": "null" }, Value::Object(out)] })
    } else {
        Value::Object(out)
    }
}

/// Path segments arrive percent-encoded; parameters are validated and looked up decoded.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| char::from(b).to_digit(16);
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                // Both digits are below 16, so the byte cannot overflow.
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A path segment is always text, but the description types some parameters as integers. The
/// segment is accepted when either its text or its numeric reading satisfies the schema.
fn param_is_valid(validator: &Validator, raw: &str) -> bool {
    if validator.is_valid(&Value::String(raw.to_owned())) {
        return true;
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(number @ Value::Number(_)) => validator.is_valid(&number),
        _ => false,
    }
}

/// Phrases schema failures the way GitHub's request validation does, for example
/// `"event_type" wasn't supplied.` or `For 'properties/event_type', 5 is not a string.`
fn describe_schema_errors(validator: &Validator, body: &Value) -> Vec<String> {
    validator
        .iter_errors(body)
        .map(|error| {
            let path = error.instance_path.as_str();
            let location = if path.is_empty() {
                "links/0/schema".to_owned()
            } else {
                format!("properties{path}")
            };
            match &error.kind {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    format!("{property} wasn't supplied.")
                }
                jsonschema::error::ValidationErrorKind::MaxProperties { limit } => format!(
                    "No more than {limit} properties are allowed; {} were supplied.",
                    error.instance.as_object().map_or(0, Map::len)
                ),
                jsonschema::error::ValidationErrorKind::Type { .. } => {
                    let expected = error
                        .to_string()
                        .rsplit(" is not of type ")
                        .next()
                        .unwrap_or("the expected type")
                        .trim_matches('"')
                        .to_owned();
                    format!(
                        "For '{location}', {} is not {} {expected}.",
                        error.instance,
                        if expected.starts_with(['a', 'e', 'i', 'o', 'u']) {
                            "an"
                        } else {
                            "a"
                        }
                    )
                }
                _ => format!("For '{location}', {error}."),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// State.

struct Grant {
    /// `None` for a personal access token, which sees every repository.
    installation_id: Option<u64>,
    expires_at: Option<SystemTime>,
    /// The repository names an installation token was narrowed to (lower-case, without the
    /// owner); `None` when it covers the whole installation.
    repositories: Option<HashSet<String>>,
    /// The permissions the token was granted; `None` for a personal access token.
    permissions: Option<Map<String, Value>>,
    /// The scopes of a classic personal access token, which GitHub names in `x-oauth-scopes`
    /// on every answer to it; `None` for other tokens.
    scopes: Option<Vec<String>>,
}

struct AppConfig {
    app_id: u64,
    /// Its client id (`Iv23...`).
    client_id: String,
    key: jsonwebtoken::DecodingKey,
}

#[derive(Default)]
struct Log {
    requests: Vec<RecordedRequest>,
    violations: Vec<String>,
    /// Kept alongside `requests` so that waiting for dispatches costs the same however many
    /// requests a benchmark has sent.
    successful_dispatches: usize,
}

/// The `core` rate-limit window shown in headers. It rolls over instead of running out, so only
/// scripted answers ever show an exhausted limit and long benchmarks are never throttled.
struct RateWindow {
    used: u64,
    reset: u64,
}

struct Shared {
    spec: Arc<Spec>,
    base_url: OnceLock<String>,
    tokens: Mutex<HashMap<String, Grant>>,
    repos: Mutex<HashSet<String>>,
    /// The workflows a test declared, by repository: a repository with any
    /// knows only those, with their refs and inputs.
    workflows: Mutex<HashMap<String, Vec<Workflow>>>,
    installations: Mutex<HashMap<String, u64>>,
    app: Mutex<Option<AppConfig>>,
    token_lifetime: Mutex<Duration>,
    /// Scripted answers by the request they answer and its repository or installation.
    scripts: Mutex<HashMap<(ScriptedOn, String), VecDeque<Scripted>>>,
    /// The rate limits in force, by the credential they hold back.
    holds: Mutex<HashMap<String, Hold>>,
    latency_nanos: AtomicU64,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Dispatch requests (of either kind) received, answered or not.
    dispatches_received: AtomicU64,
    rate: Mutex<RateWindow>,
    next_run_id: AtomicU64,
    log: Mutex<Log>,
    recorded: tokio::sync::Notify,
    /// Permissions granted to each installation; installations not listed grant
    /// `DEFAULT_INSTALLATION_PERMISSIONS`.
    installation_permissions: Mutex<HashMap<u64, Map<String, Value>>>,
    /// Whether installation tokens come in GitHub's newer, much longer format.
    long_tokens: std::sync::atomic::AtomicBool,
    /// Plays an older GitHub Enterprise Server that refuses `return_run_details`.
    reject_run_details: std::sync::atomic::AtomicBool,
    /// Seconds the fake's clock runs ahead of the host's, for JWT checks and `Date`.
    clock_offset_secs: std::sync::atomic::AtomicI64,
    /// Manifests posted to the "create app" page, by the code handed back.
    manifest_codes: Mutex<HashMap<String, Value>>,
    /// Installations suspended (by the App's owner or the account's): GitHub still names
    /// them, with `suspended_at`, and refuses them tokens.
    suspended: Mutex<HashSet<u64>>,
    /// Repositories renamed or transferred: the former name (lowercase) and the name now.
    moved: Mutex<HashMap<String, String>>,
    /// The numeric id of each repository a former name redirects to, by its name now:
    /// GitHub's redirects name a repository by id.
    repository_ids: Mutex<HashMap<String, u64>>,
    /// Gates a test set up: requests to a gate's path wait at it until the test opens it.
    gates: Mutex<Vec<Arc<GateState>>>,
}

impl Shared {
    fn new(spec: Arc<Spec>) -> Shared {
        Shared {
            spec,
            base_url: OnceLock::new(),
            tokens: Mutex::default(),
            repos: Mutex::default(),
            workflows: Mutex::default(),
            installations: Mutex::default(),
            app: Mutex::default(),
            token_lifetime: Mutex::new(DEFAULT_TOKEN_LIFETIME),
            scripts: Mutex::default(),
            holds: Mutex::default(),
            latency_nanos: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            dispatches_received: AtomicU64::new(0),
            rate: Mutex::new(RateWindow {
                used: 0,
                reset: epoch_secs() + 3600,
            }),
            next_run_id: AtomicU64::new(1),
            log: Mutex::default(),
            recorded: tokio::sync::Notify::new(),
            installation_permissions: Mutex::default(),
            long_tokens: std::sync::atomic::AtomicBool::new(false),
            reject_run_details: std::sync::atomic::AtomicBool::new(false),
            clock_offset_secs: std::sync::atomic::AtomicI64::new(0),
            manifest_codes: Mutex::default(),
            suspended: Mutex::default(),
            moved: Mutex::default(),
            gates: Mutex::default(),
            repository_ids: Mutex::default(),
        }
    }

    /// GitHub's answer to a request that names a repository by a former name: a redirect to
    /// the repository's id, 301 for a GET and 307 for anything else (which the client must
    /// repeat, body and all, at the new place).
    fn redirect_if_moved(&self, method: &str, path: &str) -> Option<Answer> {
        let rest = path.strip_prefix("/repos/")?;
        let mut parts = rest.splitn(3, '/');
        let former = format!("{}/{}", parts.next()?, parts.next()?);
        let now = lock(&self.moved).get(&repo_key(&former))?.clone();
        let id = *lock(&self.repository_ids).get(&now)?;
        let tail = parts.next().map(|t| format!("/{t}")).unwrap_or_default();
        let base = self.base_url.get().cloned().unwrap_or_default();
        let location = format!("{base}/repositories/{id}{tail}");
        let (status, message) = if method == "GET" {
            (301, "Moved Permanently")
        } else {
            (307, "Temporary Redirect")
        };
        Some(
            Answer::json(
                status,
                json!({
                    "message": message,
                    "url": location,
                    "documentation_url": "https://docs.github.com/rest/guides/best-practices-for-using-the-rest-api#follow-redirects",
                }),
            )
            .with_header("location", location),
        )
    }

    /// The path a request names by repository id (`/repositories/{id}/...`), written with the
    /// repository's name as the API description does; any other path as it is.
    fn named_path(&self, path: &str) -> String {
        let Some(rest) = path.strip_prefix("/repositories/") else {
            return path.to_owned();
        };
        let (id, tail) = rest
            .split_once('/')
            .map_or((rest, ""), |(id, tail)| (id, tail));
        let name = id.parse::<u64>().ok().and_then(|id| {
            lock(&self.repository_ids)
                .iter()
                .find(|(_, known)| **known == id)
                .map(|(name, _)| name.clone())
        });
        match name {
            Some(name) if tail.is_empty() => format!("/repos/{name}"),
            Some(name) => format!("/repos/{name}/{tail}"),
            None => path.to_owned(),
        }
    }

    fn violation(&self, method: &str, path: &str, message: impl std::fmt::Display) {
        lock(&self.log)
            .violations
            .push(format!("{method} {path}: {message}"));
    }

    fn push_scripts(&self, on: ScriptedOn, key: String, answers: Vec<Scripted>) {
        lock(&self.scripts)
            .entry((on, key))
            .or_default()
            .extend(answers);
    }

    /// The answer a test queued for this request, if any. A rate limit among them holds back
    /// the request's credential for as long as the answer tells the client to wait.
    fn scripted(
        &self,
        on: ScriptedOn,
        key: &str,
        req: &HttpRequest,
        op: &Operation,
        request_id: &str,
    ) -> Option<Answer> {
        let script = lock(&self.scripts)
            .get_mut(&(on, key.to_owned()))
            .and_then(VecDeque::pop_front)?;
        // One reading of the clock for both the stated reset and the hold, so that they name
        // the same second.
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if let (Some(wait), Some(credential)) = (
            script.announced_wait(since_epoch),
            held_credential(self, req),
        ) {
            lock(&self.holds).insert(
                credential,
                Hold {
                    until: Instant::now() + wait,
                    limit: script.clone(),
                },
            );
        }
        let now = stated_secs(self, since_epoch.as_secs());
        Some(scripted_answer(&script, req, op, request_id, now))
    }

    /// GitHub's answer to a request sent while a rate limit announced to its credential is in
    /// force: the same limit again, with what is left of the wait. Such a request is a
    /// violation: the client was told to wait and did not.
    fn held_back(&self, req: &HttpRequest, op: &Operation, request_id: &str) -> Option<Answer> {
        let credential = held_credential(self, req)?;
        let (left, limit) = {
            let holds = lock(&self.holds);
            let hold = holds.get(&credential)?;
            (
                hold.until.checked_duration_since(Instant::now())?,
                hold.limit.clone(),
            )
        };
        // GitHub states its resets in whole seconds, and the relay reads them against a `Date`
        // of whole seconds: a request in the last moments of a wait is let through rather than
        // judged on rounding.
        if left < HOLD_ROUNDING {
            return None;
        }
        self.violation(
            req.method().as_str(),
            req.path(),
            format!(
                "sent {} ms before the end of the wait a rate limit told its credential to keep",
                left.as_millis()
            ),
        );
        let now = stated_secs(self, epoch_secs());
        let again = limit.with_wait(left.as_secs() + 1);
        Some(scripted_answer(&again, req, op, request_id, now))
    }

    /// Counts one request against the window and returns `(used, remaining, reset)`.
    fn take_rate(&self) -> (u64, u64, u64) {
        let mut window = lock(&self.rate);
        let now = epoch_secs();
        if now >= window.reset || window.used >= RATE_LIMIT - 1 {
            window.used = 0;
            window.reset = now + 3600;
        }
        window.used += 1;
        (window.used, RATE_LIMIT - window.used, window.reset)
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable and the
/// panic itself is what the test reports.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn repo_key(full_name: &str) -> String {
    full_name.to_ascii_lowercase()
}

/// The fake's own clock: the host's plus the offset a test set.
fn fake_epoch_secs(shared: &Shared) -> i64 {
    i64::try_from(epoch_secs()).unwrap_or(i64::MAX)
        + shared.clock_offset_secs.load(Ordering::Relaxed)
}

/// A moment of the host's clock as GitHub states it, on its own clock: GitHub
/// states every time (`Date`, `x-ratelimit-reset`, `expires_at`) on one clock.
fn stated_secs(shared: &Shared, host_secs: u64) -> u64 {
    let offset = shared.clock_offset_secs.load(Ordering::Relaxed);
    host_secs.saturating_add_signed(offset)
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Answers.

/// What the fake decided to answer, before the common headers are added.
struct Answer {
    status: u16,
    body: Option<Value>,
    /// Extra headers; a rate-limit header here replaces the window's value.
    headers: Vec<(&'static str, String)>,
    hang: bool,
    /// Send the status and headers, then only the start of a body.
    stall_body: bool,
    /// Send an endless HTML page instead of a JSON body.
    html_page: bool,
    /// Send this HTML page instead of a JSON body.
    web_page: Option<&'static str>,
}

impl Answer {
    fn empty(status: u16) -> Answer {
        Answer {
            status,
            body: None,
            headers: Vec::new(),
            hang: false,
            stall_body: false,
            html_page: false,
            web_page: None,
        }
    }

    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: Some(body),
            headers: Vec::new(),
            hang: false,
            stall_body: false,
            html_page: false,
            web_page: None,
        }
    }

    /// GitHub's usual error shape: a message, a documentation link and the status as a string.
    fn error(status: u16, message: &str, docs: &str) -> Answer {
        Answer::json(
            status,
            json!({
                "message": message,
                "documentation_url": docs,
                "status": status.to_string(),
            }),
        )
    }

    fn with_header(mut self, name: &'static str, value: impl ToString) -> Answer {
        self.headers.push((name, value.to_string()));
        self
    }
}

fn not_found_route() -> Answer {
    Answer::error(404, "Not Found", GENERIC_DOCS)
}

/// Where GitHub's SAML refusal points.
const SAML_DOCS: &str = "https://docs.github.com/articles/authenticating-to-a-github-organization-with-saml-single-sign-on/";

fn bad_credentials() -> Answer {
    Answer::error(401, "Bad credentials", GENERIC_DOCS)
}

fn request_id() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "{:04X}:{:06X}:{:07X}:{:07X}:{:08X}",
        rng.gen_range(0..0x1_0000u32),
        rng.gen_range(0..0x100_0000u32),
        rng.gen_range(0..0x1000_0000u32),
        rng.gen_range(0..0x1000_0000u32),
        epoch_secs() & 0xFFFF_FFFF,
    )
}

/// The answer a test scripted; `now` is the fake's clock, on which GitHub
/// states its times.
fn scripted_answer(
    script: &Scripted,
    req: &HttpRequest,
    op: &Operation,
    request_id: &str,
    now: u64,
) -> Answer {
    match script {
        Scripted::Status(status) => match status {
            200..=299 => Answer::empty(*status),
            500 | 502 => Answer::json(*status, json!({ "message": "Server Error" })),
            503 => Answer::json(
                503,
                json!({ "message": "Service Unavailable", "documentation_url": GENERIC_DOCS, "status": "503" }),
            ),
            504 => Answer::json(
                504,
                json!({ "message": "We couldn't respond to your request in time. Sorry about that. Please try resubmitting your request and contact us if the problem persists." }),
            ),
            other => {
                let reason = StatusCode::from_u16(*other)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Error");
                Answer::error(*other, reason, GENERIC_DOCS)
            }
        },
        Scripted::LastOfTheLimit { reset_in_secs } => Answer::empty(204)
            .with_header("x-ratelimit-remaining", 0)
            .with_header("x-ratelimit-used", RATE_LIMIT)
            .with_header("x-ratelimit-reset", now + reset_in_secs),
        Scripted::Unavailable { retry_after_secs } => Answer::json(
            503,
            json!({ "message": "Service Unavailable", "documentation_url": GENERIC_DOCS, "status": "503" }),
        )
        .with_header("retry-after", retry_after_secs),
        Scripted::RateLimited { retry_after_secs } => Answer::error(
            429,
            &secondary_limit_message(request_id),
            SECONDARY_LIMIT_DOCS,
        )
        .with_header("retry-after", retry_after_secs),
        Scripted::PrimaryRateLimit { reset_in_secs }
        | Scripted::PrimaryRateLimitTooMany { reset_in_secs } => Answer::error(
            if matches!(script, Scripted::PrimaryRateLimit { .. }) {
                403
            } else {
                429
            },
            &format!(
                "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for \
                 help, please include the request ID {request_id} and timestamp {} UTC.",
                utc_timestamp(now, ' ')
            ),
            PRIMARY_LIMIT_DOCS,
        )
        .with_header("x-ratelimit-remaining", 0)
        .with_header("x-ratelimit-used", RATE_LIMIT)
        .with_header("x-ratelimit-reset", now + reset_in_secs),
        Scripted::SecondaryRateLimit { retry_after_secs } => {
            let answer = Answer::error(
                403,
                &secondary_limit_message(request_id),
                SECONDARY_LIMIT_DOCS,
            );
            match retry_after_secs {
                Some(secs) => answer.with_header("retry-after", secs),
                None => answer,
            }
        }
        Scripted::Unprocessable(message) => Answer::error(422, message, &op.docs_url),
        Scripted::Hang => Answer {
            hang: true,
            ..Answer::empty(0)
        },
        Scripted::StalledBody => Answer {
            stall_body: true,
            ..Answer::empty(200)
        },
        Scripted::NotFound => Answer::error(404, "Not Found", &op.docs_url),
        Scripted::ProxyPage { status } => Answer {
            html_page: true,
            ..Answer::empty(*status)
        },
        Scripted::BadCredentials => bad_credentials(),
        Scripted::SamlEnforced => {
            let org = req.path().split('/').nth(2).unwrap_or_default();
            Answer::error(
                403,
                "Resource protected by organization SAML enforcement. You must grant your \
                 Personal Access token access to this organization.",
                SAML_DOCS,
            )
            .with_header(
                "x-github-sso",
                format!("required; url=https://github.com/orgs/{org}/sso?authorization_request=A5VN2X7WQ3ZJ"),
            )
        }
        Scripted::Redirect { status, location } => {
            Answer::json(*status, json!({ "message": "Moved", "url": location }))
                .with_header("location", location)
        }
        Scripted::WebFrontNotFound => Answer {
            web_page: Some(
                "<!DOCTYPE html>\n<html lang=\"en\"><head><title>Page not found &middot; GitHub</title></head>\n<body><h1>404</h1><p>This is not the web page you are looking for.</p></body></html>\n",
            ),
            ..Answer::empty(404)
        },
        Scripted::EchoingProxy { status } => {
            let authorization = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            Answer {
                body: Some(Value::String(format!(
                    "upstream connect error; request: {} {} authorization: {authorization}",
                    req.method(),
                    req.path()
                ))),
                ..Answer::empty(*status)
            }
        }
    }
}

fn secondary_limit_message(request_id: &str) -> String {
    format!(
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try \
         again. If you reach out to GitHub Support for help, please include the request ID \
         {request_id}."
    )
}

/// Formats epoch seconds as `YYYY-MM-DD<sep>HH:MM:SS` in UTC; `T` plus a trailing `Z` makes the
/// ISO 8601 form GitHub uses in JSON.
fn utc_timestamp(secs: u64, separator: char) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil conversion.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}{separator}{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// The request pipeline.

/// The credential in the `Authorization` header.
enum Credential {
    Missing,
    /// A scheme other than `Bearer` or `token`, or no value after it.
    Unsupported,
    Token(String),
}

fn credential(req: &HttpRequest) -> Credential {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Credential::Missing;
    };
    let value = value.to_str().unwrap_or("");
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        && !token.is_empty()
    {
        Credential::Token(token.to_owned())
    } else {
        Credential::Unsupported
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let received_at = Instant::now();
    let _counted = InFlight::enter(&shared);
    let method = req.method().as_str().to_owned();
    let path = req.path().to_owned();
    if method == "POST" && path.ends_with("/dispatches") {
        shared.dispatches_received.fetch_add(1, Ordering::SeqCst);
    }
    let query = (!req.query_string().is_empty()).then(|| req.query_string().to_owned());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let parsed_body = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<Value>(&body).ok()
    };
    let request_id = request_id();
    let gate = lock(&shared.gates)
        .iter()
        .find(|gate| gate.method == method && gate.path == path)
        .cloned();
    if let Some(gate) = gate {
        gate.pass().await;
    }

    if let Some(response) = web_page(&shared, &method, &path, query.as_deref(), &body) {
        return response;
    }
    let redirect = shared.redirect_if_moved(&method, &path);
    let named_path = shared.named_path(&path);
    let spec = Arc::clone(&shared.spec);
    let matched = if redirect.is_some() {
        None
    } else {
        spec.find(&method, &named_path)
    };
    let op = matched.as_ref().map(|(op, _)| *op);
    let answer = match redirect {
        Some(redirect) => redirect,
        None => decide(
            &shared,
            &req,
            &body,
            parsed_body.as_ref(),
            matched,
            &request_id,
        ),
    };
    let operation_id = op.map(|op| op.operation_id.clone());

    if let (Some(op), Some(body)) = (op, &answer.body) {
        // The fake checks its own documented answers too, so a test never passes against a
        // response shape GitHub would not send.
        if let Some(validator) = op.responses.get(&answer.status) {
            for detail in describe_schema_errors(validator, body) {
                shared.violation(
                    &method,
                    &path,
                    format!(
                        "the fake's own {} answer is undocumented: {detail}",
                        answer.status
                    ),
                );
            }
        }
    }

    let recorded = RecordedRequest {
        method,
        // A request that names a repository by id is recorded by its name, as the test knows it.
        path: named_path,
        query,
        operation_id,
        headers,
        body: parsed_body,
        received_at,
        status: answer.status,
    };
    {
        let mut log = lock(&shared.log);
        log.successful_dispatches += usize::from(recorded.is_successful_dispatch());
        log.requests.push(recorded);
    }
    shared.recorded.notify_waiters();

    let latency = Duration::from_nanos(shared.latency_nanos.load(Ordering::Relaxed));
    if answer.hang {
        actix_web::rt::time::sleep(HANG_FOR).await;
    } else if !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    // GitHub names the version it answered as: the one asked for when it
    // supports it, else its default.
    let version = req
        .headers()
        .get("x-github-api-version")
        .and_then(|v| v.to_str().ok())
        .and_then(|asked| SUPPORTED_API_VERSIONS.iter().find(|v| **v == asked))
        .copied()
        .unwrap_or(API_VERSION);
    let mut answer = answer;
    if let Credential::Token(token) = credential(&req)
        && let Some(scopes) = lock(&shared.tokens)
            .get(&token)
            .and_then(|grant| grant.scopes.clone())
    {
        answer.headers.push(("x-oauth-scopes", scopes.join(", ")));
    }
    respond(&shared, answer, &request_id, version)
}

/// GitHub's refusal of a workflow dispatch to a repository whose workflows the test declared:
/// 404 for a workflow it does not have (by file name or path), 422 for a ref it lacks or for
/// inputs the workflow does not define. `None` when the dispatch is one GitHub takes.
fn workflow_answer(
    shared: &Shared,
    op: &Operation,
    repo: &str,
    workflow_id: &str,
    body: Option<&Value>,
) -> Option<Answer> {
    let workflows = lock(&shared.workflows).get(&repo_key(repo)).cloned()?;
    let file = workflow_id.rsplit('/').next().unwrap_or(workflow_id);
    let Some(workflow) = workflows.iter().find(|w| w.file == file) else {
        return Some(Answer::error(404, "Not Found", &op.docs_url));
    };
    let git_ref = body
        .and_then(|b| b.get("ref"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let short = git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(git_ref);
    if !workflow.refs.iter().any(|r| r == short) {
        return Some(Answer::error(
            422,
            &format!("No ref found for: {git_ref}"),
            &op.docs_url,
        ));
    }
    let unexpected: Vec<String> = body
        .and_then(|b| b.get("inputs"))
        .and_then(Value::as_object)
        .map(|inputs| {
            inputs
                .keys()
                .filter(|name| !workflow.inputs.contains(name))
                .map(|name| format!("\"{name}\""))
                .collect()
        })
        .unwrap_or_default();
    if !unexpected.is_empty() {
        return Some(Answer::error(
            422,
            &format!("Unexpected inputs provided: [{}]", unexpected.join(", ")),
            &op.docs_url,
        ));
    }
    None
}

/// Counts a request as in flight until it is answered or its client goes away.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn respond(shared: &Shared, answer: Answer, request_id: &str, version: &str) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    let (used, remaining, reset) = shared.take_rate();
    let overridden = |name: &str| answer.headers.iter().any(|(n, _)| *n == name);
    response.insert_header(("server", "github.com"));
    response.insert_header(("date", http_date(fake_epoch_secs(shared))));
    response.insert_header(("x-github-request-id", request_id));
    response.insert_header(("x-github-media-type", "github.v3; format=json"));
    response.insert_header(("x-github-api-version-selected", version));
    response.insert_header(("x-ratelimit-limit", RATE_LIMIT.to_string()));
    response.insert_header(("x-ratelimit-resource", "core"));
    if !overridden("x-ratelimit-remaining") {
        response.insert_header(("x-ratelimit-remaining", remaining.to_string()));
    }
    if !overridden("x-ratelimit-used") {
        response.insert_header(("x-ratelimit-used", used.to_string()));
    }
    if !overridden("x-ratelimit-reset") {
        response.insert_header(("x-ratelimit-reset", stated_secs(shared, reset).to_string()));
    }
    for (name, value) in &answer.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.insert_header((*name, value));
        }
    }
    if answer.stall_body {
        let start = futures_util::stream::once(async {
            Ok::<_, actix_web::Error>(web::Bytes::from_static(b"{\"workflow_run_id\":"))
        });
        let stall = futures_util::stream::once(async {
            actix_web::rt::time::sleep(HANG_FOR).await;
            Ok::<_, actix_web::Error>(web::Bytes::from_static(b"1}"))
        });
        return response
            .insert_header((header::CONTENT_TYPE, "application/json; charset=utf-8"))
            .streaming(futures_util::StreamExt::chain(start, stall));
    }
    if let Some(page) = answer.web_page {
        return response
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .body(page);
    }
    if answer.html_page {
        let status = answer.status;
        let head = format!(
            "<html>\r\n<head><title>{status} Bad Gateway</title></head>\r\n<body><center><h1>{status} Bad Gateway</h1></center>\r\n"
        );
        let chunk = web::Bytes::from(format!("<!-- {} -->\r\n", "x".repeat(64 * 1024)));
        let body = std::iter::once(web::Bytes::from(head))
            .chain(std::iter::repeat(chunk))
            .map(Ok::<_, actix_web::Error>);
        return response
            .insert_header((header::CONTENT_TYPE, "text/html"))
            .streaming(futures_util::stream::iter(body));
    }
    match answer.body {
        Some(body) => response
            .insert_header((header::CONTENT_TYPE, "application/json; charset=utf-8"))
            .body(body.to_string()),
        None => response.finish(),
    }
}

/// Runs the checks GitHub runs, in its order, and picks the answer.
fn decide(
    shared: &Shared,
    req: &HttpRequest,
    raw_body: &[u8],
    body: Option<&Value>,
    matched: Option<(&Operation, Vec<(String, String)>)>,
    request_id: &str,
) -> Answer {
    let method = req.method().as_str();
    let path = req.path();
    let Some((op, params)) = matched else {
        shared.violation(
            method,
            path,
            "matches no operation in the GitHub API description",
        );
        return not_found_route();
    };

    for (name, value) in &params {
        let valid = op
            .path_params
            .iter()
            .find(|(n, _)| n == name)
            .is_none_or(|(_, validator)| param_is_valid(validator, value));
        if !valid {
            shared.violation(
                method,
                path,
                format!("path parameter {name}={value:?} does not match its schema"),
            );
            return not_found_route();
        }
    }

    // Query parameters: each must be documented for the operation and match its schema. GitHub
    // ignores an unknown one; a client that sends one believes in a feature that is not there.
    for (name, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match op.query_params.iter().find(|(n, _)| *n == name) {
            None => shared.violation(
                method,
                path,
                format!("query parameter {name} is not documented for this operation"),
            ),
            Some((_, validator)) if !param_is_valid(validator, &value) => shared.violation(
                method,
                path,
                format!("query parameter {name}={value:?} does not match its schema"),
            ),
            Some(_) => {}
        }
    }

    if !check_headers(shared, req, op, !raw_body.is_empty()) {
        // GitHub's edge refuses requests without a User-Agent before the API sees them.
        return Answer::json(
            403,
            json!({
                "message": "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.",
            }),
        );
    }
    let unsupported_version = req
        .headers()
        .get("x-github-api-version")
        .and_then(|v| v.to_str().ok())
        .filter(|version| !SUPPORTED_API_VERSIONS.contains(version));
    if let Some(version) = unsupported_version {
        return Answer::error(
            400,
            &format!("API version {version} is not supported."),
            "https://docs.github.com/rest/overview/api-versions",
        );
    }

    if let Some(spec) = &op.body {
        if raw_body.is_empty() {
            if spec.required {
                shared.violation(method, path, "the required JSON body is missing");
                return Answer::error(
                    422,
                    "Invalid request.\n\nFor 'links/0/schema', nil is not an object.",
                    &op.docs_url,
                );
            }
        } else {
            let Some(body) = body else {
                shared.violation(method, path, "the body is not valid JSON");
                return Answer::error(400, "Problems parsing JSON", &op.docs_url);
            };
            let details = describe_schema_errors(&spec.validator, body);
            if !details.is_empty() {
                shared.violation(
                    method,
                    path,
                    format!("the body fails the request schema: {}", details.join(" ")),
                );
                return Answer::error(
                    422,
                    &format!("Invalid request.\n\n{}", details.join("\n")),
                    &op.docs_url,
                );
            }
        }
    }

    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    };

    // A rate limit in force answers before anything else is looked at.
    if let Some(answer) = shared.held_back(req, op, request_id) {
        return answer;
    }

    // A scripted answer comes once GitHub has authenticated the request, as GitHub's own
    // failures do: a relay sending a bad or expired token is told so first.
    let repo = repo_key(&format!("{}/{}", param("owner"), param("repo")));
    let scripted = |on: ScriptedOn, key: &str| shared.scripted(on, key, req, op, request_id);

    // New operations are new arms here: each arm authenticates the way GitHub does for that
    // operation and produces its answer.
    match op.operation_id.as_str() {
        OP_REPOSITORY_DISPATCH => {
            let repo = format!("{}/{}", param("owner"), param("repo"));
            if let Err(answer) = authorize_repo(shared, req, &repo, op) {
                return answer;
            }
            if let Err(answer) = require_permission(shared, req, "contents") {
                return answer;
            }
            if let Some(answer) = scripted(ScriptedOn::Dispatch, &repo) {
                return answer;
            }
            // The documented limit the schema cannot state: the payload's JSON is less than
            // 64 KB.
            let payload_bytes = body
                .and_then(|b| b.get("client_payload"))
                .map_or(0, |payload| payload.to_string().len());
            if payload_bytes >= 65_536 {
                shared.violation(
                    method,
                    path,
                    format!("client_payload is {payload_bytes} bytes as JSON, not less than 64 KB"),
                );
                return Answer::error(
                    422,
                    "Invalid request.\n\nclient_payload is too large.",
                    &op.docs_url,
                );
            }
            Answer::empty(204)
        }
        OP_WORKFLOW_DISPATCH => {
            let (owner, name) = (param("owner"), param("repo"));
            if let Err(answer) = authorize_repo(shared, req, &format!("{owner}/{name}"), op) {
                return answer;
            }
            if let Err(answer) = require_permission(shared, req, "actions") {
                return answer;
            }
            if let Some(answer) = scripted(ScriptedOn::Dispatch, &repo) {
                return answer;
            }
            if let Some(answer) = workflow_answer(
                shared,
                op,
                &format!("{owner}/{name}"),
                param("workflow_id"),
                body,
            ) {
                return answer;
            }
            // The limit the schema cannot state: the inputs' JSON is at most 65,535 characters.
            let inputs_chars = body
                .and_then(|b| b.get("inputs"))
                .map_or(0, |inputs| inputs.to_string().chars().count());
            if inputs_chars > 65_535 {
                shared.violation(
                    method,
                    path,
                    format!("inputs are {inputs_chars} characters as JSON, more than 65,535"),
                );
                return Answer::error(
                    422,
                    "Invalid request.\n\ninputs are too large.",
                    &op.docs_url,
                );
            }
            let asks_details = body.and_then(|b| b.get("return_run_details")).is_some();
            if asks_details && shared.reject_run_details.load(Ordering::Relaxed) {
                return Answer::error(
                    422,
                    "Invalid request.\n\n\"return_run_details\" is not a permitted key.",
                    &op.docs_url,
                );
            }
            if body.and_then(|b| b.get("return_run_details")) == Some(&Value::Bool(true)) {
                let run_id = shared.next_run_id.fetch_add(1, Ordering::Relaxed);
                let base = shared
                    .base_url
                    .get()
                    .map_or("https://api.github.com", String::as_str);
                Answer::json(
                    200,
                    json!({
                        "workflow_run_id": run_id,
                        "run_url": format!("{base}/repos/{owner}/{name}/actions/runs/{run_id}"),
                        "html_url": format!("https://github.com/{owner}/{name}/actions/runs/{run_id}"),
                    }),
                )
            } else {
                Answer::empty(204)
            }
        }
        OP_GET_REPO_INSTALLATION => {
            let app_id = match authenticate_app(shared, req) {
                Ok(app_id) => app_id,
                Err(answer) => return answer,
            };
            if let Some(answer) = scripted(ScriptedOn::InstallationLookup, &repo) {
                return answer;
            }
            let (owner, name) = (param("owner"), param("repo"));
            let installation = lock(&shared.installations)
                .get(&repo_key(&format!("{owner}/{name}")))
                .copied();
            match installation {
                Some(id) => Answer::json(200, installation_body(shared, app_id, id, owner)),
                None => Answer::error(404, "Not Found", &op.docs_url),
            }
        }
        OP_CREATE_INSTALLATION_TOKEN => {
            if let Err(answer) = authenticate_app(shared, req) {
                return answer;
            }
            if let Some(answer) = scripted(ScriptedOn::TokenRequest, param("installation_id")) {
                return answer;
            }
            let id: Option<u64> = param("installation_id").parse().ok();
            let known = id.filter(|id| lock(&shared.installations).values().any(|i| i == id));
            let Some(id) = known else {
                return Answer::error(404, "Not Found", &op.docs_url);
            };
            if lock(&shared.suspended).contains(&id) {
                return Answer::error(403, "This installation has been suspended", &op.docs_url);
            }
            let granted = lock(&shared.installation_permissions)
                .get(&id)
                .cloned()
                .unwrap_or_else(default_installation_permissions);
            let requested = body
                .and_then(|b| b.get("permissions"))
                .and_then(Value::as_object)
                .cloned();
            if let Some(requested) = &requested {
                let exceeds = requested.iter().any(|(name, level)| {
                    !matches!(
                        (granted.get(name).and_then(Value::as_str), level.as_str()),
                        (Some("write"), _) | (Some("read"), Some("read"))
                    )
                });
                if exceeds {
                    return Answer::error(
                        422,
                        "The permissions requested are not granted to this installation.",
                        &op.docs_url,
                    );
                }
            }
            let by_name = body
                .and_then(|b| b.get("repositories"))
                .and_then(Value::as_array)
                .map(|names| {
                    names
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_ascii_lowercase)
                        .collect::<HashSet<String>>()
                });
            // A repository may be named by id instead; an id the fake does not know names no
            // repository, which GitHub refuses as it refuses an unknown name.
            let by_id = body
                .and_then(|b| b.get("repository_ids"))
                .and_then(Value::as_array)
                .map(|ids| {
                    let known = lock(&shared.repository_ids);
                    ids.iter()
                        .filter_map(Value::as_u64)
                        .map(|id| {
                            known
                                .iter()
                                .find(|(_, known)| **known == id)
                                .and_then(|(name, _)| name.split_once('/'))
                                .map_or_else(|| format!("#{id}"), |(_, n)| n.to_ascii_lowercase())
                        })
                        .collect::<HashSet<String>>()
                });
            let repositories = match (by_name, by_id) {
                (Some(mut names), Some(ids)) => {
                    names.extend(ids);
                    Some(names)
                }
                (names, ids) => names.or(ids),
            };
            if let Some(names) = &repositories {
                let installations = lock(&shared.installations);
                let all_installed = names.iter().all(|name| {
                    installations.iter().any(|(repo, inst)| {
                        *inst == id && repo.split_once('/').is_some_and(|(_, n)| n == name)
                    })
                });
                if !all_installed {
                    return Answer::error(
                        422,
                        "There is at least one repository that does not exist or is not accessible to the parent installation.",
                        &op.docs_url,
                    );
                }
            }
            let lifetime = *lock(&shared.token_lifetime);
            let token = if shared.long_tokens.load(Ordering::Relaxed) {
                // GitHub's newer installation tokens are far longer than 40 characters and may
                // hold `.`, `-` and `_`; clients must treat them as opaque.
                let mut rng = rand::thread_rng();
                let part = |rng: &mut rand::rngs::ThreadRng, n: usize| {
                    rng.sample_iter(&rand::distributions::Alphanumeric)
                        .take(n)
                        .map(char::from)
                        .collect::<String>()
                };
                format!(
                    "ghs_{}.{}-{}_{}",
                    part(&mut rng, 120),
                    part(&mut rng, 200),
                    part(&mut rng, 100),
                    part(&mut rng, 60)
                )
            } else {
                format!(
                    "ghs_{}",
                    rand::thread_rng()
                        .sample_iter(&rand::distributions::Alphanumeric)
                        .take(36)
                        .map(char::from)
                        .collect::<String>()
                )
            };
            let expires_at = SystemTime::now() + lifetime;
            let permissions = requested.clone().unwrap_or_else(|| granted.clone());
            lock(&shared.tokens).insert(
                token.clone(),
                Grant {
                    installation_id: Some(id),
                    expires_at: Some(expires_at),
                    repositories,
                    permissions: Some(permissions.clone()),
                    scopes: None,
                },
            );
            let expires_secs = stated_secs(
                shared,
                expires_at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            );
            Answer::json(
                201,
                json!({
                    "token": token,
                    "expires_at": format!("{}Z", utc_timestamp(expires_secs, 'T')),
                    "permissions": permissions,
                    "repository_selection": "selected",
                }),
            )
        }
        OP_GET_REPO => {
            let (owner, name) = (param("owner"), param("repo"));
            if let Err(answer) = authorize_repo(shared, req, &format!("{owner}/{name}"), op) {
                return answer;
            }
            if let Some(answer) = scripted(ScriptedOn::Repository, &repo) {
                return answer;
            }
            let push =
                token_permission(shared, req, "contents").is_none_or(|level| level == "write");
            let mut repo = example_for(&response_schema("/repos/{owner}/{repo}", "get", "200"));
            let base = shared
                .base_url
                .get()
                .map_or("https://api.github.com", String::as_str);
            repo["name"] = json!(name);
            repo["full_name"] = json!(format!("{owner}/{name}"));
            repo["private"] = json!(true);
            repo["url"] = json!(format!("{base}/repos/{owner}/{name}"));
            repo["html_url"] = json!(format!("https://github.com/{owner}/{name}"));
            repo["permissions"] = json!({"admin": false, "maintain": false, "push": push, "triage": push, "pull": true});
            Answer::json(200, repo)
        }
        OP_CREATE_FROM_MANIFEST => {
            let code = param("code").to_owned();
            let Some(manifest) = lock(&shared.manifest_codes).remove(&code) else {
                return Answer::error(404, "Not Found", &op.docs_url);
            };
            // The answer is an `integration` (documented as nullable, so its example would be
            // null) merged with the conversion's own fields.
            let mut integration = raw_doc()["components"]["schemas"]["integration"].clone();
            if let Some(schema) = integration.as_object_mut() {
                schema.remove("nullable");
            }
            let mut app = example_for(&integration);
            if let (Some(app), Value::Object(extra)) = (
                app.as_object_mut(),
                example_for(&response_schema(
                    "/app-manifests/{code}/conversions",
                    "post",
                    "201",
                )),
            ) {
                app.extend(extra);
            }
            let app_id = 4242;
            let slug = manifest["name"]
                .as_str()
                .unwrap_or("app")
                .to_ascii_lowercase()
                .replace(' ', "-");
            app["id"] = json!(app_id);
            app["slug"] = json!(slug);
            app["name"] = json!(manifest["name"]);
            app["client_id"] = json!("Iv23liTestClientId");
            app["client_secret"] = json!("test-client-secret");
            app["webhook_secret"] = Value::Null;
            app["html_url"] = json!(format!(
                "{}/apps/{slug}",
                shared
                    .base_url
                    .get()
                    .map_or("https://github.com", String::as_str)
            ));
            app["permissions"] = manifest["default_permissions"].clone();
            app["pem"] = json!(std::fs::read_to_string(TEST_APP_KEY).expect("the test App key"));
            Answer::json(201, app)
        }
        other => {
            shared.violation(
                method,
                path,
                format!("operation {other} is documented but the fake does not implement it yet"),
            );
            not_found_route()
        }
    }
}

/// Records a violation for every header GitHub asks clients to send that is missing or wrong.
/// Returns false when the request lacks a User-Agent, which GitHub refuses outright.
fn check_headers(shared: &Shared, req: &HttpRequest, op: &Operation, has_body: bool) -> bool {
    let method = req.method().as_str();
    let path = req.path();
    let get = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    match credential(req) {
        // The manifest conversion takes no credential: the one-time code is the proof.
        Credential::Missing if op.operation_id == OP_CREATE_FROM_MANIFEST => {}
        Credential::Missing => shared.violation(method, path, "no Authorization header"),
        Credential::Unsupported => shared.violation(
            method,
            path,
            "Authorization is neither `Bearer <token>` nor `token <token>`",
        ),
        Credential::Token(_) => {}
    }
    match get("accept") {
        Some(accept)
            if accept
                .split(',')
                .any(|a| a.trim() == "application/vnd.github+json") => {}
        other => shared.violation(
            method,
            path,
            format!("Accept is {other:?}, expected application/vnd.github+json"),
        ),
    }
    match get("x-github-api-version") {
        Some(API_VERSION) => {}
        other => shared.violation(
            method,
            path,
            format!("X-GitHub-Api-Version is {other:?}, expected {API_VERSION}"),
        ),
    }
    if has_body && op.body.is_none() {
        shared.violation(method, path, "a body sent to an operation that takes none");
    }
    if has_body && op.body.is_some() {
        let json = get("content-type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            shared.violation(
                method,
                path,
                "a JSON body sent without Content-Type: application/json",
            );
        }
    }
    let has_agent = get("user-agent").is_some_and(|ua| !ua.trim().is_empty());
    if !has_agent {
        shared.violation(method, path, "no User-Agent header");
    }
    has_agent
}

/// Authenticates a token request and checks that the token can see the repository.
fn authorize_repo(
    shared: &Shared,
    req: &HttpRequest,
    repo: &str,
    op: &Operation,
) -> Result<(), Answer> {
    let token = match credential(req) {
        Credential::Token(token) => token,
        Credential::Missing => {
            return Err(Answer::error(401, "Requires authentication", GENERIC_DOCS));
        }
        Credential::Unsupported => return Err(bad_credentials()),
    };
    let installation_id = {
        let tokens = lock(&shared.tokens);
        let grant = tokens.get(&token).ok_or_else(bad_credentials)?;
        if grant
            .expires_at
            .is_some_and(|expiry| SystemTime::now() >= expiry)
        {
            return Err(bad_credentials());
        }
        if grant
            .scopes
            .as_ref()
            .is_some_and(|scopes| !scopes.iter().any(|scope| scope == "repo"))
        {
            return Err(Answer::error(404, "Not Found", &op.docs_url));
        }
        if let Some(names) = &grant.repositories {
            let name = repo
                .split_once('/')
                .map_or(repo, |(_, n)| n)
                .to_ascii_lowercase();
            if !names.contains(&name) {
                return Err(Answer::error(404, "Not Found", &op.docs_url));
            }
        }
        grant.installation_id
    };
    let key = repo_key(repo);
    let visible = lock(&shared.repos).contains(&key)
        && installation_id.is_none_or(|id| {
            lock(&shared.installations)
                .get(&key)
                .is_some_and(|i| *i == id)
        });
    if visible {
        Ok(())
    } else {
        // GitHub does not reveal whether a repository exists to a token that cannot see it.
        Err(Answer::error(404, "Not Found", &op.docs_url))
    }
}

/// Verifies an App JWT the way GitHub does and returns the App's id.
fn authenticate_app(shared: &Shared, req: &HttpRequest) -> Result<u64, Answer> {
    let undecodable = || Answer::error(401, "A JSON web token could not be decoded", GENERIC_DOCS);
    let Credential::Token(jwt) = credential(req) else {
        return Err(Answer::error(401, "Requires authentication", GENERIC_DOCS));
    };
    // GitHub takes an App's JWT only as `Bearer`; after `token` it is read
    // as a token, which it is not.
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("bearer "))
        });
    if !bearer {
        return Err(Answer::error(401, "Bad credentials", GENERIC_DOCS));
    }
    let app = lock(&shared.app);
    let Some(app) = app.as_ref() else {
        return Err(undecodable());
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // Only `exp` is left to the library: it reads `iss` as a string, while GitHub also accepts
    // the App id as a number, so `iss` and `iat` are checked below.
    validation.set_required_spec_claims(&["exp"]);
    // GitHub documents no tolerance: a client absorbs drift by backdating `iat`.
    validation.leeway = 0;
    // Expiry is checked below against the fake's own clock, which a test may move.
    validation.validate_exp = false;
    let claims = match jsonwebtoken::decode::<Value>(&jwt, &app.key, &validation) {
        Ok(data) => data.claims,
        Err(error) => {
            return Err(match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Answer::error(
                    401,
                    "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
                    GENERIC_DOCS,
                ),
                _ => undecodable(),
            });
        }
    };
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(Answer::error(
            401,
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
            GENERIC_DOCS,
        ));
    };
    let now = fake_epoch_secs(shared);
    if exp <= now {
        return Err(Answer::error(
            401,
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
            GENERIC_DOCS,
        ));
    }
    if iat > now {
        return Err(Answer::error(
            401,
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
            GENERIC_DOCS,
        ));
    }
    if exp > now + MAX_JWT_LIFETIME_SECS {
        return Err(Answer::error(
            401,
            "'Expiration time' claim ('exp') is too far in the future",
            GENERIC_DOCS,
        ));
    }
    // GitHub accepts the App id, as a number or a string, or the client id in `iss`.
    let issuer_matches = match &claims["iss"] {
        Value::Number(n) => n.as_u64() == Some(app.app_id),
        Value::String(s) => s == &app.app_id.to_string() || s == &app.client_id,
        _ => false,
    };
    if !issuer_matches {
        return Err(undecodable());
    }
    Ok(app.app_id)
}

/// An installation object shaped like GitHub's documented example, for this App and owner.
fn installation_body(shared: &Shared, app_id: u64, installation_id: u64, owner: &str) -> Value {
    let base = shared
        .base_url
        .get()
        .map_or("https://api.github.com", String::as_str);
    let account = json!({
            "login": owner,
            "id": 1,
            "node_id": "MDEyOk9yZ2FuaXphdGlvbjE=",
            "avatar_url": "https://github.com/images/error/hubot_happy.gif",
            "gravatar_id": "",
            "url": format!("https://api.github.com/users/{owner}"),
            "html_url": format!("https://github.com/{owner}"),
            "followers_url": format!("https://api.github.com/users/{owner}/followers"),
            "following_url": format!("https://api.github.com/users/{owner}/following{{/other_user}}"),
            "gists_url": format!("https://api.github.com/users/{owner}/gists{{/gist_id}}"),
            "starred_url": format!("https://api.github.com/users/{owner}/starred{{/owner}}{{/repo}}"),
            "subscriptions_url": format!("https://api.github.com/users/{owner}/subscriptions"),
            "organizations_url": format!("https://api.github.com/users/{owner}/orgs"),
            "repos_url": format!("https://api.github.com/users/{owner}/repos"),
            "events_url": format!("https://api.github.com/users/{owner}/events{{/privacy}}"),
            "received_events_url": format!("https://api.github.com/users/{owner}/received_events"),
            "type": "Organization",
            "site_admin": false
    });
    let suspended = lock(&shared.suspended).contains(&installation_id);
    // Whoever suspended it: an owner of the account, a user.
    let mut suspended_by = account.clone();
    suspended_by["login"] = json!("octocat");
    suspended_by["type"] = json!("User");
    json!({
        "id": installation_id,
        "account": account,
        "repository_selection": "selected",
        "access_tokens_url": format!("{base}/app/installations/{installation_id}/access_tokens"),
        "repositories_url": format!("{base}/installation/repositories"),
        "html_url": format!("https://github.com/organizations/{owner}/settings/installations/{installation_id}"),
        "app_id": app_id,
        "client_id": "Iv1.ab1112223334445c",
        "target_id": 1,
        "target_type": "Organization",
        "permissions": { "actions": "write", "contents": "write", "metadata": "read" },
        "events": [],
        "created_at": "2018-02-09T20:51:14Z",
        "updated_at": "2018-02-09T20:51:14Z",
        "single_file_name": null,
        "app_slug": "dispatch-relay",
        "suspended_at": suspended.then_some("2018-02-10T09:30:00Z"),
        "suspended_by": suspended.then_some(suspended_by)
    })
}

// ---------------------------------------------------------------------------------------------
// Installation token permissions, example bodies and the github.com web pages.

/// What an installation grants unless a test says otherwise.
fn default_installation_permissions() -> Map<String, Value> {
    let Value::Object(map) = json!({"actions": "write", "contents": "write", "metadata": "read"})
    else {
        unreachable!()
    };
    map
}

/// The level an installation token holds for `permission`; `None` for a personal access token
/// (or an unknown token), which is not limited this way.
fn token_permission(shared: &Shared, req: &HttpRequest, permission: &str) -> Option<String> {
    let Credential::Token(token) = credential(req) else {
        return None;
    };
    let tokens = lock(&shared.tokens);
    let permissions = tokens.get(&token)?.permissions.as_ref()?;
    Some(
        permissions
            .get(permission)
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_owned(),
    )
}

/// Refuses a token without write access to `permission` (an installation token or a
/// fine-grained personal token), as GitHub does, naming the kind of token.
fn require_permission(shared: &Shared, req: &HttpRequest, permission: &str) -> Result<(), Answer> {
    match token_permission(shared, req, permission).as_deref() {
        None | Some("write") => Ok(()),
        Some(_) => {
            let installation = match credential(req) {
                Credential::Token(token) => lock(&shared.tokens)
                    .get(&token)
                    .is_some_and(|grant| grant.installation_id.is_some()),
                _ => false,
            };
            let message = if installation {
                "Resource not accessible by integration"
            } else {
                "Resource not accessible by personal access token"
            };
            Err(Answer::error(403, message, GENERIC_DOCS))
        }
    }
}

/// The raw OpenAPI document, for building example answers.
fn raw_doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = std::fs::read_to_string(SPEC_PATH).expect("read the OpenAPI description");
        serde_json::from_str(&text).expect("the OpenAPI description is JSON")
    })
}

/// The documented JSON schema of one answer.
fn response_schema(path: &str, method: &str, status: &str) -> Value {
    let doc = raw_doc();
    let response = resolve(doc, &doc["paths"][path][method]["responses"][status]);
    resolve(doc, &response["content"]["application/json"]["schema"]).clone()
}

/// A value that satisfies `schema`: every required property filled with a plain value of its
/// type. Tests then set the fields they care about.
fn example_for(schema: &Value) -> Value {
    let doc = raw_doc();
    let schema = resolve(doc, schema);
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        let mut merged = Map::new();
        for part in parts {
            if let Value::Object(map) = example_for(part) {
                merged.extend(map);
            }
        }
        return Value::Object(merged);
    }
    if let Some(first) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return example_for(first);
    }
    if schema.get("nullable") == Some(&Value::Bool(true)) {
        return Value::Null;
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return first.clone();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") | None if schema.get("properties").is_some() => {
            let mut out = Map::new();
            let required = schema.get("required").and_then(Value::as_array);
            for name in required.into_iter().flatten().filter_map(Value::as_str) {
                let property = &schema["properties"][name];
                out.insert(name.to_owned(), example_for(property));
            }
            Value::Object(out)
        }
        Some("object") => json!({}),
        Some("array") => json!([]),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(false),
        Some("string") => match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => json!("2024-01-01T00:00:00Z"),
            Some("uri") => json!("https://api.github.com/"),
            _ => json!("x"),
        },
        _ => Value::Null,
    }
}

/// Formats epoch seconds as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    let stamp = utc_timestamp(secs, ' ');
    let (date, clock) = stamp.split_once(' ').unwrap_or((&stamp, ""));
    let mut parts = date.split('-');
    let (year, month, day) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("1").parse::<usize>().unwrap_or(1),
        parts.next().unwrap_or(""),
    );
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let weekday = WEEKDAYS[((secs / 86_400) % 7) as usize];
    format!("{weekday}, {day} {} {year} {clock} GMT", MONTHS[month - 1])
}

/// The github.com web pages the App manifest flow visits, outside the REST API: the
/// "create app" page, which GitHub shows for confirmation and then redirects back from with a
/// one-time code. The fake skips the confirmation and redirects at once.
fn web_page(
    shared: &Shared,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Option<HttpResponse> {
    let is_create_page = path == "/settings/apps/new"
        || (path.starts_with("/organizations/") && path.ends_with("/settings/apps/new"));
    if !is_create_page {
        return None;
    }
    let record = |status: u16, form: Option<Value>| {
        let mut log = lock(&shared.log);
        log.requests.push(RecordedRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            operation_id: Some("web/create-app".to_owned()),
            headers: Vec::new(),
            body: form,
            received_at: Instant::now(),
            status,
        });
    };
    if method != "POST" {
        record(405, None);
        return Some(HttpResponse::MethodNotAllowed().finish());
    }
    let fields: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let manifest = fields
        .get("manifest")
        .and_then(|m| serde_json::from_str::<Value>(m).ok());
    let Some(manifest) = manifest else {
        shared.violation(method, path, "the form has no JSON `manifest` field");
        record(422, None);
        return Some(HttpResponse::UnprocessableEntity().body("Invalid manifest"));
    };
    let mut problems = Vec::new();
    for required in ["url"] {
        if manifest.get(required).and_then(Value::as_str).is_none() {
            problems.push(format!("`{required}` is missing"));
        }
    }
    let redirect = manifest.get("redirect_url").and_then(Value::as_str);
    if redirect.is_none() {
        problems.push("`redirect_url` is missing".to_owned());
    }
    for problem in &problems {
        shared.violation(method, path, format!("manifest: {problem}"));
    }
    let code: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    // GitHub documents `state` as a query parameter of the form's action URL.
    let state = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "state")
        .map(|(_, value)| value.into_owned());
    let Some(state) = state else {
        shared.violation(method, path, "the form's action URL has no `state`");
        record(422, None);
        return Some(HttpResponse::UnprocessableEntity().body("Missing state"));
    };
    record(
        302,
        Some(json!({"manifest": manifest, "state": state, "code": code})),
    );
    let Some(redirect) = redirect else {
        return Some(HttpResponse::UnprocessableEntity().body("Invalid manifest"));
    };
    lock(&shared.manifest_codes).insert(code.clone(), manifest.clone());
    let mut target = url::Url::parse(redirect).ok()?;
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state);
    Some(
        HttpResponse::Found()
            .insert_header((header::LOCATION, target.to_string()))
            .finish(),
    )
}
