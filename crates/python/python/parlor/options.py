"""Option dataclasses (times in seconds), as in the ``metered-realtime`` SDK."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ReconnectOptions", "SignallingClientOptions", "SubscribeOptions", "TokenProviderFn"]

#: Returns a fresh token, sync or async.
TokenProviderFn = Callable[[], "Awaitable[str] | str"]


@dataclass(slots=True, kw_only=True)
class ReconnectOptions:
    """Exponential backoff between reconnects; ``max_attempts`` may be ``float("inf")``."""

    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter_ratio: float = 0.2
    max_attempts: float = 100

    def __post_init__(self) -> None:
        if not self.initial_delay > 0:
            raise ValueError("initial_delay must be > 0")
        if not self.multiplier >= 1:
            raise ValueError("multiplier must be >= 1")
        if not self.max_delay >= self.initial_delay:
            raise ValueError("max_delay must be >= initial_delay")
        if not 0 <= self.jitter_ratio <= 1:
            raise ValueError("jitter_ratio must be in [0, 1]")
        if math.isnan(self.max_attempts) or self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0")

    def _native(self) -> tuple[float, float, float, float, float]:
        return (
            self.initial_delay,
            self.multiplier,
            self.max_delay,
            self.jitter_ratio,
            float(self.max_attempts),
        )


@dataclass(slots=True, kw_only=True)
class SignallingClientOptions:
    """Everything a client is built from. Pass exactly one credential."""

    api_key: str | None = None
    token_provider: TokenProviderFn | None = None
    url: str | None = None
    token_provider_timeout: float = 10.0
    logger: Any = None
    reconnect: ReconnectOptions | bool = True
    inactivity_timeout: float = 60.0
    auto_resubscribe: bool = True
    #: Parlor addition: a fixed token (instead of a provider).
    token: str | None = None


@dataclass(slots=True, kw_only=True)
class SubscribeOptions:
    """Per-subscription options."""

    include_sender_metadata: bool = False
