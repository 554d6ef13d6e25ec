//! The agent on the neural engines, Rust ⇄ Rust through the real server: a human peer asks a
//! question with a 700 ms pause in the middle ("I would like to know the … weather in Paris
//! today.");
//! Silero hears the speech, smart-turn judges the pause unfinished, Whisper transcribes the
//! whole question as one turn, and the answer comes in Piper's voice, with its per-stage
//! timings. Skipped without the models unless `PARLOR_REQUIRE_MODELS=1`.

use std::sync::Arc;
use std::time::Duration;

use parlor_agent::offline::{EspeakTts, RuleReply};
use parlor_agent::turn::TurnOptions;
use parlor_agent::{Agent, AgentOptions, Flow, TextToSpeech};
use parlor_media::{AudioSource, AudioSourceOptions, Layout};
use parlor_peer::room::{RoomEvent, RoomPeer};
use parlor_peer::signalling::SignallingClient;
use parlor_server::config::Config;
use parlor_voice::models::{Model, ModelCache};
use parlor_voice::piper::PiperTts;
use parlor_voice::silero::{SileroActivity, SileroVad};
use parlor_voice::smart_turn::SmartTurn;
use parlor_voice::whisper::WhisperStt;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// One call at a time: each runs every engine on both cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cache() -> Option<ModelCache> {
    let cache = ModelCache::from_env().expect("cache dir");
    for m in Model::DEFAULT {
        if let Err(e) = cache.require(m) {
            if std::env::var("PARLOR_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
                panic!("{e}");
            }
            eprintln!("skipped (PARLOR_REQUIRE_MODELS unset): {e}");
            return None;
        }
    }
    Some(cache)
}

fn peer(url: &str) -> RoomPeer {
    RoomPeer::new(
        SignallingClient::builder()
            .url(url)
            .api_key("pk_test_x")
            .build()
            .expect("client"),
    )
}

/// eSpeak speech (22.05 kHz s16le bytes), `pause_ms` of silence between the parts.
fn speech(parts: &[&str], pause_ms: usize) -> Vec<u8> {
    let tts = EspeakTts::with_voice("en-us", 150).expect("espeak");
    let mut pcm: Vec<i16> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            pcm.extend(std::iter::repeat_n(0, 22_050 * pause_ms / 1000));
        }
        tts.speak(part, &mut |p| {
            pcm.extend_from_slice(p);
            Flow::Continue
        })
        .expect("speak");
    }
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

struct Call {
    server: parlor_server::ServerHandle,
    agent: tokio::task::JoinHandle<Result<(), parlor_agent::AgentError>>,
    human: RoomPeer,
    voice: Arc<AudioSource>,
    me: String,
    events: parlor_peer::room::RoomEvents,
}

/// The server, the agent on the neural engines, and a human peer with a voice, in `room`.
async fn call(cache: &ModelCache, room: &str) -> Call {
    let mut config = Config::default();
    config.add_dev_key("pk_test_x");
    let server = parlor_server::spawn(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        config,
    )
    .expect("server");
    let url = server.url();
    let agent = Agent::new(
        peer(&url),
        WhisperStt::load(cache, Model::WhisperTinyEn).expect("whisper"),
        RuleReply,
        PiperTts::joe(cache, 2).expect("piper"),
        AgentOptions {
            turn: TurnOptions::with_end_of_turn_model(),
            ..AgentOptions::default()
        },
    )
    .with_voice_activity(SileroActivity(SileroVad::load(cache).expect("silero")))
    .with_end_of_turn(SmartTurn::load(cache, 1).expect("smart-turn"));
    let agent_events = agent.join(room).await.expect("agent joins");
    let agent = tokio::spawn(agent.serve(agent_events));
    let human = peer(&url);
    let events = human.events();
    let voice =
        Arc::new(AudioSource::new(AudioSourceOptions::new(22_050, Layout::Mono)).expect("source"));
    human.add_track(voice.track());
    human.join(room, false).await.expect("human joins");
    let me = human.peer_id().expect("id");
    Call {
        server,
        agent,
        human,
        voice,
        me,
        events,
    }
}

impl Call {
    /// The agent's next message satisfying `pred`.
    async fn next(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let Some(RoomEvent::Data { data, .. }) = self.events.recv().await else {
                    continue;
                };
                if let Ok(v) = serde_json::from_str::<Value>(data.get())
                    && pred(&v)
                {
                    return v;
                }
            }
        })
        .await
        .expect("the agent's message in time")
    }

    async fn end(self) {
        self.voice.stop();
        self.human.close().await;
        self.agent.abort();
        self.server.shutdown().await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_with_a_pause_is_one_turn_answered_in_a_neural_voice() {
    let Some(cache) = cache() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut call = call(&cache, "voice-test").await;
    call.voice
        .push(&speech(
            &["I would like to know the", "weather in Paris today."],
            700,
        ))
        .await
        .expect("push");
    let me = call.me.clone();
    let mut finals = Vec::new();
    let metrics = call
        .next(|v| {
            if v["type"] == "transcript" && v["role"] == "human" && v["final"] == true {
                finals.push(v["text"].as_str().unwrap_or("").to_owned());
            }
            v["type"] == "metrics" && v["peerId"] == me.as_str()
        })
        .await;
    eprintln!("heard {finals:?}; {metrics}");
    assert_eq!(
        finals.len(),
        1,
        "one turn, not answered into the pause: {finals:?}"
    );
    let heard = finals[0].to_lowercase();
    assert!(heard.contains("know") && heard.contains("paris"), "{heard}");
    let stages = &metrics["stages"];
    for k in ["endOfTurnMs", "sttMs", "replyMs", "ttsMs"] {
        assert!(stages[k].as_f64().is_some_and(|v| v >= 0.0), "{metrics}");
    }
    assert!(metrics["eouToFirstAudioMs"].as_f64().is_some(), "{metrics}");

    call.end().await;
}

/// A false interruption: while the agent answers, the human says "Okay." The voice is held
/// at once (barge-in), the turn has no words, and the reply resumes and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backchannel_holds_the_reply_and_it_resumes() {
    let Some(cache) = cache() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut call = call(&cache, "backchannel-test").await;
    call.voice
        .push(&speech(&["What is the weather like today?"], 0))
        .await
        .expect("push");
    call.next(|v| v["type"] == "state" && v["state"] == "speaking")
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    call.voice.push(&speech(&["Okay."], 0)).await.expect("push");
    let me = call.me.clone();
    let held = call
        .next(|v| {
            v["type"] == "barge-in"
                || v["type"] == "resumed"
                || v["type"] == "transcript" && v["role"] == "human" && v["final"] == true
        })
        .await;
    assert_eq!(held["type"], "barge-in", "the voice is held first: {held}");
    let resumed = call
        .next(|v| {
            v["type"] == "resumed"
                || v["type"] == "transcript" && v["role"] == "human" && v["final"] == true
        })
        .await;
    eprintln!("after the backchannel: {resumed}");
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["peerId"], me.as_str());
    let done = call
        .next(|v| v["type"] == "transcript" && v["role"] == "agent" && v["final"] == true)
        .await;
    let text = done["text"].as_str().unwrap_or("");
    assert!(
        text.contains("long walk"),
        "the whole reply was said: {text}"
    );
    call.end().await;
}
