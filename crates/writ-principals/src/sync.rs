//! `writ-principals sync`: fetch the CA's trust bundle, KRL and signed revocation feed and
//! install them in `state_dir`:
//!
//! | from the CA                             | file                   | read by            |
//! |-----------------------------------------|------------------------|--------------------|
//! | `GET /v1/revocations?version=2`         | `revocations.json`     | check              |
//! | `GET /v1/ca/trusted-keys`               | `trusted_user_ca_keys` | sshd, check        |
//! | `GET /v1/krl?sequence=S&issued_at=T`    | `revoked.krl`          | sshd `RevokedKeys` |
//!
//! First the state directory is checked ([`crate::state`]: owned by root or
//! `sync_user`, not writable by group or others, nor the files already in it), or
//! nothing is fetched. Then everything is fetched and validated before anything is
//! written: the feed must be version 2, naming the digests of the trust bundle and KRL it
//! was published with; the bundle must list at least one OpenSSH public key
//! ([`bundle::parse`]; it is installed without its comments and blank lines); the feed
//! must verify against the keys *just fetched*, be fresh (`max_staleness`,
//! [`FEED_CLOCK_SKEW`]) and not be older than the feed already installed (if that one
//! still verifies against the new bundle) — so a replayed older feed is refused; the KRL
//! (for the feed's sequence `S` and issue time `T`) must start with OpenSSH's KRL magic
//! and format version and be at most [`MAX_KRL_BYTES`]. The bundle and KRL must be
//! exactly the ones the feed names: a cache serving an old bundle or KRL next to a
//! current feed cannot re-trust a revoked CA key. A mismatch is retried with fresh
//! requests up to [`SYNC_ATTEMPTS`] rounds (a rotation between two requests of a round
//! changes one document), then refused. If any step fails nothing is written, and the
//! previous files stay in place: sshd denies every key when `RevokedKeys` names a missing
//! or unreadable file, so a KRL that once existed is never removed or truncated.
//!
//! The three files are then written atomically: each goes to a temporary file in
//! `state_dir` (mode 0644, fsync), and only once all three are staged are they renamed
//! over the old ones (KRL first, then the feed, then the trust bundle, so revocations
//! land before any newly trusted key) and the directory is fsynced. Readers see each
//! file old or new, never half-written. Every network call is blocking and bounded by the
//! host config's `timeout`, from DNS lookup to the last body byte.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ssh_key::PublicKey;
use writ_formats::duration;
use writ_formats::revocation::bundle::{self, BundleError};
use writ_formats::revocation::feed::{self, Feed, FeedError};
use writ_formats::revocation::krl::{KRL_FORMAT_VERSION, KRL_MAGIC};

use crate::acknowledge::{Acknowledgement, acknowledge};
use crate::config::{FEED_CLOCK_SKEW, HostConfig, KRL_FILE, REVOCATIONS_FILE, TRUSTED_KEYS_FILE};
use crate::online::http_agent;
use crate::state::{self, InsecureState, Owners};
use crate::tls::{
    TlsFileError, is_untrusted_certificate, may_need_client_certificate, trust_source,
};

/// Path of the trust bundle below `ca_url`.
pub const TRUSTED_KEYS_PATH: &str = "/v1/ca/trusted-keys";
/// Path of the KRL below `ca_url`.
pub const KRL_PATH: &str = "/v1/krl";
/// Path of the signed revocation feed below `ca_url`.
pub const REVOCATIONS_PATH: &str = "/v1/revocations";
/// Largest accepted trust bundle. A bundle holds a handful of keys; a CA answering with
/// more than this is broken or hostile.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Largest accepted KRL.
pub const MAX_KRL_BYTES: u64 = 16 * 1024 * 1024;
/// Default pause between rounds of `sync --watch` when the CA does not push.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(10);
/// How long `sync --watch` asks the CA to hold its feed request until something is
/// revoked (`GET /v1/revocations?after=&wait=`); the CA grants at most its own bound.
pub const PUSH_WAIT: Duration = Duration::from_secs(60);
/// The answer header of a CA that held the feed request (push).
pub const PUSH_HEADER: &str = "writ-feed-wait";
/// How often `sync --watch` makes a plain round (not held) even when the CA pushes: it
/// re-reads everything and tells the CA again which feed this host has, so `writ admin
/// task revoke` knows the host is still there.
pub const HEARTBEAT: Duration = Duration::from_secs(15 * 60);
/// Rounds one `sync` makes when the bundle or KRL does not match the feed's binding. A
/// rotation or revocation between the requests of a round changes one document; the
/// next round sees the new state throughout. A cache serving an old copy fails every
/// round, and then nothing is installed.
pub const SYNC_ATTEMPTS: usize = 3;

/// What a successful sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Number of CA public keys written to the trusted-keys file.
    pub trusted_keys: usize,
    /// The trusted-keys file that was replaced.
    pub trusted_keys_path: PathBuf,
    /// Size of the KRL written.
    pub krl_bytes: usize,
    /// The KRL file that was replaced.
    pub krl_path: PathBuf,
    /// The installed feed's sequence number.
    pub feed_sequence: i64,
    /// The installed feed's issue time (Unix seconds).
    pub feed_issued_at: i64,
    /// Number of revoked tasks in the installed feed.
    pub revoked_tasks: usize,
    /// Number of revoked serials in the installed feed.
    pub revoked_serials: usize,
    /// The feed file that was replaced.
    pub revocations_path: PathBuf,
    /// What was known about the feed installed before.
    pub previous_feed: PreviousFeed,
    /// Whether the CA held the feed request until a change or its wait ended (push);
    /// `false` for a plain round or a CA without push.
    pub pushed: bool,
    /// SSH connections this round ended because the new feed ended their task or
    /// certificate ([`crate::sessions`]).
    pub sessions_ended: usize,
    /// Whether the CA was told which feed this host now has ([`crate::acknowledge`]):
    /// after a plain round, and after a held one that brought a new feed.
    pub acknowledged: Acknowledgement,
}

/// The feed that was installed before this sync, as far as rollback protection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreviousFeed {
    /// There was none.
    None,
    /// It verified against the new bundle; the new feed is not older.
    Verified {
        /// Its sequence number.
        sequence: i64,
    },
    /// It could not be read or does not verify against the new bundle (for instance its
    /// signing key is no longer trusted), so it was not used for rollback protection.
    Ignored {
        /// Why.
        reason: String,
    },
}

/// Why a sync failed. In every case the files in `state_dir` are unchanged.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The CA could not be reached, or did not answer in time.
    #[error("cannot fetch {url}: {source}")]
    Request {
        /// The URL requested.
        url: String,
        /// ureq's error (connection, TLS, timeout, …).
        source: Box<ureq::Error>,
    },
    /// The CA's TLS certificate does not chain to what this host trusts (`ca_bundle`,
    /// or the system's trust store).
    #[error("the TLS certificate of {url} is not trusted: it does not chain to {trust} ({source})")]
    UntrustedCa {
        /// The URL requested.
        url: String,
        /// What it must chain to.
        trust: String,
        /// ureq's error.
        source: Box<ureq::Error>,
    },
    /// The CA closed the connection or refused the handshake, and this host presents no
    /// client certificate: the CA may require one (mutual TLS).
    #[error(
        "cannot fetch {url}: {source}; if the CA requires client certificates (mutual TLS), \
         set client_cert and client_key in the host config"
    )]
    NoClientCertificate {
        /// The URL requested.
        url: String,
        /// ureq's error.
        source: Box<ureq::Error>,
    },
    /// A TLS file of the host configuration (`ca_bundle`, `client_cert`, `client_key`)
    /// could not be used.
    #[error(transparent)]
    TlsFile(#[from] TlsFileError),
    /// The CA answered with a status other than 200.
    #[error("{url} answered HTTP {status}, expected 200")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The CA answered with an unexpected media type.
    #[error("{url} answered with content type {content_type:?}, expected {expected:?}")]
    ContentType {
        /// The URL requested.
        url: String,
        /// The media type required.
        expected: &'static str,
        /// The response's media type, if any.
        content_type: Option<String>,
    },
    /// The body could not be read: too large, or the connection failed.
    #[error("cannot read the body of {url}: {source}")]
    Body {
        /// The URL requested.
        url: String,
        /// ureq's error.
        source: Box<ureq::Error>,
    },
    /// The trust bundle is not UTF-8 text.
    #[error("{url} is not UTF-8 text")]
    NotUtf8 {
        /// The URL requested.
        url: String,
    },
    /// A line of the bundle is not an OpenSSH public key.
    #[error("line {line} of {url} is not an OpenSSH public key: {message}")]
    InvalidKey {
        /// The URL requested.
        url: String,
        /// 1-based line number.
        line: usize,
        /// The parser's complaint.
        message: String,
    },
    /// The bundle lists no keys; installing it would lock every writ user out.
    #[error("{url} lists no trusted keys")]
    Empty {
        /// The URL requested.
        url: String,
    },
    /// The KRL is not an OpenSSH KRL.
    #[error("{url} is not an OpenSSH KRL: {message}")]
    InvalidKrl {
        /// The URL requested.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The revocation feed is malformed, not signed by a key of the new bundle, stale,
    /// dated in the future, or older than the feed already installed.
    #[error("revocation feed from {url} refused: {source}")]
    Feed {
        /// The URL requested.
        url: String,
        /// Why.
        source: FeedError,
    },
    /// The trust bundle or KRL is not the one the verified feed names (by digest), in
    /// every one of [`SYNC_ATTEMPTS`] rounds: a cache or proxy serving an old copy, or a
    /// CA that keeps changing between the requests of a round.
    #[error(
        "the {document} from {url} is not the one the revocation feed names \
         ({attempts} attempt(s)); a cache or proxy may be serving an old copy"
    )]
    Inconsistent {
        /// `trust bundle` or `KRL`.
        document: &'static str,
        /// The URL requested (last attempt).
        url: String,
        /// Rounds tried.
        attempts: usize,
    },
    /// The state directory or a file in it is not owned and protected as `check`
    /// requires ([`crate::state`]).
    #[error(transparent)]
    Insecure(InsecureState),
    /// A sync round panicked (a bug); `watch` carries on with the next round.
    #[error("sync panicked: {0}")]
    Panicked(String),
    /// The system clock is before 1970.
    #[error("the system clock is before the Unix epoch")]
    Clock,
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
}

/// Fetch the trust bundle, KRL and revocation feed from the CA and install them, now.
pub fn sync(config: &HostConfig) -> Result<SyncReport, SyncError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| SyncError::Clock)?;
    sync_at(config, duration::secs(now))
}

/// The three documents of one round, fetched and verified, ready to install.
struct Fetched {
    /// The bundle's key lines, normalised (one key per line).
    bundle: String,
    /// How many keys the bundle lists.
    keys: usize,
    krl: Vec<u8>,
    signed: feed::SignedFeed,
    feed: Feed,
    previous_feed: PreviousFeed,
    pushed: bool,
}

/// [`sync`] with the time given (Unix seconds), for judging the feed's freshness.
pub fn sync_at(config: &HostConfig, now_unix: i64) -> Result<SyncReport, SyncError> {
    sync_round(config, now_unix, None)
}

/// [`sync`], its feed request held by the CA until the revocation lists change after the
/// feed `after` (a sequence number) or [`PUSH_WAIT`] ends — and then installed at once.
pub fn sync_after(config: &HostConfig, after: i64) -> Result<SyncReport, SyncError> {
    // The feed is judged by the time it arrives, not the time it was asked for.
    sync_round(config, 0, Some(after))
}

fn sync_round(
    config: &HostConfig,
    now_unix: i64,
    mut after: Option<i64>,
) -> Result<SyncReport, SyncError> {
    let held = after.is_some();
    let owners = Owners::new(config.sync_user.as_ref());
    check_state(config, &owners)?;
    let agent = http_agent(config)?;
    let mut attempt = 1;
    let fetched = loop {
        match fetch_round(&agent, config, now_unix, after.take()) {
            Err(SyncError::Request { url, source }) if is_untrusted_certificate(&source) => {
                return Err(SyncError::UntrustedCa {
                    url,
                    trust: trust_source(config),
                    source,
                });
            }
            Err(SyncError::Request { url, source })
                if may_need_client_certificate(config, &source) =>
            {
                return Err(SyncError::NoClientCertificate { url, source });
            }
            Err(SyncError::Inconsistent { .. }) if attempt < SYNC_ATTEMPTS => attempt += 1,
            Err(SyncError::Inconsistent { document, url, .. }) => {
                return Err(SyncError::Inconsistent {
                    document,
                    url,
                    attempts: attempt,
                });
            }
            other => break other?,
        }
    };
    // Re-serialised; the signed bytes, the `feed` string inside, are kept exactly.
    let mut stored_feed = serde_json::to_vec(&fetched.signed).map_err(|e| SyncError::Feed {
        url: format!("{}{REVOCATIONS_PATH}", config.ca_base_url()),
        source: FeedError::Malformed(e.to_string()),
    })?;
    stored_feed.push(b'\n');

    let write_error = |(path, source)| SyncError::Write { path, source };
    let staged = [
        stage(&config.state_dir, KRL_FILE, &fetched.krl).map_err(write_error)?,
        stage(&config.state_dir, REVOCATIONS_FILE, &stored_feed).map_err(write_error)?,
        stage(
            &config.state_dir,
            TRUSTED_KEYS_FILE,
            fetched.bundle.as_bytes(),
        )
        .map_err(write_error)?,
    ];
    // `check` trusts only files owned by root or sync_user: refuse to install files it
    // would refuse (sync running as some other user).
    if !owners.allows(staged[0].owner) {
        return Err(SyncError::Insecure(InsecureState {
            path: config.state_dir.clone(),
            reason: format!(
                "sync runs as uid {}, but check trusts only files owned by {}",
                staged[0].owner,
                owners.describe()
            ),
        }));
    }
    commit(&config.state_dir, staged).map_err(write_error)?;
    // Connections of what the new feed ends go now ([`crate::sessions`]).
    let sessions_ended = crate::sessions::enforce(config, &fetched.feed, unix_now()?).len();
    let news = !matches!(
        fetched.previous_feed,
        PreviousFeed::Verified { sequence } if sequence == fetched.feed.sequence
    );
    let acknowledged = if !held || news {
        acknowledge(config, fetched.feed.sequence)
    } else {
        Acknowledgement::NotSent
    };

    Ok(SyncReport {
        trusted_keys: fetched.keys,
        trusted_keys_path: config.trusted_keys_path(),
        krl_bytes: fetched.krl.len(),
        krl_path: config.krl_path(),
        feed_sequence: fetched.feed.sequence,
        feed_issued_at: fetched.feed.issued_at,
        revoked_tasks: fetched.feed.revoked_tasks.len(),
        revoked_serials: fetched.feed.revoked_serials.len(),
        revocations_path: config.revocations_path(),
        previous_feed: fetched.previous_feed,
        pushed: fetched.pushed,
        sessions_ended,
        acknowledged,
    })
}

/// The state directory (created, mode 0755, if missing) and the files already in it must
/// be owned and protected as [`crate::state`] requires before sync writes there.
fn check_state(config: &HostConfig, owners: &Owners<'_>) -> Result<(), SyncError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&config.state_dir)
        .map_err(|source| SyncError::Write {
            path: config.state_dir.clone(),
            source,
        })?;
    state::check_dir(&config.state_dir, owners).map_err(SyncError::Insecure)?;
    for path in [
        config.trusted_keys_path(),
        config.krl_path(),
        config.revocations_path(),
    ] {
        match fs::metadata(&path) {
            Ok(meta) => state::check_file(&path, &meta, owners).map_err(SyncError::Insecure)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SyncError::Write { path, source }),
        }
    }
    Ok(())
}

/// One round: the feed (version 2), the bundle it names, the feed verified against that
/// bundle and the installed feed, then the KRL for the feed's sequence and time. A body
/// that does not match the feed's binding is [`SyncError::Inconsistent`] (retried by
/// [`sync_at`]); every other failure is final.
fn fetch_round(
    agent: &ureq::Agent,
    config: &HostConfig,
    now_unix: i64,
    after: Option<i64>,
) -> Result<Fetched, SyncError> {
    let base = config.ca_base_url();

    let mut feed_url = format!("{base}{REVOCATIONS_PATH}?version={}", feed::VERSION);
    if let Some(after) = after {
        // Back well before the feed goes stale (`check` would deny everyone), and by the
        // earliest task expiry of a recorded session, to end it on time.
        let longest = PUSH_WAIT.min(config.max_staleness / 2).as_secs().max(1);
        let wait = crate::sessions::next_expiry(config).map_or(longest, |at| {
            u64::try_from(at.saturating_sub(unix_now().unwrap_or(0)))
                .unwrap_or(0)
                .clamp(1, longest)
        });
        feed_url.push_str(&format!("&after={after}&wait={wait}"));
    }
    let (feed_bytes, pushed) = fetch_held(
        agent,
        &feed_url,
        "application/json",
        feed::MAX_FEED_BYTES as u64,
        after.map(|_| config.timeout.saturating_add(PUSH_WAIT)),
    )?;
    // A held answer is judged by the time it arrived.
    let now_unix = if after.is_some() {
        unix_now()?
    } else {
        now_unix
    };
    let feed_error = |source: FeedError| SyncError::Feed {
        url: feed_url.clone(),
        source,
    };
    let signed = feed::parse(&feed_bytes).map_err(feed_error)?;
    // Unverified: only to compare the bundle with, before it can verify the feed.
    let claimed = feed::unverified(&signed).map_err(feed_error)?;
    let Some(binding) = claimed.binding else {
        return Err(feed_error(if claimed.version == feed::VERSION_UNBOUND {
            FeedError::Unbound
        } else {
            FeedError::Version(claimed.version)
        }));
    };

    let url = format!("{base}{TRUSTED_KEYS_PATH}");
    let body = fetch(agent, &url, "text/plain", MAX_BODY_BYTES)?;
    let bundle_digest = feed::sha256_hex(&body);
    let parsed = bundle::parse(&body).map_err(|e| match e {
        BundleError::NotUtf8 => SyncError::NotUtf8 { url: url.clone() },
        BundleError::InvalidKey { line, message } => SyncError::InvalidKey {
            url: url.clone(),
            line,
            message,
        },
        BundleError::Empty => SyncError::Empty { url: url.clone() },
    })?;
    if bundle_digest != binding.trusted_keys_sha256 {
        return Err(SyncError::Inconsistent {
            document: "trust bundle",
            url,
            attempts: 1,
        });
    }
    let (bundle, keys) = (parsed.normalised(), parsed.keys);

    let new_feed = feed::verify(
        &signed,
        &keys,
        now_unix,
        duration::secs(config.max_staleness),
        duration::secs(FEED_CLOCK_SKEW),
    )
    .map_err(feed_error)?;
    let previous_feed = match installed_feed(&config.revocations_path(), &keys) {
        Ok(Some(previous)) => {
            feed::check_not_older(&new_feed, &previous).map_err(feed_error)?;
            PreviousFeed::Verified {
                sequence: previous.sequence,
            }
        }
        Ok(None) => PreviousFeed::None,
        Err(reason) => PreviousFeed::Ignored { reason },
    };
    // The signed binding (the same as the claimed one, now verified).
    let binding = new_feed
        .binding
        .clone()
        .ok_or(feed_error(FeedError::Unbound))?;

    let url = format!(
        "{base}{KRL_PATH}?sequence={}&issued_at={}",
        new_feed.sequence, new_feed.issued_at
    );
    let krl = fetch(agent, &url, "application/octet-stream", MAX_KRL_BYTES)?;
    validate_krl(&krl).map_err(|message| SyncError::InvalidKrl {
        url: url.clone(),
        message,
    })?;
    if feed::sha256_hex(&krl) != binding.krl_sha256 {
        return Err(SyncError::Inconsistent {
            document: "KRL",
            url,
            attempts: 1,
        });
    }

    Ok(Fetched {
        bundle,
        keys: keys.len(),
        krl,
        signed,
        feed: new_feed,
        previous_feed,
        pushed,
    })
}

fn unix_now() -> Result<i64, SyncError> {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(duration::secs)
        .map_err(|_| SyncError::Clock)
}

/// `sync --watch`: run [`sync`] forever, handing each round's result to `after_round`,
/// which logs it and decides whether to go on. After a good round the next one asks the
/// CA to hold its feed request until something is revoked ([`sync_after`]) and starts
/// as soon as the previous one ends, so a revocation is installed the moment the CA
/// answers; after a failed round, or with a CA that does not push, the next round starts
/// `interval` later. A failed round keeps the last good files: nothing here ends the
/// loop except `after_round` returning [`ControlFlow::Break`].
pub fn watch(
    config: &HostConfig,
    interval: Duration,
    mut after_round: impl FnMut(&Result<SyncReport, SyncError>) -> ControlFlow<()>,
) {
    let mut after: Option<i64> = None;
    let mut last_plain = Instant::now();
    loop {
        if last_plain.elapsed() >= HEARTBEAT {
            after = None;
        }
        if after.is_none() {
            last_plain = Instant::now();
        }
        let round = || match after {
            Some(after) => sync_after(config, after),
            None => sync(config),
        };
        // A bug must not end the service loop either: a panicking round is a failed one.
        let result = std::panic::catch_unwind(round).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(SyncError::Panicked(message))
        });
        if after_round(&result).is_break() {
            return;
        }
        // Poll `interval` apart after a failure or when the CA did not hold the request
        // it was asked to hold (a CA without push); push again at once otherwise.
        let asked_to_hold = after.is_some();
        match &result {
            Ok(report) => {
                after = Some(report.feed_sequence);
                if asked_to_hold && !report.pushed {
                    std::thread::sleep(interval);
                }
            }
            Err(_) => {
                if config.on_stale == crate::config::OnStale::Terminate
                    && installed_feed_is_stale(config)
                {
                    crate::sessions::end_all_stale(config);
                }
                std::thread::sleep(interval);
            }
        }
    }
}

/// Whether the installed feed is missing, unreadable or older than `max_staleness`.
fn installed_feed_is_stale(config: &HostConfig) -> bool {
    let issued_at = fs::read(config.revocations_path())
        .ok()
        .and_then(|bytes| feed::parse(&bytes).ok())
        .and_then(|signed| feed::unverified(&signed).ok())
        .map(|feed| feed.issued_at);
    let now = unix_now().unwrap_or(i64::MAX);
    issued_at.is_none_or(|at| now.saturating_sub(at) > duration::secs(config.max_staleness))
}

/// The feed installed now, verified against `keys` (the new bundle) but not judged by
/// age: `Ok(None)` if there is none, `Err` if it cannot be read or does not verify.
fn installed_feed(path: &Path, keys: &[PublicKey]) -> Result<Option<Feed>, String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let signed = feed::parse(&bytes).map_err(|e| e.to_string())?;
    feed::verify(&signed, keys, 0, i64::MAX, i64::MAX)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// An OpenSSH KRL (PROTOCOL.krl) starts with the magic and the format version.
fn validate_krl(krl: &[u8]) -> Result<(), String> {
    let Some(rest) = krl.strip_prefix(KRL_MAGIC.as_slice()) else {
        return Err("it does not start with the KRL magic".to_owned());
    };
    let version = rest
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "it is truncated after the magic".to_owned())?;
    if version != KRL_FORMAT_VERSION {
        return Err(format!("unsupported KRL format version {version}"));
    }
    Ok(())
}

/// GET `url`, requiring 200 and the media type `mime`, reading at most `limit` bytes.
fn fetch(
    agent: &ureq::Agent,
    url: &str,
    mime: &'static str,
    limit: u64,
) -> Result<Vec<u8>, SyncError> {
    fetch_held(agent, url, mime, limit, None).map(|(body, _)| body)
}

/// [`fetch`], within `timeout` instead of the agent's when given (a request the CA may
/// hold); also whether the CA says it held it ([`PUSH_HEADER`]).
fn fetch_held(
    agent: &ureq::Agent,
    url: &str,
    mime: &'static str,
    limit: u64,
    timeout: Option<Duration>,
) -> Result<(Vec<u8>, bool), SyncError> {
    let mut request = agent.get(url);
    if let Some(timeout) = timeout {
        request = request.config().timeout_global(Some(timeout)).build();
    }
    let mut response = request.call().map_err(|e| SyncError::Request {
        url: url.to_owned(),
        source: Box::new(e),
    })?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(SyncError::Status {
            url: url.to_owned(),
            status,
        });
    }
    let content_type = response.body().mime_type().map(str::to_ascii_lowercase);
    if content_type.as_deref() != Some(mime) {
        return Err(SyncError::ContentType {
            url: url.to_owned(),
            expected: mime,
            content_type,
        });
    }
    let pushed = response.headers().contains_key(PUSH_HEADER);
    let body = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| SyncError::Body {
            url: url.to_owned(),
            source: Box::new(e),
        })?;
    Ok((body, pushed))
}

/// A file written and fsynced under a temporary name, waiting to be renamed over its
/// target by [`commit`]. Dropped uncommitted, it removes its temporary file.
#[derive(Debug)]
pub(crate) struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    /// Owner of the written file (the user sync runs as).
    owner: u32,
    committed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the temporary file is ours and useless now.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Write `contents` to a temporary file next to `dir/name` (mode 0644, fsynced). On
/// error, returns the path involved.
pub(crate) fn stage(
    dir: &Path,
    name: &str,
    contents: &[u8],
) -> Result<Staged, (PathBuf, io::Error)> {
    // The process id keeps two concurrent syncs from writing into the same file; a
    // leftover from a crashed process that had the same id is ours to replace.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut staged = Staged {
        tmp,
        target: dir.join(name),
        owner: u32::MAX,
        committed: false,
    };
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&staged.tmp)?;
        file.write_all(contents)?;
        // The mode given to open is reduced by the umask; set it exactly.
        file.set_permissions(Permissions::from_mode(0o644))?;
        file.sync_all()?;
        file.metadata().map(|m| m.uid())
    })();
    match written {
        Ok(owner) => {
            staged.owner = owner;
            Ok(staged)
        }
        Err(e) => Err((staged.tmp.clone(), e)),
    }
}

/// Rename every staged file over its target, in order, then make the renames durable.
pub(crate) fn commit<const N: usize>(
    dir: &Path,
    staged: [Staged; N],
) -> Result<(), (PathBuf, io::Error)> {
    for mut file in staged {
        fs::rename(&file.tmp, &file.target).map_err(|e| (file.target.clone(), e))?;
        file.committed = true;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (dir.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;
    use std::time::Instant;

    use ssh_key::PrivateKey;
    use writ_formats::revocation::feed::RevokedTask;

    use super::*;
    use crate::check::tests::new_key;

    const NOW: i64 = 1_700_000_000;

    /// One canned HTTP response.
    #[derive(Clone)]
    struct Reply {
        status: &'static str,
        content_type: &'static str,
        body: Vec<u8>,
    }

    fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: "200 OK",
            content_type,
            body: body.into(),
        }
    }

    /// Serve HTTP on 127.0.0.1, answering each request with `handler(path)`, one request
    /// per connection; returns the base URL.
    fn serve(handler: impl Fn(&str) -> Reply + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let reply = handler(&path);
                let mut stream = reader.into_inner();
                let head = format!(
                    "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.status,
                    reply.content_type,
                    reply.body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&reply.body);
            }
        });
        format!("http://{addr}")
    }

    fn krl() -> Vec<u8> {
        let mut krl = KRL_MAGIC.to_vec();
        krl.extend_from_slice(&KRL_FORMAT_VERSION.to_be_bytes());
        krl.extend_from_slice(&[0; 8 * 3 + 4 * 2]);
        krl
    }

    /// A version-2 feed revoking `tasks`, bound to these exact `bundle` and `krl` bodies.
    fn bound_feed(
        signer: &PrivateKey,
        issued_at: i64,
        sequence: i64,
        tasks: Vec<RevokedTask>,
        bundle: &[u8],
        krl: &[u8],
    ) -> Vec<u8> {
        let feed = Feed {
            version: feed::VERSION,
            issued_at,
            sequence,
            revoked_tasks: tasks,
            revoked_serials: vec![],
            binding: Some(feed::Binding::of(bundle, krl)),
        };
        crate::check::tests::sign_feed(signer, &feed).into_bytes()
    }

    /// The path of a request line's target, without its query.
    fn route(target: &str) -> &str {
        target.split('?').next().unwrap_or_default()
    }

    /// A CA as `sync` sees it: a bundle, a KRL and a feed, each replaceable. Unless
    /// replaced, the feed is signed by `key`, issued at `NOW - 5` with `sequence`, and
    /// bound to the bundle and KRL served.
    #[derive(Clone)]
    struct Ca {
        key: PrivateKey,
        sequence: i64,
        bundle: Reply,
        krl: Reply,
        feed: Option<Reply>,
    }

    impl Ca {
        fn new(key: &PrivateKey, sequence: i64) -> Ca {
            Ca {
                key: key.clone(),
                sequence,
                bundle: ok("text/plain; charset=utf-8", bundle_of(&[key])),
                krl: ok("application/octet-stream", krl()),
                feed: None,
            }
        }

        /// A feed signed by `signer`, bound to this CA's bundle and KRL.
        fn bound(&self, signer: &PrivateKey, issued_at: i64, sequence: i64) -> Reply {
            ok(
                "application/json",
                bound_feed(
                    signer,
                    issued_at,
                    sequence,
                    vec![],
                    &self.bundle.body,
                    &self.krl.body,
                ),
            )
        }

        fn feed(&self) -> Reply {
            self.feed
                .clone()
                .unwrap_or_else(|| self.bound(&self.key, NOW - 5, self.sequence))
        }

        fn serve(self) -> String {
            let feed = self.feed();
            serve(move |target| match route(target) {
                TRUSTED_KEYS_PATH => self.bundle.clone(),
                KRL_PATH => self.krl.clone(),
                REVOCATIONS_PATH => feed.clone(),
                _ => Reply {
                    status: "404 Not Found",
                    content_type: "text/plain",
                    body: Vec::new(),
                },
            })
        }
    }

    fn bundle_of(keys: &[&PrivateKey]) -> String {
        keys.iter()
            .map(|k| k.public_key().to_openssh().expect("openssh") + "\n\n")
            .collect()
    }

    fn config(ca_url: String, state_dir: &Path) -> HostConfig {
        HostConfig::for_tests(&ca_url, "web-01", state_dir)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
        names(dir)
            .into_iter()
            .map(|n| {
                let bytes = fs::read(dir.join(&n)).expect("read");
                (n, bytes)
            })
            .collect()
    }

    #[test]
    fn writes_all_three_files_atomically_with_mode_0644() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let (a, b) = (new_key(), new_key());
        let mut ca = Ca::new(&a, 3);
        ca.bundle = ok("text/plain", bundle_of(&[&a, &b]));
        let feed_text = String::from_utf8(ca.feed().body).expect("utf-8");
        let config = config(ca.serve(), &state);
        let report = sync_at(&config, NOW).expect("sync");
        assert_eq!(report.trusted_keys, 2);
        assert_eq!(report.trusted_keys_path, state.join("trusted_user_ca_keys"));
        assert_eq!(report.krl_path, state.join("revoked.krl"));
        assert_eq!(report.krl_bytes, krl().len());
        assert_eq!(report.revocations_path, state.join("revocations.json"));
        assert_eq!(report.feed_sequence, 3);
        assert_eq!(report.feed_issued_at, NOW - 5);
        assert_eq!(report.previous_feed, PreviousFeed::None);

        let written = fs::read_to_string(&report.trusted_keys_path).expect("read");
        assert_eq!(written, bundle_of(&[&a, &b]).replace("\n\n", "\n"));
        assert_eq!(fs::read(&report.krl_path).expect("read"), krl());
        let stored: serde_json::Value =
            serde_json::from_slice(&fs::read(&report.revocations_path).expect("read"))
                .expect("json");
        let served: serde_json::Value = serde_json::from_str(&feed_text).expect("json");
        assert_eq!(stored, served);
        for path in [
            &report.trusted_keys_path,
            &report.krl_path,
            &report.revocations_path,
        ] {
            let mode = fs::metadata(path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{}", path.display());
        }
        assert_eq!(
            fs::metadata(&state).expect("metadata").permissions().mode() & 0o777,
            0o755
        );
        // No temporary files are left behind.
        assert_eq!(
            names(&state),
            ["revocations.json", "revoked.krl", "trusted_user_ca_keys"]
        );

        // What sync installs, check accepts: the feed verifies against the bundle.
        let keys = crate::check::trusted_keys(&config).expect("keys");
        let feed = crate::check::load_feed(&config, &keys, NOW as u64).expect("feed");
        assert_eq!(feed.sequence, 3);
    }

    /// The bundle's comments are skipped, as sshd and `check` skip them, and the key
    /// lines alone are installed; the feed is still bound to the bytes served.
    #[test]
    fn a_bundle_with_comments_installs_its_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = new_key();
        let line = key.public_key().to_openssh().expect("openssh");
        let mut ca = Ca::new(&key, 1);
        ca.bundle = ok(
            "text/plain",
            format!("# writ trust bundle\n\n  # active\n{line}\n"),
        );
        let config = config(ca.serve(), &dir.path().join("state"));
        let report = sync_at(&config, NOW).expect("sync");
        assert_eq!(report.trusted_keys, 1);
        let written = fs::read_to_string(&report.trusted_keys_path).expect("read");
        assert_eq!(written, format!("{line}\n"));
    }

    #[test]
    fn asks_for_the_bound_feed_and_the_krl_it_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new(&new_key(), 7);
        let targets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&targets);
        let feed = ca.feed();
        let url = serve(move |target| {
            seen.lock().expect("lock").push(target.to_owned());
            match route(target) {
                TRUSTED_KEYS_PATH => ca.bundle.clone(),
                KRL_PATH => ca.krl.clone(),
                _ => feed.clone(),
            }
        });
        sync_at(&config(url, dir.path()), NOW).expect("sync");
        assert_eq!(
            *targets.lock().expect("lock"),
            [
                "/v1/revocations?version=2".to_owned(),
                "/v1/ca/trusted-keys".to_owned(),
                format!("/v1/krl?sequence=7&issued_at={}", NOW - 5),
            ]
        );
    }

    /// Run one sync against `ca` into a state dir holding a previous good sync, and
    /// require that it fails with `expected` in its message and changes nothing.
    fn assert_refused(ca: Ca, expected: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = new_key();
        sync_at(&config(Ca::new(&key, 1).serve(), dir.path()), NOW - 1).expect("first sync");
        let before = contents(dir.path());
        let error = sync_at(&config(ca.serve(), dir.path()), NOW)
            .expect_err(expected)
            .to_string();
        assert!(error.contains(expected), "{expected}: {error}");
        assert_eq!(contents(dir.path()), before, "{expected}: files changed");
    }

    #[test]
    fn bad_bundles_change_nothing() {
        let key = new_key();
        let good = bundle_of(&[&key]);
        let cases = [
            (
                ok("text/plain", format!("{good}not a key\n")),
                "not an OpenSSH",
            ),
            (ok("text/plain", "\n\n"), "no trusted keys"),
            (ok("application/json", good.clone()), "content type"),
            (ok("text/plain", vec![0xff, 0xfe]), "UTF-8"),
            (
                Reply {
                    status: "503 Service Unavailable",
                    ..ok("text/plain", good.clone())
                },
                "HTTP 503",
            ),
            (
                Reply {
                    status: "302 Found",
                    ..ok("text/plain", good.clone())
                },
                "HTTP 302",
            ),
        ];
        for (bundle, expected) in cases {
            let mut ca = Ca::new(&key, 5);
            ca.bundle = bundle;
            assert_refused(ca, expected);
        }
    }

    #[test]
    fn bad_krls_change_nothing() {
        let key = new_key();
        let mut wrong_version = krl();
        wrong_version[8..12].copy_from_slice(&2u32.to_be_bytes());
        let cases = [
            (
                ok("application/octet-stream", b"SSHKRL\n".to_vec()),
                "KRL magic",
            ),
            (
                ok("application/octet-stream", b"hello world".to_vec()),
                "KRL magic",
            ),
            (
                ok("application/octet-stream", KRL_MAGIC.to_vec()),
                "truncated",
            ),
            (ok("application/octet-stream", wrong_version), "version 2"),
            (ok("text/plain", krl()), "content type"),
            (
                Reply {
                    status: "404 Not Found",
                    ..ok("application/octet-stream", krl())
                },
                "HTTP 404",
            ),
        ];
        for (reply, expected) in cases {
            let mut ca = Ca::new(&key, 5);
            ca.krl = reply;
            assert_refused(ca, expected);
        }
    }

    #[test]
    fn oversized_krl_is_refused() {
        let key = new_key();
        let mut big = krl();
        big.resize(MAX_KRL_BYTES as usize + 1, 0);
        let mut ca = Ca::new(&key, 5);
        ca.krl = ok("application/octet-stream", big);
        assert_refused(ca, "cannot read the body");
    }

    #[test]
    fn bad_feeds_change_nothing() {
        let key = new_key();
        let foreign = new_key();
        let ca = Ca::new(&key, 5);
        let cases = [
            (ca.bound(&foreign, NOW, 5), "signature"),
            (ca.bound(&key, NOW - 121, 5), "stale"),
            (ca.bound(&key, NOW + 61, 5), "future"),
            (ok("application/json", "{\"feed\": 1}"), "malformed"),
            (
                ok("text/plain", ca.bound(&key, NOW, 5).body),
                "content type",
            ),
        ];
        for (reply, expected) in cases {
            let mut ca = ca.clone();
            ca.feed = Some(reply);
            assert_refused(ca, expected);
        }
    }

    #[test]
    fn an_unbound_version_1_feed_is_refused() {
        // What a CA older than the binding serves.
        let key = new_key();
        let feed = Feed {
            version: feed::VERSION_UNBOUND,
            issued_at: NOW,
            sequence: 5,
            revoked_tasks: vec![],
            revoked_serials: vec![],
            binding: None,
        };
        let mut ca = Ca::new(&key, 5);
        ca.feed = Some(ok(
            "application/json",
            crate::check::tests::sign_feed(&key, &feed),
        ));
        assert_refused(ca, "version 1 does not name the trust bundle and KRL");
    }

    /// A CA whose bundle or KRL is an old copy (a cache), next to a current feed.
    fn stale_copy(replace: impl FnOnce(&mut Ca, &PrivateKey)) -> (Ca, Arc<AtomicUsize>) {
        let (old, new) = (new_key(), new_key());
        // The current state: `old` is no longer trusted; the feed is bound to that.
        let mut ca = Ca::new(&new, 5);
        ca.feed = Some(ca.feed());
        replace(&mut ca, &old);
        (ca, Arc::new(AtomicUsize::new(0)))
    }

    #[test]
    fn a_bundle_or_krl_the_feed_does_not_name_is_refused_after_retries() {
        // The CA stopped trusting `old` (and the feed says so by its binding), but a
        // cache still serves the bundle that lists it, or the KRL from before.
        let (stale_bundle, _) = stale_copy(|ca, old| {
            ca.bundle = ok("text/plain", bundle_of(&[old, &ca.key]));
        });
        let (stale_krl, _) = stale_copy(|ca, _| {
            let mut other = krl();
            other[12..20].copy_from_slice(&9u64.to_be_bytes());
            ca.krl = ok("application/octet-stream", other);
        });
        for (ca, document) in [(stale_bundle, "trust bundle"), (stale_krl, "KRL")] {
            let feeds = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&feeds);
            let feed = ca.feed();
            let url = serve(move |target| match route(target) {
                TRUSTED_KEYS_PATH => ca.bundle.clone(),
                KRL_PATH => ca.krl.clone(),
                _ => {
                    counted.fetch_add(1, Ordering::SeqCst);
                    feed.clone()
                }
            });
            let dir = tempfile::tempdir().expect("tempdir");
            let key = new_key();
            sync_at(&config(Ca::new(&key, 1).serve(), dir.path()), NOW - 1).expect("first");
            let before = contents(dir.path());
            let error = sync_at(&config(url, dir.path()), NOW).expect_err(document);
            assert!(
                matches!(
                    &error,
                    SyncError::Inconsistent { document: d, attempts: SYNC_ATTEMPTS, .. }
                        if *d == document
                ),
                "{error}"
            );
            assert!(
                error
                    .to_string()
                    .contains("not the one the revocation feed names")
            );
            assert_eq!(feeds.load(Ordering::SeqCst), SYNC_ATTEMPTS, "{document}");
            assert_eq!(contents(dir.path()), before, "{document}: files changed");
        }
    }

    #[test]
    fn a_rotation_between_two_requests_is_retried() {
        // Round one: the feed is fetched, then the CA rotates before the bundle is: the
        // bundle is newer than the feed. Round two sees the new state throughout.
        let dir = tempfile::tempdir().expect("tempdir");
        let (k1, k2) = (new_key(), new_key());
        let mut before = Ca::new(&k1, 5);
        before.bundle = ok("text/plain", bundle_of(&[&k1, &k2]));
        let mut after = Ca::new(&k2, 6);
        after.bundle = ok("text/plain", bundle_of(&[&k2]));
        let (old_feed, new_feed) = (before.feed(), after.feed());
        let feeds = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&feeds);
        let url = serve(move |target| match route(target) {
            REVOCATIONS_PATH if counted.fetch_add(1, Ordering::SeqCst) == 0 => old_feed.clone(),
            REVOCATIONS_PATH => new_feed.clone(),
            TRUSTED_KEYS_PATH => after.bundle.clone(),
            _ => after.krl.clone(),
        });
        let report = sync_at(&config(url, dir.path()), NOW).expect("second round");
        assert_eq!(report.feed_sequence, 6);
        assert_eq!(report.trusted_keys, 1);
        assert_eq!(feeds.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_insecure_state_directory_or_file_is_refused_before_fetching() {
        use std::os::unix::fs::PermissionsExt;
        let key = new_key();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        let ca = Ca::new(&key, 1);
        let feed = ca.feed();
        let url = serve(move |target| {
            counted.fetch_add(1, Ordering::SeqCst);
            match route(target) {
                TRUSTED_KEYS_PATH => ca.bundle.clone(),
                KRL_PATH => ca.krl.clone(),
                _ => feed.clone(),
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let config = config(url, &state);
        sync_at(&config, NOW).expect("first sync");
        let good = requests.load(Ordering::SeqCst);
        let set_mode = |path: &Path, mode: u32| {
            fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
        };
        let trusted = config.trusted_keys_path();
        for (path, mode, good_mode) in [
            (&state, 0o777, 0o755),
            (&state, 0o775, 0o755),
            (&trusted, 0o666, 0o644),
            (&trusted, 0o646, 0o644),
        ] {
            set_mode(path, mode);
            let before = contents(&state);
            let error = sync_at(&config, NOW).expect_err("insecure");
            assert!(matches!(error, SyncError::Insecure(_)), "{error}");
            assert!(
                error.to_string().contains("writable by group or others"),
                "{error}"
            );
            assert_eq!(contents(&state), before);
            set_mode(path, good_mode);
        }
        assert_eq!(requests.load(Ordering::SeqCst), good, "nothing was fetched");
        sync_at(&config, NOW).expect("secure again");
    }

    #[test]
    fn feed_must_verify_against_the_new_bundle() {
        // The old bundle trusted `old`, and the feed is signed by `old`, but the CA's new
        // bundle no longer lists it (an emergency CA revocation).
        let dir = tempfile::tempdir().expect("tempdir");
        let (old, new) = (new_key(), new_key());
        sync_at(&config(Ca::new(&old, 1).serve(), dir.path()), NOW).expect("first sync");
        let mut ca = Ca::new(&old, 2);
        ca.bundle = ok("text/plain", bundle_of(&[&new]));
        let before = contents(dir.path());
        let error = sync_at(&config(ca.serve(), dir.path()), NOW).expect_err("old signer");
        assert!(matches!(
            error,
            SyncError::Feed {
                source: FeedError::BadSignature,
                ..
            }
        ));
        assert_eq!(contents(dir.path()), before);

        // Signed by the new key it goes through, and the old feed (no longer verifiable)
        // does not block it.
        let mut ca = Ca::new(&new, 1);
        ca.bundle = ok("text/plain", bundle_of(&[&new]));
        let report = sync_at(&config(ca.serve(), dir.path()), NOW).expect("sync");
        assert!(matches!(report.previous_feed, PreviousFeed::Ignored { .. }));
    }

    #[test]
    fn an_older_feed_is_refused_as_rollback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = new_key();
        let revoked = vec![RevokedTask {
            task_id: "ab".repeat(16),
            until: NOW + 600,
        }];
        let mut current = Ca::new(&key, 9);
        current.feed = Some(ok(
            "application/json",
            bound_feed(
                &key,
                NOW - 5,
                9,
                revoked,
                &current.bundle.body,
                &current.krl.body,
            ),
        ));
        sync_at(&config(current.serve(), dir.path()), NOW).expect("first sync");
        let before = contents(dir.path());

        // A replay of an earlier (still fresh) feed that predates the revocation.
        let mut replay = Ca::new(&key, 8);
        replay.feed = Some(replay.bound(&key, NOW - 30, 8));
        let error = sync_at(&config(replay.serve(), dir.path()), NOW).expect_err("rollback");
        assert!(
            matches!(
                error,
                SyncError::Feed {
                    source: FeedError::Rollback { got: 8, have: 9 },
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(contents(dir.path()), before);

        // The same sequence again, or a later one, is fine.
        let report = sync_at(&config(Ca::new(&key, 9).serve(), dir.path()), NOW).expect("same");
        assert_eq!(report.previous_feed, PreviousFeed::Verified { sequence: 9 });
        sync_at(&config(Ca::new(&key, 10).serve(), dir.path()), NOW).expect("later");
    }

    #[test]
    fn a_damaged_installed_feed_does_not_block_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("revocations.json"), "garbage").expect("write");
        let key = new_key();
        let report = sync_at(&config(Ca::new(&key, 1).serve(), dir.path()), NOW).expect("sync");
        assert!(matches!(report.previous_feed, PreviousFeed::Ignored { .. }));
    }

    #[test]
    fn a_leftover_temporary_file_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leftover = dir
            .path()
            .join(format!(".revoked.krl.{}.tmp", std::process::id()));
        fs::write(&leftover, "crashed").expect("write");
        sync_at(&config(Ca::new(&new_key(), 1).serve(), dir.path()), NOW).expect("sync");
        assert!(!leftover.exists());
    }

    #[test]
    fn a_silent_ca_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The kernel completes the handshake into the backlog; nobody ever answers.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let mut config = config(url, dir.path());
        config.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let error = sync(&config).expect_err("timeout");
        assert!(matches!(error, SyncError::Request { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(names(dir.path()).is_empty());
        drop(listener);
    }

    #[test]
    fn watch_keeps_going_after_a_failed_round() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = new_key();
        // Feeds are judged against the real clock in `watch`.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let bundle = bundle_of(&[&key]);
        let feed = bound_feed(&key, now, 1, vec![], bundle.as_bytes(), &krl());
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&requests);
        let url = serve(move |target| {
            // The first request (round one's feed) fails; everything after succeeds.
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                return Reply {
                    status: "503 Service Unavailable",
                    ..ok("text/plain", "")
                };
            }
            match route(target) {
                TRUSTED_KEYS_PATH => ok("text/plain", bundle.clone()),
                KRL_PATH => ok("application/octet-stream", krl()),
                _ => ok("application/json", feed.clone()),
            }
        });
        let config = config(url, dir.path());
        let mut rounds = Vec::new();
        watch(&config, Duration::from_millis(10), |result| {
            rounds.push(
                result
                    .as_ref()
                    .map(|r| r.feed_sequence)
                    .map_err(|e| e.to_string()),
            );
            if rounds.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(
            rounds[0].as_ref().is_err_and(|e| e.contains("HTTP 503")),
            "{rounds:?}"
        );
        assert_eq!(rounds[1], Ok(1));
        assert_eq!(
            names(dir.path()),
            ["revocations.json", "revoked.krl", "trusted_user_ca_keys"]
        );
        assert_eq!(requests.load(Ordering::SeqCst), 4);
    }
}
