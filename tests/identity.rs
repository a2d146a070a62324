//! Workload identity federation against real JWKS servers on loopback (issue 3, RFC 8725):
//! every token trick an attacker has (`alg: none`, HMAC keyed with the RSA public key,
//! tampered claims, cross-issuer keys, unknown and path-like `kid`s, key-pointing headers),
//! the time and audience claims (including values that overflow `exp - iat`), replay
//! protection (sequential and 20 concurrent uses of one token, and the ECDSA twin of a used
//! token), key rotation at the issuer, an issuer that goes down or was never up (and junk
//! tokens for one whose keys never loaded, which must not make writ fetch), OIDC
//! discovery, and login templates fed by claims.
//!
//! Every refusal goes through [`refused`], which also checks that it left exactly one
//! audit record (`token.rejected` or `cert.denied`) with its reason code and source IP and
//! without the token. No test sleeps to synchronise: time-dependent cases are built from
//! claim timestamps, and the one wait (for an IdP to stop listening) polls with a deadline.

mod common;

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use common::ca::{TestCa, certificate_request};
use common::http;
use common::idp::{Key, TestIdp, sign_with, sign_with_header};
use common::{now, public_key, ssh_keygen};
use jsonwebtoken::jwk::AlgorithmParameters;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use writ::audit::{Outcome, event};

/// Agents named `agent-*` may open tasks as `deploy` on production hosts.
const POLICY: &str = r#"
name = "agents"
subject = "agent-*"
logins = ["deploy"]
hosts = ["*.prod.example.com"]
"#;

/// An IdP, a CA trusting it with [`POLICY`], and an SSH public key to certify.
struct World {
    idp: TestIdp,
    ca: TestCa,
    pubkey: String,
    _dir: tempfile::TempDir,
}

impl World {
    fn start(keys: &[Key]) -> World {
        let idp = TestIdp::start(keys);
        let ca = TestCa::with_policy(&idp, "", POLICY);
        let (pubkey, dir) = agent_key();
        World {
            idp,
            ca,
            pubkey,
            _dir: dir,
        }
    }

    /// The request every test makes: `deploy` on one production host.
    fn body(&self) -> Value {
        deploy_request(&self.pubkey)
    }

    /// POST /v1/certificates with `token`; asserts 201 and returns the response JSON.
    fn issue(&self, token: &str, case: &str) -> Value {
        issued(&self.ca, token, &self.body(), case)
    }

    /// POST /v1/certificates with `token`; asserts a refusal (see [`refused`]).
    fn refuse(&self, token: &str, status: u16, code: &str, case: &str) -> http::Response {
        let audit_event = if status == 403 {
            event::CERT_DENIED
        } else {
            event::TOKEN_REJECTED
        };
        refused(
            &self.ca,
            Some(token),
            &self.body(),
            status,
            code,
            audit_event,
            case,
        )
    }
}

/// A fresh ed25519 key pair; returns the public key line and the directory holding it.
fn agent_key() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    (public_key(&key), dir)
}

fn deploy_request(pubkey: &str) -> Value {
    certificate_request(pubkey, &["deploy"], &["web-01.prod.example.com"], None)
}

/// Asserts a 201 with a certificate and returns the response JSON.
fn issued(ca: &TestCa, token: &str, body: &Value, case: &str) -> Value {
    let response = ca.request_certificate(Some(token), body);
    assert_eq!(response.status, 201, "{case}: {}", response.text);
    let json = response.json();
    assert!(
        json["certificate"]
            .as_str()
            .is_some_and(|c| c.contains("-cert-v01@openssh.com ")),
        "{case}: {}",
        response.text
    );
    json
}

/// Sends one request that must be refused with `status` and error `code`, and checks the
/// audit trail it leaves: exactly one new record, of `audit_event`, failed, with a reason
/// that starts with `code`, the client's IP, and neither the token nor its signature.
fn refused(
    ca: &TestCa,
    token: Option<&str>,
    body: &Value,
    status: u16,
    code: &str,
    audit_event: &str,
    case: &str,
) -> http::Response {
    let before = ca.audit().len();
    let response = ca.request_certificate(token, body);
    assert_eq!(response.status, status, "{case}: {}", response.text);
    assert_eq!(response.error_code(), code, "{case}: {}", response.text);
    assert!(
        !response.text.contains("certificate\""),
        "{case}: a refusal carries no certificate: {}",
        response.text
    );
    if status == 401 {
        assert!(
            response
                .www_authenticate
                .as_deref()
                .is_some_and(|h| h.starts_with("Bearer")),
            "{case}: 401 without WWW-Authenticate: Bearer"
        );
    }
    let log = ca.audit();
    let new = &log[before..];
    assert_eq!(
        new.len(),
        1,
        "{case}: expected exactly one audit record, got {new:#?}"
    );
    let record = &new[0];
    assert_eq!(record.entry.event, audit_event, "{case}: {record:#?}");
    assert_eq!(record.entry.outcome, Some(Outcome::Failure), "{case}");
    let reason = record.entry.reason.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with(code),
        "{case}: audit reason {reason:?} does not start with {code:?}"
    );
    assert_eq!(
        record.entry.source_ip.as_deref(),
        Some("127.0.0.1"),
        "{case}"
    );
    if let Some(token) = token {
        let text = serde_json::to_string(record).expect("audit JSON");
        assert!(
            !text.contains(token),
            "{case}: whole token in the audit log"
        );
        let signature = token.rsplit('.').next().unwrap_or_default();
        if signature.len() >= 16 {
            assert!(
                !text.contains(signature) && !response.text.contains(signature),
                "{case}: token signature leaked into the audit log or the response"
            );
        }
    }
    response
}

fn b64url(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

fn b64url_json(value: &Value) -> String {
    b64url(value.to_string().as_bytes())
}

/// A token's three segments.
fn segments(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS: {token}");
    [parts[0], parts[1], parts[2]]
}

#[test]
fn alg_none_is_refused() {
    let w = World::start(&[Key::Rsa]);
    let claims = w.idp.claims("agent-1");
    let valid = w.idp.sign(Key::Rsa, &claims);
    let real_signature = segments(&valid)[2];
    for (case, header, signature) in [
        ("alg none", json!({"alg": "none"}), ""),
        (
            "alg none, typ JWT",
            json!({"alg": "none", "typ": "JWT"}),
            "",
        ),
        (
            "alg none with a published kid",
            json!({"alg": "none", "kid": Key::Rsa.kid()}),
            "",
        ),
        ("alg None", json!({"alg": "None"}), ""),
        ("alg NONE", json!({"alg": "NONE"}), ""),
        (
            "alg none carrying a real signature",
            json!({"alg": "none", "kid": Key::Rsa.kid()}),
            real_signature,
        ),
    ] {
        let token = format!(
            "{}.{}.{signature}",
            b64url_json(&header),
            b64url_json(&claims)
        );
        w.refuse(&token, 401, "token_malformed", case);
    }
    // Control: the same claims, properly signed, are fine.
    w.issue(&valid, "properly signed");
}

/// DER: a tag with its length.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// DER INTEGER of a big-endian unsigned value.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = Base64::encode_string(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The RSA fixture's public key in every encoding an attacker might try as an HMAC secret:
/// SPKI PEM (with and without the final newline) and DER, PKCS#1 PEM and DER, the JWK
/// JSON, and the raw modulus.
fn rsa_public_key_encodings() -> Vec<(&'static str, Vec<u8>)> {
    let jwk = Key::Rsa.jwk();
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        panic!("RSA fixture has no RSA JWK")
    };
    let n = Base64UrlUnpadded::decode_vec(&rsa.n).expect("n");
    let e = Base64UrlUnpadded::decode_vec(&rsa.e).expect("e");
    let pkcs1 = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    // AlgorithmIdentifier { rsaEncryption, NULL }
    let algorithm = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let spki = der(
        0x30,
        &[algorithm, der(0x03, &[&[0u8][..], &pkcs1].concat())].concat(),
    );
    let spki_pem = pem("PUBLIC KEY", &spki);
    // Cross-check the hand-made encoding against OpenSSL when it is installed, so the
    // attack below really uses the bytes an attacker would download.
    if let Ok(out) = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/idp-rsa.pem"
        ))
        .output()
        && out.status.success()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout), spki_pem);
    }
    vec![
        ("SPKI PEM", spki_pem.clone().into_bytes()),
        (
            "SPKI PEM without newline",
            spki_pem.trim_end().as_bytes().to_vec(),
        ),
        ("SPKI DER", spki),
        ("PKCS#1 PEM", pem("RSA PUBLIC KEY", &pkcs1).into_bytes()),
        ("PKCS#1 DER", pkcs1),
        ("JWK JSON", serde_json::to_vec(&jwk).expect("jwk json")),
        ("modulus", n),
    ]
}

#[test]
fn hmac_keyed_with_the_rsa_public_key_is_refused() {
    let w = World::start(&[Key::Rsa]);
    for (encoding, secret) in rsa_public_key_encodings() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let mut header = Header::new(alg);
            header.kid = Some(Key::Rsa.kid().to_owned());
            let token = jsonwebtoken::encode(
                &header,
                &w.idp.claims("agent-1"),
                &EncodingKey::from_secret(&secret),
            )
            .expect("sign HMAC token");
            w.refuse(
                &token,
                401,
                "algorithm_not_allowed",
                &format!("{alg:?} keyed with the {encoding}"),
            );
        }
    }
    w.issue(&w.idp.token(Key::Rsa, "agent-1"), "control");
}

#[test]
fn tampered_claims_fail_the_signature() {
    let w = World::start(&[Key::Rsa, Key::Ec, Key::Ed25519]);
    for key in [Key::Rsa, Key::Ec, Key::Ed25519] {
        let token = w.idp.token(key, "agent-1");
        let [header, payload, signature] = segments(&token);
        let mut claims: Value =
            serde_json::from_slice(&Base64UrlUnpadded::decode_vec(payload).expect("payload"))
                .expect("claims");
        claims["sub"] = json!("agent-admin");
        let forged = format!("{header}.{}.{signature}", b64url_json(&claims));
        w.refuse(
            &forged,
            401,
            "bad_signature",
            &format!("{key:?}: sub changed"),
        );
        let mut claims_exp = w.idp.claims("agent-1");
        claims_exp["exp"] = json!(now() + 3000);
        let forged = format!("{header}.{}.{signature}", b64url_json(&claims_exp));
        w.refuse(
            &forged,
            401,
            "bad_signature",
            &format!("{key:?}: claims swapped"),
        );
        // The untouched token still works: a forgery does not burn the real token.
        let body = w.issue(&token, &format!("{key:?}: original"));
        assert!(
            body["certificate"].is_string(),
            "{key:?}: original token refused"
        );
    }
    assert_eq!(w.ca.audit_events(event::CERT_ISSUED).len(), 3);
}

/// The `[[issuer]]` table of a test IdP under `name`, plus `extra` lines.
fn issuer_table(name: &str, idp: &TestIdp, extra: &str) -> String {
    format!(
        "[[issuer]]\nname = \"{name}\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\naudiences = [\"writ\"]\n{extra}\n\n",
        iss = idp.issuer,
        jwks = idp.jwks_url(),
    )
}

/// A `[[policy]]` table like [`POLICY`] for issuer `name`.
fn policy_table(name: &str) -> String {
    format!(
        "[[policy]]\nissuer = \"{name}\"\n{}\n",
        POLICY.replace("\"agents\"", &format!("\"agents-{name}\""))
    )
}

#[test]
fn claims_of_one_issuer_signed_with_another_issuers_key_are_refused() {
    let a = TestIdp::start(&[Key::Rsa]);
    let b = TestIdp::start(&[Key::RsaOther]);
    let ca = TestCa::start(
        "",
        &format!(
            "{}{}{}{}",
            issuer_table("a", &a, ""),
            issuer_table("b", &b, ""),
            policy_table("a"),
            policy_table("b"),
        ),
    );
    let (pubkey, _dir) = agent_key();
    let body = deploy_request(&pubkey);
    let tok = |case: &str, token: &str, code: &str, claimed: &str| {
        refused(
            &ca,
            Some(token),
            &body,
            401,
            code,
            event::TOKEN_REJECTED,
            case,
        );
        let last = ca.audit().pop().expect("record");
        assert_eq!(last.entry.issuer.as_deref(), Some(claimed), "{case}");
    };
    // Claims of A, signed by B's key: under B's kid, and under A's kid.
    tok(
        "iss=A, B's key and kid",
        &sign_with(Key::RsaOther, Key::RsaOther.kid(), &a.claims("agent-1")),
        "unknown_key",
        "a",
    );
    tok(
        "iss=A, B's key under A's kid",
        &sign_with(Key::RsaOther, Key::Rsa.kid(), &a.claims("agent-1")),
        "bad_signature",
        "a",
    );
    // And the other way round.
    tok(
        "iss=B, A's key and kid",
        &sign_with(Key::Rsa, Key::Rsa.kid(), &b.claims("agent-1")),
        "unknown_key",
        "b",
    );
    tok(
        "iss=B, A's key under B's kid",
        &sign_with(Key::Rsa, Key::RsaOther.kid(), &b.claims("agent-1")),
        "bad_signature",
        "b",
    );
    // Each issuer's own tokens work, and are attributed to it.
    issued(&ca, &a.token(Key::Rsa, "agent-1"), &body, "A's own token");
    issued(
        &ca,
        &b.token(Key::RsaOther, "agent-1"),
        &body,
        "B's own token",
    );
    let issuers: Vec<Option<String>> = ca
        .audit_events(event::CERT_ISSUED)
        .into_iter()
        .map(|r| r.entry.issuer)
        .collect();
    assert_eq!(issuers, [Some("a".to_owned()), Some("b".to_owned())]);
}

#[test]
fn unknown_and_path_like_kids_are_refused() {
    let w = World::start(&[Key::Rsa, Key::Ec]);
    let fetches = w.idp.requests();
    for kid in [
        "no-such-key",
        "../../etc/passwd",
        "/etc/passwd",
        "/dev/zero",
        "file:///etc/passwd",
        "http://127.0.0.1:1/jwks",
        "rsa-1/../rsa-1",
        "rsa-1\0",
        "",
    ] {
        let token = sign_with(Key::Rsa, kid, &w.idp.claims("agent-1"));
        w.refuse(&token, 401, "unknown_key", &format!("kid {kid:?}"));
    }
    // Without a kid, an issuer with several keys cannot pick one.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = None;
    let token = sign_with_header(Key::Rsa, &header, &w.idp.claims("agent-1"));
    w.refuse(&token, 401, "unknown_key", "no kid, two keys published");
    // A stream of unknown kids costs the issuer at most one refetch.
    assert!(
        w.idp.requests() <= fetches + 1,
        "unknown kids made writ fetch the JWKS {} times",
        w.idp.requests() - fetches
    );
    w.issue(&w.idp.token(Key::Rsa, "agent-1"), "control");
}

/// A loopback listener standing in for an attacker's key server; it records connections.
struct Trap {
    listener: TcpListener,
    url: String,
}

impl Trap {
    fn new() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind trap");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        Trap { listener, url }
    }

    /// Whether anything connected (the kernel queues connections until accepted).
    fn was_contacted(&self) -> bool {
        match self.listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn jku_x5u_and_jwk_headers_are_never_followed() {
    let w = World::start(&[Key::Rsa]);
    let trap = Trap::new();
    let attacker_jwk = Key::RsaOther.jwk();
    let header = |kid: Option<&str>, jku: bool, x5u: bool, jwk: bool| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = kid.map(str::to_owned);
        h.jku = jku.then(|| trap.url.clone());
        h.x5u = x5u.then(|| trap.url.clone());
        h.jwk = jwk.then(|| attacker_jwk.clone());
        h
    };
    let mut cases = Vec::new();
    for kid in [None, Some(Key::Rsa.kid()), Some(Key::RsaOther.kid())] {
        for (jku, x5u, jwk) in [
            (true, false, false),
            (false, true, false),
            (false, false, true),
            (true, true, true),
        ] {
            cases.push((kid, jku, x5u, jwk));
        }
    }
    for (kid, jku, x5u, jwk) in cases {
        let case = format!("attacker key, kid {kid:?}, jku {jku}, x5u {x5u}, jwk {jwk}");
        let token = sign_with_header(
            Key::RsaOther,
            &header(kid, jku, x5u, jwk),
            &w.idp.claims("agent-1"),
        );
        // The published kid (or the issuer's only key, when there is no kid) does not
        // verify the attacker's signature; the attacker's kid is not published at all.
        let code = if kid == Some(Key::RsaOther.kid()) {
            "unknown_key"
        } else {
            "bad_signature"
        };
        w.refuse(&token, 401, code, &case);
    }
    // A genuine token that happens to carry the headers is judged by the issuer's own key.
    let genuine = sign_with_header(
        Key::Rsa,
        &header(Some(Key::Rsa.kid()), true, true, true),
        &w.idp.claims("agent-1"),
    );
    w.issue(&genuine, "genuine token with key-pointing headers");
    assert!(!trap.was_contacted(), "writ connected to a jku/x5u URL");
    // The trap does notice a connection.
    let _probe = TcpStream::connect(trap.listener.local_addr().expect("addr")).expect("connect");
    assert!(trap.was_contacted(), "the trap cannot see connections");
}

#[test]
fn time_claims_and_token_lifetime_are_enforced() {
    let w = World::start(&[Key::Ec]);
    let t = now();
    let with = |changes: Value| {
        let mut claims = w.idp.claims("agent-1");
        for (k, v) in changes.as_object().expect("object") {
            if v.is_null() {
                claims.as_object_mut().expect("object").remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        w.idp.sign(Key::Ec, &claims)
    };
    for (case, token, code) in [
        (
            "expired",
            with(json!({"iat": t - 900, "nbf": t - 900, "exp": t - 120})),
            "token_expired",
        ),
        (
            "not yet valid (nbf beyond leeway)",
            with(json!({"nbf": t + 120})),
            "token_not_yet_valid",
        ),
        ("nbf as a string", with(json!({"nbf": "0"})), "bad_claim"),
        (
            "iat in the future",
            with(json!({"iat": t + 120, "nbf": t - 10})),
            "bad_claim",
        ),
        ("iat as a string", with(json!({"iat": "0"})), "bad_claim"),
        (
            "exp as a string",
            with(json!({"exp": (t + 300).to_string()})),
            "bad_claim",
        ),
        ("no exp", with(json!({"exp": null})), "bad_claim"),
        (
            "lifetime above max_token_lifetime (1h)",
            with(json!({"exp": t + 2 * 3600})),
            "token_lifetime_too_long",
        ),
        (
            "lifetime above max_token_lifetime, no iat",
            with(json!({"iat": null, "exp": t + 2 * 3600})),
            "token_lifetime_too_long",
        ),
        (
            "old iat with a far exp",
            with(json!({"iat": t - 3 * 3600, "nbf": null, "exp": t + 300})),
            "token_lifetime_too_long",
        ),
        // Overflow: exp - iat does not fit in i64 and once wrapped around to a short,
        // accepted lifetime.
        (
            "iat = i64::MIN, exp in 30 days",
            with(json!({"iat": i64::MIN, "nbf": null, "exp": t + 30 * 86400})),
            "token_lifetime_too_long",
        ),
        (
            "iat = i64::MIN, exp = i64::MAX",
            with(json!({"iat": i64::MIN, "nbf": null, "exp": i64::MAX})),
            "token_lifetime_too_long",
        ),
        (
            "iat = i64::MIN + 1, exp in 5 minutes",
            with(json!({"iat": i64::MIN + 1, "nbf": null})),
            "token_lifetime_too_long",
        ),
        (
            "exp = i64::MAX",
            with(json!({"exp": i64::MAX})),
            "token_lifetime_too_long",
        ),
        (
            "exp = i64::MAX, no iat",
            with(json!({"iat": null, "exp": i64::MAX})),
            "token_lifetime_too_long",
        ),
        (
            "exp = u64::MAX",
            with(json!({"exp": u64::MAX})),
            "bad_claim",
        ),
        (
            "iat = i64::MAX",
            with(json!({"iat": i64::MAX})),
            "bad_claim",
        ),
        (
            "iat = u64::MAX",
            with(json!({"iat": u64::MAX})),
            "bad_claim",
        ),
        (
            "nbf = i64::MIN",
            with(json!({"nbf": i64::MIN})),
            "bad_claim",
        ),
        (
            "nbf = u64::MAX",
            with(json!({"nbf": u64::MAX})),
            "token_not_yet_valid",
        ),
    ] {
        let response = w.refuse(&token, 401, code, case);
        if code == "token_lifetime_too_long" {
            let message = response.json()["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(message.contains("max_token_lifetime"), "{case}: {message}");
        }
    }
    // Inside the 30 s leeway, and just under the maximum lifetime: accepted.
    w.issue(
        &with(json!({"nbf": t + 10, "iat": t + 10})),
        "nbf/iat within leeway",
    );
    w.issue(
        &with(json!({"exp": t + 3500})),
        "lifetime just under the maximum",
    );
    w.issue(
        &with(json!({"iat": t - 60, "nbf": t - 60, "exp": t + 5})),
        "about to expire",
    );
}

#[test]
fn audience_is_required_and_may_be_a_list() {
    let w = World::start(&[Key::Ed25519]);
    let with_aud = |aud: Option<Value>| {
        let mut claims = w.idp.claims("agent-1");
        match aud {
            Some(aud) => claims["aud"] = aud,
            None => {
                claims.as_object_mut().expect("object").remove("aud");
            }
        }
        w.idp.sign(Key::Ed25519, &claims)
    };
    for (case, aud) in [
        ("missing aud", None),
        ("other aud", Some(json!("someone-else"))),
        ("aud list without writ", Some(json!(["a", "b"]))),
        ("empty aud list", Some(json!([]))),
        ("aud not a string", Some(json!(7))),
        ("aud with different case", Some(json!("WRIT"))),
    ] {
        let refused = w.refuse(&with_aud(aud), 401, "wrong_audience", case);
        let message = refused.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("\"writ\""),
            "{case}: the accepted audience is named: {message}"
        );
    }
    w.issue(
        &with_aud(Some(json!(["other", "writ"]))),
        "aud list with writ",
    );
    w.issue(&with_aud(Some(json!("writ"))), "aud string");
}

#[test]
fn a_token_is_used_once() {
    let w = World::start(&[Key::Rsa]);
    let token = w.idp.token(Key::Rsa, "agent-1");
    w.issue(&token, "first use");
    let response = w.refuse(&token, 401, "token_replayed", "second use");
    let message = response.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("replay"), "names the setting: {message}");

    // The same jti in a freshly signed token is the same token.
    let mut claims = w.idp.claims("agent-1");
    claims["jti"] = json!("jti-reused");
    w.issue(&w.idp.sign(Key::Rsa, &claims), "jti first use");
    claims["iat"] = json!(now() - 1);
    w.refuse(
        &w.idp.sign(Key::Rsa, &claims),
        401,
        "token_replayed",
        "same jti, new signature",
    );

    // Without a jti the token itself (its hash) is once-only.
    let mut claims = w.idp.claims("agent-2");
    claims.as_object_mut().expect("object").remove("jti");
    let no_jti = w.idp.sign(Key::Rsa, &claims);
    w.issue(&no_jti, "no jti, first use");
    w.refuse(&no_jti, 401, "token_replayed", "no jti, second use");
    // Re-encoding the signature's unused trailing bits gives another string with the same
    // signature bytes; it must not pass as a fresh token.
    let [header, payload, signature] = segments(&no_jti);
    let last = signature.chars().last().expect("signature");
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = ALPHABET.find(last).expect("base64url");
    for bits in 1..4 {
        let variant_char = ALPHABET.as_bytes()[(index & !3) | bits] as char;
        if variant_char == last {
            continue;
        }
        let variant = format!(
            "{header}.{payload}.{}{variant_char}",
            &signature[..signature.len() - 1]
        );
        let response = w.ca.request_certificate(Some(&variant), &w.body());
        assert_eq!(response.status, 401, "signature variant: {}", response.text);
    }
    assert_eq!(w.ca.audit_events(event::CERT_ISSUED).len(), 3);
}

/// The ECDSA twin of an ES256 token: the same header and payload with the signature
/// (r, s) replaced by (r, n - s), which verifies just as well. Anyone can make it from a
/// token they have seen; no key needed.
fn ecdsa_twin(token: &str) -> String {
    use p256::elliptic_curve::ff::PrimeField;
    let [header, payload, signature] = segments(token);
    let mut signature = Base64UrlUnpadded::decode_vec(signature).expect("base64url");
    assert_eq!(signature.len(), 64, "ES256 signature");
    let mut s = [0u8; 32];
    s.copy_from_slice(&signature[32..]);
    let s = p256::Scalar::from_repr(s.into()).expect("s is a scalar");
    signature[32..].copy_from_slice(&(-s).to_repr());
    format!("{header}.{payload}.{}", b64url(&signature))
}

/// A token without `jti` is once-only by what its issuer signed (header and payload), so
/// its ECDSA twin, which anyone can derive, is the same token, whichever comes first.
#[test]
fn an_ecdsa_twin_of_a_used_token_is_the_same_token() {
    let w = World::start(&[Key::Ec]);
    for first_the_twin in [false, true] {
        let mut claims = w.idp.claims("agent-1");
        claims.as_object_mut().expect("object").remove("jti");
        claims["purpose"] = json!(format!("twin first: {first_the_twin}"));
        let token = w.idp.sign(Key::Ec, &claims);
        let twin = ecdsa_twin(&token);
        assert_ne!(token, twin);
        let (first, second) = if first_the_twin {
            (&twin, &token)
        } else {
            (&token, &twin)
        };
        w.issue(first, "first use");
        w.refuse(
            second,
            401,
            "token_replayed",
            "the other form of the signature",
        );
        w.refuse(first, 401, "token_replayed", "the first form again");
    }
    // With a jti, too (it was already keyed on the jti; this pins it).
    let token = w.idp.token(Key::Ec, "agent-1");
    w.issue(&token, "jti, first use");
    w.refuse(&ecdsa_twin(&token), 401, "token_replayed", "jti, twin");
    assert_eq!(w.ca.audit_events(event::CERT_ISSUED).len(), 3);
}

#[test]
fn twenty_concurrent_uses_of_one_token_yield_one_certificate() {
    let w = World::start(&[Key::Ec]);
    let token = w.idp.token(Key::Ec, "agent-1");
    let body = w.body();
    let url = format!("{}/v1/certificates", w.ca.url);
    let barrier = Barrier::new(20);
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let response = http::post(&url, Some(&token), &body);
                    let code = if response.status == 201 {
                        String::new()
                    } else {
                        response.error_code()
                    };
                    (response.status, code)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let replayed = results
        .iter()
        .filter(|(s, c)| *s == 401 && c == "token_replayed")
        .count();
    assert_eq!((created, replayed), (1, 19), "{results:?}");
    assert_eq!(w.ca.audit_events(event::CERT_ISSUED).len(), 1);
    assert_eq!(w.ca.audit_events(event::TASK_CREATED).len(), 1);
    let rejected = w.ca.audit_events(event::TOKEN_REJECTED);
    assert_eq!(rejected.len(), 19);
    assert!(rejected.iter().all(|r| {
        r.entry
            .reason
            .as_deref()
            .is_some_and(|x| x.starts_with("token_replayed"))
            && r.entry.source_ip.as_deref() == Some("127.0.0.1")
    }));
    assert!(w.ca.audit_events(event::CERT_DENIED).is_empty());
}

#[test]
fn replay_allow_lets_a_token_be_reused() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::start(
        "",
        &format!(
            "{}{}",
            issuer_table("k8s", &idp, "replay = \"allow\""),
            policy_table("k8s")
        ),
    );
    let (pubkey, _dir) = agent_key();
    let body = deploy_request(&pubkey);
    let token = idp.token(Key::Rsa, "agent-1");
    let first = issued(&ca, &token, &body, "first use");
    let second = issued(&ca, &token, &body, "second use");
    assert_ne!(first["task_id"], second["task_id"]);
    // Without a jti, too.
    let mut claims = idp.claims("agent-1");
    claims.as_object_mut().expect("object").remove("jti");
    let no_jti = idp.sign(Key::Rsa, &claims);
    issued(&ca, &no_jti, &body, "no jti, first use");
    issued(&ca, &no_jti, &body, "no jti, second use");
    // The lifetime cap still applies.
    claims["exp"] = json!(now() + 3 * 3600);
    refused(
        &ca,
        Some(&idp.sign(Key::Rsa, &claims)),
        &body,
        401,
        "token_lifetime_too_long",
        event::TOKEN_REJECTED,
        "replay allowed, lifetime capped",
    );
}

#[test]
fn rotated_keys_are_picked_up_without_restart() {
    let w = World::start(&[Key::Rsa]);
    assert_eq!(w.idp.requests(), 1, "the CA fetches the JWKS at start-up");
    w.issue(&w.idp.token(Key::Rsa, "agent-1"), "before rotation");
    assert_eq!(w.idp.requests(), 1, "fresh keys are served from the cache");

    // The issuer publishes a new key and starts signing with it at once.
    w.idp.publish(&[Key::Rsa, Key::Ec]);
    w.issue(&w.idp.token(Key::Ec, "agent-1"), "new kid after rotation");
    assert_eq!(w.idp.requests(), 2, "one refetch for the unknown kid");
    w.issue(&w.idp.token(Key::Rsa, "agent-1"), "old key still published");

    // The old key is withdrawn; the cache keeps it until the next refresh (jwks_refresh),
    // but a stream of unknown kids right after the refetch costs the issuer nothing more.
    w.idp.publish(&[Key::Ec]);
    for i in 0..5 {
        let token = sign_with(Key::Ec, &format!("random-{i}"), &w.idp.claims("agent-1"));
        w.refuse(&token, 401, "unknown_key", &format!("random kid {i}"));
    }
    assert_eq!(
        w.idp.requests(),
        2,
        "unknown-kid refetches are rate-limited"
    );
    w.issue(&w.idp.token(Key::Ec, "agent-1"), "new key keeps working");
}

/// Waits (polling, ≤ 5 s) until nothing accepts connections at `url`'s address.
fn wait_until_closed(url: &str) {
    let addr = url.trim_start_matches("http://");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cached_keys_keep_working_while_the_issuer_is_down() {
    let World {
        idp,
        ca,
        pubkey,
        _dir,
    } = World::start(&[Key::Rsa]);
    let body = deploy_request(&pubkey);
    issued(&ca, &idp.token(Key::Rsa, "agent-1"), &body, "issuer up");
    // Tokens keep coming from the same key after the IdP's server is gone.
    let issuer = idp.issuer.clone();
    let claims = |sub: &str| {
        json!({"iss": issuer, "sub": sub, "aud": "writ", "iat": now(), "exp": now() + 300,
               "jti": format!("down-{sub}")})
    };
    drop(idp);
    wait_until_closed(&issuer);

    issued(
        &ca,
        &sign_with(Key::Rsa, Key::Rsa.kid(), &claims("agent-2")),
        &body,
        "cached key, issuer down",
    );
    // An unknown kid makes writ try the issuer, which fails: the token is refused for its
    // kid (not 503), and the last good keys stay.
    refused(
        &ca,
        Some(&sign_with(Key::Ec, Key::Ec.kid(), &claims("agent-3"))),
        &body,
        401,
        "unknown_key",
        event::TOKEN_REJECTED,
        "unknown kid, issuer down",
    );
    issued(
        &ca,
        &sign_with(Key::Rsa, Key::Rsa.kid(), &claims("agent-4")),
        &body,
        "cached key after a failed refetch",
    );
}

#[test]
fn an_issuer_never_reached_gives_503() {
    // A port nobody listens on, held for the whole test.
    let (_held, port) = common::refusing_port();
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::start(
        "",
        &format!(
            "[[issuer]]\nname = \"unreachable\"\nissuer = \"{iss}\"\njwks_url = \"http://127.0.0.1:{port}/jwks\"\naudiences = [\"writ\"]\n\n{}",
            policy_table("unreachable"),
            iss = idp.issuer,
        ),
    );
    let (pubkey, _dir) = agent_key();
    let body = deploy_request(&pubkey);
    for i in 0..2 {
        let response = refused(
            &ca,
            Some(&idp.token(Key::Rsa, "agent-1")),
            &body,
            503,
            "issuer_unavailable",
            event::TOKEN_REJECTED,
            &format!("never fetched, attempt {i}"),
        );
        assert!(
            !response.text.contains(&port.to_string()),
            "503 leaks the fetch error: {}",
            response.text
        );
        let last = ca.audit().pop().expect("record");
        assert_eq!(last.entry.issuer.as_deref(), Some("unreachable"));
    }
    assert_eq!(idp.requests(), 0, "the real IdP was never asked");
}

#[test]
fn discovery_finds_the_jwks() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = TestCa::start(
        "",
        &format!(
            "[[issuer]]\nname = \"oidc\"\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"writ\"]\n\n{}",
            idp.issuer,
            policy_table("oidc"),
        ),
    );
    assert_eq!(
        idp.requests(),
        2,
        "discovery document, then the JWKS it names"
    );
    let (pubkey, _dir) = agent_key();
    issued(
        &ca,
        &idp.token(Key::Ed25519, "agent-1"),
        &deploy_request(&pubkey),
        "key found through discovery",
    );
}

#[test]
fn a_discovery_document_for_another_issuer_is_not_used() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    // Configured with a trailing slash: the discovery URL is the same, but the document
    // names the issuer without it (OpenID Connect Discovery 1.0 §4.3: do not use it).
    let configured = format!("{}/", idp.issuer);
    let ca = TestCa::start(
        "",
        &format!(
            "[[issuer]]\nname = \"oidc\"\nissuer = \"{configured}\"\ndiscovery = true\naudiences = [\"writ\"]\n\n{}",
            policy_table("oidc"),
        ),
    );
    assert_eq!(
        idp.requests(),
        1,
        "the discovery document only, not its jwks_uri"
    );
    let mut claims = idp.claims("agent-1");
    claims["iss"] = json!(configured);
    let (pubkey, _dir) = agent_key();
    refused(
        &ca,
        Some(&idp.sign(Key::Ed25519, &claims)),
        &deploy_request(&pubkey),
        503,
        "issuer_unavailable",
        event::TOKEN_REJECTED,
        "discovery document names another issuer",
    );
}

/// Unsigned junk naming an issuer whose keys never loaded cannot make writ fetch: after
/// the start-up attempt, at most one fetch per `MIN_REFETCH_INTERVAL` (10 s), however many
/// tokens arrive, one after another or at once. The bound is computed from the time the
/// test actually took, so a slow machine cannot make it fail.
#[test]
fn tokens_for_an_issuer_whose_keys_never_loaded_do_not_trigger_fetches() {
    let started = Instant::now();
    let idp = TestIdp::start(&[Key::Rsa]);
    // The discovery document names another issuer, so the keys never load; every attempt
    // costs the IdP one request (the document), which the IdP counts.
    let configured = format!("{}/", idp.issuer);
    let ca = TestCa::start(
        "",
        &format!(
            "[[issuer]]\nname = \"oidc\"\nissuer = \"{configured}\"\ndiscovery = true\naudiences = [\"writ\"]\n\n{}",
            policy_table("oidc"),
        ),
    );
    assert_eq!(idp.requests(), 1, "one attempt at start-up");
    let (pubkey, _dir) = agent_key();
    let body = deploy_request(&pubkey);
    let junk = |i: usize| {
        format!(
            "{}.{}.{}",
            b64url_json(&json!({"alg": "RS256", "kid": format!("k{i}")})),
            b64url_json(&json!({"iss": configured, "sub": "agent-1", "aud": "writ"})),
            b64url(b"not a signature"),
        )
    };
    for i in 0..10 {
        refused(
            &ca,
            Some(&junk(i)),
            &body,
            503,
            "issuer_unavailable",
            event::TOKEN_REJECTED,
            &format!("junk token {i}"),
        );
    }
    let url = format!("{}/v1/certificates", ca.url);
    let barrier = Barrier::new(10);
    std::thread::scope(|s| {
        for i in 10..20 {
            let (barrier, url, body, token) = (&barrier, &url, &body, junk(i));
            s.spawn(move || {
                barrier.wait();
                let response = http::post(url, Some(&token), body);
                assert_eq!(response.status, 503, "{}", response.text);
            });
        }
    });
    let allowed = 1 + started.elapsed().as_secs() / 10;
    assert!(
        idp.requests() as u64 <= allowed,
        "20 junk tokens made writ fetch {} times (at most {allowed} allowed in {:?})",
        idp.requests(),
        started.elapsed()
    );
}

#[test]
fn login_templates_take_only_valid_login_names_from_claims() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(
        &idp,
        "",
        r#"
name = "github"
subject = "repo:*"
logins = ["{claims.repository_owner}"]
hosts = ["*.prod.example.com"]
"#,
    );
    let (pubkey, _dir) = agent_key();
    let token = |owner: Option<&str>| {
        let mut claims = idp.claims("repo:acme/app:ref:refs/heads/main");
        if let Some(owner) = owner {
            claims["repository_owner"] = json!(owner);
        }
        idp.sign(Key::Rsa, &claims)
    };
    let request =
        |login: &str| certificate_request(&pubkey, &[login], &["web-01.prod.example.com"], None);

    let granted = issued(&ca, &token(Some("acme")), &request("acme"), "owner acme");
    let task = granted["task_id"].as_str().expect("task_id");
    assert_eq!(granted["principals"], json!([format!("writ:{task}:acme")]));

    for (owner, login) in [
        ("a,b", "a"),
        ("acme,root", "root"),
        ("a\nroot", "root"),
        ("root\n", "root"),
        ("*", "root"),
        ("r*", "root"),
        ("?oot", "root"),
        ("Root", "root"),
        ("root ", "root"),
        ("", "root"),
    ] {
        let response = refused(
            &ca,
            Some(&token(Some(owner))),
            &request(login),
            403,
            "login_template_invalid",
            event::CERT_DENIED,
            &format!("owner {owner:?}"),
        );
        assert!(
            response.text.contains("github"),
            "names the policy: {}",
            response.text
        );
    }
    refused(
        &ca,
        Some(&token(None)),
        &request("acme"),
        403,
        "login_template_invalid",
        event::CERT_DENIED,
        "owner claim missing",
    );
    // A valid owner grants only itself.
    refused(
        &ca,
        Some(&token(Some("acme"))),
        &request("root"),
        403,
        "login_not_allowed",
        event::CERT_DENIED,
        "other login",
    );
    assert_eq!(ca.audit_events(event::CERT_ISSUED).len(), 1);
}
