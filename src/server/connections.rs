//! Accepting and serving HTTP/1.1 connections for the API router, with the limits a
//! network-facing server needs whatever its clients do:
//! - a client must send a request's headers within `client_timeout` (this also closes a
//!   keep-alive connection idle for that long);
//! - with TLS, the handshake runs in the connection's own task and must finish within
//!   `client_timeout`, so a slow or stalled handshake never holds up accepting;
//! - on shutdown the listener closes at once, idle connections close, requests in flight
//!   are answered, and after `shutdown_timeout` whatever is left is dropped, so shutdown
//!   always completes in bounded time.
//!
//! - a request's headers are bounded in count and size (`[limits] max_headers`,
//!   `max_header_bytes`; beyond, 431 in the JSON envelope), at most
//!   `max_concurrent_requests` are served at once (beyond, 503 `overloaded` with
//!   `Retry-After`), and at most `max_connections` are open (beyond, new connections wait
//!   in the listen backlog).
//!
//! A whole request, body included, must be answered within `request_timeout`: that limit
//! is the router's (`api::observe`, which also gives each request its id and counts it),
//! so a 408 is counted and carries an `X-Request-Id` like any other answer.
//!
//! It never looks into requests beyond their headers' size and adding the client address
//! (`ConnectInfo`, [`super::client_address`]) that handlers read; what a request means is
//! the router's business.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::client_address::client_address;
use crate::api::error::ErrorCode;
use crate::api::{ApiError, X_REQUEST_ID};
use crate::cidr::Cidr;

/// Limits of the connection loop (`[server]` `client_timeout`, `request_timeout`,
/// `shutdown_timeout`, `trusted_proxies`; `[limits]` header, request and connection caps).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest wait for a request's headers, and longest idle keep-alive.
    pub client_timeout: Duration,
    /// Longest time to read a request and answer it (applied by the router:
    /// `api::observe`).
    pub request_timeout: Duration,
    /// Longest time shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// Bytes of all header names and values of one request.
    pub max_header_bytes: usize,
    /// Headers of one request.
    pub max_headers: usize,
    /// Requests served at once.
    pub max_concurrent_requests: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<Vec<Cidr>>,
}

/// How much more than `max_header_bytes` (and `max_headers`) hyper itself reads before it
/// gives up with a bare 431: enough that the JSON answer comes from here.
const HEADER_SLACK_BYTES: usize = 8 * 1024;
const HEADER_SLACK_COUNT: usize = 32;

/// How long to pause accepting after `accept` failed (e.g. out of file descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serve `router` on `listener` (over TLS when `tls` is given) until `shutdown` resolves,
/// then drain within the limits.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let requests = Arc::new(Semaphore::new(limits.max_concurrent_requests));
    tokio::pin!(shutdown);
    loop {
        // A free connection slot first: at the cap, new connections wait in the backlog.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let serve = handshake_then_serve(
                        stream,
                        peer,
                        tls.clone(),
                        router.clone(),
                        limits.clone(),
                        Arc::clone(&requests),
                        stop_rx.clone(),
                    );
                    connections.spawn(async move {
                        serve.await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            // Reap finished connections so the set does not grow with history.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "shutdown deadline reached; dropping connections still open"
        );
        connections.shutdown().await;
    } else if open > 0 {
        tracing::info!(connections = open, "open connections finished");
    }
}

/// The TLS handshake, if any, within `client_timeout` (or until shutdown), then HTTP.
async fn handshake_then_serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    requests: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(acceptor) = tls else {
        return serve_connection(stream, peer, router, limits, requests, stop).await;
    };
    let handshake = tokio::time::timeout(limits.client_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                // Scanners and clients without an acceptable certificate are routine.
                tracing::debug!(%error, source_ip = %peer.ip(), "TLS handshake failed");
                return;
            }
            Err(_elapsed) => {
                tracing::debug!(source_ip = %peer.ip(), "TLS handshake timed out");
                return;
            }
        },
        () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => return,
    };
    serve_connection(stream, peer, router, limits, requests, stop).await;
}

async fn serve_connection(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    requests: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let (max_header_bytes, max_headers) = (limits.max_header_bytes, limits.max_headers);
    let client_timeout = limits.client_timeout;
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let client = client_address(peer, request.headers(), &limits.trusted_proxies);
        request.extensions_mut().insert(ConnectInfo(client));
        let router = router.clone();
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let headers_refused = headers_too_large(request.headers(), &limits);
        let admitted = Arc::clone(&requests).try_acquire_owned();
        async move {
            let response = if let Some(refused) = headers_refused {
                refused
            } else if let Ok(_admitted) = admitted {
                match router.oneshot(request.map(axum::body::Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            } else {
                overloaded()
            };
            log_refusal(&response, &method, &uri, client);
            Ok::<Response, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .max_buf_size(
            max_header_bytes
                .saturating_add(HEADER_SLACK_BYTES)
                .max(8192),
        )
        .max_headers(max_headers.saturating_add(HEADER_SLACK_COUNT))
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_connection_end(result),
        () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => {
            connection.as_mut().graceful_shutdown();
            log_connection_end(connection.await);
        }
    }
}

/// One log line per refused request (4xx at info, 5xx at warn) with its error code and
/// request id; the audit record, where there is one, says the rest and carries the same
/// request id.
fn log_refusal(response: &Response, method: &hyper::Method, uri: &hyper::Uri, peer: SocketAddr) {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return;
    }
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .map_or("none", |c| c.0);
    let request_id = response
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    let (status, source_ip, path) = (status.as_u16(), peer.ip(), uri.path());
    if response.status().is_server_error() {
        tracing::warn!(status, code, %method, path, %source_ip, request_id, "request failed");
    } else {
        tracing::info!(status, code, %method, path, %source_ip, request_id, "request refused");
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Timeouts and clients that went away are routine on a network.
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// 431 when a request has more headers, or more header bytes, than `limits` allow.
fn headers_too_large(headers: &hyper::HeaderMap, limits: &Limits) -> Option<Response> {
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() <= limits.max_headers && bytes <= limits.max_header_bytes {
        return None;
    }
    Some(
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} headers of {bytes} bytes; at most {} headers of {} bytes \
                 are accepted",
                headers.len(),
                limits.max_headers,
                limits.max_header_bytes
            ),
        )
        .into_response(),
    )
}

/// 503 when `max_concurrent_requests` are being served already.
fn overloaded() -> Response {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the CA is serving as many requests as it may at once; retry shortly",
        )
    }
    .into_response()
}
