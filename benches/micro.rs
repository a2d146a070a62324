//! Micro-benchmarks of the steps of one issuance, with plain `Instant` loops (no
//! criterion): `cargo bench --bench micro [FILTER]`.
//!
//! Rows: workload-token verification per algorithm through writ's own
//! [`writ::identity::Verifier`] (a `jwks_file` issuer, keys cached) and, as the crypto
//! floor, `jsonwebtoken::decode` alone with the same validation settings; certificate
//! build + sign ([`writ::authority::sign_certificate`] with the ed25519 [`CaSigner`]);
//! certificate parse + verify (`ssh_key::Certificate::from_bytes` + `validate_at`); and
//! one audit append through the store (SQLite, `synchronous = FULL`, one commit each).
//!
//! Each row runs batches, growing until a batch takes ≥ 10 ms, for `WRIT_MICRO_SECS`
//! seconds (default 1) after a short warm-up, and reports the median and the best batch
//! in µs per operation. Async rows (token verify, audit append) pay one `block_on` per
//! operation; the `block_on` row shows that overhead. The numbers are what this machine
//! did at that moment: compare rows from the same run, and see docs/performance.md.

use std::time::{Duration, Instant};

use base64ct::Encoding as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, PrivateKey};
use writ::audit::{AuditEntry, Outcome, event};
use writ::authority::{CaSigner, CertificateSpec, sign_certificate};
use writ::bench::issuer::{self, Alg, BenchIssuer, Claims};

/// Distinct tokens per algorithm, used round-robin (no verifier can cache one answer).
const TOKENS: usize = 64;

struct Row {
    name: String,
    iterations: u64,
    median_us: f64,
    best_us: f64,
}

/// Time `op` (see the module docs).
fn measure(name: &str, budget: Duration, mut op: impl FnMut()) -> Row {
    // Warm-up: a tenth of the budget.
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        op();
    }
    let mut batch = 1u64;
    let mut per_op = Vec::new();
    let mut iterations = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget || per_op.len() < 3 {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        let elapsed = t.elapsed();
        iterations += batch;
        if elapsed < Duration::from_millis(10) {
            batch *= 2;
            continue;
        }
        per_op.push(elapsed.as_secs_f64() * 1e6 / batch as f64);
    }
    per_op.sort_by(f64::total_cmp);
    Row {
        name: name.to_owned(),
        iterations,
        median_us: per_op[per_op.len() / 2],
        best_us: per_op[0],
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn tokens(issuer: &BenchIssuer) -> Vec<String> {
    let now = now();
    (0..TOKENS)
        .map(|i| {
            let jti = format!("micro-{i}");
            issuer
                .mint(&Claims {
                    iss: issuer::ISSUER,
                    sub: issuer::SUBJECT,
                    aud: issuer::AUDIENCE,
                    iat: now,
                    nbf: now,
                    exp: now + 3600,
                    jti: &jti,
                })
                .expect("mint a token")
        })
        .collect()
}

fn main() {
    // As `writ` does first thing: token signatures are verified with ring.
    assert!(writ::identity::crypto::install(), "ring provider installed");
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let budget = Duration::from_secs_f64(
        std::env::var("WRIT_MICRO_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();

    let name = "tokio block_on (overhead per async op)";
    if wanted(name) {
        rows.push(measure(name, budget, || {
            runtime.block_on(async { std::hint::black_box(1) });
        }));
    }

    // Token verification: one issuer, one JWKS file with a key per algorithm.
    let issuers: Vec<BenchIssuer> = Alg::ALL
        .iter()
        .map(|alg| BenchIssuer::generate(*alg).expect("issuer key"))
        .collect();
    let jwks = JwkSet {
        keys: issuers.iter().map(|i| i.jwk().clone()).collect(),
    };
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, serde_json::to_string(&jwks).expect("jwks")).expect("write jwks");
    let toml = format!(
        "[[issuer]]\nname = \"bench\"\nissuer = \"{}\"\njwks_file = {}\naudiences = [\"{}\"]\n\
         algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\n",
        issuer::ISSUER,
        toml::Value::String(jwks_file.display().to_string()),
        issuer::AUDIENCE,
    );
    let config = writ::config::Config::parse(&toml, &dir.path().join("writ.toml"))
        .expect("bench issuer configuration");
    let verifier = writ::identity::Verifier::new(&config.issuers);
    runtime.block_on(verifier.prefetch());
    for (issuer, jwk) in issuers.iter().zip(&jwks.keys) {
        let alg = issuer.alg();
        let tokens = tokens(issuer);
        let name = format!("token verify {alg} (writ Verifier)");
        if wanted(&name) {
            let mut i = 0;
            rows.push(measure(&name, budget, || {
                i = (i + 1) % TOKENS;
                let identity = runtime.block_on(verifier.verify(&tokens[i], now()));
                assert!(identity.is_ok(), "{identity:?}");
            }));
        }
        for (backend, provider) in [
            ("ring", &writ::identity::crypto::PROVIDER),
            (
                "RustCrypto",
                &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
            ),
        ] {
            let name = format!("token signature {alg} only ({backend})");
            if wanted(&name) {
                let key = DecodingKey::from_jwk(jwk).expect("decoding key");
                let parts: Vec<(String, Vec<u8>)> = tokens
                    .iter()
                    .map(|t| {
                        let (message, signature) = t.rsplit_once('.').expect("three parts");
                        let signature =
                            base64ct::Base64UrlUnpadded::decode_vec(signature).expect("base64");
                        (message.to_owned(), signature)
                    })
                    .collect();
                let mut i = 0;
                rows.push(measure(&name, budget, || {
                    i = (i + 1) % TOKENS;
                    let verifier = (provider.verifier_factory)(&alg.jwt(), &key).expect("verifier");
                    let (message, signature) = &parts[i];
                    assert!(verifier.verify(message.as_bytes(), signature).is_ok());
                }));
            }
        }
        let name = format!("token verify {alg} (jsonwebtoken::decode only)");
        if wanted(&name) {
            let key = DecodingKey::from_jwk(jwk).expect("decoding key");
            let mut validation = Validation::new(alg.jwt());
            validation.leeway = 30;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.validate_aud = true;
            validation.set_audience(&[issuer::AUDIENCE]);
            validation.set_issuer(&[issuer::ISSUER]);
            validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
            let mut i = 0;
            rows.push(measure(&name, budget, || {
                i = (i + 1) % TOKENS;
                let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                    &tokens[i],
                    &key,
                    &validation,
                );
                assert!(data.is_ok(), "{data:?}");
            }));
        }
    }

    // Certificates.
    let ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("CA key");
    let signer = CaSigner::from_private_key(&ca).expect("signer");
    let user = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("user key");
    let now_u = u64::try_from(now()).expect("time after 1970");
    let spec = CertificateSpec {
        public_key: user.public_key().clone(),
        serial: 0x1234_5678_9abc_def0,
        key_id: "writ-micro".into(),
        task_id: "0123456789abcdef0123456789abcdef".into(),
        logins: vec!["deploy".into()],
        hosts: vec!["web-01.bench.invalid".into()],
        valid_after: now_u - 30,
        valid_before: now_u + 300,
        extensions: vec!["permit-pty".into()],
        force_command: None,
        source_address: None,
        task_expires_at: Some(now_u + 900),
    };
    let name = "certificate build+sign (ed25519 CaSigner)";
    if wanted(name) {
        rows.push(measure(name, budget, || {
            let cert = sign_certificate(&spec, &signer, &mut OsRng).expect("sign");
            std::hint::black_box(cert);
        }));
    }
    let name = "certificate parse+verify (ssh-key validate_at)";
    if wanted(name) {
        let cert = sign_certificate(&spec, &signer, &mut OsRng).expect("sign");
        let bytes = cert.to_bytes().expect("encode");
        let fingerprint = ca.public_key().fingerprint(HashAlg::Sha256);
        rows.push(measure(name, budget, || {
            let cert = ssh_key::Certificate::from_bytes(&bytes).expect("parse");
            cert.validate_at(now_u, [&fingerprint]).expect("valid");
        }));
    }

    // Audit append.
    let name = "audit append (SQLite FULL sync, 1 commit)";
    if wanted(name) {
        let db = dir.path().join("audit.db");
        let store = runtime
            .block_on(writ::store::open(&format!("sqlite://{}", db.display())))
            .expect("open store");
        let entry = AuditEntry {
            issuer: Some("bench".into()),
            subject: Some(issuer::SUBJECT.into()),
            policy: Some("bench-permissive".into()),
            task_id: Some("0123456789abcdef0123456789abcdef".into()),
            serial: Some("1311768467463790320".into()),
            key_fingerprint: Some("SHA256:micro".into()),
            logins: vec!["deploy".into()],
            hosts: vec!["web-01.bench.invalid".into()],
            source_ip: Some("127.0.0.1".into()),
            ..AuditEntry::new(event::CERT_ISSUED, Outcome::Success)
        };
        rows.push(measure(name, budget, || {
            runtime
                .block_on(store.append_audit(&entry, time::OffsetDateTime::now_utc()))
                .expect("append");
        }));
    }

    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "writ micro-benchmarks ({build} build, {:.1}s per row, {} CPUs)",
        budget.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<50} {:>11} {:>12} {:>12} {:>10}",
        "benchmark", "iterations", "µs/op p50", "µs/op best", "ops/s"
    );
    for row in rows {
        println!(
            "{:<50} {:>11} {:>12.1} {:>12.1} {:>10.0}",
            row.name,
            row.iterations,
            row.median_us,
            row.best_us,
            1e6 / row.median_us
        );
    }
}
