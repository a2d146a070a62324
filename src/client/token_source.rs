//! Where the agent side gets its workload token: `--token TOKEN|-|@FILE` (read once, as
//! scripts pass it), or a [`TokenSource`] named by `--token-source SPEC` or the client
//! config's `token_source`, or found by [`discover`]:
//!
//! - `file:PATH` — read on every use (Kubernetes rotates projected tokens in place);
//! - `env:VAR` — the variable's value;
//! - `github-actions[:AUDIENCE]` — a fresh OIDC token from the GitHub Actions token
//!   endpoint (`ACTIONS_ID_TOKEN_REQUEST_URL`, `ACTIONS_ID_TOKEN_REQUEST_TOKEN`) on every
//!   use, audience `writ` unless named;
//! - `command:CMD` — the standard output of `sh -c CMD`, within [`COMMAND_TIMEOUT`];
//! - `dev` — a token minted by the development issuer of `writ serve --dev`
//!   ([`crate::dev::mint_token`], key in `./writ-data`).
//!
//! Every token, whatever its source, is checked the same way before use ([`check`]):
//! bounded size, surrounding whitespace trimmed, printable ASCII only, not empty.
//!
//! This module never prints, logs or puts into an error any part of a token (nor the
//! GitHub request token): errors name the source (`file:/var/run/…`, `env:VAR`, the
//! command) and what went wrong, nothing else. It sends a credential (the GitHub request
//! token) only over `https://`, or plain `http://` to a loopback address.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// Most bytes read for a token from anywhere (stdin, a file, a command, an HTTP answer); a
/// real token is far smaller (the CA refuses tokens over
/// [`crate::identity::MAX_TOKEN_BYTES`]).
pub const MAX_TOKEN_INPUT_BYTES: u64 = 64 * 1024;

/// How long `command:CMD` may run: a token helper that hangs must not hang the agent.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Hard timeout on the GitHub Actions token request.
pub const GITHUB_TIMEOUT: Duration = Duration::from_secs(30);

/// The audience asked of GitHub Actions unless `github-actions:AUDIENCE` names one: the
/// audience a writ CA's issuer expects by default.
pub const DEFAULT_AUDIENCE: &str = "writ";

/// Where Kubernetes projects a service-account token with audience `writ`, by the
/// convention of writ's examples (a `projected` volume at `/var/run/secrets/writ`).
pub const KUBERNETES_TOKEN_PATH: &str = "/var/run/secrets/writ/token";

/// The two variables GitHub Actions sets in a job with `permissions: id-token: write`.
pub const GITHUB_URL_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// See [`GITHUB_URL_VAR`].
pub const GITHUB_TOKEN_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// Subject of the tokens the `dev` source mints (the dev policy grants any subject).
pub const DEV_SUBJECT: &str = "dev-agent";

/// What every `--token-source` spelling looks like, for help texts and errors.
pub const SPECS: &str = "file:PATH, env:VAR, github-actions[:AUDIENCE], command:CMD, dev";

/// A workload token, wiped from memory when dropped.
pub type Token = Zeroizing<String>;

/// Where a workload token comes from (`--token-source SPEC`, client config `token_source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `file:PATH`, read on every use.
    File(PathBuf),
    /// `env:VAR`.
    Env(String),
    /// `github-actions[:AUDIENCE]`.
    GithubActions {
        /// `aud` of the token asked for.
        audience: String,
    },
    /// `command:CMD`, run with `sh -c`.
    Command(String),
    /// `dev`: the development issuer whose key is in `data_dir`.
    Dev {
        /// Data directory of `writ serve --dev` (`./writ-data`).
        data_dir: PathBuf,
    },
}

/// Why no token could be had. Never holds any part of a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenSourceError {
    /// `--token-source` (or `token_source`) names no known source.
    #[error("unknown token source {0}: expected one of {SPECS}")]
    UnknownSource(String),
    /// A known source spelled without what it needs (`file:` without a path, …).
    #[error("token source {spec}: {problem}")]
    BadSpec {
        /// The kind (`file:`, `env:`, …).
        spec: &'static str,
        /// What is missing or wrong.
        problem: String,
    },
    /// Nothing given and nothing found.
    #[error(
        "no workload token found: tried {}; give --token-source ({SPECS}) or --token, or set \
         token_source in the client config",
        tried.join(", ")
    )]
    NotFound {
        /// Each place looked at, with why it did not give a token.
        tried: Vec<String>,
    },
    /// The source could not be read.
    #[error("cannot read the token from {from}: {detail}")]
    Read {
        /// The source (`file:/…`, `stdin`, …).
        from: String,
        /// What happened.
        detail: String,
    },
    /// The source gave nothing.
    #[error("the token from {from} is empty")]
    Empty {
        /// The source.
        from: String,
    },
    /// The source gave far more than any token.
    #[error(
        "the input from {from} is larger than {MAX_TOKEN_INPUT_BYTES} bytes; it is not a token"
    )]
    TooLarge {
        /// The source.
        from: String,
    },
    /// The source gave something that is not a token (control characters, spaces inside,
    /// non-ASCII).
    #[error("the input from {from} is not a token: it holds characters other than printable ASCII")]
    NotPrintable {
        /// The source.
        from: String,
    },
    /// `command:CMD` did not give a token.
    #[error("token source command:{command} {problem}")]
    Command {
        /// The command.
        command: String,
        /// What happened (exit status, timeout, …).
        problem: String,
    },
    /// The GitHub Actions token endpoint did not give a token.
    #[error("token source github-actions: {0}")]
    GithubActions(String),
    /// The development issuer could not mint a token.
    #[error("token source dev: {0}")]
    Dev(#[from] crate::dev::DevError),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::File(path) => write!(f, "file:{}", path.display()),
            TokenSource::Env(var) => write!(f, "env:{var}"),
            TokenSource::GithubActions { audience } => write!(f, "github-actions:{audience}"),
            TokenSource::Command(command) => write!(f, "command:{command}"),
            TokenSource::Dev { .. } => f.write_str("dev"),
        }
    }
}

impl std::str::FromStr for TokenSource {
    type Err = TokenSourceError;

    /// Parse a `--token-source` SPEC. An unknown SPEC is never echoed whole (it may be a
    /// token pasted into the wrong flag): only a short kind before `:` is named.
    fn from_str(spec: &str) -> Result<TokenSource, TokenSourceError> {
        let bad = |spec: &'static str, problem: &str| TokenSourceError::BadSpec {
            spec,
            problem: problem.to_owned(),
        };
        if spec == "dev" {
            return Ok(TokenSource::Dev {
                data_dir: PathBuf::from(crate::dev::DEFAULT_DATA_DIR),
            });
        }
        if spec == "github-actions" {
            return Ok(TokenSource::GithubActions {
                audience: DEFAULT_AUDIENCE.to_owned(),
            });
        }
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        match kind {
            "file" if rest.is_empty() => Err(bad("file:", "give a path, file:PATH")),
            "file" => Ok(TokenSource::File(PathBuf::from(rest))),
            "env" if !is_variable_name(rest) => Err(bad(
                "env:",
                "give an environment variable name, env:VAR (letters, digits, _)",
            )),
            "env" => Ok(TokenSource::Env(rest.to_owned())),
            "github-actions" if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_graphic()) => {
                Err(bad(
                    "github-actions:",
                    "give an audience, github-actions:AUDIENCE (printable ASCII)",
                ))
            }
            "github-actions" => Ok(TokenSource::GithubActions {
                audience: rest.to_owned(),
            }),
            "command" if rest.trim().is_empty() => {
                Err(bad("command:", "give a command, command:CMD"))
            }
            "command" => Ok(TokenSource::Command(rest.to_owned())),
            _ => {
                let shown = if kind.len() <= 20
                    && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                {
                    format!("{kind:?}")
                } else {
                    "(not shown: it may be a token)".to_owned()
                };
                Err(TokenSourceError::UnknownSource(shown))
            }
        }
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The environment as this module reads it: a lookup, so tests can give their own.
pub type Environment<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process's own environment.
pub fn process_environment(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

impl TokenSource {
    /// A token from this source, fetched now: the file is read again, GitHub is asked
    /// again, the command runs again — a fresh token on every call.
    pub fn fetch(&self, env: Environment<'_>) -> Result<Token, TokenSourceError> {
        let from = self.to_string();
        match self {
            TokenSource::File(path) => {
                let mut file = std::fs::File::open(path).map_err(|e| TokenSourceError::Read {
                    from: from.clone(),
                    detail: e.to_string(),
                })?;
                check(&read_bounded(&mut file, &from)?, &from)
            }
            TokenSource::Env(var) => match env(var) {
                None => Err(TokenSourceError::Read {
                    from,
                    detail: format!("{var} is not set"),
                }),
                Some(value) => match value.into_string() {
                    Ok(text) => check(&Zeroizing::new(text), &from),
                    Err(_) => Err(TokenSourceError::NotPrintable { from }),
                },
            },
            TokenSource::GithubActions { audience } => github_actions(audience, env),
            TokenSource::Command(command) => run_command(command),
            TokenSource::Dev { data_dir } => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let token = Zeroizing::new(crate::dev::mint_token(
                    data_dir,
                    DEV_SUBJECT,
                    DEFAULT_AUDIENCE,
                    Duration::from_secs(300),
                    now,
                )?);
                check(&token, &from)
            }
        }
    }
}

/// `text` as a token from `from`: trimmed, at most [`MAX_TOKEN_INPUT_BYTES`], printable
/// ASCII, not empty.
pub fn check(text: &str, from: &str) -> Result<Token, TokenSourceError> {
    if text.len() as u64 > MAX_TOKEN_INPUT_BYTES {
        return Err(TokenSourceError::TooLarge { from: from.into() });
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenSourceError::Empty { from: from.into() });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenSourceError::NotPrintable { from: from.into() });
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// The token named by a `--token` argument: `-` reads it from `stdin`, `@FILE` from a
/// file, anything else is the token itself; checked like every token ([`check`]).
pub fn read_token(arg: &str, stdin: &mut dyn Read) -> Result<Token, TokenSourceError> {
    if arg == "-" {
        check(&read_bounded(stdin, "stdin")?, "stdin")
    } else if let Some(path) = arg.strip_prefix('@') {
        let mut file = std::fs::File::open(path).map_err(|e| TokenSourceError::Read {
            from: path.to_owned(),
            detail: e.to_string(),
        })?;
        check(&read_bounded(&mut file, path)?, path)
    } else {
        check(arg, "the command line")
    }
}

/// At most [`MAX_TOKEN_INPUT_BYTES`] of `input`, as text.
fn read_bounded(input: &mut dyn Read, from: &str) -> Result<Token, TokenSourceError> {
    let mut bytes = Zeroizing::new(Vec::new());
    input
        .take(MAX_TOKEN_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TokenSourceError::Read {
            from: from.to_owned(),
            detail: e.to_string(),
        })?;
    if bytes.len() as u64 > MAX_TOKEN_INPUT_BYTES {
        return Err(TokenSourceError::TooLarge { from: from.into() });
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(_) => Err(TokenSourceError::NotPrintable { from: from.into() }),
    }
}

/// What [`discover`] looks at when neither `--token` nor `--token-source` is given.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// `token_source` of the client config, if set.
    pub configured: Option<TokenSource>,
    /// The client config file, to name it (`(none)` when there is none).
    pub config_file: String,
    /// Where a Kubernetes projected token is looked for ([`KUBERNETES_TOKEN_PATH`] unless
    /// the client config's `kubernetes_token_path` says otherwise).
    pub kubernetes_token_path: PathBuf,
}

/// The token source to use when none is named, in this order: the client config's
/// `token_source`; `file:` the Kubernetes projected token if that file exists;
/// `github-actions` when both of its variables are set. Otherwise
/// [`TokenSourceError::NotFound`], listing what was tried.
pub fn discover(
    discovery: &Discovery,
    env: Environment<'_>,
) -> Result<TokenSource, TokenSourceError> {
    if let Some(source) = &discovery.configured {
        return Ok(source.clone());
    }
    let mut tried = vec![format!(
        "token_source in {} (not set)",
        discovery.config_file
    )];
    let path = &discovery.kubernetes_token_path;
    match std::fs::symlink_metadata(path) {
        Ok(_) => return Ok(TokenSource::File(path.clone())),
        Err(e) => tried.push(format!("file:{} ({e})", path.display())),
    }
    let set = |var: &str| env(var).is_some_and(|v| !v.is_empty());
    match (set(GITHUB_URL_VAR), set(GITHUB_TOKEN_VAR)) {
        (true, true) => {
            return Ok(TokenSource::GithubActions {
                audience: DEFAULT_AUDIENCE.to_owned(),
            });
        }
        (false, _) => tried.push(format!("github-actions ({GITHUB_URL_VAR} is not set)")),
        (true, false) => tried.push(format!(
            "github-actions ({GITHUB_TOKEN_VAR} is not set: does the job have `permissions: \
             id-token: write`?)"
        )),
    }
    Err(TokenSourceError::NotFound { tried })
}

/// A token from `--token` or `--token-source`, or [`discover`]ed; and what it came from,
/// to name in messages.
pub fn resolve(
    token: Option<&str>,
    source: Option<&TokenSource>,
    discovery: &Discovery,
    env: Environment<'_>,
    stdin: &mut dyn Read,
) -> Result<(Token, String), TokenSourceError> {
    if let Some(arg) = token {
        let from = match arg {
            "-" => "--token - (stdin)".to_owned(),
            _ => match arg.strip_prefix('@') {
                Some(path) => format!("--token @{path}"),
                None => "--token".to_owned(),
            },
        };
        return Ok((read_token(arg, stdin)?, from));
    }
    let source = match source {
        Some(source) => source.clone(),
        None => discover(discovery, env)?,
    };
    Ok((source.fetch(env)?, source.to_string()))
}

/// `sh -c command`: its standard output, within [`COMMAND_TIMEOUT`] and
/// [`MAX_TOKEN_INPUT_BYTES`]; its standard error goes to ours; it reads nothing.
fn run_command(command: &str) -> Result<Token, TokenSourceError> {
    let failed = |problem: String| TokenSourceError::Command {
        command: command.to_owned(),
        problem,
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| failed(format!("could not start: {e}")))?;
    let (sender, receiver) = std::sync::mpsc::channel();
    if let Some(mut stdout) = child.stdout.take() {
        // Reads to the end even past the bound (discarding), so a chatty command is not
        // blocked on a full pipe and its exit status can be had.
        std::thread::spawn(move || {
            let mut kept = Zeroizing::new(Vec::new());
            let read = (&mut stdout)
                .take(MAX_TOKEN_INPUT_BYTES + 1)
                .read_to_end(&mut kept)
                .and_then(|_| std::io::copy(&mut stdout, &mut std::io::sink()));
            let _ = sender.send(read.map(|_| kept));
        });
    }
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let timed_out = || {
        failed(format!(
            "did not finish within {}s",
            COMMAND_TIMEOUT.as_secs()
        ))
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(failed(format!("could not be waited for: {e}"))),
        }
    };
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_owned(),
        };
        return Err(failed(format!("{how} (its stderr is above)")));
    }
    // Its stdout may still be open in a process it started: wait no longer than the rest.
    let rest = deadline.saturating_duration_since(Instant::now());
    let output = match receiver.recv_timeout(rest) {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(failed(format!("could not be read: {e}"))),
        Err(_) => return Err(timed_out()),
    };
    let from = format!("command:{command}");
    if output.len() as u64 > MAX_TOKEN_INPUT_BYTES {
        return Err(TokenSourceError::TooLarge { from });
    }
    match std::str::from_utf8(&output) {
        Ok(text) => check(text, &from),
        Err(_) => Err(TokenSourceError::NotPrintable { from }),
    }
}

/// A fresh token from the GitHub Actions OIDC endpoint:
/// `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUDIENCE` with
/// `Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`, answered `{"value": JWT}`.
fn github_actions(audience: &str, env: Environment<'_>) -> Result<Token, TokenSourceError> {
    let failed = |problem: String| TokenSourceError::GithubActions(problem);
    let var = |name: &str| -> Result<Zeroizing<String>, TokenSourceError> {
        match env(name).map(OsString::into_string) {
            Some(Ok(value)) if !value.is_empty() => Ok(Zeroizing::new(value)),
            Some(Err(_)) => Err(failed(format!("{name} is not valid text"))),
            _ => Err(failed(format!(
                "{name} is not set (outside GitHub Actions, or the job lacks `permissions: \
                 id-token: write`)"
            ))),
        }
    };
    let base = var(GITHUB_URL_VAR)?;
    let request_token = var(GITHUB_TOKEN_VAR)?;
    let shown = crate::text::redact_url(&base);
    check_credential_url(&base).map_err(|problem| failed(format!("{GITHUB_URL_VAR} {problem}")))?;
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{separator}audience={}",
        base.as_str(),
        percent_encode(audience)
    );
    // The system's trust store, as for the CA (ureq's default, bundled roots, is not
    // compiled in).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(GITHUB_TIMEOUT))
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into();
    let unreachable = |e: ureq::Error| failed(format!("cannot reach {shown}: {e}"));
    let mut response = agent
        .get(&url)
        .header(
            "authorization",
            &format!("bearer {}", request_token.as_str()),
        )
        .header("accept", "application/json")
        .call()
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = Zeroizing::new(
        response
            .body_mut()
            .with_config()
            .limit(MAX_TOKEN_INPUT_BYTES)
            .read_to_vec()
            .map_err(unreachable)?,
    );
    if !(200..300).contains(&status) {
        return Err(failed(format!("{shown} answered HTTP {status}")));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        value: String,
    }
    let answer: Answer = serde_json::from_slice(&body)
        .map_err(|_| failed(format!("{shown} did not answer {{\"value\": TOKEN}}")))?;
    check(&Zeroizing::new(answer.value), "github-actions")
}

/// `https://` anywhere, `http://` only to a loopback address: a URL a credential may be
/// sent to.
fn check_credential_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if matches!(host, "127.0.0.1" | "localhost" | "::1") => Ok(()),
        Some("http") => Err(
            "uses plain http to a non-loopback host; refusing to send the \
                             request token in clear text"
                .to_owned(),
        ),
        _ => Err("is not an https:// URL".to_owned()),
    }
}

/// `text` with everything but RFC 3986's unreserved characters percent-encoded, for a
/// query value.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn specs_parse_and_print_back() {
        for spec in [
            "file:/var/run/secrets/writ/token",
            "env:WRIT_TOKEN",
            "github-actions:https://ca.example.com",
            "command:vault read -field=token x",
            "dev",
        ] {
            let source: TokenSource = spec.parse().expect(spec);
            assert_eq!(source.to_string(), spec);
        }
        assert_eq!(
            "github-actions".parse::<TokenSource>().expect("default"),
            TokenSource::GithubActions {
                audience: "writ".into()
            }
        );
        for bad in [
            "file:",
            "env:",
            "env:1X",
            "env:A-B",
            "command: ",
            "github-actions:",
        ] {
            assert!(
                matches!(
                    bad.parse::<TokenSource>(),
                    Err(TokenSourceError::BadSpec { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_unknown_spec_is_never_echoed_whole() {
        let pasted = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln";
        let error = pasted.parse::<TokenSource>().expect_err("not a spec");
        assert!(!error.to_string().contains("eyJ"), "{error}");
        let error = "vault:x".parse::<TokenSource>().expect_err("unknown");
        assert!(error.to_string().contains("\"vault\""), "{error}");
    }

    #[test]
    fn tokens_are_bounded_trimmed_and_printable() {
        assert_eq!(check(" a.b.c\n", "t").expect("ok").as_str(), "a.b.c");
        assert!(matches!(
            check(" \n", "t"),
            Err(TokenSourceError::Empty { .. })
        ));
        assert!(matches!(
            check("a.b\u{7}.c", "t"),
            Err(TokenSourceError::NotPrintable { .. })
        ));
        assert!(matches!(
            check("a b", "t"),
            Err(TokenSourceError::NotPrintable { .. })
        ));
        assert!(matches!(
            check("é", "t"),
            Err(TokenSourceError::NotPrintable { .. })
        ));
        let big = "a".repeat(70 * 1024);
        assert!(matches!(
            check(&big, "t"),
            Err(TokenSourceError::TooLarge { .. })
        ));
    }

    #[test]
    fn token_arguments() {
        let mut no_stdin: &[u8] = b"";
        assert_eq!(
            read_token("a.b.c", &mut no_stdin)
                .expect("literal")
                .as_str(),
            "a.b.c"
        );
        let mut stdin: &[u8] = b"  x.y.z\n";
        assert_eq!(
            read_token("-", &mut stdin).expect("stdin").as_str(),
            "x.y.z"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "f.g.h\n").expect("write");
        let arg = format!("@{}", file.display());
        assert_eq!(
            read_token(&arg, &mut no_stdin).expect("file").as_str(),
            "f.g.h"
        );
        assert!(matches!(
            read_token("-", &mut no_stdin),
            Err(TokenSourceError::Empty { .. })
        ));
        assert!(matches!(
            read_token("@/nonexistent/token", &mut no_stdin),
            Err(TokenSourceError::Read { .. })
        ));
        let big = vec![b'a'; 70 * 1024];
        assert!(matches!(
            read_token("-", &mut big.as_slice()),
            Err(TokenSourceError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_file_is_read_again_on_every_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let source = TokenSource::File(path.clone());
        std::fs::write(&path, "first.token.x\n").expect("write");
        assert_eq!(
            source.fetch(&no_env).expect("first").as_str(),
            "first.token.x"
        );
        std::fs::write(&path, "second.token.y\n").expect("write");
        assert_eq!(
            source.fetch(&no_env).expect("second").as_str(),
            "second.token.y"
        );
    }

    #[test]
    fn env_and_command_sources() {
        let env = |name: &str| (name == "T").then(|| OsString::from("e.n.v\n"));
        assert_eq!(
            TokenSource::Env("T".into())
                .fetch(&env)
                .expect("set")
                .as_str(),
            "e.n.v"
        );
        let unset = TokenSource::Env("U".into()).fetch(&env).expect_err("unset");
        assert!(unset.to_string().contains("env:U") && unset.to_string().contains("U is not set"));
        let command = TokenSource::Command("printf 'c.m.d\\n'".into());
        assert_eq!(command.fetch(&no_env).expect("ran").as_str(), "c.m.d");
        let failing = TokenSource::Command("exit 3".into())
            .fetch(&no_env)
            .expect_err("fails");
        assert!(
            failing
                .to_string()
                .contains("command:exit 3 exited with status 3"),
            "{failing}"
        );
    }

    #[test]
    fn discovery_follows_its_order_and_lists_what_it_tried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubernetes = dir.path().join("token");
        let mut discovery = Discovery {
            configured: None,
            config_file: "client.toml".into(),
            kubernetes_token_path: kubernetes.clone(),
        };
        let github = |name: &str| {
            [GITHUB_URL_VAR, GITHUB_TOKEN_VAR]
                .contains(&name)
                .then(|| OsString::from("x"))
        };
        let error = discover(&discovery, &no_env).expect_err("nothing");
        let text = error.to_string();
        assert!(text.starts_with("no workload token found: tried token_source in client.toml"));
        assert!(
            text.contains(&format!("file:{}", kubernetes.display())),
            "{text}"
        );
        assert!(text.contains("github-actions (ACTIONS_ID_TOKEN_REQUEST_URL is not set)"));
        assert_eq!(
            discover(&discovery, &github).expect("github"),
            TokenSource::GithubActions {
                audience: "writ".into()
            }
        );
        std::fs::write(&kubernetes, "k.8.s").expect("write");
        assert_eq!(
            discover(&discovery, &github).expect("kubernetes first"),
            TokenSource::File(kubernetes.clone())
        );
        discovery.configured = Some(TokenSource::Env("X".into()));
        assert_eq!(
            discover(&discovery, &github).expect("config first"),
            TokenSource::Env("X".into())
        );
    }

    #[test]
    fn an_https_endpoint_is_verified_by_the_system_trust_store() {
        // Nothing listens on port 9: the request fails, but it is made (ureq panics when
        // asked for its bundled roots, which are not compiled in).
        let env = |name: &str| match name {
            GITHUB_URL_VAR => Some(OsString::from("https://127.0.0.1:9/token?api-version=2.0")),
            GITHUB_TOKEN_VAR => Some(OsString::from("request-token")),
            _ => None,
        };
        let error = TokenSource::GithubActions {
            audience: "writ".into(),
        }
        .fetch(&env)
        .expect_err("nothing listens");
        let text = error.to_string();
        assert!(
            text.contains("cannot reach https://127.0.0.1:9/token"),
            "{text}"
        );
        assert!(!text.contains("request-token"), "{text}");
    }

    #[test]
    fn credentials_go_only_to_https_or_loopback() {
        assert!(check_credential_url("https://token.actions.example/x?api-version=2.0").is_ok());
        assert!(check_credential_url("http://127.0.0.1:8080/x?a=b").is_ok());
        assert!(check_credential_url("http://[::1]:8080/x").is_ok());
        assert!(check_credential_url("http://token.example/x").is_err());
        assert!(check_credential_url("ftp://token.example/x").is_err());
        assert_eq!(
            percent_encode("https://ca.example/a b"),
            "https%3A%2F%2Fca.example%2Fa%20b"
        );
    }
}
