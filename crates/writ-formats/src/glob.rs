//! Glob matching with `*` as the only wildcard, shared by policies (subjects, claims,
//! logins, hosts) and by hosts checking their own name against a task's host patterns.
//!
//! `*` matches any run of characters, dots included (like OpenSSH's `match_pattern`).
//! There is deliberately no `?` or character class: with `*` alone, "policy pattern
//! matches the text of a requested pattern" implies "every name the requested pattern
//! matches, the policy pattern matches too", which is how [`covers`] decides whether a
//! task may ask for a host pattern.

/// True when `text` matches `pattern`, where `*` matches any (possibly empty) run of
/// characters and every other character matches itself.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position of the last `*` seen in the pattern and the text position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// True when every string matched by `requested` is also matched by `granted`.
///
/// Sound because `*` is the only wildcard: if `granted` matches the literal text of
/// `requested`, each `*` of `requested` lies inside a run absorbed by a `*` of
/// `granted`, so any substitution for it is absorbed too.
pub fn covers(granted: &str, requested: &str) -> bool {
    matches(granted, requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_star() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abc", "abd"));
        assert!(!matches("abc", "abcd"));
        assert!(matches("*", ""));
        assert!(matches("*", "anything.at.all"));
        assert!(matches("*.prod.example.com", "web-01.prod.example.com"));
        assert!(!matches("*.prod.example.com", "web-01.dev.example.com"));
        assert!(!matches("*.prod.example.com", "prod.example.com"));
        assert!(matches("web-*-a", "web-1-2-a"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches(
            "system:serviceaccount:ci:*",
            "system:serviceaccount:ci:deployer"
        ));
    }

    #[test]
    fn covers_is_containment() {
        assert!(covers("*.prod.example.com", "web-*.prod.example.com"));
        assert!(covers("*", "*"));
        assert!(!covers("web-*.prod.example.com", "*.prod.example.com"));
        assert!(!covers("*.prod.example.com", "*"));
        assert!(covers("web-01.prod.example.com", "web-01.prod.example.com"));
    }
}
