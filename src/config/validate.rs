//! Turning the parsed file into a [`Config`]: running the phases described in
//! the module above, checking every value, compiling every template, and
//! collecting every error and warning with its path and position.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_norway::Value;
use serde_path_to_error::Segment;

use super::env::{Found, scalar_text, substitute_tree};
use super::locate::{self, Locations, Pos};
use super::path::{Path, Seg};
use super::raw::{self, Num, Quantity};
use super::units::{parse_duration, parse_size};
use super::*;
use crate::routing;
use crate::template::EngineBuilder;
use crate::text::closest;

/// GitHub.com's API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// Whether `url` names this machine, where plain http never leaves it.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The API base URL without a trailing slash: `GITHUB_API_URL` when it is
/// set and not blank, else the configured one, else GitHub.com's.
pub fn resolve_api_url(from_env: Option<String>, configured: Option<String>) -> String {
    from_env
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .or(configured)
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned())
        .trim_end_matches('/')
        .to_owned()
}
const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// Room for 64 bodies of the default limit at once, and for tens of
/// thousands of typical ones: far past what senders send together, far
/// short of what would exhaust a small machine.
const DEFAULT_MAX_BODY_MEMORY: u64 = 64 << 20;

/// What a route's body limit is judged against: the default for routes
/// that set none, and the memory all bodies being received may hold.
#[derive(Clone, Copy)]
struct BodyLimits {
    default_max_body: u64,
    max_body_memory: u64,
}
/// Long enough for a large body on a slow link; short enough that a client
/// that stops sending does not hold its connection for long.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The default `debounce.max_wait`: a burst never delays its dispatch by
/// more than this (or by more than the window, when that is longer).
const DEFAULT_DEBOUNCE_MAX_WAIT: Duration = Duration::from_secs(300);

const TOP_LEVEL_KEYS: [&str; 6] = ["github", "server", "store", "retry", "notify", "routes"];

/// Collects errors and warnings, placing each in the file.
struct Report<'a> {
    file: &'a str,
    locations: Locations,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
    /// The values that took a `${VAR:-default}` written in the file, with
    /// the variable's name.
    defaulted: Vec<(Path, String)>,
    /// What the environment put into the value at each path (see
    /// [`Found::substituted`]).
    substituted: BTreeMap<String, Vec<(String, String)>>,
    /// The paths whose variables could not be filled in. Their value is
    /// not what the file means, so the error that says so is their only
    /// one: a `private_key: ${KEY}` with `KEY` unset is not also "not a
    /// private key".
    unfilled: BTreeSet<String>,
}

/// The variables of what the environment put into a value (see
/// [`Found::substituted`]), as a message names them: `` `${A}`, `${B}` ``.
fn variable_names(values: &[(String, String)]) -> String {
    let names: Vec<String> = values
        .iter()
        .map(|(name, _)| format!("`${{{name}}}`"))
        .collect();
    names.join(", ")
}

impl Report<'_> {
    /// `message`, about the value at `path`, unless it quotes what a
    /// variable put there: then a message that names the variables instead.
    /// A check deep inside a value (a template's parser, a `when`
    /// expression's) may quote any part of it, and a variable there may
    /// hold a secret: `when: headers.key == ${KEY}` pastes the key in as a
    /// variable's name, which the parser then names as unknown.
    fn withheld(&self, path: &str, message: String) -> String {
        self.withholding(path, &message)
            .map(|(text, _)| text)
            .unwrap_or(message)
    }

    /// The message that replaces `message` when it quotes what a variable
    /// put at `path`, with the name of the first such variable.
    fn withholding(&self, path: &str, message: &str) -> Option<(String, &str)> {
        let values = self.substituted.get(path)?;
        if !values.iter().any(|(_, value)| quotes(message, value)) {
            return None;
        }
        let text = format!(
            "is invalid once {} is filled in; the details would quote what the variable holds, so they are left out",
            variable_names(values)
        );
        Some((text, &values[0].0))
    }

    /// The strings of the list at `path`, comma-separated, with what a
    /// variable put into each written as the variable again: for a message
    /// that quotes the list to whoever sent a webhook.
    fn as_written(&self, path: &Path, list: &[String]) -> String {
        let shown: Vec<String> = list
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let filled = self.substituted.get(&path.index(index).to_string());
                filled
                    .into_iter()
                    .flatten()
                    .filter(|(_, value)| !value.is_empty())
                    .fold(text.clone(), |text, (name, value)| {
                        text.replace(value.as_str(), &format!("${{{name}}}"))
                    })
            })
            .collect();
        shown.join(", ")
    }

    /// An error in a template or a `when` expression at `path`. Such a
    /// value is code, and a variable in it is pasted in as code: when the
    /// message is withheld, it says how to write the variable as text.
    fn code_error(&mut self, path: &Path, message: impl Into<String>) {
        let message = message.into();
        let message = match self.withholding(&path.to_string(), &message) {
            Some((text, first)) => format!(
                "{text}. In a template or a `when`, a variable is pasted in as code: write `'${{{first}}}'` for text"
            ),
            None => message,
        };
        self.error(path, message);
    }

    /// Warns when the secret at `path` came from a default written in the
    /// file: anyone who reads the file (or its documentation) knows it.
    fn secret_at(&mut self, path: &Path) {
        if let Some(at) = self.defaulted.iter().position(|(p, _)| p == path) {
            let (path, names) = self.defaulted.swap_remove(at);
            self.warn(
                &path,
                format!(
                    "is a secret taken from a default written in the file (`${{VAR:-...}}`); set `{names}` instead"
                ),
            );
        }
    }

    fn error_at(&mut self, pos: Pos, path: &Path, message: impl Into<String>) {
        let path = path.to_string();
        if self.unfilled.contains(&path) && self.errors.iter().any(|e| e.path == path) {
            return;
        }
        let message = self.withheld(&path, message.into());
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            path,
            message,
        });
    }

    /// An error about the value at `path`.
    fn error(&mut self, path: &Path, message: impl Into<String>) {
        let pos = self.locations.value(path);
        self.error_at(pos, path, message);
    }

    /// An error about the key that ends `path` (an unknown key).
    fn key_error(&mut self, path: &Path, message: impl Into<String>) {
        let pos = self.locations.key(path);
        self.error_at(pos, path, message);
    }

    fn warn(&mut self, path: &Path, message: impl Into<String>) {
        let pos = self.locations.value(path);
        let message = self.withheld(&path.to_string(), message.into());
        self.warnings.push(ConfigWarning {
            file: self.file.to_owned(),
            path: path.to_string(),
            message,
            line: pos.line,
            column: pos.column,
        });
    }

    /// Deserializes one part of the file, reporting every serde error inside
    /// it at its own path.
    ///
    /// serde stops at the first unknown key, so a mapping's keys are first
    /// checked against the fields of `T`: every unknown key is reported,
    /// then left out, and the rest is deserialized, so that the mapping's
    /// other unknown keys and wrong types are reported with it. serde also
    /// stops at the first wrong value: the key that holds it is left out in
    /// turn and the rest read again, until serde takes what is left. A
    /// mapping with a key left out is checked no further (the checks that
    /// follow would report the key's absence), and a field that is missing
    /// because it was left out, or because an unknown key beside it may
    /// misspell it, is not reported as missing.
    fn parse<T: DeserializeOwned>(&mut self, value: Value, base: &Path) -> Option<T> {
        let (parsed, left_out) = self.parse_leaving_out::<T>(value, base)?;
        left_out.is_empty().then_some(parsed)
    }

    /// [`Report::parse`], answering also what is left when keys were left
    /// out for their errors or unknown, and which, so that a caller can
    /// check the rest without reporting as missing what they may stand for
    /// (see [`LeftOut::explains`]).
    fn parse_leaving_out<T: DeserializeOwned>(
        &mut self,
        mut value: Value,
        base: &Path,
    ) -> Option<(T, LeftOut)> {
        let mut left_out = LeftOut::default();
        if let (Value::Mapping(map), Some(fields)) = (&mut value, struct_fields::<T>()) {
            let unknown_keys: Vec<Value> = map
                .keys()
                .filter(|key| !key.as_str().is_some_and(|key| fields.contains(&key)))
                .cloned()
                .collect();
            let expected: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
            for key in unknown_keys {
                let name = scalar_text(&key);
                self.key_error(&base.key(&name), unknown("key", &name, &expected));
                // `remove` would move the last key into its place, and serde
                // would then report another of the mapping's errors first
                // than the file's order says.
                let value = map.shift_remove(&key);
                left_out.unknown(base, &name, &expected);
                left_out.keep_if_misspelt(base, &name, value);
            }
        }
        loop {
            let err = match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(parsed) => return Some((parsed, left_out)),
                Err(err) => err,
            };
            let segments: Vec<Segment> = err.path().iter().cloned().collect();
            let message = err.into_inner().to_string();
            let path = path_of(base, &segments);
            let no_news =
                missing_field(&message).is_some_and(|field| left_out.explains(&path, field));
            if !no_news {
                let mut message = without_value(&strip_location(&message));
                // A map key that is not text ends the path with a segment
                // that names no place in the file.
                let place: Vec<Segment> = segments
                    .iter()
                    .filter(|s| matches!(s, Segment::Map { .. } | Segment::Seq { .. }))
                    .cloned()
                    .collect();
                if value_at(&mut value, &place).is_some_and(|v| is_unquoted_template(v)) {
                    message.push_str(UNQUOTED_TEMPLATE_HINT);
                }
                self.serde_error(path, &message);
            }
            // The key that holds the error is left out: the nearest mapping
            // key on its path, since taking an item out of a list would
            // move the items after it, and their errors' paths with them.
            let at = segments
                .iter()
                .rposition(|segment| matches!(segment, Segment::Map { .. }))?;
            let Segment::Map { key } = &segments[at] else {
                return None;
            };
            match value_at(&mut value, &segments[..at]) {
                Some(Value::Mapping(map)) => map.shift_remove(key.as_str())?,
                _ => return None,
            };
            let mapping = path_of(base, &segments[..at]);
            if let Some((name, expected)) = unknown_field(&message) {
                left_out.unknown(&mapping, name, &backticked(expected));
            }
            left_out.keys.push(mapping.key(key));
        }
    }

    /// Rewrites serde's messages into the file's vocabulary (keys, values)
    /// and adds a suggestion for near misses.
    fn serde_error(&mut self, path: Path, message: &str) {
        if let Some((name, expected)) = unknown_field(message) {
            let expected = backticked(expected);
            // serde_path_to_error already ends the path with the unknown key.
            let key_path = match path.0.last() {
                Some(Seg::Key(last)) if last == name => path,
                _ => path.key(name),
            };
            let message = unknown("key", name, &expected);
            self.key_error(&key_path, message);
        } else if let Some(rest) = message.strip_prefix("unknown variant `")
            && let Some((name, expected)) = rest.split_once('`')
        {
            let expected = backticked(expected);
            self.error(&path, unknown_value("value", name, &expected));
        } else if let Some(name) = missing_field(message) {
            self.error(&path, format!("missing key `{name}`"));
        } else {
            // A key with nothing after it is YAML's null, which serde calls a
            // unit value.
            let mut message = message.replace("invalid type: unit value", "is empty");
            // `dispatch:` followed by `repo: ...` on the next lines is a map
            // of one target, not the list of them.
            if message.ends_with("expected a sequence") {
                message.push_str("; write each item on a line of its own, starting with `- `");
            }
            // `when: false`, to turn a route off for a while: `when` is an
            // expression, and YAML has read this one as a boolean.
            if path.ends_with_key("when") && message.contains("invalid type: a boolean") {
                message.push_str("; `when` is an expression written as text: quote a constant, as in `when: \"false\"`");
            } else if let Some(read_as) = unquoted_scalar_for_text(&message) {
                // `password: 12345`, `username: 2.5`, `header: true`: YAML
                // reads a number or a boolean where text belongs.
                message.push_str(&format!(
                    "; YAML reads the value as {read_as} because it is not in quotes: write it in quotes to give it as text"
                ));
            }
            self.error(&path, without_struct_names(&message));
        }
    }
}

/// What YAML read where serde expected text, when it was a number or a
/// boolean: "a number" or "a boolean".
fn unquoted_scalar_for_text(message: &str) -> Option<&'static str> {
    let found = message
        .strip_prefix("invalid type: ")?
        .strip_suffix(", expected a string")?;
    match found {
        "a boolean" => Some("a boolean"),
        _ if found.starts_with("an integer") || found.starts_with("a floating point") => {
            Some("a number")
        }
        _ => None,
    }
}

/// serde names what it expected by the Rust type (`expected struct
/// RawDebounce`); the file only knows maps.
fn without_struct_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("struct Raw") {
        out.push_str(&rest[..at]);
        out.push_str("a map");
        let name = &rest[at + "struct ".len()..];
        rest = &name[name
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(name.len())..];
    }
    out.push_str(rest);
    out
}

/// `base` followed by the segments of a serde path.
fn path_of(base: &Path, segments: &[Segment]) -> Path {
    let mut path = base.clone();
    for segment in segments {
        match segment {
            Segment::Seq { index } => path.0.push(Seg::Index(*index)),
            Segment::Map { key } => path.0.push(Seg::Key(key.clone())),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    path
}

/// The field a serde "missing field" message names.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(field, _)| field)
}

/// The key a serde "unknown field" message names, and the rest of the
/// message, which lists the keys expected.
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    message.strip_prefix("unknown field `")?.split_once('`')
}

/// The value at `path` inside `value`, as serde_path_to_error names it,
/// looking through YAML tags (`!tag {...}`), which serde reads through too.
fn value_at<'a>(value: &'a mut Value, path: &[Segment]) -> Option<&'a mut Value> {
    let untagged = |value: &'a mut Value| -> &'a mut Value {
        let mut value = value;
        while let Value::Tagged(tagged) = value {
            value = &mut tagged.value;
        }
        value
    };
    path.iter().try_fold(untagged(value), |value, segment| {
        let inner = match segment {
            Segment::Map { key } => value.get_mut(key.as_str()),
            Segment::Seq { index } => value.get_mut(*index),
            Segment::Enum { .. } | Segment::Unknown => None,
        }?;
        Some(untagged(inner))
    })
}

/// What [`Report::parse`] left out of a part of the file, so that the
/// absence it caused is not reported as news.
#[derive(Default)]
struct LeftOut {
    /// Each unknown key, with the mapping it is in and the field it plainly
    /// misspells, when it does.
    unknown_keys: Vec<(Path, String, Option<String>)>,
    /// Keys left out for holding an error.
    keys: Vec<Path>,
    /// The values of the unknown keys that plainly misspell a field: the
    /// mapping they are in, the field meant, the key as written and its
    /// value, so that what they hold can still be checked (a `dispach:`
    /// list's targets).
    misspelt_values: Vec<(Path, String, String, Value)>,
}

impl LeftOut {
    fn is_empty(&self) -> bool {
        self.unknown_keys.is_empty() && self.keys.is_empty()
    }

    /// Notes the unknown key `name` of the mapping at `mapping`, whose
    /// fields are `expected`.
    fn unknown(&mut self, mapping: &Path, name: &str, expected: &[String]) {
        // A near-certain typo (`max_attemps`) stands for its field only.
        let plainly = closest(name, expected, 0.9).map(str::to_owned);
        self.unknown_keys
            .push((mapping.clone(), name.to_owned(), plainly));
    }

    /// Keeps the value of the unknown key `name` of the mapping at
    /// `mapping` when the key plainly misspells a field, as noted by
    /// [`LeftOut::unknown`] just before.
    fn keep_if_misspelt(&mut self, mapping: &Path, name: &str, value: Option<Value>) {
        let noted = self.unknown_keys.last();
        if let (Some((at, noted_name, Some(meant))), Some(value)) = (noted, value)
            && at == mapping
            && noted_name == name
        {
            self.misspelt_values
                .push((mapping.clone(), meant.clone(), name.to_owned(), value));
        }
    }

    /// The key and value written in the mapping at `mapping` for `field`
    /// under a plain misspelling of its name, if there is one.
    fn misspelt(&self, mapping: &Path, field: &str) -> Option<(&str, &Value)> {
        self.misspelt_values
            .iter()
            .find(|(at, meant, _, _)| at == mapping && meant == field)
            .map(|(_, _, name, value)| (name.as_str(), value))
    }

    /// Whether a field missing from the mapping at `mapping` may be missing
    /// because of what was left out: it held an error, or an unknown key
    /// may stand for it. A field missing beside keys that plainly stand for
    /// others (`max_bodyy` or `name` beside no `verify`) is news, which
    /// fixing the reported errors would not make go away.
    fn explains(&self, mapping: &Path, field: &str) -> bool {
        self.keys.contains(&mapping.key(field))
            || self.unknown_keys.iter().any(|(at, name, plainly)| {
                at == mapping
                    && match plainly {
                        Some(meant) => meant == field,
                        None => may_stand_for(name, field),
                    }
            })
    }
}

/// Whether the unknown key `name` may be an attempt at writing `field`:
/// as close in spelling as a "did you mean" asks (`verfy`), or sharing a
/// word with it (`backoff_max` and `max_wait` for `max_backoff`, `key` for
/// `private_key`). A key like nothing (`auth`, `comment`) stands for
/// nothing, and the field it leaves missing is reported: fixing the
/// unknown key alone would not supply it.
fn may_stand_for(name: &str, field: &str) -> bool {
    let words = |text: &str| -> Vec<String> {
        text.split(['_', '-'])
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect()
    };
    let field_words = words(field);
    strsim::jaro_winkler(&name.to_ascii_lowercase(), field) >= 0.8
        || words(name).iter().any(|w| field_words.contains(w))
}

/// The fields of a struct `T` as serde names them, or `None` when `T` is not
/// deserialized as a struct. serde hands them to `deserialize_struct`, so a
/// deserializer that only records them and stops finds them without any
/// input.
fn struct_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = None;
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// Removes every " at line L column C" serde_norway writes into its
/// messages, since every error carries its position separately.
fn strip_location(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + " at line ".len()..];
        let digits = |text: &str| {
            text.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len())
        };
        let line_end = digits(after);
        match after[line_end..].strip_prefix(" column ") {
            Some(column) if line_end > 0 => rest = &column[digits(column)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Drops the value from serde's "invalid type: string \"…\", expected …"
/// and "invalid value: …" messages, whatever its type: a secret may be
/// written as a number (`secret: 8675309`) or a boolean, and `${VAR}` is
/// substituted before the file is read into its structs (a Slack URL given
/// where a list was expected, an HMAC secret where a map was). The error's
/// position already shows where the value is.
fn without_value(message: &str) -> String {
    for kind in ["invalid type: ", "invalid value: "] {
        if let Some(start) = message.find(kind)
            && let Some((unexpected, expected)) =
                message[start + kind.len()..].rsplit_once(", expected ")
            // The value starts at its opening quote or backtick, whichever
            // comes first: the value itself may hold the other.
            && let Some(at) = [" `", " \""]
                .iter()
                .filter_map(|quote| unexpected.find(quote))
                .min()
        {
            let what = &unexpected[..at];
            let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            // Whatever came before (the YAML parser names the path).
            let before = &message[..start];
            return format!("{before}{kind}{article} {what}, expected {expected}");
        }
    }
    message.to_owned()
}

/// The names between backticks in serde's "expected one of `a`, `b`".
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// "unknown key `x`; did you mean `y`?" or, without a near miss, the list of
/// what is expected.
fn unknown(what: &str, name: &str, expected: &[String]) -> String {
    suggest(format!("unknown {what} `{name}`"), name, expected)
}

/// [`unknown`] for a value rather than a key: the value is not quoted,
/// since `${VAR}` may have put a secret there.
fn unknown_value(what: &str, name: &str, expected: &[String]) -> String {
    suggest(format!("unknown {what}"), name, expected)
}

/// Adds to `message` the expected name closest to `name`, or the list.
fn suggest(mut message: String, name: &str, expected: &[String]) -> String {
    if let Some(close) = did_you_mean(name, expected) {
        message.push_str(&format!("; did you mean `{close}`?"));
    } else if !expected.is_empty() {
        let list: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
        message.push_str(&format!("; expected one of {}", list.join(", ")));
    }
    message
}

/// The expected name closest to `name`, if it is close enough to be a typo.
/// Names that differ only in their digits are not: `sha384` is another
/// algorithm, not a misspelt `sha1`, and the list of choices answers it.
fn did_you_mean<'a>(name: &str, expected: &'a [String]) -> Option<&'a str> {
    let split = |text: &str| -> (String, String) {
        text.to_ascii_lowercase()
            .chars()
            .partition(|c| !c.is_ascii_digit())
    };
    closest(name, expected, 0.8).filter(|close| {
        let (close_letters, close_digits) = split(close);
        let (name_letters, name_digits) = split(name);
        close_letters != name_letters || close_digits == name_digits
    })
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

/// YAML does not allow tabs for indentation.
const TAB_HINT: &str = "; this is a tab: indent with spaces";

/// YAML reads `event_type: {{ body.type }}` as a map holding a map, and
/// `{% if %}` or `{{ a }}-b` as broken syntax: a template at the start of a
/// value must be quoted. Like every message, the hint quotes nothing of
/// the file back, since a value may be a secret.
const UNQUOTED_TEMPLATE_HINT: &str =
    "; a template that starts a value must be quoted, as in \"{{ body.id }}\"";

/// Whether `value` is what YAML makes of an unquoted `{{ expression }}`: a
/// map whose one key is a map, with no value.
fn is_unquoted_template(value: &Value) -> bool {
    let Value::Mapping(outer) = value else {
        return false;
    };
    outer.len() == 1
        && outer
            .iter()
            .all(|(key, inner)| inner.is_null() && matches!(key, Value::Mapping(_)))
}

/// Whether a line of the file holds a value, or a list item, that starts
/// with a template unquoted.
fn starts_value_with_template(line_text: &str) -> bool {
    let item = line_text.trim_start().strip_prefix("- ");
    let value = match line_text.split_once(": ") {
        Some((_, value)) => value,
        None => item.unwrap_or_default(),
    };
    let value = value.trim_start();
    value.starts_with("{{") || value.starts_with("{%")
}

/// A hint for the YAML syntax errors a hand-edited file meets most, from
/// the character where the parser stopped: a tab, which YAML does not
/// allow for indentation, and a value that starts with a character YAML
/// reserves (`@`, `` ` ``, `%`), which needs quotes.
fn syntax_hint(line_text: &str, column: usize) -> &'static str {
    let at = line_text.chars().nth(column.saturating_sub(1));
    match at {
        Some('\t') => TAB_HINT,
        Some('@' | '`') => "; a value starting with `@` or `` ` `` must be quoted: \"@value\"",
        Some('%') => "; a value starting with `%` must be quoted: \"%value\"",
        _ => "",
    }
}

/// Why a file's one document could not be read.
enum DocumentError {
    Syntax(serde_norway::Error),
    /// The file holds something in a second document, whose index this is.
    Another(usize),
    /// Values nest deeper than the library reads, first at this place.
    TooDeep(Pos),
}

const NESTED_TOO_DEEP: &str = "values are nested here deeper than the parser allows";

/// The first YAML document of `text`. A later document that holds
/// nothing (a `---` left at the end by a tool that joins or generates
/// files) is skipped; one that holds something is an error, as routes.yaml
/// is one document.
fn first_document(text: &str) -> Result<Value, DocumentError> {
    let mut first = Value::Null;
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        // After a failure the iterator yields the same failure again.
        let value = Value::deserialize(document).map_err(DocumentError::Syntax)?;
        match index {
            0 => first = value,
            _ if value.is_null() => {}
            _ => return Err(DocumentError::Another(index)),
        }
    }
    Ok(first)
}

/// The first document of a file, read as a tree.
struct Tree<'a> {
    root: Value,
    /// The text the tree was read from: the file's, with each integer too
    /// large to read put in quotes.
    text: Cow<'a, str>,
    /// Where each of those integers starts.
    oversized: Vec<Pos>,
}

/// The most integers too large to read that are quoted and read past; each
/// costs one more reading of the file.
const MAX_OVERSIZED: usize = 32;

/// Reads the first document of `text`. An integer too large for 64 bits
/// is a value the YAML library cannot hold, and it stops the reading of
/// the whole file. Each is put in quotes in a copy of the text, which is
/// read again, so that it is reported beside the file's other errors
/// rather than alone. On failure, the text read last comes with the error.
fn read_tree(text: &str) -> Result<Tree<'_>, (Cow<'_, str>, DocumentError)> {
    if let Some(at) = locate::nested_too_deep(text) {
        return Err((Cow::Borrowed(text), DocumentError::TooDeep(at)));
    }
    let mut text = Cow::Borrowed(text);
    let mut oversized = Vec::new();
    loop {
        let err = match first_document(&text) {
            Ok(root) => {
                return Ok(Tree {
                    root,
                    text,
                    oversized,
                });
            }
            Err(DocumentError::Syntax(err)) => err,
            Err(other) => return Err((text, other)),
        };
        let at = err
            .location()
            .map(|at| Pos {
                line: at.line(),
                column: at.column(),
            })
            .filter(|at| {
                is_oversized_integer(&err.to_string())
                    && oversized.len() < MAX_OVERSIZED
                    && !oversized.contains(at)
            });
        match at {
            Some(at) if quote_scalar_at(text.to_mut(), at) => oversized.push(at),
            _ => return Err((text, DocumentError::Syntax(err))),
        }
    }
}

/// Whether the YAML library refused a value for being an integer it cannot
/// hold: "routes[0].max_body: invalid type: integer `…` as u128, expected
/// any YAML value".
fn is_oversized_integer(message: &str) -> bool {
    message.contains("invalid type: integer") && message.contains("expected any YAML value")
}

/// Puts the plain scalar that starts at `at` in double quotes; `false` when
/// no such scalar starts there.
fn quote_scalar_at(text: &mut String, at: Pos) -> bool {
    let Some(line_start) = (match at.line {
        0 => None,
        1 => Some(0),
        line => text.match_indices('\n').nth(line - 2).map(|(i, _)| i + 1),
    }) else {
        return false;
    };
    let Some((offset, _)) = text[line_start..]
        .char_indices()
        .nth(at.column.saturating_sub(1))
    else {
        return false;
    };
    let start = line_start + offset;
    let length = text[start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.')))
        .unwrap_or(text.len() - start);
    if length == 0 {
        return false;
    }
    text.insert(start + length, '"');
    text.insert(start, '"');
    true
}

/// The one error of a file that cannot be read as one YAML document.
fn document_error(file: &str, text: &str, err: DocumentError) -> ConfigError {
    let (line, column, message) = match err {
        DocumentError::Another(index) => {
            let at = Locations::of(text).document(index);
            (
                at.line,
                at.column,
                "a second YAML document starts here; routes.yaml holds one document, so remove this `---` and merge what follows into the first".to_owned(),
            )
        }
        DocumentError::TooDeep(at) => (at.line, at.column, NESTED_TOO_DEEP.to_owned()),
        DocumentError::Syntax(err) => syntax_error(text, &err),
    };
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        path: String::new(),
        message,
    }
}

/// A syntax error's place and message. A syntax error makes everything
/// after it unreliable, so it is reported alone.
fn syntax_error(text: &str, err: &serde_norway::Error) -> (usize, usize, String) {
    let full = err.to_string();
    let (line, column) = err.location().map_or((1, 1), |at| (at.line(), at.column()));
    // The library places a key written twice at the mapping that holds it;
    // the second one is where a reader looks.
    if full.contains("duplicate entry with key")
        && let Some((path, first, again)) = Locations::of(text).first_duplicate()
    {
        let key = match path.0.last() {
            Some(Seg::Key(key)) => key.as_str(),
            _ => "?",
        };
        return (
            again.line,
            again.column,
            format!(
                "`{key}` is written twice in this map (first at line {}); YAML keeps one value per key, so remove one",
                first.line
            ),
        );
    }
    // The library places a character YAML refuses by its byte offset, at
    // line 1; the reader needs its line, its column and which it is, since
    // most are invisible.
    if full.contains("control characters are not allowed")
        && let Some((line, column, character)) = first_refused_character(text)
    {
        return (
            line,
            column,
            format!(
                "the character U+{:04X} is a control character, which YAML does not allow; remove it (it may have come with text pasted from a terminal or another program)",
                u32::from(character)
            ),
        );
    }
    // Aliases that expand to millions of values (a "billion laughs" file)
    // are refused by the library before they take the memory.
    if full.contains("repetition limit exceeded") {
        return (
            line,
            column,
            "the file's aliases (`*name`) repeat their anchors' values more often than the parser allows, which no routes file needs; bring each block in fewer times".to_owned(),
        );
    }
    if full.contains("recursion limit exceeded") {
        return (line, column, NESTED_TOO_DEEP.to_owned());
    }
    // A quote that is never closed runs to the end of the file, where the
    // library places the error; the quote's opening is where to look.
    if full.contains("found unexpected end of stream")
        && let Some((context_line, context_column)) =
            context_mark(&full, "while scanning a quoted scalar")
    {
        return (
            context_line,
            context_column,
            "the quoted value that starts here is never closed; the file ends before its closing quote".to_owned(),
        );
    }
    // The parser may quote a value it refuses, which may be a secret.
    let mut message = without_value(&strip_location(&full));
    // `{ per_second: ${RATE} }`: in YAML's flow style the `{` of an
    // unquoted variable is syntax.
    let line_text = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    if line_text.contains("${") && message.contains("flow") {
        message.push_str("; inside `{ }` or `[ ]`, write a variable in quotes: \"${VAR}\"");
    }
    // The parser may stop on the line after the template.
    let previous_line = match line {
        0 | 1 => "",
        _ => text.lines().nth(line - 2).unwrap_or_default(),
    };
    if message.contains("tab character") {
        message.push_str(TAB_HINT);
    } else if starts_value_with_template(line_text) || starts_value_with_template(previous_line) {
        message.push_str(UNQUOTED_TEMPLATE_HINT);
    } else if message.contains("cannot start any token") {
        message.push_str(syntax_hint(line_text, column));
    } else if message.contains("mapping values are not allowed") {
        message.push_str(&misplaced_key_hint(text, line, column));
    }
    if let Some((open_line, open_column, close_line)) = quote_left_open(text, line) {
        return (
            open_line,
            open_column,
            format!(
                "the quoted value that starts here is not closed on its line, so YAML reads it on to the next quote, at line {close_line}, and then fails ({message}); close the quote"
            ),
        );
    }
    (line, column, message)
}

/// A quoted value opened on a line before `error_line` and not closed on
/// it, which YAML reads on to the next quote in the file: when that quote
/// is on the line of the error and more text follows it (the quote that
/// opened the next value, as in `event_type: "deploy"`), the quote left
/// open, not the place YAML gave up, is what to fix. Its line and column,
/// and the line of the quote that closes it. A value quoted over several
/// lines on purpose ends at the end of a line, and is not blamed; lines
/// of a block scalar (`|`, `>`) are text, not values.
fn quote_left_open(text: &str, error_line: usize) -> Option<(usize, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let in_block = block_scalar_lines(&lines);
    let before = lines.get(..error_line.saturating_sub(1))?;
    let (index, at, quote) = before.iter().enumerate().rev().find_map(|(index, line)| {
        if in_block[index] {
            return None;
        }
        let (at, quote) = opening_quote(line)?;
        (closing_quote(&line[at + 1..], quote).is_none()).then_some((index, at, quote))
    })?;
    // Where YAML finds the closing quote: the next one in the rest of the
    // file.
    let (close_index, after) = lines
        .iter()
        .enumerate()
        .skip(index + 1)
        .find_map(|(i, line)| closing_quote(line, quote).map(|end| (i, &line[end..])))?;
    let after = after.trim();
    let runs_on = !after.is_empty() && !after.starts_with('#');
    let column = lines[index][..at].chars().count() + 1;
    (close_index + 1 == error_line && runs_on).then_some((index + 1, column, close_index + 1))
}

/// Which of `lines` belong to a block scalar: the lines after a value of
/// `|` or `>` (with its indicators) that are blank or indented deeper
/// than the line that opened it.
fn block_scalar_lines(lines: &[&str]) -> Vec<bool> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut inside = vec![false; lines.len()];
    let mut opened_at: Option<usize> = None;
    for (index, line) in lines.iter().enumerate() {
        if let Some(opener) = opened_at {
            if line.trim().is_empty() || indent(line) > opener {
                inside[index] = true;
                continue;
            }
            opened_at = None;
        }
        let value = line.split('#').next().unwrap_or_default().trim_end();
        let indicator = value.rsplit([' ', '-']).next().unwrap_or_default();
        let opens = indicator.starts_with(['|', '>'])
            && indicator[1..]
                .chars()
                .all(|c| matches!(c, '+' | '-' | '1'..='9'))
            && (value.contains(": ")
                || value.trim_start().starts_with("- ")
                || value.trim() == indicator);
        if opens {
            opened_at = Some(indent(line));
        }
    }
    inside
}

/// Where a quoted value starts on `line`, and its quote: the line's first
/// value after any `- ` of list items, either itself quoted or after its
/// key's `: `. A line that is a comment has none.
fn opening_quote(line: &str) -> Option<(usize, char)> {
    let mut at = line.len() - line.trim_start().len();
    while line[at..].starts_with("- ") {
        at += 2;
        at += line[at..].len() - line[at..].trim_start().len();
    }
    let starts_quoted = |at: usize| match line[at..].chars().next() {
        Some(quote @ ('"' | '\'')) => Some((at, quote)),
        _ => None,
    };
    if line[at..].starts_with('#') {
        return None;
    }
    if let Some(found) = starts_quoted(at) {
        return Some(found);
    }
    let value_at = at + line[at..].find(": ")? + 2;
    starts_quoted(value_at + (line[value_at..].len() - line[value_at..].trim_start().len()))
}

/// Where the closing `quote` ends in `rest`, the text after its opening
/// one (a backslash escapes a quote in double quotes; in single quotes a
/// doubled quote is one character).
fn closing_quote(rest: &str, quote: char) -> Option<usize> {
    let mut chars = rest.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' if quote == '"' => {
                chars.next();
            }
            '\'' if quote == '\'' && chars.peek().is_some_and(|(_, c)| *c == '\'') => {
                chars.next();
            }
            c if c == quote => return Some(at + c.len_utf8()),
            _ => {}
        }
    }
    None
}

/// The line, column and value of the first character YAML does not allow
/// in a file: the C0 controls but tab, line feed and carriage return, DEL,
/// the C1 controls but NEL, and the two noncharacters U+FFFE and U+FFFF.
fn first_refused_character(text: &str) -> Option<(usize, usize, char)> {
    let refused = |c: char| match c {
        '\t' | '\n' | '\r' | '\u{85}' => false,
        c if c < ' ' => true,
        '\u{7f}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}' => true,
        _ => false,
    };
    text.split('\n').enumerate().find_map(|(index, line_text)| {
        line_text
            .chars()
            .enumerate()
            .find(|(_, c)| refused(*c))
            .map(|(at, c)| (index + 1, at + 1, c))
    })
}

/// Why a `key:` stands where no key can: either an unquoted value holds
/// `: ` (`title: Deploy: done`), or the line is indented deeper than the
/// key before it, which makes it a continuation of that key's value.
fn misplaced_key_hint(text: &str, line: usize, column: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(line_text) = lines.get(line.saturating_sub(1)) else {
        return String::new();
    };
    let before: String = line_text.chars().take(column.saturating_sub(1)).collect();
    if before.contains(": ") {
        return "; a value that holds `: ` must be quoted, as in \"Deploy: done\"".to_owned();
    }
    let indent = |text: &str| text.len() - text.trim_start_matches([' ', '-']).len();
    let previous = lines[..line.saturating_sub(1)]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, text)| !text.trim().is_empty() && !text.trim_start().starts_with('#'));
    match previous {
        Some((index, previous)) if indent(line_text) > indent(previous) => format!(
            "; this line is indented deeper than line {}, so it reads as the rest of that line's value: line its key up with the key it belongs beside",
            index + 1
        ),
        _ => String::new(),
    }
}

/// The line and column of the context `context` ("while scanning a quoted
/// scalar") that the YAML library writes after a problem, as in
/// "…, while scanning a quoted scalar at line 2 column 10".
fn context_mark(message: &str, context: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find(context)? + context.len()..];
    let rest = rest.strip_prefix(" at line ")?;
    let (line, rest) = rest.split_once(" column ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.parse().ok()?, column.parse().ok()?))
}

/// Reports each integer too large to read, in place of whatever the text
/// it was read as (in quotes) gave: a number that is "not a whole number",
/// or nothing at all where text is taken.
fn report_oversized(report: &mut Report, oversized: &[Pos]) {
    report.errors.retain(|error| {
        !oversized.contains(&Pos {
            line: error.line,
            column: error.column,
        })
    });
    for &at in oversized {
        let path = report
            .locations
            .value_at(at)
            .cloned()
            .unwrap_or_else(Path::root);
        report.error_at(
            at,
            &path,
            "is a whole number too large to read (more than 64 bits); write it in quotes if it is text",
        );
    }
}

pub(super) fn load(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let Tree {
        mut root,
        text,
        oversized,
    } = read_tree(text)
        .map_err(|(text, err)| ConfigErrors::from(vec![document_error(file, &text, err)]))?;
    // YAML's merge keys (`<<: *shared_verify`) let routes share a block;
    // the library leaves them as keys named `<<` until asked.
    if let Err(err) = root.apply_merge() {
        return Err(ConfigErrors::from(vec![ConfigError {
            file: file.to_owned(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!(
                "a merge key (`<<`) must name a map or a list of maps: {}",
                strip_location(&err.to_string())
            ),
        }]));
    }
    let mut report = Report {
        file,
        locations: Locations::of(&text),
        errors: Vec::new(),
        warnings: Vec::new(),
        defaulted: Vec::new(),
        substituted: BTreeMap::new(),
        unfilled: BTreeSet::new(),
    };

    let mut found = Found::default();
    substitute_tree(&mut root, &Path::root(), env, &mut found);
    report.substituted = std::mem::take(&mut found.substituted);
    for error in found.errors {
        report.error(&error.path, error.message);
        report.unfilled.insert(error.path.to_string());
    }
    for (path, name) in found.unbraced {
        report.warn(
            &path,
            format!("`${name}` is sent as written; a variable is substituted only when written `${{{name}}}`"),
        );
    }
    report.defaulted = found.defaulted;
    let written = found.written;
    // Neither the text nor the number is quoted: a secret written in the
    // file can be such a number.
    let renumbered = report.locations.renumbered().to_vec();
    for path in renumbered
        .into_iter()
        .filter(|path| !is_numeric_setting(path))
    {
        report.warn(
            &path,
            "is a number written in hexadecimal, octal or binary, or with a `+`, which YAML reads as its decimal value and the relay uses so; write the number in decimal, or the text in quotes to keep it as written",
        );
    }

    let config = build(&mut report, root, env);
    report_oversized(&mut report, &oversized);
    let mut errors = report.errors;
    let mut warnings = report.warnings;
    warnings.sort_by_key(|w| (w.line, w.column));
    if errors.is_empty()
        && let Some(config) = config
    {
        return Ok(Loaded {
            config,
            warnings,
            written,
        });
    }
    errors.sort_by_key(|e| (e.line, e.column));
    Err(ConfigErrors { errors, warnings })
}

/// Whether `message` quotes `value`: whole, or one word of it in quotes,
/// as a parser names one token of a value it split (`abc` of `abc-def`).
/// A word met unquoted is taken for the message's own (`RSA` in "is not an
/// RSA private key").
fn quotes(message: &str, value: &str) -> bool {
    !value.is_empty()
        && (message.contains(value)
            || value
                .split(|c: char| !c.is_alphanumeric())
                .filter(|word| !word.is_empty())
                .any(|word| {
                    ['`', '\'']
                        .iter()
                        .any(|quote| message.contains(&format!("{quote}{word}{quote}")))
                }))
}

/// The settings that hold a number (a count, a rate, a size in bytes),
/// which `0x10` means as well as `16` does. Elsewhere a number written so is
/// sent or compared as text, which its decimal value would not match.
/// (Durations need a unit, so a bare number there is refused anyway.)
const NUMERIC_SETTINGS: &[&str] = &[
    "installation_id",
    "concurrency",
    "per_minute",
    "max_attempts",
    "per_second",
    "burst",
    "max_body",
    "max_body_memory",
];

/// Whether `path` names one of the [`NUMERIC_SETTINGS`], rather than a key
/// of the same name inside a payload the relay sends.
fn is_numeric_setting(path: &Path) -> bool {
    let in_payload = path
        .0
        .iter()
        .any(|seg| matches!(seg, Seg::Key(key) if key == "client_payload" || key == "inputs"));
    !in_payload && NUMERIC_SETTINGS.iter().any(|key| path.ends_with_key(key))
}

/// The file's sections by name, each with its path, and the unknown
/// top-level keys, which may stand for a missing section. A key that
/// misspells a section (`route:`) is reported, and its contents are
/// checked as the section it means, so that one run tells all (unless that
/// section is there too). `None` when the file is not a map.
fn top_level(report: &mut Report, root: Value, root_path: &Path) -> Option<TopLevel> {
    let mut sections: HashMap<&'static str, (Value, Path)> = HashMap::new();
    let mut unknown_sections: Vec<String> = Vec::new();
    let mut misspelt_sections: Vec<(&'static str, Value, Path)> = Vec::new();
    match root {
        Value::Mapping(map) => {
            for (key, value) in map {
                let name = scalar_text(&key);
                let path = root_path.key(&name);
                match TOP_LEVEL_KEYS.iter().find(|known| **known == name) {
                    Some(known) => {
                        sections.insert(known, (value, path));
                    }
                    None => {
                        report.key_error(&path, unknown("key", &name, &names(&TOP_LEVEL_KEYS)));
                        let meant = did_you_mean(&name, &names(&TOP_LEVEL_KEYS))
                            .and_then(|meant| TOP_LEVEL_KEYS.iter().find(|k| **k == meant));
                        if let Some(meant) = meant {
                            misspelt_sections.push((meant, value, path));
                        }
                        unknown_sections.push(name);
                    }
                }
            }
        }
        Value::Null => {
            report.error(
                root_path,
                "the file is empty; it needs a `github` section and `routes`",
            );
            return None;
        }
        _ => {
            report.error(
                root_path,
                "the file must be a map with `github` and `routes` at the top",
            );
            return None;
        }
    }
    for (meant, value, path) in misspelt_sections {
        sections.entry(meant).or_insert((value, path));
    }
    Some(TopLevel {
        sections,
        unknown_sections,
    })
}

/// The top level of routes.yaml, as [`top_level`] reads it.
struct TopLevel {
    /// Each known section, with its path.
    sections: HashMap<&'static str, (Value, Path)>,
    /// The unknown top-level keys, which may stand for a missing section.
    unknown_sections: Vec<String>,
}

fn build(report: &mut Report, root: Value, env: &dyn Fn(&str) -> Option<String>) -> Option<Config> {
    let root_path = Path::root();
    let TopLevel {
        mut sections,
        unknown_sections,
    } = top_level(report, root, &root_path)?;
    let mut builder = EngineBuilder::new();
    // `gihub:` is reported as unknown; its section is not also missing.
    let misspelt = |section: &str| {
        unknown_sections
            .iter()
            .any(|name| may_stand_for(name, section))
    };
    let github = match sections.remove("github") {
        Some((value, path)) => github(report, value, &path, env),
        None if misspelt("github") => None,
        None => {
            report.error(
                &root_path,
                "missing key `github` (a `token` or an `app` to authenticate to GitHub)",
            );
            None
        }
    };
    // These sections' keys are all optional: one left out for its error
    // takes its default while the rest is checked, and the section is valid
    // only when nothing was left out.
    let server = section::<raw::RawServer>(report, sections.remove("server")).and_then(
        |(raw, path, left_out)| server(report, raw, &path).filter(|_| left_out.is_empty()),
    );
    let store = section::<raw::RawStore>(report, sections.remove("store")).and_then(
        |(raw, path, left_out)| store(report, raw, &path, env).filter(|_| left_out.is_empty()),
    );
    let retry = section::<raw::RawRetry>(report, sections.remove("retry")).and_then(
        |(raw, path, left_out)| {
            retry(report, raw, &path, &left_out).filter(|_| left_out.is_empty())
        },
    );
    let notify = match sections.remove("notify") {
        Some((value, path)) => notify(report, value, &path),
        None => Some(Vec::new()),
    };
    let body_limits = server.as_ref().map_or(
        BodyLimits {
            default_max_body: DEFAULT_MAX_BODY,
            max_body_memory: DEFAULT_MAX_BODY_MEMORY,
        },
        |s| BodyLimits {
            default_max_body: s.max_body,
            max_body_memory: s.max_body_memory,
        },
    );
    let routes = match sections.remove("routes") {
        Some((value, path)) => routes(report, &mut builder, value, &path, body_limits),
        None if misspelt("routes") => None,
        None => {
            report.error(&root_path, "missing key `routes`");
            None
        }
    };
    builder.finish();
    Some(Config {
        github: github?,
        server: server?,
        store: store?,
        retry: retry?,
        notify: notify?,
        routes: routes?,
    })
}

/// Deserializes an optional section, falling back to its defaults when it
/// is absent or empty, with what was left out of it for an error: a
/// section whose keys are all optional can be checked without those, so
/// that `retry: {max_attempts: lots, initial_backoff: 5 parsecs}` reports
/// both values.
fn section<T: DeserializeOwned + Default>(
    report: &mut Report,
    entry: Option<(Value, Path)>,
) -> Option<(T, Path, LeftOut)> {
    match entry {
        None | Some((Value::Null, _)) => Some((T::default(), Path::root(), LeftOut::default())),
        Some((value, path)) => report
            .parse_leaving_out(value, &path)
            .map(|(raw, left_out)| (raw, path, left_out)),
    }
}

fn duration(
    report: &mut Report,
    text: Option<Quantity>,
    path: &Path,
    default: Duration,
) -> Option<Duration> {
    match text {
        None => Some(default),
        Some(Quantity(text)) => parse_duration(&text)
            .map_err(|message| report.error(path, message))
            .ok(),
    }
}

/// A [`duration`] that must be longer than zero: a timeout, a window or a
/// tolerance of nothing would refuse or cut short everything.
fn positive_duration(
    report: &mut Report,
    text: Option<Quantity>,
    path: &Path,
    default: Duration,
) -> Option<Duration> {
    positive_duration_because(report, text, path, default, "")
}

/// [`positive_duration`], whose refusal of zero ends with `why`.
fn positive_duration_because(
    report: &mut Report,
    text: Option<Quantity>,
    path: &Path,
    default: Duration,
    why: &str,
) -> Option<Duration> {
    duration(report, text, path, default).filter(|duration| {
        let zero = duration.is_zero();
        if zero {
            report.error(path, format!("must be longer than 0{why}"));
        }
        !zero
    })
}

fn size(report: &mut Report, text: Option<Quantity>, path: &Path, default: u64) -> Option<u64> {
    match text {
        None => Some(default),
        Some(Quantity(text)) => match parse_size(&text) {
            Ok(0) => {
                report.error(path, "must be more than 0 bytes");
                None
            }
            Ok(bytes) => Some(bytes),
            Err(message) => {
                report.error(path, message);
                None
            }
        },
    }
}

fn positive(
    report: &mut Report,
    value: Option<Num<u32>>,
    path: &Path,
    default: u32,
) -> Option<u32> {
    match value {
        None => Some(default),
        Some(Num(0)) => {
            report.error(path, "must be at least 1");
            None
        }
        Some(Num(n)) => Some(n),
    }
}

fn networks(report: &mut Report, list: &[String], path: &Path) -> Option<Vec<ipnet::IpNet>> {
    let mut ok = true;
    let mut nets = Vec::with_capacity(list.len());
    for (index, text) in list.iter().enumerate() {
        let text = text.trim();
        // A bare address means that one host.
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => {
                report.error(
                    &path.index(index),
                    "not an IP address or a CIDR range such as 10.0.0.0/8",
                );
                ok = false;
            }
        }
    }
    ok.then_some(nets)
}

fn github(
    report: &mut Report,
    value: Value,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<GithubConfig> {
    // A key left out for its error takes its default while the rest is
    // checked; the section is valid only when nothing was left out.
    let (raw, left_out) = report.parse_leaving_out::<raw::RawGithub>(value, path)?;
    let mut ok = left_out.is_empty();

    let from_env = env("GITHUB_API_URL").filter(|url| !url.trim().is_empty());
    // An error in the variable is not on any line of the file: it is named
    // as what it is, at the `github` section it overrides.
    let (url_path, url_name) = match from_env {
        Some(_) => (
            path.clone(),
            "GITHUB_API_URL (which overrides github.api_url) ",
        ),
        None => (path.key("api_url"), ""),
    };
    let api_url = resolve_api_url(from_env, raw.api_url);
    if !check_api_url(report, &api_url, &url_path, url_name) {
        ok = false;
    }

    // Without the credential's keys, or beside a key that may misspell
    // one, the section is not judged to lack one.
    let credential_known = !left_out.explains(path, "token") && !left_out.explains(path, "app");
    let credential = match (raw.token, raw.app) {
        (None, None) if !credential_known => None,
        (Some(token), None) => token_credential(report, &token, &path.key("token")),
        (None, Some(app)) => github_app(report, app, &path.key("app"), &left_out),
        (Some(_), Some(_)) => {
            report.error(path, "has both `token` and `app`; keep one");
            None
        }
        (None, None) => {
            report.error(
                path,
                "needs a `token` or an `app` to authenticate to GitHub",
            );
            None
        }
    };

    let pacing = match raw.pacing {
        None => Some(default_pacing()),
        Some(value) => pacing(report, value, &path.key("pacing")),
    };
    let timeout = positive_duration(
        report,
        raw.timeout,
        &path.key("timeout"),
        Duration::from_secs(10),
    );

    ok.then_some(())?;
    Some(GithubConfig {
        api_url,
        credential: credential?,
        pacing: pacing?,
        timeout: timeout?,
    })
}

/// Checks the API's url, `url_name` naming where it came from when that is
/// not the key at `url_path`; answers whether it can be used.
fn check_api_url(report: &mut Report, api_url: &str, url_path: &Path, url_name: &str) -> bool {
    // The url is printed by `check --online`, `render` and `setup`, and may
    // come from a variable: it is never quoted, and may not carry a
    // password (the credential is the token or the App).
    let Some(url) = url::Url::parse(api_url)
        .ok()
        .filter(|url| matches!(url.scheme(), "https" | "http"))
    else {
        report.error(url_path, format!("{url_name}is not an http(s) URL"));
        return false;
    };
    if !url.username().is_empty() || url.password().is_some() {
        report.error(
            url_path,
            format!(
                "{url_name}holds a user or a password; GitHub is authenticated with the token or the App"
            ),
        );
        return false;
    }
    if url.query().is_some() || url.fragment().is_some() {
        // Request paths are appended to the url as text: a query would
        // end up in the middle of every one (`/api?x=1/repos/...`).
        report.error(
            url_path,
            format!(
                "{url_name}has a query or a fragment (`?` or `#`); give the API's base, such as https://HOST/api/v3"
            ),
        );
        return false;
    }
    if url.scheme() == "http" && !is_loopback(&url) {
        report.warn(
            url_path,
            format!(
                "{url_name}uses http://: the token, or the App's tokens, would cross the network unencrypted; use https://"
            ),
        );
    }
    true
}

/// The token credential from `github.token`, with the whitespace around it
/// dropped; `None`, with the error reported, when it is empty or holds a
/// character no GitHub token has.
fn token_credential(report: &mut Report, token: &str, token_path: &Path) -> Option<Credential> {
    // A token read from a file usually ends with a line break, which
    // no header may carry: it would fail every dispatch. GitHub's
    // tokens have no whitespace, so what surrounds one is dropped.
    let token = token.trim();
    if token.is_empty() {
        report.error(token_path, "is empty");
        None
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        report.error(
            token_path,
            "holds a space, a line break or a character that is not ASCII, which no GitHub token has",
        );
        None
    } else {
        report.secret_at(token_path);
        Some(Credential::Token(Secret::new(token.to_owned())))
    }
}

fn github_app(
    report: &mut Report,
    app: raw::RawApp,
    path: &Path,
    left_out: &LeftOut,
) -> Option<Credential> {
    let id = app.id.0.trim().to_owned();
    if id.is_empty() {
        report.error(&path.key("id"), "is empty");
        return None;
    }
    let private_key = match (app.private_key_file, app.private_key) {
        (Some(file), None) if !file.is_empty() => PrivateKeySource::File(PathBuf::from(file)),
        (None, Some(key)) if !key.is_empty() => {
            report.secret_at(&path.key("private_key"));
            let pem = with_line_breaks(key);
            if let Some(problem) = private_key_problem(&pem) {
                report.error(&path.key("private_key"), problem);
                return None;
            }
            PrivateKeySource::Inline(Secret::new(pem))
        }
        (Some(_), Some(_)) => {
            report.error(
                path,
                "has both `private_key_file` and `private_key`; keep one",
            );
            return None;
        }
        (Some(_), None) => {
            report.error(&path.key("private_key_file"), "is empty");
            return None;
        }
        (None, Some(_)) => {
            report.error(&path.key("private_key"), "is empty");
            return None;
        }
        // A key left out for its error, or misspelt, is not missing.
        (None, None)
            if left_out.explains(path, "private_key_file")
                || left_out.explains(path, "private_key") =>
        {
            return None;
        }
        (None, None) => {
            report.error(path, "needs `private_key_file` or `private_key`");
            return None;
        }
    };
    Some(Credential::App(AppCredential {
        id,
        private_key,
        installation_id: app.installation_id.map(|Num(id)| id),
    }))
}

/// A PEM key given on one line with its line breaks written as `\n`, as
/// an environment file (`docker run --env-file`, systemd's
/// `EnvironmentFile`) must hold it, with the line breaks put back.
fn with_line_breaks(key: String) -> String {
    if key.contains('\n') || !key.contains("\\n") {
        key
    } else {
        key.replace("\\n", "\n")
    }
}

/// Why `pem` is not the private key of a GitHub App, as far as its PEM
/// labels tell; `None` when it looks like one. The key itself is never
/// quoted. GitHub gives an App's key as an RSA key in PEM form
/// (`BEGIN RSA PRIVATE KEY`); the PKCS#8 form (`BEGIN PRIVATE KEY`) that
/// converting it gives works too.
pub fn private_key_problem(pem: &str) -> Option<&'static str> {
    let pem = pem.trim_start();
    if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----")
        || pem.starts_with("-----BEGIN PRIVATE KEY-----")
    {
        pem_body_problem(pem)
    } else if pem.contains("PUBLIC KEY-----") {
        Some(
            "is a public key; the App's private key is the .pem file GitHub downloads when you generate one (Private keys on the App's settings page)",
        )
    } else if pem.contains("ENCRYPTED PRIVATE KEY-----") {
        Some("is an encrypted private key; give the key unencrypted, as GitHub made it")
    } else if pem.starts_with("-----BEGIN") {
        Some(
            "is not an RSA private key: it must start with `-----BEGIN RSA PRIVATE KEY-----`, as the .pem file GitHub makes does",
        )
    } else {
        Some(
            "is not a private key in PEM form: it must start with `-----BEGIN RSA PRIVATE KEY-----`, as the .pem file GitHub makes does",
        )
    }
}

/// Why a private key whose labels are right is not a whole key; `None` when
/// it is. A key cut short on its way into a variable (a line lost, the
/// `END` line left behind) or one whose body was replaced would otherwise
/// load, and fail every dispatch once the relay runs. The key is read as
/// the signing library reads it: its PEM framing, then its DER structure.
fn pem_body_problem(pem: &str) -> Option<&'static str> {
    let damaged = "is damaged: the text between its BEGIN and END lines is not a whole key (a line lost or changed when the key was copied is the usual cause)";
    if !pem.contains("-----END ") {
        return Some(
            "is cut short: it has no `-----END ...-----` line (a key copied into a variable often loses its last lines)",
        );
    }
    let Ok(parsed) = pem::parse(pem) else {
        return Some(damaged);
    };
    // Only the old form of an encrypted key has headers, this one among them.
    if parsed
        .headers()
        .get("Proc-Type")
        .is_some_and(|kind| kind.contains("ENCRYPTED"))
    {
        return Some("is an encrypted private key; give the key unencrypted, as GitHub made it");
    }
    // Every RSA key, PKCS#1 or PKCS#8, is one DER SEQUENCE.
    match simple_asn1::from_der(parsed.contents()).as_deref() {
        Ok([simple_asn1::ASN1Block::Sequence(..)]) => None,
        _ => Some(damaged),
    }
}

fn default_pacing() -> Pacing {
    Pacing::Paced {
        concurrency: 1,
        min_interval: Duration::from_secs(1),
        per_minute: 80,
    }
}

fn pacing(report: &mut Report, value: Value, path: &Path) -> Option<Pacing> {
    let value = without_tags(value);
    match value {
        Value::String(text) if text == "off" => return Some(Pacing::Off),
        Value::Bool(false) => return Some(Pacing::Off),
        Value::Null => return Some(default_pacing()),
        Value::Mapping(_) => {}
        _ => {
            report.error(
                path,
                "must be `off` or a map of `concurrency`, `min_interval` and `per_minute`",
            );
            return None;
        }
    }
    // Every key is optional: one left out for its error takes its default
    // while the rest is checked.
    let (raw, left_out) = report.parse_leaving_out::<raw::RawPacing>(value, path)?;
    let concurrency = positive(report, raw.concurrency, &path.key("concurrency"), 1);
    let min_interval = duration(
        report,
        raw.min_interval,
        &path.key("min_interval"),
        Duration::from_secs(1),
    );
    let per_minute = positive(report, raw.per_minute, &path.key("per_minute"), 80);
    left_out.is_empty().then_some(())?;
    Some(Pacing::Paced {
        concurrency: concurrency?,
        min_interval: min_interval?,
        per_minute: per_minute?,
    })
}

fn server(report: &mut Report, raw: raw::RawServer, path: &Path) -> Option<ServerConfig> {
    let own_max_body = raw.max_body.is_some();
    let max_body = size(
        report,
        raw.max_body,
        &path.key("max_body"),
        DEFAULT_MAX_BODY,
    );
    let max_body_memory = size(
        report,
        raw.max_body_memory,
        &path.key("max_body_memory"),
        DEFAULT_MAX_BODY_MEMORY,
    );
    // Reported, but kept: the routes' own limits are judged against the
    // same memory, and the file fails to load either way.
    match (max_body, max_body_memory) {
        (Some(max_body), Some(memory)) if own_max_body => {
            fits_body_memory(report, max_body, memory, &path.key("max_body"));
        }
        // The default limit was not written: the line to change is the
        // memory's, or a `max_body` beside it.
        (Some(max_body), Some(memory)) if max_body > memory => report.error(
            &path.key("max_body_memory"),
            format!(
                "{memory} bytes is less than the default server.max_body ({max_body} bytes); set server.max_body no larger"
            ),
        ),
        _ => {}
    }
    let body_timeout = positive_duration(
        report,
        raw.body_timeout,
        &path.key("body_timeout"),
        DEFAULT_BODY_TIMEOUT,
    );
    let trusted_proxies = networks(report, &raw.trusted_proxies, &path.key("trusted_proxies"));
    let listen = raw.listen.filter(|listen| !listen.is_empty());
    if let Some(listen) = &listen
        && !is_listen_address(listen)
    {
        report.error(
            &path.key("listen"),
            "not an address to listen on; write `host:port`, such as `0.0.0.0:8080` or `[::]:8080`",
        );
        return None;
    }
    Some(ServerConfig {
        listen,
        max_body: max_body?,
        max_body_memory: max_body_memory?,
        body_timeout: body_timeout?,
        trusted_proxies: trusted_proxies?,
    })
}

/// Reports a body limit that does not fit in `server.max_body_memory`: a
/// body larger
/// than all bodies together may hold could never be received, and its
/// sender would get `503`s for ever.
fn fits_body_memory(report: &mut Report, max_body: u64, memory: u64, path: &Path) {
    if max_body > memory {
        report.error(
            path,
            format!(
                "{max_body} bytes is more than server.max_body_memory ({memory} bytes), which all bodies being received share; raise server.max_body_memory too"
            ),
        );
    }
}

/// Whether `serve` can bind `text`: a host (a name, an IPv4 address or a
/// bracketed IPv6 one) and a port number. Checked here so that `check`
/// refuses what `serve` would fail on.
pub fn is_listen_address(text: &str) -> bool {
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok()
                && !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}

fn store(
    report: &mut Report,
    raw: raw::RawStore,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<StoreConfig> {
    // Zero would prune each delivery as it finishes: `deliveries --id`
    // would find nothing and a sender's retry would be sent again.
    let retention = positive_duration_because(
        report,
        raw.retention,
        &path.key("retention"),
        Duration::from_secs(7 * 86_400),
        ": finished deliveries are kept this long for `deliveries`, `redeliver` and dedupe",
    );
    let synchronous = match raw.synchronous {
        None | Some(raw::RawSynchronous::Full) => Synchronous::Full,
        Some(raw::RawSynchronous::Normal) => Synchronous::Normal,
    };
    let url = raw.url.filter(|url| !url.is_empty());
    // Checked here too, so that `check` names the line; the message never
    // quotes the url, which may hold a password. `RELAY_DATABASE_URL`, when
    // set, wins over the file's url, which then goes unused.
    let overridden = env("RELAY_DATABASE_URL").is_some_and(|url| !url.trim().is_empty());
    if !overridden && let Some(Err(problem)) = url.as_deref().map(super::sqlite_file) {
        report.error(&path.key("url"), problem.to_string());
        return None;
    }
    Some(StoreConfig {
        url,
        retention: retention?,
        synchronous,
    })
}

fn retry(
    report: &mut Report,
    raw: raw::RawRetry,
    path: &Path,
    left_out: &LeftOut,
) -> Option<RetryConfig> {
    // A backoff not written, and perhaps meant by a key left out or
    // misspelt, is not the default it stands at here.
    let unsure = |written: bool, field: &str| !written && left_out.explains(path, field);
    let unsure_backoff = unsure(raw.initial_backoff.is_some(), "initial_backoff")
        || unsure(raw.max_backoff.is_some(), "max_backoff");
    let max_attempts = positive(report, raw.max_attempts, &path.key("max_attempts"), 10);
    let initial_backoff = duration(
        report,
        raw.initial_backoff,
        &path.key("initial_backoff"),
        Duration::from_secs(1),
    );
    let max_backoff = duration(
        report,
        raw.max_backoff,
        &path.key("max_backoff"),
        Duration::from_secs(600),
    );
    let give_up_after = duration(
        report,
        raw.give_up_after,
        &path.key("give_up_after"),
        Duration::from_secs(86_400),
    );
    if let (Some(initial), Some(max)) = (initial_backoff, max_backoff)
        && initial > max
        && !unsure_backoff
    {
        report.error(&path.key("initial_backoff"), "is longer than `max_backoff`");
        return None;
    }
    Some(RetryConfig {
        max_attempts: max_attempts?,
        initial_backoff: initial_backoff?,
        max_backoff: max_backoff?,
        give_up_after: give_up_after?,
    })
}

fn notify(report: &mut Report, value: Value, path: &Path) -> Option<Vec<NotifyTarget>> {
    let list: Vec<Value> = match value {
        Value::Null => return Some(Vec::new()),
        value => report.parse(value, path)?,
    };
    let mut ok = true;
    let mut targets = Vec::with_capacity(list.len());
    for (index, item) in list.into_iter().enumerate() {
        let item_path = path.index(index);
        // Checked beside a key left out or unknown, as a route is.
        let Some((raw, left_out)) = report.parse_leaving_out::<raw::RawNotify>(item, &item_path)
        else {
            ok = false;
            continue;
        };
        if !left_out.is_empty() {
            ok = false;
        }
        let (key, url, make): (&str, String, fn(Secret) -> NotifyKind) = match (raw.slack, raw.url)
        {
            (Some(url), None) => ("slack", url, NotifyKind::Slack),
            (None, Some(url)) => ("url", url, NotifyKind::Url),
            (None, None)
                if left_out.explains(&item_path, "slack")
                    || left_out.explains(&item_path, "url") =>
            {
                continue;
            }
            _ => {
                report.error(&item_path, "needs exactly one of `slack` or `url`");
                ok = false;
                continue;
            }
        };
        if url.starts_with("https://") || url.starts_with("http://") {
            report.secret_at(&item_path.key(key));
            targets.push(NotifyTarget {
                kind: make(Secret::new(url)),
            });
        } else {
            // The URL is a secret, so the message does not quote it.
            report.error(&item_path.key(key), "is not an http(s) URL");
            ok = false;
        }
    }
    ok.then_some(targets)
}

fn routes(
    report: &mut Report,
    builder: &mut EngineBuilder,
    value: Value,
    path: &Path,
    body_limits: BodyLimits,
) -> Option<Vec<Route>> {
    let list: Vec<Value> = match value {
        Value::Sequence(list) => list,
        Value::Null => Vec::new(),
        _ => {
            report.error(path, "must be a list of routes");
            return None;
        }
    };
    if list.is_empty() {
        report.warn(
            path,
            "there are no routes; every webhook will be answered 404",
        );
    }
    let mut ok = true;
    let mut routes = Vec::with_capacity(list.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, item) in list.into_iter().enumerate() {
        let route_path = path.index(index);
        // `- ~` (or a `-` with nothing after it) is no route at all.
        if item.is_null() {
            report.error(
                &route_path,
                "is empty; a route needs `id`, `verify` and `dispatch`",
            );
            ok = false;
            continue;
        }
        let Some((raw, left_out)) = report.parse_leaving_out::<raw::RawRoute>(item, &route_path)
        else {
            ok = false;
            continue;
        };
        // The rest of the route is still checked, so that an error in
        // `rate_limit` does not hide one in `verify`; what was left out is
        // not then reported missing (`verify` takes any value here, and is
        // checked below), nor is what an unknown key may misspell.
        if !left_out.is_empty() {
            ok = false;
        }
        match &raw.id {
            None => {
                if !left_out.explains(&route_path, "id") {
                    report.error(
                        &route_path,
                        "missing key `id`, the name the route's URL ends with (`/hooks/<id>`)",
                    );
                }
                ok = false;
            }
            Some(id) => match seen.get(&id.0) {
                Some(first) => {
                    report.error(
                        &route_path.key("id"),
                        format!("already the id of {}", path.index(*first)),
                    );
                    ok = false;
                }
                None => {
                    seen.insert(id.0.clone(), index);
                }
            },
        }
        let id_path = route_path.key("id");
        if let Some(filled) = report.substituted.get(&id_path.to_string()) {
            // A URL path made secret by a variable is not kept secret: the
            // id is a label and a suggestion wherever the relay names a
            // route, to anyone who can read `/metrics`.
            let message = format!(
                "a route id is public: it shows in /metrics, the log, the listings and a 404's \"did you mean\"; if {} holds a secret, authenticate the route with `verify` instead",
                variable_names(filled)
            );
            report.warn(&id_path, message);
        }
        match route(report, builder, raw, &route_path, &left_out, body_limits) {
            Some(route) => routes.push(route),
            None => ok = false,
        }
    }
    ok.then_some(routes)
}

/// A route id is one or more segments joined by `/`, so that a recipe's
/// URL can read `/hooks/contentful/acme-blog`; Contentful signs the path,
/// so the id must be able to hold the path the sender was given.
fn valid_route_id(id: &str) -> bool {
    id.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    })
}

fn route(
    report: &mut Report,
    builder: &mut EngineBuilder,
    raw: raw::RawRoute,
    path: &Path,
    left_out: &LeftOut,
    body_limits: BodyLimits,
) -> Option<Route> {
    let errors_before = report.errors.len();
    // Whatever an earlier, invalid route left in the builder is not ours.
    builder.take_body_shape();
    if let Some(id) = &raw.id
        && !valid_route_id(&id.0)
    {
        report.error(
            &path.key("id"),
            "not a valid route id; use letters, digits, `_`, `.` and `-`, in segments separated by `/`",
        );
    }

    let verify = match raw.verify {
        Some(value) => verify(report, value, &path.key("verify")),
        None if left_out.explains(path, "verify") => None,
        None => {
            report.error(
                path,
                "missing key `verify`; write `verify: none` to accept unauthenticated requests",
            );
            None
        }
    };

    // A route whose `verify` could not be read is not said to lack `sns`.
    builder.set_sns_in_context(!matches!(&verify, Some(v) if !matches!(v, Verify::Sns(_))));

    let rate_limit = raw
        .rate_limit
        .and_then(|limit| rate_limit(report, limit, &path.key("rate_limit")));

    let when = raw.when.and_then(|source| {
        let when_path = path.key("when");
        let source = strip_braces(&source);
        builder
            .condition(&when_path.to_string(), source)
            .map_err(|err| report.code_error(&when_path, err.to_string()))
            .ok()
    });

    let dedupe_key = raw
        .dedupe_key
        .and_then(|source| dedupe_key(report, builder, &path.key("dedupe_key"), &source));

    let route_notify = match raw.notify {
        // `notify:` with nothing after it says nothing either.
        None | Some(Value::Null) => Some(None),
        Some(value) => notify(report, value, &path.key("notify")).map(Some),
    };

    let debounce = raw
        .debounce
        .and_then(|raw| debounce(report, raw, &path.key("debounce")));

    let own_max_body = raw.max_body.is_some();
    let max_body = size(
        report,
        raw.max_body,
        &path.key("max_body"),
        body_limits.default_max_body,
    );
    // One inherited from `server.max_body` is judged there.
    if let Some(max_body) = max_body.filter(|_| own_max_body) {
        fits_body_memory(
            report,
            max_body,
            body_limits.max_body_memory,
            &path.key("max_body"),
        );
    }
    let source_ips = networks(report, &raw.source_ips, &path.key("source_ips"));

    check_allowed_repos(report, &raw.allowed_repos, &path.key("allowed_repos"));

    // Patterns left out for an error are not known to be none: a templated
    // repo is then not said to need them.
    let allowed_repos =
        (!left_out.explains(path, "allowed_repos")).then_some(&raw.allowed_repos[..]);
    let dispatch = targets(report, builder, raw.dispatch, path, left_out, allowed_repos);

    builder.set_sns_in_context(true);
    if report.errors.len() > errors_before {
        return None;
    }
    Some(Route {
        id: raw.id?.0,
        verify: verify?,
        rate_limit,
        when,
        dispatch,
        allowed_repos_as_written: report.as_written(&path.key("allowed_repos"), &raw.allowed_repos),
        allowed_repos: raw.allowed_repos,
        max_body: max_body?,
        source_ips: source_ips?,
        dedupe_key,
        debounce,
        notify: route_notify?,
        body_shape: builder.take_body_shape(),
    })
}

/// A route's `rate_limit`: `burst` defaults to `per_second`.
fn rate_limit(
    report: &mut Report,
    limit: raw::RawRateLimit,
    limit_path: &Path,
) -> Option<RateLimit> {
    let per_second = positive(
        report,
        Some(limit.per_second),
        &limit_path.key("per_second"),
        1,
    )?;
    let burst = positive(report, limit.burst, &limit_path.key("burst"), per_second)?;
    Some(RateLimit { per_second, burst })
}

/// A route's `dedupe_key`, which must be a template.
fn dedupe_key(
    report: &mut Report,
    builder: &mut EngineBuilder,
    key_path: &Path,
    source: &str,
) -> Option<crate::template::StringTemplate> {
    let template = compile_string(report, builder, key_path, source)?;
    // `dedupe_key: ""` turns deduplication off; any other text without
    // a tag is one key for every webhook (`body.entry.id`, written as
    // a `when` is), so all but the first would be dropped as repeats.
    if template.is_static().is_some_and(|text| !text.is_empty()) {
        report.error(
            key_path,
            "has no `{{ }}`, so every webhook would have the same key and all but the first would be answered as duplicates; write the key as a template, as in \"{{ body.entry.id }}\" (or \"\" to turn deduplication off)",
        );
        return None;
    }
    Some(template)
}

/// A route's `debounce`: `max_wait` defaults to five minutes, or the
/// window if it is longer.
fn debounce(report: &mut Report, raw: raw::RawDebounce, debounce_path: &Path) -> Option<Debounce> {
    let window_path = debounce_path.key("window");
    let window = positive_duration(report, Some(raw.window), &window_path, Duration::ZERO)?;
    let max_wait = match raw.max_wait {
        // Without a bound a steady stream would postpone the dispatch for
        // ever; five minutes (or the window, if longer) is the default.
        None => window.max(DEFAULT_DEBOUNCE_MAX_WAIT),
        Some(text) => {
            let wait_path = debounce_path.key("max_wait");
            let wait = duration(report, Some(text), &wait_path, Duration::ZERO)?;
            if wait < window {
                report.error(&wait_path, "is shorter than `window`");
                return None;
            }
            wait
        }
    };
    Some(Debounce { window, max_wait })
}

/// Checks each of `allowed_repos`: a repository name once its `*`s are
/// filled in.
fn check_allowed_repos(report: &mut Report, allowed: &[String], allowed_path: &Path) {
    for (index, pattern) in allowed.iter().enumerate() {
        if routing::check_repo(&pattern.replace('*', "x")).is_err() {
            report.error(
                &allowed_path.index(index),
                "not a repository pattern such as `acme/*` or `acme/blog`",
            );
        }
    }
}

/// A route's `dispatch` list, each target validated; a target that fails
/// is left out, its errors reported.
fn targets(
    report: &mut Report,
    builder: &mut EngineBuilder,
    list: Option<Vec<Value>>,
    path: &Path,
    left_out: &LeftOut,
    allowed_repos: Option<&[String]>,
) -> Vec<Target> {
    let dispatch_path = path.key("dispatch");
    let mut dispatch = Vec::new();
    match list {
        // A plainly misspelt `dispach:` is reported as unknown; its targets
        // are still checked, at the key as written, so that fixing its name
        // does not bring a second round of errors. None of them is kept:
        // the route already fails.
        None if let Some((name, Value::Sequence(list))) = left_out.misspelt(path, "dispatch") => {
            for (index, item) in list.iter().enumerate() {
                let target_path = path.key(name).index(index);
                target(report, builder, item.clone(), &target_path, allowed_repos);
            }
        }
        None if left_out.explains(path, "dispatch") => {}
        None => report.error(path, "missing key `dispatch` (the list of targets)"),
        Some(list) if list.is_empty() => {
            report.error(
                &dispatch_path,
                "is empty; a route needs at least one target",
            );
        }
        Some(list) => {
            // A target is half a kilobyte; thousands of routes of one or two
            // targets each would otherwise hold room for four.
            dispatch.reserve_exact(list.len());
            for (index, earlier) in repeated_items(&list) {
                report.warn(
                    &dispatch_path.index(index),
                    format!("is the same as target {earlier}: each webhook is sent to it twice"),
                );
            }
            for (index, item) in list.into_iter().enumerate() {
                let target_path = dispatch_path.index(index);
                if let Some(target) = target(report, builder, item, &target_path, allowed_repos) {
                    dispatch.push(target);
                }
            }
        }
    }
    dispatch
}

/// The index of each item of `list` written exactly as an earlier one,
/// with that earlier one's index.
fn repeated_items(list: &[Value]) -> Vec<(usize, usize)> {
    (1..list.len())
        .filter_map(|index| {
            let earlier = list[..index].iter().position(|item| *item == list[index])?;
            Some((index, earlier))
        })
        .collect()
}

/// `when` is an expression, but users often wrap it in `{{ }}` out of habit;
/// both mean the same.
fn strip_braces(source: &str) -> &str {
    crate::template::lone_expression(source).unwrap_or(source)
}

/// Why a secret's form is wrong, if it is; the message names the secret's
/// place, never its value.
type SecretCheck = fn(&Secret) -> Option<&'static str>;

/// Accepts any non-empty secret.
const ANY_SECRET: SecretCheck = |_| None;

fn secret_list(
    report: &mut Report,
    path: &Path,
    (one_key, one): (&str, Option<String>),
    (many_key, many): (&str, Option<Vec<String>>),
    check: SecretCheck,
    left_out: &LeftOut,
) -> Option<Vec<Secret>> {
    let list = match (one, many) {
        (Some(one), None) => vec![(path.key(one_key), one)],
        (None, Some(many)) => {
            let many_path = path.key(many_key);
            if many.is_empty() {
                report.error(&many_path, "is empty");
                return None;
            }
            many.into_iter()
                .enumerate()
                .map(|(index, value)| (many_path.index(index), value))
                .collect()
        }
        (Some(_), Some(_)) => {
            report.error(
                path,
                format!("has both `{one_key}` and `{many_key}`; keep one"),
            );
            return None;
        }
        // Left out for an error, or misspelt: not missing.
        (None, None) if left_out.explains(path, one_key) || left_out.explains(path, many_key) => {
            return None;
        }
        (None, None) => {
            report.error(path, format!("needs `{one_key}` or `{many_key}`"));
            return None;
        }
    };
    let mut ok = true;
    let mut secrets = Vec::with_capacity(list.len());
    for (item_path, value) in list {
        if value.is_empty() {
            // Usually an environment variable that is set but empty; an
            // empty secret would let anyone in.
            report.error(&item_path, "is empty");
            ok = false;
        } else {
            report.secret_at(&item_path);
            if value.trim() != value {
                // Kept as written, since a sender may really use such a
                // secret; but most often it is the line break a file ends
                // with, read into the variable, and then nothing matches.
                report.warn(
                    &item_path,
                    "begins or ends with whitespace (a space, a tab or a line break), which is kept: a secret read from a file often keeps its last line break, and then no request matches it",
                );
            }
            let secret = Secret::new(value);
            match check(&secret) {
                Some(problem) => {
                    report.error(&item_path, problem);
                    ok = false;
                }
                None => secrets.push(secret),
            }
        }
    }
    ok.then_some(secrets)
}

fn header_name(report: &mut Report, path: &Path, header: &str) -> Option<String> {
    let valid = !header.is_empty()
        && header
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if !valid {
        report.error(path, "not a valid HTTP header name");
        return None;
    }
    Some(header.to_ascii_lowercase())
}

/// `value` without the YAML tags around it.
fn without_tags(mut value: Value) -> Value {
    while let Value::Tagged(tagged) = value {
        value = tagged.value;
    }
    value
}

fn verify(report: &mut Report, value: Value, path: &Path) -> Option<Verify> {
    let methods = names(&raw::VERIFY_METHODS);
    // A YAML tag (`!v {hmac: ...}`) is read through, as serde reads it
    // everywhere else.
    let map = match without_tags(value) {
        Value::String(text) if text == "none" => {
            report.warn(path, "the route accepts unauthenticated requests");
            return Some(Verify::None);
        }
        // A method named without its settings: the name is right, the
        // shape is not, and "did you mean" the same name would not say so.
        Value::String(text) if methods.contains(&text) => {
            report.error(
                path,
                format!("`{text}` needs its settings: write it as a key under `verify:`, with the method's keys under it (`verify:` then `  {text}:` on the next line)"),
            );
            return None;
        }
        Value::String(text) => {
            let mut expected = methods.clone();
            expected.insert(0, "none".to_owned());
            report.error(path, unknown_value("verify method", &text, &expected));
            return None;
        }
        Value::Mapping(map) => map,
        _ => {
            report.error(
                path,
                "must be `none` or a map holding one method, such as `hmac:`",
            );
            return None;
        }
    };
    if map.len() != 1 {
        let found: Vec<String> = map
            .keys()
            .map(|k| format!("`{}`", scalar_text(k)))
            .collect();
        let message = if found.is_empty() {
            format!(
                "holds no method; use one of {}, or `none`",
                methods.join(", ")
            )
        } else {
            format!("must hold exactly one method, found {}", found.join(", "))
        };
        report.error(path, message);
        return None;
    }
    let (key, value) = map.into_iter().next()?;
    let method = scalar_text(&key);
    let method_path = path.key(&method);
    match method.as_str() {
        "hmac" => hmac_verify(report, value, &method_path),
        "github" => github_verify(report, value, &method_path),
        "token" => token_verify(report, value, &method_path),
        "basic" => basic_verify(report, value, &method_path),
        "standard_webhooks" | "contentful" | "sanity" | "ghost" | "stripe" | "slack" => {
            timed_verify(report, &method, value, &method_path)
        }
        "sns" => sns_verify(report, value, &method_path),
        other => {
            report.key_error(&method_path, unknown("verify method", other, &methods));
            None
        }
    }
}

/// `verify: {hmac: ...}`: a keyed hash of the body in a header the route names.
fn hmac_verify(report: &mut Report, value: Value, method_path: &Path) -> Option<Verify> {
    let (raw, left_out) = report.parse_leaving_out::<raw::RawHmac>(value, method_path)?;
    let header = required(report, method_path, "header", raw.header, &left_out)
        .and_then(|header| header_name(report, &method_path.key("header"), &header));
    let secrets = secret_list(
        report,
        method_path,
        ("secret", raw.secret),
        ("secrets", raw.secrets),
        ANY_SECRET,
        &left_out,
    );
    left_out.is_empty().then_some(())?;
    Some(Verify::Hmac(HmacVerify {
        secrets: secrets?,
        header: header?,
        algorithm: match raw.algorithm {
            Some(raw::RawAlgorithm::Sha1) => HmacAlgorithm::Sha1,
            None | Some(raw::RawAlgorithm::Sha256) => HmacAlgorithm::Sha256,
            Some(raw::RawAlgorithm::Sha512) => HmacAlgorithm::Sha512,
        },
        encoding: match raw.encoding {
            None | Some(raw::RawEncoding::Hex) => SignatureEncoding::Hex,
            Some(raw::RawEncoding::Base64) => SignatureEncoding::Base64,
        },
        prefix: raw.prefix.filter(|prefix| !prefix.is_empty()),
    }))
}

/// `verify: {github: ...}`: GitHub's `X-Hub-Signature-256`.
fn github_verify(report: &mut Report, value: Value, method_path: &Path) -> Option<Verify> {
    let (raw, left_out) = report.parse_leaving_out::<raw::RawGithubVerify>(value, method_path)?;
    let secrets = secret_list(
        report,
        method_path,
        ("secret", raw.secret),
        ("secrets", raw.secrets),
        ANY_SECRET,
        &left_out,
    )?;
    left_out.is_empty().then_some(())?;
    Some(Verify::Github { secrets })
}

/// A key the map at `path` cannot go without. Its structure takes it as
/// optional so that its absence is told beside the map's other faults
/// (the other keys it needs among them), not instead of them, as a
/// missing key that stops the map's reading would be. A key left out for
/// an error of its own, or that a misspelt one stands for, is not
/// reported again.
fn required<T>(
    report: &mut Report,
    path: &Path,
    key: &str,
    value: Option<T>,
    left_out: &LeftOut,
) -> Option<T> {
    if value.is_none() && !left_out.explains(path, key) {
        report.error(path, format!("missing key `{key}`"));
    }
    value
}

/// `verify: {token: ...}`: a shared value in a header the route names.
fn token_verify(report: &mut Report, value: Value, method_path: &Path) -> Option<Verify> {
    let (raw, left_out) = report.parse_leaving_out::<raw::RawToken>(value, method_path)?;
    let header = required(report, method_path, "header", raw.header, &left_out)
        .and_then(|header| header_name(report, &method_path.key("header"), &header));
    let values = secret_list(
        report,
        method_path,
        ("value", raw.value),
        ("values", raw.values),
        ANY_SECRET,
        &left_out,
    );
    left_out.is_empty().then_some(())?;
    Some(Verify::Token {
        header: header?,
        values: values?,
    })
}

/// `verify: {basic: ...}`: HTTP Basic authentication.
fn basic_verify(report: &mut Report, value: Value, method_path: &Path) -> Option<Verify> {
    let (raw, left_out) = report.parse_leaving_out::<raw::RawBasic>(value, method_path)?;
    let username = required(report, method_path, "username", raw.username, &left_out);
    let passwords = secret_list(
        report,
        method_path,
        ("password", raw.password),
        ("passwords", raw.passwords),
        ANY_SECRET,
        &left_out,
    );
    let username = username?;
    if username.is_empty() || username.contains(':') {
        report.error(
            &method_path.key("username"),
            "must be non-empty and contain no `:`",
        );
        return None;
    }
    left_out.is_empty().then_some(())?;
    Some(Verify::Basic {
        username,
        passwords: passwords?,
    })
}

/// The methods that sign a timestamp with the body, each with its
/// sender's own tolerance by default.
fn timed_verify(
    report: &mut Report,
    method: &str,
    value: Value,
    method_path: &Path,
) -> Option<Verify> {
    let (raw, left_out) = report.parse_leaving_out::<raw::RawTimed>(value, method_path)?;
    // The reference libraries use five minutes, except Contentful's
    // own toolkit, which refuses requests older than 30 s.
    let five_minutes = Duration::from_secs(300);
    let (default_tolerance, check, build): (_, SecretCheck, fn(TimedSecrets) -> Verify) =
        match method {
            "standard_webhooks" => (
                five_minutes,
                |secret| crate::verify::standard_webhooks_key(secret).err(),
                Verify::StandardWebhooks,
            ),
            "contentful" => (Duration::from_secs(30), ANY_SECRET, Verify::Contentful),
            "sanity" => (five_minutes, ANY_SECRET, Verify::Sanity),
            "ghost" => (five_minutes, ANY_SECRET, Verify::Ghost),
            "stripe" => (five_minutes, ANY_SECRET, Verify::Stripe),
            _ => (five_minutes, ANY_SECRET, Verify::Slack),
        };
    // No signed timestamp is ever exactly now: a zero tolerance
    // would refuse every request.
    let tolerance = positive_duration(
        report,
        raw.tolerance,
        &method_path.key("tolerance"),
        default_tolerance,
    );
    let secrets = secret_list(
        report,
        method_path,
        ("secret", raw.secret),
        ("secrets", raw.secrets),
        check,
        &left_out,
    )?;
    left_out.is_empty().then_some(())?;
    Some(build(TimedSecrets {
        secrets,
        tolerance: tolerance?,
    }))
}

/// `verify: {sns: ...}`: an SNS envelope, signed by AWS, from a listed topic.
fn sns_verify(report: &mut Report, value: Value, method_path: &Path) -> Option<Verify> {
    let (raw, left_out) = report.parse_leaving_out::<raw::RawSns>(value, method_path)?;
    let mut ok = true;
    for (index, arn) in raw.topic_arns.iter().enumerate() {
        if !arn.starts_with("arn:") || arn.split(':').count() < 6 {
            report.error(
                &method_path.key("topic_arns").index(index),
                "not a topic ARN such as `arn:aws:sns:eu-west-1:111122223333:uploads`",
            );
            ok = false;
        }
    }
    for (index, file) in raw.certificates.iter().enumerate() {
        if file.trim().is_empty() {
            report.error(&method_path.key("certificates").index(index), "is empty");
            ok = false;
        }
    }
    // Any AWS account can subscribe the relay's URL to a topic of
    // its own, and SNS signs that topic's messages like any other:
    // without a list, the relay would confirm the subscription and
    // dispatch whatever the stranger publishes.
    if raw.topic_arns.is_empty() {
        report.error(
            &method_path.key("topic_arns"),
            "is required: list the topics whose messages this route takes; otherwise any AWS account could subscribe the relay to its own topic",
        );
        ok = false;
    }
    (ok && left_out.is_empty()).then(|| {
        Verify::Sns(SnsVerify {
            topic_arns: raw.topic_arns,
            certificates: raw
                .certificates
                .into_iter()
                .enumerate()
                .map(|(index, file)| {
                    let at = report
                        .locations
                        .value(&method_path.key("certificates").index(index));
                    PinnedCertificate {
                        file: PathBuf::from(file),
                        written_at: format!("{}:{}:{}", report.file, at.line, at.column),
                    }
                })
                .collect(),
        })
    })
}

fn target(
    report: &mut Report,
    builder: &mut EngineBuilder,
    value: Value,
    path: &Path,
    allowed_repos: Option<&[String]>,
) -> Option<Target> {
    // The rest of a target is checked beside a key left out or unknown;
    // what such a key may stand for is not then reported missing.
    let (raw, left_out) = report.parse_leaving_out::<raw::RawTarget>(value, path)?;
    let errors_before = report.errors.len();

    let repo_path = path.key("repo");
    let repo_template = required(report, path, "repo", raw.repo, &left_out)
        .and_then(|repo| compile_string(report, builder, &repo_path, &repo));
    let repo = repo_template.and_then(|template| match template.is_static() {
        Some(repo) => {
            let repo = repo.to_owned();
            // Not quoted: the value may come from a variable.
            routing::check_repo(&repo)
                .map_err(|limit| report.error(&repo_path, limit.reason()))
                .ok()?;
            Some(RepoSpec::Static(repo))
        }
        None => {
            if allowed_repos.is_some_and(<[String]>::is_empty) {
                report.error(
                    &repo_path,
                    "is a template, so the route needs `allowed_repos` (patterns such as `acme/*`) to bound it",
                );
                return None;
            }
            Some(RepoSpec::Templated(template))
        }
    });

    let kind = match (raw.event_type, raw.workflow) {
        (Some(event_type), None) => {
            for (key, present) in [
                ("ref", raw.git_ref.is_some()),
                ("inputs", raw.inputs.is_some()),
            ] {
                if present {
                    report.key_error(
                        &path.key(key),
                        format!(
                            "`{key}` belongs to workflow targets; this target has `event_type`"
                        ),
                    );
                }
            }
            repository_target(report, builder, path, &event_type.0, raw.client_payload)
        }
        (None, Some(workflow)) => {
            if raw.client_payload.is_some() {
                report.key_error(
                    &path.key("client_payload"),
                    "`client_payload` belongs to repository_dispatch targets; this target has `workflow`",
                );
            }
            workflow_target(
                report,
                builder,
                path,
                &workflow.0,
                raw.git_ref.map(|r| r.0),
                raw.inputs,
                left_out.explains(path, "ref"),
            )
        }
        (Some(_), Some(_)) => {
            report.error(
                path,
                "has both `event_type` and `workflow`; a target is either a repository_dispatch or a workflow_dispatch",
            );
            None
        }
        // The kind's key was misspelt or left out for its error: the
        // payload or inputs beside it are still checked, so that one run
        // of `check` reports their errors too.
        (None, None)
            if left_out.explains(path, "event_type") || left_out.explains(path, "workflow") =>
        {
            client_payload_template(report, builder, path, raw.client_payload);
            inputs_template(report, builder, path, raw.inputs);
            None
        }
        (None, None) => {
            report.error(
                path,
                "needs `event_type` (repository_dispatch) or `workflow` and `ref` (workflow_dispatch)",
            );
            None
        }
    };
    if report.errors.len() > errors_before || !left_out.is_empty() {
        return None;
    }
    let filled_from_variables = [
        routing::Field::Repo,
        routing::Field::EventType,
        routing::Field::Workflow,
        routing::Field::Ref,
    ]
    .into_iter()
    .filter(|field| {
        report
            .substituted
            .contains_key(&path.key(field.key()).to_string())
    })
    .collect();
    Some(Target {
        repo: repo?,
        kind: kind?,
        filled_from_variables,
    })
}

fn compile_string(
    report: &mut Report,
    builder: &mut EngineBuilder,
    path: &Path,
    source: &str,
) -> Option<crate::template::StringTemplate> {
    // These fields say where a dispatch goes: a value the request lacks
    // must not make it go somewhere else (`acme/site-` for
    // `acme/site-{{ body.locale }}`).
    let template = builder
        .strict_string(&path.to_string(), source)
        .map_err(|err| report.code_error(path, err.to_string()))
        .ok()?;
    warn_on_unchecked_joins(report, path, source);
    Some(template)
}

/// The strict fields catch a missing value that is printed or filtered, not
/// one joined with `~` in an expression that prints, or looped over: such a
/// template is named, since it may send a dispatch somewhere else (`cms-`
/// for `'cms-' ~ body.model`).
fn warn_on_unchecked_joins(report: &mut Report, path: &Path, source: &str) {
    if crate::template::joins_or_loops(source) {
        report.warn(
            path,
            "joins with `~` or loops with `for`: a missing value there prints as nothing; print each value on its own (`cms-{{ body.model }}`) so that a missing one is caught",
        );
    }
}

fn compile_value(
    report: &mut Report,
    builder: &mut EngineBuilder,
    path: &Path,
    value: &serde_json::Value,
) -> Option<crate::template::ValueTemplate> {
    builder
        .value(&path.to_string(), value)
        .map_err(|errors| {
            for err in errors {
                report.code_error(&path.join_template(err.at()), err.to_string());
            }
        })
        .ok()
}

fn repository_target(
    report: &mut Report,
    builder: &mut EngineBuilder,
    path: &Path,
    event_type: &str,
    client_payload: Option<serde_json::Value>,
) -> Option<TargetKind> {
    let event_path = path.key("event_type");
    let event_type = compile_string(report, builder, &event_path, event_type).and_then(|t| {
        if let Some(text) = t.is_static() {
            routing::check_event_type(text)
                .map_err(|limit| report.error(&event_path, format!("event_type {limit}")))
                .ok()?;
        }
        Some(t)
    });

    let client_payload = client_payload_template(report, builder, path, client_payload);
    Some(TargetKind::Repository {
        event_type: event_type?,
        client_payload: client_payload?,
    })
}

fn workflow_target(
    report: &mut Report,
    builder: &mut EngineBuilder,
    path: &Path,
    workflow: &str,
    git_ref: Option<String>,
    inputs: Option<serde_json::Value>,
    ref_excused: bool,
) -> Option<TargetKind> {
    let workflow_path = path.key("workflow");
    if workflow.is_empty() {
        report.error(&workflow_path, "is empty");
    }
    let workflow = compile_string(report, builder, &workflow_path, workflow).and_then(|t| {
        if let Some(text) = t.is_static()
            && !text.is_empty()
            && let Err(limit) = routing::check_workflow(routing::workflow_file(text))
        {
            // Not quoted: the value may come from a variable.
            report.error(&workflow_path, limit.reason());
            return None;
        }
        Some(t)
    });

    let ref_path = path.key("ref");
    let git_ref = match git_ref {
        Some(git_ref) if git_ref.is_empty() => {
            report.error(&ref_path, "is empty");
            None
        }
        Some(git_ref) => compile_string(report, builder, &ref_path, &git_ref).and_then(|t| {
            if let Some(text) = t.is_static() {
                // Not quoted: the value may come from a variable.
                routing::check_ref(text)
                    .map_err(|limit| report.error(&ref_path, limit.reason()))
                    .ok()?;
            }
            Some(t)
        }),
        // A `ref` left out for its error, or misspelt, is not missing.
        None if ref_excused => None,
        None => {
            report.error(
                path,
                "missing key `ref` (the branch or tag the workflow runs on)",
            );
            None
        }
    };

    let inputs = inputs_template(report, builder, path, inputs);
    Some(TargetKind::Workflow {
        workflow: workflow?,
        git_ref: git_ref?,
        inputs: inputs?,
    })
}

/// A repository target's `client_payload`, compiled and checked against
/// GitHub's limits where it is static.
fn client_payload_template(
    report: &mut Report,
    builder: &mut EngineBuilder,
    path: &Path,
    client_payload: Option<serde_json::Value>,
) -> Option<crate::template::ValueTemplate> {
    object_template(
        report,
        builder,
        &path.key("client_payload"),
        client_payload,
        "client_payload",
        routing::check_payload_keys,
        |value| routing::check_client_payload(value).map(drop),
    )
}

/// A workflow target's `inputs`, compiled and checked against GitHub's
/// limits where they are static.
fn inputs_template(
    report: &mut Report,
    builder: &mut EngineBuilder,
    path: &Path,
    inputs: Option<serde_json::Value>,
) -> Option<crate::template::ValueTemplate> {
    let inputs_path = path.key("inputs");
    let refused = match &inputs {
        Some(serde_json::Value::Object(written)) => {
            refuse_inputs_that_cannot_be_sent_as_written(report, &inputs_path, written)
        }
        _ => false,
    };
    object_template(
        report,
        builder,
        &inputs_path,
        inputs,
        "inputs",
        routing::check_input_count,
        // What is refused above is not said again of the whole map.
        if refused {
            |_| Ok(())
        } else {
            |value| routing::check_inputs(value).map(drop)
        },
    )
    .filter(|_| !refused)
}

/// Reports the workflow inputs that could never be sent as written,
/// whatever the request: GitHub takes an input as text (numbers and
/// booleans are sent as their text), so a list or a map is refused at
/// every dispatch, and a bare decimal has already lost its digits to YAML
/// (`version: 1.10` would be sent as `1.1`).
fn refuse_inputs_that_cannot_be_sent_as_written(
    report: &mut Report,
    path: &Path,
    written: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    let mut refused = false;
    for (name, value) in written {
        match value {
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => report.error(
                &path.key(name),
                format!(
                    "is {}, and a workflow's inputs are text; write it as text (for a value from the request, \"{{{{ body.field | tojson }}}}\")",
                    routing::json_type(value)
                ),
            ),
            serde_json::Value::Number(number) if number.is_f64() => {
                report.error(&path.key(name), raw::DECIMAL_MAY_HAVE_LOST_DIGITS);
            }
            _ => continue,
        }
        refused = true;
    }
    refused
}

/// Compiles a `client_payload` or `inputs` template: a map, or one
/// `{{ expression }}` that renders an object (absent means `{}`), checked
/// against GitHub's limits wherever they are known at load time.
fn object_template(
    report: &mut Report,
    builder: &mut EngineBuilder,
    path: &Path,
    value: Option<serde_json::Value>,
    field: &str,
    check_keys: fn(usize) -> Result<(), routing::LimitError>,
    check_static: fn(serde_json::Value) -> Result<(), routing::LimitError>,
) -> Option<crate::template::ValueTemplate> {
    let value = value.unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    let shape_ok = match &value {
        serde_json::Value::Object(_) => true,
        serde_json::Value::String(text) if crate::template::lone_expression(text).is_some() => true,
        other => {
            report.error(
                path,
                format!(
                    "must be a map, or a single `{{{{ expression }}}}` that renders an object; found {}",
                    routing::json_type(other)
                ),
            );
            false
        }
    };
    if !shape_ok {
        return None;
    }
    let template = compile_value(report, builder, path, &value)?;
    if let Some(keys) = template.top_level_keys() {
        check_keys(keys)
            .map_err(|limit| report.error(path, format!("{field} {limit}")))
            .ok()?;
    }
    if let Some(value) = template.static_value() {
        check_static(value)
            .map_err(|limit| report.error(path, format!("{field} {limit}")))
            .ok()?;
    }
    Some(template)
}
