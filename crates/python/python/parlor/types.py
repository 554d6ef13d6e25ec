"""Protocol vocabularies (spec §1.6, §1.11, §1.12) and the public state literals."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

__all__ = [
    "ErrorCode",
    "IceServerConfig",
    "MeteredPeerState",
    "PeerConnectionState",
    "SignallingClientState",
    "WsCloseCode",
]

SignallingClientState = Literal["idle", "connecting", "connected", "reconnecting", "closed"]
MeteredPeerState = Literal["idle", "joining", "joined", "reconnecting", "leaving", "closed"]
PeerConnectionState = Literal["idle", "connecting", "connected", "reconnecting", "closed"]

#: The server's error codes (a newer server may send others; they pass through verbatim).
ErrorCode = Literal[
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
    "internal_error",
]


class WsCloseCode(IntEnum):
    """WebSocket close codes of the protocol (4000 is the client's inactivity close)."""

    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    CLIENT_INACTIVITY = 4000
    INVALID_TOKEN = 4001
    TOKEN_EXPIRED = 4002
    CHANNEL_NOT_AUTHORIZED = 4003
    OVER_CONCURRENT_LIMIT = 4010
    OVER_MESSAGE_RATE = 4011
    ACCOUNT_SUSPENDED = 4012
    ADMIN_DISCONNECT = 4020


@dataclass(frozen=True, slots=True)
class IceServerConfig:
    """One ICE server of the welcome's ``metadata.iceServers``."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None
