// The same impaired stream into three real receivers: Chromium (NetEq, through the browser
// SDK @metered-ca/realtime), the Python SDK (metered-realtime over aiortc) and Parlor's Rust
// receiver (AudioFrames), recorded as each hands audio to an application, then scored with
// PESQ against the speech sent (docs/performance.md, "The peer on real networks").
//
//   cargo build -p parlor -p parlor-media --examples
//   node bench/network_browser.mjs [--links clean,2:random:60,10:bursty:60,...] [--seed N]
//        [--out DIR]
//   /tmp/pesq-venv/bin/python bench/pesq_network.py DIR      (bench/pesq_network.py says how
//                                                            to make that venv)
//
// A link is LOSS:MODEL:JITTER (percent, random|bursty, ms) or `clean`; 40 ms one way each.
// The sender (crates/media/examples/impaired_sender.rs) speaks the 16 evaluation questions
// (Piper, 32 s, the `reference.wav` that `parlor bench network --wav-dir` writes) and sends
// every datagram to the receivers through a seeded parlor-netsim link.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { launchChromium, poll, startStatic } from "../tests/conformance/lib/browser.mjs";
import { DEV_KEY, REPO_ROOT, parlorBin, startParlor } from "../tests/conformance/lib/parlor.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const LINKS = arg("links", "clean,2:random:60,5:random:60,10:random:60,10:bursty:60,20:random:60").split(",");
const SEED = Number(arg("seed", 1));
const OUT = path.resolve(arg("out", path.join(REPO_ROOT, "tests/conformance/out/network-browser")));
const EXAMPLES = path.join(REPO_ROOT, "target/debug/examples");
const PYTHON = path.join(REPO_ROOT, "tests/conformance/.venv/bin/python");

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>network bench</title></head>
<body><pre id="log"></pre><script type="module">
import { MeteredPeer } from "/sdk/index.mjs";
const log = (m) => { document.getElementById("log").textContent += m + "\\n"; };
window.state = { tracks: 0, errors: [] };
// Every remote audio track is recorded (a peer that sends nothing still has an m-line, and
// Chromium fires "track" for it); take() returns the loudest.
let recs = [];
window.recording = false;
const ctx = new AudioContext({ sampleRate: 48000 });
window.join = async ({ url, apiKey, room }) => {
  recs = [];
  window.state.tracks = 0;
  const peer = new MeteredPeer({ apiKey, url });
  window.peer = peer;
  peer.on("error", ({ err }) => window.state.errors.push(String(err && err.message)));
  peer.on("peer-joined", ({ peer: remote }) => {
    remote.on("track", ({ track }) => {
      if (track.kind !== "audio") return;
      window.state.tracks++;
      const rec = { chunks: [], energy: 0 };
      recs.push(rec);
      log("track " + track.id);
      // Chromium pulls a remote track into WebAudio only while a media element plays it.
      const el = document.createElement("audio");
      el.muted = true; el.autoplay = true; el.srcObject = new MediaStream([track]);
      document.body.appendChild(el);
      const src = ctx.createMediaStreamSource(new MediaStream([track]));
      const proc = ctx.createScriptProcessor(4096, 1, 1);
      proc.onaudioprocess = (e) => {
        if (!window.recording) return;
        const c = new Float32Array(e.inputBuffer.getChannelData(0));
        for (let i = 0; i < c.length; i++) rec.energy += c[i] * c[i];
        rec.chunks.push(c);
      };
      src.connect(proc); proc.connect(ctx.destination);
    });
  });
  await ctx.resume();
  await peer.join(room);
  return peer.peerId;
};
window.take = async () => {
  window.recording = false;
  const chunks = recs.reduce((a, r) => (a && a.energy >= r.energy ? a : r), null)?.chunks || [];
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const pcm = new Int16Array(n);
  let o = 0;
  for (const c of chunks) for (let i = 0; i < c.length; i++) pcm[o++] = Math.max(-32768, Math.min(32767, Math.round(c[i] * 32767)));
  const bytes = new Uint8Array(pcm.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  await window.peer.close();
  return btoa(s);
};
</script></body></html>`;

function wav48(pcmBytes) {
  const h = Buffer.alloc(44);
  h.write("RIFF", 0); h.writeUInt32LE(36 + pcmBytes.length, 4); h.write("WAVE", 8);
  h.write("fmt ", 12); h.writeUInt32LE(16, 16); h.writeUInt16LE(1, 20); h.writeUInt16LE(1, 22);
  h.writeUInt32LE(48000, 24); h.writeUInt32LE(96000, 28); h.writeUInt16LE(2, 32); h.writeUInt16LE(16, 34);
  h.write("data", 36); h.writeUInt32LE(pcmBytes.length, 40);
  return Buffer.concat([h, pcmBytes]);
}

/** Spawn `cmd`, resolve once a stdout line matches `ready`; `.done` resolves at exit. */
function start(cmd, args, ready, what) {
  const proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  proc.stderr.on("data", (d) => { err = (err + d).slice(-4000); });
  const lines = readline.createInterface({ input: proc.stdout });
  const done = new Promise((r) => proc.on("exit", (code) => r(code)));
  const up = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no "${ready}" within 60 s: ${err}`)), 60_000);
    lines.on("line", (l) => { if (l.startsWith(ready)) { clearTimeout(timer); resolve(); } });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`${what} exited (${code}): ${err}`)); });
  });
  up.catch(() => {});
  return { proc, up, done, lines, stderr: () => err };
}

const linkArgs = (l) => {
  if (l === "clean") return ["--delay", "40"];
  const [loss, model, jitter] = l.split(":");
  return ["--delay", "40", "--loss", loss, "--jitter", jitter, ...(model === "bursty" ? ["--bursty"] : [])];
};
const linkName = (l) => (l === "clean" ? "clean" : l.replace(/^(\d+):(\w+):(\d+)$/, "$1 % $2, $3 ms jitter"));

mkdirSync(OUT, { recursive: true });
for (const f of readdirSync(OUT)) rmSync(path.join(OUT, f));
console.error("network-browser: building the sender and receiver examples…");
execFileSync("cargo", ["build", "-q", "-p", "parlor-media", "--example", "impaired_sender", "--example", "recording_receiver"], { cwd: REPO_ROOT, stdio: "inherit" });
console.error("network-browser: the speech (parlor bench network --wav-dir)…");
const refDir = path.join(OUT, "ref");
execFileSync(parlorBin(), ["bench", "network", "--no-stt", "--loss", "0", "--jitter", "0", "--models", "random", "--wav-dir", refDir], { stdio: ["ignore", "ignore", "inherit"] });
const reference = path.join(OUT, "reference.wav");
execFileSync("cp", [path.join(refDir, "reference.wav"), reference]);
rmSync(refDir, { recursive: true });
const SPEECH_SECS = 33;

const parlor = await startParlor();
const stat = await startStatic(PAGE);
const browser = await launchChromium();
const page = await browser.newPage();
await page.goto(`http://127.0.0.1:${stat.address().port}/`);
try {
  for (const [i, link] of LINKS.entries()) {
    const room = `net-${i}`;
    console.error(`network-browser: ${linkName(link)}`);
    const common = ["--url", parlor.url, "--key", DEV_KEY, "--room", room];
    await page.evaluate((a) => window.join(a), { url: parlor.url, apiKey: DEV_KEY, room });
    const seconds = String(SPEECH_SECS + 20);
    const file = (who) => path.join(OUT, `${linkName(link).replace(/[ ,%]+/g, "_")}--${who}.wav`);
    const py = start(PYTHON, [path.join(REPO_ROOT, "bench/network_receiver.py"), ...common, "--out", file("aiortc"), "--seconds", seconds], "joined", "python receiver");
    const rs = start(path.join(EXAMPLES, "recording_receiver"), [...common, "--out", file("parlor"), "--seconds", seconds], "joined", "rust receiver");
    await Promise.all([py.up, rs.up]);
    await page.evaluate(() => { window.recording = true; });
    const tx = start(path.join(EXAMPLES, "impaired_sender"), [...common, "--wav", reference, "--seed", String(SEED), "--receivers", "3", ...linkArgs(link)], "connected", "sender");
    await tx.up;
    const code = await tx.done;
    if (code !== 0) throw new Error(`sender exited ${code}: ${tx.stderr()}`);
    const b64 = await page.evaluate(() => window.take());
    writeFileSync(file("chromium"), wav48(Buffer.from(b64, "base64")));
    await Promise.all([py.done, rs.done]);
    for (const w of ["aiortc", "parlor", "chromium"]) if (!existsSync(file(w))) throw new Error(`${w}: no recording`);
  }
} finally {
  await browser.close();
  stat.close();
  await parlor.stop();
}
console.error(`network-browser: recordings in ${OUT}; score them with bench/pesq_network.py ${OUT}`);
