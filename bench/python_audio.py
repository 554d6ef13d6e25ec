"""A Python program doing the same work as `parlor bench audio`, on the Python SDK
(`--sdk metered`: metered-realtime on aiortc) or on Parlor's own package (`--sdk parlor`:
the same API on the Rust core, crates/python; only the import differs):
N conversations in one process, each an agent MeteredPeer whose AudioSource is fed the
same PCM in real time (20 ms pushes, 40 ms ahead) and a listener MeteredPeer decoding it
with iter_frames; conversation 0 is the latency probe (40 ms 1 kHz bursts into an idle
source at a random phase). Prints one JSON line. Run by `parlor bench audio --python` /
`--python-parlor` (through bench/run-python.sh), against the same embedded server.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import os
import random
import resource
import time
import warnings

try:  # C, ~1 µs a frame (the loop below: ~85 µs); gone in Python 3.13
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
except ImportError:
    audioop = None


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak(frame) -> int:
    """The frame's largest absolute sample. The Rust bench measures it natively; here it is
    the probe's measurement, not the SDK's work, so it is kept to C where Python has it."""
    fmt = frame.format
    channels = 1 if fmt.is_planar else len(frame.layout.channels)
    pcm = bytes(frame.planes[0])[: frame.samples * channels * 2]
    if audioop is not None:
        return audioop.max(pcm, 2)
    a = array.array("h")
    a.frombytes(pcm)
    return max((abs(x) for x in a), default=0)


def pct(v: list[float], p: float) -> float | None:
    if not v:
        return None
    v = sorted(v)
    return v[round((len(v) - 1) * p)]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", default="pk_bench")
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--pcm", required=True, help="s16le mono PCM at --rate (the agent's speech)")
    ap.add_argument("--rate", type=int, default=16000)
    ap.add_argument("--chunk-ms", type=int, default=20, help="ms of PCM per push, two ahead")
    ap.add_argument("--sdk", choices=["metered", "parlor"], default="metered")
    args = ap.parse_args()
    global AudioSource, MeteredPeer, PeerJoined, Track, iter_frames
    started = time.perf_counter()
    if args.sdk == "parlor":
        from parlor import AudioSource, MeteredPeer, PeerJoined, Track, iter_frames
    else:
        from metered_realtime import AudioSource, MeteredPeer, PeerJoined, Track, iter_frames
    import_seconds = time.perf_counter() - started
    with open(args.pcm, "rb") as f:
        signal = f.read()
    chunk = args.rate * args.chunk_ms // 1000 * 2  # s16 mono bytes per push
    burst = array.array("h", (int(12000 * math.sin(2 * math.pi * 1000 * k / args.rate))
                              for k in range(args.rate // 25))).tobytes()
    rss0 = rss()
    rss_first = rss0
    pushed: list[float] = []
    lat: list[float] = []
    firsts: list[float] = []
    measuring = False
    tasks = []
    peers = []
    speakers = []  # the non-probe sources (underruns, on the parlor package)
    late: list[float] = []  # how late each speaker's timer woke, in the measured window (ms)

    async def speak(src: AudioSource) -> None:
        pos = 0
        for _ in range(2):
            await src.push(signal[pos:pos + chunk]); pos += chunk
        nxt = time.monotonic()
        while True:
            nxt += args.chunk_ms / 1000
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            if measuring:
                late.append((time.monotonic() - nxt) * 1000)
            if pos + chunk > len(signal):
                pos = 0
            await src.push(signal[pos:pos + chunk]); pos += chunk

    async def probe(src: AudioSource) -> None:
        rnd = random.Random(7)
        while True:
            await asyncio.sleep(0.49 + rnd.random() * 0.02)
            pushed.append(time.monotonic())
            await src.push(burst)

    async def listen(track, joined: float, is_probe: bool) -> None:
        was_loud = False
        first = True
        async for fr in iter_frames(track):
            if not first and not is_probe:
                continue  # the listener's only work after its first audio: taking frames
            p = peak(fr)
            # The probe conversation's first audio waits for its first burst; leave it out.
            if first and p > 300 and not (is_probe and args.conversations > 1):
                firsts.append((time.monotonic() - joined) * 1000); first = False
            if is_probe:
                loud = p > 3000
                if loud and not was_loud:
                    now = time.monotonic()
                    while pushed and now - pushed[0] > 0.25:
                        pushed.pop(0)
                    if pushed:
                        t = pushed.pop(0)
                        if measuring:
                            lat.append((now - t) * 1000)
                was_loud = loud

    for i in range(args.conversations):
        room = f"pybench-{i}"
        agent = MeteredPeer(api_key=args.key, url=args.url)
        src = AudioSource(input_rate=args.rate, input_layout="mono",
                          max_buffered_seconds=max(0.2, 3 * args.chunk_ms / 1000))
        agent.add_track(src, None, None)
        listener = MeteredPeer(api_key=args.key, url=args.url)
        is_probe = i == 0
        joined_at = {"t": 0.0}

        def on_joined(ev, joined_at=joined_at, is_probe=is_probe):
            ev.peer.on(Track, lambda e: tasks.append(asyncio.create_task(
                listen(e.track, joined_at["t"], is_probe))))

        listener.on(PeerJoined, on_joined)
        await agent.join(room)
        joined_at["t"] = time.monotonic()
        await listener.join(room)
        tasks.append(asyncio.create_task(probe(src) if is_probe else speak(src)))
        if not is_probe:
            speakers.append(src)
        peers += [agent, listener]
        if i == 0 and args.conversations > 1:
            # As the Rust bench: the first conversation also pays one-time costs.
            await asyncio.sleep(1)
            rss_first = rss()
    await asyncio.sleep(2)
    rss_setup = rss()
    def underruns() -> int | None:
        if args.sdk != "parlor":
            return None  # aiortc's AudioSource does not count them
        return sum(s._native.underruns for s in speakers)

    u0 = underruns()
    measuring = True
    c0, t0 = cpu(), time.monotonic()
    await asyncio.sleep(args.seconds)
    c1, wall = cpu(), time.monotonic() - t0
    measuring = False
    u1 = underruns()
    n = args.conversations
    print(json.dumps({
        "sdk": args.sdk,
        "event_loop": EVENT_LOOP,
        "import_seconds": import_seconds,
        "underruns": None if u0 is None or u1 is None else u1 - u0,
        "conversations": n,
        "seconds": wall,
        "cpu_s_per_audio_s_per_conversation": (c1 - c0) / wall / n,
        "push_to_frame_ms_p50": pct(lat, 0.5),
        "push_to_frame_ms_p95": pct(lat, 0.95),
        "latency_samples": len(lat),
        "push_late_ms_p50": pct(late, 0.5),
        "push_late_ms_p99": pct(late, 0.99),
        "push_late_ms_max": max(late) if late else None,
        "pushes_late_over_20ms": sum(1 for x in late if x > 20),
        "pushes": len(late),
        "join_to_first_audio_ms_p50": pct(firsts, 0.5),
        "join_to_first_audio_ms_max": max(firsts) if firsts else None,
        "conversations_with_audio": len(firsts),
        "rss_bytes_per_conversation": (rss_setup - rss0) / n,
        "rss_bytes_per_extra_conversation": (rss_setup - rss_first) / (n - 1) if n > 1 else None,
    }), flush=True)
    for t in tasks:
        t.cancel()
    for p in peers:
        try:
            await asyncio.wait_for(p.close(), 5)
        except Exception:
            pass
    os._exit(0)


AudioSource = MeteredPeer = PeerJoined = Track = iter_frames = None  # set by main()
# BENCH_EVENT_LOOP=uvloop runs the program on uvloop (libuv; `pip install uvloop`), the event
# loop many asyncio servers pick instead of the standard one; unset: asyncio's own.
EVENT_LOOP = os.environ.get("BENCH_EVENT_LOOP", "asyncio")
if EVENT_LOOP == "uvloop":
    import uvloop

    uvloop.run(main())
elif EVENT_LOOP == "asyncio":
    asyncio.run(main())
else:
    raise SystemExit(f"BENCH_EVENT_LOOP={EVENT_LOOP!r}: use asyncio or uvloop")
