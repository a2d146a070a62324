//! `writ-principals`: the host-side binary. It parses arguments, reads the clock once and
//! calls [`writ::host`]; all decisions live in the library. It never starts an async
//! runtime: `check` runs for every SSH authentication attempt and must start fast.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use writ::host::config::HostConfig;
use writ::host::{check, sync};

const AFTER_HELP: &str = "\
Host setup (sshd_config):
  TrustedUserCAKeys /var/lib/writ/trusted_user_ca_keys
  AuthorizedPrincipalsCommand /usr/local/bin/writ-principals check --config /etc/writ/host.toml -- %u %k
  AuthorizedPrincipalsCommandUser writ

sshd runs `check` with the target login (%u) and the base64 certificate (%k); the `--`
makes sure both are read as data. Run `writ-principals sync` from a timer (every minute)
to keep the trusted CA keys current.";

const CHECK_AFTER_HELP: &str = "\
sshd_config:
  AuthorizedPrincipalsCommand /usr/local/bin/writ-principals check --config /etc/writ/host.toml -- %u %k";

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
    /// On denial a single line `writ-principals: denied: <reason>` goes to stderr.
    #[command(after_help = CHECK_AFTER_HELP)]
    Check {
        /// The login being requested (sshd's %u).
        #[arg(allow_hyphen_values = true)]
        login: String,
        /// The certificate, base64 as sshd passes it (%k).
        #[arg(allow_hyphen_values = true)]
        cert_base64: String,
    },
    /// Fetch the CA's trusted keys (GET {ca_url}/v1/ca/trusted-keys) and replace
    /// state_dir/trusted_user_ca_keys atomically.
    Sync,
}

fn main() -> ExitCode {
    let now = SystemTime::now();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { login, cert_base64 } => run_check(&cli.config, &login, &cert_base64, now),
        Command::Sync => run_sync(&cli.config),
    }
}

/// Fail closed: stdout carries the principal and nothing else, only on success.
fn run_check(config_path: &Path, login: &str, cert: &str, now: SystemTime) -> ExitCode {
    let deny = |reason: &str| {
        eprintln!("writ-principals: denied: {reason}");
        ExitCode::FAILURE
    };
    let Ok(since_epoch) = now.duration_since(SystemTime::UNIX_EPOCH) else {
        return deny("clock_before_epoch");
    };
    let config = match HostConfig::load(config_path) {
        Ok(config) => config,
        Err(_) => return deny("config_error"),
    };
    match check::check(&config, login, cert, since_epoch.as_secs()) {
        Ok(principal) => {
            let mut stdout = io::stdout().lock();
            match writeln!(stdout, "{principal}").and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => deny("stdout_error"),
            }
        }
        Err(error) => deny(error.reason_code()),
    }
}

fn run_sync(config_path: &Path) -> ExitCode {
    let result = HostConfig::load(config_path)
        .map_err(|e| e.to_string())
        .and_then(|config| sync::sync(&config).map_err(|e| e.to_string()));
    match result {
        Ok(report) => {
            println!(
                "writ-principals: synced {} trusted CA key(s) to {}",
                report.trusted_keys,
                report.trusted_keys_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("writ-principals: sync failed: {message}");
            ExitCode::FAILURE
        }
    }
}
