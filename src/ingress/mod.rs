//! The HTTP side: the only module that knows actix-web. It binds the
//! listener, routes requests to the webhook, operations and admin handlers,
//! and answers errors as JSON. `setup_page` is the second, separate server:
//! the local page of `dispatch-relay setup github-app`.

mod admin;
pub mod error;
mod ops;
pub mod setup_page;
pub mod state;
mod webhook;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpResponse, web};

pub use state::{AppState, LiveRoutes, read_pinned_certificates};

/// How long actix waits for open connections to finish after a stop.
const HTTP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, not yet running, HTTP server.
pub struct Application {
    server: Server,
    addr: SocketAddr,
}

impl Application {
    /// Binds `listen` (port 0 picks a free port) and builds the server.
    pub fn build(
        state: Arc<AppState>,
        listen: &str,
        workers: usize,
    ) -> std::io::Result<Application> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let data = web::Data::from(state);
        let server = actix_web::HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::QueryConfig::default().error_handler(|err, _| {
                    error::IngressError::BadRequest(format!("invalid query: {err}")).into()
                }))
                .route("/hooks/{route:.+}", web::post().to(webhook::post))
                .route("/hooks/{route:.+}", web::head().to(webhook::head))
                .route("/hooks/{route:.+}", web::route().to(webhook::other_method))
                .route("/healthz", web::get().to(ops::healthz))
                .route("/readyz", web::get().to(ops::readyz))
                .route("/metrics", web::get().to(ops::metrics))
                .route("/admin/deliveries", web::get().to(admin::list))
                .route("/admin/deliveries/{id}", web::get().to(admin::get))
                .route(
                    "/admin/deliveries/{id}/redeliver",
                    web::post().to(admin::redeliver),
                )
                .default_service(web::to(not_found))
        })
        // Signals are handled by `serve`, which must stop intake, drain the
        // worker and only then stop HTTP.
        .disable_signals()
        .shutdown_timeout(HTTP_SHUTDOWN_TIMEOUT.as_secs())
        .workers(workers.max(1))
        .listen(listener)?
        .run();
        Ok(Application { server, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .json(serde_json::json!({"error": "not_found", "message": "no such endpoint"}))
}
