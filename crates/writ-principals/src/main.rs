//! `writ-principals`: the host-side binary. It parses arguments, reads the clock once and
//! calls [`writ_principals`]; all decisions live in the library. It never starts an async
//! runtime: `check` runs for every SSH authentication attempt and must start fast.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use writ_formats::duration;
use writ_principals::acknowledge::Acknowledgement;
use writ_principals::config::HostConfig;
use writ_principals::inventory::{self, plan, render, report};
use writ_principals::session::{self, Report, SessionEnv, SessionOutcome};
use writ_principals::sessions;
use writ_principals::syslog::{self, Severity};
use writ_principals::{check, host_cert, metrics_file, sync};

const AFTER_HELP: &str = "\
Host setup (sshd_config):
  TrustedUserCAKeys /var/lib/writ/trusted_user_ca_keys
  RevokedKeys /var/lib/writ/revoked.krl
  AuthorizedPrincipalsCommand /usr/local/bin/writ-principals check --config /etc/writ/host.toml -- %u %k
  AuthorizedPrincipalsCommandUser writ
  ExposeAuthInfo yes

PAM (/etc/pam.d/sshd), to record each real login as a certificate use:
  session optional pam_exec.so quiet /usr/local/bin/writ-principals session --config /etc/writ/host.toml

Keep the state directory current with a service running
  writ-principals sync --config /etc/writ/host.toml --watch --interval 10s
(the revocation feed must stay younger than max_staleness, or `check` denies everyone).
Every check decision and every recorded use goes to syslog, facility auth.";

const CHECK_AFTER_HELP: &str = "\
sshd_config:
  AuthorizedPrincipalsCommand /usr/local/bin/writ-principals check --config /etc/writ/host.toml -- %u %k
  AuthorizedPrincipalsCommandUser writ

Exit 0 and one line (the principal) on stdout when admitted; otherwise nothing on stdout,
`writ-principals: denied: <reason_code>` on stderr and exit 1. Each decision is logged to
syslog (auth.info for allow, auth.notice for deny) as one line:
  decision=… login=… serial=… task=… host=… reason=… via=local|online|fallback …";

const SYNC_AFTER_HELP: &str = "\
Writes, in state_dir (atomically, mode 0644):
  revocations.json       GET {ca_url}/v1/revocations?version=2         (read by check)
  trusted_user_ca_keys   GET {ca_url}/v1/ca/trusted-keys               (sshd TrustedUserCAKeys)
  revoked.krl            GET {ca_url}/v1/krl?sequence=S&issued_at=T    (sshd RevokedKeys)
All three are fetched and verified first (the feed's signature against the new key
bundle, its age against max_staleness, that it is not older than the installed one, and
that the bundle and KRL are exactly the ones it names by digest; a mismatch is retried
3 rounds at most); if anything fails, nothing is written and the exit status is 1.
state_dir and its files must be owned by root (or sync_user) and not group/world-writable,
or sync (and check) refuse them.

With --watch, syncs forever, logging each round to stderr and keeping the last good files
when a round fails; run it as a service (e.g. systemd, Restart=always). After a good round
it asks the CA to hold the feed request until something is revoked
(GET …/v1/revocations?version=2&after=S&wait=60) and installs the new feed the moment it
arrives; after a failed round, or with a CA that does not push, it waits --interval.";

const SESSION_AFTER_HELP: &str = "\
/etc/pam.d/sshd (with `ExposeAuthInfo yes` in sshd_config):
  session optional pam_exec.so quiet /usr/local/bin/writ-principals session --config /etc/writ/host.toml

Reads PAM_TYPE (acts only on open_session), PAM_USER, PAM_RHOST and SSH_AUTH_INFO_0, finds
the certificate used to log in, re-checks it (trusted CA, validity, login, host; the local
revocation feed's verdict is logged) and records the use: a syslog line
`event=cert.used login=… serial=… task=… host=… rhost=…`, and in online mode
POST {ca_url}/v1/authorize with phase \"session\" (bounded by timeout). Always exits 0:
a login is never blocked or failed by this hook.";

/// Admit writ SSH certificates on this host.
#[derive(Debug, Parser)]
#[command(name = "writ-principals", version, after_help = AFTER_HELP)]
struct Cli {
    /// Host configuration file.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "WRIT_HOST_CONFIG",
        default_value = "/etc/writ/host.toml"
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// sshd's AuthorizedPrincipalsCommand: print the principal that admits CERT_BASE64 as
    /// LOGIN on this host, or print nothing and exit 1.
    ///
    /// The certificate must be a user certificate signed by a trusted CA key, inside its
    /// validity window, for a task that names LOGIN and a host pattern matching this host.
    /// Offline mode: the synced revocation feed must be present, signed by a trusted CA
    /// key, fresh (max_staleness), and revoke neither the task nor the serial. Online mode:
    /// the CA decides (POST /v1/authorize, bounded by timeout); the local feed is used
    /// only when the CA is unreachable. On denial a single line
    /// `writ-principals: denied: <reason>` goes to stderr.
    #[command(after_help = CHECK_AFTER_HELP)]
    Check {
        /// The login being requested (sshd's %u).
        #[arg(allow_hyphen_values = true)]
        login: String,
        /// The certificate, base64 as sshd passes it (%k).
        #[arg(allow_hyphen_values = true)]
        cert_base64: String,
    },
    /// Fetch the CA's trusted keys, KRL and signed revocation feed, verify them, and
    /// replace the files in state_dir atomically.
    #[command(after_help = SYNC_AFTER_HELP)]
    Sync {
        /// Keep syncing forever (a service), never exiting on a failed round.
        #[arg(long)]
        watch: bool,
        /// Pause between rounds with --watch when the CA does not push or a round failed
        /// (e.g. 10s, 1m). Default 10s.
        #[arg(long, value_name = "DURATION", value_parser = parse_interval, requires = "watch")]
        interval: Option<Duration>,
    },
    /// pam_exec session hook: record a use of the writ certificate the user logged in
    /// with (syslog; and the CA in online mode). Always exits 0.
    #[command(after_help = SESSION_AFTER_HELP)]
    Session,
    /// Get or renew SSH host certificates for this host's keys from the CA, so clients
    /// verify this host by the CA's `@cert-authority` line instead of on first use.
    ///
    /// Asks only for keys whose certificate is missing, for other names, or two thirds
    /// through its lifetime; writes `<key>-cert.pub` next to each key atomically and
    /// reloads sshd only when a certificate changed. Exit 1 (nothing written) when the
    /// CA refuses or cannot be reached. `sync --watch` does the same every round.
    #[command(name = "host-cert", after_help = HOST_CERT_AFTER_HELP)]
    HostCert,
    /// List every way into this host other than a writ certificate, account by account:
    /// static authorized_keys entries, passwords, keys writ cannot see; whether writ's
    /// enforcement is in place; and unencrypted private keys in home directories.
    ///
    /// Read-only and local: it runs `sshd -T` (once, plus once per distinct set of
    /// `Match User`/`Match Group` blocks), reads /etc/passwd, /etc/group, /etc/shadow,
    /// the authorized_keys files sshd reads and the home directories (bounded), and uses
    /// the network only with --report. Key material is never printed: keys appear as
    /// type, size and SHA256 fingerprint.
    #[command(after_help = INVENTORY_AFTER_HELP)]
    Inventory(InventoryArgs),
}

#[derive(Debug, clap::Args)]
struct InventoryArgs {
    /// Print one JSON document (format version 1) instead of the text report.
    #[arg(long)]
    json: bool,
    /// Also look for private keys in PATH (a directory, walked 12 levels deep, or a
    /// file), read under --root like everything else. Repeatable.
    #[arg(long, value_name = "PATH")]
    scan: Vec<PathBuf>,
    /// Send the inventory to the CA (POST {ca_url}/v1/inventory, with the host's token
    /// from host.toml's token_file) and print the CA's one-line answer; with --json the
    /// document goes to stdout and the answer to stderr. Exit 1 if the CA is unreachable
    /// or refuses it.
    #[arg(long)]
    report: bool,
    /// Instead of the inventory, print the steps that make LOGIN writ-only: the fixes
    /// to writ enforcement that must come first, a writ.toml policy, the keys that go,
    /// and the `Match User` block for sshd_config, tested without locking you out.
    #[arg(long, value_name = "LOGIN", conflicts_with_all = ["json", "report"])]
    plan: Option<String>,
    /// Read the host's files (/etc/passwd, /etc/shadow, /etc/group, home directories,
    /// authorized_keys files, TrustedUserCAKeys, --scan paths) under DIR, e.g. a mounted
    /// disk image. Paths are reported as the host sees them, without DIR. Symlinks are
    /// followed only inside DIR.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// The sshd configuration sshd is asked about (`sshd -T -f FILE`); a path on this
    /// machine, not under --root. Relative Includes are read from /etc/ssh, as sshd does.
    #[arg(long = "sshd-config", value_name = "FILE", default_value = inventory::DEFAULT_SSHD_CONFIG)]
    sshd_config: PathBuf,
    /// The sshd binary to run for `sshd -T` (it needs a readable host key; if it fails,
    /// its first error line is reported and the settings are read from the file).
    #[arg(long, value_name = "PATH", default_value = inventory::DEFAULT_SSHD)]
    sshd: PathBuf,
}

const INVENTORY_AFTER_HELP: &str = "\
Verdicts (the first that applies):
  static-keys  an authorized_keys entry sshd would use (cert-authority lines included)
  no-login     the shell is nologin/false/… and there are no static keys
  password     password or keyboard-interactive login is possible (or /etc/shadow is
               unreadable, so it cannot be ruled out)
  unmanaged    writ enforcement is not fully configured for the account, or keys it may
               use cannot be seen (a foreign AuthorizedKeysCommand, an unreadable file)
  writ-only    only writ certificates can log in

writ enforcement is fully configured when TrustedUserCAKeys names an existing file (the
one `sync` keeps), AuthorizedPrincipalsCommand runs `writ-principals check`,
PubkeyAuthentication is on and the host config (--config) loads.

Match blocks that depend on the connection (Address, Host, LocalAddress, LocalPort,
RDomain) are listed, not evaluated. Match Group is evaluated by sshd against this
machine's group database.

Bounds: 1 MiB per authorized_keys file, 100,000 entries, home directories 6 levels deep,
200,000 files, private key files up to 64 KiB; `limits_hit` and `skipped` say what a
bound cut short.

Exit status: 0 when the inventory was taken (whatever it found), 2 on bad usage (or an
unknown --plan login), 1 on errors (/etc/passwd unreadable, --report failed).

Examples:
  writ-principals inventory
  writ-principals inventory --json --scan /srv/deploy
  writ-principals inventory --plan deploy
  writ-principals inventory --report";

const HOST_CERT_AFTER_HELP: &str = "\
host.toml:
  token_file = \"/var/run/secrets/writ/token\"    # this host's workload token
  [host_certificates]
  names = [\"web1.prod.example.com\"]             # default: host_name
  # keys = [\"/etc/ssh/ssh_host_ed25519_key.pub\"] # default: every /etc/ssh/ssh_host_*_key.pub
  # reload_command = [\"systemctl\", \"reload\", \"ssh\"]  # default: SIGHUP to /run/sshd.pid

sshd_config, one line per key:
  HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub

The CA must have a role = \"host\" policy matching the host's token whose hosts patterns
cover every name (README \"Host certificates\").";

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = duration::parse(text)?;
    if interval < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(interval)
}

fn main() -> ExitCode {
    let now = SystemTime::now();
    if let Some((config, login, cert)) = sshd_check_args(std::env::args_os().skip(1)) {
        return run_check(&config, &login, &cert, now);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Check { login, cert_base64 } => run_check(&cli.config, &login, &cert_base64, now),
        Command::Sync { watch: false, .. } => run_sync(&cli.config),
        Command::Sync {
            watch: true,
            interval,
        } => run_watch(
            &cli.config,
            interval.unwrap_or(sync::DEFAULT_WATCH_INTERVAL),
        ),
        Command::Session => run_session(&cli.config, now),
        Command::HostCert => run_host_cert(&cli.config, now),
        Command::Inventory(args) => run_inventory(&cli.config, args, now),
    }
}

/// The arguments of the documented sshd_config line, `check --config FILE -- LOGIN CERT`,
/// exactly and nothing else; `None` sends everything else (help, other shapes, bad
/// UTF-8) through clap. sshd execs `check` on every authentication attempt, and building
/// clap's whole command tree is ~5 % of that process's time (docs/performance.md). Both
/// paths give `run_check` the same three values: the test `sshd_shape_is_parsed_like_clap`
/// compares them.
fn sshd_check_args(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Option<(PathBuf, String, String)> {
    let args: Vec<std::ffi::OsString> = args.take(7).collect();
    let [check, flag, config, dashes, login, cert] = args.as_slice() else {
        return None;
    };
    let config = config.to_str()?;
    let shape = check == "check"
        && flag == "--config"
        && !config.is_empty()
        && !config.starts_with('-')
        && dashes == "--";
    shape.then_some(())?;
    Some((
        PathBuf::from(config),
        login.to_str()?.to_owned(),
        cert.to_str()?.to_owned(),
    ))
}

fn unix_seconds(now: SystemTime) -> Option<u64> {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Fail closed: stdout carries the principal and nothing else, only on success. Every
/// decision is logged to syslog.
fn run_check(config_path: &Path, login: &str, cert: &str, now: SystemTime) -> ExitCode {
    let deny_early = |reason: &str| {
        syslog::log(
            Severity::Notice,
            &[
                ("decision", "deny"),
                ("login", login),
                ("reason", reason),
                ("via", "local"),
            ],
        );
        eprintln!("writ-principals: denied: {reason}");
        ExitCode::FAILURE
    };
    let Some(now_unix) = unix_seconds(now) else {
        return deny_early("clock_before_epoch");
    };
    let config = match HostConfig::load(config_path) {
        Ok(config) => config,
        Err(_) => return deny_early("config_error"),
    };
    let host = config.host_name.as_deref();
    let decision = check::decide(&config, login, cert, now_unix);
    match &decision.result {
        Ok(principal) => {
            let mut stdout = io::stdout().lock();
            match writeln!(stdout, "{principal}").and_then(|()| stdout.flush()) {
                Ok(()) => {
                    decision.log(login, host);
                    ExitCode::SUCCESS
                }
                Err(_) => deny_early("stdout_error"),
            }
        }
        Err(error) => {
            decision.log(login, host);
            eprintln!("writ-principals: denied: {}", error.reason_code());
            ExitCode::FAILURE
        }
    }
}

fn report_line(report: &sync::SyncReport) -> String {
    format!(
        "synced {} trusted CA key(s), KRL ({} bytes) and revocation feed #{} \
         ({} revoked task(s), {} revoked serial(s)) to {}",
        report.trusted_keys,
        report.krl_bytes,
        report.feed_sequence,
        report.revoked_tasks,
        report.revoked_serials,
        report
            .revocations_path
            .parent()
            .unwrap_or(Path::new("?"))
            .display()
    )
}

fn run_sync(config_path: &Path) -> ExitCode {
    let config = match HostConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("writ-principals: sync failed (nothing written): {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = sync::sync(&config);
    write_metrics_file(&config, result.is_ok());
    match result {
        Ok(report) => {
            // A closed pipe (`sync | head`) is not a failed sync: the write's result is
            // ignored (and, unlike `println!`, it does not panic).
            let mut stdout = io::stdout().lock();
            let _ = writeln!(stdout, "writ-principals: {}", report_line(&report))
                .and_then(|()| stdout.flush());
            if let Acknowledgement::Failed(why) = &report.acknowledged {
                eprintln!(
                    "writ-principals: warning: could not tell the CA the feed applied: {why}"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("writ-principals: sync failed (nothing written): {e}");
            ExitCode::FAILURE
        }
    }
}

/// After a round: the textfile-collector file, if configured. Failing to write it is a
/// warning; the sync's outcome stands.
fn write_metrics_file(config: &HostConfig, succeeded: bool) {
    let now_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if let Err(e) = metrics_file::write_after_round(config, succeeded, now_unix) {
        eprintln!("writ-principals: warning: {e}");
    }
}

/// What a sync installed that changes what the host admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Enforced {
    trusted_keys: usize,
    krl_bytes: usize,
    revoked_tasks: usize,
    revoked_serials: usize,
}

impl Enforced {
    fn of(report: &sync::SyncReport) -> Enforced {
        Enforced {
            trusted_keys: report.trusted_keys,
            krl_bytes: report.krl_bytes,
            revoked_tasks: report.revoked_tasks,
            revoked_serials: report.revoked_serials,
        }
    }
}

/// The service loop: only a configuration that cannot be loaded at start ends it.
fn run_watch(config_path: &Path, interval: Duration) -> ExitCode {
    let config = match HostConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("writ-principals: sync --watch: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "writ-principals: syncing from {} (pushed by the CA; every {} when it does not push)",
        config.ca_base_url(),
        duration::format(interval)
    );
    // Quiet while nothing hosts enforce changes: a line for the first sync, for each
    // change of keys, KRL or revocations, after a failure, and for every failure.
    let mut last: Option<Enforced> = None;
    sync::watch(&config, interval, |result| {
        write_metrics_file(&config, result.is_ok());
        match result {
            Ok(report) => {
                let now = Enforced::of(report);
                if last != Some(now) {
                    eprintln!("writ-principals: {}", report_line(report));
                }
                last = Some(now);
                if report.sessions_ended > 0 {
                    eprintln!(
                        "writ-principals: ended {} SSH connection(s) whose task ended or whose \
                         certificate was revoked",
                        report.sessions_ended
                    );
                }
                if let Acknowledgement::Failed(why) = &report.acknowledged {
                    eprintln!(
                        "writ-principals: warning: could not tell the CA the feed applied: {why}"
                    );
                }
            }
            Err(e) => {
                eprintln!("writ-principals: sync failed, keeping the last good files: {e}");
                last = None;
            }
        }
        if config.host_certificates.is_some() {
            renew_host_certificates(&config);
        }
        ControlFlow::Continue(())
    });
    ExitCode::SUCCESS
}

/// A `sync --watch` round's host certificates: a line for what changed or failed.
fn renew_host_certificates(config: &HostConfig) {
    let now_unix = unix_seconds(SystemTime::now()).unwrap_or(0);
    match host_cert::run_at(config, now_unix) {
        Ok(report) => {
            for line in host_cert_lines(&report, false) {
                eprintln!("writ-principals: {line}");
            }
        }
        Err(e) => {
            eprintln!("writ-principals: host-cert failed, keeping the installed certificates: {e}")
        }
    }
}

fn run_host_cert(config_path: &Path, now: SystemTime) -> ExitCode {
    let config = match HostConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("writ-principals: host-cert failed (nothing written): {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(now_unix) = unix_seconds(now) else {
        eprintln!("writ-principals: host-cert: the system clock is before 1970");
        return ExitCode::FAILURE;
    };
    match host_cert::run_at(&config, now_unix) {
        Ok(report) => {
            let mut stdout = io::stdout().lock();
            for line in host_cert_lines(&report, true) {
                let _ = writeln!(stdout, "writ-principals: {line}");
            }
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("writ-principals: host-cert failed (nothing written): {e}");
            ExitCode::FAILURE
        }
    }
}

/// A round's lines: every key (`all`), or only what changed (`sync --watch`).
fn host_cert_lines(report: &host_cert::Report, all: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for key in &report.keys {
        match &key.outcome {
            host_cert::Outcome::Kept {
                serial,
                valid_before,
                renew_at,
            } if all => lines.push(format!(
                "host certificate {} (serial {serial}) kept: valid until {}, renewed from {}",
                key.certificate.display(),
                timestamp(*valid_before),
                timestamp(*renew_at)
            )),
            host_cert::Outcome::Kept { .. } => {}
            host_cert::Outcome::Issued {
                reason,
                serial,
                valid_before,
            } => lines.push(format!(
                "host certificate {} (serial {serial}) written, valid until {} ({reason})",
                key.certificate.display(),
                timestamp(*valid_before)
            )),
        }
    }
    if let Some(reload) = &report.reload {
        lines.push(reload.to_string());
    }
    lines
}

fn timestamp(unix: u64) -> String {
    writ_formats::text::rfc3339(i64::try_from(unix).unwrap_or(i64::MAX))
}

/// Exit 0 when the inventory was taken, whatever it found; 2 on bad usage; 1 on errors.
fn run_inventory(config_path: &Path, args: InventoryArgs, now: SystemTime) -> ExitCode {
    let Some(now_unix) = unix_seconds(now) else {
        eprintln!("writ-principals: inventory: the system clock is before 1970");
        return ExitCode::FAILURE;
    };
    // --report needs the host config: fail before the work, not after.
    let report_config = if args.report {
        match HostConfig::load(config_path) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("writ-principals: inventory --report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let options = inventory::Options {
        root: args.root,
        sshd: args.sshd,
        sshd_config: args.sshd_config,
        scan: args.scan,
        host_config: config_path.to_owned(),
    };
    let findings = match inventory::run(&options, now_unix) {
        Ok(findings) => findings,
        Err(e) => {
            eprintln!("writ-principals: inventory: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(login) = &args.plan {
        return match plan::plan(&findings, login) {
            Ok(text) => {
                print_ignoring_closed_pipe(&text);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("writ-principals: inventory --plan: {e}");
                ExitCode::from(2)
            }
        };
    }
    if args.json {
        match serde_json::to_string_pretty(&findings.inventory) {
            Ok(json) => print_ignoring_closed_pipe(&format!("{json}\n")),
            Err(e) => {
                eprintln!("writ-principals: inventory: cannot encode JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if !args.report {
        print_ignoring_closed_pipe(&render::text(&findings.inventory));
    }
    let Some(config) = report_config else {
        return ExitCode::SUCCESS;
    };
    match report::send(&config, &findings.inventory) {
        Ok(recorded) => {
            let line = format!("writ-principals: {}", report::result_line(&recorded));
            if args.json {
                eprintln!("{line}");
            } else {
                print_ignoring_closed_pipe(&format!("{line}\n"));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("writ-principals: inventory --report failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Write `text` to stdout; a closed pipe (`inventory | head`) is not an error.
fn print_ignoring_closed_pipe(text: &str) {
    let mut stdout = io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Never fails a login: exit 0 whatever happens, logging what could not be done.
fn run_session(config_path: &Path, now: SystemTime) -> ExitCode {
    let env = SessionEnv::from_process();
    if env.pam_type.as_deref() == Some(session::CLOSE_SESSION) {
        // The connection's record goes with its session.
        if let (Ok(config), Ok((pid, _))) = (
            HostConfig::load(config_path),
            sessions::connection_process(),
        ) {
            sessions::forget(&config, pid);
        }
        return ExitCode::SUCCESS;
    }
    if env.pam_type.as_deref() != Some(session::OPEN_SESSION) {
        return ExitCode::SUCCESS;
    }
    let unreported = |reason: &str, detail: &str| {
        syslog::log(
            Severity::Notice,
            &[
                ("event", "cert.use_unreported"),
                ("login", env.user.as_deref().unwrap_or("-")),
                ("rhost", env.rhost.as_deref().unwrap_or("-")),
                ("reason", reason),
            ],
        );
        eprintln!("writ-principals: session: {reason}: {detail}");
        ExitCode::SUCCESS
    };
    let Some(now_unix) = unix_seconds(now) else {
        return unreported("clock_before_epoch", "the system clock is before 1970");
    };
    let config = match HostConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => return unreported("config_error", &e.to_string()),
    };
    let outcome = session::run(&config, &env, now_unix);
    outcome.log(config.host_name.as_deref());
    if let SessionOutcome::Used {
        report: Report::Failed(detail),
        ..
    } = &outcome
    {
        eprintln!("writ-principals: session: could not report the use to the CA: {detail}");
    }
    if let SessionOutcome::Used {
        login,
        facts,
        certificate,
        host,
        ..
    } = &outcome
        && config.terminate_sessions
        && let Err(e) = record_connection(&config, login, facts, certificate, host)
    {
        // Fail closed: a session that could not be ended with its task must not open
        // (with `session required pam_exec.so …`; `optional` only logs this).
        syslog::log(
            Severity::Notice,
            &[
                ("event", "cert.session_unrecorded"),
                ("login", login),
                ("task", facts.task_id.as_deref().unwrap_or("-")),
                ("reason", &e),
            ],
        );
        eprintln!(
            "writ-principals: session: refusing the session: it cannot be recorded, so it \
             could not be ended with its task (terminate_sessions = true): {e}"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Record the connection this hook runs for ([`sessions`]).
fn record_connection(
    config: &HostConfig,
    login: &str,
    facts: &writ_principals::check::CertFacts,
    certificate: &str,
    host: &str,
) -> Result<(), String> {
    let (pid, start) = sessions::connection_process().map_err(|e| e.to_string())?;
    let record = sessions::Record {
        pid,
        start,
        login: login.to_owned(),
        serial: facts.serial.map(|s| s.to_string()).unwrap_or_default(),
        task_id: facts.task_id.clone().unwrap_or_default(),
        ca_fingerprint: facts.ca_fingerprint.clone().unwrap_or_default(),
        task_expires_at: facts.task_expires_at,
        certificate: certificate.to_owned(),
        host: host.to_owned(),
    };
    sessions::record(config, &record).map_err(|e| {
        format!(
            "cannot write {}: {e}",
            config.state_dir.join(sessions::SESSIONS_DIR).display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn args(line: &[&str]) -> Vec<OsString> {
        line.iter().map(OsString::from).collect()
    }

    fn via_clap(line: &[&str]) -> Option<(PathBuf, String, String)> {
        let argv = std::iter::once("writ-principals").chain(line.iter().copied());
        let cli = Cli::try_parse_from(argv).ok()?;
        match cli.command {
            Command::Check { login, cert_base64 } => Some((cli.config, login, cert_base64)),
            _ => None,
        }
    }

    #[test]
    fn sshd_shape_is_parsed_like_clap() {
        for line in [
            &[
                "check",
                "--config",
                "/etc/writ/host.toml",
                "--",
                "deploy",
                "AAAAC3Nz",
            ][..],
            &["check", "--config", "host.toml", "--", "-rf", "--help"],
            &["check", "--config", "host.toml", "--", "", ""],
        ] {
            let fast = sshd_check_args(args(line).into_iter());
            assert!(fast.is_some(), "{line:?}");
            assert_eq!(fast, via_clap(line), "{line:?}");
        }
    }

    #[test]
    fn every_other_shape_goes_to_clap() {
        for line in [
            &["check", "--config", "host.toml", "deploy", "AAAA"][..],
            &["check", "--", "deploy", "AAAA"],
            &["check", "--config", "host.toml", "--", "deploy"],
            &[
                "check",
                "--config",
                "host.toml",
                "--",
                "deploy",
                "AAAA",
                "extra",
            ],
            &["check", "--config", "--help", "--", "deploy", "AAAA"],
            &["check", "--config", "", "--", "deploy", "AAAA"],
            &["check", "--config=host.toml", "--", "deploy", "AAAA", "x"],
            &["sync", "--config", "host.toml", "--", "deploy", "AAAA"],
            &["--help"],
            &[],
        ] {
            assert_eq!(sshd_check_args(args(line).into_iter()), None, "{line:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn arguments_that_are_not_utf8_go_to_clap() {
        use std::os::unix::ffi::OsStringExt;
        let mut line = args(&["check", "--config", "host.toml", "--", "deploy", "AAAA"]);
        line[4] = OsString::from_vec(vec![0xff, 0xfe]);
        assert_eq!(sshd_check_args(line.into_iter()), None);
    }
}
