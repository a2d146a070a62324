//! The host's accounts: `/etc/passwd` (login, uid, gid, home, shell), `/etc/group` (the
//! groups sshd's `Match Group` sees) and `/etc/shadow` (whether a password is set), and
//! the rule for whether password login is possible for an account under sshd's effective
//! settings. Pure parsing and deciding: the files are read by the caller.
//!
//! It never keeps or reports a password hash: a shadow entry becomes a
//! [`PasswordState`] as soon as it is read.

use std::collections::HashMap;

use super::sshd::Settings;

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The login name.
    pub login: String,
    /// The password field (`x` when it is in `/etc/shadow`). Only its state is used.
    passwd_field: PasswordState,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory (a host path).
    pub home: String,
    /// Its shell (empty means `/bin/sh`).
    pub shell: String,
}

/// What a password field allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordState {
    /// A hash that may match some password.
    Usable,
    /// Empty: any password is accepted only with `PermitEmptyPasswords yes`.
    Empty,
    /// Locked (`!…`, `*…`) or a placeholder that no password matches (`x` without a
    /// shadow entry).
    Locked,
}

impl PasswordState {
    fn of(field: &str) -> PasswordState {
        if field.is_empty() {
            PasswordState::Empty
        } else if field.starts_with('!') || field.starts_with('*') || field == "x" {
            PasswordState::Locked
        } else {
            PasswordState::Usable
        }
    }
}

/// A line of a system file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    /// Line number (from 1).
    pub line: usize,
    /// What is wrong.
    pub error: &'static str,
}

/// Parse `/etc/passwd`. Blank lines, comments and NIS `+`/`-` lines are not accounts;
/// malformed lines are returned separately.
pub fn parse_passwd(text: &str) -> (Vec<Account>, Vec<BadEntry>) {
    let mut accounts = Vec::new();
    let mut bad = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index.saturating_add(1);
        if line.trim().is_empty()
            || line.starts_with('#')
            || line.starts_with('+')
            || line.starts_with('-')
        {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let [login, password, uid, gid, _gecos, home, shell] = fields.as_slice() else {
            bad.push(BadEntry {
                line: number,
                error: "not 7 colon-separated fields",
            });
            continue;
        };
        let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
            bad.push(BadEntry {
                line: number,
                error: "uid or gid is not a number",
            });
            continue;
        };
        if login.is_empty() {
            bad.push(BadEntry {
                line: number,
                error: "empty login",
            });
            continue;
        }
        accounts.push(Account {
            login: (*login).to_owned(),
            passwd_field: PasswordState::of(password),
            uid,
            gid,
            home: (*home).to_owned(),
            shell: (*shell).to_owned(),
        });
    }
    (accounts, bad)
}

/// Parse `/etc/shadow` into each login's [`PasswordState`]; the hashes are dropped here.
pub fn parse_shadow(text: &str) -> HashMap<String, PasswordState> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let login = fields.next().filter(|l| !l.is_empty())?;
            let hash = fields.next()?;
            Some((login.to_owned(), PasswordState::of(hash)))
        })
        .collect()
}

/// Each account's groups (primary and supplementary names) from `/etc/group`.
pub fn groups_of(group_text: &str, accounts: &[Account]) -> HashMap<String, Vec<String>> {
    let mut by_gid: HashMap<u32, String> = HashMap::new();
    let mut members: HashMap<&str, Vec<String>> = HashMap::new();
    for line in group_text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _password, gid, list] = fields.as_slice() else {
            continue;
        };
        if let Ok(gid) = gid.parse::<u32>() {
            by_gid.entry(gid).or_insert_with(|| (*name).to_owned());
        }
        for member in list.split(',').filter(|m| !m.is_empty()) {
            members.entry(member).or_default().push((*name).to_owned());
        }
    }
    accounts
        .iter()
        .map(|account| {
            let mut groups: Vec<String> = by_gid.get(&account.gid).cloned().into_iter().collect();
            for group in members.get(account.login.as_str()).into_iter().flatten() {
                if !groups.contains(group) {
                    groups.push(group.clone());
                }
            }
            (account.login.clone(), groups)
        })
        .collect()
}

/// Shells that end a login at once rather than give a shell.
const NO_LOGIN_SHELLS: [&str; 6] = ["nologin", "false", "true", "sync", "shutdown", "halt"];

/// Whether `shell` gives an interactive login (an empty shell is `/bin/sh`).
pub fn is_login_shell(shell: &str) -> bool {
    let name = shell.rsplit('/').next().unwrap_or(shell);
    !NO_LOGIN_SHELLS.contains(&name)
}

/// Whether password login is possible for `account` under `settings`: `None` when it
/// depends on `/etc/shadow` and that could not be read (`shadow` is `None`).
///
/// Possible when sshd offers `password` or `keyboard-interactive` (and
/// `AuthenticationMethods` allows one of them), root only with `PermitRootLogin yes`, and
/// the password is usable: set and not locked, or empty with `PermitEmptyPasswords yes`.
pub fn password_login(
    account: &Account,
    settings: &Settings,
    shadow: Option<&HashMap<String, PasswordState>>,
) -> Option<bool> {
    let offered = (settings.password_authentication || settings.kbd_interactive_authentication)
        && methods_allow_password(&settings.authentication_methods);
    if !offered || (account.uid == 0 && settings.permit_root_login != "yes") {
        return Some(false);
    }
    let shadow = shadow?;
    let state = match shadow.get(&account.login) {
        Some(state) => *state,
        None if account.passwd_field == PasswordState::Locked => PasswordState::Locked,
        // A hash in /etc/passwd itself (no shadow entry).
        None => account.passwd_field,
    };
    Some(match state {
        PasswordState::Usable => true,
        PasswordState::Empty => settings.permit_empty_passwords,
        PasswordState::Locked => false,
    })
}

/// Whether `AuthenticationMethods` lets a password or keyboard-interactive method count.
fn methods_allow_password(methods: &str) -> bool {
    let methods = methods.trim();
    methods.is_empty()
        || methods.eq_ignore_ascii_case("any")
        || methods.split_whitespace().any(|list| {
            list.split(',')
                .any(|method| method == "password" || method.starts_with("keyboard-interactive"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# comment
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
+nis
broken:x:abc:1:x:/:/bin/sh
short:x:1
old:$6$salt$hash:1001:1001::/home/old:
";

    fn settings() -> Settings {
        Settings::default()
    }

    #[test]
    fn passwd_lines() {
        let (accounts, bad) = parse_passwd(PASSWD);
        let logins: Vec<&str> = accounts.iter().map(|a| a.login.as_str()).collect();
        assert_eq!(logins, ["root", "daemon", "alice", "old"]);
        assert_eq!(accounts[2].home, "/home/alice");
        assert_eq!(accounts[2].uid, 1000);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [6, 7]);
        assert!(is_login_shell("/bin/bash"));
        assert!(is_login_shell(""));
        assert!(!is_login_shell("/usr/sbin/nologin"));
        assert!(!is_login_shell("/bin/false"));
    }

    #[test]
    fn password_rules() {
        let (accounts, _) = parse_passwd(PASSWD);
        let shadow = parse_shadow("root:$6$x$y:1::::::\ndaemon:*:1::::::\nalice:!$6$x$y:1::::::\n");
        let mut s = settings();
        let by = |login: &str| accounts.iter().find(|a| a.login == login).expect("account");
        // Root needs PermitRootLogin yes (default prohibit-password).
        assert_eq!(password_login(by("root"), &s, Some(&shadow)), Some(false));
        s.permit_root_login = "yes".to_owned();
        assert_eq!(password_login(by("root"), &s, Some(&shadow)), Some(true));
        assert_eq!(password_login(by("daemon"), &s, Some(&shadow)), Some(false));
        assert_eq!(password_login(by("alice"), &s, Some(&shadow)), Some(false));
        // A hash in passwd itself, no shadow entry.
        assert_eq!(password_login(by("old"), &s, Some(&shadow)), Some(true));
        // Shadow unreadable: unknown.
        assert_eq!(password_login(by("alice"), &s, None), None);
        // Empty password only with PermitEmptyPasswords.
        let empty = parse_shadow("alice::1::::::\n");
        assert_eq!(password_login(by("alice"), &s, Some(&empty)), Some(false));
        s.permit_empty_passwords = true;
        assert_eq!(password_login(by("alice"), &s, Some(&empty)), Some(true));
        // Neither method offered: impossible whatever shadow says.
        s.password_authentication = false;
        s.kbd_interactive_authentication = false;
        assert_eq!(password_login(by("old"), &s, None), Some(false));
        s.password_authentication = true;
        s.authentication_methods = "publickey".to_owned();
        assert_eq!(password_login(by("old"), &s, None), Some(false));
        s.authentication_methods = "publickey,password publickey".to_owned();
        assert_eq!(password_login(by("old"), &s, None), None);
    }

    #[test]
    fn groups() {
        let (accounts, _) = parse_passwd(PASSWD);
        let groups = groups_of(
            "root:x:0:\nalice:x:1000:\nstaff:x:50:alice,bob\nsudo:x:27:alice\n",
            &accounts,
        );
        assert_eq!(groups["alice"], ["alice", "staff", "sudo"]);
        assert_eq!(groups["root"], ["root"]);
        assert!(groups["old"].is_empty());
    }
}
