"""Pipecat under the load of `parlor bench agent --engines listen`: N listening sessions.

One bot process (Pipecat's way of serving several calls from one process: an aiohttp
endpoint takes each WebRTC offer and runs a pipeline per connection) with Pipecat's
SmallWebRTC transport (aiortc) and Silero VAD:

    transport.input() -> VADProcessor(SileroVADAnalyzer()) -> count -> transport.output()

and N humans in another process (aiortc peers playing the same WAV as the Parlor run, in a
loop). After every session is connected and a warm-up, the bot process's CPU time over
`--secs` gives its CPU per session.

    python listen.py run --sessions 20 --secs 30 --wav q.wav [--json out.json]

(`bench/pipecat/setup.sh` makes a venv with Pipecat; `bench/agent_capacity.py` runs this
beside `parlor bench agent` and prints both.)
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


# ---------------------------------------------------------------- the bot


async def bot(port: int) -> None:
    from aiohttp import web
    from loguru import logger
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import VADUserStartedSpeakingFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.audio.vad_processor import VADProcessor
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.transports.base_transport import TransportParams
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
    from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
    from pipecat.workers.runner import WorkerRunner

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    heard = {"n": 0}
    sessions = []

    class Count(FrameProcessor):
        async def process_frame(self, frame, direction: FrameDirection):
            await super().process_frame(frame, direction)
            if isinstance(frame, VADUserStartedSpeakingFrame):
                heard["n"] += 1
            await self.push_frame(frame, direction)

    runner = WorkerRunner(handle_sigint=False)

    async def offer(request):
        body = await request.json()
        conn = SmallWebRTCConnection()
        await conn.initialize(sdp=body["sdp"], type=body["type"])
        transport = SmallWebRTCTransport(
            webrtc_connection=conn,
            params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
        )
        pipeline = Pipeline(
            [
                transport.input(),
                VADProcessor(vad_analyzer=SileroVADAnalyzer()),
                Count(),
                transport.output(),
            ]
        )
        worker = PipelineWorker(pipeline, idle_timeout_secs=None)
        sessions.append(worker)
        asyncio.create_task(runner.add_workers(worker))
        return web.json_response(conn.get_answer())

    async def stats(_request):
        return web.json_response({"heard": heard["n"], "sessions": len(sessions)})

    app = web.Application()
    app.router.add_post("/offer", offer)
    app.router.add_get("/stats", stats)
    web_runner = web.AppRunner(app)
    await web_runner.setup()
    await web.TCPSite(web_runner, "127.0.0.1", port).start()
    print("bot ready", flush=True)
    await runner.run()


# ---------------------------------------------------------------- the humans


async def humans(url: str, n: int, wav: str) -> None:
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    pcs = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            pc = RTCPeerConnection()
            player = MediaPlayer(wav, loop=True)
            pc.addTrack(player.audio)
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(
                f"{url}/offer",
                json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
            ) as r:
                answer = await r.json()
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            pcs.append(pc)
            await asyncio.sleep(0.05)
        deadline = time.time() + 60
        while any(pc.connectionState != "connected" for pc in pcs):
            if time.time() > deadline:
                raise SystemExit("not every session connected within 60 s")
            await asyncio.sleep(0.1)
    print("all connected", flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------- the run


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(proc: subprocess.Popen, want: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"exited before {want!r}")
        if want in line:
            return
    raise SystemExit(f"no {want!r} within {timeout} s")


def run(args) -> dict:
    import urllib.request

    port = free_port()
    me = os.path.abspath(__file__)
    bot_p = subprocess.Popen(
        [sys.executable, me, "bot", "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    humans_p = None
    try:
        wait_line(bot_p, "bot ready", 120)
        humans_p = subprocess.Popen(
            [sys.executable, me, "humans", "--url", f"http://127.0.0.1:{port}",
             "--sessions", str(args.sessions), "--wav", args.wav],
            stdout=subprocess.PIPE, text=True,
        )
        t_join = time.time()
        wait_line(humans_p, "all connected", 120)
        joined_s = time.time() - t_join
        time.sleep(args.warmup_secs)
        stats = lambda: json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats"))
        heard0 = stats()["heard"]
        c0, h0, t0 = cpu_seconds(bot_p.pid), cpu_seconds(humans_p.pid), time.time()
        time.sleep(args.secs)
        c1, h1, t1 = cpu_seconds(bot_p.pid), cpu_seconds(humans_p.pid), time.time()
        heard = stats()["heard"] - heard0
        wall = t1 - t0
        per = 100 * (c1 - c0) / wall / args.sessions
        return {
            "system": "pipecat", "sessions": args.sessions, "window_s": wall,
            "bot_cpu_s": c1 - c0, "cpu_pct_per_session": per,
            "sessions_per_core": 100 / per if per > 0 else None,
            "bot_rss_mb": rss_mb(bot_p.pid), "humans_cpu_s": h1 - h0,
            "heard_in_window": heard, "joined_s": joined_s,
        }
    finally:
        for p in (humans_p, bot_p):
            if p is not None:
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bot")
    b.add_argument("--port", type=int, required=True)
    h = sub.add_parser("humans")
    h.add_argument("--url", required=True)
    h.add_argument("--sessions", type=int, required=True)
    h.add_argument("--wav", required=True)
    r = sub.add_parser("run")
    r.add_argument("--sessions", type=int, default=10)
    r.add_argument("--secs", type=float, default=30)
    r.add_argument("--warmup-secs", type=float, default=5)
    r.add_argument("--wav", required=True)
    r.add_argument("--json")
    a = ap.parse_args()
    if a.cmd == "bot":
        asyncio.run(bot(a.port))
    elif a.cmd == "humans":
        asyncio.run(humans(a.url, a.sessions, a.wav))
    else:
        if not os.path.exists(a.wav):
            raise SystemExit(f"no such WAV: {a.wav}")
        res = run(a)
        print(json.dumps(res, indent=2))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
