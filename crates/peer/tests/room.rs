//! Room peers (membership + data over signalling) against the real server.

mod common;

use serde_json::json;

use std::time::Duration;

use common::{WAIT, peer, server_on, wait_for};
use parlor_peer::room::{DataKind, RoomError, RoomEvent, RoomState};

#[tokio::test]
async fn two_peers_meet_exchange_data_and_leave() {
    let server = server_on("127.0.0.1:0").await;
    let url = server.url();
    let a = peer(&url);
    let b = peer(&url);
    let mut ea = a.events();
    let mut eb = b.events();
    assert!(matches!(a.send(&1).await, Err(RoomError::NotJoined)));
    a.join("room", false).await.expect("join a");
    b.join("room", false).await.expect("join b");
    assert_eq!(a.state(), RoomState::Joined);
    let a_id = a.peer_id().expect("a");
    let b_id = b.peer_id().expect("b");
    let seen_by_a = wait_for(&mut ea, |e| match e {
        RoomEvent::PeerJoined { peer_id, .. } => Some(peer_id.clone()),
        _ => None,
    })
    .await;
    let seen_by_b = wait_for(&mut eb, |e| match e {
        RoomEvent::PeerJoined { peer_id, .. } => Some(peer_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!((seen_by_a, seen_by_b), (b_id.clone(), a_id.clone()));
    assert_eq!(a.remote_peers(), vec![b_id.clone()]);

    a.send(&json!({"hello": "room"})).await.expect("broadcast");
    let (from, kind, data) = wait_for(&mut eb, |e| match e {
        RoomEvent::Data {
            sender_peer_id,
            kind,
            data,
            ..
        } => Some((sender_peer_id.clone(), *kind, data.get().to_owned())),
        _ => None,
    })
    .await;
    assert_eq!(
        (from.as_str(), kind, data.as_str()),
        (a_id.as_str(), DataKind::Broadcast, r#"{"hello":"room"}"#)
    );

    b.send_to(&a_id, &json!([1, 2])).await.expect("direct");
    let (kind, data) = wait_for(&mut ea, |e| match e {
        RoomEvent::Data { kind, data, .. } => Some((*kind, data.get().to_owned())),
        _ => None,
    })
    .await;
    assert_eq!((kind, data.as_str()), (DataKind::Direct, "[1,2]"));
    assert!(matches!(
        a.send_to(&a_id, &1).await,
        Err(RoomError::SelfSend)
    ));
    assert!(matches!(
        a.join("again", false).await,
        Err(RoomError::InvalidState { .. })
    ));

    b.close().await;
    let left = wait_for(&mut ea, |e| match e {
        RoomEvent::PeerLeft { peer_id } => Some(peer_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left, b_id);
    assert_eq!(b.state(), RoomState::Closed);
    a.close().await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn remote_peers_survive_a_server_restart() {
    let server = server_on("127.0.0.1:0").await;
    let url = server.url();
    let addr = server.local_addr().to_string();
    let a = peer(&url);
    let b = peer(&url);
    let mut ea = a.events();
    a.join("room", false).await.expect("join a");
    b.join("room", false).await.expect("join b");
    wait_for(&mut ea, |e| {
        matches!(e, RoomEvent::PeerJoined { .. }).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    server.shutdown().await.expect("shutdown");
    wait_for(&mut ea, |e| {
        matches!(e, RoomEvent::StateChange(RoomState::Reconnecting)).then_some(())
    })
    .await;
    let server2 = server_on(&addr).await;
    // Both reconnect with new ids: A sees B's old id leave and B's new id join (a reconnect
    // is not a continuation on the wire), and returns to Joined.
    let mut saw_left = false;
    let mut saw_joined = false;
    while !(saw_left && saw_joined) {
        match wait_for(&mut ea, |e| Some(e.clone())).await {
            RoomEvent::PeerLeft { .. } => saw_left = true,
            RoomEvent::PeerJoined { .. } => saw_joined = true,
            RoomEvent::Fatal(e) => panic!("{e}"),
            _ => {}
        }
    }
    tokio::time::timeout(WAIT, async {
        while a.state() != RoomState::Joined {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("joined again");
    assert_eq!(a.remote_peers(), vec![b.peer_id().expect("b")]);
    eprintln!(
        "room recovered {:?} after the server stopped",
        started.elapsed()
    );
    a.close().await;
    b.close().await;
    server2.shutdown().await.expect("shutdown");
}
