//! `parlor bench call-setup`: how long a call takes to come up when the signalling path has
//! a round-trip time, with the peer's signals pipelined (the default) and sent stop-and-wait
//! (each description and candidate after the last one's ack: how the peer sent them before).
//!
//! Each trial: an embedded server behind a TCP proxy that delays each direction by RTT/2;
//! peer A (in the room, sending a tone) and peer B, both connected through the proxy; B
//! joins, and the bench times join → Connected and join → first audio at B. The media path
//! is loopback (no delay): what is measured is the signalling's share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use parlor_media::{AudioFrames, AudioSource, AudioSourceOptions, Layout};
use parlor_peer::room::{RoomEvent, RoomOptions, RoomPeer};
use parlor_peer::{PeerConnectionState, SignallingClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Args, Debug)]
pub(crate) struct CallSetupArgs {
    /// Signalling round-trip times to run (ms).
    #[arg(long, value_delimiter = ',', default_value = "0,50,100,200")]
    rtt: Vec<u64>,
    /// Calls per RTT and mode.
    #[arg(long, default_value_t = 8)]
    calls: usize,
    /// Also give the peers a TURN server (coturn, started here; Debian package `coturn`)
    /// over UDP and TCP: two relayed candidates per peer, trickled after the description.
    #[arg(long)]
    turn: bool,
    /// Relayed candidates only (implies `--turn`): every path goes through the TURN server,
    /// so the trickled candidates are on the path to Connected.
    #[arg(long)]
    relay_only: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// coturn on 127.0.0.1 for the bench (REST credentials from `secret`); killed on drop.
struct Coturn {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_coturn(secret: &str) -> anyhow::Result<(Coturn, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("parlor-bench-turn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = std::process::Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            &format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1",
            "--use-auth-secret",
            &format!("--static-auth-secret={secret}"),
            "--realm=parlor.bench",
            "--allow-loopback-peers",
            "--no-dtls",
            "--no-tls",
            "--no-cli",
            "--no-stdout-log",
            &format!("--log-file={}", dir.join("turn.log").display()),
            &format!("--pidfile={}", dir.join("turn.pid").display()),
            &format!("--userdb={}", dir.join("turndb").display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("turnserver (the Debian package coturn) could not be started")?;
    let coturn = Coturn { child, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "coturn did not start within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((coturn, port))
}

/// A TCP proxy to `upstream` that delays every byte by `one_way` in each direction (order
/// kept). Returns its address.
async fn delay_proxy(upstream: std::net::SocketAddr, one_way: Duration) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(upstream).await else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pipe(ri, wo, one_way));
            tokio::spawn(pipe(ro, wi, one_way));
        }
    });
    Ok(format!("ws://{addr}"))
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    // Bounded: a reader more than 256 chunks ahead of the delayed writer waits.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(256);
    tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let at = tokio::time::Instant::now() + delay;
                if tx.send((at, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One call: (join → Connected, join → first audio) at B.
async fn call(
    url: &str,
    room: &str,
    in_flight: usize,
    relay_only: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let client = || {
        SignallingClient::builder()
            .url(url.to_owned())
            .api_key("pk_bench")
            .build()
    };
    let options = RoomOptions::default()
        .bind_ip([127, 0, 0, 1].into())
        .signals_in_flight(in_flight)
        .relay_only(relay_only);
    let a = RoomPeer::with_options(client()?, options.clone());
    let b = RoomPeer::with_options(client()?, options);
    let source = Arc::new(AudioSource::new(AudioSourceOptions::new(
        16_000,
        Layout::Mono,
    ))?);
    a.add_track(source.track());
    a.join(room, false).await.context("A joins")?;
    let tone: Vec<u8> = (0..320)
        .flat_map(|i| {
            let v = 8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 16_000.0).sin();
            (v as i16).to_le_bytes()
        })
        .collect();
    let feeder = {
        let source = source.clone();
        tokio::spawn(async move { while source.push(&tone).await.is_ok() {} })
    };
    let mut events = b.events();
    let t0 = Instant::now();
    b.join(room, false).await.context("B joins")?;
    let mut connected = None;
    let mut frames: Option<AudioFrames> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let audio = loop {
        let frame = async {
            match frames.as_mut() {
                Some(f) => f.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            e = events.recv() => match e {
                Some(RoomEvent::ConnectionState { state: PeerConnectionState::Connected, .. }) => {
                    connected.get_or_insert(t0.elapsed());
                }
                Some(RoomEvent::Track { track, .. }) => frames = Some(AudioFrames::new(track)?),
                Some(_) => {}
                None => anyhow::bail!("B's events ended"),
            },
            f = frame => match f {
                Some(f) if f.samples.iter().any(|s| s.unsigned_abs() > 1_000) => break t0.elapsed(),
                Some(_) => {}
                None => frames = None,
            },
            () = tokio::time::sleep_until(deadline) => anyhow::bail!("no audio at B within 20 s"),
        }
    };
    feeder.abort();
    a.close().await;
    b.close().await;
    Ok((connected.unwrap_or(audio), audio))
}

fn median(v: &mut [f64]) -> f64 {
    super::percentile(v, 0.5)
}

pub(crate) async fn call_setup(args: CallSetupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.calls >= 1, "--calls must be at least 1");
    anyhow::ensure!(
        args.rtt.iter().all(|r| *r <= 2_000),
        "--rtt: at most 2000 ms"
    );
    let mut config = parlor_server::config::Config::default();
    config.add_dev_key("pk_bench");
    let secret = "parlor-bench-turn";
    let _coturn = if args.turn || args.relay_only {
        let (coturn, port) = start_coturn(secret).await?;
        config.turn = Some(parlor_server::turn::TurnConfig {
            urls: vec![
                format!("turn:127.0.0.1:{port}?transport=udp"),
                format!("turn:127.0.0.1:{port}?transport=tcp"),
            ],
            secret: secret.into(),
            ttl_secs: 3600,
        });
        Some(coturn)
    } else {
        None
    };
    let server = parlor_server::spawn(TcpListener::bind("127.0.0.1:0").await?, config)?;
    let upstream = server.local_addr();
    println!(
        "\nparlor bench call-setup: {} calls per RTT and mode; signalling through a proxy that delays each direction by RTT/2; media on loopback; {}\n",
        args.calls,
        if args.relay_only {
            "relayed candidates only (TURN over UDP and TCP)"
        } else if args.turn {
            "host candidates and a TURN server (UDP, TCP)"
        } else {
            "host candidates only"
        }
    );
    println!(
        "| signalling RTT | signals | join → Connected p50 (ms) | join → first audio p50 (ms) | first audio, in RTTs |"
    );
    println!("|---|---|---|---|---|");
    let mut results = Vec::new();
    for &rtt in &args.rtt {
        let url = delay_proxy(upstream, Duration::from_millis(rtt / 2)).await?;
        for (mode, in_flight) in [("pipelined", 32), ("stop-and-wait", 1)] {
            let (mut conn, mut audio) = (Vec::new(), Vec::new());
            for i in 0..args.calls {
                let room = format!("setup-{rtt}-{mode}-{i}");
                let (c, a) = call(&url, &room, in_flight, args.relay_only)
                    .await
                    .with_context(|| format!("call {i} at {rtt} ms RTT ({mode})"))?;
                conn.push(c.as_secs_f64() * 1e3);
                audio.push(a.as_secs_f64() * 1e3);
            }
            let (c50, a50) = (median(&mut conn), median(&mut audio));
            let rtts = if rtt == 0 {
                "–".to_string()
            } else {
                format!("{:.1}", a50 / rtt as f64)
            };
            println!("| {rtt} ms | {mode} | {c50:.0} | {a50:.0} | {rtts} |");
            results.push(json!({
                "rtt_ms": rtt, "mode": mode, "connected_p50_ms": c50, "first_audio_p50_ms": a50,
                "connected_ms": conn, "first_audio_ms": audio,
            }));
        }
    }
    server.shutdown().await.ok();
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&json!({ "results": results }))?,
        )?;
    }
    Ok(())
}
