//! `dispatch-relay serve`: builds the store, the worker and the HTTP server,
//! then runs until SIGTERM or SIGINT.
//!
//! Shutdown sequence: stop taking webhooks (503), let the worker finish the
//! GitHub calls in flight within a grace period (the rest stay queued on
//! disk), stop HTTP, flush the store, exit 0. A second signal cuts the
//! grace periods short.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::reload::Reloader;
use super::{CliError, load_config_text, runtime, store_path};
use crate::config::Synchronous as ConfigSynchronous;
use crate::dispatch::pacing::Pacer;
use crate::dispatch::{Dispatcher, DispatcherHandle};
use crate::github::preflight::{Budget, Unasked, Verdict};
use crate::github::{Credentials, GitHubClient};
use crate::ingress::{AppState, Application, LiveRoutes};
use crate::secret::Secret;
use crate::store::{Store, Synchronous};
use crate::telemetry::Metrics;

/// Runs the same preflight as `check --online` and logs what it finds. It
/// never stops the relay: a repository can be fixed while it runs, and the
/// queue keeps whatever cannot be sent yet.
async fn preflight(
    credentials: Arc<Credentials>,
    client: GitHubClient,
    targets: Vec<crate::github::preflight::Target>,
    pacer: Arc<Pacer>,
) {
    // A rate limit GitHub announced before a restart holds the preflight's
    // questions back as it holds dispatches: GitHub asks integrations to
    // send nothing until it ends.
    pacer.wait_unpaused().await;
    let findings =
        crate::github::preflight::check(&credentials, &client, &targets, Budget::Half).await;
    let (mut ok, mut not_asked, mut stopped) = (0, 0, None);
    for finding in findings {
        match finding.verdict {
            Verdict::Ok => ok += 1,
            Verdict::NotAsked(why) => {
                not_asked += 1;
                stopped = Some(why);
            }
            Verdict::Unanswered(reason) => tracing::warn!(
                repo = %finding.target.repo,
                reason = %reason,
                "Preflight: GitHub could not be asked about this repository"
            ),
            Verdict::Fail(reason) => tracing::warn!(
                repo = %finding.target.repo,
                reason = %reason,
                "Preflight: this repository cannot receive dispatches yet"
            ),
            Verdict::Moved { now } => {
                ok += 1;
                tracing::warn!(
                    repo = %finding.target.repo,
                    now = %now,
                    "Preflight: this repository was renamed or transferred; GitHub redirects its dispatches for now, and routes.yaml should name it as it is now"
                );
            }
        }
    }
    match stopped {
        Some(Unasked::RateLimited) => tracing::warn!(
            not_asked,
            "Preflight stopped at GitHub's rate limit; the repositories left were not asked about"
        ),
        // Not a warning: nothing is wrong, and the dispatches will tell.
        Some(Unasked::HalfTheRateLimitSpent) => tracing::info!(
            not_asked,
            "Preflight stopped with half the credential's hourly requests left, which it keeps for dispatches; the repositories left were not asked about"
        ),
        None => {}
    }
    tracing::info!(ok, of = targets.len(), "Preflight finished");
}

/// The number a test hook's variable holds. A hook changes how the relay
/// behaves in ways no deployment wants, so one that is set is said at
/// start, and one set to something other than a number is said and ignored.
fn test_hook<T: std::str::FromStr>(name: &str, effect: &str) -> Option<T> {
    let value = super::process_env(name)?;
    match value.trim().parse() {
        Ok(number) => {
            tracing::warn!("{name} is set, a hook for tests only: {effect}");
            Some(number)
        }
        Err(_) => {
            tracing::warn!("{name} is set but is not a number; ignored");
            None
        }
    }
}

/// How the HTTP server's task ended: its own error, or its task's (a panic)
/// as one.
fn served(ended: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    ended
        .map_err(std::io::Error::other)
        .and_then(|result| result)
}

/// `path` with `suffix` added to its file name, as SQLite names the files
/// beside a store (`-wal`) and earlier versions named its lock (`.lock`).
fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// How often finished deliveries past `store.retention` are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Keeps the store bounded: deletes finished deliveries older than the
/// retention, at start and then every hour.
async fn prune_periodically(
    store: Store,
    retention: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cutoff = crate::clock::now_ms().saturating_sub(crate::clock::duration_ms(retention));
        match store.prune_finished(cutoff).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "Pruned finished deliveries past the retention"),
            Err(e) => tracing::error!(error = %e, "Could not prune finished deliveries"),
        }
    }
}

/// How long in-flight GitHub calls may take to finish at shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(20);

/// How long failure alerts still waiting to be sent may take at shutdown:
/// one request per destination, each with a 10 s timeout.
const ALERT_GRACE: Duration = Duration::from_secs(10);

/// Takes the store for this process: an exclusive lock (`flock`) on the
/// store file itself, held until exit. Two relays on one store would each
/// clear the other's leases at start and send the same dispatches twice;
/// the second is refused instead. The lock is the file's, not its name's,
/// so a symbolic or hard link to the store is refused too. `deliveries` and
/// `redeliver` do not take it: they may run beside the relay.
///
/// SQLite's own locks are POSIX record locks, which a `flock` does not
/// touch; and the file opened here stays open until `serve` returns, after
/// the store is closed, as it must: closing any descriptor of the database
/// file would drop the process's POSIX locks on it.
///
/// Earlier versions locked `<store>.lock` beside the store instead; that
/// file is locked too, so that a relay of either kind refuses to start
/// while the other runs (an upgrade that starts the new relay before the
/// old one has stopped).
fn own_store(db_path: &Path) -> Result<[std::fs::File; 2], CliError> {
    // The store creates its directory when missing; the lock comes first.
    if let Some(parent) = db_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))
            .map_err(runtime)?;
    }
    // An empty file is an empty SQLite database. A new store is readable
    // by its owner only, as SQLite then makes its WAL: it holds every
    // webhook's body and query string.
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))
            .map_err(runtime)
    };
    let file = open(db_path)?;
    let lock_path = beside(db_path, ".lock");
    let earlier_lock = open(&lock_path)?;
    for (locked, path) in [(&file, db_path), (&earlier_lock, lock_path.as_path())] {
        match locked.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(runtime(anyhow::anyhow!(
                    "another `dispatch-relay serve` is using the store {} (the same file, perhaps under another name); two relays on one store would send dispatches twice",
                    db_path.display(),
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(runtime(
                    anyhow::Error::new(e).context(format!("cannot lock {}", path.display())),
                ));
            }
        }
    }
    Ok([file, earlier_lock])
}

/// Says when the store, or its WAL, can be read by users other than its
/// owner: it holds every webhook's body and query string. New stores are
/// made 0600; one made by an earlier version, or copied into place, keeps
/// whatever mode it had, which the relay leaves to the operator to change.
fn warn_if_readable_by_others(db_path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for path in [db_path.to_path_buf(), beside(db_path, "-wal")] {
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{mode:o}"),
                    "The store can be read by other users; it holds every webhook's body. Run chmod 600 on it and its -wal and -shm files"
                );
            }
        }
    }
}

/// The signals `serve` handles, listened for from its first moment.
struct Signals {
    /// Reloads routes.yaml.
    hangup: Signal,
    stop: StopSignals,
    /// Held for the life of `serve`: see [`Signals::listen`].
    _file_size_limit: Signal,
}

/// SIGTERM and SIGINT, which stop the relay.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Listens before anything that can take a while (reading the
    /// configuration, opening or migrating the store).
    fn listen() -> Result<Signals, CliError> {
        Ok(Signals {
            // Until a process handles SIGHUP, the signal ends it, and
            // systemd counts an end by SIGHUP as a clean exit that
            // `Restart=on-failure` does not undo. A `systemctl reload` right
            // after a start would stop the relay for good.
            hangup: signal(SignalKind::hangup()).map_err(runtime)?,
            // Likewise for stopping: a SIGTERM during start-up is kept until
            // the relay is up and then stops it cleanly (exit 0), where the
            // signal's default action would end it with 143, a failed stop
            // to a service manager.
            stop: StopSignals {
                terminate: signal(SignalKind::terminate()).map_err(runtime)?,
                interrupt: signal(SignalKind::interrupt()).map_err(runtime)?,
            },
            // A file-size limit (`ulimit -f`, systemd's LimitFSIZE) would
            // end the process by SIGXFSZ at the store's first write past it,
            // with no word in the log. Handled, the write fails instead, and
            // the relay answers 503 and says why, as for a full disk.
            _file_size_limit: signal(SignalKind::from_raw(libc::SIGXFSZ)).map_err(runtime)?,
        })
    }
}

impl StopSignals {
    /// Waits for the first SIGTERM or SIGINT, and says which came.
    async fn first(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    }

    /// Waits for a second one: an operator who will not wait for the
    /// grace periods.
    async fn second(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        tracing::warn!(
            "A second signal: stopping now; dispatches still in flight will be sent again at the next start"
        );
    }
}

/// The `--listen` flag (or `RELAY_LISTEN`), checked. `server.listen` was
/// checked with the file; the flag is input too: a malformed one exits 1,
/// as a malformed file does, and only an address that cannot be bound (in
/// use, not local) exits 2. An empty one (`RELAY_LISTEN=` in an
/// environment file) is unset, as an empty `server.listen` is.
fn listen_flag(listen: Option<String>) -> Result<Option<String>, CliError> {
    let listen = listen.filter(|l| !l.is_empty());
    if let Some(flag) = listen
        .as_deref()
        .filter(|l| !crate::config::is_listen_address(l))
    {
        return Err(CliError::Invalid(anyhow::anyhow!(
            "--listen (or RELAY_LISTEN): `{flag}` is not an address to listen on; write `host:port`, such as `0.0.0.0:8080` or `[::]:8080`"
        )));
    }
    Ok(listen)
}

/// The store, opened for this process alone, with the leases of a
/// previous run released.
struct OpenStore {
    store: Store,
    path: std::path::PathBuf,
    /// Held until the process exits: see [`own_store`].
    _owner: [std::fs::File; 2],
}

/// Opens (or creates) the store named by the configuration, refusing a
/// WAL left without its store, and says what it found.
async fn open_store(
    config_path: &Path,
    config: &crate::config::Config,
) -> Result<OpenStore, CliError> {
    let db_path = store_path(config_path, config.store.url.as_deref())?;
    let synchronous = match config.store.synchronous {
        ConfigSynchronous::Full => Synchronous::Full,
        ConfigSynchronous::Normal => Synchronous::Normal,
    };
    // Said when it happens: a store url with a typo in it gives a new,
    // empty store (its directory created too), not an error.
    let existing = std::fs::metadata(&db_path).ok().map(|file| file.len());
    let new_store = existing.is_none_or(|len| len == 0);
    // A WAL without its store is what moving or deleting the store file
    // leaves: it holds the latest commits, and a new store at the path
    // would discard it. Starting empty must be asked for.
    let wal_path = beside(&db_path, "-wal");
    if new_store && std::fs::metadata(&wal_path).is_ok_and(|wal| wal.len() > 0) {
        return Err(runtime(anyhow::anyhow!(
            "{} holds commits of a store that is no longer at {}: put the store file back beside it, or remove it to start with an empty store (what it holds is then lost)",
            wal_path.display(),
            db_path.display()
        )));
    }
    let owner = own_store(&db_path)?;
    let store = Store::open(&db_path, synchronous)
        .with_context(|| format!("cannot open the store at {}", db_path.display()))
        .map_err(runtime)?;
    let released = store
        .release_all_leases(crate::clock::now_ms())
        .await
        .context("cannot recover the leases of a previous run")
        .map_err(runtime)?;
    if released.interrupted > 0 {
        tracing::warn!(
            jobs = released.interrupted,
            "The relay last stopped while dispatches were in flight, without recording GitHub's answers; they are sent again, and GitHub may receive them twice"
        );
    }
    if released.orphans > 0 {
        tracing::warn!(
            jobs = released.orphans,
            "Removed queued dispatches whose delivery is missing from the store, as in a store rebuilt from a damaged file; they cannot be sent"
        );
    }
    match existing {
        None => tracing::info!(store = %db_path.display(), "Created a new, empty store"),
        // What a failed restore or a truncation leaves: any queue the file
        // held before is gone, which the operator must hear of.
        Some(0) => tracing::warn!(
            store = %db_path.display(),
            "The store file was empty (0 bytes): started a new, empty store in it; if it held deliveries, restore it from a backup"
        ),
        Some(_) => {}
    }
    warn_if_readable_by_others(&db_path);
    // Beside the work rather than before it: the check reads the whole
    // file, and a large store would otherwise hold the start back.
    let checked = store.clone();
    tokio::spawn(async move {
        if let Err(e) = checked.check_integrity().await {
            tracing::warn!(error = %e, "Could not check the store file for damage");
        }
    });
    Ok(OpenStore {
        store,
        path: db_path,
        _owner: owner,
    })
}

/// Starts the worker that sends the store's jobs to GitHub, and the
/// preflight beside it. A rate-limit pause kept from before a restart is
/// taken up first, so that both wait it out.
async fn start_dispatching(
    config: &crate::config::Config,
    store: &Store,
    metrics: &Metrics,
) -> Result<(DispatcherHandle, crate::notify::Notifier), CliError> {
    let client =
        GitHubClient::new(&config.github.api_url, config.github.timeout).map_err(runtime)?;
    let credentials = Arc::new(Credentials::from_config(
        &config.github.credential,
        client.clone(),
        Some(metrics.clone()),
    ));
    let pacer = Arc::new(Pacer::new(&config.github.pacing));
    let notifier = crate::notify::Notifier::start(config);
    let dispatcher = Dispatcher {
        store: store.clone(),
        client: client.clone(),
        credentials: credentials.clone(),
        retry: config.retry.clone(),
        pacer: pacer.clone(),
        metrics: metrics.clone(),
        notifier: notifier.clone(),
        // Test hook: a short lease, so that the suite can let one run out
        // while its job waits out a pause (docs/decisions.md, decision 10).
        lease: test_hook(
            "RELAY_TEST_LEASE_MS",
            "leases of jobs being sent run out early",
        )
        .map_or(crate::dispatch::LEASE, Duration::from_millis),
        // Test hook: a long idle poll, so that the suite can tell a retry
        // sent at its wake-up from one found by the poll.
        idle_poll: test_hook(
            "RELAY_TEST_IDLE_POLL_MS",
            "the dispatch worker looks at the store unwoken this seldom",
        )
        .map_or(crate::dispatch::IDLE_POLL, Duration::from_millis),
        health: Default::default(),
        moved: Default::default(),
        refused: Default::default(),
    };
    dispatcher.resume_kept_pause().await;
    let dispatcher = dispatcher.spawn();
    tokio::spawn(preflight(
        credentials,
        client,
        crate::github::preflight::static_targets(config),
        pacer,
    ));
    Ok((dispatcher, notifier))
}

pub async fn serve(config_path: &Path, listen: Option<String>) -> Result<(), CliError> {
    let signals = Signals::listen()?;
    let (loaded, loaded_text) = load_config_text(config_path)?;
    let listen = listen_flag(listen)?;
    let listen_overridden = listen.is_some();
    for warning in &loaded.warnings {
        tracing::warn!(warning = %warning, "Configuration warning");
    }
    let config = Arc::new(loaded.config);
    let routes = LiveRoutes::new(config.clone()).map_err(|e| CliError::Config(e.to_string()))?;
    super::give_back_freed_memory();
    let metrics = Metrics::new();
    metrics.config_loaded(true, crate::clock::now_ms() as f64 / 1000.0);

    let listen = listen
        .or_else(|| config.server.listen.clone())
        .unwrap_or_else(|| "0.0.0.0:8080".to_string());
    // Bound before the store is opened or anything is sent: a relay that
    // cannot serve (the port is taken, often by a relay already running)
    // leaves no store files behind and sends nothing in the other's place.
    let listener = std::net::TcpListener::bind(&listen)
        .with_context(|| format!("cannot listen on {listen}"))
        .map_err(runtime)?;
    let opened = open_store(config_path, &config).await?;
    let store = opened.store.clone();
    let observed = metrics.clone();
    store.observe_commits(Box::new(move |commit| observed.store_commit(commit)));
    let (dispatcher, notifier) = start_dispatching(&config, &store, &metrics).await?;

    // Trimmed: a token read from a file keeps its final newline, which no
    // `Authorization` header can carry, and every request would be refused.
    let admin_token = super::process_setting("RELAY_ADMIN_TOKEN").map(Secret::new);
    let state = Arc::new(
        AppState::new(
            routes,
            store.clone(),
            metrics.clone(),
            dispatcher.clone(),
            admin_token,
        )
        // Test hook: fixes the clock that signed timestamps are judged by, so
        // the suite can replay recorded sender samples (docs/decisions.md).
        .with_fixed_verify_clock(test_hook(
            "RELAY_TEST_CLOCK_MS",
            "signed timestamps are judged against a fixed time, so replays are not refused",
        )),
    );
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let app = Application::build(state.clone(), listener, workers)
        .with_context(|| format!("cannot serve on {listen}"))
        .map_err(runtime)?;
    let handle = app.handle();
    tracing::info!(
        addr = %app.addr(),
        store = %opened.path.display(),
        routes = config.routes.len(),
        "Listening"
    );
    let mut server = tokio::spawn(app.run_until_stopped());
    let stop_background = tokio_util::sync::CancellationToken::new();
    let reloader = Reloader {
        // Made absolute from the start directory's name, without resolving
        // links: a relative path would go on naming the file in the
        // directory the process started in even after a deploy replaced
        // that directory (a new checkout, a swapped release), and the
        // edits made there would never be seen.
        path: std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf()),
        watch: super::reload::FileWatch::new(loaded_text),
        started: state.routes().config.clone(),
        state: state.clone(),
        metrics,
        waiting_for_certificates: None,
        overridden: super::reload::Overridden {
            listen: listen_overridden,
            store_url: super::process_setting("RELAY_DATABASE_URL").is_some(),
        },
    };
    let Signals {
        hangup,
        mut stop,
        _file_size_limit,
    } = signals;
    tokio::spawn(reloader.run(hangup, stop_background.clone()));
    tokio::spawn(prune_periodically(
        store.clone(),
        config.store.retention,
        stop_background.clone(),
    ));
    // The HTTP server ends on its own only if it fails; then the relay
    // shuts down as for a signal and says why in its exit status.
    let server_failure = tokio::select! {
        () = stop.first() => None,
        ended = &mut server => {
            tracing::warn!("The HTTP server stopped on its own; shutting down");
            Some(match served(ended) {
                Ok(()) => anyhow::anyhow!("the HTTP server stopped"),
                Err(e) => anyhow::Error::new(e).context("the HTTP server failed"),
            })
        }
    };
    stop_background.cancel();
    state.begin_shutdown();
    let hurried = drain(&dispatcher, &notifier, &mut stop).await;
    if server_failure.is_none() {
        // Open connections are given their time, unless told otherwise.
        let graceful = !hurried;
        tokio::select! {
            _ = handle.stop(graceful) => {}
            _ = stop.second(), if graceful => handle.stop(false).await,
        }
        if let Err(e) = served(server.await) {
            tracing::warn!(error = %e, "The HTTP server did not stop cleanly");
        }
    }
    store.close().await;
    tracing::info!("Stopped");
    match server_failure {
        Some(failure) => Err(runtime(failure)),
        None => Ok(()),
    }
}

/// Lets the dispatches in flight finish, then the failure alerts, each
/// within its grace period. A second signal cuts both short: what was in
/// flight is sent again at the next start, as after a timeout. Returns
/// whether it was cut short.
async fn drain(
    dispatcher: &DispatcherHandle,
    notifier: &crate::notify::Notifier,
    stop: &mut StopSignals,
) -> bool {
    tokio::select! {
        drained = dispatcher.shutdown(DRAIN_GRACE) => {
            if drained {
                tracing::info!("In-flight dispatches finished");
            } else {
                tracing::warn!(
                    "Some dispatches were still in flight after the grace period; they will be sent again at the next start"
                );
            }
        }
        () = stop.second() => return true,
    }
    // After the dispatches, so that their failures are in the alerts too.
    tokio::select! {
        closed = notifier.close(ALERT_GRACE) => {
            if !closed {
                tracing::warn!("Some failure alerts could not be sent before stopping");
            }
            false
        }
        () = stop.second() => true,
    }
}
