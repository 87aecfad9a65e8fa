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
use crate::dispatch::retry::{BAD_CREDENTIALS, NOT_FOUND};

/// One repository and what its dispatches need.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub repo: String,
    pub scope: Scope,
}

/// The finding for one target: `Ok` or the reason it cannot be dispatched to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub target: Target,
    pub result: Result<(), String>,
    /// GitHub could not be asked (the network, a 5xx, a rate limit, a
    /// token it could not issue for now): the reason says nothing about
    /// the repository itself.
    pub unanswered: bool,
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

/// Checks every target, one after another (a preflight is a handful of
/// reads; doing them in turn keeps clear of secondary rate limits).
pub async fn check(
    credentials: &Credentials,
    client: &GitHubClient,
    targets: &[Target],
) -> Vec<Finding> {
    let mut findings = Vec::with_capacity(targets.len());
    for target in targets {
        let (result, unanswered) = match check_one(credentials, client, target).await {
            Ok(result) => (result, false),
            Err(reason) => (Err(reason), true),
        };
        findings.push(Finding {
            target: target.clone(),
            result,
            unanswered,
        });
    }
    findings
}

/// Asks about one target; the outer error is a question GitHub did not
/// answer, the inner one GitHub's answer.
async fn check_one(
    credentials: &Credentials,
    client: &GitHubClient,
    target: &Target,
) -> Result<Result<(), String>, String> {
    let token = match credentials.token_for(&target.repo, target.scope).await {
        Ok(token) => token,
        Err(e) if e.is_permanent() => return Ok(Err(e.to_string())),
        Err(e) => return Err(e.to_string()),
    };
    let answer = client
        .get(&format!("/repos/{}", target.repo), &token.secret)
        .await
        .map_err(|e| e.to_string())?;
    let judged = judge(&answer, target, credentials.is_app());
    if answer.status == 429 || answer.status >= 500 {
        return Err(judged.err().unwrap_or_default());
    }
    Ok(judged)
}

/// Reads GitHub's answer to `GET /repos/{owner}/{repo}`. Pure, so every
/// reason is pinned by unit tests.
pub fn judge(answer: &Answer, target: &Target, app: bool) -> Result<(), String> {
    match answer.status {
        200 => {}
        401 => return Err(BAD_CREDENTIALS.to_string()),
        404 => return Err(NOT_FOUND.to_string()),
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
        return Err(format!(
            "missing permission: the credential can see {} but not write to it (a dispatch needs Contents: write{})",
            target.repo,
            if target.scope == Scope::Workflow {
                " and Actions: write"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str, scopes: Option<&str>) -> Answer {
        Answer {
            status,
            body: (!body.is_empty()).then(|| body.to_string()),
            message: (status >= 300).then(|| "msg".to_string()),
            oauth_scopes: scopes.map(str::to_string),
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
                    "missing permission: the credential can see acme/blog but not write to it (a dispatch needs Contents: write)",
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
            (
                answer(403, "", None),
                Scope::Contents,
                false,
                Err("forbidden (403): msg"),
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
