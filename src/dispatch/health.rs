//! Whether GitHub is answering dispatches. A failure that may pass (no
//! answer, a timeout, a 408 or 5xx) counts against `retry.max_attempts` only
//! while GitHub answers other dispatches; while it answers none (an outage
//! of GitHub, of its dispatches alone, or of the network to it), the job's
//! attempts are not spent, and it is retried until `retry.give_up_after`
//! (docs/decisions.md, decisions 42 and 53).

use std::sync::atomic::{AtomicI64, Ordering};

use crate::telemetry::Streak;

/// What is known of GitHub since a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// GitHub answered a dispatch as it does when it works.
    Answering,
    /// A dispatch failed, a look at GitHub confirmed it, and no dispatch
    /// was answered after.
    Failing,
    /// Nothing was asked: a look is needed to tell.
    Unknown,
}

/// The last moments GitHub answered a dispatch, and a look confirmed a
/// failed one, shared by every send.
#[derive(Debug)]
pub struct GitHubHealth {
    /// When GitHub last answered a dispatch as it does when it works, in
    /// milliseconds since the epoch; 0 when never.
    answered_ms: AtomicI64,
    /// When a look at GitHub (or a token request standing for one) last
    /// confirmed a failed dispatch, likewise.
    confirmed_ms: AtomicI64,
    /// Attempts not counted because GitHub answered no dispatch: the
    /// outage is logged once when it starts, once when it ends.
    outage: Streak,
    /// The earliest moment an attempt not counted in the outage under way
    /// can have started (`i64::MAX` when none is under way), so that the
    /// retries it scheduled can be brought forward when it ends.
    outage_from_ms: AtomicI64,
}

impl Default for GitHubHealth {
    fn default() -> Self {
        GitHubHealth {
            answered_ms: AtomicI64::new(0),
            confirmed_ms: AtomicI64::new(0),
            outage: Streak::default(),
            outage_from_ms: AtomicI64::new(i64::MAX),
        }
    }
}

impl GitHubHealth {
    /// GitHub answered a dispatch at `now_ms` as it does when it works.
    /// When that ends an outage, returns the earliest moment an attempt it
    /// did not count can have started: the retries scheduled since then
    /// wait for nothing any more.
    #[must_use = "the retries the outage scheduled are to be brought forward"]
    pub fn answered(&self, now_ms: i64) -> Option<i64> {
        self.answered_ms.fetch_max(now_ms, Ordering::Relaxed);
        let uncounted_attempts = self.outage.passed()?;
        tracing::info!(
            uncounted_attempts,
            "GitHub answers dispatches again; failed attempts count against retry.max_attempts again"
        );
        Some(self.outage_from_ms.swap(i64::MAX, Ordering::Relaxed))
    }

    /// A look at GitHub at `now_ms` confirmed a failed dispatch: it failed
    /// too, or GitHub answered it while it fails dispatches.
    pub fn outage_confirmed_at(&self, now_ms: i64) {
        self.confirmed_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Whether an outage has been said and no dispatch answered since.
    pub fn outage_under_way(&self) -> bool {
        self.outage.running()
    }

    /// What is known of GitHub's dispatches since `since_ms`. When both
    /// happened, the later tells: GitHub that answered a dispatch and then
    /// had an outage confirmed has gone down since (an outage often starts
    /// degraded), and one that answered a dispatch after that is back.
    pub fn since(&self, since_ms: i64) -> Since {
        let answered_ms = self.answered_ms.load(Ordering::Relaxed);
        let confirmed_ms = self.confirmed_ms.load(Ordering::Relaxed);
        if confirmed_ms >= since_ms && confirmed_ms > answered_ms {
            Since::Failing
        } else if answered_ms >= since_ms {
            Since::Answering
        } else {
            Since::Unknown
        }
    }

    /// Notes an attempt not counted because GitHub answers no dispatch,
    /// made by a job last tried (or queued) at `since_ms`; the first of an
    /// outage says so, with `reason`.
    pub fn say_outage(&self, since_ms: i64, reason: &str) {
        // GitHub answered dispatches until its last answer: the outage
        // began after that, however long ago a job in a deep queue was
        // last tried. Retries scheduled before it were GitHub's answers,
        // and keep their delays when the outage ends.
        let answered_ms = self.answered_ms.load(Ordering::Relaxed);
        self.outage_from_ms
            .fetch_min(since_ms.max(answered_ms), Ordering::Relaxed);
        if self.outage.failed() {
            tracing::warn!(
                reason = %reason,
                "GitHub answers no dispatch; failed attempts do not count against retry.max_attempts until it answers one again, and jobs are retried until retry.give_up_after"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_known_since_a_moment() {
        let health = GitHubHealth::default();
        assert_eq!(health.since(1_000), Since::Unknown);
        health.outage_confirmed_at(2_000);
        assert_eq!(health.since(1_000), Since::Failing);
        assert_eq!(
            health.since(2_001),
            Since::Unknown,
            "a look before the moment says nothing"
        );
        assert_eq!(health.answered(3_000), None, "no outage was said");
        assert_eq!(health.since(2_500), Since::Answering);
        assert_eq!(
            health.since(1_000),
            Since::Answering,
            "an answer after a failed look: GitHub is back"
        );
        health.outage_confirmed_at(4_000);
        assert_eq!(health.since(3_500), Since::Failing);
        assert_eq!(
            health.since(1_000),
            Since::Failing,
            "a failed look after an answer: GitHub has gone down since"
        );
        assert_eq!(health.answered(4_000), None);
        assert_eq!(
            health.since(3_500),
            Since::Answering,
            "an answer at the same moment as a failed look outweighs it"
        );
        health.outage_confirmed_at(2_000);
        assert_eq!(
            health.since(3_000),
            Since::Answering,
            "moments only move forward"
        );
    }

    #[test]
    fn an_outage_that_ends_gives_the_earliest_attempt_it_did_not_count() {
        let health = GitHubHealth::default();
        assert_eq!(health.answered(1_000), None);
        health.say_outage(5_000, "a dispatch failed");
        health.say_outage(3_000, "another");
        health.say_outage(4_000, "a third");
        assert_eq!(health.answered(9_000), Some(3_000));
        assert_eq!(health.answered(9_500), None, "and it is over");
        health.say_outage(10_500, "again");
        assert_eq!(
            health.answered(11_000),
            Some(10_500),
            "a new outage starts afresh"
        );
        // A job last tried long before GitHub's last answer (a deep queue)
        // does not take the outage back past that answer: the retries
        // scheduled before it followed answers of GitHub's.
        health.outage_confirmed_at(12_000);
        health.say_outage(2_000, "a job queued long ago");
        assert_eq!(health.answered(13_000), Some(11_000));
    }
}
