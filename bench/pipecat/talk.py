"""Pipecat under the load of `parlor bench agent --engines neural`: N answering sessions.

One bot process serving every session (an aiohttp endpoint takes each WebRTC offer), with
Pipecat 1.14's standard voice pipeline on the same local models as Parlor's demo:

    transport.input()                      SmallWebRTC (aiortc)
    -> WhisperSTTService                   faster-whisper, Whisper tiny.en (CTranslate2, int8)
    -> user aggregator                     Silero VAD, smart-turn v3.2 (Pipecat's defaults)
    -> RuleLLM                             "It is H MM in universal time." (Parlor's rule reply)
    -> PiperTTSService                     Piper en_US-joe-medium
    -> transport.output() -> assistant aggregator

and N humans in another process (aiortc): each plays the question, waits for the answer's
first audio (voice-to-voice, from the question's last sample handed to the sender), for its
end (600 ms without a loud frame) and 1.5 s more, and asks again. The bot's CPU over
`--secs` and the voice-to-voice of the questions answered in that window are reported.

    python talk.py run --sessions 2 --secs 40 --wav question.wav \\
        --whisper DIR --piper DIR [--json out.json]

(`bench/pipecat/setup.sh` makes the venv and prints where the model packages are;
`bench/agent_capacity.py --talk` runs this beside `parlor bench agent --engines neural`.)
"""

import argparse
import asyncio
import fractions
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from listen import cpu_seconds, free_port, rss_mb, wait_line  # noqa: E402

RATE = 48000
FRAME = 960  # 20 ms


# ---------------------------------------------------------------- the bot


async def bot(port: int, whisper_dir: str, piper_dir: str) -> None:
    from aiohttp import web
    from loguru import logger
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import (
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.transports.base_transport import TransportParams
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
    from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
    from pipecat.workers.runner import WorkerRunner
    from pathlib import Path

    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    class RuleLLM(FrameProcessor):
        """Parlor's rule reply for the time, in place of an LLM service."""

        async def process_frame(self, frame, direction: FrameDirection):
            await super().process_frame(frame, direction)
            if isinstance(frame, LLMContextFrame):
                now = time.gmtime()
                reply = f"It is {now.tm_hour} {now.tm_min:02d} in universal time."
                await self.push_frame(LLMFullResponseStartFrame())
                await self.push_frame(LLMTextFrame(reply))
                await self.push_frame(LLMFullResponseEndFrame())
            else:
                await self.push_frame(frame, direction)

    runner = WorkerRunner(handle_sigint=False)
    sessions = []

    async def offer(request):
        body = await request.json()
        conn = SmallWebRTCConnection()
        await conn.initialize(sdp=body["sdp"], type=body["type"])
        transport = SmallWebRTCTransport(
            webrtc_connection=conn,
            params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
        )
        stt = WhisperSTTService(
            device="cpu",
            compute_type="int8",
            settings=WhisperSTTService.Settings(model=whisper_dir),
        )
        tts = PiperTTSService(
            download_dir=Path(piper_dir),
            settings=PiperTTSService.Settings(voice="en_US-joe-medium"),
        )
        context = LLMContext()
        user, assistant = LLMContextAggregatorPair(
            context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
        )
        pipeline = Pipeline(
            [transport.input(), stt, user, RuleLLM(), tts, transport.output(), assistant]
        )
        worker = PipelineWorker(pipeline, idle_timeout_secs=None)
        sessions.append(worker)
        asyncio.create_task(runner.add_workers(worker))
        return web.json_response(conn.get_answer())

    app = web.Application()
    app.router.add_post("/offer", offer)
    web_runner = web.AppRunner(app)
    await web_runner.setup()
    await web.TCPSite(web_runner, "127.0.0.1", port).start()
    print("bot ready", flush=True)
    await runner.run()


# ---------------------------------------------------------------- the humans


def question_pcm(wav: str):
    import numpy as np
    import wave

    with wave.open(wav) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32)
    n = int(len(x) * RATE / rate)
    y = np.interp(np.arange(n) * rate / RATE, np.arange(len(x)), x)
    # The WAV is the question then a pause: keep the speech (up to the last loud sample).
    loud = np.nonzero(np.abs(y) > 500)[0]
    end = int(loud[-1]) + 1 if len(loud) else n
    return y[:end].astype(np.int16)


async def humans(url: str, n: int, wav: str, out: str) -> None:
    import aiohttp
    import av
    import numpy as np
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

    question = question_pcm(wav)
    results = open(out, "a", buffering=1)

    class Mic(MediaStreamTrack):
        kind = "audio"

        def __init__(self):
            super().__init__()
            self.queue = np.zeros(0, dtype=np.int16)
            self.pts = 0
            self.t0 = None
            self.done = None  # an event set when the queued speech has been handed out

        def say(self, pcm):
            self.queue = pcm.copy()
            self.done = asyncio.Event()

        async def recv(self):
            if self.t0 is None:
                self.t0 = time.monotonic()
            wait = self.t0 + self.pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            chunk = self.queue[:FRAME]
            self.queue = self.queue[FRAME:]
            if len(chunk) < FRAME:
                chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), dtype=np.int16)])
                if self.done is not None and not self.done.is_set():
                    self.done.ended_at = time.monotonic()
                    self.done.set()
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = self.pts
            frame.time_base = fractions.Fraction(1, RATE)
            self.pts += FRAME
            return frame

    async def session(http, i):
        pc = RTCPeerConnection()
        mic = Mic()
        pc.addTrack(mic)
        loud = asyncio.Queue()

        @pc.on("track")
        def on_track(track):
            async def read():
                while True:
                    try:
                        f = await track.recv()
                    except Exception:
                        return
                    if np.abs(f.to_ndarray()).max() > 2000:
                        loud.put_nowait(time.monotonic())

            asyncio.ensure_future(read())

        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(
            f"{url}/offer",
            json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
        ) as r:
            answer = await r.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        while pc.connectionState != "connected":
            await asyncio.sleep(0.05)
        ready.append(i)
        await asyncio.sleep(0.3)
        while True:
            mic.say(question)
            await mic.done.wait()
            end = mic.done.ended_at
            while not loud.empty():
                loud.get_nowait()
            try:
                first = await asyncio.wait_for(loud.get(), 10)
                results.write(json.dumps({"t": time.time(), "ms": (first - end) * 1e3}) + "\n")
                while True:
                    await asyncio.wait_for(loud.get(), 0.6)
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(1.5)

    ready = []
    async with aiohttp.ClientSession() as http:
        tasks = []
        for i in range(n):
            tasks.append(asyncio.ensure_future(session(http, i)))
            await asyncio.sleep(0.1)
        deadline = time.time() + 120
        while len(ready) < n:
            if time.time() > deadline:
                raise SystemExit("not every session connected within 120 s")
            await asyncio.sleep(0.1)
        print("all connected", flush=True)
        await asyncio.gather(*tasks)


# ---------------------------------------------------------------- the run


def run(args) -> dict:
    port = free_port()
    me = os.path.abspath(__file__)
    out = args.json + ".latencies" if args.json else f"/tmp/pipecat-talk-{os.getpid()}.jsonl"
    if os.path.exists(out):
        os.remove(out)
    bot_p = subprocess.Popen(
        [sys.executable, me, "bot", "--port", str(port), "--whisper", args.whisper,
         "--piper", args.piper],
        stdout=subprocess.PIPE, text=True,
    )
    humans_p = None
    try:
        wait_line(bot_p, "bot ready", 120)
        humans_p = subprocess.Popen(
            [sys.executable, me, "humans", "--url", f"http://127.0.0.1:{port}",
             "--sessions", str(args.sessions), "--wav", args.wav, "--out", out],
            stdout=subprocess.PIPE, text=True,
        )
        wait_line(humans_p, "all connected", 300)
        time.sleep(args.warmup_secs)
        c0, t0 = cpu_seconds(bot_p.pid), time.time()
        time.sleep(args.secs)
        c1, t1 = cpu_seconds(bot_p.pid), time.time()
        rss = rss_mb(bot_p.pid)
    finally:
        for p in (humans_p, bot_p):
            if p is not None:
                p.kill()
                p.wait()
    lat = []
    if os.path.exists(out):
        for line in open(out):
            r = json.loads(line)
            if t0 <= r["t"] <= t1:
                lat.append(r["ms"])
    lat.sort()
    q = lambda p: lat[round((len(lat) - 1) * p)] if lat else None
    wall = t1 - t0
    per = 100 * (c1 - c0) / wall / args.sessions
    return {
        "system": "pipecat", "sessions": args.sessions, "window_s": wall,
        "bot_cpu_s": c1 - c0, "cpu_pct_per_session": per, "bot_rss_mb": rss,
        "answered": len(lat), "v2v_p50_ms": q(0.5), "v2v_p95_ms": q(0.95),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bot")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--whisper", required=True)
    b.add_argument("--piper", required=True)
    h = sub.add_parser("humans")
    h.add_argument("--url", required=True)
    h.add_argument("--sessions", type=int, required=True)
    h.add_argument("--wav", required=True)
    h.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--sessions", type=int, default=2)
    r.add_argument("--secs", type=float, default=40)
    r.add_argument("--warmup-secs", type=float, default=5)
    r.add_argument("--wav", required=True)
    r.add_argument("--whisper", required=True, help="a CTranslate2 Whisper directory with tokenizer.json")
    r.add_argument("--piper", required=True, help="a directory with en_US-joe-medium.onnx and .onnx.json")
    r.add_argument("--json")
    a = ap.parse_args()
    if a.cmd == "bot":
        asyncio.run(bot(a.port, a.whisper, a.piper))
    elif a.cmd == "humans":
        asyncio.run(humans(a.url, a.sessions, a.wav, a.out))
    else:
        for p in (a.wav, a.whisper, a.piper):
            if not os.path.exists(p):
                raise SystemExit(f"no such file or directory: {p}")
        res = run(a)
        print(json.dumps(res, indent=2))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
