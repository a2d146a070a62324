//! Development mode, like `vault server -dev`: `writ serve --dev` keeps everything under
//! `./writ-data` (SQLite database, a generated CA passphrase, a built-in development token
//! issuer) and uses a permissive policy; `writ dev token --sub NAME` mints a token from that
//! issuer. Never for production: the dev policy grants any login on any host.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64ct::{Base64UrlUnpadded, Encoding};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use rand_core::{OsRng, RngCore};
use serde_json::json;
use zeroize::Zeroizing;

use crate::audit;
use crate::config::{
    CaConfig, Config, IssuerConfig, PolicyConfig, Role, ServerConfig, StorageConfig,
};

/// Default data directory of dev mode.
pub const DEFAULT_DATA_DIR: &str = "writ-data";
/// `iss` of development tokens.
pub const DEV_ISSUER: &str = "writ-dev";
/// `kid` of the development signing key.
const DEV_KID: &str = "writ-dev-1";

/// What can go wrong preparing dev mode or minting a dev token.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The dev key is missing or damaged.
    #[error("no development issuer key in {0}: start `writ serve --dev` in this directory first")]
    NoKey(PathBuf),
    /// Signing failed.
    #[error("could not sign the token: {0}")]
    Sign(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Write a secret file with mode 0600 if it does not exist yet; return its contents.
fn ensure_secret_file(
    path: &Path,
    make: impl FnOnce() -> String,
) -> Result<Zeroizing<String>, DevError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Zeroizing::new(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = Zeroizing::new(make());
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io(path))?;
            file.write_all(value.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io(path))?;
            Ok(value)
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    audit::hex(&buf)
}

fn signing_key(data_dir: &Path) -> Result<ed25519_dalek::SigningKey, DevError> {
    let path = data_dir.join("dev-issuer.key");
    let text = Zeroizing::new(
        std::fs::read_to_string(&path).map_err(|_| DevError::NoKey(data_dir.to_owned()))?,
    );
    let mut seed = Zeroizing::new([0u8; 32]);
    let hex = text.trim().as_bytes();
    if hex.len() != 64 {
        return Err(DevError::NoKey(data_dir.to_owned()));
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = std::str::from_utf8(pair)
            .ok()
            .and_then(|s| u8::from_str_radix(s, 16).ok());
        seed[i] = digit.ok_or_else(|| DevError::NoKey(data_dir.to_owned()))?;
    }
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Prepare `data_dir` for dev mode and return the configuration to serve with and the dev
/// issuer's JWKS document.
pub fn prepare(
    data_dir: &Path,
    listen: std::net::SocketAddr,
) -> Result<(Config, String), DevError> {
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(data_dir))?;
    let passphrase_file = data_dir.join("ca.pass");
    ensure_secret_file(&passphrase_file, || random_hex(32))?;
    ensure_secret_file(&data_dir.join("dev-issuer.key"), || random_hex(32))?;
    let key = signing_key(data_dir)?;
    let jwks = json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": DEV_KID,
        "x": Base64UrlUnpadded::encode_string(key.verifying_key().as_bytes()),
    }]})
    .to_string();
    let jwks_file = data_dir.join("dev-jwks.json");
    std::fs::write(&jwks_file, &jwks).map_err(io(&jwks_file))?;

    let config = Config {
        server: ServerConfig {
            listen,
            ..ServerConfig::default()
        },
        storage: StorageConfig {
            url: format!("sqlite://{}", data_dir.join("writ.db").display()),
            ..StorageConfig::default()
        },
        ca: CaConfig {
            passphrase_file: Some(passphrase_file),
            ..CaConfig::default()
        },
        issuers: vec![IssuerConfig {
            name: "dev".into(),
            issuer: DEV_ISSUER.into(),
            jwks_url: None,
            jwks_file: Some(jwks_file),
            discovery: false,
            audiences: vec!["writ".into()],
            algorithms: vec!["EdDSA".into()],
            leeway: Duration::from_secs(30),
            replay: crate::config::Replay::Reject,
            max_token_lifetime: Duration::from_secs(24 * 60 * 60),
            jwks_refresh: Duration::from_secs(60),
            jwks_max_stale: Duration::from_secs(24 * 60 * 60),
        }],
        policies: vec![PolicyConfig {
            name: "dev-permissive".into(),
            issuer: "dev".into(),
            subject: "*".into(),
            claims: Default::default(),
            role: Role::Agent,
            logins: vec!["*".into()],
            hosts: vec!["*".into()],
            max_cert_ttl: None,
            max_task_ttl: None,
            // A terminal and nothing else, as a sane production policy grants: no
            // forwarding of ports, agents or X11, no ~/.ssh/rc.
            extensions: vec!["permit-pty".into()],
            force_command: None,
            source_address: None,
        }],
        audit: Default::default(),
        limits: Default::default(),
    };
    Ok((config, jwks))
}

/// Mint a development token for `sub`, valid for `ttl`, signed by the dev issuer key in
/// `data_dir`. `now_unix` is the issue time.
pub fn mint_token(
    data_dir: &Path,
    sub: &str,
    aud: &str,
    ttl: Duration,
    now_unix: i64,
) -> Result<String, DevError> {
    let key = signing_key(data_dir)?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| DevError::Sign(e.to_string()))?;
    let encoding = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(DEV_KID.into());
    let exp = now_unix.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(3600));
    let claims = json!({
        "iss": DEV_ISSUER, "sub": sub, "aud": aud,
        "iat": now_unix, "nbf": now_unix, "exp": exp, "jti": random_hex(16),
    });
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(|e| DevError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_policy_grants_a_terminal_and_no_forwarding() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, _jwks) = prepare(
            &dir.path().join("data"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("prepare");
        assert_eq!(config.policies.len(), 1);
        assert_eq!(config.policies[0].extensions, ["permit-pty"]);
        config.validate(Path::new("(dev)")).expect("valid");
    }
}
