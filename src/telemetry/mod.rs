//! Logs and metrics: the tracing subscriber (pretty or JSON), the
//! Prometheus registry with one typed method per event worth counting, the
//! throttle that keeps refusals from flooding the log, and the streak that
//! says a run of failures when it starts and when it ends.

mod log_buffer;
mod metrics;
mod streak;
pub mod throttle;

pub use log_buffer::flush;
pub use metrics::{DispatchOutcome, Metrics, SnsSubscription, WebhookOutcome};
pub use streak::Streak;

use tracing_subscriber::EnvFilter;

/// Log output format, chosen with `RELAY_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// How the relay logs, read from `RELAY_LOG_FORMAT` and `RUST_LOG`, with a
/// note for each value it could not take as meant. A typo there would
/// otherwise change the logs without a word: `RUST_LOG=infoo` is a module
/// name to the filter, and shows nothing of the relay's.
#[derive(Debug)]
pub struct LogSettings {
    format: LogFormat,
    filter: EnvFilter,
    notes: Vec<String>,
}

/// The target of the notes about the settings themselves, which every
/// filter lets through so that a filter that hides everything says so.
const SETTINGS_TARGET: &str = "dispatch_relay::log_settings";

impl LogSettings {
    /// Reads the two variables' values; `default_filter` applies when
    /// `RUST_LOG` is unset or cannot be read.
    pub fn from_env_values(
        format: Option<&str>,
        filter: Option<&str>,
        default_filter: &str,
    ) -> LogSettings {
        let mut notes = Vec::new();
        let format = match format.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            None | Some("") => LogFormat::Pretty,
            Some(v) if v.eq_ignore_ascii_case("pretty") => LogFormat::Pretty,
            Some(other) => {
                notes.push(format!(
                    "RELAY_LOG_FORMAT={other:?} is neither `json` nor `pretty`; logging as pretty"
                ));
                LogFormat::Pretty
            }
        };
        let parsed = match filter.filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(value) => match EnvFilter::builder().parse(value) {
                Ok(parsed) => {
                    notes.extend(module_only_directives(value).map(|word| {
                        format!(
                            "RUST_LOG's `{word}` names no level (error, warn, info, debug, trace, off): \
                             it shows only the logs of a module called `{word}`"
                        )
                    }));
                    Some(parsed)
                }
                Err(e) => {
                    notes.push(format!(
                        "RUST_LOG={value:?} is not a filter ({e}); logging at `{default_filter}`"
                    ));
                    None
                }
            },
        };
        let filter = parsed
            .unwrap_or_else(|| EnvFilter::new(default_filter))
            .add_directive(
                format!("{SETTINGS_TARGET}=warn")
                    .parse()
                    .expect("a valid directive"),
            );
        LogSettings {
            format,
            filter,
            notes,
        }
    }

    /// What could not be taken as meant, one sentence each.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// The directives of a filter that are a bare word but no level, such as
/// `infoo`: the filter reads them as a module's name.
fn module_only_directives(filter: &str) -> impl Iterator<Item = &str> {
    filter.split(',').map(str::trim).filter(|directive| {
        !directive.is_empty()
            && !directive.contains(['=', '[', ':'])
            && directive
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
            && !directive.starts_with("dispatch_relay")
    })
}

/// Installs the global subscriber. Logs go to stderr so that commands which
/// print results (`check`, `render`, `deliveries`) keep stdout clean.
pub fn init(settings: LogSettings) {
    let LogSettings {
        format,
        filter,
        notes,
    } = settings;
    // Colours only for a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let escaping = match (format, ansi) {
        (LogFormat::Json, _) => log_buffer::Escaping::None,
        (LogFormat::Pretty, false) => log_buffer::Escaping::Text,
        (LogFormat::Pretty, true) => log_buffer::Escaping::Coloured,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_buffer::BufferedStderr::start(escaping))
        .with_ansi(ansi)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    for note in notes {
        tracing::warn!(target: SETTINGS_TARGET, "{note}");
    }
}

#[cfg(test)]
mod tests {
    use super::{LogFormat, LogSettings};

    /// `RELAY_LOG_FORMAT`, `RUST_LOG`, the format used, and what the notes say.
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        LogFormat,
        &'static [&'static str],
    );

    #[test]
    fn settings_that_cannot_be_taken_as_meant_are_noted() {
        let cases: [Case; 9] = [
            (None, None, LogFormat::Pretty, &[]),
            (Some("json"), Some("info"), LogFormat::Json, &[]),
            (
                Some("JSON"),
                Some("info,dispatch_relay=debug"),
                LogFormat::Json,
                &[],
            ),
            (
                Some("pretty"),
                Some("dispatch_relay"),
                LogFormat::Pretty,
                &[],
            ),
            (
                None,
                Some("warn,actix_web::middleware=info"),
                LogFormat::Pretty,
                &[],
            ),
            (
                Some("yaml"),
                None,
                LogFormat::Pretty,
                &["RELAY_LOG_FORMAT=\"yaml\""],
            ),
            (
                None,
                Some("infoo"),
                LogFormat::Pretty,
                &["`infoo` names no level"],
            ),
            (
                None,
                Some("debug,reqwest"),
                LogFormat::Pretty,
                &["`reqwest` names no level"],
            ),
            (
                None,
                Some("[{"),
                LogFormat::Pretty,
                &["RUST_LOG=\"[{\" is not a filter"],
            ),
        ];
        for (format, filter, expected_format, expected_notes) in cases {
            let settings = LogSettings::from_env_values(format, filter, "info");
            assert_eq!(settings.format, expected_format, "{format:?}");
            let notes = settings.notes();
            assert_eq!(notes.len(), expected_notes.len(), "{filter:?}: {notes:?}");
            for (note, expected) in notes.iter().zip(expected_notes) {
                assert!(note.contains(expected), "{note}");
            }
        }
    }
}
