//! The vendor schemes that sign a timestamp together with the body:
//! Standard Webhooks, Contentful, Sanity, Ghost, Stripe and Slack. Each one
//! builds the exact bytes its sender signs (see docs/sources/), computes
//! HMAC-SHA256 with every configured secret, compares in constant time and
//! then checks that the signed timestamp is within the route's tolerance.
//! Standard Webhooks may also sign asymmetrically (`v1a`, ed25519), checked
//! against the configured public keys.
//!
//! The signature is checked before the timestamp so that the log says
//! "stale" only for a request that really came from the sender.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{Request, StandardWebhooksKey, VerifyError, header_value, standard_webhooks_key};
use crate::config::TimedSecrets;

type HmacSha256 = Hmac<sha2::Sha256>;

/// The headers these schemes carry their signatures in.
pub(super) const CONTENTFUL_SIGNATURE: &str = "x-contentful-signature";
pub(super) const SANITY_SIGNATURE: &str = "sanity-webhook-signature";
pub(super) const GHOST_SIGNATURE: &str = "x-ghost-signature";
pub(super) const STRIPE_SIGNATURE: &str = "stripe-signature";
pub(super) const SLACK_SIGNATURE: &str = "x-slack-signature";

/// HMAC-SHA256 of the concatenation of `parts`.
fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// True when any secret's HMAC over `parts` equals any of `candidates`.
/// Every pair is compared, in constant time each, so the time taken does
/// not tell which secret or which candidate came close.
fn any_matches(
    keys: impl Iterator<Item = Vec<u8>>,
    parts: &[&[u8]],
    candidates: &[Vec<u8>],
) -> bool {
    let mut found = false;
    for key in keys {
        let expected = mac(&key, parts);
        for candidate in candidates {
            found |= expected.clone().verify_slice(candidate).is_ok();
        }
    }
    found
}

fn utf8_keys(timed: &TimedSecrets) -> impl Iterator<Item = Vec<u8>> + '_ {
    timed
        .secrets
        .iter()
        .map(|secret| secret.expose().as_bytes().to_vec())
}

/// Parses a decimal timestamp header value.
fn timestamp(text: &str, header: &str) -> Result<i64, VerifyError> {
    let text = text.trim();
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed(header.to_string()));
    }
    text.parse()
        .map_err(|_| VerifyError::Malformed(header.to_string()))
}

/// Checks a signed timestamp in milliseconds against the clock, either
/// way: a timestamp far in the future is as suspicious as an old one.
fn fresh(
    signed_ms: i64,
    request: &Request<'_>,
    timed: &TimedSecrets,
    header: &str,
) -> Result<(), VerifyError> {
    let tolerance = crate::clock::duration_ms(timed.tolerance);
    let within = |signed_ms: i64| request.now_ms.abs_diff(signed_ms) <= tolerance.unsigned_abs();
    if within(signed_ms) {
        return Ok(());
    }
    // A sender that writes the other unit is the usual cause of a skew
    // of years; saying so saves comparing clocks.
    let hint = if within(signed_ms / 1000) {
        Some("it reads as milliseconds; this method's timestamp is in seconds")
    } else if within(signed_ms.saturating_mul(1000)) {
        Some("it reads as seconds; this method's timestamp is in milliseconds")
    } else {
        None
    };
    Err(VerifyError::Stale {
        header: header.to_string(),
        skew_ms: signed_ms.saturating_sub(request.now_ms),
        tolerance_ms: tolerance,
        hint,
    })
}

fn decode_hex(text: &str, header: &str) -> Result<Vec<u8>, VerifyError> {
    hex::decode(text.trim()).map_err(|_| VerifyError::Malformed(header.to_string()))
}

/// The most `v1a` entries a Standard Webhooks signature header may carry.
const MAX_ASYMMETRIC_SIGNATURES: usize = 4;

/// Standard Webhooks: a space-separated list of `<version>,<base64>`
/// entries (several during a key rotation) over `id.ts.body`. `v1` is
/// `HMAC(key, …)` with the key after `whsec_`; `v1a` is an ed25519 signature
/// checked against the public keys (`whpk_`) of the route's trust list.
/// Unknown versions are ignored. Svix sends the same under `svix-*` names.
pub(super) fn standard_webhooks(
    timed: &TimedSecrets,
    request: &Request<'_>,
) -> Result<(), VerifyError> {
    let names = super::standard_webhooks_headers(request.headers);
    let (ts_header, sig_header) = (names.timestamp, names.signature);
    let id = header_value(request.headers, names.id)?;
    let ts_text = header_value(request.headers, ts_header)?;
    let signatures = header_value(request.headers, sig_header)?;
    let ts = timestamp(ts_text, ts_header)?;
    let mut symmetric: Vec<Vec<u8>> = Vec::new();
    let mut asymmetric: Vec<Vec<u8>> = Vec::new();
    // Entries are space-delimited. A sender that repeats the header gets
    // its lines joined with ", ", which leaves a comma on every entry but
    // the last; it is not part of the base64.
    let entries = signatures
        .split(' ')
        .map(|entry| entry.strip_suffix(',').unwrap_or(entry));
    for (version, signature) in entries.filter_map(|e| e.split_once(',')) {
        let list = match version {
            "v1" => &mut symmetric,
            "v1a" => &mut asymmetric,
            _ => continue,
        };
        if let Ok(decoded) = STANDARD.decode(signature) {
            list.push(decoded);
        }
    }
    if symmetric.is_empty() && asymmetric.is_empty() {
        return Err(VerifyError::Malformed(sig_header.to_string()));
    }
    // Each ed25519 check hashes the whole body again, on the HTTP worker:
    // a header packed with a thousand made-up entries would cost seconds of
    // CPU for one unauthenticated request. A sender signs with one key, or
    // two during a rotation.
    if asymmetric.len() > MAX_ASYMMETRIC_SIGNATURES {
        return Err(VerifyError::Malformed(sig_header.to_string()));
    }
    let keys: Vec<StandardWebhooksKey> = timed
        .secrets
        .iter()
        .filter_map(|secret| standard_webhooks_key(secret).ok())
        .collect();
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", request.body];
    let hmac_keys = keys.iter().filter_map(|key| match key {
        StandardWebhooksKey::Symmetric(key) => Some(key.clone()),
        StandardWebhooksKey::Public(_) => None,
    });
    let mut found = any_matches(hmac_keys, &parts, &symmetric);
    if !asymmetric.is_empty() {
        let signed = parts.concat();
        for key in &keys {
            if let StandardWebhooksKey::Public(key) = key {
                let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key);
                found |= asymmetric
                    .iter()
                    .any(|signature| key.verify(&signed, signature).is_ok());
            }
        }
    }
    if !found {
        return Err(VerifyError::BadSignature(sig_header.to_string()));
    }
    fresh(ts.saturating_mul(1000), request, timed, ts_header)
}

/// Contentful: hex `HMAC(secret, METHOD\nPATH\nk:v;k:v\nBODY)` over the
/// headers named in `x-contentful-signed-headers`, which must include the
/// timestamp so that it cannot be changed without breaking the signature.
pub(super) fn contentful(timed: &TimedSecrets, request: &Request<'_>) -> Result<(), VerifyError> {
    const SIGNATURE: &str = CONTENTFUL_SIGNATURE;
    const SIGNED: &str = "x-contentful-signed-headers";
    const TIMESTAMP: &str = "x-contentful-timestamp";
    let signature = decode_hex(header_value(request.headers, SIGNATURE)?, SIGNATURE)?;
    let signed = header_value(request.headers, SIGNED)?;
    let ts = timestamp(header_value(request.headers, TIMESTAMP)?, TIMESTAMP)?;
    let mut names: Vec<String> = signed
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names.dedup();
    if !names.iter().any(|name| name == TIMESTAMP) {
        return Err(VerifyError::Malformed(SIGNED.to_string()));
    }
    let mut canonical_headers = Vec::with_capacity(names.len());
    for name in &names {
        let value = header_value(request.headers, name)?;
        canonical_headers.push(format!("{name}:{value}"));
    }
    let canonical_headers = canonical_headers.join(";");
    let path = contentful_path(request.path);
    let parts: [&[u8]; 7] = [
        request.method.as_bytes(),
        b"\n",
        path.as_bytes(),
        b"\n",
        canonical_headers.as_bytes(),
        b"\n",
        request.body,
    ];
    if !any_matches(utf8_keys(timed), &parts, &[signature]) {
        return Err(VerifyError::BadSignature(SIGNATURE.to_string()));
    }
    fresh(ts, request, timed, TIMESTAMP)
}

/// What JavaScript's `encodeURIComponent` (and Node's `querystring.escape`)
/// leave as they are.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// What JavaScript's `encodeURI` leaves as it is: the above and the
/// characters that delimit a URI's parts.
const URI: &AsciiSet = &URI_COMPONENT
    .remove(b';')
    .remove(b',')
    .remove(b'/')
    .remove(b'?')
    .remove(b':')
    .remove(b'@')
    .remove(b'&')
    .remove(b'=')
    .remove(b'+')
    .remove(b'$')
    .remove(b'#');

/// The path Contentful signs, from the path and query as they arrived: its
/// toolkit's `getNormalizedEncodedURI`, which splits at `?`, keeps only the
/// first two parts, escapes the query as a component and then encodes the
/// whole as a URI. A query is thus escaped twice (`?env=prod` is signed as
/// `?env%253Dprod`), and a path without one is unchanged.
pub(super) fn contentful_path(path_and_query: &str) -> String {
    let mut parts = path_and_query.split('?');
    let mut joined = parts.next().unwrap_or_default().to_string();
    if let Some(search) = parts.next().filter(|search| !search.is_empty()) {
        joined.push('?');
        joined.extend(utf8_percent_encode(search, URI_COMPONENT));
    }
    utf8_percent_encode(&joined, URI).to_string()
}

/// Sanity: `sanity-webhook-signature: t=<ms>,v1=<base64url>` over `t.body`.
pub(super) fn sanity(timed: &TimedSecrets, request: &Request<'_>) -> Result<(), VerifyError> {
    const HEADER: &str = SANITY_SIGNATURE;
    let value = header_value(request.headers, HEADER)?;
    let malformed = || VerifyError::Malformed(HEADER.to_string());
    // The toolkit's pattern is `^t=(\d+)[, ]+v1=([^, ]+)$`.
    let rest = value.strip_prefix("t=").ok_or_else(malformed)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (ts_text, rest) = rest.split_at(digits);
    let rest = rest.trim_start_matches([',', ' ']);
    let sig_text = rest.strip_prefix("v1=").ok_or_else(malformed)?;
    if sig_text.is_empty() || sig_text.contains([',', ' ']) {
        return Err(malformed());
    }
    let ts = timestamp(ts_text, HEADER)?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig_text.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let parts: [&[u8]; 3] = [ts_text.as_bytes(), b".", request.body];
    if !any_matches(utf8_keys(timed), &parts, &[signature]) {
        return Err(VerifyError::BadSignature(HEADER.to_string()));
    }
    fresh(ts, request, timed, HEADER)
}

/// Ghost: `X-Ghost-Signature: sha256=<hex>, t=<ms>`, the HMAC over the body
/// immediately followed by the timestamp.
pub(super) fn ghost(timed: &TimedSecrets, request: &Request<'_>) -> Result<(), VerifyError> {
    const HEADER: &str = GHOST_SIGNATURE;
    let value = header_value(request.headers, HEADER)?;
    let malformed = || VerifyError::Malformed(HEADER.to_string());
    // Ghost sends one signature and one time. A header repeated on the way
    // arrives with its copies joined: identical copies say the same once,
    // and copies that differ are refused rather than one of them chosen.
    let mut signature = None;
    let mut ts_text = None;
    for part in value.split(',').map(str::trim) {
        if let Some(sig) = part.strip_prefix("sha256=") {
            let sig = decode_hex(sig, HEADER)?;
            if signature
                .replace(sig.clone())
                .is_some_and(|seen| seen != sig)
            {
                return Err(malformed());
            }
        } else if let Some(ts) = part.strip_prefix("t=")
            && ts_text.replace(ts).is_some_and(|seen| seen != ts)
        {
            return Err(malformed());
        }
    }
    let (Some(signature), Some(ts_text)) = (signature, ts_text) else {
        return Err(malformed());
    };
    let ts = timestamp(ts_text, HEADER)?;
    let parts: [&[u8]; 2] = [request.body, ts_text.as_bytes()];
    if !any_matches(utf8_keys(timed), &parts, &[signature]) {
        return Err(VerifyError::BadSignature(HEADER.to_string()));
    }
    fresh(ts, request, timed, HEADER)
}

/// Stripe: `Stripe-Signature: t=<s>,v1=<hex>[,v1=…][,v0=…]` over `t.body`;
/// the whole `whsec_…` string is the key, unlike Standard Webhooks.
pub(super) fn stripe(timed: &TimedSecrets, request: &Request<'_>) -> Result<(), VerifyError> {
    const HEADER: &str = STRIPE_SIGNATURE;
    let value = header_value(request.headers, HEADER)?;
    let mut ts_text = None;
    let mut candidates = Vec::new();
    for (key, item) in value
        .split(',')
        .filter_map(|part| part.trim().split_once('='))
    {
        // One time is signed; a header repeated on the way with copies of
        // other times is refused rather than one of them chosen. Its `v1`
        // signatures are a list of which one must match, as Stripe sends
        // while a secret is rolled, and copies add to it. v0 is Stripe's
        // test-mode scheme; it is ignored on purpose.
        if key == "t" {
            if ts_text.replace(item).is_some_and(|seen| seen != item) {
                return Err(VerifyError::Malformed(HEADER.to_string()));
            }
        } else if key == "v1"
            && let Ok(sig) = hex::decode(item)
        {
            candidates.push(sig);
        }
    }
    let Some(ts_text) = ts_text.filter(|_| !candidates.is_empty()) else {
        return Err(VerifyError::Malformed(HEADER.to_string()));
    };
    let ts = timestamp(ts_text, HEADER)?;
    let parts: [&[u8]; 3] = [ts_text.as_bytes(), b".", request.body];
    if !any_matches(utf8_keys(timed), &parts, &candidates) {
        return Err(VerifyError::BadSignature(HEADER.to_string()));
    }
    fresh(ts.saturating_mul(1000), request, timed, HEADER)
}

/// Slack: `X-Slack-Signature: v0=<hex>` over `v0:<ts>:<body>`, the
/// timestamp in `X-Slack-Request-Timestamp`.
pub(super) fn slack(timed: &TimedSecrets, request: &Request<'_>) -> Result<(), VerifyError> {
    const SIGNATURE: &str = SLACK_SIGNATURE;
    const TIMESTAMP: &str = "x-slack-request-timestamp";
    let ts_text = header_value(request.headers, TIMESTAMP)?;
    let ts = timestamp(ts_text, TIMESTAMP)?;
    let value = header_value(request.headers, SIGNATURE)?;
    let signature = value
        .strip_prefix("v0=")
        .ok_or_else(|| VerifyError::Malformed(SIGNATURE.to_string()))
        .and_then(|sig| decode_hex(sig, SIGNATURE))?;
    let parts: [&[u8]; 4] = [b"v0:", ts_text.as_bytes(), b":", request.body];
    if !any_matches(utf8_keys(timed), &parts, &[signature]) {
        return Err(VerifyError::BadSignature(SIGNATURE.to_string()));
    }
    fresh(ts.saturating_mul(1000), request, timed, TIMESTAMP)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::fresh;
    use crate::config::TimedSecrets;
    use crate::verify::{Request, VerifyError};

    /// A stale timestamp's refusal says how far off it is, which way, and
    /// when the skew is that of a timestamp in the other unit, says so.
    #[test]
    fn a_stale_timestamp_says_how_far_off_it_is() {
        let now_ms = 1_795_168_800_000;
        let headers = BTreeMap::new();
        let request = Request {
            method: "POST",
            path: "/hooks/h",
            headers: &headers,
            body: b"",
            now_ms,
        };
        let timed = TimedSecrets {
            secrets: Vec::new(),
            tolerance: Duration::from_secs(300),
        };
        let refusal = |signed_ms: i64| match fresh(signed_ms, &request, &timed, "x-ts") {
            Err(e @ VerifyError::Stale { .. }) => e.to_string(),
            other => panic!("{signed_ms}: {other:?}"),
        };
        assert_eq!(fresh(now_ms - 299_000, &request, &timed, "x-ts"), Ok(()));
        assert_eq!(fresh(now_ms + 299_000, &request, &timed, "x-ts"), Ok(()));
        for (signed_ms, expected) in [
            (
                now_ms - 301_000,
                "the timestamp in `x-ts` is 5 min behind the relay's clock, beyond the route's tolerance of 5 min",
            ),
            (now_ms + 90_000_000, "is 25 h ahead of the relay's clock"),
            (now_ms - 86_400_000 * 400, "is 400 days behind"),
            (
                now_ms * 1000,
                "(it reads as milliseconds; this method's timestamp is in seconds)",
            ),
            (
                now_ms / 1000,
                "(it reads as seconds; this method's timestamp is in milliseconds)",
            ),
        ] {
            let message = refusal(signed_ms);
            assert!(message.contains(expected), "{message}");
        }
    }
}
