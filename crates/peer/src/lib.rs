//! # parlor-peer
//!
//! The Parlor peer SDK. Today: [`signalling`], a client for the Metered-compatible signalling
//! protocol (connect with a key or a token provider, subscribe, publish, send, presence,
//! reconnect ladder, heartbeat). Next (issue #3): the WebRTC room peer built on it.
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

pub mod events;
pub mod room;
pub mod rtc;
pub mod signalling;
