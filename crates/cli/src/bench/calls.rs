//! `parlor bench calls`: many calls through dispatch, and whether a worker leaks.
//!
//! An embedded server with `[agents]` (rooms `call-*` get the `voice` agent, no grace) and a
//! real `parlor worker` child process (this binary). Each call: a human (a Rust peer) joins
//! its own room `call-N`, waits for the dispatched agent to join, asks a question (eSpeak
//! speech, then silence), waits for the agent's spoken answer and leaves; the worker's agent
//! is cancelled when the room empties. `--concurrency` calls run at once. After each call the
//! worker's resident memory, open file descriptors and threads are read from `/proc`: the
//! table shows them through the run and their slope over the second half (after warm-up),
//! which is what a leak would show as.

use std::sync::Arc;
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
pub(crate) struct CallsArgs {
    /// Calls in all.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Calls at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// The worker's engines (`basic`: PocketSphinx and eSpeak, no models; `neural`: the
    /// demo's, fetched into the cache on first use).
    #[arg(long, default_value = "basic", value_parser = ["basic", "neural"])]
    engines: String,
    /// Stop starting calls after this many minutes (a soak: `--calls` is then a ceiling).
    #[arg(long)]
    minutes: Option<f64>,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 30)]
    call_timeout_secs: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const KEY: &str = "pk_bench_calls";

/// What one call measured.
struct CallResult {
    /// Join → the dispatched agent is in the room (its presence).
    agent_ms: f64,
    /// The question's last sample scheduled → the answer's first loud frame.
    answer_ms: f64,
}

/// The worker's footprint after a call.
#[derive(Clone, Copy)]
struct Sample {
    call: usize,
    rss_mb: f64,
    fds: usize,
    threads: usize,
}

fn sample(pid: u32, call: usize) -> Sample {
    let pid = pid.to_string();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    Sample {
        call,
        rss_mb: super::rss_bytes_of(&pid) as f64 / 1e6,
        fds,
        threads,
    }
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let num: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

pub(crate) async fn calls(args: CallsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.calls > 0 && args.concurrency > 0,
        "--calls and --concurrency must be > 0"
    );
    // The server's default load threshold: a worker busy past it gets no offers.
    let fleet =
        super::fleet::Fleet::start(KEY, &args.engines, &[], args.concurrency + 1, 0.8, |_| {})
            .await?;
    let (url, pid) = (fleet.url.clone(), fleet.pid);

    // The question: eSpeak speech, then 1.5 s of silence for the turn to end.
    let tts = EspeakTts::with_voice("en-us", 150).context("eSpeak")?;
    let rate = tts.sample_rate();
    let mut pcm: Vec<i16> = Vec::new();
    tts.speak("What time is it?", &mut |p| {
        pcm.extend_from_slice(p);
        parlor_agent::Flow::Continue
    })?;
    let speech_secs = pcm.len() as f64 / f64::from(rate);
    pcm.extend(std::iter::repeat_n(0, rate as usize * 3 / 2));
    let question: Arc<Vec<u8>> = Arc::new(pcm.iter().flat_map(|s| s.to_le_bytes()).collect());

    println!(
        "bench calls: {} calls, {} at once, worker engines {} (pid {pid})",
        args.calls, args.concurrency, args.engines
    );
    let first = sample(pid, 0);
    let started = Instant::now();
    let cpu_at_start = super::stat_cpu(&format!("/proc/{pid}/stat"));
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut results: Vec<CallResult> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut samples = vec![first];
    let mut done = 0usize;
    let until = args
        .minutes
        .map(|m| started + Duration::from_secs_f64(m.max(0.0) * 60.0));
    for i in 0..args.calls {
        let permit = limit.clone().acquire_owned().await?;
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let (url, question) = (url.clone(), question.clone());
        let timeout = Duration::from_secs(args.call_timeout_secs);
        tasks.spawn(async move {
            let r = tokio::time::timeout(timeout, call(&url, i, rate, &question, speech_secs))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            drop(permit);
            (i, r)
        });
        // Collect whatever finished.
        while let Some(res) = tasks.try_join_next() {
            done += 1;
            record(res, &mut results, &mut failures);
            samples.push(sample(pid, done));
        }
    }
    while let Some(res) = tasks.join_next().await {
        done += 1;
        record(res, &mut results, &mut failures);
        samples.push(sample(pid, done));
    }
    let wall = started.elapsed().as_secs_f64();
    let worker_cpu = super::stat_cpu(&format!("/proc/{pid}/stat")) - cpu_at_start;
    // Let the last agents leave, then a final look.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = sample(pid, done);
    samples.push(last);
    fleet.stop().await;

    let half: Vec<&Sample> = samples.iter().filter(|s| s.call >= done / 2).collect();
    let fit = |f: fn(&Sample) -> f64| {
        slope(
            &half
                .iter()
                .map(|s| (s.call as f64, f(s)))
                .collect::<Vec<_>>(),
        )
    };
    let (rss_slope, fd_slope, thread_slope) = (
        fit(|s| s.rss_mb * 1000.0),
        fit(|s| s.fds as f64),
        fit(|s| s.threads as f64),
    );
    let mut agent: Vec<f64> = results.iter().map(|r| r.agent_ms).collect();
    let mut answer: Vec<f64> = results.iter().map(|r| r.answer_ms).collect();
    println!();
    println!("| after call | worker RSS (MB) | open fds | threads |");
    println!("|---|---|---|---|");
    let marks: Vec<usize> = (0..=10).map(|k| done * k / 10).collect();
    for m in marks {
        if let Some(s) = samples.iter().find(|s| s.call >= m) {
            println!(
                "| {} | {:.1} | {} | {} |",
                s.call, s.rss_mb, s.fds, s.threads
            );
        }
    }
    println!(
        "| after the last left | {:.1} | {} | {} |",
        last.rss_mb, last.fds, last.threads
    );
    println!();
    println!(
        "calls: {} ok, {} failed in {wall:.0} s; join → agent in the room p50 / p95 {:.0} / {:.0} ms; \
         end of question → answer heard p50 / p95 {:.0} / {:.0} ms",
        results.len(),
        failures.len(),
        percentile(&mut agent.clone(), 0.5),
        percentile(&mut agent, 0.95),
        percentile(&mut answer.clone(), 0.5),
        percentile(&mut answer, 0.95),
    );
    println!(
        "worker CPU: {:.2} s per call, {:.0} % of one core on average over the run",
        worker_cpu / done.max(1) as f64,
        100.0 * worker_cpu / wall
    );
    println!(
        "slope over the second half: RSS {rss_slope:+.1} kB per call, fds {fd_slope:+.3} per call, \
         threads {thread_slope:+.3} per call"
    );
    for f in failures.iter().take(10) {
        println!("failed: {f}");
    }
    if let Some(path) = args.json {
        let v = json!({
            "calls": done, "minutes": args.minutes, "concurrency": args.concurrency, "engines": args.engines,
            "ok": results.len(), "failed": failures.len(), "wall_s": wall, "worker_cpu_s": worker_cpu,
            "rss_kb_per_call": rss_slope, "fds_per_call": fd_slope, "threads_per_call": thread_slope,
            "samples": samples.iter().map(|s| json!({"call": s.call, "rss_mb": s.rss_mb, "fds": s.fds, "threads": s.threads})).collect::<Vec<_>>(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

fn record(
    res: Result<(usize, anyhow::Result<CallResult>), tokio::task::JoinError>,
    results: &mut Vec<CallResult>,
    failures: &mut Vec<String>,
) {
    match res {
        Ok((_, Ok(r))) => results.push(r),
        Ok((i, Err(e))) => failures.push(format!("call {i}: {e:#}")),
        Err(e) => failures.push(format!("a call's task: {e}")),
    }
}

/// One call: join `call-i`, wait for the agent, ask, hear the answer, leave.
async fn call(
    url: &str,
    i: usize,
    rate: u32,
    question: &[u8],
    speech_secs: f64,
) -> anyhow::Result<CallResult> {
    let peer = RoomPeer::new(SignallingClient::builder().url(url).api_key(KEY).build()?);
    let mut events = peer.events();
    let mic = Arc::new(AudioSource::new(AudioSourceOptions::new(
        rate,
        Layout::Mono,
    ))?);
    peer.add_track(mic.track());
    let t0 = Instant::now();
    let result = async {
        peer.join(&format!("call-{i}"), false).await?;
        // The agent's presence (its voice track arrives with its first words).
        loop {
            match events.recv().await {
                Some(RoomEvent::PeerJoined { .. }) => break,
                Some(RoomEvent::Fatal(e)) => anyhow::bail!("fatal: {e}"),
                Some(_) => continue,
                None => anyhow::bail!("the room ended"),
            }
        }
        let agent_ms = t0.elapsed().as_secs_f64() * 1e3;
        let asked = Instant::now();
        let end_of_speech = asked + Duration::from_secs_f64(speech_secs);
        let pushing = mic.push(question);
        let answer = async {
            let track = loop {
                match events.recv().await {
                    Some(RoomEvent::Track { track, .. }) => break track,
                    Some(RoomEvent::Fatal(e)) => anyhow::bail!("fatal: {e}"),
                    Some(_) => continue,
                    None => anyhow::bail!("the room ended"),
                }
            };
            let mut frames = AudioFrames::new(track)?;
            while let Some(f) = frames.next().await {
                if Instant::now() > end_of_speech
                    && f.samples.iter().any(|s| s.unsigned_abs() > 2_000)
                {
                    return Ok(Instant::now());
                }
            }
            anyhow::bail!("the agent's track ended")
        };
        let (pushed, heard) = tokio::join!(pushing, answer);
        pushed?;
        let heard = heard?;
        Ok(CallResult {
            agent_ms,
            answer_ms: heard.duration_since(end_of_speech).as_secs_f64() * 1e3,
        })
    }
    .await;
    mic.stop();
    peer.close().await;
    result
}
