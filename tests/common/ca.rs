//! A real writ CA for tests: the library's server on 127.0.0.1:0 with a SQLite database in
//! a temporary directory, configured from TOML text exactly as an operator would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use writ::api::AppState;
use writ::audit::AuditRecord;
use writ::config::Config;

use super::{http, idp::TestIdp, runtime};

/// A running CA.
pub struct TestCa {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The server's state (store, keyring), for assertions.
    pub state: Arc<AppState>,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestCa {
    /// Start a CA. `ca_extra` is appended to the `[ca]` section (which already names a
    /// passphrase file); `rest` holds `[[issuer]]` and `[[policy]]` tables.
    pub fn start(ca_extra: &str, rest: &str) -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("ca.pass");
        std::fs::write(&pass, "test passphrase\n").expect("write passphrase");
        let text = format!(
            "[storage]\nurl = \"sqlite://{db}\"\n\n[ca]\npassphrase_file = \"{pass}\"\n{ca_extra}\n\n{rest}\n",
            db = dir.path().join("writ.db").display(),
            pass = pass.display(),
        );
        let config_path = dir.path().join("writ.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        let state = runtime()
            .block_on(writ::server::build(&config, &config_path, None))
            .unwrap_or_else(|e| panic!("CA start: {e}"));
        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind CA");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&state);
        runtime().spawn(async move {
            let limits = config.connection_limits();
            writ::server::serve(
                listener,
                serving,
                async {
                    let _ = rx.await;
                },
                limits,
            )
            .await;
        });
        TestCa {
            url,
            state,
            dir,
            shutdown: Some(tx),
        }
    }

    /// A CA trusting `idp` as issuer `test`, with `policy` (TOML body of one `[[policy]]`
    /// table without its header; `issuer = "test"` is added).
    pub fn with_policy(idp: &TestIdp, ca_extra: &str, policy: &str) -> TestCa {
        TestCa::start(
            ca_extra,
            &format!(
                "[[issuer]]\nname = \"test\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\naudiences = [\"writ\"]\n\n\
                 [[policy]]\nissuer = \"test\"\n{policy}\n",
                iss = idp.issuer,
                jwks = idp.jwks_url(),
            ),
        )
    }

    /// The temporary directory holding the database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("writ.db")
    }

    /// POST /v1/certificates.
    pub fn request_certificate(&self, token: Option<&str>, body: &Value) -> http::Response {
        http::post(&format!("{}/v1/certificates", self.url), token, body)
    }

    /// The whole audit log, in order.
    pub fn audit(&self) -> Vec<AuditRecord> {
        runtime()
            .block_on(self.state.store.audit_records(0, i64::MAX))
            .expect("audit records")
    }

    /// Audit records of one event.
    pub fn audit_events(&self, event: &str) -> Vec<AuditRecord> {
        self.audit()
            .into_iter()
            .filter(|r| r.entry.event == event)
            .collect()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A `POST /v1/certificates` body.
pub fn certificate_request(
    public_key: &str,
    logins: &[&str],
    hosts: &[&str],
    ttl: Option<u64>,
) -> Value {
    let mut body = serde_json::json!({
        "public_key": public_key,
        "task": {"logins": logins, "hosts": hosts, "ttl_seconds": 900, "purpose": "integration test"},
    });
    if let Some(ttl) = ttl {
        body["ttl_seconds"] = ttl.into();
    }
    body
}
