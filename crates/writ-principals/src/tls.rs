//! How `writ-principals` trusts the CA over `https://` (host.toml `ca_bundle`) and, for a
//! CA with mutual TLS, which client certificate it presents (`client_cert`, `client_key`).
//!
//! Without `ca_bundle` the CA's certificate must chain to the system's trust store; with
//! it, to a certificate in that PEM file and nothing else. The files are read each time
//! an HTTP agent is built (once per `sync` round or online call), so a renewed bundle or
//! client certificate is used at once. Plain `http://` (loopback only, [`crate::config`])
//! uses none of this. Never logs key material.

use std::path::{Path, PathBuf};

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::config::HostConfig;

/// A TLS file named by the host configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[error("host config `{key}` ({}): {detail}", path.display())]
pub struct TlsFileError {
    /// The key naming the file (`ca_bundle`, `client_cert`, `client_key`).
    pub key: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub detail: String,
}

/// The TLS settings of every call to the CA, from `config`.
pub fn tls_config(config: &HostConfig) -> Result<TlsConfig, TlsFileError> {
    let roots = match &config.ca_bundle {
        Some(path) => RootCerts::new_with_certs(&certificates("ca_bundle", path)?),
        None => RootCerts::PlatformVerifier,
    };
    let client_cert = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates("client_cert", cert)?;
            let text = read("client_key", key)?;
            let key = PrivateKey::from_pem(&text).map_err(|e| TlsFileError {
                key: "client_key",
                path: key.clone(),
                detail: format!("no PEM private key ({e})"),
            })?;
            Some(ClientCert::new_with_certs(&chain, key))
        }
        // Configuration loading refuses one without the other.
        _ => None,
    };
    Ok(TlsConfig::builder()
        .root_certs(roots)
        .client_cert(client_cert)
        .build())
}

/// Where the CA's certificate must chain to, in words for an error message.
pub fn trust_source(config: &HostConfig) -> String {
    match &config.ca_bundle {
        Some(path) => format!("a certificate in ca_bundle {}", path.display()),
        None => "the system's trust store (set ca_bundle in the host config to the CA's \
                 issuing certificate)"
            .to_owned(),
    }
}

/// The TLS error inside `error`, if it is one: ureq reports handshake failures directly,
/// and failures seen while reading or writing as I/O errors that carry it.
pub fn tls_error(error: &ureq::Error) -> Option<&rustls::Error> {
    match error {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(io) => io.get_ref().and_then(|e| e.downcast_ref()),
        _ => None,
    }
}

/// Whether `error` is the CA's certificate failing verification.
pub fn is_untrusted_certificate(error: &ureq::Error) -> bool {
    matches!(tls_error(error), Some(rustls::Error::InvalidCertificate(_)))
}

/// Whether `error` looks like a CA with mutual TLS turning away a host that presented no
/// client certificate: an alert, or (TLS 1.3, where the server decides after the client's
/// last handshake message) a connection closed under the first request.
pub fn may_need_client_certificate(config: &HostConfig, error: &ureq::Error) -> bool {
    if config.client_cert.is_some() || !config.ca_url.starts_with("https://") {
        return false;
    }
    match tls_error(error) {
        Some(rustls::Error::AlertReceived(alert)) => matches!(
            alert,
            rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::HandshakeFailure
        ),
        Some(_) => false,
        None => matches!(
            error,
            ureq::Error::Io(io) if matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            )
        ),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError {
        key,
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// Every certificate of a PEM file; at least one.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<Certificate<'static>>, TlsFileError> {
    let text = read(key, path)?;
    pem_certificates(&text).map_err(|detail| TlsFileError {
        key,
        path: path.to_owned(),
        detail,
    })
}

/// Every certificate in PEM `text` (other PEM items are skipped); at least one, else why
/// not. Shared with the agent client (`writ::client`).
pub fn pem_certificates(text: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(text) {
        match item {
            Ok(PemItem::Certificate(certificate)) => certificates.push(certificate),
            Ok(_) => {}
            Err(e) => return Err(format!("not a PEM file: {e}")),
        }
    }
    if certificates.is_empty() {
        return Err("no certificate (-----BEGIN CERTIFICATE-----) in the file".into());
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> HostConfig {
        HostConfig::from_toml(text, Path::new("/etc/writ/host.toml")).expect("valid")
    }

    #[test]
    fn unusable_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = dir.path().join("bundle.pem");
        std::fs::write(&not_pem, "no certificates here\n").expect("write");
        let missing = dir.path().join("missing.pem");
        for (text, key, file) in [
            (
                format!("ca_bundle = \"{}\"", not_pem.display()),
                "ca_bundle",
                &not_pem,
            ),
            (
                format!("ca_bundle = \"{}\"", missing.display()),
                "ca_bundle",
                &missing,
            ),
            (
                format!(
                    "client_cert = \"{}\"\nclient_key = \"{}\"",
                    missing.display(),
                    missing.display()
                ),
                "client_cert",
                &missing,
            ),
        ] {
            let config = config(&format!("ca_url = \"https://ca.example.com\"\n{text}\n"));
            let error = tls_config(&config).expect_err(&text);
            assert_eq!(error.key, key);
            assert_eq!(&error.path, file);
            assert!(error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn without_ca_bundle_the_system_trust_store_is_named() {
        let config = config("ca_url = \"https://ca.example.com\"\n");
        assert!(trust_source(&config).contains("system"));
        assert!(matches!(
            tls_config(&config).expect("no files").root_certs(),
            RootCerts::PlatformVerifier
        ));
    }
}
