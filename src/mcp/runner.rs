//! One command on a host for the MCP `run` tool: the system `ssh` with the task's key
//! (held by the session's ssh-agent, [`crate::client::agent`]) and certificate, the host
//! verified by the CA's host certificates only ([`crate::client::known_hosts`]), no stdin,
//! a deadline, and stdout/stderr each kept to a bound with the cut marked.
//!
//! ssh gets writ's options twice ([`client::hop_config`]): on the command line, and in an
//! ssh_config that includes the user's (`--ssh-config`, or ssh's own two), so a
//! `ProxyJump` hop is reached with the same agent, certificate and host trust.
//!
//! The certificate, host-trust and config files (all public) live in a private directory
//! (0700) only for the command's duration and are removed afterwards, also on a timeout. It never
//! sees the private key, never returns or logs the certificate, and never lets the remote
//! output grow the process's memory past the bound.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rmcp::schemars::{self, JsonSchema};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::client::{self, ClientError, HostTrust, PrivateDir, SshInvocation, known_hosts};

/// What a command did.
#[derive(Debug, Clone, serde::Serialize, JsonSchema)]
pub struct RunOutcome {
    /// The remote command's exit code; 255 when ssh itself failed; absent on a timeout.
    pub exit_code: Option<i32>,
    /// Standard output (UTF-8, invalid bytes replaced), at most `max_output_bytes`.
    pub stdout: String,
    /// Standard error, likewise (ssh's own messages included).
    pub stderr: String,
    /// Whether stdout was cut at the bound.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the bound.
    pub stderr_truncated: bool,
    /// Whether the deadline ended the command.
    pub timed_out: bool,
    /// Whether ssh refused the host's key (not enrolled, another name, revoked, expired).
    pub host_refused: bool,
}

/// Everything one run needs.
pub struct RunRequest<'a> {
    /// Socket of the ssh-agent holding the task's key and certificate.
    pub agent_socket: &'a Path,
    /// The task's certificate (OpenSSH line), which selects the key in the agent.
    pub certificate: &'a str,
    /// The CA's `@cert-authority` lines.
    pub known_hosts: &'a str,
    /// The CA's KRL.
    pub revoked: &'a [u8],
    /// Login, host, port option and command.
    pub invocation: SshInvocation,
    /// The user's ssh_config to include; `None`: ssh's own two.
    pub user_config: Option<&'a Path>,
    /// Deadline.
    pub timeout: Duration,
    /// Bound on each of stdout and stderr.
    pub max_output_bytes: usize,
}

/// Run `request` (see the module documentation).
pub async fn run(request: RunRequest<'_>) -> Result<RunOutcome, ClientError> {
    let scratch = PrivateDir::new()?;
    let dir = scratch.path();
    let files = write_files(dir, &request)?;
    let trust = known_hosts::ssh_options(
        HostTrust::CertificateAuthority,
        &files.known_hosts,
        &files.revoked,
    );
    let mut arguments = client::ssh_arguments(
        &request.invocation,
        request.agent_socket,
        &files.certificate,
        &trust,
    )?;
    // Never a prompt: the model cannot answer one.
    arguments.splice(0..0, ["-o".into(), "BatchMode=yes".into()]);
    let config = dir.join("ssh_config");
    known_hosts::write(
        &config,
        client::hop_config(&arguments, request.user_config)?.as_bytes(),
        true,
    )?;
    arguments.splice(0..0, ["-F".into(), config.into_os_string()]);
    let mut child = tokio::process::Command::new("ssh")
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ClientError::Unreachable {
            url: "ssh".into(),
            detail: e.to_string(),
        })?;
    let bound = request.max_output_bytes;
    let stdout = tokio::spawn(read_bounded(child.stdout.take(), bound));
    let stderr = tokio::spawn(read_bounded(child.stderr.take(), bound));
    let (exit_code, timed_out) = match tokio::time::timeout(request.timeout, child.wait()).await {
        Ok(Ok(status)) => (Some(status.code().unwrap_or(255)), false),
        Ok(Err(e)) => {
            return Err(ClientError::Unreachable {
                url: "ssh".into(),
                detail: e.to_string(),
            });
        }
        Err(_) => {
            let _ = child.kill().await;
            (None, true)
        }
    };
    let (stdout, stdout_truncated) = stdout.await.unwrap_or_default();
    let (stderr, stderr_truncated) = stderr.await.unwrap_or_default();
    let host_refused = known_hosts::refused_host(&stderr);
    drop(scratch);
    Ok(RunOutcome {
        exit_code,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        timed_out,
        host_refused,
    })
}

struct Files {
    certificate: std::path::PathBuf,
    known_hosts: std::path::PathBuf,
    revoked: std::path::PathBuf,
}

fn write_files(dir: &Path, request: &RunRequest<'_>) -> Result<Files, ClientError> {
    let files = Files {
        certificate: dir.join(client::CERTIFICATE_FILE),
        known_hosts: dir.join("known_hosts"),
        revoked: dir.join("revoked_host_keys.krl"),
    };
    known_hosts::write(
        &files.certificate,
        format!("{}\n", request.certificate).as_bytes(),
        true,
    )?;
    known_hosts::write(&files.known_hosts, request.known_hosts.as_bytes(), true)?;
    known_hosts::write(&files.revoked, request.revoked, true)?;
    Ok(files)
}

/// Read all of `from`, keeping the first `bound` bytes; whether more came.
async fn read_bounded(from: Option<impl AsyncRead + Unpin>, bound: usize) -> (String, bool) {
    let Some(mut from) = from else {
        return (String::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buffer = [0u8; 8192];
    while let Ok(n @ 1..) = from.read(&mut buffer).await {
        let room = bound.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..n.min(room)]);
        truncated |= n > room;
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_kept_to_its_bound_and_the_cut_is_marked() {
        let text = vec![b'x'; 10_000];
        let (kept, truncated) = read_bounded(Some(&text[..]), 100).await;
        assert_eq!(kept.len(), 100);
        assert!(truncated);
        let (kept, truncated) = read_bounded(Some(&b"short"[..]), 100).await;
        assert_eq!(kept, "short");
        assert!(!truncated);
    }
}
