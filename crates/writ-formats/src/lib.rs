//! writ-formats: the pure formats that the CA (`writ`) writes and SSH hosts
//! (`writ-principals`) read, defined in exactly one place.
//!
//! - [`profile`] — how a task is written into an SSH certificate and read back out.
//! - [`glob`] — `*` pattern matching (policies, and hosts matching their own name).
//! - [`duration`] — durations in configuration files (`"90s"`, `"2m"`).
//! - [`cidr`] — address ranges in configuration (`10.0.0.0/8`).
//! - [`text`] — characters unsafe to display, their escaping, URLs without passwords.
//! - [`revocation`] — the signed revocation feed, the OpenSSH KRL writer and the trust
//!   bundle (`TrustedUserCAKeys`) reader and writer.
//! - [`audit`] — audit records, their hash chain, signed checkpoints, chain verification,
//!   JSON Lines and OCSF export.
//!
//! What this crate must never do: perform I/O (no files, sockets, processes or stdout),
//! read the clock or a random source (time is an input), or depend on a store, an async
//! runtime, an HTTP stack or the CA's keyring. Both binaries link it, and
//! `writ-principals check` runs for every SSH authentication attempt; whatever needs
//! those things stays in the `writ` crate (e.g. `writ::audit::sink`,
//! `writ::revocation::publisher`), which re-exports these modules under their old paths
//! (`writ::profile`, `writ::audit`, `writ::revocation::feed`, …). The compiler enforces
//! the direction: this crate depends on neither `writ` nor `writ-principals`.

pub mod audit;
pub mod cidr;
pub mod duration;
pub mod glob;
pub mod profile;
pub mod revocation;
pub mod text;
