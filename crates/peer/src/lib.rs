//! # parlor-peer
//!
//! The Parlor peer SDK: join a room on a Metered-compatible server and talk WebRTC with
//! browsers (`@metered-ca/realtime`), Python peers (`metered-realtime` on aiortc) and other
//! Rust peers.
//!
//! * [`RoomPeer`] — the `MeteredPeer` equivalent: join/leave, remote peers ([`RemotePeer`],
//!   the same object across reconnects), `send`/`send_to`, tracks fanned out to every peer,
//!   data channels, events ([`RoomEvent`]).
//! * [`LocalTrack`] / [`RemoteTrack`] — media in and out as encoded (Opus) frames.
//! * [`DataChannel`] — a data channel with backpressure (1 MiB buffered, 256 queued sends).
//! * [`SignallingClient`] — the signalling protocol alone (pub/sub, presence, directs,
//!   reconnect ladder with [`ReconnectOptions`]).
//! * [`rtc`] — the pure negotiation rules (perfect negotiation, candidate caps, ICE-restart
//!   ladder, track metadata) the connections are driven by.
//!
//! ## An agent's skeleton
//!
//! Join a room, consume each human's audio track, and push a reply on one outbound voice
//! (speech-to-text, the LLM and text-to-speech plug in where the comments say):
//!
//! ```no_run
//! use parlor_peer::{
//!     EncodedFrame, LocalTrack, ReconnectOptions, RoomEvent, RoomPeer, SignallingClient,
//! };
//!
//! # async fn agent() -> Result<(), Box<dyn std::error::Error>> {
//! let client = SignallingClient::builder()
//!     .url("ws://127.0.0.1:7800")
//!     .api_key("pk_test_x")
//!     .reconnect(Some(ReconnectOptions::daemon()))
//!     .build()?;
//! let room = RoomPeer::new(client);
//! let mut events = room.events();
//!
//! // One outbound voice, sent to every current and future peer in the room.
//! let voice = LocalTrack::audio();
//! room.add_track(&voice);
//! room.join("support-room", true).await?;
//!
//! while let Some(event) = events.recv().await {
//!     match event {
//!         // A human's microphone: one loop per track, tagged by peer id.
//!         RoomEvent::Track { peer_id, track } => {
//!             let (room, voice) = (room.clone(), voice.clone());
//!             tokio::spawn(async move {
//!                 while let Some(frame) = track.recv().await {
//!                     // Speech-to-text would decode `frame` here; when a reply is ready,
//!                     // text-to-speech yields Opus packets pushed in real time (20 ms each).
//!                     let reply_packet: Vec<u8> = frame.data.to_vec();
//!                     if let Ok(f) = EncodedFrame::opus(reply_packet) {
//!                         voice.push(f);
//!                     }
//!                 }
//!                 // The track ended (the human left): post a transcript line to the room.
//!                 let _ = room
//!                     .send(&serde_json::json!({"type": "transcript", "peer": peer_id}))
//!                     .await;
//!             });
//!         }
//!         // Control from the browser over a data channel it opened.
//!         RoomEvent::DataChannelOpened { channel, .. } => {
//!             tokio::spawn(async move {
//!                 while let Some(msg) = channel.recv().await {
//!                     println!("control: {msg:?}");
//!                 }
//!             });
//!         }
//!         RoomEvent::Fatal(e) => return Err(e.into()),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Signalling only
//!
//! ```no_run
//! use parlor_peer::signalling::{Event, SignallingClient, SubscribeOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = SignallingClient::builder()
//!     .url("ws://127.0.0.1:7800")
//!     .api_key("pk_test_x")
//!     .build()?;
//! let mut events = client.events();
//! client.connect().await?;
//! client.subscribe("room-42", SubscribeOptions::default()).await?;
//! client.publish("room-42", &serde_json::json!({"hello": "world"})).await?;
//! while let Some(event) = events.recv().await {
//!     if let Event::Message { sender_peer_id, data, .. } = event {
//!         println!("{sender_peer_id}: {}", data.get());
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod connection;
pub mod events;
pub mod room;
pub mod rtc;
pub mod signalling;
pub mod track;

pub use connection::data_channel::{DataChannel, DataChannelError, DataMessage};
pub use connection::{ConnectionError, PeerConnectionState};
pub use room::{RemoteEvents, RemotePeer, RoomError, RoomEvent, RoomEvents, RoomOptions, RoomPeer};
pub use signalling::{PendingAck, ReconnectOptions, SignallingClient};
pub use track::{EncodedFrame, LocalTrack, RemoteTrack, TrackKind};
