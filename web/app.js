// The `parlor demo` page: joins the demo room with the real @metered-ca/realtime browser SDK
// (served by parlor at /sdk/index.mjs), sends the microphone to the voice agent, plays the
// agent's voice, and shows what the agent broadcasts: transcripts, its state, reply latency
// and barge-ins. Hang-up goes over a WebRTC data channel labelled "control".
//
// Agent -> page (server-routed broadcasts, the SDK's `data` event):
//   {type:"transcript", role:"human"|"agent", peerId, text, final}
//   {type:"state", state:"listening"|"thinking"|"speaking"|"ended", peerId}
//   {type:"metrics", peerId, eouToFirstAudioMs | textToFirstAudioMs, endedBy,
//    stages: {endOfTurnMs, sttMs, replyMs, ttsMs}, prepared}
//   {type:"barge-in", peerId}
// Page -> agent: {type:"hangup"} on the control channel (answered with {type:"bye"}), or
// {type:"text", text} / {type:"hangup"} server-routed.
//
// Tests read `window.demo` and call `window.demoStats()`.
import { MeteredPeer } from "/sdk/index.mjs";

const $ = (id) => document.getElementById(id);
const ui = {
  join: $("join"), mic: $("mic"), hangup: $("hangup"), state: $("agent-state"), status: $("status"),
  room: $("room"), meterMic: $("meter-mic"), meterAgent: $("meter-agent"), transcript: $("transcript"),
  say: $("say"), sayText: $("say-text"), saySend: $("say-send"), latency: $("latency"), ids: $("ids"),
  audio: $("agent-audio"),
};

const demo = {
  joined: false,
  peerId: null,
  agentPeerId: null,
  transcripts: [], // {role, peerId, text, final, t, tFinal} (+ interrupted: true for a reply cut short)
  micAt: null, // when the microphone opened (performance.now(), like every t here)
  states: [], // {state, peerId, t}
  metrics: [], // {peerId, eouToFirstAudioMs, t}
  bargeIns: [], // {peerId, t}
  resumes: [], // {peerId, heard, t}: a hold that was not an interruption
  ended: false,
  controlOpen: false,
  bye: false,
  errors: [],
};
window.demo = demo;

let config = null;
let peer = null;
let micStream = null;
let control = null; // the RTCDataChannel "control" to the agent
let controlPc = null; // the RTCPeerConnection it belongs to
const remotes = new Map(); // peer id -> RemotePeer
const audioTracks = new Map(); // peer id -> its latest audio track (the agent's is played)
const lines = new Map(); // "role|peerId" -> {entry, li} of the line still being said (final:false)
const held = new Map(); // "role|peerId" -> the line last closed by a barge-in (reopened if resumed)

// ------------------------------------------------------------------ small helpers
const now = () => performance.now();
const short = (id) => (id ? id.slice(0, 8) + "…" : "?");
function setStatus(text, cls = "") {
  ui.status.textContent = text;
  ui.status.className = "status " + cls;
}
function fail(what, err) {
  const msg = `${what}: ${err && err.message ? err.message : err}`;
  demo.errors.push(msg);
  console.error(msg, err);
  setStatus(msg, "error");
}
window.addEventListener("error", (e) => demo.errors.push("page error: " + e.message));
window.addEventListener("unhandledrejection", (e) => demo.errors.push("unhandled rejection: " + (e.reason && e.reason.message || e.reason)));

// ------------------------------------------------------------------ transcript view
function addLine({ role, peerId, text, final }) {
  const key = role + "|" + peerId;
  // An agent line that does not continue the open one is a new reply: the old one was cut
  // short. A human's interim hypotheses are revised as they come, and the final one replaces them.
  if (role === "agent" && lines.has(key) && !text.startsWith(lines.get(key).entry.text)) closeLine(role, peerId);
  const open = lines.get(key);
  if (open) {
    // The agent's reply grows sentence by sentence: update its line in place.
    open.entry.text = text;
    open.entry.final = final;
    if (final) open.entry.tFinal = now();
    open.text.textContent = text;
    open.li.classList.toggle("partial", !final);
    if (final) lines.delete(key);
  } else {
    const entry = { role, peerId, text, final, t: now() };
    if (final) entry.tFinal = entry.t;
    demo.transcripts.push(entry);
    const li = document.createElement("li");
    const mine = peerId === demo.peerId;
    li.className = `${role} ${mine ? "mine" : "other"}${final ? "" : " partial"}`;
    li.dataset.peerId = peerId;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "agent" ? (mine ? "agent" : "agent → " + short(peerId)) : (mine ? "you" : short(peerId));
    who.title = peerId;
    const span = document.createElement("span");
    span.className = "text";
    span.textContent = text;
    li.append(who, span);
    ui.transcript.append(li);
    if (!final) lines.set(key, { entry, li, text: span });
  }
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

/** The line still being said for `peerId` ends unfinished (barge-in, hang-up, new reply). */
function closeLine(role, peerId) {
  const key = role + "|" + peerId;
  const open = lines.get(key);
  if (!open) return;
  lines.delete(key);
  held.set(key, open);
  open.entry.interrupted = true;
  open.li.classList.replace("partial", "interrupted");
}

/** The agent resumed after a hold that was no interruption: its line goes on. */
function reopenLine(role, peerId) {
  const key = role + "|" + peerId;
  const line = held.get(key);
  held.delete(key);
  if (!line || lines.has(key)) return;
  delete line.entry.interrupted;
  line.li.classList.replace("interrupted", "partial");
  lines.set(key, line);
}

function addEvent(text) {
  const li = document.createElement("li");
  li.className = "event";
  li.innerHTML = '<span class="who"></span><span class="text"></span>';
  li.lastChild.textContent = text;
  ui.transcript.append(li);
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

const STATE_LABELS = { idle: "not joined", connecting: "connecting…", ended: "call ended" };
function showState(state) {
  ui.state.dataset.state = state;
  ui.state.textContent = STATE_LABELS[state] || "agent " + state;
}

// ------------------------------------------------------------------ agent messages
function onAgentMessage(sender, msg) {
  if (!msg || typeof msg !== "object") return;
  // The agent is whoever sends the first state / transcript message.
  if (!demo.agentPeerId && (msg.type === "state" || msg.type === "transcript")) setAgent(sender);
  if (sender !== demo.agentPeerId) return;
  switch (msg.type) {
    case "transcript":
      addLine({ role: msg.role, peerId: msg.peerId, text: String(msg.text ?? ""), final: !!msg.final });
      break;
    case "state":
      demo.states.push({ state: msg.state, peerId: msg.peerId, t: now() });
      if (msg.state !== "speaking") closeLine("agent", msg.peerId); // a finished reply was closed by final:true
      if (msg.peerId === demo.peerId) showState(msg.state);
      break;
    case "metrics":
      demo.metrics.push({ ...msg, t: now() });
      if (msg.peerId === demo.peerId) ui.latency.textContent = describeMetrics(msg);
      break;
    case "resumed":
      demo.resumes.push({ peerId: msg.peerId, heard: msg.heard, t: now() });
      reopenLine("agent", msg.peerId);
      if (msg.peerId === demo.peerId) addEvent("not an interruption: the agent goes on");
      break;
    case "barge-in":
      demo.bargeIns.push({ peerId: msg.peerId, t: now() });
      closeLine("agent", msg.peerId);
      addEvent(msg.peerId === demo.peerId ? "you interrupted the agent" : short(msg.peerId) + " interrupted the agent");
      break;
    default:
      break;
  }
}

function setAgent(id) {
  demo.agentPeerId = id;
  ui.ids.textContent = `you: ${demo.peerId} · agent: ${id}`;
  const remote = remotes.get(id);
  if (remote) attachAgent(remote);
}

/** The agent's RemotePeer is known: open the control channel, play its voice. */
function attachAgent(remote) {
  openControl(remote);
  const track = audioTracks.get(remote.id);
  if (track) playAgent(track);
}

function openControl(remote) {
  if (control && control.readyState !== "closed" && controlPc === remote.pc) return;
  const ch = remote.pc.createDataChannel("control");
  control = ch;
  controlPc = remote.pc;
  ch.addEventListener("open", () => { if (control === ch) demo.controlOpen = true; });
  ch.addEventListener("close", () => { if (control === ch) demo.controlOpen = false; });
  ch.addEventListener("message", (e) => {
    let m;
    try { m = JSON.parse(String(e.data)); } catch { return; }
    if (m && m.type === "bye") demo.bye = true;
  });
}

// ------------------------------------------------------------------ audio: playback + meters
let audioCtx = null;
const meters = { mic: null, agent: null };

function analyser(stream) {
  audioCtx = audioCtx || new AudioContext();
  const a = audioCtx.createAnalyser();
  a.fftSize = 1024;
  audioCtx.createMediaStreamSource(stream).connect(a);
  return { node: a, buf: new Float32Array(a.fftSize) };
}

function level(m) {
  if (!m) return 0;
  m.node.getFloatTimeDomainData(m.buf);
  let sum = 0;
  for (const x of m.buf) sum += x * x;
  const db = 20 * Math.log10(Math.sqrt(sum / m.buf.length) || 1e-8);
  return Math.max(0, Math.min(1, (db + 60) / 60)); // -60 dBFS .. 0 dBFS
}

function drawMeters() {
  ui.meterMic.style.width = (micStream && micStream.getAudioTracks()[0]?.enabled ? level(meters.mic) * 100 : 0) + "%";
  ui.meterAgent.style.width = level(meters.agent) * 100 + "%";
  requestAnimationFrame(drawMeters);
}
requestAnimationFrame(drawMeters);

function playAgent(track) {
  const stream = new MediaStream([track]);
  ui.audio.srcObject = stream; // Chromium only feeds remote WebRTC audio to WebAudio while an element plays it
  ui.audio.play().catch((e) => demo.errors.push("audio play: " + e.message));
  meters.agent = analyser(stream);
  feedEcho(stream);
}

// A test of the agent's echo handling (`?echoDb=-6&echoDelayMs=150`): the page's microphone
// also carries the agent's voice, that much quieter and later, as a laptop's speakers without
// echo cancellation would. Off unless asked for.
const echoParams = new URLSearchParams(location.search);
const echoMix = echoParams.has("echoDb") ? {
  gain: 10 ** (Number(echoParams.get("echoDb")) / 20),
  delay: Number(echoParams.get("echoDelayMs") || 0) / 1000,
  dest: null,
} : null;

/** The microphone as published: the device's, or with the agent's voice mixed in. */
function publishedMic(stream) {
  if (!echoMix) return stream;
  audioCtx = audioCtx || new AudioContext();
  echoMix.dest = audioCtx.createMediaStreamDestination();
  audioCtx.createMediaStreamSource(stream).connect(echoMix.dest);
  demo.echo = { gain: echoMix.gain, delayMs: echoMix.delay * 1000 };
  return echoMix.dest.stream;
}

function feedEcho(stream) {
  if (!echoMix || !echoMix.dest) return;
  const delay = audioCtx.createDelay(1);
  delay.delayTime.value = echoMix.delay;
  const gain = audioCtx.createGain();
  gain.gain.value = echoMix.gain;
  audioCtx.createMediaStreamSource(stream).connect(delay).connect(gain).connect(echoMix.dest);
}
// Autoplay policies: a click anywhere lets the audio start.
document.addEventListener("click", () => { audioCtx?.resume(); ui.audio.play().catch(() => {}); });

// ------------------------------------------------------------------ join / mic / hang-up
async function join() {
  ui.join.disabled = true;
  setStatus("joining…");
  // A new call (after a hang-up) is a new MeteredPeer with a new peer id.
  remotes.clear();
  audioTracks.clear();
  lines.clear();
  held.clear();
  control = controlPc = null;
  Object.assign(demo, { joined: false, peerId: null, agentPeerId: null, ended: false, controlOpen: false, bye: false });
  try {
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
    demo.micAt = now();
    meters.mic = analyser(micStream);
    // The server is where the page came from (ws, or wss when the demo serves TLS).
    const url = config.url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
    peer = new MeteredPeer({ url, apiKey: config.apiKey });
    window.peer = peer;
    peer.addStream(publishedMic(micStream), { role: "mic", label: "microphone" });
    peer.on("error", ({ err }) => fail("connection error", err));
    peer.on("peer-joined", ({ peer: remote }) => onRemote(remote));
    peer.on("peer-left", ({ peer: remote }) => {
      remotes.delete(remote.id);
      audioTracks.delete(remote.id);
      if (remote.id === demo.agentPeerId && !demo.ended) {
        demo.agentPeerId = null; // a new agent is recognised by its first message
        setStatus("the agent left the room", "error");
        showState("idle");
      }
    });
    peer.on("data", ({ senderPeerId, data }) => {
      let msg = data;
      if (typeof msg === "string") { try { msg = JSON.parse(msg); } catch { return; } }
      onAgentMessage(senderPeerId, msg);
    });
    await peer.join(config.room);
    demo.peerId = peer.peerId;
    demo.joined = true;
    ui.ids.textContent = `you: ${demo.peerId}` + (demo.agentPeerId ? ` · agent: ${demo.agentPeerId}` : "");
    setStatus(`in room ${config.room} as ${demo.peerId}: say something`);
    ui.mic.disabled = ui.hangup.disabled = ui.sayText.disabled = ui.saySend.disabled = false;
    showState("connecting");
  } catch (e) {
    fail("cannot join", e);
    ui.join.disabled = false;
  }
}

function onRemote(remote) {
  remotes.set(remote.id, remote);
  remote.on("track", ({ track }) => {
    if (track.kind !== "audio") return;
    audioTracks.set(remote.id, track); // kept until we know whether this peer is the agent
    if (remote.id === demo.agentPeerId) playAgent(track);
  });
  // A new connection after a signalling drop: the old control channel is gone with it.
  remote.on("connection-reset", () => { if (remote.id === demo.agentPeerId) openControl(remote); });
  if (remote.id === demo.agentPeerId) attachAgent(remote);
}

function toggleMic() {
  const track = micStream?.getAudioTracks()[0];
  if (!track) return;
  track.enabled = !track.enabled;
  ui.mic.textContent = track.enabled ? "Mic on" : "Mic off";
  ui.mic.setAttribute("aria-pressed", String(track.enabled));
}

async function hangup() {
  ui.hangup.disabled = ui.mic.disabled = ui.sayText.disabled = ui.saySend.disabled = true;
  setStatus("hanging up…");
  const me = demo.peerId;
  const endedSeen = () => demo.states.some((s) => s.state === "ended" && s.peerId === me);
  try {
    const msg = JSON.stringify({ type: "hangup" });
    if (control && control.readyState === "open") control.send(msg);
    else if (demo.agentPeerId) await peer.sendTo(demo.agentPeerId, { type: "hangup" });
    // Wait (briefly) for the agent's goodbye before leaving the room.
    const until = now() + 3000;
    while (!(endedSeen() && (demo.bye || !demo.controlOpen)) && now() < until) await new Promise((r) => setTimeout(r, 50));
  } catch (e) {
    demo.errors.push("hangup: " + e.message);
  }
  try { await peer.close("hang-up"); } catch (e) { demo.errors.push("leave: " + e.message); }
  micStream?.getTracks().forEach((t) => t.stop());
  ui.audio.srcObject = null;
  meters.mic = meters.agent = null;
  demo.joined = false;
  demo.controlOpen = false;
  demo.ended = true;
  showState("ended");
  setStatus("call ended", "ended");
  addEvent("call ended");
  ui.join.textContent = "Call again";
  ui.join.disabled = false;
}

async function sayText(e) {
  e.preventDefault();
  const text = ui.sayText.value.trim();
  if (!text || !demo.agentPeerId) return;
  ui.sayText.value = "";
  try { await peer.sendTo(demo.agentPeerId, { type: "text", text }); } catch (err) { fail("cannot send", err); }
}

/** Inbound audio from the agent (getStats inbound-rtp), for tests and curious people. */
window.demoStats = async () => {
  const remote = demo.agentPeerId && remotes.get(demo.agentPeerId);
  if (!remote) return null;
  const stats = await remote.pc.getStats();
  let best = null;
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio" && (!best || (r.packetsReceived || 0) > (best.packetsReceived || 0))) best = r;
  });
  if (!best) return { packetsReceived: 0, totalAudioEnergy: 0, audioLevel: 0, t: now() };
  return {
    packetsReceived: best.packetsReceived || 0,
    totalAudioEnergy: best.totalAudioEnergy || 0,
    audioLevel: best.audioLevel || 0,
    totalSamplesDuration: best.totalSamplesDuration || 0,
    t: now(),
  };
};

/** One line for the latency footer: the total and each stage's share. */
function describeMetrics(m) {
  const st = m.stages || {};
  const part = (label, v) => (typeof v === "number" ? `${label} ${Math.round(v)}` : null);
  const parts = [
    part("end of turn", st.endOfTurnMs),
    part("speech-to-text", st.sttMs),
    part("reply", st.replyMs),
    part("voice", st.ttsMs),
  ].filter(Boolean).join(" + ");
  if (typeof m.eouToFirstAudioMs === "number") {
    const ahead = m.prepared ? "; reply prepared during the pause" : "";
    return `last reply: ${Math.round(m.eouToFirstAudioMs)} ms from the end of your words to the agent's first audio (${parts} ms; turn ended by ${m.endedBy}${ahead})`;
  }
  return `last reply: ${Math.round(m.textToFirstAudioMs)} ms from your text to the agent's first audio (${parts} ms)`;
}

// ------------------------------------------------------------------ start
ui.join.addEventListener("click", join);
ui.mic.addEventListener("click", toggleMic);
ui.hangup.addEventListener("click", hangup);
ui.say.addEventListener("submit", sayText);

try {
  config = await (await fetch("/config.json")).json();
  ui.room.textContent = config.room;
  demo.engines = config.engines || {};
  for (const [k, v] of Object.entries(demo.engines)) {
    const el = $(`engine-${k}`);
    if (el) el.textContent = v;
  }
  ui.join.disabled = false;
  setStatus("press Join and allow the microphone");
  if (new URLSearchParams(location.search).get("autojoin") === "1") join();
} catch (e) {
  fail("cannot load /config.json", e);
}
