//! Plain HTTP GETs to hosts other than GitHub, for the webhook edge: SNS
//! subscription confirmations (`SubscribeURL`) and SNS signing
//! certificates (`SigningCertURL`). It lives here because this module is
//! the only one that knows reqwest; it decides nothing about what it
//! fetches, the caller has already checked the URL.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::USER_AGENT;

use super::USER_AGENT_VALUE;

/// The most bytes kept from an answer; a certificate or a confirmation
/// page is a few kilobytes.
const MAX_BODY: usize = 256 * 1024;

/// How long one GET may take; SNS itself waits 15 s for our answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A GET that did not end in a 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    #[error("the request failed: {0}")]
    Transport(String),
    #[error("the server answered {0}")]
    Status(u16),
    #[error("the answer is larger than {MAX_BODY} bytes")]
    TooLarge,
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(TIMEOUT)
            // A redirect could lead anywhere; the URL was checked, its
            // targets would not be.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client without custom TLS settings always builds")
    })
}

/// GETs `url` and returns the body of a 2xx answer.
pub async fn get(url: &str) -> Result<Vec<u8>, GetError> {
    let mut response = client()
        .get(url)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .send()
        .await
        .map_err(|e| GetError::Transport(e.without_url().to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(GetError::Status(status.as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| GetError::Transport(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(GetError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
