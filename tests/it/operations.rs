//! Operating the relay: debounce, the admin API, redelivery semantics.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{TEST_HEAD, TestApp, spawn_app, spawn_app_with};

const WAIT: Duration = Duration::from_secs(60);

/// `POST /admin/deliveries/{id}/redeliver` with the tests' admin token.
async fn admin_redeliver(app: &TestApp, id: &str) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/admin/deliveries/{id}/redeliver")))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
}

fn debounced_route(window: &str, max_wait: &str) -> String {
    format!(
        r#"
  - id: uploads
    verify: none
    debounce: {{ window: {window}, max_wait: {max_wait} }}
    dispatch:
      - repo: acme/blog
        event_type: rebuild
        client_payload:
          n: "{{{{ body.n }}}}"
          delivery: "{{{{ delivery.id }}}}"
      - repo: acme/docs
        event_type: rebuild
        client_payload:
          n: "{{{{ body.n }}}}"
"#
    )
}

/// A route whose one target does not exist, so that its deliveries fail.
const MISSING_TARGET: &str = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/missing\n        event_type: deploy\n";

/// A relay with the admin API on (token `admin-secret`) and one delivery
/// to [`MISSING_TARGET`], failed; answers it and the delivery's id.
async fn one_failed_delivery() -> (crate::helpers::TestApp, String) {
    let app = spawn_app_with(
        TEST_HEAD,
        MISSING_TARGET,
        // As read from a file: the final newline is not part of the token.
        &[("RELAY_ADMIN_TOKEN", "admin-secret\n")],
    )
    .await;
    let accepted: Value = app.post("cms", "{}").await.json().await.unwrap();
    let id = accepted["delivery_id"].as_str().unwrap().to_string();
    app.wait_for_one_failed_delivery().await;
    (app, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_500_gives_one_dispatch_per_target() {
    // A wide window, so that a loaded machine pausing between two of the
    // posts does not split the burst.
    let app = spawn_app(&debounced_route("5s", "30s")).await;
    let sends = (0..500).map(|n| {
        let app = &app;
        async move {
            let response = app.post("uploads", format!(r#"{{"n":{n}}}"#)).await;
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["delivery_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    });
    let ids = futures_util::future::join_all(sends).await;
    let first = ids[0].clone();
    assert!(
        ids.iter().all(|id| *id == first),
        "every webhook of the burst joins one delivery"
    );
    let sent = app.github.wait_for_dispatches(2, WAIT).await;
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0].path, sent[1].path, "one per target");
    // The payload is the last webhook's, and the delivery id it names is
    // the one every sender was answered with.
    let blog = sent.iter().find(|r| r.path.contains("acme/blog")).unwrap();
    let payload = &blog.body.as_ref().unwrap()["client_payload"];
    assert_eq!(payload["delivery"], first.as_str(), "{payload}");
    let list = app
        .wait_for_deliveries(WAIT, |l| l.len() == 1 && l[0]["status"] == "delivered")
        .await;
    assert_eq!(list[0]["coalesced"], 499);
    // Each merged webhook was answered 202, and the log says where it went.
    let line = app
        .wait_for_log(|l| l.contains("Webhook merged into the open debounce window"))
        .await;
    assert!(line.contains(first.as_str()), "{line}");
    // Nothing else arrives later: no job is left to send.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"dispatch_relay_queue_depth{state="pending"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"dispatch_relay_webhooks_coalesced_total{route="uploads"} 499"#),
        "{metrics}"
    );
    assert_eq!(app.github.dispatches().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_in_the_middle_of_a_window_still_sends() {
    // A window long enough that the test kills the relay inside it, however
    // slowly it posts.
    let mut app = spawn_app(&debounced_route("5s", "10s")).await;
    for n in 0..3 {
        let response = app.post("uploads", format!(r#"{{"n":{n}}}"#)).await;
        assert_eq!(response.status(), 202);
    }
    app.kill9();
    assert!(
        app.github.dispatch_attempts().is_empty(),
        "nothing was sent before the window closed"
    );
    app.restart();
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 1 && list[0]["status"] == "delivered"
    })
    .await;
    // One dispatch to each of the route's two targets, not one more.
    let sent = app.github.dispatches();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for request in &sent {
        assert_eq!(
            request.body.as_ref().unwrap()["client_payload"]["n"],
            2,
            "the last payload wins"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_wait_bounds_the_delay_under_a_continuous_stream() {
    // The window is wide, so that a post the loaded machine delays by a
    // few seconds does not close it early.
    let app = spawn_app(&debounced_route("4s", "5s")).await;
    let start = Instant::now();
    // A webhook every 200 ms keeps the 4 s window open for ever; max_wait
    // must cut it at 5 s after the first.
    let mut n = 0;
    while app.github.dispatches().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "max_wait never ended the window"
        );
        let response = app.post("uploads", format!(r#"{{"n":{n}}}"#)).await;
        assert_eq!(response.status(), 202);
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waited = app.github.dispatches()[0].received_at - start;
    assert!(
        waited >= Duration::from_millis(4_900),
        "dispatched after {waited:?}, before max_wait"
    );
    // And soon after it, not at the loop's guard.
    assert!(
        waited < Duration::from_secs(12),
        "dispatched after {waited:?}, long past max_wait"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_lists_shows_and_redelivers_once() {
    let (app, id) = one_failed_delivery().await;

    let admin = |path: &str, token: &str| {
        app.http
            .get(app.url(path))
            .bearer_auth(token.to_string())
            .send()
    };
    let refused = admin("/admin/deliveries", "wrong").await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some(r#"Bearer realm="dispatch-relay admin""#)
    );
    // An offset past what SQLite takes is refused, not read as 0.
    let far = admin(
        "/admin/deliveries?offset=9223372036854775808",
        "admin-secret",
    )
    .await
    .unwrap();
    assert_eq!(far.status(), 400);
    let list: Value = admin("/admin/deliveries?status=failed", "admin-secret")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["deliveries"][0]["id"], id.as_str());
    let one: Value = admin(&format!("/admin/deliveries/{id}"), "admin-secret")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["attempts"][0]["status_code"], 404);
    assert_eq!(one["request"]["body"], "{}", "{one}");
    assert_eq!(one["sent"][0]["method"], "POST", "{one}");
    // A UUID is the same in upper case.
    let upper: Value = admin(
        &format!("/admin/deliveries/{}", id.to_uppercase()),
        "admin-secret",
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(upper["delivery"]["id"], id.as_str());
    assert!(
        one["delivery"]["error"]
            .as_str()
            .unwrap()
            .contains("repository not found")
    );

    // Make the repository visible, then redeliver: delivered, and a second
    // redeliver is refused because the delivery is no longer failed.
    app.github.add_repo("acme/missing");
    let redeliver = || {
        app.http
            .post(app.url(&format!("/admin/deliveries/{id}/redeliver")))
            .bearer_auth("admin-secret")
            .send()
    };
    assert_eq!(redeliver().await.unwrap().status(), 202);
    // Both the refusal of the wrong token and the redelivery are in the log.
    app.wait_for_log(|l| l.contains("Refused an admin request without the admin token"))
        .await;
    let line = app
        .wait_for_log(|l| l.contains("Redelivery requested through the admin API"))
        .await;
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("\"route\":\"cms\""), "{line}");
    app.github.wait_for_dispatches(1, WAIT).await;
    app.wait_for_deliveries(WAIT, |l| l[0]["status"] == "delivered")
        .await;
    let (status, conflict) = crate::helpers::json_of(redeliver().await.unwrap()).await;
    assert_eq!(status, 409);
    assert!(
        conflict["message"]
            .as_str()
            .unwrap()
            .contains("is delivered, not failed"),
        "{conflict}"
    );
    assert_eq!(app.github.dispatches().len(), 1);
    // An id the store does not know is 404, not 409; so is a path that
    // is no delivery id at all, which says so.
    let (status, unknown) = crate::helpers::json_of(
        app.http
            .post(app.url("/admin/deliveries/no-such-id/redeliver"))
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .contains("`no-such-id` is not a delivery id"),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_failure_reaches_slack_once_and_a_burst_becomes_one_summary() {
    let slack = crate::helpers::Recorder::start();
    let team = crate::helpers::Recorder::start();
    let head = format!("{TEST_HEAD}notify:\n  - slack: ${{SLACK_WEBHOOK_URL}}\n");
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/missing\n        event_type: deploy\n  - id: s3\n    verify: none\n    notify:\n      - url: ${TEAM_ALERTS_URL}\n    dispatch:\n      - repo: acme/gone\n        event_type: deploy\n  - id: quiet\n    verify: none\n    notify: []\n    dispatch:\n      - repo: acme/nowhere\n        event_type: deploy\n";
    let mut app = spawn_app_with(
        &head,
        routes,
        &[
            ("SLACK_WEBHOOK_URL", slack.url.as_str()),
            ("TEAM_ALERTS_URL", team.url.as_str()),
        ],
    )
    .await;
    // A route with `notify: []` reports nowhere: its failure is in neither
    // the summary nor a message of its own (both counted below).
    assert_eq!(app.post("quiet", "{}").await.status(), 202);
    app.wait_for_deliveries(WAIT, |l| {
        l.iter()
            .any(|d| d["route"] == "quiet" && crate::helpers::finished_failed(d))
    })
    .await;
    // A route with its own `notify` reports there, not to the top-level list.
    assert_eq!(app.post("s3", "{}").await.status(), 202);
    let alert = team.wait_for(1, WAIT).await;
    assert_eq!(alert[0]["event"], "dispatch_failed");
    assert_eq!(alert[0]["failures"][0]["repo"], "acme/gone");
    // All hundred are accepted before GitHub answers the first, so that
    // all fail inside the 5 s the alert is gathered for, however slow the
    // machine.
    let gate = app.github.hold("POST", "/repos/acme/missing/dispatches");
    let posts = (0..100).map(|_| app.post("cms", "{}"));
    for response in futures_util::future::join_all(posts).await {
        assert_eq!(response.status(), 202);
    }
    gate.wait_for_arrivals(1, WAIT).await;
    gate.open();
    app.wait_for_deliveries(WAIT, |l| {
        l.iter()
            .filter(|d| d["route"] == "cms" && crate::helpers::finished_failed(d))
            .count()
            == 100
    })
    .await;
    let alerts = slack.wait_for(1, WAIT).await;
    let text = alerts[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("dispatch-relay: 100 dispatches failed for good (cms: 100)"),
        "{text}"
    );
    assert!(text.contains("repository not found"));
    assert_eq!(slack.bodies().len(), 1, "one summary, not a flood");
    assert_eq!(
        team.bodies().len(),
        1,
        "the single failure was reported once"
    );
    // The URL is a secret: never in the logs, which name each destination
    // by its place in routes.yaml instead.
    let logs = app.stop_and_read_logs();
    assert!(!logs.iter().any(|l| l.contains("/services/T000")));
    for place in ["notify[0]", "routes[1].notify[0]"] {
        assert!(
            logs.iter().any(|l| l.contains("Failure alert sent")
                && l.contains(&format!("\"destination\":\"{place}\""))),
            "{place}: {logs:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_is_paced_per_credential_and_each_target_is_tracked_on_its_own() {
    let head = "github:\n  token: ${GITHUB_TOKEN}\n  pacing: { concurrency: 1, min_interval: 300ms, per_minute: 80 }\nretry:\n  initial_backoff: 10ms\n  max_backoff: 50ms\n";
    let routes = "  - id: fan\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: a\n      - repo: acme/docs\n        event_type: b\n      - repo: acme/site\n        event_type: c\n";
    let app = spawn_app_with(head, routes, &[]).await;
    app.github
        .push_responses("acme/docs", vec![crate::fake_github::Scripted::Status(503)]);
    assert_eq!(app.post("fan", "{}").await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |l| l.len() == 1 && l[0]["status"] == "delivered")
        .await;
    let attempts: Vec<u64> = list[0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(
        attempts,
        [1, 2, 1],
        "only the target that failed was retried"
    );
    let requests = app.github.dispatch_attempts();
    assert_eq!(requests.len(), 4);
    for pair in requests.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(
            gap >= Duration::from_millis(290),
            "requests {gap:?} apart, under min_interval"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_route_still_finishes_its_queued_jobs() {
    let routes = "  - id: old\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n";
    let app = spawn_app(routes).await;
    // The job waits out GitHub's twelve seconds, far longer than a reload
    // takes (one to two), so it is still queued when its route goes.
    app.github.push_responses(
        "acme/blog",
        vec![crate::fake_github::Scripted::RateLimited {
            retry_after_secs: 12,
        }],
    );
    assert_eq!(app.post("old", "{}").await.status(), 202);
    app.github.wait_for_a_dispatch_attempt(WAIT).await;
    let without = std::fs::read_to_string(app.config_path())
        .unwrap()
        .replace("id: old", "id: new");
    app.write_config(&without);
    let start = Instant::now();
    while app
        .http
        .head(app.url("/hooks/old"))
        .send()
        .await
        .unwrap()
        .status()
        != 404
    {
        assert!(start.elapsed() < WAIT, "the reload never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let removed_at = Instant::now();
    app.github.wait_for_dispatches(1, WAIT).await;
    let attempts = app.github.dispatch_attempts();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts[1].received_at > removed_at,
        "the job was sent before its route was removed, so the test proves nothing"
    );
    let list = app
        .wait_for_deliveries(WAIT, |l| {
            l.iter()
                .any(|d| d["route"] == "old" && d["status"] == "delivered")
        })
        .await;
    assert_eq!(list.iter().filter(|d| d["route"] == "old").count(), 1);
}

/// Corrects `acme/dcos` to `acme/docs` in routes.yaml, redelivers the
/// failed deliveries and waits until the first listed is delivered.
async fn fix_misspelt_target_and_redeliver(app: &TestApp) {
    let fixed = std::fs::read_to_string(app.config_path())
        .unwrap()
        .replace("acme/dcos", "acme/docs");
    app.write_config(&fixed);
    app.redeliver_failed();
    app.wait_for_deliveries(WAIT, |l| l[0]["status"] == "delivered")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliver_renders_a_github_failure_again_with_the_fixed_routes_and_only_its_failed_target()
{
    // A fan-out where the second target names a misspelt repository: GitHub
    // answers 404 and the delivery fails, while the first target is sent.
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n      - repo: acme/dcos\n        event_type: deploy\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    assert_eq!(app.post("cms", r#"{"n":1}"#).await.status(), 202);
    app.wait_for_one_failed_delivery().await;
    let sent_to = |repo: &str| app.github.dispatches_to(repo);
    assert_eq!(sent_to("acme/blog"), 1);

    // Fix the spelling and redeliver: the failed target is rendered again
    // with the routes in force now and reaches the right repository; the
    // target that was delivered is not sent twice.
    fix_misspelt_target_and_redeliver(&app).await;
    assert_eq!(sent_to("acme/docs"), 1);
    assert_eq!(
        sent_to("acme/blog"),
        1,
        "the delivered target is not sent again"
    );

    // The history still says where each attempt went: the 404 came from
    // the misspelt repository, though the target now names the right one.
    let id = app.deliveries(&[])[0]["id"].as_str().unwrap().to_string();
    let shown = app.cli(&["deliveries", "--id", &id, "--json"]);
    let detail: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let sent: Vec<(String, Value)> = detail["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["repo"].as_str().unwrap().to_string(),
                a["status_code"].clone(),
            )
        })
        .collect();
    assert!(sent.contains(&("acme/dcos".into(), 404.into())), "{sent:?}");
    assert!(sent.contains(&("acme/docs".into(), 204.into())), "{sent:?}");
    assert!(
        !sent.contains(&("acme/docs".into(), 404.into())),
        "{sent:?}"
    );
    let table = String::from_utf8_lossy(&app.cli(&["deliveries", "--id", &id]).stdout).into_owned();
    assert!(
        table.lines().any(|l| l.contains("acme/dcos  404")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fanout_target_that_fails_for_good_can_be_redelivered_while_its_sibling_is_in_flight() {
    // acme/blog's request is held at the fake until the end, so its job is
    // in flight throughout, while the misspelt acme/dcos fails at once.
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n      - repo: acme/dcos\n        event_type: deploy\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    let blog = app.github.hold("POST", "/repos/acme/blog/dispatches");
    assert_eq!(app.post("cms", r#"{"n":1}"#).await.status(), 202);
    blog.wait_for_arrivals(1, WAIT).await;

    // The alert's commands find it at once, not when its sibling is done.
    let failed = app
        .wait_for_deliveries(WAIT, |l| l.len() == 1 && l[0]["status"] == "failed")
        .await;
    assert_eq!(
        failed[0]["targets"][0]["status"], "pending",
        "{}",
        failed[0]
    );
    assert_eq!(failed[0]["finished_at_ms"], Value::Null);
    let table = app.cli(&["deliveries", "--status", "failed"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("acme/blog:pending(0) acme/dcos:failed(1)"),
        "{table}"
    );

    // Redelivered with the spelling fixed while acme/blog is still held:
    // the fixed target goes at once, and the one in flight goes on.
    let fixed = std::fs::read_to_string(app.config_path())
        .unwrap()
        .replace("acme/dcos", "acme/docs");
    app.write_config(&fixed);
    app.redeliver_failed();
    let first = app.github.wait_for_dispatches(1, WAIT).await;
    assert_eq!(first[0].path, "/repos/acme/docs/dispatches");
    blog.open();
    app.wait_for_deliveries(WAIT, |l| l[0]["status"] == "delivered")
        .await;
    assert_eq!(app.github.dispatches_to("acme/docs"), 1);
    assert_eq!(
        app.github.dispatches_to("acme/blog"),
        1,
        "the target in flight went on, once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliver_leaves_a_delivery_failed_when_the_route_now_skips_it() {
    let (app, id) = one_failed_delivery().await;
    let skipping = std::fs::read_to_string(app.config_path()).unwrap().replace(
        "    verify: none\n",
        "    verify: none\n    when: body.kind == 'publish'\n",
    );
    app.reload_config(&skipping).await;

    // Nothing is sent, and the delivery is not called delivered: it stays
    // failed, and the answer says why.
    let before = app.deliveries(&[]);
    let answer = admin_redeliver(&app, &id).await;
    assert_eq!(answer.status(), 422);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("`when` is false"),
        "{body}"
    );
    // Its error still says what GitHub answered: the route may skip it
    // only for a while, and GitHub's reason is what a fix needs.
    let list = app.deliveries(&[]);
    assert_eq!(list[0]["status"], "failed");
    assert_eq!(list[0]["error"], before[0]["error"]);
    assert!(
        list[0]["error"]
            .as_str()
            .unwrap()
            .contains("repository not found"),
        "{list:?}"
    );
    assert_eq!(app.github.dispatch_attempts().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_list_pages_by_cursor_without_skipping_while_deliveries_are_redelivered() {
    let routes = MISSING_TARGET;
    let app = spawn_app_with(TEST_HEAD, routes, &[("RELAY_ADMIN_TOKEN", "admin-secret")]).await;
    for n in 0..5 {
        assert_eq!(
            app.post("cms", format!(r#"{{"n":{n}}}"#)).await.status(),
            202
        );
    }
    app.wait_for_deliveries(WAIT, |l| {
        l.len() == 5 && l.iter().all(crate::helpers::finished_failed)
    })
    .await;
    // The command's listing says when it is not all of them.
    let more = |limit: &str| {
        let listing = app.cli(&["deliveries", "--json", "--limit", limit]);
        let listed: Vec<Value> = serde_json::from_slice(&listing.stdout).unwrap();
        let note = String::from_utf8_lossy(&listing.stderr).to_string();
        (listed.len(), note.contains("Listed the latest"))
    };
    assert_eq!(more("4"), (4, true));
    assert_eq!(more("5"), (5, false));
    app.github.add_repo("acme/missing");
    let admin_get = |path: String, token: &'static str| {
        let request = app.http.get(app.url(&path)).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };

    // Walk the failed list two at a time, redelivering each page before
    // asking for the next: every delivery is seen exactly once.
    let mut seen = Vec::new();
    let mut path = "/admin/deliveries?status=failed&limit=2".to_owned();
    loop {
        let page: Value = admin_get(path.clone(), "admin-secret")
            .await
            .json()
            .await
            .unwrap();
        for delivery in page["deliveries"].as_array().unwrap() {
            let id = delivery["id"].as_str().unwrap().to_owned();
            let answer = admin_redeliver(&app, &id).await;
            assert_eq!(answer.status(), 202);
            let answer: Value = answer.json().await.unwrap();
            assert_eq!(answer["as_first_rendered"], false, "{answer}");
            seen.push(id);
        }
        match page["next_before"].as_str() {
            Some(cursor) => {
                path = format!("/admin/deliveries?status=failed&limit=2&before={cursor}")
            }
            None => break,
        }
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (5, 5), "{seen:?}");

    // The token is checked before the query is read.
    let bad_query = "/admin/deliveries?limit=x".to_owned();
    assert_eq!(admin_get(bad_query.clone(), "wrong").await.status(), 401);
    assert_eq!(admin_get(bad_query, "admin-secret").await.status(), 400);
    let bad_cursor = "/admin/deliveries?before=nonsense".to_owned();
    assert_eq!(admin_get(bad_cursor, "admin-secret").await.status(), 400);
    // Each wrong parameter is a 400 that names it, as the command line
    // refuses the same: a script's mistake gets an error, not a plausible
    // page.
    for (query, named) in [
        ("limit=0", "`limit`"),
        ("limit=x", "`limit`"),
        ("offset=-1", "`offset`"),
        ("route=", "`route`"),
        ("before=1795363379215.notauuid", "`before`"),
        ("status=bogus", "status `bogus`"),
        ("stauts=failed", "`stauts`"),
        ("route=cms&route=other", "`route` is given more than once"),
        // A route neither configured nor in the store is most likely a
        // typo: an empty page would read as "nothing failed".
        (
            "route=nosuch&status=failed",
            "`nosuch` is not a configured route",
        ),
    ] {
        let answer = admin_get(format!("/admin/deliveries?{query}"), "admin-secret").await;
        assert_eq!(answer.status(), 400, "{query}");
        let body: Value = answer.json().await.unwrap();
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{query}: {body}");
        assert!(!message.contains("deserialize"), "{query}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliver_after_targets_changed_sends_failed_jobs_as_first_rendered_unless_removed() {
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/gone\n        event_type: deploy\n      - repo: acme/blog\n        event_type: deploy\n      - repo: acme/late\n        event_type: deploy\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[("RELAY_ADMIN_TOKEN", "admin-secret")]).await;
    let accepted: Value = app.post("cms", "{}").await.json().await.unwrap();
    let id = accepted["delivery_id"].as_str().unwrap().to_string();
    app.wait_for_one_failed_delivery().await;
    // acme/late now exists; acme/gone is taken out of the route, so
    // acme/blog, which was delivered, moves into a failed target's place.
    app.github.add_repo("acme/late");
    let changed = std::fs::read_to_string(app.config_path())
        .unwrap()
        .replace("      - repo: acme/gone\n        event_type: deploy\n", "");
    app.reload_config(&changed).await;
    let answer: Value = admin_redeliver(&app, &id).await.json().await.unwrap();
    assert_eq!(answer["as_first_rendered"], true, "{answer}");
    assert_eq!(
        answer["left_failed"], 1,
        "acme/gone left the route: {answer}"
    );
    let sent_to = |repo: &str| app.github.dispatch_attempts_to(repo);
    let start = std::time::Instant::now();
    while sent_to("acme/late") < 2 {
        assert!(
            start.elapsed() < WAIT,
            "the failed job that is still routed never went again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.wait_for_deliveries(WAIT, |l| crate::helpers::finished_failed(&l[0]))
        .await;
    assert_eq!(
        sent_to("acme/blog"),
        1,
        "the delivered target is not sent twice"
    );
    assert_eq!(
        sent_to("acme/gone"),
        1,
        "a target taken out of the route is not sent again"
    );

    // With every failed target gone from the route, nothing is sent.
    let only_blog = changed.replace("      - repo: acme/late\n        event_type: deploy\n", "");
    app.write_config(&only_blog);
    let deadline = std::time::Instant::now();
    loop {
        let output = app.cli(&["redeliver", "--id", &id]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if stdout.contains("no longer in route") {
            assert_eq!(output.status.code(), Some(1));
            break;
        }
        assert!(deadline.elapsed() < WAIT, "{stdout}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_debounced_delivery_is_redelivered_rendered_as_the_webhook_it_sent() {
    let routes = r#"
  - id: uploads
    verify: none
    debounce: { window: 6s, max_wait: 10s }
    dispatch:
      - repo: acme/blog
        event_type: rebuild
        client_payload:
          delivery: "{{ delivery.id }}"
          upper: "{{ delivery.id | upper }}"
      - repo: acme/dcos
        event_type: rebuild
        client_payload:
          delivery: "{{ delivery.id }}"
          upper: "{{ delivery.id | upper }}"
"#;
    let app = spawn_app_with(TEST_HEAD, routes, &[("RELAY_ADMIN_TOKEN", "admin-secret")]).await;
    let first: Value = app.post("uploads", "{}").await.json().await.unwrap();
    let id = first["delivery_id"].as_str().unwrap().to_string();
    let second: Value = app.post("uploads", "{}").await.json().await.unwrap();
    assert_eq!(second["coalesced"], 1, "{second}");
    app.wait_for_one_failed_delivery().await;
    let fixed = std::fs::read_to_string(app.config_path())
        .unwrap()
        .replace("acme/dcos", "acme/docs");
    app.reload_config(&fixed).await;
    // The targets did not move: the fixed one is rendered again, as the
    // merged webhook was, and carries what the delivered one carried.
    let answer: Value = admin_redeliver(&app, &id).await.json().await.unwrap();
    assert_eq!(answer["as_first_rendered"], false, "{answer}");
    let sent = app.github.wait_for_dispatches(2, WAIT).await;
    let payload_of = |repo: &str| {
        sent.iter()
            .find(|d| d.path == format!("/repos/{repo}/dispatches"))
            .and_then(|d| d.body.clone())
            .map(|b| b["client_payload"].clone())
            .unwrap()
    };
    assert_eq!(payload_of("acme/docs"), payload_of("acme/blog"));
    // The id printed as is is the window's; one printed otherwise is what
    // the merged webhook rendered.
    assert_eq!(payload_of("acme/blog")["delivery"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_alert_still_being_gathered_is_sent_when_the_relay_stops() {
    let team = crate::helpers::Recorder::start();
    let head = format!("{TEST_HEAD}notify:\n  - url: ${{TEAM_ALERTS_URL}}\n");
    let routes = MISSING_TARGET;
    let mut app = spawn_app_with(&head, routes, &[("TEAM_ALERTS_URL", team.url.as_str())]).await;
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    // The log line, not the store, is waited for: it comes at once, well
    // inside the 5 s the alert waits for others to join it. A stop in that
    // time must not lose it.
    app.wait_for_log(|l| l.contains("Dispatch failed for good"))
        .await;
    assert!(team.bodies().is_empty(), "sent before the relay stopped");
    app.stop_and_read_logs();
    let alert = team.bodies();
    assert_eq!(alert.len(), 1, "{alert:?}");
    assert_eq!(alert[0]["event"], "dispatch_failed");
    assert_eq!(alert[0]["failures"][0]["repo"], "acme/missing");
}

/// A reload that removes a route drops its metric series, and one that adds
/// a route creates its series at zero; a route that stays keeps its counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_forgets_the_metric_series_of_a_removed_route() {
    let route = |id: &str| {
        format!(
            "  - id: {id}\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n"
        )
    };
    let app = spawn_app_with(
        TEST_HEAD,
        &format!("{}{}", route("kept"), route("old")),
        &[],
    )
    .await;
    for id in ["kept", "old"] {
        assert_eq!(app.post(id, "{}").await.status(), 202);
    }
    app.wait_for_deliveries(WAIT, |l| {
        l.len() == 2 && l.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    assert!(app.metrics().await.contains("route=\"old\""));
    let text = std::fs::read_to_string(app.config_path()).unwrap();
    let changed = text.replace(&route("old"), &route("new"));
    assert_ne!(changed, text);
    app.reload_config(&changed).await;
    let metrics = app.metrics().await;
    assert!(!metrics.contains("route=\"old\""), "{metrics}");
    for (series, count) in [
        (
            r#"dispatch_relay_webhooks_received_total{outcome="accepted",route="kept"}"#,
            1,
        ),
        (
            r#"dispatch_relay_dispatches_total{outcome="delivered",route="kept"}"#,
            1,
        ),
        (
            r#"dispatch_relay_webhooks_received_total{outcome="accepted",route="new"}"#,
            0,
        ),
    ] {
        assert!(
            metrics.contains(&format!("{series} {count}")),
            "{series}\n{metrics}"
        );
    }
}

/// A method an endpoint does not take is answered `405` with `Allow` and a
/// JSON error, as on webhook URLs: a forgotten `-X POST` must not read as a
/// wrong URL. Reads also take `HEAD`, as load balancers' checks send.
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_asked_with_the_wrong_method_names_the_right_one() {
    let app = spawn_app_with(
        TEST_HEAD,
        MISSING_TARGET,
        &[("RELAY_ADMIN_TOKEN", "admin-secret")],
    )
    .await;
    let id = "01a20405-fc1c-7000-8000-000000000001";
    for (method, path, allow) in [
        ("GET", format!("/admin/deliveries/{id}/redeliver"), "POST"),
        ("POST", "/healthz".to_owned(), "GET, HEAD"),
        ("POST", "/readyz".to_owned(), "GET, HEAD"),
        ("DELETE", "/metrics".to_owned(), "GET, HEAD"),
        ("POST", "/admin/deliveries".to_owned(), "GET, HEAD"),
        ("PUT", format!("/admin/deliveries/{id}"), "GET, HEAD"),
    ] {
        let response = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        let (_, body) = crate::helpers::json_of(response).await;
        assert_eq!(
            body["error"], "method_not_allowed",
            "{method} {path}: {body}"
        );
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let head = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
    }
    let (status, body) =
        crate::helpers::json_of(app.http.get(app.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}
