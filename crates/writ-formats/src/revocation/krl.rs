//! The OpenSSH key revocation list (KRL) encoder: the binary file that sshd's
//! `RevokedKeys` option and `ssh-keygen -Q` read, as specified in OpenSSH's
//! `PROTOCOL.krl`.
//!
//! This module owns the byte layout only. It is pure: no I/O and no clock (the
//! generation time is passed in), so the same revocations always encode to the same
//! bytes, whatever order they were added in.
//!
//! # What is written
//! - A header: magic `"SSHKRL\n\0"`, format version 1, the KRL version, the generation
//!   time, zero flags, an empty reserved string and the comment.
//! - One certificate section (type 1) per CA, in ascending order of the CA's public-key
//!   blob. Its serials are sorted and de-duplicated: runs of at least
//!   [`MIN_RANGE_RUN`] consecutive serials become serial-range subsections (0x21); the
//!   rest go into serial-list subsections (0x20). Bitmaps (0x22) are never written.
//! - One explicit-key section (type 2) holding every key revoked outright, sorted by
//!   blob. This is what `ssh-keygen -k` writes for a plain public key. OpenSSH checks a
//!   certificate's signing CA against this section too, so revoking a CA key here
//!   revokes every certificate it signed, and revoking a user key also revokes its
//!   certificates.
//!
//! # Why some inputs are dropped
//! sshd refuses a whole KRL it cannot parse, and then denies every key. The encoder
//! therefore never writes anything OpenSSH rejects:
//! - serial 0 (OpenSSH's reader fails on it: 0 means "no serial" in a certificate, and
//!   KRLs can't revoke it) is ignored;
//! - NUL characters in the comment (OpenSSH reads the comment as a C string and fails
//!   on embedded NULs) are removed;
//! - a CA with no serials left gets no section.
//!
//! Size: sshd won't load a KRL file larger than 256 MiB (about 30 million listed
//! serials), so callers should leave out serials of certificates that have already
//! expired.

use std::collections::{BTreeMap, BTreeSet};

use ssh_key::PublicKey;
use ssh_key::public::KeyData;

/// `"SSHKRL\n\0"`: the first eight bytes of every KRL.
pub const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
/// The only KRL format version OpenSSH defines.
pub const KRL_FORMAT_VERSION: u32 = 1;

/// Section revoking certificates issued by one CA.
const KRL_SECTION_CERTIFICATES: u8 = 1;
/// Section revoking plain public keys by their full blob.
const KRL_SECTION_EXPLICIT_KEY: u8 = 2;
/// Certificate subsection: a list of revoked serials.
const KRL_SECTION_CERT_SERIAL_LIST: u8 = 0x20;
/// Certificate subsection: one inclusive range of revoked serials.
const KRL_SECTION_CERT_SERIAL_RANGE: u8 = 0x21;

/// The shortest run of consecutive serials written as a range subsection. A range
/// subsection costs 21 bytes (type, length, two serials); a serial in a list costs 8, so
/// a run of 3 or more is smaller as a range.
pub const MIN_RANGE_RUN: u64 = 3;

/// Builds an OpenSSH KRL from certificate serials and public keys to revoke.
///
/// Revocations accumulate; [`encode`](Self::encode) writes them out in a canonical order.
///
/// ```
/// use ssh_key::public::{Ed25519PublicKey, KeyData};
/// use writ_formats::revocation::krl::KrlBuilder;
///
/// let ca = KeyData::Ed25519(Ed25519PublicKey([7; 32]));
/// let krl = KrlBuilder::new(2, 1_700_000_000)
///     .comment("writ CA")
///     .revoke_serials(&ca, [5, 6, 7, 42])
///     .encode();
/// assert!(krl.starts_with(b"SSHKRL\n\0"));
/// ```
#[derive(Debug, Clone)]
pub struct KrlBuilder {
    krl_version: u64,
    generated_date: u64,
    comment: String,
    /// CA public-key blob → revoked serials (never 0, never empty).
    serials: BTreeMap<Vec<u8>, BTreeSet<u64>>,
    /// Public-key blobs revoked outright.
    keys: BTreeSet<Vec<u8>>,
}

impl KrlBuilder {
    /// Starts an empty KRL. `krl_version` should increase every time the CA publishes a
    /// changed KRL; `generated_date` is the generation time in Unix seconds.
    pub fn new(krl_version: u64, generated_date: u64) -> Self {
        Self {
            krl_version,
            generated_date,
            comment: String::new(),
            serials: BTreeMap::new(),
            keys: BTreeSet::new(),
        }
    }

    /// Sets the free-text comment (shown by `ssh-keygen -Q -l`). NUL characters are
    /// removed, because OpenSSH rejects a KRL whose comment contains one.
    pub fn comment(&mut self, comment: &str) -> &mut Self {
        self.comment = comment.chars().filter(|&c| c != '\0').collect();
        self
    }

    /// Revokes the certificates with these serial numbers issued by the CA key `ca`.
    ///
    /// Duplicates are harmless. Serial 0 is ignored: it is what a certificate carries
    /// when it has no serial, and OpenSSH rejects a KRL that lists it.
    pub fn revoke_serials(
        &mut self,
        ca: &KeyData,
        serials: impl IntoIterator<Item = u64>,
    ) -> &mut Self {
        let serials: BTreeSet<u64> = serials.into_iter().filter(|&s| s != 0).collect();
        if !serials.is_empty() {
            self.serials
                .entry(key_blob(ca))
                .or_default()
                .extend(serials);
        }
        self
    }

    /// Revokes a public key outright, in the explicit-key section.
    ///
    /// For a CA key this revokes every certificate the CA signed (OpenSSH checks a
    /// certificate's signing key against the KRL); for a user or host key it revokes the
    /// key and every certificate for it.
    pub fn revoke_key(&mut self, key: &KeyData) -> &mut Self {
        self.keys.insert(key_blob(key));
        self
    }

    /// Encodes the KRL. The output depends only on the set of revocations, not on the
    /// order they were added in.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(KRL_MAGIC);
        out.extend_from_slice(&KRL_FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&self.krl_version.to_be_bytes());
        out.extend_from_slice(&self.generated_date.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes()); // flags: none defined
        put_string(&mut out, b""); // reserved
        put_string(&mut out, self.comment.as_bytes());

        for (ca, serials) in &self.serials {
            put_section(
                &mut out,
                KRL_SECTION_CERTIFICATES,
                &certificate_section(ca, serials),
            );
        }

        if !self.keys.is_empty() {
            let mut section = Vec::new();
            for key in &self.keys {
                put_string(&mut section, key);
            }
            put_section(&mut out, KRL_SECTION_EXPLICIT_KEY, &section);
        }
        out
    }
}

/// The body of a certificate section: the CA key, the reserved string, then the serial
/// subsections (one list of the short runs first, then one range per long run).
fn certificate_section(ca: &[u8], serials: &BTreeSet<u64>) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(&mut body, ca);
    put_string(&mut body, b""); // reserved

    let runs = serial_runs(serials);
    let mut list = Vec::new();
    for &(lo, hi) in &runs {
        if hi - lo + 1 < MIN_RANGE_RUN {
            for serial in lo..=hi {
                list.extend_from_slice(&serial.to_be_bytes());
            }
        }
    }
    if !list.is_empty() {
        put_section(&mut body, KRL_SECTION_CERT_SERIAL_LIST, &list);
    }
    for &(lo, hi) in &runs {
        if hi - lo + 1 >= MIN_RANGE_RUN {
            let mut range = Vec::with_capacity(16);
            range.extend_from_slice(&lo.to_be_bytes());
            range.extend_from_slice(&hi.to_be_bytes());
            put_section(&mut body, KRL_SECTION_CERT_SERIAL_RANGE, &range);
        }
    }
    body
}

/// Splits sorted serials into maximal runs of consecutive values, as inclusive
/// `(lo, hi)` pairs in ascending order.
fn serial_runs(serials: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &serial in serials {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(serial) => *hi = serial,
            _ => runs.push((serial, serial)),
        }
    }
    runs
}

/// The SSH wire encoding of a plain public key (what `PROTOCOL.krl` calls the key blob).
fn key_blob(key: &KeyData) -> Vec<u8> {
    // Encoding into a Vec can only fail on a length over 4 GiB, which no key has.
    PublicKey::from(key.clone())
        .to_bytes()
        .expect("encoding a public key into memory cannot fail")
}

/// Appends a section or subsection: its type byte, then its body as a string.
fn put_section(out: &mut Vec<u8>, section_type: u8, body: &[u8]) {
    out.push(section_type);
    put_string(out, body);
}

/// Appends an SSH `string`: a big-endian u32 length, then the bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // sshd won't load a KRL over 256 MiB, so a section over 4 GiB is never useful.
    let len = u32::try_from(bytes.len()).expect("a KRL section is under 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::public::Ed25519PublicKey;

    fn ca(byte: u8) -> KeyData {
        KeyData::Ed25519(Ed25519PublicKey([byte; 32]))
    }

    fn string(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, bytes);
        out
    }

    /// The header `KrlBuilder::new(version, date)` writes, with `comment`.
    fn header(version: u64, date: u64, comment: &[u8]) -> Vec<u8> {
        let mut out = b"SSHKRL\n\0".to_vec();
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&date.to_be_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&string(comment));
        out
    }

    fn ed25519_blob(byte: u8) -> Vec<u8> {
        let mut blob = string(b"ssh-ed25519");
        blob.extend_from_slice(&string(&[byte; 32]));
        blob
    }

    /// A certificate section for the Ed25519 key `[byte; 32]` with these subsections.
    fn cert_section(byte: u8, subsections: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = string(&ed25519_blob(byte));
        body.extend_from_slice(&string(b""));
        for (kind, data) in subsections {
            body.push(*kind);
            body.extend_from_slice(&string(data));
        }
        let mut out = vec![1];
        out.extend_from_slice(&string(&body));
        out
    }

    fn u64s(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    #[test]
    fn empty_krl_is_just_the_header() {
        let krl = KrlBuilder::new(7, 1_700_000_000).encode();
        assert_eq!(krl, header(7, 1_700_000_000, b""));
        // Byte-level check of the fixed layout, independent of the helpers.
        assert_eq!(&krl[..8], b"SSHKRL\n\0");
        assert_eq!(&krl[8..12], &[0, 0, 0, 1]);
        assert_eq!(&krl[12..20], &7u64.to_be_bytes());
        assert_eq!(&krl[20..28], &1_700_000_000u64.to_be_bytes());
        assert_eq!(&krl[28..36], &[0; 8]);
        assert_eq!(&krl[36..], &[0; 8]); // empty reserved, empty comment
    }

    #[test]
    fn comment_is_a_string_without_nuls() {
        let krl = KrlBuilder::new(1, 2).comment("writ\0 CA").encode();
        assert_eq!(krl, header(1, 2, b"writ CA"));
    }

    #[test]
    fn short_runs_are_listed_and_long_runs_are_ranges() {
        let krl = KrlBuilder::new(1, 2)
            .revoke_serials(&ca(1), [9, 1, 3, 4, 10, 11, 12, 20, 4])
            .encode();
        let mut expected = header(1, 2, b"");
        expected.extend_from_slice(&cert_section(
            1,
            &[(0x20, u64s(&[1, 3, 4, 20])), (0x21, u64s(&[9, 12]))],
        ));
        assert_eq!(krl, expected);
    }

    #[test]
    fn serials_up_to_u64_max_do_not_overflow() {
        let krl = KrlBuilder::new(1, 2)
            .revoke_serials(&ca(1), [u64::MAX, u64::MAX - 1, u64::MAX - 2, 1])
            .encode();
        let mut expected = header(1, 2, b"");
        expected.extend_from_slice(&cert_section(
            1,
            &[(0x20, u64s(&[1])), (0x21, u64s(&[u64::MAX - 2, u64::MAX]))],
        ));
        assert_eq!(krl, expected);
    }

    #[test]
    fn serial_zero_is_ignored_and_empty_cas_get_no_section() {
        let krl = KrlBuilder::new(1, 2)
            .revoke_serials(&ca(1), [0])
            .revoke_serials(&ca(2), [])
            .revoke_serials(&ca(3), [0, 5])
            .encode();
        let mut expected = header(1, 2, b"");
        expected.extend_from_slice(&cert_section(3, &[(0x20, u64s(&[5]))]));
        assert_eq!(krl, expected);
    }

    #[test]
    fn revoked_keys_form_one_sorted_explicit_key_section_after_certificates() {
        let krl = KrlBuilder::new(1, 2)
            .revoke_key(&ca(9))
            .revoke_key(&ca(4))
            .revoke_key(&ca(9))
            .revoke_serials(&ca(1), [2])
            .encode();
        let mut expected = header(1, 2, b"");
        expected.extend_from_slice(&cert_section(1, &[(0x20, u64s(&[2]))]));
        let mut keys = string(&ed25519_blob(4));
        keys.extend_from_slice(&string(&ed25519_blob(9)));
        expected.push(2);
        expected.extend_from_slice(&string(&keys));
        assert_eq!(krl, expected);
    }

    #[test]
    fn output_does_not_depend_on_insertion_order() {
        let a = KrlBuilder::new(1, 2)
            .revoke_serials(&ca(2), [5, 1])
            .revoke_serials(&ca(1), [8])
            .revoke_serials(&ca(2), [3, 2])
            .revoke_key(&ca(7))
            .revoke_key(&ca(6))
            .encode();
        let b = KrlBuilder::new(1, 2)
            .revoke_key(&ca(6))
            .revoke_serials(&ca(1), [8, 8])
            .revoke_serials(&ca(2), [1, 2, 3, 5])
            .revoke_key(&ca(7))
            .encode();
        assert_eq!(a, b);
        // CA sections are ordered by CA blob: ca(1) before ca(2).
        let mut expected = header(1, 2, b"");
        expected.extend_from_slice(&cert_section(1, &[(0x20, u64s(&[8]))]));
        expected.extend_from_slice(&cert_section(
            2,
            &[(0x20, u64s(&[5])), (0x21, u64s(&[1, 3]))],
        ));
        assert!(a.starts_with(&expected));
    }
}
