//! The world most API tests start from: a real CA whose policies let `agent-*` log in as
//! `deploy` on the prod hosts, make `admin-*` admins and `host:*` hosts; its test IdP; and
//! an agent key made with `ssh-keygen`. Test files add their own methods in `impl World`.

use std::path::PathBuf;

use serde_json::Value;

use super::ca::{TestCa, certificate_request};
use super::idp::{Key, TestIdp};
use super::{http, public_key, ssh_keygen};

/// `admin-*` are admins; `host:*` are hosts that may ask `POST /v1/authorize` about the
/// prod hosts. Two `[[policy]]` tables, to follow a first policy.
pub const ADMINS_AND_HOSTS: &str = r#"
[[policy]]
name = "admins"
issuer = "test"
subject = "admin-*"
role = "admin"

[[policy]]
name = "hosts"
issuer = "test"
subject = "host:*"
role = "host"
hosts = ["*.prod.example.com"]
"#;

/// The policies of every [`World`]: `agent-*` may log in as `deploy` on the prod hosts
/// with certificates of at most 5 minutes, then [`ADMINS_AND_HOSTS`].
pub fn policies() -> String {
    policies_with("")
}

/// [`policies`] with `agent_lines` added to the `agents` policy (e.g. its extensions).
pub fn policies_with(agent_lines: &str) -> String {
    format!(
        r#"
name = "agents"
subject = "agent-*"
logins = ["deploy"]
hosts = ["*.prod.example.com"]
max_cert_ttl = "5m"
{agent_lines}
{ADMINS_AND_HOSTS}"#
    )
}

/// A CA, its IdP and an agent key.
pub struct World {
    /// Mints tokens (RS256 and EdDSA keys).
    pub idp: TestIdp,
    /// The CA, in process on an ephemeral port.
    pub ca: TestCa,
    /// Holds the agent key.
    pub dir: tempfile::TempDir,
    /// The agent's ed25519 private key.
    pub key: PathBuf,
}

impl World {
    /// Start the CA with [`policies`] and `extra` appended to its configuration (e.g. an
    /// `[audit]` table).
    pub fn start(extra: &str) -> World {
        World::with_policies(&format!("{}\n{extra}", policies()))
    }

    /// Start the CA with exactly `policies` (e.g. [`policies_with`]).
    pub fn with_policies(policies: &str) -> World {
        let idp = TestIdp::start(&[Key::Rsa, Key::Ed25519]);
        let ca = TestCa::with_policy(&idp, "", policies);
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
        World { idp, ca, dir, key }
    }

    /// A fresh EdDSA token for `sub`.
    pub fn token(&self, sub: &str) -> String {
        self.idp.token(Key::Ed25519, sub)
    }

    /// Open a task as `agent-1` (login `deploy` on `web-*.prod.example.com`, a 120 s
    /// certificate); the 201 answer.
    pub fn open_task(&self) -> Value {
        let response = self.ca.request_certificate(
            Some(&self.token("agent-1")),
            &certificate_request(
                &public_key(&self.key),
                &["deploy"],
                &["web-*.prod.example.com"],
                Some(120),
            ),
        );
        assert_eq!(response.status, 201, "{}", response.text);
        response.json()
    }

    /// POST `body` to the CA's `path` with `token`.
    pub fn post(&self, path: &str, token: &str, body: Value) -> http::Response {
        http::post(&format!("{}{path}", self.ca.url), Some(token), &body)
    }

    /// GET the CA's `path` with `token`.
    pub fn get(&self, path: &str, token: &str) -> http::Response {
        http::get_with_token(&format!("{}{path}", self.ca.url), token)
    }
}
