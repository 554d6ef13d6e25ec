// The whole `parlor demo` in Chromium: `parlor demo --listen 127.0.0.1:0` (server + voice
// agent + page on one port) and the page (web/) in headless Debian Chromium, its microphone
// fed from a WAV of eSpeak NG speech (`--use-file-for-fake-audio-capture`).
//
// One human (the WAV says "What is the weather like today?", then, while the agent's three
// sentence reply is still playing, "Hello, what is your name?"):
//   (a) a human transcript containing "weather" tagged with the page's peer id;
//   (b) the reply is heard: inbound-rtp audio packetsReceived and totalAudioEnergy grow while
//       the agent's state is "speaking";
//   (c) barge-in: the second utterance interrupts the reply; a barge-in message arrives and the
//       inbound audio energy goes flat (measured from page-side getStats samples every 50 ms);
//   (d) the metrics message arrives: eouToFirstAudioMs and its per-stage split;
//   (e) hang-up over the "control" data channel: state "ended" for our id, "bye" on the
//       channel, and the page shows "call ended" (then "Call again" joins as a new peer);
//   (f) screenshots out/demo-call.png (during the call) and out/demo.png (call ended).
// The demo runs its default (neural) engines: the page names them, and the weather question
// must come back with at most two words wrong (Whisper tiny.en; the basic engines' PocketSphinx
// misheard most of it).
// Two humans (two browsers, two WAVs: "weather" and "What time is it?"): each one's transcript
// is tagged with its own peer id, on both pages. Beyond loopback: https/wss with a generated
// CA. The agent's own voice mixed into the page's microphone: no turn of it, and with the
// human talking over the reply, one hold and an answer said to its end. Turn-taking: a
// question with an 800 ms pause mid-sentence is one turn; a backchannel ("Okay.") during the
// reply does not cost the rest of it.
//
// Run: node --test browser/demo.test.mjs   (PARLOR_BIN=... ; PARLOR_LOG=... for the demo)
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { launchChromium, poll } from "../lib/browser.mjs";
import { OUT_DIR, speechWav, startDemo, openPage, wordEdits } from "../lib/demo.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Everything one describe block waits for shares its budget (from the start of its `before`),
// so a demo that never answers fails the file in about two minutes, not after every wait's
// own timeout. A passing run needs ~25 s and ~17 s here (2 cores).
const BUDGET_MS = 75_000;
const BUDGET_TWO_MS = 50_000;
const BARGE_IN_STOP_BOUND_MS = 1500; // barge-in message -> the agent's voice energy goes flat
const SAMPLE_MS = 50;

/** Run `fn`; a failure's message gets the page's state and the demo's logs. */
async function withContext(fn, parts) {
  try { await fn(); } catch (e) {
    const { human, demo } = parts();
    if (human) e.message += "\n" + await human.dump();
    e.message += `\n${demo ? demo.logs() : "(no demo)"}`;
    throw e;
  }
}

/** Close what a describe block opened (a screenshot of the page as `shot` first). */
async function teardown(shot, { human, browser, demo, dir }) {
  await human?.close(shot);
  await browser?.close().catch(() => {});
  await demo?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
}

const humanLines = (st, re) => st.transcripts.filter((x) => x.role === "human" && re.test(x.text));

describe("parlor demo: the page in Chromium talks to the voice agent", () => {
  let dir, wav, demo, browser, human;
  let deadline = Infinity;
  const left = () => Math.max(1000, deadline - Date.now());
  const check = async (fn) => {
    try { await fn(); } catch (e) { e.message += `\n${human ? await human.dump() : "(no page)"}\n${demo ? demo.logs() : "(no demo)"}`; throw e; }
  };

  before(async () => {
    deadline = Date.now() + BUDGET_MS;
    mkdirSync(OUT_DIR, { recursive: true });
    dir = mkdtempSync(path.join(tmpdir(), "parlor-demo-"));
    // The 3 s lead-in leaves time to join and connect before the first words; %noloop: the
    // file plays once (then silence), so each sentence is said exactly once. "Hello." warms
    // the recognizer up (PocketSphinx often mishears a human's first utterance, e.g. "what is
    // not whether like to do you"); the agent's answer to it is over before the question.
    // The name question comes 4 s after the weather question: the agent is still talking
    // then whichever reply it chose (the weather one is ~12 s, "I heard you say…" ~5 s).
    wav = speechWav(path.join(dir, "human.wav"),
      [3, "Hello.", 8, "What is the weather like today?", 4, "Hello, what is your name?", 8], dir);
    demo = await startDemo("demo");
    browser = await launchChromium([`--use-file-for-fake-audio-capture=${wav.file}%noloop`]);
    human = await openPage(browser, demo.url, "human");
  });

  after(async () => {
    await human?.close("demo-last"); // the page as the test left it (demo.png: call ended)
    await browser?.close().catch(() => {});
    await demo?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("transcript, reply audio, barge-in, metrics, hang-up", { timeout: BUDGET_MS + 30_000 }, (t) => check(async () => {
    const { page } = human;
    t.diagnostic(`human WAV ${wav.seconds.toFixed(1)} s at ${wav.rate} Hz: ${JSON.stringify(wav.spans)}; demo at ${demo.url}, agent ${demo.agentId}`);
    const st0 = await poll(human.state, (s) => s && s.joined && s.peerId, "the page to join", left());
    const me = st0.peerId;
    await page.waitForFunction(() => window.demo.agentPeerId, null, { timeout: left() });
    // Sample the agent's inbound audio every 50 ms in the page from now on.
    await page.evaluate((ms) => {
      window.samples = [];
      window.sampler = setInterval(async () => { const s = await window.demoStats(); if (s) window.samples.push(s); }, ms);
    }, SAMPLE_MS);

    // (a) what the human said, tagged with our peer id
    // Done when "weather" is heard, or when all three utterances were heard without it.
    const heard = await poll(human.state, (s) => humanLines(s, /weather/i).length > 0 || humanLines(s, /./).length >= 3,
      "a human transcript with 'weather'", left());
    const line = humanLines(heard, /weather/i)[0];
    assert.ok(line, `a human transcript with "weather": ${JSON.stringify(humanLines(heard, /./))}`);
    assert.equal(line.peerId, me, `the transcript is tagged with our peer id: ${JSON.stringify(line)}`);
    const engines = await page.evaluate(() => window.demo.engines);
    assert.equal(engines.stt, "Whisper tiny.en, keywords boosted", `the page names the engines: ${JSON.stringify(engines)}`);
    const finalLine = await poll(human.state, (s) => humanLines(s, /weather/i).some((x) => x.final), "the final weather transcript", left());
    const words = (x) => x.toLowerCase().replace(/[^a-z' ]/g, "").split(/\s+/).filter(Boolean).join(" ");
    const said = humanLines(finalLine, /weather/i).find((x) => x.final).text;
    // Word error rate against what the WAV says (PocketSphinx's was ~80 % on this sentence).
    const ref = "what is the weather like today".split(" "), hyp = words(said).split(" ").filter(Boolean);
    const wer = wordEdits(ref, hyp) / ref.length;
    t.diagnostic(`weather question heard as ${JSON.stringify(said)}: WER ${(100 * wer).toFixed(0)} %`);
    // Whisper tiny.en through Opus hears eSpeak's "today" as "today", "to me" or "to nay":
    // the recognition benchmark, not this test, holds the engine to its WER target.
    assert.ok(wer <= 2 / 6 + 1e-9, `at most two words wrong: ${JSON.stringify(said)} (WER ${(100 * wer).toFixed(0)} %)`);
    assert.equal(heard.agentPeerId, demo.agentId ?? heard.agentPeerId, "the agent is the peer the demo announced");
    t.diagnostic(`heard: ${JSON.stringify(line.text)} (peer ${me})`);

    // (b) the reply is heard while the agent says it is speaking
    // Inbound audio and the agent's latest state for us, read together.
    const statsAndState = () => page.evaluate(async (id) => ({
      ...(await window.demoStats()), state: window.demo.states.filter((x) => x.peerId === id).pop()?.state,
    }), me);
    const a = await poll(statsAndState, (x) => x.state === "speaking", "state speaking", left());
    const b = await poll(statsAndState, (x) => x.state !== "speaking" ||
      (x.packetsReceived >= a.packetsReceived + 25 && x.totalAudioEnergy > a.totalAudioEnergy + 1e-3),
      `inbound audio packets and energy growing past ${JSON.stringify(a)}`, Math.min(5000, left()));
    t.diagnostic(`while speaking: inbound-rtp packetsReceived ${a.packetsReceived} -> ${b.packetsReceived}, ` +
      `totalAudioEnergy ${a.totalAudioEnergy.toFixed(5)} -> ${b.totalAudioEnergy.toFixed(5)}, audioLevel ${b.audioLevel.toFixed(3)}`);
    assert.equal(b.state, "speaking", `packets and energy grew while the agent was speaking: ${JSON.stringify({ a, b })}`);

    // (d) end of utterance -> first reply audio
    const m = await poll(human.state, (s) => s.metrics.some((x) => x.peerId === me), "metrics", left());
    const first = m.metrics.find((x) => x.peerId === me);
    const eou = first.eouToFirstAudioMs;
    assert.equal(typeof eou, "number");
    assert.ok(eou >= 0 && eou < 10_000, `eouToFirstAudioMs plausible: ${eou}`);
    const stages = first.stages || {};
    for (const k of ["endOfTurnMs", "sttMs", "replyMs", "ttsMs"]) {
      assert.ok(typeof stages[k] === "number" && stages[k] >= 0, `stage ${k} in ${JSON.stringify(first)}`);
    }
    assert.ok(["end-of-turn model", "words read finished", "silence", "length"].includes(first.endedBy), JSON.stringify(first));
    t.diagnostic(`first reply: ${JSON.stringify(first)}`);

    // (c) barge-in: the second utterance starts while the reply (~3 sentences) still plays
    const bi = await poll(human.state, (s) => s.bargeIns.some((x) => x.peerId === me), "a barge-in message", left());
    const tBarge = bi.bargeIns.find((x) => x.peerId === me).t;
    // The agent answers the second utterance after it ends: look at the samples up to that
    // reply's "speaking" (or 3 s), and find when the energy stopped growing.
    await sleep(Math.min(3000, left()));
    const { samples, states } = await page.evaluate(() => ({ samples: window.samples, states: window.demo.states }));
    const nextSpeaking = states.find((x) => x.peerId === me && x.state === "speaking" && x.t > tBarge);
    const windowEnd = Math.min(tBarge + 3000, nextSpeaking ? nextSpeaking.t : Infinity);
    const grow = (i) => samples[i].totalAudioEnergy - samples[i - 1].totalAudioEnergy;
    // Energy added per sample: the agent's speech adds ~1e-3..1e-2, silence 0. 1e-4 per 50 ms
    // is an audio level of ~0.045 held for the whole sample. Chromium refreshes these stats
    // about every 100 ms, so the measurement has that resolution.
    const EPS = 1e-4;
    let lastGrowth = null, grewBefore = 0;
    for (let i = 1; i < samples.length && samples[i].t <= windowEnd; i++) {
      if (samples[i].t < tBarge - 2000) continue;
      if (samples[i].t < tBarge && grow(i) > EPS) grewBefore++;
      if (grow(i) > EPS) lastGrowth = samples[i].t;
    }
    const flatFor = windowEnd === Infinity ? 0 : Math.min(windowEnd, samples.at(-1).t) - (lastGrowth ?? tBarge);
    const stopMs = lastGrowth === null ? 0 : lastGrowth - tBarge;
    const trace = samples.filter((s) => s.t > tBarge - 600 && s.t < tBarge + 1600)
      .map((s, i, arr) => `${(s.t - tBarge).toFixed(0)}:${i ? ((s.totalAudioEnergy - arr[i - 1].totalAudioEnergy) * 1e4).toFixed(2) : "-"}`).join(" ");
    t.diagnostic(`barge-in: voice energy last grew ${stopMs.toFixed(0)} ms after the barge-in message ` +
      `(growing samples in the 2 s before: ${grewBefore}; flat for ${flatFor.toFixed(0)} ms after; next reply speaking at ` +
      `${nextSpeaking ? (nextSpeaking.t - tBarge).toFixed(0) + " ms" : "-"})`);
    t.diagnostic(`energy growth x1e-4 per ${SAMPLE_MS} ms sample around the barge-in (ms from message:delta): ${trace}`);
    console.log(`demo: barge-in -> voice energy flat ${stopMs.toFixed(0)} ms`);
    assert.ok(grewBefore > 0, "the agent was talking just before the barge-in");
    assert.ok(stopMs <= BARGE_IN_STOP_BOUND_MS, `the voice stopped within ${BARGE_IN_STOP_BOUND_MS} ms of the barge-in message (took ${stopMs.toFixed(0)} ms)`);
    assert.ok(flatFor >= 300, `the voice stayed silent after the barge-in (flat for ${flatFor.toFixed(0)} ms)`);
    const agentLines = (await human.state()).transcripts.filter((x) => x.role === "agent" && x.peerId === me);
    t.diagnostic(`agent said: ${JSON.stringify(agentLines.map((x) => x.text))}`);

    // (d) every reply's latency, end of utterance -> first audio
    const eous = (await human.state()).metrics.filter((x) => x.peerId === me).map((x) => x.eouToFirstAudioMs.toFixed(1));
    t.diagnostic(`eouToFirstAudioMs per reply: ${eous.join(", ")} ms`);
    console.log(`demo: eouToFirstAudioMs ${eous.join(", ")} ms`);

    // (e) hang-up over the control channel (a screenshot of the call first)
    await page.screenshot({ path: path.join(OUT_DIR, "demo-call.png"), fullPage: true }).catch(() => {});
    await page.waitForFunction(() => window.demo.controlOpen, null, { timeout: left() });
    await page.evaluate(() => clearInterval(window.sampler));
    await page.click("#hangup");
    const end = await poll(human.state, (s) => s.ended, "the page to end the call", left());
    assert.ok(end.states.some((x) => x.peerId === me && x.state === "ended"), `state ended for ${me}: ${JSON.stringify(end.states.slice(-5))}`);
    assert.ok(end.bye, "the agent answered the hang-up with bye on the control channel");
    assert.match(await page.textContent("#status"), /call ended/);
    assert.equal(await page.isVisible("text=call ended"), true);
    assert.deepEqual(end.errors, [], "page errors");
    t.diagnostic(`transcript: ${JSON.stringify(end.transcripts.map((x) => `${x.role}(${x.peerId === me ? "me" : x.peerId}): ${x.text}`))}`);
    await page.screenshot({ path: path.join(OUT_DIR, "demo.png"), fullPage: true });

    // "Call again": a new MeteredPeer (new peer id) that the agent greets with "listening".
    await page.click("#join");
    const again = await poll(human.state, (s) => s.joined && s.peerId && s.peerId !== me && s.controlOpen &&
      s.states.some((x) => x.peerId === s.peerId && x.state === "listening"), "a second call from the same page", left());
    assert.equal(again.ended, false);
    t.diagnostic(`called again as ${again.peerId}`);
  }));
});

describe("parlor demo: two humans in the room, each with their own transcript", () => {
  let dir, demo, browsers = [], humans = [];
  let deadline = Infinity;
  const left = () => Math.max(1000, deadline - Date.now());
  const check = async (fn) => {
    try { await fn(); } catch (e) {
      for (const h of humans) e.message += "\n" + await h.dump();
      e.message += `\n${demo ? demo.logs() : "(no demo)"}`;
      throw e;
    }
  };
  const SAYS = [
    { name: "a", text: "What is the weather like today?", re: /weather/i },
    // "What time is it?" comes back as "what type it" from eSpeak's voice: ask the name.
    { name: "b", text: "Hello, what is your name?", re: /name/i },
  ];

  before(async () => {
    deadline = Date.now() + BUDGET_TWO_MS;
    mkdirSync(OUT_DIR, { recursive: true });
    dir = mkdtempSync(path.join(tmpdir(), "parlor-demo2-"));
    demo = await startDemo("demo-two");
    for (const s of SAYS) {
      // Each says its sentence twice (a first utterance is often misheard); b a second later.
      const wav = speechWav(path.join(dir, `${s.name}.wav`), [s.name === "a" ? 3 : 4, s.text, 6, s.text, 8], dir);
      const browser = await launchChromium([`--use-file-for-fake-audio-capture=${wav.file}%noloop`]);
      browsers.push(browser);
      humans.push(await openPage(browser, demo.url, s.name));
    }
  });

  after(async () => {
    for (const h of humans) await h.close(`demo-two-${h.name}`);
    for (const b of browsers) await b.close().catch(() => {});
    await demo?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("each human's words come back tagged with their own peer id, on both pages", { timeout: BUDGET_TWO_MS + 30_000 }, (t) => check(async () => {
    const ids = [];
    for (const h of humans) ids.push((await poll(h.state, (s) => s && s.joined && s.peerId, `page ${h.name} to join`, left())).peerId);
    assert.notEqual(ids[0], ids[1]);
    for (const [i, h] of humans.entries()) {
      const st = await poll(h.state, (s) => humanLines(s, SAYS[i].re).some((x) => x.peerId === ids[i]),
        `page ${h.name}: a human transcript matching ${SAYS[i].re} tagged ${ids[i]}`, left());
      t.diagnostic(`page ${h.name} (${ids[i]}) heard itself: ${JSON.stringify(humanLines(st, SAYS[i].re).filter((x) => x.peerId === ids[i]).map((x) => x.text))}`);
    }
    // Both pages see both humans' lines (broadcast), each tagged with its speaker, never swapped.
    for (const h of humans) {
      const st = await poll(h.state, (s) => SAYS.every((say, i) => humanLines(s, say.re).some((x) => x.peerId === ids[i])),
        `page ${h.name}: both humans' transcripts`, left());
      for (const [i, say] of SAYS.entries()) {
        const other = ids[1 - i];
        assert.deepEqual(humanLines(st, say.re).filter((x) => x.peerId === other && !SAYS[1 - i].re.test(x.text)), [],
          `page ${h.name}: "${say.text}" is never attributed to ${other}`);
      }
      assert.equal(st.agentPeerId, demo.agentId ?? st.agentPeerId);
      assert.deepEqual(st.errors, [], `page ${h.name} errors`);
    }
  }));
});

// The demo opened from another machine: listening beyond loopback it serves https and wss
// (browsers give the microphone only to https pages or localhost) with a certificate signed by
// a CA it generates, says so on start-up, and the page and the agent talk over TLS.
describe("parlor demo beyond loopback: TLS for a browser on another machine", () => {
  let demo, browser, human;
  const check = (fn) => withContext(fn, () => ({ human, demo }));

  before(async () => {
    mkdirSync(OUT_DIR, { recursive: true });
    demo = await startDemo("demo-tls", ["--listen", "0.0.0.0:0"]);
    browser = await launchChromium();
  });

  after(() => teardown("demo-tls", { human, browser, demo }));

  it("https page, wss signalling, the agent answers a typed turn", { timeout: 90_000 }, () => check(async () => {
    assert.match(demo.url, /^https:\/\/\S+:\d+\/$/, "the start-up line names an https URL");
    assert.ok(demo.lines.some((l) => /certificate is signed by a CA generated on this machine \(\S+ca\.pem\)/.test(l) && /warns once/.test(l)),
      `the start-up lines say what the browser will ask: ${JSON.stringify(demo.lines)}`);
    // This machine's name may not resolve in the test: the same port on 127.0.0.1 (in the
    // certificate too). Playwright accepts the warning a person would click through.
    const port = new URL(demo.url).port;
    human = await openPage(browser, `https://127.0.0.1:${port}/`, "tls", { ignoreHTTPSErrors: true });
    const st = await poll(human.state, (s) => s && s.joined && s.peerId, "the page to join over wss", 30_000);
    assert.equal(await human.page.evaluate(() => window.isSecureContext), true, "a secure context: the microphone is allowed");
    await human.page.waitForFunction(() => window.demo.agentPeerId, null, { timeout: 30_000 });
    await human.page.fill("#say-text", "What is the weather like?");
    await human.page.click("#say-send");
    // (Chromium's default fake microphone beeps, which may make turns of their own: the typed
    // one is the one reported from the text.)
    const typedTurn = (x) => x.peerId === st.peerId && x.endedBy === "text";
    const m = await poll(human.state, (s) => s.metrics.some(typedTurn), "the agent's answer over TLS", 30_000);
    const typed = m.metrics.find(typedTurn);
    assert.equal(typeof typed.textToFirstAudioMs, "number", JSON.stringify(typed));
    assert.equal(typed.eouToFirstAudioMs, undefined, "a typed turn reports from the text, not from an end of speech");
    assert.deepEqual((await human.state()).errors, []);
  }));
});

// The agent's own voice in the page's microphone: the page mixes the agent's audio into what
// it sends at -6 dB, 150 ms late (laptop speakers, no echo cancellation), the microphone
// itself is silent, and the human types a question. The agent must not take its own voice for
// the human: no turn of it, at most one hold, and the whole reply said. (ECHO_GATE_OFF=1 runs
// the demo with --no-echo-gate: the agent then answers its own voice, as the issue reported.)
describe("parlor demo: the agent's own voice echoed into the page's microphone", () => {
  let dir, demo, browser, human;
  const check = (fn) => withContext(fn, () => ({ human, demo }));

  before(async () => {
    mkdirSync(OUT_DIR, { recursive: true });
    dir = mkdtempSync(path.join(tmpdir(), "parlor-demo-echo-"));
    // A silent microphone (60 s of nothing: the helper needs one word, at the very end).
    const silent = speechWav(path.join(dir, "silent.wav"), [60, "Hello.", 1], dir);
    demo = await startDemo("demo-echo", process.env.ECHO_GATE_OFF ? ["--no-echo-gate"] : []);
    browser = await launchChromium([`--use-file-for-fake-audio-capture=${silent.file}%noloop`]);
  });

  after(() => teardown("demo-echo", { human, browser, demo, dir }));

  it("no turn of its own voice; the reply is said to its end", { timeout: 90_000 }, (t) => check(async () => {
    human = await openPage(browser, `${demo.url}?echoDb=-6&echoDelayMs=150`, "echo");
    const st = await poll(human.state, (s) => s && s.joined && s.peerId && s.echo, "the page to join with the echo mixed in", 30_000);
    await human.page.waitForFunction(() => window.demo.agentPeerId, null, { timeout: 30_000 });
    const question = "What is the weather like today?";
    await human.page.fill("#say-text", question);
    await human.page.click("#say-send");
    const done = await poll(human.state, (s) => s.transcripts.some((x) => x.role === "agent" && x.final && /long walk/.test(x.text)) ||
      s.transcripts.some((x) => x.role === "human" && x.final && x.text !== question),
    "the whole reply, or a turn of its own voice", 60_000);
    const own = done.transcripts.filter((x) => x.role === "human" && x.final && x.text !== question).map((x) => x.text);
    const holds = done.bargeIns.filter((x) => x.peerId === st.peerId).length;
    t.diagnostic(`echo ${JSON.stringify(st.echo)}: ${holds} holds, turns of its own voice ${JSON.stringify(own)}`);
    assert.deepEqual(own, [], "the agent took its own voice for the human");
    assert.ok(holds <= 1, `${holds} holds on its own voice`);
    assert.ok(done.transcripts.some((x) => x.role === "agent" && x.final && /long walk/.test(x.text)), "the whole reply was said");
  }));
});

// Double talk with the echo still in the microphone: the human types the weather question
// and, ~4 s into the reply, says "What time is it?" over it (the echo at −6 dB, 150 ms). The
// question's words come back mixed with the echo (a known limit, docs/performance.md), so this
// asserts what must hold whatever they are: the human's speech holds the reply once, and the
// agent's answer to it is not interrupted by its own first words heard back (before the gate
// kept its echo through double talk, "It is…" came back as a turn and cut the answer).
describe("parlor demo: the human talks over the reply, its echo still in the microphone", () => {
  let dir, demo, browser, human;
  const check = (fn) => withContext(fn, () => ({ human, demo }));
  const LEAD = 8; // s of silence before the spoken question

  before(async () => {
    mkdirSync(OUT_DIR, { recursive: true });
    dir = mkdtempSync(path.join(tmpdir(), "parlor-demo-double-"));
    const talk = speechWav(path.join(dir, "talk.wav"), [LEAD, "What time is it?", 20], dir);
    demo = await startDemo("demo-double-talk", []);
    browser = await launchChromium([`--use-file-for-fake-audio-capture=${talk.file}%noloop`]);
  });

  after(() => teardown("demo-double-talk", { human, browser, demo, dir }));

  it("one hold, and the answer is said to its end", { timeout: 90_000 }, (t) => check(async () => {
    human = await openPage(browser, `${demo.url}?echoDb=-6&echoDelayMs=150`, "double");
    const st = await poll(human.state, (s) => s && s.joined && s.peerId && s.echo && s.agentPeerId && s.controlOpen,
      "the page in the call with the echo mixed in", 30_000);
    const me = st.peerId;
    const typed = "What is the weather like today?";
    // Typed so that the reply is ~4 s in when the spoken question starts.
    const wait = st.micAt + (LEAD - 5) * 1000 - await human.page.evaluate(() => performance.now());
    if (wait > 0) await sleep(wait);
    await human.page.fill("#say-text", typed);
    await human.page.click("#say-send");
    const spokenTurn = (s) => s.transcripts.some((x) => x.role === "human" && x.peerId === me && x.final && x.text !== typed);
    await poll(human.state, spokenTurn, "the spoken question's turn", 30_000);
    // The answer to it (whatever was heard), to its end or cut.
    const answered = (s) => {
      const i = s.transcripts.findIndex((x) => x.role === "human" && x.peerId === me && x.final && x.text !== typed);
      return s.transcripts.slice(i + 1).some((x) => x.role === "agent" && x.peerId === me && (x.final || x.interrupted));
    };
    await poll(human.state, answered, "the agent's answer to the spoken question", 30_000);
    await sleep(1500);
    const s = await human.state();
    const spoken = s.transcripts.filter((x) => x.role === "human" && x.peerId === me && x.final && x.text !== typed).map((x) => x.text);
    const holds = s.bargeIns.filter((x) => x.peerId === me).length;
    const i = s.transcripts.findIndex((x) => x.role === "human" && x.peerId === me && x.final && x.text !== typed);
    const answers = s.transcripts.slice(i + 1).filter((x) => x.role === "agent" && x.peerId === me && (x.final || x.interrupted));
    t.diagnostic(`heard ${JSON.stringify(spoken)}; ${holds} holds; answer ${JSON.stringify(answers.map((x) => x.text))}`);
    assert.deepEqual(spoken.length, 1, `one spoken turn, got ${JSON.stringify(spoken)}`);
    assert.ok(holds <= 1, `${holds} holds`);
    assert.ok(answers.length >= 1 && answers.every((x) => x.final && !x.interrupted), `the answer was cut: ${JSON.stringify(answers)}`);
  }));
});

// Turn-taking as a person meets it: a question with an 800 ms pause mid-sentence ("What is
// the weather like in … Paris today?", said in one breath by eSpeak's SSML break) is one turn,
// not two; then, 2.5 s into the agent's three-sentence reply, the human says "Okay." (a
// backchannel): the agent may hold its voice for a moment, but it resumes and says the whole
// reply (a false interruption costs nothing).
describe("parlor demo: a pause mid-sentence, and a backchannel during the reply", () => {
  let dir, wav, demo, browser, human;
  const check = (fn) => withContext(fn, () => ({ human, demo }));

  before(async () => {
    mkdirSync(OUT_DIR, { recursive: true });
    dir = mkdtempSync(path.join(tmpdir(), "parlor-demo-turns-"));
    wav = speechWav(path.join(dir, "turns.wav"), [
      3, { ssml: '<speak>What is the weather like in <break time="800ms"/> Paris today?</speak>' }, 3.5, "Okay.", 16,
    ], dir);
    demo = await startDemo("demo-turns");
    browser = await launchChromium([`--use-file-for-fake-audio-capture=${wav.file}%noloop`]);
  });

  after(() => teardown("demo-turns", { human, browser, demo, dir }));

  it("one turn across the pause; the reply resumes after the backchannel", { timeout: 90_000 }, (t) => check(async () => {
    human = await openPage(browser, demo.url, "turns");
    const st = await poll(human.state, (s) => s && s.joined && s.peerId, "the page to join", 30_000);
    const me = st.peerId;
    t.diagnostic(`human WAV: ${JSON.stringify(wav.spans)}`);
    const done = await poll(human.state, (s) => s.transcripts.some((x) => x.role === "agent" && x.peerId === me && x.final && /long walk/.test(x.text)),
      "the whole weather reply", (wav.seconds + 10) * 1000);
    const finals = done.transcripts.filter((x) => x.role === "human" && x.peerId === me && x.final).map((x) => x.text);
    const replies = done.transcripts.filter((x) => x.role === "agent" && x.peerId === me).map((x) => x.text);
    const holds = done.bargeIns.filter((x) => x.peerId === me).length;
    const resumes = done.resumes.filter((x) => x.peerId === me);
    const metrics = done.metrics.filter((x) => x.peerId === me);
    t.diagnostic(`human turns ${JSON.stringify(finals)}; agent ${JSON.stringify(replies)}; holds ${holds}, resumed ${JSON.stringify(resumes)}; metrics ${JSON.stringify(metrics)}`);
    const questionTurns = finals.filter((x) => !/^\W*okay\W*$/i.test(x));
    assert.equal(questionTurns.length, 1, `the paused question is one turn: ${JSON.stringify(finals)}`);
    assert.match(questionTurns[0], /weather/i);
    // "what is the weather like in" is six words: the turn runs past the pause (Whisper tiny.en
    // hears eSpeak's "Paris today" as "Paris today", "paryston nay", …).
    const words = questionTurns[0].split(/\s+/).filter((w) => /\w/.test(w));
    assert.ok(words.length >= 7, `the turn runs past the pause: ${JSON.stringify(questionTurns[0])}`);
    assert.equal(metrics.length, 1, "one answer");
    assert.equal(holds, resumes.length, "every hold was resumed");
    assert.ok(replies.some((x) => /long walk/.test(x)), "the whole reply was said");
  }));
});
