//! Webhook intake over HTTP: each verification method, each status code of
//! the HTTP contract, with its JSON error body.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::{
    SECRET, TEST_HEAD, hmac_route, json_of, sample, signature, spawn_app, spawn_app_with,
};

const DEPLOY: &str = "      - repo: acme/blog\n        event_type: deploy\n";

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_accepts_a_signed_request_rejects_a_tampered_one_and_logs_refusals_once_a_while() {
    let app = spawn_app(&hmac_route("cms", DEPLOY)).await;
    let body = r#"{"event":"entry.publish"}"#;
    let (status, answer) = json_of(app.post_signed("cms", body).await).await;
    assert_eq!(status, 202, "{answer}");
    assert!(answer["delivery_id"].as_str().is_some());
    assert_eq!(
        answer["dispatches"],
        json!([{"repo": "acme/blog", "event_type": "deploy"}])
    );

    let tampered = app
        .http
        .post(app.url("/hooks/cms"))
        .header("x-signature-256", signature(SECRET, body.as_bytes()))
        .body(r#"{"event":"entry.publisH"}"#)
        .send()
        .await
        .unwrap();
    let (status, answer) = json_of(tampered).await;
    assert_eq!(status, 401);
    assert_error(&answer, "unauthorized");
    let wrong_secret = app
        .http
        .post(app.url("/hooks/cms"))
        .header("x-signature-256", signature("other", body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_secret.status(), 401);
    let unsigned = app.post("cms", body).await;
    assert_eq!(unsigned.status(), 401);

    // A sender that keeps failing does not flood the log: the first
    // refusal of each kind is said, the next ones within ten seconds only
    // counted. Kinds are apart, so the forged signatures above do not hide
    // the missing one.
    for _ in 0..20 {
        assert_eq!(app.post("cms", body).await.status(), 401);
    }
    let refused = "webhooks_received_total{outcome=\"unauthorized\",route=\"cms\"} 23";
    assert!(app.metrics().await.contains(refused));
    // A line written after the refusals: once it is read, so are they.
    let (status, answer) = json_of(app.post_signed("cms", body).await).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["delivery_id"].as_str().unwrap().to_string();
    app.wait_for_log(|l| l.contains("Webhook accepted") && l.contains(&id))
        .await;
    let lines: Vec<String> = app
        .logs()
        .into_iter()
        .filter(|l| l.contains("Refused a webhook that failed verification"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("does not match any configured secret"),
        "{lines:#?}"
    );
    assert!(lines[1].contains("is missing"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn github_token_basic_and_none_methods() {
    let routes = format!(
        r#"
  - id: gh
    verify:
      github:
        secret: ${{WEBHOOK_SECRET}}
    dispatch:
{DEPLOY}
  - id: minio
    verify:
      token:
        header: Authorization
        value: Bearer ${{MINIO_TOKEN}}
    dispatch:
{DEPLOY}
  - id: jenkins
    verify:
      basic:
        username: jenkins
        password: ${{JENKINS_PASSWORD}}
    dispatch:
{DEPLOY}
  - id: open
    verify: none
    dispatch:
{DEPLOY}
"#
    );
    let app = spawn_app_with(
        TEST_HEAD,
        &routes,
        &[
            ("MINIO_TOKEN", "minio-token-1"),
            ("JENKINS_PASSWORD", "pa:ss"),
        ],
    )
    .await;
    let body = r#"{"ref":"refs/heads/main"}"#;
    let post = |route: &str, headers: Vec<(&'static str, String)>| {
        let mut request = app
            .http
            .post(app.url(&format!("/hooks/{route}")))
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };

    let good = post(
        "gh",
        vec![("x-hub-signature-256", signature(SECRET, body.as_bytes()))],
    )
    .await
    .unwrap();
    assert_eq!(good.status(), 202);
    let bad = post(
        "gh",
        vec![("x-hub-signature-256", signature("nope", body.as_bytes()))],
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 401);

    assert_eq!(
        post(
            "minio",
            vec![("authorization", "Bearer minio-token-1".into())]
        )
        .await
        .unwrap()
        .status(),
        202
    );
    assert_eq!(
        post(
            "minio",
            vec![("authorization", "Bearer minio-token-2".into())]
        )
        .await
        .unwrap()
        .status(),
        401
    );

    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    assert_eq!(
        post(
            "jenkins",
            vec![("authorization", basic("jenkins", "pa:ss"))]
        )
        .await
        .unwrap()
        .status(),
        202
    );
    // Every 401 of a Basic route carries the challenge, as HTTP requires.
    let wrong = post(
        "jenkins",
        vec![("authorization", basic("jenkins", "pa:sx"))],
    )
    .await
    .unwrap();
    let missing = post("jenkins", vec![]).await.unwrap();
    for challenge in [wrong, missing] {
        assert_eq!(challenge.status(), 401);
        assert_eq!(
            challenge.headers()["www-authenticate"],
            r#"Basic realm="dispatch-relay""#
        );
    }

    assert_eq!(post("open", vec![]).await.unwrap().status(), 202);
    app.github
        .wait_for_dispatches(4, std::time::Duration::from_secs(60))
        .await;
    // The stored requests never keep credential headers.
    let db = std::fs::read(app.db_path()).unwrap();
    let wal = std::fs::read(app.dir.path().join("dispatch-relay.db-wal")).unwrap_or_default();
    for haystack in [db, wal] {
        let text = String::from_utf8_lossy(&haystack);
        assert!(!text.contains("minio-token-1"), "a token was stored");
        assert!(
            !text.contains(&basic("jenkins", "pa:ss")[6..]),
            "basic credentials were stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_status_of_the_contract() {
    let routes = format!(
        r#"
  - id: cms
    verify:
      hmac:
        secret: ${{WEBHOOK_SECRET}}
        header: X-Signature-256
        prefix: "sha256="
    max_body: 1KiB
    when: body.event == "publish"
    dedupe_key: "{{{{ body.id }}}}"
    dispatch:
      - repo: acme/blog
        event_type: "{{{{ body.kind }}}}"
        client_payload:
          id: "{{{{ body.id }}}}"
  - id: office
    verify: none
    source_ips: [10.1.2.0/24]
    dispatch:
{DEPLOY}
  - id: limited
    verify: none
    rate_limit: {{ per_second: 1, burst: 2 }}
    when: "false"
    dispatch:
{DEPLOY}
"#
    );
    let app = spawn_app(&routes).await;

    let (status, body) = json_of(app.post("nope", "{}").await).await;
    assert_eq!(status, 404);
    assert_error(&body, "unknown_route");
    // A URL copied with a slip is pointed at the route it almost names;
    // a long name is not echoed whole.
    for slip in ["cms/", "CMS"] {
        let (status, body) = json_of(app.post(slip, "{}").await).await;
        assert_eq!(status, 404);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .ends_with("did you mean `cms`?"),
            "{body}"
        );
    }
    let (_, body) = json_of(app.post(&"x".repeat(5_000), "{}").await).await;
    let message = body["message"].as_str().unwrap();
    assert!(message.len() < 200 && message.contains('…'), "{message}");

    let head = app.http.head(app.url("/hooks/cms")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    // A GET (a URL checked in a browser) is told the route exists.
    let get = app.http.get(app.url("/hooks/cms")).send().await.unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(
        get.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST, HEAD")
    );
    let (_, body) = json_of(get).await;
    assert_error(&body, "method_not_allowed");
    let (status, _) = json_of(app.http.get(app.url("/hooks/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);

    let (status, body) = json_of(
        app.post_signed("cms", r#"{"event":"draft","id":1,"kind":"deploy"}"#)
            .await,
    )
    .await;
    assert_eq!((status, &body), (200, &json!({"skipped": true})));
    // Nothing is stored for a skip: the log says it came.
    let line = app.wait_for_log(|l| l.contains("Skipped a webhook")).await;
    assert!(line.contains("\"route\":\"cms\""), "{line}");

    let first = r#"{"event":"publish","id":7,"kind":"deploy"}"#;
    let (status, accepted) = json_of(app.post_signed("cms", first).await).await;
    assert_eq!(status, 202, "{accepted}");
    let (status, duplicate) = json_of(app.post_signed("cms", first).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        duplicate,
        json!({"delivery_id": accepted["delivery_id"], "duplicate": true})
    );

    let (status, body) = json_of(
        app.post_signed("cms", r#"{"event":"publish","id":8,"kind":""}"#)
            .await,
    )
    .await;
    assert_eq!(status, 422, "an empty event_type breaks GitHub's limit");
    assert_error(&body, "unprocessable");
    assert!(
        body["message"].as_str().unwrap().contains("event_type"),
        "{body}"
    );

    let (status, body) = json_of(app.post_signed("cms", "{not json").await).await;
    assert_eq!(status, 400);
    assert_error(&body, "bad_request");

    let big = format!(r#"{{"event":"publish","pad":"{}"}}"#, "x".repeat(2000));
    let (status, body) = json_of(app.post_signed("cms", &big).await).await;
    assert_eq!(status, 413);
    assert_error(&body, "too_large");

    // A burst of 2 at one per second: the third quick request is refused.
    let mut limited = None;
    for _ in 0..10 {
        let response = app.post("limited", "{}").await;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the inbound rate limit answers 429");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after));
    let (_, body) = json_of(limited).await;
    assert_error(&body, "rate_limited");

    let (status, body) = json_of(app.post("office", "{}").await).await;
    assert_eq!(status, 403);
    assert_error(&body, "forbidden");

    // Each outcome counted once, as it happened once (every series exists
    // from the start, so only the count says anything).
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "dispatch_relay_webhooks_received_total{outcome=\"rate_limited\",route=\"limited\"} 1"
        ),
        "{metrics}"
    );
    for outcome in [
        "accepted",
        "duplicate",
        "skipped",
        "unprocessable",
        "bad_request",
        "too_large",
    ] {
        assert!(
            metrics.contains(&format!(
                "dispatch_relay_webhooks_received_total{{outcome=\"{outcome}\",route=\"cms\"}} 1"
            )),
            "{outcome} not counted once in\n{metrics}"
        );
    }
    // Refusals that are only counted otherwise are in the log too, the
    // unknown route's with the name the sender used.
    assert!(
        metrics.contains("dispatch_relay_webhooks_unknown_route_total 4"),
        "{metrics}"
    );
    let line = app
        .wait_for_log(|l| l.contains("to a route routes.yaml does not have"))
        .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["requested"], "\"nope\"", "{line}");
    let line = app
        .wait_for_log(|l| l.contains("over the route's max_body"))
        .await;
    assert!(line.contains(r#""route":"cms""#), "{line}");
    let line = app
        .wait_for_log(|l| l.contains("over the route's rate_limit"))
        .await;
    assert!(line.contains(r#""route":"limited""#), "{line}");
    // The webhook stored as failed has no jobs, and is still one thing
    // for `redeliver --failed`.
    assert!(
        metrics.contains(r#"dispatch_relay_queue_depth{state="failed"} 1"#),
        "{metrics}"
    );
    // The refusal names the client as an address, for tools that read it.
    let line = app.wait_for_log(|l| l.contains("outside source_ips")).await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["client"], "127.0.0.1", "{line}");
    assert!(metrics.contains(
        "dispatch_relay_webhooks_received_total{outcome=\"forbidden\",route=\"office\"} 1"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_unknown_paths() {
    let app = spawn_app(&hmac_route("cms", DEPLOY)).await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Readiness committed a write of its own to the store's file: a full
    // disk or a read-only file would have failed it as it fails a webhook.
    let store = rusqlite::Connection::open_with_flags(
        app.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let checked_at: i64 = store
        .query_row("SELECT checked_at FROM readiness WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(checked_at > 1_700_000_000_000, "{checked_at}");
    let (status, body) = json_of(app.http.get(app.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    let (status, body) = json_of(
        app.http
            .get(app.url("/admin/deliveries"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status, 404,
        "the admin API is off without RELAY_ADMIN_TOKEN"
    );
    assert_error(&body, "admin_disabled");
}

#[tokio::test(flavor = "multi_thread")]
async fn form_bodies_with_a_json_payload_field() {
    let routes = r#"
  - id: form
    verify: none
    dispatch:
      - repo: acme/blog
        event_type: "push-{{ body.payload.ref | replace('refs/heads/', '') }}"
        client_payload:
          after: "{{ body.payload.after }}"
          note: "{{ body.note }}"
"#;
    let app = spawn_app(routes).await;
    let response = app
        .post_typed(
            "/hooks/form",
            "application/x-www-form-urlencoded",
            "payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%2C%22after%22%3A%22abc%22%7D&note=a+b",
        )
        .await;
    assert_eq!(response.status(), 202);
    let sent = app
        .github
        .wait_for_dispatches(1, std::time::Duration::from_secs(60))
        .await;
    assert_eq!(
        sent[0].body,
        Some(json!({"event_type": "push-main", "client_payload": {"after": "abc", "note": "a b"}}))
    );
}

/// A sender's credentials are checked, then kept from the templates: a
/// payload that forwards every header can carry neither the route's token
/// nor an `Authorization` or `Cookie` header to GitHub or into the store.
#[tokio::test(flavor = "multi_thread")]
async fn credential_headers_never_reach_a_payload() {
    let route = r#"
  - id: forward
    verify:
      token:
        header: X-Token
        value: route-secret-value
    dispatch:
      - repo: acme/blog
        event_type: forwarded
        client_payload: "{{ {'headers': headers} }}"
"#;
    let app = spawn_app_with(TEST_HEAD, route, &[]).await;
    let answer = app
        .http
        .post(app.url("/hooks/forward"))
        .header("x-token", "route-secret-value")
        .header("authorization", "Bearer sender-bearer-value")
        .header("cookie", "session=sender-cookie-value")
        .header("x-build", "42")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let dispatches = app
        .github
        .wait_for_dispatches(1, std::time::Duration::from_secs(30))
        .await;
    let payload = &dispatches[0].body.as_ref().unwrap()["client_payload"]["headers"];
    assert_eq!(payload["x-build"], "42", "{payload}");
    let text = payload.to_string();
    for secret in [
        "route-secret-value",
        "sender-bearer-value",
        "sender-cookie-value",
    ] {
        assert!(!text.contains(secret), "{secret} forwarded: {text}");
    }
    let store = std::fs::read(app.dir.path().join("dispatch-relay.db")).unwrap_or_default();
    let wal = std::fs::read(app.dir.path().join("dispatch-relay.db-wal")).unwrap_or_default();
    for secret in [
        "route-secret-value",
        "sender-bearer-value",
        "sender-cookie-value",
    ] {
        let found = [&store, &wal]
            .iter()
            .any(|bytes| bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(!found, "{secret} stored");
    }
    // Nor shown with the stored request.
    let id = app.deliveries(&[])[0]["id"].as_str().unwrap().to_owned();
    let shown = app.cli(&["deliveries", "--id", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("x-build: 42"), "{shown}");
    for secret in [
        "route-secret-value",
        "sender-bearer-value",
        "sender-cookie-value",
    ] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
}

/// A client that stops sending half way through its body is answered 408
/// once `server.body_timeout` has passed, and nothing of it is stored;
/// meanwhile other senders are answered as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_arriving_is_answered_408() {
    let head = format!("{TEST_HEAD}server:\n  body_timeout: 1s\n");
    let route = r#"
  - id: open
    verify: none
    dispatch:
      - repo: acme/blog
        event_type: test
"#;
    let app = spawn_app_with(&head, route, &[]).await;
    let addr = app.url("").trim_start_matches("http://").to_string();
    let started = std::time::Instant::now();
    let stalled = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .write_all(b"POST /hooks/open HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"a\"")
            .unwrap();
        let mut answer = Vec::new();
        // The relay closes the connection after its answer, since the rest
        // of the body never came.
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    });
    // Another sender is not held up by the stalled one.
    assert_eq!(app.post("open", "{}").await.status(), 202);
    let answer = stalled.await.unwrap();
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"timeout""#), "{answer}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(15),
        "answered after {waited:?}"
    );
    // Only the other sender's webhook was stored.
    assert_eq!(app.deliveries(&[]).len(), 1);
    assert!(app.metrics().await.contains(
        r#"dispatch_relay_webhooks_received_total{outcome="bad_request",route="open"} 1"#
    ));
}

/// A route whose credentials are in headers alone (`token`, `basic`)
/// refuses a request without them before reading its body: the sender
/// that announces a large body and never sends it is answered 401 at once,
/// not 408 after `server.body_timeout`, and its body never takes memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_header_credential_is_checked_before_the_body_is_read() {
    let head = format!("{TEST_HEAD}server:\n  body_timeout: 30s\n");
    let route = "  - id: minio\n    verify:\n      token:\n        header: Authorization\n        value: Bearer right\n    dispatch:\n      - repo: acme/blog\n        event_type: test\n";
    let app = spawn_app_with(&head, route, &[]).await;
    let addr = app.url("").trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .write_all(b"POST /hooks/minio HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
            .unwrap();
        let mut answer = [0u8; 4096];
        let read = stream.read(&mut answer).unwrap_or(0);
        String::from_utf8_lossy(&answer[..read]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains(r#""error":"unauthorized""#), "{answer}");
}

/// Senders' own checks are answered and never relayed: GitHub's `ping`
/// when a webhook is created, and Slack's `url_verification` of an Events
/// API URL, which Slack saves only once its challenge comes back. Both are
/// authenticated first, and `render` says the same of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_github_ping_and_a_slack_url_verification_are_answered_not_relayed() {
    let routes = "  - id: gh\n    verify:\n      github:\n        secret: ${WEBHOOK_SECRET}\n    dispatch:\n      - repo: acme/blog\n        event_type: push\n  - id: slack\n    verify:\n      slack:\n        secret: ${WEBHOOK_SECRET}\n    dispatch:\n      - repo: acme/blog\n        event_type: approved\n";
    let app = spawn_app_with(TEST_HEAD, routes, &[]).await;
    let ping = r#"{"zen":"Design for failure.","hook_id":12345678}"#;
    let post_ping = |signature: String| {
        app.http
            .post(app.url("/hooks/gh"))
            .header("content-type", "application/json")
            .header("x-github-event", "ping")
            .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
            .header("x-hub-signature-256", signature)
            .body(ping)
            .send()
    };
    let forged = post_ping(signature("not the secret", ping.as_bytes()))
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let answered = post_ping(signature(SECRET, ping.as_bytes())).await.unwrap();
    assert_eq!(json_of(answered).await, (200, json!({"skipped": true})));

    let challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P";
    let verification = format!(
        r#"{{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"{challenge}","type":"url_verification"}}"#
    );
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let slack_signature = format!(
        "v0={}",
        hex::encode(dispatch_relay::verify::sign(
            dispatch_relay::config::HmacAlgorithm::Sha256,
            SECRET,
            format!("v0:{timestamp}:{verification}").as_bytes(),
        ))
    );
    let answered = app
        .http
        .post(app.url("/hooks/slack"))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", &timestamp)
        .header("x-slack-signature", slack_signature)
        .body(verification.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(answered).await,
        (200, json!({"challenge": challenge}))
    );

    assert!(app.deliveries(&[]).is_empty());
    let metrics = app.metrics().await;
    for route in ["gh", "slack"] {
        let skipped = format!(
            r#"dispatch_relay_webhooks_received_total{{outcome="skipped",route="{route}"}} 1"#
        );
        assert!(metrics.contains(&skipped), "{metrics}");
    }

    let ping_file = app.dir.path().join("ping.json");
    let verification_file = app.dir.path().join("verification.json");
    std::fs::write(&ping_file, ping).unwrap();
    std::fs::write(&verification_file, &verification).unwrap();
    for (route, body, header, said) in [
        (
            "gh",
            &ping_file,
            "X-GitHub-Event: ping",
            "# GitHub's ping: serve answers 200",
        ),
        (
            "slack",
            &verification_file,
            "Content-Type: application/json",
            "# Slack's URL verification: serve answers 200 with its challenge",
        ),
    ] {
        let body = body.to_str().unwrap();
        let output = app.cli(&[
            "render", "--route", route, "--body", body, "--header", header,
        ]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.starts_with(said), "{stdout}");
    }
    assert!(app.github.dispatches().is_empty());
}

/// A compressed body is refused for what it is, `415` naming the coding,
/// rather than as unparseable JSON; a sender that has not proved itself
/// learns nothing of it. Both refusals of a signed sender are in the log,
/// since the operator, not only the sender, must see why nothing was sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_body_is_answered_415_and_an_unparseable_one_is_logged() {
    let app = spawn_app(&hmac_route("cms", DEPLOY)).await;
    let body = r#"{"id":1}"#;
    let compressed = |signature: &str| {
        app.http
            .post(app.url("/hooks/cms"))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .header("x-signature-256", signature.to_string())
            .body(body)
            .send()
    };

    let (status, answer) = json_of(compressed("sha256=00").await.unwrap()).await;
    assert_eq!(status, 401, "verification comes first: {answer}");

    let response = compressed(&signature(SECRET, body.as_bytes()))
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(response.headers()["accept-encoding"], "identity");
    let (_, answer) = json_of(response).await;
    assert_error(&answer, "unsupported_encoding");
    assert!(
        answer["message"].as_str().unwrap().contains("`gzip`"),
        "{answer}"
    );
    let line = app
        .wait_for_log(|l| l.contains("Refused a compressed webhook body"))
        .await;
    assert!(line.contains(r#""encoding":"gzip""#), "{line}");

    // `identity` is no compression at all.
    let identity = app
        .post_signed_with("cms", body, &[("content-encoding", "identity")])
        .await;
    assert_eq!(identity.status(), 202);

    let (status, _) = json_of(app.post_signed("cms", "{not json").await).await;
    assert_eq!(status, 400);
    let line = app
        .wait_for_log(|l| l.contains("whose body could not be parsed"))
        .await;
    assert!(line.contains(r#""route":"cms""#), "{line}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"dispatch_relay_webhooks_received_total{outcome="bad_request",route="cms"} 2"#
        ),
        "{metrics}"
    );
}

/// Opens a connection that announces a body of `length` bytes, sends one
/// byte of it and holds it, as a slow or stalled sender does.
fn hold_a_body(addr: &str, length: usize) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /hooks/open HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
    )
    .unwrap();
    stream
}

/// The bodies being received share `server.max_body_memory`. A sender
/// holds only what it has sent: one that announces a large body and
/// stalls after a byte takes almost nothing of it. Once held bodies fill
/// it, a webhook whose body does not fit is answered `503` with
/// `Retry-After: 1`, one that fits still goes through, and the memory comes
/// back when the held bodies end.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_in_memory_share_one_budget() {
    let head = format!(
        "{TEST_HEAD}server:\n  body_timeout: 30s\n  max_body: 60000\n  max_body_memory: 128KiB\n"
    );
    let route = "  - id: open\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: test\n";
    let app = spawn_app_with(&head, route, &[]).await;
    let addr = app.url("").trim_start_matches("http://").to_string();
    let held_bytes = |metrics: String| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("dispatch_relay_body_memory_bytes "))
            .and_then(|v| v.parse().ok())
    };
    let wait_until_held = |bytes: std::ops::RangeInclusive<u64>| {
        let app = &app;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !held_bytes(app.metrics().await).is_some_and(|held| bytes.contains(&held)) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{}",
                    app.metrics().await
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(held_bytes(app.metrics().await), Some(0));

    // Two senders announce 50,000 bytes each and stall after one: they
    // hold a byte each, and a large body still fits.
    let mut stalled = [hold_a_body(&addr, 50_000), hold_a_body(&addr, 50_000)];
    wait_until_held(2..=2).await;
    let large = format!(r#"{{"pad":"{}"}}"#, "x".repeat(49_000));
    assert_eq!(app.post("open", large.clone()).await.status(), 202);

    // They send all but the last byte: now they hold 99,998 of the 131,072
    // bytes, or up to the 100,000 they announced, as their buffers doubled
    // with the chunks the bytes came in (never past what was announced).
    for stream in &mut stalled {
        use std::io::Write;
        stream.write_all(&vec![b' '; 49_998]).unwrap();
    }
    wait_until_held(99_998..=100_000).await;

    let refused = app.post("open", large.clone()).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let (_, body) = json_of(refused).await;
    assert_error(&body, "unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("server.max_body_memory"),
        "{body}"
    );
    let line = app
        .wait_for_log(|l| l.contains("fill server.max_body_memory"))
        .await;
    assert!(line.contains(r#""route":"open""#), "{line}");
    // A small body still fits beside the held ones.
    assert_eq!(app.post("open", r#"{"small":true}"#).await.status(), 202);

    // The stalled senders give up: their memory comes back, and the large
    // body goes through.
    drop(stalled);
    wait_until_held(0..=0).await;
    assert_eq!(app.post("open", large).await.status(), 202);
    assert!(app.metrics().await.contains(
        r#"dispatch_relay_webhooks_received_total{outcome="unavailable",route="open"} 1"#
    ));
}

/// Headers and the query string are stored with the body, which
/// `max_body` alone bounds: together they may come to 32 KiB. A webhook
/// past that is answered `431` in JSON, counted as too large, and stored
/// nowhere; one just under it is relayed whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_over_32_kib_is_refused_431_and_not_stored() {
    let app = spawn_app(&hmac_route("cms", DEPLOY)).await;
    let body = r#"{"event":"entry.publish"}"#;
    let refused = app
        .post_signed_with("cms", body, &[("x-padding", &"p".repeat(33_000))])
        .await;
    assert_eq!(refused.status(), 431);
    let (_, answer) = json_of(refused).await;
    assert_error(&answer, "too_large");
    assert!(
        answer["message"].as_str().unwrap().contains("32768"),
        "{answer}"
    );
    let query = format!("/hooks/cms?pad={}", "q".repeat(33_000));
    let refused = app
        .http
        .post(app.url(&query))
        .header("x-signature-256", signature(SECRET, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 431);
    assert!(app.deliveries(&[]).is_empty());
    assert!(
        app.metrics().await.contains(
            r#"dispatch_relay_webhooks_received_total{outcome="too_large",route="cms"} 2"#
        )
    );
    let accepted = app
        .post_signed_with("cms", body, &[("x-padding", &"p".repeat(30_000))])
        .await;
    assert_eq!(accepted.status(), 202);
    assert_eq!(app.deliveries(&[]).len(), 1);
}

/// The inbound rate limit counts only requests that passed `verify`
/// (decision 4): a flood of unsigned requests cannot spend the quota of
/// the sender that signs.
#[tokio::test(flavor = "multi_thread")]
async fn unsigned_requests_do_not_spend_a_routes_rate_limit() {
    let route = format!(
        "{}    rate_limit: {{ per_second: 1, burst: 2 }}\n",
        hmac_route("cms", DEPLOY)
    );
    let app = spawn_app(&route).await;
    let unsigned = (0..20).map(|_| {
        let app = &app;
        async move { app.post("cms", "{}").await.status() }
    });
    let statuses = futures_util::future::join_all(unsigned).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    for n in 0..2 {
        let status = app
            .post_signed("cms", &format!(r#"{{"n":{n}}}"#))
            .await
            .status();
        assert_eq!(status, 202, "signed request {n} was refused");
    }
    // The signed requests do spend it: one more, at once, is over the burst.
    let mut statuses = Vec::new();
    for n in 2..10 {
        let status = app
            .post_signed("cms", &format!(r#"{{"n":{n}}}"#))
            .await
            .status();
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&reqwest::StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_commits_that_hold_webhooks_are_measured() {
    let app = spawn_app(&hmac_route("cms", DEPLOY)).await;
    let before = app.metrics().await;
    let commits_before = sample(
        &before,
        "dispatch_relay_store_commit_duration_seconds_count",
    );
    let commands_before = sample(&before, "dispatch_relay_store_commit_commands_sum");

    let body = r#"{"event":"entry.publish"}"#;
    let posts: Vec<_> = (0..16).map(|_| app.post_signed("cms", body)).collect();
    for response in futures_util::future::join_all(posts).await {
        assert_eq!(response.status(), 202);
    }

    let after = app.metrics().await;
    let commits =
        sample(&after, "dispatch_relay_store_commit_duration_seconds_count") - commits_before;
    let commands = sample(&after, "dispatch_relay_store_commit_commands_sum") - commands_before;
    // Each 202 was answered after its commit, so all sixteen are counted,
    // beside what the dispatcher wrote meanwhile; and no commit is empty.
    assert!(commands >= 16.0, "{commands} commands in\n{after}");
    assert!(
        commits >= 1.0 && commits <= commands,
        "{commits} commits of {commands} commands"
    );
    assert_eq!(
        sample(&after, "dispatch_relay_store_commit_commands_count"),
        sample(&after, "dispatch_relay_store_commit_duration_seconds_count"),
        "both histograms see every commit"
    );
    assert!(sample(&after, "dispatch_relay_store_commit_duration_seconds_sum") > 0.0);
}

/// A trigger with nothing to say (Jenkins' `httpRequest` without a body,
/// `curl -X POST`) is a webhook like any other: its body is `none`, even
/// labelled JSON, and the route's templates decide what that means
/// (decision 61). A body that is there but not JSON is still refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_body_is_no_body_and_is_relayed() {
    let routes = r#"
  - id: trigger
    verify: none
    when: body is none
    dispatch:
      - repo: acme/blog
        event_type: "rebuild"
        client_payload:
          reason: "{{ query.reason | default('manual') }}"
"#;
    let app = spawn_app(routes).await;
    let empty = app
        .post_typed("/hooks/trigger?reason=nightly", "application/json", "")
        .await;
    let (status, answer) = json_of(empty).await;
    assert_eq!(status, 202, "{answer}");
    let dispatches = app
        .github
        .wait_for_dispatches(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(
        dispatches[0].body.as_ref().unwrap()["client_payload"],
        json!({"reason": "nightly"})
    );

    let broken = app
        .post_typed("/hooks/trigger", "application/json", "{")
        .await;
    let (status, answer) = json_of(broken).await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");
}

/// A body sent with no Content-Type at all (a pipeline step posting text
/// with nothing set) is taken as it comes: JSON when it parses, text
/// otherwise, as one of any other type. Only a body labelled JSON that is
/// not is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_without_a_content_type_that_is_not_json_is_text() {
    let routes = r#"
  - id: note
    verify: none
    dispatch:
      - repo: acme/blog
        event_type: "note"
        client_payload:
          text: "{{ body }}"
"#;
    let app = spawn_app(routes).await;
    let (status, answer) = json_of(app.post("note", "build 42 finished").await).await;
    assert_eq!(status, 202, "{answer}");
    let dispatches = app
        .github
        .wait_for_dispatches(1, Duration::from_secs(10))
        .await;
    assert_eq!(
        dispatches[0].body.as_ref().unwrap()["client_payload"],
        json!({"text": "build 42 finished"})
    );
}
