//! Redelivery of failed deliveries, shared by the CLI and the admin API.
//!
//! A failed delivery is rendered again from its stored request with the
//! routes in force now, so fixing routes.yaml (a misspelt repository, a
//! wrong workflow, a template that did not render) and redelivering
//! recovers it. After a failure at GitHub only the failed targets are sent
//! again; the delivered ones were sent already. A delivered or pending
//! delivery is never touched, so redelivering twice cannot send anything
//! twice.

use crate::config::Config;
use crate::inbound;
use crate::routing::{self, Plan};
use crate::store::{FailedDelivery, NewJob, Rerendered, Rerendering, Store, StoreError, now_ms};

/// What redelivery did to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redelivered {
    /// Its failed targets were rendered again and queued.
    Requeued,
    /// It had failed to render; it was rendered again and its jobs queued.
    Rerendered,
    /// It cannot be sent and stays failed, with this reason.
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
    let rendering = match render_again(config, &delivery) {
        Ok((jobs, dedupe_key)) => Rerendering::Jobs { jobs, dedupe_key },
        Err(reason) => Rerendering::Failed(reason),
    };
    let reason = match &rendering {
        Rerendering::Failed(reason) => Some(reason.clone()),
        Rerendering::Jobs { .. } => None,
    };
    Ok(
        match store.rerender(&delivery.id, rendering, now_ms()).await? {
            Rerendered::Queued if delivery.failed_targets.is_empty() => {
                Some(Redelivered::Rerendered)
            }
            Rerendered::Queued => Some(Redelivered::Requeued),
            Rerendered::StillFailed => Some(Redelivered::StillFailing(
                reason.unwrap_or_else(|| "nothing to send".into()),
            )),
            Rerendered::Duplicate { original_id } => Some(Redelivered::StillFailing(format!(
                "not sent: delivery {original_id} has the same dedupe key"
            ))),
            Rerendered::NotFailed => None,
        },
    )
}

/// Renders a failed delivery again with the routes in force now: the jobs
/// to queue and, after a render failure, its dedupe key, or why it cannot
/// be sent.
fn render_again(
    config: &Config,
    delivery: &FailedDelivery,
) -> Result<(Vec<NewJob>, Option<String>), String> {
    let route = config
        .routes
        .iter()
        .find(|r| r.id == delivery.route)
        .ok_or_else(|| format!("route `{}` is no longer configured", delivery.route))?;
    let body = inbound::stored_body(&delivery.request);
    let headers = delivery.request.headers.iter().cloned().collect();
    let parsed = inbound::parse_for_route(route, delivery.request.content_type.as_deref(), &body)
        .map_err(|e| e.to_string())?;
    let ctx = inbound::context(
        &route.id,
        parsed,
        headers,
        &delivery.request.query,
        &delivery.id,
        delivery.received_at_ms,
    );
    let targets = match routing::plan(route, &ctx).map_err(|e| e.to_string())? {
        Plan::Dispatch(targets) => targets,
        // The relay has no state for a webhook it skips; saying so keeps
        // the delivery failed rather than calling it delivered.
        Plan::Skipped => {
            return Err("not sent: the route's `when` is false for it now".into());
        }
    };
    let mut jobs = inbound::jobs(&targets);
    if delivery.failed_targets.is_empty() {
        // It failed at render time, so its dedupe key may never have been
        // stored; without it, a repeat of the same event would be sent
        // again.
        let dedupe_key = routing::dedupe_key(route, &ctx).map_err(|e| e.to_string())?;
        return Ok((jobs, dedupe_key));
    }
    jobs.retain(|job| delivery.failed_targets.contains(&job.target_index));
    if jobs.is_empty() {
        return Err(format!(
            "not sent: its failed targets are no longer in route `{}`",
            route.id
        ));
    }
    Ok((jobs, None))
}
