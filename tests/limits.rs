//! Limits on a real server: rate limits answer 429 with `Retry-After` and recover, a
//! flood of junk tokens is answered and accounted for without one durable record each
//! (the database grows by less than 1 MB over 20,000 of them) while honest issuance keeps
//! working, oversized headers get 431, and a task's certificates are capped.

mod common;

use std::time::{Duration, Instant};

use base64ct::{Base64UrlUnpadded, Encoding};
use common::ca::{TestCa, certificate_request};
use common::idp::{Key, TestIdp};
use common::{public_key, ssh_keygen};
use serde_json::{Value, json};

const POLICY: &str = r#"
name = "deployers"
subject = "agent-*"
logins = ["deploy"]
hosts = ["*.prod.example.com"]
max_cert_ttl = "5m"
"#;

/// A CA with `limits` (TOML body of `[limits]`) and `server` (of `[server]`).
fn ca_with(idp: &TestIdp, limits: &str, server: &str) -> TestCa {
    TestCa::start(
        "",
        &format!(
            "[server]\n{server}\n\n[limits]\n{limits}\n\n\
             [[issuer]]\nname = \"test\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\n\
             audiences = [\"writ\"]\nreplay = \"allow\"\n\n\
             [[policy]]\nissuer = \"test\"\n{POLICY}\n",
            iss = idp.issuer,
            jwks = idp.jwks_url(),
        ),
    )
}

/// One keep-alive HTTP client that never turns a status into an error.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// POST `body` to `url` with `token`, from the client address `forwarded_for` (through
/// the CA's trusted proxy, this test) if given.
fn post(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    forwarded_for: Option<&str>,
    body: &Value,
) -> Answer {
    let mut request = agent
        .post(url)
        .header("content-type", "application/json")
        .header("authorization", &format!("Bearer {token}"));
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    let mut response = request.send(body.to_string()).expect("request");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.body_mut().read_to_string().expect("body");
    Answer {
        status,
        retry_after,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn database_bytes(ca: &TestCa) -> u64 {
    ["writ.db", "writ.db-wal"]
        .iter()
        .map(|name| std::fs::metadata(ca.dir().join(name)).map_or(0, |m| m.len()))
        .sum()
}

#[test]
fn an_identity_over_its_rate_gets_429_with_retry_after_and_recovers() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = ca_with(&idp, "issuances_per_minute_per_identity = 60", "");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]));
    let body = certificate_request(&key, &["deploy"], &["a.prod.example.com"], None);
    let url = format!("{}/v1/certificates", ca.url);
    let client = agent();
    let token = idp.token(Key::Rsa, "agent-1");
    // The burst (60) goes through; then 429, however long the burst took (the budget
    // refills one a second meanwhile, so a slow machine gets a few more first).
    let mut issued = 0;
    let limited = loop {
        let answer = post(&client, &url, &token, None, &body);
        if answer.status != 201 {
            break answer;
        }
        issued += 1;
        assert!(issued < 200, "never limited");
    };
    assert!(issued >= 60, "only {issued} before the limit");
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.body["error"]["code"], "rate_limited");
    let wait: u64 = limited
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Another identity is not held back.
    let other = post(&client, &url, &idp.token(Key::Rsa, "agent-2"), None, &body);
    assert_eq!(other.status, 201, "{}", other.body);
    // The refusal was recorded, naming the identity.
    let denied = ca.audit_events(writ::audit::event::CERT_DENIED);
    assert!(
        denied
            .iter()
            .any(|r| r.entry.subject.as_deref() == Some("agent-1")
                && r.entry
                    .reason
                    .as_deref()
                    .is_some_and(|why| why.starts_with("rate_limited"))),
        "{denied:?}"
    );
    // Counted for monitoring.
    let metrics = common::http::get(&format!("{}/metrics", ca.url)).text;
    let limited_total: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("writ_rate_limited_total "))
        .expect("writ_rate_limited_total")
        .trim()
        .parse()
        .expect("number");
    assert!(limited_total >= 1.0, "{metrics}");
    // After Retry-After the identity issues again.
    std::thread::sleep(Duration::from_secs(wait)); // the wait Retry-After asks for: time must pass
    let again = post(&client, &url, &token, None, &body);
    assert_eq!(again.status, 201, "{}", again.body);
}

#[test]
fn a_flood_of_junk_tokens_grows_the_database_by_less_than_a_megabyte_and_is_summarised() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = ca_with(
        &idp,
        "failed_auth_per_minute_per_ip = 10\nflood_summary_interval = \"1s\"",
        "trusted_proxies = [\"127.0.0.1\"]",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]));
    let body = certificate_request(&key, &["deploy"], &["a.prod.example.com"], None);
    let url = format!("{}/v1/certificates", ca.url);
    let client = agent();
    let honest = |n: usize| {
        let token = idp.token(Key::Rsa, &format!("agent-{n}"));
        post(&client, &url, &token, Some("192.0.2.10"), &body)
    };
    assert_eq!(honest(0).status, 201);
    let before = database_bytes(&ca);

    // Unsigned tokens that name the configured issuer, from one address.
    let claims = json!({"iss": idp.issuer, "sub": "x", "aud": "writ"}).to_string();
    let junk = format!(
        "{}.{}.",
        Base64UrlUnpadded::encode_string(br#"{"alg":"none"}"#),
        Base64UrlUnpadded::encode_string(claims.as_bytes())
    );
    const FLOOD: usize = 20_000;
    let mut statuses = std::collections::BTreeMap::new();
    for n in 0..FLOOD {
        let answer = post(&client, &url, &junk, Some("198.51.100.66"), &body);
        *statuses.entry(answer.status).or_insert(0) += 1;
        if n % 2_000 == 1_999 {
            let answer = honest(n);
            assert_eq!(
                answer.status, 201,
                "honest issuance during the flood: {}",
                answer.body
            );
        }
    }
    // Ten refused one by one (and a few more if the flood outlasted a refill of the
    // budget, one every 6 s), every other one answered 429 without looking at the token.
    let refused = *statuses.get(&401).expect("401s");
    assert!((10..20).contains(&refused), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&(FLOOD - refused)), "{statuses:?}");

    // Every refusal is accounted for: those records of their own, the rest in summaries.
    let deadline = Instant::now() + Duration::from_secs(20);
    let summarised = loop {
        let counted: u64 = ca
            .audit_events(writ::audit::event::TOKEN_REJECTED)
            .iter()
            .filter_map(|r| r.entry.reason.as_deref()?.strip_prefix("flood_summary: "))
            .map(|rest| {
                rest.split(' ')
                    .next()
                    .expect("count")
                    .parse::<u64>()
                    .expect("number")
            })
            .sum();
        if counted >= (FLOOD - refused) as u64 || Instant::now() > deadline {
            break counted;
        }
        std::thread::sleep(Duration::from_millis(200)); // poll interval
    };
    assert_eq!(summarised, (FLOOD - refused) as u64);
    let single: Vec<_> = ca
        .audit_events(writ::audit::event::TOKEN_REJECTED)
        .into_iter()
        .filter(|r| {
            !r.entry
                .reason
                .as_deref()
                .unwrap_or("")
                .starts_with("flood_summary: ")
        })
        .collect();
    assert_eq!(single.len(), refused);
    assert!(
        single
            .iter()
            .all(|r| r.entry.source_ip.as_deref() == Some("198.51.100.66"))
    );
    let grown = database_bytes(&ca).saturating_sub(before);
    assert!(grown < 1024 * 1024, "the database grew by {grown} bytes");
}

#[test]
fn oversized_headers_get_431_in_the_envelope() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = ca_with(&idp, "max_headers = 20\nmax_header_bytes = 8192", "");
    let client = agent();
    let mut many = client.get(&format!("{}/healthz", ca.url));
    for n in 0..30 {
        many = many.header(&format!("x-extra-{n}"), "1");
    }
    let mut response = many.call().expect("request");
    assert_eq!(response.status().as_u16(), 431);
    let body: Value =
        serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("json");
    assert_eq!(body["error"]["code"], "headers_too_large");

    let big = "x".repeat(9_000);
    let mut response = client
        .get(&format!("{}/healthz", ca.url))
        .header("x-big", &big)
        .call()
        .expect("request");
    assert_eq!(response.status().as_u16(), 431);
    let body: Value =
        serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("json");
    assert_eq!(body["error"]["code"], "headers_too_large");

    let fine = client
        .get(&format!("{}/healthz", ca.url))
        .call()
        .expect("request");
    assert_eq!(fine.status().as_u16(), 200);
}

#[test]
fn a_task_gets_at_most_its_cap_of_certificates() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = ca_with(&idp, "certificates_per_task = 2", "");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]));
    let client = agent();
    let token = idp.token(Key::Rsa, "agent-1");
    let opened = post(
        &client,
        &format!("{}/v1/certificates", ca.url),
        &token,
        None,
        &certificate_request(&key, &["deploy"], &["a.prod.example.com"], None),
    );
    assert_eq!(opened.status, 201, "{}", opened.body);
    let task_id = opened.body["task_id"].as_str().expect("task_id");
    let renew_url = format!("{}/v1/tasks/{task_id}/certificates", ca.url);
    let renewal = json!({"public_key": key});
    let second = post(&client, &renew_url, &token, None, &renewal);
    assert_eq!(second.status, 201, "{}", second.body);
    let third = post(&client, &renew_url, &token, None, &renewal);
    assert_eq!(third.status, 403, "{}", third.body);
    assert_eq!(third.body["error"]["code"], "task_certificate_limit");
}

#[test]
fn requests_beyond_the_concurrency_cap_get_503_overloaded_until_one_finishes() {
    use std::io::Write;

    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = ca_with(&idp, "max_concurrent_requests = 1", "");
    let address = ca.url.trim_start_matches("http://").to_owned();
    // One request in flight: its headers are in, its body never finishes.
    let mut slow = std::net::TcpStream::connect(&address).expect("connect");
    slow.write_all(
        b"POST /v1/certificates HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"public_key\"",
    )
    .expect("send");
    let client = agent();
    let health = || {
        client
            .get(&format!("{}/healthz", ca.url))
            .call()
            .expect("request")
    };
    // Readiness: once the server has taken the slow request, the next one is turned away.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = loop {
        let response = health();
        if response.status().as_u16() == 503 {
            break response;
        }
        assert!(Instant::now() < deadline, "never overloaded");
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    };
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value =
        serde_json::from_str(&refused.body_mut().read_to_string().expect("body")).expect("json");
    assert_eq!(body["error"]["code"], "overloaded");
    // The slow client goes away: its request ends, and the next one is served.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(20);
    while health().status().as_u16() != 200 {
        assert!(Instant::now() < deadline, "still overloaded");
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    use std::io::{Read, Write};

    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = ca_with(&idp, "max_connections = 1", "");
    let address = ca.url.trim_start_matches("http://").to_owned();
    let ask = |stream: &mut std::net::TcpStream| {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n")
            .expect("send");
    };
    // The one slot, held by a connection that is served and stays open (keep-alive).
    let mut holder = std::net::TcpStream::connect(&address).expect("connect");
    holder
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: ca\r\n\r\n")
        .expect("send");
    let mut first = [0u8; 12];
    holder.read_exact(&mut first).expect("answer");
    assert_eq!(&first, b"HTTP/1.1 200");
    // A second connection is left in the backlog: its request gets no answer meanwhile.
    let mut waiting = std::net::TcpStream::connect(&address).expect("connect");
    ask(&mut waiting);
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let early = waiting.read(&mut byte);
    assert!(
        early.is_err(),
        "answered while the only slot was taken: {early:?}"
    );
    // The slot frees: the waiting request is answered.
    drop(holder);
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
