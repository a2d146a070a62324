//! What hosts fetch from the CA besides certificates, as formats: the signed revocation
//! feed ([`feed`]) for `writ-principals`, the OpenSSH KRL ([`krl`]) for sshd's
//! `RevokedKeys`, and the trust bundle ([`bundle`]) for sshd's `TrustedUserCAKeys`, which
//! the feed names by digest. The CA writes them (`writ::revocation::publisher` builds them
//! from its store and keyring); hosts read them. Pure: no I/O, no clock.

pub mod bundle;
pub mod feed;
pub mod krl;
