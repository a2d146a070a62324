//! `writ ssh`: one task, one ssh session. The key is made in memory and handed with its
//! certificate to an ssh-agent ([`super::agent`]); the session's private directory holds
//! only public files (the certificate, the CA's known-hosts lines and KRL) and a private
//! agent's socket. While ssh runs, the certificate is renewed by proof of possession at
//! two thirds of its life, so a session that outlives one certificate can still open
//! connections and the task is completed at the end with a live certificate. The task is
//! completed when ssh exits, also after Ctrl-C or SIGTERM (forwarded to ssh), unless
//! `--keep-task`.
//!
//! It must never write the private key anywhere, and never leave a task it opened open
//! (short of `--keep-task`) when something fails after the task was opened.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use ssh_key::PrivateKey;

use super::agent::{Agent, AgentChoice};
use super::known_hosts::{self, HostTrust};
use super::{CaClient, ClientError, Issued, PrivateDir, TaskRequest, signals};

/// How to run ssh.
#[derive(Debug, Clone, Default)]
pub struct SshInvocation {
    /// Remote login.
    pub login: String,
    /// Host to connect to.
    pub host: String,
    /// ssh options, placed before the host.
    pub options: Vec<String>,
    /// Remote command, after the host.
    pub command: Vec<String>,
}

/// ssh's arguments: our options (the agent holding the key, the certificate that selects
/// it, and how the host is trusted, `host_trust`), the caller's options, then `--`, the
/// destination and the remote command. ssh keeps the first value it is given for an
/// option, so a caller's `-o` cannot relax ours. The destination is data, never an option:
/// one starting with `-` is refused (before any task is opened), and `--` ends ssh's
/// option parsing so nothing after it — destination or command — is read as an option.
pub fn ssh_arguments(
    invocation: &SshInvocation,
    agent_socket: &Path,
    certificate_path: &Path,
    host_trust: &[OsString],
) -> Result<Vec<OsString>, ClientError> {
    if invocation.host.is_empty() || invocation.host.starts_with('-') {
        return Err(ClientError::BadDestination(invocation.host.clone()));
    }
    let mut arguments: Vec<OsString> = Vec::new();
    for (option, path) in [
        ("IdentityAgent=", agent_socket),
        ("IdentityFile=", certificate_path),
    ] {
        let mut value = OsString::from(option);
        value.push(path);
        arguments.extend(["-o".into(), value]);
    }
    for fixed in ["-o", "IdentitiesOnly=yes", "-l", &invocation.login] {
        arguments.push(fixed.into());
    }
    arguments.extend(host_trust.iter().cloned());
    arguments.extend(invocation.options.iter().map(Into::into));
    arguments.push("--".into());
    arguments.push(invocation.host.clone().into());
    arguments.extend(invocation.command.iter().map(Into::into));
    Ok(arguments)
}

/// The ssh_config for every hop (`ssh -F`): each `-o Key=Value` of `arguments` (writ's own
/// options, which come first) as a line, then the user's configuration included
/// (`user_config`, or ssh's own `~/.ssh/config` and `/etc/ssh/ssh_config`, which ssh no
/// longer reads by itself once given `-F`). ssh hands a `ProxyJump` hop only `-F`, not the
/// command line's `-o`: this file is how the hop gets the same agent, certificate and host
/// trust. A value that cannot be written into ssh_config (a quote, a line break) is
/// refused.
pub fn hop_config(
    arguments: &[std::ffi::OsString],
    user_config: Option<&Path>,
) -> Result<String, ClientError> {
    let quoted = |value: &str| -> Result<String, ClientError> {
        if value.contains(['"', '\n', '\r']) {
            return Err(ClientError::Ssh(format!(
                "cannot put {value:?} into an ssh_config (a quote or a line break)"
            )));
        }
        Ok(format!("\"{value}\""))
    };
    let mut text = String::from("# Written by writ for one ssh; removed after it.\n");
    let mut options = arguments.iter();
    while let Some(argument) = options.next() {
        if argument != "-o" {
            continue;
        }
        let Some(option) = options.next().and_then(|o| o.to_str()) else {
            continue;
        };
        if let Some((key, value)) = option.split_once('=') {
            text.push_str(&format!("{key} {}\n", quoted(value)?));
        }
    }
    match user_config {
        Some(path) => {
            let path = path.to_str().ok_or_else(|| {
                ClientError::Ssh(format!("--ssh-config {} is not UTF-8", path.display()))
            })?;
            text.push_str(&format!("Include {}\n", quoted(path)?));
        }
        None => text.push_str("Include ~/.ssh/config\nInclude /etc/ssh/ssh_config\n"),
    }
    Ok(text)
}

/// The session's certificate file: ssh's `IdentityFile`, public.
pub const CERTIFICATE_FILE: &str = "task-cert.pub";

/// `writ ssh`: fetch the CA's host trust (unless `host_trust` is trust on first use), open
/// a task with a key made in memory, put key and certificate into the `agent`, record the
/// remote command with the task (`task.run`), run `ssh`
/// (renewing the certificate while it runs), then complete the task (unless `keep_task`).
/// Returns the remote command's exit code (ssh's); a host ssh refused for its host key is
/// [`ClientError::HostUntrusted`], ssh's own failure (status [`SSH_FAILED`])
/// [`ClientError::Ssh`].
pub fn ssh(
    ca: &CaClient,
    token: &str,
    invocation: &SshInvocation,
    request: &TaskRequest,
    keep_task: bool,
    host_trust: HostTrust,
    agent: AgentChoice,
) -> Result<i32, ClientError> {
    let dir = PrivateDir::new()?;
    let known_hosts_path = dir.path().join("known_hosts");
    let revoked_path = dir.path().join("revoked_host_keys.krl");
    let certificate_path = dir.path().join(CERTIFICATE_FILE);
    let mut agent = Agent::open(agent, dir.path())?;
    let mut arguments = ssh_arguments(
        invocation,
        agent.socket(),
        &certificate_path,
        &known_hosts::ssh_options(host_trust, &known_hosts_path, &revoked_path),
    )?;
    let config_path = dir.path().join("ssh_config");
    known_hosts::write(&config_path, hop_config(&arguments, None)?.as_bytes(), true)?;
    arguments.splice(0..0, ["-F".into(), config_path.into_os_string()]);
    // Before the task is opened: a CA without host keys leaves nothing behind.
    known_hosts::write(&revoked_path, &known_hosts::fetch_revoked(ca)?, true)?;
    let lines = match host_trust {
        HostTrust::CertificateAuthority => known_hosts::fetch(ca)?,
        HostTrust::TrustOnFirstUse => {
            eprintln!(
                "writ: warning: --insecure-trust-on-first-use: accepting whatever host key \
                 {:?} presents (a man in the middle would go unnoticed)",
                invocation.host
            );
            String::new()
        }
    };
    known_hosts::write(&known_hosts_path, lines.as_bytes(), true)?;
    let key = super::session_key()?;
    let issued = super::open_task(ca, token, &super::public_line(&key)?, request)?;
    eprintln!(
        "writ: task {} open until {} (certificate serial {})",
        issued.task_id, issued.task_expires_at, issued.serial
    );
    let held = Mutex::new(HeldCertificate::new(&issued, now_unix()));
    let ran = hold(&mut agent, &key, &issued.certificate, &certificate_path)
        .and_then(|()| record_command(ca, &issued, &key, invocation))
        .and_then(|()| {
            let renewal = Renewal {
                ca,
                task_id: &issued.task_id,
                key: &key,
                ttl: request.cert_ttl,
                task_ends: parse_unix(&issued.task_expires_at),
                agent: Mutex::new(&mut agent),
                certificate_path: &certificate_path,
                held: &held,
            };
            std::thread::scope(|scope| {
                let (stop, stopped) = mpsc::channel::<()>();
                scope.spawn(|| renewal.run(stopped));
                let ran = run_ssh(arguments);
                drop(stop);
                ran
            })
        });
    let certificate = held
        .into_inner()
        .map_or(issued.certificate, |h| h.certificate);
    if !keep_task {
        match super::complete_task(ca, &issued.task_id, &certificate, &key, now_unix()) {
            Ok(()) => eprintln!(
                "writ: task {} completed; its certificates no longer work",
                issued.task_id
            ),
            Err(e) => eprintln!(
                "writ: warning: could not complete task {}: {e}",
                issued.task_id
            ),
        }
    }
    let (code, refused_host) = ran?;
    if refused_host && host_trust == HostTrust::CertificateAuthority {
        return Err(ClientError::HostUntrusted(invocation.host.clone()));
    }
    if code == SSH_FAILED {
        return Err(ClientError::Ssh(format!(
            "ssh exited {SSH_FAILED}, its status for its own errors (connection, \
             authentication; its message is above) — or the remote command exited {SSH_FAILED}"
        )));
    }
    Ok(code)
}

/// The remote command, if there is one, recorded with the task at the CA (`task.run`, by
/// proof of possession) before ssh starts: what the CA does not record does not run. An
/// interactive session has no command to record (its login is `cert.used` on the host).
fn record_command(
    ca: &CaClient,
    issued: &Issued,
    key: &PrivateKey,
    invocation: &SshInvocation,
) -> Result<(), ClientError> {
    if invocation.command.is_empty() {
        return Ok(());
    }
    let notice = super::RunNotice::new(
        &invocation.host,
        &invocation.login,
        &invocation.command.join(" "),
        None,
    );
    let credential = super::Credential::Possession {
        certificate: &issued.certificate,
        key,
    };
    super::record_run(ca, &issued.task_id, &credential, &notice, now_unix())
}

/// Put `key` with `certificate` into `agent` and `certificate` into its file (atomically:
/// ssh may be reading it).
fn hold(
    agent: &mut Agent,
    key: &PrivateKey,
    certificate: &str,
    certificate_path: &Path,
) -> Result<(), ClientError> {
    agent.add(key, certificate, now_unix())?;
    let mut staged = certificate_path.as_os_str().to_owned();
    staged.push(".new");
    let staged = PathBuf::from(staged);
    known_hosts::write(&staged, format!("{certificate}\n").as_bytes(), true)?;
    std::fs::rename(&staged, certificate_path).map_err(|e| ClientError::KeyFile {
        path: certificate_path.display().to_string(),
        detail: e.to_string(),
    })
}

/// A session's current certificate, and when to renew it.
pub struct HeldCertificate {
    /// The OpenSSH line.
    pub certificate: String,
    /// When it was received (Unix seconds).
    pub received: i64,
    /// When it expires (Unix seconds).
    pub valid_before: i64,
}

impl HeldCertificate {
    /// `issued`, received at `now`.
    pub fn new(issued: &Issued, now: i64) -> HeldCertificate {
        HeldCertificate {
            certificate: issued.certificate.clone(),
            received: now,
            valid_before: parse_unix(&issued.valid_before).unwrap_or(now),
        }
    }

    /// When to renew: two thirds into its life as this session has held it.
    pub fn due(&self) -> i64 {
        let life = self.valid_before.saturating_sub(self.received).max(0);
        self.received.saturating_add(life.saturating_mul(2) / 3)
    }
}

/// The renewal loop's view of the session.
struct Renewal<'a> {
    ca: &'a CaClient,
    task_id: &'a str,
    key: &'a PrivateKey,
    ttl: Option<Duration>,
    task_ends: Option<i64>,
    agent: Mutex<&'a mut Agent>,
    certificate_path: &'a Path,
    held: &'a Mutex<HeldCertificate>,
}

impl Renewal<'_> {
    /// Renew when due until `stopped` (ssh exited), the certificate already lasts until
    /// the task ends, or the CA refuses (the task ended). A failure to reach the CA is
    /// retried while the certificate lasts.
    fn run(&self, stopped: mpsc::Receiver<()>) {
        let mut retry_at = None;
        loop {
            let (due, valid_before, certificate) = {
                let held = self.held.lock().expect("held certificate");
                (held.due(), held.valid_before, held.certificate.clone())
            };
            if self.task_ends.is_some_and(|end| valid_before >= end) {
                return;
            }
            let at = retry_at.unwrap_or(due);
            let wait = u64::try_from(at.saturating_sub(now_unix())).unwrap_or(0);
            if !matches!(
                stopped.recv_timeout(Duration::from_secs(wait)),
                Err(mpsc::RecvTimeoutError::Timeout)
            ) {
                return;
            }
            let now = now_unix();
            if now >= valid_before {
                eprintln!(
                    "writ: warning: the certificate expired before it could be renewed; new \
                     connections for task {} will fail",
                    self.task_id
                );
                return;
            }
            match self.renew(&certificate, now) {
                Ok(serial) => {
                    retry_at = None;
                    eprintln!("writ: certificate renewed (serial {serial})");
                }
                Err(e @ (ClientError::Refused { .. } | ClientError::PossessionRefused(_))) => {
                    eprintln!("writ: certificate not renewed: {e}");
                    return;
                }
                Err(e) => {
                    let left = valid_before.saturating_sub(now);
                    retry_at = Some(now.saturating_add((left / 2).clamp(1, 5)));
                    eprintln!("writ: warning: certificate not renewed yet, will retry: {e}");
                }
            }
        }
    }

    /// One renewal: the CA's new certificate goes into the agent and the file.
    fn renew(&self, certificate: &str, now: i64) -> Result<String, ClientError> {
        let credential = super::Credential::Possession {
            certificate,
            key: self.key,
        };
        let issued =
            super::renew_certificate(self.ca, self.task_id, &credential, self.key, self.ttl, now)?;
        let mut agent = self.agent.lock().expect("agent");
        hold(
            &mut agent,
            self.key,
            &issued.certificate,
            self.certificate_path,
        )?;
        *self.held.lock().expect("held certificate") = HeldCertificate::new(&issued, now_unix());
        Ok(issued.serial)
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// An RFC 3339 time from the CA as Unix seconds.
fn parse_unix(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

/// ssh's exit status for its own errors.
pub const SSH_FAILED: i32 = 255;

/// Run ssh, relaying its stderr; its exit code, and whether it refused the host's key.
fn run_ssh(arguments: Vec<OsString>) -> Result<(i32, bool), ClientError> {
    // Before ssh starts: from now on Ctrl-C or SIGTERM ends ssh, not writ, which then
    // completes the task as after any session.
    let forward = signals::Forward::install()
        .map_err(|e| ClientError::Ssh(format!("cannot handle signals: {e}")))?;
    let mut child = std::process::Command::new("ssh")
        .args(arguments)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ClientError::Ssh(format!("cannot run ssh: {e}")))?;
    forward.to(child.id());
    let relay = child
        .stderr
        .take()
        .map(|stderr| std::thread::spawn(move || known_hosts::relay_stderr(stderr)));
    let status = child
        .wait()
        .map_err(|e| ClientError::Ssh(format!("cannot wait for ssh: {e}")))?;
    let refused_host = relay.is_some_and(|r| r.join().unwrap_or(false));
    Ok((status.code().unwrap_or(SSH_FAILED), refused_host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(host: &str) -> SshInvocation {
        SshInvocation {
            login: "deploy".into(),
            host: host.into(),
            options: vec!["-p".into(), "2222".into()],
            command: vec!["-v".into(), "uptime".into()],
        }
    }

    #[test]
    fn destination_and_command_follow_the_end_of_options() {
        let trust = known_hosts::ssh_options(
            HostTrust::CertificateAuthority,
            Path::new("/kh"),
            Path::new("/krl"),
        );
        let arguments = ssh_arguments(
            &invocation("web-01"),
            Path::new("/s/agent.sock"),
            Path::new("/s/task-cert.pub"),
            &trust,
        )
        .expect("ok");
        let end = arguments
            .iter()
            .position(|a| a == "--")
            .expect("`--` present");
        let after: Vec<OsString> = arguments[end + 1..].to_vec();
        assert_eq!(after, ["web-01", "-v", "uptime"].map(OsString::from));
        assert!(arguments[..end].contains(&OsString::from("2222")));
        // The key only through the session's agent, selected by the certificate.
        for ours in [
            "IdentityAgent=/s/agent.sock",
            "IdentityFile=/s/task-cert.pub",
            "IdentitiesOnly=yes",
        ] {
            assert!(arguments[..end].contains(&OsString::from(ours)), "{ours}");
        }
        // The host-trust options come before the caller's, so ssh keeps them.
        let strict = arguments
            .iter()
            .position(|a| a == "StrictHostKeyChecking=yes")
            .expect("strict checking");
        let callers = arguments.iter().position(|a| a == "2222").expect("-p 2222");
        assert!(strict < callers);
    }

    #[test]
    fn a_destination_that_looks_like_an_option_is_refused() {
        for host in ["-b127.0.0.1", "-oProxyCommand=x", "-", ""] {
            let refused = ssh_arguments(&invocation(host), Path::new("/a"), Path::new("/c"), &[]);
            assert!(
                matches!(refused, Err(ClientError::BadDestination(_))),
                "{host:?}"
            );
        }
    }

    #[test]
    fn every_hop_reads_writ_s_options_before_the_user_s_configuration() {
        let arguments: Vec<std::ffi::OsString> = [
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentityAgent=/run/a b/agent.sock",
            "-l",
            "deploy",
            "-p",
            "2222",
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        let text = hop_config(&arguments, Some(Path::new("/home/a/.ssh/config"))).expect("config");
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "BatchMode \"yes\"",
                "IdentityAgent \"/run/a b/agent.sock\"",
                "Include \"/home/a/.ssh/config\"",
            ]
        );
        let default = hop_config(&arguments, None).expect("config");
        assert!(default.ends_with("Include ~/.ssh/config\nInclude /etc/ssh/ssh_config\n"));
        let injected: Vec<std::ffi::OsString> = ["-o", "IdentityFile=/x\nProxyCommand evil"]
            .into_iter()
            .map(Into::into)
            .collect();
        assert!(hop_config(&injected, None).is_err());
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_certificate_s_life() {
        let held = HeldCertificate {
            certificate: String::new(),
            received: 1_000,
            valid_before: 1_120,
        };
        assert_eq!(held.due(), 1_080);
        let expired = HeldCertificate {
            valid_before: 900,
            ..held
        };
        assert_eq!(expired.due(), 1_000);
    }
}
