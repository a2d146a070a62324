//! `writ admin default-config`: a complete, commented CA configuration to start from —
//! every key, with its default or a safe example value. The text lives in one place,
//! `contrib/writ.toml`, embedded here; tests check that `writ check-config` accepts it
//! with no risky-pattern warning, and that the README's configuration example parses too.

/// The example configuration (`contrib/writ.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../contrib/writ.toml");

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::DEFAULT_CONFIG;
    use crate::admin::check::{CheckConfigArgs, check, risks};
    use crate::config::Config;

    #[test]
    fn the_default_config_is_valid_and_has_no_risky_pattern() {
        let path = Path::new("writ.toml");
        let config = Config::parse(DEFAULT_CONFIG, path).expect("the default config is valid");
        assert_eq!(risks(&config), []);
        let args = CheckConfigArgs {
            json: false,
            offline: true,
            timeout: Duration::from_secs(1),
        };
        assert!(check(path, &config, &args).warnings.is_empty());
    }

    /// Every `[server]`, `[ca]`, `[[issuer]]` and `[[policy]]` key the configuration
    /// knows appears in the example, set or commented out.
    #[test]
    fn the_default_config_shows_every_key() {
        for key in [
            "listen",
            "client_timeout",
            "request_timeout",
            "shutdown_timeout",
            "metrics_listen",
            "log_format",
            "readyz_requires_issuers",
            "url",
            "password_file",
            "pool_size",
            "connect_timeout",
            "statement_timeout",
            "passphrase_file",
            "default_cert_ttl",
            "max_cert_ttl",
            "default_task_ttl",
            "max_task_ttl",
            "clock_skew",
            "key_algorithm",
            "rotation_min_publish",
            "name",
            "issuer",
            "jwks_url",
            "jwks_file",
            "discovery",
            "audiences",
            "algorithms",
            "leeway",
            "replay",
            "max_token_lifetime",
            "jwks_refresh",
            "jwks_max_stale",
            "subject",
            "claims",
            "role",
            "logins",
            "hosts",
            "extensions",
            "force_command",
            "source_address",
            "checkpoint_interval",
            "checkpoint_file",
            "type",
            "path",
            "format",
            "host_cert_ttl",
            "max_host_cert_ttl",
            "host_patterns",
        ] {
            let shown = DEFAULT_CONFIG.lines().any(|line| {
                let line = line.trim_start_matches(['#', ' ']);
                line.starts_with(&format!("{key} ="))
                    || line.contains(&format!(" {key} = "))
                    || line.contains(&format!("or {key} = "))
            });
            assert!(shown, "{key} is missing from contrib/writ.toml");
        }
    }
}
