// Pub/sub conformance: the REAL @metered-ca/realtime SignallingClient (Node 20 + `ws`)
// against Parlor. Run: node --test js/
import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { SignallingClient, SignallingConnectError } from "@metered-ca/realtime";
import {
  startParlor, mintToken, jwtClaims, withTimeout, Recorder,
  DEV_KEY, KEY_ROOMS, KEY_NOPUB, KEY_SUSPENDED, KEY_ALL,
} from "../lib/parlor.mjs";

const EVENTS = ["connected", "disconnected", "message", "direct", "presence", "server-error", "going-away", "state-change"];

let server;
let clients = [];

/** A client whose socket is wrapped to record the raw inbound/outbound frames. */
function makeClient(name, opts = {}) {
  const wire = []; // { dir: "in"|"out", frame }
  const client = new SignallingClient({
    url: server.url,
    ...(opts.tokenProvider ? {} : { apiKey: opts.apiKey ?? DEV_KEY }),
    ...opts,
    webSocketFactory: (u) => {
      const ws = new WebSocket(u);
      ws.addEventListener("message", (ev) => {
        let frame;
        try { frame = JSON.parse(String(ev.data)); } catch { frame = { unparsable: String(ev.data) }; }
        wire.push({ dir: "in", frame });
      });
      const send = ws.send.bind(ws);
      ws.send = (data) => { wire.push({ dir: "out", frame: JSON.parse(data) }); return send(data); };
      return ws;
    },
  });
  const rec = new Recorder(name).attach(client, EVENTS);
  const c = { name, client, rec, wire, get peerId() { return rec.of("connected").at(-1)?.peerId; } };
  clients.push(c);
  return c;
}

const KNOWN_TYPES = new Set(["welcome", "ack", "error", "message", "direct", "presence", "going_away", "pong"]);

/** Wire-level invariants of spec §1.5/§1.6 checked on every recorded socket. */
function checkWire(c) {
  const problems = [];
  const inbound = c.wire.filter((w) => w.dir === "in").map((w) => w.frame);
  const outbound = c.wire.filter((w) => w.dir === "out").map((w) => w.frame);
  if (inbound.length && inbound[0].type !== "welcome") problems.push(`first frame is ${inbound[0].type}, not welcome`);
  const sentIds = new Set(outbound.filter((f) => f.requestId).map((f) => f.requestId));
  const replies = new Map();
  for (const f of inbound) {
    if (!f || typeof f !== "object" || !KNOWN_TYPES.has(f.type)) { problems.push(`unknown/malformed frame ${JSON.stringify(f)}`); continue; }
    if (f.type === "presence") {
      if (!Array.isArray(f.joined) || !Array.isArray(f.left)) problems.push(`presence without joined/left arrays: ${JSON.stringify(f)}`);
      const ids = [...(f.joined ?? []), ...(f.left ?? [])].map((p) => p.peerId);
      if (ids.some((id) => typeof id !== "string")) problems.push(`presence entry without string peerId: ${JSON.stringify(f)}`);
      if (new Set(f.joined?.map((p) => p.peerId)).size !== (f.joined?.length ?? 0)) problems.push(`duplicate peer in presence: ${JSON.stringify(f)}`);
    }
    if ((f.type === "message" || f.type === "direct") && !("data" in f)) problems.push(`${f.type} without data: ${JSON.stringify(f)}`);
    if (f.type === "ack" || (f.type === "error" && f.requestId !== undefined)) {
      if (!sentIds.has(f.requestId)) problems.push(`reply for a requestId never sent: ${JSON.stringify(f)}`);
      replies.set(f.requestId, (replies.get(f.requestId) ?? 0) + 1);
    }
  }
  for (const [rid, n] of replies) if (n > 1) problems.push(`requestId ${rid} answered ${n} times (must be exactly once)`);
  if (inbound.some((f) => f.type === "ack" && !f.requestId)) problems.push("ack without requestId");
  return problems;
}

async function connected(name, opts) {
  const c = makeClient(name, opts);
  await withTimeout(c.client.connect(), `${name} connect`);
  return c;
}

async function expectServerError(promise, code) {
  await assert.rejects(withTimeout(promise, `request expected to fail with ${code}`), (err) => {
    assert.equal(err.name, code, `expected err.name=${code}, got ${err.name}: ${err.message}`);
    return true;
  });
}

describe("parlor pub/sub with @metered-ca/realtime (Node)", () => {
  before(async () => { server = await startParlor(); });
  after(async () => { await server?.stop(); });
  afterEach(async () => {
    for (const c of clients) { try { await withTimeout(c.client.close(), "close", 5000); } catch { /* ignore */ } }
    const problems = clients.flatMap((c) => checkWire(c).map((p) => `[${c.name}] ${p}`));
    clients = [];
    assert.deepEqual(problems, [], "wire invariants (spec §1.5, §1.6)");
  });

  it("connects with a publishable key: welcome first, expiresAt null accepted", async () => {
    const before = Date.now();
    const a = await connected("a");
    const ev = a.rec.of("connected")[0];
    assert.equal(typeof ev.peerId, "string");
    assert.ok(ev.peerId.length > 0 && ev.peerId.length <= 128);
    assert.equal(ev.expiresAt, null);
    assert.equal(ev.maxMessageSize, 65536);
    assert.equal(ev.isReconnect, false);
    assert.equal(typeof ev.serverTime, "number");
    assert.ok(Math.abs(ev.serverTime - before) < 60_000, `serverTime in ms: ${ev.serverTime}`);
    const first = a.wire.find((w) => w.dir === "in");
    assert.equal(first.frame.type, "welcome", "welcome must be the first server frame");
    assert.ok("expiresAt" in first.frame, "welcome.expiresAt must be present (null for keys)");
    assert.equal(a.wire.filter((w) => w.dir === "in" && w.frame.type === "welcome").length, 1);
    assert.equal(a.client.state, "connected");
  });

  it("connects with a JWT: expiresAt is the exp claim", async () => {
    const tok = mintToken({ ttlSecs: 1800 });
    const a = await connected("jwt", { tokenProvider: async () => tok });
    assert.equal(a.rec.of("connected")[0].expiresAt, jwtClaims(tok).exp);
  });

  it("subscribe acks, then the presence snapshot arrives after the ack", async () => {
    const ch = "room-snap";
    const a = await connected("a");
    const b = await connected("b");
    await withTimeout(a.client.subscribe(ch), "a subscribe");
    const emptySnap = await a.rec.waitFor("presence", (p) => p.channel === ch, "(empty-room snapshot)");
    assert.deepEqual(emptySnap.joined.filter((p) => p.peerId !== a.peerId), []);
    assert.deepEqual(emptySnap.left, []);

    await withTimeout(b.client.subscribe(ch), "b subscribe");
    const snap = await b.rec.waitFor("presence", (p) => p.channel === ch, "(snapshot)");
    assert.ok(snap.joined.some((p) => p.peerId === a.peerId), JSON.stringify(snap));
    // Wire order: ack(requestId of b's subscribe) strictly before the first presence for ch.
    const sub = b.wire.find((w) => w.dir === "out" && w.frame.type === "subscribe" && w.frame.channel === ch);
    const inbound = b.wire.filter((w) => w.dir === "in").map((w) => w.frame);
    const ackIdx = inbound.findIndex((f) => f.type === "ack" && f.requestId === sub.frame.requestId);
    const presIdx = inbound.findIndex((f) => f.type === "presence" && f.channel === ch);
    assert.ok(ackIdx >= 0, "subscribe was acked");
    assert.ok(presIdx > ackIdx, `snapshot must follow the ack (§1.8.2): ${JSON.stringify(inbound)}`);

    const delta = await a.rec.waitFor("presence", (p) => p.channel === ch && p.joined.length > 0, "(joined delta)");
    assert.deepEqual(delta.joined.map((p) => p.peerId), [b.peerId]);
    assert.deepEqual(delta.left, []);

    await withTimeout(b.client.unsubscribe(ch), "b unsubscribe");
    const left = await a.rec.waitFor("presence", (p) => p.channel === ch && p.left.length > 0, "(left delta)");
    assert.deepEqual(left.left.map((p) => p.peerId), [b.peerId]);
    assert.deepEqual(left.joined, []);
  });

  it("publish -> message to subscribers (from stamped, data verbatim, null allowed)", async () => {
    const ch = "room-pub";
    const a = await connected("a");
    const b = await connected("b");
    await a.client.subscribe(ch);
    await b.client.subscribe(ch);
    const data = { text: "héllo 😀", n: 42, list: [1, null, true], nested: { k: "v" } };
    await withTimeout(a.client.publish(ch, data), "publish");
    const m = await b.rec.waitFor("message", (e) => e.channel === ch);
    assert.equal(m.from, a.peerId);
    assert.deepEqual(m.data, data);
    assert.equal(m.fromMetadata, undefined);
    await withTimeout(a.client.publish(ch, null), "publish null");
    const m2 = await b.rec.waitFor("message", (e) => e.channel === ch);
    assert.equal(m2.data, null);
  });

  it("includeSenderMetadata stamps fromMetadata from the JWT peerMetadata", async () => {
    const ch = "room-meta";
    const alice = await connected("alice", { tokenProvider: async () => mintToken({ peerMetadata: { name: "alice" } }) });
    const b = await connected("b", { tokenProvider: async () => mintToken({}) });
    await b.client.subscribe(ch, { includeSenderMetadata: true });
    await b.rec.waitFor("presence", (p) => p.channel === ch);
    await alice.client.subscribe(ch);
    const delta = await b.rec.waitFor("presence", (p) => p.channel === ch && p.joined.length > 0);
    assert.deepEqual(delta.joined[0].metadata, { name: "alice" });
    await alice.client.publish(ch, "hi");
    const m = await b.rec.waitFor("message", (e) => e.data === "hi");
    assert.deepEqual(m.fromMetadata, { name: "alice" });
  });

  it("send -> direct to one peer, in order", async () => {
    const a = await connected("a");
    const b = await connected("b");
    for (let i = 0; i < 10; i++) await withTimeout(a.client.send(b.peerId, { i }), "send");
    const got = [];
    for (let i = 0; i < 10; i++) got.push(await b.rec.waitFor("direct"));
    assert.deepEqual(got.map((d) => d.data.i), [...Array(10).keys()]);
    assert.ok(got.every((d) => d.from === a.peerId));
    assert.equal(a.rec.of("direct").length, 0);
  });

  it("errors reject with err.name = server code", async () => {
    const a = await connected("a");
    await expectServerError(a.client.subscribe("_metered/x"), "channel_reserved");
    await expectServerError(a.client.publish("_Internal/y", 1), "channel_reserved");
    await expectServerError(a.client.send("p_doesnotexist000000000", 1), "peer_not_found");
    const rooms = await connected("rooms", { apiKey: KEY_ROOMS });
    await expectServerError(rooms.client.subscribe("lobby"), "channel_not_authorized");
    await withTimeout(rooms.client.subscribe("room-ok"), "allowed subscribe");
    const nopub = await connected("nopub", { apiKey: KEY_NOPUB });
    await expectServerError(nopub.client.publish("room-x", 1), "action_not_permitted");
    const tok = mintToken({ permissions: ["subscribe"] });
    const jwtNoSend = await connected("jwt-nosend", { tokenProvider: async () => tok });
    await expectServerError(jwtNoSend.client.send(a.peerId, 1), "action_not_permitted");
    // connection survives; errors were correlated, so no uncorrelated server-error events
    await withTimeout(a.client.subscribe("room-still-alive"), "subscribe after errors");
    for (const c of [a, rooms, nopub, jwtNoSend]) assert.deepEqual(c.rec.of("server-error"), []);
  });

  it("unsubscribe is idempotent", async () => {
    const a = await connected("a");
    await withTimeout(a.client.unsubscribe("room-never"), "unsubscribe unknown");
    await a.client.subscribe("room-u");
    await withTimeout(a.client.unsubscribe("room-u"), "unsubscribe");
    await withTimeout(a.client.unsubscribe("room-u"), "unsubscribe again");
  });

  it("answers app-level ping with pong", async () => {
    const a = makeClient("pinger", { inactivityTimeoutMs: 3000, reconnect: false });
    await withTimeout(a.client.connect(), "connect");
    // heartbeat = 1 s of silence -> ping; watchdog = 3 s of silence -> close 4000
    await new Promise((r) => setTimeout(r, 7000)); // idle period is the thing under test
    const pings = a.wire.filter((w) => w.dir === "out" && w.frame.type === "ping").length;
    const pongs = a.wire.filter((w) => w.dir === "in" && w.frame.type === "pong").length;
    assert.ok(pings >= 2, `client pinged ${pings} times`);
    assert.ok(pongs >= 1, `server answered ${pongs} pongs to ${pings} pings`);
    assert.equal(a.client.state, "connected");
    assert.deepEqual(a.rec.of("disconnected"), []);
  });

  it("rejects oversized payloads client-side using welcome.maxMessageSize", async () => {
    const a = await connected("a");
    await assert.rejects(a.client.publish("room-big", "x".repeat(70_000)), (e) => e.name === "OversizedPayloadError");
    await withTimeout(a.client.publish("room-big", "x".repeat(65_000)), "publish under the cap");
    assert.equal(a.client.state, "connected");
  });

  for (const [what, opts, code] of [
    ["unknown key", { apiKey: "pk_live_nope" }, 4001],
    ["suspended account", { apiKey: KEY_SUSPENDED }, 4012],
  ]) {
    it(`connect with ${what} fails with SignallingConnectError closeCode ${code}`, async () => {
      const c = makeClient(what, { ...opts, reconnect: false });
      await assert.rejects(withTimeout(c.client.connect(), "connect"), (err) => {
        assert.ok(err instanceof SignallingConnectError, `${err.name}: ${err.message}`);
        assert.equal(err.closeCode, code);
        return true;
      });
      assert.equal(c.wire.filter((w) => w.dir === "in").length, 0, "no frames before an auth close");
    });
  }

  it("connect with an expired JWT fails with closeCode 4002", async () => {
    const tok = mintToken({ ttlSecs: -30 });
    const c = makeClient("expired", { tokenProvider: async () => tok, reconnect: false });
    await assert.rejects(withTimeout(c.client.connect(), "connect"), (err) => {
      assert.ok(err instanceof SignallingConnectError, `${err.name}: ${err.message}`);
      assert.equal(err.closeCode, 4002);
      return true;
    });
  });

  it("key and JWT peers of one account see each other", async () => {
    const ch = "room-mixed";
    const k = await connected("key", { apiKey: KEY_ALL });
    const j = await connected("jwt", { tokenProvider: async () => mintToken({}) });
    await k.client.subscribe(ch);
    await j.client.subscribe(ch);
    const snap = await j.rec.waitFor("presence", (p) => p.channel === ch);
    assert.ok(snap.joined.some((p) => p.peerId === k.peerId));
    await j.client.send(k.peerId, "hi");
    assert.equal((await k.rec.waitFor("direct")).from, j.peerId);
  });
});
