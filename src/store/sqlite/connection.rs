//! Connections to the database file: how each is opened (the pragmas every writ
//! connection shares, the writer's extras), and the pool of read-only connections that
//! serve reads on blocking threads. Readers are opened `query_only`: a bug in a read
//! cannot write, and every write goes through the writer (`super::writer`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// How long a statement waits for another process's write lock (`writ admin` against a
/// running server) before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle read connections kept open.
const IDLE_READERS: usize = 8;

/// A connection with the settings every writ connection has.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // A commit is on disk before a certificate leaves.
    connection.pragma_update(None, "synchronous", "FULL")?;
    // Any statement journal stays in memory, not in a temporary file created and
    // unlinked on every batch.
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(connection)
}

/// A `query_only` connection to the existing database at `path`, with the same settings
/// as the store's readers, for a caller that must not change the file (the store copy):
/// a missing file is an error rather than a new, empty database. Opened read-write but
/// `query_only`, as the readers are, because a WAL database cannot always be opened
/// read-only (its shared-memory file may have to be created).
pub(super) fn open_existing_query_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.is_file() {
        return Err(StoreError::Unavailable(format!(
            "{}: no database file there",
            path.display()
        )));
    }
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "query_only", "ON")?;
    Ok(connection)
}

/// Make the file's journal a WAL (a property of the file, kept from then on): readers
/// never block the writer nor the writer them.
pub(super) fn use_wal(connection: &Connection) -> Result<(), StoreError> {
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "the database could not use a write-ahead log (journal mode {mode})"
        )))
    }
}

/// Read-only connections, opened when needed and kept when idle.
#[derive(Clone)]
pub(super) struct Readers(Arc<ReadersInner>);

struct ReadersInner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: &Path) -> Readers {
        Readers(Arc::new(ReadersInner {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Run `read` on an idle reader (or a new one) on a blocking thread.
    pub(super) async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.clone();
        tokio::task::spawn_blocking(move || readers.read_here(read))
            .await
            .map_err(|e| StoreError::Unavailable(format!("a read stopped: {e}")))?
    }

    fn read_here<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self
            .0
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let connection = match idle {
            Some(connection) => connection,
            None => {
                let connection = open(&self.0.path)?;
                connection.pragma_update(None, "query_only", "ON")?;
                connection
            }
        };
        let result = read(&connection);
        let mut idle = self
            .0
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < IDLE_READERS && connection.is_autocommit() {
            idle.push(connection);
        }
        result
    }
}
