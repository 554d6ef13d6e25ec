// Drive N headless Chromium pages running the real @metered-ca/realtime MeteredPeer
// against a Parlor server; every page joins ROOM, adds the fake mic, opens a "chat" data
// channel at peer-joined (unless DC=0), sends "hello from chrome-i" + "ping k" every second,
// and after SECS seconds prints one JSON summary line per page (getStats inbound/outbound audio).
// env: PARLOR_URL ROOM N (1) SECS (25) MIC (1) DC (1) MDNS (0: pass --disable-features=WebRtcHideLocalIpsWithMdns)
import http from "node:http";
import { readFileSync } from "node:fs";
const { chromium } = await import(new URL("../../../tests/conformance/node_modules/playwright-core/index.mjs", import.meta.url).href);

const SDK = readFileSync(new URL("../../../tests/conformance/node_modules/@metered-ca/realtime/dist/index.mjs", import.meta.url));
const N = +(process.env.N || 1), SECS = +(process.env.SECS || 25);
const MIC = process.env.MIC !== "0", DC = process.env.DC !== "0", MDNS = process.env.MDNS === "1";

const PAGE = `<!doctype html><html><body><script type="module">
import { MeteredPeer } from "/sdk/index.mjs";
window.state = { received: [], sent: 0, dcOpen: [], states: [], tracks: [], negErrors: [], errors: [], sigIn: [], sigOut: [] };
window.run = async ({ url, room, name, mic, dc }) => {
  const st = window.state;
  const peer = new MeteredPeer({ apiKey: "pk_test_x", url,
    webSocketFactory: (u) => { const ws = new WebSocket(u);
      const tag = (dir, d) => { const m = /"type":"(rtc-description|rtc-ice)"(.{0,60})/.exec(String(d)); if (m) st[dir].push(m[1] === "rtc-ice" ? (String(d).includes('"candidate":null') ? "ice:null" : (String(d).includes(".local") ? "ice:mdns" : "ice")) : (/"type":"offer"/.test(String(d)) ? "offer" : "answer")); };
      ws.addEventListener("message", (e) => tag("sigIn", e.data));
      const send = ws.send.bind(ws); ws.send = (d) => { tag("sigOut", d); send(d); }; return ws; } });
  window.peer = peer;
  if (mic) { const s = await navigator.mediaDevices.getUserMedia({ audio: true }); peer.addStream(s, { role: "mic" }); }
  peer.on("error", ({ err }) => st.errors.push(err.name + ": " + err.message));
  peer.on("peer-joined", ({ peer: remote }) => {
    window.remote = remote; st.remoteId = remote.id; st.polite = remote.polite;
    remote.on("negotiation-error", ({ err }) => st.negErrors.push(err.name + ": " + err.message));
    remote.on("state-change", ({ to }) => st.states.push(to));
    remote.on("track", ({ track }) => { st.tracks.push(track.kind); const el = document.createElement("audio"); el.autoplay = true; el.srcObject = new MediaStream([track]); document.body.appendChild(el); });
    const wire = (ch) => {
      ch.addEventListener("open", () => { st.dcOpen.push(ch.label); ch.send("hello from " + name); st.sent++;
        let k = 0; const iv = setInterval(() => { if (ch.readyState !== "open") return clearInterval(iv); ch.send("ping " + (k++)); st.sent++; }, 1000); });
      ch.addEventListener("message", (e) => st.received.push(String(e.data)));
    };
    remote.on("data-channel", ({ channel }) => wire(channel));
    if (dc) wire(remote.pc.createDataChannel("chat"));
  });
  await peer.join(room);
  st.peerId = peer.peerId;
};
window.collect = async () => {
  const st = window.state; const out = { ...st, received: st.received.length, firstRx: st.received.slice(0, 3) };
  if (window.remote) {
    const stats = await window.remote.pc.getStats();
    stats.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") out.inbound = { packetsReceived: r.packetsReceived, packetsLost: r.packetsLost, audioLevel: r.audioLevel, concealedSamples: r.concealedSamples, totalSamplesReceived: r.totalSamplesReceived, jitter: r.jitter };
      if (r.type === "outbound-rtp" && r.kind === "audio") out.outbound = { packetsSent: r.packetsSent };
      if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") out.pair = { rtt: r.currentRoundTripTime, local: r.localCandidateId, remote: r.remoteCandidateId };
      if (r.type === "transport") out.transport = { dtls: r.dtlsState, srtp: r.srtpCipher, tls: r.tlsVersion };
    });
    if (out.pair) { const l = stats.get(out.pair.local), rm = stats.get(out.pair.remote); out.pair.localType = l && l.candidateType; out.pair.localAddr = l && l.address; out.pair.remoteType = rm && rm.candidateType; out.pair.remoteAddr = rm && rm.address; }
    out.connectionState = window.remote.pc.connectionState;
  }
  return out;
};
</script></body></html>`;

const srv = http.createServer((req, res) => {
  if (req.url.startsWith("/sdk/")) { res.writeHead(200, { "content-type": "text/javascript" }); return res.end(SDK); }
  res.writeHead(200, { "content-type": "text/html" }); res.end(PAGE);
});
await new Promise((r) => srv.listen(0, "127.0.0.1", r));
const args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"];
if (!MDNS) args.push("--disable-features=WebRtcHideLocalIpsWithMdns");
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args });
const ctx = await browser.newContext({ permissions: MIC ? ["microphone"] : [] });
const pages = [];
for (let i = 0; i < N; i++) {
  const p = await ctx.newPage();
  p.on("pageerror", (e) => console.error(`[chrome-${i}] pageerror ${e.message}`));
  await p.goto(`http://127.0.0.1:${srv.address().port}/`);
  await p.evaluate((o) => window.run(o), { url: process.env.PARLOR_URL, room: (process.env.ROOM || "spike") + (process.env.PER_PAGE_ROOM ? "-" + i : ""), name: `chrome-${i}`, mic: MIC, dc: DC });
  pages.push(p);
}
console.error(`chrome: ${N} page(s) joined; waiting ${SECS}s`);
await new Promise((r) => setTimeout(r, SECS * 1000));
for (let i = 0; i < N; i++) console.log("CHROME " + JSON.stringify({ page: i, ...(await pages[i].evaluate(() => window.collect())) }));
for (const p of pages) await p.evaluate(() => window.peer.close()).catch(() => {});
await browser.close();
srv.close();
