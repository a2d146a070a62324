//! Monitoring (README "Monitoring"), against a real CA over HTTP: `GET /metrics` parses
//! with a strict Prometheus text-format parser, names every series of SPEC §9 and moves
//! with what happens; every response carries `X-Request-Id`, the `request_id` of its audit
//! records; `/readyz` names what is not ready; `metrics_listen` moves `/metrics` to an
//! address of its own; `log_format = "json"` writes one JSON object per line.

mod common;

use common::agents::World;
use common::ca::{TestCa, certificate_request};
use common::http;
use common::idp::{Key, TestIdp};
use common::metrics::{parse, scrape};
use common::serve::Server;
use common::{public_key, refusing_port, ssh_keygen};
use prom_text_format_parser::Type;
use writ::audit::event;

/// Every series SPEC §9 names, as its `# TYPE` line names it, and its type.
const SERIES: [(&str, Type); 11] = [
    ("writ_certificates_issued_total", Type::Counter),
    ("writ_requests_total", Type::Counter),
    ("writ_refusals_total", Type::Counter),
    ("writ_request_duration_seconds", Type::Histogram),
    ("writ_store_commit_duration_seconds", Type::Histogram),
    ("writ_group_commit_batch_size", Type::Histogram),
    ("writ_jwks_fetches_total", Type::Counter),
    ("writ_active_tasks", Type::Gauge),
    ("writ_ca_key_age_seconds", Type::Gauge),
    ("writ_audit_sink_lag_records", Type::Gauge),
    ("writ_rate_limited_total", Type::Counter),
];

#[test]
fn metrics_parse_name_every_series_and_move_with_what_happens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("audit.jsonl");
    let world = World::start(&format!(
        "[audit]\n[[audit.sink]]\nname = \"siem\"\ntype = \"jsonl\"\npath = \"{}\"\n",
        sink.display()
    ));
    let url = &world.ca.url;
    // Labelled series appear with their first sample: a request, then every series but
    // the refusals is there.
    assert_eq!(http::get(&format!("{url}/healthz")).status, 200);
    let before = scrape(url);
    for (name, kind) in SERIES {
        let want = (name != "writ_refusals_total").then_some(kind);
        assert_eq!(before.kind(name), want, "{name}:\n{}", before.text);
    }
    assert_eq!(before.value("writ_rate_limited_total", &[]), 0.0);
    // The start-up fetch of the test issuer's keys.
    assert!(
        before.value(
            "writ_jwks_fetches_total",
            &[("issuer", "test"), ("result", "ok")]
        ) >= 1.0
    );
    assert!(before.value("writ_ca_key_age_seconds", &[]) >= 0.0);
    assert_eq!(
        before.label_sets("writ_audit_sink_lag_records"),
        [vec![("sink".to_owned(), "siem".to_owned())]]
    );

    // One certificate: issued +1, one more active task, one more group commit.
    let opened = world.open_task();
    let task_id = opened["task_id"].as_str().expect("task id");
    // A refused token: refusals{reason} +1 (the audit record's code).
    let refused = world.ca.request_certificate(
        Some(&world.idp.token(Key::RsaOther, "agent-1")),
        &certificate_request(
            &public_key(&world.key),
            &["deploy"],
            &["web-01.prod.example.com"],
            None,
        ),
    );
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(refused.error_code(), "unknown_key");
    // A task read (its endpoint is the template) and an unknown path.
    let shown = world.get(&format!("/v1/tasks/{task_id}"), &world.token("agent-1"));
    assert_eq!(shown.status, 200, "{}", shown.text);
    assert_eq!(http::get(&format!("{url}/no/such/path")).status, 404);

    let after = scrape(url);
    for (name, kind) in SERIES {
        assert_eq!(after.kind(name), Some(kind), "{name}:\n{}", after.text);
    }
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(moved("writ_certificates_issued_total", &[]), 1.0);
    assert_eq!(
        moved("writ_refusals_total", &[("reason", "unknown_key")]),
        1.0
    );
    assert_eq!(after.value("writ_active_tasks", &[]), 1.0);
    for (endpoint, status) in [
        ("/v1/certificates", "201"),
        ("/v1/certificates", "401"),
        ("/v1/tasks/{task_id}", "200"),
        ("other", "404"),
    ] {
        let labels = [("endpoint", endpoint), ("status", status)];
        assert_eq!(moved("writ_requests_total", &labels), 1.0, "{labels:?}");
    }
    // Only route templates and `other` are endpoints, never a raw path.
    for labels in after.label_sets("writ_requests_total") {
        let endpoint = &labels
            .iter()
            .find(|(k, _)| k == "endpoint")
            .expect("endpoint")
            .1;
        assert!(
            endpoint == "other" || !endpoint.contains(task_id),
            "raw path as a label: {labels:?}"
        );
    }
    let certificates = [("endpoint", "/v1/certificates")];
    assert_eq!(
        after.count("writ_request_duration_seconds", &certificates)
            - before.count("writ_request_duration_seconds", &certificates),
        2.0
    );
    assert!(
        after.count("writ_group_commit_batch_size", &[])
            > before.count("writ_group_commit_batch_size", &[])
    );
    assert!(
        after.count("writ_store_commit_duration_seconds", &[])
            > before.count("writ_store_commit_duration_seconds", &[])
    );
    // The sink's lag is the log's head minus what it delivered: never negative, never
    // more than the log holds.
    let records = world.ca.audit().len() as f64;
    let lag = after.value("writ_audit_sink_lag_records", &[("sink", "siem")]);
    assert!((0.0..=records).contains(&lag), "lag {lag} of {records}");
}

#[test]
fn every_response_carries_the_request_id_its_audit_records_carry() {
    let world = World::start("");
    let url = &world.ca.url;

    // A refused request: its one record has the response's id.
    let refused = world.ca.request_certificate(
        Some(&world.idp.token(Key::RsaOther, "agent-1")),
        &certificate_request(
            &public_key(&world.key),
            &["deploy"],
            &["web-01.prod.example.com"],
            None,
        ),
    );
    assert_eq!(refused.status, 401);
    let id = refused
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_owned();
    assert_eq!(id.len(), 16, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let rejected = world.ca.audit_events(event::TOKEN_REJECTED);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].entry.request_id.as_deref(), Some(id.as_str()));

    // An issuance: both its records carry the id of the 201.
    let issued = world.ca.request_certificate(
        Some(&world.token("agent-1")),
        &certificate_request(
            &public_key(&world.key),
            &["deploy"],
            &["web-01.prod.example.com"],
            None,
        ),
    );
    assert_eq!(issued.status, 201, "{}", issued.text);
    let id = issued.header("x-request-id").expect("X-Request-Id");
    for name in [event::TASK_CREATED, event::CERT_ISSUED] {
        let records = world.ca.audit_events(name);
        assert_eq!(records[0].entry.request_id.as_deref(), Some(id), "{name}");
    }

    // Requests that leave no record get one too, a fresh one each time.
    let mut seen = std::collections::HashSet::new();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/revocations",
        "/nope",
        "/healthz",
    ] {
        let response = http::get(&format!("{url}{path}"));
        let id = response.header("x-request-id").expect(path).to_owned();
        assert!(seen.insert(id), "{path}: repeated request id");
    }
    // 405 too, with Allow.
    let wrong_method = http::post_raw(&format!("{url}/v1/krl"), None, "");
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.header("allow").is_some());
    assert!(wrong_method.header("x-request-id").is_some());
}

#[test]
fn readyz_names_what_is_not_ready() {
    // Ready: the store answers and the active key signs as itself.
    let world = World::start("");
    let ready = http::get(&format!("{}/readyz", world.ca.url));
    assert_eq!(ready.status, 200, "{}", ready.text);
    let body = ready.json();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"], "ok");
    assert_eq!(body["checks"]["signing_key"], "ok");
    assert!(body["checks"].get("issuers").is_none(), "{body}");

    // With readyz_requires_issuers, an issuer whose keys never loaded makes it 503.
    let idp = TestIdp::start(&[Key::Rsa]);
    let (_held, port) = refusing_port();
    let ca = TestCa::start(
        "",
        &format!(
            "[server]\nreadyz_requires_issuers = true\n\n\
             [[issuer]]\nname = \"up\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\naudiences = [\"writ\"]\n\n\
             [[issuer]]\nname = \"down\"\nissuer = \"https://down.example\"\n\
             jwks_url = \"http://127.0.0.1:{port}/jwks\"\naudiences = [\"writ\"]\n",
            iss = idp.issuer,
            jwks = idp.jwks_url(),
        ),
    );
    let not_ready = http::get(&format!("{}/readyz", ca.url));
    assert_eq!(not_ready.status, 503, "{}", not_ready.text);
    assert_eq!(not_ready.error_code(), "not_ready");
    let error = &not_ready.json()["error"];
    assert_eq!(error["not_ready"], serde_json::json!(["issuers"]));
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("down") && !message.contains("up,"),
        "{message}"
    );
    assert!(not_ready.header("x-request-id").is_some());
}

#[test]
fn metrics_listen_serves_metrics_there_and_not_on_the_api() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let server = Server::start(&idp, "metrics_listen = \"127.0.0.1:0\"");
    let metrics_url = server.metrics_url.clone().expect("metrics address");
    assert_ne!(metrics_url, server.url);
    let on_api = http::get(&format!("{}/metrics", server.url));
    assert_eq!(on_api.status, 404, "{}", on_api.text);
    let metrics = scrape(&metrics_url);
    for (name, kind) in SERIES {
        // No refusal yet, and no audit sink configured.
        let absent = ["writ_refusals_total", "writ_audit_sink_lag_records"];
        let want = (!absent.contains(&name)).then_some(kind);
        assert_eq!(metrics.kind(name), want, "{name}");
    }
    // The metrics listener serves nothing else.
    assert_eq!(http::get(&format!("{metrics_url}/healthz")).status, 404);
    // Both 404s are counted there (as `other`), and the first scrape under /metrics.
    let again = scrape(&metrics_url);
    assert_eq!(
        again.value(
            "writ_requests_total",
            &[("endpoint", "other"), ("status", "404")]
        ),
        2.0
    );
    assert_eq!(
        again.value(
            "writ_requests_total",
            &[("endpoint", "/metrics"), ("status", "200")]
        ),
        1.0
    );
}

#[test]
fn json_logs_are_one_object_per_line_and_keep_hostile_values_inside_strings() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let server = Server::start(&idp, "log_format = \"json\"");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]));
    let forged = "{\"level\":\"INFO\",\"message\":\"admin granted root\"}";
    let subject = format!("agent-1\n{forged}\u{1b}[2J\r");
    let issued = http::post(
        &format!("{}/v1/certificates", server.url),
        Some(&idp.token(Key::Rsa, &subject)),
        &certificate_request(&key, &["deploy"], &["web.example.com"], None),
    );
    assert_eq!(issued.status, 201, "{}", issued.text);
    let refused = http::post(
        &format!("{}/v1/certificates", server.url),
        Some("not-a-token"),
        &certificate_request(&key, &["deploy"], &["web.example.com"], None),
    );
    assert_eq!(refused.status, 401);

    // Issued and refused lines are written before the answers.
    let log = server.log();
    assert!(!log.contains('\u{1b}'), "raw ESC in the log: {log:?}");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    for event in &events {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event.get(field).is_some(), "{field} missing: {event}");
        }
    }
    let issuance = events
        .iter()
        .find(|e| e["message"] == "certificate issued")
        .unwrap_or_else(|| panic!("no issuance event:\n{log}"));
    // The hostile subject is one string value of the issuance's own event.
    assert!(
        issuance["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("\"agent-1") && s.contains("admin granted root")),
        "{issuance}"
    );
    assert!(!events.iter().any(|e| e["message"] == "admin granted root"));
    let refusal = events
        .iter()
        .find(|e| e["message"] == "request refused")
        .unwrap_or_else(|| panic!("no refusal event:\n{log}"));
    assert_eq!(refusal["status"], 401);
    assert_eq!(refusal["code"], "token_malformed");
    assert_eq!(
        refusal["request_id"].as_str(),
        refused.header("x-request-id")
    );
}

#[test]
fn a_strict_parser_refuses_what_is_not_the_format() {
    // The parser the tests rely on is not tolerant: a broken line fails the scrape.
    let good =
        "# HELP a_total A.\n# TYPE a_total counter\na_total{endpoint=\"/v1/tasks/{task_id}\"} 1\n";
    assert_eq!(
        parse(good).value("a_total", &[("endpoint", "/v1/tasks/{task_id}")]),
        1.0
    );
    let bad = "# TYPE a_total counter\na_total{endpoint=\"/x} 1\n";
    assert!(prom_text_format_parser::Scrape::parse(bad).is_err());
}
