//! Liveness, readiness and the Prometheus endpoint.

use actix_web::{HttpResponse, web};

use super::state::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready when the configuration is loaded (it is, or the process would not
/// be serving), the relay is not shutting down, and the store takes writes.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.is_shutting_down() {
        return HttpResponse::ServiceUnavailable().json(
            serde_json::json!({"error": "unavailable", "message": "the relay is shutting down"}),
        );
    }
    match state.store.check_writable().await {
        Ok(()) => {
            if let Some(failed_checks) = state.not_ready.passed() {
                tracing::info!(
                    failed_checks,
                    "Readiness check passes again: the store takes writes"
                );
            }
            HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
        }
        Err(e) => {
            if state.not_ready.failed() {
                tracing::error!(error = %e, "Readiness check failed: the store does not take writes");
            }
            HttpResponse::ServiceUnavailable().json(
                serde_json::json!({"error": "unavailable", "message": "the store is not writable"}),
            )
        }
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // The queue depth is read at scrape time. When the store cannot be read
    // the gauges keep their last values, so the failure is logged, not
    // passed over: /readyz reports the store too.
    match state.store.queue_depth().await {
        Ok(depth) => {
            state.metrics.set_queue_depth(depth);
            if let Some(failed_scrapes) = state.queue_depth_unread.passed() {
                tracing::info!(failed_scrapes, "The queue depth can be read again");
            }
        }
        Err(e) => {
            if state.queue_depth_unread.failed() {
                tracing::warn!(error = %e, "Could not read the queue depth; the gauge keeps its last value until it can");
            }
        }
    }
    state.metrics.set_body_memory(state.body_memory.held());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
