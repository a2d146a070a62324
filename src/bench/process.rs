//! Processes around a benchmark: a temporary directory removed on drop, the `writ serve`
//! under test (started optionally under `taskset`, waited for on `/readyz`, stopped with
//! SIGTERM by PID and reaped), and pinning this process to CPUs.
//!
//! Signals and affinity go through the ordinary `kill` and `taskset` programs, so this
//! crate keeps `unsafe_code = "forbid"`. Only processes this module started are signalled.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};

use super::BenchError;

/// A fresh private directory under the system temporary directory, removed on drop
/// unless [`TempDir::keep`] was called.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Create `writ-bench-<random>` (mode 0700).
    pub fn new(label: &str) -> Result<TempDir, BenchError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut id = [0u8; 8];
        OsRng.fill_bytes(&mut id);
        let path =
            std::env::temp_dir().join(format!("writ-bench-{label}-{}", crate::audit::hex(&id)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(BenchError::io(&path))?;
        Ok(TempDir { path, keep: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leave the directory in place (for inspection).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it moments later).
pub fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Setup(format!("cannot find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(format!("cannot find a free port: {e}")))
}

/// Pin every thread of this process (and the threads it starts later) to `cpus`
/// (`taskset -a -cp CPUS PID`).
pub fn pin_self(cpus: &str) -> Result<(), BenchError> {
    let status = Command::new("taskset")
        .args(["-a", "-cp", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .map_err(|source| BenchError::Spawn {
            program: "taskset".into(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Usage(format!(
            "taskset could not pin the client to CPUs {cpus:?} ({status})"
        )))
    }
}

/// The `writ serve` under test.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

/// How long a stopping server gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Server {
    /// Start `exe serve --config CONFIG`, under `taskset -c CPUS` when `pin` is given
    /// (`taskset` execs the server, so the PID is the server's own), with stdout and
    /// stderr going to `log`.
    pub fn spawn(
        exe: &Path,
        config: &Path,
        log: &Path,
        pin: Option<&str>,
    ) -> Result<Server, BenchError> {
        let out = std::fs::File::create(log).map_err(BenchError::io(log))?;
        let err = out.try_clone().map_err(BenchError::io(log))?;
        let mut command = match pin {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env_remove("WRIT_CONFIG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command.spawn().map_err(|source| BenchError::Spawn {
            program: if pin.is_some() {
                "taskset".into()
            } else {
                exe.display().to_string()
            },
            source,
        })?;
        Ok(Server {
            pid: child.id(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Poll `GET {base_url}/readyz` until it answers 200, the server exits, or `timeout`.
    pub fn wait_ready(
        &mut self,
        base_url: &str,
        timeout: Duration,
        agent: &ureq::Agent,
    ) -> Result<(), BenchError> {
        let url = format!("{base_url}/readyz");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(BenchError::Server(format!(
                    "exited during start-up ({status}); its log:\n{}",
                    self.log_tail()
                )));
            }
            if let Ok(response) = agent.get(&url).call()
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Server(format!(
                    "{url} not ready after {}s; its log:\n{}",
                    timeout.as_secs(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Send SIGTERM, wait (up to 10 s, then SIGKILL) and reap. Returns the exit status.
    pub fn stop(mut self) -> Result<ExitStatus, BenchError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<ExitStatus, BenchError> {
        let Some(mut child) = self.child.take() else {
            return Err(BenchError::Server("already stopped".into()));
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(BenchError::Server(format!("cannot reap: {e}"))),
            }
        }
        let _ = child.kill();
        let status = child
            .wait()
            .map_err(|e| BenchError::Server(format!("cannot reap: {e}")))?;
        Err(BenchError::Server(format!(
            "did not stop within {}s of SIGTERM and was killed ({status})",
            STOP_GRACE.as_secs()
        )))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_inner();
        }
    }
}
