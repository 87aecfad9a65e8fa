//! The single writer thread and its group commit.
//!
//! Callers send commands over a channel; the thread takes the first command,
//! then every command already waiting (up to a bound), runs them all in one
//! transaction, commits once, and only then answers each caller. When a
//! command fails, the batch is run again with each command inside its own
//! savepoint, so one bad request never costs the others in its batch their
//! commit.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::retry_times::RetryTimes;
use super::{
    Accepted, AttemptRecord, CommitObserver, CommitReport, Corruption, Job, NewDelivery,
    Rerendered, Rerendering, StoreError, schema,
};

/// How hard SQLite flushes at each commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit reaches the disk before the caller is answered: a 202
    /// survives a power cut.
    #[default]
    Full,
    /// With WAL, commits survive a crash of the process but not of the
    /// machine; faster on slow disks.
    Normal,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Command {
    Accept {
        delivery: Box<NewDelivery>,
        reply: Reply<Accepted>,
    },
    Lease {
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
        after_route: Option<String>,
        reply: Reply<Vec<Job>>,
    },
    Record {
        attempt: Box<AttemptRecord>,
        reply: Reply<()>,
    },
    Release {
        job_ids: Vec<i64>,
        reply: Reply<()>,
    },
    BringForward {
        from_ms: i64,
        now_ms: i64,
        reply: Reply<usize>,
    },
    Rerender {
        delivery_id: String,
        rendering: Rerendering,
        now_ms: i64,
        reply: Reply<Rerendered>,
    },
    Prune {
        cutoff_ms: i64,
        limit: usize,
        reply: Reply<usize>,
    },
    ReleaseAll {
        now_ms: i64,
        reply: Reply<super::Released>,
    },
    /// Marks the end of the queued work: the writer commits what came
    /// before it, then closes its connection and stops.
    Close {
        reply: Reply<()>,
    },
    /// Commits a write of its own (readiness).
    CheckWritable {
        reply: Reply<()>,
    },
    SavePause {
        until_ms: i64,
        latest_ms: i64,
        reply: Reply<()>,
    },
    SaveUnstatedRun {
        in_a_row: u32,
        until_ms: Option<i64>,
        reply: Reply<()>,
    },
}

/// What a command produced, waiting for the batch's commit before it is
/// sent to the caller.
enum Outcome {
    Accepted(Accepted),
    Jobs(Vec<Job>),
    Unit,
    Rerendered(Rerendered),
    Count(usize),
    Released(super::Released),
}

impl Command {
    /// Sends the command's outcome to its caller, or the commit's error when
    /// the batch did not commit.
    fn answer(self, outcome: Result<Outcome, StoreError>, commit: &Result<(), Refusal>) {
        /// Sends the outcome's value when it is of the kind `pick` takes.
        /// A mismatch cannot happen (each command produces its own kind);
        /// it would answer "unavailable".
        fn send<T>(
            reply: Reply<T>,
            outcome: Result<Outcome, StoreError>,
            pick: impl FnOnce(Outcome) -> Option<T>,
        ) {
            let result = outcome.and_then(|o| {
                pick(o).ok_or_else(|| {
                    StoreError::Unavailable("internal: unexpected store outcome".into())
                })
            });
            // The caller may have gone away (a client hung up); its data is
            // committed all the same, which is what at-least-once needs.
            let _ = reply.send(result);
        }
        let outcome = match commit {
            Ok(()) => outcome,
            Err(e) => Err(StoreError::Unavailable(e.message.clone())),
        };
        match self {
            Command::Accept { reply, .. } => send(reply, outcome, |o| match o {
                Outcome::Accepted(a) => Some(a),
                _ => None,
            }),
            Command::Lease { reply, .. } => send(reply, outcome, |o| match o {
                Outcome::Jobs(jobs) => Some(jobs),
                _ => None,
            }),
            Command::Record { reply, .. }
            | Command::Release { reply, .. }
            | Command::Close { reply }
            | Command::CheckWritable { reply }
            | Command::SavePause { reply, .. }
            | Command::SaveUnstatedRun { reply, .. } => send(reply, outcome, |o| match o {
                Outcome::Unit => Some(()),
                _ => None,
            }),
            Command::Rerender { reply, .. } => send(reply, outcome, |o| match o {
                Outcome::Rerendered(r) => Some(r),
                _ => None,
            }),
            Command::Prune { reply, .. } | Command::BringForward { reply, .. } => {
                send(reply, outcome, |o| match o {
                    Outcome::Count(n) => Some(n),
                    _ => None,
                })
            }
            Command::ReleaseAll { reply, .. } => send(reply, outcome, |o| match o {
                Outcome::Released(released) => Some(released),
                _ => None,
            }),
        }
    }
}

/// Why a batch was not committed.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    message: String,
    /// SQLite found the store file damaged.
    corrupt: bool,
}

impl From<String> for Refusal {
    fn from(message: String) -> Refusal {
        Refusal {
            message,
            corrupt: false,
        }
    }
}

impl From<rusqlite::Error> for Refusal {
    fn from(e: rusqlite::Error) -> Refusal {
        StoreError::from(e).into()
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        match e.damage() {
            Some(damage) => Refusal {
                message: damage,
                corrupt: true,
            },
            None => e.to_string().into(),
        }
    }
}

/// How much of the WAL is copied back into the database at a time.
const CHECKPOINT_BYTES: i64 = 4 * 1024 * 1024;

/// The most commands committed together. Large enough to absorb a burst at
/// full speed, small enough that one commit stays short.
const MAX_BATCH: usize = 512;

#[derive(Clone)]
pub(super) struct Writer {
    sender: mpsc::Sender<Command>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    /// Starts the writer on `conn`, opened from `path` as the configuration
    /// names it.
    pub(super) fn start(
        conn: Connection,
        synchronous: Synchronous,
        path: &std::path::Path,
        corruption: Corruption,
        retries: Arc<Mutex<RetryTimes>>,
        observer: Arc<OnceLock<CommitObserver>>,
    ) -> Result<Writer, StoreError> {
        tune(&conn, synchronous)?;
        let (sender, receiver) = mpsc::channel();
        let opened = OpenedFile::of(path);
        let path = path.to_path_buf();
        let shared = Shared {
            path,
            corruption,
            retries,
            observer,
        };
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(conn, receiver, opened, &shared))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Writer {
            sender,
            thread: Arc::new(Mutex::new(Some(thread))),
            closed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    pub(super) fn send(&self, command: Command) -> Result<(), StoreError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        self.sender
            .send(command)
            .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))
    }

    /// Commits what is queued, then closes the writer's connection, which
    /// checkpoints the WAL and removes it when no reader has the store open.
    pub(super) async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            // Dropping our sender is not enough (clones live elsewhere), so a
            // command answered after everything queued marks the end of work.
            let (tx, rx) = oneshot::channel();
            let _ = self.sender.send(Command::Close { reply: tx });
            let _ = rx.await;
            // The thread ends right after answering; a panic in it has
            // already been reported by the panic hook.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// Sets the writer connection's durability and checkpoint size.
pub(super) fn tune(conn: &Connection, synchronous: Synchronous) -> Result<(), StoreError> {
    let level = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    // SQLite checkpoints every 1000 pages by default, which with 4 KiB pages
    // copies 4 MB at a time. Keeping that amount whatever the page size
    // keeps each checkpoint, during which the writer commits nothing, as
    // short: with 16 KiB pages and the default, the accept path's p99 rose
    // from about 5 ms to 8 ms.
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        (CHECKPOINT_BYTES / page_size.max(512)).max(1),
    )?;
    // A long read (a backup, a large listing) keeps checkpoints from
    // restarting the WAL, which then grows with every commit meanwhile;
    // without a limit it keeps that size on disk for good.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(())
}

/// The size the WAL is cut back to once a checkpoint has emptied it.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The file the store was opened from, as the file system names it. A
/// store file deleted or replaced while the relay runs would still take
/// commits, into a file no one will open again: those webhooks would be
/// answered 202 and lost at the next start. So the writer looks, before
/// each batch, whether the path still names the file it has open, and
/// refuses commits while it does not. The look is one `stat`, next to the
/// batch's flush of the disk; looking less often would let the batches of
/// the moments after a `mv` be answered 202 and lost.
struct OpenedFile {
    path: std::path::PathBuf,
    identity: (u64, u64),
}

impl OpenedFile {
    /// The file at `path` as the configuration names it, not as SQLite
    /// resolved it: a symbolic link removed or pointed elsewhere leaves the
    /// relay writing where the next start will not look. The file's
    /// identity follows the link to the file the connection has open.
    fn of(path: &std::path::Path) -> Option<OpenedFile> {
        Some(OpenedFile {
            identity: identity(path)?,
            path: path.to_path_buf(),
        })
    }

    /// Why commits are refused: the path no longer names the open file.
    fn refusal(&self) -> Option<String> {
        let replaced = identity(&self.path) != Some(self.identity);
        replaced.then(|| {
            format!(
                "the store file {} was moved, deleted or replaced while the relay ran; writes are refused until it is back at its path, beside its -wal",
                self.path.display()
            )
        })
    }
}

fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// How long commits must succeed, with none refused, before a run of
/// refusals is said to be over. A nearly full disk takes a small commit
/// now and then between refused ones; without the wait the log alternated
/// "refused" and "takes writes again" for as long as the disk stayed full.
const SETTLE: Duration = Duration::from_secs(5);

/// A run of refused commits, as the log tells it: the first refusal with
/// its cause, and its end once commits have succeeded for [`SETTLE`]. The
/// commits in between are counted by their callers
/// (`outcome="unavailable"`), not said.
#[derive(Debug, Default)]
struct CommitRun {
    /// Refused commits since the run began; 0 when there is no run.
    refused: u64,
    /// When commits began to succeed again, while the run settles.
    succeeding_since: Option<Instant>,
}

/// What a commit, or the passing of time, gives the log to say.
#[derive(Debug, PartialEq)]
enum CommitNews {
    Refused,
    TakesWritesAgain { refused_commits: u64 },
}

impl CommitRun {
    fn commit(&mut self, refused: bool, now: Instant) -> Option<CommitNews> {
        if refused {
            self.refused += 1;
            self.succeeding_since = None;
            return (self.refused == 1).then_some(CommitNews::Refused);
        }
        if self.refused > 0 {
            self.succeeding_since.get_or_insert(now);
        }
        self.settle(now)
    }

    /// When the run will have settled, if it is settling.
    fn settles_at(&self) -> Option<Instant> {
        self.succeeding_since.map(|since| since + SETTLE)
    }

    fn settle(&mut self, now: Instant) -> Option<CommitNews> {
        let settled = self.settles_at().is_some_and(|at| now >= at);
        settled.then(|| CommitNews::TakesWritesAgain {
            refused_commits: std::mem::take(self).refused,
        })
    }
}

fn say(news: Option<CommitNews>, commit: &Result<(), Refusal>) {
    match (news, commit) {
        // Damage is said once, where it is found (`Corruption::note`).
        (Some(CommitNews::Refused), Err(e)) if !e.corrupt => {
            tracing::error!(error = %e.message, "The store refused a commit; writes are refused until one succeeds");
        }
        (Some(CommitNews::TakesWritesAgain { refused_commits }), _) => {
            tracing::info!(
                failed_commits = refused_commits,
                "The store takes writes again"
            );
        }
        _ => {}
    }
}

/// What the writer thread keeps beside its connection. Apart from the
/// path, each is shared with the store's handles.
struct Shared {
    /// The store file, as the configuration names it.
    path: std::path::PathBuf,
    corruption: Corruption,
    retries: Arc<Mutex<RetryTimes>>,
    /// Told of every batch the writer commits, once one is set.
    observer: Arc<OnceLock<CommitObserver>>,
}

fn run(
    mut conn: Connection,
    receiver: mpsc::Receiver<Command>,
    opened: Option<OpenedFile>,
    shared: &Shared,
) {
    let Shared {
        path,
        corruption,
        retries,
        observer,
    } = shared;
    let mut run = CommitRun::default();
    loop {
        // A run settling is said to be over when its time comes, even if
        // no commit comes then.
        let first = match run.settles_at() {
            Some(at) => match receiver.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    say(run.settle(Instant::now()), &Ok(()));
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match receiver.recv() {
                Ok(first) => first,
                Err(_) => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let closing = batch.iter().any(|c| matches!(c, Command::Close { .. }));
        if batch.iter().all(|c| matches!(c, Command::Close { .. })) {
            // Nothing to commit: an empty transaction would still wait for
            // the write lock, which an inspection command that only read
            // has no need of while another process holds it.
            for command in batch {
                command.answer(Ok(Outcome::Unit), &Ok(()));
            }
            break;
        }
        let refusal = corruption
            .refusal()
            .map(|damaged| Refusal {
                message: damaged.to_owned(),
                corrupt: true,
            })
            .or_else(|| {
                opened
                    .as_ref()
                    .and_then(OpenedFile::refusal)
                    .map(Refusal::from)
            });
        let (outcomes, commit) = match refusal {
            Some(refusal) => refused(&batch, refusal),
            None => {
                let started = Instant::now();
                let result = commit_batch(&mut conn, &batch, retries);
                if let Some(observe) = observer.get() {
                    observe(&CommitReport {
                        commands: batch.len(),
                        duration: started.elapsed(),
                    });
                }
                result
            }
        };
        if commit.is_err() || outcomes.iter().any(Result::is_err) {
            // What the retry times noted may have been rolled back.
            lock(retries).read_again();
        }
        note_corruption(&outcomes, &commit, path, corruption);
        say(run.commit(commit.is_err(), Instant::now()), &commit);
        for (command, outcome) in batch.into_iter().zip(outcomes) {
            command.answer(outcome, &commit);
        }
        if closing {
            break;
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "Could not close the store cleanly; its WAL stays until the next start");
    }
}

/// Notes damage to the store file that a batch ran into, in the commit or
/// in one command's statements.
fn note_corruption(
    outcomes: &[Result<Outcome, StoreError>],
    commit: &Result<(), Refusal>,
    path: &std::path::Path,
    corruption: &Corruption,
) {
    if corruption.refusal().is_some() {
        return;
    }
    let damage = match commit {
        Err(refusal) if refusal.corrupt => Some(refusal.message.clone()),
        _ => outcomes
            .iter()
            .find_map(|outcome| outcome.as_ref().err().and_then(StoreError::damage)),
    };
    if let Some(cause) = damage {
        corruption.note(path, &cause);
    }
}

/// Every command of `batch` refused, and nothing committed.
fn refused(
    batch: &[Command],
    refusal: impl Into<Refusal>,
) -> (Vec<Result<Outcome, StoreError>>, Result<(), Refusal>) {
    let refusal = refusal.into();
    let outcomes = batch
        .iter()
        .map(|_| Err(StoreError::Unavailable(refusal.message.clone())))
        .collect();
    (outcomes, Err(refusal))
}

/// Runs a batch in one transaction and commits it.
///
/// The batch first runs without savepoints, because nearly every batch
/// succeeds whole and a savepoint per command costs a statement pair and a
/// sub-journal page copy for every page it touches. Only when a command
/// fails is the transaction rolled back and the batch run again, each
/// command inside its own savepoint, so that the failed one is undone alone
/// and the others still commit.
fn commit_batch(
    conn: &mut Connection,
    batch: &[Command],
    retries: &Mutex<RetryTimes>,
) -> (Vec<Result<Outcome, StoreError>>, Result<(), Refusal>) {
    match begin(conn) {
        Ok(tx) => {
            let mut outcomes = Vec::with_capacity(batch.len());
            for command in batch {
                match execute(&tx, command, retries) {
                    Ok(outcome) => outcomes.push(Ok(outcome)),
                    // The batch is run again with savepoints anyway; going
                    // on here could run the rest outside any transaction
                    // if SQLite has already rolled this one back.
                    Err(_) => break,
                }
            }
            if outcomes.len() == batch.len() {
                return (outcomes, tx.commit().map_err(Refusal::from));
            }
            // Dropping the transaction rolls the whole batch back.
        }
        Err(e) => return refused(batch, e),
    }
    let tx = match begin(conn) {
        Ok(tx) => tx,
        Err(e) => return refused(batch, e),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for command in batch {
        match scoped(&tx, command, retries) {
            Ok(outcome) => outcomes.push(outcome),
            // The transaction cannot go on: SQLite rolled it back by itself
            // (a full disk, an I/O error), or a failed command's changes
            // could not be undone. Nothing of the batch is committed, and
            // every caller is told so; running on would commit statements
            // on their own, or a failed command's half.
            Err(BatchBroken(e)) => return refused(batch, e),
        }
    }
    let commit = tx.commit().map_err(Refusal::from);
    (outcomes, commit)
}

/// A failure that ends the whole batch, not just its command.
struct BatchBroken(StoreError);

/// Opens the batch's transaction. IMMEDIATE takes the write lock at BEGIN,
/// where SQLite's busy timeout waits for another process (an inspection
/// command) to finish; a deferred transaction that reads first and writes
/// later fails at once with "database is locked" instead.
fn begin(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Runs one command inside a savepoint, so that its failure undoes its own
/// changes and nothing else. The outer error means the batch cannot go on.
fn scoped(
    conn: &Connection,
    command: &Command,
    retries: &Mutex<RetryTimes>,
) -> Result<Result<Outcome, StoreError>, BatchBroken> {
    let broken = |e: rusqlite::Error| BatchBroken(e.into());
    // Cached statements rather than rusqlite's `Savepoint`, which parses its
    // SQL again for every use.
    conn.prepare_cached("SAVEPOINT command")
        .and_then(|mut s| s.execute([]))
        .map_err(broken)?;
    match execute(conn, command, retries) {
        Ok(v) => {
            conn.prepare_cached("RELEASE command")
                .and_then(|mut s| s.execute([]))
                .map_err(broken)?;
            Ok(Ok(v))
        }
        // SQLite rolled the whole transaction back already (a full disk):
        // there is no savepoint to return to, and the cause is this error,
        // not "no such savepoint".
        Err(e) if conn.is_autocommit() => Err(BatchBroken(e)),
        // A damaged file leaves the transaction open, but nothing written
        // to it may be answered 202 (decision 46): the whole batch is
        // refused, not only the command that met the damage.
        Err(e) if e.damage().is_some() => Err(BatchBroken(e)),
        Err(e) => {
            let undone = conn
                .prepare_cached("ROLLBACK TO command")
                .and_then(|mut s| s.execute([]))
                .and_then(|_| conn.prepare_cached("RELEASE command"))
                .and_then(|mut s| s.execute([]));
            match undone {
                Ok(_) => Ok(Err(e)),
                Err(_) => Err(BatchBroken(e)),
            }
        }
    }
}

/// The retry times, whose lock a panicking holder leaves usable: they are a
/// hint, read again from the store within a second.
fn lock(retries: &Mutex<RetryTimes>) -> std::sync::MutexGuard<'_, RetryTimes> {
    retries
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs one command's statements.
fn execute(
    c: &Connection,
    command: &Command,
    retries: &Mutex<RetryTimes>,
) -> Result<Outcome, StoreError> {
    Ok(match command {
        Command::Accept { delivery, .. } => Outcome::Accepted(schema::accept(c, delivery)?),
        Command::Lease {
            now_ms,
            limit,
            lease_ms,
            after_route,
            ..
        } => Outcome::Jobs(schema::lease(
            c,
            *now_ms,
            *limit,
            *lease_ms,
            after_route.as_deref(),
            &mut lock(retries),
        )?),
        Command::Record { attempt, .. } => {
            if let Some((route, at_ms)) = schema::record(c, attempt)? {
                lock(retries).scheduled(&route, at_ms);
            }
            Outcome::Unit
        }
        // Leases given back and failed jobs queued again can make retries
        // due at once.
        Command::Release { job_ids, .. } => {
            schema::release(c, job_ids)?;
            lock(retries).read_again();
            Outcome::Unit
        }
        Command::Rerender {
            delivery_id,
            rendering,
            now_ms,
            ..
        } => {
            let rerendered = schema::rerender(c, delivery_id, rendering, *now_ms)?;
            lock(retries).read_again();
            Outcome::Rerendered(rerendered)
        }
        Command::Prune {
            cutoff_ms, limit, ..
        } => Outcome::Count(schema::prune(c, *cutoff_ms, *limit)?),
        Command::ReleaseAll { now_ms, .. } => {
            let released = schema::release_all(c, *now_ms)?;
            lock(retries).read_again();
            Outcome::Released(released)
        }
        Command::BringForward {
            from_ms, now_ms, ..
        } => {
            let brought = schema::bring_forward(c, *from_ms, *now_ms)?;
            lock(retries).read_again();
            Outcome::Count(brought)
        }
        Command::Close { .. } => Outcome::Unit,
        Command::CheckWritable { .. } => {
            schema::check_writable(c, crate::clock::now_ms())?;
            Outcome::Unit
        }
        Command::SavePause {
            until_ms,
            latest_ms,
            ..
        } => {
            schema::save_pause(c, *until_ms, *latest_ms)?;
            Outcome::Unit
        }
        Command::SaveUnstatedRun {
            in_a_row, until_ms, ..
        } => {
            schema::save_unstated_run(c, *in_a_row, *until_ms)?;
            Outcome::Unit
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_refused_commits_is_said_once_and_over_once_it_settles() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut run = CommitRun::default();
        // (refused, seconds, what the log says)
        let steps = [
            (false, 0, None),
            (true, 1, Some(CommitNews::Refused)),
            (true, 2, None),
            // A small commit gets through on a nearly full disk, and the
            // next is refused: one run, nothing said.
            (false, 3, None),
            (true, 4, None),
            (false, 5, None),
            (false, 9, None),
            (
                false,
                10,
                Some(CommitNews::TakesWritesAgain { refused_commits: 3 }),
            ),
            (false, 11, None),
            (true, 12, Some(CommitNews::Refused)),
        ];
        for (refused, secs, news) in steps {
            assert_eq!(run.commit(refused, at(secs)), news, "at {secs} s");
        }
        // With no commit to tell it, the run settles when its time comes.
        assert_eq!(run.commit(false, at(13)), None);
        assert_eq!(run.settles_at(), Some(at(18)));
        assert_eq!(run.settle(at(17)), None);
        assert_eq!(
            run.settle(at(18)),
            Some(CommitNews::TakesWritesAgain { refused_commits: 1 })
        );
        assert_eq!(run.settles_at(), None);
    }

    fn accept(id: &str) -> (Command, oneshot::Receiver<Result<Accepted, StoreError>>) {
        let (reply, answer) = oneshot::channel();
        let delivery = crate::store::tests::delivery(id, None, 1);
        (
            Command::Accept {
                delivery: Box::new(delivery),
                reply,
            },
            answer,
        )
    }

    #[test]
    fn a_batch_with_a_failing_command_is_replayed_so_the_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("store.db")).unwrap();
        schema::migrate(&conn, crate::store::Opener::Serve).unwrap();
        // One batch: the second command clashes with the first on the
        // primary key, which fails the first pass and forces the replay.
        let (commands, answers): (Vec<_>, Vec<_>) =
            ["d1", "d1", "d2"].into_iter().map(accept).unzip();
        let (outcomes, commit) = commit_batch(&mut conn, &commands, &Mutex::default());
        assert_eq!(commit, Ok(()));
        for (command, outcome) in commands.into_iter().zip(outcomes) {
            command.answer(outcome, &commit);
        }
        let results: Vec<_> = answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap().is_ok())
            .collect();
        assert_eq!(results, [true, false, true]);
        let stored: Vec<String> = conn
            .prepare("SELECT delivery_id FROM jobs ORDER BY delivery_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored, ["d1", "d2"], "the failed command left nothing");
    }

    #[test]
    fn a_batch_whose_transaction_sqlite_rolls_back_commits_nothing_and_answers_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("store.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        schema::migrate(&conn, crate::store::Opener::Serve).unwrap();
        // A full disk: the file may not grow by a page. A request too large
        // for what is left makes SQLite roll the whole transaction back.
        let pages: i64 = conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages + 2)
            .unwrap();
        let (small, _a) = accept("small");
        let (big, _b) = accept("big");
        let Command::Accept { delivery, .. } = &big else {
            unreachable!()
        };
        let mut huge = (**delivery).clone();
        huge.request = crate::store::EncodedRequest::from(&crate::store::StoredRequest {
            content_type: None,
            query: vec![],
            headers: vec![],
            body: "x".repeat(1 << 20),
            body_base64: false,
        });
        let (reply, _c) = oneshot::channel();
        let big = Command::Accept {
            delivery: Box::new(huge),
            reply,
        };
        let (after, _d) = accept("after");
        let commands = [small, big, after];
        let (outcomes, commit) = commit_batch(&mut conn, &commands, &Mutex::default());
        assert!(commit.is_err(), "{commit:?}");
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes.iter().all(Result::is_err));
        assert!(
            commit.as_ref().unwrap_err().message.contains("full"),
            "the cause is reported, not the lost savepoint: {commit:?}"
        );
        let stored: i64 = conn
            .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0, "nothing is half stored");
    }

    #[tokio::test]
    async fn a_batch_in_which_one_command_meets_damage_commits_nothing() {
        let (_dir, path) = crate::store::tests::damaged_store().await;
        let mut conn = Connection::open(&path).unwrap();
        // A repeat of a key whose delivery lies on an overwritten page:
        // answering it reads that page. The webhooks around it would
        // commit, but nothing written to a damaged file may be answered
        // 202 (decision 46).
        let (before, _a) = accept("before");
        let (reply, _b) = oneshot::channel();
        let repeat = Command::Accept {
            delivery: Box::new(crate::store::tests::delivery("again", Some("k150"), 1)),
            reply,
        };
        let (after, _c) = accept("after");
        let commands = [before, repeat, after];
        let (outcomes, commit) = commit_batch(&mut conn, &commands, &Mutex::default());
        let refusal = commit.unwrap_err();
        assert!(refusal.corrupt, "{refusal:?}");
        assert!(outcomes.iter().all(Result::is_err));
        let stored: i64 = conn
            .query_row(
                "SELECT count(*) FROM deliveries WHERE id IN ('before', 'after')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, 0);
    }

    #[test]
    fn a_batch_that_succeeds_commits_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("store.db")).unwrap();
        schema::migrate(&conn, crate::store::Opener::Serve).unwrap();
        let (commands, _answers): (Vec<_>, Vec<_>) = ["a", "b"].into_iter().map(accept).unzip();
        let (outcomes, commit) = commit_batch(&mut conn, &commands, &Mutex::default());
        assert_eq!(commit, Ok(()));
        assert!(outcomes.iter().all(Result::is_ok));
        let count: i64 = conn
            .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2);
    }
}
