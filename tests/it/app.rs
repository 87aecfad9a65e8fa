//! The relay authenticating as a GitHub App against the fake GitHub: installation lookup,
//! scoped and cached installation tokens, renewal before expiry, one mint per burst, a refused
//! token renewed and sent again, and workflow dispatches with and without run details.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_github::{
    FakeGitHub, RecordedRequest, Scripted, TEST_APP_KEY, TEST_APP_PUBLIC_KEY,
};
use crate::helpers::{
    TEST_HEAD, TestApp, hmac_route, spawn_app, spawn_app_prepared, spawn_app_with,
};

const WAIT: Duration = Duration::from_secs(60);
pub const APP_ID: u64 = 31337;
const MINT: &str = "apps/create-installation-access-token";
const LOOKUP: &str = "apps/get-repo-installation";

/// The head of routes.yaml for a relay that authenticates as the test App.
pub fn app_head(pacing: &str) -> String {
    format!(
        r#"
github:
  app:
    id: "${{GITHUB_APP_ID}}"
    private_key_file: {TEST_APP_KEY}
  pacing: {pacing}
  timeout: 5s
retry:
  initial_backoff: 10ms
  max_backoff: 50ms
"#
    )
}

/// Makes the fake GitHub know the test App, installed on acme/blog and acme/docs.
pub fn enable_test_app(github: &FakeGitHub) {
    let public = std::fs::read_to_string(TEST_APP_PUBLIC_KEY).unwrap();
    github.enable_app(APP_ID, &public);
    github.add_installation("acme/blog", 7);
    github.add_installation("acme/docs", 7);
}

async fn spawn_as_app(routes: &str, pacing: &str) -> TestApp {
    spawn_as_app_with_head(&app_head(pacing), routes).await
}

/// A relay that authenticates as the test App, with `head` above its routes.
async fn spawn_as_app_with_head(head: &str, routes: &str) -> TestApp {
    spawn_app_prepared(
        head,
        routes,
        &[("GITHUB_APP_ID", &APP_ID.to_string())],
        enable_test_app,
    )
    .await
}

/// [`spawn_as_app`] with `head`, signing with the key file at `key_file`
/// (which may not exist yet) instead of the fixture's.
async fn spawn_as_app_with_key_file(head: &str, key_file: &std::path::Path) -> TestApp {
    spawn_as_app_with_head(
        &head.replace(TEST_APP_KEY, &key_file.display().to_string()),
        &hmac_route("cms", blog_target()),
    )
    .await
}

/// The test App with one route, `cms`, to acme/blog, and the fake GitHub
/// prepared further by `prepare` before the relay starts.
async fn spawn_blog_app(prepare: impl FnOnce(&FakeGitHub)) -> TestApp {
    spawn_app_prepared(
        &app_head("off"),
        &hmac_route("cms", blog_target()),
        &[("GITHUB_APP_ID", &APP_ID.to_string())],
        |github| {
            enable_test_app(github);
            prepare(github);
        },
    )
    .await
}

fn blog_target() -> &'static str {
    "      - repo: acme/blog\n        event_type: deploy\n        client_payload:\n          n: \"{{ body.n }}\"\n"
}

/// The claims of a JWT, read without checking it.
fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

fn bearer(request: &RecordedRequest) -> String {
    request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .expect("a bearer token")
        .to_string()
}

fn all_delivered(list: &[Value], n: usize) -> bool {
    list.len() == n && list.iter().all(|d| d["status"] == "delivered")
}

/// Waits until the second of two deliveries has an outcome, and checks both
/// were delivered.
async fn assert_second_delivered(app: &TestApp) {
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 2 && list.iter().all(|d| d["status"] != "pending")
        })
        .await;
    assert!(all_delivered(&list, 2), "{list:#?}");
}

/// Asserts that, once the token of the first installation (7) was
/// refused, one new lookup found the repository at `installation` and its
/// token was minted there.
fn assert_found_again_at(app: &TestApp, installation: u64) {
    let mints: Vec<(u16, String)> = app
        .github
        .requests_of(MINT)
        .iter()
        .map(|r| (r.status, r.path.clone()))
        .collect();
    let expected: Vec<(u16, String)> = [7, installation]
        .iter()
        .map(|id| (201, format!("/app/installations/{id}/access_tokens")))
        .collect();
    assert_eq!(mints, expected);
    assert_eq!(app.github.requests_of(LOOKUP).len(), 2);
}

async fn post_n(app: &TestApp, route: &str, n: usize) {
    for i in 0..n {
        let status = app
            .post_signed(route, &format!(r#"{{"n":{i}}}"#))
            .await
            .status();
        assert_eq!(status, 202);
    }
}

/// No token, JWT or key material may ever reach the logs.
fn assert_no_secrets_in_logs(app: &mut TestApp) {
    let logs = app.stop_and_read_logs().join("\n");
    for request in app.github.requests() {
        if let Some(token) = request
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
        {
            assert!(!logs.contains(token), "a credential reached the logs");
        }
    }
    assert!(!logs.contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_dispatches_for_one_installation_cause_one_mint_and_one_lookup() {
    // A repository taken from the body, so that the preflight at start has
    // found and minted nothing: the first dispatches all miss the cache
    // together, while GitHub takes its time to answer.
    let mut app = spawn_as_app(BODY_REPO_ROUTE, "off").await;
    app.github.set_latency(Duration::from_millis(200));
    let posts = (0..50).map(|i| {
        let app = &app;
        async move {
            app.post("cms", format!(r#"{{"repo":"acme/blog","n":{i}}}"#))
                .await
                .status()
        }
    });
    let statuses = futures_util::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let sent = app.github.wait_for_dispatches(50, WAIT).await;
    assert_eq!(app.github.requests_of(MINT).len(), 1);
    assert_eq!(app.github.requests_of(LOOKUP).len(), 1);
    let tokens: HashSet<String> = sent.iter().map(bearer).collect();
    assert_eq!(tokens.len(), 1);
    assert!(tokens.iter().all(|t| t.starts_with("ghs_")));
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 50))
        .await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("dispatch_relay_github_token_mints_total{result=\"success\"} 1"),
        "{metrics}"
    );
    // The App's own requests are timed like the dispatches.
    for endpoint in ["installation_token", "repo_installation"] {
        assert!(
            metrics.contains(&format!(
                "dispatch_relay_github_request_duration_seconds_count{{endpoint=\"{endpoint}\",status_class=\"2xx\"}} 1"
            )),
            "{metrics}"
        );
    }
    assert_eq!(app.github.violations(), Vec::<String>::new());
    assert_no_secrets_in_logs(&mut app);
}

#[tokio::test(flavor = "multi_thread")]
async fn mints_are_narrowed_to_the_repository_and_the_permissions_of_the_target() {
    let targets = "      - repo: acme/blog\n        event_type: deploy\n      - repo: acme/docs\n        workflow: deploy.yml\n        ref: main\n        inputs:\n          n: \"{{ body.n }}\"\n";
    let app = spawn_as_app(&hmac_route("cms", targets), "off").await;
    post_n(&app, "cms", 1).await;
    let sent = app.github.wait_for_dispatches(2, WAIT).await;
    let mut bodies: Vec<(String, Value)> = app
        .github
        .requests_of(MINT)
        .iter()
        .map(|r| (r.path.clone(), r.body.clone().unwrap()))
        .collect();
    bodies.sort_by_key(|(_, b)| b["repositories"][0].as_str().unwrap().to_string());
    assert_eq!(
        bodies,
        vec![
            (
                "/app/installations/7/access_tokens".to_string(),
                json!({"repositories": ["blog"], "permissions": {"contents": "write", "metadata": "read"}})
            ),
            (
                "/app/installations/7/access_tokens".to_string(),
                json!({"repositories": ["docs"], "permissions": {"actions": "write", "metadata": "read"}})
            ),
        ]
    );
    // Each scope has its own token.
    assert_ne!(bearer(&sent[0]), bearer(&sent[1]));
    // The JWT names the App and lives at most ten minutes, 60 s backdated.
    let mint = &app.github.requests_of(MINT)[0];
    let jwt = bearer(mint);
    let claims = jwt_claims(&jwt);
    assert_eq!(claims["iss"], json!(APP_ID));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(exp - iat <= 600, "{claims}");
    // Backdated from when the JWT was presented, however long ago that is.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let minted_at = now - mint.received_at.elapsed().as_secs() as i64;
    assert!((minted_at - 70..=minted_at - 50).contains(&iat), "{claims}");
    assert_eq!(app.github.violations(), Vec::<String>::new());
}

/// An App granted Actions write but not Contents (least privilege for a
/// relay that only starts workflows) gets its tokens: GitHub refuses a token
/// request that asks for a permission the installation lacks.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_without_contents_permission_starts_workflows() {
    let targets = "      - repo: acme/docs\n        workflow: deploy.yml\n        ref: main\n";
    let app = spawn_app_prepared(
        &app_head("off"),
        &hmac_route("cms", targets),
        &[("GITHUB_APP_ID", &APP_ID.to_string())],
        |github| {
            enable_test_app(github);
            github.set_installation_permissions(7, json!({"actions": "write", "metadata": "read"}));
        },
    )
    .await;
    post_n(&app, "cms", 1).await;
    let sent = app.github.wait_for_dispatches(1, WAIT).await;
    assert_eq!(
        sent[0].path,
        "/repos/acme/docs/actions/workflows/deploy.yml/dispatches"
    );
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    assert_eq!(app.github.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_installation_lookup_is_cached_and_tokens_are_reused_until_renewal() {
    // Set before the relay starts, because its startup preflight already
    // mints a token.
    let mut app = spawn_blog_app(|github| {
        // GitHub's long token format, far beyond 40 characters, is used as is.
        github.set_long_tokens(true);
        // A short life: the token is renewed half way through it (or five
        // minutes before expiry for GitHub's hour-long tokens). Half of
        // it leaves a slow machine ample time for the first three
        // dispatches to go with the first token.
        github.set_token_lifetime(Duration::from_secs(20));
    })
    .await;
    post_n(&app, "cms", 3).await;
    let first = app.github.wait_for_dispatches(3, WAIT).await;
    let first_token = bearer(&first[0]);
    assert!(first_token.len() > 100);
    assert!(first.iter().all(|r| bearer(r) == first_token));
    assert_eq!(app.github.requests_of(MINT).len(), 1);
    let minted = app.github.requests_of(MINT)[0].received_at;

    // Keep dispatching until the relay renews; it must do so before the token expires.
    let start = Instant::now();
    let mut n = 3;
    let renewed = loop {
        post_n(&app, "cms", 1).await;
        n += 1;
        let sent = app.github.wait_for_dispatches(n, WAIT).await;
        let last = sent.last().unwrap();
        if bearer(last) != first_token {
            break last.received_at;
        }
        assert!(start.elapsed() < WAIT, "the token was never renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Renewed half way through the token's life, not at once; and before
    // it ran out, since no dispatch was refused (below).
    let age = renewed.duration_since(minted);
    assert!(age >= Duration::from_secs(8), "renewed after {age:?}");
    assert_eq!(app.github.requests_of(MINT).len(), 2);
    assert_eq!(app.github.requests_of(LOOKUP).len(), 1);
    // No dispatch was ever refused.
    assert!(app.github.requests().iter().all(|r| r.status != 401));
    assert_no_secrets_in_logs(&mut app);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_expiring_mid_queue_causes_no_failed_delivery() {
    let app = spawn_as_app(
        &hmac_route("cms", blog_target()),
        "{ concurrency: 1, min_interval: 100ms, per_minute: 6000 }",
    )
    .await;
    // 30 jobs, the first held at GitHub's door until the token is revoked:
    // it and every job behind it meet the revoked token.
    let gate = app.github.hold("POST", "/repos/acme/blog/dispatches");
    post_n(&app, "cms", 30).await;
    gate.wait_for_arrivals(1, WAIT).await;
    app.github.expire_installation_tokens();
    gate.open();
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 30))
        .await;
    let refused = app
        .github
        .requests()
        .iter()
        .filter(|r| r.is_dispatch() && r.status == 401)
        .count();
    assert!(refused >= 1, "the expiry never showed");
    assert_eq!(app.github.dispatches().len(), 30);
    assert_eq!(app.github.requests_of(MINT).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_installed_again_under_a_new_id_keeps_delivering() {
    let app = spawn_as_app(&hmac_route("cms", blog_target()), "off").await;
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    // Uninstalled and installed again: a new installation id, and the old
    // installation's tokens stop working.
    app.github.add_installation("acme/blog", 8);
    app.github.add_installation("acme/docs", 8);
    app.github.expire_installation_tokens();
    post_n(&app, "cms", 1).await;
    assert_second_delivered(&app).await;
    assert_found_again_at(&app, 8);
}

/// A repository transferred to an owner whose installation of the App has
/// another id, while the first installation lives on for other
/// repositories: the token of the remembered installation is refused, and
/// one new lookup finds the repository's installation now.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_moved_to_another_installation_keeps_delivering() {
    let app = spawn_as_app(&hmac_route("cms", blog_target()), "off").await;
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    app.github.add_installation("acme/blog", 9);
    app.github.expire_installation_tokens();
    post_n(&app, "cms", 1).await;
    assert_second_delivered(&app).await;
    assert_found_again_at(&app, 9);
}

/// The same move while the token of the first installation is still
/// valid: GitHub answers that token 404, and the relay looks the
/// installation up again instead of failing until the token expires.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_moved_while_its_token_is_valid_is_found_at_its_new_installation() {
    let app = spawn_as_app(&hmac_route("cms", blog_target()), "off").await;
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    app.github.add_installation("acme/blog", 9);
    post_n(&app, "cms", 1).await;
    assert_second_delivered(&app).await;
    let dispatches = app.github.dispatch_attempts();
    assert_eq!(
        dispatches.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![204, 404, 204]
    );
    assert_eq!(bearer(&dispatches[0]), bearer(&dispatches[1]));
    assert_ne!(bearer(&dispatches[1]), bearer(&dispatches[2]));
    let lookups = app
        .github
        .requests()
        .iter()
        .filter(|r| r.path == "/repos/acme/blog/installation")
        .count();
    assert_eq!(lookups, 2);
}

/// A real 404 for many jobs at once (a missing workflow file, say) renews
/// the token once for the repository, not once per job.
#[tokio::test(flavor = "multi_thread")]
async fn a_404_for_many_jobs_renews_the_token_once() {
    let app = spawn_as_app(&hmac_route("cms", blog_target()), "off").await;
    app.github
        .push_responses("acme/blog", vec![Scripted::NotFound; 4]);
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 1 && crate::helpers::finished_failed(&list[0])
    })
    .await;
    post_n(&app, "cms", 2).await;
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 3 && list.iter().all(crate::helpers::finished_failed)
        })
        .await;
    assert!(
        list.iter().all(|d| d["error"]
            .as_str()
            .unwrap()
            .contains("repository not found")),
        "{list:#?}"
    );
    // The first job sent twice (its token renewed in between), the others once.
    assert_eq!(app.github.dispatch_attempts().len(), 4);
    assert_eq!(app.github.requests_of(MINT).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_right_after_a_mint_sends_the_same_token_again_once_github_knows_it() {
    // The repository comes from the body, so the token is minted for the
    // dispatch and not at start: how long the relay took to start does not
    // count against the token's freshness.
    let app = spawn_as_app(BODY_REPO_ROUTE, "off").await;
    app.github
        .push_responses("acme/blog", vec![Scripted::BadCredentials]);
    post_blog(&app).await;
    let list = app
        .wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    assert_eq!(list[0]["targets"][0]["attempts"], 1);
    let dispatches = app.github.dispatch_attempts();
    assert_eq!(
        dispatches.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![401, 204]
    );
    // A token minted anew would be as young as the refused one; the same
    // one went again once GitHub's replication lag had passed.
    assert_eq!(bearer(&dispatches[0]), bearer(&dispatches[1]));
    // The relay waits until the token is three seconds old, counted from
    // when the mint was answered, which is after the fake received it.
    let mints = app.github.requests_of(MINT);
    assert_eq!(mints.len(), 1);
    let waited = dispatches[1]
        .received_at
        .duration_since(mints[0].received_at);
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_refused_after_its_grace_is_renewed_once_then_the_queue_is_held() {
    // As above, the first token is minted for the dispatch.
    let app = spawn_as_app(BODY_REPO_ROUTE, "off").await;
    app.github
        .push_responses("acme/blog", vec![Scripted::BadCredentials; 4]);
    post_blog(&app).await;
    let line = app
        .wait_for_log(|l| l.contains("dispatches with this credential are held"))
        .await;
    assert!(line.contains("bad credentials"), "{line}");
    let list = app.deliveries(&[]);
    assert_eq!(list[0]["status"], "pending", "{list:?}");
    // Each token went twice (again after its grace), and one renewal came
    // in between: two tokens in all.
    let tokens: Vec<String> = app.github.dispatch_attempts().iter().map(bearer).collect();
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(tokens[2], tokens[3]);
    assert_ne!(tokens[1], tokens[2]);
}

/// Posts one webhook to route `cms` and returns the error it failed with.
async fn post_one_that_fails(app: &TestApp) -> String {
    post_n(app, "cms", 1).await;
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && crate::helpers::finished_failed(&list[0])
        })
        .await;
    list[0]["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_without_the_app_fails_with_the_reason() {
    let targets = "      - repo: acme/site\n        event_type: deploy\n";
    let app = spawn_as_app(&hmac_route("cms", targets), "off").await;
    let error = post_one_that_fails(&app).await;
    assert!(error.contains("not installed on acme/site"), "{error}");
    assert!(app.github.dispatches().is_empty());
}

/// With `installation_id` pinned, a repository outside that installation
/// fails naming the setting, with GitHub's own words.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_outside_the_pinned_installation_names_the_setting() {
    let targets = "      - repo: acme/site\n        event_type: deploy\n";
    let head = app_head("off").replace(
        "    private_key_file:",
        "    installation_id: 7\n    private_key_file:",
    );
    let app = spawn_app_prepared(
        &head,
        &hmac_route("cms", targets),
        &[("GITHUB_APP_ID", &APP_ID.to_string())],
        |github| {
            enable_test_app(github);
            github.add_installation("acme/site", 8);
        },
    )
    .await;
    let error = post_one_that_fails(&app).await;
    assert!(
        error.contains("installation 7 (github.app.installation_id) does not include acme/site"),
        "{error}"
    );
    assert!(
        error.contains("not accessible to the parent installation"),
        "{error}"
    );
    assert!(app.github.dispatches().is_empty());
}

/// A pinned `installation_id` that GitHub does not know (a typo, another
/// App's) fails naming the setting, not as an App to install on the
/// repository, which it may well be installed on already.
#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_installation_that_does_not_exist_names_the_setting() {
    let head = app_head("off").replace(
        "    private_key_file:",
        "    installation_id: 5\n    private_key_file:",
    );
    let app = spawn_as_app_with_head(&head, &hmac_route("cms", blog_target())).await;
    let error = post_one_that_fails(&app).await;
    assert!(
        error.contains(
            "GitHub App installation 5 (github.app.installation_id) does not exist, or belongs to another App"
        ),
        "{error}"
    );
    assert!(!error.contains("install it on the repository"), "{error}");
    assert!(app.github.dispatches().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skewed_clock_is_corrected_from_githubs_date_header() {
    // GitHub's clock runs 20 minutes ahead: the relay's first JWT looks
    // expired to it (whether the start-up preflight or the first dispatch
    // sends it).
    let app = spawn_blog_app(|github| {
        github.set_clock_offset(20 * 60);
    })
    .await;
    post_n(&app, "cms", 1).await;
    app.github.wait_for_dispatches(1, WAIT).await;
    let lookups = app.github.requests_of(LOOKUP);
    assert_eq!(
        lookups.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![401, 200]
    );
    assert_eq!(app.github.requests_of(MINT)[0].status, 201);
}

const WORKFLOW_TARGET: &str = "      - repo: acme/docs\n        workflow: deploy.yml\n        ref: main\n        inputs:\n          n: \"{{ body.n }}\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn workflow_dispatches_record_the_run_they_created() {
    let app = spawn_app(&hmac_route("cms", WORKFLOW_TARGET)).await;
    post_n(&app, "cms", 1).await;
    let sent = app.github.wait_for_dispatches(1, WAIT).await;
    assert_eq!(
        sent[0].body,
        Some(json!({"ref": "main", "inputs": {"n": "0"}, "return_run_details": true}))
    );
    let list = app
        .wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    let result = &list[0]["targets"][0]["result"];
    // The fake numbers runs from 1: this is the run it answered with.
    assert_eq!(result["workflow_run_id"], 1, "{list:#?}");
    assert!(
        result["html_url"]
            .as_str()
            .unwrap()
            .starts_with("https://github.com/acme/docs/actions/runs/")
    );
    // The text listing shows the run too, and the log has it.
    let output = app.cli(&["deliveries"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("workflow run"), "{text}");
    app.wait_for_log(|l| l.contains("Workflow run created") && l.contains("workflow_run_id"))
        .await;
    assert_eq!(app.github.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2xx_whose_body_never_arrives_is_delivered_and_not_sent_again() {
    let head = TEST_HEAD.replace("timeout: 10s", "timeout: 1s");
    assert_ne!(head, TEST_HEAD, "the head sets a timeout");
    let app = spawn_app_with(&head, &hmac_route("cms", WORKFLOW_TARGET), &[]).await;
    app.github
        .push_responses("acme/docs", vec![crate::fake_github::Scripted::StalledBody]);
    post_n(&app, "cms", 1).await;
    let list = app
        .wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    assert!(list[0]["targets"][0]["result"].is_null(), "{list:#?}");
    assert_eq!(
        app.github.dispatch_attempts().len(),
        1,
        "the workflow was started once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_again_without_run_details_waits_its_turn() {
    let head = TEST_HEAD.replace(
        "pacing: off",
        "pacing: { concurrency: 1, min_interval: 1s, per_minute: 6000 }",
    );
    assert_ne!(head, TEST_HEAD, "the head sets pacing");
    let app = spawn_app_with(&head, &hmac_route("cms", WORKFLOW_TARGET), &[]).await;
    app.github.set_reject_run_details(true);
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    let sent = app.github.dispatch_attempts();
    assert_eq!(
        sent.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![422, 204]
    );
    let gap = sent[1].received_at.duration_since(sent[0].received_at);
    // Paced start to start, a second apart: the margin absorbs the first
    // request reaching the fake later than the second.
    assert!(
        gap >= Duration::from_millis(500),
        "sent again after {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_run_details_is_asked_once_and_then_no_more() {
    let app = spawn_app(&hmac_route("cms", WORKFLOW_TARGET)).await;
    app.github.set_reject_run_details(true);
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 2))
        .await;
    let sent: Vec<(u16, bool)> = app
        .github
        .dispatch_attempts()
        .iter()
        .map(|r| {
            (
                r.status,
                r.body
                    .as_ref()
                    .is_some_and(|b| b.get("return_run_details").is_some()),
            )
        })
        .collect();
    assert_eq!(sent, vec![(422, true), (204, false), (204, false)]);
    let list = app.deliveries(&[]);
    assert!(list.iter().all(|d| d["targets"][0].get("result").is_none()));
}

/// With an App, a GitHub outage first shows as token requests that go
/// unanswered; they do not spend the job's attempts either (decision 42).
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_that_stops_app_token_requests_does_not_spend_attempts() {
    let head = app_head("off")
        .replace("timeout: 5s", "timeout: 300ms")
        .replace("retry:\n", "retry:\n  max_attempts: 2\n");
    // The repository comes from the body, so the start-up preflight has
    // minted no token for it: the job's first request is a token request.
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: \"{{ body.repo }}\"\n        event_type: deploy\n    allowed_repos: [\"acme/*\"]\n";
    let app = spawn_as_app_with_head(&head, routes).await;
    // GitHub stops answering in time: every token request times out.
    app.github.set_latency(Duration::from_secs(2));
    assert_eq!(
        app.post("cms", r#"{"repo":"acme/blog"}"#).await.status(),
        202
    );
    app.wait_for_deliveries(WAIT, |list| {
        list.len() == 1 && list[0]["targets"][0]["attempts"].as_u64() >= Some(3)
    })
    .await;
    app.github.set_latency(Duration::ZERO);
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    app.wait_for_log(|l| l.contains("GitHub answers dispatches again"))
        .await;
    assert!(
        app.logs()
            .iter()
            .any(|l| l.contains("GitHub answers no dispatch") && l.contains("App token request"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_key_mounted_after_start_is_waited_for_not_failed_on() {
    // The key file appears only after the first webhook, as a secret
    // mounted late by an orchestrator would.
    let mount = tempfile::tempdir().unwrap();
    let key_path = mount.path().join("github-app.pem");
    let head = app_head("off").replace("retry:\n", "retry:\n  max_attempts: 1000\n");
    let app = spawn_as_app_with_key_file(&head, &key_path).await;
    post_n(&app, "cms", 1).await;
    app.wait_for_log(|line| line.contains("private key file cannot be read"))
        .await;
    assert_eq!(app.deliveries(&[])[0]["status"], "pending");
    std::fs::copy(TEST_APP_KEY, &key_path).unwrap();
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_private_key_file_is_used_without_a_restart() {
    // The key file lives where a mounted Secret would, updated in place.
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("app.pem");
    std::fs::copy(TEST_APP_KEY, &key_file).unwrap();
    let app = spawn_as_app_with_key_file(&app_head("off"), &key_file).await;
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;

    // The key is rotated: GitHub knows only the new one, and the old key's
    // installation tokens are gone.
    let fixtures = std::path::Path::new(TEST_APP_KEY).parent().unwrap();
    let rotated_public =
        std::fs::read_to_string(fixtures.join("test-app-rotated.pub.pem")).unwrap();
    app.github.enable_app(APP_ID, &rotated_public);
    let staged = secrets.path().join("app.pem.new");
    std::fs::copy(fixtures.join("test-app-rotated.pem"), &staged).unwrap();
    std::fs::rename(&staged, &key_file).unwrap();
    app.github.expire_installation_tokens();

    post_n(&app, "cms", 1).await;
    assert_second_delivered(&app).await;
    let mints = app.github.requests_of(MINT);
    assert_eq!(
        mints.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![201, 201],
        "the second token was minted with the new key"
    );
    app.wait_for_log(|l| l.contains("private key file changed"))
        .await;

    // A copy caught half-written leaves the key in use, and says so.
    std::fs::write(&key_file, "-----BEGIN RSA PRIVATE KEY-----\nMIIE").unwrap();
    app.github.expire_installation_tokens();
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 3))
        .await;
    let line = app
        .wait_for_log(|l| l.contains("no longer gives a key"))
        .await;
    assert!(line.contains("is cut short: it has no `-----END"), "{line}");
    assert!(!line.contains("MIIE"), "{line}");
    assert_eq!(app.github.violations(), Vec::<String>::new());
}

/// GitHub recommends the App's client id as the JWT's `iss`; an App
/// configured by it mints tokens and dispatches as one configured by its
/// numeric id.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_configured_by_its_client_id_dispatches() {
    let client_id = crate::fake_github::app_client_id(APP_ID);
    let app = spawn_app_prepared(
        &app_head("off"),
        &hmac_route("cms", blog_target()),
        &[("GITHUB_APP_ID", &client_id)],
        enable_test_app,
    )
    .await;
    post_n(&app, "cms", 1).await;
    app.wait_for_deliveries(WAIT, |list| all_delivered(list, 1))
        .await;
    let mint = &app.github.requests_of(MINT)[0];
    let jwt = bearer(mint);
    let claims = jwt_claims(&jwt);
    assert_eq!(claims["iss"], client_id.as_str());
}

/// Posts one webhook for acme/blog to [`BODY_REPO_ROUTE`].
async fn post_blog(app: &TestApp) {
    let response = app.post("cms", r#"{"repo":"acme/blog"}"#).await;
    assert_eq!(response.status(), 202);
}

/// A route whose repository comes from the body: the start-up preflight
/// has asked GitHub nothing for it, so a webhook's first requests are the
/// installation lookup and the token request.
const BODY_REPO_ROUTE: &str = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: \"{{ body.repo }}\"\n        event_type: deploy\n    allowed_repos: [\"acme/*\"]\n";

/// A relay that gives each job a single attempt, so that a failure which
/// spent one would fail the delivery.
async fn spawn_as_app_with_one_attempt(prepare: impl FnOnce(&FakeGitHub)) -> TestApp {
    let head = app_head("off").replace("retry:\n", "retry:\n  max_attempts: 1\n");
    spawn_app_prepared(
        &head,
        BODY_REPO_ROUTE,
        &[("GITHUB_APP_ID", &APP_ID.to_string())],
        |github| {
            enable_test_app(github);
            prepare(github);
        },
    )
    .await
}

/// Posts one webhook for acme/blog and checks it is delivered, though its
/// job had a single attempt to spend.
async fn post_one_and_see_it_delivered(app: &TestApp) {
    assert_eq!(
        app.post("cms", r#"{"repo":"acme/blog"}"#).await.status(),
        202
    );
    let list = app
        .wait_for_deliveries(WAIT, |list| {
            list.len() == 1 && list[0]["status"] != "pending"
        })
        .await;
    assert!(all_delivered(&list, 1), "{list:#?}");
}

/// The statuses the fake answered to one operation, in order, and the time
/// between the first two.
fn answers_to(app: &TestApp, operation: &str) -> (Vec<u16>, Duration) {
    let requests = app.github.requests_of(operation);
    let gap = match requests.as_slice() {
        [first, second, ..] => second.received_at - first.received_at,
        _ => Duration::ZERO,
    };
    (requests.iter().map(|r| r.status).collect(), gap)
}

/// GitHub rate-limits the App's token request itself. The relay waits as
/// long as GitHub said, asks nothing as the App meanwhile (the fake counts
/// any such request as a violation), and the wait spends none of the job's
/// attempts.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_token_request_is_waited_out_without_spending_an_attempt() {
    let app = spawn_as_app_with_one_attempt(|github| {
        let limit = Scripted::SecondaryRateLimit {
            retry_after_secs: Some(2),
        };
        github.push_token_responses(7, vec![limit]);
    })
    .await;
    post_one_and_see_it_delivered(&app).await;
    let (statuses, waited) = answers_to(&app, MINT);
    assert_eq!(statuses, vec![403, 201]);
    assert!(
        waited >= Duration::from_millis(1_900),
        "asked again after {waited:?}"
    );
    assert_eq!(app.github.dispatches_to("acme/blog"), 1);
}

/// A dispatch that had to wait for a new App token waits out a rate limit
/// that another dispatch met meanwhile. With pacing off both are in flight
/// at once: the one to acme/blog has its token at hand (the preflight asked
/// for it) and meets GitHub's limit while the one to acme/docs, a templated
/// repository the preflight does not know, is still being given its token.
/// Sent as soon as the token came, the second would go into the limit,
/// which the fake counts as a violation and answers with the limit again.
#[tokio::test(flavor = "multi_thread")]
async fn a_dispatch_given_its_token_during_a_rate_limit_waits_it_out() {
    let routes = "  - id: both\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n      - repo: \"{{ body.repo }}\"\n        event_type: deploy\n    allowed_repos: [\"acme/*\"]\n";
    // The held dispatch must not time out while the other gets its token.
    let head = app_head("off").replace("timeout: 5s", "timeout: 60s");
    let app = spawn_as_app_with_head(&head, routes).await;
    app.wait_for_log(|line| line.contains("Preflight finished"))
        .await;
    let blog_dispatch = app.github.hold("POST", "/repos/acme/blog/dispatches");
    let docs_token = app
        .github
        .hold("POST", "/app/installations/7/access_tokens");
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::SecondaryRateLimit {
            retry_after_secs: Some(3),
        }],
    );
    assert_eq!(
        app.post("both", r#"{"repo":"acme/docs"}"#).await.status(),
        202
    );
    // Both have taken their turn: one is sending, the other asks for a token.
    blog_dispatch.wait_for_arrivals(1, WAIT).await;
    docs_token.wait_for_arrivals(1, WAIT).await;
    // The limit holds from GitHub's answer, which comes after this.
    let limited_at = Instant::now();
    blog_dispatch.open();
    app.wait_for_log(|line| line.contains("GitHub's rate limit holds back every dispatch"))
        .await;
    docs_token.open();

    app.github.wait_for_dispatches(2, WAIT).await;
    let attempts = app.github.dispatch_attempts();
    assert!(
        attempts.iter().any(|r| r.status == 403),
        "the dispatch to acme/blog met the limit: {attempts:#?}"
    );
    let to_docs: Vec<_> = attempts
        .iter()
        .filter(|r| r.path == "/repos/acme/docs/dispatches")
        .collect();
    assert_eq!(
        to_docs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![204],
        "{attempts:#?}"
    );
    let waited = to_docs[0].received_at - limited_at;
    assert!(
        waited >= Duration::from_millis(2_900),
        "sent {waited:?} after the limit"
    );
    assert_eq!(app.github.violations(), Vec::<String>::new());
}

/// A primary limit on the installation lookup (GitHub's 403 with
/// `x-ratelimit-remaining: 0`) is waited out until its reset too.
#[tokio::test(flavor = "multi_thread")]
async fn an_installation_lookup_at_the_apps_primary_limit_waits_for_the_reset() {
    let app = spawn_as_app_with_one_attempt(|github| {
        let limit = Scripted::PrimaryRateLimit { reset_in_secs: 2 };
        github.push_installation_lookup_responses("acme/blog", vec![limit]);
    })
    .await;
    post_one_and_see_it_delivered(&app).await;
    let (statuses, waited) = answers_to(&app, LOOKUP);
    assert_eq!(statuses, vec![403, 200]);
    // The reset is a whole second on GitHub's clock.
    assert!(
        waited >= Duration::from_millis(1_000),
        "asked again after {waited:?}"
    );
}

/// GitHub failing the App's own requests (a 502 to the lookup, a 500 to
/// the token request) while it answers nothing else is an outage, not the
/// job's failure (decision 42): the delivery goes through once GitHub
/// answers, though it had one attempt to spend.
#[tokio::test(flavor = "multi_thread")]
async fn server_errors_to_the_apps_requests_spend_no_attempt() {
    let app = spawn_as_app_with_one_attempt(|github| {
        github.push_installation_lookup_responses("acme/blog", vec![Scripted::Status(502)]);
        github.push_token_responses(7, vec![Scripted::Status(500)]);
    })
    .await;
    post_one_and_see_it_delivered(&app).await;
    assert_eq!(answers_to(&app, LOOKUP).0, vec![502, 200]);
    assert_eq!(answers_to(&app, MINT).0, vec![500, 201]);
}

/// An App's repository renamed since routes.yaml named it: GitHub looks its
/// installation up through the redirect, and the installation knows the
/// repository by its name now only, so its token is asked for by the
/// repository's id, which the redirect gave.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_dispatches_to_a_renamed_repository_with_a_token_asked_for_by_id() {
    let app = spawn_blog_app(|github| {
        github.rename_repo("acme/blog", "acme/website");
    })
    .await;
    delivers_to_the_renamed_blog_with_a_token_asked_for_by_id(&app).await;
}

/// Posts one webhook to `cms`, whose target acme/blog is now acme/website,
/// and checks that it is delivered there with a token asked for by id.
async fn delivers_to_the_renamed_blog_with_a_token_asked_for_by_id(app: &TestApp) {
    assert_eq!(app.post_signed("cms", r#"{"n": 1}"#).await.status(), 202);
    app.wait_for_deliveries(Duration::from_secs(60), |list| {
        list.len() == 1 && list[0]["status"] == "delivered"
    })
    .await;
    let mints = app.github.requests_of(MINT);
    let last = mints.last().expect("a token was minted");
    assert_eq!(last.status, 201, "{mints:#?}");
    let body = last.body.as_ref().unwrap();
    assert!(body.get("repositories").is_none(), "{body}");
    assert_eq!(
        body["repository_ids"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    let delivered: Vec<_> = app
        .github
        .dispatch_attempts()
        .into_iter()
        .filter(|r| r.status == 204)
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].path, "/repos/acme/website/dispatches");
    assert_eq!(app.github.violations(), Vec::<String>::new());
}

/// The same with `installation_id` pinned, where no lookup comes before
/// the mint: the token asked for by the former name is refused, and one
/// lookup finds the repository's id in the pinned installation.
#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_installation_dispatches_to_a_renamed_repository() {
    let head = app_head("off").replace(
        "    private_key_file:",
        "    installation_id: 7\n    private_key_file:",
    );
    let app = spawn_app_prepared(
        &head,
        &hmac_route("cms", blog_target()),
        &[("GITHUB_APP_ID", &APP_ID.to_string())],
        |github| {
            enable_test_app(github);
            github.rename_repo("acme/blog", "acme/website");
        },
    )
    .await;
    delivers_to_the_renamed_blog_with_a_token_asked_for_by_id(&app).await;
}

/// A suspended installation fails its dispatches saying so and how to end
/// it, not as a missing permission; `check --online` says the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_installation_fails_saying_it_is_suspended() {
    let app = spawn_blog_app(|github| github.suspend_installation(7)).await;
    let error = post_one_that_fails(&app).await;
    assert!(
        error.contains("GitHub App installation 7 is suspended"),
        "{error}"
    );
    assert!(error.contains("redeliver"), "{error}");
    assert!(!error.contains("lacks a permission"), "{error}");
    assert!(app.github.dispatches().is_empty());

    let (code, text) = crate::preflight::check_online(&app, crate::helpers::TOKEN);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("FAIL  acme/blog: GitHub App installation 7 is suspended"),
        "{text}"
    );
}
