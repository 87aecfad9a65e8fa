//! The GitHub REST client: the only module that knows reqwest.
//!
//! It sends one prepared request and reports what GitHub answered, reduced to
//! what the retry classifier needs (status, rate-limit headers, message),
//! and reads what an answer says (`rate_limit`: is it a rate limit, how long
//! does it ask to wait; the reasons below: what a refusal means). It never
//! decides what to do with the answer: that is `dispatch::retry`.
//! The `app` submodule holds GitHub App authentication and its token cache;
//! `manifest` holds the App manifest flow of `dispatch-relay setup github-app`.

pub mod app;
pub mod manifest;
pub mod outbound;
pub mod preflight;
pub mod rate_limit;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};

use crate::secret::Secret;
use crate::text::truncate;

/// The REST API version every request pins, so that a future default change
/// on GitHub's side cannot alter how our requests are read.
pub const API_VERSION: &str = "2022-11-28";

/// The user agent GitHub requires on every request.
pub const USER_AGENT_VALUE: &str = concat!("dispatch-relay/", env!("CARGO_PKG_VERSION"));

/// The reason a dispatch answered 401 fails with.
pub const BAD_CREDENTIALS: &str = "bad credentials: token invalid or expired";

/// The reason a repository dispatch answered 404 fails with.
pub const NOT_FOUND: &str = "repository not found, or the credential cannot see it — a classic PAT needs `repo`, \
a fine-grained token Contents: write, an App must be installed on the repository with Contents: write";

/// Why GitHub answered 404 to a classic personal access token, when the
/// token's scopes (`x-oauth-scopes`, on every answer to such a token)
/// narrow the causes down. Without `repo`, GitHub answers 404 for a private
/// repository as for one that does not exist. With it, the scope is not the
/// cause, nor are the fine-grained and App ones: what is left is the name
/// (or, for a workflow target, the workflow file), the access of the
/// token's owner, and single sign-on. `None` when the list is empty, which
/// does not tell a classic token from others.
pub fn classic_token_not_found(scopes: &str, workflow: bool) -> Option<String> {
    let scopes: Vec<&str> = scopes
        .split(',')
        .map(str::trim)
        .filter(|scope| !scope.is_empty())
        .collect();
    if scopes.is_empty() {
        return None;
    }
    if scopes.contains(&"repo") {
        let causes = "the classic token has the `repo` scope, so check the repository's name, that the token's owner has access to it, and, for an organization with SAML single sign-on, that the token is authorized for the organization";
        return Some(if workflow {
            format!(
                "workflow not found: the file named in `workflow` must exist on the repository's default branch; or the repository is not found, or the token's owner cannot see it: {causes}"
            )
        } else {
            format!("repository not found, or the token's owner cannot see it: {causes}")
        });
    }
    let named: Vec<String> = scopes.iter().map(|scope| format!("`{scope}`")).collect();
    Some(format!(
        "repository not found, or the credential cannot see it: the classic token has only {}, and without `repo` GitHub answers 404 for a private repository; add the `repo` scope to the token",
        named.join(", ")
    ))
}

/// Why an answer is not GitHub's: a 2xx or a 404 without the
/// `x-github-request-id` that every answer of GitHub's API (and of GitHub
/// Enterprise Server's) carries comes from another server, most often one
/// that `github.api_url` names by mistake; an HTML page comes from
/// GitHub's web front, which `api_url` names without `/api/v3`.
pub const NOT_GITHUB: &str = "the server did not answer as GitHub's API does (no X-GitHub-Request-Id, \
or a web page where the API answers JSON): check github.api_url (GitHub Enterprise Server's API is \
https://HOST/api/v3)";

/// Why a workflow dispatch was answered 404.
pub const WORKFLOW_NOT_FOUND: &str = "workflow not found: the file named in `workflow` must exist on the \
repository's default branch; or the repository is not found, or the credential cannot see it — a classic PAT \
needs `repo`, a fine-grained token Actions: write, an App must be installed on the repository with Actions: write";

/// How much of an error body is kept: enough for GitHub's message and
/// documentation link, bounded so a misbehaving proxy cannot bloat the store.
const MAX_BODY_KEPT: usize = 2048;

/// How much of a successful body is kept. Successful answers are parsed
/// (a repository, an installation, a token), so they must stay whole; the
/// bound only protects memory from a misbehaving proxy.
const MAX_SUCCESS_BODY: usize = 1024 * 1024;

/// The longest message kept from an error body that is not GitHub's JSON
/// (an HTML page from a proxy or load balancer), after its markup and
/// spacing are dropped.
const MAX_PLAIN_MESSAGE: usize = 300;

/// What GitHub answered, reduced to the parts that matter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    pub status: u16,
    pub rate: RateHeaders,
    /// GitHub's `message` field when the body is JSON, else the start of the body.
    pub message: Option<String>,
    /// The JSON body on success (workflow dispatch with run details).
    pub body: Option<String>,
    /// `x-oauth-scopes`: the scopes of a classic personal access token
    /// (absent for fine-grained tokens and App tokens).
    pub oauth_scopes: Option<String>,
    /// Whether the answer carries `x-github-request-id`, as every answer of
    /// GitHub's API (and of GitHub Enterprise Server's) does, and is not a
    /// web page: a 404 without it, or an HTML one, comes from a server that
    /// is not the API, such as a wrong `api_url`.
    pub from_github: bool,
    /// The path GitHub redirected the request to, when it did: a repository
    /// renamed or transferred is answered at its id (`/repositories/{id}/…`).
    pub redirected_to: Option<String>,
    /// The address in `x-github-sso` (`required; url=...`) where the
    /// token's owner authorizes it for an organization that enforces SAML
    /// single sign-on.
    pub sso_url: Option<String>,
}

impl Answer {
    /// Whether the answer is a 2xx or a 404 from a server that is not
    /// GitHub's API (no `x-github-request-id`, or a web page): neither a
    /// request GitHub took nor a resource it lacks (decision 39).
    pub fn not_from_github(&self) -> bool {
        !self.from_github && matches!(self.status, 200..=299 | 404)
    }
}

/// The rate-limit headers GitHub sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateHeaders {
    /// `retry-after`, in seconds.
    pub retry_after_secs: Option<u64>,
    /// `x-ratelimit-remaining`.
    pub remaining: Option<u64>,
    /// `x-ratelimit-limit`: what `remaining` returns to at the reset.
    pub limit: Option<u64>,
    /// `x-ratelimit-reset`, in seconds since the Unix epoch.
    pub reset_epoch_secs: Option<u64>,
    /// GitHub's clock when it answered (the `Date` header), in seconds
    /// since the Unix epoch: `reset_epoch_secs` is read against it, and a
    /// GitHub App JWT refused for its `iat` or `exp` is corrected by it.
    pub date_epoch_secs: Option<u64>,
}

/// A request that never got an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("timed out waiting for GitHub")]
    Timeout,
    #[error("could not connect to GitHub: {0}")]
    Connect(String),
    #[error("request to GitHub failed: {0}")]
    Other(String),
}

/// A configured GitHub API client; cheap to clone.
#[derive(Clone, Debug)]
pub struct GitHubClient {
    /// Sends the GETs, which follow any of GitHub's redirects.
    http: reqwest::Client,
    /// Sends every other method, and follows only the redirects that keep
    /// the method and the body (307 and 308): a client follows a 301, 302
    /// or 303 with a GET and no body, which would turn a dispatch into a
    /// read of some other resource and report that read's answer.
    http_keeping_method: reqwest::Client,
    api_url: String,
    /// Hosts known to refuse `return_run_details` in a workflow dispatch
    /// (older GitHub Enterprise Server answers 400 or 422), so that the field
    /// is only tried once per host.
    no_run_details: Arc<Mutex<HashSet<String>>>,
}

impl GitHubClient {
    pub fn new(api_url: &str, timeout: Duration) -> Result<GitHubClient, TransportError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static(API_VERSION),
        );
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        let client = |keeping_method_only: bool| {
            reqwest::Client::builder()
                .default_headers(headers.clone())
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .pool_max_idle_per_host(64)
                .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                    follow_within_origin(attempt, keeping_method_only)
                }))
                .build()
                .map_err(|e| TransportError::Other(e.to_string()))
        };
        Ok(GitHubClient {
            http: client(false)?,
            http_keeping_method: client(true)?,
            api_url: api_url.trim_end_matches('/').to_string(),
            no_run_details: Arc::default(),
        })
    }

    /// The host part of the API URL, the key for what is remembered per host.
    fn host(&self) -> String {
        url::Url::parse(&self.api_url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
            })
            .unwrap_or_else(|| self.api_url.clone())
    }

    /// Whether workflow dispatches to this host should ask for run details.
    pub fn run_details_supported(&self) -> bool {
        !lock(&self.no_run_details).contains(&self.host())
    }

    /// Remembers that this host refuses `return_run_details`.
    pub fn forget_run_details(&self) {
        lock(&self.no_run_details).insert(self.host());
    }

    /// Sends `POST {api_url}{path}` with a JSON body and a bearer token.
    pub async fn post_json(
        &self,
        path: &str,
        body: &str,
        token: &Secret,
    ) -> Result<Answer, TransportError> {
        self.send(reqwest::Method::POST, path, Some(body), token)
            .await
    }

    /// Sends `GET {api_url}{path}` with a bearer token.
    pub async fn get(&self, path: &str, token: &Secret) -> Result<Answer, TransportError> {
        self.send(reqwest::Method::GET, path, None, token).await
    }

    /// Sends one request; `auth` is a token or an App JWT, sent as `Bearer`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        auth: &Secret,
    ) -> Result<Answer, TransportError> {
        let mut header =
            HeaderValue::from_str(&format!("Bearer {}", auth.expose())).map_err(|_| {
                TransportError::Other(
                    "the token contains characters not allowed in a header".into(),
                )
            })?;
        header.set_sensitive(true);
        let http = self.client_for(&method);
        let mut request = http
            .request(method, format!("{}{}", self.api_url, path))
            .header(AUTHORIZATION, header);
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let request = request.build().map_err(transport_error)?;
        let requested = request.url().clone();
        let response = http.execute(request).await.map_err(transport_error)?;
        let redirected_to =
            (response.url() != &requested).then(|| response.url().path().to_string());
        let answer = read_answer(response, Some(auth)).await?;
        Ok(Answer {
            redirected_to,
            ..answer
        })
    }

    /// The client that sends `method`: only a GET may follow a redirect that
    /// turns the request into a GET.
    fn client_for(&self, method: &reqwest::Method) -> &reqwest::Client {
        if method == reqwest::Method::GET {
            &self.http
        } else {
            &self.http_keeping_method
        }
    }

    /// Sends an unauthenticated POST without a body (the App manifest
    /// conversion takes neither: the one-time code in the path is the proof).
    pub async fn post_anonymous(&self, path: &str) -> Result<Answer, TransportError> {
        let response = self
            .http_keeping_method
            .post(format!("{}{}", self.api_url, path))
            .send()
            .await
            .map_err(transport_error)?;
        read_answer(response, None).await
    }
}

/// How many redirects one request follows: GitHub sends one for a
/// repository renamed or transferred; more is a loop.
const MAX_REDIRECTS: usize = 3;

/// GitHub answers a request to a repository's former name (renamed, or
/// transferred to another owner) with a redirect to its id
/// (`/repositories/{id}/…`), 307 for a dispatch, which is to be repeated
/// there. That redirect, on the API's own host, is the only one followed:
/// the credential is not sent anywhere else, and any other redirect comes
/// back as the answer, which fails the dispatch by its status. With
/// `keeping_method_only`, so is a redirect that a client follows with a GET
/// (301, 302, 303).
fn follow_within_origin(
    attempt: reqwest::redirect::Attempt<'_>,
    keeping_method_only: bool,
) -> reqwest::redirect::Action {
    let keeps_method = matches!(attempt.status().as_u16(), 307 | 308);
    let first = attempt.previous().first();
    let same_origin = first.is_some_and(|first| {
        first.scheme() == attempt.url().scheme()
            && first.host_str() == attempt.url().host_str()
            && first.port_or_known_default() == attempt.url().port_or_known_default()
    });
    let to_a_repository_id = repository_id(attempt.url().path()).is_some();
    if same_origin
        && to_a_repository_id
        && (keeps_method || !keeping_method_only)
        && attempt.previous().len() <= MAX_REDIRECTS
    {
        attempt.follow()
    } else {
        attempt.stop()
    }
}

/// The repository id in a path GitHub redirected a request to, as it does
/// for a renamed or transferred repository (`/repositories/{id}/…`, after
/// the API URL's own path); `None` for any other path.
fn repository_id(path: &str) -> Option<u64> {
    let (_, rest) = path.split_once("/repositories/")?;
    rest.split('/').next()?.parse().ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the set is still valid.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn transport_error(e: reqwest::Error) -> TransportError {
    // reqwest's Display includes the URL, and the manifest conversion's URL
    // carries its one-time code, which buys the App's private key: the URL
    // is dropped from every error.
    let e = e.without_url();
    if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_connect() {
        TransportError::Connect(with_certificate_hint(root_cause(&e)))
    } else {
        TransportError::Other(root_cause(&e))
    }
}

/// A certificate GitHub's host presented that no trusted authority signed
/// is nearly always a GitHub Enterprise Server behind a company's own CA,
/// which the system's trust store holds and the relay was not told of.
/// (The words are rustls's: "invalid peer certificate: UnknownIssuer".)
fn with_certificate_hint(cause: String) -> String {
    if cause.contains("invalid peer certificate") {
        format!(
            "{cause} (a server whose certificate a private CA issued, as for many GitHub Enterprise Servers, needs that CA in the system's trust store or in the file SSL_CERT_FILE names)"
        )
    } else {
        cause
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The wait a `retry-after` states, in seconds: GitHub writes seconds, and
/// RFC 9110 also allows an HTTP-date, which a proxy or a GitHub Enterprise
/// Server's front may send. A date is counted from the answer's own `date`
/// where it has one, so that a clock set apart from the server's does not
/// change the wait; one already past is no wait.
fn retry_after_secs(value: Option<&str>, date: Option<&str>, now_epoch_secs: u64) -> Option<u64> {
    let value = value?.trim();
    if let Ok(secs) = value.parse() {
        return Some(secs);
    }
    let until = crate::clock::parse_http_date(value)?;
    let now = date
        .and_then(crate::clock::parse_http_date)
        .unwrap_or_else(|| i64::try_from(now_epoch_secs).unwrap_or(i64::MAX));
    Some(u64::try_from(until.saturating_sub(now)).unwrap_or(0))
}

/// Reads an answer. `sent` is the credential the request carried: a proxy
/// that quotes the request in its error page would otherwise carry it into
/// the log, the store and alerts, so it is taken out of the text first.
async fn read_answer(
    mut response: reqwest::Response,
    sent: Option<&Secret>,
) -> Result<Answer, TransportError> {
    let status = response.status().as_u16();
    let header = |name: &str| -> Option<u64> {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    };
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok());
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok());
    let rate = RateHeaders {
        retry_after_secs: retry_after_secs(retry_after, date, crate::clock::now_epoch_secs()),
        remaining: header("x-ratelimit-remaining"),
        limit: header("x-ratelimit-limit"),
        reset_epoch_secs: header("x-ratelimit-reset"),
        date_epoch_secs: date
            .and_then(crate::clock::parse_http_date)
            .and_then(|secs| u64::try_from(secs).ok()),
    };
    // GitHub's web front (an api_url without `/api/v3` on GitHub Enterprise
    // Server, or `https://github.com`) sends the request id too, but
    // answers with web pages where the API always answers JSON.
    let web_page = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/html")
        });
    let from_github = response.headers().contains_key("x-github-request-id") && !web_page;
    // An empty list says nothing: it is what a classic token without any
    // scope gets, but also, by some accounts, what other tokens get, whose
    // access scopes do not describe.
    let oauth_scopes = response
        .headers()
        .get("x-oauth-scopes")
        .and_then(|v| v.to_str().ok())
        .filter(|scopes| !scopes.trim().is_empty())
        .map(str::to_string);
    let sso_url = response
        .headers()
        .get("x-github-sso")
        .and_then(|v| v.to_str().ok())
        .and_then(sso_authorization_url);
    let keep = if (200..300).contains(&status) {
        MAX_SUCCESS_BODY
    } else {
        MAX_BODY_KEPT
    };
    // Read only as far as is kept: a proxy answering with a huge body must
    // not take the memory it is kept out of. The rest is left unread, and
    // the connection is not reused.
    let mut bytes = Vec::new();
    let read = loop {
        if bytes.len() > keep {
            break Ok(());
        }
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    // Once GitHub has answered 2xx the dispatch happened: a body that then
    // fails to arrive must not turn it into a transport error, which would
    // send it again (a second workflow run). Only its details are lost.
    match read {
        Ok(()) => {}
        Err(_) if (200..300).contains(&status) => bytes.clear(),
        Err(e) => return Err(transport_error(e)),
    }
    let mut text = String::from_utf8_lossy(&bytes);
    if let Some(secret) = sent.map(Secret::expose).filter(|s| !s.is_empty())
        && text.contains(secret)
    {
        text = text.replace(secret, "[redacted]").into();
    }
    let text = truncate(&text, keep);
    let message = if (200..300).contains(&status) {
        None
    } else {
        Some(
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| github_message(&v))
                .unwrap_or_else(|| plain_message(&text)),
        )
    };
    let body = ((200..300).contains(&status) && !text.is_empty()).then_some(text);
    Ok(Answer {
        status,
        rate,
        message,
        body,
        oauth_scopes,
        from_github,
        redirected_to: None,
        sso_url,
    })
}

/// The authorization address of an `x-github-sso: required; url=...`
/// header. Its other form (`partial-results; organizations=...`) only
/// lists what a listing left out.
fn sso_authorization_url(header: &str) -> Option<String> {
    let mut parts = header.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("required") {
        return None;
    }
    parts
        .find_map(|part| part.strip_prefix("url="))
        .filter(|url| url.starts_with("https://") || url.starts_with("http://"))
        // GitHub's address is a few dozen characters; a longer one is not
        // worth a log line.
        .filter(|url| url.len() <= 500 && !url.chars().any(char::is_whitespace))
        .map(str::to_owned)
}

/// Why GitHub answered `403` to a token not authorized for an organization
/// that enforces SAML single sign-on, when that is why. Such a token works
/// for every other organization, so the dispatch fails rather than holding
/// the credential's queue; it names where the token's owner authorizes it.
pub fn saml_refusal(answer: &Answer) -> Option<String> {
    let saml = answer.status == 403
        && (answer.sso_url.is_some()
            || answer
                .message
                .as_deref()
                .is_some_and(|message| message.contains("SAML enforcement")));
    saml.then(|| {
        let lead = "forbidden (403): the organization enforces SAML single sign-on and the token is not authorized for it";
        match &answer.sso_url {
            Some(url) => format!(
                "{lead}; its owner authorizes it at {url}, then `redeliver --failed` sends what failed"
            ),
            None => format!(
                "{lead}; its owner authorizes it under Settings, Developer settings, Personal access tokens (Configure SSO), then `redeliver --failed` sends what failed"
            ),
        }
    })
}

/// GitHub's `message`, followed by the details of a validation error.
/// A `422` says only "Validation Failed" in its `message`; what failed is in
/// `errors`, each a string or an object with a `message`, or a `field` and
/// a `code` (GitHub's `validation-error` schema).
fn github_message(body: &serde_json::Value) -> Option<String> {
    let message = body.get("message")?.as_str()?;
    let details: Vec<String> = body
        .get("errors")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(validation_detail)
        .filter(|detail| detail != message)
        .collect();
    Some(if details.is_empty() {
        message.to_string()
    } else {
        format!("{message} ({})", details.join("; "))
    })
}

fn validation_detail(error: &serde_json::Value) -> Option<String> {
    if let Some(text) = error.as_str() {
        return Some(text.to_string());
    }
    if let Some(text) = error.get("message").and_then(serde_json::Value::as_str) {
        return Some(text.to_string());
    }
    let field = error.get("field").and_then(serde_json::Value::as_str);
    let code = error.get("code").and_then(serde_json::Value::as_str);
    match (field, code) {
        (Some(field), Some(code)) => Some(format!("{field}: {code}")),
        (Some(only), None) | (None, Some(only)) => Some(only.to_string()),
        (None, None) => None,
    }
}

/// A readable message from an error body that is not GitHub's JSON: an HTML
/// page's title with its character references read (`&middot;` as `·`), or
/// the text with its spacing collapsed, shortened.
fn plain_message(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let title = lower.find("<title>").and_then(|start| {
        let start = start + "<title>".len();
        let end = start + lower[start..].find("</title>")?;
        // Lower-casing ASCII keeps every byte where it was.
        Some(&text[start..end])
    });
    let text = match title {
        Some(title) => html_escape::decode_html_entities(title),
        None => text.into(),
    };
    truncate(&crate::text::one_line(&text), MAX_PLAIN_MESSAGE)
}

pub use app::{CredentialError, Credentials, IssuedToken, Scope};

#[cfg(test)]
mod tests {
    use super::{
        classic_token_not_found, github_message, plain_message, retry_after_secs,
        sso_authorization_url,
    };

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        let date = Some("Tue, 24 Nov 2026 10:00:00 GMT");
        // 2026-11-24T10:00:00Z.
        let now = 1_795_514_400;
        let cases = [
            (Some("7"), None, Some(7)),
            (Some(" 30 "), date, Some(30)),
            (None, date, None),
            (Some("soon"), date, None),
            // Counted from the answer's date, whatever this clock says.
            (Some("Tue, 24 Nov 2026 10:00:10 GMT"), date, Some(10)),
            (Some("Tue, 24 Nov 2026 10:00:10 GMT"), None, Some(10)),
            (Some("Tue, 24 Nov 2026 09:59:00 GMT"), date, Some(0)),
        ];
        for (value, date, wanted) in cases {
            assert_eq!(
                retry_after_secs(value, date, now),
                wanted,
                "{value:?} {date:?}"
            );
        }
        let skewed = now + 3_600;
        assert_eq!(
            retry_after_secs(Some("Tue, 24 Nov 2026 10:00:10 GMT"), date, skewed),
            Some(10)
        );
    }

    #[test]
    fn the_sso_header_gives_its_authorization_address_only_when_required() {
        let url = "https://github.com/orgs/acme/sso?authorization_request=AbC1";
        let cases = [
            (format!("required; url={url}"), Some(url)),
            (format!("Required;url={url}"), Some(url)),
            (
                "partial-results; organizations=21955855,20582480".to_owned(),
                None,
            ),
            ("required; url=javascript:alert(1)".to_owned(), None),
            ("required".to_owned(), None),
            ("required; url=https://a b".to_owned(), None),
        ];
        for (header, expected) in cases {
            assert_eq!(
                sso_authorization_url(&header).as_deref(),
                expected,
                "{header}"
            );
        }
    }

    #[test]
    fn a_validation_errors_details_follow_githubs_message() {
        let cases = [
            (r#"{"message":"Bad credentials"}"#, Some("Bad credentials")),
            (
                r#"{"message":"Validation Failed","errors":[{"resource":"Dispatch","code":"custom","field":"client_payload","message":"client_payload has too many keys"}]}"#,
                Some("Validation Failed (client_payload has too many keys)"),
            ),
            (
                r#"{"message":"Validation Failed","errors":[{"resource":"Dispatch","field":"event_type","code":"missing_field"},{"code":"invalid"}]}"#,
                Some("Validation Failed (event_type: missing_field; invalid)"),
            ),
            (
                r#"{"message":"Invalid request.","errors":["No subschema in \"oneOf\" matched."]}"#,
                Some(r#"Invalid request. (No subschema in "oneOf" matched.)"#),
            ),
            // A detail that repeats the message, or says nothing, adds nothing.
            (
                r#"{"message":"Not Found","errors":["Not Found",{"resource":"Repo"}]}"#,
                Some("Not Found"),
            ),
            (r#"{"errors":["no message"]}"#, None),
        ];
        for (body, expected) in cases {
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(github_message(&body).as_deref(), expected, "{body}");
        }
    }

    #[test]
    fn a_classic_tokens_scopes_narrow_a_404_down() {
        let repo_causes = "the classic token has the `repo` scope, so check the repository's name, that the token's owner has access to it, and, for an organization with SAML single sign-on, that the token is authorized for the organization";
        let cases: [(&str, bool, Option<String>); 5] = [
            // An empty list: perhaps not a classic token at all.
            ("", false, None),
            (" ", true, None),
            (
                "read:org, gist",
                false,
                Some("repository not found, or the credential cannot see it: the classic token has only `read:org`, `gist`, and without `repo` GitHub answers 404 for a private repository; add the `repo` scope to the token".into()),
            ),
            (
                "repo, workflow",
                false,
                Some(format!("repository not found, or the token's owner cannot see it: {repo_causes}")),
            ),
            (
                "repo",
                true,
                Some(format!("workflow not found: the file named in `workflow` must exist on the repository's default branch; or the repository is not found, or the token's owner cannot see it: {repo_causes}")),
            ),
        ];
        for (scopes, workflow, reason) in cases {
            assert_eq!(
                classic_token_not_found(scopes, workflow),
                reason,
                "{scopes:?} {workflow}"
            );
        }
    }

    #[test]
    fn error_bodies_that_are_not_json_become_short_readable_messages() {
        let page = "<html>\r\n<head><TITLE>502 Bad Gateway</TITLE></head>\r\n<body><center><h1>502 Bad Gateway</h1></center></body></html>";
        assert_eq!(plain_message(page), "502 Bad Gateway");
        let github_page = "<!DOCTYPE html>\n<html><head><title>Page not found &middot; GitHub &#38; more</title></head></html>";
        assert_eq!(plain_message(github_page), "Page not found · GitHub & more");
        // Outside a page's title, text is quoted as it came.
        assert_eq!(plain_message("a &amp; b"), "a &amp; b");
        assert_eq!(
            plain_message("upstream connect error\n  or disconnect"),
            "upstream connect error or disconnect"
        );
        let long = "x ".repeat(1000);
        assert_eq!(
            plain_message(&long).chars().count(),
            301,
            "300 and an ellipsis"
        );
        assert_eq!(plain_message("<title>unclosed"), "<title>unclosed");
    }
}
