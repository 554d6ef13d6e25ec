//! `?key=` / `?token=` authentication: any query string, and any claims JSON signed with the
//! configured secret (so the fuzzer gets past the signature to the claims handling).
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor_server::auth::Authenticator;
use parlor_server::config::Config;

const SECRET: &str = "sk_fuzz_0123456789abcdef";
const NOW: u64 = 1_900_000_000;

fn auth() -> &'static (Authenticator, usize) {
    static AUTH: std::sync::OnceLock<(Authenticator, usize)> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        let config = Config::from_toml(&format!(
            r#"
[limits]
max_peer_metadata_bytes = 128
[[accounts]]
id = "gone"
suspended = true
[[keys]]
key = "pk_fuzz"
account = "a"
[[secrets]]
kid = "main"
secret = "{SECRET}"
account = "a"
[[secrets]]
kid = "old"
secret = "{SECRET}-old"
account = "gone"
"#
        ))
        .expect("fuzz config");
        let max = config.limits.max_peer_metadata_bytes;
        (Authenticator::new(&config), max)
    })
}

fuzz_target!(|data: &[u8]| {
    let (auth, max_meta) = auth();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let query = if mode % 2 == 0 {
        text.to_owned()
    } else {
        // Claims signed with a configured secret: the fuzzer controls everything but the MAC.
        let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) else {
            return;
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = match mode / 2 % 3 {
            0 => Some("main".into()),
            1 => Some("old".into()),
            _ => None,
        };
        let secret = if mode / 2 % 3 == 1 {
            format!("{SECRET}-old")
        } else {
            SECRET.to_owned()
        };
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        let Ok(token) = jsonwebtoken::encode(&header, &claims, &key) else {
            return;
        };
        format!("token={token}")
    };
    if let Ok(grant) = auth.authenticate(Some(&query), NOW) {
        if let Some(exp) = grant.expires_at {
            assert!(exp > NOW, "expired token accepted");
        }
        if let Some(meta) = &grant.peer_metadata {
            assert!(meta.get().starts_with('{'), "peer metadata not an object");
            assert!(meta.get().len() <= *max_meta, "peer metadata over the cap");
        }
        assert_ne!(&*grant.account, "gone", "suspended account admitted");
    }
});
