//! Sending jobs to GitHub: the worker loop (lease, pace, send, classify,
//! record), the pure retry classification and the per-credential pacing.

pub mod pacing;
pub mod retry;
mod worker;

pub use worker::{Dispatcher, DispatcherHandle, LEASE, with_run_details_asked};
