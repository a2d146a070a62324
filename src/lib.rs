//! writ: an SSH certificate authority that turns workload identity into task-scoped,
//! minute-scale SSH user certificates.
//!
//! # Layout
//! This crate is the root of a workspace (README "Layout"): the host side is the crate
//! `writ-principals` (`crates/writ-principals`) and the pure formats shared by CA and hosts
//! are the crate `writ-formats` (`crates/writ-formats`); neither depends on this crate, so
//! neither can reach the store, the HTTP API or an async runtime. This crate re-exports
//! them under the paths below, marked *(re-export)*. Dependencies run one way, top to
//! bottom.
//! - [`api`] — the HTTP API (axum): one file per endpoint group, errors → JSON envelope.
//! - [`admin`] — operator commands (`writ admin …`), e.g. `policy explain`: verifies a
//!   token and explains what the policies do with it, without issuing or writing anything.
//! - [`server`] — builds the running CA from a [`config::Config`] and serves [`api`]
//!   (over TLS when configured: [`server::tls`]).
//! - [`client`] — the agent side (`writ cert`, `writ ssh`, `writ task`): certificates
//!   and task calls over HTTP; where the workload token comes from
//!   (`client::token_source`), the client config (`client::config`) and the exit
//!   statuses (`client::exit`).
//! - [`cli`] — what every command line shares: stdout that survives `| head`, times for
//!   people.
//! - [`dev`] — `writ serve --dev` and `writ dev token`: a local development issuer.
//! - [`bench`](mod@bench) — `writ bench`: load tests of a real `writ serve` and of
//!   `writ-principals check`, measured from the outside (HTTP, processes, `/proc`).
//! - [`task`] — issuing certificates for tasks: identity → policy → sign → store.
//! - [`revocation`] — what hosts fetch besides certificates: the signed revocation feed,
//!   the KRL and the trust bundle (pure formats from `writ-formats`, *re-exported*), and
//!   `revocation::publisher`, which builds them from the store and the keyring.
//! - [`policy`] — which identities may get which logins, hosts and TTLs.
//! - [`identity`] — JWKS fetching and workload-token (JWT) verification.
//! - [`inventory`] — hosts' standing-access inventories as the CA checks and keeps them
//!   (the document is `writ_principals::inventory::model`).
//! - [`authority`] — the CA keyring (encrypted at rest), its rotation (next → active →
//!   retiring → retired, revoked) and certificate signing behind the `Signer` trait.
//! - [`audit`] — audit records and their hash chain, signed checkpoints, chain
//!   verification, JSON Lines/OCSF export (pure, from `writ-formats`, *re-exported*);
//!   `audit::sink`/`audit::service` deliver records to sinks and sign checkpoints inside
//!   `writ serve` (these read the store).
//! - [`store`] — the store contract (`Store`, typed records and states, its tests in
//!   `store::contract`) and its backends: SQLite (one driver, one writer thread) and
//!   PostgreSQL (one driver, a pool, one writer task; replicas share the database);
//!   `store::copy` moves a SQLite store into an empty PostgreSQL database.
//! - [`config`] — the CA's TOML configuration.
//! - [`host`] *(re-export of the crate `writ-principals`)* — admitting certificates on SSH
//!   hosts; used here by `writ bench check`. It depends only on `writ-formats` (never on
//!   this crate's `store`, `api` or an async runtime).
//! - [`logging`] — the CA's log: text with every field value escaped ([`text`]), or JSON.
//! - [`mcp`] — `writ mcp`: an MCP server over stdio giving an agent SSH access task by
//!   task (open, run, status, complete), keys and tokens never shown to the model.
//! - [`metrics`] — the CA's Prometheus series (`GET /metrics`): one registry per server,
//!   recorded into by `api`, `task`, `store` and `identity`, encoded on scrape.
//! - [`profile`], [`glob`], [`duration`], [`cidr`], [`text`] *(re-exports from
//!   `writ-formats`)* — pure formats shared by CA and hosts: how a task is written into a
//!   certificate, pattern matching, durations in config files, address ranges, characters
//!   unsafe to display.

pub mod admin;
pub mod api;
pub mod audit;
pub mod authority;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod identity;
pub mod inventory;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod revocation;
pub mod server;
pub mod store;
pub mod task;

// The pure formats shared with hosts (crates/writ-formats) and the host side
// (crates/writ-principals), under their old paths.
pub use writ_formats::{cidr, duration, glob, profile, text};
pub use writ_principals as host;
