//! A real `writ serve` process (the shipped binary, not the library) with its log in a
//! file: for what only the process shows — its log, its signals and shutdown.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::idp::TestIdp;

/// `writ serve` with its log in a file, stopped (and its files removed) on drop.
pub struct Server {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://ADDR`
    pub url: String,
    /// `http://ADDR` of `[server] metrics_listen`, when configured.
    pub metrics_url: Option<String>,
}

/// The address a "listening" line names (`listening` or `metrics listening`), in the
/// text log (`… listening addr=ADDR`) or the JSON log (`"message":"listening"`).
fn listening_addr(line: &str, message: &str) -> Option<String> {
    if line.starts_with('{') {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        return (event["message"] == message)
            .then(|| event["addr"].as_str().map(str::to_owned))
            .flatten();
    }
    let (before, after) = line.split_once(&format!("{message} addr="))?;
    if message == "listening" && before.ends_with("metrics ") {
        return None;
    }
    after.split_whitespace().next().map(str::to_owned)
}

impl Server {
    /// Start `writ serve` trusting `idp` (issuer `test`, policy `agents`: subjects
    /// `agent-*`, login `deploy`, hosts `*.example.com`); `server_extra` is added to
    /// `[server]`. Returns once the server listens.
    pub fn start(idp: &TestIdp, server_extra: &str) -> Server {
        Server::try_start(idp, server_extra, &[])
            .unwrap_or_else(|(status, log)| panic!("writ serve exited with {status}:\n{log}"))
    }

    /// [`Server::start`] with `args` added to `writ serve --config FILE`; the exit status
    /// and log if the server exits instead of listening. With `tls_cert` in
    /// `server_extra`, `url` is `https://`; a wildcard address is reached on 127.0.0.1.
    pub fn try_start(
        idp: &TestIdp,
        server_extra: &str,
        args: &[&str],
    ) -> Result<Server, (std::process::ExitStatus, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("ca.pass");
        std::fs::write(&pass, "test passphrase\n").expect("passphrase");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\n[storage]\nurl = \"sqlite://{db}\"\n\n\
             [ca]\npassphrase_file = \"{pass}\"\n\n\
             [[issuer]]\nname = \"test\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\naudiences = [\"writ\"]\n\n\
             [[policy]]\nname = \"agents\"\nissuer = \"test\"\nsubject = \"agent-*\"\n\
             logins = [\"deploy\"]\nhosts = [\"*.example.com\"]\n",
            db = dir.path().join("writ.db").display(),
            pass = pass.display(),
            iss = idp.issuer,
            jwks = idp.jwks_url(),
        );
        Server::try_start_config(dir, &config, args)
    }

    /// Start `writ serve` with the whole configuration `config` (written into `dir`, which
    /// the server keeps and removes when dropped); the exit status and log if it exits
    /// instead of listening. `tls_cert` in it makes `url` `https://`.
    pub fn try_start_config(
        dir: tempfile::TempDir,
        config: &str,
        args: &[&str],
    ) -> Result<Server, (std::process::ExitStatus, String)> {
        let scheme = if config.contains("tls_cert") {
            "https"
        } else {
            "http"
        };
        let config_path = dir.path().join("writ.toml");
        std::fs::write(&config_path, config).expect("config");
        let log = std::fs::File::create(dir.path().join("writ.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_writ"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(args)
            .env_remove("WRIT_CONFIG")
            .env_remove("WRIT_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn writ serve");
        let mut server = Server {
            child,
            dir,
            url: String::new(),
            metrics_url: None,
        };
        // Readiness: the "listening" lines name the bound addresses.
        let with_metrics = config.contains("metrics_listen");
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.url.is_empty() || (with_metrics && server.metrics_url.is_none()) {
            let log = server.log();
            for line in log.lines() {
                if let Some(addr) = listening_addr(line, "listening") {
                    let addr = addr.replace("0.0.0.0:", "127.0.0.1:");
                    server.url = format!("{scheme}://{addr}");
                }
                if let Some(addr) = listening_addr(line, "metrics listening") {
                    server.metrics_url = Some(format!("http://{addr}"));
                }
            }
            if server.url.is_empty()
                && let Ok(Some(status)) = server.child.try_wait()
            {
                return Err((status, server.log()));
            }
            assert!(
                Instant::now() < deadline,
                "writ serve never listened:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
        Ok(server)
    }

    /// The configuration file (`writ admin --config` takes it too).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("writ.toml")
    }

    /// The directory holding the configuration, database and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `IP:PORT` of `url`.
    pub fn addr(&self) -> &str {
        self.url.split("://").nth(1).unwrap_or_default()
    }

    /// Wait up to a minute for a log line containing every one of `parts`; panics with
    /// the log if none comes (or the process exits).
    pub fn wait_for_log(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("writ serve exited with {status} before logging {parts:?}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }

    /// The server's SQLite database file.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("writ.db")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }

    /// Send a signal (e.g. `INT`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let mut bytes = Vec::new();
        std::fs::File::open(self.dir.path().join("writ.log"))
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .expect("read log");
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
