//! The writ certificate profile: how a task is written into an SSH user certificate and
//! read back out. The CA (which builds certificates) and `writ-principals` (which admits
//! them) both use this module, so the format is defined in exactly one place.
//!
//! A writ certificate carries:
//! - principals `writ:<task_id>:<login>`, one per login the task names. They never equal
//!   a bare login (security invariant 1), so a host without `writ-principals` (which only
//!   accepts principals equal to the login) refuses them;
//! - the extension [`EXT_TASK`] holding the task id and [`EXT_HOSTS`] holding the task's
//!   host patterns, comma-separated, and [`EXT_TASK_EXPIRES`] holding when the task
//!   expires (so a host ends the task's sessions then, though each certificate may be
//!   shorter). Extensions are covered by the CA signature and ignored by sshd.
//!
//! This module is pure: no I/O, no clock (callers pass `now`).

use crate::glob;

/// Certificate extension holding the task id.
pub const EXT_TASK: &str = "task@writ.dev";
/// Certificate extension holding the task's host patterns, comma-separated.
pub const EXT_HOSTS: &str = "hosts@writ.dev";
/// Certificate extension holding the task's expiry, Unix seconds in decimal.
pub const EXT_TASK_EXPIRES: &str = "task-expires@writ.dev";
/// Prefix of every principal writ puts in a certificate.
pub const PRINCIPAL_PREFIX: &str = "writ:";

/// Longest accepted host pattern (a DNS name is at most 253 characters).
pub const MAX_HOST_PATTERN_LEN: usize = 253;

/// The principal that binds `login` to `task_id`.
pub fn principal(task_id: &str, login: &str) -> String {
    format!("{PRINCIPAL_PREFIX}{task_id}:{login}")
}

/// A task id as writ generates it: 32 lowercase hexadecimal characters (128 random bits).
pub fn is_valid_task_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A POSIX-portable login name: `^[a-z_][a-z0-9_-]{0,31}$`. Nothing else may become part
/// of a principal, so no login can inject a separator, a newline or a wildcard.
pub fn is_valid_login(login: &str) -> bool {
    let bytes = login.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || *first == b'_')
                && rest.len() <= 31
                && rest.iter().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-'
                })
        }
        None => false,
    }
}

/// A host pattern: lowercase DNS characters and `*`, at most 253 characters, no commas
/// (the extension separator) and not empty.
pub fn is_valid_host_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= MAX_HOST_PATTERN_LEN
        && pattern
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.*_".contains(&b))
}

/// A host name a host certificate may name: a DNS name in lowercase (labels of 1 to 63
/// characters `a-z`, `0-9`, `-`, not starting or ending with `-`, separated by dots), at
/// most 253 characters; no wildcard, no trailing dot. A single label (`web1`) is a name.
pub fn is_valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOST_PATTERN_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Encode host patterns for [`EXT_HOSTS`].
pub fn encode_hosts(hosts: &[String]) -> String {
    hosts.join(",")
}

/// Decode [`EXT_HOSTS`]; `None` if any entry is not a valid host pattern.
pub fn decode_hosts(value: &str) -> Option<Vec<String>> {
    let hosts: Vec<String> = value.split(',').map(str::to_owned).collect();
    hosts
        .iter()
        .all(|h| is_valid_host_pattern(h))
        .then_some(hosts)
}

/// True when `host_name` (compared in lowercase) matches one of `patterns`.
pub fn host_allowed(patterns: &[String], host_name: &str) -> bool {
    let host = host_name.to_ascii_lowercase();
    patterns.iter().any(|p| glob::matches(p, &host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins() {
        for ok in [
            "deploy",
            "_svc",
            "a",
            "ci-runner_2",
            "abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert!(is_valid_login(ok), "{ok}");
        }
        for bad in [
            "",
            "Root",
            "1abc",
            "a,b",
            "a\nb",
            "a*",
            "a b",
            "a:b",
            "-x",
            "abcdefghijklmnopqrstuvwxyz0123456",
        ] {
            assert!(!is_valid_login(bad), "{bad:?}");
        }
    }

    #[test]
    fn principals_are_never_bare_logins() {
        let p = principal("0123456789abcdef0123456789abcdef", "deploy");
        assert_eq!(p, "writ:0123456789abcdef0123456789abcdef:deploy");
        assert!(!is_valid_login(&p));
    }

    #[test]
    fn hosts_round_trip_and_match() {
        let hosts = vec![
            "*.prod.example.com".to_owned(),
            "db-1.example.com".to_owned(),
        ];
        assert_eq!(decode_hosts(&encode_hosts(&hosts)), Some(hosts.clone()));
        assert!(host_allowed(&hosts, "Web-01.PROD.example.com"));
        assert!(host_allowed(&hosts, "db-1.example.com"));
        assert!(!host_allowed(&hosts, "db-2.example.com"));
        assert_eq!(decode_hosts("a,,b"), None);
        assert_eq!(decode_hosts("a b"), None);
    }

    #[test]
    fn host_names() {
        for ok in ["web1", "web-1.prod.example.com", "a.b", "0.example.com"] {
            assert!(is_valid_host_name(ok), "{ok}");
        }
        for bad in [
            "",
            "*.example.com",
            "Web1.example.com",
            "web1.",
            ".web1",
            "a..b",
            "-web",
            "web-",
            "web_1",
            "web 1",
            "a,b",
            &"a".repeat(64),
            &format!("{}.example", "a.".repeat(127)),
        ] {
            assert!(!is_valid_host_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn task_ids() {
        assert!(is_valid_task_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_valid_task_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_valid_task_id("../etc"));
    }
}
