//! Turning one route and one inbound request into the exact GitHub requests
//! to send: evaluating `when`, rendering every target, and enforcing
//! GitHub's limits before anything is stored or sent. The limit checks here
//! are also what `config` applies to static templates at load time, so a
//! limit is written down exactly once.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{RepoSpec, Route, TargetKind};
use crate::template::{Context, RenderError};

#[cfg(test)]
mod tests;

/// The longest `event_type` GitHub accepts, in characters.
pub const MAX_EVENT_TYPE_CHARS: usize = 100;
/// The most top-level properties GitHub accepts in `client_payload`.
pub const MAX_CLIENT_PAYLOAD_KEYS: usize = 10;
/// `client_payload` must serialize to fewer bytes than this.
pub const MAX_CLIENT_PAYLOAD_BYTES: usize = 65536;
/// GitHub's limit on workflow `inputs`: "The maximum payload for inputs is
/// 65,535 characters."
pub const MAX_WORKFLOW_INPUTS_CHARS: usize = 65_535;
/// The most `inputs` GitHub accepts in a `workflow_dispatch`.
pub const MAX_WORKFLOW_INPUTS: usize = 25;

/// Headers that carry the sender's own delivery id, in order of preference.
/// They are believed only on routes whose verify method authenticates the
/// sender, since otherwise anyone could suppress a delivery by replaying an
/// id.
pub const SENDER_DELIVERY_HEADERS: [&str; 6] = [
    "x-github-delivery",
    "webhook-id",
    "svix-id",
    "x-amz-sns-message-id",
    "x-contentful-idempotency-key",
    "idempotency-key",
];

/// What to do with one accepted request.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// `when` was false: answer and send nothing.
    Skipped,
    /// Send these requests, one per target, in order.
    Dispatch(Vec<RenderedTarget>),
}

/// One target, rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedTarget {
    /// The target's index in the route's `dispatch` list.
    pub target_index: usize,
    /// The repository, `owner/name`.
    pub repo: String,
    /// The request to send.
    pub request: DispatchRequest,
}

/// A request to GitHub's dispatch endpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum DispatchRequest {
    /// `POST /repos/{repo}/dispatches`.
    Repository {
        /// The event type the workflows filter on.
        event_type: String,
        /// The payload the workflows read.
        client_payload: Map<String, Value>,
    },
    /// `POST /repos/{repo}/actions/workflows/{workflow}/dispatches`.
    Workflow {
        /// The workflow file name or id.
        workflow: String,
        /// The branch or tag to run on.
        git_ref: String,
        /// The inputs, every value a string.
        inputs: Map<String, Value>,
    },
}

/// The body of a dispatch request, borrowed. Fields are declared in the
/// order of their JSON names, so the text is the same as a serialized
/// [`Value`] (whose objects are sorted by key).
#[derive(Serialize)]
#[serde(untagged)]
enum BodyView<'a> {
    Repository {
        client_payload: &'a Map<String, Value>,
        event_type: &'a str,
    },
    Workflow {
        #[serde(skip_serializing_if = "Option::is_none")]
        inputs: Option<&'a Map<String, Value>>,
        #[serde(rename = "ref")]
        git_ref: &'a str,
    },
}

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl DispatchRequest {
    /// The HTTP method; both endpoints take a POST.
    pub fn method(&self) -> &'static str {
        "POST"
    }

    /// The API path for `repo`, relative to the API base URL.
    pub fn path(&self, repo: &str) -> String {
        match self {
            DispatchRequest::Repository { .. } => format!("/repos/{repo}/dispatches"),
            DispatchRequest::Workflow { workflow, .. } => format!(
                "/repos/{repo}/actions/workflows/{}/dispatches",
                utf8_percent_encode(workflow, PATH_SEGMENT)
            ),
        }
    }

    /// The JSON body as a value; the tests compare [`Self::body_json`] with
    /// it, since everything else sends the text.
    #[cfg(test)]
    pub fn body(&self) -> Value {
        serde_json::to_value(self.body_view()).unwrap_or(Value::Null)
    }

    /// The JSON body as sent, serialized straight from the rendered parts
    /// rather than through a copied [`Value`]: the accept path stores it for
    /// every webhook.
    pub fn body_json(&self) -> String {
        serde_json::to_string(&self.body_view()).unwrap_or_default()
    }

    fn body_view(&self) -> BodyView<'_> {
        match self {
            DispatchRequest::Repository {
                event_type,
                client_payload,
            } => BodyView::Repository {
                client_payload,
                event_type,
            },
            DispatchRequest::Workflow {
                git_ref, inputs, ..
            } => BodyView::Workflow {
                inputs: (!inputs.is_empty()).then_some(inputs),
                git_ref,
            },
        }
    }

    /// A short name for answers and logs: the event type or the workflow.
    pub fn label(&self) -> &str {
        match self {
            DispatchRequest::Repository { event_type, .. } => event_type,
            DispatchRequest::Workflow { workflow, .. } => workflow,
        }
    }
}

/// A GitHub limit (or a shape rule) that a value breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// `event_type` rendered empty.
    #[error("is empty; GitHub needs 1 to {MAX_EVENT_TYPE_CHARS} characters")]
    EventTypeEmpty,
    /// `event_type` is too long.
    #[error("is {chars} characters long; GitHub accepts at most {MAX_EVENT_TYPE_CHARS}")]
    EventTypeTooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// `event_type` begins or ends with whitespace, or holds a control
    /// character: most often the newline a YAML block scalar (`|`) keeps.
    #[error(
        "is {shown}, which begins or ends with whitespace or holds a control character; GitHub takes it as it is, so a workflow's `types:` would not match it"
    )]
    EventTypeUntrimmed {
        /// The value, quoted and escaped.
        shown: String,
    },
    /// `client_payload` or `inputs` is not an object.
    #[error("must be an object, not {found}")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// Too many top-level properties in `client_payload`.
    #[error("has {keys} top-level properties; GitHub accepts at most {MAX_CLIENT_PAYLOAD_KEYS}")]
    TooManyPayloadKeys {
        /// The number found.
        keys: usize,
    },
    /// `client_payload` is too large.
    #[error(
        "is {bytes} bytes as JSON; GitHub accepts less than {MAX_CLIENT_PAYLOAD_BYTES} (64 KB)"
    )]
    PayloadTooLarge {
        /// Its serialized size.
        bytes: usize,
    },
    /// Too many workflow inputs.
    #[error("has {inputs} inputs; GitHub accepts at most {MAX_WORKFLOW_INPUTS}")]
    TooManyInputs {
        /// The number found.
        inputs: usize,
    },
    /// A workflow input that is an object or a list.
    #[error("input `{name}` is {found}; workflow inputs must be strings, numbers or booleans")]
    InputNotScalar {
        /// The input's name.
        name: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// The workflow inputs are too large.
    #[error("are {chars} characters as JSON; GitHub accepts at most {MAX_WORKFLOW_INPUTS_CHARS}")]
    InputsTooLarge {
        /// Their serialized length in characters.
        chars: usize,
    },
    /// A string field that rendered empty.
    #[error("is empty")]
    Empty,
    /// A `ref` git would refuse as a branch or tag name.
    #[error("`{git_ref}` {}", self.reason())]
    BadRef {
        /// The rendered ref.
        git_ref: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A workflow that names no file: `.` or `..` would change the API
    /// path itself.
    #[error("`{workflow}` {}", self.reason())]
    BadWorkflow {
        /// The rendered workflow.
        workflow: String,
    },
    /// A repository that is not `owner/name`.
    #[error("`{repo}` {}", self.reason())]
    BadRepo {
        /// The rendered repository.
        repo: String,
    },
    /// A templated repository outside `allowed_repos`.
    #[error("`{repo}` is not in the route's allowed_repos ({allowed})")]
    RepoNotAllowed {
        /// The rendered repository.
        repo: String,
        /// The patterns, comma-separated, as written in routes.yaml where a
        /// `${VAR}` filled one in.
        allowed: String,
    },
}

impl LimitError {
    /// The message without the value it is about, for a value a variable
    /// may have made: at load, and at run time for a field a `${VAR}`
    /// filled in. Such a value is never quoted.
    pub fn reason(&self) -> String {
        match self {
            LimitError::EventTypeUntrimmed { .. } => "begins or ends with whitespace or holds a control character; GitHub takes it as it is, so a workflow's `types:` would not match it".to_owned(),
            LimitError::RepoNotAllowed { allowed, .. } => {
                format!("is not in the route's allowed_repos ({allowed})")
            }
            LimitError::BadRef { why, .. } => format!("is not a branch or tag name: {why}"),
            LimitError::BadWorkflow { workflow } if workflow.contains(['/', '\\']) => {
                "is a path outside .github/workflows: give the workflow's file name (`deploy.yml`) or its id".to_owned()
            }
            LimitError::BadWorkflow { .. } => {
                "is not a workflow: give its file name, ending in `.yml` or `.yaml` (`deploy.yml`), or its id".to_owned()
            }
            LimitError::BadRepo { repo } if repo.contains("://") || repo.contains(".com/") => {
                "is not a repository name: write the repository as `owner/name`, not its URL"
                    .to_owned()
            }
            LimitError::BadRepo { repo } if ends_in_dot_git(repo) => {
                "is not a repository name: GitHub's never end in `.git`; write `owner/name` as the API names it, not as a clone URL does".to_owned()
            }
            LimitError::BadRepo { .. } => format!(
                "is not a repository name: expected `owner/name` using letters, digits, `-`, `_` and `.`, at most {MAX_OWNER} and {MAX_NAME} characters long"
            ),
            other => other.to_string(),
        }
    }
}

/// Why a route could not be planned for one request.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RoutingError {
    /// `when` failed to evaluate.
    #[error("when failed: {0}")]
    When(RenderError),
    /// A target's template failed to render.
    // The field is not named `source`: thiserror would take it for the
    // cause, and error chains (anyhow's `{:#}`) would print it twice.
    #[error("target {index}: {field} failed to render: {error}")]
    Render {
        /// The target's index in `dispatch`.
        index: usize,
        /// The field that failed.
        field: Field,
        /// What went wrong.
        error: RenderError,
    },
    /// A rendered target breaks a limit.
    #[error("target {index}: {field} {}", if *.withheld { limit.reason() } else { limit.to_string() })]
    Limit {
        /// The target's index in `dispatch`.
        index: usize,
        /// The field that breaks it.
        field: Field,
        /// The limit broken.
        limit: LimitError,
        /// Whether a `${VAR}` filled in the field, so that the message
        /// must not quote what it rendered to.
        withheld: bool,
    },
    /// The dedupe key failed to render.
    #[error("dedupe_key failed: {0}")]
    DedupeKey(RenderError),
}

/// A target field, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `repo`.
    Repo,
    /// `event_type`.
    EventType,
    /// `client_payload`.
    ClientPayload,
    /// `workflow`.
    Workflow,
    /// `ref`.
    Ref,
    /// `inputs`.
    Inputs,
}

impl Field {
    /// The key as written in `routes.yaml`.
    pub fn key(self) -> &'static str {
        match self {
            Field::Repo => "repo",
            Field::EventType => "event_type",
            Field::ClientPayload => "client_payload",
            Field::Workflow => "workflow",
            Field::Ref => "ref",
            Field::Inputs => "inputs",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Evaluates `when`, then renders every target of `route` for `ctx`.
///
/// A failure in any target fails the whole plan: a delivery is accepted
/// whole or not at all.
pub fn plan(route: &Route, ctx: &Context) -> Result<Plan, RoutingError> {
    let prepared = ctx.prepare();
    if let Some(when) = &route.when
        && !when.eval_prepared(&prepared).map_err(RoutingError::When)?
    {
        return Ok(Plan::Skipped);
    }
    let mut rendered = Vec::with_capacity(route.dispatch.len());
    for (index, target) in route.dispatch.iter().enumerate() {
        let render_err = |field: Field| {
            move |error| RoutingError::Render {
                index,
                field,
                error,
            }
        };
        let limit_err = |field: Field| {
            move |limit| RoutingError::Limit {
                index,
                field,
                limit,
                withheld: target.filled_from_variables.contains(&field),
            }
        };
        // The fields that say where the dispatch goes take only values the
        // request has: a missing one must not send it somewhere else.
        let present = |template: &crate::template::StringTemplate, field: Field| {
            template
                .render_present(&prepared)
                .map_err(render_err(field))?
                .ok_or_else(|| render_err(field)(template.missing_value()))
        };

        let repo = match &target.repo {
            RepoSpec::Static(repo) => repo.clone(),
            RepoSpec::Templated(template) => {
                let repo = present(template, Field::Repo)?;
                check_templated_repo(&repo, &route.allowed_repos, &route.allowed_repos_as_written)
                    .map_err(limit_err(Field::Repo))?;
                repo
            }
        };
        let request = match &target.kind {
            TargetKind::Repository {
                event_type,
                client_payload,
            } => {
                let event_type = present(event_type, Field::EventType)?;
                check_event_type(&event_type).map_err(limit_err(Field::EventType))?;
                let payload = client_payload
                    .render_prepared(&prepared)
                    .map_err(render_err(Field::ClientPayload))?;
                let client_payload =
                    check_client_payload(payload).map_err(limit_err(Field::ClientPayload))?;
                DispatchRequest::Repository {
                    event_type,
                    client_payload,
                }
            }
            TargetKind::Workflow {
                workflow,
                git_ref,
                inputs,
            } => {
                let workflow = workflow_file(&present(workflow, Field::Workflow)?).to_owned();
                check_workflow(&workflow).map_err(limit_err(Field::Workflow))?;
                let git_ref = present(git_ref, Field::Ref)?;
                check_ref(&git_ref).map_err(limit_err(Field::Ref))?;
                let inputs = inputs
                    .render_prepared(&prepared)
                    .map_err(render_err(Field::Inputs))?;
                let inputs = check_inputs(inputs).map_err(limit_err(Field::Inputs))?;
                DispatchRequest::Workflow {
                    workflow,
                    git_ref,
                    inputs,
                }
            }
        };
        rendered.push(RenderedTarget {
            target_index: index,
            repo,
            request,
        });
    }
    Ok(Plan::Dispatch(rendered))
}

/// What the route makes of a webhook, and its dedupe key: the webhook
/// handler and `render` both plan this way.
///
/// `when` decides first: a webhook the route skips needs no dedupe key,
/// and one that cannot be rendered must not turn a skip into a 422. A
/// dedupe key that fails to render is then a render failure like any
/// other. When both the dispatch and the key fail, the dispatch's error is
/// the one reported. The key of a webhook whose dispatch failed is still
/// given, so that a repeat of one already delivered stays a duplicate; the
/// store does not keep it (see `NewDelivery::dedupe_key`).
pub fn plan_with_key(route: &Route, ctx: &Context) -> (Option<String>, Result<Plan, RoutingError>) {
    match plan(route, ctx) {
        Ok(Plan::Skipped) => (None, Ok(Plan::Skipped)),
        plan => match (dedupe_key(route, ctx), plan) {
            (Ok(key), plan) => (key, plan),
            (Err(_), Err(e)) | (Err(e), Ok(_)) => (None, Err(e)),
        },
    }
}

/// The key that makes a repeated delivery a duplicate, if any.
///
/// A configured `dedupe_key` wins (an empty rendering means no key);
/// otherwise the sender's own delivery id header is used, but only on routes
/// that authenticate the sender.
pub fn dedupe_key(route: &Route, ctx: &Context) -> Result<Option<String>, RoutingError> {
    if let Some(template) = &route.dedupe_key {
        return template.render_key(ctx).map_err(RoutingError::DedupeKey);
    }
    if !route.verify.authenticates() {
        return Ok(None);
    }
    // On `sns` routes the envelope's MessageId is signed, unlike the
    // header that repeats it, so it is the one to believe.
    if let Some(id) = ctx
        .sns
        .as_ref()
        .and_then(|sns| sns.get("MessageId"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
    {
        return Ok(Some(id.to_string()));
    }
    let signed = crate::verify::signed_id_header(&route.verify, &ctx.headers);
    let names: &[&str] = match &signed {
        Some(name) => std::slice::from_ref(name),
        None => &SENDER_DELIVERY_HEADERS,
    };
    Ok(names
        .iter()
        .find_map(|name| ctx.headers.get(*name))
        .filter(|value| !value.is_empty())
        .cloned())
}

/// Checks an `event_type`: 1 to 100 characters.
pub fn check_event_type(event_type: &str) -> Result<(), LimitError> {
    match event_type.chars().count() {
        0 => Err(LimitError::EventTypeEmpty),
        chars if chars > MAX_EVENT_TYPE_CHARS => Err(LimitError::EventTypeTooLong { chars }),
        _ if event_type.trim() != event_type || event_type.chars().any(char::is_control) => {
            Err(LimitError::EventTypeUntrimmed {
                shown: format!("{event_type:?}"),
            })
        }
        _ => Ok(()),
    }
}

/// Checks a rendered `client_payload`: an object of at most 10 top-level
/// properties whose JSON is under 64 KB.
pub fn check_client_payload(payload: Value) -> Result<Map<String, Value>, LimitError> {
    let Value::Object(map) = payload else {
        return Err(LimitError::NotAnObject {
            found: json_type(&payload),
        });
    };
    check_payload_keys(map.len())?;
    let bytes = JsonLength::of(&map).bytes;
    if bytes >= MAX_CLIENT_PAYLOAD_BYTES {
        return Err(LimitError::PayloadTooLarge { bytes });
    }
    Ok(map)
}

/// The length of a value's JSON, as serde_json writes it, counted as it is
/// written rather than kept: the limits are measured on every webhook, and
/// the text itself is written once, when the job is stored.
#[derive(Debug, Default)]
struct JsonLength {
    bytes: usize,
    chars: usize,
}

impl JsonLength {
    fn of(value: &impl serde::Serialize) -> JsonLength {
        let mut length = JsonLength::default();
        // Writing to this counter cannot fail, and a map of JSON values
        // always serializes.
        let _ = serde_json::to_writer(&mut length, value);
        length
    }
}

impl std::io::Write for JsonLength {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes += buf.len();
        // A character is counted by its first byte; continuation bytes
        // (`10xxxxxx`) are not, wherever the writes split the text.
        self.chars += buf.iter().filter(|&&b| b & 0xC0 != 0x80).count();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks the number of top-level properties of `client_payload`.
pub fn check_payload_keys(keys: usize) -> Result<(), LimitError> {
    if keys > MAX_CLIENT_PAYLOAD_KEYS {
        return Err(LimitError::TooManyPayloadKeys { keys });
    }
    Ok(())
}

/// Checks the number of workflow inputs.
pub fn check_input_count(inputs: usize) -> Result<(), LimitError> {
    if inputs > MAX_WORKFLOW_INPUTS {
        return Err(LimitError::TooManyInputs { inputs });
    }
    Ok(())
}

/// Checks rendered workflow `inputs` and turns every value into a string:
/// numbers and booleans become their JSON text, objects and lists are
/// refused, and an input whose value is `null` (an undefined value, under
/// lenient rendering) is left out, so that the workflow's own default
/// applies: an empty string would replace it, and GitHub refuses one for a
/// required or `choice` input. A lone expression that renders `null` is no
/// inputs at all.
pub fn check_inputs(inputs: Value) -> Result<Map<String, Value>, LimitError> {
    let map = match inputs {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => {
            return Err(LimitError::NotAnObject {
                found: json_type(&other),
            });
        }
    };
    let inputs = map
        .into_iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| {
            let text = match value {
                Value::String(text) => text,
                Value::Bool(_) | Value::Number(_) => value.to_string(),
                Value::Array(_) | Value::Object(_) | Value::Null => {
                    let found = json_type(&value);
                    return Err(LimitError::InputNotScalar { name, found });
                }
            };
            Ok((name, Value::String(text)))
        })
        .collect::<Result<Map<String, Value>, LimitError>>()?;
    // Counted as sent: an input left out is not one of GitHub's 25.
    check_input_count(inputs.len())?;
    let chars = JsonLength::of(&inputs).chars;
    if chars > MAX_WORKFLOW_INPUTS_CHARS {
        return Err(LimitError::InputsTooLarge { chars });
    }
    Ok(inputs)
}

/// Checks a rendered `ref` against the rules of `git check-ref-format` that
/// a body can break (a field with a trailing newline, a space, `..`), so
/// that GitHub's refusal comes before the 202 rather than after it.
pub fn check_ref(git_ref: &str) -> Result<(), LimitError> {
    check_not_empty(git_ref)?;
    let why = if git_ref
        .chars()
        .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c))
    {
        Some("it holds a space, a control character or one of ~ ^ : ? * [ \\")
    } else if git_ref.contains("..") || git_ref.contains("@{") || git_ref.contains("//") {
        Some("it holds `..`, `@{` or `//`")
    } else if git_ref.starts_with(['/', '-']) || git_ref.ends_with(['/', '.']) || git_ref == "@" {
        Some("it starts with `/` or `-`, ends with `/` or `.`, or is `@`")
    } else if git_ref
        .split('/')
        .any(|part| part.starts_with('.') || part.ends_with(".lock"))
    {
        // git's rules hold for each part between slashes, not only for the
        // whole: `feature/.hidden` and `v1.lock/x` are refused too.
        Some("a part of it between slashes starts with `.` or ends with `.lock`")
    } else {
        None
    };
    match why {
        Some(why) => Err(LimitError::BadRef {
            git_ref: git_ref.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// The folder GitHub keeps workflows in; it has no subfolders.
const WORKFLOWS_FOLDER: &str = ".github/workflows/";

/// The workflow to name in the request: a workflow written with its path
/// (`.github/workflows/deploy.yml`) as its file name, which is how GitHub's
/// documentation names one, whatever it makes of the path.
pub fn workflow_file(workflow: &str) -> &str {
    workflow.strip_prefix(WORKFLOWS_FOLDER).unwrap_or(workflow)
}

/// Checks a rendered `workflow` (after [`workflow_file`]): a file name
/// ending in `.yml` or `.yaml`, or an id (digits). Anything else names no
/// workflow, and GitHub would answer 404: it keeps workflows in one folder,
/// without subfolders, and only as YAML files; `.` and `..` would change
/// the path of the request itself.
pub fn check_workflow(workflow: &str) -> Result<(), LimitError> {
    check_not_empty(workflow)?;
    let is_id = workflow.bytes().all(|b| b.is_ascii_digit());
    let is_file = workflow.ends_with(".yml") || workflow.ends_with(".yaml");
    if workflow.contains(['/', '\\']) || !(is_id || is_file) {
        return Err(LimitError::BadWorkflow {
            workflow: workflow.to_owned(),
        });
    }
    Ok(())
}

fn check_not_empty(text: &str) -> Result<(), LimitError> {
    if text.is_empty() {
        return Err(LimitError::Empty);
    }
    Ok(())
}

/// GitHub's longest account (user or organisation) name.
const MAX_OWNER: usize = 39;
/// GitHub's longest repository name.
const MAX_NAME: usize = 100;

/// Checks that `repo` is `owner/name` with GitHub's allowed characters and
/// lengths. The lengths also bound the work of matching a rendered name
/// against `allowed_repos` patterns, which grows with its square.
pub fn check_repo(repo: &str) -> Result<(), LimitError> {
    let valid_part = |part: &str, max: usize| {
        !part.is_empty()
            && part.len() <= max
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && part != "."
            && part != ".."
    };
    match repo.split_once('/') {
        Some((owner, name))
            if valid_part(owner, MAX_OWNER)
                && valid_part(name, MAX_NAME)
                && !ends_in_dot_git(name) =>
        {
            Ok(())
        }
        // A rendered repository may be anything a sender wrote; the message
        // quotes only its start.
        _ => Err(LimitError::BadRepo {
            repo: crate::text::truncate(repo, MAX_OWNER + 1 + MAX_NAME),
        }),
    }
}

/// Whether a name ends in `.git`, as a clone URL's does: GitHub takes such
/// a name off a new repository, so no repository has one.
fn ends_in_dot_git(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 4 && bytes[bytes.len() - 4..].eq_ignore_ascii_case(b".git")
}

/// Checks a rendered repository against the route's `allowed_repos`;
/// a refusal names them as `as_written`.
pub fn check_templated_repo(
    repo: &str,
    allowed: &[String],
    as_written: &str,
) -> Result<(), LimitError> {
    check_repo(repo)?;
    if allowed.iter().any(|pattern| repo_matches(pattern, repo)) {
        return Ok(());
    }
    Err(LimitError::RepoNotAllowed {
        repo: repo.to_owned(),
        allowed: as_written.to_owned(),
    })
}

/// Whether `repo` matches a pattern such as `acme/*` or `acme/site-*`.
///
/// `*` matches any run of characters except `/`, so `acme/*` never reaches
/// another owner. GitHub names are case-insensitive and so is the match.
fn repo_matches(pattern: &str, repo: &str) -> bool {
    fn glob(pattern: &[u8], text: &[u8]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => {
                // Try every split of `text` that stays within one segment.
                let mut i = 0;
                loop {
                    if glob(rest, &text[i..]) {
                        return true;
                    }
                    if i == text.len() || text[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some((c, rest)) => text
                .split_first()
                .is_some_and(|(t, text)| t.eq_ignore_ascii_case(c) && glob(rest, text)),
        }
    }
    glob(pattern.as_bytes(), repo.as_bytes())
}

/// The JSON type of a value, for messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
