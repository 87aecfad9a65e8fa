//! Failure alerts: tells a Slack incoming webhook or a generic URL when a
//! dispatch fails for good.
//!
//! Alerts are gathered for a few seconds before the first message, so that a
//! burst becomes one summary; after a message, a destination hears from us at
//! most once a minute, with a summary of everything that failed meanwhile.
//! An outage therefore sends a handful of summaries, not a flood. Like the
//! GitHub client this is an outbound edge and uses reqwest; the destination
//! URLs hold tokens and are never logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, NotifyKind, NotifyTarget};

/// How long the first failure waits for others to join its message.
const GATHER: Duration = Duration::from_secs(5);

/// The least time between two messages to one destination.
const COOLDOWN: Duration = Duration::from_secs(60);

/// At most this many failures are queued for alerting, and at most this
/// many wait in one destination's next message; beyond it they are only
/// counted, so a long outage cannot grow memory.
const QUEUE: usize = 10_000;

/// How many failures a summary describes one by one.
const EXAMPLES: usize = 5;

/// A dispatch that failed for good.
#[derive(Debug, Clone)]
pub struct Failure {
    pub route: String,
    pub delivery_id: String,
    pub repo: String,
    pub reason: String,
    /// Set when the dispatch has not failed for good but waits, with every
    /// other of its credential, for a credential GitHub refuses to be
    /// replaced: the one thing a dispatch needs a person for before it
    /// fails.
    pub waiting: bool,
}

/// Sends failures to the alert task; cheap to clone, never blocks.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    sender: Option<mpsc::Sender<Failure>>,
    /// Ends the gathering and cooldown waits at shutdown, so that what is
    /// waiting goes out at once.
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The default notifier sends nothing (no `notify:` configured).
impl Notifier {
    /// Starts one alert task per destination: the top-level `notify` list
    /// serves every route that has no `notify` of its own.
    pub fn start(config: &Config) -> Notifier {
        let any = !config.notify.is_empty()
            || config
                .routes
                .iter()
                .any(|r| r.notify.as_ref().is_some_and(|list| !list.is_empty()));
        if !any {
            return Notifier::default();
        }
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        // A destination's URL holds its token: a redirect is not followed
        // (it would carry the alert somewhere not configured) and no
        // `Referer` is sent (it would carry the URL).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(crate::github::USER_AGENT_VALUE)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .build()
            .expect("an HTTP client with a timeout and no redirects always builds");
        // Each destination is named in logs by its place in routes.yaml
        // (`notify[0]`, `routes[2].notify[1]`): its URL holds a token.
        let start_lanes = |list: &str, targets: &[NotifyTarget]| -> Vec<Lane> {
            targets
                .iter()
                .enumerate()
                .map(|(index, target)| {
                    let place = format!("{list}[{index}]");
                    let (sender, lane_receiver) = mpsc::channel::<Failure>(QUEUE);
                    let dropped = Dropped::default();
                    tasks.spawn(run_destination(
                        place.clone(),
                        target.kind.clone(),
                        http.clone(),
                        lane_receiver,
                        dropped.clone(),
                    ));
                    Lane {
                        place,
                        sender,
                        refusing: false,
                        dropped,
                    }
                })
                .collect()
        };
        let mut default_lanes = start_lanes("notify", &config.notify);
        let mut route_lanes: HashMap<String, Vec<Lane>> = config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                // A route's own list, even an empty one, replaces the
                // top-level list: `notify: []` silences the route.
                let own = r.notify.as_ref()?;
                let list = format!("routes[{index}].notify");
                Some((r.id.clone(), start_lanes(&list, own)))
            })
            .collect();
        let (sender, mut receiver) = mpsc::channel::<Failure>(QUEUE);
        let stopping = stop.clone();
        tasks.spawn(async move {
            let mut forward = |failure: Failure| {
                let lanes = route_lanes
                    .get_mut(&failure.route)
                    .unwrap_or(&mut default_lanes);
                for lane in lanes {
                    lane.send(failure.clone());
                }
            };
            loop {
                tokio::select! {
                    received = receiver.recv() => match received {
                        Some(failure) => forward(failure),
                        None => break,
                    },
                    _ = stopping.cancelled() => {
                        while let Ok(failure) = receiver.try_recv() {
                            forward(failure);
                        }
                        break;
                    }
                }
            }
            // Dropping the lanes closes them: each destination sends what
            // it holds at once and ends.
        });
        Notifier {
            sender: Some(sender),
            stop,
            tasks,
        }
    }

    /// Sends what every destination holds now, without waiting for the
    /// gathering or the cooldown, and waits up to `grace` for it to go: a
    /// failure recorded just before a restart is still reported.
    pub async fn close(&self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Reports a failure; dropped (after a log line) if the queue is full.
    pub fn failed(&self, failure: Failure) {
        let Some(sender) = &self.sender else {
            return;
        };
        match sender.try_send(failure) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => tracing::warn!(
                "The alert queue is full; a failure was not sent to notify destinations"
            ),
            // After `close`: a dispatch still in flight past the shutdown
            // grace failed. It is in the store as failed.
            Err(mpsc::error::TrySendError::Closed(_)) => tracing::warn!(
                "The relay is stopping; a failure was not sent to notify destinations"
            ),
        }
    }
}

/// One destination's queue, as the forwarding task holds it.
struct Lane {
    /// Where the destination is written in routes.yaml, such as `notify[0]`.
    place: String,
    sender: mpsc::Sender<Failure>,
    /// Whether the last failure was refused: a destination that hangs on
    /// its sends fills its queue, and that is logged once, not for every
    /// failure that follows.
    refusing: bool,
    /// The failures its full queue refused, counted for its next message.
    dropped: Dropped,
}

/// Failures per route that a destination's full queue refused: its next
/// message counts them, so that its summary says how many failed even when
/// the destination was too slow to take them all.
#[derive(Clone, Default)]
struct Dropped(Arc<Mutex<BTreeMap<String, usize>>>);

impl Dropped {
    fn count(&self, route: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(route.to_string()).or_default() += 1;
    }

    fn take(&self) -> BTreeMap<String, usize> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Lane {
    fn send(&mut self, failure: Failure) {
        match self.sender.try_send(failure) {
            Ok(()) => self.refusing = false,
            Err(mpsc::error::TrySendError::Full(failure)) => {
                self.dropped.count(&failure.route);
                if !self.refusing {
                    self.refusing = true;
                    tracing::warn!(
                        destination = %self.place,
                        "The destination's alert queue is full; failures are only counted for it until it drains"
                    );
                }
            }
            // The destination's task ended (shutdown).
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

async fn run_destination(
    place: String,
    destination: NotifyKind,
    http: reqwest::Client,
    failures: mpsc::Receiver<Failure>,
    dropped: Dropped,
) {
    let (place, destination, http) = (&place, &destination, &http);
    pace(failures, dropped, move |batch| {
        let message = render(destination, &batch);
        send(place, destination, http, message)
    })
    .await;
}

/// Gathers failures into batches and hands each to `deliver`: the first
/// failure waits [`GATHER`] for others, and after each message the next
/// waits out [`COOLDOWN`], collecting what fails meanwhile. Returns when the
/// channel closes (shutdown), which ends both waits at once.
async fn pace<F, Sent>(mut failures: mpsc::Receiver<Failure>, dropped: Dropped, mut deliver: F)
where
    F: FnMut(Batch) -> Sent,
    Sent: std::future::Future<Output = ()>,
{
    let mut batch = Batch::default();
    while let Some(first) = failures.recv().await {
        batch.push(first);
        let gathered = tokio::time::Instant::now() + GATHER;
        while let Ok(Some(more)) = tokio::time::timeout_at(gathered, failures.recv()).await {
            batch.push(more);
        }
        loop {
            batch.count_refused(dropped.take());
            deliver(std::mem::take(&mut batch)).await;
            let cooled = tokio::time::Instant::now() + COOLDOWN;
            while let Ok(Some(more)) = tokio::time::timeout_at(cooled, failures.recv()).await {
                batch.push(more);
            }
            batch.count_refused(dropped.take());
            if batch.total == 0 {
                break;
            }
        }
    }
}

/// The failures of one destination's next message: the first [`QUEUE`]
/// held, the rest only counted.
#[derive(Default)]
struct Batch {
    held: Vec<Failure>,
    total: usize,
    /// Failures per route, of all of them, held or not.
    per_route: BTreeMap<String, usize>,
}

impl Batch {
    fn push(&mut self, failure: Failure) {
        self.total += 1;
        *self.per_route.entry(failure.route.clone()).or_default() += 1;
        if self.held.len() < QUEUE {
            self.held.push(failure);
        }
    }

    /// Counts failures the destination's queue refused, per route.
    fn count_refused(&mut self, refused: BTreeMap<String, usize>) {
        for (route, count) in refused {
            self.total += count;
            *self.per_route.entry(route).or_default() += count;
        }
    }
}

/// The message for a batch of failures: one failure is described, several
/// are summarised with counts per route and a few examples.
fn render(destination: &NotifyKind, batch: &Batch) -> serde_json::Value {
    let (held, total) = (&batch.held, batch.total);
    let text = if let ([one], 1) = (held.as_slice(), total) {
        let what = if one.waiting {
            "waits for a credential GitHub refuses"
        } else {
            "failed for good"
        };
        format!(
            "dispatch-relay: a dispatch to {} {what} (route {}, delivery {}): {}",
            one.repo, one.route, one.delivery_id, one.reason
        )
    } else {
        let routes: Vec<String> = batch
            .per_route
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        let examples: Vec<String> = held
            .iter()
            .take(EXAMPLES)
            .map(|f| format!("• {} (delivery {}): {}", f.repo, f.delivery_id, f.reason))
            .collect();
        let what = if held.iter().any(|f| f.waiting) {
            "failed for good or wait for a credential GitHub refuses"
        } else {
            "failed for good"
        };
        format!(
            "dispatch-relay: {total} dispatches {what} ({}). `dispatch-relay deliveries --status failed` lists those that failed; `dispatch-relay redeliver --failed` sends them again.\n{}",
            routes.join(", "),
            examples.join("\n")
        )
    };
    match destination {
        // Slack reads `<...>` as a link or a mention (`<!channel>`), and a
        // reason quotes what GitHub said about what a sender sent.
        NotifyKind::Slack(_) => serde_json::json!({ "text": slack_escaped(&text) }),
        NotifyKind::Url(_) => serde_json::json!({
            "event": "dispatch_failed",
            "count": total,
            "text": text,
            "failures": held.iter().take(100).map(|f| serde_json::json!({
                "route": f.route, "delivery_id": f.delivery_id, "repo": f.repo, "reason": f.reason,
                "waiting": f.waiting,
            })).collect::<Vec<_>>(),
        }),
    }
}

/// Text escaped as Slack's message formatting asks: `&`, `<` and `>`.
fn slack_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn send(
    place: &str,
    destination: &NotifyKind,
    http: &reqwest::Client,
    message: serde_json::Value,
) {
    let url = match destination {
        NotifyKind::Slack(url) | NotifyKind::Url(url) => url.expose(),
    };
    match http.post(url).json(&message).send().await {
        Ok(response) if response.status().is_success() => {
            tracing::info!(destination = %place, "Failure alert sent");
        }
        Ok(response) => {
            tracing::warn!(
                destination = %place,
                status = response.status().as_u16(),
                "A notify destination refused the failure alert"
            );
        }
        Err(e) => {
            // reqwest's error would print the URL, which holds a token.
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            tracing::warn!(
                destination = %place,
                error = kind,
                "Could not send a failure alert"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn failure(route: &str, n: usize) -> Failure {
        Failure {
            route: route.into(),
            delivery_id: format!("d{n}"),
            repo: "acme/blog".into(),
            reason: "repository not found".into(),
            waiting: false,
        }
    }

    /// Driven time: failures at the given seconds, and the messages that
    /// `pace` sends, each with when and how many failures it counts.
    #[tokio::test(start_paused = true)]
    async fn a_destination_hears_at_most_once_a_minute_with_all_that_failed_meanwhile() {
        let start = tokio::time::Instant::now();
        let (sender, receiver) = mpsc::channel(QUEUE);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        let task = tokio::spawn(pace(receiver, Dropped::default(), move |batch| {
            record
                .lock()
                .unwrap()
                .push((start.elapsed().as_secs(), batch.total));
            std::future::ready(())
        }));
        let at = |seconds: u64| tokio::time::sleep_until(start + Duration::from_secs(seconds));
        for (second, n) in [(0, 1), (0, 2), (1, 3), (11, 4), (40, 5), (200, 6)] {
            at(second).await;
            sender.send(failure("r", n)).await.unwrap();
        }
        at(300).await;
        drop(sender);
        task.await.unwrap();
        assert_eq!(
            *sent.lock().unwrap(),
            [
                // The first three, gathered for five seconds.
                (5, 3),
                // Two failed in the minute after it: sent when it ends.
                (65, 2),
                // Nothing failed in the minute after that, so the next
                // failure waits only to be gathered.
                (205, 1),
            ]
        );
    }

    #[test]
    fn a_full_lane_is_reported_once_until_it_drains() {
        let (sender, mut receiver) = mpsc::channel(1);
        let dropped = Dropped::default();
        let mut lane = Lane {
            place: "notify[0]".into(),
            sender,
            refusing: false,
            dropped: dropped.clone(),
        };
        lane.send(failure("r", 1));
        assert!(!lane.refusing);
        lane.send(failure("r", 2));
        assert!(lane.refusing, "the second failure finds the lane full");
        lane.send(failure("s", 3));
        assert!(lane.refusing);
        let first = receiver.try_recv().unwrap();
        assert_eq!(first.delivery_id, "d1");
        lane.send(failure("r", 4));
        assert!(!lane.refusing, "a drained lane takes failures again");
        assert_eq!(receiver.try_recv().unwrap().delivery_id, "d4");
        // The refused ones are counted in the destination's next message.
        let mut batch = batch_of([first]);
        batch.count_refused(dropped.take());
        assert_eq!(batch.total, 3);
        assert_eq!(
            batch.per_route,
            BTreeMap::from([("r".to_string(), 2), ("s".to_string(), 1)])
        );
        assert!(dropped.take().is_empty(), "counted once");
    }

    fn batch_of(failures: impl IntoIterator<Item = Failure>) -> Batch {
        let mut batch = Batch::default();
        for f in failures {
            batch.push(f);
        }
        batch
    }

    #[test]
    fn a_batch_holds_at_most_the_queue_and_counts_the_rest() {
        let batch = batch_of((0..QUEUE + 5).map(|n| failure("cms", n)));
        assert_eq!((batch.held.len(), batch.total), (QUEUE, QUEUE + 5));
        let slack = NotifyKind::Slack(Secret::new("https://hooks.slack.com/services/T/B/X".into()));
        let text = render(&slack, &batch)["text"].as_str().unwrap().to_owned();
        assert!(
            text.starts_with("dispatch-relay: 10005 dispatches failed for good (cms: 10005)"),
            "the counts cover every failure, held or not: {text}"
        );
    }

    #[test]
    fn a_reason_cannot_mention_anyone_on_slack() {
        let mut quoting = failure("cms", 1);
        quoting.reason = "GitHub answered 422: No ref found for: <!channel> & <@U0ADMIN>".into();
        let batch = batch_of([quoting]);
        let slack = NotifyKind::Slack(Secret::new("https://hooks.slack.com/services/T/B/X".into()));
        let text = render(&slack, &batch)["text"].as_str().unwrap().to_owned();
        assert!(
            text.ends_with("No ref found for: &lt;!channel&gt; &amp; &lt;@U0ADMIN&gt;"),
            "{text}"
        );
        // A plain URL destination gets the text as it is: it is JSON.
        let url = NotifyKind::Url(Secret::new("https://alerts.example/x".into()));
        let text = render(&url, &batch)["text"].as_str().unwrap().to_owned();
        assert!(text.ends_with("<!channel> & <@U0ADMIN>"), "{text}");
    }

    /// A dispatch held for a refused credential has not failed, and the
    /// alert does not say it has.
    #[test]
    fn a_dispatch_waiting_for_a_credential_is_not_called_failed() {
        let waiting = Failure {
            reason: "bad credentials: token invalid or expired; dispatches with this credential are held".into(),
            waiting: true,
            ..failure("cms", 1)
        };
        let url = NotifyKind::Url(Secret::new("https://alerts.example/x".into()));
        let one = render(&url, &batch_of([waiting.clone()]));
        let text = one["text"].as_str().unwrap();
        assert!(
            text.starts_with("dispatch-relay: a dispatch to acme/blog waits for a credential GitHub refuses (route cms, delivery d1): bad credentials"),
            "{text}"
        );
        assert_eq!(one["failures"][0]["waiting"], true);
        let mixed = render(&url, &batch_of([waiting, failure("cms", 2)]));
        let text = mixed["text"].as_str().unwrap();
        assert!(
            text.starts_with("dispatch-relay: 2 dispatches failed for good or wait for a credential GitHub refuses (cms: 2)"),
            "{text}"
        );
        assert_eq!(mixed["failures"][1]["waiting"], false);
    }

    #[test]
    fn one_failure_is_described_and_many_are_summarised() {
        let slack = NotifyKind::Slack(Secret::new("https://hooks.slack.com/services/T/B/X".into()));
        let one = render(&slack, &batch_of([failure("cms", 1)]));
        assert!(
            one["text"]
                .as_str()
                .unwrap()
                .contains("acme/blog failed for good (route cms, delivery d1)")
        );
        let many = batch_of((0..100).map(|n| failure(if n % 2 == 0 { "cms" } else { "s3" }, n)));
        let summary = render(&slack, &many);
        let text = summary["text"].as_str().unwrap();
        assert!(
            text.starts_with("dispatch-relay: 100 dispatches failed for good (cms: 50, s3: 50)"),
            "{text}"
        );
        assert_eq!(text.matches('•').count(), EXAMPLES);
        let url = NotifyKind::Url(Secret::new("https://example.com/alerts".into()));
        assert_eq!(render(&url, &many)["count"], 100);
        assert!(
            !text.contains("hooks.slack.com"),
            "the destination URL is a secret"
        );
    }
}
