//! Signed checkpoints: "audit record `seq` has hash `hash`", signed by the CA's active key
//! as an OpenSSH SSHSIG in the namespace [`NAMESPACE`].
//!
//! The hash chain alone proves that the records that are there belong together; it cannot
//! tell that records at the end were cut off, or that the whole log after some point was
//! rewritten with freshly computed hashes. A checkpoint can: it is kept in the database
//! *and* outside it (the checkpoint file, written by `writ serve`: `writ::audit::service`), and nobody
//! without the CA key can make one. `writ admin audit verify` checks every checkpoint it
//! can find against the log, and a log that ends before a checkpoint was truncated.
//!
//! The signed message is plain text, so `ssh-keygen -Y verify -n audit-checkpoint@writ.dev`
//! can check a checkpoint without writ ([`message`] gives the exact bytes).
//!
//! Pure: building the message and verifying signatures; signing happens in the caller
//! (which holds the CA signer). The tests that sign checkpoints with that signer live
//! with it, in the `writ` crate (`writ::audit::checkpoint`).

use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PublicKey, SshSig};

/// SSHSIG namespace of checkpoint signatures.
pub const NAMESPACE: &str = "audit-checkpoint@writ.dev";

/// The `type` of a checkpoint line in the checkpoint file.
pub const LINE_TYPE: &str = "writ.audit.checkpoint";

/// A signed checkpoint as stored in the database and written, one JSON object a line, to
/// the checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// Always [`LINE_TYPE`], so a checkpoint line is recognisable wherever it ends up.
    #[serde(rename = "type", default = "line_type")]
    pub kind: String,
    /// Sequence number of the checkpointed record (the head of the log when signed).
    pub seq: i64,
    /// That record's hash.
    pub hash: String,
    /// When the checkpoint was made (RFC 3339 UTC, milliseconds).
    pub time: String,
    /// Fingerprint of the CA key that signed it (`SHA256:…`).
    pub ca_fingerprint: String,
    /// PEM-armoured SSHSIG over [`message`].
    pub signature: String,
}

fn line_type() -> String {
    LINE_TYPE.to_owned()
}

/// The exact bytes that are signed.
pub fn message(seq: i64, hash: &str, time: &str) -> Vec<u8> {
    format!("writ audit checkpoint v1\nseq {seq}\nhash {hash}\ntime {time}\n").into_bytes()
}

/// Why a checkpoint cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The signature does not parse.
    #[error("checkpoint at seq {seq}: the signature does not parse")]
    Malformed {
        /// Checkpointed seq.
        seq: i64,
    },
    /// Signed by a key that is not (or no longer) a CA key of this log.
    #[error("checkpoint at seq {seq}: signed by {fingerprint}, which is not a trusted CA key")]
    UnknownKey {
        /// Checkpointed seq.
        seq: i64,
        /// The signing key.
        fingerprint: String,
    },
    /// The signature does not verify over the checkpoint's fields.
    #[error("checkpoint at seq {seq}: the signature does not match its seq, hash and time")]
    BadSignature {
        /// Checkpointed seq.
        seq: i64,
    },
}

impl SignedCheckpoint {
    /// A checkpoint from its parts and a PEM signature made over [`message`].
    pub fn new(
        seq: i64,
        hash: String,
        time: String,
        ca_fingerprint: String,
        signature: String,
    ) -> SignedCheckpoint {
        SignedCheckpoint {
            kind: line_type(),
            seq,
            hash,
            time,
            ca_fingerprint,
            signature,
        }
    }

    /// The bytes this checkpoint's signature covers.
    pub fn message(&self) -> Vec<u8> {
        message(self.seq, &self.hash, &self.time)
    }

    /// One JSON line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a checkpoint of plain strings always serialises")
    }

    /// Check the signature against `trusted` CA public keys.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<(), CheckpointError> {
        let seq = self.seq;
        let signature = SshSig::from_pem(self.signature.as_bytes())
            .map_err(|_| CheckpointError::Malformed { seq })?;
        let signer = trusted
            .iter()
            .find(|k| k.key_data() == signature.public_key())
            .ok_or_else(|| CheckpointError::UnknownKey {
                seq,
                fingerprint: signature
                    .public_key()
                    .fingerprint(HashAlg::Sha256)
                    .to_string(),
            })?;
        signer
            .verify(NAMESPACE, &self.message(), &signature)
            .map_err(|_| CheckpointError::BadSignature { seq })
    }
}

/// Parse checkpoint lines (JSON Lines); blank lines and lines of other types are skipped.
/// Returns the line number (from 1) of the first line that does not parse.
pub fn parse_lines(text: &str) -> Result<Vec<SignedCheckpoint>, usize> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|_| i + 1)?;
        if value.get("type").and_then(|t| t.as_str()) != Some(LINE_TYPE) {
            continue;
        }
        out.push(serde_json::from_value(value).map_err(|_| i + 1)?);
    }
    Ok(out)
}
