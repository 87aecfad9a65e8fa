//! Table-driven tests of loading `routes.yaml`: what is accepted, and for
//! every rejection the exact path, position and message.

use std::time::Duration;

use super::*;

/// The environment every test sees; loading never reads the real one.
fn env(name: &str) -> Option<String> {
    match name {
        "GITHUB_TOKEN" => Some("ghp_test".to_owned()),
        "CMS_WEBHOOK_SECRET" => Some("s3cr3t: #not-a-comment".to_owned()),
        "GITHUB_APP_ID" => Some("42".to_owned()),
        "SLACK_WEBHOOK_URL" => Some("https://hooks.slack.com/services/T/B/X".to_owned()),
        "OLD_SECRET" => Some("old".to_owned()),
        "NEW_SECRET" => Some("new".to_owned()),
        "GH_HOOK_SECRET" => Some("gh".to_owned()),
        "MINIO_TOKEN" => Some("minio".to_owned()),
        "EMPTY" => Some(String::new()),
        "TOKEN_FROM_A_FILE" => Some("ghp_from_file\n".to_owned()),
        "TOKEN_WITH_A_SPACE" => Some("ghp_a b".to_owned()),
        _ => None,
    }
}

fn load_ok(text: &str) -> Loaded {
    match load("routes.yaml", text, &env) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("expected the file to load, got:\n{errors}"),
    }
}

fn load_err(text: &str) -> Vec<ConfigError> {
    match load("routes.yaml", text, &env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors.errors,
    }
}

/// A minimal valid file with `extra` appended to its one route.
fn with_route(extra: &str) -> String {
    format!(
        "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: e\n{extra}"
    )
}

#[test]
fn design_example_loads() {
    let loaded = load_ok(include_str!("fixtures/design-example.yaml"));
    let config = loaded.config;
    assert_eq!(config.github.api_url, "https://api.github.com");
    match &config.github.credential {
        Credential::Token(token) => assert_eq!(token.expose(), "ghp_test"),
        other => panic!("{other:?}"),
    }
    let route = &config.routes[0];
    assert_eq!(route.id, "blog-cms");
    match &route.verify {
        Verify::Hmac(hmac) => {
            assert_eq!(hmac.secrets[0].expose(), "s3cr3t: #not-a-comment");
            assert_eq!(hmac.header, "x-signature-256");
            assert_eq!(hmac.algorithm, HmacAlgorithm::Sha256);
            assert_eq!(hmac.encoding, SignatureEncoding::Hex);
            assert_eq!(hmac.prefix.as_deref(), Some("sha256="));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        route.rate_limit,
        Some(RateLimit {
            per_second: 5,
            burst: 20
        })
    );
    assert!(route.when.is_some());
    assert_eq!(route.max_body, 1 << 20);
    assert_eq!(
        summary(route, 0, &loaded.written),
        "blog-cms (hmac) -> acme/blog:cms-{{ body.model }} when body.event in [\"entry.publish\", \"entry.unpublish\"]"
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // Defaults of the sections the example leaves out.
    assert_eq!(
        config.github.pacing,
        Pacing::Paced {
            concurrency: 1,
            min_interval: Duration::from_secs(1),
            per_minute: 80
        }
    );
    assert_eq!(config.github.timeout, Duration::from_secs(10));
    assert_eq!(config.store.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(config.store.synchronous, Synchronous::Full);
    assert_eq!(config.retry.max_attempts, 10);
    assert_eq!(config.retry.max_backoff, Duration::from_secs(600));
    assert_eq!(config.retry.give_up_after, Duration::from_secs(86_400));
}

#[test]
fn design_example_needs_its_variables() {
    let text = include_str!("fixtures/design-example.yaml");
    let errors = load("routes.yaml", text, &|_| None).unwrap_err().errors;
    let found: Vec<(String, usize)> = errors.iter().map(|e| (e.path.clone(), e.line)).collect();
    assert_eq!(
        found,
        vec![
            ("github.token".to_owned(), 3),
            ("routes[0].verify.hmac.secret".to_owned(), 13),
        ]
    );
    assert!(
        errors[0].message.contains("`GITHUB_TOKEN` is not set"),
        "{}",
        errors[0]
    );
}

#[test]
fn kitchen_sink_loads() {
    let loaded = load_ok(include_str!("fixtures/kitchen-sink.yaml"));
    let config = &loaded.config;
    assert_eq!(config.github.api_url, "https://ghe.example.com/api/v3");
    match &config.github.credential {
        Credential::App(app) => {
            assert_eq!(app.id, "42");
            assert!(matches!(app.private_key, PrivateKeySource::File(_)));
            assert_eq!(app.installation_id, Some(12345));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        config.github.pacing,
        Pacing::Paced {
            concurrency: 2,
            min_interval: Duration::from_millis(500),
            per_minute: 60
        }
    );
    assert_eq!(config.server.max_body, 2 << 20);
    assert_eq!(config.server.trusted_proxies.len(), 2);
    assert_eq!(config.store.synchronous, Synchronous::Normal);
    assert_eq!(config.retry.initial_backoff, Duration::from_secs(2));
    assert_eq!(config.notify.len(), 2);
    assert_eq!(config.routes.len(), 5);

    let blog = &config.routes[0];
    assert_eq!(
        blog.rate_limit,
        Some(RateLimit {
            per_second: 5,
            burst: 5
        })
    );
    assert_eq!(
        blog.debounce,
        Some(Debounce {
            window: Duration::from_secs(30),
            max_wait: Duration::from_secs(300)
        })
    );
    assert_eq!(blog.max_body, 65_536);
    assert!(matches!(blog.dispatch[1].repo, RepoSpec::Templated(_)));
    match &blog.dispatch[0].kind {
        TargetKind::Repository { client_payload, .. } => {
            assert_eq!(client_payload.top_level_keys(), Some(3));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(config.routes[4].verify.method(), "none");
    assert_eq!(
        summary(&config.routes[3], 3, &loaded.written),
        "jenkins_notify (basic) -> acme/ci:report.yml@main"
    );
    let warnings: Vec<_> = loaded
        .warnings
        .iter()
        .map(|w| (w.path.as_str(), w.line))
        .collect();
    assert_eq!(warnings, vec![("routes[4].verify", 91)]);
}

#[test]
fn github_api_url_comes_from_the_environment_first() {
    let text = "github:\n  token: t\n  api_url: https://a.example/\nroutes: []\n";
    let env =
        |name: &str| (name == "GITHUB_API_URL").then(|| "https://b.example/api/v3/".to_owned());
    let loaded = load("routes.yaml", text, &env).unwrap();
    assert_eq!(loaded.config.github.api_url, "https://b.example/api/v3");
}

#[test]
fn pacing_can_be_off() {
    for text in ["pacing: off", "pacing: false"] {
        let loaded = load_ok(&format!("github:\n  token: t\n  {text}\nroutes: []\n"));
        assert_eq!(loaded.config.github.pacing, Pacing::Off, "{text}");
    }
}

#[test]
fn environment_substitution() {
    let cases = [
        ("event_type: ${MISSING:-deploy}", "deploy"),
        ("event_type: x-${EMPTY:-}", "x-"),
        ("event_type: $${NOT_A_VAR}", "${NOT_A_VAR}"),
        ("event_type: cost-$$5", "cost-$5"),
        ("event_type: a$b", "a$b"),
    ];
    for (line, expected) in cases {
        let text = format!(
            "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        {line}\n"
        );
        let loaded = load_ok(&text);
        match &loaded.config.routes[0].dispatch[0].kind {
            TargetKind::Repository { event_type, .. } => {
                assert_eq!(event_type.is_static(), Some(expected), "{line}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn substituted_numbers_are_numbers() {
    let loaded = load_ok(&with_route(
        "    rate_limit:\n      per_second: \"${MISSING:-7}\"\n      burst: ${MISSING:-9}\n",
    ));
    assert_eq!(
        loaded.config.routes[0].rate_limit,
        Some(RateLimit {
            per_second: 7,
            burst: 9
        })
    );
}

/// Each case: the file, then the expected (path, line, column, message
/// fragment) of every error, in order.
#[test]
fn rejections() {
    type Expected = (&'static str, usize, usize, &'static str);
    let base = "github:\n  token: t\nroutes:\n";
    let cases: Vec<(String, Vec<Expected>)> = vec![
        (
            "github: [\n".to_owned(),
            vec![("", 2, 1, "did not find expected node content")],
        ),
        (
            "".to_owned(),
            vec![("", 1, 1, "the file is empty")],
        ),
        (
            "github:\n  token: t\nroutes: []\nroute: []\n".to_owned(),
            vec![("route", 4, 1, "unknown key `route`; did you mean `routes`?")],
        ),
        (
            "github:\n  tokn: t\nroutes: []\n".to_owned(),
            vec![("github.tokn", 2, 3, "unknown key `tokn`; did you mean `token`?")],
        ),
        (
            "github: {}\nroutes: []\n".to_owned(),
            vec![("github", 1, 9, "needs a `token` or an `app`")],
        ),
        (
            "github:\n  token: ${NOPE}\nroutes: []\n".to_owned(),
            vec![("github.token", 2, 10, "environment variable `NOPE` is not set")],
        ),
        (
            format!(
                "{base}  - id: a\n    verify:\n      hmac:\n        secret: x\n        header: X-Sig\n        sekret: y\n    dispatch: [{{repo: acme/a, event_type: e}}]\n  - id: b\n    verify:\n      hmac:\n        secret: x\n        header: X-Sig\n        algoritm: sha1\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"
            ),
            vec![
                ("routes[0].verify.hmac.sekret", 9, 9, "unknown key `sekret`; did you mean `secret`?"),
                ("routes[1].verify.hmac.algoritm", 16, 9, "unknown key `algoritm`; did you mean `algorithm`?"),
            ],
        ),
        (
            format!("{base}  - id: a\n    verify:\n      standard_webhooks:\n        secret: not-base64!\n    dispatch: [{{repo: acme/a, event_type: e}}]\n  - id: b\n    verify:\n      standard_webhooks:\n        secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, not-base64!]\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![
                ("routes[0].verify.standard_webhooks.secret", 7, 17, "is not a Standard Webhooks secret"),
                ("routes[1].verify.standard_webhooks.secrets[1]", 12, 59, "is not a Standard Webhooks secret"),
            ],
        ),
        (
            format!("{base}  - id: a\n    verify:\n      hmac: {{secret: x}}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![("routes[0].verify.hmac", 6, 13, "missing key `header`")],
        ),
        (
            format!("{base}  - id: a\n    verify:\n      hmac: {{secret: x, header: h, algorithm: sha384}}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![("routes[0].verify.hmac.algorithm", 6, 47, "unknown value; expected one of `sha1`, `sha256`")],
        ),
        (
            format!("{base}  - id: a\n    verify:\n      hmac: {{secret: x, header: h, algorithm: SHA-256}}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![("routes[0].verify.hmac.algorithm", 6, 47, "unknown value; did you mean `sha256`?")],
        ),
        (
            format!("{base}  - id: a\n    verify: hmac\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![("routes[0].verify", 5, 13, "`hmac` needs its settings: write it as a key under `verify:`, with the method's keys under it (`verify:` then `  hmac:` on the next line)")],
        ),
        (
            format!("{base}  - id: a\n    verify:\n      hamc: {{secret: x}}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![("routes[0].verify.hamc", 6, 7, "unknown verify method `hamc`; did you mean `hmac`?")],
        ),
        (
            format!("{base}  - id: a\n    verify:\n      github: {{secret: x}}\n      token: {{header: h, value: v}}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![("routes[0].verify", 6, 7, "must hold exactly one method, found `github`, `token`")],
        ),
        (
            format!("{base}  - id: a\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![("routes[0]", 4, 5, "missing key `verify`")],
        ),
        (
            format!("{base}  - id: a\n    verify:\n      github: {{secret: \"${{EMPTY}}\"}}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![("routes[0].verify.github.secret", 6, 24, "`EMPTY` is set but empty")],
        ),
        (
            format!("{base}  - id: a\n    verify:\n      github: {{secret: \"${{EMPTY:-}}\"}}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![("routes[0].verify.github.secret", 6, 24, "is empty")],
        ),
        (
            format!("{base}  - id: a b\n    verify: none\n    dispatch: [{{repo: acme/a, event_type: e}}]\n  - id: a b\n    verify: none\n    dispatch: [{{repo: acme/a, event_type: e}}]\n"),
            vec![
                ("routes[0].id", 4, 9, "not a valid route id"),
                ("routes[1].id", 7, 9, "already the id of routes[0]"),
                ("routes[1].id", 7, 9, "not a valid route id"),
            ],
        ),
        (
            with_route("        workflow: w.yml\n"),
            vec![("routes[0].dispatch[0]", 7, 9, "has both `event_type` and `workflow`")],
        ),
        (
            format!("{base}  - id: a\n    verify: none\n    dispatch:\n      - repo: acme/a\n"),
            vec![("routes[0].dispatch[0]", 7, 9, "needs `event_type`")],
        ),
        (
            format!("{base}  - id: a\n    verify: none\n    dispatch:\n      - repo: acme/a\n        workflow: w.yml\n"),
            vec![("routes[0].dispatch[0]", 7, 9, "missing key `ref`")],
        ),
        (
            format!("{base}  - id: a\n    verify: none\n    dispatch:\n      - repo: \"{{{{ body.repo }}}}\"\n        event_type: e\n"),
            vec![("routes[0].dispatch[0].repo", 7, 15, "needs `allowed_repos`")],
        ),
        (
            format!("{base}  - id: a\n    verify: none\n    dispatch:\n      - repo: acme\n        event_type: e\n"),
            vec![("routes[0].dispatch[0].repo", 7, 15, "is not a repository name")],
        ),
        (
            with_route("      - repo: acme/b\n        event_type: \"deploy \"\n"),
            vec![("routes[0].dispatch[1].event_type", 10, 21, r#"event_type is "deploy ", which begins or ends with whitespace"#)],
        ),
        (
            with_route(&format!("      - repo: acme/b\n        event_type: {}\n", "x".repeat(101))),
            vec![("routes[0].dispatch[1].event_type", 10, 21, "event_type is 101 characters long; GitHub accepts at most 100")],
        ),
        (
            with_route(&format!(
                "        client_payload: {{{}}}\n",
                (0..11).map(|i| format!("k{i}: 1")).collect::<Vec<_>>().join(", ")
            )),
            vec![("routes[0].dispatch[0].client_payload", 9, 25, "client_payload has 11 top-level properties; GitHub accepts at most 10")],
        ),
        (
            with_route(&format!("        client_payload: {{big: \"{}\"}}\n", "x".repeat(65_536))),
            vec![("routes[0].dispatch[0].client_payload", 9, 25, "client_payload is 65546 bytes as JSON")],
        ),
        (
            with_route("        client_payload: [1]\n"),
            vec![("routes[0].dispatch[0].client_payload", 9, 25, "must be a map")],
        ),
        (
            with_route("        client_payload: {a: \"{{ x + }}\", b: [\"{% if %}\"]}\n"),
            vec![
                ("routes[0].dispatch[0].client_payload.a", 9, 29, "invalid expression: syntax error"),
                ("routes[0].dispatch[0].client_payload.b[0]", 9, 46, "invalid template: syntax error"),
            ],
        ),
        (
            format!(
                "{base}  - id: a\n    verify: none\n    dispatch:\n      - repo: acme/a\n        workflow: w.yml\n        ref: main\n        inputs: {{{}}}\n",
                (0..26).map(|i| format!("i{i}: x")).collect::<Vec<_>>().join(", ")
            ),
            vec![("routes[0].dispatch[0].inputs", 10, 17, "inputs has 26 inputs; GitHub accepts at most 25")],
        ),
        (
            format!("{base}  - id: a\n    verify: none\n    dispatch:\n      - repo: acme/a\n        workflow: w.yml\n        ref: main\n        inputs: {{a: {{b: 1}}}}\n"),
            vec![("routes[0].dispatch[0].inputs.a", 10, 21, "is an object, and a workflow's inputs are text")],
        ),
        (
            with_route("        inputs: {a: 1}\n"),
            vec![("routes[0].dispatch[0].inputs", 9, 9, "`inputs` belongs to workflow targets")],
        ),
        (
            with_route("    when: body.x ==\n"),
            vec![("routes[0].when", 9, 11, "invalid expression: syntax error")],
        ),
        (
            with_route("    rate_limit: {per_second: 0}\n    max_body: 10 parsecs\n    source_ips: [nope]\n"),
            vec![
                ("routes[0].rate_limit.per_second", 9, 30, "must be at least 1"),
                ("routes[0].max_body", 10, 15, "not a size unit"),
                ("routes[0].source_ips[0]", 11, 18, "not an IP address"),
            ],
        ),
        (
            with_route("    rate_limit: {per_second: \"${MISSING:-fast}\"}\n"),
            vec![("routes[0].rate_limit.per_second", 9, 30, "not a whole number")],
        ),
        (
            "github:\n  token: t\nretry:\n  max_backoff: 10\n  initial_backoff: 1x\nstore:\n  synchronous: ful\nroutes: []\n".to_owned(),
            vec![
                ("retry.max_backoff", 4, 16, "a duration needs a unit"),
                ("retry.initial_backoff", 5, 20, "not a duration unit"),
                ("store.synchronous", 7, 16, "unknown value; did you mean `full`?"),
            ],
        ),
        (
            "github:\n  token: t\nnotify:\n  - slack: x\n    url: y\n  - url: ftp://nope\nroutes: []\n".to_owned(),
            vec![
                ("notify[0]", 4, 5, "needs exactly one of `slack` or `url`"),
                ("notify[1].url", 6, 10, "is not an http(s) URL"),
            ],
        ),
    ];
    for (text, expected) in cases {
        let errors = load_err(&text);
        let got: Vec<(String, usize, usize, String)> = errors
            .iter()
            .map(|e| (e.path.clone(), e.line, e.column, e.message.clone()))
            .collect();
        assert_eq!(got.len(), expected.len(), "{text}\n{got:#?}");
        for (got, want) in got.iter().zip(&expected) {
            assert_eq!(
                (got.0.as_str(), got.1, got.2),
                (want.0, want.1, want.2),
                "{text}\n{got:#?}"
            );
            assert!(
                got.3.contains(want.3),
                "{text}\nmessage: {}\nwant: {}",
                got.3,
                want.3
            );
        }
    }
}

#[test]
fn errors_print_one_per_line() {
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: nope\n    dispatch: [{repo: acme/a, event_type: e}]\n  - id: b\n    verify: none\n    dispatch: [{repo: acme, event_type: e}]\n";
    let errors = load("routes.yaml", text, &env).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "routes.yaml:5:13: routes[0].verify: unknown verify method; did you mean `none`?\n\
         routes.yaml:8:13: warning: routes[1].verify: the route accepts unauthenticated requests\n\
         routes.yaml:9:23: routes[1].dispatch[0].repo: is not a repository name: expected `owner/name` using letters, digits, `-`, `_` and `.`, at most 39 and 100 characters long"
    );
}

#[test]
fn secrets_never_reach_debug_output() {
    let loaded = load_ok(include_str!("fixtures/design-example.yaml"));
    let printed = format!("{:?}", loaded.config);
    assert!(!printed.contains("s3cr3t"), "{printed}");
    assert!(!printed.contains("ghp_test"), "{printed}");
}

#[test]
fn the_store_url_is_read_with_variables_and_without_the_rest() {
    let data = |name: &str| (name == "DATA").then(|| "/var/lib/relay".to_owned());
    // The rest of the file may be invalid or need secrets that are not set.
    let cases: [(&str, Result<Option<&str>, &str>); 5] = [
        ("routes: []\n", Ok(None)),
        (
            "github:\n  token: ${UNSET}\nstore:\n  url: sqlite:${DATA}/r.db\n",
            Ok(Some("sqlite:/var/lib/relay/r.db")),
        ),
        (
            "store:\n  url: sqlite:${NOPE:-/tmp}/r.db\n",
            Ok(Some("sqlite:/tmp/r.db")),
        ),
        ("store:\n  url: sqlite:${NOPE}/r.db\n", Err("NOPE")),
        ("not: [valid", Ok(None)),
    ];
    for (text, expected) in cases {
        match (store_url(text, &data), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got.as_deref(), want, "{text}"),
            (Err(got), Err(want)) => {
                assert!(got.contains(want) && got.starts_with("store.url"), "{got}")
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn a_secret_written_as_a_number_or_a_boolean_is_not_quoted_in_the_error() {
    let text = "github:\n  token: 1234567890\nroutes:\n  - id: a\n    verify: {slack: {secret: 0x1F2E3D}}\n    dispatch: [{repo: acme/blog, event_type: e}]\n  - id: b\n    verify: {github: {secret: true}}\n    dispatch: [{repo: acme/blog, event_type: e}]\n  - id: c\n    verify: {basic: {username: u, passwords: [8675309.5]}}\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 4, "{errors:?}");
    let printed = ConfigErrors::from(errors).to_string();
    for secret in ["1234567890", "2043453", "0x1F2E3D", "true", "8675309"] {
        assert!(!printed.contains(secret), "{secret}: {printed}");
    }
    // A value holding a quote of the other kind, and an integer too large
    // for any type, which the YAML parser itself refuses.
    for (text, secret) in [
        (
            "github:\n  token: t\nroutes:\n  - id: a\n    verify: {hmac: \"hunter2 `tail\"}\n    dispatch: [{repo: acme/blog, event_type: e}]\n",
            "hunter2",
        ),
        (
            "github:\n  token: t\nroutes:\n  - id: a\n    verify: {token: {header: X, value: 12345678901234567890123}}\n    dispatch: [{repo: acme/blog, event_type: e}]\n",
            "12345678901234567890123",
        ),
    ] {
        let printed = ConfigErrors::from(load_err(text)).to_string();
        assert!(!printed.contains(secret), "{printed}");
    }
    assert!(
        printed.contains("invalid type: an integer, expected a string"),
        "{printed}"
    );
    assert!(
        printed.contains("invalid type: a boolean, expected a string"),
        "{printed}"
    );
}

#[test]
fn a_secret_pasted_into_a_template_or_a_when_is_not_quoted_in_the_error() {
    // Unquoted, a variable becomes code: the parsers then name the secret
    // (or a word of it) as an unknown variable or an unexpected token.
    let cases = [
        (
            "    when: headers[\"x-key\"] == ${MINIO_TOKEN}\n",
            "routes[0].when",
            "MINIO_TOKEN",
            "minio",
        ),
        (
            "    dedupe_key: \"{{ body.id ~ ${MINIO_TOKEN} }}\"\n",
            "routes[0].dedupe_key",
            "MINIO_TOKEN",
            "minio",
        ),
    ];
    for (extra, path, name, secret) in cases {
        let errors = load_err(&with_route(extra));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, path);
        assert!(
            errors[0]
                .message
                .contains(&format!("is invalid once `${{{name}}}` is filled in"))
                && errors[0].message.contains(&format!("'${{{name}}}'")),
            "{}",
            errors[0].message
        );
        assert!(!errors[0].message.contains(secret), "{}", errors[0].message);
    }
    // A message that quotes nothing of the variable keeps its details.
    let errors = load_err(&with_route("    when: \"${MINIO_TOKEN} ==\"\n"));
    assert!(
        !errors[0].message.contains("is filled in"),
        "{}",
        errors[0].message
    );
}

#[test]
fn a_variable_that_is_not_set_is_the_only_error_about_its_value() {
    let errors =
        load_err("github:\n  app:\n    id: 1\n    private_key: ${UNSET_PRIVATE_KEY}\nroutes: []\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.contains("`UNSET_PRIVATE_KEY` is not set"),
        "{}",
        errors[0].message
    );
}

#[test]
fn a_secret_in_the_wrong_place_is_not_quoted_in_the_error() {
    let misplaced = [
        // A Slack URL where a destination map was expected.
        "github:\n  token: t\nnotify:\n  - ${SLACK_WEBHOOK_URL}\nroutes: []\n".to_owned(),
        // The HMAC secret where a list of secrets was expected.
        "github:\n  token: t\nroutes:\n  - id: r\n    verify:\n      hmac:\n        secrets: ${CMS_WEBHOOK_SECRET}\n        header: X-Sig\n    dispatch: [{repo: acme/a, event_type: e}]\n"
            .to_owned(),
    ];
    for text in misplaced {
        let errors = load_err(&text);
        let printed = ConfigErrors::from(errors).to_string();
        assert!(
            printed.contains("invalid type: a string, expected"),
            "{printed}"
        );
        assert!(!printed.contains("hooks.slack.com"), "{printed}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
    }
    // A secret where a name, a number or a header was expected.
    let route = |verify: &str, extra: &str| {
        format!(
            "github:\n  token: t\nroutes:\n  - id: r\n    verify: {verify}\n    dispatch: [{{repo: acme/a, event_type: e}}]\n{extra}"
        )
    };
    let misnamed = [
        route("${CMS_WEBHOOK_SECRET}", ""),
        route(
            "{hmac: {secret: x, header: X-Sig, algorithm: \"${CMS_WEBHOOK_SECRET}\"}}",
            "",
        ),
        route(
            "{token: {header: \"Bearer ${CMS_WEBHOOK_SECRET}\", value: v}}",
            "",
        ),
        route(
            "none",
            "    rate_limit: {per_second: \"${CMS_WEBHOOK_SECRET}\"}\n",
        ),
        route("none", "    max_body: \"${CMS_WEBHOOK_SECRET}\"\n"),
        route("none", "    source_ips: [\"${CMS_WEBHOOK_SECRET}\"]\n"),
        route(
            "none",
            "    debounce: {window: \"${CMS_WEBHOOK_SECRET}\"}\n",
        ),
        route("none", "    allowed_repos: [\"${CMS_WEBHOOK_SECRET}\"]\n"),
        route("{sns: {topic_arns: [\"${CMS_WEBHOOK_SECRET}\"]}}", ""),
        "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{repo: \"${CMS_WEBHOOK_SECRET}\", event_type: e}]\n".to_owned(),
        "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{repo: acme/a, workflow: w.yml, ref: \"${CMS_WEBHOOK_SECRET}\"}]\n".to_owned(),
    ];
    for text in misnamed {
        let printed = ConfigErrors::from(load_err(&text)).to_string();
        assert!(!printed.contains("s3cr3t"), "{printed}");
    }
    // A password in the GitHub url, from a variable or not.
    for api_url in [
        "ftp://${CMS_WEBHOOK_SECRET}",
        "https://relay:${CMS_WEBHOOK_SECRET}@ghe.example.com/api/v3",
        "https://relay:hunter2@ghe.example.com/api/v3",
    ] {
        let text = format!("github:\n  token: t\n  api_url: \"{api_url}\"\nroutes: []\n");
        let printed = ConfigErrors::from(load_err(&text)).to_string();
        assert!(printed.contains("github.api_url"), "{printed}");
        assert!(
            !printed.contains("s3cr3t") && !printed.contains("hunter2"),
            "{printed}"
        );
    }
}

#[test]
fn the_route_summary_shows_variables_as_written() {
    let text = "github:\n  token: t\nroutes:\n  - id: q\n    verify: none\n    when: query.token == \"${CMS_WEBHOOK_SECRET}\"\n    dispatch:\n      - repo: acme/a\n        event_type: e\n";
    let loaded = load_ok(text);
    let route = &loaded.config.routes[0];
    assert!(route.when.as_ref().unwrap().source().contains("s3cr3t"));
    assert_eq!(
        summary(route, 0, &loaded.written),
        "q (none) -> acme/a:e when query.token == \"${CMS_WEBHOOK_SECRET}\""
    );
}

#[test]
fn numbers_written_without_quotes_are_read_as_text() {
    let text = "github:\n  token: t\nroutes:\n  - id: 2024\n    verify: none\n    dispatch:\n      - repo: acme/a\n        workflow: 161335\n        ref: 2024\n      - repo: acme/b\n        event_type: 7\n";
    let loaded = load_ok(text);
    let route = &loaded.config.routes[0];
    assert_eq!(route.id, "2024");
    assert_eq!(
        summary(route, 0, &loaded.written),
        "2024 (none) -> acme/a:161335@2024, acme/b:7"
    );
}

#[test]
fn a_listen_address_serve_cannot_bind_is_refused() {
    for listen in ["0.0.0.0:8080", "[::]:8080", "localhost:8080", "127.0.0.1:0"] {
        let text = format!("github:\n  token: t\nserver:\n  listen: \"{listen}\"\nroutes: []\n");
        load_ok(&text);
    }
    for listen in ["0.0.0.0:99999", "localhost8080", ":8080", "host name:80"] {
        let text = format!("github:\n  token: t\nserver:\n  listen: \"{listen}\"\nroutes: []\n");
        let errors = load_err(&text);
        assert_eq!(errors.len(), 1, "{listen}");
        assert_eq!(errors[0].path, "server.listen", "{listen}");
        assert_eq!((errors[0].line, errors[0].column), (4, 11), "{listen}");
        assert!(errors[0].message.contains("host:port"), "{listen}");
    }
}

#[test]
fn a_client_payload_that_is_one_map_literal_loads() {
    load_ok(&with_route(
        "        client_payload: \"{{ {'model': body.model, 'entry': {'id': body.entry.id}} }}\"\n",
    ));
}

#[test]
fn a_token_read_from_a_file_loses_its_line_break() {
    let loaded = load_ok(
        "github:\n  token: ${TOKEN_FROM_A_FILE}\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{repo: acme/a, event_type: e}]\n",
    );
    match &loaded.config.github.credential {
        Credential::Token(token) => assert_eq!(token.expose(), "ghp_from_file"),
        other => panic!("expected a token, got {other:?}"),
    }
    let errors = load_err(
        "github:\n  token: ${TOKEN_WITH_A_SPACE}\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{repo: acme/a, event_type: e}]\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "github.token");
    assert!(
        errors[0].message.contains("no GitHub token has"),
        "{errors:?}"
    );
    assert!(!errors[0].to_string().contains("ghp_a"), "{errors:?}");
}

#[test]
fn an_empty_document_at_the_end_is_ignored_and_a_second_one_is_placed() {
    let base = with_route("");
    for ending in ["---\n", "---\n\n# generated\n", "--- # end\n...\n", "---"] {
        load_ok(&format!("{base}{ending}"));
    }
    let errors = load_err(&format!("{base}---\nroutes: []\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, 9, "{errors:?}");
    assert!(
        errors[0]
            .message
            .starts_with("a second YAML document starts here"),
        "{errors:?}"
    );
    // A marker before the first document is YAML's usual start.
    load_ok(&format!("---\n{base}"));
}

#[test]
fn routes_can_share_a_block_through_a_merge_key() {
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: &cms\n      hmac: {secret: s, header: X-Sig}\n    dispatch: &blog\n      - repo: acme/blog\n        event_type: e\n  - <<: {verify: *cms, dispatch: *blog}\n    id: b\n  - id: c\n    <<: [{verify: none}, {when: \"true\"}]\n    dispatch: *blog\n";
    let config = load_ok(text).config;
    assert_eq!(config.routes.len(), 3);
    assert_eq!(config.routes[1].id, "b");
    assert_eq!(config.routes[1].verify.method(), "hmac");
    assert_eq!(config.routes[2].verify.method(), "none");
    assert!(config.routes[2].when.is_some());
    let errors = load_err("github:\n  token: t\nroutes:\n  - <<: 3\n    id: a\n");
    assert!(
        errors[0]
            .message
            .starts_with("a merge key (`<<`) must name a map"),
        "{errors:?}"
    );
}

#[test]
fn a_constant_when_is_told_to_be_quoted() {
    let errors = load_err(&with_route("    when: false\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].when");
    assert!(
        errors[0].message.contains("`when: \"false\"`"),
        "{errors:?}"
    );
    load_ok(&with_route("    when: \"false\"\n"));
}

#[test]
fn a_dedupe_key_without_a_tag_is_refused() {
    let errors = load_err(&with_route("    dedupe_key: body.entry.id\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].dedupe_key");
    assert!(
        errors[0]
            .message
            .contains("every webhook would have the same key"),
        "{errors:?}"
    );
    load_ok(&with_route("    dedupe_key: \"\"\n"));
    load_ok(&with_route("    dedupe_key: \"k-{{ body.entry.id }}\"\n"));
}

#[test]
fn workflow_inputs_that_cannot_be_sent_as_written_are_refused() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch:\n      - repo: acme/a\n        workflow: w.yml\n        ref: main\n        inputs:\n          list: [1, \"{{ body.a }}\"]\n          map: {a: 1}\n          version: 1.10\n          count: 3\n          dry: true\n          name: \"{{ body.name }}\"\n";
    let errors = load_err(text);
    let found: Vec<(&str, usize)> = errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("routes[0].dispatch[0].inputs.list", 11),
            ("routes[0].dispatch[0].inputs.map", 12),
            ("routes[0].dispatch[0].inputs.version", 13),
        ],
        "{errors:?}"
    );
    assert!(
        errors[0]
            .message
            .starts_with("is a list, and a workflow's inputs are text"),
        "{errors:?}"
    );
    assert!(
        errors[2].message.contains("write the value in quotes"),
        "{errors:?}"
    );
}

#[test]
fn a_decimal_number_where_text_is_expected_is_refused_with_a_hint() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch:\n      - repo: acme/a\n        workflow: w.yml\n        ref: 1.10\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].dispatch[0].ref");
    assert!(
        errors[0].message.contains("write the value in quotes"),
        "{}",
        errors[0].message
    );
}

#[test]
fn a_decimal_duration_or_size_is_refused_with_its_unit_hint() {
    let text = "github:\n  token: t\n  timeout: 1.5\nserver:\n  max_body: 1.5\nroutes: []\n";
    let errors = load_err(text);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["github.timeout", "server.max_body"], "{errors:?}");
    for error in &errors {
        assert!(
            error.message.contains("whole number of its unit")
                && !error.message.contains("in quotes"),
            "{error:?}"
        );
    }
}

#[test]
fn an_sns_route_must_list_its_topics() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify:\n      sns: {certificates: [c.pem]}\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].verify.sns.topic_arns");
    assert_eq!(errors[0].line, 6);
    assert!(errors[0].message.contains("any AWS account"), "{errors:?}");
}

#[test]
fn a_zero_retention_is_refused() {
    let errors = load_err("github:\n  token: t\nstore:\n  retention: 0d\nroutes: []\n");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "store.retention");
    assert_eq!(errors[0].line, 4);
    assert!(
        errors[0].message.starts_with("must be longer than 0"),
        "{}",
        errors[0].message
    );
}

#[test]
fn a_zero_signature_tolerance_is_refused() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify:\n      slack: {secret: s, tolerance: 0s}\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].verify.slack.tolerance");
    assert_eq!(errors[0].message, "must be longer than 0");
}

#[test]
fn a_body_timeout_is_read_and_zero_is_refused() {
    let text = |timeout: &str| {
        format!(
            "github:\n  token: t\nserver:\n  body_timeout: {timeout}\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{{repo: acme/blog, event_type: e}}]\n"
        )
    };
    let loaded = load_ok(&text("2500ms"));
    assert_eq!(
        loaded.config.server.body_timeout,
        Duration::from_millis(2500)
    );
    let errors = load_err(&text("0s"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "server.body_timeout");
    assert_eq!(errors[0].line, 4);
    assert_eq!(errors[0].message, "must be longer than 0");
}

#[test]
fn a_scalar_where_a_map_belongs_is_named_in_the_files_words() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    debounce: 30s\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].debounce");
    assert!(errors[0].message.contains("expected a map"), "{errors:?}");
    assert!(!errors[0].message.contains("Raw"), "{errors:?}");
}

#[test]
fn a_bad_github_api_url_variable_is_named_as_the_variable() {
    let text = "github:\n  token: t\nroutes: []\n";
    let env = |name: &str| (name == "GITHUB_API_URL").then(|| "ghe.example.com/api/v3".to_owned());
    let errors = match load("routes.yaml", text, &env) {
        Ok(_) => panic!("a bad GITHUB_API_URL must be refused"),
        Err(errors) => errors.errors,
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "github");
    assert_eq!(
        errors[0].message,
        "GITHUB_API_URL (which overrides github.api_url) is not an http(s) URL"
    );
}

/// Request paths are appended to `api_url`, so a query or a fragment in
/// it would end up in the middle of every request.
#[test]
fn an_api_url_with_a_query_or_a_fragment_is_refused() {
    for url in [
        "https://ghe.example.com/api/v3?x=1",
        "https://ghe.example.com/api/v3#top",
    ] {
        let text = format!("github:\n  token: t\n  api_url: \"{url}\"\nroutes: []\n");
        let errors = load_err(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "github.api_url");
        assert!(
            errors[0].message.contains("has a query or a fragment"),
            "{errors:?}"
        );
    }
}

#[test]
fn every_unknown_key_of_a_mapping_is_reported_at_once() {
    let text = "github:\n  token: t\n  tiemout: 5s\n  pacing: {concurency: 2}\nroutes:\n  - id: one\n    whn: body.x\n    max_bdy: 1MB\n    verify: none\n    dispatch: [{repo: acme/blog, event_type: e}]\n  - id: two\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        evnt_type: e\n        client_payloa: {}\n";
    let mut found: Vec<(String, usize, String)> = load_err(text)
        .into_iter()
        .map(|e| (e.path, e.line, e.message))
        .collect();
    found.sort();
    let expected = [
        (
            "github.pacing.concurency",
            4,
            "unknown key `concurency`; did you mean `concurrency`?",
        ),
        (
            "github.tiemout",
            3,
            "unknown key `tiemout`; did you mean `timeout`?",
        ),
        (
            "routes[0].max_bdy",
            8,
            "unknown key `max_bdy`; did you mean `max_body`?",
        ),
        (
            "routes[0].whn",
            7,
            "unknown key `whn`; did you mean `when`?",
        ),
        (
            "routes[1].dispatch[0].client_payloa",
            16,
            "unknown key `client_payloa`; did you mean `client_payload`?",
        ),
        (
            "routes[1].dispatch[0].evnt_type",
            15,
            "unknown key `evnt_type`; did you mean `event_type`?",
        ),
    ];
    let expected: Vec<(String, usize, String)> = expected
        .iter()
        .map(|(path, line, message)| (path.to_string(), *line, message.to_string()))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn an_empty_value_is_reported_on_its_own_line() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify:\n      hmac:\n        header:\n        secret: s\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].verify.hmac.header");
    assert_eq!(errors[0].line, 7, "{errors:?}");
    assert_eq!(errors[0].message, "is empty, expected a string");
}

#[test]
fn after_an_unknown_key_the_other_errors_of_the_mapping_are_reported() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    extra: 1\n    verify: none\n    rate_limit: {brst: 2}\n    debounce: {maxwait: 2s}\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let mut paths: Vec<String> = load_err(text).into_iter().map(|e| e.path).collect();
    paths.sort();
    // `brst` and `maxwait` misspell `burst` and `max_wait`; the required
    // `per_second` and `window` are missing all the same, and say so.
    assert_eq!(
        paths,
        [
            "routes[0].debounce",
            "routes[0].debounce.maxwait",
            "routes[0].extra",
            "routes[0].rate_limit",
            "routes[0].rate_limit.brst"
        ]
    );
}

#[test]
fn a_misspelt_dispatch_or_event_type_does_not_hide_the_targets_errors() {
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: none\n    dispach:\n      - repo: acme/a\n        event_type: e\n        client_payload: {x: \"{{ body.x }\"}\n  - id: b\n    verify: none\n    dispatch:\n      - repo: acme/a\n        event_typ: e\n        client_payload: {x: \"{{ body.x }\"}\n      - repo: acme/a\n        workflw: w.yml\n        ref: main\n        inputs: {x: \"{{ body.x }\"}\n";
    let found: Vec<(String, usize)> = load_err(text)
        .into_iter()
        .map(|e| (e.path, e.line))
        .collect();
    // Each template error is reported beside the misspelt key, so that
    // fixing the key's name does not bring a second round of errors.
    let expected = [
        ("routes[0].dispach", 6),
        ("routes[0].dispach[0].client_payload.x", 9),
        ("routes[1].dispatch[0].event_typ", 14),
        ("routes[1].dispatch[0].client_payload.x", 15),
        ("routes[1].dispatch[1].workflw", 17),
        ("routes[1].dispatch[1].inputs.x", 19),
    ]
    .map(|(path, line)| (path.to_string(), line));
    assert_eq!(found, expected);
}

#[test]
fn errors_in_lists_tagged_maps_and_missing_keys_are_all_reported() {
    let text = "github:\n  token: t\nserver:\n  trusted_proxies: [{a: 1}]\n  listen: [8080]\nroutes:\n  - verify: none\n    rate_limit: !t {per_second: fast, burst: many}\n    allowed_repos: [a, {b: 1}]\n    source_ips: 5\n    debounce: {max_wait: [1]}\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let found: Vec<(String, usize)> = load_err(text)
        .into_iter()
        .map(|e| (e.path, e.line))
        .collect();
    let expected = [
        ("server.trusted_proxies[0]", 4),
        ("server.listen", 5),
        ("routes[0]", 7),
        ("routes[0].rate_limit.per_second", 8),
        ("routes[0].rate_limit.burst", 8),
        ("routes[0].allowed_repos[1]", 9),
        ("routes[0].source_ips", 10),
        ("routes[0].debounce", 11),
        ("routes[0].debounce.max_wait", 11),
    ]
    .map(|(path, line)| (path.to_string(), line));
    assert_eq!(found, expected);
}

#[test]
fn a_wrong_value_in_a_route_does_not_hide_the_rest_of_the_route() {
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: {hmac: {secrets: [s], header: X-S, algorithm: md5}}\n    rate_limit: {per_second: x}\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let paths: Vec<String> = load_err(text).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        [
            "routes[0].verify.hmac.algorithm",
            "routes[0].rate_limit.per_second"
        ]
    );
    // A `dispatch` left out for its error is not reported missing, nor is
    // an `allowed_repos` that a templated repo needs; the rest of the route
    // is checked all the same.
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: {hmac: {secret: s}}\n    dispatch: {repo: acme/blog}\n";
    let paths: Vec<String> = load_err(text).into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["routes[0].verify.hmac", "routes[0].dispatch"]);
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: none\n    allowed_repos: \"acme/*\"\n    rate_limit: {per_second: 0}\n    dispatch: [{repo: \"acme/{{ body.site }}\", event_type: \"\"}]\n";
    let paths: Vec<String> = load_err(text).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        [
            "routes[0].allowed_repos",
            "routes[0].rate_limit.per_second",
            "routes[0].dispatch[0].event_type"
        ]
    );
}

#[test]
fn a_key_left_out_for_its_error_is_not_reported_missing_too() {
    // `window` is required: its wrong value is the news, not its absence.
    let errors = load_err(&with_route("    debounce: {window: [30s]}\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].debounce.window");
}

#[test]
fn every_value_of_the_wrong_type_in_a_section_is_reported() {
    let text = "github:\n  token: t\nretry:\n  max_attempts: lots\n  give_up_after: [1h]\nroutes:\n  - id: r\n    verify: none\n    rate_limit: {per_second: fast, burst: many}\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let found: Vec<(String, usize)> = load_err(text)
        .into_iter()
        .map(|e| (e.path, e.line))
        .collect();
    assert_eq!(
        found,
        [
            ("retry.max_attempts".to_string(), 4),
            ("retry.give_up_after".to_string(), 5),
            ("routes[0].rate_limit.per_second".to_string(), 9),
            ("routes[0].rate_limit.burst".to_string(), 9),
        ]
    );
}

#[test]
fn an_unquoted_variable_in_flow_style_gets_a_hint() {
    let errors = load_err(&with_route(
        "    rate_limit: { per_second: ${MISSING:-5}, burst: 20 }\n",
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.contains("write a variable in quotes"),
        "{errors:?}"
    );
    // Quoted, it loads.
    load_ok(&with_route(
        "    rate_limit: { per_second: \"${MISSING:-5}\", burst: 20 }\n",
    ));
}

#[test]
fn a_target_written_twice_is_warned_about() {
    let text = with_route(
        "      - repo: acme/docs\n        event_type: e\n      - {repo: acme/blog, event_type: e}\n",
    );
    let warnings: Vec<(String, usize, String)> = load_ok(&text)
        .warnings
        .into_iter()
        .filter(|w| w.path.contains("dispatch"))
        .map(|w| (w.path, w.line, w.message))
        .collect();
    assert_eq!(
        warnings,
        [(
            "routes[0].dispatch[2]".to_owned(),
            11,
            "is the same as target 0: each webhook is sent to it twice".to_owned()
        )]
    );
}

#[test]
fn a_strict_field_joined_with_a_tilde_is_warned_about() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: \"{{ 'cms-' ~ body.model }}\"\n";
    let joins = |text: &str| -> Vec<String> {
        load_ok(text)
            .warnings
            .into_iter()
            .filter(|w| w.message.contains("joins with"))
            .map(|w| w.path)
            .collect()
    };
    assert_eq!(joins(text), ["routes[0].dispatch[0].event_type"]);
    let with_event_type = |event_type: &str| {
        format!(
            "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dedupe_key: \"{{{{ 'order-' ~ body.id }}}}\"\n    dispatch:\n      - repo: acme/blog\n        event_type: |-\n          {event_type}\n"
        )
    };
    // Joins and loops that may print nothing for a missing value, a key
    // among them.
    for event_type in [
        "deploy{%- for l in body.labels %}-{{ l }}{% endfor %}",
        "{{ '%s' | format(body.a) ~ body.b }}",
        "{{ body.a | replace('}', '') ~ body.b }}",
    ] {
        assert_eq!(
            joins(&with_event_type(event_type)),
            ["routes[0].dedupe_key", "routes[0].dispatch[0].event_type"],
            "{event_type}"
        );
    }
    // A `~` in a string, or in a condition that prints nothing, is not one.
    for event_type in [
        "cms-{{ body.model }}",
        "{{ body.version | replace('~', '-') }}",
        "{{ body.labels | join('~') }}",
        "{% if (body.a ~ 'x') == 'ax' %}y{% else %}n{% endif %}",
    ] {
        assert_eq!(
            joins(&with_event_type(event_type)),
            ["routes[0].dedupe_key"],
            "{event_type}"
        );
    }
}

#[test]
fn a_static_workflow_of_dots_is_refused_at_load() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{repo: acme/a, workflow: \"..\", ref: main}]\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].dispatch[0].workflow");
}

#[test]
fn a_secret_from_a_default_written_in_the_file_is_warned_about() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify:\n      hmac:\n        secrets: [\"${CMS_WEBHOOK_SECRET}\", \"${MISSING:-known-to-all}\"]\n        header: X-Sig\n    dispatch:\n      - repo: acme/a\n        event_type: \"${MISSING:-deploy}\"\n";
    let warnings = load_ok(text).warnings;
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["routes[0].verify.hmac.secrets[1]"], "{warnings:?}");
    assert!(warnings[0].message.contains("`MISSING`"), "{warnings:?}");
    assert!(
        !warnings[0].message.contains("known-to-all"),
        "{warnings:?}"
    );
}

#[test]
fn a_secret_with_whitespace_at_an_end_is_kept_and_warned_about() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify:\n      hmac:\n        secrets: [\"${SECRET}\", \"${PADDED}\", \" inner space \"]\n        header: X-Sig\n    dispatch:\n      - repo: acme/a\n        event_type: deploy\n";
    let env = |name: &str| match name {
        "SECRET" => Some("s3cr3t".to_owned()),
        "PADDED" => Some("s3cr3t\n".to_owned()),
        _ => None,
    };
    let loaded = load("routes.yaml", text, &env).unwrap();
    let paths: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].verify.hmac.secrets[1]",
            "routes[0].verify.hmac.secrets[2]"
        ],
        "{:?}",
        loaded.warnings
    );
    for warning in &loaded.warnings {
        assert!(warning.message.contains("whitespace"), "{warning:?}");
        assert!(!warning.message.contains("s3cr3t"), "{warning:?}");
        assert!(!warning.message.contains("inner"), "{warning:?}");
    }
}

#[test]
fn a_wrong_value_outside_routes_does_not_hide_the_sections_other_errors() {
    let text = "github:\n  token: [t]\n  timeout: 0s\n  pacing: {concurrency: lots, min_interval: 5 parsecs}\nserver:\n  max_body: [1]\n  body_timeout: 0s\nstore:\n  synchronous: often\n  retention: forever\nretry:\n  max_attempts: lots\n  initial_backoff: 5 parsecs\n  max_backoff: [1]\nroutes: []\n";
    let found: Vec<(String, usize)> = load_err(text)
        .into_iter()
        .map(|e| (e.path, e.line))
        .collect();
    let expected = [
        ("github.token", 2),
        ("github.timeout", 3),
        ("github.pacing.concurrency", 4),
        ("github.pacing.min_interval", 4),
        ("server.max_body", 6),
        ("server.body_timeout", 7),
        ("store.synchronous", 9),
        ("store.retention", 10),
        ("retry.max_attempts", 12),
        ("retry.initial_backoff", 13),
        ("retry.max_backoff", 14),
    ]
    .map(|(path, line)| (path.to_string(), line));
    assert_eq!(found, expected);
    // A misspelt or wrong `max_backoff` is not read as its default: a long
    // `initial_backoff` is not said to exceed it.
    for retry in ["max_backof: 2h", "max_backoff: [2h]"] {
        let text =
            format!("github:\n  token: t\nretry:\n  initial_backoff: 1h\n  {retry}\nroutes: []\n");
        let paths: Vec<String> = load_err(&text).into_iter().map(|e| e.path).collect();
        assert_eq!(paths.len(), 1, "{retry}: {paths:?}");
        assert!(
            paths[0].starts_with("retry.max_backof"),
            "{retry}: {paths:?}"
        );
    }
    // A credential left out, or beside a key that may misspell one, is not
    // reported missing.
    for github in ["tokn: t", "token: t\n  app: {id: [1]}"] {
        let text = format!("github:\n  {github}\nroutes: []\n");
        let errors = load_err(&text);
        assert_eq!(errors.len(), 1, "{github}: {errors:?}");
        assert!(!errors[0].message.contains("needs a"), "{errors:?}");
    }
}

#[test]
fn a_warning_is_written_as_an_error_is_with_its_file_line_and_column() {
    let text = "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let loaded = load("routes.yaml", text, &|_| None).unwrap();
    let lines: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        ["routes.yaml:5:13: warning: routes[0].verify: the route accepts unauthenticated requests"]
    );
}

#[test]
fn plain_http_to_github_is_warned_about_unless_it_stays_on_this_machine() {
    let warnings = |api_url: &str, env: Option<&str>| -> Vec<String> {
        let text = format!(
            "github:\n  token: t\n  api_url: {api_url}\nroutes:\n  - id: r\n    verify: {{hmac: {{secret: s, header: X-Sig}}}}\n    dispatch: [{{repo: acme/blog, event_type: e}}]\n"
        );
        let env = |name: &str| {
            (name == "GITHUB_API_URL")
                .then(|| env.map(str::to_owned))
                .flatten()
        };
        load("routes.yaml", &text, &env)
            .unwrap()
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        warnings("http://ghe.example.com/api/v3", None),
        [
            "routes.yaml:3:12: warning: github.api_url: uses http://: the token, or the App's tokens, would cross the network unencrypted; use https://"
        ]
    );
    for local in [
        "http://127.0.0.1:8080",
        "http://localhost/api/v3",
        "http://[::1]:9/",
        "https://ghe.example.com/api/v3",
    ] {
        assert_eq!(warnings(local, None), Vec::<String>::new(), "{local}");
    }
    let from_env = warnings("https://api.github.com", Some("http://10.0.0.5/api/v3"));
    assert_eq!(from_env.len(), 1, "{from_env:?}");
    assert!(
        from_env[0].contains("GITHUB_API_URL (which overrides github.api_url) uses http://"),
        "{from_env:?}"
    );
}

#[test]
fn an_unknown_key_in_a_route_does_not_hide_the_routes_other_errors() {
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: none\n    whenn: x\n    dispatch: [{repo: acme/blog, event_typ: e}]\n  - id: b\n    verfy: none\n    rate_limit: {per_second: 0}\n    dispatch: [{repo: \"acme/{{ body.site }}\", event_type: e}]\n  - id: c\n    verify: none\n    allowed_repo: [\"acme/*\"]\n    dispatchh: []\n";
    let paths: Vec<String> = load_err(text).into_iter().map(|e| e.path).collect();
    // A misspelt `verify`, `dispatch` or `allowed_repos` is not also
    // reported missing; `allowed_repos`, which route b lacks and misspells
    // nowhere, is.
    assert_eq!(
        paths,
        [
            "routes[0].whenn",
            "routes[0].dispatch[0].event_typ",
            "routes[1].verfy",
            "routes[1].rate_limit.per_second",
            "routes[1].dispatch[0].repo",
            "routes[2].allowed_repo",
            "routes[2].dispatchh",
        ]
    );
}

#[test]
fn only_the_field_an_unknown_key_misspells_is_excused_from_being_missing() {
    let cases = [
        // A misspelt or wrong key of the App is not also "needs a key".
        (
            "github:\n  app: {id: 1, private_ky: k}\nroutes: []\n",
            vec!["github.app.private_ky"],
        ),
        (
            "github:\n  app: {id: 1, private_key_file: [k]}\nroutes: []\n",
            vec!["github.app.private_key_file"],
        ),
        // A wrong `initial_backoff` is not compared at its default.
        (
            "github:\n  token: t\nretry: {initial_backoff: [1], max_backoff: 500ms}\nroutes: []\n",
            vec!["retry.initial_backoff"],
        ),
        // An unknown key like no field may stand for either backoff, or for
        // the App's key, or for the token: nothing is said missing or
        // compared at its default beside it.
        (
            "github:\n  token: t\nretry: {backoff_max: 2h, initial_backoff: 20m}\nroutes: []\n",
            vec!["retry.backoff_max"],
        ),
        (
            "github:\n  app: {id: 1, key: k}\nroutes: []\n",
            vec!["github.app.key"],
        ),
        // A key like nothing stands for nothing: what is missing is said.
        (
            "github:\n  tkn: t\nroutes: []\n",
            vec!["github.tkn", "github"],
        ),
        // A key that shares a word with `max_backoff` may stand for it,
        // whatever "did you mean" guesses.
        (
            "github:\n  token: t\nretry: {initial_backoff: 20m, max_wait: 1h}\nroutes: []\n",
            vec!["retry.max_wait"],
        ),
        // Keys that stand for nothing required excuse nothing.
        (
            "github:\n  token: t\nroutes:\n  - {id: r3, name: third, dispatch: [{repo: a/b, event_type: e}]}\n  - {id: r4, comment: x, verify: none}\n",
            vec![
                "routes[0]",
                "routes[0].name",
                "routes[1]",
                "routes[1].comment",
            ],
        ),
        // A typo of another field does not excuse a real comparison.
        (
            "github:\n  token: t\nretry: {max_attemps: 3, initial_backoff: 1h, max_backoff: 5m}\nroutes: []\n",
            vec!["retry.max_attemps", "retry.initial_backoff"],
        ),
        // Nor does it excuse a missing `verify` or `allowed_repos`.
        (
            "github:\n  token: t\nroutes:\n  - id: r\n    max_bodyy: 1MiB\n    dispatch: [{repo: \"acme/{{ body.x }}\", event_type: e}]\n",
            vec![
                "routes[0]",
                "routes[0].max_bodyy",
                "routes[0].dispatch[0].repo",
            ],
        ),
        // What is written is checked whatever unknown key is beside it.
        (
            "github:\n  token: t\nretry: {initial_backoff: 1h, max_backoff: 5m, backoff_jitter: true}\nroutes: []\n",
            vec!["retry.initial_backoff", "retry.backoff_jitter"],
        ),
        (
            "github:\n  token: \"\"\n  token_type: bearer\nroutes: []\n",
            vec!["github.token", "github.token_type"],
        ),
        // Inside a target: a misspelt `ref` is not also missing; beside a
        // misspelt `inputs`, the missing `ref` is said.
        (
            "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{repo: a/b, workflow: deploy.yml, reff: main}]\n",
            vec!["routes[0].dispatch[0].reff"],
        ),
        (
            "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch: [{repo: a/b, workflow: deploy.yml, input: {x: \"1\"}}]\n",
            vec!["routes[0].dispatch[0]", "routes[0].dispatch[0].input"],
        ),
        // Inside a verify method: a misspelt secret is not also missing;
        // beside a misspelt algorithm, the missing secret is said.
        (
            "github:\n  token: t\nroutes:\n  - id: r\n    verify: {hmac: {header: X-Sig, secrt: s}}\n    dispatch: [{repo: a/b, event_type: e}]\n",
            vec!["routes[0].verify.hmac.secrt"],
        ),
        (
            "github:\n  token: t\nroutes:\n  - id: r\n    verify: {hmac: {header: X-Sig, algoritm: sha1}}\n    dispatch: [{repo: a/b, event_type: e}]\n",
            vec!["routes[0].verify.hmac", "routes[0].verify.hmac.algoritm"],
        ),
        // A misspelt section is not also missing.
        ("gihub:\n  token: t\nroutes: []\n", vec!["gihub"]),
        ("github:\n  token: t\nroute: []\n", vec!["route"]),
        // ... and its contents are checked as the section it means.
        (
            "github:\n  token: t\nroute:\n  - {id: a, verify: nonee, dispatch: []}\n",
            vec!["route", "route[0].verify", "route[0].dispatch"],
        ),
        ("GitHub:\n  token: t\nroutes: []\n", vec!["GitHub"]),
        // A notify item is checked beside an unknown key.
        (
            "github:\n  token: t\nnotify: [{slack: notaurl, channel: x}]\nroutes: []\n",
            vec!["notify[0].slack", "notify[0].channel"],
        ),
    ];
    for (text, expected) in cases {
        let paths: Vec<String> = load_err(text).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, expected, "{text}");
    }
}

#[test]
fn yaml_syntax_errors_a_hand_edited_file_meets_get_a_hint() {
    let cases = [
        ("github:\n\ttoken: t\nroutes: []\n", "indent with spaces"),
        (
            "github:\n  token: t\nroutes:\n  - id: r\n\tverify: none\n",
            "indent with spaces",
        ),
        ("github:\n  token: @weird\nroutes: []\n", "must be quoted"),
        ("github:\n  token: `x\nroutes: []\n", "must be quoted"),
        (
            "github:\n  token: t\nroutes:\n  - id: r\n    verify: none\n    dispatch:\n      repo: acme/weird\n      event_type: e\n",
            "starting with `- `",
        ),
        // A template left unquoted at the start of a value: YAML reads
        // `{{ a }}` as a map, and the rest as broken syntax.
        (
            &with_route("        ref: {{ body.weird }}-x\n"),
            "must be quoted",
        ),
        (
            &with_route("        ref: {% if body.weird %}a{% endif %}\n"),
            "must be quoted",
        ),
        (
            &with_route("      - repo: {{ body.weird }}\n        event_type: e\n"),
            "must be quoted",
        ),
        (
            &with_route("        client_payload: {{ body.weird }}\n"),
            "must be quoted",
        ),
        (
            &with_route(
                "        client_payload:\n          a: ok\n          b: {{ body.weird }}\n",
            ),
            "must be quoted",
        ),
        (
            &with_route("        ref: {{ body.weird }}\n"),
            "must be quoted",
        ),
    ];
    for (text, hint) in cases {
        let errors = load_err(text);
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        assert!(errors[0].message.contains(hint), "{text:?}: {errors:?}");
        // The value itself is never quoted back.
        assert!(!errors[0].message.contains("weird"), "{errors:?}");
    }
}

#[test]
fn odd_shapes_are_named_where_they_are() {
    // A duplicate id names the first route by the section it is in.
    let text = "github:\n  token: t\nroute:\n  - {id: r1, verify: none, dispatch: [{repo: a/b, event_type: e}]}\n  - {id: r1, verify: none, dispatch: [{repo: a/b, event_type: e}]}\n";
    let errors = load_err(text);
    let duplicate = errors.iter().find(|e| e.path == "route[1].id").unwrap();
    assert_eq!(duplicate.message, "already the id of route[0]");
    // A null route is empty, not a route without an id.
    let errors = load_err("github:\n  token: t\nroutes:\n  - ~\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.starts_with("is empty"), "{errors:?}");
    // A tagged verify or pacing is read through its tag.
    let text = "github:\n  token: t\n  pacing: !p {concurrency: 1, bogus: 1}\nroutes:\n  - id: r\n    verify: !v\n      hmac: {secret: x, header: X, bogus: 1}\n    dispatch: [{repo: a/b, event_type: e}]\n";
    let paths: Vec<String> = load_err(text).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        ["github.pacing.bogus", "routes[0].verify.hmac.bogus"]
    );
}

#[test]
fn a_secret_left_with_only_its_text_by_an_empty_default_is_warned_about() {
    // `Bearer ${TOKEN:-}` with TOKEN empty is the secret `Bearer `, which
    // no request presents: every webhook would be refused.
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify:\n      token:\n        header: Authorization\n        value: Bearer ${EMPTY_TOKEN:-}\n    dispatch:\n      - repo: acme/a\n        event_type: e\n";
    let env = |name: &str| (name == "EMPTY_TOKEN").then(String::new);
    let loaded = load("routes.yaml", text, &env).unwrap();
    let lines: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("routes[0].verify.token.value")
                && l.contains("set `EMPTY_TOKEN` instead")),
        "{lines:?}"
    );
    // Every variable whose default was taken is named.
    let two = text.replace("Bearer ${EMPTY_TOKEN:-}", "${EMPTY_TOKEN:-}${OTHER:-dev}");
    let loaded = load("routes.yaml", &two, &env).unwrap();
    let lines: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("set `EMPTY_TOKEN`, `OTHER` instead")),
        "{lines:?}"
    );
}

#[test]
fn a_byte_order_mark_is_dropped_and_bytes_that_are_not_utf8_are_placed() {
    let text = "github:\n  token: t\nroutes: []\n";
    let with_bom = [b"\xef\xbb\xbf".as_slice(), text.as_bytes()].concat();
    assert_eq!(super::decode(with_bom).unwrap(), text);
    let latin1 = b"routes:\n  - id: caf\xe9\n".to_vec();
    assert_eq!(
        super::decode(latin1).unwrap_err(),
        "2:12: byte 0xE9 is not UTF-8; save the file as UTF-8"
    );
}

/// An App key given inline is checked at load, so that `check` finds a
/// variable holding something else, or a key cut short on its way into
/// it, and says what it holds without quoting it; one written on one line
/// with `\n` for its line breaks (an environment file) is taken with them
/// put back.
#[test]
fn an_inline_app_key_is_checked_at_load_and_may_come_on_one_line() {
    use base64::Engine as _;
    // The outer DER value of a key: a SEQUENCE stating its length. What it
    // holds is read only when a token is requested.
    let mut der = vec![0x30, 0x82, 0x01, 0x00];
    der.extend([0x02; 256]);
    let body = base64::engine::general_purpose::STANDARD.encode(&der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    let pem = |label: &str, lines: &[&str]| {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    let rsa = pem("RSA PRIVATE KEY", &lines);
    let one_line = rsa.replace('\n', r"\n");
    let pkcs8 = pem("PRIVATE KEY", &lines);
    let line_lost = pem("RSA PRIVATE KEY", &[&lines[..2], &lines[3..]].concat());
    let end_lost: String = rsa.lines().take(4).collect::<Vec<_>>().join("\n");
    let other_body = pem("RSA PRIVATE KEY", &["aHVudGVyMi1ub3QtYS1rZXk="]);
    let not_base64 = pem("RSA PRIVATE KEY", &["MII*hunter2"]);
    let old_encrypted = format!(
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n{}\n-----END RSA PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let cases: [(&str, &str, Option<&str>); 12] = [
        ("multi-line", &rsa, None),
        ("one line", &one_line, None),
        ("pkcs8", &pkcs8, None),
        ("a line lost", &line_lost, Some("is damaged")),
        ("the end lost", &end_lost, Some("is cut short")),
        ("another body", &other_body, Some("is damaged")),
        ("not base64", &not_base64, Some("is damaged")),
        (
            "old encrypted form",
            &old_encrypted,
            Some("is an encrypted private key"),
        ),
        (
            "public",
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n",
            Some("is a public key"),
        ),
        (
            "encrypted",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            Some("is an encrypted private key"),
        ),
        (
            "ec",
            "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n",
            Some("is not an RSA private key"),
        ),
        (
            "garbage",
            "hunter2-not-a-key",
            Some("is not a private key in PEM form"),
        ),
    ];
    let text = "github:\n  app:\n    id: 1\n    private_key: ${KEY}\nroutes: []\n";
    for (name, key, problem) in cases {
        let env = |var: &str| (var == "KEY").then(|| key.to_owned());
        match (load("routes.yaml", text, &env), problem) {
            (Ok(loaded), None) => match &loaded.config.github.credential {
                Credential::App(app) => match &app.private_key {
                    PrivateKeySource::Inline(pem) => {
                        assert!(pem.expose().contains("KEY-----\nMII"), "{name}")
                    }
                    other => panic!("{name}: {other:?}"),
                },
                other => panic!("{name}: {other:?}"),
            },
            (Err(errors), Some(problem)) => {
                let text = errors.to_string();
                assert!(text.contains("github.app.private_key"), "{name}: {text}");
                assert!(text.contains(problem), "{name}: {text}");
                assert!(
                    !text.contains("hunter2") && !text.contains("MII"),
                    "{name}: {text}"
                );
            }
            (outcome, _) => panic!("{name}: {:?}", outcome.map(|_| ())),
        }
    }
}

#[test]
fn a_body_limit_must_fit_in_the_memory_all_bodies_share() {
    let default = load_ok(&with_route("")).config;
    assert_eq!(default.server.max_body_memory, 64 << 20);

    let text = "github:\n  token: t\nserver:\n  max_body: 2MiB\n  max_body_memory: 1MiB\nroutes:\n  - id: r\n    verify: none\n    max_body: 4MiB\n    dispatch: [{repo: acme/blog, event_type: e}]\n  - id: s\n    verify: none\n    max_body: 512KiB\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let found: Vec<(String, usize, String)> = load_err(text)
        .into_iter()
        .map(|e| (e.path, e.line, e.message))
        .collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!((found[0].0.as_str(), found[0].1), ("server.max_body", 4));
    assert_eq!((found[1].0.as_str(), found[1].1), ("routes[0].max_body", 9));
    assert!(
        found[1]
            .2
            .contains("4194304 bytes is more than server.max_body_memory (1048576 bytes)"),
        "{found:?}"
    );

    let default_too_large = "github:\n  token: t\nserver:\n  max_body_memory: 512KiB\nroutes: []\n";
    let found = load_err(default_too_large);
    assert_eq!(
        (found[0].path.as_str(), found[0].line),
        ("server.max_body_memory", 4)
    );
    assert!(
        found[0].message.contains("set server.max_body"),
        "{found:?}"
    );

    let fits = "github:\n  token: t\nserver:\n  max_body_memory: 8MiB\nroutes:\n  - id: r\n    verify: none\n    max_body: 8MiB\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    assert_eq!(load_ok(fits).config.server.max_body_memory, 8 << 20);
}

#[test]
fn an_integer_too_large_to_read_does_not_hide_the_other_errors() {
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: none\n    rate_limit: {per_second: 99999999999999999999999}\n    max_body: 123456789012345678901234567890\n    dispatch: [{repo: acme/blog, event_type: e, colour: red}]\n";
    let errors = load_err(text);
    let found: Vec<(&str, usize, usize, &str)> = errors
        .iter()
        .map(|e| (e.path.as_str(), e.line, e.column, e.message.as_str()))
        .collect();
    let too_large =
        "is a whole number too large to read (more than 64 bits); write it in quotes if it is text";
    assert_eq!(
        found,
        [
            ("routes[0].rate_limit.per_second", 6, 30, too_large),
            ("routes[0].max_body", 7, 15, too_large),
            (
                "routes[0].dispatch[0].colour",
                8,
                49,
                "unknown key `colour`; expected one of `repo`, `event_type`, `client_payload`, `workflow`, `ref`, `inputs`"
            ),
        ]
    );
}

#[test]
fn a_key_written_twice_is_placed_at_its_second_writing() {
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: e\n        repo: acme/site\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].column), (9, 9), "{errors:?}");
    assert_eq!(
        errors[0].message,
        "`repo` is written twice in this map (first at line 7); YAML keeps one value per key, so remove one"
    );
}

#[test]
fn a_quote_never_closed_is_placed_where_it_opens() {
    let errors = load_err("github:\n  token: \"abc\nroutes: []\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].column), (2, 10), "{errors:?}");
    assert!(errors[0].message.contains("never closed"), "{errors:?}");
}

#[test]
fn a_control_character_is_placed_at_its_line_and_column_and_named() {
    let cases = [
        (
            "github:\n  token: t\nroutes:\n  - id: a\u{0}b\n",
            (4, 10),
            "U+0000",
        ),
        ("github:\n  token: t\u{7f}\nroutes: []\n", (2, 11), "U+007F"),
        // Columns count characters, not bytes.
        ("github:\n  token: é\u{80}\nroutes: []\n", (2, 11), "U+0080"),
    ];
    for (text, place, named) in cases {
        let errors = load_err(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].column), place, "{errors:?}");
        assert!(
            errors[0]
                .message
                .starts_with(&format!("the character {named} is a control character")),
            "{errors:?}"
        );
    }
}

#[test]
fn aliases_that_expand_beyond_the_parsers_limit_are_refused_saying_so() {
    let mut text = "a: &a [x, x, x, x, x, x, x, x, x]\n".to_owned();
    for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        let aliases = vec![format!("*{previous}"); 9].join(", ");
        text.push_str(&format!("{name}: &{name} [{aliases}]\n"));
    }
    let errors = load_err(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .message
            .starts_with("the file's aliases (`*name`) repeat"),
        "{errors:?}"
    );
}

#[test]
fn a_key_where_no_key_can_be_says_why() {
    let indented = "github:\n  token: t\nroutes:\n  - id: a\n    verify: none\n    dispatch:\n      - repo: acme/site\n\n         event_type: e\n";
    let errors = load_err(indented);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].column), (9, 20), "{errors:?}");
    assert!(
        errors[0]
            .message
            .ends_with("this line is indented deeper than line 7, so it reads as the rest of that line's value: line its key up with the key it belongs beside"),
        "{errors:?}"
    );
    let colon_in_value = "github:\n  token: t\nroutes:\n  - id: a\n    verify: none\n    dispatch:\n      - repo: acme/site\n        event_type: Deploy: done\n";
    let errors = load_err(colon_in_value);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .message
            .ends_with("a value that holds `: ` must be quoted, as in \"Deploy: done\""),
        "{errors:?}"
    );
}

#[test]
fn a_route_without_an_id_is_still_checked() {
    let text = "github:\n  token: t\nroutes:\n  - verify: none\n    when: body.tags | lenght\n    dispatch: [{repo: acme/blog, event_type: e}]\n";
    let paths: Vec<(String, String)> = load_err(text)
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert_eq!(paths[0].0, "routes[0]");
    assert!(paths[0].1.starts_with("missing key `id`"), "{paths:?}");
    assert_eq!(paths[1].0, "routes[0].when");
    assert!(paths[1].1.contains("did you mean `length`?"), "{paths:?}");
}

#[test]
fn sns_is_read_only_on_sns_routes() {
    let errors = load_err(&with_route(
        "        client_payload: {topic: \"{{ sns.TopicArn }}\"}\n",
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].dispatch[0].client_payload.topic");
    assert!(
        errors[0]
            .message
            .contains("`sns` is set only on routes with `verify: sns`"),
        "{errors:?}"
    );
    // The same template, checked first on an `sns` route, is refused on
    // the next route too, though it is compiled once.
    let text = "github:\n  token: t\nroutes:\n  - id: s\n    verify: {sns: {topic_arns: ['arn:aws:sns:eu-west-1:123456789012:uploads']}}\n    dispatch: [{repo: acme/blog, event_type: \"{{ sns.Subject }}\"}]\n  - id: n\n    verify: none\n    dispatch: [{repo: acme/blog, event_type: \"{{ sns.Subject }}\"}]\n";
    let paths: Vec<String> = load_err(text).into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["routes[1].dispatch[0].event_type"]);
}

/// The warnings of a file made by [`with_route`], but the one every such
/// file gets (its route is unauthenticated), as (path, message).
fn payload_warnings(loaded: &Loaded) -> Vec<(String, String)> {
    loaded
        .warnings
        .iter()
        .filter(|w| w.path != "routes[0].verify")
        .map(|w| (w.path.clone(), w.message.clone()))
        .collect()
}

#[test]
fn a_shell_variable_without_braces_is_warned_about() {
    let loaded = load_ok(&with_route(
        "        client_payload: {stage: deploy-$STAGE}\n",
    ));
    let warnings = payload_warnings(&loaded);
    assert_eq!(
        warnings,
        [(
            "routes[0].dispatch[0].client_payload.stage".to_owned(),
            "`$STAGE` is sent as written; a variable is substituted only when written `${STAGE}`"
                .to_owned()
        )]
    );
}

#[test]
fn a_number_written_otherwise_than_in_decimal_is_warned_about() {
    let loaded = load_ok(&with_route(
        "        client_payload: {a: 0x10, b: +5, c: 0o17, d: 0b11, e: 12, f: \"0x10\", g: 010, h: -3, i: 1.5, j: !!str 0x10}\n",
    ));
    let warnings = payload_warnings(&loaded);
    let message = "is a number written in hexadecimal, octal or binary, or with a `+`, which YAML reads as its decimal value and the relay uses so; write the number in decimal, or the text in quotes to keep it as written";
    let prefix = "routes[0].dispatch[0].client_payload";
    let expected: Vec<(String, String)> = ["a", "b", "c", "d"]
        .iter()
        .map(|key| (format!("{prefix}.{key}"), message.to_owned()))
        .collect();
    assert_eq!(warnings, expected);
    // A numeric setting means the number, however written; a payload key
    // of the same name is still text.
    let text = with_route("        client_payload: {max_attempts: 0x10}\n")
        + "retry:\n  max_attempts: 0x10\nserver:\n  max_body: 0o200000\n";
    let loaded = load_ok(&text);
    assert_eq!(loaded.config.retry.max_attempts, 16);
    assert_eq!(loaded.config.server.max_body, 65_536);
    let paths: Vec<&str> = loaded
        .warnings
        .iter()
        .filter(|w| w.message.contains("hexadecimal"))
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(paths, ["routes[0].dispatch[0].client_payload.max_attempts"]);
    // A text field reads the number too, and is warned about at its place.
    let text = with_route("").replace("event_type: e", "event_type: 0x10");
    let loaded = load_ok(&text);
    let warning = loaded
        .warnings
        .iter()
        .find(|w| w.path == "routes[0].dispatch[0].event_type")
        .expect("a warning on event_type");
    assert_eq!((warning.line, warning.column), (8, 21));
    // Nothing of the value is quoted: a secret can be written so.
    assert!(!warning.message.contains("16"), "{warning:?}");
    let secret = with_route("").replace("token: t", "token: 0x5f3a9c");
    let printed = match load("routes.yaml", &secret, &env) {
        Ok(_) => panic!("a token must be text"),
        Err(errors) => errors.to_string(),
    };
    assert!(
        printed.contains("warning: github.token: is a number"),
        "{printed}"
    );
    assert!(
        !printed.contains("5f3a9c") && !printed.contains("6240924"),
        "{printed}"
    );
}

#[test]
fn warnings_are_printed_with_the_errors_in_file_order() {
    let text = "github:\n  token: t\nroutes:\n  - id: a\n    verify: none\n    dispatch: [{repo: acme/blog, event_type: e, colour: red}]\n";
    let printed = match load("routes.yaml", text, &env) {
        Ok(_) => panic!("expected errors"),
        Err(errors) => errors.to_string(),
    };
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert!(
        lines[0].starts_with("routes.yaml:5:13: warning: routes[0].verify: "),
        "{printed}"
    );
    assert!(
        lines[1].starts_with("routes.yaml:6:49: routes[0].dispatch[0].colour: unknown key"),
        "{printed}"
    );
}

/// Values nested deeper than the YAML library reads are refused where the
/// first too deep one opens, the same place and words whichever part finds
/// them, and before the library scans the rest: a file of nothing but
/// brackets used to take time growing with the square of its length.
#[test]
fn values_nested_too_deep_are_refused_where_they_open_without_reading_the_rest() {
    let nested = |depth: usize, tail: usize| {
        format!(
            "github:\n  token: x\nroutes: {}{}\n",
            "[".repeat(depth),
            "]".repeat(tail)
        )
    };
    let too_deep_at = |errors: &[ConfigError], column: usize| {
        errors.len() == 1
            && errors[0].message == "values are nested here deeper than the parser allows"
            && (errors[0].line, errors[0].column) == (3, column)
    };
    // The root map and 128 lists: one level more than the library reads.
    assert!(too_deep_at(&load_err(&nested(128, 128)), 136));
    assert!(too_deep_at(&load_err(&nested(255, 255)), 136));
    // Deeper still, the scanner that looks first stops at its own limit.
    assert!(too_deep_at(&load_err(&nested(200_000, 200_000)), 264));
    assert!(
        too_deep_at(&load_err(&nested(200_000, 0)), 264),
        "never closed"
    );
    // One level less is read, and refused for what it holds.
    let errors = load_err(&nested(127, 127));
    assert!(
        errors.iter().all(|e| !e.message.contains("nested")),
        "{errors:?}"
    );
}

/// A map that lacks several keys it needs is told all of them at once,
/// not one per run of `check`; a key misspelt is not also missing.
#[test]
fn every_key_a_map_lacks_is_reported_at_once() {
    let text = "github:\n  token: x\nroutes:\n  - id: a\n    verify:\n      hmac: {}\n    dispatch: [{}]\n  - id: b\n    verify:\n      token: {}\n    dispatch: [{repo: acme/a, event_type: e}]\n  - id: c\n    verify:\n      basic: {}\n    dispatch: [{repo: acme/a, event_type: e}]\n  - id: d\n    verify:\n      hmac: {headr: x, secret: y}\n    dispatch: [{rep: acme/a, event_type: e}]\n";
    let found: Vec<(String, String)> = load_err(text)
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect();
    let expected = [
        ("routes[0].verify.hmac", "missing key `header`"),
        ("routes[0].verify.hmac", "needs `secret` or `secrets`"),
        ("routes[0].dispatch[0]", "missing key `repo`"),
        (
            "routes[0].dispatch[0]",
            "needs `event_type` (repository_dispatch) or `workflow` and `ref` (workflow_dispatch)",
        ),
        ("routes[1].verify.token", "missing key `header`"),
        ("routes[1].verify.token", "needs `value` or `values`"),
        ("routes[2].verify.basic", "missing key `username`"),
        ("routes[2].verify.basic", "needs `password` or `passwords`"),
        (
            "routes[3].verify.hmac.headr",
            "unknown key `headr`; did you mean `header`?",
        ),
        (
            "routes[3].dispatch[0].rep",
            "unknown key `rep`; did you mean `repo`?",
        ),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(path, message)| (path.to_string(), message.to_string()))
        .collect();
    assert_eq!(found, expected);
}

/// A number or a boolean written where text belongs is told to be quoted,
/// without the value, which may be a secret.
#[test]
fn a_number_where_text_belongs_is_told_to_be_quoted() {
    let text = "github:\n  token: x\nroutes:\n  - id: c\n    verify:\n      basic: {username: 2.5, password: 12345}\n    dispatch: [{repo: acme/a, event_type: e}]\n  - id: d\n    verify:\n      hmac: {header: true, secret: s}\n    dispatch: [{repo: acme/a, event_type: e}]\n";
    let found: Vec<(String, String)> = load_err(text)
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect();
    let quote = |found: &str, read_as: &str| {
        format!(
            "invalid type: {found}, expected a string; YAML reads the value as {read_as} because it is not in quotes: write it in quotes to give it as text"
        )
    };
    assert_eq!(
        found,
        [
            (
                "routes[0].verify.basic.username".to_owned(),
                quote("a floating point", "a number")
            ),
            (
                "routes[0].verify.basic.password".to_owned(),
                quote("an integer", "a number")
            ),
            (
                "routes[1].verify.hmac.header".to_owned(),
                quote("a boolean", "a boolean")
            ),
        ]
    );
    assert!(!format!("{found:?}").contains("12345"));
}

/// A quote left open in the middle of the file is closed by the next
/// quote YAML finds, and the file fails a line or two later; the error is
/// placed at the quote left open. A value quoted over two lines on purpose
/// is not blamed for an error further on.
#[test]
fn a_quote_left_open_mid_file_is_placed_where_it_opens() {
    let text = "github:\n  token: x\nroutes:\n  - id: a\n    verify:\n      hmac:\n        secret: s\n        header: X-Sig\n        prefix: \"sha256=\n    dispatch:\n      - repo: acme/a\n        event_type: \"deploy\"\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].column), (9, 17));
    assert!(
        errors[0]
            .message
            .starts_with("the quoted value that starts here is not closed on its line, so YAML reads it on to the next quote, at line 12"),
        "{}",
        errors[0].message
    );
    // The first value of a list item, too.
    let text = "github:\n  token: x\nroutes:\n  - id: a\n    verify: none\n    dispatch:\n      - repo: \"acme/blog\n        event_type: \"deploy\"\n";
    let errors = load_err(text);
    assert_eq!((errors[0].line, errors[0].column), (7, 15), "{errors:?}");
    assert!(
        errors[0]
            .message
            .starts_with("the quoted value that starts here")
    );
    // Quoted over two lines on purpose, with a fault after it: the fault
    // is reported where it is, whether on the next line or further on.
    for text in [
        "github:\n  token: x\nroutes:\n  - id: a\n    verify: none\n    dispatch:\n      - repo: acme/a\n        event_type: 'multi\n          line'\n      - repo: acme/b\n        event_type: x: y\n",
        "github:\n  token: x\nroutes:\n  - id: a\n    verify: none\n    when: \"body.a == 1 and\n      body.b == 2\"\n   dispatch:\n      - repo: acme/blog\n        event_type: deploy\n",
    ] {
        let errors = load_err(text);
        assert!(!errors[0].message.contains("quoted value"), "{errors:?}");
        assert!(errors[0].line >= 8, "{errors:?}");
    }
    // A quote in a block scalar is text.
    let text = "github:\n  token: x\nroutes:\n  - id: a\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n        client_payload:\n          notes: |\n            \"Deploy the site\n            now\", said the CMS.\n         bad: x\n";
    let errors = load_err(text);
    assert_eq!(errors[0].line, 13, "{errors:?}");
    assert!(!errors[0].message.contains("quoted value"), "{errors:?}");
}

#[test]
fn a_variable_in_a_route_id_is_warned_about_as_public() {
    let text = "github:\n  token: t\nroutes:\n  - id: \"raw/${PATH_TOKEN}\"\n    verify: none\n    dispatch:\n      - repo: acme/a\n        event_type: deploy\n";
    let env = |name: &str| (name == "PATH_TOKEN").then(|| "hush-hush".to_owned());
    let loaded = load("routes.yaml", text, &env).unwrap();
    let id_warnings: Vec<_> = loaded
        .warnings
        .iter()
        .filter(|w| w.path == "routes[0].id")
        .collect();
    assert_eq!(id_warnings.len(), 1, "{:?}", loaded.warnings);
    let message = &id_warnings[0].message;
    assert!(message.starts_with("a route id is public"), "{message}");
    assert!(message.contains("`${PATH_TOKEN}`"), "{message}");
    assert!(!message.contains("hush-hush"), "{message}");
    assert_eq!(loaded.config.routes[0].id, "raw/hush-hush");
    // A route id written out in full is not.
    let plain = load_ok(&text.replace("raw/${PATH_TOKEN}", "raw/plain")).warnings;
    assert!(plain.iter().all(|w| w.path != "routes[0].id"), "{plain:?}");
}
