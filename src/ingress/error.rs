//! The HTTP errors of the webhook endpoint: one variant per status of the
//! HTTP contract, each answered as `{"error": code, "message": sentence}`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::telemetry::WebhookOutcome;

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(
        "no route `{requested}` is configured{}",
        did_you_mean.as_ref().map(|id| format!("; did you mean `{id}`?")).unwrap_or_default()
    )]
    UnknownRoute {
        /// The name asked for, shortened: it is the sender's.
        requested: String,
        /// A configured route the name differs from only by case or by a
        /// trailing slash, which a sender already all but knows.
        did_you_mean: Option<String>,
    },
    #[error("missing or invalid credentials")]
    Unauthorized { basic_challenge: bool },
    #[error("requests from this address are not allowed for this route")]
    Forbidden,
    #[error("the body is larger than this route's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(
        "the request's headers and query string come to {bytes} bytes, over the {limit} a webhook may have"
    )]
    HeadTooLarge { bytes: usize, limit: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error("the body is sent with Content-Encoding `{0}`; the relay takes bodies uncompressed")]
    UnsupportedEncoding(String),
    #[error("the body did not arrive within {secs} s (server.body_timeout)")]
    BodyTimeout { secs: f64 },
    #[error("{0}")]
    Unprocessable(String),
    /// A webhook that failed to render, stored as a failed delivery: its
    /// id is in the answer, for the sender's log and for `redeliver`.
    #[error("{reason} (stored as failed delivery {delivery_id}; fix routes.yaml and redeliver it)")]
    StoredUnprocessable { reason: String, delivery_id: String },
    #[error("too many requests for this route; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "the relay holds as many webhook bodies as server.max_body_memory allows; retry shortly"
    )]
    BodyMemoryFull,
    #[error("the admin API is disabled: set RELAY_ADMIN_TOKEN to enable it")]
    AdminDisabled,
    #[error("delivery `{0}` not found")]
    NotFound(String),
    /// A path that cannot name a delivery: said so, rather than "not
    /// found", so that a typo is not taken for a delivery since pruned.
    #[error("`{0}` is not a delivery id (a UUID, as the listing gives them)")]
    NotADeliveryId(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{}", .0.message())]
    MethodNotAllowed(Methods),
    #[error("missing or wrong admin token: send `Authorization: Bearer <RELAY_ADMIN_TOKEN>`")]
    AdminUnauthorized,
}

/// The methods a path takes, named by a `405`'s `Allow` header and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// A webhook URL: `POST`, and `HEAD` for senders that check it first.
    Webhook,
    /// The health, readiness and metrics endpoints, and the admin API's
    /// reads: `GET`, and `HEAD` for a load balancer's check.
    Get,
    /// The admin API's redelivery.
    Post,
}

impl Methods {
    fn allow(self) -> &'static str {
        match self {
            Methods::Webhook => "POST, HEAD",
            Methods::Get => "GET, HEAD",
            Methods::Post => "POST",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Methods::Webhook => "this route takes webhooks by POST (and answers HEAD)",
            Methods::Get => "this endpoint is read with GET (or HEAD)",
            Methods::Post => "this endpoint takes POST",
        }
    }
}

impl IngressError {
    fn code(&self) -> &'static str {
        match self {
            IngressError::UnknownRoute { .. } => "unknown_route",
            IngressError::Unauthorized { .. } | IngressError::AdminUnauthorized => "unauthorized",
            IngressError::Forbidden => "forbidden",
            IngressError::TooLarge { .. } | IngressError::HeadTooLarge { .. } => "too_large",
            IngressError::BadRequest(_) => "bad_request",
            IngressError::UnsupportedEncoding(_) => "unsupported_encoding",
            IngressError::BodyTimeout { .. } => "timeout",
            IngressError::Unprocessable(_) | IngressError::StoredUnprocessable { .. } => {
                "unprocessable"
            }
            IngressError::RateLimited { .. } => "rate_limited",
            IngressError::Unavailable(_) | IngressError::BodyMemoryFull => "unavailable",
            IngressError::AdminDisabled => "admin_disabled",
            IngressError::NotFound(_) | IngressError::NotADeliveryId(_) => "not_found",
            IngressError::Conflict(_) => "conflict",
            IngressError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }

    /// The webhook outcome for metrics, where this error ends a webhook.
    pub fn outcome(&self) -> Option<WebhookOutcome> {
        Some(match self {
            IngressError::Unauthorized { .. } => WebhookOutcome::Unauthorized,
            IngressError::Forbidden => WebhookOutcome::Forbidden,
            IngressError::TooLarge { .. } | IngressError::HeadTooLarge { .. } => {
                WebhookOutcome::TooLarge
            }
            // The metric's outcomes are a fixed set: a body that never
            // arrived, or came compressed, is a bad request there.
            IngressError::BadRequest(_)
            | IngressError::BodyTimeout { .. }
            | IngressError::UnsupportedEncoding(_) => WebhookOutcome::BadRequest,
            IngressError::Unprocessable(_) | IngressError::StoredUnprocessable { .. } => {
                WebhookOutcome::Unprocessable
            }
            IngressError::RateLimited { .. } => WebhookOutcome::RateLimited,
            IngressError::Unavailable(_) | IngressError::BodyMemoryFull => {
                WebhookOutcome::Unavailable
            }
            _ => return None,
        })
    }
}

impl ResponseError for IngressError {
    fn status_code(&self) -> StatusCode {
        match self {
            IngressError::UnknownRoute { .. }
            | IngressError::NotFound(_)
            | IngressError::NotADeliveryId(_)
            | IngressError::AdminDisabled => StatusCode::NOT_FOUND,
            IngressError::Unauthorized { .. } | IngressError::AdminUnauthorized => {
                StatusCode::UNAUTHORIZED
            }
            IngressError::Forbidden => StatusCode::FORBIDDEN,
            IngressError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            IngressError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IngressError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngressError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            IngressError::Unprocessable(_) | IngressError::StoredUnprocessable { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            IngressError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            IngressError::Unavailable(_) | IngressError::BodyMemoryFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngressError::Conflict(_) => StatusCode::CONFLICT,
            IngressError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            IngressError::Unauthorized {
                basic_challenge: true,
            } => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, r#"Basic realm="dispatch-relay""#));
            }
            IngressError::RateLimited { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after_secs)));
            }
            IngressError::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from(5u64)));
            }
            // Bodies in memory are gone within a request's time.
            IngressError::BodyMemoryFull => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from(1u64)));
            }
            IngressError::MethodNotAllowed(methods) => {
                response.insert_header((header::ALLOW, methods.allow()));
            }
            // RFC 9110 (12.5.3): a 415 for a content coding names the
            // codings the server takes.
            IngressError::UnsupportedEncoding(_) => {
                response.insert_header((header::ACCEPT_ENCODING, "identity"));
            }
            // RFC 6750: a 401 for a bearer token says so.
            IngressError::AdminUnauthorized => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    r#"Bearer realm="dispatch-relay admin""#,
                ));
            }
            _ => {}
        }
        let mut body = serde_json::json!({"error": self.code(), "message": self.to_string()});
        if let IngressError::StoredUnprocessable { delivery_id, .. } = self {
            body["delivery_id"] = delivery_id.as_str().into();
        }
        response.json(body)
    }
}
