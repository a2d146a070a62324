//! The agent side (`writ cert`, `writ ssh`): ask the CA for a task-bound certificate,
//! and end the task afterwards with a proof of possession signed by the certificate's
//! own key — so the agent needs exactly one workload token per task.
//!
//! Blocking (ureq) with a hard timeout; never prints or logs the token or private keys.
//! An `https://` CA must present a certificate that chains to the system's trust store or
//! to the `--ca-bundle` given ([`CaClient`]); `http://` is for a CA on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use ssh_key::{HashAlg, PrivateKey};

use crate::task::possession;

pub mod agent;
pub mod config;
pub mod exit;
pub mod known_hosts;
mod session;
mod signals;
pub mod token_source;

pub use agent::AgentChoice;
pub use known_hosts::HostTrust;
pub use session::{
    CERTIFICATE_FILE, HeldCertificate, SSH_FAILED, SshInvocation, hop_config, ssh, ssh_arguments,
};

/// Hard timeout on each call to the CA.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent asks for.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
    /// Logins.
    pub logins: Vec<String>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Task lifetime.
    pub task_ttl: Option<Duration>,
    /// Certificate lifetime.
    pub cert_ttl: Option<Duration>,
    /// Free text.
    pub purpose: String,
}

/// The CA's answer (`POST /v1/certificates`).
#[derive(Debug, Clone, Deserialize)]
pub struct Issued {
    /// Task id.
    pub task_id: String,
    /// Serial.
    pub serial: String,
    /// OpenSSH certificate line.
    pub certificate: String,
    /// Principals.
    pub principals: Vec<String>,
    /// RFC 3339.
    pub valid_before: String,
    /// RFC 3339.
    pub task_expires_at: String,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Transport failure.
    #[error("cannot reach the CA at {url}: {detail}")]
    Unreachable {
        /// URL.
        url: String,
        /// What happened.
        detail: String,
    },
    /// The CA refused, with its error envelope.
    #[error("the CA answered {status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// The answer was not understood.
    #[error("unexpected answer from the CA: {0}")]
    BadAnswer(String),
    /// The ssh destination would be read as an option.
    #[error("refusing ssh destination {0:?}: a host name cannot start with '-'")]
    BadDestination(String),
    /// Signing the proof of possession failed.
    #[error("cannot sign the proof of possession: {0}")]
    Sign(String),
    /// A key or certificate file could not be used.
    #[error("cannot use {path}: {detail}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// Not a task id (refused before anything is sent).
    #[error("{0:?} is not a task id")]
    BadTaskId(String),
    /// The certificate belongs to another task.
    #[error("the certificate {path} is for task {actual}, not {wanted}")]
    WrongTask {
        /// The certificate file.
        path: String,
        /// The task it names.
        actual: String,
        /// The task asked for.
        wanted: String,
    },
    /// A TLS file given on the command line could not be used.
    #[error("cannot use {option} {}: {detail}", path.display())]
    TlsFile {
        /// The option that named it (`--ca-bundle`, …).
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The CA did not accept the proof of possession.
    #[error(
        "the CA refused the certificate as proof of possession ({0}); a certificate stops \
         working when its task ends or it expires: give --token for a fresh workload token"
    )]
    PossessionRefused(String),
    /// ssh refused the host: it showed no host certificate from the CA for that name.
    #[error("{}", known_hosts::refused_host_hint(.0))]
    HostUntrusted(String),
    /// ssh could not be run, or failed on its own (status 255).
    #[error("{0}")]
    Ssh(String),
    /// The ssh-agent that holds the session's key could not be started or used.
    #[error("{0}")]
    Agent(String),
}

/// How the agent trusts an `https://` CA, and how it proves itself when the CA asks for
/// a client certificate (mutual TLS). Ignored for `http://`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM bundle of the CA certificates the CA's TLS certificate must chain to
    /// (`--ca-bundle`, `WRIT_CA_BUNDLE`); `None`: the system's trust store.
    pub ca_bundle: Option<PathBuf>,
    /// PEM client certificate chain (`--client-cert`), for a CA with `tls_client_ca`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (`--client-key`).
    pub client_key: Option<PathBuf>,
}

/// The CA as the agent talks to it: its base URL and an HTTP agent that trusts only what
/// [`TlsOptions`] says.
pub struct CaClient {
    base: String,
    agent: ureq::Agent,
    ca_bundle: Option<PathBuf>,
    client_cert: bool,
}

impl CaClient {
    /// A client for the CA at `ca_url`; the TLS files are read now, so a missing or
    /// malformed one is refused before anything is sent.
    pub fn new(ca_url: &str, tls: &TlsOptions) -> Result<CaClient, ClientError> {
        let roots = match &tls.ca_bundle {
            None => ureq::tls::RootCerts::PlatformVerifier,
            Some(path) => {
                ureq::tls::RootCerts::new_with_certs(&pem_certificates("--ca-bundle", path)?)
            }
        };
        let client_cert = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => {
                let chain = pem_certificates("--client-cert", cert)?;
                let key_error = |detail: String| ClientError::TlsFile {
                    option: "--client-key",
                    path: key.clone(),
                    detail,
                };
                let text = zeroize::Zeroizing::new(
                    std::fs::read(key).map_err(|e| key_error(e.to_string()))?,
                );
                let key = ureq::tls::PrivateKey::from_pem(&text)
                    .map_err(|e| key_error(format!("no PEM private key ({e})")))?;
                Some(ureq::tls::ClientCert::new_with_certs(&chain, key))
            }
            (None, None) => None,
            (Some(cert), None) | (None, Some(cert)) => {
                return Err(ClientError::TlsFile {
                    option: "--client-cert/--client-key",
                    path: cert.clone(),
                    detail: "give both --client-cert and --client-key".into(),
                });
            }
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(roots)
                    .client_cert(client_cert)
                    .build(),
            )
            .build()
            .into();
        Ok(CaClient {
            base: ca_url.trim_end_matches('/').to_owned(),
            agent,
            ca_bundle: tls.ca_bundle.clone(),
            client_cert: tls.client_cert.is_some(),
        })
    }

    /// The CA's base URL (without a trailing slash).
    pub fn url(&self) -> &str {
        &self.base
    }

    fn post(&self, path: &str, authorization: &str, body: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let sent = self
            .agent
            .post(&url)
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .send(body);
        self.answer(&url, sent)
    }

    fn get(&self, path: &str, authorization: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let sent = self
            .agent
            .get(&url)
            .header("authorization", authorization)
            .call();
        self.answer(&url, sent)
    }

    /// GET a public document (no credentials), at most 1 MiB: its body on 2xx, the error
    /// envelope as [`ClientError::Refused`] otherwise (or a bare status when it is not
    /// JSON).
    pub(crate) fn get_public(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| ClientError::Unreachable {
            url: crate::text::redact_url(&url),
            detail: self.explain(&e),
        };
        let mut response = self.agent.get(&url).call().map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_vec()
            .map_err(unreachable)?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Err(refused(status, &value))
    }

    /// The CA's JSON answer to a request sent to `url`: the value on 2xx, the error
    /// envelope as [`ClientError::Refused`] otherwise. The URL in errors is shown without
    /// a password.
    fn answer(
        &self,
        url: &str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, ClientError> {
        let unreachable = |e: ureq::Error| ClientError::Unreachable {
            url: crate::text::redact_url(url),
            detail: self.explain(&e),
        };
        let mut response = sent.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_string()
            .map_err(unreachable)?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(refused(status, &value))
    }

    /// A transport error in words: a CA certificate that is not trusted says where trust
    /// comes from and how to change it.
    fn explain(&self, error: &ureq::Error) -> String {
        let tls = match error {
            ureq::Error::Rustls(e) => Some(e),
            ureq::Error::Io(io) => io.get_ref().and_then(|e| e.downcast_ref()),
            _ => None,
        };
        match tls {
            Some(rustls::Error::InvalidCertificate(_)) => match &self.ca_bundle {
                Some(bundle) => format!(
                    "the CA's TLS certificate is not trusted ({error}): it does not chain to \
                     a certificate in --ca-bundle {}",
                    bundle.display()
                ),
                None => format!(
                    "the CA's TLS certificate is not trusted ({error}): it does not chain to \
                     the system's trust store; give --ca-bundle FILE (or WRIT_CA_BUNDLE) with \
                     the certificate of the CA that issued it"
                ),
            },
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::HandshakeFailure,
            )) => format!(
                "the CA refused the TLS handshake ({error}); if it requires client \
                 certificates (mutual TLS), give --client-cert and --client-key"
            ),
            // With TLS 1.3 a server that refuses the client's certificate (or its absence)
            // does so after the client's last handshake message: the client then often
            // sees its request fail on a closed connection rather than the alert.
            None if self.base.starts_with("https://")
                && !self.client_cert
                && matches!(
                    error,
                    ureq::Error::Io(io) if matches!(
                        io.kind(),
                        std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::UnexpectedEof
                    )
                ) =>
            {
                format!(
                    "the CA closed the connection ({error}); if it requires client \
                     certificates (mutual TLS), give --client-cert and --client-key"
                )
            }
            _ => error.to_string(),
        }
    }
}

/// Every certificate of a PEM file named by `option`; at least one.
fn pem_certificates(
    option: &'static str,
    path: &Path,
) -> Result<Vec<ureq::tls::Certificate<'static>>, ClientError> {
    let error = |detail: String| ClientError::TlsFile {
        option,
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    crate::host::tls::pem_certificates(&text).map_err(error)
}

/// The CA's refusal: `status` and the code and message of its error envelope `value`.
fn refused(status: u16, value: &Value) -> ClientError {
    ClientError::Refused {
        status,
        code: value["error"]["code"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
        message: value["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Open a task and get its first certificate for `public_key` (an OpenSSH line).
pub fn open_task(
    ca: &CaClient,
    token: &str,
    public_key: &str,
    request: &TaskRequest,
) -> Result<Issued, ClientError> {
    let mut task =
        json!({"logins": request.logins, "hosts": request.hosts, "purpose": request.purpose});
    if let Some(ttl) = request.task_ttl {
        task["ttl_seconds"] = ttl.as_secs().into();
    }
    let mut body = json!({"public_key": public_key, "task": task});
    if let Some(ttl) = request.cert_ttl {
        body["ttl_seconds"] = ttl.as_secs().into();
    }
    let value = ca.post(
        "/v1/certificates",
        &format!("Bearer {token}"),
        &body.to_string(),
    )?;
    serde_json::from_value(value).map_err(|e| ClientError::BadAnswer(e.to_string()))
}

/// Complete `task_id`, proving possession of `key`, the private key of `certificate`.
pub fn complete_task(
    ca: &CaClient,
    task_id: &str,
    certificate: &str,
    key: &PrivateKey,
    now_unix: i64,
) -> Result<(), ClientError> {
    let path = format!("/v1/tasks/{task_id}/complete");
    let body = b"{}";
    let header = possession_header(certificate, key, "POST", &path, now_unix, body)?;
    ca.post(&path, &header, std::str::from_utf8(body).unwrap_or("{}"))
        .map(|_| ())
}

/// Another certificate for the open task `task_id`, for the same `key`, the caller proving
/// itself with `credential` (a live certificate of the task and its key, or a fresh
/// workload token of the task's owner); `ttl` as `--ttl` asked (`None`: the CA's
/// default). The CA caps it at the task's expiry.
pub fn renew_certificate(
    ca: &CaClient,
    task_id: &str,
    credential: &Credential<'_>,
    key: &PrivateKey,
    ttl: Option<Duration>,
    now_unix: i64,
) -> Result<Issued, ClientError> {
    let mut body = json!({ "public_key": public_line(key)? });
    if let Some(ttl) = ttl {
        body["ttl_seconds"] = ttl.as_secs().into();
    }
    let body = body.to_string();
    let path = format!("/v1/tasks/{task_id}/certificates");
    let authorization = credential.authorization("POST", &path, now_unix, body.as_bytes())?;
    credential.decode(ca.post(&path, &authorization, &body))
}

/// A fresh ed25519 key, made in memory.
pub fn session_key() -> Result<PrivateKey, ClientError> {
    let mut key = PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| ClientError::Sign(e.to_string()))?;
    key.set_comment("writ-session");
    Ok(key)
}

/// The OpenSSH line of `key`'s public half.
pub fn public_line(key: &PrivateKey) -> Result<String, ClientError> {
    key.public_key()
        .to_openssh()
        .map_err(|e| ClientError::Sign(e.to_string()))
}

/// A directory only its owner can enter (`<tmp>/writ-<random>/`, mode 0700), removed with
/// everything in it when dropped: where private keys and certificates wait for ssh.
pub struct PrivateDir {
    path: std::path::PathBuf,
}

impl PrivateDir {
    /// Create one.
    pub fn new() -> Result<PrivateDir, ClientError> {
        use rand_core::RngCore;
        use std::os::unix::fs::DirBuilderExt;
        let mut suffix = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut suffix);
        let path = std::env::temp_dir().join(format!("writ-{}", crate::audit::hex(&suffix)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| ClientError::Sign(format!("cannot create {}: {e}", path.display())))?;
        Ok(PrivateDir { path })
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The `Authorization` value proving possession of `key`, the private key of the
/// OpenSSH `certificate` line, for `method path` with `body` at `now_unix`.
fn possession_header(
    certificate: &str,
    key: &PrivateKey,
    method: &str,
    path: &str,
    now_unix: i64,
    body: &[u8],
) -> Result<String, ClientError> {
    let message = possession::message(method, path, now_unix, body);
    let signature = key
        .sign(possession::NAMESPACE, HashAlg::Sha512, &message)
        .and_then(|s| s.to_pem(ssh_key::LineEnding::LF))
        .map_err(|e| ClientError::Sign(e.to_string()))?;
    let blob = certificate
        .split_whitespace()
        .nth(1)
        .and_then(|b| <base64ct::Base64 as base64ct::Encoding>::decode_vec(b).ok())
        .ok_or_else(|| {
            ClientError::BadAnswer("certificate is not an OpenSSH certificate line".into())
        })?;
    Ok(possession::header(&blob, now_unix, &signature))
}

/// How an agent authenticates a task call (`writ task show|complete`): a fresh workload
/// token, or a proof of possession signed by the private key of one of the task's live
/// certificates (no token needed, but it stops working once the task has ended).
pub enum Credential<'a> {
    /// A workload token.
    Token(&'a str),
    /// The certificate (OpenSSH line) and its private key.
    Possession {
        /// OpenSSH certificate line.
        certificate: &'a str,
        /// The certified private key.
        key: &'a PrivateKey,
    },
}

/// A task as the CA shows it: the answer of `GET /v1/tasks/{id}` and of completing it.
pub use crate::api::tasks::TaskResponse as TaskStatus;

/// Read a private key file and its certificate for [`Credential::Possession`] on
/// `task_id`: `certificate_path` defaults to `<key>-cert.pub`, where `writ cert` wrote it.
/// Refused here, before anything is sent: a passphrase-protected key (use a token
/// instead), a certificate for another key or for another task.
pub fn load_possession(
    key_path: &std::path::Path,
    certificate_path: Option<&std::path::Path>,
    task_id: &str,
) -> Result<(String, PrivateKey), ClientError> {
    if !crate::profile::is_valid_task_id(task_id) {
        return Err(ClientError::BadTaskId(task_id.chars().take(64).collect()));
    }
    let key_file = key_path
        .to_string_lossy()
        .trim_end_matches(".pub")
        .to_owned();
    let certificate_file = certificate_path.map_or_else(
        || format!("{key_file}-cert.pub"),
        |p| p.to_string_lossy().into_owned(),
    );
    let key_error = |detail: String| ClientError::KeyFile {
        path: key_file.clone(),
        detail,
    };
    let key = PrivateKey::read_openssh_file(std::path::Path::new(&key_file))
        .map_err(|e| key_error(e.to_string()))?;
    if key.is_encrypted() {
        return Err(key_error(
            "the key is passphrase-protected; give --token instead".into(),
        ));
    }
    let certificate = std::fs::read_to_string(&certificate_file)
        .map(|text| text.trim().to_owned())
        .map_err(|e| ClientError::KeyFile {
            path: certificate_file.clone(),
            detail: e.to_string(),
        })?;
    let parsed =
        ssh_key::Certificate::from_openssh(&certificate).map_err(|e| ClientError::KeyFile {
            path: certificate_file.clone(),
            detail: format!("not an OpenSSH certificate ({e})"),
        })?;
    if parsed.public_key() != key.public_key().key_data() {
        return Err(ClientError::KeyFile {
            path: certificate_file,
            detail: format!("it does not certify the key {key_file}"),
        });
    }
    if let Some(actual) = certificate_task(&certificate).filter(|t| t != task_id) {
        return Err(ClientError::WrongTask {
            path: certificate_file,
            actual,
            wanted: task_id.to_owned(),
        });
    }
    Ok((certificate, key))
}

/// The task a writ certificate (OpenSSH line) was issued for.
pub fn certificate_task(certificate: &str) -> Option<String> {
    ssh_key::Certificate::from_openssh(certificate)
        .ok()?
        .extensions()
        .get(crate::profile::EXT_TASK)
        .cloned()
}

/// `writ task show ID`: the task's state, logins, hosts, expiry and certificates.
pub fn task_status(
    ca: &CaClient,
    task_id: &str,
    credential: &Credential<'_>,
    now_unix: i64,
) -> Result<TaskStatus, ClientError> {
    task_call(
        "GET",
        ca,
        &format!("/v1/tasks/{task_id}"),
        task_id,
        credential,
        now_unix,
        "",
    )
}

/// `writ task complete ID`: end the task (its certificates stop working everywhere) and
/// return its final state.
pub fn finish_task(
    ca: &CaClient,
    task_id: &str,
    credential: &Credential<'_>,
    now_unix: i64,
) -> Result<TaskStatus, ClientError> {
    let path = format!("/v1/tasks/{task_id}/complete");
    task_call("POST", ca, &path, task_id, credential, now_unix, "{}")
}

/// A command about to run with a task, for the CA's audit log (`task.run`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunNotice {
    /// The host.
    pub host: String,
    /// The login.
    pub login: String,
    /// The command, cut to the CA's bound by [`RunNotice::new`].
    pub command: String,
    /// Why, if the agent said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

impl RunNotice {
    /// A notice for `command`: a command longer than the CA keeps is cut on a character
    /// boundary and ends with how long it was and its SHA-256, so the record still
    /// identifies it.
    pub fn new(host: &str, login: &str, command: &str, purpose: Option<&str>) -> RunNotice {
        use sha2::Digest;
        let max = crate::task::runs::MAX_COMMAND_BYTES;
        let command = if command.len() <= max {
            command.to_owned()
        } else {
            let digest = sha2::Sha256::digest(command.as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            let tail = format!(" … [cut: {} bytes in all, sha256 {hex}]", command.len());
            let mut end = max.saturating_sub(tail.len());
            while !command.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}{tail}", &command[..end])
        };
        let purpose = purpose
            .map(|p| {
                p.chars()
                    .filter(|c| !c.is_control())
                    .take(crate::task::runs::MAX_PURPOSE_BYTES / 4)
                    .collect::<String>()
            })
            .filter(|p| !p.trim().is_empty());
        RunNotice {
            host: host.to_owned(),
            login: login.to_owned(),
            command,
            purpose,
        }
    }
}

/// Tell the CA `notice` is about to run with `task_id`; `Ok` once its record is durable.
pub fn record_run(
    ca: &CaClient,
    task_id: &str,
    credential: &Credential<'_>,
    notice: &RunNotice,
    now_unix: i64,
) -> Result<(), ClientError> {
    let path = format!("/v1/tasks/{task_id}/runs");
    let body = serde_json::to_string(notice).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    let _: crate::api::tasks::RunRecorded =
        task_call("POST", ca, &path, task_id, credential, now_unix, &body)?;
    Ok(())
}

/// One authenticated task call: `GET` has no body, a `POST` sends `body`.
fn task_call<T: serde::de::DeserializeOwned>(
    method: &str,
    ca: &CaClient,
    path: &str,
    task_id: &str,
    credential: &Credential<'_>,
    now_unix: i64,
    body: &str,
) -> Result<T, ClientError> {
    if !crate::profile::is_valid_task_id(task_id) {
        return Err(ClientError::BadTaskId(task_id.chars().take(64).collect()));
    }
    let authorization = credential.authorization(method, path, now_unix, body.as_bytes())?;
    credential.decode(if method == "GET" {
        ca.get(path, &authorization)
    } else {
        ca.post(path, &authorization, body)
    })
}

impl Credential<'_> {
    /// The `Authorization` value for `method path` with `body` at `now_unix`.
    fn authorization(
        &self,
        method: &str,
        path: &str,
        now_unix: i64,
        body: &[u8],
    ) -> Result<String, ClientError> {
        match self {
            Credential::Token(token) => Ok(format!("Bearer {token}")),
            Credential::Possession { certificate, key } => {
                possession_header(certificate, key, method, path, now_unix, body)
            }
        }
    }

    /// The CA's answer to a call made with this credential, decoded; a refused proof of
    /// possession is [`ClientError::PossessionRefused`].
    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        answer: Result<Value, ClientError>,
    ) -> Result<T, ClientError> {
        let value = match answer {
            Err(ClientError::Refused {
                status: 401,
                message,
                ..
            }) if matches!(self, Credential::Possession { .. }) => {
                return Err(ClientError::PossessionRefused(message));
            }
            other => other?,
        };
        serde_json::from_value(value).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}

/// A task for people: state, owner, logins, hosts, expiry (RFC 3339 and how far away) and
/// each certificate. Text from the CA is escaped ([`crate::text`]) before it reaches a
/// terminal.
pub fn describe_task(task: &TaskStatus, now_unix: i64) -> String {
    use std::fmt::Write as _;
    let safe = |text: &str| {
        let mut out = String::new();
        let _ = crate::text::write_escaped(&mut out, text);
        out
    };
    let when = |rfc3339: &str| {
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
            .map(|t| crate::cli::time_and_distance(t.unix_timestamp(), now_unix))
            .unwrap_or_else(|_| safe(rfc3339))
    };
    let mut out = String::new();
    let _ = writeln!(out, "task      {}", safe(&task.task_id));
    let _ = writeln!(out, "state     {}", safe(&task.state));
    let _ = writeln!(
        out,
        "owner     {} / {}",
        safe(&task.issuer),
        safe(&task.subject)
    );
    let _ = writeln!(out, "policy    {}", safe(&task.policy));
    let _ = writeln!(out, "logins    {}", safe(&task.logins.join(", ")));
    let _ = writeln!(out, "hosts     {}", safe(&task.hosts.join(", ")));
    if !task.purpose.is_empty() {
        let _ = writeln!(out, "purpose   {}", safe(&task.purpose));
    }
    let _ = writeln!(out, "created   {}", when(&task.created_at));
    let _ = writeln!(out, "expires   {}", when(&task.expires_at));
    for c in &task.certificates {
        let _ = writeln!(
            out,
            "cert      {} valid until {}{}",
            safe(&c.serial),
            when(&c.valid_before),
            if c.revoked { " (revoked)" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_command_is_cut_on_a_character_boundary_and_still_identified() {
        let short = RunNotice::new("h", "l", "df -h", Some("why\u{7}"));
        assert_eq!(short.command, "df -h");
        assert_eq!(short.purpose.as_deref(), Some("why"));
        let long = "é".repeat(3000);
        let cut = RunNotice::new("h", "l", &long, None);
        assert!(cut.command.len() <= crate::task::runs::MAX_COMMAND_BYTES);
        assert!(cut.command.starts_with("éé"));
        assert!(cut.command.contains("[cut: 6000 bytes in all, sha256 "));
        assert_eq!(RunNotice::new("h", "l", "x", Some("  ")).purpose, None);
    }

    #[test]
    fn a_password_in_the_ca_url_never_reaches_an_error() {
        // Port 9 (discard) on loopback: nothing listens there, the connection is refused.
        let ca = CaClient::new("http://agent:s3cret@127.0.0.1:9", &TlsOptions::default())
            .expect("no TLS files to read");
        let refused = ca
            .get("/v1/tasks/x", "Bearer t")
            .expect_err("nothing listens on port 9");
        let text = refused.to_string();
        assert!(matches!(refused, ClientError::Unreachable { .. }), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("agent:***@127.0.0.1:9"), "{text}");
    }
}
