//! `writ-principals check`: the decision sshd asks for, as its `AuthorizedPrincipalsCommand`,
//! on every authentication attempt with a certificate.
//!
//! [`decide`] returns the one principal that lets the certificate log in as `login` on
//! this host, or a denial; it never admits a bare login (security invariant 1). sshd runs
//! the command *before* it has checked the certificate at all, for anyone who merely holds
//! the public certificate, so this module re-verifies everything itself and fails closed:
//!
//! 1. the login is a valid login name and the certificate decodes;
//! 2. it is a *user* certificate, signed by a key in the synced `trusted_user_ca_keys`
//!    file, and `now` is inside its validity window (invariant 2). The state directory
//!    and every file read from it must be owned by root (or `sync_user`) and not
//!    writable by group or others ([`crate::state`]), or nothing is admitted;
//! 3. it carries no critical option except `force-command` and `source-address`, which
//!    sshd itself enforces;
//! 4. its signed writ extensions name a task id and host patterns, and this host's name
//!    matches one of the patterns (invariant 3);
//! 5. the principal `writ:<task_id>:<login>` is among its principals (invariant 3);
//! 6. revocation (invariant 4):
//!    - **offline mode**: the synced `revocations.json` must be present, signed by a key
//!      in `trusted_user_ca_keys`, and fresh (issued at most `max_staleness` ago, at most
//!      [`FEED_CLOCK_SKEW`] in the future), and it must revoke neither the certificate's
//!      task nor its serial (for the CA key that signed it);
//!    - **online mode**: the CA is asked (`POST /v1/authorize`, phase `check`, bounded by
//!      `timeout`) and its answer decides. A refused host token (401/403) denies; only
//!      when the CA gives no usable answer (unreachable, timeout, 5xx) are the offline
//!      feed rules applied instead, and they must pass.
//!
//! Apart from that one bounded call in online mode, the check is pure: it reads the small
//! trusted-keys and feed files once each, takes `now` from the caller and has no side
//! effects (the CA records nothing for phase `check`), so running it twice per login, or
//! for a probe, is harmless. The caller logs the [`Decision`] (see [`Decision::log`]).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64ct::{Base64, Encoding};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, Fingerprint, HashAlg, PublicKey};
use writ_formats::duration;
use writ_formats::profile;
use writ_formats::revocation::bundle;
use writ_formats::revocation::feed::{self, Feed, FeedError};

use crate::config::{FEED_CLOCK_SKEW, HostConfig, Mode};
use crate::online::{self, Answer, AuthorizeRequest, Phase, TokenError};
use crate::state::{self, InsecureState, Owners};
use crate::syslog::{self, Severity};

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
    /// The state directory or a file read from it may have been written by someone other
    /// than root or the sync user (see [`crate::state`]); nothing in it is trusted.
    #[error(transparent)]
    InsecureState(InsecureState),
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
    /// There is no revocation feed (`writ-principals sync` has not run).
    #[error("no revocation feed at {}: run writ-principals sync", path.display())]
    FeedMissing {
        /// The `revocations.json` file.
        path: PathBuf,
    },
    /// The revocation feed exists but cannot be read.
    #[error("cannot read the revocation feed {}: {detail}", path.display())]
    FeedUnreadable {
        /// The `revocations.json` file.
        path: PathBuf,
        /// The I/O error.
        detail: String,
    },
    /// The revocation feed is malformed, not signed by a trusted CA key, stale or dated
    /// in the future; the reason code is the feed error's code (`feed_bad_signature`,
    /// `feed_stale`, `feed_malformed`, …).
    #[error(transparent)]
    Feed(FeedError),
    /// The feed lists the certificate's task as ended (completed, revoked).
    #[error("task {task_id} has been revoked or completed")]
    TaskRevoked {
        /// The certificate's task.
        task_id: String,
    },
    /// The feed lists the certificate's serial as revoked.
    #[error("certificate serial {serial} has been revoked")]
    SerialRevoked {
        /// The certificate's serial.
        serial: u64,
    },
    /// Online mode: the CA said no. The reason code is the CA's.
    #[error("the CA denied the certificate: {reason}")]
    CaDenied {
        /// The CA's snake_case reason.
        reason: String,
    },
    /// Online mode: the CA refused this host's own token (a configuration error).
    #[error("the CA refused this host's token (HTTP {status}, {code})")]
    CaRefusedHost {
        /// 401 or 403.
        status: u16,
        /// The CA's error code.
        code: String,
    },
    /// Online mode: the CA admitted a different principal than the certificate's.
    #[error("the CA admitted principal {principal:?}, not the certificate's")]
    CaPrincipalMismatch {
        /// What the CA answered.
        principal: String,
    },
    /// Online mode: this host's own token could not be read.
    #[error(transparent)]
    HostToken(TokenError),
}

impl CheckError {
    /// A stable snake_case code for logs and the one-line denial on stderr. For
    /// [`CheckError::CaDenied`] it is the CA's own reason code.
    pub fn reason_code(&self) -> &str {
        match self {
            CheckError::InvalidLogin { .. } => "invalid_login",
            CheckError::Malformed(_) => "malformed_certificate",
            CheckError::NotUserCertificate => "not_user_certificate",
            CheckError::InsecureState(_) => "insecure_state",
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
            CheckError::FeedMissing { .. } => "feed_missing",
            CheckError::FeedUnreadable { .. } => "feed_unreadable",
            CheckError::Feed(e) => e.code(),
            CheckError::TaskRevoked { .. } => "task_revoked",
            CheckError::SerialRevoked { .. } => "serial_revoked",
            CheckError::CaDenied { reason } => reason,
            CheckError::CaRefusedHost { .. } => "ca_refused_host",
            CheckError::CaPrincipalMismatch { .. } => "ca_principal_mismatch",
            CheckError::HostToken(_) => "host_token_unavailable",
        }
    }
}

/// What the certificate says about itself, as far as it could be decoded. Filled in for
/// denials too, for the log line; before the signature is verified these are claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFacts {
    /// The certificate's serial.
    pub serial: Option<u64>,
    /// The value of the task extension (not necessarily a valid task id).
    pub task_id: Option<String>,
    /// The certificate's key ID.
    pub key_id: Option<String>,
    /// SHA-256 fingerprint of the key the certificate claims signed it.
    pub ca_fingerprint: Option<String>,
    /// When the task expires (Unix seconds), from the certificate.
    pub task_expires_at: Option<i64>,
}

/// How a decision was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// From local state only (offline mode, or a denial before the CA was asked).
    Local,
    /// The CA answered (online mode).
    Online,
    /// Online mode, but the CA gave no usable answer: decided by the local feed.
    Fallback,
}

impl Via {
    /// `local`, `online` or `fallback`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Local => "local",
            Via::Online => "online",
            Via::Fallback => "fallback",
        }
    }
}

/// A complete `check` decision: the result, what the certificate claimed, and how the
/// decision was reached — everything the log line needs.
#[derive(Debug)]
pub struct Decision {
    /// The principal to print for sshd, or why not.
    pub result: Result<String, CheckError>,
    /// What the certificate claimed.
    pub facts: CertFacts,
    /// Local, online or fallback.
    pub via: Via,
    /// Why the CA could not be asked, when [`Via::Fallback`].
    pub ca_unavailable: Option<String>,
}

impl Decision {
    fn local(result: Result<String, CheckError>, facts: CertFacts) -> Decision {
        Decision {
            result,
            facts,
            via: Via::Local,
            ca_unavailable: None,
        }
    }

    /// Whether the certificate is admitted.
    pub fn is_allowed(&self) -> bool {
        self.result.is_ok()
    }

    /// `ok`, or the denial's reason code.
    pub fn reason(&self) -> &str {
        match &self.result {
            Ok(_) => "ok",
            Err(e) => e.reason_code(),
        }
    }

    /// The syslog fields of this decision, in order: `decision`, `login`, `serial`,
    /// `task`, `host`, `reason`, `via`, `key_id`, `ca` (and `ca_error` after a fallback,
    /// `detail` naming the path for `insecure_state`).
    /// Unknown values are `-`; values are escaped when formatted, not here.
    pub fn log_fields(&self, login: &str, host: Option<&str>) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (
                "decision",
                if self.is_allowed() { "allow" } else { "deny" }.to_owned(),
            ),
            ("login", login.to_owned()),
        ];
        fields.extend(self.facts.serial_and_task());
        fields.push(("host", host.unwrap_or("-").to_owned()));
        fields.push(("reason", self.reason().to_owned()));
        fields.push(("via", self.via.as_str().to_owned()));
        fields.extend(self.facts.key_id_and_ca());
        if let Some(detail) = &self.ca_unavailable {
            fields.push(("ca_error", detail.clone()));
        }
        // Which path is insecure and why: the operator's fix, not the attacker's hint.
        if let Err(CheckError::InsecureState(insecure)) = &self.result {
            fields.push(("detail", insecure.to_string()));
        }
        fields
    }

    /// Send the decision to syslog (facility auth; `info` for allow, `notice` for deny).
    /// Best effort: never fails, never blocks.
    pub fn log(&self, login: &str, host: Option<&str>) {
        let severity = if self.is_allowed() {
            Severity::Info
        } else {
            Severity::Notice
        };
        log_owned(severity, &self.log_fields(login, host));
    }
}

impl CertFacts {
    /// `serial` and `task` fields (`-` when unknown).
    pub(crate) fn serial_and_task(&self) -> [(&'static str, String); 2] {
        [
            (
                "serial",
                self.serial
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            ),
            (
                "task",
                self.task_id.clone().unwrap_or_else(|| "-".to_owned()),
            ),
        ]
    }

    /// `key_id` and `ca` fields (`-` when unknown).
    pub(crate) fn key_id_and_ca(&self) -> [(&'static str, String); 2] {
        [
            (
                "key_id",
                self.key_id.clone().unwrap_or_else(|| "-".to_owned()),
            ),
            (
                "ca",
                self.ca_fingerprint
                    .clone()
                    .unwrap_or_else(|| "-".to_owned()),
            ),
        ]
    }
}

/// [`syslog::log`] for owned values.
pub(crate) fn log_owned(severity: Severity, fields: &[(&'static str, String)]) {
    let borrowed: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    syslog::log(severity, &borrowed);
}

/// A certificate that passed every local certificate rule (1–5 in the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// `writ:<task_id>:<login>`.
    pub principal: String,
    /// The certificate's task.
    pub task_id: String,
    /// The certificate's serial.
    pub serial: u64,
    /// SHA-256 fingerprint of the (trusted) CA key that signed it.
    pub ca_fingerprint: String,
    /// This host's name.
    pub host: String,
}

/// Decide whether the certificate `cert_b64` (sshd's `%k`: base64 of the binary
/// certificate) may log in as `login` (sshd's `%u`) on this host at `now_unix`, by the
/// rules of `config.mode`. Returns the principal to print for sshd,
/// `writ:<task_id>:<login>`. Shorthand for `decide(…).result`.
pub fn check(
    config: &HostConfig,
    login: &str,
    cert_b64: &str,
    now_unix: u64,
) -> Result<String, CheckError> {
    decide(config, login, cert_b64, now_unix).result
}

/// Like [`check`], returning the whole [`Decision`] for logging. In online mode this
/// makes one `POST /v1/authorize` (phase `check`), bounded by `config.timeout`.
pub fn decide(config: &HostConfig, login: &str, cert_b64: &str, now_unix: u64) -> Decision {
    let mut facts = CertFacts::default();
    let (verified, trusted) =
        match verify_certificate(config, login, cert_b64, now_unix, &mut facts) {
            Ok(ok) => ok,
            Err(e) => return Decision::local(Err(e), facts),
        };
    if config.mode == Mode::Offline {
        let result = check_feed(config, &trusted, &verified, now_unix).map(|()| verified.principal);
        return Decision::local(result, facts);
    }

    let online = |result| Decision {
        result,
        facts: facts.clone(),
        via: Via::Online,
        ca_unavailable: None,
    };
    let token = match online::read_token(config) {
        Ok(token) => token,
        Err(e) => return online(Err(CheckError::HostToken(e))),
    };
    let request = AuthorizeRequest {
        login,
        certificate: cert_b64,
        host: &verified.host,
        phase: Phase::Check,
        reason: None,
    };
    match online::authorize(config, &token, &request) {
        Answer::Allow { principal } if principal == verified.principal => online(Ok(principal)),
        Answer::Allow { principal } => online(Err(CheckError::CaPrincipalMismatch { principal })),
        Answer::Deny { reason } => online(Err(CheckError::CaDenied { reason })),
        Answer::Refused { status, code } => online(Err(CheckError::CaRefusedHost { status, code })),
        Answer::Unavailable { detail } => {
            let result =
                check_feed(config, &trusted, &verified, now_unix).map(|()| verified.principal);
            Decision {
                result,
                facts,
                via: Via::Fallback,
                ca_unavailable: Some(detail),
            }
        }
    }
}

/// Rules 1–5 of the module docs (everything but revocation). Fills `facts` as far as the
/// certificate decodes. Returns the verified certificate and the trusted CA keys (read
/// once, for the feed check).
pub(crate) fn verify_certificate(
    config: &HostConfig,
    login: &str,
    cert_b64: &str,
    now_unix: u64,
    facts: &mut CertFacts,
) -> Result<(Verified, Vec<PublicKey>), CheckError> {
    if !profile::is_valid_login(login) {
        return Err(CheckError::InvalidLogin {
            login: login.to_owned(),
        });
    }
    let cert = decode_certificate(cert_b64)?;
    let ca_fingerprint = cert.signature_key().fingerprint(HashAlg::Sha256);
    *facts = CertFacts {
        serial: Some(cert.serial()),
        task_id: cert.extensions().get(profile::EXT_TASK).cloned(),
        key_id: Some(cert.key_id().to_owned()),
        ca_fingerprint: Some(ca_fingerprint.to_string()),
        task_expires_at: cert
            .extensions()
            .get(profile::EXT_TASK_EXPIRES)
            .and_then(|t| t.parse().ok()),
    };
    if cert.cert_type() != CertType::User {
        return Err(CheckError::NotUserCertificate);
    }

    let trusted = trusted_keys(config)?;
    let fingerprints: Vec<Fingerprint> = trusted
        .iter()
        .map(|key| key.fingerprint(HashAlg::Sha256))
        .collect();
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
    let verified = Verified {
        principal,
        task_id: task_id.clone(),
        serial: cert.serial(),
        ca_fingerprint: ca_fingerprint.to_string(),
        host: host_name.to_owned(),
    };
    Ok((verified, trusted))
}

/// Rule 6 offline: the local feed is present, signed by a `trusted` key, fresh at
/// `now_unix`, and revokes neither the task nor the serial.
pub(crate) fn check_feed(
    config: &HostConfig,
    trusted: &[PublicKey],
    verified: &Verified,
    now_unix: u64,
) -> Result<(), CheckError> {
    let feed = load_feed(config, trusted, now_unix)?;
    if feed
        .revoked_tasks
        .iter()
        .any(|t| t.task_id == verified.task_id)
    {
        return Err(CheckError::TaskRevoked {
            task_id: verified.task_id.clone(),
        });
    }
    if feed.revokes(&verified.task_id, verified.serial, &verified.ca_fingerprint) {
        return Err(CheckError::SerialRevoked {
            serial: verified.serial,
        });
    }
    Ok(())
}

/// Read `state_dir/revocations.json` and verify it against `trusted` at `now_unix`
/// (`max_staleness` from the config, [`FEED_CLOCK_SKEW`] into the future).
pub fn load_feed(
    config: &HostConfig,
    trusted: &[PublicKey],
    now_unix: u64,
) -> Result<Feed, CheckError> {
    let path = config.revocations_path();
    let owners = Owners::new(config.sync_user.as_ref());
    let bytes = read_bounded(&path, feed::MAX_FEED_BYTES as u64, &owners).map_err(|e| match e {
        ReadError::Insecure(e) => CheckError::InsecureState(e),
        ReadError::Io(e) if e.kind() == io::ErrorKind::NotFound => {
            CheckError::FeedMissing { path: path.clone() }
        }
        ReadError::Io(e) => CheckError::FeedUnreadable {
            path: path.clone(),
            detail: e.to_string(),
        },
    })?;
    let signed = feed::parse(&bytes).map_err(CheckError::Feed)?;
    feed::verify(
        &signed,
        trusted,
        i64::try_from(now_unix).unwrap_or(i64::MAX),
        duration::secs(config.max_staleness),
        duration::secs(FEED_CLOCK_SKEW),
    )
    .map_err(CheckError::Feed)
}

pub(crate) fn decode_certificate(cert_b64: &str) -> Result<Certificate, CheckError> {
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

/// Read `state_dir/trusted_user_ca_keys`, a trust bundle ([`bundle::parse`]: one OpenSSH
/// public key per line, blank lines and `#` comments ignored). This is the first read of
/// the state directory, so the directory itself is checked here ([`state::check_dir`]),
/// then the file by its handle.
/// An insecure directory or file, a missing, unreadable, oversized or empty file, and any
/// line that is not a public key, are errors: a damaged trust file admits nobody.
pub fn trusted_keys(config: &HostConfig) -> Result<Vec<PublicKey>, CheckError> {
    let owners = Owners::new(config.sync_user.as_ref());
    state::check_dir(&config.state_dir, &owners).map_err(CheckError::InsecureState)?;
    let path = config.trusted_keys_path();
    let fail = |detail: String| CheckError::NoTrustedKeys {
        path: path.clone(),
        detail,
    };
    let bytes = read_bounded(&path, MAX_TRUSTED_KEYS_FILE_LEN, &owners).map_err(|e| match e {
        ReadError::Insecure(e) => CheckError::InsecureState(e),
        ReadError::Io(e) => fail(e.to_string()),
    })?;
    let bundle = bundle::parse(&bytes).map_err(|e| fail(e.to_string()))?;
    Ok(bundle.keys)
}

/// Why a state file could not be read.
enum ReadError {
    /// Opening or reading failed, or the file is too large.
    Io(io::Error),
    /// The file is not owned and protected as [`crate::state`] requires.
    Insecure(InsecureState),
}

/// Read at most `limit` bytes of the state file `path`, after checking its owner and
/// mode on the open handle; a longer file is an error.
fn read_bounded(path: &Path, limit: u64, owners: &Owners<'_>) -> Result<Vec<u8>, ReadError> {
    let file = File::open(path).map_err(ReadError::Io)?;
    // One fstat serves both the ownership check and the buffer size.
    let meta = file.metadata().map_err(ReadError::Io)?;
    state::check_file(path, &meta, owners).map_err(ReadError::Insecure)?;
    // Sized from the file's length, the read takes one call (and one to see the end)
    // instead of a growing series from 32 bytes up; the limit still bounds it.
    let expected = meta.len().min(limit + 1);
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0) + 1);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::Io(io::Error::other(format!(
            "larger than {limit} bytes"
        ))));
    }
    Ok(bytes)
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
pub(crate) mod tests {
    use std::path::Path;

    use std::time::{Duration, Instant};

    use rand_core::OsRng;
    use ssh_key::certificate::Builder;
    use ssh_key::{Algorithm, LineEnding, PrivateKey};
    use writ_formats::revocation::feed::{RevokedSerial, RevokedTask, SignedFeed};

    use super::*;
    use crate::online::tests::{ca_stand_in, request_json};

    pub(crate) const NOW: u64 = 1_700_000_000;
    pub(crate) const TASK: &str = "0123456789abcdef0123456789abcdef";
    const OTHER_TASK: &str = "fedcba9876543210fedcba9876543210";
    pub(crate) const HOST: &str = "web-01.prod.example.com";
    pub(crate) const SERIAL: u64 = 42;

    pub(crate) fn new_key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("generate ed25519 key")
    }

    /// What goes into a test certificate; [`Spec::default`] is a good writ certificate.
    pub(crate) struct Spec {
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

    pub(crate) fn issue(ca: &PrivateKey, spec: Spec) -> String {
        let user = new_key();
        let mut builder = Builder::new_with_random_nonce(
            &mut OsRng,
            user.public_key(),
            spec.valid_after,
            spec.valid_before,
        )
        .expect("builder");
        builder
            .serial(SERIAL)
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

    /// A signed revocation feed document (version 2; `check` does not look at its
    /// binding, so it binds empty documents).
    pub(crate) fn signed_feed(
        signer: &PrivateKey,
        issued_at: i64,
        sequence: i64,
        revoked_tasks: Vec<RevokedTask>,
        revoked_serials: Vec<RevokedSerial>,
    ) -> String {
        let feed = Feed {
            version: feed::VERSION,
            issued_at,
            sequence,
            revoked_tasks,
            revoked_serials,
            binding: Some(feed::Binding::of(b"", b"")),
        };
        sign_feed(signer, &feed)
    }

    /// `feed`, signed by `signer`, as the CA serves it.
    pub(crate) fn sign_feed(signer: &PrivateKey, feed: &Feed) -> String {
        let json = feed.to_json();
        let signature = signer
            .sign(feed::NAMESPACE, HashAlg::Sha512, json.as_bytes())
            .expect("sign feed")
            .to_pem(LineEnding::LF)
            .expect("pem");
        serde_json::to_string(&SignedFeed {
            feed: json,
            signature,
        })
        .expect("serialise signed feed")
    }

    /// A CA, a state directory trusting it (with a fresh, empty feed), and a host config
    /// pointing there.
    struct Fixture {
        ca: PrivateKey,
        config: HostConfig,
        dir: tempfile::TempDir,
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
            let f = Fixture { ca, config, dir };
            f.write_feed(&f.ca, NOW as i64 - 10, vec![], vec![]);
            f
        }

        fn write_feed(
            &self,
            signer: &PrivateKey,
            issued_at: i64,
            tasks: Vec<RevokedTask>,
            serials: Vec<RevokedSerial>,
        ) {
            std::fs::write(
                self.config.revocations_path(),
                signed_feed(signer, issued_at, 7, tasks, serials),
            )
            .expect("write feed");
        }

        fn check(&self, login: &str, cert: &str) -> Result<String, CheckError> {
            check(&self.config, login, cert, NOW)
        }

        /// Switch to online mode against `ca_url`, with a token file.
        fn go_online(&mut self, ca_url: String) {
            let token = self.dir.path().join("token");
            std::fs::write(&token, "host.token.jwt\n").expect("write token");
            self.config.mode = Mode::Online;
            self.config.ca_url = ca_url;
            self.config.token_file = Some(token);
        }

        fn ca_fingerprint(&self) -> String {
            self.ca
                .public_key()
                .fingerprint(HashAlg::Sha256)
                .to_string()
        }
    }

    fn config_for(state_dir: &Path) -> HostConfig {
        HostConfig::for_tests("https://ca.example.com", HOST, state_dir)
    }

    fn reason(result: Result<String, CheckError>) -> String {
        match result {
            Ok(principal) => panic!("expected a denial, got {principal}"),
            Err(e) => e.reason_code().to_owned(),
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
    fn state_writable_by_others_is_denied() {
        use std::os::unix::fs::PermissionsExt;
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let set_mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        for (path, mode, good) in [
            (f.dir.path().to_owned(), 0o777, 0o755),
            (f.dir.path().to_owned(), 0o1777, 0o700),
            (f.dir.path().to_owned(), 0o770, 0o700),
            (f.config.trusted_keys_path(), 0o666, 0o644),
            (f.config.trusted_keys_path(), 0o664, 0o644),
            (f.config.revocations_path(), 0o646, 0o644),
        ] {
            set_mode(&path, mode);
            // The syslog line names the path, for the operator.
            let fields = decide(&f.config, "deploy", &cert, NOW).log_fields("deploy", None);
            assert!(
                fields
                    .iter()
                    .any(|(k, v)| *k == "detail" && v.contains(&path.display().to_string())),
                "{fields:?}"
            );
            let denied = f.check("deploy", &cert).expect_err("insecure");
            assert_eq!(denied.reason_code(), "insecure_state", "{path:?} {mode:o}");
            assert!(
                denied.to_string().contains(&path.display().to_string())
                    && denied.to_string().contains("writable by group or others"),
                "{denied}"
            );
            set_mode(&path, good);
            assert!(f.check("deploy", &cert).is_ok(), "{path:?} {good:o}");
        }
    }

    #[test]
    fn state_owned_by_another_user_is_denied_unless_it_is_the_sync_user() {
        // Runs as root (as the suite does): chown to `nobody`.
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let nobody = 65534;
        for path in [
            f.config.revocations_path(),
            f.config.trusted_keys_path(),
            f.dir.path().to_owned(),
        ] {
            std::os::unix::fs::chown(&path, Some(nobody), None).expect("chown (needs root)");
            let denied = f.check("deploy", &cert).expect_err("foreign owner");
            assert_eq!(denied.reason_code(), "insecure_state");
            assert!(
                denied.to_string().contains("owned by uid 65534"),
                "{denied}"
            );
        }
        // Every piece is nobody's now; naming nobody as the sync user trusts them.
        f.config.sync_user = Some(crate::config::SyncUser::Uid(nobody));
        assert!(f.check("deploy", &cert).is_ok());
        f.config.sync_user = Some(crate::config::SyncUser::Name("nobody".to_owned()));
        assert!(f.check("deploy", &cert).is_ok());
        f.config.sync_user = Some(crate::config::SyncUser::Name("root".to_owned()));
        assert_eq!(reason(f.check("deploy", &cert)), "insecure_state");
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

    // --- Revocation feed (invariant 4) ---------------------------------------------

    #[test]
    fn missing_feed_is_denied() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        std::fs::remove_file(f.config.revocations_path()).expect("remove");
        assert_eq!(reason(f.check("deploy", &cert)), "feed_missing");
    }

    #[test]
    fn unparsable_feed_is_denied() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        for garbage in [
            "",
            "{}",
            "not json",
            "{\"feed\": \"{}\", \"signature\": \"x\"}",
        ] {
            std::fs::write(f.config.revocations_path(), garbage).expect("write");
            let code = reason(f.check("deploy", &cert));
            assert!(
                code == "feed_malformed" || code == "feed_bad_signature",
                "{garbage:?}: {code}"
            );
        }
    }

    #[test]
    fn feed_signed_by_a_foreign_key_is_denied() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        f.write_feed(&new_key(), NOW as i64, vec![], vec![]);
        assert_eq!(reason(f.check("deploy", &cert)), "feed_bad_signature");
    }

    #[test]
    fn feed_signed_by_any_trusted_key_is_accepted() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        // A second CA key (a rotation's next key) is trusted too.
        let next = new_key();
        let bundle = format!(
            "{}\n{}\n",
            f.ca.public_key().to_openssh().expect("openssh"),
            next.public_key().to_openssh().expect("openssh")
        );
        std::fs::write(f.config.trusted_keys_path(), bundle).expect("write");
        f.write_feed(&next, NOW as i64, vec![], vec![]);
        assert!(f.check("deploy", &cert).is_ok());
        // Dropping that key from trust invalidates its feed.
        let only_ca = f.ca.public_key().to_openssh().expect("openssh");
        std::fs::write(f.config.trusted_keys_path(), only_ca).expect("write");
        assert_eq!(reason(f.check("deploy", &cert)), "feed_bad_signature");
    }

    #[test]
    fn stale_feed_is_denied_and_fresh_limits_are_exact() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let max = f.config.max_staleness.as_secs() as i64;
        f.write_feed(&f.ca, NOW as i64 - max, vec![], vec![]);
        assert!(
            f.check("deploy", &cert).is_ok(),
            "exactly max_staleness old"
        );
        f.write_feed(&f.ca, NOW as i64 - max - 1, vec![], vec![]);
        assert_eq!(reason(f.check("deploy", &cert)), "feed_stale");
        // A replayed old feed (a rollback of the file) is stale too.
        f.write_feed(&f.ca, NOW as i64 - 3600, vec![], vec![]);
        assert_eq!(reason(f.check("deploy", &cert)), "feed_stale");
    }

    #[test]
    fn feed_from_the_future_is_denied_beyond_the_skew() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        f.write_feed(&f.ca, NOW as i64 + 60, vec![], vec![]);
        assert!(f.check("deploy", &cert).is_ok());
        f.write_feed(&f.ca, NOW as i64 + 61, vec![], vec![]);
        assert_eq!(reason(f.check("deploy", &cert)), "feed_from_the_future");
    }

    #[test]
    fn revoked_task_is_denied() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let revoked = |task: &str| RevokedTask {
            task_id: task.to_owned(),
            until: NOW as i64 + 600,
        };
        f.write_feed(&f.ca, NOW as i64, vec![revoked(OTHER_TASK)], vec![]);
        assert!(
            f.check("deploy", &cert).is_ok(),
            "another task's revocation"
        );
        f.write_feed(
            &f.ca,
            NOW as i64,
            vec![revoked(OTHER_TASK), revoked(TASK)],
            vec![],
        );
        assert_eq!(reason(f.check("deploy", &cert)), "task_revoked");
    }

    #[test]
    fn revoked_serial_is_denied_only_for_its_ca() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let revoked = |serial: u64, ca: String| RevokedSerial {
            serial: serial.to_string(),
            ca_fingerprint: ca,
            until: NOW as i64 + 600,
        };
        let other_ca = new_key()
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        f.write_feed(
            &f.ca,
            NOW as i64,
            vec![],
            vec![
                revoked(SERIAL, other_ca),
                revoked(SERIAL + 1, f.ca_fingerprint()),
            ],
        );
        assert!(f.check("deploy", &cert).is_ok());
        f.write_feed(
            &f.ca,
            NOW as i64,
            vec![],
            vec![revoked(SERIAL, f.ca_fingerprint())],
        );
        assert_eq!(reason(f.check("deploy", &cert)), "serial_revoked");
    }

    #[test]
    fn certificate_rules_are_reported_before_feed_rules() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        std::fs::remove_file(f.config.revocations_path()).expect("remove");
        assert_eq!(reason(f.check("root", &cert)), "login_not_in_task");
    }

    #[test]
    fn decisions_carry_log_fields() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let allow = decide(&f.config, "deploy", &cert, NOW);
        assert!(allow.is_allowed());
        let fields = allow.log_fields("deploy", Some(HOST));
        let get = |fields: &[(&str, String)], key: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get(&fields, "decision"), "allow");
        assert_eq!(get(&fields, "login"), "deploy");
        assert_eq!(get(&fields, "serial"), SERIAL.to_string());
        assert_eq!(get(&fields, "task"), TASK);
        assert_eq!(get(&fields, "host"), HOST);
        assert_eq!(get(&fields, "reason"), "ok");
        assert_eq!(get(&fields, "via"), "local");
        assert_eq!(get(&fields, "key_id"), "writ-test-key-id");
        assert_eq!(get(&fields, "ca"), f.ca_fingerprint());
        let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            &keys[..6],
            ["decision", "login", "serial", "task", "host", "reason"]
        );

        let deny = decide(&f.config, "root\nx", &cert, NOW);
        let fields = deny.log_fields("root\nx", Some(HOST));
        assert_eq!(get(&fields, "decision"), "deny");
        assert_eq!(get(&fields, "reason"), "invalid_login");
        assert_eq!(get(&fields, "serial"), "-");
        let line = syslog::format_fields(
            &fields
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert!(
            line.starts_with("decision=deny login=root\\x0ax serial=- task=-"),
            "{line}"
        );
    }

    // --- Online mode ---------------------------------------------------------------

    #[test]
    fn online_allow_admits_even_without_a_local_feed() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let (url, requests) = ca_stand_in(
            "200 OK",
            r#"{"allow": true, "principal": "writ:0123456789abcdef0123456789abcdef:deploy"}"#,
        );
        f.go_online(url);
        std::fs::remove_file(f.config.revocations_path()).expect("remove");
        let decision = decide(&f.config, "deploy", &cert, NOW);
        assert_eq!(
            decision.result.expect("admitted"),
            format!("writ:{TASK}:deploy")
        );
        assert_eq!(decision.via, Via::Online);
        let request = requests
            .recv_timeout(Duration::from_secs(5))
            .expect("asked");
        let json = request_json(&request);
        assert_eq!(json["phase"], "check");
        assert_eq!(json["login"], "deploy");
        assert_eq!(json["certificate"], cert.as_str());
        assert_eq!(json["host"], HOST);
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer host.token.jwt"),
            "{request}"
        );
    }

    #[test]
    fn online_deny_is_final_with_the_cas_reason() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let (url, _requests) =
            ca_stand_in("200 OK", r#"{"allow": false, "reason": "task_completed"}"#);
        f.go_online(url);
        // A fresh local feed does not override the CA's answer.
        let decision = decide(&f.config, "deploy", &cert, NOW);
        assert_eq!(decision.reason(), "task_completed");
        assert_eq!(decision.via, Via::Online);
        assert!(!decision.is_allowed());
    }

    #[test]
    fn online_refused_host_token_denies_without_fallback() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let (url, _requests) = ca_stand_in(
            "403 Forbidden",
            r#"{"error": {"code": "forbidden", "message": "not a host"}}"#,
        );
        f.go_online(url);
        assert_eq!(reason(f.check("deploy", &cert)), "ca_refused_host");
        let (url, _requests) = ca_stand_in("401 Unauthorized", "");
        f.config.ca_url = url;
        assert_eq!(reason(f.check("deploy", &cert)), "ca_refused_host");
    }

    #[test]
    fn online_principal_mismatch_is_denied() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let (url, _requests) = ca_stand_in(
            "200 OK",
            r#"{"allow": true, "principal": "writ:fedcba9876543210fedcba9876543210:deploy"}"#,
        );
        f.go_online(url);
        assert_eq!(reason(f.check("deploy", &cert)), "ca_principal_mismatch");
    }

    #[test]
    fn online_5xx_falls_back_to_the_fresh_local_feed() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let (url, _requests) = ca_stand_in("503 Service Unavailable", "{}");
        f.go_online(url);
        let decision = decide(&f.config, "deploy", &cert, NOW);
        assert!(decision.is_allowed(), "{:?}", decision.result);
        assert_eq!(decision.via, Via::Fallback);
        assert!(
            decision
                .ca_unavailable
                .as_deref()
                .unwrap_or_default()
                .contains("503")
        );

        // The fallback applies every feed rule.
        let (url, _requests) = ca_stand_in("503 Service Unavailable", "{}");
        f.config.ca_url = url;
        let revoked = RevokedTask {
            task_id: TASK.to_owned(),
            until: NOW as i64 + 600,
        };
        f.write_feed(&f.ca, NOW as i64, vec![revoked], vec![]);
        let decision = decide(&f.config, "deploy", &cert, NOW);
        assert_eq!(decision.reason(), "task_revoked");
        assert_eq!(decision.via, Via::Fallback);
    }

    #[test]
    fn online_unreachable_ca_with_missing_or_stale_feed_denies() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        // Bound but never listening, for the whole test: connection refused, and no
        // other test's server can be given this port meanwhile.
        let held = tokio::net::TcpSocket::new_v4().expect("socket");
        held.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let port = held.local_addr().expect("local addr").port();
        f.go_online(format!("http://127.0.0.1:{port}"));
        assert!(
            f.check("deploy", &cert).is_ok(),
            "fresh feed: fallback admits"
        );
        f.write_feed(&f.ca, NOW as i64 - 3600, vec![], vec![]);
        assert_eq!(reason(f.check("deploy", &cert)), "feed_stale");
        std::fs::remove_file(f.config.revocations_path()).expect("remove");
        assert_eq!(reason(f.check("deploy", &cert)), "feed_missing");
    }

    #[test]
    fn online_silent_ca_is_bounded_by_the_timeout() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        // Accepted by the kernel, never answered.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        f.go_online(format!("http://{}", listener.local_addr().expect("addr")));
        f.config.timeout = Duration::from_millis(400);
        std::fs::remove_file(f.config.revocations_path()).expect("remove");
        let started = Instant::now();
        let decision = decide(&f.config, "deploy", &cert, NOW);
        let elapsed = started.elapsed();
        assert_eq!(decision.reason(), "feed_missing");
        assert_eq!(decision.via, Via::Fallback);
        assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1900), "{elapsed:?}");
        drop(listener);
    }

    #[test]
    fn online_without_a_readable_token_denies() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        f.go_online("http://127.0.0.1:1".to_owned());
        f.config.token_file = Some(f.dir.path().join("no-such-token"));
        assert_eq!(reason(f.check("deploy", &cert)), "host_token_unavailable");
    }

    #[test]
    fn online_asks_only_after_local_certificate_checks_pass() {
        let mut f = Fixture::new();
        let (url, requests) = ca_stand_in(
            "200 OK",
            r#"{"allow": true, "principal": "writ:0123456789abcdef0123456789abcdef:root"}"#,
        );
        f.go_online(url);
        let foreign = issue(&new_key(), Spec::default());
        assert_eq!(reason(f.check("root", &foreign)), "untrusted_ca");
        let cert = issue(&f.ca, Spec::default());
        assert_eq!(reason(f.check("root", &cert)), "login_not_in_task");
        assert!(
            requests.recv_timeout(Duration::from_millis(200)).is_err(),
            "the CA was asked about a certificate that failed local checks"
        );
    }
}
