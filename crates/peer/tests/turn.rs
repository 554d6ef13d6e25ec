//! TURN through a real coturn (Debian package, started here): the server mints REST
//! credentials into `welcome.metadata.iceServers`, and two Rust room peers that announce
//! relayed candidates only exchange audio and data through the relay.

use std::time::Duration;

mod common;

use common::{
    Coturn, TURN_SECRET, WAIT, frames, pace, peer_with, server_with_turn, track_from, wait_for,
};
use parlor_peer::room::{RoomEvent, RoomOptions, RoomPeer};
use parlor_peer::{DataMessage, LocalTrack, PeerConnectionState};

/// Two peers in `room`, each sending a paced audio track; returns once each has frames.
async fn exchange(a: &RoomPeer, b: &RoomPeer, room: &str) {
    let (mut ea, mut eb) = (a.events(), b.events());
    let (ta, tb) = (LocalTrack::audio(), LocalTrack::audio());
    a.add_track(&ta);
    b.add_track(&tb);
    let _pa = pace(ta);
    let _pb = pace(tb);
    a.join(room, false).await.expect("join a");
    b.join(room, false).await.expect("join b");
    let (a_id, b_id) = (a.peer_id().expect("a id"), b.peer_id().expect("b id"));
    let at_b = track_from(&mut eb, &a_id).await;
    let at_a = track_from(&mut ea, &b_id).await;
    frames(&at_b, 25).await;
    frames(&at_a, 25).await;

    let dc_a = a.create_data_channel(&b_id, "chat").await.expect("channel");
    let dc_b = wait_for(&mut eb, |e| match e {
        RoomEvent::DataChannelOpened { peer_id, channel } if *peer_id == a_id => {
            Some(channel.clone())
        }
        _ => None,
    })
    .await;
    for i in 0..50 {
        dc_a.send(format!("m{i}")).await.expect("send");
    }
    for i in 0..50 {
        let m = tokio::time::timeout(WAIT, dc_b.recv()).await.expect("recv");
        assert_eq!(m, Some(DataMessage::Text(format!("m{i}"))));
    }
    dc_b.send(vec![7u8; 1000]).await.expect("send");
    let back = tokio::time::timeout(WAIT, dc_a.recv()).await.expect("recv");
    assert_eq!(back, Some(DataMessage::Binary(vec![7u8; 1000])));
}

/// Two relay-only peers in `room` must not reach `Connected` within 4 s.
async fn never_connects(url: &str, room: &str) {
    let relay = || RoomOptions::default().relay_only(true);
    let (a, b) = (peer_with(url, relay()), peer_with(url, relay()));
    let mut ea = a.events();
    a.join(room, false).await.expect("join a");
    b.join(room, false).await.expect("join b");
    let b_id = b.peer_id().expect("b id");
    let connected = tokio::time::timeout(
        Duration::from_secs(4),
        wait_for(&mut ea, |e| match e {
            RoomEvent::ConnectionState { peer_id, state }
                if *peer_id == b_id && *state == PeerConnectionState::Connected =>
            {
                Some(())
            }
            _ => None,
        }),
    )
    .await;
    assert!(connected.is_err(), "connected without a usable relay");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_exchange_audio_and_data_through_coturn() {
    let turn = Coturn::start(TURN_SECRET).await;
    let server = server_with_turn(vec![turn.url()], TURN_SECRET).await;
    let relay = || RoomOptions::default().relay_only(true);
    let (a, b) = (
        peer_with(&server.url(), relay()),
        peer_with(&server.url(), relay()),
    );
    exchange(&a, &b, "turn").await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_through_coturn_over_tcp() {
    let turn = Coturn::start(TURN_SECRET).await;
    let server = server_with_turn(vec![turn.tcp_url()], TURN_SECRET).await;
    let relay = || RoomOptions::default().relay_only(true);
    let (a, b) = (
        peer_with(&server.url(), relay()),
        peer_with(&server.url(), relay()),
    );
    exchange(&a, &b, "turn-tcp").await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_through_coturn_over_tls() {
    let turn = Coturn::start_tls(TURN_SECRET).await;
    let (url, ca) = turn.tls_url();
    let server = server_with_turn(vec![url], TURN_SECRET).await;
    let relay = || {
        RoomOptions::default()
            .relay_only(true)
            .turn_tls_root_certificates_pem(&ca)
    };
    let (a, b) = (
        peer_with(&server.url(), relay()),
        peer_with(&server.url(), relay()),
    );
    exchange(&a, &b, "turn-tls").await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_turns_certificate_is_refused() {
    // Without the private CA the TLS handshake fails: no relay, so relay-only cannot connect.
    let turn = Coturn::start_tls(TURN_SECRET).await;
    let (url, _) = turn.tls_url();
    let server = server_with_turn(vec![url], TURN_SECRET).await;
    never_connects(&server.url(), "untrusted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_turn_credentials_fall_back_to_host_candidates() {
    // coturn knows another secret: every allocation is refused. Gathering must still end
    // (end-of-candidates goes out) and the host path must carry the call.
    let turn = Coturn::start("a-different-secret-entirely").await;
    let server = server_with_turn(vec![turn.url()], TURN_SECRET).await;
    let (a, b) = (
        peer_with(&server.url(), RoomOptions::default()),
        peer_with(&server.url(), RoomOptions::default()),
    );
    exchange(&a, &b, "fallback").await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_without_a_working_relay_does_not_connect() {
    let turn = Coturn::start("a-different-secret-entirely").await;
    let server = server_with_turn(vec![turn.url()], TURN_SECRET).await;
    never_connects(&server.url(), "nowhere").await;
}
