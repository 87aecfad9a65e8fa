//! The HTTP side: the only module that knows actix-web. It binds the
//! listener, routes requests to the webhook, operations and admin handlers,
//! and answers errors as JSON. `setup_page` is the second, separate server:
//! the local page of `dispatch-relay setup github-app`.

mod admin;
mod body;
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

pub use state::{AppState, LiveRoutes, read_pinned_certificates, read_route_certificates};

use crate::dispatch::pacing::{UNPACED_IN_FLIGHT, max_in_flight};
use error::Methods;

/// How long actix waits for open connections to finish after a stop.
const HTTP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Open files kept for everything but inbound connections and GitHub: the
/// store's files, connections to notify destinations, the configuration
/// file read on reload.
const RESERVED_FILES: u64 = 192;

/// Raises the soft limit on open files to the hard limit, as a server that
/// holds one file per connection should, and returns the limit in force.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` and `setrlimit` only read and write the struct
    // passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// How many connections each HTTP worker holds open at most: the open
/// files the caller leaves to them (the limit less GitHub's connections),
/// less the relay's own files, shared among the workers. A worker at its
/// share stops accepting until a connection closes, so a flood of idle
/// connections makes new ones wait in the listen queue instead of leaving
/// the relay unable to open its own files ("too many open files").
fn connections_per_worker(open_file_limit: u64, workers: usize) -> usize {
    let share = open_file_limit.saturating_sub(RESERVED_FILES) / workers as u64;
    // actix's own default is the upper bound; a tiny limit still serves.
    share.clamp(16, 25_000) as usize
}

/// A bound, not yet running, HTTP server.
pub struct Application {
    server: Server,
    addr: SocketAddr,
}

impl Application {
    /// Builds the server on a bound `listener`.
    pub fn build(
        state: Arc<AppState>,
        listener: TcpListener,
        workers: usize,
    ) -> std::io::Result<Application> {
        let addr = listener.local_addr()?;
        // Kept for GitHub: as many as the pacing lets go at once, and never
        // fewer than pacing off does.
        let github_connections =
            max_in_flight(&state.routes().config.github.pacing).max(UNPACED_IN_FLIGHT) as u64;
        let max_connections = connections_per_worker(
            raise_open_file_limit().saturating_sub(github_connections),
            workers.max(1),
        );
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
                .service(only(Methods::Get, "/healthz").route(read().to(ops::healthz)))
                .service(only(Methods::Get, "/readyz").route(read().to(ops::readyz)))
                .service(only(Methods::Get, "/metrics").route(read().to(ops::metrics)))
                .service(only(Methods::Get, "/admin/deliveries").route(read().to(admin::list)))
                .service(only(Methods::Get, "/admin/deliveries/{id}").route(read().to(admin::get)))
                .service(
                    only(Methods::Post, "/admin/deliveries/{id}/redeliver")
                        .route(web::post().to(admin::redeliver)),
                )
                .default_service(web::to(not_found))
        })
        // Signals are handled by `serve`, which must stop intake, drain the
        // worker and only then stop HTTP.
        .disable_signals()
        .shutdown_timeout(HTTP_SHUTDOWN_TIMEOUT.as_secs())
        .workers(workers.max(1))
        .max_connections(max_connections)
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

/// A path that takes only `methods`: any other gets a JSON `405` naming
/// them, so that a forgotten `-X POST` does not read as a wrong URL.
fn only(methods: Methods, path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(error::IngressError::MethodNotAllowed(methods))
    }))
}

/// A read: `GET`, or `HEAD` for a load balancer's check, which gets the
/// same status and headers without the body.
fn read() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .json(serde_json::json!({"error": "not_found", "message": "no such endpoint"}))
}

#[cfg(test)]
mod tests {
    use super::connections_per_worker;

    #[test]
    fn connections_are_shared_from_the_open_file_limit() {
        // (open-file limit, workers, connections per worker)
        let cases = [
            (1024, 2, 416),
            (20_000, 4, 4_952),
            (1 << 20, 2, 25_000),
            // Less than the reserve: a few connections still.
            (100, 2, 16),
        ];
        for (limit, workers, expected) in cases {
            assert_eq!(
                connections_per_worker(limit, workers),
                expected,
                "{limit} {workers}"
            );
        }
    }
}
