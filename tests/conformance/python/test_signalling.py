"""SignallingClient protocol paths against Parlor (spec §1.2-§1.9, §1.13-§1.14)."""

from __future__ import annotations

import asyncio

import pytest

from conftest import (
    ICE_URL,
    KEY_ALL,
    KEY_ICE,
    KEY_QUOTA,
    TURN_URL,
    WAIT,
    build_config,
    connect,
    jwt_claims,
    mint_token,
    now_ms,
)
from metered_realtime import (
    Connected,
    DisconnectedError,
    Direct,
    Disconnected,
    IceServerConfig,
    Message,
    Presence,
    ReconnectOptions,
    SubscribeOptions,
)

FAST_RECONNECT = ReconnectOptions(initial_delay=0.2, multiplier=1.5, max_delay=1.0,
                                  jitter_ratio=0.0)


def _valid_peer_id(pid: str) -> bool:
    return (isinstance(pid, str) and 0 < len(pid) <= 128 and pid.isascii()
            and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in pid))


# ---------------------------------------------------------------- welcome / Connected

async def test_connect_with_key_welcome_fields(server, make_client):
    before = now_ms()
    a = await connect(make_client, server.url, name="a")
    b = await connect(make_client, server.url, name="b")
    after = now_ms()
    ev: Connected = a.rec.of(Connected)[0]
    assert _valid_peer_id(ev.peer_id), ev
    assert ev.peer_id.startswith("p_"), f"peer ids are documented as p_...: {ev.peer_id!r}"
    assert ev.max_message_size == 65536
    assert ev.expires_at is None, "welcome.expiresAt must be null for publishable keys (§1.2)"
    assert ev.is_reconnect is False
    assert ev.ice_servers is None
    # serverTime: milliseconds since the epoch (§1.6.1 [REC]); allow generous clock slack.
    assert before - 60_000 <= ev.server_time <= after + 60_000, (ev.server_time, before)
    assert a.sc.state == "connected"
    assert b.peer_id != a.peer_id, "peer ids must be unique among live connections (§1.7.1)"


async def test_connect_with_jwt_expires_at_is_exp_claim(server, make_client):
    token = mint_token(ttl_secs=3600)
    exp = jwt_claims(token)["exp"]
    c = await connect(make_client, server.url, token=token)
    ev: Connected = c.rec.of(Connected)[0]
    assert ev.expires_at == exp, (ev, exp)
    assert _valid_peer_id(ev.peer_id)
    assert ev.max_message_size == 65536


async def test_welcome_ice_servers_from_key_metadata(server, make_client):
    c = await connect(make_client, server.url, api_key=KEY_ICE)
    ev: Connected = c.rec.of(Connected)[0]
    assert ev.ice_servers == (
        IceServerConfig(urls=ICE_URL),
        IceServerConfig(urls=[TURN_URL], username="u1", credential="c1"),
    ), ev


async def test_welcome_ice_servers_from_jwt_metadata_claim(server, make_client):
    ice = [{"urls": "turn:turn.jwt.example:443?transport=tcp", "username": "jwtuser",
            "credential": "jwtpass"}]
    token = mint_token(ttl_secs=600, metadata={"iceServers": ice, "secretish": 1})
    c = await connect(make_client, server.url, token=token)
    ev: Connected = c.rec.of(Connected)[0]
    assert ev.ice_servers == (
        IceServerConfig(urls="turn:turn.jwt.example:443?transport=tcp", username="jwtuser",
                        credential="jwtpass"),
    ), ev


# ---------------------------------------------------------------- subscribe / presence

async def test_subscribe_ack_then_empty_snapshot(server, make_client):
    a = await connect(make_client, server.url, name="a")
    await asyncio.wait_for(a.sc.subscribe("room-empty"), WAIT)
    snap = await a.rec.wait_for(Presence, lambda e: e.channel == "room-empty",
                                what="(snapshot for an empty room, §1.8.2)")
    others = [p for p in snap.joined if p.peer_id != a.peer_id]
    assert others == [] and snap.left == (), snap


async def test_presence_snapshot_and_join_leave_deltas(server, make_client):
    ch = "room-presence"
    a = await connect(make_client, server.url, name="a")
    b = await connect(make_client, server.url, name="b")
    await a.sc.subscribe(ch)
    await a.rec.wait_for(Presence, lambda e: e.channel == ch, what="(a's snapshot)")

    await b.sc.subscribe(ch)
    snap = await b.rec.wait_for(Presence, lambda e: e.channel == ch, what="(b's snapshot)")
    ids = [p.peer_id for p in snap.joined]
    assert a.peer_id in ids, f"snapshot must list existing members: {snap}"
    assert len(ids) == len(set(ids)), f"no duplicates in snapshot (§4 #11): {snap}"
    assert snap.left == ()

    delta = await a.rec.wait_for(Presence, lambda e: e.channel == ch and e.joined,
                                 what="(joined delta for b)")
    assert [p.peer_id for p in delta.joined] == [b.peer_id], delta
    assert delta.left == ()

    await b.sc.unsubscribe(ch)
    left = await a.rec.wait_for(Presence, lambda e: e.channel == ch and e.left,
                                what="(left delta after unsubscribe)")
    assert [p.peer_id for p in left.left] == [b.peer_id] and left.joined == (), left

    await b.sc.subscribe(ch)
    await a.rec.wait_for(Presence, lambda e: e.channel == ch
                         and [p.peer_id for p in e.joined] == [b.peer_id],
                         what="(joined delta after re-subscribe)")
    await b.sc.close()
    left2 = await a.rec.wait_for(Presence, lambda e: e.channel == ch and e.left,
                                 what="(left delta after socket close)")
    assert [p.peer_id for p in left2.left] == [b.peer_id], left2


async def test_presence_metadata_is_jwt_peer_metadata(server, make_client):
    ch = "room-meta"
    a = await connect(make_client, server.url, api_key=KEY_ALL, name="a")
    await a.sc.subscribe(ch)
    await a.rec.wait_for(Presence, lambda e: e.channel == ch)
    token = mint_token(ttl_secs=600, peer_metadata={"name": "bob", "avatar": 7},
                       metadata={"private": "do-not-leak"})
    b = await connect(make_client, server.url, token=token, name="b")
    await b.sc.subscribe(ch)
    delta = await a.rec.wait_for(Presence, lambda e: e.channel == ch and e.joined)
    (entry,) = delta.joined
    assert entry.peer_id == b.peer_id
    assert entry.metadata == {"name": "bob", "avatar": 7}, (
        "presence metadata must be the JWT peerMetadata claim, never the private "
        f"metadata claim: {entry}")
    snap = await b.rec.wait_for(Presence, lambda e: e.channel == ch)
    (a_entry,) = [p for p in snap.joined if p.peer_id == a.peer_id]
    assert a_entry.metadata is None, f"key-authenticated peers carry no metadata: {a_entry}"


async def test_duplicate_subscribe_is_idempotent_and_resends_snapshot(server, make_client):
    ch = "room-dup"
    a = await connect(make_client, server.url, name="a")
    b = await connect(make_client, server.url, name="b")
    await a.sc.subscribe(ch)
    await b.sc.subscribe(ch)
    await b.rec.wait_for(Presence, lambda e: e.channel == ch)
    await b.sc.subscribe(ch)  # repeat subscribe -> ack, not an error
    snap2 = await b.rec.wait_for(Presence, lambda e: e.channel == ch,
                                 what="(snapshot re-sent on duplicate subscribe, §4 #9)")
    assert a.peer_id in [p.peer_id for p in snap2.joined], snap2
    # a must not see b join twice.
    await a.sc.publish(ch, "marker")
    await a.rec.wait_for(Message, lambda e: e.data == "marker")
    joins = [e for e in a.rec.of(Presence) if e.channel == ch
             and b.peer_id in [p.peer_id for p in e.joined]]
    assert len(joins) == 1, f"duplicate subscribe must not re-announce b: {joins}"


async def test_unsubscribe_is_idempotent(server, make_client):
    a = await connect(make_client, server.url)
    await a.sc.unsubscribe("room-never-subscribed")
    await a.sc.subscribe("room-u")
    await a.sc.unsubscribe("room-u")
    await a.sc.unsubscribe("room-u")


# ---------------------------------------------------------------- publish / message

async def test_publish_delivers_message_with_echo_by_default(server, make_client):
    ch = "room-pub"
    a = await connect(make_client, server.url, name="a")
    b = await connect(make_client, server.url, name="b")
    await a.sc.subscribe(ch)
    await b.sc.subscribe(ch)
    payload = {"hello": "world", "n": 1, "nested": [1, 2.5, None, True, "é😀"],
               "big": 12345678901234567890}
    await a.sc.publish(ch, payload)
    got = await b.rec.wait_for(Message, lambda e: e.channel == ch)
    assert got.sender_peer_id == a.peer_id
    assert got.data == payload, "data must be forwarded verbatim (§1.9)"
    assert got.sender_metadata is None, "no fromMetadata unless includeSenderMetadata"
    echo = await a.rec.wait_for(Message, lambda e: e.channel == ch,
                                what="(echo to a subscribed publisher; echo_publisher=true)")
    assert echo.sender_peer_id == a.peer_id and echo.data == payload

    await a.sc.publish(ch, None)  # data: null is valid (§4 #15)
    got_null = await b.rec.wait_for(Message, lambda e: e.channel == ch)
    assert got_null.data is None


async def test_publish_without_being_subscribed(server, make_client):
    ch = "room-nosub"
    a = await connect(make_client, server.url, name="a")
    b = await connect(make_client, server.url, name="b")
    await b.sc.subscribe(ch)
    await a.sc.publish(ch, {"x": 1})
    got = await b.rec.wait_for(Message, lambda e: e.channel == ch)
    assert got.sender_peer_id == a.peer_id and got.data == {"x": 1}


async def test_echo_publisher_false(parlor_factory, make_client):
    srv = parlor_factory(build_config(echo_publisher=False))
    ch = "room-noecho"
    a = await connect(make_client, srv.url, name="a")
    b = await connect(make_client, srv.url, name="b")
    await a.sc.subscribe(ch)
    await b.sc.subscribe(ch)
    await a.sc.publish(ch, "m1")
    await b.rec.wait_for(Message, lambda e: e.data == "m1")
    await b.sc.publish(ch, "m2")
    await a.rec.wait_for(Message, lambda e: e.data == "m2")
    own = [e for e in a.rec.of(Message) if e.sender_peer_id == a.peer_id]
    assert own == [], f"echo_publisher=false: publisher must not get its own message: {own}"


async def test_include_sender_metadata(server, make_client):
    ch = "room-sm"
    alice_tok = mint_token(ttl_secs=600, peer_metadata={"name": "alice"})
    alice = await connect(make_client, server.url, token=alice_tok, name="alice")
    b = await connect(make_client, server.url, token=mint_token(ttl_secs=600), name="b")
    c = await connect(make_client, server.url, token=mint_token(ttl_secs=600), name="c")
    await b.sc.subscribe(ch, SubscribeOptions(include_sender_metadata=True))
    await c.sc.subscribe(ch)
    await alice.sc.publish(ch, "hi")
    mb = await b.rec.wait_for(Message, lambda e: e.data == "hi")
    mc = await c.rec.wait_for(Message, lambda e: e.data == "hi")
    assert mb.sender_peer_id == alice.peer_id
    assert mb.sender_metadata == {"name": "alice"}, mb
    assert mc.sender_metadata is None, f"c did not opt in: {mc}"
    # Last subscribe wins (§1.8.4): c opts in by re-subscribing.
    await c.sc.subscribe(ch, SubscribeOptions(include_sender_metadata=True))
    await alice.sc.publish(ch, "again")
    mc2 = await c.rec.wait_for(Message, lambda e: e.data == "again")
    assert mc2.sender_metadata == {"name": "alice"}, mc2
    # ... and opts out again.
    await b.sc.subscribe(ch)
    await alice.sc.publish(ch, "third")
    mb3 = await b.rec.wait_for(Message, lambda e: e.data == "third")
    assert mb3.sender_metadata is None, mb3


# ---------------------------------------------------------------- send / direct

async def test_send_direct_message(server, make_client):
    a = await connect(make_client, server.url, name="a")
    b = await connect(make_client, server.url, name="b")
    await a.sc.send(b.peer_id, {"type": "hello", "to-you": True})
    got = await b.rec.wait_for(Direct)
    assert got.sender_peer_id == a.peer_id
    assert got.data == {"type": "hello", "to-you": True}
    await a.sc.send(b.peer_id, None)
    got2 = await b.rec.wait_for(Direct)
    assert got2.data is None
    # ordering: direct frames from one sender arrive in send order (§1.15)
    for i in range(20):
        await a.sc.send(b.peer_id, i)
    seq = [(await b.rec.wait_for(Direct)).data for _ in range(20)]
    assert seq == list(range(20))
    assert a.rec.of(Direct) == [], "the sender must not get its own direct"


async def test_rtc_shaped_payload_is_opaque(server, make_client):
    a = await connect(make_client, server.url, name="a")
    b = await connect(make_client, server.url, name="b")
    sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    payload = {"type": "rtc-description", "description": {"type": "offer", "sdp": sdp}}
    await a.sc.send(b.peer_id, payload)
    got = await b.rec.wait_for(Direct)
    assert got.data == payload


# ---------------------------------------------------------------- keepalive / size

async def test_app_ping_answered_with_pong_keeps_idle_connection(server, make_client):
    # inactivity_timeout=3 -> the SDK pings after 1 s of silence and gives up (close
    # 4000) after 3 s without any inbound frame. Only the server's pong keeps it up.
    a = await connect(make_client, server.url, inactivity_timeout=3.0,
                      reconnect=False)
    await asyncio.sleep(8.0)  # > 2x the watchdog window
    assert a.rec.of(Disconnected) == [], (
        f"idle connection dropped; server must answer ping with pong (§1.13): "
        f"{a.rec.of(Disconnected)}")
    assert a.sc.state == "connected"


async def test_max_message_size_boundary_and_1009(server, make_client):
    ch = "room-size"
    a = await connect(make_client, server.url, name="a", reconnect=FAST_RECONNECT)
    b = await connect(make_client, server.url, name="b")
    await b.sc.subscribe(ch)
    # A JSON string of exactly 65536 bytes (quotes included) is at the cap -> accepted.
    at_cap = "x" * (65536 - 2)
    await a.sc.publish(ch, at_cap)
    got = await b.rec.wait_for(Message, lambda e: e.channel == ch)
    assert got.data == at_cap
    # A long channel name must not push a legal payload over the cap (§1.14 envelope).
    long_ch = "room-" + "y" * 250
    await b.sc.subscribe(long_ch)
    await a.sc.publish(long_ch, at_cap)
    await b.rec.wait_for(Message, lambda e: e.channel == long_ch)
    # Over the cap -> close 1009; the Python SignallingClient has no pre-check.
    with pytest.raises(DisconnectedError):
        await a.sc.publish(ch, "z" * 70_000)
    dis = await a.rec.wait_for(Disconnected)
    assert dis.code == 1009, dis
    assert dis.will_reconnect is True
    await a.rec.wait_for(Connected, lambda e: e.is_reconnect, what="(reconnect after 1009)")


async def test_subscribe_atomic_with_fanout(server, make_client):
    """§1.8.3: once the subscriber has its ack + snapshot, every later publish to the
    channel reaches it, and the `joined` delta reaches existing members before the
    subscriber is acked (presence happens-before anything they send in reaction)."""
    b = await connect(make_client, server.url, name="b")
    ch_base = "room-atomic"
    for i in range(25):
        ch = f"{ch_base}-{i}"
        await b.sc.subscribe(ch)
        a = await connect(make_client, server.url, name=f"a{i}")
        await a.sc.subscribe(ch)
        await a.rec.wait_for(Presence, lambda e, ch=ch: e.channel == ch)
        # b publishes right after a's subscribe resolved (a is a member now).
        await b.sc.publish(ch, f"m{i}")
        got = await a.rec.wait_for(Message, lambda e, ch=ch: e.channel == ch,
                                   what=f"(publish issued after a's subscribe ack, round {i})")
        assert got.data == f"m{i}"
        # b must have seen a join before its own echo of m{i}.
        await b.rec.wait_for(Message, lambda e, ch=ch: e.channel == ch)
        b_events = [e for e in b.rec.events if getattr(e, "channel", None) == ch]
        kinds = [k for k in (("joined" if isinstance(e, Presence) and a.peer_id in
                               [p.peer_id for p in e.joined] else
                               "echo" if isinstance(e, Message) and e.data == f"m{i}" else None)
                              for e in b_events) if k]
        assert kinds[:1] == ["joined"], (
            f"round {i}: b saw {kinds}; the joined delta must be queued to members before "
            f"the subscriber is acked (§1.8.3)")
        await a.sc.close()


async def test_snapshot_carries_peer_metadata(server, make_client):
    ch = "room-snapmeta"
    tok = mint_token(ttl_secs=600, peer_metadata={"name": "carol"})
    carol = await connect(make_client, server.url, token=tok, name="carol")
    await carol.sc.subscribe(ch)
    a = await connect(make_client, server.url, api_key=KEY_ALL, name="a")
    await a.sc.subscribe(ch)
    snap = await a.rec.wait_for(Presence, lambda e: e.channel == ch)
    (entry,) = [p for p in snap.joined if p.peer_id == carol.peer_id]
    assert entry.metadata == {"name": "carol"}, snap


async def test_direct_sender_metadata_follows_recipient_opt_in(server, make_client):
    """§1.9 [REC]: fromMetadata on a direct iff the recipient holds a subscription with
    includeSenderMetadata."""
    alice = await connect(make_client, server.url, name="alice",
                          token=mint_token(ttl_secs=600, peer_metadata={"name": "alice"}))
    b = await connect(make_client, server.url, api_key=KEY_ALL, name="b")
    c = await connect(make_client, server.url, api_key=KEY_ALL, name="c")
    await b.sc.subscribe("room-dm", SubscribeOptions(include_sender_metadata=True))
    await alice.sc.send(b.peer_id, "to-b")
    await alice.sc.send(c.peer_id, "to-c")
    db = await b.rec.wait_for(Direct)
    dc = await c.rec.wait_for(Direct)
    assert db.sender_metadata == {"name": "alice"}, db
    assert dc.sender_metadata is None, dc


async def test_unicode_channel_names(server, make_client):
    # The Python SDK sends ensure_ascii JSON (\\u escapes, surrogate pairs); the server
    # must decode them so the channel is the same as raw UTF-8 (§1.1).
    ch = "room-é😀"
    a = await connect(make_client, server.url, name="a")
    b = await connect(make_client, server.url, name="b")
    await b.sc.subscribe(ch)
    await a.sc.publish(ch, "uni")
    got = await b.rec.wait_for(Message, lambda e: e.data == "uni")
    assert got.channel == ch
    # 256 astral code points = 512 UTF-16 units: within the Python client's 256 cap;
    # the spec recommends counting Unicode scalar values (§1.10).
    long_astral = "😀" * 256
    await b.sc.subscribe(long_astral)
    await a.sc.publish(long_astral, "astral")
    got2 = await b.rec.wait_for(Message, lambda e: e.data == "astral")
    assert got2.channel == long_astral


async def test_tenant_isolation(server, make_client):
    ch = "room-iso"
    acme = await connect(make_client, server.url, api_key=KEY_ALL, name="acme")
    other = await connect(make_client, server.url, api_key=KEY_QUOTA, name="other")
    await acme.sc.subscribe(ch)
    await other.sc.subscribe(ch)
    snap = await other.rec.wait_for(Presence, lambda e: e.channel == ch)
    assert acme.peer_id not in [p.peer_id for p in snap.joined], \
        f"presence must not cross tenants: {snap}"
    await acme.sc.publish(ch, "acme-only")
    await other.sc.publish(ch, "other-echo")
    await other.rec.wait_for(Message, lambda e: e.data == "other-echo")
    leaked = [e for e in other.rec.of(Message) if e.data == "acme-only"]
    assert leaked == [], "a publish must not reach another tenant's subscribers"
    assert not [e for e in acme.rec.of(Presence) if e.channel == ch and
                other.peer_id in [p.peer_id for p in e.joined]]
