//! The agent loop: joins a room with one outbound voice, runs one listening loop per human
//! (VAD → speech-to-text on the human's own thread), answers each utterance through the
//! reply and speech hooks, and stops talking the moment a human starts (barge-in).
//!
//! What the agent tells the room (server-routed `send`, JSON; see `docs/agent.md`):
//! `{"type":"transcript","role":"human"|"agent","peerId":…,"text":…,"final":bool}`,
//! `{"type":"state","state":"listening"|"thinking"|"speaking"|"ended","peerId":…}`,
//! `{"type":"metrics","peerId":…,"eouToFirstAudioMs":…,"stages":{…},"endedBy":…}` (per turn:
//! see [`TurnTiming`]; a typed turn reports `textToFirstAudioMs` instead) and
//! `{"type":"barge-in","peerId":…}` (the voice is held the moment a human speaks over it) and
//! `{"type":"resumed","peerId":…,"heard":…}` (their turn had no words: the reply goes on).
//! What a human may send, on a data channel labelled
//! [`AgentOptions::control_label`] or through the server: `{"type":"hangup"}` and
//! `{"type":"text","text":…}` (a typed turn).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use parlor_media::{
    AudioFrames, AudioSource, AudioSourceOptions, Layout, MediaClock, OutputLevels,
    SpeechDownsampler,
};
use parlor_peer::room::FatalError;
use parlor_peer::{
    DataChannel, DataMessage, LocalTrack, RemoteTrack, RoomError, RoomEvent, RoomEvents, RoomPeer,
    TrackKind,
};
use serde_json::{Value, json};

use crate::aec::{AecOutput, EchoCanceller};
use crate::echo::{EchoGate, Verdict};
use crate::hooks::{
    EndOfTurn, Flow, HookError, Llm, Role, SpeechToText, TextEndOfTurn, TextToSpeech, Turn,
    VoiceActivity,
};
use crate::text::words;
use crate::turn::{EndReason, TurnEvent, TurnOptions, Turns, reads_finished, reads_unfinished};
use crate::vad::EnergyActivity;

/// Tuning of an [`Agent`].
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Turn-taking on each human's audio ([`TurnOptions::hangover`] by default;
    /// [`TurnOptions::with_end_of_turn_model`] with an end-of-turn hook).
    pub turn: TurnOptions,
    /// Tell the agent's own voice, heard back through a human's microphone, from the human
    /// ([`crate::echo`]): windows no louder than the echo predicted for them are not speech.
    /// With no echo it changes nothing.
    pub echo_gate: bool,
    /// Cancel the agent's own voice in each human's microphone before speech detection and
    /// speech-to-text ([`crate::aec`]: WebRTC's AEC3 with what the voice sent as the
    /// reference, its suppressor's output). Off by default: measured in Chromium it removes
    /// the echo between the human's turns, but takes the first syllables of a human talking
    /// over the voice with it, and such turns were recognized about as often as without it
    /// (docs/performance.md). For echo paths a linear filter can follow.
    pub echo_cancel: bool,
    /// 20 ms frames of one human's audio queued for their listening thread (VAD, end of
    /// turn, speech-to-text). When it is full (the thread is this far behind), new frames are
    /// dropped and counted, never queued without bound; 250 is 5 s.
    pub listen_queue: usize,
    /// Label of the data channel a human opens for control messages.
    pub control_label: String,
    /// Said to each human when their audio arrives.
    pub greeting: Option<String>,
    /// Reply audio buffered ahead of real time.
    pub max_buffered: Duration,
    /// Turns of history handed to the reply hook.
    pub max_history: usize,
    /// Prepare the reply while the turn is being judged: when the utterance so far is
    /// transcribed at a pause, the reply hook and the voice's first clause run at once, held
    /// back; if the turn then ends with that text, the prepared audio goes out at once (the
    /// reply and synthesis leave the path to the first audio), otherwise it is dropped unsaid
    /// (no state, transcript or interruption comes of it). Costs a reply and a clause of
    /// synthesis per pause the human speaks through; off by default, since a paid reply hook
    /// would be asked for replies never said.
    pub preemptive: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            turn: TurnOptions::default(),
            echo_gate: true,
            echo_cancel: false,
            listen_queue: 250,
            control_label: "control".to_owned(),
            greeting: None,
            max_buffered: Duration::from_secs(2),
            max_history: 20,
            preemptive: false,
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Joining the room failed.
    #[error("cannot join the room: {0}")]
    Join(#[from] RoomError),
    /// The room failed for good (bad key, reconnect attempts exhausted, …).
    #[error("the room failed for good: {0}")]
    Fatal(FatalError),
    /// A hook could not start.
    #[error(transparent)]
    Hook(#[from] HookError),
}

/// A voice agent in one room. See the module docs for what it says and hears.
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").finish_non_exhaustive()
    }
}

struct Inner {
    peer: RoomPeer,
    activity: Arc<dyn VoiceActivity>,
    end_of_turn: Option<Arc<dyn EndOfTurn>>,
    words_end_of_turn: Option<Arc<dyn TextEndOfTurn>>,
    stt: Arc<dyn SpeechToText>,
    llm: Arc<dyn Llm>,
    tts: Arc<dyn TextToSpeech>,
    opts: AgentOptions,
    voice: LocalTrack,
    speaking: Mutex<Option<Utterance>>,
    humans: Mutex<HashMap<String, Human>>,
    next_utterance: AtomicU64,
    /// The level of each frame the voice sent, and when (every utterance's source records
    /// into it): the echo gate's reference.
    voice_levels: OutputLevels,
    /// What the agent said lately (each sentence when it went to the voice), to tell its own
    /// voice coming back through a human's microphone from the human (bounded: 64 sentences).
    said: Mutex<VecDeque<(Instant, String)>>,
}

struct Utterance {
    id: u64,
    source: Arc<AudioSource>,
    cancel: Arc<AtomicBool>,
    /// The human whose speech paused this reply, until their turn shows whether it was an
    /// interruption (words) or not (a cough, "uh-huh": the reply resumes).
    held_by: Option<String>,
}

#[derive(Default)]
struct Human {
    listen: Option<tokio::task::JoinHandle<()>>,
    history: Vec<Turn>,
    ended: bool,
}

impl Agent {
    /// An agent speaking through `peer` (not yet joined) with the given hooks.
    pub fn new(
        peer: RoomPeer,
        stt: impl SpeechToText,
        llm: impl Llm,
        tts: impl TextToSpeech,
        opts: AgentOptions,
    ) -> Agent {
        // The voice's samples too only for the echo canceller.
        let voice_levels = if opts.echo_cancel {
            OutputLevels::with_pcm()
        } else {
            OutputLevels::new()
        };
        Agent {
            inner: Arc::new(Inner {
                peer,
                activity: Arc::new(EnergyActivity::default()),
                end_of_turn: None,
                words_end_of_turn: None,
                stt: Arc::new(stt),
                llm: Arc::new(llm),
                tts: Arc::new(tts),
                opts,
                voice: LocalTrack::audio(),
                speaking: Mutex::new(None),
                humans: Mutex::new(HashMap::new()),
                next_utterance: AtomicU64::new(1),
                said: Mutex::new(VecDeque::new()),
                voice_levels,
            }),
        }
    }

    fn configure(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner)
            .expect("an agent's state is shared only once it joins, and `with_*` take it before")
    }

    /// Detect speech with `activity` instead of the energy detector.
    pub fn with_voice_activity(mut self, activity: impl VoiceActivity) -> Agent {
        self.configure().activity = Arc::new(activity);
        self
    }

    /// Ask `model` whether a turn is complete at each pause ([`TurnEvent::Pause`]) instead of
    /// ending turns on silence alone; pair it with [`TurnOptions::with_end_of_turn_model`].
    pub fn with_end_of_turn(mut self, model: impl EndOfTurn) -> Agent {
        self.configure().end_of_turn = Some(Arc::new(model));
        self
    }

    /// Also ask `model` whether the words so far read unfinished, when the end-of-turn model
    /// says a turn is complete (beside the hand-written endings; with
    /// [`TurnOptions::transcript_veto`]). It runs on the thread that transcribes the pause,
    /// right after it, so its time is spent before the decision where it can be.
    pub fn with_text_end_of_turn(mut self, model: impl TextEndOfTurn) -> Agent {
        self.configure().words_end_of_turn = Some(Arc::new(model));
        self
    }

    /// The room peer.
    pub fn peer(&self) -> &RoomPeer {
        &self.inner.peer
    }

    /// Join `room` and serve it until the room is left (`Ok`) or fails for good.
    pub async fn run(self, room: &str) -> Result<(), AgentError> {
        let events = self.join(room).await?;
        self.serve(events).await
    }

    /// Join `room` with the agent's voice; then [`serve`](Agent::serve) the returned events.
    pub async fn join(&self, room: &str) -> Result<RoomEvents, AgentError> {
        let inner = &self.inner;
        if inner.stt.sample_rate() != 16_000 {
            return Err(HookError::new("stt", "recognizers must take 16 kHz audio").into());
        }
        let events = inner.peer.events();
        inner.peer.add_track(&inner.voice);
        inner.peer.join(room, true).await?;
        tracing::info!(room, "agent joined");
        Ok(events)
    }

    /// Serve the joined room until it is left (`Ok`) or fails for good.
    pub async fn serve(self, mut events: RoomEvents) -> Result<(), AgentError> {
        let inner = self.inner;
        while let Some(event) = events.recv().await {
            match event {
                RoomEvent::PeerJoined { peer_id, .. } => {
                    inner.humans().entry(peer_id.clone()).or_default();
                    inner.state("listening", &peer_id).await;
                }
                RoomEvent::Track { peer_id, track } if track.kind() == TrackKind::Audio => {
                    let task = tokio::spawn(listen(inner.clone(), peer_id.clone(), track));
                    let greet = {
                        let mut humans = inner.humans();
                        let h = humans.entry(peer_id.clone()).or_default();
                        if let Some(old) = h.listen.replace(task) {
                            old.abort();
                        }
                        h.history.is_empty() && !h.ended
                    };
                    if let (true, Some(text)) = (greet, inner.opts.greeting.clone()) {
                        let sentences = vec![text];
                        tokio::spawn(reply(
                            inner.clone(),
                            peer_id,
                            Said::Fixed(sentences),
                            None,
                            None,
                        ));
                    }
                }
                RoomEvent::PeerLeft { peer_id } => inner.forget(&peer_id),
                RoomEvent::DataChannelOpened { peer_id, channel }
                    if channel.label() == inner.opts.control_label =>
                {
                    tokio::spawn(control(inner.clone(), peer_id, channel));
                }
                RoomEvent::Data {
                    sender_peer_id,
                    data,
                    ..
                } => {
                    if let Ok(v) = serde_json::from_str::<Value>(data.get()) {
                        on_control(&inner, &sender_peer_id, &v).await;
                    }
                }
                RoomEvent::Fatal(e) => {
                    inner.stop_all();
                    return Err(AgentError::Fatal(e));
                }
                RoomEvent::Left => break,
                RoomEvent::Lagged { dropped } => {
                    // Only room messages are lost this way (membership and tracks are kept).
                    tracing::warn!(dropped, "agent behind on room events: messages dropped");
                }
                _ => {}
            }
        }
        inner.stop_all();
        Ok(())
    }
}

impl Inner {
    fn humans(&self) -> MutexGuard<'_, HashMap<String, Human>> {
        self.humans.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn speaking(&self) -> MutexGuard<'_, Option<Utterance>> {
        self.speaking.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send(&self, v: Value) {
        if let Err(e) = self.peer.send(&v).await {
            tracing::debug!(error = %e, "agent message not sent");
        }
    }

    async fn state(&self, state: &str, peer_id: &str) {
        self.send(json!({"type": "state", "state": state, "peerId": peer_id}))
            .await;
    }

    fn remember_said(&self, sentence: &str) {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        said.push_back((Instant::now(), sentence.to_owned()));
        while said.len() > 64 {
            said.pop_front();
        }
    }

    /// Whether `heard` is the agent's own voice coming back (an open microphone near a
    /// speaker): most of its word pairs are in what the agent said in the last
    /// [`ECHO_MEMORY`].
    fn is_own_echo(&self, heard: &str) -> bool {
        let said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        let recent: Vec<&str> = said
            .iter()
            .filter(|(at, _)| at.elapsed() <= ECHO_MEMORY)
            .map(|(_, s)| s.as_str())
            .collect();
        echoes(heard, &recent)
    }

    /// A human started speaking: hold the voice at once (nothing more is heard), keeping the
    /// reply, until their turn ends. True if it was talking.
    fn hold(&self, peer_id: &str) -> bool {
        let mut speaking = self.speaking();
        let Some(u) = speaking.as_mut() else {
            return false;
        };
        if u.held_by.is_none() {
            u.source.pause();
            u.held_by = Some(peer_id.to_owned());
        }
        true
    }

    /// Whether the current reply is held by `peer_id`'s speech.
    fn held_by(&self, peer_id: &str) -> bool {
        self.speaking()
            .as_ref()
            .is_some_and(|u| u.held_by.as_deref() == Some(peer_id))
    }

    /// The turn that held the reply had no words: go on with it.
    fn release(&self) {
        if let Some(u) = self.speaking().as_mut()
            && u.held_by.take().is_some()
        {
            u.source.resume();
        }
    }

    /// Stop the voice now (barge-in); true if it was talking.
    fn interrupt(&self) -> bool {
        let Some(u) = self.speaking().take() else {
            return false;
        };
        u.cancel.store(true, Ordering::SeqCst);
        u.source.stop();
        true
    }

    fn forget(&self, peer_id: &str) {
        if let Some(h) = self.humans().remove(peer_id)
            && let Some(t) = h.listen
        {
            t.abort();
        }
    }

    fn stop_all(&self) {
        self.interrupt();
        for (_, h) in self.humans().drain() {
            if let Some(t) = h.listen {
                t.abort();
            }
        }
    }
}

/// A control message from a human (data channel or server-routed).
async fn on_control(inner: &Arc<Inner>, peer_id: &str, v: &Value) {
    match v.get("type").and_then(Value::as_str) {
        Some("hangup") => {
            let was = {
                let mut humans = inner.humans();
                let h = humans.entry(peer_id.to_owned()).or_default();
                let was = h.ended;
                h.ended = true;
                if let Some(t) = h.listen.take() {
                    t.abort();
                }
                was
            };
            if !was {
                inner.interrupt();
                tracing::info!(peer = peer_id, "hang-up");
                inner.state("ended", peer_id).await;
            }
        }
        Some("text") => {
            if let Some(text) = v.get("text").and_then(Value::as_str) {
                let text: String = text.chars().take(2_000).collect();
                on_utterance(inner, peer_id, text, Heard::Typed(Instant::now()), None).await;
            }
        }
        _ => {}
    }
}

async fn control(inner: Arc<Inner>, peer_id: String, channel: DataChannel) {
    while let Some(msg) = channel.recv().await {
        let DataMessage::Text(text) = msg else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        on_control(&inner, &peer_id, &v).await;
        if v.get("type").and_then(Value::as_str) == Some("hangup") {
            let _ = channel
                .send(DataMessage::Text(r#"{"type":"bye"}"#.into()))
                .await;
        }
    }
}

/// When each stage of a spoken turn happened (the per-stage split of the metrics message).
#[derive(Debug, Clone, Copy)]
pub struct TurnTiming {
    /// The last window of speech arrived (the end of the human's words, as the agent got them).
    pub speech_end: Instant,
    /// The turn was judged over (end-of-turn model, silence cap, or length cap).
    pub decided: Instant,
    /// Speech-to-text returned the final text.
    pub transcribed: Instant,
    /// The final text was the one transcribed at the pause ([`Recognizer::provisional`]),
    /// before the turn was judged over: no second pass.
    ///
    /// [`Recognizer::provisional`]: crate::hooks::Recognizer::provisional
    pub early: bool,
    /// What ended it.
    pub reason: EndReason,
}

/// How a human's turn reached the agent.
#[derive(Debug, Clone, Copy)]
enum Heard {
    Spoken(TurnTiming),
    /// Typed on the page (`{"type":"text"}`), at this instant.
    Typed(Instant),
}

/// What a human's listening thread tells their listening task.
enum Listened {
    SpeechStart,
    Interim(String),
    /// What the utterance so far was transcribed as at a pause: shown as an interim
    /// transcript, and its final text if the turn ends with nothing more said (the moment to
    /// prepare the reply ahead).
    Provisional(String),
    /// The human went on after a pause whose text was [`Listened::Provisional`].
    Resumed,
    /// The final text, its timing, and whether this microphone is known to carry no echo of
    /// the agent's voice (then the text is never taken for its own words).
    Final(String, TurnTiming, bool),
}

/// 20 ms of a human's microphone at 16 kHz, for their listening thread.
struct Heard16k {
    pcm: Vec<i16>,
    /// When it arrived (turn timing is measured from arrivals).
    arrived: Instant,
    /// Where its RTP time puts it ([`MediaClock`]): what the echo gate and canceller compare
    /// with the voice's send times, unsmeared by bursts of late delivery.
    sent: Instant,
}

/// One human's listening loop: decoded frames → 16 kHz → their listening thread (VAD, end of
/// turn, speech-to-text), through a bounded queue; what the thread hears comes back here.
async fn listen(inner: Arc<Inner>, peer_id: String, track: RemoteTrack) {
    let (mut frames, mut down) = match (AudioFrames::new(track), SpeechDownsampler::new()) {
        (Ok(f), Ok(d)) => (f, d),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(peer = %peer_id, error = %e, "cannot decode this track");
            return;
        }
    };
    let hooks = (
        inner.activity.detector(),
        inner.stt.recognizer(),
        inner.end_of_turn.clone(),
    );
    let (detector, recognizer, end_of_turn) = match hooks {
        (Ok(d), Ok(r), eot) => (d, r, eot),
        (Err(e), _, _) | (_, Err(e), _) => {
            tracing::error!(peer = %peer_id, error = %e, "cannot listen to this human");
            return;
        }
    };
    let (audio_tx, audio_rx) =
        std::sync::mpsc::sync_channel::<Heard16k>(inner.opts.listen_queue.max(1));
    // What the thread hears is never dropped: it waits for room here (a handful of events
    // per utterance).
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::channel::<Listened>(16);
    let thread = Listening {
        detector,
        recognizer,
        end_of_turn,
        words_end_of_turn: inner.words_end_of_turn.clone(),
        turns: Turns::new(16_000, inner.opts.turn),
        threshold: inner.opts.turn.threshold,
        max_utterance: (inner.opts.turn.max_utterance.as_secs_f64() * 16_000.0) as usize,
        who: peer_id.clone(),
        voice: inner.voice_levels.clone(),
        gate: inner.opts.echo_gate.then(EchoGate::new),
        aec: inner
            .opts
            .echo_cancel
            .then(|| EchoCanceller::new(Instant::now(), AecOutput::Suppressed)),
    };
    let spawned = std::thread::Builder::new()
        .name("parlor-listen".into())
        .spawn(move || thread.run(audio_rx, heard_tx));
    if let Err(e) = spawned {
        tracing::error!(peer = %peer_id, error = %e, "cannot start a listening thread");
        return;
    }
    let mut pcm = Vec::with_capacity(320);
    let mut dropped = 0u64;
    let mut clock = MediaClock::new(48_000);
    // A reply prepared for the text of the current pause (dropped: never said).
    let mut prepared: Option<Prepared> = None;
    loop {
        tokio::select! {
            f = frames.next() => {
                let Some(f) = f else { break };
                pcm.clear();
                if down.process(&f, &mut pcm).is_err() {
                    continue;
                }
                let arrived = Instant::now();
                let heard = Heard16k { pcm: pcm.clone(), arrived, sent: clock.place(f.rtp_time, arrived) };
                match audio_tx.try_send(heard) {
                    Ok(()) => {}
                    Err(std::sync::mpsc::TrySendError::Full(_)) => {
                        // The overflow policy: the newest audio is dropped, counted, and
                        // logged at the first drop of each second of drops.
                        if dropped.is_multiple_of(50) {
                            tracing::warn!(peer = %peer_id, dropped, "listening thread behind: audio dropped");
                        }
                        dropped += 1;
                    }
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => break,
                }
            }
            Some(heard) = heard_rx.recv() => match heard {
                Listened::Provisional(text) => {
                    show_interim(&inner, &peer_id, &text).await;
                    if inner.opts.preemptive
                        && prepared.as_ref().is_none_or(|p| p.text != text.trim())
                    {
                        prepared = prepare(&inner, &peer_id, &text);
                    }
                }
                Listened::Resumed => prepared = None,
                Listened::SpeechStart => {
                    prepared = None;
                    // Barge-in: the voice is held at once; the turn's words decide whether the
                    // reply is dropped (an interruption) or resumed (a cough, "uh-huh").
                    if inner.hold(&peer_id) {
                        tracing::info!(peer = %peer_id, "barge-in: voice held");
                        inner.send(json!({"type": "barge-in", "peerId": peer_id})).await;
                        inner.state("listening", &peer_id).await;
                    }
                }
                Listened::Interim(text) => show_interim(&inner, &peer_id, &text).await,
                Listened::Final(text, timing, no_echo) => {
                    let prepared = prepared.take();
                    // A human may well reuse the agent's words ("Ask me about the weather" →
                    // "Tell me about the weather"): only where this microphone may carry the
                    // agent's voice is a transcript of its own words taken for an echo.
                    if !no_echo && inner.is_own_echo(&text) {
                        // The agent's own voice through the human's microphone: never a turn.
                        tracing::info!(peer = %peer_id, text, "own voice heard back: ignored");
                        if inner.held_by(&peer_id) {
                            inner.release();
                            inner.state("speaking", &peer_id).await;
                        }
                        inner.send(json!({"type": "echo", "peerId": peer_id, "heard": text})).await;
                        continue;
                    }
                    if inner.held_by(&peer_id) {
                        if !has_words(&text) {
                            // A false interruption: no words, or only a backchannel.
                            tracing::info!(peer = %peer_id, text, "not an interruption: the reply goes on");
                            inner.release();
                            inner.send(json!({"type": "resumed", "peerId": peer_id, "heard": text})).await;
                            inner.state("speaking", &peer_id).await;
                            continue;
                        }
                        inner.interrupt();
                    }
                    on_utterance(&inner, &peer_id, text, Heard::Spoken(timing), prepared).await;
                }
            },
        }
    }
    tracing::debug!(peer = %peer_id, dropped, "audio ended");
}

/// The blocking half of one human's listening: speech detection, turn-taking, the
/// end-of-turn model and speech-to-text, on its own thread (off the audio path).
struct Listening {
    detector: Box<dyn crate::hooks::SpeechDetector>,
    recognizer: Box<dyn crate::hooks::Recognizer>,
    end_of_turn: Option<Arc<dyn EndOfTurn>>,
    /// Reads the transcript of a pause ([`Agent::with_text_end_of_turn`]).
    words_end_of_turn: Option<Arc<dyn TextEndOfTurn>>,
    turns: Turns,
    threshold: f32,
    max_utterance: usize,
    who: String,
    /// What the agent's voice sent (levels and frames).
    voice: OutputLevels,
    /// This microphone's echo gate (on what the microphone heard).
    gate: Option<EchoGate>,
    /// This microphone's echo canceller.
    aec: Option<EchoCanceller>,
}

impl Listening {
    fn run(
        mut self,
        audio: std::sync::mpsc::Receiver<Heard16k>,
        heard: tokio::sync::mpsc::Sender<Listened>,
    ) {
        let window = self.detector.window().max(1);
        let mut buffered: std::collections::VecDeque<i16> = std::collections::VecDeque::new();
        let mut probabilities = Vec::new();
        let mut utterance: Vec<i16> = Vec::new();
        let mut speech_end = Instant::now();
        // Where the utterance began (its pre-roll included), and the last time the agent's
        // voice said something: an utterance that began well after that cannot carry it.
        let mut speech_start = Instant::now();
        let mut voice_heard: Option<Instant> = None;
        // Detector windows for the turn, and those held while the echo gate is unsure; their
        // buffers are used again (no allocation per window once warm).
        let mut ready: Vec<(Vec<i16>, f32, Instant)> = Vec::new();
        let mut spare: Vec<Vec<i16>> = Vec::new();
        let mut unsure: std::collections::VecDeque<Undecided> = std::collections::VecDeque::new();
        let mut voice_seen = tokio::time::Instant::now();
        let mut gated = 0u64;
        let mut cleaned: Vec<i16> = Vec::with_capacity(640);
        let mut stats_at = Instant::now();
        // The utterance so far being transcribed in a pause (dropped when speech resumes),
        // and whether such a transcription (perhaps a dropped one) is still running.
        let mut ahead: Option<Ahead> = None;
        let ahead_busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        while let Ok(Heard16k {
            pcm: raw,
            arrived,
            sent,
        }) = audio.recv()
        {
            // What the voice sent since the last look: when it last spoke, and the gate's and
            // the canceller's reference.
            for f in self.voice.frames_since(voice_seen) {
                voice_seen = f.at;
                if f.level >= crate::echo::VOICE_ACTIVE {
                    voice_heard = Some(f.at.into_std());
                }
                if let Some(gate) = &mut self.gate {
                    gate.voice(f.at.into_std(), f.level);
                }
                if let Some(aec) = &mut self.aec {
                    aec.voice(f.at.into_std(), f.rate, &f.pcm);
                }
            }
            // The agent's own voice taken out of what the human's microphone heard.
            let pcm: &[i16] = match &mut self.aec {
                Some(aec) => {
                    cleaned.clear();
                    aec.microphone(sent, &raw, &mut cleaned);
                    if arrived.duration_since(stats_at) >= Duration::from_secs(5) {
                        stats_at = arrived;
                        tracing::debug!(peer = %self.who, stats = ?aec.stats(), "echo canceller");
                    }
                    &cleaned
                }
                None => &raw,
            };
            buffered.extend(pcm.iter().copied());
            probabilities.clear();
            if let Err(e) = self.detector.push(pcm, &mut probabilities) {
                tracing::warn!(peer = %self.who, error = %e, "speech detector");
                continue;
            }
            // Louder than the agent's own voice would be here (in what the microphone heard:
            // a gate on the canceller's output lets its residue through), or not speech.
            let level = rms(&raw);
            let verdict = self
                .gate
                .as_mut()
                .map_or(Verdict::Speech, |gate| gate.hear(sent, level));
            let speechy = probabilities.iter().any(|&p| p >= self.threshold);
            if verdict != Verdict::Speech && speechy {
                gated += 1;
                if gated.is_multiple_of(50) {
                    let path = self.gate.as_ref().and_then(EchoGate::path);
                    tracing::debug!(peer = %self.who, gated, ?path, "own voice in this microphone: gated");
                }
            }
            // This frame's detector windows, in order: to the turn now, or held back while the
            // gate is unsure of them (and behind any held before them).
            let hold = !unsure.is_empty() || verdict == Verdict::Unsure && speechy;
            for &p in &probabilities {
                if buffered.len() < window {
                    break;
                }
                let mut chunk = spare.pop().unwrap_or_default();
                chunk.clear();
                chunk.extend(buffered.drain(..window));
                if hold {
                    unsure.push_back(Undecided {
                        chunk,
                        p,
                        arrived,
                        sent,
                        level,
                        verdict,
                    });
                } else {
                    let p = if verdict == Verdict::Speech { p } else { 0.0 };
                    ready.push((chunk, p, arrived));
                }
            }
            if let Some(first) = unsure.front() {
                // Judged again once the gate knows, or, past the hold's bound, as the gate
                // judges them then (unsure: not speech). Once the voice has been quiet long
                // enough that no echo of it can follow, while the gate still cannot tell (the
                // voice said too little to learn from), they are the human's if speech goes on
                // after the voice (their words, if the agent's, are caught by the own-words
                // check), and not if it stopped with the voice (its echo, or words that cannot
                // be told from it).
                let knows = self.gate.as_ref().is_none_or(|g| !g.learning());
                let voice_quiet = voice_heard.is_none_or(|v| sent >= v + UNSURE_VOICE_QUIET);
                let overdue = unsure.len() >= UNSURE_WINDOWS
                    || arrived.saturating_duration_since(first.arrived) >= UNSURE_HOLD;
                let goes_on = (voice_quiet && !knows && !overdue)
                    .then(|| speech_goes_on(&unsure, self.threshold))
                    .flatten();
                if knows || overdue || goes_on.is_some() {
                    let (mut passed, total) = (0usize, unsure.len());
                    for u in unsure.drain(..) {
                        let again = self
                            .gate
                            .as_ref()
                            .map_or(Verdict::Speech, |g| g.judge(u.sent, u.level));
                        let speech = match again {
                            Verdict::Speech => true,
                            Verdict::Echo => false,
                            Verdict::Unsure => goes_on == Some(true),
                        };
                        passed += usize::from(speech);
                        ready.push((u.chunk, if speech { u.p } else { 0.0 }, u.arrived));
                    }
                    tracing::debug!(peer = %self.who, total, passed, knows, ?goes_on, overdue, "windows the echo gate was unsure of: judged again");
                }
            }
            for (chunk, p, arrived) in ready.iter().map(|(c, p, a)| (c, *p, *a)) {
                if p >= self.threshold {
                    speech_end = arrived;
                    if let Some(a) = ahead.take() {
                        if a.announced && heard.blocking_send(Listened::Resumed).is_err() {
                            return;
                        }
                        // The human went on: the pause's audio goes to the recognizer after all.
                        match self.recognizer.feed(&a.held) {
                            Ok(Some(text)) => {
                                if heard.blocking_send(Listened::Interim(text)).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!(peer = %self.who, error = %e, "recognizer"),
                        }
                    }
                }
                let mut event = self.turns.push(chunk, p);
                if let TurnEvent::SpeechStart { pre_roll } = &event {
                    speech_start = arrived
                        .checked_sub(Duration::from_secs_f64(pre_roll.len() as f64 / 16_000.0))
                        .unwrap_or(arrived);
                    utterance.clear();
                    ahead = None;
                    utterance.extend_from_slice(pre_roll);
                    let started = self
                        .recognizer
                        .start()
                        .and_then(|()| self.recognizer.feed(pre_roll));
                    if let Err(e) = started {
                        tracing::warn!(peer = %self.who, error = %e, "recognizer");
                    }
                    if heard.blocking_send(Listened::SpeechStart).is_err() {
                        return;
                    }
                    continue;
                }
                if matches!(event, TurnEvent::None) {
                    continue;
                }
                if utterance.len() < self.max_utterance {
                    utterance.extend_from_slice(chunk);
                }
                match &mut ahead {
                    // While the utterance so far is being transcribed, the pause is held back.
                    Some(a) => a.held.extend_from_slice(chunk),
                    None => match self.recognizer.feed(chunk) {
                        Ok(Some(text)) => {
                            if heard.blocking_send(Listened::Interim(text)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(peer = %self.who, error = %e, "recognizer"),
                    },
                }
                if let Some(a) = ahead.as_mut() {
                    a.arrived();
                }
                if let (TurnEvent::Pause { silence }, Some(model)) = (&event, &self.end_of_turn) {
                    match model.complete(&utterance) {
                        Ok(p) => {
                            // What Whisper made of it so far may say "not yet" where the
                            // audio model says "done" ("I was wondering", "What is your...").
                            // So may a language model reading those words (`words_veto`).
                            let (rules_veto, words_veto) = match ahead.as_mut() {
                                Some(a) if p >= 0.5 && self.turns.options().transcript_veto => (
                                    a.wait().is_some_and(|t| reads_unfinished(&t)),
                                    a.words_unfinished(),
                                ),
                                _ => (false, false),
                            };
                            let veto = rules_veto || words_veto;
                            tracing::debug!(peer = %self.who, p, veto, rules_veto, words_veto, silence_ms = silence.as_millis() as u64, "end of turn?");
                            if p >= 0.5
                                && !veto
                                && let Some(end) = self.turns.end_turn()
                            {
                                event = end;
                            }
                        }
                        Err(e) => tracing::warn!(peer = %self.who, error = %e, "end-of-turn model"),
                    }
                }
                // The model said "not yet" and the human has stayed quiet: if the words read as
                // a finished sentence, the turn is over (a shorter cap than the silence's).
                if let TurnEvent::Settled { silence } = event {
                    let text = ahead.as_mut().and_then(Ahead::wait);
                    let done = text.as_deref().is_some_and(reads_finished);
                    tracing::debug!(peer = %self.who, text, done, silence_ms = silence.as_millis() as u64, "settled?");
                    if done && let Some(end) = self.turns.end_turn_settled() {
                        event = end;
                    }
                }
                // A transcript of the pause, first seen now, while the turn goes on: shown,
                // and told as provisional (the reply can be prepared while the turn is judged).
                if !matches!(event, TurnEvent::End { .. })
                    && let Some(text) = ahead.as_mut().and_then(Ahead::fresh)
                    && heard.blocking_send(Listened::Provisional(text)).is_err()
                {
                    return;
                }
                // Transcribe what there is ahead of the decision, on another thread (at the
                // quiet mark, or at a pause not judged final if not started in this silence):
                // if the turn ends with nothing more said, the answer starts at once.
                let start_ahead = match event {
                    TurnEvent::Quiet { .. } => true,
                    TurnEvent::Pause { .. } => ahead.is_none(),
                    _ => false,
                };
                if start_ahead
                    && !ahead_busy.load(std::sync::atomic::Ordering::Acquire)
                    && let Some(job) = self.recognizer.provisional()
                {
                    // The words' model only serves the transcript's veto.
                    let words = self
                        .words_end_of_turn
                        .clone()
                        .filter(|_| self.turns.options().transcript_veto);
                    ahead = Some(Ahead::start(job, words, &self.who, &ahead_busy));
                }
                if let TurnEvent::End { reason, .. } = event {
                    let decided = Instant::now();
                    let early = ahead.as_mut().and_then(Ahead::wait);
                    let held = ahead.take().map(|a| a.held).unwrap_or_default();
                    let finish = |r: &mut Box<dyn crate::hooks::Recognizer>| {
                        r.feed(&held).and_then(|_| r.finish()).unwrap_or_else(|e| {
                            tracing::warn!(peer = %self.who, error = %e, "recognizer");
                            String::new()
                        })
                    };
                    let (text, early) = match early {
                        Some(text) => (text, true),
                        None => (finish(&mut self.recognizer), false),
                    };
                    let timing = TurnTiming {
                        speech_end,
                        decided,
                        transcribed: Instant::now(),
                        early,
                        reason,
                    };
                    utterance.clear();
                    // Its words may be the agent's own voice heard back only where the voice
                    // spoke during it (or just before: the echo's path) and the gate does not
                    // know this microphone to be free of it. A human repeating what the agent
                    // just said back to them ("I heard you say: …") after it finished is heard.
                    let voice_near = voice_heard.is_some_and(|v| v + ECHO_TAIL >= speech_start);
                    let no_echo =
                        !voice_near || self.gate.as_ref().is_some_and(EchoGate::knows_no_echo);
                    if heard
                        .blocking_send(Listened::Final(text, timing, no_echo))
                        .is_err()
                    {
                        return;
                    }
                }
            }
            spare.extend(ready.drain(..).map(|(chunk, _, _)| chunk));
        }
    }
}

/// A detector window the echo gate was unsure of ([`Verdict::Unsure`]: still learning whether
/// this microphone carries the agent's voice, the window no louder than the voice), held back
/// with every window after it until the gate can judge it again.
struct Undecided {
    chunk: Vec<i16>,
    p: f32,
    arrived: Instant,
    /// Where its RTP time puts it, and its level (what the gate judges).
    sent: Instant,
    level: f32,
    /// The gate's verdict when it was heard.
    verdict: Verdict,
}

/// Whether speech goes on after the last window of speech the gate was unsure of (held in
/// `unsure`): `Some(true)` at a window of speech it did not doubt before [`UNSURE_GAP`]
/// windows of silence, `Some(false)` at such a silence first, `None` while neither is heard.
fn speech_goes_on(unsure: &std::collections::VecDeque<Undecided>, threshold: f32) -> Option<bool> {
    let last = unsure
        .iter()
        .rposition(|u| u.verdict == Verdict::Unsure && u.p >= threshold)?;
    let mut quiet = 0;
    for u in unsure.iter().skip(last + 1) {
        if u.p >= threshold {
            return Some(true);
        }
        quiet += 1;
        if quiet >= UNSURE_GAP {
            return Some(false);
        }
    }
    None
}

/// Windows of silence (~320 ms) after which speech the gate was unsure of has stopped.
const UNSURE_GAP: usize = 10;

/// The longest the listener holds windows the echo gate is unsure of (the gate needs ~1 s of
/// the voice speaking to know, more while a human talks over it: their speech correlates with
/// the voice now and then); past it they are judged as the gate judges them then.
const UNSURE_HOLD: Duration = Duration::from_secs(3);
/// The most windows held (the bound on [`UNSURE_HOLD`] if frames arrive in a burst; Silero's
/// 32 ms windows: ~3.2 s).
const UNSURE_WINDOWS: usize = 100;
/// The voice quiet this long: no echo of it can still be on its way (the gate's longest delay).
const UNSURE_VOICE_QUIET: Duration = Duration::from_millis(520);

/// A transcription of the utterance so far running on its own thread while the listener
/// waits to learn whether the turn is over ([`Recognizer::provisional`]). The pause's audio is
/// held back from the recognizer meanwhile, and fed to it if the human goes on.
///
/// [`Recognizer::provisional`]: crate::hooks::Recognizer::provisional
struct Ahead {
    result: std::sync::mpsc::Receiver<Result<(String, bool), HookError>>,
    /// `Some` once the result is in (`None` inside: the transcription failed).
    done: Option<Option<String>>,
    /// The text end-of-turn model read the text as unfinished.
    unfinished: bool,
    held: Vec<i16>,
    /// Its text was told to the listening task ([`Ahead::fresh`]).
    announced: bool,
}

impl Ahead {
    /// Run `job` on its own thread; `busy` is set until it returns (one at a time per
    /// listener: a job left behind by speech that resumed blocks the next one until done).
    /// With `words`, the text is then read by the text end-of-turn model, on the same thread,
    /// unless the hand-written endings already read it unfinished (its verdict would not
    /// change the veto).
    fn start(
        job: crate::hooks::Transcription,
        words: Option<Arc<dyn TextEndOfTurn>>,
        who: &str,
        busy: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Ahead {
        use std::sync::atomic::Ordering;
        let (tx, result) = std::sync::mpsc::sync_channel(1);
        busy.store(true, Ordering::Release);
        let flag = busy.clone();
        let peer = who.to_owned();
        let spawned = std::thread::Builder::new()
            .name("parlor-stt-ahead".into())
            .spawn(move || {
                // The listener may have moved on (the human spoke again): nobody to tell.
                let result = job().map(|text| {
                    let unfinished = match &words {
                        Some(model) if !text.trim().is_empty() && !reads_unfinished(&text) => {
                            model.unfinished(&text).unwrap_or_else(|e| {
                                tracing::warn!(peer = %peer, error = %e, "text end-of-turn model");
                                false
                            })
                        }
                        _ => false,
                    };
                    (text, unfinished)
                });
                let _ = tx.send(result);
                flag.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            // The channel is closed: `wait` says "failed" and `finish` runs as before.
            busy.store(false, Ordering::Release);
            tracing::warn!(peer = %who, error = %e, "no thread for speech-to-text ahead");
        }
        Ahead {
            result,
            done: None,
            unfinished: false,
            held: Vec::new(),
            announced: false,
        }
    }

    fn settle(&mut self, r: Result<Result<(String, bool), HookError>, ()>) {
        self.done = Some(match r {
            Ok(Ok((text, unfinished))) => {
                self.unfinished = unfinished;
                Some(text)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "recognizer (ahead of the turn's end)");
                None
            }
            Err(()) => None,
        });
    }

    /// Take the result if it has arrived (without waiting).
    fn arrived(&mut self) {
        if self.done.is_some() {
            return;
        }
        match self.result.try_recv() {
            Ok(r) => self.settle(Ok(r)),
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => self.settle(Err(())),
        }
    }

    /// The text, once, the first time it is asked for after it arrived (not empty).
    fn fresh(&mut self) -> Option<String> {
        if self.announced {
            return None;
        }
        let text = self
            .done
            .clone()
            .flatten()
            .filter(|t| !t.trim().is_empty())?;
        self.announced = true;
        Some(text)
    }

    /// Whether the text end-of-turn model read the text as unfinished (waiting for it).
    fn words_unfinished(&mut self) -> bool {
        self.wait();
        self.unfinished
    }

    /// The text, waiting for it if need be (`None`: the transcription failed).
    fn wait(&mut self) -> Option<String> {
        if self.done.is_none() {
            let r = self.result.recv().map_err(|_| ());
            self.settle(r);
        }
        self.done.clone().flatten()
    }
}

/// Show what the human is saying, not yet final.
async fn show_interim(inner: &Arc<Inner>, peer_id: &str, text: &str) {
    inner
        .send(json!({"type": "transcript", "role": "human", "peerId": peer_id, "text": text, "final": false}))
        .await;
}

/// Add the human's `text` to `history`, keeping only the last `max` turns (no more are
/// ever used).
fn heard_say(history: &mut Vec<Turn>, text: &str, max: usize) {
    history.push(Turn {
        role: Role::Human,
        text: text.to_owned(),
    });
    let skip = history.len().saturating_sub(max);
    history.drain(..skip);
}

/// A reply started for a provisional text ([`AgentOptions::preemptive`]), held back until
/// the turn ends with that text. Dropping it drops the reply unsaid.
struct Prepared {
    text: String,
    go: tokio::sync::oneshot::Sender<Heard>,
}

/// Start the reply to `text`, held back (see [`Prepared`]).
fn prepare(inner: &Arc<Inner>, peer_id: &str, text: &str) -> Option<Prepared> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut history = match inner.humans().get(peer_id) {
        Some(h) if h.ended => return None,
        Some(h) => h.history.clone(),
        None => Vec::new(),
    };
    heard_say(&mut history, text, inner.opts.max_history);
    let (go, gate) = tokio::sync::oneshot::channel();
    tokio::spawn(reply(
        inner.clone(),
        peer_id.to_owned(),
        Said::Model(history),
        None,
        Some(gate),
    ));
    Some(Prepared {
        text: text.to_owned(),
        go,
    })
}

/// A finished human utterance: show it and answer it (with the reply prepared for it, if
/// one was and its text is this one).
async fn on_utterance(
    inner: &Arc<Inner>,
    peer_id: &str,
    text: String,
    heard: Heard,
    prepared: Option<Prepared>,
) {
    let text = text.trim().to_owned();
    if text.is_empty() {
        return;
    }
    let history = {
        let mut humans = inner.humans();
        let h = humans.entry(peer_id.to_owned()).or_default();
        if h.ended {
            return;
        }
        heard_say(&mut h.history, &text, inner.opts.max_history);
        h.history.clone()
    };
    tracing::info!(peer = peer_id, text = %text, "heard");
    inner
        .send(json!({"type": "transcript", "role": "human", "peerId": peer_id, "text": text, "final": true}))
        .await;
    let heard = match prepared {
        Some(p) if p.text == text => match p.go.send(heard) {
            Ok(()) => {
                tracing::debug!(peer = peer_id, "the prepared reply goes out");
                return;
            }
            Err(heard) => heard, // it ended (a hook failed): answer afresh
        },
        _ => heard,
    };
    tokio::spawn(reply(
        inner.clone(),
        peer_id.to_owned(),
        Said::Model(history),
        Some(heard),
        None,
    ));
}

enum Said {
    /// Ask the reply hook.
    Model(Vec<Turn>),
    /// Say these sentences.
    Fixed(Vec<String>),
}

/// Speak one reply as one utterance (one `AudioSource` on the agent's voice track). With a
/// `gate` it is prepared ahead ([`AgentOptions::preemptive`]): the reply hook runs and the
/// voice synthesizes its first chunk, but nothing is said, shown or interrupted until the gate
/// opens with the turn's timing; if it is dropped instead, the reply ends unsaid.
async fn reply(
    inner: Arc<Inner>,
    peer_id: String,
    said: Said,
    mut heard: Option<Heard>,
    mut gate: Option<tokio::sync::oneshot::Receiver<Heard>>,
) {
    let cancel = Arc::new(AtomicBool::new(false));
    let prepared = gate.is_some();
    let mut out: Option<(Arc<AudioSource>, u64)> = None;
    if !prepared {
        match begin(&inner, &peer_id, &cancel).await {
            Some(o) => out = Some(o),
            None => return,
        }
    }

    // The reply hook streams sentences from a blocking thread; it waits when 16 sentences
    // are ahead of the voice (backpressure, not a growing queue), and stops when the reply is
    // cancelled (the receiver is dropped).
    let (sentence_tx, mut sentences) = tokio::sync::mpsc::channel::<String>(16);
    let model = match said {
        Said::Fixed(list) => {
            tokio::spawn(async move {
                for s in list {
                    if sentence_tx.send(s).await.is_err() {
                        return;
                    }
                }
            });
            None
        }
        Said::Model(history) => {
            let (llm, c) = (inner.llm.clone(), cancel.clone());
            Some(tokio::task::spawn_blocking(move || {
                llm.reply(&history, &mut |s| {
                    if c.load(Ordering::SeqCst) || sentence_tx.blocking_send(s.to_owned()).is_err()
                    {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                })
            }))
        }
    };
    let mut text = String::new();
    let mut first_audio = true;
    let mut first_text: Option<Instant> = None;
    // Sentences not yet shown or remembered (while the reply is held back).
    let mut unsaid: Vec<String> = Vec::new();
    'reply: while let Some(sentence) = sentences.recv().await {
        if cancel.load(Ordering::SeqCst) {
            break;
        }
        first_text.get_or_insert_with(Instant::now);
        unsaid.push(sentence.clone());
        if out.is_some() {
            say(&inner, &peer_id, &mut text, &mut unsaid).await;
        }
        // The reply's first sentence is voiced clause by clause where it splits well: the
        // first audio waits for the voice to synthesize a clause, not a long sentence.
        let chunks: Vec<String> = match first_audio.then(|| first_clause(&sentence)).flatten() {
            Some((a, b)) => vec![a.to_owned(), b.to_owned()],
            None => vec![sentence],
        };
        for chunk in chunks {
            if cancel.load(Ordering::SeqCst) {
                break;
            }
            // The voice hook's PCM: a few chunks ahead of the AudioSource, whose own buffer
            // (`max_buffered`) is the backpressure; the hook waits for room.
            let (pcm_tx, mut pcm_rx) = tokio::sync::mpsc::channel::<Vec<i16>>(4);
            let (tts, c) = (inner.tts.clone(), cancel.clone());
            let speech = tokio::task::spawn_blocking(move || {
                tts.speak(&chunk, &mut |pcm| {
                    if c.load(Ordering::SeqCst) || pcm_tx.blocking_send(pcm.to_vec()).is_err() {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                })
            });
            while let Some(pcm) = pcm_rx.recv().await {
                // Prepared ahead: the first audio waits here for the turn to end with this
                // text (or for the word that it will not).
                if let Some(g) = gate.take() {
                    match g.await {
                        Ok(h) => heard = Some(h),
                        Err(_) => {
                            cancel.store(true, Ordering::SeqCst);
                            drop(pcm_rx);
                            let _ = speech.await;
                            break 'reply;
                        }
                    }
                    match begin(&inner, &peer_id, &cancel).await {
                        Some(o) => out = Some(o),
                        None => {
                            cancel.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                    say(&inner, &peer_id, &mut text, &mut unsaid).await;
                }
                let Some((source, _)) = &out else { break };
                let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
                if source.push(&bytes).await.is_err() || cancel.load(Ordering::SeqCst) {
                    break;
                }
                if first_audio {
                    first_audio = false;
                    inner.state("speaking", &peer_id).await;
                    if let (Some(heard), Some(text_at)) = (heard, first_text) {
                        let metrics =
                            turn_metrics(&peer_id, heard, text_at, Instant::now(), prepared);
                        tracing::info!(peer = %peer_id, %metrics, "replying");
                        inner.send(metrics).await;
                    }
                }
            }
            // Dropped first: a hook blocked on a full channel then stops instead of waiting.
            drop(pcm_rx);
            if let Ok(Err(e)) = speech.await {
                tracing::warn!(error = %e, "speech hook failed");
            }
        }
    }
    drop(sentences);
    if let Some(m) = model
        && let Ok(Err(e)) = m.await
    {
        tracing::warn!(error = %e, "reply hook failed");
    }
    let Some((source, id)) = out else {
        // Never said: prepared for a turn that went on, or the hooks gave nothing.
        return;
    };
    if cancel.load(Ordering::SeqCst) {
        return;
    }
    source.end().await;
    {
        let mut speaking = inner.speaking();
        if speaking.as_ref().is_some_and(|u| u.id == id) {
            *speaking = None;
        }
    }
    if !text.is_empty() {
        inner
            .send(json!({"type": "transcript", "role": "agent", "peerId": peer_id, "text": text, "final": true}))
            .await;
        if let Some(h) = inner.humans().get_mut(&peer_id) {
            h.history.push(Turn {
                role: Role::Agent,
                text,
            });
        }
    }
    inner.state("listening", &peer_id).await;
}

/// The reply starts being said: its audio source on the voice track, the utterance it is
/// (what a barge-in holds or drops; any other one is interrupted), and the "thinking" state.
async fn begin(
    inner: &Arc<Inner>,
    peer_id: &str,
    cancel: &Arc<AtomicBool>,
) -> Option<(Arc<AudioSource>, u64)> {
    let options = AudioSourceOptions::new(inner.tts.sample_rate(), Layout::Mono)
        .max_buffered(inner.opts.max_buffered)
        .levels(inner.voice_levels.clone());
    let source = match AudioSource::with_track(options, inner.voice.clone()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot create the reply's audio source");
            return None;
        }
    };
    let id = inner.next_utterance.fetch_add(1, Ordering::Relaxed);
    inner.interrupt();
    *inner.speaking() = Some(Utterance {
        id,
        source: source.clone(),
        cancel: cancel.clone(),
        held_by: None,
    });
    inner.state("thinking", peer_id).await;
    Some((source, id))
}

/// Show and remember the sentences of a reply being said (`text`: the reply so far).
async fn say(inner: &Arc<Inner>, peer_id: &str, text: &mut String, unsaid: &mut Vec<String>) {
    if unsaid.is_empty() {
        return;
    }
    for sentence in unsaid.drain(..) {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(sentence.trim());
        inner.remember_said(&sentence);
    }
    inner
        .send(json!({"type": "transcript", "role": "agent", "peerId": peer_id, "text": text, "final": false}))
        .await;
}

/// RMS of s16 PCM.
fn rms(pcm: &[i16]) -> f32 {
    let energy: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / pcm.len().max(1) as f64).sqrt() as f32
}

/// A sentence split after its first clause (at `,`, `;` or `:`), where the clause has four
/// words or more and at least three follow: what the voice says first, and the rest.
fn first_clause(sentence: &str) -> Option<(&str, &str)> {
    let words = |s: &str| s.split_whitespace().count();
    sentence
        .char_indices()
        .filter(|&(_, c)| matches!(c, ',' | ';' | ':'))
        .map(|(i, c)| sentence.split_at(i + c.len_utf8()))
        .find(|(a, b)| words(a) >= 4 && words(b) >= 3)
        .map(|(a, b)| (a.trim(), b.trim()))
}

/// How long what the agent said counts as a possible echo.
const ECHO_MEMORY: Duration = Duration::from_secs(20);

/// How long after the agent's voice last spoke an utterance that begins may still carry it
/// (the way back: the network both ways, the far end's jitter buffer, the room's delay; the
/// echo measurements here found 80–400 ms).
const ECHO_TAIL: Duration = Duration::from_secs(1);

/// Whether `heard` (two words or more) repeats `said`: at least half of its word pairs occur
/// in it, or it matches a run of one sentence's words with at most one word in three wrong
/// (the recognizer mishears the echo too: "with the light wind" for "with a light wind").
/// One word is never judged an echo ("yes" may be an answer).
fn echoes(heard: &str, said: &[&str]) -> bool {
    let heard = words(heard);
    if heard.len() < 2 {
        return false;
    }
    let mut pairs = std::collections::HashSet::new();
    for s in said {
        let w = words(s);
        for p in w.windows(2) {
            pairs.insert((p[0].clone(), p[1].clone()));
        }
    }
    let total = heard.len() - 1;
    let found = heard
        .windows(2)
        .filter(|p| pairs.contains(&(p[0].clone(), p[1].clone())))
        .count();
    if found * 2 >= total && found > 0 {
        return true;
    }
    heard.len() >= 3
        && said
            .iter()
            .any(|s| 3 * edits_to_a_run(&heard, &words(s)) <= heard.len())
}

/// The fewest word edits (substitutions, insertions, deletions) that turn `heard` into some
/// run of consecutive words of `said` (free start and end in `said`).
fn edits_to_a_run(heard: &[String], said: &[String]) -> usize {
    // d[j]: edits between the heard words so far and a run of `said` ending at word j.
    let mut d = vec![0usize; said.len() + 1];
    for (i, h) in heard.iter().enumerate() {
        let mut diagonal = d[0];
        d[0] = i + 1;
        for (j, w) in said.iter().enumerate() {
            let keep = diagonal + usize::from(h != w);
            diagonal = d[j + 1];
            d[j + 1] = keep.min(d[j + 1] + 1).min(d[j] + 1);
        }
    }
    d.into_iter().min().unwrap_or(heard.len())
}

/// Words a human would say to interrupt, not just to show they are listening: a transcript
/// of only backchannels and fillers ("uh-huh", "mm", "okay", "right"), of what the recognizer
/// makes of noise (a bracketed "[coughs]", "(music)"), or empty, has none; nor has a lone
/// word of three letters or fewer that is not one people interrupt with ("no", "why", "who",
/// "hey", …): recognizers spell a murmured "uh-huh" as "Fuh" or "Ha".
fn has_words(text: &str) -> bool {
    const SHORT_INTERRUPTIONS: &[&str] = &[
        "no", "nah", "yes", "why", "who", "how", "hey", "hi", "bye", "not", "and", "but", "so",
        "wait", "what", "stop",
    ];
    const NOT_WORDS: &[&str] = &[
        "uh", "huh", "uhhuh", "uhuh", "um", "umm", "hmm", "hm", "mm", "mmm", "mhm", "mmhmm", "ah",
        "oh", "yeah", "yep", "right", "okay", "ok", "sure", "i", "see",
    ];
    let mut plain = String::new();
    let (mut depth, mut starred) = (0usize, false);
    for c in text.chars() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            '*' => starred = !starred,
            _ if depth == 0 && !starred => plain.push(c),
            _ => {}
        }
    }
    let words: Vec<String> = words(&plain)
        .into_iter()
        .filter(|w| !NOT_WORDS.contains(&w.as_str()))
        .collect();
    match words.as_slice() {
        [] => false,
        [w] => w.chars().count() > 3 || SHORT_INTERRUPTIONS.contains(&w.as_str()),
        _ => true,
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    (to.saturating_duration_since(from).as_secs_f64() * 1_000.0 * 10.0).round() / 10.0
}

/// The metrics message of one answered turn: each stage's share of the time from the end of
/// the human's words (or the typed text's arrival) to the reply's first audio.
/// A reply prepared ahead (`prepared`) had its text and first audio before the turn ended:
/// its reply stage counts as nothing and its voice stage from the final text.
fn turn_metrics(
    peer_id: &str,
    heard: Heard,
    first_text: Instant,
    first_audio: Instant,
    prepared: bool,
) -> Value {
    match heard {
        Heard::Spoken(t) => {
            let first_text = first_text.max(t.transcribed);
            json!({
            "type": "metrics",
            "peerId": peer_id,
            "eouToFirstAudioMs": ms(t.speech_end, first_audio),
            "prepared": prepared,
            "endedBy": match t.reason {
                EndReason::Model => "end-of-turn model",
                EndReason::Settled => "words read finished",
                EndReason::Silence => "silence",
                EndReason::MaxUtterance => "length",
            },
            "sttAtPause": t.early,
            "stages": {
                "endOfTurnMs": ms(t.speech_end, t.decided),
                "sttMs": ms(t.decided, t.transcribed),
                "replyMs": ms(t.transcribed, first_text),
                "ttsMs": ms(first_text, first_audio),
            },
            })
        }
        Heard::Typed(at) => json!({
            "type": "metrics",
            "peerId": peer_id,
            "textToFirstAudioMs": ms(at, first_audio),
            "endedBy": "text",
            "stages": {
                "replyMs": ms(at, first_text),
                "ttsMs": ms(first_text, first_audio),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_first_sentence_is_voiced_from_its_first_clause() {
        assert_eq!(
            first_clause(
                "Here it is sunny and twenty one degrees, with a light wind from the west."
            ),
            Some((
                "Here it is sunny and twenty one degrees,",
                "with a light wind from the west."
            ))
        );
        assert_eq!(first_clause("Hello! I am the Parlor demo agent."), None);
        assert_eq!(
            first_clause("Yes, I can do that for you."),
            None,
            "a short clause"
        );
        assert_eq!(
            first_clause("It is late in London, they say."),
            None,
            "a short rest"
        );
        assert_eq!(first_clause(""), None);
    }

    #[test]
    fn held_speech_is_the_humans_only_if_it_goes_on_after_the_voice() {
        let t = Instant::now();
        let window = |p: f32, verdict: Verdict| Undecided {
            chunk: Vec::new(),
            p,
            arrived: t,
            sent: t,
            level: 0.0,
            verdict,
        };
        let held = |ws: &[(f32, Verdict)]| -> std::collections::VecDeque<Undecided> {
            ws.iter().map(|&(p, v)| window(p, v)).collect()
        };
        use Verdict::{Speech, Unsure};
        // Unsure speech, a short gap, then speech the gate does not doubt: the human goes on.
        let mut ws = vec![(0.9, Unsure); 5];
        ws.extend([(0.1, Speech); 4]);
        ws.push((0.8, Speech));
        assert_eq!(speech_goes_on(&held(&ws), 0.5), Some(true));
        // Unsure speech, then silence as long as the gap: it stopped with the voice.
        let mut ws = vec![(0.9, Unsure); 5];
        ws.extend(vec![(0.1, Speech); UNSURE_GAP]);
        assert_eq!(speech_goes_on(&held(&ws), 0.5), Some(false));
        // Unsure windows of silence after the speech do not restart the count.
        let mut ws = vec![(0.9, Unsure); 5];
        ws.extend(vec![(0.1, Unsure); UNSURE_GAP]);
        assert_eq!(speech_goes_on(&held(&ws), 0.5), Some(false));
        // Not yet known.
        let mut ws = vec![(0.9, Unsure); 5];
        ws.extend([(0.1, Speech); 3]);
        assert_eq!(speech_goes_on(&held(&ws), 0.5), None);
        assert_eq!(speech_goes_on(&held(&[(0.1, Unsure)]), 0.5), None);
    }

    #[test]
    fn the_agents_own_words_are_an_echo() {
        let said = [
            "Here it is sunny and twenty one degrees, with a light wind from the west.",
            "Tomorrow looks the same.",
        ];
        assert!(echoes("sunny and twenty one degrees", &said));
        assert!(echoes("With a light wind from the, uh, west", &said));
        assert!(echoes("tomorrow looks the same", &said));
        assert!(!echoes("what about tomorrow in Paris", &said));
        assert!(!echoes("stop talking please", &said));
        assert!(!echoes("tomorrow", &said), "one word is never an echo");
        assert!(!echoes("the same", &[]));
        // Misheard, as the echo often is: one word in three may be wrong.
        assert!(echoes("with the light wind.", &said));
        assert!(echoes("it is sunny and twenty degrees", &said));
        assert!(!echoes("what is the weather like", &said));
        assert!(!echoes("is it sunny in Paris", &said));
    }

    #[test]
    fn backchannels_and_noise_are_not_words() {
        for text in [
            "",
            "Uh-huh.",
            "Mm-hmm",
            "okay, right",
            "[coughs]",
            "(Music)",
            "*sigh*",
            "Yeah.",
            "Fuh",
            "Ha!",
        ] {
            assert!(!has_words(text), "{text:?}");
        }
        for text in [
            "Stop.",
            "Wait, what about tomorrow?",
            "No",
            "yes",
            "Why?",
            "okay stop",
            "Fuh fuh",
        ] {
            assert!(has_words(text), "{text:?}");
        }
    }
}
