//! Retry classification: what to do with GitHub's answer to one attempt.
//!
//! `classify` is a pure function of the answer, the job's history, the retry
//! policy, the clock and a jitter sample, so every rule of the delivery
//! contract is pinned by the table of unit tests below rather than by timing
//! tests.

use std::time::Duration;

use crate::config::RetryConfig;
use crate::github::rate_limit::{MAX_ASKED_WAIT_SECS, RateLimitWait, rate_limit_wait};
use crate::github::{
    Answer, BAD_CREDENTIALS, NOT_FOUND, NOT_GITHUB, TransportError, WORKFLOW_NOT_FOUND,
    classic_token_not_found, saml_refusal,
};

/// What the worker saw for one attempt.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Answer(&'a Answer),
    Transport(&'a TransportError),
    /// No token could be had; `permanent` when waiting cannot help (the App
    /// is not installed on the repository, the key is wrong, ...).
    NoCredential {
        reason: &'a str,
        permanent: bool,
        /// Set when GitHub rate-limited the token request itself: the
        /// credential must wait this long, like a rate-limited dispatch.
        rate_limited: Option<Duration>,
    },
}

/// Where the job stands when its attempt is classified.
#[derive(Debug, Clone, Copy, Default)]
pub struct History {
    /// Failed attempts before this one that count against `max_attempts`
    /// (rate-limit answers do not: waiting them out is not a failure).
    pub failures: u32,
    /// Set when GitHub failed every request since the job was last tried
    /// (or queued): a failure that may pass then does not count against
    /// `max_attempts`, since it is GitHub's, not the job's.
    pub github_down: bool,
    /// Time since the job was queued: with its webhook, or when its
    /// delivery was redelivered.
    pub age: Duration,
    /// Set when the token was a GitHub App installation token.
    pub app_token: Option<AppToken>,
    /// Whether this attempt asked for `return_run_details`.
    pub sent_run_details: bool,
    /// Whether the job is a workflow dispatch, whose 404 usually means a
    /// missing workflow file rather than a missing repository.
    pub workflow: bool,
    /// The pause the credential took for this answer, when it is a rate
    /// limit that did not say how long to wait: a minute, doubling while
    /// such limits repeat (`Pacer::pause_unstated`).
    pub unstated_pause: Option<Duration>,
}

/// What the rules for App tokens need to know about the token that was sent.
#[derive(Debug, Clone, Copy)]
pub struct AppToken {
    /// Time since the token was minted.
    pub age: Duration,
    /// Whether this attempt already renewed a refused token: a refused App
    /// token is renewed once, not forever.
    pub retried: bool,
    /// Time since a 404 last renewed a token for this repository; `None`
    /// when none has.
    pub since_not_found_renewal: Option<Duration>,
}

/// A token younger than this that GitHub refuses may simply not have
/// reached every GitHub server yet (replication lag): it is sent again,
/// unchanged, once it is this old. A token minted anew instead would be as
/// young as the refused one, and as likely to be refused.
pub const FRESH_TOKEN: Duration = Duration::from_secs(3);

/// A 404 for an App token is answered with a new token from the
/// repository's installation as GitHub names it then, unless a 404 did so
/// for the same repository less than this long ago: a real 404 (a missing
/// workflow file) for many jobs at once then costs one installation lookup
/// and mint a minute for the repository, not one per job.
pub const INSTALLATION_RECHECK: Duration = Duration::from_secs(60);

/// The shortest wait before a refused fresh token is sent again.
pub const REPLICATION_WAIT: Duration = Duration::from_secs(1);

/// The decision for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Delivered,
    Retry {
        delay: Duration,
        /// Set for rate limits: the whole credential's queue waits this long,
        /// because further requests with it would only be refused too.
        pause_credential: Option<Duration>,
        /// A wait GitHub stated (`retry-after`, a rate limit's reset): the
        /// job is not sent before it ends, even when an outage that ends
        /// brings the retries it scheduled forward.
        stated_wait: Option<Duration>,
        counts_as_failure: bool,
        /// Set when GitHub refused the credential itself: the job is not
        /// failed, but its owner must put a new credential in place, so
        /// the notify destinations hear of it.
        credential_refused: bool,
        reason: String,
    },
    Fail {
        reason: String,
    },
    /// GitHub refuses the credential, and holding the job another
    /// [`REFUSED_CREDENTIAL_WAIT`] would pass `give_up_after`: the job
    /// fails, but the credential's queue is still held, as for every
    /// refusal, so that the dispatches behind it are not sent with the
    /// refused credential at once.
    GiveUpRefused {
        reason: String,
    },
    /// Send again after `wait`: with the same App token when it is only
    /// seconds old and may merely not have reached every GitHub server yet
    /// (replication lag), else (`renew`) with a newly minted one.
    Reauthenticate {
        wait: Duration,
        renew: bool,
        reason: String,
    },
    /// The server refused `return_run_details` (older GitHub Enterprise
    /// Server): send again at once without it.
    ResendWithoutRunDetails {
        reason: String,
    },
}

/// Decides what happens after one attempt.
///
/// `now_epoch_secs` reads `x-ratelimit-reset`; `jitter` is a sample from
/// `[0, 1)` that spreads retries ("full jitter": the delay is uniform between
/// zero and the exponential bound), so that many jobs failing together do not
/// come back together.
pub fn classify(
    outcome: Outcome<'_>,
    history: History,
    policy: &RetryConfig,
    now_epoch_secs: u64,
    jitter: f64,
) -> Action {
    let answer = match outcome {
        Outcome::Transport(error) => return transient(error.to_string(), history, policy, jitter),
        Outcome::NoCredential {
            reason,
            rate_limited: Some(wait),
            ..
        } => return rate_limited(reason.to_string(), wait, history, policy),
        Outcome::NoCredential {
            reason, permanent, ..
        } => {
            return if permanent {
                Action::Fail {
                    reason: reason.to_string(),
                }
            } else {
                transient(reason.to_string(), history, policy, jitter)
            };
        }
        Outcome::Answer(answer) => answer,
    };
    let status = answer.status;
    // Neither a dispatch made nor a repository missing: a web server that
    // is not the API answers 200 or 404 to anything.
    if answer.not_from_github() {
        return Action::Fail {
            reason: NOT_GITHUB.to_string(),
        };
    }
    if (200..300).contains(&status) {
        return Action::Delivered;
    }
    if let Some(wait) = rate_limit_wait(answer, now_epoch_secs) {
        let wait = match wait {
            RateLimitWait::Unstated => history.unstated_pause.unwrap_or(wait.duration()),
            RateLimitWait::Stated(_) => wait.duration(),
        };
        return rate_limited(
            format!("rate limited by GitHub ({status})"),
            wait,
            history,
            policy,
        );
    }
    if let Some(action) = history
        .app_token
        .and_then(|token| app_token_refused(answer, token))
    {
        return action;
    }
    if let Some(action) = run_details_refused(answer, history) {
        return action;
    }
    let message = message_of(answer);
    match status {
        401 => credential_refused(BAD_CREDENTIALS, history, policy),
        403 if message.contains(LOGIN_LIMIT_MESSAGE) => credential_refused(
            &with_message(
                "GitHub refuses this credential for a while after too many attempts with bad credentials (403)",
                message,
            ),
            history,
            policy,
        ),
        404 => Action::Fail {
            reason: answer
                .oauth_scopes
                .as_deref()
                .and_then(|scopes| classic_token_not_found(scopes, history.workflow))
                .unwrap_or_else(|| {
                    if history.workflow {
                        WORKFLOW_NOT_FOUND
                    } else {
                        NOT_FOUND
                    }
                    .to_string()
                }),
        },
        422 => Action::Fail {
            reason: with_message("GitHub rejected the request (422)", message),
        },
        403 if let Some(reason) = saml_refusal(answer) => Action::Fail { reason },
        403 => Action::Fail {
            reason: with_message(
                "forbidden (403): the credential lacks a permission this dispatch needs",
                message,
            ),
        },
        // GitHub's redirect of a renamed repository is followed on the
        // API's host; any other comes back, and the credential is not sent
        // where it leads.
        300..=399 => Action::Fail {
            reason: format!(
                "GitHub answered {status} with a redirect that is not followed: only that of a renamed or transferred repository, on github.api_url's host and keeping the request's method, is"
            ),
        },
        status if passing_status(status) => server_error(answer, history, policy, jitter),
        _ => Action::Fail {
            reason: with_message(&format!("GitHub answered {status}"), message),
        },
    }
}

/// What follows GitHub refusing an App installation token, when trying
/// again may help: a token only seconds old may not have reached every
/// GitHub server yet, and one minted before its repository moved to another
/// installation is answered 404 until it expires.
fn app_token_refused(answer: &Answer, token: AppToken) -> Option<Action> {
    let status = answer.status;
    let message = message_of(answer);
    let fresh = token.age < FRESH_TOKEN;
    let refused = status == 401 || (status == 403 && fresh);
    if refused && (fresh || !token.retried) {
        return Some(Action::Reauthenticate {
            wait: if fresh {
                (FRESH_TOKEN - token.age).max(REPLICATION_WAIT)
            } else {
                Duration::ZERO
            },
            renew: !fresh,
            reason: with_message(
                &format!("GitHub refused the App installation token ({status})"),
                message,
            ),
        });
    }
    // A token stays valid after its repository moves to another
    // installation of the App (a transfer, or a change to the
    // installation's selection), and GitHub then answers it 404 until it
    // expires, up to an hour later. One token from the repository's
    // installation as looked up now settles whether the 404 is real.
    let recheck = status == 404
        && !token.retried
        && token
            .since_not_found_renewal
            .is_none_or(|since| since >= INSTALLATION_RECHECK);
    recheck.then(|| Action::Reauthenticate {
        wait: Duration::ZERO,
        renew: true,
        reason:
            "GitHub answered 404 to the App installation token; looking the repository's installation up again"
                .to_string(),
    })
}

/// A workflow dispatch refused because it asked for run details, which an
/// older GitHub Enterprise Server does not take.
///
/// Only a refusal that names the field: any other 422 (a ref not yet
/// pushed, an input the workflow does not take) would be answered the same
/// without it, and a resend that then succeeded by luck would stop the
/// relay asking for run details at all.
fn run_details_refused(answer: &Answer, history: History) -> Option<Action> {
    let status = answer.status;
    let message = message_of(answer);
    let refused = history.sent_run_details
        && matches!(status, 400 | 422)
        && message.contains("return_run_details");
    refused.then(|| Action::ResendWithoutRunDetails {
        reason: with_message(
            &format!("GitHub refused the workflow dispatch with return_run_details ({status})"),
            message,
        ),
    })
}

/// A server error or timeout: retried with backoff, and never sooner than
/// a `retry-after` the server stated (on a 503, say).
fn server_error(answer: &Answer, history: History, policy: &RetryConfig, jitter: f64) -> Action {
    let message = message_of(answer);
    let action = transient(
        with_message(&format!("GitHub answered {}", answer.status), message),
        history,
        policy,
        jitter,
    );
    let Some(secs) = answer.rate.retry_after_secs else {
        return action;
    };
    match action {
        Action::Retry {
            delay,
            reason,
            counts_as_failure,
            ..
        } => {
            let asked = Duration::from_secs(secs.min(MAX_ASKED_WAIT_SECS));
            if history.age + asked > policy.give_up_after {
                return Action::Fail {
                    reason: format!(
                        "{reason}: its retry-after passes retry.give_up_after, giving up"
                    ),
                };
            }
            Action::Retry {
                delay: delay.max(asked),
                pause_credential: None,
                stated_wait: Some(asked),
                counts_as_failure,
                credential_refused: false,
                reason,
            }
        }
        action => action,
    }
}

/// A rate limit: the whole credential waits `wait`, and the job with it,
/// unless that would pass `give_up_after`. Rate limits do not count as
/// failures.
fn rate_limited(lead: String, wait: Duration, history: History, policy: &RetryConfig) -> Action {
    let reason = format!("{lead}, waiting {}s", wait.as_secs());
    if history.age + wait > policy.give_up_after {
        return Action::Fail {
            reason: format!("{reason}: that passes retry.give_up_after, giving up"),
        };
    }
    credential_waits(wait, false, reason)
}

/// The credential's whole queue waits `wait`, and the job with it, without
/// the wait counting as a failure of the job: for a rate limit, and for a
/// credential GitHub refuses (`credential_refused`).
fn credential_waits(wait: Duration, credential_refused: bool, reason: String) -> Action {
    Action::Retry {
        delay: wait,
        pause_credential: Some(wait),
        stated_wait: Some(wait),
        counts_as_failure: false,
        credential_refused,
        reason,
    }
}

/// How long the queue of a credential that GitHub refuses is held before
/// one dispatch tries it again.
pub const REFUSED_CREDENTIAL_WAIT: Duration = Duration::from_secs(60);

/// What GitHub says when it refuses a user's every request for a while, a
/// valid token's too, after too many with bad credentials ("Failed login
/// limit" in its REST API documentation).
const LOGIN_LIMIT_MESSAGE: &str = "Maximum number of login attempts exceeded";

/// A credential GitHub refuses: most often a token that expired or was
/// revoked. Every dispatch with it would be refused the same way until its
/// owner puts a new one in place, and sending them all would both fail
/// them for good and count towards GitHub's failed-login limit, which then
/// refuses even the new token for a while. So the credential's whole queue
/// is held, as for a rate limit, and one dispatch tries it again every
/// [`REFUSED_CREDENTIAL_WAIT`]; the jobs fail only once waiting passes
/// `retry.give_up_after`.
fn credential_refused(lead: &str, history: History, policy: &RetryConfig) -> Action {
    let wait = REFUSED_CREDENTIAL_WAIT;
    if history.age + wait > policy.give_up_after {
        return Action::GiveUpRefused {
            reason: format!("{lead}; held until retry.give_up_after, giving up"),
        };
    }
    credential_waits(
        wait,
        true,
        format!(
            "{lead}; dispatches with this credential are held, and one tries it again every {}s until a new one is in place",
            wait.as_secs()
        ),
    )
}

/// GitHub's message in an answer, or nothing.
fn message_of(answer: &Answer) -> &str {
    answer.message.as_deref().unwrap_or("").trim()
}

fn with_message(lead: &str, message: &str) -> String {
    if message.is_empty() {
        lead.to_string()
    } else {
        format!("{lead}: {message}")
    }
}

/// Whether GitHub answered as it does when it works: with its request id,
/// and not with a failure that may pass. A 404 or a rate limit is such an
/// answer too.
pub fn answered_by_github(answer: &Result<Answer, TransportError>) -> bool {
    !may_pass(answer) && answer.as_ref().is_ok_and(|a| a.from_github)
}

/// Whether GitHub's answer, or its absence, is a failure that may pass: no
/// answer at all, a timeout, or a server error. It is retried (unless the
/// answer is a rate limit, which is waited out instead).
pub fn may_pass(answer: &Result<Answer, TransportError>) -> bool {
    match answer {
        Err(_) => true,
        Ok(answer) => passing_status(answer.status),
    }
}

/// A status that may pass: a timeout or a server error.
fn passing_status(status: u16) -> bool {
    matches!(status, 408 | 500..=599)
}

/// A failure that may pass: retry with backoff until the policy runs out.
/// While GitHub answers no dispatch, the attempt is not counted, and the
/// backoff bound grows with the job's age instead of its counted failures
/// (see [`outage_backoff`]), so that a long outage is waited out at
/// `max_backoff` until `give_up_after`.
fn transient(reason: String, history: History, policy: &RetryConfig, jitter: f64) -> Action {
    if history.github_down {
        let delay = outage_backoff(history.age, policy, jitter);
        if history.age + delay > policy.give_up_after {
            return Action::Fail {
                reason: format!(
                    "gave up when retry.give_up_after was reached, GitHub answering no dispatch: {reason}"
                ),
            };
        }
        return Action::Retry {
            delay,
            pause_credential: None,
            stated_wait: None,
            counts_as_failure: false,
            credential_refused: false,
            reason,
        };
    }
    let failures = history.failures + 1;
    if failures >= policy.max_attempts {
        return Action::Fail {
            reason: format!("gave up after {failures} attempts: {reason}"),
        };
    }
    let delay = backoff(failures, policy, jitter);
    if history.age + delay > policy.give_up_after {
        return Action::Fail {
            reason: format!(
                "gave up after {failures} attempts (retry.give_up_after reached): {reason}"
            ),
        };
    }
    Action::Retry {
        delay,
        pause_credential: None,
        stated_wait: None,
        counts_as_failure: true,
        credential_refused: false,
        reason,
    }
}

/// The backoff while GitHub answers no dispatch: uniform in `[0, bound]`,
/// the bound being the job's age, kept between `initial_backoff` and
/// `max_backoff`. A bound that doubles with each attempt reaches about the
/// time spent so far, so this grows as the usual backoff does, without a
/// count of the uncounted attempts; and a job redelivered during an outage
/// starts again from `initial_backoff`, as its age does.
fn outage_backoff(age: Duration, policy: &RetryConfig, jitter: f64) -> Duration {
    age.clamp(
        policy.initial_backoff,
        policy.max_backoff.max(policy.initial_backoff),
    )
    .mul_f64(jitter.clamp(0.0, 1.0))
}

/// Full-jitter exponential backoff: uniform in `[0, min(max, initial·2^(n-1))]`.
fn backoff(failures: u32, policy: &RetryConfig, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let bound = policy
        .initial_backoff
        .saturating_mul(1u32 << exponent)
        .min(policy.max_backoff);
    bound.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::RateHeaders;
    use crate::github::rate_limit::{DEFAULT_RATE_LIMIT_WAIT, reset_on_our_clock};

    fn policy() -> RetryConfig {
        RetryConfig {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }

    fn answer(status: u16, message: &str, rate: RateHeaders) -> Answer {
        Answer {
            status,
            rate,
            message: (!message.is_empty()).then(|| message.to_string()),
            from_github: true,
            ..Answer::default()
        }
    }

    const NOW: u64 = 1_700_000_000;

    fn fresh() -> History {
        History {
            failures: 0,
            age: Duration::from_secs(1),
            ..History::default()
        }
    }

    /// (delay, credential pause, counts as failure)
    type RetryParts = (Duration, Option<Duration>, bool);

    fn retry(delay: u64, pause: Option<u64>, counts: bool) -> RetryParts {
        (
            Duration::from_secs(delay),
            pause.map(Duration::from_secs),
            counts,
        )
    }

    fn retry_parts(action: &Action) -> Option<RetryParts> {
        match action {
            Action::Retry {
                delay,
                pause_credential,
                counts_as_failure,
                ..
            } => Some((*delay, *pause_credential, *counts_as_failure)),
            _ => None,
        }
    }

    #[test]
    fn a_workflow_dispatch_not_found_names_the_workflow_file_first() {
        let not_found = answer(404, "Not Found", RateHeaders::default());
        let workflow = History {
            workflow: true,
            ..fresh()
        };
        for (history, reason) in [(fresh(), NOT_FOUND), (workflow, WORKFLOW_NOT_FOUND)] {
            assert_eq!(
                classify(Outcome::Answer(&not_found), history, &policy(), NOW, 1.0),
                Action::Fail {
                    reason: reason.to_string()
                }
            );
        }
    }

    #[test]
    fn answers_map_to_actions() {
        let none = RateHeaders::default();
        let retry_after = RateHeaders {
            retry_after_secs: Some(7),
            ..none
        };
        let exhausted = RateHeaders {
            remaining: Some(0),
            reset_epoch_secs: Some(NOW + 120),
            ..none
        };
        // GitHub's clock is three minutes behind ours: its reset is still
        // 30 s away, which our clock alone would read as past.
        let exhausted_by_its_clock = RateHeaders {
            remaining: Some(0),
            reset_epoch_secs: Some(NOW - 150),
            date_epoch_secs: Some(NOW - 180),
            ..none
        };
        // (answer, jitter, expected retry parts or expected failure text)
        let cases: Vec<(Answer, Option<RetryParts>, &str)> = vec![
            (answer(204, "", none), None, "delivered"),
            (answer(200, "", none), None, "delivered"),
            // A server that is not GitHub's API (a wrong api_url) answering
            // 200 made no dispatch, and its 404 says nothing of the repository.
            (
                Answer {
                    from_github: false,
                    ..answer(200, "", none)
                },
                None,
                NOT_GITHUB,
            ),
            (
                Answer {
                    from_github: false,
                    ..answer(404, "Not Found", none)
                },
                None,
                NOT_GITHUB,
            ),
            (
                answer(502, "Bad Gateway", none),
                Some(retry(1, None, true)),
                "",
            ),
            (answer(503, "", none), Some(retry(1, None, true)), ""),
            (answer(503, "", retry_after), Some(retry(7, None, true)), ""),
            (answer(500, "", none), Some(retry(1, None, true)), ""),
            (
                answer(429, "", retry_after),
                Some(retry(7, Some(7), false)),
                "",
            ),
            (answer(429, "", none), Some(retry(60, Some(60), false)), ""),
            (
                answer(403, "API rate limit exceeded for user", exhausted),
                Some(retry(120, Some(120), false)),
                "",
            ),
            (
                answer(
                    403,
                    "API rate limit exceeded for user",
                    exhausted_by_its_clock,
                ),
                Some(retry(30, Some(30), false)),
                "",
            ),
            (
                answer(
                    403,
                    "You have exceeded a secondary rate limit. Please wait a few minutes",
                    none,
                ),
                Some(retry(60, Some(60), false)),
                "",
            ),
            (
                answer(
                    403,
                    "You have exceeded a secondary rate limit.",
                    retry_after,
                ),
                Some(retry(7, Some(7), false)),
                "",
            ),
            (
                answer(
                    403,
                    "You have triggered an abuse detection mechanism. Please wait a few minutes before you try again.",
                    none,
                ),
                Some(retry(60, Some(60), false)),
                "",
            ),
            // A refused credential holds its queue, a minute at a time, and
            // neither the wait nor the refusal counts against the job.
            (
                answer(401, "Bad credentials", none),
                Some(retry(60, Some(60), false)),
                "",
            ),
            (
                answer(
                    403,
                    "Maximum number of login attempts exceeded. Please try again later.",
                    none,
                ),
                Some(retry(60, Some(60), false)),
                "",
            ),
            (answer(404, "Not Found", none), None, NOT_FOUND),
            // A classic token says its scopes on every answer: a 404 to one
            // without `repo` is explained by them; one with it, or an empty
            // list (which other tokens may get too), is not.
            (
                Answer {
                    oauth_scopes: Some("read:org, gist".into()),
                    ..answer(404, "Not Found", none)
                },
                None,
                "repository not found, or the credential cannot see it: the classic token has only `read:org`, `gist`, and without `repo` GitHub answers 404 for a private repository; add the `repo` scope to the token",
            ),
            (
                Answer {
                    oauth_scopes: Some(String::new()),
                    ..answer(404, "Not Found", none)
                },
                None,
                NOT_FOUND,
            ),
            // With `repo`, the scope is not the cause, nor are the
            // fine-grained and App ones.
            (
                Answer {
                    oauth_scopes: Some("repo, workflow".into()),
                    ..answer(404, "Not Found", none)
                },
                None,
                "repository not found, or the token's owner cannot see it: the classic token has the `repo` scope, so check the repository's name, that the token's owner has access to it, and, for an organization with SAML single sign-on, that the token is authorized for the organization",
            ),
            (
                answer(
                    422,
                    "Invalid request. client_payload has too many properties",
                    none,
                ),
                None,
                "GitHub rejected the request (422): Invalid request. client_payload has too many properties",
            ),
            (
                answer(
                    403,
                    "Resource not accessible by personal access token",
                    none,
                ),
                None,
                "forbidden (403): the credential lacks a permission this dispatch needs: Resource not accessible by personal access token",
            ),
            // A token not authorized for an organization's SAML single
            // sign-on fails, naming where its owner authorizes it; without
            // the header, GitHub's message alone says it.
            (
                Answer {
                    sso_url: Some(
                        "https://github.com/orgs/acme/sso?authorization_request=AbC1".into(),
                    ),
                    ..answer(
                        403,
                        "Resource protected by organization SAML enforcement. You must grant your Personal Access token access to this organization.",
                        none,
                    )
                },
                None,
                "forbidden (403): the organization enforces SAML single sign-on and the token is not authorized for it; its owner authorizes it at https://github.com/orgs/acme/sso?authorization_request=AbC1, then `redeliver --failed` sends what failed",
            ),
            (
                answer(
                    403,
                    "Resource protected by organization SAML enforcement. You must grant your Personal Access token access to this organization.",
                    none,
                ),
                None,
                "forbidden (403): the organization enforces SAML single sign-on and the token is not authorized for it; its owner authorizes it under Settings, Developer settings, Personal access tokens (Configure SSO), then `redeliver --failed` sends what failed",
            ),
            (
                answer(400, "Problems parsing JSON", none),
                None,
                "GitHub answered 400: Problems parsing JSON",
            ),
            // A redirect reaches the classifier only when it is not GitHub's
            // redirect of a renamed repository on the API's host.
            (
                answer(307, "Temporary Redirect", none),
                None,
                "GitHub answered 307 with a redirect that is not followed: only that of a renamed or transferred repository, on github.api_url's host and keeping the request's method, is",
            ),
        ];
        for (answer, expected_retry, expected_text) in cases {
            let action = classify(Outcome::Answer(&answer), fresh(), &policy(), NOW, 1.0);
            match (&action, expected_retry) {
                (Action::Retry { .. }, Some(expected)) => {
                    assert_eq!(
                        retry_parts(&action),
                        Some(expected),
                        "status {}",
                        answer.status
                    )
                }
                (Action::Delivered, None) => assert_eq!(expected_text, "delivered"),
                (Action::Fail { reason }, None) => {
                    assert_eq!(reason, expected_text, "status {}", answer.status)
                }
                _ => panic!("status {}: unexpected {action:?}", answer.status),
            }
        }
    }

    #[test]
    fn an_unstated_limit_waits_the_pause_the_credential_took() {
        let limited = answer(
            403,
            "You have exceeded a secondary rate limit.",
            RateHeaders::default(),
        );
        // The second such limit in a row: the credential pauses two minutes,
        // and the job says so and waits as long.
        let history = History {
            unstated_pause: Some(Duration::from_secs(120)),
            ..fresh()
        };
        let action = classify(Outcome::Answer(&limited), history, &policy(), NOW, 1.0);
        assert_eq!(retry_parts(&action), Some(retry(120, Some(120), false)));
        let Action::Retry { reason, .. } = action else {
            unreachable!()
        };
        assert!(reason.ends_with("waiting 120s"), "{reason}");
    }

    #[test]
    fn a_reset_in_githubs_time_is_moved_onto_our_clock() {
        let rate = |reset, date| RateHeaders {
            reset_epoch_secs: reset,
            date_epoch_secs: date,
            ..RateHeaders::default()
        };
        // GitHub's clock is 180 s behind ours: its reset 30 s ahead is
        // NOW + 30 here, not NOW - 150.
        let behind = rate(Some(NOW - 150), Some(NOW - 180));
        assert_eq!(reset_on_our_clock(&behind, NOW), Some(NOW + 30));
        assert_eq!(
            reset_on_our_clock(&rate(Some(NOW + 60), None), NOW),
            Some(NOW + 60)
        );
        assert_eq!(reset_on_our_clock(&rate(None, Some(NOW)), NOW), None);
        assert!(reset_on_our_clock(&rate(Some(u64::MAX), Some(NOW)), NOW).is_some());
    }

    #[test]
    fn a_rate_limit_states_its_wait_only_through_retry_after_or_an_exhausted_reset() {
        let headers = |retry_after, remaining, reset| RateHeaders {
            retry_after_secs: retry_after,
            remaining,
            reset_epoch_secs: reset,
            ..RateHeaders::default()
        };
        let secs = |s| Some(RateLimitWait::Stated(Duration::from_secs(s)));
        let table = [
            (429, "", headers(Some(7), None, None), secs(7)),
            (403, "", headers(Some(7), Some(10), None), secs(7)),
            (429, "", headers(None, Some(0), Some(NOW + 42)), secs(42)),
            // Waits of nothing are no statement: a `retry-after: 0`, or a
            // reset already past while GitHub still answers with the limit.
            (
                429,
                "",
                headers(Some(0), None, None),
                Some(RateLimitWait::Unstated),
            ),
            (
                403,
                "API rate limit exceeded",
                headers(None, Some(0), Some(NOW - 100)),
                Some(RateLimitWait::Unstated),
            ),
            (
                403,
                "API rate limit exceeded",
                headers(None, Some(0), Some(NOW)),
                Some(RateLimitWait::Unstated),
            ),
            // A reset with requests left is not the reason for the limit.
            (
                429,
                "",
                headers(None, Some(5), Some(NOW + 42)),
                Some(RateLimitWait::Unstated),
            ),
            (
                403,
                "You have exceeded a secondary rate limit.",
                headers(None, None, None),
                Some(RateLimitWait::Unstated),
            ),
            (
                403,
                "Resource not accessible by integration",
                headers(None, None, None),
                None,
            ),
            (500, "", headers(Some(7), None, None), None),
        ];
        for (status, message, rate, expected) in table {
            assert_eq!(
                rate_limit_wait(&answer(status, message, rate), NOW),
                expected,
                "{status} {message:?}"
            );
        }
        assert_eq!(RateLimitWait::Unstated.duration(), DEFAULT_RATE_LIMIT_WAIT);
    }

    #[test]
    fn absurd_waits_in_headers_are_capped_at_an_hour() {
        let huge = RateHeaders {
            retry_after_secs: Some(u64::MAX),
            ..RateHeaders::default()
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(
            rate_limit_wait(&answer(429, "", huge), NOW),
            Some(RateLimitWait::Stated(hour))
        );
        let exhausted = RateHeaders {
            remaining: Some(0),
            reset_epoch_secs: Some(u64::MAX),
            ..RateHeaders::default()
        };
        assert_eq!(
            rate_limit_wait(&answer(403, "", exhausted), NOW),
            Some(RateLimitWait::Stated(hour))
        );
        // Neither overflows when the job's age is added, and a job within
        // the hour of `give_up_after` gives up.
        let old = History {
            age: Duration::from_secs(23 * 3600 + 1),
            ..fresh()
        };
        for status in [429, 503] {
            let action = classify(
                Outcome::Answer(&answer(status, "", huge)),
                old,
                &policy(),
                NOW,
                1.0,
            );
            assert!(
                matches!(action, Action::Fail { .. }),
                "{status}: {action:?}"
            );
        }
    }

    #[test]
    fn transport_errors_are_retried() {
        for error in [
            TransportError::Timeout,
            TransportError::Connect("refused".into()),
            TransportError::Other("reset".into()),
        ] {
            let action = classify(Outcome::Transport(&error), fresh(), &policy(), NOW, 0.5);
            assert_eq!(
                retry_parts(&action),
                Some((Duration::from_millis(500), None, true))
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let p = policy();
        let table = [
            (1, 1.0, 1),
            (2, 1.0, 2),
            (3, 1.0, 4),
            (10, 1.0, 512),
            (11, 1.0, 600),
            (40, 1.0, 600),
            (3, 0.0, 0),
        ];
        for (failures, jitter, secs) in table {
            assert_eq!(
                backoff(failures, &p, jitter),
                Duration::from_secs(secs),
                "failures {failures}"
            );
        }
        assert_eq!(backoff(3, &p, 0.5), Duration::from_secs(2));
    }

    #[test]
    fn attempts_run_out() {
        let error = TransportError::Timeout;
        let history = History {
            failures: 9,
            age: Duration::from_secs(100),
            ..History::default()
        };
        match classify(Outcome::Transport(&error), history, &policy(), NOW, 0.5) {
            Action::Fail { reason } => assert_eq!(
                reason,
                "gave up after 10 attempts: timed out waiting for GitHub"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn while_github_fails_every_request_attempts_are_not_spent() {
        let timeout = TransportError::Timeout;
        let with_retry_after = answer(
            503,
            "",
            RateHeaders {
                retry_after_secs: Some(30),
                ..RateHeaders::default()
            },
        );
        let down = History {
            failures: 9,
            age: Duration::from_secs(3_600),
            github_down: true,
            ..History::default()
        };
        let young = |age_secs: u64| History {
            failures: 0,
            age: Duration::from_secs(age_secs),
            ..down
        };
        // What follows: the delay in seconds and whether it is counted;
        // `None` for a failure.
        type Follows = Option<(u64, bool)>;
        let table: [(Outcome<'_>, History, f64, Follows); 7] = [
            // The tenth failure of a job while GitHub answers others: out.
            (
                Outcome::Transport(&timeout),
                History {
                    github_down: false,
                    ..down
                },
                1.0,
                None,
            ),
            // The same while GitHub fails everything: waited out, uncounted,
            // the bound being its age, at most max_backoff.
            (Outcome::Transport(&timeout), down, 1.0, Some((600, false))),
            // A retry-after still sets the least wait.
            (
                Outcome::Answer(&with_retry_after),
                down,
                0.0,
                Some((30, false)),
            ),
            // The bound follows the job's age, not its failures: a job
            // redelivered during an outage starts again from the first.
            (
                Outcome::Transport(&timeout),
                young(8),
                1.0,
                Some((8, false)),
            ),
            (
                Outcome::Transport(&timeout),
                young(0),
                1.0,
                Some((1, false)),
            ),
            // give_up_after still ends it.
            (
                Outcome::Transport(&timeout),
                History {
                    age: Duration::from_secs(24 * 3600 - 1),
                    ..down
                },
                1.0,
                None,
            ),
            // A failed token request while GitHub is down is not counted either.
            (
                Outcome::NoCredential {
                    reason: "GitHub answered 502 to the token request",
                    permanent: false,
                    rate_limited: None,
                },
                down,
                1.0,
                Some((600, false)),
            ),
        ];
        for (i, (outcome, history, jitter, expected)) in table.into_iter().enumerate() {
            let action = classify(outcome, history, &policy(), NOW, jitter);
            match (expected, action) {
                (None, Action::Fail { .. }) => {}
                (
                    Some((secs, counted)),
                    Action::Retry {
                        delay,
                        counts_as_failure,
                        ..
                    },
                ) => assert_eq!(
                    (delay, counts_as_failure),
                    (Duration::from_secs(secs), counted),
                    "case {i}"
                ),
                (expected, action) => panic!("case {i}: {action:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn give_up_after_bounds_retries_and_rate_limit_waits() {
        let old = History {
            failures: 1,
            age: Duration::from_secs(24 * 3600 - 1),
            ..History::default()
        };
        let answer_502 = answer(502, "", RateHeaders::default());
        assert!(matches!(
            classify(Outcome::Answer(&answer_502), old, &policy(), NOW, 1.0),
            Action::Fail { .. }
        ));
        let limited = answer(429, "", RateHeaders::default());
        assert!(matches!(
            classify(Outcome::Answer(&limited), old, &policy(), NOW, 1.0),
            Action::Fail { .. }
        ));
    }

    #[test]
    fn rate_limits_do_not_use_up_attempts() {
        let limited = answer(429, "", RateHeaders::default());
        let history = History {
            failures: 9,
            age: Duration::from_secs(10),
            ..History::default()
        };
        assert!(matches!(
            classify(Outcome::Answer(&limited), history, &policy(), NOW, 1.0),
            Action::Retry {
                counts_as_failure: false,
                ..
            }
        ));
    }

    #[test]
    fn app_tokens_refused_or_not_found_are_sent_again_then_renewed_once() {
        let none = RateHeaders::default();
        let app = |age_ms: u64, retried: bool| History {
            app_token: Some(AppToken {
                age: Duration::from_millis(age_ms),
                retried,
                since_not_found_renewal: None,
            }),
            ..fresh()
        };
        // For a repository whose token a 404 renewed some seconds ago.
        let renewed_for = |secs: u64| History {
            app_token: Some(AppToken {
                age: Duration::from_secs(1),
                retried: false,
                since_not_found_renewal: Some(Duration::from_secs(secs)),
            }),
            ..fresh()
        };
        let forbidden = answer(403, "Resource not accessible by integration", none);
        let unauthorized = answer(401, "Bad credentials", none);
        let not_found = answer(404, "Not Found", none);
        const HELD: &str = "held";
        // (answer, history, expected (wait in ms, renew) or the failure text)
        type Expected<'a> = Result<(u64, bool), &'a str>;
        let cases: Vec<(&Answer, History, Expected)> = vec![
            // A token seconds old: GitHub may not know it everywhere yet, so
            // the same token goes again once it is three seconds old.
            (&unauthorized, app(200, false), Ok((2_800, false))),
            (&forbidden, app(200, false), Ok((2_800, false))),
            (&unauthorized, app(2_500, false), Ok((1_000, false))),
            // A renewed token gets the same grace.
            (&unauthorized, app(200, true), Ok((2_800, false))),
            // An older token that GitHub does not accept: mint another, now.
            (&unauthorized, app(3_000, false), Ok((0, true))),
            (&unauthorized, app(600_000, false), Ok((0, true))),
            // Renewed once only; then the credential is held (see
            // `a_refused_credential_holds_its_queue_until_give_up_after`).
            (&unauthorized, app(3_000, true), Err(HELD)),
            // A 404 may come from a token of the installation the repository
            // left: renewed once, young or old, then the 404 stands.
            (&not_found, app(200, false), Ok((0, true))),
            (&not_found, app(600_000, false), Ok((0, true))),
            (&not_found, app(600_000, true), Err(NOT_FOUND)),
            // Not when a 404 renewed one for the repository under a minute
            // ago: a 404 for every job of a fan-out renews once a minute,
            // not for each job.
            (&not_found, renewed_for(30), Err(NOT_FOUND)),
            (&not_found, renewed_for(60), Ok((0, true))),
            (&not_found, fresh(), Err(NOT_FOUND)),
            // A 403 with an older token is a real permission problem.
            (
                &forbidden,
                app(600_000, false),
                Err(
                    "forbidden (403): the credential lacks a permission this dispatch needs: Resource not accessible by integration",
                ),
            ),
            // A personal token is never renewed.
            (&unauthorized, fresh(), Err(HELD)),
        ];
        for (answer, history, expected) in cases {
            let action = classify(Outcome::Answer(answer), history, &policy(), NOW, 1.0);
            match (&action, expected) {
                (Action::Reauthenticate { wait, renew, .. }, Ok((ms, expected_renew))) => {
                    assert_eq!(
                        (*wait, *renew),
                        (Duration::from_millis(ms), expected_renew),
                        "{history:?}"
                    )
                }
                (
                    Action::Retry {
                        reason,
                        pause_credential: Some(_),
                        ..
                    },
                    Err(HELD),
                ) => assert!(
                    reason.starts_with(BAD_CREDENTIALS) && reason.contains("are held"),
                    "{reason}"
                ),
                (Action::Fail { reason }, Err(text)) => assert_eq!(reason, text),
                _ => panic!("{history:?} {}: unexpected {action:?}", answer.status),
            }
        }
    }

    /// A refused credential holds the job, never counting the refusal
    /// against `max_attempts`, until waiting once more would pass
    /// `give_up_after`: then the job fails, saying why, and still holds
    /// the others (the worker pauses the credential for it).
    #[test]
    fn a_refused_credential_holds_its_queue_until_give_up_after() {
        let unauthorized = answer(401, "Bad credentials", RateHeaders::default());
        let policy = policy();
        let at = |age: Duration, failures: u32| {
            let history = History {
                age,
                failures,
                ..fresh()
            };
            classify(Outcome::Answer(&unauthorized), history, &policy, NOW, 1.0)
        };
        let held = Some(retry(60, Some(60), false));
        assert_eq!(retry_parts(&at(Duration::ZERO, 0)), held);
        // The owner must act: the notify destinations hear of it.
        assert!(matches!(
            at(Duration::ZERO, 0),
            Action::Retry {
                credential_refused: true,
                ..
            }
        ));
        // Failures of the job before do not end the hold: the refusal is
        // the credential's, not the job's.
        assert_eq!(retry_parts(&at(Duration::ZERO, policy.max_attempts)), held);
        let last = policy.give_up_after - REFUSED_CREDENTIAL_WAIT;
        assert_eq!(retry_parts(&at(last, 0)), held);
        assert_eq!(
            at(last + Duration::from_secs(1), 0),
            Action::GiveUpRefused {
                reason: format!("{BAD_CREDENTIALS}; held until retry.give_up_after, giving up")
            }
        );
    }

    #[test]
    fn a_refused_run_details_field_is_dropped_once() {
        let none = RateHeaders::default();
        let with_field = History {
            sent_run_details: true,
            ..fresh()
        };
        let refusal = "Invalid request.\n\n\"return_run_details\" is not a permitted key.";
        for status in [400, 422] {
            let refused = answer(status, refusal, none);
            assert!(matches!(
                classify(Outcome::Answer(&refused), with_field, &policy(), NOW, 1.0),
                Action::ResendWithoutRunDetails { .. }
            ));
            assert!(matches!(
                classify(Outcome::Answer(&refused), fresh(), &policy(), NOW, 1.0),
                Action::Fail { .. }
            ));
        }
        // Another refusal is not the field's: it fails as it would
        // without it.
        let no_ref = answer(422, "No ref found for: main", none);
        assert!(matches!(
            classify(Outcome::Answer(&no_ref), with_field, &policy(), NOW, 1.0),
            Action::Fail { .. }
        ));
        let ok = answer(200, "", none);
        assert_eq!(
            classify(Outcome::Answer(&ok), with_field, &policy(), NOW, 1.0),
            Action::Delivered
        );
    }

    #[test]
    fn missing_credentials_fail_or_wait_as_told() {
        let permanent = Outcome::NoCredential {
            reason: "the GitHub App is not installed on acme/blog",
            permanent: true,
            rate_limited: None,
        };
        assert_eq!(
            classify(permanent, fresh(), &policy(), NOW, 1.0),
            Action::Fail {
                reason: "the GitHub App is not installed on acme/blog".into()
            }
        );
        let passing = Outcome::NoCredential {
            reason: "could not reach GitHub",
            permanent: false,
            rate_limited: None,
        };
        assert_eq!(
            retry_parts(&classify(passing, fresh(), &policy(), NOW, 1.0)),
            Some((Duration::from_secs(1), None, true))
        );
        // A rate-limited token request pauses the credential and is not a
        // failure, like a rate-limited dispatch.
        let limited = Outcome::NoCredential {
            reason: "GitHub rate-limited an App token request (403)",
            permanent: false,
            rate_limited: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            retry_parts(&classify(limited, fresh(), &policy(), NOW, 1.0)),
            Some((
                Duration::from_secs(60),
                Some(Duration::from_secs(60)),
                false
            ))
        );
    }
}
