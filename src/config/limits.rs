//! `[limits]`: what one client may ask of the CA before it is slowed down, and what the
//! server accepts at all. Every limit has a default that a busy fleet does not reach and a
//! flood does; each is answered with the JSON envelope (429 `rate_limited` with
//! `Retry-After`, 431 `headers_too_large`, 503 `overloaded`).
//!
//! ```toml
//! [limits]
//! issuances_per_minute_per_ip = 600        # new certificates (open + renew) per client address
//! issuances_per_minute_per_identity = 120  # per workload identity (issuer + subject)
//! failed_auth_per_minute_per_ip = 60       # refused tokens/proofs; beyond: 429, summarised
//! certificates_per_task = 1000             # certificates one task may get in all
//! max_concurrent_requests = 512            # beyond: 503 overloaded
//! max_connections = 1024                   # beyond: new connections wait in the backlog
//! max_header_bytes = 16384                 # all header names and values together; beyond: 431
//! max_headers = 64                         # beyond: 431
//! flood_summary_interval = "10s"           # how often a flooding source's refusals are recorded
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::duration;

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// New certificates per minute per client address.
    pub issuances_per_minute_per_ip: u32,
    /// New certificates per minute per workload identity.
    pub issuances_per_minute_per_identity: u32,
    /// Refused authentications per minute per client address before the address is
    /// answered 429 and its refusals are recorded as one summary per interval.
    pub failed_auth_per_minute_per_ip: u32,
    /// Certificates one task may get in all (its first included).
    pub certificates_per_task: u32,
    /// Requests served at once; beyond, 503 `overloaded`.
    pub max_concurrent_requests: u32,
    /// Connections open at once; beyond, new ones wait in the listen backlog.
    pub max_connections: u32,
    /// Bytes of all header names and values of a request; beyond, 431.
    pub max_header_bytes: u32,
    /// Headers of a request; beyond, 431.
    pub max_headers: u32,
    /// How often the refusals of a flooding source are written as one summary record.
    #[serde(deserialize_with = "duration::deserialize")]
    pub flood_summary_interval: Duration,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            issuances_per_minute_per_ip: 600,
            issuances_per_minute_per_identity: 120,
            failed_auth_per_minute_per_ip: 60,
            certificates_per_task: 1000,
            max_concurrent_requests: 512,
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            flood_summary_interval: Duration::from_secs(10),
        }
    }
}

impl LimitsConfig {
    /// Every limit must let something through; the header limits must admit an ordinary
    /// request with a token.
    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key: format!("limits.{key}"),
            message: message.to_owned(),
        };
        let positive = [
            (
                "issuances_per_minute_per_ip",
                self.issuances_per_minute_per_ip,
            ),
            (
                "issuances_per_minute_per_identity",
                self.issuances_per_minute_per_identity,
            ),
            (
                "failed_auth_per_minute_per_ip",
                self.failed_auth_per_minute_per_ip,
            ),
            ("certificates_per_task", self.certificates_per_task),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_connections", self.max_connections),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(
                    key,
                    "must be at least 1 (0 would refuse everything)",
                ));
            }
        }
        if self.max_header_bytes < 8 * 1024 || self.max_header_bytes > 1024 * 1024 {
            return Err(invalid(
                "max_header_bytes",
                "must be between 8192 (a token fits) and 1048576",
            ));
        }
        if !(16..=1024).contains(&self.max_headers) {
            return Err(invalid("max_headers", "must be between 16 and 1024"));
        }
        if self.flood_summary_interval < Duration::from_secs(1)
            || self.flood_summary_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "flood_summary_interval",
                "must be between 1s and 1h",
            ));
        }
        Ok(())
    }
}
