//! The trust bundle: the CA public keys hosts must trust, in the format of sshd's
//! `TrustedUserCAKeys` file. The CA writes it (`GET /v1/ca/trusted-keys`, whose exact
//! bytes a version-2 revocation feed names by digest); `writ-principals sync` reads it
//! and installs it as `trusted_user_ca_keys`, which sshd and `writ-principals check`
//! read. Writer and reader are both here, so CA and hosts agree on one format.
//!
//! The format, as sshd reads it: one OpenSSH public key per line; blank lines and lines
//! whose first non-blank character is `#` are comments. The CA writes no comments, but a
//! reader accepts them everywhere. Pure: no I/O, no clock.

use ssh_key::PublicKey;

/// Why a trust bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The bundle is not UTF-8 text.
    #[error("not UTF-8")]
    NotUtf8,
    /// A line that is neither blank nor a comment is not an OpenSSH public key.
    #[error("line {line}: not an OpenSSH public key: {message}")]
    InvalidKey {
        /// 1-based line number.
        line: usize,
        /// The parser's complaint.
        message: String,
    },
    /// The bundle lists no keys: trusting it would admit nobody.
    #[error("the file lists no keys")]
    Empty,
}

/// A parsed trust bundle: at least one key.
#[derive(Debug, Clone)]
pub struct Bundle<'a> {
    /// Each key's line, without surrounding whitespace, in file order.
    pub lines: Vec<&'a str>,
    /// The keys, in file order (`keys[i]` is `lines[i]`).
    pub keys: Vec<PublicKey>,
}

impl Bundle<'_> {
    /// The bundle with comments and blank lines left out: each key line, trimmed, ending
    /// in a newline.
    pub fn normalised(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// Read a trust bundle. Any line that is not blank, a `#` comment or an OpenSSH public
/// key, and a bundle without keys, are errors: a damaged bundle trusts nobody.
pub fn parse(bytes: &[u8]) -> Result<Bundle<'_>, BundleError> {
    let text = std::str::from_utf8(bytes).map_err(|_| BundleError::NotUtf8)?;
    let mut bundle = Bundle {
        lines: Vec::new(),
        keys: Vec::new(),
    };
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = PublicKey::from_openssh(line).map_err(|e| BundleError::InvalidKey {
            line: index + 1,
            message: e.to_string(),
        })?;
        bundle.lines.push(line);
        bundle.keys.push(key);
    }
    if bundle.keys.is_empty() {
        return Err(BundleError::Empty);
    }
    Ok(bundle)
}

/// Write `keys` as a trust bundle: one OpenSSH public key per line, no comments. These
/// are the bytes the CA serves and a version-2 feed names by digest, so they must not
/// change for the same keys. A key that cannot be encoded is left out.
pub fn write<'a>(keys: impl IntoIterator<Item = &'a PublicKey>) -> String {
    let mut text = String::new();
    for key in keys {
        if let Ok(line) = key.to_openssh() {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use ssh_key::{Algorithm, PrivateKey};

    use super::*;

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)
            .expect("key")
            .public_key()
            .clone()
    }

    #[test]
    fn what_the_ca_writes_reads_back() {
        let keys = [key(), key()];
        let text = write(&keys);
        let lines: Vec<String> = keys
            .iter()
            .map(|k| k.to_openssh().expect("openssh"))
            .collect();
        assert_eq!(text, format!("{}\n{}\n", lines[0], lines[1]));
        let bundle = parse(text.as_bytes()).expect("parse");
        assert_eq!(bundle.keys, keys);
        assert_eq!(bundle.normalised(), text);
    }

    /// sshd's `TrustedUserCAKeys` rule: blank lines and `#` comments (also indented) are
    /// skipped, by `check` and `sync` alike.
    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let (a, b) = (key(), key());
        let (a_line, b_line) = (a.to_openssh().expect("a"), b.to_openssh().expect("b"));
        let text = format!("# writ trust bundle\n\n  {a_line}  \r\n   # rotated in\n\t\n{b_line}");
        let bundle = parse(text.as_bytes()).expect("parse");
        assert_eq!(bundle.keys, [a, b]);
        assert_eq!(bundle.lines, [a_line.as_str(), b_line.as_str()]);
        assert_eq!(bundle.normalised(), format!("{a_line}\n{b_line}\n"));
    }

    #[test]
    fn damaged_or_empty_bundles_are_refused() {
        let good = key().to_openssh().expect("openssh");
        let error = parse(format!("{good}\n\nnot a key\n").as_bytes()).expect_err("bad line");
        assert!(matches!(error, BundleError::InvalidKey { line: 3, .. }));
        assert!(
            error
                .to_string()
                .starts_with("line 3: not an OpenSSH public key"),
            "{error}"
        );
        assert!(matches!(
            parse(format!("# {good}\nssh-ed25519 !!!\n").as_bytes()),
            Err(BundleError::InvalidKey { line: 2, .. })
        ));
        assert_eq!(parse(b"").expect_err("empty"), BundleError::Empty);
        assert_eq!(
            parse(b"# only a comment\n\n").expect_err("comments only"),
            BundleError::Empty
        );
        assert_eq!(
            parse(&[0xff, 0xfe]).expect_err("not UTF-8"),
            BundleError::NotUtf8
        );
    }
}
