//! Characters that must never reach a person or a log reader unescaped: controls (C0, DEL,
//! C1), line and paragraph separators, and the bidirectional formatting characters that
//! reorder what a terminal shows ("Trojan Source"). Pure; used to refuse such characters
//! in free text the CA stores (a task's `purpose`) and to escape them in the CA's log.
//! Also [`redact_url`]: a URL as it may be shown, without its password; and [`rfc3339`]:
//! a Unix time as people read it in messages.

/// Whether `c` may change how surrounding text is displayed or split into lines.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
                | '\u{061c}' | '\u{200e}' | '\u{200f}' // bidi marks
                | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
                | '\u{2066}'..='\u{2069}' // bidi isolates
                | '\u{feff}' // zero-width no-break space (byte-order mark)
        )
}

/// Write `text` with every [`is_unsafe_char`] replaced by its `\u{…}` escape.
pub fn write_escaped(out: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if is_unsafe_char(c) {
            out.write_str(&text[start..at])?;
            write!(out, "\\u{{{:x}}}", u32::from(c))?;
            start = at + c.len_utf8();
        }
    }
    out.write_str(&text[start..])
}

/// `url` with the password of its `user:password@` part, and the value of any
/// `password=` query parameter, replaced by `***`. Everything writ prints about a URL
/// (errors, logs, `Debug`) goes through this.
pub fn redact_url(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match before_query.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    let hidden = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{host}{path}")
                }
                None => before_query.to_owned(),
            }
        }
        None => before_query.to_owned(),
    };
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&parameters.join("&"));
    }
    out
}

/// `unix` seconds as RFC 3339 in UTC (`2026-12-02T14:00:00Z`), for messages; a time out of
/// range is shown as the number itself.
pub fn rfc3339(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        write_escaped(&mut out, text).expect("write to a String");
        out
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        for (url, shown) in [
            (
                "postgres://writ:s3cr3t@db:5432/writ",
                "postgres://writ:***@db:5432/writ",
            ),
            (
                "postgres://writ:p@ss@db/writ",
                "postgres://writ:***@db/writ",
            ),
            ("postgres://writ@db/writ", "postgres://writ@db/writ"),
            (
                "postgres://db/writ?user=w&password=x&sslmode=require",
                "postgres://db/writ?user=w&password=***&sslmode=require",
            ),
            ("sqlite://writ-data/writ.db", "sqlite://writ-data/writ.db"),
            ("https://ca.example.com:8422", "https://ca.example.com:8422"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("s3cr3t"));
        }
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            escaped("rotate nginx logs — héllo"),
            "rotate nginx logs — héllo"
        );
        assert!(!"rotate nginx logs".chars().any(is_unsafe_char));
    }

    #[test]
    fn controls_separators_and_bidi_are_escaped() {
        assert_eq!(escaped("a\nb"), "a\\u{a}b");
        assert_eq!(escaped("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escaped("x\u{2028}y\u{2029}z"), "x\\u{2028}y\\u{2029}z");
        assert_eq!(escaped("\u{202e}evil"), "\\u{202e}evil");
        assert_eq!(escaped("\u{2066}\u{85}"), "\\u{2066}\\u{85}");
        for c in ['\u{0}', '\u{7f}', '\u{9b}', '\u{200f}', '\u{feff}'] {
            assert!(is_unsafe_char(c), "{c:?}");
        }
    }
}
