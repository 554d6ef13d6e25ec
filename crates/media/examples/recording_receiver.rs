//! Join a room and record the first audio track that arrives, as Parlor's receiver hands it
//! to an application (`AudioFrames`: jitter buffer, FEC, concealment), into a 48 kHz mono
//! WAV file: the Rust receiver of `bench/network_browser.mjs`.
//!
//! ```text
//! cargo run -p parlor-media --example recording_receiver -- \
//!     --url ws://127.0.0.1:PORT --key pk_dev --room ROOM --out received.wav --seconds 45
//! ```
//!
//! Prints `joined` once in the room; writes the file after `--seconds` (or when the track
//! ends) and prints `wrote N samples`.

use std::time::Duration;

use parlor_media::{AudioFrames, wav};
use parlor_peer::SignallingClient;
use parlor_peer::room::{RoomEvent, RoomPeer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut url, mut key, mut room_name, mut out, mut seconds) = (
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        45u64,
    );
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => url = v,
            "--key" => key = v,
            "--room" => room_name = v,
            "--out" => out = v,
            "--seconds" => seconds = v.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if url.is_empty() || key.is_empty() || room_name.is_empty() || out.is_empty() {
        return Err("--url, --key, --room and --out are required".into());
    }
    let room = RoomPeer::new(SignallingClient::builder().url(url).api_key(key).build()?);
    let mut events = room.events();
    room.join(&room_name, false).await?;
    println!("joined");
    let mut pcm: Vec<i16> = Vec::new();
    let record =
        async {
            while let Some(e) = events.recv().await {
                let RoomEvent::Track { track, .. } = e else {
                    continue;
                };
                let Ok(mut frames) = AudioFrames::new(track) else {
                    continue;
                };
                while let Some(f) = frames.next().await {
                    let ch = usize::from(f.channels.max(1));
                    pcm.extend(f.samples.chunks_exact(ch).map(|s| {
                        (s.iter().map(|v| i32::from(*v)).sum::<i32>() / ch as i32) as i16
                    }));
                }
                return;
            }
        };
    let _ = tokio::time::timeout(Duration::from_secs(seconds), record).await;
    std::fs::write(&out, wav::write_mono(48_000, &pcm))?;
    println!("wrote {} samples", pcm.len());
    room.close().await;
    Ok(())
}
