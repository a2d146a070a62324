//! `writ-principals session`: the `pam_exec` session hook that records a *use* of a writ
//! certificate — only after sshd authenticated the user, unlike `check`, which also runs
//! for probes by anyone who holds a public certificate.
//!
//! PAM line (in `/etc/pam.d/sshd`, with `ExposeAuthInfo yes` in `sshd_config`):
//!
//! ```text
//! session optional pam_exec.so quiet /usr/local/bin/writ-principals session --config /etc/writ/host.toml
//! ```
//!
//! pam_exec passes `PAM_TYPE`, `PAM_USER`, `PAM_RHOST` and the PAM environment, where sshd
//! put `SSH_AUTH_INFO_0`: one line per successful authentication method, e.g.
//! `publickey ssh-ed25519-cert-v01@openssh.com AAAA…`. [`run`] acts only on
//! `open_session`, takes the certificates from those lines, re-checks them with `check`'s
//! certificate rules (trusted CA, validity window, login, host) and records the use:
//!
//! - always one syslog line (facility auth) `event=cert.used login=… serial=… task=…
//!   host=… rhost=…`, also naming the local revocation-feed verdict (`feed=ok` or its
//!   reason code) and how the use was reported;
//! - in online mode, also `POST /v1/authorize` with phase `session` (the CA records
//!   `cert.used`), bounded by `timeout`. The CA's answer is recorded, whatever the local
//!   feed says: the CA is the authority on its own tasks.
//!
//! The hook never fails or delays a login beyond `timeout`: the binary exits 0 in every
//! case — not a session open, no certificate (a non-writ login), a certificate this host
//! would not admit, an unreachable CA — and logs what it could not do. Denying is
//! `check`'s job, before authentication; this hook only reports.

use crate::check::{self, CertFacts, CheckError, log_owned};
use crate::config::{HostConfig, Mode};
use crate::online::{self, Answer, AuthorizeRequest, Phase};
use crate::syslog::Severity;

/// The `PAM_TYPE` a use is recorded for.
pub const OPEN_SESSION: &str = "open_session";
/// The `PAM_TYPE` at which the connection's record is removed ([`crate::sessions`]).
pub const CLOSE_SESSION: &str = "close_session";
/// Suffix of OpenSSH certificate key types.
const CERT_TYPE_SUFFIX: &str = "-cert-v01@openssh.com";

/// What pam_exec tells the hook, from its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEnv {
    /// `PAM_TYPE`: `open_session`, `close_session`, …
    pub pam_type: Option<String>,
    /// `PAM_USER`: the login.
    pub user: Option<String>,
    /// `PAM_RHOST`: the client's address.
    pub rhost: Option<String>,
    /// `SSH_AUTH_INFO_0`: sshd's record of the authentication methods used.
    pub auth_info: Option<String>,
}

impl SessionEnv {
    /// Read the variables from the process environment (non-UTF-8 values are converted
    /// lossily; they are only ever compared and logged escaped).
    pub fn from_process() -> SessionEnv {
        let var =
            |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
        SessionEnv {
            pam_type: var("PAM_TYPE"),
            user: var("PAM_USER"),
            rhost: var("PAM_RHOST"),
            auth_info: var("SSH_AUTH_INFO_0"),
        }
    }
}

/// How a use was reported beyond syslog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Offline mode: syslog only.
    Offline,
    /// Online mode: the CA accepted the report (it answered `allow: true`).
    Recorded,
    /// Online mode: the CA answered `allow: false` with this reason — it considers the
    /// certificate not usable (revoked between check and session, for instance).
    CaDenied(String),
    /// Online mode: the report could not be made (token, refusal, CA unreachable).
    Failed(String),
}

impl Report {
    fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Report::Offline => vec![("report", "offline".to_owned())],
            Report::Recorded => vec![("report", "online".to_owned())],
            Report::CaDenied(reason) => vec![
                ("report", "ca_denied".to_owned()),
                ("ca_reason", reason.clone()),
            ],
            Report::Failed(detail) => vec![
                ("report", "failed".to_owned()),
                ("report_error", detail.clone()),
            ],
        }
    }
}

/// What the session hook did.
#[derive(Debug)]
pub enum SessionOutcome {
    /// Nothing to record: not a session open (`not_open_session`) or no writ certificate
    /// among the authentication methods (`no_certificate`, `not_a_writ_certificate`).
    Skipped(&'static str),
    /// A writ certificate was presented but fails this host's certificate rules now.
    Unverified {
        /// The login.
        login: String,
        /// The client's address.
        rhost: String,
        /// What the certificate claimed.
        facts: CertFacts,
        /// The failed rule's reason code.
        reason: String,
    },
    /// A use of a writ certificate.
    Used {
        /// The login.
        login: String,
        /// The client's address.
        rhost: String,
        /// The certificate.
        facts: CertFacts,
        /// This host's name.
        host: String,
        /// `ok`, or why the local revocation feed would deny the certificate now.
        feed: String,
        /// How the use was reported.
        report: Report,
        /// The certificate, as sshd exposed it (base64), for [`crate::sessions`].
        certificate: String,
    },
}

impl SessionOutcome {
    /// The syslog fields, or `None` when there is nothing worth logging.
    pub fn log_fields(
        &self,
        host: Option<&str>,
    ) -> Option<(Severity, Vec<(&'static str, String)>)> {
        let host_field = |host: &str| ("host", host.to_owned());
        match self {
            SessionOutcome::Skipped(_) => None,
            SessionOutcome::Unverified {
                login,
                rhost,
                facts,
                reason,
            } => {
                let mut fields = vec![
                    ("event", "cert.use_unverified".to_owned()),
                    ("login", login.clone()),
                ];
                fields.extend(facts.serial_and_task());
                fields.push(host_field(host.unwrap_or("-")));
                fields.push(("rhost", rhost.clone()));
                fields.push(("reason", reason.clone()));
                fields.extend(facts.key_id_and_ca());
                Some((Severity::Notice, fields))
            }
            SessionOutcome::Used {
                login,
                rhost,
                facts,
                host,
                feed,
                report,
                ..
            } => {
                let mut fields = vec![("event", "cert.used".to_owned()), ("login", login.clone())];
                fields.extend(facts.serial_and_task());
                fields.push(host_field(host));
                fields.push(("rhost", rhost.clone()));
                fields.push(("feed", feed.clone()));
                fields.extend(report.fields());
                fields.extend(facts.key_id_and_ca());
                let severity =
                    if feed == "ok" && matches!(report, Report::Offline | Report::Recorded) {
                        Severity::Info
                    } else {
                        Severity::Notice
                    };
                Some((severity, fields))
            }
        }
    }

    /// Send the outcome to syslog (best effort).
    pub fn log(&self, host: Option<&str>) {
        if let Some((severity, fields)) = self.log_fields(host) {
            log_owned(severity, &fields);
        }
    }
}

/// The base64 certificate blobs in `SSH_AUTH_INFO_0`: the key of every `publickey` line
/// whose key type is an OpenSSH certificate type, in order.
pub fn certificates_in_auth_info(auth_info: &str) -> Vec<&str> {
    auth_info
        .lines()
        .filter_map(|line| {
            let mut words = line.split_ascii_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("publickey"), Some(key_type), Some(blob))
                    if key_type.ends_with(CERT_TYPE_SUFFIX) =>
                {
                    Some(blob)
                }
                _ => None,
            }
        })
        .collect()
}

/// Handle one pam_exec invocation at `now_unix` (see the module documentation). Makes
/// at most one network call (online mode), bounded by `config.timeout`.
pub fn run(config: &HostConfig, env: &SessionEnv, now_unix: u64) -> SessionOutcome {
    if env.pam_type.as_deref() != Some(OPEN_SESSION) {
        return SessionOutcome::Skipped("not_open_session");
    }
    let certificates = env
        .auth_info
        .as_deref()
        .map(certificates_in_auth_info)
        .unwrap_or_default();
    if certificates.is_empty() {
        return SessionOutcome::Skipped("no_certificate");
    }
    let login = env.user.clone().unwrap_or_default();
    let rhost = env.rhost.clone().unwrap_or_else(|| "-".to_owned());

    // The first certificate that passes the certificate rules is the one that let the
    // user in (AuthenticationMethods may list several keys).
    let mut first_failure: Option<(CertFacts, CheckError)> = None;
    let mut found = None;
    for cert in &certificates {
        let mut facts = CertFacts::default();
        match check::verify_certificate(config, &login, cert, now_unix, &mut facts) {
            Ok((verified, trusted)) => {
                found = Some((cert, facts, verified, trusted));
                break;
            }
            Err(e) => {
                if first_failure.is_none() {
                    first_failure = Some((facts, e));
                }
            }
        }
    }
    let Some((cert, facts, verified, trusted)) = found else {
        return match first_failure {
            Some((_, CheckError::UntrustedCa(_) | CheckError::MissingTaskExtension)) | None => {
                SessionOutcome::Skipped("not_a_writ_certificate")
            }
            Some((facts, error)) => SessionOutcome::Unverified {
                login,
                rhost,
                facts,
                reason: error.reason_code().to_owned(),
            },
        };
    };

    let feed = match check::check_feed(config, &trusted, &verified, now_unix) {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.reason_code().to_owned(),
    };
    let report = match config.mode {
        Mode::Offline => Report::Offline,
        Mode::Online => match online::read_token(config) {
            Err(_) => Report::Failed("host_token_unavailable".to_owned()),
            Ok(token) => {
                let request = AuthorizeRequest {
                    login: &login,
                    certificate: cert,
                    host: &verified.host,
                    phase: Phase::Session,
                    reason: None,
                };
                match online::authorize(config, &token, &request) {
                    Answer::Allow { .. } => Report::Recorded,
                    Answer::Deny { reason } => Report::CaDenied(reason),
                    Answer::Refused { status, code } => {
                        Report::Failed(format!("ca_refused_host: HTTP {status} {code}"))
                    }
                    Answer::Unavailable { detail } => Report::Failed(detail),
                }
            }
        },
    };
    SessionOutcome::Used {
        login,
        rhost,
        facts,
        host: verified.host,
        feed,
        report,
        certificate: (*cert).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ssh_key::PrivateKey;
    use writ_formats::revocation::feed::RevokedTask;

    use super::*;
    use crate::check::tests::{HOST, NOW, SERIAL, Spec, TASK, issue, new_key, signed_feed};
    use crate::online::tests::{ca_stand_in, request_json};

    struct Fixture {
        ca: PrivateKey,
        config: HostConfig,
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let ca = new_key();
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(
                dir.path().join("trusted_user_ca_keys"),
                ca.public_key().to_openssh().expect("openssh"),
            )
            .expect("write");
            std::fs::write(
                dir.path().join("revocations.json"),
                signed_feed(&ca, NOW as i64, 1, vec![], vec![]),
            )
            .expect("write");
            let config = HostConfig::for_tests("http://127.0.0.1:1", HOST, dir.path());
            Fixture { ca, config, dir }
        }

        fn go_online(&mut self, url: String) {
            let token = self.dir.path().join("token");
            std::fs::write(&token, "host.token").expect("write");
            self.config.mode = Mode::Online;
            self.config.ca_url = url;
            self.config.token_file = Some(token);
        }

        fn env(&self, cert: &str) -> SessionEnv {
            SessionEnv {
                pam_type: Some("open_session".to_owned()),
                user: Some("deploy".to_owned()),
                rhost: Some("192.0.2.7".to_owned()),
                auth_info: Some(format!(
                    "publickey ssh-ed25519-cert-v01@openssh.com {cert}\n"
                )),
            }
        }
    }

    fn field(outcome: &SessionOutcome, key: &str) -> String {
        let (_, fields) = outcome.log_fields(Some(HOST)).expect("logged");
        fields
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    #[test]
    fn certificates_are_found_in_auth_info() {
        let info = "password\n\
                    publickey ssh-ed25519 AAAAplain\n\
                    publickey ssh-ed25519-cert-v01@openssh.com AAAAcert1\n\
                    keyboard-interactive\n\
                    publickey ecdsa-sha2-nistp256-cert-v01@openssh.com AAAAcert2 extra\n\
                    publickey\n";
        assert_eq!(certificates_in_auth_info(info), ["AAAAcert1", "AAAAcert2"]);
        assert!(certificates_in_auth_info("").is_empty());
    }

    #[test]
    fn only_session_open_with_a_certificate_is_acted_on() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let mut env = f.env(&cert);
        env.pam_type = Some("close_session".to_owned());
        assert!(matches!(
            run(&f.config, &env, NOW),
            SessionOutcome::Skipped("not_open_session")
        ));
        env.pam_type = None;
        assert!(matches!(
            run(&f.config, &env, NOW),
            SessionOutcome::Skipped(_)
        ));
        let mut env = f.env(&cert);
        env.auth_info = Some("publickey ssh-ed25519 AAAAplain\n".to_owned());
        assert!(matches!(
            run(&f.config, &env, NOW),
            SessionOutcome::Skipped("no_certificate")
        ));
        env.auth_info = None;
        assert!(matches!(
            run(&f.config, &env, NOW),
            SessionOutcome::Skipped("no_certificate")
        ));
        // A certificate from a CA this host does not trust is not a writ login.
        let foreign = issue(&new_key(), Spec::default());
        let env = f.env(&foreign);
        assert!(matches!(
            run(&f.config, &env, NOW),
            SessionOutcome::Skipped("not_a_writ_certificate")
        ));
    }

    #[test]
    fn offline_use_is_logged_with_its_certificate() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let outcome = run(&f.config, &f.env(&cert), NOW);
        assert!(
            matches!(
                &outcome,
                SessionOutcome::Used {
                    report: Report::Offline,
                    ..
                }
            ),
            "{outcome:?}"
        );
        let (severity, _) = outcome.log_fields(Some(HOST)).expect("logged");
        assert_eq!(severity, Severity::Info);
        assert_eq!(field(&outcome, "event"), "cert.used");
        assert_eq!(field(&outcome, "login"), "deploy");
        assert_eq!(field(&outcome, "serial"), SERIAL.to_string());
        assert_eq!(field(&outcome, "task"), TASK);
        assert_eq!(field(&outcome, "host"), HOST);
        assert_eq!(field(&outcome, "rhost"), "192.0.2.7");
        assert_eq!(field(&outcome, "feed"), "ok");
        assert_eq!(field(&outcome, "report"), "offline");
    }

    #[test]
    fn a_revoked_or_unverifiable_use_is_still_logged_at_notice() {
        let f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        std::fs::write(
            f.config.revocations_path(),
            signed_feed(
                &f.ca,
                NOW as i64,
                2,
                vec![RevokedTask {
                    task_id: TASK.to_owned(),
                    until: NOW as i64 + 60,
                }],
                vec![],
            ),
        )
        .expect("write");
        let outcome = run(&f.config, &f.env(&cert), NOW);
        assert_eq!(field(&outcome, "feed"), "task_revoked");
        let (severity, _) = outcome.log_fields(Some(HOST)).expect("logged");
        assert_eq!(severity, Severity::Notice);

        // A login the certificate does not name: logged as unverified.
        let mut env = f.env(&cert);
        env.user = Some("root".to_owned());
        let outcome = run(&f.config, &env, NOW);
        assert!(matches!(outcome, SessionOutcome::Unverified { .. }));
        assert_eq!(field(&outcome, "event"), "cert.use_unverified");
        assert_eq!(field(&outcome, "reason"), "login_not_in_task");
    }

    #[test]
    fn online_use_is_reported_with_phase_session() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let (url, requests) = ca_stand_in(
            "200 OK",
            r#"{"allow": true, "principal": "writ:0123456789abcdef0123456789abcdef:deploy"}"#,
        );
        f.go_online(url);
        // The CA decides, even without a local feed.
        std::fs::remove_file(f.config.revocations_path()).expect("remove");
        let outcome = run(&f.config, &f.env(&cert), NOW);
        assert_eq!(field(&outcome, "report"), "online");
        assert_eq!(field(&outcome, "feed"), "feed_missing");
        let request = requests
            .recv_timeout(Duration::from_secs(5))
            .expect("reported");
        let json = request_json(&request);
        assert_eq!(json["phase"], "session");
        assert_eq!(json["login"], "deploy");
        assert_eq!(json["certificate"], cert.as_str());
        assert_eq!(json["host"], HOST);
    }

    #[test]
    fn online_report_failures_never_fail_the_session() {
        let mut f = Fixture::new();
        let cert = issue(&f.ca, Spec::default());
        let (url, _requests) = ca_stand_in("503 Service Unavailable", "{}");
        f.go_online(url);
        let outcome = run(&f.config, &f.env(&cert), NOW);
        assert_eq!(field(&outcome, "report"), "failed");
        assert!(field(&outcome, "report_error").contains("503"));

        let (url, _requests) =
            ca_stand_in("200 OK", r#"{"allow": false, "reason": "task_revoked"}"#);
        f.config.ca_url = url;
        let outcome = run(&f.config, &f.env(&cert), NOW);
        assert_eq!(field(&outcome, "report"), "ca_denied");
        assert_eq!(field(&outcome, "ca_reason"), "task_revoked");

        // A silent CA is bounded by the timeout.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        f.config.ca_url = format!("http://{}", listener.local_addr().expect("addr"));
        f.config.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let outcome = run(&f.config, &f.env(&cert), NOW);
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert_eq!(field(&outcome, "report"), "failed");
        drop(listener);
    }
}
