//! Sender schemes through the library and over HTTP: the samples verify at
//! the fixed clock and fail with another secret or clock; SNS confirmations,
//! certificate URL rules and topics; source_ips behind trusted proxies; and
//! property tests that arbitrary input never panics, never passes without
//! the secret and never leaks it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dispatch_relay::config::Verify;
use dispatch_relay::verify::sns::{self, Envelope, SigningKey};
use dispatch_relay::verify::{self, Request, VerifyError};
use proptest::prelude::*;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TEST_HEAD, spawn_app_with};
use crate::recipes::{
    SAMPLES_NOW_MS, load_block, recipe_env, repo_root, routes_blocks, sample, samples_dir,
};

/// Every signed sample: those whose signature covers the body, and the SNS
/// messages whose signed string leaves the body out.
fn signed() -> impl Iterator<Item = &'static str> {
    crate::recipes::body_signed().chain(["s3-testevent-via-sns", "sns-subscription-confirmation"])
}

fn env_map(wrong: bool) -> BTreeMap<String, String> {
    recipe_env()
        .into_iter()
        .map(|(k, v)| {
            let value = if !wrong {
                v.to_string()
            } else if v.starts_with("whsec_YW") {
                // Still a valid Standard Webhooks secret, just another key.
                "whsec_b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXkh".to_string()
            } else {
                format!("{v}-wrong")
            };
            (k.to_string(), value)
        })
        .collect()
}

/// The verify method of the recipe route that serves `path`.
fn recipe_verify(path: &str, wrong_secret: bool) -> Verify {
    let id = path.strip_prefix("/hooks/").unwrap();
    for block in routes_blocks() {
        let config = load_block(&block, &env_map(wrong_secret));
        if let Some(position) = config.routes.iter().position(|r| r.id == id) {
            let mut config = config;
            return config.routes.swap_remove(position).verify;
        }
    }
    panic!("no recipe route `{id}`")
}

fn sample_cert() -> SigningKey {
    SigningKey::from_pem(&std::fs::read(samples_dir().join("sns-test-signing-cert.pem")).unwrap())
        .unwrap()
}

/// Verifies a sample with the recipe route as the relay would, SNS
/// signature included.
fn check(name: &str, now_ms: i64, wrong_secret: bool) -> Result<(), VerifyError> {
    let sample = sample(name);
    let method = recipe_verify(&sample.path, wrong_secret);
    let headers = sample.header_map();
    verify::verify_request(
        &method,
        &Request {
            method: "POST",
            path: &sample.path,
            headers: &headers,
            body: &sample.body,
            now_ms,
        },
    )?;
    if let Verify::Sns(_) = method {
        let envelope = Envelope::parse(&sample.body).map_err(VerifyError::Sns)?;
        let key = if wrong_secret {
            test_key_cert()
        } else {
            sample_cert()
        };
        sns::verify_signature(&envelope, &[key]).map_err(VerifyError::Sns)?;
    }
    Ok(())
}

#[test]
fn samples_verify_at_the_fixed_clock_and_not_with_another_secret_or_clock() {
    for name in signed() {
        assert_eq!(check(name, SAMPLES_NOW_MS, false), Ok(()), "{name}");
        assert!(
            check(name, SAMPLES_NOW_MS, true).is_err(),
            "{name} with another secret"
        );
    }
    for name in crate::recipes::TIMESTAMPED {
        for skew in [6 * 60 * 1000, -6 * 60 * 1000] {
            assert!(
                matches!(
                    check(name, SAMPLES_NOW_MS + skew, false),
                    Err(VerifyError::Stale { .. })
                ),
                "{name} at {skew} ms"
            );
        }
        // Inside the window (Contentful's is 30 s) it still verifies.
        assert_eq!(
            check(name, SAMPLES_NOW_MS + 20_000, false),
            Ok(()),
            "{name}"
        );
    }
}

#[test]
fn sns_string_to_sign_matches_the_documented_one() {
    for name in [
        "s3-via-sns-notification",
        "s3-testevent-via-sns",
        "sns-subscription-confirmation",
        "sns-unsubscribe-confirmation",
    ] {
        let sample = sample(name);
        let expected =
            std::fs::read_to_string(samples_dir().join(format!("{name}.string-to-sign.txt")))
                .unwrap();
        let envelope = Envelope::parse(&sample.body).unwrap();
        assert_eq!(envelope.string_to_sign(), expected, "{name}");
    }
}

#[test]
fn standard_webhooks_reference_vector() {
    // The test vector of the reference library (sources.md §7).
    let method = verify_of("standard_webhooks: {secret: whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD}");
    let headers: BTreeMap<String, String> = [
        ("webhook-id", "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"),
        ("webhook-timestamp", "1649367553"),
        (
            "webhook-signature",
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let body = br#"{"email":"test@example.com","username":"test_user"}"#;
    let request = |now_ms| Request {
        method: "POST",
        path: "/hooks/x",
        headers: &headers,
        body,
        now_ms,
    };
    assert_eq!(
        verify::verify_request(&method, &request(1_649_367_553_000)),
        Ok(())
    );
    assert!(verify::verify_request(&method, &request(1_649_367_553_000 + 301_000)).is_err());

    // A sender that repeats the header: the lines arrive joined with ", ",
    // and the matching entry is not the last.
    let mut joined = headers.clone();
    joined.insert(
        "webhook-signature".into(),
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=, v1,c29tZXRoaW5nIGVsc2U=".into(),
    );
    let request = Request {
        method: "POST",
        path: "/hooks/x",
        headers: &joined,
        body,
        now_ms: 1_649_367_553_000,
    };
    assert_eq!(verify::verify_request(&method, &request), Ok(()));
}

/// A `whpk_` public key and `v1a` signatures made with its private key
/// (a fixed seed, so that failures reproduce).
struct Ed25519Sender(ring::signature::Ed25519KeyPair);

impl Ed25519Sender {
    fn new(seed: u8) -> Self {
        Ed25519Sender(ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap())
    }

    fn public_key(&self) -> String {
        use ring::signature::KeyPair;
        format!("whpk_{}", STANDARD.encode(self.0.public_key().as_ref()))
    }

    fn sign(&self, id: &str, ts: &str, body: &[u8]) -> String {
        let signed = [id.as_bytes(), b".", ts.as_bytes(), b".", body].concat();
        format!("v1a,{}", STANDARD.encode(self.0.sign(&signed).as_ref()))
    }
}

#[test]
fn standard_webhooks_v1a_signatures_are_checked_against_the_public_keys() {
    let sender = Ed25519Sender::new(7);
    let other = Ed25519Sender::new(8);
    let hmac_secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let (id, ts, now_ms) = ("msg_1", "1700000000", 1_700_000_000_000);
    let body: &[u8] = br#"{"type":"entry.published"}"#;
    let good = sender.sign(id, ts, body);
    let trusted = verify_of(&format!(
        "standard_webhooks: {{secrets: [{hmac_secret}, {}]}}",
        sender.public_key()
    ));
    let untrusted = verify_of(&format!(
        "standard_webhooks: {{secrets: [{hmac_secret}, {}]}}",
        other.public_key()
    ));
    let hmac_only = verify_of(&format!("standard_webhooks: {{secret: {hmac_secret}}}"));
    let whsec_key = STANDARD
        .decode(hmac_secret.trim_start_matches("whsec_"))
        .unwrap();
    let public_key_bytes = STANDARD
        .decode(sender.public_key().trim_start_matches("whpk_"))
        .unwrap();
    // A v1 signature of the request under `key`.
    let hmac_b64 = |key: &[u8]| {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        STANDARD.encode(mac.finalize().into_bytes())
    };
    type Case<'a> = (&'a str, &'a Verify, String, &'a [u8], i64, bool);
    let cases: Vec<Case> = vec![
        (
            "signed by a trusted key",
            &trusted,
            good.clone(),
            body,
            now_ms,
            true,
        ),
        (
            "beside an unknown version and a wrong v1",
            &trusted,
            format!("v2,abc v1,AAAA {good}"),
            body,
            now_ms,
            true,
        ),
        (
            "one of two signatures during a rotation",
            &trusted,
            format!("{} {good}", other.sign(id, ts, body)),
            body,
            now_ms,
            true,
        ),
        (
            "a changed body",
            &trusted,
            good.clone(),
            br#"{"type":"x"}"#,
            now_ms,
            false,
        ),
        (
            "a key not on the list",
            &untrusted,
            good.clone(),
            body,
            now_ms,
            false,
        ),
        (
            "a route with no public key",
            &hmac_only,
            good.clone(),
            body,
            now_ms,
            false,
        ),
        (
            "a stale timestamp",
            &trusted,
            good.clone(),
            body,
            now_ms + 301_000,
            false,
        ),
        (
            "v1a that is not base64",
            &trusted,
            "v1a,!!".to_string(),
            body,
            now_ms,
            false,
        ),
        (
            "a v1 HMAC keyed with the public key",
            &trusted,
            format!("v1,{}", hmac_b64(&public_key_bytes)),
            body,
            now_ms,
            false,
        ),
        (
            "a v1a entry holding the whsec HMAC",
            &trusted,
            format!("v1a,{}", hmac_b64(&whsec_key)),
            body,
            now_ms,
            false,
        ),
        (
            "the whsec HMAC as v1 on the same route",
            &trusted,
            format!("v1,{}", hmac_b64(&whsec_key)),
            body,
            now_ms,
            true,
        ),
        (
            "only unknown versions",
            &trusted,
            "v2,abc".to_string(),
            body,
            now_ms,
            false,
        ),
        (
            "the good one among four",
            &trusted,
            format!("{0} {0} {0} {good}", other.sign(id, ts, body)),
            body,
            now_ms,
            true,
        ),
        // Each entry costs a hash of the whole body: a header packed with
        // them is refused before any is checked.
        (
            "the good one among five",
            &trusted,
            format!("{0} {0} {0} {0} {good}", other.sign(id, ts, body)),
            body,
            now_ms,
            false,
        ),
    ];
    for (name, method, signature, body, now_ms, accepted) in cases {
        let headers: BTreeMap<String, String> = [
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", signature.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let result = verify::verify_request(
            method,
            &Request {
                method: "POST",
                path: "/hooks/r",
                headers: &headers,
                body,
                now_ms,
            },
        );
        assert_eq!(result.is_ok(), accepted, "{name}: {result:?}");
    }
}

#[test]
fn standard_webhooks_private_or_short_keys_are_refused_when_loading() {
    let sender = Ed25519Sender::new(7);
    let cases = [
        ("whsk_AAAA", "private signing key"),
        ("whpk_AAAA", "32 bytes"),
        ("whpk_not-base64!", "32 bytes"),
    ];
    for (key, expected) in cases {
        let text = format!(
            "{TEST_HEAD}\nroutes:\n  - id: r\n    verify:\n      standard_webhooks: {{secret: {key}}}\n    dispatch: [{{repo: acme/blog, event_type: e}}]\n"
        );
        let errors = dispatch_relay::config::load("t.yaml", &text, &|name| {
            (name == "GITHUB_TOKEN").then(|| "t".to_string())
        })
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(errors.contains(expected), "{key}: {errors}");
        assert!(
            errors.contains("standard_webhooks.secret"),
            "{key}: {errors}"
        );
    }
    assert!(matches!(
        verify_of(&format!(
            "standard_webhooks: {{secret: {}}}",
            sender.public_key()
        )),
        Verify::StandardWebhooks(_)
    ));
}

#[test]
fn cert_urls_off_amazon_or_over_http_are_refused() {
    for bad in [
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://evil.example/SimpleNotificationService-abc.pem",
        "https://s3.amazonaws.com/attacker-bucket/cert.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
        "https://sns.eu.amazonaws.com/x.pem",
        "https://sns.eu-west-1.amazonaws.com/cert.txt",
        // AWS's validators look at the whole URL, not its path.
        "https://sns.eu-west-1.amazonaws.com/x.pem?y=1",
        "https://sns.eu-west-1.amazonaws.com/x.pem#frag",
        "https://sns.eu-west-1.amazonaws.com/x.pem?",
        "https://user:pw@sns.eu-west-1.amazonaws.com/cert.pem",
        "not a url",
    ] {
        assert!(sns::check_cert_url(bad).is_err(), "{bad}");
    }
    for good in [
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-0123.pem",
    ] {
        assert_eq!(sns::check_cert_url(good), Ok(()), "{good}");
    }
}

fn verify_of(yaml: &str) -> Verify {
    single_route(&format!("verify:\n      {yaml}")).verify
}

/// Loads a configuration of one route `r` made of `settings` (YAML at the
/// route's indentation) and one static target.
fn single_route(settings: &str) -> dispatch_relay::config::Route {
    let text = format!(
        "{TEST_HEAD}\nroutes:\n  - id: r\n    {settings}\n    dispatch: [{{repo: acme/blog, event_type: e}}]\n"
    );
    let mut config = dispatch_relay::config::load("t.yaml", &text, &|name| {
        (name == "GITHUB_TOKEN").then(|| "t".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .config;
    config.routes.remove(0)
}

// ---------------------------------------------------------------------------
// SNS over HTTP, with a test key whose certificate the route pins.

fn test_key() -> RsaPrivateKey {
    let pem = std::fs::read_to_string(repo_root().join("tests/fixtures/sns/test-signing-key.pem"))
        .unwrap();
    RsaPrivateKey::from_pkcs8_pem(&pem).unwrap()
}

fn test_cert_path() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/sns/test-signing-cert.pem")
}

fn test_key_cert() -> SigningKey {
    SigningKey::from_pem(&std::fs::read(test_cert_path()).unwrap()).unwrap()
}

const TOPIC: &str = "arn:aws:sns:eu-west-1:111122223333:acme-uploads";

/// Signs an envelope as SNS would, with signature version 1 or 2.
fn signed_envelope(fields: serde_json::Map<String, Value>, version: u8) -> Vec<u8> {
    signed_envelope_with(&test_key(), fields, version)
}

/// Signs an envelope with `key`, naming the test certificate's URL.
fn signed_envelope_with(
    key: &RsaPrivateKey,
    mut fields: serde_json::Map<String, Value>,
    version: u8,
) -> Vec<u8> {
    fields.insert("SignatureVersion".into(), json!(version.to_string()));
    fields.insert(
        "SigningCertURL".into(),
        json!("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"),
    );
    fields.insert("Signature".into(), json!(""));
    let text = Envelope::parse(&serde_json::to_vec(&Value::Object(fields.clone())).unwrap())
        .unwrap()
        .string_to_sign();
    let signature = if version == 1 {
        key.sign(
            Pkcs1v15Sign::new::<sha1::Sha1>(),
            &sha1::Sha1::digest(text.as_bytes()),
        )
    } else {
        key.sign(
            Pkcs1v15Sign::new::<sha2::Sha256>(),
            &sha2::Sha256::digest(text.as_bytes()),
        )
    }
    .unwrap();
    fields.insert("Signature".into(), json!(STANDARD.encode(signature)));
    serde_json::to_vec_pretty(&Value::Object(fields)).unwrap()
}

/// The time now as SNS writes it in `Timestamp`.
fn sns_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A relay with the pinned SNS route, judging timestamps at the clock the
/// recorded samples were signed at: SNS envelopes older than two hours are
/// refused.
async fn spawn_pinned_sns_at_the_samples_clock(cert: &std::path::Path) -> crate::helpers::TestApp {
    let clock = SAMPLES_NOW_MS.to_string();
    spawn_app_with(
        TEST_HEAD,
        &pinned_sns_route(cert),
        &[("RELAY_TEST_CLOCK_MS", &clock)],
    )
    .await
}

fn notification(message_id: &str, message: &Value) -> serde_json::Map<String, Value> {
    json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Subject": "Amazon S3 Notification",
        "Message": message.to_string(),
        "Timestamp": sns_now(),
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
    })
    .as_object()
    .unwrap()
    .clone()
}

/// A tiny HTTP server standing in for SNS's SubscribeURL: it counts GETs.
async fn fake_subscribe_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut socket).await else {
                    return;
                };
                if head.starts_with("GET /confirm?Token=tok-123 ") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: 29\r\nconnection: close\r\n\r\n<ConfirmSubscriptionResponse/>";
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

/// A stand-in for SNS's certificate host, reached as the relay reaches
/// AWS through a company's proxy: an HTTP proxy, for the relay's
/// `HTTPS_PROXY`, that tunnels `CONNECT sns.eu-west-1.amazonaws.com:443`
/// to a TLS server whose certificate for that name the test CA issued
/// (the relay trusts it through `SSL_CERT_FILE`). The server answers a GET
/// of a `.pem` path with `certificate`, or 404 when there is none. The
/// proxy refuses every other host with 502, and so does it every host
/// when `reachable` is false, as a proxy does when AWS cannot be reached.
struct FakeSnsHost {
    proxy_url: String,
    /// The paths of the certificates it was asked for, in order.
    fetched: Arc<std::sync::Mutex<Vec<String>>>,
}

const SNS_HOST: &str = "sns.eu-west-1.amazonaws.com";

impl FakeSnsHost {
    async fn start(certificate: Option<Vec<u8>>, reachable: bool) -> Self {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls = repo_root().join("tests/fixtures/tls");
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_file(tls.join("sns-host.pem")).unwrap()],
                PrivateKeyDer::from_pem_file(tls.join("sns-host.key")).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", listener.local_addr().unwrap());
        let fetched = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = fetched.clone();
        let certificate = Arc::new(certificate);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (acceptor, log, certificate) =
                    (acceptor.clone(), log.clone(), certificate.clone());
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut socket).await else {
                        return;
                    };
                    if !reachable || !head.starts_with(&format!("CONNECT {SNS_HOST}:443 ")) {
                        let _ = socket
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                    if socket
                        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let Ok(mut tunnel) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Some(head) = read_head(&mut tunnel).await else {
                        return;
                    };
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    log.lock().unwrap().push(path.clone());
                    let answer = match certificate.as_ref() {
                        Some(pem) if head.starts_with("GET ") && path.ends_with(".pem") => {
                            let mut answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/x-x509-ca-cert\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                pem.len()
                            )
                            .into_bytes();
                            answer.extend_from_slice(pem);
                            answer
                        }
                        _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = tunnel.write_all(&answer).await;
                    let _ = tunnel.shutdown().await;
                });
            }
        });
        FakeSnsHost { proxy_url, fetched }
    }

    /// Starts a relay with `routes` whose HTTPS requests go through this
    /// proxy, and which trusts the test CA.
    async fn spawn_relay(&self, routes: &str) -> crate::helpers::TestApp {
        let ca = crate::helpers::test_ca_file().display().to_string();
        let env = [
            ("HTTPS_PROXY", self.proxy_url.as_str()),
            ("SSL_CERT_FILE", ca.as_str()),
        ];
        spawn_app_with(TEST_HEAD, routes, &env).await
    }

    fn fetched(&self) -> Vec<String> {
        self.fetched.lock().unwrap().clone()
    }
}

/// Reads an HTTP request's head, byte by byte so that nothing after it
/// (a TLS handshake after a CONNECT) is taken from the stream.
async fn read_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return None;
        }
        head.push(stream.read_u8().await.ok()?);
    }
    String::from_utf8(head).ok()
}

fn sns_route() -> String {
    format!(
        r#"
  - id: sns/uploads
    verify:
      sns:
        topic_arns: [{TOPIC}]
        certificates: [{}]
    when: body.Records is defined
    dispatch:
      - repo: acme/blog
        event_type: s3-upload
        client_payload:
          key: "{{{{ body.Records[0].s3.object.key | urldecode }}}}"
          raw: "{{{{ body.Records[0].s3.object.key }}}}"
          message_id: "{{{{ sns.MessageId }}}}"
          subject: "{{{{ sns.Subject }}}}"
"#,
        test_cert_path().display()
    )
}

async fn post_sns(app: &crate::helpers::TestApp, kind: &str, body: Vec<u8>) -> (u16, Value) {
    post_sns_to(app, "/hooks/sns/uploads", Some(kind), body).await
}

/// Posts an SNS message as SNS does, with its message-type header when
/// `kind` is given.
async fn post_sns_to(
    app: &crate::helpers::TestApp,
    path: &str,
    kind: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url(path))
        .header("content-type", "text/plain; charset=UTF-8");
    if let Some(kind) = kind {
        request = request.header("x-amz-sns-message-type", kind);
    }
    crate::helpers::json_of(request.body(body).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_confirms_once_relays_decoded_keys_and_refuses_forgeries() {
    let (base, hits) = fake_subscribe_endpoint().await;
    let app = spawn_app_with(TEST_HEAD, &sns_route(), &[]).await;

    // A confirmation signed with version 1 is confirmed by one GET.
    let confirmation = json!({
        "Type": "SubscriptionConfirmation",
        "MessageId": "confirm-1",
        "Token": "tok-123",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": format!("{base}/confirm?Token=tok-123"),
        "Timestamp": sns_now(),
    });
    let body = signed_envelope(confirmation.as_object().unwrap().clone(), 1);
    // A forged confirmation (the URL changed after signing) is refused and
    // nothing is fetched.
    let forged = String::from_utf8(body.clone())
        .unwrap()
        .replace("tok-123\"", "tok-124\"");
    let (status, _) = post_sns(&app, "SubscriptionConfirmation", forged.into_bytes()).await;
    assert_eq!(status, 401);
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    let (status, json) = post_sns(&app, "SubscriptionConfirmation", body.clone()).await;
    assert_eq!(
        (status, json["confirmed"].clone()),
        (200, json!(true)),
        "{json}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "SubscribeURL fetched once");
    // SNS retrying the same confirmation does not fetch it again.
    let (status, _) = post_sns(&app, "SubscriptionConfirmation", body).await;
    assert_eq!(status, 200);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "SubscribeURL fetched exactly once"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"dispatch_relay_sns_subscriptions_total{result="confirmed",route="sns/uploads"} 1"#
        ),
        "{metrics}"
    );
    app.wait_for_log(|l| l.contains("Confirmed the SNS subscription"))
        .await;

    // A signed confirmation whose SubscribeURL is not http(s) can never be
    // confirmed: 400, which SNS does not retry, and nothing is fetched.
    let mut unusable = confirmation.as_object().unwrap().clone();
    unusable.insert("MessageId".into(), json!("confirm-2"));
    unusable.insert("SubscribeURL".into(), json!("file:///etc/passwd"));
    let (status, json) = post_sns(
        &app,
        "SubscriptionConfirmation",
        signed_envelope(unusable, 1),
    )
    .await;
    assert_eq!(status, 400, "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("SubscribeURL"),
        "{json}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "nothing more was fetched");

    // A notification signed with version 2; its key has spaces and
    // non-ASCII characters, form-encoded as S3 writes them.
    let s3 = json!({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"},
        "object": {"key": "caf%C3%A9+menu/%E2%9C%93+r%C3%A9sum%C3%A9+c%2B%2B.jpg"}}}]});
    let body = signed_envelope(notification("note-1", &s3), 2);
    let (status, json) = post_sns(&app, "Notification", body.clone()).await;
    assert_eq!(status, 202, "{json}");
    let (status, json2) = post_sns(&app, "Notification", body).await;
    assert_eq!(
        (status, json2["duplicate"].clone()),
        (200, json!(true)),
        "MessageId dedupes"
    );
    assert_eq!(json2["delivery_id"], json["delivery_id"]);

    // An envelope signed three hours ago is not SNS retrying (it stops
    // after an hour) but someone sending a kept copy again: refused,
    // however well signed.
    let mut kept = notification("note-kept", &s3);
    let three_hours_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(3);
    kept.insert(
        "Timestamp".into(),
        json!(
            three_hours_ago
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        ),
    );
    let (status, json) = post_sns(&app, "Notification", signed_envelope(kept.clone(), 2)).await;
    assert_eq!(status, 401, "{json}");
    app.wait_for_log(|l| l.contains("signed 180 minutes ago"))
        .await;
    // A sender replaying kept copies does not flood the log: the next
    // such refusal within ten seconds is only counted.
    let mut kept_again = notification("note-kept-2", &s3);
    kept_again.insert("Timestamp".into(), kept["Timestamp"].clone());
    let (status, _) = post_sns(&app, "Notification", signed_envelope(kept_again, 2)).await;
    assert_eq!(status, 401);

    // Another topic, even correctly signed, is refused; and said, being
    // another kind of refusal.
    let mut other = notification("note-2", &s3);
    other.insert(
        "TopicArn".into(),
        json!("arn:aws:sns:eu-west-1:111122223333:other"),
    );
    let (status, _) = post_sns(&app, "Notification", signed_envelope(other, 2)).await;
    assert_eq!(status, 401);
    app.wait_for_log(|l| l.contains("is not in this route's topic_arns"))
        .await;
    // Every line before that one has been read: the second kept copy was
    // only counted.
    let too_old = app
        .logs()
        .iter()
        .filter(|l| l.contains("Refused an SNS message") && l.contains("minutes ago"))
        .count();
    assert_eq!(too_old, 1, "{:#?}", app.logs());
    // So is a subscription to another topic: any AWS account can subscribe
    // the relay to its own topic, and SNS signs it all the same.
    let mut stranger = confirmation.as_object().unwrap().clone();
    stranger.insert("MessageId".into(), json!("confirm-3"));
    stranger.insert(
        "TopicArn".into(),
        json!("arn:aws:sns:eu-west-1:999999999999:stranger"),
    );
    let (status, _) = post_sns(
        &app,
        "SubscriptionConfirmation",
        signed_envelope(stranger, 2),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "nothing more was fetched");

    // A signed s3:TestEvent is answered and not relayed.
    let test_event = json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"});
    let (status, json) = post_sns(
        &app,
        "Notification",
        signed_envelope(notification("note-3", &test_event), 2),
    )
    .await;
    assert_eq!(
        (status, json["skipped"].clone()),
        (200, json!(true)),
        "{json}"
    );

    let dispatches = app
        .github
        .wait_for_dispatches(1, Duration::from_secs(60))
        .await;
    assert_eq!(dispatches.len(), 1, "only the one notification is relayed");
    let payload = &dispatches[0].body.as_ref().unwrap()["client_payload"];
    assert_eq!(payload["key"], "café menu/✓ résumé c++.jpg");
    assert_eq!(payload["message_id"], "note-1");
    assert_eq!(payload["subject"], "Amazon S3 Notification");
}

/// Route `sns/acme-blog`, verifying with the certificate at `cert` pinned.
fn pinned_sns_route(cert: &std::path::Path) -> String {
    format!(
        r#"
  - id: sns/acme-blog
    verify:
      sns:
        topic_arns: [arn:aws:sns:eu-west-1:111122223333:acme-blog-assets-events]
        certificates: [{}]
    dispatch: [{{repo: acme/blog, event_type: s3-upload}}]
"#,
        cert.display()
    )
}

/// SNS raw message delivery: the route verifies with `basic`, but SNS still
/// sends the subscription's confirmation as a signed envelope. It must not
/// be taken for a webhook (stored, then dispatched with empty fields, and
/// the subscription never confirmed). Its signature is checked with the
/// certificate fetched from SNS's host, and then the subscription is
/// confirmed; a forged one is refused. Neither is stored or dispatched,
/// nor is S3's test event, while a raw notification on the same route is
/// relayed as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_raw_delivery_route_does_not_relay_subscription_messages() {
    let routes = r#"
  - id: sns/raw
    verify:
      basic: {username: sns-gw, password: pw}
    dispatch:
      - repo: acme/blog
        event_type: s3-upload
        client_payload:
          key: "{{ body.Records[0].s3.object.key }}"
"#;
    let sns_host = FakeSnsHost::start(Some(std::fs::read(test_cert_path()).unwrap()), true).await;
    let app = sns_host.spawn_relay(routes).await;
    let (base, hits) = fake_subscribe_endpoint().await;
    let post = |kind: &'static str, body: Vec<u8>| {
        app.http
            .post(app.url("/hooks/sns/raw"))
            .basic_auth("sns-gw", Some("pw"))
            .header("content-type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", kind)
            .body(body)
            .send()
    };
    for kind in ["SubscriptionConfirmation", "UnsubscribeConfirmation"] {
        let message = json!({
            "Type": kind,
            "MessageId": format!("{kind}-1"),
            "Token": "tok-123",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic.",
            "SubscribeURL": format!("{base}/confirm?Token=tok-123"),
            "Timestamp": sns_now(),
        });
        let body = signed_envelope(message.as_object().unwrap().clone(), 1);
        // The same envelope with its token changed after signing.
        let forged = String::from_utf8(body.clone())
            .unwrap()
            .replace("tok-123\"", "tok-124\"");
        let (status, json) =
            crate::helpers::json_of(post(kind, forged.into_bytes()).await.unwrap()).await;
        assert_eq!(status, 401, "{kind}: {json}");
        assert!(json["message"].is_string(), "{kind}: {json}");
        let (status, json) = crate::helpers::json_of(post(kind, body).await.unwrap()).await;
        assert_eq!(status, 200, "{kind}: {json}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the confirmation is confirmed, the forgery and the unsubscription are not"
    );
    assert_eq!(
        sns_host.fetched(),
        ["/SimpleNotificationService-test.pem"],
        "the certificate is fetched once and kept"
    );
    // A header naming a subscription message on a body that is no
    // envelope is refused like a forged one.
    let (status, _) = crate::helpers::json_of(
        post("SubscriptionConfirmation", b"{\"Records\": []}".to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    // S3's test event, bare as raw delivery sends it, is answered and not
    // relayed, as on an `sns` route.
    let test_event = json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"});
    let (status, json) = crate::helpers::json_of(
        post("Notification", test_event.to_string().into_bytes())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &json), (200, &json!({"skipped": true})));

    let raw = json!({"Records": [{"s3": {"object": {"key": "a.jpg"}}}]});
    let (status, json) = crate::helpers::json_of(
        post("Notification", raw.to_string().into_bytes())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{json}");
    let sent = app
        .github
        .wait_for_dispatches(1, Duration::from_secs(60))
        .await;
    assert_eq!(
        sent[0].body.as_ref().unwrap()["client_payload"]["key"],
        "a.jpg"
    );
    assert_eq!(
        app.deliveries(&[]).len(),
        1,
        "only the notification is stored"
    );
    assert_eq!(app.github.dispatches().len(), 1);
}

/// `sns_route()` without pinned certificates: the relay fetches each
/// envelope's `SigningCertURL`, as it does by default.
fn fetching_sns_route() -> String {
    let pinned = format!("        certificates: [{}]\n", test_cert_path().display());
    let route = sns_route();
    assert!(route.contains(&pinned));
    route.replace(&pinned, "")
}

/// The default set-up, with no certificate pinned: the signing certificate
/// is fetched over HTTPS from SNS's host (here through a proxy, which the
/// relay takes from `HTTPS_PROXY` as any reqwest client does), once for all
/// the messages signed with it.
#[tokio::test(flavor = "multi_thread")]
async fn an_sns_route_fetches_the_signing_certificate_once() {
    let sns_host = FakeSnsHost::start(Some(std::fs::read(test_cert_path()).unwrap()), true).await;
    let app = sns_host.spawn_relay(&fetching_sns_route()).await;
    for (n, key) in ["a.jpg", "b.jpg"].into_iter().enumerate() {
        let message = json!({"Records": [{"s3": {"object": {"key": key}}}]});
        let body = signed_envelope(notification(&format!("note-{n}"), &message), 2);
        let (status, json) = post_sns(&app, "Notification", body).await;
        assert_eq!(status, 202, "{json}");
    }
    let sent = app
        .github
        .wait_for_dispatches(2, Duration::from_secs(60))
        .await;
    let mut keys: Vec<_> = sent
        .iter()
        .map(|d| d.body.as_ref().unwrap()["client_payload"]["key"].clone())
        .collect();
    keys.sort_by_key(|k| k.to_string());
    assert_eq!(keys, [json!("a.jpg"), json!("b.jpg")]);
    assert_eq!(sns_host.fetched(), ["/SimpleNotificationService-test.pem"]);

    // A message signed with another key, under the same certificate URL,
    // is checked against the kept certificate and refused.
    let other_key = {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let pem =
            std::fs::read_to_string(repo_root().join("tests/fixtures/app/test-app.pem")).unwrap();
        RsaPrivateKey::from_pkcs1_pem(&pem).unwrap()
    };
    let message = json!({"Records": [{"s3": {"object": {"key": "c.jpg"}}}]});
    let body = signed_envelope_with(&other_key, notification("note-c", &message), 2);
    let (status, json) = post_sns(&app, "Notification", body).await;
    assert_eq!(status, 401, "{json}");
    assert_eq!(sns_host.fetched().len(), 1);
    assert_eq!(app.deliveries(&[]).len(), 2);
}

/// A certificate that cannot be had: when SNS's host cannot be reached the
/// message is answered 503, so that SNS sends it again, and when the host
/// has no such certificate it is refused 401. Nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn sns_certificates_that_cannot_be_had_are_answered_for_what_they_are() {
    let message = json!({"Records": [{"s3": {"object": {"key": "a.jpg"}}}]});

    let unreachable =
        FakeSnsHost::start(Some(std::fs::read(test_cert_path()).unwrap()), false).await;
    let app = unreachable.spawn_relay(&fetching_sns_route()).await;
    let response = app
        .http
        .post(app.url("/hooks/sns/uploads"))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("x-amz-sns-message-type", "Notification")
        .body(signed_envelope(notification("note-1", &message), 2))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, json) = crate::helpers::json_of(response).await;
    assert_eq!(
        (status, &json["error"]),
        (503, &json!("unavailable")),
        "{json}"
    );
    assert!(app.deliveries(&[]).is_empty());
    drop(app);

    let without = FakeSnsHost::start(None, true).await;
    let app = without.spawn_relay(&fetching_sns_route()).await;
    let body = signed_envelope(notification("note-1", &message), 2);
    let (status, json) = post_sns(&app, "Notification", body).await;
    assert_eq!(
        (status, &json["error"]),
        (401, &json!("unauthorized")),
        "{json}"
    );
    assert_eq!(without.fetched(), ["/SimpleNotificationService-test.pem"]);
    assert!(app.deliveries(&[]).is_empty());
    assert!(app.github.dispatches().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_refuses_cert_urls_off_amazon_over_http() {
    let cert = samples_dir().join("sns-test-signing-cert.pem");
    let app = spawn_pinned_sns_at_the_samples_clock(&cert).await;
    let sample = sample("s3-via-sns-notification");
    let original = String::from_utf8(sample.body.clone()).unwrap();
    let url = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem";
    assert!(original.contains(url));
    // SigningCertURL is not signed, so the sample still verifies with the
    // pinned certificate: only the URL rule refuses these.
    for bad in [
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123.pem",
        "https://attacker-bucket.s3.amazonaws.com/SimpleNotificationService-0123.pem",
    ] {
        let (status, _) = post_sns_to(
            &app,
            "/hooks/sns/acme-blog",
            None,
            original.replace(url, bad),
        )
        .await;
        assert_eq!(status, 401, "{bad}");
    }
    let (status, json) = post_sns_to(&app, "/hooks/sns/acme-blog", None, original).await;
    assert_eq!(status, 202, "{json}");
    app.wait_for_log(|l| l.contains("SigningCertURL is not https"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_certificate_that_cannot_be_read_is_a_configuration_error() {
    // A copy of the certificate, in a directory of the test's own.
    let certs = tempfile::tempdir().unwrap();
    let cert = certs.path().join("sns-test-signing-cert.pem");
    std::fs::copy(samples_dir().join("sns-test-signing-cert.pem"), &cert).unwrap();
    let app = spawn_pinned_sns_at_the_samples_clock(&cert).await;
    let sample = sample("s3-via-sns-notification");
    let post = || post_sns_to(&app, "/hooks/sns/acme-blog", None, sample.body.clone());
    let first = post().await;
    assert_eq!(first.0, 202, "{}", first.1);

    // A typo in the path: the reload is refused, and the route keeps
    // verifying with the certificate it has. Swapped in, it would refuse
    // every message, and SNS drops what is refused.
    let original = std::fs::read_to_string(app.config_path()).unwrap();
    let typo = cert.with_extension("pme");
    let broken = original.replace(&cert.display().to_string(), &typo.display().to_string());
    app.write_config(&broken);
    let line = app
        .wait_for_log(|l| l.contains("previous one stays in force"))
        .await;
    assert!(line.contains("verify.sns.certificates"), "{line}");
    assert!(line.contains("sns-test-signing-cert.pme"), "{line}");
    assert!(
        app.metrics()
            .await
            .contains(r#"dispatch_relay_config_reloads_total{result="failure"} 1"#)
    );
    // Verified with the old certificate: the same message again is a
    // duplicate, not a 401.
    let again = post().await;
    assert_eq!(
        (again.0, &again.1["duplicate"]),
        (200, &json!(true)),
        "{}",
        again.1
    );

    // `check` and `serve` say the same, naming the file, the line and the
    // route.
    let line = 1 + broken
        .lines()
        .position(|l| l.contains("sns-test-signing-cert.pme"))
        .unwrap();
    let said = format!("routes.yaml:{line}:",);
    for command in [&["check"][..], &["serve", "--listen", "127.0.0.1:0"]] {
        let (code, stderr) = app.cli_with_deadline(command, Duration::from_secs(30));
        assert_eq!(code, Some(1), "{command:?}: {stderr}");
        let at = stderr
            .find(&said)
            .unwrap_or_else(|| panic!("{command:?}: {stderr}"));
        let rest = &stderr[at + said.len()..];
        assert!(
            rest.split_once(": ")
                .is_some_and(|(_column, message)| message.starts_with(
                    "routes[0] (sns/acme-blog): verify.sns.certificates[0]: cannot read"
                )),
            "{command:?}: {stderr}"
        );
    }

    // The certificate arrives after routes.yaml (another volume, synced
    // later): the relay loads the file then, without another edit.
    std::fs::copy(&cert, &typo).unwrap();
    app.wait_for_log(|l| {
        l.contains("Configuration reloaded") && l.contains("certificates readable")
    })
    .await;
    let reports = app
        .logs()
        .iter()
        .filter(|l| l.contains("previous one stays in force"))
        .count();
    assert_eq!(reports, 1, "the refusal is reported once, not every second");
}

// ---------------------------------------------------------------------------
// source_ips and trusted_proxies.

const NETWORK_ROUTE: &str = r#"
  - id: office
    verify:
      token:
        header: X-Token
        value: t0ken
    source_ips: [10.0.0.0/8]
    dispatch: [{repo: acme/blog, event_type: e}]
"#;

async fn post_from(app: &crate::helpers::TestApp, forwarded: Option<&str>) -> u16 {
    let mut request = app
        .http
        .post(app.url("/hooks/office"))
        .header("x-token", "t0ken")
        .header("content-type", "application/json")
        .body("{}");
    if let Some(chain) = forwarded {
        request = request.header("x-forwarded-for", chain);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_believed_only_from_trusted_proxies_and_admin_refusals_name_each_client_once_a_while()
 {
    // Without trusted proxies the header is ignored: the peer is 127.0.0.1.
    let app = spawn_app_with(TEST_HEAD, NETWORK_ROUTE, &[]).await;
    assert_eq!(post_from(&app, None).await, 403);
    assert_eq!(post_from(&app, Some("10.1.2.3")).await, 403);

    let head = format!("{TEST_HEAD}\nserver:\n  trusted_proxies: [127.0.0.1/32]\n");
    let app = spawn_app_with(&head, NETWORK_ROUTE, &[]).await;
    assert_eq!(
        post_from(&app, None).await,
        403,
        "the proxy itself is not allowed"
    );
    assert_eq!(post_from(&app, Some("10.1.2.3")).await, 202);
    // The nearest untrusted hop counts, not what the client wrote first.
    assert_eq!(post_from(&app, Some("10.9.9.9, 192.0.2.7")).await, 403);
    assert_eq!(
        post_from(&app, Some("192.0.2.7, 10.1.2.4, 127.0.0.1")).await,
        202
    );
    app.github
        .wait_for_dispatches(2, Duration::from_secs(60))
        .await;

    // A refused admin request names the client behind the proxy; when the
    // proxy's header cannot be read, the proxy itself. (Refusals are said
    // at most once every ten seconds per client; these are two clients.)
    let head = format!("{TEST_HEAD}\nserver:\n  trusted_proxies: [127.0.0.1/32]\n");
    let app = spawn_app_with(
        &head,
        NETWORK_ROUTE,
        &[("RELAY_ADMIN_TOKEN", "admin-secret")],
    )
    .await;
    let app = &app;
    let refused_from = |forwarded: &'static str| async move {
        let answer = app
            .http
            .get(app.url("/admin/deliveries"))
            .bearer_auth("wrong")
            .header("x-forwarded-for", forwarded)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401);
    };
    for (forwarded, client) in [("10.1.2.3", "10.1.2.3"), ("garbage", "127.0.0.1")] {
        refused_from(forwarded).await;
        let line = app
            .wait_for_log(|l| {
                l.contains("Refused an admin request")
                    && l.contains(&format!("\"client\":\"{client}\""))
            })
            .await;
        let line: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(line["client"], client, "{line}");
    }
    // The same client again within ten seconds is only counted: a third
    // client's line, said after it, finds no second line for it.
    refused_from("10.1.2.3").await;
    refused_from("10.7.7.7").await;
    app.wait_for_log(|l| l.contains("Refused an admin request") && l.contains("10.7.7.7"))
        .await;
    let lines_for_the_first = app
        .logs()
        .iter()
        .filter(|l| l.contains("Refused an admin request") && l.contains("10.1.2.3"))
        .count();
    assert_eq!(lines_for_the_first, 1);
}

// ---------------------------------------------------------------------------
// Property tests.

const PROP_SECRET: &str = "prop-Secret-7c1d2e3f";

fn prop_methods() -> Vec<Verify> {
    let whsec = format!("whsec_{}", STANDARD.encode(PROP_SECRET));
    [
        format!("hmac: {{secret: {PROP_SECRET}, header: X-Sig}}"),
        format!("github: {{secret: {PROP_SECRET}}}"),
        format!("token: {{header: X-Token, value: {PROP_SECRET}}}"),
        format!("basic: {{username: u, password: {PROP_SECRET}}}"),
        format!("standard_webhooks: {{secret: {whsec}}}"),
        format!("contentful: {{secret: {PROP_SECRET}}}"),
        format!("sanity: {{secret: {PROP_SECRET}}}"),
        format!("ghost: {{secret: {PROP_SECRET}}}"),
        format!("stripe: {{secret: {PROP_SECRET}}}"),
        format!("slack: {{secret: {PROP_SECRET}}}"),
        "sns: {topic_arns: [arn:aws:sns:eu-west-1:1:t]}".to_string(),
    ]
    .iter()
    .map(|yaml| verify_of(yaml))
    .collect()
}

fn header_names() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "x-sig",
        "x-hub-signature-256",
        "x-token",
        "authorization",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-signature",
        "x-contentful-signature",
        "x-contentful-signed-headers",
        "x-contentful-timestamp",
        "sanity-webhook-signature",
        "x-ghost-signature",
        "stripe-signature",
        "x-slack-signature",
        "x-slack-request-timestamp",
    ])
    .prop_map(str::to_string)
}

fn header_values() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,80}",
        "(t=[0-9]{1,14}[, ]+)?(v1|v0|sha256)=[A-Za-z0-9_+/=-]{0,70}(, t=[0-9]{0,14})?",
        "v1,[A-Za-z0-9+/=]{0,60}( v1,[A-Za-z0-9+/=]{0,60})?",
        "[0-9]{0,14}",
        "Basic [A-Za-z0-9+/=]{0,40}",
        "x-contentful-timestamp(,content-type)?",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests_never_pass_without_the_secret_and_never_leak_it(
        headers in prop::collection::btree_map(header_names(), header_values(), 0..8),
        body in prop::collection::vec(any::<u8>(), 0..256),
        now_ms in 0i64..4_000_000_000_000,
    ) {
        for method in prop_methods() {
            let request = Request { method: "POST", path: "/hooks/r", headers: &headers, body: &body, now_ms };
            let result = verify::verify_request(&method, &request);
            if let Verify::Sns(_) = method {
                // SNS passes the pure checks only for a real envelope; the
                // signature is checked separately and needs a certificate.
                if result.is_ok() {
                    let envelope = Envelope::parse(&body).unwrap();
                    prop_assert!(sns::verify_signature(&envelope, &[test_key_cert()]).is_err());
                }
                continue;
            }
            let err = result.expect_err("verified without the secret");
            let shown = format!("{err} {err:?}");
            prop_assert!(!shown.contains(PROP_SECRET), "{shown}");
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic_the_parsers(
        body in prop::collection::vec(any::<u8>(), 0..512),
        content_type in prop::sample::select(vec![
            "application/json", "application/x-www-form-urlencoded", "text/plain", "",
            "application/vnd.contentful.management.v1+json",
        ]),
    ) {
        let _ = dispatch_relay::inbound::parse_body(Some(content_type), &body);
        if let Ok(envelope) = Envelope::parse(&body) {
            let _ = envelope.string_to_sign();
            let _ = sns::unwrap(&envelope);
        }
    }

    #[test]
    fn arbitrary_form_and_json_bodies_render_without_panicking(
        key in "\\PC{0,40}",
        value in "\\PC{0,40}",
    ) {
        let body = json!({"Records": [{"s3": {"object": {"key": format!("{key}%{value}+")}}}], key.clone(): value});
        let ctx = dispatch_relay::inbound::context("r", body, BTreeMap::new(), &[], "d", 0);
        let _ = dispatch_relay::routing::dedupe_key(&sns_like_route(), &ctx);
    }
}

fn sns_like_route() -> dispatch_relay::config::Route {
    single_route(
        "verify: none\n    dedupe_key: \"{{ body.Records[0].s3.object.key | urldecode }}\"",
    )
}

/// A Svix delivery is deduplicated by `svix-id`, the id its signature
/// covers, also once the signature's value is left out of what is stored:
/// a repeat is a duplicate, and a `webhook-id` added to a replay does not
/// make it new.
#[tokio::test(flavor = "multi_thread")]
async fn a_svix_delivery_is_deduplicated_by_its_signed_id() {
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let routes = format!(
        "  - id: svix\n    verify:\n      standard_webhooks: {{secret: \"{secret}\"}}\n    dispatch: [{{repo: acme/blog, event_type: e}}]\n"
    );
    let app = spawn_app_with(TEST_HEAD, &routes, &[]).await;
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let body = r#"{"type":"entry.published"}"#;
    let (id, ts) = ("msg_svix_1", now_epoch_secs().to_string());
    let signature = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.{body}").as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    };
    let send = |extra: Option<(&'static str, &'static str)>| {
        let mut request = app
            .http
            .post(app.url("/hooks/svix"))
            .header("content-type", "application/json")
            .header("svix-id", id)
            .header("svix-timestamp", ts.as_str())
            .header("svix-signature", signature.as_str())
            .body(body);
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        request.send()
    };
    let first = send(None).await.unwrap();
    assert_eq!(first.status(), 202);
    for extra in [None, Some(("webhook-id", "forged-new-id"))] {
        let again = send(extra).await.unwrap();
        assert_eq!(again.status(), 200, "{extra:?}");
        let answer: Value = again.json().await.unwrap();
        assert_eq!(answer["duplicate"], true, "{extra:?}: {answer}");
    }
    // The signature's value is not in the store; its name is.
    let stored = app.deliveries(&[]);
    assert_eq!(stored.len(), 1);
    let store = std::fs::read(app.dir.path().join("dispatch-relay.db")).unwrap_or_default();
    let wal = std::fs::read(app.dir.path().join("dispatch-relay.db-wal")).unwrap_or_default();
    let value = signature.trim_start_matches("v1,");
    assert!(
        ![&store, &wal]
            .iter()
            .any(|bytes| bytes.windows(value.len()).any(|w| w == value.as_bytes())),
        "the signature was stored"
    );
}

fn now_epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `render --verify` checks an envelope's signature itself when the route
/// pins its certificate, as `serve` would: a fresh, well-signed envelope
/// passes, one whose Message was changed fails.
#[test]
fn render_verifies_an_sns_envelope_with_a_pinned_certificate() {
    let routes = format!(
        "github:\n  token: ghp_x\nroutes:\n  - id: uploads\n    verify:\n      sns:\n        topic_arns: [\"{TOPIC}\"]\n        certificates: [\"{}\"]\n    dispatch:\n      - repo: acme/blog\n        event_type: s3-upload\n",
        test_cert_path().display()
    );
    let dir = crate::cli::dir_with_routes(&routes);
    let signed = signed_envelope(notification("note-render", &json!({"Records": []})), 2);
    std::fs::write(dir.path().join("signed.json"), &signed).unwrap();
    let changed = String::from_utf8(signed)
        .unwrap()
        .replace("Records", "Recordz");
    std::fs::write(dir.path().join("changed.json"), changed).unwrap();
    let render = |body: &str| {
        crate::cli::run(
            dir.path(),
            &["render", "--route", "uploads", "--body", body, "--verify"],
            &[],
        )
    };
    let (code, stdout, stderr) = render("signed.json");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("# SNS envelope: ok (signed with a pinned certificate)"),
        "{stdout}"
    );
    let (code, _, stderr) = render("changed.json");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("verification failed"), "{stderr}");
    // One captured long ago: its signature is still checked, and its age
    // is said apart.
    let mut old = notification("note-old", &json!({"Records": []}));
    old.insert("Timestamp".into(), json!("2020-01-01T00:00:00.000Z"));
    std::fs::write(dir.path().join("old.json"), signed_envelope(old, 2)).unwrap();
    let (code, stdout, stderr) = render("old.json");
    assert!(
        stdout.contains(
            "# SNS envelope: signed with a pinned certificate, but the envelope was signed "
        ) && stdout.contains("/repos/acme/blog/dispatches"),
        "{stdout}"
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("serve would answer 401 to this request now: the envelope was signed "),
        "{stderr}"
    );
}

/// `server.trusted_proxies` and `server.max_body` change with a reload,
/// without a restart: a relay put behind a proxy, or given a lower bound,
/// applies it to the next request.
#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_and_max_body_take_effect_at_a_reload() {
    let app = spawn_app_with(TEST_HEAD, NETWORK_ROUTE, &[]).await;
    assert_eq!(post_from(&app, Some("10.1.2.3")).await, 403);
    let two_kib = format!(r#"{{"pad": "{}"}}"#, "x".repeat(2048));
    let post_large = || {
        app.http
            .post(app.url("/hooks/office"))
            .header("x-token", "t0ken")
            .header("x-forwarded-for", "10.1.2.3")
            .header("content-type", "application/json")
            .body(two_kib.clone())
            .send()
    };

    let text = std::fs::read_to_string(app.config_path()).unwrap();
    app.reload_config(&format!(
        "{text}\nserver:\n  trusted_proxies: [127.0.0.1/32]\n"
    ))
    .await;
    assert_eq!(post_from(&app, Some("10.1.2.3")).await, 202);
    assert_eq!(post_large().await.unwrap().status(), 202);

    let reloads = |app: &crate::helpers::TestApp| {
        app.logs()
            .iter()
            .filter(|l| l.contains("Configuration reloaded"))
            .count()
    };
    assert_eq!(reloads(&app), 1);
    app.write_config(&format!(
        "{text}\nserver:\n  trusted_proxies: [127.0.0.1/32]\n  max_body: 1KiB\n"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reloads(&app) < 2 {
        assert!(std::time::Instant::now() < deadline, "{:#?}", app.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = post_large().await.unwrap();
    assert_eq!(refused.status(), 413);
    assert_eq!(
        post_from(&app, Some("10.1.2.3")).await,
        202,
        "small ones pass"
    );
}
