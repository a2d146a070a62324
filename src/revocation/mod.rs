//! Revocation: what the CA publishes so hosts stop admitting certificates — the OpenSSH
//! KRL for sshd's `RevokedKeys` and the signed revocation feed for `writ-principals`.
//! Both formats are pure and shared by the CA (which writes them) and hosts (which read them).

pub mod feed;
pub mod krl;
pub mod publisher;
