//! The fake GitHub of the benchmarks as a process of its own: the same fake
//! the integration tests use (`tests/it/fake_github.rs`), serving on a
//! loopback port until the process is killed.
//!
//! Usage: `fake_github_server STATS_ADDR`. It accepts the token `ghp_bench`
//! for the repository `acme/bench`, prints `url=http://127.0.0.1:PORT` on its
//! first line of stdout, and answers plain-text statistics on `STATS_ADDR`
//! (any request): `count N`, and with the path `/full` also the wall-clock
//! arrival times of the first and last successful dispatch in Unix
//! milliseconds, from which the bench computes dispatches per second. The
//! statistics live on a separate port so that polling them never shows up in
//! the fake's own request log.

#[path = "../tests/it/fake_github.rs"]
mod fake_github;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fake_github::FakeGitHub;

/// Converts a monotonic instant to Unix milliseconds through one anchor taken
/// at startup; the bench compares it with the relay's wall-clock timestamps.
fn unix_ms(anchor: (Instant, u128), at: Instant) -> u128 {
    let (anchor_instant, anchor_ms) = anchor;
    if at >= anchor_instant {
        anchor_ms + (at - anchor_instant).as_millis()
    } else {
        anchor_ms - (anchor_instant - at).as_millis()
    }
}

fn stats(fake: &FakeGitHub, anchor: (Instant, u128), full: bool) -> String {
    if !full {
        return format!("count {}\n", fake.dispatch_count());
    }
    let dispatches = fake.dispatches();
    let first = dispatches.iter().map(|d| d.received_at).min();
    let last = dispatches.iter().map(|d| d.received_at).max();
    let mut text = format!("count {}\n", dispatches.len());
    if let (Some(first), Some(last)) = (first, last) {
        text.push_str(&format!(
            "first_ms {}\nlast_ms {}\n",
            unix_ms(anchor, first),
            unix_ms(anchor, last)
        ));
    }
    text.push_str(&format!("violations {}\n", fake.violations().len()));
    text
}

#[tokio::main]
async fn main() {
    let stats_addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18089".into());
    let fake = Arc::new(FakeGitHub::start().await);
    fake.add_token("ghp_bench");
    fake.add_repo("acme/bench");
    let anchor = (
        Instant::now(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    );
    let listener = TcpListener::bind(&stats_addr).expect("bind the stats address");
    let for_stats = Arc::clone(&fake);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let full = request_line.contains("/full");
            let body = stats(&for_stats, anchor, full);
            let mut stream = &stream;
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    println!("url={}", fake.url());
    // The bench stops the fake with SIGTERM; until then it serves.
    std::future::pending::<()>().await;
}
