//! TURN REST credentials (the `[turn]` config section).
//!
//! The server shares a secret with a TURN server (coturn's `use-auth-secret` /
//! `static-auth-secret`) and mints a short-lived credential per connection into
//! `welcome.metadata.iceServers` (spec §1.6.1):
//!
//! * `username` = `<expiry, Unix seconds>:<peer id>`;
//! * `credential` = base64(HMAC-SHA1(secret, username)).
//!
//! The TURN server recomputes the HMAC and refuses a username whose timestamp has passed, so
//! nothing is stored and nothing needs revoking. The credential is private to the connecting
//! client: `welcome.metadata` is never shown to other peers.
//!
//! Which connections get one: keys and token secrets have `turn = true` by default (`false`
//! opts out). A welcome metadata bag that already carries `iceServers` (a key's configured bag,
//! or a token's `metadata` claim) is left as it is: the issuer chose its own servers.
//!
//! ```
//! use parlor_server::turn::{TurnConfig, TurnMinter};
//! let config = TurnConfig {
//!     urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
//!     secret: "a-shared-secret-of-16+".into(),
//!     ttl_secs: 3600,
//! };
//! let minter = TurnMinter::new(&config);
//! let bag = minter.welcome_metadata(None, "p_abc", 1_700_000_000);
//! let bag: serde_json::Value = serde_json::from_str(bag.get()).unwrap();
//! let entry = &bag["iceServers"][0];
//! assert_eq!(entry["urls"][0], "turn:127.0.0.1:3478?transport=udp");
//! assert_eq!(entry["username"], "1700003600:p_abc");
//! assert_eq!(entry["credential"].as_str().map(str::len), Some(28));
//! ```

use base64::Engine;
use ring::hmac;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most URLs in `[turn] urls` (the clients take at most 16 ICE server entries in all).
pub const MAX_URLS: usize = 8;
/// Longest URL the clients accept.
pub const MAX_URL_LEN: usize = 512;
/// Shortest shared secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// Credential lifetime bounds (seconds).
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=7 * 24 * 3600;

/// `[turn]`: the TURN servers handed to clients, and the secret shared with them.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// `turn:`/`turns:`/`stun:`/`stuns:` URLs, all sharing the secret, e.g.
    /// `turn:turn.example.com:3478?transport=udp`.
    pub urls: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub secret: String,
    /// How long a minted credential stays valid. The TURN server refuses allocations and
    /// refreshes after it, so it bounds how long one relayed call can last without a
    /// reconnect (each welcome brings a fresh one). Default 86400 (one day).
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

fn default_ttl() -> u64 {
    24 * 3600
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl TurnConfig {
    /// Check the URLs, the secret's length and the lifetime.
    pub fn validate(&self) -> Result<(), String> {
        if self.urls.is_empty() || self.urls.len() > MAX_URLS {
            return Err(format!("turn.urls must hold 1..={MAX_URLS} URLs"));
        }
        for u in &self.urls {
            let lower = u.to_ascii_lowercase();
            let scheme_ok = ["turn:", "turns:", "stun:", "stuns:"]
                .iter()
                .any(|s| lower.starts_with(s));
            let host = lower.split_once(':').map_or("", |(_, rest)| rest);
            if !scheme_ok || host.is_empty() || u.len() > MAX_URL_LEN || u.contains('"') {
                return Err(format!(
                    "turn.urls: {u:?} is not a turn:/turns:/stun:/stuns: URL of at most \
                     {MAX_URL_LEN} bytes"
                ));
            }
        }
        if self.secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "turn.secret must be at least {MIN_SECRET_LEN} bytes"
            ));
        }
        if !TTL_RANGE.contains(&self.ttl_secs) {
            return Err(format!(
                "turn.ttl_secs must be in {}..={}",
                TTL_RANGE.start(),
                TTL_RANGE.end()
            ));
        }
        Ok(())
    }
}

/// Mints TURN REST credentials (pure: the time is passed in).
pub struct TurnMinter {
    urls: Vec<String>,
    key: hmac::Key,
    ttl_secs: u64,
}

impl std::fmt::Debug for TurnMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnMinter")
            .field("urls", &self.urls)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// One minted credential.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredential {
    /// `<expiry>:<peer id>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub credential: String,
    /// Unix seconds after which the TURN server refuses it.
    pub expires_at: u64,
}

impl std::fmt::Debug for TurnCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCredential")
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl TurnMinter {
    /// A minter for a validated configuration.
    pub fn new(config: &TurnConfig) -> TurnMinter {
        TurnMinter {
            urls: config.urls.clone(),
            key: hmac::Key::new(
                hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                config.secret.as_bytes(),
            ),
            ttl_secs: config.ttl_secs,
        }
    }

    /// The credential for `user` at `now` (Unix seconds).
    pub fn mint(&self, user: &str, now: u64) -> TurnCredential {
        let expires_at = now.saturating_add(self.ttl_secs);
        let username = format!("{expires_at}:{user}");
        let tag = hmac::sign(&self.key, username.as_bytes());
        TurnCredential {
            credential: base64::engine::general_purpose::STANDARD.encode(tag.as_ref()),
            username,
            expires_at,
        }
    }

    /// The `welcome.metadata` for a connection: `existing` (an object or nothing) with an
    /// `iceServers` list minted for `peer_id` added, unless it already has one.
    pub fn welcome_metadata(
        &self,
        existing: Option<&RawValue>,
        peer_id: &str,
        now: u64,
    ) -> Box<RawValue> {
        let mut bag = match existing.map(|m| serde_json::from_str::<serde_json::Value>(m.get())) {
            Some(Ok(serde_json::Value::Object(map))) => map,
            _ => serde_json::Map::new(),
        };
        if !bag.contains_key("iceServers") {
            let c = self.mint(peer_id, now);
            bag.insert(
                "iceServers".into(),
                serde_json::json!([{
                    "urls": self.urls,
                    "username": c.username,
                    "credential": c.credential,
                }]),
            );
        }
        // Serialising a map of JSON values cannot fail; fall back to the bare list shape.
        serde_json::value::to_raw_value(&bag).unwrap_or_else(|_| {
            RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TurnConfig {
        TurnConfig {
            urls: vec![
                "turn:127.0.0.1:3478?transport=udp".into(),
                "turns:turn.example:443?transport=tcp".into(),
            ],
            secret: "0123456789abcdef-secret".into(),
            ttl_secs: 600,
        }
    }

    #[test]
    fn credential_is_coturn_rest_hmac() {
        // Reference value: printf '1700000600:p_x' | openssl dgst -sha1 -hmac
        // '0123456789abcdef-secret' -binary | base64
        let m = TurnMinter::new(&config());
        let c = m.mint("p_x", 1_700_000_000);
        assert_eq!(c.username, "1700000600:p_x");
        assert_eq!(c.expires_at, 1_700_000_600);
        assert_eq!(c.credential, "nhUsHpBWG3blt3jW9PSyHQTYfS4=");
        assert_eq!(c.credential.len(), 28);
        assert!(!format!("{c:?}").contains(&c.credential));
    }

    #[test]
    fn metadata_is_merged_and_never_overrides() {
        let m = TurnMinter::new(&config());
        let fresh: serde_json::Value =
            serde_json::from_str(m.welcome_metadata(None, "p_a", 100).get()).expect("json");
        assert_eq!(
            fresh["iceServers"][0]["urls"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(fresh["iceServers"][0]["username"], "700:p_a");

        let other = RawValue::from_string(r#"{"room":"x"}"#.into()).expect("json");
        let merged: serde_json::Value =
            serde_json::from_str(m.welcome_metadata(Some(&other), "p_a", 100).get()).expect("json");
        assert_eq!(merged["room"], "x");
        assert!(merged["iceServers"].is_array());

        let own = RawValue::from_string(r#"{"iceServers":[]}"#.into()).expect("json");
        assert_eq!(
            m.welcome_metadata(Some(&own), "p_a", 100).get(),
            r#"{"iceServers":[]}"#
        );
    }

    #[test]
    fn validation_bounds() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.urls.clear();
        assert!(c.validate().is_err());
        let mut c = config();
        c.urls = vec!["http://x".into()];
        assert!(c.validate().is_err());
        let mut c = config();
        c.urls = vec!["turn:".into()];
        assert!(c.validate().is_err());
        let mut c = config();
        c.secret = "short".into();
        let e = c.validate().expect_err("short secret");
        assert!(!e.contains("short"));
        let mut c = config();
        c.ttl_secs = 10;
        assert!(c.validate().is_err());
        assert!(!format!("{:?}", config()).contains("secret\""));
        assert!(!format!("{:?}", config()).contains("0123456789abcdef"));
    }
}
