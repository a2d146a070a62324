//! One issuer's signing keys: fetched from `jwks_url`, read from `jwks_file`, or found
//! through OIDC discovery, then cached. Tokens are not authenticated before their key is
//! found, so no token can make writ fetch more often than [`MIN_REFETCH_INTERVAL`] allows:
//! while keys are missing or due for refresh, a fetch starts at most once per interval
//! after the previous attempt (whether it failed or not), and an unknown `kid` triggers at
//! most one refetch per interval (counted between unknown-`kid` refetches only, so a key
//! the issuer rotates in right after a start-up or scheduled fetch is still found at
//! once); concurrent callers share one fetch in flight.
//!
//! Fetches use the blocking `ureq` client on a blocking thread, with a hard timeout and a
//! size limit, so a slow issuer cannot stall the server. With metrics (`writ serve`), each
//! fetch counts in `writ_jwks_fetches_total{issuer,result}` under the configured issuer
//! name.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, JwkSet};

use super::TokenError;
use crate::config::IssuerConfig;
use crate::metrics::Metrics;

/// Minimum time between two fetches triggered by unknown `kid`s, so a stream of tokens with
/// random `kid`s cannot make writ hammer the issuer, and between two attempts to load keys
/// that are missing (never loaded) or due for refresh: tokens that trigger fetches are not
/// authenticated yet.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Hard timeout on one JWKS or discovery fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest accepted JWKS or discovery document.
const MAX_DOCUMENT_BYTES: u64 = 512 * 1024;

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS URL.
    Url(String),
    /// A local JWKS file.
    File(PathBuf),
    /// `{issuer}/.well-known/openid-configuration` → `jwks_uri`; the document's `issuer`
    /// must equal the configured issuer.
    Discovery(String),
}

impl JwksSource {
    /// The source an issuer configuration names.
    pub fn from_config(config: &IssuerConfig) -> JwksSource {
        if let Some(url) = &config.jwks_url {
            JwksSource::Url(url.clone())
        } else if let Some(file) = &config.jwks_file {
            JwksSource::File(file.clone())
        } else {
            JwksSource::Discovery(config.issuer.clone())
        }
    }

    /// Read the key set (blocking), each HTTP fetch within [`FETCH_TIMEOUT`].
    pub fn load(&self) -> Result<JwkSet, String> {
        self.load_within(FETCH_TIMEOUT)
    }

    /// Read the key set (blocking), each HTTP fetch within `timeout` (`writ check-config`).
    pub fn load_within(&self, timeout: Duration) -> Result<JwkSet, String> {
        match self {
            JwksSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a JWKS: {e}", path.display()))
            }
            JwksSource::Url(url) => fetch_json(url, timeout),
            JwksSource::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc: serde_json::Value = fetch_json(&url, timeout)?;
                // OpenID Connect Discovery 1.0 §4.3: a document for another issuer must
                // not be used.
                let named = doc.get("issuer").and_then(|v| v.as_str());
                if named != Some(issuer.as_str()) {
                    return Err(format!(
                        "{url} is for issuer {named:?}, not the configured {issuer:?}"
                    ));
                }
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("{url} has no jwks_uri"))?;
                fetch_json(jwks_uri, timeout)
            }
        }
    }

    /// Where the keys come from, for people: the URL, the file, or the discovery URL.
    pub fn describe(&self) -> String {
        match self {
            JwksSource::Url(url) => url.clone(),
            JwksSource::File(path) => path.display().to_string(),
            JwksSource::Discovery(issuer) => format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            ),
        }
    }
}

fn fetch_json<T: serde::de::DeserializeOwned>(url: &str, timeout: Duration) -> Result<T, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    response
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT_BYTES)
        .read_json()
        .map_err(|e| format!("GET {url}: bad JSON: {e}"))
}

/// A usable key: its JWK (for type and algorithm checks) and the parsed verification key.
#[derive(Clone)]
pub struct CachedKey {
    /// The JWK as published.
    pub jwk: Jwk,
    /// Parsed once, reused per token.
    pub key: DecodingKey,
}

#[derive(Default)]
struct CacheState {
    keys: Option<Arc<Vec<CachedKey>>>,
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    last_error: Option<String>,
    /// When an unknown `kid` last triggered a refetch.
    last_kid_refetch: Option<Instant>,
}

/// How long keys stay fresh and how long stale keys are still trusted.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// Refresh keys older than this (on the next token).
    pub refresh: Duration,
    /// Stop trusting keys not refreshed for this long.
    pub max_stale: Duration,
}

/// The cached keys of one issuer.
pub struct KeyCache {
    source: JwksSource,
    policy: CachePolicy,
    state: RwLock<CacheState>,
    refresh: tokio::sync::Mutex<()>,
    /// The configured issuer name and the metrics its fetches count in.
    metrics: Option<(String, Arc<Metrics>)>,
}

/// A consistent view of the cache.
struct Snapshot {
    keys: Option<Arc<Vec<CachedKey>>>,
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
}

impl KeyCache {
    /// An empty cache; keys are fetched on first use (or by [`KeyCache::refresh`]).
    pub fn new(source: JwksSource, policy: CachePolicy) -> KeyCache {
        KeyCache {
            source,
            policy,
            state: RwLock::new(CacheState::default()),
            refresh: tokio::sync::Mutex::new(()),
            metrics: None,
        }
    }

    /// Count this cache's fetches in `metrics`, as the configured issuer `name`.
    pub fn with_metrics(mut self, name: &str, metrics: Arc<Metrics>) -> KeyCache {
        metrics.jwks_issuer(name);
        self.metrics = Some((name.to_owned(), metrics));
        self
    }

    /// Whether keys are loaded and still trusted (refreshed within `max_stale`): what
    /// `/readyz` asks with `readyz_requires_issuers`.
    pub fn has_keys(&self) -> bool {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.keys.is_some()
            && state
                .last_success
                .is_some_and(|t| t.elapsed() < self.policy.max_stale)
    }

    fn snapshot(&self) -> Snapshot {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            keys: state.keys.clone(),
            last_attempt: state.last_attempt,
            last_success: state.last_success,
        }
    }

    /// Fetch the keys now, replacing the cache on success; on failure the last good keys
    /// stay (until [`CachePolicy::max_stale`]).
    pub async fn refresh(&self) -> Result<(), String> {
        let source = self.source.clone();
        let result = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|e| format!("JWKS fetch task failed: {e}"))
            .and_then(|r| r);
        if let Some((name, metrics)) = &self.metrics {
            metrics.jwks_fetch(name, result.is_ok());
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        state.last_attempt = Some(now);
        match result {
            Ok(set) => {
                let keys = set
                    .keys
                    .into_iter()
                    .filter_map(|jwk| {
                        DecodingKey::from_jwk(&jwk)
                            .ok()
                            .map(|key| CachedKey { jwk, key })
                    })
                    .collect();
                state.keys = Some(Arc::new(keys));
                state.last_success = Some(now);
                state.last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(source = ?self.source, error = %e, "JWKS fetch failed");
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Claim the unknown-`kid` refetch: true at most once per [`MIN_REFETCH_INTERVAL`].
    fn claim_kid_refetch(&self) -> bool {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let allowed = state
            .last_kid_refetch
            .is_none_or(|t| t.elapsed() >= MIN_REFETCH_INTERVAL);
        if allowed {
            state.last_kid_refetch = Some(Instant::now());
        }
        allowed
    }

    /// Refresh unless another request did so while we waited for the refresh lock.
    async fn refresh_once(&self, seen_attempt: Option<Instant>) {
        let _guard = self.refresh.lock().await;
        if self.snapshot().last_attempt == seen_attempt {
            let _ = self.refresh().await;
        }
    }

    /// The key for `kid` (or the only key when the token has no `kid`).
    ///
    /// Keys never loaded, or older than the refresh interval, are fetched first (at most
    /// once per [`MIN_REFETCH_INTERVAL`] after the last attempt); an unknown `kid` triggers a
    /// refetch at most once per [`MIN_REFETCH_INTERVAL`]; keys that could not be refreshed
    /// for longer than `max_stale` are no longer trusted.
    pub async fn find(&self, kid: Option<&str>) -> Result<CachedKey, TokenError> {
        let snap = self.snapshot();
        let retry_allowed = snap
            .last_attempt
            .is_none_or(|t| t.elapsed() >= MIN_REFETCH_INTERVAL);
        let due = snap
            .last_success
            .is_none_or(|t| t.elapsed() >= self.policy.refresh);
        let known = snap.keys.as_deref().and_then(|k| pick(k, kid));
        if snap.keys.is_none() {
            // Never loaded: the first attempt, then at most one per interval, however many
            // (unauthenticated) tokens name this issuer meanwhile.
            if retry_allowed {
                self.refresh_once(snap.last_attempt).await;
            }
        } else if due && retry_allowed {
            self.refresh_once(snap.last_attempt).await;
        } else if known.is_none() {
            // Not limited by the last scheduled fetch: the issuer may have rotated since.
            if self.claim_kid_refetch() {
                self.refresh_once(snap.last_attempt).await;
            }
        } else if let Some(found) = known
            && !due
        {
            return Ok(found);
        }
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let fresh_enough = state
            .last_success
            .is_some_and(|t| t.elapsed() < self.policy.max_stale);
        match &state.keys {
            Some(keys) if fresh_enough => pick(keys, kid).ok_or(TokenError::UnknownKey),
            _ => Err(TokenError::IssuerUnavailable(
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "keys not fetched yet".into()),
            )),
        }
    }
}

fn pick(keys: &[CachedKey], kid: Option<&str>) -> Option<CachedKey> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.jwk.common.key_id.as_deref() == Some(kid))
            .cloned(),
        None if keys.len() == 1 => keys.first().cloned(),
        None => None,
    }
}
