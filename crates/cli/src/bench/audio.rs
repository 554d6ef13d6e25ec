//! `parlor bench audio`: N two-ended conversations (an agent's `AudioSource` → WebRTC → a
//! listener's `AudioFrames`) through an embedded server, all in this process, measured
//! side by side with the libopus floor on the same signal and settings.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use super::{clock_seconds, cpu_seconds, percentile, rss_bytes};
use serde_json::json;

use parlor_media::codec::{Decoder, Encoder};
use parlor_media::{AudioFrames, AudioSource, AudioSourceOptions, Layout, OpusSettings};
use parlor_peer::room::{RoomEvent, RoomPeer};
use parlor_peer::signalling::SignallingClient;

#[derive(Args, Debug)]
pub(crate) struct AudioArgs {
    /// Concurrent conversations (each has an agent and a listener peer).
    #[arg(long, default_value_t = 4)]
    conversations: usize,
    /// Measured seconds (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The agent's speech: `espeak` (eSpeak NG reading a fixed ~70 s passage, 22 050 Hz;
    /// needs the `espeak-ng` program) or `synthetic` (a formant-weighted 140 Hz voice).
    #[arg(long, value_enum, default_value_t = SignalKind::Espeak)]
    signal: SignalKind,
    /// Sample rate of the agent's PCM (what a TTS engine produces); default: the signal's
    /// own (22 050 Hz for eSpeak, 16 000 Hz synthetic). Other rates are resampled first.
    #[arg(long)]
    input_rate: Option<u32>,
    /// How the agent's speech arrives: this many ms of PCM per `push`, one push every as
    /// many ms, two pushes ahead (20 = a real-time stream; a streaming TTS engine usually
    /// delivers 100 ms or more at a time).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(10..=1000))]
    chunk_ms: u64,
    /// Complete runs (with `--python`, each one Parlor then Python); more than one prints
    /// every run and the medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// Opus complexity (0–10).
    #[arg(long, default_value_t = OpusSettings::default().complexity)]
    complexity: u8,
    /// Opus target bitrate in bit/s.
    #[arg(long, default_value_t = OpusSettings::default().bitrate)]
    bitrate: u32,
    /// Encode stereo instead of mono.
    #[arg(long)]
    stereo: bool,
    /// Turn in-band FEC off (on by default, coded only while the far end reports loss).
    #[arg(long)]
    no_fec: bool,
    /// Turn DTX on (off by default).
    #[arg(long)]
    dtx: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Then run the same work with the Python SDK (metered-realtime on aiortc) against the
    /// same server and print both side by side (needs Python ≥ 3.11; the script creates its
    /// venv on first use).
    #[arg(long)]
    python: bool,
    /// Then run the same Python program on the `parlor` package (`crates/python`: the
    /// reference API on Parlor's Rust core) against the same server, beside the others. The
    /// runner builds the package (release) into its venv first.
    #[arg(long)]
    python_parlor: bool,
    /// The Python side's runner.
    #[arg(long, default_value = "bench/run-python.sh")]
    python_runner: std::path::PathBuf,
}

/// One complete run: Parlor's figures, and the Python program's on the reference SDK
/// (`--python`) and on the `parlor` package (`--python-parlor`).
struct Run {
    parlor: serde_json::Value,
    python: Option<serde_json::Value>,
    python_parlor: Option<serde_json::Value>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignalKind {
    /// eSpeak NG reading [`PASSAGE`].
    Espeak,
    /// [`speech`].
    Synthetic,
}

/// What eSpeak reads for the bench: about 70 s of plain English at 160 words per minute.
const PASSAGE: &str = "The weather station on the hill records the wind, the rain and the \
temperature every ten minutes. In the morning the air was calm and cold, and a thin mist lay \
over the valley. By noon the sun had burned it away, and the farmers were out in the fields \
with their tractors. A voice agent answers the phone at the station when the staff are busy. \
It tells callers the forecast, takes messages, and asks them to spell their names when the \
line is noisy. Most callers want to know whether it will rain tomorrow, whether the road over \
the pass is open, and when the next storm is expected. The agent listens, thinks for a \
moment, and answers in a calm and friendly voice. If the caller interrupts, it stops talking \
at once and listens again. Numbers are read slowly: twelve degrees, forty kilometres per \
hour, seven millimetres of rain. At night the station is quiet. The instruments keep \
counting, the batteries charge from the small wind turbine on the roof, and the agent waits \
for the next call. On a busy day it takes more than two hundred calls, and nobody notices \
that the friendly voice on the line is a program running on a small computer in the corner \
of the office, next to the kettle and a stack of old weather maps.";

/// The bench signal as mono s16 PCM and its rate.
fn bench_signal(kind: SignalKind) -> anyhow::Result<(Vec<i16>, u32)> {
    match kind {
        SignalKind::Synthetic => Ok((speech(16_000, 72.0), 16_000)),
        SignalKind::Espeak => {
            let out = std::process::Command::new("espeak-ng")
                .args(["--stdout", "-v", "en-us", "-s", "160", PASSAGE])
                .output()
                .context(
                    "cannot run espeak-ng (Debian package espeak-ng), or use --signal synthetic",
                )?;
            anyhow::ensure!(out.status.success(), "espeak-ng failed: {}", out.status);
            parlor_media::wav::read_mono(&out.stdout).context("espeak-ng's WAV output")
        }
    }
}

/// A deterministic speech-like signal: a 140 Hz voice with formant-weighted harmonics,
/// syllables at ~4 Hz and pauses, at `rate`.
fn speech(rate: u32, secs: f64) -> Vec<i16> {
    let n = (f64::from(rate) * secs) as usize;
    let two_pi = 2.0 * std::f64::consts::PI;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let f0 = 140.0 + 20.0 * (two_pi * 0.7 * t).sin();
            let mut v = 0.0;
            for h in 1..=20 {
                let f = f0 * f64::from(h);
                if f > f64::from(rate) / 2.0 - 200.0 {
                    break;
                }
                let formant = (-((f - 700.0) / 300.0).powi(2)).exp()
                    + 0.6 * (-((f - 1_200.0) / 400.0).powi(2)).exp()
                    + 0.3 * (-((f - 2_500.0) / 500.0).powi(2)).exp();
                v += formant * (two_pi * f * t).sin();
            }
            let syllable = (two_pi * 4.0 * t).sin().max(0.0);
            let pause = if (t % 3.0) > 2.4 { 0.0 } else { 1.0 };
            (6_000.0 * v * syllable * pause).clamp(-32_000.0, 32_000.0) as i16
        })
        .collect()
}

/// `ms` of a loud 1 kHz tone as s16 bytes.
fn tone(rate: u32, ms: u32) -> Vec<u8> {
    let samples: Vec<i16> = (0..(rate * ms / 1_000) as usize)
        .map(|k| {
            (12_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * k as f64 / f64::from(rate)).sin())
                as i16
        })
        .collect();
    to_bytes(&samples)
}

fn to_bytes(s: &[i16]) -> Vec<u8> {
    s.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The signal as the encoder of an `AudioSource` sees it: at the Opus rate it picks for this
/// input, in the encoder's channel count. Returns the PCM and that rate.
fn encoder_input(
    settings: OpusSettings,
    signal: &[i16],
    rate: u32,
) -> anyhow::Result<(Vec<i16>, u32)> {
    let codec_rate = parlor_media::codec::codec_rate_for(rate);
    let mut pcm = Vec::new();
    parlor_media::StreamResampler::new(rate, codec_rate, 1)?.process(signal, &mut pcm)?;
    if settings.channels == 2 {
        pcm = pcm.iter().flat_map(|s| [*s, *s]).collect();
    }
    Ok((pcm, codec_rate))
}

/// libopus encode + decode CPU-s per audio-second on the same signal and settings.
fn opus_floor(settings: OpusSettings, signal: &[i16], rate: u32) -> anyhow::Result<f64> {
    let secs = signal.len() as f64 / f64::from(rate);
    let (pcm, codec_rate) = encoder_input(settings, signal, rate)?;
    let mut enc = Encoder::with_rate(settings, codec_rate)?;
    let mut dec = Decoder::new()?;
    let frame = enc.frame_samples() * usize::from(settings.channels);
    let start = thread_cpu();
    for chunk in pcm.chunks_exact(frame) {
        let packet = enc.encode(chunk)?;
        dec.decode(&packet)?;
    }
    Ok((thread_cpu() - start) / secs)
}

/// The paced floor: the same encode + decode work for `n` conversations on the real 20 ms
/// clock, each frame sent over loopback UDP and received, by threads that sleep between
/// ticks (one wake-up per tick for all the conversations a thread carries: the least a
/// real-time design pays on this machine). No RTP, no SRTP, no ICE, no async runtime.
/// Returns CPU-s per audio-second per conversation.
fn paced_floor(
    settings: OpusSettings,
    signal: &[i16],
    rate: u32,
    n: usize,
    secs: f64,
    hot_floor: f64,
) -> anyhow::Result<f64> {
    let (pcm, codec_rate) = encoder_input(settings, signal, rate)?;
    let frame = codec_rate as usize / 50 * usize::from(settings.channels);
    anyhow::ensure!(pcm.len() >= frame, "the signal is shorter than one frame");
    // One thread while it stays at most half busy; more only when the work needs them.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = ((n as f64 * hot_floor / 0.5).ceil() as usize).clamp(1, cores.min(n));
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(secs);
    let pcm = &pcm;
    let results: Vec<anyhow::Result<(f64, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine = n / threads + usize::from(t < n % threads);
                scope
                    .spawn(move || paced_thread(settings, codec_rate, pcm, frame, mine, start, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("paced floor thread panicked")))
            })
            .collect()
    });
    let (mut cpu, mut audio) = (0.0, 0.0);
    for r in results {
        let (c, a) = r?;
        cpu += c;
        audio += a;
    }
    anyhow::ensure!(audio > 0.0, "the paced floor processed no audio");
    Ok(cpu / audio)
}

/// One paced-floor thread: `n` encoder → UDP → decoder pairs, one frame each per tick from
/// `start` until `end`. Returns (this thread's CPU-s, audio-seconds processed).
fn paced_thread(
    settings: OpusSettings,
    codec_rate: u32,
    pcm: &[i16],
    frame: usize,
    n: usize,
    start: Instant,
    end: Instant,
) -> anyhow::Result<(f64, f64)> {
    let mut pairs = Vec::new();
    for _ in 0..n {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let rx = std::net::UdpSocket::bind("127.0.0.1:0")?;
        tx.connect(rx.local_addr()?)?;
        let enc = Encoder::with_rate(settings, codec_rate)?;
        pairs.push((tx, rx, enc, Decoder::new()?));
    }
    let frames = pcm.len() / frame;
    let mut buf = [0u8; 1500];
    let mut ticks = 0usize;
    let cpu0 = thread_cpu();
    loop {
        let at = start + Duration::from_millis(20 * ticks as u64);
        if at >= end {
            break;
        }
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        for (i, (tx, _, enc, _)) in pairs.iter_mut().enumerate() {
            // Conversations at different places of the passage, as in the pipeline.
            let f = (ticks + i * 97) % frames;
            let packet = enc.encode(&pcm[f * frame..(f + 1) * frame])?;
            tx.send(&packet)?;
        }
        for (_, rx, _, dec) in pairs.iter_mut() {
            let len = rx.recv(&mut buf)?;
            std::hint::black_box(dec.decode(&buf[..len])?);
        }
        ticks += 1;
    }
    Ok((thread_cpu() - cpu0, ticks as f64 * 0.02 * n as f64))
}

/// This thread's CPU time, to the nanosecond (the floors run on their own threads).
fn thread_cpu() -> f64 {
    clock_seconds(rustix::time::ClockId::ThreadCPUTime)
}

struct Conversation {
    agent: RoomPeer,
    listener: RoomPeer,
    source: Arc<AudioSource>,
    pusher: tokio::task::JoinHandle<()>,
    join_to_first_audio: Arc<Mutex<Option<Duration>>>,
}

pub(super) async fn audio(args: AudioArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.conversations >= 1,
        "--conversations must be at least 1"
    );
    if args.runs <= 1 {
        audio_once(&args, true).await?;
        return Ok(());
    }
    // Several complete runs (Parlor, then Python with `--python`, each time): the machine
    // is noisy, so the figures to quote are the medians.
    let mut runs = Vec::new();
    for r in 0..args.runs {
        eprintln!("run {} of {} ...", r + 1, args.runs);
        runs.push(audio_once(&args, false).await?);
    }
    print_runs(&args, &runs);
    Ok(())
}

/// One complete run; prints its own table when `print`.
async fn audio_once(args: &AudioArgs, print: bool) -> anyhow::Result<Run> {
    let settings = OpusSettings {
        channels: if args.stereo { 2 } else { 1 },
        complexity: args.complexity.min(10),
        bitrate: args.bitrate,
        fec: !args.no_fec,
        dtx: args.dtx,
    };
    let (native, native_rate) = bench_signal(args.signal)?;
    let rate = args.input_rate.unwrap_or(native_rate);
    let signal = if rate == native_rate {
        native
    } else {
        let mut out = Vec::new();
        parlor_media::StreamResampler::new(native_rate, rate, 1)?.process(&native, &mut out)?;
        out
    };
    let floor = opus_floor(settings, &signal, rate)?;
    let paced = paced_floor(
        settings,
        &signal,
        rate,
        args.conversations,
        args.seconds as f64,
        floor,
    )?;
    let signal_secs = signal.len() as f64 / f64::from(rate);

    let mut config = parlor_server::config::Config::default();
    config.add_dev_key("pk_bench");
    let server = parlor_server::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, config)?;
    let url = server.url();
    let client = || {
        SignallingClient::builder()
            .url(url.clone())
            .api_key("pk_bench")
            .build()
    };
    let rss0 = rss_bytes();
    let signal_bytes = Arc::new(to_bytes(&signal));
    let chunk = (u64::from(rate) * args.chunk_ms / 1000) as usize * 2; // s16 bytes per push
    // Latency probe (conversation 0): 40 ms bursts pushed into an idle source.
    let burst_pushed: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // When the probe's listener last got a loud frame (for the barge-in measurement).
    let last_loud: Arc<Mutex<Option<Instant>>> = Arc::default();
    let source_options = AudioSourceOptions::new(rate, Layout::Mono)
        .max_buffered(Duration::from_millis(200.max(3 * args.chunk_ms)))
        .opus(settings);

    let mut convs = Vec::new();
    let mut rss_first = 0;
    for i in 0..args.conversations {
        let room = format!("bench-{i}");
        let agent = RoomPeer::new(client()?);
        let listener = RoomPeer::new(client()?);
        let source = Arc::new(AudioSource::new(source_options.clone())?);
        agent.add_track(source.track());
        let mut events = listener.events();
        agent.join(&room, false).await.context("agent join")?;
        let joined = Instant::now();
        listener.join(&room, false).await.context("listener join")?;
        let first = Arc::new(Mutex::new(None));
        let (first2, probe) = (first.clone(), i == 0);
        let (pushed, lat, meas) = (burst_pushed.clone(), latencies.clone(), measuring.clone());
        let last_loud = last_loud.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let RoomEvent::Track { track, .. } = e else {
                    continue;
                };
                let Ok(mut frames) = AudioFrames::new(track) else {
                    return;
                };
                let mut was_loud = false;
                while let Some(f) = frames.next().await {
                    let peak = f
                        .samples
                        .iter()
                        .map(|s| s.unsigned_abs())
                        .max()
                        .unwrap_or(0);
                    {
                        let mut first = first2.lock().unwrap_or_else(|e| e.into_inner());
                        if first.is_none() && peak > 300 {
                            *first = Some(joined.elapsed());
                        }
                    }
                    if probe {
                        let loud = peak > 3_000;
                        if loud {
                            *last_loud.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(Instant::now());
                        }
                        if loud && !was_loud {
                            let at = {
                                let mut q = pushed.lock().unwrap_or_else(|e| e.into_inner());
                                // Bursts pushed before the call was up never arrive.
                                while q
                                    .front()
                                    .is_some_and(|t| t.elapsed() > Duration::from_millis(250))
                                {
                                    q.pop_front();
                                }
                                q.pop_front()
                            };
                            if let Some(t) = at
                                && meas.load(std::sync::atomic::Ordering::Relaxed)
                            {
                                lat.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(t.elapsed().as_secs_f64() * 1000.0);
                            }
                        }
                        was_loud = loud;
                    }
                }
                return;
            }
        });
        // The agent speaks in real time (a TTS stream), two pushes ahead.
        let (src, sig, pushed) = (source.clone(), signal_bytes.clone(), burst_pushed.clone());
        let chunk_ms = args.chunk_ms;
        let pusher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(chunk_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            if probe {
                let burst = tone(rate, 40);
                // Bursts land at a random phase of the source's 20 ms pacer (an LCG).
                let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
                loop {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let jitter = (seed >> 33) % 20_000;
                    tokio::time::sleep(Duration::from_micros(490_000 + jitter)).await;
                    pushed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(Instant::now());
                    if src.push(&burst).await.is_err() {
                        return;
                    }
                }
            }
            let mut pos = 0usize;
            for _ in 0..2 {
                let _ = src.push(&sig[pos..pos + chunk]).await;
                pos += chunk;
            }
            loop {
                tick.tick().await;
                if pos + chunk > sig.len() {
                    pos = 0;
                }
                if src.push(&sig[pos..pos + chunk]).await.is_err() {
                    return;
                }
                pos += chunk;
            }
        });
        convs.push(Conversation {
            agent,
            listener,
            source,
            pusher,
            join_to_first_audio: first,
        });
        if i == 0 && args.conversations > 1 {
            // The first conversation also pays one-time costs (threads, crypto, codec
            // tables): let its call come up, then count what each further one adds.
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss_first = rss_bytes();
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_setup = rss_bytes();
    let underruns0: u64 = convs.iter().skip(1).map(|c| c.source.underruns()).sum();
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (cpu1, wall) = (cpu_seconds(), t0.elapsed().as_secs_f64());
    measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    let underruns: u64 = convs
        .iter()
        .skip(1)
        .map(|c| c.source.underruns())
        .sum::<u64>()
        - underruns0;
    let n = args.conversations as f64;
    let cpu_per = (cpu1 - cpu0) / wall / n;
    let mut lat = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Barge-in (conversation 0): one source per utterance on the agent's track; `stop()` in
    // the middle of a loud utterance, then the last loud frame the listener receives tells
    // how long the voice went on.
    convs[0].pusher.abort();
    convs[0].source.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let utterance = Arc::new(tone(rate, 1_000));
    let mut barge = Vec::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..10 {
        let src = Arc::new(AudioSource::with_track(
            source_options.clone(),
            convs[0].source.track().clone(),
        )?);
        let started = Instant::now();
        let (s2, u2) = (src.clone(), utterance.clone());
        let push = tokio::spawn(async move {
            let _ = s2.push(&u2).await;
        });
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        tokio::time::sleep(Duration::from_micros(400_000 + (seed >> 33) % 20_000)).await;
        let stopped = Instant::now();
        src.stop();
        tokio::time::sleep(Duration::from_millis(300)).await;
        push.abort();
        let last = *last_loud.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = last.filter(|t| *t > started) {
            barge.push(last.saturating_duration_since(stopped).as_secs_f64() * 1000.0);
        }
    }
    let barge_trials = barge.len();
    // The probe conversation's first audio waits for its first burst; leave it out.
    let mut joins: Vec<f64> = convs
        .iter()
        .skip(usize::from(convs.len() > 1))
        .filter_map(|c| {
            *c.join_to_first_audio
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        })
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let got_audio = joins.len();
    // Adaptive FEC: the loss the encoders were told at the end (0 on loopback, like the floor's).
    let expected_loss = convs
        .iter()
        .map(|c| c.source.expected_loss_percent())
        .max()
        .unwrap_or(0);
    let join_expected = convs.len() - usize::from(convs.len() > 1);
    let rss_per = rss_setup.saturating_sub(rss0) as f64 / n;
    let rss_per_extra =
        (args.conversations > 1).then(|| rss_setup.saturating_sub(rss_first) as f64 / (n - 1.0));
    let result = json!({
        "conversations": args.conversations,
        "seconds": wall,
        "signal": format!("{:?}", args.signal).to_lowercase(),
        "signal_seconds": signal_secs,
        "input_rate": rate,
        "chunk_ms": args.chunk_ms,
        "opus": {"channels": settings.channels, "complexity": settings.complexity,
                 "bitrate": settings.bitrate, "fec": settings.fec, "dtx": settings.dtx,
                 "fec_expected_loss_percent": expected_loss},
        "cpu_s_per_audio_s_per_conversation": cpu_per,
        "libopus_floor_cpu_s_per_audio_s": floor,
        "ratio_to_floor": cpu_per / floor,
        "paced_floor_cpu_s_per_audio_s_per_conversation": paced,
        "ratio_to_paced_floor": cpu_per / paced,
        "push_to_frame_ms_p50": percentile(&mut lat, 0.5),
        "push_to_frame_ms_p95": percentile(&mut lat, 0.95),
        "latency_samples": lat.len(),
        "join_to_first_audio_ms_p50": percentile(&mut joins, 0.5),
        "join_to_first_audio_ms_max": joins.iter().copied().fold(f64::NAN, f64::max),
        "conversations_with_audio": got_audio,
        "rss_bytes_per_conversation": rss_per,
        "rss_bytes_per_extra_conversation": rss_per_extra,
        "underruns": underruns,
        "barge_in_stop_to_last_audio_ms_p50": percentile(&mut barge, 0.5),
        "barge_in_stop_to_last_audio_ms_max": barge.iter().copied().fold(f64::NAN, f64::max),
        "barge_in_trials": barge_trials,
    });
    for c in convs {
        c.source.stop();
        c.agent.close().await;
        c.listener.close().await;
    }
    let python = if args.python {
        Some(run_python(args, &url, &signal_bytes, rate, "metered").await?)
    } else {
        None
    };
    let python_parlor = if args.python_parlor {
        Some(run_python(args, &url, &signal_bytes, rate, "parlor").await?)
    } else {
        None
    };
    server.shutdown().await.ok();
    let run = Run {
        parlor: result,
        python,
        python_parlor,
    };
    // With `--runs K`, `print_runs` prints one table for all runs instead.
    if !print {
        return Ok(run);
    }
    let result = &run.parlor;
    if args.json {
        println!(
            "{}",
            json!({"parlor": result, "python": run.python, "python_parlor": run.python_parlor})
        );
    } else if run.python.is_some() || run.python_parlor.is_some() {
        print_side_by_side(args, &run);
    } else {
        println!(
            "parlor bench audio — {} conversations × {:.1} s, {} speech ({:.0} s) at {} Hz in, Opus {} c{} {} kbit/s fec={} dtx={}",
            args.conversations,
            wall,
            result["signal"].as_str().unwrap_or(""),
            signal_secs,
            rate,
            if settings.channels == 1 {
                "mono"
            } else {
                "stereo"
            },
            settings.complexity,
            settings.bitrate / 1000,
            if settings.fec {
                format!("adaptive (at {expected_loss} % reported loss)")
            } else {
                "off".to_owned()
            },
            settings.dtx
        );
        println!("| metric | value |\n|---|---|");
        println!("| CPU-s per audio-s per conversation (both ends + server) | {cpu_per:.4} |");
        println!("| libopus floor (encode + decode, same signal/settings) | {floor:.4} |");
        println!("| ratio to floor | {:.2}× |", cpu_per / floor);
        println!(
            "| paced floor (the same codec work on the 20 ms clock over loopback UDP, no WebRTC) | {paced:.4} ({:.2}× the floor) |",
            paced / floor
        );
        println!("| ratio to paced floor | {:.2}× |", cpu_per / paced);
        println!(
            "| push→frame latency p50 / p95 | {:.1} / {:.1} ms ({} bursts) |",
            result["push_to_frame_ms_p50"].as_f64().unwrap_or(f64::NAN),
            result["push_to_frame_ms_p95"].as_f64().unwrap_or(f64::NAN),
            result["latency_samples"]
        );
        println!(
            "| join→first audio p50 / max (probe excluded) | {:.0} / {:.0} ms ({got_audio}/{join_expected} with audio) |",
            result["join_to_first_audio_ms_p50"]
                .as_f64()
                .unwrap_or(f64::NAN),
            result["join_to_first_audio_ms_max"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        println!("| RSS per conversation | {:.2} MB |", rss_per / 1e6);
        if let Some(extra) = rss_per_extra {
            println!(
                "| RSS per extra conversation (after the first) | {:.2} MB |",
                extra / 1e6
            );
        }
        println!("| underruns (measured window, excluding the probe) | {underruns} |");
        println!(
            "| barge-in: stop() → last agent audio at the listener p50 / max | {:.1} / {:.1} ms ({barge_trials} trials) |",
            result["barge_in_stop_to_last_audio_ms_p50"]
                .as_f64()
                .unwrap_or(f64::NAN),
            result["barge_in_stop_to_last_audio_ms_max"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }
    Ok(run)
}

/// The table (or JSON) of several runs, with the medians to quote.
fn print_runs(args: &AudioArgs, runs: &[Run]) {
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let cpu = "cpu_s_per_audio_s_per_conversation";
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let parlor: Vec<f64> = runs.iter().map(|r| f(&r.parlor, cpu)).collect();
    let floor: Vec<f64> = runs
        .iter()
        .map(|r| f(&r.parlor, "libopus_floor_cpu_s_per_audio_s"))
        .collect();
    let to_floor: Vec<f64> = runs
        .iter()
        .map(|r| f(&r.parlor, "ratio_to_floor"))
        .collect();
    let paced: Vec<f64> = runs
        .iter()
        .map(|r| f(&r.parlor, "paced_floor_cpu_s_per_audio_s_per_conversation"))
        .collect();
    let to_paced: Vec<f64> = runs
        .iter()
        .map(|r| f(&r.parlor, "ratio_to_paced_floor"))
        .collect();
    let python: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.python.as_ref().map(|p| f(p, cpu)))
        .collect();
    let times: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.python.as_ref().map(|p| f(p, cpu) / f(&r.parlor, cpu)))
        .collect();
    let on_core: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.python_parlor.as_ref().map(|p| f(p, cpu)))
        .collect();
    let on_core_times: Vec<f64> = runs
        .iter()
        .filter_map(|r| {
            r.python_parlor
                .as_ref()
                .map(|p| f(p, cpu) / f(&r.parlor, cpu))
        })
        .collect();
    let has_python = python.len() == runs.len();
    let has_on_core = on_core.len() == runs.len();
    if args.json {
        let list: Vec<_> = runs
            .iter()
            .map(|r| json!({"parlor": r.parlor, "python": r.python, "python_parlor": r.python_parlor}))
            .collect();
        println!(
            "{}",
            json!({
                "runs": list,
                "median": {
                    "parlor_cpu_s_per_audio_s_per_conversation": median(parlor.clone()),
                    "libopus_floor_cpu_s_per_audio_s": median(floor.clone()),
                    "ratio_to_floor": median(to_floor.clone()),
                    "paced_floor_cpu_s_per_audio_s_per_conversation": median(paced.clone()),
                    "ratio_to_paced_floor": median(to_paced.clone()),
                    "python_cpu_s_per_audio_s_per_conversation":
                        has_python.then(|| median(python.clone())),
                    "python_over_parlor": has_python.then(|| median(times.clone())),
                    "python_parlor_cpu_s_per_audio_s_per_conversation":
                        has_on_core.then(|| median(on_core.clone())),
                    "python_parlor_over_parlor": has_on_core.then(|| median(on_core_times.clone())),
                },
            })
        );
        return;
    }
    println!(
        "parlor bench audio — {} conversations × {} s, {} runs{}",
        args.conversations,
        args.seconds,
        runs.len(),
        if has_python {
            ", each Parlor then the Python SDK"
        } else {
            ""
        }
    );
    // (Parlor, floor, Parlor ÷ floor, paced floor, Parlor ÷ paced floor)
    let cols = |a: [f64; 5], u: &str, d: Option<(f64, f64)>| {
        let [p, fl, tf, pf, tp] = a;
        let head = format!("| {p:.4} | {fl:.4} | {tf:.2}× | {pf:.4} | {tp:.2}× | {u} |");
        match d {
            Some((py, x)) => format!("{head} {py:.4} | {x:.2}× |"),
            None => head,
        }
    };
    let head = "| run | Parlor CPU-s per audio-s per conversation | libopus floor | Parlor ÷ floor | paced floor | Parlor ÷ paced floor | Parlor underruns |";
    if has_python {
        println!("{head} Python SDK | Python ÷ Parlor |\n|---|---|---|---|---|---|---|---|---|");
    } else {
        println!("{head}\n|---|---|---|---|---|---|---|");
    }
    let mut underruns = 0;
    for (i, r) in runs.iter().enumerate() {
        let u = r.parlor["underruns"].as_u64().unwrap_or(0);
        underruns += u;
        let py = has_python.then(|| (python[i], times[i]));
        let row = cols(
            [parlor[i], floor[i], to_floor[i], paced[i], to_paced[i]],
            &u.to_string(),
            py,
        );
        println!("| {} {row}", i + 1);
    }
    let py = has_python.then(|| (median(python.clone()), median(times.clone())));
    println!(
        "| **median** {}",
        cols(
            [
                median(parlor.clone()),
                median(floor.clone()),
                median(to_floor.clone()),
                median(paced.clone()),
                median(to_paced.clone()),
            ],
            &format!("{underruns} in all"),
            py
        )
    );
    if has_on_core {
        println!(
            "\n| run | the Python program on the `parlor` package (CPU-s per audio-s per conversation) | ÷ Parlor (Rust) |{}\n|---|---|---|{}",
            if has_python {
                " Python SDK ÷ it |"
            } else {
                ""
            },
            if has_python { "---|" } else { "" }
        );
        for i in 0..runs.len() {
            let vs = if has_python {
                format!(" {:.2}× |", python[i] / on_core[i])
            } else {
                String::new()
            };
            println!(
                "| {} | {:.4} | {:.2}× |{vs}",
                i + 1,
                on_core[i],
                on_core_times[i]
            );
        }
        let vs = if has_python {
            let x: Vec<f64> = python.iter().zip(&on_core).map(|(p, c)| p / c).collect();
            format!(" {:.2}× |", median(x))
        } else {
            String::new()
        };
        println!(
            "| **median** | {:.4} | {:.2}× |{vs}",
            median(on_core.clone()),
            median(on_core_times.clone())
        );
    }
}

/// The Python program on `sdk`: `metered` (the reference SDK on aiortc) or `parlor` (the
/// `parlor` package on the Rust core).
async fn run_python(
    args: &AudioArgs,
    url: &str,
    signal: &[u8],
    rate: u32,
    sdk: &str,
) -> anyhow::Result<serde_json::Value> {
    let pcm = std::env::temp_dir().join(format!("parlor-bench-{}.pcm", std::process::id()));
    std::fs::write(&pcm, signal)?;
    eprintln!("running the Python program ({sdk}) on the same work ...");
    let mut cmd = std::process::Command::new(&args.python_runner);
    cmd.arg("--sdk")
        .arg(sdk)
        .arg("--url")
        .arg(url)
        .arg("--conversations")
        .arg(args.conversations.to_string())
        .arg("--seconds")
        .arg(args.seconds.to_string())
        .arg("--pcm")
        .arg(&pcm)
        .arg("--rate")
        .arg(rate.to_string())
        .arg("--chunk-ms")
        .arg(args.chunk_ms.to_string())
        .stderr(std::process::Stdio::inherit());
    let runner = args.python_runner.display().to_string();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("cannot run {runner}"))?;
    let _ = std::fs::remove_file(&pcm);
    anyhow::ensure!(
        out.status.success(),
        "the Python bench failed: {}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line from the Python bench")?;
    Ok(serde_json::from_str(line)?)
}

fn print_side_by_side(args: &AudioArgs, run: &Run) {
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let rust = &run.parlor;
    // Columns: Parlor (Rust), then each Python run present, then their ratios to Rust.
    let mut cols: Vec<(&str, &serde_json::Value)> = vec![("Parlor (Rust)", rust)];
    if let Some(p) = &run.python_parlor {
        cols.push(("Python on the `parlor` package", p));
    }
    if let Some(p) = &run.python {
        cols.push(("Python SDK (aiortc)", p));
    }
    println!(
        "parlor bench audio --python — {} conversations × {} s, same signal, same server",
        args.conversations, args.seconds
    );
    let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
    let ratios: Vec<String> = cols[1..]
        .iter()
        .map(|(n, _)| format!("{n} ÷ Rust"))
        .collect();
    println!(
        "| metric | {} | {} |\n|---|{}",
        names.join(" | "),
        ratios.join(" | "),
        "---|".repeat(names.len() + ratios.len())
    );
    let row = |name: &str, k: &str, scale: f64, digits: usize, unit: &str| {
        let base = f(rust, k) * scale;
        let vals: Vec<String> = cols
            .iter()
            .map(|(_, v)| format!("{:.digits$}{unit}", f(v, k) * scale))
            .collect();
        let rel: Vec<String> = cols[1..]
            .iter()
            .map(|(_, v)| format!("{:.2}×", f(v, k) * scale / base))
            .collect();
        println!("| {name} | {} | {} |", vals.join(" | "), rel.join(" | "));
    };
    let cpu = "cpu_s_per_audio_s_per_conversation";
    row("CPU-s per audio-s per conversation", cpu, 1.0, 4, "");
    row("push→frame p50", "push_to_frame_ms_p50", 1.0, 1, " ms");
    row("push→frame p95", "push_to_frame_ms_p95", 1.0, 1, " ms");
    row(
        "join→first audio p50",
        "join_to_first_audio_ms_p50",
        1.0,
        0,
        " ms",
    );
    row(
        "join→first audio max",
        "join_to_first_audio_ms_max",
        1.0,
        0,
        " ms",
    );
    row(
        "RSS per conversation",
        "rss_bytes_per_conversation",
        1e-6,
        2,
        " MB",
    );
    row(
        "RSS per extra conversation",
        "rss_bytes_per_extra_conversation",
        1e-6,
        2,
        " MB",
    );
    if let Some(p) = &run.python_parlor {
        println!(
            "| underruns (Python on the package; the Rust run: {}) | {} | |",
            rust["underruns"], p["underruns"]
        );
        println!("| `import parlor` | {:.3} s | |", f(p, "import_seconds"));
    }
    println!(
        "| libopus floor | {:.4} | | |",
        f(rust, "libopus_floor_cpu_s_per_audio_s")
    );
    println!(
        "| paced floor (codec on the 20 ms clock, UDP, no WebRTC) | {:.4} | | |",
        f(rust, "paced_floor_cpu_s_per_audio_s_per_conversation")
    );
}
