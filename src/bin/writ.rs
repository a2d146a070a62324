//! `writ`: the CA server (`writ serve`), operator commands (`writ admin …`) and the
//! development helpers (`writ dev …`). Parses arguments and calls the library; nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use time::OffsetDateTime;
use writ::admin::{self, explain};
use writ::config::Config;
use writ::{dev, duration, server};

/// See Cargo.toml: measurably less CPU per certificate than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// writ — an SSH certificate authority for AI agents and other workloads.
///
/// Agents prove who they are with a workload identity token (OIDC JWT), name the task
/// they are about to do, and get a minute-scale SSH certificate bound to that task.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// CA configuration file (TOML).
    #[arg(long, global = true, env = "WRIT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Get a task-bound certificate for an existing key (agents, CI jobs).
    ///
    /// Opens a task for --login/--host with the workload token and writes the
    /// certificate next to the key as <key>-cert.pub, which ssh picks up automatically.
    Cert {
        #[command(flatten)]
        agent: AgentArgs,
        /// Private or public key file to certify (e.g. ~/.ssh/id_ed25519).
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
    },
    /// Open a task, ssh to the host with a fresh key and certificate, then complete the
    /// task so the certificate stops working everywhere.
    ///
    /// Example: writ ssh --ca-url https://ca.example.com --token @/var/run/token
    ///          --login deploy --host web-01.prod.example.com -- uptime
    Ssh {
        #[command(flatten)]
        agent: AgentArgs,
        /// Keep the task open after ssh exits (until it expires).
        #[arg(long)]
        keep_task: bool,
        /// An ssh option, before the host (repeat), e.g. --ssh-arg=-p --ssh-arg=2222.
        #[arg(long = "ssh-arg", value_name = "ARG", allow_hyphen_values = true)]
        ssh_options: Vec<String>,
        /// Remote command (after --).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run the CA.
    ///
    /// With --config, serves that configuration. With --dev, runs like `vault server -dev`:
    /// state under ./writ-data (SQLite, a generated CA key and passphrase), a built-in
    /// development token issuer and a permissive policy. Never use --dev in production.
    Serve {
        /// Development mode (see above).
        #[arg(long, conflicts_with = "config")]
        dev: bool,
        /// Data directory for --dev.
        #[arg(long, default_value = dev::DEFAULT_DATA_DIR, requires = "dev")]
        data_dir: PathBuf,
        /// Listen address for --dev.
        #[arg(long, default_value = "127.0.0.1:8422", requires = "dev")]
        listen: SocketAddr,
    },
    /// Operator commands on a CA configuration (give --config FILE or WRIT_CONFIG).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Development helpers.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Measure writ's performance (issuance load test, host check cost); see
    /// docs/performance.md.
    Bench {
        #[command(subcommand)]
        command: writ::bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Inspect the `[[policy]]` tables.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show or revoke tasks, directly in the CA's store.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// Manage the CA keys: list, rotate, revoke, schedule, export-public, rewrap.
    ///
    /// Works on the store a running `writ serve` uses; servers pick changes up within
    /// seconds. Every change is a `ca.key.*` audit record by `local-admin` and your login.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        /// Print JSON (list, rotate, revoke, schedule, rewrap).
        #[arg(long, global = true)]
        json: bool,
    },
    /// The audit log: export (JSON Lines or OCSF), verify, trail of a task, checkpoint,
    /// prune.
    Audit {
        #[command(subcommand)]
        command: admin::audit::AuditCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Every CA key: id, state, fingerprint, history, certificates still valid; and the
    /// rotation schedule.
    List,
    /// next → active, active → retiring, and a new next key. Refused while the next key
    /// has been published for less than [ca] rotation_min_publish (hosts may not trust it
    /// yet); with no next key, one is published first.
    Rotate {
        /// Rotate anyway: hosts that have not synced the next key refuse its certificates.
        #[arg(long)]
        force: bool,
    },
    /// Emergency: remove a key from trust now and list it in the KRL. Revoking the
    /// active key makes the next key sign at once.
    Revoke {
        /// Key id or fingerprint (see `writ admin ca list`).
        key: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Let `writ serve` rotate automatically, e.g. --every 30d (or --off).
    Schedule {
        /// Rotation period, e.g. 30d.
        #[arg(long, value_parser = duration::parse, required_unless_present = "off", conflicts_with = "off")]
        every: Option<Duration>,
        /// Stop rotating automatically.
        #[arg(long)]
        off: bool,
    },
    /// Print the public keys hosts must trust (TrustedUserCAKeys format).
    ExportPublic {
        /// Every key whatever its state, each after a `# id state fingerprint` comment.
        #[arg(long)]
        all: bool,
    },
    /// Re-encrypt every CA private key with a new passphrase, in one transaction.
    Rewrap {
        /// File holding the new passphrase (then make it the CA's passphrase_file).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: PathBuf,
    },
}

impl CaCommand {
    fn into_library(self) -> admin::ca::CaCommand {
        use admin::ca::CaCommand as C;
        match self {
            CaCommand::List => C::List,
            CaCommand::Rotate { force } => C::Rotate { force },
            CaCommand::Revoke { key, reason } => C::Revoke { key, reason },
            CaCommand::Schedule { every, off: _ } => C::Schedule { every },
            CaCommand::ExportPublic { all } => C::ExportPublic { all },
            CaCommand::Rewrap {
                new_passphrase_file,
            } => C::Rewrap {
                new_passphrase_file,
            },
        }
    }
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Show a task, its state and its certificates.
    Show {
        /// Task id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a task now: all its certificates are revoked and the next revocation feed
    /// and KRL (what hosts sync) list them. Recorded as `task.revoked` by `local-admin`
    /// and your login ($SUDO_USER or $USER).
    Revoke {
        /// Task id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Explain what the CA would do with a workload token, without issuing anything.
    ///
    /// Verifies the token exactly as `writ serve` does (fetching the issuer's JWKS), then
    /// prints which issuer verified it (or the reason code and message if it was refused),
    /// its subject and the claims policies can match on, every [[policy]] in order — why it
    /// does not match (issuer, subject, a claim, or role), or what it offers and what it
    /// grants or refuses for --logins/--hosts — and the decision: the first matching
    /// policy that grants the whole request. Nothing is issued, no store or audit log is
    /// touched, the CA passphrase is not read, and the token is not marked as used; the
    /// token itself is never printed.
    ///
    /// Exit status: 0 when the token verified (whatever the decision; use --json and
    /// `.decision.result` to script on it), 1 when it was refused or on any error.
    Explain {
        /// The workload token (JWT): `-` reads it from stdin, `@FILE` from a file, anything
        /// else is the token itself (visible to other local users in the process list;
        /// prefer - or @FILE).
        #[arg(long, value_name = "TOKEN|-|@FILE")]
        token: String,
        /// Logins the task would name, comma-separated (e.g. deploy,backup).
        #[arg(long, value_delimiter = ',', value_name = "LOGIN,…")]
        logins: Vec<String>,
        /// Host patterns the task would name, comma-separated (e.g. web-*.prod.example.com).
        #[arg(long, value_delimiter = ',', value_name = "PATTERN,…")]
        hosts: Vec<String>,
        /// Certificate lifetime to ask for, e.g. 5m (default: the CA's default_cert_ttl,
        /// capped by the policy).
        #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
        ttl: Option<Duration>,
        /// Task lifetime to ask for, e.g. 1h (default: the CA's default_task_ttl, capped by
        /// the policy).
        #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
        task_ttl: Option<Duration>,
        /// Print the explanation as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What an agent asks for.
#[derive(clap::Args)]
struct AgentArgs {
    /// The CA's base URL.
    #[arg(long, env = "WRIT_CA_URL", value_name = "URL")]
    ca_url: String,
    /// Workload token: `-` reads stdin, `@FILE` a file (preferred), else the token itself.
    #[arg(long, value_name = "TOKEN|-|@FILE")]
    token: String,
    /// Login for the task (repeat or comma-separate for several).
    #[arg(long = "login", value_delimiter = ',', required = true)]
    logins: Vec<String>,
    /// Host (pattern) for the task (repeat or comma-separate); `writ ssh` connects to the first.
    #[arg(long = "host", value_delimiter = ',', required = true)]
    hosts: Vec<String>,
    /// Certificate lifetime, e.g. 5m (default: the CA's).
    #[arg(long, value_parser = duration::parse)]
    ttl: Option<Duration>,
    /// Task lifetime, e.g. 30m (default: the CA's).
    #[arg(long, value_parser = duration::parse)]
    task_ttl: Option<Duration>,
    /// What the task is for (recorded in the audit log).
    #[arg(long, default_value = "")]
    purpose: String,
}

impl AgentArgs {
    fn request(&self) -> writ::client::TaskRequest {
        writ::client::TaskRequest {
            logins: self.logins.clone(),
            hosts: self.hosts.clone(),
            task_ttl: self.task_ttl,
            cert_ttl: self.ttl,
            purpose: self.purpose.clone(),
        }
    }
}

#[derive(Subcommand)]
enum DevCommand {
    /// Print a workload token from the development issuer of `writ serve --dev`.
    Token {
        /// Subject (`sub`) of the token, e.g. agent-1.
        #[arg(long)]
        sub: String,
        /// Audience (`aud`).
        #[arg(long, default_value = "writ")]
        aud: String,
        /// Lifetime, e.g. 5m.
        #[arg(long, default_value = "5m", value_parser = duration::parse)]
        ttl: Duration,
        /// Data directory of `writ serve --dev`.
        #[arg(long, default_value = dev::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // Before anything touches jsonwebtoken: token signatures are verified with ring.
    writ::identity::crypto::install();
    let cli = Cli::parse();
    match cli.command {
        Command::Dev {
            command:
                DevCommand::Token {
                    sub,
                    aud,
                    ttl,
                    data_dir,
                },
        } => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            match dev::mint_token(&data_dir, &sub, &aud, ttl, now) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Admin {
            command:
                AdminCommand::Policy {
                    command:
                        PolicyCommand::Explain {
                            token,
                            logins,
                            hosts,
                            ttl,
                            task_ttl,
                            json,
                        },
                },
        } => {
            let request = explain::ExplainRequest {
                logins,
                hosts,
                cert_ttl: ttl,
                task_ttl,
            };
            policy_explain(cli.config.as_deref(), &token, &request, json)
        }
        Command::Admin {
            command: AdminCommand::Task { command },
        } => task_command(cli.config.as_deref(), command),
        Command::Admin {
            command: AdminCommand::Audit { command },
        } => admin::audit::run(cli.config.as_deref(), command),
        Command::Admin {
            command: AdminCommand::Ca { command, json },
        } => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let operator = std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "unknown".into());
            let command = command.into_library();
            match admin::ca::run(cli.config.as_deref(), command, &operator, json, now) {
                Ok(output) => {
                    print!("{output}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Cert { agent, key } => cert_command(&agent, &key),
        Command::Bench { command } => match writ::bench::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Ssh {
            agent,
            keep_task,
            ssh_options,
            command,
        } => {
            let token = match admin::read_token(&agent.token, &mut std::io::stdin()) {
                Ok(t) => t,
                Err(e) => return fail(&e),
            };
            let host = agent.hosts[0].clone();
            let login = agent.logins[0].clone();
            let ssh = writ::client::SshInvocation {
                login,
                host,
                options: ssh_options,
                command,
            };
            match writ::client::ssh(&agent.ca_url, &token, &ssh, &agent.request(), keep_task) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
                Err(e) => fail(&e),
            }
        }
        Command::Serve {
            dev,
            data_dir,
            listen,
        } => {
            writ::logging::init();
            let prepared = if dev {
                dev::prepare(&data_dir, listen)
                    .map(|(config, jwks)| (config, data_dir.join("(dev)"), Some(jwks)))
                    .map_err(|e| e.to_string())
            } else {
                match cli.config {
                    Some(path) => Config::load(&path)
                        .map(|c| (c, path, None))
                        .map_err(|e| e.to_string()),
                    None => Err(
                        "give --config FILE (or WRIT_CONFIG), or --dev for a local development CA"
                            .into(),
                    ),
                }
            };
            let (config, config_path, dev_jwks) = match prepared {
                Ok(p) => p,
                Err(e) => return fail(&e),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&e),
            };
            runtime.block_on(async move {
                let is_dev = dev_jwks.is_some();
                let state = match server::build(&config, &config_path, dev_jwks).await {
                    Ok(state) => state,
                    Err(e) => return fail(&e),
                };
                let listener = match server::bind(&config).await {
                    Ok(l) => l,
                    Err(e) => return fail(&e),
                };
                let addr = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                tracing::info!(%addr, "listening");
                if is_dev {
                    print_dev_banner(&addr, &data_dir);
                }
                let limits = config.server.limits();
                server::serve(listener, state, server::shutdown_signal(), limits).await;
                tracing::info!("stopped");
                ExitCode::SUCCESS
            })
        }
    }
}

/// `writ admin policy explain`.
fn policy_explain(
    config: Option<&std::path::Path>,
    token: &str,
    request: &explain::ExplainRequest,
    json: bool,
) -> ExitCode {
    let config = match admin::load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let token = match admin::read_token(token, &mut std::io::stdin().lock()) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let explanation = runtime.block_on(explain::explain(&config, &token, request, now));
    if json {
        match explanation.to_json() {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(&e),
        }
    } else {
        print!("{explanation}");
    }
    match explanation.outcome() {
        explain::Outcome::TokenRefused => ExitCode::FAILURE,
        explain::Outcome::Allowed | explain::Outcome::Denied => ExitCode::SUCCESS,
    }
}

fn cert_command(agent: &AgentArgs, key: &std::path::Path) -> ExitCode {
    let token = match admin::read_token(&agent.token, &mut std::io::stdin()) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let base = key.to_string_lossy().trim_end_matches(".pub").to_owned();
    let public_key = match std::fs::read_to_string(format!("{base}.pub")) {
        Ok(text) => text.trim().to_owned(),
        Err(e) => return fail(&format!("cannot read {base}.pub: {e}")),
    };
    match writ::client::open_task(&agent.ca_url, &token, &public_key, &agent.request()) {
        Ok(issued) => {
            let path = format!("{base}-cert.pub");
            if let Err(e) = std::fs::write(&path, format!("{}\n", issued.certificate)) {
                return fail(&format!("cannot write {path}: {e}"));
            }
            println!("task {}", issued.task_id);
            println!("serial {}", issued.serial);
            println!("certificate {path} (valid until {})", issued.valid_before);
            println!("principals {}", issued.principals.join(","));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn task_command(config: Option<&std::path::Path>, command: TaskCommand) -> ExitCode {
    let config = match writ::admin::load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (result, json) = runtime.block_on(async {
        match command {
            TaskCommand::Show { id, json } => {
                (writ::admin::task::show(&config, &id, now).await, json)
            }
            TaskCommand::Revoke { id, reason, json } => {
                let operator = std::env::var("SUDO_USER")
                    .or_else(|_| std::env::var("USER"))
                    .unwrap_or_else(|_| "unknown".into());
                (
                    writ::admin::task::revoke(&config, &id, &reason, &operator, now).await,
                    json,
                )
            }
        }
    });
    match result {
        Ok(report) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("writ: error: {error}");
    ExitCode::FAILURE
}

fn print_dev_banner(addr: &str, data_dir: &std::path::Path) {
    let dir = data_dir.display();
    eprintln!(
        r#"
==> writ is running in DEVELOPMENT mode on http://{addr}
    State lives in {dir}/ (SQLite database, CA passphrase, dev issuer key).
    The dev policy grants ANY login on ANY host: never use --dev in production.

    Get a certificate for a task (in another shell, same directory):

      ssh-keygen -q -t ed25519 -N '' -f agent_key
      TOKEN=$(writ dev token --sub agent-1)
      curl -s http://{addr}/v1/certificates \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{{\"public_key\": \"$(cat agent_key.pub)\",
             \"task\": {{\"logins\": [\"deploy\"], \"hosts\": [\"*.example.com\"],
                       \"ttl_seconds\": 900, \"purpose\": \"try writ\"}}}}"

    Hosts trust this CA with:  curl -s http://{addr}/v1/ca/trusted-keys
"#
    );
}
