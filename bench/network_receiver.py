"""The Python SDK (metered-realtime over aiortc) as a receiver for bench/network_browser.mjs:
join a room, record the first audio track as the SDK hands it to an application
(`iter_frames`), and write it as a 48 kHz mono WAV file.

    tests/conformance/.venv/bin/python bench/network_receiver.py \\
        --url ws://127.0.0.1:PORT --key pk_dev --room ROOM --out received.wav --seconds 45

Prints `joined` once in the room, `wrote N samples` at the end.
"""
import argparse
import array
import asyncio
import wave

from metered_realtime import MeteredPeer, PeerJoined, Track, iter_frames


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=45)
    args = ap.parse_args()

    # Every audio track is recorded (a peer that sends nothing still has an m-line, and aiortc
    # fires a track for it); the longest recording is written.
    recordings: list[array.array] = []
    rate = {"hz": 48_000}

    async def record(track) -> None:
        pcm = array.array("h")
        recordings.append(pcm)
        async for frame in iter_frames(track):
            rate["hz"] = frame.sample_rate
            fmt = frame.format
            channels = 1 if fmt.is_planar else len(frame.layout.channels)
            a = array.array("h")
            a.frombytes(bytes(frame.planes[0])[: frame.samples * channels * 2])
            pcm.extend(a[::channels])

    tasks = []

    def on_joined(ev) -> None:
        def on_track(e) -> None:
            if e.track.kind == "audio":
                tasks.append(asyncio.create_task(record(e.track)))

        ev.peer.on(Track, on_track)

    peer = MeteredPeer(api_key=args.key, url=args.url)
    peer.on(PeerJoined, on_joined)
    await peer.join(args.room)
    print("joined", flush=True)
    await asyncio.sleep(args.seconds)
    for t in tasks:
        t.cancel()
    pcm = max(recordings, key=len, default=array.array("h"))
    with wave.open(args.out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate["hz"])
        w.writeframes(pcm.tobytes())
    print(f"wrote {len(pcm)} samples", flush=True)
    await peer.close()


asyncio.run(main())
