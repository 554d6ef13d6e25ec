//! Field rules shared by server and client (spec §1.10).

/// Longest channel name, in Unicode scalar values.
pub const MAX_CHANNEL_LEN: usize = 256;
/// Longest peer id (`to`), in Unicode scalar values.
pub const MAX_PEER_ID_LEN: usize = 128;
/// Longest `requestId`, in Unicode scalar values.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// U+0000–U+001F, U+007F and U+0080–U+009F.
pub fn is_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// Non-empty, at most `max` scalar values, no control characters.
fn is_valid_name(s: &str, max: usize) -> bool {
    let mut n = 0usize;
    for c in s.chars() {
        n += 1;
        if n > max || is_control(c) {
            return false;
        }
    }
    n > 0
}

/// Whether `s` is a valid channel name (reserved prefixes are checked separately).
pub fn is_valid_channel(s: &str) -> bool {
    is_valid_name(s, MAX_CHANNEL_LEN)
}

/// Whether `s` is a valid peer id for `send.to`.
pub fn is_valid_peer_id(s: &str) -> bool {
    is_valid_name(s, MAX_PEER_ID_LEN)
}

/// Whether `s` is a valid `requestId`: non-empty, ≤ 128 scalar values (control chars allowed,
/// as the clients do not check them).
pub fn is_valid_request_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= MAX_REQUEST_ID_LEN
}

/// `^_(metered|internal|system)/`, case-insensitive, slash required.
pub fn is_reserved_channel(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('_') else {
        return false;
    };
    ["metered/", "internal/", "system/"].iter().any(|p| {
        rest.len() >= p.len()
            && rest.is_char_boundary(p.len())
            && rest[..p.len()].eq_ignore_ascii_case(p)
    })
}

/// Glob match where `*` matches any run of characters (including none) and every other
/// character matches itself. Used for channel patterns of keys and tokens.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Classic linear-time wildcard matching with a single backtrack point.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<usize> = None;
    let mut mark = 0usize;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rules() {
        assert!(is_valid_channel("room-42"));
        assert!(!is_valid_channel(""));
        assert!(is_valid_channel(&"a".repeat(256)));
        assert!(!is_valid_channel(&"a".repeat(257)));
        // Astral characters count once (scalar values), so a PY name of 256 code points passes.
        assert!(is_valid_channel(&"😀".repeat(256)));
        assert!(!is_valid_channel("a\u{0}b"));
        assert!(!is_valid_channel("a\u{1f}"));
        assert!(!is_valid_channel("a\u{7f}"));
        assert!(!is_valid_channel("a\u{85}"));
        assert!(is_valid_channel("a\u{a0}"));
    }

    #[test]
    fn peer_id_and_request_id_rules() {
        assert!(is_valid_peer_id(&"p".repeat(128)));
        assert!(!is_valid_peer_id(&"p".repeat(129)));
        assert!(!is_valid_peer_id("p\n"));
        assert!(is_valid_request_id("0b6f2a1c-7f0e-4b8e-9a65-0c0b8f7f1a22"));
        assert!(is_valid_request_id("x\n"));
        assert!(!is_valid_request_id(""));
        assert!(!is_valid_request_id(&"r".repeat(129)));
    }

    #[test]
    fn reserved_prefixes() {
        assert!(is_reserved_channel("_metered/x"));
        assert!(is_reserved_channel("_METERED/x"));
        assert!(is_reserved_channel("_Internal/"));
        assert!(is_reserved_channel("_system/a/b"));
        assert!(!is_reserved_channel("_meteredx"));
        assert!(!is_reserved_channel("_metered"));
        assert!(!is_reserved_channel("metered/x"));
        assert!(!is_reserved_channel("_é"));
        assert!(!is_reserved_channel("_syst😀/"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything/at/all"));
        assert!(glob_match("room-*", "room-42"));
        assert!(glob_match("room-*", "room-"));
        assert!(!glob_match("room-*", "lobby"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
        assert!(glob_match("*-end", "x-y-end"));
        assert!(glob_match("**", "x"));
    }
}
