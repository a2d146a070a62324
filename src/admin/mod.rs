//! Operator commands (`writ admin …`): the library side of what operators run against a
//! CA's configuration. Each command is a function that returns structured data (serde
//! `Serialize` for `--json`, `Display` for people); `src/bin/writ.rs` only parses
//! arguments, calls it and prints the result.
//!
//! - [`explain`] — `writ admin policy explain`: which issuer verifies a token, which
//!   policy matches it (or why each does not), and what would be granted.
//! - [`task`] — `writ admin task show|revoke`: operators acting on tasks in the store.
//! - [`ca`] — `writ admin ca list|rotate|revoke|schedule|export-public|rewrap`: the CA
//!   keyring, in the store a running `writ serve` shares.
//! - [`audit`] — `writ admin audit export|verify|trail|checkpoint|prune`: the audit log.
//!
//! Commands here never print or log a whole bearer token or key material. A command that
//! only inspects (like `policy explain`) issues nothing, writes nothing and touches no
//! store or audit log.

pub mod audit;
pub mod ca;
pub mod explain;
pub mod task;

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use crate::config::{Config, ConfigError};

/// Most bytes read for a token from stdin or a file; a real token is far smaller (the CA
/// refuses tokens over [`crate::identity::MAX_TOKEN_BYTES`]).
const MAX_TOKEN_INPUT_BYTES: u64 = 64 * 1024;

/// Why an operator command could not run.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No configuration file was named.
    #[error("no configuration: give --config FILE (or set WRIT_CONFIG)")]
    NoConfig,
    /// The configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token could not be read.
    #[error("cannot read the token from {from}: {source}")]
    TokenRead {
        /// `stdin` or the file.
        from: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The token input is empty.
    #[error("the token from {from} is empty")]
    EmptyToken {
        /// `the command line`, `stdin` or the file.
        from: String,
    },
    /// The token input is far larger than any token.
    #[error(
        "the input from {from} is larger than {MAX_TOKEN_INPUT_BYTES} bytes; it is not a token"
    )]
    TokenInputTooLarge {
        /// `stdin` or the file.
        from: String,
    },
}

/// Load and validate the CA configuration an admin command works on.
pub fn load_config(path: Option<&Path>) -> Result<Config, AdminError> {
    let path = path.ok_or(AdminError::NoConfig)?;
    Ok(Config::load(path)?)
}

/// The operator's login, for the audit records of admin commands: `$SUDO_USER` (the person
/// behind `sudo`), else `$USER`, else the name of the effective uid in `/etc/passwd`
/// (cron jobs and service managers often set no `$USER`), else `uid:N`.
pub fn operator() -> String {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(name) = from_env("SUDO_USER").or_else(|| from_env("USER")) {
        return name;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match effective_uid(&status) {
        Some(uid) => {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            user_name(&passwd, uid).unwrap_or_else(|| format!("uid:{uid}"))
        }
        None => "unknown".into(),
    }
}

/// The effective uid in `/proc/self/status` text (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
}

/// The first login with `uid` in `/etc/passwd` text (`name:x:uid:gid:…`).
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid_field = fields.nth(1)?;
        (!name.is_empty() && !name.starts_with('#') && uid_field.parse() == Ok(uid))
            .then(|| name.to_owned())
    })
}

/// The token named by a `--token` argument: `-` reads it from `stdin`, `@FILE` from a
/// file, anything else is the token itself. Surrounding whitespace is removed.
pub fn read_token(arg: &str, stdin: &mut dyn Read) -> Result<Zeroizing<String>, AdminError> {
    let (from, text) = if arg == "-" {
        ("stdin".to_owned(), read_bounded(stdin, "stdin")?)
    } else if let Some(path) = arg.strip_prefix('@') {
        let from = path.to_owned();
        let mut file = std::fs::File::open(path).map_err(|source| AdminError::TokenRead {
            from: from.clone(),
            source,
        })?;
        let text = read_bounded(&mut file, &from)?;
        (from, text)
    } else {
        (
            "the command line".to_owned(),
            Zeroizing::new(arg.to_owned()),
        )
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(AdminError::EmptyToken { from });
    }
    Ok(Zeroizing::new(token.to_owned()))
}

fn read_bounded(input: &mut dyn Read, from: &str) -> Result<Zeroizing<String>, AdminError> {
    let mut text = Zeroizing::new(String::new());
    input
        .take(MAX_TOKEN_INPUT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| AdminError::TokenRead {
            from: from.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_TOKEN_INPUT_BYTES {
        return Err(AdminError::TokenInputTooLarge {
            from: from.to_owned(),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources() {
        let mut no_stdin: &[u8] = b"";
        assert_eq!(
            read_token("a.b.c", &mut no_stdin)
                .expect("literal")
                .as_str(),
            "a.b.c"
        );
        let mut stdin: &[u8] = b"  x.y.z\n";
        assert_eq!(
            read_token("-", &mut stdin).expect("stdin").as_str(),
            "x.y.z"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "f.g.h\n").expect("write");
        let arg = format!("@{}", file.display());
        assert_eq!(
            read_token(&arg, &mut no_stdin).expect("file").as_str(),
            "f.g.h"
        );
        assert!(matches!(
            read_token("-", &mut no_stdin),
            Err(AdminError::EmptyToken { .. })
        ));
        assert!(matches!(
            read_token("@/nonexistent/token", &mut no_stdin),
            Err(AdminError::TokenRead { .. })
        ));
        let big = vec![b'a'; 70 * 1024];
        assert!(matches!(
            read_token("-", &mut big.as_slice()),
            Err(AdminError::TokenInputTooLarge { .. })
        ));
        assert!(matches!(load_config(None), Err(AdminError::NoConfig)));
    }

    #[test]
    fn operator_name_from_the_effective_uid() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tcat\n"), None);
        let passwd =
            "# comment\nroot:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name(passwd, 4242), None);
    }
}
