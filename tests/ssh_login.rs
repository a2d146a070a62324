//! End to end through real OpenSSH: a certificate from the API logs in through `sshd`
//! running `writ-principals` as its AuthorizedPrincipalsCommand, and is refused for a login
//! or host the task does not name, when signed by another CA, and on a host that does not
//! run `writ-principals` (no bare-login principals). `writ ssh` keeps its key in an
//! ssh-agent only (no private key in any file under its temporary directory or in any
//! environment of its process tree, during and after the session), renews the certificate
//! of a session that outlives it, and with `--use-agent` lends the key to the user's agent
//! for the session only.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::ca::{TestCa, certificate_request};
use common::idp::{Key, TestIdp};
use common::sshd::{Sshd, SshdOptions, TestHost, ensure_user, require_root_and_sshd, ssh_login};
use common::{public_key, runtime, ssh_keygen};

const ALICE: &str = "writ_alice";
const BOB: &str = "writ_bob";
const HOST_NAME: &str = "web-01.prod.example.com";

fn host_config(ca: &TestCa, host: &TestHost, host_name: &str) -> String {
    format!(
        "ca_url = \"{url}\"\nhost_name = \"{host_name}\"\nstate_dir = \"{state}\"\n",
        url = ca.url,
        state = host.state_dir().display()
    )
}

fn sync(host: &TestHost) {
    // A binary copied moments ago can be briefly "busy" (ETXTBSY) while another test
    // thread's fork still holds the copy's write descriptor; retry that case only.
    let mut attempts = 0;
    let out = loop {
        match Command::new(host.principals_bin())
            .args(["sync", "--config"])
            .arg(host.host_config_path())
            .output()
        {
            Err(e) if e.raw_os_error() == Some(26) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.expect("run writ-principals sync"),
        }
    };
    assert!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ask the CA for a certificate for `key` and write it next to the key as `<key>-cert.pub`.
fn issue(
    ca: &TestCa,
    idp: &TestIdp,
    key: &Path,
    logins: &[&str],
    hosts: &[&str],
) -> (PathBuf, String) {
    let response = ca.request_certificate(
        Some(&idp.token(Key::Rsa, "agent-1")),
        &certificate_request(&public_key(key), logins, hosts, None),
    );
    assert_eq!(response.status, 201, "{}", response.text);
    let body = response.json();
    let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
    std::fs::write(&cert, body["certificate"].as_str().expect("certificate")).expect("write cert");
    (cert, body["task_id"].as_str().expect("task_id").to_owned())
}

/// Sign `key` with `ca_key` using ssh-keygen, with writ's extensions and `principals`.
fn sign_with_ssh_keygen(
    ca_key: &Path,
    key: &Path,
    principals: &str,
    task_id: &str,
    out_name: &str,
) -> PathBuf {
    let dir = key.parent().expect("dir");
    let pubkey = dir.join(format!("{out_name}.pub"));
    std::fs::copy(format!("{}.pub", key.display()), &pubkey).expect("copy pub");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca_key)
        .args(["-I", "foreign", "-n", principals, "-V", "-1m:+5m"])
        .args(["-O", &format!("extension:task@writ.dev={task_id}")])
        .args(["-O", &format!("extension:hosts@writ.dev={HOST_NAME}")])
        .arg(&pubkey)
        .status()
        .expect("ssh-keygen -s");
    assert!(status.success());
    dir.join(format!("{out_name}-cert.pub"))
}

/// A CA whose policy `agents` grants ALICE on the prod hosts, its IdP, and a host running
/// `writ-principals` (synced) with its sshd, for the agent-command tests.
fn alice_on_a_host() -> (TestIdp, TestCa, TestHost, Sshd) {
    require_root_and_sshd();
    ensure_user(ALICE);
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(
        &idp,
        "",
        &format!("name = \"agents\"\nlogins = [\"{ALICE}\"]\nhosts = [\"*.prod.example.com\"]\n"),
    );
    let host = TestHost::new(common::writ_principals());
    host.write_host_config(&host_config(&ca, &host, HOST_NAME));
    sync(&host);
    let sshd = Sshd::start(&host, SshdOptions::default());
    (idp, ca, host, sshd)
}

#[test]
fn api_certificate_logs_in_only_for_its_task() {
    require_root_and_sshd();
    ensure_user(ALICE);
    ensure_user(BOB);
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(
        &idp,
        "",
        &format!(
            "name = \"agents\"\nlogins = [\"{ALICE}\", \"{BOB}\"]\nhosts = [\"*.prod.example.com\"]\n"
        ),
    );
    let host = TestHost::new(common::writ_principals());
    host.write_host_config(&host_config(&ca, &host, HOST_NAME));
    sync(&host);
    let sshd = Sshd::start(&host, SshdOptions::default());

    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let (cert, task_id) = issue(&ca, &idp, &key, &[ALICE], &["web-*.prod.example.com"]);

    let ok = ssh_login(sshd.port(), ALICE, &key, Some(&cert));
    assert!(
        ok.success,
        "login with the task's certificate failed: {}\n{}",
        ok.stderr,
        sshd.log()
    );

    // A login the task does not name (but a real user the policy could grant).
    let other_login = ssh_login(sshd.port(), BOB, &key, Some(&cert));
    assert!(
        !other_login.success,
        "certificate admitted for a login outside its task"
    );

    // The key alone is not enough.
    assert!(!ssh_login(sshd.port(), ALICE, &key, None).success);

    // The same host under a name the task's patterns do not match.
    host.write_host_config(&host_config(&ca, &host, "db-01.staging.example.com"));
    let wrong_host = ssh_login(sshd.port(), ALICE, &key, Some(&cert));
    assert!(
        !wrong_host.success,
        "certificate admitted on a host outside its task"
    );
    host.write_host_config(&host_config(&ca, &host, HOST_NAME));
    assert!(
        ssh_login(sshd.port(), ALICE, &key, Some(&cert)).success,
        "control: right host again"
    );

    // A certificate with the right principals and extensions, signed by another CA.
    let foreign_ca = ssh_keygen(dir.path(), "foreign_ca", &["-t", "ed25519"]);
    let foreign = sign_with_ssh_keygen(
        &foreign_ca,
        &key,
        &format!("writ:{task_id}:{ALICE}"),
        &task_id,
        "foreign",
    );
    assert!(
        !ssh_login(sshd.port(), ALICE, &key, Some(&foreign)).success,
        "foreign CA admitted"
    );

    let log = sshd.log();
    assert!(
        log.contains(&format!("Accepted publickey for {ALICE}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("task={task_id}")),
        "sshd logs the key id with the task: {log}"
    );
}

#[test]
fn hosts_without_writ_principals_refuse_writ_certificates() {
    require_root_and_sshd();
    ensure_user(ALICE);
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(
        &idp,
        "",
        &format!("name = \"agents\"\nlogins = [\"{ALICE}\"]\nhosts = [\"*\"]\n"),
    );
    let host = TestHost::new(common::writ_principals());
    host.write_host_config(&host_config(&ca, &host, HOST_NAME));
    sync(&host);
    // sshd trusts the writ CA but runs no AuthorizedPrincipalsCommand: principals must
    // equal the login, as on any stock host that trusts the CA by mistake.
    let sshd = Sshd::start(
        &host,
        SshdOptions {
            no_principals_command: true,
            ..SshdOptions::default()
        },
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let (cert, task_id) = issue(&ca, &idp, &key, &[ALICE], &["*"]);
    let stolen = ssh_login(sshd.port(), ALICE, &key, Some(&cert));
    assert!(
        !stolen.success,
        "a writ certificate worked on a host without writ-principals"
    );

    // Control: the same CA key signing a bare-login principal would be admitted, so the
    // refusal above is due to writ's principal format, not to the test setup.
    let rows = runtime()
        .block_on(ca.state.store.ca_keys())
        .expect("ca keys");
    let user_key = rows
        .iter()
        .find(|r| r.kind == writ::store::KeyKind::User && r.state == writ::store::KeyState::Active)
        .expect("the active user CA key");
    let ca_key = ssh_key::PrivateKey::from_openssh(&user_key.private_key)
        .expect("parse")
        .decrypt("test passphrase")
        .expect("decrypt");
    let ca_key_path = common::sshd::write_private_key(
        dir.path(),
        "writ_ca",
        &ca_key.to_openssh(ssh_key::LineEnding::LF).expect("pem"),
    );
    let bare = sign_with_ssh_keygen(&ca_key_path, &key, ALICE, &task_id, "bare");
    assert!(
        ssh_login(sshd.port(), ALICE, &key, Some(&bare)).success,
        "control login failed: {}",
        sshd.log()
    );
}

#[test]
fn writ_ssh_runs_a_task_scoped_session_and_completes_the_task() {
    let (idp, ca, _host, sshd) = alice_on_a_host();
    let port = sshd.port().to_string();

    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args([
            "ssh",
            "--ca-url",
            &ca.url,
            "--token",
            &idp.token(Key::Rsa, "agent-1"),
        ])
        .args([
            "--login",
            ALICE,
            "--host",
            HOST_NAME,
            "--purpose",
            "check uptime",
        ])
        .args([
            "--ssh-arg=-oHostName=127.0.0.1",
            "--ssh-arg=-p",
            &format!("--ssh-arg={port}"),
        ])
        // This host is not enrolled for host certificates (tests/host_certificates_ssh.rs
        // covers those): the explicit opt-out.
        .arg("--insecure-trust-on-first-use")
        .args([
            "--ssh-arg=-oBatchMode=yes",
            "--ssh-arg=-oLogLevel=ERROR",
            "--",
            "echo",
            "hello-from-task",
        ])
        .output()
        .expect("run writ ssh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "writ ssh failed: {stderr}\n{}",
        sshd.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello-from-task"));
    assert!(stderr.contains("completed"), "{stderr}");
    assert!(
        stderr.contains("warning: --insecure-trust-on-first-use"),
        "the opt-out is said out loud: {stderr}"
    );

    // The task was completed with a proof of possession: its certificate is revoked.
    let completed = ca.audit_events(writ::audit::event::TASK_COMPLETED);
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].entry.subject.as_deref(), Some("agent-1"));
    let feed = common::http::get(&format!("{}/v1/revocations", ca.url)).text;
    let task_id = completed[0].entry.task_id.clone().expect("task id");
    assert!(feed.contains(&task_id));
    // The remote command was recorded with the task before it ran.
    let runs = ca.audit_events(writ::audit::event::TASK_RUN);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].entry.task_id.as_deref(), Some(task_id.as_str()));
    assert_eq!(
        runs[0].entry.command.as_deref(),
        Some("echo hello-from-task")
    );
    assert_eq!(runs[0].entry.host.as_deref(), Some(HOST_NAME));
    assert!(runs[0].seq < completed[0].seq);
}

#[test]
fn writ_ssh_never_passes_the_destination_as_an_ssh_option() {
    // A policy wide enough to grant the host pattern `-b127.0.0.1` (valid DNS characters):
    // before the fix the task was opened and ssh read the "host" as its `-b` option.
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(
        &idp,
        "",
        &format!("name = \"agents\"\nlogins = [\"{ALICE}\"]\nhosts = [\"*\"]\n"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["ssh", "--ca-url", &ca.url, "--token"])
        .arg(idp.token(Key::Rsa, "agent-1"))
        .args(["--login", ALICE, "--host=-b127.0.0.1", "--purpose", "probe"])
        .args(["--ssh-arg=-oBatchMode=yes", "--", "true"])
        .output()
        .expect("run writ ssh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot start with '-'"), "{stderr}");
    assert!(
        ca.audit_events(writ::audit::event::TASK_CREATED).is_empty(),
        "no task is opened for a destination that would be an option"
    );
}

#[test]
fn writ_cert_certifies_an_existing_key() {
    let (idp, ca, _host, sshd) = alice_on_a_host();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, idp.token(Key::Rsa, "agent-1")).expect("token file");

    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args([
            "cert",
            "--ca-url",
            &ca.url,
            "--token",
            &format!("@{}", token_file.display()),
        ])
        .args([
            "--login",
            ALICE,
            "--host",
            "web-*.prod.example.com",
            "--ttl",
            "2m",
            "--key",
        ])
        .arg(&key)
        .output()
        .expect("run writ cert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
    assert!(
        ssh_login(sshd.port(), ALICE, &key, Some(&cert)).success,
        "{}",
        sshd.log()
    );
}

#[test]
fn writ_ssh_takes_its_token_from_a_source_and_exits_with_the_remote_status() {
    let (idp, ca, _host, sshd) = alice_on_a_host();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, idp.token(Key::Rsa, "agent-1")).expect("token file");
    // The CA and the login from a client config, the token from a file source.
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        format!("ca_url = \"{}\"\nlogin = \"{ALICE}\"\n", ca.url),
    )
    .expect("client config");

    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .env_remove("WRIT_CA_URL")
        .env("WRIT_CLIENT_CONFIG", &config)
        .args(["ssh", "--token-source"])
        .arg(format!("file:{}", token_file.display()))
        .args(["--host", HOST_NAME, "--insecure-trust-on-first-use"])
        .args(["--ssh-arg=-oHostName=127.0.0.1", "--ssh-arg=-p"])
        .arg(format!("--ssh-arg={}", sshd.port()))
        .args(["--ssh-arg=-oBatchMode=yes", "--ssh-arg=-oLogLevel=ERROR"])
        .args(["--", "echo from-source; exit 7"])
        .output()
        .expect("run writ ssh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}\n{}", sshd.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-source"));
    assert!(!stderr.contains("writ: error"), "{stderr}");
    assert_eq!(
        ca.audit_events(writ::audit::event::TASK_COMPLETED).len(),
        1,
        "{stderr}"
    );
}

/// `writ ssh` as alice to the test host (not enrolled: trust on first use) for `purpose`,
/// with `extra` arguments; the caller adds its own and the remote command.
fn writ_ssh_to_the_host(
    idp: &TestIdp,
    ca: &TestCa,
    sshd: &Sshd,
    purpose: &str,
    extra: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_writ"));
    command
        .args(["ssh", "--ca-url", &ca.url, "--token"])
        .arg(idp.token(Key::Rsa, "agent-1"))
        .args(["--login", ALICE, "--host", HOST_NAME, "--purpose", purpose])
        .arg("--insecure-trust-on-first-use")
        .args(extra)
        .args([
            "--ssh-arg=-oHostName=127.0.0.1",
            "--ssh-arg=-oBatchMode=yes",
        ])
        .arg(format!("--ssh-arg=-p{}", sshd.port()));
    command
}

#[test]
fn ctrl_c_ends_the_session_and_writ_ssh_still_completes_the_task() {
    let (idp, ca, _host, sshd) = alice_on_a_host();
    let mut writ = writ_ssh_to_the_host(&idp, &ca, &sshd, "interrupted", &[])
        .args(["--", "sleep", "60"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run writ ssh");
    // The session is up once sshd has let the certificate in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sshd
        .log()
        .contains(&format!("Accepted publickey for {ALICE}"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no session:\n{}",
            sshd.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Ctrl-C, as a terminal or a supervisor would send it to writ.
    let status = Command::new("kill")
        .args(["-INT", &writ.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = writ.try_wait().expect("try_wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "writ ssh did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut writ.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!exited.success(), "the session was interrupted: {stderr}");
    assert!(stderr.contains("completed"), "{stderr}");
    let completed = ca.audit_events(writ::audit::event::TASK_COMPLETED);
    assert_eq!(
        completed.len(),
        1,
        "the interrupted task was completed: {stderr}"
    );
}

/// Every file under `dir` that holds a private key: what `writ ssh` must never write.
fn private_key_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(private_key_files(&path));
        } else if kind.is_file()
            && std::fs::read(&path).is_ok_and(|bytes| {
                bytes.windows(11).any(|w| w == b"PRIVATE KEY")
                    || ssh_key::PrivateKey::from_bytes(&bytes).is_ok()
            })
        {
            found.push(path);
        }
    }
    found
}

/// `pid` and every process descended from it.
fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The parent is the second field after the command name's closing parenthesis.
            let parent = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((child, parent))
        })
        .collect();
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        next += 1;
    }
    tree
}

/// The processes of `pid`'s tree whose environment holds a private key.
fn environments_with_private_keys(pid: u32) -> Vec<u32> {
    process_tree(pid)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.windows(11).any(|w| w == b"PRIVATE KEY"))
        })
        .collect()
}

/// `writ ssh` to the test host whose remote command prints `started`, waits for a line on
/// its stdin, then prints `finished-<line>`; returns writ and its stdout, read up to
/// `started` (the session is up).
fn paused_session(
    idp: &TestIdp,
    ca: &TestCa,
    sshd: &Sshd,
    tmpdir: &Path,
    extra: &[&str],
    environment: &[(&str, &Path)],
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    let mut writ = writ_ssh_to_the_host(idp, ca, sshd, "long job", extra)
        .env("TMPDIR", tmpdir)
        .env_remove("SSH_AUTH_SOCK")
        .envs(environment.iter().copied())
        .arg("--ssh-arg=-oLogLevel=ERROR")
        .args(["--", "echo started; read line; echo finished-$line"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run writ ssh");
    let mut stdout = std::io::BufReader::new(writ.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read stdout");
    assert_eq!(line.trim(), "started", "no session:\n{}", sshd.log());
    (writ, stdout)
}

/// Let the paused session finish; its exit status, stdout rest and stderr.
fn resume(
    mut writ: std::process::Child,
    mut stdout: std::io::BufReader<std::process::ChildStdout>,
) -> (std::process::ExitStatus, String, String) {
    use std::io::{Read, Write};
    let mut stdin = writ.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write stdin");
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("stdout");
    let mut stderr = String::new();
    writ.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    (writ.wait().expect("wait"), rest, stderr)
}

#[test]
fn writ_ssh_keeps_the_key_in_memory_and_renews_the_certificate_of_a_long_session() {
    let (idp, ca, _host, sshd) = alice_on_a_host();
    let tmpdir = tempfile::tempdir().expect("tempdir");
    // Six-second certificates: renewed at two thirds of their life while the session lasts.
    let (writ, stdout) = paused_session(&idp, &ca, &sshd, tmpdir.path(), &["--ttl", "6s"], &[]);

    // During the session: no private key in any file under its temporary directory, nor
    // in the environment of writ, ssh or the agent.
    assert_eq!(private_key_files(tmpdir.path()), Vec::<PathBuf>::new());
    assert_eq!(environments_with_private_keys(writ.id()), Vec::<u32>::new());
    assert!(
        process_tree(writ.id()).len() >= 3,
        "writ, its ssh and its private ssh-agent"
    );

    // The session outlives its first certificate: two renewals (the second comes after
    // the first certificate expired).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ca.audit_events(writ::audit::event::CERT_ISSUED).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no renewals: {:?}",
            ca.audit_events(writ::audit::event::CERT_DENIED)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let issued = ca.audit_events(writ::audit::event::CERT_ISSUED);
    assert!(
        issued[1..]
            .iter()
            .all(|r| r.entry.task_id == issued[0].entry.task_id),
        "renewals of the same task"
    );

    let (status, rest, stderr) = resume(writ, stdout);
    assert!(status.success(), "{stderr}\n{}", sshd.log());
    assert!(rest.contains("finished-go"), "{rest}");
    assert!(stderr.contains("certificate renewed"), "{stderr}");
    // Completed with a proof of possession by the latest certificate: the first one had
    // expired, so without renewal this fails.
    assert!(
        stderr.contains("completed") && !stderr.contains("could not complete"),
        "{stderr}"
    );
    assert_eq!(
        ca.audit_events(writ::audit::event::TASK_COMPLETED).len(),
        1,
        "{stderr}"
    );
    // Afterwards: nothing left in the temporary directory (the agent's socket included).
    let left: Vec<_> = std::fs::read_dir(tmpdir.path())
        .expect("tmpdir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn writ_ssh_use_agent_lends_the_key_to_the_user_s_agent_for_the_session_only() {
    use std::io::BufRead;
    let (idp, ca, _host, sshd) = alice_on_a_host();
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let socket = tmpdir.path().join("user-agent.sock");
    // The user's own agent, in the foreground; its first line says it is listening.
    let mut user_agent = Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut ready = String::new();
    std::io::BufReader::new(user_agent.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("ssh-agent ready");
    let _stop = Stop(user_agent);
    let listed = || {
        let out = Command::new("ssh-add")
            .arg("-L")
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .expect("ssh-add -L");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let (writ, stdout) = paused_session(
        &idp,
        &ca,
        &sshd,
        tmpdir.path(),
        &["--use-agent"],
        &[("SSH_AUTH_SOCK", &socket)],
    );
    // During the session the user's agent holds the task's certificate (and its key).
    let during = listed();
    assert_eq!(during.lines().count(), 1, "{during}");
    assert!(
        during.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{during}"
    );
    assert_eq!(private_key_files(tmpdir.path()), Vec::<PathBuf>::new());

    let (status, rest, stderr) = resume(writ, stdout);
    assert!(status.success(), "{stderr}\n{}", sshd.log());
    assert!(rest.contains("finished-go"), "{rest}");
    // Afterwards the agent no longer holds it.
    let after = listed();
    assert!(after.contains("no identities"), "{after}\n{stderr}");
}
