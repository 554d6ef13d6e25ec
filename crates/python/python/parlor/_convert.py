"""Shared helpers: payload encoding, client construction, native error mapping."""

from __future__ import annotations

import json
import os
from typing import Any

from . import _native
from .errors import from_native
from .options import ReconnectOptions, SignallingClientOptions

#: Where a client connects when no ``url`` is given (``parlor serve``'s default address).
DEFAULT_URL = os.environ.get("PARLOR_URL", "ws://127.0.0.1:7800")


def encode(data: Any) -> str:
    """JSON text of ``data`` (what goes on the wire), or ``ValueError``."""
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"data must be JSON-serializable: {e}") from None


def native_client(options: SignallingClientOptions, event_capacity: int) -> Any:
    """Build the native client from reference-style options."""
    if not options.auto_resubscribe:
        raise NotImplementedError(
            "auto_resubscribe=False: Parlor's client always restores its subscriptions "
            "after a reconnect"
        )
    given = [n for n in ("api_key", "token", "token_provider") if getattr(options, n)]
    if len(given) != 1:
        raise ValueError(
            "pass exactly one of `api_key` or `token_provider` (or Parlor's `token`), "
            f"got {given or 'none'}"
        )
    rc = options.reconnect
    if isinstance(rc, ReconnectOptions):
        reconnect = rc._native()
    elif rc:
        reconnect = ReconnectOptions()._native()
    else:
        reconnect = None
    try:
        return _native.NativeClient(
            options.url or DEFAULT_URL,
            api_key=options.api_key,
            token=options.token,
            token_provider=options.token_provider,
            reconnect=reconnect,
            inactivity_timeout=options.inactivity_timeout,
            token_provider_timeout=options.token_provider_timeout,
            event_capacity=event_capacity,
        )
    except _native.NativeError as e:
        raise from_native(e) from None


async def call(awaitable: Any) -> Any:
    """Await a native call, raising the reference's exception on failure."""
    try:
        return await awaitable
    except _native.NativeError as e:
        raise from_native(e) from None
