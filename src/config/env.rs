//! `${VAR}` and `${VAR:-default}` substitution in the string values of the
//! parsed YAML tree. Substituting after parsing means a secret full of YAML
//! syntax (`:`, `#`, quotes) is taken literally. `$$` writes a literal `$`;
//! a `$` followed by anything else is kept as it is, and a shell's `$NAME`
//! kept so is noted, for a warning.

use std::collections::BTreeMap;

use serde_norway::Value;

use super::path::Path;

/// A substitution that could not be made.
#[derive(Debug)]
pub(crate) struct EnvError {
    pub(crate) path: Path,
    pub(crate) message: String,
}

/// What substituting the variables of a tree found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// One error per string that could not be substituted.
    pub(crate) errors: Vec<EnvError>,
    /// What the file says at each path where a variable changed the value,
    /// for output that must not show what a variable put there.
    pub(crate) written: BTreeMap<String, String>,
    /// The values that took a `${VAR:-default}` written in the file, with
    /// the variables' names (`A`, `B`).
    pub(crate) defaulted: Vec<(Path, String)>,
    /// The values holding a shell's `$NAME`, without braces, which is sent
    /// as written, with the first such name.
    pub(crate) unbraced: Vec<(Path, String)>,
    /// What the environment put into the value at each path: every
    /// variable's name and value, so that no message about the value quotes
    /// what a variable holds.
    pub(crate) substituted: BTreeMap<String, Vec<(String, String)>>,
}

/// Substitutes variables in every string value under `value`, noting in
/// `found` what it finds.
pub(crate) fn substitute_tree(
    value: &mut Value,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    found: &mut Found,
) {
    match value {
        Value::String(text) => {
            if text.contains('$') {
                let mut noted = Noted::default();
                let substituted = substitute_noting(text, env, &mut noted);
                if let Some(name) = noted.unbraced {
                    found.unbraced.push((path.clone(), name));
                }
                match substituted {
                    Ok(done) => {
                        if !noted.defaults.is_empty() {
                            found
                                .defaulted
                                .push((path.clone(), noted.defaults.join("`, `")));
                        }
                        if !noted.values.is_empty() {
                            found.substituted.insert(path.to_string(), noted.values);
                        }
                        if done != *text {
                            found
                                .written
                                .insert(path.to_string(), std::mem::replace(text, done));
                        }
                    }
                    Err(message) => found.errors.push(EnvError {
                        path: path.clone(),
                        message,
                    }),
                }
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                substitute_tree(item, &path.index(index), env, found);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let child = match key {
                    Value::String(key) => path.key(key),
                    other => path.key(&scalar_text(other)),
                };
                substitute_tree(item, &child, env, found);
            }
        }
        Value::Tagged(tagged) => substitute_tree(&mut tagged.value, path, env, found),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The name of a shell's variable at the start of `text`, which follows a
/// `$` written without braces (`deploy-$STAGE`): capitals, digits and `_`,
/// starting with a capital, two characters or more, so that a price (`$5`)
/// or a `$` in prose is not taken for one.
fn shell_variable(text: &str) -> Option<&str> {
    let length = text
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    let name = &text[..length];
    (name.len() >= 2 && name.starts_with(|c: char| c.is_ascii_uppercase())).then_some(name)
}

/// The text of a scalar key, for paths.
pub(crate) fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "null".to_owned(),
        _ => "?".to_owned(),
    }
}

/// Substitutes the variables of one string.
pub(crate) fn substitute(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    substitute_noting(text, env, &mut Noted::default())
}

/// What substituting one string noticed besides its result.
#[derive(Debug, Default)]
struct Noted {
    /// The name of each variable whose default, written in the file, it
    /// took.
    defaults: Vec<String>,
    /// The first shell's `$NAME` written without braces, which is kept as
    /// written (see [`shell_variable`]).
    unbraced: Option<String>,
    /// Each variable the environment filled in, with its value.
    values: Vec<(String, String)>,
}

/// [`substitute`], noting in `noted` the defaults it took and a shell's
/// `$NAME` it kept.
fn substitute_noting(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    noted: &mut Noted,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Every unset variable of the string is named, not only the first.
    let mut unset: Vec<&str> = Vec::new();
    // A variable written without a default but set to the empty string
    // (an env file's `MINIO_TOKEN=`) is almost always one not filled in:
    // `Bearer ${MINIO_TOKEN}` would then be a token of its own that no
    // sender sends, and the route would refuse everything.
    let mut empty: Vec<&str> = Vec::new();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if after.starts_with("{{") {
            // A dollar sign before a template expression, as in
            // `Total: ${{ body.total }}`, is text, not a variable.
            out.push('$');
            rest = after;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return Err(
                    "`${` is not closed; write `${NAME}` for a variable or `$$` for a literal `$`"
                        .to_owned(),
                );
            };
            let spec = &inner[..end];
            let (name, default) = match spec.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (spec, None),
            };
            if !is_variable_name(name) {
                // `${NAME:default}`, `${NAME-x}`, `${NAME:=x}`: a shell's
                // other forms, which are not read.
                let hint = if name.contains([':', '-', '=', '?', '+']) {
                    "; the forms read are `${NAME}` and `${NAME:-default}`"
                } else {
                    ""
                };
                return Err(format!(
                    "`${{{spec}}}` does not name a variable; names use letters, digits and `_`{hint}"
                ));
            }
            // `${A:-${B:-x}}` would end at the first `}` and leave the
            // rest as text: refused rather than silently wrong.
            if default.is_some_and(|default| default.contains("${")) {
                return Err(format!(
                    "the default of `${{{name}:-...}}` holds another variable; a default is plain text"
                ));
            }
            // As in the shell, a default also replaces a variable that is set
            // but empty.
            let (value, from_default) = match (env(name), default) {
                (Some(value), Some(default)) if value.is_empty() => {
                    (Some(default.to_owned()), true)
                }
                (Some(value), _) => (Some(value), false),
                (None, default) => (default.map(str::to_owned), default.is_some()),
            };
            // An empty default is noted too: in a secret with text around
            // it (`Bearer ${TOKEN:-}`) it leaves a secret that matches no
            // request, where the variable was meant.
            if from_default {
                noted.defaults.push(name.to_owned());
            }
            match value {
                Some(value) if value.is_empty() && default.is_none() => {
                    if !empty.contains(&name) {
                        empty.push(name);
                    }
                }
                Some(value) => {
                    out.push_str(&value);
                    if !from_default {
                        noted.values.push((name.to_owned(), value));
                    }
                }
                None if unset.contains(&name) => {}
                None => unset.push(name),
            }
            rest = &inner[end + 1..];
        } else {
            if noted.unbraced.is_none() {
                noted.unbraced = shell_variable(after).map(str::to_owned);
            }
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    // Both kinds are named, every variable of each: one run of `check`
    // tells all that the environment lacks.
    let mut problems = Vec::new();
    if let Some((subject, var, them)) = named(&unset) {
        problems.push(format!(
            "{subject} not set (set {them} where the relay runs, or write `${{{var}:-default}}` for a value that is not a secret)"
        ));
    }
    if let Some((subject, var, _)) = named(&empty) {
        problems.push(format!(
            "{subject} set but empty (set a value where the relay runs, or write `${{{var}:-}}` where an empty value is meant and is not a secret)"
        ));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

/// How a message names `names`: the subject with its verb ("environment
/// variable `A` is", "environment variables `A`, `B` are"), the name to
/// show in a `${...}` and the pronoun for them. `None` when there are none.
fn named(names: &[&str]) -> Option<(String, String, &'static str)> {
    match names {
        [] => None,
        [name] => Some((
            format!("environment variable `{name}` is"),
            (*name).to_owned(),
            "it",
        )),
        many => Some((
            format!("environment variables {} are", quoted_list(many)),
            "NAME".to_owned(),
            "them",
        )),
    }
}

/// `` `A`, `B` `` for the names `A` and `B`.
fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::{Noted, substitute, substitute_noting};

    #[test]
    fn a_shell_variable_without_braces_is_found() {
        let unbraced_variable = |text: &str| {
            let mut noted = Noted::default();
            // Unset braced variables fail the substitution; the whole
            // string is read all the same.
            let _ = substitute_noting(text, &|_| None, &mut noted);
            noted.unbraced
        };
        let cases = [
            ("deploy-$STAGE", Some("STAGE")),
            ("$API_TOKEN", Some("API_TOKEN")),
            ("a ${BRACED} b $LATER", Some("LATER")),
            ("$$LITERAL", None),
            ("${BRACED}", None),
            ("costs $5", None),
            ("$x and $Lower", None),
            ("Total: ${{ body.total }}", None),
            ("$A", None),
        ];
        for (text, expected) in cases {
            assert_eq!(unbraced_variable(text).as_deref(), expected, "{text}");
        }
    }

    #[test]
    fn substitution() {
        let env = |name: &str| match name {
            "TOKEN" => Some("t:#'\"{x}".to_owned()),
            "EMPTY" | "EMPTY2" => Some(String::new()),
            _ => None,
        };
        let cases: [(&str, Result<&str, &str>); 22] = [
            ("plain", Ok("plain")),
            ("${TOKEN}", Ok("t:#'\"{x}")),
            ("a-${TOKEN}-b", Ok("a-t:#'\"{x}-b")),
            ("${MISSING:-fallback}", Ok("fallback")),
            ("${MISSING:-}", Ok("")),
            ("${EMPTY:-fallback}", Ok("fallback")),
            ("$$", Ok("$")),
            (
                "${EMPTY}",
                Err(
                    "`EMPTY` is set but empty (set a value where the relay runs, or write `${EMPTY:-}`",
                ),
            ),
            ("a-${EMPTY:-}-b", Ok("a--b")),
            ("$${TOKEN}", Ok("${TOKEN}")),
            ("cost $5", Ok("cost $5")),
            ("Total: ${{ body.total }}", Ok("Total: ${{ body.total }}")),
            (
                "${MISSING}",
                Err("environment variable `MISSING` is not set"),
            ),
            ("${TOKEN", Err("is not closed")),
            ("${1X}", Err("does not name a variable")),
            (
                "${TOKEN:default}",
                Err("the forms read are `${NAME}` and `${NAME:-default}`"),
            ),
            ("${REPO:=blog}", Err("the forms read are")),
            ("${A:-${B:-tok}}", Err("holds another variable")),
            (
                "${M1}-${M2}",
                Err("environment variables `M1`, `M2` are not set"),
            ),
            (
                "${M1}-${M2}-${M1}",
                Err("environment variables `M1`, `M2` are not set ("),
            ),
            (
                "${EMPTY}:${EMPTY2}",
                Err("environment variables `EMPTY`, `EMPTY2` are set but empty"),
            ),
            (
                "${EMPTY}:${M1}",
                Err(
                    "`M1` is not set (set it where the relay runs, or write `${M1:-default}` for a value that is not a secret); environment variable `EMPTY` is set but empty",
                ),
            ),
        ];
        for (text, expected) in cases {
            match (substitute(text, &env), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}
