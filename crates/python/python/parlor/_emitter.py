"""Event handlers by event type: ``on`` (also as a decorator), ``once``, ``off``, ``events``.

Sync handlers run inline; async handlers are scheduled as tasks that the emitter tracks
(awaited on close, their exceptions logged, never raised into the emitter). ``events(T)``
is an async iterator over one event type with a bounded queue: when a reader falls more
than ``maxsize`` behind, the oldest event is dropped and the drop is counted on the
stream (``stream.dropped``), so memory stays bounded and nothing is lost unknowingly.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, overload

from ._logging import Logger, StdlibLogger
from .events import Event

E = TypeVar("E", bound=Event)
Handler = Callable[[E], "Awaitable[None] | None"]

_END = object()


class EventStream(Generic[E]):
    """An async iterator over one event type; also an async context manager."""

    def __init__(self, emitter: AsyncEventEmitter, event_type: type[E], maxsize: int) -> None:
        self._emitter = emitter
        self._type = event_type
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._closed = False
        #: Events dropped because this reader fell behind.
        self.dropped = 0

    def _push(self, item: Any) -> None:
        if self._closed:
            return
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except asyncio.QueueEmpty:
                    pass

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    async def __aenter__(self) -> EventStream[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the iteration (idempotent)."""
        if self._closed:
            return
        self._push(_END)
        self._closed = True
        self._emitter._drop_stream(self._type, self)


class AsyncEventEmitter:
    """``on`` / ``once`` / ``off`` / ``events`` / ``emit`` keyed by event type."""

    def __init__(self, logger: Logger | None = None) -> None:
        self._logger: Logger = logger if logger is not None else StdlibLogger()
        self._handlers: dict[type[Event], list[Callable[[Any], Any]]] = {}
        self._streams: dict[type[Event], list[EventStream[Any]]] = {}
        self._handler_tasks: set[asyncio.Task[Any]] = set()

    @overload
    def on(self, event_type: type[E]) -> Callable[[Handler[E]], Handler[E]]: ...
    @overload
    def on(self, event_type: type[E], handler: Handler[E]) -> Handler[E]: ...
    def on(self, event_type: type[E], handler: Handler[E] | None = None) -> Any:
        """Register ``handler`` for ``event_type``; without it, a decorator."""
        _check_type(event_type)
        if handler is None:
            return lambda h: self._add(event_type, h)
        return self._add(event_type, handler)

    def _add(self, event_type: type[E], handler: Handler[E]) -> Handler[E]:
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self._handlers.setdefault(event_type, []).append(handler)
        return handler

    @overload
    def once(self, event_type: type[E]) -> Callable[[Handler[E]], Handler[E]]: ...
    @overload
    def once(self, event_type: type[E], handler: Handler[E]) -> Handler[E]: ...
    def once(self, event_type: type[E], handler: Handler[E] | None = None) -> Any:
        """Like ``on``, removed before its first call."""
        _check_type(event_type)

        def register(h: Handler[E]) -> Handler[E]:
            def one_shot(event: E) -> Awaitable[None] | None:
                self.off(event_type, one_shot)
                return h(event)

            self._add(event_type, one_shot)
            return h

        return register if handler is None else register(handler)

    def off(self, event_type: type[E], handler: Handler[E]) -> None:
        """Remove a handler (no error when it is not registered)."""
        handlers = self._handlers.get(event_type, [])
        if handler in handlers:
            handlers.remove(handler)

    def events(self, event_type: type[E], *, maxsize: int = 4096) -> EventStream[E]:
        """An async iterator over ``event_type`` (bounded; see the module docs)."""
        _check_type(event_type)
        stream: EventStream[E] = EventStream(self, event_type, maxsize)
        self._streams.setdefault(event_type, []).append(stream)
        return stream

    def _drop_stream(self, event_type: type[Event], stream: EventStream[Any]) -> None:
        streams = self._streams.get(event_type, [])
        if stream in streams:
            streams.remove(stream)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to its type's handlers and streams."""
        for stream in list(self._streams.get(type(event), [])):
            stream._push(event)
        for handler in list(self._handlers.get(type(event), [])):
            try:
                result = handler(event)
            except Exception as e:  # a handler's bug must not stop the others
                self._logger.error(
                    "event handler raised", {"event": type(event).__name__, "err": repr(e)}
                )
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._handler_tasks.add(task)
                task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._logger.error("async event handler raised", {"err": repr(task.exception())})

    async def _drain_handlers(self) -> None:
        """Wait for the async handlers still running (bounded: new ones may start)."""
        for _ in range(8):
            pending = [t for t in self._handler_tasks if not t.done()]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    def _end_streams(self) -> None:
        for streams in list(self._streams.values()):
            for stream in list(streams):
                stream.close()


def _check_type(event_type: Any) -> None:
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise TypeError(f"expected an event class such as PeerJoined, got {event_type!r}")
