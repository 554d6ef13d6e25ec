//! Pure client-side rules: reconnect backoff (spec §1.12), URL validation and the connect URL
//! (spec §1.1), credential scrubbing, close-code classes, and `iceServers` extraction
//! (spec §1.6.1). No IO, no clock.

use std::time::Duration;

use parlor_protocol::CloseCode;

/// Reconnect schedule, as in the Python SDK's `ReconnectOptions` (spec §3.7).
///
/// Attempt *n* (1-based) waits `min(initial × multiplier^(n−1), max)`, raised to a one-shot
/// floor when one is set (30 s after close 4010), then ± `jitter_ratio` uniform.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectOptions {
    /// First delay (> 0).
    pub initial_delay: Duration,
    /// Growth factor (≥ 1).
    pub multiplier: f64,
    /// Cap on the delay (≥ `initial_delay`).
    pub max_delay: Duration,
    /// Uniform jitter, as a fraction of the delay, in `[0, 1]`.
    pub jitter_ratio: f64,
    /// Attempts before giving up; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            initial_delay: Duration::from_millis(500),
            multiplier: 2.0,
            max_delay: Duration::from_secs(30),
            jitter_ratio: 0.2,
            max_attempts: Some(100),
        }
    }
}

/// The one-shot delay floor after close 4010 (over the concurrent-connection limit).
pub(crate) const SLOW_BACKOFF_FLOOR: Duration = Duration::from_secs(30);

impl ReconnectOptions {
    /// Options for a long-running daemon: infinite attempts, 60 s cap.
    pub fn daemon() -> Self {
        ReconnectOptions {
            max_delay: Duration::from_secs(60),
            max_attempts: None,
            ..Self::default()
        }
    }

    /// Check the ranges of spec §3.7.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_delay.is_zero() {
            return Err("initial_delay must be > 0".into());
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err("multiplier must be >= 1".into());
        }
        if self.max_delay < self.initial_delay {
            return Err("max_delay must be >= initial_delay".into());
        }
        if !(0.0..=1.0).contains(&self.jitter_ratio) {
            return Err("jitter_ratio must be in [0, 1]".into());
        }
        Ok(())
    }

    /// The delay before attempt `attempt` (1-based). `unit` is a uniform sample in `[0, 1)`
    /// used for jitter, so the function stays pure and testable.
    pub fn delay(&self, attempt: u32, floor: Option<Duration>, unit: f64) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(1024) as i32);
        let base = (self.initial_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
        let base = floor.map_or(base, |f| base.max(f.as_secs_f64()));
        let jitter = (unit.clamp(0.0, 1.0) * 2.0 - 1.0) * self.jitter_ratio;
        Duration::from_secs_f64((base * (1.0 + jitter)).max(0.0))
    }

    /// Whether attempt `attempt` (1-based) is still allowed.
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt <= max)
    }
}

/// Close codes after which the clients stop reconnecting (spec §1.12).
pub(crate) fn is_terminal(code: u16) -> bool {
    CloseCode(code).is_terminal()
}

/// Close codes that floor the next delay at 30 s.
pub(crate) fn backoff_floor(code: Option<u16>) -> Option<Duration> {
    (code == Some(CloseCode::OVER_CONCURRENT_LIMIT.0)).then_some(SLOW_BACKOFF_FLOOR)
}

/// A validated base URL: `wss://host[:port]`, or `ws://` for localhost, 127.0.0.1 and ::1,
/// with no path (other than `/`), query or fragment (spec §1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(String);

/// The production origin of the reference service.
pub const DEFAULT_URL: &str = "wss://rms.metered.ca";

impl BaseUrl {
    /// Validate `url`.
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "url must start with wss:// or ws://".to_owned())?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "wss" && scheme != "ws" {
            return Err("url scheme must be wss (or ws for localhost)".into());
        }
        if rest.contains('?') || rest.contains('#') {
            return Err("url must not have a query or fragment".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !(path.is_empty() || path == "/") {
            return Err("url must be a bare origin (the client adds /v1)".into());
        }
        if authority.is_empty() || authority.contains('@') {
            return Err("url must have a host and no userinfo".into());
        }
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority.split(':').next().unwrap_or("")
        };
        if host.is_empty() {
            return Err("url must have a host".into());
        }
        if scheme == "ws"
            && !matches!(
                host.to_ascii_lowercase().as_str(),
                "localhost" | "127.0.0.1" | "::1"
            )
        {
            return Err(
                "ws:// is only allowed for localhost, 127.0.0.1 and ::1; use wss://".into(),
            );
        }
        Ok(BaseUrl(format!("{scheme}://{authority}")))
    }

    /// The origin, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<origin>/v1?<param>=<percent-encoded credential>` (exactly one query parameter).
    pub fn connect_url(&self, credential: &Credential<'_>) -> String {
        let (name, value) = match credential {
            Credential::Key(k) => ("key", *k),
            Credential::Token(t) => ("token", *t),
        };
        let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        // form encoding writes spaces as '+'; the clients percent-encode them.
        format!("{}/v1?{name}={}", self.0, encoded.replace('+', "%20"))
    }
}

/// The credential of one connect attempt.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A publishable key (`?key=`).
    Key(&'a str),
    /// A JWT (`?token=`).
    Token(&'a str),
}

/// Remove credentials from text bound for logs or errors: `key=`/`token=` query values, and
/// `ice-pwd`, `ice-ufrag` and `credential` values in SDP or JSON.
pub fn scrub(text: &str) -> String {
    let mut out = text.to_owned();
    for marker in ["key=", "token=", "a=ice-pwd:", "a=ice-ufrag:"] {
        out = mask_after(&out, marker, |c| {
            c == '&' || c == '"' || c.is_whitespace() || c == '\\' || c == '\''
        });
    }
    mask_after(&out, "\"credential\":\"", |c| c == '"')
}

fn mask_after(text: &str, marker: &str, end: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        let start = i + marker.len();
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let stop = tail.find(&end).unwrap_or(tail.len());
        if stop > 0 {
            out.push_str("***");
        }
        rest = &tail[stop..];
    }
    out.push_str(rest);
    out
}

/// One ICE server from `welcome.metadata.iceServers` (its `Debug` hides the credential).
#[derive(Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:`/`stuns:`/`turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username.
    pub username: Option<String>,
    /// TURN credential.
    pub credential: Option<String>,
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Extract `iceServers` from welcome metadata with the clients' rules (spec §1.6.1): at most 16
/// entries; `urls` a string or a non-empty array of strings, each 1–512 chars with a
/// stun/stuns/turn/turns scheme; string `username`/`credential` ≤ 1024 chars (non-strings are
/// dropped). Any violation voids the whole list (`None`: keep the previous list); an explicit
/// `[]` is `Some(vec![])`.
pub fn extract_ice_servers(
    metadata: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Option<Vec<IceServer>> {
    let list = metadata?.get("iceServers")?.as_array()?;
    if list.len() > 16 {
        return None;
    }
    let url_ok = |u: &str| {
        let lower = u.to_ascii_lowercase();
        (1..=512).contains(&u.chars().count())
            && ["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|s| lower.starts_with(s))
    };
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let obj = entry.as_object()?;
        let urls: Vec<String> = match obj.get("urls")? {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|u| u.as_str().map(str::to_owned))
                .collect::<Option<_>>()?,
            _ => return None,
        };
        if !urls.iter().all(|u| url_ok(u)) {
            return None;
        }
        let field = |name: &str| -> Result<Option<String>, ()> {
            match obj.get(name) {
                Some(serde_json::Value::String(s)) if s.chars().count() > 1024 => Err(()),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                _ => Ok(None),
            }
        };
        out.push(IceServer {
            urls,
            username: field("username").ok()?,
            credential: field("credential").ok()?,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_ladder_matches_the_sdks() {
        let o = ReconnectOptions::default();
        let mid = 0.5; // no jitter
        let secs: Vec<f64> = (1..=8)
            .map(|n| o.delay(n, None, mid).as_secs_f64())
            .collect();
        assert_eq!(secs, vec![0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
        // 4010 floors at 30 s, then jitter ±20 % → 24..36 s.
        assert_eq!(
            o.delay(1, backoff_floor(Some(4010)), mid),
            Duration::from_secs(30)
        );
        assert_eq!(
            o.delay(1, backoff_floor(Some(4010)), 0.0),
            Duration::from_secs(24)
        );
        assert_eq!(
            o.delay(1, backoff_floor(Some(4010)), 1.0),
            Duration::from_secs(36)
        );
        assert_eq!(backoff_floor(Some(4011)), None);
        assert!(o.allows(100) && !o.allows(101));
        assert!(ReconnectOptions::daemon().allows(u32::MAX));
        assert_eq!(
            ReconnectOptions::daemon().delay(30, None, 0.5),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn reconnect_options_validation() {
        assert!(ReconnectOptions::default().validate().is_ok());
        let bad = [
            ReconnectOptions {
                initial_delay: Duration::ZERO,
                ..Default::default()
            },
            ReconnectOptions {
                multiplier: 0.5,
                ..Default::default()
            },
            ReconnectOptions {
                max_delay: Duration::from_millis(100),
                ..Default::default()
            },
            ReconnectOptions {
                jitter_ratio: 1.5,
                ..Default::default()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }

    #[test]
    fn terminal_codes() {
        for c in [4001, 4003, 4012, 4020] {
            assert!(is_terminal(c));
        }
        for c in [
            1000, 1001, 1006, 1008, 1009, 1011, 4000, 4002, 4010, 4011, 4999,
        ] {
            assert!(!is_terminal(c));
        }
    }

    #[test]
    fn base_url_rules() {
        let ok = [
            ("wss://rms.metered.ca", "wss://rms.metered.ca"),
            ("wss://rms.metered.ca/", "wss://rms.metered.ca"),
            ("ws://127.0.0.1:7800", "ws://127.0.0.1:7800"),
            ("ws://localhost:1", "ws://localhost:1"),
            ("ws://[::1]:9", "ws://[::1]:9"),
            ("WSS://Example.org:443", "wss://Example.org:443"),
        ];
        for (u, want) in ok {
            assert_eq!(BaseUrl::parse(u).map(|b| b.0), Ok(want.to_owned()), "{u}");
        }
        for bad in [
            "https://x.org",
            "ws://example.org",
            "wss://x.org/v1",
            "wss://x.org?a=1",
            "wss://x.org#f",
            "wss://",
            "wss://u:p@x.org",
            "x.org",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connect_url_percent_encodes_one_param() {
        let b = BaseUrl::parse("ws://127.0.0.1:7800").expect("url");
        assert_eq!(
            b.connect_url(&Credential::Key("pk_a b/+=")),
            "ws://127.0.0.1:7800/v1?key=pk_a%20b%2F%2B%3D"
        );
        assert_eq!(
            b.connect_url(&Credential::Token("e.y.J")),
            "ws://127.0.0.1:7800/v1?token=e.y.J"
        );
    }

    #[test]
    fn scrubbing() {
        let s = scrub("GET ws://h/v1?key=pk_live_secret&x=1 token=eyJ.abc.def\"");
        assert!(!s.contains("pk_live_secret") && !s.contains("eyJ"), "{s}");
        assert!(s.contains("key=***") && s.contains("token=***"), "{s}");
        let sdp = "v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:s3cr3tpassword\r\n";
        let s = scrub(sdp);
        assert!(!s.contains("s3cr3t") && !s.contains("abcd"), "{s}");
        let s = scrub(r#"{"urls":"turn:x","username":"u","credential":"hunter2"}"#);
        assert!(!s.contains("hunter2"), "{s}");
        assert_eq!(scrub("nothing here"), "nothing here");
    }

    #[test]
    fn ice_servers() {
        let meta = |v: serde_json::Value| v.as_object().cloned();
        let m = meta(json!({"iceServers":[
            {"urls":"turn:t.example:443?transport=tcp","username":"u","credential":"c"},
            {"urls":["stun:s1","STUNS:s2"],"username":5}
        ]}));
        let list = extract_ice_servers(m.as_ref()).expect("valid");
        let secret = IceServer {
            credential: Some("hunter2-credential".into()),
            ..list[0].clone()
        };
        assert!(
            !format!("{secret:?}").contains("hunter2"),
            "credential in Debug"
        );
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].credential.as_deref(), Some("c"));
        assert_eq!(list[1].urls, vec!["stun:s1", "STUNS:s2"]);
        assert_eq!(list[1].username, None);
        assert_eq!(
            extract_ice_servers(meta(json!({"iceServers":[]})).as_ref()),
            Some(vec![])
        );
        for bad in [
            json!({"iceServers":[{"urls":"http://x"}]}),
            json!({"iceServers":[{"urls":[]}]}),
            json!({"iceServers":[{"urls":[1]}]}),
            json!({"iceServers":[{"nourls":1}]}),
            json!({"iceServers":[{"urls":"stun:x","credential":"c".repeat(1025)}]}),
            json!({"iceServers":vec![json!({"urls":"stun:x"}); 17]}),
            json!({"iceServers":{"urls":"stun:x"}}),
            json!({}),
        ] {
            assert_eq!(
                extract_ice_servers(meta(bad.clone()).as_ref()),
                None,
                "{bad}"
            );
        }
        assert_eq!(extract_ice_servers(None), None);
    }
}
