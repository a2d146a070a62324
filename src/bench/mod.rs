//! `writ bench`: writ's own performance measurement, built into the product so that every
//! figure in `docs/performance.md` can be reproduced with one command.
//!
//! - [`issue`] — `writ bench issue`: a closed-loop load test of `POST /v1/certificates`
//!   against a `writ serve` it starts itself (temporary directory, durable SQLite, a local
//!   test issuer from [`issuer`]) or against an existing one (`--target`). The headline
//!   figure is certificates per server CPU-second, measured the same way as the peer
//!   benchmarks in `../shared/peers/` (keep-alive connections, warm-up, server CPU from
//!   `/proc/PID/stat`, optional pinning with `taskset`).
//!   With `--tls` its server serves TLS with a certificate from [`tls`]; with `--flood N`
//!   [`flood`] sends junk tokens from another address beside the measured load.
//! - [`check`] — `writ bench check`: the per-process cost of `writ-principals check` on the
//!   full allow path, next to `/bin/true` as the process-spawn floor.
//! - [`issuer`] — a throwaway token issuer (RS256, ES256 or EdDSA) that mints single-use
//!   workload tokens and publishes its JWKS.
//! - [`cpu`] — CPU accounting from `/proc` (process, children, whole machine).
//! - [`stats`] — percentiles and summaries.
//! - [`process`] — temporary directories, the spawned server, CPU pinning.
//! - [`cli`] — the `writ bench …` arguments and output (kept here, not in `src/bin`, so
//!   the shared binary only gains one subcommand line).
//!
//! This module only measures. It never touches a real CA's data: everything it creates
//! lives in a fresh temporary directory that is removed afterwards, and with `--target` it
//! only sends ordinary API requests. It is not used by `writ serve` or `writ-principals`.

pub mod check;
pub mod cli;
pub mod cpu;
pub mod database;
pub mod flood;
pub mod http;
pub mod issue;
pub mod issuer;
pub mod prefill;
pub mod process;
pub mod stats;
pub mod tls;

use std::path::PathBuf;

pub use cli::{BenchCommand, run};

/// What can go wrong while benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A helper program (`taskset`, `kill`, the server, `writ-principals`) could not run.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Generating or loading the bench issuer's key, or minting a token, failed.
    #[error("bench issuer: {0}")]
    Issuer(String),
    /// The benchmark fixture (CA key, certificate, feed, configuration) could not be built.
    #[error("cannot prepare the benchmark: {0}")]
    Setup(String),
    /// The server under test did not start, answered unexpectedly or failed.
    #[error("server under test: {0}")]
    Server(String),
    /// `writ-principals check` did not admit the benchmark certificate.
    #[error("writ-principals check: {0}")]
    Check(String),
    /// The options do not make sense together.
    #[error("{0}")]
    Usage(String),
}

impl BenchError {
    /// An [`BenchError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BenchError {
        let path = path.into();
        move |source| BenchError::Io { path, source }
    }
}

/// Whether this executable was built with optimisations; debug-build figures are not
/// comparable and every report says which kind of build produced it.
pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}
