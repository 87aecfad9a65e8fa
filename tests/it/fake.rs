//! The fake GitHub itself: it refuses what GitHub refuses, with GitHub's
//! status and error body, and records each refusal as a violation. The other
//! tests trust it to, so it is checked here with requests written by hand.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::fake_github::{FakeGitHub, TEST_APP_KEY, TEST_APP_PUBLIC_KEY};

const TOKEN: &str = "ghp_fake_selftest";

async fn fake_with_repo() -> FakeGitHub {
    let fake = FakeGitHub::start().await;
    fake.add_token(TOKEN);
    fake.add_repo("acme/blog");
    fake
}

/// Posts `body` to `path` as the relay would, with `authorization`.
/// A request with the headers the relay sends, asking for API `version`.
fn as_the_relay(
    request: reqwest::RequestBuilder,
    version: &str,
    authorization: &str,
) -> reqwest::RequestBuilder {
    request
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", version)
        .header("user-agent", "fake-selftest")
        .header("authorization", authorization)
}

async fn post(fake: &FakeGitHub, path: &str, authorization: &str, body: &Value) -> (u16, Value) {
    let request = crate::helpers::http().post(format!("{}{path}", fake.url()));
    let response = as_the_relay(request, "2022-11-28", authorization)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt(key_pem: &[u8], claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &key,
    )
    .unwrap()
}

#[tokio::test]
async fn dispatch_bodies_beyond_githubs_limits_are_refused_and_recorded() {
    let fake = fake_with_repo().await;
    fake.expect_violations();
    let auth = format!("Bearer {TOKEN}");
    let eleven_keys: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("k{i}"), json!(i))).collect();
    // 30,000 three-byte characters: 90,000 bytes, fewer than 65,536 characters.
    let wide = "€".repeat(30_000);
    let twenty_six_inputs: serde_json::Map<String, Value> =
        (0..26).map(|i| (format!("i{i}"), json!("x"))).collect();
    let cases = [
        (
            "/repos/acme/blog/dispatches",
            json!({"event_type": "deploy", "client_payload": eleven_keys}),
        ),
        (
            "/repos/acme/blog/dispatches",
            json!({"event_type": "e".repeat(101)}),
        ),
        ("/repos/acme/blog/dispatches", json!({"event_type": ""})),
        (
            "/repos/acme/blog/dispatches",
            json!({"event_type": "deploy", "client_payload": {"text": wide}}),
        ),
        (
            "/repos/acme/blog/actions/workflows/deploy.yml/dispatches",
            json!({"ref": "main", "inputs": twenty_six_inputs}),
        ),
        (
            "/repos/acme/blog/actions/workflows/deploy.yml/dispatches",
            json!({"inputs": {"a": "b"}}),
        ),
    ];
    for (index, (path, body)) in cases.iter().enumerate() {
        let (status, answer) = post(&fake, path, &auth, body).await;
        assert_eq!(status, 422, "case {index}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Invalid request.")),
            "case {index}: {answer}"
        );
        assert!(
            answer["documentation_url"].is_string(),
            "case {index}: {answer}"
        );
        assert_eq!(
            fake.violations().len(),
            index + 1,
            "case {index}: {:?}",
            fake.violations()
        );
    }
    // Within the limits, the same requests go through and record nothing more.
    let ten_keys: serde_json::Map<String, Value> =
        (0..10).map(|i| (format!("k{i}"), json!(i))).collect();
    let (status, _) = post(
        &fake,
        "/repos/acme/blog/dispatches",
        &auth,
        &json!({"event_type": "e".repeat(100), "client_payload": ten_keys}),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(fake.violations().len(), cases.len());
}

#[tokio::test]
async fn app_jwts_are_held_to_githubs_rules() {
    let fake = fake_with_repo().await;
    let public = std::fs::read_to_string(TEST_APP_PUBLIC_KEY).unwrap();
    fake.enable_app(99, &public);
    fake.add_installation("acme/blog", 5);
    let key = std::fs::read(TEST_APP_KEY).unwrap();
    // Another key of the same kind: a signature GitHub cannot verify.
    let other_key = rsa_key_other_than_the_apps();
    let now = now();
    let client_id = fake.app_client_id();
    let cases = [
        // (what, key, claims, accepted)
        (
            "app id",
            &key,
            json!({"iat": now - 60, "exp": now + 540, "iss": 99}),
            true,
        ),
        (
            "app id as text",
            &key,
            json!({"iat": now - 60, "exp": now + 540, "iss": "99"}),
            true,
        ),
        (
            "client id",
            &key,
            json!({"iat": now - 60, "exp": now + 540, "iss": client_id}),
            true,
        ),
        (
            "another app",
            &key,
            json!({"iat": now - 60, "exp": now + 540, "iss": 98}),
            false,
        ),
        (
            "another key",
            &other_key,
            json!({"iat": now - 60, "exp": now + 540, "iss": 99}),
            false,
        ),
        (
            "expired",
            &key,
            json!({"iat": now - 600, "exp": now - 1, "iss": 99}),
            false,
        ),
        (
            "issued ahead",
            &key,
            json!({"iat": now + 30, "exp": now + 540, "iss": 99}),
            false,
        ),
        (
            // GitHub's own example: `iat` a minute back, `exp` ten minutes
            // ahead. Only `exp` against GitHub's clock is held to a limit.
            "ten minutes ahead, eleven after iat",
            &key,
            json!({"iat": now - 60, "exp": now + 600, "iss": 99}),
            true,
        ),
        (
            "too far ahead",
            &key,
            json!({"iat": now, "exp": now + 610, "iss": 99}),
            false,
        ),
    ];
    for (what, key, claims, accepted) in cases {
        let (status, answer) = post(
            &fake,
            "/app/installations/5/access_tokens",
            &format!("Bearer {}", jwt(key, &claims)),
            &json!({}),
        )
        .await;
        if accepted {
            assert_eq!(status, 201, "{what}: {answer}");
            assert!(
                answer["token"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("ghs_")),
                "{what}: {answer}"
            );
        } else {
            assert_eq!(status, 401, "{what}: {answer}");
            assert!(answer["message"].is_string(), "{what}: {answer}");
        }
    }
    // Refusals of a JWT are GitHub's answers to a client's mistake in time or
    // key, not malformed requests.
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[test]
fn a_fake_dropped_with_violations_fails_the_test() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(async {
        let fake = fake_with_repo().await;
        let (status, _) = post(
            &fake,
            "/repos/acme/blog/dispatches",
            &format!("Bearer {TOKEN}"),
            &json!({"client_payload": {}}),
        )
        .await;
        assert_eq!(status, 422);
        fake
    });
    assert_eq!(fake.violations().len(), 1);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(fake)));
    let message = dropped.expect_err("the drop must fail");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("would refuse"), "{message}");
}

/// An RSA key that is not the one GitHub knows for the test App.
fn rsa_key_other_than_the_apps() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/app/test-app-rotated.pem"
    ))
    .unwrap()
}

#[tokio::test]
async fn the_fake_names_the_api_version_it_answered_as() {
    let fake = fake_with_repo().await;
    // The relay is held to the version it was built against; this request
    // is not the relay's.
    fake.expect_violations();
    for (asked, selected) in [("2026-03-10", "2026-03-10"), ("2022-11-28", "2022-11-28")] {
        let request =
            crate::helpers::http().post(format!("{}/repos/acme/blog/dispatches", fake.url()));
        let response = as_the_relay(request, asked, &format!("Bearer {TOKEN}"))
            .json(&json!({"event_type": "deploy"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 204, "{asked}");
        assert_eq!(
            response.headers()["x-github-api-version-selected"],
            selected,
            "{asked}"
        );
    }
}

#[tokio::test]
async fn query_parameters_are_held_to_the_description() {
    let fake = fake_with_repo().await;
    fake.expect_violations();
    let get = |query: &'static str| {
        let url = format!("{}/repos/acme/blog/actions/runs?{query}", fake.url());
        async move {
            as_the_relay(
                crate::helpers::http().get(url),
                "2022-11-28",
                &format!("Bearer {TOKEN}"),
            )
            .send()
            .await
            .unwrap()
        }
    };
    // The fake answers this operation with a violation of its own (it does
    // not implement it); only the query's are counted here.
    let query_violations = || -> Vec<String> {
        fake.violations()
            .into_iter()
            .filter(|v| v.contains("query parameter"))
            .collect()
    };
    get("per_page=5&branch=main").await;
    assert_eq!(query_violations(), Vec::<String>::new());
    get("per_page=many").await;
    get("nonsense=1").await;
    let violations = query_violations();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations[0].contains("per_page"), "{violations:?}");
    assert!(violations[1].contains("nonsense"), "{violations:?}");
}

/// A rate limit the fake announced holds back every request of the same
/// credential until its wait ends, as GitHub's do: a request inside the wait
/// gets the limit again, with what is left of it, and is a violation. Other
/// credentials are not held back.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_holds_its_credential_back_for_the_announced_wait() {
    use crate::fake_github::Scripted;
    let fake = fake_with_repo().await;
    fake.add_token("ghp_other");
    fake.add_repo("acme/docs");
    fake.expect_violations();
    fake.push_responses(
        "acme/blog",
        vec![Scripted::RateLimited {
            retry_after_secs: 30,
        }],
    );
    let dispatch = json!({"event_type": "deploy"});
    let bearer = format!("Bearer {TOKEN}");
    let (status, _) = post(&fake, "/repos/acme/blog/dispatches", &bearer, &dispatch).await;
    assert_eq!(status, 429);
    assert!(fake.violations().is_empty());

    // Another repository, the same token: still held back.
    let request = crate::helpers::http().post(format!("{}/repos/acme/docs/dispatches", fake.url()));
    let response = as_the_relay(request, "2022-11-28", &bearer)
        .json(&dispatch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (28..=30).contains(&retry_after),
        "retry-after {retry_after}"
    );
    let violations = fake.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0]
            .contains("before the end of the wait a rate limit told its credential to keep"),
        "{violations:?}"
    );

    // Another token is not held back.
    let (status, _) = post(
        &fake,
        "/repos/acme/docs/dispatches",
        "Bearer ghp_other",
        &dispatch,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(fake.violations().len(), 1);
}

/// A gate holds the requests to its path, and only those, until it opens;
/// the held requests are then answered as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_gate_holds_requests_to_its_path_until_opened() {
    let fake = std::sync::Arc::new(fake_with_repo().await);
    fake.add_repo("acme/docs");
    let gate = fake.hold("POST", "/repos/acme/blog/dispatches");
    let authorization = format!("Bearer {TOKEN}");
    let body = json!({"event_type": "deploy"});
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (fake, authorization, body) = (
                std::sync::Arc::clone(&fake),
                authorization.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                post(&fake, "/repos/acme/blog/dispatches", &authorization, &body).await
            })
        })
        .collect();
    gate.wait_for_arrivals(2, std::time::Duration::from_secs(10))
        .await;
    // Another path is not held: its answer comes while both wait.
    let (status, _) = post(&fake, "/repos/acme/docs/dispatches", &authorization, &body).await;
    assert_eq!(status, 204);
    assert!(
        held.iter().all(|request| !request.is_finished()),
        "a request at a closed gate was answered"
    );
    gate.open();
    for request in held {
        assert_eq!(request.await.unwrap().0, 204);
    }
}
