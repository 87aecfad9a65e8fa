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
use crate::store::{
    FailedDelivery, NewJob, Rerendered, Rerendering, Store, StoreError, StoredTarget, now_ms,
};

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
            Rerendered::Queued if delivery.failed_to_render() => Some(Redelivered::Rerendered),
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
    if delivery.failed_to_render() {
        // It failed at render time, so its dedupe key may never have been
        // stored; without it, a repeat of the same event would be sent
        // again.
        let dedupe_key = routing::dedupe_key(route, &ctx).map_err(|e| e.to_string())?;
        return Ok((jobs, dedupe_key));
    }
    lines_up(&delivery.targets, &jobs, &route.id)?;
    jobs.retain(|job| {
        delivery
            .targets
            .iter()
            .any(|t| t.failed && t.index == job.target_index)
    });
    Ok((jobs, None))
}

/// Checks that the route's targets now line up with the delivery's jobs, so
/// that a new rendering replaces the job of the same target: every target
/// the delivery had is still there, in its place, and each delivered one
/// still names the same repository (a failed one may name another: that is
/// the fix of a misspelt repository). Targets added at the end since are
/// fine, and are not sent. When targets were removed or reordered, a place
/// in the list may now hold a target that was delivered; sending it would
/// send it twice, so the delivery is not sent.
fn lines_up(stored: &[StoredTarget], jobs: &[NewJob], route: &str) -> Result<(), String> {
    let shifted = stored.iter().find(|target| {
        match jobs.iter().find(|job| job.target_index == target.index) {
            None => true,
            Some(job) => !target.failed && !job.repo.eq_ignore_ascii_case(&target.repo),
        }
    });
    match shifted {
        None => Ok(()),
        Some(target) => Err(format!(
            "not sent: the targets of route `{route}` were removed or reordered since it was received \
             (dispatch[{}] was {}), so the failed ones cannot be told apart from the delivered ones",
            target.index, target.repo
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(index: usize, repo: &str, failed: bool) -> StoredTarget {
        StoredTarget {
            index,
            repo: repo.into(),
            failed,
        }
    }

    fn job(index: usize, repo: &str) -> NewJob {
        NewJob {
            target_index: index,
            repo: repo.into(),
            label: "deploy".into(),
            path: format!("/repos/{repo}/dispatches"),
            body: "{}".into(),
        }
    }

    #[test]
    fn renderings_line_up_with_the_stored_targets_only_when_no_delivered_one_moved() {
        // Then: acme/blog delivered, acme/dcos failed (misspelt).
        let then = [stored(0, "acme/blog", false), stored(1, "acme/dcos", true)];
        let cases: [(&str, Vec<NewJob>, bool); 5] = [
            (
                "the misspelling fixed",
                vec![job(0, "acme/blog"), job(1, "acme/docs")],
                true,
            ),
            (
                "a target added at the end",
                vec![
                    job(0, "acme/blog"),
                    job(1, "acme/docs"),
                    job(2, "acme/site"),
                ],
                true,
            ),
            (
                "the failed target removed",
                vec![job(0, "acme/blog")],
                false,
            ),
            (
                "the delivered target removed",
                vec![job(0, "acme/docs")],
                false,
            ),
            (
                "reordered",
                vec![job(0, "acme/docs"), job(1, "acme/blog")],
                false,
            ),
        ];
        for (case, now, expected) in cases {
            assert_eq!(lines_up(&then, &now, "cms").is_ok(), expected, "{case}");
        }
        let refused = lines_up(&then, &[job(0, "acme/docs")], "cms").unwrap_err();
        assert!(refused.contains("removed or reordered"), "{refused}");
    }
}
