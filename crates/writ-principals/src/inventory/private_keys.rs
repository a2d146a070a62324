//! Private keys left on the host: a bounded walk of home directories and `--scan` paths
//! (symlinks never followed, one file system per walk, at most [`MAX_FILES`] files and
//! files of at most [`MAX_KEY_FILE_BYTES`], only files that start with `-----BEGIN`), and
//! for each PEM private key block found, whether it is encrypted and, if not, which key
//! it is: OpenSSH (`ssh-key`), PKCS#1 RSA (`pkcs1`), SEC1 EC (`sec1`, `p256`) and PKCS#8
//! (`pkcs8`, `ed25519-dalek`).
//!
//! What it must never do: report, log or keep key material. An unencrypted key becomes
//! its format, algorithm and the SHA-256 fingerprint of its public half; the file's bytes
//! and every decoded buffer are wiped when dropped (`Zeroizing`, and the key types' own
//! zeroize-on-drop); an encrypted key is only counted.

use std::collections::HashSet;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64ct::Encoding;
use pkcs8::ObjectIdentifier;
use pkcs8::der::Decode;
use pkcs8::der::asn1::OctetStringRef;
use ssh_key::public::{EcdsaPublicKey, Ed25519PublicKey, KeyData, RsaPublicKey};
use ssh_key::{HashAlg, Mpint};
use zeroize::Zeroizing;

use super::model::KeyFormat;
use super::root::{self, Root};

/// Largest file inspected.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Deepest directory level walked below a home directory (`~/.ssh/id_rsa` is level 2).
pub const MAX_HOME_DEPTH: usize = 6;
/// Deepest directory level walked below a `--scan` path.
pub const MAX_SCAN_DEPTH: usize = 12;
/// Most files looked at over the whole inventory.
pub const MAX_FILES: usize = 200_000;
/// Most files looked at below one home directory or `--scan` path, so that one huge
/// directory does not use up the whole budget.
pub const MAX_FILES_PER_WALK: usize = 50_000;

const BEGIN: &[u8] = b"-----BEGIN ";

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");

/// What one PEM block is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// An unencrypted private key.
    Unencrypted {
        /// Its encoding.
        format: KeyFormat,
        /// Its algorithm (`unknown` if not recognised).
        key_type: String,
        /// `SHA256:…` of its public key, when it can be derived.
        fingerprint: Option<String>,
    },
    /// An encrypted private key.
    Encrypted,
    /// A private key in a format not inspected (`DSA PRIVATE KEY`, …).
    Unsupported(&'static str),
}

/// Every private key block of a PEM file's text, in order (certificates and public keys
/// are not keys; a file may hold several blocks).
pub fn classify(text: &[u8]) -> Vec<Found> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = find(rest, BEGIN) {
        let block_text = &rest[start..];
        let label_end = match find(&block_text[BEGIN.len()..], b"-----") {
            Some(end) => BEGIN.len() + end,
            None => break,
        };
        let label = String::from_utf8_lossy(&block_text[BEGIN.len()..label_end]).into_owned();
        let end_marker = format!("-----END {label}-----");
        let Some(end) = find(block_text, end_marker.as_bytes()) else {
            break;
        };
        let block = &block_text[..end + end_marker.len()];
        if let Some(result) = classify_block(&label, block) {
            found.push(result);
        }
        rest = &block_text[end + end_marker.len()..];
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn classify_block(label: &str, block: &[u8]) -> Option<Found> {
    let proc_encrypted = find(block, b"Proc-Type: 4,ENCRYPTED").is_some();
    Some(match label {
        "OPENSSH PRIVATE KEY" => openssh(block),
        "ENCRYPTED PRIVATE KEY" => Found::Encrypted,
        "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "DSA PRIVATE KEY" if proc_encrypted => {
            Found::Encrypted
        }
        "RSA PRIVATE KEY" => {
            let (key_type, fingerprint) = match pem_der(block) {
                Some(der) => match pkcs1_public(&der) {
                    Some(key) => ("ssh-rsa".to_owned(), Some(fingerprint(&key))),
                    None => ("ssh-rsa".to_owned(), None),
                },
                None => ("ssh-rsa".to_owned(), None),
            };
            Found::Unencrypted {
                format: KeyFormat::Pkcs1,
                key_type,
                fingerprint,
            }
        }
        "EC PRIVATE KEY" => {
            let (key_type, fingerprint) = pem_der(block)
                .map(|der| sec1_public(&der, None))
                .unwrap_or_else(|| ("unknown".to_owned(), None));
            Found::Unencrypted {
                format: KeyFormat::Sec1,
                key_type,
                fingerprint,
            }
        }
        "PRIVATE KEY" => {
            let (key_type, fingerprint) = pem_der(block)
                .map(|der| pkcs8_public(&der))
                .unwrap_or_else(|| ("unknown".to_owned(), None));
            Found::Unencrypted {
                format: KeyFormat::Pkcs8,
                key_type,
                fingerprint,
            }
        }
        "DSA PRIVATE KEY" => Found::Unsupported("DSA private key (PEM): not inspected"),
        "SSH2 ENCRYPTED PRIVATE KEY" => {
            Found::Unsupported("SSH.com (RFC 4716) private key: not inspected")
        }
        _ => return None,
    })
}

/// The bytes inside a PEM block, wiped when dropped: the base64 lines between the BEGIN
/// and END lines (header lines such as `Comment:` left out), any line width, as OpenSSH
/// (70 columns), OpenSSL (64) and other tools write them.
fn pem_der(block: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let text = std::str::from_utf8(block).ok()?;
    let mut body = Zeroizing::new(String::with_capacity(text.len()));
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----") || line.contains(':') {
            continue;
        }
        body.push_str(line);
    }
    base64ct::Base64::decode_vec(&body).ok().map(Zeroizing::new)
}

fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// An OpenSSH private key: `ssh-key` decides (the public key is stored in clear in the
/// file); if it cannot parse the key, the file's header says whether it is encrypted and
/// which public key it holds (ssh-key 0.6 refuses some valid P-521 keys).
fn openssh(block: &[u8]) -> Found {
    match ssh_key::PrivateKey::from_openssh(block) {
        Ok(key) if key.is_encrypted() => Found::Encrypted,
        Ok(key) => Found::Unencrypted {
            format: KeyFormat::Openssh,
            key_type: key.algorithm().as_str().to_owned(),
            fingerprint: Some(key.public_key().fingerprint(HashAlg::Sha256).to_string()),
        },
        Err(_) => openssh_header(block),
    }
}

/// `openssh-key-v1\0`, then string ciphername, string kdfname, string kdfoptions,
/// uint32 count, string public key (PROTOCOL.key).
fn openssh_header(block: &[u8]) -> Found {
    let unknown = Found::Unencrypted {
        format: KeyFormat::Openssh,
        key_type: "unknown".to_owned(),
        fingerprint: None,
    };
    let Some(bytes) = pem_der(block) else {
        return unknown;
    };
    let Some(mut rest) = bytes.strip_prefix(b"openssh-key-v1\0".as_slice()) else {
        return unknown;
    };
    let Some(cipher) = read_string(&mut rest) else {
        return unknown;
    };
    if cipher != b"none" {
        return Found::Encrypted;
    }
    let public = read_string(&mut rest)
        .and_then(|_kdf| read_string(&mut rest))
        .and_then(|_options| rest.split_first_chunk::<4>().map(|(_, tail)| tail))
        .and_then(|mut tail| read_string(&mut tail))
        .and_then(|blob| ssh_key::PublicKey::from_bytes(&blob).ok());
    match public {
        Some(key) => Found::Unencrypted {
            format: KeyFormat::Openssh,
            key_type: key.algorithm().as_str().to_owned(),
            fingerprint: Some(key.fingerprint(HashAlg::Sha256).to_string()),
        },
        None => unknown,
    }
}

/// An SSH `string` (uint32 length, bytes) from the front of `rest`.
fn read_string(rest: &mut &[u8]) -> Option<Vec<u8>> {
    let (length, tail) = rest.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
    let value = tail.get(..length)?.to_vec();
    *rest = tail.get(length..)?;
    Some(value)
}

/// The public key of a PKCS#1 `RSAPrivateKey`: its modulus and public exponent.
fn pkcs1_public(der: &[u8]) -> Option<KeyData> {
    let key = pkcs1::RsaPrivateKey::from_der(der).ok()?;
    Some(KeyData::Rsa(RsaPublicKey {
        e: Mpint::from_positive_bytes(key.public_exponent.as_bytes()).ok()?,
        n: Mpint::from_positive_bytes(key.modulus.as_bytes()).ok()?,
    }))
}

/// The algorithm and fingerprint of a SEC1 `ECPrivateKey` (`curve` from PKCS#8 when the
/// key itself does not name it): its public point, or (P-256 only) the point derived
/// from the scalar when the file omits it.
fn sec1_public(der: &[u8], curve: Option<ObjectIdentifier>) -> (String, Option<String>) {
    let Ok(key) = sec1::EcPrivateKey::from_der(der) else {
        return ("unknown".to_owned(), None);
    };
    let curve = key.parameters.and_then(|p| p.named_curve()).or(curve);
    let key_type = match curve {
        Some(oid) if oid == P256 => "ecdsa-sha2-nistp256",
        Some(oid) if oid == P384 => "ecdsa-sha2-nistp384",
        Some(oid) if oid == P521 => "ecdsa-sha2-nistp521",
        _ => return ("unknown".to_owned(), None),
    };
    let point: Option<Vec<u8>> = match key.public_key {
        Some(point) => Some(point.to_vec()),
        None if curve == Some(P256) => {
            p256::SecretKey::from_slice(key.private_key)
                .ok()
                .map(|secret| {
                    use p256::elliptic_curve::sec1::ToEncodedPoint;
                    secret
                        .public_key()
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec()
                })
        }
        None => None,
    };
    let fingerprint = point
        .and_then(|point| EcdsaPublicKey::from_sec1_bytes(&point).ok())
        .filter(|public| public.algorithm().as_str() == key_type)
        .map(|public| fingerprint(&KeyData::Ecdsa(public)));
    (key_type.to_owned(), fingerprint)
}

/// The algorithm and fingerprint of a PKCS#8 `PrivateKeyInfo`: RSA (PKCS#1 inside), EC
/// (SEC1 inside, curve in the algorithm's parameters) or Ed25519 (the seed inside; the
/// public key is derived from it).
fn pkcs8_public(der: &[u8]) -> (String, Option<String>) {
    let Ok(info) = pkcs8::PrivateKeyInfo::from_der(der) else {
        return ("unknown".to_owned(), None);
    };
    let oid = info.algorithm.oid;
    if oid == RSA_ENCRYPTION {
        let key = pkcs1_public(info.private_key);
        ("ssh-rsa".to_owned(), key.as_ref().map(fingerprint))
    } else if oid == EC_PUBLIC_KEY {
        sec1_public(info.private_key, info.algorithm.parameters_oid().ok())
    } else if oid == ED25519 {
        let public = OctetStringRef::from_der(info.private_key)
            .ok()
            .and_then(|seed| <[u8; 32]>::try_from(seed.as_bytes()).ok())
            .map(|seed| {
                let seed = Zeroizing::new(seed);
                ed25519_dalek::SigningKey::from_bytes(&seed)
                    .verifying_key()
                    .to_bytes()
            });
        (
            "ssh-ed25519".to_owned(),
            public.map(|bytes| fingerprint(&KeyData::Ed25519(Ed25519PublicKey(bytes)))),
        )
    } else {
        ("unknown".to_owned(), None)
    }
}

/// An unencrypted private key found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundKey {
    /// The file (host path).
    pub path: PathBuf,
    /// Its encoding.
    pub format: KeyFormat,
    /// Its algorithm.
    pub key_type: String,
    /// Its public key's fingerprint.
    pub fingerprint: Option<String>,
    /// The file's owner uid.
    pub uid: u32,
    /// The file's mode (`0600`).
    pub mode: String,
    /// The file's modification time.
    pub mtime: i64,
}

/// A walk over directories, bounded over all the walks it makes.
#[derive(Debug)]
pub struct Walker<'a> {
    root: &'a Root,
    files_left: usize,
    seen: HashSet<(u64, u64)>,
    /// Unencrypted keys found.
    pub found: Vec<FoundKey>,
    /// Encrypted keys found.
    pub encrypted: u64,
    /// `(path, reason)` of what was not inspected.
    pub skipped: Vec<(PathBuf, String)>,
    /// Whether a bound was hit.
    pub limits_hit: bool,
}

impl<'a> Walker<'a> {
    /// A walker over `root` with the whole file budget.
    pub fn new(root: &'a Root) -> Walker<'a> {
        Walker::with_budget(root, MAX_FILES)
    }

    /// A walker with `files` as its budget (tests).
    pub fn with_budget(root: &'a Root, files: usize) -> Walker<'a> {
        Walker {
            root,
            files_left: files,
            seen: HashSet::new(),
            found: Vec::new(),
            encrypted: 0,
            skipped: Vec::new(),
            limits_hit: false,
        }
    }

    /// Walk the resolved host path `start` (a directory, or one file) down to
    /// `max_depth` levels, without following symlinks or leaving its file system.
    pub fn walk(&mut self, start: &Path, max_depth: usize) {
        let Ok(metadata) = std::fs::symlink_metadata(self.root.real(start)) else {
            return;
        };
        if metadata.is_file() {
            self.inspect(start, &metadata);
            return;
        }
        if !metadata.is_dir() {
            return;
        }
        let device = metadata.dev();
        let mut walk_left = MAX_FILES_PER_WALK;
        let mut stack = vec![(start.to_owned(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let entries = match std::fs::read_dir(self.root.real(&dir)) {
                Ok(entries) => entries,
                Err(e) => {
                    self.skipped
                        .push((dir.clone(), format!("cannot list the directory: {e}")));
                    continue;
                }
            };
            let mut entries: Vec<(std::ffi::OsString, std::fs::FileType)> = entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_type().ok().map(|t| (e.file_name(), t)))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut subdirectories = Vec::new();
            for (name, kind) in entries {
                let path = dir.join(&name);
                if kind.is_dir() {
                    if depth.saturating_add(1) < max_depth {
                        subdirectories.push(path);
                    }
                    continue;
                }
                if !kind.is_file() {
                    continue;
                }
                if self.files_left == 0 || walk_left == 0 {
                    self.limits_hit = true;
                    let reason = if self.files_left == 0 {
                        format!("file limit ({MAX_FILES}) reached: not walked further")
                    } else {
                        format!("more than {MAX_FILES_PER_WALK} files below it: not walked further")
                    };
                    self.skipped.push((start.to_owned(), reason));
                    return;
                }
                self.files_left -= 1;
                walk_left -= 1;
                let Ok(metadata) = std::fs::symlink_metadata(self.root.real(&path)) else {
                    continue;
                };
                if metadata.len() > BEGIN.len() as u64 && metadata.len() <= MAX_KEY_FILE_BYTES {
                    self.inspect(&path, &metadata);
                }
            }
            // Depth-first, in name order.
            for path in subdirectories.into_iter().rev() {
                match std::fs::symlink_metadata(self.root.real(&path)) {
                    Ok(m) if m.dev() == device => stack.push((path, depth.saturating_add(1))),
                    Ok(_) => self.skipped.push((
                        path,
                        "another file system (a mount point): not walked".to_owned(),
                    )),
                    Err(_) => {}
                }
            }
        }
    }

    /// Read `path` if it starts with `-----BEGIN` and classify what it holds.
    fn inspect(&mut self, path: &Path, listed: &Metadata) {
        if !self.seen.insert((listed.dev(), listed.ino())) {
            return;
        }
        let Ok(file) = root::open_no_follow(&self.root.real(path)) else {
            return;
        };
        let Ok(metadata) = file.metadata() else {
            return;
        };
        if !metadata.is_file() || metadata.len() > MAX_KEY_FILE_BYTES {
            return;
        }
        let mut file = file;
        let mut head = Zeroizing::new(Vec::with_capacity(BEGIN.len()));
        if (&mut file)
            .take(BEGIN.len() as u64)
            .read_to_end(&mut head)
            .is_err()
            || head.as_slice() != BEGIN
        {
            return;
        }
        let mut text = Zeroizing::new(Vec::with_capacity(
            usize::try_from(metadata.len()).unwrap_or(0),
        ));
        text.extend_from_slice(&head);
        if file
            .take(MAX_KEY_FILE_BYTES.saturating_sub(BEGIN.len() as u64))
            .read_to_end(&mut text)
            .is_err()
        {
            return;
        }
        for found in classify(&text) {
            match found {
                Found::Encrypted => self.encrypted = self.encrypted.saturating_add(1),
                Found::Unsupported(reason) => {
                    self.skipped.push((path.to_owned(), reason.to_owned()));
                }
                Found::Unencrypted {
                    format,
                    key_type,
                    fingerprint,
                } => self.found.push(FoundKey {
                    path: path.to_owned(),
                    format,
                    key_type,
                    fingerprint,
                    uid: metadata.uid(),
                    mode: root::mode_string(&metadata),
                    mtime: metadata.mtime(),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Make a key with ssh-keygen; returns its private key file and `ssh-keygen -l`'s
    /// fingerprint of its public key.
    fn keygen(dir: &Path, name: &str, args: &[&str], passphrase: &str) -> (PathBuf, String) {
        let path = dir.join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-C", name, "-N", passphrase, "-f"])
            .arg(&path)
            .args(args)
            .status()
            .expect("ssh-keygen");
        assert!(status.success(), "{name}");
        let listing = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(format!("{}.pub", path.display()))
            .output()
            .expect("ssh-keygen -l");
        let fingerprint = String::from_utf8_lossy(&listing.stdout)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_owned();
        (path, fingerprint)
    }

    #[test]
    fn every_format_encrypted_or_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: [(&str, &[&str], KeyFormat, &str); 7] = [
            ("ed", &["-t", "ed25519"], KeyFormat::Openssh, "ssh-ed25519"),
            (
                "rsa-openssh",
                &["-t", "rsa", "-b", "2048"],
                KeyFormat::Openssh,
                "ssh-rsa",
            ),
            (
                "rsa-pem",
                &["-t", "rsa", "-b", "2048", "-m", "PEM"],
                KeyFormat::Pkcs1,
                "ssh-rsa",
            ),
            (
                "rsa-pkcs8",
                &["-t", "rsa", "-b", "2048", "-m", "PKCS8"],
                KeyFormat::Pkcs8,
                "ssh-rsa",
            ),
            (
                "ec-pem",
                &["-t", "ecdsa", "-m", "PEM"],
                KeyFormat::Sec1,
                "ecdsa-sha2-nistp256",
            ),
            (
                "ec384-pkcs8",
                &["-t", "ecdsa", "-b", "384", "-m", "PKCS8"],
                KeyFormat::Pkcs8,
                "ecdsa-sha2-nistp384",
            ),
            (
                "ec521-rfc4716",
                &["-t", "ecdsa", "-b", "521", "-m", "RFC4716"],
                KeyFormat::Openssh,
                "ecdsa-sha2-nistp521",
            ),
        ];
        for (name, args, format, key_type) in cases {
            let (path, expected) = keygen(dir.path(), name, args, "");
            let text = Zeroizing::new(std::fs::read(&path).expect("read"));
            assert_eq!(
                classify(&text),
                [Found::Unencrypted {
                    format,
                    key_type: key_type.to_owned(),
                    fingerprint: Some(expected),
                }],
                "{name}"
            );
            let (path, _) = keygen(dir.path(), &format!("{name}-enc"), args, "correct horse");
            let text = std::fs::read(&path).expect("read");
            assert_eq!(classify(&text), [Found::Encrypted], "{name} encrypted");
        }
    }

    /// The fallback for OpenSSH keys ssh-key cannot parse reads the clear header.
    #[test]
    fn openssh_header_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, args) in [
            ("ed", &["-t", "ed25519"][..]),
            ("p521", &["-t", "ecdsa", "-b", "521"]),
        ] {
            let (path, expected) = keygen(dir.path(), name, args, "");
            let text = std::fs::read(&path).expect("read");
            let Found::Unencrypted { fingerprint, .. } = openssh_header(&text) else {
                panic!("{name}: not unencrypted");
            };
            assert_eq!(fingerprint, Some(expected), "{name}");
            let (path, _) = keygen(dir.path(), &format!("{name}-enc"), args, "correct horse");
            let text = std::fs::read(&path).expect("read");
            assert_eq!(openssh_header(&text), Found::Encrypted, "{name}");
        }
    }

    /// RFC 8410 §10.3: an Ed25519 PKCS#8 key and its public key.
    #[test]
    fn pkcs8_ed25519_derives_the_public_key() {
        let pem = b"-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n";
        assert_eq!(
            classify(pem),
            [Found::Unencrypted {
                format: KeyFormat::Pkcs8,
                key_type: "ssh-ed25519".to_owned(),
                // The public key 19bf44…66e1 as an OpenSSH key (checked with ssh-keygen -l).
                fingerprint: Some("SHA256:ebCT4wkJOqO5AIlHG03cHvn3Cr3ZZEEh8m81duHhR3Q".to_owned()),
            }]
        );
    }

    #[test]
    fn other_pem_blocks_and_bundles() {
        assert!(
            classify(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_empty()
        );
        assert!(classify(b"-----BEGIN PUBLIC KEY-----\n").is_empty());
        assert_eq!(
            classify(b"-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n"),
            [Found::Unsupported("DSA private key (PEM): not inspected")]
        );
        // Garbage inside a private key block: still an unencrypted private key, no
        // fingerprint.
        assert_eq!(
            classify(b"-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----\n"),
            [Found::Unencrypted {
                format: KeyFormat::Pkcs1,
                key_type: "ssh-rsa".to_owned(),
                fingerprint: None
            }]
        );
        // A certificate followed by its key (a TLS bundle).
        let mut bundle = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec();
        bundle.extend_from_slice(
            b"-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n",
        );
        assert_eq!(classify(&bundle).len(), 1);
    }

    #[test]
    fn the_walk_is_bounded_and_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Root::new(dir.path()).expect("root");
        let home = dir.path().join("home/alice");
        let deep = home.join("a/b/c/d/e/f");
        std::fs::create_dir_all(&deep).expect("mkdir");
        std::fs::create_dir_all(home.join(".ssh")).expect("mkdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        let (key, fingerprint) = keygen(&outside, "id_ed25519", &["-t", "ed25519"], "");
        std::fs::copy(&key, home.join(".ssh/id_ed25519")).expect("copy");
        std::fs::copy(&key, deep.join("too_deep")).expect("copy");
        std::os::unix::fs::symlink(&key, home.join(".ssh/link")).expect("symlink");
        std::os::unix::fs::symlink(&outside, home.join("outside")).expect("symlink");
        std::fs::write(home.join("big"), vec![b'-'; 70 * 1024]).expect("write");
        let mut walker = Walker::new(&root);
        walker.walk(Path::new("/home/alice"), MAX_HOME_DEPTH);
        assert_eq!(walker.found.len(), 1, "{:?}", walker.found);
        assert_eq!(
            walker.found[0].path,
            PathBuf::from("/home/alice/.ssh/id_ed25519")
        );
        assert_eq!(
            walker.found[0].fingerprint.as_deref(),
            Some(fingerprint.as_str())
        );
        assert_eq!(walker.found[0].mode, "0600");
        // The same file again (a --scan overlapping a home) is not counted twice.
        walker.walk(Path::new("/home/alice/.ssh/id_ed25519"), MAX_SCAN_DEPTH);
        assert_eq!(walker.found.len(), 1);
        // A file budget.
        let mut small = Walker::with_budget(&root, 1);
        small.walk(Path::new("/home/alice"), MAX_HOME_DEPTH);
        assert!(small.limits_hit);
        assert_eq!(small.skipped.len(), 1);
    }
}
