//! Shared integration-test helpers: a real test identity provider ([`idp`]), a real CA
//! server on an ephemeral port ([`ca`]), the usual agent/admin/host world ([`agents`]), a blocking HTTP client ([`http`]), `GET /metrics` read with a strict
//! parser ([`metrics`]), the `writ` binary's output ([`output`]), and real OpenSSH
//! ([`sshd`]).

#![allow(dead_code)]

pub mod agents;
pub mod ca;
pub mod enrolled;
pub mod http;
pub mod idp;
pub mod metrics;
pub mod output;
pub mod pki;
pub mod postgres;
pub mod serve;
pub mod sshd;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `writ-principals` binary of this build. It belongs to the member crate
/// `crates/writ-principals`, so Cargo defines no `CARGO_BIN_EXE_writ-principals` for this
/// crate's tests; built by the same command, it lies next to the `writ` binary.
/// `cargo test --workspace` builds it (that crate has integration tests) before any test
/// runs; a command that selects only this crate's tests (`cargo test -p writ`,
/// `cargo test --test NAME`) does not, and may find a binary left by an earlier build.
pub fn writ_principals() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = Path::new(env!("CARGO_BIN_EXE_writ")).with_file_name("writ-principals");
        assert!(
            path.is_file(),
            "{} is missing: the writ-principals binary is built by the workspace member \
             crates/writ-principals; run `cargo test --workspace`",
            path.display()
        );
        path
    })
}

/// One tokio runtime per test binary for every in-process server (CA and IdP); tests
/// themselves are synchronous and talk to the servers over real HTTP.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// A loopback port that refuses connections for as long as the returned socket lives:
/// bound but never listening, so no other server (of a test running in parallel) can be
/// given the same port, as it can a port that was found free and closed again.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = socket.local_addr().expect("local addr").port();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a bound, non-listening port refuses"
    );
    (socket, port)
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Generate an SSH key pair with `ssh-keygen` in `dir`; returns the private key path.
pub fn ssh_keygen(dir: &std::path::Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .args(args)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen {args:?} failed");
    path
}

/// The public key line of a key made by [`ssh_keygen`].
pub fn public_key(private_key: &std::path::Path) -> String {
    let mut path = private_key.as_os_str().to_owned();
    path.push(".pub");
    std::fs::read_to_string(path)
        .expect("read .pub")
        .trim()
        .to_owned()
}

/// A direct connection to a CA's SQLite file, behind the store: only for what an attacker,
/// a failing disk or an older version of writ would do to the file, and for counting rows.
pub fn database(path: &std::path::Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).expect("open database");
    db.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    db
}

/// The one number `sql` returns from the database at `path`, read-only.
pub fn database_count(path: &std::path::Path, sql: &str) -> i64 {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    db.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    db.query_row(sql, [], |row| row.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
