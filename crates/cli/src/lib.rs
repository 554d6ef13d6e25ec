//! # parlor
//!
//! Self-hostable realtime rooms for AI voice agents. This crate is the `parlor` command and
//! re-exports the peer SDK ([`parlor_peer`]) at its root, so an agent depends on one crate:
//!
//! ```no_run
//! use parlor::{LocalTrack, RoomEvent, RoomPeer, SignallingClient};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let room = RoomPeer::new(
//!     SignallingClient::builder()
//!         .url("ws://127.0.0.1:7800")
//!         .api_key("pk_test_x")
//!         .build()?,
//! );
//! let mut events = room.events();
//! room.add_track(&LocalTrack::audio());
//! room.join("room-1", false).await?;
//! while let Some(e) = events.recv().await {
//!     if let RoomEvent::Track { peer_id, track } = e {
//!         println!("{peer_id} sends {:?}", track.kind());
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The room server is [`server`] (`parlor serve`). See the [`parlor_peer`] docs for the full
//! agent skeleton.

pub use parlor_peer::*;
pub use parlor_server as server;
