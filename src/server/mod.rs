//! Assembling and running the CA: open the store, load (or create) the keyring, build the
//! verifier, issuer and router, and serve on an already-bound listener until a shutdown
//! future resolves (so tests can bind `127.0.0.1:0`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::api::rate::RateLimits;
use crate::api::{self, AppState};
use crate::authority::KeyringError;
use crate::authority::live::{LiveKeyring, MAINTENANCE_INTERVAL, PassphraseSource};
use crate::authority::rotation::RotationSettings;
use crate::config::{Config, ConfigError};
use crate::identity::Verifier;
use crate::policy::Policies;
use crate::store::{self, StoreError};
use crate::task::Issuer;

pub mod client_address;
pub mod connections;

pub use connections::Limits;

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
    // Read again if `writ admin ca rewrap` changes the passphrase under a running server.
    let source: PassphraseSource = {
        let (config, path) = (config.clone(), config_path.to_owned());
        Box::new(move || config.ca_passphrase(&path).map_err(|e| e.to_string()))
    };
    let settings = RotationSettings::from_config(&config.ca);
    let keyring =
        Arc::new(LiveKeyring::open(store.as_ref(), passphrase, Some(source), settings, now).await?);
    let verifier = Verifier::new(&config.issuers);
    verifier.prefetch().await;
    let policies = Policies::new(config.policies.clone(), config.ca.clone());
    let issuer = Issuer::new(
        Arc::clone(&store),
        Arc::clone(&keyring),
        policies,
        config.ca.clone(),
    )
    .cap_certificates_per_task(config.limits.certificates_per_task);
    tracing::info!(
        ca_fingerprint = keyring.current().signer().fingerprint(),
        issuers = config.issuers.len(),
        policies = config.policies.len(),
        "CA ready"
    );
    // Audit sinks and signed checkpoints, off the request path; they stop with the store.
    crate::audit::service::spawn(&config.audit, &config.storage.url, &store, {
        let keyring = Arc::clone(&keyring);
        Arc::new(move || keyring.current().signer())
    });
    Ok(Arc::new(AppState {
        verifier,
        issuer,
        keyring,
        store,
        dev_jwks,
        revocation_retention: crate::revocation::feed::retention_after_end(config.ca.clock_skew),
        rate: Arc::new(RateLimits::new(&config.limits)),
    }))
}

/// Serve the API on `listener` until `shutdown` resolves; requests in flight are answered
/// within `limits.shutdown_timeout` ([`connections`]).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) {
    let maintenance = tokio::spawn(maintain_keyring(Arc::clone(&state)));
    let summaries = tokio::spawn(record_flood_summaries(Arc::clone(&state)));
    connections::serve(listener, api::router(Arc::clone(&state)), shutdown, limits).await;
    maintenance.abort();
    summaries.abort();
    // What floods left since the last round, now that no request adds to it.
    write_flood_summaries(&state).await;
}

/// Every `[limits] flood_summary_interval`, write the refusals of flooding client
/// addresses as one `token.rejected` summary record each ([`RateLimits`]).
async fn record_flood_summaries(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.rate.summary_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        write_flood_summaries(&state).await;
    }
}

async fn write_flood_summaries(state: &AppState) {
    let summaries = state.rate.take_summaries();
    if summaries.is_empty() {
        return;
    }
    let count = summaries.len();
    if let Err(e) = state
        .store
        .append_audit_entries(summaries, OffsetDateTime::now_utc())
        .await
    {
        tracing::error!(error = %e, summaries = count, "could not record flood summaries");
    }
}

/// Background upkeep of the CA keyring while serving, every [`MAINTENANCE_INTERVAL`]:
/// retire keys whose certificates have all expired, publish a `next` key, rotate when the
/// schedule says so, and pick up changes made by `writ admin` or other replicas.
async fn maintain_keyring(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        state.keyring.maintain(state.store.as_ref(), now).await;
    }
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
