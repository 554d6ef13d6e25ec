//! AudioSource → WebRTC → AudioFrames between two Rust peers through the real server, and
//! the source's buffering contract.

use std::time::Duration;

use parlor_media::codec::packet_has_fec;
use parlor_media::{
    AudioFrames, AudioSource, AudioSourceOptions, Layout, MediaError, SpeechDownsampler,
};
use parlor_peer::RemoteTrack;
use parlor_peer::room::{RoomEvent, RoomEvents, RoomPeer};
use parlor_peer::signalling::SignallingClient;
use parlor_server::config::Config;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(20);

fn sine_bytes(rate: u32, freq: f64, start: usize, n: usize) -> Vec<u8> {
    (start..start + n)
        .flat_map(|i| {
            let v =
                10_000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin();
            (v as i16).to_le_bytes()
        })
        .collect()
}

/// A voiced sound (140 Hz and harmonics, a 3 Hz syllable envelope) as s16le bytes.
fn voice_bytes(rate: u32, start: usize, n: usize) -> Vec<u8> {
    (start..start + n)
        .flat_map(|i| {
            let t = i as f64 / f64::from(rate);
            let env = 0.6 + 0.4 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            let s: f64 = (1..=12)
                .map(|h| (2.0 * std::f64::consts::PI * 140.0 * h as f64 * t).sin() / h as f64)
                .sum();
            ((s * env * 6_000.0) as i16).to_le_bytes()
        })
        .collect()
}

/// Dominant frequency by zero crossings.
fn frequency(samples: &[i16], rate: u32) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    crossings as f64 / 2.0 / (samples.len() as f64 / f64::from(rate))
}

/// A server on a free port and two room peers (not yet joined) that use it.
async fn two_peers() -> (parlor_server::ServerHandle, RoomPeer, RoomPeer) {
    let mut config = Config::default();
    config.add_dev_key("pk_test_x");
    let server = parlor_server::spawn(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        config,
    )
    .expect("server");
    let client = || {
        SignallingClient::builder()
            .url(server.url())
            .api_key("pk_test_x")
            .build()
            .expect("client")
    };
    let (a, b) = (RoomPeer::new(client()), RoomPeer::new(client()));
    (server, a, b)
}

/// The first remote track announced on `events`.
async fn first_track(events: &mut RoomEvents) -> RemoteTrack {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(RoomEvent::Track { track, .. }) = events.recv().await {
                return track;
            }
        }
    })
    .await
    .expect("track")
}

#[test]
fn bad_options_are_clear_errors() {
    assert_eq!(
        Layout::parse("5.1"),
        Err(MediaError::UnknownLayout("5.1".into()))
    );
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let e = AudioSource::new(AudioSourceOptions::new(1_000, Layout::Mono)).err();
        assert_eq!(e, Some(MediaError::UnsupportedRate(1_000)));
    });
}

#[tokio::test]
async fn push_suspends_at_the_cap_and_end_drains() {
    let src = AudioSource::new(
        AudioSourceOptions::new(16_000, Layout::Mono).max_buffered(Duration::from_millis(200)),
    )
    .expect("source");
    // One push of 1 s (with an odd byte carried over) must not buffer more than the cap.
    let mut pcm = sine_bytes(16_000, 440.0, 0, 16_000);
    pcm.push(0x12);
    let src = std::sync::Arc::new(src);
    let s2 = src.clone();
    let pusher = tokio::spawn(async move { s2.push(&pcm).await });
    let mut max_seen: f64 = 0.0;
    while !pusher.is_finished() {
        max_seen = max_seen.max(src.buffered_seconds());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pusher.await.expect("join").expect("push");
    // The cap plus one 20 ms piece of input converted while under it.
    assert!(max_seen <= 0.2 + 0.021, "buffered {max_seen} s");
    assert!(src.frames_sent() >= 30, "pacer ran during the push");
    src.end().await;
    assert_eq!(src.buffered_seconds(), 0.0);
    src.end().await; // idempotent
    src.push(&[0, 0]).await.expect("no-op after end");
    assert_eq!(src.buffered_seconds(), 0.0);
}

#[tokio::test]
async fn try_push_takes_what_fits_and_nothing_else() {
    let src = AudioSource::new(
        AudioSourceOptions::new(16_000, Layout::Mono).max_buffered(Duration::from_millis(200)),
    )
    .expect("source");
    // 100 ms fits: taken at once, with its odd byte carried as `push` carries it.
    let mut pcm = sine_bytes(16_000, 440.0, 0, 1_600);
    pcm.push(0x12);
    assert_eq!(src.try_push(&pcm), Ok(true));
    let after_one = src.buffered_seconds();
    assert!((0.08..=0.11).contains(&after_one), "buffered {after_one} s");
    // Another 200 ms would go over the cap: refused whole, nothing taken.
    let big = sine_bytes(16_000, 440.0, 0, 3_200);
    assert_eq!(src.try_push(&big), Ok(false));
    assert!(src.buffered_seconds() <= after_one);
    // `push` takes it, waiting for the pacer to make room.
    src.push(&big).await.expect("push");
    src.stop();
    assert_eq!(src.try_push(&big), Ok(true), "a no-op after stop, as push");
    assert_eq!(src.buffered_seconds(), 0.0);
}

#[tokio::test]
async fn stop_drops_the_buffer_at_once() {
    let src = AudioSource::new(AudioSourceOptions::new(48_000, Layout::Stereo)).expect("source");
    src.push(&vec![0u8; 48_000 * 4]).await.expect("push 1 s");
    assert!(src.buffered_seconds() > 0.9);
    src.stop();
    assert_eq!(src.buffered_seconds(), 0.0);
    let sent = src.frames_sent();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(src.frames_sent(), sent, "no frame after stop");
    src.end().await; // returns at once after stop
}

#[tokio::test]
async fn pause_holds_the_buffer_sends_silence_and_resume_goes_on() {
    let src = AudioSource::new(AudioSourceOptions::new(48_000, Layout::Mono)).expect("source");
    src.push(&sine_bytes(48_000, 440.0, 0, 48_000))
        .await
        .expect("push 1 s");
    src.pause();
    assert!(src.is_paused());
    let held = src.buffered_seconds();
    let sent = src.frames_sent();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The stream's timing goes on (silent frames), the speech waits.
    assert!(src.frames_sent() >= sent + 5, "silence frames while paused");
    assert!(
        (src.buffered_seconds() - held).abs() < 1e-9,
        "nothing drained while paused"
    );
    assert_eq!(src.underruns(), 0, "a pause is not an underrun");
    src.resume();
    assert!(!src.is_paused());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        src.buffered_seconds() < held - 0.1,
        "drains again after resume"
    );
    src.end().await;
    assert_eq!(src.buffered_seconds(), 0.0);
}

#[tokio::test]
async fn buffered_seconds_hold_at_every_input_rate() {
    // The encoder runs at the smallest Opus rate that keeps the input's bandwidth (22.05 kHz
    // → 24 kHz, 44.1 kHz → 48 kHz, 8 kHz as is): a second in is a second buffered.
    for (rate, layout) in [
        (8_000, Layout::Mono),
        (22_050, Layout::Mono),
        (24_000, Layout::Stereo),
        (44_100, Layout::Stereo),
    ] {
        let src = AudioSource::new(AudioSourceOptions::new(rate, layout)).expect("source");
        let channels = if layout == Layout::Stereo { 2 } else { 1 };
        let bytes = rate as usize / 2 * 2 * channels;
        src.push(&vec![0u8; bytes]).await.expect("push 0.5 s");
        let b = src.buffered_seconds();
        assert!((0.44..=0.51).contains(&b), "{rate} Hz {layout:?}: {b} s");
        src.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sine_crosses_webrtc_and_comes_out_at_16k() {
    let (_server, a, b) = two_peers().await;
    let mut eb = b.events();
    let voice = AudioSource::new(AudioSourceOptions::new(16_000, Layout::Mono)).expect("source");
    a.add_track(voice.track());
    a.join("media", false).await.expect("join a");
    b.join("media", false).await.expect("join b");
    let track = first_track(&mut eb).await;
    let pusher = tokio::spawn(async move {
        // 3 s of a 440 Hz tone in 20 ms pushes (backpressure paces the loop).
        for k in 0..150 {
            voice
                .push(&sine_bytes(16_000, 440.0, k * 320, 320))
                .await
                .expect("push");
        }
        voice.end().await;
        voice
    });
    let mut frames = AudioFrames::new(track).expect("audio");
    let mut down = SpeechDownsampler::new().expect("downsampler");
    let mut pcm = Vec::new();
    tokio::time::timeout(WAIT, async {
        while pcm.len() < 16_000 * 2 {
            let f = frames.next().await.expect("frame");
            assert_eq!((f.channels, f.sample_rate, f.len()), (2, 48_000, 960));
            down.process(&f, &mut pcm).expect("downsample");
        }
    })
    .await
    .expect("2 s of audio");
    // Skip silence before the tone reached the source, then measure 1 s.
    let start = pcm
        .iter()
        .position(|s| s.abs() > 2_000)
        .expect("tone arrives");
    let window = &pcm[start + 1_600..(start + 17_600).min(pcm.len())];
    let f = frequency(window, 16_000);
    let peak = window.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    println!("received {f:.1} Hz, peak {peak}");
    assert!((f - 440.0).abs() < 10.0, "{f} Hz");
    assert!(peak > 5_000, "peak {peak}");
    let voice = pusher.await.expect("pusher");
    assert_eq!(voice.buffered_seconds(), 0.0);
    a.close().await;
    b.close().await;
}

/// In-band FEC follows the loss the listener reports in RTCP: none on a clean link, coded
/// once a lossy link is reported (here 20 % of the agent's RTP dropped), and off again when
/// the loss ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fec_follows_the_loss_the_listener_reports() {
    let (_server, a, b) = two_peers().await;
    let mut eb = b.events();
    let voice = std::sync::Arc::new(
        AudioSource::new(AudioSourceOptions::new(16_000, Layout::Mono)).expect("source"),
    );
    a.add_track(voice.track());
    a.join("fec", false).await.expect("join a");
    b.join("fec", false).await.expect("join b");
    let track = first_track(&mut eb).await;
    // Speech until aborted, in 20 ms pushes (backpressure paces the loop).
    let speak = |v: std::sync::Arc<AudioSource>| {
        tokio::spawn(async move {
            for k in 0.. {
                if v.push(&voice_bytes(16_000, k * 320, 320)).await.is_err() {
                    break;
                }
                // A yield each time, so that `abort` takes: after `stop`, `push` returns at
                // once, and a task that never yields cannot be cancelled (the runtime's
                // shutdown then waits on it forever).
                tokio::task::yield_now().await;
            }
        })
    };
    let pusher = speak(voice.clone());
    // Whether each received packet carries FEC, read as it arrives.
    let (fec_tx, fec_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(f) = track.recv().await {
            if fec_tx.send(packet_has_fec(&f.data)).is_err() {
                break;
            }
        }
    });
    let fec_rx = tokio::sync::Mutex::new(fec_rx);
    // Packets with FEC among the next `n` received (what arrived before is skipped).
    let with_fec = |n: usize| {
        let fec_rx = &fec_rx;
        async move {
            let mut rx = fec_rx.lock().await;
            while rx.try_recv().is_ok() {}
            let mut fec = 0;
            for _ in 0..n {
                let f = tokio::time::timeout(WAIT, rx.recv())
                    .await
                    .expect("a frame in time")
                    .expect("track live");
                fec += usize::from(f);
            }
            fec
        }
    };
    // A clean link: no FEC, no cost.
    assert_eq!(with_fec(100).await, 0, "FEC on a clean link");
    assert_eq!(voice.expected_loss_percent(), 0);
    assert_eq!(voice.track().reported_loss().unwrap_or(0.0), 0.0);

    let b_at_a = a.remote(&b.peer_id().expect("b id")).expect("b at a");
    b_at_a.simulate_packet_loss(0.2);
    // Receiver reports come every 5 s for audio.
    tokio::time::timeout(WAIT, async {
        while voice.expected_loss_percent() == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the encoder learns of the loss");
    let reported = voice.track().reported_loss().unwrap_or(0.0);
    println!(
        "reported loss {reported:.3}, encoder expects {} %",
        voice.expected_loss_percent()
    );
    assert!((0.1..0.3).contains(&reported), "reported {reported}");
    assert_eq!(voice.expected_loss_percent(), 10);
    // 80 of 100 sent packets arrive; most carry the previous frame's FEC.
    let fec = with_fec(80).await;
    println!("{fec} of 80 packets received carry FEC");
    assert!(fec >= 20, "{fec} of 80 packets carry FEC");

    // The next utterance (a new source on the same track, as the agent makes one after a
    // barge-in) starts protected: the track keeps the far end's report, so its first
    // packets carry FEC without waiting for the pacer's first look (25 frames).
    pusher.abort();
    voice.stop();
    let voice = std::sync::Arc::new(
        AudioSource::with_track(
            AudioSourceOptions::new(16_000, Layout::Mono),
            voice.track().clone(),
        )
        .expect("next source"),
    );
    assert_eq!(voice.expected_loss_percent(), 10, "the next utterance");
    let pusher = speak(voice.clone());
    let fec = with_fec(20).await;
    println!("{fec} of the next utterance's first 20 packets received carry FEC");
    assert!(
        fec >= 5,
        "{fec} of the next utterance's first 20 packets carry FEC"
    );

    b_at_a.simulate_packet_loss(0.0);
    tokio::time::timeout(WAIT, async {
        while voice.expected_loss_percent() != 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the encoder learns the loss ended");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The next second carries none.
    assert_eq!(with_fec(50).await, 0, "FEC after the loss ended");

    // The pusher first: after `stop`, `push` is a no-op that never suspends (the pusher
    // yields after each push, so the abort takes even if it is running right now).
    pusher.abort();
    voice.stop();
    reader.abort();
    a.close().await;
    b.close().await;
}

/// Five sources, each fed 20 ms 5 ms before a tick and its next 20 ms `late_ms` after that
/// was due (5 ms before the next tick); the underruns of all five.
async fn underruns_with_a_push_late_by(late_ms: u64) -> u64 {
    let mut underruns = 0;
    for _ in 0..5 {
        let src = AudioSource::new(AudioSourceOptions::new(48_000, Layout::Mono)).expect("source");
        // The pacer ticks (and counts a frame) every 20 ms from the start, audio or not.
        let sent = src.frames_sent();
        while src.frames_sent() == sent {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(14)).await;
        let due = tokio::time::Instant::now() + Duration::from_millis(20);
        src.push(&sine_bytes(48_000, 440.0, 0, 960))
            .await
            .expect("push");
        tokio::time::sleep_until(due + Duration::from_millis(late_ms)).await;
        src.push(&sine_bytes(48_000, 440.0, 960, 960))
            .await
            .expect("push");
        src.end().await; // the stream ends here (an ending source does not underrun)
        underruns += src.underruns();
    }
    underruns
}

#[tokio::test]
async fn a_push_a_few_ms_late_is_waited_for_not_padded_with_silence() {
    // The second push lands ~1 ms after the tick it was meant for, when the buffer is empty
    // mid-stream: the pacer waits for it (up to 10 ms) and sends it whole, instead of a
    // frame of silence that would also leave the rest of the stream 20 ms later. Real time
    // on a shared machine: one wake-up 9 ms late in five is allowed.
    let waited = underruns_with_a_push_late_by(6).await;
    assert!(
        waited <= 1,
        "{waited} underruns in 5 with the push 1 ms after the tick"
    );
    // Later than the grace, the frame goes out as silence, as before.
    let late = underruns_with_a_push_late_by(18).await;
    assert!(
        late >= 4,
        "{late} underruns in 5 with the push 13 ms after the tick"
    );
}
