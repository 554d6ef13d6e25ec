//! Stack-independent WebRTC rules of the room peer (spec §2), as pure code: signal envelopes,
//! track metadata, SDP readers, perfect negotiation, candidate caps and the ICE-restart
//! ladder. The WebRTC engine driver (issue #3) plugs into these; nothing here does IO.

pub mod negotiation;
pub mod sdp;
pub mod signal;
pub mod track_cache;
