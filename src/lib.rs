//! writ: an SSH certificate authority that turns workload identity into task-scoped,
//! minute-scale SSH user certificates.
//!
//! # Layout
//! Dependencies run one way, top to bottom.
//! - [`api`] — the HTTP API (axum): one file per endpoint group, errors → JSON envelope.
//! - [`admin`] — operator commands (`writ admin …`), e.g. `policy explain`: verifies a
//!   token and explains what the policies do with it, without issuing or writing anything.
//! - [`server`] — builds the running CA from a [`config::Config`] and serves [`api`].
//! - [`client`] — the agent side (`writ cert`, `writ ssh`, `writ task`): certificates
//!   and task calls over HTTP.
//! - [`cli`] — what every command line shares: stdout that survives `| head`, times for
//!   people.
//! - [`dev`] — `writ serve --dev` and `writ dev token`: a local development issuer.
//! - [`bench`](mod@bench) — `writ bench`: load tests of a real `writ serve` and of
//!   `writ-principals check`, measured from the outside (HTTP, processes, `/proc`).
//! - [`task`] — issuing certificates for tasks: identity → policy → sign → store.
//! - [`revocation`] — what hosts fetch besides certificates: the signed revocation feed,
//!   the KRL and the trust bundle (pure formats, shared with hosts), and
//!   `revocation::publisher`, which builds them from the store and the keyring.
//! - [`policy`] — which identities may get which logins, hosts and TTLs.
//! - [`identity`] — JWKS fetching and workload-token (JWT) verification.
//! - [`authority`] — the CA keyring (encrypted at rest), its rotation (next → active →
//!   retiring → retired, revoked) and certificate signing behind the `Signer` trait.
//! - [`audit`] — audit records and their hash chain, signed checkpoints, chain
//!   verification, JSON Lines/OCSF export (pure); `audit::sink`/`audit::service` deliver
//!   records to sinks and sign checkpoints inside `writ serve` (these read the store).
//! - [`store`] — the storage trait and its SQLite implementation.
//! - [`config`] — the CA's TOML configuration.
//! - [`host`] — `writ-principals`: admitting certificates on SSH hosts. It uses only pure
//!   format modules: the feed, KRL and bundle of [`revocation`] and those below (never
//!   `store`, `api` or an async runtime).
//! - [`logging`] — the CA's log: text with every field value escaped ([`text`]), or JSON.
//! - [`metrics`] — the CA's Prometheus series (`GET /metrics`): one registry per server,
//!   recorded into by `api`, `task`, `store` and `identity`, encoded on scrape.
//! - [`profile`], [`glob`], [`duration`], [`cidr`], [`text`] — pure formats shared by CA
//!   and hosts: how a task is written into a certificate, pattern matching, durations in
//!   config files, characters unsafe to display.

pub mod admin;
pub mod api;
pub mod audit;
pub mod authority;
pub mod bench;
pub mod cidr;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod duration;
pub mod glob;
pub mod host;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod profile;
pub mod revocation;
pub mod server;
pub mod store;
pub mod task;
pub mod text;
