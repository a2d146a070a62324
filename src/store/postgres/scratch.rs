//! Scratch databases for the PostgreSQL tests: each test gets a database of its own,
//! `writ_contract_<random hex>`, created on the server `WRIT_TEST_POSTGRES_URL` names
//! (the password from `PGPASSWORD` or `~/.pgpass`, as for the store) and dropped, with
//! whatever connections are still open to it, when the guard is dropped.
//!
//! Without `WRIT_TEST_POSTGRES_URL` a test fails with what to do: set it, or leave the
//! PostgreSQL tests out with `cargo test --workspace -- --skip postgres`. A test that
//! passed without a server would say nothing of the backend. Test code only; never
//! touches a database it did not create.

use std::str::FromStr;

use rand_core::{OsRng, RngCore};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::store::StoreOptions;

/// Names the PostgreSQL server the tests create their databases on, e.g.
/// `postgres://writ_test@127.0.0.1:5432/postgres` (a role with CREATEDB).
pub(crate) const URL_ENV: &str = "WRIT_TEST_POSTGRES_URL";

/// A database that exists until this is dropped.
pub(crate) struct ScratchDatabase {
    name: String,
    server: PgConnectOptions,
    /// Options that open a store on it.
    pub(crate) options: StoreOptions,
}

/// The server's URL, or a failure that says how to get one or skip these tests.
fn server_url() -> String {
    match std::env::var(URL_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{URL_ENV} is not set: the PostgreSQL tests need a server, e.g. \
             {URL_ENV}=postgres://writ_test@127.0.0.1:5432/postgres PGPASSWORD=writ_test \
             (a role with LOGIN CREATEDB; .ci/run sets one up), or leave them out with \
             `cargo test --workspace -- --skip postgres`"
        ),
    }
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

impl ScratchDatabase {
    /// Create a fresh, empty database.
    pub(crate) async fn create() -> ScratchDatabase {
        let url = server_url();
        let server = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("{URL_ENV} does not parse: {e}"));
        let mut bytes = [0_u8; 8];
        OsRng.fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("writ_contract_{hex}");
        let mut connection = PgConnection::connect_with(&server)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to the server {URL_ENV} names ({}): {e}",
                    crate::text::redact_url(&url)
                )
            });
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("cannot create {name}: {e}"));
        // Not waiting for the close handshake: the connection is dropped either way.
        drop(connection);
        ScratchDatabase {
            options: StoreOptions::new(&with_database(&url, &name)),
            name,
            server,
        }
    }
}

impl Drop for ScratchDatabase {
    /// Drop the database, on a thread with a runtime of its own (this may run inside a
    /// test's runtime, which must not be blocked on). A failure is reported, not raised:
    /// a panic here could abort a test that is already failing.
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect_with(&server)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
                connection.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop scratch database {}: {e}", self.name),
            Err(_) => eprintln!("dropping scratch database {} panicked", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_scratch_url_names_the_scratch_database() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=require", "x"),
            "postgres://u@h/x?sslmode=require"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
