//! The Prometheus metrics of the relay, named `dispatch_relay_*`.
//!
//! Call sites use typed methods with enums for outcomes, so label values stay
//! within fixed sets and a route label can only come from the configuration.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::{CommitReport, QueueDepth};

/// What became of an SNS subscription event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnsSubscription {
    Confirmed,
    ConfirmFailed,
    Unsubscribed,
}

impl SnsSubscription {
    pub const ALL: [SnsSubscription; 3] = [
        SnsSubscription::Confirmed,
        SnsSubscription::ConfirmFailed,
        SnsSubscription::Unsubscribed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SnsSubscription::Confirmed => "confirmed",
            SnsSubscription::ConfirmFailed => "confirm_failed",
            SnsSubscription::Unsubscribed => "unsubscribed",
        }
    }
}

/// What happened to an incoming webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    Accepted,
    Duplicate,
    Skipped,
    Unauthorized,
    Forbidden,
    RateLimited,
    TooLarge,
    BadRequest,
    Unprocessable,
    Unavailable,
}

impl WebhookOutcome {
    pub const ALL: [WebhookOutcome; 10] = [
        WebhookOutcome::Accepted,
        WebhookOutcome::Duplicate,
        WebhookOutcome::Skipped,
        WebhookOutcome::Unauthorized,
        WebhookOutcome::Forbidden,
        WebhookOutcome::RateLimited,
        WebhookOutcome::TooLarge,
        WebhookOutcome::BadRequest,
        WebhookOutcome::Unprocessable,
        WebhookOutcome::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Accepted => "accepted",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Skipped => "skipped",
            WebhookOutcome::Unauthorized => "unauthorized",
            WebhookOutcome::Forbidden => "forbidden",
            WebhookOutcome::RateLimited => "rate_limited",
            WebhookOutcome::TooLarge => "too_large",
            WebhookOutcome::BadRequest => "bad_request",
            WebhookOutcome::Unprocessable => "unprocessable",
            WebhookOutcome::Unavailable => "unavailable",
        }
    }
}

/// What happened to one attempt to send a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchOutcome {
    Delivered,
    Retried,
    Failed,
}

impl DispatchOutcome {
    pub const ALL: [DispatchOutcome; 3] = [
        DispatchOutcome::Delivered,
        DispatchOutcome::Retried,
        DispatchOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DispatchOutcome::Delivered => "delivered",
            DispatchOutcome::Retried => "retried",
            DispatchOutcome::Failed => "failed",
        }
    }
}

/// Every metric the relay exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    webhooks_received: IntCounterVec,
    webhooks_coalesced: IntCounterVec,
    webhooks_unknown_route: IntCounter,
    dispatches: IntCounterVec,
    github_request_duration: HistogramVec,
    delivery_latency: HistogramVec,
    queue_depth: IntGaugeVec,
    rate_limit_remaining: IntGaugeVec,
    token_mints: IntCounterVec,
    config_reloads: IntCounterVec,
    config_last_reload_success: Gauge,
    config_last_reload_successful: IntGauge,
    config_restart_required: IntGauge,
    github_paused_until: Gauge,
    github_credential_refused: IntGaugeVec,
    sns_subscriptions: IntCounterVec,
    body_memory: IntGauge,
    store_commit_duration: Histogram,
    store_commit_commands: Histogram,
    /// Per credential, when GitHub's current rate-limit window resets and
    /// the limit it resets to, so that the remaining-requests gauge does
    /// not stay at its last low value once the window has reset.
    rate_limit_windows: Arc<Mutex<HashMap<String, RateLimitWindow>>>,
}

#[derive(Debug, Clone, Copy)]
struct RateLimitWindow {
    reset_epoch_secs: u64,
    limit: u64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("dispatch_relay")
}

/// Registers a metric in `registry` and hands it back for recording.
fn registered<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(opts(name, help), labels))
}

fn histogram_opts((name, help): (&str, &str), buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace("dispatch_relay")
        .buckets(buckets)
}

fn histogram(registry: &Registry, name_help: (&str, &str), buckets: Vec<f64>) -> Histogram {
    registered(
        registry,
        Histogram::with_opts(histogram_opts(name_help, buckets)),
    )
}

fn histogram_vec(
    registry: &Registry,
    name_help: (&str, &str),
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    registered(
        registry,
        HistogramVec::new(histogram_opts(name_help, buckets), labels),
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let metrics = Metrics {
            webhooks_received: counter_vec(
                &registry,
                "webhooks_received_total",
                "Incoming webhooks by route and outcome.",
                &["route", "outcome"],
            ),
            webhooks_coalesced: counter_vec(
                &registry,
                "webhooks_coalesced_total",
                "Accepted webhooks merged into an open debounce window instead of dispatching on their own.",
                &["route"],
            ),
            webhooks_unknown_route: registered(
                &registry,
                IntCounter::with_opts(opts(
                    "webhooks_unknown_route_total",
                    "Webhooks posted to a route that routes.yaml does not have (404).",
                )),
            ),
            dispatches: counter_vec(
                &registry,
                "dispatches_total",
                "Attempts to send a dispatch to GitHub by route and outcome.",
                &["route", "outcome"],
            ),
            github_request_duration: histogram_vec(
                &registry,
                (
                    "github_request_duration_seconds",
                    "Duration of requests to the GitHub API.",
                ),
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                &["endpoint", "status_class"],
            ),
            delivery_latency: histogram_vec(
                &registry,
                (
                    "delivery_latency_seconds",
                    "Time from accepting a webhook to GitHub accepting its dispatch.",
                ),
                vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0,
                ],
                &["route"],
            ),
            queue_depth: registered(
                &registry,
                IntGaugeVec::new(
                    opts("queue_depth", "Jobs in the store by state."),
                    &["state"],
                ),
            ),
            rate_limit_remaining: registered(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "github_rate_limit_remaining",
                        "GitHub's x-ratelimit-remaining for each credential.",
                    ),
                    &["credential"],
                ),
            ),
            token_mints: counter_vec(
                &registry,
                "github_token_mints_total",
                "GitHub App installation token mints by result.",
                &["result"],
            ),
            config_reloads: counter_vec(
                &registry,
                "config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            config_last_reload_success: registered(
                &registry,
                Gauge::with_opts(opts(
                    "config_last_reload_success_timestamp_seconds",
                    "When the configuration was last loaded successfully.",
                )),
            ),
            config_last_reload_successful: registered(
                &registry,
                IntGauge::with_opts(opts(
                    "config_last_reload_successful",
                    "1 when the last load of the configuration succeeded, 0 while the file on disk is refused.",
                )),
            ),
            config_restart_required: registered(
                &registry,
                IntGauge::with_opts(opts(
                    "config_restart_required",
                    "1 when the configuration in force was loaded with changes to settings that take effect only at the next restart (github, retry, store, server.listen, notify); 0 otherwise.",
                )),
            ),
            github_paused_until: registered(
                &registry,
                Gauge::with_opts(opts(
                    "github_paused_until_timestamp_seconds",
                    "When the pause GitHub's last rate limit asked for ends; nothing is sent to GitHub before. In the past (or 0) when sending is not paused.",
                )),
            ),
            github_credential_refused: registered(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "github_credential_refused",
                        "1 while GitHub refuses a credential (an expired or revoked token): its dispatches are held, and one tries it again each minute. 0 once GitHub accepts a dispatch with it.",
                    ),
                    &["credential"],
                ),
            ),
            sns_subscriptions: counter_vec(
                &registry,
                "sns_subscriptions_total",
                "SNS subscription confirmations and unsubscriptions by route and result.",
                &["route", "result"],
            ),
            body_memory: registered(
                &registry,
                IntGauge::with_opts(opts(
                    "body_memory_bytes",
                    "Memory held by the bodies of webhooks being received and handled, against server.max_body_memory.",
                )),
            ),
            store_commit_duration: histogram(
                &registry,
                (
                    "store_commit_duration_seconds",
                    "Time the store's writer spends on each group commit, from opening the transaction to the disk's flush.",
                ),
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ],
            ),
            store_commit_commands: histogram(
                &registry,
                (
                    "store_commit_commands",
                    "Writes committed together in each group commit: accepted webhooks and the dispatcher's leases and records.",
                ),
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            rate_limit_windows: Arc::default(),
            registry,
        };
        // Both results of these are known from the start, so they are
        // shown at zero rather than appearing with the first event.
        for result in ["success", "failure"] {
            metrics.token_mints.with_label_values(&[result]);
            metrics.config_reloads.with_label_values(&[result]);
        }
        metrics
    }

    /// Counts one of the store's group commits.
    pub fn store_commit(&self, commit: &CommitReport) {
        self.store_commit_duration
            .observe(commit.duration.as_secs_f64());
        self.store_commit_commands.observe(commit.commands as f64);
    }

    /// Creates every series of a route at zero, so that alert rules using
    /// `increase()` see the first event after a start instead of a series
    /// that appears out of nowhere.
    pub fn init_route(&self, route: &str) {
        for outcome in WebhookOutcome::ALL {
            self.webhooks_received
                .with_label_values(&[route, outcome.as_str()]);
        }
        for outcome in DispatchOutcome::ALL {
            self.dispatches
                .with_label_values(&[route, outcome.as_str()]);
        }
        self.webhooks_coalesced.with_label_values(&[route]);
    }

    /// Drops every series of a route that a reload removed, so that a
    /// dashboard stops showing it. A job of the route still in the queue
    /// brings its dispatch series back when it ends, as it should.
    pub fn forget_route(&self, route: &str) {
        // A series that was never created is no error to forget.
        for outcome in WebhookOutcome::ALL {
            let _ = self
                .webhooks_received
                .remove_label_values(&[route, outcome.as_str()]);
        }
        for outcome in DispatchOutcome::ALL {
            let _ = self
                .dispatches
                .remove_label_values(&[route, outcome.as_str()]);
        }
        let _ = self.webhooks_coalesced.remove_label_values(&[route]);
        let _ = self.delivery_latency.remove_label_values(&[route]);
        for result in SnsSubscription::ALL {
            let _ = self
                .sns_subscriptions
                .remove_label_values(&[route, result.as_str()]);
        }
    }

    /// Counts an SNS subscription event.
    pub fn sns_subscription(&self, route: &str, result: SnsSubscription) {
        self.sns_subscriptions
            .with_label_values(&[route, result.as_str()])
            .inc();
    }

    pub fn webhook(&self, route: &str, outcome: WebhookOutcome) {
        self.webhooks_received
            .with_label_values(&[route, outcome.as_str()])
            .inc();
    }

    /// A webhook posted to a route that is not configured. One series for
    /// all of them: the names come from senders, so they cannot be labels.
    pub fn unknown_route(&self) {
        self.webhooks_unknown_route.inc();
    }

    /// A webhook merged into a debounce window (also counted as accepted).
    pub fn coalesced(&self, route: &str) {
        self.webhooks_coalesced.with_label_values(&[route]).inc();
    }

    pub fn dispatch(&self, route: &str, outcome: DispatchOutcome) {
        self.dispatches
            .with_label_values(&[route, outcome.as_str()])
            .inc();
    }

    /// `endpoint` is the operation name (`repository_dispatch`, …), never a
    /// path, so that repository names do not multiply the series.
    pub fn github_request(&self, endpoint: &str, status: Option<u16>, seconds: f64) {
        let class = match status {
            Some(s) => match s / 100 {
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                5 => "5xx",
                _ => "other",
            },
            None => "error",
        };
        self.github_request_duration
            .with_label_values(&[endpoint, class])
            .observe(seconds);
    }

    pub fn delivered(&self, route: &str, latency_seconds: f64) {
        self.delivery_latency
            .with_label_values(&[route])
            .observe(latency_seconds);
    }

    pub fn set_queue_depth(&self, depth: QueueDepth) {
        self.queue_depth
            .with_label_values(&["pending"])
            .set(depth.pending as i64);
        self.queue_depth
            .with_label_values(&["retrying"])
            .set(depth.retrying as i64);
        self.queue_depth
            .with_label_values(&["failed"])
            .set(depth.failed as i64);
    }

    /// Records the memory held by bodies now; read at scrape time, so the
    /// request path pays nothing for it.
    pub fn set_body_memory(&self, bytes: u64) {
        self.body_memory.set(bytes as i64);
    }

    /// Records when the rate-limit pause under way ends, in Unix
    /// milliseconds.
    pub fn github_paused_until(&self, until_ms: i64) {
        self.github_paused_until.set(until_ms as f64 / 1000.0);
    }

    /// Records GitHub's `x-ratelimit-remaining` for a credential, with the
    /// window's reset time and limit when GitHub sent them: once the reset
    /// has passed, the gauge reads the full limit again even if no request
    /// has been made since. `credential` is a fixed name (`token`,
    /// `app:<installation id>`), never the secret.
    pub fn rate_limit_remaining(
        &self,
        credential: &str,
        remaining: u64,
        window: Option<(u64, u64)>,
    ) {
        self.rate_limit_remaining
            .with_label_values(&[credential])
            .set(remaining.min(i64::MAX as u64) as i64);
        let mut windows = self.rate_limit_windows.lock().expect("metrics lock");
        match window {
            Some((reset_epoch_secs, limit)) => {
                windows.insert(
                    credential.to_owned(),
                    RateLimitWindow {
                        reset_epoch_secs,
                        limit,
                    },
                );
            }
            None => {
                windows.remove(credential);
            }
        }
    }

    /// Sets the remaining-requests gauge of every credential whose window
    /// has reset by `now_epoch_secs` to its limit.
    fn refresh_rate_limits(&self, now_epoch_secs: u64) {
        let mut windows = self.rate_limit_windows.lock().expect("metrics lock");
        windows.retain(|credential, window| {
            if window.reset_epoch_secs > now_epoch_secs {
                return true;
            }
            self.rate_limit_remaining
                .with_label_values(&[credential.as_str()])
                .set(window.limit.min(i64::MAX as u64) as i64);
            false
        });
    }

    pub fn token_mint(&self, ok: bool) {
        self.token_mints
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Whether the file in force changed settings read only at start, so
    /// that an alert can say the relay still runs with the old ones.
    pub fn config_restart_required(&self, required: bool) {
        self.config_restart_required.set(i64::from(required));
    }

    /// Says whether GitHub refuses `credential` (a fixed name, as for
    /// [`Metrics::rate_limit_remaining`]), so that a queue held for a new
    /// token is seen without reading the log.
    pub fn github_credential_refused(&self, credential: &str, refused: bool) {
        self.github_credential_refused
            .with_label_values(&[credential])
            .set(i64::from(refused));
    }

    pub fn config_loaded(&self, ok: bool, now_epoch_secs: f64) {
        self.config_reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if ok {
            self.config_last_reload_success.set(now_epoch_secs);
        }
        self.config_last_reload_successful.set(i64::from(ok));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.refresh_rate_limits(crate::clock::now_epoch_secs());
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if encoder
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remaining_gauge_reads_the_full_limit_once_the_window_has_reset() {
        let metrics = Metrics::new();
        let gauge = |m: &Metrics| m.rate_limit_remaining.with_label_values(&["token"]).get();
        metrics.rate_limit_remaining("token", 40, Some((1_000, 5_000)));
        metrics.refresh_rate_limits(999);
        assert_eq!(gauge(&metrics), 40, "the window has not reset yet");
        metrics.refresh_rate_limits(1_000);
        assert_eq!(gauge(&metrics), 5_000);
        // Without a window, nothing is assumed.
        metrics.rate_limit_remaining("token", 12, None);
        metrics.refresh_rate_limits(2_000);
        assert_eq!(gauge(&metrics), 12);
    }
}
