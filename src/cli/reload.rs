//! Hot reload of routes.yaml, on SIGHUP and when the file changes.
//!
//! The file is read once a second and compared with what was last loaded;
//! comparing contents rather than modification times also catches the
//! symlink swaps of Kubernetes ConfigMaps and editors that replace the file.
//! A new configuration is validated in full and swapped in atomically; an
//! invalid one is logged with its line and column and the old one keeps
//! serving. Queued jobs live in the store, not in the configuration, so a
//! reload can neither lose nor duplicate them, and a removed route's queued
//! jobs still finish.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::ingress::AppState;
use crate::telemetry::Metrics;

/// How often the file is compared with the loaded text.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub struct Reloader {
    pub path: PathBuf,
    pub loaded_text: String,
    pub state: Arc<AppState>,
    pub metrics: Metrics,
    /// The configuration `serve` started with. Restart-only sections keep
    /// its values until the next restart, so a reload is compared with it,
    /// not with the last reload: a token rotated two reloads ago is still
    /// waiting for a restart.
    pub started: Arc<config::Config>,
    /// The read error of the last check, while the file cannot be read,
    /// and whether it has been reported.
    pub unreadable: Option<(String, bool)>,
}

impl Reloader {
    /// Runs until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGHUP; reloading on file change only");
                None
            }
        };
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                _ = tick.tick() => false,
            };
            self.check(forced);
        }
    }

    fn check(&mut self, forced: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                self.unreadable = None;
                text
            }
            Err(e) => {
                // An editor or a ConfigMap update may replace the file with
                // a moment in between; an error still there a second later
                // is reported, once, and counted as a failed reload.
                let error = e.to_string();
                let (seen_before, reported) = match &self.unreadable {
                    Some((last, reported)) if *last == error => (true, *reported),
                    _ => (false, false),
                };
                let report = forced || (seen_before && !reported);
                if report {
                    tracing::error!(path = %self.path.display(), error = %e, "Cannot read the configuration; keeping the current one");
                    self.metrics.config_loaded(false, 0.0);
                }
                self.unreadable = Some((error, reported || report));
                return;
            }
        };
        if !forced && text == self.loaded_text {
            return;
        }
        let name = self.path.display().to_string();
        match config::load(&name, &text, &super::process_env) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    tracing::warn!(warning = %warning, "Configuration warning");
                }
                let routes = loaded.config.routes.len();
                let restart_only = restart_only_changes(&self.started, &loaded.config);
                if !restart_only.is_empty() {
                    tracing::warn!(
                        sections = %restart_only.join(", "),
                        "These settings changed but only take effect at the next restart"
                    );
                }
                self.state.replace_routes(Arc::new(loaded.config));
                self.metrics
                    .config_loaded(true, crate::store::now_ms() as f64 / 1000.0);
                tracing::info!(
                    routes,
                    trigger = if forced { "SIGHUP" } else { "file change" },
                    "Configuration reloaded"
                );
            }
            Err(errors) => {
                self.metrics.config_loaded(false, 0.0);
                tracing::error!(errors = %errors, "The new configuration is invalid; the previous one stays in force");
            }
        }
        // Remember the text even when invalid, so one bad save is reported
        // once, not every second.
        self.loaded_text = text;
    }
}

/// The sections a reload cannot apply (the worker, the credential and the
/// store are built once at start) that differ between two configurations.
/// Sections are compared by value, secrets included: a rotated token is
/// exactly the change an operator must be told needs a restart.
fn restart_only_changes(old: &config::Config, new: &config::Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.github != new.github {
        changed.push("github");
    }
    if old.retry != new.retry {
        changed.push("retry");
    }
    if old.store != new.store {
        changed.push("store");
    }
    if old.server.listen != new.server.listen {
        changed.push("server.listen");
    }
    fn route_notify(c: &config::Config) -> Vec<(&str, &[config::NotifyTarget])> {
        c.routes
            .iter()
            .filter(|r| !r.notify.is_empty())
            .map(|r| (r.id.as_str(), r.notify.as_slice()))
            .collect()
    }
    if old.notify != new.notify || route_notify(old) != route_notify(new) {
        changed.push("notify");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(token: &str, max_attempts: u32, hook_url: &str, route_secret: &str) -> config::Config {
        let text = format!(
            "github:\n  token: {token}\nretry:\n  max_attempts: {max_attempts}\nroutes:\n  - id: r\n    verify:\n      token:\n        header: X-Token\n        value: {route_secret}\n    notify:\n      - url: {hook_url}\n    dispatch:\n      - repo: acme/blog\n        event_type: e\n"
        );
        match config::load("routes.yaml", &text, &|_| None) {
            Ok(loaded) => loaded.config,
            Err(errors) => panic!("{errors}"),
        }
    }

    #[test]
    fn secret_changes_in_restart_only_sections_are_named() {
        let base = || load("ghp_old", 5, "https://alerts.example/a", "hook-old");
        let cases: [(config::Config, &[&str]); 5] = [
            (base(), &[]),
            (
                load("ghp_new", 5, "https://alerts.example/a", "hook-old"),
                &["github"],
            ),
            (
                load("ghp_old", 6, "https://alerts.example/a", "hook-old"),
                &["retry"],
            ),
            (
                load("ghp_old", 5, "https://alerts.example/b", "hook-old"),
                &["notify"],
            ),
            // A route's own secret is applied by the reload itself.
            (
                load("ghp_old", 5, "https://alerts.example/a", "hook-new"),
                &[],
            ),
        ];
        for (index, (new, expected)) in cases.iter().enumerate() {
            assert_eq!(
                restart_only_changes(&base(), new),
                *expected,
                "case {index}"
            );
        }
    }
}
