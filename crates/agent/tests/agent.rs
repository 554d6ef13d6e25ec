//! The agent loop end to end between Rust peers through the real server: a "human" peer
//! speaks eSpeak speech into the room, the agent (PocketSphinx, rules, eSpeak NG) transcribes
//! it, answers out loud, is interrupted by a second utterance (barge-in), and hangs up on
//! request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parlor_agent::offline::{EspeakTts, RuleReply, SphinxStt};
use parlor_agent::{Agent, AgentOptions, Flow, TextToSpeech};
use parlor_media::{AudioFrames, AudioSource, AudioSourceOptions, Layout};
use parlor_peer::room::{RoomEvent, RoomEvents, RoomPeer};
use parlor_peer::signalling::SignallingClient;
use parlor_server::config::Config;
use serde_json::Value;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(30);

fn peer(url: &str) -> RoomPeer {
    RoomPeer::new(
        SignallingClient::builder()
            .url(url)
            .api_key("pk_test_x")
            .build()
            .expect("client"),
    )
}

fn speech(text: &str) -> Vec<u8> {
    let tts = EspeakTts::with_voice("en-us", 150).expect("espeak");
    let mut pcm = Vec::new();
    tts.speak(text, &mut |p| {
        pcm.extend(p.iter().flat_map(|s| s.to_le_bytes()));
        Flow::Continue
    })
    .expect("speak");
    pcm
}

/// The next agent message of `kind` (server-routed JSON) that satisfies `pred`.
async fn agent_says(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    kind: &str,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let v = rx.recv().await.expect("open");
            if v["type"] == kind && pred(&v) {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for an agent {kind} message"))
}

/// Route the human's events: agent messages to the returned channel, and loud frames of the
/// agent's voice (the track arrives with the first reply) into `loud`.
fn route(
    mut ev: RoomEvents,
    loud: Arc<std::sync::Mutex<Vec<Instant>>>,
) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = ev.recv().await {
            match e {
                RoomEvent::Data { data, .. } => {
                    if let Ok(v) = serde_json::from_str::<Value>(data.get()) {
                        let _ = tx.send(v);
                    }
                }
                RoomEvent::Track { track, .. } => {
                    let loud = loud.clone();
                    tokio::spawn(async move {
                        let mut frames = AudioFrames::new(track).expect("frames");
                        while let Some(f) = frames.next().await {
                            if f.samples.iter().any(|s| s.unsigned_abs() > 2_000) {
                                loud.lock().expect("lock").push(Instant::now());
                            }
                        }
                    });
                }
                _ => {}
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hears_answers_is_interrupted_and_hangs_up() {
    let mut config = Config::default();
    config.add_dev_key("pk_test_x");
    let server = parlor_server::spawn(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        config,
    )
    .expect("server");
    let url = server.url();

    let agent = Agent::new(
        peer(&url),
        SphinxStt::new().expect("pocketsphinx"),
        RuleReply,
        EspeakTts::new().expect("espeak"),
        AgentOptions::default(),
    );
    let agent_events = agent.join("agent-test").await.expect("agent joins");
    let agent_task = tokio::spawn(agent.serve(agent_events));

    let human = peer(&url);
    let ev = human.events();
    let voice =
        Arc::new(AudioSource::new(AudioSourceOptions::new(22_050, Layout::Mono)).expect("source"));
    human.add_track(voice.track());
    human.join("agent-test", false).await.expect("human joins");
    let me = human.peer_id().expect("id");

    let loud = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let mut ev = route(ev, loud.clone());

    voice
        .push(&speech("What is the weather like today?"))
        .await
        .expect("push");
    let heard = agent_says(&mut ev, "transcript", |v| {
        v["role"] == "human" && v["final"] == true
    })
    .await;
    assert_eq!(heard["peerId"], me.as_str());
    assert!(
        heard["text"].as_str().unwrap_or("").contains("weather"),
        "{heard}"
    );
    agent_says(&mut ev, "state", |v| v["state"] == "speaking").await;
    let metrics = agent_says(&mut ev, "metrics", |_| true).await;
    let eou = metrics["eouToFirstAudioMs"].as_f64().expect("ms");
    eprintln!(
        "end of utterance → first reply audio: {eou:.0} ms (after the VAD's 500 ms hangover)"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !loud.lock().expect("lock").is_empty(),
        "the agent's reply is audible at the human"
    );

    // Barge-in: speak while the agent is still answering (its weather reply is ~8 s).
    voice
        .push(&speech("Hello, what is your name?"))
        .await
        .expect("push");
    agent_says(&mut ev, "barge-in", |v| v["peerId"] == me.as_str()).await;
    let barged = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let last_loud = *loud.lock().expect("lock").last().expect("loud frames");
    let tail = last_loud.saturating_duration_since(barged);
    eprintln!("barge-in message → last loud agent frame at the human: {tail:?}");
    assert!(
        tail < Duration::from_millis(500),
        "the voice stopped ({tail:?})"
    );

    // Hang-up through the server route: the agent ends the call for this human.
    human
        .send(&serde_json::json!({"type": "hangup"}))
        .await
        .expect("send");
    agent_says(&mut ev, "state", |v| {
        v["state"] == "ended" && v["peerId"] == me.as_str()
    })
    .await;

    voice.stop();
    human.close().await;
    agent_task.abort();
    server.shutdown().await.ok();
}
