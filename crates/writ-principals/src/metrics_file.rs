//! The host's metrics for node_exporter's textfile collector: after every `sync` round
//! (one-shot or `--watch`), when the host config sets `metrics_file`, that file is
//! replaced atomically with what the round left installed — whether it succeeded, when
//! the installed feed was synced and issued, how many CA keys and revocations hosts
//! enforce, the KRL's size. Everything is read back from the installed files, so a failed
//! round (which writes nothing else) still reports what sshd enforces, and a one-shot
//! `sync` from cron keeps the last success time across runs.
//!
//! Only gauges, in the Prometheus text format written by `prometheus-client` (the
//! textfile collector parses that format; counters would restart at every one-shot run).
//! Decisions are not counted here: each one is a syslog line already ([`crate::syslog`]).
//! What it must never do: fail or delay a sync (a metrics file that cannot be written is
//! a warning), or report a value it did not read from an installed file or this round.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use writ_formats::revocation::{bundle, feed};

use crate::config::HostConfig;
use crate::sync;

/// node_exporter's textfile collector reads only files with this extension.
pub const EXTENSION: &str = "prom";

/// Why the metrics file was not written (the sync's own result is unaffected).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the metrics file {path}: {source}")]
pub struct MetricsFileError {
    /// The file (or its temporary sibling) involved.
    pub path: PathBuf,
    /// What went wrong.
    pub source: io::Error,
}

/// What `state_dir` holds after a round, as far as metrics go; `None` where the file is
/// missing or unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// Modification time of the installed feed: when the last successful sync wrote it.
    pub synced_at: Option<i64>,
    /// The installed feed's sequence number.
    pub feed_sequence: Option<i64>,
    /// The installed feed's issue time (Unix seconds).
    pub feed_issued_at: Option<i64>,
    /// Revoked tasks in the installed feed.
    pub revoked_tasks: Option<usize>,
    /// Revoked serials in the installed feed.
    pub revoked_serials: Option<usize>,
    /// CA keys in the installed trust bundle.
    pub trusted_keys: Option<usize>,
    /// Size of the installed KRL.
    pub krl_bytes: Option<u64>,
}

impl Installed {
    /// Read what `config.state_dir` holds. The feed is parsed without verifying its
    /// signature: `sync` verified it before installing it, and a number in a metric
    /// grants nothing.
    pub fn read(config: &HostConfig) -> Installed {
        let mut installed = Installed::default();
        let feed_path = config.revocations_path();
        if let Ok(meta) = fs::metadata(&feed_path) {
            installed.synced_at = Some(meta.mtime());
        }
        if let Some(feed) = fs::read(&feed_path)
            .ok()
            .and_then(|bytes| feed::parse(&bytes).ok())
            .and_then(|signed| feed::unverified(&signed).ok())
        {
            installed.feed_sequence = Some(feed.sequence);
            installed.feed_issued_at = Some(feed.issued_at);
            installed.revoked_tasks = Some(feed.revoked_tasks.len());
            installed.revoked_serials = Some(feed.revoked_serials.len());
        }
        installed.trusted_keys = fs::read(config.trusted_keys_path())
            .ok()
            .and_then(|bytes| bundle::parse(&bytes).ok().map(|b| b.keys.len()));
        installed.krl_bytes = fs::metadata(config.krl_path()).ok().map(|m| m.len());
        installed
    }
}

/// The file's text after a round that `succeeded` (or not) at `now_unix`, with what is
/// `installed`.
pub fn render(succeeded: bool, now_unix: i64, installed: &Installed) -> String {
    let mut registry = Registry::default();
    let mut gauge = |name: &str, help: &str, value: Option<i64>| {
        if let Some(value) = value {
            let gauge = Gauge::<i64>::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        }
    };
    let count = |n: Option<usize>| n.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    gauge(
        "writ_principals_sync_up",
        "Whether the last sync round succeeded (1) or failed and kept the last good files (0)",
        Some(i64::from(succeeded)),
    );
    gauge(
        "writ_principals_sync_last_attempt_timestamp_seconds",
        "When the last sync round ran (Unix seconds)",
        Some(now_unix),
    );
    gauge(
        "writ_principals_sync_last_success_timestamp_seconds",
        "When the installed revocation feed was written by a successful sync (Unix seconds)",
        installed.synced_at,
    );
    gauge(
        "writ_principals_feed_issued_timestamp_seconds",
        "When the CA issued the installed revocation feed (Unix seconds); check denies once it is older than max_staleness",
        installed.feed_issued_at,
    );
    gauge(
        "writ_principals_feed_sequence",
        "Sequence number of the installed revocation feed",
        installed.feed_sequence,
    );
    gauge(
        "writ_principals_revoked_tasks",
        "Ended tasks in the installed revocation feed",
        count(installed.revoked_tasks),
    );
    gauge(
        "writ_principals_revoked_serials",
        "Revoked certificates in the installed revocation feed",
        count(installed.revoked_serials),
    );
    gauge(
        "writ_principals_trusted_ca_keys",
        "CA keys in the installed trust bundle (sshd's TrustedUserCAKeys)",
        count(installed.trusted_keys),
    );
    gauge(
        "writ_principals_krl_bytes",
        "Size of the installed KRL (sshd's RevokedKeys)",
        installed
            .krl_bytes
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
    );
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// After a round: replace `config.metrics_file` (if set) atomically with [`render`]'s
/// text, read back from `state_dir`. Readers see the old file or the new one, never half.
pub fn write_after_round(
    config: &HostConfig,
    succeeded: bool,
    now_unix: i64,
) -> Result<(), MetricsFileError> {
    let Some(path) = &config.metrics_file else {
        return Ok(());
    };
    let text = render(succeeded, now_unix, &Installed::read(config));
    let (dir, name) = split(path);
    let staged = sync::stage(dir, name, text.as_bytes())
        .map_err(|(path, source)| MetricsFileError { path, source })?;
    sync::commit(dir, [staged]).map_err(|(path, source)| MetricsFileError { path, source })
}

/// The directory and file name of a validated (absolute, named) `metrics_file`.
fn split(path: &Path) -> (&Path, &str) {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("writ-principals.prom");
    (dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_round_keeps_reporting_what_is_installed() {
        let installed = Installed {
            synced_at: Some(1_700_000_000),
            feed_sequence: Some(7),
            feed_issued_at: Some(1_699_999_990),
            revoked_tasks: Some(2),
            revoked_serials: Some(3),
            trusted_keys: Some(1),
            krl_bytes: Some(44),
        };
        let text = render(false, 1_700_000_100, &installed);
        for line in [
            "writ_principals_sync_up 0",
            "writ_principals_sync_last_attempt_timestamp_seconds 1700000100",
            "writ_principals_sync_last_success_timestamp_seconds 1700000000",
            "writ_principals_feed_issued_timestamp_seconds 1699999990",
            "writ_principals_feed_sequence 7",
            "writ_principals_revoked_tasks 2",
            "writ_principals_revoked_serials 3",
            "writ_principals_trusted_ca_keys 1",
            "writ_principals_krl_bytes 44",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(
            text.contains("# TYPE writ_principals_sync_up gauge"),
            "{text}"
        );
    }

    #[test]
    fn nothing_installed_reports_only_the_round() {
        let text = render(false, 5, &Installed::default());
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "writ_principals_sync_up 0",
                "writ_principals_sync_last_attempt_timestamp_seconds 5"
            ]
        );
    }
}
