//! Sender authentication: checks an incoming request against its route's
//! `verify` method. Pure: it sees the headers and the raw body, nothing else.
//!
//! Every comparison of a secret-derived value is constant-time. The error
//! says which check failed, for the log only: the sender gets a bare 401 so
//! that a forger learns nothing from the answer.
//!
//! Schemes that sign a timestamp are checked against a clock the caller
//! passes in ([`Request::now_ms`]), so that tests can fix it; the vendor
//! schemes live in `schemes`, Amazon SNS's RSA envelope in `sns`.

mod schemes;
pub mod sns;

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use crate::config::{HmacAlgorithm, HmacVerify, SignatureEncoding, Verify};
use crate::secret::Secret;

/// Why a request was refused. Never includes a secret or a signature value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("header `{0}` is missing")]
    MissingHeader(String),
    #[error("header `{0}` is not in the expected format")]
    Malformed(String),
    #[error("signature in `{0}` does not match any configured secret")]
    BadSignature(String),
    #[error("header `{0}` does not match the configured value")]
    BadToken(String),
    #[error("basic credentials are missing")]
    MissingBasic,
    #[error("basic credentials do not match")]
    BadBasic,
    #[error(
        "the timestamp in `{header}` is {} the relay's clock, beyond the route's tolerance of {}{}",
        describe_skew(*skew_ms),
        describe_ms(*tolerance_ms),
        hint.map(|hint| format!(" ({hint})")).unwrap_or_default()
    )]
    Stale {
        header: String,
        /// The signed time less the relay's, in milliseconds.
        skew_ms: i64,
        tolerance_ms: i64,
        /// What the skew suggests, such as a timestamp in the wrong unit.
        hint: Option<&'static str>,
    },
    #[error("SNS message refused: {0}")]
    Sns(sns::SnsRefusal),
}

/// What a verify method may look at: the request as it arrived, and the
/// time to judge signed timestamps by.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The HTTP method, upper-case.
    pub method: &'a str,
    /// The path and query as the sender addressed them.
    pub path: &'a str,
    /// Header names, lower-cased, to values.
    pub headers: &'a BTreeMap<String, String>,
    /// The raw body.
    pub body: &'a [u8],
    /// The current time in Unix milliseconds.
    pub now_ms: i64,
}

/// How far a signed time is from the relay's clock, and which way.
fn describe_skew(skew_ms: i64) -> String {
    let way = if skew_ms > 0 { "ahead of" } else { "behind" };
    format!("{} {way}", describe_ms(skew_ms.saturating_abs()))
}

/// A duration in the largest unit that keeps it readable.
fn describe_ms(ms: i64) -> String {
    let secs = ms / 1000;
    match secs {
        ..120 => format!("{secs} s"),
        120..7_200 => format!("{} min", secs / 60),
        7_200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

impl VerifyError {
    /// The refusal's kind, from a fixed set: refusals are logged once in a
    /// while per kind, so that one kind does not hide another.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::BadSignature(_) => "bad_signature",
            VerifyError::BadToken(_) => "bad_token",
            VerifyError::MissingBasic => "missing_basic",
            VerifyError::BadBasic => "bad_basic",
            VerifyError::Stale { .. } => "stale",
            VerifyError::Sns(refusal) => refusal.kind(),
        }
    }

    /// True when the sender should be told how to authenticate
    /// (`WWW-Authenticate`): HTTP Basic clients expect it on a first try,
    /// and HTTP requires it on every `401` of a Basic route (RFC 9110
    /// §11.6.1), wrong credentials included.
    pub fn wants_basic_challenge(&self) -> bool {
        matches!(self, VerifyError::MissingBasic | VerifyError::BadBasic)
    }
}

/// Whether `method` judges a request by its headers alone, so that a
/// request it refuses can be refused before its body is read.
pub fn reads_headers_only(method: &Verify) -> bool {
    matches!(
        method,
        Verify::None | Verify::Token { .. } | Verify::Basic { .. }
    )
}

/// Checks a request against the route's method.
///
/// SNS needs the signing certificate, which is IO to obtain: for `sns`
/// this only parses the envelope and checks the certificate URL and topic;
/// the caller then checks the signature with [`sns::verify_signature`].
pub fn verify_request(method: &Verify, request: &Request<'_>) -> Result<(), VerifyError> {
    let headers = request.headers;
    let body = request.body;
    match method {
        Verify::StandardWebhooks(timed) => schemes::standard_webhooks(timed, request),
        Verify::Contentful(timed) => schemes::contentful(timed, request),
        Verify::Sanity(timed) => schemes::sanity(timed, request),
        Verify::Ghost(timed) => schemes::ghost(timed, request),
        Verify::Stripe(timed) => schemes::stripe(timed, request),
        Verify::Slack(timed) => schemes::slack(timed, request),
        Verify::Sns(config) => sns::Envelope::parse(body)
            .and_then(|envelope| envelope.check_unsigned_parts(config))
            .map(|_| ())
            .map_err(VerifyError::Sns),
        Verify::None => Ok(()),
        Verify::Hmac(config) => verify_hmac(config, headers, body),
        Verify::Github { secrets } => {
            let config = HmacVerify {
                secrets: secrets.clone(),
                header: GITHUB_SIGNATURE.into(),
                algorithm: HmacAlgorithm::Sha256,
                encoding: SignatureEncoding::Hex,
                prefix: Some("sha256=".into()),
            };
            verify_hmac(&config, headers, body)
        }
        Verify::Token { header, values } => {
            let got = header_value(headers, header)?;
            if values
                .iter()
                .any(|v| constant_time_eq(got.as_bytes(), v.expose().as_bytes()))
            {
                Ok(())
            } else {
                Err(VerifyError::BadToken(header.clone()))
            }
        }
        Verify::Basic {
            username,
            passwords,
        } => verify_basic(username, passwords, headers),
    }
}

/// Whether `name` (lower-cased) is the header a `token` route reads its
/// token from: the secret itself, so templates never see it and it is never
/// stored.
pub fn is_token_header(method: &Verify, name: &str) -> bool {
    matches!(method, Verify::Token { header, .. } if name == header)
}

/// Whether `name` (lower-cased) is a header `method` reads a signature from.
/// A signature with its body is a request anyone holding both could send
/// again, so its value is neither shown to templates nor stored. Its name
/// stays: which family of headers signed (Svix's `svix-*` or `webhook-*`)
/// says which id header the signature covers, and so which one may serve as
/// the dedupe key, at accept and at redelivery alike.
pub fn is_signature_header(method: &Verify, name: &str) -> bool {
    match method {
        // Senders that copy GitHub's scheme (Gitea, Gogs, Forgejo, Bitbucket
        // Server) sign in GitHub's headers as well as their own, with the
        // same secret: whichever one the route checks, the others would let
        // the stored request be sent again.
        Verify::Hmac(config) => {
            name == config.header || name == GITHUB_SIGNATURE || name == GITHUB_SIGNATURE_SHA1
        }
        Verify::Github { .. } => name == GITHUB_SIGNATURE || name == GITHUB_SIGNATURE_SHA1,
        Verify::StandardWebhooks(_) => {
            name == STANDARD_WEBHOOKS.signature || name == SVIX.signature
        }
        Verify::Contentful(_) => name == schemes::CONTENTFUL_SIGNATURE,
        Verify::Sanity(_) => name == schemes::SANITY_SIGNATURE,
        Verify::Ghost(_) => name == schemes::GHOST_SIGNATURE,
        Verify::Stripe(_) => name == schemes::STRIPE_SIGNATURE,
        Verify::Slack(_) => name == schemes::SLACK_SIGNATURE,
        // Basic's credential is `authorization`, always left out; SNS signs
        // inside the body.
        Verify::None | Verify::Token { .. } | Verify::Basic { .. } | Verify::Sns(_) => false,
    }
}

/// The header GitHub signs its webhooks in (HMAC-SHA256).
const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// The older SHA-1 signature GitHub still sends beside it: a signature too,
/// so it is emptied as well, though never checked.
const GITHUB_SIGNATURE_SHA1: &str = "x-hub-signature";

/// The header names of one Standard Webhooks request.
pub(crate) struct StandardWebhooksHeaders {
    pub id: &'static str,
    pub timestamp: &'static str,
    pub signature: &'static str,
}

/// The specification's own header names.
const STANDARD_WEBHOOKS: StandardWebhooksHeaders = StandardWebhooksHeaders {
    id: "webhook-id",
    timestamp: "webhook-timestamp",
    signature: "webhook-signature",
};

/// Svix's names for the same headers.
const SVIX: StandardWebhooksHeaders = StandardWebhooksHeaders {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

/// The header names a Standard Webhooks request uses: `webhook-*`, or
/// Svix's `svix-*` when only a `svix-signature` is present. The signature is
/// checked over the id of the same family, so that id is the one to trust.
pub(crate) fn standard_webhooks_headers(
    headers: &BTreeMap<String, String>,
) -> StandardWebhooksHeaders {
    if headers.contains_key(STANDARD_WEBHOOKS.signature) || !headers.contains_key(SVIX.signature) {
        STANDARD_WEBHOOKS
    } else {
        SVIX
    }
}

/// The delivery-id header a method's signature covers, when it has one:
/// only that header may then serve as the dedupe key, or a replay could add
/// another id header and pass as new.
pub fn signed_id_header(
    method: &Verify,
    headers: &BTreeMap<String, String>,
) -> Option<&'static str> {
    match method {
        Verify::StandardWebhooks(_) => Some(standard_webhooks_headers(headers).id),
        _ => None,
    }
}

/// A key of a Standard Webhooks route, as the sender shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandardWebhooksKey {
    /// `whsec_…`: the HMAC key of `v1` signatures.
    Symmetric(Vec<u8>),
    /// `whpk_…`: an ed25519 public key that `v1a` signatures are checked
    /// against.
    Public(Vec<u8>),
}

/// Reads a Standard Webhooks key: the base64 after `whsec_` (the reference
/// library decodes the string without the prefix too), or a 32-byte ed25519
/// public key after `whpk_`.
pub fn standard_webhooks_key(secret: &Secret) -> Result<StandardWebhooksKey, &'static str> {
    let text = secret.expose();
    if let Some(encoded) = text.strip_prefix("whpk_") {
        return match STANDARD.decode(encoded) {
            Ok(key) if key.len() == ED25519_PUBLIC_KEY_LEN => Ok(StandardWebhooksKey::Public(key)),
            _ => Err(
                "is not a Standard Webhooks public key: expected `whpk_` followed by the base64 of 32 bytes",
            ),
        };
    }
    if text.starts_with("whsk_") {
        return Err(
            "is the sender's private signing key (`whsk_…`); configure its public key, `whpk_…`",
        );
    }
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    match STANDARD.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(StandardWebhooksKey::Symmetric(key)),
        _ => Err(
            "is not a Standard Webhooks secret: expected `whsec_` followed by base64, or a public key `whpk_`",
        ),
    }
}

/// The length of an ed25519 public key.
const ED25519_PUBLIC_KEY_LEN: usize = 32;

fn header_value<'a>(
    headers: &'a BTreeMap<String, String>,
    name: &str,
) -> Result<&'a str, VerifyError> {
    headers
        .get(name)
        .map(|v| one_copy(v.trim()))
        .ok_or_else(|| VerifyError::MissingHeader(name.to_string()))
}

/// A header that a proxy on the way repeated reaches us as its copies
/// joined with ", ". Copies that agree are the one value the sender wrote,
/// and are read as such; copies that differ are left joined, and fail the
/// check they are read for rather than have one of them chosen.
fn one_copy(value: &str) -> &str {
    let mut copies = value.split(", ");
    let first = copies.next().unwrap_or(value);
    if copies.all(|copy| copy.trim() == first) {
        first
    } else {
        value
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // ct_eq on slices of different lengths returns false without looking at
    // the contents; the length of a configured token is not a secret worth
    // hiding, its bytes are.
    a.ct_eq(b).into()
}

/// An `hmac` signature header's value after the route's `prefix`, or
/// `None` when it does not begin with it. The prefix names the algorithm
/// (`sha256=`); a sender that writes it in capitals, as some write the hex
/// after it, signs all the same.
pub fn without_prefix<'a>(value: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    let Some(prefix) = prefix else {
        return Some(value);
    };
    value
        .get(..prefix.len())
        .filter(|start| start.eq_ignore_ascii_case(prefix))
        .map(|_| &value[prefix.len()..])
}

fn verify_hmac(
    config: &HmacVerify,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let raw = header_value(headers, &config.header)?;
    let encoded = without_prefix(raw, config.prefix.as_deref())
        .ok_or_else(|| VerifyError::Malformed(config.header.clone()))?;
    let signature = match config.encoding {
        SignatureEncoding::Hex => hex::decode(encoded.trim()),
        SignatureEncoding::Base64 => STANDARD
            .decode(encoded.trim())
            .map_err(|_| hex::FromHexError::OddLength),
    }
    .map_err(|_| VerifyError::Malformed(config.header.clone()))?;
    if config
        .secrets
        .iter()
        .any(|secret| hmac_matches(config.algorithm, secret, body, &signature))
    {
        Ok(())
    } else {
        Err(VerifyError::BadSignature(config.header.clone()))
    }
}

/// Computes the HMAC of `body` and compares it with `signature` in constant
/// time (`verify_slice` does the comparison).
pub fn hmac_matches(
    algorithm: HmacAlgorithm,
    secret: &Secret,
    body: &[u8],
    signature: &[u8],
) -> bool {
    let key = secret.expose().as_bytes();
    match algorithm {
        HmacAlgorithm::Sha1 => mac::<Hmac<sha1::Sha1>>(key, body)
            .verify_slice(signature)
            .is_ok(),
        HmacAlgorithm::Sha256 => mac::<Hmac<sha2::Sha256>>(key, body)
            .verify_slice(signature)
            .is_ok(),
        HmacAlgorithm::Sha512 => mac::<Hmac<sha2::Sha512>>(key, body)
            .verify_slice(signature)
            .is_ok(),
    }
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], body: &[u8]) -> M {
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac
}

/// Computes a signature as a sender would. Only the integration tests
/// sign requests, and they cannot see `cfg(test)` items.
#[doc(hidden)]
pub fn sign(algorithm: HmacAlgorithm, secret: &str, body: &[u8]) -> Vec<u8> {
    let key = secret.as_bytes();
    match algorithm {
        HmacAlgorithm::Sha1 => mac::<Hmac<sha1::Sha1>>(key, body)
            .finalize()
            .into_bytes()
            .to_vec(),
        HmacAlgorithm::Sha256 => mac::<Hmac<sha2::Sha256>>(key, body)
            .finalize()
            .into_bytes()
            .to_vec(),
        HmacAlgorithm::Sha512 => mac::<Hmac<sha2::Sha512>>(key, body)
            .finalize()
            .into_bytes()
            .to_vec(),
    }
}

fn verify_basic(
    username: &str,
    passwords: &[Secret],
    headers: &BTreeMap<String, String>,
) -> Result<(), VerifyError> {
    let value = header_value(headers, "authorization").map_err(|_| VerifyError::MissingBasic)?;
    let Some(encoded) = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, rest)| rest.trim())
    else {
        return Err(VerifyError::MissingBasic);
    };
    let decoded = STANDARD
        .decode(encoded)
        .map_err(|_| VerifyError::BadBasic)?;
    let text = String::from_utf8(decoded).map_err(|_| VerifyError::BadBasic)?;
    let (user, password) = text.split_once(':').ok_or(VerifyError::BadBasic)?;
    let user_ok = constant_time_eq(user.as_bytes(), username.as_bytes());
    let password_ok = passwords.iter().fold(false, |ok, p| {
        ok | constant_time_eq(password.as_bytes(), p.expose().as_bytes())
    });
    if user_ok && password_ok {
        Ok(())
    } else {
        Err(VerifyError::BadBasic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A POST to `/`, judged by the system clock.
    fn verify(
        method: &Verify,
        headers: &BTreeMap<String, String>,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        verify_request(
            method,
            &Request {
                method: "POST",
                path: "/",
                headers,
                body,
                now_ms: crate::clock::now_ms(),
            },
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn secrets(list: &[&str]) -> Vec<Secret> {
        list.iter().map(|s| Secret::new(s.to_string())).collect()
    }

    const BODY: &[u8] = br#"{"event":"entry.publish"}"#;

    #[test]
    fn a_header_repeated_on_the_way_counts_once_when_its_copies_agree() {
        let method = Verify::Hmac(HmacVerify {
            secrets: secrets(&["new"]),
            header: "x-signature".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            prefix: Some("sha256=".into()),
        });
        let good = format!(
            "sha256={}",
            hex::encode(sign(HmacAlgorithm::Sha256, "new", BODY))
        );
        let bad = format!(
            "sha256={}",
            hex::encode(sign(HmacAlgorithm::Sha256, "other", BODY))
        );
        let repeated = |copies: &[&str]| headers(&[("x-signature", &copies.join(", "))]);
        assert_eq!(verify(&method, &repeated(&[&good, &good]), BODY), Ok(()));
        assert_eq!(
            verify(&method, &repeated(&[&good, &good, &good]), BODY),
            Ok(())
        );
        // Copies that disagree are not a choice to make: neither is taken.
        assert!(verify(&method, &repeated(&[&good, &bad]), BODY).is_err());
        assert!(verify(&method, &repeated(&[&bad, &good]), BODY).is_err());

        // Every method reads its headers so, HTTP Basic's among them.
        let basic = Verify::Basic {
            username: "jenkins".into(),
            passwords: secrets(&["pw"]),
        };
        let credentials = format!("Basic {}", STANDARD.encode("jenkins:pw"));
        let wrong = format!("Basic {}", STANDARD.encode("jenkins:other"));
        let authorization = |copies: &[&str]| headers(&[("authorization", &copies.join(", "))]);
        assert_eq!(
            verify(&basic, &authorization(&[&credentials, &credentials]), BODY),
            Ok(())
        );
        assert!(verify(&basic, &authorization(&[&credentials, &wrong]), BODY).is_err());
    }

    #[test]
    fn hmac_accepts_each_rotated_secret_and_rejects_tampering() {
        let config = HmacVerify {
            secrets: secrets(&["old", "new"]),
            header: "x-signature".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            prefix: Some("sha256=".into()),
        };
        let method = Verify::Hmac(config);
        for secret in ["old", "new"] {
            let sig = format!(
                "sha256={}",
                hex::encode(sign(HmacAlgorithm::Sha256, secret, BODY))
            );
            assert_eq!(
                verify(&method, &headers(&[("x-signature", &sig)]), BODY),
                Ok(())
            );
            assert_eq!(
                verify(
                    &method,
                    &headers(&[("x-signature", &sig)]),
                    b"{\"event\":\"entry.publisH\"}"
                ),
                Err(VerifyError::BadSignature("x-signature".into()))
            );
        }
        let wrong = format!(
            "sha256={}",
            hex::encode(sign(HmacAlgorithm::Sha256, "other", BODY))
        );
        assert!(verify(&method, &headers(&[("x-signature", &wrong)]), BODY).is_err());
        let unprefixed = hex::encode(sign(HmacAlgorithm::Sha256, "new", BODY));
        let capitals = format!("SHA256={}", unprefixed.to_uppercase());
        assert_eq!(
            verify(&method, &headers(&[("x-signature", &capitals)]), BODY),
            Ok(())
        );
        assert_eq!(
            verify(&method, &headers(&[("x-signature", &unprefixed)]), BODY),
            Err(VerifyError::Malformed("x-signature".into()))
        );
        assert_eq!(
            verify(&method, &headers(&[]), BODY),
            Err(VerifyError::MissingHeader("x-signature".into()))
        );
    }

    #[test]
    fn hmac_algorithms_and_encodings() {
        for algorithm in [
            HmacAlgorithm::Sha1,
            HmacAlgorithm::Sha256,
            HmacAlgorithm::Sha512,
        ] {
            for encoding in [SignatureEncoding::Hex, SignatureEncoding::Base64] {
                let raw = sign(algorithm, "k", BODY);
                let value = match encoding {
                    SignatureEncoding::Hex => hex::encode(&raw),
                    SignatureEncoding::Base64 => STANDARD.encode(&raw),
                };
                let method = Verify::Hmac(HmacVerify {
                    secrets: secrets(&["k"]),
                    header: "sig".into(),
                    algorithm,
                    encoding,
                    prefix: None,
                });
                assert_eq!(
                    verify(&method, &headers(&[("sig", &value)]), BODY),
                    Ok(()),
                    "{algorithm:?} {encoding:?}"
                );
            }
        }
    }

    #[test]
    fn github_style_signature() {
        let method = Verify::Github {
            secrets: secrets(&["s3cret"]),
        };
        let sig = format!(
            "sha256={}",
            hex::encode(sign(HmacAlgorithm::Sha256, "s3cret", BODY))
        );
        assert_eq!(
            verify(&method, &headers(&[("x-hub-signature-256", &sig)]), BODY),
            Ok(())
        );
        let sha1 = format!(
            "sha1={}",
            hex::encode(sign(HmacAlgorithm::Sha1, "s3cret", BODY))
        );
        assert!(verify(&method, &headers(&[("x-hub-signature-256", &sha1)]), BODY).is_err());
    }

    #[test]
    fn token_and_basic() {
        let token = Verify::Token {
            header: "authorization".into(),
            values: secrets(&["Bearer abc"]),
        };
        assert_eq!(
            verify(&token, &headers(&[("authorization", "Bearer abc")]), BODY),
            Ok(())
        );
        assert!(verify(&token, &headers(&[("authorization", "Bearer abd")]), BODY).is_err());
        assert!(verify(&token, &headers(&[]), BODY).is_err());

        let basic = Verify::Basic {
            username: "jenkins".into(),
            passwords: secrets(&["pw"]),
        };
        let good = format!("Basic {}", STANDARD.encode("jenkins:pw"));
        let bad = format!("Basic {}", STANDARD.encode("jenkins:px"));
        assert_eq!(
            verify(&basic, &headers(&[("authorization", &good)]), BODY),
            Ok(())
        );
        assert_eq!(
            verify(&basic, &headers(&[("authorization", &bad)]), BODY),
            Err(VerifyError::BadBasic)
        );
        let missing = verify(&basic, &headers(&[]), BODY).unwrap_err();
        assert!(missing.wants_basic_challenge());
    }

    #[test]
    fn errors_never_carry_the_secret() {
        let method = Verify::Token {
            header: "x-token".into(),
            values: secrets(&["hunter2"]),
        };
        let err = verify(&method, &headers(&[("x-token", "hunter3")]), BODY).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter"));
    }

    #[test]
    fn contentful_signs_its_normalised_path_and_query() {
        // Computed with Contentful's toolkit rules: the query escaped as a
        // component, then the whole encoded as a URI.
        let table = [
            ("/hooks/contentful/acme-blog", "/hooks/contentful/acme-blog"),
            (
                "/hooks/contentful/acme-blog?env=prod",
                "/hooks/contentful/acme-blog?env%253Dprod",
            ),
            ("/h?a=1&b=2", "/h?a%253D1%2526b%253D2"),
            ("/h?x=%41 y?z", "/h?x%253D%252541%2520y"),
            ("/h%20x?", "/h%2520x"),
            ("/h?q=caf%C3%A9", "/h?q%253Dcaf%2525C3%2525A9"),
        ];
        for (arrived, signed) in table {
            assert_eq!(schemes::contentful_path(arrived), signed, "{arrived}");
        }

        let now_ms = crate::clock::now_ms();
        let timestamp = now_ms.to_string();
        let method = Verify::Contentful(crate::config::TimedSecrets {
            secrets: secrets(&["s"]),
            tolerance: std::time::Duration::from_secs(30),
        });
        let signed_headers = "x-contentful-signed-headers,x-contentful-timestamp";
        let canonical = format!(
            "POST\n/hooks/c?env%253Dprod\nx-contentful-signed-headers:{signed_headers};x-contentful-timestamp:{timestamp}\n{}",
            String::from_utf8_lossy(BODY)
        );
        let signature = hex::encode(sign(HmacAlgorithm::Sha256, "s", canonical.as_bytes()));
        let headers = headers(&[
            ("x-contentful-signature", &signature),
            ("x-contentful-signed-headers", signed_headers),
            ("x-contentful-timestamp", &timestamp),
        ]);
        let at = |path| {
            verify_request(
                &method,
                &Request {
                    method: "POST",
                    path,
                    headers: &headers,
                    body: BODY,
                    now_ms,
                },
            )
        };
        assert_eq!(at("/hooks/c?env=prod"), Ok(()));
        assert!(at("/hooks/c?env=test").is_err());
    }

    /// Ghost's header holds one signature and one time, so copies of it
    /// that differ fail whichever comes first; Stripe's holds a list of
    /// signatures, one of which must match, so copies add to the list,
    /// but not a second time.
    #[test]
    fn copies_of_a_ghost_or_stripe_header_are_read_as_their_schemes_allow() {
        let timed = || crate::config::TimedSecrets {
            secrets: secrets(&["s"]),
            tolerance: std::time::Duration::from_secs(300),
        };
        let now_ms = crate::clock::now_ms();
        let ghost = Verify::Ghost(timed());
        let t = now_ms.to_string();
        let signed = [BODY, t.as_bytes()].concat();
        let good = format!(
            "sha256={}, t={t}",
            hex::encode(sign(HmacAlgorithm::Sha256, "s", &signed))
        );
        let bad = format!("sha256={}, t={t}", "0".repeat(64));
        let other_time = format!(
            "sha256={}, t={}",
            hex::encode(sign(HmacAlgorithm::Sha256, "s", &signed)),
            now_ms - 1
        );
        let ghost_with = |copies: &[&str]| headers(&[("x-ghost-signature", &copies.join(", "))]);
        assert_eq!(verify(&ghost, &ghost_with(&[&good]), BODY), Ok(()));
        assert_eq!(verify(&ghost, &ghost_with(&[&good, &good]), BODY), Ok(()));
        for copies in [
            [good.as_str(), bad.as_str()],
            [bad.as_str(), good.as_str()],
            [good.as_str(), other_time.as_str()],
        ] {
            assert_eq!(
                verify(&ghost, &ghost_with(&copies), BODY),
                Err(VerifyError::Malformed("x-ghost-signature".into())),
                "{copies:?}"
            );
        }

        let stripe = Verify::Stripe(timed());
        let secs = (now_ms / 1000).to_string();
        let v1 = |secret: &str, t: &str| {
            let signed = [t.as_bytes(), b".", BODY].concat();
            hex::encode(sign(HmacAlgorithm::Sha256, secret, &signed))
        };
        let good = format!("t={secs},v1={}", v1("s", &secs));
        let rolled = format!("t={secs},v1={}", v1("old", &secs));
        let stripe_with = |copies: &[&str]| headers(&[("stripe-signature", &copies.join(", "))]);
        assert_eq!(
            verify(&stripe, &stripe_with(&[&rolled, &good]), BODY),
            Ok(())
        );
        assert!(verify(&stripe, &stripe_with(&[&rolled, &rolled]), BODY).is_err());
        let earlier = (now_ms / 1000 - 1).to_string();
        let other_time = format!("t={earlier},v1={}", v1("s", &earlier));
        assert_eq!(
            verify(&stripe, &stripe_with(&[&other_time, &good]), BODY),
            Err(VerifyError::Malformed("stripe-signature".into()))
        );
    }
}
