//! Assembling and running the CA: open the store, load (or create) the keyring, build the
//! verifier, issuer and router, and serve on an already-bound listener until a shutdown
//! future resolves (so tests can bind `127.0.0.1:0`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rand_core::OsRng;
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::authority::{Keyring, KeyringError};
use crate::config::{Config, ConfigError};
use crate::identity::Verifier;
use crate::policy::Policies;
use crate::store::{self, StoreError};
use crate::task::Issuer;

/// Why the CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Storage problem.
    #[error("cannot open storage: {0}")]
    Store(#[from] StoreError),
    /// Keyring problem (e.g. wrong passphrase).
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// Could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Build the application state from a validated configuration.
pub async fn build(
    config: &Config,
    config_path: &Path,
    dev_jwks: Option<String>,
) -> Result<Arc<AppState>, StartError> {
    let passphrase = config.ca_passphrase(config_path)?;
    let store = store::open(&config.storage.url).await?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let keyring =
        Arc::new(Keyring::load_or_init(store.as_ref(), &passphrase, now, &mut OsRng).await?);
    drop(passphrase);
    let verifier = Verifier::new(&config.issuers);
    verifier.prefetch().await;
    let policies = Policies::new(config.policies.clone(), config.ca.clone());
    let issuer = Issuer::new(
        Arc::clone(&store),
        Arc::clone(&keyring),
        policies,
        config.ca.clone(),
    );
    tracing::info!(
        ca_fingerprint = keyring.signer().fingerprint(),
        issuers = config.issuers.len(),
        policies = config.policies.len(),
        "CA ready"
    );
    Ok(Arc::new(AppState {
        verifier,
        issuer,
        keyring,
        store,
        dev_jwks,
    }))
}

/// Serve the API on `listener` until `shutdown` resolves; in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Bind the configured address.
pub async fn bind(config: &Config) -> Result<TcpListener, StartError> {
    let addr = config.server.listen;
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
