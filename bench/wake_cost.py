#!/usr/bin/env python3
"""What one wake-up from sleep costs on this machine, in CPU charged to the process.

A real-time audio pipeline wakes every 20 ms. On an idle VM each wake-up can cost far more
CPU than the work it does (cold caches, timer exits), which `parlor bench audio` sees as a
fixed per-wake-up cost at low conversation counts. Standard library only:

    python3 bench/wake_cost.py
"""

import resource
import socket
import time


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sleep_wake(period: float, seconds: float = 1.0) -> float:
    n = max(200, int(seconds / period))
    c0 = cpu()
    for _ in range(n):
        time.sleep(period)
    return (cpu() - c0) / n * 1e6


def udp_round(pause: float, n: int) -> float:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    msg, to = b"x" * 120, b.getsockname()
    c0 = cpu()
    for _ in range(n):
        a.sendto(msg, to)
        b.recvfrom(2048)
        if pause:
            time.sleep(pause)
    return (cpu() - c0) / n * 1e6


def main() -> None:
    print("| what | CPU µs per iteration |")
    print("|---|---|")
    for period in (0.0001, 0.001, 0.004, 0.020):
        print(f"| sleep {period * 1000:g} ms, wake | {sleep_wake(period):.1f} |")
    print(f"| 120-byte UDP send + receive on loopback, back to back | {udp_round(0, 5000):.1f} |")
    print(f"| the same, with a 20 ms sleep between | {udp_round(0.020, 100):.1f} |")


if __name__ == "__main__":
    main()
