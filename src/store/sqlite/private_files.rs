//! The database holds the encrypted CA keys and the audit log: nobody but its owner (and a
//! group the operator chose) may read it. A new database, and the directory it is created
//! in, are made private (0600 / 0700) before SQLite opens them; SQLite gives its WAL and
//! shared-memory files the database file's mode. An existing database, WAL or shm file
//! that any local user can read or write loses those bits, with a warning. This module
//! never loosens a mode and never touches a file's contents.

use std::fs::{DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Mode of a database file writ creates.
const DATABASE_MODE: u32 = 0o600;
/// Mode of a directory writ creates for a database.
const DIRECTORY_MODE: u32 = 0o700;
/// Permission bits for "every local user".
const WORLD: u32 = 0o007;

fn unavailable(what: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", what.display()))
}

/// Create `path`'s directory and the (empty) database file privately if they do not exist;
/// take world access away from an existing database and its WAL/shm files.
pub(super) fn prepare(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(DIRECTORY_MODE)
            .create(parent)
            .map_err(|e| unavailable(parent, e))?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DATABASE_MODE)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(unavailable(path, e)),
    }
    for file in [
        path.to_owned(),
        sibling(path, "-wal"),
        sibling(path, "-shm"),
    ] {
        restrict(&file)?;
    }
    Ok(())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Remove world permissions from `file`, if it exists and has any.
fn restrict(file: &Path) -> Result<(), StoreError> {
    let metadata = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unavailable(file, e)),
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & WORLD != 0 {
        let private = mode & !WORLD;
        tracing::warn!(
            file = ?file.display().to_string(),
            from = format!("{mode:04o}"),
            to = format!("{private:04o}"),
            "the database was readable or writable by every local user; access removed"
        );
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(private))
            .map_err(|e| unavailable(file, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_database_and_its_directory_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/sub/writ.db");
        prepare(&path).expect("prepare");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("data/sub")), 0o700);
    }

    #[test]
    fn world_access_is_taken_from_existing_files_and_group_access_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        for (file, m) in [(path.clone(), 0o644), (sibling(&path, "-wal"), 0o666)] {
            std::fs::write(&file, b"").expect("write");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m)).expect("chmod");
        }
        prepare(&path).expect("prepare");
        assert_eq!(mode(&path), 0o640);
        assert_eq!(mode(&sibling(&path, "-wal")), 0o660);
    }
}
