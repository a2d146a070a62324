//! writ-principals: the host side of writ, everything the `writ-principals` binary does on
//! an SSH host (`src/main.rs` only parses arguments and calls this library). The CA crate
//! `writ` re-exports it as `writ::host` (its `writ bench check` runs [`check`] in
//! process).
//!
//! - `ca_post` — the host's authenticated `POST`s to the CA (bearer token, JSON body),
//!   shared by [`online`], [`acknowledge`], [`host_cert`] and `inventory --report`.
//! - [`config`] — the host's TOML configuration (`/etc/writ/host.toml`).
//! - [`check`] — sshd's `AuthorizedPrincipalsCommand`: decides whether a certificate may
//!   log in as a login on this host and, if so, names the principal that lets it in;
//!   enforces the synced, signed revocation feed (offline) or asks the CA (online).
//! - [`host_cert`] — keeps an SSH host certificate next to each host key
//!   (`writ-principals host-cert`, and each `sync --watch` round), so clients verify this
//!   host by the CA.
//! - [`inventory`] — `writ-principals inventory`: every way into this host besides writ
//!   certificates (static keys, passwords, keys writ cannot see), whether writ's
//!   enforcement is in place, and unencrypted private keys in home directories; read-only,
//!   as text, JSON, a report to the CA or the steps that make a login writ-only.
//! - [`metrics_file`] — after each sync round, node_exporter textfile-collector metrics
//!   about what is installed (`metrics_file`).
//! - [`online`] — the one network call of `check` and `session`: `POST /v1/authorize`.
//! - [`session`] — the `pam_exec` session hook that records a use after a real login.
//! - [`sessions`] — the SSH connections that hook recorded, ended when their task ends.
//! - [`state`] — who may own and write the state directory and its files; checked before
//!   anything in it is trusted.
//! - [`sync`] — pulls the CA's trust bundle, KRL and revocation feed into the host's state
//!   directory, verified and atomically (`sync --watch` keeps doing it).
//! - [`syslog`] — one escaped `key=value` line per decision to syslog (facility auth).
//! - [`tls`] — how calls to an `https://` CA are trusted (`ca_bundle` or the system's
//!   trust store) and which client certificate they present (mutual TLS).
//!
//! `check` runs for every authentication attempt, before sshd has checked anything, so
//! this crate must stay small and fast. What it must never do: depend on the `writ` crate
//! (its store, HTTP API or keyring), a database, an HTTP server or an async runtime — its
//! only writ dependency is the pure crate [`writ_formats`] shared with the CA (certificate
//! [`profile`](writ_formats::profile), [`duration`](writ_formats::duration)s, the
//! revocation [`feed`](writ_formats::revocation::feed), [`krl`](writ_formats::revocation::krl)
//! and trust [`bundle`](writ_formats::revocation::bundle)), so the compiler refuses
//! anything else; `cargo tree -p writ-principals -e normal` shows the whole list. Network
//! access is blocking (ureq) and always bounded by the configured timeout.

pub mod acknowledge;
mod ca_post;
pub mod check;
pub mod config;
pub mod host_cert;
pub mod inventory;
pub mod metrics_file;
pub mod online;
pub mod session;
pub mod sessions;
pub mod state;
pub mod sync;
pub mod syslog;
pub mod tls;
