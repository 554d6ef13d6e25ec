"""N real Python MeteredPeers (metered-realtime 1.0.2 on aiortc) join ROOM on PARLOR_URL,
each with a 660 Hz AudioSource; a "chat" data channel is created at PeerJoined when this
side is impolite (DC_WHEN=auto; aiortc polite-DC SDK bug), or once connected (DC_WHEN=after),
or never (DC_WHEN=none). Inbound channels are answered too. Prints one JSON line per peer."""
import array, asyncio, json, math, os, sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "tests/conformance/python"))
from metered_realtime import (AudioSource, DataChannel, DataChannelOpened, DCMessage, DCOpen,
    MeteredPeer, NegotiationError, PeerJoined, StateChange, Track, iter_frames)

URL, ROOM = os.environ["PARLOR_URL"], os.environ.get("ROOM", "spike")
N, SECS, WHEN = int(os.environ.get("N", "1")), float(os.environ.get("SECS", "25")), os.environ.get("DC_WHEN", "auto")

def sine(n, start, f=660.0, rate=48000, amp=8000):
    return array.array("h", (int(amp * math.sin(2 * math.pi * f * (start + i) / rate)) for i in range(n))).tobytes()

async def pump(src):
    pos = 0
    while True:
        await src.push(sine(960, pos)); pos += 960

async def one(i):
    st = {"peer": i, "dc_rx": 0, "dc_tx": 0, "first_rx": [], "states": [], "neg_errors": [], "frames": 0, "peak": 0, "dc_open": []}
    peer = MeteredPeer(api_key="pk_test_x", url=URL)
    src = AudioSource(input_rate=48000, input_layout="mono", max_buffered_seconds=0.3)
    peer.add_track(src, None, {"role": "mic"})
    tasks = [asyncio.create_task(pump(src))]

    def wire(dc):
        async def ping():
            k = 0
            while True:
                await asyncio.sleep(1)
                try: await dc.send(f"ping {k}"); st["dc_tx"] += 1; k += 1
                except Exception: return
        def on_open(_):
            st["dc_open"].append("chat")
            asyncio.ensure_future(dc.send(f"hello from py-{i}")); st["dc_tx"] += 1
            tasks.append(asyncio.create_task(ping()))
        def on_msg(m):
            st["dc_rx"] += 1
            if len(st["first_rx"]) < 3: st["first_rx"].append(m.data)
        dc.on(DCOpen, on_open); dc.on(DCMessage, on_msg)

    async def frames(track):
        async for fr in iter_frames(track):
            st["frames"] += 1
            a = array.array("h"); d = bytes(fr.planes[0]); a.frombytes(d[: len(d) // 2 * 2])
            st["peak"] = max(st["peak"], max((abs(x) for x in a), default=0))

    def on_joined(ev):
        r = ev.peer; st["remote"] = r.id; st["polite"] = r.polite
        r.on(StateChange, lambda e: st["states"].append(e.to))
        r.on(NegotiationError, lambda e: st["neg_errors"].append(str(e.error) if hasattr(e, "error") else str(e)))
        r.on(Track, lambda e: tasks.append(asyncio.create_task(frames(e.track))))
        def on_dc(e):
            dc = DataChannel(e.channel); wire(dc)
            # an inbound channel is already open when surfaced
            st["dc_open"].append("inbound:" + e.channel.label)
            asyncio.ensure_future(dc.send(f"hello from py-{i}")); st["dc_tx"] += 1
        r.on(DataChannelOpened, on_dc)
        create = (WHEN == "auto" and not r.polite)
        if create:
            wire(DataChannel(r.create_data_channel("chat")))
        elif WHEN == "after":
            def on_state(e):
                if e.to == "connected" and "created" not in st:
                    st["created"] = True; wire(DataChannel(r.create_data_channel("chat")))
            r.on(StateChange, on_state)
    peer.on(PeerJoined, on_joined)
    await peer.join(ROOM + (f"-{i}" if os.environ.get("PER_PAGE_ROOM") else ""))
    st["id"] = peer.peer_id
    return peer, st, tasks, src

async def main():
    runs = [await one(i) for i in range(N)]
    print(f"py: {N} peer(s) joined", file=sys.stderr)
    await asyncio.sleep(SECS)
    for peer, st, tasks, src in runs:
        print("PY " + json.dumps(st), flush=True)
    for peer, st, tasks, src in runs:
        for t in tasks: t.cancel()
        try: await asyncio.wait_for(peer.close(), 5)
        except Exception: pass

asyncio.run(main())
