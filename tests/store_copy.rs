//! Moving a SQLite store to PostgreSQL (README "Moving a SQLite store to PostgreSQL"),
//! with the real binary throughout: a real `writ serve` on a SQLite file fills it through
//! the API and `writ admin` (tasks, a renewal, a completed task, a revoked certificate, a
//! rotation and a schedule, a signed checkpoint, a file sink's position); `writ admin store
//! copy` is refused while that server runs, then copies the stopped store into a scratch
//! PostgreSQL database (see `common::postgres`); `writ admin` on the copy shows the same
//! keys, tasks and audit head, and `audit verify` passes; a second copy is refused and
//! changes nothing; a replica started on the copy issues, refuses a token the SQLite
//! store had consumed, and its sink goes on from the copied position. `writ admin store
//! migrate` on both backends, fresh and already migrated.
//!
//! Every test is under `postgres::` so `--skip postgres` leaves them out where no
//! PostgreSQL runs.

mod common;

mod postgres {
    use std::path::Path;
    use std::process::{Command, Output};
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::common::ca::certificate_request;
    use super::common::http;
    use super::common::idp::{Key, TestIdp};
    use super::common::postgres::ScratchDatabase;
    use super::common::serve::Server;
    use super::common::{database_count, public_key, ssh_keygen};

    /// `writ admin --config CONFIG ARGS…` (the real binary), with no `PGPASSWORD`: the
    /// PostgreSQL password comes from the files the configuration and `--password-file`
    /// name.
    fn admin(config: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_writ"))
            .arg("admin")
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("WRIT_CONFIG")
            .env_remove("PGPASSWORD")
            .output()
            .expect("run writ admin")
    }

    /// [`admin`] that must succeed; its stdout.
    fn admin_ok(config: &Path, args: &[&str]) -> String {
        let out = admin(config, args);
        assert!(
            out.status.success(),
            "writ admin {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`admin_ok`] with `--json` output, parsed.
    fn admin_json(config: &Path, args: &[&str]) -> Value {
        let text = admin_ok(config, args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }

    /// Write a secret file (mode 0600).
    fn write_secret(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, format!("{text}\n")).expect("secret");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    /// The CA's configuration on `storage` (a `[storage]` body): the shared passphrase,
    /// the test issuer with replay protection, agents and admins, a file sink, and
    /// `extra` (more `[audit]` keys).
    fn config(idp: &TestIdp, shared: &Path, storage: &str, audit_extra: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n\
             [storage]\n{storage}\n\n\
             [ca]\npassphrase_file = \"{pass}\"\n\n\
             [audit]\n{audit_extra}\n\n\
             [[audit.sink]]\nname = \"file\"\ntype = \"jsonl\"\npath = \"{sink}\"\n\n\
             [[issuer]]\nname = \"test\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\n\
             audiences = [\"writ\"]\nreplay = \"reject\"\n\n\
             [[policy]]\nname = \"agents\"\nissuer = \"test\"\nsubject = \"agent-*\"\n\
             logins = [\"deploy\"]\nhosts = [\"*.example.com\"]\n\n\
             [[policy]]\nname = \"admins\"\nissuer = \"test\"\nsubject = \"admin-*\"\n\
             role = \"admin\"\n",
            pass = shared.join("ca.pass").display(),
            sink = shared.join("audit.jsonl").display(),
            iss = idp.issuer,
            jwks = idp.jwks_url(),
        )
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50)); // poll interval
        }
    }

    /// What the test issues, and the server it issued it from.
    struct Issued {
        server: Server,
        /// The task renewed, and the token that opened it.
        renewed_task: String,
        opening_token: String,
        /// The task completed.
        completed_task: String,
    }

    /// A `writ serve` on SQLite, filled through its API and `writ admin`.
    fn fill(idp: &TestIdp, shared: &Path) -> Issued {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = format!(
            "url = \"sqlite://{}\"",
            dir.path().join("writ.db").display()
        );
        let text = config(idp, shared, &storage, "");
        let server = Server::try_start_config(dir, &text, &[])
            .unwrap_or_else(|(status, log)| panic!("writ serve exited with {status}:\n{log}"));
        let sqlite = server.config_path();
        let key = public_key(&ssh_keygen(shared, "agent", &["-t", "ed25519"]));
        let issue = |token: &str| {
            let r = http::post(
                &format!("{}/v1/certificates", server.url),
                Some(token),
                &certificate_request(&key, &["deploy"], &["web-1.example.com"], Some(120)),
            );
            assert_eq!(r.status, 201, "{}", r.text);
            r.json()
        };

        // A task and its renewal.
        let opening_token = idp.token(Key::Ed25519, "agent-1");
        let first = issue(&opening_token);
        let renewed_task = first["task_id"].as_str().expect("task id").to_owned();
        let renewal = http::post(
            &format!("{}/v1/tasks/{renewed_task}/certificates", server.url),
            Some(&idp.token(Key::Ed25519, "agent-1")),
            &json!({"public_key": key, "ttl_seconds": 60}),
        );
        assert_eq!(renewal.status, 201, "{}", renewal.text);
        // A completed task.
        let done = issue(&idp.token(Key::Ed25519, "agent-2"));
        let completed_task = done["task_id"].as_str().expect("task id").to_owned();
        let completed = http::post(
            &format!("{}/v1/tasks/{completed_task}/complete", server.url),
            Some(&idp.token(Key::Ed25519, "agent-2")),
            &json!({"reason": "done"}),
        );
        assert_eq!(completed.status, 200, "{}", completed.text);
        // One certificate revoked by an admin.
        let revoked = issue(&idp.token(Key::Ed25519, "agent-3"));
        let serial = revoked["serial"]
            .as_str()
            .map_or_else(|| revoked["serial"].to_string(), str::to_owned);
        let revocation = http::post(
            &format!("{}/v1/certificates/{serial}/revoke", server.url),
            Some(&idp.token(Key::Ed25519, "admin-1")),
            &json!({"reason": "key leaked"}),
        );
        assert_eq!(revocation.status, 200, "{}", revocation.text);
        // A rotation (the server made an active and a next key at start) and a schedule,
        // then a certificate from the new key.
        admin_ok(&sqlite, &["ca", "rotate", "--force"]);
        admin_ok(&sqlite, &["ca", "schedule", "--every", "30d"]);
        issue(&idp.token(Key::Ed25519, "agent-4"));
        // A signed checkpoint, and the sink caught up with the head.
        admin_ok(&sqlite, &["audit", "checkpoint"]);
        let db = server.db_path();
        let head = || database_count(&db, "SELECT MAX(seq) FROM audit_events");
        let delivered = || {
            database_count(
                &db,
                "SELECT COALESCE((SELECT seq FROM audit_sink_positions WHERE sink = 'file'), 0)",
            )
        };
        wait_for("the sink to deliver every record", || delivered() == head());
        Issued {
            server,
            renewed_task,
            opening_token,
            completed_task,
        }
    }

    /// The `seq`s in the sink's file, in order.
    fn delivered_seqs(file: &Path) -> Vec<i64> {
        std::fs::read_to_string(file)
            .expect("sink file")
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).expect("JSON line")["seq"]
                    .as_i64()
                    .expect("seq")
            })
            .collect()
    }

    #[test]
    fn a_sqlite_store_moves_to_postgresql_whole_and_once() {
        let idp = TestIdp::start(&[Key::Ed25519]);
        let shared = tempfile::tempdir().expect("tempdir");
        write_secret(&shared.path().join("ca.pass"), "copy passphrase");
        write_secret(
            &shared.path().join("db.password"),
            &ScratchDatabase::password(),
        );
        let Issued {
            mut server,
            renewed_task,
            opening_token,
            completed_task,
        } = fill(&idp, shared.path());
        let sqlite = server.config_path();
        let db = ScratchDatabase::create("store_copy");
        let password_file = shared.path().join("db.password");
        let copy_args = [
            "store",
            "copy",
            "--to",
            db.url.as_str(),
            "--password-file",
            password_file.to_str().expect("path"),
            "--json",
        ];

        // Refused while the server runs, before the destination is touched (the `store
        // migrate` below finds it unmigrated).
        let refused = admin(&sqlite, &copy_args);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("writ serve") && stderr.contains("stop it"),
            "{stderr}"
        );

        server.signal("TERM");
        assert!(
            server.wait_exit(Duration::from_secs(30)).is_some(),
            "writ serve did not stop:\n{}",
            server.log()
        );
        let source_keys = admin_json(&sqlite, &["ca", "list", "--json"]);
        let source_audit = admin_json(&sqlite, &["audit", "verify", "--json"]);
        assert_eq!(source_audit["ok"], true, "{source_audit}");
        assert_eq!(source_audit["checkpoints_matched"], 1, "{source_audit}");
        let source_tasks: Vec<Value> = [&renewed_task, &completed_task]
            .iter()
            .map(|id| admin_json(&sqlite, &["task", "show", id, "--json"]))
            .collect();

        // The PostgreSQL configuration: the password from a file, the checkpoint file the
        // SQLite store kept next to its database.
        let pg_dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = sqlite.with_file_name("audit-checkpoints.jsonl");
        let pg_text = config(
            &idp,
            shared.path(),
            &format!(
                "url = \"{}\"\npassword_file = \"{}\"",
                db.url,
                password_file.display()
            ),
            &format!("checkpoint_file = \"{}\"", checkpoints.display()),
        );
        let pg = pg_dir.path().join("writ.toml");
        std::fs::write(&pg, &pg_text).expect("config");

        // `store migrate`: a fresh database gets every migration, then none; the SQLite
        // store is up to date.
        let fresh = admin_json(&pg, &["store", "migrate", "--json"]);
        assert_eq!(fresh["up_to_date"], false, "{fresh}");
        assert_eq!(fresh["applied"][0]["version"], 1, "{fresh}");
        let again = admin_ok(&pg, &["store", "migrate"]);
        assert!(again.contains("is up to date"), "{again}");
        let sqlite_migrated = admin_json(&sqlite, &["store", "migrate", "--json"]);
        assert_eq!(sqlite_migrated["up_to_date"], true, "{sqlite_migrated}");

        // The copy.
        let copied = admin_json(&sqlite, &copy_args);
        let rows = |table: &str| -> i64 {
            copied["tables"]
                .as_array()
                .expect("tables")
                .iter()
                .find(|t| t["table"] == table)
                .and_then(|t| t["rows"].as_i64())
                .unwrap_or_else(|| panic!("{table} in {copied}"))
        };
        // Every table as many rows as the SQLite file holds, and what the test made.
        let source = server.db_path();
        for table in [
            "ca_keys",
            "ca_rotation_schedule",
            "tasks",
            "certificates",
            "audit_events",
            "audit_checkpoints",
            "audit_sink_positions",
        ] {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            assert_eq!(rows(table), database_count(&source, &sql), "{table}");
        }
        assert_eq!(
            rows("used_tokens"),
            database_count(
                &source,
                "SELECT (SELECT COUNT(*) FROM used_tokens) \
                 + (SELECT COUNT(*) FROM used_tokens_before_0006)"
            )
        );
        assert!(rows("used_tokens") >= 5, "{copied}");
        assert_eq!(
            rows("ca_keys"),
            5,
            "user retiring, active, next; host active, next: {copied}"
        );
        assert_eq!(rows("ca_rotation_schedule"), 1, "{copied}");
        assert_eq!(rows("tasks"), 4, "{copied}");
        assert_eq!(rows("certificates"), 5, "{copied}");
        assert_eq!(rows("audit_checkpoints"), 1, "{copied}");
        assert_eq!(rows("audit_sink_positions"), 1, "{copied}");
        assert_eq!(
            rows("audit_events"),
            source_audit["records"].as_i64().expect("records")
        );
        assert_eq!(copied["migrated"], json!([]), "migrated before: {copied}");
        assert_eq!(copied["audit_head"]["seq"], source_audit["last_seq"]);
        assert_eq!(copied["audit_head"]["hash"], source_audit["head_hash"]);
        assert_eq!(copied["verify"]["ok"], true, "{copied}");

        // The copy through `writ admin` on the PostgreSQL configuration.
        let copy_audit = admin_json(&pg, &["audit", "verify", "--json"]);
        assert_eq!(copy_audit["ok"], true, "{copy_audit}");
        for field in [
            "first_seq",
            "last_seq",
            "records",
            "head_hash",
            "checkpoints_matched",
        ] {
            assert_eq!(copy_audit[field], source_audit[field], "{field}");
        }
        assert_eq!(admin_json(&pg, &["ca", "list", "--json"]), source_keys);
        for (id, source) in [&renewed_task, &completed_task].iter().zip(&source_tasks) {
            assert_eq!(&admin_json(&pg, &["task", "show", id, "--json"]), source);
        }
        assert_eq!(
            source_tasks[0]["certificates"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(source_tasks[1]["state"], "completed");

        // A second copy is refused and changes nothing.
        let second = admin(&sqlite, &copy_args);
        assert!(!second.status.success());
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(stderr.contains("not empty"), "{stderr}");
        assert_eq!(admin_json(&pg, &["audit", "verify", "--json"]), copy_audit);
        assert_eq!(admin_json(&pg, &["ca", "list", "--json"]), source_keys);

        // A replica on the copy: it issues, refuses a token the SQLite store consumed,
        // and its sink goes on from the copied position without repeating a record.
        let replica = Server::try_start_config(pg_dir, &pg_text, &[])
            .unwrap_or_else(|(status, log)| panic!("replica exited with {status}:\n{log}"));
        let key = public_key(&ssh_keygen(shared.path(), "agent-5", &["-t", "ed25519"]));
        let issue = |token: &str| {
            http::post(
                &format!("{}/v1/certificates", replica.url),
                Some(token),
                &certificate_request(&key, &["deploy"], &["web-1.example.com"], Some(120)),
            )
        };
        let replayed = issue(&opening_token);
        assert_eq!(replayed.status, 401, "{}", replayed.text);
        assert_eq!(replayed.error_code(), "token_replayed");
        let fresh_issue = issue(&idp.token(Key::Ed25519, "agent-5"));
        assert_eq!(fresh_issue.status, 201, "{}", fresh_issue.text);
        let sink = shared.path().join("audit.jsonl");
        let head = || {
            admin_json(&pg, &["audit", "verify", "--json"])["last_seq"]
                .as_i64()
                .expect("head")
        };
        wait_for("the replica's sink to catch up", || {
            delivered_seqs(&sink).last().copied() == Some(head())
        });
        let seqs = delivered_seqs(&sink);
        let expected: Vec<i64> = (1..=head()).collect();
        assert_eq!(seqs, expected, "the sink skipped or repeated a record");
        let after = admin_json(&pg, &["audit", "verify", "--json"]);
        assert_eq!(after["ok"], true, "{after}");
    }
}
