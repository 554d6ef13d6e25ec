"""Checks `parlor bench network`'s port of aiortc's audio jitter buffer against aiortc itself.

    parlor bench network --no-stt --trace-out /tmp/trace.json
    tests/conformance/.venv/bin/python bench/aiortc_jitter_check.py /tmp/trace.json

For each link it feeds aiortc's JitterBuffer(capacity=16, prefetch=4) (as RTCRtpReceiver
builds it for audio) the packets in the order the simulated link delivered them, and compares
the frames it lets out with what the port let out.
"""
import json
import sys

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

traces = json.load(open(sys.argv[1]))
bad = 0
for t in traces:
    jb = JitterBuffer(capacity=16, prefetch=4)
    out = []
    for seq in t["arrivals"]:
        p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=(seq * 960) % (1 << 32))
        p._data = b"x"
        _, frame = jb.add(p)
        if frame is not None:
            out.append(frame.timestamp // 960)
    same = out == t["released"]
    bad += not same
    print(f"{t['link']:<28} aiortc let out {len(out):5} of {len(t['arrivals']):5}, port {len(t['released']):5}: {'same' if same else 'DIFFERENT'}")
sys.exit(1 if bad else 0)
