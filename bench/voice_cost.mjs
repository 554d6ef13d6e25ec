// What the voice agent costs: `parlor demo` (server + agent + engines in one process) measured
// from /proc while Chromium pages call it.
//   - memory: the process's RSS once the engines are loaded, before any call;
//   - a listening session: the process's CPU with 0, 1 and 4 silent pages in the call (each
//     runs the speech detector on every window of its microphone; nothing is said);
//   - an active turn: the CPU one spoken question and its answer add (speech-to-text, the
//     end-of-turn model, the reply, the voice, Opus), over a silent session's.
// Prints a table; writes tests/conformance/out/voice-cost-<engines>.json.
//
//   node bench/voice_cost.mjs [--engines neural|basic] [--seconds 20] [--echo-cancel]
//   (PARLOR_BIN=target/release/parlor for a release build; default target/debug/parlor)
import { readFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { launchChromium, poll } from "../tests/conformance/lib/browser.mjs";
import { OUT_DIR, openPage, speechWav, startDemo, writeWav } from "../tests/conformance/lib/demo.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const ENGINES = arg("engines", "neural");
const SECONDS = Number(arg("seconds", 20));
// With the agent's echo canceller, to see what it costs.
const AEC = process.argv.includes("--echo-cancel");
const LABEL = `${ENGINES}${AEC ? "-aec" : ""}`;
const TICK = 100; // USER_HZ on Linux
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** CPU seconds (user + system) of `pid` so far. */
function cpu(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / TICK;
}
const rssMb = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) / 1024;
/** The share of one core `pid` used over `secs`. */
async function load(pid, secs) {
  const c0 = cpu(pid), t0 = Date.now();
  await sleep(secs * 1000);
  return (cpu(pid) - c0) / ((Date.now() - t0) / 1000);
}

mkdirSync(OUT_DIR, { recursive: true });
const dir = mkdtempSync(path.join(tmpdir(), "parlor-cost-"));
const quiet = path.join(dir, "quiet.wav");
writeWav(quiet, 16_000, Buffer.alloc(16_000 * 2 * 600));
const demo = await startDemo(`voice-cost-${LABEL}`, ["--engines", ENGINES, ...(AEC ? ["--echo-cancel"] : [])]);
const pid = demo.proc.pid;
const out = { engines: ENGINES, echoCancel: AEC, seconds: SECONDS };
let browser, talk;
const pages = [];
try {
  await sleep(2000);
  out.rssMb = rssMb(pid);
  out.idle = await load(pid, SECONDS);
  browser = await launchChromium([`--use-file-for-fake-audio-capture=${quiet}%noloop`]);
  const join = async (n) => {
    while (pages.length < n) {
      const p = await openPage(browser, demo.url, `cost-${pages.length}`);
      await poll(p.state, (s) => s && s.joined && s.agentPeerId && s.controlOpen, "a page in the call", 30_000);
      pages.push(p);
    }
    await sleep(3000);
  };
  await join(1);
  out.one = await load(pid, SECONDS);
  await join(4);
  out.four = await load(pid, SECONDS);
  out.rssMbFour = rssMb(pid);
  out.perSession = (out.four - out.one) / 3;
  for (const p of pages.splice(0)) await p.close(`voice-cost-${LABEL}-quiet`);
  await browser.close();

  // One page asks one question; its CPU beyond a silent session's is the turn's.
  const wav = speechWav(path.join(dir, "ask.wav"), [4, "What time is it?", 16], dir);
  browser = await launchChromium([`--use-file-for-fake-audio-capture=${wav.file}%noloop`]);
  talk = await openPage(browser, demo.url, "cost-talk");
  await poll(talk.state, (s) => s && s.joined && s.agentPeerId && s.controlOpen, "the talking page in the call", 30_000);
  const c0 = cpu(pid), t0 = Date.now();
  const answered = await poll(talk.state, (s) => s.transcripts.some((x) => x.role === "agent" && x.final && x.peerId === s.peerId && /universal time|say goodbye|heard you/i.test(x.text)) &&
    s.states.filter((x) => x.peerId === s.peerId).at(-1)?.state === "listening", "the answer, said to its end", 40_000);
  await sleep(1000);
  const secs = (Date.now() - t0) / 1000;
  out.turn = { seconds: secs, cpuSeconds: cpu(pid) - c0, heard: answered.transcripts.filter((x) => x.role === "human" && x.final).map((x) => x.text) };
  out.turn.beyondListening = out.turn.cpuSeconds - secs * out.one;
  out.rssMbAfter = rssMb(pid);
} finally {
  for (const p of pages) await p.close("voice-cost-quiet").catch(() => {});
  await talk?.close(`voice-cost-${LABEL}-talk`).catch(() => {});
  await browser?.close().catch(() => {});
  await demo.stop();
  rmSync(dir, { recursive: true, force: true });
}
const pc = (x) => `${(100 * x).toFixed(1)} %`;
console.log(`\n### ${ENGINES} engines, echo canceller ${AEC ? "on" : "off"} (one \`parlor demo\` process: server, agent, engines)\n`);
console.log(`| what | figure |`);
console.log(`|---|---|`);
console.log(`| RSS with the engines loaded, no call | ${out.rssMb.toFixed(0)} MB |`);
console.log(`| CPU, no call | ${pc(out.idle)} of a core |`);
console.log(`| CPU, 1 silent session | ${pc(out.one)} |`);
console.log(`| CPU, 4 silent sessions | ${pc(out.four)} (RSS ${out.rssMbFour.toFixed(0)} MB) |`);
console.log(`| CPU per listening session (4 − 1, ÷ 3) | ${pc(out.perSession)} |`);
console.log(`| one spoken turn ("What time is it?" and its ~4 s answer) | ${out.turn.cpuSeconds.toFixed(2)} CPU-s over ${out.turn.seconds.toFixed(1)} s; ${out.turn.beyondListening.toFixed(2)} CPU-s beyond a listening session (heard ${JSON.stringify(out.turn.heard)}) |`);
writeFileSync(path.join(OUT_DIR, `voice-cost-${LABEL}.json`), JSON.stringify(out, null, 1));
