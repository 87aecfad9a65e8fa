//! When each route's jobs that wait for a retry may next fall due, kept in
//! memory beside the writer so that a lease looks only at the routes with a
//! retry due, not at every route holding a job that waits out its backoff.
//!
//! The times are a hint that errs early: a route listed too early is looked
//! at, found with nothing due and moved on, at the cost of two index seeks.
//! A route listed too late would wait, so every way a retry can become due
//! earlier either moves its route's time as it happens (a retry recorded)
//! or has the times read again from the store: after a write of another
//! process (the `redeliver` command), after anything that can make many
//! retries due at once (see [`RetryTimes::read_again`]), and every second
//! anyway.

use std::collections::BTreeMap;
use std::ops::Bound;

/// How long the times are trusted before they are read again from the
/// store. A lease that runs out makes its job due again without a write:
/// a second bounds how late it is found, as the worker's idle poll did
/// when every lease looked at every route.
pub(super) const TRUSTED_MS: i64 = 1_000;

#[derive(Debug, Default)]
pub(super) struct RetryTimes {
    /// For each route with a job waiting for a retry, a moment before which
    /// none of its jobs is due.
    due_from: BTreeMap<String, i64>,
    /// When the times are next read from the store whole; 0 for the next
    /// lease.
    read_at_ms: i64,
    /// The store's `data_version` when they were read, which changes when
    /// another connection commits.
    data_version: i64,
}

impl RetryTimes {
    /// Whether the times must be read from the store before a lease at
    /// `now_ms`, the store's `data_version` being `data_version`.
    pub(super) fn stale(&self, now_ms: i64, data_version: i64) -> bool {
        now_ms >= self.read_at_ms || data_version != self.data_version
    }

    /// Replaces every time with those just read from the store.
    pub(super) fn read(&mut self, due_from: BTreeMap<String, i64>, now_ms: i64, data_version: i64) {
        self.due_from = due_from;
        self.read_at_ms = now_ms + TRUSTED_MS;
        self.data_version = data_version;
    }

    /// Has the times read from the store at the next lease: jobs may have
    /// become due in ways that were not noted one by one (leases given
    /// back, failed jobs queued again, a batch rolled back).
    pub(super) fn read_again(&mut self) {
        self.read_at_ms = 0;
    }

    /// A job of `route` will be retried at `at_ms`.
    pub(super) fn scheduled(&mut self, route: &str, at_ms: i64) {
        match self.due_from.get_mut(route) {
            Some(due_from) => *due_from = (*due_from).min(at_ms),
            None => {
                self.due_from.insert(route.to_string(), at_ms);
            }
        }
    }

    /// A lease found nothing of `route` due: its next retry is at `next`,
    /// or it has none that is not being sent.
    pub(super) fn moved_on(&mut self, route: &str, next: Option<i64>) {
        match next {
            Some(at_ms) => {
                if let Some(due_from) = self.due_from.get_mut(route) {
                    *due_from = at_ms;
                }
            }
            None => {
                self.due_from.remove(route);
            }
        }
    }

    /// The routes that may have a retry due at `now_ms`, in the lease's
    /// turn order: those after `after_route` in name order first, coming
    /// round to it last.
    pub(super) fn due_routes(&self, now_ms: i64, after_route: Option<&str>) -> Vec<String> {
        let start = after_route.map_or(Bound::Unbounded, Bound::Excluded);
        let later = self.due_from.range::<str, _>((start, Bound::Unbounded));
        let earlier = after_route.into_iter().flat_map(|last| {
            self.due_from
                .range::<str, _>((Bound::Unbounded, Bound::Included(last)))
        });
        later
            .chain(earlier)
            .filter(|(_, due_from)| **due_from <= now_ms)
            .map(|(route, _)| route.clone())
            .collect()
    }

    /// The earliest moment a retry may be due, so that an idle worker
    /// wakes for it.
    pub(super) fn earliest(&self) -> Option<i64> {
        self.due_from.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(entries: &[(&str, i64)]) -> RetryTimes {
        let mut times = RetryTimes::default();
        times.read(
            entries.iter().map(|(r, t)| (r.to_string(), *t)).collect(),
            10_000,
            1,
        );
        times
    }

    #[test]
    fn the_due_routes_come_in_turn_order_after_the_last_served() {
        let times = times(&[("a", 1), ("b", 50), ("c", 1), ("d", 1)]);
        assert_eq!(times.due_routes(10, None), ["a", "c", "d"]);
        assert_eq!(times.due_routes(10, Some("b")), ["c", "d", "a"]);
        assert_eq!(times.due_routes(10, Some("c")), ["d", "a", "c"]);
        assert_eq!(
            times.due_routes(10, Some("zz")),
            ["a", "c", "d"],
            "a route served last that is gone still orders the rest"
        );
        assert_eq!(times.due_routes(100, Some("a")), ["b", "c", "d", "a"]);
        assert!(times.due_routes(0, None).is_empty());
    }

    #[test]
    fn a_scheduled_retry_only_brings_its_route_forward() {
        let mut times = times(&[("a", 500)]);
        times.scheduled("a", 900);
        assert_eq!(
            times.earliest(),
            Some(500),
            "the earlier retry still counts"
        );
        times.scheduled("a", 200);
        times.scheduled("b", 300);
        assert_eq!(times.due_routes(250, None), ["a"]);
        assert_eq!(times.due_routes(300, None), ["a", "b"]);
        assert_eq!(times.earliest(), Some(200));
    }

    #[test]
    fn a_route_found_with_nothing_due_moves_on_or_leaves() {
        let mut times = times(&[("a", 1), ("b", 1)]);
        times.moved_on("a", Some(700));
        times.moved_on("b", None);
        assert_eq!(times.due_routes(600, None), Vec::<String>::new());
        assert_eq!(times.due_routes(700, None), ["a"]);
        assert_eq!(times.earliest(), Some(700));
        times.moved_on("c", Some(5));
        assert_eq!(
            times.earliest(),
            Some(700),
            "a route that is not listed is not added by a lease"
        );
    }

    #[test]
    fn the_times_are_read_again_after_a_second_another_writer_or_when_told() {
        let mut times = RetryTimes::default();
        assert!(times.stale(0, 0), "never read");
        times.read(BTreeMap::new(), 5_000, 7);
        assert!(!times.stale(5_999, 7));
        assert!(times.stale(6_000, 7));
        assert!(times.stale(5_001, 8), "another process wrote to the store");
        times.read(BTreeMap::new(), 5_000, 7);
        times.read_again();
        assert!(times.stale(5_001, 7));
    }
}
