// The agent's own voice in the human's microphone, swept over echo levels and delays, in
// Chromium: the page mixes the agent's voice into what its microphone sends (`?echoDb=&
// echoDelayMs=`, as laptop speakers without echo cancellation would), the human types the
// weather question, and — double talk — says "What time is it?" over the reply 5 s later.
// For each level and delay it reports: how often the agent held its voice, turns it took of
// its own voice, whether the human's spoken question still interrupted the reply (barge-in
// during echo) and was answered, and whether it was heard right.
// `--gate both` also runs the demo with --no-echo-gate, `--aec both` with and without --echo-cancel,
// for comparison.
// Writes tests/conformance/out/voice-echo.json.
//
//   node bench/voice_echo.mjs [--db -12,-6,0] [--delay 0,100,200,300] [--gate on|off|both]
//       [--aec on|off|both]
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { launchChromium, poll } from "../tests/conformance/lib/browser.mjs";
import { OUT_DIR, openPage, speechWav, startDemo } from "../tests/conformance/lib/demo.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const DBS = arg("db", "-12,-6,0").split(",").map(Number);
const DELAYS = arg("delay", "0,100,200,300").split(",").map(Number);
const GATES = { on: [true], off: [false], both: [true, false] }[arg("gate", "on")];
const AECS = { on: [true], off: [false], both: [true, false] }[arg("aec", "off")];
const CONFIGS = GATES.flatMap((gate) => AECS.map((aec) => ({ gate, aec })));
const LEAD = 8; // s of silence in the microphone before the spoken question
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

mkdirSync(OUT_DIR, { recursive: true });
const dir = mkdtempSync(path.join(tmpdir(), "parlor-echo-"));
const wav = speechWav(path.join(dir, "talk.wav"), [LEAD, "What time is it?", 20], dir);
const rows = [];
try {
  for (const { gate, aec } of CONFIGS) {
    const label = `${gate ? "gate" : "nogate"}-${aec ? "aec" : "noaec"}`;
    const demo = await startDemo(`voice-echo-${label}`, [...(gate ? [] : ["--no-echo-gate"]), ...(aec ? ["--echo-cancel"] : [])]);
    const browser = await launchChromium([`--use-file-for-fake-audio-capture=${wav.file}%noloop`]);
    try {
      for (const db of DBS) for (const delay of DELAYS) {
        const page = await openPage(browser, `${demo.url}?echoDb=${db}&echoDelayMs=${delay}`, `echo${db}-${delay}`);
        try {
          const st = await poll(page.state, (s) => s && s.joined && s.peerId && s.echo && s.agentPeerId && s.controlOpen, "the page in the call", 30_000);
          const me = st.peerId;
          // Type the question so that the reply is ~4 s in when the spoken one starts.
          const wait = st.micAt + (LEAD - 5) * 1000 - await page.page.evaluate(() => performance.now());
          if (wait > 0) await sleep(wait);
          await page.page.fill("#say-text", "What is the weather like today?");
          await page.page.click("#say-send");
          const done = await poll(page.state, (s) => s.transcripts.some((x) => x.role === "agent" && x.peerId === me && x.final && /universal time/.test(x.text)),
            "the answer to the spoken question", 30_000).catch(() => null);
          await sleep(2000);
          const s = await page.state();
          const finals = s.transcripts.filter((x) => x.role === "human" && x.peerId === me && x.final).map((x) => x.text);
          const typed = "What is the weather like today?";
          const spoken = finals.filter((x) => x !== typed);
          const row = {
            gate, aec, db, delayMs: delay,
            holds: s.bargeIns.filter((x) => x.peerId === me).length,
            // Turns without the question's words: its own voice, or the question drowned in it.
            otherTurns: spoken.filter((x) => !/time/i.test(x)).length,
            spoken,
            answered: Boolean(done),
            replyInterrupted: s.transcripts.some((x) => x.role === "agent" && x.peerId === me && x.interrupted && /sunny/.test(x.text)),
          };
          rows.push(row);
          console.error(`voice-echo: ${JSON.stringify(row)}`);
        } finally {
          await page.close(`voice-echo-${label}${db}-${delay}`);
        }
      }
    } finally {
      await browser.close().catch(() => {});
      await demo.stop();
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(`\n| echo gate | echo canceller | echo level | delay | holds | the human's "What time is it?" over the reply | heard as (every human turn) |`);
console.log(`|---|---|---|---|---|---|---|`);
for (const r of rows) {
  console.log(`| ${r.gate ? "on" : "off"} | ${r.aec ? "on" : "off"} | ${r.db} dB | ${r.delayMs} ms | ${r.holds} | ${r.answered ? (r.replyInterrupted ? "interrupted the reply, answered" : "answered") : "not answered"} | ${JSON.stringify(r.spoken.join(" | "))} |`);
}
writeFileSync(path.join(OUT_DIR, "voice-echo.json"), JSON.stringify(rows, null, 1));
