//! The durable store: deliveries (one per accepted webhook), their jobs (one
//! per GitHub target) and every attempt to send a job. Leasing takes turns
//! between the routes that have jobs due, carrying on from the route it
//! served last.
//!
//! This is the only module that knows SQLite. All writes go through one
//! writer thread that owns the write connection and commits every command
//! waiting in its queue in a single transaction ("group commit"): a burst of
//! webhooks costs one disk flush per batch instead of one per request, and
//! each caller still learns only after the flush that its data is on disk.
//! Reads use a separate connection, so listing deliveries never waits behind
//! the writer.

mod retry_times;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use schema::FailedCursor;
pub use writer::Synchronous;
use writer::{Command, Writer};

/// One group commit, as the writer reports it to its observer: every
/// transaction it runs, whether or not the disk took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReport {
    /// The commands the transaction held: accepted webhooks, and the
    /// dispatcher's leases and records.
    pub commands: usize,
    /// From opening the transaction to the end of its commit, the disk's
    /// flush included: how long every caller in the batch waited on the
    /// store once the writer took its command.
    pub duration: Duration,
}

/// Told of each commit on the writer thread, so it must be quick.
pub type CommitObserver = Box<dyn Fn(&CommitReport) + Send + Sync>;

/// Errors the store reports to its callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// SQLite's error, quoted in the message rather than given as the
    /// source: a chain printed whole would otherwise say it twice.
    #[error("database error: {0}{hint}", hint = likely_cause(.0))]
    Database(rusqlite::Error),
    #[error(transparent)]
    BadUrl(#[from] crate::config::BadStoreUrl),
    /// The file is not a store this relay can use: another program's
    /// database, or a store of a newer relay.
    #[error("{0}")]
    NotAStore(String),
}

/// What an operator can do about SQLite's terser errors, whose own words
/// ("disk I/O error", "attempt to write a readonly database") do not name
/// the usual cause.
fn likely_cause(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::SystemIoFailure) => {
            " (a full disk, a file-size limit such as LimitFSIZE, or a failing device)"
        }
        Some(rusqlite::ErrorCode::ReadOnly) => {
            " (the relay must be able to write the store and its directory, where SQLite keeps the -wal and -shm files)"
        }
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            " (the store file is damaged: see \"A corrupt store\" in docs/operations.md)"
        }
        _ => "",
    }
}

/// Whether SQLite found the store file damaged.
fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

impl StoreError {
    /// SQLite's own words, when the error says the store file is damaged.
    fn damage(&self) -> Option<String> {
        match self {
            StoreError::Database(e) if is_corruption(e) => Some(e.to_string()),
            _ => None,
        }
    }
}

/// Whether the store file was found damaged, and why; shared by the writer
/// thread and the readers.
///
/// A damaged file cannot be trusted with anything more: a webhook answered
/// `202` may land on a damaged page, and a dispatch whose answer cannot be
/// recorded is sent again at every start. So once any statement finds
/// damage, or the check at start does, the writer refuses every command
/// (webhooks get `503`, `/readyz` fails, the worker leases nothing) until
/// the relay is restarted on a sound file.
#[derive(Clone, Default)]
pub(crate) struct Corruption(Arc<std::sync::OnceLock<String>>);

impl Corruption {
    /// Why writes are refused, once the file was found damaged.
    pub(crate) fn refusal(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    /// Notes that `path` was found damaged, as `cause` says. The first note
    /// is logged; the rest add nothing.
    pub(crate) fn note(&self, path: &Path, cause: &str) {
        let refusal = format!(
            "the store file {} is damaged ({cause}); writes are refused and nothing is sent until the relay is restarted on a sound file (see \"A corrupt store\" in docs/operations.md)",
            path.display()
        );
        if self.0.set(refusal).is_ok() {
            tracing::error!(
                store = %path.display(),
                error = cause,
                "The store file is damaged: every write is refused and nothing is sent until the relay is restarted on a restored or recovered file"
            );
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e)
    }
}

/// A delivery id as the store keeps it: a UUID, lower-cased, whatever case
/// it was given in. `None` for anything that is not a UUID.
pub fn delivery_id(text: &str) -> Option<String> {
    uuid::Uuid::try_parse(text).ok().map(|id| id.to_string())
}

/// The inbound request as stored, so that a failed delivery can be rendered
/// again later with the routes of that moment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredRequest {
    pub content_type: Option<String>,
    pub query: Vec<(String, String)>,
    /// Lower-cased header names. Credential headers are removed before
    /// storing, because the store must never hold secrets.
    pub headers: Vec<(String, String)>,
    /// The raw body as UTF-8 where it is valid, so that the stored row stays
    /// readable with the sqlite3 shell; other bodies are kept base64-encoded.
    pub body: String,
    pub body_base64: bool,
}

/// A [`StoredRequest`] already encoded as the JSON the store keeps.
///
/// The accept path encodes the request on the HTTP worker that received
/// it, straight from borrowed parts, so that neither an owned copy of every
/// header nor the encoding itself falls to the single writer thread.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedRequest(String);

impl EncodedRequest {
    /// Encodes a request as stored. `capacity` is a guess of the encoded
    /// length, so that the text is not copied as it grows.
    pub fn encode(request: &impl Serialize, capacity: usize) -> EncodedRequest {
        let mut text = Vec::with_capacity(capacity);
        // Serializing strings, numbers and lists into memory cannot fail.
        let _ = serde_json::to_writer(&mut text, request);
        EncodedRequest(String::from_utf8(text).unwrap_or_default())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&StoredRequest> for EncodedRequest {
    fn from(request: &StoredRequest) -> EncodedRequest {
        EncodedRequest::encode(request, request.body.len() + 256)
    }
}

/// One GitHub request to make, as rendered at accept time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub target_index: usize,
    pub repo: String,
    pub label: String,
    pub path: String,
    pub body: String,
}

impl NewJob {
    /// The job with `delivery_id` wherever its rendering printed
    /// `rendered_as`, the id its templates saw in `delivery.id`. A webhook
    /// merged into a debounce window was rendered before anyone knew it
    /// would join it; the window's id takes the place of its own, which no
    /// delivery carries. Ids are new UUIDs, so one appears in a payload or
    /// an event type only where a template printed it.
    pub fn with_delivery_id(&self, rendered_as: &str, delivery_id: &str) -> NewJob {
        NewJob {
            label: self.label.replace(rendered_as, delivery_id),
            body: self.body.replace(rendered_as, delivery_id),
            ..self.clone()
        }
    }
}

/// What the accept path commits for one webhook.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub route: String,
    pub received_at_ms: i64,
    /// Looked up first: a delivery that holds it already makes this one a
    /// duplicate. It is kept with the delivery only when `failure` is not
    /// set: a webhook that failed to render sent nothing, so the sender's
    /// repeat of it after routes.yaml is fixed must be sent, not called its
    /// duplicate. Such a delivery takes its key when it is rendered again
    /// (decision 31).
    pub dedupe_key: Option<String>,
    pub request: EncodedRequest,
    /// Empty when `failure` is set.
    pub jobs: Vec<NewJob>,
    /// Set when rendering failed: the delivery is stored as failed, with no
    /// jobs, so that `redeliver` can recover it after the routes are fixed.
    pub failure: Option<String>,
    /// Set for a debounced route: the webhook may be merged into the route's
    /// open window instead of becoming a delivery of its own.
    pub debounce: Option<DebounceWindow>,
}

/// A route's debounce settings, in store time units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebounceWindow {
    pub window_ms: i64,
    pub max_wait_ms: i64,
}

/// The answer to [`Store::accept`].
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    Stored,
    /// A delivery with the same route and dedupe key already exists.
    Duplicate {
        original_id: String,
    },
    /// Merged into the open debounce window of delivery `into`, which now
    /// carries this webhook's payload.
    Coalesced {
        into: String,
        coalesced: u32,
    },
}

/// A job leased to a worker.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub delivery_id: String,
    pub route: String,
    pub target_index: usize,
    pub repo: String,
    pub label: String,
    pub path: String,
    pub body: String,
    /// Every send so far, including those answered with a rate limit.
    pub attempts: u32,
    /// Sends that failed for reasons other than rate limiting; these count
    /// against `retry.max_attempts`.
    pub failures: u32,
    /// When the job was queued: with its webhook, or when its delivery was
    /// redelivered. `retry.give_up_after` counts from here.
    pub created_at_ms: i64,
    pub received_at_ms: i64,
    /// When the job was last sent, or queued if that is later (it was never
    /// sent, or redelivered since): the worker asks whether GitHub answered
    /// anything after it.
    pub since_ms: i64,
}

/// What giving back the leases of a previous run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Released {
    /// Pending jobs that were leased: in flight, or about to be, when the
    /// previous process stopped without recording their answer.
    pub interrupted: usize,
    /// Pending jobs removed because their delivery is missing, as in a
    /// store rebuilt from a damaged file.
    pub orphans: usize,
}

/// The recorded answer of an attempt the relay stopped in the middle of.
pub const INTERRUPTED: &str = "no answer recorded: the relay stopped while this dispatch was in flight, so GitHub may have received it; it is sent again";

/// The result of one attempt, recorded with the job's next state.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub job_id: i64,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    /// GitHub's status code, or `None` for a transport error.
    pub status_code: Option<u16>,
    /// A short account of GitHub's answer or the transport error.
    pub detail: String,
    pub next: JobNext,
    /// What GitHub returned worth keeping on a delivered job, as JSON: the
    /// `workflow_run_id` and `html_url` of a workflow dispatch.
    pub result: Option<String>,
    /// Whether the attempt found GitHub refusing its credential, or
    /// accepting one it refused; `None` when neither changed.
    pub credential: Option<CredentialChange>,
}

/// A change in whether GitHub refuses a credential, named by its label
/// (`token`, `app:<installation id>`; never the secret). The listings show
/// the credentials refused, since the dispatches that wait for one have
/// no attempt of their own to say so.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialChange {
    Refused(String),
    Accepted(String),
}

/// What holds dispatches back, as both listings show it: GitHub's
/// rate-limit pause and the credentials GitHub refuses. A dispatch held so
/// that was never tried has no attempt of its own to say why it waits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueHolds {
    /// When the rate-limit pause ends (Unix milliseconds), while it lasts.
    pub paused_until_ms: Option<i64>,
    pub refused_credentials: Vec<RefusedCredential>,
}

/// A credential GitHub refuses, as the listings show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefusedCredential {
    pub credential: String,
    /// When the first attempt GitHub refused it ended, Unix milliseconds.
    pub since_ms: i64,
}

/// What happens to a job after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum JobNext {
    Delivered,
    Retry {
        at_ms: i64,
        /// The end of a wait GitHub stated, before which the job is not
        /// sent even when the retries of an outage are brought forward.
        not_before_ms: Option<i64>,
        counts_as_failure: bool,
    },
    Failed {
        reason: String,
    },
}

/// Job and delivery states as stored and shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Delivered,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "pending" => Some(Status::Pending),
            "delivered" => Some(Status::Delivered),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// A delivery as listed by `deliveries` and the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct DeliverySummary {
    pub id: String,
    pub route: String,
    pub status: Status,
    pub received_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub error: Option<String>,
    /// Later webhooks merged into this delivery by debounce.
    pub coalesced: u32,
    pub targets: Vec<JobSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub target_index: usize,
    pub repo: String,
    pub label: String,
    pub status: Status,
    pub attempts: u32,
    /// The attempts that count against `retry.max_attempts`: not those
    /// answered with a rate limit, nor those made while GitHub was down.
    pub counted_attempts: u32,
    pub last_error: Option<String>,
    /// The run a workflow dispatch created, when GitHub said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptSummary {
    pub target_index: usize,
    /// Where the attempt was sent, which a redelivery after a fix may have
    /// changed for the target since.
    pub repo: String,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub detail: String,
}

/// One delivery with everything the store knows of it: what came in,
/// what was sent for each target, and every attempt.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    pub delivery: DeliverySummary,
    pub attempts: Vec<AttemptSummary>,
    /// The webhook as stored (credential headers were never kept), which
    /// a redelivery renders again.
    pub request: Option<StoredRequest>,
    /// Each target's request to GitHub, as last rendered.
    pub sent: Vec<SentRequest>,
}

/// A job's request to GitHub: always a `POST` of a JSON body.
#[derive(Debug, Clone, Serialize)]
pub struct SentRequest {
    pub target_index: usize,
    pub repo: String,
    pub method: &'static str,
    pub path: String,
    pub body: serde_json::Value,
}

/// Filters for listing deliveries.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub route: Option<String>,
    pub since_ms: Option<i64>,
    /// The most deliveries listed; 0 lists 50.
    pub limit: usize,
    /// Deliveries to skip (newest first), for paging.
    pub offset: usize,
    /// Only deliveries after this one in the listing's order (newest
    /// first), given as its (received_at_ms, id): paging that neither skips
    /// nor repeats when deliveries arrive or change status meanwhile.
    pub before: Option<(i64, String)>,
}

/// Counts of jobs by state, for the `queue_depth` gauge. `failed` also
/// counts each delivery that failed to render, which has no jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub pending: u64,
    pub retrying: u64,
    pub failed: u64,
}

/// A delivery to be sent again, as found by [`Store::failed_deliveries`].
#[derive(Debug, Clone)]
pub struct FailedDelivery {
    pub id: String,
    pub route: String,
    pub received_at_ms: i64,
    /// The request as received, or why it cannot be read back (the row
    /// was changed by another program, or damaged).
    pub request: Result<StoredRequest, String>,
    /// Its jobs, one per target of the route when it was received; empty
    /// when it failed at render time.
    pub targets: Vec<StoredTarget>,
    /// The delivery id and receive time its jobs were rendered with, when
    /// not its own: debounce merged a later webhook into it, rendered as
    /// itself.
    pub rendered_as: Option<(String, i64)>,
}

impl FailedDelivery {
    /// Whether it failed at render time, and so has no jobs.
    pub fn failed_to_render(&self) -> bool {
        self.targets.is_empty()
    }
}

/// One job of a failed delivery, as redelivery needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTarget {
    /// Its place in the route's `dispatch` list when the webhook came.
    pub index: usize,
    /// Its event type, or its workflow.
    pub label: String,
    /// The request path (which names the repository) and the JSON body it
    /// was sent with.
    pub path: String,
    pub body: String,
    /// Failed at GitHub; otherwise delivered, or still being sent.
    pub failed: bool,
}

/// A failed delivery rendered again with the routes in force now.
#[derive(Debug, Clone)]
pub enum Rerendering {
    /// The jobs to queue. After a failure at GitHub they replace the failed
    /// jobs of the same targets; after a render failure they are its first
    /// jobs, and its dedupe key is stored with them.
    Jobs {
        jobs: Vec<NewJob>,
        dedupe_key: Option<String>,
    },
    /// The failed jobs of these targets go again as they were first
    /// rendered (a delivery that failed at GitHub whose route's targets no
    /// longer line up with its jobs); its other failed jobs stay failed.
    AsRendered { targets: Vec<usize> },
    /// Why it cannot be sent; it stays failed with this reason.
    Failed(String),
}

/// What re-rendering did to a failed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rerendered {
    /// Its jobs are queued.
    Queued,
    /// It stays failed, with this reason (the rendering's, or why none of
    /// its jobs could be queued).
    StillFailed(String),
    /// Not sent: another delivery has the same dedupe key. It stays failed
    /// and says so.
    Duplicate { original_id: String },
    /// It is not failed (any more), or does not exist: nothing was done.
    NotFailed,
}

impl Rerendered {
    /// The reason a delivery not sent as a duplicate of `original_id`
    /// stays failed with.
    pub fn duplicate_reason(original_id: &str) -> String {
        format!("not sent: delivery {original_id} has the same dedupe key")
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: Writer,
    /// `None` once the store is closed.
    reader: Arc<Mutex<Option<Connection>>>,
    path: Arc<PathBuf>,
    /// The route of the last job leased: the next lease starts its turns
    /// with the route after it (see [`Store::lease_due`]).
    last_leased_route: Arc<Mutex<Option<String>>>,
    /// When each route's next retry may be due, kept by the writer; read
    /// here for the worker's idle wait.
    retries: Arc<Mutex<retry_times::RetryTimes>>,
    corruption: Corruption,
    /// Told of every commit once [`Store::observe_commits`] sets it.
    commit_observer: Arc<OnceLock<CommitObserver>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Turns `sqlite:PATH` (or a bare path) into a file path; relative paths are
/// taken relative to `base`, the directory of routes.yaml.
pub fn sqlite_path(url: &str, base: &Path) -> Result<PathBuf, StoreError> {
    let path = PathBuf::from(crate::config::sqlite_file(url)?);
    Ok(if path.is_absolute() {
        path
    } else {
        base.join(path)
    })
}

/// Who opens the store, which decides how much opening may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opener {
    /// `serve`, which owns the store: it puts it in WAL mode, builds new
    /// indexes, drops old ones and gives queued jobs their route.
    Serve,
    /// An inspection command (`deliveries`, `redeliver`), which may run
    /// beside the relay and read a backup copy: it adds what is missing
    /// from the schema but leaves the rest to `serve`, since building an
    /// index scans its table under the write lock the relay needs.
    Inspection,
}

impl Store {
    /// Opens (and creates or migrates) the SQLite store at `path`. Leases
    /// are left as they are: see [`Store::release_all_leases`].
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Store, StoreError> {
        Store::open_with(path, synchronous, Opener::Serve)
    }

    /// Opens the store for an inspection command (`deliveries`,
    /// `redeliver`), which may run beside the relay: it brings the schema
    /// up to date but leaves building new indexes to `serve`, since that
    /// scans a table under the write lock the relay needs.
    pub fn open_beside_relay(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, Synchronous::Full, Opener::Inspection)
    }

    fn open_with(
        path: &Path,
        synchronous: Synchronous,
        opener: Opener,
    ) -> Result<Store, StoreError> {
        let conn = open_connection(path, opener)?;
        let upgrade = schema::migrate(&conn, opener)?;
        if !upgrade.changes.is_empty() {
            // An upgrade changes the file an older relay wrote: the line
            // says what, for whoever must go back to that relay.
            tracing::info!(
                store = %path.display(),
                from_schema = upgrade.from_schema,
                changes = %upgrade.changes.join(", "),
                "Brought the store up to date"
            );
        }
        let corruption = Corruption::default();
        let retries = Arc::new(Mutex::new(retry_times::RetryTimes::default()));
        let commit_observer = Arc::new(OnceLock::new());
        let writer = Writer::start(
            conn,
            synchronous,
            path,
            corruption.clone(),
            retries.clone(),
            commit_observer.clone(),
        )?;
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store {
            writer,
            reader: Arc::new(Mutex::new(Some(reader))),
            path: Arc::new(path.to_path_buf()),
            last_leased_route: Arc::default(),
            retries,
            corruption,
            commit_observer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// From now on, tells `observer` of every batch the writer commits, for
    /// the metrics. Only the first observer set is kept.
    pub fn observe_commits(&self, observer: CommitObserver) {
        if self.commit_observer.set(observer).is_err() {
            tracing::debug!(
                "The store's commits are already observed; the new observer is ignored"
            );
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(make(tx))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))?
    }

    /// Commits a delivery and its jobs in one transaction, durably, before
    /// returning.
    pub async fn accept(&self, delivery: NewDelivery) -> Result<Accepted, StoreError> {
        self.call(|reply| Command::Accept {
            delivery: Box::new(delivery),
            reply,
        })
        .await
    }

    /// Leases up to `limit` due jobs for `lease_ms`, taking turns between
    /// the routes that have jobs due, so that a burst on one route does
    /// not hold back every other route's dispatches. Each route's jobs go
    /// in the order they fall due; the turns carry on from one lease to
    /// the next.
    pub async fn lease_due(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        // A poisoned lock only means the turns start again from the first
        // route.
        let after_route = self
            .last_leased_route
            .lock()
            .map(|last| last.clone())
            .unwrap_or_default();
        let jobs: Vec<Job> = self
            .call(|reply| Command::Lease {
                now_ms,
                limit,
                lease_ms,
                after_route,
                reply,
            })
            .await?;
        if let (Some(job), Ok(mut last)) = (jobs.last(), self.last_leased_route.lock()) {
            *last = Some(job.route.clone());
        }
        Ok(jobs)
    }

    /// Records an attempt and moves the job (and, when its last job finishes,
    /// the delivery) to its next state.
    pub async fn record(&self, attempt: AttemptRecord) -> Result<(), StoreError> {
        self.call(|reply| Command::Record {
            attempt: Box::new(attempt),
            reply,
        })
        .await
    }

    /// Gives back leases that will not be used: the worker's at shutdown, so
    /// that the next start sends those jobs at once instead of waiting for
    /// the lease to expire, and jobs it leased while they were already being
    /// sent, which stay with the send in progress.
    pub async fn release(&self, job_ids: Vec<i64>) -> Result<(), StoreError> {
        self.call(|reply| Command::Release { job_ids, reply }).await
    }

    /// Makes due at once the jobs that wait for a retry scheduled after an
    /// attempt that started at or after `from_ms`, each as if it had just
    /// been queued when it first was, so that they go before the jobs that
    /// came later; returns how many. Called when a GitHub outage ends: the
    /// retries it scheduled waited for GitHub, which answers again.
    pub async fn bring_retries_forward(
        &self,
        from_ms: i64,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        self.call(|reply| Command::BringForward {
            from_ms,
            now_ms,
            reply,
        })
        .await
    }

    /// Deletes finished deliveries that finished before `cutoff_ms`, in
    /// batches so that the writer is never held for long, and returns how
    /// many went.
    pub async fn prune_finished(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        const BATCH: usize = 1000;
        let mut total = 0;
        loop {
            let deleted = self
                .call(|reply| Command::Prune {
                    cutoff_ms,
                    limit: BATCH,
                    reply,
                })
                .await?;
            total += deleted;
            if deleted < BATCH {
                return Ok(total);
            }
        }
    }

    /// Gives back every lease. Only `serve` calls this, once at start: one
    /// process owns the queue, so a lease still set then belongs to a process
    /// that died mid-send, and its job must be sent again. The inspection
    /// commands never call it, so running them beside `serve` cannot make a
    /// job in flight look free. Each such job gets an attempt in its
    /// history, since GitHub may have received the dispatch the sending
    /// process never heard the answer to.
    pub async fn release_all_leases(&self, now_ms: i64) -> Result<Released, StoreError> {
        self.call(|reply| Command::ReleaseAll { now_ms, reply })
            .await
    }

    /// Checks that the store accepts writes (readiness): it commits a write
    /// of its own, so a full disk or a file that became read-only shows
    /// here, as it would for the next webhook.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.call(|reply| Command::CheckWritable { reply }).await
    }

    /// Looks over the whole store file for damage (SQLite's `quick_check`)
    /// on a connection of its own, and refuses writes from then on if it
    /// finds any. Damage otherwise shows only when a statement happens to
    /// read a damaged page: `/readyz`'s one-row write can go on passing
    /// while most webhooks fail. `serve` runs it once, beside its work, at
    /// start; its time grows with the file.
    pub async fn check_integrity(&self) -> Result<(), StoreError> {
        let (path, corruption) = (self.path.clone(), self.corruption.clone());
        tokio::task::spawn_blocking(move || {
            let verdict = Connection::open_with_flags(
                &*path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|conn| {
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                // The first problem is enough to know, and to name.
                conn.query_row("PRAGMA quick_check(1)", [], |row| row.get::<_, String>(0))
            });
            match verdict {
                Ok(verdict) if verdict == "ok" => Ok(()),
                Ok(problem) => {
                    corruption.note(&path, &problem);
                    Ok(())
                }
                Err(e) if is_corruption(&e) => {
                    corruption.note(&path, &e.to_string());
                    Ok(())
                }
                Err(e) => Err(StoreError::from(e)),
            }
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// Keeps when GitHub's rate-limit pause ends, for [`Store::pause_until_ms`]
    /// at the next start. A kept end later than `until_ms` stays, unless it
    /// is past `latest_ms`, the furthest a pause can reach.
    pub async fn save_pause(&self, until_ms: i64, latest_ms: i64) -> Result<(), StoreError> {
        self.call(|reply| Command::SavePause {
            until_ms,
            latest_ms,
            reply,
        })
        .await
    }

    /// When the last rate-limit pause GitHub asked for ends, if one was
    /// kept.
    pub async fn pause_until_ms(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT until_ms FROM github_pause WHERE id = 1",
                    [],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    /// What holds dispatches back at `now_ms`, for the listings.
    pub async fn holds(&self, now_ms: i64) -> Result<QueueHolds, StoreError> {
        Ok(QueueHolds {
            paused_until_ms: self.pause_until_ms().await?.filter(|&until| until > now_ms),
            refused_credentials: self.refused_credentials().await?,
        })
    }

    /// The credentials GitHub refuses, as the running relay found them,
    /// the longest refused first.
    pub async fn refused_credentials(&self) -> Result<Vec<RefusedCredential>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT credential, since_ms FROM refused_credentials ORDER BY since_ms, credential",
            )?;
            let refused = statement
                .query_map([], |row| {
                    Ok(RefusedCredential {
                        credential: row.get(0)?,
                        since_ms: row.get(1)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(refused)
        })
        .await
    }

    /// Keeps the run of rate limits that stated no wait, for
    /// [`Store::unstated_run`] at the next start: `in_a_row` of them, the
    /// last pausing until `until_ms`. Zero in a row forgets the run.
    pub async fn save_unstated_run(
        &self,
        in_a_row: u32,
        until_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.call(|reply| Command::SaveUnstatedRun {
            in_a_row,
            until_ms,
            reply,
        })
        .await
    }

    /// The run of rate limits that stated no wait kept before a restart:
    /// how many in a row and when the last one's pause ends. `None` when
    /// there was none.
    pub async fn unstated_run(&self) -> Result<Option<(u32, Option<i64>)>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT unstated_in_a_row, unstated_until_ms FROM github_pause
                     WHERE id = 1 AND unstated_in_a_row > 0",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?)
        })
        .await
    }

    /// Replaces a failed delivery's outcome with a new rendering (see
    /// [`Rerendering`]). Delivered and pending deliveries are left alone, so
    /// redelivering twice never sends anything twice.
    pub async fn rerender(
        &self,
        delivery_id: &str,
        rendering: Rerendering,
        now_ms: i64,
    ) -> Result<Rerendered, StoreError> {
        self.call(|reply| Command::Rerender {
            delivery_id: delivery_id.to_string(),
            rendering,
            now_ms,
            reply,
        })
        .await
    }

    /// When the earliest pending job that is not leased is due, so the
    /// worker can sleep until then. A job being sent right now is leased and
    /// left out: its due time is in the past and would wake the worker again
    /// at once, again and again. (The worker looks at least once a second
    /// anyway, which covers a lease that runs out.) The jobs not tried yet
    /// are read by seeking each queued route's first in the `jobs_untried`
    /// index, so it stays quick with a deep queue; the retries' times are
    /// those the writer keeps for the lease.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        let untried = self
            .read(|conn| {
                Ok(conn
                    .prepare_cached(schema::NEXT_UNTRIED_DUE)?
                    .query_row([], |row| row.get::<_, Option<i64>>(0))
                    .optional()?
                    .flatten())
            })
            .await?;
        let retry = self
            .retries
            .lock()
            .map(|retries| retries.earliest())
            .unwrap_or_default();
        Ok(untried.into_iter().chain(retry).min())
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        let (path, corruption) = (self.path.clone(), self.corruption.clone());
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| StoreError::Unavailable("reader lock poisoned".into()))?;
            let result = match conn.as_ref() {
                Some(conn) => f(conn),
                None => Err(StoreError::Unavailable("the store is closed".into())),
            };
            if let Some(damage) = result.as_ref().err().and_then(StoreError::damage) {
                corruption.note(&path, &damage);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// Lists deliveries, newest first.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<DeliverySummary>, StoreError> {
        self.read(move |conn| schema::list(conn, &filter)).await
    }

    /// One delivery with its attempts.
    pub async fn get(
        &self,
        id: &str,
    ) -> Result<Option<(DeliverySummary, Vec<AttemptSummary>)>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| schema::get(conn, &id)).await
    }

    /// One delivery with its request, what each target was sent, and its
    /// attempts.
    pub async fn detail(&self, id: &str) -> Result<Option<DeliveryDetail>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| schema::detail(conn, &id)).await
    }

    /// Failed deliveries matching the filter, oldest first.
    pub async fn failed_deliveries(
        &self,
        route: Option<String>,
        since_ms: Option<i64>,
        id: Option<String>,
    ) -> Result<Vec<FailedDelivery>, StoreError> {
        self.read(move |conn| {
            let selection = match id.as_deref() {
                Some(id) => schema::FailedSelection::One(id),
                None => schema::FailedSelection::Page {
                    after: None,
                    limit: usize::MAX,
                },
            };
            schema::failed(conn, route.as_deref(), since_ms, selection)
        })
        .await
    }

    /// Up to `limit` of the failed deliveries [`Self::failed_deliveries`]
    /// finds without an id, those received after `after`: a redelivery of
    /// every failed delivery holds one page of bodies in memory at a time.
    pub async fn failed_deliveries_after(
        &self,
        route: Option<String>,
        since_ms: Option<i64>,
        after: Option<FailedCursor>,
        limit: usize,
    ) -> Result<Vec<FailedDelivery>, StoreError> {
        self.read(move |conn| {
            let selection = schema::FailedSelection::Page {
                after: after.as_ref(),
                limit,
            };
            schema::failed(conn, route.as_deref(), since_ms, selection)
        })
        .await
    }

    /// Counts jobs by state, and deliveries that failed to render.
    pub async fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        self.read(schema::depth).await
    }

    /// Stops the writer after it has committed everything queued so far,
    /// and closes the reader first, so that the writer's is the last
    /// connection: SQLite then checkpoints the WAL and removes it.
    pub async fn close(&self) {
        if let Ok(mut reader) = self.reader.lock() {
            drop(reader.take());
        }
        self.writer.close().await;
    }
}

/// The page size of a new store, in bytes.
const PAGE_SIZE: i64 = 16 * 1024;

/// Opens the writer's connection. The inspection commands leave an
/// existing file's journal mode as it is, since a store `serve` made is in
/// WAL mode already, and a backup copy (`VACUUM INTO` makes one in rollback
/// mode) should not be changed by reading it.
fn open_connection(path: &Path, opener: Opener) -> Result<Connection, StoreError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    // Another program's database is refused before anything is written to
    // it, WAL mode included. It is looked at through a connection of its
    // own: a connection that has read the file before its page size and
    // journal mode are set keeps about 6 MB more memory for good.
    let existed = path.exists();
    if existed {
        let probe = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        probe.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::refuse_foreign_database(&probe)?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // A new store gets 16 KiB pages. A stored webhook is a row of one or two
    // KiB: 4 KiB pages held two of them and wasted a third of each page, and
    // every commit wrote (and later checkpointed) several times as many
    // pages, each with its own system calls. The setting only takes effect
    // when the file is created; an existing store keeps its page size.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    // WAL lets the reader connection work while the writer commits.
    if opener == Opener::Serve || !existed {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

#[cfg(test)]
mod tests;
