//! Where a session's private key lives while ssh uses it: an ssh-agent, never a file.
//! `writ ssh` and `writ mcp` make the key in memory and hand it, together with its
//! certificate, to an agent with a lifetime equal to the certificate's remaining validity,
//! so the agent forgets it by itself; ssh finds it through `IdentityAgent` and selects it
//! with the certificate (a public file) as its `IdentityFile`.
//!
//! The agent is either a private `ssh-agent` started for the session (its socket in the
//! session's 0700 directory; it accepts only this user's connections and exits with
//! writ), or the user's own (`--use-agent`, `SSH_AUTH_SOCK`), from which exactly the
//! identities added here are removed at the end. This module must never write a private
//! key to a file, put it in an argument or the environment, or log it.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ssh_agent_lib::blocking::Client;
use ssh_agent_lib::proto::{
    AddIdentity, AddIdentityConstrained, KeyConstraint, PrivateCredential, PrivateKeyData,
    PublicCredential, RemoveIdentity,
};
use ssh_key::{Certificate, PrivateKey, private::KeypairData};

use super::ClientError;

/// How long a call to the agent may take: a wedged agent fails the session instead of
/// hanging it.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which agent holds the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AgentChoice {
    /// A private `ssh-agent` for this session.
    #[default]
    Private,
    /// The user's agent (`SSH_AUTH_SOCK`).
    User,
}

/// An agent holding this session's keys (see the module documentation).
pub struct Agent {
    socket: PathBuf,
    private: Option<PrivateProcess>,
    added: Vec<Certificate>,
}

/// A private `ssh-agent` in command mode: it runs `cat` reading a pipe only writ holds,
/// so when writ exits, however it exits, `cat` ends and the agent (which checks its
/// parent every 10 s) exits too, removing its socket.
struct PrivateProcess {
    command: Child,
    agent_pid: String,
}

impl Agent {
    /// Start or open the agent `choice` names; a private one binds `<dir>/agent.sock`.
    pub fn open(choice: AgentChoice, dir: &Path) -> Result<Agent, ClientError> {
        match choice {
            AgentChoice::Private => Agent::start_private(dir),
            AgentChoice::User => Agent::user(),
        }
    }

    /// Start a private `ssh-agent` listening on `<dir>/agent.sock`; ready when this returns.
    pub fn start_private(dir: &Path) -> Result<Agent, ClientError> {
        let socket = dir.join("agent.sock");
        let failed =
            |detail: String| ClientError::Agent(format!("cannot start ssh-agent: {detail}"));
        // The socket is bound before the command runs, so its first line means ready;
        // `SSH_AGENT_PID` is the agent's pid, for stopping it promptly.
        let mut command = Command::new("ssh-agent")
            .arg("-a")
            .arg(&socket)
            .args([
                "--",
                "sh",
                "-c",
                "echo \"$SSH_AGENT_PID\"; exec cat >/dev/null",
            ])
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let mut line = String::new();
        let read = command
            .stdout
            .take()
            .map(|stdout| BufReader::new(stdout).read_line(&mut line));
        let agent_pid = line.trim().to_owned();
        if !matches!(read, Some(Ok(1..))) || agent_pid.is_empty() {
            let _ = command.kill();
            let _ = command.wait();
            return Err(failed("it exited before its socket was ready".into()));
        }
        Ok(Agent {
            socket,
            private: Some(PrivateProcess { command, agent_pid }),
            added: Vec::new(),
        })
    }

    /// The user's agent, from `SSH_AUTH_SOCK`.
    pub fn user() -> Result<Agent, ClientError> {
        let socket = std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                ClientError::Agent(
                    "--use-agent needs a running ssh-agent, but SSH_AUTH_SOCK is not set".into(),
                )
            })?;
        let agent = Agent {
            socket,
            private: None,
            added: Vec::new(),
        };
        agent.client()?;
        Ok(agent)
    }

    /// The agent's socket, for ssh's `IdentityAgent`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn client(&self) -> Result<Client<UnixStream>, ClientError> {
        let stream = UnixStream::connect(&self.socket).map_err(|e| {
            ClientError::Agent(format!(
                "cannot connect to the ssh-agent at {}: {e}",
                self.socket.display()
            ))
        })?;
        let _ = stream.set_read_timeout(Some(AGENT_TIMEOUT));
        let _ = stream.set_write_timeout(Some(AGENT_TIMEOUT));
        Ok(Client::new(stream))
    }

    /// Add `key` with `certificate` (an OpenSSH line certifying it), to be forgotten by
    /// the agent when the certificate expires (`now_unix` is the current time). An
    /// expired certificate, or one for another key, is refused here.
    pub fn add(
        &mut self,
        key: &PrivateKey,
        certificate: &str,
        now_unix: i64,
    ) -> Result<(), ClientError> {
        let certificate = Certificate::from_openssh(certificate)
            .map_err(|e| ClientError::Agent(format!("not an OpenSSH certificate: {e}")))?;
        if certificate.public_key() != key.public_key().key_data() {
            return Err(ClientError::Agent(
                "the certificate does not certify the session's key".into(),
            ));
        }
        let lifetime = lifetime(certificate.valid_before(), now_unix)
            .ok_or_else(|| ClientError::Agent("the certificate has already expired".into()))?;
        let KeypairData::Ed25519(keypair) = key.key_data() else {
            return Err(ClientError::Agent("the session key is not ed25519".into()));
        };
        let identity = AddIdentityConstrained {
            identity: AddIdentity {
                credential: PrivateCredential::Cert {
                    algorithm: key.algorithm(),
                    certificate: Box::new(certificate.clone()),
                    privkey: PrivateKeyData::Ed25519(keypair.clone()),
                    comment: format!("writ task certificate {}", certificate.serial()),
                },
            },
            constraints: vec![KeyConstraint::Lifetime(lifetime)],
        };
        self.client()?
            .add_identity_constrained(identity)
            .map_err(|e| ClientError::Agent(format!("the ssh-agent refused the key: {e}")))?;
        self.added.push(certificate);
        Ok(())
    }

    /// The certificates currently in the agent (public halves only).
    pub fn certificates(&self) -> Result<Vec<Certificate>, ClientError> {
        let identities = self
            .client()?
            .request_identities()
            .map_err(|e| ClientError::Agent(format!("cannot list the ssh-agent's keys: {e}")))?;
        Ok(identities
            .into_iter()
            .filter_map(|identity| match identity.credential {
                PublicCredential::Cert(certificate) => Some(*certificate),
                PublicCredential::Key(_) => None,
            })
            .collect())
    }

    /// Take every certificate this session added for `key` (and so the key) out of the
    /// agent now: its task has ended, nothing may sign with it any more.
    pub fn forget_key(&mut self, key: &ssh_key::PublicKey) {
        let (theirs, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.added)
            .into_iter()
            .partition(|certificate| certificate.public_key() == key.key_data());
        self.added = others;
        let Ok(mut client) = self.client() else {
            return;
        };
        for certificate in theirs {
            // An identity the agent already dropped (its lifetime passed) is not an error.
            let _ = client.remove_identity(RemoveIdentity {
                credential: PublicCredential::Cert(Box::new(certificate)),
            });
        }
    }

    /// Take this session's identities out of the agent now (a private agent is also
    /// stopped when dropped).
    pub fn forget(&mut self) {
        let Ok(mut client) = self.client() else {
            return;
        };
        if self.private.is_some() {
            let _ = client.remove_all_identities();
        } else {
            for certificate in self.added.drain(..) {
                let _ = client.remove_identity(RemoveIdentity {
                    credential: PublicCredential::Cert(Box::new(certificate)),
                });
            }
        }
        self.added.clear();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.forget();
        if let Some(mut private) = self.private.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &private.agent_pid])
                .stderr(Stdio::null())
                .status();
            drop(private.command.stdin.take());
            let _ = private.command.kill();
            let _ = private.command.wait();
        }
    }
}

/// Seconds from `now_unix` until `valid_before` (the agent's lifetime constraint); `None`
/// once it has passed. A certificate valid "forever" (`u64::MAX`) is held for at most a
/// day: writ never issues those, and the agent's field has 32 bits.
fn lifetime(valid_before: u64, now_unix: i64) -> Option<u32> {
    let now = u64::try_from(now_unix).ok()?;
    let left = valid_before.checked_sub(now).filter(|left| *left > 0)?;
    Some(u32::try_from(left.min(86_400)).unwrap_or(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_forgets_the_key_when_the_certificate_expires() {
        assert_eq!(lifetime(1_000_120, 1_000_000), Some(120));
        assert_eq!(lifetime(1_000_000, 1_000_000), None);
        assert_eq!(lifetime(999_999, 1_000_000), None);
        assert_eq!(lifetime(u64::MAX, 1_000_000), Some(86_400));
        assert_eq!(lifetime(10, -1), None);
    }
}
