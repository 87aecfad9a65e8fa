//! Direct evaluation of the simplest templates, without the template engine.
//!
//! Most templates in a routing table only copy fields of the request:
//! `{{ body.entry.id }}`, `cms-{{ body.model }}`, `{{ headers["x-event"] }}`.
//! Rendering those through minijinja means converting the whole request into
//! its value model and running its machinery for each template, which was a
//! sixth of the CPU of accepting a webhook. This module recognises such
//! templates when they are compiled and looks their fields up in the
//! [`Context`] directly.
//!
//! It must give exactly what the engine gives, so it only answers where that
//! is certain and says "ask the engine" everywhere else: a float, a list or a
//! map printed inside text, a path through something that is not a map, a
//! variable other than `body`, `headers`, `query`, `route` and `delivery`.
//! Conditions of the most common form, a field compared with string
//! constants (`body.event in ["entry.publish", "entry.unpublish"]`), are
//! evaluated directly too, when the field is a string. A table test
//! evaluates every case both ways.

use super::Context;

/// Where a variable path starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Root {
    Body,
    Headers,
    Query,
    Route,
    Delivery,
}

/// A variable path such as `body.entry.id` or `headers["x-event"]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct VarPath {
    root: Root,
    keys: Vec<String>,
}

/// What a path found in one context.
enum Found<'a> {
    Json(&'a serde_json::Value),
    Text(&'a str),
    /// A missing key of a map: Jinja's undefined, printed as nothing.
    Undefined,
}

impl VarPath {
    /// Parses an expression that is only a variable path: identifiers joined
    /// by `.`, and `["key"]` or `['key']` subscripts without escapes.
    pub(super) fn parse(source: &str) -> Option<VarPath> {
        let source = source.trim();
        let (first, mut rest) = split_identifier(source)?;
        let root = match first {
            "body" => Root::Body,
            "headers" => Root::Headers,
            "query" => Root::Query,
            "route" => Root::Route,
            "delivery" => Root::Delivery,
            _ => return None,
        };
        let mut keys = Vec::new();
        while !rest.is_empty() {
            if let Some(after_dot) = rest.strip_prefix('.') {
                let (key, after) = split_identifier(after_dot)?;
                keys.push(key.to_owned());
                rest = after;
            } else if let Some(after_bracket) = rest.strip_prefix('[') {
                let (key, after) = split_string_literal(after_bracket)?;
                keys.push(key.to_owned());
                rest = after.strip_prefix(']')?;
            } else {
                return None;
            }
        }
        Some(VarPath { root, keys })
    }

    /// Looks the path up; `None` when only the engine can say what it is.
    fn lookup<'a>(&self, ctx: &'a Context) -> Option<Found<'a>> {
        match self.root {
            Root::Body => {
                let mut value = &ctx.body;
                for key in &self.keys {
                    match value.as_object()?.get(key) {
                        Some(next) => value = next,
                        // Undefined values chain: a field of a missing
                        // object is undefined too, as in the engine.
                        None => return Some(Found::Undefined),
                    }
                }
                Some(Found::Json(value))
            }
            Root::Headers | Root::Query => {
                let map = if self.root == Root::Headers {
                    &ctx.headers
                } else {
                    &ctx.query
                };
                match self.keys.as_slice() {
                    [key] => Some(map.get(key).map_or(Found::Undefined, |v| Found::Text(v))),
                    _ => None,
                }
            }
            Root::Route => self.keys.is_empty().then_some(Found::Text(&ctx.route)),
            Root::Delivery => match self.keys.as_slice() {
                [key] if key == "id" => Some(Found::Text(&ctx.delivery_id)),
                [key] if key == "received_at" => Some(Found::Text(&ctx.received_at)),
                _ => None,
            },
        }
    }

    /// The value of a lone `{{ path }}`, with its JSON type.
    pub(super) fn value(&self, ctx: &Context) -> Option<serde_json::Value> {
        Some(match self.lookup(ctx)? {
            Found::Json(value) => value.clone(),
            Found::Text(text) => serde_json::Value::String(text.to_owned()),
            Found::Undefined => serde_json::Value::Null,
        })
    }

    /// Appends a value as the engine prints it.
    fn print(found: Found<'_>, out: &mut String) -> Option<()> {
        use serde_json::Value;
        match found {
            Found::Text(text) => out.push_str(text),
            Found::Json(Value::String(text)) => out.push_str(text),
            Found::Json(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                out.push_str(&n.to_string())
            }
            // Jinja prints them the way Python does.
            Found::Json(Value::Bool(b)) => out.push_str(if *b { "True" } else { "False" }),
            Found::Json(Value::Null) => out.push_str("None"),
            Found::Undefined => {}
            // Floats, lists and maps have the engine's own printed forms.
            Found::Json(_) => return None,
        }
        Some(())
    }
}

/// Splits a leading identifier off `text`.
fn split_identifier(text: &str) -> Option<(&str, &str)> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let ident = &text[..end];
    let first = ident.chars().next()?;
    (first.is_ascii_alphabetic() || first == '_').then_some((ident, &text[end..]))
}

/// A piece of a text template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Var(VarPath),
}

/// A text template made only of literal text and `{{ path }}` expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Text(Vec<Piece>);

impl Text {
    /// Parses a template whose only syntax is `{{ path }}`; anything else
    /// (blocks, comments, whitespace control, filters) is left to the engine.
    pub(super) fn parse(source: &str) -> Option<Text> {
        if source.contains("{%") || source.contains("{#") {
            return None;
        }
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}")?;
            let inner = &after[..end];
            if inner.starts_with(['-', '+']) || inner.ends_with(['-', '+']) {
                return None;
            }
            pieces.push(Piece::Var(VarPath::parse(inner)?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Some(Text(pieces))
    }

    /// Renders the text; `None` when one of its values needs the engine.
    pub(super) fn render(&self, ctx: &Context) -> Option<String> {
        self.render_checked(ctx, false).flatten()
    }

    /// Renders the text when every value it prints is present: the outer
    /// `None` when one needs the engine, the inner one when one is missing
    /// or `null`.
    pub(super) fn render_present(&self, ctx: &Context) -> Option<Option<String>> {
        self.render_checked(ctx, true)
    }

    /// [`Text::render_present`] when `refuse_missing`, else the text with
    /// missing values printed as nothing.
    fn render_checked(&self, ctx: &Context, refuse_missing: bool) -> Option<Option<String>> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Var(path) => {
                    let found = path.lookup(ctx)?;
                    if refuse_missing
                        && matches!(
                            found,
                            Found::Undefined | Found::Json(serde_json::Value::Null)
                        )
                    {
                        return Some(None);
                    }
                    VarPath::print(found, &mut out)?;
                }
            }
        }
        Some(Some(out))
    }
}

/// A `when` that compares one field with string constants:
/// `PATH in ['a', "b"]`, `PATH == 'a'` or `PATH != 'a'`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Condition {
    path: VarPath,
    test: Test,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Test {
    In(Vec<String>),
    Equal(String),
    NotEqual(String),
}

impl Condition {
    /// Parses one of the three forms; anything else is left to the engine.
    pub(super) fn parse(source: &str) -> Option<Condition> {
        let source = source.trim();
        let end = source.find(char::is_whitespace)?;
        let path = VarPath::parse(&source[..end])?;
        let rest = source[end..].trim_start();
        let test = if let Some(list) = rest.strip_prefix("in") {
            let list = list.trim().strip_prefix('[')?.strip_suffix(']')?;
            let mut items = Vec::new();
            let mut rest = list.trim();
            while !rest.is_empty() {
                let (item, after) = split_string_literal(rest)?;
                items.push(item.to_owned());
                rest = after.trim_start();
                if let Some(after_comma) = rest.strip_prefix(',') {
                    rest = after_comma.trim_start();
                    if rest.is_empty() {
                        return None;
                    }
                } else if !rest.is_empty() {
                    return None;
                }
            }
            Test::In(items)
        } else if let Some(value) = rest.strip_prefix("==") {
            Test::Equal(whole_string_literal(value)?)
        } else if let Some(value) = rest.strip_prefix("!=") {
            Test::NotEqual(whole_string_literal(value)?)
        } else {
            return None;
        };
        Some(Condition { path, test })
    }

    /// The condition's value when the field is a string; `None` otherwise,
    /// for the engine's comparison rules.
    pub(super) fn eval(&self, ctx: &Context) -> Option<bool> {
        let text = match self.path.lookup(ctx)? {
            Found::Text(text) => text,
            Found::Json(serde_json::Value::String(text)) => text.as_str(),
            _ => return None,
        };
        Some(match &self.test {
            Test::In(items) => items.iter().any(|item| item == text),
            Test::Equal(value) => value == text,
            Test::NotEqual(value) => value != text,
        })
    }
}

/// Splits a leading `'...'` or `"..."` without escapes off `text`.
fn split_string_literal(text: &str) -> Option<(&str, &str)> {
    let quote = text.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = &text[1..];
    let end = inner.find(quote)?;
    let literal = &inner[..end];
    (!literal.contains('\\')).then_some((literal, &inner[end + 1..]))
}

/// The string constant that is all of `text`.
fn whole_string_literal(text: &str) -> Option<String> {
    let (literal, rest) = split_string_literal(text.trim())?;
    rest.trim().is_empty().then(|| literal.to_owned())
}
