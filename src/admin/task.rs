//! `writ admin task revoke ID --reason TEXT` and `writ admin task show ID`: operators
//! acting on tasks directly in the CA's store (the same store a running `writ serve`
//! uses; a revocation is in the next revocation feed and KRL the server hands out).

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;

use super::{AdminError, Context, Render, Status, emit, pretty};
use crate::config::Config;
use crate::profile;
use crate::store::{self, CertificateRecord, StoreError, TaskRecord};
use crate::task::RequestContext;
use crate::task::lifecycle::{Actor, Ending, end_in_store, task_state};

/// Issuer name audit records give operators acting through `writ admin`.
pub const LOCAL_ADMIN: &str = "local-admin";

/// `writ admin task …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TaskCommand {
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
    /// and your login ($SUDO_USER, else $USER, else your uid's name).
    Revoke {
        /// Task id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// How long to wait for hosts to acknowledge the revocation (hosts with a
        /// `token_file` report each revocation feed they apply): the answer says how many
        /// of the hosts that reported in the last hour have it in force. `0s`: do not
        /// wait.
        #[arg(long, default_value = "5s", value_parser = parse_wait)]
        wait_acks: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Longest `--wait-acks`.
const MAX_ACK_WAIT: Duration = Duration::from_secs(600);
/// Hosts that reported an applied feed this recently are expected to acknowledge (four
/// of `writ-principals sync --watch`'s heartbeats).
pub const REPORTING_WINDOW: Duration = Duration::from_secs(60 * 60);
/// How often the store is read while waiting for acknowledgements.
const ACK_POLL: Duration = Duration::from_millis(200);

fn parse_wait(text: &str) -> Result<Duration, String> {
    let wait = writ_formats::duration::parse(text).map_err(|e| e.to_string())?;
    if wait > MAX_ACK_WAIT {
        return Err(format!(
            "at most {}",
            writ_formats::duration::format(MAX_ACK_WAIT)
        ));
    }
    Ok(wait)
}

/// Run `writ admin task …`, writing the task (as it is after the command) to `out`.
pub async fn run(
    context: &Context,
    command: TaskCommand,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let now = context.now();
    let (report, json) = match command {
        TaskCommand::Show { id, json } => (
            show(&context.config, &id, now.unix_timestamp()).await?,
            json,
        ),
        TaskCommand::Revoke {
            id,
            reason,
            wait_acks,
            json,
        } => {
            let mut report = revoke(&context.config, &id, &reason, &context.operator, now).await?;
            if !wait_acks.is_zero() {
                report.acknowledgements =
                    Some(wait_for_acknowledgements(&context.config, wait_acks).await?);
            }
            (report, json)
        }
    };
    emit(out, &report, json)?;
    Ok(Status::Success)
}

/// Why a task command failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskCommandError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such task.
    #[error("no task {0}")]
    NotFound(String),
    /// The task already ended.
    #[error("task {id} is already {state}")]
    NotActive {
        /// Task id.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// The reason is empty or unprintable.
    #[error("--reason must be 1 to 512 bytes of text without control characters")]
    BadReason,
}

/// A task and its certificates, for printing.
#[derive(Debug, Serialize)]
pub struct TaskReport {
    /// Task id.
    pub task_id: String,
    /// State now.
    pub state: &'static str,
    /// Owner.
    pub owner: String,
    /// Policy.
    pub policy: String,
    /// Logins.
    pub logins: Vec<String>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
    /// Serials, with whether each is revoked.
    pub certificates: Vec<(String, bool)>,
    /// After a revocation: which hosts have it in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledgements: Option<Acknowledgements>,
    /// When the report was made (Unix seconds), so text can say how far away the expiry is.
    #[serde(skip)]
    pub now: i64,
}

/// Which hosts applied a revocation feed at least as new as the one that carries it.
#[derive(Debug, Serialize)]
pub struct Acknowledgements {
    /// The feed sequence that carries the revocation.
    pub sequence: i64,
    /// Hosts that reported an applied feed within [`REPORTING_WINDOW`].
    pub reporting: usize,
    /// Of those, the ones whose applied feed is at least `sequence`.
    pub acknowledged: Vec<String>,
    /// Of those, the ones that had not acknowledged when the wait ended.
    pub pending: Vec<String>,
    /// How long it took (all acknowledged) or how long was waited, in seconds.
    pub waited_seconds: f64,
}

/// Wait up to `wait` for every host reporting applied feeds to have the store's current
/// feed (which carries what was just revoked).
pub async fn wait_for_acknowledgements(
    config: &Config,
    wait: Duration,
) -> Result<Acknowledgements, TaskCommandError> {
    let store = super::open_store(config).await?;
    let started = Instant::now();
    let now_unix = OffsetDateTime::now_utc().unix_timestamp();
    let sequence = store.revocations(now_unix).await?.sequence;
    let window = i64::try_from(REPORTING_WINDOW.as_secs()).unwrap_or(i64::MAX);
    loop {
        let reporting: Vec<_> = store
            .feeds_applied()
            .await?
            .into_iter()
            .filter(|f| f.reported_at >= now_unix.saturating_sub(window))
            .collect();
        let (acknowledged, pending): (Vec<_>, Vec<_>) =
            reporting.iter().partition(|f| f.sequence >= sequence);
        if pending.is_empty() || started.elapsed() >= wait {
            return Ok(Acknowledgements {
                sequence,
                reporting: reporting.len(),
                acknowledged: acknowledged.iter().map(|f| f.host.clone()).collect(),
                pending: pending.iter().map(|f| f.host.clone()).collect(),
                waited_seconds: started.elapsed().as_secs_f64(),
            });
        }
        tokio::time::sleep(ACK_POLL).await;
    }
}

impl fmt::Display for Acknowledgements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reporting == 0 {
            return writeln!(
                f,
                "hosts     none report applied feeds (hosts with a token_file do; README \
                 \"How hosts learn\")"
            );
        }
        writeln!(
            f,
            "hosts     {} of {} reporting host(s) have it in force (feed {}, {:.1} s)",
            self.acknowledged.len(),
            self.reporting,
            self.sequence,
            self.waited_seconds
        )?;
        if !self.pending.is_empty() {
            writeln!(f, "pending   {}", self.pending.join(", "))?;
        }
        Ok(())
    }
}

impl TaskReport {
    fn new(task: &TaskRecord, certificates: &[CertificateRecord], now_unix: i64) -> TaskReport {
        TaskReport {
            task_id: task.id.clone(),
            state: task_state(task, now_unix),
            owner: format!("{} / {}", task.issuer, task.subject),
            policy: task.policy.clone(),
            logins: task.logins.clone(),
            hosts: task.hosts.clone(),
            expires_at: task.expires_at,
            certificates: certificates
                .iter()
                .map(|c| (c.serial.to_string(), c.revoked_at.is_some()))
                .collect(),
            acknowledgements: None,
            now: now_unix,
        }
    }
}

impl fmt::Display for TaskReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "task      {}", self.task_id)?;
        writeln!(f, "state     {}", self.state)?;
        writeln!(f, "owner     {}", self.owner)?;
        writeln!(f, "policy    {}", self.policy)?;
        writeln!(f, "logins    {}", self.logins.join(", "))?;
        writeln!(f, "hosts     {}", self.hosts.join(", "))?;
        writeln!(
            f,
            "expires   {}",
            crate::cli::time_and_distance(self.expires_at, self.now)
        )?;
        for (serial, revoked) in &self.certificates {
            writeln!(
                f,
                "cert      {serial}{}",
                if *revoked { " (revoked)" } else { "" }
            )?;
        }
        if let Some(acknowledgements) = &self.acknowledgements {
            write!(f, "{acknowledgements}")?;
        }
        Ok(())
    }
}

impl Render for TaskReport {
    fn text(&self) -> String {
        self.to_string()
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

async fn load(
    config: &Config,
    task_id: &str,
) -> Result<(std::sync::Arc<dyn store::Store>, TaskRecord), TaskCommandError> {
    let store = super::open_store(config).await?;
    if !profile::is_valid_task_id(task_id) {
        return Err(TaskCommandError::NotFound(
            task_id.chars().take(64).collect(),
        ));
    }
    let task = store
        .task(task_id)
        .await?
        .ok_or_else(|| TaskCommandError::NotFound(task_id.to_owned()))?;
    Ok((store, task))
}

/// Show a task.
pub async fn show(
    config: &Config,
    task_id: &str,
    now_unix: i64,
) -> Result<TaskReport, TaskCommandError> {
    let (store, task) = load(config, task_id).await?;
    let certificates = store.task_certificates(&task.id).await?;
    Ok(TaskReport::new(&task, &certificates, now_unix))
}

/// Revoke a task as operator `operator` (their login, for the audit record).
pub async fn revoke(
    config: &Config,
    task_id: &str,
    reason: &str,
    operator: &str,
    now: OffsetDateTime,
) -> Result<TaskReport, TaskCommandError> {
    let now_unix = now.unix_timestamp();
    if reason.trim().is_empty() || reason.len() > 512 || reason.chars().any(char::is_control) {
        return Err(TaskCommandError::BadReason);
    }
    let (store, task) = load(config, task_id).await?;
    let state = task_state(&task, now_unix);
    if state != "active" {
        return Err(TaskCommandError::NotActive { id: task.id, state });
    }
    let fingerprints: Vec<(String, String)> = store
        .ca_keys()
        .await?
        .into_iter()
        .map(|k| (k.id, k.fingerprint))
        .collect();
    let actor = Actor {
        issuer: Some(LOCAL_ADMIN.to_owned()),
        subject: Some(operator.to_owned()),
    };
    let result = end_in_store(
        store.as_ref(),
        &task,
        Ending::Revoke,
        &actor,
        Some(reason.to_owned()),
        &RequestContext::local(now),
        &fingerprints,
        None,
        now,
    )
    .await;
    match result {
        Ok(_) => {}
        Err(StoreError::TaskNotActive) => {
            return Err(TaskCommandError::NotActive {
                id: task.id,
                state: "ended",
            });
        }
        Err(e) => return Err(e.into()),
    }
    show(config, task_id, now_unix).await
}
