//! `writ mcp` driven by a real MCP client — the official Python SDK (`pip install mcp`,
//! installed by `.ci/run`) over stdio — against the real CA and a real sshd serving a
//! host certificate: the five tools are listed with output schemas; a task opens, a
//! command runs with its output and exit code (bounded output marked as cut); a host
//! outside `--allowed-hosts` and a login outside the policy are refused with text the
//! model can act on; completing the task ends it at the CA (in the revocation feed hosts
//! enforce) and for `run`; the task's certificate is renewed when a `run` comes after it
//! expired; and the task left open is completed when the client goes away.
//! The host is reached through the ssh_config given with `--ssh-config` (`HostName`,
//! `Port`, `HostKeyAlias`), verified by the CA's host certificate. Needs root, openssh-server and
//! python3 with `mcp`; fails (never skips) otherwise.

mod common;

use std::fs;
use std::process::Command;

use common::enrolled::{ALICE, HOST_NAME, world};
use common::idp::Key;
use serde_json::{Value, json};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_client.py");

#[test]
fn an_mcp_client_opens_a_task_runs_a_command_and_ends_the_task() {
    // Three-second certificates: the first one expires during the first `run` (which
    // takes four), so the second `run` works only if the server renews it.
    let (idp, ca, enrolled) = world("default_cert_ttl = \"3s\"\n", true);
    let sshd = enrolled.start_sshd(true);

    // The agent's environment: an ssh_config saying where the host is, and a supply of
    // single-use tokens the `command:` source hands out one per task.
    let home = tempfile::tempdir().expect("home");
    let ssh_dir = home.path().join(".ssh");
    fs::create_dir(&ssh_dir).expect("mkdir .ssh");
    let ssh_config = ssh_dir.join("config");
    fs::write(
        &ssh_config,
        format!(
            "Host {HOST_NAME}\n  HostName 127.0.0.1\n  Port {}\n  HostKeyAlias {HOST_NAME}\n",
            sshd.port()
        ),
    )
    .expect("ssh_config");
    let tokens = tempfile::tempdir().expect("tokens");
    for n in 0..20 {
        fs::write(
            tokens.path().join(format!("{n}.jwt")),
            idp.token(Key::Rsa, "agent-1"),
        )
        .expect("token");
    }
    let pop = format!(
        "command:f=$(ls {dir} | sort | head -n 1); cat {dir}/$f && rm {dir}/$f",
        dir = tokens.path().display()
    );
    let config = json!({
        "command": env!("CARGO_BIN_EXE_writ"),
        "args": ["mcp", "--ca-url", ca.url, "--token-source", pop,
                 "--allowed-hosts", "*.prod.example.com", "--ssh-config", ssh_config],
        "env": {
            "HOME": home.path(),
            "PATH": std::env::var("PATH").unwrap_or_default(),
            "XDG_CONFIG_HOME": home.path().join(".config"),
        },
        "login": ALICE,
        "host": HOST_NAME,
        "outside_host": "db-01.staging.example.com",
    });
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
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the client's JSON");

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
    let names: Vec<_> = fs::read_dir(&ssh_dir)
        .expect("ssh dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(names, ["config"], "writ mcp wrote into ~/.ssh");
}
