//! The inventory document: what `writ-principals inventory --json` prints and `--report`
//! sends to the CA (`POST /v1/inventory`), defined in exactly one place. The CA
//! deserialises these same structs, so field names and meanings are a wire format:
//! `version` 1 is this shape; a field may be added (readers ignore what they do not know),
//! a field is never renamed, removed or given another meaning without a new version.
//!
//! This module holds no logic and no I/O, and never any key material: authorized keys and
//! private keys appear only as type, size and SHA-256 fingerprint.

use serde::{Deserialize, Serialize};

/// The document's format version.
pub const VERSION: u32 = 1;

/// One host's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// [`VERSION`].
    pub version: u32,
    /// `host_name` from the host config, else the system hostname.
    pub host: String,
    /// When the inventory was taken (Unix seconds).
    pub generated_at: u64,
    /// sshd's effective global configuration.
    pub sshd: Sshd,
    /// Whether writ's enforcement is fully configured (see `enforcement_problems`).
    pub writ_enforced: bool,
    /// Each missing piece of writ's enforcement, in words.
    pub enforcement_problems: Vec<String>,
    /// Every account of `/etc/passwd`, in its order.
    pub accounts: Vec<Account>,
    /// Unencrypted private keys found in home directories and `--scan` paths.
    pub private_keys: Vec<PrivateKey>,
    /// How many encrypted private keys were found (not listed).
    pub encrypted_private_keys: u64,
    /// Files and directories not inspected, and why.
    pub skipped: Vec<Skipped>,
    /// Whether a bound (file size, entries, files walked, sshd runs) cut the inventory
    /// short; `skipped` says where.
    pub limits_hit: bool,
    /// Accounts per verdict.
    pub summary: Summary,
}

/// sshd's effective configuration without a connection (`sshd -T`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sshd {
    /// The sshd_config file read.
    pub config: String,
    /// sshd's first error line when `sshd -T` failed: the settings below are then read
    /// from the file without sshd, and every verdict is conservative.
    pub error: Option<String>,
    /// `AuthorizedKeysFile` as configured (tokens `%h`, `%u`, … unexpanded); empty for
    /// `none`.
    pub authorized_keys_files: Vec<String>,
    /// `AuthorizedKeysCommand`, unless `none`.
    pub authorized_keys_command: Option<String>,
    /// `AuthorizedPrincipalsFile`, unless `none`.
    pub authorized_principals_file: Option<String>,
    /// `AuthorizedPrincipalsCommand`, unless `none`.
    pub authorized_principals_command: Option<String>,
    /// `TrustedUserCAKeys`, unless `none`.
    pub trusted_user_ca_keys: Option<String>,
    /// `PasswordAuthentication`.
    pub password_authentication: bool,
    /// `KbdInteractiveAuthentication`.
    pub kbd_interactive_authentication: bool,
    /// `PermitRootLogin` (`yes`, `prohibit-password`, `forced-commands-only`, `no`).
    pub permit_root_login: String,
    /// `PubkeyAuthentication`.
    pub pubkey_authentication: bool,
    /// Match blocks whose criteria depend on the connection (Address, Host,
    /// LocalAddress, LocalPort, RDomain): their settings are not reflected here.
    pub match_blocks_not_evaluated: Vec<MatchBlock>,
}

/// A `Match` line of sshd_config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchBlock {
    /// The file holding it.
    pub file: String,
    /// Its line number (from 1).
    pub line: u64,
    /// The criteria after `Match`, as written.
    pub criteria: String,
}

/// How an account can be logged into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Only writ certificates: no static keys, no password, writ enforcement configured.
    WritOnly,
    /// At least one authorized_keys entry in a file sshd reads.
    StaticKeys,
    /// Password (or keyboard-interactive) login is possible, or cannot be ruled out.
    Password,
    /// Keys this inventory cannot see may let someone in (writ enforcement not fully
    /// configured, a foreign AuthorizedKeysCommand, an authorized_keys file not read).
    Unmanaged,
    /// The account's shell is not a login shell and it has no static keys.
    NoLogin,
}

impl Verdict {
    /// Every verdict, in the order reports list them.
    pub const ALL: [Verdict; 5] = [
        Verdict::WritOnly,
        Verdict::StaticKeys,
        Verdict::Password,
        Verdict::Unmanaged,
        Verdict::NoLogin,
    ];

    /// The name used in JSON and text.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::WritOnly => "writ-only",
            Verdict::StaticKeys => "static-keys",
            Verdict::Password => "password",
            Verdict::Unmanaged => "unmanaged",
            Verdict::NoLogin => "no-login",
        }
    }
}

/// One account of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The login name.
    pub login: String,
    /// Its uid.
    pub uid: u32,
    /// Its home directory.
    pub home: String,
    /// Its shell.
    pub shell: String,
    /// How it can be logged into.
    pub verdict: Verdict,
    /// Whether password login is possible; `null` when `/etc/shadow` could not be read
    /// (then treated as possible).
    pub password_login: Option<bool>,
    /// authorized_keys entries (including `cert-authority` lines) sshd would use.
    pub static_key_count: u64,
    /// The oldest modification time (Unix seconds) of a file holding those entries.
    pub oldest_key_mtime: Option<i64>,
    /// Each entry of the authorized_keys files sshd reads for this account.
    pub authorized_keys: Vec<AuthorizedKey>,
    /// Lines of those files sshd cannot use.
    pub bad_lines: Vec<BadLine>,
}

/// One authorized_keys entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedKey {
    /// The file.
    pub file: String,
    /// The line number (from 1).
    pub line: u64,
    /// The key's algorithm (`ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, …).
    pub key_type: String,
    /// Its size: RSA modulus bits, the ECDSA curve's bits, 256 for Ed25519.
    pub bits: u32,
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The comment after the key (escaped control characters are kept as they are).
    pub comment: String,
    /// Each option, as written (`from="10.0.0.0/8"`, `restrict`, …).
    pub options: Vec<String>,
    /// A `cert-authority` line: it trusts a CA's certificates rather than one key.
    pub cert_authority: bool,
    /// The file's owner (login, or uid when not in `/etc/passwd`).
    pub file_owner: String,
    /// The file's mode in octal (`0600`).
    pub file_mode: String,
    /// The file's modification time (Unix seconds).
    pub file_mtime: i64,
}

/// A line of an authorized_keys file that sshd cannot use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLine {
    /// The file.
    pub file: String,
    /// The line number (from 1).
    pub line: u64,
    /// What is wrong, briefly (never the line itself).
    pub error: String,
}

/// How a private key file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----`.
    Openssh,
    /// `-----BEGIN RSA PRIVATE KEY-----`.
    Pkcs1,
    /// `-----BEGIN EC PRIVATE KEY-----`.
    Sec1,
    /// `-----BEGIN PRIVATE KEY-----`.
    Pkcs8,
}

impl KeyFormat {
    /// The name used in JSON and text.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyFormat::Openssh => "openssh",
            KeyFormat::Pkcs1 => "pkcs1",
            KeyFormat::Sec1 => "sec1",
            KeyFormat::Pkcs8 => "pkcs8",
        }
    }
}

/// An unencrypted private key file: where it is and which key it is, nothing of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateKey {
    /// The file.
    pub path: String,
    /// Its encoding.
    pub format: KeyFormat,
    /// The key's algorithm, as in authorized_keys (`unknown` if not recognised).
    pub key_type: String,
    /// `SHA256:…` of its public key; `null` when it cannot be derived.
    pub fingerprint: Option<String>,
    /// The file's owner (login, or uid when not in `/etc/passwd`).
    pub owner: String,
    /// The file's mode in octal (`0600`).
    pub mode: String,
    /// The file's modification time (Unix seconds).
    pub mtime: i64,
}

/// Something not inspected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The file or directory.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Accounts per verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// [`Verdict::WritOnly`].
    #[serde(rename = "writ-only")]
    pub writ_only: u64,
    /// [`Verdict::StaticKeys`].
    #[serde(rename = "static-keys")]
    pub static_keys: u64,
    /// [`Verdict::Password`].
    pub password: u64,
    /// [`Verdict::Unmanaged`].
    pub unmanaged: u64,
    /// [`Verdict::NoLogin`].
    #[serde(rename = "no-login")]
    pub no_login: u64,
}

impl Summary {
    /// Count `accounts` by verdict.
    pub fn of(accounts: &[Account]) -> Summary {
        let mut summary = Summary::default();
        for account in accounts {
            let slot = match account.verdict {
                Verdict::WritOnly => &mut summary.writ_only,
                Verdict::StaticKeys => &mut summary.static_keys,
                Verdict::Password => &mut summary.password,
                Verdict::Unmanaged => &mut summary.unmanaged,
                Verdict::NoLogin => &mut summary.no_login,
            };
            *slot = slot.saturating_add(1);
        }
        summary
    }

    /// The count for `verdict`.
    pub fn count(&self, verdict: Verdict) -> u64 {
        match verdict {
            Verdict::WritOnly => self.writ_only,
            Verdict::StaticKeys => self.static_keys,
            Verdict::Password => self.password,
            Verdict::Unmanaged => self.unmanaged,
            Verdict::NoLogin => self.no_login,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_and_summary_names_are_the_wire_names() {
        for verdict in Verdict::ALL {
            assert_eq!(
                serde_json::to_value(verdict).expect("json"),
                serde_json::Value::String(verdict.as_str().to_owned())
            );
        }
        let summary = serde_json::to_value(Summary::default()).expect("json");
        let mut keys: Vec<&str> = summary
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "no-login",
                "password",
                "static-keys",
                "unmanaged",
                "writ-only"
            ]
        );
        assert_eq!(
            serde_json::to_value(KeyFormat::Pkcs8).expect("json"),
            serde_json::json!("pkcs8")
        );
    }
}
