//! Hot reload of routes.yaml, on SIGHUP and when the file changes.
//!
//! The file is read once a second and compared with what was last loaded;
//! comparing contents rather than modification times also catches the symlink
//! swaps of Kubernetes ConfigMaps and editors that replace the file. A changed
//! text is loaded once two reads in a row agree, so that a file caught
//! half-written (a shell redirect, a copy in progress) is not taken for the
//! new configuration: cut between two routes, it would even be valid, with the
//! later routes missing. SIGHUP loads at once. A new configuration is
//! validated in full (its pinned certificates read too) and swapped in
//! atomically; an invalid one is logged with its line and column and the old
//! one keeps serving. Queued jobs live in the store, not in the configuration,
//! so a reload can neither lose nor duplicate them, and a removed route's
//! queued jobs still finish.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::ingress::{AppState, LiveRoutes};
use crate::telemetry::Metrics;

/// How often the file is compared with the loaded text.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub struct Reloader {
    pub path: PathBuf,
    pub watch: FileWatch,
    pub state: Arc<AppState>,
    pub metrics: Metrics,
    /// The configuration `serve` started with. Restart-only sections keep
    /// its values until the next restart, so a reload is compared with it,
    /// not with the last reload: a token rotated two reloads ago is still
    /// waiting for a restart.
    pub started: Arc<config::Config>,
    /// A configuration refused only because a pinned certificate could not
    /// be read, with its warnings: its certificates are read again every
    /// second, while the file still holds it.
    pub waiting_for_certificates: Option<(Arc<config::Config>, Vec<String>)>,
    /// The file's settings that the environment or a flag overrides, whose
    /// changes would not take effect at a restart either.
    pub overridden: Overridden,
}

/// Which of the file's restart-only settings something else decides.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overridden {
    /// `--listen` or `RELAY_LISTEN` is given.
    pub listen: bool,
    /// `RELAY_DATABASE_URL` is set.
    pub store_url: bool,
}

/// What the latest read of the file calls for.
#[derive(Debug, PartialEq)]
pub enum Step {
    Nothing,
    /// The file cannot be read, and this is the moment to say so.
    ReportUnreadable(String),
    /// Load this text; the second field names what triggered it.
    Load(String, &'static str),
}

/// The file's side of reloading, without IO: given each read of the file,
/// decides whether to load it, wait, or report it unreadable.
#[derive(Debug, Default)]
pub struct FileWatch {
    /// The text last loaded, valid or not, so that one bad save is
    /// reported once, not every second.
    loaded_text: String,
    /// The read error of the last check, while the file cannot be read,
    /// and whether it has been reported.
    unreadable: Option<(String, bool)>,
    /// A changed text read once, waiting for the next read to agree.
    settling: Option<String>,
}

impl FileWatch {
    pub fn new(loaded_text: String) -> FileWatch {
        FileWatch {
            loaded_text,
            ..FileWatch::default()
        }
    }

    /// The text last loaded, valid or not.
    pub fn loaded_text(&self) -> &str {
        &self.loaded_text
    }

    /// Takes one read of the file; `forced` when SIGHUP asked for it.
    pub fn step(&mut self, read: Result<String, String>, forced: bool) -> Step {
        let text = match read {
            Ok(text) => text,
            Err(error) => {
                self.settling = None;
                // An editor or a ConfigMap update may replace the file with
                // a moment in between; an error still there a second later
                // is reported, once, and counted as a failed reload.
                let (seen_before, reported) = match &self.unreadable {
                    Some((last, reported)) if *last == error => (true, *reported),
                    _ => (false, false),
                };
                let report = forced || (seen_before && !reported);
                self.unreadable = Some((error.clone(), reported || report));
                return if report {
                    Step::ReportUnreadable(error)
                } else {
                    Step::Nothing
                };
            }
        };
        // A file that was reported unreadable and is back records a reload,
        // even with the text already in force: otherwise the failure stays
        // the latest outcome, and the alert on it keeps firing.
        let recovered = matches!(self.unreadable.take(), Some((_, true)));
        let trigger = if forced {
            "SIGHUP"
        } else if recovered && text == self.loaded_text {
            "file readable again"
        } else if text == self.loaded_text {
            self.settling = None;
            return Step::Nothing;
        } else if self.settling.as_ref() != Some(&text) {
            self.settling = Some(text);
            return Step::Nothing;
        } else {
            "file change"
        };
        self.settling = None;
        self.loaded_text = text.clone();
        Step::Load(text, trigger)
    }
}

impl Reloader {
    /// Runs until `stop` is cancelled, reloading on `hangup` (listened for
    /// by `serve` before it started, so that none is missed) and on change.
    pub async fn run(mut self, mut hangup: Signal, stop: CancellationToken) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                _ = hangup.recv() => true,
                _ = tick.tick() => false,
            };
            // Reading files, compiling templates and parsing certificates
            // block; they run beside the runtime's threads, which carry the
            // dispatcher.
            let path = self.path.clone();
            let read = blocking(move || super::read_config_text(&path))
                .await
                .and_then(|read| read);
            let unchanged = read.as_deref().ok() == Some(self.watch.loaded_text());
            match self.watch.step(read, forced) {
                // Only while the file still holds the text that waits: a
                // newer text, settling, is loaded on its own.
                Step::Nothing if unchanged => self.retry_certificates().await,
                Step::Nothing => {}
                Step::ReportUnreadable(error) => {
                    // Counted before it is said, as a refused file is: a
                    // reader of the log finds the count already moved.
                    self.metrics.config_loaded(false, 0.0);
                    tracing::error!(path = %self.path.display(), error = %error, "Cannot read the configuration; keeping the current one");
                }
                Step::Load(text, trigger) => self.load(text, trigger).await,
            }
            // Each look at the file, at the level below debug: what it found
            // is logged above when it matters, and this line lets whoever
            // watches (a test among them) know that a look happened.
            tracing::trace!(forced, "Looked at the configuration file");
        }
    }

    /// Validates `text` and swaps it in, or keeps the configuration in
    /// force and reports why.
    async fn load(&mut self, text: String, trigger: &str) {
        self.waiting_for_certificates = None;
        let name = self.path.display().to_string();
        let prepared = blocking(move || {
            let loaded = config::load(&name, &text, &super::process_env)
                .map_err(|errors| (errors.to_string(), None))?;
            let config = Arc::new(loaded.config);
            let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
            match LiveRoutes::new(config.clone()) {
                Ok(routes) => Ok((routes, warnings)),
                Err(e) => Err((e.to_string(), Some((config, warnings)))),
            }
        })
        .await
        .unwrap_or_else(|e| Err((e, None)));
        match prepared {
            Ok((routes, warnings)) => self.apply(routes, &warnings, trigger),
            Err((errors, waiting_for_certificates)) => {
                self.refused(&errors);
                self.waiting_for_certificates = waiting_for_certificates;
            }
        }
    }

    fn refused(&self, errors: &str) {
        // What the refused file was loaded into is freed by now.
        tokio::task::spawn_blocking(super::give_back_freed_memory);
        self.metrics.config_loaded(false, 0.0);
        tracing::error!(errors = %errors, "The new configuration is invalid; the previous one stays in force");
    }

    /// Reads again the certificates of a configuration refused only because
    /// one could not be read: the file holding it may arrive after
    /// routes.yaml (two volumes synced apart), and nothing else would make
    /// the relay look again. Failures are not reported again.
    async fn retry_certificates(&mut self) {
        let Some((config, _)) = &self.waiting_for_certificates else {
            return;
        };
        let config = config.clone();
        if let Ok(Ok(routes)) = blocking(move || LiveRoutes::new(config)).await
            && let Some((_, warnings)) = self.waiting_for_certificates.take()
        {
            self.apply(routes, &warnings, "certificates readable");
        }
    }

    fn apply(&self, routes: LiveRoutes, warnings: &[String], trigger: &str) {
        for warning in warnings {
            tracing::warn!(warning = %warning, "Configuration warning");
        }
        let count = routes.config.routes.len();
        let restart_only = restart_only_changes(&self.started, &routes.config, self.overridden);
        self.metrics
            .config_restart_required(!restart_only.is_empty());
        if !restart_only.is_empty() {
            tracing::warn!(
                sections = %restart_only.join(", "),
                "These settings changed but only take effect at the next restart"
            );
        }
        let replaced = self.state.replace_routes(routes);
        // Freed beside the runtime's threads; a webhook still holding the
        // replaced routes frees them itself when it ends.
        tokio::task::spawn_blocking(move || {
            drop(replaced);
            super::give_back_freed_memory();
        });
        self.metrics
            .config_loaded(true, crate::clock::now_ms() as f64 / 1000.0);
        tracing::info!(routes = count, trigger, "Configuration reloaded");
    }
}

/// Runs `work` on the blocking pool. Its error is a panic inside `work`,
/// as text, so that a reload that panics is refused like an invalid file
/// instead of ending the watch.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("the reload failed: {e}"))
}

/// The sections a reload cannot apply (the worker, the credential and the
/// store are built once at start) that differ between two configurations.
/// Sections are compared by value, secrets included: a rotated token is
/// exactly the change an operator must be told needs a restart. A setting
/// the environment or a flag overrides is left out: a restart would not
/// apply its change either.
fn restart_only_changes(
    old: &config::Config,
    new: &config::Config,
    overridden: Overridden,
) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.github != new.github {
        changed.push("github");
    }
    if old.retry != new.retry {
        changed.push("retry");
    }
    // Compared whole, but for a URL the environment decides.
    let store_of = |c: &config::Config| config::StoreConfig {
        url: c.store.url.clone().filter(|_| !overridden.store_url),
        ..c.store
    };
    if store_of(old) != store_of(new) {
        changed.push("store");
    }
    if !overridden.listen && old.server.listen != new.server.listen {
        changed.push("server.listen");
    }
    fn route_notify(c: &config::Config) -> Vec<(&str, &[config::NotifyTarget])> {
        c.routes
            .iter()
            .filter_map(|r| Some((r.id.as_str(), r.notify.as_deref()?)))
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

    /// Each case is a sequence of reads (`Ok` text or `Err` error, and
    /// whether SIGHUP forced it) and the steps they must give, starting
    /// from "a" in force.
    #[test]
    fn the_watch_loads_settled_text_and_reports_unreadable_files_once() {
        let ok = |t: &str| (Ok(t.to_string()), false);
        let err = |e: &str| (Err(e.to_string()), false);
        let hup = |t: &str| (Ok(t.to_string()), true);
        let load = |t: &str, trigger| Step::Load(t.to_string(), trigger);
        let unreadable = |e: &str| Step::ReportUnreadable(e.to_string());
        use Step::Nothing;
        type Read = (Result<String, String>, bool);
        let cases: Vec<(&str, Vec<Read>, Vec<Step>)> = vec![
            ("unchanged", vec![ok("a"), ok("a")], vec![Nothing, Nothing]),
            (
                "a change is loaded once two reads agree",
                vec![ok("b"), ok("b"), ok("b")],
                vec![Nothing, load("b", "file change"), Nothing],
            ),
            (
                "a file caught half-written is never loaded",
                vec![ok("b-half"), ok("b"), ok("b")],
                vec![Nothing, Nothing, load("b", "file change")],
            ),
            (
                "a change undone before it settled loads nothing",
                vec![ok("b"), ok("a"), ok("a")],
                vec![Nothing, Nothing, Nothing],
            ),
            (
                "SIGHUP loads at once, even the text in force",
                vec![hup("a"), hup("b-half"), ok("b-half")],
                vec![load("a", "SIGHUP"), load("b-half", "SIGHUP"), Nothing],
            ),
            (
                "an error is reported the second time, once",
                vec![err("gone"), err("gone"), err("gone")],
                vec![Nothing, unreadable("gone"), Nothing],
            ),
            (
                "a moment without the file is not reported",
                vec![err("gone"), ok("a"), err("gone")],
                vec![Nothing, Nothing, Nothing],
            ),
            (
                "SIGHUP reports an unreadable file at once",
                vec![(Err("denied".to_string()), true)],
                vec![unreadable("denied")],
            ),
            (
                "a reported file back unchanged records a reload",
                vec![err("gone"), err("gone"), ok("a"), ok("a")],
                vec![
                    Nothing,
                    unreadable("gone"),
                    load("a", "file readable again"),
                    Nothing,
                ],
            ),
            (
                "a reported file back changed settles first",
                vec![err("gone"), err("gone"), ok("b"), ok("b")],
                vec![
                    Nothing,
                    unreadable("gone"),
                    Nothing,
                    load("b", "file change"),
                ],
            ),
            (
                "a different error is a new one",
                vec![err("gone"), err("denied"), err("denied")],
                vec![Nothing, Nothing, unreadable("denied")],
            ),
        ];
        for (name, reads, expected) in cases {
            let mut watch = FileWatch::new("a".to_string());
            let steps: Vec<Step> = reads
                .into_iter()
                .map(|(read, forced)| watch.step(read, forced))
                .collect();
            assert_eq!(steps, expected, "{name}");
        }
    }

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
                restart_only_changes(&base(), new, Overridden::default()),
                *expected,
                "case {index}"
            );
        }
    }

    #[test]
    fn settings_the_environment_overrides_need_no_restart_when_the_file_changes_them() {
        let with = |extra: &str| {
            let text = format!(
                "github:\n  token: t\n{extra}routes:\n  - id: r\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: e\n"
            );
            config::load("routes.yaml", &text, &|_| None)
                .unwrap()
                .config
        };
        let old = with("");
        let new = with("store:\n  url: sqlite:other.db\nserver:\n  listen: 0.0.0.0:9000\n");
        let changes =
            |listen, store_url| restart_only_changes(&old, &new, Overridden { listen, store_url });
        assert_eq!(changes(false, false), ["store", "server.listen"]);
        assert_eq!(changes(true, true), Vec::<&str>::new());
        let retention = with("store:\n  url: sqlite:other.db\n  retention: 1d\n");
        assert_eq!(
            restart_only_changes(
                &old,
                &retention,
                Overridden {
                    listen: true,
                    store_url: true
                }
            ),
            ["store"],
            "retention is the file's whatever decides the URL"
        );
    }
}
