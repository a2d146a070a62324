//! One-line syslog records for every decision `writ-principals` makes, sent to the local
//! syslog daemon over the unix datagram socket `/dev/log` with facility `auth`.
//!
//! A record is RFC 3164 framed, `<PRI>writ-principals[PID]: key=value key=value …` (the
//! daemon adds the timestamp and host name), with fixed keys chosen by the caller and
//! values taken from the certificate and the environment — that is, from whoever holds a
//! certificate or picks a login. Values are therefore escaped by [`escape_value`] so no
//! value can end the line, start a new record or pose as another field:
//!
//! - a byte outside printable ASCII (control characters, DEL, every byte of a non-ASCII
//!   character) becomes `\xNN`, and `\` becomes `\\`, so a logged value is always one
//!   line of printable ASCII;
//! - a value that is empty or contains a space, `"` or `=` is put in double quotes, with
//!   `"` written as `\"`;
//! - at most [`MAX_VALUE_LEN`] escaped bytes of a value are kept; a cut value ends in
//!   `...` and is quoted.
//!
//! Sending is best effort and never blocks: the socket is non-blocking, and if
//! `/dev/log` is missing or full the record is dropped (callers also write their one-line
//! reason to stderr). No new dependency: std's `UnixDatagram` and hand-written framing.

use std::fmt::Write as _;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// The local syslog socket.
pub const SOCKET_PATH: &str = "/dev/log";
/// Syslog facility `auth` (security/authorization messages).
pub const FACILITY_AUTH: u8 = 4;
/// The program name in every record.
pub const TAG: &str = "writ-principals";
/// Most escaped bytes of one value that are logged (excluding quotes).
pub const MAX_VALUE_LEN: usize = 512;
/// What marks a value cut at [`MAX_VALUE_LEN`].
const TRUNCATED: &str = "...";

/// Severity of a record: allows are `info`, denials and failures `notice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Normal but significant: a denial, a failure to report.
    Notice,
    /// Informational: an admitted certificate, a recorded use.
    Info,
}

impl Severity {
    /// The numeric syslog severity.
    pub fn code(self) -> u8 {
        match self {
            Severity::Notice => 5,
            Severity::Info => 6,
        }
    }
}

/// Escape one value for a `key=value` field (see the module documentation).
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_VALUE_LEN) + 2);
    let mut quote = value.is_empty();
    let mut truncated = false;
    // Where to cut, should the value turn out too long: after the last whole escape that
    // leaves room for the marker.
    let mut cut_at = 0;
    for &byte in value.as_bytes() {
        match byte {
            b'"' => {
                quote = true;
                out.push_str("\\\"");
            }
            b'\\' => out.push_str("\\\\"),
            b' ' | b'=' => {
                quote = true;
                out.push(char::from(byte));
            }
            0x21..=0x7e => out.push(char::from(byte)),
            _ => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\x{byte:02x}");
            }
        }
        if out.len() <= MAX_VALUE_LEN - TRUNCATED.len() {
            cut_at = out.len();
        } else if out.len() > MAX_VALUE_LEN {
            out.truncate(cut_at);
            truncated = true;
            break;
        }
    }
    if truncated {
        out.push_str(TRUNCATED);
        quote = true;
    }
    if quote { format!("\"{out}\"") } else { out }
}

/// `key=value` pairs separated by single spaces, every value escaped. Keys are fixed by
/// the caller and must be lowercase identifiers (`[a-z_]+`); any other character in a key
/// is dropped so that even a programming mistake cannot break the line.
pub fn format_fields(fields: &[(&str, &str)]) -> String {
    let mut line = String::new();
    for (key, value) in fields {
        if !line.is_empty() {
            line.push(' ');
        }
        line.extend(key.chars().filter(|c| c.is_ascii_lowercase() || *c == '_'));
        line.push('=');
        line.push_str(&escape_value(value));
    }
    line
}

/// A whole RFC 3164 record without timestamp or host name (the daemon adds both):
/// `<PRI>writ-principals[PID]: fields`, with `PRI = facility auth × 8 + severity`.
pub fn format_record(severity: Severity, pid: u32, fields: &[(&str, &str)]) -> String {
    let pri = u16::from(FACILITY_AUTH) * 8 + u16::from(severity.code());
    format!("<{pri}>{TAG}[{pid}]: {}", format_fields(fields))
}

/// Send one record to the datagram socket at `socket`, without blocking.
pub fn send_to(socket: &Path, record: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    sock.send_to(record.as_bytes(), socket).map(|_| ())
}

/// Log one record to `/dev/log`, best effort: any failure (no syslog daemon, a full
/// queue, a stream socket) is ignored.
pub fn log(severity: Severity, fields: &[(&str, &str)]) {
    let record = format_record(severity, std::process::id(), fields);
    let _ = send_to(Path::new(SOCKET_PATH), &record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_left_alone() {
        assert_eq!(escape_value("deploy"), "deploy");
        assert_eq!(escape_value("SHA256:abc+/x"), "SHA256:abc+/x");
        assert_eq!(escape_value("12345678901234567890"), "12345678901234567890");
    }

    #[test]
    fn spaces_quotes_and_equals_are_quoted() {
        assert_eq!(escape_value(""), "\"\"");
        assert_eq!(escape_value("a b"), "\"a b\"");
        assert_eq!(escape_value("a=b"), "\"a=b\"");
        assert_eq!(escape_value("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(escape_value("back\\slash"), "back\\\\slash");
    }

    #[test]
    fn control_and_non_ascii_bytes_are_hex_escaped() {
        assert_eq!(escape_value("a\nb"), "a\\x0ab");
        assert_eq!(escape_value("a\rb\tc\0d\x7f"), "a\\x0db\\x09c\\x00d\\x7f");
        assert_eq!(escape_value("é"), "\\xc3\\xa9");
        // U+2028 LINE SEPARATOR and a bidi override are bytes like any other.
        assert_eq!(escape_value("\u{2028}"), "\\xe2\\x80\\xa8");
        assert_eq!(escape_value("\u{202e}"), "\\xe2\\x80\\xae");
        // A literal backslash-x cannot pose as an escape.
        assert_eq!(escape_value("\\x0a"), "\\\\x0a");
    }

    #[test]
    fn a_crafted_value_cannot_forge_a_field_or_a_line() {
        let forged = "root decision=allow\n<38>writ-principals[1]: decision=allow login=root";
        let line = format_fields(&[("login", forged), ("decision", "deny")]);
        assert!(!line.contains('\n'));
        assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line}");
        assert_eq!(
            line,
            "login=\"root decision=allow\\x0a<38>writ-principals[1]: decision=allow login=root\" \
             decision=deny"
        );
        // A reader honouring quotes and escapes finds exactly the two fields we wrote.
        assert_eq!(split_fields(&line), ["login", "decision"]);
    }

    /// The keys of a formatted line, splitting on spaces outside quotes.
    fn split_fields(line: &str) -> Vec<String> {
        let (mut keys, mut field) = (Vec::new(), String::new());
        let (mut quoted, mut escaped) = (false, false);
        for c in line.chars().chain([' ']) {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = !quoted,
                ' ' if !quoted => {
                    let key = field.split('=').next().unwrap_or_default().to_owned();
                    keys.push(key);
                    field.clear();
                    continue;
                }
                _ => {}
            }
            field.push(c);
        }
        keys
    }

    #[test]
    fn long_values_are_cut_to_the_limit() {
        let long = "a".repeat(10 * MAX_VALUE_LEN);
        let escaped = escape_value(&long);
        assert_eq!(escaped.len(), MAX_VALUE_LEN + 2);
        assert!(escaped.starts_with("\"aaa"));
        assert!(escaped.ends_with("...\""));
        // Escapes are never cut in half.
        let controls = "\n".repeat(MAX_VALUE_LEN);
        let escaped = escape_value(&controls);
        assert!(escaped.len() <= MAX_VALUE_LEN + 2);
        let inner = escaped.trim_matches('"').trim_end_matches(TRUNCATED);
        assert_eq!(inner.len() % 4, 0, "{inner}");
        assert!(inner.split("\\x0a").all(str::is_empty));
        // Exactly at the limit nothing is cut; one more byte is.
        let fits = "b".repeat(MAX_VALUE_LEN);
        assert_eq!(escape_value(&fits), fits);
        let over = "b".repeat(MAX_VALUE_LEN + 1);
        assert_eq!(
            escape_value(&over),
            format!("\"{}...\"", "b".repeat(MAX_VALUE_LEN - TRUNCATED.len()))
        );
    }

    #[test]
    fn records_have_rfc3164_priority_and_tag() {
        let allow = format_record(
            Severity::Info,
            4242,
            &[("decision", "allow"), ("login", "deploy")],
        );
        assert_eq!(
            allow,
            "<38>writ-principals[4242]: decision=allow login=deploy"
        );
        let deny = format_record(Severity::Notice, 7, &[("decision", "deny")]);
        assert_eq!(deny, "<37>writ-principals[7]: decision=deny");
    }

    #[test]
    fn keys_are_sanitised() {
        assert_eq!(format_fields(&[("ev ent\n", "x")]), "event=x");
    }

    #[test]
    fn sending_without_a_daemon_fails_quietly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("log");
        assert!(send_to(&missing, "<38>writ-principals[1]: x=y").is_err());
        // A real datagram socket receives exactly the record.
        let socket = UnixDatagram::bind(&missing).expect("bind");
        send_to(&missing, "<38>writ-principals[1]: x=y").expect("send");
        let mut buf = [0u8; 128];
        let n = socket.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"<38>writ-principals[1]: x=y");
    }
}
