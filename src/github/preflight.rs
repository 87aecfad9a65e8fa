//! The preflight: asks GitHub, with the configured credential, whether every
//! static target repository can receive dispatches, and says why not.
//!
//! `dispatch-relay check --online` prints its findings; `serve` runs it at
//! start and logs them as warnings without refusing to start, because a
//! repository may be fixed (the App installed, the token granted) while the
//! relay runs.

use std::collections::BTreeSet;

use super::app::{Credentials, Scope};
use super::{Answer, GitHubClient};
use super::{BAD_CREDENTIALS, NOT_FOUND, NOT_GITHUB, classic_token_not_found};

/// One repository and what its dispatches need.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub repo: String,
    pub scope: Scope,
}

/// The finding for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub target: Target,
    pub verdict: Verdict,
}

/// What the preflight learnt about one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// It cannot receive dispatches, for this reason.
    Fail(String),
    /// GitHub could not be asked, or did not say (the network, a 5xx, a
    /// timeout, a rate limit): the reason says nothing about the
    /// repository, and asking again later may.
    Unanswered(String),
    /// Not asked about, for this reason.
    NotAsked(Unasked),
    /// It can receive dispatches, but under another name now (renamed or
    /// transferred): GitHub redirects the former name, and routes.yaml
    /// should say the name it has.
    Moved {
        now: String,
    },
}

/// Why the preflight stopped asking before a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unasked {
    /// GitHub rate-limited an earlier request of the check.
    RateLimited,
    /// The credential's rate limit was down to half: the rest is left to
    /// the dispatches.
    HalfTheRateLimitSpent,
}

/// How much of the credential's rate limit the preflight may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Everything until GitHub says stop: `check --online`, which someone
    /// runs to get every answer.
    Whole,
    /// It stops once the requests left in the hour are fewer than half the
    /// limit: the check `serve` runs at every start, which must not spend
    /// what the dispatches of the hour need (a file of thousands of
    /// repositories, a few restarts an hour).
    Half,
}

impl Budget {
    /// Whether an answer carrying `rate` leaves the check nothing more to
    /// spend. Pure, so the rule is pinned by unit tests.
    fn spent(self, rate: &super::RateHeaders) -> bool {
        match (self, rate.remaining, rate.limit) {
            (Budget::Half, Some(remaining), Some(limit)) => remaining < limit / 2,
            _ => false,
        }
    }
}

/// The distinct static targets of a configuration (templated repositories
/// are only known per webhook and cannot be checked ahead).
pub fn static_targets(config: &crate::config::Config) -> Vec<Target> {
    let mut targets = BTreeSet::new();
    for route in &config.routes {
        for target in &route.dispatch {
            if let crate::config::RepoSpec::Static(repo) = &target.repo {
                let scope = match target.kind {
                    crate::config::TargetKind::Workflow { .. } => Scope::Workflow,
                    crate::config::TargetKind::Repository { .. } => Scope::Contents,
                };
                targets.insert(Target {
                    repo: repo.clone(),
                    scope,
                });
            }
        }
    }
    targets.into_iter().collect()
}

/// Checks every target, one after another (doing them in turn keeps clear
/// of secondary rate limits). Once GitHub answers with a rate limit, or an
/// answer shows `budget` spent, the targets left are not asked about:
/// GitHub asks integrations to stop while limited, and the check is worth
/// less than the dispatches sharing the credential's limits.
pub async fn check(
    credentials: &Credentials,
    client: &GitHubClient,
    targets: &[Target],
    budget: Budget,
) -> Vec<Finding> {
    let mut findings = Vec::with_capacity(targets.len());
    let mut stopped = None;
    for target in targets {
        let verdict = match stopped {
            Some(why) => Verdict::NotAsked(why),
            None => {
                let (verdict, rate_limited, rate) = check_one(credentials, client, target).await;
                stopped = if rate_limited {
                    Some(Unasked::RateLimited)
                } else if rate.is_some_and(|rate| budget.spent(&rate)) {
                    Some(Unasked::HalfTheRateLimitSpent)
                } else {
                    None
                };
                verdict
            }
        };
        findings.push(Finding {
            target: target.clone(),
            verdict,
        });
    }
    findings
}

/// The verdict on one target, whether GitHub answered with a rate limit,
/// and the rate-limit headers of its answer.
async fn check_one(
    credentials: &Credentials,
    client: &GitHubClient,
    target: &Target,
) -> (Verdict, bool, Option<super::RateHeaders>) {
    let token = match credentials.token_for(&target.repo, target.scope).await {
        Ok(token) => token,
        Err(e) if e.github_did_not_answer() => {
            return (
                Verdict::Unanswered(e.to_string()),
                e.rate_limit_wait().is_some(),
                None,
            );
        }
        // A key file that cannot be read is the configuration's to fix, as
        // every refusal is.
        Err(e) => return (Verdict::Fail(e.to_string()), false, None),
    };
    let answer = match client
        .get(&format!("/repos/{}", target.repo), &token.secret)
        .await
    {
        Ok(answer) => answer,
        Err(e) => return (Verdict::Unanswered(e.to_string()), false, None),
    };
    let rate = Some(answer.rate);
    if let Some(reason) = unanswered(&answer) {
        let rate_limited = super::rate_limit::is_rate_limit(&answer);
        return (Verdict::Unanswered(reason), rate_limited, rate);
    }
    match judge(&answer, target, credentials.is_app()) {
        Ok(()) => match name_now(&answer, target) {
            Some(now) => (Verdict::Moved { now }, false, rate),
            None => (Verdict::Ok, false, rate),
        },
        Err(reason) => (Verdict::Fail(reason), false, rate),
    }
}

/// Why an answer says nothing about the repository, when it does not: a
/// rate limit (a 429, or a 403 that says so), a timeout or a server error.
pub fn unanswered(answer: &Answer) -> Option<String> {
    let what = if super::rate_limit::is_rate_limit(answer) {
        "rate-limited"
    } else if answer.status == 408 || answer.status >= 500 {
        "failed"
    } else {
        return None;
    };
    Some(format!(
        "GitHub {what} the request ({}): {}",
        answer.status,
        answer.message.as_deref().unwrap_or("")
    ))
}

/// The repository's name now, when GitHub answered for it under another
/// name than the target's: it follows a renamed or transferred repository's
/// former name to the repository. Names differing only in case are the
/// same name on GitHub.
fn name_now(answer: &Answer, target: &Target) -> Option<String> {
    let repo: serde_json::Value = serde_json::from_str(answer.body.as_deref()?).ok()?;
    let now = repo["full_name"].as_str()?;
    (!now.eq_ignore_ascii_case(&target.repo)).then(|| now.to_string())
}

/// Reads GitHub's answer to `GET /repos/{owner}/{repo}`. Pure, so every
/// reason is pinned by unit tests.
fn judge(answer: &Answer, target: &Target, app: bool) -> Result<(), String> {
    match answer.status {
        _ if answer.not_from_github() => return Err(NOT_GITHUB.to_string()),
        200 => {}
        401 => return Err(BAD_CREDENTIALS.to_string()),
        404 => {
            return Err(answer
                .oauth_scopes
                .as_deref()
                // The check reads the repository, not the workflow file.
                .and_then(|scopes| classic_token_not_found(scopes, false))
                .unwrap_or_else(|| NOT_FOUND.to_string()));
        }
        403 if let Some(reason) = super::saml_refusal(answer) => return Err(reason),
        403 => {
            return Err(format!(
                "forbidden (403): {}",
                answer
                    .message
                    .as_deref()
                    .unwrap_or("GitHub refused to show the repository")
            ));
        }
        status => {
            return Err(format!(
                "GitHub answered {status}: {}",
                answer.message.as_deref().unwrap_or("")
            ));
        }
    }
    let repo: serde_json::Value = answer
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_default();
    if let Some(scopes) = &answer.oauth_scopes {
        // A classic token: `repo` covers both dispatch endpoints (the
        // `workflow` scope is for editing workflow files, not running them);
        // `public_repo` only covers public repositories.
        let scopes: Vec<&str> = scopes.split(',').map(str::trim).collect();
        let private = repo["private"].as_bool().unwrap_or(true);
        let covered = scopes.contains(&"repo") || (!private && scopes.contains(&"public_repo"));
        if !covered {
            return Err("missing permission: the classic token needs the `repo` scope".to_string());
        }
    }
    if !app && repo["permissions"]["push"] == false {
        // What a fine-grained token needs for each endpoint, as GitHub's
        // reference lists it: a workflow dispatch needs Actions alone.
        return Err(format!(
            "missing permission: the credential can see {} but not write to it ({})",
            target.repo,
            match target.scope {
                Scope::Workflow => "a workflow dispatch needs Actions: write",
                Scope::Contents => "a repository dispatch needs Contents: write",
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_up_budget_is_spent_below_half_the_limit() {
        let rate = |remaining, limit| crate::github::RateHeaders {
            remaining,
            limit,
            ..Default::default()
        };
        // (budget, remaining, limit, spent)
        let table = [
            (Budget::Half, Some(2_500), Some(5_000), false),
            (Budget::Half, Some(2_499), Some(5_000), true),
            (Budget::Half, Some(0), Some(60), true),
            (Budget::Half, None, Some(5_000), false),
            (Budget::Half, Some(10), None, false),
            (Budget::Whole, Some(1), Some(5_000), false),
        ];
        for (budget, remaining, limit, spent) in table {
            assert_eq!(
                budget.spent(&rate(remaining, limit)),
                spent,
                "{budget:?} {remaining:?} of {limit:?}"
            );
        }
    }

    fn answer(status: u16, body: &str, scopes: Option<&str>) -> Answer {
        Answer {
            status,
            body: (!body.is_empty()).then(|| body.to_string()),
            message: (status >= 300).then(|| "msg".to_string()),
            oauth_scopes: scopes.map(str::to_string),
            from_github: true,
            ..Answer::default()
        }
    }

    fn target(scope: Scope) -> Target {
        Target {
            repo: "acme/blog".into(),
            scope,
        }
    }

    #[test]
    fn rate_limits_timeouts_and_server_errors_are_unanswered_questions() {
        let with = |status: u16, message: &str, remaining: Option<u64>| {
            let mut answer = answer(status, "", None);
            answer.message = Some(message.to_string());
            answer.rate.remaining = remaining;
            answer
        };
        let cases = [
            (
                with(403, "API rate limit exceeded for installation", Some(0)),
                true,
            ),
            (
                with(403, "You have exceeded a secondary rate limit", None),
                true,
            ),
            (with(429, "Too many requests", None), true),
            (with(408, "timeout", None), true),
            (with(502, "Server Error", None), true),
            (with(503, "Service Unavailable", None), true),
            (
                with(
                    403,
                    "Resource protected by organization SAML enforcement",
                    Some(4000),
                ),
                false,
            ),
            (with(404, "Not Found", None), false),
            (with(401, "Bad credentials", None), false),
            (with(200, "", None), false),
        ];
        for (answer, expected) in cases {
            assert_eq!(
                unanswered(&answer).is_some(),
                expected,
                "{} {:?}",
                answer.status,
                answer.message
            );
        }
    }

    #[test]
    fn a_repository_answered_under_another_name_has_moved() {
        let cases = [
            (r#"{"full_name": "acme/website"}"#, Some("acme/website")),
            (r#"{"full_name": "new-owner/blog"}"#, Some("new-owner/blog")),
            // GitHub's names are matched whatever their case.
            (r#"{"full_name": "ACME/Blog"}"#, None),
            (r#"{"full_name": "acme/blog"}"#, None),
            (r#"{}"#, None),
            ("", None),
        ];
        for (body, expected) in cases {
            assert_eq!(
                name_now(&answer(200, body, None), &target(Scope::Contents)).as_deref(),
                expected,
                "{body}"
            );
        }
    }

    #[test]
    fn findings_name_the_reason() {
        let writable = r#"{"private": true, "permissions": {"push": true}}"#;
        let read_only = r#"{"private": true, "permissions": {"push": false}}"#;
        let public = r#"{"private": false, "permissions": {"push": true}}"#;
        let cases: Vec<(Answer, Scope, bool, Result<(), &str>)> = vec![
            (answer(200, writable, None), Scope::Contents, false, Ok(())),
            (
                answer(200, writable, Some("repo, workflow")),
                Scope::Workflow,
                false,
                Ok(()),
            ),
            (
                answer(200, public, Some("public_repo")),
                Scope::Contents,
                false,
                Ok(()),
            ),
            (
                answer(200, writable, Some("read:org")),
                Scope::Contents,
                false,
                Err("missing permission: the classic token needs the `repo` scope"),
            ),
            (
                answer(200, read_only, None),
                Scope::Contents,
                false,
                Err(
                    "missing permission: the credential can see acme/blog but not write to it (a repository dispatch needs Contents: write)",
                ),
            ),
            (
                answer(200, read_only, None),
                Scope::Workflow,
                false,
                Err(
                    "missing permission: the credential can see acme/blog but not write to it (a workflow dispatch needs Actions: write)",
                ),
            ),
            (answer(200, "{}", None), Scope::Contents, true, Ok(())),
            (
                answer(401, "", None),
                Scope::Contents,
                false,
                Err(BAD_CREDENTIALS),
            ),
            (
                answer(404, "", None),
                Scope::Contents,
                false,
                Err(NOT_FOUND),
            ),
            // A 404 or a 200 from a server that is not GitHub's API.
            (
                Answer {
                    from_github: false,
                    ..answer(404, "", None)
                },
                Scope::Contents,
                false,
                Err(NOT_GITHUB),
            ),
            (
                Answer {
                    from_github: false,
                    ..answer(200, "<html></html>", None)
                },
                Scope::Contents,
                false,
                Err(NOT_GITHUB),
            ),
            (
                Answer {
                    from_github: false,
                    ..answer(204, "", None)
                },
                Scope::Contents,
                false,
                Err(NOT_GITHUB),
            ),
            (
                answer(403, "", None),
                Scope::Contents,
                false,
                Err("forbidden (403): msg"),
            ),
            (
                Answer {
                    sso_url: Some(
                        "https://github.com/orgs/acme/sso?authorization_request=AbC1".into(),
                    ),
                    ..answer(403, "", None)
                },
                Scope::Contents,
                false,
                Err(
                    "forbidden (403): the organization enforces SAML single sign-on and the token is not authorized for it; its owner authorizes it at https://github.com/orgs/acme/sso?authorization_request=AbC1, then `redeliver --failed` sends what failed",
                ),
            ),
        ];
        for (answer, scope, app, expected) in cases {
            let got = judge(&answer, &target(scope), app);
            assert_eq!(
                got.as_ref().map_err(String::as_str),
                expected.as_ref().map_err(|e| *e),
                "{answer:?}"
            );
        }
    }
}
