// The voice agent measured as a person meets it: `parlor demo` in Chromium, its microphone fed
// an evaluation set spoken by several voices (Chromium's fake capture → Opus → the agent).
// For each item it reads what the page shows: the human's final transcripts, the agent's
// replies and its per-turn metrics. It prints, per voice and in total:
//   - recognition: word error rate (the finals of an item against what was said) and intent
//     accuracy (the rule reply's topic — weather, time, name, hello, goodbye, other — against
//     the one the question asks for);
//   - voice-to-voice: the agent's end of speech → first reply audio, p50/p95, and its stages;
//   - turn-taking: questions with a 600–900 ms pause mid-sentence answered into the pause;
//   - false interruptions: a backchannel or a cough during a reply, and whether the reply was
//     still said to its end.
// Writes tests/conformance/out/voice-eval-<label>.json.
//
//   node bench/voice_eval.mjs [--engines neural|basic] [--stt whisper-tiny.en|whisper-base] [--stt-window SECS] [--stt-prompt none|rules|TEXT] [--stt-boost none|rules|WORDS] [--stt-boost-by LOGITS] [--stt-beams N] [--turn-words on|off]
//       [--voices espeak,espeak-f3,festival,piper,piper-fast,piper-noise] [--gap 7] [--label x]
//       [--limit N: the first N questions, paused questions and backchannels only]
//       [--only question,paused,held-out,held-out-2,held-out-3,held-out-4,backchannel: these lists only]
//   (PARLOR_BIN=target/release/parlor for a release build; default target/debug/parlor)
//
// Voices: eSpeak NG (en-us, 150 wpm; en-us+f3 at 190 wpm), Festival's HTS voice cmu_us_slt
// (Debian festival + festvox-us-slt-hts, skipped with a note when absent), Piper joe (the
// agent's own voice model, at 1× and 1.25×, and at 1× with white noise at 10 dB SNR).
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { launchChromium, poll } from "../tests/conformance/lib/browser.mjs";
import { parlorBin } from "../tests/conformance/lib/parlor.mjs";
import { OUT_DIR, espeak, openPage, readWav, startDemo, wordEdits, writeWav } from "../tests/conformance/lib/demo.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const ENGINES = arg("engines", "neural");
const STT = arg("stt", "whisper-tiny.en");
const STT_WINDOW = Number(arg("stt-window", 0)); // parlor demo --stt-window
const STT_PROMPT = arg("stt-prompt", "none"); // parlor demo --stt-prompt (none, rules or text)
const STT_BOOST = arg("stt-boost", null); // parlor demo --stt-boost (none, rules or words); unset: the demo's default
const STT_BOOST_BY = arg("stt-boost-by", null); // parlor demo --stt-boost-by (logits)
const STT_BEAMS = arg("stt-beams", null); // parlor demo --stt-beams (hypotheses)
const TURN_WORDS = arg("turn-words", null); // parlor demo --turn-words (on|off)
const GAP = Number(arg("gap", 7));
const VOICES = arg("voices", "espeak,espeak-f3,festival,piper,piper-fast,piper-noise").split(",");
const LABEL = arg("label", ENGINES === "basic" ? "basic" : STT);
const LIMIT = Number(arg("limit", Infinity)); // the first N of each list (a quick look)
const ONLY = arg("only", "question,paused,held-out,held-out-2,held-out-3,held-out-4,backchannel").split(","); // which lists
const RATE = 22_050;

// The questions and the topic of the rule reply each asks for.
const QUESTIONS = [
  ["What is the weather like today?", "weather"],
  ["Will it rain tomorrow?", "weather"],
  ["What's the forecast for the weekend?", "weather"],
  ["Is it going to be sunny this afternoon?", "weather"],
  ["What time is it?", "time"],
  ["Could you tell me the time please?", "time"],
  ["Do you know what time it is right now?", "time"],
  ["How late is it?", "time"],
  ["What is your name?", "name"],
  ["Who are you?", "name"],
  ["Who am I talking to?", "name"],
  ["Hello there.", "hello"],
  ["Hi, how are you doing today?", "hello"],
  ["Goodbye, and thanks for your help.", "bye"],
  ["Thank you very much.", "other"],
  ["I would like a cup of coffee.", "other"],
];
// Questions with a pause mid-sentence (600–900 ms): one turn, not two.
const PAUSED = [
  ["Could you tell me", "what time it is?", "time"],
  ["What is the weather", "like in Paris tomorrow?", "weather"],
  ["I would like to know", "the time in London.", "time"],
  ["Tell me about", "the weather today.", "weather"],
  ["Do you know", "what time it is?", "time"],
  ["Can you tell me", "your name please?", "name"],
  ["I was wondering", "if it will rain today.", "weather"],
  ["So, what is", "your name?", "name"],
];
// More of them, written when the pre-question rule (parlor_agent::turn::PRE_QUESTIONS) went
// in and never tuned against: some end on its endings, some on other ways to ask. Reported
// apart ("held out"), so the rule is measured on sentences it was not made from.
const PAUSED_HELD_OUT = [
  ["Would you mind telling me", "what the weather is like?", "weather"],
  ["Do you happen to know", "who I am talking to?", "name"],
  ["Please tell me", "how late it is.", "time"],
  ["I wanted to ask you", "about the weather.", "weather"],
  ["Hey, can you remind me", "what time it is?", "time"],
  ["And what about", "the weather tomorrow?", "weather"],
  ["Tell me", "your name.", "name"],
  ["Is it going", "to rain later?", "weather"],
];
// A second held-out set, written on 2026-12-07 with the rules' next change (the verb forms and
// the "what about" / "is it going" endings the first held-out set missed) and run before and
// after it, never tuned against: two ("Are we going", "How about") end on the new endings by
// design, the other six on none of the rules' endings.
const PAUSED_HELD_OUT_2 = [
  ["Could you check for me", "whether it will rain today?", "weather"],
  ["I was just thinking about", "the weather this weekend.", "weather"],
  ["So tell me,", "what is the time right now?", "time"],
  ["Are we going", "to be sunny tomorrow?", "weather"],
  ["What I would really like to know is", "the time.", "time"],
  ["Can you explain to me", "what your name is?", "name"],
  ["How about", "the forecast for Sunday?", "weather"],
  ["My question is", "what time it is.", "time"],
];
// A third held-out set, written on 2026-12-07 before the words' language model
// (parlor_voice::text_turn, `--turn-words`) was first tried, and never tuned against: first
// halves that end on none of the rules' endings, as new users phrase requests.
const PAUSED_HELD_OUT_3 = [
  ["Could you find out", "what the weather will be tomorrow?", "weather"],
  ["I need to know", "what time it is.", "time"],
  ["Can you give me", "the forecast for Monday?", "weather"],
  ["Would you please let me know", "your name?", "name"],
  ["Is there any chance", "of rain this evening?", "weather"],
  ["Let me ask you", "what your name is.", "name"],
  ["Could you look up", "the time in Tokyo?", "time"],
  ["What do you think", "the weather will be like tomorrow?", "weather"],
];
// A fourth held-out set, written on 2026-12-08 after run rel-9 and before any run of it, and
// never tuned against: first halves on none of the rules' endings, to firm up the pause rate
// on new phrasings with the words' model.
const PAUSED_HELD_OUT_4 = [
  ["Do you have any idea", "what time it is?", "time"],
  ["I'm curious about", "the weather this weekend.", "weather"],
  ["Would you be able to check", "the forecast for Friday?", "weather"],
  ["I'd love to hear", "what your name is.", "name"],
  ["Any chance you could say", "what time it is?", "time"],
  ["Before I go, I want to know", "if it will rain.", "weather"],
  ["Can you figure out", "the time in Berlin?", "time"],
  ["Let me check with you about", "tomorrow's weather.", "weather"],
];
const PAUSES_MS = [600, 700, 800, 900];
// Said ~1.5 s into the agent's (three-sentence, ~10 s) weather reply.
const BACKCHANNELS = ["Uh-huh.", "Okay.", "(cough)", "Yeah."];

/** The rule reply's topic, from what the agent said first. */
function topic(reply) {
  if (!reply) return null;
  if (/sunny/i.test(reply)) return "weather";
  if (/^It is \d/.test(reply)) return "time";
  if (/^Goodbye/.test(reply)) return "bye";
  if (/^Hello!/.test(reply)) return "hello";
  if (/^I am the Parlor/.test(reply)) return "name";
  if (/^I heard you say/.test(reply)) return "other";
  return "?";
}

const norm = (s) => s.toLowerCase().replace(/[^a-z0-9' ]/g, " ").replace(/'/g, "").split(/\s+/).filter(Boolean);
const pct = (xs, p) => {
  const s = xs.filter((x) => typeof x === "number").sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * (s.length - 1) + 0.5))] : NaN;
};

// ------------------------------------------------------------------ the voices (22 050 Hz PCM)
const dir = mkdtempSync(path.join(tmpdir(), "parlor-eval-"));
const asInt16 = (buf) => new Int16Array(buf.buffer, buf.byteOffset, buf.length / 2);
function resample(pcm, from) {
  if (from === RATE) return pcm;
  const x = asInt16(pcm), n = Math.floor(x.length * RATE / from), out = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) {
    const t = i * from / RATE, j = Math.floor(t), f = t - j;
    out.writeInt16LE(Math.round(x[j] + ((x[j + 1] ?? x[j]) - x[j]) * f), i * 2);
  }
  return out;
}
let seed = 12345;
const random = () => { // mulberry32: the same noise every run
  seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
function withNoise(pcm, snrDb) {
  const x = asInt16(pcm);
  const rms = Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length);
  const sigma = rms / 10 ** (snrDb / 20);
  const out = Buffer.alloc(pcm.length);
  for (let i = 0; i < x.length; i++) {
    const g = Math.sqrt(-2 * Math.log(random() + 1e-12)) * Math.cos(2 * Math.PI * random());
    out.writeInt16LE(Math.max(-32767, Math.min(32767, Math.round(x[i] + g * sigma))), i * 2);
  }
  return out;
}
function cough() {
  const n = Math.round(0.3 * RATE), out = Buffer.alloc(n * 2);
  let lp = 0;
  for (let i = 0; i < n; i++) {
    const env = Math.min(1, i / (0.01 * RATE)) * Math.exp(-i / (0.08 * RATE));
    lp += 0.35 * ((random() * 2 - 1) - lp);
    out.writeInt16LE(Math.round(lp * env * 30000), i * 2);
  }
  return out;
}
const haveFestival = (() => { try { execFileSync("which", ["text2wave"]); return true; } catch { return false; } })();
function festival(text) {
  const txt = path.join(dir, "f.txt"), wav = path.join(dir, "f.wav");
  writeFileSync(txt, text);
  execFileSync("text2wave", ["-F", String(RATE), "-eval", "(voice_cmu_us_slt_arctic_hts)", "-o", wav, txt], { timeout: 60_000 });
  const w = readWav(wav);
  return resample(w.pcm, w.rate);
}
function piper(text, speed = 1) {
  const wav = path.join(dir, "p.wav");
  execFileSync(parlorBin(), ["say", "--voice", "piper", "--speed", String(speed), "-o", wav, text], { timeout: 120_000, stdio: ["ignore", "ignore", "pipe"] });
  const w = readWav(wav);
  return resample(w.pcm, w.rate);
}
/** Piper saying `a b` in one breath, with `secs` of silence put in between `a` and `b`. */
function pausedPiper(a, b, secs) {
  const whole = asInt16(piper(`${a} ${b}`));
  const first = asInt16(piper(a));
  let end = first.length; // the first half alone, without its trailing quiet
  while (end > 0 && Math.abs(first[end - 1]) < 300) end--;
  const hop = Math.round(0.01 * RATE);
  let best = end, bestE = Infinity;
  for (let c = Math.max(hop, end - Math.round(0.25 * RATE)); c < Math.min(whole.length - hop, end + Math.round(0.1 * RATE)); c += hop / 2) {
    let e = 0;
    for (let k = c - hop / 2; k < c + hop / 2; k++) e += whole[k] * whole[k];
    if (e < bestE) { bestE = e; best = c; }
  }
  const buf = Buffer.from(whole.buffer, whole.byteOffset, whole.length * 2);
  return Buffer.concat([buf.subarray(0, best * 2), silence(secs), buf.subarray(best * 2)]);
}
const es = (text, opts) => { const w = espeak(text, dir, opts); return resample(w.pcm, w.rate); };
const SPEAK = {
  "espeak": (t) => es(t),
  "espeak-f3": (t) => es(t, { voice: "en-us+f3", wpm: 190 }),
  "festival": (t) => festival(t),
  "piper": (t) => piper(t),
  "piper-fast": (t) => piper(t, 1.25),
  "piper-noise": (t) => withNoise(piper(t), 10),
};
const silence = (secs) => Buffer.alloc(Math.round(secs * RATE) * 2);

// ------------------------------------------------------------------ the evaluation WAV
const items = []; // {kind, voice, text, intent, start, end, pauseMs?}
const bufs = [silence(3)];
let at = 3;
const add = (item, pcm, gap) => {
  const secs = pcm.length / 2 / RATE;
  items.push({ ...item, start: +at.toFixed(2), end: +(at + secs).toFixed(2) });
  bufs.push(pcm, silence(gap));
  at += secs + gap;
};
const voices = VOICES.filter((v) => {
  if (!SPEAK[v]) throw new Error(`no voice ${v}; the voices are ${Object.keys(SPEAK).join(", ")}`);
  if (v === "festival" && !haveFestival) { console.error("voice-eval: festival skipped (apt install festival festvox-us-slt-hts)"); return false; }
  return true;
});
console.error(`voice-eval: synthesizing ${voices.length} voices × ${QUESTIONS.length} questions, ${PAUSED.length * 2} paused, ${BACKCHANNELS.length} backchannels…`);
const lists = (name, list) => (ONLY.includes(name) ? list.slice(0, LIMIT) : []);
for (const v of voices) for (const [text, intent] of lists("question", QUESTIONS)) add({ kind: "question", voice: v, text, intent }, SPEAK[v](text), GAP);
for (const [set, list] of [["paused", PAUSED], ["held-out", PAUSED_HELD_OUT], ["held-out-2", PAUSED_HELD_OUT_2], ["held-out-3", PAUSED_HELD_OUT_3], ["held-out-4", PAUSED_HELD_OUT_4]]) for (const [i, [a, b, intent]] of lists(set, list).entries()) {
  const ms = PAUSES_MS[i % PAUSES_MS.length];
  // eSpeak says it as one sentence with a break; Piper says the whole sentence, cut at the
  // word boundary (the quietest 10 ms near where the first half alone ends) and the silence
  // put in: in both the intonation runs on through the pause, as a person's does.
  add({ kind: "paused", set, voice: "espeak", text: `${a} ${b}`, intent, pauseMs: ms },
    es(`<speak>${a} <break time="${ms}ms"/> ${b}</speak>`, { ssml: true }), GAP);
  add({ kind: "paused", set, voice: "piper", text: `${a} ${b}`, intent, pauseMs: ms },
    pausedPiper(a, b, ms / 1000), GAP);
}
for (const bc of lists("backchannel", BACKCHANNELS)) {
  const q = "What is the weather like today?";
  const qp = piper(q);
  const extra = bc === "(cough)" ? cough() : es(bc);
  // The reply starts ~1 s after the question; the backchannel comes 2.5 s after it ends.
  const pcm = Buffer.concat([qp, silence(2.5), extra]);
  add({ kind: "backchannel", voice: "piper", text: q, intent: "weather", backchannel: bc, backchannelAt: +(qp.length / 2 / RATE + 2.5).toFixed(2) }, pcm, 14);
}
const wavFile = path.join(dir, "eval.wav");
writeWav(wavFile, RATE, Buffer.concat(bufs));

// ------------------------------------------------------------------ the run
mkdirSync(OUT_DIR, { recursive: true });
const extra = ENGINES === "basic" ? ["--engines", "basic"] : ["--engines", ENGINES, "--stt", STT, "--stt-window", String(STT_WINDOW), "--stt-prompt", STT_PROMPT,
  ...(STT_BOOST === null ? [] : ["--stt-boost", STT_BOOST]), ...(STT_BOOST_BY === null ? [] : ["--stt-boost-by", STT_BOOST_BY]),
  ...(STT_BEAMS === null ? [] : ["--stt-beams", STT_BEAMS]), ...(TURN_WORDS === null ? [] : ["--turn-words", TURN_WORDS])];
const demo = await startDemo(`voice-eval-${LABEL}`, extra);
const browser = await launchChromium([`--use-file-for-fake-audio-capture=${wavFile}%noloop`]);
let human;
try {
  human = await openPage(browser, demo.url, `eval-${LABEL}`);
  await poll(human.state, (s) => s && s.joined && s.micAt !== null, "the page to join", 30_000);
  console.error(`voice-eval: ${items.length} items over ${(at / 60).toFixed(1)} min (${LABEL})…`);
  const started = Date.now();
  while (Date.now() - started < (at + 6) * 1000) {
    await new Promise((r) => setTimeout(r, 30_000));
    const st = await human.state();
    const finals = st.transcripts.filter((x) => x.role === "human" && x.final).length;
    console.error(`voice-eval: ${((Date.now() - started) / 1000).toFixed(0)} s of ${at.toFixed(0)}, ${finals} human turns so far`);
  }
  const st = await human.state();
  const me = st.peerId;
  const t0 = st.micAt;
  const win = (i) => [t0 + items[i].start * 1000, i + 1 < items.length ? t0 + items[i + 1].start * 1000 : Infinity];
  const inWin = (i, t) => { const [a, b] = win(i); return t >= a && t < b; };
  for (const [i, it] of items.entries()) {
    const finals = st.transcripts.filter((x) => x.role === "human" && x.peerId === me && x.final && inWin(i, x.tFinal ?? x.t));
    const replies = st.transcripts.filter((x) => x.role === "agent" && x.peerId === me && inWin(i, x.t));
    const metrics = st.metrics.filter((x) => x.peerId === me && typeof x.eouToFirstAudioMs === "number" && inWin(i, x.t));
    it.heard = finals.map((x) => x.text).join(" | ");
    it.turns = finals.length;
    const ref = norm(it.text), hyp = norm(finals.map((x) => x.text).join(" "));
    it.edits = wordEdits(ref, hyp);
    it.words = ref.length;
    it.reply = replies[0]?.text ?? null;
    it.topic = topic(it.reply);
    it.metrics = metrics[0] ?? null;
    if (it.kind === "paused") it.answeredIntoPause = metrics.length > 1 || finals.length > 1;
    if (it.kind === "backchannel") {
      it.resumed = st.resumes.filter((x) => x.peerId === me && inWin(i, x.t)).length;
      it.bargeIns = st.bargeIns.filter((x) => x.peerId === me && inWin(i, x.t)).length;
      it.replyCompleted = replies.some((x) => /long walk/.test(x.text));
    }
  }
} finally {
  await human?.close(`voice-eval-${LABEL}`);
  await browser.close().catch(() => {});
  await demo.stop();
  rmSync(dir, { recursive: true, force: true });
}

// ------------------------------------------------------------------ the report
const rows = [];
const summarize = (name, its) => {
  const words = its.reduce((a, x) => a + x.words, 0), errs = its.reduce((a, x) => a + x.edits, 0);
  const lat = its.map((x) => x.metrics?.eouToFirstAudioMs);
  const row = {
    name, n: its.length, wer: words ? errs / words : NaN,
    intent: its.filter((x) => x.topic === x.intent).length / its.length,
    answered: its.filter((x) => x.metrics).length,
    p50: pct(lat, 0.5), p95: pct(lat, 0.95),
    stages: Object.fromEntries(["endOfTurnMs", "sttMs", "replyMs", "ttsMs"].map((k) => [k, pct(its.map((x) => x.metrics?.stages?.[k]), 0.5)])),
    byModel: its.filter((x) => x.metrics?.endedBy === "end-of-turn model").length,
    byWords: its.filter((x) => x.metrics?.endedBy === "words read finished").length,
    prepared: its.filter((x) => x.metrics?.prepared).length,
  };
  rows.push(row);
  return row;
};
const questions = items.filter((x) => x.kind === "question");
const paused = items.filter((x) => x.kind === "paused" && x.set === "paused");
const heldOut = items.filter((x) => x.kind === "paused" && x.set === "held-out");
const heldOut2 = items.filter((x) => x.kind === "paused" && x.set === "held-out-2");
const heldOut3 = items.filter((x) => x.kind === "paused" && x.set === "held-out-3");
const heldOut4 = items.filter((x) => x.kind === "paused" && x.set === "held-out-4");
const bcs = items.filter((x) => x.kind === "backchannel");
if (questions.length) {
  for (const v of voices) summarize(v, questions.filter((x) => x.voice === v));
  summarize("all questions", questions);
}
if (paused.length) summarize("paused (as one question)", paused);
if (heldOut.length) summarize("paused, held out (as one question)", heldOut);
if (heldOut2.length) summarize("paused, held out 2 (as one question)", heldOut2);
if (heldOut3.length) summarize("paused, held out 3 (as one question)", heldOut3);
if (heldOut4.length) summarize("paused, held out 4 (as one question)", heldOut4);
console.log(`\n### ${LABEL} (${ENGINES} engines)\n`);
console.log(`| voice | items | WER | intent | answered | end of speech → first audio p50 / p95 (ms) | end of turn p50 | speech-to-text p50 | reply p50 | voice p50 | ended by the model / by words read finished | replies prepared in the pause |`);
console.log(`|---|---|---|---|---|---|---|---|---|---|---|---|`);
const f = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : "–");
for (const r of rows) {
  console.log(`| ${r.name} | ${r.n} | ${f(100 * r.wer, 1)} % | ${f(100 * r.intent)} % | ${r.answered} | ${f(r.p50)} / ${f(r.p95)} | ${f(r.stages.endOfTurnMs)} | ${f(r.stages.sttMs)} | ${f(r.stages.replyMs)} | ${f(r.stages.ttsMs)} | ${r.byModel} / ${r.byWords} | ${r.prepared} |`);
}
for (const [name, set] of [["", paused], [" (held out)", heldOut], [" (held out 2)", heldOut2], [" (held out 3)", heldOut3], [" (held out 4)", heldOut4]]) {
  if (!set.length) continue;
  const into = set.filter((x) => x.answeredIntoPause);
  console.log(`\nanswered into a 600–900 ms pause${name}: ${into.length} of ${set.length} (${f(100 * into.length / set.length)} %)` +
    (into.length ? `: ${into.map((x) => `${x.voice} "${x.heard}"`).join("; ")}` : ""));
}
if (bcs.length) console.log(`false interruptions (during the weather reply): ` + bcs.map((x) =>
  `${x.backchannel} → ${x.replyCompleted ? "reply said to its end" : "reply lost"} (holds ${x.bargeIns}, resumed ${x.resumed})`).join("; "));
console.log(`\nper item:`);
for (const x of items) console.log(`  ${x.kind.padEnd(11)} ${x.voice.padEnd(11)} ${JSON.stringify(x.text)} → ${JSON.stringify(x.heard)} [${x.topic ?? "no reply"}${x.topic === x.intent ? "" : " ≠ " + x.intent}] ${x.metrics ? x.metrics.eouToFirstAudioMs + " ms " + x.metrics.endedBy + (x.metrics.prepared ? " (prepared)" : "") : ""}`);
writeFileSync(path.join(OUT_DIR, `voice-eval-${LABEL}.json`), JSON.stringify({ label: LABEL, engines: ENGINES, stt: STT, sttPrompt: STT_PROMPT, sttBoost: STT_BOOST, sttBoostBy: STT_BOOST_BY, sttBeams: STT_BEAMS, turnWords: TURN_WORDS, rows, items }, null, 1));
