//! Table-driven tests of compiling and rendering templates.

use serde_json::{Value, json};

use super::*;

fn ctx() -> Context {
    Context {
        body: json!({
            "model": "post",
            "count": 3,
            "price": 1.5,
            "draft": false,
            "entry": {"id": 7, "tags": ["a", "b"]},
            "list": [1, 2],
            "nothing": null,
            "key": "a+b%20c%C3%A9",
        }),
        headers: [("x-event".to_owned(), "publish".to_owned())].into(),
        query: [("ref".to_owned(), "main".to_owned())].into(),
        route: "blog".to_owned(),
        delivery_id: "d-1".to_owned(),
        received_at: "2026-01-01T00:00:00Z".to_owned(),
        sns: None,
    }
}

#[test]
fn string_templates_render() {
    let cases = [
        ("plain", "plain"),
        ("cms-{{ body.model }}", "cms-post"),
        ("{{ headers['x-event'] }}/{{ query.ref }}", "publish/main"),
        ("{{ route }}:{{ delivery.id }}", "blog:d-1"),
        ("{{ delivery.received_at }}", "2026-01-01T00:00:00Z"),
        ("{{ body.key | urldecode }}", "a b cé"),
        ("{{ 'x%2By' | urldecode }}", "x+y"),
        ("{{ '%FF' | urldecode }}", "\u{FFFD}"),
        ("{{ 'a b&c/d' | urlencode }}", "a%20b%26c/d"),
        ("{{ body.entry | tojson }}", r#"{"id":7,"tags":["a","b"]}"#),
        ("[{{ body.missing }}]", "[]"),
        ("{% if body.draft %}d{% else %}p{% endif %}", "p"),
        ("line\n", "line\n"),
        ("{{ body.model }}\n", "post\n"),
    ];
    let mut builder = EngineBuilder::new();
    let compiled: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, (source, _))| builder.string(&format!("t{i}"), source).unwrap())
        .collect();
    builder.finish();
    for ((source, expected), template) in cases.iter().zip(&compiled) {
        assert_eq!(template.render(&ctx()).unwrap(), *expected, "{source}");
        assert_eq!(template.source(), *source);
    }
}

#[test]
fn the_python_methods_jinja2_templates_call_work() {
    let cases = [
        (
            "{% for k, v in body.entry.items() %}{{ k }}={{ v | tojson }};{% endfor %}",
            r#"id=7;tags=["a","b"];"#,
        ),
        ("{{ body.entry.keys() | join(',') }}", "id,tags"),
        ("{{ body.entry.values() | first }}", "7"),
        (
            "{{ body.entry.get('id') }}/{{ body.entry.get('no', 'x') }}",
            "7/x",
        ),
        ("{{ body.model.upper() }}{{ ' a '.strip() }}", "POSTa"),
        ("{{ body.model.replace('o', '0') }}", "p0st"),
        (
            "{{ body.model.startswith('po') }}-{{ body.model.endswith('x') }}",
            "True-False",
        ),
        ("{{ 'a,b'.split(',') | last }}", "b"),
        // Python's tuple of prefixes; a missing prefix matches nothing.
        (
            "{{ body.model.startswith(['x', 'po']) }}-{{ body.model.startswith(body.missing) }}",
            "True-False",
        ),
    ];
    let mut builder = EngineBuilder::new();
    let compiled: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, (source, _))| builder.string(&format!("m{i}"), source).unwrap())
        .collect();
    // A misspelt method is found at load, as an unknown filter is.
    let err = builder
        .string("u", "{{ body.model.startwith('p') }}")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no method `startwith`"), "{err}");
    // A method of a missing value is missing too: nothing in text, no key.
    let missing = builder.string("n", "[{{ body.missing.upper() }}]").unwrap();
    let key = builder
        .strict_string("k", "k-{{ body.missing.lower() }}")
        .unwrap();
    builder.finish();
    for ((source, expected), template) in cases.iter().zip(&compiled) {
        assert_eq!(template.render(&ctx()).unwrap(), *expected, "{source}");
    }
    assert_eq!(missing.render(&ctx()).unwrap(), "[]");
    assert_eq!(key.render_key(&ctx()).unwrap(), None);
}

#[test]
fn static_detection() {
    let cases = [
        ("deploy", Some("deploy")),
        ("a { b } $", Some("a { b } $")),
        ("{{ body.x }}", None),
        ("{% if body.x %}y{% endif %}", None),
        ("{# note #}x", None),
    ];
    let mut builder = EngineBuilder::new();
    for (source, expected) in cases {
        let template = builder.string("t", source).unwrap();
        assert_eq!(template.is_static(), expected, "{source}");
    }
}

#[test]
fn lone_expressions_are_recognised() {
    let cases = [
        ("{{ body }}", Some("body")),
        ("  {{body.x}}\n", Some("body.x")),
        ("{{- body -}}", Some("body")),
        ("{{ -5 }}", Some("-5")),
        ("{{ a }} and {{ b }}", None),
        ("x {{ a }}", None),
        ("{{ a }}x", None),
        ("{{ }}", None),
        ("plain", None),
        ("{{ a }}{{ b }}", None),
        ("{{ a }} {% if x %}{{ b }}", None),
        // Map literals and strings may hold braces of their own.
        (
            "{{ {'id': body.id, 'meta': {'v': body.v}} }}",
            Some("{'id': body.id, 'meta': {'v': body.v}}"),
        ),
        ("{{ '}}' ~ body.x }}", Some("'}}' ~ body.x")),
        ("{{ \"a\\\"}}\" }}", Some("\"a\\\"}}\"")),
    ];
    for (source, expected) in cases {
        assert_eq!(lone_expression(source), expected, "{source}");
    }
}

#[test]
fn typed_rendering_keeps_json_types() {
    let cases: Vec<(Value, Value)> = vec![
        (json!("{{ body.count }}"), json!(3)),
        (json!("{{ body.price }}"), json!(1.5)),
        (json!("{{ body.draft }}"), json!(false)),
        (
            json!("{{ body.entry }}"),
            json!({"id": 7, "tags": ["a", "b"]}),
        ),
        (json!("{{ body.list }}"), json!([1, 2])),
        (json!("{{ body.nothing }}"), Value::Null),
        (json!("{{ body.missing }}"), Value::Null),
        (json!("{{ body.model }}"), json!("post")),
        (json!("n={{ body.count }}"), json!("n=3")),
        (json!("{{ body.count }} {{ body.count }}"), json!("3 3")),
        (json!(" {{ body.count + 1 }} "), json!(4)),
        (
            json!("{{ {'id': body.entry.id, 'meta': {'n': body.count}} }}"),
            json!({"id": 7, "meta": {"n": 3}}),
        ),
        (json!(false), json!(false)),
        (json!(12), json!(12)),
        (json!(null), Value::Null),
        (
            json!({"a": ["{{ body.count }}", "x{{ body.count }}", true], "b": {"c": "{{ body.entry.id }}"}}),
            json!({"a": [3, "x3", true], "b": {"c": 7}}),
        ),
    ];
    let mut builder = EngineBuilder::new();
    let compiled: Vec<_> = cases
        .iter()
        .map(|(source, _)| builder.value("payload", source).unwrap())
        .collect();
    builder.finish();
    for ((source, expected), template) in cases.iter().zip(&compiled) {
        assert_eq!(&template.render(&ctx()).unwrap(), expected, "{source}");
    }
}

#[test]
fn static_values_and_key_counts() {
    let mut builder = EngineBuilder::new();
    let fixed = builder.value("a", &json!({"a": 1, "b": ["x"]})).unwrap();
    let templated = builder.value("b", &json!({"a": "{{ body }}"})).unwrap();
    let whole = builder.value("c", &json!("{{ body }}")).unwrap();
    builder.finish();
    assert_eq!(fixed.static_value(), Some(json!({"a": 1, "b": ["x"]})));
    assert_eq!(fixed.top_level_keys(), Some(2));
    assert_eq!(templated.static_value(), None);
    assert_eq!(templated.top_level_keys(), Some(1));
    assert_eq!(whole.top_level_keys(), None);
    assert_eq!(whole.render(&ctx()).unwrap(), ctx().body);
}

#[test]
fn conditions_use_jinja_truthiness() {
    let cases = [
        ("body.model == 'post'", true),
        ("body.model in ['page', 'post']", true),
        ("body.count > 5", false),
        ("body.missing", false),
        ("body.list", true),
        ("body.nothing", false),
        (
            "headers['x-event'] == 'publish' and query.ref == 'main'",
            true,
        ),
        ("not body.draft", true),
    ];
    let mut builder = EngineBuilder::new();
    let compiled: Vec<_> = cases
        .iter()
        .map(|(source, _)| builder.condition("when", source).unwrap())
        .collect();
    builder.finish();
    for ((source, expected), condition) in cases.iter().zip(&compiled) {
        assert_eq!(condition.eval(&ctx()).unwrap(), *expected, "{source}");
    }
}

#[test]
fn compile_errors_are_reported_with_their_place() {
    let mut builder = EngineBuilder::new();
    let err = builder.string("t", "{{ body.x ").unwrap_err();
    assert!(matches!(err, TemplateError::Template { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("invalid template: syntax error"),
        "{err}"
    );

    let err = builder.condition("when", "body.x ==").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid expression: syntax error"),
        "{err}"
    );

    let err = builder.condition("when", "a) %}{% set b = (1").unwrap_err();
    assert!(matches!(err, TemplateError::Expression { .. }), "{err}");

    let errors = builder
        .value(
            "p",
            &json!({"ok": "{{ body.x }}", "bad": ["{{ body.x + }}", "{% if %}"]}),
        )
        .unwrap_err();
    let places: Vec<_> = errors.iter().map(|e| e.at().to_vec()).collect();
    assert_eq!(
        places,
        vec![
            vec![PathSegment::Key("bad".into()), PathSegment::Index(0)],
            vec![PathSegment::Key("bad".into()), PathSegment::Index(1)],
        ]
    );
}

#[test]
fn render_errors_name_the_template() {
    let mut builder = EngineBuilder::new();
    let text = builder
        .string("routes[0].dispatch[0].event_type", "{{ body.model + 1 }}")
        .unwrap();
    // A type error behind a branch the empty request does not take is only
    // found when rendering.
    let unknown = builder
        .string("u", "{% if body.model %}{{ body.model + 1 }}{% endif %}")
        .unwrap();
    let value = builder
        .value(
            "routes[0].dispatch[0].client_payload",
            &json!({"n": "{{ body.model * body.entry }}"}),
        )
        .unwrap();
    builder.finish();
    let err = text.render(&ctx()).unwrap_err();
    assert_eq!(err.name, "routes[0].dispatch[0].event_type");
    assert!(
        err.to_string()
            .starts_with("routes[0].dispatch[0].event_type: invalid operation"),
        "{err}"
    );
    let err = value.render(&ctx()).unwrap_err();
    assert_eq!(err.name, "routes[0].dispatch[0].client_payload.n");
    let err = unknown.render(&ctx()).unwrap_err();
    assert_eq!(err.name, "u");
    assert!(err.to_string().contains("invalid operation"), "{err}");
}

#[test]
fn a_prepared_context_renders_the_same() {
    let mut builder = EngineBuilder::new();
    let template = builder.string("t", "{{ body.model }}-{{ route }}").unwrap();
    builder.finish();
    let context = ctx();
    let prepared = context.prepare();
    assert_eq!(template.render_prepared(&prepared).unwrap(), "post-blog");
}

#[test]
fn direct_evaluation_gives_what_the_engine_gives() {
    let mut with_sns = ctx();
    with_sns.sns = Some(json!({"TopicArn": "arn:aws:sns:eu-west-1:1:t"}));
    with_sns.body = json!("not a map");
    let contexts = [ctx(), with_sns, Context::default()];
    // (source, whether it is simple enough to skip the engine)
    let strings = [
        ("{{ body.model }}", true),
        ("cms-{{ body.model }}-{{ body.count }}", true),
        (
            "{{ body.draft }}/{{ body.nothing }}/{{ body.missing }}",
            true,
        ),
        ("{{ body.entry.id }}", true),
        ("{{ body.entry.missing }}", true),
        ("{{ body.missing.deeper }}", true),
        ("{{ body.model.deeper }}", true),
        ("{{ body.price }} {{ body.list }} {{ body.entry }}", true),
        (
            "{{ headers[\"x-event\"] }}:{{ headers['x-missing'] }}",
            true,
        ),
        (
            "{{ query.ref }} {{ route }} {{ delivery.id }} {{ delivery.received_at }}",
            true,
        ),
        ("{{ delivery.other }} {{ delivery }} {{ headers }}", true),
        ("{{body.model}} }} {", true),
        (
            "{{ body.items }}|{{ body.keys }}|{{ body.none }}|{{ body.true }}",
            true,
        ),
        ("{{ sns.TopicArn }}", false),
        ("{{ body.model | upper }}", false),
        ("{{- body.model }}", false),
        ("{% if body.draft %}d{% endif %}", false),
        ("{{ body.list.0 }}", false),
        (
            "{{ body.entry.tags | join(',') }} {{ body.entry | tojson }}",
            false,
        ),
        ("{{ body.missing.deeper | default('x') }}", false),
        ("{{ body.model.deeper | default('x') }}", false),
        ("{% for t in body.entry.tags %}{{ t }}{% endfor %}", false),
        ("{{ body['model'] }} {{ body | length }}", false),
        (
            "{{ body.entry.id + body.count }} {{ body.nothing is none }}",
            false,
        ),
        ("{% set e = body.entry %}{{ e.id }}", false),
        ("{% set k = 'model' %}{{ body[k] }}", false),
        ("{% set body = body.entry %}{{ body.id }}", false),
        (
            "{% with body = body.entry %}{{ body.id }}{% endwith %}",
            false,
        ),
        (
            "{% macro m(body=body) %}{{ body.model }}{% endmacro %}{{ m() }}",
            false,
        ),
        ("{%- set e = body.entry -%}{{ e.tags }}", false),
        (
            "{% filter replace('X', body.model) %}X{% endfilter %}",
            false,
        ),
        (
            "{% autoescape body.draft == false %}{{ '<' }}{% endautoescape %}",
            false,
        ),
        ("{{ debug() }}", false),
        ("{{ body[headers['x-field'] or 'count'] }}", false),
        ("{% for k, v in body | items %}{{ k }}{% endfor %}", false),
        // Statements inside a comment or a raw block are text, not code.
        ("{# {% set body = 1 %} #}{{ body.entry.id }}", false),
        (
            "{% raw %}{% set body = 1 %}{% endraw %}{{ body.entry.id }}",
            false,
        ),
    ];
    // (source, whether it is simple enough to skip the engine)
    let conditions = [
        ("body.model in ['post', 'page']", true),
        ("body.model in [\"page\", 'x in y']", true),
        ("body.model == 'post'", true),
        ("body.model != \"post\"", true),
        ("headers['x-event'] == 'publish'", true),
        ("body.count in ['3']", true),
        ("body.entry in ['x']", true),
        ("body.missing in ['x']", true),
        ("body.missing != 'x'", true),
        ("body.model in ['post',]", false),
        ("body.model in ['po\\'st']", false),
        ("body.model == 'post' and true", false),
        ("body.model not in ['post']", false),
        ("route == 'blog'", true),
        ("body.entry.id > 3 and body.count == 3", false),
        ("body.missing is defined", false),
        ("body.entry.tags | length > 1", false),
        ("body.nothing is none", false),
        ("body.missing.deeper", false),
        ("headers['x-event'] == 'publish' and route == 'blog'", false),
    ];
    let values = [
        json!("{{ body.entry }}"),
        json!("{{ body.price }}"),
        json!("{{ body.nothing }}"),
        json!("{{ body.missing }}"),
        json!("{{ body.missing.deeper }}"),
        json!("{{ headers['x-event'] }}"),
        json!("{{ headers }}"),
        json!({"a": "{{ route }}", "b": ["{{ delivery.id }}", "{{ body.count }}"]}),
    ];
    // Each template is compiled with the shape of the body it reads, which
    // is what a route with only that template would parse bodies to.
    let mut builder = EngineBuilder::new();
    let compiled_strings: Vec<_> = strings
        .iter()
        .map(|(source, _)| {
            let template = builder.string("t", source).unwrap();
            (template, builder.take_body_shape())
        })
        .collect();
    let compiled_values: Vec<_> = values
        .iter()
        .map(|source| {
            let template = builder.value("v", source).unwrap();
            (template, builder.take_body_shape())
        })
        .collect();
    let compiled_conditions: Vec<_> = conditions
        .iter()
        .map(|(source, _)| {
            let condition = builder.condition("when", source).unwrap();
            (condition, builder.take_body_shape())
        })
        .collect();
    builder.finish();
    for ((source, simple), (condition, _)) in conditions.iter().zip(&compiled_conditions) {
        assert_eq!(condition.direct.is_some(), *simple, "{source}");
    }
    // The engine is handed only the parts of the body a template reads.
    let and = conditions
        .iter()
        .position(|(s, _)| s.starts_with("body.entry.id > 3"))
        .unwrap();
    assert_eq!(
        compiled_conditions[and].0.expr.compiled.reads,
        BodyReads::Paths(vec![
            vec!["count".into()],
            vec!["entry".into(), "id".into()]
        ])
        .sorted()
    );
    let whole = strings
        .iter()
        .position(|(s, _)| s.contains("length"))
        .unwrap();
    let reads = |i: usize| {
        compiled_strings[i]
            .0
            .compiled
            .as_ref()
            .unwrap()
            .reads
            .clone()
    };
    assert_eq!(reads(whole), BodyReads::Whole);
    // A statement inside a comment or a raw block does not make the
    // analysis give up: the template reads only `body.entry.id`.
    for (i, (source, _)) in strings.iter().enumerate() {
        if source.contains("{% set body = 1 %}") {
            assert_ne!(reads(i), BodyReads::Whole, "{source}");
            assert!(!compiled_strings[i].1.whole, "{source}");
        }
    }
    assert!(compiled_strings[whole].1.whole);
    for ((source, simple), (template, _)) in strings.iter().zip(&compiled_strings) {
        assert_eq!(template.direct.is_some(), *simple, "{source}");
    }
    for context in &contexts {
        let body_text = context.body.to_string();
        // Renders one template three ways and compares: directly, with the
        // engine, and directly from the body parsed to the template's shape.
        let three_ways = |source: &dyn std::fmt::Display,
                          shape: &BodyShape,
                          render: &dyn Fn(&Prepared) -> String| {
            let engine = render(&context.prepare_engine_only());
            let what = format!("{source} with body {body_text}");
            assert_eq!(render(&context.prepare()), engine, "{what}");
            let shaped = Context {
                body: crate::inbound::parse_body_shaped(None, body_text.as_bytes(), shape).unwrap(),
                ..context.clone()
            };
            assert_eq!(
                render(&shaped.prepare()),
                engine,
                "{what}, shaped to {shape:?}"
            );
        };
        for ((source, _), (template, shape)) in strings.iter().zip(&compiled_strings) {
            three_ways(source, shape, &|p| {
                format!("{:?}", template.render_prepared(p))
            });
        }
        for ((source, _), (condition, shape)) in conditions.iter().zip(&compiled_conditions) {
            three_ways(source, shape, &|p| {
                format!("{:?}", condition.eval_prepared(p))
            });
        }
        for (source, (template, shape)) in values.iter().zip(&compiled_values) {
            three_ways(source, shape, &|p| {
                format!("{:?}", template.render_prepared(p))
            });
        }
    }
}

#[test]
fn a_template_cannot_use_another() {
    let mut builder = EngineBuilder::new();
    builder
        .string(
            "routes[0].dispatch[0].client_payload.key",
            "{{ body.model }}-secret",
        )
        .unwrap();
    for (source, keyword) in [
        (
            "{% include 'routes[0].dispatch[0].client_payload.key' %}",
            "include",
        ),
        ("{%- import 'x' as m -%}{{ m }}", "import"),
        ("{% from 'x' import y %}", "from"),
        ("{% extends 'x' %}", "extends"),
    ] {
        let err = builder.string("t", source).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{keyword}` is not available")),
            "{source}: {err}"
        );
        let err = builder.value("v", &json!({"a": source})).unwrap_err();
        assert!(
            format!("{err:?}").contains("is not available"),
            "{source}: {err:?}"
        );
    }
    // Text that only looks like a statement is not refused.
    builder
        .string(
            "u",
            "{# {% include 'x' %} #}{% raw %}{% include 'x' %}{% endraw %}{{ body.model }}",
        )
        .unwrap();
}

#[test]
fn names_that_do_not_exist_are_found_in_branches_the_empty_request_skips() {
    let mut builder = EngineBuilder::new();
    for (source, expected) in [
        (
            "{% if body.x %}{{ body.x | uper }}{% endif %}",
            "unknown filter `uper`; did you mean `upper`?",
        ),
        (
            "{% for t in body.tags %}{{ t | to_json }}{% endfor %}",
            "unknown filter `to_json`; did you mean `tojson`?",
        ),
        (
            "{{ body.a if body.b is strng else 'x' }}",
            "unknown test `strng`",
        ),
        (
            "{% if body.entry %}{{ body.entry.slug.lowr() }}{% endif %}",
            "no method `lowr`; did you mean `lower`?",
        ),
        (
            "{% filter uppr %}{{ body.a }}{% endfilter %}",
            "unknown filter `uppr`",
        ),
    ] {
        let err = builder.string("t", source).unwrap_err().to_string();
        assert!(err.contains(expected), "{source}: {err}");
    }
    let err = builder
        .condition(
            "w",
            "body.event == 'entry.publish' and body.entry.tags | lenght > 0",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown filter `lenght`; did you mean `length`?"),
        "{err}"
    );
    // What looks like a call but is not one, and the methods of minijinja's
    // own objects, are left alone.
    for source in [
        "{{ body.is }}{{ body.a is not none }}{{ body.b is defined }}",
        "{{ '| nofilter' }}{{ body.x.y }}{{ 'a.b(' }}",
        "{% for t in body.tags %}{{ loop.cycle('a', 'b') }}{{ t.startswith('x') }}{% endfor %}",
        "{{ body.tags | map('upper') | join(',') }}{{ body.n | d(1) }}",
    ] {
        builder.string("ok", source).unwrap();
    }
}

#[test]
fn every_filter_suggested_exists() {
    let mut builder = EngineBuilder::new();
    for filter in builder.filters.clone() {
        builder
            .string("f", &format!("{{{{ body.x | {filter} }}}}"))
            .unwrap_or_else(|err| panic!("{filter}: {err}"));
    }
}

#[test]
fn a_header_is_read_by_its_lower_case_name() {
    let mut builder = EngineBuilder::new();
    for (source, expected) in [
        (
            "headers['X-GitHub-Event'] == 'push'",
            "`headers['X-GitHub-Event']` is never defined; write `headers['x-github-event']`",
        ),
        (
            "headers.get('X-Event') == 'push'",
            "write `headers['x-event']`",
        ),
        (
            "headers.x-github-event == 'push'",
            "`headers.x-github-event` subtracts from `headers.x`; a header whose name has a `-` is read as `headers['x-github-event']`",
        ),
        ("headers.Host == 'a'", "write `headers['host']`"),
    ] {
        let err = builder.condition("w", source).unwrap_err().to_string();
        assert!(err.contains(expected), "{source}: {err}");
    }
    let err = builder
        .string("k", "{{ headers['X-Request-Id'] }}")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`headers['x-request-id']`"), "{err}");
    // The body's own `headers`, and lower-case names, are fine.
    builder
        .condition(
            "ok",
            "body.headers['X-A'] == 'b' and headers['x-event'] == 'push' and headers.host",
        )
        .unwrap();
}

#[test]
fn unknown_filters_tests_and_functions_are_compile_errors() {
    let mut builder = EngineBuilder::new();
    for (source, name) in [
        ("{{ body.model | lowr }}", "lowr"),
        ("cms-{{ body.entry.id | urldecod }}", "urldecod"),
        ("{{ body.x is defind }}", "defind"),
        ("{{ lenght(body.tags) }}", "lenght"),
    ] {
        let err = builder.string("t", source).unwrap_err();
        assert!(err.to_string().contains(name), "{source}: {err}");
    }
    for (source, name) in [
        ("body.model | lenght > 0", "lenght"),
        ("body.entry.draft is truthyy", "truthyy"),
    ] {
        let err = builder.condition("w", source).unwrap_err();
        assert!(err.to_string().contains(name), "{source}: {err}");
    }
    let err = builder
        .value("p", &json!({"a": "{{ body.key | urldecod }}"}))
        .unwrap_err();
    assert!(format!("{err:?}").contains("urldecod"), "{err:?}");
    // The strict environment's own names are not the user's.
    let err = builder
        .string("t", "{{ body.tags | map('__relay_lower') | join }}")
        .unwrap_err();
    assert!(err.to_string().contains("__relay_"), "{err}");
    // Known names compile, whatever the empty request makes of them.
    builder
        .string(
            "ok",
            "{{ body.model | lower }}-{{ body.n + 1 }}-{{ body.key | urldecode }}",
        )
        .unwrap();
    builder
        .condition("ok2", "body.entry.id is defined and body.tags | length > 0")
        .unwrap();
}

#[test]
fn fields_of_missing_objects_are_undefined_not_errors() {
    let mut builder = EngineBuilder::new();
    let text = builder.string("t", "id={{ body.missing.id }}").unwrap();
    let guarded = builder
        .condition("w", "body.missing.published is defined")
        .unwrap();
    let negated = builder.condition("n", "not body.missing.draft").unwrap();
    let value = builder
        .value(
            "p",
            &json!({"id": "{{ body.missing.id }}", "d": "{{ body.missing.id | default('x') }}"}),
        )
        .unwrap();
    builder.finish();
    assert_eq!(text.render(&ctx()).unwrap(), "id=");
    assert!(!guarded.eval(&ctx()).unwrap());
    assert!(negated.eval(&ctx()).unwrap());
    assert_eq!(value.render(&ctx()).unwrap(), json!({"id": null, "d": "x"}));
}

#[test]
fn a_key_that_prints_a_missing_value_is_no_key() {
    let mut builder = EngineBuilder::new();
    let mut key = |source: &str| {
        builder
            .strict_string("routes[0].dedupe_key", source)
            .unwrap()
    };
    let order = key("order-{{ body.id }}");
    let model = key("order-{{ body.model }}-{{ body.entry.id }}");
    let chained = key("{{ body.missing.id }}-{{ body.count }}");
    let null = key("n-{{ body.nothing }}");
    // A default stands in for a missing field, and for a field of a
    // missing object, as in every other template.
    let defaulted = key("{{ body.id | default('x') }}");
    let chained_default = key("{{ body.missing.id | default('x') }}");
    let nested_test = key("{% if body.missing.id is defined %}a{% else %}b{% endif %}");
    let filtered_null = key("n-{{ body.nothing | lower }}");
    let joined_missing = key("{{ body.missing | join(',') }}");
    let joined_items = [
        key("{{ [body.model, body.missing] | join(':') }}"),
        key("{{ [body.model, body.nothing] | join(':') }}"),
        key("order-{{ body.missing | int }}"),
        key("{{ 'k-%s' | format(body.missing) }}"),
        key("k-{{ body.missing | length }}"),
        key("k-{{ body.missing | list | join }}"),
        // An iterable another filter gives holds its items as a list does.
        key("{{ [body.model, body.nothing] | reverse | join('-') }}"),
    ];
    let tojson_indented = key("{{ body.entry | tojson(indent=2) }}");
    // Present values render as anywhere: filters that drop missing values,
    // a list holding a null, a `none` written as an argument.
    let present = [
        (
            "{{ [body.model, body.missing] | select('defined') | join('-') }}",
            "post",
        ),
        ("{{ [1, none, 3] | reject('none') | join('-') }}", "1-3"),
        ("{{ [1, none, 3] | length }}", "3"),
        ("{{ [1, none, 3] | first }}", "1"),
        ("{{ body.list | batch(3, none) | list | length }}", "1"),
        ("{{ body.entry.tags | map('upper') | join('') }}", "AB"),
        ("{{ body.entry.tags | reverse | join('-') }}", "b-a"),
        ("{{ body.__relay_field | default('ok') }}", "ok"),
    ]
    .map(|(source, expected)| (key(source), expected));
    let fixed = key("always");
    let broken = key("{{ body.model + 1 }}");
    // Through a filter or `~`, a missing value is still missing.
    let filtered = [
        key("order-{{ body.id | lower }}"),
        key("order-{{ body.id | string }}"),
        key("order-{{ body.id | trim }}"),
        key("order-{{ body.id | urldecode }}"),
        key("{% if body.id %}x{% endif %}-{{ body.missing.id }}"),
    ];
    let guarded = key("{% if body.id is defined %}{{ body.id }}{% else %}none{% endif %}");
    builder.finish();
    for template in &filtered {
        assert_eq!(template.render_key(&ctx()).unwrap(), None, "{template:?}");
    }
    assert_eq!(guarded.render_key(&ctx()).unwrap().as_deref(), Some("none"));
    assert_eq!(order.render_key(&ctx()).unwrap(), None);
    assert_eq!(
        model.render_key(&ctx()).unwrap().as_deref(),
        Some("order-post-7")
    );
    assert_eq!(chained.render_key(&ctx()).unwrap(), None);
    assert_eq!(null.render_key(&ctx()).unwrap(), None);
    assert_eq!(defaulted.render_key(&ctx()).unwrap().as_deref(), Some("x"));
    assert_eq!(
        chained_default.render_key(&ctx()).unwrap().as_deref(),
        Some("x")
    );
    assert_eq!(
        nested_test.render_key(&ctx()).unwrap().as_deref(),
        Some("b")
    );
    assert_eq!(filtered_null.render_key(&ctx()).unwrap(), None);
    assert_eq!(joined_missing.render_key(&ctx()).unwrap(), None);
    for template in &joined_items {
        assert_eq!(template.render_key(&ctx()).unwrap(), None, "{template:?}");
    }
    for (template, expected) in &present {
        assert_eq!(
            template.render_key(&ctx()).unwrap().as_deref(),
            Some(*expected),
            "{template:?}"
        );
    }
    // Arguments, keyword ones included, reach the filter as written.
    assert!(
        tojson_indented
            .render_key(&ctx())
            .unwrap()
            .is_some_and(|json| json.contains("\n  \"id\": 7")),
    );
    assert_eq!(fixed.render_key(&ctx()).unwrap().as_deref(), Some("always"));
    assert!(broken.render_key(&ctx()).is_err());
    // Rendered as text, the same template still prints a missing value as
    // nothing.
    assert_eq!(order.render(&ctx()).unwrap(), "order-");
}

#[test]
fn joins_and_loops_are_found_in_tags_not_in_comments_strings_or_raw_blocks() {
    let cases = [
        ("{{ 'cms-' ~ body.model }}", true),
        ("{%- for l in body.labels %}{{ l }}{% endfor %}", true),
        ("{{- body.a ~ body.b -}}", true),
        ("cms-{{ body.model }}", false),
        ("{{ body.v | replace('~', '-') }}", false),
        ("{# 'cms-' ~ body.model #}{{ body.model }}", false),
        ("{# {% for x in y %} #}{{ body.model }}", false),
        (
            "{% raw %}{{ a ~ b }}{% for x in y %}{% endraw %}{{ body.model }}",
            false,
        ),
        ("{% raw %}{{ a }}{% endraw %}{{ body.a ~ body.b }}", true),
        // A quote inside a raw block is text, not the start of a string.
        (
            "{% raw %}{% don't %}{% endraw %}{{ body.a ~ body.b }}",
            true,
        ),
        ("{% raw %}it's {{ a ~ b }}", false),
        // Only `endraw` ends a raw block; a lone `{%` in it is text.
        ("{% raw %}{%{% endraw %}{{ body.a ~ body.b }}", true),
        (
            "{% raw %}a {% b{% endraw %}{% for x in body.l %}{{ x }}{% endfor %}",
            true,
        ),
        ("{% raw %}{% endrawx %}{{ a ~ b }}", false),
        // Only what minijinja takes as the end tag ends the block.
        ("{% raw %}{% - endraw %}{{ x ~ y }}{% endraw %}", false),
        (
            "{% raw %}{% -endraw %}{# {% endraw %}{{ body.a ~ body.b }}",
            true,
        ),
        (
            "{%- raw -%}x{%- endraw -%}{% for x in body.y %}{% endfor %}",
            true,
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(joins_or_loops(source), expected, "{source}");
    }
}

#[test]
fn a_source_written_twice_is_compiled_once_and_each_field_keeps_its_name() {
    let mut builder = EngineBuilder::new();
    let source = "{{ body.count // (body.count - 3) }}";
    let first = builder
        .string("routes[0].dispatch[0].event_type", source)
        .unwrap();
    let second = builder
        .string("routes[1].dispatch[0].event_type", source)
        .unwrap();
    let when = builder
        .condition("routes[0].when", "body.count > 1")
        .unwrap();
    let again = builder
        .condition("routes[1].when", "body.count > 1")
        .unwrap();
    assert_eq!(
        builder.compiled.len(),
        2,
        "one template per distinct source"
    );
    builder.finish();
    let request = ctx();
    let context = request.prepare();
    for (template, name) in [
        (&first, "routes[0].dispatch[0].event_type"),
        (&second, "routes[1].dispatch[0].event_type"),
    ] {
        let err = template.render_prepared(&context).unwrap_err();
        assert_eq!(err.name, name, "{err}");
    }
    assert!(when.eval_prepared(&context).unwrap());
    assert!(again.eval_prepared(&context).unwrap());
}

#[test]
fn a_variable_no_request_can_have_is_a_compile_error() {
    let mut builder = EngineBuilder::new();
    // Text meant literally but not quoted, and a misspelt `body`.
    let err = builder
        .condition("w", "body.event == entry.publish")
        .unwrap_err();
    assert!(
        err.to_string().contains("`entry` is not a variable"),
        "{err}"
    );
    assert!(err.to_string().contains("as in 'entry'"), "{err}");
    for source in ["cms-{{ bdy.model }}", "{{ delivery.id }}-{{ delivry.id }}"] {
        let err = builder.string("t", source).unwrap_err();
        assert!(
            err.to_string().contains("is not a variable"),
            "{source}: {err}"
        );
    }
    let err = builder
        .value("p", &json!({"entry": "{{ bodyy.entry }}"}))
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("`bodyy` is not a variable"),
        "{err:?}"
    );
    assert!(
        format!("{err:?}").contains("did you mean `body`?"),
        "{err:?}"
    );
    // Every name of the context, the engine's functions, and names the
    // template declares itself compile.
    for source in [
        "{{ body.a }}{{ headers['x-a'] }}{{ query.a }}{{ route }}{{ delivery.id }}{{ sns.MessageId }}",
        "{% for tag in body.tags %}{{ loop.index }}{{ tag }}{% endfor %}",
        "{% set kind = body.kind %}{{ kind }}",
        "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(body.a) }}",
        "{{ range(3) | join }}{{ dict(a=1).a }}{{ debug() | length }}",
        "{% with a = body.a %}{{ a }}{% endwith %}",
        // Set in a branch and read after it, and set after a macro that
        // reads it: both render, though the analysis loses the names.
        "{% if body.draft %}{% set kind = 'preview' %}{% else %}{% set kind = 'publish' %}{% endif %}{{ kind }}",
        "{% macro tag(x) %}{{ env }}-{{ x }}{% endmacro %}{% set env = body.env %}{{ tag(body.id) }}",
    ] {
        builder.string("ok", source).unwrap();
    }
    builder
        .condition("ok", "body.tags | select('in', ['a']) | list")
        .unwrap();
}

/// A loop over the request's data stops at a bound, in text and in steps,
/// with an error that says which; neither can hold an HTTP worker for long
/// nor build gigabytes of text.
#[test]
fn a_loop_over_request_data_is_bounded_in_output_and_steps() {
    let cases = [
        (
            "{% for i in range(body.n) %}{{ body.s }}{% endfor %}",
            serde_json::json!({"n": 300, "s": "a".repeat(500_000)}),
            "renders to more than 1024 KiB of text",
        ),
        (
            "{% for i in range(body.n) %}{% for j in range(body.n) %}{% endfor %}{% endfor %}",
            serde_json::json!({"n": 100_000, "s": ""}),
            "steps to render",
        ),
    ];
    for (source, body, expected) in cases {
        let mut builder = EngineBuilder::new();
        let template = builder.string("t", source).unwrap();
        builder.finish();
        let mut ctx = ctx();
        ctx.body = body;
        let err = template.render(&ctx).unwrap_err().to_string();
        assert!(err.contains(expected), "{source}: {err}");
    }
    // Within the bounds, the same loop renders.
    let mut builder = EngineBuilder::new();
    let template = builder
        .string("t", "{% for i in range(body.n) %}{{ body.s }}{% endfor %}")
        .unwrap();
    builder.finish();
    let mut ctx = ctx();
    ctx.body = serde_json::json!({"n": 1000, "s": "ab"});
    assert_eq!(template.render(&ctx).unwrap().len(), 2000);
}

/// A filter's size taken from the request cannot make it build more than a
/// rendering may hold; within the bounds it works as Jinja's, keyword
/// arguments and strict fields included.
#[test]
fn sizes_given_to_filters_are_bounded() {
    let render = |source: &str, strict: bool, body: serde_json::Value| {
        let mut builder = EngineBuilder::new();
        let template = if strict {
            builder.strict_string("t", source).unwrap()
        } else {
            builder.string("t", source).unwrap()
        };
        builder.finish();
        let mut ctx = ctx();
        ctx.body = body;
        if strict {
            template.render_key(&ctx).map(Option::unwrap_or_default)
        } else {
            template.render(&ctx)
        }
        .map_err(|e| e.to_string())
    };
    let refused = [
        (
            "{{ body.s | indent(body.n) }}",
            "`indent(1000000000)` would make a text of more than",
        ),
        (
            "{{ body.s | indent(width=body.n) }}",
            "`indent(1000000000)` would make",
        ),
        (
            "{{ body.s | list | slice(body.n) | length }}",
            "`slice(1000000000)` would make more than 10000 items",
        ),
        (
            "{{ body.s | list | batch(body.n, 'x') | length }}",
            "`batch(1000000000)` would make",
        ),
    ];
    for strict in [false, true] {
        for (source, expected) in refused {
            let body = serde_json::json!({"s": "a\nb", "n": 1_000_000_000});
            let err = render(source, strict, body).unwrap_err();
            assert!(err.contains(expected), "{source} {strict}: {err}");
        }
        let body = serde_json::json!({"s": "a\nb", "n": 2});
        let within = [
            ("{{ body.s | indent(body.n) }}", "a\n  b"),
            (
                "{{ body.s | indent(width=body.n, first=true) }}",
                "  a\n  b",
            ),
            ("{{ body.s | list | slice(body.n) | list | length }}", "2"),
            ("{{ body.s | list | batch(body.n) | list | length }}", "2"),
        ];
        for (source, expected) in within {
            assert_eq!(
                render(source, strict, body.clone()).unwrap(),
                expected,
                "{source} {strict}"
            );
        }
    }
}

#[test]
fn a_template_is_compiled_when_a_request_first_needs_it() {
    let mut builder = EngineBuilder::new();
    let upper = builder.string("upper", "{{ body.model | upper }}").unwrap();
    let key = builder
        .strict_string("key", "k-{{ body.model | upper }}")
        .unwrap();
    let never_rendered = builder.string("lower", "{{ body.model | lower }}").unwrap();
    builder.finish();
    let engine = Arc::clone(&upper.compiled.as_ref().unwrap().engine);
    let compiled = |cell: &OnceLock<Environment<'static>>| cell.get().unwrap().templates().count();
    assert_eq!((compiled(&engine.env), compiled(&engine.keys)), (0, 0));

    assert_eq!(upper.render(&ctx()).unwrap(), "POST");
    assert_eq!(upper.render(&ctx()).unwrap(), "POST");
    assert_eq!(key.render_key(&ctx()).unwrap().as_deref(), Some("k-POST"));
    // Each once, in the environment that renders it; `lower` not at all.
    assert_eq!((compiled(&engine.env), compiled(&engine.keys)), (1, 1));
    assert!(never_rendered.is_static().is_none());
}
