"""Events, as frozen dataclasses with the names and fields of the ``metered-realtime`` SDK.

Handlers are keyed by the event's type: ``peer.on(PeerJoined)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .media import MediaStream
    from .peer import RemotePeer
    from .types import IceServerConfig

__all__ = [
    "Connected",
    "DCClose",
    "DCError",
    "DCMessage",
    "DCOpen",
    "Data",
    "DataChannelOpened",
    "Direct",
    "Disconnected",
    "Event",
    "FatalError",
    "GoingAway",
    "IceCandidateError",
    "Joined",
    "Lagged",
    "Left",
    "Message",
    "NegotiationError",
    "PeerJoined",
    "PeerLeft",
    "Presence",
    "PresencePeer",
    "ServerError",
    "StateChange",
    "StreamAdded",
    "StreamRemoved",
    "TokenProviderError",
    "Track",
]


@dataclass(frozen=True, slots=True)
class PresencePeer:
    """One roster entry."""

    peer_id: str
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """The base of every event."""


@dataclass(frozen=True, slots=True)
class StateChange(Event):
    """A state transition of the emitter (``from`` is a keyword, hence ``from_``)."""

    from_: str
    to: str


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """A welcome arrived (first connect or reconnect)."""

    peer_id: str
    server_time: int
    expires_at: int | None
    is_reconnect: bool
    max_message_size: int
    ice_servers: tuple[IceServerConfig, ...] | None = None


@dataclass(frozen=True, slots=True)
class Disconnected(Event):
    """The socket closed; ``will_reconnect`` says whether the client tries again."""

    code: int
    reason: str
    will_reconnect: bool


@dataclass(frozen=True, slots=True)
class Message(Event):
    """A channel broadcast (``SignallingClient``)."""

    channel: str
    sender_peer_id: str
    data: Any
    sender_metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Direct(Event):
    """A direct message (``SignallingClient``)."""

    sender_peer_id: str
    data: Any
    sender_metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Presence(Event):
    """A roster snapshot or delta (``SignallingClient``)."""

    channel: str
    joined: tuple[PresencePeer, ...]
    left: tuple[PresencePeer, ...]


@dataclass(frozen=True, slots=True)
class ServerError(Event):
    """An error frame not tied to a request of ours."""

    code: str
    message: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class GoingAway(Event):
    """The server is shutting down; reconnect after about this long."""

    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class TokenProviderError(Event):
    """The token provider failed again (from the third failure in a row)."""

    consecutive_failures: int
    err: Exception


@dataclass(frozen=True, slots=True)
class NegotiationError(Event):
    """Negotiation with this remote peer failed (a ``RemotePeer`` event; it may recover on
    the next exchange)."""

    err: Exception


@dataclass(frozen=True, slots=True)
class IceCandidateError(Event):
    """A remote ICE candidate was refused (a ``RemotePeer`` event)."""

    err: Exception


@dataclass(frozen=True, slots=True)
class DCOpen(Event):
    """A data channel opened."""


@dataclass(frozen=True, slots=True)
class DCClose(Event):
    """A data channel closed."""


@dataclass(frozen=True, slots=True)
class DCError(Event):
    """A data channel failed."""

    err: Exception


@dataclass(frozen=True, slots=True)
class DCMessage(Event):
    """A message on a data channel."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Joined(Event):
    """We joined the room."""

    peer_id: str
    channel: str


@dataclass(frozen=True, slots=True)
class Left(Event):
    """We left the room (``close()``)."""

    peer_id: str | None
    channel: str | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PeerJoined(Event):
    """A remote peer is in the room."""

    peer: RemotePeer


@dataclass(frozen=True, slots=True)
class PeerLeft(Event):
    """A remote peer left (its connection is closed)."""

    peer: RemotePeer


@dataclass(frozen=True, slots=True)
class Data(Event):
    """Application data from the room (``broadcast``) or one member (``direct``)."""

    sender_peer_id: str
    data: Any
    kind: Literal["broadcast", "direct"]
    sender_metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class FatalError(Event):
    """The peer failed for good and is closed (construct a new one to rejoin)."""

    err: Exception


@dataclass(frozen=True, slots=True)
class Track(Event):
    """The remote peer's media track arrived (a ``RemotePeer`` event); read it with
    ``iter_frames(track)``."""

    track: Any
    streams: tuple[MediaStream, ...] = ()
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StreamAdded(Event):
    """A remote stream's first track arrived (a ``RemotePeer`` event)."""

    stream: MediaStream
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StreamRemoved(Event):
    """A remote stream's last track ended (a ``RemotePeer`` event)."""

    stream: MediaStream


@dataclass(frozen=True, slots=True)
class DataChannelOpened(Event):
    """The remote peer opened a data channel to us (a ``RemotePeer`` event)."""

    channel: Any


@dataclass(frozen=True, slots=True)
class Lagged(Event):
    """Parlor addition: this reader fell behind and ``dropped`` events were lost (application
    data first; membership, state and fatal events are kept)."""

    dropped: int
