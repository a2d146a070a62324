//! Revocation: what the CA publishes so hosts stop admitting certificates — the OpenSSH
//! KRL for sshd's `RevokedKeys` and the signed revocation feed for `writ-principals` —
//! and the trust bundle for sshd's `TrustedUserCAKeys`, which the feed names. The three
//! formats ([`bundle`], [`feed`], [`krl`]) are pure and shared by the CA (which writes
//! them) and hosts (which read them): they are `writ_formats::revocation`, re-exported
//! here. [`publisher`] is the CA side that produces them from the store and keyring;
//! [`watch`] lets a host's request wait for the next change (push).

pub use writ_formats::revocation::{bundle, feed, krl};

pub mod publisher;
pub mod watch;
