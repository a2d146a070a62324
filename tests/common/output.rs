//! Running the `writ` binary as an agent or operator would, and reading what it printed:
//! a command with none of the caller's writ settings, its stdout and stderr as text.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `writ` with none of the environment's writ settings (`WRIT_*` variables, a GitHub
/// Actions token) and `config_home` as `XDG_CONFIG_HOME` (where the client config would
/// be), reading no stdin.
pub fn writ_isolated(config_home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_writ"));
    for var in [
        "WRIT_CONFIG",
        "WRIT_CA_URL",
        "WRIT_CA_BUNDLE",
        "WRIT_CLIENT_CERT",
        "WRIT_CLIENT_KEY",
        "WRIT_CLIENT_CONFIG",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    ] {
        command.env_remove(var);
    }
    command
        .env("XDG_CONFIG_HOME", config_home)
        .stdin(Stdio::null());
    command
}

/// What the command printed on stdout.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What the command printed on stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The command succeeded (else: its status and both outputs).
pub fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
}
