//! `writ bench issue --flood N`: junk traffic beside the measured load — N keep-alive
//! connections from another source address (default `127.0.0.2`) sending
//! `POST /v1/certificates` with a token that names the bench issuer but carries a
//! signature of random bytes, as fast as the server answers. It shows what an
//! unauthenticated flood costs honest issuance (the measured latency and throughput) and
//! that the CA sheds it (the answers: 401 until the address's failed-authentication budget
//! is spent, then 429 `rate_limited`). It never sends a token that could verify.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64ct::{Base64UrlUnpadded, Encoding};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use super::http::Poster;
use super::issuer;

/// Pause after a failed connection, so a refusing server is not spun against.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// What the flood sent and how the server answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FloodReport {
    /// Junk connections.
    pub connections: usize,
    /// Their source address.
    pub source: String,
    /// Requests answered (or failed in transport) while the flood ran.
    pub requests: u64,
    /// Requests per second over the whole flood (warm-up and window).
    pub per_s: f64,
    /// Answers by HTTP status (or `transport`).
    pub by_status: BTreeMap<String, u64>,
}

/// A running flood; [`Flood::stop`] ends it.
pub struct Flood {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<BTreeMap<String, u64>>>,
    started: Instant,
    connections: usize,
    source: IpAddr,
}

/// A token the CA must refuse: the bench issuer's `iss`, a current `exp`, and 256 random
/// bytes where the RS256 signature goes.
pub fn junk_token() -> String {
    let header = Base64UrlUnpadded::encode_string(br#"{"alg":"RS256","typ":"JWT"}"#);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "iss": issuer::ISSUER,
        "sub": "junk",
        "aud": issuer::AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    });
    let claims = Base64UrlUnpadded::encode_string(claims.to_string().as_bytes());
    let mut signature = [0u8; 256];
    OsRng.fill_bytes(&mut signature);
    format!(
        "{header}.{claims}.{}",
        Base64UrlUnpadded::encode_string(&signature)
    )
}

impl Flood {
    /// Start `connections` junk workers against `url` from `source`.
    pub fn start(
        url: &str,
        body: &str,
        connections: usize,
        source: IpAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> std::io::Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let token = junk_token();
        let mut workers = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut poster = Poster::new(url, body, timeout, tls.clone())?.from_source(source);
            let stop = stop.clone();
            let token = token.clone();
            workers.push(std::thread::spawn(move || {
                let mut answers: BTreeMap<String, u64> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = match poster.post(&token) {
                        Ok(answer) => answer.status.to_string(),
                        Err(_) => {
                            std::thread::sleep(RECONNECT_PAUSE);
                            "transport".to_owned()
                        }
                    };
                    *answers.entry(key).or_default() += 1;
                }
                answers
            }));
        }
        Ok(Flood {
            stop,
            workers,
            started: Instant::now(),
            connections,
            source,
        })
    }

    /// Stop every worker and sum up what they saw.
    pub fn stop(self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = FloodReport {
            connections: self.connections,
            source: self.source.to_string(),
            ..FloodReport::default()
        };
        for worker in self.workers {
            for (status, n) in worker.join().unwrap_or_default() {
                report.requests += n;
                *report.by_status.entry(status).or_default() += n;
            }
        }
        report.per_s = report.requests as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_junk_token_names_the_bench_issuer_and_never_repeats_its_signature() {
        let (a, b) = (junk_token(), junk_token());
        let parts: Vec<&str> = a.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value = serde_json::from_slice(
            &Base64UrlUnpadded::decode_vec(parts[1]).expect("base64url claims"),
        )
        .expect("JSON claims");
        assert_eq!(claims["iss"], issuer::ISSUER);
        assert_ne!(a.rsplit('.').next(), b.rsplit('.').next());
    }
}
