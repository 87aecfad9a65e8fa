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
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Err(e) => {
            tracing::error!(error = %e, "Readiness check failed: the store does not take writes");
            HttpResponse::ServiceUnavailable().json(
                serde_json::json!({"error": "unavailable", "message": "the store is not writable"}),
            )
        }
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // The queue depth is read at scrape time so the gauge is never stale.
    if let Ok(depth) = state.store.queue_depth().await {
        state.metrics.set_queue_depth(depth);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
