//! `writ mcp --http ADDR`: the same tools over MCP's streamable HTTP transport (rmcp's
//! service), for agent hosts that connect to a URL rather than start a process. It owns
//! who may connect and when sessions end: the address must be loopback; every request
//! must carry `Authorization: Bearer KEY`, the key in an owner-only file (made at random
//! when the file does not exist); a request with an `Origin` header (a web page) or a
//! `Host` that is not loopback is refused. Each MCP session has its own tasks and its own
//! ssh-agent; when a session ends (the client's DELETE, or `idle` without a request) its
//! open tasks are completed, and at shutdown (SIGTERM, Ctrl-C) every session's are.
//!
//! It must never serve a non-loopback address, log or answer with the key, or exit before
//! every session's tasks have been completed (or said why not).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Sessions, WritMcp};

/// The path the service answers on.
pub const PATH: &str = "/mcp";

/// Shortest key accepted from a file (characters).
const MIN_KEY_CHARS: usize = 32;

/// How long open streams may take to close at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How `--http` serves.
pub struct HttpOptions {
    /// A loopback address (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// The bearer key clients must send.
    pub key: String,
    /// A session without a request for this long ends, and its tasks are completed.
    pub idle: Duration,
}

/// Refuse a non-loopback address: whoever reaches the port gets SSH access.
pub fn check_listen(listen: &SocketAddr) -> Result<(), String> {
    if listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "--http {listen}: only a loopback address (127.0.0.1:PORT or [::1]:PORT) — whoever \
             reaches this port can open tasks with this agent's identity"
        ))
    }
}

/// The bearer key in `path`: read if the file exists (it must be readable by its owner
/// only and hold at least 32 printable characters), else made at random and written
/// there with mode 0600. The second value says whether it was made now.
pub fn load_or_create_key(path: &Path) -> Result<(String, bool), String> {
    let shown = path.display();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let mut bytes = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
            let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            file.write_all(format!("{key}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write the MCP key file {shown}: {e}"))?;
            Ok((key, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let metadata = std::fs::metadata(path)
                .map_err(|e| format!("cannot read the MCP key file {shown}: {e}"))?;
            let mode = metadata.permissions().mode();
            if !metadata.is_file() || mode & 0o077 != 0 {
                return Err(format!(
                    "the MCP key file {shown} must be a file only its owner can read \
                     (mode {:o}; chmod 600 {shown})",
                    mode & 0o777
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the MCP key file {shown}: {e}"))?;
            let key = text.trim();
            if key.len() < MIN_KEY_CHARS || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "the MCP key file {shown} must hold one key of at least {MIN_KEY_CHARS} \
                     printable characters without spaces (remove it and writ makes one)"
                ));
            }
            Ok((key.to_owned(), false))
        }
        Err(e) => Err(format!("cannot create the MCP key file {shown}: {e}")),
    }
}

/// Serve `template`'s tools at `http://listen/mcp` until SIGTERM or Ctrl-C, then complete
/// every session's tasks. `ready` is called with the bound address once connections are
/// accepted.
pub async fn serve_http(
    template: WritMcp,
    options: HttpOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    check_listen(&options.listen)?;
    let cancel = CancellationToken::new();
    let sessions = Sessions::default();
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(cancel.child_token())
        // No web page may drive it: any request with an Origin header is refused.
        .enforce_origin_validation();
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(options.idle);
    let opening = sessions.clone();
    let service = StreamableHttpService::new(
        move || Ok(opening.open(&template)),
        Arc::new(manager),
        config,
    );
    let key = Arc::new(Sha256::digest(options.key.as_bytes()).to_vec());
    let app = axum::Router::new()
        .nest_service(PATH, service)
        .layer(middleware::from_fn_with_state(key, bearer));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(address = %bound, path = PATH, "mcp: serving over streamable HTTP");
    ready(bound);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let stopping = cancel.clone();
    let stopped = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("mcp: stopping; completing every session's tasks");
        stopping.cancel();
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(stopped);
    let served = server.into_future();
    tokio::pin!(served);
    let result = tokio::select! {
        result = &mut served => result.map_err(|e| e.to_string()),
        // Streams still open after the grace period are cut.
        () = async {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    let failed = sessions.end_all().await;
    result?;
    if failed > 0 {
        return Err(format!("{failed} task(s) could not be completed"));
    }
    Ok(())
}

/// Let a request through only with `Authorization: Bearer KEY` (compared as SHA-256
/// digests, so the comparison says nothing about the key).
async fn bearer(State(key): State<Arc<Vec<u8>>>, request: Request, next: Next) -> Response {
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| Sha256::digest(token.trim().as_bytes()).to_vec());
    if offered.as_deref() == Some(key.as_slice()) {
        return next.run(request).await;
    }
    tracing::warn!(
        with_key = offered.is_some(),
        "mcp: refused a request without the right bearer key"
    );
    let body = serde_json::json!({
        "error": {
            "code": "unauthorized",
            "message": "writ mcp needs Authorization: Bearer <the key in --http-key-file>",
        }
    });
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_served() {
        assert!(check_listen(&"127.0.0.1:0".parse().expect("addr")).is_ok());
        assert!(check_listen(&"[::1]:8765".parse().expect("addr")).is_ok());
        let refused = check_listen(&"0.0.0.0:8765".parse().expect("addr")).expect_err("any");
        assert!(refused.contains("loopback"), "{refused}");
        assert!(check_listen(&"192.0.2.1:8765".parse().expect("addr")).is_err());
    }

    #[test]
    fn a_key_file_is_made_owner_only_and_then_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("mcp.key");
        let (made, created) = load_or_create_key(&path).expect("made");
        assert!(created);
        assert_eq!(made.len(), 64);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (read, created) = load_or_create_key(&path).expect("read");
        assert!(!created);
        assert_eq!(read, made);
    }

    #[test]
    fn a_key_file_others_can_read_or_a_short_key_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("mcp.key");
        std::fs::write(&path, "k".repeat(40)).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let refused = load_or_create_key(&path).expect_err("world-readable");
        assert!(refused.contains("chmod 600"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, "short").expect("write");
        let refused = load_or_create_key(&path).expect_err("short");
        assert!(refused.contains("at least 32"), "{refused}");
        assert!(!refused.contains("short\""), "the key is never shown");
    }
}
