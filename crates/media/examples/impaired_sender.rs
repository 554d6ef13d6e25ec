//! Speak a WAV file into a room through a simulated bad network: the sender side of
//! `bench/network_browser.mjs`, which records what Chromium and the Python SDK (aiortc)
//! receive of the same impaired stream.
//!
//! ```text
//! cargo run -p parlor-media --example impaired_sender -- \
//!     --url ws://127.0.0.1:PORT --key pk_dev --room ROOM --wav speech.wav \
//!     [--loss PERCENT] [--bursty] [--jitter MS] [--delay MS] [--seed N] [--receivers N]
//! ```
//!
//! It joins, waits for `--receivers` peers to connect, then sends every datagram to them
//! through a `parlor_netsim` link (`RemotePeer::simulate_link`, a test-only hook) and plays
//! the file in real time (its in-band FEC follows the loss the receivers report in RTCP, as
//! on a real link). It prints `connected`, `playing`, `done` on stdout as it goes.

use std::time::Duration;

use parlor_media::{AudioSource, AudioSourceOptions, Layout, wav};
use parlor_netsim::{LinkConfig, Loss};
use parlor_peer::room::{RoomEvent, RoomPeer};
use parlor_peer::{PeerConnectionState, SignallingClient};

struct Args {
    url: String,
    key: String,
    room: String,
    wav: String,
    loss: f64,
    bursty: bool,
    jitter: u64,
    delay: u64,
    seed: u64,
    receivers: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        key: String::new(),
        room: String::new(),
        wav: String::new(),
        loss: 0.0,
        bursty: false,
        jitter: 0,
        delay: 0,
        seed: 1,
        receivers: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bursty" {
            a.bursty = true;
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => a.url = v,
            "--key" => a.key = v,
            "--room" => a.room = v,
            "--wav" => a.wav = v,
            "--loss" => a.loss = v.parse().map_err(|e| format!("--loss: {e}"))?,
            "--jitter" => a.jitter = num(&v)?,
            "--delay" => a.delay = num(&v)?,
            "--seed" => a.seed = num(&v)?,
            "--receivers" => a.receivers = num(&v)? as usize,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.url.is_empty() || a.key.is_empty() || a.room.is_empty() || a.wav.is_empty() {
        return Err("--url, --key, --room and --wav are required".into());
    }
    if !(0.0..=50.0).contains(&a.loss) {
        return Err("--loss: a percentage between 0 and 50".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse().map_err(|e| format!("impaired_sender: {e}"))?;
    let bytes = std::fs::read(&args.wav).map_err(|e| format!("{}: {e}", args.wav))?;
    let (pcm, rate) = wav::read_mono(&bytes).map_err(|e| format!("{}: {e}", args.wav))?;
    let client = SignallingClient::builder()
        .url(args.url.clone())
        .api_key(args.key.clone())
        .build()?;
    let room = RoomPeer::new(client);
    let source = AudioSource::new(AudioSourceOptions::new(rate, Layout::Mono))?;
    room.add_track(source.track());
    let mut events = room.events();
    room.join(&args.room, false).await?;
    let rate_f = args.loss / 100.0;
    let link = LinkConfig {
        delay: Duration::from_millis(args.delay),
        jitter: Duration::from_millis(args.jitter),
        loss: match (args.loss == 0.0, args.bursty) {
            (true, _) => Loss::None,
            (false, true) => Loss::Bursty {
                rate: rate_f,
                mean_burst: 3.0,
            },
            (false, false) => Loss::Random(rate_f),
        },
        ..LinkConfig::default()
    };
    let mut connected = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while connected.len() < args.receivers {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| "no receiver connected within 30 s")?
            .ok_or("the room closed")?;
        if let RoomEvent::ConnectionState {
            peer_id,
            state: PeerConnectionState::Connected,
        } = e
            && !connected.contains(&peer_id)
        {
            if let Some(remote) = room.remote(&peer_id) {
                remote.simulate_link(link.clone(), args.seed);
            }
            connected.push(peer_id);
        }
    }
    println!("connected");
    // Let the receivers' jitter buffers settle on the clean start, then play.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("playing");
    let chunk = rate as usize / 50;
    for part in pcm.chunks(chunk) {
        let bytes: Vec<u8> = part.iter().flat_map(|s| s.to_le_bytes()).collect();
        source.push(&bytes).await?;
    }
    source.end().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!("done");
    room.close().await;
    Ok(())
}
