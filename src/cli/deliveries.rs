//! `dispatch-relay deliveries` and `dispatch-relay redeliver`: read and
//! re-queue deliveries in the store, which may be in use by a running relay
//! (SQLite's WAL mode lets both work at once).

use std::path::Path;

use super::{CliError, invalid, load_config, open_existing_store, runtime, store_path};
use crate::clock::now_ms;
use crate::clock::rfc3339;
use crate::config;
use crate::config::Config;
use crate::redeliver::{self, Redelivered};
use crate::store::{FailedDelivery, ListFilter, Status, Store};

/// The store location without requiring the configuration's secrets: the
/// listing commands must work even where GITHUB_TOKEN is not set.
fn store_location(config_path: &Path) -> Result<std::path::PathBuf, CliError> {
    // RELAY_DATABASE_URL wins over the file, so the file's value (and any
    // variable it needs) only matters without it.
    let from_env = super::process_setting("RELAY_DATABASE_URL").is_some();
    let configured = if from_env {
        None
    } else {
        // A file that cannot be read is said to be so: falling back to the
        // default store beside it would list another store, or none.
        let bytes =
            super::read_config_bytes(config_path).map_err(|e| invalid(anyhow::anyhow!(e)))?;
        let text = super::decode_config(config_path, bytes).map_err(CliError::Config)?;
        config::store_url(&text, &super::process_env)
            .map_err(|e| invalid(anyhow::anyhow!("{}: {e}", config_path.display())))?
    };
    store_path(config_path, configured.as_deref())
}

/// What to say of a `--route` that routes.yaml does not have: nothing when
/// it has it (or cannot be read), else a sentence naming the routes it has.
/// Deliveries of a route since removed are still in the store, so the
/// caller lists them; a route neither has is most likely a typo.
fn unknown_route(config_path: &Path, route: Option<&str>) -> Option<String> {
    let text = super::read_config_text(config_path).ok()?;
    let ids = config::route_ids(&text)?;
    not_a_route(config_path, route?, ids.iter().map(String::as_str))
}

/// The sentence for `route` when it is not one of `ids`, the routes of
/// the file at `config_path`.
fn not_a_route<'a>(
    config_path: &Path,
    route: &str,
    ids: impl Iterator<Item = &'a str> + Clone,
) -> Option<String> {
    (!ids.clone().any(|id| id == route)).then(|| {
        format!(
            "route `{route}` is not in {} (its routes: {})",
            config_path.display(),
            ids.collect::<Vec<_>>().join(", ")
        )
    })
}

pub async fn list(
    config_path: &Path,
    status: Option<String>,
    route: Option<String>,
    limit: usize,
    json: bool,
) -> Result<(), CliError> {
    let status = match status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            invalid(anyhow::anyhow!(
                "--status `{s}`: use pending, delivered or failed"
            ))
        })?),
    };
    let store = open_existing_store(&store_location(config_path)?)?;
    let unknown = unknown_route(config_path, route.as_deref());
    // One more than asked for, to tell whether more match.
    let mut deliveries = store
        .list(ListFilter {
            status,
            route,
            since_ms: None,
            limit: limit.saturating_add(1),
            offset: 0,
            before: None,
        })
        .await
        .map_err(runtime)?;
    let holds = store.holds(now_ms()).await.map_err(runtime)?;
    // Closed before printing: the last connection to close checkpoints the
    // WAL and removes it, which a stopped relay's store should not keep.
    store.close().await;
    if let Some(unknown) = unknown {
        if deliveries.is_empty() {
            // With `--status`, the store may hold others of it.
            let matching = if status.is_some() {
                " that matches"
            } else {
                ""
            };
            return Err(invalid(anyhow::anyhow!(
                "{unknown}, and the store holds no delivery of it{matching}"
            )));
        }
        eprintln!("Note: {unknown}; listing the deliveries the store holds of it.");
    }
    if deliveries.len() > limit {
        // A script counting failed deliveries would otherwise take the
        // first page for all of them.
        deliveries.truncate(limit);
        eprintln!(
            "Listed the latest {limit}; more match: raise --limit (the admin API pages through all)."
        );
    }
    if let Some(until) = holds.paused_until_ms {
        // On stderr: a note about the queue, not a row of the listing,
        // which `--json` keeps a plain array of deliveries.
        eprintln!(
            "GitHub's rate limit holds back every dispatch until {} ({} s from now).",
            rfc3339(until),
            (until - now_ms() + 999) / 1000
        );
    }
    for credential in &holds.refused_credentials {
        eprintln!(
            "GitHub refuses the credential {} (since {}): its dispatches are held, and one is tried again each minute until a new one is in place.",
            credential.credential,
            rfc3339(credential.since_ms)
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&deliveries).map_err(runtime)?
        );
        return Ok(());
    }
    if deliveries.is_empty() {
        println!("no deliveries");
        return Ok(());
    }
    print_table(&deliveries);
    Ok(())
}

/// `deliveries --id`: one delivery and every attempt to send it, as the
/// admin API's `GET /admin/deliveries/{id}` answers.
pub async fn show(config_path: &Path, id: &str, json: bool) -> Result<(), CliError> {
    let Some(id) = crate::store::delivery_id(id) else {
        return Err(invalid(anyhow::anyhow!(
            "--id `{id}` is not a delivery id (a UUID, as `deliveries` lists them)"
        )));
    };
    let store = open_existing_store(&store_location(config_path)?)?;
    let found = store.detail(&id).await.map_err(runtime);
    store.close().await;
    let Some(detail) = found? else {
        return Err(invalid(anyhow::anyhow!("no delivery `{id}` in the store")));
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&detail).map_err(runtime)?
        );
        return Ok(());
    }
    let crate::store::DeliveryDetail {
        delivery,
        attempts,
        request,
        sent,
    } = detail;
    let attempts: Vec<String> = attempts
        .iter()
        .map(|a| {
            let status = a
                .status_code
                .map_or_else(|| "no answer".to_string(), |code| code.to_string());
            format!(
                "  {}  {}  {status}  {} ms  {}",
                rfc3339(a.started_at_ms),
                a.repo,
                a.duration_ms,
                crate::text::one_line(&a.detail)
            )
        })
        .collect();
    print_table(std::slice::from_ref(&delivery));
    if let Some(request) = &request {
        print_request(request);
    }
    // Every target is listed, those still pending too: this is what is
    // sent to GitHub, whether or not it has been yet.
    if !sent.is_empty() {
        println!("TO GITHUB");
        for target in &sent {
            println!("  {}  {} {}", target.repo, target.method, target.path);
            println!("    {}", crate::text::one_line(&target.body.to_string()));
        }
    }
    if attempts.is_empty() && delivery.targets.is_empty() && delivery.status == Status::Failed {
        // A webhook that failed to render has no target to send: nothing
        // will be attempted until it is redelivered.
        println!("no attempts: nothing to send until it is redelivered");
    } else if attempts.is_empty() {
        println!("no attempts yet");
    } else {
        println!("ATTEMPTS");
        println!("{}", attempts.join("\n"));
    }
    Ok(())
}

/// The longest body `deliveries --id` prints in full; `--json` prints any.
const SHOWN_BODY_CHARS: usize = 2_000;

/// The webhook as it came in, less its credential headers (never stored).
fn print_request(request: &crate::store::StoredRequest) {
    println!("REQUEST");
    if let Some(content_type) = &request.content_type {
        println!("  content-type: {}", crate::text::one_line(content_type));
    }
    for (name, value) in &request.headers {
        println!("  {name}: {}", crate::text::one_line(value));
    }
    if !request.query.is_empty() {
        let query: Vec<String> = request
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  query: {}", crate::text::one_line(&query.join("&")));
    }
    // Cut first, so that the notes after the body are always shown.
    let length = request.body.chars().count();
    let mut body = crate::text::one_line(
        &request
            .body
            .chars()
            .take(SHOWN_BODY_CHARS)
            .collect::<String>(),
    );
    if length > SHOWN_BODY_CHARS {
        body.push_str(&format!(
            "… ({length} characters in all; --json prints it whole)"
        ));
    }
    if request.body_base64 {
        body.push_str(" (base64: the body is not UTF-8)");
    }
    println!("  body: {body}");
}

/// The deliveries as a table, each with its error and, for each target
/// still being retried, why.
fn print_table(deliveries: &[crate::store::DeliverySummary]) {
    // Wide enough for the longest route listed, so the columns after it
    // stay in line.
    let route_width = deliveries
        .iter()
        .map(|d| d.route.chars().count())
        .max()
        .unwrap_or(0)
        .max(16);
    println!(
        "{:<36}  {:<route_width$}  {:<9}  {:<24}  TARGETS",
        "ID", "ROUTE", "STATUS", "RECEIVED"
    );
    for d in deliveries {
        // A repository that gets two dispatches of one delivery (an event
        // and a workflow, say) is told apart by what each sends.
        let repeated = |repo: &str| d.targets.iter().filter(|t| t.repo == repo).count() > 1;
        let targets: Vec<String> = d
            .targets
            .iter()
            .map(|t| {
                let name = if repeated(&t.repo) {
                    format!("{}[{}]", t.repo, t.label)
                } else {
                    t.repo.clone()
                };
                format!("{name}:{}({})", t.status.as_str(), t.attempts)
            })
            .collect();
        println!(
            "{:<36}  {:<route_width$}  {:<9}  {:<24}  {}",
            d.id,
            d.route,
            d.status.as_str(),
            rfc3339(d.received_at_ms),
            targets.join(" ")
        );
        if let Some(error) = &d.error {
            // GitHub's messages hold blank lines ("Invalid request.\n\n...");
            // on one line they cannot pass for rows of the table.
            let error = crate::text::one_line(error);
            println!("{:<36}  error: {error}", "");
        }
        for t in &d.targets {
            // Why a target is still being retried, which `pending(N)` alone
            // does not say, and how many of its attempts count against
            // `retry.max_attempts` (not rate limits, nor an outage's).
            if t.status == Status::Pending
                && let Some(error) = &t.last_error
            {
                let error = crate::text::one_line(error);
                let plural = if t.attempts == 1 { "" } else { "s" };
                println!(
                    "{:<36}  {}: retrying after {} attempt{plural} ({} counted against retry.max_attempts): {error}",
                    "", t.repo, t.attempts, t.counted_attempts
                );
            }
            // A failed target's error says how many attempts counted
            // ("gave up after 2 attempts"); `failed(3)` beside it would
            // read as a contradiction without the attempts that did not.
            if t.status == Status::Failed && t.counted_attempts < t.attempts {
                println!(
                    "{:<36}  {}: {} attempts, {} counted against retry.max_attempts (rate limits and GitHub outages do not count)",
                    "", t.repo, t.attempts, t.counted_attempts
                );
            }
            if let Some(result) = &t.result {
                println!(
                    "{:<36}  {}: workflow run {} {}",
                    "",
                    t.repo,
                    result["workflow_run_id"],
                    result["html_url"].as_str().unwrap_or_default()
                );
            }
        }
    }
}

pub async fn redeliver(
    config_path: &Path,
    id: Option<String>,
    route: Option<String>,
    since: Option<String>,
) -> Result<(), CliError> {
    let loaded = load_config(config_path)?;
    // Ids are UUIDs, kept in lower case: other text is a typo, said as
    // `deliveries --id` says it, not looked up and "not found".
    let id = match id {
        None => None,
        Some(text) => Some(crate::store::delivery_id(&text).ok_or_else(|| {
            invalid(anyhow::anyhow!(
                "--id `{text}` is not a delivery id (a UUID, as `deliveries` lists them)"
            ))
        })?),
    };
    let since_ms = match since {
        None => None,
        Some(text) => {
            let duration = config::parse_duration(&text)
                .map_err(|e| invalid(anyhow::anyhow!("--since `{text}`: {e}")))?;
            Some(now_ms().saturating_sub(crate::clock::duration_ms(duration)))
        }
    };
    let store = open_existing_store(&store_path(
        config_path,
        loaded.config.store.url.as_deref(),
    )?)?;
    // Without an id, every failed delivery is redelivered, a page at a
    // time: each holds its request's body in memory.
    let mut page = match &id {
        Some(_) => {
            store
                .failed_deliveries(route.clone(), since_ms, id.clone())
                .await
        }
        None => {
            store
                .failed_deliveries_after(route.clone(), since_ms, None, REDELIVERY_PAGE)
                .await
        }
    }
    .map_err(runtime)?;
    if page.is_empty() {
        let ids = loaded.config.routes.iter().map(|r| r.id.as_str());
        if let Some(unknown) = route
            .as_deref()
            .and_then(|route| not_a_route(config_path, route, ids))
        {
            return Err(invalid(anyhow::anyhow!(
                "{unknown}, and the store holds no failed delivery of it"
            )));
        }
        if let Some(id) = id {
            // Told apart, as the admin API tells 404 from 409: a typo in
            // the id is not a delivery that needs nothing.
            let found = store.get(&id).await.map_err(runtime)?;
            return Err(invalid(match found {
                None => anyhow::anyhow!("no delivery {id} in the store"),
                Some((summary, _)) => anyhow::anyhow!(
                    "delivery {id} is {}, not failed; only failed deliveries are redelivered",
                    summary.status.as_str()
                ),
            }));
        }
        println!("no failed deliveries to redeliver");
        return Ok(());
    }
    let (mut queued, mut still_failing) = (0, 0);
    loop {
        let after = page.last().map(|d| (d.received_at_ms, d.id.clone()));
        for delivery in page {
            redeliver_and_report(
                &store,
                &loaded.config,
                delivery,
                &mut queued,
                &mut still_failing,
            )
            .await?;
        }
        // An id names one delivery: there is no next page.
        if id.is_some() {
            break;
        }
        page = store
            .failed_deliveries_after(route.clone(), since_ms, after, REDELIVERY_PAGE)
            .await
            .map_err(runtime)?;
        if page.is_empty() {
            break;
        }
    }
    store.close().await;
    println!("{queued} queued, {still_failing} still failing");
    if still_failing > 0 {
        return Err(invalid(anyhow::anyhow!(
            "{still_failing} {} still cannot be sent",
            if still_failing == 1 {
                "delivery"
            } else {
                "deliveries"
            }
        )));
    }
    Ok(())
}

/// How many failed deliveries `redeliver` reads at a time.
const REDELIVERY_PAGE: usize = 100;

/// Redelivers one failed delivery, prints what became of it and counts it.
async fn redeliver_and_report(
    store: &Store,
    config: &Config,
    delivery: FailedDelivery,
    queued: &mut usize,
    still_failing: &mut usize,
) -> Result<(), CliError> {
    let id = delivery.id.clone();
    match redeliver::redeliver(store, config, delivery)
        .await
        .map_err(runtime)?
    {
        Some(Redelivered::Requeued) => {
            *queued += 1;
            println!("{id}: failed targets rendered again and queued");
        }
        Some(Redelivered::RequeuedAsRendered { dropped }) => {
            *queued += 1;
            println!(
                "{id}: failed targets queued again as first rendered (the route's targets changed since it was received)"
            );
            if dropped > 0 {
                println!(
                    "{id}: {dropped} failed targets are no longer in the route and stay failed"
                );
            }
        }
        Some(Redelivered::Rerendered) => {
            *queued += 1;
            println!("{id}: rendered again and queued");
        }
        Some(Redelivered::StillFailing(reason)) => {
            *still_failing += 1;
            println!("{id}: still failed: {reason}");
        }
        None => println!("{id}: no longer failed, left alone"),
    }
    Ok(())
}
