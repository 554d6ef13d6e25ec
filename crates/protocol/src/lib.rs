//! # parlor-protocol
//!
//! The wire protocol of Parlor, compatible with Metered's Realtime Messaging clients
//! (`metered-realtime` for Python, `@metered-ca/realtime` for browsers). The contract is
//! written up in the repository's `docs/protocol.md`; section numbers (`§n`) in the docs
//! refer to its headings.
//!
//! This crate is **pure**: no sockets, no clock, no async. It is the one seam the server and
//! the peer SDK share:
//!
//! * [`parse_client_frame`] turns one client text frame into a validated [`ClientFrame`], or the
//!   [`FrameError`] the protocol prescribes (code + correlation);
//! * [`event`] encodes every server frame (`welcome`, `ack`, `error`, `message`, `direct`,
//!   `presence`, `going_away`, `pong`), forwarding payloads byte for byte;
//! * [`validate`] holds the field rules (channel, peer id, request id, reserved prefixes,
//!   channel-pattern globs);
//! * [`client`] is the client side: request builders and strict server-frame parsing;
//! * [`worker`] is the agent-worker protocol (`/v1/worker`);
//! * [`ErrorCode`] and [`CloseCode`] are the protocol's codes.
//!
//! ```
//! use parlor_protocol::{event, parse_client_frame, ClientRequest};
//!
//! let frame = parse_client_frame(r#"{"type":"subscribe","channel":"room-42","requestId":"r1"}"#)?;
//! let ClientRequest::Subscribe { channel, .. } = frame.request else { unreachable!() };
//! assert_eq!(event::ack(frame.request_id.as_deref().unwrap()), r#"{"type":"ack","requestId":"r1"}"#);
//! assert_eq!(channel, "room-42");
//! # Ok::<(), parlor_protocol::FrameError>(())
//! ```
#![warn(missing_docs)]

pub mod client;
mod codes;
pub mod event;
mod request;
pub mod validate;
pub mod worker;

pub use codes::{CloseCode, ErrorCode};
pub use request::{ClientFrame, ClientRequest, FrameError, parse_client_frame};
