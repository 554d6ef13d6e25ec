"""Agent dispatch with the reference Python SDK as the human (issue #22).

`parlor serve` with an `[agents]` rule (`call-*` -> `voice`) and a `parlor worker` process
(the basic engines: no model download). A `MeteredPeer` (metered-realtime, aiortc) joins
`call-py` with no agent-specific code: a dispatched agent joins the room, its presence entry
carries `agentJob`, and its greeting reaches the human as audio. When the human leaves, the
worker's agent is cancelled after the grace.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path

from conftest import WAIT, build_config, parlor_bin
from metered_realtime import AudioSource, PeerJoined, Track
from test_webrtc import _collect_audio, make_peer  # noqa: F401

WORKER_SECRET = "ws_test_py_0123456789abcdef"
AGENTS = f"""
[agents]
worker_secret = "{WORKER_SECRET}"

[[agents.rules]]
channels = ["call-*"]
agent = "voice"
grace_secs = 1
"""


class WorkerProc:
    """A `parlor worker` process; its stdout lines are collected by a thread."""

    def __init__(self, workdir: Path, url: str) -> None:
        self.lines: list[str] = []
        self._cv = threading.Condition()
        env = dict(os.environ, PARLOR_WORKER_SECRET=WORKER_SECRET, PARLOR_LOG="info")
        self.stderr = open(workdir / "worker.stderr.log", "wb")
        self.proc = subprocess.Popen(
            [parlor_bin(), "worker", "--server", url, "--engines", "basic",
             "--greeting", "Hello from the worker."],
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL, env=env)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cv:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._cv.notify_all()

    async def wait_line(self, needle: str) -> str:
        def wait() -> str:
            with self._cv:
                ok = self._cv.wait_for(lambda: any(needle in l for l in self.lines), WAIT)
                assert ok, f"worker: no line with {needle!r} in {self.lines}"
                return next(l for l in self.lines if needle in l)
        return await asyncio.to_thread(wait)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


async def _pump_silence(src: AudioSource) -> None:
    chunk = bytes(960 * 2)
    while True:
        await src.push(chunk)


async def test_a_reference_sdk_human_in_a_call_room_gets_a_dispatched_agent(
        parlor_factory, make_peer, tmp_path):
    server = parlor_factory(build_config(extra=AGENTS))
    worker = WorkerProc(tmp_path, server.url)
    try:
        await worker.wait_line("registered as worker")
        h = make_peer(server.url, "human")
        mic = AudioSource(input_rate=48_000, input_layout="mono", max_buffered_seconds=0.3)
        h.sources.append(mic)
        h.peer.add_track(mic, None, {"role": "mic"})
        h.tasks.append(asyncio.create_task(_pump_silence(mic)))
        await asyncio.wait_for(h.peer.join("call-py"), WAIT)

        joined = await h.rec.wait_for(PeerJoined, what="(the dispatched agent)")
        assert (joined.peer.metadata or {}).get("agentJob", "").startswith("j_"), \
            f"the agent's presence metadata names its job: {joined.peer.metadata}"
        await worker.wait_line("agent voice for dev/call-py")
        tr = await h.per_remote[joined.peer.id].wait_for(
            Track, lambda e: e.track.kind == "audio", what="(the agent's voice)")
        frames, peak = await asyncio.wait_for(_collect_audio(tr.track, 10, 2000), WAIT)
        assert peak >= 2000, (frames, peak)

        # The human leaves: after the 1 s grace the worker is told, and its agent leaves.
        await h.peer.close()
        await worker.wait_line("cancelled")
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, f"worker exit {worker.proc.returncode}"
