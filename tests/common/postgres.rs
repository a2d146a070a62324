//! Scratch PostgreSQL databases for the integration tests that run `writ serve` replicas
//! on PostgreSQL: one fresh database per test on the server `WRIT_TEST_POSTGRES_URL`
//! names (password from `PGPASSWORD`), dropped with its connections when the guard goes.
//! Without that variable a test fails and says how to set it, or to leave these tests
//! out with `--skip postgres`; a test that passed without a server would say nothing.

use std::str::FromStr;

use rand_core::{OsRng, RngCore};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::runtime;

/// The server the tests create their databases on.
pub const URL_ENV: &str = "WRIT_TEST_POSTGRES_URL";

/// A database that exists until this is dropped.
pub struct ScratchDatabase {
    /// Its name.
    pub name: String,
    /// A URL naming it, without a password (the password is in [`ScratchDatabase::password`]).
    pub url: String,
    server: PgConnectOptions,
}

fn server_url() -> String {
    match std::env::var(URL_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{URL_ENV} is not set: the PostgreSQL replica tests need a server, e.g. \
             {URL_ENV}=postgres://writ_test@127.0.0.1:5432/postgres PGPASSWORD=writ_test \
             (a role with LOGIN CREATEDB; .ci/run sets one up), or leave them out with \
             `cargo test --workspace -- --skip postgres`"
        ),
    }
}

impl ScratchDatabase {
    /// Create a fresh, empty database called `writ_<prefix>_<random hex>`.
    pub fn create(prefix: &str) -> ScratchDatabase {
        let url = server_url();
        let server = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("{URL_ENV} does not parse: {e}"));
        let mut bytes = [0u8; 6];
        OsRng.fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("writ_{prefix}_{hex}");
        runtime().block_on(async {
            let mut connection = PgConnection::connect_with(&server)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to the server {URL_ENV} names: {e}"));
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut connection)
                .await
                .expect("create the scratch database");
        });
        let base = url.split('?').next().unwrap_or(&url);
        let authority = base.find("://").map_or(0, |i| i + 3);
        let server_part = match base[authority..].find('/') {
            Some(slash) => &base[..authority + slash],
            None => base,
        };
        ScratchDatabase {
            url: format!("{server_part}/{name}"),
            name,
            server,
        }
    }

    /// The password writ must use (`PGPASSWORD`), for a `password_file`.
    pub fn password() -> String {
        std::env::var("PGPASSWORD").unwrap_or_default()
    }

    /// The host and port of the server, `HOST:PORT`.
    pub fn server_address(&self) -> String {
        format!("{}:{}", self.server.get_host(), self.server.get_port())
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Its own thread and runtime: Drop may run inside the shared runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(mut connection) = PgConnection::connect_with(&server).await {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut connection)
                    .await;
                }
            });
        })
        .join();
    }
}
