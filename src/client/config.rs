//! The agent's own configuration, `client.toml`: where the CA is (`ca_url`, `ca_bundle`,
//! `client_cert`, `client_key`), where the workload token comes from (`token_source`, the
//! same syntax as `--token-source`; `kubernetes_token_path`), and defaults for the agent
//! commands (`login`, `ttl`, `task_ttl`).
//!
//! Found at `WRIT_CLIENT_CONFIG` (which must exist), else
//! `$XDG_CONFIG_HOME/writ/client.toml`, else `~/.config/writ/client.toml` (either may be
//! missing: then every setting is unset). Flags and their environment variables
//! (`WRIT_CA_URL`, `WRIT_CA_BUNDLE`, …) override the file; the binary applies that order.
//! Unknown keys are refused, naming the key and the file; relative paths are relative to
//! the file's directory. A file anyone may write is refused: its `token_source` can name
//! a command to run.
//!
//! It holds no secret and never reads one: a token is fetched only when a command needs
//! it ([`super::token_source`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::token_source::{Discovery, Environment, KUBERNETES_TOKEN_PATH, TokenSource};

/// The variable that names the client config file.
pub const CONFIG_VAR: &str = "WRIT_CLIENT_CONFIG";

/// `client.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    ca_url: Option<String>,
    ca_bundle: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    token_source: Option<String>,
    kubernetes_token_path: Option<PathBuf>,
    login: Option<String>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    task_ttl: Option<Duration>,
}

/// The client configuration in effect (every setting unset when there is no file).
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// `ca_url`.
    pub ca_url: Option<String>,
    /// `ca_bundle`.
    pub ca_bundle: Option<PathBuf>,
    /// `client_cert`.
    pub client_cert: Option<PathBuf>,
    /// `client_key`.
    pub client_key: Option<PathBuf>,
    /// `token_source`.
    pub token_source: Option<TokenSource>,
    /// `kubernetes_token_path` ([`KUBERNETES_TOKEN_PATH`] unless set).
    pub kubernetes_token_path: PathBuf,
    /// `login`: the login of `writ cert`/`writ ssh` when `--login` is not given.
    pub login: Option<String>,
    /// `ttl`: the certificate lifetime when `--ttl` is not given.
    pub ttl: Option<Duration>,
    /// `task_ttl`: the task lifetime when `--task-ttl` is not given.
    pub task_ttl: Option<Duration>,
}

/// A client config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// The file could not be read (or `WRIT_CLIENT_CONFIG` names no file).
    #[error("cannot read the client config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key or a value of the wrong type.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (it names the key).
        message: String,
    },
    /// A value that is not acceptable.
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
    /// Anyone may write the file.
    #[error(
        "{}: refusing a client config anyone may write (it can name a command to run): \
         chmod o-w it",
        path.display()
    )]
    Writable {
        /// The file.
        path: PathBuf,
    },
    /// Neither a flag, its variable nor the file names the CA.
    #[error("no CA URL: give --ca-url URL, set WRIT_CA_URL, or set ca_url in {0}")]
    NoCaUrl(String),
}

/// Where the client config is: `WRIT_CLIENT_CONFIG` (true: it must exist), else under
/// `$XDG_CONFIG_HOME` or `~/.config` (false: it may be missing); `None` when no home is
/// known.
pub fn locate(env: Environment<'_>) -> Option<(PathBuf, bool)> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(path) = set(CONFIG_VAR) {
        return Some((PathBuf::from(path), true));
    }
    let base = set("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| set("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some((base.join("writ").join("client.toml"), false))
}

/// The client config in effect: the file [`locate`] finds, or nothing set.
pub fn load(env: Environment<'_>) -> Result<ClientConfig, ClientConfigError> {
    let Some((path, explicit)) = locate(env) else {
        return Ok(ClientConfig::default());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(ClientConfig::default());
        }
        Err(source) => return Err(ClientConfigError::Read { path, source }),
    };
    if let Ok(meta) = std::fs::metadata(&path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o002 != 0 {
            return Err(ClientConfigError::Writable { path });
        }
    }
    parse(&text, &path)
}

/// Parse client config text read from `path` (named in errors; relative paths in it are
/// relative to its directory).
pub fn parse(text: &str, path: &Path) -> Result<ClientConfig, ClientConfigError> {
    let file: File = toml::from_str(text).map_err(|e| {
        // toml's own message, on one line, with the line it is about.
        let line = e.span().map(|span| {
            let before = text.get(..span.start).unwrap_or_default();
            before.matches('\n').count().saturating_add(1)
        });
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        ClientConfigError::Parse {
            path: path.to_owned(),
            message: match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            },
        }
    })?;
    let invalid = |key: &'static str, message: String| ClientConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let relative = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
    let token_source = match file.token_source.as_deref().map(str::parse::<TokenSource>) {
        None => None,
        Some(Ok(TokenSource::File(p))) => Some(TokenSource::File(relative(p))),
        Some(Ok(source)) => Some(source),
        Some(Err(e)) => return Err(invalid("token_source", e.to_string())),
    };
    if let Some(url) = &file.ca_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(invalid("ca_url", "give an https:// URL".into()));
    }
    if let Some(login) = &file.login
        && (login.is_empty() || login.contains(','))
    {
        return Err(invalid("login", "give one login".into()));
    }
    if file.client_cert.is_some() != file.client_key.is_some() {
        return Err(invalid(
            "client_cert",
            "give both client_cert and client_key, or neither".into(),
        ));
    }
    Ok(ClientConfig {
        path: Some(path.to_owned()),
        ca_url: file.ca_url,
        ca_bundle: file.ca_bundle.map(relative),
        client_cert: file.client_cert.map(relative),
        client_key: file.client_key.map(relative),
        token_source,
        kubernetes_token_path: file
            .kubernetes_token_path
            .map_or_else(|| PathBuf::from(KUBERNETES_TOKEN_PATH), relative),
        login: file.login,
        ttl: file.ttl,
        task_ttl: file.task_ttl,
    })
}

impl ClientConfig {
    /// The file, for messages: its path, or what would have been read.
    pub fn describe(&self, env: Environment<'_>) -> String {
        match self
            .path
            .clone()
            .or_else(|| locate(env).map(|(path, _)| path))
        {
            Some(path) => path.display().to_string(),
            None => format!("the client config (set {CONFIG_VAR})"),
        }
    }

    /// What [`super::token_source::discover`] looks at.
    pub fn discovery(&self, env: Environment<'_>) -> Discovery {
        Discovery {
            configured: self.token_source.clone(),
            config_file: self.describe(env),
            kubernetes_token_path: if self.kubernetes_token_path.as_os_str().is_empty() {
                PathBuf::from(KUBERNETES_TOKEN_PATH)
            } else {
                self.kubernetes_token_path.clone()
            },
        }
    }

    /// The CA URL: `flag` (`--ca-url`, or `WRIT_CA_URL` through it), else `ca_url`.
    pub fn ca_url(
        &self,
        flag: Option<&str>,
        env: Environment<'_>,
    ) -> Result<String, ClientConfigError> {
        flag.map(str::to_owned)
            .or_else(|| self.ca_url.clone())
            .ok_or_else(|| ClientConfigError::NoCaUrl(self.describe(env)))
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    /// An environment with exactly `pairs`, for tests.
    fn fixed_environment(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_file_is_found_where_the_environment_says() {
        let env = fixed_environment(&[("HOME", "/home/a")]);
        assert_eq!(
            locate(&env),
            Some((PathBuf::from("/home/a/.config/writ/client.toml"), false))
        );
        let env = fixed_environment(&[("HOME", "/home/a"), ("XDG_CONFIG_HOME", "/x")]);
        assert_eq!(
            locate(&env),
            Some((PathBuf::from("/x/writ/client.toml"), false))
        );
        let env = fixed_environment(&[("XDG_CONFIG_HOME", "/x"), (CONFIG_VAR, "/etc/c.toml")]);
        assert_eq!(locate(&env), Some((PathBuf::from("/etc/c.toml"), true)));
        assert_eq!(locate(&fixed_environment(&[])), None);
    }

    #[test]
    fn a_missing_default_file_is_fine_a_missing_named_file_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().to_str().expect("utf-8");
        let config = load(&fixed_environment(&[("HOME", home)])).expect("no file: defaults");
        assert!(config.path.is_none() && config.ca_url.is_none());
        assert_eq!(
            config
                .discovery(&fixed_environment(&[]))
                .kubernetes_token_path,
            Path::new(KUBERNETES_TOKEN_PATH)
        );
        let named = dir.path().join("nope.toml");
        let named = named.to_str().expect("utf-8");
        let error = load(&fixed_environment(&[(CONFIG_VAR, named)])).expect_err("missing");
        assert!(error.to_string().contains(named), "{error}");
    }

    #[test]
    fn keys_are_read_and_unknown_keys_named() {
        let path = Path::new("/etc/writ/client.toml");
        let config = parse(
            "ca_url = \"https://ca.example.com\"\nca_bundle = \"ca.pem\"\n\
             token_source = \"file:token\"\nlogin = \"deploy\"\nttl = \"5m\"\n\
             kubernetes_token_path = \"/run/t\"\n",
            path,
        )
        .expect("valid");
        assert_eq!(config.ca_url.as_deref(), Some("https://ca.example.com"));
        assert_eq!(
            config.ca_bundle.as_deref(),
            Some(Path::new("/etc/writ/ca.pem"))
        );
        assert_eq!(
            config.token_source,
            Some(TokenSource::File("/etc/writ/token".into()))
        );
        assert_eq!(config.ttl, Some(Duration::from_secs(300)));
        assert_eq!(config.kubernetes_token_path, Path::new("/run/t"));
        let error = parse("ca_ulr = \"x\"\n", path).expect_err("unknown key");
        let text = error.to_string();
        assert!(
            text.contains("ca_ulr") && text.contains("/etc/writ/client.toml"),
            "{text}"
        );
        let error = parse("token_source = \"nope:x\"\n", path).expect_err("bad source");
        assert!(error.to_string().contains("token_source"), "{error}");
        let error = parse("client_cert = \"c.pem\"\n", path).expect_err("half");
        assert!(error.to_string().contains("client_key"), "{error}");
    }
}
