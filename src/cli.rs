//! What every `writ` command line shares when it talks to a person or a pipe: printing on
//! stdout where a reader that went away (`writ admin … | head`) is a normal, quiet end
//! rather than a panic, times shown as RFC 3339 UTC with how far away they are, and the
//! async runtimes commands run on ([`runtime`] for a command, [`server_runtime`] for
//! `writ serve`) — built here and nowhere else.
//!
//! Apart from writing to stdout and building runtimes, pure: never reads configuration,
//! the clock or the network (callers pass `now`).

use std::io::{self, Write};
use std::time::Duration;

/// Whether `error` means the reader of our output has gone (EPIPE: `| head` closed its
/// end). Rust ignores SIGPIPE, so such a write fails with this instead of killing us.
pub fn is_closed_pipe(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::BrokenPipe
}

/// Write `text` to `out` and flush. A closed pipe is not an error (the reader has all it
/// wanted); any other failure is returned.
pub fn write_quietly(out: &mut dyn Write, text: &str) -> io::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Print `text` on stdout as it is (like `print!`, without the panic on a closed pipe).
pub fn print(text: &str) -> io::Result<()> {
    write_quietly(&mut io::stdout().lock(), text)
}

/// Print `text` and a newline on stdout (like `println!`, without the panic on a closed
/// pipe).
pub fn println(text: &str) -> io::Result<()> {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    print(&line)
}

/// The runtime a command line runs its async work on (`writ admin …`): one thread, the
/// caller's, with I/O and timers.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The runtime `writ serve` runs on: a worker thread per core, with I/O and timers.
pub fn server_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// `unix` as RFC 3339 UTC (`2026-05-01T12:00:00Z`), or the number itself if it is out of
/// range (shared with `writ-principals`).
pub use writ_formats::text::rfc3339;

/// `unix` for people: RFC 3339 UTC and how far it is from `now_unix`, e.g.
/// `2026-05-01T12:00:00Z (in 14m 59s)` or `… (3h 2m ago)`.
pub fn time_and_distance(unix: i64, now_unix: i64) -> String {
    format!("{} ({})", rfc3339(unix), distance(unix, now_unix))
}

/// `in 5m`, `5m ago` or `now`, to the second (larger units drop their seconds).
pub fn distance(unix: i64, now_unix: i64) -> String {
    let seconds = unix.abs_diff(now_unix);
    if seconds == 0 {
        return "now".into();
    }
    // Minutes and seconds below an hour, hours and minutes below a day, then days and hours:
    // enough to act on, short enough to read.
    let rounded = match seconds {
        s if s < 3600 => s,
        s if s < 86_400 => s - s % 60,
        s => s - s % 3600,
    };
    let text = humantime::format_duration(Duration::from_secs(rounded)).to_string();
    if unix > now_unix {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    /// A writer that fails for another reason.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_a_quiet_end_and_other_errors_are_not() {
        assert!(write_quietly(&mut Closed, "x\n").is_ok());
        assert!(write_quietly(&mut Full, "x\n").is_err());
        let mut buffer = Vec::new();
        write_quietly(&mut buffer, "hello\n").expect("write");
        assert_eq!(buffer, b"hello\n");
    }

    #[test]
    fn times_read_as_rfc3339_and_distance() {
        let now = 1_777_636_800; // 2026-05-01T12:00:00Z
        assert_eq!(rfc3339(now), "2026-05-01T12:00:00Z");
        assert_eq!(
            time_and_distance(now + 899, now),
            "2026-05-01T12:14:59Z (in 14m 59s)"
        );
        assert_eq!(distance(now - 3 * 3600 - 125, now), "3h 2m ago");
        assert_eq!(distance(now + 2 * 86_400 + 3700, now), "in 2days 1h");
        assert_eq!(distance(now, now), "now");
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }
}
