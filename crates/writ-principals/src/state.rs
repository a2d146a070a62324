//! Who may have written the state directory: the rule `check`, `session` and `sync` apply
//! before they trust anything in `state_dir`.
//!
//! `trusted_user_ca_keys` decides which CA keys this host trusts and `revocations.json`
//! which certificates it refuses, so whoever can write them can log in as anyone writ
//! admits. The state directory and each file read from it must therefore be owned by
//! root or by the configured `sync_user`, and writable by neither group nor others;
//! anything else is refused (fail closed). The checks use metadata the caller already
//! has — one `stat` of the directory, and the `fstat` of each file handle it opened — so
//! `check`, which runs on every SSH authentication attempt, pays one system call more.
//! A `sync_user` given by name is looked up in `/etc/passwd` only when a file is not
//! owned by root.
//!
//! This module never looks above `state_dir`: its parent directories must be kept
//! root-owned and not writable by others by whoever installs the host (as for sshd's
//! own files).

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::SyncUser;

/// Where the system's users are listed, for resolving a `sync_user` name.
const PASSWD_FILE: &str = "/etc/passwd";

/// Mode bits that let someone other than the owner write: group- and world-writable.
const FOREIGN_WRITE_BITS: u32 = 0o022;

/// A state directory or file writ does not trust.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing {}: {reason}", path.display())]
pub struct InsecureState {
    /// The directory or file.
    pub path: PathBuf,
    /// What is wrong with it, and what would be accepted.
    pub reason: String,
}

/// The users allowed to own the state directory and its files: root, and `sync_user` if
/// configured.
#[derive(Debug, Clone, Copy)]
pub struct Owners<'a> {
    sync_user: Option<&'a SyncUser>,
}

impl<'a> Owners<'a> {
    /// Root, plus `sync_user` when given.
    pub fn new(sync_user: Option<&'a SyncUser>) -> Owners<'a> {
        Owners { sync_user }
    }

    /// Whether `uid` may own state: root always; otherwise it must be the sync user.
    pub fn allows(&self, uid: u32) -> bool {
        uid == 0
            || match self.sync_user {
                None => false,
                Some(SyncUser::Uid(allowed)) => uid == *allowed,
                Some(SyncUser::Name(name)) => {
                    let passwd = std::fs::read_to_string(PASSWD_FILE).unwrap_or_default();
                    uid_in_passwd(&passwd, name) == Some(uid)
                }
            }
    }

    /// "root" or "root or sync_user …", for messages.
    pub fn describe(&self) -> String {
        match self.sync_user {
            None => "root (set sync_user in the host config to allow another user)".to_owned(),
            Some(SyncUser::Uid(uid)) => format!("root or sync_user uid {uid}"),
            Some(SyncUser::Name(name)) => format!("root or sync_user {name:?}"),
        }
    }
}

/// The rule itself, on the owner and mode of one directory or file.
fn judge(uid: u32, mode: u32, owners: &Owners<'_>) -> Result<(), String> {
    if mode & FOREIGN_WRITE_BITS != 0 {
        return Err(format!(
            "it is writable by group or others (mode {:04o}); chmod go-w it",
            mode & 0o7777
        ));
    }
    if !owners.allows(uid) {
        return Err(format!(
            "it is owned by uid {uid}; it must be owned by {}",
            owners.describe()
        ));
    }
    Ok(())
}

/// The state directory `dir` (one `stat`, following a symlink): a directory, owned by an
/// allowed owner, writable by nobody else.
pub fn check_dir(dir: &Path, owners: &Owners<'_>) -> Result<(), InsecureState> {
    let refuse = |reason: String| InsecureState {
        path: dir.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(dir).map_err(|e| refuse(format!("cannot stat it: {e}")))?;
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".to_owned()));
    }
    judge(meta.uid(), meta.permissions().mode(), owners).map_err(refuse)
}

/// A file of the state directory, by the metadata of its open handle: a regular file,
/// owned by an allowed owner, writable by nobody else.
pub fn check_file(path: &Path, meta: &Metadata, owners: &Owners<'_>) -> Result<(), InsecureState> {
    let refuse = |reason: String| InsecureState {
        path: path.to_owned(),
        reason,
    };
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".to_owned()));
    }
    judge(meta.uid(), meta.permissions().mode(), owners).map_err(refuse)
}

/// The uid of `name` in passwd(5) text.
fn uid_in_passwd(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next() != Some(name) {
            return None;
        }
        fields.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_ONLY: Owners<'static> = Owners { sync_user: None };

    #[test]
    fn root_owned_and_not_writable_by_others_is_trusted() {
        for mode in [0o755, 0o700, 0o644, 0o600, 0o1755, 0o40755] {
            assert_eq!(judge(0, mode, &ROOT_ONLY), Ok(()), "{mode:o}");
        }
    }

    #[test]
    fn group_or_world_writable_is_refused_whoever_owns_it() {
        let writ = SyncUser::Uid(998);
        for mode in [0o777, 0o775, 0o757, 0o1777, 0o664, 0o646, 0o620, 0o602] {
            for owners in [ROOT_ONLY, Owners::new(Some(&writ))] {
                let reason = judge(0, mode, &owners).expect_err("writable");
                assert!(reason.contains("writable by group or others"), "{reason}");
                assert!(judge(998, mode, &owners).is_err());
            }
        }
    }

    #[test]
    fn other_owners_are_refused_unless_they_are_the_sync_user() {
        let reason = judge(65534, 0o755, &ROOT_ONLY).expect_err("nobody");
        assert!(
            reason.contains("uid 65534") && reason.contains("sync_user"),
            "{reason}"
        );
        let writ = SyncUser::Uid(998);
        let owners = Owners::new(Some(&writ));
        assert_eq!(judge(998, 0o755, &owners), Ok(()));
        assert_eq!(judge(0, 0o644, &owners), Ok(()));
        assert!(judge(65534, 0o644, &owners).is_err());
    }

    #[test]
    fn sync_user_names_are_looked_up_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      writ:x:998:998::/var/lib/writ:/usr/sbin/nologin\n\
                      broken\n";
        assert_eq!(uid_in_passwd(passwd, "writ"), Some(998));
        assert_eq!(uid_in_passwd(passwd, "root"), Some(0));
        assert_eq!(uid_in_passwd(passwd, "wri"), None);
        assert_eq!(uid_in_passwd(passwd, "broken"), None);
        // The real file: root is uid 0 everywhere.
        let root = SyncUser::Name("root".to_owned());
        assert!(Owners::new(Some(&root)).allows(0));
        let unknown = SyncUser::Name("no-such-writ-user".to_owned());
        assert!(!Owners::new(Some(&unknown)).allows(12345));
    }
}
