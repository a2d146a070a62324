//! The CA's configuration (`writ.toml`, SPEC §4): parsed with serde + TOML, unknown keys
//! rejected, and validated at start-up with errors that name the file and the key.
//!
//! Secrets never live in this file: the CA passphrase comes from `passphrase_file` or the
//! `WRIT_CA_PASSPHRASE` environment variable, so `Debug` of a [`Config`] is safe to log.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::store::{StoreOptions, postgres};
use crate::{duration, profile};

pub mod audit;
pub mod limits;
pub use audit::{AuditConfig, SinkConfig, SinkFormat, SinkType};
pub use limits::LimitsConfig;

/// Environment variable that carries the CA passphrase when `passphrase_file` is not set.
pub const PASSPHRASE_ENV: &str = "WRIT_CA_PASSPHRASE";

/// The whole CA configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where state lives.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Certificate lifetimes and key protection.
    #[serde(default)]
    pub ca: CaConfig,
    /// Trusted workload identity issuers.
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerConfig>,
    /// Who may get what.
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyConfig>,
    /// Audit sinks and signed checkpoints.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Rate limits and request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. `IP:PORT`, or `NAME:PORT` resolved when the configuration
    /// loads ([`resolve_listen`]). Plain HTTP only on loopback, unless `allow_plaintext`.
    #[serde(default = "default_listen", deserialize_with = "deserialize_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first) to serve TLS with; needs `tls_key`. Reloaded on
    /// SIGHUP and when the file changes ([`crate::server::tls`]).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, RSA or SEC1 EC); needs `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Longest wait for a request's headers; also closes keep-alive connections idle
    /// this long.
    #[serde(
        default = "default_client_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub client_timeout: Duration,
    /// Longest time to receive a whole request and answer it (else 408).
    #[serde(
        default = "default_request_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub request_timeout: Duration,
    /// Longest time shutdown waits for requests in flight before dropping them.
    #[serde(
        default = "default_shutdown_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub shutdown_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (addresses or CIDR blocks); from
    /// anyone else the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Serve `GET /metrics` on this address (`IP:PORT` or `NAME:PORT`) instead of on
    /// `listen`; unset, `/metrics` is served on `listen`.
    #[serde(default, deserialize_with = "deserialize_listen_option")]
    pub metrics_listen: Option<SocketAddr>,
    /// The log's format on stderr: `text` (the default) or `json`, one object per line.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Whether `/readyz` also requires every `[[issuer]]`'s keys to be loaded.
    #[serde(default)]
    pub readyz_requires_issuers: bool,
    /// PEM bundle of the CA certificates that client certificates must chain to: mutual
    /// TLS, every client must present one (the identity still comes from the workload
    /// token). Needs `tls_cert`.
    pub tls_client_ca: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback `listen` address: only for a TLS-terminating
    /// proxy on the same host (a warning is logged at start).
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// `[server] log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event, `key=value` fields, every value escaped (the default).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message` and the
    /// event's fields), for log shippers.
    Json,
}

fn default_client_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// The connection loop's limits: `[server]` time limits and trusted proxies, `[limits]`
    /// header, request and connection caps.
    pub fn connection_limits(&self) -> crate::server::Limits {
        let server = &self.server;
        crate::server::Limits {
            client_timeout: server.client_timeout,
            request_timeout: server.request_timeout,
            shutdown_timeout: server.shutdown_timeout,
            max_header_bytes: self.limits.max_header_bytes as usize,
            max_headers: self.limits.max_headers as usize,
            max_concurrent_requests: self.limits.max_concurrent_requests as usize,
            max_connections: self.limits.max_connections as usize,
            trusted_proxies: std::sync::Arc::new(
                server
                    .trusted_proxies
                    .iter()
                    .filter_map(|block| crate::cidr::Cidr::parse(block))
                    .collect(),
            ),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            client_timeout: default_client_timeout(),
            request_timeout: default_request_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
            trusted_proxies: Vec::new(),
            metrics_listen: None,
            log_format: LogFormat::default(),
            readyz_requires_issuers: false,
            tls_client_ca: None,
            allow_plaintext: false,
        }
    }
}

impl ServerConfig {
    /// Whether the listener serves TLS (`tls_cert` and `tls_key` are set).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8422))
}

/// A listen address: `IP:PORT` (`127.0.0.1:8422`, `[::1]:8422`), or `NAME:PORT`
/// (`localhost:8422`) resolved now; a name is bound at its first IPv4 address (else its
/// first address), and the loopback rule applies to that address.
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("{text:?} is neither IP:PORT nor a HOST:PORT that resolves ({e})"))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn deserialize_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve_listen(&text).map_err(serde::de::Error::custom)
}

fn deserialize_listen_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    deserialize_listen(d).map(Some)
}

/// `[storage]`. `Debug` shows the URL without its password (and no password is ever
/// read into this: a PostgreSQL password comes from `password_file` or `PGPASSWORD`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite://PATH` (the default, embedded) or `postgres://USER@HOST/DATABASE`
    /// (`?sslmode=verify-full&sslrootcert=FILE` as for libpq), never with a password.
    #[serde(default = "default_storage_url")]
    pub url: String,
    /// PostgreSQL: a file holding the password (one line; its trailing newline is not
    /// part of it). Unset: the `PGPASSWORD` environment variable or `~/.pgpass`.
    pub password_file: Option<PathBuf>,
    /// PostgreSQL: most connections open at once.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// PostgreSQL: longest wait to connect, or for a free connection.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// PostgreSQL: longest any one statement may run, a wait for a lock included.
    #[serde(
        default = "default_statement_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &crate::text::redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: default_storage_url(),
            password_file: None,
            pool_size: default_pool_size(),
            connect_timeout: default_connect_timeout(),
            statement_timeout: default_statement_timeout(),
        }
    }
}

fn default_storage_url() -> String {
    "sqlite://writ-data/writ.db".to_owned()
}
fn default_pool_size() -> u32 {
    StoreOptions::DEFAULT_POOL_SIZE
}
fn default_connect_timeout() -> Duration {
    StoreOptions::DEFAULT_CONNECT_TIMEOUT
}
fn default_statement_timeout() -> Duration {
    StoreOptions::DEFAULT_STATEMENT_TIMEOUT
}

/// Most connections `[storage] pool_size` may ask for (PostgreSQL's own default
/// `max_connections` is 100, shared by every replica).
const MAX_POOL_SIZE: u32 = 1000;

impl StorageConfig {
    /// The `[storage]` checks of [`Config::validate`].
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: format!("storage.{key}"),
            message,
        };
        let url = self.url.as_str();
        if url.starts_with("sqlite://") {
            if self.password_file.is_some() {
                return Err(invalid(
                    "password_file",
                    "only a postgres:// URL takes a password; remove password_file".into(),
                ));
            }
        } else if postgres::is_postgres_url(url) {
            if postgres::url_has_password(url) {
                return Err(invalid(
                    "url",
                    format!(
                        "{} carries a password: put the password in a file that \
                         [storage] password_file names (or in the PGPASSWORD environment \
                         variable), never in the configuration",
                        crate::text::redact_url(url)
                    ),
                ));
            }
        } else {
            return Err(invalid(
                "url",
                format!(
                    "{} names no supported backend: use sqlite://PATH or \
                     postgres://USER@HOST/DATABASE",
                    crate::text::redact_url(url)
                ),
            ));
        }
        if self
            .password_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Err(invalid("password_file", "must name a file".into()));
        }
        if !(1..=MAX_POOL_SIZE).contains(&self.pool_size) {
            return Err(invalid(
                "pool_size",
                format!("must be between 1 and {MAX_POOL_SIZE}"),
            ));
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("statement_timeout", self.statement_timeout),
        ] {
            if value < Duration::from_secs(1) || value > Duration::from_secs(600) {
                return Err(invalid(key, "must be between 1s and 10m".into()));
            }
        }
        Ok(())
    }

    /// What [`crate::store::open_with`] needs, with the password read from
    /// `password_file` if one is named. The file must not be readable or writable by
    /// every local user.
    pub fn store_options(&self) -> Result<StoreOptions, ConfigError> {
        let password = match &self.password_file {
            Some(file) => Some(read_password_file(file, "[storage] password_file")?),
            None => None,
        };
        Ok(StoreOptions {
            url: self.url.clone(),
            password,
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
        })
    }
}

/// The database password in `file`, which `named_by` names (`[storage] password_file`,
/// or a command's option): its contents without the trailing newline. Refused if every
/// local user may read or write the file, or if it is empty.
pub fn read_password_file(
    file: &Path,
    named_by: &'static str,
) -> Result<Zeroizing<String>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let read_error = |source| ConfigError::PasswordRead {
        path: file.to_owned(),
        named_by,
        source,
    };
    let mode = std::fs::metadata(file)
        .map_err(read_error)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o007 != 0 {
        return Err(ConfigError::PasswordFileOpen {
            path: file.to_owned(),
            named_by,
            mode: format!("{mode:04o}"),
        });
    }
    let text = Zeroizing::new(std::fs::read_to_string(file).map_err(read_error)?);
    let password = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned());
    if password.is_empty() {
        return Err(ConfigError::EmptyPasswordFile {
            path: file.to_owned(),
            named_by,
        });
    }
    Ok(password)
}

/// `[ca]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// File holding the passphrase that encrypts CA private keys at rest.
    pub passphrase_file: Option<PathBuf>,
    /// Certificate lifetime when a request names none (unset: 5m, capped by
    /// `max_cert_ttl`); see [`CaConfig::cert_ttl_default`].
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub default_cert_ttl: Option<Duration>,
    /// Longest certificate any policy may grant.
    #[serde(
        default = "default_max_cert_ttl",
        deserialize_with = "duration::deserialize"
    )]
    pub max_cert_ttl: Duration,
    /// Task lifetime when a request names none (unset: 1h, capped by `max_task_ttl`); see
    /// [`CaConfig::task_ttl_default`].
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub default_task_ttl: Option<Duration>,
    /// Longest task any policy may grant.
    #[serde(
        default = "default_max_task_ttl",
        deserialize_with = "duration::deserialize"
    )]
    pub max_task_ttl: Duration,
    /// How far before issuance a certificate becomes valid, for hosts whose clocks lag.
    #[serde(
        default = "default_clock_skew",
        deserialize_with = "duration::deserialize"
    )]
    pub clock_skew: Duration,
    /// Algorithm of new CA keys (existing keys keep theirs).
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
    /// Shortest time a `next` CA key is published before a rotation may make it sign, so
    /// every host has synced it first (see the README, "Rotating the CA key").
    #[serde(
        default = "default_rotation_min_publish",
        deserialize_with = "duration::deserialize"
    )]
    pub rotation_min_publish: Duration,
    /// Lifetime of a host certificate (`POST /v1/host-certificates`); at most
    /// `max_host_cert_ttl`.
    #[serde(
        default = "default_host_cert_ttl",
        deserialize_with = "duration::deserialize"
    )]
    pub host_cert_ttl: Duration,
    /// Longest host certificate; a retiring host CA key stays trusted at least this long
    /// after it stopped signing.
    #[serde(
        default = "default_max_host_cert_ttl",
        deserialize_with = "duration::deserialize"
    )]
    pub max_host_cert_ttl: Duration,
    /// Host name patterns the `@cert-authority` lines of `GET /v1/ca/known-hosts` name:
    /// the hosts clients trust the host CA for.
    #[serde(default = "default_host_patterns")]
    pub host_patterns: Vec<String>,
}

fn default_host_cert_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 60 * 60)
}
fn default_max_host_cert_ttl() -> Duration {
    Duration::from_secs(30 * 24 * 60 * 60)
}
fn default_host_patterns() -> Vec<String> {
    vec!["*".to_owned()]
}

/// `[ca] key_algorithm`: the algorithm of new CA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum KeyAlgorithm {
    /// Ed25519 (the default).
    #[default]
    #[serde(rename = "ed25519")]
    Ed25519,
    /// ECDSA on NIST P-256, for sites whose policies require it.
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
}

fn default_rotation_min_publish() -> Duration {
    Duration::from_secs(10 * 60)
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            passphrase_file: None,
            default_cert_ttl: None,
            max_cert_ttl: default_max_cert_ttl(),
            default_task_ttl: None,
            max_task_ttl: default_max_task_ttl(),
            clock_skew: default_clock_skew(),
            key_algorithm: KeyAlgorithm::default(),
            rotation_min_publish: default_rotation_min_publish(),
            host_cert_ttl: default_host_cert_ttl(),
            max_host_cert_ttl: default_max_host_cert_ttl(),
            host_patterns: default_host_patterns(),
        }
    }
}

/// Certificate lifetime when neither the request nor `default_cert_ttl` names one.
const BUILT_IN_CERT_TTL: Duration = Duration::from_secs(5 * 60);
/// Task lifetime when neither the request nor `default_task_ttl` names one.
const BUILT_IN_TASK_TTL: Duration = Duration::from_secs(60 * 60);

impl CaConfig {
    /// The certificate lifetime a request without one gets (before a policy's own cap).
    pub fn cert_ttl_default(&self) -> Duration {
        self.default_cert_ttl
            .unwrap_or(BUILT_IN_CERT_TTL.min(self.max_cert_ttl))
    }

    /// The task lifetime a request without one gets (before a policy's own cap).
    pub fn task_ttl_default(&self) -> Duration {
        self.default_task_ttl
            .unwrap_or(BUILT_IN_TASK_TTL.min(self.max_task_ttl))
    }
}

fn default_max_cert_ttl() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_max_task_ttl() -> Duration {
    Duration::from_secs(8 * 60 * 60)
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}

/// A host pattern of a `role = "host"` policy: a host pattern in which `{sub}` and
/// `{claims.NAME}` may stand for a DNS label (filled from the host's token, and checked
/// again once filled: `policy::host_patterns`).
pub fn is_valid_host_template(template: &str) -> bool {
    let mut plain = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        plain.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}').map(|c| c + open) else {
            return false;
        };
        let name = &rest[open + 1..close];
        let known = name == "sub"
            || name
                .strip_prefix("claims.")
                .is_some_and(|path| !path.is_empty() && !path.contains(['{', '}']));
        if !known {
            return false;
        }
        plain.push('x');
        rest = &rest[close + 1..];
    }
    plain.push_str(rest);
    !rest.contains('}') && profile::is_valid_host_pattern(&plain)
}

/// Longest accepted `host_cert_ttl` / `max_host_cert_ttl`: a host certificate is renewed
/// long before; a year-long one is a static key by another name.
const MAX_HOST_CERT_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// Most `[ca] host_patterns` (they share one `@cert-authority` line per key).
const MAX_HOST_PATTERNS: usize = 64;

/// Longest accepted `clock_skew`: more would let certificates predate issuance by a lot.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// `[[issuer]]`: a workload identity provider whose tokens writ accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Name policies refer to.
    pub name: String,
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    /// JWKS over HTTP(S).
    pub jwks_url: Option<String>,
    /// JWKS from a local file.
    pub jwks_file: Option<PathBuf>,
    /// Find the JWKS through `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Accepted `aud` values; a token must carry one of them.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Allowed clock difference for `exp`/`nbf`/`iat`, at most 60 s.
    #[serde(default = "default_leeway", deserialize_with = "duration::deserialize")]
    pub leeway: Duration,
    /// Whether a token may be used more than once (see [`Replay`]).
    #[serde(default)]
    pub replay: Replay,
    /// Longest accepted token lifetime (`exp` minus `iat`, or minus now without `iat`).
    #[serde(
        default = "default_max_token_lifetime",
        deserialize_with = "duration::deserialize"
    )]
    pub max_token_lifetime: Duration,
    /// How often cached keys are refreshed from the issuer.
    #[serde(
        default = "default_jwks_refresh",
        deserialize_with = "duration::deserialize"
    )]
    pub jwks_refresh: Duration,
    /// How long the last good keys keep verifying tokens while the issuer is unreachable.
    #[serde(
        default = "default_jwks_max_stale",
        deserialize_with = "duration::deserialize"
    )]
    pub jwks_max_stale: Duration,
}

/// Replay protection of an issuer's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replay {
    /// Each token (its `jti`, or its hash) opens at most one task or certificate.
    #[default]
    Reject,
    /// Tokens may be reused until they expire (Kubernetes projected tokens and SPIFFE
    /// JWT-SVIDs are handed to a workload once for their whole lifetime).
    Allow,
}

fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_jwks_max_stale() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// Longest accepted token leeway (RFC 8725 practice: keep it small). A consumed token's
/// record lives until `exp` + this, whatever the issuer's configured leeway.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// Longest token lifetime an issuer may be configured to accept.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Algorithms an issuer may be configured with. HMAC and `none` are never accepted.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// What a policy's identities are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Agents get certificates for tasks.
    Agent,
    /// Admins manage tasks of others.
    Admin,
    /// Hosts ask the CA about certificates.
    Host,
}

/// `[[policy]]`: which identities may get which logins, hosts and lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name shown in audit records and errors.
    pub name: String,
    /// The `[[issuer]]` name this policy applies to.
    pub issuer: String,
    /// Glob on the token's `sub`.
    #[serde(default = "star")]
    pub subject: String,
    /// Dotted claim paths → glob values; all must match.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Role of matching identities.
    #[serde(default = "default_role")]
    pub role: Role,
    /// Login patterns, possibly templated (`{sub}`, `{claims.NAME}`).
    #[serde(default)]
    pub logins: Vec<String>,
    /// Host patterns tasks may name.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Longest certificate for this policy (capped by `[ca] max_cert_ttl`).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub max_cert_ttl: Option<Duration>,
    /// Longest task for this policy (capped by `[ca] max_task_ttl`).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub max_task_ttl: Option<Duration>,
    /// Certificate extensions granted (e.g. `permit-pty`).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// `force-command` critical option put in every certificate.
    pub force_command: Option<String>,
    /// `source-address` critical option (CIDR list).
    pub source_address: Option<Vec<String>>,
}

fn star() -> String {
    "*".to_owned()
}
fn default_role() -> Role {
    Role::Agent
}

/// Extensions OpenSSH understands and writ may grant.
pub const KNOWN_EXTENSIONS: &[&str] = &[
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
    "no-touch-required",
];

/// A configuration that could not be read or is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML did not parse or has unknown/mistyped keys.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is not acceptable.
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// No passphrase for the CA keys.
    #[error(
        "no CA passphrase: set [ca] passphrase_file in {path} or the {PASSPHRASE_ENV} environment variable"
    )]
    NoPassphrase { path: PathBuf },
    /// The passphrase file is empty.
    #[error("the CA passphrase file {path} is empty (it is named by [ca] passphrase_file)")]
    EmptyPassphraseFile { path: PathBuf },
    /// The passphrase file could not be read.
    #[error("cannot read CA passphrase file {path}: {source}")]
    PassphraseRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database password file could not be read (`named_by`: the setting or option
    /// that names it).
    #[error("cannot read the database password file {path} ({named_by}): {source}")]
    PasswordRead {
        path: PathBuf,
        named_by: &'static str,
        source: std::io::Error,
    },
    /// The database password file is open to every local user.
    #[error(
        "the database password file {path} ({named_by}) has mode {mode}: \
         every local user may read or change it; chmod 0600 it"
    )]
    PasswordFileOpen {
        path: PathBuf,
        named_by: &'static str,
        mode: String,
    },
    /// The database password file is empty.
    #[error("the database password file {path} is empty (it is named by {named_by})")]
    EmptyPasswordFile {
        path: PathBuf,
        named_by: &'static str,
    },
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate configuration text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Check every value that serde cannot check by type alone.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let server = &self.server;
        if server.tls_cert.is_some() != server.tls_key.is_some() {
            let (key, other) = if server.tls_cert.is_some() {
                ("server.tls_key", "server.tls_cert")
            } else {
                ("server.tls_cert", "server.tls_key")
            };
            return Err(invalid(
                key.into(),
                format!("missing: {other} is set, and TLS needs both tls_cert and tls_key"),
            ));
        }
        if server.tls_client_ca.is_some() && !server.tls_enabled() {
            return Err(invalid(
                "server.tls_client_ca".into(),
                "mutual TLS needs TLS: set tls_cert and tls_key too".into(),
            ));
        }
        for (key, file) in [
            ("server.tls_cert", &server.tls_cert),
            ("server.tls_key", &server.tls_key),
            ("server.tls_client_ca", &server.tls_client_ca),
        ] {
            if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                return Err(invalid(key.into(), "must name a file".into()));
            }
        }
        let listen = server.listen;
        if !listen.ip().is_loopback() && !server.tls_enabled() && !server.allow_plaintext {
            return Err(invalid(
                "server.listen".into(),
                format!(
                    "{listen} is not a loopback address and TLS is off: set tls_cert and \
                     tls_key, or allow_plaintext = true if a TLS-terminating proxy on this \
                     host is the only client"
                ),
            ));
        }
        if let Some(metrics) = self.server.metrics_listen
            && metrics == listen
            && metrics.port() != 0
        {
            return Err(invalid(
                "server.metrics_listen".into(),
                format!(
                    "{metrics} is server.listen itself; name another address, or leave \
                     metrics_listen unset to serve /metrics on server.listen"
                ),
            ));
        }
        self.storage.validate(path)?;
        for (key, value) in [
            ("server.client_timeout", self.server.client_timeout),
            ("server.request_timeout", self.server.request_timeout),
            ("server.shutdown_timeout", self.server.shutdown_timeout),
        ] {
            if value < Duration::from_secs(1) || value > Duration::from_secs(600) {
                return Err(invalid(key.into(), "must be between 1s and 10m".into()));
            }
        }
        let ca = &self.ca;
        if ca.clock_skew > MAX_CLOCK_SKEW {
            return Err(invalid("ca.clock_skew".into(), "must be at most 5m".into()));
        }
        for (key, ttl) in [
            ("ca.max_cert_ttl", ca.max_cert_ttl),
            ("ca.max_task_ttl", ca.max_task_ttl),
        ] {
            if ttl < Duration::from_secs(1) {
                return Err(invalid(key.into(), "must be at least 1s".into()));
            }
        }
        if ca.rotation_min_publish < Duration::from_secs(1) {
            return Err(invalid(
                "ca.rotation_min_publish".into(),
                "must be at least 1s".into(),
            ));
        }
        for (key, ttl) in [
            ("ca.host_cert_ttl", ca.host_cert_ttl),
            ("ca.max_host_cert_ttl", ca.max_host_cert_ttl),
        ] {
            if ttl < Duration::from_secs(60) || ttl > MAX_HOST_CERT_TTL {
                return Err(invalid(key.into(), "must be between 1m and 366d".into()));
            }
        }
        if ca.host_cert_ttl > ca.max_host_cert_ttl {
            return Err(invalid(
                "ca.host_cert_ttl".into(),
                format!(
                    "{} exceeds ca.max_host_cert_ttl ({}): the lifetime must be allowed by the \
                     maximum",
                    duration::format(ca.host_cert_ttl),
                    duration::format(ca.max_host_cert_ttl)
                ),
            ));
        }
        if ca.host_patterns.is_empty() || ca.host_patterns.len() > MAX_HOST_PATTERNS {
            return Err(invalid(
                "ca.host_patterns".into(),
                format!(
                    "list 1 to {MAX_HOST_PATTERNS} host patterns (\"*\" trusts the host CA for every host)"
                ),
            ));
        }
        for (j, pattern) in ca.host_patterns.iter().enumerate() {
            if !profile::is_valid_host_pattern(pattern) {
                return Err(invalid(
                    format!("ca.host_patterns[{j}]"),
                    format!("{pattern:?} is not a host pattern (lowercase DNS characters and '*')"),
                ));
            }
        }
        if ca.max_cert_ttl > ca.max_task_ttl {
            return Err(invalid(
                "ca.max_cert_ttl".into(),
                "must not exceed ca.max_task_ttl (a certificate never outlives its task)".into(),
            ));
        }
        for (key, default, max_key, max) in [
            (
                "ca.default_cert_ttl",
                ca.default_cert_ttl,
                "ca.max_cert_ttl",
                ca.max_cert_ttl,
            ),
            (
                "ca.default_task_ttl",
                ca.default_task_ttl,
                "ca.max_task_ttl",
                ca.max_task_ttl,
            ),
        ] {
            match default {
                Some(d) if d < Duration::from_secs(1) => {
                    return Err(invalid(key.into(), "must be at least 1s".into()));
                }
                Some(d) if d > max => {
                    return Err(invalid(
                        key.into(),
                        format!(
                            "{} exceeds {max_key} ({}): a default must be allowed by the maximum",
                            duration::format(d),
                            duration::format(max)
                        ),
                    ));
                }
                _ => {}
            }
        }

        let mut issuer_names = HashSet::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("issuer[{i}] ({:?}).{field}", issuer.name);
            if issuer.name.is_empty() || !issuer_names.insert(issuer.name.as_str()) {
                return Err(invalid(key("name"), "must be non-empty and unique".into()));
            }
            if issuer.issuer.is_empty() {
                return Err(invalid(key("issuer"), "must be non-empty".into()));
            }
            let sources = usize::from(issuer.jwks_url.is_some())
                + usize::from(issuer.jwks_file.is_some())
                + usize::from(issuer.discovery);
            if sources != 1 {
                return Err(invalid(
                    key("jwks_url"),
                    "set exactly one of jwks_url, jwks_file or discovery = true".into(),
                ));
            }
            if let Some(url) = &issuer.jwks_url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(invalid(key("jwks_url"), "must be an http(s) URL".into()));
            }
            if issuer.audiences.is_empty() || issuer.audiences.iter().any(String::is_empty) {
                return Err(invalid(
                    key("audiences"),
                    "list at least one non-empty audience".into(),
                ));
            }
            if issuer.algorithms.is_empty() {
                return Err(invalid(
                    key("algorithms"),
                    "list at least one algorithm".into(),
                ));
            }
            for alg in &issuer.algorithms {
                if !SUPPORTED_ALGORITHMS.contains(&alg.as_str()) {
                    return Err(invalid(
                        key("algorithms"),
                        format!(
                            "{alg:?} is not accepted (HMAC and none never are); use one of {}",
                            SUPPORTED_ALGORITHMS.join(", ")
                        ),
                    ));
                }
            }
            if issuer.leeway > MAX_LEEWAY {
                return Err(invalid(key("leeway"), "must be at most 60s".into()));
            }
            if issuer.max_token_lifetime < Duration::from_secs(1)
                || issuer.max_token_lifetime > MAX_TOKEN_LIFETIME
            {
                return Err(invalid(
                    key("max_token_lifetime"),
                    "must be between 1s and 24h".into(),
                ));
            }
            if issuer.jwks_refresh < Duration::from_secs(10) {
                return Err(invalid(key("jwks_refresh"), "must be at least 10s".into()));
            }
            if issuer.jwks_max_stale < issuer.jwks_refresh {
                return Err(invalid(
                    key("jwks_max_stale"),
                    "must be at least jwks_refresh".into(),
                ));
            }
        }

        let mut policy_names = HashSet::new();
        for (i, policy) in self.policies.iter().enumerate() {
            let key = |field: &str| format!("policy[{i}] ({:?}).{field}", policy.name);
            if policy.name.is_empty() || !policy_names.insert(policy.name.as_str()) {
                return Err(invalid(key("name"), "must be non-empty and unique".into()));
            }
            if !issuer_names.contains(policy.issuer.as_str()) {
                return Err(invalid(
                    key("issuer"),
                    format!("no [[issuer]] is named {:?}", policy.issuer),
                ));
            }
            for (j, login) in policy.logins.iter().enumerate() {
                if !is_valid_login_pattern(login) {
                    return Err(invalid(
                        format!("{}[{j}]", key("logins")),
                        format!(
                            "{login:?} is not a login pattern (lowercase POSIX login characters, \
                             '*', or a template such as {{sub}} or {{claims.NAME}})"
                        ),
                    ));
                }
            }
            for (j, host) in policy.hosts.iter().enumerate() {
                // A host policy may fill a pattern from the host's token ({claims.NAME}).
                let valid = if policy.role == Role::Host {
                    is_valid_host_template(host)
                } else {
                    profile::is_valid_host_pattern(host)
                };
                if !valid {
                    return Err(invalid(
                        format!("{}[{j}]", key("hosts")),
                        format!(
                            "{host:?} is not a host pattern (lowercase DNS characters and '*'; \
                             in a role = \"host\" policy also {{sub}} or {{claims.NAME}})"
                        ),
                    ));
                }
            }
            for (j, ext) in policy.extensions.iter().enumerate() {
                if !KNOWN_EXTENSIONS.contains(&ext.as_str()) {
                    return Err(invalid(
                        format!("{}[{j}]", key("extensions")),
                        format!("{ext:?} is not one of {}", KNOWN_EXTENSIONS.join(", ")),
                    ));
                }
            }
            if let (Some(cert), Some(task)) = (policy.max_cert_ttl, policy.max_task_ttl)
                && cert > task
            {
                return Err(invalid(
                    key("max_cert_ttl"),
                    format!(
                        "{} exceeds the same policy's max_task_ttl ({}): a certificate never \
                         outlives its task",
                        duration::format(cert),
                        duration::format(task)
                    ),
                ));
            }
            if policy.max_cert_ttl.is_some_and(|t| t > ca.max_cert_ttl) {
                return Err(invalid(
                    key("max_cert_ttl"),
                    "exceeds ca.max_cert_ttl".into(),
                ));
            }
            if policy.max_task_ttl.is_some_and(|t| t > ca.max_task_ttl) {
                return Err(invalid(
                    key("max_task_ttl"),
                    "exceeds ca.max_task_ttl".into(),
                ));
            }
            if policy
                .force_command
                .as_deref()
                .is_some_and(|c| c.is_empty() || c.contains('\0'))
            {
                return Err(invalid(
                    key("force_command"),
                    "must be a non-empty command".into(),
                ));
            }
            if let Some(addresses) = &policy.source_address
                && (addresses.is_empty() || addresses.iter().any(|a| !is_cidr(a)))
            {
                return Err(invalid(
                    key("source_address"),
                    "must list addresses or CIDR blocks such as 10.0.0.0/8".into(),
                ));
            }
        }
        self.audit.validate(path)?;
        self.limits.validate(path)?;
        for (n, proxy) in self.server.trusted_proxies.iter().enumerate() {
            if !is_cidr(proxy) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: format!("server.trusted_proxies[{n}]"),
                    message: format!("{proxy:?} is not an address or CIDR block"),
                });
            }
        }
        Ok(())
    }

    /// The CA passphrase: `passphrase_file` if set, else `WRIT_CA_PASSPHRASE`.
    pub fn ca_passphrase(&self, config_path: &Path) -> Result<Zeroizing<String>, ConfigError> {
        if let Some(file) = &self.ca.passphrase_file {
            let text =
                std::fs::read_to_string(file).map_err(|source| ConfigError::PassphraseRead {
                    path: file.clone(),
                    source,
                })?;
            let text = Zeroizing::new(text);
            let pass = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned());
            if pass.is_empty() {
                return Err(ConfigError::EmptyPassphraseFile { path: file.clone() });
            }
            warn_if_readable_by_others(file);
            return Ok(pass);
        }
        match std::env::var(PASSPHRASE_ENV) {
            Ok(pass) if !pass.is_empty() => Ok(Zeroizing::new(pass)),
            _ => Err(ConfigError::NoPassphrase {
                path: config_path.to_owned(),
            }),
        }
    }
}

/// Warn when a secret file can be read by its group or by every local user.
fn warn_if_readable_by_others(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(file) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            tracing::warn!(
                file = ?file.display().to_string(),
                mode = format!("{mode:04o}"),
                "the CA passphrase file is readable by other users: chmod 0600 it"
            );
        }
    }
}

/// A login pattern in a policy: a template placeholder, or login characters and `*`.
fn is_valid_login_pattern(pattern: &str) -> bool {
    if pattern.is_empty() || pattern.len() > 128 {
        return false;
    }
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return false;
        };
        let name = &rest[open + 1..open + close];
        if !(name == "sub" || name.strip_prefix("claims.").is_some_and(|n| !n.is_empty())) {
            return false;
        }
        if !literal_login_chars(&rest[..open]) {
            return false;
        }
        rest = &rest[open + close + 1..];
    }
    literal_login_chars(rest)
}

fn literal_login_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*".contains(&b))
}

fn is_cidr(text: &str) -> bool {
    let (addr, bits) = match text.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (text, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.is_none_or(|b| b.parse::<u8>().is_ok_and(|n| n <= max))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[ca]
passphrase_file = "/etc/writ/ca.pass"
max_cert_ttl = "10m"

[[issuer]]
name = "k8s"
issuer = "https://kubernetes.default.svc"
jwks_url = "https://example.com/jwks"
audiences = ["writ"]

[[policy]]
name = "ci"
issuer = "k8s"
subject = "system:serviceaccount:ci:*"
claims = { "kubernetes.io.namespace" = "ci" }
logins = ["deploy", "{claims.repository_owner}"]
hosts = ["*.prod.example.com"]
max_cert_ttl = "5m"
extensions = ["permit-pty"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("writ.toml"))
    }

    #[test]
    fn parses_the_spec_example() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(
            config.policies[0].max_cert_ttl,
            Some(Duration::from_secs(300))
        );
        assert_eq!(config.issuers[0].algorithms, default_algorithms());
        assert_eq!(config.server.listen, default_listen());
    }

    /// Durations end up in Unix-time arithmetic (now + max_task_ttl): one that could
    /// overflow it is refused when the file is read, naming the key.
    #[test]
    fn durations_too_long_for_time_arithmetic_are_refused() {
        for (key, value) in [
            ("max_task_ttl", "500000000000y"),
            ("max_task_ttl", "18446744073709551615s"),
            ("default_cert_ttl", "101years"),
        ] {
            let bad = GOOD.replace(
                "max_cert_ttl = \"10m\"",
                &format!("max_cert_ttl = \"10m\"\n{key} = \"{value}\""),
            );
            let err = parse(&bad).expect_err(value).to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn contradictions_are_errors_naming_both_keys() {
        let cases = [
            (
                GOOD.replace(
                    "max_cert_ttl = \"10m\"\n",
                    "max_cert_ttl = \"10m\"\ndefault_cert_ttl = \"20m\"\n",
                ),
                ["ca.default_cert_ttl", "ca.max_cert_ttl"],
            ),
            (
                GOOD.replace(
                    "max_cert_ttl = \"10m\"\n",
                    "max_cert_ttl = \"10m\"\ndefault_task_ttl = \"9h\"\n",
                ),
                ["ca.default_task_ttl", "ca.max_task_ttl"],
            ),
            (
                GOOD.replace(
                    "max_cert_ttl = \"5m\"",
                    "max_cert_ttl = \"5m\"\nmax_task_ttl = \"2m\"",
                ),
                ["max_cert_ttl", "max_task_ttl"],
            ),
        ];
        for (text, keys) in cases {
            let message = parse(&text).expect_err("contradiction").to_string();
            for key in keys {
                assert!(message.contains(key), "{key} not in {message}");
            }
        }
        // An unset default follows a smaller maximum instead of contradicting it.
        let small = parse(
            &GOOD
                .replace("max_cert_ttl = \"10m\"", "max_cert_ttl = \"2m\"")
                .replace("max_cert_ttl = \"5m\"", "max_cert_ttl = \"1m\""),
        )
        .expect("valid");
        assert_eq!(small.ca.cert_ttl_default(), Duration::from_secs(120));
    }

    #[test]
    fn a_storage_password_is_never_shown() {
        let text = format!("[storage]\nurl = \"postgres://writ:hunter2@db/writ\"\n{GOOD}");
        let message = parse(&text).expect_err("a password in the URL").to_string();
        assert!(message.contains("storage.url"), "{message}");
        assert!(message.contains("password_file"), "{message}");
        assert!(message.contains("postgres://writ:***@db/writ"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let mut config = parse(GOOD).expect("valid");
        config.storage.url = "postgres://writ:hunter2@db/writ".into();
        assert!(!format!("{config:?}").contains("hunter2"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let error = runtime
            .block_on(crate::store::open("postgres://writ:hunter2@db/writ"))
            .err()
            .expect("refused before connecting")
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("writ:***@db"), "{error}");
    }

    /// `[storage]`: a PostgreSQL URL without a password and its pool settings are taken;
    /// a password in a query parameter, an unknown scheme, a password file for SQLite and
    /// settings out of range are refused, each naming its key.
    #[test]
    fn storage_settings_are_checked() {
        let with = |storage: &str| format!("[storage]\n{storage}\n{GOOD}");
        let config = parse(&with(
            "url = \"postgres://writ@db.example/writ?sslmode=verify-full\"\n\
             password_file = \"/etc/writ/db.pass\"\npool_size = 20\n\
             connect_timeout = \"3s\"\nstatement_timeout = \"30s\"",
        ))
        .expect("valid");
        assert_eq!(config.storage.pool_size, 20);
        assert_eq!(config.storage.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.storage.statement_timeout, Duration::from_secs(30));
        let defaults = parse(GOOD).expect("valid").storage;
        assert_eq!(
            (
                defaults.pool_size,
                defaults.connect_timeout,
                defaults.statement_timeout
            ),
            (10, Duration::from_secs(5), Duration::from_secs(10))
        );
        for (storage, key, words) in [
            (
                "url = \"postgres://writ@db/writ?password=hunter2\"",
                "storage.url",
                "password_file",
            ),
            (
                "url = \"mysql://writ@db/writ\"",
                "storage.url",
                "no supported backend",
            ),
            (
                "url = \"sqlite://writ.db\"\npassword_file = \"/etc/writ/db.pass\"",
                "storage.password_file",
                "postgres://",
            ),
            (
                "url = \"postgres://writ@db/writ\"\npool_size = 0",
                "storage.pool_size",
                "between",
            ),
            (
                "url = \"postgres://writ@db/writ\"\nstatement_timeout = \"0s\"",
                "storage.statement_timeout",
                "between",
            ),
            (
                "url = \"postgres://writ@db/writ\"\nconnect_timeout = \"1h\"",
                "storage.connect_timeout",
                "between",
            ),
        ] {
            let message = parse(&with(storage)).expect_err(storage).to_string();
            assert!(message.contains(key), "{key} not in {message}");
            assert!(message.contains(words), "{words} not in {message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    /// The password file: read without its trailing newline, refused when every local
    /// user may read it, and never shown by `Debug` of the options it goes into.
    #[test]
    fn the_database_password_comes_from_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("db.pass");
        std::fs::write(&file, "s3cret\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut storage = StorageConfig {
            url: "postgres://writ@db/writ".into(),
            password_file: Some(file.clone()),
            ..StorageConfig::default()
        };
        let options = storage.store_options().expect("options");
        assert_eq!(
            options.password.as_deref().map(String::as_str),
            Some("s3cret")
        );
        assert!(!format!("{options:?}").contains("s3cret"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let message = storage.store_options().expect_err("open file").to_string();
        assert!(message.contains("chmod 0600"), "{message}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&file, "\n").expect("write");
        let message = storage.store_options().expect_err("empty").to_string();
        assert!(message.contains("is empty"), "{message}");
        assert!(message.contains("[storage] password_file"), "{message}");
        storage.password_file = None;
        assert!(storage.store_options().expect("options").password.is_none());
    }

    #[test]
    fn an_empty_passphrase_file_is_named_as_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ca.pass");
        std::fs::write(&file, "\n").expect("write");
        let mut config = parse(GOOD).expect("valid");
        config.ca.passphrase_file = Some(file.clone());
        let message = config
            .ca_passphrase(Path::new("writ.toml"))
            .expect_err("empty")
            .to_string();
        assert!(message.contains("is empty"), "{message}");
        assert!(message.contains(&file.display().to_string()), "{message}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[ca]\nmax_cert_tl = \"5m\"\n")
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("max_cert_tl"), "{err}");
        assert!(err.contains("writ.toml"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let bad = GOOD.replace("\"*.prod.example.com\"", "\"*.PROD,x\"");
        let err = parse(&bad).expect_err("bad host").to_string();
        assert!(err.contains("policy[0] (\"ci\").hosts[0]"), "{err}");
        let bad = GOOD.replace("\"deploy\"", "\"{claims}\"");
        assert!(
            parse(&bad)
                .expect_err("bad login")
                .to_string()
                .contains("logins[0]")
        );
        let bad = GOOD.replace("issuer = \"k8s\"", "issuer = \"nope\"");
        assert!(
            parse(&bad)
                .expect_err("bad issuer")
                .to_string()
                .contains("no [[issuer]]")
        );
        let bad = GOOD.replace("max_cert_ttl = \"5m\"", "max_cert_ttl = \"11m\"");
        assert!(
            parse(&bad)
                .expect_err("ttl")
                .to_string()
                .contains("max_cert_ttl")
        );
        let bad = GOOD.replace(
            "audiences = [\"writ\"]",
            "audiences = [\"writ\"]\nalgorithms = [\"HS256\"]",
        );
        assert!(parse(&bad).expect_err("hmac").to_string().contains("HS256"));
    }

    #[test]
    fn tls_keys_go_together_and_plain_http_stays_on_loopback() {
        let with = |server: &str| parse(&format!("[server]\n{server}\n{GOOD}"));
        for (server, key) in [
            ("tls_cert = \"/c.pem\"", "server.tls_key"),
            ("tls_key = \"/k.pem\"", "server.tls_cert"),
            ("tls_client_ca = \"/ca.pem\"", "server.tls_client_ca"),
            ("tls_cert = \"\"\ntls_key = \"/k.pem\"", "server.tls_cert"),
            ("listen = \"0.0.0.0:8422\"", "server.listen"),
            ("listen = \"[::]:8422\"", "server.listen"),
        ] {
            let message = with(server).expect_err(server).to_string();
            assert!(message.contains(key), "{key} not in {message}");
        }
        let refused = with("listen = \"0.0.0.0:8422\"").expect_err("plain");
        assert!(refused.to_string().contains("allow_plaintext"), "{refused}");
        // TLS, or an explicit allow_plaintext, make any address acceptable.
        let tls = with("listen = \"0.0.0.0:8422\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"")
            .expect("TLS");
        assert!(tls.server.tls_enabled());
        let plain = with("listen = \"0.0.0.0:8422\"\nallow_plaintext = true").expect("allowed");
        assert!(!plain.server.tls_enabled() && plain.server.allow_plaintext);
        // Loopback needs neither.
        assert!(!parse(GOOD).expect("valid").server.tls_enabled());
    }

    #[test]
    fn login_patterns() {
        for ok in [
            "deploy",
            "*",
            "ci-*",
            "{sub}",
            "gh-{claims.repository_owner}",
        ] {
            assert!(is_valid_login_pattern(ok), "{ok}");
        }
        for bad in ["", "Deploy", "a,b", "{x}", "{claims.}", "{sub", "a b"] {
            assert!(!is_valid_login_pattern(bad), "{bad}");
        }
    }
}
