//! Integration-test harness for real OpenSSH (SPEC §8): owns local test users, a
//! root-owned host directory holding the principals binary and its state, a throwaway
//! `sshd` on 127.0.0.1 wired to that binary through `AuthorizedPrincipalsCommand`, and a
//! non-interactive `ssh` login probe.
//!
//! Everything here is std plus `tempfile`; processes are supervised by PID and readiness
//! is detected by polling with a deadline, never by fixed sleeps.

#![allow(dead_code)] // Each test binary uses a different subset of the harness.

use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The sshd binary the tests run (sshd re-executes itself, so the path must be absolute).
pub const SSHD: &str = "/usr/sbin/sshd";
/// Parent of every [`TestHost`] directory; it and all its ancestors are root-owned 0755.
pub const TEST_ROOT: &str = "/opt/writ-tests";
/// What the remote side of [`ssh_login`] prints on a successful login.
pub const LOGIN_MARKER: &str = "writ-login-ok";

const READY_DEADLINE: Duration = Duration::from_secs(10);
const SSH_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
const BIND_ATTEMPTS: usize = 5;

/// Panics (so the test fails rather than skips) unless running as root with
/// openssh-server and the OpenSSH client tools installed.
pub fn require_root_and_sshd() {
    const HOW: &str =
        "these tests need root and openssh-server: run .ci/run or `apt-get install openssh-server`";
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uids: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    if uids.len() < 2 || uids[0] != "0" || uids[1] != "0" {
        panic!("{HOW} (not running as root: /proc/self/status Uid: {uids:?})");
    }
    if !Path::new(SSHD).is_file() {
        panic!("{HOW} ({SSHD} is missing)");
    }
    for tool in ["ssh", "ssh-keygen"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            panic!("{HOW} (`{tool}` is not on PATH)");
        }
    }
}

static USER_LOCK: Mutex<()> = Mutex::new(());

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True if `name`'s /etc/shadow password field is locked (starts with `!`).
fn password_locked(name: &str) -> bool {
    let shadow = fs::read_to_string("/etc/shadow").unwrap_or_default();
    shadow.lines().any(|line| {
        let mut fields = line.split(':');
        fields.next() == Some(name) && fields.next().is_some_and(|pw| pw.starts_with('!'))
    })
}

/// Creates local user `name` (shell `/bin/sh`, home directory) unless it already exists.
///
/// The fixed-name users the tests share (`writ_alice`, `writ_bob`) are kept, not removed:
/// every test binary, and every test run on the machine at the same time, uses the same
/// names, so no one of them can tell when the last user is done (removing one at the end
/// of a binary would pull it from under a parallel run). They have no password and no
/// `authorized_keys`; README "Running the tests" says how to remove them. A test that
/// gives a user a way in makes its own uniquely named user and removes it.
///
/// Idempotent and safe under concurrent tests: serialised in-process by a mutex, and a
/// `useradd` that loses a race with another process (user exists, passwd file locked)
/// is tolerated. The password field is set to `*` (no password, but *not* locked: with
/// `UsePAM no`, sshd refuses accounts whose password starts with `!` — "account is
/// locked"); an existing user with a locked password is unlocked the same way.
pub fn ensure_user(name: &str) {
    let _guard = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if user_exists(name) {
            if password_locked(name) {
                run(Command::new("usermod").args(["-p", "*", name]));
            }
            return;
        }
        let out = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", "-p", "*", name])
            .output()
            .expect("run useradd");
        if out.status.success() || user_exists(name) {
            continue; // Re-check from the top (and unlock if another process locked it).
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Exit 9 = "username already in use"; exit 10 = "can't update group file",
        // and "cannot lock" = another process holds /etc/passwd: both are transient.
        let transient = stderr.contains("lock") || out.status.code() == Some(10);
        if !transient || Instant::now() > deadline {
            panic!("useradd {name} failed ({}): {stderr}", out.status);
        }
        thread::sleep(POLL);
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn write_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    set_mode(path, mode);
}

/// Random-enough 64 bits from std's per-process randomly keyed hasher.
fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

static HOST_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A root-owned directory `/opt/writ-tests/<pid>-<counter>-<random>` laid out as a host:
/// `bin/writ-principals` (a copy of the binary under test), `state/` and `host.toml`.
/// Every directory from `/opt` down is root-owned 0755, as sshd requires for an
/// `AuthorizedPrincipalsCommand`. Dropping it removes the directory, and `/opt/writ-tests`
/// with it when that is left empty (best effort).
#[derive(Debug)]
pub struct TestHost {
    dir: PathBuf,
}

impl TestHost {
    /// Lays out a fresh host directory and copies `principals_binary` into it (0755).
    pub fn new(principals_binary: &Path) -> TestHost {
        require_root_and_sshd();
        let root = Path::new(TEST_ROOT);
        let dir = loop {
            // The last host of any test process to go removes TEST_ROOT (see Drop), so it
            // is created (again) on every attempt, and may vanish before the mkdir below.
            fs::create_dir_all(root).unwrap_or_else(|e| panic!("mkdir {TEST_ROOT}: {e}"));
            match fs::set_permissions(root, fs::Permissions::from_mode(0o755)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => panic!("chmod 755 {TEST_ROOT}: {e}"),
            }
            let candidate = root.join(format!(
                "{}-{}-{:016x}",
                std::process::id(),
                HOST_COUNTER.fetch_add(1, Ordering::Relaxed),
                random_u64()
            ));
            match fs::create_dir(&candidate) {
                Ok(()) => break candidate,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("mkdir {}: {e}", candidate.display()),
            }
        };
        // Constructed before the remaining set-up so a panic below still cleans up.
        let host = TestHost { dir };
        set_mode(&host.dir, 0o755);
        for sub in ["bin", "state"] {
            let path = host.dir.join(sub);
            fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
            set_mode(&path, 0o755);
        }
        fs::copy(principals_binary, host.principals_bin()).unwrap_or_else(|e| {
            panic!(
                "copy {} to {}: {e}",
                principals_binary.display(),
                host.principals_bin().display()
            )
        });
        set_mode(&host.principals_bin(), 0o755);
        host
    }

    /// The host directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/bin/writ-principals`, the copy sshd runs.
    pub fn principals_bin(&self) -> PathBuf {
        self.dir.join("bin").join("writ-principals")
    }

    /// `<dir>/state`, the host-side state directory (0755).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `<dir>/host.toml`, passed to the principals binary as `--config`.
    pub fn host_config_path(&self) -> PathBuf {
        self.dir.join("host.toml")
    }

    /// Writes `host.toml` (0644, readable by `nobody`).
    pub fn write_host_config(&self, toml: &str) {
        write_file(&self.host_config_path(), toml.as_bytes(), 0o644);
    }

    /// `<dir>/state/trusted_user_ca_keys`, sshd's `TrustedUserCAKeys`.
    pub fn trusted_keys_path(&self) -> PathBuf {
        self.state_dir().join("trusted_user_ca_keys")
    }

    /// Writes the trusted CA keys file (0644).
    pub fn write_trusted_keys(&self, text: &str) {
        write_file(&self.trusted_keys_path(), text.as_bytes(), 0o644);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        // Succeeds only when no other host (of any test process) is left in it.
        let _ = fs::remove_dir(TEST_ROOT);
    }
}

/// Knobs for [`Sshd::start`].
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Written at the top of the generated sshd_config, ahead of the harness's own lines:
    /// sshd keeps the first value it reads for a keyword, so these win (as a drop-in
    /// `Include`d at the top of Debian's sshd_config does).
    pub prelude: String,
    /// Written as `RevokedKeys <path>` when set.
    pub revoked_keys: Option<PathBuf>,
    /// Appended verbatim to the generated sshd_config.
    pub extra_config: String,
    /// Leave out `AuthorizedPrincipalsCommand`: a host that trusts the CA but does not
    /// run `writ-principals` (sshd then requires a principal equal to the login).
    pub no_principals_command: bool,
    /// `UsePAM yes` instead of `UsePAM no`. sshd's PAM service is always `sshd`, so a test
    /// that sets this reads the global `/etc/pam.d/sshd`; `ExposeAuthInfo yes` (for
    /// `SSH_AUTH_INFO_0`) goes in `extra_config`.
    pub use_pam: bool,
}

/// A running `sshd -D -e` on 127.0.0.1, logging to `<host dir>/sshd.log`.
/// Dropping it kills the process (by PID) and reaps it.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
}

fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 to pick a port");
    listener.local_addr().expect("local_addr").port()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn sshd_config(host: &TestHost, opts: &SshdOptions, host_key: &Path, port: u16) -> String {
    let mut cfg = opts.prelude.clone();
    if !cfg.is_empty() && !cfg.ends_with('\n') {
        cfg.push('\n');
    }
    cfg.push_str(&format!(
        "ListenAddress 127.0.0.1\n\
         Port {port}\n\
         HostKey {host_key}\n\
         PidFile none\n\
         UsePAM {use_pam}\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\n\
         AuthorizedKeysFile none\n\
         TrustedUserCAKeys {trusted}\n\
         StrictModes no\n\
         LogLevel VERBOSE\n\
         MaxStartups 100\n",
        host_key = host_key.display(),
        trusted = host.trusted_keys_path().display(),
        use_pam = if opts.use_pam { "yes" } else { "no" },
    ));
    if !opts.no_principals_command {
        cfg.push_str(&format!(
            "AuthorizedPrincipalsCommand {bin} check --config {config} -- %u %k\n\
             AuthorizedPrincipalsCommandUser nobody\n",
            bin = host.principals_bin().display(),
            config = host.host_config_path().display(),
        ));
    }
    if let Some(krl) = &opts.revoked_keys {
        cfg.push_str(&format!("RevokedKeys {}\n", krl.display()));
    }
    cfg.push_str(&opts.extra_config);
    if !cfg.ends_with('\n') {
        cfg.push('\n');
    }
    cfg
}

enum Launch {
    Ready(Child),
    PortTaken,
}

impl Sshd {
    /// Generates a host key and config in `host`'s directory, validates the config with
    /// `sshd -t`, and starts sshd on a free port, waiting (≤10 s) until it accepts TCP
    /// connections. Retries with a fresh port (up to 5 times) if the port was taken.
    pub fn start(host: &TestHost, opts: SshdOptions) -> Sshd {
        require_root_and_sshd();
        let run_dir = Path::new("/run/sshd");
        fs::create_dir_all(run_dir).expect("mkdir /run/sshd");
        set_mode(run_dir, 0o755);

        let host_key = host.dir().join("ssh_host_ed25519_key");
        if !host_key.exists() {
            run(Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "writ-test-host",
                    "-f",
                ])
                .arg(&host_key));
        }
        let cfg_path = host.dir().join("sshd_config");
        let log_path = host.dir().join("sshd.log");

        for _ in 0..BIND_ATTEMPTS {
            let port = free_port();
            write_file(
                &cfg_path,
                sshd_config(host, &opts, &host_key, port).as_bytes(),
                0o644,
            );
            let check = Command::new(SSHD)
                .arg("-t")
                .arg("-f")
                .arg(&cfg_path)
                .output()
                .expect("run sshd -t");
            if !check.status.success() {
                panic!(
                    "sshd -t rejected {}:\n{}\n--- config ---\n{}",
                    cfg_path.display(),
                    String::from_utf8_lossy(&check.stderr),
                    fs::read_to_string(&cfg_path).unwrap_or_default()
                );
            }
            match Self::launch(&cfg_path, &log_path, port) {
                Launch::Ready(child) => {
                    return Sshd {
                        child,
                        port,
                        config_path: cfg_path,
                        log_path,
                    };
                }
                Launch::PortTaken => continue,
            }
        }
        panic!("sshd could not bind a free port in {BIND_ATTEMPTS} attempts");
    }

    fn launch(cfg_path: &Path, log_path: &Path, port: u16) -> Launch {
        let log = fs::File::create(log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn sshd");
        let read_log = || fs::read_to_string(log_path).unwrap_or_default();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listening = format!("Server listening on 127.0.0.1 port {port}");
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait sshd") {
                let log = read_log();
                if log.contains("Address already in use") || log.contains("Cannot bind any address")
                {
                    return Launch::PortTaken;
                }
                panic!("sshd exited early ({status}); log:\n{log}");
            }
            // The log line proves *our* sshd owns the port (not some other process that
            // grabbed it after we released it); the connect proves it is accepting.
            if read_log().contains(&listening)
                && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            {
                return Launch::Ready(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sshd not ready on port {port} within {READY_DEADLINE:?}; log:\n{}",
                    read_log()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The TCP port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PID of the sshd listener.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the generated sshd_config (`<host dir>/sshd_config`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Path of sshd's log (its stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The contents of sshd's log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result of one [`ssh_login`] attempt.
#[derive(Debug, Clone)]
pub struct SshOutcome {
    /// `ssh` exited 0 and the remote command's output was seen.
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Writes an OpenSSH private key to `dir/name` with mode 0600 (ssh refuses looser).
pub fn write_private_key(dir: &Path, name: &str, openssh_pem: &str) -> PathBuf {
    let path = dir.join(name);
    write_file(&path, openssh_pem.as_bytes(), 0o600);
    path
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Logs in to `user@127.0.0.1:port` with private key `key` (and certificate `cert`, if
/// given) and runs `echo writ-login-ok`; `ssh` is killed after 20 s.
///
/// The key is first copied into a private temporary directory, so ssh cannot pick up a
/// `<key>-cert.pub` lying next to it: the login offers exactly `key` and `cert`.
pub fn ssh_login(port: u16, user: &str, key: &Path, cert: Option<&Path>) -> SshOutcome {
    let scratch = tempfile::tempdir().expect("tempdir for ssh identity");
    let pem = fs::read(key).unwrap_or_else(|e| panic!("read key {}: {e}", key.display()));
    let id = scratch.path().join("id");
    write_file(&id, &pem, 0o600);

    let mut cmd = Command::new("ssh");
    cmd.arg("-F").arg("/dev/null").arg("-i").arg(&id);
    if let Some(cert) = cert {
        cmd.arg("-o")
            .arg(format!("CertificateFile={}", cert.display()));
    }
    for opt in [
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "PasswordAuthentication=no",
        "ConnectTimeout=10",
        "LogLevel=ERROR",
    ] {
        cmd.arg("-o").arg(opt);
    }
    cmd.arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(format!("echo {LOGIN_MARKER}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let mut child = cmd.spawn().expect("spawn ssh");
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + SSH_DEADLINE;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("try_wait ssh") {
            break (Some(status), false);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        thread::sleep(POLL);
    };
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if timed_out {
        stderr.push_str(&format!("\n[harness] ssh killed after {SSH_DEADLINE:?}\n"));
    }
    let success = status.is_some_and(|s| s.success()) && stdout.contains(LOGIN_MARKER);
    SshOutcome {
        success,
        stdout,
        stderr,
    }
}
