//! The shapes of `routes.yaml` as written: plain serde structs that reject
//! unknown keys. Values that need checking beyond their type (durations,
//! sizes, templates, addresses) stay text here and are checked by
//! `validate`. Sections whose shape depends on their content (`verify`,
//! `pacing`, each dispatch target) stay YAML values and are deserialized
//! separately, so one mistake does not hide the next.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_norway::Value;

/// A number that may also be written as a string holding a number, which
/// is what `${VAR}` substitution produces (`per_second: ${RATE:-5}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Num<T>(pub(crate) T);

impl<'de, T> Deserialize<'de> for Num<T>
where
    T: TryFrom<u64> + FromStr,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumVisitor<T>(PhantomData<T>);

        impl<T: TryFrom<u64> + FromStr> Visitor<'_> for NumVisitor<T> {
            type Value = Num<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::try_from(v)
                    .map(Num)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "{v} is negative; expected a whole number"
                    ))),
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.trim()
                    .parse()
                    .map(Num)
                    .map_err(|_| E::custom("not a whole number"))
            }
        }

        deserializer.deserialize_any(NumVisitor(PhantomData))
    }
}

/// What is said of a bare decimal where text is wanted: YAML has already
/// turned `1.10` into the number 1.1, so the text as written (a branch, a
/// tag, a version) cannot be recovered. The number is not quoted, as it may
/// come from a variable.
pub(crate) const DECIMAL_MAY_HAVE_LOST_DIGITS: &str = "was read as a decimal number, which may have lost digits (1.10 reads as 1.1); write the value in quotes";

/// What is said of a bare decimal where a duration or a size is wanted:
/// quoting it would not help, since both are whole numbers of their unit.
const DECIMAL_QUANTITY: &str = "is a decimal number; a duration or a size is a whole number of its unit: write 1500ms for 1.5s, or 1536KiB for 1.5MiB";

/// A scalar taken as text: ids and the fields of a target may be written as
/// strings or as bare whole numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Text(pub(crate) String);

/// A duration or a size as written (`10s`, `64KiB`, or a bare whole
/// number), parsed by `units` once its field is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Quantity(pub(crate) String);

/// Reads a string or a whole number as its text, and refuses a decimal with
/// `decimal`, since YAML has already rounded it.
struct ScalarText {
    decimal: &'static str,
}

impl Visitor<'_> for ScalarText {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(E::custom(self.decimal))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.to_owned())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(ScalarText {
                decimal: DECIMAL_MAY_HAVE_LOST_DIGITS,
            })
            .map(Text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(ScalarText {
                decimal: DECIMAL_QUANTITY,
            })
            .map(Quantity)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGithub {
    pub(crate) api_url: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) app: Option<RawApp>,
    pub(crate) pacing: Option<Value>,
    pub(crate) timeout: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    pub(crate) id: Text,
    pub(crate) private_key_file: Option<String>,
    pub(crate) private_key: Option<String>,
    pub(crate) installation_id: Option<Num<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPacing {
    pub(crate) concurrency: Option<Num<u32>>,
    pub(crate) min_interval: Option<Quantity>,
    pub(crate) per_minute: Option<Num<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<String>,
    pub(crate) max_body: Option<Quantity>,
    pub(crate) max_body_memory: Option<Quantity>,
    pub(crate) body_timeout: Option<Quantity>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) url: Option<String>,
    pub(crate) retention: Option<Quantity>,
    pub(crate) synchronous: Option<RawSynchronous>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawSynchronous {
    Full,
    Normal,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub(crate) max_attempts: Option<Num<u32>>,
    pub(crate) initial_backoff: Option<Quantity>,
    pub(crate) max_backoff: Option<Quantity>,
    pub(crate) give_up_after: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub(crate) slack: Option<String>,
    pub(crate) url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    // Text, so that `id: 2024` is read as the id "2024". Optional here so
    // that a route without one is still checked; its absence is reported.
    pub(crate) id: Option<Text>,
    pub(crate) verify: Option<Value>,
    pub(crate) rate_limit: Option<RawRateLimit>,
    pub(crate) when: Option<String>,
    pub(crate) dispatch: Option<Vec<Value>>,
    #[serde(default)]
    pub(crate) allowed_repos: Vec<String>,
    pub(crate) max_body: Option<Quantity>,
    #[serde(default)]
    pub(crate) source_ips: Vec<String>,
    pub(crate) dedupe_key: Option<String>,
    pub(crate) debounce: Option<RawDebounce>,
    pub(crate) notify: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(crate) per_second: Num<u32>,
    pub(crate) burst: Option<Num<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDebounce {
    pub(crate) window: Quantity,
    pub(crate) max_wait: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    // Required, but checked beside the target's other keys (see
    // `validate::required`), so that a target missing several is told
    // all at once.
    #[serde(default, deserialize_with = "present")]
    pub(crate) repo: Option<String>,
    // Text, so that a workflow id (`workflow: 161335`), a numeric tag or
    // event type written without quotes is read as text.
    pub(crate) event_type: Option<Text>,
    pub(crate) client_payload: Option<serde_json::Value>,
    pub(crate) workflow: Option<Text>,
    #[serde(rename = "ref")]
    pub(crate) git_ref: Option<Text>,
    pub(crate) inputs: Option<serde_json::Value>,
}

/// The verify methods, by the key that selects them. Adding a method means
/// adding its name here and its raw struct below.
pub(crate) const VERIFY_METHODS: [&str; 11] = [
    "hmac",
    "github",
    "token",
    "basic",
    "standard_webhooks",
    "contentful",
    "sanity",
    "ghost",
    "stripe",
    "slack",
    "sns",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHmac {
    pub(crate) secret: Option<String>,
    pub(crate) secrets: Option<Vec<String>>,
    // Required, checked beside the secrets (see `validate::required`).
    #[serde(default, deserialize_with = "present")]
    pub(crate) header: Option<String>,
    pub(crate) algorithm: Option<RawAlgorithm>,
    pub(crate) encoding: Option<RawEncoding>,
    pub(crate) prefix: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGithubVerify {
    pub(crate) secret: Option<String>,
    pub(crate) secrets: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    // Required, checked beside the values (see `validate::required`).
    #[serde(default, deserialize_with = "present")]
    pub(crate) header: Option<String>,
    pub(crate) value: Option<String>,
    pub(crate) values: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBasic {
    // Required, checked beside the passwords (see `validate::required`).
    #[serde(default, deserialize_with = "present")]
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) passwords: Option<Vec<String>>,
}

/// The shared shape of the schemes that sign a timestamp with a secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimed {
    pub(crate) secret: Option<String>,
    pub(crate) secrets: Option<Vec<String>>,
    pub(crate) tolerance: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSns {
    #[serde(default)]
    pub(crate) topic_arns: Vec<String>,
    #[serde(default)]
    pub(crate) certificates: Vec<String>,
}

/// A key that is required, but read as optional so that its absence is
/// reported beside the map's other faults (see `validate::required`). A
/// key written with nothing after it is still a value of the wrong type,
/// reported where it is written, not as a missing key.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}
