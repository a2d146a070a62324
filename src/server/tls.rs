//! TLS for the CA's listener (`[server] tls_cert`, `tls_key`, `tls_client_ca`): rustls
//! with the ring provider, TLS 1.2 and 1.3 only, HTTP/1.1.
//!
//! It owns loading the certificate chain and key (and the client CA bundle for mutual
//! TLS) from PEM files, and swapping them while serving: on SIGHUP, and when either file
//! changes (polled every [`RELOAD_POLL_INTERVAL`]), the pair is read again and, if it
//! loads and matches, replaces the served one at once. New handshakes get the new
//! certificate; connections already open keep going on theirs. A reload that fails
//! changes nothing and logs an error, so a half-written file or a key that does not match
//! the certificate never takes the CA off the network.
//!
//! It never looks at what flows over a connection, and it never decides who a client is:
//! with mutual TLS a client certificate only has to chain to `tls_client_ca`; identity
//! still comes from the workload token. The handshake itself runs in each connection's
//! task ([`super::connections`]), bounded by `client_timeout`.

use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::config::ServerConfig;

/// How often the certificate and key files are checked for changes. A renewed
/// certificate (certbot, cert-manager, an operator's `cp`) is served within this long
/// without a SIGHUP; checking two files' metadata costs nothing measurable.
pub const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The only application protocol served over TLS.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why TLS could not be set up, or a certificate not be reloaded. Every variant names the
/// configuration key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key} ({}): cannot read: {source}", path.display())]
    Read {
        /// The `[server]` key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("{key} ({}): {message}", path.display())]
    Invalid {
        /// The `[server]` key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The private key is not the key of the certificate.
    #[error(
        "server.tls_key ({}) does not match the certificate in server.tls_cert ({}): it is \
         not that certificate's private key",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the protocol settings (a build without TLS 1.2 or 1.3).
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

/// The certificate served to new handshakes, swapped whole on reload.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl CurrentCertificate {
    fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, certified: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = certified;
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A loaded TLS setup: the acceptor for new connections and the certificate it serves.
pub struct TlsServer {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCertificate>,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    mutual: bool,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Load `[server] tls_cert`, `tls_key` and `tls_client_ca`; `None` when TLS is off.
    /// Every file must exist and parse, and the key must match the certificate.
    pub fn load(server: &ServerConfig) -> Result<Option<TlsServer>, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&server.tls_cert, &server.tls_key) else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_certified_key(cert_file, key_file, &provider)?;
        let current = Arc::new(CurrentCertificate(RwLock::new(Arc::new(certified))));
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Setup)?;
        let builder = match &server.tls_client_ca {
            Some(file) => {
                let roots = load_client_roots(file)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| invalid("server.tls_client_ca", file, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Some(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            provider,
            mutual: server.tls_client_ca.is_some(),
        }))
    }

    /// The acceptor for new connections; it always serves the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Whether clients must present a certificate (`tls_client_ca`).
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// SHA-256 fingerprint of the served leaf certificate, as
    /// `openssl x509 -noout -fingerprint -sha256` prints it (`AB:CD:…`).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current.get())
    }

    /// Read the certificate and key files again and, if they load and match, serve them
    /// to every new handshake. On error the served certificate is unchanged. Returns the
    /// new fingerprint.
    pub fn reload(&self) -> Result<String, TlsError> {
        let certified = load_certified_key(&self.cert_file, &self.key_file, &self.provider)?;
        let fingerprint = fingerprint(&certified);
        self.current.set(Arc::new(certified));
        Ok(fingerprint)
    }

    /// What the certificate and key files look like now (modification time, size,
    /// inode), to notice a change without reading them.
    fn stamp(&self) -> [Option<FileStamp>; 2] {
        [
            FileStamp::of(&self.cert_file),
            FileStamp::of(&self.key_file),
        ]
    }

    fn reload_and_log(&self, trigger: &'static str) {
        match self.reload() {
            Ok(fingerprint) => {
                tracing::info!(trigger, sha256 = %fingerprint, "TLS certificate reloaded");
            }
            Err(error) => tracing::error!(
                trigger,
                %error,
                sha256 = %self.fingerprint(),
                "TLS certificate reload failed; still serving the previous certificate"
            ),
        }
    }
}

/// Metadata that changes when a file is rewritten or replaced (also through a symlink,
/// as Kubernetes swaps mounted secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: (u64, u64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: (meta.dev(), meta.ino()),
        })
    }
}

/// Reload `tls`'s certificate on each SIGHUP from `hangup` and whenever its files change;
/// runs until aborted. Without TLS, a SIGHUP is only logged (there is nothing to reload),
/// so `systemctl reload` never stops a plain-HTTP CA.
pub(crate) async fn reload_on_change(
    tls: Option<Arc<TlsServer>>,
    mut hangup: Option<tokio::signal::unix::Signal>,
) {
    let mut poll = tokio::time::interval(RELOAD_POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = tls.as_ref().map(|t| t.stamp());
    loop {
        let hangup_received = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = hangup_received => {
                if received.is_none() {
                    hangup = None;
                    continue;
                }
                match &tls {
                    Some(tls) => {
                        seen = Some(tls.stamp());
                        tls.reload_and_log("SIGHUP");
                    }
                    None => tracing::info!("SIGHUP: no TLS certificate to reload"),
                }
            }
            _ = poll.tick(), if tls.is_some() => {
                if let Some(tls) = &tls {
                    let now = tls.stamp();
                    if seen.as_ref() != Some(&now) {
                        seen = Some(now);
                        tls.reload_and_log("file change");
                    }
                }
            }
        }
    }
}

fn invalid(key: &'static str, path: &Path, message: String) -> TlsError {
    TlsError::Invalid {
        key,
        path: path.to_owned(),
        message,
    }
}

fn read(key: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| TlsError::Read {
            key,
            path: path.to_owned(),
            source,
        })
}

/// Every certificate in a PEM file, in order; at least one.
fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(key, path)?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, path, format!("not a PEM file: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(
            key,
            path,
            "no certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        ));
    }
    Ok(certificates)
}

/// The certificate chain and its private key, checked to belong together.
fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates("server.tls_cert", cert_file)?;
    let key_text = read("server.tls_key", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
        let message = match e {
            pem::Error::NoItemsFound => {
                "no private key (PKCS#8 \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \
                 \"EC PRIVATE KEY\") in the file"
                    .to_owned()
            }
            other => format!("not a PEM private key: {other}"),
        };
        invalid("server.tls_key", key_file, message)
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid("server.tls_key", key_file, format!("unusable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // ring exposes the public key of every key type it loads; "unknown" cannot happen,
        // and would leave the mismatch to the first handshake rather than refuse a key.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
            })
        }
        Err(e) => Err(invalid(
            "server.tls_cert",
            cert_file,
            format!("the first certificate is not usable: {e}"),
        )),
    }
}

/// The CA certificates client certificates must chain to.
fn load_client_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    const KEY: &str = "server.tls_client_ca";
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(KEY, path)? {
        roots
            .add(certificate)
            .map_err(|e| invalid(KEY, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn fingerprint(certified: &CertifiedKey) -> String {
    let leaf = certified.cert.first().map_or(&[][..], |c| c.as_ref());
    let mut text = String::with_capacity(95);
    for (i, byte) in Sha256::digest(leaf).iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02X}");
    }
    text
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, PKCS_RSA_SHA256};

    use super::*;

    /// A self-signed certificate for `localhost` over `key` (PEM).
    fn certificate_for(key: &KeyPair) -> String {
        CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(key)
            .expect("sign")
            .pem()
    }

    fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> ServerConfig {
        ServerConfig {
            tls_cert: Some(cert.to_owned()),
            tls_key: Some(key.to_owned()),
            tls_client_ca: client_ca.map(Path::to_owned),
            ..ServerConfig::default()
        }
    }

    fn load(cert: &Path, key: &Path) -> Result<TlsServer, TlsError> {
        TlsServer::load(&server_config(cert, key, None)).map(|t| t.expect("TLS on"))
    }

    #[test]
    fn tls_is_off_without_a_certificate() {
        assert!(
            TlsServer::load(&ServerConfig::default())
                .expect("no files to read")
                .is_none()
        );
    }

    /// PKCS#8 (what rcgen and `openssl genpkey` write), SEC1 `EC PRIVATE KEY` and PKCS#1
    /// `RSA PRIVATE KEY` (what `openssl ecparam`/`genrsa` and many CAs hand out) all load.
    #[test]
    fn pkcs8_sec1_and_rsa_keys_load() {
        use p256::pkcs8::EncodePrivateKey as _;
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));

        let pkcs8 = KeyPair::generate().expect("key");
        std::fs::write(&cert, certificate_for(&pkcs8)).expect("write");
        std::fs::write(&key, pkcs8.serialize_pem()).expect("write");
        load(&cert, &key).expect("PKCS#8");

        let ec = p256::SecretKey::random(&mut rand_core::OsRng);
        let signer = KeyPair::from_pem(&ec.to_pkcs8_pem(Default::default()).expect("pkcs8"))
            .expect("rcgen key");
        std::fs::write(&cert, certificate_for(&signer)).expect("write");
        std::fs::write(&key, ec.to_sec1_pem(Default::default()).expect("sec1")).expect("write");
        load(&cert, &key).expect("SEC1");

        let rsa = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa key");
        let signer = KeyPair::from_pkcs8_pem_and_sign_algo(
            &rsa.to_pkcs8_pem(Default::default()).expect("pkcs8"),
            &PKCS_RSA_SHA256,
        )
        .expect("rcgen key");
        std::fs::write(&cert, certificate_for(&signer)).expect("write");
        std::fs::write(&key, rsa.to_pkcs1_pem(Default::default()).expect("pkcs1")).expect("write");
        load(&cert, &key).expect("PKCS#1");
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_pair = KeyPair::generate().expect("key");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, certificate_for(&key_pair)).expect("write");
        std::fs::write(&key, key_pair.serialize_pem()).expect("write");
        let other = dir.path().join("other.pem");
        std::fs::write(&other, KeyPair::generate().expect("key").serialize_pem()).expect("write");
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM at all\n").expect("write");

        let cases: [(&Path, &Path, Option<&Path>, &[&str]); 6] = [
            (&missing, &key, None, &["server.tls_cert", "cannot read"]),
            (&garbage, &key, None, &["server.tls_cert", "no certificate"]),
            (&cert, &missing, None, &["server.tls_key", "cannot read"]),
            (&cert, &cert, None, &["server.tls_key", "no private key"]),
            (&cert, &other, None, &["server.tls_key", "does not match"]),
            (
                &cert,
                &key,
                Some(&garbage),
                &["server.tls_client_ca", "no certificate"],
            ),
        ];
        for (cert, key, client_ca, expected) in cases {
            let message = TlsServer::load(&server_config(cert, key, client_ca))
                .err()
                .unwrap_or_else(|| panic!("{cert:?} {key:?} {client_ca:?} loaded"))
                .to_string();
            for part in expected {
                assert!(message.contains(part), "{part:?} not in {message}");
            }
            let named = [Some(cert), Some(key), client_ca];
            assert!(
                named
                    .into_iter()
                    .flatten()
                    .any(|p| message.contains(&p.display().to_string())),
                "no file named in {message}"
            );
        }
        // A CA bundle that holds certificates loads (mutual TLS on).
        let tls = TlsServer::load(&server_config(&cert, &key, Some(&cert)))
            .expect("loads")
            .expect("TLS on");
        assert!(tls.is_mutual());
    }

    #[test]
    fn a_reload_that_fails_keeps_the_served_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let first = KeyPair::generate().expect("key");
        std::fs::write(&cert, certificate_for(&first)).expect("write");
        std::fs::write(&key, first.serialize_pem()).expect("write");
        let tls = load(&cert, &key).expect("loads");
        let served = tls.fingerprint();
        assert_eq!(served.len(), 95, "{served}");
        let before = tls.stamp();

        // Half-way through a renewal: the new certificate, the old key.
        let second = KeyPair::generate().expect("key");
        std::fs::write(&cert, certificate_for(&second)).expect("write");
        assert_ne!(tls.stamp(), before, "a rewritten file is noticed");
        let failed = tls.reload().expect_err("mismatch");
        assert!(matches!(failed, TlsError::Mismatch { .. }), "{failed}");
        assert_eq!(tls.fingerprint(), served);

        std::fs::write(&key, second.serialize_pem()).expect("write");
        let reloaded = tls.reload().expect("reloads");
        assert_ne!(reloaded, served);
        assert_eq!(tls.fingerprint(), reloaded);
    }
}
