//! `GET /healthz` (the process answers) and `GET /readyz` (this CA can issue now).
//!
//! Readiness checks, in order, and reports every one that fails:
//! 1. `store` — the store answers a read ([`crate::store::Store::ping`]);
//! 2. `signing_key` — the keyring has an active key and its signer signs as that key
//!    ([`crate::authority::signer::probe`]);
//! 3. `issuers` — with `[server] readyz_requires_issuers = true`, every `[[issuer]]` has
//!    keys loaded (fetched and not older than its `jwks_max_stale`).
//!
//! Ready: 200 `{"status": "ready", "ca_fingerprint", "checks"}`. Not ready: 503 in the
//! error envelope, code `not_ready`, the message naming each failed check, and the
//! failed checks' names in `error.not_ready`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ErrorCode;
use crate::authority::KeyState;
use crate::authority::signer::probe;

/// Liveness.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// One readiness check that failed: its name and why.
struct Failed {
    check: &'static str,
    why: String,
}

/// Readiness.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let mut checks = Map::new();
    let mut failed = Vec::new();
    let mut check = |name: &'static str, result: Result<(), String>| {
        checks.insert(
            name.into(),
            json!(if result.is_ok() { "ok" } else { "failed" }),
        );
        if let Err(why) = result {
            failed.push(Failed { check: name, why });
        }
    };

    check(
        "store",
        state.store.ping().await.map_err(|e| {
            tracing::warn!(error = %e, "readiness check: store unreachable");
            "the store is not reachable".to_owned()
        }),
    );
    let keyring = state.keyring.current();
    let signing = match keyring.key(keyring.active_id()) {
        Some(active) if active.state == KeyState::Active => {
            probe(keyring.signer().as_ref(), &active.public_key)
        }
        _ => Err("no active CA key is loaded".to_owned()),
    };
    check("signing_key", signing);
    if state.readyz_requires_issuers {
        let missing = state.verifier.issuers_without_keys();
        check(
            "issuers",
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "keys not loaded for issuer(s) {}",
                    missing.join(", ")
                ))
            },
        );
    }

    if failed.is_empty() {
        return Json(json!({
            "status": "ready",
            "ca_fingerprint": keyring.signer().fingerprint(),
            "checks": checks,
        }))
        .into_response();
    }
    let message = failed
        .iter()
        .map(|f| format!("{}: {}", f.check, f.why))
        .collect::<Vec<_>>()
        .join("; ");
    let names: Vec<&str> = failed.iter().map(|f| f.check).collect();
    let body = json!({"error": {
        "code": "not_ready",
        "message": format!("not ready: {message}"),
        "not_ready": names,
    }});
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response.extensions_mut().insert(ErrorCode("not_ready"));
    response
}
