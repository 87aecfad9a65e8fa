//! `POST /hooks/{route}`: verify, parse, render, commit, answer.
//!
//! The handler never calls GitHub. Its work ends at a durable commit; only
//! then does it answer 202 and wake the dispatch worker.

use std::collections::BTreeMap;
use std::net::IpAddr;

use actix_web::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use governor::clock::{Clock, DefaultClock};

use super::body;
use super::error::{IngressError, Methods};
use super::state::AppState;
use crate::clock::now_ms;
use crate::config::Verify;
use crate::github::outbound;
use crate::inbound::{self, Received, SenderCheck};
use crate::routing::{self, Plan};
use crate::store::{Accepted, DebounceWindow, NewDelivery, StoreError};
use crate::telemetry::{SnsSubscription, WebhookOutcome};
use crate::verify;
use crate::verify::sns::{self, Envelope, MessageType, SigningKey};

pub async fn head(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, IngressError> {
    // MinIO checks a target with HEAD before using it; answering 200 for a
    // configured route is all it needs. Never 410: some senders delete the
    // webhook on 410.
    configured(&state, path)?;
    Ok(HttpResponse::Ok().finish())
}

/// Any other method on a webhook URL: 405 naming the methods a configured
/// route takes, so that a URL checked in a browser does not look missing.
pub async fn other_method(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, IngressError> {
    configured(&state, path)?;
    Err(IngressError::MethodNotAllowed(Methods::Webhook))
}

/// Answers 404 unless `path` names a configured route.
fn configured(state: &AppState, path: web::Path<String>) -> Result<(), IngressError> {
    let routes = state.routes();
    match routes.route(&path) {
        Some(_) => Ok(()),
        None => Err(routes.unknown(&path)),
    }
}

pub async fn post(
    state: web::Data<AppState>,
    path: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, IngressError> {
    let route_id = path.into_inner();
    let routes = state.routes();
    let Some((index, route)) = routes.route(&route_id) else {
        // A sender with a mistyped URL, or a route renamed or removed by a
        // reload, would otherwise fail without a trace; some senders give
        // a webhook up after a few 404s. The name is the sender's, so it is
        // shortened and escaped, and one throttle serves every name.
        state.metrics.unknown_route();
        if let Some(unlogged) = state.refusal_to_log("unknown_route", "") {
            let requested = super::state::shortened(&route_id);
            tracing::warn!(requested = ?requested, unlogged, "Refused a webhook to a route routes.yaml does not have");
        }
        return Err(routes.unknown(&route_id));
    };
    let result = accept(&state, &routes, index, &request, payload).await;
    let outcome = match &result {
        Ok((_, outcome)) => Some(*outcome),
        Err(e) => e.outcome(),
    };
    // The other refusals are logged where they are found.
    let unlogged_refusal = match &result {
        Err(IngressError::TooLarge { limit }) => Some((
            "max_body",
            format!("Refused a webhook body over the route's max_body of {limit} bytes"),
        )),
        Err(IngressError::HeadTooLarge { limit, .. }) => Some((
            "head_size",
            format!("Refused a webhook whose headers and query string pass {limit} bytes"),
        )),
        Err(IngressError::RateLimited { .. }) => Some((
            "rate_limit",
            "Refused webhooks over the route's rate_limit".to_string(),
        )),
        _ => None,
    };
    if let Some((kind, message)) = unlogged_refusal
        && let Some(unlogged) = state.refusal_to_log(kind, &route.id)
    {
        tracing::warn!(route = %route.id, unlogged, "{message}");
    }
    if let Some(outcome) = outcome {
        state.metrics.webhook(&route.id, outcome);
    }
    let slack = matches!(route.verify, Verify::Slack(_));
    result.map(|(response, _)| match response.status().is_success() {
        // Slack takes only `200 OK` as an interaction's acknowledgement,
        // and reads a body as an answer to the user (a modal's
        // `response_action`): anything else shows the user an error and
        // invites a second click. The delivery id is in the log line.
        true if slack && response.extensions().get::<SlackReadsBody>().is_none() => {
            HttpResponse::Ok().finish()
        }
        _ => response,
    })
}

/// Marks a response on a `slack` route whose body Slack must read: the
/// answer to its URL verification.
struct SlackReadsBody;

/// The answer to a [`SenderCheck`]: `200`, and nothing stored or sent.
fn answer_sender_check(route: &str, check: SenderCheck) -> HttpResponse {
    match check {
        SenderCheck::S3TestEvent => {
            tracing::info!(route, "Acknowledged S3's s3:TestEvent without relaying it");
        }
        SenderCheck::GitHubPing => {
            tracing::info!(route, "Acknowledged GitHub's ping without relaying it");
        }
        SenderCheck::SlackChallenge(challenge) => {
            tracing::info!(route, "Answered Slack's URL verification");
            let mut response =
                HttpResponse::Ok().json(serde_json::json!({ "challenge": challenge }));
            response.extensions_mut().insert(SlackReadsBody);
            return response;
        }
    }
    HttpResponse::Ok().json(serde_json::json!({"skipped": true}))
}

/// A webhook, step by step: admitted, its body read and verified, rate
/// limited, parsed, planned, stored, answered. Each step answers for
/// itself, refusing with the error its status comes from.
async fn accept(
    state: &AppState,
    routes: &super::state::LiveRoutes,
    index: usize,
    request: &HttpRequest,
    payload: web::Payload,
) -> Result<(HttpResponse, WebhookOutcome), IngressError> {
    let route = &routes.config.routes[index];
    admit(state, routes, route, request)?;
    check_head_size(request)?;
    let headers = header_map(request);
    let body = read_verified_body(state, routes, route, request, &headers, payload).await?;
    let body = body.bytes.as_slice();
    let envelope = sns_envelope(state, routes, index, &headers, body).await?;
    check_rate_limit(routes, index)?;
    if let Some(envelope) = &envelope
        && let Some(answer) = answer_subscription_message(state, &route.id, envelope).await?
    {
        return Ok(answer);
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = match read(
        state,
        route,
        envelope.as_ref(),
        content_type,
        &headers,
        body,
    )? {
        Received::SenderCheck(check) => {
            return Ok((
                answer_sender_check(&route.id, check),
                WebhookOutcome::Skipped,
            ));
        }
        Received::Event(parsed) => parsed,
    };
    let query = inbound::query_pairs(request.query_string());
    let delivery_id = uuid::Uuid::now_v7().to_string();
    let received_at_ms = now_ms();
    let ctx = inbound::context(
        &route.id,
        parsed,
        inbound::without_credentials(route, headers),
        &query,
        &delivery_id,
        received_at_ms,
    );
    let (dedupe_key, plan) = routing::plan_with_key(route, &ctx);
    let (jobs, failure, targets) = match plan {
        Ok(Plan::Skipped) => {
            // Nothing is stored for it, so this line is where an operator
            // sees that a webhook came and why nothing was sent.
            tracing::info!(route = %route.id, "Skipped a webhook: `when` is false");
            return Ok((
                HttpResponse::Ok().json(serde_json::json!({"skipped": true})),
                WebhookOutcome::Skipped,
            ));
        }
        Ok(Plan::Dispatch(targets)) => (inbound::jobs(&targets), None, targets),
        Err(e) => (Vec::new(), Some(e.to_string()), Vec::new()),
    };
    // Only a webhook that will be stored pays for its stored form.
    let stored = inbound::stored_request(content_type, &query, &ctx.headers, body);
    let delivery = NewDelivery {
        id: delivery_id,
        route: route.id.clone(),
        received_at_ms,
        dedupe_key,
        request: stored,
        jobs,
        failure,
        debounce: route.debounce.as_ref().map(|d| DebounceWindow {
            window_ms: crate::clock::duration_ms(d.window),
            max_wait_ms: crate::clock::duration_ms(d.max_wait),
        }),
    };
    store_and_answer(state, route, delivery, &targets).await
}

/// Refuses a webhook the relay will not look at: while it shuts down, or
/// from an address outside the route's `source_ips`.
fn admit(
    state: &AppState,
    routes: &super::state::LiveRoutes,
    route: &crate::config::Route,
    request: &HttpRequest,
) -> Result<(), IngressError> {
    if state.is_shutting_down() {
        return Err(IngressError::Unavailable(
            "the relay is shutting down; retry shortly".into(),
        ));
    }
    if route.source_ips.is_empty() {
        return Ok(());
    }
    let client = client_ip(request, &routes.config.server.trusted_proxies);
    if client.is_some_and(|ip| route.source_ips.iter().any(|net| net.contains(&ip))) {
        return Ok(());
    }
    if let Some(unlogged) = state.refusal_to_log("source_ips", &route.id) {
        tracing::warn!(route = %route.id, client = client.map(tracing::field::display), unlogged, "Refused a webhook from an address outside source_ips");
    }
    Err(IngressError::Forbidden)
}

/// Reads the body of a sender that proved itself with the route's
/// `verify`, and refuses a compressed one.
async fn read_verified_body<'a>(
    state: &'a AppState,
    routes: &super::state::LiveRoutes,
    route: &crate::config::Route,
    request: &HttpRequest,
    headers: &BTreeMap<String, String>,
    payload: web::Payload,
) -> Result<body::Body<'a>, IngressError> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let verify = |body: &[u8]| {
        let signed = verify::Request {
            method: request.method().as_str(),
            path: path_and_query,
            headers,
            body,
            now_ms: state.verify_now_ms(),
        };
        verify::verify_request(&route.verify, &signed).map_err(|e| {
            // Per kind, so that a forged signature does not hide a sender
            // whose clock is off.
            if let Some(unlogged) = state.refusal_to_log(e.kind(), &route.id) {
                tracing::warn!(route = %route.id, reason = %e, unlogged, "Refused a webhook that failed verification");
            }
            IngressError::Unauthorized {
                basic_challenge: e.wants_basic_challenge(),
            }
        })
    };
    // Credentials in headers alone (`token`, `basic`) are checked before
    // the body is read: a sender without them is refused at once, and its
    // body, up to `max_body`, never takes memory.
    let headers_only = verify::reads_headers_only(&route.verify);
    if headers_only {
        verify(&[])?;
    }
    let body = body::read(
        request,
        payload,
        &state.body_memory,
        route.max_body,
        routes.config.server.max_body_memory,
        routes.config.server.body_timeout,
    )
    .await
    .inspect_err(|e| {
        if matches!(e, IngressError::BodyMemoryFull)
            && let Some(unlogged) = state.refusal_to_log("max_body_memory", &route.id)
        {
            tracing::warn!(route = %route.id, held = state.body_memory.held(), unlogged, "Refused a webhook: the bodies in memory fill server.max_body_memory");
        }
    })?;
    if !headers_only {
        verify(&body.bytes)?;
    }
    // The relay reads bodies as sent; it does not decompress them. A
    // compressed body would otherwise be refused as unparseable, which
    // sends whoever reads the answer looking for a JSON error that is not
    // there. The check follows verification, so only a sender that proved
    // itself learns what the relay takes.
    if let Some(encoding) = content_encoding(request) {
        if let Some(unlogged) = state.refusal_to_log("content_encoding", &route.id) {
            tracing::warn!(route = %route.id, encoding = %encoding, unlogged, "Refused a compressed webhook body");
        }
        return Err(IngressError::UnsupportedEncoding(encoding));
    }
    Ok(body)
}

/// The SNS envelope of the body, verified, when the route takes SNS
/// messages.
async fn sns_envelope(
    state: &AppState,
    routes: &super::state::LiveRoutes,
    index: usize,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<Option<Envelope>, IngressError> {
    let route = &routes.config.routes[index];
    match &route.verify {
        Verify::Sns(_) => Ok(Some(verify_sns(state, routes, index, body).await?)),
        // SNS raw message delivery has no signed notifications, so such a
        // route verifies another way (`basic`), but the subscription's
        // confirmation still comes as a signed envelope. Taken for a
        // webhook, it would be dispatched and the subscription never
        // confirmed, so no notification would ever come.
        _ if sns::announces_subscription_message(headers) => {
            let envelope = verify_sns(state, routes, index, body).await?;
            if envelope.kind == MessageType::Notification {
                tracing::warn!(route = %route.id, "Refused an SNS notification sent as a subscription message");
                return Err(IngressError::BadRequest(
                    "x-amz-sns-message-type names a subscription message, but the envelope is a Notification".into(),
                ));
            }
            Ok(Some(envelope))
        }
        _ => Ok(None),
    }
}

/// Refuses a webhook over the route's `rate_limit`, saying when to retry.
fn check_rate_limit(routes: &super::state::LiveRoutes, index: usize) -> Result<(), IngressError> {
    let Some(limiter) = routes.limiter(index) else {
        return Ok(());
    };
    let Err(not_until) = limiter.check() else {
        return Ok(());
    };
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Err(IngressError::RateLimited {
        retry_after_secs: retry_after_secs.max(1),
    })
}

/// The answer to an SNS subscription message; `None` for a notification,
/// which is relayed.
async fn answer_subscription_message(
    state: &AppState,
    route: &str,
    envelope: &Envelope,
) -> Result<Option<(HttpResponse, WebhookOutcome)>, IngressError> {
    match envelope.kind {
        MessageType::Notification => Ok(None),
        MessageType::SubscriptionConfirmation => {
            confirm_subscription(state, route, envelope).await.map(Some)
        }
        MessageType::UnsubscribeConfirmation => {
            // Its SubscribeURL would subscribe again: log, count, and
            // leave it alone.
            tracing::info!(route, topic = %envelope.topic_arn(), "SNS subscription was deleted");
            state
                .metrics
                .sns_subscription(route, SnsSubscription::Unsubscribed);
            Ok(Some((
                HttpResponse::Ok().json(serde_json::json!({"skipped": true})),
                WebhookOutcome::Skipped,
            )))
        }
    }
}

/// The request as the route reads it ([`inbound::read`]). A body that
/// cannot be parsed is refused with 400, and logged: the sender proved
/// itself, so the operator must be able to see why its webhook was
/// refused, not only the sender.
fn read(
    state: &AppState,
    route: &crate::config::Route,
    envelope: Option<&Envelope>,
    content_type: Option<&str>,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<Received, IngressError> {
    inbound::read(route, envelope, content_type, headers, body).map_err(|e| {
        if let Some(unlogged) = state.refusal_to_log("parse", &route.id) {
            tracing::warn!(route = %route.id, reason = %e, unlogged, "Refused an authenticated webhook whose body could not be parsed");
        }
        IngressError::BadRequest(e.to_string())
    })
}

/// Commits the delivery, then answers: 202 once it is on disk (and the
/// worker is woken), 200 for a duplicate, 422 for one stored as failed.
async fn store_and_answer(
    state: &AppState,
    route: &crate::config::Route,
    delivery: NewDelivery,
    targets: &[routing::RenderedTarget],
) -> Result<(HttpResponse, WebhookOutcome), IngressError> {
    let delivery_id = delivery.id.clone();
    let failure = delivery.failure.clone();
    let accepted = state.store.accept(delivery).await.map_err(|e| {
        // A store that refuses commits refuses every webhook alike: the
        // writer logs when that starts and ends, and the metric counts
        // each refusal. Anything else is this webhook's own.
        if !matches!(e, StoreError::Unavailable(_)) {
            tracing::error!(route = %route.id, delivery_id = %delivery_id, error = %e, "Could not store a webhook");
        }
        IngressError::Unavailable("the store is unavailable; retry shortly".into())
    })?;
    let accepted_answer = |delivery_id: &str, coalesced: Option<u32>| {
        (
            HttpResponse::Accepted().json(inbound::AcceptedAnswer {
                coalesced,
                delivery_id,
                dispatches: inbound::dispatch_summary(targets),
            }),
            WebhookOutcome::Accepted,
        )
    };
    match accepted {
        Accepted::Coalesced { into, coalesced } => {
            state.metrics.coalesced(&route.id);
            // At the level of "Webhook accepted": the sender was answered
            // 202, and the log is where an operator looks for it.
            tracing::info!(route = %route.id, delivery_id = %into, coalesced, "Webhook merged into the open debounce window");
            Ok(accepted_answer(&into, Some(coalesced)))
        }
        Accepted::Duplicate { original_id } => {
            tracing::info!(route = %route.id, delivery_id = %original_id, "Duplicate webhook ignored");
            Ok((
                HttpResponse::Ok()
                    .json(serde_json::json!({"delivery_id": original_id, "duplicate": true})),
                WebhookOutcome::Duplicate,
            ))
        }
        Accepted::Stored => match failure {
            Some(reason) => {
                tracing::warn!(route = %route.id, delivery_id = %delivery_id, reason = %reason, "Stored a webhook that failed to render");
                Err(IngressError::StoredUnprocessable {
                    reason,
                    delivery_id,
                })
            }
            None => {
                state.dispatcher.wake();
                tracing::info!(route = %route.id, delivery_id = %delivery_id, "Webhook accepted");
                Ok(accepted_answer(&delivery_id, None))
            }
        },
    }
}

/// The signature check of an SNS envelope, after the route's own method
/// passed: checks `SigningCertURL` (again, for an `sns` route), finds the
/// signing key (pinned, cached or fetched from that URL) and verifies the
/// envelope with it.
async fn verify_sns(
    state: &AppState,
    routes: &super::state::LiveRoutes,
    index: usize,
    body: &[u8],
) -> Result<Envelope, IngressError> {
    let route = &routes.config.routes[index];
    // Each step's refusals are logged at most once in a while, like other
    // refused webhooks, but apart from the other steps', so that a flood
    // of one kind (forged signatures) does not hide another (a sender
    // whose clock is hours off).
    let refuse = |step: &str, reason: &dyn std::fmt::Display| {
        if let Some(unlogged) = state.refusal_to_log(step, &route.id) {
            tracing::warn!(route = %route.id, reason = %reason, unlogged, "Refused an SNS message that failed verification");
        }
        IngressError::Unauthorized {
            basic_challenge: false,
        }
    };
    let envelope = Envelope::parse(body).map_err(|e| refuse("sns envelope", &e))?;
    // The URL is fetched below: it must be SNS's before anything is asked
    // of it, whichever method brought the envelope here.
    sns::check_cert_url(envelope.signing_cert_url())
        .map_err(|e| refuse("sns certificate URL", &e))?;
    // Checked before the signature only because it is cheaper; the
    // Timestamp is signed, so a forged one fails below anyway.
    envelope
        .check_age(state.verify_now_ms())
        .map_err(|e| refuse("sns age", &e))?;
    let fetched: SigningKey;
    let keys: &[SigningKey] = match routes.sns_pinned(index) {
        Some(keys) => keys,
        None => {
            let url = envelope.signing_cert_url();
            fetched =
                match state.cached_sns_cert(url) {
                    Some(key) => key,
                    None => fetch_signing_key(state, &route.id, url)
                        .await
                        .map_err(|fetch| match fetch {
                            CertFetch::Refused(reason) => refuse("sns certificate", &reason),
                            CertFetch::Unavailable => IngressError::Unavailable(
                                "the signing certificate is not at hand yet; retry shortly".into(),
                            ),
                        })?,
                };
            std::slice::from_ref(&fetched)
        }
    };
    sns::verify_signature(&envelope, keys).map_err(|e| refuse("sns signature", &e))?;
    Ok(envelope)
}

/// Why no signing key came from a certificate URL.
enum CertFetch {
    /// AWS says there is no such certificate, or sent something that is
    /// not one: the envelope is not from SNS.
    Refused(String),
    /// A failure that may pass; SNS retries on 503.
    Unavailable,
}

/// Fetches and caches the signing key at an SNS certificate URL, a few
/// fetches at a time; a URL AWS said has no certificate is refused for a
/// while without asking again.
async fn fetch_signing_key(
    state: &AppState,
    route: &str,
    url: &str,
) -> Result<SigningKey, CertFetch> {
    let missing =
        || CertFetch::Refused("signing certificate URL: AWS said lately it has none".into());
    if state.sns_cert_missing.holds(url) {
        return Err(missing());
    }
    if state.sns_cert_unreachable.holds(url) {
        return Err(CertFetch::Unavailable);
    }
    let Some(_turn) = state.sns_cert_fetch_turn().await else {
        // Forged envelopes can cause this as fast as they are sent: it is
        // counted as a 503, not logged each time.
        tracing::debug!(route = %route, "Too many SNS signing certificates being fetched at once; answered 503");
        return Err(CertFetch::Unavailable);
    };
    // While this request waited its turn, another may have fetched the
    // certificate or learnt that there is none.
    if let Some(key) = state.cached_sns_cert(url) {
        return Ok(key);
    }
    if state.sns_cert_missing.holds(url) {
        return Err(missing());
    }
    let pem = outbound::get(url).await.map_err(|e| {
        if names_no_certificate(&e) {
            state.sns_cert_missing.remember(url);
            return CertFetch::Refused(format!("signing certificate URL: {e}"));
        }
        if matches!(e, outbound::GetError::Transport(_)) {
            state.sns_cert_unreachable.remember(url);
        }
        tracing::warn!(route = %route, error = %e, "Could not fetch the SNS signing certificate");
        CertFetch::Unavailable
    })?;
    let key = SigningKey::from_pem(&pem).map_err(|e| CertFetch::Refused(e.to_string()))?;
    state.cache_sns_cert(url, key.clone());
    Ok(key)
}

/// Whether fetching an SNS signing certificate failed because AWS says there
/// is no such certificate (403, 404, 410) or sent something that is not one
/// (too large): then the envelope is not from SNS and is refused like a bad
/// signature. Anything else may pass, and is answered "retry later".
fn names_no_certificate(error: &outbound::GetError) -> bool {
    // Only the answers that say the certificate is not there: SNS does not
    // retry a message refused with a 4xx, so a 429 or a 408, which only ask
    // to come back later, must stay a 503.
    matches!(
        error,
        outbound::GetError::Status(403 | 404 | 410) | outbound::GetError::TooLarge
    )
}

/// Confirms a verified `SubscriptionConfirmation` by a GET of its
/// `SubscribeURL`, once per message id; a failed GET answers 503 so that
/// SNS sends the confirmation again. A `SubscribeURL` that is not http(s)
/// can never be confirmed, so it is answered 400, which SNS does not retry.
async fn confirm_subscription(
    state: &AppState,
    route: &str,
    envelope: &Envelope,
) -> Result<(HttpResponse, WebhookOutcome), IngressError> {
    let confirmed = || {
        (
            HttpResponse::Ok().json(serde_json::json!({"confirmed": true})),
            WebhookOutcome::Skipped,
        )
    };
    let Some(url) = envelope.subscribe_url() else {
        state
            .metrics
            .sns_subscription(route, SnsSubscription::ConfirmFailed);
        tracing::warn!(route = %route, topic = %envelope.topic_arn(), "Refused an SNS subscription confirmation whose SubscribeURL is not an http(s) URL");
        return Err(IngressError::BadRequest(
            "the SubscribeURL is not an http(s) URL; this confirmation cannot be used".into(),
        ));
    };
    let message_id = envelope.message_id();
    if !state.claim_sns_confirmation(message_id) {
        tracing::info!(route = %route, message_id = %message_id, "SNS subscription confirmation repeated; already confirmed");
        return Ok(confirmed());
    }
    match outbound::get(url).await.map(|_| ()) {
        Ok(()) => {
            tracing::info!(route = %route, topic = %envelope.topic_arn(), "Confirmed the SNS subscription");
            state
                .metrics
                .sns_subscription(route, SnsSubscription::Confirmed);
            Ok(confirmed())
        }
        Err(e) => {
            state.release_sns_confirmation(message_id);
            state
                .metrics
                .sns_subscription(route, SnsSubscription::ConfirmFailed);
            tracing::warn!(route = %route, topic = %envelope.topic_arn(), error = %e, "Could not confirm the SNS subscription");
            Err(IngressError::Unavailable(
                "the subscription could not be confirmed; SNS will retry".into(),
            ))
        }
    }
}

/// The body's content coding, when it is one other than `identity`.
fn content_encoding(request: &HttpRequest) -> Option<String> {
    let value = request.headers().get(CONTENT_ENCODING)?;
    let value = String::from_utf8_lossy(value.as_bytes());
    inbound::compressed_coding(&value).map(str::to_string)
}

/// Refuses a request whose headers and query string pass
/// [`inbound::MAX_HEAD_BYTES`], before its body is read.
fn check_head_size(request: &HttpRequest) -> Result<(), IngressError> {
    let header_sizes = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len());
    match inbound::oversized_head(request.query_string(), header_sizes) {
        Some(bytes) => Err(IngressError::HeadTooLarge {
            bytes,
            limit: inbound::MAX_HEAD_BYTES,
        }),
        None => Ok(()),
    }
}

/// Lower-cased header names to values; repeated headers are joined with
/// ", " as HTTP allows.
fn header_map(request: &HttpRequest) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (name, value) in request.headers() {
        inbound::append_header(
            &mut map,
            name.as_str(),
            &String::from_utf8_lossy(value.as_bytes()),
        );
    }
    map
}

/// The client's address: the peer, or — when the peer is a trusted proxy —
/// the nearest `X-Forwarded-For` hop that is not itself a trusted proxy.
/// IPv4 peers of a dual-stack listener (`::ffff:a.b.c.d`) count as IPv4.
/// A hop that cannot be read gives no address at all (the request is
/// refused): skipping it would believe a hop further left, which the client
/// wrote itself.
pub(super) fn client_ip(request: &HttpRequest, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = request.peer_addr()?.ip().to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let headers = request.headers().get_all("x-forwarded-for");
    let hops: Vec<&str> = headers
        .map(|v| v.to_str().unwrap_or("?"))
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.into_iter().rev() {
        let ip = forwarded_hop(hop)?;
        if !is_trusted(&ip) {
            return Some(ip);
        }
    }
    Some(peer)
}

/// One `X-Forwarded-For` hop as proxies write it: an address, with or
/// without a port (`192.0.2.7:5555`, `[2001:db8::1]:443`) or brackets.
fn forwarded_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_certificate_refuses_the_envelope() {
        use outbound::GetError;
        let cases = [
            (GetError::Status(403), true),
            (GetError::Status(404), true),
            (GetError::TooLarge, true),
            (GetError::Status(410), true),
            (GetError::Status(429), false),
            (GetError::Status(408), false),
            (GetError::Status(503), false),
            (GetError::Transport("connection reset".into()), false),
        ];
        for (error, refused) in cases {
            assert_eq!(names_no_certificate(&error), refused, "{error}");
        }
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_and_unreadable_hops_refuse() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let cases: [(&str, Option<&str>, Option<IpAddr>); 10] = [
            ("192.0.2.1:40000", Some("10.1.2.3"), ip("192.0.2.1")),
            ("127.0.0.1:40000", None, ip("127.0.0.1")),
            ("127.0.0.1:40000", Some("10.1.2.3"), ip("10.1.2.3")),
            (
                "127.0.0.1:40000",
                Some("10.9.9.9, 192.0.2.7"),
                ip("192.0.2.7"),
            ),
            (
                "127.0.0.1:40000",
                Some("10.1.2.3, 192.0.2.7:5555"),
                ip("192.0.2.7"),
            ),
            (
                "127.0.0.1:40000",
                Some("10.1.2.3, [2001:db8::1]:443"),
                ip("2001:db8::1"),
            ),
            ("127.0.0.1:40000", Some("10.1.2.3, unknown"), None),
            (
                "127.0.0.1:40000",
                Some("10.1.2.3, 127.0.0.1"),
                ip("10.1.2.3"),
            ),
            // A dual-stack listener sees IPv4 clients as IPv4-mapped.
            ("[::ffff:127.0.0.1]:40000", Some("10.1.2.3"), ip("10.1.2.3")),
            ("[::ffff:192.0.2.1]:40000", None, ip("192.0.2.1")),
        ];
        for (peer, forwarded, expected) in cases {
            let mut request =
                actix_web::test::TestRequest::default().peer_addr(peer.parse().unwrap());
            if let Some(value) = forwarded {
                request = request.insert_header(("x-forwarded-for", value));
            }
            let request = request.to_http_request();
            assert_eq!(
                client_ip(&request, &trusted),
                expected,
                "{peer} {forwarded:?}"
            );
        }
    }
}
