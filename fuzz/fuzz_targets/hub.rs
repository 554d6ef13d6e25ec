//! The server's sans-IO core fed a script of frames from four connections: parse → validate →
//! hub, as `conn` does. Every frame the server queues must be one the real clients' strict
//! parser accepts (spec §1.6), and no queue may exceed its byte cap.
//!
//! Script: lines; the first byte of a line picks the connection (`b % 4`) and the operation
//! (`b / 4 % 8`): 0–5 send the rest of the line as a text frame, 6 reconnects, 7 advances the
//! clock by a second. Limits are small so quotas, caps and rate paths are reached.
#![no_main]

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use parlor_protocol::client::parse_server_frame;
use parlor_protocol::parse_client_frame;
use parlor_server::auth::Authenticator;
use parlor_server::config::Config;
use parlor_server::hub::{Connected, Hub, Next};
use parlor_server::metrics::Metrics;

const CONFIG: &str = r#"
[limits]
max_subscriptions_per_connection = 2
max_message_size = 64
max_channel_members = 3
max_peer_metadata_bytes = 256
[[accounts]]
id = "a"
max_connections = 3
message_quota = 20
quota_window_secs = 5
[[keys]]
key = "pk_all"
account = "a"
[[keys]]
key = "pk_ro"
account = "a"
channels = ["pub-*", "room"]
actions = ["subscribe", "presence"]
"#;

struct Setup {
    auth: Authenticator,
    config: Config,
}

fn setup() -> &'static Setup {
    static SETUP: std::sync::OnceLock<Setup> = std::sync::OnceLock::new();
    SETUP.get_or_init(|| {
        let config = Config::from_toml(CONFIG).expect("fuzz config");
        Setup {
            auth: Authenticator::new(&config),
            config,
        }
    })
}

/// Take whatever the connection's writer would send now, and check it.
fn drain(c: &Connected) -> bool {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut open = true;
    loop {
        let fut = c.outbox.next();
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Next::Frames(frames)) => {
                for f in frames {
                    if let Err(e) = parse_server_frame(f.as_str()) {
                        panic!(
                            "server queued a frame clients reject ({e:?}): {}",
                            f.as_str()
                        );
                    }
                }
            }
            Poll::Ready(_) => {
                open = false;
                break;
            }
            Poll::Pending => break,
        }
    }
    open
}

fn connect(hub: &mut Hub, i: usize, now_ms: u64) -> Option<Connected> {
    let query = if i == 3 { "key=pk_ro" } else { "key=pk_all" };
    let grant = setup().auth.authenticate(Some(query), now_ms / 1000).ok()?;
    hub.connect(grant, now_ms).ok()
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let cap = s.config.limits.outbound_queue_bytes;
    let mut hub = Hub::new(&s.config, Arc::new(Metrics::new()));
    let mut now_ms = 1_000_000u64;
    let mut conns: Vec<Option<Connected>> = (0..4).map(|i| connect(&mut hub, i, now_ms)).collect();
    for line in data.split(|b| *b == b'\n').take(256) {
        let Some((&op, rest)) = line.split_first() else {
            continue;
        };
        let i = usize::from(op % 4);
        match op / 4 % 8 {
            0..=5 => {
                let Some(c) = &conns[i] else { continue };
                let Ok(text) = std::str::from_utf8(rest) else {
                    continue;
                };
                match parse_client_frame(text) {
                    Ok(frame) => hub.handle(c.conn, frame, now_ms),
                    Err(e) => hub.reject(c.conn, &e),
                }
            }
            6 => {
                if let Some(c) = conns[i].take() {
                    hub.disconnect(c.conn, now_ms);
                }
                conns[i] = connect(&mut hub, i, now_ms);
            }
            _ => now_ms += 1000,
        }
        for slot in conns.iter_mut() {
            if let Some(c) = slot {
                assert!(c.outbox.queued_bytes() <= cap);
                if !drain(c) {
                    hub.disconnect(c.conn, now_ms);
                    *slot = None;
                }
            }
        }
    }
    for c in conns.into_iter().flatten() {
        hub.disconnect(c.conn, now_ms);
    }
    assert_eq!(hub.connection_count(), 0);
});
