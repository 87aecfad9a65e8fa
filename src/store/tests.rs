//! Unit tests of the store against a real SQLite file in a temporary
//! directory.

use super::*;

pub(super) fn delivery(id: &str, dedupe: Option<&str>, jobs: usize) -> NewDelivery {
    NewDelivery {
        id: id.to_string(),
        route: "r".into(),
        received_at_ms: 1_000,
        dedupe_key: dedupe.map(str::to_string),
        request: EncodedRequest::from(&StoredRequest {
            content_type: Some("application/json".into()),
            query: vec![],
            headers: vec![],
            body: "{}".into(),
            body_base64: false,
        }),
        jobs: (0..jobs)
            .map(|i| NewJob {
                target_index: i,
                repo: format!("acme/r{i}"),
                label: "deploy".into(),
                path: format!("/repos/acme/r{i}/dispatches"),
                body: "{}".into(),
            })
            .collect(),
        failure: None,
        debounce: None,
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
    (dir, store)
}

fn attempt(job: &Job, next: JobNext) -> AttemptRecord {
    AttemptRecord {
        job_id: job.id,
        started_at_ms: 2_000,
        duration_ms: 5,
        status_code: Some(204),
        detail: "204".into(),
        next,
        result: None,
        credential: None,
    }
}

#[tokio::test]
async fn accepted_jobs_are_leased_once_and_settle_the_delivery() {
    let (_dir, store) = open();
    assert_eq!(
        store.accept(delivery("d1", None, 2)).await.unwrap(),
        Accepted::Stored
    );
    let jobs = store.lease_due(5_000, 10, 60_000).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(
        store.lease_due(5_000, 10, 60_000).await.unwrap().is_empty(),
        "a leased job is not leased again"
    );
    assert_eq!(
        store.next_due_ms().await.unwrap(),
        None,
        "jobs being sent are not waited for"
    );
    store
        .record(attempt(&jobs[0], JobNext::Delivered))
        .await
        .unwrap();
    let (d, _) = store.get("d1").await.unwrap().unwrap();
    assert_eq!(d.status, Status::Pending);
    store
        .record(attempt(
            &jobs[1],
            JobNext::Failed {
                reason: "not found".into(),
            },
        ))
        .await
        .unwrap();
    let (d, attempts) = store.get("d1").await.unwrap().unwrap();
    assert_eq!(d.status, Status::Failed);
    assert_eq!(attempts.len(), 2);
    assert!(d.error.unwrap().contains("acme/r1: not found"));
}

#[tokio::test]
async fn a_repeated_dedupe_key_returns_the_original() {
    let (_dir, store) = open();
    store.accept(delivery("d1", Some("k"), 1)).await.unwrap();
    let again = store.accept(delivery("d2", Some("k"), 1)).await.unwrap();
    assert_eq!(
        again,
        Accepted::Duplicate {
            original_id: "d1".into()
        }
    );
    assert_eq!(store.list(ListFilter::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn retry_makes_the_job_due_again_only_at_its_time() {
    let (_dir, store) = open();
    store.accept(delivery("d1", None, 1)).await.unwrap();
    let job = store.lease_due(5_000, 10, 60_000).await.unwrap().remove(0);
    store
        .record(attempt(
            &job,
            JobNext::Retry {
                at_ms: 9_000,
                not_before_ms: None,
                counts_as_failure: true,
            },
        ))
        .await
        .unwrap();
    assert!(store.lease_due(8_999, 10, 60_000).await.unwrap().is_empty());
    assert_eq!(store.next_due_ms().await.unwrap(), Some(9_000));
    let again = store.lease_due(9_000, 10, 60_000).await.unwrap();
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].failures, 1);
    // Leased again, it is being sent: nothing to wake up for.
    assert_eq!(store.next_due_ms().await.unwrap(), None);
}

/// A delivery of one job for `route`, received at `received_at_ms`.
fn delivery_of(id: &str, route: &str, received_at_ms: i64) -> NewDelivery {
    NewDelivery {
        route: route.into(),
        received_at_ms,
        ..delivery(id, None, 1)
    }
}

#[tokio::test]
async fn the_queue_takes_turns_between_routes_each_in_its_own_order() {
    let (_dir, store) = open();
    // A burst on "bulk" first; "cms" and "jenkins" come after it.
    for i in 0..5 {
        store
            .accept(delivery_of(&format!("bulk{i}"), "bulk", 1_000 + i))
            .await
            .unwrap();
    }
    store
        .accept(delivery_of("cms0", "cms", 1_100))
        .await
        .unwrap();
    store
        .accept(delivery_of("jenkins0", "jenkins", 1_200))
        .await
        .unwrap();
    store
        .accept(delivery_of("cms1", "cms", 1_300))
        .await
        .unwrap();

    let mut sent = Vec::new();
    loop {
        let jobs = store.lease_due(5_000, 1, 60_000).await.unwrap();
        let Some(job) = jobs.first() else { break };
        sent.push(job.delivery_id.clone());
        store
            .record(attempt(job, JobNext::Delivered))
            .await
            .unwrap();
    }
    assert_eq!(
        sent,
        [
            "bulk0", "cms0", "jenkins0", "bulk1", "cms1", "bulk2", "bulk3", "bulk4"
        ],
        "one of each route in turn, each route's in the order they came"
    );
}

#[tokio::test]
async fn a_lease_of_several_jobs_takes_one_of_each_route_before_a_second() {
    let (_dir, store) = open();
    for i in 0..4 {
        store
            .accept(delivery_of(&format!("a{i}"), "a", 1_000 + i))
            .await
            .unwrap();
    }
    store.accept(delivery_of("b0", "b", 2_000)).await.unwrap();
    // A job not yet due takes no turn.
    store.accept(delivery_of("c0", "c", 9_000)).await.unwrap();
    let ids = |jobs: Vec<Job>| -> Vec<String> { jobs.into_iter().map(|j| j.delivery_id).collect() };
    assert_eq!(
        ids(store.lease_due(5_000, 3, 60_000).await.unwrap()),
        ["a0", "b0", "a1"]
    );
    // The turns carry on after "a", the route served last: "b" has
    // nothing left, "c" nothing due, so "a" again.
    assert_eq!(
        ids(store.lease_due(5_000, 3, 60_000).await.unwrap()),
        ["a2", "a3"]
    );
    assert_eq!(store.next_due_ms().await.unwrap(), Some(9_000));
    assert_eq!(
        ids(store.lease_due(9_000, 3, 60_000).await.unwrap()),
        ["c0"]
    );
}

fn delivery_ids(jobs: Vec<Job>) -> Vec<String> {
    jobs.into_iter().map(|j| j.delivery_id).collect()
}

#[tokio::test]
async fn retries_take_their_turns_among_new_jobs_and_a_parked_route_waits_for_its_time() {
    let (_dir, store) = open();
    store.accept(delivery_of("a1", "a", 1_000)).await.unwrap();
    store.accept(delivery_of("c1", "c", 1_000)).await.unwrap();
    for job in store.lease_due(1_000, 10, 60_000).await.unwrap() {
        // "c" waits an hour for its retry; "a" a second.
        let at_ms = if job.route == "a" { 2_000 } else { 3_600_000 };
        let next = JobNext::Retry {
            at_ms,
            not_before_ms: None,
            counts_as_failure: true,
        };
        store.record(attempt(&job, next)).await.unwrap();
    }
    store.accept(delivery_of("b1", "b", 1_500)).await.unwrap();
    store.accept(delivery_of("a2", "a", 1_600)).await.unwrap();
    assert_eq!(store.next_due_ms().await.unwrap(), Some(1_500));
    assert_eq!(
        delivery_ids(store.lease_due(2_000, 10, 7_200_000).await.unwrap()),
        ["a2", "b1", "a1"],
        "a's new job fell due before its retry; b takes its turn between them"
    );
    assert_eq!(
        store.next_due_ms().await.unwrap(),
        Some(3_600_000),
        "the leased jobs wake no one; c's retry does, in an hour"
    );
    assert!(
        store
            .lease_due(3_599_999, 10, 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        delivery_ids(store.lease_due(3_600_000, 10, 60_000).await.unwrap()),
        ["c1"]
    );
    assert_eq!(store.queue_depth().await.unwrap().retrying, 2);
}

#[tokio::test]
async fn a_retry_whose_lease_ran_out_is_leased_again() {
    let (_dir, store) = open();
    store.accept(delivery_of("a1", "a", 1_000)).await.unwrap();
    let job = store.lease_due(1_000, 10, 60_000).await.unwrap().remove(0);
    let next = JobNext::Retry {
        at_ms: 2_000,
        not_before_ms: None,
        counts_as_failure: true,
    };
    store.record(attempt(&job, next)).await.unwrap();
    // Leased for 10 s, and never recorded (its send hung).
    assert_eq!(store.lease_due(2_000, 10, 10_000).await.unwrap().len(), 1);
    assert!(
        store
            .lease_due(11_000, 10, 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        delivery_ids(store.lease_due(12_001, 10, 10_000).await.unwrap()),
        ["a1"]
    );
}

#[tokio::test]
async fn a_retry_queued_again_by_another_process_is_leased_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = Store::open(&path, Synchronous::Normal).unwrap();
    store.accept(delivery("d1", None, 1)).await.unwrap();
    let job = store.lease_due(5_000, 10, 60_000).await.unwrap().remove(0);
    let failed = JobNext::Failed {
        reason: "404".into(),
    };
    store.record(attempt(&job, failed)).await.unwrap();
    assert!(store.lease_due(6_000, 10, 60_000).await.unwrap().is_empty());
    // `dispatch-relay redeliver`, beside the running relay.
    let other = Store::open_beside_relay(&path).unwrap();
    assert_eq!(
        other
            .rerender("d1", Rerendering::AsRendered { targets: vec![0] }, 6_000)
            .await
            .unwrap(),
        Rerendered::Queued
    );
    other.close().await;
    assert_eq!(
        delivery_ids(store.lease_due(6_000, 10, 60_000).await.unwrap()),
        ["d1"],
        "found at the next lease, not a second later"
    );
}

#[tokio::test]
async fn an_outages_retries_are_brought_forward_in_the_order_they_came() {
    let (_dir, store) = open();
    // "before" backs off from an attempt before the outage; "early" and
    // "late" from attempts during it; "late" came last.
    for (id, received_at_ms) in [("before", 100), ("early", 200), ("late", 300)] {
        store
            .accept(delivery_of(id, "r", received_at_ms))
            .await
            .unwrap();
    }
    for job in store.lease_due(1_000, 10, 60_000).await.unwrap() {
        let started_at_ms = if job.delivery_id == "before" {
            1_000
        } else {
            5_000
        };
        let record = AttemptRecord {
            started_at_ms,
            ..attempt(
                &job,
                JobNext::Retry {
                    at_ms: 600_000,
                    not_before_ms: None,
                    counts_as_failure: false,
                },
            )
        };
        store.record(record).await.unwrap();
    }
    assert_eq!(store.bring_retries_forward(4_000, 9_000).await.unwrap(), 2);
    assert_eq!(
        delivery_ids(store.lease_due(9_000, 10, 60_000).await.unwrap()),
        ["early", "late"],
        "due since they were queued, oldest first"
    );
    assert_eq!(
        store.bring_retries_forward(4_000, 9_000).await.unwrap(),
        0,
        "the jobs being sent, and the one backing off from before, stay"
    );
    assert_eq!(store.next_due_ms().await.unwrap(), Some(600_000));
}

#[test]
fn taking_turns_takes_the_first_of_each_queue_then_the_second() {
    // (queues, limit, what is taken)
    type Case = (&'static [&'static [u32]], usize, &'static [u32]);
    let cases: &[Case] = &[
        (&[], 3, &[]),
        (&[&[1, 2, 3]], 2, &[1, 2]),
        (&[&[1, 2, 3], &[10]], 3, &[1, 10, 2]),
        (&[&[1, 2], &[10, 11], &[20]], 10, &[1, 10, 20, 2, 11]),
        (&[&[1], &[10], &[20]], 2, &[1, 10]),
        (&[&[1, 2]], 0, &[]),
    ];
    for (queues, limit, expected) in cases {
        let queues: Vec<Vec<u32>> = queues.iter().map(|q| q.to_vec()).collect();
        assert_eq!(
            schema::taking_turns(queues.clone(), *limit),
            *expected,
            "{queues:?} limit {limit}"
        );
    }
}

/// Records the first of two leased jobs as delivered and the second as
/// failed at GitHub, which fails their delivery.
async fn deliver_first_fail_second(store: &Store, jobs: &[Job]) {
    store
        .record(attempt(&jobs[0], JobNext::Delivered))
        .await
        .unwrap();
    let failed = JobNext::Failed {
        reason: "404".into(),
    };
    store.record(attempt(&jobs[1], failed)).await.unwrap();
}

/// Re-renders `id` with jobs for `targets`, all sent to `repo`.
async fn rerender(store: &Store, id: &str, targets: &[usize], repo: &str, now: i64) -> Rerendered {
    store
        .rerender(id, jobs_for(targets, repo, None), now)
        .await
        .unwrap()
}

fn jobs_for(targets: &[usize], repo: &str, dedupe_key: Option<&str>) -> Rerendering {
    Rerendering::Jobs {
        jobs: targets
            .iter()
            .map(|&i| NewJob {
                target_index: i,
                repo: repo.into(),
                label: "deploy".into(),
                path: format!("/repos/{repo}/dispatches"),
                body: "{}".into(),
            })
            .collect(),
        dedupe_key: dedupe_key.map(str::to_string),
    }
}

/// The targets of the first failed delivery, each with whether it failed.
async fn failed_targets(store: &Store) -> Vec<(usize, bool)> {
    let failed = store.failed_deliveries(None, None, None).await.unwrap();
    failed[0]
        .targets
        .iter()
        .map(|t| (t.index, t.failed))
        .collect()
}

#[tokio::test]
async fn rerendering_only_touches_failed_deliveries_and_their_failed_targets() {
    let (_dir, store) = open();
    store.accept(delivery("d1", None, 2)).await.unwrap();
    let jobs = store.lease_due(5_000, 10, 60_000).await.unwrap();
    assert_eq!(
        rerender(&store, "d1", &[1], "acme/fixed", 6_000).await,
        Rerendered::NotFailed,
        "pending is not failed"
    );
    deliver_first_fail_second(&store, &jobs).await;
    assert_eq!(failed_targets(&store).await, [(0, false), (1, true)]);

    // Target 0 was delivered: a rendering of it is not sent again.
    assert_eq!(
        rerender(&store, "d1", &[0, 1], "acme/fixed", 6_000).await,
        Rerendered::Queued
    );
    assert_eq!(
        rerender(&store, "d1", &[1], "acme/fixed", 6_000).await,
        Rerendered::NotFailed,
        "a requeued delivery is not requeued twice"
    );
    let requeued = store.lease_due(6_000, 10, 60_000).await.unwrap();
    assert_eq!(requeued.len(), 1);
    let job = &requeued[0];
    assert_eq!((job.target_index, job.repo.as_str()), (1, "acme/fixed"));
    assert_eq!(job.path, "/repos/acme/fixed/dispatches", "rendered anew");
    // A requeued job is young again: `retry.give_up_after` counts from the
    // redelivery, not from when the webhook first came in.
    assert_eq!((job.received_at_ms, job.created_at_ms), (1_000, 6_000));
    store
        .record(attempt(job, JobNext::Delivered))
        .await
        .unwrap();
    assert_eq!(
        rerender(&store, "d1", &[1], "acme/fixed", 7_000).await,
        Rerendered::NotFailed,
        "a delivered one never again"
    );
}

/// A stored request damaged by another program is that delivery's
/// problem: the other failed deliveries are still found, and it comes with
/// the reason it cannot be read.
#[tokio::test]
async fn a_failed_delivery_whose_request_cannot_be_read_does_not_hide_the_others() {
    let (dir, store) = open();
    for id in ["d1", "d2"] {
        store.accept(delivery(id, None, 2)).await.unwrap();
    }
    let jobs = store.lease_due(5_000, 10, 60_000).await.unwrap();
    for pair in jobs.chunks(2) {
        deliver_first_fail_second(&store, pair).await;
    }
    let conn = Connection::open(dir.path().join("t.db")).unwrap();
    conn.execute(
        "UPDATE deliveries SET request = 'not json' WHERE id = 'd1'",
        [],
    )
    .unwrap();
    let failed = store.failed_deliveries(None, None, None).await.unwrap();
    let found: Vec<(&str, bool)> = failed
        .iter()
        .map(|d| (d.id.as_str(), d.request.is_ok()))
        .collect();
    assert_eq!(found, [("d1", false), ("d2", true)]);
}

#[tokio::test]
async fn failed_jobs_can_go_again_as_first_rendered() {
    let (_dir, store) = open();
    store.accept(delivery("d1", None, 2)).await.unwrap();
    let jobs = store.lease_due(5_000, 10, 60_000).await.unwrap();
    deliver_first_fail_second(&store, &jobs).await;
    assert_eq!(
        store
            .rerender("d1", Rerendering::AsRendered { targets: vec![1] }, 6_000)
            .await
            .unwrap(),
        Rerendered::Queued
    );
    let again = store.lease_due(6_000, 10, 60_000).await.unwrap();
    assert_eq!(again.len(), 1, "only the failed job");
    assert_eq!(
        (again[0].target_index, again[0].repo.as_str()),
        (1, "acme/r1")
    );
}

#[tokio::test]
async fn a_rendering_that_fails_again_keeps_the_delivery_failed_with_githubs_reason() {
    let (_dir, store) = open();
    store.accept(delivery("d1", None, 1)).await.unwrap();
    let job = store.lease_due(5_000, 10, 60_000).await.unwrap().remove(0);
    store
        .record(attempt(
            &job,
            JobNext::Failed {
                reason: "404".into(),
            },
        ))
        .await
        .unwrap();
    let (before, _) = store.get("d1").await.unwrap().unwrap();
    assert!(before.finished_at_ms.is_some());
    let still = Rerendering::Failed("route `r` is no longer configured".into());
    assert_eq!(
        store.rerender("d1", still, 6_000).await.unwrap(),
        Rerendered::StillFailed("route `r` is no longer configured".into())
    );
    // Renderings for no failed target leave it failed too.
    assert_eq!(
        rerender(&store, "d1", &[3], "acme/x", 6_000).await,
        Rerendered::StillFailed(
            "nothing to send: none of its failed targets was rendered again".into()
        )
    );
    let (summary, _) = store.get("d1").await.unwrap().unwrap();
    assert_eq!(summary.status, Status::Failed);
    // It finished when it failed, not when it was redelivered: retention
    // and `--since` count from then.
    assert_eq!(summary.finished_at_ms, before.finished_at_ms);
    // Why it was not sent again was told to whoever asked; its error still
    // says what GitHub answered, which a route gone for a while would
    // otherwise hide for good.
    assert_eq!(summary.error, before.error);
    assert!(
        summary.error.as_deref().unwrap().contains("404"),
        "{summary:?}"
    );
    assert!(store.lease_due(6_000, 10, 60_000).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_render_failure_is_stored_failed_and_can_be_rerendered() {
    let (_dir, store) = open();
    let mut d = delivery("d1", None, 0);
    d.failure = Some("client_payload has 11 keys".into());
    store.accept(d).await.unwrap();
    let failed = store.failed_deliveries(None, None, None).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].failed_to_render());
    // It has no jobs, and still counts as one thing failed.
    assert_eq!(store.queue_depth().await.unwrap().failed, 1);
    assert_eq!(
        rerender(&store, "d1", &[0], "acme/r0", 3_000).await,
        Rerendered::Queued
    );
    assert_eq!(
        rerender(&store, "d1", &[0], "acme/r0", 3_000).await,
        Rerendered::NotFailed
    );
    assert_eq!(store.lease_due(3_000, 10, 1_000).await.unwrap().len(), 1);
    let depth = store.queue_depth().await.unwrap();
    assert_eq!((depth.pending, depth.failed), (1, 0), "{depth:?}");
}

#[tokio::test]
async fn a_delivery_that_still_does_not_render_says_the_newer_reason() {
    let (_dir, store) = open();
    let mut d = delivery("d1", None, 0);
    d.failure = Some("client_payload has 11 keys".into());
    store.accept(d).await.unwrap();
    let still = Rerendering::Failed("event_type: undefined value".into());
    assert_eq!(
        store.rerender("d1", still, 3_000).await.unwrap(),
        Rerendered::StillFailed("event_type: undefined value".into())
    );
    let (summary, _) = store.get("d1").await.unwrap().unwrap();
    assert_eq!(summary.status, Status::Failed);
    assert_eq!(
        summary.error.as_deref(),
        Some("event_type: undefined value")
    );
}

#[tokio::test]
async fn a_rerendered_delivery_whose_dedupe_key_is_taken_is_not_sent() {
    let (_dir, store) = open();
    // The first copy failed to render before its key could be stored; a
    // retry of the same event was then accepted with the key.
    let mut first = delivery("d1", None, 0);
    first.failure = Some("dedupe_key: undefined value".into());
    store.accept(first).await.unwrap();
    store
        .accept(delivery("d2", Some("evt-1"), 1))
        .await
        .unwrap();
    let with_key = jobs_for(&[0], "acme/r0", Some("evt-1"));
    assert_eq!(
        store.rerender("d1", with_key, 3_000).await.unwrap(),
        Rerendered::Duplicate {
            original_id: "d2".into()
        }
    );
    let (summary, _) = store.get("d1").await.unwrap().unwrap();
    assert_eq!(summary.status, Status::Failed);
    assert!(summary.error.unwrap().contains("d2"));
    // With no other holder the key is stored, so a later repeat is a
    // duplicate of it.
    let mut third = delivery("d3", None, 0);
    third.failure = Some("render".into());
    store.accept(third).await.unwrap();
    let fresh_key = jobs_for(&[0], "acme/r0", Some("evt-3"));
    assert_eq!(
        store.rerender("d3", fresh_key, 3_000).await.unwrap(),
        Rerendered::Queued
    );
    assert_eq!(
        store
            .accept(delivery("d4", Some("evt-3"), 1))
            .await
            .unwrap(),
        Accepted::Duplicate {
            original_id: "d3".into()
        }
    );
}

#[tokio::test]
async fn leases_survive_a_reopen_as_due_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let store = Store::open(&path, Synchronous::Full).unwrap();
        store.accept(delivery("d1", None, 3)).await.unwrap();
        assert_eq!(store.lease_due(5_000, 10, 600_000).await.unwrap().len(), 3);
        store.close().await;
    }
    let store = Store::open(&path, Synchronous::Full).unwrap();
    assert!(
        store
            .lease_due(5_000, 10, 600_000)
            .await
            .unwrap()
            .is_empty(),
        "opening the store (as the inspection commands do) leaves leases alone"
    );
    // A lease taken by a relay that kept no lease time, as before the
    // column existed.
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE jobs SET leased_at = NULL WHERE target_index = 0",
            [],
        )
        .unwrap();
    // Each job leased by the process that stopped gets an attempt saying
    // GitHub may have received it; none counts against max_attempts. It is
    // dated when the job was leased, when its send began, or else now.
    assert_eq!(
        store.release_all_leases(6_000).await.unwrap(),
        Released {
            interrupted: 3,
            orphans: 0
        }
    );
    let detail = store.detail("d1").await.unwrap().unwrap();
    assert_eq!(detail.attempts.len(), 3);
    assert!(
        detail
            .attempts
            .iter()
            .all(|a| a.detail == INTERRUPTED && a.status_code.is_none())
    );
    let mut dated: Vec<i64> = detail.attempts.iter().map(|a| a.started_at_ms).collect();
    dated.sort();
    assert_eq!(dated, [5_000, 5_000, 6_000]);
    for job in &detail.delivery.targets {
        assert_eq!((job.attempts, job.counted_attempts), (1, 0));
        assert_eq!(job.last_error.as_deref(), Some(INTERRUPTED));
    }
    // Tried once, they are sent again as retries.
    let depth = store.queue_depth().await.unwrap();
    assert_eq!((depth.pending, depth.retrying), (0, 3));
    assert_eq!(store.lease_due(5_000, 10, 600_000).await.unwrap().len(), 3);
}

/// A lease's time is kept only while the lease lasts, so that a later
/// interrupted send is never dated by an earlier lease.
#[tokio::test]
async fn a_lease_time_goes_with_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = Store::open(&path, Synchronous::Full).unwrap();
    store.accept(delivery("d1", None, 1)).await.unwrap();
    let leased = store.lease_due(5_000, 10, 600_000).await.unwrap();
    let lease_time = || -> Option<i64> {
        Connection::open(&path)
            .unwrap()
            .query_row("SELECT leased_at FROM jobs", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(lease_time(), Some(5_000));
    store
        .release(leased.iter().map(|job| job.id).collect())
        .await
        .unwrap();
    assert_eq!(lease_time(), None);
}

/// A store rebuilt from a damaged file can hold jobs whose delivery was
/// lost; left in the queue, the first of them would fail every lease.
#[tokio::test]
async fn jobs_whose_delivery_is_missing_are_removed_at_start_and_the_rest_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let store = Store::open(&path, Synchronous::Full).unwrap();
        store.accept(delivery("lost", None, 2)).await.unwrap();
        store.accept(delivery("kept", None, 1)).await.unwrap();
        store.close().await;
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
        conn.execute("DELETE FROM deliveries WHERE id = 'lost'", [])
            .unwrap();
    }
    let store = Store::open(&path, Synchronous::Full).unwrap();
    assert_eq!(
        store.release_all_leases(5_000).await.unwrap(),
        Released {
            interrupted: 0,
            orphans: 2
        }
    );
    let leased = store.lease_due(5_000, 10, 600_000).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].delivery_id, "kept");
}

#[tokio::test]
async fn jobs_an_older_relay_queued_without_a_route_are_given_theirs_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    Store::open(&path, Synchronous::Full).unwrap().close().await;
    // An older relay writes its jobs without a route.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO deliveries (id, route, received_at, status, request)
             VALUES ('older', 'r', 500, 'pending', '{}');
         INSERT INTO jobs (delivery_id, target_index, repo, label, path, body, status,
                           next_attempt_at, created_at)
             VALUES ('older', 0, 'acme/a', 'deploy', '/repos/acme/a/dispatches', '{}',
                     'pending', 500, 500);",
    )
    .unwrap();
    drop(conn);
    let beside = Store::open_beside_relay(&path).unwrap();
    assert!(
        beside
            .lease_due(5_000, 10, 60_000)
            .await
            .unwrap()
            .is_empty(),
        "an inspection command writes nothing, so the job has no turn yet"
    );
    beside.close().await;
    let store = Store::open(&path, Synchronous::Full).unwrap();
    let leased = store.lease_due(5_000, 10, 60_000).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].route, "r");
}

#[tokio::test]
async fn pruning_removes_only_finished_deliveries_older_than_the_cutoff() {
    let (_dir, store) = open();
    let mut old_pending = delivery("old-pending", None, 1);
    old_pending.received_at_ms = 100;
    store.accept(old_pending).await.unwrap();
    let mut old_failed = delivery("old-failed", None, 0);
    old_failed.received_at_ms = 100;
    old_failed.failure = Some("render".into());
    store.accept(old_failed).await.unwrap();
    let mut old_delivered = delivery("old-delivered", Some("k"), 1);
    old_delivered.received_at_ms = 100;
    store.accept(old_delivered).await.unwrap();
    let jobs = store.lease_due(1_000, 10, 1_000).await.unwrap();
    let job = jobs
        .iter()
        .find(|j| j.delivery_id == "old-delivered")
        .unwrap();
    let mut record = attempt(job, JobNext::Delivered);
    record.started_at_ms = 200;
    store.record(record).await.unwrap();
    let mut recent = delivery("recent-failed", None, 0);
    recent.received_at_ms = 5_000;
    recent.failure = Some("render".into());
    store.accept(recent).await.unwrap();

    assert_eq!(store.prune_finished(1_000).await.unwrap(), 2);
    let left: Vec<String> = store
        .list(ListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(left, ["recent-failed", "old-pending"]);
    // The dedupe key of a pruned delivery is free again.
    assert_eq!(
        store.accept(delivery("again", Some("k"), 1)).await.unwrap(),
        Accepted::Stored
    );
}

#[tokio::test]
async fn debounce_merges_a_burst_into_one_delivery_bounded_by_max_wait() {
    let (_dir, store) = open();
    let window = DebounceWindow {
        window_ms: 1_000,
        max_wait_ms: 2_500,
    };
    let at = |id: &str, ms: i64| {
        let mut d = delivery(id, None, 2);
        d.received_at_ms = ms;
        // As a template printing `delivery.id` would render it.
        d.jobs[0].body = format!("{{\"delivery\":\"{id}\",\"at\":{ms}}}");
        d.debounce = Some(window);
        d
    };
    assert_eq!(
        store.accept(at("first", 10_000)).await.unwrap(),
        Accepted::Stored
    );
    for (i, ms) in [10_500, 11_000, 11_900].into_iter().enumerate() {
        assert_eq!(
            store.accept(at(&format!("later{i}"), ms)).await.unwrap(),
            Accepted::Coalesced {
                into: "first".into(),
                coalesced: i as u32 + 1
            }
        );
    }
    // The window keeps moving (11_900 + 1_000) but max_wait caps it at 12_500.
    assert!(
        store
            .lease_due(12_499, 10, 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    // A merged webhook's own dedupe key is remembered too.
    let mut keyed = at("keyed", 12_000);
    keyed.dedupe_key = Some("k-merged".into());
    assert!(matches!(
        store.accept(keyed.clone()).await.unwrap(),
        Accepted::Coalesced { .. }
    ));
    keyed.id = "keyed-again".into();
    assert_eq!(
        store.accept(keyed).await.unwrap(),
        Accepted::Duplicate {
            original_id: "first".into()
        }
    );
    let jobs = store.lease_due(12_500, 10, 60_000).await.unwrap();
    assert_eq!(jobs.len(), 2, "one job per target");
    // The last payload wins, and the id it printed is the window's.
    assert_eq!(jobs[0].body, r#"{"delivery":"first","at":12000}"#);
    // Once leased, the window is closed: the next webhook opens a new one.
    assert_eq!(
        store.accept(at("next", 12_600)).await.unwrap(),
        Accepted::Stored
    );
    let (first, _) = store.get("first").await.unwrap().unwrap();
    assert_eq!(first.coalesced, 4);
}

#[tokio::test]
async fn debounce_merges_only_webhooks_bound_for_the_same_places() {
    let (_dir, store) = open();
    let window = DebounceWindow {
        window_ms: 1_000,
        max_wait_ms: 5_000,
    };
    let to = |id: &str, repo: &str, label: &str, ms: i64| {
        let mut d = delivery(id, None, 1);
        d.received_at_ms = ms;
        d.jobs[0].repo = repo.into();
        d.jobs[0].path = format!("/repos/{repo}/dispatches");
        d.jobs[0].label = label.into();
        d.debounce = Some(window);
        d
    };
    assert_eq!(
        store
            .accept(to("a", "acme/site-a", "cms-page", 10_000))
            .await
            .unwrap(),
        Accepted::Stored
    );
    // Another repository, or another event type, opens its own window.
    assert_eq!(
        store
            .accept(to("b", "acme/site-b", "cms-page", 10_100))
            .await
            .unwrap(),
        Accepted::Stored
    );
    assert_eq!(
        store
            .accept(to("c", "acme/site-a", "cms-post", 10_200))
            .await
            .unwrap(),
        Accepted::Stored
    );
    // The same places, whatever the case of the name, join theirs.
    assert_eq!(
        store
            .accept(to("a2", "Acme/Site-A", "cms-page", 10_300))
            .await
            .unwrap(),
        Accepted::Coalesced {
            into: "a".into(),
            coalesced: 1
        }
    );
    let mut sent: Vec<(String, String)> = store
        .lease_due(20_000, 10, 60_000)
        .await
        .unwrap()
        .into_iter()
        .map(|job| (job.repo, job.label))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            ("Acme/Site-A".to_string(), "cms-page".to_string()),
            ("acme/site-a".to_string(), "cms-post".to_string()),
            ("acme/site-b".to_string(), "cms-page".to_string()),
        ]
    );
}

#[tokio::test]
async fn debounce_keeps_a_workflow_dispatch_to_another_ref_apart() {
    let (_dir, store) = open();
    let window = DebounceWindow {
        window_ms: 1_000,
        max_wait_ms: 5_000,
    };
    let to = |id: &str, git_ref: &str, ms: i64| {
        let mut d = delivery(id, None, 1);
        d.received_at_ms = ms;
        d.jobs[0].path = "/repos/acme/blog/actions/workflows/deploy.yml/dispatches".into();
        d.jobs[0].label = "deploy.yml".into();
        d.jobs[0].body = format!(r#"{{"ref":"{git_ref}","inputs":{{"at":"{ms}"}}}}"#);
        d.debounce = Some(window);
        d
    };
    assert_eq!(
        store.accept(to("a", "release-1.2", 10_000)).await.unwrap(),
        Accepted::Stored
    );
    // Another ref is another run: it must not replace the first.
    assert_eq!(
        store.accept(to("b", "main", 10_100)).await.unwrap(),
        Accepted::Stored
    );
    assert_eq!(
        store.accept(to("a2", "release-1.2", 10_200)).await.unwrap(),
        Accepted::Coalesced {
            into: "a".into(),
            coalesced: 1
        }
    );
    let mut sent: Vec<String> = store
        .lease_due(20_000, 10, 60_000)
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.body)
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            r#"{"ref":"main","inputs":{"at":"10100"}}"#,
            r#"{"ref":"release-1.2","inputs":{"at":"10200"}}"#,
        ]
    );
}

#[tokio::test]
async fn a_failing_command_costs_its_batch_nothing() {
    let (_dir, store) = open();
    // The second accept reuses the first one's id and fails on the primary
    // key; whether or not the three land in one batch, the others commit.
    let (first, clash, other) = tokio::join!(
        store.accept(delivery("d1", None, 1)),
        store.accept(delivery("d1", None, 1)),
        store.accept(delivery("d2", None, 1)),
    );
    assert_eq!(first.unwrap(), Accepted::Stored);
    assert!(clash.is_err());
    assert_eq!(other.unwrap(), Accepted::Stored);
    let jobs = store.lease_due(5_000, 10, 60_000).await.unwrap();
    let mut owners: Vec<&str> = jobs.iter().map(|j| j.delivery_id.as_str()).collect();
    owners.sort();
    assert_eq!(owners, ["d1", "d2"], "no job of the failed command remains");
}

#[tokio::test]
async fn opening_an_up_to_date_store_takes_no_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let relay = Store::open(&path, Synchronous::Full).unwrap();
    relay.accept(delivery("d1", None, 1)).await.unwrap();
    // Another process holds the write lock, as a busy relay does.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let inspector = Store::open(&path, Synchronous::Full).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "opening waited for the write lock"
    );
    assert_eq!(
        inspector.list(ListFilter::default()).await.unwrap().len(),
        1
    );
    holder.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test]
async fn reading_a_backup_copy_leaves_its_journal_mode_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let relay = Store::open(&path, Synchronous::Full).unwrap();
    relay.accept(delivery("d1", None, 1)).await.unwrap();
    let copy = dir.path().join("copy.db");
    Connection::open(&path)
        .unwrap()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    let journal_mode = |path: &std::path::Path| -> String {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap()
    };
    assert_eq!(
        journal_mode(&copy),
        "delete",
        "VACUUM INTO makes a rollback-mode copy"
    );
    let inspector = Store::open_beside_relay(&copy).unwrap();
    assert_eq!(
        inspector.list(ListFilter::default()).await.unwrap().len(),
        1
    );
    inspector.close().await;
    assert_eq!(journal_mode(&copy), "delete");
    // `serve` puts a store it opens in WAL mode.
    Store::open(&copy, Synchronous::Full).unwrap().close().await;
    assert_eq!(journal_mode(&copy), "wal");
}

#[tokio::test]
async fn a_new_store_has_large_pages_and_an_old_one_keeps_its_own() {
    let (dir, store) = open();
    let page_size = |path: &std::path::Path| -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap()
    };
    assert_eq!(page_size(store.path()), PAGE_SIZE);
    // A store created with SQLite's default pages opens as it is.
    let old = dir.path().join("old.db");
    Connection::open(&old)
        .unwrap()
        .execute_batch(
            "PRAGMA page_size = 4096; CREATE TABLE t (x); DROP TABLE t; PRAGMA journal_mode = WAL;",
        )
        .unwrap();
    let reopened = Store::open(&old, Synchronous::Full).unwrap();
    reopened.accept(delivery("d1", None, 1)).await.unwrap();
    assert_eq!(page_size(&old), 4096);
}

#[test]
fn the_wal_is_checkpointed_every_four_megabytes_whatever_the_page_size() {
    let dir = tempfile::tempdir().unwrap();
    for (name, page_size, pages) in [("new.db", None, 256), ("old.db", Some(4096), 1024)] {
        let path = dir.path().join(name);
        if let Some(size) = page_size {
            Connection::open(&path)
                .unwrap()
                .execute_batch(&format!(
                    "PRAGMA page_size = {size}; CREATE TABLE t (x); DROP TABLE t;"
                ))
                .unwrap();
        }
        let conn = open_connection(&path, Opener::Serve).unwrap();
        writer::tune(&conn, Synchronous::Full).unwrap();
        let autocheckpoint: i64 = conn
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(autocheckpoint, pages, "{name}");
    }
}

#[tokio::test]
async fn only_serve_builds_a_new_index_on_a_store_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    Store::open(&path, Synchronous::Full).unwrap().close().await;
    // A store of the release before the index.
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP INDEX deliveries_debounce_open")
        .unwrap();
    let has_index = || {
        Connection::open(&path)
            .unwrap()
            .prepare("SELECT 1 FROM sqlite_schema WHERE name = 'deliveries_debounce_open'")
            .unwrap()
            .exists([])
            .unwrap()
    };
    Store::open_beside_relay(&path).unwrap().close().await;
    assert!(!has_index(), "an inspection command leaves it to serve");
    Store::open(&path, Synchronous::Full).unwrap().close().await;
    assert!(has_index());
}

#[tokio::test]
async fn a_store_of_the_release_before_the_split_queue_trades_its_indexes_and_keeps_its_retries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    Store::open(&path, Synchronous::Full).unwrap().close().await;
    // The queue's indexes of the release before, and a retry it scheduled.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DROP INDEX jobs_untried;
             DROP INDEX jobs_retried;
             CREATE INDEX jobs_queued ON jobs (route, next_attempt_at) WHERE status = 'pending';
             CREATE INDEX jobs_retrying ON jobs (attempts) WHERE status = 'pending' AND attempts > 0;
             INSERT INTO deliveries (id, route, received_at, status, request)
                 VALUES ('retried', 'r', 500, 'pending', '{}');
             INSERT INTO jobs (delivery_id, route, target_index, repo, label, path, body, status,
                               attempts, next_attempt_at, created_at)
                 VALUES ('retried', 'r', 0, 'acme/a', 'deploy', '/repos/acme/a/dispatches', '{}',
                         'pending', 3, 4_000, 500);",
        )
        .unwrap();
    let conn = Connection::open(&path).unwrap();
    let changes = schema::migrate(&conn, Opener::Serve).unwrap().changes;
    assert_eq!(
        changes,
        [
            "index jobs_untried",
            "index jobs_retried",
            "dropped index jobs_queued",
            "dropped index jobs_retrying"
        ]
    );
    drop(conn);
    let store = Store::open(&path, Synchronous::Full).unwrap();
    assert_eq!(store.next_due_ms().await.unwrap(), None, "not read yet");
    assert!(store.lease_due(3_999, 10, 60_000).await.unwrap().is_empty());
    assert_eq!(store.next_due_ms().await.unwrap(), Some(4_000));
    let leased = store.lease_due(4_000, 10, 60_000).await.unwrap();
    assert_eq!(
        (leased[0].delivery_id.as_str(), leased[0].attempts),
        ("retried", 3)
    );
    assert_eq!(store.queue_depth().await.unwrap().retrying, 1);
}

#[tokio::test]
async fn a_store_made_by_the_first_schema_gains_the_later_columns_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("first.db");
    // The tables as the first release created them, at schema version 1.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE deliveries (id TEXT PRIMARY KEY, route TEXT NOT NULL,
                 received_at INTEGER NOT NULL, status TEXT NOT NULL, dedupe_key TEXT,
                 request TEXT NOT NULL, error TEXT, finished_at INTEGER);
             CREATE TABLE jobs (id INTEGER PRIMARY KEY,
                 delivery_id TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
                 target_index INTEGER NOT NULL, repo TEXT NOT NULL, label TEXT NOT NULL,
                 path TEXT NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
                 next_attempt_at INTEGER NOT NULL, leased_until INTEGER, last_error TEXT,
                 created_at INTEGER NOT NULL, finished_at INTEGER);
             CREATE TABLE attempts (id INTEGER PRIMARY KEY,
                 job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
                 started_at INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
                 status_code INTEGER, detail TEXT NOT NULL);
             CREATE INDEX jobs_due ON jobs (next_attempt_at) WHERE status = 'pending';
             INSERT INTO deliveries (id, route, received_at, status, request)
                 VALUES ('queued-before', 'old', 500, 'pending', '{}');
             INSERT INTO jobs (delivery_id, target_index, repo, label, path, body, status,
                               next_attempt_at, created_at)
                 VALUES ('queued-before', 0, 'acme/a', 'deploy', '/repos/acme/a/dispatches', '{}',
                         'pending', 500, 500);
             INSERT INTO attempts (job_id, started_at, duration_ms, status_code, detail)
                 VALUES (1, 600, 20, 502, 'Bad Gateway');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    // What the upgrade changes is said once, and a second open, up to
    // date, has nothing to say.
    let conn = Connection::open(&path).unwrap();
    let upgrade = schema::migrate(&conn, Opener::Serve).unwrap();
    assert_eq!(upgrade.from_schema, 1);
    let changes = upgrade.changes.join(", ");
    for change in [
        "table readiness",
        "column jobs.route",
        "column attempts.repo",
        "index jobs_untried",
        "index jobs_retried",
        "index deliveries_route",
        "dropped index jobs_due",
        "a route for 1 queued jobs",
    ] {
        assert!(changes.contains(change), "{change}: {changes}");
    }
    assert_eq!(
        schema::migrate(&conn, Opener::Serve).unwrap(),
        schema::Upgrade::default()
    );
    // An attempt recorded before attempts kept their repository shows its
    // job's.
    let (_, attempts) = schema::get(&conn, "queued-before").unwrap().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].repo, "acme/a");
    drop(conn);
    let new_store = Connection::open(dir.path().join("new.db")).unwrap();
    assert_eq!(
        schema::migrate(&new_store, Opener::Serve).unwrap(),
        schema::Upgrade::default(),
        "a new store is made, not upgraded"
    );
    let store = Store::open(&path, Synchronous::Full).unwrap();
    let mut debounced = delivery("d1", None, 1);
    debounced.debounce = Some(DebounceWindow {
        window_ms: 1_000,
        max_wait_ms: 5_000,
    });
    assert_eq!(store.accept(debounced).await.unwrap(), Accepted::Stored);
    let listed = store
        .list(ListFilter {
            status: None,
            route: None,
            since_ms: None,
            limit: 10,
            offset: 0,
            before: None,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    // A job queued before jobs kept their route takes its turn in the
    // queue, and the index that ordered the queue before is gone.
    let leased: Vec<String> = store
        .lease_due(5_000, 10, 60_000)
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.delivery_id)
        .collect();
    assert_eq!(leased, ["queued-before", "d1"]);
    // And the later tables and indexes: readiness writes its row, a
    // rate-limit pause is kept, and the open debounce window is found
    // through its own index.
    store.check_writable().await.unwrap();
    store.save_pause(1_000, 2_000).await.unwrap();
    assert_eq!(store.pause_until_ms().await.unwrap(), Some(1_000));
    let conn = Connection::open(&path).unwrap();
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", schema::OPEN_WINDOW))
        .unwrap()
        .query_map(["r", "[]"], |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|step| step.contains("deliveries_debounce_open")),
        "{plan:?}"
    );
    let old_index: bool = conn
        .prepare("SELECT 1 FROM sqlite_schema WHERE name = 'jobs_due'")
        .unwrap()
        .exists([])
        .unwrap();
    assert!(!old_index, "jobs_due is dropped");
}

#[tokio::test]
async fn a_run_of_unstated_limits_is_kept_beside_the_pause_and_forgotten_when_it_ends() {
    let (_dir, store) = open();
    assert_eq!(store.unstated_run().await.unwrap(), None);
    // The run is kept before any pause is: the row it makes holds none.
    store.save_unstated_run(1, Some(60_000)).await.unwrap();
    assert_eq!(store.unstated_run().await.unwrap(), Some((1, Some(60_000))));
    assert_eq!(store.pause_until_ms().await.unwrap(), Some(0));
    // Keeping the pause leaves the run, and the run leaves the pause.
    store.save_pause(60_000, 100_000).await.unwrap();
    store.save_unstated_run(2, Some(180_000)).await.unwrap();
    assert_eq!(
        store.unstated_run().await.unwrap(),
        Some((2, Some(180_000)))
    );
    assert_eq!(store.pause_until_ms().await.unwrap(), Some(60_000));
    store.save_unstated_run(0, None).await.unwrap();
    assert_eq!(store.unstated_run().await.unwrap(), None, "the run ended");
    assert_eq!(store.pause_until_ms().await.unwrap(), Some(60_000));
}

#[test]
fn store_urls_name_files_and_never_repeat_a_password() {
    let base = std::path::Path::new("/etc/relay");
    let cases = [
        ("sqlite:relay.db", Ok("/etc/relay/relay.db")),
        ("sqlite:///data/relay.db", Ok("/data/relay.db")),
        ("sqlite://relay.db", Ok("/etc/relay/relay.db")),
        (
            "sqlite://backup@2024/relay.db",
            Ok("/etc/relay/backup@2024/relay.db"),
        ),
        ("/data/relay@2.db", Ok("/data/relay@2.db")),
        (
            "sqlite://relay:hunter2@db.internal/relay.db",
            Err("names a user or a host"),
        ),
        (
            "postgres://relay:hunter2@db/relay",
            Err("the scheme `postgres` is not supported"),
        ),
        ("sqlite:", Err("names no file")),
    ];
    for (url, expected) in cases {
        match (sqlite_path(url, base), expected) {
            (Ok(path), Ok(want)) => assert_eq!(path, std::path::PathBuf::from(want), "{url}"),
            (Err(e), Err(want)) => {
                let text = e.to_string();
                assert!(text.contains(want), "{url}: {text}");
                assert!(!text.contains("hunter2"), "{url}: {text}");
            }
            (got, want) => panic!("{url}: {got:?}, expected {want:?}"),
        }
    }
}

/// The plan SQLite makes for `sql`, one step a line.
fn plan_of(conn: &Connection, sql: &str) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let mut rows = stmt.raw_query();
    let mut steps = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        steps.push(row.get::<_, String>(3).unwrap());
    }
    steps.join("\n")
}

#[tokio::test]
async fn reads_that_a_large_store_repeats_are_found_through_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = Store::open(&path, Synchronous::Normal).unwrap();
    store.accept(delivery("d1", None, 1)).await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let listing = |status: Option<Status>, before: Option<(i64, String)>| {
        schema::list_statement(&ListFilter {
            status,
            route: None,
            since_ms: None,
            limit: 50,
            offset: 0,
            before,
        })
    };
    // (statement, a step its plan must have); none may scan a whole table
    // (a scan of a query's own rows, such as a common table expression's,
    // is not one).
    let cases = [
        (schema::UNTRIED_JOBS.to_string(), "jobs_untried"),
        (schema::RETRYING_JOBS.to_string(), "jobs_retried"),
        (schema::FAILED_JOBS.to_string(), "jobs_failed"),
        (
            schema::UNRENDERED_DELIVERIES.to_string(),
            "deliveries_status (status=?)",
        ),
        (schema::FAILED_BY_ID.to_string(), "(id=?)"),
        (schema::PRUNABLE.to_string(), "received_at<?"),
        (
            listing(Some(Status::Failed), None),
            "deliveries_status (status=?)",
        ),
        (
            listing(Some(Status::Delivered), Some((1_000, "d".into()))),
            "deliveries_status (status=? AND received_at<?)",
        ),
        (
            schema::list_statement(&ListFilter {
                route: Some("r".into()),
                before: Some((1_000, "d".into())),
                ..ListFilter::default()
            }),
            "deliveries_route (route=? AND received_at<?)",
        ),
        (
            schema::NEXT_LISTED_ROUTE.to_string(),
            "deliveries_route (route>?)",
        ),
    ];
    for (sql, wanted) in cases {
        let plan = plan_of(&conn, &sql);
        assert!(plan.contains(wanted), "{sql}\n{plan}");
        let scans_a_table = |step: &str| {
            step.strip_prefix("SCAN ")
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|name| schema::TABLES.contains(&name))
                && !step.contains("INDEX")
        };
        assert!(!plan.lines().any(scans_a_table), "{sql}\n{plan}");
    }
    // The statements each lease and each idle worker run seek into the
    // queue's index: none walks it, or sorts what it found, whatever the
    // depth of the queue.
    let seeks = [
        (schema::NEXT_UNTRIED_ROUTE, "jobs_untried (route>?)"),
        (
            schema::UNTRIED_DUE_OF_ROUTE,
            "jobs_untried (route=? AND next_attempt_at<?)",
        ),
        (schema::NEXT_RETRIED_ROUTE, "jobs_retried (route>?)"),
        (
            schema::RETRIED_DUE_OF_ROUTE,
            "jobs_retried (route=? AND next_attempt_at<?)",
        ),
        (schema::NEXT_RETRY_OF_ROUTE, "jobs_retried (route=?)"),
        (schema::NEXT_UNTRIED_DUE, "jobs_untried (route=?)"),
        (schema::QUEUED_WITHOUT_ROUTE, "jobs_untried (route=?)"),
        (schema::QUEUED_WITHOUT_ROUTE, "jobs_retried (route=?)"),
    ];
    for (sql, wanted) in seeks {
        let plan = plan_of(&conn, sql);
        assert!(plan.contains(wanted), "{sql}\n{plan}");
        assert!(
            !plan.contains("SCAN jobs") && !plan.contains("TEMP B-TREE"),
            "{sql}\n{plan}"
        );
    }
}

#[tokio::test]
async fn a_kept_pause_keeps_the_later_end_unless_it_is_past_belief() {
    let (_dir, store) = open();
    assert_eq!(store.pause_until_ms().await.unwrap(), None);
    store.save_pause(5_000, 100_000).await.unwrap();
    store.save_pause(3_000, 100_000).await.unwrap();
    assert_eq!(
        store.pause_until_ms().await.unwrap(),
        Some(5_000),
        "a shorter pause never shortens a longer one"
    );
    store.save_pause(9_000, 100_000).await.unwrap();
    assert_eq!(store.pause_until_ms().await.unwrap(), Some(9_000));
    // Kept under a clock that ran a year fast: replaced by the next pause.
    store
        .save_pause(31_536_000_000, 31_600_000_000)
        .await
        .unwrap();
    store.save_pause(12_000, 100_000).await.unwrap();
    assert_eq!(store.pause_until_ms().await.unwrap(), Some(12_000));
}

#[tokio::test]
async fn another_programs_database_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    // Programs number their schemas too: whatever version it claims.
    for version in [0, 1, 7] {
        let path = dir.path().join(format!("app{version}.db"));
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
                .unwrap();
            conn.pragma_update(None, "user_version", version).unwrap();
        }
        let Err(error) = Store::open(&path, Synchronous::Full) else {
            panic!("a database of another program (version {version}) was opened as a store");
        };
        let message = error.to_string();
        assert!(
            message.contains("another program") && message.contains("users"),
            "{version}: {message}"
        );
        let conn = rusqlite::Connection::open(&path).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 1, "{version}: nothing was added to it");
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "delete", "{version}: nor was it switched to WAL");
    }
    // One that names itself another program's is refused, tables or not.
    let marked = dir.path().join("marked.db");
    rusqlite::Connection::open(&marked)
        .unwrap()
        .pragma_update(None, "application_id", 0x1234)
        .unwrap();
    let Err(error) = Store::open(&marked, Synchronous::Full) else {
        panic!("a database with another application id was opened as a store");
    };
    assert!(
        error.to_string().contains("application_id is 0x1234"),
        "{error}"
    );

    // A new store is marked as the relay's; one made before the mark, and
    // one whose creation stopped before its version was written, hold only
    // the relay's tables and are opened.
    let fresh = dir.path().join("fresh.db");
    Store::open(&fresh, Synchronous::Full)
        .unwrap()
        .close()
        .await;
    let conn = rusqlite::Connection::open(&fresh).unwrap();
    let id: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(id, 0x6472_6c79);
    conn.pragma_update(None, "application_id", 0).unwrap();
    conn.pragma_update(None, "user_version", 0).unwrap();
    drop(conn);
    Store::open(&fresh, Synchronous::Full)
        .unwrap()
        .close()
        .await;
}

#[test]
fn the_list_of_the_relays_tables_is_the_schemas() {
    let mut created: Vec<&str> = schema::SCHEMA
        .lines()
        .filter_map(|line| line.strip_prefix("CREATE TABLE IF NOT EXISTS "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    created.sort_unstable();
    let mut listed = schema::TABLES.to_vec();
    listed.sort_unstable();
    assert_eq!(created, listed);
}

#[test]
fn a_database_error_says_sqlites_message_once_when_its_chain_is_printed() {
    let sqlite = Connection::open_in_memory()
        .unwrap()
        .execute("INSERT INTO nowhere VALUES (1)", [])
        .unwrap_err();
    let chain = format!("{:#}", anyhow::Error::new(StoreError::from(sqlite)));
    assert_eq!(
        chain.matches("no such table: nowhere").count(),
        1,
        "{chain}"
    );
}

#[tokio::test]
async fn a_fanout_with_a_target_failed_for_good_is_failed_while_its_sibling_is_retried() {
    let (_dir, store) = open();
    store.accept(delivery("d1", None, 2)).await.unwrap();
    let jobs = store.lease_due(5_000, 10, 60_000).await.unwrap();
    let retry = JobNext::Retry {
        at_ms: 60_000,
        not_before_ms: None,
        counts_as_failure: true,
    };
    store.record(attempt(&jobs[0], retry)).await.unwrap();
    let failed = JobNext::Failed {
        reason: "404".into(),
    };
    store.record(attempt(&jobs[1], failed)).await.unwrap();

    let listed = |status| {
        let store = store.clone();
        async move {
            let filter = ListFilter {
                status: Some(status),
                ..ListFilter::default()
            };
            store.list(filter).await.unwrap()
        }
    };
    let failed = listed(Status::Failed).await;
    assert_eq!(failed.len(), 1, "found by `deliveries --status failed`");
    assert_eq!(
        failed[0].finished_at_ms, None,
        "not finished while one is sent"
    );
    assert_eq!(failed[0].error.as_deref(), Some("acme/r1: 404"));
    assert_eq!(failed[0].targets[0].status, Status::Pending);
    assert_eq!(failed_targets(&store).await, [(0, false), (1, true)]);
    assert_eq!(
        store.prune_finished(i64::MAX).await.unwrap(),
        0,
        "a delivery with a target still being sent is never pruned"
    );

    // Redelivering queues the failed target only, beside the one retrying.
    assert_eq!(
        rerender(&store, "d1", &[0, 1], "acme/fixed", 6_000).await,
        Rerendered::Queued
    );
    let pending = listed(Status::Pending).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].error, None);
    let redelivered = &pending[0].targets[1];
    assert_eq!(redelivered.last_error, None, "the failure's reason is gone");
    assert_eq!(redelivered.counted_attempts, 0);
    let requeued = store.lease_due(6_000, 10, 60_000).await.unwrap();
    assert_eq!(requeued.len(), 1, "the retrying job is not due yet");
    assert_eq!(
        (requeued[0].target_index, requeued[0].repo.as_str()),
        (1, "acme/fixed")
    );
    store
        .record(attempt(&requeued[0], JobNext::Delivered))
        .await
        .unwrap();
    let retried = store.lease_due(60_000, 10, 60_000).await.unwrap();
    assert_eq!(retried[0].target_index, 0);
    store
        .record(attempt(&retried[0], JobNext::Delivered))
        .await
        .unwrap();
    let delivered = listed(Status::Delivered).await;
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].finished_at_ms.is_some());
}

#[tokio::test]
async fn since_selects_deliveries_by_when_they_failed_not_when_they_arrived() {
    let (_dir, store) = open();
    // Received at 1 s; retried until it failed for good at 50 s.
    store.accept(delivery("late", None, 1)).await.unwrap();
    let jobs = store.lease_due(5_000, 10, 60_000).await.unwrap();
    let mut failed = attempt(
        &jobs[0],
        JobNext::Failed {
            reason: "gave up".into(),
        },
    );
    failed.started_at_ms = 50_000;
    store.record(failed).await.unwrap();
    // Received at 40 s and failed to render then.
    let mut early = delivery("unrendered", None, 0);
    early.received_at_ms = 40_000;
    early.failure = Some("render".into());
    store.accept(early).await.unwrap();

    let since = |ms| {
        let store = store.clone();
        async move {
            let found = store.failed_deliveries(None, Some(ms), None).await.unwrap();
            found.into_iter().map(|d| d.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(since(30_000).await, ["late", "unrendered"]);
    assert_eq!(since(45_000).await, ["late"]);
    assert_eq!(since(60_000).await, Vec::<String>::new());
}

#[test]
fn sqlites_terse_errors_name_their_usual_cause() {
    let error = |code| {
        StoreError::Database(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
        .to_string()
    };
    assert!(error(rusqlite::ffi::SQLITE_IOERR).contains("a file-size limit"));
    assert!(error(rusqlite::ffi::SQLITE_READONLY).contains("and its directory"));
    assert!(!error(rusqlite::ffi::SQLITE_BUSY).contains('('));
}

/// A store of a few hundred deliveries, closed, with some of the pages
/// that hold the deliveries' rows overwritten: the schema, the queue and
/// the indexes still read, stored webhooks do not. Delivery `d{i}` has the
/// dedupe key `k{i}`.
pub(super) async fn damaged_store() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = Store::open(&path, Synchronous::Normal).unwrap();
    for i in 0..300 {
        let mut d = delivery(&format!("d{i}"), Some(&format!("k{i}")), 1);
        d.request = EncodedRequest::from(&StoredRequest {
            content_type: None,
            query: vec![],
            headers: vec![],
            body: "x".repeat(2_000),
            body_base64: false,
        });
        store.accept(d).await.unwrap();
    }
    store.close().await;
    let leaves: Vec<i64> = Connection::open(&path)
        .unwrap()
        .prepare("SELECT pageno FROM dbstat WHERE name = 'deliveries' AND pagetype = 'leaf'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(leaves.len() > 10, "{leaves:?}");
    let mut bytes = std::fs::read(&path).unwrap();
    let page = PAGE_SIZE as usize;
    for number in &leaves[2..leaves.len() - 2] {
        let start = (*number as usize - 1) * page;
        bytes[start..start + page].fill(0xAB);
    }
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[tokio::test]
async fn a_damaged_store_file_is_found_at_start_and_every_write_is_refused() {
    let (_dir, path) = damaged_store().await;
    let store = Store::open(&path, Synchronous::Normal).unwrap();
    store.check_writable().await.unwrap();
    store.check_integrity().await.unwrap();
    let refused = store.check_writable().await.unwrap_err().to_string();
    assert!(refused.contains("is damaged"), "{refused}");
    assert!(refused.contains("A corrupt store"), "{refused}");
    let accepted = store.accept(delivery("new", None, 1)).await;
    assert!(accepted.is_err(), "{accepted:?}");
    assert!(store.lease_due(5_000, 10, 60_000).await.is_err());
}

#[tokio::test]
async fn damage_a_read_runs_into_refuses_every_write_after_it() {
    let (_dir, path) = damaged_store().await;
    let store = Store::open(&path, Synchronous::Normal).unwrap();
    let listed = store
        .list(ListFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(listed.contains("the store file is damaged"), "{listed}");
    let refused = store.check_writable().await.unwrap_err().to_string();
    assert!(refused.contains("is damaged"), "{refused}");
}

#[tokio::test]
async fn a_sound_store_passes_the_check_at_start() {
    let (_dir, store) = open();
    store.accept(delivery("d1", None, 2)).await.unwrap();
    store.check_integrity().await.unwrap();
    store.check_writable().await.unwrap();
    store.accept(delivery("d2", None, 1)).await.unwrap();
}

#[tokio::test]
async fn each_commit_is_reported_with_its_commands_once_observed() {
    let (_dir, store) = open();
    // A commit before an observer is set is not reported, and does not
    // keep a later observer from being told of the next ones.
    store.accept(delivery("d0", None, 1)).await.unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    store.observe_commits(Box::new(move |commit| seen.lock().unwrap().push(*commit)));
    // A second observer is ignored: the first keeps every report.
    store.observe_commits(Box::new(|_| panic!("a second observer is told nothing")));

    let accepts: Vec<_> = (1..=8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.accept(delivery(&format!("d{i}"), None, 1)).await })
        })
        .collect();
    for accept in accepts {
        assert_eq!(accept.await.unwrap().unwrap(), Accepted::Stored);
    }

    let reports = reports.lock().unwrap().clone();
    assert!(!reports.is_empty());
    assert_eq!(
        reports.iter().map(|r| r.commands).sum::<usize>(),
        8,
        "every accept is in exactly one reported commit: {reports:?}"
    );
    assert!(
        reports
            .iter()
            .all(|r| r.commands >= 1 && r.duration > Duration::ZERO)
    );
}

/// `redeliver` reads failed deliveries a page at a time; the pages follow
/// one another without a gap or a repeat, deliveries received in the same
/// millisecond included.
#[tokio::test]
async fn failed_deliveries_are_read_in_pages_that_neither_skip_nor_repeat() {
    let (_dir, store) = open();
    for (id, received_at_ms) in [("c", 2_000), ("a", 1_000), ("b", 2_000), ("d", 3_000)] {
        let mut failed = delivery_of(id, "r", received_at_ms);
        failed.failure = Some("render".into());
        store.accept(failed).await.unwrap();
    }
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .failed_deliveries_after(None, None, after.clone(), 2)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|d| (d.received_at_ms, d.id.clone()));
        pages.push(page.into_iter().map(|d| d.id).collect::<Vec<_>>());
    }
    assert_eq!(pages, [["a", "b"], ["c", "d"]]);
}

/// Listing every route merges each route's newest deliveries: the pages
/// hold what one ordering of all deliveries by arrival (newest first, then
/// by id) would, whichever way they are paged.
#[tokio::test]
async fn every_routes_deliveries_are_listed_newest_first_however_paged() {
    let (_dir, store) = open();
    let routes = ["bulk", "cms", "jenkins"];
    let mut all = Vec::new();
    for i in 0..30_i64 {
        // Arrivals interleave between routes, and some share a millisecond.
        let route = routes[(i * 7 % 3) as usize];
        let received_at_ms = 1_000 + (i / 2) * 10;
        let id = format!("d{i:02}");
        store
            .accept(delivery_of(&id, route, received_at_ms))
            .await
            .unwrap();
        all.push((received_at_ms, id));
    }
    all.sort_unstable_by(|a, b| b.cmp(a));
    let ids = |listed: Vec<DeliverySummary>| -> Vec<String> {
        listed.into_iter().map(|d| d.id).collect()
    };
    let expected = |from: usize, n: usize| -> Vec<String> {
        all.iter()
            .skip(from)
            .take(n)
            .map(|(_, id)| id.clone())
            .collect()
    };
    for offset in [0, 7, 14, 21, 28] {
        let page = store
            .list(ListFilter {
                limit: 7,
                offset,
                ..ListFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(page), expected(offset, 7), "offset {offset}");
    }
    // Paging by the last one listed, and from a time on.
    let (before_ms, before_id) = all[9].clone();
    let page = store
        .list(ListFilter {
            limit: 5,
            before: Some((before_ms, before_id)),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(page), expected(10, 5));
    let since = store
        .list(ListFilter {
            since_ms: Some(1_100),
            limit: 50,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let want: Vec<String> = all
        .iter()
        .filter(|(at, _)| *at >= 1_100)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids(since), want);
    // One route alone, as before.
    let cms = store
        .list(ListFilter {
            route: Some("cms".into()),
            limit: 50,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(cms.len(), 10);
    assert!(cms.iter().all(|d| d.route == "cms"));
}

/// A delivery's attempts are listed in the order they started: the sends
/// of a fan-out run at once and are recorded as each ends, so the order
/// they were recorded in is not the timeline.
#[tokio::test]
async fn attempts_are_listed_by_when_they_started() {
    let (_dir, store) = open();
    store.accept(delivery("d1", None, 2)).await.unwrap();
    let jobs = store.lease_due(5_000, 10, 60_000).await.unwrap();
    for (job, started_at_ms) in [(&jobs[0], 2_500), (&jobs[1], 2_000)] {
        store
            .record(AttemptRecord {
                started_at_ms,
                ..attempt(job, JobNext::Delivered)
            })
            .await
            .unwrap();
    }
    let (_, attempts) = store.get("d1").await.unwrap().unwrap();
    let started: Vec<i64> = attempts.iter().map(|a| a.started_at_ms).collect();
    assert_eq!(started, [2_000, 2_500]);
}

#[tokio::test]
async fn a_refused_credential_is_kept_from_its_first_refusal_until_accepted_or_a_start() {
    let (_dir, store) = open();
    store.accept(delivery("d1", None, 2)).await.unwrap();
    let jobs = store.lease_due(5_000, 10, 60_000).await.unwrap();
    let retry = JobNext::Retry {
        at_ms: 600_000,
        not_before_ms: None,
        counts_as_failure: false,
    };
    let refused = |job: &Job, started_at_ms: i64| AttemptRecord {
        started_at_ms,
        credential: Some(CredentialChange::Refused("token".into())),
        ..attempt(job, retry.clone())
    };
    store.record(refused(&jobs[0], 2_000)).await.unwrap();
    store.record(refused(&jobs[1], 3_000)).await.unwrap();
    let since_first = vec![RefusedCredential {
        credential: "token".into(),
        since_ms: 2_005,
    }];
    assert_eq!(store.refused_credentials().await.unwrap(), since_first);
    // Another credential's acceptance leaves this one refused.
    let jobs = store.lease_due(700_000, 10, 60_000).await.unwrap();
    let accepted = |job: &Job, credential: &str| AttemptRecord {
        credential: Some(CredentialChange::Accepted(credential.into())),
        ..attempt(job, JobNext::Delivered)
    };
    store.record(accepted(&jobs[0], "app:7")).await.unwrap();
    assert_eq!(store.refused_credentials().await.unwrap(), since_first);
    store.record(accepted(&jobs[1], "token")).await.unwrap();
    assert_eq!(store.refused_credentials().await.unwrap(), []);
    // A start forgets a refusal, which the relay then finds anew.
    store.accept(delivery("d2", None, 1)).await.unwrap();
    let jobs = store.lease_due(800_000, 10, 60_000).await.unwrap();
    store.record(refused(&jobs[0], 800_000)).await.unwrap();
    assert_eq!(store.refused_credentials().await.unwrap().len(), 1);
    store.release_all_leases(900_000).await.unwrap();
    assert_eq!(store.refused_credentials().await.unwrap(), []);
}

/// `deliveries` reads, then closes its store beside a relay that may hold
/// the write lock: closing commits nothing, so it neither waits for the
/// lock nor says the store refused a commit.
#[tokio::test]
async fn closing_a_store_that_only_read_commits_nothing() {
    let (dir, store) = open();
    store.accept(delivery("d1", None, 1)).await.unwrap();
    store.close().await;
    let path = dir.path().join("t.db");
    let inspection = Store::open_beside_relay(&path).unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    inspection.observe_commits(Box::new(move |commit| seen.lock().unwrap().push(*commit)));
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    assert!(inspection.get("d1").await.unwrap().is_some());
    inspection.close().await;
    assert_eq!(reports.lock().unwrap().len(), 0);
    other.execute_batch("COMMIT").unwrap();
}
