//! The `writ` command line as an operator and an agent meet it in their first hour, run
//! as the real binary against the real CA over HTTP: output into a pipe whose reader has
//! gone, `writ task show|complete` with the certificate's key, `writ serve --listen` and
//! `--dev` next to WRIT_CONFIG, `--config` where it means nothing, times in
//! `writ admin task show`, the operator's name without $USER, shell completions, the manual
//! page and the help text.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::agents::World;
use common::output::{assert_ok, stderr, stdout};
use serde_json::Value;
use writ::audit::event;

/// `writ ARGS…` with no WRIT_CONFIG, WRIT_CA_URL, client config or GitHub Actions token
/// from the environment running the tests.
fn writ() -> Command {
    common::output::writ_isolated(Path::new("/nonexistent/writ-tests"))
}

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().expect("run writ")
}

impl World {
    fn config(&self) -> PathBuf {
        self.ca.dir().join("writ.toml")
    }

    /// `writ admin --config <the CA's config> ARGS…`
    fn admin(&self, args: &[&str]) -> Command {
        let mut command = writ();
        command.arg("admin").arg("--config").arg(self.config());
        command.args(args);
        command
    }

    /// A file holding a fresh token for `agent-1` (tokens are single-use).
    fn token_file(&self, name: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, self.token("agent-1")).expect("write token");
        format!("@{}", path.display())
    }

    /// `writ cert` the world's key for `deploy` on web-01; the task id it prints.
    fn cert(&self) -> String {
        let out = run(writ()
            .args(["cert", "--ca-url", &self.ca.url, "--token"])
            .arg(self.token_file("cert-token"))
            .args(["--login", "deploy", "--host", "web-01.prod.example.com"])
            .args(["--purpose", "cli test", "--key"])
            .arg(&self.key));
        assert_ok(&out);
        let text = stdout(&out);
        text.lines()
            .find_map(|l| l.strip_prefix("task "))
            .unwrap_or_else(|| panic!("no task line in {text}"))
            .to_owned()
    }

    /// `writ task SUBCOMMAND ID --ca-url … EXTRA…`
    fn task(&self, subcommand: &str, id: &str, extra: &[&str]) -> Output {
        run(writ()
            .args(["task", subcommand, id, "--ca-url", &self.ca.url])
            .args(extra))
    }
}

/// Run `command` with its stdout a pipe whose read end is already closed, so its first
/// write fails with EPIPE (not merely "may fail": nothing can read what it writes).
fn run_into_closed_pipe(command: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    command
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run writ")
}

fn assert_quiet_end(what: &str, output: &Output) {
    let err = stderr(output);
    assert_ne!(output.status.code(), Some(101), "{what} panicked: {err}");
    assert!(
        !err.contains("panicked")
            && !err.contains("Broken pipe")
            && !err.contains("RUST_BACKTRACE"),
        "{what}: {err}"
    );
    assert!(
        output.status.success(),
        "{what}: exit {:?}: {err}",
        output.status
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let w = World::start("");
    let task = w.open_task();
    let task_id = task["task_id"].as_str().expect("task id");
    let dev_dir = tempfile::tempdir().expect("tempdir");
    writ::dev::prepare(dev_dir.path(), "127.0.0.1:0".parse().expect("addr")).expect("dev");
    let commands: Vec<(&str, Command)> = vec![
        ("admin ca list", w.admin(&["ca", "list"])),
        ("admin ca list --json", w.admin(&["ca", "list", "--json"])),
        ("admin ca export-public", w.admin(&["ca", "export-public"])),
        ("admin audit verify", w.admin(&["audit", "verify"])),
        (
            "admin audit verify --json",
            w.admin(&["audit", "verify", "--json"]),
        ),
        ("admin audit export", w.admin(&["audit", "export"])),
        (
            "admin audit trail",
            w.admin(&["audit", "trail", "--task", task_id]),
        ),
        ("admin task show", w.admin(&["task", "show", task_id])),
        (
            "admin task show --json",
            w.admin(&["task", "show", task_id, "--json"]),
        ),
        ("completions bash", {
            let mut c = writ();
            c.args(["completions", "bash"]);
            c
        }),
        ("man", {
            let mut c = writ();
            c.arg("man");
            c
        }),
        ("dev token", {
            let mut c = writ();
            c.args(["dev", "token", "--sub", "agent-1", "--data-dir"])
                .arg(dev_dir.path());
            c
        }),
    ];
    for (what, mut command) in commands {
        let output = run_into_closed_pipe(&mut command);
        assert_quiet_end(what, &output);
    }

    // The agent side too: `writ task show` into a closed pipe.
    let id = w.cert();
    let key = w.key.to_string_lossy().into_owned();
    let mut show = writ();
    show.args(["task", "show", &id, "--ca-url", &w.ca.url, "--key", &key]);
    assert_quiet_end("task show", &run_into_closed_pipe(&mut show));
}

#[test]
fn an_agent_shows_and_completes_its_task_with_the_certified_key() {
    let w = World::start("");
    let id = w.cert();
    let key = w.key.to_string_lossy().into_owned();
    assert!(
        Path::new(&format!("{key}-cert.pub")).exists(),
        "writ cert writes <key>-cert.pub"
    );

    let shown = w.task("show", &id, &["--key", &key]);
    assert_ok(&shown);
    let text = stdout(&shown);
    assert!(text.contains(&format!("task      {id}")), "{text}");
    assert!(text.contains("state     active"), "{text}");
    assert!(text.contains("logins    deploy"), "{text}");
    assert!(text.contains("purpose   cli test"), "{text}");
    let expires = text
        .lines()
        .find_map(|l| l.strip_prefix("expires   "))
        .unwrap_or_else(|| panic!("no expiry in {text}"));
    assert!(
        expires.ends_with(')') && expires.contains("Z (in "),
        "RFC 3339 and distance: {expires}"
    );

    let as_json = w.task("show", &id, &["--key", &key, "--json"]);
    assert_ok(&as_json);
    let json: Value = serde_json::from_slice(&as_json.stdout).expect("JSON");
    assert_eq!(json["task_id"], id.as_str());
    assert_eq!(json["state"], "active");

    let completed = w.task("complete", &id, &["--key", &key]);
    assert_ok(&completed);
    assert!(
        stdout(&completed).contains("state     completed"),
        "{}",
        stdout(&completed)
    );
    let records = w.ca.audit_events(event::TASK_COMPLETED);
    assert_eq!(records.len(), 1, "one task.completed");
    assert_eq!(records[0].entry.task_id.as_deref(), Some(id.as_str()));

    // The certificate no longer authenticates (its task ended): the error says what to do.
    let refused = w.task("show", &id, &["--key", &key]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--token"), "{}", stderr(&refused));

    // A fresh workload token still shows it.
    let token = w.token_file("show-token");
    let shown = w.task("show", &id, &["--token", &token]);
    assert_ok(&shown);
    assert!(
        stdout(&shown).contains("state     completed"),
        "{}",
        stdout(&shown)
    );
    assert!(stdout(&shown).contains("(revoked)"), "{}", stdout(&shown));

    // Completing twice is refused by the CA.
    let token = w.token_file("again-token");
    let again = w.task("complete", &id, &["--token", &token]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("409"), "{}", stderr(&again));
}

#[test]
fn task_commands_refuse_before_sending_anything_wrong() {
    let w = World::start("");
    let id = w.cert();
    let key = w.key.to_string_lossy().into_owned();
    let other = "0".repeat(32);
    let out = w.task("show", &other, &["--key", &key]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("is for task {id}, not {other}")),
        "{}",
        stderr(&out)
    );
    let out = w.task("show", "../v1/krl", &["--key", &key]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a task id"),
        "{}",
        stderr(&out)
    );
    let out = w.task("show", &id, &[]);
    assert!(!out.status.success(), "needs --key or --token");
    assert!(stderr(&out).contains("--key"), "{}", stderr(&out));
    assert!(w.ca.audit_events(event::TASK_DENIED).is_empty());
}

#[test]
fn admin_task_show_prints_rfc3339_and_the_operator_is_named_without_user() {
    let w = World::start("");
    let task = w.open_task();
    let task_id = task["task_id"].as_str().expect("task id");
    let shown = run(&mut w.admin(&["task", "show", task_id]));
    assert_ok(&shown);
    let text = stdout(&shown);
    let expires = text
        .lines()
        .find_map(|l| l.strip_prefix("expires   "))
        .unwrap_or_else(|| panic!("no expiry in {text}"));
    assert_eq!(
        expires.as_bytes().get(10),
        Some(&b'T'),
        "RFC 3339: {expires}"
    );
    assert!(expires.contains("Z (in 1"), "{expires}");

    // No $USER or $SUDO_USER (cron, systemd): the effective uid's name, as `id -un` says.
    let revoked = run(w
        .admin(&["task", "revoke", task_id, "--reason", "drill"])
        .env_remove("USER")
        .env_remove("SUDO_USER"));
    assert_ok(&revoked);
    let id_un = Command::new("id").arg("-un").output().expect("id -un");
    let me = String::from_utf8_lossy(&id_un.stdout).trim().to_owned();
    let records = w.ca.audit_events(event::TASK_REVOKED);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].entry.subject.as_deref(), Some(me.as_str()));
}

/// A `writ serve` child, killed on drop.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `command` (a `writ serve`) with its log on a pipe and read the log until the
/// "listening" line: the bound address. Panics with the log if it exits first.
fn serve(command: &mut Command) -> (Serving, SocketAddr) {
    let mut child = command
        .env_remove("WRIT_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn writ serve");
    let log = child.stderr.take().expect("stderr");
    let serving = Serving(child);
    let mut seen = String::new();
    for line in BufReader::new(log).lines() {
        let line = line.expect("read log");
        seen.push_str(&line);
        seen.push('\n');
        if let Some(addr) = line
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|_| line.contains("listening"))
        {
            return (serving, addr.parse().expect("address"));
        }
    }
    panic!("writ serve exited without listening:\n{seen}");
}

/// A configuration like the test CA's but with `[server] listen = LISTEN`, in `dir`.
fn config_listening_on(w: &World, listen: &str) -> PathBuf {
    let text = std::fs::read_to_string(w.config()).expect("read config");
    let path = w.dir.path().join("serve.toml");
    std::fs::write(&path, format!("[server]\nlisten = \"{listen}\"\n\n{text}")).expect("write");
    path
}

#[test]
fn serve_listen_overrides_the_configuration_and_host_names_resolve() {
    let w = World::start("");
    // The configured address is taken: serving there would fail.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let config = config_listening_on(&w, &taken.local_addr().expect("addr").to_string());
    let (server, addr) = serve(
        writ()
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", "127.0.0.1:0"]),
    );
    assert!(addr.ip().is_loopback());
    assert_ne!(addr, taken.local_addr().expect("addr"));
    drop(server);

    // `localhost:PORT` is a name, resolved (to loopback) when the configuration loads.
    let config = config_listening_on(&w, "localhost:0");
    let (server, addr) = serve(writ().args(["serve", "--config"]).arg(&config));
    assert!(addr.ip().is_loopback(), "{addr}");
    drop(server);
    let (server, addr) = serve(
        writ()
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", "localhost:0"]),
    );
    assert!(addr.ip().is_loopback(), "{addr}");
    drop(server);

    // The loopback rule applies to the override.
    let refused = run(writ()
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "0.0.0.0:0"]));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--listen 0.0.0.0:0") && stderr(&refused).contains("loopback"),
        "{}",
        stderr(&refused)
    );
    let refused = run(writ().args(["serve", "--dev", "--listen", "no-such-host.invalid:1"]));
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("no-such-host.invalid"));

    assert!(
        writ::config::resolve_listen("localhost:8422")
            .expect("resolves")
            .ip()
            .is_loopback()
    );
    assert_eq!(
        writ::config::resolve_listen("[::1]:8422").expect("an IP"),
        "[::1]:8422".parse::<SocketAddr>().expect("addr")
    );
}

#[test]
fn serve_dev_ignores_writ_config_and_refuses_a_typed_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (server, addr) = serve(
        writ()
            .env("WRIT_CONFIG", dir.path().join("nonexistent.toml"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data),
    );
    assert!(addr.ip().is_loopback());
    drop(server);

    let refused = run(writ()
        .args(["serve", "--dev", "--config"])
        .arg(dir.path().join("writ.toml"))
        .arg("--data-dir")
        .arg(&data));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("--dev serves its own configuration"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn config_is_refused_where_it_means_nothing_and_ignored_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    writ::dev::prepare(dir.path(), "127.0.0.1:0".parse().expect("addr")).expect("dev");
    let config = dir.path().join("writ.toml");
    for args in [
        &[
            "cert",
            "--ca-url",
            "http://127.0.0.1:9",
            "--token",
            "x",
            "--login",
            "a",
            "--host",
            "b",
            "--key",
            "k",
        ][..],
        &[
            "ssh",
            "--ca-url",
            "http://127.0.0.1:9",
            "--token",
            "x",
            "--login",
            "a",
            "--host",
            "b",
        ],
        &[
            "task",
            "show",
            "0123",
            "--ca-url",
            "http://127.0.0.1:9",
            "--token",
            "x",
        ],
        &["dev", "token", "--sub", "agent-1"],
    ] {
        let out = run(writ().args(args).arg("--config").arg(&config));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("reads no CA configuration")
                && stderr(&out).contains("drop --config"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // From the environment (a shell profile exporting it for `writ admin`), it is ignored.
    let out = run(writ()
        .env("WRIT_CONFIG", &config)
        .args(["dev", "token", "--sub", "agent-1", "--data-dir"])
        .arg(dir.path()));
    assert_ok(&out);
    assert_eq!(stdout(&out).trim().split('.').count(), 3, "a JWT");
}

#[test]
fn completions_and_the_manual_page_come_from_the_command_line() {
    let bash = run(writ().args(["completions", "bash"]));
    assert_ok(&bash);
    let script = stdout(&bash);
    for word in [
        "_writ()",
        "complete",
        "serve",
        "admin",
        "task",
        "completions",
        "--ca-url",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let zsh = run(writ().args(["completions", "zsh"]));
    assert_ok(&zsh);
    assert!(stdout(&zsh).starts_with("#compdef writ"));
    let fish = run(writ().args(["completions", "fish"]));
    assert_ok(&fish);
    assert!(stdout(&fish).contains("complete -c writ"));
    assert!(!run(writ().args(["completions", "tcsh"])).status.success());

    let man = run(writ().arg("man"));
    assert_ok(&man);
    let page = stdout(&man);
    let title = page
        .lines()
        .find(|l| l.starts_with(".TH "))
        .unwrap_or_else(|| panic!("no .TH in {page}"));
    assert!(title.starts_with(".TH writ 1"), "{title}");
    assert!(page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"));

    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(writ().args(["man", "--dir"]).arg(dir.path()));
    assert_ok(&out);
    for page in [
        "writ.1",
        "writ-serve.1",
        "writ-task-complete.1",
        "writ-admin-ca-list.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH "), "{page}");
    }
}

#[test]
fn help_explains_with_examples() {
    let top = run(writ().arg("--help"));
    assert_ok(&top);
    let text = stdout(&top);
    for word in [
        "Examples:",
        "writ serve --dev",
        "writ task complete",
        "WRIT_CA_URL",
        "completions",
    ] {
        assert!(text.contains(word), "top-level help lacks {word}:\n{text}");
    }
    for (args, word) in [
        (&["serve", "--help"][..], "--listen"),
        (&["cert", "--help"], "writ task complete"),
        (&["cert", "--help"], "github-actions[:AUDIENCE]"),
        (&["ssh", "--help"], "--token-source <SPEC>"),
        (&["task", "show", "--help"], "command:CMD"),
        (&["task", "complete", "--help"], "<key>-cert.pub"),
        (&["task", "show", "--help"], "Examples:"),
        (&["admin", "--help"], "Examples:"),
        (&["admin", "--help"], "store copy --to"),
        (&["admin", "store", "--help"], "migrate"),
        (&["admin", "store", "copy", "--help"], "--password-file"),
        (&["completions", "--help"], "bash_completion"),
    ] {
        let out = run(writ().args(args));
        assert_ok(&out);
        assert!(
            stdout(&out).contains(word),
            "{args:?} lacks {word}:\n{}",
            stdout(&out)
        );
    }
}
