// Agent dispatch seen from a browser (issue #22): `parlor serve` with an `[agents]` rule
// (`call-*` -> `voice`) and two `parlor worker` processes (basic engines, no models). A
// Chromium page running the real @metered-ca/realtime MeteredPeer joins `call-web` with no
// agent code: a dispatched agent joins and its greeting arrives as audio. The worker running
// it is killed (SIGKILL): the page sees that agent leave and another worker's agent join and
// speak. The time from the kill to the new agent's audio in the page is printed (measured,
// not asserted). Run: node --test browser/dispatch.test.mjs
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";
import { launchChromium, poll, startStatic } from "../lib/browser.mjs";
import { writeWav } from "../lib/demo.mjs";
import { BASE_CONFIG, DEV_KEY, WAIT_MS, parlorBin, startParlor, withTimeout } from "../lib/parlor.mjs";

const WORKER_SECRET = "ws_test_browser_0123456789";
const AGENTS = `
[agents]
worker_secret = "${WORKER_SECRET}"

[[agents.rules]]
channels = ["call-*"]
agent = "voice"
grace_secs = 1
`;

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>parlor dispatch</title></head><body>
<pre id="log"></pre>
<script type="module">
import { MeteredPeer } from "/sdk/index.mjs";
const log = (m) => { document.getElementById("log").textContent += m + "\\n"; };
window.state = { sdkLoaded: true, joined: [], left: [], errors: [] };
window.remotes = {};
window.run = async ({ url, apiKey, room }) => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  const peer = new MeteredPeer({ apiKey, url });
  window.peer = peer;
  peer.addStream(stream, { role: "mic" });
  peer.on("error", ({ err }) => window.state.errors.push(err.name + ": " + err.message));
  peer.on("peer-joined", ({ peer: remote }) => {
    window.remotes[remote.id] = remote;
    window.state.joined.push({ id: remote.id, metadata: remote.metadata ?? null, at: Date.now() });
    log("joined " + remote.id + " " + JSON.stringify(remote.metadata ?? null));
    remote.on("track", ({ track }) => {
      const el = document.createElement("audio");
      el.autoplay = true;
      el.srcObject = new MediaStream([track]);
      document.body.appendChild(el);
    });
  });
  peer.on("peer-left", ({ peer: remote }) => { window.state.left.push(remote.id); log("left " + remote.id); });
  await peer.join(room);
  window.state.me = peer.peerId;
};
// Audio bytes received from remote \`id\` so far.
window.audioFrom = async (id) => {
  const r = window.remotes[id];
  if (!r || !r.pc) return 0;
  let bytes = 0;
  (await r.pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") bytes += s.bytesReceived || 0; });
  return bytes;
};
</script></body></html>`;

/** A `parlor worker` process whose stdout lines are kept. */
function startWorker(url, name) {
  const proc = spawn(parlorBin(), ["worker", "--server", url, "--engines", "basic", "--greeting", "Hello, I am your agent."], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, PARLOR_WORKER_SECRET: WORKER_SECRET, PARLOR_LOG: "warn" },
  });
  const lines = [];
  const waiters = [];
  readline.createInterface({ input: proc.stdout }).on("line", (l) => {
    lines.push(l);
    for (const w of [...waiters]) if (l.includes(w.needle)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(l); }
  });
  return {
    name, proc, lines,
    waitLine(needle, ms = WAIT_MS) {
      const found = lines.find((l) => l.includes(needle));
      if (found) return Promise.resolve(found);
      return withTimeout(new Promise((resolve) => waiters.push({ needle, resolve })), `${name}: a line with ${JSON.stringify(needle)} (${JSON.stringify(lines)})`, ms);
    },
    kill(sig) {
      if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill(sig);
      return exited;
    },
  };
}

describe("agent dispatch: a Chromium page in a call room gets an agent, and another when its worker dies", () => {
  let parlor, stat, browser;
  const workers = [];

  before(async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "parlor-dispatch-"));
    mkdirSync(dir, { recursive: true });
    // A quiet microphone: 1 s of silence, then nothing (the agent only greets).
    const wav = path.join(dir, "silence.wav");
    writeWav(wav, 48_000, Buffer.alloc(48_000 * 2));
    parlor = await startParlor({ config: BASE_CONFIG + AGENTS });
    stat = await startStatic(PAGE);
    browser = await launchChromium([`--use-file-for-fake-audio-capture=${wav}%noloop`]);
    for (const name of ["worker-a", "worker-b"]) {
      const w = startWorker(parlor.url, name);
      workers.push(w);
      await w.waitLine("registered as worker");
    }
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await new Promise((r) => (stat ? stat.close(() => r()) : r()));
    for (const w of workers) await w.kill("SIGKILL");
    await parlor?.stop();
  });

  it("the page hears a dispatched agent, and a new one after SIGKILL of its worker", async (t) => {
    const context = await browser.newContext({ permissions: ["microphone"] });
    const page = await context.newPage();
    const consoleLines = [];
    page.on("console", (m) => consoleLines.push(m.text()));
    try {
      await page.goto(`http://127.0.0.1:${stat.address().port}/`);
      await page.waitForFunction(() => window.state && window.state.sdkLoaded, null, { timeout: WAIT_MS });
      await withTimeout(page.evaluate((o) => window.run(o), { url: parlor.url, apiKey: DEV_KEY, room: "call-web" }), "join");

      // The first agent: in the room with its job in its metadata, and heard.
      const first = (await poll(() => page.evaluate(() => window.state.joined), (j) => j.length >= 1, "a dispatched agent")).at(0);
      assert.match(String(first.metadata?.agentJob), /^j_\d+$/, JSON.stringify(first));
      await poll(() => page.evaluate((id) => window.audioFrom(id), first.id), (b) => b > 2_000, "the first agent's greeting");
      const victim = await poll(async () => workers.find((w) => w.lines.some((l) => l.includes("dev/call-web"))), (w) => !!w, "the worker running the job");
      const survivor = workers.find((w) => w !== victim);

      // Kill its worker: the page sees that agent leave and a new one join and speak.
      const killedAt = Date.now();
      await victim.kill("SIGKILL");
      await poll(() => page.evaluate(() => window.state.left), (l) => l.includes(first.id), "the dead agent leaving");
      const second = (await poll(() => page.evaluate(() => window.state.joined), (j) => j.length >= 2, "a new agent")).at(1);
      assert.notEqual(second.id, first.id);
      await poll(() => page.evaluate((id) => window.audioFrom(id), second.id), (b) => b > 2_000, "the new agent's greeting");
      t.diagnostic(`SIGKILL -> new agent in the page ${second.at - killedAt} ms, its audio by ${Date.now() - killedAt} ms (200 ms polling)`);
      await survivor.waitLine("dev/call-web");
      assert.deepEqual(await page.evaluate(() => window.state.errors), []);

      // The page leaves: the surviving worker's job is cancelled after the grace.
      await page.evaluate(() => window.peer.close());
      await survivor.waitLine("cancelled");
    } catch (e) {
      e.message += `\nconsole: ${consoleLines.slice(-30).join("\n")}\nworkers: ${JSON.stringify(workers.map((w) => w.lines))}\n${parlor.logs()}`;
      throw e;
    } finally {
      await context.close().catch(() => {});
    }
  });
});
