//! The ceiling of the benchmarks: the least an actix-web server can do for a
//! webhook, which is to read the whole body and answer 202. The relay's
//! accept rate is reported as a ratio to this server's rate, measured in the
//! same run on the same machine, so that the ratio means something even when
//! the machine is busy.
//!
//! Usage: `ceiling ADDR` (for example `127.0.0.1:18081`). The worker count
//! follows the number of CPUs, as the relay's does.

use actix_web::{App, HttpResponse, HttpServer, web};

async fn accept(body: web::Bytes) -> HttpResponse {
    // Touching the length keeps the body read in full, like the relay does.
    std::hint::black_box(body.len());
    HttpResponse::Accepted().finish()
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    HttpServer::new(|| App::new().route("/hooks/{route}", web::post().to(accept)))
        .workers(workers)
        .bind(addr)?
        .run()
        .await
}
