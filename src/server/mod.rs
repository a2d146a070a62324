//! Assembling and running the CA: open the store, load (or create) the keyring, build the
//! verifier, issuer and router, and serve on an already-bound listener until a shutdown
//! future resolves (so tests can bind `127.0.0.1:0`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::authority::KeyringError;
use crate::authority::live::{LiveKeyring, MAINTENANCE_INTERVAL, PassphraseSource};
use crate::authority::rotation::RotationSettings;
use crate::config::{Config, ConfigError};
use crate::identity::Verifier;
use crate::policy::Policies;
use crate::store::{self, StoreError};
use crate::task::Issuer;

pub mod connections;
pub mod tls;

pub use connections::Limits;
pub use tls::{TlsError, TlsServer};

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
    /// TLS files missing, unreadable or not matching.
    #[error(transparent)]
    Tls(#[from] TlsError),
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
    );
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
    }))
}

/// What [`serve`] listens with: a bound TCP listener, TLS or not, and — for the real
/// server ([`bind`]) — the SIGHUP stream that reloads the TLS certificate. A bare
/// [`TcpListener`] converts into a plain-HTTP one.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<TlsServer>>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Listener {
    /// Serve TLS on `tcp` (no SIGHUP handling: the certificate is still reloaded when its
    /// files change).
    pub fn tls(tcp: TcpListener, tls: TlsServer) -> Listener {
        Listener {
            tcp,
            tls: Some(Arc::new(tls)),
            hangup: None,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Listener {
        Listener {
            tcp,
            tls: None,
            hangup: None,
        }
    }
}

/// Serve the API on `listener` until `shutdown` resolves; requests in flight are answered
/// within `limits.shutdown_timeout` ([`connections`]).
pub async fn serve(
    listener: impl Into<Listener>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) {
    let Listener { tcp, tls, hangup } = listener.into();
    let maintenance = tokio::spawn(maintain_keyring(Arc::clone(&state)));
    let reloading = tokio::spawn(tls::reload_on_change(tls.clone(), hangup));
    let acceptor = tls.as_ref().map(|t| t.acceptor());
    connections::serve(tcp, acceptor, api::router(state), shutdown, limits).await;
    maintenance.abort();
    reloading.abort();
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

/// Load the TLS certificate (if configured), bind the configured address and take over
/// SIGHUP (it reloads the certificate from then on). Plain HTTP on a non-loopback address
/// (`allow_plaintext = true`) is logged as a warning.
pub async fn bind(config: &Config) -> Result<Listener, StartError> {
    let server = &config.server;
    let tls = TlsServer::load(server)?;
    let addr = server.listen;
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    match &tls {
        Some(tls) => tracing::info!(
            sha256 = %tls.fingerprint(),
            mutual_tls = tls.is_mutual(),
            "TLS certificate loaded"
        ),
        None if !addr.ip().is_loopback() => tracing::warn!(
            %addr,
            "serving plain HTTP on a non-loopback address (allow_plaintext = true): tokens \
             and certificates travel unencrypted unless a TLS-terminating proxy on this host \
             is the only client"
        ),
        None => {}
    }
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|error| tracing::warn!(%error, "cannot handle SIGHUP"))
        .ok();
    Ok(Listener {
        tcp,
        tls: tls.map(Arc::new),
        hangup,
    })
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
