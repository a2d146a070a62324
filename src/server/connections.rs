//! Accepting and serving HTTP/1.1 connections for the API router, with the limits a
//! network-facing server needs whatever its clients do:
//! - a client must send a request's headers within `client_timeout` (this also closes a
//!   keep-alive connection idle for that long);
//! - a whole request, body included, must be answered within `request_timeout`, else 408
//!   (a client trickling its body is cut off);
//! - with TLS, the handshake runs in the connection's own task and must finish within
//!   `client_timeout`, so a slow or stalled handshake never holds up accepting;
//! - on shutdown the listener closes at once, idle connections close, requests in flight
//!   are answered, and after `shutdown_timeout` whatever is left is dropped, so shutdown
//!   always completes in bounded time.
//!
//! It never looks into requests beyond adding the peer address (`ConnectInfo`) that
//! handlers read; what a request means is the router's business.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::ApiError;
use crate::api::error::ErrorCode;

/// Time limits of the connection loop (`[server]` `client_timeout`, `request_timeout`,
/// `shutdown_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request's headers, and longest idle keep-alive.
    pub client_timeout: Duration,
    /// Longest time to read a request and answer it.
    pub request_timeout: Duration,
    /// Longest time shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
}

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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(handshake_then_serve(
                        stream,
                        peer,
                        tls.clone(),
                        router.clone(),
                        limits,
                        stop_rx.clone(),
                    ));
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
    mut stop: watch::Receiver<bool>,
) {
    let Some(acceptor) = tls else {
        return serve_connection(stream, peer, router, limits, stop).await;
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
    serve_connection(stream, peer, router, limits, stop).await;
}

async fn serve_connection(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        let (method, uri) = (request.method().clone(), request.uri().clone());
        async move {
            let answer = router.oneshot(request.map(axum::body::Body::new));
            let response = match tokio::time::timeout(limits.request_timeout, answer).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_elapsed) => request_timeout(limits.request_timeout),
            };
            log_refusal(&response, &method, &uri, peer);
            Ok::<Response, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.client_timeout)
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

/// One log line per refused request (4xx at info, 5xx at warn) with its error code; the
/// audit record, where there is one, says the rest.
fn log_refusal(response: &Response, method: &hyper::Method, uri: &hyper::Uri, peer: SocketAddr) {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return;
    }
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .map_or("none", |c| c.0);
    let (status, source_ip, path) = (status.as_u16(), peer.ip(), uri.path());
    if response.status().is_server_error() {
        tracing::warn!(status, code, %method, path, %source_ip, "request failed");
    } else {
        tracing::info!(status, code, %method, path, %source_ip, "request refused");
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Timeouts and clients that went away are routine on a network.
        tracing::debug!(%error, "connection ended with an error");
    }
}

fn request_timeout(limit: Duration) -> Response {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request was not received and answered within {}",
            crate::duration::format(limit)
        ),
    )
    .into_response()
}
