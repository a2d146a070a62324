//! The text form of an inventory: a table of accounts and their verdicts, then the details
//! a person acts on (static keys, bad lines, private keys, what was not evaluated or not
//! read) and a summary. Pure: a [`Inventory`] in, a `String` out. Every value that came
//! from the host's files is escaped ([`writ_formats::text::write_escaped`]), so a comment
//! or file name cannot move the terminal's cursor or fake lines.

use std::fmt::Write;

use super::model::{Inventory, Verdict};

/// The whole text report.
pub fn text(inventory: &Inventory) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "writ-principals inventory of {} (sshd config {}), taken {}",
        esc(&inventory.host),
        esc(&inventory.sshd.config),
        writ_formats::text::rfc3339(i64::try_from(inventory.generated_at).unwrap_or(i64::MAX))
    );
    if let Some(error) = &inventory.sshd.error {
        let _ = writeln!(
            out,
            "sshd -T failed: {}: the settings below were read from the file, verdicts are \
             conservative",
            esc(error)
        );
    }
    if inventory.writ_enforced {
        let _ = writeln!(out, "writ enforcement: configured");
    } else {
        let _ = writeln!(out, "writ enforcement: NOT fully configured");
        for problem in &inventory.enforcement_problems {
            let _ = writeln!(out, "  - {}", esc(problem));
        }
    }
    if let Some(command) = &inventory.sshd.authorized_keys_command {
        let _ = writeln!(
            out,
            "AuthorizedKeysCommand {}: it may give keys this inventory cannot see",
            esc(command)
        );
    }
    out.push('\n');
    accounts_table(&mut out, inventory);

    let keys: Vec<_> = inventory
        .accounts
        .iter()
        .flat_map(|a| a.authorized_keys.iter().map(move |k| (a, k)))
        .collect();
    if !keys.is_empty() {
        let _ = writeln!(out, "\nStatic keys ({}):", keys.len());
        for (account, key) in keys {
            let mut options = key.options.join(",");
            if options.len() > 120 {
                options = format!("{}…", options.chars().take(120).collect::<String>());
            }
            let _ = writeln!(
                out,
                "  {}  {}:{}  {} {}  {}  \"{}\"{}{}  ({} {} {})",
                esc(&account.login),
                esc(&key.file),
                key.line,
                esc(&key.key_type),
                key.bits,
                key.fingerprint,
                esc(&key.comment),
                if options.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", esc(&options))
                },
                if key.cert_authority {
                    "  cert-authority: trusts another CA"
                } else {
                    ""
                },
                esc(&key.file_owner),
                key.file_mode,
                date(key.file_mtime)
            );
        }
    }
    let bad: Vec<_> = inventory
        .accounts
        .iter()
        .flat_map(|a| a.bad_lines.iter())
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(
            out,
            "\nauthorized_keys lines sshd cannot use ({}):",
            bad.len()
        );
        for line in bad {
            let _ = writeln!(
                out,
                "  {}:{}  {}",
                esc(&line.file),
                line.line,
                esc(&line.error)
            );
        }
    }
    let _ = writeln!(
        out,
        "\nUnencrypted private keys: {} (encrypted, not listed: {})",
        inventory.private_keys.len(),
        inventory.encrypted_private_keys
    );
    for key in &inventory.private_keys {
        let _ = writeln!(
            out,
            "  {}  {} {}  {}  (owner {}, mode {}, modified {})",
            esc(&key.path),
            key.format.as_str(),
            esc(&key.key_type),
            key.fingerprint
                .as_deref()
                .unwrap_or("(fingerprint unknown)"),
            esc(&key.owner),
            key.mode,
            date(key.mtime)
        );
    }
    let blocks = &inventory.sshd.match_blocks_not_evaluated;
    if !blocks.is_empty() {
        let _ = writeln!(
            out,
            "\nMatch blocks not evaluated (they depend on the connection; check them by hand):"
        );
        for block in blocks {
            let _ = writeln!(
                out,
                "  {}:{}  Match {}",
                esc(&block.file),
                block.line,
                esc(&block.criteria)
            );
        }
    }
    if !inventory.skipped.is_empty() {
        let _ = writeln!(out, "\nNot inspected ({}):", inventory.skipped.len());
        for skipped in &inventory.skipped {
            let _ = writeln!(out, "  {}: {}", esc(&skipped.path), esc(&skipped.reason));
        }
    }
    if inventory.limits_hit {
        let _ = writeln!(
            out,
            "\nA limit cut this inventory short (see \"Not inspected\")."
        );
    }
    let summary: Vec<String> = Verdict::ALL
        .iter()
        .map(|v| format!("{} {}", v.as_str(), inventory.summary.count(*v)))
        .collect();
    let _ = writeln!(out, "\nSummary: {}", summary.join(", "));
    out
}

fn accounts_table(out: &mut String, inventory: &Inventory) {
    let header = [
        "LOGIN",
        "UID",
        "VERDICT",
        "PASSWORD",
        "KEYS",
        "OLDEST KEY FILE",
        "SHELL",
    ];
    let rows: Vec<[String; 7]> = inventory
        .accounts
        .iter()
        .map(|a| {
            [
                esc(&a.login),
                a.uid.to_string(),
                a.verdict.as_str().to_owned(),
                match a.password_login {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "unknown",
                }
                .to_owned(),
                a.static_key_count.to_string(),
                a.oldest_key_mtime
                    .map(date)
                    .unwrap_or_else(|| "-".to_owned()),
                esc(&a.shell),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, &header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(out, &cells);
    }
}

/// `2026-01-31` from Unix seconds.
fn date(unix: i64) -> String {
    let full = writ_formats::text::rfc3339(unix);
    full.split('T').next().unwrap_or(&full).to_owned()
}

fn esc(text: &str) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writ_formats::text::write_escaped(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::model::*;

    #[test]
    fn control_characters_are_escaped() {
        let inventory = Inventory {
            version: VERSION,
            host: "web-01".to_owned(),
            generated_at: 0,
            sshd: Sshd {
                config: "/etc/ssh/sshd_config".to_owned(),
                error: None,
                authorized_keys_files: vec![],
                authorized_keys_command: None,
                authorized_principals_file: None,
                authorized_principals_command: None,
                trusted_user_ca_keys: None,
                password_authentication: false,
                kbd_interactive_authentication: false,
                permit_root_login: "no".to_owned(),
                pubkey_authentication: true,
                match_blocks_not_evaluated: vec![],
            },
            writ_enforced: true,
            enforcement_problems: vec![],
            accounts: vec![Account {
                login: "alice".to_owned(),
                uid: 1000,
                home: "/home/alice".to_owned(),
                shell: "/bin/bash".to_owned(),
                verdict: Verdict::StaticKeys,
                password_login: Some(false),
                static_key_count: 1,
                oldest_key_mtime: Some(86_400),
                authorized_keys: vec![AuthorizedKey {
                    file: "/home/alice/.ssh/authorized_keys".to_owned(),
                    line: 1,
                    key_type: "ssh-ed25519".to_owned(),
                    bits: 256,
                    fingerprint: "SHA256:x".to_owned(),
                    comment: "evil\u{1b}[2J\nfake line".to_owned(),
                    options: vec![],
                    cert_authority: false,
                    file_owner: "alice".to_owned(),
                    file_mode: "0600".to_owned(),
                    file_mtime: 86_400,
                }],
                bad_lines: vec![],
            }],
            private_keys: vec![],
            encrypted_private_keys: 0,
            skipped: vec![],
            limits_hit: false,
            summary: Summary {
                static_keys: 1,
                ..Summary::default()
            },
        };
        let text = text(&inventory);
        assert!(!text.contains('\u{1b}'));
        assert!(text.contains("evil\\u{1b}[2J\\u{a}fake line"), "{text}");
        assert!(text.contains("alice  1000  static-keys  no"), "{text}");
        assert!(text.contains("1970-01-02"), "{text}");
        assert!(
            text.contains("Summary: writ-only 0, static-keys 1"),
            "{text}"
        );
    }
}
