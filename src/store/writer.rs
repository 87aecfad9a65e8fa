//! The single writer thread and its group commit.
//!
//! Callers send commands over a channel; the thread takes the first command,
//! then every command already waiting (up to a bound), runs each inside its
//! own savepoint of one transaction, commits once, and only then answers each
//! caller. A command that fails rolls back to its savepoint alone, so one bad
//! request never costs the others in its batch their commit.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::{Accepted, AttemptRecord, Job, NewDelivery, NewJob, StoreError, schema};

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
    RequeueFailed {
        delivery_id: String,
        now_ms: i64,
        reply: Reply<bool>,
    },
    Rerender {
        delivery_id: String,
        jobs: Vec<NewJob>,
        failure: Option<String>,
        now_ms: i64,
        reply: Reply<bool>,
    },
    Prune {
        cutoff_ms: i64,
        limit: usize,
        reply: Reply<usize>,
    },
    ReleaseAll {
        reply: Reply<()>,
    },
    Ping {
        reply: Reply<()>,
    },
}

/// A command's effect, waiting for the batch's commit before it is sent to
/// the caller.
enum Pending {
    Accept(Reply<Accepted>, Result<Accepted, StoreError>),
    Lease(Reply<Vec<Job>>, Result<Vec<Job>, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Bool(Reply<bool>, Result<bool, StoreError>),
    Count(Reply<usize>, Result<usize, StoreError>),
}

impl Pending {
    fn answer(self, commit: &Result<(), String>) {
        fn send<T>(reply: Reply<T>, result: Result<T, StoreError>, commit: &Result<(), String>) {
            let result = match commit {
                Ok(()) => result,
                Err(e) => Err(StoreError::Unavailable(e.clone())),
            };
            // The caller may have gone away (a client hung up); its data is
            // committed all the same, which is what at-least-once needs.
            let _ = reply.send(result);
        }
        match self {
            Pending::Accept(r, v) => send(r, v, commit),
            Pending::Lease(r, v) => send(r, v, commit),
            Pending::Unit(r, v) => send(r, v, commit),
            Pending::Bool(r, v) => send(r, v, commit),
            Pending::Count(r, v) => send(r, v, commit),
        }
    }
}

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
    pub(super) fn start(conn: Connection, synchronous: Synchronous) -> Result<Writer, StoreError> {
        let level = match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", level)?;
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(conn, receiver))
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

    pub(super) async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            // Dropping our sender is not enough (clones live elsewhere), so a
            // Ping answered after everything queued marks the end of work.
            let (tx, rx) = oneshot::channel();
            let _ = self.sender.send(Command::Ping { reply: tx });
            let _ = rx.await;
            drop(handle);
        }
    }
}

fn run(mut conn: Connection, receiver: mpsc::Receiver<Command>) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut pending = Vec::with_capacity(batch.len());
        // IMMEDIATE takes the write lock at BEGIN, where SQLite's busy
        // timeout waits for another process (an inspection command) to
        // finish; a deferred transaction that reads first and writes later
        // fails at once with "database is locked" instead.
        let commit = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(mut tx) => {
                for command in batch {
                    pending.push(execute(&mut tx, command));
                }
                tx.commit().map_err(|e| e.to_string())
            }
            Err(e) => {
                let message = e.to_string();
                for command in batch {
                    fail(command, &message);
                }
                continue;
            }
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, "Store commit failed");
        }
        for p in pending {
            p.answer(&commit);
        }
    }
}

fn fail(command: Command, message: &str) {
    let err = || StoreError::Unavailable(message.to_string());
    match command {
        Command::Accept { reply, .. } => drop(reply.send(Err(err()))),
        Command::Lease { reply, .. } => drop(reply.send(Err(err()))),
        Command::Record { reply, .. }
        | Command::Release { reply, .. }
        | Command::ReleaseAll { reply }
        | Command::Ping { reply } => drop(reply.send(Err(err()))),
        Command::RequeueFailed { reply, .. } | Command::Rerender { reply, .. } => {
            drop(reply.send(Err(err())))
        }
        Command::Prune { reply, .. } => drop(reply.send(Err(err()))),
    }
}

/// Runs one command inside a savepoint of the batch's transaction.
fn execute(tx: &mut Transaction<'_>, command: Command) -> Pending {
    fn scoped<T>(
        tx: &mut Transaction<'_>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Cached statements rather than rusqlite's `Savepoint`, which parses
        // its SQL again for every command of every batch.
        let conn: &Connection = tx;
        conn.prepare_cached("SAVEPOINT command")?.execute([])?;
        match f(conn) {
            Ok(v) => {
                conn.prepare_cached("RELEASE command")?.execute([])?;
                Ok(v)
            }
            Err(e) => {
                conn.prepare_cached("ROLLBACK TO command")?.execute([])?;
                conn.prepare_cached("RELEASE command")?.execute([])?;
                Err(e)
            }
        }
    }
    match command {
        Command::Accept { delivery, reply } => {
            let r = scoped(tx, |c| schema::accept(c, &delivery));
            Pending::Accept(reply, r)
        }
        Command::Lease {
            now_ms,
            limit,
            lease_ms,
            reply,
        } => Pending::Lease(
            reply,
            scoped(tx, |c| schema::lease(c, now_ms, limit, lease_ms)),
        ),
        Command::Record { attempt, reply } => {
            Pending::Unit(reply, scoped(tx, |c| schema::record(c, &attempt)))
        }
        Command::Release { job_ids, reply } => {
            Pending::Unit(reply, scoped(tx, |c| schema::release(c, &job_ids)))
        }
        Command::RequeueFailed {
            delivery_id,
            now_ms,
            reply,
        } => Pending::Bool(
            reply,
            scoped(tx, |c| schema::requeue_failed(c, &delivery_id, now_ms)),
        ),
        Command::Rerender {
            delivery_id,
            jobs,
            failure,
            now_ms,
            reply,
        } => Pending::Bool(
            reply,
            scoped(tx, |c| {
                schema::rerender(c, &delivery_id, &jobs, failure.as_deref(), now_ms)
            }),
        ),
        Command::Prune {
            cutoff_ms,
            limit,
            reply,
        } => Pending::Count(reply, scoped(tx, |c| schema::prune(c, cutoff_ms, limit))),
        Command::ReleaseAll { reply } => Pending::Unit(
            reply,
            scoped(tx, |c| {
                c.execute(
                    "UPDATE jobs SET leased_until = NULL WHERE leased_until IS NOT NULL",
                    [],
                )?;
                Ok(())
            }),
        ),
        Command::Ping { reply } => {
            Pending::Unit(reply, scoped(tx, |c| Ok(c.execute_batch("SELECT 1")?)))
        }
    }
}
