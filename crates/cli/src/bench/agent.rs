//! `parlor bench agent`: how many agent sessions one core holds.
//!
//! An embedded server with `[agents]` (rooms `call-*` get the `voice` agent) and a real
//! `parlor worker` child process (this binary) with `--engines listen` (Silero VAD alone: a
//! listening session), `neural` (the demo's engines: voice-to-voice turns) or `basic`. N
//! humans (Rust peers in this process) each join their own room and, once their agent is
//! in, speak a question with pauses, over and over. After everyone is in and a warm-up, the
//! worker's CPU time over `--secs` gives its CPU per session and so the sessions one core
//! holds; with `neural`, each human also waits for the answer's first audio after each
//! question (voice-to-voice, measured from the last sample of the question).
//!
//! The humans' audio loop can be written as a WAV (`--wav`) for a reference run on the same
//! audio: `bench/pipecat/listen.py` runs Pipecat's SmallWebRTC transport and Silero VAD
//! under the same load, and `bench/agent_capacity.py` runs both side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use parlor_agent::TextToSpeech;
use parlor_agent::offline::EspeakTts;
use parlor_media::{AudioFrames, AudioSource, AudioSourceOptions, Layout};
use parlor_peer::SignallingClient;
use parlor_peer::room::{RoomEvent, RoomPeer};
use serde_json::json;

use super::percentile;

#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// Humans at once, each in its own room with its own dispatched agent.
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// The agents' engines: `listen` (Silero VAD only: what a listening session costs),
    /// `neural` (the demo's: each question is answered, voice-to-voice measured) or `basic`.
    #[arg(long, default_value = "listen", value_parser = ["listen", "neural", "basic"])]
    engines: String,
    /// With `--engines neural`: whether the words' end-of-turn model (Gemma 3 270M) runs, as
    /// `parlor worker --turn-words` (default: the worker's, on).
    #[arg(long, value_parser = ["on", "off"])]
    turn_words: Option<String>,
    /// Seconds measured, once every agent is in and the warm-up is over.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Seconds between the last agent joining and the measurement.
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    /// Seconds of silence after each question.
    #[arg(long, default_value_t = 2.0)]
    pause_secs: f64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the humans' audio loop (a question, then the pause) as a 16-bit mono WAV here.
    #[arg(long)]
    wav: Option<std::path::PathBuf>,
}

const KEY: &str = "pk_bench_agent";

/// What every human shares.
struct Shared {
    url: String,
    rate: u32,
    question: Vec<u8>,
    pause: Vec<u8>,
    answers: bool,
    /// Questions begun, all humans.
    asked: AtomicU64,
    /// Voice-to-voice of each answered question (ms), while measuring.
    latencies: std::sync::Mutex<Vec<f64>>,
    /// Questions not answered within 10 s.
    unanswered: AtomicU64,
    measuring: std::sync::atomic::AtomicBool,
}

pub(crate) async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=500).contains(&args.sessions),
        "--sessions must be 1-500"
    );
    anyhow::ensure!(args.secs > 0, "--secs must be > 0");
    anyhow::ensure!(
        (0.2..=30.0).contains(&args.pause_secs),
        "--pause-secs must be 0.2-30"
    );
    anyhow::ensure!(
        args.turn_words.is_none() || args.engines == "neural",
        "--turn-words needs --engines neural"
    );
    let extra: Vec<String> = match &args.turn_words {
        Some(v) => vec!["--turn-words".into(), v.clone()],
        None => Vec::new(),
    };
    // Every offer is taken (the worker's capacity bounds it), however busy the worker.
    let heard = Arc::new(AtomicU64::new(0));
    let heard_w = heard.clone();
    let fleet = super::fleet::Fleet::start(
        KEY,
        &args.engines,
        &extra,
        args.sessions + 1,
        1.0,
        move |line| {
            // The utterances its agents heard (listening engines), printed with each cancel.
            if let Some(n) = line
                .split('(')
                .nth(1)
                .and_then(|r| r.strip_suffix(" utterances heard by all jobs so far)"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                heard_w.fetch_max(n, Ordering::Relaxed);
            }
        },
    )
    .await?;
    let (url, pid) = (fleet.url.clone(), fleet.pid);

    // The question: eSpeak speech, then the pause.
    let tts = EspeakTts::with_voice("en-us", 150).context("eSpeak")?;
    let rate = tts.sample_rate();
    let mut pcm: Vec<i16> = Vec::new();
    tts.speak("What time is it?", &mut |p| {
        pcm.extend_from_slice(p);
        parlor_agent::Flow::Continue
    })?;
    let speech_secs = pcm.len() as f64 / f64::from(rate);
    let pause: Vec<i16> = vec![0; (f64::from(rate) * args.pause_secs) as usize];
    if let Some(path) = &args.wav {
        let mut all = pcm.clone();
        all.extend_from_slice(&pause);
        std::fs::write(path, parlor_media::wav::write_mono(rate, &all))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let bytes = |v: &[i16]| -> Vec<u8> { v.iter().flat_map(|s| s.to_le_bytes()).collect() };
    let shared = Arc::new(Shared {
        url,
        rate,
        question: bytes(&pcm),
        pause: bytes(&pause),
        answers: args.engines != "listen",
        asked: AtomicU64::new(0),
        latencies: std::sync::Mutex::new(Vec::new()),
        unanswered: AtomicU64::new(0),
        measuring: std::sync::atomic::AtomicBool::new(false),
    });

    println!(
        "bench agent: {} sessions, worker engines {} (pid {pid}), a {:.1} s question then {:.1} s \
         of silence, over and over",
        args.sessions, args.engines, speech_secs, args.pause_secs
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(args.sessions);
    let mut humans = tokio::task::JoinSet::new();
    let join_started = Instant::now();
    for i in 0..args.sessions {
        humans.spawn(human(shared.clone(), i, in_tx.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..args.sessions {
        match tokio::time::timeout(Duration::from_secs(60), in_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => anyhow::bail!("a human could not start: {e:#}"),
            _ => anyhow::bail!("not every agent joined within 60 s"),
        }
    }
    println!(
        "all {} agents in after {:.1} s; warming up {} s, then measuring {} s",
        args.sessions,
        join_started.elapsed().as_secs_f64(),
        args.warmup_secs,
        args.secs
    );
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    let stat = format!("/proc/{pid}/stat");
    let (cpu0, own0, t0) = (super::stat_cpu(&stat), super::cpu_seconds(), Instant::now());
    let asked0 = shared.asked.load(Ordering::Relaxed);
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    let worker_cpu = super::stat_cpu(&stat) - cpu0;
    let own_cpu = super::cpu_seconds() - own0;
    let asked = shared.asked.load(Ordering::Relaxed) - asked0;
    let rss_mb = super::rss_bytes_of(&pid.to_string()) as f64 / 1e6;
    let _ = stop_tx.send(true);
    while humans.join_next().await.is_some() {}
    // Every room empties: the jobs are cancelled, and the worker prints what it heard.
    let spoken = shared.asked.load(Ordering::Relaxed);
    // (The count arrives with each cancel; wait until it has been still for a second.)
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = (u64::MAX, Instant::now());
    while !shared.answers && Instant::now() < deadline {
        let n = heard.load(Ordering::Relaxed);
        if n != last.0 {
            last = (n, Instant::now());
        } else if n > 0 && last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.stop().await;

    let per_session = 100.0 * worker_cpu / wall / args.sessions as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut lat = shared
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let answered = lat.len();
    let (p50, p95) = (
        percentile(&mut lat.clone(), 0.5),
        percentile(&mut lat, 0.95),
    );
    println!();
    println!(
        "| engines | sessions | worker CPU (% of one core) | per session | sessions per core | \
         worker RSS (MB) | questions in the window | voice-to-voice p50 / p95 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.1} | {:.2} % | {:.0} | {:.0} | {} | {} |",
        args.engines,
        args.sessions,
        100.0 * worker_cpu / wall,
        per_session,
        100.0 / per_session,
        rss_mb,
        asked,
        if shared.answers {
            format!(
                "{p50:.0} / {p95:.0} ({} unanswered)",
                shared.unanswered.load(Ordering::Relaxed)
            )
        } else {
            "—".into()
        }
    );
    println!();
    println!(
        "the humans (this process, {} peers): {:.0} % of one core; the machine has {cores} cores",
        args.sessions,
        100.0 * own_cpu / wall
    );
    if !shared.answers {
        println!(
            "utterances: {} spoken in all, {} heard by the agents' VAD",
            spoken,
            heard.load(Ordering::Relaxed)
        );
    }
    if let Some(path) = args.json {
        let v = json!({
            "engines": args.engines, "turn_words": args.turn_words,
            "sessions": args.sessions, "window_s": wall,
            "worker_cpu_s": worker_cpu, "cpu_pct_per_session": per_session,
            "sessions_per_core": 100.0 / per_session, "worker_rss_mb": rss_mb,
            "humans_cpu_s": own_cpu, "questions": asked,
            "spoken": spoken, "heard": heard.load(Ordering::Relaxed),
            "v2v_p50_ms": p50, "v2v_p95_ms": p95, "answered": answered,
            "unanswered": shared.unanswered.load(Ordering::Relaxed),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

/// One human: join `call-i`, say when its agent is in, then ask over and over until `stop`.
async fn human(
    s: Arc<Shared>,
    i: usize,
    ready: tokio::sync::mpsc::Sender<anyhow::Result<()>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let result = async {
        let peer = RoomPeer::new(
            SignallingClient::builder()
                .url(s.url.as_str())
                .api_key(KEY)
                .build()?,
        );
        let mut events = peer.events();
        // A small buffer: a push returns as its audio plays, so what is counted as spoken
        // has been sent (the default 5 s cap would count audio still queued at the stop).
        let mic = Arc::new(AudioSource::new(
            AudioSourceOptions::new(s.rate, Layout::Mono).max_buffered(Duration::from_millis(200)),
        )?);
        peer.add_track(mic.track());
        peer.join(&format!("call-{i}"), false).await?;
        // The agent's presence, then its WebRTC connection up (media can flow).
        loop {
            match events.recv().await {
                Some(RoomEvent::ConnectionState {
                    state: parlor_peer::connection::PeerConnectionState::Connected,
                    ..
                }) => break,
                Some(RoomEvent::Fatal(e)) => anyhow::bail!("fatal: {e}"),
                Some(_) => continue,
                None => anyhow::bail!("the room ended"),
            }
        }
        Ok((peer, events, mic))
    }
    .await;
    let (peer, mut events, mic) = match result {
        Ok(r) => {
            let _ = ready.send(Ok(())).await;
            r
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    // The agent's voice (neural/basic): loud frames, as (time) marks on a channel.
    let (loud_tx, mut loud) = tokio::sync::mpsc::channel::<Instant>(64);
    if s.answers {
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if let RoomEvent::Track { track, .. } = e {
                    let Ok(mut frames) = AudioFrames::new(track) else {
                        return;
                    };
                    while let Some(f) = frames.next().await {
                        if f.samples.iter().any(|v| v.unsigned_abs() > 2_000) {
                            let _ = loud_tx.try_send(Instant::now());
                        }
                    }
                }
            }
        });
    }
    let ask = async {
        // A moment for the agent's side of the call to start listening.
        tokio::time::sleep(Duration::from_millis(300)).await;
        loop {
            s.asked.fetch_add(1, Ordering::Relaxed);
            if mic.push(&s.question).await.is_err() {
                return;
            }
            // The push returns with its last piece still buffered: the question's last
            // sample goes out when the buffer has drained.
            let end = Instant::now() + Duration::from_secs_f64(mic.buffered_seconds());
            if s.answers {
                // The answer's first loud frame after the question, then its end (600 ms
                // without a loud frame), then the pause.
                while loud.try_recv().is_ok() {}
                match tokio::time::timeout(Duration::from_secs(10), loud.recv()).await {
                    Ok(Some(at)) => {
                        if s.measuring.load(Ordering::Relaxed) {
                            let ms = at.saturating_duration_since(end).as_secs_f64() * 1e3;
                            if let Ok(mut l) = s.latencies.lock() {
                                l.push(ms);
                            }
                        }
                        while let Ok(Some(_)) =
                            tokio::time::timeout(Duration::from_millis(600), loud.recv()).await
                        {
                        }
                    }
                    _ => {
                        s.unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if mic.push(&s.pause).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = ask => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    mic.stop();
    peer.close().await;
}
