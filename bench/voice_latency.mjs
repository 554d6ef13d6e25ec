// Voice-to-voice latency of `parlor demo` in Chromium, for N spoken questions: the agent's
// turn metrics (from the last window of speech it received to the reply's first audio handed
// to its voice) with their per-stage split (end of turn, speech-to-text, reply, voice), as
// medians and p95, and each question as heard. Prints a table; writes
// tests/conformance/out/voice-latency.json.
//
//   node bench/voice_latency.mjs [--questions 8] [--gap 12] [--engines neural|basic]
//   (PARLOR_BIN=target/release/parlor for a release build; the default is target/debug/parlor)
//
// The microphone is a WAV of eSpeak NG questions with `--gap` seconds after each (Chromium's
// fake capture). What the page adds on top (Opus, the network, its jitter buffer) is the
// transport's: push → frame p50 ≈ 13 ms each way on loopback (docs/performance.md).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { launchChromium, poll } from "../tests/conformance/lib/browser.mjs";
import { OUT_DIR, speechWav, startDemo, openPage } from "../tests/conformance/lib/demo.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const N = Number(arg("questions", 8));
const GAP = Number(arg("gap", 12));
const ENGINES = arg("engines", "neural");
const QUESTIONS = [
  "What time is it?", "What is your name?", "Hello there.", "What is the weather like today?",
  "Who are you?", "What is the time please?", "Tell me your name.", "Thank you very much.",
];
const pct = (xs, p) => {
  const s = xs.filter((x) => typeof x === "number").sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * (s.length - 1) + 0.5))] : NaN;
};

const dir = mkdtempSync(path.join(tmpdir(), "parlor-v2v-"));
mkdirSync(OUT_DIR, { recursive: true });
const questions = Array.from({ length: N }, (_, i) => QUESTIONS[i % QUESTIONS.length]);
const parts = [3];
for (const q of questions) parts.push(q, GAP);
const wav = speechWav(path.join(dir, "questions.wav"), parts, dir);
const demo = await startDemo("voice-latency", ["--engines", ENGINES]);
const browser = await launchChromium([`--use-file-for-fake-audio-capture=${wav.file}%noloop`]);
let human;
try {
  human = await openPage(browser, demo.url, "bench");
  await poll(human.state, (s) => s && s.joined, "the page to join", 30_000);
  console.error(`voice-latency: ${N} questions over ${wav.seconds.toFixed(0)} s (${ENGINES} engines)…`);
  await new Promise((r) => setTimeout(r, (wav.seconds + 4) * 1000));
  const st = await human.state();
  const me = st.peerId;
  const turns = st.metrics.filter((m) => m.peerId === me && typeof m.eouToFirstAudioMs === "number");
  const heard = st.transcripts.filter((x) => x.role === "human" && x.final && x.peerId === me).map((x) => x.text);
  console.log(`| # | asked | heard | end of speech → first audio (ms) | end of turn | speech-to-text | reply | voice | ended by |`);
  console.log(`|---|---|---|---|---|---|---|---|---|`);
  for (const [i, m] of turns.entries()) {
    const s = m.stages ?? {};
    console.log(`| ${i + 1} | ${questions[i] ?? ""} | ${heard[i] ?? ""} | ${m.eouToFirstAudioMs} | ${s.endOfTurnMs} | ${s.sttMs} | ${s.replyMs} | ${s.ttsMs} | ${m.endedBy} |`);
  }
  const col = (k) => turns.map((m) => (k === "total" ? m.eouToFirstAudioMs : m.stages?.[k]));
  const summary = { engines: ENGINES, asked: N, answered: turns.length, heard };
  for (const k of ["total", "endOfTurnMs", "sttMs", "replyMs", "ttsMs"]) summary[k] = { p50: pct(col(k), 0.5), p95: pct(col(k), 0.95) };
  console.log(`\nend of speech → first audio: p50 ${summary.total.p50} ms, p95 ${summary.total.p95} ms over ${turns.length} answered of ${N}`);
  for (const k of ["endOfTurnMs", "sttMs", "replyMs", "ttsMs"]) console.log(`  ${k}: p50 ${summary[k].p50}, p95 ${summary[k].p95}`);
  writeFileSync(path.join(OUT_DIR, "voice-latency.json"), JSON.stringify({ summary, turns }, null, 1));
} finally {
  await human?.close("voice-latency");
  await browser.close().catch(() => {});
  await demo.stop();
  rmSync(dir, { recursive: true, force: true });
}
