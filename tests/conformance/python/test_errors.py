"""Server errors surfaced through the Python SDK (spec §1.5, §1.10-§1.12)."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import (
    KEY_ALL,
    KEY_NOPUB,
    KEY_QUOTA,
    KEY_ROOMS,
    KEY_SUSPENDED,
    JWT_SECRET,
    KEY_TINY,
    WAIT,
    build_config,
    connect,
    craft_jwt,
    mint_token,
    parlor_bin,
)
from metered_realtime import (
    Presence,
    ServerError,
    ServerRequestError,
    SignallingClient,
    SignallingConnectError,
)
import subprocess


async def _expect_request_error(coro, code: str) -> ServerRequestError:
    with pytest.raises(ServerRequestError) as ei:
        await asyncio.wait_for(coro, WAIT)
    assert ei.value.code == code, f"expected {code}, got {ei.value.code} ({ei.value})"
    assert ei.value.request_id, "error must be correlated with the request's requestId"
    return ei.value


async def _expect_connect_error(url: str, code: int, **kwargs) -> SignallingConnectError:
    sc = SignallingClient(url=url, **kwargs)
    try:
        with pytest.raises(SignallingConnectError) as ei:
            await asyncio.wait_for(sc.connect(), WAIT)
    finally:
        await sc.close()
    assert ei.value.close_code == code, (
        f"expected close {code} after upgrade, got {ei.value.close_code} "
        f"reason={ei.value.close_reason!r} (an HTTP status here means the server refused "
        f"the upgrade instead of closing after it, §1.2)")
    assert len(ei.value.close_reason.encode()) <= 123
    return ei.value


def _tok(claims_extra: dict, ttl: int = 600) -> str:
    now = int(time.time())
    claims = {"exp": now + ttl, "iat": now}
    claims.update(claims_extra)
    return craft_jwt(claims)


def _provider(tok: str):
    async def p() -> str:
        return tok
    return p


# ---------------------------------------------------------------- request errors

async def test_channel_reserved(server, make_client):
    a = await connect(make_client, server.url)
    await _expect_request_error(a.sc.subscribe("_metered/x"), "channel_reserved")
    await _expect_request_error(a.sc.subscribe("_SYSTEM/x"), "channel_reserved")
    await _expect_request_error(a.sc.publish("_internal/y", 1), "channel_reserved")
    # `_meteredx` (no slash) is an ordinary channel.
    await a.sc.subscribe("_meteredx")
    # The connection survives request errors.
    await a.sc.subscribe("room-after-errors")
    assert a.rec.of(ServerError) == [], "correlated errors must not also surface uncorrelated"


async def test_channel_not_authorized_for_key_patterns(server, make_client):
    a = await connect(make_client, server.url, api_key=KEY_ROOMS)
    await _expect_request_error(a.sc.subscribe("lobby"), "channel_not_authorized")
    await _expect_request_error(a.sc.publish("lobby", {"x": 1}), "channel_not_authorized")
    await _expect_request_error(a.sc.subscribe("xroom-1"), "channel_not_authorized")
    await a.sc.subscribe("room-1")
    await a.sc.subscribe("room-")  # `*` matches the empty run too
    await a.sc.publish("room-1", {"ok": True})


async def test_channel_not_authorized_for_jwt_channels_claim(server, make_client):
    tok = mint_token(ttl_secs=600, channels=["room-*", "exact"])
    a = await connect(make_client, server.url, token=tok)
    await _expect_request_error(a.sc.subscribe("lobby"), "channel_not_authorized")
    await _expect_request_error(a.sc.subscribe("exactly"), "channel_not_authorized")
    await a.sc.subscribe("room-9")
    await a.sc.subscribe("exact")


async def test_peer_not_found(server, make_client):
    a = await connect(make_client, server.url)
    await _expect_request_error(a.sc.send("p_doesnotexist000000000", {"x": 1}),
                                "peer_not_found")
    b = await connect(make_client, server.url)
    gone = b.peer_id
    await b.sc.close()
    # After b's socket is gone its id must stop resolving (allow the server a moment to
    # notice the close: retry until the error appears).
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        try:
            await a.sc.send(gone, 1)
        except ServerRequestError as e:
            assert e.code == "peer_not_found", e
            break
        assert asyncio.get_running_loop().time() < deadline, \
            "send to a disconnected peer kept succeeding"
        await asyncio.sleep(0.2)


async def test_peer_not_found_across_tenants(server, make_client):
    # dev key and pk_live_all may be different tenants; a JWT for "acme" and a
    # key in "quota" certainly are.
    a = await connect(make_client, server.url, api_key=KEY_ALL)
    other = await connect(make_client, server.url, api_key=KEY_QUOTA)
    await _expect_request_error(a.sc.send(other.peer_id, 1), "peer_not_found")


async def test_action_not_permitted_for_key(server, make_client):
    a = await connect(make_client, server.url, api_key=KEY_NOPUB)
    await a.sc.subscribe("room-np")  # allowed
    await _expect_request_error(a.sc.publish("room-np", "nope"), "action_not_permitted")
    b = await connect(make_client, server.url, api_key=KEY_ALL)
    await a.sc.send(b.peer_id, "send is allowed")


async def test_action_not_permitted_for_jwt_permissions(server, make_client):
    tok = mint_token(ttl_secs=600, permissions=["subscribe", "presence"])
    a = await connect(make_client, server.url, token=tok)
    b = await connect(make_client, server.url, api_key=KEY_ALL)
    await a.sc.subscribe("room-jp")
    await _expect_request_error(a.sc.publish("room-jp", 1), "action_not_permitted")
    await _expect_request_error(a.sc.send(b.peer_id, 1), "action_not_permitted")


async def test_over_message_quota(server, make_client):
    a = await connect(make_client, server.url, api_key=KEY_QUOTA)
    b = await connect(make_client, server.url, api_key=KEY_QUOTA)
    await a.sc.publish("room-q", 1)
    await a.sc.publish("room-q", 2)
    await a.sc.send(b.peer_id, 3)  # publish + send share the quota
    await _expect_request_error(a.sc.publish("room-q", 4), "over_message_quota")
    assert a.sc.state == "connected", "quota errors do not close the socket"
    await a.sc.subscribe("room-q")  # subscribe is not metered


async def test_channel_limit_exceeded(parlor_factory, make_client):
    srv = parlor_factory(build_config(limits={"max_subscriptions_per_connection": 2}))
    a = await connect(make_client, srv.url)
    await a.sc.subscribe("room-1")
    await a.sc.subscribe("room-2")
    await a.sc.subscribe("room-2")  # re-subscribe to a held channel doesn't count
    await _expect_request_error(a.sc.subscribe("room-3"), "channel_limit_exceeded")
    await a.sc.unsubscribe("room-1")
    await a.sc.subscribe("room-3")


# ---------------------------------------------------------------- connect failures

async def test_connect_bad_key_closes_4001(server):
    await _expect_connect_error(server.url, 4001, api_key="pk_live_nope")


async def test_connect_jwt_bad_signature_closes_4001(server):
    tok = _tok({}, ttl=600)
    forged = tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB")
    await _expect_connect_error(server.url, 4001, token_provider=_provider(forged))
    wrong_secret = craft_jwt({"exp": int(time.time()) + 600}, secret="not-the-secret")
    await _expect_connect_error(server.url, 4001, token_provider=_provider(wrong_secret))
    unknown_kid = craft_jwt({"exp": int(time.time()) + 600}, kid="nokid")
    await _expect_connect_error(server.url, 4001, token_provider=_provider(unknown_kid))
    await _expect_connect_error(server.url, 4001, token_provider=_provider("not.a.jwt"))


async def test_connect_expired_jwt_closes_4002(server):
    out = subprocess.run([parlor_bin(), "token", "--secret", JWT_SECRET, "--kid", "main",
                          "--ttl-secs=-30"], capture_output=True, timeout=WAIT)
    if out.returncode == 0 and out.stdout.strip().count(b".") == 2:
        tok = out.stdout.decode().strip()
    else:  # `parlor token` refuses a negative ttl -> craft the token ourselves
        tok = _tok({}, ttl=-30)
    await _expect_connect_error(server.url, 4002, token_provider=_provider(tok))


async def test_connect_suspended_account_closes_4012(server):
    await _expect_connect_error(server.url, 4012, api_key=KEY_SUSPENDED)


async def test_connect_over_concurrent_limit_closes_4010(server, make_client):
    first = await connect(make_client, server.url, api_key=KEY_TINY, name="first")
    await _expect_connect_error(server.url, 4010, api_key=KEY_TINY)
    # The slot is released when the holder disconnects.
    await first.sc.close()
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        sc = SignallingClient(url=server.url, api_key=KEY_TINY, reconnect=False)
        try:
            await asyncio.wait_for(sc.connect(), WAIT)
            await sc.close()
            break
        except SignallingConnectError as e:
            await sc.close()
            assert e.close_code == 4010, e
            assert asyncio.get_running_loop().time() < deadline, \
                "concurrent-connection slot was never released after close"
            await asyncio.sleep(0.2)


async def test_auth_failure_sends_no_welcome_and_no_error_frame(server):
    """§1.2: reject after upgrade with a close code; no welcome, no error frame first."""
    sc = SignallingClient(url=server.url, api_key="pk_live_nope")
    seen: list = []
    sc.on(ServerError, seen.append)
    sc.on(Presence, seen.append)
    with pytest.raises(SignallingConnectError):
        await asyncio.wait_for(sc.connect(), WAIT)
    await sc.close()
    assert seen == [], f"no frames may precede an auth close: {seen}"


async def test_quota_window_resets(parlor_factory, make_client):
    extra = """
[[accounts]]
id = "quick"
message_quota = 1
quota_window_secs = 2

[[keys]]
key = "pk_live_quick"
account = "quick"
channels = ["*"]
actions = ["subscribe", "publish", "presence", "send"]
"""
    srv = parlor_factory(build_config(extra=extra))
    a = await connect(make_client, srv.url, api_key="pk_live_quick")
    await a.sc.publish("room-w", 1)
    await _expect_request_error(a.sc.publish("room-w", 2), "over_message_quota")
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        try:
            await a.sc.publish("room-w", 3)
            break
        except ServerRequestError as e:
            assert e.code == "over_message_quota", e
            assert asyncio.get_running_loop().time() < deadline, \
                "quota never recovered after quota_window_secs"
            await asyncio.sleep(0.25)


async def test_configured_max_message_size(parlor_factory, make_client):
    from metered_realtime import Connected, Disconnected, DisconnectedError, Message
    srv = parlor_factory(build_config(limits={"max_message_size": 1000}))
    a = await connect(make_client, srv.url, name="a", reconnect=False)
    b = await connect(make_client, srv.url, name="b")
    assert a.rec.of(Connected)[0].max_message_size == 1000, \
        "welcome.maxMessageSize must advertise the configured cap"
    await b.sc.subscribe("room-mms")
    ok = "x" * 998  # 1000 bytes of JSON
    await a.sc.publish("room-mms", ok)
    await b.rec.wait_for(Message, lambda e: e.data == ok)
    with pytest.raises(DisconnectedError):
        await a.sc.publish("room-mms", "x" * 1100)
    dis = await a.rec.wait_for(Disconnected)
    assert dis.code == 1009, dis
