"""Server-initiated closes: 4011 rate limit, SIGTERM (going_away + 1001), admin 4020.

Exercises the SDK's reconnect + subscription replay against Parlor (spec §1.6.7,
§1.8.4, §1.12, §4 #5, #23, #25)."""

from __future__ import annotations

import asyncio
import json

from conftest import (
    WAIT,
    build_config,
    connect,
    jwt_claims,
    mint_token,
)
from metered_realtime import (
    Connected,
    Disconnected,
    GoingAway,
    Message,
    Presence,
    ReconnectOptions,
    StateChange,
)

FAST_RECONNECT = ReconnectOptions(initial_delay=0.2, multiplier=1.5, max_delay=1.0,
                                  jitter_ratio=0.0)


async def test_rate_limit_close_4011_then_reconnect_and_replay(parlor_factory, make_client):
    srv = parlor_factory(build_config(limits={"rate_per_sec": 2, "rate_burst": 5}))
    ch = "room-rate"
    a = await connect(make_client, srv.url, name="a", reconnect=FAST_RECONNECT)
    b = await connect(make_client, srv.url, name="b")
    await a.sc.subscribe(ch)
    await b.sc.subscribe(ch)
    old_id = a.peer_id

    # Flood well past the burst; the server must close the socket with 4011.
    results = await asyncio.gather(*(a.sc.publish(ch, i) for i in range(40)),
                                   return_exceptions=True)
    assert any(isinstance(r, Exception) for r in results), "no publish was rejected"
    dis = await a.rec.wait_for(Disconnected, what="(close after exceeding the rate)")
    assert dis.code == 4011, f"expected close 4011 (OverMessageRate), got {dis}"
    assert dis.will_reconnect is True, "4011 is retryable"

    conn = await a.rec.wait_for(Connected, lambda e: e.is_reconnect,
                                what="(reconnect after 4011)")
    assert conn.peer_id
    # Replay: the SDK re-subscribes; the server answers with ack + snapshot.
    snap = await a.rec.wait_for(Presence, lambda e: e.channel == ch, after=conn,
                                what="(snapshot answering the replayed subscribe)")
    assert b.peer_id in [p.peer_id for p in snap.joined], snap
    # b saw a's old session leave.
    await b.rec.wait_for(Presence, lambda e: e.channel == ch and
                         old_id in [p.peer_id for p in e.left],
                         what="(left for a's rate-limited session)")
    await b.sc.publish(ch, "after-reconnect")
    got = await a.rec.wait_for(Message, lambda e: e.data == "after-reconnect")
    assert got.sender_peer_id == b.peer_id
    # New connection has a fresh token bucket.
    await a.sc.publish(ch, "fresh-bucket")


async def test_sigterm_going_away_1001_and_reconnect(parlor_factory, make_client):
    srv = parlor_factory(name="first")
    ch = "room-deploy"
    a = await connect(make_client, srv.url, name="a", reconnect=FAST_RECONNECT)
    await a.sc.subscribe(ch)
    await a.rec.wait_for(Presence, lambda e: e.channel == ch)
    port = srv.port

    srv.sigterm()
    ga = await a.rec.wait_for(GoingAway, what="(going_away frame before shutdown)")
    assert ga.retry_after_ms > 0
    dis = await a.rec.wait_for(Disconnected, what="(close after going_away)")
    assert dis.code == 1001, f"graceful shutdown must close with 1001: {dis}"
    assert dis.will_reconnect is True
    # going_away arrives before the close.
    idx_ga = a.rec.events.index(ga)
    idx_dis = a.rec.events.index(dis)
    assert idx_ga < idx_dis
    rc = await asyncio.get_running_loop().run_in_executor(None, srv.wait_exit, WAIT)
    assert rc is not None

    # A new server on the same port: the SDK reconnects and replays its subscription.
    srv2 = parlor_factory(port=port, name="second")
    b = await connect(make_client, srv2.url, name="b")
    conn = await a.rec.wait_for(Connected, lambda e: e.is_reconnect,
                                what="(reconnect to the restarted server)")
    assert conn.peer_id
    await a.rec.wait_for(Presence, lambda e: e.channel == ch, after=conn,
                         what="(snapshot for the replayed subscribe)")
    await b.sc.publish(ch, "hello-again")
    got = await a.rec.wait_for(Message, lambda e: e.data == "hello-again")
    assert got.sender_peer_id == b.peer_id


async def test_sigterm_server_exits(parlor_factory, make_client):
    srv = parlor_factory()
    await connect(make_client, srv.url, reconnect=False)
    srv.sigterm()
    rc = await asyncio.get_running_loop().run_in_executor(None, srv.wait_exit, WAIT)
    assert rc == 0, f"parlor should exit cleanly on SIGTERM, rc={rc}"


async def test_admin_api_lists_and_disconnects_peer(server, make_client):
    a = await connect(make_client, server.url, name="a", reconnect=FAST_RECONNECT)
    await a.sc.subscribe("room-admin")
    loop = asyncio.get_running_loop()

    status, body = await loop.run_in_executor(None, lambda: server.http_request(
        "GET", "/admin/peers", auth=None))
    assert status in (401, 403), f"admin API must require the bearer secret: {status}"
    status, body = await loop.run_in_executor(None, lambda: server.http_request(
        "GET", "/admin/peers", auth="wrong"))
    assert status in (401, 403), status

    status, body = await loop.run_in_executor(None, lambda: server.http_request(
        "GET", "/admin/peers"))
    assert status == 200, (status, body)
    json.loads(body)
    assert a.peer_id in body, body
    status, body = await loop.run_in_executor(None, lambda: server.http_request(
        "GET", "/admin/channels"))
    assert status == 200 and "room-admin" in body, (status, body)

    status, body = await loop.run_in_executor(None, lambda: server.http_request(
        "POST", f"/admin/peers/{a.peer_id}/disconnect", body=b""))
    assert 200 <= status < 300, (status, body)
    dis = await a.rec.wait_for(Disconnected)
    assert dis.code == 4020, dis
    assert dis.will_reconnect is False, "4020 is terminal"
    await a.rec.wait_for(StateChange, lambda e: e.to == "closed")

    status, body = await loop.run_in_executor(None, lambda: server.http_request(
        "POST", "/admin/peers/p_doesnotexist/disconnect", body=b""))
    assert status == 404, (status, body)


async def test_healthz_and_metrics(server):
    loop = asyncio.get_running_loop()
    status, _ = await loop.run_in_executor(None, lambda: server.http_request(
        "GET", "/healthz", auth=None))
    assert status == 200
    status, body = await loop.run_in_executor(None, lambda: server.http_request(
        "GET", "/metrics"))
    assert status == 200 and body.strip(), status


async def test_token_expiry_mid_session_closes_4002_then_refreshes(server, make_client):
    """§1.12: 4002 when the token's exp passes (at connect, or mid-session); 4002 is
    retryable and the SDK calls its token provider again on reconnect (§1.2)."""
    calls: list[str] = []

    async def provider() -> str:
        tok = mint_token(ttl_secs=3 if not calls else 600)
        calls.append(tok)
        return tok

    from metered_realtime import SignallingClient
    from conftest import Client, CapturingLogger, Recorder, SIGNALLING_EVENTS
    logger = CapturingLogger("exp")
    sc = SignallingClient(url=server.url, token_provider=provider, reconnect=FAST_RECONNECT,
                          logger=logger)
    rec = Recorder("exp")
    rec.attach(sc, SIGNALLING_EVENTS)
    try:
        await asyncio.wait_for(sc.connect(), WAIT)
        first = rec.of(Connected)[0]
        assert first.expires_at == jwt_claims(calls[0])["exp"]
        await sc.subscribe("room-exp")
        dis = await rec.wait_for(Disconnected, what="(close when the token expires)")
        assert dis.code == 4002, dis
        assert dis.will_reconnect is True
        again = await rec.wait_for(Connected, lambda e: e.is_reconnect)
        assert len(calls) >= 2
        assert again.expires_at == jwt_claims(calls[-1])["exp"]
        await rec.wait_for(Presence, lambda e: e.channel == "room-exp", after=again)
    finally:
        await sc.close()
    assert not logger.malformed()


async def test_admin_disconnect_tells_channel_members(server, make_client):
    ch = "room-kick"
    a = await connect(make_client, server.url, name="a")
    b = await connect(make_client, server.url, name="b")
    await a.sc.subscribe(ch)
    await b.sc.subscribe(ch)
    await b.rec.wait_for(Presence, lambda e: e.channel == ch)
    loop = asyncio.get_running_loop()
    status, body = await loop.run_in_executor(None, lambda: server.http_request(
        "POST", f"/admin/peers/{a.peer_id}/disconnect", body=b""))
    assert 200 <= status < 300, (status, body)
    left = await b.rec.wait_for(Presence, lambda e: e.channel == ch and e.left)
    assert [p.peer_id for p in left.left] == [a.peer_id]
    dis = await a.rec.wait_for(Disconnected)
    assert (dis.code, dis.will_reconnect) == (4020, False)
