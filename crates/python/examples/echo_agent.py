"""An agent in the shape of the reference SDK's "AI agent communication" guide, on Parlor.

It joins a room, reads each human's audio with ``iter_frames``, and when the human pauses it
says back what it heard, on a fresh ``AudioSource`` per utterance (so a barge-in could drop
one reply), in one outbound stream. The speech-to-text / LLM / text-to-speech hooks are stubs
(the "transcript" is the audio itself); swap in real engines where the comments say.

    python crates/python/examples/echo_agent.py ws://127.0.0.1:7800 pk_test_x demo-room

With the reference SDK, only the import line differs:
``from metered_realtime import ...`` → ``from parlor import ...``.
"""

from __future__ import annotations

import array
import asyncio
import math
import sys

from parlor import (
    AudioSource,
    Data,
    MediaStream,
    MeteredPeer,
    PeerJoined,
    PeerLeft,
    ReconnectOptions,
    Track,
    iter_frames,
)

SILENCE_RMS = 500.0  # below this a 20 ms frame counts as a pause
PAUSE_FRAMES = 25  # 500 ms of pause ends an utterance


def level(frame) -> float:
    raw = frame.to_bytes() if hasattr(frame, "to_bytes") else bytes(frame.planes[0])
    a = array.array("h", raw)
    return math.sqrt(sum(x * x for x in a) / len(a)) if a else 0.0


async def main(url: str, api_key: str, room: str) -> None:
    peer = MeteredPeer(
        api_key=api_key,
        url=url,
        reconnect=ReconnectOptions(max_attempts=float("inf"), max_delay=60.0),
    )
    voice = MediaStream(id="agent-voice")
    tasks: set[asyncio.Task] = set()

    async def answer(pcm: bytes) -> None:
        # text = await stt(pcm); reply = await llm(text); pcm = await tts(reply)
        source = AudioSource(input_rate=48_000, input_layout="stereo")
        peer.add_track(source, voice)
        await source.push(pcm)
        source.end()
        await source.drained()
        peer.remove_track(source)
        await peer.send({"type": "said", "seconds": round(len(pcm) / 192_000, 2)})

    async def listen(track) -> None:
        heard = bytearray()
        quiet = 0
        async for frame in iter_frames(track):
            loud = level(frame) > SILENCE_RMS
            if loud:
                quiet = 0
                heard += frame.to_bytes() if hasattr(frame, "to_bytes") else bytes(frame.planes[0])
            elif heard:
                quiet += 1
                if quiet >= PAUSE_FRAMES:
                    await answer(bytes(heard))
                    heard.clear()

    @peer.on(PeerJoined)
    def on_join(ev: PeerJoined) -> None:
        print(f"agent: {ev.peer.id} joined", flush=True)

        @ev.peer.on(Track)
        def on_track(t: Track) -> None:
            task = asyncio.ensure_future(listen(t.track))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    @peer.on(PeerLeft)
    def on_leave(ev: PeerLeft) -> None:
        print(f"agent: {ev.peer.id} left", flush=True)

    @peer.on(Data)
    def on_data(ev: Data) -> None:
        print(f"agent: data from {ev.sender_peer_id}: {ev.data!r}", flush=True)

    async with peer.joined(room):
        print(f"agent: in {room} as {peer.peer_id}", flush=True)
        await asyncio.Event().wait()  # until interrupted


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: echo_agent.py URL API_KEY ROOM")
    try:
        asyncio.run(main(*sys.argv[1:]))
    except KeyboardInterrupt:
        pass
