"""Parlor for Python: the API of the ``metered-realtime`` SDK on Parlor's Rust core.

Change ``from metered_realtime import ...`` to ``from parlor import ...``; the names,
arguments, events and exceptions are the reference's. What this release does not offer yet
raises ``NotImplementedError`` naming it (device sources and RTSP; see the README).
"""

from __future__ import annotations

import atexit
from typing import Any

from . import _native
from ._native import __version__ as _core_version
from .data_channel import DataChannel, RawDataChannel
from .errors import (
    AckTimeoutError,
    DataChannelOverflowError,
    DisconnectedError,
    MeteredPeerOversizedError,
    MeteredPeerReplaceTrackError,
    MeteredPeerSendError,
    MeteredPeerStateError,
    MeteredRealtimeError,
    NotConnectedError,
    ReconcileTimeoutError,
    ReplaceTrackFailure,
    ServerRequestError,
    SignallingConnectError,
    SignallingError,
)
from .events import (
    Connected,
    Data,
    DataChannelOpened,
    DCClose,
    DCError,
    DCMessage,
    DCOpen,
    Direct,
    Disconnected,
    Event,
    FatalError,
    GoingAway,
    IceCandidateError,
    Joined,
    Lagged,
    Left,
    Message,
    NegotiationError,
    PeerJoined,
    PeerLeft,
    Presence,
    PresencePeer,
    ServerError,
    StateChange,
    StreamAdded,
    StreamRemoved,
    TokenProviderError,
    Track,
)
from ._logging import Logger, NoopLogger, StdlibLogger
from .media_io import FilePlayer, from_file
from .media import (
    AudioFrame,
    AudioSource,
    MediaStream,
    MediaStreamError,
    RemoteAudioTrack,
    StreamMetadata,
    iter_frames,
)
from .options import ReconnectOptions, SignallingClientOptions, SubscribeOptions, TokenProviderFn
from .peer import MeteredPeer, RemotePeer
from .signalling import SignallingClient
from .types import (
    ErrorCode,
    IceServerConfig,
    MeteredPeerState,
    PeerConnectionState,
    SignallingClientState,
    WsCloseCode,
)

__version__ = _core_version

# Before the interpreter finalizes, the native core stops handing results to Python (a
# runtime thread taking the GIL during finalization would abort the process).
atexit.register(_native._shutdown)

_NOT_YET = {
    "from_rtsp",
    "from_camera",
    "from_microphone",
    "screen_share",
}


def __getattr__(name: str) -> Any:
    if name in _NOT_YET:
        raise NotImplementedError(
            f"parlor.{name}: device and stream sources are not in parlor-realtime yet; "
            "push PCM into an AudioSource (or play a file with from_file) instead"
        )
    raise AttributeError(f"module 'parlor' has no attribute {name!r}")


__all__ = [
    "AckTimeoutError",
    "AudioFrame",
    "AudioSource",
    "Connected",
    "DCClose",
    "DCError",
    "DCMessage",
    "DCOpen",
    "Data",
    "DataChannel",
    "DataChannelOpened",
    "DataChannelOverflowError",
    "Direct",
    "Disconnected",
    "DisconnectedError",
    "ErrorCode",
    "Event",
    "FatalError",
    "FilePlayer",
    "GoingAway",
    "IceCandidateError",
    "IceServerConfig",
    "Joined",
    "Lagged",
    "Left",
    "Logger",
    "MediaStream",
    "MediaStreamError",
    "Message",
    "MeteredPeer",
    "MeteredPeerOversizedError",
    "MeteredPeerReplaceTrackError",
    "MeteredPeerSendError",
    "MeteredPeerState",
    "MeteredPeerStateError",
    "MeteredRealtimeError",
    "NegotiationError",
    "NoopLogger",
    "NotConnectedError",
    "PeerConnectionState",
    "PeerJoined",
    "PeerLeft",
    "Presence",
    "PresencePeer",
    "ReconcileTimeoutError",
    "RawDataChannel",
    "ReconnectOptions",
    "RemoteAudioTrack",
    "RemotePeer",
    "ReplaceTrackFailure",
    "ServerError",
    "ServerRequestError",
    "SignallingClient",
    "SignallingClientOptions",
    "SignallingClientState",
    "SignallingConnectError",
    "SignallingError",
    "StateChange",
    "StdlibLogger",
    "StreamAdded",
    "StreamMetadata",
    "StreamRemoved",
    "SubscribeOptions",
    "TokenProviderError",
    "TokenProviderFn",
    "Track",
    "WsCloseCode",
    "__version__",
    "from_file",
    "iter_frames",
]
