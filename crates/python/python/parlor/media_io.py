"""File sources: ``from_file`` (the reference's name), audio only.

The reference opens any file with aiortc's ``MediaPlayer`` (FFmpeg through PyAV) and returns
a player whose ``.audio`` / ``.video`` are its tracks. Here ``.audio`` is an
:class:`~parlor.AudioSource` that plays the file once it is added to a peer, paced in real
time by the source's backpressure, and ends (``readyState == "ended"``) after the last
sample; ``.video`` is always ``None`` (Parlor sends audio). A 16-bit PCM WAV file needs
nothing more than the standard library; any other format needs PyAV (``pip install av``).

Device sources (``from_microphone``, ``from_camera``, ``screen_share``) and ``from_rtsp`` are
not in parlor-realtime: they raise ``NotImplementedError`` naming themselves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import wave
from collections.abc import Iterator
from typing import Any

from .media import AudioSource

__all__ = ["FilePlayer", "from_file"]

_log = logging.getLogger("parlor.media_io")

#: Audio read per push (seconds): small enough that ``stop()`` takes effect at once.
_CHUNK_SECONDS = 0.1
#: Audio queued ahead of the wire: enough to ride out a busy event loop.
_BUFFER_SECONDS = 1.0


class FilePlayer:
    """What :func:`from_file` returns: ``.audio`` (an :class:`AudioSource` playing the file,
    or ``None`` when it has no audio) and ``.video`` (always ``None``)."""

    def __init__(self, audio: _FileAudioSource | None) -> None:
        self.audio = audio
        self.video: Any = None

    def __repr__(self) -> str:
        return f"FilePlayer(audio={self.audio!r}, video=None)"


class _FileAudioSource(AudioSource):
    """An AudioSource fed from a file by a task that starts when the source is added to a
    peer (pushing earlier would stream it under an id of its own, see ``add_track``)."""

    def __init__(self, name: str, rate: int, layout: str, chunks: Any, loop: bool) -> None:
        super().__init__(input_rate=rate, input_layout=layout, max_buffered_seconds=_BUFFER_SECONDS)
        self._name = name
        self._chunks = chunks  # () -> iterator of s16 PCM bytes or av.AudioFrame
        self._loop_file = loop
        self._task: asyncio.Task[None] | None = None

    def _added(self) -> None:
        if self._task is not None or self._ended:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"from_file({self._name!r}): add its audio to a peer from inside a running "
                "asyncio event loop (the file is played by a task on it)"
            ) from None
        self._task = loop.create_task(self._play(), name=f"parlor.from_file({self._name})")

    async def _play(self) -> None:
        try:
            while not self._ended:
                played = 0
                for chunk in self._chunks():
                    if self._ended:
                        return
                    await self.push(chunk)
                    played += 1
                if not self._loop_file or played == 0:
                    break
            self.end()
        except Exception:
            _log.exception("from_file(%r): reading the file failed; the track stops", self._name)
            self.stop()

    def stop(self) -> None:
        super().stop()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def __repr__(self) -> str:
        return f"<file audio {self._name!r} {self.readyState}>"


def _wav(path: str) -> tuple[int, str, Any] | None:
    """(rate, layout, chunks) for a 16-bit PCM WAV file of one or two channels; None when it
    is another kind of file (or another kind of WAV)."""
    try:
        with wave.open(path, "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
    except (wave.Error, EOFError):
        return None
    if width != 2 or channels not in (1, 2):
        return None

    def chunks() -> Iterator[bytes]:
        with wave.open(path, "rb") as w:
            n = max(1, int(rate * _CHUNK_SECONDS))
            while data := w.readframes(n):
                yield data

    return rate, "mono" if channels == 1 else "stereo", chunks


def _pyav(path: str, av: Any) -> tuple[int, str, Any] | None:
    """(rate, layout, chunks) for the first audio stream of any file FFmpeg reads; None when
    the file has no audio."""
    with av.open(path) as c:
        if not c.streams.audio:
            return None
        s = c.streams.audio[0]
        rate, channels = s.rate or s.codec_context.sample_rate, s.channels

    def chunks() -> Iterator[Any]:
        with av.open(path) as c:
            yield from c.decode(c.streams.audio[0])

    return rate, "mono" if channels == 1 else "stereo", chunks


def from_file(file: str | os.PathLike[str], *, loop: bool = False, **kwargs: Any) -> FilePlayer:
    """A source that plays a local audio file.

    Returns a :class:`FilePlayer` whose ``.audio`` is an :class:`AudioSource` (``None`` if the
    file has no audio) and ``.video`` is ``None``. The file starts playing when ``.audio`` is
    added to a peer (``peer.add_track(player.audio, MediaStream(...))``), in real time, and
    the source ends after its last sample (``loop=True`` plays it again and again until the
    source is stopped). ``player.audio.stop()`` stops it at once.

    A 16-bit PCM WAV (mono or stereo, any rate) is read with the standard library; other
    formats need PyAV (``pip install av``). Only local paths are accepted (no URLs), so an
    untrusted string cannot make it fetch anything.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file it cannot
    read (naming PyAV when that would read it).
    """
    if kwargs:
        raise NotImplementedError(f"from_file options {sorted(kwargs)}: not in parlor-realtime")
    path = os.fspath(file)
    if "://" in path:
        raise ValueError(f"from_file({path!r}): only local files are played, not URLs")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_file: no such file: {path!r}")
    found = _wav(path)
    if found is None:
        try:
            import av
        except ImportError:
            raise ValueError(
                f"from_file({path!r}): not a 16-bit PCM WAV file; install PyAV "
                "(pip install av) to play other formats"
            ) from None
        try:
            found = _pyav(path, av)
        except av.FFmpegError as e:
            raise ValueError(f"from_file({path!r}): FFmpeg cannot read it: {e}") from None
        if found is None:
            return FilePlayer(None)
    rate, layout, chunks = found
    return FilePlayer(_FileAudioSource(os.path.basename(path), rate, layout, chunks, loop))
