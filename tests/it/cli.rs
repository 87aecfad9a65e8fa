//! The command line against real files: `check` with good and broken
//! configurations, `render`'s dry run, and the example routes.yaml.

use crate::helpers::{SECRET, relay_command, signature};

pub fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = relay_command();
    command
        .args(args)
        .current_dir(dir)
        .env_remove("RELAY_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A temporary directory holding `text` as its routes.yaml.
pub fn dir_with_routes(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.yaml"), text).unwrap();
    dir
}

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let broken = "github:\n  token: x\nroutes:\n  - id: one\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        evnt_type: deploy\n  - id: two\n    verify:\n      hmac:\n        secret: s\n        header: X-Sig\n        algoritm: sha256\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n";
    let dir = dir_with_routes(broken);
    let (code, _, stderr) = run(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("routes.yaml:8:9:"),
        "the misspelt event_type is on line 8, column 9:\n{stderr}"
    );
    assert!(
        stderr.contains("event_type"),
        "a did-you-mean names the right key:\n{stderr}"
    );
    assert!(
        stderr.contains("routes.yaml:14:9:"),
        "the second route's error is reported too:\n{stderr}"
    );
    assert!(
        stderr.lines().all(|l| l.starts_with("routes.yaml:")),
        "every line is file:line:col: message, as editors read them:\n{stderr}"
    );
}

/// Windows editors start a UTF-8 file with a byte order mark, which YAML
/// allows; another encoding is named where its first foreign byte is.
#[test]
fn check_reads_a_byte_order_mark_and_places_bytes_that_are_not_utf8() {
    let good = "github:\n  token: x\nroutes:\n  - id: one\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n";
    let dir = dir_with_routes(&format!("\u{feff}{good}"));
    let (code, _, stderr) = run(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let mut latin1 = good.replace("deploy", "dXploy").into_bytes();
    let at = latin1.iter().position(|&b| b == b'X').unwrap();
    latin1[at] = 0xe9;
    std::fs::write(dir.path().join("routes.yaml"), latin1).unwrap();
    let (code, _, stderr) = run(dir.path(), &["check"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l == "routes.yaml:8:22: byte 0xE9 is not UTF-8; save the file as UTF-8"),
        "placed as file:line:col, as every fault of the file is: {stderr}"
    );
}

#[test]
fn bad_flags_exit_1_and_help_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["redeliver"][..],
        &["deliveries", "--limit", "x"],
        &["serve", "--no-such-flag"],
    ] {
        let (code, _, stderr) = run(dir.path(), args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?} says what is wrong");
    }
    // Neither --id nor --failed: clap names the choice, not a command line
    // it would itself refuse.
    let (_, _, stderr) = run(dir.path(), &["redeliver", "--failed", "--id", "x"], &[]);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    // --route and --since narrow --failed; with --id they are refused
    // rather than quietly read as a condition on that one delivery.
    for flag in ["--route", "--since"] {
        let (code, _, stderr) = run(dir.path(), &["redeliver", "--id", "x", flag, "a"], &[]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("cannot be used with"), "{stderr}");
    }
    let (_, _, stderr) = run(dir.path(), &["redeliver"], &[]);
    assert!(stderr.contains("<--id <ID>|--failed>"), "{stderr}");
    let (code, stdout, _) = run(dir.path(), &["--help"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("check"), "{stdout}");
}

#[test]
fn every_flag_has_help_and_serve_names_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        &["serve"][..],
        &["check"],
        &["render"],
        &["deliveries"],
        &["redeliver"],
        &["setup", "github-app"],
    ] {
        let (code, stdout, stderr) = run(dir.path(), &[command, &["--help"]].concat(), &[]);
        assert_eq!(code, 0, "{command:?}: {stderr}");
        // clap prints a flag with no doc comment as its name, value and
        // defaults alone.
        for line in stdout.lines().filter(|l| l.trim_start().starts_with("--")) {
            let described = line
                .split_once(">  ")
                .or_else(|| line.trim_start().split_once("  "))
                .map(|(_, rest)| rest.trim())
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('['));
            assert!(described, "{command:?}: a flag without help: {line:?}");
        }
    }
    // Design §2 names these for `serve`; clap alone would list only the
    // two bound to flags.
    let (_, stdout, _) = run(dir.path(), &["serve", "--help"], &[]);
    for variable in [
        "RELAY_CONFIG",
        "RELAY_LISTEN",
        "RELAY_DATABASE_URL",
        "RUST_LOG",
        "RELAY_LOG_FORMAT",
        "RELAY_ADMIN_TOKEN",
    ] {
        assert!(stdout.contains(variable), "{variable}: {stdout}");
    }
}

#[test]
fn check_names_a_missing_environment_variable() {
    let text = "github:\n  token: ${NOT_SET_ANYWHERE}\nroutes:\n  - id: one\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n";
    let dir = dir_with_routes(text);
    let (code, _, stderr) = run(dir.path(), &["check"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("NOT_SET_ANYWHERE"), "{stderr}");
    assert!(stderr.contains("routes.yaml:2:"), "{stderr}");
}

#[test]
fn the_example_routes_yaml_passes_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/routes.yaml");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example, dir.path().join("routes.yaml")).unwrap();
    let env = [
        ("GITHUB_TOKEN", "ghp_example"),
        ("CMS_WEBHOOK_SECRET", "cms-secret"),
        ("JENKINS_PASSWORD", "jenkins-password"),
        ("MINIO_TOKEN", "minio-token"),
    ];
    let (code, stdout, stderr) = run(dir.path(), &["check"], &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        !stdout.contains("cms-secret") && !stderr.contains("cms-secret"),
        "check never prints secrets"
    );
}

#[test]
fn an_empty_relay_config_means_the_default_file() {
    let dir = dir_with_routes(
        "github:\n  token: ${GITHUB_TOKEN}\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{repo: acme/a, event_type: e}]\n",
    );
    // A token read from a file keeps its line break in the variable.
    let env = [("RELAY_CONFIG", ""), ("GITHUB_TOKEN", "ghp_example\n")];
    let (code, stdout, stderr) = run(dir.path(), &["check"], &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn render_prints_the_exact_requests_and_can_verify() {
    let text = "github:\n  token: ${GITHUB_TOKEN}\nroutes:\n  - id: cms\n    verify:\n      hmac:\n        secret: ${WEBHOOK_SECRET}\n        header: X-Signature-256\n        prefix: \"sha256=\"\n    when: body.event == 'publish'\n    dispatch:\n      - repo: acme/blog\n        event_type: \"cms-{{ body.model }}\"\n        client_payload:\n          entry: \"{{ body.entry }}\"\n";
    let dir = dir_with_routes(text);
    let body = r#"{"event":"publish","model":"post","entry":{"id":1}}"#;
    std::fs::write(dir.path().join("body.json"), body).unwrap();
    let env = [("GITHUB_TOKEN", "ghp_x"), ("WEBHOOK_SECRET", SECRET)];
    let (code, stdout, stderr) = run(
        dir.path(),
        &["render", "--route", "cms", "--body", "body.json"],
        &env,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("POST https://api.github.com/repos/acme/blog/dispatches"),
        "{stdout}"
    );
    let json_start = stdout.find('{').unwrap();
    let printed: serde_json::Value = serde_json::from_str(stdout[json_start..].trim()).unwrap();
    assert_eq!(
        printed,
        serde_json::json!({"event_type": "cms-post", "client_payload": {"entry": {"id": 1}}})
    );

    let good = format!("X-Signature-256: {}", signature(SECRET, body.as_bytes()));
    let (code, stdout, _) = run(
        dir.path(),
        &[
            "render",
            "--route",
            "cms",
            "--body",
            "body.json",
            "--verify",
            "--header",
            &good,
        ],
        &env,
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("signature: ok"));
    let bad = format!("X-Signature-256: {}", signature("wrong", body.as_bytes()));
    let (code, _, stderr) = run(
        dir.path(),
        &[
            "render",
            "--route",
            "cms",
            "--body",
            "body.json",
            "--verify",
            "--header",
            &bad,
        ],
        &env,
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("verification failed"), "{stderr}");

    std::fs::write(dir.path().join("draft.json"), r#"{"event":"draft"}"#).unwrap();
    let (code, stdout, _) = run(
        dir.path(),
        &["render", "--route", "cms", "--body", "draft.json"],
        &env,
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("nothing would be sent"), "{stdout}");

    // A form captured without its headers is read as text, as serve reads
    // it, and render says which header to add.
    std::fs::write(dir.path().join("form.txt"), "event=publish&model=page").unwrap();
    let form = |headers: &[&str]| {
        let args = [
            &["render", "--route", "cms", "--body", "form.txt"][..],
            headers,
        ]
        .concat();
        run(dir.path(), &args, &env)
    };
    let (_, stdout, _) = form(&[]);
    assert!(
        stdout.contains("is read as text, as serve reads it; for a form, add --header 'Content-Type: application/x-www-form-urlencoded'"),
        "{stdout}"
    );
    assert!(!stdout.contains("\"cms-page\""), "{stdout}");
    let (code, stdout, stderr) = form(&[
        "--header",
        "Content-Type: application/x-www-form-urlencoded",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"cms-page\""), "{stdout}");
}

#[test]
fn render_reads_the_query_and_shows_the_dedupe_key_serve_would_store() {
    let text = "github:\n  token: t\nroutes:\n  - id: cms\n    verify: none\n    dedupe_key: \"order-{{ body.order.id }}\"\n    dispatch:\n      - repo: acme/blog\n        event_type: \"deploy-{{ query.env }}\"\n";
    let dir = dir_with_routes(text);
    std::fs::write(dir.path().join("with.json"), r#"{"order":{"id":7}}"#).unwrap();
    std::fs::write(dir.path().join("without.json"), r#"{"n":1}"#).unwrap();
    // `render --route cms --body FILE [--query QUERY]`.
    let render = |body: &str, query: Option<&str>| {
        let mut args = vec!["render", "--route", "cms", "--body", body];
        args.extend(query.map(|query| ["--query", query]).into_iter().flatten());
        run(dir.path(), &args, &[])
    };
    let (code, stdout, stderr) = render("with.json", Some("env=prod&x=1"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("# dedupe key: order-7"), "{stdout}");
    assert!(
        stdout.contains(r#""event_type": "deploy-prod""#),
        "{stdout}"
    );
    // A key that lacks its field is no key, as serve stores it.
    let (code, stdout, stderr) = render("without.json", Some("env=prod"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("# dedupe key: none"), "{stdout}");
    // Without the query, the event type would lack its value: refused,
    // not sent as `deploy-`.
    let (code, _, stderr) = render("with.json", None);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("event_type failed to render"), "{stderr}");
}

#[test]
fn render_prints_a_workflow_dispatch_as_the_worker_first_sends_it() {
    let text = "github:\n  token: t\nroutes:\n  - id: build\n    verify: none\n    dispatch:\n      - repo: acme/site\n        workflow: deploy.yml\n        ref: main\n        inputs:\n          entry: \"{{ body.id }}\"\n";
    let render = |text: &str| {
        let dir = dir_with_routes(text);
        std::fs::write(dir.path().join("body.json"), r#"{"id":"7"}"#).unwrap();
        let (code, stdout, stderr) = run(
            dir.path(),
            &["render", "--route", "build", "--body", "body.json"],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let stdout = render(text);
    assert!(
        stdout.contains(
            "POST https://api.github.com/repos/acme/site/actions/workflows/deploy.yml/dispatches"
        ),
        "{stdout}"
    );
    let printed: serde_json::Value =
        serde_json::from_str(stdout[stdout.find('{').unwrap()..].trim()).unwrap();
    assert_eq!(
        printed,
        serde_json::json!({"ref": "main", "inputs": {"entry": "7"}, "return_run_details": true})
    );
    // Written with its folder, the workflow is named by its file name.
    let stdout = render(&text.replace("deploy.yml", ".github/workflows/deploy.yml"));
    assert!(
        stdout.contains("/repos/acme/site/actions/workflows/deploy.yml/dispatches"),
        "{stdout}"
    );
}

#[test]
fn logs_written_to_a_file_or_pipe_carry_no_colour_codes() {
    use std::process::Stdio;

    // The API url goes nowhere: `serve`'s start-up preflight must not reach
    // for api.github.com.
    let text = format!(
        "github:\n  token: ghp_test\n  api_url: {}\nstore:\n  url: sqlite:relay.db\nroutes:\n  - id: one\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n",
        crate::helpers::closed_port_url()
    );
    let dir = dir_with_routes(&text);
    // An empty file where the store belongs is started afresh, with a
    // warning that whatever it held is gone.
    std::fs::write(dir.path().join("relay.db"), b"").unwrap();
    let mut child = relay_command()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "routes.yaml",
        ])
        .current_dir(dir.path())
        .env_remove("RELAY_LOG_FORMAT")
        .env_remove("RELAY_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_until_listening(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.expect("the relay logs that it listens");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("The store file was empty (0 bytes)")),
        "{lines:#?}"
    );
    let line = lines.last().unwrap();
    assert!(line.contains("INFO"), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no ANSI escapes in piped logs: {line:?}"
    );
}

#[test]
fn render_reads_an_sns_envelope_as_serve_does() {
    let text = "github:\n  token: ghp_x\nroutes:\n  - id: uploads\n    verify:\n      sns:\n        topic_arns: [arn:aws:sns:eu-west-1:111122223333:acme-blog-assets-events]\n    dispatch:\n      - repo: acme/blog\n        event_type: s3-upload\n        client_payload:\n          event: \"{{ body.Records[0].eventName }}\"\n";
    let dir = dir_with_routes(text);
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/s3-via-sns-notification.json"
    );
    let (code, stdout, stderr) = run(
        dir.path(),
        &["render", "--route", "uploads", "--body", sample, "--verify"],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    // Without a pinned certificate the signature cannot be checked here,
    // and the output does not claim it was.
    assert!(
        stdout.contains("# SNS envelope: read, but its signature is NOT checked"),
        "{stdout}"
    );
    assert!(!stdout.contains(": ok"), "{stdout}");
    let json_start = stdout.find('{').unwrap();
    let printed: serde_json::Value = serde_json::from_str(stdout[json_start..].trim()).unwrap();
    assert_eq!(
        printed["client_payload"],
        serde_json::json!({"event": "ObjectCreated:Put"}),
        "the body is the envelope's Message: {stdout}"
    );
    // S3's test event, which serve acknowledges and does not relay.
    let test_event = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/s3-testevent-via-sns.json"
    );
    let (code, stdout, stderr) = run(
        dir.path(),
        &["render", "--route", "uploads", "--body", test_event],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("# S3's test event (s3:TestEvent)"),
        "{stdout}"
    );
    assert!(!stdout.contains("POST "), "nothing would be sent: {stdout}");
    // Subscription messages, which serve answers itself.
    for (sample, said) in [
        ("sns-subscription-confirmation", "serve confirms it"),
        ("sns-unsubscribe-confirmation", "subscription was deleted"),
    ] {
        let path = format!(
            "{}/tests/fixtures/samples/{sample}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let (code, stdout, stderr) = run(
            dir.path(),
            &["render", "--route", "uploads", "--body", &path],
            &[],
        );
        assert_eq!(code, 0, "{sample}: {stderr}");
        assert!(stdout.contains(said), "{sample}: {stdout}");
        assert!(!stdout.contains("POST "), "{sample}: {stdout}");
    }
    // A confirmation that cannot be visited, which serve refuses.
    let confirmation = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/sns-subscription-confirmation.json"
    ))
    .unwrap();
    let mut envelope: serde_json::Value = serde_json::from_str(&confirmation).unwrap();
    envelope["SubscribeURL"] = serde_json::json!("file:///etc/passwd");
    std::fs::write(dir.path().join("file-url.json"), envelope.to_string()).unwrap();
    let (code, stdout, stderr) = run(
        dir.path(),
        &["render", "--route", "uploads", "--body", "file-url.json"],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("serve answers 400"), "{stdout}");
    // A topic the route does not list, which serve refuses whatever the
    // signature: said without `--verify` too.
    envelope["TopicArn"] = serde_json::json!("arn:aws:sns:eu-west-1:111122223333:other");
    std::fs::write(dir.path().join("other-topic.json"), envelope.to_string()).unwrap();
    let (code, stdout, stderr) = run(
        dir.path(),
        &["render", "--route", "uploads", "--body", "other-topic.json"],
        &[],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("is not in this route's topic_arns: serve answers 401"),
        "{stderr}"
    );
}

#[test]
fn deliveries_reads_store_url_variables_unless_relay_database_url_wins() {
    let text =
        "github:\n  token: ${GITHUB_TOKEN}\nstore:\n  url: sqlite:${STORE_DIR}/r.db\nroutes: []\n";
    let dir = dir_with_routes(text);
    // The variable is substituted as serve does.
    let (code, _, stderr) = run(dir.path(), &["deliveries"], &[("STORE_DIR", "/nowhere/a")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/nowhere/a/r.db"), "{stderr}");
    // Unset, it is named.
    let (code, _, stderr) = run(dir.path(), &["deliveries"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("STORE_DIR"), "{stderr}");
    // RELAY_DATABASE_URL wins, and then the file's variable does not matter.
    let (code, _, stderr) = run(
        dir.path(),
        &["deliveries"],
        &[("RELAY_DATABASE_URL", "sqlite:/nowhere/b.db")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("/nowhere/b.db") && !stderr.contains("STORE_DIR"),
        "{stderr}"
    );
    // An empty RELAY_DATABASE_URL (an env file's `RELAY_DATABASE_URL=`) is
    // unset, as for serve.
    let (code, _, stderr) = run(
        dir.path(),
        &["deliveries"],
        &[("RELAY_DATABASE_URL", ""), ("STORE_DIR", "/nowhere/c")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/nowhere/c/r.db"), "{stderr}");
}

#[test]
fn an_empty_store_url_is_the_default_store_for_every_command() {
    let dir = dir_with_routes("github:\n  token: t\nstore:\n  url: \"${DB_URL:-}\"\nroutes: []\n");
    let (code, _, stderr) = run(dir.path(), &["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    // No store yet: `deliveries` looks for the default one beside the file.
    let (code, _, stderr) = run(dir.path(), &["deliveries"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("dispatch-relay.db"), "{stderr}");
    assert!(!stderr.contains("names no file"), "{stderr}");
}

#[test]
fn a_store_url_serve_would_refuse_fails_check_without_its_password() {
    for (url, reason) in [
        (
            "postgres://relay:s3cretPass@db/relay",
            "the scheme `postgres` is not supported",
        ),
        (
            "sqlite://relay:s3cretPass@db.internal/relay.db",
            "it names a user or a host",
        ),
    ] {
        let dir = dir_with_routes(&format!(
            "github:\n  token: t\nstore:\n  url: {url}\nroutes: []\n"
        ));
        refused_without_password(dir.path(), reason);
        // `check` names the line, as for any other setting of the file.
        let (_, _, stderr) = run(dir.path(), &["check"], &[]);
        assert!(stderr.contains("routes.yaml:4:"), "{stderr}");
        assert!(stderr.contains("store.url: invalid store url"), "{stderr}");
        // RELAY_DATABASE_URL wins over the file's url, which then goes
        // unused and is not held against the file.
        let (code, _, stderr) = run(
            dir.path(),
            &["check"],
            &[("RELAY_DATABASE_URL", "sqlite:elsewhere.db")],
        );
        assert_eq!(code, 0, "{stderr}");
    }
}

fn refused_without_password(dir: &std::path::Path, reason: &str) {
    for args in [
        &["check"][..],
        &["serve", "--listen", "127.0.0.1:0"],
        &["deliveries"],
    ] {
        let (code, stdout, stderr) = run(dir, args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("s3cretPass") && !stdout.contains("s3cretPass"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_malformed_listen_flag_is_invalid_input_and_exits_1() {
    let dir = dir_with_routes("github:\n  token: t\nroutes: []\n");
    let (code, _, stderr) = run(dir.path(), &["serve", "--listen", "localhost"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("`localhost` is not an address to listen on"),
        "{stderr}"
    );
    let (code, _, stderr) = run(dir.path(), &["serve"], &[("RELAY_LISTEN", "0.0.0.0:http")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        !dir.path().join("dispatch-relay.db").exists(),
        "nothing was opened"
    );
    // Empty is unset (`RELAY_LISTEN=` in an environment file): the file's
    // address is used.
    let dir = dir_with_routes(&format!(
        "github:\n  token: t\n  api_url: {}\nserver:\n  listen: 127.0.0.1:0\nroutes: []\n",
        crate::helpers::closed_port_url()
    ));
    let mut relay = relay_command()
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("RELAY_CONFIG")
        .env("RELAY_LISTEN", "")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let listening = lines_until_listening(&mut relay).and_then(|lines| lines.last().cloned());
    let _ = relay.kill();
    let _ = relay.wait();
    assert!(listening.is_some_and(|l| l.contains("127.0.0.1:")));
}

#[test]
fn a_taken_port_fails_before_the_store_is_touched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = dir_with_routes("github:\n  token: t\nroutes: []\n");
    let (code, _, stderr) = run(dir.path(), &["serve", "--listen", &addr], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, ["routes.yaml"], "no store was made");
}

/// A captured request is signed for its own time: `render --verify` still
/// says whether the secret matches, and that `serve` would refuse it now.
#[test]
fn render_verifies_a_captured_request_at_the_time_it_was_signed() {
    // The reference vector of Standard Webhooks, signed in April 2022.
    let dir = dir_with_routes(
        "github:\n  token: t\nroutes:\n  - id: hooks\n    verify:\n      standard_webhooks: {secret: whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD}\n    dispatch:\n      - repo: acme/site\n        event_type: \"signup-{{ body.username }}\"\n",
    );
    let render = |body: &str| {
        std::fs::write(dir.path().join("body.json"), body).unwrap();
        run(
            dir.path(),
            &[
                "render",
                "--route",
                "hooks",
                "--body",
                "body.json",
                "--verify",
                "--header",
                "webhook-id: msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                "--header",
                "webhook-timestamp: 1649367553",
                "--header",
                "webhook-signature: v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            ],
            &[],
        )
    };
    let (code, stdout, stderr) = render(r#"{"email":"test@example.com","username":"test_user"}"#);
    assert!(
        stdout.contains("# signature: ok for the time it was signed, but the timestamp in `webhook-timestamp` is ")
            && stdout.contains("behind the relay's clock, beyond the route's tolerance of 5 min"),
        "{stdout}"
    );
    assert!(
        stdout.contains("signup-test_user"),
        "still rendered: {stdout}"
    );
    // Scripts that ask whether serve would take it are told it would not.
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("serve would answer 401 to this request now: the timestamp"),
        "{stderr}"
    );
    let (code, _, stderr) = render(r#"{"email":"test@example.com","username":"someone_else"}"#);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "verification failed: signature in `webhook-signature` does not match any configured secret"
        ),
        "{stderr}"
    );
}

#[test]
fn render_joins_a_repeated_header_as_serve_does() {
    let text = "github:\n  token: t\nroutes:\n  - id: cms\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n        client_payload:\n          tags: \"{{ headers['x-tag'] }}\"\n";
    let dir = dir_with_routes(text);
    std::fs::write(dir.path().join("body.json"), "{}").unwrap();
    let (code, stdout, stderr) = run(
        dir.path(),
        &[
            "render",
            "--route",
            "cms",
            "--body",
            "body.json",
            "--header",
            "X-Tag: a",
            "--header",
            "x-tag: b",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(r#""tags": "a, b""#), "{stdout}");
}

/// `render` renders a body serve would refuse for its size or its coding,
/// or for the size of its headers, and exits 1 saying so, as it does for a signature serve would refuse.
#[test]
fn render_says_when_serve_would_refuse_a_body_for_its_size_or_coding() {
    let text = "github:\n  token: t\nroutes:\n  - id: cms\n    verify: none\n    max_body: 10\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n        client_payload:\n          n: \"{{ body.n }}\"\n";
    let dir = dir_with_routes(text);
    let render = |body: &str, headers: &[&str]| {
        std::fs::write(dir.path().join("body.json"), body).unwrap();
        let mut args = vec!["render", "--route", "cms", "--body", "body.json"];
        for header in headers {
            args.extend(["--header", header]);
        }
        run(dir.path(), &args, &[])
    };
    let (code, stdout, stderr) = render(r#"{"n":1}"#, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(r#""n": 1"#), "{stdout}");
    let (code, stdout, stderr) = render(r#"{"n":12345}"#, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.contains(r#""n": 12345"#), "still rendered: {stdout}");
    assert!(
        stderr.contains("serve would answer 413 to this request: its body is 11 bytes, over the route's max_body of 10 bytes"),
        "{stderr}"
    );
    let (code, _, stderr) = render(r#"{"n":1}"#, &["Content-Encoding: gzip"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "serve would answer 415 to this request: its body is sent with Content-Encoding `gzip`"
        ),
        "{stderr}"
    );
    let padding = format!("X-Padding: {}", "p".repeat(33_000));
    let (code, _, stderr) = render(r#"{"n":1}"#, &[&padding]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("serve would answer 431 to this request"),
        "{stderr}"
    );
    // A body too large to render is refused for its size, as serve refuses
    // it before reading it, not for what it would render to.
    let (code, _, stderr) = render("not json at all", &["Content-Type: application/json"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("serve would answer 413 to this request: its body is 15 bytes"),
        "{stderr}"
    );
    // No request can carry a header name with a space in it.
    let (code, _, stderr) = render(r#"{"n":1}"#, &["Bad Name: x"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--header `Bad Name` is not a header name"),
        "{stderr}"
    );
}

/// A command whose reader goes away (`dispatch-relay check | head -1`) ends
/// as command-line tools do, by SIGPIPE, not with a panic and exit 101.
#[test]
fn a_closed_pipe_ends_a_printing_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let routes: String = (0..200)
        .map(|i| format!("  - id: r{i}\n    verify: none\n    dispatch: [{{repo: acme/blog, event_type: e}}]\n"))
        .collect();
    let dir = dir_with_routes(&format!("github:\n  token: t\nroutes:\n{routes}"));
    let mut child = relay_command()
        .arg("check")
        .current_dir(dir.path())
        .env_remove("RELAY_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closing the read end before the summary is written makes its first
    // write find no reader.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        output.status.signal() == Some(libc::SIGPIPE) || output.status.code() == Some(0),
        "{:?}: {stderr}",
        output.status
    );
}

/// The relay's log lines up to and including "Listening", read from its
/// piped stderr on a thread of its own, so that a relay that never gets
/// there fails the test within a minute instead of hanging it.
fn lines_until_listening(child: &mut std::process::Child) -> Option<Vec<String>> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let listening = line.contains("Listening");
            lines.push(line);
            if listening {
                let _ = tx.send(std::mem::take(&mut lines));
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).ok()
}

/// A `--route` that routes.yaml does not have, and of which the store
/// holds nothing, is a typo: `deliveries` and `redeliver` say so and exit
/// 1, naming the routes there are, rather than print an empty listing
/// with exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_filter_naming_no_route_is_refused() {
    let app = crate::helpers::spawn_app(&crate::helpers::hmac_route(
        "cms",
        "      - repo: acme/blog\n        event_type: deploy\n",
    ))
    .await;
    assert_eq!(app.post_signed("cms", "{}").await.status(), 202);
    assert_eq!(app.deliveries(&["--route", "cms"]).len(), 1);
    for args in [
        &["deliveries", "--route", "cmss"][..],
        &["redeliver", "--failed", "--route", "cmss"][..],
    ] {
        let output = app.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("route `cmss` is not in") && stderr.contains("its routes: cms"),
            "{args:?}: {stderr}"
        );
    }
    // With `--status`, what the store lacks is a delivery that matches: it
    // may hold others of the route (one since removed from routes.yaml).
    for (status, said) in [
        (None, "holds no delivery of it\n"),
        (Some("failed"), "holds no delivery of it that matches"),
    ] {
        let mut args = vec!["deliveries", "--route", "cmss"];
        args.extend(status.iter().flat_map(|s| ["--status", *s]));
        let stderr = String::from_utf8_lossy(&app.cli(&args).stderr).into_owned();
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
}

/// A log setting mistyped would change the logs without a word
/// (`RUST_LOG=infoo` hides every line of the relay's): it is named once,
/// whatever the filter lets through.
#[test]
fn a_mistyped_log_setting_is_named() {
    let dir = dir_with_routes("github:\n  token: t\nroutes: []\n");
    for (name, value, expected) in [
        ("RUST_LOG", "infoo", "`infoo` names no level"),
        ("RUST_LOG", "[{", "is not a filter"),
        ("RELAY_LOG_FORMAT", "yaml", "neither `json` nor `pretty`"),
    ] {
        let (code, _, stderr) = run(dir.path(), &["check"], &[(name, value)]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            stderr.matches(expected).count(),
            1,
            "{name}={value}: {stderr}"
        );
    }
    let (_, _, stderr) = run(dir.path(), &["check"], &[("RUST_LOG", "info")]);
    assert!(!stderr.contains("RUST_LOG"), "{stderr}");
}

/// The inspection commands never list another store than the one meant,
/// nor make a new one: a configuration they cannot read, a store file left
/// empty and a directory where the store should be are each said as such,
/// and the file is left as it was.
#[test]
fn the_inspection_commands_refuse_what_would_list_another_store() {
    let dir =
        dir_with_routes("github:\n  token: t\nstore:\n  url: sqlite:data/relay.db\nroutes: []\n");
    std::fs::create_dir(dir.path().join("data")).unwrap();
    // A default store beside a mistyped path is not the configured one.
    std::fs::write(dir.path().join("dispatch-relay.db"), b"").unwrap();
    let (code, _, stderr) = run(dir.path(), &["deliveries", "--config", "routes.yml"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot read routes.yml"), "{stderr}");

    let store = dir.path().join("data/relay.db");
    std::fs::write(&store, b"").unwrap();
    for args in [&["deliveries"][..], &["redeliver", "--failed"]] {
        let (code, _, stderr) = run(dir.path(), args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("data/relay.db is empty (0 bytes)"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(std::fs::metadata(&store).unwrap().len(), 0);
    assert!(!dir.path().join("data/relay.db-wal").exists());

    std::fs::remove_file(&store).unwrap();
    std::fs::create_dir(&store).unwrap();
    let (code, _, stderr) = run(dir.path(), &["deliveries"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");
}
