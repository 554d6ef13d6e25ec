"""``MeteredPeer`` and ``RemotePeer``: the room API of the reference SDK on Parlor's Rust peer.

Membership, negotiation, reconnects and media run in the native core (``parlor._native``);
this module turns its events into the reference's dataclasses and keeps one ``RemotePeer``
object per member for its whole stay (the same object across reconnects).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from . import _native
from ._convert import call, encode, native_client
from ._emitter import AsyncEventEmitter
from .errors import (
    MeteredPeerOversizedError,
    MeteredPeerSendError,
    MeteredPeerStateError,
    MeteredRealtimeError,
    ReconcileTimeoutError,
)
from .events import (
    Data,
    DataChannelOpened,
    FatalError,
    Joined,
    Lagged,
    Left,
    NegotiationError,
    PeerJoined,
    PeerLeft,
    StateChange,
    StreamAdded,
    StreamRemoved,
    Track,
)
from .data_channel import RawDataChannel
from .media import AudioSource, MediaStream, RemoteAudioTrack, StreamMetadata
from .options import ReconnectOptions, SignallingClientOptions, TokenProviderFn
from .types import WsCloseCode

__all__ = ["MeteredPeer", "RemotePeer"]

_TERMINAL = ("left", "fatal")
_CLOSE_NAMES = {c.value: c.name.lower() for c in WsCloseCode}


class RemotePeer(AsyncEventEmitter):
    """A member of the room. Owned by its ``MeteredPeer``; the same object for as long as
    the member stays, across reconnects."""

    def __init__(self, owner: MeteredPeer, peer_id: str, metadata: dict[str, Any] | None) -> None:
        super().__init__(owner._logger)
        self.id = peer_id
        self._owner = owner
        self._metadata = metadata
        self._state = "connecting"
        self._streams: dict[str, MediaStream] = {}
        self._pending_streams: set[str] = set()

    def __repr__(self) -> str:
        return f"RemotePeer(id={self.id!r}, state={self._state!r})"

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The public metadata the member joined with (refreshed after a reconnect)."""
        return self._metadata

    @property
    def state(self) -> str:
        """``connecting``, ``connected``, ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def polite(self) -> bool:
        """The perfect-negotiation role: polite when our id sorts first."""
        local = self._owner.peer_id
        return local is not None and local < self.id

    @property
    def pc(self) -> Any:
        """The reference's escape hatch to aiortc's ``RTCPeerConnection``: there is none."""
        raise NotImplementedError("RemotePeer.pc: Parlor's connections are Rust (str0m)")

    async def send(self, data: Any) -> None:
        """Send ``data`` to this member (through the server)."""
        await self._owner.send_to(self.id, data)

    def create_data_channel(self, label: str, **kwargs: Any) -> RawDataChannel:
        """Open a data channel to this member; returns it at once (``connecting``), wrap
        it in ``DataChannel`` for events. It ends with the current connection: open a new
        one after a reconnect."""
        if kwargs:
            raise NotImplementedError(
                f"create_data_channel options {sorted(kwargs)}: Parlor's channels are "
                "reliable and ordered"
            )
        raw = RawDataChannel(label)
        owner = self._owner

        async def open_it() -> None:
            try:
                native = await owner._room.create_data_channel(self.id, label)
            except _native.NativeError as e:
                raw._failed(MeteredRealtimeError(str(e.args[1] if len(e.args) > 1 else e)))
                return
            raw._opened(native)

        task = asyncio.get_running_loop().create_task(open_it())
        owner._background.add(task)
        task.add_done_callback(owner._background.discard)
        return raw

    def _on_track(self, native: Any, stream_id: str | None, metadata: Any) -> None:
        streams: tuple[MediaStream, ...] = ()
        track = RemoteAudioTrack(native, stream_id)
        if stream_id is not None:
            stream = self._streams.get(stream_id)
            if stream is None or stream_id in self._pending_streams:
                stream = MediaStream(id=stream_id)
                self._streams[stream_id] = stream
                self._pending_streams.discard(stream_id)
                stream.add_track(track)
                self.emit(StreamAdded(stream, metadata))
            else:
                stream.add_track(track)
            streams = (stream,)
        self.emit(Track(track, streams, metadata))

    def _set_state(self, state: str) -> None:
        if state != self._state:
            old, self._state = self._state, state
            self.emit(StateChange(from_=old, to=state))


class MeteredPeer(AsyncEventEmitter):
    """One member of one room. Events: ``Joined``, ``Left``, ``StateChange``, ``PeerJoined``,
    ``PeerLeft``, ``Data``, ``FatalError`` (and Parlor's ``Lagged``); ``RemotePeer`` has
    ``StateChange``, ``Track``, ``StreamAdded``, ``StreamRemoved``, ``NegotiationError``."""

    def __init__(
        self,
        options: SignallingClientOptions | None = None,
        *,
        api_key: str | None = None,
        token_provider: TokenProviderFn | None = None,
        url: str | None = None,
        token_provider_timeout: float = 10.0,
        logger: Any = None,
        reconnect: ReconnectOptions | bool = True,
        inactivity_timeout: float = 60.0,
        auto_resubscribe: bool = True,
        token: str | None = None,
        event_capacity: int = 4096,
    ) -> None:
        super().__init__(logger)
        if options is None:
            options = SignallingClientOptions(
                api_key=api_key,
                token_provider=token_provider,
                url=url,
                token_provider_timeout=token_provider_timeout,
                logger=logger,
                reconnect=reconnect,
                inactivity_timeout=inactivity_timeout,
                auto_resubscribe=auto_resubscribe,
                token=token,
            )
        self._client = native_client(options, event_capacity)
        self._room = _native.NativeRoom(self._client)
        self._state = "idle"
        self._peers: dict[str, RemotePeer] = {}
        self._pump: asyncio.Task[None] | None = None
        self._joined_seen: asyncio.Event | None = None
        self._close_reason: str | None = None
        self._last_peer_id: str | None = None
        self._last_channel: str | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Local tracks: track → (stream, metadata).
        self._tracked: dict[Any, tuple[MediaStream | None, StreamMetadata | None]] = {}

    def __repr__(self) -> str:
        return f"MeteredPeer(state={self._state!r}, peer_id={self.peer_id!r}, channel={self.channel!r})"

    async def __aenter__(self) -> MeteredPeer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def state(self) -> str:
        """``idle``, ``joining``, ``joined``, ``reconnecting``, ``leaving`` or ``closed``."""
        return self._state

    @property
    def peer_id(self) -> str | None:
        """Our id in the room (it changes after a reconnect)."""
        return self._room.peer_id  # type: ignore[no-any-return]

    @property
    def channel(self) -> str | None:
        """The joined room."""
        return self._room.channel  # type: ignore[no-any-return]

    @property
    def remote_peers(self) -> list[RemotePeer]:
        """The members we know, now."""
        return list(self._peers.values())

    # ---------- lifecycle ----------

    async def join(self, channel: str, *, include_sender_metadata: bool = False) -> None:
        """Connect if needed and join ``channel``; returns once subscribed (``Joined`` has
        been emitted). Members arrive as ``PeerJoined``. One room per peer; ``close()`` is
        terminal."""
        if self._state != "idle":
            raise MeteredPeerStateError(
                "invalid_state", "join", f"join: cannot join in state {self._state!r}", self._state
            )
        if not isinstance(channel, str) or not channel:
            raise MeteredPeerSendError("invalid_args", "join: channel must be a non-empty string")
        if _native.is_reserved_channel(channel):
            raise MeteredPeerSendError(
                "reserved_channel", f"join: {channel!r} uses a reserved prefix"
            )
        self._joined_seen = asyncio.Event()
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run_pump())
        self._set_state("joining")
        try:
            await call(self._room.join(channel, include_sender_metadata))
        except BaseException:
            if self._state == "joining":
                self._set_state("idle")
            raise
        self._last_channel = channel
        # The native core emits Joined on its bus; let the pump deliver it first, so that
        # `Joined` handlers have run when join() returns (as in the reference).
        try:
            await asyncio.wait_for(self._joined_seen.wait(), 2.0)
        except asyncio.TimeoutError:
            pass

    def joined(self, channel: str, *, include_sender_metadata: bool = False) -> _JoinedContext:
        """``async with peer.joined("room") as peer:``: join on entry, close on exit."""
        return _JoinedContext(self, channel, include_sender_metadata)

    async def close(self, reason: str | None = None) -> None:
        """Leave the room and close every connection (idempotent, terminal)."""
        if self._state in ("closed", "leaving"):
            return
        self._close_reason = reason
        was_idle = self._state == "idle"
        self._last_peer_id = self.peer_id or self._last_peer_id
        await call(self._room.close())
        if was_idle or self._pump is None:
            self._set_state("closed")
            if self._pump is not None:
                self._pump.cancel()
        else:
            try:
                await asyncio.wait_for(asyncio.shield(self._pump), 5.0)
            except asyncio.TimeoutError:
                self._pump.cancel()
        if self._state != "closed":
            self._finish_close()
        await self._drain_handlers()
        self._end_streams()

    def _finish_close(self) -> None:
        for peer_id in sorted(self._peers):
            self._drop_peer(peer_id)
        self._set_state("closed")
        self.emit(Left(peer_id=self._last_peer_id, channel=self._last_channel, reason=self._close_reason))

    # ---------- data ----------

    async def send(self, data: Any) -> None:
        """Broadcast ``data`` to the room (not echoed to us)."""
        if self._state != "joined":
            raise MeteredPeerSendError(
                "not_joined", f"send: not joined (state={self._state}); call join() first"
            )
        await call(self._room.send(self._checked(data)))

    async def send_to(self, peer_id: str, data: Any) -> None:
        """Send ``data`` to one member, through the server."""
        if self._state != "joined":
            raise MeteredPeerSendError(
                "not_joined", f"send_to: not joined (state={self._state}); call join() first"
            )
        if not isinstance(peer_id, str) or not peer_id:
            raise MeteredPeerSendError(
                "invalid_args", "send_to(peer_id, data): peer_id must be a non-empty string"
            )
        if peer_id == self.peer_id:
            raise MeteredPeerSendError("self_send", "send_to: cannot send to self")
        await call(self._room.send_to(peer_id, self._checked(data)))

    def _checked(self, data: Any) -> str:
        try:
            text = encode(data)
        except ValueError as e:
            raise MeteredPeerSendError("invalid_args", str(e)) from None
        cap = int(self._client.max_message_size)
        size = len(text.encode())
        if size > cap:
            raise MeteredPeerOversizedError(size, cap)
        return text

    # ---------- media ----------

    def _media_allowed(self, method: str, *, also: tuple[str, ...] = ()) -> None:
        if self._state in ("leaving", "closed", *also):
            raise MeteredPeerStateError(
                "invalid_state", method, f"{method}: not allowed in state {self._state!r}", self._state
            )

    def add_track(
        self, track: Any, stream: MediaStream | None = None, metadata: StreamMetadata | None = None
    ) -> None:
        """Send ``track`` (an :class:`AudioSource`) to every current and future member.
        ``stream`` groups it under a stream id at the receivers; ``metadata`` reaches them
        with it. Idempotent for the same track and stream."""
        self._media_allowed("add_track")
        if not isinstance(track, AudioSource):
            raise TypeError(
                f"add_track: Parlor sends parlor.AudioSource tracks, not {type(track).__name__}"
            )
        existing = self._tracked.get(track)
        if existing is not None:
            if existing[0] is stream:
                return
            raise MeteredPeerStateError(
                "track_already_attached",
                "add_track",
                "add_track: track is already attached to another stream; remove_track() first",
            )
        meta_text = None
        if metadata is not None:
            self._checked({"__meteredTrackMeta": metadata})  # the size cap, up front
            meta_text = encode(metadata)
        stream_id = stream.id if stream is not None else uuid.uuid4().hex
        if not track._native.bind(track.id, stream_id, meta_text):
            ids = track._native.ids()
            if stream is not None and ids is not None and ids[1] != stream.id:
                raise ValueError(
                    "add_track: this AudioSource was pushed to before it was added, so it "
                    "already streams under its own id; add it (with its stream) before pushing"
                )
        self._room.add_track(track._native)
        self._tracked[track] = (stream, metadata)
        if stream is not None:
            stream.add_track(track)
        track._added()

    def remove_track(self, track: Any) -> None:
        """Stop sending ``track`` (no-op if it was never added)."""
        self._media_allowed("remove_track")
        entry = self._tracked.pop(track, None)
        if entry is not None:
            self._room.remove_track(track._native)

    def add_stream(self, stream: MediaStream, metadata: StreamMetadata | None = None) -> None:
        """``add_track`` for every track of ``stream`` (each with its own copy of
        ``metadata``)."""
        for track in stream.get_tracks():
            self.add_track(track, stream, dict(metadata) if metadata is not None else None)

    def remove_stream(self, stream: MediaStream) -> None:
        """``remove_track`` for every track of ``stream``."""
        for track in stream.get_tracks():
            self.remove_track(track)

    def get_track_metadata(self, track: Any) -> StreamMetadata | None:
        """The metadata sent with a local track."""
        entry = self._tracked.get(track)
        return entry[1] if entry is not None else None

    def get_stream_metadata(self, stream: MediaStream) -> StreamMetadata | None:
        """The metadata of the first added track of ``stream``."""
        for track in stream.get_tracks():
            entry = self._tracked.get(track)
            if entry is not None:
                return entry[1]
        return None

    async def replace_track(self, old_track: Any, new_track: Any | None) -> None:
        """Send ``new_track`` where ``old_track`` went (in its stream), or nothing."""
        if old_track is None:
            raise TypeError("replace_track: old_track must not be None")
        self._media_allowed("replace_track", also=("reconnecting",))
        entry = self._tracked.get(old_track)
        self.remove_track(old_track)
        if new_track is not None:
            stream, metadata = entry if entry is not None else (None, None)
            self.add_track(new_track, stream, metadata)

    # ---------- events from the core ----------

    def _set_state(self, state: str) -> None:
        if state != self._state:
            old, self._state = self._state, state
            self.emit(StateChange(from_=old, to=state))

    def _drop_peer(self, peer_id: str) -> None:
        remote = self._peers.pop(peer_id, None)
        if remote is not None:
            remote._set_state("closed")
            self.emit(PeerLeft(peer=remote))

    async def _run_pump(self) -> None:
        while True:
            item = await self._room.next_event()
            if item is None:
                break
            kind, fields, obj = item
            try:
                self._on_event(kind, json.loads(fields), obj)
            except Exception as e:  # a malformed event must not stop the pump
                self._logger.error("event not handled", {"kind": kind, "err": repr(e)})
            if kind in _TERMINAL:
                break
        if self._state != "closed":
            self._finish_close()

    def _on_event(self, kind: str, f: dict[str, Any], obj: Any = None) -> None:
        if kind == "state_change":
            to = f["to"]
            if to == "reconnecting":
                for remote in self._peers.values():
                    if remote.state != "closed":
                        remote._set_state("reconnecting")
            if to in ("joined", "reconnecting") or (to == "idle" and self._state == "joining"):
                self._set_state(to)
        elif kind == "joined":
            self._last_peer_id = f["peer_id"]
            self._set_state("joined")
            self.emit(Joined(peer_id=f["peer_id"], channel=f["channel"]))
            if self._joined_seen is not None:
                self._joined_seen.set()
        elif kind == "peer_joined":
            remote = RemotePeer(self, f["peer_id"], f.get("metadata"))
            self._peers[remote.id] = remote
            self.emit(PeerJoined(peer=remote))
        elif kind == "peer_left":
            self._drop_peer(f["peer_id"])
        elif kind == "connection_reset":
            remote = self._peers.get(f["peer_id"])
            if remote is not None:
                meta = json.loads(self._room.remote_metadata(remote.id))
                remote._metadata = meta
                remote._set_state("connecting")
        elif kind == "connection_state":
            remote = self._peers.get(f["peer_id"])
            if remote is not None:
                remote._set_state(f["state"])
        elif kind == "data":
            self.emit(Data(f["sender_peer_id"], f["data"], f["kind"], f.get("sender_metadata")))
        elif kind == "negotiation_error":
            remote = self._peers.get(f["peer_id"])
            if remote is not None:
                remote.emit(NegotiationError(MeteredRealtimeError(f["message"])))
        elif kind == "stream_added":
            remote = self._peers.get(f["peer_id"])
            if remote is not None:
                remote._pending_streams.add(f["stream_id"])
        elif kind == "track":
            remote = self._peers.get(f["peer_id"])
            if remote is not None and obj is not None:
                remote._on_track(obj, f.get("stream_id"), f.get("metadata"))
        elif kind == "stream_removed":
            remote = self._peers.get(f["peer_id"])
            if remote is not None:
                stream = remote._streams.pop(f["stream_id"], None)
                if stream is not None:
                    remote.emit(StreamRemoved(stream))
        elif kind == "data_channel_opened":
            remote = self._peers.get(f["peer_id"])
            if remote is not None and obj is not None:
                remote.emit(DataChannelOpened(RawDataChannel(f["label"], obj)))
        elif kind == "fatal":
            self.emit(FatalError(err=_fatal(f)))
        elif kind == "lagged":
            self.emit(Lagged(f["dropped"]))
        elif kind == "left":
            self._last_peer_id = self._last_peer_id or self.peer_id


def _fatal(f: dict[str, Any]) -> Exception:
    if f.get("code") == "reconcile_timeout":
        return ReconcileTimeoutError()
    if f.get("code"):
        return MeteredRealtimeError(f"server error: {f['code']}")
    close = f.get("close_code")
    if close is not None:
        name = _CLOSE_NAMES.get(close, f"close_{close}")
        return MeteredRealtimeError(f"connection closed terminally ({name}, code {close})")
    return MeteredRealtimeError(str(f.get("message", "fatal error")))


class _JoinedContext:
    def __init__(self, peer: MeteredPeer, channel: str, include_sender_metadata: bool) -> None:
        self._peer = peer
        self._channel = channel
        self._include = include_sender_metadata

    async def __aenter__(self) -> MeteredPeer:
        await self._peer.join(self._channel, include_sender_metadata=self._include)
        return self._peer

    async def __aexit__(self, *exc: object) -> None:
        await self._peer.close()
