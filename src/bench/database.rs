//! `writ bench issue --postgres URL`: a fresh database for the bench's own server(s),
//! `writ_bench_<random hex>` on the PostgreSQL server `URL` names (password from
//! `PGPASSWORD`), with a password file in the bench directory for `[storage]
//! password_file`; dropped (with any connection still open to it) when the run ends. It
//! never touches a database it did not create.

use std::path::Path;
use std::str::FromStr;

use rand_core::{OsRng, RngCore};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::BenchError;

/// A database that exists until this is dropped.
pub struct BenchDatabase {
    name: String,
    server: PgConnectOptions,
    /// `[storage] url` for the bench's servers (no password in it).
    pub url: String,
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(format!("starting a runtime: {e}")))
}

impl BenchDatabase {
    /// Create a fresh database on the server `server_url` names (a role that may
    /// `CREATE DATABASE`), and write its password (`PGPASSWORD`) to `password_file`.
    pub fn create(server_url: &str, password_file: &Path) -> Result<BenchDatabase, BenchError> {
        if crate::store::postgres::url_has_password(server_url) {
            return Err(BenchError::Usage(
                "--postgres must not hold a password: set PGPASSWORD".into(),
            ));
        }
        let server = PgConnectOptions::from_str(server_url)
            .map_err(|e| BenchError::Usage(format!("--postgres does not parse: {e}")))?;
        let mut bytes = [0u8; 6];
        OsRng.fill_bytes(&mut bytes);
        let name = format!("writ_bench_{}", crate::audit::hex(&bytes));
        runtime()?.block_on(async {
            let mut connection = PgConnection::connect_with(&server).await.map_err(|e| {
                BenchError::Setup(format!(
                    "cannot connect to {}: {e}",
                    crate::text::redact_url(server_url)
                ))
            })?;
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut connection)
                .await
                .map_err(|e| BenchError::Setup(format!("CREATE DATABASE {name}: {e}")))?;
            Ok::<(), BenchError>(())
        })?;
        let password = std::env::var("PGPASSWORD").unwrap_or_default();
        super::issue::write_file(password_file, password.as_bytes(), 0o600)?;
        let base = server_url.split('?').next().unwrap_or(server_url);
        let authority = base.find("://").map_or(0, |i| i + 3);
        let server_part = match base[authority..].find('/') {
            Some(slash) => &base[..authority + slash],
            None => base,
        };
        Ok(BenchDatabase {
            url: format!("{server_part}/{name}"),
            name,
            server,
        })
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let Ok(runtime) = runtime() else { return };
        runtime.block_on(async {
            if let Ok(mut connection) = PgConnection::connect_with(&self.server).await {
                let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                if let Err(e) = sqlx::query(AssertSqlSafe(drop))
                    .execute(&mut connection)
                    .await
                {
                    eprintln!("writ bench: could not drop {}: {e}", self.name);
                }
            }
        });
    }
}
