//! Connections to the PostgreSQL server: how the `[storage]` options become the driver's
//! connection options (the URL with its `sslmode`/`sslrootcert` read as libpq reads them,
//! the password from `password_file` or else `PGPASSWORD`/`~/.pgpass`, a
//! `statement_timeout` on every connection), and the pool every read and write takes its
//! connection from.
//!
//! Never puts a password in a message or a log line, and never formats the driver's
//! options (their `Debug` shows the password): whatever it says about the URL goes
//! through [`crate::text::redact_url`]. A URL that carries a password is refused before
//! anything connects.

use std::str::FromStr;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::store::{StoreError, StoreOptions};
use crate::text::redact_url;

/// Whether `url` names a PostgreSQL database (the prefixes libpq accepts).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Whether `url` carries a password (`user:password@`, or a `password=` parameter):
/// exactly when redacting it changes it.
pub fn url_has_password(url: &str) -> bool {
    redact_url(url) != url
}

/// The driver's options for `options`; `PasswordInUrl` if the URL carries a password.
pub(super) fn connect_options(options: &StoreOptions) -> Result<PgConnectOptions, StoreError> {
    let url = options.url.as_str();
    if url_has_password(url) {
        return Err(StoreError::PasswordInUrl(redact_url(url)));
    }
    let mut connect = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("storage URL {:?}: {e}", redact_url(url))))?;
    if let Some(password) = &options.password {
        connect = connect.password(password);
    }
    // Milliseconds, at most the largest PostgreSQL accepts (validation of `[storage]
    // statement_timeout` keeps it far below).
    let statement_timeout = options
        .statement_timeout
        .as_millis()
        .min(u128::from(i32::MAX.unsigned_abs()));
    Ok(connect
        .application_name("writ")
        .options([("statement_timeout", statement_timeout)]))
}

/// A pool of at most `pool_size` connections; connects once now, so a wrong address,
/// password or certificate is reported when the store opens.
pub(super) async fn pool(
    connect: PgConnectOptions,
    options: &StoreOptions,
) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(options.pool_size.max(1))
        .acquire_timeout(options.connect_timeout)
        .connect_with(connect)
        .await
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to {:?}: {e}",
                redact_url(&options.url)
            ))
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_password_in_the_url_is_refused_and_never_shown() {
        for url in [
            "postgres://writ:hunter2@db/writ",
            "postgresql://writ:hunter2@db:5433/writ?sslmode=verify-full",
            "postgres://writ@db/writ?password=hunter2",
        ] {
            let refused = connect_options(&StoreOptions::new(url)).expect_err(url);
            assert!(matches!(refused, StoreError::PasswordInUrl(_)), "{refused}");
            let message = refused.to_string();
            assert!(!message.contains("hunter2"), "{message}");
            assert!(message.contains("password_file"), "{message}");
        }
    }

    #[test]
    fn sslmode_and_the_password_file_reach_the_driver() {
        let mut options =
            StoreOptions::new("postgres://writ@db.example:5433/writ?sslmode=verify-full");
        options.password = Some("from-the-file".to_owned().into());
        options.statement_timeout = Duration::from_secs(3);
        let connect = connect_options(&options).expect("options");
        assert_eq!(connect.get_host(), "db.example");
        assert_eq!(connect.get_port(), 5433);
        assert_eq!(connect.get_username(), "writ");
        assert_eq!(connect.get_database(), Some("writ"));
        assert!(matches!(
            connect.get_ssl_mode(),
            sqlx::postgres::PgSslMode::VerifyFull
        ));
        assert_eq!(connect.get_options(), Some("-c statement_timeout=3000"));
        assert!(is_postgres_url("postgresql://db/writ"));
        assert!(!is_postgres_url("sqlite://writ.db"));
    }
}
