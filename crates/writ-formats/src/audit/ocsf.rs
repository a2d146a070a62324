//! writ audit records as OCSF 1.3 events (Open Cybersecurity Schema Framework), the shape
//! most SIEMs ingest natively (Amazon Security Lake, Splunk, Sentinel, Chronicle, …).
//!
//! | writ event | OCSF class | activity |
//! |---|---|---|
//! | `token.rejected` | Authentication (3002) | Logon (1), failure: a workload failed to authenticate to the CA |
//! | `cert.used` | Authentication (3002) | Logon (1), success: a certificate logged in to a host |
//! | `cert.use_denied` | Authentication (3002) | Logon (1), failure |
//! | `task.created` | Account Change (3001) | Create (1): a task is a short-lived account |
//! | `task.completed` | Account Change (3001) | Delete (6): the task ended normally |
//! | `task.revoked` | Account Change (3001) | Disable (5): an admin cut access off |
//! | `task.denied` | Account Change (3001) | Other (99) "Change Task", failure |
//! | `cert.issued` / `cert.denied` | Account Change (3001) | Other (99) "Issue Certificate", success / failure |
//! | `cert.revoked` | Account Change (3001) | Other (99) "Revoke Certificate" |
//! | `ca.key.created` | Account Change (3001) | Create (1), the CA key as a system account |
//! | `ca.key.revoked` / `ca.key.retired` | Account Change (3001) | Disable (5) / Delete (6) |
//! | other `ca.key.*` (`rotated`, `scheduled`, …) | Account Change (3001) | Other (99), named after the event |
//! | `task.run` | Process Activity (1007) | Launch (1): an agent ran a command with a task (`process.cmd_line`, `dst_endpoint.hostname`) |
//! | `audit.pruned` | Event Log Activity (1008) | Delete (2): old audit records were deleted |
//!
//! Every event carries the writ record unchanged under `unmapped.writ` (including `seq`,
//! `prev_hash` and `hash`, so the chain can be re-verified from a SIEM), `metadata.uid` =
//! the record's hash, `metadata.sequence` = its `seq` and `metadata.correlation_uid` = the
//! request id. Pure.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AuditRecord, Outcome, event};

/// OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// OCSF class and activity for an event name: `(class_uid, class_name, category_uid,
/// category_name, activity_id, activity_name)`.
pub fn classify(event_name: &str) -> (u32, &'static str, u32, &'static str, u32, String) {
    const IAM: (u32, &str) = (3, "Identity & Access Management");
    let auth = |activity: u32, name: &str| {
        (
            3002,
            "Authentication",
            IAM.0,
            IAM.1,
            activity,
            name.to_owned(),
        )
    };
    let account = |activity: u32, name: &str| {
        (
            3001,
            "Account Change",
            IAM.0,
            IAM.1,
            activity,
            name.to_owned(),
        )
    };
    match event_name {
        event::TOKEN_REJECTED | event::CERT_USED | event::CERT_USE_DENIED => auth(1, "Logon"),
        event::CERT_SESSION_ENDED => auth(2, "Logoff"),
        event::TASK_CREATED | event::CA_KEY_CREATED => account(1, "Create"),
        event::TASK_COMPLETED => account(6, "Delete"),
        event::TASK_REVOKED => account(5, "Disable"),
        event::TASK_DENIED => account(99, "Change Task"),
        event::CERT_ISSUED
        | event::CERT_DENIED
        | event::HOST_CERT_ISSUED
        | event::HOST_CERT_DENIED => account(99, "Issue Certificate"),
        event::CERT_REVOKED | event::HOST_CERT_REVOKED => account(99, "Revoke Certificate"),
        "ca.key.revoked" => account(5, "Disable"),
        "ca.key.retired" => account(6, "Delete"),
        event::INVENTORY_REPORTED => (
            5001,
            "Device Inventory Info",
            5,
            "Discovery",
            1,
            "Log".into(),
        ),
        event::TASK_RUN => (
            1007,
            "Process Activity",
            1,
            "System Activity",
            1,
            "Launch".into(),
        ),
        event::AUDIT_PRUNED => (
            1008,
            "Event Log Activity",
            1,
            "System Activity",
            2,
            "Delete".into(),
        ),
        other => account(99, other),
    }
}

/// Milliseconds since the Unix epoch of a stored time (0 if it does not parse).
fn epoch_millis(time: &str) -> i64 {
    OffsetDateTime::parse(time, &Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        .unwrap_or(0)
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<&String>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), Value::String(v.clone()));
    }
}

/// The OCSF event for one record.
pub fn event(record: &AuditRecord) -> Value {
    let e = &record.entry;
    let (class_uid, class_name, category_uid, category_name, activity_id, activity_name) =
        classify(&e.event);
    let success = e.outcome != Some(Outcome::Failure);

    let mut actor_user = Map::new();
    put(&mut actor_user, "uid", e.subject.as_ref());
    put(&mut actor_user, "name", e.subject.as_ref());
    let mut actor = Map::new();
    if !actor_user.is_empty() {
        actor.insert("user".into(), Value::Object(actor_user));
    }
    if let Some(issuer) = &e.issuer {
        actor.insert("idp".into(), json!({ "name": issuer }));
    }
    if let Some(policy) = &e.policy {
        actor.insert(
            "authorizations".into(),
            json!([{ "decision": if success { "allow" } else { "deny" }, "policy": { "name": policy } }]),
        );
    }

    let mut out = Map::new();
    out.insert("class_uid".into(), json!(class_uid));
    out.insert("class_name".into(), json!(class_name));
    out.insert("category_uid".into(), json!(category_uid));
    out.insert("category_name".into(), json!(category_name));
    out.insert("activity_id".into(), json!(activity_id));
    out.insert("activity_name".into(), json!(activity_name));
    out.insert(
        "type_uid".into(),
        json!(u64::from(class_uid) * 100 + u64::from(activity_id)),
    );
    out.insert(
        "type_name".into(),
        json!(format!("{class_name}: {activity_name}")),
    );
    out.insert("time".into(), json!(epoch_millis(&record.time)));
    out.insert("severity_id".into(), json!(if success { 1 } else { 2 }));
    out.insert(
        "severity".into(),
        json!(if success { "Informational" } else { "Low" }),
    );
    out.insert("status_id".into(), json!(if success { 1 } else { 2 }));
    out.insert(
        "status".into(),
        json!(if success { "Success" } else { "Failure" }),
    );
    if let Some(reason) = &e.reason {
        out.insert("status_detail".into(), json!(reason));
    }
    out.insert("message".into(), json!(message(record)));
    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": {"name": "writ", "vendor_name": "writ", "version": env!("CARGO_PKG_VERSION")},
        "log_name": "writ audit",
        "uid": record.hash,
        "sequence": record.seq,
        "original_time": record.time,
    });
    if let Some(request_id) = &e.request_id {
        metadata["correlation_uid"] = json!(request_id);
    }
    out.insert("metadata".into(), metadata);
    if !actor.is_empty() {
        out.insert("actor".into(), Value::Object(actor));
    }
    if let Some(ip) = &e.source_ip {
        out.insert("src_endpoint".into(), json!({ "ip": ip }));
    }

    match class_uid {
        3002 => {
            // The account that logs in: the login on the host, or, for a refused token, the
            // workload (whose subject is usually unknown then).
            let user = match (e.logins.first(), &e.subject) {
                (Some(login), _) if e.event != event::TOKEN_REJECTED => json!({ "name": login }),
                (_, Some(subject)) => json!({ "uid": subject, "name": subject }),
                _ => json!({ "type_id": 0, "type": "Unknown" }),
            };
            out.insert("user".into(), user);
            if e.event == event::TOKEN_REJECTED {
                let pop = e.issuer.as_deref() == Some("proof-of-possession");
                out.insert("auth_protocol_id".into(), json!(if pop { 99 } else { 4 }));
                out.insert(
                    "auth_protocol".into(),
                    json!(if pop {
                        "SSHSIG proof of possession"
                    } else {
                        "OpenID"
                    }),
                );
                out.insert("service".into(), json!({ "name": "writ" }));
            } else {
                out.insert("auth_protocol_id".into(), json!(99));
                out.insert("auth_protocol".into(), json!("SSH certificate"));
                out.insert("is_remote".into(), json!(true));
                if let Some(host) = &e.host {
                    out.insert("dst_endpoint".into(), json!({ "hostname": host }));
                }
            }
            if let Some(serial) = &e.serial {
                let mut certificate = Map::new();
                certificate.insert("serial_number".into(), json!(serial));
                certificate.insert(
                    "issuer".into(),
                    json!(e.ca_fingerprint.as_deref().unwrap_or("writ")),
                );
                if let Some(fp) = &e.key_fingerprint {
                    certificate.insert(
                        "fingerprints".into(),
                        json!([{ "algorithm_id": 3, "algorithm": "SHA-256", "value": fp }]),
                    );
                }
                out.insert("certificate".into(), Value::Object(certificate));
            }
        }
        3001 => {
            let user = if e.event.starts_with("ca.key.") {
                json!({
                    "uid": e.ca_fingerprint.as_deref().unwrap_or("unknown"),
                    "name": "writ CA key",
                    "type_id": 3,
                    "type": "System",
                })
            } else {
                let mut user = Map::new();
                put(&mut user, "uid", e.task_id.as_ref());
                if let Some(task) = &e.task_id {
                    user.insert("name".into(), json!(format!("writ task {task}")));
                }
                user.insert("type_id".into(), json!(99));
                user.insert("type".into(), json!("writ task"));
                Value::Object(user)
            };
            out.insert("user".into(), user);
            if let Some(policy) = &e.policy {
                out.insert("policy".into(), json!({ "name": policy }));
            }
        }
        1007 => {
            // The process an agent started on a host, as the login the task granted.
            let mut process = Map::new();
            put(&mut process, "cmd_line", e.command.as_ref());
            if let Some(login) = e.logins.first() {
                process.insert("user".into(), json!({ "name": login }));
            }
            out.insert("process".into(), Value::Object(process));
            if let Some(host) = &e.host {
                out.insert("dst_endpoint".into(), json!({ "hostname": host }));
                out.insert("device".into(), json!({ "hostname": host, "type_id": 0 }));
            }
        }
        _ => {}
    }
    out.insert(
        "unmapped".into(),
        json!({ "writ": serde_json::to_value(record).unwrap_or(Value::Null) }),
    );
    Value::Object(out)
}

/// A one-line human summary.
fn message(record: &AuditRecord) -> String {
    let e = &record.entry;
    let mut text = format!("writ {}", e.event);
    if let Some(serial) = &e.serial {
        text.push_str(&format!(" serial {serial}"));
    }
    if let Some(task) = &e.task_id {
        text.push_str(&format!(" task {task}"));
    }
    if let Some(subject) = &e.subject {
        text.push_str(&format!(" by {subject}"));
    }
    if let Some(host) = &e.host {
        text.push_str(&format!(" on {host}"));
    }
    if e.outcome == Some(Outcome::Failure) {
        text.push_str(" refused");
    }
    if let Some(reason) = &e.reason {
        text.push_str(&format!(": {reason}"));
    }
    if let Some(purpose) = &e.purpose {
        text.push_str(&format!(" (purpose: {purpose})"));
    }
    if let Some(command) = &e.command {
        text.push_str(&format!(": {}", command.escape_debug()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, GENESIS_HASH, chain_hash};

    fn record(entry: AuditEntry) -> AuditRecord {
        let time = "2026-03-04T05:06:07.089Z".to_owned();
        let hash = chain_hash(9, &time, &entry, GENESIS_HASH);
        AuditRecord {
            seq: 9,
            time,
            entry,
            prev_hash: GENESIS_HASH.into(),
            hash,
        }
    }

    #[test]
    fn a_use_is_an_authentication_logon() {
        let mut entry = AuditEntry::new(event::CERT_USED, Outcome::Success);
        entry.subject = Some("host:web-01".into());
        entry.host = Some("web-01.example.com".into());
        entry.logins = vec!["deploy".into()];
        entry.serial = Some("123".into());
        entry.key_fingerprint = Some("SHA256:abc".into());
        entry.request_id = Some("r1".into());
        let v = event(&record(entry));
        assert_eq!(v["class_uid"], 3002);
        assert_eq!(v["type_uid"], 300201);
        assert_eq!(v["status_id"], 1);
        assert_eq!(v["time"], 1_772_600_767_089_i64);
        assert_eq!(v["user"]["name"], "deploy");
        assert_eq!(v["dst_endpoint"]["hostname"], "web-01.example.com");
        assert_eq!(v["certificate"]["serial_number"], "123");
        assert_eq!(v["metadata"]["sequence"], 9);
        assert_eq!(v["metadata"]["correlation_uid"], "r1");
        assert_eq!(v["unmapped"]["writ"]["event"], "cert.used");
    }

    #[test]
    fn refusals_and_changes_map_to_their_classes() {
        let mut rejected = AuditEntry::new(event::TOKEN_REJECTED, Outcome::Failure);
        rejected.reason = Some("token_expired: expired".into());
        let v = event(&record(rejected));
        assert_eq!(
            (v["class_uid"].clone(), v["status_id"].clone()),
            (json!(3002), json!(2))
        );
        assert_eq!(v["status_detail"], "token_expired: expired");
        assert_eq!(v["auth_protocol"], "OpenID");

        let mut issued = AuditEntry::new(event::CERT_ISSUED, Outcome::Success);
        issued.task_id = Some("t1".into());
        issued.policy = Some("deployers".into());
        let v = event(&record(issued));
        assert_eq!(v["class_uid"], 3001);
        assert_eq!(v["activity_id"], 99);
        assert_eq!(v["user"]["uid"], "t1");
        assert_eq!(
            v["actor"]["authorizations"][0]["policy"]["name"],
            "deployers"
        );

        assert_eq!(classify(event::TASK_REVOKED).4, 5);
        assert_eq!(classify(event::TASK_COMPLETED).4, 6);
        let mut run = AuditEntry::new(event::TASK_RUN, Outcome::Success);
        run.host = Some("web-01".into());
        run.logins = vec!["deploy".into()];
        run.command = Some("df -h".into());
        let ocsf = event(&record(run));
        assert_eq!(ocsf["class_uid"], 1007);
        assert_eq!(ocsf["activity_id"], 1);
        assert_eq!(ocsf["process"]["cmd_line"], "df -h");
        assert_eq!(ocsf["process"]["user"]["name"], "deploy");
        assert_eq!(ocsf["dst_endpoint"]["hostname"], "web-01");
        assert_eq!(classify(event::AUDIT_PRUNED).0, 1008);
        assert_eq!(classify("ca.key.rotated").5, "ca.key.rotated");
        assert_eq!(classify("ca.key.revoked").4, 5);
    }
}
