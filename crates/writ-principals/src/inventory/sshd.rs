//! sshd's effective configuration, as sshd itself computes it: `sshd -T -f CONFIG` for the
//! global settings, and `sshd -T -f CONFIG -C user=LOGIN,host=localhost,addr=127.0.0.1`
//! for accounts a `Match User` / `Match Group` block can select. The config files
//! (following `Include`, bounded) are read only to find those `Match` lines, to group
//! accounts by the set of blocks that can select them (accounts in the same group get the
//! same settings, so sshd runs once per group, never once per account), and, when
//! `sshd -T` fails, to read the global settings without sshd.
//!
//! What it cannot tell: blocks whose criteria depend on the connection (Address, Host,
//! LocalAddress, LocalPort, RDomain) are listed, not evaluated (the per-account runs use a
//! loopback connection); `Match Group` is evaluated by sshd against this machine's group
//! database. It never changes sshd's configuration and never signals sshd.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where sshd resolves a relative `Include` (its compiled-in SSHDIR).
pub const SSHD_DIR: &str = "/etc/ssh";
/// The deepest `Include` nesting followed (sshd's own limit is 16).
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// Most configuration files read.
pub const MAX_CONFIG_FILES: usize = 256;
/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most `sshd -T -C` runs (one per distinct set of Match User/Group blocks).
pub const MAX_SSHD_RUNS: usize = 64;
/// How long one `sshd -T` may take.
pub const SSHD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `sshd -T` output read.
const MAX_SSHD_OUTPUT: u64 = 1 << 20;
/// Longest sshd error line or Match criteria kept.
const MAX_TEXT: usize = 200;
/// Match criteria that depend on the connection rather than the account.
const CONNECTION_CRITERIA: [&str; 5] = ["address", "host", "localaddress", "localport", "rdomain"];

/// The settings the inventory needs, from `sshd -T` (keywords in lowercase, one per line)
/// or, when sshd cannot run, from the config file. [`Default`] is OpenSSH's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `AuthorizedKeysFile` templates; empty for `none`.
    pub authorized_keys_files: Vec<String>,
    /// `AuthorizedKeysCommand`.
    pub authorized_keys_command: Option<String>,
    /// `AuthorizedPrincipalsFile`.
    pub authorized_principals_file: Option<String>,
    /// `AuthorizedPrincipalsCommand`.
    pub authorized_principals_command: Option<String>,
    /// `TrustedUserCAKeys`.
    pub trusted_user_ca_keys: Option<String>,
    /// `PasswordAuthentication`.
    pub password_authentication: bool,
    /// `KbdInteractiveAuthentication` (formerly `ChallengeResponseAuthentication`).
    pub kbd_interactive_authentication: bool,
    /// `PermitRootLogin`, with `without-password` spelled `prohibit-password`.
    pub permit_root_login: String,
    /// `PubkeyAuthentication`.
    pub pubkey_authentication: bool,
    /// `PermitEmptyPasswords`.
    pub permit_empty_passwords: bool,
    /// `AuthenticationMethods` (`any` by default).
    pub authentication_methods: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            authorized_keys_files: vec![
                ".ssh/authorized_keys".to_owned(),
                ".ssh/authorized_keys2".to_owned(),
            ],
            authorized_keys_command: None,
            authorized_principals_file: None,
            authorized_principals_command: None,
            trusted_user_ca_keys: None,
            password_authentication: true,
            kbd_interactive_authentication: true,
            permit_root_login: "prohibit-password".to_owned(),
            pubkey_authentication: true,
            permit_empty_passwords: false,
            authentication_methods: "any".to_owned(),
        }
    }
}

impl Settings {
    /// Parse `sshd -T` output.
    pub fn from_dump(text: &str) -> Settings {
        let mut settings = Settings::default();
        for line in text.lines() {
            let (keyword, value) = line.split_once(' ').unwrap_or((line, ""));
            settings.apply(&keyword.to_ascii_lowercase(), value.trim());
        }
        settings
    }

    /// The global settings written in the config files (first value wins, as in sshd),
    /// for when sshd cannot run.
    pub fn from_directives(directives: &[Directive]) -> Settings {
        let mut settings = Settings::default();
        let mut seen = HashSet::new();
        for directive in directives.iter().filter(|d| !d.in_match) {
            let keyword = match directive.keyword.as_str() {
                "challengeresponseauthentication" => "kbdinteractiveauthentication",
                other => other,
            };
            if seen.insert(keyword.to_owned()) {
                settings.apply(keyword, &directive.value);
            }
        }
        settings
    }

    fn apply(&mut self, keyword: &str, value: &str) {
        let optional = |value: &str| {
            (!value.is_empty() && !value.eq_ignore_ascii_case("none")).then(|| value.to_owned())
        };
        let yes = |value: &str| value.eq_ignore_ascii_case("yes");
        match keyword {
            "authorizedkeysfile" => {
                self.authorized_keys_files = if value.eq_ignore_ascii_case("none") {
                    Vec::new()
                } else {
                    split_args(value)
                }
            }
            "authorizedkeyscommand" => self.authorized_keys_command = optional(value),
            "authorizedprincipalsfile" => self.authorized_principals_file = optional(value),
            "authorizedprincipalscommand" => self.authorized_principals_command = optional(value),
            "trustedusercakeys" => self.trusted_user_ca_keys = optional(value),
            "passwordauthentication" => self.password_authentication = yes(value),
            "kbdinteractiveauthentication" => self.kbd_interactive_authentication = yes(value),
            "pubkeyauthentication" => self.pubkey_authentication = yes(value),
            "permitemptypasswords" => self.permit_empty_passwords = yes(value),
            "authenticationmethods" => self.authentication_methods = value.to_owned(),
            "permitrootlogin" => {
                let value = value.to_ascii_lowercase();
                self.permit_root_login = if value == "without-password" {
                    "prohibit-password".to_owned()
                } else {
                    value
                };
            }
            _ => {}
        }
    }
}

/// One directive of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The file.
    pub file: PathBuf,
    /// Line number (from 1).
    pub line: u64,
    /// The keyword in lowercase.
    pub keyword: String,
    /// The rest of the line.
    pub value: String,
    /// Whether it lies inside a Match block.
    pub in_match: bool,
}

/// A `Match` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The file.
    pub file: PathBuf,
    /// Line number (from 1).
    pub line: u64,
    /// The criteria as written (bounded).
    pub text: String,
    /// `(criterion in lowercase, argument)` pairs; `all` has an empty argument.
    pub criteria: Vec<(String, String)>,
}

impl Block {
    /// Whether a criterion depends on the connection rather than the account.
    pub fn depends_on_connection(&self) -> bool {
        self.criteria
            .iter()
            .any(|(kind, _)| CONNECTION_CRITERIA.contains(&kind.as_str()))
    }

    /// Whether it has a `User` or `Group` criterion.
    pub fn selects_accounts(&self) -> bool {
        self.criteria
            .iter()
            .any(|(kind, _)| kind == "user" || kind == "group")
    }

    /// Whether its `User` and `Group` criteria all select `login` (in `groups`); other
    /// criteria are taken as possibly true.
    pub fn may_select(&self, login: &str, groups: &[String]) -> bool {
        self.criteria
            .iter()
            .all(|(kind, list)| match kind.as_str() {
                "user" => match_pattern_list(login, list) == PatternMatch::Yes,
                "group" => group_match(groups, list),
                // Only invalid (unknown) users: never an account of /etc/passwd.
                "invalid-user" => false,
                _ => true,
            })
    }
}

/// What the config files say, as far as the inventory needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigScan {
    /// Every directive, in the order sshd reads them.
    pub directives: Vec<Directive>,
    /// Every Match line.
    pub blocks: Vec<Block>,
    /// Every `Include` pattern, made absolute.
    pub includes: Vec<String>,
    /// What could not be read.
    pub problems: Vec<String>,
    /// Whether a bound was hit.
    pub limits_hit: bool,
}

/// Read `config` and the files it includes.
pub fn scan_config(config: &Path) -> ConfigScan {
    let mut scan = ConfigScan::default();
    let mut files = 0usize;
    scan_file(config, 0, false, &mut scan, &mut files);
    scan
}

fn scan_file(path: &Path, depth: usize, in_match: bool, scan: &mut ConfigScan, files: &mut usize) {
    if depth > MAX_INCLUDE_DEPTH || *files >= MAX_CONFIG_FILES {
        scan.limits_hit = true;
        scan.problems.push(format!(
            "{}: not read (more than {MAX_INCLUDE_DEPTH} nested Includes or \
             {MAX_CONFIG_FILES} files)",
            path.display()
        ));
        return;
    }
    *files = files.saturating_add(1);
    let text = match std::fs::File::open(path).and_then(|file| {
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES).read_to_string(&mut text)?;
        Ok(text)
    }) {
        Ok(text) => text,
        Err(e) => {
            scan.problems
                .push(format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    let mut in_match = in_match;
    for (index, raw) in text.lines().enumerate() {
        let line = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
        let Some((keyword, value)) = split_directive(raw) else {
            continue;
        };
        match keyword.as_str() {
            "match" => {
                in_match = true;
                scan.blocks.push(Block {
                    file: path.to_owned(),
                    line,
                    text: bounded(&value),
                    criteria: parse_criteria(&value),
                });
            }
            "include" => {
                for pattern in split_args(&value) {
                    let pattern = if pattern.starts_with('/') {
                        pattern
                    } else {
                        format!("{SSHD_DIR}/{pattern}")
                    };
                    scan.includes.push(pattern.clone());
                    for file in glob(&pattern) {
                        scan_file(&file, depth.saturating_add(1), in_match, scan, files);
                    }
                }
            }
            _ => {}
        }
        scan.directives.push(Directive {
            file: path.to_owned(),
            line,
            keyword,
            value,
            in_match,
        });
    }
}

/// A config line's lowercase keyword and its value (without a trailing comment), or
/// `None` for blank and comment lines.
fn split_directive(raw: &str) -> Option<(String, String)> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let (keyword, rest) = line.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    Some((
        keyword.to_ascii_lowercase(),
        strip_comment(rest).trim().to_owned(),
    ))
}

/// `rest` up to a `#` that starts a word outside quotes.
fn strip_comment(rest: &str) -> &str {
    let mut quoted = false;
    let mut previous_space = true;
    for (at, c) in rest.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted && previous_space => return &rest[..at],
            _ => {}
        }
        previous_space = c.is_whitespace();
    }
    rest
}

/// Whitespace-separated words, `"…"` quoting kept together.
pub fn split_args(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

fn parse_criteria(value: &str) -> Vec<(String, String)> {
    let mut words = split_args(value).into_iter();
    let mut criteria = Vec::new();
    while let Some(word) = words.next() {
        let (kind, argument) = match word.split_once('=') {
            Some((kind, argument)) => (kind.to_ascii_lowercase(), argument.to_owned()),
            None => {
                let kind = word.to_ascii_lowercase();
                if kind == "all" {
                    (kind, String::new())
                } else {
                    (kind, words.next().unwrap_or_default())
                }
            }
        };
        criteria.push((kind, argument));
    }
    criteria
}

fn bounded(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= MAX_TEXT {
            out.push('…');
            break;
        }
        if writ_formats::text::is_unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The files an sshd `Include` pattern names, sorted (glob(3): `*`, `?`, `[…]` in any
/// component; a name starting with `.` only by a pattern that does).
pub fn glob(pattern: &str) -> Vec<PathBuf> {
    let mut matches = vec![PathBuf::from("/")];
    for part in Path::new(pattern).components().skip(1) {
        let part = part.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for dir in &matches {
            if !part.contains(['*', '?', '[']) {
                let path = dir.join(part.as_ref());
                if std::fs::symlink_metadata(&path).is_ok() {
                    next.push(path);
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| {
                    (!name.starts_with('.') || part.starts_with('.'))
                        && wildcard_match(&part, name, true)
                })
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|name| dir.join(name)));
        }
        matches = next;
        if matches.len() > MAX_CONFIG_FILES {
            matches.truncate(MAX_CONFIG_FILES);
        }
    }
    matches
}

/// Whether `text` matches `pattern` with `*` and `?` (and `[…]` classes when `classes`).
pub fn wildcard_match(pattern: &str, text: &str, classes: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') if classes => class_match(&p[pi..], t[ti]),
            Some(c) if *c == t[ti] => Some(1),
            _ => None,
        };
        match step {
            Some(width) => {
                pi += width;
                ti += 1;
            }
            None => match star {
                Some((star_p, star_t)) => {
                    pi = star_p + 1;
                    ti = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// If `class` (starting at `[`) matches `c`, the class's width in the pattern.
fn class_match(class: &[char], c: char) -> Option<usize> {
    let mut i = 1;
    let negated = matches!(class.get(1), Some('!') | Some('^'));
    if negated {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    while let Some(&x) = class.get(i) {
        if x == ']' && !first {
            return (found != negated).then_some(i + 1);
        }
        first = false;
        if class.get(i + 1) == Some(&'-') && class.get(i + 2).is_some_and(|e| *e != ']') {
            let end = class[i + 2];
            found |= x <= c && c <= end;
            i += 3;
        } else {
            found |= x == c;
            i += 1;
        }
    }
    // No closing bracket: a literal `[`.
    (c == '[').then_some(1)
}

/// The result of OpenSSH's `match_pattern_list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternMatch {
    /// A positive pattern matched and no negated one did.
    Yes,
    /// Nothing matched.
    No,
    /// A negated (`!…`) pattern matched.
    Negated,
}

/// OpenSSH's `match_pattern_list` (case-sensitive, as for `Match User`): a comma-separated
/// list of `*`/`?` patterns, each possibly negated with `!`.
pub fn match_pattern_list(text: &str, list: &str) -> PatternMatch {
    let mut result = PatternMatch::No;
    for pattern in list.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        if wildcard_match(pattern, text, false) {
            if negated {
                return PatternMatch::Negated;
            }
            result = PatternMatch::Yes;
        }
    }
    result
}

/// sshd's `Match Group`: some group matches and none is negated.
fn group_match(groups: &[String], list: &str) -> bool {
    let mut found = false;
    for group in groups {
        match match_pattern_list(group, list) {
            PatternMatch::Negated => return false,
            PatternMatch::Yes => found = true,
            PatternMatch::No => {}
        }
    }
    found
}

/// Run `sshd -T -f config` (with `-C user=LOGIN,host=localhost,addr=127.0.0.1` when
/// `login` is given) and parse its output; on failure, sshd's first error line.
pub fn dump(sshd: &Path, config: &Path, login: Option<&str>) -> Result<Settings, String> {
    let mut command = Command::new(sshd);
    command.arg("-T").arg("-f").arg(config);
    if let Some(login) = login {
        command
            .arg("-C")
            .arg(format!("user={login},host=localhost,addr=127.0.0.1"));
    }
    let (status, stdout, stderr) = run_bounded(command)?;
    if status != Some(0) {
        return Err(first_error_line(&stderr, status));
    }
    Ok(Settings::from_dump(&stdout))
}

/// sshd's first non-empty stderr line (escaped, bounded), or its exit status.
fn first_error_line(stderr: &str, status: Option<i32>) -> String {
    stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(bounded)
        .unwrap_or_else(|| match status {
            Some(code) => format!("sshd -T exited with status {code}"),
            None => "sshd -T was killed".to_owned(),
        })
}

/// Run `command` with no input, its output bounded and its time bounded by
/// [`SSHD_TIMEOUT`] (then it is killed).
fn run_bounded(mut command: Command) -> Result<(Option<i32>, String, String), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(MAX_SSHD_OUTPUT).read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + SSHD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} -T did not finish within {}s",
                    SSHD_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok((status.code(), stdout, stderr))
}

/// The settings of every account.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The global settings (`sshd -T` without a connection).
    pub global: Settings,
    /// sshd's error, when `sshd -T` failed (then everything is read from the file).
    pub error: Option<String>,
    /// Distinct effective settings; `variants[0]` is `global`.
    pub variants: Vec<Variant>,
    /// For each account (in the order given), its index into `variants`.
    pub account_variant: Vec<usize>,
    /// Blocks not evaluated (connection-dependent, or all of them when sshd failed).
    pub not_evaluated: Vec<Block>,
    /// What could not be evaluated, in words.
    pub problems: Vec<String>,
    /// Whether [`MAX_SSHD_RUNS`] or a config bound was hit.
    pub limits_hit: bool,
}

/// One set of effective settings and who has it.
#[derive(Debug, Clone)]
pub struct Variant {
    /// The settings.
    pub settings: Settings,
    /// The Match blocks (indices into the scan's blocks) that may select its accounts.
    pub blocks: Vec<usize>,
    /// The account sshd was asked about.
    pub representative: Option<String>,
}

/// A login that can be passed in `-C user=…`.
fn usable_in_connection_spec(login: &str) -> bool {
    !login.is_empty()
        && login
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ',' && c != '=')
}

/// Evaluate sshd's settings for `accounts` (login and groups), running sshd once for the
/// global settings and once per distinct, non-empty set of Match User/Group blocks that
/// may select an account (at most [`MAX_SSHD_RUNS`]); the others keep the global settings.
pub fn evaluate(
    sshd: &Path,
    config: &Path,
    scan: &ConfigScan,
    accounts: &[(&str, &[String])],
) -> Evaluation {
    let mut evaluation = Evaluation {
        global: Settings::default(),
        error: None,
        variants: Vec::new(),
        account_variant: vec![0; accounts.len()],
        not_evaluated: Vec::new(),
        problems: scan.problems.clone(),
        limits_hit: scan.limits_hit,
    };
    match dump(sshd, config, None) {
        Ok(settings) => evaluation.global = settings,
        Err(error) => {
            evaluation.global = Settings::from_directives(&scan.directives);
            evaluation.problems.push(format!(
                "sshd -T failed ({error}): settings were read from {} without sshd and Match \
                 blocks were not evaluated",
                config.display()
            ));
            evaluation.error = Some(error);
            evaluation.not_evaluated = scan.blocks.clone();
            evaluation.variants.push(Variant {
                settings: evaluation.global.clone(),
                blocks: Vec::new(),
                representative: None,
            });
            return evaluation;
        }
    }
    evaluation.not_evaluated = scan
        .blocks
        .iter()
        .filter(|b| b.depends_on_connection())
        .cloned()
        .collect();
    evaluation.variants.push(Variant {
        settings: evaluation.global.clone(),
        blocks: Vec::new(),
        representative: None,
    });
    if scan.blocks.is_empty() {
        return evaluation;
    }
    // Accounts grouped by the blocks that may select them, in order of first appearance.
    let mut groups: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
    let mut order: Vec<Vec<usize>> = Vec::new();
    for (index, (login, account_groups)) in accounts.iter().enumerate() {
        let signature: Vec<usize> = scan
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.selects_accounts() && b.may_select(login, account_groups))
            .map(|(i, _)| i)
            .collect();
        let members = groups.entry(signature.clone()).or_default();
        if members.is_empty() {
            order.push(signature);
        }
        members.push(index);
    }
    let mut runs = 0usize;
    // Accounts no Match User/Group block can select keep the global settings: a run with
    // a loopback connection could apply a `Match Address 127.0.0.1` block to them.
    for signature in order.into_iter().filter(|s| !s.is_empty()) {
        let members = groups.get(&signature).cloned().unwrap_or_default();
        let representative = members
            .iter()
            .map(|&i| accounts[i].0)
            .find(|login| usable_in_connection_spec(login));
        let describe = |members: &[usize]| {
            let mut names: Vec<&str> = members.iter().take(3).map(|&i| accounts[i].0).collect();
            if members.len() > 3 {
                names.push("…");
            }
            names.join(", ")
        };
        let Some(representative) = representative else {
            evaluation.problems.push(format!(
                "sshd's Match evaluation skipped for {} (no login sshd -C accepts): global \
                 settings used",
                describe(&members)
            ));
            continue;
        };
        if runs >= MAX_SSHD_RUNS {
            evaluation.limits_hit = true;
            evaluation.problems.push(format!(
                "more than {MAX_SSHD_RUNS} distinct Match User/Group combinations: global \
                 settings used for {}",
                describe(&members)
            ));
            continue;
        }
        runs = runs.saturating_add(1);
        match dump(sshd, config, Some(representative)) {
            Ok(settings) => {
                let variant = evaluation.variants.len();
                evaluation.variants.push(Variant {
                    settings,
                    blocks: signature.clone(),
                    representative: Some(representative.to_owned()),
                });
                for &member in &members {
                    evaluation.account_variant[member] = variant;
                }
            }
            Err(error) => evaluation.problems.push(format!(
                "sshd -T -C user={representative} failed ({error}): global settings used for {}",
                describe(&members)
            )),
        }
    }
    evaluation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_parsing() {
        let settings = Settings::from_dump(
            "port 22\nauthorizedkeysfile .ssh/authorized_keys %h/.ssh/extra\n\
             authorizedkeyscommand none\nauthorizedprincipalscommand /usr/bin/writ-principals \
             check --config /etc/writ/host.toml -- %u %k\ntrustedusercakeys \
             /var/lib/writ/trusted_user_ca_keys\npasswordauthentication no\n\
             kbdinteractiveauthentication no\npermitrootlogin without-password\n\
             pubkeyauthentication yes\n",
        );
        assert_eq!(
            settings.authorized_keys_files,
            [".ssh/authorized_keys", "%h/.ssh/extra"]
        );
        assert_eq!(settings.authorized_keys_command, None);
        assert_eq!(
            settings.authorized_principals_command.as_deref(),
            Some("/usr/bin/writ-principals check --config /etc/writ/host.toml -- %u %k")
        );
        assert!(!settings.password_authentication);
        assert_eq!(settings.permit_root_login, "prohibit-password");
        assert!(
            Settings::from_dump("authorizedkeysfile none\n")
                .authorized_keys_files
                .is_empty()
        );
    }

    #[test]
    fn patterns() {
        assert!(wildcard_match("*.conf", "10-writ.conf", true));
        assert!(!wildcard_match("*.conf", "10-writ.conf~", true));
        assert!(wildcard_match("a?c", "abc", false));
        assert!(wildcard_match("[0-9]*", "5x", true));
        assert!(!wildcard_match("[!0-9]*", "5x", true));
        assert!(wildcard_match("*", "", false));
        assert!(wildcard_match("a*b*c", "aXXbYYbc", false));
        assert_eq!(match_pattern_list("alice", "bob,al*"), PatternMatch::Yes);
        assert_eq!(
            match_pattern_list("alice", "*,!alice"),
            PatternMatch::Negated
        );
        assert_eq!(match_pattern_list("alice", "!root"), PatternMatch::No);
        assert_eq!(match_pattern_list("Alice", "alice"), PatternMatch::No);
    }

    #[test]
    fn config_scan_follows_includes_and_finds_match_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("conf.d");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(
            d.join("10-a.conf"),
            "Match User carol,dave\n  PubkeyAuthentication no\n",
        )
        .expect("write");
        std::fs::write(d.join(".hidden.conf"), "Match User hidden\n").expect("write");
        std::fs::write(d.join("20-b.txt"), "Match User nobody\n").expect("write");
        let main = dir.path().join("sshd_config");
        std::fs::write(
            &main,
            format!(
                "# comment\nInclude {}/*.conf\nPasswordAuthentication=no # off\n\
                 AuthorizedKeysFile .ssh/authorized_keys\n\
                 Match User bob Address 10.0.0.0/8\n  AuthorizedKeysFile none\n\
                 Match Group staff\n  PasswordAuthentication yes\nMatch all\n",
                d.display()
            ),
        )
        .expect("write");
        let scan = scan_config(&main);
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        let lines: Vec<(String, u64)> = scan
            .blocks
            .iter()
            .map(|b| {
                (
                    b.file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    b.line,
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                ("10-a.conf".to_owned(), 1),
                ("sshd_config".to_owned(), 5),
                ("sshd_config".to_owned(), 7),
                ("sshd_config".to_owned(), 9)
            ]
        );
        assert_eq!(scan.blocks[1].text, "User bob Address 10.0.0.0/8");
        assert!(scan.blocks[1].depends_on_connection());
        assert!(!scan.blocks[0].depends_on_connection());
        assert!(scan.blocks[0].may_select("dave", &[]));
        assert!(!scan.blocks[0].may_select("eve", &[]));
        assert!(scan.blocks[2].may_select("eve", &["staff".to_owned()]));
        assert!(!scan.blocks[3].selects_accounts());
        // The included Match block ends with its file: the main file's settings are global.
        let global = Settings::from_directives(&scan.directives);
        assert!(!global.password_authentication);
        assert!(global.pubkey_authentication);
        assert_eq!(global.authorized_keys_files, [".ssh/authorized_keys"]);
    }

    #[test]
    fn include_depth_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("loop.conf");
        std::fs::write(&main, format!("Include {}\n", main.display())).expect("write");
        let scan = scan_config(&main);
        assert!(scan.limits_hit);
        assert_eq!(scan.problems.len(), 1);
    }

    #[test]
    fn a_failing_sshd_gives_its_first_error_line() {
        assert_eq!(
            first_error_line("\n  no hostkeys available\nsecond\n", Some(1)),
            "no hostkeys available"
        );
        assert_eq!(
            first_error_line("", Some(255)),
            "sshd -T exited with status 255"
        );
        assert_eq!(
            dump(Path::new("/bin/false"), Path::new("/nonexistent"), None),
            Err("sshd -T exited with status 1".to_owned())
        );
        assert!(
            dump(Path::new("/nonexistent/sshd"), Path::new("/x"), None)
                .expect_err("no binary")
                .starts_with("cannot run")
        );
    }
}
