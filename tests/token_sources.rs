//! Where the agent commands get their workload token and their settings, run as the real
//! `writ` binary against the real CA (and its real JWKS issuer) over HTTP: every
//! `--token-source` (`file:` read again on every use, `env:`, `command:` with its failure
//! and timeout, `github-actions` against a local token endpoint that checks the bearer
//! header and the audience, `dev`), the order of discovery when none is named, the client
//! config and what overrides it, and each failure's one-line message and exit status.
//! No message ever holds a token.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use common::agents::World;
use common::idp::{Key, sign_with};
use common::output::{assert_ok, stderr, stdout, writ_isolated};
use serde_json::json;

/// `writ` with none of the caller's settings: no WRIT_* variables, no GitHub Actions
/// variables, and a config home in `dir` holding no client config.
fn writ(dir: &Path) -> Command {
    writ_isolated(&dir.join("xdg"))
}

/// `output` failed with `code`, one `writ: error:` line holding every one of `words`.
fn assert_failed(output: &Output, code: i32, words: &[&str]) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("writ: error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    for word in words {
        assert!(line.contains(word), "{word:?} not in {line:?}");
    }
}

/// No part of `token` that identifies it (its signature) in `output`.
fn assert_no_token(output: &Output, token: &str) {
    let signature = token.rsplit('.').next().expect("JWT");
    for text in [stdout(output), stderr(output)] {
        assert!(!text.contains(signature), "a token leaked: {text}");
    }
}

impl World {
    /// `writ cert` on the prod hosts with the world's key and `args`, run by `command`
    /// (its environment set, no arguments yet).
    fn cert_with(&self, command: &mut Command, args: &[&str]) -> Output {
        command
            .args(["cert", "--host", "web-01.prod.example.com", "--key"])
            .arg(&self.key)
            .args(args)
            .output()
            .expect("run writ cert")
    }

    /// [`World::cert_with`] against this CA, as `deploy`, in a clean environment.
    fn cert(&self, args: &[&str]) -> Output {
        let args = [
            &["--ca-url", self.ca.url.as_str(), "--login", "deploy"][..],
            args,
        ]
        .concat();
        self.cert_with(&mut writ(self.dir.path()), &args)
    }

    /// A file in the world's directory holding `text`.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

/// The task id `writ cert` printed.
fn task_id(output: &Output) -> String {
    stdout(output)
        .lines()
        .find_map(|l| l.strip_prefix("task "))
        .unwrap_or_else(|| panic!("no task line: {}", stdout(output)))
        .to_owned()
}

#[test]
fn a_file_source_is_read_again_on_every_use() {
    let w = World::start("");
    let first = w.token("agent-1");
    let path = w.file("token", &format!("{first}\n"));
    let spec = format!("file:{}", path.display());
    let out = w.cert(&["--token-source", &spec]);
    assert_ok(&out);
    let id = task_id(&out);

    // The same token again: the CA refuses it as replayed, naming the source.
    let again = w.cert(&["--token-source", &spec]);
    assert_failed(&again, 81, &["refused", "token_replayed", &spec]);
    assert_no_token(&again, &first);

    // The file rotated (as Kubernetes does): the next use reads the new token.
    std::fs::write(&path, w.token("agent-1")).expect("rotate");
    assert_ok(&w.cert(&["--token-source", &spec]));
    std::fs::write(&path, w.token("agent-1")).expect("rotate");
    let shown = writ(w.dir.path())
        .args([
            "task",
            "show",
            &id,
            "--ca-url",
            &w.ca.url,
            "--token-source",
            &spec,
        ])
        .output()
        .expect("run writ task show");
    assert_ok(&shown);
    assert!(
        stdout(&shown).contains("state     active"),
        "{}",
        stdout(&shown)
    );

    // Not a token: refused before anything is sent, without echoing it.
    std::fs::write(&path, "not a\ttoken\n").expect("write");
    assert_failed(
        &w.cert(&["--token-source", &spec]),
        80,
        &[&spec, "printable ASCII"],
    );
    std::fs::remove_file(&path).expect("remove");
    assert_failed(
        &w.cert(&["--token-source", &spec]),
        80,
        &["cannot read the token", &spec],
    );
}

#[test]
fn env_and_command_sources_give_the_token_and_name_themselves_when_they_fail() {
    let w = World::start("");
    let token = w.token("agent-1");
    let mut command = writ(w.dir.path());
    command.env("AGENT_TOKEN", &token);
    let args = ["--ca-url", &w.ca.url, "--login", "deploy"];
    assert_ok(&w.cert_with(
        &mut command,
        &[&args[..], &["--token-source", "env:AGENT_TOKEN"]].concat(),
    ));
    let unset = w.cert(&["--token-source", "env:AGENT_TOKEN"]);
    assert_failed(&unset, 80, &["env:AGENT_TOKEN", "AGENT_TOKEN is not set"]);

    let file = w.file("token", &w.token("agent-1"));
    let spec = format!("command:cat {}", file.display());
    assert_ok(&w.cert(&["--token-source", &spec]));

    // A failing command: its stderr passes through, the error names it and its status.
    let failing = w.cert(&["--token-source", "command:echo no-session >&2; exit 3"]);
    assert_failed(
        &failing,
        80,
        &[
            "command:echo no-session >&2; exit 3",
            "exited with status 3",
        ],
    );
    assert!(
        stderr(&failing).contains("no-session\n"),
        "{}",
        stderr(&failing)
    );
    assert_failed(
        &w.cert(&["--token-source", "command:true"]),
        80,
        &["command:true", "empty"],
    );
    assert!(
        w.ca.audit_events(writ::audit::event::TOKEN_REJECTED)
            .is_empty(),
        "nothing was sent for the failures"
    );
}

#[test]
fn a_command_that_hangs_is_stopped_at_its_timeout() {
    let w = World::start("");
    let started = std::time::Instant::now();
    let out = w.cert(&["--token-source", "command:exec sleep 600"]);
    assert_failed(
        &out,
        80,
        &["command:exec sleep 600", "did not finish within 10s"],
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// A GitHub Actions token endpoint on 127.0.0.1: answers `{"value": JWT}` for the
/// audience asked, signed by the world's IdP, to a request with the right bearer token
/// and the URL's own query string kept.
struct TokenEndpoint {
    url: String,
    requests: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

const REQUEST_TOKEN: &str = "request-token-4f1c";

impl TokenEndpoint {
    fn start(issuer: &str) -> TokenEndpoint {
        #[derive(Clone)]
        struct Endpoint {
            issuer: String,
            requests: Arc<AtomicUsize>,
        }
        async fn token(
            State(endpoint): State<Endpoint>,
            headers: HeaderMap,
            Query(query): Query<std::collections::HashMap<String, String>>,
        ) -> Result<axum::Json<serde_json::Value>, StatusCode> {
            endpoint.requests.fetch_add(1, Ordering::SeqCst);
            let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
            if authorization != Some(&format!("bearer {REQUEST_TOKEN}")) {
                return Err(StatusCode::UNAUTHORIZED);
            }
            let audience = query.get("audience").ok_or(StatusCode::BAD_REQUEST)?;
            if query.get("api-version").map(String::as_str) != Some("2.0") {
                return Err(StatusCode::BAD_REQUEST);
            }
            let now = common::now();
            let claims = json!({
                "iss": endpoint.issuer, "sub": "agent-gha", "aud": audience,
                "iat": now, "nbf": now, "exp": now + 300,
                "jti": format!("gha-{}", endpoint.requests.load(Ordering::SeqCst)),
            });
            Ok(axum::Json(
                json!({"value": sign_with(Key::Ed25519, Key::Ed25519.kid(), &claims)}),
            ))
        }
        let listener = common::runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!(
            "http://{}/token?api-version=2.0",
            listener.local_addr().expect("addr")
        );
        let requests = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(Endpoint {
                issuer: issuer.to_owned(),
                requests: Arc::clone(&requests),
            });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        common::runtime().spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        TokenEndpoint {
            url,
            requests,
            shutdown: Some(tx),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// `command` running "in a GitHub Actions job" whose request token is `token`.
    fn in_job<'a>(&self, command: &'a mut Command, token: &str) -> &'a mut Command {
        command
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", &self.url)
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", token)
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[test]
fn github_actions_source_asks_the_token_endpoint_for_each_task() {
    let w = World::start("");
    let endpoint = TokenEndpoint::start(&w.idp.issuer);
    let as_job = |extra: &[&str], request_token: &str| {
        let mut command = writ(w.dir.path());
        endpoint.in_job(&mut command, request_token);
        let args = ["--ca-url", &w.ca.url, "--login", "deploy"];
        w.cert_with(&mut command, &[&args[..], extra].concat())
    };
    // Audience `writ` by default; a fresh token for each task.
    assert_ok(&as_job(
        &["--token-source", "github-actions"],
        REQUEST_TOKEN,
    ));
    assert_ok(&as_job(
        &["--token-source", "github-actions"],
        REQUEST_TOKEN,
    ));
    assert_eq!(endpoint.requests(), 2);
    let created = w.ca.audit_events(writ::audit::event::TASK_CREATED);
    assert_eq!(created.len(), 2);
    assert_eq!(created[0].entry.subject.as_deref(), Some("agent-gha"));

    // Another audience is asked for as named, and this CA refuses it.
    let other = as_job(&["--token-source", "github-actions:other"], REQUEST_TOKEN);
    assert_failed(&other, 81, &["wrong_audience", "github-actions:other"]);

    // A wrong request token: the endpoint refuses; the request token is never shown.
    let refused = as_job(&["--token-source", "github-actions"], "wrong-request-token");
    assert_failed(&refused, 80, &["github-actions", "HTTP 401"]);
    assert!(!stderr(&refused).contains("wrong-request-token"));

    // Outside a job: the missing variable is named.
    let outside = w.cert(&["--token-source", "github-actions"]);
    assert_failed(&outside, 80, &["ACTIONS_ID_TOKEN_REQUEST_URL is not set"]);
}

/// A client config in the world's directory (mode 0600), and `writ` reading it.
fn with_config(w: &World, text: &str) -> Command {
    let path = w.file("client.toml", text);
    let mut command = writ(w.dir.path());
    command.env("WRIT_CLIENT_CONFIG", &path);
    command
}

#[test]
fn without_a_source_the_token_is_found_in_order() {
    let w = World::start("");
    let endpoint = TokenEndpoint::start(&w.idp.issuer);
    let kubernetes = w.dir.path().join("projected-token");
    let config = format!(
        "ca_url = \"{}\"\nlogin = \"deploy\"\nkubernetes_token_path = \"{}\"\n",
        w.ca.url,
        kubernetes.display()
    );

    // Nothing anywhere: every place tried is named, and how to give a token.
    let nothing = w.cert_with(&mut with_config(&w, &config), &[]);
    assert_failed(
        &nothing,
        80,
        &[
            "no workload token found: tried token_source in",
            &format!("file:{}", kubernetes.display()),
            "github-actions (ACTIONS_ID_TOKEN_REQUEST_URL is not set)",
            "--token-source",
        ],
    );

    // In a GitHub Actions job.
    let github = w.cert_with(
        endpoint.in_job(&mut with_config(&w, &config), REQUEST_TOKEN),
        &[],
    );
    assert_ok(&github);
    assert_eq!(endpoint.requests(), 1);

    // A projected Kubernetes token comes first.
    std::fs::write(&kubernetes, w.token("agent-1")).expect("write");
    let projected = w.cert_with(
        endpoint.in_job(&mut with_config(&w, &config), REQUEST_TOKEN),
        &[],
    );
    assert_ok(&projected);
    assert_eq!(endpoint.requests(), 1, "GitHub was not asked");

    // The config's token_source comes before both.
    let config = format!("{config}token_source = \"env:FROM_CONFIG\"\n");
    let mut command = with_config(&w, &config);
    command.env("FROM_CONFIG", w.token("agent-1"));
    std::fs::write(&kubernetes, "stale.but.present").expect("write");
    assert_ok(&w.cert_with(endpoint.in_job(&mut command, REQUEST_TOKEN), &[]));
    assert_eq!(endpoint.requests(), 1);
}

#[test]
fn the_client_config_is_overridden_by_the_environment_then_the_flags() {
    let w = World::start("");
    let (_socket, dead_port) = common::refusing_port();
    let dead = format!("http://127.0.0.1:{dead_port}");
    let config = format!(
        "ca_url = \"{}\"\nlogin = \"deploy\"\nttl = \"2m\"\n",
        w.ca.url
    );

    // From the file alone: the CA, the login and the certificate's lifetime.
    let token = w.file("token", &w.token("agent-1"));
    let from_file = format!("@{}", token.display());
    let out = w.cert_with(&mut with_config(&w, &config), &["--token", &from_file]);
    assert_ok(&out);
    assert!(stdout(&out).contains(":deploy\n"), "{}", stdout(&out));
    let certificate =
        std::fs::read_to_string(format!("{}-cert.pub", w.key.display())).expect("certificate");
    let certificate = ssh_key::Certificate::from_openssh(certificate.trim()).expect("parse");
    let left = certificate.valid_before() as i64 - common::now();
    assert!(
        (60..=125).contains(&left),
        "ttl 2m from the file: {left}s left"
    );

    // WRIT_CA_URL overrides the file; --ca-url overrides both.
    let mut command = with_config(&w, &config);
    command.env("WRIT_CA_URL", &dead);
    std::fs::write(&token, w.token("agent-1")).expect("write");
    let env_wins = w.cert_with(&mut command, &["--token", &from_file]);
    assert_failed(
        &env_wins,
        83,
        &["cannot reach the CA", &dead_port.to_string()],
    );
    let mut command = with_config(&w, &config);
    command.env("WRIT_CA_URL", &dead);
    assert_ok(&w.cert_with(
        &mut command,
        &["--token", &from_file, "--ca-url", &w.ca.url],
    ));

    // A login flag overrides the file's login (and the policy refuses this one).
    std::fs::write(&token, w.token("agent-1")).expect("write");
    let mut command = with_config(&w, &config);
    let denied = w.cert_with(&mut command, &["--token", &from_file, "--login", "root"]);
    assert_failed(&denied, 82, &["login_not_allowed", "rule: logins"]);

    // No CA anywhere; an unknown key; a named file that is missing; a file anyone writes.
    assert_failed(
        &w.cert_with(
            &mut with_config(&w, "login = \"deploy\"\n"),
            &["--token", "x.y.z"],
        ),
        1,
        &["no CA URL", "--ca-url", "client.toml"],
    );
    assert_failed(
        &w.cert_with(
            &mut with_config(&w, "ca_ulr = \"x\"\n"),
            &["--token", "x.y.z"],
        ),
        1,
        &["client.toml", "ca_ulr"],
    );
    let mut missing = writ(w.dir.path());
    missing.env("WRIT_CLIENT_CONFIG", w.dir.path().join("nope.toml"));
    assert_failed(
        &w.cert_with(&mut missing, &["--token", "x.y.z"]),
        1,
        &["cannot read the client config", "nope.toml"],
    );
    let mut writable = with_config(&w, &config);
    let path = w.dir.path().join("client.toml");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    assert_failed(
        &w.cert_with(&mut writable, &["--token", "x.y.z"]),
        1,
        &["anyone may write"],
    );
}

#[test]
fn each_refusal_has_its_exit_status_and_one_line_without_the_token() {
    let w = World::start("");
    let expired = {
        let mut claims = w.idp.claims("agent-1");
        claims["exp"] = json!(common::now() - 600);
        claims["iat"] = json!(common::now() - 900);
        claims["nbf"] = json!(common::now() - 900);
        w.idp.sign(Key::Ed25519, &claims)
    };
    let out = w.cert(&["--token", &expired]);
    assert_failed(
        &out,
        81,
        &[
            "the CA refused the workload token from --token",
            "token_expired",
        ],
    );
    assert_no_token(&out, &expired);

    let token = w.token("agent-1");
    let root = ["--ca-url", &w.ca.url, "--login", "root", "--token", &token];
    let denied = w.cert_with(&mut writ(w.dir.path()), &root);
    assert_failed(
        &denied,
        82,
        &["policy denied", "login_not_allowed", "agents"],
    );
    assert_no_token(&denied, &token);

    let (_socket, port) = common::refusing_port();
    let token = w.token("agent-1");
    let dead = format!("http://127.0.0.1:{port}");
    let args = ["--ca-url", &dead, "--login", "deploy", "--token", &token];
    let unreachable = w.cert_with(&mut writ(w.dir.path()), &args);
    assert_failed(&unreachable, 83, &["cannot reach the CA"]);
    assert_no_token(&unreachable, &token);

    // --token and --token-source together: a usage error (clap's status 2).
    let both = w.cert(&["--token", &token, "--token-source", "env:X"]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    assert_no_token(&both, &token);
    // A token pasted into --token-source is not echoed.
    let pasted = w.cert(&["--token-source", &token]);
    assert_failed(&pasted, 1, &["unknown token source"]);
    assert_no_token(&pasted, &token);

    // `writ task` too: no token and no key names both ways.
    let task = writ(w.dir.path())
        .args(["task", "show", &"0".repeat(32), "--ca-url", &w.ca.url])
        .env(
            "WRIT_CLIENT_CONFIG",
            w.file(
                "empty.toml",
                &format!(
                    "kubernetes_token_path = \"{}\"\n",
                    w.dir.path().join("none").display()
                ),
            ),
        )
        .output()
        .expect("run writ task show");
    assert_failed(&task, 80, &["no workload token found", "--key PATH"]);
}

#[test]
fn the_dev_source_mints_from_the_dev_issuer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join(writ::dev::DEFAULT_DATA_DIR);
    let (config, _jwks) =
        writ::dev::prepare(&data, "127.0.0.1:0".parse().expect("addr")).expect("dev");
    let issuer = &config.issuers[0];
    let ca = common::ca::TestCa::start(
        "",
        &format!(
            "[[issuer]]\nname = \"dev\"\nissuer = \"{iss}\"\njwks_file = \"{jwks}\"\n\
             audiences = [\"writ\"]\nalgorithms = [\"EdDSA\"]\n\n\
             [[policy]]\nname = \"dev-permissive\"\nissuer = \"dev\"\nsubject = \"*\"\n\
             logins = [\"*\"]\nhosts = [\"*\"]\n",
            iss = issuer.issuer,
            jwks = issuer.jwks_file.as_ref().expect("jwks file").display(),
        ),
    );
    let key = common::ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let out = writ(dir.path())
        .current_dir(dir.path())
        .args(["cert", "--ca-url", &ca.url, "--token-source", "dev"])
        .args(["--login", "deploy", "--host", "web-01.example.com", "--key"])
        .arg(&key)
        .output()
        .expect("run writ cert");
    assert_ok(&out);
    let created = ca.audit_events(writ::audit::event::TASK_CREATED);
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0].entry.subject.as_deref(),
        Some(writ::client::token_source::DEV_SUBJECT)
    );
    // Elsewhere, no dev key: it says where it looked and what to do.
    let elsewhere = writ(dir.path())
        .current_dir(dir.path().join(writ::dev::DEFAULT_DATA_DIR))
        .args(["cert", "--ca-url", &ca.url, "--token-source", "dev"])
        .args(["--login", "deploy", "--host", "web-01.example.com", "--key"])
        .arg(&key)
        .output()
        .expect("run writ cert");
    assert_failed(&elsewhere, 80, &["token source dev", "writ serve --dev"]);
}

#[test]
fn ssh_failing_keeps_its_status_says_so_and_the_task_is_completed() {
    let w = World::start("");
    let (_socket, port) = common::refusing_port();
    let token = w.file("token", &w.token("agent-1"));
    let out = writ(w.dir.path())
        .args(["ssh", "--ca-url", &w.ca.url, "--token-source"])
        .arg(format!("file:{}", token.display()))
        .args(["--login", "deploy", "--host", "web-01.prod.example.com"])
        .arg("--insecure-trust-on-first-use")
        .args(["--ssh-arg=-oHostName=127.0.0.1", "--ssh-arg=-p"])
        .arg(format!("--ssh-arg={port}"))
        .args(["--ssh-arg=-oBatchMode=yes", "--", "true"])
        .output()
        .expect("run writ ssh");
    assert_failed(&out, 255, &["ssh exited 255"]);
    assert!(stderr(&out).contains("completed"), "{}", stderr(&out));
    assert_eq!(
        w.ca.audit_events(writ::audit::event::TASK_COMPLETED).len(),
        1
    );
}
