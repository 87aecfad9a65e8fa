//! Reading a webhook's body: within the route's `max_body`, within
//! `server.body_timeout`, and within `server.max_body_memory`, the memory
//! that all bodies being received and handled share.
//!
//! The per-request limits alone leave the relay's memory to its senders:
//! six thousand connections each sending a body of the default 1 MiB hold
//! six gigabytes, and the machine kills the relay, with every sender's
//! connection. Counting every body's buffer against one budget turns that
//! into `503`s, which senders retry, while the relay stays small.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{HttpRequest, web};
use futures_util::StreamExt;

use super::error::IngressError;

/// The bytes of body buffers held by requests now, shared by every worker.
#[derive(Debug, Default)]
pub struct BodyMemory {
    held: AtomicU64,
}

impl BodyMemory {
    /// Sets `bytes` aside if they fit under `budget` with everything held.
    fn take(&self, bytes: u64, budget: u64) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= budget)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }
}

/// A body with the memory it holds in the budget, given back when the
/// body is dropped at the end of its request.
#[derive(Debug)]
pub struct Body<'a> {
    pub bytes: Vec<u8>,
    memory: &'a BodyMemory,
    held: u64,
}

impl<'a> Body<'a> {
    /// An empty body holding nothing of the budget yet.
    fn empty(memory: &'a BodyMemory) -> Body<'a> {
        Body {
            bytes: Vec::new(),
            memory,
            held: 0,
        }
    }

    /// Grows the buffer's capacity to at least `needed` bytes, doubling as
    /// a `Vec` would, once the budget has room for the growth.
    fn grow_to(&mut self, needed: u64, limit: u64, budget: u64) -> Result<(), IngressError> {
        if needed <= self.held {
            return Ok(());
        }
        let capacity = needed.max(self.held.saturating_mul(2)).min(limit);
        if !self.memory.take(capacity - self.held, budget) {
            return Err(IngressError::BodyMemoryFull);
        }
        self.held = capacity;
        self.bytes
            .reserve_exact(capacity as usize - self.bytes.len());
        Ok(())
    }
}

impl Drop for Body<'_> {
    fn drop(&mut self) {
        self.memory.give_back(self.held);
    }
}

/// Reads the body, refusing it as soon as it passes `limit`, when it has
/// not all arrived within `timeout`, or when the bodies in memory leave no
/// room for it under `budget`. Without the deadline a client that stops
/// half way would hold its connection, and a file descriptor, for as long
/// as it likes; enough of them would shut every sender out.
pub async fn read<'a>(
    request: &HttpRequest,
    payload: web::Payload,
    memory: &'a BodyMemory,
    limit: u64,
    budget: u64,
    timeout: std::time::Duration,
) -> Result<Body<'a>, IngressError> {
    tokio::time::timeout(
        timeout,
        read_within(request, payload, memory, limit, budget),
    )
    .await
    .map_err(|_| IngressError::BodyTimeout {
        secs: timeout.as_secs_f64(),
    })?
}

async fn read_within<'a>(
    request: &HttpRequest,
    mut payload: web::Payload,
    memory: &'a BodyMemory,
    limit: u64,
    budget: u64,
) -> Result<Body<'a>, IngressError> {
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(IngressError::TooLarge { limit });
    }
    // Nothing is set aside before a byte arrives: a client that only
    // announces a large `Content-Length`, and sends nothing, must not hold
    // the budget that every route's senders share. The buffer never grows
    // past what was announced, since no more can arrive.
    let most = declared.map_or(limit, |len| len.min(limit));
    let mut body = Body::empty(memory);
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| IngressError::BadRequest(format!("could not read the body: {e}")))?;
        let needed = (body.bytes.len() + chunk.len()) as u64;
        if needed > limit {
            return Err(IngressError::TooLarge { limit });
        }
        body.grow_to(needed, most.max(needed), budget)?;
        body.bytes.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_share_the_budget_and_give_it_back_when_dropped() {
        let memory = BodyMemory::default();
        let mut first = Body::empty(&memory);
        first.grow_to(600, 1000, 1000).unwrap();
        assert_eq!(memory.held(), 600);
        let mut second = Body::empty(&memory);
        assert!(matches!(
            second.grow_to(600, 1000, 1000),
            Err(IngressError::BodyMemoryFull)
        ));
        second.grow_to(400, 1000, 1000).unwrap();
        assert_eq!(memory.held(), 1000);
        drop(first);
        assert_eq!(memory.held(), 400);
        drop(second);
        assert_eq!(memory.held(), 0);
    }

    #[test]
    fn a_buffer_doubles_up_to_the_route_limit_and_counts_its_capacity() {
        let memory = BodyMemory::default();
        let mut growing = Body::empty(&memory);
        // (bytes needed, capacity held afterwards)
        for (needed, held) in [
            (100, 100),
            (150, 200),
            (200, 200),
            (201, 400),
            (700, 800),
            (801, 900),
        ] {
            growing.grow_to(needed, 900, u64::MAX).unwrap();
            assert_eq!((growing.held, memory.held()), (held, held), "{needed}");
            assert!(growing.bytes.capacity() as u64 >= held, "{needed}");
        }
    }
}
