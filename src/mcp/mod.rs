//! `writ mcp`: an MCP server over stdio (rmcp) through which an agent asks for SSH access
//! one task at a time: `open_task`, `run`, `task_status`, `complete_task`, `list_tasks`.
//! Each result is text for the model and the same as JSON `structuredContent` (with an
//! `outputSchema`) for programs.
//!
//! Every `run` is recorded at the CA with its task (`task.run`: host, login, command,
//! purpose) before ssh starts; what the CA does not record does not run.
//!
//! It owns the session's tasks: each has a key made in memory for it, and the certificate
//! the CA issued for that key, renewed before a `run` once two thirds of its life have
//! passed. The keys live in a private ssh-agent started with the first task
//! ([`client::agent`]), never in a file. When the session ends (stdin closes, SIGTERM, SIGINT) every
//! task it opened and did not complete is completed. What it must never do: put a token,
//! a private key or a certificate into a tool result or a log line, let the model ask for
//! more than `--allowed-hosts`/`--max-task-ttl` allow (the CA's policy still decides the
//! rest), or prompt (ssh runs with `BatchMode=yes`).

pub mod http;
pub mod runner;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::schemars::{self, JsonSchema};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use ssh_key::PrivateKey;

use crate::client::agent::Agent;
use crate::client::{
    self, CaClient, ClientError, Credential, HeldCertificate, PrivateDir, SshInvocation,
    TaskRequest,
};

/// Where tokens come from: called once per task, so a rotated token is picked up.
pub type TokenFetcher = Arc<dyn Fn() -> Result<String, ClientError> + Send + Sync>;

/// How the server narrows what the model may ask for, and how it runs ssh.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Host patterns a task may name (globs); empty: whatever the policy allows.
    pub allowed_hosts: Vec<String>,
    /// Longest task; `None`: the CA's default and maximum.
    pub max_task_ttl: Option<Duration>,
    /// The ssh_config `run` includes after writ's options; `None`: ssh's own
    /// (`~/.ssh/config` of the user, by the password database, and `/etc/ssh/ssh_config`).
    pub ssh_config: Option<std::path::PathBuf>,
}

/// A certificate proves possession for a renewal only while it has at least this much
/// life left (the request's time on the wire and clock skew); after that, a token renews.
const POSSESSION_MARGIN_SECONDS: i64 = 2;

/// Default `run` deadline and output bound.
const DEFAULT_TIMEOUT_SECONDS: u64 = 60;
const MAX_TIMEOUT_SECONDS: u64 = 3600;
const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;
const MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// One task of this session.
struct SessionTask {
    key: PrivateKey,
    held: HeldCertificate,
    logins: Vec<String>,
    hosts: Vec<String>,
    expires_at: String,
    purpose: String,
    /// How it ended as far as this session knows (`completed`, `revoked`, `expired`);
    /// `None` while it is open. Once set, its key is out of the agent.
    ended: Option<String>,
}

/// The MCP server.
#[derive(Clone)]
pub struct WritMcp {
    ca: Arc<CaClient>,
    tokens: TokenFetcher,
    limits: Limits,
    tasks: Arc<Mutex<BTreeMap<String, SessionTask>>>,
    keys: Arc<Mutex<Option<Keys>>>,
    /// Held while the session's tasks are being completed, so two endings (the session's
    /// own and the server's shutdown) never complete the same task twice.
    completing: Arc<tokio::sync::Mutex<()>>,
    /// For a session of `--http`: its tasks are completed when the last handle goes
    /// (held, never read).
    _life: Option<Arc<SessionLife>>,
    tool_router: ToolRouter<WritMcp>,
}

/// Sessions of one `--http` server: each session's tasks are completed when the session
/// ends (the client's DELETE, the idle timeout), and every session's at shutdown.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<SessionsInner>>,
}

#[derive(Default)]
struct SessionsInner {
    live: Vec<Weak<SessionLife>>,
    ending: Vec<tokio::task::JoinHandle<usize>>,
}

/// Ends a session: dropped with the session's last handle, it completes the session's
/// open tasks on the runtime and leaves the work for [`Sessions::end_all`] to wait on.
struct SessionLife {
    core: WritMcp,
    sessions: Sessions,
}

impl Drop for SessionLife {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let core = self.core.clone();
        let ending = runtime.spawn(async move { core.complete_all().await });
        let mut inner = self.sessions.inner.lock().expect("sessions");
        inner.ending.retain(|handle| !handle.is_finished());
        inner.ending.push(ending);
    }
}

impl Sessions {
    /// A new session of `template`'s server: no tasks, its own agent.
    pub fn open(&self, template: &WritMcp) -> WritMcp {
        let core = template.fresh();
        let life = Arc::new(SessionLife {
            core: core.clone(),
            sessions: self.clone(),
        });
        let mut inner = self.inner.lock().expect("sessions");
        inner.live.retain(|session| session.strong_count() > 0);
        inner.live.push(Arc::downgrade(&life));
        WritMcp {
            _life: Some(life),
            ..core
        }
    }

    /// Complete every task of every session, those still open and those ending now;
    /// how many could not be completed.
    pub async fn end_all(&self) -> usize {
        let (live, ending): (Vec<_>, Vec<_>) = {
            let mut inner = self.inner.lock().expect("sessions");
            (
                inner.live.iter().filter_map(Weak::upgrade).collect(),
                inner.ending.drain(..).collect(),
            )
        };
        let mut failed = 0;
        for handle in ending {
            failed += handle.await.unwrap_or(1);
        }
        for session in live {
            failed += session.core.complete_all().await;
        }
        failed
    }
}

/// `open_task`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct OpenTask {
    /// Logins (Unix users) the task may log in as.
    pub logins: Vec<String>,
    /// Hosts (names or patterns such as `*.prod.example.com`) the task may reach.
    pub hosts: Vec<String>,
    /// How long the task lasts, in seconds (default: the CA's default task lifetime).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// What the task is for, in a sentence; recorded in the CA's audit log.
    pub purpose: String,
}

/// `open_task`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OpenedTask {
    /// The task's id, for `run`, `task_status` and `complete_task`.
    pub task_id: String,
    /// When the task ends (RFC 3339); access ends everywhere then.
    pub expires_at: String,
    /// Logins granted.
    pub logins: Vec<String>,
    /// Hosts granted.
    pub hosts: Vec<String>,
    /// When the current certificate expires (RFC 3339).
    pub certificate_valid_before: String,
}

/// `run`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Run {
    /// A task opened by `open_task` in this session.
    pub task_id: String,
    /// The host to connect to (must be one of the task's hosts).
    pub host: String,
    /// The login (must be one of the task's logins).
    pub login: String,
    /// The shell command to run on the host.
    pub command: String,
    /// Deadline in seconds (default 60, at most 3600).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Most bytes kept of stdout and of stderr each (default 65536).
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
    /// SSH port, if not 22 (or what ssh_config says).
    #[serde(default)]
    pub port: Option<u16>,
    /// Why this command, in a sentence; recorded with the command in the CA's audit log.
    #[serde(default)]
    pub purpose: Option<String>,
}

/// A task id argument.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct TaskId {
    /// The task's id.
    pub task_id: String,
}

/// A task as the CA sees it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskState {
    /// The task's id.
    pub task_id: String,
    /// `active`, `completed`, `revoked` or `expired`.
    pub state: String,
    /// Logins.
    pub logins: Vec<String>,
    /// Hosts.
    pub hosts: Vec<String>,
    /// When it ends (RFC 3339).
    pub expires_at: String,
    /// What it is for.
    pub purpose: String,
}

/// `list_tasks`' result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskList {
    /// Every task this session opened, oldest first.
    pub tasks: Vec<ListedTask>,
}

/// One task of this session.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ListedTask {
    /// The task's id.
    pub task_id: String,
    /// `open`, or how it ended as far as this session knows (`completed`, `revoked`,
    /// `expired`).
    pub state: String,
    /// Logins.
    pub logins: Vec<String>,
    /// Hosts.
    pub hosts: Vec<String>,
    /// When it ends (RFC 3339).
    pub expires_at: String,
    /// What it is for.
    pub purpose: String,
}

/// A result: `text` for the model, `value` as `structuredContent`.
fn answer<T: Serialize>(text: String, value: &T) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = serde_json::to_value(value).ok();
    result
}

/// A refusal the model can act on (a tool error, not a protocol error).
fn refusal(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Run blocking client code off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ErrorData> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

#[tool_router]
impl WritMcp {
    /// A server for the CA `ca`, taking tokens from `tokens`, within `limits`.
    pub fn new(ca: CaClient, tokens: TokenFetcher, limits: Limits) -> WritMcp {
        WritMcp {
            ca: Arc::new(ca),
            tokens,
            limits,
            tasks: Arc::default(),
            keys: Arc::default(),
            completing: Arc::default(),
            _life: None,
            tool_router: Self::tool_router(),
        }
    }

    /// A server like this one with no tasks and no agent yet: a new session.
    fn fresh(&self) -> WritMcp {
        WritMcp {
            ca: Arc::clone(&self.ca),
            tokens: Arc::clone(&self.tokens),
            limits: self.limits.clone(),
            tasks: Arc::default(),
            keys: Arc::default(),
            completing: Arc::default(),
            _life: None,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Open a task: SSH access to some hosts as some logins for a while, granted by \
                       the CA's policy. Returns the task id to use with `run`. Complete the task \
                       with `complete_task` when the work is done."
    ,
        output_schema = schema_for_output::<OpenedTask>()
    )]
    async fn open_task(
        &self,
        Parameters(request): Parameters<OpenTask>,
    ) -> Result<CallToolResult, ErrorData> {
        if let Some(host) = request.hosts.iter().find(|h| !self.host_allowed(h)) {
            return Ok(refusal(format!(
                "refused by this server: host {host:?} is outside --allowed-hosts ({})",
                self.limits.allowed_hosts.join(", ")
            )));
        }
        let ttl = request.ttl_seconds.map(Duration::from_secs);
        if let (Some(ttl), Some(max)) = (ttl, self.limits.max_task_ttl)
            && ttl > max
        {
            return Ok(refusal(format!(
                "refused by this server: ttl_seconds {} is above --max-task-ttl ({}s)",
                ttl.as_secs(),
                max.as_secs()
            )));
        }
        let task_request = TaskRequest {
            logins: request.logins.clone(),
            hosts: request.hosts.clone(),
            task_ttl: ttl.or(self.limits.max_task_ttl),
            cert_ttl: None,
            purpose: request.purpose.clone(),
        };
        let (ca, tokens) = (Arc::clone(&self.ca), Arc::clone(&self.tokens));
        let keys = Arc::clone(&self.keys);
        let opened = blocking(move || -> Result<_, ClientError> {
            let key = client::session_key()?;
            let token = tokens()?;
            let issued =
                client::open_task(&ca, &token, &client::public_line(&key)?, &task_request)?;
            if let Err(e) = hold(&keys, &key, &issued.certificate) {
                // Not usable: end it now rather than leave it open until it expires.
                let _ = client::complete_task(
                    &ca,
                    &issued.task_id,
                    &issued.certificate,
                    &key,
                    now_unix(),
                );
                return Err(e);
            }
            Ok((key, issued))
        })
        .await?;
        let (key, issued) = match opened {
            Ok(opened) => opened,
            Err(e) => return Ok(refusal(format!("the task was not opened: {e}"))),
        };
        let opened = OpenedTask {
            task_id: issued.task_id.clone(),
            expires_at: issued.task_expires_at.clone(),
            logins: request.logins.clone(),
            hosts: request.hosts.clone(),
            certificate_valid_before: issued.valid_before.clone(),
        };
        tracing::info!(task_id = %issued.task_id, "mcp: task opened");
        self.tasks.lock().expect("tasks").insert(
            issued.task_id.clone(),
            SessionTask {
                held: HeldCertificate::new(&issued, now_unix()),
                key,
                logins: request.logins,
                hosts: request.hosts,
                expires_at: issued.task_expires_at,
                purpose: request.purpose,
                ended: None,
            },
        );
        Ok(answer(
            format!(
                "Task {} is open until {} for logins {} on hosts {}. Use `run` with this task_id; \
                 call `complete_task` when done.",
                opened.task_id,
                opened.expires_at,
                opened.logins.join(", "),
                opened.hosts.join(", ")
            ),
            &opened,
        ))
    }

    #[tool(
        description = "Run a shell command on a host with a task's certificate (ssh; the host is \
                       verified by the CA's host certificates). The command and its purpose are \
                       recorded in the CA's audit log with the task before it runs. Returns exit \
                       code, stdout and stderr (bounded; truncation is marked)."
    ,
        output_schema = schema_for_output::<runner::RunOutcome>()
    )]
    async fn run(&self, Parameters(request): Parameters<Run>) -> Result<CallToolResult, ErrorData> {
        let task = {
            let tasks = self.tasks.lock().expect("tasks");
            match tasks.get(&request.task_id) {
                None => {
                    return Ok(refusal(format!(
                        "no task {:?} in this session (open one with open_task)",
                        request.task_id
                    )));
                }
                Some(SessionTask {
                    ended: Some(state), ..
                }) => {
                    return Ok(refusal(format!(
                        "task {} is {state}; open a new one",
                        request.task_id
                    )));
                }
                Some(task) => (task.logins.clone(), task.hosts.clone()),
            }
        };
        let (logins, hosts) = task;
        if !logins.contains(&request.login) {
            return Ok(refusal(format!(
                "login {:?} is not one of the task's logins ({})",
                request.login,
                logins.join(", ")
            )));
        }
        if !hosts
            .iter()
            .any(|pattern| writ_formats::glob::matches(pattern, &request.host))
        {
            return Ok(refusal(format!(
                "host {:?} is not one of the task's hosts ({})",
                request.host,
                hosts.join(", ")
            )));
        }
        if let Err(e) = self.renew_if_due(&request.task_id).await? {
            return Ok(refusal(format!(
                "task {}: its certificate could not be renewed: {e}",
                request.task_id
            )));
        }
        let (Some(certificate), Some(agent_socket)) = (
            self.tasks
                .lock()
                .expect("tasks")
                .get(&request.task_id)
                .map(|t| t.held.certificate.clone()),
            self.keys
                .lock()
                .expect("keys")
                .as_ref()
                .map(|k| k.agent.socket().to_owned()),
        ) else {
            return Ok(refusal(format!(
                "task {} is no longer held by this session",
                request.task_id
            )));
        };
        // Nothing runs unless the CA has recorded it with the task.
        let notice = client::RunNotice::new(
            &request.host,
            &request.login,
            &request.command,
            request.purpose.as_deref(),
        );
        if let Err(e) = self.record_run(&request.task_id, notice).await? {
            if let Some(state) = self.ended_at_the_ca(&request.task_id).await? {
                self.end_task(&request.task_id, &state).await?;
                return Ok(refusal(format!(
                    "task {} has ended at the CA ({state}): hosts no longer accept its \
                     certificate. Nothing ran; open a new task if the work is not done.",
                    request.task_id
                )));
            }
            return Ok(refusal(format!(
                "the command was not run: the CA did not record it with task {} ({e})",
                request.task_id
            )));
        }
        let ca = Arc::clone(&self.ca);
        let trust = blocking(move || -> Result<_, ClientError> {
            Ok((
                client::known_hosts::fetch(&ca)?,
                client::known_hosts::fetch_revoked(&ca)?,
            ))
        })
        .await?;
        let (known_hosts, revoked) = match trust {
            Ok(trust) => trust,
            Err(e) => return Ok(refusal(format!("cannot verify hosts: {e}"))),
        };
        let mut options = Vec::new();
        if let Some(port) = request.port {
            options.extend(["-p".to_owned(), port.to_string()]);
        }
        let timeout = request
            .timeout_seconds
            .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
            .clamp(1, MAX_TIMEOUT_SECONDS);
        let outcome = runner::run(runner::RunRequest {
            agent_socket: &agent_socket,
            certificate: &certificate,
            known_hosts: &known_hosts,
            revoked: &revoked,
            user_config: self.limits.ssh_config.as_deref(),
            invocation: SshInvocation {
                login: request.login.clone(),
                host: request.host.clone(),
                options,
                command: vec![request.command.clone()],
            },
            timeout: Duration::from_secs(timeout),
            max_output_bytes: request
                .max_output_bytes
                .unwrap_or(DEFAULT_MAX_OUTPUT_BYTES)
                .min(MAX_OUTPUT_BYTES),
        })
        .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => return Ok(refusal(format!("the command did not run: {e}"))),
        };
        let mut text = match (outcome.timed_out, outcome.exit_code) {
            (true, _) => format!("Timed out after {timeout}s.\n"),
            (false, Some(code)) => format!("Exit code {code}.\n"),
            (false, None) => String::new(),
        };
        if outcome.host_refused {
            text.push_str(&client::known_hosts::refused_host_hint(&request.host));
            text.push('\n');
        }
        let cut = |truncated: bool| if truncated { " (truncated)" } else { "" };
        text.push_str(&format!(
            "stdout{}:\n{}\nstderr{}:\n{}",
            cut(outcome.stdout_truncated),
            outcome.stdout,
            cut(outcome.stderr_truncated),
            outcome.stderr
        ));
        let mut result = answer(text, &outcome);
        if outcome.host_refused || outcome.timed_out {
            result.is_error = Some(true);
        }
        Ok(result)
    }

    #[tool(
        description = "Show a task's state as the CA sees it (active, completed, revoked, expired)."
    ,
        output_schema = schema_for_output::<TaskState>()
    )]
    async fn task_status(
        &self,
        Parameters(TaskId { task_id }): Parameters<TaskId>,
    ) -> Result<CallToolResult, ErrorData> {
        self.task_call(task_id, false).await
    }

    #[tool(
        description = "Complete a task: its certificates stop working on every host at once. Call \
                       it when the work is done."
    ,
        output_schema = schema_for_output::<TaskState>()
    )]
    async fn complete_task(
        &self,
        Parameters(TaskId { task_id }): Parameters<TaskId>,
    ) -> Result<CallToolResult, ErrorData> {
        self.task_call(task_id, true).await
    }

    #[tool(description = "List the tasks this session opened.",
        output_schema = schema_for_output::<TaskList>()
    )]
    async fn list_tasks(&self) -> Result<CallToolResult, ErrorData> {
        let list = TaskList {
            tasks: self
                .tasks
                .lock()
                .expect("tasks")
                .iter()
                .map(|(id, task)| ListedTask {
                    task_id: id.clone(),
                    state: task.ended.clone().unwrap_or_else(|| "open".into()),
                    logins: task.logins.clone(),
                    hosts: task.hosts.clone(),
                    expires_at: task.expires_at.clone(),
                    purpose: task.purpose.clone(),
                })
                .collect(),
        };
        let text = if list.tasks.is_empty() {
            "No tasks opened in this session.".to_owned()
        } else {
            list.tasks
                .iter()
                .map(|t| {
                    format!(
                        "{} ({}, until {}): {} on {} — {}",
                        t.task_id,
                        t.state,
                        t.expires_at,
                        t.logins.join(","),
                        t.hosts.join(","),
                        t.purpose
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        Ok(answer(text, &list))
    }
}

impl WritMcp {
    /// Renew `task_id`'s certificate if two thirds of its life have passed, and put the
    /// new one into the agent: by proof of possession while it is valid (with a margin),
    /// else with a fresh workload token (an agent may think for longer than a certificate
    /// lasts). `Ok(Err(_))`: the task cannot be used any more (the CA refused, or the
    /// certificate expired and no renewal came); a certificate still valid is kept when
    /// the CA cannot be reached.
    async fn renew_if_due(&self, task_id: &str) -> Result<Result<(), ClientError>, ErrorData> {
        let Some(current) = self.tasks.lock().expect("tasks").get(task_id).map(|t| {
            (
                t.key.clone(),
                t.held.certificate.clone(),
                t.held.due(),
                t.held.valid_before,
            )
        }) else {
            return Ok(Ok(()));
        };
        let (key, certificate, due, valid_before) = current;
        if now_unix() < due {
            return Ok(Ok(()));
        }
        let (ca, keys, tokens) = (
            Arc::clone(&self.ca),
            Arc::clone(&self.keys),
            Arc::clone(&self.tokens),
        );
        let id = task_id.to_owned();
        let renewed = blocking(move || -> Result<_, ClientError> {
            let now = now_unix();
            let by_token = || -> Result<_, ClientError> {
                let token = tokens()?;
                client::renew_certificate(&ca, &id, &Credential::Token(&token), &key, None, now)
            };
            let possession = Credential::Possession {
                certificate: &certificate,
                key: &key,
            };
            let issued = if now.saturating_add(POSSESSION_MARGIN_SECONDS) < valid_before {
                match client::renew_certificate(&ca, &id, &possession, &key, None, now) {
                    // It expired on the way: the owner's token decides.
                    Err(ClientError::PossessionRefused(_)) => by_token()?,
                    other => other?,
                }
            } else {
                by_token()?
            };
            hold(&keys, &key, &issued.certificate)?;
            Ok(issued)
        })
        .await?;
        match renewed {
            Ok(issued) => {
                tracing::info!(task_id, serial = %issued.serial, "mcp: certificate renewed");
                if let Some(task) = self.tasks.lock().expect("tasks").get_mut(task_id) {
                    task.held = HeldCertificate::new(&issued, now_unix());
                }
                Ok(Ok(()))
            }
            Err(e @ (ClientError::Refused { .. } | ClientError::PossessionRefused(_))) => {
                Ok(Err(e))
            }
            Err(e) if now_unix() >= valid_before => Ok(Err(e)),
            Err(e) => {
                tracing::warn!(task_id, error = %e, "mcp: certificate not renewed; using the current one");
                Ok(Ok(()))
            }
        }
    }

    /// Record that `task_id` ended (`state`) and take its key out of the agent: nothing
    /// signs with it again, whatever the model asks.
    async fn end_task(&self, task_id: &str, state: &str) -> Result<(), ErrorData> {
        let key = {
            let mut tasks = self.tasks.lock().expect("tasks");
            let Some(task) = tasks.get_mut(task_id) else {
                return Ok(());
            };
            task.ended = Some(state.to_owned());
            task.key.public_key().clone()
        };
        tracing::info!(task_id, state, "mcp: task ended; its key left the agent");
        let keys = Arc::clone(&self.keys);
        blocking(move || {
            if let Some(keys) = keys.lock().expect("keys").as_mut() {
                keys.agent.forget_key(&key);
            }
        })
        .await
    }

    /// The key and current certificate of `task_id`, to prove possession with.
    fn possession(&self, task_id: &str) -> Option<(PrivateKey, String)> {
        self.tasks
            .lock()
            .expect("tasks")
            .get(task_id)
            .map(|t| (t.key.clone(), t.held.certificate.clone()))
    }

    /// Tell the CA what is about to run with `task_id` (proof of possession); `Ok(Err(_))`
    /// when it did not record it.
    async fn record_run(
        &self,
        task_id: &str,
        notice: client::RunNotice,
    ) -> Result<Result<(), ClientError>, ErrorData> {
        let Some((key, certificate)) = self.possession(task_id) else {
            return Ok(Err(ClientError::BadTaskId(task_id.to_owned())));
        };
        let (ca, id) = (Arc::clone(&self.ca), task_id.to_owned());
        blocking(move || {
            let credential = Credential::Possession {
                certificate: &certificate,
                key: &key,
            };
            client::record_run(&ca, &id, &credential, &notice, now_unix())
        })
        .await
    }

    /// After the CA refused a task call: whether the task has ended. `Some(state)`
    /// (`completed`, `revoked`, `expired`, or `ended` when the CA refused the certificate
    /// and no token says more) when it has.
    async fn ended_at_the_ca(&self, task_id: &str) -> Result<Option<String>, ErrorData> {
        let Some((key, certificate)) = self.possession(task_id) else {
            return Ok(None);
        };
        let (ca, tokens, id) = (
            Arc::clone(&self.ca),
            Arc::clone(&self.tokens),
            task_id.to_owned(),
        );
        let answered = blocking(move || {
            let credential = Credential::Possession {
                certificate: &certificate,
                key: &key,
            };
            match client::task_status(&ca, &id, &credential, now_unix()) {
                // The certificate proves nothing once its task ended: the owner's token
                // says how it ended (an admin's revocation is not worth retrying).
                Err(ClientError::PossessionRefused(_)) => Ok(tokens()
                    .and_then(|token| {
                        client::task_status(&ca, &id, &Credential::Token(&token), now_unix())
                    })
                    .map(|task| task.state)
                    .unwrap_or_else(|_| "ended".to_owned())),
                Ok(task) => Ok(task.state),
                Err(e) => Err(e),
            }
        })
        .await?;
        Ok(answered.ok().filter(|state| state != "active"))
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.limits.allowed_hosts.is_empty()
            || self
                .limits
                .allowed_hosts
                .iter()
                .any(|allowed| writ_formats::glob::matches(allowed, host))
    }

    /// `task_status` or `complete_task`, proving possession of the task's key.
    async fn task_call(
        &self,
        task_id: String,
        complete: bool,
    ) -> Result<CallToolResult, ErrorData> {
        // A failed renewal is the CA's answer to the call below as well.
        let _ = self.renew_if_due(&task_id).await?;
        let held = self.possession(&task_id);
        let Some((key, certificate)) = held else {
            return Ok(refusal(format!(
                "no task {task_id:?} in this session (list_tasks shows them)"
            )));
        };
        let ca = Arc::clone(&self.ca);
        let id = task_id.clone();
        let answered = blocking(move || {
            let credential = Credential::Possession {
                certificate: &certificate,
                key: &key,
            };
            if complete {
                client::finish_task(&ca, &id, &credential, now_unix())
            } else {
                client::task_status(&ca, &id, &credential, now_unix())
            }
        })
        .await?;
        let task = match answered {
            Ok(task) => task,
            Err(e) => return Ok(refusal(format!("task {task_id}: {e}"))),
        };
        if task.state != "active" {
            self.end_task(&task_id, &task.state).await?;
        }
        let state = TaskState {
            task_id: task.task_id,
            state: task.state,
            logins: task.logins,
            hosts: task.hosts,
            expires_at: task.expires_at,
            purpose: task.purpose,
        };
        let text = if complete {
            format!(
                "Task {} is {}: its certificates no longer work anywhere.",
                state.task_id, state.state
            )
        } else {
            format!(
                "Task {} is {} (until {}): logins {} on hosts {}.",
                state.task_id,
                state.state,
                state.expires_at,
                state.logins.join(", "),
                state.hosts.join(", ")
            )
        };
        Ok(answer(text, &state))
    }

    /// Complete every task this session opened and did not complete; returns how many
    /// could not be completed (each logged).
    pub async fn complete_all(&self) -> usize {
        let _completing = self.completing.lock().await;
        let open: Vec<String> = self
            .tasks
            .lock()
            .expect("tasks")
            .iter()
            .filter(|(_, t)| t.ended.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let mut failed = 0;
        for task_id in open {
            match self.task_call(task_id.clone(), true).await {
                Ok(result) if result.is_error != Some(true) => {
                    tracing::info!(%task_id, "mcp: task completed at the end of the session");
                }
                _ => {
                    failed += 1;
                    tracing::warn!(%task_id, "mcp: could not complete the task at the end of the session");
                }
            }
        }
        // The keys go with the session: the agent stops, its socket directory is removed.
        self.keys.lock().expect("keys").take();
        failed
    }
}

/// The session's ssh-agent and the private directory of its socket (the agent is
/// declared first, so it stops before the directory is removed).
struct Keys {
    agent: Agent,
    _dir: PrivateDir,
}

/// Put `key` with `certificate` into the session's agent, starting the agent first if
/// this is the session's first key.
fn hold(
    keys: &Mutex<Option<Keys>>,
    key: &PrivateKey,
    certificate: &str,
) -> Result<(), ClientError> {
    let mut keys = keys.lock().expect("keys");
    let keys = match &mut *keys {
        Some(keys) => keys,
        empty => {
            let dir = PrivateDir::new()?;
            let agent = Agent::start_private(dir.path())?;
            empty.insert(Keys { agent, _dir: dir })
        }
    };
    keys.agent.add(key, certificate, now_unix())
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for WritMcp {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::default();
        info.capabilities = ServerCapabilities::builder().enable_tools().build();
        info.instructions = Some(
            "SSH access through writ: open_task names the logins, hosts and purpose; run executes \
             commands with the task's certificate; complete_task ends access everywhere. Tokens, \
             keys and certificates never leave this server."
                .into(),
        );
        info
    }
}

/// Serve MCP on stdin/stdout until the client goes away or a signal arrives, then complete
/// every task the session opened. Errors are the transport's.
pub async fn serve_stdio(server: WritMcp) -> Result<(), String> {
    let running = server
        .clone()
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("MCP handshake failed: {e}"))?;
    let cancel = running.cancellation_token();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let waiting = running.waiting();
    tokio::pin!(waiting);
    tokio::select! {
        _ = &mut waiting => {}
        _ = terminate.recv() => cancel.cancel(),
        _ = tokio::signal::ctrl_c() => cancel.cancel(),
    }
    let failed = server.complete_all().await;
    if failed > 0 {
        return Err(format!("{failed} task(s) could not be completed"));
    }
    Ok(())
}
