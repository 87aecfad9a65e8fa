//! From a raw request to the template context, and from a rendered plan to
//! the jobs the store keeps. Pure: the HTTP handler, `render` and
//! `redeliver` all go through these functions, so a webhook is understood the
//! same way whichever door it comes in by.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Route, Verify};
use crate::routing::{DispatchRequest, RenderedTarget};
use crate::store::{EncodedRequest, NewJob, StoredRequest};
use crate::template::{BodyShape, Context};

/// The body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body is not valid UTF-8")]
    NotUtf8,
    // Each refusal already says what is wrong with the envelope.
    #[error("{0}")]
    Sns(crate::verify::sns::SnsRefusal),
}

/// A request a sender makes about the webhook itself rather than about an
/// event. It is answered at once, and never stored or relayed: relayed, it
/// would start a workflow run that no event asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderCheck {
    /// S3's `s3:TestEvent`, sent once when a notification configuration is
    /// saved.
    S3TestEvent,
    /// GitHub's `ping`, sent when a webhook is created.
    GitHubPing,
    /// Slack's `url_verification`: Slack saves an Events API request URL
    /// only once the answer carries this challenge back.
    SlackChallenge(String),
}

/// Which [`SenderCheck`] an authenticated request is, if any. `message` is
/// the envelope's parsed `Message` on `sns` routes; otherwise the raw body
/// is read, since the parsed body holds only what the route's templates
/// read. Only a sender's own header or its documented body says so: a body
/// alone decides nothing, except on a route that only Slack can sign.
pub fn sender_check(
    route: &Route,
    message: Option<&Value>,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Option<SenderCheck> {
    if crate::verify::sns::carries_s3_test_event(message, headers, body) {
        return Some(SenderCheck::S3TestEvent);
    }
    if headers
        .get("x-github-event")
        .is_some_and(|event| event.trim() == "ping")
    {
        return Some(SenderCheck::GitHubPing);
    }
    if matches!(route.verify, Verify::Slack(_)) {
        #[derive(Deserialize)]
        struct Verification<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
            challenge: String,
        }
        let verification = serde_json::from_slice::<Verification>(body).ok()?;
        return (verification.kind == "url_verification")
            .then_some(SenderCheck::SlackChallenge(verification.challenge));
    }
    None
}

/// An authenticated request, read: either a sender's check of the webhook
/// itself, answered and never stored, or an event for the route.
#[derive(Clone, Debug, PartialEq)]
pub enum Received {
    SenderCheck(SenderCheck),
    Event(Parsed),
}

/// Reads an authenticated request as `serve` does, for the webhook handler
/// and `render` alike. `envelope` is the SNS envelope of an `sns` route,
/// parsed already to check its signature; its `Message` becomes the body
/// rather than being parsed a second time.
pub fn read(
    route: &Route,
    envelope: Option<&crate::verify::sns::Envelope>,
    content_type: Option<&str>,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<Received, BodyError> {
    let parsed = match envelope {
        Some(envelope) => from_envelope(envelope),
        None => parse_for_route(route, content_type, body)?,
    };
    // An envelope's Message is parsed whole already; a bare body is read
    // from its bytes, since the parsed body holds only what the route's
    // templates read.
    let message = envelope.map(|_| &parsed.body);
    Ok(match sender_check(route, message, headers, body) {
        Some(check) => Received::SenderCheck(check),
        None => Received::Event(parsed),
    })
}

/// A request body as templates see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// `body` in the template context.
    pub body: Value,
    /// `sns` in the template context: the envelope on `sns` routes.
    pub sns: Option<Value>,
}

impl From<Value> for Parsed {
    fn from(body: Value) -> Parsed {
        Parsed { body, sns: None }
    }
}

/// Parses a body the way its route's sender writes it: on `sns` routes the
/// envelope's `Message` becomes the body (parsed when it is JSON) and the
/// envelope goes to `sns`; elsewhere [`parse_body`].
pub fn parse_for_route(
    route: &Route,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Parsed, BodyError> {
    if let Verify::Sns(_) = route.verify {
        let envelope = crate::verify::sns::Envelope::parse(body).map_err(BodyError::Sns)?;
        return Ok(from_envelope(&envelope));
    }
    Ok(Parsed {
        body: parse_body_shaped(content_type, body, &route.body_shape)?,
        sns: None,
    })
}

/// The body of an `sns` route from its already parsed envelope: the
/// `Message` (parsed when it is JSON) as `body`, the envelope as `sns`.
pub fn from_envelope(envelope: &crate::verify::sns::Envelope) -> Parsed {
    let (body, sns) = crate::verify::sns::unwrap(envelope);
    Parsed {
        body,
        sns: Some(sns),
    }
}

/// The content coding a `Content-Encoding` value names, when it is one
/// other than `identity`: such a body is refused with `415` (decision 47),
/// by `serve` and, in what it says, by `render`.
pub fn compressed_coding(content_encoding: &str) -> Option<&str> {
    let coding = content_encoding.trim();
    (!coding.is_empty() && !coding.eq_ignore_ascii_case("identity")).then_some(coding)
}

/// The most bytes of header names and values and query string a webhook
/// may have, as a proxy in front commonly allows (nginx's default). They
/// are stored with the body, and `max_body` bounds only the body: without
/// this, one webhook could store the whole request head actix reads, about
/// 128 KiB, on a route whose bodies are held to 1 KiB (decision 63).
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// What a request's query string and headers (each given as the length of
/// its name and value) come to, when that passes [`MAX_HEAD_BYTES`]: such a
/// request is refused with `431`, by `serve` and, in what it says, by
/// `render`.
pub fn oversized_head(query: &str, header_sizes: impl IntoIterator<Item = usize>) -> Option<usize> {
    let bytes = query.len() + header_sizes.into_iter().sum::<usize>();
    (bytes > MAX_HEAD_BYTES).then_some(bytes)
}

/// Adds a header to the map templates see: a repeated header's values are
/// joined with ", ", as HTTP allows.
pub fn append_header(headers: &mut BTreeMap<String, String>, name: &str, value: &str) {
    headers
        .entry(name.to_ascii_lowercase())
        .and_modify(|existing| {
            existing.push_str(", ");
            existing.push_str(value);
        })
        .or_insert_with(|| value.to_owned());
}

/// Headers that carry credentials; templates never see them, and they are
/// never stored.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// The headers without those that carry credentials (`authorization`,
/// `proxy-authorization`, `cookie` and a `token` route's header), and with
/// the route's signature header emptied. Templates are given these, once
/// the request is verified, and they are what is stored, so that no payload
/// or dedupe key can carry a sender's secret to GitHub, and the store holds
/// neither a secret nor a signed request that could be sent again.
pub fn without_credentials(
    route: &Route,
    mut headers: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let copies = hmac_signature(route, &headers);
    headers.retain(|name, value| {
        let a_copy = copies
            .as_deref()
            .is_some_and(|signature| value.contains(signature));
        if a_copy || crate::verify::is_signature_header(&route.verify, name) {
            value.clear();
        }
        !CREDENTIAL_HEADERS.contains(&name.as_str())
            && !crate::verify::is_token_header(&route.verify, name)
    });
    headers
}

/// The signature an `hmac` route read, without its prefix, when it is
/// long enough to be told apart from other values. Senders such
/// as Gitea send the same signature under several names
/// (`X-Gitea-Signature`, `X-Gogs-Signature`, `X-Hub-Signature-256`); any
/// header that carries it would let whoever reads the stored request send
/// it again under the name the route checks.
fn hmac_signature(route: &Route, headers: &BTreeMap<String, String>) -> Option<String> {
    let Verify::Hmac(config) = &route.verify else {
        return None;
    };
    let value = headers.get(&config.header)?.trim();
    let signature = crate::verify::without_prefix(value, config.prefix.as_deref()).unwrap_or(value);
    // A hex SHA-1 is 40 characters, its base64 28: far from any value
    // another header would hold by chance.
    (signature.len() >= 16).then(|| signature.to_owned())
}

/// Builds the stored form of a request and encodes it. `headers` are those
/// templates saw: [`without_credentials`] has already left out every header
/// that carries a credential.
pub fn stored_request(
    content_type: Option<&str>,
    query: &[(String, String)],
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> EncodedRequest {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (body, body_base64) = match std::str::from_utf8(body) {
        Ok(text) => (Cow::Borrowed(text), false),
        Err(_) => (Cow::Owned(STANDARD.encode(body)), true),
    };
    // Room for the body with a few escapes, the headers and the field names.
    let capacity = body.len() * 9 / 8
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
        + 128;
    EncodedRequest::encode(
        &StoredRequestRef {
            content_type,
            query,
            headers,
            body,
            body_base64,
        },
        capacity,
    )
}

/// A [`StoredRequest`] made of borrowed parts. Its fields and their order
/// are those of `StoredRequest`, so that both encode to the same JSON; a
/// test decodes one as the other.
#[derive(Serialize)]
struct StoredRequestRef<'a> {
    content_type: Option<&'a str>,
    query: &'a [(String, String)],
    headers: Vec<(&'a str, &'a str)>,
    body: Cow<'a, str>,
    body_base64: bool,
}

/// The raw body bytes of a stored request.
pub fn stored_body(request: &StoredRequest) -> Vec<u8> {
    if request.body_base64 {
        STANDARD.decode(&request.body).unwrap_or_default()
    } else {
        request.body.as_bytes().to_vec()
    }
}

/// Parses a body by its content type: JSON as is; form-encoded as an object
/// of fields whose `payload` field, when it holds JSON, is parsed (GitHub
/// and Slack send form bodies so); an empty body is `null`. Anything else is
/// tried as JSON and otherwise kept as a string.
pub fn parse_body(content_type: Option<&str>, body: &[u8]) -> Result<Value, BodyError> {
    parse_body_shaped(content_type, body, &BodyShape::whole())
}

/// [`parse_body`], keeping of a JSON body only what `shape` names: the
/// parts the route's templates read. The rest is checked exactly as a whole
/// parse checks it but never copied, which spares the allocations of every
/// field no template reads.
pub fn parse_body_shaped(
    content_type: Option<&str>,
    body: &[u8],
    shape: &BodyShape,
) -> Result<Value, BodyError> {
    let mime = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .unwrap_or_default();
    // A UTF-8 byte order mark, which .NET's `Encoding.UTF8` and PowerShell
    // write, is not part of the text (RFC 8259 allows ignoring it). The
    // signature was checked over the bytes as they came.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    if mime == "application/x-www-form-urlencoded" {
        // `curl -d` labels whatever it sends a form, and JSON sent so was
        // read as one field named by the whole text: a route dispatched
        // nulls, or its `when` skipped it, while `render` showed the right
        // dispatch. A body that opens with `{` or `[` is a JSON object or
        // array, as no form's first field name does, and is read (or
        // refused) as JSON.
        if matches!(body.trim_ascii_start().first(), Some(b'{' | b'[')) {
            return parse_json_shaped(body, shape).map_err(|e| BodyError::Json(e.to_string()));
        }
        let mut fields = Map::new();
        for (key, value) in url::form_urlencoded::parse(body) {
            // A `payload` field holding JSON (GitHub, Slack and Jenkins
            // plugins send such forms) is parsed; any other value, in it or
            // in another field, is kept as text, like a body that is not
            // JSON.
            let value = match key.as_ref() {
                "payload" => serde_json::from_str(&value)
                    .unwrap_or_else(|_| Value::String(value.into_owned())),
                _ => Value::String(value.into_owned()),
            };
            fields.insert(key.into_owned(), value);
        }
        return Ok(Value::Object(fields));
    }
    // A body labelled JSON that is not is refused, so that the sender
    // learns of it. One with no label at all (a pipeline's step posting
    // text, with nothing set) is taken as it comes, like one of another
    // type: JSON when it parses, text otherwise.
    let is_json = mime == "application/json" || mime.ends_with("+json") || mime.ends_with("/json");
    match parse_json_shaped(body, shape) {
        Ok(value) => Ok(value),
        Err(e) if is_json => Err(BodyError::Json(e.to_string())),
        Err(_) => std::str::from_utf8(body)
            .map(|text| Value::String(text.to_string()))
            .map_err(|_| BodyError::NotUtf8),
    }
}

/// Parses JSON to `shape`. A body the shaped parse refuses is parsed whole
/// again, so that the error is word for word the one a whole parse gives.
fn parse_json_shaped(body: &[u8], shape: &BodyShape) -> Result<Value, serde_json::Error> {
    if shape.whole {
        return serde_json::from_slice(body);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let shaped = Shaped(shape)
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    shaped.or_else(|_| serde_json::from_slice(body))
}

/// Deserializes a value to a [`BodyShape`]: an object keeps the keys the
/// shape names, and anything else is built exactly as [`Value`] builds it.
struct Shaped<'s>(&'s BodyShape);

impl<'de> DeserializeSeed<'de> for Shaped<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.whole {
            return Value::deserialize(deserializer);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shaped<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            match self.0.keys.get(key.as_ref()) {
                Some(inner) => {
                    kept.insert(key.into_owned(), map.next_value_seed(Shaped(inner))?);
                }
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }
}

/// Reads a value and drops it. Unlike serde's `IgnoredAny`, which only
/// follows the grammar, it goes through the parser as a `Value` would: the
/// UTF-8 and surrogate pairs of strings, the range of numbers and the
/// nesting limit are checked, so a body is refused exactly when a whole
/// parse refuses it. Strings without escapes are read in place, not copied.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry_seed(Skip, Skip)?.is_some() {}
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The parameters of a query string, as templates see them in `query`.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// Builds the template context of a request from its parsed body (a plain
/// `Value` converts into a [`Parsed`] without an SNS envelope).
pub fn context(
    route: &str,
    parsed: impl Into<Parsed>,
    headers: BTreeMap<String, String>,
    query: &[(String, String)],
    delivery_id: &str,
    received_at_ms: i64,
) -> Context {
    let parsed = parsed.into();
    Context {
        body: parsed.body,
        headers,
        query: query.iter().cloned().collect(),
        route: route.to_string(),
        delivery_id: delivery_id.to_string(),
        received_at: crate::clock::rfc3339(received_at_ms),
        sns: parsed.sns,
    }
}

/// The jobs for a rendered plan, one per target.
pub fn jobs(targets: &[RenderedTarget]) -> Vec<NewJob> {
    targets
        .iter()
        .map(|t| NewJob {
            target_index: t.target_index,
            repo: t.repo.clone(),
            label: t.request.label().to_string(),
            path: t.request.path(&t.repo),
            body: t.request.body_json(),
        })
        .collect()
}

/// The answer to an accepted webhook: the delivery and what it will send.
/// Fields are in the order of their names, as a `serde_json::Value` would
/// write them.
#[derive(Debug, Serialize)]
pub struct AcceptedAnswer<'a> {
    /// How many webhooks were merged into this delivery by debounce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesced: Option<u32>,
    pub delivery_id: &'a str,
    pub dispatches: Vec<DispatchSummary<'a>>,
}

/// One entry of the `dispatches` list of an answer.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum DispatchSummary<'a> {
    Repository {
        event_type: &'a str,
        repo: &'a str,
    },
    Workflow {
        #[serde(rename = "ref")]
        git_ref: &'a str,
        repo: &'a str,
        workflow: &'a str,
    },
}

/// The `dispatches` list of a 202 answer.
pub fn dispatch_summary(targets: &[RenderedTarget]) -> Vec<DispatchSummary<'_>> {
    targets
        .iter()
        .map(|t| match &t.request {
            DispatchRequest::Repository { event_type, .. } => DispatchSummary::Repository {
                event_type,
                repo: &t.repo,
            },
            DispatchRequest::Workflow {
                workflow, git_ref, ..
            } => DispatchSummary::Workflow {
                git_ref,
                repo: &t.repo,
                workflow,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_parse_by_content_type() {
        type Case<'a> = (Option<&'a str>, &'a [u8], Result<Value, ()>);
        let cases: Vec<Case> = vec![
            (Some("application/json"), br#"{"a":1}"#, Ok(json!({"a": 1}))),
            (
                Some("application/json; charset=utf-8"),
                br#"[1,true]"#,
                Ok(json!([1, true])),
            ),
            (
                Some("application/vnd.contentful.management.v1+json"),
                br#"{"b":2}"#,
                Ok(json!({"b": 2})),
            ),
            (None, br#"{"c":3}"#, Ok(json!({"c": 3}))),
            // With no content type, text that is not JSON is text.
            (None, b"hello world", Ok(json!("hello world"))),
            (None, b"{nope", Ok(json!("{nope"))),
            (None, b"\xff", Err(())),
            (
                Some("text/plain; charset=UTF-8"),
                br#"{"d":4}"#,
                Ok(json!({"d": 4})),
            ),
            (Some("text/plain"), b"hello", Ok(json!("hello"))),
            // A UTF-8 byte order mark is not part of the text.
            (
                Some("application/json"),
                b"\xEF\xBB\xBF{\"e\":5}",
                Ok(json!({"e": 5})),
            ),
            (
                Some("text/plain"),
                b"\xEF\xBB\xBF{\"f\":6}",
                Ok(json!({"f": 6})),
            ),
            (Some("application/json"), b"{nope", Err(())),
            (Some("application/json"), b"", Ok(Value::Null)),
            (
                Some("application/x-www-form-urlencoded"),
                b"payload=%7B%22ref%22%3A%22main%22%7D&x=a+b",
                Ok(json!({"payload": {"ref": "main"}, "x": "a b"})),
            ),
            (
                Some("application/x-www-form-urlencoded"),
                b"payload=%7Bnope",
                Ok(json!({"payload": "{nope"})),
            ),
            // JSON labelled a form, as `curl -d` sends it, is JSON.
            (
                Some("application/x-www-form-urlencoded"),
                b" {\"a\":1}",
                Ok(json!({"a": 1})),
            ),
            (
                Some("application/x-www-form-urlencoded"),
                b"{\"a\":1}x",
                Err(()),
            ),
        ];
        for (content_type, body, expected) in cases {
            let got = parse_body(content_type, body).map_err(|_| ());
            assert_eq!(
                got,
                expected,
                "{content_type:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn each_methods_signature_header_is_emptied() {
        let cases = [
            (
                "hmac: {secret: s, header: X-Sig}",
                &["x-sig", "x-hub-signature-256", "x-hub-signature"][..],
            ),
            (
                "github: {secret: s}",
                &["x-hub-signature-256", "x-hub-signature"],
            ),
            (
                "standard_webhooks: {secret: whsec_c2VjcmV0}",
                &["webhook-signature", "svix-signature"],
            ),
            ("contentful: {secret: s}", &["x-contentful-signature"]),
            ("sanity: {secret: s}", &["sanity-webhook-signature"]),
            ("ghost: {secret: s}", &["x-ghost-signature"]),
            ("stripe: {secret: s}", &["stripe-signature"]),
            ("slack: {secret: s}", &["x-slack-signature"]),
        ];
        for (verify, signatures) in cases {
            let route = route_verified_by(verify, "e");
            let mut headers: BTreeMap<String, String> = signatures
                .iter()
                .map(|name| (name.to_string(), "sha256=0a1b".to_owned()))
                .collect();
            headers.insert("x-event".to_owned(), "publish".to_owned());
            headers.insert("webhook-id".to_owned(), "msg_1".to_owned());
            let seen = without_credentials(&route, headers);
            for name in signatures {
                assert_eq!(
                    seen.get(*name).map(String::as_str),
                    Some(""),
                    "{verify} {name}"
                );
            }
            assert_eq!(seen["x-event"], "publish", "{verify}");
            assert_eq!(seen["webhook-id"], "msg_1", "{verify}");
            assert_eq!(seen.len(), signatures.len() + 2, "{verify}");
        }
    }

    /// The one route of a file whose route is verified by `verify` (a
    /// flow mapping's inside) and dispatches with `event_type`.
    fn route_verified_by(verify: &str, event_type: &str) -> Route {
        let text = format!(
            "github:\n  token: t\nroutes:\n  - id: r\n    verify: {{{verify}}}\n    dispatch:\n      - repo: acme/blog\n        event_type: {event_type}\n"
        );
        crate::config::load("routes.yaml", &text, &|_| None)
            .unwrap_or_else(|e| panic!("{verify}: {e}"))
            .config
            .routes
            .remove(0)
    }

    #[test]
    fn an_hmac_signature_sent_under_other_names_too_is_emptied_in_each() {
        let route = route_verified_by("hmac: {secret: s, header: X-Gitea-Signature}", "e");
        let signature = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let headers: BTreeMap<String, String> = [
            ("x-gitea-signature", signature.to_owned()),
            ("x-gogs-signature", signature.to_owned()),
            ("x-hub-signature-256", format!("sha256={signature}")),
            ("x-gitea-event", "push".to_owned()),
            ("x-gitea-delivery", "4f1b2b0b".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let seen = without_credentials(&route, headers);
        for name in [
            "x-gitea-signature",
            "x-gogs-signature",
            "x-hub-signature-256",
        ] {
            assert_eq!(seen[name], "", "{name}");
        }
        assert_eq!(seen["x-gitea-event"], "push");
        assert_eq!(seen["x-gitea-delivery"], "4f1b2b0b");
    }

    #[test]
    fn senders_checks_are_told_by_the_senders_header_or_on_slack_routes_only() {
        let route = |verify: &str| route_verified_by(verify, "e");
        let (github, slack) = (route("github: {secret: s}"), route("slack: {secret: s}"));
        let none = BTreeMap::new();
        let ping: BTreeMap<String, String> =
            [("x-github-event".to_owned(), "ping".to_owned())].into();
        let push: BTreeMap<String, String> =
            [("x-github-event".to_owned(), "push".to_owned())].into();
        let verification = br#"{"type":"url_verification","challenge":"c-1","token":"t"}"#;
        type Case<'a> = (
            &'a Route,
            &'a BTreeMap<String, String>,
            &'a [u8],
            Option<SenderCheck>,
        );
        let cases: [Case; 7] = [
            (&github, &ping, b"{}", Some(SenderCheck::GitHubPing)),
            (&github, &push, b"{}", None),
            (
                &slack,
                &none,
                verification,
                Some(SenderCheck::SlackChallenge("c-1".into())),
            ),
            // Only a route Slack signs answers a challenge: elsewhere the
            // body is a webhook like any other.
            (&github, &none, verification, None),
            (
                &slack,
                &none,
                br#"{"type":"event_callback","challenge":"c-1"}"#,
                None,
            ),
            (&slack, &none, br#"{"type":"url_verification"}"#, None),
            (&slack, &none, b"payload=%7B%7D", None),
        ];
        for (route, headers, body, expected) in cases {
            assert_eq!(
                sender_check(route, None, headers, body),
                expected,
                "{headers:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_request_is_parsed_before_it_is_told_a_senders_check() {
        let route = &route_verified_by("github: {secret: s}", "\"e-{{ body.a }}\"");
        let event = |name: &str| -> BTreeMap<String, String> {
            [("x-github-event".to_owned(), name.to_owned())].into()
        };
        let json = Some("application/json");
        assert_eq!(
            read(route, None, json, &event("ping"), b"{}"),
            Ok(Received::SenderCheck(SenderCheck::GitHubPing))
        );
        assert_eq!(
            read(route, None, json, &event("push"), br#"{"a":1}"#),
            Ok(Received::Event(Parsed::from(json!({"a": 1}))))
        );
        // `serve` answers 400 to a body it cannot parse, a ping or not.
        assert!(matches!(
            read(route, None, json, &event("ping"), b"{nope"),
            Err(BodyError::Json(_))
        ));
    }

    #[test]
    fn stored_requests_leave_out_credentials_and_decode_as_stored_request() {
        let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify:\n      token:\n        header: X-Relay-Token\n        value: v\n    dispatch:\n      - repo: acme/blog\n        event_type: e\n";
        let config = crate::config::load("routes.yaml", text, &|_| None)
            .unwrap()
            .config;
        let route = &config.routes[0];
        let headers: BTreeMap<String, String> = [
            ("authorization", "Bearer secret"),
            ("cookie", "session=secret"),
            ("content-type", "application/json"),
            ("x-relay-token", "secret"),
            ("x-event", "say \"hi\""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let query = vec![("a".to_owned(), "1".to_owned())];
        let cases: [(&[u8], &str, bool); 3] = [
            (
                br#"{"q":"\"x\"","e":"\u00e9"}"#,
                r#"{"q":"\"x\"","e":"\u00e9"}"#,
                false,
            ),
            (b"", "", false),
            (&[0xff, 0x00, 0x41], "/wBB", true),
        ];
        for (body, stored_text, base64) in cases {
            let seen = without_credentials(route, headers.clone());
            let encoded = stored_request(Some("application/json"), &query, &seen, body);
            let expected = StoredRequest {
                content_type: Some("application/json".to_owned()),
                query: query.clone(),
                headers: vec![
                    ("content-type".to_owned(), "application/json".to_owned()),
                    ("x-event".to_owned(), "say \"hi\"".to_owned()),
                ],
                body: stored_text.to_owned(),
                body_base64: base64,
            };
            let decoded: StoredRequest = serde_json::from_str(encoded.as_str()).unwrap();
            assert_eq!(decoded, expected);
            assert_eq!(encoded, EncodedRequest::from(&expected));
            assert_eq!(stored_body(&decoded), body);
            assert!(!encoded.as_str().contains("secret"), "{}", encoded.as_str());
        }
    }

    #[test]
    fn shaped_parsing_keeps_what_is_read_and_refuses_what_whole_parsing_refuses() {
        // Reads `body.a` and `body.b.c`.
        let shape = BodyShape {
            whole: false,
            keys: [
                ("a".to_owned(), BodyShape::whole()),
                (
                    "b".to_owned(),
                    BodyShape {
                        whole: false,
                        keys: [("c".to_owned(), BodyShape::whole())].into(),
                    },
                ),
            ]
            .into(),
        };
        let parse = |text: &[u8]| parse_body_shaped(Some("application/json"), text, &shape);
        let kept: [(&[u8], Value); 8] = [
            (
                br#"{"a":[1,{"x":2}],"b":{"c":"k","d":1},"z":{"deep":["zzz"]}}"#,
                json!({"a": [1, {"x": 2}], "b": {"c": "k"}}),
            ),
            (br#"{"b":5,"a":null}"#, json!({"b": 5, "a": null})),
            (br#"[{"a":1,"z":2}]"#, json!([{"a": 1, "z": 2}])),
            (br#""text""#, json!("text")),
            (br#"{"a":1,"a":2.5}"#, json!({"a": 2.5})),
            (br#"{"\u0061":true,"\u007a":1}"#, json!({"a": true})),
            (br#"{"b":{"c":1},"b":{"d":2}}"#, json!({"b": {}})),
            (b" {} ", json!({})),
        ];
        for (text, expected) in kept {
            assert_eq!(
                parse(text),
                Ok(expected),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let nested = format!("{{\"a\":1,\"z\":{}{}}}", "[".repeat(200), "]".repeat(200));
        let refused: [&[u8]; 10] = [
            br#"{"a":1,"z":"\ud800"}"#,
            br#"{"a":1,"z":1e400}"#,
            nested.as_bytes(),
            b"{\"z\":\"\x01\"}",
            br#"{"z":"\q"}"#,
            br#"{"z":1.}"#,
            br#"{"a":1} x"#,
            br#"{"z":[1,2}"#,
            b"{\"z\":\"\xff\"}",
            br#"{"z":"#,
        ];
        for text in refused {
            let whole = parse_body(Some("application/json"), text);
            assert!(whole.is_err(), "{}", String::from_utf8_lossy(text));
            assert_eq!(parse(text), whole, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn accepted_answers_list_every_dispatch() {
        let targets = [
            RenderedTarget {
                target_index: 0,
                repo: "acme/site".to_owned(),
                request: DispatchRequest::Repository {
                    event_type: "deploy".to_owned(),
                    client_payload: Map::new(),
                },
            },
            RenderedTarget {
                target_index: 1,
                repo: "acme/docs".to_owned(),
                request: DispatchRequest::Workflow {
                    workflow: "build.yml".to_owned(),
                    git_ref: "main".to_owned(),
                    inputs: Map::new(),
                },
            },
        ];
        let dispatches = json!([
            {"repo": "acme/site", "event_type": "deploy"},
            {"repo": "acme/docs", "workflow": "build.yml", "ref": "main"},
        ]);
        let cases = [
            (
                None,
                json!({"delivery_id": "d-1", "dispatches": dispatches}),
            ),
            (
                Some(4),
                json!({"delivery_id": "d-1", "dispatches": dispatches, "coalesced": 4}),
            ),
        ];
        for (coalesced, expected) in cases {
            let answer = AcceptedAnswer {
                coalesced,
                delivery_id: "d-1",
                dispatches: dispatch_summary(&targets),
            };
            // The same text as the Value, whose keys are sorted.
            assert_eq!(
                serde_json::to_string(&answer).unwrap(),
                expected.to_string()
            );
        }
    }
}
