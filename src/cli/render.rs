//! `dispatch-relay render`: the dry run. It goes through the same parsing,
//! `when` and rendering as the webhook handler and prints the requests that
//! would be sent.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::{CliError, invalid, load_config};
use crate::config::Verify;
use crate::inbound::{self, Received, SenderCheck};
use crate::routing::{self, DispatchRequest, Plan};
use crate::verify::{self, sns};
use serde_json::Value;

/// The webhook to render, as given on the command line.
pub struct Request<'a> {
    /// The file holding the body (`-` for standard input).
    pub body: &'a Path,
    /// `Name: value` headers.
    pub headers: &'a [String],
    /// The URL's query string, without `?`.
    pub query: &'a str,
}

pub fn render(
    config_path: &Path,
    route_id: &str,
    request: Request<'_>,
    check_signature: bool,
) -> Result<(), CliError> {
    let loaded = load_config(config_path)?;
    let config = &loaded.config;
    let (index, route) = find_route(config, config_path, route_id)?;
    let body = read_body(request.body)?;
    let headers = header_map(request.headers)?;
    let query = request.query.trim_start_matches('?');
    let envelope = read_envelope(route, &headers, &body)?;
    // The topic allow-list needs no signature: an envelope from a topic
    // the route does not list is refused by `serve`, whatever it says.
    if let (Verify::Sns(config), Some(envelope), false) =
        (&route.verify, &envelope, check_signature)
        && let Err(refusal @ sns::SnsRefusal::Topic(_)) = envelope.check_unsigned_parts(config)
    {
        return Err(invalid(anyhow::anyhow!(
            "{refusal}: serve answers 401 and sends nothing"
        )));
    }
    let refused_now = if check_signature {
        verify_as_serve_does(route, index, query, &headers, &body, envelope.as_ref())?
    } else {
        None
    };
    // Serve refuses these before it reads the body, so a body that would
    // not render anyway is refused for them, as serve would.
    let refused_unread = head_too_large(query, &headers).or_else(|| too_large(route, &body));
    if let Err(error) = render_verified(config, route, envelope.as_ref(), &headers, &body, query) {
        return Err(match refused_unread {
            Some(refusal) => invalid(anyhow::anyhow!("serve would answer {refusal}")),
            None => error,
        });
    }
    // Rendered all the same, so that a captured request can be checked
    // whole; the exit status still says that serve would refuse it, for
    // the first reason serve would find.
    let refusal = refused_unread
        .or(refused_now.map(|reason| format!("401 to this request now: {reason}")))
        .or_else(|| encoded(&headers));
    match refusal {
        Some(refusal) => Err(invalid(anyhow::anyhow!("serve would answer {refusal}"))),
        None => Ok(()),
    }
}

/// Serve's `431`, for headers and a query string over
/// [`inbound::MAX_HEAD_BYTES`] together.
fn head_too_large(query: &str, headers: &BTreeMap<String, String>) -> Option<String> {
    let header_sizes = headers.iter().map(|(name, value)| name.len() + value.len());
    let bytes = inbound::oversized_head(query, header_sizes)?;
    Some(format!(
        "431 to this request: its headers and query string come to {bytes} bytes, over the {} a webhook may have",
        inbound::MAX_HEAD_BYTES
    ))
}

/// Serve's `413`, for a body over the route's `max_body`.
fn too_large(route: &crate::config::Route, body: &[u8]) -> Option<String> {
    (body.len() as u64 > route.max_body).then(|| {
        format!(
            "413 to this request: its body is {} bytes, over the route's max_body of {} bytes",
            body.len(),
            route.max_body
        )
    })
}

/// Serve's `415`, for a body sent compressed (decision 47).
fn encoded(headers: &BTreeMap<String, String>) -> Option<String> {
    let coding = inbound::compressed_coding(headers.get("content-encoding")?)?;
    Some(format!(
        "415 to this request: its body is sent with Content-Encoding `{coding}`, and bodies are taken as sent"
    ))
}

/// Everything after the signature check: the sender's checks, parsing,
/// `when` and the plan.
fn render_verified(
    config: &crate::config::Config,
    route: &crate::config::Route,
    envelope: Option<&sns::Envelope>,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    query: &str,
) -> Result<(), CliError> {
    if let Some(envelope) = envelope
        && let Some(answer) = subscription_answer(envelope)
    {
        println!(
            "# {answer}; nothing is sent (topic {})",
            envelope.topic_arn()
        );
        return Ok(());
    }
    let content_type = headers.get("content-type").cloned();
    let parsed = match inbound::read(route, envelope, content_type.as_deref(), headers, body)
        .map_err(invalid)?
    {
        Received::SenderCheck(check) => {
            println!("# {}", describe_sender_check(&check));
            return Ok(());
        }
        Received::Event(parsed) => parsed,
    };
    // The headers of a captured request are easy to leave out, and the
    // usual one missing is a form's, whose fields would then be one string.
    if content_type.is_none() && parsed.body.is_string() {
        println!(
            "# the body has no Content-Type and is not JSON, so it is read as text, as serve reads it; for a form, add --header 'Content-Type: application/x-www-form-urlencoded'"
        );
    }
    let query = inbound::query_pairs(query);
    let delivery_id = "00000000-0000-0000-0000-000000000000";
    let ctx = inbound::context(
        &route.id,
        parsed,
        inbound::without_credentials(route, headers.clone()),
        &query,
        delivery_id,
        crate::clock::now_ms(),
    );
    print_plan(config, route, &ctx)
}

/// The route named on the command line, with its index, or an error that
/// lists the routes there are.
fn find_route<'a>(
    config: &'a crate::config::Config,
    config_path: &Path,
    route_id: &str,
) -> Result<(usize, &'a crate::config::Route), CliError> {
    config
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.id == route_id)
        .ok_or_else(|| {
            let known: Vec<&str> = config.routes.iter().map(|r| r.id.as_str()).collect();
            invalid(anyhow::anyhow!(
                "no route `{route_id}` in {} (routes: {})",
                config_path.display(),
                known.join(", ")
            ))
        })
}

/// The body from its file, or from standard input for `-`.
fn read_body(body_path: &Path) -> Result<Vec<u8>, CliError> {
    if body_path == Path::new("-") {
        let mut buffer = Vec::new();
        std::io::stdin().read_to_end(&mut buffer).map_err(invalid)?;
        return Ok(buffer);
    }
    std::fs::read(body_path)
        .map_err(|e| invalid(anyhow::anyhow!("cannot read {}: {e}", body_path.display())))
}

/// The `--header` arguments as `serve` sees headers: names in lower case,
/// a repeated header's values joined with ", ".
fn header_map(header_args: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut headers = BTreeMap::new();
    for raw in header_args {
        let Some((name, value)) = raw.split_once(':') else {
            return Err(invalid(anyhow::anyhow!(
                "--header `{raw}` is not `Name: value`"
            )));
        };
        let name = name.trim();
        if !is_header_name(name) {
            return Err(invalid(anyhow::anyhow!(
                "--header `{name}` is not a header name: a request can carry only letters, digits and !#$%&'*+-.^_`|~ in one"
            )));
        }
        inbound::append_header(&mut headers, name, value.trim());
    }
    Ok(headers)
}

/// Whether `name` is a header name HTTP allows (a `token`, RFC 9110 §5.1),
/// so that `render` is not shown a request that no sender could make.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The SNS envelope, where `serve` reads one.
fn read_envelope(
    route: &crate::config::Route,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<Option<sns::Envelope>, CliError> {
    // As `serve` reads it: an envelope on `sns` routes, and a subscription
    // message on any route (raw message delivery still sends those
    // enveloped).
    Ok(match route.verify {
        Verify::Sns(_) => sns::Envelope::parse(body).ok(),
        _ if sns::announces_subscription_message(headers) => {
            let envelope = sns::Envelope::parse(body).map_err(|e| {
                invalid(anyhow::anyhow!(
                    "x-amz-sns-message-type names a subscription message, but the body is not an SNS envelope: {e}"
                ))
            })?;
            if envelope.kind == sns::MessageType::Notification {
                return Err(invalid(anyhow::anyhow!(
                    "x-amz-sns-message-type names a subscription message, but the envelope is a Notification: serve answers 400"
                )));
            }
            Some(envelope)
        }
        _ => None,
    })
}

/// Checks the request's signature as `serve` would, and says so. A
/// request whose signature matches but which serve would refuse now (its
/// signed time has passed) gives the reason.
fn verify_as_serve_does(
    route: &crate::config::Route,
    index: usize,
    query: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    envelope: Option<&sns::Envelope>,
) -> Result<Option<String>, CliError> {
    // The request as the relay would see it: a POST to the route's path
    // and query, which Contentful's signature covers.
    let path = match query {
        "" => format!("/hooks/{}", route.id),
        query => format!("/hooks/{}?{query}", route.id),
    };
    let now_ms = crate::clock::now_ms();
    let request = verify::Request {
        method: "POST",
        path: &path,
        headers,
        body,
        now_ms,
    };
    match verify::verify_request(&route.verify, &request) {
        Ok(()) => {}
        // A request captured earlier (from a log, a sender's delivery
        // history, a sample) is signed for its own time. Whether the
        // secret matches is still worth knowing: it is checked at that
        // time, and the output says that serve would refuse it now.
        //
        // Every method checks the signature before the timestamp, so a
        // stale one has matched already; checking again at the signed time
        // keeps "ok" true should a method ever check in the other order.
        Err(stale @ verify::VerifyError::Stale { skew_ms, .. }) => {
            let at_signing = verify::Request {
                now_ms: now_ms.saturating_add(skew_ms),
                ..request
            };
            verify::verify_request(&route.verify, &at_signing)
                .map_err(|e| invalid(anyhow::anyhow!("verification failed: {e}")))?;
            println!("# signature: ok for the time it was signed, but {stale}");
            return Ok(Some(stale.to_string()));
        }
        Err(e) => return Err(invalid(anyhow::anyhow!("verification failed: {e}"))),
    }
    match route.verify {
        Verify::Sns(_) => {
            // A pinned certificate is at hand; SNS's own is fetched
            // only by `serve`. The route's own check has read the
            // envelope.
            let pinned = crate::ingress::read_route_certificates(route, index)
                .map_err(|lines| invalid(anyhow::anyhow!("{}", lines.join("\n"))))?;
            match (pinned, envelope) {
                (Some(keys), Some(envelope)) => {
                    sns::verify_signature(envelope, &keys)
                        .map_err(|e| invalid(anyhow::anyhow!("verification failed: {e}")))?;
                    // As above: a captured envelope's signature is worth
                    // checking, and its age is said apart.
                    if let Err(e) = envelope.check_age(now_ms) {
                        println!("# SNS envelope: signed with a pinned certificate, but {e}");
                        return Ok(Some(e.to_string()));
                    }
                    println!("# SNS envelope: ok (signed with a pinned certificate)");
                }
                // Not "ok": nothing was checked, and a script reading
                // the output must not take it for a verified envelope.
                _ => println!(
                    "# SNS envelope: read, but its signature is NOT checked: serve fetches SNS's signing certificate, render does not; pin it under the route's `certificates:` for render to check it"
                ),
            }
        }
        // A subscription message on another route is an SNS envelope
        // too, whose signature `serve` checks besides the route's own.
        _ if envelope.is_some() => {
            println!("# signature: ok (the SNS envelope's own signature is checked by serve)")
        }
        _ => println!("# signature: ok"),
    }
    Ok(None)
}

/// What `serve` answers to an SNS subscription message, which it never
/// relays.
fn subscription_answer(envelope: &sns::Envelope) -> Option<&'static str> {
    match envelope.kind {
        sns::MessageType::Notification => None,
        sns::MessageType::SubscriptionConfirmation if envelope.subscribe_url().is_none() => Some(
            "SNS subscription confirmation whose SubscribeURL is not an http(s) URL: serve answers 400",
        ),
        sns::MessageType::SubscriptionConfirmation => Some(
            "SNS subscription confirmation: serve confirms it (GET SubscribeURL) and answers 200",
        ),
        sns::MessageType::UnsubscribeConfirmation => Some(
            "SNS unsubscribe confirmation: serve logs that the subscription was deleted and answers 200",
        ),
    }
}

/// Prints what `serve` would do with the webhook: nothing when `when` is
/// false, otherwise its dedupe key and each request the worker would send.
fn print_plan(
    config: &crate::config::Config,
    route: &crate::config::Route,
    ctx: &crate::template::Context,
) -> Result<(), CliError> {
    let (dedupe_key, plan) = routing::plan_with_key(route, ctx);
    match plan.map_err(invalid)? {
        Plan::Skipped => {
            println!("# `when` is false for this body: nothing would be sent");
        }
        Plan::Dispatch(targets) => {
            // The key `serve` would store, so that a key that cannot be
            // rendered, or is the same for every webhook, shows here.
            match dedupe_key {
                Some(key) => println!("# dedupe key: {key}"),
                None => println!("# dedupe key: none (every copy of this webhook is sent)"),
            }
            for target in targets {
                println!(
                    "{} {}{}",
                    target.request.method(),
                    config.github.api_url,
                    target.request.path(&target.repo)
                );
                // The body the worker first sends (docs/github.md says when
                // a workflow dispatch's `return_run_details` is left out).
                let mut body = target.request.body_json();
                if let DispatchRequest::Workflow { .. } = &target.request {
                    body = crate::dispatch::with_run_details_asked(&body);
                }
                let body: Value = serde_json::from_str(&body).map_err(invalid)?;
                let body = serde_json::to_string_pretty(&body).map_err(invalid)?;
                println!("{body}\n");
            }
        }
    }
    Ok(())
}

/// What `serve` does with a sender's check of the webhook.
fn describe_sender_check(check: &SenderCheck) -> &'static str {
    match check {
        SenderCheck::S3TestEvent => {
            "S3's test event (s3:TestEvent): serve answers 200 and sends nothing"
        }
        SenderCheck::GitHubPing => "GitHub's ping: serve answers 200 and sends nothing",
        SenderCheck::SlackChallenge(_) => {
            "Slack's URL verification: serve answers 200 with its challenge and sends nothing"
        }
    }
}
