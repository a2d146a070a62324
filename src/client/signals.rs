//! While `writ ssh` waits for ssh: SIGINT and SIGTERM go to ssh instead of ending writ, so
//! that writ outlives the session and completes the task as after any other ending
//! (README "The agent side"). Without this, Ctrl-C (or a supervisor's SIGTERM) killed
//! writ with the task still open until it expired.
//!
//! The handlers are tokio's (no unsafe code here); a small thread waits for the signals
//! and passes each to ssh with `kill`. It never signals anything but the ssh it was given,
//! and it stays installed until the process exits (writ ends soon after ssh).

use std::io;
use std::sync::mpsc;

use tokio::signal::unix::{SignalKind, signal};

/// The installed handlers; [`Forward::to`] names the process that gets the signals.
pub struct Forward {
    target: mpsc::Sender<u32>,
}

impl Forward {
    /// Take over SIGINT and SIGTERM for this process (before ssh is started, so no signal
    /// falls between the two).
    pub fn install() -> io::Result<Forward> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (interrupt, terminate) = runtime.block_on(async {
            Ok::<_, io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })?;
        let (target, receiver) = mpsc::channel::<u32>();
        std::thread::spawn(move || {
            let (mut interrupt, mut terminate) = (interrupt, terminate);
            runtime.block_on(async move {
                let mut pid = None;
                loop {
                    let name = tokio::select! {
                        Some(()) = interrupt.recv() => "INT",
                        Some(()) = terminate.recv() => "TERM",
                        else => return,
                    };
                    if pid.is_none() {
                        pid = receiver.try_recv().ok();
                    }
                    if let Some(pid) = pid {
                        let _ = std::process::Command::new("kill")
                            .args(["-s", name, &pid.to_string()])
                            .status();
                    }
                }
            });
        });
        Ok(Forward { target })
    }

    /// Send the signals to `pid` (ssh).
    pub fn to(&self, pid: u32) {
        let _ = self.target.send(pid);
    }
}
