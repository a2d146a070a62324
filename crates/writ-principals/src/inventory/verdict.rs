//! Whether writ enforces logins on this host, and each account's verdict. Pure: the
//! facts come in (sshd's effective settings, whether files exist, what the account has),
//! a list of problems or a [`Verdict`] goes out.
//!
//! writ enforcement is fully configured when, for the account's effective settings:
//! 1. `TrustedUserCAKeys` is set and the file exists (and is the one `sync` keeps, when
//!    the host config is readable);
//! 2. `AuthorizedPrincipalsCommand` runs `writ-principals check` (a program whose name ends
//!    in `writ-principals`, with `check` among its arguments), and that program exists;
//! 3. `PubkeyAuthentication` is on (certificates are public key authentication);
//! 4. the writ host config that `check` reads can be loaded (checked once by the caller).
//!
//! An account's verdict, in this order (the first that applies):
//! 1. `static-keys`: at least one authorized_keys entry (`cert-authority` lines included)
//!    in a file sshd reads for it;
//! 2. `no-login`: its shell is not a login shell;
//! 3. `password`: password login is possible, or cannot be ruled out;
//! 4. `unmanaged`: writ enforcement is not fully configured for it, or keys it may use
//!    cannot be seen (an `AuthorizedKeysCommand` that is not writ's, an authorized_keys
//!    file not read);
//! 5. `writ-only`.

use std::path::Path;

use super::model::Verdict;
use super::root::{ResolveError, Root};
use super::sshd::{Settings, split_args};

/// The program name writ's commands end in.
const WRIT_PROGRAM: &str = "writ-principals";

/// The facts a verdict is decided from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Usable authorized_keys entries.
    pub static_keys: u64,
    /// Whether a file or command may hold keys the inventory could not see.
    pub unseen_keys: bool,
    /// Whether the shell is a login shell.
    pub login_shell: bool,
    /// Whether password login is possible (`None`: unknown).
    pub password_login: Option<bool>,
    /// Whether writ enforcement is fully configured for the account.
    pub enforced: bool,
}

/// The verdict (see the module documentation for the rules, applied in order).
pub fn decide(facts: &Facts) -> Verdict {
    if facts.static_keys > 0 {
        Verdict::StaticKeys
    } else if !facts.login_shell {
        Verdict::NoLogin
    } else if facts.password_login != Some(false) {
        Verdict::Password
    } else if !facts.enforced || facts.unseen_keys {
        Verdict::Unmanaged
    } else {
        Verdict::WritOnly
    }
}

/// Whether `command` runs writ-principals (with `subcommand` among its arguments when
/// given).
pub fn is_writ_command(command: &str, subcommand: Option<&str>) -> bool {
    let words = split_args(command);
    let Some((program, args)) = words.split_first() else {
        return false;
    };
    program
        .rsplit('/')
        .next()
        .unwrap_or(program)
        .ends_with(WRIT_PROGRAM)
        && subcommand.is_none_or(|sub| args.iter().any(|a| a == sub))
}

/// The `AuthorizedKeysCommand` that may give keys the inventory cannot see: any that is
/// not writ-principals' own.
pub fn foreign_keys_command(settings: &Settings) -> Option<&str> {
    settings
        .authorized_keys_command
        .as_deref()
        .filter(|command| !is_writ_command(command, None))
}

/// What is missing from writ's enforcement under `settings` (rules 1–3 of the module
/// documentation); `trusted_keys_file` is the file `sync` keeps, when known.
pub fn problems(settings: &Settings, root: &Root, trusted_keys_file: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    match settings.trusted_user_ca_keys.as_deref() {
        None => problems.push(
            "TrustedUserCAKeys is not set: sshd trusts no CA, so writ certificates cannot log \
             in (sshd_config: TrustedUserCAKeys /var/lib/writ/trusted_user_ca_keys)"
                .to_owned(),
        ),
        Some(file) => {
            if !exists(root, file) {
                problems.push(format!(
                    "TrustedUserCAKeys {} does not exist (run `writ-principals sync`)",
                    escape(file)
                ));
            }
            if let Some(expected) = trusted_keys_file
                && Path::new(file) != expected
            {
                problems.push(format!(
                    "TrustedUserCAKeys is {}, not {}, the file `writ-principals sync` keeps \
                     current",
                    escape(file),
                    expected.display()
                ));
            }
        }
    }
    match settings.authorized_principals_command.as_deref() {
        None => problems.push(
            "AuthorizedPrincipalsCommand is not set: `writ-principals check` does not decide \
             what a certificate admits (sshd_config: AuthorizedPrincipalsCommand \
             /usr/local/bin/writ-principals check --config /etc/writ/host.toml -- %u %k)"
                .to_owned(),
        ),
        Some(command) if !is_writ_command(command, Some("check")) => problems.push(format!(
            "AuthorizedPrincipalsCommand runs {}, not `writ-principals check`",
            escape(command)
        )),
        Some(command) => {
            let program = split_args(command).into_iter().next().unwrap_or_default();
            if program.starts_with('/') && !exists(root, &program) {
                problems.push(format!(
                    "AuthorizedPrincipalsCommand's program {} does not exist",
                    escape(&program)
                ));
            }
        }
    }
    if !settings.pubkey_authentication {
        problems
            .push("PubkeyAuthentication is no: certificates cannot be used (nor keys)".to_owned());
    }
    problems
}

fn exists(root: &Root, host_path: &str) -> bool {
    match root.resolve(Path::new(host_path)) {
        Ok(resolved) => std::fs::metadata(root.real(&resolved.path)).is_ok(),
        Err(ResolveError::NotFound | ResolveError::TooManySymlinks | ResolveError::Io(_)) => false,
    }
}

fn escape(text: &str) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writ_formats::text::write_escaped(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            static_keys: 0,
            unseen_keys: false,
            login_shell: true,
            password_login: Some(false),
            enforced: true,
        }
    }

    #[test]
    fn verdict_order() {
        assert_eq!(decide(&facts()), Verdict::WritOnly);
        let keys = Facts {
            static_keys: 1,
            login_shell: false,
            password_login: None,
            enforced: false,
            ..facts()
        };
        assert_eq!(decide(&keys), Verdict::StaticKeys);
        let nologin = Facts {
            login_shell: false,
            password_login: None,
            ..facts()
        };
        assert_eq!(decide(&nologin), Verdict::NoLogin);
        let unknown_password = Facts {
            password_login: None,
            enforced: false,
            ..facts()
        };
        assert_eq!(decide(&unknown_password), Verdict::Password);
        let unenforced = Facts {
            enforced: false,
            ..facts()
        };
        assert_eq!(decide(&unenforced), Verdict::Unmanaged);
        let unseen = Facts {
            unseen_keys: true,
            ..facts()
        };
        assert_eq!(decide(&unseen), Verdict::Unmanaged);
    }

    #[test]
    fn writ_commands() {
        assert!(is_writ_command(
            "/usr/local/bin/writ-principals check --config /etc/writ/host.toml -- %u %k",
            Some("check")
        ));
        assert!(!is_writ_command(
            "/usr/local/bin/writ-principals sync",
            Some("check")
        ));
        assert!(!is_writ_command("/usr/bin/lookup check", Some("check")));
        assert!(!is_writ_command(
            "/usr/bin/writ-principals-evil/x check",
            Some("check")
        ));
        assert!(!is_writ_command("", None));
    }

    #[test]
    fn enforcement_problems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Root::new(dir.path()).expect("root");
        let mut settings = Settings::default();
        let found = problems(&settings, &root, None);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("TrustedUserCAKeys is not set"));
        assert!(found[1].starts_with("AuthorizedPrincipalsCommand is not set"));
        std::fs::create_dir_all(dir.path().join("var/lib/writ")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("usr/bin")).expect("mkdir");
        std::fs::write(dir.path().join("var/lib/writ/trusted_user_ca_keys"), "").expect("write");
        std::fs::write(dir.path().join("usr/bin/writ-principals"), "").expect("write");
        settings.trusted_user_ca_keys = Some("/var/lib/writ/trusted_user_ca_keys".to_owned());
        settings.authorized_principals_command =
            Some("/usr/bin/writ-principals check -- %u %k".to_owned());
        let expected = Path::new("/var/lib/writ/trusted_user_ca_keys");
        assert!(problems(&settings, &root, Some(expected)).is_empty());
        let found = problems(
            &settings,
            &root,
            Some(Path::new("/srv/writ/trusted_user_ca_keys")),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        settings.authorized_principals_command = Some("/usr/sbin/other %u".to_owned());
        settings.pubkey_authentication = false;
        let found = problems(&settings, &root, Some(expected));
        assert_eq!(found.len(), 2, "{found:?}");
        settings.authorized_keys_command = Some("/usr/bin/sss_ssh_authorizedkeys %u".to_owned());
        assert!(foreign_keys_command(&settings).is_some());
    }
}
