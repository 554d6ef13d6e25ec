//! Error codes (spec §1.11) and WebSocket close codes (spec §1.12).

use std::fmt;

/// The `code` of an `error` frame. The set the real clients know (spec §1.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not JSON, not an object, bad `type`, wrong field types or an invalid `requestId`.
    MalformedMessage,
    /// `type` is not one of subscribe, unsubscribe, publish, send, ping.
    UnknownType,
    /// `channel` missing or failing the channel rules.
    InvalidChannel,
    /// `to` missing or failing the peer-id rules.
    InvalidPeerId,
    /// The credential's channel patterns do not cover the channel.
    ChannelNotAuthorized,
    /// The channel uses a reserved prefix (`_metered/`, `_internal/`, `_system/`).
    ChannelReserved,
    /// Too many subscriptions on this connection, or the channel is full.
    ChannelLimitExceeded,
    /// The target of a `send` is not connected in this tenant.
    PeerNotFound,
    /// `publish`/`send` without a `data` key.
    MissingData,
    /// The credential lacks the action (subscribe, publish, send, presence).
    ActionNotPermitted,
    /// The account's message quota is exhausted.
    OverMessageQuota,
    /// A transient backend failure.
    BackendError,
    /// An unexpected server fault.
    InternalError,
}

impl ErrorCode {
    /// Every code, in the order of spec §1.11.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::MalformedMessage,
        ErrorCode::UnknownType,
        ErrorCode::InvalidChannel,
        ErrorCode::InvalidPeerId,
        ErrorCode::ChannelNotAuthorized,
        ErrorCode::ChannelReserved,
        ErrorCode::ChannelLimitExceeded,
        ErrorCode::PeerNotFound,
        ErrorCode::MissingData,
        ErrorCode::ActionNotPermitted,
        ErrorCode::OverMessageQuota,
        ErrorCode::BackendError,
        ErrorCode::InternalError,
    ];

    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedMessage => "malformed_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::InvalidPeerId => "invalid_peer_id",
            ErrorCode::ChannelNotAuthorized => "channel_not_authorized",
            ErrorCode::ChannelReserved => "channel_reserved",
            ErrorCode::ChannelLimitExceeded => "channel_limit_exceeded",
            ErrorCode::PeerNotFound => "peer_not_found",
            ErrorCode::MissingData => "missing_data",
            ErrorCode::ActionNotPermitted => "action_not_permitted",
            ErrorCode::OverMessageQuota => "over_message_quota",
            ErrorCode::BackendError => "backend_error",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WebSocket close code, with the values the protocol gives meaning to (spec §1.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// Graceful shutdown, sent after `going_away`.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// The WebSocket protocol was broken (RFC 6455 §7.4.1): an unmasked client frame,
    /// reserved bits, an unknown opcode, an oversized or fragmented control frame.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// A text frame that is not UTF-8 (RFC 6455 §7.4.1).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// Protocol abuse, e.g. binary frames.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// A frame or payload over the size cap.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// Unexpected server condition.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// Client-only: the client's inactivity watchdog. The server never sends it.
    pub const CLIENT_INACTIVITY: CloseCode = CloseCode(4000);
    /// Bad, missing or unknown key or token. Terminal for clients.
    pub const INVALID_TOKEN: CloseCode = CloseCode(4001);
    /// The token's `exp` passed. Clients reconnect with a fresh token.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4002);
    /// Authorization revoked. Terminal for clients.
    pub const CHANNEL_NOT_AUTHORIZED: CloseCode = CloseCode(4003);
    /// The account's concurrent-connection cap. Clients back off at least 30 s.
    pub const OVER_CONCURRENT_LIMIT: CloseCode = CloseCode(4010);
    /// The per-connection message-rate bucket ran dry.
    pub const OVER_MESSAGE_RATE: CloseCode = CloseCode(4011);
    /// The account is suspended. Terminal for clients.
    pub const ACCOUNT_SUSPENDED: CloseCode = CloseCode(4012);
    /// An operator disconnected this peer. Terminal for clients.
    pub const ADMIN_DISCONNECT: CloseCode = CloseCode(4020);

    /// Whether the real clients stop reconnecting on this code (exactly 4001, 4003, 4012, 4020).
    pub const fn is_terminal(self) -> bool {
        matches!(self.0, 4001 | 4003 | 4012 | 4020)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_codes_are_exactly_the_four() {
        let terminal: Vec<u16> = (1000..5000)
            .filter(|c| CloseCode(*c).is_terminal())
            .collect();
        assert_eq!(terminal, vec![4001, 4003, 4012, 4020]);
    }

    #[test]
    fn error_codes_spell_as_on_the_wire() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "malformed_message",
                "unknown_type",
                "invalid_channel",
                "invalid_peer_id",
                "channel_not_authorized",
                "channel_reserved",
                "channel_limit_exceeded",
                "peer_not_found",
                "missing_data",
                "action_not_permitted",
                "over_message_quota",
                "backend_error",
                "internal_error"
            ]
        );
    }
}
