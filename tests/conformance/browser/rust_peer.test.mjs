// Browser <-> Rust peer interop: one Chromium page runs the REAL @metered-ca/realtime
// MeteredPeer (fake microphone added) and the Rust peer SDK runs as `parlor echo`, both in
// one room of `parlor serve`. For each browser role (polite / impolite, perfect negotiation:
// the lexicographically smaller peer id is polite) it checks:
//   1. a data channel the page opens carries N messages to the Rust peer and back, exactly
//      and in order (`parlor echo` sends every message back on the channel it came from);
//   2. Chromium's fake-microphone Opus track arrives at the Rust peer (`track <id> audio`);
//   3. the audio the Rust peer loops back is received by Chromium (getStats inbound-rtp
//      audio packetsReceived > 0 and growing).
// One case also sends Chromium's fake camera: the video track reaches the Rust peer (which
// receives it, ignores it and answers it receive-only) and everything above still works.
// Role selection: the page first opens its signalling socket without joining (re-drawing its
// peer id until it lies on the favourable side of ID_PIVOT), then `parlor echo` processes are
// started until one gets an id that compares the wanted way. Two join orders: "echo-first"
// (the echo is alone in the room, then the page joins: nobody sees churn) and "browser-first"
// (the page is in the room first and sees the rejected echo processes come and go).
// Run: node --test browser/   (PARLOR_BIN=... ; PARLOR_BROWSER_DEBUG=1 for SDK/wire logs)
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, mkdirSync, writeFileSync, openSync, closeSync, existsSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { launchChromium, poll, startStatic } from "../lib/browser.mjs";
import { startParlor, startCoturn, turnConfig, parlorBin, withTimeout, Recorder, CONFORMANCE_DIR, DEV_KEY, WAIT_MS } from "../lib/parlor.mjs";

const OUT_DIR = path.join(CONFORMANCE_DIR, "out");
const PYTHON = path.join(CONFORMANCE_DIR, ".venv", "bin", "python");
const PY_ECHO = path.join(CONFORMANCE_DIR, "..", "..", "crates", "python", "examples", "echo.py");
const DEBUG = process.env.PARLOR_BROWSER_DEBUG === "1";
const N_MESSAGES = 20;
const MAX_ECHO_STARTS = 24; // each start is >= a coin flip (see ID_PIVOT): P(all wrong) < 6e-8
const MAX_PAGE_CONNECTS = 24;
// Peer ids are "p_" + 22 base62 chars (0-9A-Za-z, uniform; crates/server/src/hub.rs). The
// page's id is re-drawn until it lies on the favourable side of the median "p_V", so that a
// random echo id compares the wanted way with probability >= 1/2 (a page id like "p_z..." would
// otherwise need ~60 echo starts to find a greater one).
const ID_PIVOT = "p_V";
// All waits of one role's three checks share this budget (counted from the end of its setup),
// so a connection that never comes up fails the suite in ~30 s rather than 3 x 20 s.
const SUITE_BUDGET_MS = 30_000;

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>parlor rust-peer interop</title>
<style>body{font:14px monospace;margin:12px} h1{font-size:18px}</style>
</head><body>
<h1 id="title">MeteredPeer (Chromium) &lt;-&gt; parlor echo (Rust)</h1>
<div id="status">loading SDK…</div>
<pre id="log"></pre>
<script type="module">
import { MeteredPeer, ConsoleLogger } from "/sdk/index.mjs";
const logEl = document.getElementById("log");
const statusEl = document.getElementById("status");
const log = (m) => { logEl.textContent += new Date().toISOString().slice(11, 23) + " " + m + "\\n"; };
window.state = { sdkLoaded: true, errors: [], remotes: {} };
window.remotes = {};
window.dcs = {};
statusEl.textContent = "SDK loaded";
// Step 1: build the MeteredPeer (fake mic added) and open its signalling socket WITHOUT joining,
// so the test learns our peer id before choosing the Rust peer. MeteredPeer.join() skips its own
// connect() when the client is already connected. Calling it again replaces the MeteredPeer
// (new signalling connection, new peer id).
window.connect = async ({ url, apiKey, debug, relay, video }) => {
  const st = window.state;
  if (window.peer) await window.peer.close();
  window.stream = window.stream || await navigator.mediaDevices.getUserMedia({ audio: true, video: !!video });
  const stream = window.stream;
  st.localTrackIds = stream.getAudioTracks().map((t) => t.id);
  st.sdp = { offersSent: 0, answersSent: 0, offersReceived: 0, answersReceived: 0 };
  const count = (dir, d) => {
    if (debug) console.log("[wire " + dir + "] " + String(d).slice(0, 300));
    const m = /"type":"rtc-description","description":\\{"type":"(offer|answer)"/.exec(String(d));
    if (m) st.sdp[m[1] + "s" + (dir === "out" ? "Sent" : "Received")]++;
  };
  // relay: every RTCPeerConnection gets iceTransportPolicy "relay" (the SDK fills iceServers
  // from welcome.metadata.iceServers): the page then gathers and accepts relayed candidates only.
  const relayFactory = (cfg) => new RTCPeerConnection({ ...cfg, iceTransportPolicy: "relay" });
  st.iceServers = null;
  const peer = new MeteredPeer({ apiKey, url, ...(debug ? { logger: ConsoleLogger } : {}),
    ...(relay ? { rtcPeerConnectionFactory: (cfg) => { st.iceServers = (cfg.iceServers || []).map((s) => s.urls); return relayFactory(cfg); } } : {}),
    webSocketFactory: (u) => { const ws = new WebSocket(u); ws.addEventListener("message", (e) => count("in", e.data));
      const send = ws.send.bind(ws); ws.send = (d) => { count("out", d); send(d); }; return ws; } });
  window.peer = peer;
  peer.addStream(stream, { role: "mic", label: "fake mic" });
  peer.on("error", ({ err }) => { st.errors.push("peer error " + err.name + ": " + err.message); log("ERROR " + err.name + ": " + err.message); });
  // Every remote gets its own record (in the browser-first order, echo processes with the
  // wrong id join and leave before the chosen one), and a "chat" data channel opened by the
  // page as soon as it knows that remote.
  peer.on("peer-joined", ({ peer: remote }) => {
    const r = { id: remote.id, polite: remote.polite, states: [], tracks: [], received: [], sent: [],
      negotiationErrors: [], dcErrors: [], dcOpen: false, dcClosed: false, left: false };
    st.remotes[remote.id] = r;
    window.remotes[remote.id] = remote;
    log("peer-joined " + remote.id + " polite=" + remote.polite);
    remote.on("negotiation-error", ({ err }) => { r.negotiationErrors.push(err.name + ": " + err.message); log(remote.id + " negotiation-error " + err.message); });
    remote.on("state-change", ({ to }) => { r.states.push(to); log(remote.id + " pc state " + to); });
    remote.on("track", ({ track }) => {
      r.tracks.push({ kind: track.kind, id: track.id });
      log(remote.id + " track " + track.kind + " " + track.id);
      const el = document.createElement("audio");
      el.autoplay = true;
      el.srcObject = new MediaStream([track]);
      document.body.appendChild(el);
    });
    remote.on("data-channel", ({ channel }) => log(remote.id + " unexpected remote data channel " + channel.label));
    const ch = remote.pc.createDataChannel("chat");
    window.dcs[remote.id] = ch;
    log(remote.id + " createDataChannel chat (signalingState " + remote.pc.signalingState + ")");
    ch.addEventListener("open", () => { r.dcOpen = true; log(remote.id + " data channel open"); });
    ch.addEventListener("close", () => { r.dcClosed = true; log(remote.id + " data channel closed"); });
    ch.addEventListener("error", (e) => { r.dcErrors.push(String(e.error && e.error.message || e.type)); log(remote.id + " data channel error " + (e.error && e.error.message)); });
    ch.addEventListener("message", (e) => { r.received.push(String(e.data)); });
  });
  peer.on("peer-left", ({ peerId }) => { if (st.remotes[peerId]) st.remotes[peerId].left = true; log("peer-left " + peerId); });
  await peer.client.connect();
  st.peerId = peer.peerId;
  statusEl.textContent = "connected as " + peer.peerId;
  log("signalling connected as " + peer.peerId);
  return peer.peerId;
};
// Step 2: join the room.
window.join = async ({ room }) => {
  await window.peer.join(room);
  window.state.joined = true;
  statusEl.textContent = "joined " + room + " as " + window.peer.peerId;
  log("joined " + room);
};
window.sendAll = (id, msgs) => { const r = window.state.remotes[id]; for (const m of msgs) { window.dcs[id].send(m); r.sent.push(m); } };
window.snapshot = (id) => {
  const st = window.state, pc = window.remotes[id] && window.remotes[id].pc, dc = window.dcs[id];
  return { peerId: st.peerId, errors: st.errors, sdp: st.sdp, others: Object.keys(st.remotes).filter((k) => k !== id),
    remote: st.remotes[id] || null, dc: dc ? dc.readyState : "none",
    pc: pc ? { connectionState: pc.connectionState, signalingState: pc.signalingState, sctp: pc.sctp ? pc.sctp.state : null } : null };
};
// The candidate types of the pair carrying the connection (getStats transport -> selected pair).
window.selectedPair = async (id) => {
  const remote = window.remotes[id];
  if (!remote) return null;
  const stats = await remote.pc.getStats();
  let pair = null;
  stats.forEach((r) => { if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId); });
  if (!pair) return null;
  const l = stats.get(pair.localCandidateId), r = stats.get(pair.remoteCandidateId);
  return { local: l && l.candidateType, remote: r && r.candidateType, localAddr: l && (l.address + ":" + l.port),
    remoteAddr: r && (r.address + ":" + r.port), state: pair.state, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived };
};
window.outboundVideo = async (id) => {
  const remote = window.remotes[id];
  if (!remote) return null;
  const stats = await remote.pc.getStats();
  let packets = 0, codec = null;
  stats.forEach((r) => {
    if (r.type === "outbound-rtp" && r.kind === "video") {
      packets += r.packetsSent || 0;
      const c = r.codecId && stats.get(r.codecId); if (c) codec = c.mimeType;
    }
  });
  return { packets, codec };
};
window.inboundAudio = async (id) => {
  const remote = window.remotes[id];
  if (!remote) return null;
  const stats = await remote.pc.getStats();
  let packets = 0, bytes = 0, streams = 0, codec = null;
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") {
      streams++; packets += r.packetsReceived || 0; bytes += r.bytesReceived || 0;
      const c = r.codecId && stats.get(r.codecId); if (c) codec = c.mimeType;
    }
  });
  statusEl.textContent = "joined as " + window.state.peerId + "; inbound audio RTP packets from " + id + ": " + packets + " (" + bytes + " bytes)";
  return { packets, bytes, streams, codec };
};
</script></body></html>`;



const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, "");

/**
 * Start `parlor echo` in `room`; resolves once it printed `echo joined ROOM as ID`.
 * stdout lines are recorded as "line" events; stderr goes to `errPath`.
 */
async function startEcho({ url, room, errPath, relayOnly = false, python = false }) {
  const errFd = openSync(errPath, "w");
  const env = { ...process.env, NO_COLOR: "1", PARLOR_LOG: process.env.PARLOR_LOG || "parlor_peer=debug" };
  const args = ["echo", "--url", url, "--key", DEV_KEY, "--room", room];
  if (process.env.PARLOR_ECHO_BIND_IP) args.push("--bind-ip", process.env.PARLOR_ECHO_BIND_IP);
  if (relayOnly) args.push("--relay-only");
  // `python`: the same echo written on the `parlor` Python package (crates/python/examples/
  // echo.py), run from the conformance venv the Python part of run.sh builds it into.
  const proc = python
    ? spawn(PYTHON, [PY_ECHO, ...args.slice(1)], { stdio: ["ignore", "pipe", errFd], env })
    : spawn(parlorBin(), args, { stdio: ["ignore", "pipe", errFd], env });
  closeSync(errFd);
  const rec = new Recorder("parlor echo");
  const lines = [];
  readline.createInterface({ input: proc.stdout }).on("line", (line) => { lines.push(line); rec.push("line", line); });
  proc.on("exit", (code, sig) => rec.push("exit", { code, sig }));
  const echo = {
    proc, rec, lines, errPath,
    stderrTail: (n = 6000) => (existsSync(errPath) ? stripAnsi(readFileSync(errPath, "utf8")).slice(-n) : ""),
    waitLine: (re, what, ms = WAIT_MS) => rec.waitFor("line", (l) => re.test(l), what, ms),
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    },
  };
  try {
    const joined = await Promise.race([
      echo.waitLine(new RegExp(`^echo joined ${room} as (\\S+)$`), "join line"),
      rec.waitFor("exit", () => true, "", WAIT_MS + 1000).then((x) => { throw new Error(`parlor echo exited early ${JSON.stringify(x)}`); }),
    ]);
    echo.id = joined.split(" ").pop();
  } catch (e) {
    await echo.stop();
    e.message += `\necho stdout: ${JSON.stringify(lines)}\necho stderr (tail):\n${echo.stderrTail(3000)}`;
    throw e;
  }
  return echo;
}

describe("MeteredPeer in Chromium <-> Rust peer (parlor echo) via Parlor", () => {
  let parlor, parlorTurn, coturn, stat, browser;

  before(async () => {
    mkdirSync(OUT_DIR, { recursive: true });
    parlor = await startParlor();
    // The TURN cases: a server minting REST credentials for a coturn on loopback.
    coturn = await startCoturn();
    parlorTurn = await startParlor({ config: turnConfig([coturn.url]) });
    stat = await startStatic(PAGE);
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await new Promise((r) => (stat ? stat.close(() => r()) : r()));
    await parlor?.stop();
    await parlorTurn?.stop();
    await coturn?.stop();
  });

  // order "echo-first": the chosen echo is alone in the room, then the page joins (no churn).
  // order "browser-first": the page is in the room first; echo processes with the wrong id
  // join and are stopped (the page sees them come and go) until one has the wanted id.
  // turn: Chromium with iceTransportPolicy "relay" and `parlor echo --relay-only`, both using
  // the TURN credentials Parlor minted into the welcome: every packet crosses coturn.
  // video: the page also sends its fake camera (the Rust peer receives the track and ignores it).
  // python: the far end is the `parlor` Python package (crates/python/examples/echo.py)
  // instead of the `parlor echo` binary: the same checks, through the Python API.
  const cases = [["echo-first", false, false, false], ["browser-first", false, false, false], ["echo-first", true, false, false], ["echo-first", false, true, false], ["echo-first", false, false, true]];
  for (const [order, turn, video, python] of cases) for (const role of ["impolite", "polite"]) {
    describe(`browser ${role}, ${order}${turn ? ", both relay-only through coturn" : ""}${video ? ", with a camera track" : ""}${python ? ", the echo in Python (parlor package)" : ""}`, () => {
      const room = `room-rust-${role}-${order}${turn ? "-turn" : ""}${video ? "-video" : ""}${python ? "-py" : ""}`;
      const shot = `rust-peer-${order}-browser-${role}${turn ? "-turn" : ""}${video ? "-video" : ""}${python ? "-python" : ""}`;
      const server = () => (turn ? parlorTurn : parlor);
      let context, page, echo, browserId, echoStarts = 0, deadline = Infinity;
      const left = () => Math.max(1000, Math.min(WAIT_MS, deadline - Date.now()));
      const consoleLines = [];
      const errPath = path.join(OUT_DIR, `${shot}-echo.stderr.log`);
      const snap = () => page.evaluate((id) => window.snapshot(id), echo?.id);

      // Everything a failure message needs: page state, console, echo stdout + stderr.
      const dump = async () => {
        const s = page ? await snap().catch((e) => String(e)) : null;
        return `role: browser ${role} (${order}), browser=${browserId} echo=${echo?.id}\npage state: ${JSON.stringify(s)}` +
          `\npage console (tail):\n${consoleLines.slice(DEBUG ? -400 : -60).join("\n").slice(-8000)}` +
          `\necho stdout: ${JSON.stringify(echo?.lines)}\necho stderr (tail):\n${echo?.stderrTail(6000) ?? ""}`;
      };
      const check = async (fn) => {
        try { await fn(); } catch (e) { e.message += "\n" + await dump(); throw e; }
      };

      before(async () => {
        context = await browser.newContext({ permissions: video ? ["microphone", "camera"] : ["microphone"] });
        page = await context.newPage();
        page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
        page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
        await page.goto(`http://127.0.0.1:${stat.address().port}/`);
        await page.waitForFunction(() => window.state && window.state.sdkLoaded, null, { timeout: WAIT_MS });
        const wantEchoGreater = role === "polite"; // browser polite <=> browserId < echoId
        for (let i = 0; ; i++) {
          assert.ok(i < MAX_PAGE_CONNECTS, `no page id on the ${wantEchoGreater ? "low" : "high"} side of ${ID_PIVOT} after ${MAX_PAGE_CONNECTS} connects`);
          browserId = await withTimeout(page.evaluate((o) => window.connect(o), { url: server().url, apiKey: DEV_KEY, debug: DEBUG, relay: turn, video }), "page signalling connect");
          assert.match(String(browserId), /^\S+$/, "page got a peer id");
          if ((browserId < ID_PIVOT) === wantEchoGreater) break;
        }
        if (order === "browser-first") await withTimeout(page.evaluate((o) => window.join(o), { room }), "page join");
        // Start echo peers until one has the id order we want.
        for (;;) {
          assert.ok(echoStarts < MAX_ECHO_STARTS, `no echo id on the wanted side of ${browserId} after ${MAX_ECHO_STARTS} starts`);
          echoStarts++;
          const e = await startEcho({ url: server().url, room, errPath, relayOnly: turn, python });
          if ((e.id > browserId) === wantEchoGreater) { echo = e; break; }
          await e.stop();
        }
        if (order === "echo-first") await withTimeout(page.evaluate((o) => window.join(o), { room }), "page join");
        await check(async () => {
          await echo.waitLine(new RegExp(`^peer-joined ${browserId}$`), "peer-joined for the page");
          await page.waitForFunction((id) => window.state.remotes[id], echo.id, { timeout: WAIT_MS });
          assert.equal((await snap()).remote.polite, role === "polite", "SDK computed the wanted role");
        });
        deadline = Date.now() + SUITE_BUDGET_MS;
      });

      after(async () => {
        if (page) {
          writeFileSync(path.join(OUT_DIR, `${shot}-console.log`), consoleLines.join("\n") + "\n");
          await page.evaluate((id) => window.inboundAudio(id), echo?.id).catch(() => {});
          await page.screenshot({ path: path.join(OUT_DIR, `${shot}.png`), fullPage: true }).catch(() => {});
          await page.evaluate(() => window.peer?.close()).catch(() => {});
        }
        await context?.close().catch(() => {});
        await echo?.stop();
        if (echo) writeFileSync(path.join(OUT_DIR, `${shot}-echo.stdout.log`), echo.lines.join("\n") + "\n");
      });

      it(`data channel opened by the page: ${N_MESSAGES} messages echoed back exactly, in order`, (t) => check(async () => {
        await page.waitForFunction((id) => window.state.remotes[id].dcOpen, echo.id, { timeout: left() });
        await echo.waitLine(new RegExp(`^channel-open ${browserId} chat$`), "channel-open for the page's channel", left());
        const msgs = Array.from({ length: N_MESSAGES }, (_, i) =>
          i === 1 ? "ünïcødé ✓ 😀 " + i : i === 2 ? "x".repeat(4000) + i : `msg ${i} from chromium (${role}, ${order})`);
        await page.evaluate(([id, m]) => window.sendAll(id, m), [echo.id, msgs]);
        await page.waitForFunction(([id, n]) => window.state.remotes[id].received.length >= n, [echo.id, N_MESSAGES], { timeout: left() });
        await new Promise((r) => setTimeout(r, 300)); // nothing extra may follow
        const st = await snap();
        assert.deepEqual(st.remote.received, msgs);
        assert.equal(st.dc, "open");
        assert.deepEqual(st.errors, [], "MeteredPeer fatal errors");
        assert.deepEqual(st.remote.dcErrors, [], "data channel errors");
        t.diagnostic(`browser=${browserId} (${role}) echo=${echo.id} (echo starts: ${echoStarts}); page sdp (all remotes) ${JSON.stringify(st.sdp)}`);
      }));

      it("Chromium's fake-mic Opus track arrives at the Rust peer", (t) => check(async () => {
        const line = await echo.waitLine(new RegExp(`^track ${browserId} audio \\S+$`), "audio track from the page", left());
        await echo.waitLine(new RegExp(`^connection ${browserId} Connected$`), "Connected state", left());
        t.diagnostic(`echo: ${line}`);
        const bad = echo.lines.filter((l) => new RegExp(`^connection ${browserId} (Failed|Closed)$`).test(l));
        assert.deepEqual(bad, [], "echo connection never failed/closed");
      }));

      it("audio looped back by the Rust peer is received by Chromium (getStats inbound-rtp)", (t) => check(async () => {
        const stats = () => page.evaluate((id) => window.inboundAudio(id), echo.id);
        const a = await poll(stats, (x) => x && x.packets > 0, "inbound audio RTP", left());
        const b = await poll(stats, (x) => x && x.packets >= a.packets + 10, `inbound audio packetsReceived growing past ${a.packets}`, Math.min(10_000, left()));
        t.diagnostic(`inbound-rtp audio packetsReceived ${a.packets} -> ${b.packets} (bytes ${b.bytes}, codec ${b.codec}, streams ${b.streams})`);
        assert.match(String(b.codec), /^audio\/opus$/i, "inbound audio codec");
        const st = await snap();
        t.diagnostic(`page sdp (all remotes) ${JSON.stringify(st.sdp)}; remote tracks ${JSON.stringify(st.remote.tracks)}; ` +
          `negotiation-errors ${JSON.stringify(st.remote.negotiationErrors)}; other peers seen ${st.others.length}`);
        assert.ok(st.remote.tracks.some((tr) => tr.kind === "audio"), `remote audio track event: ${JSON.stringify(st.remote.tracks)}`);
        assert.equal(st.pc.connectionState, "connected");
        assert.deepEqual(st.errors, [], "MeteredPeer fatal errors");
      }));

      if (video) it("Chromium's fake-camera track reaches the Rust peer as video, beside the audio", (t) => check(async () => {
        const line = await echo.waitLine(new RegExp(`^track ${browserId} video \\S+$`), "video track from the page", left());
        const sent = await poll(() => page.evaluate((id) => window.outboundVideo(id), echo.id), (x) => x && x.packets > 0, "outbound video RTP", left());
        t.diagnostic(`echo: ${line}; page outbound-rtp video packetsSent ${sent.packets} (codec ${sent.codec})`);
        assert.ok(echo.lines.some((l) => new RegExp(`^track ${browserId} audio \\S+$`).test(l)), "the audio track arrived too");
        // The Rust peer sends no video, so it answers the camera receive-only (as aiortc
        // does): the page gets no remote video track that would never carry frames.
        const st = await snap();
        assert.deepEqual(st.remote.tracks.filter((tr) => tr.kind === "video"), [], `remote tracks: ${JSON.stringify(st.remote.tracks)}`);
        const bad = echo.lines.filter((l) => new RegExp(`^connection ${browserId} (Failed|Closed)$`).test(l));
        assert.deepEqual(bad, [], "echo connection never failed/closed");
        assert.equal(echo.proc.exitCode, null, "parlor echo still running");
      }));

      if (turn) it("the selected candidate pair is relay <-> relay (both ends through coturn)", (t) => check(async () => {
        const pair = await poll(() => page.evaluate((id) => window.selectedPair(id), echo.id), (p) => p && p.local, "selected candidate pair", left());
        t.diagnostic(`page iceServers ${JSON.stringify(await page.evaluate(() => window.state.iceServers))}; selected pair ${JSON.stringify(pair)}`);
        assert.equal(pair.local, "relay", "the page's side of the pair");
        assert.equal(pair.remote, "relay", "the Rust peer's side of the pair (it announces relayed candidates only)");
        assert.match(pair.localAddr, /^127\.0\.0\.1:/, "coturn's relay address");
      }));
    });
  }
});
