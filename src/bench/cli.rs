//! The `writ bench …` command line: clap arguments, turned into [`issue::IssueOptions`] and
//! [`check::CheckOptions`], and the output (a human report, or one JSON object with
//! `--json`). Progress goes to stderr so stdout stays machine-readable.
//!
//! It lives in the library rather than in `src/bin/writ.rs` so the shared binary only
//! gains one subcommand that calls [`run`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::issue::{self, FloodOptions, IssueOptions, Pinning, Target};
use super::issuer::Alg;
use super::{BenchError, check};
use crate::duration;

/// `writ bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load-test certificate issuance (POST /v1/certificates) and report certificates per
    /// server CPU-second.
    ///
    /// By default starts its own `writ serve` (this executable) in a temporary directory:
    /// durable SQLite, a local test issuer, single-use tokens. See docs/performance.md.
    Issue(IssueArgs),
    /// Time `writ-principals check` per process (full allow path) next to /bin/true.
    Check(CheckArgs),
}

/// `writ bench issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Workload token signature algorithm: RS256, ES256 or EdDSA.
    #[arg(long, default_value = "RS256", value_parser = parse_alg)]
    alg: Alg,
    /// Concurrent closed-loop connections (one worker thread each).
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Measured window, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    duration: Duration,
    /// Unmeasured load before the window, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    warmup: Duration,
    /// Pin the server to --server-cpus and this load generator to --client-cpus (taskset).
    #[arg(long)]
    pin: bool,
    /// CPUs for the server when pinning (taskset -c list).
    #[arg(long, default_value = "0", value_name = "LIST")]
    server_cpus: String,
    /// CPUs for the load generator when pinning (taskset -c list).
    #[arg(long, default_value = "1", value_name = "LIST")]
    client_cpus: String,
    /// Drive an existing CA at this base URL instead of starting one (needs --jwks-out).
    #[arg(long, value_name = "URL", requires = "jwks_out")]
    target: Option<String>,
    /// With --target: where to write the bench issuer's JWKS (its key is kept in
    /// FILE.key). The first run creates them and prints the [[issuer]] and [[policy]]
    /// tables to add to the target's configuration.
    #[arg(long, value_name = "FILE", requires = "target")]
    jwks_out: Option<PathBuf>,
    /// With --target: the target's PID, to measure its CPU.
    #[arg(long, value_name = "PID", requires = "target")]
    server_pid: Option<u32>,
    /// Token pool size (default: 1.5 × the rate of a short probe × (warm-up + window)).
    #[arg(long, value_name = "N")]
    tokens: Option<usize>,
    /// Keep the temporary directory (configuration, database, server log).
    #[arg(long)]
    keep_dir: bool,
    /// Before measuring, grow the started server's audit log by N synthetic issuance
    /// records (e.g. 10000000), to compare latency on a large log with an empty one.
    #[arg(long, value_name = "N", conflicts_with = "target", default_value_t = 0)]
    prefill_audit: u64,
    /// Serve the started server over TLS (a certificate made for the run; the load
    /// trusts only its authority), to compare with plaintext.
    #[arg(long, conflicts_with = "target")]
    tls: bool,
    /// Beside the measured load, N connections sending junk tokens (a random signature
    /// naming the bench issuer) from --flood-from, as fast as the server answers.
    #[arg(long, value_name = "N", default_value_t = 0)]
    flood: usize,
    /// Source address of the junk connections: another loopback address than the
    /// measured load's, as an attacker's would be.
    #[arg(long, value_name = "IP", default_value = "127.0.0.2")]
    flood_from: std::net::IpAddr,
    /// Store in a fresh database made for the run on this PostgreSQL server (a role that
    /// may CREATE DATABASE; password from PGPASSWORD), dropped afterwards, instead of
    /// SQLite. Its CPU (every `postgres` process) is reported next to the servers'.
    #[arg(long, value_name = "URL", conflicts_with_all = ["target", "prefill_audit"])]
    postgres: Option<String>,
    /// Servers to start on the one database (needs --postgres); connections are spread
    /// over them round robin and their CPU is summed.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "postgres")]
    replicas: usize,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

/// `writ bench check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Measured runs of each command.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// The writ-principals binary (default: next to this executable).
    #[arg(long, value_name = "PATH")]
    principals: Option<PathBuf>,
    /// The spawn floor to compare with.
    #[arg(long, value_name = "PATH", default_value = "/bin/true")]
    floor: PathBuf,
    /// Keep the temporary directory.
    #[arg(long)]
    keep_dir: bool,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

fn parse_alg(text: &str) -> Result<Alg, String> {
    text.parse()
}

fn current_exe() -> Result<PathBuf, BenchError> {
    std::env::current_exe()
        .map_err(|e| BenchError::Setup(format!("cannot find this executable: {e}")))
}

fn print(
    json: bool,
    value: &impl serde::Serialize,
    text: &dyn std::fmt::Display,
) -> Result<(), BenchError> {
    let line = if json {
        serde_json::to_string(value)
            .map_err(|e| BenchError::Setup(format!("cannot render JSON: {e}")))?
    } else {
        text.to_string()
    };
    // A closed pipe (`| head`) is a quiet end, not a panic.
    crate::cli::println(&line)
        .map_err(|e| BenchError::Setup(format!("cannot write the report: {e}")))
}

/// Run a `writ bench` subcommand, printing its report on stdout.
pub fn run(command: BenchCommand) -> Result<(), BenchError> {
    let mut progress = |line: &str| eprintln!("writ bench: {line}");
    match command {
        BenchCommand::Issue(a) => {
            let options = IssueOptions {
                alg: a.alg,
                concurrency: a.concurrency,
                duration: a.duration,
                warmup: a.warmup,
                pin: a.pin.then(|| Pinning {
                    server_cpus: a.server_cpus.clone(),
                    client_cpus: a.client_cpus.clone(),
                }),
                target: match (a.target, a.jwks_out) {
                    (Some(url), Some(jwks_out)) => Some(Target {
                        url,
                        jwks_out,
                        server_pid: a.server_pid,
                    }),
                    _ => None,
                },
                tokens: a.tokens,
                prefill_audit: a.prefill_audit,
                server_exe: current_exe()?,
                keep_dir: a.keep_dir,
                tls: a.tls,
                postgres: a.postgres,
                replicas: a.replicas,
                flood: (a.flood > 0).then_some(FloodOptions {
                    connections: a.flood,
                    source: a.flood_from,
                }),
            };
            let report = issue::run(&options, &mut progress)?;
            print(a.json, &report, &report)
        }
        BenchCommand::Check(a) => {
            let principals = match a.principals {
                Some(path) => path,
                None => current_exe()?.with_file_name("writ-principals"),
            };
            let options = check::CheckOptions {
                runs: a.runs,
                principals,
                floor: a.floor,
                keep_dir: a.keep_dir,
            };
            let report = check::run(&options, &mut progress)?;
            print(a.json, &report, &report)
        }
    }
}
