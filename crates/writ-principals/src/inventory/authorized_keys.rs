//! authorized_keys files as sshd reads them: which files (`AuthorizedKeysFile` with its
//! `%h`, `%u`, `%U`, `%%` tokens, relative to the home) and what each line says (options,
//! key type and size, SHA-256 fingerprint, comment), or why sshd cannot use a line.
//! Pure: the caller reads the files (bounded) and passes their bytes.
//!
//! A bad line is reported by number and a short reason, never by its content: at most an
//! escaped option name or key type of [`MAX_EXCERPT`] characters, and nothing that looks
//! like base64 (a private key pasted by mistake must not be copied into a report).

use ssh_key::public::KeyData;
use ssh_key::{EcdsaCurve, HashAlg, PublicKey};

/// Largest part of one authorized_keys file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most entries read over the whole inventory.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest excerpt (an option name or key type) quoted in an error.
pub const MAX_EXCERPT: usize = 40;
/// Longest comment kept.
const MAX_COMMENT: usize = 1024;

/// Options that take no value (sshd's `auth-options.c`), lowercase.
const FLAG_OPTIONS: [&str; 13] = [
    "agent-forwarding",
    "cert-authority",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-user-rc",
    "no-x11-forwarding",
    "port-forwarding",
    "pty",
    "user-rc",
    "x11-forwarding",
    "restrict",
    "no-touch-required",
];
/// More flag options (split only to keep the arrays short).
const MORE_FLAG_OPTIONS: [&str; 1] = ["verify-required"];
/// Options that take a quoted value, lowercase.
const VALUE_OPTIONS: [&str; 8] = [
    "command",
    "environment",
    "expiry-time",
    "from",
    "permitlisten",
    "permitopen",
    "principals",
    "tunnel",
];

/// One usable entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Line number (from 1).
    pub line: u64,
    /// The key's algorithm name.
    pub key_type: String,
    /// Its size in bits.
    pub bits: u32,
    /// `SHA256:…`.
    pub fingerprint: String,
    /// The comment (bounded).
    pub comment: String,
    /// The options as written.
    pub options: Vec<String>,
    /// Whether `cert-authority` is among them.
    pub cert_authority: bool,
}

/// The entries and bad lines of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Usable entries.
    pub entries: Vec<Entry>,
    /// `(line, reason)` of each line sshd cannot use.
    pub bad: Vec<(u64, String)>,
    /// Whether the entry budget ran out before the end of the file.
    pub budget_exhausted: bool,
}

/// Expand an `AuthorizedKeysFile` template for an account, as sshd does: tokens, then a
/// relative path is taken relative to the home directory.
pub fn expand(template: &str, home: &str, login: &str, uid: u32) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(home),
            Some('u') => out.push_str(login),
            Some('U') => out.push_str(&uid.to_string()),
            Some(other) => {
                return Err(format!(
                    "unknown token %{} in AuthorizedKeysFile",
                    escape(&other.to_string())
                ));
            }
            None => return Err("AuthorizedKeysFile ends with %".to_owned()),
        }
    }
    if out.starts_with('/') {
        Ok(out)
    } else {
        Ok(format!("{}/{out}", home.trim_end_matches('/')))
    }
}

/// Parse a file's bytes, taking at most `*budget` entries (and counting them off). When
/// `truncated`, the last (partial) line is left out.
pub fn parse(bytes: &[u8], truncated: bool, budget: &mut usize) -> Parsed {
    let bytes = if truncated {
        match bytes.iter().rposition(|b| *b == b'\n') {
            Some(end) => &bytes[..end],
            None => &[],
        }
    } else {
        bytes
    };
    let mut parsed = Parsed::default();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let number = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
        let text = String::from_utf8_lossy(raw);
        match parse_line(&text) {
            Ok(None) => {}
            Ok(Some(mut entry)) => {
                if *budget == 0 {
                    parsed.budget_exhausted = true;
                    break;
                }
                *budget -= 1;
                entry.line = number;
                parsed.entries.push(entry);
            }
            Err(reason) => parsed.bad.push((number, reason)),
        }
    }
    parsed
}

/// Parse one line: `Ok(None)` for blank and comment lines, the entry (with `line` 0), or
/// why sshd cannot use it.
pub fn parse_line(line: &str) -> Result<Option<Entry>, String> {
    let line = line.trim_end_matches(['\r', '\n']).trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.starts_with("-----") {
        return Err("PEM text, not a public key (a private key pasted here?)".to_owned());
    }
    let first = line.split_whitespace().next().unwrap_or_default();
    let (options, rest) = if is_key_type(first) {
        (Vec::new(), line)
    } else {
        let (options, rest) = parse_options(line)?;
        (options, rest.trim_start())
    };
    let mut words = rest.splitn(3, |c: char| c.is_whitespace());
    let key_type = words.next().unwrap_or_default();
    let data = words.next().map(str::trim).unwrap_or_default();
    let comment = words.next().map(str::trim).unwrap_or_default();
    if key_type.is_empty() {
        return Err("no key after the options".to_owned());
    }
    if !is_key_type(key_type) {
        return Err(format!("unknown key type {}", excerpt(key_type)));
    }
    if data.is_empty() {
        return Err("no key data after the key type".to_owned());
    }
    let key = PublicKey::from_openssh(&format!("{key_type} {data}"))
        .map_err(|e| format!("{key_type} key does not parse ({e})"))?;
    if matches!(key.key_data(), KeyData::Other(_)) {
        return Err(format!("unknown key type {}", excerpt(key_type)));
    }
    let cert_authority = options
        .iter()
        .any(|o| o.eq_ignore_ascii_case("cert-authority"));
    Ok(Some(Entry {
        line: 0,
        key_type: key.algorithm().as_str().to_owned(),
        bits: key_bits(key.key_data()),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        comment: comment.chars().take(MAX_COMMENT).collect(),
        options,
        cert_authority,
    }))
}

/// Key algorithms sshd accepts in authorized_keys (plain keys and certificates).
fn is_key_type(word: &str) -> bool {
    let base = word.strip_suffix("-cert-v01@openssh.com").unwrap_or(word);
    matches!(
        base,
        "ssh-ed25519"
            | "ssh-rsa"
            | "ssh-dss"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521"
            | "sk-ssh-ed25519@openssh.com"
            | "sk-ecdsa-sha2-nistp256@openssh.com"
    ) || matches!(
        word,
        "sk-ssh-ed25519-cert-v01@openssh.com" | "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com"
    )
}

/// Split the options at the start of `line` (comma-separated, values in double quotes
/// with `\"` escapes, ended by unquoted whitespace) from the rest.
pub fn parse_options(line: &str) -> Result<(Vec<String>, &str), String> {
    let mut options = Vec::new();
    let mut rest = line;
    loop {
        let name_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        let lower = name.to_ascii_lowercase();
        if name.is_empty() {
            return Err("empty option".to_owned());
        }
        rest = &rest[name_end..];
        if let Some(after) = rest.strip_prefix('=') {
            if !VALUE_OPTIONS.contains(&lower.as_str()) {
                return Err(if is_flag(&lower) {
                    format!("option {} takes no value", excerpt(name))
                } else {
                    format!("unknown option {}", excerpt(name))
                });
            }
            let Some(quoted) = after.strip_prefix('"') else {
                return Err(format!(
                    "the value of option {} is not in double quotes",
                    excerpt(name)
                ));
            };
            let end = closing_quote(quoted)
                .ok_or_else(|| format!("unterminated quoted value in option {}", excerpt(name)))?;
            let value = &quoted[..end];
            check_value(&lower, value)?;
            options.push(format!("{name}=\"{value}\""));
            rest = &quoted[end + 1..];
        } else if VALUE_OPTIONS.contains(&lower.as_str()) {
            return Err(format!("option {} needs a value", excerpt(name)));
        } else if is_flag(&lower) {
            options.push(name.to_owned());
        } else {
            return Err(format!("unknown option {}", excerpt(name)));
        }
        match rest.chars().next() {
            Some(',') => rest = &rest[1..],
            Some(c) if c.is_whitespace() => return Ok((options, rest)),
            None => return Err("no key after the options".to_owned()),
            Some(_) => return Err("options are not separated by commas".to_owned()),
        }
    }
}

fn is_flag(lower: &str) -> bool {
    FLAG_OPTIONS.contains(&lower) || MORE_FLAG_OPTIONS.contains(&lower)
}

/// The index of the first `"` in `text` not escaped by a backslash.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(at),
            _ => escaped = false,
        }
    }
    None
}

/// What sshd checks of a value when it parses the line.
fn check_value(option: &str, value: &str) -> Result<(), String> {
    match option {
        "expiry-time"
            if !(matches!(value.len(), 8 | 12 | 14)
                && value.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Err("expiry-time is not YYYYMMDD[HHMM[SS]]".to_owned())
        }
        "tunnel" if value != "any" && value.parse::<u32>().is_err() => {
            Err("tunnel is not a number".to_owned())
        }
        "environment" if !value.contains('=') => Err("environment is not NAME=value".to_owned()),
        _ => Ok(()),
    }
}

/// The size of a key as `ssh-keygen -l` prints it.
pub fn key_bits(key: &KeyData) -> u32 {
    match key {
        KeyData::Rsa(rsa) => mpint_bits(rsa.n.as_positive_bytes()),
        KeyData::Dsa(dsa) => mpint_bits(dsa.p.as_positive_bytes()),
        KeyData::Ecdsa(ecdsa) => curve_bits(ecdsa.curve()),
        KeyData::Ed25519(_) | KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_) => 256,
        _ => 0,
    }
}

/// The bits of an ECDSA curve.
pub fn curve_bits(curve: EcdsaCurve) -> u32 {
    match curve {
        EcdsaCurve::NistP256 => 256,
        EcdsaCurve::NistP384 => 384,
        EcdsaCurve::NistP521 => 521,
    }
}

fn mpint_bits(bytes: Option<&[u8]>) -> u32 {
    let Some(bytes) = bytes else {
        return 0;
    };
    let bytes = match bytes.iter().position(|b| *b != 0) {
        Some(start) => &bytes[start..],
        None => return 0,
    };
    let whole = u32::try_from(bytes.len().saturating_sub(1))
        .unwrap_or(u32::MAX)
        .saturating_mul(8);
    whole.saturating_add(8 - bytes[0].leading_zeros())
}

/// An option name or key type for an error: escaped and quoted, or `(not shown)` when it
/// is long or looks like base64.
fn excerpt(word: &str) -> String {
    let base64ish = word.len() >= 16
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if word.chars().count() > MAX_EXCERPT || base64ish {
        return "(not shown)".to_owned();
    }
    format!("\"{}\"", escape(word))
}

fn escape(text: &str) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writ_formats::text::write_escaped(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn keygen(dir: &std::path::Path, name: &str, args: &[&str]) -> (String, String) {
        let path = dir.join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .args(args)
            .status()
            .expect("ssh-keygen");
        assert!(status.success());
        let public = std::fs::read_to_string(path.with_extension("pub"))
            .or_else(|_| std::fs::read_to_string(format!("{}.pub", path.display())))
            .expect("pub");
        let listing = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(format!("{}.pub", path.display()))
            .output()
            .expect("ssh-keygen -l");
        (
            public.trim().to_owned(),
            String::from_utf8_lossy(&listing.stdout).trim().to_owned(),
        )
    }

    #[test]
    fn fingerprints_and_bits_match_ssh_keygen() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, args) in [
            ("ed", &["-t", "ed25519"][..]),
            ("rsa3072", &["-t", "rsa", "-b", "3072"]),
            ("rsa2049", &["-t", "rsa", "-b", "2049"]),
            ("p384", &["-t", "ecdsa", "-b", "384"]),
            ("p521", &["-t", "ecdsa", "-b", "521"]),
        ] {
            let (public, listing) = keygen(dir.path(), name, args);
            // `3072 SHA256:… rsa3072 (RSA)`
            let mut fields = listing.split_whitespace();
            let bits: u32 = fields.next().and_then(|b| b.parse().ok()).expect("bits");
            let fingerprint = fields.next().expect("fingerprint");
            let entry = parse_line(&format!("restrict {public}"))
                .expect("parses")
                .expect("entry");
            assert_eq!(entry.fingerprint, fingerprint, "{name}");
            assert_eq!(entry.bits, bits, "{name}");
            assert_eq!(entry.comment, name);
            assert_eq!(entry.options, ["restrict"]);
        }
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm/RAlphM3+hUG6wWfcO5bIUIaqMLa2ywxcOK1wMWbh";

    #[test]
    fn options_with_quoted_commas_and_escapes() {
        let line = format!(
            "from=\"10.0.0.0/8,192.168.1.*\",command=\"echo \\\"a, b\\\" && true\",no-pty,\
             expiry-time=\"20300101\" {KEY} alice@laptop  with spaces"
        );
        let entry = parse_line(&line).expect("parses").expect("entry");
        assert_eq!(
            entry.options,
            [
                "from=\"10.0.0.0/8,192.168.1.*\"",
                "command=\"echo \\\"a, b\\\" && true\"",
                "no-pty",
                "expiry-time=\"20300101\""
            ]
        );
        assert_eq!(entry.key_type, "ssh-ed25519");
        assert_eq!(entry.bits, 256);
        assert_eq!(entry.comment, "alice@laptop  with spaces");
        assert!(!entry.cert_authority);
        let ca = parse_line(&format!("cert-authority,principals=\"a,b\" {KEY}"))
            .expect("parses")
            .expect("entry");
        assert!(ca.cert_authority);
        // No options, no comment.
        let bare = parse_line(KEY).expect("parses").expect("entry");
        assert!(bare.options.is_empty());
        assert_eq!(bare.comment, "");
        assert_eq!(parse_line("  # comment"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
    }

    #[test]
    fn bad_lines_say_why_without_the_content() {
        let private_body = "MIIEowIBAAKCAQEAsecretsecretsecretsecretsecret";
        for (line, expected) in [
            (
                format!("bogus-option {KEY}"),
                "unknown option \"bogus-option\"",
            ),
            (
                format!("no-pty=\"x\" {KEY}"),
                "option \"no-pty\" takes no value",
            ),
            (format!("command {KEY}"), "option \"command\" needs a value"),
            (
                format!("command=\"unterminated {KEY}"),
                "unterminated quoted value in option \"command\"",
            ),
            (
                format!("command=x {KEY}"),
                "the value of option \"command\" is not in double quotes",
            ),
            ("ssh-ed25519".to_owned(), "no key data after the key type"),
            ("restrict".to_owned(), "no key after the options"),
            (
                format!("restrict foo-key {KEY}"),
                "unknown key type \"foo-key\"",
            ),
            (private_body.to_owned(), "unknown option (not shown)"),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----".to_owned(),
                "PEM text, not a public key (a private key pasted here?)",
            ),
            (
                format!("expiry-time=\"2030\" {KEY}"),
                "expiry-time is not YYYYMMDD[HHMM[SS]]",
            ),
        ] {
            let error = parse_line(&line).expect_err(&line);
            assert_eq!(error, expected, "{line}");
            assert!(!error.contains("secret"));
        }
        let error = parse_line("ssh-ed25519 AAAAnotakey").expect_err("bad base64");
        assert!(
            error.starts_with("ssh-ed25519 key does not parse"),
            "{error}"
        );
        // A key type that does not match the key data.
        let mismatched = KEY.replace("ssh-ed25519", "ssh-rsa");
        assert!(parse_line(&mismatched).is_err());
    }

    #[test]
    fn files_are_bounded() {
        let text = format!("{KEY} a\n\nnot a key\n{KEY} b\n{KEY} c\n");
        let mut budget = 10;
        let parsed = parse(text.as_bytes(), false, &mut budget);
        assert_eq!(
            parsed.entries.iter().map(|e| e.line).collect::<Vec<_>>(),
            [1, 4, 5]
        );
        assert_eq!(parsed.bad.len(), 1);
        assert_eq!(parsed.bad[0].0, 3);
        assert_eq!(budget, 7);
        let mut budget = 2;
        let parsed = parse(text.as_bytes(), false, &mut budget);
        assert_eq!(parsed.entries.len(), 2);
        assert!(parsed.budget_exhausted);
        // A truncated read drops the partial last line.
        let mut budget = 10;
        let cut = &text.as_bytes()[..text.len() - 10];
        let parsed = parse(cut, true, &mut budget);
        assert_eq!(parsed.entries.len(), 2);
        assert!(parsed.bad.len() == 1);
    }

    #[test]
    fn token_expansion() {
        assert_eq!(
            expand(".ssh/authorized_keys", "/home/alice", "alice", 1000),
            Ok("/home/alice/.ssh/authorized_keys".to_owned())
        );
        assert_eq!(
            expand("/etc/ssh/keys/%u.%U.%%", "/home/alice/", "alice", 1000),
            Ok("/etc/ssh/keys/alice.1000.%".to_owned())
        );
        assert_eq!(
            expand("%h/.ssh/k", "/", "root", 0),
            Ok("//.ssh/k".to_owned())
        );
        assert!(expand("%x", "/h", "a", 1).is_err());
        assert!(expand("a%", "/h", "a", 1).is_err());
    }
}
