//! Delivering audit records to `[[audit.sink]]`s: a JSON Lines file, or syslog (RFC 5424
//! over a unix datagram socket such as `/dev/log`, or UDP). Blocking I/O; the service
//! runs it on a blocking thread, never on the request path.
//!
//! Nothing is skipped and, for files, nothing repeats: the store keeps each sink's last
//! delivered `seq`, updated after every delivered batch, and a file sink also reads its
//! own last line back on start ([`Sink::recover`]) — so records written just before a
//! crash, whose position was not yet stored, are not written again, and a line cut short
//! by the crash is removed and rewritten whole. A syslog daemon cannot be asked what it
//! received: after a crash between a send and the position update, those records are sent
//! again (each carries its `seq`, so a SIEM can drop the repeat).

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::AuditRecord;
use super::export::Format;
use crate::audit::Outcome;
use crate::config::{SinkConfig, SinkFormat, SinkType};

/// How far back from the end of a file [`Sink::recover`] looks for the last line (records
/// are a few KiB at most).
const TAIL_BYTES: u64 = 1 << 20;

/// Longest a syslog send may block.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Where records go.
#[derive(Debug)]
enum Target {
    File(PathBuf),
    Unix {
        path: PathBuf,
        socket: Option<UnixDatagram>,
    },
    Udp {
        address: SocketAddr,
        socket: Option<UdpSocket>,
    },
}

/// One configured sink.
#[derive(Debug)]
pub struct Sink {
    name: String,
    format: Format,
    facility: u8,
    target: Target,
    hostname: String,
}

impl Sink {
    /// The sink a configuration names.
    pub fn new(config: &SinkConfig) -> Sink {
        let format = match config.format {
            SinkFormat::Jsonl => Format::Jsonl,
            SinkFormat::Ocsf => Format::Ocsf,
        };
        let target = match config.kind {
            SinkType::Jsonl => Target::File(config.path.clone().unwrap_or_default()),
            SinkType::Syslog => match config.address {
                Some(address) => Target::Udp {
                    address,
                    socket: None,
                },
                None => Target::Unix {
                    path: config.socket.clone().unwrap_or_else(|| {
                        PathBuf::from(crate::config::audit::DEFAULT_SYSLOG_SOCKET)
                    }),
                    socket: None,
                },
            },
        };
        Sink {
            name: config.name(),
            format,
            facility: config.facility_code(),
            target,
            hostname: hostname(),
        }
    }

    /// The name its position is stored under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// For a file sink: the `seq` of the last whole record in the file (after removing a
    /// trailing partial line left by a crash), if any. `None` for syslog.
    pub fn recover(&self) -> io::Result<Option<i64>> {
        match &self.target {
            Target::File(path) => last_seq_in_file(path, self.format),
            _ => Ok(None),
        }
    }

    /// Deliver `records` in order. Returns how many were delivered before an error (all of
    /// them on success); a file sink writes a batch with one `write` and syncs it to disk
    /// before it counts.
    pub fn deliver(&mut self, records: &[AuditRecord]) -> (usize, Option<io::Error>) {
        match &mut self.target {
            Target::File(path) => {
                let mut text = String::new();
                for record in records {
                    text.push_str(&self.format.line(record));
                    text.push('\n');
                }
                match append_synced(path, text.as_bytes()) {
                    Ok(()) => (records.len(), None),
                    Err(e) => (0, Some(e)),
                }
            }
            Target::Unix { path, socket } => {
                let format = self.format;
                let (facility, hostname) = (self.facility, self.hostname.as_str());
                send_each(records, |record| {
                    let message = syslog_message(facility, hostname, record, format);
                    if socket.is_none() {
                        let s = UnixDatagram::unbound()?;
                        s.set_write_timeout(Some(SEND_TIMEOUT))?;
                        s.connect(&*path)?;
                        *socket = Some(s);
                    }
                    let result = socket
                        .as_ref()
                        .map_or(Ok(0), |s| s.send(message.as_bytes()));
                    if result.is_err() {
                        // Reconnect next time (the daemon may have restarted).
                        *socket = None;
                    }
                    result.map(|_| ())
                })
            }
            Target::Udp { address, socket } => {
                let format = self.format;
                let (facility, hostname) = (self.facility, self.hostname.as_str());
                send_each(records, |record| {
                    let message = syslog_message(facility, hostname, record, format);
                    if socket.is_none() {
                        let bind: SocketAddr = if address.is_ipv4() {
                            ([0, 0, 0, 0], 0).into()
                        } else {
                            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                        };
                        let s = UdpSocket::bind(bind)?;
                        s.set_write_timeout(Some(SEND_TIMEOUT))?;
                        s.connect(*address)?;
                        *socket = Some(s);
                    }
                    socket
                        .as_ref()
                        .map_or(Ok(0), |s| s.send(message.as_bytes()))
                        .map(|_| ())
                })
            }
        }
    }
}

fn send_each(
    records: &[AuditRecord],
    mut send: impl FnMut(&AuditRecord) -> io::Result<()>,
) -> (usize, Option<io::Error>) {
    for (i, record) in records.iter().enumerate() {
        if let Err(e) = send(record) {
            return (i, Some(e));
        }
    }
    (records.len(), None)
}

/// Append `bytes` to `path` (created `0640` if missing) and sync it to disk.
pub(crate) fn append_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

/// The `seq` of the last whole line of a sink file; a partial last line is cut off.
fn last_seq_in_file(path: &Path, format: Format) -> io::Result<Option<i64>> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let whole = match tail.iter().rposition(|&b| b == b'\n') {
        Some(end) => end + 1,
        None if start == 0 => 0,
        None => return Ok(None),
    };
    if whole < tail.len() {
        // A line cut short by a crash: remove it; it is delivered again, whole.
        file.set_len(start + whole as u64)?;
        file.sync_data()?;
    }
    let lines = &tail[..whole];
    let last = lines
        .split(|&b| b == b'\n')
        .rev()
        .find(|l| !l.iter().all(u8::is_ascii_whitespace));
    Ok(last.and_then(|line| line_seq(line, format)))
}

fn line_seq(line: &[u8], format: Format) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    match format {
        Format::Jsonl => value.get("seq")?.as_i64(),
        Format::Ocsf => value.get("metadata")?.get("sequence")?.as_i64(),
    }
}

/// An RFC 5424 message: `<PRI>1 TIME HOST writ PID audit - JSON`.
fn syslog_message(facility: u8, hostname: &str, record: &AuditRecord, format: Format) -> String {
    let severity: u8 = if record.entry.outcome == Some(Outcome::Failure) {
        5
    } else {
        6
    };
    let pri = u16::from(facility) * 8 + u16::from(severity);
    format!(
        "<{pri}>1 {time} {hostname} writ {pid} audit - {line}",
        time = record.time,
        pid = std::process::id(),
        line = format.line(record),
    )
}

/// This machine's name for syslog headers (`-` if unknown), printable ASCII only.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if name.is_empty() { "-".into() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, chained, event};

    fn records(n: i64) -> Vec<AuditRecord> {
        chained(n, |_| {
            (
                "2026-01-01T00:00:00.000Z".to_owned(),
                AuditEntry::new(event::CERT_DENIED, Outcome::Failure),
            )
        })
    }

    fn file_sink(path: &Path, format: &str) -> Sink {
        let config: SinkConfig = toml::from_str(&format!(
            "type = \"jsonl\"\npath = \"{}\"\nformat = \"{format}\"\n",
            path.display()
        ))
        .expect("config");
        Sink::new(&config)
    }

    #[test]
    fn file_sinks_recover_their_last_record_and_drop_a_torn_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        for format in ["jsonl", "ocsf"] {
            let path = dir.path().join(format!("audit-{format}.jsonl"));
            let mut sink = file_sink(&path, format);
            assert_eq!(sink.recover().expect("recover"), None);
            let log = records(3);
            assert_eq!(sink.deliver(&log[..2]).0, 2);
            assert_eq!(sink.recover().expect("recover"), Some(2));
            // A crash in the middle of writing record 3.
            let line = Format::parse(format).expect("format").line(&log[2]);
            let mut file = OpenOptions::new().append(true).open(&path).expect("open");
            file.write_all(&line.as_bytes()[..10]).expect("torn write");
            drop(file);
            assert_eq!(sink.recover().expect("recover"), Some(2));
            assert_eq!(sink.deliver(&log[2..]).0, 1);
            let text = std::fs::read_to_string(&path).expect("read");
            assert_eq!(text.lines().count(), 3, "{text}");
            assert_eq!(sink.recover().expect("recover"), Some(3));
        }
    }

    #[test]
    fn syslog_messages_are_rfc5424_with_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let config: SinkConfig = toml::from_str(&format!(
            "type = \"syslog\"\nsocket = \"{}\"\nfacility = \"auth\"\n",
            path.display()
        ))
        .expect("config");
        let mut sink = Sink::new(&config);
        let log = records(2);
        assert_eq!(sink.deliver(&log).0, 2);
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).expect("recv");
        let text = std::str::from_utf8(&buf[..n]).expect("utf8");
        // auth (4) * 8 + notice (5) for a refusal.
        assert!(
            text.starts_with("<37>1 2026-01-01T00:00:00.000Z "),
            "{text}"
        );
        assert!(text.contains(" writ "), "{text}");
        assert!(text.contains("\"seq\":1"), "{text}");
        drop(server);
        let (sent, error) = sink.deliver(&log);
        assert_eq!(sent, 0);
        assert!(error.is_some(), "no daemon: not delivered");
    }
}
