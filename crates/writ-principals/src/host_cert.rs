//! `writ-principals host-cert`: keeps an SSH host certificate next to each of this host's
//! public host keys (`/etc/ssh/ssh_host_ed25519_key.pub` → `…_key-cert.pub`), so clients
//! verify the host by the CA's `@cert-authority` line instead of trusting it on first use.
//!
//! A round reads the configured keys and each one's installed certificate, and asks the
//! CA (`POST /v1/host-certificates`, with this host's own workload token) only for the
//! keys whose certificate is missing, unreadable, for another key or other names, or two
//! thirds through its lifetime ([`renew_at`]). Every certificate the CA returns is checked
//! before anything is written (a host certificate, for exactly that key and the configured
//! names, valid now); then each is written atomically, and sshd is reloaded once, only if
//! something changed (sshd reads `HostCertificate` files only when it starts or reloads).
//!
//! It never touches a private key (it reads `*.pub` files only), never writes a
//! certificate it has not checked, never logs the token, and a failed round leaves the
//! installed certificates as they were.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, PublicKey};

use crate::ca_post;
use crate::config::{HostCertificates, HostConfig};
use crate::online::{ErrorEnvelope, read_token};
use crate::sync::{commit, stage};

/// The CA's endpoint for host certificates.
pub const HOST_CERTIFICATES_PATH: &str = "/v1/host-certificates";
/// Where the default host keys live, and the shape of their names.
const SSH_DIR: &str = "/etc/ssh";
const HOST_KEY_PREFIX: &str = "ssh_host_";
const HOST_KEY_SUFFIX: &str = "_key.pub";
/// Largest answer read from the CA (a few certificates of a few kB each).
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// Why a round failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum HostCertError {
    /// `[host_certificates]` is missing from the host configuration.
    #[error(
        "host certificates are not configured: add a [host_certificates] table to the host \
         config (README \"Host certificates\")"
    )]
    NotConfigured,
    /// A host key could not be listed or read.
    #[error("{}: {detail}", path.display())]
    Key {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// No host key was found.
    #[error(
        "no host keys to certify: none matched {SSH_DIR}/{HOST_KEY_PREFIX}*{HOST_KEY_SUFFIX}; list them in [host_certificates] keys"
    )]
    NoKeys,
    /// The host's token could not be read.
    #[error("{0}")]
    Token(#[from] crate::online::TokenError),
    /// The CA could not be reached or answered something unusable.
    #[error("POST {url}: {detail}")]
    Ca {
        /// The endpoint.
        url: String,
        /// What went wrong (the CA's error code and message when it sent one).
        detail: String,
    },
    /// A returned certificate is not what was asked for.
    #[error("the CA's answer was refused (nothing written): {0}")]
    BadCertificate(String),
    /// Writing a certificate failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// What a round did for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The installed certificate stays; renewed from `renew_at` on.
    Kept {
        /// Its serial.
        serial: u64,
        /// Its end of validity (Unix seconds).
        valid_before: u64,
        /// When it will be renewed (Unix seconds).
        renew_at: u64,
    },
    /// A new certificate was written.
    Issued {
        /// Why it was renewed.
        reason: String,
        /// Its serial.
        serial: u64,
        /// Its end of validity (Unix seconds).
        valid_before: u64,
    },
}

/// One key's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    /// The public host key.
    pub key: PathBuf,
    /// The certificate file next to it.
    pub certificate: PathBuf,
    /// What happened.
    pub outcome: Outcome,
}

/// A round's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Per key, in the order configured (or found).
    pub keys: Vec<KeyReport>,
    /// How sshd was told, if a certificate changed: `None` when nothing changed.
    pub reload: Option<Reload>,
}

impl Report {
    /// Whether any certificate was written.
    pub fn changed(&self) -> bool {
        self.keys
            .iter()
            .any(|k| matches!(k.outcome, Outcome::Issued { .. }))
    }
}

/// How sshd learnt of new certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// `reload_command` ran and succeeded, or SIGHUP was sent to the pid in `sshd_pid_file`.
    Done(String),
    /// It could not be reloaded: the certificates are written, but sshd serves the old
    /// ones until it restarts. Not a failed round (the next one does not retry).
    Failed(String),
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reload::Done(how) => write!(f, "sshd reloaded ({how})"),
            Reload::Failed(why) => write!(
                f,
                "warning: sshd was not reloaded ({why}); it serves the new certificates only \
                 after a reload or restart"
            ),
        }
    }
}

/// `key.pub` → `key-cert.pub`, where sshd's `HostCertificate` and ssh-keygen put it.
pub fn certificate_path(key: &Path) -> PathBuf {
    let name = key.file_name().map(|n| n.to_string_lossy().into_owned());
    let stem = name
        .as_deref()
        .and_then(|n| n.strip_suffix(".pub"))
        .unwrap_or_else(|| name.as_deref().unwrap_or("key"));
    key.with_file_name(format!("{stem}-cert.pub"))
}

/// When a certificate valid from `valid_after` to `valid_before` is renewed: two thirds
/// through its lifetime (a window that ends before it starts is renewed at once).
pub fn renew_at(valid_after: u64, valid_before: u64) -> u64 {
    let lifetime = u128::from(valid_before.saturating_sub(valid_after));
    // Two thirds of a u64 fits a u64, and valid_after + it ≤ valid_before.
    let two_thirds = u64::try_from(lifetime * 2 / 3).unwrap_or(u64::MAX);
    valid_after.saturating_add(two_thirds)
}

/// The keys a round certifies: the configured ones, or every
/// `/etc/ssh/ssh_host_*_key.pub`, sorted.
pub fn host_keys(settings: &HostCertificates) -> Result<Vec<PathBuf>, HostCertError> {
    if !settings.keys.is_empty() {
        return Ok(settings.keys.clone());
    }
    let dir = Path::new(SSH_DIR);
    let entries = std::fs::read_dir(dir).map_err(|e| HostCertError::Key {
        path: dir.to_owned(),
        detail: e.to_string(),
    })?;
    let mut keys: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(HOST_KEY_PREFIX) && n.ends_with(HOST_KEY_SUFFIX))
        })
        .collect();
    keys.sort();
    if keys.is_empty() {
        return Err(HostCertError::NoKeys);
    }
    Ok(keys)
}

/// The names certificates carry: the configured ones, or `host_name`.
pub fn names(config: &HostConfig, settings: &HostCertificates) -> Vec<String> {
    if settings.names.is_empty() {
        config.host_name.iter().cloned().collect()
    } else {
        settings.names.clone()
    }
}

/// The installed certificate of `key` if it stays at `now`, or why it must be replaced.
fn judge(
    key: &PublicKey,
    installed: Option<&str>,
    names: &[String],
    now: u64,
) -> Result<Certificate, String> {
    let Some(text) = installed else {
        return Err("no certificate yet".to_owned());
    };
    let cert = Certificate::from_openssh(text.trim())
        .map_err(|e| format!("the installed certificate cannot be read ({e})"))?;
    if cert.cert_type() != CertType::Host {
        return Err("the installed certificate is not a host certificate".to_owned());
    }
    if cert.public_key() != key.key_data() {
        return Err("the installed certificate is for another key".to_owned());
    }
    if let Err((have, want)) = same_names(&cert, names) {
        return Err(format!(
            "the installed certificate names {have:?}, the configuration {want:?}"
        ));
    }
    if now >= cert.valid_before() {
        return Err("the installed certificate has expired".to_owned());
    }
    if now >= renew_at(cert.valid_after(), cert.valid_before()) {
        return Err("two thirds of the installed certificate's lifetime have passed".to_owned());
    }
    Ok(cert)
}

/// Whether `cert` names exactly `names` (in any order); if not, both lists, sorted.
fn same_names<'a>(
    cert: &'a Certificate,
    names: &'a [String],
) -> Result<(), (Vec<&'a str>, Vec<&'a str>)> {
    let mut have: Vec<&str> = cert.valid_principals().iter().map(String::as_str).collect();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    have.sort_unstable();
    want.sort_unstable();
    if have == want {
        Ok(())
    } else {
        Err((have, want))
    }
}

/// Check one certificate the CA returned: a host certificate for exactly one of the keys
/// asked for, naming exactly `names`, valid at `now`. Returns the key's index.
fn check_issued(
    text: &str,
    asked: &[(usize, PublicKey)],
    names: &[String],
    now: u64,
) -> Result<(usize, Certificate), String> {
    let cert = Certificate::from_openssh(text.trim())
        .map_err(|e| format!("a returned certificate cannot be read ({e})"))?;
    let Some((index, _)) = asked
        .iter()
        .find(|(_, key)| cert.public_key() == key.key_data())
    else {
        return Err("a returned certificate is for a key that was not asked for".to_owned());
    };
    if cert.cert_type() != CertType::Host {
        return Err("a returned certificate is not a host certificate".to_owned());
    }
    if let Err((have, want)) = same_names(&cert, names) {
        return Err(format!(
            "a returned certificate names {have:?}, not {want:?}"
        ));
    }
    if now < cert.valid_after() || now >= cert.valid_before() {
        return Err("a returned certificate is not valid now (check this host's clock)".to_owned());
    }
    Ok((*index, cert))
}

#[derive(Deserialize)]
struct Answer {
    certificates: Vec<IssuedCertificate>,
}

#[derive(Deserialize)]
struct IssuedCertificate {
    certificate: String,
}

/// Ask the CA for certificates of `keys` naming `names`.
fn request(
    config: &HostConfig,
    token: &str,
    keys: &[(usize, PublicKey)],
    names: &[String],
) -> Result<Vec<String>, HostCertError> {
    let url = ca_post::url(config, HOST_CERTIFICATES_PATH);
    let failed = |detail: String| HostCertError::Ca {
        url: url.clone(),
        detail,
    };
    let public_keys = keys
        .iter()
        .map(|(_, key)| key.to_openssh().map_err(|e| failed(e.to_string())))
        .collect::<Result<Vec<String>, _>>()?;
    let body = serde_json::json!({ "public_keys": public_keys, "names": names });
    let reply = ca_post::post_json(config, token, HOST_CERTIFICATES_PATH, &body)
        .map_err(|e| failed(e.to_string()))?;
    let status = reply.status();
    let text = reply
        .body_prefix(MAX_ANSWER_BYTES)
        .and_then(|bytes| {
            // Not UTF-8: refused in the words of `Read::read_to_string`.
            String::from_utf8(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                )
            })
        })
        .map_err(|e| failed(format!("reading the answer: {e}")))?;
    if !(200..300).contains(&status) {
        return Err(failed(match serde_json::from_str::<ErrorEnvelope>(&text) {
            Ok(envelope) => format!(
                "{status} {}: {}",
                envelope.error.code, envelope.error.message
            ),
            Err(_) => format!("HTTP {status}"),
        }));
    }
    let answer: Answer = serde_json::from_str(&text)
        .map_err(|e| failed(format!("not a host-certificates answer: {e}")))?;
    Ok(answer
        .certificates
        .into_iter()
        .map(|c| c.certificate)
        .collect())
}

/// One round at `now` (Unix seconds): see the module documentation.
pub fn run_at(config: &HostConfig, now: u64) -> Result<Report, HostCertError> {
    let settings = config
        .host_certificates
        .as_ref()
        .ok_or(HostCertError::NotConfigured)?;
    let names = names(config, settings);
    let paths = host_keys(settings)?;
    let mut keys = Vec::with_capacity(paths.len());
    for path in &paths {
        let text = std::fs::read_to_string(path).map_err(|e| HostCertError::Key {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let key = PublicKey::from_openssh(text.trim()).map_err(|e| HostCertError::Key {
            path: path.clone(),
            detail: format!("not an OpenSSH public key ({e})"),
        })?;
        keys.push(key);
    }

    let mut outcomes: Vec<Option<Outcome>> = vec![None; keys.len()];
    let mut reasons = vec![String::new(); keys.len()];
    let mut wanted = Vec::new();
    for (i, (path, key)) in paths.iter().zip(&keys).enumerate() {
        let installed = std::fs::read_to_string(certificate_path(path)).ok();
        match judge(key, installed.as_deref(), &names, now) {
            Ok(cert) => {
                outcomes[i] = Some(Outcome::Kept {
                    serial: cert.serial(),
                    valid_before: cert.valid_before(),
                    renew_at: renew_at(cert.valid_after(), cert.valid_before()),
                });
            }
            Err(reason) => {
                reasons[i] = reason;
                wanted.push((i, key.clone()));
            }
        }
    }

    if !wanted.is_empty() {
        let token = read_token(config)?;
        let returned = request(config, &token, &wanted, &names)?;
        let mut issued: Vec<Option<(Certificate, String)>> = vec![None; keys.len()];
        for text in &returned {
            let (i, cert) =
                check_issued(text, &wanted, &names, now).map_err(HostCertError::BadCertificate)?;
            issued[i] = Some((cert, format!("{}\n", text.trim())));
        }
        if let Some((i, _)) = wanted.iter().find(|(i, _)| issued[*i].is_none()) {
            return Err(HostCertError::BadCertificate(format!(
                "no certificate was returned for {}",
                paths[*i].display()
            )));
        }
        for (i, _) in &wanted {
            let Some((cert, text)) = issued[*i].take() else {
                continue;
            };
            write_certificate(&certificate_path(&paths[*i]), &text)?;
            outcomes[*i] = Some(Outcome::Issued {
                reason: std::mem::take(&mut reasons[*i]),
                serial: cert.serial(),
                valid_before: cert.valid_before(),
            });
        }
    }

    let keys = paths
        .iter()
        .zip(outcomes)
        .filter_map(|(path, outcome)| {
            outcome.map(|outcome| KeyReport {
                key: path.clone(),
                certificate: certificate_path(path),
                outcome,
            })
        })
        .collect();
    let mut report = Report { keys, reload: None };
    if report.changed() {
        report.reload = Some(reload_sshd(settings));
    }
    Ok(report)
}

/// Replace `path` atomically (a fsynced temporary file renamed over it, mode 0644).
fn write_certificate(path: &Path, text: &str) -> Result<(), HostCertError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staged = stage(dir, &name, text.as_bytes())
        .map_err(|(path, source)| HostCertError::Write { path, source })?;
    commit(dir, [staged]).map_err(|(path, source)| HostCertError::Write { path, source })
}

/// Tell sshd to read its host certificates again: `reload_command`, or SIGHUP to the pid
/// in `sshd_pid_file`.
fn reload_sshd(settings: &HostCertificates) -> Reload {
    if let Some((program, args)) = settings.reload_command.split_first() {
        return match Command::new(program).args(args).output() {
            Ok(out) if out.status.success() => Reload::Done(settings.reload_command.join(" ")),
            Ok(out) => Reload::Failed(format!(
                "{} exited with {}: {}",
                settings.reload_command.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Reload::Failed(format!("cannot run {program}: {e}")),
        };
    }
    let pid_file = &settings.sshd_pid_file;
    let pid = match std::fs::read_to_string(pid_file) {
        Ok(text) => text.trim().to_owned(),
        Err(e) => return Reload::Failed(format!("cannot read {}: {e}", pid_file.display())),
    };
    match pid.parse::<u32>() {
        Ok(n) if n > 1 => {}
        _ => {
            return Reload::Failed(format!("{} does not hold a process id", pid_file.display()));
        }
    }
    match Command::new("kill").args(["-HUP", &pid]).output() {
        Ok(out) if out.status.success() => Reload::Done(format!("SIGHUP to {pid}")),
        Ok(out) => Reload::Failed(format!(
            "kill -HUP {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Reload::Failed(format!("cannot run kill: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::new_key;
    use ssh_key::certificate::Builder;

    fn host_cert(
        ca: &ssh_key::PrivateKey,
        key: &PublicKey,
        names: &[&str],
        after: u64,
        before: u64,
    ) -> String {
        let mut builder = Builder::new_with_random_nonce(
            &mut rand_core::OsRng,
            key.key_data().clone(),
            after,
            before,
        )
        .expect("builder");
        builder.serial(7).expect("serial");
        builder.cert_type(CertType::Host).expect("type");
        builder.key_id("host").expect("key id");
        for name in names {
            builder.valid_principal(*name).expect("principal");
        }
        builder
            .sign(ca)
            .expect("sign")
            .to_openssh()
            .expect("encode")
    }

    #[test]
    fn renewal_is_two_thirds_through_the_lifetime() {
        assert_eq!(renew_at(1_000, 1_300), 1_200);
        assert_eq!(renew_at(0, 7 * 86_400), 7 * 86_400 * 2 / 3);
        assert_eq!(renew_at(10, 11), 10);
        assert_eq!(renew_at(5, 3), 5);
        assert_eq!(renew_at(u64::MAX - 2, u64::MAX), u64::MAX - 1);
    }

    #[test]
    fn the_certificate_sits_next_to_the_key() {
        assert_eq!(
            certificate_path(Path::new("/etc/ssh/ssh_host_ed25519_key.pub")),
            Path::new("/etc/ssh/ssh_host_ed25519_key-cert.pub")
        );
    }

    #[test]
    fn an_installed_certificate_is_kept_until_two_thirds_of_its_life() {
        let ca = new_key();
        let key = new_key().public_key().clone();
        let names = vec!["web1.example.com".to_owned()];
        let cert = host_cert(&ca, &key, &["web1.example.com"], 1_000, 1_300);
        assert!(judge(&key, Some(&cert), &names, 1_199).is_ok());
        let renew = judge(&key, Some(&cert), &names, 1_200).expect_err("renew");
        assert!(renew.contains("two thirds"), "{renew}");
        assert!(
            judge(&key, Some(&cert), &names, 1_300)
                .expect_err("expired")
                .contains("expired")
        );
        assert!(judge(&key, None, &names, 1_100).is_err());
        let other = new_key().public_key().clone();
        assert!(
            judge(&other, Some(&cert), &names, 1_100)
                .expect_err("key")
                .contains("another key")
        );
        let renamed = vec!["web2.example.com".to_owned()];
        assert!(judge(&key, Some(&cert), &renamed, 1_100).is_err());
        assert!(judge(&key, Some("garbage"), &names, 1_100).is_err());
    }

    #[test]
    fn a_returned_certificate_must_be_a_host_certificate_for_a_key_asked_for() {
        let ca = new_key();
        let key = new_key().public_key().clone();
        let names = vec!["web1.example.com".to_owned()];
        let asked = vec![(3, key.clone())];
        let good = host_cert(&ca, &key, &["web1.example.com"], 1_000, 2_000);
        assert_eq!(
            check_issued(&good, &asked, &names, 1_500).expect("good").0,
            3
        );
        let other_names = host_cert(&ca, &key, &["evil.example.com"], 1_000, 2_000);
        assert!(check_issued(&other_names, &asked, &names, 1_500).is_err());
        let other_key = host_cert(
            &ca,
            new_key().public_key(),
            &["web1.example.com"],
            1_000,
            2_000,
        );
        assert!(check_issued(&other_key, &asked, &names, 1_500).is_err());
        assert!(check_issued(&good, &asked, &names, 2_000).is_err());
    }
}
