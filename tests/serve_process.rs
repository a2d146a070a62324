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
