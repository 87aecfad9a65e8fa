//! Amazon SNS envelopes: parsing, the rules for `SigningCertURL`, the
//! documented string-to-sign and the RSA signature check (version 1 is
//! SHA1withRSA, version 2 SHA256withRSA, both PKCS #1 v1.5).
//!
//! Pure like the rest of `verify`: obtaining the certificate is IO, so the
//! HTTP edge fetches it (or reads the pinned `certificates:` files), parses
//! it with [`SigningKey::from_pem`] and hands the keys to
//! [`verify_signature`]. The certificate URL rules are checked before any
//! fetch, so the relay never downloads a key from a host an attacker
//! chose.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde_json::{Map, Value};
use sha1::Digest;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

use crate::config::SnsVerify;

/// Why an SNS message was refused; for the log only.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnsRefusal {
    #[error("the body is not an SNS envelope ({0})")]
    NotAnEnvelope(&'static str),
    #[error("message type `{0}` is not one SNS sends")]
    UnknownType(String),
    #[error("signature version `{0}` is not 1 or 2")]
    UnknownSignatureVersion(String),
    #[error("SigningCertURL {0}")]
    CertUrl(&'static str),
    #[error("topic `{0}` is not in this route's topic_arns")]
    Topic(String),
    #[error("the signature is not valid base64")]
    SignatureEncoding,
    #[error("the signature does not match the signing certificate")]
    BadSignature,
    #[error("no signing certificate is available: {0}")]
    NoCertificate(String),
    #[error("Timestamp is not an RFC 3339 time")]
    BadTimestamp,
    #[error("the envelope was signed {0} minutes ago; SNS stops retrying after an hour")]
    TooOld(i64),
}

impl SnsRefusal {
    /// The refusal's kind, from a fixed set (see [`super::VerifyError::kind`]).
    pub fn kind(&self) -> &'static str {
        match self {
            SnsRefusal::NotAnEnvelope(_) => "sns_not_an_envelope",
            SnsRefusal::UnknownType(_) => "sns_unknown_type",
            SnsRefusal::UnknownSignatureVersion(_) => "sns_signature_version",
            SnsRefusal::CertUrl(_) => "sns_cert_url",
            SnsRefusal::Topic(_) => "sns_topic",
            SnsRefusal::SignatureEncoding => "sns_signature_encoding",
            SnsRefusal::BadSignature => "sns_bad_signature",
            SnsRefusal::NoCertificate(_) => "sns_no_certificate",
            SnsRefusal::BadTimestamp => "sns_bad_timestamp",
            SnsRefusal::TooOld(_) => "sns_too_old",
        }
    }
}

/// The oldest envelope taken: SNS retries an HTTP(S) delivery for at most
/// an hour (a hard limit of its delivery policies), and one more hour
/// allows for clocks that disagree. An older envelope, signed or not, was
/// kept and sent again by someone other than SNS, possibly after its
/// `MessageId` was pruned from the dedupe keys.
pub const MAX_AGE_MS: i64 = 2 * 3600 * 1000;

/// The three kinds of message SNS posts to an HTTP subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// A published message.
    Notification,
    /// Sent once when the subscription is created; confirm it by GET of
    /// `SubscribeURL`.
    SubscriptionConfirmation,
    /// Sent when the subscription is deleted; its `SubscribeURL` would
    /// subscribe again, so it is never visited.
    UnsubscribeConfirmation,
}

/// A parsed SNS envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// The message type.
    pub kind: MessageType,
    /// `SignatureVersion`: 1 or 2.
    pub signature_version: u8,
    /// The whole envelope as sent, for the template context (`sns`).
    pub fields: Map<String, Value>,
}

impl Envelope {
    /// Parses the JSON envelope SNS posts (as `text/plain`).
    pub fn parse(body: &[u8]) -> Result<Envelope, SnsRefusal> {
        let value: Value =
            serde_json::from_slice(body).map_err(|_| SnsRefusal::NotAnEnvelope("not JSON"))?;
        let Value::Object(fields) = value else {
            return Err(SnsRefusal::NotAnEnvelope("not a JSON object"));
        };
        let text = |name: &'static str| match fields.get(name) {
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(SnsRefusal::NotAnEnvelope("a field is not a string")),
            None => Err(SnsRefusal::NotAnEnvelope("a required field is missing")),
        };
        let kind = match text("Type")? {
            "Notification" => MessageType::Notification,
            "SubscriptionConfirmation" => MessageType::SubscriptionConfirmation,
            "UnsubscribeConfirmation" => MessageType::UnsubscribeConfirmation,
            other => return Err(SnsRefusal::UnknownType(truncate(other))),
        };
        let signature_version = match text("SignatureVersion")? {
            "1" => 1,
            "2" => 2,
            other => return Err(SnsRefusal::UnknownSignatureVersion(truncate(other))),
        };
        let mut required = vec![
            "MessageId",
            "TopicArn",
            "Message",
            "Timestamp",
            "Signature",
            "SigningCertURL",
        ];
        if kind != MessageType::Notification {
            required.extend(["SubscribeURL", "Token"]);
        }
        for name in required {
            text(name)?;
        }
        if let Some(subject) = fields.get("Subject")
            && !subject.is_string()
        {
            return Err(SnsRefusal::NotAnEnvelope("a field is not a string"));
        }
        Ok(Envelope {
            kind,
            signature_version,
            fields,
        })
    }

    /// A string field; present for every field [`Envelope::parse`]
    /// requires.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// `MessageId`, the same on every retry: the default dedupe key.
    pub fn message_id(&self) -> &str {
        self.field("MessageId").unwrap_or_default()
    }

    /// The `SubscribeURL` of a subscription confirmation, when it is an
    /// http(s) URL: the only kind that can be visited to confirm it.
    pub fn subscribe_url(&self) -> Option<&str> {
        let url = self.field("SubscribeURL")?;
        url::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "https" | "http"))
            .then_some(url)
    }

    /// `TopicArn`.
    pub fn topic_arn(&self) -> &str {
        self.field("TopicArn").unwrap_or_default()
    }

    /// `SigningCertURL`.
    pub fn signing_cert_url(&self) -> &str {
        self.field("SigningCertURL").unwrap_or_default()
    }

    /// Refuses an envelope whose `Timestamp` is more than [`MAX_AGE_MS`]
    /// before `now_ms`.
    pub fn check_age(&self, now_ms: i64) -> Result<(), SnsRefusal> {
        let signed_at_ms =
            crate::clock::parse_rfc3339_ms(self.field("Timestamp").unwrap_or_default())
                .ok_or(SnsRefusal::BadTimestamp)?;
        let age_ms = now_ms.saturating_sub(signed_at_ms);
        if age_ms > MAX_AGE_MS {
            return Err(SnsRefusal::TooOld(age_ms / 60_000));
        }
        Ok(())
    }

    /// The checks that need no certificate: the certificate URL's rules
    /// and the route's topic allow-list.
    pub fn check_unsigned_parts(&self, config: &SnsVerify) -> Result<(), SnsRefusal> {
        check_cert_url(self.signing_cert_url())?;
        if !config.topic_arns.iter().any(|arn| arn == self.topic_arn()) {
            return Err(SnsRefusal::Topic(truncate(self.topic_arn())));
        }
        Ok(())
    }

    /// The documented string to sign: `Name\nValue\n` for each signed key
    /// that is present, in byte order, with JSON-decoded values.
    pub fn string_to_sign(&self) -> String {
        let keys: &[&str] = match self.kind {
            MessageType::Notification => &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ],
            _ => &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ],
        };
        let mut out = String::new();
        for key in keys {
            if let Some(value) = self.field(key) {
                out.push_str(key);
                out.push('\n');
                out.push_str(value);
                out.push('\n');
            }
        }
        out
    }
}

/// The most bytes of a sender's value an SNS refusal quotes.
const MAX_QUOTED: usize = 120;

fn truncate(text: &str) -> String {
    crate::text::truncate(text, MAX_QUOTED)
}

/// The rules of the AWS validators for `SigningCertURL`: https, a host of
/// the form `sns.<region>.amazonaws.com` (or `.com.cn`), a URL ending in
/// `.pem`. Without the host rule any S3 bucket on amazonaws.com would do.
pub fn check_cert_url(text: &str) -> Result<(), SnsRefusal> {
    let url = url::Url::parse(text).map_err(|_| SnsRefusal::CertUrl("is not a URL"))?;
    if url.scheme() != "https" {
        return Err(SnsRefusal::CertUrl("is not https"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(SnsRefusal::CertUrl("carries credentials or a port"));
    }
    let host = url.host_str().unwrap_or_default();
    let region = host
        .strip_prefix("sns.")
        .and_then(|rest| {
            rest.strip_suffix(".amazonaws.com")
                .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
        })
        .unwrap_or_default();
    let region_ok = region.len() >= 3
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !region_ok {
        return Err(SnsRefusal::CertUrl("is not on sns.<region>.amazonaws.com"));
    }
    // The whole URL must end in `.pem`, as AWS's validators check it: a
    // query or a fragment after the path's `.pem` is refused too.
    if !url.path().ends_with(".pem") || url.query().is_some() || url.fragment().is_some() {
        return Err(SnsRefusal::CertUrl("does not end in .pem"));
    }
    Ok(())
}

/// An RSA public key taken from a signing certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKey(RsaPublicKey);

/// A certificate that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a usable RSA certificate: {0}")]
pub struct CertError(String);

impl SigningKey {
    /// Reads the RSA public key of a PEM certificate.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, CertError> {
        let cert = Certificate::from_pem(pem).map_err(|e| CertError(e.to_string()))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| CertError(e.to_string()))?;
        RsaPublicKey::from_public_key_der(&spki)
            .map(SigningKey)
            .map_err(|e| CertError(e.to_string()))
    }
}

/// Checks the envelope's signature with any of `keys`.
pub fn verify_signature(envelope: &Envelope, keys: &[SigningKey]) -> Result<(), SnsRefusal> {
    if keys.is_empty() {
        return Err(SnsRefusal::NoCertificate("none configured".into()));
    }
    let signature = STANDARD
        .decode(envelope.field("Signature").unwrap_or_default())
        .map_err(|_| SnsRefusal::SignatureEncoding)?;
    let text = envelope.string_to_sign();
    let ok = keys
        .iter()
        .any(|SigningKey(key)| match envelope.signature_version {
            1 => key
                .verify(
                    Pkcs1v15Sign::new::<sha1::Sha1>(),
                    &sha1::Sha1::digest(text.as_bytes()),
                    &signature,
                )
                .is_ok(),
            _ => key
                .verify(
                    Pkcs1v15Sign::new::<sha2::Sha256>(),
                    &sha2::Sha256::digest(text.as_bytes()),
                    &signature,
                )
                .is_ok(),
        });
    if ok {
        Ok(())
    } else {
        Err(SnsRefusal::BadSignature)
    }
}

/// The parsed `Message` (JSON when it is JSON, otherwise the text) and the
/// envelope, as the template context shows them.
pub fn unwrap(envelope: &Envelope) -> (Value, Value) {
    let message = envelope.field("Message").unwrap_or_default();
    let body = serde_json::from_str(message).unwrap_or_else(|_| Value::String(message.to_string()));
    (body, Value::Object(envelope.fields.clone()))
}

/// Whether a request carries the `s3:TestEvent` S3 sends once when a
/// notification configuration is saved: it has no records and is
/// acknowledged, not relayed. It comes in the `Message` of an SNS envelope
/// (`message`, as [`unwrap`] parsed it), or bare to a subscription with raw
/// message delivery, which any method may verify; SNS's header then says
/// who sent it.
pub fn carries_s3_test_event(
    message: Option<&Value>,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> bool {
    match message {
        Some(message) => message.get("Event").and_then(Value::as_str) == Some("s3:TestEvent"),
        None => delivered_by_sns(headers) && is_s3_test_event(body),
    }
}

/// Whether `body` is S3's test event.
fn is_s3_test_event(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(rename = "Event", borrow)]
        event: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Event>(body)
        .ok()
        .and_then(|e| e.event)
        .is_some_and(|event| event == "s3:TestEvent")
}

/// True when SNS delivered the request: it names the message type in a
/// header on every delivery, enveloped or raw. `headers` has lower-cased
/// names.
pub fn delivered_by_sns(headers: &BTreeMap<String, String>) -> bool {
    headers.contains_key("x-amz-sns-message-type")
}

/// True when the `x-amz-sns-message-type` header names a subscription
/// message (`SubscriptionConfirmation` or `UnsubscribeConfirmation`). SNS
/// sends these as signed envelopes even to a subscription with raw message
/// delivery, whose notifications carry no envelope at all. `headers` has
/// lower-cased names.
pub fn announces_subscription_message(headers: &BTreeMap<String, String>) -> bool {
    headers.get("x-amz-sns-message-type").is_some_and(|kind| {
        let kind = kind.trim();
        kind == "SubscriptionConfirmation" || kind == "UnsubscribeConfirmation"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_topics_pass_and_an_empty_list_passes_none() {
        let envelope = Envelope::parse(
            br#"{"Type": "Notification", "MessageId": "m", "Message": "{}",
                 "TopicArn": "arn:aws:sns:eu-west-1:111122223333:uploads",
                 "Timestamp": "2026-11-20T09:59:59.734Z", "SignatureVersion": "1", "Signature": "",
                 "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123.pem"}"#,
        )
        .unwrap();
        let listing = |arns: &[&str]| SnsVerify {
            topic_arns: arns.iter().map(|arn| arn.to_string()).collect(),
            certificates: Vec::new(),
        };
        assert_eq!(
            envelope
                .check_unsigned_parts(&listing(&["arn:aws:sns:eu-west-1:111122223333:uploads"])),
            Ok(())
        );
        for arns in [&["arn:aws:sns:eu-west-1:999999999999:uploads"][..], &[]] {
            assert!(
                matches!(
                    envelope.check_unsigned_parts(&listing(arns)),
                    Err(SnsRefusal::Topic(_))
                ),
                "{arns:?}"
            );
        }
    }

    #[test]
    fn an_envelope_older_than_sns_retries_is_refused() {
        let at = |timestamp: &str| {
            Envelope::parse(
                format!(
                    r#"{{"Type": "Notification", "MessageId": "m", "Message": "{{}}",
                     "TopicArn": "arn:aws:sns:eu-west-1:111122223333:uploads",
                     "Timestamp": "{timestamp}", "SignatureVersion": "1", "Signature": "",
                     "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/x.pem"}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        // 2026-11-20T10:00:00Z
        let signed_ms = 1_795_168_800_000;
        let envelope = at("2026-11-20T10:00:00.000Z");
        assert_eq!(envelope.check_age(signed_ms), Ok(()));
        assert_eq!(envelope.check_age(signed_ms + MAX_AGE_MS), Ok(()));
        assert_eq!(
            envelope.check_age(signed_ms + MAX_AGE_MS + 60_000),
            Err(SnsRefusal::TooOld(121))
        );
        // Signed ahead of this clock: a clock behind SNS's, not a replay.
        assert_eq!(envelope.check_age(signed_ms - 600_000), Ok(()));
        assert_eq!(
            at("yesterday").check_age(signed_ms),
            Err(SnsRefusal::BadTimestamp)
        );
    }
}
