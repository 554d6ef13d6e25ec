// Server-initiated closes seen by the REAL JS SignallingClient (Node 20 + `ws`):
// 4011 rate limit -> reconnect + subscription replay; SIGTERM -> going_away + 1001 ->
// reconnect to a restarted server on the same port (spec §1.6.7, §1.8.4, §1.12).
import { describe, it, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { SignallingClient } from "@metered-ca/realtime";
import { startParlor, configWithLimits, withTimeout, Recorder, DEV_KEY } from "../lib/parlor.mjs";

const EVENTS = ["connected", "disconnected", "message", "presence", "server-error", "going-away", "state-change"];
const FAST = { initialDelayMs: 200, multiplier: 1.5, maxDelayMs: 1000, jitterRatio: 0 };

let cleanup = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) { try { await f(); } catch { /* ignore */ } }
  cleanup = [];
});

function client(url, name, opts = {}) {
  const c = new SignallingClient({ url, apiKey: DEV_KEY, webSocketFactory: (u) => new WebSocket(u), ...opts });
  const rec = new Recorder(name).attach(c, EVENTS);
  cleanup.push(() => withTimeout(c.close(), "close", 5000));
  return { c, rec, get peerId() { return rec.of("connected").at(-1)?.peerId; } };
}

/** Predicate: was payload `p` recorded after `payload`? (for "after this event" waits) */
function after(rec, payload) {
  const i = rec.events.findIndex((e) => e.payload === payload);
  return (p) => rec.events.findIndex((e) => e.payload === p) > i;
}

describe("JS SignallingClient reconnects after server-side closes", () => {
  it("4011 (rate limit): reconnect, replay subscriptions, fresh bucket", async () => {
    const srv = await startParlor({ config: configWithLimits({ rate_per_sec: 2, rate_burst: 5 }) });
    cleanup.push(() => srv.stop());
    const ch = "room-rate";
    const a = client(srv.url, "a", { reconnect: FAST });
    const b = client(srv.url, "b");
    await withTimeout(a.c.connect(), "a connect");
    await withTimeout(b.c.connect(), "b connect");
    await a.c.subscribe(ch);
    await b.c.subscribe(ch);
    const results = await Promise.allSettled([...Array(40).keys()].map((i) => a.c.publish(ch, i)));
    assert.ok(results.some((r) => r.status === "rejected"), "flood was never cut off");
    const dis = await a.rec.waitFor("disconnected", () => true, "(close after exceeding the rate)");
    assert.equal(dis.code, 4011, JSON.stringify(dis));
    assert.equal(dis.willReconnect, true);
    const re = await a.rec.waitFor("connected", (e) => e.isReconnect, "(reconnect)");
    const isAfter = after(a.rec, re);
    const snap = await a.rec.waitFor("presence", (p) => p.channel === ch && isAfter(p), "(snapshot for the replayed subscribe)");
    assert.ok(snap.joined.some((p) => p.peerId === b.peerId), JSON.stringify(snap));
    await b.c.publish(ch, "after-reconnect");
    const m = await a.rec.waitFor("message", (e) => e.data === "after-reconnect");
    assert.equal(m.from, b.peerId);
    await withTimeout(a.c.publish(ch, "fresh bucket"), "publish on the new connection");
  });

  it("SIGTERM: going_away, close 1001, reconnect to a restarted server", async () => {
    const srv = await startParlor();
    cleanup.push(() => srv.stop());
    const ch = "room-deploy";
    const a = client(srv.url, "a", { reconnect: FAST });
    await withTimeout(a.c.connect(), "connect");
    await a.c.subscribe(ch);
    await a.rec.waitFor("presence", (p) => p.channel === ch);
    const code = await withTimeout(srv.terminate(), "parlor exit after SIGTERM");
    assert.equal(code, 0, "parlor exits cleanly on SIGTERM");
    const ga = await a.rec.waitFor("going-away", () => true, "(going_away frame)");
    assert.ok(ga.retryAfterMs > 0);
    const dis = await a.rec.waitFor("disconnected", () => true, "(close after going_away)");
    assert.equal(dis.code, 1001);
    assert.equal(dis.willReconnect, true);
    const idx = (type) => a.rec.events.findIndex((e) => e.type === type);
    assert.ok(idx("going-away") < idx("disconnected"), "going_away precedes the close");

    const srv2 = await startParlor({ listenPort: srv.port });
    cleanup.push(() => srv2.stop());
    const re = await a.rec.waitFor("connected", (e) => e.isReconnect, "(reconnect to the new server)");
    const isAfter = after(a.rec, re);
    await a.rec.waitFor("presence", (p) => p.channel === ch && isAfter(p), "(replayed subscribe snapshot)");
    const b = client(srv2.url, "b");
    await withTimeout(b.c.connect(), "b connect");
    await b.c.publish(ch, "hello again");
    assert.equal((await a.rec.waitFor("message", (e) => e.data === "hello again")).from, b.peerId);
  });
});
