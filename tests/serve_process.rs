//! The real `writ serve` binary, for what only the process shows:
//! - its log: values that came from outside (a signed token's `sub`) are escaped, so a
//!   client cannot forge log lines or send terminal escape sequences to whoever reads the
//!   log; a task's `purpose` with line-separator or bidi characters is refused;
//! - its time limits: a client that never finishes its headers, or trickles its body, is
//!   cut off; shutdown completes within its deadline whatever clients do.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ca::certificate_request;
use common::idp::{Key, TestIdp};
use common::serve::Server;
use common::{http, public_key, ssh_keygen};

const FORGED: &str = "2026-12-02T04:00:00.000000Z  INFO writ: admin granted root";

#[test]
fn a_subject_cannot_forge_log_lines_or_send_escape_sequences() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let server = Server::start(&idp, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]));
    let subject = format!("agent-1\n{FORGED}\u{1b}[2J\u{2028}{FORGED}\r");
    let token = idp.token(Key::Rsa, &subject);
    let issued = http::post(
        &format!("{}/v1/certificates", server.url),
        Some(&token),
        &certificate_request(&key, &["deploy"], &["web.example.com"], None),
    );
    assert_eq!(issued.status, 201, "{}", issued.text);

    // The issuance line is logged before the response is sent.
    let log = server.log();
    let issuance = log
        .lines()
        .find(|l| l.contains("certificate issued"))
        .unwrap_or_else(|| panic!("no issuance line:\n{log}"));
    assert!(issuance.contains("agent-1"), "{issuance}");
    assert!(
        !log.lines().any(|l| l.starts_with(FORGED)),
        "a forged line reached the log:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "raw ESC in the log:\n{log:?}");
    assert!(!log.contains('\r') && !log.contains('\u{2028}'), "{log:?}");
}

#[test]
fn a_purpose_with_separators_or_bidi_controls_is_refused() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let server = Server::start(&idp, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]));
    for purpose in [
        "line\u{2028}break",
        "para\u{2029}",
        "\u{202e}gol",
        "iso\u{2066}late",
    ] {
        let mut body = certificate_request(&key, &["deploy"], &["web.example.com"], None);
        body["task"]["purpose"] = purpose.into();
        let refused = http::post(
            &format!("{}/v1/certificates", server.url),
            Some(&idp.token(Key::Rsa, "agent-1")),
            &body,
        );
        assert_eq!(refused.status, 400, "{purpose:?}: {}", refused.text);
        assert_eq!(refused.error_code(), "invalid_task", "{purpose:?}");
    }
}

/// Connect to `server` and send `bytes`, leaving the connection open.
fn send_partial(server: &Server, bytes: &[u8]) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(bytes).expect("send");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    stream
}

/// Read until the server closes the connection; panics if it is still open after the
/// read timeout (60 s, far beyond the limits under test).
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection still open: {e}"),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[test]
fn a_client_that_stalls_is_cut_off_within_the_limits() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let server = Server::start(&idp, "client_timeout = \"1s\"\nrequest_timeout = \"2s\"");

    // Half the headers, then nothing: closed after client_timeout.
    let mut stalled = send_partial(&server, b"POST /v1/certificates HTTP/1.1\r\nHost: ca\r\n");
    let started = Instant::now();
    let answer = read_until_closed(&mut stalled);
    assert!(!answer.contains("201"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(60));

    // Whole headers, a tenth of the body, then nothing: 408 in the JSON envelope.
    let mut trickling = send_partial(
        &server,
        b"POST /v1/certificates HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"public_key\"",
    );
    let answer = read_until_closed(&mut trickling);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    // Answered like any other request: with its id, and counted under its route.
    assert!(
        answer.to_ascii_lowercase().contains("\r\nx-request-id: "),
        "{answer}"
    );
    let metrics = common::metrics::scrape(&server.url);
    let timed_out = [("endpoint", "/v1/certificates"), ("status", "408")];
    assert_eq!(metrics.value("writ_requests_total", &timed_out), 1.0);

    // An idle keep-alive connection is closed too, and the server still serves.
    let mut idle = send_partial(&server, b"GET /healthz HTTP/1.1\r\nHost: ca\r\n\r\n");
    let answer = read_until_closed(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(http::get(&format!("{}/healthz", server.url)).status, 200);
}

#[test]
fn shutdown_completes_within_its_deadline_whatever_clients_do() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let mut server = Server::start(
        &idp,
        "client_timeout = \"5m\"\nrequest_timeout = \"5m\"\nshutdown_timeout = \"1s\"",
    );
    assert_eq!(http::get(&format!("{}/healthz", server.url)).status, 200);
    let _half_body = send_partial(
        &server,
        b"POST /v1/certificates HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"public_key\"",
    );
    let _half_headers = send_partial(&server, b"GET /healthz HTTP/1.1\r\nHost");
    server.signal("INT");
    // The limits under test are 1 s; 60 s only guards against a machine under load.
    let status = server
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("writ serve still running after SIGINT:\n{}", server.log()));
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(server.log().contains("stopped"), "{}", server.log());
}

/// SIGTERM under load: every certificate the server issued reached its client, and every
/// certificate a client received has its durable `cert.issued` record — the two sets are
/// the same. New connections after the signal are refused. A connection the kernel had
/// queued but the server had not yet accepted when the listener closed is reset by the
/// kernel before the server read anything: that request left no record and no answer,
/// which the equality checks.
#[test]
fn sigterm_under_load_answers_every_request_and_loses_no_record() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let idp = TestIdp::start(&[Key::Rsa]);
    let mut server = Server::start(
        &idp,
        "shutdown_timeout = \"30s\"\n\n[limits]\nissuances_per_minute_per_ip = 100000",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]));
    let body = certificate_request(&key, &["deploy"], &["a.example.com"], None).to_string();
    let url = format!("{}/v1/certificates", server.url);
    let issued = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..6)
        .map(|client| {
            let tokens: Vec<String> = (0..400)
                .map(|n| idp.token(Key::Rsa, &format!("agent-{client}-{n}")))
                .collect();
            let (url, body, issued) = (url.clone(), body.clone(), Arc::clone(&issued));
            std::thread::spawn(move || {
                // A fresh connection per request: a connection the server closed while
                // idle is not a request it dropped.
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .max_idle_connections(0)
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                let mut serials = Vec::new();
                for token in tokens {
                    let sent = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("authorization", &format!("Bearer {token}"))
                        .send(body.as_str());
                    match sent {
                        Ok(mut response) => {
                            let status = response.status().as_u16();
                            let text = response
                                .body_mut()
                                .read_to_string()
                                .expect("a whole answer");
                            assert_eq!(status, 201, "{text}");
                            let answer: serde_json::Value =
                                serde_json::from_str(&text).expect("json");
                            serials.push(answer["serial"].as_str().expect("serial").to_owned());
                            issued.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ureq::Error::Io(e))
                            if e.kind() == std::io::ErrorKind::ConnectionRefused =>
                        {
                            return serials;
                        }
                        // Queued in the kernel, never accepted (see above); the equality
                        // below fails if the server had issued anything for it.
                        Err(_) => {}
                    }
                }
                serials
            })
        })
        .collect();
    // Under load (readiness: certificates are being issued), then the signal.
    let deadline = Instant::now() + Duration::from_secs(60);
    while issued.load(Ordering::Relaxed) < 30 {
        assert!(Instant::now() < deadline, "no load:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(10)); // poll interval
    }
    server.signal("TERM");
    let serials: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    let status = server
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("writ serve still running after SIGTERM:\n{}", server.log()));
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(serials.len() >= 30);
    let db = common::database(&server.db_path());
    let mut recorded = db
        .prepare("SELECT serial FROM audit_events WHERE event = 'cert.issued'")
        .expect("query");
    let recorded: std::collections::HashSet<String> = recorded
        .query_map([], |row| row.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("serials");
    for serial in &serials {
        assert!(
            recorded.contains(serial),
            "certificate {serial} has no record"
        );
    }
    assert_eq!(
        recorded.len(),
        serials.len(),
        "certificates issued and recorded that never reached their client"
    );
}
