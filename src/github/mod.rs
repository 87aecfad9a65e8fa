//! The GitHub REST client: the only module that knows reqwest.
//!
//! It sends one prepared request and reports what GitHub answered, reduced to
//! what the retry classifier needs (status, rate-limit headers, message).
//! It never decides what to do with the answer: that is `dispatch::retry`.

pub mod outbound;

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};

use crate::secret::Secret;

/// The REST API version every request pins, so that a future default change
/// on GitHub's side cannot alter how our requests are read.
pub const API_VERSION: &str = "2022-11-28";

/// The user agent GitHub requires on every request.
pub const USER_AGENT_VALUE: &str = concat!("dispatch-relay/", env!("CARGO_PKG_VERSION"));

/// How much of an error body is kept: enough for GitHub's message and
/// documentation link, bounded so a misbehaving proxy cannot bloat the store.
const MAX_BODY_KEPT: usize = 2048;

/// What GitHub answered, reduced to the parts that matter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    pub status: u16,
    pub rate: RateHeaders,
    /// GitHub's `message` field when the body is JSON, else the start of the body.
    pub message: Option<String>,
    /// The JSON body on success (workflow dispatch with run details).
    pub body: Option<String>,
}

/// The rate-limit headers GitHub sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateHeaders {
    /// `retry-after`, in seconds.
    pub retry_after_secs: Option<u64>,
    /// `x-ratelimit-remaining`.
    pub remaining: Option<u64>,
    /// `x-ratelimit-reset`, in seconds since the Unix epoch.
    pub reset_epoch_secs: Option<u64>,
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
    http: reqwest::Client,
    api_url: String,
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
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| TransportError::Other(e.to_string()))?;
        Ok(GitHubClient {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
        })
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Sends `POST {api_url}{path}` with a JSON body and a bearer token.
    pub async fn post_json(
        &self,
        path: &str,
        body: &str,
        token: &Secret,
    ) -> Result<Answer, TransportError> {
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                TransportError::Other(
                    "the token contains characters not allowed in a header".into(),
                )
            })?;
        auth.set_sensitive(true);
        let response = self
            .http
            .post(format!("{}{}", self.api_url, path))
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(transport_error)?;
        read_answer(response).await
    }
}

fn transport_error(e: reqwest::Error) -> TransportError {
    // reqwest's Display includes the URL, which holds no secret here (the
    // token travels in a header), so it is safe to keep.
    if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_connect() {
        TransportError::Connect(root_cause(&e))
    } else {
        TransportError::Other(root_cause(&e))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn read_answer(response: reqwest::Response) -> Result<Answer, TransportError> {
    let status = response.status().as_u16();
    let header = |name: &str| -> Option<u64> {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    };
    let rate = RateHeaders {
        retry_after_secs: header("retry-after"),
        remaining: header("x-ratelimit-remaining"),
        reset_epoch_secs: header("x-ratelimit-reset"),
    };
    let text = response.text().await.map_err(transport_error)?;
    let text = truncate(&text, MAX_BODY_KEPT);
    let message = if (200..300).contains(&status) {
        None
    } else {
        Some(
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| text.clone()),
        )
    };
    let body = ((200..300).contains(&status) && !text.is_empty()).then_some(text);
    Ok(Answer {
        status,
        rate,
        message,
        body,
    })
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Where tokens for GitHub come from.
#[derive(Debug)]
pub enum Credentials {
    /// A personal access token (or any fixed token).
    Token(Secret),
}

/// A credential could not produce a token.
#[derive(Debug, thiserror::Error)]
#[error("no GitHub token available: {0}")]
pub struct CredentialError(pub String);

impl Credentials {
    /// The token to use for a dispatch to `repo`.
    pub async fn token_for(&self, _repo: &str) -> Result<Secret, CredentialError> {
        match self {
            Credentials::Token(token) => Ok(token.clone()),
        }
    }

    /// A name for the credential that is safe for logs and metric labels.
    pub fn label(&self, _repo: &str) -> String {
        match self {
            Credentials::Token(_) => "token".to_string(),
        }
    }
}
