//! Sending jobs to GitHub: the worker loop (lease, pace, send, classify,
//! record), the pure retry classification, the per-credential pacing, and
//! whether GitHub is answering at all.

pub mod health;
pub mod pacing;
pub mod retry;
mod worker;

pub use worker::{Dispatcher, DispatcherHandle, IDLE_POLL, LEASE, with_run_details_asked};
