//! A real test identity provider: an HTTP server on 127.0.0.1 that serves a JWKS and an
//! OIDC discovery document, and mints real signed JWTs (RS256, ES256, EdDSA) with the
//! committed fixture keys in `tests/fixtures/` (made by `gen-keys.sh`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::runtime;

/// A signing key of the IdP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// RSA 2048, RS256.
    Rsa,
    /// P-256, ES256.
    Ec,
    /// Ed25519, EdDSA.
    Ed25519,
    /// A second RSA key that is NOT in the JWKS (for bad signatures).
    RsaOther,
}

impl Key {
    fn pem(self) -> &'static [u8] {
        match self {
            Key::Rsa => include_bytes!("../fixtures/idp-rsa.pem"),
            Key::RsaOther => include_bytes!("../fixtures/idp-rsa-other.pem"),
            Key::Ec => include_bytes!("../fixtures/idp-ec.pem"),
            Key::Ed25519 => include_bytes!("../fixtures/idp-ed25519.pem"),
        }
    }

    /// The algorithm this key signs with.
    pub fn alg(self) -> Algorithm {
        match self {
            Key::Rsa | Key::RsaOther => Algorithm::RS256,
            Key::Ec => Algorithm::ES256,
            Key::Ed25519 => Algorithm::EdDSA,
        }
    }

    /// The `kid` the IdP publishes it under.
    pub fn kid(self) -> &'static str {
        match self {
            Key::Rsa => "rsa-1",
            Key::RsaOther => "rsa-other",
            Key::Ec => "ec-1",
            Key::Ed25519 => "ed-1",
        }
    }

    fn encoding_key(self) -> EncodingKey {
        match self {
            Key::Rsa | Key::RsaOther => EncodingKey::from_rsa_pem(self.pem()),
            Key::Ec => EncodingKey::from_ec_pem(self.pem()),
            Key::Ed25519 => EncodingKey::from_ed_pem(self.pem()),
        }
        .expect("fixture key")
    }

    /// The public JWK.
    pub fn jwk(self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding_key(), self.alg()).expect("jwk");
        jwk.common.key_id = Some(self.kid().to_owned());
        jwk
    }
}

#[derive(Clone)]
struct IdpState {
    issuer: String,
    jwks: Arc<RwLock<String>>,
    requests: Arc<AtomicUsize>,
}

/// A running test IdP.
pub struct TestIdp {
    /// `iss` of its tokens, `http://127.0.0.1:PORT`.
    pub issuer: String,
    jwks: Arc<RwLock<String>>,
    requests: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestIdp {
    /// Start an IdP publishing `keys`.
    pub fn start(keys: &[Key]) -> TestIdp {
        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind IdP");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let state = IdpState {
            issuer: issuer.clone(),
            jwks: Arc::new(RwLock::new(String::new())),
            requests: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route(
                "/jwks",
                get(|State(s): State<IdpState>| async move {
                    s.requests.fetch_add(1, Ordering::SeqCst);
                    let body = s.jwks.read().expect("lock").clone();
                    ([("content-type", "application/json")], body)
                }),
            )
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<IdpState>| async move {
                    s.requests.fetch_add(1, Ordering::SeqCst);
                    axum::Json(
                        json!({"issuer": s.issuer, "jwks_uri": format!("{}/jwks", s.issuer)}),
                    )
                }),
            )
            .with_state(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        runtime().spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        let idp = TestIdp {
            issuer,
            jwks: state.jwks,
            requests: state.requests,
            shutdown: Some(tx),
        };
        idp.publish(keys);
        idp
    }

    /// Replace the published keys.
    pub fn publish(&self, keys: &[Key]) {
        let set = JwkSet {
            keys: keys.iter().map(|k| k.jwk()).collect(),
        };
        *self.jwks.write().expect("lock") = serde_json::to_string(&set).expect("jwks json");
    }

    /// JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// How many HTTP requests the IdP has answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Standard claims for `sub`: this issuer, `aud = writ`, valid for 5 minutes.
    pub fn claims(&self, sub: &str) -> Value {
        let now = super::now();
        json!({
            "iss": self.issuer, "sub": sub, "aud": "writ",
            "iat": now, "nbf": now, "exp": now + 300,
            "jti": format!("jti-{}", rand_hex()),
        })
    }

    /// Sign `claims` with `key` (header `kid` = the key's kid).
    pub fn sign(&self, key: Key, claims: &Value) -> String {
        sign_with(key, key.kid(), claims)
    }

    /// A token for `sub` signed with `key`.
    pub fn token(&self, key: Key, sub: &str) -> String {
        self.sign(key, &self.claims(sub))
    }
}

/// Sign `claims` with `key`, claiming `kid` in the header.
pub fn sign_with(key: Key, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(key.alg());
    header.kid = Some(kid.to_owned());
    sign_with_header(key, &header, claims)
}

/// Sign `claims` with `key` under a caller-built `header` (e.g. with `jku`, `x5u` or `jwk`
/// set); `header.alg` must be the key's algorithm.
pub fn sign_with_header(key: Key, header: &Header, claims: &Value) -> String {
    jsonwebtoken::encode(header, claims, &key.encoding_key()).expect("sign token")
}

fn rand_hex() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
