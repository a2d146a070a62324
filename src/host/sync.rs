//! `writ-principals sync`: fetch the CA's trust bundle (`GET /v1/ca/trusted-keys`) and
//! install it as `state_dir/trusted_user_ca_keys`, the file both sshd
//! (`TrustedUserCAKeys`) and [`crate::host::check`] read.
//!
//! The bundle is validated completely before anything is written, and it is written
//! atomically (temporary file in the same directory, fsync, rename, fsync of the
//! directory), so a failed or partial sync leaves the previous file untouched and readers
//! never see a half-written one. Every network call is blocking and bounded by the host
//! config's `timeout`, from DNS lookup to the last body byte.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ssh_key::PublicKey;

use crate::host::config::{HostConfig, TRUSTED_KEYS_FILE};

/// Path of the trust bundle below `ca_url`.
pub const TRUSTED_KEYS_PATH: &str = "/v1/ca/trusted-keys";
/// Largest accepted trust bundle. A bundle holds a handful of keys; a CA answering with
/// more than this is broken or hostile.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// What a successful sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Number of CA public keys written to the trusted-keys file.
    pub trusted_keys: usize,
    /// The trusted-keys file that was replaced.
    pub trusted_keys_path: PathBuf,
}

/// Why a sync failed. In every case the files in `state_dir` are unchanged.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The CA could not be reached, or did not answer in time.
    #[error("cannot fetch {url}: {source}")]
    Request {
        /// The URL requested.
        url: String,
        /// ureq's error (connection, TLS, timeout, …).
        source: Box<ureq::Error>,
    },
    /// The CA answered with a status other than 200.
    #[error("{url} answered HTTP {status}, expected 200")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The CA answered with something other than `text/plain`.
    #[error("{url} answered with content type {content_type:?}, expected \"text/plain\"")]
    NotText {
        /// The URL requested.
        url: String,
        /// The response's media type, if any.
        content_type: Option<String>,
    },
    /// The body could not be read: too large, not UTF-8, or the connection failed.
    #[error("cannot read the body of {url}: {source}")]
    Body {
        /// The URL requested.
        url: String,
        /// ureq's error.
        source: Box<ureq::Error>,
    },
    /// A line of the bundle is not an OpenSSH public key.
    #[error("line {line} of {url} is not an OpenSSH public key: {message}")]
    InvalidKey {
        /// The URL requested.
        url: String,
        /// 1-based line number.
        line: usize,
        /// The parser's complaint.
        message: String,
    },
    /// The bundle lists no keys; installing it would lock every writ user out.
    #[error("{url} lists no trusted keys")]
    Empty {
        /// The URL requested.
        url: String,
    },
    /// The trusted-keys file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
}

/// Fetch the trust bundle from the CA and install it as the host's trusted-keys file.
pub fn sync(config: &HostConfig) -> Result<SyncReport, SyncError> {
    let url = format!("{}{TRUSTED_KEYS_PATH}", config.ca_base_url());
    let body = fetch_text(config, &url)?;
    let lines = parse_bundle(&body, &url)?;
    let mut contents = String::new();
    for line in &lines {
        contents.push_str(line);
        contents.push('\n');
    }
    let path = config.trusted_keys_path();
    write_atomically(&config.state_dir, TRUSTED_KEYS_FILE, contents.as_bytes())
        .map_err(|(path, source)| SyncError::Write { path, source })?;
    Ok(SyncReport {
        trusted_keys: lines.len(),
        trusted_keys_path: path,
    })
}

/// GET `url`, requiring 200 and `text/plain`, reading at most [`MAX_BODY_BYTES`].
fn fetch_text(config: &HostConfig, url: &str) -> Result<String, SyncError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("writ-principals/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| SyncError::Request {
        url: url.to_owned(),
        source: Box::new(e),
    })?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(SyncError::Status {
            url: url.to_owned(),
            status,
        });
    }
    let mime = response.body().mime_type().map(str::to_ascii_lowercase);
    if mime.as_deref() != Some("text/plain") {
        return Err(SyncError::NotText {
            url: url.to_owned(),
            content_type: mime,
        });
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_string()
        .map_err(|e| SyncError::Body {
            url: url.to_owned(),
            source: Box::new(e),
        })
}

/// Every non-empty line must be an OpenSSH public key, and there must be at least one.
/// Returns the key lines, trimmed, in order.
fn parse_bundle<'a>(body: &'a str, url: &str) -> Result<Vec<&'a str>, SyncError> {
    let mut keys = Vec::new();
    for (index, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        PublicKey::from_openssh(line).map_err(|e| SyncError::InvalidKey {
            url: url.to_owned(),
            line: index + 1,
            message: e.to_string(),
        })?;
        keys.push(line);
    }
    if keys.is_empty() {
        return Err(SyncError::Empty {
            url: url.to_owned(),
        });
    }
    Ok(keys)
}

/// Replace `dir/name` with `contents` (mode 0644) so that readers see either the old or
/// the new file, never a mix; creates `dir` (mode 0755) if missing. On error, returns the
/// path involved; the old file is left as it was.
fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), (PathBuf, io::Error)> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| (dir.to_owned(), e))?;
    let target = dir.join(name);
    // The process id keeps two concurrent syncs from writing into the same file.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(contents)?;
        // The mode given to open is reduced by the umask; set it exactly.
        file.set_permissions(Permissions::from_mode(0o644))?;
        file.sync_all()
    })();
    if let Err(e) = written {
        // Best effort: the temporary file is ours and useless now.
        let _ = fs::remove_file(&tmp);
        return Err((tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, &target) {
        let _ = fs::remove_file(&tmp);
        return Err((target, e));
    }
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (dir.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::thread;
    use std::time::{Duration, Instant};

    use rand_core::OsRng;
    use ssh_key::{Algorithm, PrivateKey};

    use super::*;
    use crate::host::config::Mode;

    fn public_key_line() -> String {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .expect("generate key")
            .public_key()
            .to_openssh()
            .expect("openssh")
    }

    /// Serve one HTTP response on 127.0.0.1 and return the base URL.
    fn serve_once(status: &'static str, content_type: &'static str, body: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            // Read the request head.
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let mut stream = reader.into_inner();
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        });
        format!("http://{addr}")
    }

    fn config(ca_url: String, state_dir: &Path) -> HostConfig {
        HostConfig {
            ca_url,
            host_name: Some("web-01".to_owned()),
            state_dir: state_dir.to_owned(),
            mode: Mode::Offline,
            max_staleness: Duration::from_secs(120),
            token_file: None,
            timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn writes_every_key_atomically_with_mode_0644() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let (a, b) = (public_key_line(), public_key_line());
        let url = serve_once(
            "200 OK",
            "text/plain; charset=utf-8",
            format!("{a}\n\n{b}\n"),
        );
        let report = sync(&config(url, &state)).expect("sync");
        assert_eq!(report.trusted_keys, 2);
        assert_eq!(report.trusted_keys_path, state.join("trusted_user_ca_keys"));
        let written = fs::read_to_string(&report.trusted_keys_path).expect("read");
        assert_eq!(written, format!("{a}\n{b}\n"));
        let mode = fs::metadata(&report.trusted_keys_path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&state)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("trusted_user_ca_keys")]
        );
    }

    #[test]
    fn bad_bundles_leave_the_file_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trusted_user_ca_keys");
        fs::write(&path, "previous\n").expect("write");
        let good = public_key_line();
        let cases = [
            (
                "200 OK",
                "text/plain",
                format!("{good}\nnot a key\n"),
                "not an OpenSSH",
            ),
            ("200 OK", "text/plain", "\n\n".to_owned(), "no trusted keys"),
            (
                "200 OK",
                "application/json",
                format!("{good}\n"),
                "content type",
            ),
            (
                "503 Service Unavailable",
                "text/plain",
                format!("{good}\n"),
                "HTTP 503",
            ),
            ("302 Found", "text/plain", format!("{good}\n"), "HTTP 302"),
        ];
        for (status, content_type, body, expected) in cases {
            let url = serve_once(status, content_type, body);
            let error = sync(&config(url, dir.path()))
                .expect_err(expected)
                .to_string();
            assert!(error.contains(expected), "{expected}: {error}");
            assert_eq!(fs::read_to_string(&path).expect("read"), "previous\n");
        }
    }

    #[test]
    fn oversized_body_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let line = public_key_line();
        let body = format!("{line}\n").repeat((MAX_BODY_BYTES as usize) / line.len() + 2);
        let url = serve_once("200 OK", "text/plain", body);
        let error = sync(&config(url, dir.path())).expect_err("too large");
        assert!(matches!(error, SyncError::Body { .. }), "{error}");
        assert!(!dir.path().join("trusted_user_ca_keys").exists());
    }

    #[test]
    fn a_silent_ca_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The kernel completes the handshake into the backlog; nobody ever answers.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let mut config = config(url, dir.path());
        config.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let error = sync(&config).expect_err("timeout");
        assert!(matches!(error, SyncError::Request { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
    }
}
