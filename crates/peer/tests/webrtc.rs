//! Two Rust room peers talk WebRTC through the real server over real UDP: audio frames and
//! data channels both ways, and recovery after a server restart.

use std::time::{Duration, Instant};

mod common;

use tokio::net::TcpListener;

use common::{WAIT, frames, pace, peer, peer_with, server_on, track_from, wait_for};
use parlor_peer::room::{RoomEvent, RoomEvents, RoomOptions, RoomPeer};
use parlor_peer::{DataChannel, DataMessage, EncodedFrame, LocalTrack, RemoteTrack};
/// A call in `room`: A sends a paced audio track, B has received a few of its frames.
struct Call {
    server: parlor_server::ServerHandle,
    a: RoomPeer,
    b: RoomPeer,
    eb: RoomEvents,
    a_id: String,
    track: RemoteTrack,
    _pace: tokio::task::JoinHandle<()>,
}

async fn call(room: &str) -> Call {
    let server = server_on("127.0.0.1:0").await;
    let (a, b) = (peer(&server.url()), peer(&server.url()));
    let mut eb = b.events();
    let ta = LocalTrack::audio();
    a.add_track(&ta);
    let pace = pace(ta);
    a.join(room, false).await.expect("join a");
    b.join(room, false).await.expect("join b");
    let a_id = a.peer_id().expect("a id");
    let track = track_from(&mut eb, &a_id).await;
    frames(&track, 3).await;
    Call {
        server,
        a,
        b,
        eb,
        a_id,
        track,
        _pace: pace,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_data_channels_both_ways() {
    let server = server_on("127.0.0.1:0").await;
    let url = server.url();
    let (a, b) = (peer(&url), peer(&url));
    let (mut ea, mut eb) = (a.events(), b.events());
    let ta = LocalTrack::audio();
    let tb = LocalTrack::audio();
    a.add_track(&ta);
    b.add_track(&tb);
    let _pa = pace(ta.clone());
    let _pb = pace(tb.clone());
    a.join("rtc", false).await.expect("join a");
    b.join("rtc", false).await.expect("join b");
    let b_id = b.peer_id().expect("b id");
    let a_id = a.peer_id().expect("a id");

    let track_at_b = track_from(&mut eb, &a_id).await;
    let track_at_a = track_from(&mut ea, &b_id).await;
    frames(&track_at_b, 10).await;
    frames(&track_at_a, 10).await;

    // A opens a channel; B sees it open; messages flow both ways, text and binary.
    let dc_a = a.create_data_channel(&b_id, "chat").await.expect("channel");
    let dc_b = wait_for(&mut eb, |e| match e {
        RoomEvent::DataChannelOpened { peer_id, channel } if *peer_id == a_id => {
            Some(channel.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(dc_b.label(), "chat");
    dc_a.send("hello from a").await.expect("send");
    dc_b.send(vec![1u8, 2, 3]).await.expect("send");
    let got_b = tokio::time::timeout(WAIT, dc_b.recv()).await.expect("recv");
    let got_a = tokio::time::timeout(WAIT, dc_a.recv()).await.expect("recv");
    assert_eq!(got_b, Some(DataMessage::Text("hello from a".into())));
    assert_eq!(got_a, Some(DataMessage::Binary(vec![1, 2, 3])));

    // Many messages in a burst arrive complete and in order.
    for i in 0..200 {
        dc_a.send(format!("m{i}")).await.expect("send");
    }
    for i in 0..200 {
        let m = tokio::time::timeout(WAIT, dc_b.recv()).await.expect("recv");
        assert_eq!(m, Some(DataMessage::Text(format!("m{i}"))));
    }

    // A second channel, closed by B: A sees it end, sends on it fail, the first stays up.
    let dc2_a = a.create_data_channel(&b_id, "side").await.expect("channel");
    let dc2_b = wait_for(&mut eb, |e| match e {
        RoomEvent::DataChannelOpened { channel, .. } if channel.label() == "side" => {
            Some(channel.clone())
        }
        _ => None,
    })
    .await;
    dc2_b.close();
    dc2_b.close(); // idempotent
    assert!(dc2_b.send("late").await.is_err());
    tokio::time::timeout(WAIT, async { while dc2_a.recv().await.is_some() {} })
        .await
        .expect("the remote's close reaches us");
    dc_a.send("still here").await.expect("send");
    let m = tokio::time::timeout(WAIT, dc_b.recv()).await.expect("recv");
    assert_eq!(m, Some(DataMessage::Text("still here".into())));

    // B leaves: A's track from B ends and the channel closes.
    b.close().await;
    tokio::time::timeout(WAIT, async { while track_at_a.recv().await.is_some() {} })
        .await
        .expect("track ends when the peer leaves");
    tokio::time::timeout(WAIT, async { while dc_a.recv().await.is_some() {} })
        .await
        .expect("channel closes when the peer leaves");
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_resumes_after_a_server_restart() {
    let Call {
        server,
        a,
        b,
        mut eb,
        a_id,
        ..
    } = call("recover").await;
    let addr = server.local_addr();

    server.shutdown().await.expect("clean shutdown");
    let restarted = Instant::now();
    let _server2 = server_on(&addr.to_string()).await;

    // Both peers reconnect with fresh ids (spec §1.7.1), so each sees the other leave and
    // join again, and a fresh connection brings the track back.
    let track2 = wait_for(&mut eb, |e| match e {
        RoomEvent::Track { peer_id, track } if *peer_id != a_id => Some(track.clone()),
        _ => None,
    })
    .await;
    frames(&track2, 1).await;
    println!(
        "RECOVERY server restart: media resumed {} ms after the new server was listening",
        restarted.elapsed().as_millis()
    );
    a.close().await;
    b.close().await;
}

/// A TCP relay in front of the server whose live connections can be cut (a network blip
/// for the peers behind it, while the server and the other peers stay up).
struct Blip {
    url: String,
    cut: tokio::sync::watch::Sender<u64>,
}

async fn blip_proxy(upstream: std::net::SocketAddr) -> Blip {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let (cut, watch) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let mut watch = watch.clone();
            watch.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                    _ = watch.changed() => {}
                }
            });
        }
    });
    Blip { url, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_peer_objects_survive_a_local_reconnect() {
    let server = server_on("127.0.0.1:0").await;
    let blip = blip_proxy(server.local_addr()).await;
    // A sits behind the cuttable relay; B talks to the server directly.
    let (a, b) = (peer(&blip.url), peer(&server.url()));
    let (mut ea, mut eb) = (a.events(), b.events());
    let tb = LocalTrack::audio();
    b.add_track(&tb);
    let _pb = pace(tb.clone());
    a.join("blip", false).await.expect("join a");
    b.join("blip", false).await.expect("join b");
    let b_id = b.peer_id().expect("b id");
    let track = track_from(&mut ea, &b_id).await;
    frames(&track, 5).await;
    let before = a.remote(&b_id).expect("remote b");

    blip.cut.send_modify(|n| *n += 1);
    let cut_at = Instant::now();
    wait_for(&mut ea, |e| {
        matches!(e, RoomEvent::ConnectionReset { peer_id } if *peer_id == b_id).then_some(())
    })
    .await;
    let track2 = track_from(&mut ea, &b_id).await;
    frames(&track2, 1).await;
    println!(
        "RECOVERY signalling blip: media resumed {} ms after the cut",
        cut_at.elapsed().as_millis()
    );
    let after = a.remote(&b_id).expect("b survives");
    assert!(
        before.same_as(&after),
        "the RemotePeer object survives the reconnect"
    );
    // The old track ended with the old connection.
    tokio::time::timeout(WAIT, async { while track.recv().await.is_some() {} })
        .await
        .expect("old track ends");
    let _ = &mut eb;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_metadata_streams_and_replace_track() {
    let server = server_on("127.0.0.1:0").await;
    let url = server.url();
    let (a, b) = (peer(&url), peer(&url));
    let mut eb = b.events();
    let meta = serde_json::json!({"role": "agent"});
    let t1 = LocalTrack::audio_with("mic-1", "voice", meta.as_object().cloned());
    a.add_track(&t1);
    let p1 = pace(t1.clone());
    a.join("meta", false).await.expect("join a");
    b.join("meta", false).await.expect("join b");
    let a_id = a.peer_id().expect("a id");
    let stream = wait_for(&mut eb, |e| match e {
        RoomEvent::StreamAdded { peer_id, stream_id } if *peer_id == a_id => {
            Some(stream_id.clone())
        }
        _ => None,
    })
    .await;
    let track = track_from(&mut eb, &a_id).await;
    // The track's own stream and track ids, whichever side offered (an answer announces a
    // named stream's msid too, spec §2.8).
    assert_eq!(stream, "voice");
    assert_eq!(track.stream_id(), Some("voice"));
    assert_eq!(track.id(), "mic-1");
    frames(&track, 3).await;
    // The announcement travels over signalling, the media over UDP: either may win.
    tokio::time::timeout(WAIT, async {
        while track.metadata().as_ref() != meta.as_object() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("track metadata arrives");

    // Replace the track: the m-line is reused, so the same RemoteTrack carries the new frames.
    p1.abort();
    let t2 = LocalTrack::audio();
    a.replace_track(&t1, &t2);
    tokio::time::timeout(WAIT, async {
        while t1.connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the old track is detached");
    let marker: [u8; 3] = [31 << 3, 0x01, 0x02];
    let t2c = t2.clone();
    let _p2 = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            t2c.push(EncodedFrame::opus(marker.to_vec()).expect("opus"));
        }
    });
    tokio::time::timeout(WAIT, async {
        loop {
            let f = track.recv().await.expect("track continues");
            if f.data[..] == marker[..] {
                break;
            }
        }
    })
    .await
    .expect("the replacement's frames arrive on the same track");
    a.close().await;
    // Closing A ends its stream at B.
    wait_for(&mut eb, |e| match e {
        RoomEvent::StreamRemoved { peer_id, stream_id } if *peer_id == a_id => {
            assert_eq!(*stream_id, stream);
            Some(())
        }
        _ => None,
    })
    .await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_in_place_keeps_media_flowing() {
    let Call {
        server: _server,
        a,
        b,
        mut eb,
        a_id,
        track,
        ..
    } = call("restart").await;
    let mut ea = a.events();
    let b_id = b.peer_id().expect("b");
    // Each side restarts once (the polite and the impolite one), answered in place.
    a.remote(&b_id)
        .expect("b")
        .restart_ice()
        .await
        .expect("a restarts");
    frames(&track, 3).await;
    b.remote(&a_id)
        .expect("a")
        .restart_ice()
        .await
        .expect("b restarts");
    frames(&track, 10).await;
    // No rebuild, no error: the same track kept flowing.
    for ev in [&mut ea, &mut eb] {
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), ev.recv()).await {
            assert!(
                !matches!(
                    e,
                    RoomEvent::ConnectionReset { .. } | RoomEvent::NegotiationError { .. }
                ),
                "{e:?}"
            );
        }
    }
    a.close().await;
    b.close().await;
}

/// Record every connection-state change and reset/error of a room, with its time.
fn record(
    mut ev: RoomEvents,
    t0: Instant,
) -> std::sync::Arc<std::sync::Mutex<Vec<(Duration, String)>>> {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = log.clone();
    tokio::spawn(async move {
        while let Some(e) = ev.recv().await {
            let what = match e {
                RoomEvent::ConnectionState { state, .. } => format!("{state:?}"),
                RoomEvent::ConnectionReset { .. } => "reset".into(),
                RoomEvent::NegotiationError { message, .. } => format!("error {message}"),
                _ => continue,
            };
            out.lock().expect("log").push((t0.elapsed(), what));
        }
    });
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_outage_runs_the_restart_ladder_and_recovers() {
    let Call {
        server: _server,
        a,
        b,
        a_id,
        track,
        ..
    } = call("outage").await;
    let outage = Duration::from_secs(20);
    let started = Instant::now();
    let (log_a, log_b) = (record(a.events(), started), record(b.events(), started));
    b.remote(&a_id).expect("a").simulate_network_outage(outage);
    tokio::time::sleep(outage).await;
    // Fresh frames flow on the same track again (the connection was restarted in place).
    frames(&track, 50).await;
    let back = started.elapsed();
    // ICE reports the restarted connection as connected again.
    tokio::time::timeout(WAIT, async {
        loop {
            let done = [&log_a, &log_b].iter().all(|l| {
                let l = l.lock().expect("log");
                l.is_empty() || l.last().is_some_and(|(_, s)| s == "Connected")
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("connected again");
    let (log_a, log_b) = (
        log_a.lock().expect("log").clone(),
        log_b.lock().expect("log").clone(),
    );
    println!(
        "OUTAGE {} s: a {log_a:?}, b {log_b:?}, media back by {} ms",
        outage.as_secs(),
        back.as_millis()
    );
    let all: Vec<&(Duration, String)> = log_a.iter().chain(log_b.iter()).collect();
    assert!(
        all.iter().any(|(_, s)| s == "Disconnected"),
        "the loss was detected (and the restart ladder started)"
    );
    assert!(
        !all.iter()
            .any(|(_, s)| s == "reset" || s.starts_with("error")),
        "recovered in place"
    );
    a.close().await;
    b.close().await;
}

/// Open a channel to the first peer that joins, as soon as it joins; return it with the
/// channel the other side opened to us.
async fn open_at_peer_joined(
    peer: RoomPeer,
    mut ev: RoomEvents,
    label: &'static str,
) -> (DataChannel, DataChannel) {
    let remote = wait_for(&mut ev, |e| match e {
        RoomEvent::PeerJoined { peer_id, .. } => Some(peer_id.clone()),
        _ => None,
    })
    .await;
    let ours = peer
        .create_data_channel(&remote, label)
        .await
        .expect("our channel opens");
    let theirs = wait_for(&mut ev, |e| match e {
        RoomEvent::DataChannelOpened { channel, .. } if channel.label() != label => {
            Some(channel.clone())
        }
        _ => None,
    })
    .await;
    (ours, theirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_opened_at_peer_joined_survive_lost_offers_and_glare() {
    // Both sides open a channel at PeerJoined, before any offer/answer, and each loses its
    // first offer. Both wait for answers that never come; their answer watchdogs roll the
    // offers back and offer again, and those offers collide: the impolite side ignores the
    // polite one's, the polite side accepts the impolite one's and rolls its own back. str0m
    // drops a channel with the offer that carried it; each must ride the next offer.
    let server = server_on("127.0.0.1:0").await;
    let url = server.url();
    let options = || RoomOptions::default().simulate_lost_offers(1);
    let (a, b) = (peer_with(&url, options()), peer_with(&url, options()));
    let (ea, eb) = (a.events(), b.events());
    a.join("glare", false).await.expect("join a");
    b.join("glare", false).await.expect("join b");
    let at_a = tokio::spawn(open_at_peer_joined(a.clone(), ea, "from-a"));
    let at_b = tokio::spawn(open_at_peer_joined(b.clone(), eb, "from-b"));
    let (a_ours, a_theirs) = at_a.await.expect("a");
    let (b_ours, b_theirs) = at_b.await.expect("b");
    assert_eq!((a_theirs.label(), b_theirs.label()), ("from-b", "from-a"));
    a_ours.send("a to b").await.expect("send");
    b_ours.send("b to a").await.expect("send");
    let got_b = tokio::time::timeout(WAIT, b_theirs.recv())
        .await
        .expect("recv");
    let got_a = tokio::time::timeout(WAIT, a_theirs.recv())
        .await
        .expect("recv");
    assert_eq!(got_b, Some(DataMessage::Text("a to b".into())));
    assert_eq!(got_a, Some(DataMessage::Text("b to a".into())));
    a.close().await;
    b.close().await;
}

/// A track of a named stream added right after both peers joined, while their connection is
/// being set up (either side offering first, with or without the track): it reaches the far
/// end, under its stream, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_track_added_during_call_setup_arrives() {
    let server = server_on("127.0.0.1:0").await;
    let url = server.url();
    let mut missed = Vec::new();
    for i in 0..12 {
        let (a, b) = (peer(&url), peer(&url));
        let mut eb = b.events();
        let room = format!("setup-race-{i}");
        a.join(&room, false).await.expect("join a");
        b.join(&room, false).await.expect("join b");
        let t = LocalTrack::audio_with("file-1", "file", None);
        a.add_track(&t);
        let p = pace(t.clone());
        let a_id = a.peer_id().expect("a id");
        let got = tokio::time::timeout(Duration::from_secs(5), track_from(&mut eb, &a_id)).await;
        match got {
            Ok(track) => assert_eq!(track.stream_id(), Some("file"), "round {i}"),
            Err(_) => missed.push((i, a_id < b.peer_id().expect("b id"))),
        }
        p.abort();
        a.close().await;
        b.close().await;
    }
    assert!(
        missed.is_empty(),
        "no track in rounds (index, a < b): {missed:?}"
    );
}
