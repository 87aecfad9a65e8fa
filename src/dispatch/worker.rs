//! The dispatch worker: leases due jobs from the store, waits for the
//! credential's turn, sends each to GitHub, classifies the answer and
//! records it. When a send fails and nothing tells whether GitHub works, it
//! looks (see `health`), so that an outage does not spend a job's attempts.
//!
//! The worker never propagates an error for a single job: it classifies and
//! records it. A store failure makes the loop back off and try again; the
//! leased jobs come back after a restart, which is why delivery is
//! at-least-once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::health::{GitHubHealth, Since};
use super::pacing::{MAX_PAUSE, MAX_UNSTATED_PAUSE, Pacer, Place, Turn, unstated_wait};
use super::retry::{self, Action, AppToken, History, Outcome};
use crate::clock::{self, now_ms};
use crate::config::RetryConfig;
use crate::github::rate_limit::{self, RateLimitWait};
use crate::github::{
    Answer, CredentialError, Credentials, GitHubClient, IssuedToken, Scope, TransportError,
};
use crate::secret::Secret;
use crate::store::{AttemptRecord, CredentialChange, Job, JobNext, Store, StoreError};
use crate::telemetry::{DispatchOutcome, Metrics, Streak};

/// How long a lease lasts. It only has to outlive one send including its
/// pacing wait (a primary rate-limit pause lasts at most an hour); leases are
/// cleared when the relay starts, so a crash never leaves jobs stuck. Pauses
/// can follow one another past it, though: `InFlight` keeps a job whose
/// lease ran out while it waited here from being sent again.
pub const LEASE: Duration = Duration::from_secs(2 * 3600);

/// The jobs this process is sending, each with whether a new lease took it
/// meanwhile. A new lease can take a job whose lease ran out while it
/// waited for its turn, or one whose outcome was just recorded as "retry
/// now" while its send was winding up. This set, not the lease, is what
/// keeps the job from being sent twice: the worker leaves it to the send
/// under way, which gives the new lease back when it ends, so that the job
/// is not left leased with nothing sending it.
///
/// A send can also end while the worker is taking leases: the store may
/// have handed out the job, still pending, just before its outcome was
/// recorded, and by the time the worker looks here the job is no longer in
/// flight. So the sends that end during a lease are noted too, and the
/// worker gives their new leases back instead of sending them again.
#[derive(Clone, Debug, Default)]
struct InFlight(Arc<Mutex<InFlightJobs>>);

#[derive(Debug, Default)]
struct InFlightJobs {
    sending: HashMap<i64, bool>,
    /// Set while the worker takes leases: the jobs whose sends ended since.
    ended_while_leasing: Option<HashSet<i64>>,
}

/// A job's place in [`InFlight`], given up when its send ends, however it
/// ends.
struct Claim {
    in_flight: InFlight,
    /// Taken by [`Claim::finish`], so that the entry is removed once: a
    /// second removal could take the entry of the job's next send.
    job_id: Option<i64>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, InFlightJobs> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called before the worker asks the store for leases.
    fn begin_leasing(&self) {
        self.lock().ended_while_leasing = Some(HashSet::new());
    }

    /// Claims the jobs a lease returned, each for one send. A job whose
    /// send is under way is left to it (which learns that the job was
    /// leased again); a job whose send ended during the lease is answered
    /// in the second list, to be given back.
    fn claim_leased<T>(
        &self,
        jobs: Vec<T>,
        id_of: impl Fn(&T) -> i64,
    ) -> (Vec<(T, Claim)>, Vec<i64>) {
        let mut state = self.lock();
        let ended = state.ended_while_leasing.take().unwrap_or_default();
        let mut claimed = Vec::with_capacity(jobs.len());
        let mut give_back = Vec::new();
        for job in jobs {
            let id = id_of(&job);
            if let Some(leased_again) = state.sending.get_mut(&id) {
                *leased_again = true;
            } else if ended.contains(&id) {
                give_back.push(id);
            } else {
                state.sending.insert(id, false);
                let claim = Claim {
                    in_flight: self.clone(),
                    job_id: Some(id),
                };
                claimed.push((job, claim));
            }
        }
        (claimed, give_back)
    }
}

impl Claim {
    /// Ends the send's claim, answering whether a lease taken meanwhile
    /// must be given back.
    fn finish(mut self) -> bool {
        self.release().unwrap_or(false)
    }

    /// Removes the entry, once; answers whether the job was leased again.
    fn release(&mut self) -> Option<bool> {
        let job_id = self.job_id.take()?;
        let mut state = self.in_flight.lock();
        if let Some(ended) = &mut state.ended_while_leasing {
            ended.insert(job_id);
        }
        state.sending.remove(&job_id)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release();
    }
}

/// Added to the recorded answer of an attempt whose credential GitHub
/// refused, so that `deliveries` and the admin API say the job is held.
const HELD_FOR_CREDENTIAL: &str = "; held: GitHub refuses the credential, and one dispatch tries it again each minute until a new one is in place";
// The text above says "each minute": it must change with the wait.
const _: () = assert!(retry::REFUSED_CREDENTIAL_WAIT.as_secs() == 60);

/// How often an idle worker looks at the store even without a wake-up, as a
/// safety net; accepted webhooks wake it at once.
pub const IDLE_POLL: Duration = Duration::from_secs(1);

/// What paused a credential, said in the one line that logs the pause.
#[derive(Debug, Clone, Copy)]
enum PauseCause {
    /// GitHub answered with a rate limit.
    RateLimited,
    /// A delivered dispatch said that nothing of the limit remains.
    Spent,
}

impl PauseCause {
    fn said(self) -> &'static str {
        match self {
            PauseCause::RateLimited => "GitHub answered with a rate limit",
            PauseCause::Spent => {
                "GitHub's rate limit for this credential is spent: an answer to a dispatch said x-ratelimit-remaining: 0"
            }
        }
    }
}

/// The pieces a worker needs.
pub struct Dispatcher {
    pub store: Store,
    pub client: GitHubClient,
    pub credentials: Arc<Credentials>,
    pub retry: RetryConfig,
    pub pacer: Arc<Pacer>,
    pub metrics: Metrics,
    pub notifier: crate::notify::Notifier,
    /// How long a lease lasts: [`LEASE`], except under the test hook.
    pub lease: Duration,
    /// How often an idle worker looks at the store unwoken: [`IDLE_POLL`],
    /// except under the test hook that lengthens it, so that the suite
    /// can tell a missed wake-up from a slow machine.
    pub idle_poll: Duration,
    /// Whether GitHub is answering at all.
    pub health: GitHubHealth,
    /// The repositories GitHub answered at another place (renamed or
    /// transferred), each said once in the log.
    pub moved: Mutex<HashSet<String>>,
    /// The labels of the credentials GitHub refuses, so that the store is
    /// told only when one is accepted again, not at every delivery.
    pub refused: Mutex<HashSet<String>>,
}

/// Lets the accept path wake the worker and `serve` stop it.
#[derive(Clone, Debug)]
pub struct DispatcherHandle {
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    in_flight: InFlight,
}

impl DispatcherHandle {
    /// Tells the worker that new jobs are due.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops leasing, lets in-flight sends finish within `grace`, and returns
    /// whether they all did.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

impl Dispatcher {
    /// Starts the worker loop on the current runtime.
    pub fn spawn(self) -> DispatcherHandle {
        let handle = DispatcherHandle {
            wake: Arc::new(Notify::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            in_flight: InFlight::default(),
        };
        let worker = Arc::new(self);
        let loop_handle = handle.clone();
        handle
            .tracker
            .spawn(async move { worker.run(loop_handle).await });
        handle
    }

    async fn run(self: Arc<Self>, handle: DispatcherHandle) {
        // Leasing is tried every few seconds while the store refuses it;
        // that is said when it starts and when it ends, not each time.
        let lease_failures = Streak::default();
        loop {
            tokio::select! {
                biased;
                _ = handle.shutdown.cancelled() => return,
                _ = self.pacer.wait_unpaused() => {}
            }
            let slots = tokio::select! {
                biased;
                _ = handle.shutdown.cancelled() => return,
                slots = self.pacer.slots(usize::MAX) => slots,
            };
            // The slots may have come free only because the send holding
            // them was answered with a pause: leasing now would take the
            // jobs due at this moment ahead of those that fall due during
            // the pause, which then lose their turn between routes.
            if self.pacer.is_paused() {
                drop(slots);
                continue;
            }
            handle.in_flight.begin_leasing();
            let leased = self
                .store
                .lease_due(now_ms(), slots.len(), clock::duration_ms(self.lease))
                .await;
            let jobs = match leased {
                Ok(jobs) => {
                    if let Some(failures) = lease_failures.passed() {
                        tracing::info!(failures, "Leasing jobs works again");
                    }
                    jobs
                }
                Err(e) => {
                    if lease_failures.failed() {
                        // The writer has logged why the store refuses.
                        tracing::warn!(error = %e, "Could not lease jobs; trying again every second");
                    }
                    drop(slots);
                    self.idle(&handle, Some(self.idle_poll)).await;
                    continue;
                }
            };
            let (jobs, ended_meanwhile) = handle.in_flight.claim_leased(jobs, |job| job.id);
            if !ended_meanwhile.is_empty() {
                // Only a pending job's lease is cleared (one whose retry is
                // due); a job that finished keeps its outcome.
                if let Err(e) = self.store.release(ended_meanwhile).await {
                    tracing::warn!(error = %e, "Could not give back the leases of jobs whose sends had just ended; they run out in two hours");
                }
            }
            if jobs.is_empty() {
                drop(slots);
                // Without the time of the next due job the worker waits
                // for its next wake-up or poll, which the store's failure
                // does not prevent.
                let next_due = match self.store.next_due_ms().await {
                    Ok(next_due) => next_due,
                    Err(e) => {
                        // It changes nothing (the worker polls every
                        // second anyway) and would repeat on each pass.
                        tracing::debug!(error = %e, "Could not read when the next retry is due");
                        None
                    }
                };
                let wait = next_due
                    .map(|at| Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64));
                self.idle(&handle, wait).await;
                continue;
            }
            for ((job, claim), slot) in jobs.into_iter().zip(slots) {
                // Taken here, in the lease's order, rather than when the
                // task first runs: tasks start in no set order.
                let place = self.pacer.place();
                let worker = self.clone();
                let shutdown = handle.shutdown.clone();
                let waker = handle.clone();
                let span = tracing::info_span!("dispatch", delivery_id = %job.delivery_id, route = %job.route, repo = %job.repo);
                handle.tracker.spawn(
                    async move {
                        let job_id = job.id;
                        let retry_scheduled = worker.send_one(job, slot, place, shutdown).await;
                        if claim.finish() {
                            // Only a pending job's lease is cleared: one
                            // that finished keeps its outcome.
                            match worker.store.release(vec![job_id]).await {
                                Ok(()) => waker.wake(),
                                Err(e) => tracing::warn!(error = %e, "Could not give back a lease taken while the job was being sent; it runs out in two hours"),
                            }
                        } else if retry_scheduled {
                            // The worker found nothing due while this job
                            // was leased, and would otherwise look again
                            // only at its idle poll, later than a retry due
                            // in under a second.
                            waker.wake();
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Sleeps until woken, until `wait` passes (capped by the idle poll), or
    /// until shutdown.
    async fn idle(&self, handle: &DispatcherHandle, wait: Option<Duration>) {
        let wait = wait.unwrap_or(self.idle_poll).min(self.idle_poll);
        if wait.is_zero() {
            return;
        }
        tokio::select! {
            _ = handle.shutdown.cancelled() => {}
            _ = handle.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// Gives back the lease of a job not yet sent, so that it goes at
    /// once when the relay starts again.
    async fn give_back(&self, job: &Job) {
        if let Err(e) = self.store.release(vec![job.id]).await {
            tracing::warn!(error = %e, "Could not give back the lease of a job not yet sent; it is sent at the next start, which clears every lease");
        }
    }

    /// Waits for the credential's turn. Waiting is abandoned on shutdown:
    /// nothing has been dispatched, so the job's lease is given back, it
    /// stays queued, and this answers `None`.
    async fn wait_turn(
        &self,
        job: &Job,
        place: Place,
        shutdown: &CancellationToken,
    ) -> Option<Turn> {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                self.give_back(job).await;
                None
            }
            turn = self.pacer.wait_turn(place) => Some(turn),
        }
    }

    /// Waits out a pause of the credential, unless the relay stops first:
    /// then the job's lease is given back and this answers false.
    async fn wait_unpaused(&self, job: &Job, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                self.give_back(job).await;
                false
            }
            () = self.pacer.wait_unpaused() => true,
        }
    }

    /// Sends one job until GitHub's answer settles it, and answers whether
    /// a retry was scheduled.
    async fn send_one(
        &self,
        job: Job,
        slot: OwnedSemaphorePermit,
        place: Place,
        shutdown: CancellationToken,
    ) -> bool {
        // Held until the request starts, so that requests start in the
        // order of their places; but not while a token is asked for, which
        // would make every other request wait on GitHub's answer to it.
        let Some(turn) = self.wait_turn(&job, place, &shutdown).await else {
            return false;
        };
        let mut turn = Some(turn);
        let scope = Scope::for_path(&job.path);
        let wanted_run_details = scope == Scope::Workflow && self.client.run_details_supported();
        let mut with_run_details = wanted_run_details;
        let mut retried_auth = false;
        // A refused token only seconds old goes again itself, not whatever
        // token the cache holds by then.
        let mut same_token = None;
        // One job may need a few sends: a refused App token is sent again
        // once GitHub can know it, or renewed once, and a server that
        // refuses `return_run_details` is asked again without it. Those
        // follow-ups are part of one attempt.
        let retry_scheduled = loop {
            let token = match self
                .token(&job, scope, same_token.take(), &mut turn, &shutdown)
                .await
            {
                Some(Ok(token)) => token,
                Some(Err(e)) => break self.no_token(&job, &e, &shutdown).await,
                None => break false,
            };
            let body = if with_run_details {
                std::borrow::Cow::Owned(with_run_details_asked(&job.body))
            } else {
                std::borrow::Cow::Borrowed(job.body.as_str())
            };
            // Timed from here, so that the request's start and duration (in
            // the metric and the attempt) leave out getting a token.
            let started_ms = now_ms();
            let started = Instant::now();
            drop(turn.take());
            let answer = self.client.post_json(&job.path, &body, &token.secret).await;
            let elapsed = started.elapsed();
            self.observe(&job, scope, &answer, elapsed);
            let sent_as = SentAs {
                token: &token,
                started_ms,
                retried_auth,
                with_run_details,
            };
            let action = self.judge(&job, &answer, sent_as).await;
            match action {
                Action::Reauthenticate {
                    wait,
                    renew,
                    reason,
                } => {
                    if renew {
                        tracing::warn!(reason = %reason, "Sending again with a renewed App token");
                        if answer.as_ref().is_ok_and(|a| a.status == 404) {
                            self.credentials.note_not_found_renewal(&job.repo);
                        }
                        self.credentials.invalidate(&job.repo, scope, &token.secret);
                        retried_auth = true;
                    } else {
                        tracing::warn!(reason = %reason, wait_ms = wait.as_millis() as u64, "Sending the App token again once GitHub has had time to learn it");
                        same_token = Some(token.clone());
                    }
                    tokio::time::sleep(wait).await;
                    // The send again is a request like any other: it waits
                    // its turn, so pacing holds across follow-ups too.
                    match self.wait_turn(&job, self.pacer.place(), &shutdown).await {
                        Some(next) => turn = Some(next),
                        None => return false,
                    }
                    continue;
                }
                Action::ResendWithoutRunDetails { reason } => {
                    tracing::warn!(reason = %reason, "Sending the workflow dispatch again without return_run_details");
                    with_run_details = false;
                    match self.wait_turn(&job, self.pacer.place(), &shutdown).await {
                        Some(next) => turn = Some(next),
                        None => return false,
                    }
                    continue;
                }
                action => {
                    if wanted_run_details && !with_run_details && action == Action::Delivered {
                        // Only a success without the field proves that the
                        // field was the problem; then it is not sent to this
                        // host again.
                        self.client.forget_run_details();
                        tracing::info!(
                            "This GitHub does not support return_run_details; workflow dispatches will not ask for run details"
                        );
                    }
                    let sent = self.sent(&job, &answer, &action, started_ms, elapsed);
                    break self.finish(&job, sent, action, &shutdown).await;
                }
            }
        };
        drop(slot);
        retry_scheduled
    }

    /// The token to send `job` with: `same_token` when a refused token is
    /// to go again, else the one at hand, else a new App token. Before a
    /// new token is asked for, the turn is given up: holding it would make
    /// every other request wait on GitHub's answer. A new token then waits
    /// out any rate-limit pause that began meanwhile. `Some(Err)` when no
    /// token could be had; `None` when the relay stops during that wait,
    /// and the job's lease is then given back.
    async fn token(
        &self,
        job: &Job,
        scope: Scope,
        same_token: Option<IssuedToken>,
        turn: &mut Option<Turn>,
        shutdown: &CancellationToken,
    ) -> Option<Result<IssuedToken, CredentialError>> {
        if let Some(token) = same_token.or_else(|| self.credentials.token_at_hand(&job.repo, scope))
        {
            return Some(Ok(token));
        }
        drop(turn.take());
        let token = self.credentials.token_for(&job.repo, scope).await;
        // Other requests went on while the token was asked for (with
        // `concurrency` above 1, or pacing off), and one may have met a
        // rate limit: this one waits it out, as it would have waited for
        // its turn.
        if token.is_ok() && !self.wait_unpaused(job, shutdown).await {
            return None;
        }
        Some(token)
    }

    /// What GitHub's answer to a dispatch means for the job. On the way it
    /// tells the health what the answer says of GitHub, confirms an outage
    /// when the answer may be one, and heeds a rate limit, which holds the
    /// whole credential back.
    async fn judge(
        &self,
        job: &Job,
        answer: &Result<Answer, TransportError>,
        sent_as: SentAs<'_>,
    ) -> Action {
        if retry::answered_by_github(answer) {
            self.github_answered().await;
        }
        let github_down = retry::may_pass(answer)
            && self
                .outage_confirmed(job, sent_as.started_ms, &sent_as.token.secret)
                .await;
        let unstated_pause = match answer {
            Ok(answer) => self.heed_rate_limit(answer).await,
            Err(_) => None,
        };
        let app_token = sent_as.token.minted_at.map(|at| AppToken {
            age: at.elapsed(),
            retried: sent_as.retried_auth,
            since_not_found_renewal: self.credentials.since_not_found_renewal(&job.repo),
        });
        let history = History {
            unstated_pause,
            github_down,
            ..self.history(job, app_token, sent_as.with_run_details)
        };
        let outcome = match answer {
            Ok(a) => Outcome::Answer(a),
            Err(e) => Outcome::Transport(e),
        };
        self.classify(outcome, history)
    }

    /// Ends an attempt that got no token: the App's token request failed,
    /// or the credential has none to give. Returns whether a retry was
    /// scheduled, as [`Self::finish`] does.
    async fn no_token(
        &self,
        job: &Job,
        error: &CredentialError,
        shutdown: &CancellationToken,
    ) -> bool {
        let reason = error.to_string();
        // A rate limit on the token request itself: the whole credential
        // waits, as for a rate-limited dispatch.
        let rate_limited = match error.rate_limit_wait() {
            Some(wait) => Some(self.heed(wait).await),
            None => None,
        };
        let outcome = Outcome::NoCredential {
            reason: &reason,
            permanent: error.is_permanent(),
            rate_limited,
        };
        // The token request is a request to GitHub: when it got no answer,
        // or one that says nothing (a timeout, a 408 or 5xx), it tells as a
        // failed look would, by the look's own rule (decision 42). A rate
        // limit is an answer, and waits on its own.
        let github_down = rate_limited.is_none()
            && error.github_did_not_answer()
            && self.token_request_unanswered(job);
        let history = History {
            github_down,
            ..self.history(job, None, false)
        };
        let action = self.classify(outcome, history);
        let sent = Sent {
            started_ms: now_ms(),
            elapsed: Duration::ZERO,
            status: None,
            detail: reason,
            result: None,
        };
        self.finish(job, sent, action, shutdown).await
    }

    /// Holds the credential back for the rate limit an answer states, or
    /// for GitHub's minimum when a secondary limit states none; returns
    /// that minimum when it applies. A rate limit is the credential's,
    /// whatever becomes of this job: even one that gives up (its wait would
    /// pass give_up_after) holds the others back for that long.
    async fn heed_rate_limit(&self, answer: &Answer) -> Option<Duration> {
        match rate_limit::rate_limit_wait(answer, clock::now_epoch_secs()) {
            Some(wait @ RateLimitWait::Stated(_)) => {
                self.heed(wait).await;
                None
            }
            Some(wait @ RateLimitWait::Unstated) => Some(self.heed(wait).await),
            None => {
                if let Some(kept) = self.pacer.answered()
                    && self.keep_unstated_run(0, None).await
                {
                    self.pacer.forgotten(kept);
                }
                // An answer that spent the credential's last request: the
                // next would be refused, so the queue waits for the reset
                // instead of sending into the limit.
                if let Some(wait) =
                    rate_limit::exhausted_wait(&answer.rate, clock::now_epoch_secs())
                {
                    self.pause(wait, PauseCause::Spent).await;
                }
                None
            }
        }
    }

    /// Pauses the credential for a rate limit, of a dispatch or of a token
    /// request alike, and returns the wait: the one GitHub stated, or, for
    /// a secondary limit that states none, GitHub's minimum of a minute,
    /// longer each time such limits repeat.
    async fn heed(&self, wait: RateLimitWait) -> Duration {
        match wait {
            RateLimitWait::Stated(wait) => {
                self.pause(wait, PauseCause::RateLimited).await;
                wait
            }
            RateLimitWait::Unstated => {
                let limit = self.pacer.pause_unstated();
                if limit.later {
                    self.keep_pause(limit.wait, PauseCause::RateLimited).await;
                }
                if let Some(in_a_row) = limit.in_a_row {
                    let until_ms = now_ms().saturating_add(clock::duration_ms(limit.wait));
                    self.keep_unstated_run(in_a_row, Some(until_ms)).await;
                }
                limit.wait
            }
        }
    }

    /// What an attempt that ends the send records: GitHub's status and
    /// words, the redirect of a renamed repository, and a workflow run's
    /// details when the dispatch created one.
    fn sent(
        &self,
        job: &Job,
        answer: &Result<Answer, TransportError>,
        action: &Action,
        started_ms: i64,
        elapsed: Duration,
    ) -> Sent {
        let status = answer.as_ref().ok().map(|a| a.status);
        let mut detail = match answer {
            Ok(a) => match &a.message {
                Some(m) => format!("{} {}", a.status, m),
                None => a.status.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if let Ok(Answer {
            redirected_to: Some(to),
            ..
        }) = answer
        {
            detail = format!("{detail} ({})", self.moved(&job.repo, to));
        }
        let result = answer
            .as_ref()
            .ok()
            .filter(|_| *action == Action::Delivered)
            .and_then(run_details);
        if let Some(result) = &result {
            tracing::info!(
                workflow_run_id = %result["workflow_run_id"],
                html_url = %result["html_url"].as_str().unwrap_or_default(),
                "Workflow run created"
            );
        }
        Sent {
            started_ms,
            elapsed,
            status,
            detail,
            result: result.map(|r| r.to_string()),
        }
    }

    /// Pauses the credential for `wait`, as GitHub asked. Only a pause that
    /// ends later than the one under way is kept: the answers of a fan-out
    /// to the same limit add no store write each.
    async fn pause(&self, wait: Duration, cause: PauseCause) {
        if self.pacer.pause(wait) {
            self.keep_pause(wait, cause).await;
        }
    }

    /// Takes up the pause kept by `Dispatcher::keep_pause` before a
    /// restart: the limit is GitHub's, whatever became of this process.
    /// Called before [`Dispatcher::spawn`], so that the pause is in force
    /// before anything can ask GitHub.
    pub async fn resume_kept_pause(&self) {
        let now = now_ms();
        match self.store.pause_until_ms().await {
            Ok(Some(until_ms)) if until_ms > now => {
                // No longer than any pause can be: a pause kept under a
                // clock that ran fast, or before the clock was set back,
                // would otherwise hold every start that long.
                let left = Duration::from_millis((until_ms - now) as u64).min(MAX_PAUSE);
                self.pacer.pause(left);
                let until_ms = now.saturating_add(clock::duration_ms(left));
                self.metrics.github_paused_until(until_ms);
                tracing::info!(
                    wait_ms = left.as_millis() as u64,
                    until = %crate::clock::rfc3339(until_ms),
                    "Waiting out the rate-limit pause GitHub asked for before the restart"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the rate-limit pause kept in the store")
            }
        }
        match self.store.unstated_run().await {
            Ok(Some((in_a_row, until_ms))) => {
                // What is left of the last one's pause; nothing when it
                // is over, which lets the next answer that is not a rate
                // limit end the run. No longer than such a pause can be,
                // for a pause kept under a clock that ran fast.
                let left = until_ms.map_or(0, |until_ms| until_ms.saturating_sub(now));
                let left = Duration::from_millis(left.max(0) as u64).min(MAX_UNSTATED_PAUSE);
                self.pacer
                    .resume_unstated(in_a_row, tokio::time::Instant::now() + left);
                tracing::info!(
                    in_a_row,
                    next_wait_ms = clock::duration_ms(unstated_wait(in_a_row.saturating_add(1))),
                    "GitHub's rate limits that stated no wait were in a row before the restart; the next one pauses longer, until GitHub answers otherwise"
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the count of GitHub's rate limits in a row kept in the store")
            }
        }
    }

    /// Keeps the run of rate limits that stated no wait in the store, so
    /// that a restart, or a relay crashing again and again, goes on
    /// doubling the pause instead of asking GitHub again every minute.
    /// Answers whether the store took it.
    async fn keep_unstated_run(&self, in_a_row: u32, until_ms: Option<i64>) -> bool {
        match self.store.save_unstated_run(in_a_row, until_ms).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, in_a_row, "Could not keep the count of GitHub's rate limits in a row in the store");
                false
            }
        }
    }

    /// Keeps when a pause ends in the store, so that a restart inside it
    /// waits the rest out instead of sending into a limit GitHub still
    /// enforces. The pause is logged here, once, with what brought it.
    async fn keep_pause(&self, wait: Duration, cause: PauseCause) {
        let now = now_ms();
        let until_ms = now.saturating_add(clock::duration_ms(wait));
        let latest_ms = now.saturating_add(clock::duration_ms(MAX_PAUSE));
        self.metrics.github_paused_until(until_ms);
        tracing::warn!(
            wait_ms = clock::duration_ms(wait),
            until = %crate::clock::rfc3339(until_ms),
            cause = cause.said(),
            "GitHub's rate limit holds back every dispatch until then"
        );
        if let Err(e) = self.store.save_pause(until_ms, latest_ms).await {
            tracing::warn!(error = %e, "Could not keep GitHub's rate-limit pause in the store; a restart inside it would not wait");
        }
    }

    /// GitHub answered a dispatch as it does when it works. When that ends
    /// an outage, the retries the outage scheduled are made due at once,
    /// oldest first: they waited for GitHub, which answers again, and would
    /// otherwise go after the webhooks that came since.
    async fn github_answered(&self) {
        let Some(from_ms) = self.health.answered(now_ms()) else {
            return;
        };
        match self.store.bring_retries_forward(from_ms, now_ms()).await {
            Ok(0) => {}
            Ok(brought_forward) => tracing::info!(
                brought_forward,
                "The retries scheduled during the outage are due now, oldest first"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "Could not bring forward the retries scheduled during the outage; each waits for its own time"
            ),
        }
    }

    /// Whether GitHub has answered no dispatch since `job` was last tried
    /// (or queued), the job's own failed attempt aside: then the failure is
    /// GitHub's, not the job's (decision 53). When nothing tells, it looks:
    /// it asks GitHub for the job's repository with the same token, so
    /// that the log can say whether GitHub fails everything or its
    /// dispatches alone. The look decides nothing else (an outage ends only
    /// when a dispatch is answered), and that line is logged once, when the
    /// outage starts: once one is under way, the failed dispatch itself
    /// confirms it, dated by its sending, and no look is made. So an outage
    /// costs one look, however long it lasts and however many jobs it holds.
    ///
    /// A job with a failure already counted is judged the same way: GitHub
    /// going down just after it answered another dispatch is far more
    /// common than a repository it fails alone, and counting every failure
    /// after the first would fail such a job within minutes of the outage
    /// starting (decision 53).
    async fn outage_confirmed(&self, job: &Job, sent_ms: i64, token: &Secret) -> bool {
        let reason = match self.health.since(job.since_ms) {
            Since::Answering => return false,
            Since::Failing => format!("a dispatch to {} failed", job.repo),
            Since::Unknown if self.health.outage_under_way() => {
                // Dated by its sending, as a look is: a dispatch answered
                // while this one was on its way is the later news.
                self.health.outage_confirmed_at(sent_ms);
                format!("a dispatch to {} failed", job.repo)
            }
            Since::Unknown => {
                let started = Instant::now();
                let look_sent_ms = now_ms();
                let look = self
                    .client
                    .get(&format!("/repos/{}", job.repo), token)
                    .await;
                let status = look.as_ref().ok().map(|a| a.status);
                self.metrics
                    .github_request("repository", status, started.elapsed().as_secs_f64());
                // A look GitHub answers says that it works, not that its
                // dispatches do: it confirms the outage all the same. It
                // tells of the moment it was sent: a dispatch answered
                // while it was on its way is the later news, and ends the
                // outage, where a look dated by its answer would open it
                // again with nothing left to end it.
                self.health.outage_confirmed_at(look_sent_ms);
                if retry::answered_by_github(&look) {
                    format!(
                        "a dispatch to {} failed while GitHub answers a look at the repository: its dispatches fail",
                        job.repo
                    )
                } else {
                    format!(
                        "a dispatch to {} failed and so did a look at GitHub",
                        job.repo
                    )
                }
            }
        };
        // A dispatch answered while the look was on its way settles it:
        // GitHub answered another dispatch since the job's last try.
        if self.health.since(job.since_ms) == Since::Answering {
            return false;
        }
        self.health.say_outage(job.since_ms, &reason);
        true
    }

    /// Whether GitHub is down for `job`, after a request of its own that
    /// GitHub did not answer (a token request): only if no dispatch was
    /// answered since the job was last tried. The failed request counts as
    /// a failed look.
    fn token_request_unanswered(&self, job: &Job) -> bool {
        if self.health.since(job.since_ms) == Since::Answering {
            return false;
        }
        self.health.outage_confirmed_at(now_ms());
        self.health.say_outage(
            job.since_ms,
            &format!(
                "an App token request for {} failed, and GitHub answered no dispatch meanwhile",
                job.repo
            ),
        );
        true
    }

    fn history(&self, job: &Job, app_token: Option<AppToken>, sent_run_details: bool) -> History {
        History {
            failures: job.failures,
            github_down: false,
            // Counted from when the job was queued, so that a redelivered
            // job gets the whole of `retry.give_up_after` again.
            age: Duration::from_millis(now_ms().saturating_sub(job.created_at_ms).max(0) as u64),
            app_token,
            sent_run_details,
            workflow: Scope::for_path(&job.path) == Scope::Workflow,
            unstated_pause: None,
        }
    }

    fn classify(&self, outcome: Outcome<'_>, history: History) -> Action {
        let now_epoch = clock::now_epoch_secs();
        let jitter: f64 = rand::thread_rng().r#gen();
        retry::classify(outcome, history, &self.retry, now_epoch, jitter)
    }

    /// Counts one request in the metrics.
    fn observe(
        &self,
        job: &Job,
        scope: Scope,
        answer: &Result<Answer, crate::github::TransportError>,
        elapsed: Duration,
    ) {
        let endpoint = match scope {
            Scope::Workflow => "workflow_dispatch",
            Scope::Contents => "repository_dispatch",
        };
        let status = answer.as_ref().ok().map(|a| a.status);
        self.metrics
            .github_request(endpoint, status, elapsed.as_secs_f64());
        if let Ok(a) = answer
            && let Some(remaining) = a.rate.remaining
        {
            let now = clock::now_epoch_secs();
            let window = rate_limit::reset_on_our_clock(&a.rate, now).zip(a.rate.limit);
            self.metrics.rate_limit_remaining(
                &self.credentials.label(&job.repo),
                remaining,
                window,
            );
        }
    }

    /// What a redirect of a dispatch to `repo` means, said in the log the
    /// first time (GitHub redirects every request that names a repository by
    /// a former name; the dispatch got through, and routes.yaml is to fix).
    fn moved(&self, repo: &str, to: &str) -> String {
        let said = format!(
            "GitHub redirected the request to {to}: the repository {repo} was renamed or transferred; \
write its name now in routes.yaml (`dispatch-relay check --online` shows it)"
        );
        let first = (self.moved.lock())
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(repo.to_ascii_lowercase());
        if first {
            tracing::warn!(repo, redirected_to = to, "{said}");
        }
        said
    }

    /// Records the attempt and answers whether it scheduled a retry.
    async fn finish(
        &self,
        job: &Job,
        sent: Sent,
        action: Action,
        shutdown: &CancellationToken,
    ) -> bool {
        let Sent {
            started_ms,
            elapsed,
            status,
            mut detail,
            result,
        } = sent;
        // GitHub's answer alone ("401 Bad credentials") would read in
        // `deliveries` as a job that is merely being retried; it is held,
        // and waits for its owner.
        if let Action::Retry {
            credential_refused: true,
            ..
        } = action
        {
            detail.push_str(HELD_FOR_CREDENTIAL);
        }
        let credential = self.note_credential(job, &action);
        let next = self.settle(job, &action, status);
        let record = AttemptRecord {
            job_id: job.id,
            started_at_ms: started_ms,
            duration_ms: elapsed.as_millis() as i64,
            status_code: status,
            detail,
            next,
            result,
            credential,
        };
        self.record(record, shutdown).await
    }

    /// Notes what the attempt said of the job's credential: whether GitHub
    /// refuses it, for the gauge, and for the store to keep with the
    /// attempt when that changed. A refusal is always kept (the store
    /// keeps the first), an acceptance only of a credential refused.
    fn note_credential(&self, job: &Job, action: &Action) -> Option<CredentialChange> {
        let refused_now = match action {
            Action::Retry {
                credential_refused: true,
                ..
            }
            | Action::GiveUpRefused { .. } => true,
            Action::Delivered => false,
            _ => return None,
        };
        let label = self.credentials.label(&job.repo);
        // The series appears with the credential's first delivered or held
        // dispatch; a delivery clears it (a token renewed, the failed-login
        // limit over).
        self.metrics.github_credential_refused(&label, refused_now);
        let mut refused = (self.refused.lock()).unwrap_or_else(|poisoned| poisoned.into_inner());
        if refused_now {
            refused.insert(label.clone());
            Some(CredentialChange::Refused(label))
        } else {
            refused
                .remove(&label)
                .then_some(CredentialChange::Accepted(label))
        }
    }

    /// What becomes of the job after an attempt that ended in `action`,
    /// counted in the metrics and said in the log. A retry that waits for
    /// the credential holds the others back too; a failure for good is
    /// told to the notifier.
    fn settle(&self, job: &Job, action: &Action, status: Option<u16>) -> JobNext {
        match action {
            Action::Delivered => {
                self.metrics
                    .dispatch(&job.route, DispatchOutcome::Delivered);
                let latency = (now_ms() - job.received_at_ms).max(0) as f64 / 1000.0;
                self.metrics.delivered(&job.route, latency);
                tracing::info!(status, attempts = job.attempts + 1, "Dispatch delivered");
                JobNext::Delivered
            }
            Action::Retry {
                delay,
                pause_credential,
                stated_wait,
                counts_as_failure,
                credential_refused,
                reason,
            } => {
                self.metrics.dispatch(&job.route, DispatchOutcome::Retried);
                if *credential_refused {
                    self.alert(job, reason, true);
                }
                // Where the answer paused the credential (and kept the
                // pause) already; this only makes sure the job's own wait
                // holds the others back too.
                if let Some(wait) = pause_credential {
                    self.pacer.pause(*wait);
                }
                tracing::warn!(reason = %reason, status, retry_in_ms = delay.as_millis() as u64, "Dispatch will be retried");
                let now = now_ms();
                JobNext::Retry {
                    at_ms: now.saturating_add(clock::duration_ms(*delay)),
                    not_before_ms: stated_wait
                        .map(|wait| now.saturating_add(clock::duration_ms(wait))),
                    counts_as_failure: *counts_as_failure,
                }
            }
            Action::Fail { reason }
            | Action::GiveUpRefused { reason }
            | Action::Reauthenticate { reason, .. }
            | Action::ResendWithoutRunDetails { reason } => {
                if let Action::GiveUpRefused { .. } = action {
                    // The job gives up, the refusal stays the credential's:
                    // the dispatches behind it wait their minute as for any
                    // refusal, rather than all going with it at once.
                    self.pacer.pause(retry::REFUSED_CREDENTIAL_WAIT);
                }
                // The send loop handles the last two; should one ever reach
                // here it is recorded as the failure it describes.
                self.metrics.dispatch(&job.route, DispatchOutcome::Failed);
                tracing::error!(reason = %reason, status, "Dispatch failed for good");
                self.alert(job, reason, false);
                JobNext::Failed {
                    reason: reason.clone(),
                }
            }
        }
    }

    /// Tells the notify destinations of a job that failed for good, or
    /// that is `waiting` for a credential GitHub refuses.
    fn alert(&self, job: &Job, reason: &str, waiting: bool) {
        self.notifier.failed(crate::notify::Failure {
            route: job.route.clone(),
            delivery_id: job.delivery_id.clone(),
            repo: job.repo.clone(),
            reason: reason.to_owned(),
            waiting,
        });
    }

    /// Offers an attempt's record to the store until it takes it, and
    /// answers whether the record scheduled a retry. It answers false
    /// without the record taken when the relay stops, or after
    /// [`RECORD_OWN_ERRORS`] errors of the record itself.
    async fn record(&self, record: AttemptRecord, shutdown: &CancellationToken) -> bool {
        // The outcome is known, so it is offered to the store until the store
        // takes it, however long the store is unavailable (a full disk,
        // another process holding the write lock): a job left leased would
        // be sent again when its lease ran out, although GitHub has it. The
        // job keeps its slot meanwhile, so nothing new is sent into a store
        // that cannot record it. Two things end the offers: a stop (the
        // lease is then cleared at the next start, which sends the job
        // again, as at-least-once allows), and an error of this record
        // itself rather than of the store, which will not pass.
        let retry_scheduled = matches!(record.next, JobNext::Retry { .. });
        let mut wait = RECORD_FIRST_WAIT;
        let failures = Streak::default();
        let mut own_errors = 0u32;
        loop {
            let error = match self.store.record(record.clone()).await {
                Ok(()) => {
                    if let Some(failures) = failures.passed() {
                        tracing::info!(
                            failures,
                            "Recorded the attempt once the store took writes again"
                        );
                    }
                    return retry_scheduled;
                }
                Err(e) => e,
            };
            if !matches!(error, StoreError::Unavailable(_)) {
                own_errors += 1;
                if own_errors >= RECORD_OWN_ERRORS {
                    tracing::error!(error = %error, "Could not record the attempt; the job will be sent again when its lease runs out or at the next start");
                    return false;
                }
            }
            if failures.failed() {
                tracing::warn!(error = %error, "Could not record the attempt; trying until the store takes it");
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tracing::warn!("Stopping with an attempt not recorded; the job will be sent again at the next start");
                    return false;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RECORD_MAX_WAIT);
        }
    }
}

/// How many errors of an attempt's record itself (not of the store) end
/// the offers.
const RECORD_OWN_ERRORS: u32 = 5;

/// The first wait before an attempt's outcome is offered to the store again.
const RECORD_FIRST_WAIT: Duration = Duration::from_millis(200);
/// The longest wait between offers.
const RECORD_MAX_WAIT: Duration = Duration::from_secs(5);

/// How a dispatch was sent, which the meaning of GitHub's answer depends on.
#[derive(Clone, Copy)]
struct SentAs<'a> {
    token: &'a IssuedToken,
    /// When the request left, in milliseconds since the epoch.
    started_ms: i64,
    /// Whether the token was renewed after GitHub refused the one before.
    retried_auth: bool,
    /// Whether the body asked for the run's details.
    with_run_details: bool,
}

/// What one attempt sent and got back, as it is recorded.
struct Sent {
    started_ms: i64,
    elapsed: Duration,
    /// GitHub's status, `None` when no answer came.
    status: Option<u16>,
    /// A short account of the answer or the error.
    detail: String,
    /// The run details of a workflow dispatch, as JSON.
    result: Option<String>,
}

/// A workflow dispatch's body as first sent: asking GitHub for the run it
/// starts (`"return_run_details": true`). `render` prints the same.
pub fn with_run_details_asked(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert(
                "return_run_details".to_string(),
                serde_json::Value::Bool(true),
            );
            serde_json::Value::Object(map).to_string()
        }
        _ => body.to_string(),
    }
}

/// The run details of a workflow dispatch answer, when it has them.
fn run_details(answer: &Answer) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(answer.body.as_deref()?).ok()?;
    let run_id = value.get("workflow_run_id")?.as_u64()?;
    Some(serde_json::json!({
        "workflow_run_id": run_id,
        "html_url": value.get("html_url").and_then(|v| v.as_str()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims one job as a lease that returned it would.
    fn claim(in_flight: &InFlight, id: i64) -> Option<Claim> {
        in_flight.begin_leasing();
        let (mut claimed, _) = in_flight.claim_leased(vec![id], |id| *id);
        claimed.pop().map(|(_, claim)| claim)
    }

    #[test]
    fn a_job_in_flight_is_not_claimed_again_until_its_send_ends() {
        let in_flight = InFlight::default();
        let first = claim(&in_flight, 7).expect("a job not in flight is claimed");
        let other = claim(&in_flight, 8).expect("other jobs are unaffected");
        assert!(claim(&in_flight, 7).is_none(), "a second lease leaves it");
        assert!(first.finish(), "the send gives the second lease back");
        assert!(
            !other.finish(),
            "a job leased once has nothing to give back"
        );
        let again = claim(&in_flight, 7).expect("claimed again once its send ended");
        drop(again);
        assert!(
            claim(&in_flight, 7).is_some(),
            "a claim dropped unfinished ends too"
        );
    }

    #[test]
    fn a_job_whose_send_ends_during_a_lease_is_given_back_not_claimed() {
        let in_flight = InFlight::default();
        let sending = claim(&in_flight, 7).unwrap();
        in_flight.begin_leasing();
        // The store hands the job out, then its send records and ends,
        // then the worker looks at what it leased.
        assert!(!sending.finish());
        let (claimed, give_back) = in_flight.claim_leased(vec![7, 9], |id| *id);
        assert_eq!(claimed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [9]);
        assert_eq!(give_back, [7]);
        // The next lease takes it as usual.
        drop(claimed);
        assert!(claim(&in_flight, 7).is_some());
    }
}
