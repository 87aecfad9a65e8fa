//! The SQLite schema and every statement the store runs, with the order in
//! which a lease takes turns between routes.
//!
//! A delivery's status is kept in its row and updated in the same statement
//! batch that delivers or fails one of its jobs, so listing deliveries never
//! has to aggregate jobs.

use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::retry_times::RetryTimes;
use super::{
    Accepted, AttemptRecord, AttemptSummary, CredentialChange, DebounceWindow, DeliveryDetail,
    DeliverySummary, FailedDelivery, INTERRUPTED, Job, JobNext, JobSummary, ListFilter,
    NewDelivery, NewJob, Opener, QueueDepth, Released, Rerendered, Rerendering, SentRequest,
    Status, StoreError, StoredRequest, StoredTarget,
};

const SCHEMA_VERSION: i64 = 1;

/// The tables and indexes. A file of its own so that the benchmarks' durable
/// reference can write the same rows into the same schema.
pub(super) const SCHEMA: &str = include_str!("schema.sql");

/// What bringing an existing store up to date changed in it, for the one
/// line that says so; empty for a store that was up to date, or new.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Upgrade {
    pub(super) from_schema: i64,
    pub(super) changes: Vec<String>,
}

/// Creates or brings up to date the store's schema. Only `serve` builds the
/// indexes added since the first schema, drops those no longer used and
/// gives queued jobs their route (see [`Opener`]).
pub(super) fn migrate(conn: &Connection, opener: Opener) -> Result<Upgrade, StoreError> {
    let serve = opener == Opener::Serve;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    refuse_newer(version)?;
    let index_names: Vec<&str> = ADDED_INDEXES.iter().map(|(name, _)| *name).collect();
    let serve_work_left = serve
        && (missing(conn, &index_names)?
            || present(conn, DROPPED_INDEXES)?
            || has_jobs_without_route(conn)?);
    if version == SCHEMA_VERSION
        && missing_columns(conn)?.is_empty()
        && !missing(conn, ADDED_TABLES)?
        && !serve_work_left
    {
        // Up to date: write nothing. `deliveries` and `redeliver` open the
        // store beside a running relay, and must not take its write lock.
        return Ok(Upgrade::default());
    }
    // What an existing store was given, for the one line that says an
    // upgrade changed the file (a new store has nothing to report).
    let existed = !missing(conn, &["deliveries"])?;
    let mut changes = Vec::new();
    for table in ADDED_TABLES {
        if existed && missing(conn, &[table])? {
            changes.push(format!("table {table}"));
        }
    }
    // Looked at before `SCHEMA` runs, which creates the indexes it names.
    let mut indexes_missing = Vec::new();
    for (name, _) in ADDED_INDEXES {
        if missing(conn, &[name])? {
            indexes_missing.push(*name);
        }
    }
    conn.execute_batch(SCHEMA)?;
    for (table, column, declaration) in missing_columns(conn)? {
        conn.execute_batch(&format!(
            "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
        ))?;
        if existed {
            changes.push(format!("column {table}.{column}"));
        }
    }
    if serve {
        for (name, create) in ADDED_INDEXES {
            if existed && indexes_missing.contains(name) {
                changes.push(format!("index {name}"));
            }
            conn.execute_batch(create)?;
        }
        for name in DROPPED_INDEXES {
            if present(conn, &[name])? {
                changes.push(format!("dropped index {name}"));
            }
            conn.execute_batch(&format!("DROP INDEX IF EXISTS {name}"))?;
        }
        // Jobs queued before jobs kept their route, or by an older relay
        // since, would never take a turn in the queue. (A failed job is
        // given its route when it is redelivered.)
        let routed = conn.execute(
            "UPDATE jobs SET route = (SELECT d.route FROM deliveries d WHERE d.id = jobs.delivery_id)
             WHERE route IS NULL AND status = 'pending'",
            [],
        )?;
        if routed > 0 {
            changes.push(format!("a route for {routed} queued jobs"));
        }
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    Ok(Upgrade {
        from_schema: version,
        changes,
    })
}

/// Marks a SQLite file as a dispatch-relay store (`PRAGMA application_id`,
/// "drly"), so that another program's database is told apart whatever
/// schema version it claims. Stores made before it was set hold 0.
const APPLICATION_ID: i64 = 0x6472_6c79;

/// The relay's tables, as `schema.sql` and [`ADDED_TABLES`] create them.
pub(super) const TABLES: &[&str] = &[
    "deliveries",
    "coalesced_keys",
    "jobs",
    "attempts",
    "readiness",
    "github_pause",
    "refused_credentials",
];

fn refuse_newer(version: i64) -> Result<(), StoreError> {
    if version > SCHEMA_VERSION {
        return Err(StoreError::NotAStore(format!(
            "the store was written by a newer dispatch-relay (schema {version}, this one knows {SCHEMA_VERSION})"
        )));
    }
    Ok(())
}

/// Refuses a file that is not a store this relay can use, before anything
/// is written to it: another program's database (a store url pointing at
/// it would otherwise get the relay's tables added, and WAL mode), or a
/// store of a newer relay. A store is known by its application id; one
/// made before the id was set holds only the relay's tables.
pub(super) fn refuse_foreign_database(conn: &Connection) -> Result<(), StoreError> {
    let application_id: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let foreign = |what: String| {
        StoreError::NotAStore(format!(
            "the file is a SQLite database of another program ({what}), not a dispatch-relay store"
        ))
    };
    if application_id != 0 && application_id != APPLICATION_ID {
        return Err(foreign(format!(
            "its application_id is {application_id:#x}"
        )));
    }
    if application_id == 0 {
        let mut statement = conn.prepare(
            r"SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY name",
        )?;
        let others: Vec<String> = statement
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|name| !TABLES.contains(&name.as_str()))
            .collect();
        if !others.is_empty() {
            return Err(foreign(format!(
                "it holds the tables {}",
                others.join(", ")
            )));
        }
    }
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    refuse_newer(version)
}

/// Indexes added after the first schema, each name with its statement.
/// Some cover columns that older stores only gain in [`ADDED_COLUMNS`], so
/// all are created after those.
const ADDED_INDEXES: &[(&str, &str)] = &[
    (
        // Each route's deliveries by arrival, in place of `deliveries_received`:
        // listing one route no longer walks every route's deliveries.
        "deliveries_route",
        "CREATE INDEX IF NOT EXISTS deliveries_route ON deliveries (route, received_at)",
    ),
    (
        // The open debounce windows of a route, found without walking every
        // pending delivery of every route; deliveries of routes without
        // debounce are not in it, so accepting them costs nothing more.
        "deliveries_debounce_open",
        "CREATE INDEX IF NOT EXISTS deliveries_debounce_open ON deliveries (route, received_at)
         WHERE debounce_first_at IS NOT NULL AND status = 'pending'",
    ),
    // The failed jobs, counted for `queue_depth` at every scrape. A job
    // delivered at its first attempt never enters it, so the accept path
    // and the usual send cost nothing more.
    (
        "jobs_failed",
        "CREATE INDEX IF NOT EXISTS jobs_failed ON jobs (delivery_id) WHERE status = 'failed'",
    ),
    ("jobs_untried", JOBS_UNTRIED),
    // The jobs that wait for a retry, by route, each route's in the order
    // they fall due: the lease finds a route's due ones here, and
    // `queue_depth` counts them. A job enters it at its first retry, so
    // accepting a webhook does not write it.
    (
        "jobs_retried",
        "CREATE INDEX IF NOT EXISTS jobs_retried ON jobs (route, next_attempt_at)
         WHERE status = 'pending' AND attempts > 0",
    ),
];

/// The index of the jobs not tried yet. A file of its own so that the
/// benchmarks' durable reference, which writes the relay's rows, keeps it
/// as the relay does.
pub(super) const JOBS_UNTRIED: &str = include_str!("jobs_untried.sql");

/// Indexes no longer used, dropped by `serve` so that accepting a webhook
/// and retrying a job do not keep writing them. `jobs_due` ordered the
/// queue by due time alone; `jobs_queued` ordered each route's pending
/// jobs, tried or not, which made every lease walk every route with a job
/// waiting out its backoff; `jobs_retrying` counted what `jobs_retried`
/// now holds; `deliveries_received` ordered every delivery by arrival,
/// which `deliveries_route` does route by route.
const DROPPED_INDEXES: &[&str] = &[
    "jobs_due",
    "jobs_queued",
    "jobs_retrying",
    "deliveries_received",
];

/// Whether a pending job has no route: one queued before jobs kept it, or
/// by an older relay since. Looked up only through the queue's indexes, so
/// a start costs no scan of the jobs; without them, migrating builds them
/// and gives every pending job its route anyway.
fn has_jobs_without_route(conn: &Connection) -> Result<bool, StoreError> {
    if missing(conn, &["jobs_untried", "jobs_retried"])? {
        return Ok(false);
    }
    Ok(conn.prepare_cached(QUEUED_WITHOUT_ROUTE)?.exists([])?)
}

/// A pending job without a route, found through `jobs_untried` and
/// `jobs_retried`.
pub(super) const QUEUED_WITHOUT_ROUTE: &str =
    "SELECT 1 FROM jobs WHERE status = 'pending' AND attempts = 0 AND route IS NULL
     UNION ALL
     SELECT 1 FROM jobs WHERE status = 'pending' AND attempts > 0 AND route IS NULL
     LIMIT 1";

/// Whether any of these tables or indexes is present.
fn present(conn: &Connection, names: &[&str]) -> Result<bool, StoreError> {
    for name in names {
        if !missing(conn, &[name])? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Tables added after the first schema; `SCHEMA` creates them when missing.
const ADDED_TABLES: &[&str] = &["readiness", "github_pause", "refused_credentials"];

/// Whether any of these tables or indexes is missing.
fn missing(conn: &Connection, names: &[&str]) -> Result<bool, StoreError> {
    for name in names {
        let present = conn
            .prepare_cached("SELECT 1 FROM sqlite_schema WHERE name = ?1")?
            .exists([name])?;
        if !present {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Columns added after the first schema, as (table, column, declaration).
/// `CREATE TABLE IF NOT EXISTS` leaves an existing table as it is, so a
/// store made before a column existed gets it added here. Adding columns,
/// rather than bumping the schema version, keeps the change additive: an
/// older relay simply ignores them.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("deliveries", "debounce_first_at", "INTEGER"),
    ("deliveries", "coalesced", "INTEGER NOT NULL DEFAULT 0"),
    // Where a debounced delivery's jobs go; a window opened before it
    // existed is joined by nothing and is sent when it is due.
    ("deliveries", "debounce_targets", "TEXT"),
    // Run details of a workflow dispatch.
    ("jobs", "result", "TEXT"),
    // The end of the wait GitHub stated for a retry; a retry scheduled
    // before it existed is brought forward as before.
    ("jobs", "not_before", "INTEGER"),
    // The delivery id and receive time a merged webhook's jobs were
    // rendered with (debounce), for redelivery to render them alike.
    ("jobs", "rendered_as_id", "TEXT"),
    ("jobs", "rendered_as_at", "INTEGER"),
    // The delivery's route, by which the queue takes turns.
    ("jobs", "route", "TEXT"),
    // The repository an attempt was sent to: a redelivery after a fix in
    // routes.yaml points the job at another one, and the attempts made
    // before must still say where they went. An attempt recorded before
    // the column existed shows its job's repository.
    ("attempts", "repo", "TEXT"),
    // When a job's lease was taken, cleared with the lease: it dates the
    // attempt of a send that a stop interrupted, which was taken for
    // sending then, rather than at the next start.
    ("jobs", "leased_at", "INTEGER"),
    // The secondary rate limits in a row that stated no wait, and when the
    // pause the last of them set ends: a restart goes on doubling the
    // pause, as GitHub asks, instead of starting again at a minute.
    (
        "github_pause",
        "unstated_in_a_row",
        "INTEGER NOT NULL DEFAULT 0",
    ),
    ("github_pause", "unstated_until_ms", "INTEGER"),
];

fn missing_columns(
    conn: &Connection,
) -> Result<Vec<(&'static str, &'static str, &'static str)>, StoreError> {
    let mut missing = Vec::new();
    for &(table, column, declaration) in ADDED_COLUMNS {
        let present = conn
            .prepare_cached("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])?;
        if !present {
            missing.push((table, column, declaration));
        }
    }
    Ok(missing)
}

/// Inserts a delivery's jobs. `rendered_as` is the delivery id and receive
/// time their templates saw when those are not the delivery's own: a
/// webhook merged into an open debounce window was rendered as itself (and
/// its jobs then given the window's id, [`NewJob::with_delivery_id`]).
fn insert_jobs_due(
    conn: &Connection,
    (delivery_id, route): (&str, &str),
    jobs: &[NewJob],
    now_ms: i64,
    due_ms: i64,
    rendered_as: Option<(&str, i64)>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO jobs (delivery_id, target_index, repo, label, path, body, status, next_attempt_at, created_at,
                           rendered_as_id, rendered_as_at, route)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?8, ?7, ?9, ?10, ?11)",
    )?;
    let (rendered_id, rendered_at) = rendered_as.unzip();
    for job in jobs {
        stmt.execute(params![
            delivery_id,
            job.target_index as i64,
            job.repo,
            job.label,
            job.path,
            job.body,
            now_ms,
            due_ms,
            rendered_id,
            rendered_at,
            route
        ])?;
    }
    Ok(())
}

/// The moment a debounced dispatch is due: `window` after the latest
/// webhook, but never later than `max_wait` after the first.
fn debounce_due(d: &DebounceWindow, first_ms: i64, now_ms: i64) -> i64 {
    now_ms
        .saturating_add(d.window_ms)
        .min(first_ms.saturating_add(d.max_wait_ms))
}

/// What a debounced webhook's jobs are keyed by: the places they go, each
/// endpoint (lower-cased, as GitHub's names ignore case) with its event
/// type or ref, in order. Only webhooks bound for the same places share a
/// window; one that renders another repository, event type or ref must
/// not replace a dispatch it has nothing to do with. A workflow job's ref
/// is read from its body: its label, the workflow, is in its path already.
fn debounce_targets(jobs: &[NewJob]) -> String {
    #[derive(serde::Deserialize)]
    struct WorkflowBody {
        #[serde(rename = "ref")]
        git_ref: Option<String>,
    }
    let mut places: Vec<(String, String)> = jobs
        .iter()
        .map(|job| {
            let git_ref = serde_json::from_str::<WorkflowBody>(&job.body)
                .ok()
                .and_then(|body| body.git_ref);
            let kind = git_ref.unwrap_or_else(|| job.label.clone());
            (job.path.to_ascii_lowercase(), kind)
        })
        .collect();
    places.sort();
    places.dedup();
    serde_json::to_string(&places).unwrap_or_default()
}

/// The open debounce window of a route for webhooks bound for the same
/// places: its newest pending debounced delivery with those targets none
/// of whose jobs has been leased or tried.
pub(super) const OPEN_WINDOW: &str = "SELECT id, debounce_first_at, coalesced FROM deliveries d
     WHERE route = ?1 AND debounce_targets = ?2 AND status = 'pending' AND debounce_first_at IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.id
                       AND (j.leased_until IS NOT NULL OR j.attempts > 0 OR j.status != 'pending'))
     ORDER BY received_at DESC LIMIT 1";

/// Merges a webhook into the open debounce window of its route and
/// targets, if there is one: the window's jobs are replaced by this
/// webhook's (the last payload wins) and pushed back by `window`. A window is
/// open while none of its jobs has been leased or tried.
fn coalesce(
    conn: &Connection,
    d: &NewDelivery,
    targets: &str,
    window: &DebounceWindow,
    request: &str,
) -> Result<Option<Accepted>, StoreError> {
    let open: Option<(String, i64, i64)> = conn
        .prepare_cached(OPEN_WINDOW)?
        .query_row(params![d.route, targets], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((id, first_ms, coalesced)) = open else {
        return Ok(None);
    };
    conn.prepare_cached("DELETE FROM jobs WHERE delivery_id = ?1")?
        .execute(params![id])?;
    let due = debounce_due(window, first_ms, d.received_at_ms);
    // GitHub receives the id the sender was answered with, which the
    // admin API finds.
    let jobs: Vec<NewJob> = d
        .jobs
        .iter()
        .map(|job| job.with_delivery_id(&d.id, &id))
        .collect();
    insert_jobs_due(
        conn,
        (&id, &d.route),
        &jobs,
        d.received_at_ms,
        due,
        Some((&d.id, d.received_at_ms)),
    )?;
    conn.prepare_cached(
        "UPDATE deliveries SET request = ?2, coalesced = coalesced + 1 WHERE id = ?1",
    )?
    .execute(params![id, request])?;
    if let Some(key) = &d.dedupe_key {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO coalesced_keys (route, dedupe_key, delivery_id) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![d.route, key, id])?;
    }
    Ok(Some(Accepted::Coalesced {
        into: id,
        coalesced: (coalesced + 1) as u32,
    }))
}

/// Keeps the end of GitHub's rate-limit pause. A later end wins, as in the
/// pacer, where a shorter pause never shortens a longer one; but a kept end
/// past `latest_ms`, further off than any pause can be (written under a
/// clock that ran fast), is replaced.
pub(super) fn save_pause(
    conn: &Connection,
    until_ms: i64,
    latest_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO github_pause (id, until_ms) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET until_ms =
           CASE WHEN until_ms > excluded.until_ms AND until_ms <= ?2 THEN until_ms
                ELSE excluded.until_ms END",
    )?
    .execute([until_ms, latest_ms])?;
    Ok(())
}

/// Keeps the run of rate limits that stated no wait (see
/// `Pacer::pause_unstated`): how many in a row, and when the last one's
/// pause ends. A run that ended is kept as none in a row. The pause's own
/// end, `until_ms`, is left as it is; a row made here holds none yet.
pub(super) fn save_unstated_run(
    conn: &Connection,
    in_a_row: u32,
    until_ms: Option<i64>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO github_pause (id, until_ms, unstated_in_a_row, unstated_until_ms) VALUES (1, 0, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET unstated_in_a_row = excluded.unstated_in_a_row,
                                        unstated_until_ms = excluded.unstated_until_ms",
    )?
    .execute(params![in_a_row, until_ms])?;
    Ok(())
}

/// Rewrites the readiness row: a write that commits only if the store
/// takes writes.
pub(super) fn check_writable(conn: &Connection, now_ms: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO readiness (id, checked_at) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
    )?
    .execute([now_ms])?;
    Ok(())
}

pub(super) fn accept(conn: &Connection, d: &NewDelivery) -> Result<Accepted, StoreError> {
    if let Some(key) = &d.dedupe_key {
        let existing: Option<String> = conn
            .prepare_cached(
                "SELECT id FROM deliveries WHERE route = ?1 AND dedupe_key = ?2
                 UNION ALL
                 SELECT delivery_id FROM coalesced_keys WHERE route = ?1 AND dedupe_key = ?2
                 LIMIT 1",
            )?
            .query_row(params![d.route, key], |r| r.get(0))
            .optional()?;
        if let Some(original_id) = existing {
            return Ok(Accepted::Duplicate { original_id });
        }
    }
    let request = d.request.as_str();
    let debounce = d
        .debounce
        .as_ref()
        .filter(|_| d.failure.is_none() && !d.jobs.is_empty());
    let targets = debounce.map(|_| debounce_targets(&d.jobs));
    if let (Some(window), Some(targets)) = (debounce, &targets)
        && let Some(merged) = coalesce(conn, d, targets, window, request)?
    {
        return Ok(merged);
    }
    let (status, finished) = match &d.failure {
        Some(_) => (Status::Failed, Some(d.received_at_ms)),
        None if d.jobs.is_empty() => (Status::Delivered, Some(d.received_at_ms)),
        None => (Status::Pending, None),
    };
    // A delivery that failed to render holds no key (see `NewDelivery`).
    let kept_key = d.dedupe_key.as_ref().filter(|_| d.failure.is_none());
    conn.prepare_cached(
        "INSERT INTO deliveries (id, route, received_at, status, dedupe_key, request, error, finished_at,
                                 debounce_first_at, debounce_targets)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        d.id,
        d.route,
        d.received_at_ms,
        status.as_str(),
        kept_key,
        request,
        d.failure,
        finished,
        debounce.map(|_| d.received_at_ms),
        targets
    ])?;
    let due = debounce.map_or(d.received_at_ms, |w| {
        debounce_due(w, d.received_at_ms, d.received_at_ms)
    });
    insert_jobs_due(
        conn,
        (&d.id, &d.route),
        &d.jobs,
        d.received_at_ms,
        due,
        None,
    )?;
    Ok(Accepted::Stored)
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: row.get(0)?,
        delivery_id: row.get(1)?,
        route: row.get(2)?,
        target_index: row.get::<_, i64>(3)? as usize,
        repo: row.get(4)?,
        label: row.get(5)?,
        path: row.get(6)?,
        body: row.get(7)?,
        attempts: row.get::<_, i64>(8)? as u32,
        failures: row.get::<_, i64>(9)? as u32,
        created_at_ms: row.get(10)?,
        received_at_ms: row.get(11)?,
        since_ms: row.get(12)?,
    })
}

/// The first route, in name order, after `?1` with a job not tried yet.
pub(super) const NEXT_UNTRIED_ROUTE: &str = "SELECT route FROM jobs
     WHERE status = 'pending' AND attempts = 0 AND route > ?1 ORDER BY route LIMIT 1";

/// Up to `?3` of a route's jobs not tried yet that are due at `?2` and not
/// being sent, with their due time, in the order they fell due.
pub(super) const UNTRIED_DUE_OF_ROUTE: &str = "SELECT id, next_attempt_at FROM jobs
     WHERE status = 'pending' AND attempts = 0 AND route = ?1 AND next_attempt_at <= ?2
       AND (leased_until IS NULL OR leased_until < ?2)
     ORDER BY next_attempt_at, id LIMIT ?3";

/// The same of a route's jobs waiting for a retry.
pub(super) const RETRIED_DUE_OF_ROUTE: &str = "SELECT id, next_attempt_at FROM jobs
     WHERE status = 'pending' AND attempts > 0 AND route = ?1 AND next_attempt_at <= ?2
       AND (leased_until IS NULL OR leased_until < ?2)
     ORDER BY next_attempt_at, id LIMIT ?3";

/// The first route, in name order, after `?1` with a job waiting for a
/// retry.
pub(super) const NEXT_RETRIED_ROUTE: &str = "SELECT route FROM jobs
     WHERE status = 'pending' AND attempts > 0 AND route > ?1 ORDER BY route LIMIT 1";

/// When the first of a route's jobs waiting for a retry that is not being
/// sent at `?2` falls due.
pub(super) const NEXT_RETRY_OF_ROUTE: &str = "SELECT next_attempt_at FROM jobs
     WHERE status = 'pending' AND attempts > 0 AND route = ?1
       AND (leased_until IS NULL OR leased_until < ?2)
     ORDER BY next_attempt_at LIMIT 1";

/// When the earliest job not tried yet and not leased falls due (the
/// retries' times are kept in memory, see [`RetryTimes`]). The routes are
/// found one index seek at a time, starting from "" (which sorts before
/// every route name; SQLite would otherwise walk every pending job to find
/// them), and each route's first job by another.
pub(super) const NEXT_UNTRIED_DUE: &str = "WITH RECURSIVE queued(route) AS (
         SELECT ''
         UNION ALL
         SELECT (SELECT route FROM jobs WHERE status = 'pending' AND attempts = 0 AND route > queued.route
                 ORDER BY route LIMIT 1)
         FROM queued WHERE queued.route IS NOT NULL
     )
     SELECT MIN((SELECT next_attempt_at FROM jobs
                 WHERE status = 'pending' AND attempts = 0 AND route = queued.route AND leased_until IS NULL
                 ORDER BY next_attempt_at LIMIT 1))
     FROM queued WHERE route > ''";

/// Each route's due jobs, with their due times, found for one lease.
type DueByRoute = BTreeMap<String, Vec<(i64, i64)>>;

/// Leases up to `limit` due jobs for `lease_ms`, taking turns between
/// routes: one job of each route that has any due, starting with the
/// first route after `after_route` in name order and coming round to it
/// last, then a second of each, and so on. Each route's jobs go in the
/// order they fell due, retries among new jobs. So a burst on one route is
/// sent between the other routes' dispatches, not ahead of them all.
///
/// The jobs not tried yet are found one route at a time, an index seek
/// each, and the search stops as soon as `limit` routes have a job due, so
/// a lease costs the routes it looks at, not the depth of the queue. The
/// jobs waiting for a retry are looked for only in the routes whose next
/// retry `retries` says is due: a route holding a job that waits out an
/// hour's backoff costs a lease nothing.
pub(super) fn lease(
    conn: &Connection,
    now_ms: i64,
    limit: usize,
    lease_ms: i64,
    after_route: Option<&str>,
    retries: &mut RetryTimes,
) -> Result<Vec<Job>, StoreError> {
    let data_version: i64 = conn.pragma_query_value(None, "data_version", |r| r.get(0))?;
    if retries.stale(now_ms, data_version) {
        read_retry_times(conn, now_ms, data_version, retries)?;
    }
    let mut due = DueByRoute::new();
    find_untried_due(conn, now_ms, limit, after_route, &mut due)?;
    let retried_routes = find_retries_due(conn, now_ms, limit, after_route, retries, &mut due)?;
    let ids = taking_turns(in_turn_order(due, after_route), limit);
    let mut jobs = Vec::with_capacity(ids.len());
    let mut mark =
        conn.prepare_cached("UPDATE jobs SET leased_until = ?2, leased_at = ?3 WHERE id = ?1")?;
    let mut fetch = conn.prepare_cached(
        "SELECT j.id, j.delivery_id, d.route, j.target_index, j.repo, j.label, j.path, j.body,
                j.attempts, j.failures, j.created_at, d.received_at,
                MAX(j.created_at, COALESCE((SELECT MAX(a.started_at) FROM attempts a WHERE a.job_id = j.id), 0))
         FROM jobs j JOIN deliveries d ON d.id = j.delivery_id WHERE j.id = ?1",
    )?;
    for id in ids {
        mark.execute(params![id, now_ms + lease_ms, now_ms])?;
        jobs.push(fetch.query_row(params![id], job_from_row)?);
    }
    // The routes whose retries were leased move on to their next one, so
    // that an idle worker does not wake for the retries it is sending.
    let mut next_retry = conn.prepare_cached(NEXT_RETRY_OF_ROUTE)?;
    for route in retried_routes {
        retries.moved_on(&route, next_retry_of(&mut next_retry, &route, now_ms)?);
    }
    Ok(jobs)
}

/// The due jobs not tried yet of the first `limit` routes after
/// `after_route` that have any.
fn find_untried_due(
    conn: &Connection,
    now_ms: i64,
    limit: usize,
    after_route: Option<&str>,
    due: &mut DueByRoute,
) -> Result<(), StoreError> {
    let mut next_route = conn.prepare_cached(NEXT_UNTRIED_ROUTE)?;
    let mut due_of_route = conn.prepare_cached(UNTRIED_DUE_OF_ROUTE)?;
    let mut found = 0;
    // Route names are never empty, so every route sorts after "".
    let mut cursor = after_route.unwrap_or("").to_string();
    let mut wrapped = after_route.is_none();
    while found < limit {
        let route: Option<String> = next_route.query_row([&cursor], |r| r.get(0)).optional()?;
        let route = match route {
            // Round again to the route served last, then stop.
            Some(route) if wrapped && after_route.is_some_and(|last| route.as_str() > last) => {
                break;
            }
            Some(route) => route,
            None if wrapped => break,
            None => {
                wrapped = true;
                cursor.clear();
                continue;
            }
        };
        let jobs = due_of(&mut due_of_route, &route, now_ms, limit)?;
        if !jobs.is_empty() {
            found += 1;
            due.insert(route.clone(), jobs);
        }
        cursor = route;
    }
    Ok(())
}

/// The due retries of the first `limit` routes, in turn order, that
/// `retries` lists as due and that have any; returns those routes. A
/// listed route found with none due is moved on to its next retry.
fn find_retries_due(
    conn: &Connection,
    now_ms: i64,
    limit: usize,
    after_route: Option<&str>,
    retries: &mut RetryTimes,
    due: &mut DueByRoute,
) -> Result<Vec<String>, StoreError> {
    let mut due_of_route = conn.prepare_cached(RETRIED_DUE_OF_ROUTE)?;
    let mut next_retry = conn.prepare_cached(NEXT_RETRY_OF_ROUTE)?;
    let mut found = Vec::new();
    for route in retries.due_routes(now_ms, after_route) {
        if found.len() == limit {
            break;
        }
        let jobs = due_of(&mut due_of_route, &route, now_ms, limit)?;
        if jobs.is_empty() {
            retries.moved_on(&route, next_retry_of(&mut next_retry, &route, now_ms)?);
            continue;
        }
        let queue = due.entry(route.clone()).or_default();
        queue.extend(jobs);
        queue.sort_unstable();
        found.push(route);
    }
    Ok(found)
}

/// Reads when each route's next retry not being sent falls due, one index
/// seek per route with retries.
fn read_retry_times(
    conn: &Connection,
    now_ms: i64,
    data_version: i64,
    retries: &mut RetryTimes,
) -> Result<(), StoreError> {
    let mut next_route = conn.prepare_cached(NEXT_RETRIED_ROUTE)?;
    let mut next_retry = conn.prepare_cached(NEXT_RETRY_OF_ROUTE)?;
    let mut times = BTreeMap::new();
    let mut cursor = String::new();
    while let Some(route) = next_route
        .query_row([&cursor], |r| r.get::<_, String>(0))
        .optional()?
    {
        if let Some(at_ms) = next_retry_of(&mut next_retry, &route, now_ms)? {
            times.insert(route.clone(), at_ms);
        }
        cursor = route;
    }
    retries.read(times, now_ms, data_version);
    Ok(())
}

/// A route's due jobs, `(due time, id)`, from [`UNTRIED_DUE_OF_ROUTE`] or
/// [`RETRIED_DUE_OF_ROUTE`].
fn due_of(
    statement: &mut rusqlite::CachedStatement<'_>,
    route: &str,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(statement
        .query_map(params![route, now_ms, limit as i64], |r| {
            Ok((r.get(1)?, r.get(0)?))
        })?
        .collect::<Result<_, _>>()?)
}

/// A route's next retry not being sent, from [`NEXT_RETRY_OF_ROUTE`].
fn next_retry_of(
    statement: &mut rusqlite::CachedStatement<'_>,
    route: &str,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(statement
        .query_row(params![route, now_ms], |r| r.get(0))
        .optional()?)
}

/// Each route's job ids in the order they fell due, the routes after
/// `after_route` first and coming round to it last.
fn in_turn_order(due: DueByRoute, after_route: Option<&str>) -> Vec<Vec<i64>> {
    let (earlier, later): (Vec<_>, Vec<_>) = due
        .into_iter()
        .partition(|(route, _)| after_route.is_some_and(|last| route.as_str() <= last));
    later
        .into_iter()
        .chain(earlier)
        .map(|(_, jobs)| jobs.into_iter().map(|(_, id)| id).collect())
        .collect()
}

/// Up to `limit` items taken from the queues in turn: the first of each
/// queue, then the second of each, and so on.
pub(super) fn taking_turns<T>(queues: Vec<Vec<T>>, limit: usize) -> Vec<T> {
    let mut iterators: Vec<_> = queues.into_iter().map(Vec::into_iter).collect();
    let mut taken = Vec::new();
    while taken.len() < limit {
        let before = taken.len();
        for queue in &mut iterators {
            if taken.len() == limit {
                break;
            }
            taken.extend(queue.next());
        }
        if taken.len() == before {
            break;
        }
    }
    taken
}

/// Records an attempt and the job's next state; a retry is returned with
/// its job's route, for the route's retry time.
pub(super) fn record(
    conn: &Connection,
    a: &AttemptRecord,
) -> Result<Option<(String, i64)>, StoreError> {
    conn.prepare_cached(
        "INSERT INTO attempts (job_id, started_at, duration_ms, status_code, detail, repo)
         VALUES (?1, ?2, ?3, ?4, ?5, (SELECT repo FROM jobs WHERE id = ?1))",
    )?
    .execute(params![
        a.job_id,
        a.started_at_ms,
        a.duration_ms,
        a.status_code.map(i64::from),
        a.detail
    ])?;
    let finished_at = a.started_at_ms + a.duration_ms;
    match &a.credential {
        Some(CredentialChange::Refused(credential)) => {
            conn.prepare_cached(
                "INSERT INTO refused_credentials (credential, since_ms) VALUES (?1, ?2)
                 ON CONFLICT (credential) DO NOTHING",
            )?
            .execute(params![credential, finished_at])?;
        }
        Some(CredentialChange::Accepted(credential)) => {
            conn.prepare_cached("DELETE FROM refused_credentials WHERE credential = ?1")?
                .execute([credential])?;
        }
        None => {}
    }
    match &a.next {
        JobNext::Delivered => {
            conn.prepare_cached(
                "UPDATE jobs SET status = 'delivered', attempts = attempts + 1, leased_until = NULL, leased_at = NULL,
                 last_error = NULL, finished_at = ?2, result = ?3 WHERE id = ?1",
            )?
            .execute(params![a.job_id, finished_at, a.result])?;
        }
        JobNext::Retry {
            at_ms,
            not_before_ms,
            counts_as_failure,
        } => {
            let route: Option<String> = conn
                .prepare_cached(
                    "UPDATE jobs SET attempts = attempts + 1, failures = failures + ?3, next_attempt_at = ?2,
                     leased_until = NULL, leased_at = NULL, last_error = ?4, not_before = ?5 WHERE id = ?1 RETURNING route",
                )?
                .query_row(
                    params![
                        a.job_id,
                        at_ms,
                        i64::from(*counts_as_failure),
                        a.detail,
                        not_before_ms
                    ],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            return Ok(route.map(|route| (route, *at_ms)));
        }
        JobNext::Failed { reason } => {
            conn.prepare_cached(
                "UPDATE jobs SET status = 'failed', attempts = attempts + 1, failures = failures + 1,
                 leased_until = NULL, leased_at = NULL, last_error = ?2, finished_at = ?3 WHERE id = ?1",
            )?
            .execute(params![a.job_id, reason, finished_at])?;
        }
    }
    settle_delivery_of_job(conn, a.job_id, finished_at)?;
    Ok(None)
}

/// The state of a delivery from its jobs: failed as soon as one of them
/// failed for good, even while others are still being sent (an operator
/// told of the failure finds it with `deliveries --status failed`, and can
/// redeliver it, at once, not when its last sibling gives up); otherwise
/// pending while one is; otherwise delivered. It is finished, and can be
/// pruned, once none is pending.
macro_rules! settle_delivery {
    ($which:literal) => {
        concat!(
            "UPDATE deliveries SET
                status = CASE
                    WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = deliveries.id AND status = 'failed') THEN 'failed'
                    WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = deliveries.id AND status = 'pending') THEN 'pending'
                    ELSE 'delivered' END,
                finished_at = CASE
                    WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = deliveries.id AND status = 'pending') THEN NULL
                    ELSE ?2 END,
                error = (SELECT group_concat(repo || ': ' || last_error, '; ') FROM jobs
                         WHERE delivery_id = deliveries.id AND status = 'failed')
             WHERE id = ",
            $which
        )
    };
}

/// Settles the delivery of a job that was just delivered or failed.
fn settle_delivery_of_job(conn: &Connection, job_id: i64, now_ms: i64) -> Result<(), StoreError> {
    conn.prepare_cached(settle_delivery!(
        "(SELECT delivery_id FROM jobs WHERE id = ?1)"
    ))?
    .execute(params![job_id, now_ms])?;
    Ok(())
}

/// Settles a delivery whose failed jobs were just queued again.
fn settle_delivery(conn: &Connection, delivery_id: &str, now_ms: i64) -> Result<(), StoreError> {
    conn.prepare_cached(settle_delivery!("?1"))?
        .execute(params![delivery_id, now_ms])?;
    Ok(())
}

/// Makes the retries scheduled after an attempt started at or after
/// `from_ms`, and not due by `now_ms`, due since their job was queued (see
/// [`super::Store::bring_retries_forward`]), or when the wait GitHub stated
/// for them ends, if that is later still: such a job is not brought
/// forward. A job being sent is due already, and left alone. It walks the
/// jobs waiting for a retry once.
pub(super) fn bring_forward(
    conn: &Connection,
    from_ms: i64,
    now_ms: i64,
) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE jobs SET next_attempt_at = created_at
             WHERE status = 'pending' AND attempts > 0 AND next_attempt_at > ?2
               AND COALESCE(not_before, 0) <= ?2
               AND EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = jobs.id AND a.started_at >= ?1)",
        )?
        .execute(params![from_ms, now_ms])?)
}

/// Clears every lease; run once by `serve` at start, when no job can be in
/// flight. Removes, too, the pending jobs whose delivery is missing, and
/// returns how many. The relay never writes one, but a store rebuilt from a
/// damaged file (`.recover`) keeps the jobs found on sound pages whatever
/// became of their deliveries; such a job cannot be leased, and the first
/// in the queue would stop every send.
///
/// A pending job still leased was in flight, or about to be, when the
/// previous process stopped: it gets an attempt saying so, counted in its
/// attempts but not against `retry.max_attempts`, so that its history
/// shows the dispatch GitHub may have received before the one sent now.
/// The attempt is dated when the job was leased, taken for sending (it
/// was sent then or after its turn under pacing, or a pause, came); a job
/// leased by a relay that kept no such date gets the time of this start.
pub(super) fn release_all(conn: &Connection, now_ms: i64) -> Result<Released, StoreError> {
    conn.execute(
        "INSERT INTO attempts (job_id, started_at, duration_ms, status_code, detail, repo)
           SELECT id, COALESCE(leased_at, ?1), 0, NULL, ?2, repo FROM jobs
            WHERE leased_until IS NOT NULL AND status = 'pending'",
        params![now_ms, INTERRUPTED],
    )?;
    let interrupted = conn.execute(
        "UPDATE jobs SET attempts = attempts + 1, last_error = ?1, leased_until = NULL, leased_at = NULL
          WHERE leased_until IS NOT NULL AND status = 'pending'",
        params![INTERRUPTED],
    )?;
    conn.execute(
        "UPDATE jobs SET leased_until = NULL, leased_at = NULL WHERE leased_until IS NOT NULL",
        [],
    )?;
    // The process that found them refused is gone; this one tries each
    // credential again before it says so.
    conn.execute("DELETE FROM refused_credentials", [])?;
    let orphans = conn.execute(
        "DELETE FROM jobs WHERE status = 'pending'
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = jobs.delivery_id)",
        [],
    )?;
    Ok(Released {
        interrupted,
        orphans,
    })
}

pub(super) fn release(conn: &Connection, job_ids: &[i64]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs SET leased_until = NULL, leased_at = NULL WHERE id = ?1 AND status = 'pending'",
    )?;
    for id in job_ids {
        stmt.execute(params![id])?;
    }
    Ok(())
}

/// Replaces a failed delivery's outcome with a new rendering, in one
/// transaction, so that a concurrent redelivery finds it no longer failed.
///
/// After a render failure the delivery has no jobs: the new ones are
/// inserted, and its dedupe key, which may never have been stored, is
/// checked against the other deliveries first. After a failure at GitHub the
/// jobs given replace the failed jobs of the same targets; delivered targets
/// are not touched.
pub(super) fn rerender(
    conn: &Connection,
    delivery_id: &str,
    rendering: &Rerendering,
    now_ms: i64,
) -> Result<Rerendered, StoreError> {
    let row: Option<(String, String, i64)> = conn
        .query_row(
            "SELECT status, route, (SELECT COUNT(*) FROM jobs WHERE delivery_id = ?1) FROM deliveries WHERE id = ?1",
            params![delivery_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((status, route, job_count)) = row else {
        return Ok(Rerendered::NotFailed);
    };
    if status != Status::Failed.as_str() {
        return Ok(Rerendered::NotFailed);
    }
    // A delivery that failed to render says why it does not render, and a
    // new rendering's failure is the newer reason. One that failed at
    // GitHub keeps its targets' reasons: why it was not sent again (its
    // route gone for a while, say) is told to whoever asked, and would
    // otherwise hide GitHub's answer for good.
    let stay_failed = |reason: &str| {
        let replaces_error = job_count == 0;
        keep_failed(conn, delivery_id, reason, replaces_error, now_ms)
    };
    match rendering {
        Rerendering::Failed(reason) => {
            return stay_failed(reason);
        }
        Rerendering::Jobs { jobs, .. } if jobs.is_empty() => {
            return stay_failed("nothing to send");
        }
        Rerendering::Jobs { jobs, dedupe_key } if job_count == 0 => {
            let delivery = (delivery_id, route.as_str());
            if let Some(original_id) =
                queue_first_jobs(conn, delivery, jobs, dedupe_key.as_deref(), now_ms)?
            {
                stay_failed(&Rerendered::duplicate_reason(&original_id))?;
                return Ok(Rerendered::Duplicate { original_id });
            }
        }
        Rerendering::AsRendered { targets } => {
            if requeue_as_rendered(conn, (delivery_id, &route), targets, now_ms)? == 0 {
                return stay_failed(
                    "nothing to send: none of its failed targets is in the route now",
                );
            }
        }
        Rerendering::Jobs { jobs, .. } => {
            if replace_failed_jobs(conn, (delivery_id, &route), jobs, now_ms)? == 0 {
                return stay_failed(
                    "nothing to send: none of its failed targets was rendered again",
                );
            }
        }
    }
    // Failed jobs left out of the queuing (their targets left the route)
    // keep it failed.
    settle_delivery(conn, delivery_id, now_ms)?;
    Ok(Rerendered::Queued)
}

/// Keeps a failed delivery failed, with `reason` as its error when
/// `replaces_error`.
fn keep_failed(
    conn: &Connection,
    delivery_id: &str,
    reason: &str,
    replaces_error: bool,
    now_ms: i64,
) -> Result<Rerendered, StoreError> {
    // Its other targets may still be being sent: it is finished only
    // once none is. A delivery already finished keeps the time it
    // finished: retention counts from it, and `redeliver --failed --since`
    // reads it, so a redelivery that changes nothing must neither keep the
    // delivery from being pruned nor offer it again at every run.
    conn.execute(
        "UPDATE deliveries SET error = CASE WHEN ?4 THEN ?2 ELSE error END,
             finished_at = CASE
                 WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = ?1 AND status = 'pending') THEN NULL
                 ELSE COALESCE(finished_at, ?3) END
         WHERE id = ?1",
        params![delivery_id, reason, now_ms, replaces_error],
    )?;
    Ok(Rerendered::StillFailed(reason.to_string()))
}

/// Queues the first jobs of a delivery whose rendering failed, with its
/// dedupe key, unless another delivery of the route has that key: then
/// nothing is queued and this answers that delivery's id.
fn queue_first_jobs(
    conn: &Connection,
    (delivery_id, route): (&str, &str),
    jobs: &[NewJob],
    dedupe_key: Option<&str>,
    now_ms: i64,
) -> Result<Option<String>, StoreError> {
    if let Some(key) = dedupe_key {
        let original: Option<String> = conn
            .prepare_cached(
                "SELECT id FROM deliveries WHERE route = ?1 AND dedupe_key = ?2 AND id != ?3
                 UNION ALL
                 SELECT delivery_id FROM coalesced_keys WHERE route = ?1 AND dedupe_key = ?2 AND delivery_id != ?3
                 LIMIT 1",
            )?
            .query_row(params![route, key, delivery_id], |r| r.get(0))
            .optional()?;
        if original.is_some() {
            return Ok(original);
        }
        conn.execute(
            "UPDATE deliveries SET dedupe_key = ?2 WHERE id = ?1",
            params![delivery_id, key],
        )?;
    }
    insert_jobs_due(conn, (delivery_id, route), jobs, now_ms, now_ms, None)?;
    Ok(None)
}

/// Queues again, as first rendered, the failed jobs of `targets`; answers
/// how many.
fn requeue_as_rendered(
    conn: &Connection,
    (delivery_id, route): (&str, &str),
    targets: &[usize],
    now_ms: i64,
) -> Result<usize, StoreError> {
    let mut requeue = conn.prepare_cached(
        "UPDATE jobs SET status = 'pending', next_attempt_at = ?3, created_at = ?3, failures = 0,
             leased_until = NULL, leased_at = NULL, finished_at = NULL, last_error = NULL, route = ?4
         WHERE delivery_id = ?1 AND target_index = ?2 AND status = 'failed'",
    )?;
    let mut requeued = 0;
    for target in targets {
        requeued += requeue.execute(params![delivery_id, *target as i64, now_ms, route])?;
    }
    Ok(requeued)
}

/// Replaces the failed jobs of the targets rendered again by `jobs`, and
/// queues them; answers how many.
fn replace_failed_jobs(
    conn: &Connection,
    (delivery_id, route): (&str, &str),
    jobs: &[NewJob],
    now_ms: i64,
) -> Result<usize, StoreError> {
    // A requeued job is young again: `retry.give_up_after` counts from the
    // redelivery, not from the webhook's arrival, and `retry.max_attempts`
    // from zero. The last error was the failure's: listed beside a pending
    // job it would read as the reason of a retry.
    let mut replace = conn.prepare_cached(
        "UPDATE jobs SET repo = ?3, label = ?4, path = ?5, body = ?6, status = 'pending',
             next_attempt_at = ?7, created_at = ?7, failures = 0, leased_until = NULL, leased_at = NULL, finished_at = NULL,
             last_error = NULL, route = ?8
         WHERE delivery_id = ?1 AND target_index = ?2 AND status = 'failed'",
    )?;
    let mut replaced = 0;
    for job in jobs {
        replaced += replace.execute(params![
            delivery_id,
            job.target_index as i64,
            job.repo,
            job.label,
            job.path,
            job.body,
            now_ms,
            route
        ])?;
    }
    Ok(replaced)
}

fn summary_from_row(conn: &Connection, row: &Row<'_>) -> rusqlite::Result<DeliverySummary> {
    let id: String = row.get(0)?;
    let status: String = row.get(2)?;
    let targets = conn
        .prepare_cached(
            "SELECT target_index, repo, label, status, attempts, last_error, result, failures FROM jobs WHERE delivery_id = ?1 ORDER BY target_index",
        )?
        .query_map(params![id], |r| {
            let status: String = r.get(3)?;
            Ok(JobSummary {
                target_index: r.get::<_, i64>(0)? as usize,
                repo: r.get(1)?,
                label: r.get(2)?,
                status: Status::parse(&status).unwrap_or(Status::Pending),
                attempts: r.get::<_, i64>(4)? as u32,
                counted_attempts: r.get::<_, i64>(7)? as u32,
                last_error: r.get(5)?,
                result: r
                    .get::<_, Option<String>>(6)?
                    .and_then(|text| serde_json::from_str(&text).ok()),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeliverySummary {
        id,
        route: row.get(1)?,
        status: Status::parse(&status).unwrap_or(Status::Pending),
        received_at_ms: row.get(3)?,
        finished_at_ms: row.get(4)?,
        error: row.get(5)?,
        coalesced: row.get::<_, i64>(6)? as u32,
        targets,
    })
}

pub(super) fn list(conn: &Connection, f: &ListFilter) -> Result<Vec<DeliverySummary>, StoreError> {
    if f.route.is_none() && f.status.is_none() {
        return list_across_routes(conn, f);
    }
    let limit = if f.limit == 0 { 50 } else { f.limit } as i64;
    // Only the filters given are written into the statement: SQLite cannot
    // use an index for `(?1 IS NULL OR status = ?1)`, and listing a status
    // or paging far down would walk every delivery newest first. Each
    // combination is its own cached statement; the parameters keep their
    // numbers whichever are used.
    let mut stmt = conn.prepare_cached(&list_statement(f))?;
    bind_list_filter(&mut stmt, f, limit)?;
    let mut rows = stmt.raw_query();
    let mut listed = Vec::new();
    while let Some(row) = rows.next()? {
        listed.push(summary_from_row(conn, row)?);
    }
    Ok(listed)
}

/// Binds the filters [`list_statement_of`] wrote, each at its number.
fn bind_list_filter(
    stmt: &mut rusqlite::CachedStatement<'_>,
    f: &ListFilter,
    limit: i64,
) -> Result<(), StoreError> {
    stmt.raw_bind_parameter(4, limit)?;
    stmt.raw_bind_parameter(5, f.offset as i64)?;
    if let Some(status) = f.status {
        stmt.raw_bind_parameter(1, status.as_str())?;
    }
    if let Some(route) = &f.route {
        stmt.raw_bind_parameter(2, route)?;
    }
    if let Some(since_ms) = f.since_ms {
        stmt.raw_bind_parameter(3, since_ms)?;
    }
    if let Some((before_ms, before_id)) = &f.before {
        stmt.raw_bind_parameter(6, before_ms)?;
        stmt.raw_bind_parameter(7, before_id)?;
    }
    Ok(())
}

/// The route after `?1` in `deliveries_route`, found by a seek: listing
/// every route takes them one by one without reading their deliveries.
pub(super) const NEXT_LISTED_ROUTE: &str =
    "SELECT route FROM deliveries WHERE route > ?1 ORDER BY route LIMIT 1";

/// Every route's deliveries, newest first: each route's newest are read
/// from `deliveries_route` and merged, so that no page walks the deliveries
/// of every route by arrival (which would need an index of their own,
/// written by every webhook accepted). Each route is read a batch at a
/// time, from where its last batch ended, as the merge reaches it: a page
/// at any offset reads about its offset and limit in all, plus one batch
/// per route, and holds no more than a batch per route.
fn list_across_routes(
    conn: &Connection,
    f: &ListFilter,
) -> Result<Vec<DeliverySummary>, StoreError> {
    let limit = if f.limit == 0 { 50 } else { f.limit };
    let batch = limit.saturating_add(f.offset).min(MERGE_BATCH);
    let mut routes = Vec::new();
    // The newest unlisted delivery of each route, newest first, with the
    // route's place in `routes`; ties on time go to the greater id, as in
    // the listing's `ORDER BY received_at DESC, id DESC`.
    let mut heads = BinaryHeap::new();
    let mut next_route = conn.prepare_cached(NEXT_LISTED_ROUTE)?;
    let mut route = String::new();
    while let Some(next) = next_route
        .query_row(params![route], |row| row.get::<_, String>(0))
        .optional()?
    {
        route = next;
        let mut cursor = RouteCursor {
            route: route.clone(),
            read: VecDeque::new(),
            after: f.before.clone(),
            exhausted: false,
        };
        if let Some(head) = cursor.next(conn, f, batch)? {
            heads.push((head, routes.len()));
        }
        routes.push(cursor);
    }
    let mut by_id = conn.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM deliveries WHERE id = ?1"
    ))?;
    let mut skipped = 0;
    let mut listed = Vec::new();
    while listed.len() < limit {
        let Some(((_, id), place)) = heads.pop() else {
            break;
        };
        if let Some(head) = routes[place].next(conn, f, batch)? {
            heads.push((head, place));
        }
        if skipped < f.offset {
            skipped += 1;
            continue;
        }
        if let Some(summary) = by_id
            .query_row(params![id], |row| summary_from_row(conn, row))
            .optional()?
        {
            listed.push(summary);
        }
    }
    Ok(listed)
}

/// The most deliveries of one route read at once when every route's are
/// merged. Small in tests, so that they cross batches.
const MERGE_BATCH: usize = if cfg!(test) { 3 } else { 256 };

/// One route's deliveries in the listing's order, as (received_at, id),
/// read from the store a batch at a time.
struct RouteCursor {
    route: String,
    read: VecDeque<(i64, String)>,
    /// Where the next batch starts: after the last one read, or after the
    /// listing's own `before`.
    after: Option<(i64, String)>,
    exhausted: bool,
}

impl RouteCursor {
    fn next(
        &mut self,
        conn: &Connection,
        f: &ListFilter,
        batch: usize,
    ) -> Result<Option<(i64, String)>, StoreError> {
        if self.read.is_empty() && !self.exhausted {
            let of_route = ListFilter {
                route: Some(self.route.clone()),
                limit: batch,
                offset: 0,
                before: self.after.clone(),
                ..f.clone()
            };
            let mut stmt = conn.prepare_cached(&list_statement_of(&of_route, "received_at, id"))?;
            bind_list_filter(&mut stmt, &of_route, batch as i64)?;
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next()? {
                self.read.push_back((row.get(0)?, row.get(1)?));
            }
            self.exhausted = self.read.len() < batch;
            self.after = self.read.back().cloned().or(self.after.take());
        }
        Ok(self.read.pop_front())
    }
}

/// The columns [`summary_from_row`] reads.
const SUMMARY_COLUMNS: &str = "id, route, status, received_at, finished_at, error, coalesced";

/// The listing's statement with only the filters given.
pub(super) fn list_statement(f: &ListFilter) -> String {
    list_statement_of(f, SUMMARY_COLUMNS)
}

fn list_statement_of(f: &ListFilter, columns: &str) -> String {
    let mut conditions = Vec::new();
    if f.status.is_some() {
        conditions.push("status = ?1");
    }
    if f.route.is_some() {
        conditions.push("route = ?2");
    }
    if f.since_ms.is_some() {
        conditions.push("received_at >= ?3");
    }
    if f.before.is_some() {
        conditions.push("received_at <= ?6 AND (received_at < ?6 OR id < ?7)");
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT {columns} FROM deliveries
         {filter}
         ORDER BY received_at DESC, id DESC LIMIT ?4 OFFSET ?5"
    )
}

pub(super) fn get(
    conn: &Connection,
    id: &str,
) -> Result<Option<(DeliverySummary, Vec<AttemptSummary>)>, StoreError> {
    let summary = conn
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries WHERE id = ?1"
        ))?
        .query_row(params![id], |row| summary_from_row(conn, row))
        .optional()?;
    let Some(summary) = summary else {
        return Ok(None);
    };
    let attempts = conn
        .prepare_cached(
            "SELECT j.target_index, COALESCE(a.repo, j.repo), a.started_at, a.duration_ms, a.status_code, a.detail
             FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.delivery_id = ?1 ORDER BY a.started_at, a.id",
        )?
        .query_map(params![id], |r| {
            Ok(AttemptSummary {
                target_index: r.get::<_, i64>(0)? as usize,
                repo: r.get(1)?,
                started_at_ms: r.get(2)?,
                duration_ms: r.get(3)?,
                status_code: r.get::<_, Option<i64>>(4)?.map(|c| c as u16),
                detail: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((summary, attempts)))
}

pub(super) fn detail(conn: &Connection, id: &str) -> Result<Option<DeliveryDetail>, StoreError> {
    let Some((delivery, attempts)) = get(conn, id)? else {
        return Ok(None);
    };
    // A row written by hand, or by a relay that stored requests otherwise,
    // still shows the rest.
    let request = conn
        .prepare_cached("SELECT request FROM deliveries WHERE id = ?1")?
        .query_row(params![id], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|text| serde_json::from_str::<StoredRequest>(&text).ok());
    let sent = conn
        .prepare_cached(
            "SELECT target_index, repo, path, body FROM jobs WHERE delivery_id = ?1 ORDER BY target_index",
        )?
        .query_map(params![id], |r| {
            let body: String = r.get(3)?;
            Ok(SentRequest {
                target_index: r.get::<_, i64>(0)? as usize,
                repo: r.get(1)?,
                method: "POST",
                path: r.get(2)?,
                body: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(DeliveryDetail {
        delivery,
        attempts,
        request,
        sent,
    }))
}

/// When a failed delivery last failed: its latest failed job's end, or,
/// without one (it failed to render), its own end, which a redelivery that
/// leaves it failed moves to then. `--since` reads this, not the arrival:
/// after an alert, a delivery that retried for hours before it failed is
/// one of those to send again.
macro_rules! failed_at {
    () => {
        "COALESCE((SELECT MAX(finished_at) FROM jobs WHERE delivery_id = deliveries.id AND status = 'failed'),
                  finished_at, received_at)"
    };
}

pub(super) const FAILED_BY_ID: &str = concat!(
    "SELECT id, route, received_at, request FROM deliveries
     WHERE id = ?3 AND status = 'failed' AND (?1 IS NULL OR route = ?1) AND (?2 IS NULL OR ",
    failed_at!(),
    " >= ?2)"
);
/// A page of the failed deliveries, after the one received at `?3` with
/// id `?4`: the bound on `received_at` alone lets SQLite start the page
/// in `deliveries_status` instead of walking the pages before it.
const FAILED_DELIVERIES: &str = concat!(
    "SELECT id, route, received_at, request FROM deliveries
     WHERE status = 'failed' AND (?1 IS NULL OR route = ?1) AND (?2 IS NULL OR ",
    failed_at!(),
    " >= ?2)
       AND received_at >= ?3 AND (received_at > ?3 OR id > ?4)
     ORDER BY received_at, id LIMIT ?5"
);

/// Where a page of failed deliveries starts: after the delivery received
/// at `.0` with id `.1`.
pub type FailedCursor = (i64, String);

/// Which failed deliveries [`failed`] reads.
pub(super) enum FailedSelection<'a> {
    /// The one with this id.
    One(&'a str),
    /// Up to `limit`, in the order they were received, after `after`.
    Page {
        after: Option<&'a FailedCursor>,
        limit: usize,
    },
}

pub(super) fn failed(
    conn: &Connection,
    route: Option<&str>,
    since_ms: Option<i64>,
    selection: FailedSelection<'_>,
) -> Result<Vec<FailedDelivery>, StoreError> {
    // One delivery is found by its key: with `(?3 IS NULL OR id = ?3)`
    // SQLite would walk every failed delivery to find it.
    let read = |r: &Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
    let mut by_id;
    let mut all;
    let rows = match selection {
        FailedSelection::One(id) => {
            by_id = conn.prepare_cached(FAILED_BY_ID)?;
            by_id.query_map(params![route, since_ms, id], read)?
        }
        FailedSelection::Page { after, limit } => {
            let (received_at, id) = after.map_or((i64::MIN, ""), |(at, id)| (*at, id.as_str()));
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            all = conn.prepare_cached(FAILED_DELIVERIES)?;
            all.query_map(params![route, since_ms, received_at, id, limit], read)?
        }
    };
    let mut out = Vec::new();
    for row in rows {
        let (id, route, received_at_ms, request): (String, String, i64, String) = row?;
        // A request that cannot be read back fails its own redelivery, not
        // the others'.
        let request = serde_json::from_str::<StoredRequest>(&request).map_err(|e| e.to_string());
        let rendered_as = conn
            .prepare_cached(
                "SELECT rendered_as_id, rendered_as_at FROM jobs
                 WHERE delivery_id = ?1 AND rendered_as_id IS NOT NULL LIMIT 1",
            )?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let targets = conn
            .prepare_cached(
                "SELECT target_index, label, path, body, status = 'failed' FROM jobs WHERE delivery_id = ?1 ORDER BY target_index",
            )?
            .query_map(params![id], |r| {
                Ok(StoredTarget {
                    index: r.get::<_, i64>(0)? as usize,
                    label: r.get(1)?,
                    path: r.get(2)?,
                    body: r.get(3)?,
                    failed: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        out.push(FailedDelivery {
            id,
            route,
            received_at_ms,
            request,
            targets,
            rendered_as,
        });
    }
    Ok(out)
}

pub(super) const UNTRIED_JOBS: &str =
    "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND attempts = 0";
pub(super) const RETRYING_JOBS: &str =
    "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND attempts > 0";
pub(super) const FAILED_JOBS: &str = "SELECT COUNT(*) FROM jobs WHERE status = 'failed'";
/// Failed deliveries with no jobs: webhooks that failed to render, each
/// waiting for a fixed routes.yaml and `redeliver` as a failed job does.
pub(super) const UNRENDERED_DELIVERIES: &str = "SELECT COUNT(*) FROM deliveries
     WHERE status = 'failed' AND NOT EXISTS (SELECT 1 FROM jobs WHERE delivery_id = deliveries.id)";

pub(super) fn depth(conn: &Connection) -> Result<QueueDepth, StoreError> {
    // Each count is read from an index holding only the jobs it counts
    // (`jobs_untried`, `jobs_retried`, `jobs_failed`), so a scrape costs
    // what is queued or failed, not the delivered jobs kept for
    // `retention`; the deliveries that failed to render are found among
    // the failed ones (`deliveries_status`). One statement, so that the
    // counts come from one snapshot.
    let (untried, retrying, failed, unrendered): (i64, i64, i64, i64) = conn
        .prepare_cached(&format!(
            "SELECT ({UNTRIED_JOBS}), ({RETRYING_JOBS}), ({FAILED_JOBS}), ({UNRENDERED_DELIVERIES})"
        ))?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    Ok(QueueDepth {
        pending: untried as u64,
        retrying: retrying as u64,
        failed: (failed + unrendered) as u64,
    })
}

/// Finished deliveries past the cutoff. A delivery finishes after it was
/// received, so `received_at < ?1` only narrows the search, and lets the
/// status index bound it: without it the last batch of every run read
/// every finished delivery kept. A failed delivery whose other targets are
/// still being sent has no `finished_at`, and is kept.
pub(super) const PRUNABLE: &str = "SELECT id FROM deliveries
     WHERE status IN ('delivered', 'failed') AND received_at < ?1
       AND finished_at < ?1
     LIMIT ?2";

/// Deletes up to `limit` finished deliveries (delivered or failed) that
/// finished before `cutoff_ms`, with their jobs and attempts. Pending
/// deliveries are never pruned, however old.
pub(super) fn prune(conn: &Connection, cutoff_ms: i64, limit: usize) -> Result<usize, StoreError> {
    let deleted = conn
        .prepare_cached(&format!("DELETE FROM deliveries WHERE id IN ({PRUNABLE})"))?
        .execute(params![cutoff_ms, limit as i64])?;
    Ok(deleted)
}
