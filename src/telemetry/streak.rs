//! A run of failures of one thing (store commits, leases, recording an
//! attempt, readiness checks, GitHub itself) that is logged when it starts
//! and when it ends, not at every failure in between: the failures come
//! every second or faster while the cause lasts, and the cause is the same.

use std::sync::atomic::{AtomicU64, Ordering};

/// Failures in a row; shared between threads where it must be, so it
/// counts with an atomic.
#[derive(Debug, Default)]
pub struct Streak(AtomicU64);

impl Streak {
    /// Counts a failure: true for the first of a run, the one to log.
    pub fn failed(&self) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// Whether a run is under way: a failure counted and no end since.
    pub fn running(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Ends a run: `Some(failures)` when one was under way, the moment to
    /// log that it is over; `None` when nothing was failing.
    pub fn passed(&self) -> Option<u64> {
        match self.0.swap(0, Ordering::Relaxed) {
            0 => None,
            failures => Some(failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_and_the_first_success_after_a_run_are_the_ones_said() {
        let streak = Streak::default();
        assert_eq!(streak.passed(), None, "nothing was failing");
        assert!(!streak.running());
        assert!(streak.failed(), "a run starts");
        assert!(streak.running());
        assert!(!streak.failed());
        assert!(!streak.failed());
        assert_eq!(streak.passed(), Some(3), "the run ends after three");
        assert_eq!(streak.passed(), None, "and is over");
        assert!(!streak.running());
        assert!(streak.failed(), "a new run starts");
    }
}
