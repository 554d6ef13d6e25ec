"""The ``logger`` option: any object with ``debug/info/warning/error(msg, ctx=None)``.

The native core logs through ``tracing`` (set ``RUST_LOG``); this logger receives what
the Python layer reports (a handler that raised, an event it could not read).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

__all__ = ["Logger", "NoopLogger", "StdlibLogger"]


@runtime_checkable
class Logger(Protocol):
    """A structured log sink: a message and optional context."""

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...
    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...
    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...
    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...


class NoopLogger:
    """Discards everything."""

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...
    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...
    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...
    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...


class StdlibLogger:
    """Forwards to a :class:`logging.Logger` (``parlor`` by default)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger if logger is not None else logging.getLogger("parlor")

    def _at(self, level: int, msg: str, ctx: dict[str, Any] | None) -> None:
        if ctx:
            self._log.log(level, "%s %r", msg, ctx)
        else:
            self._log.log(level, "%s", msg)

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._at(logging.DEBUG, msg, ctx)

    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._at(logging.INFO, msg, ctx)

    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._at(logging.WARNING, msg, ctx)

    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._at(logging.ERROR, msg, ctx)
