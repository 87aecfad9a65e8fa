//! Pacing of requests per GitHub credential.
//!
//! GitHub's guidance for mutating requests is to make them one at a time, at
//! least a second apart, and to stay under about 80 a minute; going faster
//! trips secondary rate limits, which then stop every dispatch. A `Pacer`
//! enforces that per credential and, when GitHub answers with a rate limit,
//! pauses the credential's whole queue until GitHub's wait is over. It
//! gives turns in the queue's order: each leased job takes a [`Place`] in
//! line, and its [`Turn`] lasts until its request starts.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use crate::config::Pacing;
use crate::github::rate_limit::DEFAULT_RATE_LIMIT_WAIT;

/// The most requests in flight when pacing is off. It bounds memory and
/// sockets under a deep queue; the fake GitHub of the benchmarks saturates
/// well below it.
pub const UNPACED_IN_FLIGHT: usize = 64;

/// The longest pause: the longest wait believed from GitHub's headers.
pub const MAX_PAUSE: Duration = Duration::from_secs(crate::github::rate_limit::MAX_ASKED_WAIT_SECS);

/// The longest pause after rate limits that do not say how long to wait.
pub const MAX_UNSTATED_PAUSE: Duration = Duration::from_secs(16 * 60);

/// The most requests to GitHub in flight at once under `pacing`.
pub fn max_in_flight(pacing: &Pacing) -> usize {
    match pacing {
        Pacing::Off => UNPACED_IN_FLIGHT,
        Pacing::Paced { concurrency, .. } => (*concurrency).max(1) as usize,
    }
}

/// Pacing state for one credential.
#[derive(Debug)]
pub struct Pacer {
    slots: Arc<Semaphore>,
    min_interval: Duration,
    per_minute: Option<DefaultDirectRateLimiter>,
    /// The earliest moment the next request may start (min_interval).
    next_start: Mutex<Instant>,
    /// Set while GitHub has asked us to wait.
    paused_until: Mutex<Option<Instant>>,
    /// Rate limits in a row that did not say how long to wait, and what
    /// the store was told of them.
    unstated: Mutex<UnstatedRun>,
    /// The last place in the line for turns (see [`Place`]).
    last_place: Mutex<Option<oneshot::Receiver<()>>>,
}

/// A request's place in the line for turns, taken when the request is
/// leased, in the queue's order. Turns are then waited for one place at a
/// time, in that order, whichever task runs first: requests waiting
/// together on the per-minute budget, or for a pause to end, used to race
/// when they woke, and the tasks of one lease start in no set order, so a
/// route's dispatches could start out of order. Only the waiting is one at
/// a time; the requests themselves still run `concurrency` at once.
#[derive(Debug)]
pub struct Place {
    /// Ends when the place before has had its turn, or was given up.
    after: Option<oneshot::Receiver<()>>,
    /// Dropped when this place has had its turn (or is given up), which
    /// lets the next place go.
    done: oneshot::Sender<()>,
}

/// A request's turn, held until the request starts; dropping it lets the
/// next place go. The worker gives it up early when the request must first
/// ask GitHub for a token, so that a slow answer holds back no other
/// request (such a request may then start after later ones).
#[derive(Debug)]
pub struct Turn {
    _done: oneshot::Sender<()>,
}

impl Pacer {
    pub fn new(pacing: &Pacing) -> Pacer {
        match pacing {
            Pacing::Off => Pacer {
                slots: Arc::new(Semaphore::new(max_in_flight(pacing))),
                min_interval: Duration::ZERO,
                per_minute: None,
                next_start: Mutex::new(Instant::now()),
                paused_until: Mutex::new(None),
                unstated: Mutex::new(UnstatedRun::default()),
                last_place: Mutex::new(None),
            },
            Pacing::Paced {
                min_interval,
                per_minute,
                ..
            } => Pacer {
                slots: Arc::new(Semaphore::new(max_in_flight(pacing))),
                min_interval: *min_interval,
                // `Quota::per_minute(n)` also allows a burst of n at once,
                // which with a short `min_interval` would let about twice n
                // through in one minute; a burst of one spreads them evenly.
                per_minute: NonZeroU32::new(*per_minute).map(|n| {
                    RateLimiter::direct(Quota::per_minute(n).allow_burst(NonZeroU32::MIN))
                }),
                next_start: Mutex::new(Instant::now()),
                paused_until: Mutex::new(None),
                unstated: Mutex::new(UnstatedRun::default()),
                last_place: Mutex::new(None),
            },
        }
    }

    /// Waits for a free slot (concurrency), then takes every other slot that
    /// is free right now, up to `max`, so one lease can fill them all.
    pub async fn slots(&self, max: usize) -> Vec<OwnedSemaphorePermit> {
        let Ok(first) = self.slots.clone().acquire_owned().await else {
            return Vec::new();
        };
        let mut permits = vec![first];
        while permits.len() < max {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        permits
    }

    /// Waits while GitHub has paused this credential.
    pub async fn wait_unpaused(&self) {
        while let Some(until) = self.paused_until_now() {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Takes the next place in the line for turns.
    pub fn place(&self) -> Place {
        let (done, next) = oneshot::channel();
        let after = self.last_place.lock().expect("pacer lock").replace(next);
        Place { after, done }
    }

    /// Waits for the turn of the request at `place`: after the places
    /// before it, after any pause, `min_interval` after the previous start,
    /// and within the per-minute budget. The turn is the caller's until it
    /// drops it, when its request starts.
    pub async fn wait_turn(&self, place: Place) -> Turn {
        if let Some(after) = place.after {
            // Nothing is ever sent: the place before ends by dropping its
            // sender, when its request started or it was given up.
            let _ = after.await;
        }
        let turn = Turn { _done: place.done };
        let mut budgeted = false;
        loop {
            self.wait_unpaused().await;
            // One place in the per-minute budget per request, however many
            // times a pause makes it take its turn again.
            if let Some(limiter) = self.per_minute.as_ref().filter(|_| !budgeted) {
                limiter.until_ready().await;
                budgeted = true;
            }
            if !self.min_interval.is_zero() {
                let start = {
                    let mut next = self.next_start.lock().expect("pacer lock");
                    let start = (*next).max(Instant::now());
                    *next = start + self.min_interval;
                    start
                };
                tokio::time::sleep_until(start).await;
            }
            // A pause may have begun while this request waited its turn.
            // The turn is then taken again after it, so that the requests
            // it held start `min_interval` apart rather than all together
            // the moment it ends.
            if self.paused_until_now().is_none() {
                return turn;
            }
        }
    }

    /// Whether GitHub has this credential paused at this moment.
    pub fn is_paused(&self) -> bool {
        self.paused_until_now().is_some()
    }

    /// When the pause under way ends; `None` when there is none.
    fn paused_until_now(&self) -> Option<Instant> {
        let until = (*self.paused_until.lock().expect("pacer lock"))?;
        (until > Instant::now()).then_some(until)
    }

    /// Pauses the credential after a rate limit that did not say how long
    /// to wait (a secondary limit without `retry-after`), and returns the
    /// pause. GitHub asks for at least a minute, and for exponentially
    /// longer waits while such limits repeat, warning that continuing to
    /// make requests may get an integration banned: the pause doubles with
    /// each one in a row, up to [`MAX_UNSTATED_PAUSE`].
    ///
    /// Answers to requests that were already in flight when the pause began
    /// belong to the same limit: they neither lengthen the pause nor, for a
    /// success, end the run. The second value says whether the pause's end
    /// moved later.
    pub fn pause_unstated(&self) -> UnstatedPause {
        let now = Instant::now();
        let (wait, in_a_row) = {
            let mut run = self.unstated.lock().expect("pacer lock");
            let UnstatedRun {
                in_a_row,
                until,
                kept,
                ..
            } = &mut *run;
            if let Some(until) = until.filter(|until| *until > now) {
                // The same limit, seen by a request already in flight.
                return UnstatedPause {
                    wait: until - now,
                    later: false,
                    in_a_row: None,
                };
            }
            *in_a_row = in_a_row.saturating_add(1);
            // The caller keeps the run in the store.
            *kept += 1;
            let wait = unstated_wait(*in_a_row);
            *until = Some(now + wait);
            (wait, *in_a_row)
        };
        UnstatedPause {
            wait,
            later: self.pause(wait),
            in_a_row: Some(in_a_row),
        }
    }

    /// Records an answer from GitHub that was not a rate limit, which ends
    /// a run of unstated ones, unless it arrives during the pause the last
    /// of them set (it was sent before that limit). While no run is under
    /// way but the store may still hold one, answers what the store was
    /// last told, for [`Pacer::forgotten`] once the store has forgotten
    /// it: a write that failed is then tried again at the next answer.
    pub fn answered(&self) -> Option<u64> {
        let mut run = self.unstated.lock().expect("pacer lock");
        if run.until.is_some_and(|until| until > Instant::now()) {
            return None;
        }
        run.in_a_row = 0;
        run.until = None;
        (run.kept > run.forgotten).then_some(run.kept)
    }

    /// The store has forgotten the run up to `kept` (from
    /// [`Pacer::answered`]); a run kept since is still to be forgotten.
    pub fn forgotten(&self, kept: u64) {
        let mut run = self.unstated.lock().expect("pacer lock");
        run.forgotten = run.forgotten.max(kept);
    }

    /// Takes up a run of unstated rate limits kept from before a restart:
    /// `in_a_row` of them, the last pausing until `until`. GitHub asks for
    /// longer waits while such limits repeat, and a relay that restarts
    /// (or crashes, again and again) is still the same integration to it.
    pub fn resume_unstated(&self, in_a_row: u32, until: Instant) {
        let mut run = self.unstated.lock().expect("pacer lock");
        run.in_a_row = in_a_row;
        run.until = Some(until);
        run.kept += 1;
    }

    /// Pauses the credential for `wait` (GitHub's retry-after or reset), and
    /// answers whether that moved the pause's end later.
    pub fn pause(&self, wait: Duration) -> bool {
        // Waits come from GitHub's headers, capped, but an instant far
        // enough ahead must still not overflow the clock.
        let now = Instant::now();
        let until = now.checked_add(wait).unwrap_or(now + MAX_UNSTATED_PAUSE);
        let mut paused = self.paused_until.lock().expect("pacer lock");
        let later = paused.is_none_or(|t| t < until);
        if later {
            *paused = Some(until);
        }
        later
    }
}

/// The run of rate limits in a row that did not say how long to wait.
#[derive(Debug, Default)]
struct UnstatedRun {
    in_a_row: u32,
    /// When the pause the last of them set ends.
    until: Option<Instant>,
    /// How many times the store has been given a run (each limit in a row,
    /// or the run taken up at start), and up to which of those it has
    /// forgotten it again: the store may hold a run while they differ.
    kept: u64,
    forgotten: u64,
}

/// What a rate limit that did not say how long to wait did to the pacer
/// (see [`Pacer::pause_unstated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnstatedPause {
    /// How long the credential is paused for.
    pub wait: Duration,
    /// Whether the pause's end moved later.
    pub later: bool,
    /// How many such limits are now in a row; `None` when the answer
    /// belongs to the limit already under way, which it does not lengthen.
    pub in_a_row: Option<u32>,
}

/// The pause after `in_a_row` rate limits in a row that did not say how
/// long to wait: GitHub's minute, doubled for each after the first, up to
/// [`MAX_UNSTATED_PAUSE`].
pub fn unstated_wait(in_a_row: u32) -> Duration {
    DEFAULT_RATE_LIMIT_WAIT
        .saturating_mul(1u32 << in_a_row.saturating_sub(1).min(8))
        .min(MAX_UNSTATED_PAUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paced_requests_start_min_interval_apart() {
        // No per-minute budget here: governor keeps real time, not the
        // test's paused clock.
        let pacer = Pacer::new(&Pacing::Paced {
            concurrency: 1,
            min_interval: Duration::from_secs(1),
            per_minute: 0,
        });
        let start = Instant::now();
        for expected in 0..3u64 {
            pacer.wait_turn(pacer.place()).await;
            assert_eq!(start.elapsed().as_secs(), expected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_held_by_a_pause_start_min_interval_apart_after_it() {
        let pacer = Arc::new(Pacer::new(&Pacing::Paced {
            concurrency: 3,
            min_interval: Duration::from_secs(1),
            per_minute: 0,
        }));
        let start = Instant::now();
        pacer.wait_turn(pacer.place()).await;
        // Two more take their turns (at 1 s and 2 s); a rate limit then
        // pauses the credential for 5 s before either starts.
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    pacer.wait_turn(pacer.place()).await;
                    start.elapsed()
                })
            })
            .collect();
        tokio::task::yield_now().await;
        pacer.pause(Duration::from_secs(5));
        let mut started = Vec::new();
        for task in waiting {
            started.push(task.await.unwrap().as_secs());
        }
        started.sort();
        assert_eq!(started, [5, 6]);
    }

    /// Requests start in the order of their places, however the runtime's
    /// threads run their tasks: here the tasks are spawned in the reverse
    /// order, and wait together on the per-minute budget. (Real time:
    /// governor does not follow a paused test clock. Sixteen turns at
    /// 6,000 a minute take about 160 ms.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn requests_start_in_the_order_of_their_places() {
        let pacer = Arc::new(Pacer::new(&Pacing::Paced {
            concurrency: 16,
            min_interval: Duration::ZERO,
            per_minute: 6_000,
        }));
        let started = Arc::new(Mutex::new(Vec::new()));
        let places: Vec<(usize, Place)> = (0..16).map(|n| (n, pacer.place())).collect();
        let waiting: Vec<_> = places
            .into_iter()
            .rev()
            .map(|(n, place)| {
                let (pacer, started) = (pacer.clone(), started.clone());
                tokio::spawn(async move {
                    let turn = pacer.wait_turn(place).await;
                    started.lock().unwrap().push(n);
                    drop(turn);
                })
            })
            .collect();
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(*started.lock().unwrap(), (0..16).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_given_up_lets_the_next_go() {
        let pacer = Pacer::new(&Pacing::Off);
        let first = pacer.place();
        let second = pacer.place();
        drop(first);
        // The clock is paused: were the turn never given, the timeout
        // would fire at once rather than hang the suite.
        tokio::time::timeout(Duration::from_secs(60), pacer.wait_turn(second))
            .await
            .expect("the second place got its turn");
    }

    #[test]
    fn the_per_minute_budget_has_no_burst() {
        let pacer = Pacer::new(&Pacing::Paced {
            concurrency: 1,
            min_interval: Duration::ZERO,
            per_minute: 80,
        });
        let limiter = pacer.per_minute.as_ref().unwrap();
        assert!(limiter.check().is_ok());
        // A burst of 80 would let this one through at once as well.
        assert!(limiter.check().is_err(), "the next one waits 60/80 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request_until_it_ends() {
        let pacer = Pacer::new(&Pacing::Off);
        let start = Instant::now();
        pacer.pause(Duration::from_secs(30));
        pacer.pause(Duration::from_secs(5));
        pacer.wait_turn(pacer.place()).await;
        assert_eq!(
            start.elapsed().as_secs(),
            30,
            "a shorter pause never shortens a longer one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unstated_rate_limits_in_a_row_pause_longer_each_time() {
        let pacer = Pacer::new(&Pacing::Off);
        let minutes = |n: u64| Duration::from_secs(60 * n);
        let mut pauses = Vec::new();
        for n in 1..=7 {
            let limit = pacer.pause_unstated();
            assert_eq!(limit.in_a_row, Some(n));
            pauses.push(limit.wait);
            // Answers to requests already in flight belong to this limit.
            let in_flight = pacer.pause_unstated();
            assert_eq!((in_flight.wait, in_flight.in_a_row), (limit.wait, None));
            assert_eq!(pacer.answered(), None, "an answer sent before the limit");
            pacer.wait_turn(pacer.place()).await;
        }
        assert_eq!(
            pauses,
            [1, 2, 4, 8, 16, 16, 16].map(minutes),
            "doubling from GitHub's minute, up to a cap"
        );
        // An answer that is not a rate limit, after the pause, ends the run,
        // and says so until the store has forgotten it.
        let kept = pacer.answered().expect("a run to forget");
        assert_eq!(pacer.answered(), Some(kept), "the store did not take it");
        pacer.forgotten(kept);
        assert_eq!(pacer.answered(), None, "no run left to forget");
        assert_eq!(pacer.pause_unstated().wait, minutes(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_unstated_limits_resumed_after_a_restart_goes_on_doubling() {
        let pacer = Pacer::new(&Pacing::Off);
        // Three in a row before the restart, the last pause already over.
        pacer.resume_unstated(3, Instant::now());
        let next = pacer.pause_unstated();
        assert_eq!(
            (next.wait, next.in_a_row),
            (Duration::from_secs(8 * 60), Some(4))
        );
        // Resumed inside the last pause: an answer then was sent before it.
        let pacer = Pacer::new(&Pacing::Off);
        pacer.resume_unstated(2, Instant::now() + Duration::from_secs(30));
        assert_eq!(pacer.answered(), None);
        assert_eq!(pacer.pause_unstated().in_a_row, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unstated_limit_during_a_stated_pause_still_pauses_a_minute() {
        let pacer = Pacer::new(&Pacing::Off);
        pacer.pause(Duration::from_secs(2));
        assert_eq!(pacer.pause_unstated().wait, DEFAULT_RATE_LIMIT_WAIT);
        let start = Instant::now();
        pacer.wait_turn(pacer.place()).await;
        assert_eq!(start.elapsed(), DEFAULT_RATE_LIMIT_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_follow_concurrency() {
        let pacer = Pacer::new(&Pacing::Paced {
            concurrency: 2,
            min_interval: Duration::ZERO,
            per_minute: 0,
        });
        let held = pacer.slots(10).await;
        assert_eq!(held.len(), 2);
        drop(held);
        assert_eq!(
            Pacer::new(&Pacing::Off).slots(1000).await.len(),
            UNPACED_IN_FLIGHT
        );
    }
}
