//! A buffer between the log formatter and stderr.
//!
//! Under a burst the relay logs a line per webhook, and writing each line
//! with its own system call was a tenth of the CPU of accepting one. A line
//! that comes after a quiet moment is written at once; lines that follow it
//! closely are gathered in memory and written together: when the buffer
//! holds [`FLUSH_BYTES`], when a warning or an error arrives (so that those
//! are never late), [`FLUSH_AFTER`] after the first buffered line from a
//! background thread, and when the process ends through [`flush`]. Like
//! nginx's buffered access log, a `kill -9` during a burst can lose its last
//! few milliseconds of informational lines; deliveries themselves are in the
//! store, not in the log.
//!
//! It also keeps each event on its line. The text format prints a field as
//! it is, and some fields quote what a sender wrote (an SNS message type, a
//! rendered repository, GitHub's echo of a ref): a line break in one would
//! start a line that looks like the relay's own, and other control
//! characters could drive a terminal. They are written escaped (`\n`,
//! `\u{1b}`). The JSON format escapes them itself.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::text;

/// Buffered bytes that trigger a write.
const FLUSH_BYTES: usize = 32 * 1024;
/// The longest an informational line waits in the buffer.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

struct Buffer {
    bytes: Vec<u8>,
    /// When the buffer was last written out.
    written_at: Option<Instant>,
}

impl Buffer {
    fn write_out(&mut self) {
        if !self.bytes.is_empty() {
            // Nothing sensible can be done when stderr itself fails.
            let _ = std::io::stderr().write_all(&self.bytes);
            self.bytes.clear();
        }
        self.written_at = Some(Instant::now());
    }
}

static BUFFER: Mutex<Buffer> = Mutex::new(Buffer {
    bytes: Vec::new(),
    written_at: None,
});
/// Signalled when a line lands in an empty buffer.
static FILLED: Condvar = Condvar::new();
static FLUSHER: OnceLock<()> = OnceLock::new();

fn lock() -> MutexGuard<'static, Buffer> {
    // A panic while holding the lock leaves nothing half-done that matters.
    BUFFER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes everything buffered to stderr.
pub fn flush() {
    lock().write_out();
}

/// The [`MakeWriter`] of the subscriber.
#[derive(Clone, Copy, Debug, Default)]
pub struct BufferedStderr {
    escaping: Escaping,
}

/// What each formatted event goes through before it is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Escaping {
    /// Nothing: JSON lines, whose formatter escapes control characters
    /// itself (and where `\x` would not be valid JSON).
    #[default]
    None,
    /// Plain text: every control character is escaped.
    Text,
    /// Text with colours: the formatter's colour sequences pass, and every
    /// other control character is escaped.
    Coloured,
}

impl BufferedStderr {
    /// Starts the thread that writes a batch out [`FLUSH_AFTER`] its first
    /// line; it sleeps while the buffer is empty.
    pub fn start(escaping: Escaping) -> BufferedStderr {
        FLUSHER.get_or_init(|| {
            let _ = std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(|| {
                    loop {
                        let buffer = FILLED
                            .wait_while(lock(), |b| b.bytes.is_empty())
                            .unwrap_or_else(|e| e.into_inner());
                        drop(buffer);
                        std::thread::sleep(FLUSH_AFTER);
                        flush();
                    }
                });
        });
        BufferedStderr { escaping }
    }
}

/// One formatted event (a line, ending in its newline) with its control
/// characters escaped as [`text::escaped_controls`] does, unless the format
/// escapes them itself.
fn escaped(event: &[u8], escaping: Escaping) -> Cow<'_, [u8]> {
    if escaping == Escaping::None {
        return Cow::Borrowed(event);
    }
    let (line, end) = match event.strip_suffix(b"\n") {
        Some(line) => (line, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    // Nearly every line has nothing to escape and is written as it came,
    // found by one pass over its bytes: none of them can start a control
    // character (C0 controls but tabs, DEL, and the lead bytes of the C1
    // controls and of U+2028/U+2029).
    let may_hold_controls = line
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || matches!(b, 0x7f | 0xc2 | 0xe2));
    if !may_hold_controls {
        return Cow::Borrowed(event);
    }
    // The formatter writes UTF-8; anything else is shown, not passed on.
    let text = String::from_utf8_lossy(line);
    match text::escaped_controls(&text, escaping == Escaping::Coloured) {
        Cow::Borrowed(_) if matches!(text, Cow::Borrowed(_)) => Cow::Borrowed(event),
        escaped => {
            let mut bytes = escaped.into_owned().into_bytes();
            bytes.extend_from_slice(end);
            Cow::Owned(bytes)
        }
    }
}

/// Receives one formatted event.
pub struct EventWriter {
    urgent: bool,
    escaping: Escaping,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = bytes.len();
        let bytes = escaped(bytes, self.escaping);
        let bytes = &bytes[..];
        let mut buffer = lock();
        let was_empty = buffer.bytes.is_empty();
        let quiet = buffer
            .written_at
            .is_none_or(|at| at.elapsed() >= FLUSH_AFTER);
        buffer.bytes.extend_from_slice(bytes);
        if self.urgent || (was_empty && quiet) || buffer.bytes.len() >= FLUSH_BYTES {
            buffer.write_out();
        } else if was_empty {
            FILLED.notify_one();
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            urgent: true,
            escaping: self.escaping,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter {
        EventWriter {
            urgent: *meta.level() <= Level::WARN,
            escaping: self.escaping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped_text(event: &str, escaping: Escaping) -> String {
        String::from_utf8(escaped(event.as_bytes(), escaping).into_owned()).unwrap()
    }

    #[test]
    fn an_event_stays_on_its_line() {
        let plain = "2026-11-22T18:00:00Z  WARN Refused reason=ok … • é\n";
        assert!(matches!(
            escaped(plain.as_bytes(), Escaping::Text),
            Cow::Borrowed(_)
        ));
        assert_eq!(escaped_text(plain, Escaping::Text), plain);
        let forged = "WARN reason=type `Bogus\n2026 ERROR FORGED\r\x1b[2J\x7f\tx\u{9b}\u{2028}`\n";
        assert_eq!(
            escaped_text(forged, Escaping::Text),
            "WARN reason=type `Bogus\\n2026 ERROR FORGED\\r\\u{1b}[2J\\u{7f}\tx\\u{9b}\\u{2028}`\n"
        );
        // With colours on, the formatter's colours pass; a sender's title
        // change or screen clear does not, nor a line break.
        let coloured = "\x1b[33mWARN\x1b[0m a\x1b]0;pwned\x07\x1b[2J\nb\n";
        assert_eq!(
            escaped_text(coloured, Escaping::Coloured),
            "\x1b[33mWARN\x1b[0m a\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\nb\n"
        );
        // JSON lines are left alone: their formatter escapes controls, and
        // DEL is valid JSON as it is.
        let json = "{\"reason\":\"Bogus\x7f\\n\"}\n";
        assert_eq!(escaped_text(json, Escaping::None), json);
        let parsed: serde_json::Value =
            serde_json::from_str(&escaped_text(json, Escaping::None)).unwrap();
        assert_eq!(parsed["reason"], "Bogus\x7f\n");
    }
}
