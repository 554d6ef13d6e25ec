//! Credentials → a [`Grant`] (spec §1.2). Failures become close codes after the upgrade.
//!
//! Nothing here logs or returns the credential itself.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use parlor_protocol::CloseCode;
use parlor_protocol::validate::glob_match;

use crate::config::{Action, Config};

/// A bit set of [`Action`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Actions(u8);

impl Actions {
    /// Every action.
    pub const ALL: Actions = Actions(0b1111);

    fn bit(a: Action) -> u8 {
        match a {
            Action::Subscribe => 1,
            Action::Publish => 2,
            Action::Presence => 4,
            Action::Send => 8,
        }
    }

    /// Whether `a` is allowed.
    pub fn allows(self, a: Action) -> bool {
        self.0 & Self::bit(a) != 0
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        Actions(iter.into_iter().fold(0, |acc, a| acc | Self::bit(a)))
    }
}

/// What an authenticated connection may do, and what it carries.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The tenant.
    pub account: Arc<str>,
    /// Channel glob patterns.
    pub channels: Arc<[String]>,
    /// Allowed actions.
    pub actions: Actions,
    /// Public metadata shown to others (JWT `peerMetadata`), always a JSON object.
    pub peer_metadata: Option<Box<RawValue>>,
    /// Private metadata echoed in `welcome` (JWT `metadata`, or the key's configured bag).
    pub welcome_metadata: Option<Arc<RawValue>>,
    /// Token expiry (Unix seconds); `None` for keys.
    pub expires_at: Option<u64>,
    /// Whether TURN credentials may be minted into the welcome (the key's or the token
    /// secret's `turn` setting).
    pub turn: bool,
    /// The dispatch job this connection is the agent of (a job token, minted by this server
    /// for a worker: [`Authenticator::mint_job_token`]); `None` for everyone else.
    pub job: Option<Arc<str>>,
    /// The agent this human's token asks for in each channel it joins (the `parlorAgent`
    /// claim; dispatch must be on, see `docs/dispatch.md`).
    pub agent: Option<Arc<str>>,
}

impl Grant {
    /// Whether the channel patterns cover `channel`.
    pub fn channel_allowed(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| glob_match(p, channel))
    }
}

/// Why a credential was refused: the close code and a short reason, never the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct AuthError {
    /// The close code to send after the upgrade.
    pub code: CloseCode,
    /// A short ASCII reason.
    pub reason: &'static str,
}

const fn invalid(reason: &'static str) -> AuthError {
    AuthError {
        code: CloseCode::INVALID_TOKEN,
        reason,
    }
}

/// The JWT claims Parlor reads (spec §1.2).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, Unix seconds (required). A JWT NumericDate may carry a fraction
    /// (`1767225600.5`); it is rounded down.
    #[serde(deserialize_with = "numeric_date")]
    pub exp: u64,
    /// Not before, Unix seconds (optional): a token is refused until then, with the same
    /// leeway as `exp` ([`CLOCK_LEEWAY_SECS`]). A fraction is rounded up.
    #[serde(
        default,
        deserialize_with = "numeric_date_ceil",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<u64>,
    /// Channel glob patterns; all channels when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Allowed actions; all four when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// Public per-peer bag.
    #[serde(
        rename = "peerMetadata",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_metadata: Option<Box<RawValue>>,
    /// Private bag echoed in `welcome.metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<RawValue>>,
    /// Job tokens only (signed with the [`JOB_TOKEN_KID`] key; ignored in any other token):
    /// the dispatch job whose agent this is.
    #[serde(rename = "parlorJob", default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Ask for this agent (a worker's agent name) in every channel the token's holder joins:
    /// explicit dispatch without an admin call. Ignored in job tokens.
    #[serde(
        rename = "parlorAgent",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub agent: Option<String>,
    /// Job tokens only: the tenant of the job's channel.
    #[serde(
        rename = "parlorAccount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub account: Option<String>,
}

/// The JWT `kid` of job tokens (reserved: no `[[secrets]]` entry may use it).
pub const JOB_TOKEN_KID: &str = "parlor-job";

/// How long a job token admits its agent (and its reconnects): a job's agent is closed with
/// `token_expired` after this.
pub const JOB_TOKEN_SECS: u64 = 24 * 3_600;

/// Seconds of clock skew allowed on `exp` and `nbf` alike.
pub const CLOCK_LEEWAY_SECS: u64 = 0;

/// A JWT NumericDate (RFC 7519 §2): whole seconds, or with a fraction, rounded with `round`
/// (down for `exp`, so a token never lives longer than it says; up for `nbf`, so it never
/// starts earlier). Negative or non-finite values are refused; values past u64 saturate.
fn numeric<'de, D: serde::Deserializer<'de>>(d: D, round: fn(f64) -> f64) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Numeric {
        Whole(u64),
        Fraction(f64),
    }
    match Numeric::deserialize(d)? {
        Numeric::Whole(n) => Ok(n),
        // `as` saturates (1e30 becomes u64::MAX); the JWT library refuses such an `exp`.
        Numeric::Fraction(f) if f.is_finite() && f >= 0.0 => Ok(round(f) as u64),
        Numeric::Fraction(_) => Err(serde::de::Error::custom(
            "a NumericDate must be a non-negative number of seconds",
        )),
    }
}

fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    numeric(d, f64::floor)
}

fn numeric_date_ceil<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    numeric(d, f64::ceil).map(Some)
}

/// Mint an HS256 JWT with header `kid` (used by `parlor token` and by tests).
pub fn mint_token(secret: &str, kid: &str, claims: &Claims) -> Result<String, String> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign token: {e}"))
}

struct KeyEntry {
    account: Arc<str>,
    channels: Arc<[String]>,
    actions: Actions,
    metadata: Option<Arc<RawValue>>,
    turn: bool,
}

struct SecretEntry {
    account: Arc<str>,
    key: DecodingKey,
    turn: bool,
}

/// Checks `?key=` and `?token=` credentials against the configuration.
pub struct Authenticator {
    /// The job tokens' key (from `agents.worker_secret`), when dispatch is on.
    job_key: Option<(EncodingKey, DecodingKey)>,
    keys: HashMap<String, KeyEntry>,
    secrets: HashMap<String, SecretEntry>,
    suspended: Vec<String>,
    max_peer_metadata_bytes: usize,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys or secrets.
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Build from a validated configuration.
    pub fn new(config: &Config) -> Authenticator {
        let keys = config
            .keys
            .iter()
            .map(|k| {
                (
                    k.key.clone(),
                    KeyEntry {
                        account: Arc::from(k.account.as_str()),
                        channels: k.channels.clone().into(),
                        actions: k.actions.iter().copied().collect(),
                        metadata: k.metadata.as_deref().map(|m| Arc::from(m.to_owned())),
                        turn: k.turn,
                    },
                )
            })
            .collect();
        let secrets = config
            .secrets
            .iter()
            .map(|s| {
                (
                    s.kid.clone(),
                    SecretEntry {
                        account: Arc::from(s.account.as_str()),
                        key: DecodingKey::from_secret(s.secret.as_bytes()),
                        turn: s.turn,
                    },
                )
            })
            .collect();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        let job_key = config.agents.as_ref().map(|a| {
            let k = format!("parlor-job-token:{}", a.worker_secret);
            (
                EncodingKey::from_secret(k.as_bytes()),
                DecodingKey::from_secret(k.as_bytes()),
            )
        });
        Authenticator {
            job_key,
            keys,
            secrets,
            suspended: config
                .accounts
                .iter()
                .filter(|a| a.suspended)
                .map(|a| a.id.clone())
                .collect(),
            max_peer_metadata_bytes: config.limits.max_peer_metadata_bytes,
            validation,
        }
    }

    /// Authenticate the raw query string of a `/v1` upgrade at `now` (Unix seconds).
    pub fn authenticate(&self, query: Option<&str>, now: u64) -> Result<Grant, AuthError> {
        let mut key = None;
        let mut token = None;
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match name.as_ref() {
                "key" => &mut key,
                "token" => &mut token,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(invalid("duplicate credential parameter"));
            }
        }
        let grant = match (key, token) {
            (Some(k), None) => self.grant_for_key(&k)?,
            (None, Some(t)) => self.grant_for_token(&t, now)?,
            (None, None) => return Err(invalid("missing key or token")),
            (Some(_), Some(_)) => return Err(invalid("pass either key or token, not both")),
        };
        if self.suspended.iter().any(|a| **a == *grant.account) {
            return Err(AuthError {
                code: CloseCode::ACCOUNT_SUSPENDED,
                reason: "account suspended",
            });
        }
        Ok(grant)
    }

    /// A token for the agent of dispatch job `job` in `channel` of `account`, valid from
    /// `now` (Unix seconds) for [`JOB_TOKEN_SECS`]: every action, on that channel only.
    /// `None` when dispatch is off.
    pub fn mint_job_token(
        &self,
        job: &str,
        account: &str,
        channel: &str,
        now: u64,
    ) -> Option<String> {
        let (key, _) = self.job_key.as_ref()?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(JOB_TOKEN_KID.to_owned());
        let claims = Claims {
            exp: now + JOB_TOKEN_SECS,
            nbf: None,
            channels: Some(vec![channel.to_owned()]),
            permissions: None,
            peer_metadata: Some(
                serde_json::value::to_raw_value(&serde_json::json!({ "agentJob": job })).ok()?,
            ),
            metadata: None,
            job: Some(job.to_owned()),
            agent: None,
            account: Some(account.to_owned()),
        };
        jsonwebtoken::encode(&header, &claims, key).ok()
    }

    fn grant_for_key(&self, key: &str) -> Result<Grant, AuthError> {
        let k = self.keys.get(key).ok_or(invalid("invalid key"))?;
        Ok(Grant {
            account: k.account.clone(),
            channels: k.channels.clone(),
            actions: k.actions,
            peer_metadata: None,
            welcome_metadata: k.metadata.clone(),
            expires_at: None,
            turn: k.turn,
            job: None,
            agent: None,
        })
    }

    fn grant_for_token(&self, token: &str, now: u64) -> Result<Grant, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        if header.kid.as_deref() == Some(JOB_TOKEN_KID) {
            return self.grant_for_job_token(token, now);
        }
        let secret = match header.kid.as_deref() {
            Some(kid) => self.secrets.get(kid),
            // Without a kid, a single configured secret is unambiguous.
            None if self.secrets.len() == 1 => self.secrets.values().next(),
            None => None,
        }
        .ok_or(invalid("unknown token key id"))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &secret.key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError {
                        code: CloseCode::TOKEN_EXPIRED,
                        reason: "token expired",
                    },
                    ErrorKind::InvalidSignature => invalid("invalid token signature"),
                    _ => invalid("invalid token"),
                }
            })?;
        let claims = data.claims;
        // jsonwebtoken checks exp against its own clock; check against ours too so a
        // caller-supplied `now` (tests, skew handling) is honoured.
        if claims.exp.saturating_add(CLOCK_LEEWAY_SECS) <= now {
            return Err(AuthError {
                code: CloseCode::TOKEN_EXPIRED,
                reason: "token expired",
            });
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(CLOCK_LEEWAY_SECS))
        {
            return Err(invalid("token not yet valid"));
        }
        let actions = match &claims.permissions {
            None => Actions::ALL,
            Some(list) => list
                .iter()
                .map(|p| Action::parse(p).ok_or(invalid("unknown permission in token")))
                .collect::<Result<Actions, _>>()?,
        };
        if let Some(m) = &claims.peer_metadata {
            if !m.get().starts_with('{') {
                return Err(invalid("peerMetadata must be an object"));
            }
            if m.get().len() > self.max_peer_metadata_bytes {
                return Err(invalid("peerMetadata too large"));
            }
        }
        let welcome_metadata = match claims.metadata {
            Some(m) if m.get().starts_with('{') => Some(Arc::from(m)),
            Some(_) => return Err(invalid("metadata must be an object")),
            None => None,
        };
        let agent = match claims.agent {
            Some(a) if crate::dispatch::valid_agent_name(&a) => Some(Arc::from(a)),
            Some(_) => return Err(invalid("parlorAgent must be an agent name")),
            None => None,
        };
        Ok(Grant {
            account: secret.account.clone(),
            channels: claims
                .channels
                .unwrap_or_else(|| vec!["*".to_owned()])
                .into(),
            actions,
            peer_metadata: claims.peer_metadata,
            welcome_metadata,
            expires_at: Some(claims.exp),
            turn: secret.turn,
            job: None,
            agent,
        })
    }

    fn grant_for_job_token(&self, token: &str, now: u64) -> Result<Grant, AuthError> {
        let (_, key) = self
            .job_key
            .as_ref()
            .ok_or(invalid("unknown token key id"))?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError {
                    code: CloseCode::TOKEN_EXPIRED,
                    reason: "token expired",
                },
                ErrorKind::InvalidSignature => invalid("invalid token signature"),
                _ => invalid("invalid token"),
            })?
            .claims;
        if claims.exp <= now {
            return Err(AuthError {
                code: CloseCode::TOKEN_EXPIRED,
                reason: "token expired",
            });
        }
        let (Some(job), Some(account), Some(channels)) =
            (claims.job, claims.account, claims.channels)
        else {
            return Err(invalid("invalid token"));
        };
        Ok(Grant {
            account: account.into(),
            channels: channels.into(),
            actions: Actions::ALL,
            peer_metadata: claims.peer_metadata,
            welcome_metadata: None,
            expires_at: Some(claims.exp),
            turn: true,
            job: Some(job.into()),
            agent: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sk_test_0123456789abcdef";

    fn auth() -> Authenticator {
        let mut c = Config::from_toml(&format!(
            r#"
[[accounts]]
id = "gone"
suspended = true
[[keys]]
key = "pk_room"
account = "acme"
channels = ["room-*"]
actions = ["subscribe"]
metadata = {{ iceServers = [] }}
[[keys]]
key = "pk_gone"
account = "gone"
[[secrets]]
kid = "main"
secret = "{SECRET}"
account = "acme"
"#
        ))
        .expect("config");
        c.add_dev_key("pk_test_x");
        Authenticator::new(&c)
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            exp,
            nbf: None,
            channels: None,
            permissions: None,
            peer_metadata: None,
            metadata: None,
            job: None,
            agent: None,
            account: None,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn keys() {
        let a = auth();
        let g = a
            .authenticate(Some("key=pk_test_x"), now())
            .expect("dev key");
        assert_eq!(&*g.account, "dev");
        assert!(g.channel_allowed("anything") && g.actions == Actions::ALL);
        assert_eq!(g.expires_at, None);
        let g = a.authenticate(Some("key=pk_room"), now()).expect("key");
        assert!(g.channel_allowed("room-1") && !g.channel_allowed("lobby"));
        assert!(g.actions.allows(Action::Subscribe) && !g.actions.allows(Action::Publish));
        assert_eq!(
            g.welcome_metadata.as_deref().map(RawValue::get),
            Some(r#"{"iceServers":[]}"#)
        );
        let code = |q: Option<&str>| a.authenticate(q, now()).map(|_| ()).unwrap_err().code.0;
        assert_eq!(code(Some("key=nope")), 4001);
        assert_eq!(code(None), 4001);
        assert_eq!(code(Some("")), 4001);
        assert_eq!(code(Some("key=pk_test_x&key=pk_test_x")), 4001);
        assert_eq!(code(Some("key=pk_test_x&token=x")), 4001);
        assert_eq!(code(Some("key=pk_gone")), 4012);
    }

    #[test]
    fn tokens() {
        let a = auth();
        let mut c = claims(now() + 60);
        c.channels = Some(vec!["team-*".into()]);
        c.permissions = Some(vec!["subscribe".into(), "send".into()]);
        c.peer_metadata = Some(RawValue::from_string(r#"{"name":"alice"}"#.into()).expect("j"));
        c.metadata = Some(RawValue::from_string(r#"{"iceServers":[]}"#.into()).expect("j"));
        let t = mint_token(SECRET, "main", &c).expect("mint");
        let g = a
            .authenticate(Some(&format!("token={t}")), now())
            .expect("valid token");
        assert_eq!(&*g.account, "acme");
        assert_eq!(g.expires_at, Some(now() + 60));
        assert!(g.channel_allowed("team-a") && !g.channel_allowed("room-a"));
        assert!(g.actions.allows(Action::Send) && !g.actions.allows(Action::Publish));
        assert_eq!(
            g.peer_metadata.as_deref().map(RawValue::get),
            Some(r#"{"name":"alice"}"#)
        );

        let code = |t: &str| {
            a.authenticate(Some(&format!("token={t}")), now())
                .map(|_| ())
                .unwrap_err()
                .code
                .0
        };
        // Expired (our clock): 4002, retryable with a fresh token.
        let expired = mint_token(SECRET, "main", &claims(now() - 1)).expect("mint");
        assert_eq!(code(&expired), 4002);
        assert_eq!(
            code(&mint_token("sk_wrong_0123456789abcdef", "main", &claims(now() + 60)).expect("m")),
            4001
        );
        assert_eq!(
            code(&mint_token(SECRET, "other", &claims(now() + 60)).expect("m")),
            4001
        );
        assert_eq!(code("not.a.jwt"), 4001);
        let mut bad = claims(now() + 60);
        bad.permissions = Some(vec!["fly".into()]);
        assert_eq!(code(&mint_token(SECRET, "main", &bad).expect("m")), 4001);
        let mut big = claims(now() + 60);
        big.peer_metadata =
            Some(RawValue::from_string(format!(r#"{{"x":"{}"}}"#, "a".repeat(3000))).expect("j"));
        assert_eq!(code(&mint_token(SECRET, "main", &big).expect("m")), 4001);
        let mut arr = claims(now() + 60);
        arr.peer_metadata = Some(RawValue::from_string("[1]".into()).expect("j"));
        assert_eq!(code(&mint_token(SECRET, "main", &arr).expect("m")), 4001);

        // Claims as any JWT library writes them.
        let sign = |claims: serde_json::Value| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("main".to_owned());
            jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("sign")
        };
        // A NumericDate with a fraction is valid (RFC 7519 §2), rounded down.
        let t0 = now();
        let t = sign(serde_json::json!({ "exp": t0 as f64 + 60.75 }));
        let g = a
            .authenticate(Some(&format!("token={t}")), t0)
            .expect("fractional exp");
        assert_eq!(g.expires_at, Some(t0 + 60));
        assert_eq!(
            code(&sign(serde_json::json!({ "exp": now() as f64 - 0.5 }))),
            4002
        );
        assert_eq!(code(&sign(serde_json::json!({ "exp": -5.5 }))), 4001);
        assert_eq!(code(&sign(serde_json::json!({ "exp": "soon" }))), 4001);
        assert_eq!(code(&sign(serde_json::json!({ "channels": ["a"] }))), 4001);
        // `metadata` (echoed in `welcome.metadata`) must be an object, as `peerMetadata`.
        let exp = now() + 60;
        assert_eq!(
            code(&sign(serde_json::json!({ "exp": exp, "metadata": [1] }))),
            4001
        );
        assert_eq!(
            code(&sign(serde_json::json!({ "exp": exp, "metadata": "x" }))),
            4001
        );
    }

    /// Issue #23 findings 2 and 3: boundary values of `exp` and `nbf`.
    #[test]
    fn exp_and_nbf_boundaries() {
        let a = auth();
        let sign = |claims: serde_json::Value| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("main".to_owned());
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            jsonwebtoken::encode(&header, &claims, &key).expect("sign")
        };
        let t = now();
        let check = |claims: serde_json::Value| {
            a.authenticate(Some(&format!("token={}", sign(claims))), t)
                .map(|g| g.expires_at)
                .map_err(|e| e.code.0)
        };
        // exp: far-future values are valid and kept as they are (the driver saturates).
        assert_eq!(
            check(serde_json::json!({ "exp": u64::MAX })),
            Ok(Some(u64::MAX))
        );
        let wraps = u64::MAX / 1000 + 1; // 18446744073709552: `exp * 1000` overflows
        assert_eq!(check(serde_json::json!({ "exp": wraps })), Ok(Some(wraps)));
        // Past u64 it is no NumericDate JWT libraries parse.
        assert_eq!(check(serde_json::json!({ "exp": 1e30 })), Err(4001));
        assert_eq!(check(serde_json::json!({ "exp": 0 })), Err(4002));
        assert_eq!(check(serde_json::json!({ "exp": t })), Err(4002));
        assert_eq!(check(serde_json::json!({ "exp": -1 })), Err(4001));
        // nbf: honoured, with the same leeway (none), a fraction rounded up.
        let exp = t + 60;
        for (nbf, ok) in [
            (serde_json::json!(0), true),
            (serde_json::json!(t), true),
            (serde_json::json!(t as f64 - 0.5), true),
            (serde_json::json!(t as f64 + 0.25), false),
            (serde_json::json!(t + 1), false),
            (serde_json::json!(u64::MAX), false),
            (serde_json::json!(1e30), false),
            (serde_json::json!(-1), false),
            (serde_json::json!("soon"), false),
        ] {
            let got = check(serde_json::json!({ "exp": exp, "nbf": nbf }));
            if ok {
                assert_eq!(got, Ok(Some(exp)), "nbf {nbf}");
            } else {
                assert_eq!(got, Err(4001), "nbf {nbf}");
            }
        }
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let s = format!("{:?}", auth());
        assert!(!s.contains(SECRET) && !s.contains("pk_test_x"));
    }
}
