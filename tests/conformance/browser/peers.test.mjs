// Browser conformance: two Chromium pages run the REAL @metered-ca/realtime MeteredPeer
// (its ESM bundle served straight from node_modules) against Parlor. One page opens a
// data channel at `peer-joined`; messages must flow both ways and, with the fake
// microphone, audio RTP must arrive on both sides. Run: node --test browser/
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { launchChromium, poll, startStatic } from "../lib/browser.mjs";
import { startCluster, startNats, startParlor, withTimeout, CONFORMANCE_DIR, DEV_KEY, WAIT_MS } from "../lib/parlor.mjs";

const OUT_DIR = path.join(CONFORMANCE_DIR, "out");
const DEBUG = process.env.PARLOR_BROWSER_DEBUG === "1";

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>parlor conformance peer</title>
<style>body{font:14px monospace;margin:12px} h1{font-size:18px} .ok{color:#080} .bad{color:#b00}</style>
</head><body>
<h1 id="title">parlor conformance peer</h1>
<div id="status">loading SDK…</div>
<pre id="log"></pre>
<script type="module">
import { MeteredPeer, ConsoleLogger } from "/sdk/index.mjs";
const logEl = document.getElementById("log");
const statusEl = document.getElementById("status");
const log = (m) => { logEl.textContent += new Date().toISOString().slice(11, 23) + " " + m + "\\n"; };
window.state = { sdkLoaded: true, errors: [], negotiationErrors: [], received: [], sent: [], tracks: [], states: [], dcOpen: false };
statusEl.textContent = "SDK loaded";
window.run = async ({ url, apiKey, room, dcRole, dcWhen, name, debug }) => {
  const st = window.state;
  st.name = name;
  document.getElementById("title").textContent = "peer " + name + " — the " + dcRole + " side opens the data channel " + dcWhen;
  let createDc = false;
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  st.localTrackIds = stream.getAudioTracks().map((t) => t.id);
  // Count SDP exchanged over the signalling socket (and log raw frames when debugging).
  st.sdp = { offersSent: 0, answersSent: 0, offersReceived: 0, answersReceived: 0 };
  const count = (dir, d) => {
    if (debug) console.log("[wire " + dir + "] " + String(d).slice(0, 300));
    // A compact trace of the signalling frames (kept in memory: no timing change), dumped on failure.
    const k = /"type":"(rtc-description|rtc-ice|ack|direct|send|presence|subscribe)"/.exec(String(d));
    const sub = /"description":\{"type":"(offer|answer)"/.exec(String(d)) || /"candidate":(null|\{)/.exec(String(d));
    st.wire = st.wire || [];
    if (k) st.wire.push(Math.round(performance.now()) + " " + dir + " " + k[1] + (sub ? ":" + sub[1] : ""));
    const m = /"type":"rtc-description","description":\{"type":"(offer|answer)"/.exec(String(d));
    if (m) st.sdp[m[1] + "s" + (dir === "out" ? "Sent" : "Received")]++;
  };
  const peer = new MeteredPeer({ apiKey, url, ...(debug ? { logger: ConsoleLogger } : {}),
    webSocketFactory: (u) => { const ws = new WebSocket(u); ws.addEventListener("message", (e) => count("in", e.data));
      const send = ws.send.bind(ws); ws.send = (d) => { count("out", d); send(d); }; return ws; } });
  window.peer = peer;
  peer.addStream(stream, { role: "mic", label: "fake mic " + name });
  peer.on("error", ({ err }) => { st.errors.push("peer error " + err.name + ": " + err.message); log("ERROR " + err.name); });
  peer.on("peer-joined", ({ peer: remote }) => {
    window.remote = remote;
    st.remoteId = remote.id;
    st.polite = remote.polite;
    log("peer-joined " + remote.id + " polite=" + remote.polite);
    remote.on("negotiation-error", ({ err }) => { st.negotiationErrors.push("negotiation-error " + err.name + ": " + err.message); log("negotiation-error " + err.message); });
    remote.on("state-change", ({ to }) => { st.states.push(to); log("pc state " + to); });
    remote.on("track", ({ track, metadata }) => {
      st.tracks.push({ kind: track.kind, id: track.id, metadata: metadata ?? null });
      log("track " + track.kind + " " + JSON.stringify(metadata ?? null));
      const el = document.createElement("audio");
      el.autoplay = true;
      el.srcObject = new MediaStream([track]);
      document.body.appendChild(el);
    });
    const wire = (ch) => {
      window.dc = ch;
      ch.addEventListener("close", () => log("data channel closed"));
      const opened = () => {
        if (st.dcOpen) return;
        st.dcOpen = true;
        log("data channel open: " + ch.label);
        if (createDc) { const m = "hello from " + name; ch.send(m); st.sent.push(m); }
      };
      ch.addEventListener("open", opened);
      if (ch.readyState === "open") opened();
      ch.addEventListener("message", (e) => {
        st.received.push(String(e.data));
        log("dc message: " + e.data);
        if (!createDc) { const m = "reply from " + name + " to: " + e.data; ch.send(m); st.sent.push(m); }
      });
    };
    createDc = (dcRole === "polite") === remote.polite;
    st.role = createDc ? "creator" : "answerer";
    const create = () => { if (st.created) return; st.created = true; log("createDataChannel (pc state " + remote.state + ")"); wire(remote.pc.createDataChannel("chat")); };
    if (createDc && dcWhen === "at-peer-joined") create();
    if (createDc && dcWhen === "after-connected") remote.on("state-change", ({ to }) => { if (to === "connected") create(); });
    remote.on("data-channel", ({ channel }) => wire(channel));
  });
  await peer.join(room);
  st.peerId = peer.peerId;
  st.joined = true;
  statusEl.textContent = "joined " + room + " as " + peer.peerId;
  log("joined as " + peer.peerId);
};
window.dcState = () => (window.dc ? window.dc.readyState : "none");
window.inboundAudio = async () => {
  if (!window.remote) return null;
  const stats = await window.remote.pc.getStats();
  let packets = 0, bytes = 0;
  stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio") { packets += r.packetsReceived || 0; bytes += r.bytesReceived || 0; } });
  document.getElementById("status").textContent = "joined as " + window.state.peerId + "; inbound audio RTP packets: " + packets + " (" + bytes + " bytes)";
  return { packets, bytes };
};
</script></body></html>`;



describe("MeteredPeer in Chromium via Parlor", () => {
  let parlor, stat, browser, nats, cluster;

  before(async () => {
    mkdirSync(OUT_DIR, { recursive: true });
    parlor = await startParlor();
    stat = await startStatic(PAGE);
    browser = await launchChromium();
    // Cluster mode (issue #7): two nodes sharing channels through nats-server.
    nats = await startNats();
    cluster = await startCluster(nats.url, 2);
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await new Promise((r) => (stat ? stat.close(() => r()) : r()));
    await parlor?.stop();
    for (const node of cluster ?? []) await node.stop();
    await nats?.stop();
  });

  // One run: pages A then B join `room`; the side whose politeness is `dcRole` opens the
  // data channel (`dcWhen`: at peer-joined, or once its connection reports connected).
  // `urls`: the server each page connects to (default: both on the single server).
  async function runPair(t, { room, dcRole, dcWhen, shot, urls }) {
    const origin = `http://127.0.0.1:${stat.address().port}`;
    const context = await browser.newContext({ permissions: ["microphone"] });
    const pages = {};
    const consoleLines = [];
    const dump = async () => {
      const s = {};
      for (const [n, p] of Object.entries(pages)) {
        s[n] = await p.evaluate(() => ({ ...window.state, dc: window.dcState() })).catch((e) => String(e));
      }
      return JSON.stringify(s) + "\nconsole (tail):\n" + consoleLines.slice(DEBUG ? -400 : -40).join("\n").slice(-8000);
    };
    try {
      for (const name of ["A", "B"]) {
        const page = await context.newPage();
        page.on("console", (m) => consoleLines.push(`[${name}] ${m.type()}: ${m.text()}`));
        page.on("pageerror", (e) => consoleLines.push(`[${name}] pageerror: ${e.message}`));
        await page.goto(origin + "/");
        await page.waitForFunction(() => window.state && window.state.sdkLoaded, null, { timeout: WAIT_MS });
        pages[name] = page;
      }
      const opts = { apiKey: DEV_KEY, room, dcRole, dcWhen, debug: DEBUG };
      const [urlA, urlB] = urls ?? [parlor.url, parlor.url];
      await withTimeout(pages.A.evaluate((o) => window.run(o), { ...opts, url: urlA, name: "A" }), "A join");
      await withTimeout(pages.B.evaluate((o) => window.run(o), { ...opts, url: urlB, name: "B" }), "B join");
      await pages.A.waitForFunction(() => window.state.role, null, { timeout: WAIT_MS });
      await pages.B.waitForFunction(() => window.state.role, null, { timeout: WAIT_MS });
      const st = { A: await pages.A.evaluate(() => window.state), B: await pages.B.evaluate(() => window.state) };
      assert.ok(st.A.peerId && st.B.peerId && st.A.peerId !== st.B.peerId);
      const creator = st.A.role === "creator" ? "A" : "B";
      const answerer = creator === "A" ? "B" : "A";
      assert.equal(st[answerer].role, "answerer", JSON.stringify(st));
      t.diagnostic(`A=${st.A.peerId} B=${st.B.peerId}; creator=${creator} (${dcRole}, ${dcWhen})`);

      for (const name of [creator, answerer]) {
        await pages[name].waitForFunction(() => window.state.dcOpen && window.state.received.length > 0, null, { timeout: WAIT_MS });
      }
      const fin = { A: await pages.A.evaluate(() => window.state), B: await pages.B.evaluate(() => window.state) };
      assert.deepEqual(fin[answerer].received, [`hello from ${creator}`]);
      assert.deepEqual(fin[creator].received, [`reply from ${answerer} to: hello from ${creator}`]);

      for (const name of ["A", "B"]) {
        const a = await poll(() => pages[name].evaluate(() => window.inboundAudio()), (x) => x && x.packets > 0, `${name} inbound audio RTP`);
        t.diagnostic(`${name} inbound-rtp audio packetsReceived=${a.packets} bytes=${a.bytes}`);
        const tracks = await pages[name].evaluate(() => window.state.tracks);
        assert.ok(tracks.some((tr) => tr.kind === "audio"), `${name}: remote audio track event: ${JSON.stringify(tracks)}`);
        // Not asserted: JS 1.2.0 looks track metadata up by track.id only, and Chromium
        // gives remote tracks fresh ids, so `metadata` is null here (SDK limitation; the
        // __meteredTrackMeta direct frames are relayed before the offer, see the console log).
        t.diagnostic(`${name} remote tracks: ${JSON.stringify(tracks)}`);
        // MeteredPeer `error` events are fatal; `negotiation-error` is documented as usually
        // transient (the JS SDK can lose a glare race: setLocalDescription in have-remote-offer).
        assert.deepEqual(await pages[name].evaluate(() => window.state.errors), [], `${name} fatal errors`);
        const ne = await pages[name].evaluate(() => window.state.negotiationErrors);
        if (ne.length) t.diagnostic(`${name} transient negotiation-errors: ${JSON.stringify(ne)}`);
      }
    } catch (e) {
      e.message += "\n" + await dump();
      throw e;
    } finally {
      writeFileSync(path.join(OUT_DIR, `${shot}-console.log`), consoleLines.join("\n") + "\n");
      for (const [name, page] of Object.entries(pages)) {
        await page.screenshot({ path: path.join(OUT_DIR, `${shot}-${name}.png`), fullPage: true }).catch(() => {});
      }
      for (const page of Object.values(pages)) await page.evaluate(() => window.peer?.close()).catch(() => {});
      await context.close().catch(() => {});
    }
  }

  // Glare at peer-joined can leave the polite page's ICE without a single local candidate
  // when the impolite offer lands while its own createOffer is in flight (FINDINGS.md D:
  // JS SDK 1.2.0 + Chromium; Parlor relays every frame in order). Both pages send audio,
  // so every case below can meet it, whoever opens the channel. Each case tries up to
  // three rooms; each failed attempt is reported as a diagnostic with its signalling trace.
  async function runPairRetrying(t, opts) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await runPair(t, { ...opts, room: `${opts.room}-${attempt}` });
      } catch (e) {
        if (attempt === 3) throw e;
        t.diagnostic(`attempt ${attempt} failed (FINDINGS.md D): ${String(e.message).slice(0, 3000)}`);
      }
    }
  }

  it("impolite side opens a data channel at peer-joined: messages both ways + audio RTP both ways", (t) =>
    runPairRetrying(t, { room: "room-browser-1", dcRole: "impolite", dcWhen: "at-peer-joined", shot: "browser-impolite-at-peer-joined" }));

  it("polite side opens a data channel once connected: messages both ways + audio RTP both ways", (t) =>
    runPairRetrying(t, { room: "room-browser-2", dcRole: "polite", dcWhen: "after-connected", shot: "browser-polite-after-connected" }));

  it("cluster: pages on two nodes negotiate through NATS: messages both ways + audio RTP both ways", (t) =>
    runPairRetrying(t, { room: "room-browser-cluster", dcRole: "impolite", dcWhen: "at-peer-joined", shot: "browser-cluster",
      urls: [cluster[0].url, cluster[1].url] }));

  // Both pages send audio, so both fire negotiationneeded at peer-joined and their offers
  // cross (glare). The polite page's first offer carried m=application; it is rolled back
  // to accept the impolite audio-only offer, and afterwards Chromium's createOffer never
  // re-adds m=application while negotiationneeded keeps firing: an endless offer/answer
  // loop (offer versions climb into the hundreds) and the channel never opens. It is
  // timing-dependent (when the polite page instead loses the glare race with a transient
  // negotiation-error, its channel rides a later offer and the case passes), hence `todo`.
  // Parlor relays every offer/answer in order; the loop is between the SDK and the browser.
  it("polite side opens a data channel at peer-joined (JS SDK 1.2.0 + Chromium glare/rollback issue)",
    { todo: "JS SDK 1.2.0 in Chromium: a data channel created by the POLITE peer at peer-joined is lost in the glare rollback (endless renegotiation without m=application)" },
    (t) => runPair(t, { room: "room-browser-3", dcRole: "polite", dcWhen: "at-peer-joined", shot: "browser-polite-at-peer-joined" }));
});
