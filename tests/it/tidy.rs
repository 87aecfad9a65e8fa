//! Repository rules checked as tests: every source file explains itself with
//! a `//!` paragraph, and every configuration example in the user
//! documentation loads with the loader `serve` uses, so the docs cannot drift
//! from the code unnoticed.

use crate::recipes::repo_root;

/// The top-level keys of routes.yaml; a YAML block in the docs whose first
/// key is one of them is a configuration example.
const TOP_LEVEL_KEYS: [&str; 6] = ["github", "server", "store", "retry", "notify", "routes"];

/// The documents whose configuration examples must load, and the example
/// file at the root.
const DOCS: [&str; 3] = ["README.md", "docs/configuration.md", "docs/github.md"];

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let files = crate::helpers::files_with_extension(&repo_root().join("src"), "rs");
    assert!(!files.is_empty(), "no files found under src/");
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            !text.starts_with("//!")
        })
        .map(|path| {
            path.strip_prefix(repo_root())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` paragraph saying what they are for:\n  {}",
        missing.join("\n  ")
    );
}

/// The values the documented examples read from the environment.
fn fake_env(name: &str) -> Option<String> {
    let value = match name {
        "SLACK_WEBHOOK_URL" => "https://hooks.slack.com/services/T0/B0/x",
        "GITHUB_TOKEN" | "CMS_WEBHOOK_SECRET" | "JENKINS_PASSWORD" | "MINIO_TOKEN"
        | "GH_HOOK_SECRET" | "RELEASE_TOKEN" | "SITE_TOKEN" | "CAREFUL_TOKEN" => "fake-value",
        _ => return None,
    };
    Some(value.to_string())
}

/// The ```yaml blocks of a Markdown text, with the line each starts on.
fn yaml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, line) in markdown.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```yaml") => {
                current = Some((index + 2, String::new()));
            }
            Some(_) if line.trim_start().starts_with("```") => {
                blocks.extend(current.take());
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// The first key of a YAML block, skipping comments and blank lines.
fn first_key(yaml: &str) -> Option<&str> {
    let line = yaml
        .lines()
        .find(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))?;
    line.split(':').next()
}

fn has_section(yaml: &str, key: &str) -> bool {
    yaml.lines()
        .any(|line| line.starts_with(&format!("{key}:")))
}

#[test]
fn documented_configuration_examples_load() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for doc in DOCS {
        let markdown = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        for (line, block) in yaml_blocks(&markdown) {
            if !first_key(&block).is_some_and(|key| TOP_LEVEL_KEYS.contains(&key)) {
                continue;
            }
            // An example showing one section is a fragment of a file: give it
            // the two required sections so the loader judges the rest.
            let mut text = block.clone();
            if !has_section(&text, "github") {
                text = format!("github:\n  token: fake-token\n{text}");
            }
            if !has_section(&text, "routes") {
                text.push_str("routes: []\n");
            }
            checked += 1;
            let name = format!("{doc}:{line}");
            if let Err(errors) = dispatch_relay::config::load(&name, &text, &fake_env) {
                failures.push(format!("the example at {name} does not load:\n{errors}"));
            }
        }
    }
    let example = std::fs::read_to_string(repo_root().join("routes.yaml")).unwrap();
    if let Err(errors) = dispatch_relay::config::load("routes.yaml", &example, &fake_env) {
        failures.push(format!("the example routes.yaml does not load:\n{errors}"));
    }
    assert!(checked > 0, "no configuration examples found in {DOCS:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every metric the relay exports is described in the README's list and in
/// operations.md's table, and every metric the dashboard, the alert rules
/// and the docs name is one the relay exports.
#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    use dispatch_relay::telemetry::{Metrics, SnsSubscription};
    // Labelled series appear with their first value: give each one.
    let metrics = Metrics::new();
    metrics.init_route("r");
    metrics.delivered("r", 1.0);
    metrics.github_request("repository_dispatch", Some(204), 0.1);
    metrics.rate_limit_remaining("token", 10, None);
    metrics.github_credential_refused("token", false);
    metrics.sns_subscription("r", SnsSubscription::Confirmed);
    metrics.set_queue_depth(dispatch_relay::store::QueueDepth::default());
    metrics.set_body_memory(0);
    let exported: std::collections::BTreeSet<String> = metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert!(exported.len() >= 12, "{exported:?}");

    let root = repo_root();
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    let readme = read("README.md");
    let operations = read("docs/operations.md");
    for name in &exported {
        let short = name.strip_prefix("dispatch_relay_").unwrap();
        assert!(
            readme.contains(&format!("`{short}")),
            "README.md lacks {short}"
        );
        assert!(
            operations.contains(&format!("| `{name}` |")),
            "operations.md's table lacks {name}"
        );
    }
    for path in [
        "README.md",
        "docs/operations.md",
        "docs/github.md",
        "docs/decisions.md",
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/dispatch-relay.json",
    ] {
        let text = read(path);
        for (at, _) in text.match_indices("dispatch_relay_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "dispatch_relay_" {
                // The prefix itself, as the README introduces it.
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.contains(&name) || exported.contains(base),
                "{path} names `{name}`, which the relay does not export"
            );
        }
    }
}

/// The systemd unit operations.md shows is the one in `deploy/systemd/`.
#[test]
fn the_systemd_unit_in_the_docs_is_the_shipped_one() {
    let docs = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    let shipped =
        std::fs::read_to_string(repo_root().join("deploy/systemd/dispatch-relay.service")).unwrap();
    let shown = docs
        .split("```ini\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("operations.md shows the unit in an ini block");
    assert_eq!(shown, shipped);
}

/// The shell commands of the workflows shown in a YAML block: each `run:`
/// value, a block scalar's lines included.
fn shell_commands(yaml: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some((run_indent, text)) = &mut block {
            if line.trim().is_empty() || indent > *run_indent {
                text.push_str(line);
                text.push('\n');
                continue;
            }
            commands.extend(block.take().map(|(_, text)| text));
        }
        let key = line.trim_start().trim_start_matches("- ");
        if let Some(value) = key.strip_prefix("run:") {
            let key_indent = line.len() - key.len();
            if value.trim_start().starts_with(['|', '>']) {
                block = Some((key_indent, String::new()));
            } else {
                commands.push(value.to_owned());
            }
        }
    }
    commands.extend(block.map(|(_, text)| text));
    commands
}

/// A webhook's values are chosen by its sender. Pasted into a workflow's
/// shell step as `${{ … }}`, a hostile value becomes shell code; the docs'
/// workflows, which users copy, pass them through `env:` instead.
#[test]
fn no_workflow_in_the_docs_pastes_the_payload_into_a_shell() {
    let mut files = crate::helpers::files_with_extension(&repo_root().join("docs"), "md");
    files.push(repo_root().join("README.md"));
    let mut pasted = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, yaml) in yaml_blocks(&text) {
            for command in shell_commands(&yaml) {
                if command.contains("${{") && command.contains("github.event") {
                    pasted.push(format!("{}:{line}: {}", file.display(), command.trim()));
                }
            }
        }
    }
    assert!(pasted.is_empty(), "{pasted:#?}");
}

#[test]
fn pasting_the_payload_into_a_shell_is_noticed() {
    let yaml = "steps:\n  - run: echo ${{ github.event.client_payload.key }}\n  - name: multi\n    run: |\n      echo one\n      echo \"${{ github.event.client_payload.by }}\"\n    env:\n      SAFE: ${{ github.event.client_payload.key }}\n";
    let commands = shell_commands(yaml);
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(commands.iter().all(|c| c.contains("github.event")));
    assert!(!commands.iter().any(|c| c.contains("SAFE")));
}
