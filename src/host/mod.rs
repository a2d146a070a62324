//! The host side of writ: everything `writ-principals` does on an SSH host.
//!
//! - [`config`] — the host's TOML configuration (`/etc/writ/host.toml`).
//! - [`check`] — sshd's `AuthorizedPrincipalsCommand`: decides whether a certificate may
//!   log in as a login on this host and, if so, names the principal that lets it in;
//!   enforces the synced, signed revocation feed (offline) or asks the CA (online).
//! - [`online`] — the one network call of `check` and `session`: `POST /v1/authorize`.
//! - [`session`] — the `pam_exec` session hook that records a use after a real login.
//! - [`state`] — who may own and write the state directory and its files; checked before
//!   anything in it is trusted.
//! - [`sync`] — pulls the CA's trust bundle, KRL and revocation feed into the host's state
//!   directory, verified and atomically (`sync --watch` keeps doing it).
//! - [`syslog`] — one escaped `key=value` line per decision to syslog (facility auth).
//!
//! `check` runs for every authentication attempt, before sshd has checked anything, so
//! this module must stay small and fast: it uses only the pure format modules shared with
//! the CA ([`crate::profile`], [`crate::glob`], [`crate::duration`],
//! [`crate::revocation::feed`], [`crate::revocation::krl`]) and must never depend on
//! `store`, `api` or an async runtime. Network access is blocking and always bounded by
//! the configured timeout.

pub mod check;
pub mod config;
pub mod online;
pub mod session;
pub mod state;
pub mod sync;
pub mod syslog;
