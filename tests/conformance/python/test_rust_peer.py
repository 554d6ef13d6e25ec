"""Real-SDK interop: a Python `MeteredPeer` (metered-realtime 1.0.2, aiortc) against the
Rust peer SDK, run as `parlor echo`.

`parlor echo --url URL --key KEY --room ROOM` joins ROOM and, for every remote peer,
sends back each data-channel message on the channel it arrived on (exact bytes; text
stays text) and loops each inbound audio track back as a new outbound track. Its stdout
is line-oriented (`echo joined ROOM as ID`, `peer-joined ID`, `connection ID STATE`,
`channel-open ID LABEL`, `track ID audio TRACKID`, ...); its stderr is kept (with
`PARLOR_LOG=parlor_peer=debug`) and printed when a test fails.

Every case runs with the Python side in both politeness roles. Peer ids are random per
connection and the smaller id is polite, so `_setup` joins a Python peer, then `parlor
echo`, in a fresh room, and discards the pair (closes the peer, SIGTERMs the echo) until
the ids compare the wanted way. Both sides are replaced each time: restarting only the
echo can take many tries when the Python id happens to sort near either end. The Python
side acts only on a remote whose `RemotePeer.polite` matches the wanted role (the same
criterion), so a discarded pair never gets a data channel.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import DEV_KEY, WAIT, build_config, free_port, parlor_bin, start_daemon
from metered_realtime import (
    DataChannel,
    DataChannelOpened,
    DCMessage,
    DCOpen,
    NegotiationError,
    PeerJoined,
    RemotePeer,
    StateChange,
    Track,
    iter_frames,
)
from test_webrtc import Harness, _add_sine_source, make_peer  # noqa: F401

ROLES = ["polite", "impolite"]
JOINED_RE = re.compile(r"^echo joined (\S+) as (\S+)\s*$")
MAX_ATTEMPTS = 24  # each fresh id pair is a coin flip for the role: 2**-24 to run out
N_MESSAGES = 20
LOG = logging.getLogger("rust_peer")
TONE_HZ = 660  # the Python side's sine
TONE_FRAMES = 50  # 20 ms frames analysed once the looped audio is loud


# ---------------------------------------------------------------------------
# `parlor echo` subprocess
# ---------------------------------------------------------------------------

class EchoProc:
    """One running `parlor echo` process. stdout lines are collected by a thread and
    waited on from the event loop; stderr goes to a file."""

    def __init__(self, workdir: Path, name: str, url: str, room: str,
                 extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.lines: list[str] = []
        self._eof = False
        self._changed = asyncio.Event()
        self.stderr_path = workdir / f"{name}.stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        env = dict(os.environ)
        env.setdefault("PARLOR_LOG", "parlor_peer=debug")
        self.args = [parlor_bin(), "echo", "--url", url, "--key", DEV_KEY, "--room", room,
                     *extra]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, env=env)
        threading.Thread(target=self._read, daemon=True, name=f"{name}-stdout").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            with contextlib.suppress(RuntimeError):  # loop already closed
                self.loop.call_soon_threadsafe(self._changed.set)
        self._eof = True
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._changed.set)

    async def wait_line(self, pattern: str | re.Pattern[str], *, timeout: float = WAIT,
                        what: str = "") -> re.Match[str]:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = self.loop.time() + timeout
        while True:
            eof = self._eof  # read before scanning: lines are appended before eof is set
            for line in list(self.lines):
                m = rx.match(line)
                if m:
                    return m
            if eof:  # stdout closed: the process is gone
                raise AssertionError(
                    f"[{self.name}] closed stdout (rc={self.proc.poll()}) before printing "
                    f"{rx.pattern!r} {what}; stdout={self.lines!r}\n{self.stderr_tail()}")
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"[{self.name}] no stdout line {rx.pattern!r} {what} within {timeout}s; "
                    f"stdout={self.lines!r}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    def has_line(self, pattern: str) -> bool:
        rx = re.compile(pattern)
        return any(rx.match(line) for line in self.lines)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in 5 s. Blocking."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        with contextlib.suppress(Exception):
            self._stderr.close()
        return self.proc.returncode

    async def astop(self) -> int | None:
        return await self.loop.run_in_executor(None, self.stop)

    def stderr_tail(self, n: int = 12000) -> str:
        try:
            err = self.stderr_path.read_text(errors="replace")
        except OSError:
            err = ""
        return f"--- {self.name} stderr (tail, full log: {self.stderr_path}) ---\n" + err[-n:]

    def logs(self) -> str:
        return f"--- {self.name} {' '.join(self.args)} (rc={self.proc.returncode}) stdout ---\n" + \
            "\n".join(self.lines) + "\n" + self.stderr_tail()


@pytest.fixture
def echo_factory(tmp_path: Path, request: pytest.FixtureRequest):
    """Start `parlor echo` processes (inside the test's event loop); all are stopped
    (SIGTERM, then SIGKILL) at teardown, and the kept one's logs printed on failure."""
    procs: list[EchoProc] = []

    def start(url: str, room: str, *extra: str) -> EchoProc:
        p = EchoProc(tmp_path, f"echo{len(procs)}", url, room, tuple(extra))
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and procs:
        print(procs[-1].logs())


# ---------------------------------------------------------------------------
# Python side
# ---------------------------------------------------------------------------

def _messages() -> list[str | bytes]:
    """N_MESSAGES payloads: mostly text (ASCII and non-ASCII), every fourth binary
    (including NUL / 0xff bytes and bytes that are not valid UTF-8); the last two are
    larger than one SCTP packet (a 6 KiB text, a 16 KiB binary) so they are fragmented."""
    out: list[str | bytes] = []
    for i in range(N_MESSAGES):
        if i == N_MESSAGES - 2:
            out.append(("big-text \u00e9" * 512)[: 3 * 1024])  # 3 Ki chars, ~6 KiB UTF-8
        elif i == N_MESSAGES - 1:
            out.append(bytes(range(256)) * 64)  # 16 KiB
        elif i % 4 == 3:
            out.append(bytes([0, 0xFF, 0xC3, 0x28, i]) + f"bin-{i}".encode() * (i + 1))
        elif i % 4 == 1:
            out.append(f"msg-{i} h\u00e9llo \u2603 \U0001f600")
        else:
            out.append(f"msg-{i}")
    return out


class DCProbe:
    """The Python side of one "chat" channel toward the echo: once open, sends
    `_messages()` in order and records everything that comes back."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.received: list[str | bytes] = []
        self.opened = asyncio.get_running_loop().create_future()
        self.created_in_state: str | None = None
        self.remote_id: str | None = None
        self.dc: DataChannel | None = None
        self.send_error: BaseException | None = None
        self.tasks: list[asyncio.Task] = []

    def create(self, remote: RemotePeer) -> None:
        assert self.dc is None, "created twice"
        self.remote_id = remote.id
        self.created_in_state = remote.state
        self.dc = DataChannel(remote.create_data_channel("chat"))
        self.dc.on(DCOpen, self._on_open)
        self.dc.on(DCMessage, lambda m: self.received.append(m.data))

    def _on_open(self, _: DCOpen) -> None:
        if not self.opened.done():
            self.opened.set_result(None)
        self.tasks.append(asyncio.ensure_future(self._send_all()))

    async def _send_all(self) -> None:
        assert self.dc is not None
        try:
            for msg in _messages():
                await self.dc.send(msg)
                self.sent.append(msg)
        except BaseException as e:  # surfaced by wait_echoed
            self.send_error = e
            raise

    async def wait_echoed(self, ctx: str) -> None:
        want = _messages()
        try:
            await asyncio.wait_for(asyncio.shield(self.opened), WAIT)
        except asyncio.TimeoutError:
            state = self.dc.ready_state if self.dc else None
            raise AssertionError(f"python-created 'chat' never opened (ready_state={state}, "
                                 f"created in remote state {self.created_in_state}; {ctx})")
        deadline = asyncio.get_running_loop().time() + WAIT
        while self.received != want:
            assert self.send_error is None, f"send failed: {self.send_error!r} ({ctx})"
            assert self.received == want[: len(self.received)], (
                f"echoed messages differ from sent (order/content/type); "
                f"sent={self.sent!r} received={self.received!r} ({ctx})")
            assert asyncio.get_running_loop().time() < deadline, (
                f"only {len(self.received)}/{len(want)} messages echoed within {WAIT}s; "
                f"sent={len(self.sent)} received={self.received!r} ({ctx})")
            await asyncio.sleep(0.05)
        for got, exp in zip(self.received, want):
            assert type(got) is type(exp), (got, exp, ctx)
        await asyncio.sleep(0.3)
        assert self.received == want, f"extra messages after the echoes: {self.received[len(want):]!r}"
        LOG.info("%d messages echoed (%d binary); channel created in state %s (%s)",
                 len(self.received), sum(isinstance(m, bytes) for m in self.received),
                 self.created_in_state, ctx)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(BaseException):
                await t


def _wants(remote: RemotePeer, python_role: str) -> bool:
    return remote.polite == (python_role == "polite")


async def _discard(h: Harness, probe: DCProbe | None) -> None:
    if probe is not None:
        await probe.close()
    for t in h.tasks:
        t.cancel()
    for s in h.sources:
        with contextlib.suppress(Exception):
            s.end()
            s.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(h.peer.close(), 10)


async def _setup(server, make_peer, echo_factory, python_role: str, *, audio: bool,
                 dc_when: str | None, echo_args: tuple[str, ...] = (),
                 on_remote: Callable[[RemotePeer], None] | None = None,
                 ) -> tuple[Harness, EchoProc, str, DCProbe | None, str]:
    """Join a Python peer (with a 660 Hz sine when `audio`), then `parlor echo`, in a
    fresh room; retry with a new pair until the ids give Python `python_role`.
    `dc_when`: None, "at_peer_joined" or "after_connected"."""
    for attempt in range(MAX_ATTEMPTS):
        room = f"room-rust-{attempt}"
        h = make_peer(server.url, f"py{attempt}")
        if audio:
            _add_sine_source(h, TONE_HZ)
        probe = DCProbe() if dc_when else None
        if probe is not None:
            def on_peer_joined(ev: PeerJoined, probe: DCProbe = probe) -> None:
                remote = ev.peer
                if not _wants(remote, python_role) or probe.dc is not None:
                    return  # wrong role for this pair: the test discards it
                if dc_when == "at_peer_joined":
                    probe.create(remote)
                else:
                    def on_state(sc: StateChange) -> None:
                        if sc.to == "connected" and probe.dc is None:
                            probe.create(remote)
                    remote.on(StateChange, on_state)

            h.peer.on(PeerJoined, on_peer_joined)
        if on_remote is not None:
            def hook(ev: PeerJoined) -> None:
                if _wants(ev.peer, python_role):
                    on_remote(ev.peer)

            h.peer.on(PeerJoined, hook)
        await asyncio.wait_for(h.peer.join(room), WAIT)
        py_id = h.peer.peer_id
        echo = echo_factory(server.url, room, *echo_args)
        m = await echo.wait_line(JOINED_RE, what="(joined)")
        assert m.group(1) == room, m.group(0)
        echo_id = m.group(2)
        assert echo_id != py_id
        if (py_id < echo_id) != (python_role == "polite"):
            await _discard(h, probe)
            await echo.astop()
            continue
        joined = await h.rec.wait_for(PeerJoined, lambda e: e.peer.id == echo_id,
                                      what="(the echo)")
        assert joined.peer.polite == (python_role == "polite"), (py_id, echo_id)
        await echo.wait_line(rf"^peer-joined {re.escape(py_id)}\s*$", what="(python peer)")
        LOG.info("pair %s/%s (attempt %d): python is %s", py_id, echo_id, attempt,
                 python_role)
        ctx = (f"python_role={python_role} py={py_id} echo={echo_id} audio={audio} "
               f"dc={dc_when} attempt={attempt}")
        return h, echo, echo_id, probe, ctx
    raise AssertionError(f"no id pair gave python_role={python_role} in {MAX_ATTEMPTS} attempts")


async def _wait_connected(h: Harness, echo: EchoProc, echo_id: str, py_id: str, ctx: str) -> None:
    await h.per_remote[echo_id].wait_for(StateChange, lambda e: e.to == "connected",
                                         what=f"(python -> echo connected; {ctx})")
    await echo.wait_line(rf"^connection {re.escape(py_id)} Connected\s*$",
                         what=f"(echo -> python Connected; {ctx})")


async def _check_audio_loop(h: Harness, echo: EchoProc, echo_id: str, ctx: str) -> None:
    py_id = h.peer.peer_id
    await echo.wait_line(rf"^track {re.escape(py_id)} audio \S+", what=f"(rust got audio; {ctx})")
    tr = await h.per_remote[echo_id].wait_for(Track, lambda e: e.track.kind == "audio",
                                              what=f"(looped audio track; {ctx})")
    try:
        frames, peak, freq = await asyncio.wait_for(_collect_tone(tr.track), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"looped audio: no {TONE_FRAMES} loud frames within {WAIT}s ({ctx})")
    assert peak > 1000, (frames, peak, ctx)
    assert abs(freq - TONE_HZ) < TONE_HZ * 0.1, \
        f"looped audio is not our {TONE_HZ} Hz sine: ~{freq:.0f} Hz, peak {peak} ({ctx})"
    LOG.info("looped audio: %d frames, peak %d, ~%.0f Hz (%s)", frames, peak, freq, ctx)


def _channel0(frame: Any) -> array.array:
    """Channel-0 samples of an s16 frame (packed or planar)."""
    fmt = frame.format
    assert fmt.name.startswith("s16"), f"unexpected sample format {fmt.name}"
    channels = 1 if fmt.is_planar else len(frame.layout.channels)
    # The plane buffer can be larger than the frame (the decoder allocates for the
    # longest Opus frame): keep only `frame.samples` samples.
    a = array.array("h")
    a.frombytes(bytes(frame.planes[0])[: frame.samples * channels * 2])
    return a[::channels] if channels > 1 else a


async def _collect_tone(track: Any) -> tuple[int, int, float]:
    """Wait for the first loud frame (peak > 1000), then estimate the frequency of the
    next TONE_FRAMES frames from rising zero crossings on channel 0."""
    frames = peak = 0
    samples = array.array("h")
    rate = 48_000
    async for frame in iter_frames(track):
        frames += 1
        ch0 = _channel0(frame)
        p = max((abs(x) for x in ch0), default=0)
        peak = max(peak, p)
        if peak > 1000:
            samples.extend(ch0)
            rate = frame.sample_rate
            if len(samples) >= TONE_FRAMES * rate // 50:
                break
    crossings = sum(1 for i in range(1, len(samples)) if samples[i - 1] < 0 <= samples[i])
    return frames, peak, crossings * rate / max(len(samples), 1)


def _no_negotiation_errors(h: Harness, echo_id: str, ctx: str) -> None:
    errs = h.per_remote[echo_id].of(NegotiationError)
    assert not errs, f"negotiation errors toward the echo: {errs} ({ctx})"


def _no_unexpected_exit(echo: EchoProc, ctx: str) -> None:
    assert echo.proc.poll() is None, f"parlor echo exited rc={echo.proc.returncode} ({ctx})"


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("python_role", ROLES)
async def test_data_channel_created_at_peer_joined(server, make_peer, echo_factory,
                                                   python_role):
    """No media: Python opens "chat" at PeerJoined; 20 text/binary messages come back
    exactly and in order."""
    h, echo, echo_id, probe, ctx = await _setup(server, make_peer, echo_factory, python_role,
                                                audio=False, dc_when="at_peer_joined")
    try:
        await probe.wait_echoed(ctx)
        await echo.wait_line(rf"^channel-open {re.escape(h.peer.peer_id)} chat\s*$",
                             what=f"(echo saw 'chat'; {ctx})")
        await _wait_connected(h, echo, echo_id, h.peer.peer_id, ctx)
        _no_negotiation_errors(h, echo_id, ctx)
        _no_unexpected_exit(echo, ctx)
    finally:
        await probe.close()


@pytest.mark.parametrize("python_role", ROLES)
async def test_data_channel_created_after_connected(server, make_peer, echo_factory,
                                                    python_role):
    """Python opens "chat" once its connection to the echo reports connected (the
    renegotiation adds m=application to an established call). The call carries Python's
    audio: with nothing to send, the SDK never negotiates, so "connected" needs media."""
    h, echo, echo_id, probe, ctx = await _setup(server, make_peer, echo_factory, python_role,
                                                audio=True, dc_when="after_connected")
    try:
        await _wait_connected(h, echo, echo_id, h.peer.peer_id, ctx)
        await probe.wait_echoed(ctx)
        assert probe.created_in_state == "connected", probe.created_in_state
        await echo.wait_line(rf"^channel-open {re.escape(h.peer.peer_id)} chat\s*$",
                             what=f"(echo saw 'chat'; {ctx})")
        _no_negotiation_errors(h, echo_id, ctx)
        _no_unexpected_exit(echo, ctx)
    finally:
        await probe.close()


@pytest.mark.parametrize("python_role", ROLES)
async def test_audio_loops_back(server, make_peer, echo_factory, python_role):
    """Python sends a 660 Hz sine; the echo reports the inbound track and sends it back
    on a new track, which Python decodes with a clear peak (Python -> Rust -> Python)."""
    h, echo, echo_id, _, ctx = await _setup(server, make_peer, echo_factory, python_role,
                                            audio=True, dc_when=None)
    await _wait_connected(h, echo, echo_id, h.peer.peer_id, ctx)
    await _check_audio_loop(h, echo, echo_id, ctx)
    _no_negotiation_errors(h, echo_id, ctx)
    _no_unexpected_exit(echo, ctx)


@pytest.mark.parametrize("python_role", ROLES)
async def test_track_metadata_arrives_with_the_track(server, make_peer, echo_factory,
                                                     python_role):
    """`parlor echo --track-metadata` sends a track of its own from the start. The Python SDK
    reads a track's metadata only when its `Track` event fires, so the Rust peer must send
    `__meteredTrackMeta` before the offer or answer that carries the track (spec §2.3):
    Rust offering it (Python impolite) and Rust answering with it (Python polite)."""
    want = {"role": "agent", "label": "voice"}
    h, echo, echo_id, _, ctx = await _setup(
        server, make_peer, echo_factory, python_role, audio=True, dc_when=None,
        echo_args=("--track-metadata", json.dumps(want)))
    tr = await h.per_remote[echo_id].wait_for(Track, lambda e: e.track.kind == "audio",
                                              what=f"(echo's track; {ctx})")
    assert tr.metadata == want, (tr.metadata, ctx)
    await _wait_connected(h, echo, echo_id, h.peer.peer_id, ctx)
    _no_negotiation_errors(h, echo_id, ctx)
    _no_unexpected_exit(echo, ctx)


@pytest.mark.parametrize("python_role", ROLES)
async def test_rust_ice_restart_against_a_rebuilding_python_peer(server, make_peer,
                                                                 echo_factory, python_role):
    """The Rust side restarts ICE mid-call (`--restart-ice-after-ms`). The Python SDK takes
    any offer with a new ufrag as "the remote rebuilt" and answers from a brand-new PC, with
    a new DTLS certificate, which cannot be applied in place: the Rust peer must rebuild too
    and offer from its fresh connection, so the looped-back audio resumes."""
    h, echo, echo_id, _, ctx = await _setup(
        server, make_peer, echo_factory, python_role, audio=True, dc_when=None,
        echo_args=("--restart-ice-after-ms", "500"))
    py_id = h.peer.peer_id
    await _wait_connected(h, echo, echo_id, py_id, ctx)
    await _check_audio_loop(h, echo, echo_id, ctx)
    await echo.wait_line(rf"^ice-restart-done {re.escape(py_id)} ok\s*$",
                         what=f"(echo restarted ICE; {ctx})")
    # The audio loop again, on the connection that replaced the first. The Python SDK may
    # build more than one PC on the way (each fires `Track`): listen on the newest.
    await h.per_remote[echo_id].wait_for(StateChange, lambda e: e.to == "connected",
                                         what=f"(python connected again; {ctx})")
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        tracks = [e for e in h.per_remote[echo_id].events
                  if isinstance(e, Track) and e.track.kind == "audio"]
        try:
            frames, peak, freq = await asyncio.wait_for(_collect_tone(tracks[-1].track), 3)
            break
        except asyncio.TimeoutError:
            assert asyncio.get_running_loop().time() < deadline, (
                f"no looped audio after the ICE restart on any of {len(tracks)} tracks ({ctx})")
    assert peak > 1000 and abs(freq - TONE_HZ) < TONE_HZ * 0.1, (frames, peak, freq, ctx)
    _no_unexpected_exit(echo, ctx)


@pytest.mark.parametrize("python_role", ROLES)
async def test_data_channel_and_audio_in_one_call(server, make_peer, echo_factory,
                                                  python_role):
    """Audio and a "chat" channel created at PeerJoined in the same call: both the
    echoed messages and the looped audio arrive."""
    h, echo, echo_id, probe, ctx = await _setup(server, make_peer, echo_factory, python_role,
                                                audio=True, dc_when="at_peer_joined")
    try:
        await _wait_connected(h, echo, echo_id, h.peer.peer_id, ctx)
        await asyncio.gather(probe.wait_echoed(ctx), _check_audio_loop(h, echo, echo_id, ctx))
        await echo.wait_line(rf"^channel-open {re.escape(h.peer.peer_id)} chat\s*$",
                             what=f"(echo saw 'chat'; {ctx})")
        _no_negotiation_errors(h, echo_id, ctx)
        _no_unexpected_exit(echo, ctx)
    finally:
        await probe.close()


@pytest.mark.parametrize("open_at", ["connected", "peer-joined"])
@pytest.mark.parametrize("python_role", ROLES)
async def test_data_channel_created_by_rust(server, make_peer, echo_factory, python_role,
                                            open_at):
    """The Rust side creates the channel: `parlor echo --open-channel parlor` opens it once
    connected, or at peer-joined (before the first exchange: the channel rides the Rust
    offer, and when that offer loses the glare with Python's, it must ride the next one), and
    says hello; Python sees DataChannelOpened and its messages on the channel come back
    exactly (Rust as the channel's creator, in both politeness roles)."""
    received: list[str | bytes] = []
    channels: list[DataChannel] = []
    ev_labels: list[str] = []

    def on_remote(remote: RemotePeer) -> None:
        def on_dc(ev: DataChannelOpened) -> None:
            ev_labels.append(ev.channel.label)
            dc = DataChannel(ev.channel)
            dc.on(DCMessage, lambda m: received.append(m.data))
            channels.append(dc)

        remote.on(DataChannelOpened, on_dc)

    h, echo, echo_id, _, ctx = await _setup(
        server, make_peer, echo_factory, python_role, audio=True, dc_when=None,
        echo_args=("--open-channel", "parlor", "--open-channel-at", open_at),
        on_remote=on_remote)
    await _wait_connected(h, echo, echo_id, h.peer.peer_id, ctx)
    await echo.wait_line(rf"^channel-created {re.escape(h.peer.peer_id)} parlor\s*$",
                         what=f"(echo created 'parlor'; {ctx})")
    deadline = asyncio.get_running_loop().time() + WAIT
    while not received:
        assert asyncio.get_running_loop().time() < deadline, f"no hello ({ctx})"
        await asyncio.sleep(0.05)
    assert channels, ctx
    assert ev_labels == ["parlor"], ev_labels
    assert received[0] == "hello from parlor", received
    want = _messages()
    for msg in want:
        await channels[0].send(msg)
    while received[1:] != want:
        assert received[1:] == want[: len(received) - 1], (received, ctx)
        assert asyncio.get_running_loop().time() < deadline + WAIT, (
            f"only {len(received) - 1}/{len(want)} echoed ({ctx})")
        await asyncio.sleep(0.05)
    _no_negotiation_errors(h, echo_id, ctx)
    _no_unexpected_exit(echo, ctx)


# ---------------------------------------------------------------------------
# TURN: coturn on loopback, credentials minted by Parlor
# ---------------------------------------------------------------------------

TURN_SECRET = "conformance-turn-secret"


@pytest.fixture
def coturn(tmp_path: Path):
    """coturn (Debian package coturn) on a free loopback port with TURN REST credentials
    (use-auth-secret) and loopback peers allowed; yields its turn: URL."""
    port = free_port()
    d = tmp_path / "coturn"
    d.mkdir()
    proc = start_daemon(
        ["turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
         "--relay-ip=127.0.0.1", "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}",
         "--realm=parlor.test", "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli",
         "--no-stdout-log", f"--log-file={d / 'turn.log'}", f"--pidfile={d / 'turn.pid'}",
         f"--userdb={d / 'turndb'}"],
        port, "coturn")
    yield f"turn:127.0.0.1:{port}?transport=udp"
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("python_role", ROLES)
async def test_through_coturn_with_minted_credentials(parlor_factory, coturn, make_peer,
                                                      echo_factory, python_role):
    """`[turn]` on the server: the Python SDK gets a minted credential in its welcome
    and hands it to aiortc; `parlor echo --relay-only` announces
    relayed candidates only, so every packet crosses coturn. A channel created at PeerJoined
    and the looped 660 Hz sine both arrive."""
    server = parlor_factory(build_config(extra=(
        f'\n[turn]\nurls = ["{coturn}"]\nsecret = "{TURN_SECRET}"\nttl_secs = 600\n')))
    h, echo, echo_id, probe, ctx = await _setup(
        server, make_peer, echo_factory, python_role, audio=True, dc_when="at_peer_joined",
        echo_args=("--relay-only",))
    try:
        # MeteredPeer keeps the welcome's list (Connected.ice_servers) for the RTCPeerConnections
        # it builds, without a public accessor.
        servers = h.peer._ice_servers
        assert servers and servers[0].urls in (coturn, [coturn]), servers
        user = servers[0].username or ""
        assert user.endswith(":" + h.peer.peer_id), "username is <expiry>:<peer id>"
        await _wait_connected(h, echo, echo_id, h.peer.peer_id, ctx)
        await asyncio.gather(probe.wait_echoed(ctx), _check_audio_loop(h, echo, echo_id, ctx))
        _no_negotiation_errors(h, echo_id, ctx)
        _no_unexpected_exit(echo, ctx)
    finally:
        await probe.close()
