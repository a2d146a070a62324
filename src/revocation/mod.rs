//! Revocation: what the CA publishes so hosts stop admitting certificates — the OpenSSH
//! KRL for sshd's `RevokedKeys` and the signed revocation feed for `writ-principals` —
//! and the trust bundle for sshd's `TrustedUserCAKeys`, which the feed names. The three
//! formats are pure and shared by the CA (which writes them) and hosts (which read them);
//! [`publisher`] is the CA side that produces them from the store and keyring.

pub mod bundle;
pub mod feed;
pub mod krl;
pub mod publisher;
