//! `writ bench check`: what one `writ-principals check` costs per process, next to
//! `/bin/true` as the floor of starting any process on this machine.
//!
//! The fixture takes the full allow path, as for a real login: a generated ed25519 CA,
//! a certificate for a task signed with [`crate::authority::sign_certificate`] (the CA's
//! own profile code), a state directory trusting the CA with a fresh revocation feed
//! signed with [`crate::authority::sign_sshsig`] (built by [`crate::revocation::feed`]),
//! and an offline-mode host configuration. The fixture is first checked in-process and
//! then once through the binary, which must print the task principal.
//!
//! Then the two commands run alternately (so machine noise hits both alike), `runs` times
//! each after a few unmeasured ones, with identical arguments and pipes for stdout and
//! stderr (as sshd gives). Wall time is measured around spawn-to-exit; CPU time comes from
//! this process's `cutime + cstime` (approximate: clock-tick resolution, averaged over
//! the runs).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64ct::{Base64, Encoding};
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use ssh_key::{Algorithm, PrivateKey};

use super::cpu::{self, Sample, Usage};
use super::process::TempDir;
use super::stats::{Summary, show};
use super::{BenchError, build_profile};
use crate::authority::{CaSigner, CertificateSpec, sign_certificate, sign_sshsig};
use crate::host::config::{HostConfig, REVOCATIONS_FILE, TRUSTED_KEYS_FILE};
use crate::revocation::feed::{self, Feed, SignedFeed};

/// The login the bench certificate is checked for.
const LOGIN: &str = "deploy";
/// The host name the fixture's host configuration uses.
const HOST: &str = "web-01.bench.invalid";
/// Unmeasured runs of each command before measuring.
const WARMUP_RUNS: usize = 5;

/// Options of `writ bench check`.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Measured runs of each command.
    pub runs: usize,
    /// The `writ-principals` executable.
    pub principals: PathBuf,
    /// The spawn floor (`/bin/true`).
    pub floor: PathBuf,
    /// Keep the temporary directory.
    pub keep_dir: bool,
}

/// Wall and CPU time of one command over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct CommandTiming {
    /// The program.
    pub program: String,
    /// Wall time per process (spawn to exit), milliseconds.
    pub wall_ms: Summary,
    /// Mean CPU time per process (user + system of the child), milliseconds;
    /// approximate (clock-tick resolution).
    pub cpu_ms_mean: Option<f64>,
}

/// The result of `writ bench check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Always `check`.
    pub bench: &'static str,
    /// Measured runs of each command.
    pub runs: usize,
    /// The principal `writ-principals check` printed.
    pub principal: String,
    /// `writ-principals check`.
    pub check: CommandTiming,
    /// `/bin/true`.
    pub floor: CommandTiming,
    /// Median wall time of check ÷ median of the floor (issue 7's target: ≤ 1.5).
    pub ratio_p50: Option<f64>,
    /// p90 of check ÷ p90 of the floor.
    pub ratio_p90: Option<f64>,
    /// Median wall time of check minus the floor's: what writ-principals itself adds.
    pub added_ms_p50: Option<f64>,
    /// Cores used by other processes during the runs (interference).
    pub other_cores_busy: Option<f64>,
    /// `release` or `debug` (of this `writ`; `writ-principals` is built alongside).
    pub build: &'static str,
    /// writ's version.
    pub version: &'static str,
}

/// The fixture: a host state directory and configuration that admit `certificate`.
struct Fixture {
    config: PathBuf,
    certificate: String,
    principal: String,
}

fn setup(err: impl fmt::Display) -> BenchError {
    BenchError::Setup(err.to_string())
}

fn fixture(dir: &Path, now: i64) -> Result<Fixture, BenchError> {
    let ca_key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(setup)?;
    let signer = CaSigner::from_private_key(&ca_key).map_err(setup)?;
    let user_key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(setup)?;
    let mut task = [0u8; 16];
    OsRng.fill_bytes(&mut task);
    let task_id = crate::audit::hex(&task);
    let serial = OsRng.next_u64().max(1);
    let now_u = u64::try_from(now).map_err(setup)?;
    let spec = CertificateSpec {
        public_key: user_key.public_key().clone(),
        serial,
        key_id: format!("writ-bench-{serial}"),
        task_id: task_id.clone(),
        logins: vec![LOGIN.to_owned()],
        hosts: vec!["*.bench.invalid".to_owned()],
        valid_after: now_u - 30,
        valid_before: now_u + 3600,
        extensions: vec!["permit-pty".to_owned()],
        force_command: None,
        source_address: None,
        task_expires_at: Some(now_u + 3600),
    };
    let certificate = sign_certificate(&spec, &signer, &mut OsRng).map_err(setup)?;
    let certificate = Base64::encode_string(&certificate.to_bytes().map_err(setup)?);

    let state = dir.join("state");
    std::fs::create_dir(&state).map_err(BenchError::io(&state))?;
    let trusted = state.join(TRUSTED_KEYS_FILE);
    let line = format!("{}\n", ca_key.public_key().to_openssh().map_err(setup)?);
    std::fs::write(&trusted, &line).map_err(BenchError::io(&trusted))?;

    let feed = Feed {
        version: feed::VERSION,
        issued_at: now,
        sequence: 1,
        revoked_tasks: Vec::new(),
        revoked_serials: Vec::new(),
        binding: Some(feed::Binding::of(line.as_bytes(), b"")),
    };
    let json = feed.to_json();
    let signature = sign_sshsig(&signer, feed::NAMESPACE, json.as_bytes()).map_err(setup)?;
    let signed = serde_json::to_string(&SignedFeed {
        feed: json,
        signature,
    })
    .map_err(setup)?;
    let feed_path = state.join(REVOCATIONS_FILE);
    std::fs::write(&feed_path, signed).map_err(BenchError::io(&feed_path))?;
    // `check` refuses state writable by group or others, whatever the umask was.
    for (path, mode) in [(&state, 0o755), (&trusted, 0o644), (&feed_path, 0o644)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(BenchError::io(path))?;
    }

    let config = dir.join("host.toml");
    let toml = format!(
        "# Written by `writ bench check`.\n\
         ca_url = \"http://127.0.0.1:9\"\n\
         host_name = \"{HOST}\"\n\
         state_dir = {state}\n\
         mode = \"offline\"\n\
         max_staleness = \"1h\"\n\
         sync_user = {owner}\n",
        state = super::issuer::toml_string(&state.display().to_string()),
        // The state is ours (root's, or the benchmarking user's): trust its owner.
        owner = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata(&state).map_err(BenchError::io(&state))?
        ),
    );
    std::fs::write(&config, toml).map_err(BenchError::io(&config))?;

    // The fixture must take the allow path; check it in-process first for a clear error.
    let host = HostConfig::load(&config).map_err(setup)?;
    let principal = crate::host::check::check(&host, LOGIN, &certificate, now_u)
        .map_err(|e| BenchError::Setup(format!("the bench certificate is refused: {e}")))?;
    Ok(Fixture {
        config,
        certificate,
        principal,
    })
}

fn command(program: &Path, fixture: &Fixture) -> Command {
    let mut c = Command::new(program);
    c.arg("check")
        .arg("--config")
        .arg(&fixture.config)
        .arg("--")
        .arg(LOGIN)
        .arg(&fixture.certificate)
        .env_remove("WRIT_HOST_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Run `program` once; returns wall time and the child's CPU ticks.
fn time_once(program: &Path, fixture: &Fixture) -> Result<(Duration, Option<u64>), BenchError> {
    let before = cpu::children_ticks();
    let start = Instant::now();
    let output = command(program, fixture)
        .output()
        .map_err(|source| BenchError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let wall = start.elapsed();
    let after = cpu::children_ticks();
    if !output.status.success() {
        return Err(BenchError::Check(format!(
            "{} exited with {}: {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let ticks = match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    Ok((wall, ticks))
}

/// Run the benchmark.
pub fn run(
    options: &CheckOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<CheckReport, BenchError> {
    if options.runs == 0 {
        return Err(BenchError::Usage("--runs must be at least 1".into()));
    }
    let mut dir = TempDir::new("check")?;
    if options.keep_dir {
        dir.keep();
        progress(&format!("keeping {}", dir.path().display()));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let fixture = fixture(dir.path(), now)?;
    if options.keep_dir {
        // What it takes to repeat one run by hand (e.g. under `perf stat`).
        let path = dir.path().join("certificate.b64");
        std::fs::write(&path, &fixture.certificate).map_err(setup)?;
        progress(&format!(
            "one run: {} check --config {} -- {LOGIN} \"$(cat {})\"",
            options.principals.display(),
            fixture.config.display(),
            path.display()
        ));
    }

    // Once through the real binary: it must print exactly the principal.
    let output = command(&options.principals, &fixture)
        .output()
        .map_err(|source| BenchError::Spawn {
            program: options.principals.display().to_string(),
            source,
        })?;
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || printed != fixture.principal {
        return Err(BenchError::Check(format!(
            "{} did not admit the bench certificate ({}; stdout {printed:?}; stderr {:?})",
            options.principals.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    progress(&format!(
        "{} admits the bench certificate as {printed}; timing {} runs each against {}",
        options.principals.display(),
        options.runs,
        options.floor.display()
    ));

    for _ in 0..WARMUP_RUNS {
        time_once(&options.floor, &fixture)?;
        time_once(&options.principals, &fixture)?;
    }
    let mut floor_wall = Vec::with_capacity(options.runs);
    let mut check_wall = Vec::with_capacity(options.runs);
    let (mut floor_ticks, mut check_ticks) = (Some(0u64), Some(0u64));
    let add = |sum: Option<u64>, t: Option<u64>| Some(sum? + t?);
    let start = Sample::take(&[], false);
    for _ in 0..options.runs {
        let (wall, ticks) = time_once(&options.floor, &fixture)?;
        floor_wall.push(wall);
        floor_ticks = add(floor_ticks, ticks);
        let (wall, ticks) = time_once(&options.principals, &fixture)?;
        check_wall.push(wall);
        check_ticks = add(check_ticks, ticks);
    }
    let end = Sample::take(&[], false);
    let usage = Usage::between(&start, &end);
    // The children ran while we waited; the machine's busy time minus our own and theirs
    // is what other processes used.
    let children_s = match (floor_ticks, check_ticks) {
        (Some(a), Some(b)) => Some((a + b) as f64 / cpu::clock_ticks()),
        _ => None,
    };
    let other = match (usage.machine_cpu_s, usage.client_cpu_s, children_s) {
        (Some(m), Some(me), Some(ch)) => Some((m - me - ch).max(0.0)),
        _ => None,
    };
    let per_run_ms = |ticks: Option<u64>| {
        ticks.map(|t| t as f64 / cpu::clock_ticks() * 1000.0 / options.runs as f64)
    };
    let check = CommandTiming {
        program: options.principals.display().to_string(),
        wall_ms: Summary::of(&mut check_wall),
        cpu_ms_mean: per_run_ms(check_ticks),
    };
    let floor = CommandTiming {
        program: options.floor.display().to_string(),
        wall_ms: Summary::of(&mut floor_wall),
        cpu_ms_mean: per_run_ms(floor_ticks),
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    Ok(CheckReport {
        bench: "check",
        runs: options.runs,
        principal: fixture.principal.clone(),
        ratio_p50: ratio(check.wall_ms.p50, floor.wall_ms.p50),
        ratio_p90: ratio(check.wall_ms.p90, floor.wall_ms.p90),
        added_ms_p50: match (check.wall_ms.p50, floor.wall_ms.p50) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        },
        other_cores_busy: usage.cores(other),
        check,
        floor,
        build: build_profile(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "writ bench check: {} runs each, alternating, full allow path (offline mode), {} build",
            self.runs, self.build
        )?;
        writeln!(
            f,
            "  {:<34} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "wall ms per process", "p50", "p90", "mean", "min", "cpu ms"
        )?;
        for (name, t) in [
            ("writ-principals check", &self.check),
            (self.floor.program.as_str(), &self.floor),
        ] {
            writeln!(
                f,
                "  {:<34} {:>8} {:>8} {:>8} {:>8} {:>10}",
                name,
                show(t.wall_ms.p50, 2),
                show(t.wall_ms.p90, 2),
                show(t.wall_ms.mean, 2),
                show(t.wall_ms.min, 2),
                show(t.cpu_ms_mean, 2)
            )?;
        }
        writeln!(
            f,
            "  ratio check / floor: p50 {}x, p90 {}x (writ-principals adds {} ms at the median)",
            show(self.ratio_p50, 2),
            show(self.ratio_p90, 2),
            show(self.added_ms_p50, 2)
        )?;
        write!(
            f,
            "  other CPU {} cores{}",
            show(self.other_cores_busy, 2),
            if self
                .other_cores_busy
                .is_some_and(|o| o > super::issue::DISTURBED_OTHER_CORES)
            {
                "  (other processes were busy: rerun on a quiet machine)"
            } else {
                ""
            }
        )
    }
}
