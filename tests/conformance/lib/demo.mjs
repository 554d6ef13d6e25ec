// What the demo's browser test and the voice latency bench share: eSpeak NG speech WAVs for a
// fake microphone, `parlor demo` as a child process, and the page in a browser context.
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { readFileSync, writeFileSync, openSync, closeSync, existsSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { parlorBin, Recorder, CONFORMANCE_DIR, REPO_ROOT, WAIT_MS } from "./parlor.mjs";

export const OUT_DIR = path.join(CONFORMANCE_DIR, "out");
export const WEB_DIR = path.join(REPO_ROOT, "web");

const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, "");

// ------------------------------------------------------------------ speech WAVs
/** The PCM (s16le mono Buffer) and rate of a 16-bit mono WAV file. */
export function readWav(file) {
  const wav = readFileSync(file);
  assert.equal(wav.toString("ascii", 0, 4), "RIFF", `${file} is a RIFF file`);
  let rate = 0, channels = 0, bits = 0, pcm = null;
  for (let off = 12; off + 8 <= wav.length;) {
    const id = wav.toString("ascii", off, off + 4);
    const size = Math.min(wav.readUInt32LE(off + 4), wav.length - off - 8);
    if (id === "fmt ") {
      channels = wav.readUInt16LE(off + 10);
      rate = wav.readUInt32LE(off + 12);
      bits = wav.readUInt16LE(off + 22);
    } else if (id === "data") {
      pcm = wav.subarray(off + 8, off + 8 + size);
    }
    off += 8 + size + (size & 1);
  }
  assert.ok(pcm && channels === 1 && bits === 16 && rate > 0, `${file} is 16-bit mono (${channels} ch, ${bits} bit, ${rate} Hz)`);
  return { rate, pcm };
}

/** Write `pcm` (s16le mono Buffer) at `rate` as a WAV file. */
export function writeWav(file, rate, pcm) {
  const hdr = Buffer.alloc(44);
  hdr.write("RIFF", 0, "ascii");
  hdr.writeUInt32LE(36 + pcm.length, 4);
  hdr.write("WAVEfmt ", 8, "ascii");
  hdr.writeUInt32LE(16, 16);
  hdr.writeUInt16LE(1, 20); // PCM
  hdr.writeUInt16LE(1, 22); // mono
  hdr.writeUInt32LE(rate, 24);
  hdr.writeUInt32LE(rate * 2, 28);
  hdr.writeUInt16LE(2, 32);
  hdr.writeUInt16LE(16, 34);
  hdr.write("data", 36, "ascii");
  hdr.writeUInt32LE(pcm.length, 40);
  writeFileSync(file, Buffer.concat([hdr, pcm]));
}

/**
 * PCM (s16le mono) and rate of `text` spoken by eSpeak NG (22 050 Hz). `ssml`: the text is
 * SSML (`<break time="700ms"/>` makes a pause mid-sentence).
 */
export function espeak(text, dir, { voice = "en-us", wpm = 150, ssml = false } = {}) {
  const file = path.join(dir, "say.wav");
  execFileSync("espeak-ng", ["-v", voice, "-s", String(wpm), ...(ssml ? ["-m"] : []), "-w", file, text], { timeout: WAIT_MS });
  return readWav(file);
}

/**
 * Write a 16-bit mono WAV: `parts` are numbers (seconds of silence), strings (speech) or
 * `{ ssml }` (speech from SSML, e.g. with a `<break time="800ms"/>`).
 * Returns { file, rate, seconds, spans: [{text, start, end}] }.
 */
export function speechWav(file, parts, dir) {
  const speech = parts.map((p) => (typeof p === "string" ? espeak(p, dir) : p && p.ssml ? espeak(p.ssml, dir, { ssml: true }) : null));
  const rate = speech.find(Boolean).rate;
  assert.ok(speech.every((s) => !s || s.rate === rate), "one sample rate");
  const bufs = [], spans = [];
  let at = 0; // samples
  for (const [i, p] of parts.entries()) {
    const buf = speech[i] ? speech[i].pcm : Buffer.alloc(Math.round(p * rate) * 2);
    if (speech[i]) spans.push({ text: p.ssml ?? p, start: +(at / rate).toFixed(2), end: +((at + buf.length / 2) / rate).toFixed(2) });
    bufs.push(buf);
    at += buf.length / 2;
  }
  writeWav(file, rate, Buffer.concat(bufs));
  return { file, rate, seconds: at / rate, spans };
}

/** Word-level edit distance between two word arrays (the numerator of a word error rate). */
export function wordEdits(ref, hyp) {
  const d = Array.from({ length: ref.length + 1 }, (_, i) => [i, ...Array(hyp.length).fill(0)]);
  for (let j = 1; j <= hyp.length; j++) d[0][j] = j;
  for (let i = 1; i <= ref.length; i++) for (let j = 1; j <= hyp.length; j++)
    d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (ref[i - 1] === hyp[j - 1] ? 0 : 1));
  return d[ref.length][hyp.length];
}

// ------------------------------------------------------------------ the demo process
/** `parlor demo --listen 127.0.0.1:0 --web <repo>/web`; resolves once it printed its URL. */
export async function startDemo(name, extraArgs = []) {
  const errPath = path.join(OUT_DIR, `${name}.stderr.log`);
  const errFd = openSync(errPath, "w");
  const env = { ...process.env, NO_COLOR: "1", PARLOR_LOG: process.env.PARLOR_LOG || "parlor_agent=debug,parlor=info" };
  const listen = extraArgs.includes("--listen") ? [] : ["--listen", "127.0.0.1:0"];
  const proc = spawn(parlorBin(), ["demo", ...listen, "--web", WEB_DIR, ...extraArgs], { stdio: ["ignore", "pipe", errFd], env });
  closeSync(errFd);
  const rec = new Recorder("parlor demo");
  const lines = [];
  readline.createInterface({ input: proc.stdout }).on("line", (l) => { lines.push(l); rec.push("line", l); });
  proc.on("exit", (code, sig) => rec.push("exit", { code, sig }));
  proc.on("error", (e) => rec.push("exit", { error: e.message }));
  const demo = {
    proc, lines,
    stderrTail: (n = 6000) => (existsSync(errPath) ? stripAnsi(readFileSync(errPath, "utf8")).slice(-n) : ""),
    logs: (n = 5000) => `demo stdout: ${JSON.stringify(lines.slice(-40))}\ndemo stderr (tail):\n${demo.stderrTail(n)}`,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null || proc.pid === undefined) return;
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
      writeFileSync(path.join(OUT_DIR, `${name}.stdout.log`), lines.join("\n") + "\n");
    },
  };
  try {
    const early = rec.waitFor("exit", () => true, "", WAIT_MS + 1000).then((x) => { throw new Error(`parlor demo exited early ${JSON.stringify(x)}`); });
    early.catch(() => {});
    const open = await Promise.race([rec.waitFor("line", (l) => /^demo: open https?:\/\/\S+\/$/.test(l), "'demo: open' line"), early]);
    demo.url = open.split(" ").pop();
    demo.agentId = (lines.map((l) => /^demo: agent joined room \S+ as (\S+)$/.exec(l)).find(Boolean) || [])[1] || null;
  } catch (e) {
    await demo.stop();
    e.message += `\n${demo.logs(3000)}`;
    throw e;
  }
  return demo;
}

// ------------------------------------------------------------------ one page
export async function openPage(browser, url, name, contextOptions = {}) {
  const context = await browser.newContext({ permissions: ["microphone"], ...contextOptions });
  const page = await context.newPage();
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(url + (url.includes("?") ? "&" : "?") + "autojoin=1");
  const p = {
    name, page, context, consoleLines,
    state: () => page.evaluate(() => window.demo),
    stats: () => page.evaluate(() => window.demoStats()),
    async dump() {
      const s = await page.evaluate(async () => ({ demo: window.demo, stats: await window.demoStats?.(), status: document.getElementById("status")?.textContent }))
        .catch((e) => String(e));
      return `page ${name} state: ${JSON.stringify(s).slice(0, 6000)}\npage ${name} console (tail):\n${consoleLines.slice(-40).join("\n").slice(-4000)}`;
    },
    async close(shot) {
      writeFileSync(path.join(OUT_DIR, `${shot}-console.log`), consoleLines.join("\n") + "\n");
      await page.screenshot({ path: path.join(OUT_DIR, `${shot}.png`), fullPage: true }).catch(() => {});
      await context.close().catch(() => {});
    },
  };
  return p;
}

