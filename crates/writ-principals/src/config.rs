//! The host configuration of `writ-principals` (`/etc/writ/host.toml`): where the CA is,
//! what this host is called, where synced state lives and how long network calls may take.
//!
//! Loading validates everything up front and every error names the file and the key, so a
//! broken host configuration is found by `writ-principals sync` (or a test `check`) rather
//! than by a refused login. This module holds no secrets: `token_file` is only a path.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default location of synced state (`trusted_user_ca_keys`, …).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/writ";
/// Name of the `TrustedUserCAKeys` file inside `state_dir`.
pub const TRUSTED_KEYS_FILE: &str = "trusted_user_ca_keys";
/// Name of the `RevokedKeys` file (OpenSSH binary KRL) inside `state_dir`.
pub const KRL_FILE: &str = "revoked.krl";
/// Name of the signed revocation feed inside `state_dir`.
pub const REVOCATIONS_FILE: &str = "revocations.json";
/// How far in the future a revocation feed's `issued_at` may lie (clock skew between the
/// CA and this host) before it is refused; defined with the feed format, because the CA
/// keeps revocations published this much longer
/// ([`writ_formats::revocation::feed::HOST_CLOCK_SKEW`]).
pub const FEED_CLOCK_SKEW: Duration = writ_formats::revocation::feed::HOST_CLOCK_SKEW;
/// Default for `terminate_sessions`: sessions follow their task.
fn default_terminate_sessions() -> bool {
    true
}

/// Default for `max_staleness`: how old revocation data may be before hosts deny.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(120);
/// Default for `timeout`. `check` runs while sshd holds a pre-authentication slot, so any
/// network call it makes must give up quickly; two seconds is far above a healthy CA's
/// latency and well below sshd's `LoginGraceTime`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Files the system hostname is read from, in order.
const HOSTNAME_FILES: [&str; 2] = ["/proc/sys/kernel/hostname", "/etc/hostname"];

/// `on_stale`: recorded sessions while the feed is stale ([`crate::sessions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    /// Keep them (new logins are refused anyway: `check` fails closed on a stale feed).
    #[default]
    Keep,
    /// End them all: nothing fresh says their tasks still run.
    Terminate,
}

/// How `writ-principals check` decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decide from local state only: the certificate, the synced trust bundle and the
    /// synced, signed revocation feed (which must be fresh).
    #[default]
    Offline,
    /// After the local certificate checks pass, also ask the CA (`POST /v1/authorize`,
    /// authenticated with the host's own token from `token_file`, bounded by `timeout`).
    /// The CA's answer decides; only when the CA cannot be reached (or answers 5xx) does
    /// `check` fall back to the local revocation feed, which must then be fresh.
    Online,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Offline => "offline",
            Mode::Online => "online",
        })
    }
}

/// The host configuration, as read from TOML and completed by [`HostConfig::load`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Base URL of the CA, e.g. `https://ca.example.com:8422`. Must be `https://`, or
    /// `http://` to a loopback address (the trust bundle is this host's root of trust).
    pub ca_url: String,
    /// This host's name as matched against a task's host patterns, in lowercase.
    /// [`HostConfig::load`] fills it from the system hostname when the file omits it; it
    /// stays `None` only if that cannot be read, and then every `check` is denied.
    #[serde(default)]
    pub host_name: Option<String>,
    /// Directory of synced state (`trusted_user_ca_keys`, …).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Offline or online checking.
    #[serde(default)]
    pub mode: Mode,
    /// How old revocation data may be before `check` denies.
    #[serde(
        default = "default_max_staleness",
        deserialize_with = "writ_formats::duration::deserialize"
    )]
    pub max_staleness: Duration,
    /// This host's own workload token, for online mode (required there). Read on every
    /// online call, so a rotated token file is picked up at once.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// End the recorded SSH connections of a task (or certificate) when a synced feed
    /// says it ended ([`crate::sessions`]); the session hook records them.
    #[serde(default = "default_terminate_sessions")]
    pub terminate_sessions: bool,
    /// What `sync --watch` does with recorded sessions while its feed is older than
    /// `max_staleness` (the CA unreachable): keep them, or end them all.
    #[serde(default)]
    pub on_stale: OnStale,
    /// How long after learning of the end a connection is terminated.
    #[serde(default, deserialize_with = "writ_formats::duration::deserialize")]
    pub terminate_grace: Duration,
    /// Hard timeout for every network call, from DNS lookup to the last body byte.
    #[serde(
        default = "default_timeout",
        deserialize_with = "writ_formats::duration::deserialize"
    )]
    pub timeout: Duration,
    /// The user `writ-principals sync` runs as, if not root (a name, or a numeric uid).
    /// `state_dir` and the files in it must be owned by root or this user and writable by
    /// no one else, or `check` and `sync` refuse them ([`crate::state`]). Unset:
    /// root only.
    #[serde(default)]
    pub sync_user: Option<SyncUser>,
    /// PEM file of the CA certificate(s) an `https://` CA's TLS certificate must chain to;
    /// unset: the system's trust store ([`crate::tls`]).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// PEM client certificate (chain) presented to a CA with mutual TLS (its
    /// `tls_client_ca`); needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`; needs `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// A node_exporter textfile-collector file (`*.prom`) that every `sync` round replaces
    /// with metrics about what is installed ([`crate::metrics_file`]); unset: none.
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
    /// Host certificates for this host's keys (`writ-principals host-cert`, and every
    /// `sync --watch` round); unset: none are requested ([`crate::host_cert`]).
    #[serde(default)]
    pub host_certificates: Option<HostCertificates>,
}

/// `[host_certificates]`: which host keys get certificates, for which names, and how sshd
/// is told to read them again.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCertificates {
    /// Public host keys (`*.pub`) to certify; empty: every `/etc/ssh/ssh_host_*_key.pub`.
    /// Each certificate is written next to its key as `…-cert.pub`.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// The names clients reach this host by, exactly the certificates' principals; empty:
    /// `host_name`. The CA grants only names its `role = "host"` policy covers.
    #[serde(default)]
    pub names: Vec<String>,
    /// sshd's PID file: after a certificate changed, SIGHUP goes to that process.
    #[serde(default = "default_sshd_pid_file")]
    pub sshd_pid_file: PathBuf,
    /// Instead of the SIGHUP, run this command (program and arguments, no shell), e.g.
    /// `["systemctl", "reload", "ssh"]`.
    #[serde(default)]
    pub reload_command: Vec<String>,
}

/// Default `[host_certificates] sshd_pid_file` (OpenSSH's `PidFile` default on Debian).
pub const DEFAULT_SSHD_PID_FILE: &str = "/run/sshd.pid";

fn default_sshd_pid_file() -> PathBuf {
    PathBuf::from(DEFAULT_SSHD_PID_FILE)
}

#[cfg(test)]
impl HostConfig {
    /// The unit tests' base: an offline host `host_name`, its state in `state_dir`, its CA
    /// at `ca_url`, every other setting at its default; tests change what they exercise.
    pub(crate) fn for_tests(ca_url: &str, host_name: &str, state_dir: &Path) -> HostConfig {
        HostConfig {
            ca_url: ca_url.to_owned(),
            host_name: Some(host_name.to_owned()),
            state_dir: state_dir.to_owned(),
            mode: Mode::Offline,
            max_staleness: Duration::from_secs(120),
            token_file: None,
            terminate_sessions: true,
            on_stale: OnStale::Keep,
            terminate_grace: Duration::ZERO,
            timeout: Duration::from_secs(2),
            sync_user: None,
            ca_bundle: None,
            client_cert: None,
            client_key: None,
            metrics_file: None,
            host_certificates: None,
        }
    }
}

/// `sync_user`: a user name (looked up in `/etc/passwd` when needed) or a numeric uid.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SyncUser {
    /// A numeric uid: `sync_user = 998`.
    Uid(u32),
    /// A user name: `sync_user = "writ"`.
    Name(String),
}

/// Why a host configuration could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read host config {}: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (unknown key, wrong type,
    /// bad duration, missing `ca_url`); the message names the key.
    #[error("invalid host config {}: {message}", path.display())]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// toml's message, which names the offending key and position.
        message: String,
    },
    /// A key parsed but its value is not acceptable.
    #[error("invalid host config {}: key `{key}`: {message}", path.display())]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl HostConfig {
    /// Read, parse and validate the configuration at `path`, filling in the system
    /// hostname when `host_name` is not set.
    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text, path)?;
        if config.host_name.is_none() {
            config.host_name = system_host_name();
        }
        Ok(config)
    }

    /// Parse and validate configuration text; `path` is used only in error messages.
    /// Unlike [`HostConfig::load`], this does not fill in the system hostname.
    pub fn from_toml(text: &str, path: &Path) -> Result<HostConfig, ConfigError> {
        let mut config: HostConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        check_ca_url(&config.ca_url).map_err(|m| invalid("ca_url", m))?;
        if let Some(name) = &config.host_name {
            let name = name.trim().to_ascii_lowercase();
            if !is_valid_host_name(&name) {
                return Err(invalid(
                    "host_name",
                    format!("{name:?} is not a host name (letters, digits, '-', '.', '_')"),
                ));
            }
            config.host_name = Some(name);
        }
        if config.state_dir.as_os_str().is_empty() || !config.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path".to_owned()));
        }
        if config.timeout.is_zero() {
            return Err(invalid("timeout", "must be greater than zero".to_owned()));
        }
        if config.max_staleness.is_zero() {
            return Err(invalid(
                "max_staleness",
                "must be greater than zero".to_owned(),
            ));
        }
        match &config.token_file {
            Some(file) if file.as_os_str().is_empty() || !file.is_absolute() => {
                return Err(invalid("token_file", "must be an absolute path".to_owned()));
            }
            None if config.mode == Mode::Online => {
                return Err(invalid(
                    "token_file",
                    "mode = \"online\" needs the host's own token (token_file)".to_owned(),
                ));
            }
            _ => {}
        }
        for (key, file) in [
            ("ca_bundle", &config.ca_bundle),
            ("client_cert", &config.client_cert),
            ("client_key", &config.client_key),
            ("metrics_file", &config.metrics_file),
        ] {
            if file
                .as_ref()
                .is_some_and(|f| f.as_os_str().is_empty() || !f.is_absolute())
            {
                return Err(invalid(key, "must be an absolute path".to_owned()));
            }
        }
        if let Some(file) = &config.metrics_file
            && file.extension().and_then(|e| e.to_str()) != Some(crate::metrics_file::EXTENSION)
        {
            return Err(invalid(
                "metrics_file",
                format!(
                    "must end in .{}: node_exporter's textfile collector reads no other file",
                    crate::metrics_file::EXTENSION
                ),
            ));
        }
        if config.client_cert.is_some() != config.client_key.is_some() {
            let missing = if config.client_cert.is_some() {
                "client_key"
            } else {
                "client_cert"
            };
            return Err(invalid(
                missing,
                "client_cert and client_key go together (mutual TLS)".to_owned(),
            ));
        }
        if let Some(SyncUser::Name(name)) = &config.sync_user
            && !writ_formats::profile::is_valid_login(name)
        {
            return Err(invalid(
                "sync_user",
                format!("{name:?} is not a user name or uid"),
            ));
        }
        if let Some(settings) = &mut config.host_certificates {
            check_host_certificates(settings, config.token_file.is_some())
                .map_err(|(key, message)| invalid(key, message))?;
        }
        Ok(config)
    }

    /// The `TrustedUserCAKeys` file that `sync` writes and `check` reads.
    pub fn trusted_keys_path(&self) -> PathBuf {
        self.state_dir.join(TRUSTED_KEYS_FILE)
    }

    /// The OpenSSH KRL that `sync` writes for sshd's `RevokedKeys`.
    pub fn krl_path(&self) -> PathBuf {
        self.state_dir.join(KRL_FILE)
    }

    /// The signed revocation feed that `sync` writes and `check` reads.
    pub fn revocations_path(&self) -> PathBuf {
        self.state_dir.join(REVOCATIONS_FILE)
    }

    /// `ca_url` without a trailing slash, ready for appending `/v1/…`.
    pub fn ca_base_url(&self) -> &str {
        self.ca_url.trim_end_matches('/')
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_max_staleness() -> Duration {
    DEFAULT_MAX_STALENESS
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// `https://` anywhere, `http://` only to a loopback address: whoever answers `sync`
/// decides which CA keys this host trusts, so the bundle must not travel in clear text.
fn check_ca_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (expected https://host[:port])"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.rsplit_once('@') {
        Some(_) => return Err("must not contain credentials".to_owned()),
        None if authority.starts_with('[') => authority
            .split_once(']')
            .map(|(h, _)| &h[1..])
            .unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if matches!(host, "127.0.0.1" | "localhost" | "::1") => Ok(()),
        "http" => Err(format!(
            "{url:?} uses plain http to a non-loopback host; use https://"
        )),
        other => Err(format!("unsupported scheme {other:?}; use https://")),
    }
}

/// `[host_certificates]`: names lowercased and valid, paths absolute, and the host's own
/// token (`token_file`) configured, since it is what the host proves itself with.
fn check_host_certificates(
    settings: &mut HostCertificates,
    has_token: bool,
) -> Result<(), (&'static str, String)> {
    if !has_token {
        return Err((
            "token_file",
            "[host_certificates] needs the host's own workload token (token_file)".to_owned(),
        ));
    }
    for name in &mut settings.names {
        let lower = name.trim().to_ascii_lowercase();
        if !is_valid_host_name(&lower) {
            return Err((
                "host_certificates.names",
                format!(
                    "{name:?} is not a host name (letters, digits, '-', '.', '_'; no wildcards)"
                ),
            ));
        }
        *name = lower;
    }
    for key in &settings.keys {
        if !key.is_absolute() || key.extension().and_then(|e| e.to_str()) != Some("pub") {
            return Err((
                "host_certificates.keys",
                format!(
                    "{} must be an absolute path to a public key (*.pub)",
                    key.display()
                ),
            ));
        }
    }
    if !settings.sshd_pid_file.is_absolute() {
        return Err((
            "host_certificates.sshd_pid_file",
            "must be an absolute path".to_owned(),
        ));
    }
    Ok(())
}

fn is_valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= writ_formats::profile::MAX_HOST_PATTERN_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

/// The system hostname in lowercase, from the first of [`HOSTNAME_FILES`] that holds a
/// valid one. This is usually the short name; set `host_name` when tasks name hosts by
/// their fully qualified names.
pub fn system_host_name() -> Option<String> {
    HOSTNAME_FILES.iter().find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        let name = text.trim().to_ascii_lowercase();
        is_valid_host_name(&name).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostConfig, ConfigError> {
        HostConfig::from_toml(text, Path::new("/etc/writ/host.toml"))
    }

    #[test]
    fn defaults() {
        let config = parse("ca_url = \"https://ca.example.com:8422/\"\n").expect("valid config");
        assert_eq!(config.host_name, None);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/writ"));
        assert_eq!(config.mode, Mode::Offline);
        assert_eq!(config.max_staleness, Duration::from_secs(120));
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.token_file, None);
        assert_eq!(config.sync_user, None);
        assert_eq!(
            config.trusted_keys_path(),
            PathBuf::from("/var/lib/writ/trusted_user_ca_keys")
        );
        assert_eq!(
            config.krl_path(),
            PathBuf::from("/var/lib/writ/revoked.krl")
        );
        assert_eq!(
            config.revocations_path(),
            PathBuf::from("/var/lib/writ/revocations.json")
        );
        assert_eq!(config.ca_base_url(), "https://ca.example.com:8422");
    }

    #[test]
    fn full_file() {
        let config = parse(
            r#"
            ca_url = "http://127.0.0.1:8422"
            host_name = "Web-01.Prod.Example.com"
            state_dir = "/srv/writ"
            mode = "online"
            max_staleness = "5m"
            token_file = "/var/run/secrets/writ/token"
            timeout = "500ms"
            sync_user = "writ"
            "#,
        )
        .expect("valid config");
        assert_eq!(config.host_name.as_deref(), Some("web-01.prod.example.com"));
        assert_eq!(config.mode, Mode::Online);
        assert_eq!(config.max_staleness, Duration::from_secs(300));
        assert_eq!(config.timeout, Duration::from_millis(500));
        assert_eq!(
            config.token_file,
            Some(PathBuf::from("/var/run/secrets/writ/token"))
        );
        assert_eq!(config.sync_user, Some(SyncUser::Name("writ".to_owned())));
        let by_uid = parse("ca_url = \"https://ca\"\nsync_user = 998\n").expect("uid");
        assert_eq!(by_uid.sync_user, Some(SyncUser::Uid(998)));
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            ("ca_url = \"https://ca\"\nhostname = \"x\"\n", "hostname"),
            ("ca_url = \"https://ca\"\ntimeout = \"soon\"\n", "timeout"),
            ("ca_url = \"https://ca\"\nmode = \"sometimes\"\n", "mode"),
            ("host_name = \"x\"\n", "ca_url"),
            ("ca_url = \"http://ca.example.com\"\n", "ca_url"),
            ("ca_url = \"ftp://ca.example.com\"\n", "ca_url"),
            (
                "ca_url = \"https://ca\"\nhost_name = \"a b\"\n",
                "host_name",
            ),
            (
                "ca_url = \"https://ca\"\nstate_dir = \"rel\"\n",
                "state_dir",
            ),
            ("ca_url = \"https://ca\"\ntimeout = \"0s\"\n", "timeout"),
            ("ca_url = \"https://ca\"\nmode = \"online\"\n", "token_file"),
            (
                "ca_url = \"https://ca\"\ntoken_file = \"token\"\n",
                "token_file",
            ),
            (
                "ca_url = \"https://ca\"\nsync_user = \"a:b\"\n",
                "sync_user",
            ),
            ("ca_url = \"https://ca\"\nsync_user = -1\n", "sync_user"),
            (
                "ca_url = \"https://ca\"\nca_bundle = \"ca.pem\"\n",
                "ca_bundle",
            ),
            (
                "ca_url = \"https://ca\"\nclient_cert = \"/etc/writ/host.crt\"\n",
                "client_key",
            ),
            (
                "ca_url = \"https://ca\"\nmetrics_file = \"writ.prom\"\n",
                "metrics_file",
            ),
            (
                "ca_url = \"https://ca\"\nmetrics_file = \"/var/lib/node/writ.txt\"\n",
                "metrics_file",
            ),
            (
                "ca_url = \"https://ca\"\nclient_key = \"/etc/writ/host.key\"\n",
                "client_cert",
            ),
        ];
        for (text, key) in cases {
            let message = parse(text).expect_err(text).to_string();
            assert!(message.contains("/etc/writ/host.toml"), "{message}");
            assert!(message.contains(key), "{key}: {message}");
        }
    }

    #[test]
    fn ca_url_schemes() {
        for ok in [
            "https://ca.example.com",
            "https://10.0.0.1:8422/",
            "http://127.0.0.1:8422",
            "http://localhost:8422",
            "http://[::1]:8422",
        ] {
            assert_eq!(check_ca_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ca.example.com",
            "http://10.0.0.1",
            "http://127.0.0.1.evil.com",
            "https://",
            "https://user:pw@ca.example.com",
        ] {
            assert!(check_ca_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_file_names_path() {
        let message = HostConfig::load(Path::new("/nonexistent/writ/host.toml"))
            .expect_err("missing file")
            .to_string();
        assert!(message.contains("/nonexistent/writ/host.toml"), "{message}");
    }
}
