"""`parlor echo` in Python, on the `parlor` package: for every member it sends back each
data-channel message on the channel it came from, and loops each inbound audio track back to
that member as an outbound track. Used by the browser tests (Chromium's real SDK on the far
end), and a small example of data channels and audio both ways.

    python crates/python/examples/echo.py --url ws://127.0.0.1:7800 --key pk_test_x --room demo

stdout carries one line per milestone, as `parlor echo` prints them: `echo joined ROOM as
PEER_ID`, `peer-joined ID`, `peer-left ID`, `connection ID STATE`, `channel-open ID LABEL`,
`track ID KIND TRACK_ID`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from parlor import (
    AudioSource,
    DataChannel,
    DataChannelOpened,
    DCMessage,
    MediaStream,
    MeteredPeer,
    PeerJoined,
    PeerLeft,
    StateChange,
    Track,
    iter_frames,
)

STATES = {"connecting": "Connecting", "connected": "Connected", "reconnecting": "Disconnected",
          "closed": "Closed"}


def say(line: str) -> None:
    print(line, flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--room", required=True)
    args = ap.parse_args()

    peer = MeteredPeer(api_key=args.key, url=args.url)
    tasks: set[asyncio.Task] = set()
    channels: list[DataChannel] = []

    def spawn(coro) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def loop_back(member, track) -> None:
        # Decoded 48 kHz stereo frames in, the same PCM out on a track for this member.
        source = AudioSource(input_rate=48_000, input_layout="stereo", max_buffered_seconds=0.5)
        peer.add_track(source, MediaStream(id=f"echo-{member.id}"))
        async for frame in iter_frames(track):
            raw = frame.to_bytes() if hasattr(frame, "to_bytes") else bytes(frame.planes[0])
            await source.push(raw[: frame.samples * 4])
        source.stop()

    @peer.on(PeerJoined)
    def on_member(ev: PeerJoined) -> None:
        member = ev.peer
        say(f"peer-joined {member.id}")

        @member.on(StateChange)
        def _(s: StateChange) -> None:
            say(f"connection {member.id} {STATES.get(s.to, s.to)}")

        @member.on(Track)
        def _(t: Track) -> None:
            say(f"track {member.id} {t.track.kind} {t.track.id}")
            spawn(loop_back(member, t.track))

        @member.on(DataChannelOpened)
        def _(o: DataChannelOpened) -> None:
            say(f"channel-open {member.id} {o.channel.label}")
            dc = DataChannel(o.channel)
            channels.append(dc)
            dc.on(DCMessage, lambda m: spawn(dc.send(m.data)))

    @peer.on(PeerLeft)
    def on_left(ev: PeerLeft) -> None:
        say(f"peer-left {ev.peer.id}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await peer.join(args.room)
    say(f"echo joined {args.room} as {peer.peer_id}")
    await stop.wait()
    await peer.close()


if __name__ == "__main__":
    asyncio.run(main())
