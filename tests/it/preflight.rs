//! `check --online` and the start-up preflight of `serve`: each reason a
//! repository cannot receive dispatches, told apart.

use std::time::{Duration, Instant};

use crate::app::{APP_ID, app_head, enable_test_app};
use crate::fake_github::Scripted;
use crate::helpers::{TEST_HEAD, TOKEN, relay_command, spawn_app_prepared, spawn_app_with};

const TARGETS: &str = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n      - repo: acme/private\n        event_type: deploy\n      - repo: acme/docs\n        workflow: deploy.yml\n        ref: main\n";

pub(crate) fn check_online(app: &crate::helpers::TestApp, token: &str) -> (i32, String) {
    let output = relay_command()
        .args(["check", "--online", "--config"])
        .arg(app.config_path())
        .env("GITHUB_API_URL", app.github.url())
        .env("GITHUB_TOKEN", token)
        .env("GITHUB_APP_ID", APP_ID.to_string())
        .env("WEBHOOK_SECRET", crate::helpers::SECRET)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// Once GitHub answers the check with a rate limit, the repositories left
/// are not asked about: GitHub asks integrations to stop while limited.
#[tokio::test(flavor = "multi_thread")]
async fn check_online_stops_asking_at_a_rate_limit() {
    let app = spawn_app_with(TEST_HEAD, TARGETS, &[]).await;
    // The relay's own preflight is over, so the scripted answer and the
    // count are the check's.
    app.wait_for_log(|l| l.contains("Preflight finished")).await;
    app.github.push_repo_responses(
        "acme/blog",
        vec![Scripted::SecondaryRateLimit {
            retry_after_secs: Some(60),
        }],
    );
    let asked_before = repository_reads(&app);
    let (code, text) = check_online(&app, TOKEN);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("  ????  acme/blog: not answered: GitHub rate-limited the request (403)"),
        "{text}"
    );
    for checked in ["acme/docs (workflow dispatch)", "acme/private"] {
        assert!(
            text.contains(&format!(
                "  ????  {checked}: not asked: GitHub rate-limited an earlier request"
            )),
            "{text}"
        );
    }
    assert_eq!(
        repository_reads(&app) - asked_before,
        1,
        "only the first was asked"
    );
}

/// The start-up preflight keeps half of the credential's hourly requests
/// for dispatches: once an answer says fewer are left, it stops asking and
/// says so. `check --online`, run to get every answer, asks them all.
#[tokio::test(flavor = "multi_thread")]
async fn the_start_up_preflight_leaves_half_the_rate_limit_to_dispatches() {
    // Another client of the token has spent 2,499 of its 5,000: the first
    // answer leaves 2,500, the second 2,499.
    let app = spawn_app_prepared(TEST_HEAD, TARGETS, &[], |github| github.spend_rate(2_499)).await;
    let stopped = app
        .wait_for_log(|l| l.contains("Preflight stopped with half"))
        .await;
    assert!(stopped.contains(r#""not_asked":1"#), "{stopped}");
    app.wait_for_log(|l| l.contains("Preflight finished")).await;
    assert_eq!(repository_reads(&app), 2);
    let (_, text) = check_online(&app, TOKEN);
    assert!(!text.contains("not asked"), "{text}");
    assert_eq!(repository_reads(&app), 5);
}

/// How many `GET /repos/{owner}/{repo}` the fake has answered.
fn repository_reads(app: &crate::helpers::TestApp) -> usize {
    app.github
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/repos/"))
        .count()
}

/// A repository that gets both kinds of dispatch is checked for each (they
/// need different permissions), said on two lines that tell them apart,
/// and counted once.
#[tokio::test(flavor = "multi_thread")]
async fn check_online_tells_apart_the_two_kinds_of_dispatch_to_one_repository() {
    let both = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/docs\n        event_type: deploy\n      - repo: acme/docs\n        workflow: deploy.yml\n        ref: main\n";
    let app = spawn_app_with(TEST_HEAD, both, &[]).await;
    let (code, text) = check_online(&app, TOKEN);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("about 1 repository\n"), "{text}");
    assert!(text.contains("  ok    acme/docs\n"), "{text}");
    assert!(
        text.contains("  ok    acme/docs (workflow dispatch)\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_online_explains_each_failure_of_a_token() {
    let app = spawn_app_with(TEST_HEAD, TARGETS, &[]).await;
    let (code, text) = check_online(&app, TOKEN);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("  ok    acme/blog"), "{text}");
    assert!(text.contains("  ok    acme/docs"), "{text}");
    assert!(
        text.contains(
            "  FAIL  acme/private: repository not found, or the credential cannot see it"
        ),
        "{text}"
    );
    assert!(
        text.contains("1 of 3 repositories cannot receive dispatches"),
        "{text}"
    );

    app.github.add_read_only_token("github_pat_readonly");
    let (_, text) = check_online(&app, "github_pat_readonly");
    assert!(
        text.contains("FAIL  acme/blog: missing permission: the credential can see acme/blog but not write to it (a repository dispatch needs Contents: write)"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  acme/docs (workflow dispatch): missing permission: the credential can see acme/docs but not write to it (a workflow dispatch needs Actions: write)"),
        "{text}"
    );

    // GitHub out of reach says nothing about the repositories: exit 2, as
    // for any failure at run time, so that CI can tell it from a refusal.
    let output = relay_command()
        .args(["check", "--online", "--config"])
        .arg(app.config_path())
        .env("GITHUB_API_URL", crate::helpers::closed_port_url())
        .env("GITHUB_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("  ????  acme/blog: not answered: could not connect to GitHub"),
        "{text}"
    );
    assert!(
        text.contains("GitHub could not be asked about 3 of 3 repositories"),
        "{text}"
    );

    let (code, text) = check_online(&app, "ghp_revoked");
    assert_eq!(code, 1);
    assert!(
        text.contains("FAIL  acme/blog: bad credentials: token invalid or expired"),
        "{text}"
    );
    assert!(!text.contains("ghp_revoked"), "the token is never printed");

    // `serve` runs the same preflight at start and logs what it finds.
    let start = Instant::now();
    while !app.logs().iter().any(|l| {
        l.contains("Preflight: this repository cannot receive dispatches yet")
            && l.contains("acme/private")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no preflight warning: {:#?}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A classic token made without the `repo` scope sees no private
/// repository: GitHub answers 404, as for one that does not exist, but
/// names the token's scopes on the answer. `check --online` and a failed
/// delivery say that the scope is what is missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_classic_token_without_the_repo_scope_is_told_so() {
    const CLASSIC: &str = "ghp_classicWithoutRepo";
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n";
    let app = spawn_app_prepared(TEST_HEAD, routes, &[("GITHUB_TOKEN", CLASSIC)], |github| {
        github.add_classic_token(CLASSIC, &["read:org", "gist"]);
        github.add_classic_token("ghp_classicWithRepo", &["repo", "workflow"]);
    })
    .await;
    let missing = "repository not found, or the credential cannot see it: the classic token has only `read:org`, `gist`, and without `repo` GitHub answers 404 for a private repository; add the `repo` scope to the token";
    let (code, text) = check_online(&app, "ghp_classicWithRepo");
    assert_eq!(code, 0, "{text}");
    check_and_delivery_fail_with(&app, CLASSIC, "acme/blog", missing).await;
    assert!(!app.logs().iter().any(|l| l.contains(CLASSIC)));
}

/// Asserts that `check --online` with `token` fails `repo` for `reason`,
/// and that a webhook posted to route `cms` fails its delivery for it.
async fn check_and_delivery_fail_with(
    app: &crate::helpers::TestApp,
    token: &str,
    repo: &str,
    reason: &str,
) {
    let (code, text) = check_online(app, token);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("  FAIL  {repo}: {reason}")),
        "{text}"
    );
    assert_eq!(app.post("cms", "{}").await.status(), 202);
    let list = app
        .wait_for_deliveries(Duration::from_secs(60), |list| {
            list.first().is_some_and(|d| d["status"] == "failed")
        })
        .await;
    assert_eq!(list[0]["targets"][0]["last_error"], reason, "{list:?}");
}

/// A classic token that has `repo` and still gets 404 is not told to add
/// the scope, nor about fine-grained tokens and Apps: what is left is the
/// name, its owner's access and single sign-on.
#[tokio::test(flavor = "multi_thread")]
async fn a_404_to_a_classic_token_with_the_repo_scope_names_what_is_left() {
    const CLASSIC: &str = "ghp_classicWithRepo";
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/gone\n        event_type: deploy\n";
    let app = spawn_app_prepared(TEST_HEAD, routes, &[("GITHUB_TOKEN", CLASSIC)], |github| {
        github.add_classic_token(CLASSIC, &["repo", "workflow"]);
    })
    .await;
    let reason = "repository not found, or the token's owner cannot see it: the classic token has the `repo` scope, so check the repository's name, that the token's owner has access to it, and, for an organization with SAML single sign-on, that the token is authorized for the organization";
    check_and_delivery_fail_with(&app, CLASSIC, "acme/gone", reason).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_online_says_when_the_app_is_not_installed() {
    let routes = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n      - repo: acme/site\n        event_type: deploy\n";
    let app = spawn_app_prepared(
        &app_head("off"),
        routes,
        &[("GITHUB_APP_ID", &APP_ID.to_string())],
        enable_test_app,
    )
    .await;
    let (code, text) = check_online(&app, TOKEN);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("  ok    acme/blog"), "{text}");
    assert!(
        text.contains("FAIL  acme/site: the GitHub App is not installed on acme/site"),
        "{text}"
    );
    assert_eq!(app.github.violations(), Vec::<String>::new());
}

/// An api_url that is not GitHub's API (here the relay's own address, which
/// answers 404 to `/repos/...` as any web server would) is named as the
/// likely cause, for a token and for an App, rather than reported as a
/// repository the credential cannot see.
#[tokio::test(flavor = "multi_thread")]
async fn a_404_from_a_server_that_is_not_githubs_api_points_at_api_url() {
    let one_target = "  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n";
    for head in [TEST_HEAD.to_string(), app_head("off")] {
        let app = spawn_app_prepared(
            &head,
            one_target,
            &[("GITHUB_APP_ID", &APP_ID.to_string())],
            enable_test_app,
        )
        .await;
        let output = relay_command()
            .args(["check", "--online", "--config"])
            .arg(app.config_path())
            .env("GITHUB_API_URL", app.url(""))
            .env("GITHUB_TOKEN", TOKEN)
            .env("GITHUB_APP_ID", APP_ID.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(
            text.contains("FAIL  acme/blog: the server did not answer as GitHub's API does")
                && text.contains("check github.api_url"),
            "{head}\n{text}"
        );
    }
}

/// A GitHub Enterprise Server whose certificate a company's own CA issued
/// is reached once that CA is in the trust store the system names
/// (`SSL_CERT_FILE` here); without it, `check --online` says what is
/// missing instead of a bare "UnknownIssuer".
#[tokio::test(flavor = "multi_thread")]
async fn a_github_behind_a_private_ca_is_reached_through_the_systems_trust_store() {
    let github = crate::fake_github::FakeGitHub::start().await;
    github.add_token(TOKEN);
    github.add_repo("acme/blog");
    let api_url = crate::helpers::tls_front(&github.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, crate::helpers::plain_routes_file("cms")).unwrap();
    let check = |ca: Option<std::path::PathBuf>| {
        let mut command = relay_command();
        command
            .args(["check", "--online", "--config"])
            .arg(&config)
            .env("GITHUB_API_URL", &api_url)
            .env("GITHUB_TOKEN", TOKEN)
            .env_remove("SSL_CERT_DIR")
            .env_remove("SSL_CERT_FILE");
        if let Some(ca) = ca {
            command.env("SSL_CERT_FILE", ca);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
        )
    };
    let (code, text) = check(None);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("invalid peer certificate") && text.contains("SSL_CERT_FILE"),
        "{text}"
    );
    let (code, text) = check(Some(crate::helpers::test_ca_file()));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok    acme/blog"), "{text}");

    // `serve` delivers through it.
    let mut env = crate::helpers::relay_env(None);
    env.push(("GITHUB_API_URL".into(), api_url.clone()));
    env.push((
        "SSL_CERT_FILE".into(),
        crate::helpers::test_ca_file().display().to_string(),
    ));
    let (mut child, base_url, _logs, _reader) =
        crate::helpers::start_relay_in(dir.path(), &config, &env, None);
    let accepted = crate::helpers::http()
        .post(format!("{base_url}/hooks/cms"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    github.wait_for_dispatches(1, Duration::from_secs(30)).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A repository renamed since routes.yaml was written can still receive
/// dispatches (GitHub redirects its former name), so the check passes, and
/// names the repository as it is now.
#[tokio::test(flavor = "multi_thread")]
async fn check_online_names_a_renamed_repository_by_its_name_now() {
    let app = spawn_app_prepared(TEST_HEAD, TARGETS, &[], |github| {
        github.add_repo("acme/private");
        github.rename_repo("acme/blog", "acme/Website");
    })
    .await;
    let (code, text) = check_online(&app, TOKEN);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("  ok    acme/blog: renamed or transferred, now acme/Website: GitHub redirects its dispatches, and routes.yaml should say acme/Website\n"),
        "{text}"
    );
    assert!(text.contains("  ok    acme/private\n"), "{text}");
    // The start-up preflight said it too.
    let line = app
        .wait_for_log(|l| l.contains("Preflight: this repository was renamed or transferred"))
        .await;
    assert!(line.contains("acme/Website"), "{line}");
}
