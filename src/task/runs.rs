//! What an agent runs with its task, in the audit log: `writ mcp`'s `run` tells the CA
//! the host, the login, the command and why before the command starts, and the CA keeps
//! it as a `task.run` record with the task. Only the task's owner may record (a proof of
//! possession from one of its live certificates, or the owner's token), only while the
//! task is active, and only for a host and login the task covers, so a record says what
//! the task could really do.
//!
//! It must never change a task or a certificate: a record is the only effect. A request
//! replayed within its proof's window records the same run again, nothing more (like a
//! read, recording does not spend the proof).

use crate::audit::{AuditEntry, Outcome, event};
use crate::store::TaskRecord;

use super::lifecycle::Caller;
use super::{IssueError, Issuer, Refused, RequestContext};

/// Longest command kept (bytes); a client cuts a longer one and says so in the text.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Longest purpose of one run (bytes).
pub const MAX_PURPOSE_BYTES: usize = 512;

/// One command an agent is about to run with a task.
#[derive(Debug, Clone)]
pub struct Run {
    /// The host it runs on (must be covered by the task's hosts).
    pub host: String,
    /// The login it runs as (one of the task's logins).
    pub login: String,
    /// The command, at most [`MAX_COMMAND_BYTES`], no NUL.
    pub command: String,
    /// Why, in a sentence (optional), at most [`MAX_PURPOSE_BYTES`], no control characters.
    pub purpose: Option<String>,
}

impl Run {
    /// The input checks that need no task.
    fn check(&self) -> Result<(), IssueError> {
        let bad = |code: &'static str, message: String| IssueError::BadRequest { code, message };
        if self.command.trim().is_empty() {
            return Err(bad("invalid_command", "command is empty".into()));
        }
        if self.command.len() > MAX_COMMAND_BYTES || self.command.contains('\0') {
            return Err(bad(
                "invalid_command",
                format!("command must be at most {MAX_COMMAND_BYTES} bytes without NUL"),
            ));
        }
        if let Some(purpose) = &self.purpose
            && (purpose.len() > MAX_PURPOSE_BYTES || purpose.chars().any(char::is_control))
        {
            return Err(bad(
                "invalid_purpose",
                format!(
                    "purpose must be at most {MAX_PURPOSE_BYTES} bytes without control characters"
                ),
            ));
        }
        if self.host.is_empty() || self.login.is_empty() {
            return Err(bad("invalid_run", "host and login are required".into()));
        }
        Ok(())
    }

    /// Whether `task` covers this host and login.
    fn within(&self, task: &TaskRecord) -> Result<(), IssueError> {
        if !task.logins.contains(&self.login) {
            return Err(IssueError::Forbidden {
                code: "login_not_in_task",
                message: format!("login {:?} is not one of the task's logins", self.login),
            });
        }
        if !task
            .hosts
            .iter()
            .any(|pattern| writ_formats::glob::matches(pattern, &self.host))
        {
            return Err(IssueError::Forbidden {
                code: "host_not_in_task",
                message: format!("host {:?} is not one of the task's hosts", self.host),
            });
        }
        Ok(())
    }
}

impl Issuer {
    /// Record `run` for `task_id` (owner only, task active, host and login covered); the
    /// record is durable when this returns. A refusal is a `task.denied` record.
    pub async fn record_run(
        &self,
        caller: &Caller,
        task_id: &str,
        run: &Run,
        context: &RequestContext,
    ) -> Result<(), Refused> {
        match self.try_record_run(caller, task_id, run, context).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self
                .refusal(event::TASK_DENIED, caller, task_id, error)
                .await),
        }
    }

    async fn try_record_run(
        &self,
        caller: &Caller,
        task_id: &str,
        run: &Run,
        context: &RequestContext,
    ) -> Result<(), IssueError> {
        run.check()?;
        let task = self.owned_task(caller, task_id).await?;
        let state = super::lifecycle::task_state(&task, context.now.unix_timestamp());
        if state != "active" {
            return Err(IssueError::TaskNotActive(state));
        }
        run.within(&task)?;
        let mut entry = AuditEntry::new(event::TASK_RUN, Outcome::Success);
        entry.issuer = Some(task.issuer.clone());
        entry.subject = Some(task.subject.clone());
        entry.policy = Some(task.policy.clone());
        entry.task_id = Some(task.id.clone());
        if let Caller::Possession { serial, .. } = caller {
            entry.serial = Some(serial.to_string());
        }
        entry.logins = vec![run.login.clone()];
        entry.host = Some(run.host.clone());
        entry.purpose = run.purpose.clone();
        entry.command = Some(run.command.clone());
        context.stamp(&mut entry);
        self.store
            .append_audit(&entry, context.now)
            .await
            .map_err(IssueError::StoreUnavailable)?;
        tracing::info!(task_id = %task.id, host = ?run.host, "task.run recorded");
        Ok(())
    }
}
