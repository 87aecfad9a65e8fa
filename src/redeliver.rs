//! Redelivery of failed deliveries, shared by the CLI and the admin API.
//!
//! A failed delivery is rendered again from its stored request with the
//! routes in force now, so fixing routes.yaml (a misspelt repository, a
//! wrong workflow, a template that did not render) and redelivering
//! recovers it. After a failure at GitHub only the failed targets are sent
//! again; the delivered ones were sent already, and the pending ones are
//! still being sent. A delivery none of whose targets failed is never
//! touched, so redelivering twice cannot send anything twice.

use crate::clock::now_ms;
use crate::config::Config;
use crate::inbound;
use crate::routing::{self, Plan};
use crate::store::{
    FailedDelivery, NewJob, Rerendered, Rerendering, Store, StoreError, StoredTarget,
};

/// What redelivery did to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redelivered {
    /// Its failed targets were rendered again and queued.
    Requeued,
    /// Its failed jobs whose targets are still in the route were queued
    /// again as first rendered, because the route's targets changed since
    /// (see `same_places`); `dropped` failed jobs are no longer in the
    /// route and stay failed.
    RequeuedAsRendered { dropped: usize },
    /// It had failed to render; it was rendered again and its jobs queued.
    Rerendered,
    /// It cannot be sent and stays failed, with this reason.
    StillFailing(String),
}

/// Redelivers one delivery, with its route; `None` when it is not (or no
/// longer) failed.
pub async fn redeliver_one(
    store: &Store,
    config: &Config,
    id: &str,
) -> Result<Option<(String, Redelivered)>, StoreError> {
    let found = store
        .failed_deliveries(None, None, Some(id.to_string()))
        .await?;
    let Some(delivery) = found.into_iter().next() else {
        return Ok(None);
    };
    let route = delivery.route.clone();
    Ok(redeliver(store, config, delivery)
        .await?
        .map(|outcome| (route, outcome)))
}

/// Redelivers a failed delivery found by [`Store::failed_deliveries`].
pub async fn redeliver(
    store: &Store,
    config: &Config,
    delivery: FailedDelivery,
) -> Result<Option<Redelivered>, StoreError> {
    let rendering = render_again(config, &delivery);
    let queued = match &rendering {
        Rerendering::AsRendered { targets } => Redelivered::RequeuedAsRendered {
            dropped: delivery.targets.iter().filter(|t| t.failed).count() - targets.len(),
        },
        _ if delivery.failed_to_render() => Redelivered::Rerendered,
        _ => Redelivered::Requeued,
    };
    Ok(
        match store.rerender(&delivery.id, rendering, now_ms()).await? {
            Rerendered::Queued => Some(queued),
            Rerendered::StillFailed(reason) => Some(Redelivered::StillFailing(reason)),
            Rerendered::Duplicate { original_id } => Some(Redelivered::StillFailing(
                Rerendered::duplicate_reason(&original_id),
            )),
            Rerendered::NotFailed => None,
        },
    )
}

/// Renders a failed delivery again with the routes in force now.
fn render_again(config: &Config, delivery: &FailedDelivery) -> Rerendering {
    let route = match config.route(&delivery.route) {
        Some(route) => route,
        None => {
            return Rerendering::Failed(format!(
                "route `{}` is no longer configured",
                delivery.route
            ));
        }
    };
    let request = match &delivery.request {
        Ok(request) => request,
        Err(reason) => {
            return Rerendering::Failed(format!(
                "its stored request cannot be read, so it cannot be rendered again: {reason}"
            ));
        }
    };
    let body = inbound::stored_body(request);
    let headers = request.headers.iter().cloned().collect();
    let parsed = match inbound::parse_for_route(route, request.content_type.as_deref(), &body) {
        Ok(parsed) => parsed,
        Err(e) => return Rerendering::Failed(e.to_string()),
    };
    // Rendered as its jobs were: a webhook merged by debounce saw its own
    // id and time, and the stored request is that webhook's; its jobs then
    // took the window's id.
    let (rendered_id, rendered_at) = match &delivery.rendered_as {
        Some((id, at)) => (id.as_str(), *at),
        None => (delivery.id.as_str(), delivery.received_at_ms),
    };
    let ctx = inbound::context(
        &route.id,
        parsed,
        headers,
        &request.query,
        rendered_id,
        rendered_at,
    );
    let targets = match routing::plan(route, &ctx) {
        Ok(Plan::Dispatch(targets)) => targets,
        // The relay has no state for a webhook it skips; saying so keeps
        // the delivery failed rather than calling it delivered.
        Ok(Plan::Skipped) => {
            return Rerendering::Failed("not sent: the route's `when` is false for it now".into());
        }
        Err(e) => return Rerendering::Failed(e.to_string()),
    };
    let mut jobs = inbound::jobs(&targets);
    if delivery.rendered_as.is_some() {
        jobs = jobs
            .iter()
            .map(|job| job.with_delivery_id(rendered_id, &delivery.id))
            .collect();
    }
    if delivery.failed_to_render() {
        // It failed at render time, so its dedupe key may never have been
        // stored; without it, a repeat of the same event would be sent
        // again.
        return match routing::dedupe_key(route, &ctx) {
            Ok(dedupe_key) => Rerendering::Jobs { jobs, dedupe_key },
            Err(e) => Rerendering::Failed(e.to_string()),
        };
    }
    if !same_places(&delivery.targets, &jobs) {
        // A failed job goes again only while its target is still in the
        // route: removing a target is how an operator says to stop sending
        // there.
        let still_routed = |target: &StoredTarget| jobs.iter().any(|job| same_target(job, target));
        let targets = delivery
            .targets
            .iter()
            .filter(|target| target.failed && still_routed(target))
            .map(|target| target.index)
            .collect::<Vec<_>>();
        if targets.is_empty() {
            return Rerendering::Failed(format!(
                "not sent: its failed targets are no longer in route `{}`; it stays failed until store.retention prunes it (`redeliver --failed --since` can leave it out)",
                route.id
            ));
        }
        return Rerendering::AsRendered { targets };
    }
    jobs.retain(|job| {
        delivery
            .targets
            .iter()
            .any(|t| t.failed && t.index == job.target_index)
    });
    Rerendering::Jobs {
        jobs,
        dedupe_key: None,
    }
}

/// Whether the route's targets are where they were when the webhook came,
/// so that a new rendering can replace the failed job of the same place in
/// the `dispatch` list: as many targets as the delivery has jobs, and in
/// each delivered place exactly the request that was sent (repository,
/// event type or workflow, ref, payload). A failed place may hold a fixed
/// target: a misspelt repository, a wrong ref. When targets were added,
/// removed, reordered or edited where they were delivered, a place may
/// hold another target than before; the failed jobs then go again as first
/// rendered, which can never send a target twice.
fn same_places(stored: &[StoredTarget], jobs: &[NewJob]) -> bool {
    stored.len() == jobs.len()
        && stored.iter().all(|target| {
            jobs.iter()
                .find(|job| job.target_index == target.index)
                .is_some_and(|job| {
                    target.failed || (same_target(job, target) && job.body == target.body)
                })
        })
}

/// Whether a new rendering goes where a stored job went: the same endpoint
/// (repository and workflow; GitHub's names ignore case) and the same event
/// type or ref.
fn same_target(job: &NewJob, target: &StoredTarget) -> bool {
    job.path.eq_ignore_ascii_case(&target.path) && job.label == target.label
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(index: usize, repo: &str, label: &str, failed: bool) -> StoredTarget {
        let sent = job(index, repo, label);
        StoredTarget {
            index,
            label: label.into(),
            path: sent.path,
            body: sent.body,
            failed,
        }
    }

    fn job(index: usize, repo: &str, label: &str) -> NewJob {
        NewJob {
            target_index: index,
            repo: repo.into(),
            label: label.into(),
            path: format!("/repos/{repo}/dispatches"),
            body: format!(r#"{{"event_type":"{label}"}}"#),
        }
    }

    fn with_body(mut job: NewJob, body: &str) -> NewJob {
        job.body = body.into();
        job
    }

    #[test]
    fn a_new_rendering_replaces_failed_jobs_only_when_every_target_kept_its_place() {
        // Then: acme/blog delivered, acme/dcos failed (misspelt); and two
        // workflows of one repository, build delivered, deploy failed.
        let then = [
            stored(0, "acme/blog", "deploy", false),
            stored(1, "acme/dcos", "deploy", true),
        ];
        let workflows = [
            stored(0, "acme/site", "build.yml", false),
            stored(1, "acme/site", "deploy.yml", true),
        ];
        let cases = [
            (
                "the misspelling fixed in place",
                &then,
                vec![job(0, "acme/blog", "deploy"), job(1, "acme/docs", "deploy")],
                true,
            ),
            (
                "a target added",
                &then,
                vec![
                    job(0, "acme/blog", "deploy"),
                    job(1, "acme/docs", "deploy"),
                    job(2, "acme/site", "deploy"),
                ],
                false,
            ),
            (
                "a target inserted before the failed one",
                &then,
                vec![
                    job(0, "acme/blog", "deploy"),
                    job(1, "acme/new", "deploy"),
                    job(2, "acme/docs", "deploy"),
                ],
                false,
            ),
            (
                "the failed target removed",
                &then,
                vec![job(0, "acme/blog", "deploy")],
                false,
            ),
            (
                "reordered",
                &then,
                vec![job(0, "acme/docs", "deploy"), job(1, "acme/blog", "deploy")],
                false,
            ),
            (
                "two workflows of one repository swapped",
                &workflows,
                vec![
                    job(0, "acme/site", "deploy.yml"),
                    job(1, "acme/site", "build.yml"),
                ],
                false,
            ),
            (
                "a delivered place now sending another ref of the same workflow",
                &workflows,
                vec![
                    with_body(job(0, "acme/site", "build.yml"), r#"{"ref":"release"}"#),
                    job(1, "acme/site", "deploy.yml"),
                ],
                false,
            ),
        ];
        for (case, stored, now, expected) in cases {
            assert_eq!(same_places(stored, &now), expected, "{case}");
        }
    }
}
