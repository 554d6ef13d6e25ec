"""Exceptions, with the names and attributes of the ``metered-realtime`` reference SDK."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "AckTimeoutError",
    "DataChannelOverflowError",
    "DisconnectedError",
    "MeteredPeerOversizedError",
    "MeteredPeerReplaceTrackError",
    "MeteredPeerSendError",
    "MeteredPeerStateError",
    "MeteredRealtimeError",
    "NotConnectedError",
    "ReconcileTimeoutError",
    "ReplaceTrackFailure",
    "ServerRequestError",
    "SignallingConnectError",
    "SignallingError",
]


class MeteredRealtimeError(Exception):
    """The base of every error this package raises."""


class SignallingError(MeteredRealtimeError):
    """A signalling-layer failure."""


class NotConnectedError(SignallingError):
    """The call needs a live connection; nothing was sent (safe to retry after ``Connected``)."""


class SignallingConnectError(SignallingError):
    """The first ``connect()`` failed (auth, limits, network, no welcome)."""

    def __init__(self, close_code: int, close_reason: str, message: str | None = None) -> None:
        self.close_code = close_code
        self.close_reason = close_reason
        super().__init__(
            message or f"signalling connection failed (code={close_code}, reason={close_reason!r})"
        )


class ServerRequestError(SignallingError):
    """The server answered a request with an ``error`` frame (``code`` passes through)."""

    def __init__(self, code: str, message: str | None = None, request_id: str | None = None) -> None:
        self.code = code
        self.request_id = request_id
        super().__init__(message or f"server rejected request: {code}")


class AckTimeoutError(SignallingError):
    """A request was not acknowledged in time."""

    def __init__(self, request_id: str, timeout: float) -> None:
        self.request_id = request_id
        self.timeout = timeout
        super().__init__(f"request {request_id} timed out after {timeout}s waiting for ack")


class DisconnectedError(SignallingError):
    """A pending request failed because the connection dropped."""


class ReconcileTimeoutError(MeteredRealtimeError):
    """No roster arrived after a reconnect, despite forced re-subscribes."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "reconcile timed out: no channel presence arrived after reconnect; "
            "close() this MeteredPeer and construct a new one to re-join"
        )


SendErrorCode = Literal["reserved_channel", "not_joined", "invalid_args", "self_send"]


class MeteredPeerSendError(MeteredRealtimeError):
    """``send``/``send_to``/``join`` refused before anything went out."""

    def __init__(self, code: SendErrorCode, message: str) -> None:
        self.code = code
        super().__init__(message)


class MeteredPeerOversizedError(MeteredRealtimeError):
    """The serialized payload is larger than the server's ``maxMessageSize``."""

    def __init__(self, size: int, cap: int) -> None:
        self.size = size
        self.cap = cap
        super().__init__(f"serialized message is {size} bytes, exceeds the server cap of {cap}")


StateErrorCode = Literal["invalid_state", "track_already_attached"]


class MeteredPeerStateError(MeteredRealtimeError):
    """The call is not allowed in the peer's current state."""

    def __init__(
        self, code: StateErrorCode, method: str, message: str, current_state: str | None = None
    ) -> None:
        self.code = code
        self.method = method
        self.current_state = current_state
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ReplaceTrackFailure:
    """One peer's failure inside a :class:`MeteredPeerReplaceTrackError`."""

    peer_id: str
    err: Exception


class MeteredPeerReplaceTrackError(MeteredRealtimeError):
    """``replace_track`` failed for some peers."""

    def __init__(
        self, succeeded: tuple[str, ...], failed: tuple[ReplaceTrackFailure, ...]
    ) -> None:
        self.succeeded = succeeded
        self.failed = failed
        super().__init__(
            f"replace_track failed for {len(failed)} of {len(succeeded) + len(failed)} peer(s)"
        )


class DataChannelOverflowError(MeteredRealtimeError):
    """A data channel's send queue is full."""

    def __init__(self, queued: int, cap: int) -> None:
        self.queued = queued
        self.cap = cap
        super().__init__(f"data channel send queue is full ({queued} of {cap})")


def from_native(err: BaseException) -> BaseException:
    """Map a ``NativeError(kind, message, detail)`` to the reference's exception."""
    args = getattr(err, "args", ())
    if len(args) != 3:
        return err
    kind, message, detail_text = args
    try:
        detail: Any = json.loads(detail_text)
    except (TypeError, ValueError):
        detail = None
    d = detail if isinstance(detail, dict) else {}
    if kind == "not_connected":
        return NotConnectedError(message)
    if kind == "connect_failed":
        return SignallingConnectError(
            d.get("close_code") or 1006, d.get("reason") or "", message
        )
    if kind == "server_request":
        return ServerRequestError(d.get("code", ""), d.get("message"), d.get("request_id"))
    if kind == "ack_timeout":
        return AckTimeoutError(d.get("request_id", ""), d.get("timeout", 0.0))
    if kind == "disconnected":
        return DisconnectedError(message)
    if kind == "oversized":
        return MeteredPeerOversizedError(d.get("size", 0), d.get("cap", 0))
    if kind == "invalid_argument":
        if detail == "reserved_channel":
            return MeteredPeerSendError("reserved_channel", "channel names starting with '__' are reserved")
        return ValueError(message)
    if kind in ("invalid_state", "room_state"):
        return MeteredPeerStateError("invalid_state", d.get("method", ""), message, d.get("state"))
    if kind == "not_joined":
        return MeteredPeerSendError("not_joined", "not joined to a channel")
    if kind == "self_send":
        return MeteredPeerSendError("self_send", "cannot send_to yourself")
    if kind == "unknown_peer":
        return MeteredPeerSendError("invalid_args", message)
    return MeteredRealtimeError(message)
