//! `writ-principals check`: the decision sshd asks for, as its `AuthorizedPrincipalsCommand`,
//! on every authentication attempt with a certificate.
//!
//! [`check`] returns the one principal that lets the certificate log in as `login` on this
//! host, or an error; it never returns a bare login (security invariant 1). sshd runs the
//! command *before* it has checked the certificate at all, for anyone who merely holds the
//! public certificate, so this module re-verifies everything itself and fails closed:
//!
//! 1. the login is a valid login name and the certificate decodes;
//! 2. it is a *user* certificate, signed by a key in the synced `trusted_user_ca_keys`
//!    file, and `now` is inside its validity window (invariant 2);
//! 3. it carries no critical option except `force-command` and `source-address`, which
//!    sshd itself enforces;
//! 4. its signed writ extensions name a task id and host patterns, and this host's name
//!    matches one of the patterns (invariant 3);
//! 5. the principal `writ:<task_id>:<login>` is among its principals (invariant 3).
//!
//! The check is pure apart from reading the trusted-keys file: no clock (callers pass
//! `now`), no network, no side effects, so running it twice per login is harmless.
//! Revocation data (`revocations.json`, judged against `max_staleness`) and online mode
//! are not consulted yet; both arrive with the revocation feed. Until then sshd's
//! `RevokedKeys` file is the revocation check.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64ct::{Base64, Encoding};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, Fingerprint, HashAlg, PublicKey};

use crate::host::config::HostConfig;
use crate::profile;

/// Critical options sshd enforces itself; a certificate with any other is refused, since
/// an option we cannot see enforced is a restriction we would silently drop.
pub const ALLOWED_CRITICAL_OPTIONS: [&str; 2] = ["force-command", "source-address"];

/// Longest accepted base64 certificate. An OpenSSH certificate with a 16384-bit RSA key
/// and generous extensions stays well below this; anything longer is not ours.
pub const MAX_CERT_BASE64_LEN: usize = 64 * 1024;

/// Largest accepted `trusted_user_ca_keys` file.
pub const MAX_TRUSTED_KEYS_FILE_LEN: u64 = 1024 * 1024;

/// Why a certificate may not log in. [`CheckError::reason_code`] gives a stable
/// snake_case code for logs; the `Display` text adds detail for operators.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The login sshd asked about is not a valid login name.
    #[error("{login:?} is not a valid login name")]
    InvalidLogin {
        /// The login as given.
        login: String,
    },
    /// The certificate argument is not base64 of an OpenSSH certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// A host certificate was presented for a user login.
    #[error("not a user certificate")]
    NotUserCertificate,
    /// The trusted CA keys could not be loaded; with no trust anchor nothing is admitted.
    #[error("no trusted CA keys in {}: {detail}", path.display())]
    NoTrustedKeys {
        /// The `trusted_user_ca_keys` file.
        path: PathBuf,
        /// What went wrong reading or parsing it.
        detail: String,
    },
    /// The certificate was signed by a key this host does not trust.
    #[error("certificate signed by an untrusted CA key {0}")]
    UntrustedCa(Fingerprint),
    /// The validity window ended.
    #[error("certificate expired at {valid_before} (now {now})")]
    Expired {
        /// End of the validity window (Unix seconds, exclusive).
        valid_before: u64,
        /// The time of the check.
        now: u64,
    },
    /// The validity window has not started.
    #[error("certificate not valid before {valid_after} (now {now})")]
    NotYetValid {
        /// Start of the validity window (Unix seconds).
        valid_after: u64,
        /// The time of the check.
        now: u64,
    },
    /// The certificate claims a trusted CA but does not verify (bad signature).
    #[error("certificate signature does not verify")]
    UntrustedOrInvalid,
    /// A critical option sshd would not enforce for us.
    #[error("unsupported critical option {0:?}")]
    UnknownCriticalOption(String),
    /// The task extension is absent: not a writ certificate.
    #[error("certificate has no {} extension", profile::EXT_TASK)]
    MissingTaskExtension,
    /// The task extension does not hold a task id.
    #[error("certificate's task id {0:?} is malformed")]
    InvalidTaskId(String),
    /// The hosts extension is absent.
    #[error("certificate has no {} extension", profile::EXT_HOSTS)]
    MissingHostsExtension,
    /// The hosts extension does not decode to host patterns.
    #[error("certificate's host patterns {0:?} are malformed")]
    InvalidHostsExtension(String),
    /// This host's name is unknown, so no host pattern can be matched.
    #[error("this host's name is unknown: set host_name in the host config")]
    HostNameUnknown,
    /// This host is not among the task's hosts.
    #[error("host {host:?} is not one of the task's hosts {patterns:?}")]
    HostNotInTask {
        /// This host's name.
        host: String,
        /// The task's host patterns.
        patterns: Vec<String>,
    },
    /// The certificate has no principal binding `login` to its task.
    #[error("login {login:?} is not one of task {task_id}'s logins")]
    LoginNotInTask {
        /// The login sshd asked about.
        login: String,
        /// The certificate's task.
        task_id: String,
    },
}

impl CheckError {
    /// A stable snake_case code for logs and the one-line denial on stderr.
    pub fn reason_code(&self) -> &'static str {
        match self {
            CheckError::InvalidLogin { .. } => "invalid_login",
            CheckError::Malformed(_) => "malformed_certificate",
            CheckError::NotUserCertificate => "not_user_certificate",
            CheckError::NoTrustedKeys { .. } => "no_trusted_keys",
            CheckError::UntrustedCa(_) => "untrusted_ca",
            CheckError::Expired { .. } => "expired",
            CheckError::NotYetValid { .. } => "not_yet_valid",
            CheckError::UntrustedOrInvalid => "invalid_signature",
            CheckError::UnknownCriticalOption(_) => "unknown_critical_option",
            CheckError::MissingTaskExtension => "missing_task_extension",
            CheckError::InvalidTaskId(_) => "invalid_task_id",
            CheckError::MissingHostsExtension => "missing_hosts_extension",
            CheckError::InvalidHostsExtension(_) => "invalid_hosts_extension",
            CheckError::HostNameUnknown => "host_name_unknown",
            CheckError::HostNotInTask { .. } => "host_not_in_task",
            CheckError::LoginNotInTask { .. } => "login_not_in_task",
        }
    }
}

/// Decide whether the certificate `cert_b64` (sshd's `%k`: base64 of the binary
/// certificate) may log in as `login` (sshd's `%u`) on this host at `now_unix`.
///
/// Returns the principal to print for sshd, `writ:<task_id>:<login>`.
pub fn check(
    config: &HostConfig,
    login: &str,
    cert_b64: &str,
    now_unix: u64,
) -> Result<String, CheckError> {
    if !profile::is_valid_login(login) {
        return Err(CheckError::InvalidLogin {
            login: login.to_owned(),
        });
    }
    let cert = decode_certificate(cert_b64)?;
    if cert.cert_type() != CertType::User {
        return Err(CheckError::NotUserCertificate);
    }

    let fingerprints = trusted_fingerprints(&config.trusted_keys_path())?;
    if let Err(_invalid) = cert.validate_at(now_unix, &fingerprints) {
        return Err(diagnose_invalid(&cert, &fingerprints, now_unix));
    }

    if let Some(name) = cert
        .critical_options()
        .keys()
        .find(|name| !ALLOWED_CRITICAL_OPTIONS.contains(&name.as_str()))
    {
        return Err(CheckError::UnknownCriticalOption(name.clone()));
    }

    let extensions = cert.extensions();
    let task_id = extensions
        .get(profile::EXT_TASK)
        .ok_or(CheckError::MissingTaskExtension)?;
    if !profile::is_valid_task_id(task_id) {
        return Err(CheckError::InvalidTaskId(task_id.clone()));
    }
    let hosts_value = extensions
        .get(profile::EXT_HOSTS)
        .ok_or(CheckError::MissingHostsExtension)?;
    let hosts = profile::decode_hosts(hosts_value)
        .ok_or_else(|| CheckError::InvalidHostsExtension(hosts_value.clone()))?;

    let host_name = config
        .host_name
        .as_deref()
        .ok_or(CheckError::HostNameUnknown)?;
    if !profile::host_allowed(&hosts, host_name) {
        return Err(CheckError::HostNotInTask {
            host: host_name.to_owned(),
            patterns: hosts,
        });
    }

    let principal = profile::principal(task_id, login);
    if !cert.valid_principals().contains(&principal) {
        return Err(CheckError::LoginNotInTask {
            login: login.to_owned(),
            task_id: task_id.clone(),
        });
    }
    Ok(principal)
}

fn decode_certificate(cert_b64: &str) -> Result<Certificate, CheckError> {
    if cert_b64.len() > MAX_CERT_BASE64_LEN {
        return Err(CheckError::Malformed(format!(
            "longer than {MAX_CERT_BASE64_LEN} characters"
        )));
    }
    let bytes = Base64::decode_vec(cert_b64)
        .map_err(|e| CheckError::Malformed(format!("not base64: {e}")))?;
    Certificate::from_bytes(&bytes)
        .map_err(|e| CheckError::Malformed(format!("not an OpenSSH certificate: {e}")))
}

/// Read `trusted_user_ca_keys`: one OpenSSH public key per line, blank lines and `#`
/// comments ignored. Missing, unreadable, oversized or empty files, and any line that is
/// not a public key, are errors: a damaged trust file admits nobody.
fn trusted_fingerprints(path: &Path) -> Result<Vec<Fingerprint>, CheckError> {
    let fail = |detail: String| CheckError::NoTrustedKeys {
        path: path.to_owned(),
        detail,
    };
    let text = read_bounded(path, MAX_TRUSTED_KEYS_FILE_LEN).map_err(|e| fail(e.to_string()))?;
    let mut fingerprints = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = PublicKey::from_openssh(line).map_err(|e| {
            fail(format!(
                "line {}: not an OpenSSH public key: {e}",
                index + 1
            ))
        })?;
        fingerprints.push(key.fingerprint(HashAlg::Sha256));
    }
    if fingerprints.is_empty() {
        return Err(fail("the file lists no keys".to_owned()));
    }
    Ok(fingerprints)
}

fn read_bounded(path: &Path, limit: u64) -> io::Result<String> {
    let mut text = String::new();
    File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(text)
}

/// Name the reason `validate_at` refused the certificate (it reports one opaque error for
/// an untrusted CA, a bad signature and a closed validity window alike).
fn diagnose_invalid(cert: &Certificate, trusted: &[Fingerprint], now: u64) -> CheckError {
    let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
    if !trusted.contains(&ca) {
        CheckError::UntrustedCa(ca)
    } else if now < cert.valid_after() {
        CheckError::NotYetValid {
            valid_after: cert.valid_after(),
            now,
        }
    } else if now >= cert.valid_before() {
        CheckError::Expired {
            valid_before: cert.valid_before(),
            now,
        }
    } else {
        CheckError::UntrustedOrInvalid
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rand_core::OsRng;
    use ssh_key::certificate::Builder;
    use ssh_key::{Algorithm, PrivateKey};

    use super::*;
    use crate::host::config::Mode;

    const NOW: u64 = 1_700_000_000;
    const TASK: &str = "0123456789abcdef0123456789abcdef";
    const OTHER_TASK: &str = "fedcba9876543210fedcba9876543210";
    const HOST: &str = "web-01.prod.example.com";

    fn new_key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("generate ed25519 key")
    }

    /// What goes into a test certificate; [`Spec::default`] is a good writ certificate.
    struct Spec {
        cert_type: CertType,
        principals: Vec<String>,
        valid_after: u64,
        valid_before: u64,
        task: Option<&'static str>,
        hosts: Option<&'static str>,
        critical_options: Vec<(&'static str, &'static str)>,
        key_id: &'static str,
    }

    impl Default for Spec {
        fn default() -> Self {
            Spec {
                cert_type: CertType::User,
                principals: vec![profile::principal(TASK, "deploy")],
                valid_after: NOW - 60,
                valid_before: NOW + 300,
                task: Some(TASK),
                hosts: Some("*.prod.example.com,db-1.example.com"),
                critical_options: Vec::new(),
                key_id: "writ-test-key-id",
            }
        }
    }

    fn issue(ca: &PrivateKey, spec: Spec) -> String {
        let user = new_key();
        let mut builder = Builder::new_with_random_nonce(
            &mut OsRng,
            user.public_key(),
            spec.valid_after,
            spec.valid_before,
        )
        .expect("builder");
        builder
            .serial(42)
            .expect("serial")
            .cert_type(spec.cert_type)
            .expect("cert type")
            .key_id(spec.key_id)
            .expect("key id");
        for principal in spec.principals {
            builder.valid_principal(principal).expect("principal");
        }
        for (name, value) in spec.critical_options {
            builder
                .critical_option(name, value)
                .expect("critical option");
        }
        builder.extension("permit-pty", "").expect("extension");
        if let Some(task) = spec.task {
            builder.extension(profile::EXT_TASK, task).expect("task");
        }
        if let Some(hosts) = spec.hosts {
            builder.extension(profile::EXT_HOSTS, hosts).expect("hosts");
        }
        let cert = builder.sign(ca).expect("sign");
        Base64::encode_string(&cert.to_bytes().expect("encode certificate"))
    }

    /// A CA, a state directory trusting it, and a host config pointing there.
    struct Fixture {
        ca: PrivateKey,
        config: HostConfig,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let ca = new_key();
            let dir = tempfile::tempdir().expect("tempdir");
            let line = ca.public_key().to_openssh().expect("openssh public key");
            let other = new_key()
                .public_key()
                .to_openssh()
                .expect("openssh public key");
            // A comment, a blank line, another trusted key and ours.
            std::fs::write(
                dir.path().join("trusted_user_ca_keys"),
                format!("# writ trust bundle\n\n{other}\n{line}\n"),
            )
            .expect("write trusted keys");
            let config = config_for(dir.path());
            Fixture {
                ca,
                config,
                _dir: dir,
            }
        }

        fn check(&self, login: &str, cert: &str) -> Result<String, CheckError> {
            check(&self.config, login, cert, NOW)
        }
    }

    fn config_for(state_dir: &Path) -> HostConfig {
        HostConfig {
            ca_url: "https://ca.example.com".to_owned(),
            host_name: Some(HOST.to_owned()),
            state_dir: state_dir.to_owned(),
            mode: Mode::Offline,
            max_staleness: std::time::Duration::from_secs(120),
            token_file: None,
            timeout: std::time::Duration::from_secs(2),
        }
    }

    fn reason(result: Result<String, CheckError>) -> &'static str {
        match result {
            Ok(principal) => panic!("expected a denial, got {principal}"),
            Err(e) => e.reason_code(),
        }
    }

    #[test]
    fn good_certificate_prints_its_principal() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let principal = f.check("deploy", &cert).expect("admitted");
        assert_eq!(principal, format!("writ:{TASK}:deploy"));
        // Invariant 1: what we print is never a bare login.
        assert!(!profile::is_valid_login(&principal));
    }

    #[test]
    fn online_mode_checks_like_offline() {
        let mut f = Fixture::new();
        f.config.mode = Mode::Online;
        let cert = issue(&f.ca, Spec::default());
        assert!(f.check("deploy", &cert).is_ok());
    }

    #[test]
    fn host_name_is_matched_case_insensitively_against_all_patterns() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        f.config.host_name = Some("DB-1.example.com".to_owned());
        assert!(f.check("deploy", &cert).is_ok());
    }

    #[test]
    fn wrong_login_is_denied() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        assert_eq!(reason(f.check("root", &cert)), "login_not_in_task");
    }

    #[test]
    fn invalid_login_is_denied() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        assert_eq!(reason(f.check("Deploy", &cert)), "invalid_login");
        assert_eq!(reason(f.check("deploy\nroot", &cert)), "invalid_login");
        assert_eq!(reason(f.check("", &cert)), "invalid_login");
    }

    #[test]
    fn host_not_matching_is_denied() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        f.config.host_name = Some("web-01.dev.example.com".to_owned());
        assert_eq!(reason(f.check("deploy", &cert)), "host_not_in_task");
    }

    #[test]
    fn unknown_host_name_is_denied() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        f.config.host_name = None;
        assert_eq!(reason(f.check("deploy", &cert)), "host_name_unknown");
    }

    #[test]
    fn certificate_from_another_ca_is_denied() {
        let f = Fixture::new();
        let cert = issue(&new_key(), Spec::default());
        assert_eq!(reason(f.check("deploy", &cert)), "untrusted_ca");
    }

    #[test]
    fn tampered_certificate_is_denied() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let mut bytes = Base64::decode_vec(&cert).expect("base64");
        let at = bytes
            .windows(16)
            .position(|w| w == b"writ-test-key-id")
            .expect("key id in encoding");
        bytes[at] = b'W';
        let tampered = Base64::encode_string(&bytes);
        assert_eq!(reason(f.check("deploy", &tampered)), "invalid_signature");
    }

    #[test]
    fn host_certificate_is_denied() {
        let f = Fixture::new();
        let cert = issue(
            &f.ca,
            Spec {
                cert_type: CertType::Host,
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "not_user_certificate");
    }

    #[test]
    fn expired_certificate_is_denied() {
        let f = Fixture::new();
        let cert = issue(
            &f.ca,
            Spec {
                valid_after: NOW - 600,
                valid_before: NOW,
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "expired");
    }

    #[test]
    fn not_yet_valid_certificate_is_denied() {
        let f = Fixture::new();
        let cert = issue(
            &f.ca,
            Spec {
                valid_after: NOW + 1,
                valid_before: NOW + 600,
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "not_yet_valid");
    }

    #[test]
    fn missing_trusted_keys_file_is_denied() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        std::fs::remove_file(f.config.trusted_keys_path()).expect("remove");
        assert_eq!(reason(f.check("deploy", &cert)), "no_trusted_keys");
    }

    #[test]
    fn empty_or_damaged_trusted_keys_file_is_denied() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let path = f.config.trusted_keys_path();
        std::fs::write(&path, "# nothing here\n\n").expect("write");
        assert_eq!(reason(f.check("deploy", &cert)), "no_trusted_keys");
        let good = f.ca.public_key().to_openssh().expect("openssh");
        std::fs::write(&path, format!("{good}\nnot a key\n")).expect("write");
        assert_eq!(reason(f.check("deploy", &cert)), "no_trusted_keys");
    }

    #[test]
    fn garbage_is_malformed() {
        let f = Fixture::new();
        for garbage in ["", "!!!not base64!!!", "AAAA", "c3NoLWVkMjU1MTk="] {
            assert_eq!(
                reason(f.check("deploy", garbage)),
                "malformed_certificate",
                "{garbage}"
            );
        }
        let huge = "A".repeat(MAX_CERT_BASE64_LEN + 4);
        assert_eq!(reason(f.check("deploy", &huge)), "malformed_certificate");
        // A plain public key is not a certificate.
        let key = f.ca.public_key().to_openssh().expect("openssh");
        let key_b64 = key.split_whitespace().nth(1).expect("base64 part");
        assert_eq!(reason(f.check("deploy", key_b64)), "malformed_certificate");
    }

    #[test]
    fn missing_task_extension_is_denied() {
        let f = Fixture::new();
        let cert = issue(
            &f.ca,
            Spec {
                task: None,
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "missing_task_extension");
    }

    #[test]
    fn malformed_task_and_hosts_extensions_are_denied() {
        let f = Fixture::new();
        let cert = issue(
            &f.ca,
            Spec {
                task: Some("../../etc/passwd"),
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "invalid_task_id");
        let cert = issue(
            &f.ca,
            Spec {
                hosts: None,
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "missing_hosts_extension");
        let cert = issue(
            &f.ca,
            Spec {
                hosts: Some("web-01.prod.example.com,,*"),
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "invalid_hosts_extension");
    }

    #[test]
    fn principal_for_another_task_is_denied() {
        let f = Fixture::new();
        let cert = issue(
            &f.ca,
            Spec {
                principals: vec![profile::principal(OTHER_TASK, "deploy")],
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "login_not_in_task");
    }

    #[test]
    fn bare_login_principal_is_not_enough() {
        let f = Fixture::new();
        let cert = issue(
            &f.ca,
            Spec {
                principals: vec!["deploy".to_owned()],
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "login_not_in_task");
    }

    #[test]
    fn critical_options() {
        let f = Fixture::new();
        let cert = issue(
            &f.ca,
            Spec {
                critical_options: vec![
                    ("force-command", "/usr/bin/true"),
                    ("source-address", "10.0.0.0/8"),
                ],
                ..Spec::default()
            },
        );
        assert!(f.check("deploy", &cert).is_ok());
        let cert = issue(
            &f.ca,
            Spec {
                critical_options: vec![("verify-required", "")],
                ..Spec::default()
            },
        );
        assert_eq!(reason(f.check("deploy", &cert)), "unknown_critical_option");
    }
}
