//! `writ bench issue --tls`: a throwaway X.509 authority and a server certificate for
//! `127.0.0.1`, made in process for the bench's own server (`[server] tls_cert`,
//! `tls_key`), and the client side that trusts exactly that authority — the rustls
//! configuration of the load loop ([`super::http::Poster`]) and the ureq agent of set-up
//! and preflight. Its keys live in the bench's temporary directory and die with it; it
//! must never be used to serve anything but a benchmark.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

use super::BenchError;

/// The bench server's certificate files and the authority clients trust.
pub struct BenchTls {
    /// PEM certificate of the server (`tls_cert`).
    pub cert_path: PathBuf,
    /// PEM private key of the server (`tls_key`, mode 0600).
    pub key_path: PathBuf,
    authority: CertificateDer<'static>,
}

fn setup(what: &str) -> impl Fn(rcgen::Error) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

impl BenchTls {
    /// Make an authority and a server certificate for `127.0.0.1` in `dir`.
    pub fn generate(dir: &Path) -> Result<BenchTls, BenchError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(setup("bench TLS authority"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "writ bench authority");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let authority_key = KeyPair::generate().map_err(setup("bench TLS authority key"))?;
        let authority = CertifiedIssuer::self_signed(params, authority_key)
            .map_err(setup("bench TLS authority"))?;

        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .map_err(setup("bench TLS server certificate"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "writ bench server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let server_key = KeyPair::generate().map_err(setup("bench TLS server key"))?;
        let server = params
            .signed_by(&server_key, &authority)
            .map_err(setup("bench TLS server certificate"))?;

        let cert_path = dir.join("tls.crt");
        let key_path = dir.join("tls.key");
        super::issue::write_file(&cert_path, server.pem().as_bytes(), 0o644)?;
        super::issue::write_file(&key_path, server_key.serialize_pem().as_bytes(), 0o600)?;
        Ok(BenchTls {
            cert_path,
            key_path,
            authority: CertificateDer::from(authority.der().to_vec()),
        })
    }

    /// The load loop's rustls configuration: trusts only the bench authority.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, BenchError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.authority.clone())
            .map_err(|e| BenchError::Setup(format!("bench TLS authority: {e}")))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::Setup(format!("TLS client: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A ureq agent (set-up, preflight) that trusts only the bench authority.
    pub fn agent(&self, timeout: Duration) -> ureq::Agent {
        let roots = ureq::tls::RootCerts::new_with_certs(&[ureq::tls::Certificate::from_der(
            self.authority.as_ref(),
        )
        .to_owned()]);
        agent_with(
            timeout,
            ureq::tls::TlsConfig::builder().root_certs(roots).build(),
        )
    }
}

/// A ureq agent for set-up and preflight requests: statuses are answers, not errors.
pub fn agent_with(timeout: Duration, tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_idle_connections_per_host(1)
        .tls_config(tls)
        .build()
        .into()
}
