//! Table-driven tests of planning dispatches, the limits and dedupe keys.

use serde_json::{Value, json};

use super::*;
use crate::config::{self, Config};

fn config(routes: &str) -> Config {
    let text = format!("github:\n  token: t\nroutes:\n{routes}");
    match config::load("routes.yaml", &text, &|_| None) {
        Ok(loaded) => loaded.config,
        Err(errors) => panic!("{errors}"),
    }
}

fn ctx(body: Value) -> Context {
    Context {
        body,
        headers: [("x-github-delivery".to_owned(), "gh-1".to_owned())].into(),
        route: "r".to_owned(),
        delivery_id: "d-1".to_owned(),
        received_at: "2026-01-01T00:00:00Z".to_owned(),
        ..Context::default()
    }
}

const ROUTES: &str = r#"
  - id: r
    verify: {github: {secret: s}}
    when: body.event == "publish"
    allowed_repos: ["acme/site-*"]
    dispatch:
      - repo: acme/blog
        event_type: "cms-{{ body.model }}"
        client_payload:
          model: "{{ body.model }}"
          entry: "{{ body.entry }}"
          fixed: false
      - repo: "acme/site-{{ body.locale }}"
        workflow: "{{ body.workflow | default('deploy.yml') }}"
        ref: main
        inputs:
          count: "{{ body.count }}"
          flag: "{{ body.flag }}"
          name: "n-{{ body.model }}"
          missing: "{{ body.nope }}"
"#;

#[test]
fn plans_every_target_in_order() {
    let config = config(ROUTES);
    let route = &config.routes[0];
    let body = json!({
        "event": "publish", "model": "post", "entry": {"id": 1},
        "locale": "fr", "count": 3, "flag": true, "workflow": "my flow.yml",
    });
    let Plan::Dispatch(targets) = plan(route, &ctx(body)).unwrap() else {
        panic!("expected a dispatch");
    };
    assert_eq!(targets.len(), 2);
    let first = &targets[0];
    assert_eq!((first.target_index, first.repo.as_str()), (0, "acme/blog"));
    assert_eq!(first.request.method(), "POST");
    assert_eq!(
        first.request.path(&first.repo),
        "/repos/acme/blog/dispatches"
    );
    assert_eq!(first.request.label(), "cms-post");
    assert_eq!(
        first.request.body(),
        json!({"event_type": "cms-post", "client_payload": {"model": "post", "entry": {"id": 1}, "fixed": false}})
    );
    let second = &targets[1];
    assert_eq!(
        (second.target_index, second.repo.as_str()),
        (1, "acme/site-fr")
    );
    assert_eq!(
        second.request.path(&second.repo),
        "/repos/acme/site-fr/actions/workflows/my%20flow.yml/dispatches"
    );
    assert_eq!(second.request.label(), "my flow.yml");
    assert_eq!(
        second.request.body(),
        json!({"ref": "main", "inputs": {"count": "3", "flag": "true", "name": "n-post"}}),
        "an input whose value is missing is left out, for the workflow's default"
    );
}

#[test]
fn workflow_inputs_and_names_are_held_to_githubs_rules() {
    // A lone expression that is undefined is no inputs at all.
    assert_eq!(check_inputs(Value::Null).unwrap(), Map::new());
    let big = "x".repeat(MAX_WORKFLOW_INPUTS_CHARS);
    assert!(matches!(
        check_inputs(json!({"data": big})),
        Err(LimitError::InputsTooLarge { .. })
    ));
    // Inputs left out for being null are not counted against the 25.
    let mut many: Map<String, Value> = (0..25).map(|i| (format!("i{i}"), json!("v"))).collect();
    many.insert("unset".into(), Value::Null);
    assert_eq!(check_inputs(Value::Object(many)).unwrap().len(), 25);
    let fits = "x".repeat(MAX_WORKFLOW_INPUTS_CHARS - 20);
    assert!(check_inputs(json!({"data": fits})).is_ok());
    assert!(matches!(
        check_inputs(json!(["a"])),
        Err(LimitError::NotAnObject { .. })
    ));
    for bad in [
        ".",
        "..",
        ".github/workflows/ci/deploy.yml",
        "ci/deploy.yml",
        // GitHub keeps workflows only as YAML files, or names them by id.
        "deploy",
        "deploy.yml.bak",
        "12a",
    ] {
        assert!(matches!(
            check_workflow(bad),
            Err(LimitError::BadWorkflow { .. })
        ));
    }
    assert!(matches!(check_workflow(""), Err(LimitError::Empty)));
    let path = check_workflow("ci/deploy.yml").unwrap_err();
    assert!(path.reason().starts_with("is a path"), "{}", path.reason());
    // Written with its folder, a workflow is named by its file name.
    assert_eq!(workflow_file(".github/workflows/deploy.yml"), "deploy.yml");
    assert_eq!(workflow_file("deploy.yml"), "deploy.yml");
    assert!(check_workflow(workflow_file(".github/workflows/deploy.yml")).is_ok());
    for good in [
        "main",
        "release/1.10",
        "v2.0.0",
        "refs/heads/main",
        "0123abc",
        "feature/x.y",
        "v1.lockstep",
    ] {
        assert_eq!(check_ref(good), Ok(()), "{good}");
    }
    for bad in [
        "main\n",
        "my branch",
        "a..b",
        "a~1",
        "x^",
        "a:b",
        "what?",
        "re*",
        "[x",
        "a\\b",
        "/main",
        "main/",
        "-x",
        ".hidden",
        "x.lock",
        "a@{1}",
        "a//b",
        "@",
        "end.",
        "feature/.hidden",
        "foo.lock/bar",
        "a/./b",
    ] {
        assert!(
            matches!(check_ref(bad), Err(LimitError::BadRef { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(check_ref(""), Err(LimitError::Empty)));
    assert_eq!(check_workflow("deploy.yml"), Ok(()));
    assert_eq!(check_workflow("161335"), Ok(()));
}

#[test]
fn when_decides_whether_to_dispatch() {
    let config = config(ROUTES);
    let route = &config.routes[0];
    let cases = [
        (
            json!({"event": "publish", "model": "post", "locale": "fr"}),
            true,
        ),
        (
            json!({"event": "unpublish", "model": "post", "locale": "fr"}),
            false,
        ),
        (json!({}), false),
    ];
    for (body, dispatches) in cases {
        let planned = plan(route, &ctx(body.clone())).unwrap();
        assert_eq!(matches!(planned, Plan::Dispatch(_)), dispatches, "{body}");
    }
}

#[test]
fn a_missing_value_never_sends_a_dispatch_somewhere_else() {
    let config = config(ROUTES);
    let route = &config.routes[0];
    // Without `locale`, `acme/site-{{ body.locale }}` would be `acme/site-`,
    // which `acme/site-*` admits; without `model`, the event type `cms-`.
    for (body, field) in [
        (json!({"event": "publish", "model": "post"}), "repo"),
        (json!({"event": "publish", "locale": "fr"}), "event_type"),
        // A default stands in for a missing field...
        (
            json!({"event": "publish", "model": "post", "locale": "fr"}),
            "",
        ),
        // ...not for a null one, which is no workflow either.
        (
            json!({"event": "publish", "model": "post", "locale": "fr", "workflow": null}),
            "workflow",
        ),
    ] {
        match (plan(route, &ctx(body.clone())), field) {
            (Ok(Plan::Dispatch(_)), "") => {}
            (
                Err(RoutingError::Render {
                    field: got, error, ..
                }),
                field,
            ) => {
                assert_eq!(got.to_string(), field, "{body}");
                assert!(error.detail.contains("does not have"), "{error}");
            }
            (other, field) => panic!("{body}: {field}: {other:?}"),
        }
    }
}

#[test]
fn workflow_body_omits_empty_inputs() {
    let request = DispatchRequest::Workflow {
        workflow: "deploy.yml".to_owned(),
        git_ref: "main".to_owned(),
        inputs: Map::new(),
    };
    assert_eq!(request.body(), json!({"ref": "main"}));
}

#[test]
fn stored_body_text_is_the_serialized_body() {
    let payload = json!({"z": [1, {"b": "\"q\""}], "a": null, "m": "é"});
    let Value::Object(payload) = payload else {
        unreachable!()
    };
    let requests = [
        DispatchRequest::Repository {
            event_type: "cms-article".to_owned(),
            client_payload: payload.clone(),
        },
        DispatchRequest::Repository {
            event_type: "empty".to_owned(),
            client_payload: Map::new(),
        },
        DispatchRequest::Workflow {
            workflow: "deploy.yml".to_owned(),
            git_ref: "main".to_owned(),
            inputs: Map::new(),
        },
        DispatchRequest::Workflow {
            workflow: "deploy.yml".to_owned(),
            git_ref: "v1".to_owned(),
            inputs: payload,
        },
    ];
    for request in requests {
        assert_eq!(
            request.body_json(),
            request.body().to_string(),
            "{request:?}"
        );
        assert!(request.body().is_object(), "{request:?}");
    }
}

#[test]
fn rendered_limits_fail_the_whole_plan() {
    let routes = r#"
  - id: r
    verify: none
    allowed_repos: ["acme/*"]
    dispatch:
      - repo: acme/ok
        event_type: ok
      - repo: "{{ body.repo }}"
        event_type: "{{ body.event_type }}"
        client_payload: "{{ body.payload }}"
      - repo: acme/wf
        workflow: w.yml
        ref: "{{ body.ref }}"
        inputs: "{{ body.inputs }}"
"#;
    let config = config(routes);
    let route = &config.routes[0];
    let good =
        json!({"repo": "acme/x", "event_type": "e", "payload": {}, "ref": "main", "inputs": {}});
    assert!(matches!(plan(route, &ctx(good.clone())), Ok(Plan::Dispatch(t)) if t.len() == 3));

    let eleven: Map<String, Value> = (0..11).map(|i| (format!("k{i}"), json!(i))).collect();
    let twenty_six: Map<String, Value> = (0..26).map(|i| (format!("i{i}"), json!("x"))).collect();
    let long_name = format!("acme/{}", "-".repeat(101));
    let long_name_refused = format!("target 1: repo `{long_name}` is not a repository name");
    let long_owner = format!("{}/x", "a".repeat(40));
    let long_owner_refused = format!("target 1: repo `{long_owner}` is not a repository name");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "repo",
            json!("other/x"),
            "target 1: repo `other/x` is not in the route's allowed_repos (acme/*)",
        ),
        (
            "repo",
            json!("acme/x/y"),
            "target 1: repo `acme/x/y` is not a repository name",
        ),
        (
            "repo",
            json!("acme/a b"),
            "target 1: repo `acme/a b` is not a repository name",
        ),
        // GitHub's longest names: 39 characters for the owner, 100 for the
        // repository.
        ("repo", json!(long_name), &long_name_refused),
        ("repo", json!(long_owner), &long_owner_refused),
        (
            "event_type",
            json!("x".repeat(101)),
            "target 1: event_type is 101 characters long; GitHub accepts at most 100",
        ),
        ("event_type", json!(""), "target 1: event_type is empty"),
        (
            "event_type",
            json!("cms-post\n"),
            r#"target 1: event_type is "cms-post\n", which begins or ends with whitespace"#,
        ),
        (
            "event_type",
            json!(" deploy"),
            r#"target 1: event_type is " deploy", which begins or ends"#,
        ),
        (
            "payload",
            Value::Object(eleven),
            "target 1: client_payload has 11 top-level properties; GitHub accepts at most 10",
        ),
        (
            "payload",
            json!({"big": "x".repeat(65_536)}),
            "target 1: client_payload is 65546 bytes as JSON; GitHub accepts less than 65536",
        ),
        (
            "payload",
            json!([1]),
            "target 1: client_payload must be an object, not a list",
        ),
        ("ref", json!(""), "target 2: ref is empty"),
        (
            "inputs",
            Value::Object(twenty_six),
            "target 2: inputs has 26 inputs; GitHub accepts at most 25",
        ),
        (
            "inputs",
            json!({"a": [1]}),
            "target 2: inputs input `a` is a list",
        ),
    ];
    for (field, value, expected) in cases {
        let mut body = good.clone();
        body[field] = value;
        let err = plan(route, &ctx(body)).unwrap_err();
        assert!(err.to_string().starts_with(expected), "{field}: {err}");
    }
    // A rendered repository is the sender's text: the refusal quotes its
    // start, not all of it.
    let mut body = good.clone();
    body["repo"] = json!(format!("acme/{}", "x".repeat(100_000)));
    let err = plan(route, &ctx(body)).unwrap_err().to_string();
    assert!(
        err.len() < 400 && err.contains("…` is not a repository name"),
        "{err}"
    );
}

#[test]
fn render_errors_name_the_target_and_field() {
    let routes = r#"
  - id: r
    verify: none
    dispatch:
      - repo: acme/a
        event_type: "{{ body.n + 'x' }}"
"#;
    let config = config(routes);
    let err = plan(&config.routes[0], &ctx(json!({"n": 1}))).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "target 0: event_type failed to render: routes[0].dispatch[0].event_type: invalid operation"
        ),
        "{err}"
    );
}

#[test]
fn dedupe_keys() {
    let routes = r#"
  - id: signed
    verify: {github: {secret: s}}
    dispatch: [{repo: acme/a, event_type: e}]
  - id: open
    verify: none
    dispatch: [{repo: acme/a, event_type: e}]
  - id: custom
    verify: none
    dedupe_key: "{{ body.id }}"
    dispatch: [{repo: acme/a, event_type: e}]
  - id: standard
    verify: {standard_webhooks: {secret: whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD}}
    dispatch: [{repo: acme/a, event_type: e}]
"#;
    let config = config(routes);
    let headers = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    // Route index, body, headers, expected key.
    type Case = (
        usize,
        Value,
        Vec<(&'static str, &'static str)>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            0,
            json!({}),
            vec![("x-github-delivery", "gh-1"), ("webhook-id", "w")],
            Some("gh-1"),
        ),
        (0, json!({}), vec![("webhook-id", "w")], Some("w")),
        (
            0,
            json!({}),
            vec![("x-amz-sns-message-id", "sns")],
            Some("sns"),
        ),
        (0, json!({}), vec![("x-request-id", "r")], None),
        (1, json!({}), vec![("x-github-delivery", "gh-1")], None),
        (
            2,
            json!({"id": 7}),
            vec![("x-github-delivery", "gh-1")],
            Some("7"),
        ),
        (2, json!({}), vec![], None),
        // Standard Webhooks signs its id: another id header added to a
        // replay does not make it new.
        (
            3,
            json!({}),
            vec![("x-github-delivery", "added"), ("webhook-id", "msg_1")],
            Some("msg_1"),
        ),
        (
            3,
            json!({}),
            vec![
                ("svix-signature", "v1,x"),
                ("svix-id", "msg_2"),
                ("webhook-id", "added"),
            ],
            Some("msg_2"),
        ),
        (3, json!({}), vec![("x-github-delivery", "added")], None),
    ];
    for (route, body, pairs, expected) in cases {
        let mut context = ctx(body);
        context.headers = headers(&pairs);
        let key = dedupe_key(&config.routes[route], &context).unwrap();
        assert_eq!(key.as_deref(), expected, "route {route} {pairs:?}");
    }
}

#[test]
fn repo_patterns() {
    let cases = [
        ("acme/*", "acme/blog", true),
        ("acme/*", "ACME/Blog", true),
        ("acme/*", "other/blog", false),
        ("acme/site-*", "acme/site-fr", true),
        ("acme/site-*", "acme/docs", false),
        ("*/blog", "anyone/blog", true),
        ("acme/blog", "acme/blog", true),
        ("acme/blog", "acme/blog2", false),
        ("acme*", "acme/blog", false),
    ];
    for (pattern, repo, expected) in cases {
        assert_eq!(repo_matches(pattern, repo), expected, "{pattern} {repo}");
    }
}

#[test]
fn repo_names() {
    let cases = [
        ("acme/blog", true),
        ("a-b_c.d/e.f-g_h", true),
        ("acme", false),
        ("acme/", false),
        ("/blog", false),
        ("acme/blog/x", false),
        ("acme/bl og", false),
        ("acme/..", false),
        ("acme/blog.git", false),
        ("acme/blog.GIT", false),
        ("acme.git/blog", true),
        ("acme/blog.github.io", true),
        ("acme/.github", true),
        ("acme/ブログ", false),
    ];
    for (repo, ok) in cases {
        assert_eq!(check_repo(repo).is_ok(), ok, "{repo}");
    }
    // A repository's URL, pasted from the browser, is named as one.
    for url in ["https://github.com/acme/blog", "github.com/acme/blog"] {
        let reason = check_repo(url).unwrap_err().reason();
        assert!(reason.ends_with("as `owner/name`, not its URL"), "{reason}");
    }
    let reason = check_repo("acme/blog.git").unwrap_err().reason();
    assert!(reason.contains("never end in `.git`"), "{reason}");
    let reason = check_repo("acme/github actions").unwrap_err().reason();
    assert!(reason.contains("expected `owner/name`"), "{reason}");
}

#[test]
fn limits_are_measured_on_the_json_github_receives() {
    // `{"k":"..."}` is 8 bytes around the text.
    let of_length = |n: usize| json!({"k": "x".repeat(n - 8)});
    assert!(check_client_payload(of_length(MAX_CLIENT_PAYLOAD_BYTES - 1)).is_ok());
    assert!(matches!(
        check_client_payload(of_length(MAX_CLIENT_PAYLOAD_BYTES)),
        Err(LimitError::PayloadTooLarge { bytes }) if bytes == MAX_CLIENT_PAYLOAD_BYTES
    ));
    // `é` is two bytes and one character; escapes count as written.
    let value = json!({"k": "é".repeat(100), "q": "\"\n\u{1}", "n": [1.5, null]});
    let text = serde_json::to_string(&value).unwrap();
    let length = JsonLength::of(&value);
    assert_eq!(length.bytes, text.len());
    assert_eq!(length.chars, text.chars().count());
    assert_ne!(length.bytes, length.chars);
}

#[test]
fn a_plan_with_its_key_reports_the_dispatchs_error_first() {
    let config = config(
        r#"
  - id: r
    verify: none
    when: body.go == true
    dedupe_key: "{{ body.kind + 1 }}"
    dispatch: [{repo: acme/a, event_type: "{{ body.event }}"}]
"#,
    );
    let route = &config.routes[0];
    // Body; the key; whether it plans a dispatch, a skip, or fails on the
    // key or on the target.
    let cases = [
        (json!({"go": false, "kind": "x"}), None, "skipped"),
        (
            json!({"go": true, "kind": 1, "event": "e"}),
            Some("2"),
            "dispatch",
        ),
        (json!({"go": true, "kind": "x", "event": "e"}), None, "key"),
        (json!({"go": true, "kind": "x"}), None, "target"),
        // The key of a webhook that cannot be sent is still given, so
        // that a repeat of one delivered already stays a duplicate.
        (json!({"go": true, "kind": 1}), Some("2"), "target"),
    ];
    for (body, expected_key, expected_plan) in cases {
        let (key, plan) = plan_with_key(route, &ctx(body.clone()));
        let plan = match plan {
            Ok(Plan::Skipped) => "skipped",
            Ok(Plan::Dispatch(_)) => "dispatch",
            Err(RoutingError::DedupeKey(_)) => "key",
            Err(RoutingError::Render { .. }) => "target",
            Err(e) => panic!("{body}: {e}"),
        };
        assert_eq!(
            (key.as_deref(), plan),
            (expected_key, expected_plan),
            "{body}"
        );
    }
}

/// A message about a value that a `${VAR}` helped make goes back to the
/// sender in the 422, and must not quote what the variable holds; a value
/// made only from the request is still quoted, which is what the sender
/// needs to see.
#[test]
fn a_limit_broken_by_a_value_a_variable_filled_in_does_not_quote_it() {
    let routes = r#"
  - id: r
    verify: none
    allowed_repos: ["acme/*"]
    dispatch:
      - repo: "{{ body.owner }}/${REPO_NAME}"
        event_type: "{{ body.kind }}-${EVENT_SUFFIX}"
      - repo: "{{ body.owner }}/plain"
        event_type: "{{ body.kind }}"
      - repo: acme/blog
        workflow: deploy.yml
        ref: "{{ body.branch }}${REF_SUFFIX}"
"#;
    let text = format!("github:\n  token: t\nroutes:\n{routes}");
    let env = |name: &str| match name {
        "REPO_NAME" => Some("sEcReT-repo".to_owned()),
        "EVENT_SUFFIX" => Some("sEcReT-event".to_owned()),
        "REF_SUFFIX" => Some("..sEcReT-ref".to_owned()),
        _ => None,
    };
    let config = config::load("routes.yaml", &text, &env).unwrap().config;
    let route = &config.routes[0];
    let plan_error = |body: Value| plan(route, &ctx(body)).unwrap_err().to_string();

    let cases = [
        (
            json!({"owner": "other", "kind": "k", "branch": "main"}),
            "target 0: repo is not in the route's allowed_repos (acme/*)",
        ),
        (
            json!({"owner": "acme", "kind": " ", "branch": "main"}),
            "target 0: event_type begins or ends with whitespace",
        ),
        (
            json!({"owner": "acme", "kind": "k", "branch": "main"}),
            "target 2: ref is not a branch or tag name",
        ),
    ];
    for (body, expected) in cases {
        let message = plan_error(body);
        assert!(message.starts_with(expected), "{message}");
        assert!(!message.contains("sEcReT"), "{message}");
    }

    // The same rules quote a value the request alone made.
    let plain = self::config(
        r#"
  - id: r
    verify: none
    allowed_repos: ["acme/*"]
    dispatch:
      - repo: "{{ body.owner }}/plain"
        event_type: "{{ body.kind }}"
"#,
    );
    let quoted = |body: Value| plan(&plain.routes[0], &ctx(body)).unwrap_err().to_string();
    assert!(
        quoted(json!({"owner": "other", "kind": "k"})).contains("`other/plain`"),
        "{}",
        quoted(json!({"owner": "other", "kind": "k"}))
    );
    assert!(quoted(json!({"owner": "acme", "kind": " "})).contains(r#"" ""#));
}

/// `allowed_repos` is quoted to the sender when a repository falls outside
/// it; a pattern a `${VAR}` filled in is quoted as written in the file, so
/// that the refusal says which patterns apply without what the variable
/// holds.
#[test]
fn allowed_repos_filled_in_by_a_variable_are_named_as_written() {
    let routes = r#"
  - id: r
    verify: none
    allowed_repos: ["acme/site-*", "${ORG}/*", "${ORG}-${TEAM}/x-*"]
    dispatch:
      - repo: "acme/{{ body.name }}"
        event_type: e
"#;
    let text = format!("github:\n  token: t\nroutes:\n{routes}");
    let env = |name: &str| match name {
        "ORG" => Some("sEcReT-org".to_owned()),
        "TEAM" => Some("sEcReT-team".to_owned()),
        _ => None,
    };
    let config = config::load("routes.yaml", &text, &env).unwrap().config;
    let route = &config.routes[0];
    let message = plan(route, &ctx(json!({"name": "other"})))
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "target 0: repo `acme/other` is not in the route's allowed_repos (acme/site-*, ${ORG}/*, ${ORG}-${TEAM}/x-*)"
    );
    // The patterns are still matched as filled in.
    assert!(plan(route, &ctx(json!({"name": "site-a"}))).is_ok());
    let filled = config::load(
        "routes.yaml",
        &text.replace("acme/{{ body.name }}", "sEcReT-org/{{ body.name }}"),
        &env,
    )
    .unwrap()
    .config;
    assert!(plan(&filled.routes[0], &ctx(json!({"name": "a"}))).is_ok());
}
