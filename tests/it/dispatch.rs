//! What reaches GitHub, and what happens when GitHub refuses: typed
//! rendering, retries, rate limits and permanent failures with their
//! explanations.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_github::Scripted;
use crate::helpers::{TEST_HEAD, TOKEN, hmac_route, spawn_app, spawn_app_with};

const WAIT: Duration = Duration::from_secs(60);

fn one_target(repo: &str) -> String {
    format!(
        "      - repo: {repo}\n        event_type: deploy\n        client_payload:\n          id: \"{{{{ body.id }}}}\"\n"
    )
}

fn status_of(delivery: &Value) -> &str {
    delivery["status"].as_str().unwrap_or_default()
}

/// One route, `cms`, unverified, dispatching `deploy` to acme/blog.
const PLAIN_ROUTE: &str = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n";

#[tokio::test(flavor = "multi_thread")]
async fn typed_rendering_reaches_github_with_the_required_headers() {
    let dispatch = r#"      - repo: acme/blog
        event_type: "cms-{{ body.model }}"
        client_payload:
          model: "{{ body.model }}"
          entry: "{{ body.entry }}"
          count: "{{ body.count }}"
          ok: "{{ body.ok }}"
          tags: "{{ body.tags }}"
          missing: "{{ body.nothing is defined }}"
          text: "id {{ body.count }}"
          unit: false
          ratio: 0.5
          route: "{{ route }}"
"#;
    let app = spawn_app(&hmac_route("cms", dispatch)).await;
    let body = r#"{"model":"post","entry":{"id":42,"title":"Hi","nested":{"a":[1,2]}},"count":3,"ok":true,"tags":["a","b"]}"#;
    assert_eq!(app.post_signed("cms", body).await.status(), 202);
    let sent = app.github.wait_for_dispatches(1, WAIT).await;
    let request = &sent[0];
    assert_eq!(request.path, "/repos/acme/blog/dispatches");
    assert_eq!(
        request.body,
        Some(json!({
            "event_type": "cms-post",
            "client_payload": {
                "model": "post",
                "entry": {"id": 42, "title": "Hi", "nested": {"a": [1, 2]}},
                "count": 3,
                "ok": true,
                "tags": ["a", "b"],
                "missing": false,
                "text": "id 3",
                "unit": false,
                "ratio": 0.5,
                "route": "cms"
            }
        }))
    );
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        request.header("accept"),
        Some("application/vnd.github+json")
    );
    assert_eq!(request.header("x-github-api-version"), Some("2022-11-28"));
    assert!(
        request
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("dispatch-relay/"))
    );
    assert_eq!(app.github.violations(), Vec::<String>::new());
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && status_of(&list[0]) == "delivered"
        })
        .await;
    // The JSON log line of the delivery, found as operations.md says, with
    // GitHub's status as a number.
    let id = list[0]["id"].as_str().unwrap().to_string();
    let line = app.wait_for_log(|l| l.contains("Dispatch delivered")).await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["span"]["delivery_id"], id.as_str(), "{line}");
    assert_eq!(line["status"], 204, "{line}");
    // Counted once in each of the metrics a delivery moves.
    let metrics = app.metrics().await;
    for series in [
        r#"dispatch_relay_dispatches_total{outcome="delivered",route="cms"} 1"#,
        r#"dispatch_relay_delivery_latency_seconds_count{route="cms"} 1"#,
        r#"dispatch_relay_github_request_duration_seconds_count{endpoint="repository_dispatch",status_class="2xx"} 1"#,
        r#"dispatch_relay_queue_depth{state="pending"} 0"#,
        r#"dispatch_relay_github_credential_refused{credential="token"} 0"#,
    ] {
        assert!(metrics.contains(series), "{series}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_sends_one_job_per_target() {
    let targets = format!("{}{}", one_target("acme/blog"), one_target("acme/docs"));
    let app = spawn_app(&hmac_route("cms", &targets)).await;
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let sent = app.github.wait_for_dispatches(2, WAIT).await;
    let mut paths: Vec<&str> = sent.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/repos/acme/blog/dispatches", "/repos/acme/docs/dispatches"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_bad_gateways_then_success_is_delivered_once() {
    // Commits that do not wait for the disk, so that a slow disk does not
    // stretch the gaps between attempts measured below.
    let head = format!("{TEST_HEAD}store:\n  synchronous: normal\n");
    // The worker's unwoken look at the store comes only after the wait
    // below, so a retry that arrives was sent at its wake-up.
    let app = spawn_app_with(
        &head,
        &hmac_route("cms", &one_target("acme/blog")),
        &[("RELAY_TEST_IDLE_POLL_MS", "600000")],
    )
    .await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::Status(502), Scripted::Status(502)],
    );
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && status_of(&list[0]) == "delivered"
        })
        .await;
    assert_eq!(list[0]["targets"][0]["attempts"], 3);
    assert_eq!(app.github.dispatches().len(), 1, "delivered exactly once");
    let attempts: Vec<u16> = app
        .github
        .dispatch_attempts()
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(attempts, [502, 502, 204]);
    // Each retry's log line carries GitHub's status as a number.
    let line = app
        .wait_for_log(|l| l.contains("Dispatch will be retried"))
        .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["status"], 502, "{line}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"dispatch_relay_dispatches_total{outcome="retried",route="cms"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"dispatch_relay_dispatches_total{outcome="delivered",route="cms"} 1"#),
        "{metrics}"
    );
}

/// GitHub's web front, which an `api_url` without `/api/v3` reaches on
/// GitHub Enterprise Server, answers a dispatch with an HTML 404 page that
/// carries GitHub's request id: it is named as a wrong `api_url`, not as a
/// repository the token cannot see, which would send the operator off to
/// change the token's permissions.
#[tokio::test(flavor = "multi_thread")]
async fn a_404_web_page_from_githubs_web_front_points_at_api_url() {
    let app = spawn_app(&hmac_route("cms", &one_target("acme/blog"))).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::WebFrontNotFound]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && crate::helpers::finished_failed(&list[0])
        })
        .await;
    let error = list[0]["targets"][0]["last_error"].as_str().unwrap();
    assert_eq!(error, dispatch_relay::github::NOT_GITHUB);
    assert_eq!(list[0]["targets"][0]["attempts"], 1, "failed at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_fails_with_an_explanation() {
    let app = spawn_app(&hmac_route("cms", &one_target("acme/private"))).await;
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && crate::helpers::finished_failed(&list[0])
        })
        .await;
    let target = &list[0]["targets"][0];
    let error = target["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("repository not found, or the credential cannot see it"),
        "{error}"
    );
    assert!(error.contains("Contents: write"), "{error}");
    assert_eq!(target["attempts"], 1, "permanent failures are not retried");
    // The failure is counted, and the job waits in the store for a
    // redelivery.
    let metrics = app.metrics().await;
    for series in [
        r#"dispatch_relay_dispatches_total{outcome="failed",route="cms"} 1"#,
        r#"dispatch_relay_github_request_duration_seconds_count{endpoint="repository_dispatch",status_class="4xx"} 1"#,
        r#"dispatch_relay_queue_depth{state="failed"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series}\n{metrics}");
    }
    // The listing in text form says why too.
    let output = app.cli(&["deliveries", "--status", "failed"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("repository not found"), "{text}");
}

/// A token not authorized for one organization's SAML single sign-on is
/// refused there only: that target fails, naming where the token's owner
/// authorizes it, and the credential's other targets are sent as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_refused_by_saml_single_sign_on_fails_naming_where_to_authorize_it() {
    let targets = format!("{}{}", one_target("acme/blog"), one_target("acme/docs"));
    let app = spawn_app(&hmac_route("cms", &targets)).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::SamlEnforced]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && crate::helpers::finished_failed(&list[0])
        })
        .await;
    let targets = &list[0]["targets"];
    assert_eq!(targets[1]["status"], "delivered", "{targets}");
    let error = targets[0]["last_error"].as_str().unwrap_or_default();
    assert_eq!(
        error,
        "forbidden (403): the organization enforces SAML single sign-on and the token is not authorized for it; its owner authorizes it at https://github.com/orgs/acme/sso?authorization_request=A5VN2X7WQ3ZJ, then `redeliver --failed` sends what failed"
    );
    assert_eq!(app.github.dispatches_to("acme/docs"), 1);
}

/// A token GitHub refuses (expired, or revoked) would be refused for every
/// dispatch until it is replaced: the credential's queue is held instead of
/// failing each job, the refusal says so, and neither the token nor the
/// refusal's detail is spent as a failure of the job.
#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_hold_the_queue_and_say_why() {
    let mut app = spawn_app(&hmac_route("cms", &one_target("acme/blog"))).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::BadCredentials]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && list[0]["targets"][0]["attempts"].as_u64() == Some(1)
        })
        .await;
    let target = &list[0]["targets"][0];
    assert_eq!(status_of(&list[0]), "pending", "{list:?}");
    assert_eq!(target["counted_attempts"], 0, "{target}");
    // The listing says the job is held, not merely retried.
    assert_eq!(
        target["last_error"],
        "401 Bad credentials; held: GitHub refuses the credential, and one dispatch tries it again each minute until a new one is in place",
        "{target}"
    );
    let line = app
        .wait_for_log(|l| l.contains("Dispatch will be retried"))
        .await;
    assert!(
        line.contains(
            "bad credentials: token invalid or expired; dispatches with this credential are held"
        ),
        "{line}"
    );
    let metrics = app.metrics().await;
    for series in [
        r#"dispatch_relay_dispatches_total{outcome="retried",route="cms"} 1"#,
        r#"dispatch_relay_queue_depth{state="failed"} 0"#,
        // The hold is seen without reading the log.
        r#"dispatch_relay_github_credential_refused{credential="token"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series}\n{metrics}");
    }
    let output = app.cli(&["deliveries"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("acme/blog: retrying after 1 attempt (0 counted against retry.max_attempts): 401 Bad credentials; held: GitHub refuses the credential"),
        "{table}"
    );
    // No log line, stored row or listing carries the token.
    assert!(!table.contains(TOKEN));
    let logs = app.stop_and_read_logs();
    assert!(!logs.iter().any(|l| l.contains(TOKEN)));
    let store = std::fs::read(app.db_path()).unwrap();
    let wal = std::fs::read(app.db_path().with_extension("db-wal")).unwrap_or_default();
    for bytes in [store, wal] {
        assert!(!bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()));
    }
}

/// The dispatches held for a refused credential that were never tried have
/// no attempt to say why they wait: both listings name the credential GitHub
/// refuses, and since when, until a start tries it afresh.
#[tokio::test(flavor = "multi_thread")]
async fn the_listings_name_a_refused_credential_that_holds_untried_dispatches() {
    let mut app = spawn_app_with(
        TEST_HEAD,
        PLAIN_ROUTE,
        &[("RELAY_ADMIN_TOKEN", "admin-secret")],
    )
    .await;
    app.github
        .push_responses("acme/blog", vec![Scripted::BadCredentials]);
    let asked_at_ms = dispatch_relay::clock::now_ms();
    assert_eq!(app.post("cms", r#"{"n":1}"#).await.status(), 202);
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 1 && list[0]["targets"][0]["attempts"].as_u64() == Some(1)
    })
    .await;
    assert_eq!(app.post("cms", r#"{"n":2}"#).await.status(), 202);
    let page = admin_page(&app).await;
    let untried = &page["deliveries"][0];
    assert_eq!(untried["targets"][0]["attempts"], 0, "{page}");
    assert_eq!(untried["targets"][0]["last_error"], Value::Null, "{page}");
    let refused = page["refused_credentials"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{page}");
    assert_eq!(refused[0]["credential"], "token", "{page}");
    let since_ms = refused[0]["since_ms"].as_i64().unwrap();
    assert!(
        (asked_at_ms..=dispatch_relay::clock::now_ms()).contains(&since_ms),
        "{page}"
    );
    let listing = app.cli(&["deliveries"]);
    let note = String::from_utf8_lossy(&listing.stderr);
    assert!(
        note.contains(&format!(
            "GitHub refuses the credential token (since {}): its dispatches are held",
            dispatch_relay::clock::rfc3339(since_ms)
        )),
        "{note}"
    );
    assert!(!note.contains(TOKEN), "{note}");
    // A start tries the credential afresh (the fake accepts it now), so
    // the store no longer says it is refused.
    app.restart();
    assert_eq!(admin_page(&app).await["refused_credentials"], json!([]));
    // The dispatch that was held goes at once; the refused one waits out
    // its minute.
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 2 && list[0]["status"] == "delivered"
    })
    .await;
    let note = String::from_utf8_lossy(&app.cli(&["deliveries"]).stderr).into_owned();
    assert!(!note.contains("refuses the credential"), "{note}");
}

/// The first page of the admin API's listing.
async fn admin_page(app: &crate::helpers::TestApp) -> Value {
    app.http
        .get(app.url("/admin/deliveries"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Posts one signed webhook whose first dispatch the test scripted to be
/// refused, and returns how long the relay waited before the second.
async fn wait_between_two_attempts(app: &crate::helpers::TestApp) -> Duration {
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    app.github.wait_for_dispatches(1, WAIT).await;
    let requests = app.github.dispatch_attempts();
    assert_eq!(requests.len(), 2);
    requests[1].received_at - requests[0].received_at
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_respected() {
    let app = spawn_app(&hmac_route("cms", &one_target("acme/blog"))).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::RateLimited {
            retry_after_secs: 2,
        }],
    );
    let waited = wait_between_two_attempts(&app).await;
    assert!(
        waited >= Duration::from_secs(2),
        "retried after {waited:?}, before retry-after"
    );
    app.wait_for_deliveries(WAIT, |list| status_of(&list[0]) == "delivered")
        .await;
}

/// The `deliveries` table says why a target is still being retried.
#[tokio::test(flavor = "multi_thread")]
async fn the_deliveries_table_says_why_a_target_is_retried() {
    let app = spawn_app(&hmac_route("cms", &one_target("acme/blog"))).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::RateLimited {
            retry_after_secs: 600,
        }],
    );
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 1 && list[0]["targets"][0]["attempts"].as_u64() == Some(1)
    })
    .await;
    let output = app.cli(&["deliveries"]);
    let table = String::from_utf8_lossy(&output.stdout).to_string();
    // A rate limit does not count against retry.max_attempts.
    assert!(
        table.contains("acme/blog: retrying after 1 attempt (0 counted against retry.max_attempts): 429 You have exceeded a secondary rate limit"),
        "{table}"
    );
    assert_eq!(app.deliveries(&[])[0]["targets"][0]["counted_attempts"], 0);
}

/// The table stays in line for route ids longer than its first width, as
/// the recipes' are, and tells apart two dispatches to one repository.
#[tokio::test(flavor = "multi_thread")]
async fn the_deliveries_table_fits_long_routes_and_names_each_target() {
    let routes = "  - id: stripe-style/acme-blog\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n      - repo: acme/blog\n        event_type: reindex\n";
    let app = spawn_app(routes).await;
    assert_eq!(app.post("stripe-style/acme-blog", "{}").await.status(), 202);
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 1 && status_of(&list[0]) == "delivered"
    })
    .await;
    let output = app.cli(&["deliveries"]);
    let table = String::from_utf8_lossy(&output.stdout).to_string();
    let mut lines = table.lines();
    let (header, row) = (lines.next().unwrap(), lines.next().unwrap());
    assert_eq!(
        header.find("STATUS"),
        row.find("delivered"),
        "the status column is in line:\n{table}"
    );
    assert!(
        row.ends_with("acme/blog[deploy]:delivered(1) acme/blog[reindex]:delivered(1)"),
        "{table}"
    );
}

/// A body of eleven top-level keys, `k0` to `k10`: rendered whole as a
/// `client_payload`, it breaks GitHub's limit of ten.
fn eleven_keys() -> Value {
    (0..11)
        .map(|i| (format!("k{i}"), json!(i)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_render_failure_is_stored_answered_422_and_recovered_by_redeliver() {
    // A template that produces 11 top-level keys breaks GitHub's limit.
    let dispatch = "      - repo: acme/blog\n        event_type: deploy\n        client_payload: \"{{ body }}\"\n";
    let app = spawn_app(&hmac_route("cms", dispatch)).await;
    let body = eleven_keys();
    let response = app.post_signed("cms", &body.to_string()).await;
    assert_eq!(response.status(), 422);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["message"].as_str().unwrap().contains("10"),
        "{answer}"
    );
    let list = app.deliveries(&[]);
    assert_eq!(list.len(), 1);
    assert_eq!(status_of(&list[0]), "failed");
    // The answer names the stored delivery, for the sender's log and for
    // `redeliver --id`.
    assert_eq!(answer["error"], "unprocessable");
    assert_eq!(answer["delivery_id"], list[0]["id"], "{answer}");
    // With no target rendered, nothing will be attempted until it is
    // redelivered, which its page says rather than "not yet".
    let shown = app.cli(&["deliveries", "--id", list[0]["id"].as_str().unwrap()]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("no attempts: nothing to send until it is redelivered"),
        "{shown}"
    );

    // Fix the route, redeliver: it is rendered again and sent.
    let fixed = std::fs::read_to_string(app.config_path()).unwrap().replace(
        "client_payload: \"{{ body }}\"",
        "client_payload:\n          first: \"{{ body.k0 }}\"",
    );
    app.write_config(&fixed);
    app.redeliver_failed();
    let sent = app.github.wait_for_dispatches(1, WAIT).await;
    assert_eq!(
        sent[0].body.as_ref().unwrap()["client_payload"],
        json!({"first": 0})
    );
    // Redelivering again finds nothing failed: never twice.
    app.wait_for_deliveries(WAIT, |list| status_of(&list[0]) == "delivered")
        .await;
    let again = app.cli(&["redeliver", "--failed"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("no failed deliveries"));
    // By id, a delivered delivery and an unknown id are told apart.
    let id = app.deliveries(&[])[0]["id"].as_str().unwrap().to_string();
    let delivered = app.cli(&["redeliver", "--id", &id]);
    let text = String::from_utf8_lossy(&delivered.stderr);
    assert_eq!(delivered.status.code(), Some(1), "{text}");
    assert!(text.contains("is delivered, not failed"), "{text}");
    let unknown = app.cli(&["redeliver", "--id", "0190d6c4-0000-7000-8000-000000000000"]);
    let text = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        text.contains("no delivery 0190d6c4-0000-7000-8000-000000000000"),
        "{text}"
    );
    // Text that is no delivery id is said to be one, as `deliveries --id`
    // says it, not looked up.
    let typo = app.cli(&["redeliver", "--id", "no-such-id"]);
    let text = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(typo.status.code(), Some(1), "{text}");
    assert!(text.contains("`no-such-id` is not a delivery id"), "{text}");
    assert_eq!(app.github.dispatches().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_decides_before_the_dedupe_key_is_rendered() {
    let routes = "  - id: cms\n    verify: none\n    when: body.kind == 'publish'\n    dedupe_key: \"{{ body.kind + 1 }}\"\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    // A webhook the route skips is skipped, even though its dedupe key
    // could not be rendered.
    let skipped = app.post("cms", r#"{"kind":"other"}"#).await;
    assert_eq!(skipped.status(), 200);
    assert_eq!(skipped.json::<Value>().await.unwrap()["skipped"], true);
    // One the route wants, whose key cannot be rendered, is stored as failed.
    let failed = app.post("cms", r#"{"kind":"publish"}"#).await;
    assert_eq!(failed.status(), 422);
    let list = app.deliveries(&[]);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(status_of(&list[0]), "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_holds_the_credential_back_even_when_its_job_gives_up() {
    let head = TEST_HEAD.replace("retry:\n", "retry:\n  give_up_after: 1s\n");
    assert_ne!(head, TEST_HEAD);
    let routes = PLAIN_ROUTE;
    let app = spawn_app_with(&head, routes, &[]).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::RateLimited {
            retry_after_secs: 3,
        }],
    );
    // Waiting 3 s would pass give_up_after: the first dispatch fails at once.
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    app.wait_for_one_failed_delivery().await;
    // The next one still waits out GitHub's limit.
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    app.wait_for_deliveries(WAIT, |l| {
        l.len() == 2 && l.iter().any(|d| d["status"] == "delivered")
    })
    .await;
    let sent = app.github.dispatch_attempts();
    assert_eq!(
        sent.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 204]
    );
    let gap = sent[1].received_at.duration_since(sent[0].received_at);
    assert!(gap >= Duration::from_millis(2_900), "sent after {gap:?}");
}

/// A refused credential is the credential's, whatever becomes of the job
/// that found it: a job that gives up (holding it another minute would
/// pass give_up_after) still holds the others back, so that they are not
/// all sent with the refused credential at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_credential_holds_the_queue_even_when_its_job_gives_up() {
    let head = TEST_HEAD.replace("retry:\n", "retry:\n  give_up_after: 30s\n");
    assert_ne!(head, TEST_HEAD);
    let app = spawn_app_with(&head, PLAIN_ROUTE, &[]).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::BadCredentials]);
    assert_eq!(app.post("cms", r#"{"n":1}"#).await.status(), 202);
    app.wait_for_one_failed_delivery().await;
    let list = app.deliveries(&[]);
    assert!(
        list[0]["error"]
            .as_str()
            .unwrap()
            .contains("held until retry.give_up_after, giving up"),
        "{list:?}"
    );
    let metrics = app.metrics().await;
    let series = r#"dispatch_relay_github_credential_refused{credential="token"} 1"#;
    assert!(metrics.contains(series), "{metrics}");
    let note = String::from_utf8_lossy(&app.cli(&["deliveries"]).stderr).into_owned();
    assert!(
        note.contains("GitHub refuses the credential token"),
        "{note}"
    );

    // Sent at once before: the next dispatch waits for the credential's
    // minute. Watched for two seconds, many times what sending takes.
    assert_eq!(app.post("cms", r#"{"n":2}"#).await.status(), 202);
    let watch_until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < watch_until {
        assert_eq!(app.github.dispatch_attempts().len(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = app.deliveries(&[]);
    assert_eq!(status_of(&list[0]), "pending", "{list:?}");
    assert_eq!(list[0]["targets"][0]["attempts"], 0, "{list:?}");
}

/// While GitHub's rate limit holds every dispatch back, an operator can
/// see until when: in `/metrics`, in `deliveries` and in the admin API.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_pause_says_until_when() {
    let app = spawn_app_with(
        TEST_HEAD,
        PLAIN_ROUTE,
        &[("RELAY_ADMIN_TOKEN", "admin-secret")],
    )
    .await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::RateLimited {
            retry_after_secs: 60,
        }],
    );
    let asked_at_ms = dispatch_relay::clock::now_ms();
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    // Written once the pause is kept.
    app.wait_for_log(|line| line.contains("Dispatch will be retried"))
        .await;
    let seen_ms = dispatch_relay::clock::now_ms();
    let logged = app
        .logs()
        .into_iter()
        .find(|line| line.contains("GitHub's rate limit holds back every dispatch"))
        .expect("the pause is logged");
    let logged: Value = serde_json::from_str(&logged).unwrap();
    let parse = dispatch_relay::clock::parse_rfc3339_ms;
    let until = parse(logged["until"].as_str().unwrap()).expect("an RFC 3339 time");
    assert!(
        (asked_at_ms + 59_000..=seen_ms + 61_000).contains(&until),
        "{logged}"
    );

    let gauge = app
        .gauge("dispatch_relay_github_paused_until_timestamp_seconds")
        .await;
    assert_eq!((gauge * 1000.0).round() as i64, until);

    let listing = app.cli(&["deliveries"]);
    let note = String::from_utf8_lossy(&listing.stderr);
    assert!(note.contains("holds back every dispatch until"), "{note}");
    let (_, noted) = note.split_once("until ").unwrap();
    assert_eq!(
        parse(noted.split(' ').next().unwrap()),
        Some(until),
        "{note}"
    );
    let page = admin_page(&app).await;
    assert_eq!(page["paused_until_ms"], until, "{page}");
    assert_eq!(page["refused_credentials"], json!([]), "{page}");
    assert_eq!(page["deliveries"][0]["targets"][0]["status"], "pending");
}

/// A burst on one route does not hold back another route's dispatch: the
/// queue takes turns between routes. The burst queues up while GitHub's
/// rate limit holds every dispatch back, so that what goes first when the
/// limit ends is decided by the queue alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_on_one_route_does_not_hold_back_another_routes_dispatch() {
    let head = TEST_HEAD.replace(
        "pacing: off",
        "pacing: { concurrency: 1, min_interval: 10ms, per_minute: 6000 }",
    );
    assert_ne!(head, TEST_HEAD);
    let routes = "  - id: bulk\n    verify: none\n    dispatch:\n      - repo: acme/bulk\n        event_type: upload\n  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/cms\n        event_type: publish\n";
    let app = spawn_app_with(&head, routes, &[]).await;
    app.github.add_repo("acme/bulk");
    app.github.add_repo("acme/cms");
    app.github.push_responses(
        "acme/bulk",
        vec![Scripted::PrimaryRateLimit { reset_in_secs: 12 }],
    );
    assert_eq!(app.post("bulk", "{}").await.status(), 202);
    // Once the limited attempt is logged, the pause it brought is in force
    // (it is set first): nothing posted after it can be leased before the
    // pause ends, eleven seconds or more later (the reset is in whole
    // seconds), ample for the posts below even on a loaded machine.
    app.wait_for_log(|l| l.contains("Dispatch will be retried"))
        .await;
    for _ in 0..5 {
        assert_eq!(app.post("bulk", "{}").await.status(), 202);
    }
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    app.wait_for_deliveries(WAIT, |l| {
        l.len() == 7 && l.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    let order: Vec<String> = app
        .github
        .dispatches()
        .iter()
        .map(|r| r.path.trim_start_matches("/repos/").to_string())
        .collect();
    assert_eq!(order.len(), 7, "{order:?}");
    let cms = order.iter().position(|p| p.starts_with("acme/cms"));
    assert_eq!(
        cms,
        Some(0),
        "the other route goes first after the route just served: {order:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_remaining_gauge_returns_to_the_limit_once_githubs_window_resets() {
    let head = TEST_HEAD.replace("retry:\n", "retry:\n  give_up_after: 1s\n");
    let routes = PLAIN_ROUTE;
    let app = spawn_app_with(&head, routes, &[]).await;
    // An exhausted primary limit, resetting in 6 s (long enough for a
    // scrape on a loaded machine to see it); the job gives up, so the
    // credential is quiet afterwards.
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::PrimaryRateLimit { reset_in_secs: 6 }],
    );
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    let gauge = |value: u64| {
        format!("dispatch_relay_github_rate_limit_remaining{{credential=\"token\"}} {value}")
    };
    let start = std::time::Instant::now();
    while !app.metrics().await.contains(&gauge(0)) {
        assert!(start.elapsed() < WAIT, "the exhausted limit never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while !app.metrics().await.contains(&gauge(5000)) {
        assert!(
            start.elapsed() < WAIT,
            "the gauge never came back after the reset"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing was sent in between: the gauge came back on its own.
    assert_eq!(app.github.dispatch_attempts().len(), 1);
}

/// A fine-grained token granted Contents: read sees the repository but may
/// not dispatch to it: GitHub answers 403, and the delivery fails at once
/// saying which permission is missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_can_only_read_fails_as_forbidden() {
    let app = spawn_app_with(
        TEST_HEAD,
        &hmac_route("cms", &one_target("acme/blog")),
        &[("GITHUB_TOKEN", "github_pat_readonly")],
    )
    .await;
    app.github.add_read_only_token("github_pat_readonly");
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && crate::helpers::finished_failed(&list[0])
        })
        .await;
    let target = &list[0]["targets"][0];
    let error = target["last_error"].as_str().unwrap_or_default();
    assert!(error.starts_with("forbidden (403)"), "{target}");
    assert!(
        error.contains("Resource not accessible by personal access token"),
        "{target}"
    );
    assert_eq!(target["attempts"], 1, "{target}");
}

/// GitHub states `x-ratelimit-reset` on its own clock. With GitHub three
/// minutes behind the host, a reset 3 s ahead reads as past on the host's
/// clock alone; read against GitHub's `Date`, it is still 3 s away, and the
/// relay waits for it (decision 32).
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_reset_is_read_on_githubs_clock() {
    let app = spawn_app(&hmac_route("cms", &one_target("acme/blog"))).await;
    app.github.set_clock_offset(-180);
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::PrimaryRateLimit { reset_in_secs: 3 }],
    );
    let waited = wait_between_two_attempts(&app).await;
    // GitHub's `Date` has whole seconds, so the reset may read up to a
    // second nearer than it is.
    assert!(
        waited >= Duration::from_secs(2),
        "retried after {waited:?}, before the reset"
    );
}

/// A dispatch answered 2xx that spent the last request of GitHub's primary
/// limit holds the credential's queue until the limit resets: the next
/// request would be refused (design §5 pauses on
/// `x-ratelimit-remaining: 0`, whatever the status it comes with).
#[tokio::test(flavor = "multi_thread")]
async fn a_dispatch_that_spends_the_limit_holds_the_next_until_the_reset() {
    let app = spawn_app(&hmac_route("cms", &one_target("acme/blog"))).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::LastOfTheLimit { reset_in_secs: 3 }],
    );
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    app.github.wait_for_dispatches(1, WAIT).await;
    assert_eq!(app.post_signed("cms", r#"{"id":2}"#).await.status(), 202);
    app.github.wait_for_dispatches(2, WAIT).await;
    // Sent before the reset, the second would have been refused (the fake
    // counts that as a violation) and sent a third time.
    assert_eq!(app.github.violations(), Vec::<String>::new());
    let sent = app
        .github
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/dispatches"))
        .count();
    assert_eq!(sent, 2);
    // Said of any answer that spends it, a failure's as well as a 2xx's.
    app.wait_for_log(|l| {
        l.contains("GitHub's rate limit for this credential is spent: an answer to a dispatch said x-ratelimit-remaining: 0")
    })
    .await;
}

/// A dedupe key that prints a field the webhook lacks is no key: printed
/// as nothing, every such webhook would share the key `order-` and all but
/// the first would be dropped as duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn a_dedupe_key_missing_its_field_drops_nothing() {
    let routes = "  - id: cms\n    verify: none\n    dedupe_key: \"order-{{ body.order.id }}\"\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    for body in [r#"{"n":1}"#, r#"{"n":2}"#] {
        assert_eq!(app.post("cms", body).await.status(), 202, "{body}");
    }
    // With the field, the key works as before.
    let with_id = r#"{"order":{"id":7}}"#;
    assert_eq!(app.post("cms", with_id).await.status(), 202);
    let again = app.post("cms", with_id).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["duplicate"], true);
    app.github.wait_for_dispatches(3, WAIT).await;
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 3 && list.iter().all(|d| status_of(d) == "delivered")
    })
    .await;
}

/// An HTML error page from a proxy in front of GitHub, however large, is
/// read only as far as is kept, and the failure says what the page's title
/// says rather than storing its markup. The failures count against
/// `max_attempts` because GitHub answers the dispatches of another route
/// meanwhile: the repository fails on its own (decision 53).
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_error_page_is_kept_as_its_title() {
    let head = format!("{TEST_HEAD}  max_attempts: 2\n");
    let routes =
        hmac_route("cms", &one_target("acme/blog")) + &hmac_route("docs", &one_target("acme/docs"));
    let app = spawn_app_with(&head, &routes, &[]).await;
    let page = Scripted::ProxyPage { status: 502 };
    // Enough pages that they never run out, however many times the job
    // is tried during the outage before another route is answered.
    app.github.push_responses("acme/blog", vec![page; 10_000]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let failed = |list: &Vec<Value>| {
        list.iter()
            .any(|d| d["route"] == "cms" && crate::helpers::finished_failed(d))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut sent_to_docs = 0;
    let list = loop {
        let list = app.deliveries(&[]);
        if failed(&list) {
            break list;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list:#?}");
        // One dispatch GitHub answers at a time, each waited for.
        assert_eq!(app.post_signed("docs", r#"{"id":2}"#).await.status(), 202);
        sent_to_docs += 1;
        app.github.wait_for_dispatches(sent_to_docs, WAIT).await;
    };
    let blog = list.iter().find(|d| d["route"] == "cms").unwrap();
    assert_eq!(
        blog["targets"][0]["last_error"],
        "gave up after 2 attempts: GitHub answered 502: 502 Bad Gateway"
    );
}

/// GitHub going down just after it answered one target of a webhook: the
/// other target's first failure is counted (GitHub answered a dispatch
/// since it was queued), but the failures after it, with no dispatch
/// answered between them, are the outage's, not the job's. With
/// `max_attempts: 2` the job outlasts the outage and is delivered once
/// GitHub answers again (decision 53).
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_that_starts_after_a_dispatch_was_answered_does_not_spend_a_jobs_attempts() {
    // One dispatch at a time, so that GitHub answers the first target
    // before the second is sent.
    let head = TEST_HEAD.replace(
        "pacing: off",
        "pacing: {concurrency: 1, min_interval: 1ms, per_minute: 60000}",
    ) + "  max_attempts: 2\n";
    let targets = format!("{}{}", one_target("acme/docs"), one_target("acme/blog"));
    let app = spawn_app_with(&head, &hmac_route("cms", &targets), &[]).await;
    app.wait_for_log(|l| l.contains("Preflight finished")).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::Status(502); 4]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && (status_of(&list[0]) != "pending")
        })
        .await;
    assert_eq!(status_of(&list[0]), "delivered", "{list:#?}");
    let blog = &list[0]["targets"][1];
    assert_eq!(blog["attempts"], 5, "{blog}");
    assert!(blog["counted_attempts"].as_u64().unwrap() < 2, "{blog}");
    let logs = app.logs();
    let said = |text: &str| logs.iter().filter(|l| l.contains(text)).count();
    assert!(said("GitHub answers no dispatch") >= 1, "{logs:#?}");
    assert!(said("Dispatch failed for good") == 0, "{logs:#?}");
}

/// A retry GitHub asked to wait for (`retry-after` on a 503) is not
/// brought forward when the outage its failure opened ends: the wait
/// GitHub stated holds, as the retry policy promises.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_that_ends_does_not_cut_short_a_retry_after() {
    let routes =
        hmac_route("cms", &one_target("acme/blog")) + &hmac_route("docs", &one_target("acme/docs"));
    let app = spawn_app_with(TEST_HEAD, &routes, &[]).await;
    app.wait_for_log(|l| l.contains("Preflight finished")).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::Unavailable {
            retry_after_secs: 3,
        }],
    );
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    app.wait_for_log(|l| l.contains("GitHub answers no dispatch"))
        .await;
    // GitHub answers another dispatch: the outage ends at once.
    assert_eq!(app.post_signed("docs", r#"{"id":2}"#).await.status(), 202);
    app.wait_for_log(|l| l.contains("GitHub answers dispatches again"))
        .await;
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 2 && list.iter().all(|d| status_of(d) == "delivered")
    })
    .await;
    let to_blog: Vec<_> = app
        .github
        .dispatch_attempts()
        .into_iter()
        .filter(|r| r.path.contains("acme/blog"))
        .collect();
    assert_eq!(to_blog.len(), 2, "{to_blog:?}");
    let waited = to_blog[1].received_at - to_blog[0].received_at;
    assert!(
        waited >= Duration::from_millis(2_900),
        "sent again after {waited:?}, within its retry-after"
    );
}

/// GitHub may fail its dispatches while it answers everything else, as in
/// an incident of Actions alone. The look at the repository is answered,
/// yet the job's attempts are not spent: with `max_attempts: 2` it is
/// delivered once GitHub answers dispatches again (decision 53).
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_of_dispatches_alone_does_not_spend_a_jobs_attempts() {
    let head = format!("{TEST_HEAD}  max_attempts: 2\n");
    let app = spawn_app_with(&head, &hmac_route("cms", &one_target("acme/blog")), &[]).await;
    app.wait_for_log(|l| l.contains("Preflight finished")).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::Status(503); 5]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && status_of(&list[0]) != "pending"
        })
        .await;
    assert_eq!(status_of(&list[0]), "delivered", "{list:?}");
    assert_eq!(list[0]["targets"][0]["attempts"], 6, "{list:?}");
    app.wait_for_log(|l| l.contains("GitHub answers dispatches again"))
        .await;
    let logs = app.logs();
    let started: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("GitHub answers no dispatch"))
        .collect();
    assert_eq!(started.len(), 1, "{logs:#?}");
    assert!(
        started[0].contains("while GitHub answers a look at the repository"),
        "{}",
        started[0]
    );
    // The relay looked at the repository once, when the outage started,
    // beside the preflight's look, and GitHub answered both. The failed
    // dispatches after that confirmed the outage themselves.
    let looks = app.github.requests_of("repos/get");
    assert_eq!(looks.len(), 2, "{looks:?}");
    let statuses: Vec<u16> = looks.iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

/// While GitHub fails every request (its dispatches and a look at the
/// repository alike), a job's failed attempts are not spent: with
/// `max_attempts: 2` it is still delivered once GitHub answers again,
/// and the outage is logged once when it starts and once when it ends. A
/// job whose failures GitHub answers around is still given up on
/// (`a_proxy_error_page_is_kept_as_its_title`).
#[tokio::test(flavor = "multi_thread")]
async fn a_github_outage_does_not_spend_a_jobs_attempts() {
    let head = format!("{TEST_HEAD}  max_attempts: 2\n");
    let app = spawn_app_with(&head, &hmac_route("cms", &one_target("acme/blog")), &[]).await;
    // The start-up preflight has asked about the repository already, so
    // the scripted answers below are all the worker's.
    app.wait_for_log(|l| l.contains("Preflight finished")).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::Status(503); 5]);
    app.github
        .push_repo_responses("acme/blog", vec![Scripted::Status(502); 5]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && status_of(&list[0]) != "pending"
        })
        .await;
    assert_eq!(status_of(&list[0]), "delivered", "{list:?}");
    assert_eq!(list[0]["targets"][0]["attempts"], 6, "{list:?}");
    // The end is an info line, which may reach the log a little later; it
    // says how many attempts went uncounted.
    let end = app
        .wait_for_log(|l| l.contains("GitHub answers dispatches again"))
        .await;
    let end: Value = serde_json::from_str(&end).unwrap();
    assert!(
        end["uncounted_attempts"].as_u64().is_some_and(|n| n >= 1),
        "{end}"
    );
    let logs = app.logs();
    let said = |text: &str| logs.iter().filter(|l| l.contains(text)).count();
    assert_eq!(said("GitHub answers no dispatch"), 1, "{logs:#?}");
    assert_eq!(said("GitHub answers dispatches again"), 1, "{logs:#?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("and so did a look at GitHub"))
    );
    // One look, when the outage started, beside the preflight's; it is
    // timed like any request to GitHub.
    let looks = app.github.requests_of("repos/get").len() - 1;
    assert_eq!(looks, 1);
    let metrics = app.metrics().await;
    let timed = format!(
        r#"dispatch_relay_github_request_duration_seconds_count{{endpoint="repository",status_class="5xx"}} {looks}"#
    );
    assert!(metrics.contains(&timed), "{timed}\n{metrics}");
}

/// When GitHub answers again after an outage, the retries the outage
/// scheduled are due at once, instead of each waiting out its backoff
/// behind the webhooks that came since.
#[tokio::test(flavor = "multi_thread")]
async fn the_retries_an_outage_scheduled_go_as_soon_as_github_answers_again() {
    // Backoffs of up to a thousand hours: a retry left to its time, drawn
    // uniformly below that, comes before the deadline below about once in
    // a million runs.
    let head = TEST_HEAD.replace(
        "initial_backoff: 10ms\n  max_backoff: 50ms",
        "initial_backoff: 1000h\n  max_backoff: 1000h\n  give_up_after: 100000h",
    );
    assert_ne!(head, TEST_HEAD);
    let app = spawn_app_with(&head, &hmac_route("cms", &one_target("acme/blog")), &[]).await;
    app.wait_for_log(|l| l.contains("Preflight finished")).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::Status(503)]);
    app.github
        .push_repo_responses("acme/blog", vec![Scripted::Status(502)]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 1 && list[0]["targets"][0]["attempts"] == 1
    })
    .await;
    assert!(
        app.logs()
            .iter()
            .any(|l| l.contains("GitHub answers no dispatch"))
    );
    // GitHub is back: the next webhook's dispatch is answered.
    assert_eq!(app.post_signed("cms", r#"{"id":2}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 2 && list.iter().all(|d| status_of(d) == "delivered")
        })
        .await;
    let first = list.iter().find(|d| d["targets"][0]["attempts"] == 2);
    assert!(first.is_some(), "{list:?}");
    let line = app
        .wait_for_log(|l| l.contains("The retries scheduled during the outage are due now"))
        .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["brought_forward"], 1, "{line}");
    let sent: Vec<_> = app
        .github
        .dispatch_attempts()
        .iter()
        .map(|r| {
            (
                r.status,
                r.body.as_ref().unwrap()["client_payload"]["id"].clone(),
            )
        })
        .collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0].0, 503);
    assert_eq!(
        (sent[2].0, &sent[2].1),
        (204, &sent[0].1),
        "the first webhook, sent again: {sent:?}"
    );
}

/// A request GitHub never answers ends at `github.timeout` and is retried
/// like a 5xx; the webhook is delivered by the next attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_github_never_answers_times_out_and_is_retried() {
    // Three seconds: short for the test, long enough that the retry is
    // answered within it on a loaded machine.
    let head = TEST_HEAD.replace("timeout: 10s", "timeout: 3s");
    assert_ne!(head, TEST_HEAD);
    let app = spawn_app_with(&head, &hmac_route("cms", &one_target("acme/blog")), &[]).await;
    app.github.push_responses("acme/blog", vec![Scripted::Hang]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && status_of(&list[0]) == "delivered"
        })
        .await;
    assert_eq!(list[0]["targets"][0]["attempts"], 2, "{list:?}");
    let attempts = app.github.dispatch_attempts();
    // The hung request is never answered (status 0); the retry is.
    assert_eq!(
        attempts.iter().map(|r| r.status).collect::<Vec<_>>(),
        [0, 204]
    );
    let gap = attempts[1].received_at - attempts[0].received_at;
    // A bound below the 3 s timeout, since the relay's clock starts
    // before the fake sees the request; the log line below names the cause.
    assert!(gap >= Duration::from_millis(2_500), "retried after {gap:?}");
    let line = app
        .wait_for_log(|l| l.contains("Dispatch will be retried"))
        .await;
    assert!(line.contains("timed out waiting for GitHub"), "{line}");
    // GitHub never answered: there is no status to give.
    let line: Value = serde_json::from_str(&line).unwrap();
    assert!(line.get("status").is_none(), "{line}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"dispatch_relay_dispatches_total{outcome="retried",route="cms"} 1"#),
        "{metrics}"
    );
}

/// GitHub's secondary limit, a 403 with `retry-after`, holds back every
/// request of the credential, not only the job that met it: a dispatch to
/// another repository waits it out too.
#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_limit_holds_back_dispatches_to_other_repositories() {
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: \"{{ body.repo }}\"\n        event_type: deploy\n    allowed_repos: [\"acme/*\"]\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::SecondaryRateLimit {
            retry_after_secs: Some(2),
        }],
    );
    assert_eq!(
        app.post("cms", r#"{"repo":"acme/blog"}"#).await.status(),
        202
    );
    // Once the relay has read the limit (it pauses before it logs the
    // retry), a webhook for another repository.
    app.wait_for_log(|l| l.contains("Dispatch will be retried"))
        .await;
    assert_eq!(
        app.post("cms", r#"{"repo":"acme/docs"}"#).await.status(),
        202
    );
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 2 && list.iter().all(|d| status_of(d) == "delivered")
    })
    .await;
    let attempts = app.github.dispatch_attempts();
    let limited = &attempts[0];
    assert_eq!(limited.status, 403);
    let docs = attempts
        .iter()
        .find(|r| r.path == "/repos/acme/docs/dispatches")
        .unwrap();
    let held = docs.received_at - limited.received_at;
    assert!(
        held >= Duration::from_millis(1_900),
        "acme/docs was sent {held:?} after the limit"
    );
    assert_eq!(app.github.dispatch_attempts_to("acme/docs"), 1);
}

/// GitHub also answers an exhausted primary limit with 429: it is waited
/// out until `x-ratelimit-reset` as the 403 is, and counts no attempt
/// against `max_attempts`.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_limit_answered_429_is_waited_out_until_its_reset() {
    let head = format!("{TEST_HEAD}  max_attempts: 1\n");
    let app = spawn_app_with(&head, &hmac_route("cms", &one_target("acme/blog")), &[]).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::PrimaryRateLimitTooMany { reset_in_secs: 2 }],
    );
    let waited = wait_between_two_attempts(&app).await;
    // The reset is in whole seconds on GitHub's clock.
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before the reset"
    );
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && status_of(&list[0]) == "delivered"
        })
        .await;
    assert_eq!(list[0]["targets"][0]["attempts"], 2, "{list:?}");
}

/// GitHub's 422 to a workflow dispatch (an input the workflow does not
/// define, say) fails the delivery at once with GitHub's words.
#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_dispatch_refused_with_422_fails_at_once_with_githubs_message() {
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        workflow: deploy.yml\n        ref: main\n        inputs:\n          site: blog\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::Unprocessable(
            "Invalid request.\n\nUnexpected inputs provided: [\"site\"]".into(),
        )],
    );
    let (list, error) = fails_at_its_first_attempt(&app).await;
    assert!(
        error.contains("422") && error.contains("Unexpected inputs provided"),
        "{error}"
    );
    assert_eq!(app.github.dispatch_attempts().len(), 1);
    // In the `deliveries` table GitHub's blank lines do not start rows of
    // their own: every line is the header, a delivery or indented under one.
    let output = app.cli(&["deliveries"]);
    let table = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(table.contains("Unexpected inputs provided"), "{table}");
    let id = list[0]["id"].as_str().unwrap();
    for line in table.lines().skip(1) {
        assert!(line.starts_with(id) || line.starts_with("    "), "{table}");
    }
}

/// GitHub's 422 to a repository dispatch fails the delivery at once with
/// GitHub's words, and is not retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_dispatch_refused_with_422_fails_at_once_with_githubs_message() {
    let app = spawn_app_with(TEST_HEAD, PLAIN_ROUTE, &[]).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::Unprocessable(
            "Invalid request.\n\nNo more than 10 properties are allowed; 11 were supplied.".into(),
        )],
    );
    let (_, error) = fails_at_its_first_attempt(&app).await;
    assert!(
        error.contains("422") && error.contains("No more than 10 properties"),
        "{error}"
    );
    assert_eq!(app.github.dispatch_attempts().len(), 1);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"dispatch_relay_dispatches_total{outcome="failed",route="cms"} 1"#),
        "{metrics}"
    );
}

/// A webhook that failed to render holds no dedupe key: the sender's
/// repeat of it after routes.yaml is fixed is sent, not answered as a
/// duplicate of a delivery that sent nothing. Redelivering the failed one
/// afterwards finds the key taken and sends nothing twice (decision 31).
#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_of_a_webhook_that_failed_to_render_is_sent_once_the_route_is_fixed() {
    let routes = "  - id: cms\n    verify: none\n    dedupe_key: \"entry-{{ body.entry.id }}\"\n    dispatch:\n      - repo: acme/blog\n        event_type: \"cms-{{ body.model }}\"\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    let body = r#"{"entry":{"id":40}}"#;
    assert_eq!(app.post("cms", body).await.status(), 422);
    let fixed = std::fs::read_to_string(app.config_path())
        .unwrap()
        .replace("\"cms-{{ body.model }}\"", "deploy");
    app.reload_config(&fixed).await;
    let repeat = app.post("cms", body).await;
    assert_eq!(repeat.status(), 202, "the repeat was not sent");
    app.github.wait_for_dispatches(1, WAIT).await;
    // The key is now the repeat's: a third copy is a duplicate, and the
    // failed first one stays failed when redelivered.
    let third = app.post("cms", body).await;
    assert_eq!(third.status(), 200);
    assert_eq!(third.json::<Value>().await.unwrap()["duplicate"], true);
    let output = app.cli(&["redeliver", "--failed"]);
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("has the same dedupe key"), "{text}");
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 2
                && list.iter().any(|d| status_of(d) == "delivered")
                && list.iter().any(|d| status_of(d) == "failed")
        })
        .await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(app.github.dispatch_attempts().len(), 1);
}

/// A repeat of a webhook already delivered stays a duplicate when the route
/// can no longer render it: looked up by its key, it is not stored again as
/// a failure.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_of_a_delivered_webhook_is_a_duplicate_even_when_it_no_longer_renders() {
    let routes = "  - id: cms\n    verify: none\n    dedupe_key: \"entry-{{ body.id }}\"\n    dispatch:\n      - repo: acme/blog\n        event_type: \"{{ body.kind }}\"\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    let body = r#"{"id":1,"kind":"deploy"}"#;
    assert_eq!(app.post("cms", body).await.status(), 202);
    app.github.wait_for_dispatches(1, WAIT).await;
    let text = std::fs::read_to_string(app.config_path()).unwrap();
    let stricter = text.replace("\"{{ body.kind }}\"", "\"{{ body.kind }}-{{ body.env }}\"");
    assert_ne!(stricter, text);
    app.reload_config(&stricter).await;
    let repeat = app.post("cms", body).await;
    assert_eq!(repeat.status(), 200);
    assert_eq!(repeat.json::<Value>().await.unwrap()["duplicate"], true);
    // A new event that does not render is stored as failed, as before.
    assert_eq!(
        app.post("cms", r#"{"id":2,"kind":"deploy"}"#)
            .await
            .status(),
        422
    );
    let list = app.wait_for_deliveries(WAIT, |list| list.len() == 2).await;
    assert_eq!(
        list.iter().filter(|d| status_of(d) == "failed").count(),
        1,
        "{list:?}"
    );
    assert_eq!(app.github.dispatch_attempts().len(), 1);
}

/// Without a `pacing` setting, the relay follows GitHub's guidance for
/// requests that create content: one at a time, a second apart. In a
/// fan-out to three repositories each dispatch starts a second or more
/// after the one before (so, as GitHub takes 300 ms to answer, after that
/// one was answered).
#[tokio::test(flavor = "multi_thread")]
async fn default_pacing_sends_one_dispatch_at_a_time_a_second_apart() {
    let head = TEST_HEAD.replace("  pacing: off\n", "");
    assert_ne!(head, TEST_HEAD);
    let repos = ["acme/blog", "acme/docs", "acme/shop"];
    let targets: String = repos
        .iter()
        .map(|repo| format!("      - repo: {repo}\n        event_type: deploy\n"))
        .collect();
    let routes = format!("  - id: cms\n    verify: none\n    dispatch:\n{targets}");
    let app = spawn_app_with(&head, &routes, &[]).await;
    for repo in repos {
        app.github.add_repo(repo);
    }
    app.github.set_latency(Duration::from_millis(300));
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    // The preflight's look at each repository may overlap a dispatch, so
    // the fake's count of requests in flight says nothing here.
    let sent = app.github.wait_for_dispatches(3, WAIT).await;
    for pair in sent.windows(2) {
        // Measured where the fake received them; a request held up on its
        // way can shorten a gap by as much, hence the margin. Without
        // pacing the three would arrive together.
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(gap >= Duration::from_millis(500), "{gap:?}");
    }
}

/// With `pacing: off` the relay still keeps at most 64 requests in flight
/// at GitHub (decision 3): a queue of 200 against a slow GitHub reaches
/// that many at once and no more.
#[tokio::test(flavor = "multi_thread")]
async fn pacing_off_keeps_at_most_64_requests_in_flight() {
    let routes = PLAIN_ROUTE;
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    // The start-up preflight's request, answered slowly, would be counted
    // beside the dispatches.
    app.wait_for_log(|l| l.contains("Preflight finished")).await;
    // Each answer takes two seconds: the 200 are all accepted long before
    // the first 64 are answered.
    app.github.set_latency(Duration::from_secs(2));
    let posts = (0..200).map(|_| {
        let app = &app;
        async move { app.post("cms", "{}").await.status() }
    });
    let statuses = futures_util::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    app.github.wait_for_dispatches(200, WAIT).await;
    assert_eq!(app.github.max_in_flight(), 64);
}

/// The fake answers a workflow dispatch as GitHub does for the workflows it
/// knows: a misspelt file is a 404, which the delivery explains as a
/// workflow not found (decision 36); a missing ref and an input the
/// workflow does not define are GitHub's 422s, failed at once with its
/// words; the right dispatch goes through.
#[tokio::test(flavor = "multi_thread")]
async fn workflow_dispatches_github_refuses_fail_with_the_reason() {
    let target = |workflow: &str, git_ref: &str, inputs: &str| {
        format!(
            "      - repo: acme/blog\n        workflow: {workflow}\n        ref: {git_ref}\n        inputs: {{{inputs}}}\n"
        )
    };
    let routes = format!(
        "  - id: cms\n    verify: none\n    dispatch:\n{}{}{}{}",
        target("deploy.yml", "main", "site: blog"),
        target("deplyo.yml", "main", "site: blog"),
        target("deploy.yml", "nope", "site: blog"),
        target("deploy.yml", "main", "site: blog, extra: x"),
    );
    let app = spawn_app_with(TEST_HEAD, &routes, &[]).await;
    app.github
        .add_workflow("acme/blog", "deploy.yml", &["main"], &["site"]);
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && crate::helpers::finished_failed(&list[0])
        })
        .await;
    let targets = list[0]["targets"].as_array().unwrap();
    let error = |index: usize| targets[index]["last_error"].as_str().unwrap_or_default();
    assert_eq!(targets[0]["status"], "delivered", "{targets:?}");
    assert!(error(1).contains("workflow not found"), "{}", error(1));
    assert!(error(2).contains("No ref found for: nope"), "{}", error(2));
    assert!(
        error(3).contains("Unexpected inputs provided: [\"extra\"]"),
        "{}",
        error(3)
    );
    for index in 1..4 {
        assert_eq!(targets[index]["attempts"], 1, "{targets:?}");
    }
}

/// A `github.api_url` that names a web server other than GitHub's API,
/// which answers 200 to anything, does not make a dispatch "delivered": the
/// delivery fails at once, and says to check the url.
#[tokio::test(flavor = "multi_thread")]
async fn a_200_from_a_server_that_is_not_githubs_api_is_not_a_delivery() {
    let elsewhere = crate::helpers::Recorder::start();
    let routes = PLAIN_ROUTE;
    let app = spawn_app_with(
        TEST_HEAD,
        routes,
        &[("GITHUB_API_URL", elsewhere.url.as_str())],
    )
    .await;
    let (_, error) = fails_at_its_first_attempt(&app).await;
    assert!(error.contains("check github.api_url"), "{error}");
    // Sent once, to the server api_url names, and not again.
    let sent = elsewhere
        .bodies()
        .iter()
        .filter(|body| body["event_type"] == "deploy")
        .count();
    assert_eq!(sent, 1, "{:?}", elsewhere.bodies());
}

/// Posts `{}` to the `cms` route and waits for its one delivery to fail
/// after a single attempt; answers the listing and the target's error.
async fn fails_at_its_first_attempt(app: &crate::helpers::TestApp) -> (Vec<Value>, String) {
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && crate::helpers::finished_failed(&list[0])
        })
        .await;
    let target = &list[0]["targets"][0];
    assert_eq!(target["attempts"], 1, "{target}");
    let error = target["last_error"].as_str().unwrap_or_default().to_owned();
    (list, error)
}

/// A proxy in front of GitHub that quotes the request back in its error
/// page would carry the token into the log, the store and the deliveries
/// listing: the relay takes it out of every answer it reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_quoting_the_token_back_does_not_leak_it() {
    let mut app = spawn_app(&hmac_route("cms", &one_target("acme/blog"))).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::EchoingProxy { status: 502 }]);
    assert_eq!(app.post_signed("cms", r#"{"id":1}"#).await.status(), 202);
    app.wait_for_deliveries(WAIT, |list| status_of(&list[0]) == "delivered")
        .await;
    let attempts = app.github.dispatch_attempts();
    assert_eq!(attempts[0].status, 502);
    let output = app.cli(&["deliveries", "--json"]);
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(!listing.contains(TOKEN), "{listing}");
    let logs = app.stop_and_read_logs().join("\n");
    assert!(logs.contains("[redacted]"), "{logs}");
    assert!(!logs.contains(TOKEN));
    // The attempt's detail is kept in the store, with the WAL beside it.
    for file in [app.db_path(), app.db_path().with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let holds = |text: &str| bytes.windows(text.len()).any(|w| w == text.as_bytes());
        assert!(!holds(TOKEN), "{}", file.display());
    }
}

/// `deliveries --id` shows one delivery with every attempt to send it, as
/// the admin API's `GET /admin/deliveries/{id}` does; an id the store does
/// not hold, or one that is not an id, is refused with exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_by_id_shows_every_attempt() {
    let route = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n        client_payload:\n          title: \"{{ body.title }}\"\n";
    let app = spawn_app(route).await;
    app.github
        .push_responses("acme/blog", vec![Scripted::Status(502)]);
    let body = r#"{"title":"Hello","draft":false}"#;
    let accepted: Value = app.post("cms", body).await.json().await.unwrap();
    let id = accepted["delivery_id"].as_str().unwrap().to_string();
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 1 && list[0]["status"] == "delivered"
    })
    .await;

    let output = app.cli(&["deliveries", "--id", &id.to_uppercase(), "--json"]);
    assert!(output.status.success(), "{output:?}");
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["delivery"]["id"], id.as_str());
    let codes: Vec<&Value> = shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(codes, [&json!(502), &json!(204)], "{shown}");
    // What came in, and what each target was sent.
    assert_eq!(shown["request"]["body"], body, "{shown}");
    assert_eq!(
        shown["sent"],
        json!([{
            "target_index": 0,
            "repo": "acme/blog",
            "method": "POST",
            "path": "/repos/acme/blog/dispatches",
            "body": {"event_type": "deploy", "client_payload": {"title": "Hello"}},
        }]),
        "{shown}"
    );

    let output = app.cli(&["deliveries", "--id", &id]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("REQUEST\n"), "{table}");
    assert!(table.contains(&format!("  body: {body}\n")), "{table}");
    assert!(
        table.contains("TO GITHUB\n  acme/blog  POST /repos/acme/blog/dispatches\n")
            && table.contains(r#""client_payload":{"title":"Hello"}"#),
        "{table}"
    );
    assert!(table.contains("ATTEMPTS"), "{table}");
    assert!(table.contains("acme/blog  502"), "{table}");
    assert!(table.contains("acme/blog  204"), "{table}");

    for (wrong, says) in [
        ("0190d6c4-0000-7000-8000-000000000000", "no delivery"),
        ("not-an-id", "not a delivery id"),
    ] {
        let output = app.cli(&["deliveries", "--id", wrong]);
        assert_eq!(output.status.code(), Some(1), "{wrong}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{wrong}: {stderr}");
    }
    let output = app.cli(&["deliveries", "--id", &id, "--status", "failed"]);
    assert_eq!(output.status.code(), Some(1), "--id with a filter");
}

/// `redeliver --failed` narrowed by `--route` and `--since` sends exactly
/// the failed deliveries they name, and no other.
#[tokio::test(flavor = "multi_thread")]
async fn redeliver_sends_only_the_failed_deliveries_its_filters_name() {
    // Eleven top-level keys break GitHub's limit: each webhook fails to
    // render and is stored as failed.
    let route = |id: &str| {
        format!(
            "  - id: {id}\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: from-{id}\n        client_payload: \"{{{{ body }}}}\"\n"
        )
    };
    let app = spawn_app(&format!("{}{}", route("one"), route("two"))).await;
    let body = eleven_keys();
    for id in ["one", "two"] {
        assert_eq!(app.post(id, body.to_string()).await.status(), 422);
    }
    let fixed = std::fs::read_to_string(app.config_path())
        .unwrap()
        .replace("\"{{ body }}\"", "{first: \"{{ body.k0 }}\"}");
    // `redeliver` renders them again with the file as it is now.
    app.write_config(&fixed);
    let event_types = |app: &crate::helpers::TestApp| -> Vec<String> {
        app.github
            .dispatches()
            .iter()
            .map(|r| {
                r.body.as_ref().unwrap()["event_type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };

    let output = app.cli(&["redeliver", "--failed", "--route", "one"]);
    assert!(output.status.success(), "{output:?}");
    app.github.wait_for_dispatches(1, WAIT).await;
    app.wait_for_deliveries(WAIT, |list| {
        list.iter()
            .any(|d| d["route"] == "one" && status_of(d) == "delivered")
    })
    .await;
    assert_eq!(event_types(&app), ["from-one"]);

    // Received more than a millisecond ago: outside `--since 1ms`.
    let output = app.cli(&["redeliver", "--failed", "--route", "two", "--since", "1ms"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("no failed deliveries"), "{text}");
    let output = app.cli(&["redeliver", "--failed", "--route", "two", "--since", "1h"]);
    assert!(output.status.success(), "{output:?}");
    app.github.wait_for_dispatches(2, WAIT).await;
    assert_eq!(event_types(&app), ["from-one", "from-two"]);
}

/// A repository renamed (or transferred) after routes.yaml was written:
/// GitHub answers its former name with a 307 to the repository's id, the
/// dispatch is sent again there with the same body and credential, and the
/// relay says once, and in each attempt, that routes.yaml names the
/// repository by a name it no longer has.
#[tokio::test(flavor = "multi_thread")]
async fn a_dispatch_to_a_renamed_repository_follows_githubs_redirect_and_says_so() {
    let app = spawn_app(&hmac_route("cms", &one_target("acme/blog"))).await;
    app.github.rename_repo("acme/blog", "acme/website");
    for id in [1, 2] {
        let body = format!(r#"{{"id":{id}}}"#);
        assert_eq!(app.post_signed("cms", &body).await.status(), 202);
    }
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 2 && list.iter().all(|d| status_of(d) == "delivered")
        })
        .await;
    let requests = app.github.requests();
    let redirected: Vec<_> = requests.iter().filter(|r| r.status == 307).collect();
    let delivered: Vec<_> = requests.iter().filter(|r| r.status == 204).collect();
    assert_eq!(redirected.len(), 2, "{requests:#?}");
    assert_eq!(delivered.len(), 2, "{requests:#?}");
    // The two dispatches go at once, so their sends again may arrive in
    // either order: each is matched with its first send by its body.
    for former in &redirected {
        assert_eq!(former.path, "/repos/acme/blog/dispatches");
        let again: Vec<_> = delivered
            .iter()
            .filter(|now| now.body == former.body)
            .collect();
        assert_eq!(
            again.len(),
            1,
            "the body is sent again whole: {requests:#?}"
        );
        assert_eq!(again[0].path, "/repos/acme/website/dispatches");
        assert_eq!(
            again[0].header("authorization"),
            former.header("authorization")
        );
    }

    let id = list[0]["id"].as_str().unwrap();
    let output = app.cli(&["deliveries", "--id", id, "--json"]);
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    let detail = shown["attempts"][0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("204 (GitHub redirected the request to /repositories/")
            && detail.contains("the repository acme/blog was renamed or transferred"),
        "{detail}"
    );
    // (The preflight at start may say it too, in its own words.)
    let said = app
        .logs()
        .into_iter()
        .filter(|l| l.contains("GitHub redirected the request"))
        .count();
    assert_eq!(said, 1, "said once: {:#?}", app.logs());
}

/// Only GitHub's redirect of a renamed repository, on the API's host, is
/// followed: a redirect to another host would carry the dispatch (and,
/// were it followed with it, the credential) elsewhere, and one to another
/// path of the API's host is not a repository, and a 302 would be followed
/// with a GET that drops the dispatch's body. Each fails the dispatch, and
/// nothing is sent where it leads.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_other_than_a_renamed_repositorys_is_not_followed() {
    let app = spawn_app(&hmac_route("cms", &one_target("acme/blog"))).await;
    let elsewhere = crate::helpers::Recorder::start();
    let same_host = format!("{}/login?return_to=/repos/acme/blog", app.github.url());
    app.github.push_responses(
        "acme/blog",
        vec![
            Scripted::Redirect {
                status: 307,
                location: elsewhere.url.clone(),
            },
            Scripted::Redirect {
                status: 307,
                location: same_host,
            },
            // A repository's id on the API's host, but with a status that a
            // client follows with a GET and no body.
            Scripted::Redirect {
                status: 302,
                location: format!("{}/repositories/1234/dispatches", app.github.url()),
            },
        ],
    );
    for id in [1, 2, 3] {
        let body = format!(r#"{{"id":{id}}}"#);
        assert_eq!(app.post_signed("cms", &body).await.status(), 202);
    }
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 3 && list.iter().all(|d| status_of(d) == "failed")
        })
        .await;
    let mut statuses: Vec<&str> = list
        .iter()
        .map(|delivery| {
            let error = delivery["targets"][0]["last_error"]
                .as_str()
                .unwrap_or_default();
            assert!(
                error.contains(" with a redirect that is not followed"),
                "{delivery:#}"
            );
            &error[..error.find(" with").unwrap()]
        })
        .collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [
            "GitHub answered 302",
            "GitHub answered 307",
            "GitHub answered 307"
        ]
    );
    assert!(elsewhere.bodies().is_empty(), "{:?}", elsewhere.bodies());
    let paths: Vec<String> = app.github.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths
            .iter()
            .all(|p| p != "/login" && !p.starts_with("/repositories/")),
        "{paths:?}"
    );
}
