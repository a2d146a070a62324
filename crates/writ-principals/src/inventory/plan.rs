//! `inventory --plan LOGIN`: the steps that make one login writ-only, from an inventory.
//! Pure: it prints, it changes nothing.
//!
//! The order is the safety rule: writ enforcement first (until `TrustedUserCAKeys` and
//! `AuthorizedPrincipalsCommand` work, removing keys or passwords locks everyone out of
//! the login), then a writ policy for the agents that used the keys and a writ login that
//! works, and only then the `Match User` block that turns the keys and passwords off,
//! tested with `sshd -t` while a session stays open.

use std::fmt::Write;

use writ_formats::cidr::Cidr;
use writ_formats::profile;

use super::Findings;
use super::model::{AuthorizedKey, Verdict};

/// Extensions in the order writ's config lists them, with the authorized_keys options
/// that turn each off (`no-…`) and back on after `restrict`.
const EXTENSIONS: [(&str, &str, &str); 5] = [
    (
        "permit-X11-forwarding",
        "no-x11-forwarding",
        "x11-forwarding",
    ),
    (
        "permit-agent-forwarding",
        "no-agent-forwarding",
        "agent-forwarding",
    ),
    (
        "permit-port-forwarding",
        "no-port-forwarding",
        "port-forwarding",
    ),
    ("permit-pty", "no-pty", "pty"),
    ("permit-user-rc", "no-user-rc", "user-rc"),
];

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The login is not an account of `/etc/passwd`.
    #[error("no account {login:?} in /etc/passwd")]
    UnknownLogin {
        /// The login asked for.
        login: String,
    },
}

/// The plan for `login`.
pub fn plan(findings: &Findings, login: &str) -> Result<String, PlanError> {
    let inventory = &findings.inventory;
    let Some(index) = inventory.accounts.iter().position(|a| a.login == login) else {
        return Err(PlanError::UnknownLogin {
            login: login.to_owned(),
        });
    };
    let account = &inventory.accounts[index];
    let detail = &findings.details[index];
    let host = &inventory.host;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Plan: make {login} on {host} writ-only (now: {}). Nothing has been changed; run \
         these steps yourself.",
        account.verdict.as_str()
    );
    if account.verdict == Verdict::WritOnly {
        let _ = writeln!(
            out,
            "\n{login} is already writ-only: only writ certificates can log in as it."
        );
        return Ok(out);
    }
    if !profile::is_valid_login(login) {
        let _ = writeln!(
            out,
            "\nNote: writ logins must match ^[a-z_][a-z0-9_-]{{0,31}}$; {login:?} does not, \
             so writ certificates cannot be issued for it. Rename the account first."
        );
    }

    // 1. Enforcement.
    let _ = writeln!(out, "\n1. Writ enforcement");
    let mut blockers = detail.problems.clone();
    if let Some(command) = &detail.foreign_keys_command {
        blockers.push(format!(
            "AuthorizedKeysCommand {command} may give {login} keys this inventory cannot \
             see: find out what it returns, and turn it off for {login} in step 4"
        ));
    }
    if detail.problems.is_empty() {
        let _ = writeln!(
            out,
            "   Configured for {login}: TrustedUserCAKeys {} and AuthorizedPrincipalsCommand \
             runs writ-principals check.",
            detail
                .settings
                .trusted_user_ca_keys
                .as_deref()
                .unwrap_or("?")
        );
        for blocker in &blockers {
            let _ = writeln!(out, "   - {blocker}");
        }
    } else {
        let _ = writeln!(
            out,
            "   First fix these. Until they are fixed, do NOT remove keys or turn passwords \
             off: writ certificates cannot log in yet, and you would lock everyone (you \
             included) out of {login}."
        );
        for blocker in &blockers {
            let _ = writeln!(out, "   - first fix: {blocker}");
        }
        let _ = writeln!(
            out,
            "   (`writ-principals --help` shows the sshd_config lines; `/usr/share/writ-principals/\
             install.sh` sets them up.)"
        );
    }

    // 2. Policy.
    let keys = &account.authorized_keys;
    let _ = writeln!(
        out,
        "\n2. A writ policy for the agents that log in as {login} (writ.toml on the CA; fill \
         in issuer and subject)"
    );
    out.push_str(&policy_snippet(login, host, keys));
    let _ = writeln!(
        out,
        "   Check it with `writ admin policy explain --token @TOKEN --logins {login} --hosts \
         {host}`, then have each agent log in once with `writ ssh --login {login} --host \
         {host} -- true` while its old key still works."
    );

    // 3. The keys that go.
    let _ = writeln!(out, "\n3. What goes");
    if keys.is_empty() {
        let _ = writeln!(out, "   No static keys.");
    } else {
        let _ = writeln!(
            out,
            "   authorized_keys entries that stop working ({}; step 4 makes sshd read no \
             authorized_keys file for {login}); tell their owners first:",
            keys.len()
        );
        for key in keys {
            let _ = writeln!(
                out,
                "   - {} {:?} {}:{}{}",
                key.fingerprint,
                key.comment,
                esc(&key.file),
                key.line,
                if key.cert_authority {
                    " (cert-authority: trusts another CA's certificates)"
                } else {
                    ""
                }
            );
        }
    }
    for bad in &account.bad_lines {
        let _ = writeln!(
            out,
            "   - {}:{} is a line sshd cannot use ({})",
            esc(&bad.file),
            bad.line,
            esc(&bad.error)
        );
    }
    let passwords = account.password_login != Some(false);
    if passwords {
        let _ = writeln!(
            out,
            "   - password login ({}): turned off for {login} in step 4",
            if account.password_login.is_none() {
                "/etc/shadow could not be read, so taken as possible"
            } else {
                "possible now"
            }
        );
    }

    // 4. sshd.
    let dropin_dir = findings
        .includes
        .iter()
        .find(|pattern| pattern.contains("sshd_config.d/"))
        .and_then(|pattern| pattern.rsplit_once('/').map(|(dir, _)| dir.to_owned()));
    let _ = writeln!(
        out,
        "\n4. sshd{}",
        if detail.problems.is_empty() {
            String::new()
        } else {
            " (only after step 1 is fixed and a writ login works)".to_owned()
        }
    );
    match &dropin_dir {
        Some(dir) => {
            let _ = writeln!(
                out,
                "   Write {dir}/05-writ-{login}.conf (sshd uses the first value it reads, so \
                 a low number comes before other drop-ins):"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "   Append to the end of {} (after every global setting):",
                findings.sshd_config.display()
            );
        }
    }
    let _ = writeln!(out, "     Match User {login}");
    let _ = writeln!(out, "         AuthorizedKeysFile none");
    if detail.foreign_keys_command.is_some() {
        let _ = writeln!(out, "         AuthorizedKeysCommand none");
    }
    if passwords || detail.settings.password_authentication {
        let _ = writeln!(out, "         PasswordAuthentication no");
    }
    if passwords || detail.settings.kbd_interactive_authentication {
        let _ = writeln!(out, "         KbdInteractiveAuthentication no");
    }
    for block in &inventory.sshd.match_blocks_not_evaluated {
        let _ = writeln!(
            out,
            "   Check by hand: {}:{} `Match {}` depends on the connection and may set \
             these differently for some clients.",
            esc(&block.file),
            block.line,
            esc(&block.criteria)
        );
    }
    let config_flag = if findings.sshd_config == std::path::Path::new(super::DEFAULT_SSHD_CONFIG) {
        String::new()
    } else {
        format!(" -f {}", findings.sshd_config.display())
    };

    // 5. Applying it safely.
    let _ = writeln!(
        out,
        "\n5. Apply it without locking yourself out\n   \
         - keep a root session on {host} open until the last check below passes\n   \
         - sshd -t{config_flag}   # the configuration parses\n   \
         - sshd -T{config_flag} -C user={login},host=localhost,addr=127.0.0.1 | grep -Ei \
           '^(authorizedkeysfile|passwordauthentication|kbdinteractiveauthentication) '\n   \
         - systemctl reload ssh   # or: kill -HUP \"$(cat /run/sshd.pid)\"\n   \
         - from another terminal: `writ ssh --login {login} --host {host} -- true` works, \
           and an old key is refused\n   \
         - writ-principals inventory --plan {login}   # now says writ-only"
    );
    if detail.unseen_files {
        let _ = writeln!(
            out,
            "\nNote: an authorized_keys file of {login} could not be read completely (see \
             `writ-principals inventory`); AuthorizedKeysFile none covers it too."
        );
    }
    Ok(out)
}

/// The `[[policy]]` table for `login` on `host`, with what the keys' options imply.
fn policy_snippet(login: &str, host: &str, keys: &[AuthorizedKey]) -> String {
    let host_pattern = if host != "unknown" && profile::is_valid_host_pattern(host) {
        host.to_owned()
    } else {
        "CHANGE-ME.example.com".to_owned()
    };
    let mut lines = vec![
        "[[policy]]".to_owned(),
        format!(
            "name = {}",
            toml_string(&format!("{login}-on-{host_pattern}"))
        ),
        "issuer = \"CHANGE-ME\"                    # the [[issuer]] that vouches for these agents"
            .to_owned(),
        "subject = \"CHANGE-ME\"                   # the agents' token subject (`*` is a wildcard)"
            .to_owned(),
        "role = \"agent\"".to_owned(),
        format!("logins = [{}]", toml_string(login)),
        format!("hosts = [{}]", toml_string(&host_pattern)),
        "max_cert_ttl = \"5m\"".to_owned(),
    ];
    let extensions = extensions(keys);
    lines.push(format!(
        "extensions = [{}]",
        extensions
            .iter()
            .map(|e| toml_string(e))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let commands: Vec<String> = keys
        .iter()
        .filter_map(|k| option_value(k, "command"))
        .collect();
    if !keys.is_empty()
        && commands.len() == keys.len()
        && commands.iter().all(|c| *c == commands[0])
    {
        lines.push(format!(
            "force_command = {}     # every key had this command=",
            toml_string(&commands[0])
        ));
    } else if !commands.is_empty() {
        lines.push(
            "# force_command = \"…\"   # some keys had a command= option: one policy per command"
                .to_owned(),
        );
    }
    let froms: Vec<String> = keys
        .iter()
        .filter_map(|k| option_value(k, "from"))
        .collect();
    let mut blocks: Vec<String> = Vec::new();
    let all_cidrs = froms.iter().all(|from| {
        from.split(',').all(|item| {
            let ok = Cidr::parse(item).is_some();
            if ok && !blocks.iter().any(|b| b == item) {
                blocks.push(item.to_owned());
            }
            ok
        })
    });
    if !keys.is_empty() && froms.len() == keys.len() && all_cidrs {
        lines.push(format!(
            "source_address = [{}]     # from the keys' from= options",
            blocks
                .iter()
                .map(|b| toml_string(b))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    } else if !froms.is_empty() {
        lines.push(
            "# source_address = [\"10.0.0.0/8\"]   # some keys had from= patterns that are not \
             all CIDR blocks"
                .to_owned(),
        );
    }
    let mut out = String::new();
    for line in lines {
        let _ = writeln!(out, "     {line}");
    }
    out
}

/// The extensions the keys allowed (union over keys; `permit-pty` when there are none).
fn extensions(keys: &[AuthorizedKey]) -> Vec<&'static str> {
    if keys.is_empty() {
        return vec!["permit-pty"];
    }
    EXTENSIONS
        .iter()
        .filter(|(_, off, on)| {
            keys.iter().any(|key| {
                let has = |name: &str| key.options.iter().any(|o| o.eq_ignore_ascii_case(name));
                let restricted = has("restrict");
                !has(off) && (!restricted || has(on))
            })
        })
        .map(|(extension, _, _)| *extension)
        .collect()
}

/// The unescaped value of option `name="…"` of `key`.
fn option_value(key: &AuthorizedKey, name: &str) -> Option<String> {
    key.options.iter().find_map(|option| {
        let (option_name, value) = option.split_once('=')?;
        if !option_name.eq_ignore_ascii_case(name) {
            return None;
        }
        let value = value.strip_prefix('"')?.strip_suffix('"')?;
        Some(value.replace("\\\"", "\""))
    })
}

fn esc(text: &str) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writ_formats::text::write_escaped(&mut out, text);
    out
}

/// A TOML basic string (JSON's string escapes are valid TOML).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(options: &[&str]) -> AuthorizedKey {
        AuthorizedKey {
            file: "/home/deploy/.ssh/authorized_keys".to_owned(),
            line: 1,
            key_type: "ssh-ed25519".to_owned(),
            bits: 256,
            fingerprint: "SHA256:x".to_owned(),
            comment: "ci".to_owned(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
            cert_authority: false,
            file_owner: "deploy".to_owned(),
            file_mode: "0600".to_owned(),
            file_mtime: 0,
        }
    }

    #[test]
    fn extensions_follow_the_keys_options() {
        assert_eq!(extensions(&[]), ["permit-pty"]);
        assert_eq!(extensions(&[key(&["restrict"])]), Vec::<&str>::new());
        assert_eq!(extensions(&[key(&["restrict", "pty"])]), ["permit-pty"]);
        assert_eq!(
            extensions(&[key(&["no-pty", "no-port-forwarding"])]),
            [
                "permit-X11-forwarding",
                "permit-agent-forwarding",
                "permit-user-rc"
            ]
        );
    }

    #[test]
    fn snippet_carries_command_and_source_address() {
        let keys = [
            key(&[
                "from=\"10.0.0.0/8,192.168.1.5\"",
                "command=\"/usr/bin/deploy \\\"x\\\"\"",
                "restrict",
            ]),
            key(&[
                "from=\"10.0.0.0/8\"",
                "command=\"/usr/bin/deploy \\\"x\\\"\"",
                "restrict",
            ]),
        ];
        let snippet = policy_snippet("deploy", "web-01.prod.example.com", &keys);
        let toml_text: String = snippet.lines().map(|l| format!("{}\n", l.trim())).collect();
        let value: toml::Value = toml::from_str(&toml_text).expect("valid TOML");
        let policy = &value["policy"][0];
        assert_eq!(policy["logins"][0].as_str(), Some("deploy"));
        assert_eq!(policy["hosts"][0].as_str(), Some("web-01.prod.example.com"));
        assert_eq!(
            policy["force_command"].as_str(),
            Some("/usr/bin/deploy \"x\"")
        );
        assert_eq!(policy["source_address"].as_array().map(Vec::len), Some(2));
        let wildcard = [key(&["from=\"*.example.com\""])];
        let snippet = policy_snippet("deploy", "web-01", &wildcard);
        assert!(snippet.contains("# source_address"), "{snippet}");
    }
}
