//! The sender recipes in docs/: every `routes:` block loads, and every
//! signed sample in tests/fixtures/samples/ is accepted over HTTP by the
//! route of its recipe, byte for byte with the clock fixed, and refused once
//! tampered with or replayed outside the window.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::helpers::{TEST_HEAD, spawn_app_with};

/// The fixed clock of the samples (manifest.json `fixed_now_unix`).
pub const SAMPLES_NOW_MS: i64 = 1_795_168_800_000;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn samples_dir() -> PathBuf {
    repo_root().join("tests/fixtures/samples")
}

/// The variables the recipes use, set to the samples' secrets.
pub fn recipe_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SNS_BASIC_PASSWORD", "acme-fake-sns-basic-pass"),
        ("EVENTBRIDGE_API_KEY", "acme-fake-eventbridge-api-key"),
        ("MINIO_AUTH_TOKEN", "acme-fake-minio-auth-token"),
        ("JENKINS_NOTIFY_PASSWORD", "acme-fake-jenkins-pass"),
        ("JENKINS_PIPELINE_TOKEN", "acme-fake-jenkins-pipeline-token"),
        ("STRAPI_WEBHOOK_TOKEN", "acme-fake-strapi-token"),
        (
            "CONTENTFUL_SIGNING_SECRET",
            "acmeFAKEcontentfulSigningSecret000000000000000000000000000000000",
        ),
        ("SANITY_WEBHOOK_SECRET", "acme-fake-sanity-webhook-secret"),
        ("GHOST_WEBHOOK_SECRET", "acme-fake-ghost-webhook-secret"),
        ("DIRECTUS_TOKEN", "acme-fake-directus-token"),
        (
            "BACKOFFICE_SECRET",
            "whsec_YWNtZS1mYWtlLXN0YW5kYXJkLXdlYmhvb2tzLWtleSE=",
        ),
        ("STRIPE_STYLE_SECRET", "whsec_acmeFakeStripeStyleSecret0001"),
        ("SLACK_SIGNING_SECRET", "acmefake0slack0signing0secret000"),
        ("GITHUB_WEBHOOK_SECRET", "acme-fake-github-webhook-secret"),
    ]
}

/// One ```yaml block of the docs that holds `routes:`.
#[derive(Debug, Clone)]
pub struct RoutesBlock {
    pub file: PathBuf,
    pub samples: Vec<String>,
    pub text: String,
}

/// Every routes block of the sender recipes (docs/sources/; the other docs'
/// examples are loaded by the tidy test), with the samples its preceding
/// `<!-- samples: a, b -->` comment names.
pub fn routes_blocks() -> Vec<RoutesBlock> {
    let files =
        crate::helpers::files_with_extension(&repo_root().join("docs").join("sources"), "md");
    let mut blocks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].trim() == "```yaml" {
                let start = i + 1;
                let mut end = start;
                while end < lines.len() && lines[end].trim() != "```" {
                    end += 1;
                }
                let body = lines[start..end].join("\n");
                // Whole-file examples (with their own `github:`) are loaded
                // by the tidy test; the recipes here are route lists.
                let whole_file = body.lines().any(|l| l.starts_with("github:"));
                if body.lines().any(|l| l.starts_with("routes:")) && !whole_file {
                    let samples = lines[..i]
                        .iter()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .and_then(|l| l.trim().strip_prefix("<!-- samples:"))
                        .and_then(|l| l.strip_suffix("-->"))
                        .map(|l| l.split(',').map(|s| s.trim().to_string()).collect())
                        .unwrap_or_default();
                    blocks.push(RoutesBlock {
                        file: file.clone(),
                        samples,
                        text: body,
                    });
                }
                i = end;
            }
            i += 1;
        }
    }
    blocks
}

/// The block's route list, with the SNS recipe pinned to the samples'
/// certificate (the recipe fetches `SigningCertURL`, which tests cannot).
pub fn route_list(block: &RoutesBlock) -> String {
    let cert = samples_dir().join("sns-test-signing-cert.pem");
    block
        .text
        .lines()
        .filter(|l| !l.starts_with("routes:"))
        .map(|l| {
            l.replace(
                "# certificates: [/etc/dispatch-relay/sns.pem]",
                &format!("certificates: [{}]", cert.display()),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn load_block(
    block: &RoutesBlock,
    env: &BTreeMap<String, String>,
) -> dispatch_relay::config::Config {
    let text = format!("{TEST_HEAD}\nroutes:\n{}\n", route_list(block));
    let lookup = |name: &str| match name {
        "GITHUB_TOKEN" => Some("t".to_string()),
        _ => env.get(name).cloned(),
    };
    match dispatch_relay::config::load("recipe.yaml", &text, &lookup) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!(
            "{}: the routes block does not load:\n{e}\n{text}",
            block.file.display()
        ),
    }
}

/// A sample: its manifest entry, headers and body bytes.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Sample {
    pub fn header_map(&self) -> BTreeMap<String, String> {
        self.headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    }
}

pub fn sample(name: &str) -> Sample {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(samples_dir().join("manifest.json")).unwrap())
            .unwrap();
    let entry = manifest["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sample `{name}`"));
    let headers_text =
        std::fs::read_to_string(samples_dir().join(entry["headers_file"].as_str().unwrap()))
            .unwrap();
    let headers = headers_text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Sample {
        path: entry["path"].as_str().unwrap().to_string(),
        headers,
        body: std::fs::read(samples_dir().join(entry["body_file"].as_str().unwrap())).unwrap(),
    }
}

/// Toggles the case of an ASCII letter near the middle of the body.
pub fn flip_body_byte(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    let start = out.len() / 2;
    let at = (start..out.len())
        .chain(0..start)
        .find(|&i| out[i].is_ascii_alphabetic())
        .expect("a letter in the body");
    out[at] ^= 0x20;
    out
}

/// The header that carries the credential or signature of a sample.
pub fn credential_header(sample: &Sample) -> Option<String> {
    const NAMES: [&str; 11] = [
        "authorization",
        "x-acme-gateway-key",
        "x-acme-webhook-token",
        "x-acme-token",
        "x-contentful-signature",
        "sanity-webhook-signature",
        "x-ghost-signature",
        "webhook-signature",
        "stripe-signature",
        "x-slack-signature",
        "x-hub-signature-256",
    ];
    sample
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .find(|k| NAMES.contains(&k.as_str()))
}

/// Changes one character of a header value, keeping its shape.
pub fn tamper_value(value: &str) -> String {
    let mut bytes = value.as_bytes().to_vec();
    let last = bytes.len() - 1;
    // Stripe's header ends with an ignored `v0=` entry: change the first
    // `v1` signature's first character instead of the last one.
    let at = match value.find("v1=") {
        Some(start) if value.starts_with("t=") => start + 3,
        _ => (0..=last)
            .rev()
            .find(|&i| bytes[i].is_ascii_alphanumeric())
            .unwrap(),
    };
    bytes[at] = match bytes[at] {
        b'0' => b'1',
        b'a' => b'b',
        b'A' => b'B',
        c if c.is_ascii_digit() => b'0',
        c if c.is_ascii_lowercase() => b'a',
        _ => b'A',
    };
    String::from_utf8(bytes).unwrap()
}

/// The header that carries a sample's delivery id, which the default dedupe
/// key reads (configuration.md, `dedupe_key`).
pub fn delivery_header(sample: &Sample) -> Option<String> {
    sample
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .find(|k| dispatch_relay::routing::SENDER_DELIVERY_HEADERS.contains(&k.as_str()))
}

/// A sample's headers with one character of `header`'s value changed.
pub fn with_header_tampered(sample: &Sample, header: &str) -> Vec<(String, String)> {
    sample
        .headers
        .iter()
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case(header) {
                (k.clone(), tamper_value(v))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// Samples whose sender signs nothing that tells two deliveries apart, so
/// that a captured request sent again with a new delivery id passes as new:
/// GitHub signs the body alone, without a timestamp, and the same push may
/// legitimately happen twice; SNS's raw delivery is not signed at all (its
/// route checks a Basic password). configuration.md (`dedupe_key`) says so.
const REPLAYABLE: [&str; 3] = ["github-push", "github-push-form", "s3-via-sns-raw"];

/// Samples signed with a timestamp, refused outside their window.
pub const TIMESTAMPED: [&str; 6] = [
    "contentful-entry-publish",
    "sanity-document-update",
    "ghost-post-published",
    "standard-webhooks-payload-cms",
    "stripe-style-event",
    "slack-block-actions",
];

/// Samples whose signature covers the body: the timestamped schemes and the
/// signed SNS notifications.
pub fn body_signed() -> impl Iterator<Item = &'static str> {
    TIMESTAMPED
        .into_iter()
        .chain(["s3-via-sns-notification", "sns-unsubscribe-confirmation"])
}

async fn post(
    app: &crate::helpers::TestApp,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = app.http.post(app.url(path)).body(body);
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        // The client sets its own framing headers.
        if ["content-length", "connection", "host", "accept-encoding"].contains(&lower.as_str()) {
            continue;
        }
        request = request.header(k, v);
    }
    crate::helpers::json_of(request.send().await.expect("relay answers")).await
}

fn all_routes() -> (String, Vec<RoutesBlock>) {
    let blocks = routes_blocks();
    let routes = blocks.iter().map(route_list).collect::<Vec<_>>().join("\n");
    (routes, blocks)
}

fn env_with_clock(now_ms: i64) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = recipe_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("RELAY_TEST_CLOCK_MS".into(), now_ms.to_string()));
    env
}

#[test]
fn every_routes_block_in_docs_loads() {
    let blocks = routes_blocks();
    let env: BTreeMap<String, String> = recipe_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for block in &blocks {
        let config = load_block(block, &env);
        assert!(!config.routes.is_empty(), "{}", block.file.display());
    }
    let documented: Vec<&str> = blocks
        .iter()
        .flat_map(|b| b.samples.iter().map(String::as_str))
        .collect();
    // Every sender sample except the SNS confirmation (which needs a
    // reachable SubscribeURL; see senders.rs) is run against a recipe.
    for name in [
        "s3-via-sns-notification",
        "s3-testevent-via-sns",
        "sns-unsubscribe-confirmation",
        "s3-via-sns-raw",
        "eventbridge-s3-object-created",
        "minio-put",
        "jenkins-notification-finalized",
        "jenkins-httprequest-generic",
        "strapi-entry-publish",
        "strapi-media-create",
        "contentful-entry-publish",
        "sanity-document-update",
        "directus-items-create",
        "ghost-post-published",
        "standard-webhooks-payload-cms",
        "stripe-style-event",
        "slack-block-actions",
        "github-push",
        "github-push-form",
    ] {
        assert!(documented.contains(&name), "no recipe runs sample `{name}`");
    }
}

#[test]
fn a_broken_routes_block_would_be_caught() {
    // The loader used above really rejects a bad block, so the test
    // above cannot pass vacuously.
    let block = RoutesBlock {
        file: PathBuf::from("inline"),
        samples: vec![],
        text: "routes:\n  - id: x\n    verify:\n      sanity: {secret: s, tolerence: 5m}\n    dispatch: [{repo: acme/blog, event_type: e}]".into(),
    };
    let text = format!("{TEST_HEAD}\nroutes:\n{}\n", route_list(&block));
    let err = dispatch_relay::config::load("x.yaml", &text, &|name| {
        (name == "GITHUB_TOKEN").then(|| "t".to_string())
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("did you mean `tolerance`"),
        "{err}"
    );
}

/// Sends a sample again with its delivery header changed, as someone who
/// captured it could: refused (the header is signed) or a duplicate (the
/// recipe keys on what the sender signs), unless the sender signs nothing
/// that tells deliveries apart ([`REPLAYABLE`]).
async fn replay_with_a_new_delivery_id(
    app: &crate::helpers::TestApp,
    name: &str,
    sample: &Sample,
    expected_dispatches: &mut usize,
) {
    let Some(header) = delivery_header(sample) else {
        return;
    };
    let headers = with_header_tampered(sample, &header);
    let (status, json) = post(app, &sample.path, &headers, sample.body.clone()).await;
    if REPLAYABLE.contains(&name) {
        assert_eq!(status, 202, "{name}: {json}");
        *expected_dispatches += 1;
    } else {
        assert!(
            status == 401 || (status == 200 && json["duplicate"] == true),
            "{name}: a replay with a new `{header}` must not pass as new: {status} {json}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recipes_accept_their_samples_and_refuse_tampering() {
    let (routes, blocks) = all_routes();
    let env = env_with_clock(SAMPLES_NOW_MS);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut app = spawn_app_with(TEST_HEAD, &routes, &env_ref).await;
    let mut expected_dispatches = 0;
    for block in &blocks {
        for name in &block.samples {
            let sample = sample(name);
            // Tampered requests first, so that dedupe cannot hide a refusal.
            if body_signed().any(|signed| signed == name) {
                let (status, _) = post(
                    &app,
                    &sample.path,
                    &sample.headers,
                    flip_body_byte(&sample.body),
                )
                .await;
                assert_eq!(status, 401, "{name}: a changed body byte must be refused");
            }
            if let Some(header) = credential_header(&sample) {
                let headers = with_header_tampered(&sample, &header);
                let (status, _) = post(&app, &sample.path, &headers, sample.body.clone()).await;
                assert_eq!(status, 401, "{name}: a changed `{header}` must be refused");
            }
            let (status, json) =
                post(&app, &sample.path, &sample.headers, sample.body.clone()).await;
            match name.as_str() {
                "slack-block-actions" => {
                    // Slack takes only an empty `200 OK` as the
                    // acknowledgement, for the first click and a repeat.
                    assert_eq!((status, &json), (200, &Value::Null), "{name}");
                    expected_dispatches += 1;
                    let (again, json2) =
                        post(&app, &sample.path, &sample.headers, sample.body.clone()).await;
                    assert_eq!((again, &json2), (200, &Value::Null), "{name}");
                    let metrics = app.metrics().await;
                    assert!(
                        metrics.contains(r#"dispatch_relay_webhooks_received_total{outcome="duplicate",route="slack/interactivity"} 1"#),
                        "{name}: the repeat is a duplicate\n{metrics}"
                    );
                }
                "s3-testevent-via-sns" | "sns-unsubscribe-confirmation" => {
                    assert_eq!(
                        (status, &json["skipped"]),
                        (200, &Value::Bool(true)),
                        "{name}: {json}"
                    );
                }
                _ => {
                    assert_eq!(status, 202, "{name}: {json}");
                    expected_dispatches += 1;
                    let (again, json2) =
                        post(&app, &sample.path, &sample.headers, sample.body.clone()).await;
                    if ![
                        "strapi-entry-publish",
                        "strapi-media-create",
                        "directus-items-create",
                    ]
                    .contains(&name.as_str())
                    {
                        assert_eq!(again, 200, "{name}: a repeat is a duplicate: {json2}");
                        assert_eq!(json2["duplicate"], true);
                        assert_eq!(json2["delivery_id"], json["delivery_id"]);
                        replay_with_a_new_delivery_id(
                            &app,
                            name,
                            &sample,
                            &mut expected_dispatches,
                        )
                        .await;
                    } else {
                        // These senders send no delivery id: a repeat is new.
                        assert_eq!(again, 202, "{name}: {json2}");
                        expected_dispatches += 1;
                    }
                }
            }
        }
    }
    let dispatches = app
        .github
        .wait_for_dispatches(expected_dispatches, std::time::Duration::from_secs(60))
        .await;
    let s3_keys: Vec<String> = dispatches
        .iter()
        .filter_map(|d| d.body.as_ref())
        .filter(|b| b["event_type"] == "s3-upload")
        .filter_map(|b| b["client_payload"]["key"].as_str().map(str::to_string))
        .collect();
    // S3 (through SNS, raw or enveloped) and MinIO encode keys; the
    // recipes decode them with `urldecode`. EventBridge sends them plain.
    // Five: the four senders, and the raw SNS delivery sent again with a
    // new message id, which nothing signed tells apart.
    assert_eq!(
        s3_keys
            .iter()
            .filter(|k| *k == "uploads/2026/11/hero image(1).jpg")
            .count(),
        5,
        "{s3_keys:?}"
    );
    assert!(
        !app.stop_and_read_logs().join("\n").contains("acme-fake"),
        "a secret reached the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recipes_refuse_samples_outside_their_window() {
    let (routes, _) = all_routes();
    for now_ms in [
        SAMPLES_NOW_MS + 6 * 60 * 1000,
        SAMPLES_NOW_MS - 6 * 60 * 1000,
    ] {
        let env = env_with_clock(now_ms);
        let env_ref: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = spawn_app_with(TEST_HEAD, &routes, &env_ref).await;
        for name in TIMESTAMPED {
            let sample = sample(name);
            let (status, json) = post(&app, &sample.path, &sample.headers, sample.body).await;
            assert_eq!(status, 401, "{name} at {now_ms}: {json}");
            assert_eq!(json["error"], "unauthorized");
            // The answer never says which check failed; the log does.
            assert!(!json.to_string().contains("timestamp"), "{json}");
        }
        app.wait_for_log(|l| l.contains("beyond the route's tolerance"))
            .await;
    }
}
