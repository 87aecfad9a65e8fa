//! The state shared by every request handler: the live routes with their
//! inbound rate limiters, the store, metrics and the worker's wake-up.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::{Config, Verify};
use crate::dispatch::DispatcherHandle;
use crate::secret::Secret;
use crate::store::Store;
use crate::telemetry::{Metrics, Streak};
use crate::verify::sns::SigningKey;

/// Certificates fetched from `SigningCertURL` are kept by URL; AWS rotates
/// them rarely, so a small bound only matters against a flood of distinct
/// (valid-looking) URLs.
const MAX_CACHED_CERTS: usize = 64;

/// The configuration in force, indexed for the request path.
pub struct LiveRoutes {
    pub config: Arc<Config>,
    by_id: HashMap<String, usize>,
    limiters: Vec<Option<Arc<DefaultDirectRateLimiter>>>,
    sns_pinned: Vec<Option<Vec<SigningKey>>>,
}

impl LiveRoutes {
    /// Indexes a configuration, reading the pinned certificates of its
    /// `sns` routes. A certificate that cannot be read makes the whole
    /// configuration unusable, as a validation error does: the route would
    /// otherwise refuse every message, and SNS drops what is refused.
    pub fn new(config: Arc<Config>) -> Result<LiveRoutes, PinnedCertificatesError> {
        let by_id = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        let limiters = config
            .routes
            .iter()
            .map(|r| {
                let limit = r.rate_limit.as_ref()?;
                let per_second = NonZeroU32::new(limit.per_second)?;
                let burst = NonZeroU32::new(limit.burst).unwrap_or(per_second);
                Some(Arc::new(RateLimiter::direct(
                    Quota::per_second(per_second).allow_burst(burst),
                )))
            })
            .collect();
        let sns_pinned = read_pinned_certificates(&config)?;
        Ok(LiveRoutes {
            config,
            by_id,
            limiters,
            sns_pinned,
        })
    }

    pub fn route(&self, id: &str) -> Option<(usize, &crate::config::Route)> {
        let index = *self.by_id.get(id)?;
        Some((index, &self.config.routes[index]))
    }

    /// The answer to a webhook for `requested`, which no route is: it names
    /// the request shortened, and a route it differs from only by case or
    /// a trailing slash, the usual slips in a URL copied by hand.
    pub fn unknown(&self, requested: &str) -> crate::ingress::error::IngressError {
        let trimmed = requested.trim_end_matches('/');
        let did_you_mean = self
            .config
            .routes
            .iter()
            .find(|route| route.id.eq_ignore_ascii_case(trimmed))
            .map(|route| route.id.clone());
        crate::ingress::error::IngressError::UnknownRoute {
            requested: shortened(requested),
            did_you_mean,
        }
    }

    pub fn limiter(&self, index: usize) -> Option<&DefaultDirectRateLimiter> {
        self.limiters.get(index).and_then(|l| l.as_deref())
    }

    /// Takes over the inbound rate limiters of the routes whose id and
    /// `rate_limit` are those of `old`: a reload (a SIGHUP, a ConfigMap
    /// sync) must not hand every route a fresh burst.
    fn keep_limiters_of(&mut self, old: &LiveRoutes) {
        for (index, route) in self.config.routes.iter().enumerate() {
            let Some((old_index, old_route)) = old.route(&route.id) else {
                continue;
            };
            if old_route.rate_limit == route.rate_limit
                && let Some(limiter) = old.limiters.get(old_index).cloned().flatten()
            {
                self.limiters[index] = Some(limiter);
            }
        }
    }

    /// The pinned SNS certificates of a route, when it has some.
    pub fn sns_pinned(&self, index: usize) -> Option<&[SigningKey]> {
        self.sns_pinned.get(index)?.as_deref()
    }
}

/// Pinned SNS certificates that could not be read, one line per file, each
/// naming where routes.yaml pins it, the route and the file.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct PinnedCertificatesError(pub Vec<String>);

/// Reads the pinned certificates of every `sns` route (PEM files, relative
/// paths from the working directory). `check`, `serve` and every reload
/// read them, never a request.
pub fn read_pinned_certificates(
    config: &Config,
) -> Result<Vec<Option<Vec<SigningKey>>>, PinnedCertificatesError> {
    let mut errors = Vec::new();
    let mut pinned = Vec::with_capacity(config.routes.len());
    for (index, route) in config.routes.iter().enumerate() {
        match read_route_certificates(route, index) {
            Ok(keys) => pinned.push(keys),
            Err(mut unreadable) => {
                errors.append(&mut unreadable);
                pinned.push(None);
            }
        }
    }
    if errors.is_empty() {
        Ok(pinned)
    } else {
        Err(PinnedCertificatesError(errors))
    }
}

/// The pinned certificates of one route, the `index`th: `None` when it
/// pins none (or is not an `sns` route), or a line for each file that
/// cannot be read.
pub fn read_route_certificates(
    route: &crate::config::Route,
    index: usize,
) -> Result<Option<Vec<SigningKey>>, Vec<String>> {
    let Verify::Sns(sns) = &route.verify else {
        return Ok(None);
    };
    if sns.certificates.is_empty() {
        return Ok(None);
    }
    let mut errors = Vec::new();
    let mut keys = Vec::with_capacity(sns.certificates.len());
    for (at, pinned) in sns.certificates.iter().enumerate() {
        let key = std::fs::read(&pinned.file)
            .map_err(|e| e.to_string())
            .and_then(|pem| SigningKey::from_pem(&pem).map_err(|e| e.to_string()));
        match key {
            Ok(key) => keys.push(key),
            Err(e) => errors.push(format!(
                "{}: routes[{index}] ({}): verify.sns.certificates[{at}]: cannot read {}: {e}",
                pinned.written_at,
                route.id,
                pinned.file.display()
            )),
        }
    }
    if errors.is_empty() {
        Ok(Some(keys))
    } else {
        Err(errors)
    }
}

/// Shared by all handlers through `web::Data`.
pub struct AppState {
    routes: RwLock<Arc<LiveRoutes>>,
    pub store: Store,
    pub metrics: Metrics,
    pub dispatcher: DispatcherHandle,
    pub admin_token: Option<Secret>,
    shutting_down: AtomicBool,
    /// Readiness checks that found the store refusing writes, in a row:
    /// probes come every few seconds, and the change is what is logged.
    pub not_ready: Streak,
    /// Scrapes that could not read the queue depth, in a row: scrapes come
    /// every few seconds too.
    pub queue_depth_unread: Streak,
    /// A fixed clock for signed timestamps, set only by the test hook
    /// `RELAY_TEST_CLOCK_MS` (see docs/decisions.md).
    verify_clock_ms: Option<i64>,
    sns_certs: Mutex<HashMap<String, SigningKey>>,
    /// Certificate URLs AWS said lately have no certificate.
    pub sns_cert_missing: CertUrls,
    /// Certificate URLs that lately gave no answer at all.
    pub sns_cert_unreachable: CertUrls,
    /// Bounds the certificate fetches running at once: each is an outbound
    /// request that a forged envelope can ask for.
    sns_cert_fetches: tokio::sync::Semaphore,
    sns_confirmed: Mutex<HashSet<String>>,
    /// Refusals are logged at most once in a while: per route and kind of
    /// refusal for webhooks, per client for the admin API.
    refusals: crate::telemetry::throttle::Throttle,
    /// The memory held by the bodies of requests in flight.
    pub body_memory: super::body::BodyMemory,
}

/// How long a certificate URL that AWS said does not exist is refused
/// without asking again.
const CERT_MISS_TTL: Duration = Duration::from_secs(600);

/// How long a certificate URL that could not be fetched at all (no such
/// host, no answer) is answered 503 without trying again. Short, since SNS
/// retries and a real certificate's host may have had a glitch; long enough
/// that forged envelopes naming made-up hosts cost one lookup each, not one
/// each time.
const CERT_UNREACHABLE_TTL: Duration = Duration::from_secs(30);

/// How long a request waits for a turn to fetch a certificate before it is
/// answered 503. SNS waits 15 s for an answer and retries a 503, so a real
/// message is better answered that than left behind forged ones.
pub const CERT_TURN_WAIT: Duration = Duration::from_secs(5);

/// How many SNS certificate fetches may run at once.
const CERT_FETCHES: usize = 4;

/// SNS certificate URLs that could not give a key, each remembered for a
/// while, so that forged envelopes naming one cost no further outbound
/// request.
struct CertMisses {
    ttl: Duration,
    until: HashMap<String, Instant>,
}

/// A `CertMisses` shared by the handlers, on the clock.
pub struct CertUrls(Mutex<CertMisses>);

impl CertUrls {
    fn new(ttl: Duration) -> CertUrls {
        CertUrls(Mutex::new(CertMisses::new(ttl)))
    }

    /// Whether `url` was remembered, and not long enough ago to be asked
    /// again.
    pub fn holds(&self, url: &str) -> bool {
        self.0
            .lock()
            .expect("cert cache lock")
            .known(url, Instant::now())
    }

    pub fn remember(&self, url: &str) {
        self.0
            .lock()
            .expect("cert cache lock")
            .remember(url, Instant::now());
    }
}

impl CertMisses {
    fn new(ttl: Duration) -> CertMisses {
        CertMisses {
            ttl,
            until: HashMap::new(),
        }
    }

    fn remember(&mut self, url: &str, now: Instant) {
        if self.until.len() >= MAX_CACHED_CERTS {
            // Expired entries go first; if none has, the one that would
            // expire soonest, so that cycling through many URLs cannot
            // empty the list.
            self.until.retain(|_, until| *until > now);
            if self.until.len() >= MAX_CACHED_CERTS
                && let Some(soonest) = self
                    .until
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(url, _)| url.clone())
            {
                self.until.remove(&soonest);
            }
        }
        self.until.insert(url.to_string(), now + self.ttl);
    }

    fn known(&mut self, url: &str, now: Instant) -> bool {
        match self.until.get(url) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.until.remove(url);
                false
            }
            None => false,
        }
    }
}

impl AppState {
    pub fn new(
        routes: LiveRoutes,
        store: Store,
        metrics: Metrics,
        dispatcher: DispatcherHandle,
        admin_token: Option<Secret>,
    ) -> AppState {
        for route in &routes.config.routes {
            metrics.init_route(&route.id);
        }
        AppState {
            routes: RwLock::new(Arc::new(routes)),
            store,
            metrics,
            dispatcher,
            admin_token,
            shutting_down: AtomicBool::new(false),
            not_ready: Streak::default(),
            queue_depth_unread: Streak::default(),
            verify_clock_ms: None,
            sns_certs: Mutex::new(HashMap::new()),
            sns_cert_missing: CertUrls::new(CERT_MISS_TTL),
            sns_cert_unreachable: CertUrls::new(CERT_UNREACHABLE_TTL),
            sns_cert_fetches: tokio::sync::Semaphore::new(CERT_FETCHES),
            sns_confirmed: Mutex::new(HashSet::new()),
            refusals: Default::default(),
            body_memory: Default::default(),
        }
    }

    /// Whether a refusal of `kind` (on a route, or from a client) is logged
    /// now: `Some(unlogged)` with the refusals of its kind left unsaid since
    /// its last line, or `None` to say nothing (see `telemetry::throttle`).
    pub fn refusal_to_log(&self, kind: &str, of: impl std::fmt::Display) -> Option<u64> {
        self.refusals
            .should_log(&format!("{kind} {of}"), std::time::Instant::now())
    }

    /// Fixes the clock that signed timestamps are judged by; the test
    /// hook that lets the suite verify recorded samples byte for byte.
    pub fn with_fixed_verify_clock(mut self, now_ms: Option<i64>) -> AppState {
        self.verify_clock_ms = now_ms;
        self
    }

    /// The time signed timestamps are judged by, in Unix milliseconds.
    pub fn verify_now_ms(&self) -> i64 {
        self.verify_clock_ms.unwrap_or_else(crate::clock::now_ms)
    }

    /// A certificate fetched earlier from `url`.
    pub fn cached_sns_cert(&self, url: &str) -> Option<SigningKey> {
        self.sns_certs
            .lock()
            .expect("cert cache lock")
            .get(url)
            .cloned()
    }

    /// Waits for a turn to fetch a certificate, at most [`CERT_TURN_WAIT`];
    /// `None` when none came.
    pub async fn sns_cert_fetch_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(CERT_TURN_WAIT, self.sns_cert_fetches.acquire())
            .await
            .ok()?
            .ok()
    }

    pub fn cache_sns_cert(&self, url: &str, key: SigningKey) {
        let mut cache = self.sns_certs.lock().expect("cert cache lock");
        if cache.len() >= MAX_CACHED_CERTS {
            cache.clear();
        }
        cache.insert(url.to_string(), key);
    }

    /// Records that the subscription confirmation `message_id` is being
    /// handled; false when it already was, so a retried confirmation does
    /// not GET `SubscribeURL` again.
    pub fn claim_sns_confirmation(&self, message_id: &str) -> bool {
        self.sns_confirmed
            .lock()
            .expect("confirmation lock")
            .insert(message_id.to_string())
    }

    /// Forgets a claim whose GET failed, so that SNS's retry tries again.
    pub fn release_sns_confirmation(&self, message_id: &str) {
        self.sns_confirmed
            .lock()
            .expect("confirmation lock")
            .remove(message_id);
    }

    /// The routes in force; a reload swaps them atomically, and a request
    /// keeps the snapshot it started with.
    pub fn routes(&self) -> Arc<LiveRoutes> {
        self.routes.read().expect("routes lock").clone()
    }

    /// Swaps `routes` in and hands back the routes it replaced, for the
    /// caller to free: a large configuration takes tens of milliseconds to
    /// free, which must not happen under the lock every webhook takes.
    pub fn replace_routes(&self, mut routes: LiveRoutes) -> Arc<LiveRoutes> {
        for route in &routes.config.routes {
            self.metrics.init_route(&route.id);
        }
        for old in &self.routes().config.routes {
            if routes.route(&old.id).is_none() {
                self.metrics.forget_route(&old.id);
            }
        }
        // The reloader is the only writer: the routes read now are those
        // the swap replaces, and webhooks are not held while limiters are
        // matched.
        routes.keep_limiters_of(&self.routes());
        let mut current = self.routes.write().expect("routes lock");
        std::mem::replace(&mut *current, Arc::new(routes))
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// The most characters of a requested route name that are repeated in an
/// answer or a log line.
const MAX_REQUESTED_NAME: usize = 100;

/// A name a sender asked for, cut to `MAX_REQUESTED_NAME` characters.
pub fn shortened(requested: &str) -> String {
    let mut name: String = requested.chars().take(MAX_REQUESTED_NAME).collect();
    if name.len() < requested.len() {
        name.push('…');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_buckets_of_routes_whose_rate_limit_is_unchanged() {
        let config = |per_second: u32| {
            let text = format!(
                "github:\n  token: t\nroutes:\n  - id: kept\n    verify: none\n    rate_limit: {{per_second: 1, burst: 1}}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n  - id: changed\n    verify: none\n    rate_limit: {{per_second: {per_second}, burst: 1}}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"
            );
            let loaded = crate::config::load("routes.yaml", &text, &|_| None).unwrap();
            LiveRoutes::new(Arc::new(loaded.config)).unwrap()
        };
        let old = config(1);
        for index in 0..2 {
            assert!(old.limiter(index).unwrap().check().is_ok());
            assert!(
                old.limiter(index).unwrap().check().is_err(),
                "burst used up"
            );
        }
        let mut new = config(2);
        new.keep_limiters_of(&old);
        assert!(
            new.limiter(0).unwrap().check().is_err(),
            "an unchanged limit keeps its used-up bucket"
        );
        assert!(
            new.limiter(1).unwrap().check().is_ok(),
            "a changed limit starts full"
        );
    }

    #[test]
    fn a_missing_certificate_is_remembered_for_a_while() {
        let mut misses = CertMisses::new(CERT_MISS_TTL);
        let now = Instant::now();
        let url = "https://sns.us-east-1.amazonaws.com/x.pem";
        assert!(!misses.known(url, now));
        misses.remember(url, now);
        assert!(misses.known(url, now + CERT_MISS_TTL - Duration::from_secs(1)));
        assert!(
            !misses.known(url, now + CERT_MISS_TTL),
            "asked again after a while"
        );
        assert!(!misses.known(url, now), "and forgotten once expired");
    }

    #[test]
    fn cycling_through_many_missing_certificates_does_not_forget_them_all() {
        let mut misses = CertMisses::new(CERT_MISS_TTL);
        let start = Instant::now();
        let url = |i: usize| format!("https://sns.us-east-{i}.amazonaws.com/x.pem");
        // One more than the list holds: a list emptied to make room would
        // know only the last.
        let count = MAX_CACHED_CERTS + 1;
        for i in 0..count {
            misses.remember(&url(i), start + Duration::from_millis(i as u64));
        }
        let now = start + Duration::from_secs(1);
        let known = (0..count).filter(|i| misses.known(&url(*i), now)).count();
        assert_eq!(known, MAX_CACHED_CERTS, "the list stays full");
        assert!(misses.known(&url(count - 1), now), "the latest is kept");
        assert!(!misses.known(&url(0), now), "the oldest made room");
    }
}
