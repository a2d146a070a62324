//! How the agent side trusts hosts: by the CA's host certificate authority, never by
//! first use. `writ ssh` fetches the CA's `@cert-authority` lines
//! (`GET /v1/ca/known-hosts`, over the same verified channel as everything else), writes
//! them to a private file in its own temporary directory, and runs ssh with that file as
//! its only known-hosts file and `StrictHostKeyChecking=yes`, `UpdateHostKeys=no`, and the
//! CA's KRL (`GET /v1/krl`) as `RevokedHostKeys`: a host that does not present a valid,
//! unrevoked certificate from this CA for the name dialled is refused by ssh itself.
//! `writ cert --known-hosts PATH` writes the same lines for other tools.
//!
//! It never reads or writes `~/.ssh`, never lets a caller's `-o` relax these options
//! (ssh keeps the first value it is given, and these come first), and trusts on first use
//! only when asked by name (`--insecure-trust-on-first-use`), into a file that is thrown
//! away with the session.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;

use super::{CaClient, ClientError};

/// The CA's known-hosts lines.
pub const KNOWN_HOSTS_PATH: &str = "/v1/ca/known-hosts";
/// The CA's KRL (revoked certificates, host certificates included, and CA keys).
pub const KRL_PATH: &str = "/v1/krl";
/// What every OpenSSH KRL starts with (PROTOCOL.krl).
const KRL_MAGIC: &[u8] = b"SSHKRL\n\0";

/// How `writ ssh` decides that the host it reached is the host it meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostTrust {
    /// Only a host certificate signed by one of the CA's host CA keys (the default).
    #[default]
    CertificateAuthority,
    /// Whatever key the host presents, remembered for this session only
    /// (`--insecure-trust-on-first-use`): a man in the middle is not detected.
    TrustOnFirstUse,
}

/// Fetch the CA's known-hosts lines: at least one `@cert-authority` line, and nothing but
/// `@cert-authority`/`@revoked` lines and comments, or an error that says what to do.
pub fn fetch(ca: &CaClient) -> Result<String, ClientError> {
    let text = ca.get_public(KNOWN_HOSTS_PATH).map_err(|e| match e {
        ClientError::Refused { status: 404, .. } => ClientError::BadAnswer(format!(
            "the CA at {} publishes no host CA keys ({KNOWN_HOSTS_PATH} not found): upgrade \
             it, or pass --insecure-trust-on-first-use to accept whatever key the host shows",
            ca.url()
        )),
        other => other,
    })?;
    let text = String::from_utf8(text)
        .map_err(|_| ClientError::BadAnswer(format!("{KNOWN_HOSTS_PATH} is not text")))?;
    let mut authorities = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("@cert-authority ") {
            authorities += 1;
        } else if !line.starts_with("@revoked ") {
            return Err(ClientError::BadAnswer(format!(
                "{KNOWN_HOSTS_PATH} holds a line that is neither @cert-authority nor @revoked"
            )));
        }
    }
    if authorities == 0 {
        return Err(ClientError::BadAnswer(format!(
            "the CA at {} lists no host CA key: no host can be verified (create one with \
             `writ admin ca … --kind host`)",
            ca.url()
        )));
    }
    Ok(text)
}

/// Fetch the CA's KRL, for ssh's `RevokedHostKeys`: revoked host certificates and keys.
pub fn fetch_revoked(ca: &CaClient) -> Result<Vec<u8>, ClientError> {
    let krl = ca.get_public(KRL_PATH)?;
    if !krl.starts_with(KRL_MAGIC) {
        return Err(ClientError::BadAnswer(format!(
            "{KRL_PATH} is not an OpenSSH KRL"
        )));
    }
    Ok(krl)
}

/// Write `lines` to `path`, readable by the owner only (`writ ssh`'s own file) or by
/// everyone (`writ cert --known-hosts`, for other tools): they are public keys.
pub fn write(path: &Path, lines: &[u8], private: bool) -> Result<(), ClientError> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| ClientError::KeyFile {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(failed)?;
    file.write_all(lines).map_err(failed)
}

/// The ssh options that make `known_hosts` the only source of host trust, and `revoked`
/// (a KRL) what it refuses.
pub fn ssh_options(trust: HostTrust, known_hosts: &Path, revoked: &Path) -> Vec<OsString> {
    let strict = match trust {
        HostTrust::CertificateAuthority => "StrictHostKeyChecking=yes",
        HostTrust::TrustOnFirstUse => "StrictHostKeyChecking=accept-new",
    };
    let mut user_file = OsString::from("UserKnownHostsFile=");
    user_file.push(known_hosts);
    let mut revoked_file = OsString::from("RevokedHostKeys=");
    revoked_file.push(revoked);
    [
        user_file,
        revoked_file,
        "GlobalKnownHostsFile=/dev/null".into(),
        strict.into(),
        "UpdateHostKeys=no".into(),
        // A revoked or unknown host is never waved through for "the same IP".
        "CheckHostIP=no".into(),
    ]
    .into_iter()
    .flat_map(|option| [OsString::from("-o"), option])
    .collect()
}

/// What ssh says when it refused the host's key (OpenSSH's own wording).
const REFUSED_HOST: [&str; 3] = [
    "Host key verification failed",
    "host key is known for",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
];

/// Copy ssh's stderr to ours as it comes (prompts without a newline included) and say
/// whether ssh refused the host's key.
pub fn relay_stderr(mut from: impl Read) -> bool {
    let mut stderr = std::io::stderr();
    let mut refused = false;
    // The end of the previous read, so a message split across two reads is found.
    let mut window: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n @ 1..) = from.read(&mut buffer) {
        let _ = stderr.write_all(&buffer[..n]);
        let _ = stderr.flush();
        window.extend_from_slice(&buffer[..n]);
        refused |= refused_host(&String::from_utf8_lossy(&window));
        let keep = window.len().saturating_sub(64);
        window.drain(..keep);
    }
    refused
}

/// Whether ssh's `stderr` says it refused the host's key.
pub fn refused_host(stderr: &str) -> bool {
    REFUSED_HOST.iter().any(|m| stderr.contains(m))
}

/// What `writ ssh` says when ssh refused the host.
pub fn refused_host_hint(host: &str) -> String {
    format!(
        "{host:?} did not prove itself with a host certificate from this CA for that \
         name, so ssh refused it. Enrol the host (on it: [host_certificates] in host.toml, \
         `writ-principals host-cert`, and a HostCertificate line in sshd_config; README \
         \"Host certificates\"), or, knowing that a man in the middle would go unnoticed, \
         pass --insecure-trust-on-first-use."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strict_options_come_as_pairs() {
        let options = ssh_options(
            HostTrust::CertificateAuthority,
            Path::new("/t/kh"),
            Path::new("/t/krl"),
        );
        let pairs: Vec<_> = options.chunks(2).collect();
        assert!(pairs.iter().all(|p| p[0] == "-o"));
        assert!(options.contains(&OsString::from("UserKnownHostsFile=/t/kh")));
        assert!(options.contains(&OsString::from("StrictHostKeyChecking=yes")));
        assert!(options.contains(&OsString::from("UpdateHostKeys=no")));
        assert!(options.contains(&OsString::from("RevokedHostKeys=/t/krl")));
        let tofu = ssh_options(
            HostTrust::TrustOnFirstUse,
            Path::new("/t/kh"),
            Path::new("/t/krl"),
        );
        assert!(tofu.contains(&OsString::from("StrictHostKeyChecking=accept-new")));
    }

    #[test]
    fn a_refused_host_is_recognised_across_reads() {
        let text = b"No ED25519 host key is known for web1 and you have requested strict \
                     checking.\r\nHost key verification failed.\r\n";
        assert!(relay_stderr(&text[..]));
        assert!(!relay_stderr(&b"Permission denied (publickey).\r\n"[..]));
    }
}
