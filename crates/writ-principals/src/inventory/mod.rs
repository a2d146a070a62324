//! `writ-principals inventory`: what lets people and programs log in to this host other
//! than writ certificates — static authorized_keys entries, passwords, keys writ cannot
//! see — and whether writ's own enforcement is in place, per account, plus the unencrypted
//! private keys lying in home directories. The result is one [`model::Inventory`]
//! document, printed as text or JSON, sent to the CA with `--report`, or turned into the
//! steps that make one login writ-only (`--plan`).
//!
//! - [`model`] — the document (the wire format the CA reads).
//! - [`root`] — the host's files seen from `--root`: symlinks resolved inside it, bounded
//!   reads of regular files only.
//! - [`sshd`] — sshd's effective settings (`sshd -T`, per Match User/Group combination).
//! - [`accounts`] — `/etc/passwd`, `/etc/group`, `/etc/shadow`; password login possible?
//! - [`authorized_keys`] — which files sshd reads and what their lines say.
//! - [`private_keys`] — the bounded walk for private key files, and what they hold.
//! - [`verdict`] — writ enforcement problems and each account's verdict.
//! - [`plan`] — the steps for `--plan LOGIN`.
//! - [`render`] — the text output.
//! - [`report`] — `--report`: `POST {ca_url}/v1/inventory`.
//!
//! It is read-only: it never writes a file, never changes sshd or its configuration, and
//! uses the network only for `--report`. It never reports key material (fingerprints
//! only) or password hashes, and every walk and read is bounded (see each module's
//! constants), with `limits_hit` and `skipped` saying what a bound cut short. Time comes
//! in as an argument.

pub mod accounts;
pub mod authorized_keys;
pub mod model;
pub mod plan;
pub mod private_keys;
pub mod render;
pub mod report;
pub mod root;
pub mod sshd;
pub mod verdict;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, HostConfig};
use model::{Account, AuthorizedKey, BadLine, Inventory, PrivateKey, Skipped, Summary};
use root::{OpenError, ResolveError, Root};
use sshd::Settings;

/// Default sshd binary.
pub const DEFAULT_SSHD: &str = "/usr/sbin/sshd";
/// Default sshd configuration.
pub const DEFAULT_SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
/// Largest `/etc/passwd`, `/etc/group` or `/etc/shadow` read.
const MAX_SYSTEM_FILE_BYTES: u64 = 16 << 20;

/// What to inventory.
#[derive(Debug, Clone)]
pub struct Options {
    /// The directory the host's files are read under (`/`).
    pub root: PathBuf,
    /// The sshd binary run for `sshd -T` (on this machine, not under `root`).
    pub sshd: PathBuf,
    /// The sshd configuration passed to `sshd -T -f` (on this machine).
    pub sshd_config: PathBuf,
    /// More paths (host paths under `root`) to search for private keys.
    pub scan: Vec<PathBuf>,
    /// The writ host config (on this machine).
    pub host_config: PathBuf,
}

/// Why no inventory could be taken.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// `--root` is not a readable directory.
    #[error("--root {}: {source}", path.display())]
    Root {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `/etc/passwd` could not be read.
    #[error("cannot read {}: {detail}", path.display())]
    Passwd {
        /// The file (as read, under the root).
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// An inventory and what `--plan` needs beyond the document.
#[derive(Debug, Clone)]
pub struct Findings {
    /// The document.
    pub inventory: Inventory,
    /// Per account (same order as `inventory.accounts`).
    pub details: Vec<AccountDetail>,
    /// The sshd configuration read.
    pub sshd_config: PathBuf,
    /// Every `Include` pattern of the sshd configuration (absolute).
    pub includes: Vec<String>,
}

/// What the document does not say about an account.
#[derive(Debug, Clone)]
pub struct AccountDetail {
    /// sshd's effective settings for it.
    pub settings: Settings,
    /// Whether writ enforcement is fully configured for it.
    pub enforced: bool,
    /// Its enforcement problems (the global ones and those of its Match blocks).
    pub problems: Vec<String>,
    /// An `AuthorizedKeysCommand` that may give it keys the inventory cannot see.
    pub foreign_keys_command: Option<String>,
    /// Whether an authorized_keys file sshd reads for it was not (fully) read.
    pub unseen_files: bool,
}

/// What was not inspected, and whether a bound was hit, as the inventory goes.
#[derive(Debug, Default)]
struct Notes {
    skipped: Vec<Skipped>,
    limits_hit: bool,
}

impl Notes {
    fn skip(&mut self, path: &str, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            path: path.to_owned(),
            reason: reason.into(),
        });
    }
}

/// The host's accounts as read from its files.
struct System {
    accounts: Vec<accounts::Account>,
    /// `None`: /etc/shadow could not be read.
    shadow: Option<HashMap<String, accounts::PasswordState>>,
    groups: HashMap<String, Vec<String>>,
}

impl System {
    fn read(root: &Root, notes: &mut Notes) -> Result<System, InventoryError> {
        let passwd =
            read_system_file(root, "/etc/passwd").map_err(|detail| InventoryError::Passwd {
                path: root.real(Path::new("/etc/passwd")),
                detail,
            })?;
        let (accounts, bad) = accounts::parse_passwd(&passwd);
        for bad in bad {
            notes.skip("/etc/passwd", format!("line {}: {}", bad.line, bad.error));
        }
        let shadow = match read_system_file(root, "/etc/shadow") {
            Ok(text) => Some(accounts::parse_shadow(&text)),
            Err(e) => {
                notes.skip(
                    "/etc/shadow",
                    format!("cannot read it ({e}): password login is unknown, taken as possible"),
                );
                None
            }
        };
        let group = read_system_file(root, "/etc/group").unwrap_or_default();
        let groups = accounts::groups_of(&group, &accounts);
        Ok(System {
            accounts,
            shadow,
            groups,
        })
    }

    /// A file owner's name: the first login with that uid, else the uid.
    fn owners(&self) -> HashMap<u32, String> {
        self.accounts
            .iter()
            .rev()
            .map(|a| (a.uid, a.login.clone()))
            .collect()
    }
}

fn owner_name(owners: &HashMap<u32, String>, uid: u32) -> String {
    owners.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
}

/// Take the inventory at `now` (Unix seconds).
pub fn run(options: &Options, now: u64) -> Result<Findings, InventoryError> {
    let root = Root::new(&options.root).map_err(|source| InventoryError::Root {
        path: options.root.clone(),
        source,
    })?;
    let mut notes = Notes::default();
    let host_config = HostConfig::load(&options.host_config);
    let system = System::read(&root, &mut notes)?;
    let owners = system.owners();

    // sshd's settings, per Match combination.
    let scan = sshd::scan_config(&options.sshd_config);
    let no_groups = Vec::new();
    let selectors: Vec<(&str, &[String])> = system
        .accounts
        .iter()
        .map(|a| {
            let groups = system.groups.get(&a.login).unwrap_or(&no_groups);
            (a.login.as_str(), groups.as_slice())
        })
        .collect();
    let evaluation = sshd::evaluate(&options.sshd, &options.sshd_config, &scan, &selectors);
    notes.limits_hit |= evaluation.limits_hit;
    let config_display = root::display(&options.sshd_config);
    for note in &evaluation.problems {
        notes.skip(&config_display, note.clone());
    }
    let enforcement = Enforcement::assess(
        &root,
        &evaluation,
        &scan,
        &host_config,
        &options.host_config,
        &system.accounts,
    );

    // Accounts.
    let mut budget = authorized_keys::MAX_ENTRIES;
    let mut out_accounts = Vec::with_capacity(system.accounts.len());
    let mut details = Vec::with_capacity(system.accounts.len());
    for (index, account) in system.accounts.iter().enumerate() {
        let variant = evaluation.account_variant.get(index).copied().unwrap_or(0);
        let settings = evaluation
            .variants
            .get(variant)
            .map_or_else(|| evaluation.global.clone(), |v| v.settings.clone());
        let problems = enforcement.of_variant(variant);
        let keys =
            read_authorized_keys(&root, account, &settings, &owners, &mut budget, &mut notes);
        let static_keys = if settings.pubkey_authentication {
            u64::try_from(keys.entries.len()).unwrap_or(u64::MAX)
        } else {
            0
        };
        let password_login = accounts::password_login(account, &settings, system.shadow.as_ref());
        let foreign_keys_command = verdict::foreign_keys_command(&settings).map(str::to_owned);
        let enforced = problems.is_empty();
        let verdict = verdict::decide(&verdict::Facts {
            static_keys,
            unseen_keys: keys.unseen || foreign_keys_command.is_some(),
            login_shell: accounts::is_login_shell(&account.shell),
            password_login,
            enforced,
        });
        out_accounts.push(Account {
            login: account.login.clone(),
            uid: account.uid,
            home: account.home.clone(),
            shell: account.shell.clone(),
            verdict,
            password_login,
            static_key_count: static_keys,
            oldest_key_mtime: keys.oldest_mtime.filter(|_| static_keys > 0),
            authorized_keys: keys.entries,
            bad_lines: keys.bad_lines,
        });
        details.push(AccountDetail {
            settings,
            enforced,
            problems,
            foreign_keys_command,
            unseen_files: keys.unseen,
        });
    }

    let (private_keys, encrypted_private_keys) =
        find_private_keys(&root, &system.accounts, &options.scan, &owners, &mut notes);

    let global = &evaluation.global;
    let inventory = Inventory {
        version: model::VERSION,
        host: host_name(&root, host_config.as_ref().ok()),
        generated_at: now,
        sshd: model::Sshd {
            config: config_display,
            error: evaluation.error.clone(),
            authorized_keys_files: global.authorized_keys_files.clone(),
            authorized_keys_command: global.authorized_keys_command.clone(),
            authorized_principals_file: global.authorized_principals_file.clone(),
            authorized_principals_command: global.authorized_principals_command.clone(),
            trusted_user_ca_keys: global.trusted_user_ca_keys.clone(),
            password_authentication: global.password_authentication,
            kbd_interactive_authentication: global.kbd_interactive_authentication,
            permit_root_login: global.permit_root_login.clone(),
            pubkey_authentication: global.pubkey_authentication,
            match_blocks_not_evaluated: evaluation
                .not_evaluated
                .iter()
                .map(|b| model::MatchBlock {
                    file: root::display(&b.file),
                    line: b.line,
                    criteria: b.text.clone(),
                })
                .collect(),
        },
        writ_enforced: enforcement.lines.is_empty(),
        enforcement_problems: enforcement.lines,
        summary: Summary::of(&out_accounts),
        accounts: out_accounts,
        private_keys,
        encrypted_private_keys,
        skipped: notes.skipped,
        limits_hit: notes.limits_hit,
    };
    Ok(Findings {
        inventory,
        details,
        sshd_config: options.sshd_config.clone(),
        includes: scan.includes,
    })
}

/// writ enforcement's problems: those of every account (sshd failed, host config
/// unusable), those of the global settings, and those of each Match combination.
struct Enforcement {
    common: Vec<String>,
    per_variant: Vec<Vec<String>>,
    /// Everything, as reported (`enforcement_problems`).
    lines: Vec<String>,
}

impl Enforcement {
    fn assess(
        root: &Root,
        evaluation: &sshd::Evaluation,
        scan: &sshd::ConfigScan,
        host_config: &Result<HostConfig, ConfigError>,
        host_config_path: &Path,
        accounts: &[accounts::Account],
    ) -> Enforcement {
        let mut common = Vec::new();
        if let Some(error) = &evaluation.error {
            common.push(format!(
                "sshd -T failed ({error}): sshd's effective configuration is unknown"
            ));
        }
        match host_config {
            Ok(_) => {}
            Err(ConfigError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                common.push(format!(
                    "the writ host config {} is missing: `writ-principals check` cannot run",
                    host_config_path.display()
                ));
            }
            Err(e) => common.push(format!("the writ host config cannot be used: {e}")),
        }
        let trusted_keys_file = host_config.as_ref().ok().map(HostConfig::trusted_keys_path);
        let per_variant: Vec<Vec<String>> = evaluation
            .variants
            .iter()
            .map(|v| verdict::problems(&v.settings, root, trusted_keys_file.as_deref()))
            .collect();
        let global = per_variant.first().cloned().unwrap_or_default();
        let mut lines = common.clone();
        lines.extend(global.iter().cloned());
        for (index, variant) in evaluation.variants.iter().enumerate().skip(1) {
            let extra: Vec<&String> = per_variant[index]
                .iter()
                .filter(|p| !global.contains(p))
                .collect();
            if extra.is_empty() {
                continue;
            }
            let members: Vec<&str> = evaluation
                .account_variant
                .iter()
                .zip(accounts)
                .filter(|(v, _)| **v == index)
                .map(|(_, a)| a.login.as_str())
                .collect();
            let mut who = members
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            if members.len() > 5 {
                who.push_str(&format!(" and {} more", members.len() - 5));
            }
            let blocks: Vec<String> = variant
                .blocks
                .iter()
                .filter_map(|&b| scan.blocks.get(b))
                .map(|b| format!("{}:{}", b.file.display(), b.line))
                .collect();
            for problem in extra {
                lines.push(format!(
                    "for {who} (Match at {}): {problem}",
                    blocks.join(", ")
                ));
            }
        }
        Enforcement {
            common,
            per_variant,
            lines,
        }
    }

    /// The problems of an account with the settings of variant `index`.
    fn of_variant(&self, index: usize) -> Vec<String> {
        let mut problems = self.common.clone();
        problems.extend(self.per_variant.get(index).cloned().unwrap_or_default());
        problems
    }
}

/// An account's authorized_keys entries, as sshd would read them.
#[derive(Default)]
struct AccountKeys {
    entries: Vec<AuthorizedKey>,
    bad_lines: Vec<BadLine>,
    oldest_mtime: Option<i64>,
    /// A file sshd reads was not (completely) read.
    unseen: bool,
}

/// Read the authorized_keys files `settings` names for `account`: symlinks followed only
/// inside its home (for files in its home), each file bounded, entries counted off
/// `budget`.
fn read_authorized_keys(
    root: &Root,
    account: &accounts::Account,
    settings: &Settings,
    owners: &HashMap<u32, String>,
    budget: &mut usize,
    notes: &mut Notes,
) -> AccountKeys {
    let mut keys = AccountKeys::default();
    let home = root.resolve(Path::new(&account.home)).ok().map(|r| r.path);
    let mut read_files: BTreeSet<PathBuf> = BTreeSet::new();
    for template in &settings.authorized_keys_files {
        let file =
            match authorized_keys::expand(template, &account.home, &account.login, account.uid) {
                Ok(file) => file,
                Err(reason) => {
                    notes.skip(template, format!("{}: {reason}", account.login));
                    keys.unseen = true;
                    continue;
                }
            };
        let resolved = match root.resolve(Path::new(&file)) {
            Ok(resolved) => resolved,
            Err(ResolveError::NotFound) => {
                let dangling = std::fs::symlink_metadata(root.real(Path::new(&file)))
                    .is_ok_and(|m| m.file_type().is_symlink());
                if dangling {
                    notes.skip(
                        &file,
                        "symlink whose target does not exist under the root: not followed",
                    );
                }
                continue;
            }
            Err(ResolveError::TooManySymlinks) => {
                notes.skip(&file, "too many symlinks: not followed");
                keys.unseen = true;
                continue;
            }
            Err(ResolveError::Io(e)) => {
                notes.skip(&file, format!("cannot resolve: {e}"));
                keys.unseen = true;
                continue;
            }
        };
        if resolved.via_symlink
            && lexically_within(&file, &account.home)
            && !home
                .as_deref()
                .is_some_and(|home| root::within(&resolved.path, home))
        {
            notes.skip(
                &file,
                format!(
                    "symlink to {} outside the home of {}: not followed",
                    resolved.path.display(),
                    account.login
                ),
            );
            keys.unseen = true;
            continue;
        }
        if !read_files.insert(resolved.path.clone()) {
            continue;
        }
        let contents = match root.read(&resolved.path, authorized_keys::MAX_FILE_BYTES) {
            Ok(contents) => contents,
            Err(OpenError::NotRegular) => {
                notes.skip(&file, "not a regular file: sshd reads no keys from it");
                continue;
            }
            Err(OpenError::Io(e)) => {
                notes.skip(&file, format!("cannot read: {e}"));
                keys.unseen = true;
                continue;
            }
        };
        if contents.truncated {
            notes.limits_hit = true;
            keys.unseen = true;
            notes.skip(
                &file,
                format!(
                    "larger than {0} bytes: only the first {0} bytes were read",
                    authorized_keys::MAX_FILE_BYTES
                ),
            );
        }
        let parsed = authorized_keys::parse(&contents.bytes, contents.truncated, budget);
        if parsed.budget_exhausted {
            notes.limits_hit = true;
            keys.unseen = true;
            notes.skip(
                &file,
                format!(
                    "entry limit ({}) reached: the rest was not read",
                    authorized_keys::MAX_ENTRIES
                ),
            );
        }
        let metadata = &contents.metadata;
        if !parsed.entries.is_empty() {
            let mtime = metadata.mtime();
            keys.oldest_mtime = Some(keys.oldest_mtime.map_or(mtime, |o| o.min(mtime)));
        }
        for entry in parsed.entries {
            keys.entries.push(AuthorizedKey {
                file: file.clone(),
                line: entry.line,
                key_type: entry.key_type,
                bits: entry.bits,
                fingerprint: entry.fingerprint,
                comment: entry.comment,
                options: entry.options,
                cert_authority: entry.cert_authority,
                file_owner: owner_name(owners, metadata.uid()),
                file_mode: root::mode_string(metadata),
                file_mtime: metadata.mtime(),
            });
        }
        for (line, error) in parsed.bad {
            keys.bad_lines.push(BadLine {
                file: file.clone(),
                line,
                error,
            });
        }
    }
    keys
}

/// Walk every distinct home (not `/`, not one inside another home; login-shell accounts
/// first, so a bound cuts the least interesting homes), then every `--scan` path, for
/// private keys: the unencrypted ones and the number of encrypted ones.
fn find_private_keys(
    root: &Root,
    accounts: &[accounts::Account],
    scan: &[PathBuf],
    owners: &HashMap<u32, String>,
    notes: &mut Notes,
) -> (Vec<PrivateKey>, u64) {
    let mut homes: Vec<(bool, PathBuf)> = Vec::new();
    let mut slash_home = false;
    for account in accounts {
        let Ok(resolved) = root.resolve(Path::new(&account.home)) else {
            continue;
        };
        if resolved.path == Path::new("/") {
            slash_home = true;
            continue;
        }
        let login_shell = accounts::is_login_shell(&account.shell);
        match homes.iter_mut().find(|(_, h)| *h == resolved.path) {
            Some(existing) => existing.0 |= login_shell,
            None => homes.push((login_shell, resolved.path)),
        }
    }
    if slash_home {
        notes.skip(
            "/",
            "a home directory is /: not walked for private keys (use --scan)",
        );
    }
    let all_homes: Vec<PathBuf> = homes.iter().map(|(_, h)| h.clone()).collect();
    homes.retain(|(_, h)| {
        !all_homes
            .iter()
            .any(|other| other != h && h.starts_with(other))
    });
    homes.sort_by_key(|(login_shell, _)| !*login_shell);

    let mut walker = private_keys::Walker::new(root);
    for (_, home) in &homes {
        walker.walk(home, private_keys::MAX_HOME_DEPTH);
    }
    for path in scan {
        let host = Path::new("/").join(path);
        match root.resolve(&host) {
            Ok(resolved) => walker.walk(&resolved.path, private_keys::MAX_SCAN_DEPTH),
            Err(_) => notes.skip(&root::display(&host), "--scan path does not exist"),
        }
    }
    notes.limits_hit |= walker.limits_hit;
    for (path, reason) in walker.skipped {
        notes.skip(&root::display(&path), reason);
    }
    let found = walker
        .found
        .into_iter()
        .map(|key| PrivateKey {
            path: root::display(&key.path),
            format: key.format,
            key_type: key.key_type,
            fingerprint: key.fingerprint,
            owner: owner_name(owners, key.uid),
            mode: key.mode,
            mtime: key.mtime,
        })
        .collect();
    (found, walker.encrypted)
}

/// Read a system file under the root, bounded.
fn read_system_file(root: &Root, path: &str) -> Result<String, String> {
    let resolved = root.resolve(Path::new(path)).map_err(|e| match e {
        ResolveError::NotFound => "no such file".to_owned(),
        ResolveError::TooManySymlinks => "too many symlinks".to_owned(),
        ResolveError::Io(e) => e,
    })?;
    let contents = root
        .read(&resolved.path, MAX_SYSTEM_FILE_BYTES)
        .map_err(|e| e.to_string())?;
    if contents.truncated {
        return Err(format!("larger than {MAX_SYSTEM_FILE_BYTES} bytes"));
    }
    Ok(String::from_utf8_lossy(&contents.bytes).into_owned())
}

/// Whether the host path `file` lies in `home`, by its text (before symlinks).
fn lexically_within(file: &str, home: &str) -> bool {
    let home = home.trim_end_matches('/');
    !home.is_empty() && Path::new(file).starts_with(home)
}

/// `host_name` from the host config, else the host's hostname (under `--root`, its
/// `/etc/hostname`), else `unknown`.
fn host_name(root: &Root, config: Option<&HostConfig>) -> String {
    if let Some(name) = config.and_then(|c| c.host_name.clone()) {
        return name;
    }
    let from_root = || {
        let text = read_system_file(root, "/etc/hostname").ok()?;
        let name = text.trim().to_ascii_lowercase();
        writ_formats::profile::is_valid_host_pattern(&name).then_some(name)
    };
    let name = if root.is_system_root() {
        crate::config::system_host_name()
    } else {
        from_root()
    };
    name.unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Verdict;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm/RAlphM3+hUG6wWfcO5bIUIaqMLa2ywxcOK1wMWbh";

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// Without sshd (it fails), with a symlink out of a home and a file over the size
    /// bound: everything is reported, nothing is followed, verdicts are conservative.
    #[test]
    fn symlinks_bounds_and_a_failing_sshd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        write(
            &root.join("etc/passwd"),
            "alice:x:1000:1000::/home/alice:/bin/bash\n\
             mallory:x:1001:1001::/home/mallory:/bin/bash\n\
             big:x:1002:1002::/home/big:/bin/bash\n\
             nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
        );
        write(
            &root.join("etc/shadow"),
            "alice:!::\nmallory:!::\nbig:!::\n",
        );
        write(
            &root.join("home/alice/.ssh/authorized_keys"),
            &format!("{KEY} alice\n"),
        );
        std::fs::create_dir_all(root.join("home/mallory/.ssh")).expect("mkdir");
        std::os::unix::fs::symlink(
            "/home/alice/.ssh/authorized_keys",
            root.join("home/mallory/.ssh/authorized_keys"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink("/nowhere", root.join("home/mallory/.ssh/authorized_keys2"))
            .expect("symlink");
        let line = format!("{KEY} big\n");
        let lines =
            usize::try_from(authorized_keys::MAX_FILE_BYTES).expect("size") / line.len() + 10;
        write(
            &root.join("home/big/.ssh/authorized_keys"),
            &line.repeat(lines),
        );
        let config = dir.path().join("sshd_config");
        write(
            &config,
            "AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             Match User alice\n  PasswordAuthentication yes\n",
        );
        let options = Options {
            root,
            sshd: PathBuf::from("/bin/false"),
            sshd_config: config,
            scan: vec![PathBuf::from("/missing")],
            host_config: dir.path().join("host.toml"),
        };
        let findings = run(&options, 1_700_000_000).expect("inventory");
        let inventory = &findings.inventory;
        assert_eq!(inventory.generated_at, 1_700_000_000);
        assert_eq!(
            inventory.sshd.error.as_deref(),
            Some("sshd -T exited with status 1")
        );
        assert!(!inventory.sshd.password_authentication);
        assert_eq!(inventory.sshd.match_blocks_not_evaluated.len(), 1);
        assert!(!inventory.writ_enforced);
        assert!(inventory.enforcement_problems[0].starts_with("sshd -T failed"));
        assert!(
            inventory
                .enforcement_problems
                .iter()
                .any(|p| p.contains("host config") && p.contains("missing"))
        );
        let verdicts: Vec<(&str, Verdict)> = inventory
            .accounts
            .iter()
            .map(|a| (a.login.as_str(), a.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("alice", Verdict::StaticKeys),
                ("mallory", Verdict::Unmanaged),
                ("big", Verdict::StaticKeys),
                ("nobody", Verdict::NoLogin),
            ]
        );
        assert!(inventory.accounts[1].authorized_keys.is_empty());
        let reasons: Vec<(&str, &str)> = inventory
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.reason.as_str()))
            .collect();
        assert!(
            reasons.contains(&(
                "/home/mallory/.ssh/authorized_keys",
                "symlink to /home/alice/.ssh/authorized_keys outside the home of mallory: not \
                 followed"
            )),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(
                |(path, reason)| *path == "/home/mallory/.ssh/authorized_keys2"
                    && reason.contains("does not exist")
            ),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|(path, reason)| *path == "/home/big/.ssh/authorized_keys"
                    && reason.starts_with("larger than")),
            "{reasons:?}"
        );
        assert!(reasons.contains(&("/missing", "--scan path does not exist")));
        assert!(inventory.limits_hit);
        let big = &inventory.accounts[2];
        assert_eq!(
            big.static_key_count,
            u64::try_from(lines - 10).expect("count")
        );
        assert!(big.bad_lines.is_empty(), "the cut line is not a bad line");
        assert!(findings.details[1].unseen_files);
    }
}
