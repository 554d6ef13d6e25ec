//! Credentials never reach the logs: a whole call (server and two peers in this process,
//! negotiation, ICE, TURN allocations through a real coturn, DTLS, audio, a data channel)
//! with every crate logging at TRACE, then the captured text is searched for the key, ICE
//! passwords, the TURN shared secret and the TURN credentials the server minted.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{Coturn, TURN_SECRET, WAIT, peer_with, server_with_turn, wait_for};
use parlor_peer::room::{RoomEvent, RoomOptions};
use parlor_peer::{EncodedFrame, LocalTrack};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Every value after `marker` in `logs` must be masked (`***`).
fn unmasked<'a>(logs: &'a str, marker: &str) -> Vec<&'a str> {
    logs.match_indices(marker)
        .map(|(i, _)| &logs[i..(i + marker.len() + 24).min(logs.len())])
        .filter(|s| !s[marker.len()..].starts_with("***"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_call_logs_no_key_and_no_ice_password() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .with_writer(capture.clone())
        .init();

    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let turn = Coturn::start(TURN_SECRET).await;
    let server = server_with_turn(vec![turn.url()], TURN_SECRET).await;
    let relay = || RoomOptions::default().relay_only(true);
    let (a, b) = (
        peer_with(&server.url(), relay()),
        peer_with(&server.url(), relay()),
    );
    let mut eb = b.events();
    let track = LocalTrack::audio();
    a.add_track(&track);
    let pacer = {
        let track = track.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                track.push(EncodedFrame::opus(vec![31 << 3, 0xff, 0xfe]).expect("opus"));
            }
        })
    };
    a.join("secrets", false).await.expect("join a");
    b.join("secrets", false).await.expect("join b");
    let a_id = a.peer_id().expect("id");
    let remote = wait_for(&mut eb, |e| match e {
        RoomEvent::Track { peer_id, track } if *peer_id == a_id => Some(track.clone()),
        _ => None,
    })
    .await;
    let b_id = b.peer_id().expect("id");
    let dc = a.create_data_channel(&b_id, "chat").await.expect("channel");
    dc.send("hello").await.expect("send");
    tokio::time::timeout(WAIT, async {
        for _ in 0..10 {
            let _ = remote.recv().await;
        }
    })
    .await
    .expect("audio");
    pacer.abort();
    // The credentials the server minted for both peers (the expiry is `now + ttl` at welcome).
    let minter = parlor_server::turn::TurnMinter::new(&parlor_server::turn::TurnConfig {
        urls: vec![turn.url()],
        secret: TURN_SECRET.into(),
        ttl_secs: 600,
    });
    let finished = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let credentials: Vec<String> = [&a_id, &b_id]
        .iter()
        .flat_map(|id| (started..=finished).map(|t| minter.mint(id, t).credential))
        .collect();
    a.close().await;
    b.close().await;
    server.shutdown().await.expect("shutdown");

    let logs =
        String::from_utf8_lossy(&capture.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(
        logs.len() > 10_000,
        "expected TRACE output, got {} bytes",
        logs.len()
    );
    assert!(!logs.contains("pk_test_x"), "the key appears in the logs");
    assert!(
        !logs.contains(TURN_SECRET),
        "the TURN secret appears in the logs"
    );
    assert!(
        logs.contains("TURN allocation ready"),
        "the call did not go through TURN"
    );
    for c in &credentials {
        assert!(
            !logs.contains(c.as_str()),
            "a TURN credential appears in the logs"
        );
    }
    for marker in ["ice-pwd:", "ice_pwd:", "ice-pwd\":\"", "\"password\":\""] {
        let bad = unmasked(&logs, marker);
        assert!(bad.is_empty(), "unmasked {marker} in the logs: {bad:?}");
    }
}
