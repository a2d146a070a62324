//! Sessions follow their task: the `session` hook records each SSH connection a writ
//! certificate opened (`state_dir/sessions/<pid>.json`, root-only), and every `sync`
//! that installs a feed naming the connection's task or certificate ends it, by
//! terminating the connection's own sshd process — so every channel multiplexed over it
//! (a ControlMaster's sessions) goes with it. Sessions of other tasks are untouched.
//!
//! The connection's process is found by walking up from the hook (pam_exec's parent) to
//! the child of the listening sshd: the per-connection `sshd: login [priv]` monitor
//! (`sshd-session` on OpenSSH 9.8+). A record names its process with its start time too,
//! so a reused pid is never signalled. This module must never signal a process it did not
//! record, nor one whose start time differs from the record's.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use writ_formats::revocation::feed::Feed;

use crate::config::{HostConfig, Mode};
use crate::online::{self, Answer, AuthorizeRequest, Phase};
use crate::syslog::{self, Severity};

/// The records' directory under `state_dir`.
pub const SESSIONS_DIR: &str = "sessions";

/// One recorded connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The connection's sshd process.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since boot).
    pub start: u64,
    /// The login.
    pub login: String,
    /// The certificate's serial (decimal).
    pub serial: String,
    /// The certificate's task.
    pub task_id: String,
    /// SHA-256 fingerprint of the CA key that signed the certificate.
    pub ca_fingerprint: String,
    /// When the task expires (Unix seconds), if the certificate says.
    #[serde(default)]
    pub task_expires_at: Option<i64>,
    /// The certificate (base64, as sshd exposed it): public, for the CA's record of the
    /// end in online mode.
    #[serde(default)]
    pub certificate: String,
    /// This host's name as the certificate was checked against.
    #[serde(default)]
    pub host: String,
}

/// A connection a feed ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// What was recorded.
    pub record: Record,
    /// `task_ended` (the task is in the feed), `revoked` (the certificate is),
    /// `expired` (the task's own expiry passed) or `stale` (`on_stale = "terminate"`).
    pub reason: &'static str,
    /// Whether the process was signalled (`false`: it had already gone).
    pub terminated: bool,
    /// How the end was reported to the CA: `offline` (syslog only), `online` (recorded
    /// as `cert.session_ended`) or `failed: …`.
    pub reported: String,
}

fn dir(config: &HostConfig) -> PathBuf {
    config.state_dir.join(SESSIONS_DIR)
}

/// `(pid, start time)` of the SSH connection this process (the session hook) runs for.
pub fn connection_process() -> io::Result<(u32, u64)> {
    let mut chain = Vec::new();
    let mut pid = stat(std::process::id())?.0;
    while pid > 1 && chain.len() < 64 {
        let (parent, start) = stat(pid)?;
        chain.push((pid, start, is_sshd(pid)));
        pid = parent;
    }
    // The topmost sshd is the listener; the one below it is the connection's.
    let top = chain
        .iter()
        .rposition(|(_, _, sshd)| *sshd)
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the hook does not run under sshd")
        })?;
    let below = top
        .checked_sub(1)
        .and_then(|i| chain.get(i))
        .filter(|(_, _, sshd)| *sshd)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no per-connection sshd process above the hook",
            )
        })?;
    Ok((below.0, below.1))
}

/// `(parent pid, start time)` of `pid`.
fn stat(pid: u32) -> io::Result<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces and parentheses.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat"));
    // fields[0] is field 3 (state): the parent is field 4, the start time field 22.
    let parent = fields.get(1).and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let start = fields
        .get(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    Ok((parent, start))
}

fn is_sshd(pid: u32) -> bool {
    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
        exe.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "sshd" || n == "sshd-session")
    })
}

/// Record `record` (the directory is created root-only; the file replaced atomically).
pub fn record(config: &HostConfig, record: &Record) -> io::Result<()> {
    let dir = dir(config);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let path = dir.join(format!("{}.json", record.pid));
    let staged = dir.join(format!(".{}.json.tmp", record.pid));
    let body = serde_json::to_vec(record).map_err(io::Error::other)?;
    {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staged)?;
        io::Write::write_all(&mut file, &body)?;
        file.sync_all()?;
    }
    fs::rename(&staged, &path)
}

/// Forget the connection `pid` (its session closed).
pub fn forget(config: &HostConfig, pid: u32) {
    let _ = fs::remove_file(dir(config).join(format!("{pid}.json")));
}

/// Every record, with its file; unreadable files are skipped (and removed).
fn records(config: &HostConfig) -> Vec<(PathBuf, Record)> {
    let Ok(entries) = fs::read_dir(dir(config)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|path| {
            match fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(record) => Some((path, record)),
                None => {
                    let _ = fs::remove_file(&path);
                    None
                }
            }
        })
        .collect()
}

/// End every recorded connection whose task or certificate `feed` names, or whose task
/// expired by `now_unix` (after `terminate_grace`), forget connections that are gone,
/// and log each ending to syslog as `cert.session_ended`. Does nothing with
/// `terminate_sessions = false`.
pub fn enforce(config: &HostConfig, feed: &Feed, now_unix: i64) -> Vec<Ended> {
    end_where(config, |record| {
        if feed
            .revoked_tasks
            .iter()
            .any(|t| t.task_id == record.task_id)
        {
            Some("task_ended")
        } else if feed
            .revoked_serials
            .iter()
            .any(|s| s.serial == record.serial && s.ca_fingerprint == record.ca_fingerprint)
        {
            Some("revoked")
        } else if record.task_expires_at.is_some_and(|t| t <= now_unix) {
            Some("expired")
        } else {
            None
        }
    })
}

/// `on_stale = "terminate"`: end every recorded connection, since no fresh feed says
/// whether its task still runs (reason `stale`).
pub fn end_all_stale(config: &HostConfig) -> Vec<Ended> {
    end_where(config, |_| Some("stale"))
}

/// End the recorded connections `reason_for` gives a reason for (see [`enforce`]).
fn end_where(
    config: &HostConfig,
    reason_for: impl Fn(&Record) -> Option<&'static str>,
) -> Vec<Ended> {
    if !config.terminate_sessions {
        return Vec::new();
    }
    let mut doomed = Vec::new();
    for (path, record) in records(config) {
        if !alive(&record) {
            // The connection ended on its own (or the pid was reused).
            let _ = fs::remove_file(&path);
            continue;
        }
        if let Some(reason) = reason_for(&record) {
            doomed.push((path, record, reason));
        }
    }
    if doomed.is_empty() {
        return Vec::new();
    }
    if !config.terminate_grace.is_zero() {
        std::thread::sleep(config.terminate_grace);
    }
    doomed
        .into_iter()
        .map(|(path, record, reason)| {
            let terminated = alive(&record) && signal(record.pid);
            let _ = fs::remove_file(&path);
            let reported = report(config, &record, reason);
            let ended = Ended {
                record,
                reason,
                terminated,
                reported,
            };
            log(config, &ended);
            ended
        })
        .collect()
}

/// In online mode, tell the CA (`POST /v1/authorize`, phase `session_ended`), bounded by
/// `timeout`; what happened, for the syslog line.
fn report(config: &HostConfig, record: &Record, reason: &str) -> String {
    if config.mode != Mode::Online {
        return "offline".to_owned();
    }
    let token = match online::read_token(config) {
        Ok(token) => token,
        Err(e) => return format!("failed: {e}"),
    };
    let request = AuthorizeRequest {
        login: &record.login,
        certificate: &record.certificate,
        host: &record.host,
        phase: Phase::SessionEnded,
        reason: Some(reason),
    };
    match online::authorize(config, &token, &request) {
        Answer::Allow { .. } | Answer::Deny { .. } => "online".to_owned(),
        Answer::Refused { status, code } => format!("failed: HTTP {status} {code}"),
        Answer::Unavailable { detail } => format!("failed: {detail}"),
    }
}

/// Whether the recorded process still runs (the same one: same start time).
fn alive(record: &Record) -> bool {
    stat(record.pid).is_ok_and(|(_, start)| start == record.start)
}

fn signal(pid: u32) -> bool {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn log(config: &HostConfig, ended: &Ended) {
    let pid = ended.record.pid.to_string();
    syslog::log(
        Severity::Notice,
        &[
            ("event", "cert.session_ended"),
            ("login", &ended.record.login),
            ("serial", &ended.record.serial),
            ("task", &ended.record.task_id),
            ("host", config.host_name.as_deref().unwrap_or("-")),
            ("reason", ended.reason),
            ("pid", &pid),
            (
                "terminated",
                if ended.terminated {
                    "yes"
                } else {
                    "already_gone"
                },
            ),
            ("report", &ended.reported),
        ],
    );
}

/// The earliest task expiry among the recorded connections: `sync --watch` runs a round
/// then at the latest, to end them on time.
pub fn next_expiry(config: &HostConfig) -> Option<i64> {
    if !config.terminate_sessions {
        return None;
    }
    records(config)
        .into_iter()
        .filter_map(|(_, record)| record.task_expires_at)
        .min()
}

#[cfg(test)]
mod tests {
    use std::process::Child;

    use writ_formats::revocation::feed::{RevokedSerial, RevokedTask};

    use super::*;

    const TASK: &str = "0123456789abcdef0123456789abcdef";

    fn sleeper() -> Child {
        Command::new("sleep").arg("300").spawn().expect("sleep")
    }

    fn record_for(child: &Child, task_id: &str, serial: &str) -> Record {
        let (_, start) = stat(child.id()).expect("stat");
        Record {
            pid: child.id(),
            start,
            login: "deploy".into(),
            serial: serial.into(),
            task_id: task_id.into(),
            ca_fingerprint: "SHA256:ca".into(),
            task_expires_at: Some(2_000),
            certificate: String::new(),
            host: "web-01".into(),
        }
    }

    fn feed(tasks: &[&str], serials: &[&str]) -> Feed {
        Feed {
            version: 2,
            issued_at: 1_000,
            sequence: 1,
            revoked_tasks: tasks
                .iter()
                .map(|t| RevokedTask {
                    task_id: (*t).into(),
                    until: 2_000,
                })
                .collect(),
            revoked_serials: serials
                .iter()
                .map(|s| RevokedSerial {
                    serial: (*s).into(),
                    ca_fingerprint: "SHA256:ca".into(),
                    until: 2_000,
                })
                .collect(),
            binding: None,
        }
    }

    fn ended_by(child: &mut Child) -> bool {
        // SIGTERM ends `sleep`; wait reaps it (it was signalled before this returns).
        child
            .wait()
            .is_ok_and(|s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(15))
    }

    #[test]
    fn a_feed_ends_the_connections_of_its_tasks_and_serials_only() {
        let state = tempfile::tempdir().expect("state");
        let config = HostConfig::for_tests("http://127.0.0.1:9", "web-01", state.path());
        let (mut doomed, mut revoked, mut kept) = (sleeper(), sleeper(), sleeper());
        record(&config, &record_for(&doomed, TASK, "1")).expect("record");
        record(&config, &record_for(&revoked, "ffff", "2")).expect("record");
        record(&config, &record_for(&kept, "eeee", "3")).expect("record");

        let ended = enforce(&config, &feed(&[TASK], &["2"]), 1_500);
        let mut reasons: Vec<&str> = ended.iter().map(|e| e.reason).collect();
        reasons.sort_unstable();
        assert_eq!(reasons, ["revoked", "task_ended"]);
        assert!(
            ended
                .iter()
                .all(|e| e.terminated && e.reported == "offline")
        );
        assert!(ended_by(&mut doomed) && ended_by(&mut revoked));
        assert!(kept.try_wait().expect("try_wait").is_none(), "kept runs");
        assert_eq!(records(&config).len(), 1, "only the kept record is left");

        // Its task expires: the next round ends it too.
        let ended = enforce(&config, &feed(&[], &[]), 2_000);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].reason, "expired");
        assert!(ended_by(&mut kept));
    }

    #[test]
    fn a_reused_pid_is_never_signalled_and_its_record_is_dropped() {
        let state = tempfile::tempdir().expect("state");
        let config = HostConfig::for_tests("http://127.0.0.1:9", "web-01", state.path());
        let mut other = sleeper();
        let mut stale = record_for(&other, TASK, "1");
        stale.start += 1; // another process than the one recorded
        record(&config, &stale).expect("record");
        assert!(enforce(&config, &feed(&[TASK], &[]), 1_500).is_empty());
        assert!(other.try_wait().expect("try_wait").is_none());
        assert!(records(&config).is_empty());
        let _ = other.kill();
        let _ = other.wait();
    }

    #[test]
    fn nothing_is_ended_with_terminate_sessions_off() {
        let state = tempfile::tempdir().expect("state");
        let mut config = HostConfig::for_tests("http://127.0.0.1:9", "web-01", state.path());
        config.terminate_sessions = false;
        let mut running = sleeper();
        record(&config, &record_for(&running, TASK, "1")).expect("record");
        assert!(enforce(&config, &feed(&[TASK], &[]), 1_500).is_empty());
        assert!(running.try_wait().expect("try_wait").is_none());
        let _ = running.kill();
        let _ = running.wait();
    }
}
