"""Perceptual quality (ITU-T P.862 PESQ, wide band) of what each receiver of `parlor bench
network` decoded, against the speech that was sent.

    parlor bench network --no-stt --wav-dir /tmp/net-wav [--seed N]
    python3 -m venv /tmp/pesq-venv && /tmp/pesq-venv/bin/pip install numpy cython wheel setuptools && \\
        /tmp/pesq-venv/bin/pip install --no-build-isolation pesq==0.0.4
    /tmp/pesq-venv/bin/python bench/pesq_network.py /tmp/net-wav

PESQ takes 16 kHz audio: both files are taken down from 48 kHz by averaging three samples
after a 7.5 kHz low-pass (numpy FFT), the same for the reference and the received speech.
Recordings are first lined up with the reference (live receivers start recording before the
speech). Prints a table: link, then the score per receiver (1.0 bad … 4.64 best).
"""
import glob
import os
import re
import sys
import wave

import numpy as np
from pesq import pesq


def read(path):
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2, path
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    assert rate == 48_000, f"{path}: {rate} Hz"
    spectrum = np.fft.rfft(pcm)
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    spectrum[freqs > 7_500] = 0
    low = np.fft.irfft(spectrum, len(pcm))
    n = len(low) // 3 * 3
    return low[:n].reshape(-1, 3).mean(axis=1) / 32768.0


def align(ref, deg):
    """Shift `deg` so that its speech lines up with `ref` (the lag of the largest
    cross-correlation of 10 ms energy envelopes), then cut both to their common length: live
    recordings start at whatever time the receiver was ready."""
    hop = 160
    env = lambda x: np.sqrt(np.add.reduceat(x * x, np.arange(0, len(x), hop)))
    a, b = env(ref), env(deg)
    n = 1 << (len(a) + len(b)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    lag = int(np.argmax(xc))
    if lag > n // 2:
        lag -= n
    shift = lag * hop
    if shift > 0:
        deg = deg[shift:]
    elif shift < 0:
        deg = np.concatenate([np.zeros(-shift), deg])
    m = min(len(ref), len(deg))
    return ref[:m], deg[:m]


def main(folder):
    ref = read(os.path.join(folder, "reference.wav"))
    rows = {}
    receivers = []
    for path in sorted(glob.glob(os.path.join(folder, "*--*.wav"))):
        link, receiver = os.path.basename(path)[:-4].rsplit("--", 1)
        r, d = align(ref, read(path))
        try:
            score = pesq(16_000, r, d, "wb")
        except Exception as e:  # PESQ refuses audio it finds no speech in
            score = float("nan")
            print(f"{path}: {e}", file=sys.stderr)
        rows.setdefault(link, {})[receiver] = score
        if receiver not in receivers:
            receivers.append(receiver)
    print("| link | " + " | ".join(receivers) + " |")
    print("|---|" + "---|" * len(receivers))
    for link, scores in rows.items():
        cells = " | ".join(f"{scores.get(r, float('nan')):.2f}" for r in receivers)
        print(f"| {re.sub('_+', ' ', link).strip()} | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1])
