//! The admin API: list deliveries, show one with its attempts, redeliver.
//! Disabled unless `RELAY_ADMIN_TOKEN` is set; the bearer token is compared
//! in constant time.

use actix_web::{HttpRequest, HttpResponse, web};
use subtle::ConstantTimeEq;

use super::error::IngressError;
use super::state::AppState;
use crate::clock::now_ms;
use crate::redeliver::{self, Redelivered};
use crate::store::{DeliverySummary, ListFilter, QueueHolds, Status, StoreError, delivery_id};

fn authorize(state: &AppState, request: &HttpRequest) -> Result<(), IngressError> {
    let Some(expected) = &state.admin_token else {
        return Err(IngressError::AdminDisabled);
    };
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
        Ok(())
    } else {
        // Said at most once in a while per client, with how many went
        // unsaid, so that someone guessing the token shows without flooding
        // the log; never with what was presented. The client behind trusted
        // proxies; when their `X-Forwarded-For` cannot be read, the peer,
        // so that the line names someone.
        let trusted = &state.routes().config.server.trusted_proxies;
        let client = super::webhook::client_ip(request, trusted)
            .or_else(|| request.peer_addr().map(|addr| addr.ip().to_canonical()));
        let from = client.map_or_else(|| "(unknown)".to_string(), |c| c.to_string());
        if let Some(unlogged) = state.refusal_to_log("admin", from) {
            tracing::warn!(
                path = request.path(),
                client = client.map(tracing::field::display),
                unlogged,
                "Refused an admin request without the admin token"
            );
        }
        Err(IngressError::AdminUnauthorized)
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme name
/// is case-insensitive (RFC 9110), so `BEARER` and `bearer` work too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// The listing's query, read by hand so that each wrong parameter is
/// named in its 400 with what it takes.
#[derive(Debug, Default)]
struct ListQuery {
    status: Option<Status>,
    route: Option<String>,
    limit: Option<usize>,
    /// Deliveries to skip, for paging through a long list. A 32-bit number,
    /// so that any value given fits SQLite's OFFSET and the sum with the
    /// page's length cannot overflow; a larger one is a 400.
    offset: Option<u32>,
    /// The `next_before` of the previous page: deliveries after it.
    before: Option<(i64, String)>,
}

/// The largest page.
const MAX_LIMIT: usize = 1000;

impl ListQuery {
    fn parse(query: &str) -> Result<ListQuery, String> {
        let mut list = ListQuery::default();
        let mut seen = std::collections::BTreeSet::new();
        for (name, value) in crate::inbound::query_pairs(query) {
            // `status=failed&status=pending` reads as "either" to some and
            // "the last" to others; a script that meant either would act on
            // one list believing it the other.
            if name != "_" && !seen.insert(name.clone()) {
                return Err(format!(
                    "`{name}` is given more than once: give each parameter once"
                ));
            }
            match name.as_str() {
                "status" => {
                    list.status = Some(Status::parse(&value).ok_or_else(|| {
                        format!("unknown status `{value}`: use pending, delivered or failed")
                    })?);
                }
                "route" if value.is_empty() => {
                    return Err("`route` is empty: give a route id, or leave it out".into());
                }
                "route" => list.route = Some(value),
                "limit" => {
                    // Any larger number, however long, gives the largest page.
                    let limit = digits(&value)
                        .map(|digits| digits.parse::<usize>().unwrap_or(usize::MAX))
                        .filter(|limit| *limit >= 1)
                        .ok_or_else(|| {
                            format!("`limit` must be a whole number from 1 to {MAX_LIMIT}, not `{value}`")
                        })?;
                    list.limit = Some(limit.min(MAX_LIMIT));
                }
                "offset" => {
                    list.offset =
                        Some(digits(&value).and_then(|d| d.parse().ok()).ok_or_else(|| {
                            format!(
                                "`offset` must be a whole number from 0 to {}, not `{value}`",
                                u32::MAX
                            )
                        })?);
                }
                "before" => {
                    list.before = Some(parse_cursor(&value).ok_or_else(|| {
                        format!(
                            "`before` must be the `next_before` of a previous page, not `{value}`"
                        )
                    })?);
                }
                // The cache buster browsers' scripts add (`_=1700000000`).
                "_" => {}
                // A misspelt filter (`stauts=failed`) would otherwise list
                // every delivery, and a script walking "the failed ones"
                // would act on all of them.
                other => {
                    return Err(format!(
                        "unknown parameter `{other}`: use status, route, limit, offset or before"
                    ));
                }
            }
        }
        Ok(list)
    }
}

/// A delivery's place in the listing, as `next_before` gives it and
/// `before` takes it: `<received_at_ms>.<id>`.
fn cursor(delivery: &DeliverySummary) -> String {
    format!("{}.{}", delivery.received_at_ms, delivery.id)
}

fn parse_cursor(text: &str) -> Option<(i64, String)> {
    let (ms, id) = text.split_once('.')?;
    Some((digits(ms)?.parse().ok()?, delivery_id(id)?))
}

/// `text` when it is a whole number written in digits only: Rust's parsing
/// also takes a sign, which no page or cursor has.
fn digits(text: &str) -> Option<&str> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

pub async fn list(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, IngressError> {
    // The token first: without it, even a malformed query says nothing
    // about the endpoint.
    authorize(&state, &request)?;
    let query = ListQuery::parse(request.query_string()).map_err(IngressError::BadRequest)?;
    let filter = ListFilter {
        status: query.status,
        route: query.route,
        since_ms: None,
        limit: query.limit.unwrap_or(50),
        offset: query.offset.unwrap_or(0) as usize,
        before: query.before,
    };
    let (filter_limit, offset) = (filter.limit, filter.offset);
    let first_page = offset == 0 && filter.before.is_none();
    let unconfigured = filter
        .route
        .clone()
        .filter(|route| state.routes().route(route).is_none());
    let deliveries = state
        .store
        .list(filter)
        .await
        .map_err(|e| store_unavailable("list deliveries", &e))?;
    // A misspelt route would otherwise list nothing, and a script walking
    // the failed ones would conclude that none failed. A route removed
    // since still lists the deliveries the store holds of it.
    if let Some(route) = unconfigured
        && first_page
        && deliveries.is_empty()
    {
        return Err(IngressError::BadRequest(format!(
            "`route`: `{route}` is not a configured route, and the store holds no delivery of it that matches"
        )));
    }
    // A script asking what is stuck also learns whether, and until when,
    // GitHub's rate limit holds every dispatch back, and which credentials
    // GitHub refuses.
    let holds = state
        .store
        .holds(now_ms())
        .await
        .map_err(|e| store_unavailable("read what holds dispatches back", &e))?;
    let full = deliveries.len() == filter_limit;
    let next_offset = full.then_some(offset + deliveries.len());
    let next_before = deliveries.last().filter(|_| full).map(cursor);
    // Written straight from the summaries: a page of fan-out deliveries can
    // hold hundreds of thousands of targets, and a `serde_json::Value` of it
    // first would take several times the memory of the answer.
    #[derive(serde::Serialize)]
    struct Page<'a> {
        deliveries: &'a [DeliverySummary],
        next_offset: Option<usize>,
        next_before: Option<String>,
        #[serde(flatten)]
        holds: QueueHolds,
    }
    Ok(HttpResponse::Ok().json(Page {
        deliveries: &deliveries,
        next_offset,
        next_before,
        holds,
    }))
}

pub async fn get(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, IngressError> {
    authorize(&state, &request)?;
    let Some(id) = delivery_id(&id) else {
        return Err(IngressError::NotADeliveryId(id.into_inner()));
    };
    match state
        .store
        .detail(&id)
        .await
        .map_err(|e| store_unavailable("read a delivery", &e))?
    {
        Some(detail) => Ok(HttpResponse::Ok().json(detail)),
        None => Err(IngressError::NotFound(id)),
    }
}

pub async fn redeliver(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, IngressError> {
    authorize(&state, &request)?;
    let Some(id) = delivery_id(&id) else {
        return Err(IngressError::NotADeliveryId(id.into_inner()));
    };
    let routes = state.routes();
    let outcome = redeliver::redeliver_one(&state.store, &routes.config, &id)
        .await
        .map_err(|e| store_unavailable("redeliver a delivery", &e))?;
    match outcome {
        Some((
            route,
            outcome @ (Redelivered::Requeued
            | Redelivered::Rerendered
            | Redelivered::RequeuedAsRendered { .. }),
        )) => {
            state.dispatcher.wake();
            tracing::info!(delivery_id = %id, route, "Redelivery requested through the admin API");
            // Set when the route's targets changed since the webhook came,
            // so its failed jobs went as first rendered, and those whose
            // targets left the route stayed failed.
            let dropped = match outcome {
                Redelivered::RequeuedAsRendered { dropped } => Some(dropped),
                _ => None,
            };
            Ok(HttpResponse::Accepted().json(serde_json::json!({
                "delivery_id": id,
                "requeued": true,
                "as_first_rendered": dropped.is_some(),
                "left_failed": dropped.unwrap_or(0),
            })))
        }
        Some((_, Redelivered::StillFailing(reason))) => Err(IngressError::Unprocessable(reason)),
        // Nothing was requeued: either there is no such delivery, or it is
        // not failed.
        None => match state.store.get(&id).await {
            Ok(None) => Err(IngressError::NotFound(id)),
            Ok(Some((summary, _))) => Err(IngressError::Conflict(format!(
                "delivery `{id}` is {}, not failed; only failed deliveries are redelivered",
                summary.status.as_str()
            ))),
            Err(e) => Err(store_unavailable("read a delivery", &e)),
        },
    }
}

/// The answer when the store fails an admin request. The error is logged
/// here, where it is handled; the client gets a fixed message, since the
/// store's own text names files and SQL.
fn store_unavailable(what: &str, error: &StoreError) -> IngressError {
    tracing::error!(error = %error, "Could not {what} for the admin API");
    IngressError::Unavailable("the store is unavailable; retry shortly".into())
}

#[cfg(test)]
mod tests {
    use super::{ListQuery, bearer_token};

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let cases = [
            ("Bearer t0k", Some("t0k")),
            ("bearer t0k", Some("t0k")),
            ("BEARER  t0k", Some("t0k")),
            ("Basic dTpw", None),
            ("Bearer", None),
            ("t0k", None),
        ];
        for (value, expected) in cases {
            assert_eq!(bearer_token(value), expected, "{value}");
        }
    }

    #[test]
    fn the_listing_query_takes_what_the_docs_say_and_names_what_it_refuses() {
        let id = "01a20405-fc1c-7000-8000-000000000001";
        let upper = id.to_uppercase();
        let taken = [
            ("limit=7", Some(7), None),
            ("_=1700000000&limit=3", Some(3), None),
            ("limit=1001", Some(1000), None),
            ("limit=99999999999999999999999", Some(1000), None),
            (
                &*format!("before=12.{upper}"),
                None,
                Some((12, id.to_owned())),
            ),
        ];
        for (query, limit, before) in taken {
            let parsed = ListQuery::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
            assert_eq!(parsed.limit, limit, "{query}");
            assert_eq!(parsed.before, before, "{query}");
        }
        let refused = [
            ("limit=0", "`limit`"),
            ("limit=%2B2", "`limit`"),
            ("limit=-1", "`limit`"),
            ("offset=4294967296", "`offset`"),
            ("offset=+1", "`offset`"),
            ("route=", "`route`"),
            (&*format!("before=-5.{id}"), "`before`"),
            ("before=5.not-a-uuid", "`before`"),
            ("status=", "status"),
            ("stauts=failed", "unknown parameter `stauts`"),
            ("limit=2&utm=x", "`utm`"),
            (
                "status=failed&status=pending",
                "`status` is given more than once",
            ),
        ];
        for (query, named) in refused {
            let error = ListQuery::parse(query).expect_err(query);
            assert!(error.contains(named), "{query}: {error}");
        }
    }
}
