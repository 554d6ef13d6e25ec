"""Cluster mode (issue #7): `parlor serve` nodes sharing channels through a real
nats-server (Debian package, started here), with the real Python SDK connected to
different nodes: presence, broadcasts, directs, WebRTC, and a node killed mid-session.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from conftest import WAIT, Direct, Message, Presence, build_config, connect, free_port, start_daemon
from test_reconnect import FAST_RECONNECT
from test_webrtc import _add_sine_source, _collect_audio, make_peer  # noqa: F401 (fixture)
from metered_realtime import Connected, Data, PeerJoined, Track

HEARTBEAT_MS = 250
NODE_TIMEOUT_MS = 1500


def _nats_bin() -> str:
    for p in ("/usr/sbin/nats-server", shutil.which("nats-server")):
        if p and Path(p).exists():
            return p
    raise RuntimeError("nats-server not found (Debian package nats-server; "
                       "scripts/system-deps.sh installs it)")


@pytest.fixture
def nats_url():
    port = free_port()
    proc = start_daemon([_nats_bin(), "-a", "127.0.0.1", "-p", str(port)], port, "nats-server")
    yield f"nats://127.0.0.1:{port}"
    proc.kill()
    proc.wait(timeout=10)


def cluster_config(nats_url: str) -> str:
    return build_config(extra=f"""
[cluster]
nats_url = "{nats_url}"
name = "conformance"
heartbeat_ms = {HEARTBEAT_MS}
node_timeout_ms = {NODE_TIMEOUT_MS}
""")


def synced_nodes(srv) -> int:
    status, body = srv.http_request("GET", "/metrics", auth=None)
    assert status == 200
    for line in body.splitlines():
        if line.startswith("parlor_cluster_nodes "):
            return int(float(line.split()[1]))
    return 0


async def wait_synced(nodes) -> None:
    deadline = time.monotonic() + WAIT
    for n in nodes:
        while synced_nodes(n) != len(nodes) - 1:
            assert time.monotonic() < deadline, f"{n.name} never synced"
            await asyncio.sleep(0.05)


async def start_nodes(parlor_factory, nats_url: str, n: int):
    nodes = [parlor_factory(cluster_config(nats_url), name=f"node{i}") for i in range(n)]
    await wait_synced(nodes)
    return nodes


async def roster(c, channel: str, want: set[str]) -> None:
    """Wait until c's presence for `channel` (snapshot + deltas) is exactly `want`."""
    deadline = time.monotonic() + WAIT
    while True:
        seen: set[str] = set()
        for ev in c.rec.of(Presence):
            if ev.channel == channel:
                seen |= {p.peer_id for p in ev.joined}
                seen -= {p.peer_id for p in ev.left}
        if seen == want:
            return
        assert time.monotonic() < deadline, f"{c.rec.name}: roster {seen} != {want}"
        await asyncio.sleep(0.02)


async def test_clients_on_three_nodes_share_presence_broadcasts_and_directs(parlor_factory,
                                                                             make_client,
                                                                             nats_url):
    nodes = await start_nodes(parlor_factory, nats_url, 3)
    ch = "room-cluster"
    a, b, c = [await connect(make_client, n.url, name=f"c{i}") for i, n in enumerate(nodes)]
    for cl in (a, b, c):
        await cl.sc.subscribe(ch)
    ids = {a.peer_id, b.peer_id, c.peer_id}
    assert len(ids) == 3, "peer ids are unique across the cluster"
    for cl in (a, b, c):
        await roster(cl, ch, ids - {cl.peer_id})

    for i in range(10):
        await b.sc.publish(ch, {"i": i})
    for cl in (a, c):
        got = []
        deadline = time.monotonic() + WAIT
        while len(got) < 10:
            got = [e.data["i"] for e in cl.rec.of(Message) if e.sender_peer_id == b.peer_id]
            assert time.monotonic() < deadline, f"{cl.rec.name} got {got}"
            await asyncio.sleep(0.02)
        assert got == list(range(10)), "every broadcast once, in order"

    await a.sc.send(c.peer_id, {"hello": "from node0"})
    d = await c.rec.wait_for(Direct, lambda e: e.sender_peer_id == a.peer_id)
    assert d.data == {"hello": "from node0"}

    # Leaving on one node is seen on the others.
    await c.sc.unsubscribe(ch)
    for cl in (a, b):
        await roster(cl, ch, ids - {cl.peer_id, c.peer_id})


async def test_webrtc_between_peers_on_different_nodes(parlor_factory, make_peer, nats_url):
    nodes = await start_nodes(parlor_factory, nats_url, 2)
    a = make_peer(nodes[0].url, "a")
    b = make_peer(nodes[1].url, "b")
    _add_sine_source(a, 440)
    _add_sine_source(b, 660)
    await asyncio.wait_for(a.peer.join("room-rtc-cluster"), WAIT)
    await asyncio.wait_for(b.peer.join("room-rtc-cluster"), WAIT)
    ra = await a.remote()
    rb = await b.remote()
    assert ra.id == b.peer.peer_id and rb.id == a.peer.peer_id
    assert ra.polite != rb.polite, "exactly one side is polite"
    for h in (a, b):
        tr = await h.remote_rec.wait_for(Track, lambda e: e.track.kind == "audio",
                                         what="(remote audio track across nodes)")
        frames, peak = await asyncio.wait_for(_collect_audio(tr.track), WAIT)
        assert frames >= 50 and peak >= 1000, (h.name, frames, peak)
    await a.peer.send({"kind": "broadcast-across"})
    got = await b.rec.wait_for(Data, lambda e: e.kind == "broadcast")
    assert got.data == {"kind": "broadcast-across"}
    await b.peer.send_to(a.peer.peer_id, {"kind": "direct-across"})
    got = await a.rec.wait_for(Data, lambda e: e.kind == "direct")
    assert got.data == {"kind": "direct-across"}


async def test_a_killed_node_leaves_presence_and_its_clients_come_back(parlor_factory,
                                                                       make_client, nats_url):
    nodes = await start_nodes(parlor_factory, nats_url, 2)
    ch = "room-kill"
    a = await connect(make_client, nodes[0].url, name="a")
    b = await connect(make_client, nodes[1].url, name="b", reconnect=FAST_RECONNECT)
    await a.sc.subscribe(ch)
    await b.sc.subscribe(ch)
    old_b = b.peer_id
    await roster(a, ch, {old_b})

    port = nodes[1].port
    t0 = time.monotonic()
    nodes[1].kill()  # SIGKILL: no goodbye, no `left` from the node itself
    await a.rec.wait_for(Presence, lambda e: e.channel == ch and
                         old_b in [p.peer_id for p in e.left],
                         what="(left for the peers of the dead node)")
    took = time.monotonic() - t0
    print(f"dead node's peer left after {took:.2f} s (node_timeout_ms={NODE_TIMEOUT_MS})")

    # The node restarts on its port; b reconnects there, replays its subscription, and the
    # rest of the cluster sees the new session.
    restarted = parlor_factory(cluster_config(nats_url), port=port, name="node1-again")
    await wait_synced([nodes[0], restarted])
    conn = await b.rec.wait_for(Connected, lambda e: e.is_reconnect,
                                what="(b reconnects to the restarted node)")
    assert conn.peer_id != old_b
    await roster(a, ch, {conn.peer_id})
    await a.sc.publish(ch, "after-restart")
    got = await b.rec.wait_for(Message, lambda e: e.data == "after-restart")
    assert got.sender_peer_id == a.peer_id
