//! Compiling and rendering the templates in `routes.yaml`: string templates
//! (`event_type`, `repo`, `workflow`, `ref`, `dedupe_key`), value templates
//! with typed rendering (`client_payload`, `inputs`) and conditions (`when`).
//!
//! Every template of one loaded configuration lives in one shared minijinja
//! [`Environment`]. Each is compiled and checked when the configuration is
//! loaded, then dropped, and compiled again the first time a request needs
//! the engine for it, once for the life of the configuration: minijinja
//! keeps about 12 KB of spare room in every compiled template, so holding
//! all of them would cost a configuration of thousands of routes hundreds
//! of megabytes, most of it for templates the direct evaluator answers or
//! routes that see no traffic. Templates are named after
//! their place in the configuration (for example
//! `routes[0].dispatch[1].client_payload.entry`), so every error names the
//! field that failed.
//!
//! Undefined values are lenient and chain: `{{ body.missing }}` and
//! `{{ body.missing.id }}` render as an empty string inside text and as
//! `null` when they are the whole value. Evaluation failures (a type error,
//! a bad filter argument) are [`RenderError`]s; a filter, test, method or
//! function that does not exist is a compile error, in whatever branch it
//! is written (see `tags`).

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value as MjValue, context};
use serde::{Deserialize, Serialize};

pub use tags::joins_or_loops;
use tags::{pulls_in_another_template, uses_statements_the_analysis_misreads};

mod direct;
mod tags;
#[cfg(test)]
mod tests;

/// The variable a compiled expression stores its value in. Expressions are
/// compiled as `{% set __relay_value = (EXPR) %}` templates so that they can
/// live inside the shared environment; the name is deliberately unlikely to
/// collide with anything a user writes.
const VALUE_VAR: &str = "__relay_value";

/// The names in every template's context (see [`Context`]); `sns` is
/// undefined outside `sns` routes.
const CONTEXT_NAMES: &[&str] = &["body", "headers", "query", "route", "delivery", "sns"];

/// What a template sees about one inbound request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// The parsed request body (JSON as is, form fields as an object).
    pub body: serde_json::Value,
    /// Header names, lower-cased, to their values.
    pub headers: BTreeMap<String, String>,
    /// Query-string parameters.
    pub query: BTreeMap<String, String>,
    /// The id of the route that received the request.
    pub route: String,
    /// The relay's id for this delivery.
    pub delivery_id: String,
    /// When the relay received the request, in RFC 3339.
    pub received_at: String,
    /// The SNS envelope on `sns` routes (whose `body` is the parsed
    /// `Message`); absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sns: Option<serde_json::Value>,
}

impl Context {
    /// Prepares the context for rendering every template of a route.
    ///
    /// Templates that only copy fields read the context directly. The others
    /// need it converted into minijinja's value model: only the parts of the
    /// body they read, when the analysis of the template says which; the
    /// whole body otherwise, and then at most once per request.
    pub fn prepare(&self) -> Prepared<'_> {
        Prepared {
            context: self,
            engine_parts: OnceCell::new(),
            engine_value: OnceCell::new(),
            direct: true,
        }
    }

    /// Like [`Context::prepare`], but every template goes through the
    /// engine; the tests compare both ways.
    #[cfg(test)]
    fn prepare_engine_only(&self) -> Prepared<'_> {
        Prepared {
            direct: false,
            ..self.prepare()
        }
    }

    /// Everything but the body, converted for the engine.
    fn engine_parts(&self) -> EngineParts {
        EngineParts {
            headers: MjValue::from_serialize(&self.headers),
            query: MjValue::from_serialize(&self.query),
            route: MjValue::from(self.route.as_str()),
            delivery: context! {
                id => self.delivery_id.as_str(),
                received_at => self.received_at.as_str(),
            },
            sns: self
                .sns
                .as_ref()
                .map_or(MjValue::from(()), MjValue::from_serialize),
        }
    }
}

/// The parts of a converted context other than the body; cheap to clone.
#[derive(Clone, Debug)]
struct EngineParts {
    headers: MjValue,
    query: MjValue,
    route: MjValue,
    delivery: MjValue,
    sns: MjValue,
}

impl EngineParts {
    fn with_body(&self, body: MjValue) -> MjValue {
        context! {
            body => body,
            headers => self.headers.clone(),
            query => self.query.clone(),
            route => self.route.clone(),
            delivery => self.delivery.clone(),
            sns => self.sns.clone(),
        }
    }
}

/// A [`Context`] being rendered: the context itself, and its whole
/// conversion for the engine, made when first needed.
#[derive(Debug)]
pub struct Prepared<'a> {
    context: &'a Context,
    engine_parts: OnceCell<EngineParts>,
    engine_value: OnceCell<MjValue>,
    /// Whether templates may be evaluated without the engine.
    direct: bool,
}

impl Prepared<'_> {
    /// The context for the engine, holding as much of the body as a
    /// template that reads `reads` needs.
    fn engine_value(&self, reads: &BodyReads) -> std::borrow::Cow<'_, MjValue> {
        match reads {
            BodyReads::Paths(paths) if self.direct => {
                let paths: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
                let body = convert_paths(&self.context.body, &paths);
                std::borrow::Cow::Owned(self.engine_parts().with_body(body))
            }
            _ => std::borrow::Cow::Borrowed(self.engine_value.get_or_init(|| {
                self.engine_parts()
                    .with_body(MjValue::from_serialize(&self.context.body))
            })),
        }
    }

    fn engine_parts(&self) -> &EngineParts {
        self.engine_parts
            .get_or_init(|| self.context.engine_parts())
    }

    /// The context, when templates may read it directly.
    fn direct(&self) -> Option<&Context> {
        self.direct.then_some(self.context)
    }
}

/// A template or expression that failed to compile.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// A string template with a syntax error.
    #[error("invalid template: {detail}")]
    Template {
        /// Where inside a value template the string is (empty for a plain
        /// string template).
        at: Vec<PathSegment>,
        /// minijinja's description of the problem.
        detail: String,
    },
    /// An expression (a `when`, or a lone `{{ expression }}` in a value
    /// template) with a syntax error.
    #[error("invalid expression: {detail}")]
    Expression {
        /// Where inside a value template the expression is (empty for a
        /// `when`).
        at: Vec<PathSegment>,
        /// minijinja's description of the problem.
        detail: String,
    },
}

impl TemplateError {
    /// Where inside a value template the error is; empty for strings and
    /// conditions.
    pub fn at(&self) -> &[PathSegment] {
        match self {
            TemplateError::Template { at, .. } | TemplateError::Expression { at, .. } => at,
        }
    }
}

/// One step into a value template: a map key or a list index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSegment {
    /// A key of a map.
    Key(String),
    /// An index into a list.
    Index(usize),
}

/// A template that failed while rendering one request.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{name}: {detail}")]
pub struct RenderError {
    /// The template's name: its place in the configuration.
    pub name: String,
    /// What went wrong, in minijinja's words.
    pub detail: String,
}

/// The templates of one configuration.
///
/// Templates hold an `Arc` of their engine; the environment inside is set
/// once, by [`EngineBuilder::finish`], after every template of the
/// configuration has been checked. It compiles each template the first
/// time it is asked for it, from the source the builder kept.
pub struct Engine {
    env: OnceLock<Environment<'static>>,
    /// Key templates again, where a missing value is an error.
    keys: OnceLock<Environment<'static>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compiled = self.env.get().map_or(0, |env| env.templates().count());
        f.debug_struct("Engine")
            .field("compiled", &compiled)
            .finish()
    }
}

impl Engine {
    fn env(&self, name: &str) -> Result<&Environment<'static>, RenderError> {
        Self::finished(&self.env, name)
    }

    fn keys(&self, name: &str) -> Result<&Environment<'static>, RenderError> {
        Self::finished(&self.keys, name)
    }

    fn finished<'a>(
        cell: &'a OnceLock<Environment<'static>>,
        name: &str,
    ) -> Result<&'a Environment<'static>, RenderError> {
        // Only a template rendered before its builder finished can get here,
        // which is a programming error; it is still reported, not a panic.
        cell.get().ok_or_else(|| RenderError {
            name: name.to_owned(),
            detail: "the template engine was used before it was finished".to_owned(),
        })
    }
}

/// Checks the templates of one configuration and keeps their sources for
/// the engine.
pub struct EngineBuilder {
    env: Environment<'static>,
    /// Where key templates (`dedupe_key`) are compiled: a missing value is
    /// an error there.
    keys: Environment<'static>,
    engine: Arc<Engine>,
    names: HashSet<String>,
    /// The engine's template of each distinct source, with what it reads:
    /// configurations repeat the same few templates across hundreds of
    /// routes, and each compiled template costs tens of kilobytes.
    compiled: HashMap<Source, Checked>,
    /// The templates also checked in `keys`.
    in_keys: HashSet<String>,
    /// The names of the filters both environments have, for suggestions.
    filters: Vec<&'static str>,
    /// What of the body the templates added since the last
    /// [`EngineBuilder::take_body_shape`] read.
    shape: BodyShape,
    /// Whether the templates compiled now may read `sns`: see
    /// [`EngineBuilder::set_sns_in_context`].
    sns_in_context: bool,
}

/// What the checks of one template found.
#[derive(Clone, Debug)]
struct Checked {
    /// The template's name in the engine.
    name: String,
    reads: BodyReads,
    /// Whether it reads `sns`, which only `sns` routes have.
    reads_sns: bool,
}

/// A template's source, as a text or as an expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Source {
    Text(String),
    Expression(String),
}

impl Source {
    /// What the engine compiles for it: a text as it is, an expression as
    /// a template that stores its value in [`VALUE_VAR`].
    fn engine_text(&self) -> String {
        match self {
            Source::Text(text) => text.clone(),
            Source::Expression(expr) => format!("{{% set {VALUE_VAR} = ({expr}) %}}"),
        }
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("templates", &self.names.len())
            .finish()
    }
}

impl EngineBuilder {
    /// Starts an environment with Jinja's builtins, `tojson` and `urldecode`.
    pub fn new() -> Self {
        let new_environment = || {
            let mut env = Environment::new();
            // Rendered text must match what the user wrote, including a final
            // newline from a YAML block scalar, exactly as a static string
            // does. (A lone expression is typed, and the whitespace around
            // it does not count: see [`lone_expression`].)
            env.set_keep_trailing_newline(true);
            // The output is JSON data or identifiers, never HTML.
            env.set_auto_escape_callback(|_| AutoEscape::None);
            env.set_debug(false);
            env.set_unknown_method_callback(python_method);
            env.set_fuel(Some(MAX_FUEL));
            for (name, original, oversize) in sized_filters() {
                env.add_filter(name, bounded_filter(name, original, oversize));
            }
            env
        };
        let mut env = new_environment();
        // A field of a missing object is undefined too, not an error:
        // `body.entry.id` on an event without `entry` renders as nothing,
        // and `when: body.entry.draft is defined` is false rather than a
        // 422 for every such event.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.add_filter("urldecode", urldecode);
        // Keys and the fields that say where a dispatch goes are rendered
        // where a missing or null value they print is an error, directly or
        // through a filter that would print it as text, so that such a
        // value cannot silently become `acme/site-` or the key `order-`
        // (see [`StringTemplate::render_present`]). Lookups chain as in the
        // main environment, so `is defined`, `default` and `if` work on
        // fields of missing objects too.
        let mut keys = new_environment();
        keys.set_undefined_behavior(UndefinedBehavior::Chainable);
        keys.set_formatter(|out, state, value| {
            refuse_missing(value)?;
            minijinja::escape_formatter(out, state, value)
        });
        let filters = add_filters_refusing_missing(&mut keys);
        EngineBuilder {
            env,
            keys,
            engine: Arc::new(Engine {
                env: OnceLock::new(),
                keys: OnceLock::new(),
            }),
            names: HashSet::new(),
            compiled: HashMap::new(),
            in_keys: HashSet::new(),
            filters,
            shape: BodyShape::default(),
            sns_in_context: true,
        }
    }

    /// The template of `source` for the field `name`: the one compiled
    /// before from the same source, or one checked now. The error is the
    /// description of a compile error.
    fn compile(&mut self, name: String, source: Source) -> Result<Compiled, String> {
        let engine = Arc::clone(&self.engine);
        let reused = |template: String, reads: BodyReads| Compiled {
            engine,
            name: name.clone(),
            template,
            reads,
        };
        if let Some(checked) = self.compiled.get(&source).cloned() {
            self.refuse_missing_sns(&checked)?;
            self.shape.add(&checked.reads);
            return Ok(reused(checked.name, checked.reads));
        }
        let (written, expression) = match &source {
            Source::Text(written) => (written.clone(), false),
            Source::Expression(written) => (written.clone(), true),
        };
        self.env
            .add_template_owned(name.clone(), source.engine_text())
            .map_err(|err| describe(&err, &written))?;
        let checked = self.check_compiled(&name, &written, expression);
        // The compiled template is dropped at once: the engine compiles it
        // again when a request first needs it (see the module's summary).
        self.env.remove_template(&name);
        let (reads, reads_sns) = checked?;
        let checked = Checked {
            name: name.clone(),
            reads,
            reads_sns,
        };
        self.refuse_missing_sns(&checked)?;
        self.shape.add(&checked.reads);
        self.compiled.insert(source, checked.clone());
        Ok(reused(checked.name, checked.reads))
    }

    /// Says whether the templates compiled from now on may read `sns`: only
    /// an `sns` route's requests carry an envelope, and elsewhere `sns` is
    /// always undefined, so a template that reads it renders nothing for
    /// every webhook.
    pub fn set_sns_in_context(&mut self, present: bool) {
        self.sns_in_context = present;
    }

    fn refuse_missing_sns(&self, checked: &Checked) -> Result<(), String> {
        if checked.reads_sns && !self.sns_in_context {
            return Err(
                "`sns` is set only on routes with `verify: sns`; on this route it is always empty"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Checks the template just added as `name` for names that exist
    /// nowhere, and says what of the body it reads and whether it reads
    /// `sns`.
    fn check_compiled(
        &self,
        name: &str,
        written: &str,
        expression: bool,
    ) -> Result<(BodyReads, bool), String> {
        if let Some(detail) = self.named_but_missing(written, expression) {
            return Err(detail);
        }
        if let Some(detail) = self.unknown_name(written, expression) {
            return Err(detail);
        }
        // minijinja's analysis of the names a template reads misreads
        // `set`, `with`, macros and blocks: it records a target before
        // reading its value (`{% set body = body.data %}` would read
        // nothing), forgets a name set inside an `if` once the branch ends,
        // and reads a macro before a later `set` the macro sees. Such
        // templates, rare in routes, read the whole body, which is always
        // right, and are not checked for unknown names, which would refuse
        // templates that work.
        if uses_statements_the_analysis_misreads(written) {
            return Ok((BodyReads::Whole, false));
        }
        let template = self
            .env
            .get_template(name)
            .map_err(|err| describe(&err, written))?;
        if let Some(detail) = unknown_variable(&template, &self.env) {
            return Err(detail);
        }
        let reads_sns = template.undeclared_variables(false).contains("sns");
        Ok((BodyReads::of(&template), reads_sns))
    }

    /// What of the body the templates compiled since the last call read,
    /// together: the shape a route's body is parsed to.
    pub fn take_body_shape(&mut self) -> BodyShape {
        std::mem::take(&mut self.shape)
    }

    /// Compiles a string template named `name`.
    pub fn string(&mut self, name: &str, source: &str) -> Result<StringTemplate, TemplateError> {
        self.string_at(name, source, &[])
    }

    /// Compiles a condition (a Jinja expression) named `name`.
    pub fn condition(&mut self, name: &str, source: &str) -> Result<Condition, TemplateError> {
        let expr = self.expression(name, source, &[])?;
        Ok(Condition {
            expr,
            direct: direct::Condition::parse(source),
        })
    }

    /// Compiles a value template; strings in it are templates with typed
    /// rendering. Every compile error in the tree is returned, each with its
    /// place inside the value.
    pub fn value(
        &mut self,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<ValueTemplate, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let mut at = Vec::new();
        let root = self.node(name, value, &mut at, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let static_value = root.static_value();
        Ok(ValueTemplate { root, static_value })
    }

    /// Freezes the environments; the templates checked so far become
    /// usable, each compiled when first rendered. Each template holds the
    /// environments, which live as long as they do.
    pub fn finish(self) {
        let EngineBuilder {
            mut env,
            mut keys,
            compiled,
            in_keys,
            engine,
            ..
        } = self;
        // What each environment compiles for a template's name.
        let sources: HashMap<String, String> = compiled
            .into_iter()
            .map(|(source, checked)| (checked.name, source.engine_text()))
            .collect();
        let key_sources: HashMap<String, String> = sources
            .iter()
            .filter(|(name, _)| in_keys.contains(*name))
            .map(|(name, text)| (name.clone(), text.clone()))
            .collect();
        env.set_loader(move |name| Ok(sources.get(name).cloned()));
        keys.set_loader(move |name| Ok(key_sources.get(name).cloned()));
        // The cells are new and only set here, so they cannot already be full.
        let _ = engine.env.set(env);
        let _ = engine.keys.set(keys);
    }

    fn unique_name(&mut self, name: &str) -> String {
        let mut candidate = name.to_owned();
        let mut n = 2;
        while !self.names.insert(candidate.clone()) {
            candidate = format!("{name} ({n})");
            n += 1;
        }
        candidate
    }

    /// Compiles a string template that may only use values the request has
    /// (a dedupe key, and the fields that say where a dispatch goes), named
    /// `name`; it is rendered with [`StringTemplate::render_present`].
    pub fn strict_string(
        &mut self,
        name: &str,
        source: &str,
    ) -> Result<StringTemplate, TemplateError> {
        let template = self.string_at(name, source, &[])?;
        if let Some(compiled) = &template.compiled
            && !self.in_keys.contains(&compiled.template)
        {
            // Compiled here only to find its errors, as in `compile`.
            self.keys
                .add_template_owned(compiled.template.clone(), source.to_owned())
                .map_err(|err| TemplateError::Template {
                    at: Vec::new(),
                    detail: describe(&err, source),
                })?;
            self.keys.remove_template(&compiled.template);
            self.in_keys.insert(compiled.template.clone());
        }
        Ok(template)
    }

    fn string_at(
        &mut self,
        name: &str,
        source: &str,
        at: &[PathSegment],
    ) -> Result<StringTemplate, TemplateError> {
        if is_plain_text(source) {
            return Ok(StringTemplate {
                source: source.to_owned(),
                compiled: None,
                direct: None,
            });
        }
        let invalid = |detail: String| TemplateError::Template {
            at: at.to_vec(),
            detail,
        };
        // Every template of the file is compiled into one environment, under
        // a name like `routes[0].dispatch[0].client_payload.key`, so one
        // could print another route's, secrets substituted in and all.
        if let Some(keyword) = pulls_in_another_template(source) {
            return Err(invalid(format!(
                "`{keyword}` is not available: a template cannot use another template"
            )));
        }
        let name = self.unique_name(name);
        let compiled = self
            .compile(name, Source::Text(source.to_owned()))
            .map_err(invalid)?;
        Ok(StringTemplate {
            source: source.to_owned(),
            compiled: Some(compiled),
            direct: direct::Text::parse(source),
        })
    }

    fn expression(
        &mut self,
        name: &str,
        source: &str,
        at: &[PathSegment],
    ) -> Result<Expr, TemplateError> {
        let invalid = |detail: String| TemplateError::Expression {
            at: at.to_vec(),
            detail,
        };
        // Parsing the expression on its own first gives the user an error
        // about what they wrote rather than about the wrapper, and makes sure
        // the source is exactly one expression before it is spliced in.
        if let Err(err) = self.env.compile_expression(source) {
            return Err(invalid(describe(&err, source)));
        }
        let name = self.unique_name(name);
        let compiled = self
            .compile(name, Source::Expression(source.to_owned()))
            .map_err(invalid)?;
        Ok(Expr {
            source: source.to_owned(),
            direct: direct::VarPath::parse(source),
            compiled,
        })
    }

    /// A filter, test or method the template names, in any branch, that
    /// does not exist, or a header it looks up by a name no request has,
    /// described. minijinja looks names up only when it evaluates them, so
    /// a misspelt `| lenght` behind `and`, an `if` or a `for` compiles,
    /// passes `check`, and then fails every webhook that reaches it. The
    /// names are read from the template's tokens, and each is asked of the
    /// environment itself.
    fn named_but_missing(&self, source: &str, expression: bool) -> Option<String> {
        let tags = tags::of_source(source, expression);
        if let Some(detail) = tags::header_misuse(&tags) {
            return Some(detail);
        }
        let calls = tags::named_calls(&tags);
        let fails_with = |probe: String, kind: ErrorKind| {
            self.env
                .compile_expression(&probe)
                .and_then(|expr| expr.eval(context! {}))
                .is_err_and(|err| err.kind() == kind)
        };
        if let Some(filter) = calls
            .filters
            .iter()
            .find(|filter| fails_with(format!("none | {filter}"), ErrorKind::UnknownFilter))
        {
            return Some(format!(
                "unknown filter `{filter}`{}",
                did_you_mean(filter, &self.filters)
            ));
        }
        if let Some(test) = calls
            .tests
            .iter()
            .find(|test| fails_with(format!("none is {test}"), ErrorKind::UnknownTest))
        {
            return Some(format!("unknown test `{test}`"));
        }
        if let Some(method) = calls
            .methods
            .iter()
            .find(|method| !PYTHON_METHODS.contains(&method.as_str()))
        {
            return Some(format!(
                "no method `{method}`{} (the Python methods a template may call are {})",
                did_you_mean(method, PYTHON_METHODS),
                PYTHON_METHODS.join(", ")
            ));
        }
        None
    }

    /// A filter, test or function the template names that does not exist,
    /// described, as evaluation finds it: the template is evaluated once
    /// against a request with nothing in it, undefined values chaining
    /// through attribute lookups as they always do, so that evaluation
    /// reaches the names; any other failure of that empty request says
    /// nothing about the template and is ignored. (Most such names are
    /// found first, in every branch, by [`Self::named_but_missing`].)
    fn unknown_name(&self, source: &str, expression: bool) -> Option<String> {
        // Names starting with `__relay_` are the relay's own (the variable
        // a compiled expression stores its value in): not a filter's or a
        // filter name's in quotes. A field named so is fine.
        let calls_own_name = source
            .match_indices("__relay_")
            .any(|(at, _)| source[..at].trim_end().ends_with(['|', '\'', '"']));
        if calls_own_name {
            return Some("names starting with `__relay_` are the relay's own".to_owned());
        }
        let result = if expression {
            self.env
                .compile_expression(source)
                .and_then(|expr| expr.eval(context! {}).map(drop))
        } else {
            self.env.render_str(source, context! {}).map(drop)
        };
        match result {
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::UnknownFilter
                        | ErrorKind::UnknownTest
                        | ErrorKind::UnknownFunction
                        | ErrorKind::UnknownMethod
                ) =>
            {
                Some(describe(&err, source))
            }
            _ => None,
        }
    }

    fn node(
        &mut self,
        name: &str,
        value: &serde_json::Value,
        at: &mut Vec<PathSegment>,
        errors: &mut Vec<TemplateError>,
    ) -> Node {
        match value {
            serde_json::Value::String(text) => {
                let child = child_name(name, at);
                let compiled = match lone_expression(text) {
                    Some(expr) => self.expression(&child, expr, at).map(Node::Expr),
                    None => self.string_at(&child, text, at).map(|t| match t.compiled {
                        None => Node::Static(serde_json::Value::String(t.source)),
                        Some(_) => Node::Text(t),
                    }),
                };
                compiled.unwrap_or_else(|err| {
                    errors.push(err);
                    Node::Static(serde_json::Value::Null)
                })
            }
            serde_json::Value::Array(items) => {
                let mut nodes = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    at.push(PathSegment::Index(index));
                    nodes.push(self.node(name, item, at, errors));
                    at.pop();
                }
                Node::Array(nodes)
            }
            serde_json::Value::Object(map) => {
                let mut entries = Vec::with_capacity(map.len());
                for (key, item) in map {
                    at.push(PathSegment::Key(key.clone()));
                    entries.push((key.clone(), self.node(name, item, at, errors)));
                    at.pop();
                }
                Node::Object(entries)
            }
            scalar => Node::Static(scalar.clone()),
        }
    }
}

/// The name of a string inside a value template, e.g. `base.entry[0]`.
fn child_name(base: &str, at: &[PathSegment]) -> String {
    let mut name = base.to_owned();
    for segment in at {
        match segment {
            PathSegment::Key(key) => {
                name.push('.');
                name.push_str(key);
            }
            PathSegment::Index(index) => {
                name.push_str(&format!("[{index}]"));
            }
        }
    }
    name
}

/// Whether a string contains no template syntax at all.
fn is_plain_text(source: &str) -> bool {
    !(source.contains("{{") || source.contains("{%") || source.contains("{#"))
}

/// Returns the expression of a string that is exactly one `{{ expression }}`
/// (surrounding whitespace allowed), or `None` for any other string.
pub fn lone_expression(source: &str) -> Option<&str> {
    let inner = source.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    // `{{ a }} and {{ b }}` also starts and ends with braces; it is text.
    if !is_one_expression(inner) {
        return None;
    }
    // Whitespace-control markers sit directly against the braces.
    let inner = inner.strip_prefix(['-', '+']).unwrap_or(inner);
    let inner = inner.strip_suffix(['-', '+']).unwrap_or(inner);
    let inner = inner.trim();
    (!inner.is_empty()).then_some(inner)
}

/// Whether the text between a string's outer `{{` and `}}` is one
/// expression: no brace closes it early and no tag or comment starts in it.
/// Braces of map literals (`{'id': body.id, 'meta': {'v': 1}}`) and
/// anything inside string literals are part of the expression, as
/// minijinja's lexer reads them.
fn is_one_expression(inner: &str) -> bool {
    let mut depth = 0usize;
    let mut quote = None;
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(open) = quote {
            if c == '\\' {
                chars.next();
            } else if c == open {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '{' if depth == 0 && matches!(chars.peek(), Some('{' | '%' | '#')) => return false,
            '{' => depth += 1,
            '}' if depth == 0 => return false,
            '}' => depth -= 1,
            _ => {}
        }
    }
    depth == 0 && quote.is_none()
}

/// A variable `template` reads that no request can have, described.
/// Undefined values are lenient (decision 11) because a sender may leave a
/// field out; but the context always holds the same few names, and any
/// other is a mistake that would quietly render nothing for every webhook:
/// most often text meant literally but not quoted (`when: body.event ==
/// entry.publish`), or a misspelt `body`.
fn unknown_variable(
    template: &minijinja::Template<'_, '_>,
    env: &Environment<'_>,
) -> Option<String> {
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|variable| {
            !CONTEXT_NAMES.contains(&variable.as_str())
                && !env.globals().any(|(global, _)| global == variable)
        })
        .collect();
    unknown.sort();
    let first = unknown.first()?;
    let hint = match crate::text::closest(first, CONTEXT_NAMES, 0.8) {
        Some(known) => format!("did you mean `{known}`?"),
        None => format!("text meant literally is quoted, as in '{first}'"),
    };
    Some(format!(
        "`{first}` is not a variable (templates see {}); {hint}",
        CONTEXT_NAMES.join(", ")
    ))
}

/// The most steps (instructions of minijinja's machine) one rendering may
/// take. A loop over the request's data (`range(body.n)`, nested loops)
/// would otherwise hold an HTTP worker for as long as the sender likes; a
/// template looping over a thousand S3 records takes some tens of
/// thousands.
const MAX_FUEL: u64 = 2_000_000;

/// The longest text one template may render to. GitHub takes at most
/// 64 KB in a dispatch, so nothing longer could be sent; the bound keeps a
/// loop over the request's data from building gigabytes first.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// Renders `template` into text of at most [`MAX_RENDERED_BYTES`].
fn render_bounded(
    template: &minijinja::Template<'_, '_>,
    ctx: impl serde::Serialize,
) -> Result<String, minijinja::Error> {
    struct Bounded(Vec<u8>);
    impl std::io::Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
                return Err(std::io::Error::other("too long"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Bounded(Vec::new());
    template.render_captured_to(ctx, &mut out)?;
    // minijinja writes whole UTF-8 strings, so the text is whole too.
    Ok(String::from_utf8(out.0)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Describes a minijinja error as `kind: detail`, with the line when the
/// template has several, followed by the chain of causes.
fn describe(err: &minijinja::Error, source: &str) -> String {
    match err.kind() {
        ErrorKind::WriteFailure => {
            return format!(
                "renders to more than {} KiB of text (GitHub takes at most 64 KB in a dispatch)",
                MAX_RENDERED_BYTES / 1024
            );
        }
        ErrorKind::OutOfFuel => {
            return format!(
                "takes more than {MAX_FUEL} steps to render: a loop over the request's data runs too long"
            );
        }
        _ => {}
    }
    let mut text = match err.detail() {
        Some(detail) => format!("{}: {}", err.kind(), detail),
        None => err.kind().to_string(),
    };
    if source.contains('\n')
        && let Some(line) = err.line()
    {
        text.push_str(&format!(" (line {line} of the template)"));
    }
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Adds to `keys` every builtin filter but `default` (`d`), which exists
/// to stand in for a missing value, and the relay's `urldecode`: each
/// refuses a missing or null value it would otherwise print as nothing,
/// `none`, `0` or `[]`, then calls the original. Answers the names of all
/// filters, `default` included.
fn add_filters_refusing_missing(keys: &mut Environment<'static>) -> Vec<&'static str> {
    macro_rules! originals {
        ($($name:ident),* $(,)?) => {
            [$((stringify!($name), MjValue::from_function(minijinja::filters::$name))),*]
        };
    }
    let originals = originals!(
        safe, escape, upper, lower, title, capitalize, replace, length, dictsort, items, reverse,
        trim, join, split, lines, abs, int, float, sum, attr, round, first, last, min, max, sort,
        list, string, bool, tojson, select, selectattr, reject, rejectattr, map, groupby, unique,
        chain, zip, pprint, format, urlencode,
    )
    .into_iter()
    .chain(sized_filters().map(|(name, original, oversize)| {
        let bounded = bounded_filter(name, original, oversize);
        (name, MjValue::from_function(bounded))
    }))
    .chain([
        ("e", MjValue::from_function(minijinja::filters::escape)),
        ("count", MjValue::from_function(minijinja::filters::length)),
        ("urldecode", MjValue::from_function(urldecode)),
    ]);
    // `default` is left as it is, in both environments.
    let mut filters = vec!["default", "d"];
    for (name, original) in originals {
        filters.push(name);
        // The filters that drop missing values are left to do so; what
        // they give is checked where it is printed.
        let drops_missing = matches!(name, "select" | "reject" | "selectattr" | "rejectattr");
        // Those that print their arguments or their list's items.
        let prints_arguments = matches!(name, "replace" | "format" | "join" | "indent");
        let prints_items = name == "join";
        keys.add_filter(
            name,
            move |state: &minijinja::State,
                  value: MjValue,
                  rest: minijinja::value::Rest<MjValue>| {
                refuse_missing(&value)?;
                if !drops_missing {
                    for argument in rest.iter() {
                        // A `none` written as an argument (`batch(3,
                        // none)`) is a value; an undefined one is not.
                        if prints_arguments || argument.is_undefined() {
                            refuse_missing(argument)?;
                        }
                    }
                }
                // A list built from missing values (`[body.a, body.b] |
                // join(':')`) prints them as nothing too; so does one
                // that another filter gives as an iterable
                // (`body.ids | reverse`), which is read into a list
                // here so that it is checked and joined alike.
                let value = if prints_items
                    && matches!(
                        value.kind(),
                        minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Iterable
                    ) {
                    let items: Vec<MjValue> = value.try_iter()?.collect();
                    for item in &items {
                        refuse_missing(item)?;
                    }
                    MjValue::from(items)
                } else {
                    value
                };
                let mut args = Vec::with_capacity(rest.len() + 1);
                args.push(value);
                args.extend(rest.iter().cloned());
                original.call(state, &args)
            },
        );
    }
    filters
}

/// An undefined or null value is an error where it would be printed in a
/// strict field.
fn refuse_missing(value: &MjValue) -> Result<(), minijinja::Error> {
    if value.is_undefined() || value.is_none() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "a value the request does not have (or a null) would be printed",
        ));
    }
    Ok(())
}

/// `; did you mean `x`?` for the known name closest to a misspelt one,
/// when one is close enough.
fn did_you_mean<S: AsRef<str>>(name: &str, known: &[S]) -> String {
    crate::text::closest(name, known, 0.8)
        .map(|candidate| format!("; did you mean `{candidate}`?"))
        .unwrap_or_default()
}

/// The names [`python_method`] answers.
const PYTHON_METHODS: &[&str] = &[
    "items",
    "keys",
    "values",
    "get",
    "lower",
    "upper",
    "title",
    "capitalize",
    "replace",
    "split",
    "strip",
    "startswith",
    "endswith",
];

/// The methods of Python's `dict` and `str` that Jinja2 templates call
/// (`body.entry.items()`, `body.name.startswith('draft-')`), which
/// minijinja leaves to the application. Each is answered by the filter of
/// the same meaning, so that in strict fields it refuses a missing value as
/// the filter does.
fn python_method(
    state: &minijinja::State,
    value: &MjValue,
    method: &str,
    args: &[MjValue],
) -> Result<MjValue, minijinja::Error> {
    use minijinja::value::{ValueKind, from_args};
    if !PYTHON_METHODS.contains(&method) {
        // Whatever the value: so that the check at load, which sees only
        // missing values, finds a misspelt method.
        return Err(minijinja::Error::new(
            ErrorKind::UnknownMethod,
            format!(
                "no method `{method}`; the Python methods a template may call are {}",
                PYTHON_METHODS.join(", ")
            ),
        ));
    }
    // A method of a missing value is missing too, as its fields are: it
    // renders as nothing, and strict fields refuse it.
    if value.is_undefined() || value.is_none() {
        return Ok(MjValue::UNDEFINED);
    }
    let with_args = |filter: &str| {
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(value.clone());
        all.extend_from_slice(args);
        state.apply_filter(filter, &all)
    };
    match (value.kind(), method) {
        (ValueKind::Map, "items") => with_args("items"),
        (ValueKind::Map, "keys") => {
            let () = from_args(args)?;
            Ok(MjValue::from(value.try_iter()?.collect::<Vec<_>>()))
        }
        (ValueKind::Map, "values") => {
            let () = from_args(args)?;
            let values = value
                .try_iter()?
                .map(|key| value.get_item(&key))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(MjValue::from(values))
        }
        (ValueKind::Map, "get") => {
            let (key, default): (MjValue, Option<MjValue>) = from_args(args)?;
            let found = value.get_item(&key)?;
            Ok(if found.is_undefined() {
                default.unwrap_or_else(|| MjValue::from(()))
            } else {
                found
            })
        }
        (ValueKind::String, "lower" | "upper" | "title" | "capitalize" | "replace" | "split") => {
            with_args(method)
        }
        (ValueKind::String, "strip") => with_args("trim"),
        (ValueKind::String, "startswith" | "endswith") => {
            let text = value.as_str().unwrap_or_default();
            let (affixes,): (MjValue,) = from_args(args)?;
            // Python takes one string or a tuple of them; a missing one is
            // no affix, and matches nothing.
            let candidates: Vec<MjValue> = match affixes.kind() {
                ValueKind::String => vec![affixes],
                ValueKind::Seq | ValueKind::Iterable => affixes.try_iter()?.collect(),
                ValueKind::Undefined | ValueKind::None => Vec::new(),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("{method} takes a string or a list of strings"),
                    ));
                }
            };
            Ok(MjValue::from(candidates.iter().any(|affix| {
                affix.as_str().is_some_and(|affix| {
                    if method == "startswith" {
                        text.starts_with(affix)
                    } else {
                        text.ends_with(affix)
                    }
                })
            })))
        }
        _ => Err(minijinja::Error::new(
            ErrorKind::UnknownMethod,
            format!("{} has no method `{method}`", value.kind()),
        )),
    }
}

/// The builtin filters whose arguments say how much they build: `indent`'s
/// width, `slice`'s and `batch`'s count, each with what a size given to
/// it would make when that is more than a rendering may hold. A size taken
/// from the request (`indent(body.depth)`) would otherwise have one filter
/// allocate gigabytes at once, before any bound on steps or output applies.
fn sized_filters() -> [(&'static str, MjValue, Oversize); 3] {
    [
        (
            "indent",
            MjValue::from_function(minijinja::filters::indent),
            indent_oversize,
        ),
        (
            "slice",
            MjValue::from_function(minijinja::filters::slice),
            count_oversize,
        ),
        (
            "batch",
            MjValue::from_function(minijinja::filters::batch),
            count_oversize,
        ),
    ]
}

/// What a filter given the size `.1` on the value `.0` would make, when
/// that is more than a rendering may hold.
type Oversize = fn(&MjValue, i64) -> Option<String>;

/// An `indent` whose result would pass [`MAX_RENDERED_BYTES`].
fn indent_oversize(value: &MjValue, width: i64) -> Option<String> {
    let text = value.as_str().unwrap_or_default();
    let lines = text.matches('\n').count() + 1;
    usize::try_from(width)
        .ok()
        .and_then(|width| width.checked_mul(lines))
        .and_then(|added| added.checked_add(text.len()))
        .is_none_or(|total| total > MAX_RENDERED_BYTES)
        .then(|| format!("a text of more than {MAX_RENDERED_BYTES} bytes"))
}

/// The most slices or batches `slice` and `batch` may make, and the most
/// items a batch may be filled up to.
const MAX_FILTER_COUNT: i64 = 10_000;

/// A `slice` or `batch` count above [`MAX_FILTER_COUNT`].
fn count_oversize(_: &MjValue, count: i64) -> Option<String> {
    (count > MAX_FILTER_COUNT).then(|| format!("more than {MAX_FILTER_COUNT} items"))
}

/// `original`, refusing any size among its arguments that `oversize`
/// finds too large.
fn bounded_filter(
    name: &'static str,
    original: MjValue,
    oversize: Oversize,
) -> impl Fn(
    &minijinja::State,
    MjValue,
    minijinja::value::Rest<MjValue>,
) -> Result<MjValue, minijinja::Error>
+ Send
+ Sync
+ 'static {
    move |state, value, rest| {
        // Positional numbers and the values of keyword arguments
        // (`indent(width=8)`); the flags `indent` takes are not numbers.
        let mut given = Vec::new();
        for argument in rest.iter() {
            match argument.kind() {
                minijinja::value::ValueKind::Map => given.extend(
                    argument
                        .try_iter()
                        .into_iter()
                        .flatten()
                        .filter_map(|key| argument.get_item(&key).ok()),
                ),
                _ => given.push(argument.clone()),
            }
        }
        let sizes = given
            .iter()
            .filter(|v| v.kind() == minijinja::value::ValueKind::Number)
            .filter_map(|v| i64::try_from(v.clone()).ok());
        for size in sizes {
            if let Some(made) = oversize(&value, size) {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("`{name}({size})` would make {made}"),
                ));
            }
        }
        let mut arguments = Vec::with_capacity(rest.len() + 1);
        arguments.push(value);
        arguments.extend(rest.iter().cloned());
        original.call(state, &arguments)
    }
}

/// The `urldecode` filter: form rules, so `+` is a space, then percent
/// decoding; bytes that are not UTF-8 are replaced rather than failing the
/// whole render.
fn urldecode(value: MjValue) -> String {
    if value.is_undefined() || value.is_none() {
        return String::new();
    }
    let text = match value.as_str() {
        Some(text) => text.replace('+', " "),
        None => value.to_string().replace('+', " "),
    };
    percent_encoding::percent_decode_str(&text)
        .decode_utf8_lossy()
        .into_owned()
}

#[derive(Clone)]
struct Compiled {
    engine: Arc<Engine>,
    /// The field it was written in (`routes[0].dispatch[0].ref`), which
    /// its errors name.
    name: String,
    /// The engine's template: the first field written with the same source.
    template: String,
    /// What of the body the template reads.
    reads: BodyReads,
}

/// The parts of the request body a template reads, found by minijinja's
/// static analysis, so that only those are converted for the engine.
#[derive(Clone, Debug, PartialEq)]
enum BodyReads {
    /// The template uses the body as a whole (iterates it, subscripts it,
    /// hands it to a filter...).
    Whole,
    /// Only these chains of attributes, e.g. `["event"]` for `body.event`.
    Paths(Vec<Vec<String>>),
}

impl BodyReads {
    /// Reads the analysis of a compiled template: the variables it uses,
    /// with chains of attribute lookups spelt out (`body.entry.id`).
    fn of(template: &minijinja::Template<'_, '_>) -> BodyReads {
        let mut paths = Vec::new();
        for variable in template.undeclared_variables(true) {
            // `debug()` prints the whole context, body included.
            if variable == "debug" {
                return BodyReads::Whole;
            }
            let mut parts = variable.split('.');
            if parts.next() != Some("body") {
                continue;
            }
            let mut path: Vec<String> = parts.map(str::to_owned).collect();
            // The analysis spells `body.entry.items()` as the attribute
            // `body.entry.items`: a method reads its whole object. (A key
            // that happens to share a method's name makes its object read
            // whole, which is never wrong.)
            if path
                .last()
                .is_some_and(|last| PYTHON_METHODS.contains(&last.as_str()))
            {
                path.pop();
            }
            if path.is_empty() {
                return BodyReads::Whole;
            }
            paths.push(path);
        }
        BodyReads::Paths(paths).sorted()
    }

    /// The same reads in a stable order (the analysis returns a set).
    fn sorted(self) -> BodyReads {
        match self {
            BodyReads::Paths(mut paths) => {
                paths.sort();
                BodyReads::Paths(paths)
            }
            whole => whole,
        }
    }
}

/// The parts of a request body that templates read, as a tree of object
/// keys. A body parsed to a shape keeps, in every object on the way, only
/// the keys the tree names; a value the tree ends on, or that is not an
/// object, is kept whole. That is what `convert_paths` hands the engine,
/// so templates render the same from the shaped body as from the whole one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyShape {
    /// The whole value at this point is read.
    pub whole: bool,
    /// The keys read inside the value at this point, when it is an object.
    pub keys: BTreeMap<String, BodyShape>,
}

impl BodyShape {
    /// A shape that keeps the whole body.
    pub fn whole() -> BodyShape {
        BodyShape {
            whole: true,
            keys: BTreeMap::new(),
        }
    }

    fn add(&mut self, reads: &BodyReads) {
        match reads {
            BodyReads::Whole => self.whole = true,
            BodyReads::Paths(paths) => {
                for path in paths {
                    let mut node = &mut *self;
                    for key in path {
                        node = node.keys.entry(key.clone()).or_default();
                    }
                    node.whole = true;
                }
            }
        }
    }
}

/// Converts the parts of `value` that `paths` reach: maps keep only the
/// keys on a path, and whatever a path ends on (or cannot go through) is
/// converted whole.
fn convert_paths(value: &serde_json::Value, paths: &[&[String]]) -> MjValue {
    let serde_json::Value::Object(map) = value else {
        return MjValue::from_serialize(value);
    };
    if paths.iter().any(|path| path.is_empty()) {
        return MjValue::from_serialize(value);
    }
    let mut partial: BTreeMap<String, MjValue> = BTreeMap::new();
    for (index, path) in paths.iter().enumerate() {
        let key = &path[0];
        if partial.contains_key(key) {
            continue;
        }
        let Some(child) = map.get(key) else { continue };
        let rests: Vec<&[String]> = paths[index..]
            .iter()
            .filter(|other| &other[0] == key)
            .map(|other| &other[1..])
            .collect();
        partial.insert(key.clone(), convert_paths(child, &rests));
    }
    MjValue::from(partial)
}

impl Compiled {
    fn error(&self, err: &minijinja::Error, source: &str) -> RenderError {
        RenderError {
            name: self.name.clone(),
            detail: describe(err, source),
        }
    }
}

/// A compiled string template.
#[derive(Clone)]
pub struct StringTemplate {
    source: String,
    compiled: Option<Compiled>,
    /// The same template for direct evaluation, when it is that simple.
    direct: Option<direct::Text>,
}

impl fmt::Debug for StringTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StringTemplate").field(&self.source).finish()
    }
}

impl StringTemplate {
    /// Renders the template for one request.
    #[cfg(test)]
    pub fn render(&self, ctx: &Context) -> Result<String, RenderError> {
        self.render_prepared(&ctx.prepare())
    }

    /// Renders the template from an already prepared context.
    pub fn render_prepared(&self, ctx: &Prepared) -> Result<String, RenderError> {
        let Some(compiled) = &self.compiled else {
            return Ok(self.source.clone());
        };
        if let (Some(direct), Some(context)) = (&self.direct, ctx.direct())
            && let Some(text) = direct.render(context)
        {
            return Ok(text);
        }
        let env = compiled.engine.env(&compiled.name)?;
        env.get_template(&compiled.template)
            .and_then(|template| {
                render_bounded(&template, ctx.engine_value(&compiled.reads).as_ref())
            })
            .map_err(|err| compiled.error(&err, &self.source))
    }

    /// Renders a template compiled with [`EngineBuilder::strict_string`] as
    /// a key: `None` when it uses a value the request does not have, or
    /// renders to nothing. Printed as nothing, a missing value would make
    /// every such request's key the same text (`order-` for
    /// `order-{{ body.id }}`), and each one after the first would be
    /// dropped as a duplicate.
    pub fn render_key(&self, ctx: &Context) -> Result<Option<String>, RenderError> {
        Ok(self
            .render_present(&ctx.prepare())?
            .filter(|key| !key.is_empty()))
    }

    /// Renders a template compiled with [`EngineBuilder::strict_string`]:
    /// `None` when it prints a value the request does not have, or a
    /// `null`, directly or through a filter (see [`EngineBuilder::new`]).
    /// Joining with `~` and looping with `for` are not caught.
    pub fn render_present(&self, ctx: &Prepared) -> Result<Option<String>, RenderError> {
        let Some(compiled) = &self.compiled else {
            return Ok(Some(self.source.clone()));
        };
        if let (Some(direct), Some(context)) = (&self.direct, ctx.direct())
            && let Some(text) = direct.render_present(context)
        {
            return Ok(text);
        }
        let env = compiled.engine.keys(&compiled.name)?;
        let rendered = env.get_template(&compiled.template).and_then(|template| {
            render_bounded(&template, ctx.engine_value(&compiled.reads).as_ref())
        });
        match rendered {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == ErrorKind::UndefinedError => Ok(None),
            Err(err) => Err(compiled.error(&err, &self.source)),
        }
    }

    /// The error of a [`StringTemplate::render_present`] that found a value
    /// missing.
    pub fn missing_value(&self) -> RenderError {
        RenderError {
            name: self
                .compiled
                .as_ref()
                .map_or_else(String::new, |compiled| compiled.name.clone()),
            detail: "it prints a value the request does not have, or a null; test it with \
                     `is defined` and `is not none`, or give it a `| default(...)` (`default(..., true)` \
                     also replaces a null)"
                .to_owned(),
        }
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text, when the template contains no template syntax.
    pub fn is_static(&self) -> Option<&str> {
        match self.compiled {
            None => Some(&self.source),
            Some(_) => None,
        }
    }
}

#[derive(Clone)]
struct Expr {
    source: String,
    compiled: Compiled,
    /// The expression as a plain variable path, when it is one.
    direct: Option<direct::VarPath>,
}

impl Expr {
    /// The expression's value as JSON, directly when it is a plain path.
    fn value(&self, ctx: &Prepared) -> Result<serde_json::Value, RenderError> {
        if let (Some(path), Some(context)) = (&self.direct, ctx.direct())
            && let Some(value) = path.value(context)
        {
            return Ok(value);
        }
        let value = self.eval(ctx)?;
        serde_json::to_value(&value).map_err(|err| RenderError {
            name: self.compiled.name.clone(),
            detail: format!("the value cannot be represented as JSON: {err}"),
        })
    }

    fn eval(&self, ctx: &Prepared) -> Result<MjValue, RenderError> {
        let compiled = &self.compiled;
        let env = compiled.engine.env(&compiled.name)?;
        let template = env
            .get_template(&compiled.template)
            .map_err(|err| compiled.error(&err, &self.source))?;
        let captured = template
            .render_captured(ctx.engine_value(&compiled.reads).as_ref())
            .map_err(|err| compiled.error(&err, &self.source))?;
        Ok(captured
            .state()
            .lookup(VALUE_VAR)
            .unwrap_or(MjValue::UNDEFINED))
    }
}

/// A route's `when`: a Jinja expression judged by Jinja truthiness.
#[derive(Clone)]
pub struct Condition {
    expr: Expr,
    /// The same condition for direct evaluation, when it only compares a
    /// field with string constants.
    direct: Option<direct::Condition>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.expr.source).finish()
    }
}

impl Condition {
    /// Evaluates the condition for one request.
    #[cfg(test)]
    pub fn eval(&self, ctx: &Context) -> Result<bool, RenderError> {
        self.eval_prepared(&ctx.prepare())
    }

    /// Evaluates the condition from an already prepared context.
    pub fn eval_prepared(&self, ctx: &Prepared) -> Result<bool, RenderError> {
        if let (Some(direct), Some(context)) = (&self.direct, ctx.direct())
            && let Some(value) = direct.eval(context)
        {
            return Ok(value);
        }
        Ok(self.expr.eval(ctx)?.is_true())
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.expr.source
    }
}

#[derive(Clone)]
enum Node {
    Static(serde_json::Value),
    Text(StringTemplate),
    Expr(Expr),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn static_value(&self) -> Option<serde_json::Value> {
        match self {
            Node::Static(value) => Some(value.clone()),
            Node::Text(_) | Node::Expr(_) => None,
            Node::Array(items) => items.iter().map(Node::static_value).collect(),
            Node::Object(entries) => entries
                .iter()
                .map(|(key, node)| Some((key.clone(), node.static_value()?)))
                .collect::<Option<serde_json::Map<_, _>>>()
                .map(serde_json::Value::Object),
        }
    }

    fn render(&self, ctx: &Prepared) -> Result<serde_json::Value, RenderError> {
        Ok(match self {
            Node::Static(value) => value.clone(),
            Node::Text(template) => serde_json::Value::String(template.render_prepared(ctx)?),
            Node::Expr(expr) => expr.value(ctx)?,
            Node::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|item| item.render(ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Object(entries) => {
                let mut map = serde_json::Map::with_capacity(entries.len());
                for (key, node) in entries {
                    map.insert(key.clone(), node.render(ctx)?);
                }
                serde_json::Value::Object(map)
            }
        })
    }

    fn fmt_source(&self) -> serde_json::Value {
        match self {
            Node::Static(value) => value.clone(),
            Node::Text(template) => serde_json::Value::String(template.source.clone()),
            Node::Expr(expr) => serde_json::Value::String(format!("{{{{ {} }}}}", expr.source)),
            Node::Array(items) => items.iter().map(Node::fmt_source).collect(),
            Node::Object(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(key, node)| (key.clone(), node.fmt_source()))
                    .collect(),
            ),
        }
    }
}

/// A compiled tree of values whose strings are templates with typed
/// rendering: a string that is exactly one `{{ expression }}` yields the
/// expression's value with its JSON type, any other string yields a string,
/// other scalars pass through and maps and lists render recursively. Map keys
/// are not templates.
#[derive(Clone)]
pub struct ValueTemplate {
    root: Node,
    static_value: Option<serde_json::Value>,
}

impl fmt::Debug for ValueTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueTemplate")
            .field(&self.root.fmt_source())
            .finish()
    }
}

impl ValueTemplate {
    /// Renders the tree for one request.
    #[cfg(test)]
    pub fn render(&self, ctx: &Context) -> Result<serde_json::Value, RenderError> {
        self.render_prepared(&ctx.prepare())
    }

    /// Renders the tree from an already prepared context.
    pub fn render_prepared(&self, ctx: &Prepared) -> Result<serde_json::Value, RenderError> {
        match &self.static_value {
            Some(value) => Ok(value.clone()),
            None => self.root.render(ctx),
        }
    }

    /// The value, when nothing in the tree is templated.
    pub fn static_value(&self) -> Option<serde_json::Value> {
        self.static_value.clone()
    }

    /// The number of keys, when the tree is a map (its keys are fixed).
    pub fn top_level_keys(&self) -> Option<usize> {
        match &self.root {
            Node::Object(entries) => Some(entries.len()),
            _ => None,
        }
    }
}
