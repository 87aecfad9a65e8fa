//! Where GitHub tokens come from: a fixed token, or a GitHub App whose
//! installation tokens this module mints, caches and renews.
//!
//! For an App it owns the whole token life cycle of design §5: the RS256 JWT
//! (`iat` 60 s in the past, valid for at most ten minutes, corrected for
//! clock skew from GitHub's `Date` header when GitHub refuses it), the
//! installation id looked up per repository and cached, and installation
//! tokens narrowed to one repository and the permissions a dispatch needs,
//! cached per (installation, repository, permission set), renewed five
//! minutes before they expire, and minted one at a time per installation so
//! that a burst of dispatches costs one mint. Tokens are opaque strings of
//! any length; they only ever live in [`Secret`]s, so they never reach a log,
//! an error message or a metric.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::clock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Answer, GitHubClient, TransportError, lock};
use crate::config::{AppCredential, PrivateKeySource};
use crate::secret::Secret;
use crate::telemetry::Metrics;

/// How long before `expires_at` a cached installation token is replaced.
pub const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// How far in the past the JWT's `iat` is put, to absorb clock drift.
const JWT_BACKDATE_SECS: i64 = 60;

/// The JWT's lifetime counted from the backdated `iat`, so that `exp` is
/// nine minutes ahead: GitHub refuses one more than ten minutes ahead of its
/// clock, and the minute left over absorbs a host clock running ahead.
const JWT_LIFETIME_SECS: i64 = 600;

/// The permissions a dispatch needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `repository_dispatch`: Contents write, Metadata read.
    Contents,
    /// `workflow_dispatch`: Actions write, Metadata read.
    Workflow,
}

impl Scope {
    /// The scope a dispatch to this API path needs. The path is
    /// `/repos/{owner}/{repo}/…`, so the segments after the repository's
    /// name decide: a repository may itself be called `actions/workflows`.
    pub fn for_path(path: &str) -> Scope {
        let mut after_repository = path.split('/').skip(4);
        if after_repository.next() == Some("actions")
            && after_repository.next() == Some("workflows")
        {
            Scope::Workflow
        } else {
            Scope::Contents
        }
    }

    /// The `permissions` object of the token request: only what the
    /// dispatch needs, so that an App granted Actions write alone can
    /// start workflows (GitHub refuses a token asking for more than the
    /// App has).
    pub fn permissions(self) -> Value {
        match self {
            Scope::Contents => json!({"contents": "write", "metadata": "read"}),
            Scope::Workflow => json!({"actions": "write", "metadata": "read"}),
        }
    }
}

/// A token ready to send, with what the retry rules need to know about it.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub secret: Secret,
    /// When an App installation token was minted; `None` for a fixed token.
    pub minted_at: Option<Instant>,
}

/// Why no token could be had. Every message is safe to log and store: none
/// holds a token, a JWT or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the GitHub App private key cannot be used: {0}")]
    Key(String),
    /// The key file is not there (yet) or cannot be opened: a secret
    /// mounted after the relay started, a permission being fixed.
    #[error("the GitHub App private key file cannot be read: {0}")]
    KeyUnreadable(String),
    #[error(
        "GitHub refused the App's JWT ({0}): check github.app.id and that the private key belongs to this App"
    )]
    AppRejected(String),
    #[error(
        "the GitHub App is not installed on {0}: install it on the repository (Contents: write, Metadata: read; Actions: write for workflow dispatches)"
    )]
    NotInstalled(String),
    #[error(
        "GitHub App installation {0} (github.app.installation_id) does not exist, or belongs to another App: check the id on the installation's settings page (its URL ends in /installations/ID), or remove installation_id to have each repository's installation looked up"
    )]
    PinnedInstallationNotFound(u64),
    /// A 404 without `x-github-request-id`, which every answer of GitHub's
    /// API carries: the server at `api_url` is not the API.
    #[error("{}", super::NOT_GITHUB)]
    NotGitHub,
    #[error(
        "GitHub App installation {installation} (github.app.installation_id) does not include {repo}: {message}"
    )]
    OutsidePinnedInstallation {
        installation: u64,
        repo: String,
        message: String,
    },
    #[error("the GitHub App installation lacks a permission this dispatch needs ({0})")]
    MissingPermission(String),
    /// GitHub keeps a suspended installation, with its repositories, but
    /// gives it no token until it is unsuspended.
    #[error(
        "GitHub App installation {0} is suspended, and GitHub gives it no token until it is unsuspended: by the App's owner in the App's settings (Advanced), or by the account that installed it (Settings, Applications, Installed GitHub Apps, Configure); then redeliver what failed meanwhile"
    )]
    Suspended(u64),
    #[error("could not reach GitHub for an App token: {0}")]
    Transport(TransportError),
    #[error("GitHub rate-limited an App token request ({status}): {message}")]
    RateLimited {
        status: u16,
        message: String,
        wait: super::rate_limit::RateLimitWait,
    },
    #[error("GitHub answered {0} to an App token request: {1}")]
    Unexpected(u16, String),
}

impl CredentialError {
    /// Whether trying again later cannot help (the configuration or the
    /// installation must change first).
    pub fn is_permanent(&self) -> bool {
        !(self.github_did_not_answer() || matches!(self, CredentialError::KeyUnreadable(_)))
    }

    /// Whether GitHub could not be asked, or did not say: the network, a
    /// rate limit, a 408 or 5xx, or a 2xx whose body could not be read
    /// (the connection dropped mid-answer), a glitch like a 5xx.
    pub fn github_did_not_answer(&self) -> bool {
        matches!(
            self,
            CredentialError::Transport(_)
                | CredentialError::Unexpected(200..=299 | 408 | 500..=599, _)
                | CredentialError::RateLimited { .. }
        )
    }

    /// How long the credential must wait, when GitHub rate-limited the
    /// token request itself.
    pub fn rate_limit_wait(&self) -> Option<super::rate_limit::RateLimitWait> {
        match self {
            CredentialError::RateLimited { wait, .. } => Some(*wait),
            _ => None,
        }
    }

    /// The error for a token or installation answer that is a rate limit
    /// (a 429, or a 403 that says so); such an answer must not be read as
    /// a missing permission, which would fail the dispatch for good.
    fn rate_limited(answer: &Answer) -> Option<CredentialError> {
        let now = clock::now_epoch_secs();
        super::rate_limit::rate_limit_wait(answer, now).map(|wait| CredentialError::RateLimited {
            status: answer.status,
            message: message(answer),
            wait,
        })
    }
}

/// Where tokens for GitHub come from.
#[derive(Debug)]
pub enum Credentials {
    /// A personal access token (or any fixed token).
    Token(Secret),
    /// A GitHub App (boxed: its caches make it much larger than a token).
    App(Box<AppAuth>),
}

impl Credentials {
    /// The credentials a configuration describes.
    pub fn from_config(
        credential: &crate::config::Credential,
        client: GitHubClient,
        metrics: Option<Metrics>,
    ) -> Credentials {
        match credential {
            crate::config::Credential::Token(token) => Credentials::Token(token.clone()),
            crate::config::Credential::App(app) => {
                Credentials::App(Box::new(AppAuth::new(app, client, metrics)))
            }
        }
    }

    /// The token to use for a dispatch of `scope` to `repo`.
    pub async fn token_for(
        &self,
        repo: &str,
        scope: Scope,
    ) -> Result<IssuedToken, CredentialError> {
        match self {
            Credentials::Token(token) => Ok(IssuedToken {
                secret: token.clone(),
                minted_at: None,
            }),
            Credentials::App(app) => app.token_for(repo, scope).await,
        }
    }

    /// Drops a token GitHub refused, and the repository's installation with
    /// it, so that the next `token_for` looks the installation up and mints
    /// a new token. A token already replaced by another task is left alone.
    pub fn invalidate(&self, repo: &str, scope: Scope, refused: &Secret) {
        if let Credentials::App(app) = self {
            app.invalidate(repo, scope, refused);
        }
    }

    /// Time since a 404 last made a token for `repo` be renewed.
    pub fn since_not_found_renewal(&self, repo: &str) -> Option<Duration> {
        match self {
            Credentials::App(app) => lock(&app.not_found_renewals)
                .get(&repo.to_ascii_lowercase())
                .map(Instant::elapsed),
            Credentials::Token(_) => None,
        }
    }

    /// Notes that a 404 made a token for `repo` be renewed.
    pub fn note_not_found_renewal(&self, repo: &str) {
        if let Credentials::App(app) = self {
            lock(&app.not_found_renewals).insert(repo.to_ascii_lowercase(), Instant::now());
        }
    }

    /// The token for `repo` and `scope`, when it is at hand without asking
    /// GitHub (always, for a token credential).
    pub fn token_at_hand(&self, repo: &str, scope: Scope) -> Option<IssuedToken> {
        match self {
            Credentials::Token(token) => Some(IssuedToken {
                secret: token.clone(),
                minted_at: None,
            }),
            Credentials::App(app) => app.token_at_hand(repo, scope),
        }
    }

    /// Whether tokens are App installation tokens (which can be renewed).
    pub fn is_app(&self) -> bool {
        matches!(self, Credentials::App(_))
    }

    /// A name for the credential that is safe for logs and metric labels.
    pub fn label(&self, repo: &str) -> String {
        match self {
            Credentials::Token(_) => "token".to_string(),
            Credentials::App(app) => match app.cached_installation(repo) {
                Some(id) => format!("app:{id}"),
                None => "app".to_string(),
            },
        }
    }
}

#[derive(Clone, Debug)]
struct CachedToken {
    secret: Secret,
    minted_at: Instant,
    /// When the token is replaced: five minutes before `expires_at`, or
    /// half way through its life when GitHub grants less than ten minutes.
    renew_at: SystemTime,
}

/// GitHub App authentication with its caches.
pub struct AppAuth {
    client: GitHubClient,
    app_id: String,
    key_source: PrivateKeySource,
    /// The signing key, with the SHA-256 of the PEM it was read from.
    key: Mutex<Option<([u8; 32], Arc<EncodingKey>)>>,
    /// The last problem with the key file reported, so it is logged once.
    key_problem: Mutex<Option<String>>,
    fixed_installation: Option<u64>,
    metrics: Option<Metrics>,
    /// GitHub's clock minus ours, in seconds, learnt from a refused JWT.
    skew_secs: AtomicI64,
    installations: Mutex<HashMap<String, u64>>,
    /// GitHub's id of each repository whose installation GitHub looked up
    /// through a redirect (renamed or transferred since routes.yaml named
    /// it): its token is asked for by id, since the former name is not the
    /// name the installation knows.
    moved_repository_ids: Mutex<HashMap<String, u64>>,
    /// When a 404 last made a token for each repository be renewed, so that
    /// a fan-out of real 404s does not renew for every job.
    not_found_renewals: Mutex<HashMap<String, Instant>>,
    /// Lookups are rare (once per repository), so one lock for all of them
    /// keeps a burst for a new repository down to one request.
    lookup: tokio::sync::Mutex<()>,
    tokens: Mutex<HashMap<(u64, String, Scope), CachedToken>>,
    minting: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth")
            .field("app_id", &self.app_id)
            .field("installation_id", &self.fixed_installation)
            .finish_non_exhaustive()
    }
}

impl AppAuth {
    pub fn new(app: &AppCredential, client: GitHubClient, metrics: Option<Metrics>) -> AppAuth {
        AppAuth {
            client,
            app_id: app.id.clone(),
            key_source: app.private_key.clone(),
            key: Mutex::new(None),
            key_problem: Mutex::new(None),
            fixed_installation: app.installation_id,
            metrics,
            skew_secs: AtomicI64::new(0),
            installations: Mutex::default(),
            moved_repository_ids: Mutex::default(),
            not_found_renewals: Mutex::default(),
            lookup: tokio::sync::Mutex::new(()),
            tokens: Mutex::default(),
            minting: Mutex::default(),
        }
    }

    /// The signing key. A key file is read each time a JWT is made (once
    /// per token or installation lookup, not per dispatch): on first use, so
    /// that `serve` starts even while a mounted secret is not there yet, and
    /// after, so that a rotated key (a Kubernetes Secret updated in place)
    /// is used without a restart. A file that cannot be read or parsed after
    /// it once was (a copy still being written) leaves the last key in use.
    fn key(&self) -> Result<Arc<EncodingKey>, CredentialError> {
        let pem = match &self.key_source {
            PrivateKeySource::File(path) => match std::fs::read(path) {
                Ok(pem) => pem,
                Err(e) => {
                    if let Some(key) = self.keep_last_key(&format!("cannot be read: {e}")) {
                        return Ok(key);
                    }
                    // Retried like a network failure: the next attempt may find it.
                    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                        " (the relay's user must be able to read it: chown or chmod the file)"
                    } else {
                        ""
                    };
                    return Err(CredentialError::KeyUnreadable(format!(
                        "{}: {e}{hint}",
                        path.display()
                    )));
                }
            },
            PrivateKeySource::Inline(pem) => pem.expose().as_bytes().to_vec(),
        };
        let digest: [u8; 32] = Sha256::digest(&pem).into();
        if let Some((read, key)) = lock(&self.key).as_ref()
            && *read == digest
        {
            let key = key.clone();
            // The file gives the key again: a later problem is new.
            *lock(&self.key_problem) = None;
            return Ok(key);
        }
        let key = match EncodingKey::from_rsa_pem(&pem) {
            Ok(key) => Arc::new(key),
            Err(_) => {
                // The error of the PEM parser never quotes the key, but a
                // fixed text keeps that a promise rather than an observation.
                let problem = crate::config::private_key_problem(&String::from_utf8_lossy(&pem))
                    .unwrap_or("is not an RSA private key in PEM form");
                if let Some(key) = self.keep_last_key(problem) {
                    return Ok(key);
                }
                return Err(CredentialError::Key(format!("it {problem}")));
            }
        };
        if lock(&self.key).replace((digest, key.clone())).is_some() {
            tracing::info!(
                "The GitHub App's private key file changed; new tokens are requested with the new key"
            );
        }
        *lock(&self.key_problem) = None;
        Ok(key)
    }

    /// The key in use when the file no longer gives one, if one was read;
    /// says so once for each new problem.
    fn keep_last_key(&self, problem: &str) -> Option<Arc<EncodingKey>> {
        let key = lock(&self.key).as_ref()?.1.clone();
        let mut reported = lock(&self.key_problem);
        if reported.as_deref() != Some(problem) {
            tracing::warn!(
                problem,
                "The GitHub App's private key file no longer gives a key; the last one read stays in use"
            );
            *reported = Some(problem.to_string());
        }
        Some(key)
    }

    /// A fresh JWT for the App.
    fn jwt(&self) -> Result<Secret, CredentialError> {
        let now = clock::now_epoch_secs() as i64 + self.skew_secs.load(Ordering::Relaxed);
        let iat = now - JWT_BACKDATE_SECS;
        // GitHub reads `iss` as the app id (number or string) or client id.
        let iss = match self.app_id.parse::<u64>() {
            Ok(id) => json!(id),
            Err(_) => json!(self.app_id),
        };
        let claims = json!({"iat": iat, "exp": iat + JWT_LIFETIME_SECS, "iss": iss});
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &*self.key()?)
            .map(Secret::new)
            .map_err(|_| CredentialError::Key("signing the JWT failed".to_string()))
    }

    /// Sends a request authenticated as the App. When GitHub refuses the JWT
    /// for its times, the skew is learnt from the `Date` header and the
    /// request is sent once more. `endpoint` names the operation in the
    /// request-duration metric (never the path, which holds a repository).
    async fn as_app(
        &self,
        endpoint: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> Result<Answer, CredentialError> {
        let mut corrected = false;
        loop {
            let jwt = self.jwt()?;
            let started = Instant::now();
            let sent = self.client.send(method.clone(), path, body, &jwt).await;
            if let Some(metrics) = &self.metrics {
                let status = sent.as_ref().ok().map(|a| a.status);
                metrics.github_request(endpoint, status, started.elapsed().as_secs_f64());
            }
            let answer = sent.map_err(CredentialError::Transport)?;
            if answer.status == 401
                && !corrected
                && is_clock_complaint(&answer)
                && let Some(skew) = answer.rate.date_epoch_secs.map(skew_from)
            {
                tracing::warn!(
                    skew_secs = skew,
                    "GitHub refused the App JWT for its times; correcting for clock skew"
                );
                self.skew_secs.store(skew, Ordering::Relaxed);
                corrected = true;
                continue;
            }
            return Ok(answer);
        }
    }

    /// The installation id for `repo`, from the configuration, the cache or
    /// GitHub.
    pub async fn installation_for(&self, repo: &str) -> Result<u64, CredentialError> {
        if let Some(id) = self.fixed_installation {
            return Ok(id);
        }
        let key = repo.to_ascii_lowercase();
        if let Some(id) = self.cached_installation(&key) {
            return Ok(id);
        }
        let _one_at_a_time = self.lookup.lock().await;
        if let Some(id) = self.cached_installation(&key) {
            return Ok(id);
        }
        self.look_up_installation(repo).await
    }

    /// Asks GitHub which installation `repo` is in, and remembers the
    /// answer. A repository renamed or transferred since routes.yaml named
    /// it is answered through a redirect to its id, which is remembered
    /// too: the installation knows the repository by its new name only, so
    /// its tokens are asked for by that id.
    async fn look_up_installation(&self, repo: &str) -> Result<u64, CredentialError> {
        let key = repo.to_ascii_lowercase();
        let answer = self
            .as_app(
                "repo_installation",
                reqwest::Method::GET,
                &format!("/repos/{repo}/installation"),
                None,
            )
            .await?;
        if let Some(limited) = CredentialError::rate_limited(&answer) {
            return Err(limited);
        }
        match answer.status {
            _ if answer.not_from_github() => Err(CredentialError::NotGitHub),
            200 => {
                let id = parse_body(&answer)
                    .and_then(|v| v.get("id").and_then(Value::as_u64))
                    .ok_or_else(|| {
                        CredentialError::Unexpected(200, "an installation without an id".into())
                    })?;
                if let Some(moved) = answer
                    .redirected_to
                    .as_deref()
                    .and_then(super::repository_id)
                {
                    lock(&self.moved_repository_ids).insert(key.clone(), moved);
                }
                lock(&self.installations).insert(key, id);
                Ok(id)
            }
            401 => Err(CredentialError::AppRejected(message(&answer))),
            404 => Err(CredentialError::NotInstalled(repo.to_string())),
            status => Err(CredentialError::Unexpected(status, message(&answer))),
        }
    }

    fn cached_installation(&self, repo: &str) -> Option<u64> {
        self.fixed_installation.or_else(|| {
            lock(&self.installations)
                .get(&repo.to_ascii_lowercase())
                .copied()
        })
    }

    fn cached_token(&self, key: &(u64, String, Scope)) -> Option<IssuedToken> {
        let tokens = lock(&self.tokens);
        let cached = tokens.get(key)?;
        (SystemTime::now() < cached.renew_at).then(|| IssuedToken {
            secret: cached.secret.clone(),
            minted_at: Some(cached.minted_at),
        })
    }

    /// The token for `repo` and `scope`, when it is at hand without asking
    /// GitHub.
    fn token_at_hand(&self, repo: &str, scope: Scope) -> Option<IssuedToken> {
        let installation = self.cached_installation(repo)?;
        self.cached_token(&(installation, repo.to_ascii_lowercase(), scope))
    }

    fn mint_lock(&self, installation: u64) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.minting).entry(installation).or_default().clone()
    }

    /// A token for a dispatch of `scope` to `repo`: the cached one while it
    /// is fresh, else a new one minted under the installation's lock.
    pub async fn token_for(
        &self,
        repo: &str,
        scope: Scope,
    ) -> Result<IssuedToken, CredentialError> {
        let looked_up_before =
            self.fixed_installation.is_none() && self.cached_installation(repo).is_some();
        match self.token_for_installation(repo, scope).await {
            // The remembered installation is gone (the App was installed
            // again under a new id): minting forgot it, and one new lookup
            // decides whether the App is still installed on the repository.
            Err(CredentialError::NotInstalled(_)) if looked_up_before => {
                self.token_for_installation(repo, scope).await
            }
            result => result,
        }
    }

    async fn token_for_installation(
        &self,
        repo: &str,
        scope: Scope,
    ) -> Result<IssuedToken, CredentialError> {
        let installation = self.installation_for(repo).await?;
        let key = (installation, repo.to_ascii_lowercase(), scope);
        if let Some(token) = self.cached_token(&key) {
            return Ok(token);
        }
        let mint_lock = self.mint_lock(installation);
        let _one_mint_at_a_time = mint_lock.lock().await;
        // Whoever held the lock before may have minted this very token.
        if let Some(token) = self.cached_token(&key) {
            return Ok(token);
        }
        let result = self.mint(installation, repo, scope).await;
        if let Some(metrics) = &self.metrics {
            metrics.token_mint(result.is_ok());
        }
        let cached = result?;
        let token = IssuedToken {
            secret: cached.secret.clone(),
            minted_at: Some(cached.minted_at),
        };
        lock(&self.tokens).insert(key, cached);
        Ok(token)
    }

    async fn mint(
        &self,
        installation: u64,
        repo: &str,
        scope: Scope,
    ) -> Result<CachedToken, CredentialError> {
        let minted = self.mint_once(installation, repo, scope).await;
        // A pinned installation is not looked up before a mint, so a
        // repository renamed or transferred within it is refused by its
        // former name. One lookup tells that case apart (it finds the
        // repository's id, in the pinned installation) from a repository
        // that is not in it, which stays refused.
        let key = repo.to_ascii_lowercase();
        let id_known = || lock(&self.moved_repository_ids).contains_key(&key);
        if let Err(CredentialError::OutsidePinnedInstallation { .. }) = &minted
            && !id_known()
            && matches!(self.look_up_installation(repo).await, Ok(found) if found == installation)
            && id_known()
        {
            return self.mint_once(installation, repo, scope).await;
        }
        minted
    }

    async fn mint_once(
        &self,
        installation: u64,
        repo: &str,
        scope: Scope,
    ) -> Result<CachedToken, CredentialError> {
        let moved = lock(&self.moved_repository_ids)
            .get(&repo.to_ascii_lowercase())
            .copied();
        let body = match moved {
            Some(id) => json!({"repository_ids": [id], "permissions": scope.permissions()}),
            None => {
                let name = repo.split_once('/').map_or(repo, |(_, name)| name);
                json!({"repositories": [name], "permissions": scope.permissions()})
            }
        };
        let answer = self
            .as_app(
                "installation_token",
                reqwest::Method::POST,
                &format!("/app/installations/{installation}/access_tokens"),
                Some(&body.to_string()),
            )
            .await?;
        if let Some(limited) = CredentialError::rate_limited(&answer) {
            return Err(limited);
        }
        match answer.status {
            _ if answer.not_from_github() => {
                return Err(CredentialError::NotGitHub);
            }
            200..=299 => {}
            401 => return Err(CredentialError::AppRejected(message(&answer))),
            // A pinned installation that GitHub does not know is the id in
            // routes.yaml to fix, not the repository to install the App on.
            404 if self.fixed_installation.is_some() => {
                return Err(CredentialError::PinnedInstallationNotFound(installation));
            }
            404 => {
                // The installation is gone (uninstalled, or a stale cache):
                // forget it so the next try looks it up again.
                lock(&self.installations).retain(|_, id| *id != installation);
                return Err(CredentialError::NotInstalled(repo.to_string()));
            }
            // "There is at least one repository that does not exist or is
            // not accessible to the parent installation": the repository
            // left the remembered installation (transferred to another
            // owner, or taken out of the installation's selection). It is
            // forgotten, so that one new lookup finds where it is now.
            422 if message(&answer).to_ascii_lowercase().contains("repository") => {
                // A pinned installation is not looked up: the id in
                // routes.yaml is what to fix, and GitHub's words say why.
                if self.fixed_installation.is_some() {
                    return Err(CredentialError::OutsidePinnedInstallation {
                        installation,
                        repo: repo.to_string(),
                        message: message(&answer),
                    });
                }
                lock(&self.installations).remove(&repo.to_ascii_lowercase());
                return Err(CredentialError::NotInstalled(repo.to_string()));
            }
            403 if is_suspension(&answer) => {
                return Err(CredentialError::Suspended(installation));
            }
            403 | 422 => {
                return Err(CredentialError::MissingPermission(format!(
                    "asked for {} on {repo}: {}",
                    scope.permissions(),
                    message(&answer)
                )));
            }
            status => return Err(CredentialError::Unexpected(status, message(&answer))),
        }
        let value = parse_body(&answer).ok_or_else(|| {
            CredentialError::Unexpected(answer.status, "a token answer that is not JSON".into())
        })?;
        let secret = value
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(|t| Secret::new(t.to_string()))
            .ok_or_else(|| {
                CredentialError::Unexpected(answer.status, "a token answer without a token".into())
            })?;
        let now = SystemTime::now();
        let expires_at = value
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(parse_rfc3339)
            .map(|at| {
                on_our_clock(
                    at,
                    answer.rate.date_epoch_secs,
                    self.skew_secs.load(Ordering::Relaxed),
                )
            })
            .unwrap_or(now + Duration::from_secs(3600));
        Ok(CachedToken {
            secret,
            minted_at: Instant::now(),
            renew_at: renew_at(now, expires_at),
        })
    }

    fn invalidate(&self, repo: &str, scope: Scope, refused: &Secret) {
        let Some(installation) = self.cached_installation(repo) else {
            return;
        };
        let repo = repo.to_ascii_lowercase();
        let key = (installation, repo.clone(), scope);
        let mut tokens = lock(&self.tokens);
        if tokens
            .get(&key)
            .is_some_and(|t| t.secret.expose() == refused.expose())
        {
            tokens.remove(&key);
            // The repository may have left the installation (transferred, or
            // taken out of its selection) or the App may have been installed
            // again: the next token comes from the installation GitHub names
            // now.
            lock(&self.installations).remove(&repo);
        }
    }
}

/// When a token minted at `now` that expires at `expires_at` is replaced:
/// five minutes before expiry, but never later than half way through its
/// life, so that a short-lived token is still used for a while.
fn renew_at(now: SystemTime, expires_at: SystemTime) -> SystemTime {
    let life = expires_at.duration_since(now).unwrap_or(Duration::ZERO);
    expires_at - RENEW_BEFORE.min(life / 2)
}

/// A time GitHub stated (a token's `expires_at`), moved onto our clock.
/// GitHub's clock may differ from ours: the answer's own `Date`
/// (`github_now`) gives the difference to within a second; without one,
/// the skew learnt from refused JWTs does. That skew alone is not enough,
/// since a JWT is taken at up to nine minutes of skew and nothing is learnt
/// then: a token would be used minutes after GitHub let it expire.
fn on_our_clock(at: SystemTime, github_now: Option<u64>, learnt_skew_secs: i64) -> SystemTime {
    let skew = github_now.map_or(learnt_skew_secs, skew_from);
    shift(at, -skew)
}

fn shift(at: SystemTime, secs: i64) -> SystemTime {
    if secs >= 0 {
        at + Duration::from_secs(secs as u64)
    } else {
        at - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Whether a token request was refused because the installation is
/// suspended. GitHub says so only in its message ("This installation has
/// been suspended").
fn is_suspension(answer: &Answer) -> bool {
    let message = answer.message.as_deref().unwrap_or("");
    message.to_ascii_lowercase().contains("suspended")
}

fn parse_body(answer: &Answer) -> Option<Value> {
    serde_json::from_str(answer.body.as_deref()?).ok()
}

fn message(answer: &Answer) -> String {
    answer
        .message
        .clone()
        .unwrap_or_else(|| format!("status {}", answer.status))
}

/// Whether a 401 to a JWT complains about `iat` or `exp`.
fn is_clock_complaint(answer: &Answer) -> bool {
    let message = answer.message.as_deref().unwrap_or("");
    ["'iat'", "'exp'", "Issued at", "Expiration time"]
        .iter()
        .any(|needle| message.contains(needle))
}

/// GitHub's clock minus ours, from the time of its `Date` header.
fn skew_from(github_epoch_secs: u64) -> i64 {
    i64::try_from(github_epoch_secs).unwrap_or(i64::MAX) - clock::now_epoch_secs() as i64
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let ms = crate::clock::parse_rfc3339_ms(text)?;
    Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::rate_limit::RateLimitWait;

    #[test]
    fn a_redirect_to_a_repository_id_gives_the_id() {
        let cases = [
            ("/repositories/123/installation", Some(123)),
            ("/api/v3/repositories/42/installation", Some(42)),
            ("/repositories/x/installation", None),
            ("/repos/acme/blog/installation", None),
        ];
        for (path, id) in cases {
            assert_eq!(super::super::repository_id(path), id, "{path}");
        }
    }

    #[test]
    fn tokens_are_renewed_five_minutes_before_expiry_or_half_way() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hour = now + Duration::from_secs(3600);
        assert_eq!(renew_at(now, hour), hour - RENEW_BEFORE);
        let short = now + Duration::from_secs(60);
        assert_eq!(renew_at(now, short), now + Duration::from_secs(30));
        assert_eq!(renew_at(now, now), now);
    }

    #[test]
    fn a_tokens_expiry_is_moved_onto_our_clock_by_the_answers_date() {
        let now = clock::now_epoch_secs();
        let expires = UNIX_EPOCH + Duration::from_secs(now + 3600);
        let cases = [
            // GitHub's clock six minutes ahead, said by the answer's Date:
            // the token ends six minutes earlier on ours.
            (Some(now + 360), 0, now + 3600 - 360),
            // The Date wins over a skew learnt earlier.
            (Some(now), 900, now + 3600),
            // Without a Date, the learnt skew is all there is.
            (None, -120, now + 3600 + 120),
        ];
        for (github_now, learnt, expected) in cases {
            let at = on_our_clock(expires, github_now, learnt)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            // The clock may tick between the two readings.
            assert!(
                at.abs_diff(expected) <= 1,
                "{github_now:?} {learnt}: {at} {expected}"
            );
        }
    }

    #[test]
    fn http_dates_parse_and_give_the_skew() {
        assert_eq!(
            clock::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(clock::parse_http_date("yesterday"), None);
        let ahead = time::OffsetDateTime::now_utc() + time::Duration::minutes(15);
        let format = time::format_description::parse_borrowed::<2>(clock::HTTP_DATE).unwrap();
        let date = clock::parse_http_date(&ahead.format(&format).unwrap()).unwrap();
        let skew = skew_from(date as u64);
        assert!((899..=901).contains(&skew), "{skew}");
    }

    #[test]
    fn rate_limited_token_answers_wait_instead_of_failing_for_good() {
        let answer = |status: u16, message: &str, retry_after: Option<u64>| Answer {
            status,
            message: Some(message.to_owned()),
            rate: super::super::RateHeaders {
                retry_after_secs: retry_after,
                ..Default::default()
            },
            ..Default::default()
        };
        // A limit that states no wait says so, so that the credential's
        // pause grows while such limits repeat, as a dispatch's does.
        let cases = [
            (
                answer(403, "You have exceeded a secondary rate limit", None),
                Some(RateLimitWait::Unstated),
            ),
            (
                answer(429, "Too many requests", Some(30)),
                Some(RateLimitWait::Stated(Duration::from_secs(30))),
            ),
            (
                answer(403, "Resource not accessible by integration", None),
                None,
            ),
            (answer(404, "Not Found", None), None),
        ];
        for (answer, wait) in cases {
            let error = CredentialError::rate_limited(&answer);
            assert_eq!(
                error.as_ref().and_then(CredentialError::rate_limit_wait),
                wait,
                "{answer:?}"
            );
            if let Some(error) = error {
                assert!(!error.is_permanent(), "{error}");
            }
        }
        // A token answer whose body was lost is tried again, too.
        assert!(
            !CredentialError::Unexpected(201, "a token answer that is not JSON".into())
                .is_permanent()
        );
        assert!(CredentialError::Unexpected(400, "Bad request".into()).is_permanent());
    }

    #[test]
    fn scopes_ask_for_the_least_permissions() {
        assert_eq!(Scope::for_path("/repos/a/b/dispatches"), Scope::Contents);
        assert_eq!(
            Scope::for_path("/repos/a/b/actions/workflows/x.yml/dispatches"),
            Scope::Workflow
        );
        assert_eq!(
            Scope::Contents.permissions(),
            json!({"contents": "write", "metadata": "read"})
        );
        assert_eq!(
            Scope::Workflow.permissions(),
            json!({"actions": "write", "metadata": "read"})
        );
        // A repository named `workflows` of an owner named `actions`.
        assert_eq!(
            Scope::for_path("/repos/actions/workflows/dispatches"),
            Scope::Contents
        );
        assert_eq!(
            Scope::for_path("/repos/actions/workflows/actions/workflows/ci.yml/dispatches"),
            Scope::Workflow
        );
    }

    #[test]
    fn a_suspension_is_told_from_a_missing_permission_by_githubs_words() {
        let refusal = |message: &str| Answer {
            status: 403,
            message: Some(message.to_owned()),
            ..Default::default()
        };
        assert!(is_suspension(&refusal(
            "This installation has been suspended"
        )));
        assert!(!is_suspension(&refusal(
            "Resource not accessible by integration"
        )));
        assert!(!is_suspension(&Answer::default()));
    }

    #[test]
    fn credential_errors_say_whether_waiting_helps() {
        assert!(CredentialError::NotInstalled("a/b".into()).is_permanent());
        // Only whoever suspended the installation can end it.
        assert!(CredentialError::Suspended(7).is_permanent());
        assert!(CredentialError::AppRejected("x".into()).is_permanent());
        assert!(!CredentialError::Transport(TransportError::Timeout).is_permanent());
        assert!(!CredentialError::Unexpected(502, "x".into()).is_permanent());
        // GitHub's request timeout says nothing about the App either.
        assert!(!CredentialError::Unexpected(408, "x".into()).is_permanent());
        assert!(CredentialError::Unexpected(408, "x".into()).github_did_not_answer());
        assert!(!CredentialError::Unexpected(418, "x".into()).github_did_not_answer());
    }
}
