//! Redelivery of failed deliveries, shared by the CLI and the admin API.
//!
//! A delivery whose jobs failed at GitHub has those jobs queued again. A
//! delivery that failed at render time is rendered again from its stored
//! request with the routes in force now, so fixing routes.yaml recovers it.
//! A delivered or pending delivery is never touched, so redelivering twice
//! cannot send anything twice.

use crate::config::Config;
use crate::inbound;
use crate::routing::{self, Plan};
use crate::store::{FailedDelivery, Store, StoreError, now_ms};

/// What redelivery did to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redelivered {
    /// Its failed jobs are queued again.
    Requeued,
    /// It was rendered again and its jobs are queued.
    Rerendered,
    /// It was rendered again and still fails; it stays failed with the new reason.
    StillFailing(String),
}

/// Redelivers one delivery; `None` when it is not (or no longer) failed.
pub async fn redeliver_one(
    store: &Store,
    config: &Config,
    id: &str,
) -> Result<Option<Redelivered>, StoreError> {
    let found = store
        .failed_deliveries(None, None, Some(id.to_string()))
        .await?;
    match found.into_iter().next() {
        Some(delivery) => redeliver(store, config, delivery).await,
        None => Ok(None),
    }
}

/// Redelivers a failed delivery found by [`Store::failed_deliveries`].
pub async fn redeliver(
    store: &Store,
    config: &Config,
    delivery: FailedDelivery,
) -> Result<Option<Redelivered>, StoreError> {
    if delivery.has_jobs {
        return Ok(store
            .requeue_failed(&delivery.id, now_ms())
            .await?
            .then_some(Redelivered::Requeued));
    }
    let outcome = match config.routes.iter().find(|r| r.id == delivery.route) {
        None => Err(format!(
            "route `{}` is no longer configured",
            delivery.route
        )),
        Some(route) => {
            let body = inbound::stored_body(&delivery.request);
            let headers = delivery.request.headers.iter().cloned().collect();
            match inbound::parse_for_route(route, delivery.request.content_type.as_deref(), &body) {
                Err(e) => Err(e.to_string()),
                Ok(parsed) => {
                    let ctx = inbound::context(
                        &route.id,
                        parsed,
                        headers,
                        &delivery.request.query,
                        &delivery.id,
                        delivery.received_at_ms,
                    );
                    match routing::plan(route, &ctx) {
                        Ok(Plan::Dispatch(targets)) => Ok(inbound::jobs(&targets)),
                        Ok(Plan::Skipped) => Ok(Vec::new()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
        }
    };
    match outcome {
        Ok(jobs) => Ok(store
            .rerender(&delivery.id, jobs, None, now_ms())
            .await?
            .then_some(Redelivered::Rerendered)),
        Err(reason) => Ok(store
            .rerender(&delivery.id, Vec::new(), Some(reason.clone()), now_ms())
            .await?
            .then_some(Redelivered::StillFailing(reason))),
    }
}
