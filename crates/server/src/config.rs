//! Server configuration: a TOML file, the `--dev-key` shortcut, and defaults (spec §1.16).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use parlor_protocol::event::{DEFAULT_MAX_MESSAGE_SIZE, MAX_OUTBOUND_FRAME};

/// A configuration error, reported at startup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse, or a field is unknown or of the wrong type. The message names
    /// the file, line, column and key, never the value (it may be a secret).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// An action a credential may be allowed (spec §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Subscribe to channels.
    Subscribe,
    /// Publish to channels.
    Publish,
    /// Receive presence (roster snapshots and deltas).
    Presence,
    /// Send direct messages (needed for WebRTC signalling).
    Send,
}

impl Action {
    /// All four actions.
    pub const ALL: [Action; 4] = [
        Action::Subscribe,
        Action::Publish,
        Action::Presence,
        Action::Send,
    ];

    /// Parse the wire/JWT spelling.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "subscribe" => Some(Action::Subscribe),
            "publish" => Some(Action::Publish),
            "presence" => Some(Action::Presence),
            "send" => Some(Action::Send),
            _ => None,
        }
    }
}

/// Bounds applied to every connection. Defaults follow spec §1.16.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Cap on a serialized `data` value (advertised in `welcome`); larger → close 1009.
    pub max_message_size: usize,
    /// Subscriptions per connection (`channel_limit_exceeded`).
    pub max_subscriptions_per_connection: usize,
    /// Members per channel (`channel_limit_exceeded`); snapshots are also bounded to 1 MiB.
    pub max_channel_members: usize,
    /// Per-connection token bucket: sustained messages per second (close 4011 when empty).
    pub rate_per_sec: f64,
    /// Per-connection token bucket: burst size.
    pub rate_burst: f64,
    /// WebSocket protocol ping interval; a connection silent for two intervals is dropped.
    pub ping_interval_secs: u64,
    /// Bytes of frames queued to one connection before it is dropped as a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Largest serialized `peerMetadata` a token may carry.
    pub max_peer_metadata_bytes: usize,
    /// How long a graceful shutdown waits for connections to close.
    pub shutdown_grace_secs: u64,
    /// A `wss://` client's TLS handshake: TCP accepted → handshake complete.
    pub tls_handshake_timeout_ms: u64,
    /// A request's headers: from the TCP accept (or the TLS handshake) for the first request,
    /// from its first byte for a later one on a kept-alive connection, until they are complete.
    pub header_timeout_ms: u64,
    /// An HTTP keep-alive connection idle between two requests.
    pub http_idle_timeout_ms: u64,
    /// An upgraded WebSocket: the upgrade → the client's first frame. The server pings at
    /// once, so any WebSocket client answers within a round trip.
    pub first_frame_timeout_ms: u64,
    /// Connections accepted that have not yet upgraded to a WebSocket, in total; beyond it a
    /// new TCP connection is closed at once. 0 (the default) means half the process's
    /// open-file limit, at most 4096.
    pub max_pending_connections: usize,
    /// Connections not yet upgraded, per client address (the TCP peer; an IPv6 /64). 0 (the
    /// default) means an eighth of the total cap, within 4..=128, so one address can never
    /// fill it.
    pub max_pending_per_address: usize,
    /// Pings (the protocol's `ping` frames and WebSocket pings) have a bucket of their own,
    /// apart from messages (spec §1.13: pings never count against the message rate):
    /// sustained pings per second (close 4011 when empty).
    pub ping_rate_per_sec: f64,
    /// The ping bucket's burst.
    pub ping_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_subscriptions_per_connection: 100,
            max_channel_members: 4096,
            rate_per_sec: 50.0,
            rate_burst: 300.0,
            ping_interval_secs: 30,
            outbound_queue_bytes: 4 << 20,
            max_peer_metadata_bytes: 2048,
            shutdown_grace_secs: 5,
            tls_handshake_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            http_idle_timeout_ms: 30_000,
            first_frame_timeout_ms: 10_000,
            max_pending_connections: 0,
            max_pending_per_address: 0,
            ping_rate_per_sec: 2.0,
            ping_burst: 20.0,
        }
    }
}

/// A tenant: the scope of channels, peer ids and direct routing, and of quotas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Account id, referenced by keys and secrets.
    pub id: String,
    /// Concurrent connections (close 4010 at connect when exceeded). Unlimited when absent.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Messages (publish + send) per quota window (`over_message_quota`). Unlimited when absent.
    #[serde(default)]
    pub message_quota: Option<u64>,
    /// Length of the quota window.
    #[serde(default = "default_quota_window")]
    pub quota_window_secs: u64,
    /// Suspended accounts are refused at connect with close 4012.
    #[serde(default)]
    pub suspended: bool,
}

fn default_quota_window() -> u64 {
    30 * 24 * 3600
}

/// A publishable key (`?key=`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key itself, e.g. `pk_live_…`.
    pub key: String,
    /// The owning account.
    pub account: String,
    /// Channel glob patterns (`*` = any run of characters).
    #[serde(default = "all_channels")]
    pub channels: Vec<String>,
    /// Allowed actions.
    #[serde(default = "all_actions")]
    pub actions: Vec<Action>,
    /// Sent as `welcome.metadata` (e.g. `iceServers`).
    #[serde(default, deserialize_with = "json_bag")]
    pub metadata: Option<Box<RawValue>>,
    /// Whether connections with this key get TURN credentials minted from `[turn]`
    /// (unless `metadata` already has `iceServers`).
    #[serde(default = "yes")]
    pub turn: bool,
}

/// A secret key that signs HS256 JWTs (`?token=`); the JWT header `kid` selects it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// Key id, matched against the JWT header `kid`.
    pub kid: String,
    /// The HMAC secret, e.g. `sk_live_…`.
    pub secret: String,
    /// The owning account.
    pub account: String,
    /// Whether connections with tokens signed by this secret get TURN credentials minted
    /// from `[turn]` (unless the token's `metadata` claim already has `iceServers`).
    #[serde(default = "yes")]
    pub turn: bool,
}

fn all_channels() -> Vec<String> {
    vec!["*".to_owned()]
}

fn all_actions() -> Vec<Action> {
    Action::ALL.to_vec()
}

fn json_bag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    if !v.is_object() {
        return Err(serde::de::Error::custom("metadata must be a table"));
    }
    serde_json::value::to_raw_value(&v)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The whole server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (the CLI's `--listen` wins).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Bearer secret for the admin HTTP API; the API is off when absent.
    #[serde(default)]
    pub admin_secret: Option<String>,
    /// Whether a subscribed publisher receives its own broadcast (spec §1.9, open question 1).
    #[serde(default = "yes")]
    pub echo_publisher: bool,
    /// Per-connection bounds.
    #[serde(default)]
    pub limits: Limits,
    /// Tenants.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// Publishable keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// JWT signing secrets.
    #[serde(default)]
    pub secrets: Vec<SecretConfig>,
    /// Serve `wss://` with these certificate and key files (relative paths are relative to
    /// the config file); plain `ws://` when absent.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Run as one node of a cluster sharing channels through NATS; a single in-memory node
    /// when absent.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// TURN servers sharing a secret with this server: each welcome gets short-lived TURN
    /// REST credentials in `metadata.iceServers` (see [`crate::turn`]). None when absent.
    #[serde(default)]
    pub turn: Option<crate::turn::TurnConfig>,
    /// Reverse proxies (addresses or CIDR blocks) whose `X-Forwarded-For` header names the
    /// client in the server's log lines. Empty (the default): the header is ignored and the
    /// TCP peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Agent dispatch: workers connect to `/v1/worker`, and channels matching a rule get an
    /// agent (see [`crate::dispatch`]). Off when absent.
    #[serde(default)]
    pub agents: Option<crate::dispatch::AgentsConfig>,
}

fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: None,
            admin_secret: None,
            echo_publisher: true,
            limits: Limits::default(),
            accounts: Vec::new(),
            keys: Vec::new(),
            secrets: Vec::new(),
            tls: None,
            cluster: None,
            turn: None,
            trusted_proxies: Vec::new(),
            agents: None,
        }
    }
}

/// The shortest accepted HS256 secret, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The account that `--dev-key` keys belong to.
pub const DEV_ACCOUNT: &str = "dev";

impl Config {
    /// Parse a TOML document and validate it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, "config")
    }

    /// Parse `text` (from `origin`, named in errors) and validate it.
    fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(describe(&e, text, origin)))?;
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        if let (Some(tls), Some(dir)) = (&mut config.tls, path.parent()) {
            tls.cert_file = dir.join(&tls.cert_file);
            tls.key_file = dir.join(&tls.key_file);
        }
        Ok(config)
    }

    /// Add a development key: a publishable key allowed every action on every channel.
    pub fn add_dev_key(&mut self, key: &str) {
        self.keys.push(KeyConfig {
            key: key.to_owned(),
            account: DEV_ACCOUNT.to_owned(),
            channels: all_channels(),
            actions: all_actions(),
            metadata: None,
            turn: true,
        });
    }

    /// Check ranges and cross-references.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // A message frame carries data plus an envelope (channel, ids, fromMetadata) and must
        // stay under the 1 MiB outbound cap.
        let max_data = MAX_OUTBOUND_FRAME - 16 * 1024 - l.max_peer_metadata_bytes;
        if l.max_message_size == 0 || l.max_message_size > max_data {
            return bad(format!("limits.max_message_size must be in 1..={max_data}"));
        }
        if l.max_peer_metadata_bytes > 64 * 1024 {
            return bad("limits.max_peer_metadata_bytes must be at most 65536".into());
        }
        if !(l.rate_per_sec > 0.0 && l.rate_burst >= 1.0) {
            return bad("limits.rate_per_sec must be > 0 and limits.rate_burst >= 1".into());
        }
        if l.ping_interval_secs == 0 {
            return bad("limits.ping_interval_secs must be > 0".into());
        }
        if !(l.ping_rate_per_sec > 0.0 && l.ping_burst >= 1.0) {
            return bad("limits.ping_rate_per_sec must be > 0 and limits.ping_burst >= 1".into());
        }
        for (name, ms) in [
            ("tls_handshake_timeout_ms", l.tls_handshake_timeout_ms),
            ("header_timeout_ms", l.header_timeout_ms),
            ("http_idle_timeout_ms", l.http_idle_timeout_ms),
            ("first_frame_timeout_ms", l.first_frame_timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&ms) {
                return bad(format!("limits.{name} must be in 1..=3600000"));
            }
        }

        if l.max_subscriptions_per_connection == 0 || l.max_channel_members == 0 {
            return bad("subscription and member limits must be > 0".into());
        }
        if l.outbound_queue_bytes < MAX_OUTBOUND_FRAME {
            return bad(format!(
                "limits.outbound_queue_bytes must be at least {MAX_OUTBOUND_FRAME}"
            ));
        }
        let mut ids = HashSet::new();
        for a in &self.accounts {
            if !ids.insert(a.id.as_str()) {
                return bad(format!("duplicate account {:?}", a.id));
            }
            if a.quota_window_secs == 0 {
                return bad(format!("account {:?}: quota_window_secs must be > 0", a.id));
            }
        }
        let mut keys = HashSet::new();
        for k in &self.keys {
            if k.key.is_empty() || !keys.insert(k.key.as_str()) {
                // Never echo the key itself.
                return bad("keys must be non-empty and unique".into());
            }
        }
        let mut kids = HashSet::new();
        for s in &self.secrets {
            if s.secret.len() < MIN_SECRET_LEN {
                return bad(format!(
                    "secret {:?}: must be at least {MIN_SECRET_LEN} bytes",
                    s.kid
                ));
            }
            if !kids.insert(s.kid.as_str()) {
                return bad(format!("duplicate secret kid {:?}", s.kid));
            }
        }
        if let Some(t) = &self.turn {
            t.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(c) = &self.cluster {
            c.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(a) = &self.agents {
            a.validate().map_err(ConfigError::Invalid)?;
        }
        if self
            .secrets
            .iter()
            .any(|s| s.kid == crate::auth::JOB_TOKEN_KID)
        {
            return bad(format!(
                "secret kid {:?} is reserved for job tokens",
                crate::auth::JOB_TOKEN_KID
            ));
        }
        Ok(())
    }

    /// The cap on connections not yet upgraded: `limits.max_pending_connections`, or when 0,
    /// half of `open_files` (the process's open-file limit) bounded to 64..=4096.
    pub fn max_pending_connections(&self, open_files: Option<u64>) -> usize {
        match self.limits.max_pending_connections {
            0 => open_files.map_or(1024, |n| (n / 2).clamp(64, 4096) as usize),
            n => n,
        }
    }

    /// The cap on connections not yet upgraded from one address, given the total cap.
    pub fn max_pending_per_address(&self, total: usize) -> usize {
        match self.limits.max_pending_per_address {
            0 => (total / 8).clamp(4, 128),
            n => n,
        }
    }

    /// The configuration of an account, if declared.
    pub fn account(&self, id: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

/// A TOML error as `origin:line:column: message (key …)`: never the offending line itself
/// (toml's own rendering quotes it, and it may hold a secret), and the message without the
/// double-quoted values serde puts in type errors.
fn describe(e: &toml::de::Error, text: &str, origin: &str) -> String {
    let mut out = String::from(origin);
    let mut key = None;
    if let Some(span) = e.span() {
        let start = span.start.min(text.len());
        let before = &text.as_bytes()[..start];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = text[line_start..start].chars().count() + 1;
        out += &format!(":{line}:{column}");
        let this_line = text[line_start..].lines().next().unwrap_or("");
        let table = text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .filter(|l| l.len() <= 80);
        key = this_line
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| {
                !k.is_empty()
                    && k.len() <= 64
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            })
            .map(|k| match table {
                Some(t) => format!("{t} {k}"),
                None => k.to_owned(),
            });
    }
    out += ": ";
    out += &without_quoted(e.message().trim());
    if let Some(k) = key {
        out += &format!(" (key {k})");
    }
    out
}

/// `s` with the contents of each double-quoted run replaced by `…`.
fn without_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut inside = false;
    for c in s.chars() {
        match (c, inside) {
            ('"', false) => {
                out.push_str("\"…");
                inside = true;
            }
            ('"', true) => {
                out.push('"');
                inside = false;
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    if inside {
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let c = Config::from_toml(
            r#"
admin_secret = "adm"
echo_publisher = false
[limits]
max_message_size = 1024
rate_per_sec = 5
[[accounts]]
id = "acme"
max_connections = 2
message_quota = 10
quota_window_secs = 60
[[keys]]
key = "pk_live_abc"
account = "acme"
channels = ["room-*"]
actions = ["subscribe", "presence"]
metadata = { iceServers = [{ urls = "stun:stun.example.org:3478" }] }
[[secrets]]
kid = "main"
secret = "sk_test_0123456789abcdef"
account = "acme"
"#,
        )
        .expect("valid");
        assert!(!c.echo_publisher);
        assert_eq!(c.limits.max_message_size, 1024);
        assert_eq!(c.limits.rate_burst, 300.0);
        assert_eq!(c.keys[0].actions, vec![Action::Subscribe, Action::Presence]);
        assert_eq!(
            c.keys[0].metadata.as_ref().map(|m| m.get()),
            Some(r#"{"iceServers":[{"urls":"stun:stun.example.org:3478"}]}"#)
        );
        assert_eq!(c.account("acme").and_then(|a| a.max_connections), Some(2));
    }

    #[test]
    fn rejects_bad_configs() {
        for bad in [
            "nope = 1",
            "[limits]\nmax_message_size = 0",
            "[limits]\nmax_message_size = 2000000",
            "[limits]\nrate_per_sec = 0",
            "[[keys]]\nkey = \"a\"\naccount = \"x\"\n[[keys]]\nkey = \"a\"\naccount = \"y\"",
            "[[keys]]\nkey = \"a\"\naccount = \"x\"\nactions = [\"fly\"]",
            "[[secrets]]\nkid = \"k\"\nsecret = \"short\"\naccount = \"a\"",
            "[[keys]]\nkey = \"a\"\naccount = \"x\"\nmetadata = 5",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    /// Issue #23 finding 6: a syntax or type error in a secret field names the place and the
    /// key, never the value.
    #[test]
    fn parse_errors_name_the_place_never_the_secret() {
        let cases = [
            // An unterminated string.
            (
                "[limits]\nrate_per_sec = 5\n[[secrets]]\nkid = \"main\"\nsecret = \"sk_live_TOPSECRET_value\naccount = \"a\"\n",
                ":5:",
                "[[secrets]] secret",
            ),
            // A string where a number belongs (serde quotes the value in its message).
            (
                "echo_publisher = true\n[limits]\nrate_per_sec = \"sk_live_TOPSECRET_value\"\n",
                ":3:",
                "[limits] rate_per_sec",
            ),
            // A bare word where a value belongs.
            (
                "admin_secret = sk_live_TOPSECRET_value\n",
                ":1:",
                "admin_secret",
            ),
        ];
        for (text, line, key) in cases {
            let e = Config::parse(text, "/etc/parlor.toml")
                .unwrap_err()
                .to_string();
            assert!(!e.contains("TOPSECRET"), "{e}");
            assert!(e.contains(&format!("/etc/parlor.toml{line}")), "{e}");
            assert!(e.contains(&format!("(key {key})")), "{e}");
        }
        assert_eq!(without_quoted(r#"a "b" c "d"#), r#"a "…" c "…""#);
    }

    /// The README's configuration example parses, and its `[limits]` are the defaults.
    #[test]
    fn readme_example_parses_with_default_limits() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("### Configuration (`parlor.toml`)")
            .expect("section");
        let block = &readme[start..];
        let block = &block[block.find("```toml\n").expect("toml block") + 8..];
        let block = &block[..block.find("```").expect("end of block")];
        let c = Config::from_toml(block).expect("README example");
        let d = Limits::default();
        let l = &c.limits;
        assert_eq!(
            (
                l.max_message_size,
                l.rate_per_sec,
                l.ping_burst,
                l.header_timeout_ms
            ),
            (
                d.max_message_size,
                d.rate_per_sec,
                d.ping_burst,
                d.header_timeout_ms
            )
        );
        assert_eq!(
            (l.max_pending_connections, l.max_pending_per_address),
            (0, 0)
        );
    }

    #[test]
    fn trusted_proxies_and_the_pending_cap() {
        let c =
            Config::from_toml("trusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]\n").expect("valid");
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(Config::from_toml("trusted_proxies = [\"nope\"]").is_err());
        assert_eq!(c.max_pending_connections(Some(1024)), 512);
        assert_eq!(c.max_pending_connections(Some(1_000_000)), 4096);
        assert_eq!(c.max_pending_connections(None), 1024);
        assert_eq!(c.max_pending_per_address(64), 8);
        assert_eq!(c.max_pending_per_address(512), 64);
        assert_eq!(c.max_pending_per_address(4096), 128);
        assert_eq!(c.max_pending_per_address(8), 4);
        let c = Config::from_toml("[limits]\nmax_pending_connections = 7").expect("valid");
        assert_eq!(c.max_pending_connections(Some(1024)), 7);
    }
}
