"""Media: ``AudioSource`` (PCM in, a paced Opus track out), ``iter_frames`` (a remote track's
decoded frames), ``MediaStream``, ``StreamMetadata``.

Encoding, pacing, the jitter buffer and decoding run in the native core; Python hands PCM in
and takes frames out. Frames are PyAV ``av.AudioFrame`` objects when PyAV is installed (as
with the reference SDK), otherwise :class:`AudioFrame`, which has the same attributes and
``to_ndarray()`` (NumPy needed for that one call).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

from . import _native
from ._convert import call

__all__ = [
    "AudioFrame",
    "AudioSource",
    "MediaStream",
    "MediaStreamError",
    "RemoteAudioTrack",
    "StreamMetadata",
    "iter_frames",
]

#: Per-track metadata (``role``, ``label`` by convention); inbound values are untrusted.
StreamMetadata = dict[str, Any]

try:  # PyAV is optional: frames are av.AudioFrame when it is there.
    import av as _av
except ImportError:  # pragma: no cover - exercised where PyAV is absent
    _av = None


class MediaStreamError(Exception):
    """A track ended (``recv`` after the end)."""


class MediaStream:
    """A named group of tracks, sharing one ``id`` on the wire."""

    def __init__(self, tracks: Any = (), *, id: str | None = None) -> None:
        self.id: str = id if id is not None else uuid.uuid4().hex
        self._tracks: list[Any] = list(tracks)

    def get_tracks(self) -> list[Any]:
        return list(self._tracks)

    def get_audio_tracks(self) -> list[Any]:
        return [t for t in self._tracks if getattr(t, "kind", None) == "audio"]

    def get_video_tracks(self) -> list[Any]:
        return [t for t in self._tracks if getattr(t, "kind", None) == "video"]

    def add_track(self, track: Any) -> None:
        if track not in self._tracks:
            self._tracks.append(track)

    def remove_track(self, track: Any) -> None:
        if track in self._tracks:
            self._tracks.remove(track)

    def __repr__(self) -> str:
        kinds = ",".join(str(getattr(t, "kind", "?")) for t in self._tracks)
        return f"MediaStream(id={self.id!r}, tracks=[{kinds}])"


class AudioSource:
    """Audio you generate (text-to-speech output, a file): push s16 PCM, it goes out as a
    real-time Opus track. Backpressure: ``push`` suspends while ``max_buffered_seconds`` are
    buffered. On underrun the track sends silence and stays live. ``end()`` sends what is
    buffered, then stops the track; ``stop()`` drops it at once (barge-in)."""

    kind = "audio"

    def __init__(
        self,
        *,
        input_rate: int = 16_000,
        input_layout: str = "mono",
        max_buffered_seconds: float = 5.0,
        logger: Any = None,
    ) -> None:
        if input_layout not in ("mono", "stereo"):
            raise ValueError(
                f"input_layout must be 'mono' or 'stereo', got {input_layout!r}. "
                "For other layouts, build an av.AudioFrame and push() that."
            )
        del logger  # the native core logs through RUST_LOG
        self._native = _native.NativeAudioSource(input_rate, input_layout, max_buffered_seconds)
        self._rate = input_rate
        self._layout = input_layout
        self._resampler: Any = None
        self._ended = False
        self._order = asyncio.Lock()
        self.id = uuid.uuid4().hex

    @property
    def readyState(self) -> str:  # noqa: N802 - the aiortc/browser name
        return "ended" if self._ended else "live"

    @property
    def buffered_seconds(self) -> float:
        """Seconds of audio queued and not yet sent."""
        return float(self._native.buffered_seconds)

    async def push(self, data: Any) -> None:
        """Queue audio: s16 PCM ``bytes`` in the input format, or an ``av.AudioFrame``.
        A partial sample is carried into the next push. No-op after ``end()``/``stop()``."""
        if self._ended:
            return
        is_av = _av is not None and isinstance(data, _av.AudioFrame)
        if not is_av and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"push() takes bytes of s16 PCM or an av.AudioFrame, not {type(data).__name__}")
        # In call order (the lock is FIFO). Most pushes fit under the cap: taken at once, with
        # no awaitable and no wake-up; one that must wait for room holds the others back.
        async with self._order:
            pcm = self._from_av(data) if is_av else bytes(data)
            if self._ended or _taken(self._native, pcm):
                return
            await call(self._native.push(pcm))

    def _from_av(self, frame: Any) -> bytes:
        if self._resampler is None:
            self._resampler = _av.AudioResampler(format="s16", layout=self._layout, rate=self._rate)
        out = bytearray()
        width = 2 * (2 if self._layout == "stereo" else 1)
        for f in self._resampler.resample(frame):
            out += bytes(f.planes[0])[: f.samples * width]
        return bytes(out)

    def _added(self) -> None:
        """Called by ``add_track`` once the source is on a peer (a file source starts)."""

    def end(self) -> None:
        """Send what is buffered, then stop the track (idempotent)."""
        if not self._ended:
            self._ended = True
            self._native.end()

    async def drained(self) -> None:
        """Parlor addition: wait until an ended source has sent its last frame."""
        await call(self._native.drained())

    def stop(self) -> None:
        """Stop at once, dropping what is buffered."""
        self._ended = True
        self._native.stop()


def _taken(native: Any, data: bytes) -> bool:
    try:
        return bool(native.try_push(data))
    except _native.NativeError as e:
        from .errors import from_native

        raise from_native(e) from None


class AudioFrame:
    """A decoded frame (48 kHz stereo s16, 20 ms), with PyAV's attribute names."""

    format_name = "s16"

    def __init__(self, pcm: bytes, sample_rate: int, channels: int, samples: int, pts: int) -> None:
        self._pcm = pcm
        self.sample_rate = sample_rate
        self.layout = "stereo" if channels == 2 else "mono"
        self.channels = channels
        self.samples = samples
        self.pts = pts
        self.time_base = Fraction(1, sample_rate)

    def to_bytes(self) -> bytes:
        """Interleaved s16 little-endian PCM."""
        return self._pcm

    def to_ndarray(self) -> Any:
        """``int16`` array of shape ``(1, samples × channels)`` (PyAV's packed layout)."""
        import numpy as np

        return np.frombuffer(self._pcm, dtype="<i2").reshape(1, -1)

    def __repr__(self) -> str:
        return f"<AudioFrame {self.samples} samples at {self.sample_rate} Hz {self.layout}, pts={self.pts}>"


def _frame(pcm: bytes, rate: int, channels: int, samples: int, pts: int) -> Any:
    if _av is None:
        return AudioFrame(pcm, rate, channels, samples, pts)
    f = _av.AudioFrame(format="s16", layout="stereo" if channels == 2 else "mono", samples=samples)
    f.planes[0].update(pcm)
    f.sample_rate = rate
    f.pts = pts
    f.time_base = Fraction(1, rate)
    return f


class RemoteAudioTrack:
    """A remote member's audio track (``Track`` events). Read it with ``iter_frames``.

    Frames come from the core in batches: the event loop watches one descriptor per track
    while someone waits for a frame, and takes every frame decoded by then at once."""

    kind = "audio"

    def __init__(self, native: Any, stream_id: str | None) -> None:
        self._native = native
        self.id: str = native.id
        self.stream_id = stream_id
        self._ended = False
        self._frames: collections.deque[tuple[bytes, int, int, int, int]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._watching = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def readyState(self) -> str:  # noqa: N802 - the aiortc/browser name
        return "ended" if self._ended and not self._frames else "live"

    @property
    def frames_dropped(self) -> int:
        """Parlor addition: frames dropped because nobody read them (5 s are kept)."""
        return int(self._native.frames_dropped)

    async def recv(self) -> Any:
        """The next decoded frame; raises :class:`MediaStreamError` once the track ended."""
        while not self._frames:
            if self._ended:
                raise MediaStreamError("track ended")
            loop = asyncio.get_running_loop()
            if self._fd is None:
                self._loop = loop
                self._fd = self._native.start()
            if not self._watching:
                loop.add_reader(self._fd, self._ready)
                self._watching = True
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return _frame(*self._frames.popleft())

    def _ready(self) -> None:
        if self._waiter is None:
            # Nobody is waiting: stop watching until the next recv (frames wait in the core).
            self._unwatch()
            return
        frames, ended = self._native.drain()
        self._frames.extend(frames)
        if ended:
            self._ended = True
            self._unwatch()
        if (self._frames or self._ended) and not self._waiter.done():
            self._waiter.set_result(None)

    def _unwatch(self) -> None:
        if self._watching and self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._watching = False

    def stop(self) -> None:
        """Stop reading: the core stops decoding this track."""
        self._ended = True
        self._frames.clear()
        self._unwatch()
        self._native.stop()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __repr__(self) -> str:
        return f"RemoteAudioTrack(id={self.id!r}, stream_id={self.stream_id!r})"


async def iter_frames(track: Any) -> AsyncIterator[Any]:
    """Decoded frames of ``track`` until it ends (the loop then just stops)::

        async for frame in iter_frames(track):
            pcm = frame.to_ndarray()
    """
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        except asyncio.CancelledError:
            raise
        yield frame
