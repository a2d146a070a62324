//! Signed checkpoints ("audit record `seq` has hash `hash`", signed by the CA's active
//! key): the format is `writ_formats::audit::checkpoint`, re-exported here whole. What this
//! file adds are its tests that sign with the CA's own signer
//! ([`crate::authority::sign_sshsig`], the one [`super::service`] signs checkpoints with),
//! which the pure crate cannot reach.

pub use writ_formats::audit::checkpoint::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::{CaSigner, Signer, sign_sshsig};
    use rand_core::OsRng;
    use ssh_key::PublicKey;

    fn signer() -> CaSigner {
        let key =
            ssh_key::PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519).expect("key");
        CaSigner::from_private_key(&key).expect("signer")
    }

    fn sign(signer: &CaSigner, seq: i64, hash: &str) -> SignedCheckpoint {
        let time = "2026-01-01T00:00:00.000Z".to_owned();
        let signature = sign_sshsig(signer, NAMESPACE, &message(seq, hash, &time)).expect("sign");
        SignedCheckpoint::new(
            seq,
            hash.to_owned(),
            time,
            signer.fingerprint().to_owned(),
            signature,
        )
    }

    #[test]
    fn signatures_bind_seq_hash_and_key() {
        let ca = signer();
        let trusted = [PublicKey::from(ca.public_key().clone())];
        let checkpoint = sign(&ca, 7, "ab");
        assert_eq!(checkpoint.verify(&trusted), Ok(()));

        let mut moved = checkpoint.clone();
        moved.seq = 6;
        assert_eq!(
            moved.verify(&trusted),
            Err(CheckpointError::BadSignature { seq: 6 })
        );
        let mut rehashed = checkpoint.clone();
        rehashed.hash = "cd".into();
        assert!(matches!(
            rehashed.verify(&trusted),
            Err(CheckpointError::BadSignature { .. })
        ));
        let other = signer();
        assert!(matches!(
            sign(&other, 7, "ab").verify(&trusted),
            Err(CheckpointError::UnknownKey { .. })
        ));
        let mut garbage = checkpoint.clone();
        garbage.signature = "nope".into();
        assert!(matches!(
            garbage.verify(&trusted),
            Err(CheckpointError::Malformed { .. })
        ));
    }

    #[test]
    fn lines_round_trip_and_skip_other_types() {
        let ca = signer();
        let a = sign(&ca, 1, "aa");
        let b = sign(&ca, 2, "bb");
        let text = format!(
            "{}\n\n{{\"type\":\"other\"}}\n{}\n",
            a.to_line(),
            b.to_line()
        );
        assert_eq!(parse_lines(&text), Ok(vec![a, b]));
        assert_eq!(
            parse_lines("{\"type\":\"writ.audit.checkpoint\"}\n"),
            Err(1)
        );
        assert_eq!(parse_lines("x\n"), Err(1));
    }
}
