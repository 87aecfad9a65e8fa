//! The durable reference of the benchmarks: the least a server can do to
//! accept a webhook durably. It checks the HMAC signature, parses the JSON
//! body, evaluates the bench route's `when` and renders its payload with
//! minijinja, then appends one row (the body and the payload) to a single
//! SQLite table without indexes. One writer thread commits every waiting row
//! in one transaction (`synchronous=FULL`, WAL) and only then answers each
//! request 202.
//!
//! It stores what a relay needs at the least and keeps no index, no
//! delivery record, no job queue, no metrics and no logs, so its rate is an
//! upper bound for any durable relay on the machine: what it loses against
//! the ceiling is the cost of parsing and of the commit itself; what the
//! relay loses against it is the cost of everything else the relay does.
//!
//! With `--rows relay` it writes instead the rows the relay writes for each
//! webhook, into the relay's own schema (`src/store/schema.sql` and the
//! queue's index, `src/store/jobs_untried.sql`): a delivery
//! holding the request as received (headers and body, as JSON text) and one
//! job holding the rendered dispatch, with their indexes and foreign key.
//! The two variants side by side split the relay's distance from the
//! reference into what it records and how it handles a request.
//!
//! With `--rows intake` it writes the same rows in two steps: the group
//! commit before each answer appends one row per webhook to an `inbox`
//! table (the request as received and the rendered dispatch), and whenever
//! no request waits, the writer moves up to [`EXPAND_AT_ONCE`] inbox rows
//! into the relay's delivery and job rows in one transaction of its own.
//! It shows what a relay would gain by building its queue after the answer
//! instead of before it.
//!
//! With `--upto render` it answers 202 as soon as the payload is rendered,
//! and with `--upto handoff` it passes each request to the writer thread,
//! which answers without writing anything. The two split the reference's
//! own distance from the ceiling into the work on the request, the passing
//! of each request to one writer, and the commit.
//!
//! Usage: `group_commit ADDR DB [--rows relay|intake] [--upto render|handoff]` with
//! `BENCH_SECRET` set to the HMAC secret.

use std::collections::BTreeMap;
use std::sync::mpsc;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use dispatch_relay::store::EncodedRequest;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::oneshot;

struct Row {
    id: String,
    /// The request as the relay stores it, in `--rows relay` and
    /// `--rows intake` modes.
    request: Option<EncodedRequest>,
    body: web::Bytes,
    payload: String,
    received_at_ms: i64,
    reply: oneshot::Sender<()>,
}

/// Where the reference stops and answers 202.
#[derive(Clone, Copy, PartialEq)]
enum Upto {
    /// After rendering: no writer, nothing stored.
    Render,
    /// After the writer thread took the request, without writing it.
    Handoff,
    /// After the group commit.
    Commit,
}

/// What the writer stores for each webhook.
#[derive(Clone, Copy, PartialEq)]
enum Rows {
    /// One row of its own, in a table without indexes.
    One,
    /// The relay's delivery and job, in the relay's schema.
    Relay,
    /// One inbox row before the answer, moved into the relay's delivery and
    /// job when the writer is idle.
    Intake,
}

/// The most inbox rows the writer moves into the relay's rows in one
/// transaction, so that a request arriving meanwhile waits for one such
/// transaction at most.
const EXPAND_AT_ONCE: usize = 512;

struct State {
    rows: Rows,
    upto: Upto,
    secret: Vec<u8>,
    templates: minijinja::Environment<'static>,
    writer: mpsc::Sender<Row>,
}

const PAYLOAD: &str = r#"{"event_type":"cms-{{ body.model }}","client_payload":{"model":{{ body.model|tojson }},"entry":"{{ body.entry.id }}","locale":{{ body.entry.locale|tojson }},"action":{{ body.event|tojson }},"delivery":"{{ id }}"}}"#;

async fn accept(request: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let signature = request
        .headers()
        .get("x-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|v| hex::decode(v).ok());
    let mut mac = Hmac::<Sha256>::new_from_slice(&state.secret).expect("any key length");
    mac.update(&body);
    if signature.is_none_or(|s| mac.verify_slice(&s).is_err()) {
        return HttpResponse::Unauthorized().json(serde_json::json!({"error": "bad signature"}));
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return HttpResponse::BadRequest().json(serde_json::json!({"error": e.to_string()}));
        }
    };
    let event = value.get("event").and_then(|e| e.as_str()).unwrap_or("");
    if !["entry.publish", "entry.unpublish"].contains(&event) {
        return HttpResponse::Ok().json(serde_json::json!({"status": "skipped"}));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let payload = state.templates.get_template("payload").and_then(|t| {
        t.render(
            minijinja::context! { body => minijinja::Value::from_serialize(&value), id => &id },
        )
    });
    let payload = match payload {
        Ok(p) => p,
        Err(e) => {
            return HttpResponse::UnprocessableEntity()
                .json(serde_json::json!({"error": e.to_string()}));
        }
    };
    if state.upto == Upto::Render {
        return HttpResponse::Accepted().json(serde_json::json!({"id": id}));
    }
    let request = (state.rows != Rows::One).then(|| stored_request(&request, &body));
    let (reply, answer) = oneshot::channel();
    let row = Row {
        id: id.clone(),
        request,
        body,
        payload,
        received_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        reply,
    };
    if state.writer.send(row).is_err() {
        return HttpResponse::ServiceUnavailable().finish();
    }
    match answer.await {
        Ok(_) => HttpResponse::Accepted().json(serde_json::json!({"id": id})),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// The request as the relay stores it, encoded by the relay's own code.
fn stored_request(request: &HttpRequest, body: &[u8]) -> EncodedRequest {
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    dispatch_relay::inbound::stored_request(Some("application/json"), &[], &headers, body)
}

/// Commits every waiting row in one transaction, then answers each.
/// With `upto` short of the commit, it answers each without writing. With
/// `--rows intake`, it empties the inbox whenever no request waits.
fn write(mut conn: rusqlite::Connection, rows: mpsc::Receiver<Row>, upto: Upto, mode: Rows) {
    loop {
        let first = if mode == Rows::Intake {
            match rows.try_recv() {
                Ok(row) => row,
                Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => {
                    if expand_inbox(&mut conn).expect("expand the inbox") > 0 {
                        continue;
                    }
                    match rows.recv() {
                        Ok(row) => row,
                        Err(_) => return,
                    }
                }
            }
        } else {
            match rows.recv() {
                Ok(row) => row,
                Err(_) => return,
            }
        };
        let mut batch = vec![first];
        batch.extend(rows.try_iter().take(511));
        if upto == Upto::Commit {
            let tx = conn.transaction().expect("begin");
            for row in &batch {
                insert(&tx, row, mode).expect("insert");
            }
            tx.commit().expect("commit");
        }
        for row in batch {
            let _ = row.reply.send(());
        }
    }
}

fn insert(tx: &rusqlite::Transaction<'_>, row: &Row, mode: Rows) -> rusqlite::Result<()> {
    match (&row.request, mode) {
        (Some(request), Rows::Relay) => insert_relay_rows(
            tx,
            &row.id,
            row.received_at_ms,
            request.as_str(),
            &row.payload,
        ),
        (Some(request), Rows::Intake) => {
            tx.prepare_cached(
                "INSERT INTO inbox (id, received_at, request, payload) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(rusqlite::params![
                row.id,
                row.received_at_ms,
                request.as_str(),
                row.payload
            ])?;
            Ok(())
        }
        _ => {
            tx.prepare_cached(
                "INSERT INTO intake (received_at, body, payload) VALUES (?1, ?2, ?3)",
            )?
            .execute(rusqlite::params![
                row.received_at_ms,
                &row.body[..],
                row.payload
            ])?;
            Ok(())
        }
    }
}

/// Writes a webhook as the relay does: its delivery and its one job.
fn insert_relay_rows(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    received_at_ms: i64,
    request: &str,
    payload: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO deliveries (id, route, received_at, status, request) VALUES (?1, 'cms', ?2, 'pending', ?3)",
    )?
    .execute(rusqlite::params![id, received_at_ms, request])?;
    tx.prepare_cached(
        "INSERT INTO jobs (delivery_id, route, target_index, repo, label, path, body, status, next_attempt_at, created_at)
         VALUES (?1, 'cms', 0, 'acme/bench', 'cms-article', '/repos/acme/bench/dispatches', ?2, 'pending', ?3, ?3)",
    )?
    .execute(rusqlite::params![id, payload, received_at_ms])?;
    Ok(())
}

/// Moves the oldest inbox rows into the relay's rows in one transaction
/// and returns how many it moved.
fn expand_inbox(conn: &mut rusqlite::Connection) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let waiting: Vec<(i64, String, i64, String, String)> = tx
        .prepare_cached(
            "SELECT seq, id, received_at, request, payload FROM inbox ORDER BY seq LIMIT ?1",
        )?
        .query_map([EXPAND_AT_ONCE as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (_, id, received_at_ms, request, payload) in &waiting {
        insert_relay_rows(&tx, id, *received_at_ms, request, payload)?;
    }
    if let Some((last, ..)) = waiting.last() {
        tx.execute("DELETE FROM inbox WHERE seq <= ?1", [last])?;
    }
    tx.commit()?;
    Ok(waiting.len())
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18083".into());
    let usage = "usage: group_commit ADDR DB [--rows relay|intake] [--upto render|handoff]";
    let db = args.next().expect(usage);
    let (mut mode, mut upto) = (Rows::One, Upto::Commit);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next().as_deref()) {
            ("--rows", Some("relay")) => mode = Rows::Relay,
            ("--rows", Some("intake")) => mode = Rows::Intake,
            ("--upto", Some("render")) => upto = Upto::Render,
            ("--upto", Some("handoff")) => upto = Upto::Handoff,
            _ => panic!("{usage}"),
        }
    }
    let secret = std::env::var("BENCH_SECRET").expect("BENCH_SECRET is not set");

    let conn = rusqlite::Connection::open(db).expect("open the store");
    // The relay's own settings: 16 KiB pages, WAL, foreign keys checked.
    conn.execute_batch(
        "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )
    .expect("set up the store");
    // The relay's tables, and the queue's index, which the relay adds
    // after them.
    let relay_schema = concat!(
        include_str!("../src/store/schema.sql"),
        include_str!("../src/store/jobs_untried.sql")
    );
    let schema = match mode {
        Rows::One => {
            "CREATE TABLE IF NOT EXISTS intake (
                 id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL, body BLOB NOT NULL, payload TEXT NOT NULL)"
        }
        Rows::Relay => relay_schema,
        Rows::Intake => &format!(
            "{relay_schema}
             CREATE TABLE IF NOT EXISTS inbox (
                 seq INTEGER PRIMARY KEY, id TEXT NOT NULL, received_at INTEGER NOT NULL,
                 request TEXT NOT NULL, payload TEXT NOT NULL);"
        ),
    };
    conn.execute_batch(schema).expect("create the tables");
    let (writer, rows) = mpsc::channel();
    std::thread::spawn(move || write(conn, rows, upto, mode));

    let mut templates = minijinja::Environment::new();
    templates
        .add_template("payload", PAYLOAD)
        .expect("the template parses");
    let state = web::Data::new(State {
        rows: mode,
        upto,
        secret: secret.into_bytes(),
        templates,
        writer,
    });
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/hooks/{route}", web::post().to(accept))
    })
    .workers(workers)
    .bind(addr)?
    .run()
    .await
}
