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
//! `\x1b`). The JSON format escapes them itself.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

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
    /// Whether the formatter writes colours, whose escape sequences must
    /// then pass.
    ansi: bool,
}

impl BufferedStderr {
    /// Starts the thread that writes a batch out [`FLUSH_AFTER`] its first
    /// line; it sleeps while the buffer is empty.
    pub fn start(ansi: bool) -> BufferedStderr {
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
        BufferedStderr { ansi }
    }
}

/// One formatted event (a line, ending in its newline) with every other
/// control character escaped, except a tab, and the escape that starts a
/// colour when `ansi` is set.
fn one_line(event: &[u8], ansi: bool) -> Cow<'_, [u8]> {
    let (line, end) = match event.strip_suffix(b"\n") {
        Some(line) => (line, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let escaped = |b: u8| (b < 0x20 && b != b'\t' && !(ansi && b == 0x1b)) || b == 0x7f;
    if !line.iter().any(|&b| escaped(b)) {
        return Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 16);
    for &b in line {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b if escaped(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.extend_from_slice(end);
    Cow::Owned(out)
}

/// Receives one formatted event.
pub struct EventWriter {
    urgent: bool,
    ansi: bool,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = bytes.len();
        let bytes = one_line(bytes, self.ansi);
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
            ansi: self.ansi,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter {
        EventWriter {
            urgent: *meta.level() <= Level::WARN,
            ansi: self.ansi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_on_its_line() {
        let plain = b"2026-11-22T18:00:00Z  WARN Refused reason=ok\n";
        assert!(matches!(one_line(plain, false), Cow::Borrowed(_)));
        let forged = b"WARN reason=type `Bogus\n2026 ERROR FORGED\r\x1b[2J\x7f\tx`\n";
        assert_eq!(
            &one_line(forged, false)[..],
            &b"WARN reason=type `Bogus\\n2026 ERROR FORGED\\r\\x1b[2J\\x7f\tx`\n"[..]
        );
        // With colours on, their escapes pass; line breaks never do.
        let coloured = b"\x1b[33mWARN\x1b[0m a\nb\n";
        assert_eq!(
            &one_line(coloured, true)[..],
            &b"\x1b[33mWARN\x1b[0m a\\nb\n"[..]
        );
    }
}
