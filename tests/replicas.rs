//! Several `writ serve` replicas on one PostgreSQL database (README "Running several
//! replicas"): real processes, a real PostgreSQL (a scratch database per test, see
//! `common::postgres`), a real token issuer over HTTP.
//!
//! - 500 concurrent issuances spread over two replicas get 500 distinct serials and one
//!   audit chain that `writ admin audit verify` accepts; a token used on one is refused
//!   on the other; a task completed on one gets no certificate from the other; a
//!   rotation made on one is served by both.
//! - `kill -9` of one replica in the middle of a burst loses no record of a certificate a
//!   client received.
//! - The database out of reach in the middle of load (the replicas reach it through a
//!   relay the test cuts): 503s, never a certificate without its record, and issuance
//!   comes back by itself.
//! - Exactly one replica runs the audit sink and the scheduled rotation; when it dies
//!   the other takes over.
//!
//! Every test is under `postgres::` so `--skip postgres` leaves them out where no
//! PostgreSQL runs.

mod common;

mod postgres {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::path::Path;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::common::ca::certificate_request;
    use super::common::http;
    use super::common::idp::{Key, TestIdp};
    use super::common::postgres::ScratchDatabase;
    use super::common::serve::Server;
    use super::common::{public_key, ssh_keygen};

    /// One replica's configuration: the shared database (password from a file), the
    /// shared CA passphrase, the test issuer with replay protection, one policy, limits
    /// far above the tests' load, `extra` appended (sinks).
    fn config(
        idp: &TestIdp,
        db: &ScratchDatabase,
        shared: &Path,
        ca_extra: &str,
        extra: &str,
    ) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n\
             [storage]\nurl = \"{url}\"\npassword_file = \"{pw}\"\npool_size = 8\n\n\
             [ca]\npassphrase_file = \"{pass}\"\n{ca_extra}\n\n\
             [limits]\nissuances_per_minute_per_ip = 1000000\nissuances_per_minute_per_identity = 1000000\n\n\
             [[issuer]]\nname = \"test\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\naudiences = [\"writ\"]\nreplay = \"reject\"\n\n\
             [[policy]]\nname = \"agents\"\nissuer = \"test\"\nsubject = \"agent-*\"\n\
             logins = [\"deploy\"]\nhosts = [\"*.example.com\"]\n\n{extra}",
            url = db.url,
            pw = shared.join("db.password").display(),
            pass = shared.join("ca.pass").display(),
            iss = idp.issuer,
            jwks = idp.jwks_url(),
        )
    }

    /// Two replicas on one scratch database, and what they share.
    struct Replicas {
        idp: TestIdp,
        db: ScratchDatabase,
        shared: tempfile::TempDir,
        servers: Vec<Server>,
        key: String,
    }

    impl Replicas {
        /// `n` replicas, started one after the other (each waits for its listener).
        fn start(n: usize, ca_extra: &str, extra: &str) -> Replicas {
            let idp = TestIdp::start(&[Key::Rsa]);
            let db = ScratchDatabase::create("replicas");
            let shared = tempfile::tempdir().expect("tempdir");
            write_secret(
                &shared.path().join("db.password"),
                &ScratchDatabase::password(),
            );
            write_secret(&shared.path().join("ca.pass"), "replica passphrase");
            let key = public_key(&ssh_keygen(shared.path(), "agent", &["-t", "ed25519"]));
            let mut replicas = Replicas {
                idp,
                db,
                shared,
                servers: Vec::new(),
                key,
            };
            for _ in 0..n {
                replicas.add(ca_extra, extra);
            }
            replicas
        }

        fn add(&mut self, ca_extra: &str, extra: &str) {
            let text = config(&self.idp, &self.db, self.shared.path(), ca_extra, extra);
            let dir = tempfile::tempdir().expect("tempdir");
            let server = Server::try_start_config(dir, &text, &[])
                .unwrap_or_else(|(status, log)| panic!("replica exited with {status}:\n{log}"));
            self.servers.push(server);
        }

        fn url(&self, i: usize) -> &str {
            &self.servers[i].url
        }

        fn token(&self, sub: &str) -> String {
            self.idp.token(Key::Rsa, sub)
        }

        /// `POST /v1/certificates` to replica `i` with `token`.
        fn issue_with(&self, i: usize, token: &str) -> http::Response {
            http::post(
                &format!("{}/v1/certificates", self.url(i)),
                Some(token),
                &certificate_request(&self.key, &["deploy"], &["web.example.com"], Some(60)),
            )
        }

        /// `writ admin --config <replica i's config> ARGS`.
        fn admin(&self, i: usize, args: &[&str]) -> std::process::Output {
            Command::new(env!("CARGO_BIN_EXE_writ"))
                .arg("admin")
                .arg("--config")
                .arg(self.servers[i].config_path())
                .args(args)
                .env_remove("WRIT_CONFIG")
                .output()
                .expect("run writ admin")
        }

        fn admin_ok(&self, i: usize, args: &[&str]) -> String {
            let out = self.admin(i, args);
            assert!(
                out.status.success(),
                "writ admin {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// Every audit record, through `writ admin audit export` (JSON Lines).
        fn audit(&self) -> Vec<Value> {
            self.admin_ok(0, &["audit", "export"])
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON record"))
                .collect()
        }

        /// The active CA key's fingerprint as replica `i` serves it (`/readyz`).
        fn fingerprint(&self, i: usize) -> String {
            let ready = http::get(&format!("{}/readyz", self.url(i)));
            assert_eq!(ready.status, 200, "{}", ready.text);
            ready.json()["ca_fingerprint"]
                .as_str()
                .expect("ca_fingerprint")
                .to_owned()
        }
    }

    fn write_secret(path: &Path, text: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .expect("secret file");
        file.write_all(text.as_bytes()).expect("write secret");
    }

    /// The serial of an answer (a decimal string), or "" if it has none.
    fn serial_of(answer: &Value) -> String {
        match &answer["serial"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        }
    }

    /// Serials of `cert.issued` records, with how often each appears.
    fn issued_serials(records: &[Value]) -> BTreeMap<String, usize> {
        let mut serials = BTreeMap::new();
        for record in records.iter().filter(|r| r["event"] == "cert.issued") {
            let serial = serial_of(record);
            *serials.entry(serial).or_insert(0) += 1;
        }
        serials
    }

    /// Poll `done` every 50 ms until it holds or `limit` passes; whether it held.
    fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50)); // poll interval
        }
    }

    #[test]
    fn two_replicas_share_serials_chain_tokens_tasks_and_keys() {
        let r = Replicas::start(2, "", "");
        // 500 issuances from 10 threads, alternating replicas.
        let serials = Mutex::new(Vec::new());
        thread::scope(|scope| {
            for t in 0..10 {
                let (r, serials) = (&r, &serials);
                scope.spawn(move || {
                    for n in 0..50 {
                        let answer = r.issue_with((t + n) % 2, &r.token("agent-burst"));
                        assert_eq!(answer.status, 201, "{}", answer.text);
                        let serial = serial_of(&answer.json());
                        serials.lock().expect("lock").push(serial);
                    }
                });
            }
        });
        let serials = serials.into_inner().expect("lock");
        let distinct: BTreeSet<&String> = serials.iter().collect();
        assert_eq!((serials.len(), distinct.len()), (500, 500));
        let issued = issued_serials(&r.audit());
        assert_eq!(issued.len(), 500);
        assert!(issued.values().all(|n| *n == 1));
        let verified = r.admin_ok(1, &["audit", "verify"]);
        assert!(verified.contains("audit log OK"), "{verified}");

        // A token used on one replica is refused on the other.
        let token = r.token("agent-replay");
        assert_eq!(r.issue_with(0, &token).status, 201);
        let replayed = r.issue_with(1, &token);
        assert_eq!(replayed.status, 401, "{}", replayed.text);
        assert_eq!(replayed.error_code(), "token_replayed");

        // A task completed on one gets no certificate from the other.
        let task = r.issue_with(0, &r.token("agent-task")).json();
        let task_id = task["task_id"].as_str().expect("task_id");
        let done = http::post(
            &format!("{}/v1/tasks/{task_id}/complete", r.url(0)),
            Some(&r.token("agent-task")),
            &json!({"reason": "done"}),
        );
        assert_eq!(done.status, 200, "{}", done.text);
        let more = http::post(
            &format!("{}/v1/tasks/{task_id}/certificates", r.url(1)),
            Some(&r.token("agent-task")),
            &json!({"public_key": r.key, "ttl_seconds": 60}),
        );
        assert_eq!(more.status, 409, "{}", more.text);
        assert_eq!(more.error_code(), "task_not_active");

        // A rotation on one is served by both: each reloads its keyring every 2 s.
        let before = r.fingerprint(1);
        r.admin_ok(0, &["ca", "rotate", "--force"]);
        let rotated_at = Instant::now();
        assert!(
            eventually(Duration::from_secs(10), || r.fingerprint(0) != before
                && r.fingerprint(1) != before
                && r.fingerprint(0) == r.fingerprint(1)),
            "both replicas serve the new key"
        );
        // One maintenance interval (2 s) is the design bound; a loaded test machine may
        // add scheduling delay, so this only says how long it took.
        eprintln!(
            "both replicas served the new key after {:?}",
            rotated_at.elapsed()
        );
        let after = r.issue_with(1, &r.token("agent-after")).json();
        assert_eq!(
            after["ca_fingerprint"].as_str(),
            Some(r.fingerprint(0).as_str())
        );
    }

    #[test]
    fn a_replica_killed_mid_burst_loses_no_record_of_a_certificate_it_returned() {
        let r = Replicas::start(2, "", "");
        let stop = AtomicBool::new(false);
        let received = Mutex::new(Vec::new());
        thread::scope(|scope| {
            for t in 0..8 {
                let (r, stop, received) = (&r, &stop, &received);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Requests to the killed replica fail in transport: no answer,
                        // nothing received.
                        let Ok(answer) = http::try_post(
                            &format!("{}/v1/certificates", r.url(t % 2)),
                            Some(&r.token("agent-kill")),
                            &certificate_request(
                                &r.key,
                                &["deploy"],
                                &["web.example.com"],
                                Some(60),
                            ),
                        ) else {
                            continue;
                        };
                        if answer.status == 201 {
                            let serial = serial_of(&answer.json());
                            received.lock().expect("lock").push(serial);
                        }
                    }
                });
            }
            // Kill replica 0 once it has answered some, while requests are in flight.
            assert!(eventually(Duration::from_secs(60), || received
                .lock()
                .expect("lock")
                .len()
                >= 100));
            r.servers[0].signal("KILL");
            let after_kill = received.lock().expect("lock").len();
            assert!(eventually(Duration::from_secs(60), || received
                .lock()
                .expect("lock")
                .len()
                >= after_kill + 50));
            stop.store(true, Ordering::Relaxed);
        });
        let received = received.into_inner().expect("lock");
        let issued = issued_serials(&r.audit());
        let missing: Vec<&String> = received
            .iter()
            .filter(|s| !issued.contains_key(*s))
            .collect();
        assert!(
            missing.is_empty(),
            "certificates without a record: {missing:?}"
        );
        let verified = r.admin_ok(1, &["audit", "verify"]);
        assert!(verified.contains("audit log OK"), "{verified}");
    }

    /// A TCP relay between the replicas and PostgreSQL that the test can cut (every
    /// connection closed, new ones closed at once) and restore: to a replica, the
    /// database stopped and came back.
    struct Relay {
        port: u16,
        cut: Arc<AtomicBool>,
        open: Arc<Mutex<Vec<TcpStream>>>,
    }

    impl Relay {
        fn start(target: String) -> Relay {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
            let port = listener.local_addr().expect("addr").port();
            let cut = Arc::new(AtomicBool::new(false));
            let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
            let (cut2, open2) = (cut.clone(), open.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if cut2.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&target) else {
                        continue;
                    };
                    {
                        let mut open = open2.lock().expect("lock");
                        open.push(client.try_clone().expect("clone"));
                        open.push(server.try_clone().expect("clone"));
                    }
                    for (mut from, mut to) in [
                        (
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        ),
                        (server, client),
                    ] {
                        thread::spawn(move || {
                            let mut buffer = [0u8; 16 * 1024];
                            while let Ok(n) = from.read(&mut buffer) {
                                if n == 0 || to.write_all(&buffer[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                        });
                    }
                }
            });
            Relay { port, cut, open }
        }

        fn cut(&self) {
            self.cut.store(true, Ordering::SeqCst);
            for stream in self.open.lock().expect("lock").drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }

        fn restore(&self) {
            self.cut.store(false, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_database_out_of_reach_gives_503s_never_an_unrecorded_certificate_and_recovers() {
        let idp = TestIdp::start(&[Key::Rsa]);
        let db = ScratchDatabase::create("outage");
        let relay = Relay::start(db.server_address());
        let shared = tempfile::tempdir().expect("tempdir");
        write_secret(
            &shared.path().join("db.password"),
            &ScratchDatabase::password(),
        );
        write_secret(&shared.path().join("ca.pass"), "replica passphrase");
        let key = public_key(&ssh_keygen(shared.path(), "agent", &["-t", "ed25519"]));
        let direct = config(&idp, &db, shared.path(), "", "").replace(
            "pool_size = 8",
            "pool_size = 4\nconnect_timeout = \"1s\"\nstatement_timeout = \"2s\"",
        );
        // The replica reaches the database only through the relay; the test reads the
        // records directly.
        let relayed = direct.replacen(
            &db.server_address(),
            &format!("127.0.0.1:{}", relay.port),
            1,
        );
        let direct_config = shared.path().join("direct.toml");
        std::fs::write(&direct_config, &direct).expect("direct config");
        let server = Server::try_start_config(tempfile::tempdir().expect("dir"), &relayed, &[])
            .unwrap_or_else(|(status, log)| panic!("exited with {status}:\n{log}"));
        let issue = || {
            http::post(
                &format!("{}/v1/certificates", server.url),
                Some(&idp.token(Key::Rsa, "agent-outage")),
                &certificate_request(&key, &["deploy"], &["web.example.com"], Some(60)),
            )
        };
        assert_eq!(issue().status, 201);

        let stop = AtomicBool::new(false);
        let answers = Mutex::new(Vec::<(u16, String)>::new());
        thread::scope(|scope| {
            for _ in 0..4 {
                let (stop, answers, issue) = (&stop, &answers, &issue);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = issue();
                        // A 503 names why: the audit record could not be written.
                        let what = match answer.status {
                            503 => answer.error_code(),
                            _ => serial_of(&answer.json()),
                        };
                        answers.lock().expect("lock").push((answer.status, what));
                    }
                });
            }
            let count = |status: u16| {
                answers
                    .lock()
                    .expect("lock")
                    .iter()
                    .filter(|(s, _)| *s == status)
                    .count()
            };
            assert!(eventually(Duration::from_secs(60), || count(201) >= 20));
            relay.cut();
            assert!(
                eventually(Duration::from_secs(60), || count(503) >= 5),
                "the replica answers 503 while the database is out of reach"
            );
            let not_ready = http::get(&format!("{}/readyz", server.url));
            assert_eq!(not_ready.status, 503, "{}", not_ready.text);
            relay.restore();
            let ok_before = count(201);
            assert!(
                eventually(Duration::from_secs(60), || count(201) >= ok_before + 20),
                "issuance resumes without a restart"
            );
            stop.store(true, Ordering::Relaxed);
        });
        let answers = answers.into_inner().expect("lock");
        let statuses: BTreeSet<(u16, &str)> = answers
            .iter()
            .map(|(s, what)| (*s, if *s == 503 { what.as_str() } else { "" }))
            .collect();
        assert!(
            statuses
                .iter()
                .all(|s| *s == (201, "") || *s == (503, "audit_unavailable")),
            "only certificates or 503 audit_unavailable: {statuses:?}"
        );
        // Every certificate a client received has its record.
        let export = Command::new(env!("CARGO_BIN_EXE_writ"))
            .args(["admin", "--config"])
            .arg(&direct_config)
            .args(["audit", "export"])
            .env_remove("WRIT_CONFIG")
            .output()
            .expect("writ admin audit export");
        assert!(
            export.status.success(),
            "{}",
            String::from_utf8_lossy(&export.stderr)
        );
        let records: Vec<Value> = String::from_utf8_lossy(&export.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record"))
            .collect();
        let issued = issued_serials(&records);
        let missing: Vec<&String> = answers
            .iter()
            .filter(|(s, _)| *s == 201)
            .map(|(_, serial)| serial)
            .filter(|serial| !issued.contains_key(*serial))
            .collect();
        assert!(
            missing.is_empty(),
            "certificates without a record: {missing:?}"
        );
        let ready = http::get(&format!("{}/readyz", server.url));
        assert_eq!(ready.status, 200, "{}", ready.text);
    }

    #[test]
    fn exactly_one_replica_runs_the_sink_and_the_schedule_and_the_other_takes_over() {
        let shared_sink = tempfile::tempdir().expect("sink dir");
        let sink = shared_sink.path().join("audit.jsonl");
        let r = Replicas::start(
            2,
            "rotation_min_publish = \"1s\"\nmax_cert_ttl = \"1m\"\ndefault_cert_ttl = \"1m\"",
            &format!(
                "[[audit.sink]]\ntype = \"jsonl\"\npath = \"{}\"\n",
                sink.display()
            ),
        );
        r.admin_ok(0, &["ca", "schedule", "--every", "2s"]);
        for n in 0..20 {
            assert_eq!(r.issue_with(n % 2, &r.token("agent-sink")).status, 201);
        }
        let delivered = || -> Vec<i64> {
            std::fs::read_to_string(&sink)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).expect("JSON line")["seq"]
                        .as_i64()
                        .expect("seq")
                })
                .collect()
        };
        let head = || {
            r.audit()
                .last()
                .and_then(|l| l["seq"].as_i64())
                .unwrap_or(0)
        };
        // Two scheduled rotations happen, and the sink catches up with the log.
        assert!(eventually(Duration::from_secs(60), || {
            r.audit()
                .iter()
                .filter(|l| l["event"] == "ca.key.rotated")
                .count()
                >= 2
        }));
        assert!(eventually(Duration::from_secs(30), || delivered().last()
            == Some(&head())));
        let rotators: Vec<usize> = (0..2)
            .filter(|i| r.servers[*i].log().contains("scheduled CA key rotation"))
            .collect();
        assert_eq!(rotators.len(), 1, "exactly one replica rotates");
        let failed_rotations = r
            .audit()
            .iter()
            .filter(|l| l["event"] == "ca.key.rotated" && l["outcome"] != "success")
            .count();
        assert_eq!(
            failed_rotations, 0,
            "no replica tried a rotation the other made"
        );
        let seqs = delivered();
        let distinct: BTreeSet<&i64> = seqs.iter().collect();
        assert_eq!(distinct.len(), seqs.len(), "each record delivered once");

        // No more scheduled rotations from here, so the log stops growing on its own and
        // what the sink delivered can be compared with a log that holds still.
        r.admin_ok(0, &["ca", "schedule", "--off"]);

        // The leader dies: the other takes the lease over when it expires, and goes on
        // delivering from where the first stopped.
        let leader = rotators[0];
        r.servers[leader].signal("KILL");
        let other = 1 - leader;
        for _ in 0..5 {
            assert_eq!(r.issue_with(other, &r.token("agent-sink")).status, 201);
        }
        // Every record once, in order: the delivered sequence equals the whole log (read
        // just before it, so a rotation committed by the killed leader in its last
        // moments is waited for too).
        let caught_up = || {
            let log: Vec<i64> = (1..=head()).collect();
            delivered() == log
        };
        assert!(
            eventually(Duration::from_secs(60), caught_up),
            "the other replica delivers every record once, in order, after the lease expired: {:?}",
            delivered()
        );
        assert!(
            r.servers[other]
                .log()
                .contains("now runs the once-only background work")
        );
    }
}
