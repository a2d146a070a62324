//! `[audit]` and `[[audit.sink]]`: where the audit log is shipped as records commit, and
//! how often (and where else) `writ serve` writes signed checkpoints of it.
//!
//! ```toml
//! [audit]
//! checkpoint_interval = "5m"                          # sign the head of the log this often
//! checkpoint_file = "/var/log/writ/audit-checkpoints.jsonl"  # default: next to the database
//!
//! [[audit.sink]]
//! type = "jsonl"                                      # append JSON Lines to a file
//! path = "/var/log/writ/audit.jsonl"
//! format = "ocsf"                                     # or "jsonl" (default): writ's record
//!
//! [[audit.sink]]
//! type = "syslog"                                     # RFC 5424 over a unix socket or UDP
//! # socket = "/dev/log"                               # the default
//! # address = "192.0.2.10:514"                        # UDP instead
//! # facility = "authpriv"                             # the default
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::duration;

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often `writ serve` signs a checkpoint of the log's head (when it moved).
    #[serde(
        default = "default_checkpoint_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub checkpoint_interval: Duration,
    /// File that checkpoints are appended to, outside the database. Default:
    /// `audit-checkpoints.jsonl` in the SQLite database's directory.
    pub checkpoint_file: Option<PathBuf>,
    /// Sinks that receive every record as it commits.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_interval: default_checkpoint_interval(),
            checkpoint_file: None,
            sinks: Vec::new(),
        }
    }
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5 * 60)
}

/// Name of the default checkpoint file, in the database's directory.
pub const DEFAULT_CHECKPOINT_FILE: &str = "audit-checkpoints.jsonl";

/// Kind of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// Append JSON Lines to a file.
    Jsonl,
    /// Send RFC 5424 syslog messages.
    Syslog,
}

/// What each line or message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// writ's audit record.
    #[default]
    Jsonl,
    /// An OCSF event.
    Ocsf,
}

/// `[[audit.sink]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name; the sink's delivery position is kept under it, so keep it stable.
    /// Default: `jsonl:PATH` or `syslog:SOCKET|ADDRESS`.
    pub name: Option<String>,
    /// `jsonl` or `syslog`.
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// `jsonl`: the file to append to.
    pub path: Option<PathBuf>,
    /// `syslog`: unix datagram socket (default `/dev/log`).
    pub socket: Option<PathBuf>,
    /// `syslog`: `IP:PORT` to send UDP datagrams to instead of a socket.
    pub address: Option<SocketAddr>,
    /// Record format (default `jsonl`).
    #[serde(default)]
    pub format: SinkFormat,
    /// `syslog`: facility name (default `authpriv`).
    pub facility: Option<String>,
}

/// Default syslog socket.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

/// Syslog facilities by name.
pub const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("authpriv", 10),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

impl SinkConfig {
    /// The name its delivery position is kept under.
    pub fn name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.kind {
            SinkType::Jsonl => format!(
                "jsonl:{}",
                self.path.as_deref().unwrap_or(Path::new("")).display()
            ),
            SinkType::Syslog => match self.address {
                Some(addr) => format!("syslog:{addr}"),
                None => format!(
                    "syslog:{}",
                    self.socket
                        .as_deref()
                        .unwrap_or(Path::new(DEFAULT_SYSLOG_SOCKET))
                        .display()
                ),
            },
        }
    }

    /// The syslog facility code.
    pub fn facility_code(&self) -> u8 {
        let name = self.facility.as_deref().unwrap_or("authpriv");
        FACILITIES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(10, |(_, code)| *code)
    }
}

impl AuditConfig {
    /// Where checkpoints are written outside the database: `checkpoint_file`, or the
    /// default next to a SQLite database (`None` for other stores without the key).
    pub fn checkpoint_path(&self, storage_url: &str) -> Option<PathBuf> {
        if let Some(file) = &self.checkpoint_file {
            return Some(file.clone());
        }
        let db = storage_url.strip_prefix("sqlite://")?;
        let dir = Path::new(db).parent().unwrap_or(Path::new(""));
        Some(dir.join(DEFAULT_CHECKPOINT_FILE))
    }

    /// Check what serde cannot.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: message.to_owned(),
        };
        if self.checkpoint_interval < Duration::from_secs(1) {
            return Err(invalid(
                "audit.checkpoint_interval".into(),
                "must be at least 1s",
            ));
        }
        if self
            .checkpoint_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Err(invalid("audit.checkpoint_file".into(), "must not be empty"));
        }
        let mut names = HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let key = |field: &str| format!("audit.sink[{i}].{field}");
            if sink.name.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !names.insert(sink.name()) {
                return Err(invalid(
                    key("name"),
                    "two sinks have the same name; give each a unique name",
                ));
            }
            match sink.kind {
                SinkType::Jsonl => {
                    if sink.path.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
                        return Err(invalid(key("path"), "a jsonl sink needs a file path"));
                    }
                    for (field, set) in [
                        ("socket", sink.socket.is_some()),
                        ("address", sink.address.is_some()),
                        ("facility", sink.facility.is_some()),
                    ] {
                        if set {
                            return Err(invalid(key(field), "only syslog sinks take this key"));
                        }
                    }
                }
                SinkType::Syslog => {
                    if sink.path.is_some() {
                        return Err(invalid(
                            key("path"),
                            "syslog sinks take socket or address, not path",
                        ));
                    }
                    if sink.socket.is_some() && sink.address.is_some() {
                        return Err(invalid(
                            key("address"),
                            "set socket (unix datagram) or address (UDP), not both",
                        ));
                    }
                    if let Some(facility) = &sink.facility
                        && !FACILITIES.iter().any(|(n, _)| n == facility)
                    {
                        return Err(invalid(
                            key("facility"),
                            "unknown facility; use auth, authpriv, daemon, user, syslog or local0-local7",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuditConfig, String> {
        let config: AuditConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config
            .validate(Path::new("writ.toml"))
            .map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn sinks_parse_and_validate() {
        let config = parse(
            "checkpoint_interval = \"1m\"\n\
             [[sink]]\ntype = \"jsonl\"\npath = \"/var/log/writ/audit.jsonl\"\nformat = \"ocsf\"\n\
             [[sink]]\ntype = \"syslog\"\n",
        )
        .expect("valid");
        assert_eq!(config.sinks.len(), 2);
        assert_eq!(config.sinks[0].name(), "jsonl:/var/log/writ/audit.jsonl");
        assert_eq!(config.sinks[0].format, SinkFormat::Ocsf);
        assert_eq!(config.sinks[1].name(), "syslog:/dev/log");
        assert_eq!(config.sinks[1].facility_code(), 10);
        assert_eq!(
            config.checkpoint_path("sqlite:///var/lib/writ/writ.db"),
            Some(PathBuf::from("/var/lib/writ/audit-checkpoints.jsonl"))
        );

        for (text, key) in [
            ("[[sink]]\ntype = \"jsonl\"\n", "audit.sink[0].path"),
            (
                "[[sink]]\ntype = \"syslog\"\npath = \"/x\"\n",
                "audit.sink[0].path",
            ),
            (
                "[[sink]]\ntype = \"syslog\"\nfacility = \"mail2\"\n",
                "audit.sink[0].facility",
            ),
            (
                "[[sink]]\ntype = \"jsonl\"\npath = \"/a\"\n[[sink]]\ntype = \"jsonl\"\npath = \"/a\"\n",
                "audit.sink[1].name",
            ),
            (
                "checkpoint_interval = \"0s\"\n",
                "audit.checkpoint_interval",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(
            parse("[[sink]]\ntype = \"kafka\"\n")
                .expect_err("type")
                .contains("kafka")
        );
        assert!(
            parse("[[sink]]\ntype = \"jsonl\"\npath = \"/a\"\nurl = \"x\"\n")
                .expect_err("unknown key")
                .contains("url")
        );
    }
}
