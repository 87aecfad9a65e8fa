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

impl LogFormat {
    pub fn from_env_value(value: Option<&str>) -> LogFormat {
        match value {
            Some(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Pretty,
        }
    }
}

/// Installs the global subscriber. Logs go to stderr so that commands which
/// print results (`check`, `render`, `deliveries`) keep stdout clean.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
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
}
