//! `parlor echo`: a Rust room peer for black-box checks. For every remote peer it sends back
//! each data-channel message on the channel it came from, and loops each inbound audio track
//! back to that peer as an outbound track.
//!
//! With `--open-channel LABEL` it also opens a data channel to every peer once connected
//! (or, with `--open-channel-at peer-joined`, as soon as the peer appears, before the first
//! offer/answer), sends `hello from parlor` on it, and echoes what comes back on it too.
//! With `--track-metadata JSON` it also sends a (silent) track of its own from the start,
//! with that metadata.
//!
//! stdout carries one line per milestone, for scripts: `echo joined ROOM as PEER_ID`,
//! `peer-joined ID`, `peer-left ID`, `connection ID STATE`, `channel-open ID LABEL`,
//! `channel-created ID LABEL`, `track ID KIND TRACK_ID`. Logs go to stderr.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;

use parlor_peer::room::{RoomEvent, RoomOptions, RoomPeer};
use parlor_peer::signalling::{ReconnectOptions, SignallingClient};
use parlor_peer::{
    DataChannel, LocalTrack, PeerConnectionState, RemotePeer, RemoteTrack, TrackKind,
};

#[derive(Args, Debug)]
pub(crate) struct EchoArgs {
    /// Server URL, e.g. ws://127.0.0.1:7800.
    #[arg(long)]
    url: String,
    /// Publishable key.
    #[arg(long, env = "PARLOR_KEY", hide_env_values = true)]
    key: String,
    /// Room (channel) to join.
    #[arg(long)]
    room: String,
    /// Address for the WebRTC sockets and host candidates (default: the default-route
    /// interface's address).
    #[arg(long)]
    bind_ip: Option<IpAddr>,
    /// Also open a data channel with this label to every peer.
    #[arg(long)]
    open_channel: Option<String>,
    /// When `--open-channel` opens it: once the connection is up, or as soon as the peer
    /// joins (before the first negotiation, so the channel rides it or its glare).
    #[arg(long, value_enum, default_value_t = OpenAt::Connected)]
    open_channel_at: OpenAt,
    /// Also send one track of its own (silent: no frames) to every peer from the start,
    /// with this JSON object as its metadata (`__meteredTrackMeta`). Its track and stream
    /// ids are `echo-voice` and `echo-stream`.
    #[arg(long, value_parser = parse_object)]
    track_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Restart ICE once on each peer's connection, this many milliseconds after it first
    /// reports Connected (prints `ice-restart ID` and then `ice-restart-done ID ok|error`).
    #[arg(long)]
    restart_ice_after_ms: Option<u64>,
    /// Announce relayed candidates only (iceTransportPolicy "relay"): every path goes
    /// through the TURN servers of the welcome's `metadata.iceServers`.
    #[arg(long)]
    relay_only: bool,
}

/// When `--open-channel` opens its channel.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenAt {
    /// At `PeerJoined`.
    PeerJoined,
    /// At the first `Connected` state (and again after a reset).
    Connected,
}

fn parse_object(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("must be a JSON object".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub(crate) async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let client = SignallingClient::builder()
        .url(args.url)
        .api_key(args.key)
        .reconnect(Some(ReconnectOptions::daemon()))
        .build()
        .context("bad signalling options")?;
    let mut options = RoomOptions::default();
    if let Some(ip) = args.bind_ip {
        options = options.bind_ip(ip);
    }
    options = options.relay_only(args.relay_only);
    let room = RoomPeer::with_options(client, options);
    let mut events = room.events();
    let own_track = args
        .track_metadata
        .map(|m| LocalTrack::audio_with("echo-voice", "echo-stream", Some(m)));
    if let Some(t) = &own_track {
        room.add_track(t);
    }
    room.join(&args.room, false)
        .await
        .context("cannot join the room")?;
    say(&format!(
        "echo joined {} as {}",
        args.room,
        room.peer_id().unwrap_or_default()
    ));
    let opens = Opens {
        channel: args.open_channel.as_deref(),
        channel_at: args.open_channel_at,
        restart_ice_after: args
            .restart_ice_after_ms
            .map(std::time::Duration::from_millis),
    };
    let result = tokio::select! {
        r = pump(&room, &mut events, &opens) => r,
        _ = crate::shutdown_signal() => Ok(()),
    };

    room.close().await;
    result
}

/// What `pump` starts on its own.
struct Opens<'a> {
    channel: Option<&'a str>,
    channel_at: OpenAt,
    restart_ice_after: Option<std::time::Duration>,
}

async fn pump(
    room: &RoomPeer,
    events: &mut parlor_peer::room::RoomEvents,
    opens: &Opens<'_>,
) -> anyhow::Result<()> {
    let (open_channel, open_at) = (opens.channel, opens.channel_at);
    // Channels we opened, per peer: a fresh connection needs a fresh one.
    let ours: Arc<Mutex<HashMap<String, DataChannel>>> = Arc::default();
    // Peers whose connection was restarted (once each).
    let mut restarted = std::collections::HashSet::new();
    while let Some(e) = events.recv().await {
        match e {
            RoomEvent::PeerJoined { peer_id, .. } => {
                say(&format!("peer-joined {peer_id}"));
                if let (Some(label), OpenAt::PeerJoined) = (open_channel, open_at)
                    && let Some(remote) = room.remote(&peer_id)
                {
                    tokio::spawn(open_and_echo(remote, label.to_owned(), ours.clone()));
                }
            }
            RoomEvent::PeerLeft { peer_id } => {
                lock(&ours).remove(&peer_id);
                say(&format!("peer-left {peer_id}"))
            }
            RoomEvent::ConnectionState { peer_id, state } => {
                say(&format!("connection {peer_id} {state:?}"));
                if let (Some(after), PeerConnectionState::Connected) =
                    (opens.restart_ice_after, state)
                    && restarted.insert(peer_id.clone())
                    && let Some(remote) = room.remote(&peer_id)
                {
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        say(&format!("ice-restart {}", remote.id()));
                        let outcome = match remote.restart_ice().await {
                            Ok(()) => "ok".to_owned(),
                            Err(e) => format!("error {e}"),
                        };
                        say(&format!("ice-restart-done {} {outcome}", remote.id()));
                    });
                }
                let live = lock(&ours).get(&peer_id).is_some_and(|c| !c.is_closed());
                if let (Some(label), PeerConnectionState::Connected, false) =
                    (open_channel, state, live || open_at == OpenAt::PeerJoined)
                    && let Some(remote) = room.remote(&peer_id)
                {
                    tokio::spawn(open_and_echo(remote, label.to_owned(), ours.clone()));
                }
            }
            RoomEvent::DataChannelOpened { peer_id, channel } => {
                say(&format!("channel-open {peer_id} {}", channel.label()));
                tokio::spawn(echo_channel(channel));
            }
            RoomEvent::Track { peer_id, track } => {
                say(&format!(
                    "track {peer_id} {} {}",
                    track.kind().as_str(),
                    track.id()
                ));
                if track.kind() == TrackKind::Audio {
                    tokio::spawn(loop_back(room.clone(), track));
                }
            }
            RoomEvent::NegotiationError { peer_id, message } => {
                tracing::warn!(peer = %peer_id, %message, "negotiation error");
            }
            RoomEvent::Fatal(err) => anyhow::bail!("room failed: {err}"),
            RoomEvent::Lagged { dropped } => {
                tracing::warn!(dropped, "behind on room events: messages dropped");
            }
            _ => {}
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn open_and_echo(
    remote: RemotePeer,
    label: String,
    ours: Arc<Mutex<HashMap<String, DataChannel>>>,
) {
    let peer_id = remote.id().to_owned();
    match remote.create_data_channel(&label).await {
        Ok(channel) => {
            say(&format!("channel-created {peer_id} {label}"));
            lock(&ours).insert(peer_id, channel.clone());
            if let Err(e) = channel.send("hello from parlor").await {
                tracing::warn!(error = %e, "hello not sent");
            }
            echo_channel(channel).await;
        }
        Err(e) => tracing::warn!(peer = %peer_id, error = %e, "cannot open a channel"),
    }
}

async fn echo_channel(channel: DataChannel) {
    while let Some(msg) = channel.recv().await {
        if let Err(e) = channel.send(msg).await {
            tracing::debug!(error = %e, "echo send failed");
            return;
        }
    }
}

/// Send an inbound audio track's frames back to its sender on a track of our own.
async fn loop_back(room: RoomPeer, track: RemoteTrack) {
    let Some(remote) = room.remote(track.peer_id()) else {
        return;
    };
    let out = LocalTrack::audio();
    remote.add_track(&out);
    while let Some(frame) = track.recv().await {
        out.push(frame);
    }
    remote.remove_track(&out);
}
