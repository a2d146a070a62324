//! Revocation: what the CA publishes so hosts stop admitting certificates (KRL now,
//! revocation feed later).

pub mod krl;
