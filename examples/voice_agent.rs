//! A voice agent on Parlor, mirroring the reference Python skeleton:
//!
//! | reference (metered-realtime)        | here                                             |
//! |-------------------------------------|--------------------------------------------------|
//! | `MeteredPeer(api_key, url, reconnect=ReconnectOptions(...))` | `SignallingClient::builder()…reconnect(…)` + `RoomPeer` |
//! | `AudioSource` + `peer.add_track`    | one voice track; one `AudioSource` per utterance (inside `Agent`) |
//! | `iter_frames(track)` per human      | `AudioFrames` → `SpeechDownsampler` → VAD → `SpeechToText` |
//! | `peer.send` / `send_to`             | transcripts and state (`{"type":"transcript"…}`) |
//! | `DataChannel` from the browser      | `control` channel: `{"type":"hangup"}`           |
//! | `FatalError`                        | `AgentError::Fatal` → exit 1                     |
//!
//! The hooks are traits; this example plugs in the offline ones (PocketSphinx, eSpeak NG) and
//! its own reply hook, to show how one is written — or, when `PARLOR_LLM_BASE_URL` is set, an
//! OpenAI-compatible model (`PARLOR_LLM_MODEL`, `PARLOR_LLM_API_KEY`; see `parlor_agent::openai`).
//!
//! ```text
//! cargo run --release -p parlor -- serve --dev-key pk_test_x &      # a server
//! cargo run -p parlor-agent --example voice_agent -- ws://127.0.0.1:7800 pk_test_x demo
//! ```
//! Then talk to it from a page in room `demo` (`parlor demo` bundles all of this).

use std::time::Duration;

use parlor_agent::offline::{EspeakTts, RuleReply, SphinxStt};
use parlor_agent::openai::OpenAiLlm;
use parlor_agent::{Agent, AgentError, AgentOptions, Flow, HookError, Llm, Role, Turn};
use parlor_peer::{ReconnectOptions, RoomPeer, SignallingClient};

/// A reply hook: streams its answer one sentence at a time, and stops as soon as the agent
/// says so (barge-in). Real models go here (an HTTP call, a local model, …).
struct Polite {
    rules: RuleReply,
}

impl Llm for Polite {
    fn reply(&self, history: &[Turn], sink: &mut dyn FnMut(&str) -> Flow) -> Result<(), HookError> {
        let turns = history.iter().filter(|t| t.role == Role::Human).count();
        if turns == 1 && sink("Nice to meet you.") == Flow::Stop {
            return Ok(());
        }
        self.rules.reply(history, sink)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber_init();
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:7800".into());
    let key = args.next().unwrap_or_else(|| "pk_test_x".into());
    let room = args.next().unwrap_or_else(|| "demo".into());
    match run(&url, &key, &room).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Stop loudly: a supervisor restarts us, a human reads why.
            eprintln!("voice agent stopped: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, key: &str, room: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = SignallingClient::builder()
        .url(url)
        .api_key(key)
        // A daemon: reconnect forever, at most 60 s apart.
        .reconnect(Some(ReconnectOptions {
            max_attempts: None,
            max_delay: Duration::from_secs(60),
            ..ReconnectOptions::default()
        }))
        .build()?;
    let llm: Box<dyn Llm> = match OpenAiLlm::from_env() {
        Some(model) => Box::new(model),
        None => Box::new(Polite { rules: RuleReply }),
    };
    let agent = Agent::new(
        RoomPeer::new(client),
        SphinxStt::new()?,
        llm,
        EspeakTts::new()?,
        AgentOptions {
            greeting: Some("Hello, I am listening.".into()),
            ..AgentOptions::default()
        },
    );
    match agent.run(room).await {
        Ok(()) => Ok(()),
        Err(AgentError::Fatal(e)) => Err(format!("the room failed for good: {e}").into()),
        Err(e) => Err(e.into()),
    }
}

fn tracing_subscriber_init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PARLOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
