"""Data channels: ``RawDataChannel`` (what ``create_data_channel`` returns and
``DataChannelOpened`` carries, as aiortc's ``RTCDataChannel`` is in the reference SDK) and
``DataChannel``, the reference's wrapper with typed events and backpressure.

SCTP, the send queue (256 messages, drained while the transport buffers under 1 MiB) and
the inbound queue (1024 messages; more are dropped and counted) are the native core's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from . import _native
from ._emitter import AsyncEventEmitter
from .errors import DataChannelOverflowError, MeteredRealtimeError, from_native
from .events import DCClose, DCError, DCMessage, DCOpen

__all__ = ["DataChannel", "RawDataChannel"]

DEFAULT_MAX_BUFFERED_AMOUNT = 1_048_576
DEFAULT_MAX_QUEUED_SENDS = 256


class RawDataChannel:
    """One data channel to a member. ``readyState`` is ``connecting`` until the channel is
    open (one we asked for) and ``closed`` at the end. Listeners: ``on("open" | "message" |
    "close" | "error", callback)``; messages are read only while someone listens."""

    def __init__(self, label: str, native: Any = None) -> None:
        self.label = label
        self._native = native
        self.readyState = "open" if native is not None else "connecting"  # noqa: N815
        self._listeners: dict[str, list[Callable[..., Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RawDataChannel(label={self.label!r}, readyState={self.readyState!r})"

    @property
    def bufferedAmount(self) -> int:  # noqa: N802 - the aiortc/browser name
        """Messages queued in the core and not yet on the wire."""
        return int(self._native.queued) if self._native is not None else 0

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        self._listeners.setdefault(event, []).append(callback)
        if event == "message":
            self._start_reader()

    def remove_listener(self, event: str, callback: Callable[..., Any]) -> None:
        if callback in self._listeners.get(event, []):
            self._listeners[event].remove(callback)

    def _fire(self, event: str, *args: Any) -> None:
        for cb in list(self._listeners.get(event, [])):
            cb(*args)

    def _opened(self, native: Any) -> None:
        self._native = native
        self.readyState = "open"
        self._fire("open")
        self._start_reader()

    def _failed(self, err: Exception) -> None:
        self.readyState = "closed"
        self._fire("error", err)
        self._fire("close")

    def _start_reader(self) -> None:
        if self._reader is None and self._native is not None and self._listeners.get("message"):
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            item = await self._native.recv()
            if item is None:
                break
            text, raw = item
            self._fire("message", raw.decode("utf-8") if text else bytes(raw))
        if self.readyState != "closed":
            self.readyState = "closed"
            self._fire("close")

    def send(self, data: str | bytes) -> None:
        """Queue ``data`` without waiting (``DataChannelOverflowError`` when 256 are waiting)."""
        if self._native is None or self.readyState != "open":
            raise MeteredRealtimeError(f"data channel {self.label!r} is not open")
        try:
            self._native.try_send(data)
        except _native.NativeError as e:
            raise _dc_error(e) from None

    def _try_send(self, data: str | bytes) -> bool:
        """Queue ``data`` now if the core's queue has room (``False``: it is full)."""
        if self._native is None:
            raise MeteredRealtimeError(f"data channel {self.label!r} is not open")
        try:
            self._native.try_send(data)
        except _native.NativeError as e:
            if e.args and e.args[0] == "dc_overflow":
                return False
            raise _dc_error(e) from None
        return True

    async def _send(self, data: str | bytes) -> None:
        if self._native is None:
            raise MeteredRealtimeError(f"data channel {self.label!r} is not open")
        try:
            await self._native.send(data)
        except _native.NativeError as e:
            raise _dc_error(e) from None

    def close(self) -> None:
        """Close it (idempotent); the far end sees it close."""
        if self._native is not None:
            self._native.close()
        if self.readyState != "closed" and self._reader is None:
            self.readyState = "closed"
            self._fire("close")


def _dc_error(e: BaseException) -> BaseException:
    kind = e.args[0] if e.args else ""
    if kind == "dc_overflow":
        return DataChannelOverflowError(DEFAULT_MAX_QUEUED_SENDS, DEFAULT_MAX_QUEUED_SENDS)
    if kind == "dc_closed":
        return MeteredRealtimeError("DataChannel is closed")
    if kind == "dc_too_large":
        return MeteredRealtimeError(str(e.args[1]))
    return from_native(e)


class DataChannel(AsyncEventEmitter):
    """Typed events (``DCOpen``, ``DCClose``, ``DCError``, ``DCMessage``) and a ``send`` that
    waits while the channel is backed up, over a ``RawDataChannel``."""

    def __init__(
        self,
        channel: RawDataChannel,
        *,
        max_buffered_amount: int = DEFAULT_MAX_BUFFERED_AMOUNT,
        buffered_amount_low_threshold: int | None = None,
        max_queued_sends: int = DEFAULT_MAX_QUEUED_SENDS,
        buffer_poll_interval: float = 0.1,
        logger: Any = None,
    ) -> None:
        super().__init__(logger)
        if not isinstance(channel, RawDataChannel):
            raise TypeError(f"DataChannel wraps a parlor RawDataChannel, not {type(channel).__name__}")
        del buffered_amount_low_threshold, buffer_poll_interval  # the core drains by itself
        self._channel = channel
        self.label: str = channel.label
        self._max_buffered_amount = max_buffered_amount
        self._max_queued_sends = max_queued_sends
        self._queued = 0
        self._closed = False
        self._order = asyncio.Lock()
        channel.on("open", self._on_open)
        channel.on("close", self._on_close)
        channel.on("error", self._on_error)
        channel.on("message", self._on_message)

    @property
    def ready_state(self) -> str:
        """``connecting``, ``open`` or ``closed``."""
        return self._channel.readyState

    @property
    def buffered_amount(self) -> int:
        return self._channel.bufferedAmount

    async def send(self, data: str | bytes) -> None:
        """Queue ``data``; resolves once the core has it. Waits while the channel is backed
        up; ``DataChannelOverflowError`` when ``max_queued_sends`` sends are already waiting."""
        if self._closed:
            raise MeteredRealtimeError("DataChannel is closed")
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if size > self._max_buffered_amount:
            raise MeteredRealtimeError(
                f"message of {size} bytes exceeds max_buffered_amount "
                f"({self._max_buffered_amount}); split it or raise the cap"
            )
        if self._queued >= self._max_queued_sends:
            raise DataChannelOverflowError(self._queued, self._max_queued_sends)
        self._queued += 1
        try:
            # One sender at a time, in call order (the lock is FIFO): a message goes into the
            # core's queue at once when there is room, else waits for room, and nothing
            # overtakes it meanwhile.
            async with self._order:
                if not self._channel._try_send(data):
                    await self._channel._send(data)
        finally:
            self._queued -= 1

    def close(self) -> None:
        """Close the channel (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._channel.close()
        self.emit(DCClose())

    def _on_open(self) -> None:
        if not self._closed:
            self.emit(DCOpen())

    def _on_close(self) -> None:
        if not self._closed:
            self._closed = True
            self.emit(DCClose())

    def _on_error(self, err: Any = None) -> None:
        if not self._closed:
            e = err if isinstance(err, Exception) else MeteredRealtimeError(str(err))
            self.emit(DCError(err=e))

    def _on_message(self, data: Any) -> None:
        if not self._closed and isinstance(data, (str, bytes)):
            self.emit(DCMessage(data=data))
