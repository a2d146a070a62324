//! `writ mcp` driven by a real MCP client — the official Python SDK (`pip install mcp`,
//! installed by `.ci/run`) over stdio — against the real CA and a real sshd serving a
//! host certificate: the five tools are listed with output schemas; a task opens, a
//! command runs with its output and exit code (bounded output marked as cut); a host
//! outside `--allowed-hosts` and a login outside the policy are refused with text the
//! model can act on; every command is in the audit log (`task.run`, with its purpose)
//! before it runs; completing the task ends it at the CA (in the revocation feed hosts
//! enforce) and for `run`; the task's certificate is renewed when a `run` comes after it
//! expired; and the task left open is completed when the client goes away. A task
//! completed at the CA behind the server's back: the next login with its certificate is
//! refused by the host, and the key leaves the server's agent. Over `--http` (streamable
//! HTTP on loopback): no request without the bearer key or with an Origin; each session
//! has its own tasks, completed when the client ends the session, and at SIGTERM those of
//! sessions still open.
//! The host is reached through the ssh_config given with `--ssh-config` (`HostName`,
//! `Port`, `HostKeyAlias`), verified by the CA's host certificate. Needs root, openssh-server and
//! python3 with `mcp`; fails (never skips) otherwise.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::enrolled::{ALICE, HOST_NAME, policies, world, world_with_policies};
use common::idp::Key;
use serde_json::{Value, json};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_client.py");

/// The agent's side of a test: a home with an ssh_config saying where the host is, and a
/// supply of single-use tokens the `command:` source hands out one per task.
struct AgentHome {
    home: tempfile::TempDir,
    tokens: tempfile::TempDir,
}

impl AgentHome {
    fn new(idp: &common::idp::TestIdp, sshd_port: u16) -> AgentHome {
        let home = tempfile::tempdir().expect("home");
        let ssh_dir = home.path().join(".ssh");
        fs::create_dir(&ssh_dir).expect("mkdir .ssh");
        fs::write(
            ssh_dir.join("config"),
            format!(
                "Host {HOST_NAME}\n  HostName 127.0.0.1\n  Port {sshd_port}\n  HostKeyAlias {HOST_NAME}\n"
            ),
        )
        .expect("ssh_config");
        let tokens = tempfile::tempdir().expect("tokens");
        for n in 0..20 {
            fs::write(
                tokens.path().join(format!("{n:02}.jwt")),
                idp.token(Key::Rsa, "agent-1"),
            )
            .expect("token");
        }
        AgentHome { home, tokens }
    }

    fn ssh_dir(&self) -> PathBuf {
        self.home.path().join(".ssh")
    }

    /// The `--token-source` handing out the next token.
    fn token_source(&self) -> String {
        format!(
            "command:f=$(ls {dir} | sort | head -n 1); cat {dir}/$f && rm {dir}/$f",
            dir = self.tokens.path().display()
        )
    }

    /// The client's configuration: `writ mcp` for `ca` with `args` after the common ones,
    /// plus `extra` keys.
    fn client_config(&self, ca: &common::ca::TestCa, args: &[&str], extra: Value) -> Value {
        let mut argv = vec![
            "mcp".to_owned(),
            "--ca-url".to_owned(),
            ca.url.clone(),
            "--token-source".to_owned(),
            self.token_source(),
            "--ssh-config".to_owned(),
            self.ssh_dir().join("config").display().to_string(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut config = json!({
            "command": env!("CARGO_BIN_EXE_writ"),
            "args": argv,
            "env": {
                "HOME": self.home.path(),
                "PATH": std::env::var("PATH").unwrap_or_default(),
                "XDG_CONFIG_HOME": self.home.path().join(".config"),
            },
            "login": ALICE,
            "host": HOST_NAME,
        });
        if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
            config.extend(extra);
        }
        config
    }
}

/// Run the Python client with `config`; what it saw.
fn run_client(config: &Value, sshd: &common::sshd::Sshd) -> Value {
    // `.ci/run` names the interpreter that has the SDK.
    let python = std::env::var("WRIT_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = Command::new(&python)
        .arg(CLIENT)
        .arg(config.to_string())
        .output()
        .unwrap_or_else(|e| panic!("run {python} (needs the `mcp` package: pip install mcp): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "MCP client failed: {stderr}\n{}",
        sshd.log()
    );
    serde_json::from_slice(&out.stdout).expect("the client's JSON")
}

fn text(result: &Value) -> &str {
    result["text"].as_str().unwrap_or_default()
}

#[test]
fn an_mcp_client_opens_a_task_runs_a_command_and_ends_the_task() {
    // Three-second certificates: the first one expires during the first `run` (which
    // takes four), so the second `run` works only if the server renews it.
    let (idp, ca, enrolled) = world("default_cert_ttl = \"3s\"\n", true);
    let sshd = enrolled.start_sshd(true);

    let agent = AgentHome::new(&idp, sshd.port());
    let config = agent.client_config(
        &ca,
        &["--allowed-hosts", "*.prod.example.com"],
        json!({"scenario": "tour", "outside_host": "db-01.staging.example.com"}),
    );
    let seen = run_client(&config, &sshd);

    let tools = [
        "complete_task",
        "list_tasks",
        "open_task",
        "run",
        "task_status",
    ];
    assert_eq!(seen["tools"], json!(tools));
    assert_eq!(
        seen["output_schemas"],
        json!(tools),
        "every tool has an outputSchema"
    );

    let opened = &seen["open"];
    assert_eq!(opened["is_error"], false, "{opened}");
    let task_id = opened["structured"]["task_id"].as_str().expect("task id");
    assert!(
        opened["text"]
            .as_str()
            .unwrap_or_default()
            .contains(task_id)
    );

    let run = &seen["run"];
    assert_eq!(run["structured"]["exit_code"], 3, "{run}\n{}", sshd.log());
    assert!(
        run["structured"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("hello-from-mcp")
    );
    assert!(
        run["structured"]["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("to-stderr")
    );
    assert!(
        run["text"]
            .as_str()
            .unwrap_or_default()
            .contains("Exit code 3")
    );
    let bounded = &seen["run_bounded"]["structured"];
    let renewals = ca
        .audit_events(writ::audit::event::CERT_ISSUED)
        .into_iter()
        .filter(|r| r.entry.task_id.as_deref() == Some(task_id))
        .count();
    assert!(
        renewals >= 2,
        "the task's certificate was renewed: {renewals}"
    );
    assert_eq!(
        bounded["stdout"].as_str().map(str::len),
        Some(100),
        "{bounded}"
    );
    assert_eq!(bounded["stdout_truncated"], true);

    // Each command was recorded with the task before it ran (the refused one was not).
    let runs: Vec<_> = ca
        .audit_events(writ::audit::event::TASK_RUN)
        .into_iter()
        .filter(|r| r.entry.task_id.as_deref() == Some(task_id))
        .map(|r| r.entry)
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs[0]
            .command
            .as_deref()
            .unwrap_or_default()
            .starts_with("echo hello-from-mcp")
    );
    assert_eq!(runs[0].purpose.as_deref(), Some("say hello"));
    assert_eq!(runs[0].host.as_deref(), Some(HOST_NAME));
    assert_eq!(runs[0].logins, [ALICE]);
    assert_eq!(runs[1].purpose, None);

    let outside = &seen["outside_allowed"];
    assert_eq!(outside["is_error"], true);
    assert!(
        outside["text"]
            .as_str()
            .unwrap_or_default()
            .contains("--allowed-hosts")
    );
    let denied = &seen["policy_denied"];
    assert_eq!(denied["is_error"], true);
    assert!(
        denied["text"].as_str().unwrap_or_default().contains("403"),
        "{denied}"
    );

    assert_eq!(seen["status"]["structured"]["state"], "active");
    assert_eq!(seen["complete"]["structured"]["state"], "completed");
    assert_eq!(seen["run_after_complete"]["is_error"], true);
    let feed = common::http::get(&format!("{}/v1/revocations", ca.url)).text;
    assert!(feed.contains(task_id), "hosts are told the task ended");

    // The task left open was completed when the client went away.
    let second = seen["second"]["structured"]["task_id"]
        .as_str()
        .expect("second task");
    let completed: Vec<String> = ca
        .audit_events(writ::audit::event::TASK_COMPLETED)
        .into_iter()
        .filter_map(|r| r.entry.task_id)
        .collect();
    assert!(completed.iter().any(|t| t == task_id), "{completed:?}");
    assert!(completed.iter().any(|t| t == second), "{completed:?}");

    // Nothing the model saw holds a token, key or certificate.
    let everything = seen.to_string();
    for secret in ["PRIVATE KEY", "-cert-v01@openssh.com", "eyJ"] {
        assert!(!everything.contains(secret), "{secret} reached the model");
    }
    // And the ssh directory holds only the ssh_config the test wrote.
    let names: Vec<_> = fs::read_dir(agent.ssh_dir())
        .expect("ssh dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(names, ["config"], "writ mcp wrote into ~/.ssh");
}

/// The done-means of issue 18: once a task is completed, a login with its certificate
/// fails. Here the task is completed at the CA behind the server's back (by `writ task
/// complete` with the agent's token), and the host has applied the revocation feed: a
/// login with the task's key and certificate, taken straight from the server's agent,
/// is refused by sshd's `writ-principals`; the next `run` is refused before ssh (the CA
/// will not record a command for an ended task), the model is told the task has ended,
/// and the key leaves the agent. A task completed through `complete_task` leaves the
/// agent at once too.
#[test]
fn a_login_with_a_completed_task_s_certificate_fails_at_the_host() {
    let (idp, ca, enrolled) = world("", true);
    let sshd = enrolled.start_sshd(true);
    let agent = AgentHome::new(&idp, sshd.port());
    let token = tempfile::NamedTempFile::new().expect("token file");
    fs::write(token.path(), idp.token(Key::Rsa, "agent-1")).expect("token");
    let principals = enrolled.host.principals_bin().display().to_string();
    let host_config = enrolled.host.host_config_path().display().to_string();
    let config = agent.client_config(
        &ca,
        &[],
        json!({
            "scenario": "ended_elsewhere",
            "complete_elsewhere": [env!("CARGO_BIN_EXE_writ"), "task", "complete", "{task}",
                "--ca-url", ca.url, "--token-source", format!("file:{}", token.path().display())],
            "sync": [principals, "sync", "--config", host_config],
            "ssh_config": agent.ssh_dir().join("config"),
        }),
    );
    let seen = run_client(&config, &sshd);

    let before = &seen["run_before"];
    assert_eq!(
        before["structured"]["exit_code"],
        0,
        "{before}\n{}",
        sshd.log()
    );
    assert!(text(before).contains("still-open"));
    assert_eq!(
        seen["agent_before"], 1,
        "the task's certificate is in the agent"
    );

    // The same key and certificate, straight from the agent: in while the task is active,
    // refused by the host once it is completed there and the host has the feed.
    let login = &seen["login_before"];
    assert_eq!(login["status"], 0, "{login}\n{}", sshd.log());
    assert!(
        login["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("login-while-active")
    );
    let login = &seen["login_after"];
    assert_eq!(login["status"], 255, "{login}");
    assert!(
        login["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("Permission denied"),
        "sshd refused the completed task's certificate: {login}"
    );
    assert!(
        !login["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("login-after")
    );

    let after = &seen["run_after"];
    assert_eq!(after["is_error"], true, "{after}");
    assert!(
        text(after).contains("has ended at the CA (completed)"),
        "{after}"
    );
    assert!(!text(after).contains("must-not-run"), "{after}");
    assert_eq!(
        seen["agent_after_refusal"], 0,
        "the ended task's key left the agent"
    );
    assert_eq!(seen["run_again"]["is_error"], true);
    assert!(text(&seen["run_again"]).contains("open a new one"));

    assert_eq!(seen["second_run"]["structured"]["exit_code"], 0);
    assert_eq!(seen["second_complete"]["structured"]["state"], "completed");
    assert_eq!(
        seen["agent_after_complete"], 0,
        "complete_task empties the agent"
    );
    let states: Vec<&str> = seen["list"]["structured"]["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect();
    assert_eq!(states.len(), 2);
    assert!(states.iter().all(|s| *s == "completed"), "{states:?}");
}

/// `writ mcp --http` as a child process: its URL once it listens, and its stderr so far.
struct HttpServer {
    child: std::process::Child,
    url: String,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl HttpServer {
    fn start(agent: &AgentHome, ca: &common::ca::TestCa, key_file: &std::path::Path) -> HttpServer {
        let config = agent.client_config(ca, &[], json!({}));
        let mut command = Command::new(env!("CARGO_BIN_EXE_writ"));
        command
            .args(
                config["args"]
                    .as_array()
                    .expect("args")
                    .iter()
                    .filter_map(Value::as_str),
            )
            .args(["--http", "127.0.0.1:0", "--http-key-file"])
            .arg(key_file)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (name, value) in config["env"].as_object().expect("env") {
            command.env(name, value.as_str().expect("env value"));
        }
        let mut child = command.spawn().expect("start writ mcp --http");
        let output = child.stderr.take().expect("stderr");
        let (lines, stderr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(output)
                .lines()
                .map_while(Result::ok)
            {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Ready when it says where it listens.
        let mut seen = Vec::new();
        let url = loop {
            let line = stderr
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("writ mcp --http never listened: {seen:?}"));
            if let Some(rest) = line.split("serving MCP at ").nth(1) {
                break rest.split(';').next().expect("url").to_owned();
            }
            seen.push(line);
        };
        HttpServer { child, url, stderr }
    }

    fn stderr_so_far(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn completed_tasks(ca: &common::ca::TestCa) -> Vec<String> {
    ca.audit_events(writ::audit::event::TASK_COMPLETED)
        .into_iter()
        .filter_map(|r| r.entry.task_id)
        .collect()
}

#[test]
fn over_http_only_the_key_holder_gets_in_and_every_session_s_tasks_end() {
    let (idp, ca, enrolled) = world("", true);
    let sshd = enrolled.start_sshd(true);
    let agent = AgentHome::new(&idp, sshd.port());
    let key_file = agent.home.path().join("mcp.key");
    let mut server = HttpServer::start(&agent, &ca, &key_file);

    // The key was made for it, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = fs::read_to_string(&key_file)
        .expect("key")
        .trim()
        .to_owned();

    // No key, a wrong key, a web page's Origin or another Host: refused before MCP sees
    // the request.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"}}})
    .to_string();
    let accept = ("accept", "application/json, text/event-stream");
    let refused = common::http::post_with_headers(&server.url, &[accept], &initialize);
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(refused.error_code(), "unauthorized");
    assert_eq!(refused.www_authenticate.as_deref(), Some("Bearer"));
    let wrong = "0".repeat(64);
    let wrong_key = format!("Bearer {wrong}");
    let refused = common::http::post_with_headers(
        &server.url,
        &[accept, ("authorization", &wrong_key)],
        &initialize,
    );
    assert_eq!(refused.status, 401, "{}", refused.text);
    let bearer = format!("Bearer {key}");
    let refused = common::http::post_with_headers(
        &server.url,
        &[
            accept,
            ("authorization", &bearer),
            ("origin", "http://evil.example"),
        ],
        &initialize,
    );
    assert_eq!(refused.status, 403, "{}", refused.text);
    let refused = common::http::post_with_headers(
        &server.url,
        &[
            accept,
            ("authorization", &bearer),
            ("host", "rebound.example:80"),
        ],
        &initialize,
    );
    assert_eq!(refused.status, 403, "a DNS-rebound Host: {}", refused.text);

    let config = json!({
        "scenario": "http", "url": server.url, "key": key, "login": ALICE, "host": HOST_NAME,
    });
    let seen = run_client(&config, &sshd);
    let ended = &seen["ended"];
    assert_eq!(ended["tools"].as_array().map(Vec::len), Some(5), "{ended}");
    let run = &ended["run"]["structured"];
    assert_eq!(run["exit_code"], 4, "{run}\n{}", sshd.log());
    assert!(
        run["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("over-http")
    );
    let ended_task = ended["open"]["structured"]["task_id"]
        .as_str()
        .expect("task id")
        .to_owned();
    let left_task = seen["left"]["open"]["structured"]["task_id"]
        .as_str()
        .expect("task id")
        .to_owned();

    // The session the client ended (DELETE) has its task completed; the server does that
    // after answering, so wait for the record.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !completed_tasks(&ca).contains(&ended_task) {
        assert!(
            std::time::Instant::now() < deadline,
            "the ended session's task was not completed: {}",
            server.stderr_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(100)); // poll the audit log
    }
    assert!(
        !completed_tasks(&ca).contains(&left_task),
        "a session still open keeps its task"
    );

    // SIGTERM: the server completes the task of the session left open, then exits 0.
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = server.child.wait().expect("wait");
    let stderr = server.stderr_so_far();
    assert!(exit.success(), "{exit:?}: {stderr}");
    assert!(completed_tasks(&ca).contains(&left_task), "{stderr}");
    assert!(!stderr.contains(&key), "the key reached the log");
}

#[test]
fn http_is_served_on_loopback_only() {
    let dir = tempfile::tempdir().expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args([
            "mcp",
            "--ca-url",
            "http://127.0.0.1:9",
            "--token-source",
            "env:NONE",
        ])
        .args(["--http", "0.0.0.0:0", "--http-key-file"])
        .arg(dir.path().join("mcp.key"))
        .output()
        .expect("writ mcp");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("only a loopback address"), "{stderr}");
    assert!(
        !dir.path().join("mcp.key").exists(),
        "nothing made for a refused address"
    );

    // `--token -` is one token read once: refused over HTTP too, saying why.
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["mcp", "--ca-url", "http://127.0.0.1:9", "--token", "-"])
        .args(["--http", "127.0.0.1:0", "--http-key-file"])
        .arg(dir.path().join("mcp.key"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("writ mcp");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("reads one token once"), "{stderr}");
}

/// SIGTERM while a task is open over stdio: the server completes the task, then exits.
#[test]
fn sigterm_completes_the_open_tasks_before_the_server_exits() {
    let (idp, ca, enrolled) = world("", true);
    let sshd = enrolled.start_sshd(true);
    let agent = AgentHome::new(&idp, sshd.port());
    let config = agent.client_config(&ca, &[], json!({"scenario": "sigterm"}));
    let seen = run_client(&config, &sshd);
    assert_eq!(seen["exited"], true, "{seen}");
    let task = seen["open"]["structured"]["task_id"]
        .as_str()
        .expect("task id")
        .to_owned();
    // It exited after completing: the record is there already, no waiting.
    assert!(completed_tasks(&ca).contains(&task), "{seen}");
}

/// `run` honours a `ProxyJump` in the user's ssh_config: the jump hop (another ssh, which
/// ssh gives only `-F`) logs in with the same agent and certificate and checks the jump
/// host against the CA's host certificates too. Here the jump host is the same sshd under
/// another name, and the policy grants `permit-port-forwarding` for the hop's `-W`.
#[test]
fn run_goes_through_a_proxy_jump_of_the_ssh_config() {
    let with_forwarding = policies().replacen(
        "hosts = [\"*.prod.example.com\"]\n",
        "hosts = [\"*.prod.example.com\"]\nextensions = [\"permit-port-forwarding\"]\n",
        1,
    );
    let (idp, ca, enrolled) = world_with_policies("", &with_forwarding, true);
    let sshd = enrolled.start_sshd(true);
    let agent = AgentHome::new(&idp, sshd.port());
    fs::write(
        agent.ssh_dir().join("config"),
        format!(
            "Host {HOST_NAME}\n  HostName 127.0.0.1\n  Port {port}\n  HostKeyAlias {HOST_NAME}\n  \
             ProxyJump {ALICE}@jump.prod.example.com\n\
             Host jump.prod.example.com\n  HostName 127.0.0.1\n  Port {port}\n  HostKeyAlias {HOST_NAME}\n",
            port = sshd.port()
        ),
    )
    .expect("ssh_config");
    let config = agent.client_config(
        &ca,
        &[],
        json!({"scenario": "one_run", "command_line": "echo through-the-jump"}),
    );
    let seen = run_client(&config, &sshd);
    let run = &seen["run"]["structured"];
    assert_eq!(run["exit_code"], 0, "{seen}\n{}", sshd.log());
    assert!(
        run["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("through-the-jump")
    );
    // Two logins: the hop and the destination, both with the task's certificate.
    let accepted = sshd.log().matches("Accepted publickey").count();
    assert_eq!(accepted, 2, "{}", sshd.log());
}
