"""``SignallingClient``: pub/sub over the room server without WebRTC."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from . import _native
from ._convert import call, encode, native_client
from ._emitter import AsyncEventEmitter
from .events import (
    Connected,
    Direct,
    Disconnected,
    Event,
    GoingAway,
    Lagged,
    Message,
    Presence,
    PresencePeer,
    ServerError,
    StateChange,
    TokenProviderError,
)
from .options import ReconnectOptions, SignallingClientOptions, SubscribeOptions, TokenProviderFn
from .types import IceServerConfig

__all__ = ["SignallingClient"]


def _peers(entries: list[dict[str, Any]]) -> tuple[PresencePeer, ...]:
    return tuple(PresencePeer(e["peer_id"], e.get("metadata")) for e in entries)


def client_event(kind: str, f: dict[str, Any]) -> Event | None:
    """The reference event for a native signalling event."""
    if kind == "state_change":
        return StateChange(from_=f["from"], to=f["to"])
    if kind == "connected":
        servers = f.get("ice_servers")
        return Connected(
            peer_id=f["peer_id"],
            server_time=int(f["server_time"]),
            expires_at=None if f.get("expires_at") is None else int(f["expires_at"]),
            is_reconnect=f["is_reconnect"],
            max_message_size=f["max_message_size"],
            ice_servers=None
            if servers is None
            else tuple(IceServerConfig(s["urls"], s.get("username"), s.get("credential")) for s in servers),
        )
    if kind == "disconnected":
        return Disconnected(code=f["code"], reason=f["reason"], will_reconnect=f["will_reconnect"])
    if kind == "message":
        return Message(f["channel"], f["sender_peer_id"], f["data"], f.get("sender_metadata"))
    if kind == "direct":
        return Direct(f["sender_peer_id"], f["data"], f.get("sender_metadata"))
    if kind == "presence":
        return Presence(f["channel"], _peers(f["joined"]), _peers(f["left"]))
    if kind == "server_error":
        return ServerError(f["code"], f.get("message"), f.get("request_id"))
    if kind == "going_away":
        return GoingAway(f["retry_after_ms"])
    if kind == "token_provider_error":
        return TokenProviderError(f["consecutive_failures"], RuntimeError(f["error"]))
    if kind == "lagged":
        return Lagged(f["dropped"])
    return None


class SignallingClient(AsyncEventEmitter):
    """Pub/sub client. Events: ``Connected``, ``Disconnected``, ``StateChange``, ``Message``,
    ``Direct``, ``Presence``, ``ServerError``, ``GoingAway``, ``TokenProviderError`` (and
    Parlor's ``Lagged``)."""

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
        self._native = native_client(options, event_capacity)
        self._pump: asyncio.Task[None] | None = None
        self._welcomed: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"SignallingClient(state={self.state!r})"

    @property
    def state(self) -> str:
        """``idle``, ``connecting``, ``connected``, ``reconnecting`` or ``closed``."""
        return str(self._native.state)

    @property
    def peer_id(self) -> str | None:
        """Our peer id on the current connection."""
        return self._native.peer_id  # type: ignore[no-any-return]

    def _start_pump(self) -> None:
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    async def _run_pump(self) -> None:
        while True:
            item = await self._native.next_event()
            if item is None:
                return
            kind, fields, _ = item
            event = client_event(kind, json.loads(fields))
            if event is not None:
                self.emit(event)
            if kind == "connected" and self._welcomed is not None:
                self._welcomed.set()
            if kind == "state_change" and json.loads(fields)["to"] == "closed":
                return

    async def connect(self) -> None:
        """Open the connection; returns once welcomed. Raises ``SignallingConnectError``."""
        self._welcomed = asyncio.Event()
        self._start_pump()
        await call(self._native.connect())
        # The welcome's `Connected` is on its way through the pump: let it be delivered
        # before returning, as the reference SDK does.
        try:
            await asyncio.wait_for(self._welcomed.wait(), 2.0)
        except asyncio.TimeoutError:
            pass

    async def close(self, code: int = 1000, reason: str = "client requested close") -> None:
        """Close for good (idempotent): pending requests fail with ``DisconnectedError``."""
        del code, reason  # the native client always closes with 1000
        await call(self._native.close())
        if self._pump is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
            except asyncio.TimeoutError:
                self._pump.cancel()
        await self._drain_handlers()
        self._end_streams()

    async def subscribe(self, channel: str, opts: SubscribeOptions | None = None) -> None:
        """Subscribe to ``channel`` (resolves on the server's ack; the roster follows as
        ``Presence``)."""
        include = bool(opts and opts.include_sender_metadata)
        await call(self._native.subscribe(channel, include))

    async def unsubscribe(self, channel: str) -> None:
        """Leave ``channel``."""
        await call(self._native.unsubscribe(channel))

    async def publish(self, channel: str, data: Any) -> None:
        """Broadcast ``data`` (any JSON value) to ``channel``."""
        await call(self._native.publish(channel, encode(data)))

    async def send(self, to_peer_id: str, data: Any) -> None:
        """Send ``data`` (any JSON value) to one peer."""
        await call(self._native.send(to_peer_id, encode(data)))

    async def __aenter__(self) -> SignallingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_ = _native  # re-exported for type checkers
