//! The host side of writ: everything `writ-principals` does on an SSH host.
//!
//! - [`config`] — the host's TOML configuration (`/etc/writ/host.toml`).
//! - [`check`] — sshd's `AuthorizedPrincipalsCommand`: decides whether a certificate may
//!   log in as a login on this host and, if so, names the principal that lets it in.
//! - [`sync`] — pulls the CA's trust bundle into the host's state directory, atomically.
//!
//! `check` runs for every authentication attempt, before sshd has checked anything, so
//! this module must stay small and fast: it uses only the pure format modules shared with
//! the CA ([`crate::profile`], [`crate::glob`], [`crate::duration`]) and must never depend
//! on `store`, `api` or an async runtime. Network access (only in [`sync`]) is blocking
//! and always bounded by the configured timeout.

pub mod check;
pub mod config;
pub mod sync;
