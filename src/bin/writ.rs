//! `writ`: the CA server (`writ serve`), operator commands (`writ admin …`), the agent
//! side (`writ cert`, `writ ssh`, `writ task`), the development helpers (`writ dev …`) and
//! shell completions and the manual page. Parses arguments and calls the library; nothing
//! else. Everything printed on stdout goes through [`writ::cli`], so `writ … | head` ends
//! quietly instead of panicking.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use time::OffsetDateTime;
use writ::admin;
use writ::client::CaClient;
use writ::client::config::ClientConfig;
use writ::client::exit::{Exit, Failure};
use writ::client::token_source::{self, Token, TokenSource};
use writ::config::{Config, resolve_listen};
use writ::{dev, duration, server};

/// See Cargo.toml: measurably less CPU per certificate than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where `writ serve --dev` listens unless told otherwise.
const DEV_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8422);

const EXAMPLES: &str = "\
Examples:
  writ serve --dev                                   a local development CA
  writ serve --config /etc/writ/writ.toml            the CA
  writ check-config --config /etc/writ/writ.toml     check a configuration first
  writ dev token --sub agent-1 | writ cert --ca-url http://127.0.0.1:8422 --token - \\
      --login deploy --host web-01.example.com --key ~/.ssh/id_ed25519
  writ task complete TASK_ID --ca-url http://127.0.0.1:8422 --key ~/.ssh/id_ed25519
  writ ssh --token-source github-actions --login deploy --host web-01.example.com -- uptime
  writ admin --config writ.toml task show TASK_ID
  writ completions bash > /etc/bash_completion.d/writ

Environment: WRIT_CONFIG (for --config), WRIT_CA_URL (for --ca-url), WRIT_CA_BUNDLE
(for --ca-bundle), WRIT_CLIENT_CERT and WRIT_CLIENT_KEY (for --client-cert, --client-key),
WRIT_CLIENT_CONFIG (the agent commands' client config; default
~/.config/writ/client.toml). Agent commands exit 80 (no workload token), 81 (token
refused), 82 (policy denied), 83 (CA unreachable), 84 (host not trusted), 255 (ssh failed).
See `writ COMMAND --help`, and `writ man` for the manual page.";

/// An SSH certificate authority for AI agents and other workloads.
///
/// Agents prove who they are with a workload identity token (OIDC JWT), name the task
/// they are about to do, and get a minute-scale SSH certificate bound to that task.
#[derive(Parser)]
#[command(version, propagate_version = true, after_help = EXAMPLES)]
struct Cli {
    /// CA configuration file (TOML), for `serve`, `check-config` and `admin`; other
    /// commands refuse it.
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
    /// Prints the task id: end the task with `writ task complete ID --key KEY` when done.
    #[command(after_help = "\
Example:
  writ cert --ca-url https://ca.example.com --token @/var/run/secrets/writ/token \\
      --login deploy --host web-01.prod.example.com --key ~/.ssh/id_ed25519 \\
      --ttl 5m --task-ttl 30m --purpose 'rotate nginx logs'
  ssh deploy@web-01.prod.example.com            # uses ~/.ssh/id_ed25519-cert.pub")]
    Cert {
        #[command(flatten)]
        agent: AgentArgs,
        /// Private or public key file to certify (e.g. ~/.ssh/id_ed25519).
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
        /// Also write the CA's `@cert-authority` known-hosts lines to PATH, for ssh's
        /// `UserKnownHostsFile=PATH` with `StrictHostKeyChecking=yes` (hosts verified by
        /// their host certificates, never on first use).
        #[arg(long, value_name = "PATH")]
        known_hosts: Option<PathBuf>,
    },
    /// Open a task, ssh to the host with a fresh key and certificate, then complete the
    /// task so the certificate stops working everywhere. The key is made in memory and
    /// lives only in an ssh-agent; the certificate is renewed while the session lasts.
    #[command(after_help = "\
Example:
  writ ssh --ca-url https://ca.example.com --token @/var/run/token \\
      --login deploy --host web-01.prod.example.com -- uptime")]
    Ssh {
        #[command(flatten)]
        agent: AgentArgs,
        /// Keep the task open after ssh exits (until it expires).
        #[arg(long)]
        keep_task: bool,
        /// Accept whatever host key the host presents (remembered for this session only)
        /// instead of requiring a host certificate from the CA: a man in the middle would
        /// get the session. Only for hosts not yet enrolled (README "Host certificates").
        #[arg(long)]
        insecure_trust_on_first_use: bool,
        /// Put the session's key and certificate into your ssh-agent (SSH_AUTH_SOCK), with
        /// a lifetime equal to the certificate's validity, and take them out afterwards.
        /// Default: a private ssh-agent started for this session only. Either way the
        /// private key is never written to disk.
        #[arg(long)]
        use_agent: bool,
        /// An ssh option, before the host (repeat), e.g. --ssh-arg=-p --ssh-arg=2222.
        #[arg(long = "ssh-arg", value_name = "ARG", allow_hyphen_values = true)]
        ssh_options: Vec<String>,
        /// Remote command (after --).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Serve the Model Context Protocol on stdin/stdout (or --http on loopback): SSH
    /// access for an agent, one task at a time (tools open_task, run, task_status,
    /// complete_task, list_tasks).
    ///
    /// Each task gets a key made in memory for it; the model sees task ids, never a token,
    /// key or certificate. Hosts are verified by the CA's host certificates. When the
    /// session ends (stdin closes, SIGTERM, Ctrl-C; with --http the client's DELETE or
    /// --http-idle) every task it opened is completed.
    #[command(after_help = "\
MCP client configuration (e.g. an agent host's mcpServers):
  {\"writ\": {\"command\": \"writ\", \"args\": [\"mcp\", \"--ca-url\", \"https://ca.example.com\",
            \"--token\", \"@/var/run/secrets/writ/token\", \"--allowed-hosts\", \"*.staging.example.com\"]}}
Over HTTP:
  writ mcp --http 127.0.0.1:8765 --http-key-file ~/.config/writ/mcp.key --token-source file:/run/token
  then {\"writ\": {\"type\": \"http\", \"url\": \"http://127.0.0.1:8765/mcp\",
                  \"headers\": {\"Authorization\": \"Bearer <the key in that file>\"}}}")]
    Mcp {
        /// The CA's base URL (default: ca_url of the client config).
        #[arg(long, env = "WRIT_CA_URL", value_name = "URL")]
        ca_url: Option<String>,
        /// A fresh token is fetched for every task (`--token @FILE` is read again each time);
        /// `--token -` is refused: it reads one token once (and over stdio, stdin carries
        /// the protocol).
        #[command(flatten)]
        credential: TokenArgs,
        /// Host patterns tasks may name (repeat or comma-separate), narrower than the policy.
        #[arg(long = "allowed-hosts", value_delimiter = ',', value_name = "PATTERN")]
        allowed_hosts: Vec<String>,
        /// Longest task the agent may open, e.g. 30m (narrower than the policy).
        #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
        max_task_ttl: Option<Duration>,
        /// The ssh_config `run` uses (ssh -F FILE): HostName, Port, ProxyJump, HostKeyAlias
        /// for the agent's hosts (default: ssh's own ~/.ssh/config and /etc/ssh/ssh_config).
        #[arg(long, value_name = "FILE")]
        ssh_config: Option<PathBuf>,
        /// Serve MCP over streamable HTTP at http://ADDR/mcp instead of stdin/stdout.
        /// ADDR must be loopback (127.0.0.1:PORT, [::1]:PORT; port 0 picks one, printed
        /// on stderr). Each MCP session has its own tasks, completed when it ends.
        #[arg(long, value_name = "ADDR", requires = "http_key_file")]
        http: Option<SocketAddr>,
        /// With --http: the file holding the key clients send as `Authorization: Bearer
        /// KEY`; made (random, mode 0600) if it does not exist, else it must be
        /// owner-only.
        #[arg(long, value_name = "FILE", requires = "http")]
        http_key_file: Option<PathBuf>,
        /// With --http: a session without a request for this long ends, and its tasks
        /// are completed.
        #[arg(long, value_parser = duration::parse, default_value = "30m", value_name = "DURATION")]
        http_idle: Duration,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Show or complete your task at the CA (agents; authenticated by the certificate's
    /// key, or a fresh workload token).
    Task {
        #[command(subcommand)]
        command: AgentTaskCommand,
    },
    /// Run the CA.
    ///
    /// With --config, serves that configuration; --listen overrides its [server] listen.
    /// With [server] tls_cert and tls_key it serves HTTPS (TLS 1.2/1.3; tls_client_ca
    /// for mutual TLS); SIGHUP, or a change of either file, reloads the certificate
    /// without dropping connections.
    /// With --dev, runs like `vault server -dev`: state under ./writ-data (SQLite, a
    /// generated CA key and passphrase), a built-in development token issuer and a
    /// permissive policy; WRIT_CONFIG is ignored. Never use --dev in production.
    ///
    /// Logs go to stderr, as text or one JSON object per line ([server] log_format),
    /// filtered by WRIT_LOG. GET /metrics (Prometheus) is served on the listen address,
    /// or only on [server] metrics_listen when set; GET /readyz says whether the CA can
    /// issue now. Every response carries X-Request-Id, the request_id of its audit
    /// records.
    #[command(after_help = "\
Examples:
  writ serve --dev
  writ serve --config /etc/writ/writ.toml
  writ serve --config /etc/writ/writ.toml --listen localhost:9000")]
    Serve {
        /// Development mode (see above).
        #[arg(long)]
        dev: bool,
        /// Data directory for --dev.
        #[arg(long, default_value = dev::DEFAULT_DATA_DIR, requires = "dev", value_name = "DIR")]
        data_dir: PathBuf,
        /// Listen address, IP:PORT or HOST:PORT (default: the configuration's [server]
        /// listen; 127.0.0.1:8422 with --dev). A non-loopback address needs TLS
        /// ([server] tls_cert, tls_key) or [server] allow_plaintext = true; --dev is
        /// loopback only.
        #[arg(long, value_name = "ADDR", value_parser = resolve_listen)]
        listen: Option<SocketAddr>,
    },
    /// Check a CA configuration before serving it: validate it as `writ serve` does,
    /// resolve its issuers' keys, show each policy's effective grant, warn on risky
    /// patterns.
    ///
    /// Exit status 0 when the file is valid (warnings do not change it), 1 when it is not,
    /// with the error naming the file and the key. Issuer keys that cannot be fetched or
    /// read, and a CA passphrase that is not available here, are warnings: both are often
    /// reachable only from the CA host (--offline skips them). Risky patterns: host
    /// patterns that pin no domain (`*`, `*.com`), `root` or templated logins without
    /// claim constraints, a subject matching everyone without claims, lifetimes above the
    /// recommendations (certificates 15m, tasks 8h, tokens 1h), `replay = "allow"` with
    /// tokens living over 10m, and plain HTTP on a non-loopback address.
    #[command(after_help = "\
Examples:
  writ check-config --config /etc/writ/writ.toml
  writ check-config --config writ.toml --offline --json | jq '.warnings[].code'
  writ admin default-config > writ.toml && writ check-config --config writ.toml")]
    CheckConfig {
        #[command(flatten)]
        args: admin::check::CheckConfigArgs,
    },
    /// Operator commands on a CA configuration (give --config FILE or WRIT_CONFIG).
    #[command(after_help = "\
Examples:
  writ admin --config writ.toml ca list
  writ admin --config writ.toml task show TASK_ID
  writ admin --config writ.toml task revoke TASK_ID --reason 'key leaked'
  writ admin --config writ.toml audit verify
  writ admin --config writ.toml store migrate
  writ admin --config writ.toml store copy --to postgres://writ@db/writ --password-file db.pass
  writ admin --config writ.toml policy explain --token @token --logins deploy --hosts web-01
  writ admin default-config > writ.toml")]
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
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
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    #[command(after_help = "\
Examples:
  writ completions bash > /etc/bash_completion.d/writ
  writ completions zsh > \"${fpath[1]}/_writ\"
  writ completions fish > ~/.config/fish/completions/writ.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page writ(1) (roff), or write one page per command with --dir.
    #[command(after_help = "\
Examples:
  writ man | man -l -
  writ man --dir /usr/local/share/man/man1")]
    Man {
        /// Write writ.1, writ-serve.1, writ-admin-ca-list.1, … into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `writ task show|complete`.
#[derive(Subcommand)]
enum AgentTaskCommand {
    /// Show a task: state, logins, hosts, expiry and certificates.
    #[command(after_help = "\
Examples:
  writ task show TASK_ID --ca-url https://ca.example.com --key ~/.ssh/id_ed25519
  writ task show TASK_ID --ca-url https://ca.example.com --token @/var/run/token --json")]
    Show {
        #[command(flatten)]
        call: TaskCall,
    },
    /// Complete a task: every certificate of the task stops working at once, on every
    /// host (audited as task.completed).
    #[command(after_help = "\
Example:
  writ task complete TASK_ID --ca-url https://ca.example.com --key ~/.ssh/id_ed25519")]
    Complete {
        #[command(flatten)]
        call: TaskCall,
    },
}

/// Which task, at which CA, and how to prove it is ours.
#[derive(clap::Args)]
struct TaskCall {
    /// Task id (`writ cert` prints it).
    #[arg(value_name = "ID")]
    id: String,
    /// The CA's base URL (default: ca_url of the client config).
    #[arg(long, env = "WRIT_CA_URL", value_name = "URL")]
    ca_url: Option<String>,
    /// Prove possession with this private key, the one `writ cert --key` certified; its
    /// certificate is <key>-cert.pub. Works while the certificate is valid and the task
    /// active. Without it, a fresh workload token is used (--token, --token-source, or
    /// found as --token-source says).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["token", "token_source"])]
    key: Option<PathBuf>,
    /// The certificate of --key, if not at <key>-cert.pub.
    #[arg(long = "cert", value_name = "PATH", requires = "key")]
    certificate: Option<PathBuf>,
    #[command(flatten)]
    credential: TokenArgs,
    /// Print the task as JSON (the CA's answer).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Where an agent's workload token comes from.
#[derive(clap::Args)]
struct TokenArgs {
    /// Workload token: `-` reads stdin, `@FILE` a file, else the token itself (visible to
    /// other local users in the process list: prefer --token-source).
    #[arg(long, value_name = "TOKEN|-|@FILE", conflicts_with = "token_source")]
    token: Option<String>,
    /// Where to get a fresh workload token: file:PATH (read on every use, as Kubernetes
    /// rotates projected tokens), env:VAR, github-actions[:AUDIENCE] (the job's OIDC token,
    /// audience `writ` by default; needs `permissions: id-token: write`), command:CMD (its
    /// stdout; 10 s at most) or dev (the issuer of `writ serve --dev`, key in ./writ-data).
    /// Default: token_source of the client config, else
    /// file:/var/run/secrets/writ/token if it exists (kubernetes_token_path in the client
    /// config), else github-actions when ACTIONS_ID_TOKEN_REQUEST_URL and
    /// ACTIONS_ID_TOKEN_REQUEST_TOKEN are set.
    #[arg(long, value_name = "SPEC")]
    token_source: Option<String>,
}

impl TokenArgs {
    /// The workload token and what it came from (named in messages, never the token).
    fn resolve(&self, config: &ClientConfig) -> Result<(Token, String), Exit> {
        let source = match &self.token_source {
            Some(spec) => Some(spec.parse::<TokenSource>()?),
            None => None,
        };
        let env = &token_source::process_environment;
        Ok(token_source::resolve(
            self.token.as_deref(),
            source.as_ref(),
            &config.discovery(env),
            env,
            &mut std::io::stdin(),
        )?)
    }
}

/// How an agent trusts an https:// CA (and proves itself to one with mutual TLS).
#[derive(clap::Args)]
struct TlsArgs {
    /// PEM file of the CA certificate(s) the CA's TLS certificate must chain to (default:
    /// the system's trust store). A CA whose certificate does not chain to it is refused.
    #[arg(long, env = "WRIT_CA_BUNDLE", value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// PEM client certificate (chain) to present to a CA that requires one (mutual TLS,
    /// its [server] tls_client_ca); needs --client-key.
    #[arg(
        long,
        env = "WRIT_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "WRIT_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The client config, and the CA at `ca_url` (else the config's `ca_url`), trusted as
    /// these options say (each unset one taken from the config).
    fn ca(&self, ca_url: Option<&str>) -> Result<(ClientConfig, CaClient), Exit> {
        let env = &token_source::process_environment;
        let config = writ::client::config::load(env)?;
        let url = config.ca_url(ca_url, env)?;
        let options = writ::client::TlsOptions {
            ca_bundle: self.ca_bundle.clone().or_else(|| config.ca_bundle.clone()),
            client_cert: self
                .client_cert
                .clone()
                .or_else(|| config.client_cert.clone()),
            client_key: self
                .client_key
                .clone()
                .or_else(|| config.client_key.clone()),
        };
        let ca = CaClient::new(&url, &options).map_err(|e| Exit::from_client(&e, None))?;
        Ok((config, ca))
    }
}

/// What an agent asks for.
#[derive(clap::Args)]
struct AgentArgs {
    /// The CA's base URL (default: ca_url of the client config).
    #[arg(long, env = "WRIT_CA_URL", value_name = "URL")]
    ca_url: Option<String>,
    #[command(flatten)]
    credential: TokenArgs,
    /// Login for the task (repeat or comma-separate for several; default: login of the
    /// client config).
    #[arg(long = "login", value_delimiter = ',', value_name = "LOGIN")]
    logins: Vec<String>,
    /// Host (pattern) for the task (repeat or comma-separate); `writ ssh` connects to the first.
    #[arg(
        long = "host",
        value_delimiter = ',',
        required = true,
        value_name = "HOST"
    )]
    hosts: Vec<String>,
    /// Lifetime of this certificate, e.g. 5m (default: ttl of the client config, else the
    /// CA's default_cert_ttl).
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    ttl: Option<Duration>,
    /// Lifetime of the task, e.g. 30m: once it ends, every certificate of the task stops
    /// working, however long it was issued for (default: task_ttl of the client config,
    /// else the CA's default_task_ttl).
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    task_ttl: Option<Duration>,
    /// What the task is for (recorded in the audit log).
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        value_name = "TEXT"
    )]
    purpose: String,
    #[command(flatten)]
    tls: TlsArgs,
}

impl AgentArgs {
    /// The task asked for: these flags, with the client config's defaults for the unset.
    fn request(&self, config: &ClientConfig) -> Result<writ::client::TaskRequest, Exit> {
        let logins = match (&self.logins[..], &config.login) {
            ([], Some(login)) => vec![login.clone()],
            ([], None) => {
                return Err(Exit {
                    failure: Failure::Other,
                    message: "give --login LOGIN (or login in the client config)".into(),
                });
            }
            (logins, _) => logins.to_vec(),
        };
        Ok(writ::client::TaskRequest {
            logins,
            hosts: self.hosts.clone(),
            task_ttl: self.task_ttl.or(config.task_ttl),
            cert_ttl: self.ttl.or(config.ttl),
            purpose: self.purpose.clone(),
        })
    }
}

#[derive(Subcommand)]
enum DevCommand {
    /// Print a workload token from the development issuer of `writ serve --dev`.
    #[command(after_help = "\
Example (same directory as `writ serve --dev`):
  writ dev token --sub agent-1 | writ cert --ca-url http://127.0.0.1:8422 --token - \\
      --login deploy --host web-01.example.com --key ./agent_key")]
    Token {
        /// Subject (`sub`) of the token, e.g. agent-1.
        #[arg(long, value_name = "NAME")]
        sub: String,
        /// Audience (`aud`).
        #[arg(long, default_value = "writ", value_name = "AUD")]
        aud: String,
        /// Lifetime, e.g. 5m.
        #[arg(long, default_value = "5m", value_parser = duration::parse, value_name = "DURATION")]
        ttl: Duration,
        /// Data directory of `writ serve --dev`.
        #[arg(long, default_value = dev::DEFAULT_DATA_DIR, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

/// `--config`, and whether it was typed on this command line (rather than WRIT_CONFIG).
struct ConfigArg {
    path: Option<PathBuf>,
    typed: bool,
}

impl ConfigArg {
    /// Refuse a typed --config for a command that reads no CA configuration; WRIT_CONFIG
    /// in the environment is ignored there.
    fn refuse(&self, command: &str, instead: &str) -> Result<(), ExitCode> {
        if self.typed {
            return Err(fail(&format!(
                "`writ {command}` reads no CA configuration ({instead}): drop --config"
            )));
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    // Before anything touches jsonwebtoken: token signatures are verified with ring.
    writ::identity::crypto::install();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config = ConfigArg {
        path: cli.config,
        typed: matches.value_source("config") == Some(ValueSource::CommandLine),
    };
    let over_http = "it talks to the CA at --ca-url";
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
            if let Err(code) = config.refuse("dev token", "it reads --data-dir") {
                return code;
            }
            let now = OffsetDateTime::now_utc().unix_timestamp();
            match dev::mint_token(&data_dir, &sub, &aud, ttl, now) {
                Ok(token) => print_then(&format!("{}\n", token.as_str()), ExitCode::SUCCESS),
                Err(e) => fail(&e),
            }
        }
        Command::CheckConfig { args } => match admin::check::main(config.path.as_deref(), &args) {
            Ok(status) => status.into(),
            Err(e) => fail(&e),
        },
        Command::Admin { command } => match admin::main(config.path.as_deref(), command) {
            Ok(status) => status.into(),
            Err(e) => fail(&e),
        },
        Command::Cert {
            agent,
            key,
            known_hosts,
        } => match config.refuse("cert", over_http) {
            Ok(()) => cert_command(&agent, &key, known_hosts.as_deref()),
            Err(code) => code,
        },
        Command::Task { command } => match config.refuse("task", over_http) {
            Ok(()) => agent_task_command(command),
            Err(code) => code,
        },
        Command::Bench { command } => {
            if let Err(code) = config.refuse("bench", "it starts its own CA or drives --target") {
                return code;
            }
            match writ::bench::run(command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "writ", &mut script);
            print_then(&String::from_utf8_lossy(&script), ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => match clap_mangen::generate_to(Cli::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!(
                "cannot write manual pages to {}: {e}",
                dir.display()
            )),
        },
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => print_then(&String::from_utf8_lossy(&page), ExitCode::SUCCESS),
                Err(e) => fail(&e),
            }
        }
        Command::Mcp {
            ca_url,
            credential,
            allowed_hosts,
            max_task_ttl,
            ssh_config,
            http,
            http_key_file,
            http_idle,
            tls,
        } => {
            if let Err(code) = config.refuse("mcp", over_http) {
                return code;
            }
            let limits = writ::mcp::Limits {
                allowed_hosts,
                max_task_ttl,
                // Included from a file in another directory: made absolute here.
                ssh_config: ssh_config.map(|p| std::path::absolute(&p).unwrap_or(p)),
            };
            let transport = match (http, http_key_file) {
                (Some(listen), Some(key_file)) => McpTransport::Http {
                    listen,
                    key_file,
                    idle: http_idle,
                },
                _ => McpTransport::Stdio,
            };
            match mcp_command(ca_url.as_deref(), &credential, limits, &tls, transport) {
                Ok(code) => code,
                Err(exit) => fail_with(&exit),
            }
        }
        Command::Ssh {
            agent,
            keep_task,
            insecure_trust_on_first_use,
            use_agent,
            ssh_options,
            command,
        } => {
            if let Err(code) = config.refuse("ssh", over_http) {
                return code;
            }
            let ssh = writ::client::SshInvocation {
                login: agent.logins.first().cloned().unwrap_or_default(),
                host: agent.hosts[0].clone(),
                options: ssh_options,
                command,
            };
            let host_trust = if insecure_trust_on_first_use {
                writ::client::HostTrust::TrustOnFirstUse
            } else {
                writ::client::HostTrust::CertificateAuthority
            };
            let key_agent = if use_agent {
                writ::client::AgentChoice::User
            } else {
                writ::client::AgentChoice::Private
            };
            match ssh_command(&agent, ssh, keep_task, host_trust, key_agent) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
                Err(exit) => fail_with(&exit),
            }
        }
        Command::Serve {
            dev,
            data_dir,
            listen,
        } => serve(config, dev, &data_dir, listen),
    }
}

/// `writ serve`.
fn serve(config: ConfigArg, dev: bool, data_dir: &Path, listen: Option<SocketAddr>) -> ExitCode {
    let prepared = if dev {
        if config.typed {
            return fail(
                &"--dev serves its own configuration from --data-dir: drop --config FILE \
                  (or drop --dev to serve FILE)",
            );
        }
        if config.path.is_some() {
            eprintln!("writ: --dev: ignoring WRIT_CONFIG");
        }
        let config_path = data_dir.join("(dev)");
        dev::prepare(data_dir, listen.unwrap_or(DEV_LISTEN))
            .map_err(|e| e.to_string())
            .and_then(|(config, jwks)| {
                // The plain-HTTP rule holds for --dev --listen too (dev serves no TLS).
                config
                    .validate(&config_path)
                    .map_err(|e| format!("--dev: {e}"))?;
                Ok((config, config_path, Some(jwks)))
            })
    } else {
        match config.path {
            Some(path) => load_serving(&path, listen).map(|c| (c, path, None)),
            None => Err(
                "give --config FILE (or WRIT_CONFIG), or --dev for a local development CA".into(),
            ),
        }
    };
    let (config, config_path, dev_jwks) = match prepared {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    writ::logging::init(config.server.log_format);
    let runtime = match writ::cli::server_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    runtime.block_on(async move {
        let is_dev = dev_jwks.is_some();
        let state = match server::build(&config, &config_path, dev_jwks).await {
            Ok(state) => state,
            Err(e) => return fail(&e),
        };
        let listeners = match server::bind(&config).await {
            Ok(l) => l,
            Err(e) => return fail(&e),
        };
        let address = |a: std::io::Result<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let addr = address(listeners.api.local_addr());
        tracing::info!(%addr, "listening");
        if let Some(metrics) = &listeners.metrics {
            tracing::info!(addr = %address(metrics.local_addr()), "metrics listening");
        }
        if is_dev {
            print_dev_banner(&addr, data_dir);
        }
        let limits = config.connection_limits();
        server::serve(listeners, state, server::shutdown_signal(), limits).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// The configuration at `path`, with `--listen` (if given) in place of `[server] listen`
/// and validated again (the loopback rule applies to the override too).
fn load_serving(path: &Path, listen: Option<SocketAddr>) -> Result<Config, String> {
    let mut config = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(addr) = listen {
        config.server.listen = addr;
        config
            .validate(path)
            .map_err(|e| format!("--listen {addr}: {e}"))?;
    }
    Ok(config)
}

/// `writ ssh`: the remote command's exit code.
fn ssh_command(
    agent: &AgentArgs,
    mut ssh: writ::client::SshInvocation,
    keep_task: bool,
    host_trust: writ::client::HostTrust,
    key_agent: writ::client::AgentChoice,
) -> Result<i32, Exit> {
    let (config, ca) = agent.tls.ca(agent.ca_url.as_deref())?;
    let request = agent.request(&config)?;
    ssh.login = request.logins[0].clone();
    let (token, from) = agent.credential.resolve(&config)?;
    writ::client::ssh(
        &ca, &token, &ssh, &request, keep_task, host_trust, key_agent,
    )
    .map_err(|e| Exit::from_client(&e, Some(&from)))
}

fn cert_command(agent: &AgentArgs, key: &Path, known_hosts: Option<&Path>) -> ExitCode {
    match certify(agent, key, known_hosts) {
        Ok(text) => print_then(&text, ExitCode::SUCCESS),
        Err(exit) => fail_with(&exit),
    }
}

/// `writ cert`: what it prints.
fn certify(agent: &AgentArgs, key: &Path, known_hosts: Option<&Path>) -> Result<String, Exit> {
    let other = |message: String| Exit {
        failure: Failure::Other,
        message,
    };
    let (config, ca) = agent.tls.ca(agent.ca_url.as_deref())?;
    let request = agent.request(&config)?;
    let base = key.to_string_lossy().trim_end_matches(".pub").to_owned();
    let public_key = match std::fs::read_to_string(format!("{base}.pub")) {
        Ok(text) => text.trim().to_owned(),
        Err(e) => return Err(other(format!("cannot read {base}.pub: {e}"))),
    };
    let (token, from) = agent.credential.resolve(&config)?;
    let client_error = |e: writ::client::ClientError| Exit::from_client(&e, Some(&from));
    // Fetched before the task is opened, so a CA without host keys leaves no task behind.
    if let Some(path) = known_hosts {
        let lines = writ::client::known_hosts::fetch(&ca).map_err(client_error)?;
        writ::client::known_hosts::write(path, lines.as_bytes(), false).map_err(client_error)?;
    }
    let issued =
        writ::client::open_task(&ca, &token, &public_key, &request).map_err(client_error)?;
    let path = format!("{base}-cert.pub");
    std::fs::write(&path, format!("{}\n", issued.certificate))
        .map_err(|e| other(format!("cannot write {path}: {e}")))?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "writ: when done: writ task complete {} --ca-url {} --key {base}",
            issued.task_id,
            ca.url()
        );
    }
    let mut summary = format!(
        "task {}\nserial {}\ncertificate {path} (valid until {})\nprincipals {}\n",
        issued.task_id,
        issued.serial,
        issued.valid_before,
        issued.principals.join(",")
    );
    if let Some(known_hosts) = known_hosts {
        summary.push_str(&format!(
            "known_hosts {} (ssh -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes)\n",
            known_hosts.display(),
            known_hosts.display()
        ));
    }
    Ok(summary)
}

/// How `writ mcp` is reached.
enum McpTransport {
    /// stdin/stdout, one session.
    Stdio,
    /// `--http`: streamable HTTP on a loopback address, a bearer key in `key_file`.
    Http {
        listen: SocketAddr,
        key_file: PathBuf,
        idle: Duration,
    },
}

/// `writ mcp`: where tokens come from (one fresh token per task), then the server.
fn mcp_command(
    ca_url: Option<&str>,
    credential: &TokenArgs,
    limits: writ::mcp::Limits,
    tls: &TlsArgs,
    transport: McpTransport,
) -> Result<ExitCode, Exit> {
    let other = |message: String| Exit {
        failure: Failure::Other,
        message,
    };
    if let McpTransport::Http { listen, .. } = &transport {
        writ::mcp::http::check_listen(listen).map_err(|e| other(format!("writ mcp: {e}")))?;
    }
    let (config, ca) = tls.ca(ca_url)?;
    let env = &token_source::process_environment;
    let source = match (&credential.token, &credential.token_source) {
        (Some(token), _) if token == "-" => {
            return Err(other(
                "writ mcp: --token - is not possible (it reads one token once; every task needs \
                 a fresh one, and over stdio stdin carries MCP): use --token-source or --token @FILE"
                    .to_owned(),
            ));
        }
        (Some(token), _) => match token.strip_prefix('@') {
            Some(path) => TokenSource::File(PathBuf::from(path)),
            None => {
                return Err(other(
                    "writ mcp opens a task per tool call and needs a fresh token for each: \
                     use --token @FILE or --token-source, not a literal token"
                        .to_owned(),
                ));
            }
        },
        (None, Some(spec)) => spec.parse::<TokenSource>()?,
        (None, None) => token_source::discover(&config.discovery(env), env)?,
    };
    writ::logging::init(writ::config::LogFormat::Text);
    let tokens: writ::mcp::TokenFetcher = std::sync::Arc::new(move || {
        source
            .fetch(&token_source::process_environment)
            .map(|token| token.to_string())
            .map_err(|e| writ::client::ClientError::BadAnswer(e.to_string()))
    });
    let server = writ::mcp::WritMcp::new(ca, tokens, limits);
    let runtime = writ::cli::runtime().map_err(|e| other(e.to_string()))?;
    let served = match transport {
        McpTransport::Stdio => runtime.block_on(writ::mcp::serve_stdio(server)),
        McpTransport::Http {
            listen,
            key_file,
            idle,
        } => {
            let (key, made) = writ::mcp::http::load_or_create_key(&key_file)
                .map_err(|e| other(format!("writ mcp: {e}")))?;
            if made {
                eprintln!(
                    "writ mcp: made a new key in {} (mode 0600)",
                    key_file.display()
                );
            }
            let options = writ::mcp::http::HttpOptions { listen, key, idle };
            let ready = |bound: SocketAddr| {
                eprintln!(
                    "writ mcp: serving MCP at http://{bound}{}; clients send \
                     Authorization: Bearer <the key in {}>",
                    writ::mcp::http::PATH,
                    key_file.display()
                );
            };
            runtime.block_on(writ::mcp::http::serve_http(server, options, ready))
        }
    };
    // Every task is completed by now; a read of stdin still blocked on its thread (the
    // client keeps stdin open after a SIGTERM) must not keep the process alive.
    runtime.shutdown_background();
    served
        .map(|()| ExitCode::SUCCESS)
        .map_err(|e| other(format!("writ mcp: {e}")))
}

/// `writ task show|complete` (the agent's side, over HTTP).
fn agent_task_command(command: AgentTaskCommand) -> ExitCode {
    let (call, complete) = match command {
        AgentTaskCommand::Show { call } => (call, false),
        AgentTaskCommand::Complete { call } => (call, true),
    };
    match task_call(&call, complete) {
        Ok(text) => print_then(&text, ExitCode::SUCCESS),
        Err(exit) => fail_with(&exit),
    }
}

/// `writ task show|complete`: what it prints.
fn task_call(call: &TaskCall, complete: bool) -> Result<String, Exit> {
    let (config, ca) = call.tls.ca(call.ca_url.as_deref())?;
    let token;
    let possession;
    let mut token_from = None;
    let credential = match &call.key {
        Some(key) => {
            possession = writ::client::load_possession(key, call.certificate.as_deref(), &call.id)
                .map_err(|e| Exit::from_client(&e, None))?;
            writ::client::Credential::Possession {
                certificate: &possession.0,
                key: &possession.1,
            }
        }
        None => {
            let (resolved, from) = call.credential.resolve(&config).map_err(|mut exit| {
                if exit.failure == Failure::NoToken {
                    exit.message
                        .push_str("; or --key PATH, the key `writ cert` certified");
                }
                exit
            })?;
            token = resolved;
            token_from = Some(from);
            writ::client::Credential::Token(&token)
        }
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let answer = if complete {
        writ::client::finish_task(&ca, &call.id, &credential, now)
    } else {
        writ::client::task_status(&ca, &call.id, &credential, now)
    };
    let task = answer.map_err(|e| Exit::from_client(&e, token_from.as_deref()))?;
    Ok(if call.json {
        let text = serde_json::to_string_pretty(&task).unwrap_or_default();
        format!("{text}\n")
    } else {
        writ::client::describe_task(&task, now)
    })
}

/// Print `text` on stdout, then exit with `code`. A reader that went away (`| head`) is a
/// quiet, normal end; only other write errors fail.
fn print_then(text: &str, code: ExitCode) -> ExitCode {
    match writ::cli::print(text) {
        Ok(()) => code,
        Err(e) => fail(&format!("cannot write the output: {e}")),
    }
}

/// An agent command's failure: its one-line message, and its own exit status
/// ([`writ::client::exit`]).
fn fail_with(exit: &Exit) -> ExitCode {
    eprintln!("writ: error: {}", exit.message);
    ExitCode::from(exit.failure.code())
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
      writ dev token --sub agent-1 | writ cert --ca-url http://{addr} --token - \
        --login deploy --host web-01.example.com --key agent_key --purpose 'try writ'
      ssh-keygen -L -f agent_key-cert.pub
      writ task complete TASK_ID --ca-url http://{addr} --key agent_key   # when done

    Or over HTTP: POST http://{addr}/v1/certificates (README, "Quickstart").
    Hosts trust this CA with:  curl -s http://{addr}/v1/ca/trusted-keys
"#
    );
}
