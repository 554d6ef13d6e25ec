"""The `parlor` Python package (crates/python): the reference SDK's API on Parlor's Rust core.

Each test runs `parlor serve` and drives the package as an application would, beside the
real `metered-realtime` where the two meet in one room. The package is built into this venv
by tests/conformance/run.sh (a wheel from `maturin build`, installed with pip).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import pytest

import metered_realtime as ref
import parlor
from conftest import KEY_ALL, KEY_ROOMS, KEY_SUSPENDED, WAIT, mint_token
from parlor import (
    Connected,
    Data,
    Direct,
    Joined,
    Left,
    Message,
    MeteredPeer,
    MeteredPeerOversizedError,
    MeteredPeerSendError,
    MeteredPeerStateError,
    PeerJoined,
    PeerLeft,
    Presence,
    ReconnectOptions,
    RemotePeer,
    ServerRequestError,
    SignallingClient,
    SignallingConnectError,
    StateChange,
)

FAST = ReconnectOptions(initial_delay=0.2, multiplier=1.5, max_delay=1.0, jitter_ratio=0.0)


async def until(pred: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll `pred` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Log:
    """Every event of the given types an emitter produced, in order."""

    def __init__(self, emitter: Any, *types: type) -> None:
        self.events: list[Any] = []
        for t in types:
            emitter.on(t, self.events.append)

    def of(self, t: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, t)]


def test_every_name_of_the_reference_is_offered_or_refused_by_name() -> None:
    for name in ref.__all__:
        if name in parlor.__all__:
            continue
        with pytest.raises(NotImplementedError, match=name):
            getattr(parlor, name)
    with pytest.raises(AttributeError):
        parlor.NoSuchThing  # noqa: B018


async def test_signalling_client_pub_sub_and_direct(server) -> None:
    a = SignallingClient(api_key=KEY_ALL, url=server.url)
    b = SignallingClient(api_key=KEY_ALL, url=server.url)
    la = Log(a, Connected, Message, Direct, Presence, StateChange)
    lb = Log(b, Connected, Message, Direct, Presence)
    await a.connect()
    await b.connect()
    assert a.state == "connected"
    welcome = la.of(Connected)[0]
    assert welcome.peer_id == a.peer_id and welcome.peer_id.startswith("p_")
    assert welcome.is_reconnect is False and welcome.max_message_size == 65536
    assert [(e.from_, e.to) for e in la.of(StateChange)][:2] == [
        ("idle", "connecting"),
        ("connecting", "connected"),
    ]

    await a.subscribe("room-1")
    await b.subscribe("room-1")
    await until(lambda: any(b.peer_id in [p.peer_id for p in e.joined] for e in la.of(Presence)),
                "a to see b join")
    await a.publish("room-1", {"hello": [1, 2.5, None, "ünï"]})
    msg = await until(lambda: lb.of(Message), "b to get the broadcast")
    assert msg[0].data == {"hello": [1, 2.5, None, "ünï"]}
    assert msg[0].sender_peer_id == a.peer_id and msg[0].channel == "room-1"

    await b.send(a.peer_id, "direct text")
    d = await until(lambda: la.of(Direct), "a to get the direct")
    assert d[0].data == "direct text" and d[0].sender_peer_id == b.peer_id

    # Started together, sends keep call order (300 > the core's 256-frame socket queue), as
    # the reference's do. Two are cancelled once every send has its place: each gives its
    # turn away (sent or not, depending on how far it got) and nothing stalls.
    tasks = [asyncio.ensure_future(a.publish("room-1", {"n": i})) for i in range(150)]
    tasks += [asyncio.ensure_future(a.send(b.peer_id, {"n": 150 + i})) for i in range(150)]
    await asyncio.sleep(0)
    for t in (tasks[120], tasks[280]):
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    sent = {i for i, r in enumerate(results) if r is None}
    assert len(sent) >= 298, [r for r in results if r is not None]

    def got(kind: type) -> list[int]:
        return [e.data["n"] for e in lb.of(kind) if isinstance(e.data, dict) and "n" in e.data]

    await until(lambda: len(got(Message)) + len(got(Direct)) >= len(sent), "b to get them all")
    await asyncio.sleep(0.2)
    for kind in (Message, Direct):
        assert got(kind) == sorted(got(kind)), f"{kind.__name__} out of order"
    assert sent <= set(got(Message) + got(Direct)) <= sent | {120, 280}
    await a.publish("room-1", {"after": "the gather"})  # the order is not stuck

    with pytest.raises(ValueError):
        await a.publish("room-1", {"not json": object()})
    await a.close()
    await b.close()
    assert a.state == "closed"
    await a.close()  # idempotent


async def test_two_python_peers_meet_talk_and_leave(server) -> None:
    a = MeteredPeer(api_key=KEY_ALL, url=server.url)
    b = MeteredPeer(api_key=KEY_ALL, url=server.url)
    la = Log(a, Joined, PeerJoined, PeerLeft, Data, Left, StateChange)
    lb = Log(b, Joined, PeerJoined, PeerLeft, Data, Left)
    handled: list[str] = []

    @a.on(PeerJoined)
    async def greet(ev: PeerJoined) -> None:  # async handlers are scheduled and tracked
        await asyncio.sleep(0.01)
        handled.append(ev.peer.id)
        await ev.peer.send({"hi": "from a"})

    await a.join("room-a")
    assert a.state == "joined" and la.of(Joined)[0].channel == "room-a"
    assert la.of(Joined)[0].peer_id == a.peer_id
    async with b.joined("room-a"):
        joined = await until(lambda: la.of(PeerJoined), "a to see b")
        remote: RemotePeer = joined[0].peer
        assert remote.id == b.peer_id and remote in a.remote_peers
        assert remote.polite == (a.peer_id < b.peer_id)
        got = await until(lambda: lb.of(Data), "b to get a's direct")
        assert got[0].data == {"hi": "from a"} and got[0].kind == "direct"
        assert got[0].sender_peer_id == a.peer_id and handled == [b.peer_id]

        await b.send(["to", "everyone"])
        got = await until(lambda: la.of(Data), "a to get b's broadcast")
        assert got[0].data == ["to", "everyone"] and got[0].kind == "broadcast"
        # Room messages started together arrive in call order, broadcast and direct alike.
        await asyncio.gather(*(b.send({"seq": i}) if i % 2 else b.send_to(a.peer_id, {"seq": i})
                               for i in range(60)))

        def seqs() -> list[int]:
            return [e.data["seq"] for e in la.of(Data) if isinstance(e.data, dict) and "seq" in e.data]

        await until(lambda: len(seqs()) == 60, "a to get the 60")
        assert seqs() == list(range(60))
        # The WebRTC connection between the two Rust cores comes up too.
        await until(lambda: remote.state == "connected", "a's connection to b")
    # b closed (context exit): a sees the same RemotePeer object leave.
    left = await until(lambda: la.of(PeerLeft), "a to see b leave")
    assert left[0].peer is remote and remote.state == "closed"
    assert [e.reason for e in lb.of(Left)] == [None]
    await a.close("done")
    assert a.state == "closed" and la.of(Left)[0].reason == "done"
    assert la.of(Left)[0].channel == "room-a"


async def test_a_python_peer_and_the_reference_sdk_share_a_room(server) -> None:
    ours = MeteredPeer(api_key=KEY_ALL, url=server.url)
    theirs = ref.MeteredPeer(api_key=KEY_ALL, url=server.url)
    lo = Log(ours, PeerJoined, Data)
    seen_by_ref: list[Any] = []
    ref_data: list[Any] = []
    theirs.on(ref.PeerJoined, seen_by_ref.append)
    theirs.on(ref.Data, ref_data.append)
    try:
        await ours.join("mixed")
        await theirs.join("mixed")
        await until(lambda: lo.of(PeerJoined), "parlor to see the reference peer")
        await until(lambda: seen_by_ref, "the reference peer to see parlor")
        await ours.send_to(theirs.peer_id, {"n": 1})
        await theirs.send_to(ours.peer_id, {"n": 2})
        await ours.send("all")
        await until(lambda: len(ref_data) == 2, "the reference peer's data")
        assert [(d.data, d.kind) for d in ref_data] == [({"n": 1}, "direct"), ("all", "broadcast")]
        got = await until(lambda: lo.of(Data), "parlor's data")
        assert got[0].data == {"n": 2} and got[0].sender_peer_id == theirs.peer_id
        # WebRTC between the Rust core and aiortc, whichever side is polite.
        remote = lo.of(PeerJoined)[0].peer
        await until(lambda: remote.state == "connected", "parlor's connection to aiortc")
        await until(lambda: seen_by_ref[0].peer.state == "connected", "aiortc's connection")
    finally:
        await theirs.close()
        await ours.close()


async def test_errors_are_the_reference_exceptions(server) -> None:
    with pytest.raises(ValueError):
        MeteredPeer(url=server.url)  # no credential
    with pytest.raises(ValueError):
        MeteredPeer(api_key=KEY_ALL, token="t", url=server.url)
    with pytest.raises(NotImplementedError, match="auto_resubscribe"):
        MeteredPeer(api_key=KEY_ALL, url=server.url, auto_resubscribe=False)

    bad = SignallingClient(api_key="pk_nope", url=server.url, reconnect=False)
    with pytest.raises(SignallingConnectError) as e:
        await bad.connect()
    assert e.value.close_code == 4001
    await bad.close()

    suspended = MeteredPeer(api_key=KEY_SUSPENDED, url=server.url, reconnect=False)
    with pytest.raises(SignallingConnectError) as e:
        await suspended.join("any")
    assert e.value.close_code == 4012
    await suspended.close()

    p = MeteredPeer(api_key=KEY_ALL, url=server.url)
    with pytest.raises(MeteredPeerSendError) as se:
        await p.send("x")
    assert se.value.code == "not_joined"
    for reserved in ("_system/x", "_METERED/y"):
        with pytest.raises(MeteredPeerSendError) as se:
            await p.join(reserved)
        assert se.value.code == "reserved_channel"
    assert p.state == "idle"
    await p.join("errors")
    with pytest.raises(MeteredPeerStateError):
        await p.join("again")
    with pytest.raises(MeteredPeerSendError) as se:
        await p.send_to(p.peer_id, "me")
    assert se.value.code == "self_send"
    with pytest.raises(MeteredPeerSendError) as se:
        await p.send_to("", "x")
    assert se.value.code == "invalid_args"
    with pytest.raises(MeteredPeerOversizedError) as oe:
        await p.send("x" * 70_000)
    assert oe.value.cap == 65536 and oe.value.size > 65536
    with pytest.raises(TypeError, match="AudioSource"):
        p.add_track(object())
    with pytest.raises(NotImplementedError, match="pc"):
        RemotePeer(p, "p_x", None).pc  # noqa: B018
    await p.close()

    rooms_only = MeteredPeer(api_key=KEY_ROOMS, url=server.url)
    with pytest.raises(ServerRequestError) as re_:
        await rooms_only.join("not-a-room")
    assert re_.value.code == "channel_not_authorized"
    assert rooms_only.state == "idle"
    await rooms_only.close()


async def test_token_providers_sync_and_async(server) -> None:
    token = mint_token(channels=["*"])
    calls: list[str] = []

    async def fetch() -> str:
        calls.append("async")
        return token

    def fetch_sync() -> str:
        calls.append("sync")
        return token

    a = MeteredPeer(token_provider=fetch, url=server.url)
    b = MeteredPeer(token_provider=fetch_sync, url=server.url)
    c = MeteredPeer(token=token, url=server.url)
    for p in (a, b, c):
        await p.join("tokens")
    assert sorted(calls) == ["async", "sync"]
    await until(lambda: len(a.remote_peers) == 2, "a to see b and c")
    for p in (a, b, c):
        await p.close()


async def test_handlers_once_off_and_event_streams(server) -> None:
    a = MeteredPeer(api_key=KEY_ALL, url=server.url)
    b = MeteredPeer(api_key=KEY_ALL, url=server.url)
    once: list[Any] = []
    every: list[Any] = []
    a.once(Data, once.append)
    handler = a.on(Data, every.append)

    def broken(ev: Data) -> None:
        raise RuntimeError("a handler's bug")

    a.on(Data, broken)  # logged, never stops the others
    await a.join("handlers")
    await b.join("handlers")
    await until(lambda: a.remote_peers, "a to see b")
    async with a.events(Data) as stream:
        for i in range(3):
            await b.send(i)
        received = []
        async for ev in stream:
            received.append(ev.data)
            if len(received) == 3:
                break
    assert received == [0, 1, 2]
    assert [e.data for e in once] == [0] and [e.data for e in every] == [0, 1, 2]
    a.off(Data, handler)
    await b.send(3)
    await until(lambda: len(once) == 1 and len(every) == 3, "nothing more")
    with pytest.raises(TypeError):
        a.on(str, print)  # type: ignore[arg-type]
    await b.close()
    await a.close()


async def test_a_peer_rejoins_after_the_server_restarts(parlor_factory) -> None:
    from conftest import free_port

    port = free_port()
    srv = parlor_factory(port=port)
    a = MeteredPeer(api_key=KEY_ALL, url=srv.url, reconnect=FAST)
    la = Log(a, StateChange, PeerJoined)
    await a.join("restart")
    first_id = a.peer_id
    srv.kill()
    await until(lambda: a.state == "reconnecting", "a to notice")
    srv2 = parlor_factory(port=port, name="parlor-again")
    await until(lambda: a.state == "joined" and a.peer_id != first_id, "a to rejoin", timeout=30)
    b = MeteredPeer(api_key=KEY_ALL, url=srv2.url)
    await b.join("restart")
    joined = await until(lambda: la.of(PeerJoined), "a to see b on the new server")
    assert joined[0].peer.id == b.peer_id
    states = [e.to for e in la.of(StateChange)]
    assert states[:3] == ["joining", "joined", "reconnecting"] and states[-1] == "joined"
    await b.close()
    await a.close()


# ---------------------------------------------------------------- audio

def tone(seconds: float, rate: int = 16_000, freq: float = 440.0, amp: int = 8000) -> bytes:
    import math
    import struct

    n = int(seconds * rate)
    return b"".join(
        struct.pack("<h", int(amp * math.sin(2 * math.pi * freq * i / rate))) for i in range(n)
    )


def rms(frame: Any) -> float:
    """Level of a decoded s16 frame (PyAV's or parlor's), without NumPy."""
    import array
    import math

    raw = frame.to_bytes() if hasattr(frame, "to_bytes") else bytes(frame.planes[0])
    a = array.array("h", raw[: frame.samples * 2 * len(frame.layout.channels)]
                    if hasattr(frame.layout, "channels") else raw)
    return math.sqrt(sum(x * x for x in a) / len(a)) if a else 0.0


async def loud_frames(track: Any, iter_frames: Any, want: int, timeout: float = WAIT) -> list[Any]:
    """Frames of `track` until `want` of them are loud (a tone, not silence)."""
    loud: list[Any] = []

    async def read() -> None:
        async for frame in iter_frames(track):
            if rms(frame) > 1000:
                loud.append(frame)
                if len(loud) >= want:
                    return

    await asyncio.wait_for(read(), timeout)
    return loud


@pytest.mark.parametrize("far_end", ["parlor", "reference"])
async def test_an_agent_hears_the_human_and_answers_one_source_per_utterance(
    server, far_end: str
) -> None:
    """The reference guide's shape: the agent reads the human's track with iter_frames and
    answers each utterance on a fresh AudioSource (so a barge-in can drop one utterance),
    removing the finished one; the human hears both answers."""
    sdk: Any = parlor if far_end == "parlor" else ref
    agent = parlor.MeteredPeer(api_key=KEY_ALL, url=server.url)
    human = sdk.MeteredPeer(api_key=KEY_ALL, url=server.url)
    heard_by_agent: list[Any] = []
    agent_tracks: list[Any] = []
    human_tracks: list[Any] = []

    @agent.on(PeerJoined)
    def on_human(ev: PeerJoined) -> None:
        ev.peer.on(parlor.Track, agent_tracks.append)

    @human.on(sdk.PeerJoined)
    def on_agent(ev: Any) -> None:
        ev.peer.on(sdk.Track, human_tracks.append)

    voice = sdk.AudioSource(input_rate=16_000)
    human.add_track(voice, sdk.MediaStream(id="human-mic"), {"role": "microphone"})
    try:
        await agent.join("call-1")
        await human.join("call-1")
        await voice.push(tone(1.5))
        ev = await until(lambda: agent_tracks, "the agent to get the human's track")
        assert ev[0].streams[0].id == "human-mic" and ev[0].metadata == {"role": "microphone"}
        frames = await loud_frames(ev[0].track, parlor.iter_frames, 10)
        heard_by_agent.extend(frames)
        f = frames[0]
        assert f.sample_rate == 48_000 and f.samples == 960
        # Two utterances, each on its own source in the agent's one voice stream; each is
        # removed when it is done (the next one takes its place on the wire).
        agent_voice = parlor.MediaStream(id="agent-voice")
        for _ in range(2):
            utterance = parlor.AudioSource(input_rate=24_000)
            agent.add_track(utterance, agent_voice)
            await utterance.push(tone(0.6, rate=24_000, freq=330.0))
            utterance.end()
            await asyncio.wait_for(utterance.drained(), WAIT)
            await utterance.push(tone(0.1, rate=24_000))  # a no-op after end()
            agent.remove_track(utterance)
        # The voice arrives in the agent's stream (aiortc also reports, first, the audio
        # m-line the agent's side announced when the call was set up with no track on it).
        voice_track = await until(
            lambda: [t for t in human_tracks if t.streams and t.streams[0].id == "agent-voice"],
            "the human to get the agent's voice",
        )
        loud = await loud_frames(voice_track[0].track, sdk.iter_frames, 10)
        assert len(loud) >= 10
    finally:
        voice.end()
        await human.close()
        await agent.close()


async def test_from_file_plays_a_wav_and_a_flac_and_stops_a_looped_one(server, tmp_path) -> None:
    """`from_file` (the reference's name): a 16-bit WAV read with the standard library, a FLAC
    through PyAV; each plays once it is added, in real time, and its source ends after the
    last sample; a looped one plays until stopped. Bad input gets a clear error."""
    import wave

    import av

    with pytest.raises(FileNotFoundError):
        parlor.from_file(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="URLs"):
        parlor.from_file("http://127.0.0.1:1/a.wav")
    (tmp_path / "junk.bin").write_bytes(b"not audio " * 50)
    with pytest.raises(ValueError, match="FFmpeg"):
        parlor.from_file(tmp_path / "junk.bin")
    with pytest.raises(NotImplementedError, match="options"):
        parlor.from_file(tmp_path / "junk.bin", format="wav")

    wav = tmp_path / "tone.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24_000)
        w.writeframes(tone(1.0, rate=24_000))
    flac = tmp_path / "tone.flac"
    with av.open(str(flac), "w") as c:
        st = c.add_stream("flac", rate=22_050, layout="stereo")
        mono = tone(0.6, rate=22_050)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=len(mono) // 2)
        frame.planes[0].update(b"".join(mono[i:i + 2] * 2 for i in range(0, len(mono), 2)))
        frame.sample_rate = 22_050
        for packet in [*st.encode(frame), *st.encode(None)]:
            c.mux(packet)

    sender = parlor.MeteredPeer(api_key=KEY_ALL, url=server.url)
    listener = parlor.MeteredPeer(api_key=KEY_ALL, url=server.url)
    tracks: list[Any] = []

    @listener.on(PeerJoined)
    def on_sender(ev: PeerJoined) -> None:
        ev.peer.on(parlor.Track, tracks.append)

    try:
        await sender.join("files")
        await listener.join("files")
        for path, seconds in ((wav, 1.0), (flac, 0.6)):
            player = parlor.from_file(path)
            assert player.video is None and player.audio.readyState == "live"
            sender.add_track(player.audio, parlor.MediaStream(id=f"file-{path.suffix[1:]}"))
            ev = await until(
                lambda: [t for t in tracks if t.streams and t.streams[0].id == f"file-{path.suffix[1:]}"],
                f"the {path.suffix} track",
            )
            loud = 0

            async def count() -> None:
                nonlocal loud
                async for f in parlor.iter_frames(ev[0].track):
                    loud += rms(f) > 1000

            counter = asyncio.ensure_future(count())
            await until(lambda: player.audio.readyState == "ended", f"{path.suffix} to end")
            await asyncio.wait_for(player.audio.drained(), WAIT)
            await asyncio.sleep(0.5)
            counter.cancel()
            # 20 ms frames: all of the file, none twice (Opus may smear one frame each side).
            assert abs(loud - seconds * 50) <= 3, (path.suffix, loud)
            sender.remove_track(player.audio)

        short = tmp_path / "short.wav"
        with wave.open(str(short), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16_000)
            w.writeframes(tone(0.2))
        looped = parlor.from_file(short, loop=True)
        sender.add_track(looped.audio, parlor.MediaStream(id="looped"))
        await asyncio.sleep(1.0)
        assert looped.audio.readyState == "live"  # 0.2 s played five times and going
        looped.audio.stop()
        assert looped.audio.readyState == "ended"
        await asyncio.sleep(0.1)
        assert looped.audio._task is not None and looped.audio._task.done()
    finally:
        await listener.close()
        await sender.close()


def test_rust_log_shows_the_cores_log_lines_and_nothing_without_it(server) -> None:
    """RUST_LOG turns on the native core's log lines (stderr); without it nothing is printed."""
    import os
    import subprocess
    import sys

    program = (
        "import asyncio, parlor\n"
        "async def main():\n"
        f"    c = parlor.SignallingClient(api_key={KEY_ALL!r}, url={server.url!r})\n"
        "    await c.connect()\n"
        "    await c.close()\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    quiet = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                           text=True, timeout=60)
    assert quiet.returncode == 0, quiet.stderr
    assert "signalling state" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", program],
                          env={**env, "RUST_LOG": "parlor_peer=debug"}, capture_output=True,
                          text=True, timeout=60)
    assert loud.returncode == 0, loud.stderr
    assert "signalling state" in loud.stderr, loud.stderr[-2000:]
    assert KEY_ALL not in loud.stderr  # credentials never in logs


UVLOOP_PROGRAM = """
import array, asyncio, math, struct, sys
import uvloop
import parlor
from parlor import AudioSource, Data, MediaStream, MeteredPeer, PeerJoined, Track, iter_frames

def tone(seconds, rate=16_000):
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                    for i in range(int(seconds * rate)))

def loud(frame):
    raw = frame.to_bytes() if hasattr(frame, "to_bytes") else bytes(frame.planes[0])
    channels = len(frame.layout.channels) if hasattr(frame.layout, "channels") else 1
    a = array.array("h", raw[: frame.samples * 2 * channels])
    return a and math.sqrt(sum(x * x for x in a) / len(a)) > 1000

async def main(url, key):
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    a, b = MeteredPeer(api_key=key, url=url), MeteredPeer(api_key=key, url=url)
    tracks, data = asyncio.Queue(), asyncio.Queue()

    @b.on(PeerJoined)
    def on_a(ev):
        ev.peer.on(Track, tracks.put_nowait)

    a.on(Data, data.put_nowait)
    voice = AudioSource(input_rate=16_000)
    a.add_track(voice, MediaStream(id="uv"))
    await b.join("uv-room")
    await a.join("uv-room")
    await voice.push(tone(1.0))
    ev = await asyncio.wait_for(tracks.get(), 20)
    n = 0
    async for frame in iter_frames(ev.track):
        n += bool(loud(frame))
        if n >= 10:
            break
    await b.send_to(a.peer_id, {"heard": n})
    got = await asyncio.wait_for(data.get(), 20)
    assert got.data == {"heard": 10}, got
    voice.end()
    await asyncio.wait_for(voice.drained(), 20)
    await b.close()
    await a.close()
    print("ok")

uvloop.run(main(sys.argv[1], sys.argv[2]))
"""


def test_the_package_runs_on_uvloop(server) -> None:
    """A tone from one peer heard by the other through iter_frames, and a direct message
    back, on uvloop's event loop (frames wake the loop through a descriptor,
    `loop.add_reader`, which uvloop serves as asyncio does)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", UVLOOP_PROGRAM, server.url, KEY_ALL],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


async def test_audio_source_arguments_and_backpressure(server) -> None:
    with pytest.raises(ValueError, match="input_layout"):
        parlor.AudioSource(input_layout="5.1")
    src = parlor.AudioSource(input_rate=48_000, input_layout="stereo", max_buffered_seconds=0.5)
    with pytest.raises(TypeError):
        await src.push("not bytes")  # type: ignore[arg-type]
    # Not sent anywhere yet: the pacer still drains in real time, so 2 s of input takes
    # about 1.5 s to push into a 0.5 s buffer.
    started = time.monotonic()
    await src.push(b"\x00\x00" * 2 * 48_000 * 2)
    took = time.monotonic() - started
    assert took > 1.0, f"push did not wait for room in the buffer ({took:.2f} s)"
    assert src.buffered_seconds <= 0.6
    src.stop()
    await src.push(b"\x01\x00")  # no-op after stop
    assert src.readyState == "ended"


async def test_the_example_agent_answers_a_reference_sdk_human(server) -> None:
    """crates/python/examples/echo_agent.py, run as a user would, with a metered-realtime
    human: it hears a tone, waits for the pause, says it back in its voice stream."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "crates/python/examples/echo_agent.py"
    agent = subprocess.Popen(
        [sys.executable, str(example), server.url, KEY_ALL, "example-room"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    human = ref.MeteredPeer(api_key=KEY_ALL, url=server.url)
    tracks: list[Any] = []
    said: list[Any] = []
    human.on(ref.Data, said.append)

    @human.on(ref.PeerJoined)
    def on_agent(ev: Any) -> None:
        ev.peer.on(ref.Track, tracks.append)

    mic = ref.AudioSource(input_rate=16_000)
    human.add_track(mic, ref.MediaStream(id="mic"))
    try:
        await human.join("example-room")
        await until(lambda: human.remote_peers, "the example agent to join", timeout=30)
        await mic.push(tone(1.0))
        voice = await until(
            lambda: [t for t in tracks if t.streams and t.streams[0].id == "agent-voice"],
            "the agent's voice",
        )
        loud = await loud_frames(voice[0].track, ref.iter_frames, 25)
        assert len(loud) >= 25  # at least half a second of the tone came back
        got = await until(lambda: said, "the agent's message")
        assert got[0].data["type"] == "said" and got[0].data["seconds"] > 0.5
    finally:
        mic.end()
        await human.close()
        agent.send_signal(signal.SIGINT)
        try:
            out, _ = agent.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            out, _ = agent.communicate()
    text = out.decode(errors="replace")
    assert "agent: in example-room" in text and "joined" in text, text
    assert agent.returncode == 0, text


# ---------------------------------------------------------------- data channels

@pytest.mark.parametrize("far_end", ["parlor", "reference"])
async def test_data_channels_both_ways_with_the_reference_wrapper(server, far_end: str) -> None:
    """Ours opens a channel; the far end gets DataChannelOpened, wraps it in DataChannel;
    text and binary go both ways in order; the far end closes it and we see DCClose."""
    sdk: Any = parlor if far_end == "parlor" else ref
    ours = parlor.MeteredPeer(api_key=KEY_ALL, url=server.url)
    theirs = sdk.MeteredPeer(api_key=KEY_ALL, url=server.url)
    opened: list[Any] = []
    remotes: list[Any] = []

    @theirs.on(sdk.PeerJoined)
    def on_peer(ev: Any) -> None:
        ev.peer.on(sdk.DataChannelOpened, opened.append)

    ours.on(PeerJoined, lambda ev: remotes.append(ev.peer))
    try:
        await ours.join("dc-room")
        await theirs.join("dc-room")
        remote = (await until(lambda: remotes, "our peer to see theirs"))[0]
        await until(lambda: remote.state == "connected", "the connection")
        raw = remote.create_data_channel("chat")
        dc = parlor.DataChannel(raw)
        ours_got: list[Any] = []
        events: list[Any] = []
        dc.on(parlor.DCMessage, lambda ev: ours_got.append(ev.data))
        dc.on(parlor.DCOpen, events.append)
        dc.on(parlor.DCClose, events.append)
        await until(lambda: dc.ready_state == "open", "our channel to open")
        far = sdk.DataChannel((await until(lambda: opened, "their DataChannelOpened"))[0].channel)
        far_got: list[Any] = []
        far.on(sdk.DCMessage, lambda ev: far_got.append(ev.data))
        for i in range(50):
            await dc.send(f"m{i}")
        await dc.send(b"\x00\x01\xff")
        # Concurrent senders keep call order too (300 > the core's 256-message queue).
        await asyncio.gather(*(dc.send(f"c{i}") for i in range(300)))
        await until(lambda: len(far_got) == 351, "their messages")
        assert far_got == [f"m{i}" for i in range(50)] + [b"\x00\x01\xff"] + [
            f"c{i}" for i in range(300)
        ]
        await far.send("reply")
        await far.send(b"\x02")
        await until(lambda: ours_got == ["reply", b"\x02"], "our messages")
        far.close()
        await until(lambda: any(isinstance(e, parlor.DCClose) for e in events), "DCClose")
        assert isinstance(events[0], parlor.DCOpen)
        with pytest.raises(parlor.MeteredRealtimeError):
            await dc.send("after close")
    finally:
        await theirs.close()
        await ours.close()


async def test_an_admin_disconnect_is_a_fatal_error_and_closes_the_peer(server) -> None:
    """4020 (admin disconnect) is terminal: FatalError names it, the peer ends `closed`,
    and the other member sees it leave."""
    a = MeteredPeer(api_key=KEY_ALL, url=server.url)
    b = MeteredPeer(api_key=KEY_ALL, url=server.url)
    la = Log(a, parlor.FatalError, StateChange)
    lb = Log(b, PeerLeft)
    await a.join("admin-room")
    await b.join("admin-room")
    await until(lambda: b.remote_peers, "b to see a")
    loop = asyncio.get_running_loop()
    status, body = await loop.run_in_executor(
        None,
        lambda: server.http_request("POST", f"/admin/peers/{a.peer_id}/disconnect", body=b""),
    )
    assert 200 <= status < 300, (status, body)
    fatal = await until(lambda: la.of(parlor.FatalError), "FatalError")
    assert isinstance(fatal[0].err, parlor.MeteredRealtimeError)
    assert "4020" in str(fatal[0].err) and "admin_disconnect" in str(fatal[0].err)
    await until(lambda: a.state == "closed", "a to close")
    await until(lambda: lb.of(PeerLeft), "b to see a leave")
    with pytest.raises(MeteredPeerSendError):
        await a.send("after the end")
    await a.close()  # idempotent after a fatal end
    await b.close()


class CuttableProxy:
    """A TCP proxy to the server whose connections can be cut (a dropped Wi-Fi link)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.links: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
        self.links += [w, uw]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    def cut(self) -> None:
        for w in self.links:
            w.transport.abort()
        self.links.clear()

    def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_a_dropped_websocket_keeps_remote_peers_and_refires_their_tracks(server) -> None:
    """Our WebSocket drops while the server and the other member stay: we come back under a
    new id, the member is the same RemotePeer object, its connection is rebuilt and its
    audio arrives again as a new Track; the member sees us leave and rejoin."""
    proxy = CuttableProxy(server.port)
    via_proxy = await proxy.start()
    a = MeteredPeer(api_key=KEY_ALL, url=via_proxy, reconnect=FAST)
    b = MeteredPeer(api_key=KEY_ALL, url=server.url)
    la = Log(a, PeerJoined, PeerLeft, StateChange)
    lb = Log(b, PeerJoined, PeerLeft)
    tracks: list[Any] = []
    a.on(PeerJoined, lambda ev: ev.peer.on(parlor.Track, tracks.append))
    voice = parlor.AudioSource(input_rate=16_000)
    b.add_track(voice, parlor.MediaStream(id="b-voice"))
    speaking = asyncio.ensure_future(_speak(voice))
    try:
        await a.join("drop-room")
        await b.join("drop-room")
        member = (await until(lambda: la.of(PeerJoined), "a to see b"))[0].peer
        await until(lambda: tracks, "b's audio at a")
        first_id = a.peer_id
        proxy.cut()
        await until(lambda: a.state == "reconnecting", "a to notice the drop")
        await until(lambda: a.state == "joined" and a.peer_id != first_id, "a to rejoin")
        await until(lambda: len(tracks) >= 2, "b's audio again, on the rebuilt connection")
        assert la.of(PeerJoined) == [la.of(PeerJoined)[0]] and not la.of(PeerLeft)
        assert a.remote_peers == [member] and member.id == b.peer_id
        assert tracks[1].streams[0].id == "b-voice"
        await loud_frames(tracks[1].track, parlor.iter_frames, 5)
        await until(lambda: [e.peer.id for e in lb.of(PeerLeft)] == [first_id], "b: a left")
        await until(lambda: a.peer_id in [e.peer.id for e in lb.of(PeerJoined)], "b: a is back")
    finally:
        speaking.cancel()
        voice.stop()
        await b.close()
        await a.close()
        proxy.close()


async def _speak(source: Any) -> None:
    while True:
        await source.push(tone(0.2))


def _reference_readme_snippets(tmp_path: Any) -> list[str]:
    """The ```python blocks of metered-realtime's own README (from its sdist on PyPI)."""
    import re
    import subprocess
    import sys
    import tarfile

    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         "-d", str(tmp_path), f"metered-realtime=={ref.__version__}"],
        check=True, timeout=120,
    )
    (sdist,) = list(tmp_path.glob("metered_realtime-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/README.md"))
        readme = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    return re.findall(r"```python\n(.*?)```", readme, re.S)


async def test_the_reference_readme_quick_starts_run_on_parlor(server, tmp_path) -> None:
    """The two quick starts of metered-realtime's README, with the import line changed to
    `parlor` (and the demo key and a short sleep): run as written, beside a peer."""
    import subprocess
    import sys

    snippets = _reference_readme_snippets(tmp_path)
    rooms, pubsub = snippets[0], snippets[1]
    assert "from metered_realtime import" in rooms and "SignallingClient" in pubsub

    def adapt(code: str) -> str:
        code = code.replace("from metered_realtime import", "from parlor import")
        code = code.replace('api_key="pk_live_..."', f'api_key="{KEY_ALL}", url="{server.url}"')
        return code.replace("asyncio.sleep(30)", "asyncio.sleep(4)").replace(
            "asyncio.sleep(5)", "asyncio.sleep(4)"
        )

    other = MeteredPeer(api_key=KEY_ALL, url=server.url)
    listener = SignallingClient(api_key=KEY_ALL, url=server.url)
    heard: list[Any] = []
    other_data: list[Any] = []
    other.on(Data, other_data.append)
    listener.on(Message, heard.append)
    voice = parlor.AudioSource(input_rate=16_000)
    other.add_track(voice, parlor.MediaStream(id="other-voice"))
    speaking = asyncio.ensure_future(_speak(voice))
    await other.join("room-42")
    await listener.connect()
    await listener.subscribe("room-42")
    procs = [
        subprocess.Popen([sys.executable, "-c", adapt(code)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
        for code in (rooms, pubsub)
    ]
    try:
        await until(lambda: len(other.remote_peers) >= 1, "the quick start to join")
        await asyncio.sleep(0.5)
        await other.send("hi from the room")
        outs = []
        for p in procs:
            out, _ = await asyncio.get_running_loop().run_in_executor(
                None, lambda p=p: p.communicate(timeout=30))
            outs.append(out.decode(errors="replace"))
            assert p.returncode == 0, out
    finally:
        speaking.cancel()
        voice.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
        await listener.close()
        await other.close()
    assert f"peer joined: {other.peer_id}" in outs[0], outs[0]
    assert "receiving audio stream: ['other-voice']" in outs[0], outs[0]
    assert f"{other.peer_id} says hi from the room" in outs[0], outs[0]
    # Each quick start's own broadcast reached the room.
    assert {"hello": True} in [d.data for d in other_data]
    assert {"hello": True} in [m.data for m in heard]
