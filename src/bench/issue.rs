//! `writ bench issue`: closed-loop load on `POST /v1/certificates`, measured like the peer
//! benchmarks (`../shared/peers/`) so the figures sit side by side.
//!
//! 1. Set-up (default): a temporary directory with a fresh bench issuer key and its JWKS,
//!    a `writ.toml` (SQLite in that directory with the CA's durable defaults, the bench
//!    issuer with `replay = "reject"`, a permissive policy for the bench subject, a
//!    passphrase file), then `writ serve --config` from this same executable, optionally
//!    under `taskset -c SERVER_CPUS`, waited for on `/readyz`. With `--target URL` an
//!    existing CA is driven instead (configured once with [`issuer::config_tables`]).
//! 2. One preflight request, whose answer is checked in full (a parseable certificate).
//! 3. Token pool: single-use tokens, each with its own `jti`, minted on every core before
//!    anything is measured. Its size is `--tokens`, or else 1.5 times the rate seen in a short
//!    unmeasured probe run times the warm-up plus the window. If the pool runs out anyway,
//!    the measured window ends there and the report says so.
//! 4. The run: N worker threads, each with its own keep-alive connection (a minimal
//!    client, [`super::http`], so the load generator takes little CPU from the server on a
//!    shared machine), loop request → full response for the warm-up and then the measured
//!    window (client pinned with `taskset -a -cp CLIENT_CPUS` when asked). A request counts
//!    when it started and finished inside the window; OK means 2xx. CPU is sampled at the
//!    window's edges: the server's `utime + stime`, this process's, and the machine's.
//! 5. The server is stopped with SIGTERM and reaped; the temporary directory is removed.
//!
//! `--tls`: the started server serves HTTPS with a certificate made for the run
//! ([`super::tls`]), and every client trusts exactly its authority: the handshake happens
//! once per keep-alive connection, as for an agent runtime that keeps its connection.
//! `--postgres URL`: the started server stores in a fresh PostgreSQL database made for
//! the run on that server ([`super::database`]) instead of SQLite, and `--replicas N`
//! starts N servers on it, the connections spread over them round robin; the report adds
//! PostgreSQL's CPU (every `postgres` process) to the servers'.
//! `--flood N`: during the warm-up and the window, N more connections send junk tokens
//! from another source address ([`super::flood`]); the report gives their answers next to
//! the honest load's latency.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use serde::Serialize;

use super::cpu::{Sample, Usage};
use super::database::BenchDatabase;
use super::flood::{Flood, FloodReport};
use super::http;
use super::issuer::{self, Alg, BenchIssuer};
use super::process::{self, Server, TempDir};
use super::stats::{Summary, show};
use super::tls::{BenchTls, agent_with};
use super::{BenchError, build_profile};

/// The started server's database, in the bench directory.
const DATABASE_FILE: &str = "writ.db";
/// Headroom over the probe's rate when sizing the token pool.
const POOL_HEADROOM: f64 = 1.5;
/// Longest probe run (unmeasured) used to size the token pool.
const PROBE_TIME: Duration = Duration::from_secs(1);
/// Tokens per connection minted for the probe (bounded below).
const PROBE_TOKENS_PER_CONNECTION: usize = 200;
/// How long a started server gets to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-request timeout of the load generator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Margin added to token lifetimes beyond the run itself.
const TOKEN_LIFETIME_MARGIN: Duration = Duration::from_secs(15 * 60);
/// Largest error body kept as an example.
const ERROR_EXAMPLE_BYTES: usize = 300;

/// CPUs for server and client when pinning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinning {
    /// `taskset -c` list for the server, e.g. `0`.
    pub server_cpus: String,
    /// `taskset -c` list for this load generator, e.g. `1`.
    pub client_cpus: String,
}

/// Junk traffic beside the measured load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloodOptions {
    /// Junk connections.
    pub connections: usize,
    /// Their source address (another loopback address than the honest load's).
    pub source: std::net::IpAddr,
}

/// An existing CA to drive instead of starting one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8422`.
    pub url: String,
    /// Where the bench issuer's JWKS is written (the target's `jwks_file`); the issuer's
    /// private key is kept next to it as `<file>.key`.
    pub jwks_out: PathBuf,
    /// The target's PID, to measure its CPU.
    pub server_pid: Option<u32>,
}

/// Options of `writ bench issue`.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Token algorithm.
    pub alg: Alg,
    /// Closed-loop workers, one keep-alive connection each.
    pub concurrency: usize,
    /// The measured window.
    pub duration: Duration,
    /// Unmeasured load before the window.
    pub warmup: Duration,
    /// Pin server and client to CPUs.
    pub pin: Option<Pinning>,
    /// Drive an existing CA instead of starting one.
    pub target: Option<Target>,
    /// Token pool size (default: sized by a probe run).
    pub tokens: Option<usize>,
    /// Synthetic audit records to add to the started server's log before measuring.
    pub prefill_audit: u64,
    /// The `writ` executable that serves (normally this one).
    pub server_exe: PathBuf,
    /// Keep the temporary directory (config, database, server log).
    pub keep_dir: bool,
    /// Serve the started server over TLS.
    pub tls: bool,
    /// Junk traffic during the warm-up and the window.
    pub flood: Option<FloodOptions>,
    /// Store in a fresh database on this PostgreSQL server instead of SQLite.
    pub postgres: Option<String>,
    /// Servers (replicas) to start on the one database.
    pub replicas: usize,
}

/// Token pool figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TokenReport {
    /// Tokens minted for the measured run (probe and preflight not included).
    pub minted: usize,
    /// Tokens taken by the warm-up and the window.
    pub used: usize,
    /// The pool ran out: the window ended early (see `window_s`).
    pub exhausted: bool,
    /// Seconds spent minting the pool.
    pub mint_s: f64,
    /// Requests per second in the unmeasured probe that sized the pool.
    pub probe_rate: Option<f64>,
}

/// The result of `writ bench issue`.
#[derive(Debug, Clone, Serialize)]
pub struct IssueReport {
    /// Always `issue`.
    pub bench: &'static str,
    /// Short label, e.g. `writ-issue-RS256-c16-pinned`.
    pub label: String,
    /// Token algorithm.
    pub alg: String,
    /// Workers (connections).
    pub concurrency: usize,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Requested window seconds.
    pub duration_s: f64,
    /// Actual window seconds (shorter only if the token pool ran out).
    pub window_s: f64,
    /// Whether server and client were pinned.
    pub pinned: bool,
    /// Whether the load went over TLS.
    pub tls: bool,
    /// The junk flood beside the load, if any.
    pub flood: Option<FloodReport>,
    /// `sqlite` or `postgres` (the started server's store; `None` with `--target`).
    pub database: Option<&'static str>,
    /// Servers started on it.
    pub replicas: usize,
    /// PostgreSQL's CPU seconds in the window (every `postgres` process).
    pub database_cpu_s: Option<f64>,
    /// PostgreSQL's CPU in cores busy.
    pub database_cores_busy: Option<f64>,
    /// Certificates per CPU-second of the servers and PostgreSQL together.
    pub ok_per_server_and_database_cpu_s: Option<f64>,
    /// Server CPU list when pinned.
    pub server_cpus: Option<String>,
    /// Client CPU list when pinned.
    pub client_cpus: Option<String>,
    /// The target URL, or `None` when the bench started its own server.
    pub target: Option<String>,
    /// The server's PID (if known).
    pub server_pid: Option<u32>,
    /// OK (2xx) answers in the window.
    pub ok: u64,
    /// Failed requests in the window.
    pub errors: u64,
    /// Failures by HTTP status (or `transport`).
    pub errors_by_status: BTreeMap<String, u64>,
    /// The first failure of each kind, with the start of its body.
    pub first_errors: BTreeMap<String, String>,
    /// Failures during the warm-up.
    pub warmup_errors: u64,
    /// OK answers per wall-clock second.
    pub ok_per_s: f64,
    /// Latency of OK requests.
    pub latency_ms: Summary,
    /// Server CPU seconds in the window (utime + stime, all threads).
    pub server_cpu_s: Option<f64>,
    /// Server CPU in cores busy.
    pub server_cores_busy: Option<f64>,
    /// The headline: certificates per server CPU-second.
    pub ok_per_server_cpu_s: Option<f64>,
    /// This load generator's CPU seconds.
    pub client_cpu_s: Option<f64>,
    /// This load generator's cores busy.
    pub client_cores_busy: Option<f64>,
    /// CPU seconds used by other processes during the window.
    pub other_cpu_s: Option<f64>,
    /// Cores busy with other processes: well above ~0.15 means the run was disturbed.
    pub other_cores_busy: Option<f64>,
    /// Cores stolen by the hypervisor.
    pub steal_cores: Option<f64>,
    /// CPUs on the machine.
    pub machine_cpus: usize,
    /// Token pool figures.
    pub tokens: TokenReport,
    /// Audit records added before measuring (`--prefill-audit`), and the seconds it took.
    pub prefill_audit: Option<(u64, f64)>,
    /// `release` or `debug`: debug-build figures are not comparable.
    pub build: &'static str,
    /// writ's version.
    pub version: &'static str,
    /// How the started server exited after SIGTERM.
    pub server_exit: Option<String>,
}

/// Run the benchmark. Progress lines go to `progress` (stderr in the CLI).
pub fn run(
    options: &IssueOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<IssueReport, BenchError> {
    if options.concurrency == 0 {
        return Err(BenchError::Usage("--concurrency must be at least 1".into()));
    }
    if options.duration.is_zero() {
        return Err(BenchError::Usage(
            "--duration must be greater than zero".into(),
        ));
    }
    if options.replicas == 0 {
        return Err(BenchError::Usage("--replicas must be at least 1".into()));
    }
    if options.replicas > 1 && options.postgres.is_none() {
        return Err(BenchError::Usage(
            "--replicas above 1 needs --postgres: SQLite serves one process".into(),
        ));
    }
    if options.postgres.is_some() && (options.target.is_some() || options.prefill_audit > 0) {
        return Err(BenchError::Usage(
            "--postgres applies to the bench's own servers, without --target or --prefill-audit"
                .into(),
        ));
    }
    if options.tls && options.target.is_some() {
        return Err(BenchError::Usage(
            "--tls serves the bench's own server over TLS; it does not apply to --target".into(),
        ));
    }
    let mut dir = TempDir::new("issue")?;
    if options.keep_dir {
        dir.keep();
        progress(&format!("keeping {}", dir.path().display()));
    }

    let bench_tls = match options.tls {
        true => Some(BenchTls::generate(dir.path())?),
        false => None,
    };
    let tls = bench_tls.as_ref();
    let client_tls = tls.map(BenchTls::client_config).transpose()?;
    // The issuer, and the CA that trusts it.
    let database = match &options.postgres {
        Some(server_url) => {
            let database = BenchDatabase::create(server_url, &dir.path().join("db.password"))?;
            progress(&format!(
                "created {}",
                crate::text::redact_url(&database.url)
            ));
            Some(database)
        }
        None => None,
    };
    let (issuer, base_urls, mut servers) = match &options.target {
        None => {
            progress(&format!("generating the {} bench issuer key", options.alg));
            let issuer = BenchIssuer::generate(options.alg)?;
            let mut urls = Vec::new();
            let mut servers = Vec::new();
            for replica in 0..options.replicas {
                // One server keeps its files at the top of the directory (`--keep-dir`
                // users find `writ.toml` and `server.log` there); replicas each in
                // `replica-N`.
                let replica_dir = match options.replicas {
                    1 => dir.path().to_owned(),
                    _ => dir.path().join(format!("replica-{replica}")),
                };
                let (url, server) = start_server(
                    options,
                    &replica_dir,
                    dir.path(),
                    database.as_ref(),
                    &issuer,
                    tls,
                    progress,
                )?;
                urls.push(url);
                servers.push(server);
            }
            (issuer, urls, servers)
        }
        Some(target) => {
            let key_path = PathBuf::from(format!("{}.key", target.jwks_out.display()));
            let (issuer, created) = BenchIssuer::load_or_create(options.alg, &key_path)?;
            write_file(&target.jwks_out, issuer.jwks_json().as_bytes(), 0o644)?;
            if created {
                return Err(BenchError::Usage(format!(
                    "created the bench issuer key {} and wrote its JWKS to {}.\n\
                     Add these tables to the target CA's configuration, restart it, and run \
                     this command again:\n\n{}",
                    key_path.display(),
                    target.jwks_out.display(),
                    issuer::config_tables(options.alg, &absolute(&target.jwks_out))
                )));
            }
            (
                issuer,
                vec![target.url.trim_end_matches('/').to_owned()],
                Vec::new(),
            )
        }
    };
    let server_pids: Vec<u32> = if servers.is_empty() {
        options
            .target
            .as_ref()
            .and_then(|t| t.server_pid)
            .into_iter()
            .collect()
    } else {
        servers.iter().map(Server::pid).collect()
    };
    let server_pid = server_pids.first().copied();
    let watch = Watch {
        server_pids: &server_pids,
        database: database.is_some(),
    };
    let urls: Vec<String> = base_urls
        .iter()
        .map(|base| format!("{base}/v1/certificates"))
        .collect();
    let url = &urls[0];
    let body = request_body()?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let lifetime = i64::try_from(
        (options.warmup + options.duration + TOKEN_LIFETIME_MARGIN)
            .as_secs()
            .min(23 * 3600),
    )
    .unwrap_or(3600);

    let prefill_audit = if options.prefill_audit > 0 {
        let took = super::prefill::prefill_audit(
            &dir.path().join(DATABASE_FILE),
            options.prefill_audit,
            &mut *progress,
        )?;
        Some((options.prefill_audit, took.as_secs_f64()))
    } else {
        None
    };

    // Preflight: one request, checked in full.
    let token = issuer.mint_pool(1, 1, now_unix(), lifetime, 1)?;
    preflight(&agent(tls), url, &body, &token[0])?;

    // Size and mint the pool.
    let mut tokens = TokenReport::default();
    let count = match options.tokens {
        Some(n) => n,
        None => {
            let n = (options.concurrency * PROBE_TOKENS_PER_CONNECTION).clamp(2000, 8000);
            let pool = Pool::new(issuer.mint_pool(n, threads, now_unix(), lifetime, n)?);
            let probe = drive(
                &urls,
                &body,
                client_tls.as_ref(),
                &pool,
                options.concurrency,
                Duration::ZERO,
                PROBE_TIME,
                watch,
            );
            let mut rate = probe.ok_in_window as f64 / probe.usage.wall_s.max(1e-3);
            if pool.exhausted.load(Ordering::Relaxed) {
                // The probe ran dry before its second was up: the server is faster than
                // this rate says, by an unknown factor.
                rate *= 2.0;
            }
            tokens.probe_rate = Some(rate);
            let seconds = (options.warmup + options.duration).as_secs_f64();
            // A probe on a busy machine can read far below what the run then does: never
            // size the pool below the probe's own pool for each second of the run.
            let size = ((POOL_HEADROOM * rate).max(n as f64) * seconds).ceil() as usize;
            progress(&format!(
                "probe: {rate:.0} certificates/s unmeasured; sizing the pool for {POOL_HEADROOM}x that"
            ));
            size.max(options.concurrency * 10) + options.concurrency
        }
    };
    progress(&format!(
        "minting {count} single-use {} tokens on {threads} threads",
        options.alg
    ));
    let mint_start = Instant::now();
    // One `exp` second per second of traffic at the rate the pool was sized for.
    let seconds = (options.warmup + options.duration).as_secs_f64().max(1.0);
    let per_second = tokens.probe_rate.unwrap_or(count as f64 / seconds).ceil() as usize;
    let pool = Pool::new(issuer.mint_pool(count, threads, now_unix(), lifetime, per_second)?);
    tokens.minted = count;
    tokens.mint_s = mint_start.elapsed().as_secs_f64();

    // The run.
    if let Some(pin) = &options.pin {
        process::pin_self(&pin.client_cpus)?;
    }
    progress(&format!(
        "running: {} connections, {}s warm-up, {}s measured",
        options.concurrency,
        options.warmup.as_secs_f64(),
        options.duration.as_secs_f64()
    ));
    let flood = match &options.flood {
        Some(flood) => {
            progress(&format!(
                "flooding: {} connections of junk tokens from {}",
                flood.connections, flood.source
            ));
            Some(
                Flood::start(
                    url,
                    &body,
                    flood.connections,
                    flood.source,
                    client_tls.clone(),
                    REQUEST_TIMEOUT,
                )
                .map_err(|e| BenchError::Setup(format!("starting the flood: {e}")))?,
            )
        }
        None => None,
    };
    let run = drive(
        &urls,
        &body,
        client_tls.as_ref(),
        &pool,
        options.concurrency,
        options.warmup,
        options.duration,
        watch,
    );
    let flood = flood.map(Flood::stop);
    if run.exhausted_before_window {
        return Err(BenchError::Usage(format!(
            "the pool of {count} tokens ran out during the warm-up; give a larger --tokens"
        )));
    }
    tokens.used = pool.used();
    tokens.exhausted = pool.exhausted.load(Ordering::Relaxed);
    if tokens.exhausted {
        progress(&format!(
            "WARNING: the pool of {count} tokens ran out after {:.1}s of the window; the \
             figures cover that shorter window (give a larger --tokens)",
            run.usage.wall_s
        ));
    }

    let exits: Vec<String> = servers
        .drain(..)
        .map(|server| match server.stop() {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        })
        .collect();
    let server_exit = (!exits.is_empty()).then(|| exits.join(", "));
    drop(database);
    let mut report = report(options, run, tokens, server_pid, server_exit);
    report.prefill_audit = prefill_audit;
    report.flood = flood;
    Ok(report)
}

/// Write the configuration and start `writ serve`; returns its base URL.
fn start_server(
    options: &IssueOptions,
    dir: &Path,
    bench_dir: &Path,
    database: Option<&BenchDatabase>,
    issuer: &BenchIssuer,
    tls: Option<&BenchTls>,
    progress: &mut dyn FnMut(&str),
) -> Result<(String, Server), BenchError> {
    std::fs::create_dir_all(dir).map_err(BenchError::io(dir))?;
    let jwks = bench_dir.join("jwks.json");
    write_file(&jwks, issuer.jwks_json().as_bytes(), 0o644)?;
    // One passphrase for every replica (they share the keyring), made by the first.
    let pass = bench_dir.join("ca.pass");
    if !pass.exists() {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        write_file(&pass, crate::audit::hex(&secret).as_bytes(), 0o600)?;
    }
    let storage = match database {
        Some(database) => format!(
            "url = {}\npassword_file = {}\npool_size = 16",
            issuer::toml_string(&database.url),
            issuer::toml_string(&bench_dir.join("db.password").display().to_string())
        ),
        None => format!(
            "url = {}",
            issuer::toml_string(&format!(
                "sqlite://{}",
                bench_dir.join(DATABASE_FILE).display()
            ))
        ),
    };
    let port = process::free_port()?;
    let (base_url, tls_files) = match tls {
        Some(tls) => (
            format!("https://127.0.0.1:{port}"),
            format!(
                "tls_cert = {}\ntls_key = {}\n",
                issuer::toml_string(&tls.cert_path.display().to_string()),
                issuer::toml_string(&tls.key_path.display().to_string())
            ),
        ),
        None => (format!("http://127.0.0.1:{port}"), String::new()),
    };
    let config = format!(
        "# Written by `writ bench issue`: a throwaway CA with writ's durable defaults.\n\
         [server]\nlisten = \"127.0.0.1:{port}\"\n{tls_files}\n\
         [storage]\n{storage}\n\n\
         [ca]\npassphrase_file = {pass}\n\n\
         # One client and one identity at thousands a second: the rate limits still run,\n\
         # set far above the load.\n\
         [limits]\nissuances_per_minute_per_ip = 1000000000\n\
         issuances_per_minute_per_identity = 1000000000\nmax_concurrent_requests = 100000\n\n\
         {tables}",
        pass = issuer::toml_string(&pass.display().to_string()),
        tables = issuer::config_tables(options.alg, &jwks),
    );
    let config_path = dir.join("writ.toml");
    write_file(&config_path, config.as_bytes(), 0o600)?;
    let pin = options.pin.as_ref().map(|p| p.server_cpus.as_str());
    let mut server = Server::spawn(
        &options.server_exe,
        &config_path,
        &dir.join("server.log"),
        pin,
    )?;
    server.wait_ready(&base_url, READY_TIMEOUT, &agent(tls))?;
    progress(&format!(
        "server ready: pid {}{}, {base_url}",
        server.pid(),
        pin.map(|c| format!(" on CPU {c}")).unwrap_or_default()
    ));
    Ok((base_url, server))
}

/// Write `bytes` to `path` with `mode` (if it creates the file).
pub(super) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BenchError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(BenchError::io(path))?;
    file.write_all(bytes).map_err(BenchError::io(path))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The request every worker sends: a task for one login on one host, with a fixed
/// ed25519 public key (the CA certifies the same key again and again, as for an agent
/// that renews).
fn request_body() -> Result<String, BenchError> {
    let key = ssh_key::PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| BenchError::Setup(format!("generating the client key: {e}")))?;
    let public_key = key
        .public_key()
        .to_openssh()
        .map_err(|e| BenchError::Setup(format!("encoding the client key: {e}")))?;
    Ok(serde_json::json!({
        "public_key": format!("{public_key} writ-bench"),
        "task": {
            "logins": ["deploy"],
            "hosts": ["web-01.bench.invalid"],
            "ttl_seconds": 900,
            "purpose": "writ bench issue",
        },
        "ttl_seconds": 120,
    })
    .to_string())
}

/// The set-up and preflight client: trusts the bench's own TLS authority when it serves
/// TLS, the system's roots otherwise.
fn agent(tls: Option<&BenchTls>) -> ureq::Agent {
    match tls {
        Some(tls) => tls.agent(REQUEST_TIMEOUT),
        None => agent_with(REQUEST_TIMEOUT, ureq::tls::TlsConfig::default()),
    }
}

/// One request, its answer checked in full: 2xx and a certificate that parses.
fn preflight(agent: &ureq::Agent, url: &str, body: &str, token: &str) -> Result<(), BenchError> {
    let mut response = agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .content_type("application/json")
        .send(body)
        .map_err(|e| BenchError::Server(format!("POST {url}: {e}")))?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| BenchError::Server(format!("POST {url}: reading the answer: {e}")))?;
    if !status.is_success() {
        return Err(BenchError::Server(format!(
            "the first request was refused: HTTP {status}: {}",
            truncate(&text)
        )));
    }
    let answer: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::Server(format!("the first answer is not JSON: {e}")))?;
    let certificate = answer
        .get("certificate")
        .and_then(|c| c.as_str())
        .ok_or_else(|| BenchError::Server("the first answer has no certificate".into()))?;
    ssh_key::Certificate::from_openssh(certificate)
        .map_err(|e| BenchError::Server(format!("the first certificate does not parse: {e}")))?;
    Ok(())
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(ERROR_EXAMPLE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_owned()
}

/// Single-use tokens, handed out once each.
struct Pool {
    tokens: Vec<String>,
    next: AtomicUsize,
    exhausted: AtomicBool,
}

impl Pool {
    fn new(tokens: Vec<String>) -> Pool {
        Pool {
            tokens,
            next: AtomicUsize::new(0),
            exhausted: AtomicBool::new(false),
        }
    }

    fn take(&self) -> Option<&str> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let token = self.tokens.get(i).map(String::as_str);
        if token.is_none() {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        token
    }

    fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed).min(self.tokens.len())
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Status(u16),
    Transport,
}

/// One request.
#[derive(Debug, Clone, Copy)]
struct Record {
    start: Instant,
    end: Instant,
    outcome: Outcome,
}

#[derive(Debug, Default)]
struct WorkerResult {
    records: Vec<Record>,
    first_errors: BTreeMap<String, String>,
}

fn outcome_key(outcome: Outcome) -> String {
    match outcome {
        Outcome::Ok => "ok".into(),
        Outcome::Status(s) => s.to_string(),
        Outcome::Transport => "transport".into(),
    }
}

fn worker(
    url: &str,
    body: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    pool: &Pool,
    stop: &AtomicBool,
) -> WorkerResult {
    let mut result = WorkerResult {
        records: Vec::with_capacity(1 << 14),
        first_errors: BTreeMap::new(),
    };
    let mut poster = match http::Poster::new(url, body, REQUEST_TIMEOUT, tls.cloned()) {
        Ok(poster) => poster,
        Err(e) => {
            result
                .first_errors
                .insert("transport".into(), e.to_string());
            return result;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let Some(token) = pool.take() else { break };
        let start = Instant::now();
        let answer = poster.post(token);
        let end = Instant::now();
        let outcome = match &answer {
            Ok(answer) if (200..300).contains(&answer.status) => Outcome::Ok,
            Ok(answer) => Outcome::Status(answer.status),
            Err(_) => Outcome::Transport,
        };
        if outcome != Outcome::Ok {
            result
                .first_errors
                .entry(outcome_key(outcome))
                .or_insert_with(|| match &answer {
                    Ok(answer) => truncate(&String::from_utf8_lossy(&answer.body)),
                    Err(e) => e.to_string(),
                });
        }
        result.records.push(Record {
            start,
            end,
            outcome,
        });
    }
    result
}

/// What one closed-loop run measured.
struct Run {
    usage: Usage,
    ok_in_window: u64,
    errors: BTreeMap<String, u64>,
    first_errors: BTreeMap<String, String>,
    warmup_errors: u64,
    latencies: Vec<Duration>,
    exhausted_before_window: bool,
}

/// `concurrency` workers load `url` for `warmup`, then CPU is sampled, then for `window`
/// (or until the pool runs out), then CPU is sampled again and the workers stop.
/// What [`drive`] samples the CPU of besides this process.
#[derive(Debug, Clone, Copy)]
struct Watch<'a> {
    server_pids: &'a [u32],
    database: bool,
}

#[allow(clippy::too_many_arguments)]
fn drive(
    urls: &[String],
    body: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    pool: &Pool,
    concurrency: usize,
    warmup: Duration,
    window: Duration,
    watch: Watch<'_>,
) -> Run {
    let stop = AtomicBool::new(false);
    let (start, end, results, exhausted_before_window) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|i| {
                let (url, stop) = (&urls[i % urls.len()], &stop);
                scope.spawn(move || worker(url, body, tls, pool, stop))
            })
            .collect();
        let begin = Instant::now();
        wait_until(begin + warmup, pool);
        let exhausted_in_warmup = !warmup.is_zero() && pool.exhausted.load(Ordering::Relaxed);
        let start = Sample::take(watch.server_pids, watch.database);
        wait_until(start.at + window, pool);
        let end = Sample::take(watch.server_pids, watch.database);
        stop.store(true, Ordering::Relaxed);
        let results: Vec<WorkerResult> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        (start, end, results, exhausted_in_warmup)
    });
    let usage = Usage::between(&start, &end);
    let mut run = Run {
        usage,
        ok_in_window: 0,
        errors: BTreeMap::new(),
        first_errors: BTreeMap::new(),
        warmup_errors: 0,
        latencies: Vec::new(),
        exhausted_before_window,
    };
    for result in results {
        for (key, example) in result.first_errors {
            run.first_errors.entry(key).or_insert(example);
        }
        for record in result.records {
            if record.start < start.at {
                if record.outcome != Outcome::Ok {
                    run.warmup_errors += 1;
                }
                continue;
            }
            if record.end > end.at {
                continue;
            }
            match record.outcome {
                Outcome::Ok => {
                    run.ok_in_window += 1;
                    run.latencies.push(record.end - record.start);
                }
                other => *run.errors.entry(outcome_key(other)).or_default() += 1,
            }
        }
    }
    run
}

/// Sleep until `deadline`, waking early when the pool runs out.
fn wait_until(deadline: Instant, pool: &Pool) {
    loop {
        let now = Instant::now();
        if now >= deadline || pool.exhausted.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
    }
}

fn report(
    options: &IssueOptions,
    mut run: Run,
    tokens: TokenReport,
    server_pid: Option<u32>,
    server_exit: Option<String>,
) -> IssueReport {
    let usage = run.usage;
    let wall = usage.wall_s.max(1e-9);
    let errors = run.errors.values().sum();
    let pinned = options.pin.is_some();
    let label = format!(
        "writ-issue-{}-c{}-{}{}{}{}",
        options.alg,
        options.concurrency,
        if pinned { "pinned" } else { "unpinned" },
        match (&options.postgres, options.replicas) {
            (None, _) => String::new(),
            (Some(_), 1) => "-postgres".to_owned(),
            (Some(_), n) => format!("-postgres-x{n}"),
        },
        if options.tls { "-tls" } else { "" },
        if options.flood.is_some() {
            "-flood"
        } else {
            ""
        },
    );
    IssueReport {
        bench: "issue",
        label,
        alg: options.alg.to_string(),
        concurrency: options.concurrency,
        warmup_s: options.warmup.as_secs_f64(),
        duration_s: options.duration.as_secs_f64(),
        window_s: usage.wall_s,
        pinned,
        tls: options.tls,
        flood: None,
        database: options
            .target
            .is_none()
            .then_some(if options.postgres.is_some() {
                "postgres"
            } else {
                "sqlite"
            }),
        replicas: if options.target.is_some() {
            1
        } else {
            options.replicas
        },
        database_cpu_s: usage.database_cpu_s,
        database_cores_busy: usage.cores(usage.database_cpu_s),
        ok_per_server_and_database_cpu_s: match (usage.server_cpu_s, usage.database_cpu_s) {
            (Some(server), Some(database)) if server + database > 0.0 => {
                Some(run.ok_in_window as f64 / (server + database))
            }
            _ => None,
        },
        server_cpus: options.pin.as_ref().map(|p| p.server_cpus.clone()),
        client_cpus: options.pin.as_ref().map(|p| p.client_cpus.clone()),
        target: options.target.as_ref().map(|t| t.url.clone()),
        server_pid,
        ok: run.ok_in_window,
        errors,
        errors_by_status: run.errors,
        first_errors: run.first_errors,
        warmup_errors: run.warmup_errors,
        ok_per_s: run.ok_in_window as f64 / wall,
        latency_ms: Summary::of(&mut run.latencies),
        server_cpu_s: usage.server_cpu_s,
        server_cores_busy: usage.cores(usage.server_cpu_s),
        ok_per_server_cpu_s: usage
            .server_cpu_s
            .filter(|s| *s > 0.0)
            .map(|s| run.ok_in_window as f64 / s),
        client_cpu_s: usage.client_cpu_s,
        client_cores_busy: usage.cores(usage.client_cpu_s),
        other_cpu_s: usage.other_cpu_s,
        other_cores_busy: usage.cores(usage.other_cpu_s),
        steal_cores: usage.cores(usage.steal_s),
        machine_cpus: super::cpu::machine_cpus(),
        tokens,
        prefill_audit: None,
        build: build_profile(),
        version: env!("CARGO_PKG_VERSION"),
        server_exit,
    }
}

/// Above this many cores used by other processes, a run was probably disturbed (the
/// threshold the peer scripts use).
pub const DISTURBED_OTHER_CORES: f64 = 0.15;

impl fmt::Display for IssueReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pinning = match (&self.server_cpus, &self.client_cpus) {
            (Some(s), Some(c)) => format!("server on CPU {s}, client on CPU {c}"),
            _ => "unpinned".to_owned(),
        };
        let server = match (&self.target, self.database) {
            (Some(url), _) => format!("target {url}"),
            (None, Some("postgres")) => format!(
                "own {} on PostgreSQL{}",
                if self.replicas == 1 {
                    "server".to_owned()
                } else {
                    format!("{} replicas", self.replicas)
                },
                if self.tls { ", TLS" } else { "" }
            ),
            (None, _) => format!(
                "own server (SQLite, synchronous=FULL){}",
                if self.tls { ", TLS" } else { "" }
            ),
        };
        writeln!(
            f,
            "writ bench issue: {} tokens, {} connections, {:.1}s window after {:.1}s warm-up, {pinning}, {server}, {} build",
            self.alg, self.concurrency, self.window_s, self.warmup_s, self.build
        )?;
        writeln!(f, "  ok            {} ({:.0}/s)", self.ok, self.ok_per_s)?;
        let by_status: Vec<String> = self
            .errors_by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        writeln!(
            f,
            "  errors        {}{}",
            self.errors,
            if by_status.is_empty() {
                String::new()
            } else {
                format!(" ({})", by_status.join(", "))
            }
        )?;
        for (kind, example) in &self.first_errors {
            writeln!(f, "    first {kind}: {example}")?;
        }
        let l = &self.latency_ms;
        writeln!(
            f,
            "  latency ms    p50 {}  p90 {}  p99 {}  max {}",
            show(l.p50, 2),
            show(l.p90, 2),
            show(l.p99, 2),
            show(l.max, 1)
        )?;
        writeln!(
            f,
            "  server CPU    {} cores ({} CPU-s)  =>  {} certificates per server CPU-second",
            show(self.server_cores_busy, 2),
            show(self.server_cpu_s, 2),
            show(self.ok_per_server_cpu_s, 0)
        )?;
        if self.database_cpu_s.is_some() {
            writeln!(
                f,
                "  PostgreSQL    {} cores ({} CPU-s)  =>  {} certificates per CPU-second of servers and PostgreSQL",
                show(self.database_cores_busy, 2),
                show(self.database_cpu_s, 2),
                show(self.ok_per_server_and_database_cpu_s, 0)
            )?;
        }
        writeln!(
            f,
            "  client CPU    {} cores",
            show(self.client_cores_busy, 2)
        )?;
        let disturbed = self
            .other_cores_busy
            .is_some_and(|o| o > DISTURBED_OTHER_CORES);
        writeln!(
            f,
            "  other CPU     {} cores, steal {}{}",
            show(self.other_cores_busy, 2),
            show(self.steal_cores, 2),
            if disturbed {
                "  (other processes were busy: rerun on a quiet machine)"
            } else {
                ""
            }
        )?;
        if let Some(flood) = &self.flood {
            let answers: Vec<String> = flood
                .by_status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            writeln!(
                f,
                "  junk flood    {} connections from {}: {} requests ({:.0}/s), answered {}",
                flood.connections,
                flood.source,
                flood.requests,
                flood.per_s,
                answers.join(", ")
            )?;
        }
        if let Some((records, seconds)) = self.prefill_audit {
            writeln!(
                f,
                "  prefill       {records} audit records before measuring ({seconds:.0}s)"
            )?;
        }
        writeln!(
            f,
            "  tokens        {} minted in {:.1}s, {} used{}",
            self.tokens.minted,
            self.tokens.mint_s,
            self.tokens.used,
            if self.tokens.exhausted {
                " (RAN OUT: window cut short)"
            } else {
                ""
            }
        )?;
        write!(
            f,
            "RESULT {} c={} ok={} fail={} rps={:.0} p50={}ms p90={}ms p99={}ms max={}ms server_cpu={}cores ({} ok/cpu-s) loadgen_cpu={}cores other_cpu={}cores steal={}cores",
            self.label,
            self.concurrency,
            self.ok,
            self.errors,
            self.ok_per_s,
            show(l.p50, 2),
            show(l.p90, 2),
            show(l.p99, 2),
            show(l.max, 1),
            show(self.server_cores_busy, 2),
            show(self.ok_per_server_cpu_s, 0),
            show(self.client_cores_busy, 2),
            show(self.other_cores_busy, 2),
            show(self.steal_cores, 2),
        )
    }
}
