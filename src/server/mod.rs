//! Assembling and running the CA: make the metrics registry, open the store, load (or
//! create) the keyring, build the verifier, issuer and router, and serve on already-bound
//! listeners ([`Listeners`]: the API's, and `metrics_listen`'s if configured) until a
//! shutdown future resolves (so tests can bind `127.0.0.1:0`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::api::rate::RateLimits;
use crate::api::{self, AppState, MetricsRoute};
use crate::authority::KeyringError;
use crate::authority::live::{LiveKeyring, MAINTENANCE_INTERVAL, PassphraseSource};
use crate::authority::rotation::RotationSettings;
use crate::config::{Config, ConfigError, SinkConfig};
use crate::identity::Verifier;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::store::{self, KeyKind, StoreError};
use crate::task::Issuer;
use crate::task::host_certificates::HostIssuer;
use leader::Leadership;
use zeroize::Zeroizing;

pub mod client_address;
pub mod connections;
pub mod leader;
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
    let metrics = Arc::new(Metrics::new());
    let store =
        store::open_with(&config.storage.store_options()?, Some(Arc::clone(&metrics))).await?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // Read again if `writ admin ca rewrap` changes the passphrase under a running server.
    let source: PassphraseSource = {
        let (config, path) = (config.clone(), config_path.to_owned());
        Box::new(move || config.ca_passphrase(&path).map_err(|e| e.to_string()))
    };
    let host_passphrase = Zeroizing::new(passphrase.to_string());
    let host_source: PassphraseSource = {
        let (config, path) = (config.clone(), config_path.to_owned());
        Box::new(move || config.ca_passphrase(&path).map_err(|e| e.to_string()))
    };
    let settings = RotationSettings::from_config(&config.ca);
    let keyring =
        Arc::new(LiveKeyring::open(store.as_ref(), passphrase, Some(source), settings, now).await?);
    // The host CA keyring: created with the user keyring on first start (or on the first
    // start of a version that knows host certificates), so host certificates need no
    // operator action.
    let host_settings = RotationSettings::for_kind(&config.ca, KeyKind::Host);
    let host_keyring = Arc::new(
        LiveKeyring::open(
            store.as_ref(),
            host_passphrase,
            Some(host_source),
            host_settings,
            now,
        )
        .await?,
    );
    let verifier = Verifier::with_metrics(&config.issuers, Some(Arc::clone(&metrics)));
    verifier.prefetch().await;
    let policies = Policies::new(config.policies.clone(), config.ca.clone());
    let issuer = Issuer::new(
        Arc::clone(&store),
        Arc::clone(&keyring),
        policies,
        config.ca.clone(),
        Arc::clone(&metrics),
    )
    .cap_certificates_per_task(config.limits.certificates_per_task);
    let host_issuer = HostIssuer::new(
        Arc::clone(&store),
        Arc::clone(&host_keyring),
        Arc::clone(&keyring),
        Policies::new(config.policies.clone(), config.ca.clone()),
        config.ca.clone(),
    );
    tracing::info!(
        ca_fingerprint = keyring.current().signer().fingerprint(),
        issuers = config.issuers.len(),
        policies = config.policies.len(),
        "CA ready"
    );
    // Which replica runs the once-only work; asks until the store is gone.
    let leadership = Leadership::new();
    tokio::spawn(leader::keep_asking(
        Arc::clone(&leadership),
        Arc::downgrade(&store),
    ));
    // Audit sinks and signed checkpoints, off the request path, on the replica that holds
    // the lease; they stop with the store.
    crate::audit::service::spawn(
        &config.audit,
        &config.storage.url,
        &store,
        {
            let keyring = Arc::clone(&keyring);
            Arc::new(move || keyring.current().signer())
        },
        {
            let leadership = Arc::clone(&leadership);
            Arc::new(move || leadership.is_leading())
        },
    );
    let revocation_retention = crate::revocation::feed::retention_after_end(config.ca.clock_skew);
    let revocation_watch = crate::revocation::watch::RevocationWatch::new(
        &store,
        revocation_retention,
        config.server.request_timeout,
    );
    Ok(Arc::new(AppState {
        verifier,
        issuer,
        host_issuer,
        keyring,
        host_keyring,
        host_patterns: config.ca.host_patterns.clone(),
        store,
        dev_jwks,
        revocation_retention,
        rate: Arc::new(RateLimits::new(&config.limits)),
        metrics,
        audit_sinks: config.audit.sinks.iter().map(SinkConfig::name).collect(),
        readyz_requires_issuers: config.server.readyz_requires_issuers,
        leadership,
        revocation_watch,
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

/// Where the CA serves: the API's listener (TLS or not), and `[server] metrics_listen`'s
/// if set (then `GET /metrics` is served there, plain HTTP, and not on the API's).
pub struct Listeners {
    /// The API (`[server] listen`).
    pub api: Listener,
    /// `GET /metrics` only (`[server] metrics_listen`).
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(api: TcpListener) -> Listeners {
        Listeners {
            api: api.into(),
            metrics: None,
        }
    }
}

impl From<Listener> for Listeners {
    fn from(api: Listener) -> Listeners {
        Listeners { api, metrics: None }
    }
}

/// Serve the API (and the metrics listener, if any) until `shutdown` resolves; requests
/// in flight are answered within `limits.shutdown_timeout` ([`connections`]).
pub async fn serve(
    listeners: impl Into<Listeners>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) {
    let Listeners { api, metrics } = listeners.into();
    // At shutdown, hosts waiting for a change get the feed as it is, at once.
    let shutdown = {
        let watch = Arc::clone(&state.revocation_watch);
        async move {
            shutdown.await;
            watch.release();
        }
    };
    let Listener { tcp, tls, hangup } = api;
    let maintenance = tokio::spawn(maintain_keyring(Arc::clone(&state)));
    let reloading = tokio::spawn(tls::reload_on_change(tls.clone(), hangup));
    let acceptor = tls.as_ref().map(|t| t.acceptor());
    let summaries = tokio::spawn(record_flood_summaries(Arc::clone(&state)));
    let timeout = limits.request_timeout;
    match metrics {
        None => {
            let router = api::router(Arc::clone(&state), timeout, MetricsRoute::WithApi);
            connections::serve(tcp, acceptor, router, shutdown, limits).await;
        }
        Some(metrics) => {
            // One shutdown signal, heard by both loops.
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let until_stopped = move || {
                let mut stopped = stopped.clone();
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                }
            };
            let metrics_loop = tokio::spawn(connections::serve(
                metrics,
                None,
                api::metrics_router(Arc::clone(&state), timeout),
                until_stopped(),
                limits.clone(),
            ));
            let router = api::router(Arc::clone(&state), timeout, MetricsRoute::Elsewhere);
            let api_loop = connections::serve(tcp, acceptor, router, until_stopped(), limits);
            let signal = async move {
                shutdown.await;
                let _ = stop.send(true);
            };
            tokio::join!(api_loop, signal);
            let _ = metrics_loop.await;
        }
    }
    maintenance.abort();
    summaries.abort();
    reloading.abort();
    // What floods left since the last round, now that no request adds to it.
    write_flood_summaries(&state).await;
    // Another replica takes the once-only work over at its next ask.
    state.leadership.release(state.store.as_ref()).await;
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

/// Background upkeep of the CA keyring while serving, every [`MAINTENANCE_INTERVAL`]: on
/// the replica that holds the lease ([`leader`]), retire keys whose certificates have all
/// expired, publish a `next` key and rotate when the schedule says so; on every replica,
/// pick up changes made by `writ admin` or other replicas.
async fn maintain_keyring(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let leading = state.leadership.is_leading();
        for keyring in [&state.keyring, &state.host_keyring] {
            keyring.maintain(state.store.as_ref(), now, leading).await;
        }
    }
}

/// Load the TLS certificate (if configured), bind the configured addresses (`[server]
/// listen`, and `metrics_listen` if set) and take over SIGHUP (it reloads the certificate
/// from then on). Plain HTTP on a non-loopback address (`allow_plaintext = true`) is
/// logged as a warning.
pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
    let server = &config.server;
    let tls = TlsServer::load(server)?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })
    };
    let addr = server.listen;
    let tcp = bind(addr).await?;
    let metrics = match server.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
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
    let api = Listener {
        tcp,
        tls: tls.map(Arc::new),
        hangup,
    };
    Ok(Listeners { api, metrics })
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
