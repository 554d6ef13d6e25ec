//! `parlor demo`: the embedded server, a voice agent in one room, and the browser page
//! (`web/`), all on one port. The agent's engines are neural by default (Whisper, Piper,
//! Silero VAD, smart-turn; the models are fetched on first run) or, with `--engines basic`,
//! the no-download fallback (PocketSphinx, eSpeak NG, an energy detector).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use parlor_agent::offline::{EspeakTts, RuleReply, SphinxStt};
use parlor_agent::openai::OpenAiLlm;
use parlor_agent::turn::TurnOptions;
use parlor_agent::{Agent, AgentOptions, Llm, SpeechToText, TextToSpeech};
use parlor_peer::{ReconnectOptions, RoomPeer, SignallingClient};
use parlor_voice::models::{Model, ModelCache};

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: SocketAddr,
    /// The room the agent waits in.
    #[arg(long, default_value = "demo")]
    room: String,
    /// The development key the page and the agent use.
    #[arg(long, default_value = "pk_demo")]
    key: String,
    /// The page's directory (default: the repository's `web/`). The browser SDK is served
    /// from its `node_modules/@metered-ca/realtime` (`npm ci --prefix web`).
    #[arg(long)]
    web: Option<PathBuf>,
    /// What the agent says when a human's audio arrives.
    #[arg(long)]
    greeting: Option<String>,
    /// The agent's engines: `neural` (Whisper tiny.en, Piper, Silero VAD, smart-turn; the
    /// models are fetched into the cache on first run) or `basic` (PocketSphinx, eSpeak NG,
    /// an energy detector; no download).
    #[arg(long, value_enum, default_value_t = Engines::Neural)]
    engines: Engines,
    #[command(flatten)]
    stt: SttArgs,
    /// The fewest seconds of audio Whisper encodes per pass (a short turn is padded with
    /// silence to this; 0: the turn plus 1 s). Longer costs encoder time per pass.
    #[arg(long, default_value_t = 0.0)]
    stt_window: f32,
    /// Serve https/wss with this certificate chain (PEM) instead of a generated one.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Turn off the agent's echo gate (its own voice in a microphone then counts as speech;
    /// for comparison).
    #[arg(long)]
    no_echo_gate: bool,
    /// Run the agent's echo canceller (AEC3 on each microphone, with the agent's voice as the
    /// reference; off by default, see docs/performance.md).
    #[arg(long)]
    echo_cancel: bool,
    /// Prepare each reply while the turn is judged ("on" by default with the rule reply,
    /// "off" by default with an OpenAI-compatible model, which would be asked for replies
    /// never said when the human speaks through a pause).
    #[arg(long, value_enum)]
    preemptive: Option<OnOff>,
    /// Plain http/ws even when listening beyond loopback (browsers then give the microphone
    /// only to pages opened on this machine).
    #[arg(long, conflicts_with = "tls_cert")]
    no_tls: bool,
}

/// How the demo is served: plain on loopback; TLS beyond it (browsers give the microphone
/// only to https pages, or to localhost).
struct Tls {
    config: parlor_server::tls::TlsConfig,
    /// The CA the agent trusts to reach its own server.
    roots_pem: Vec<u8>,
    /// The generated CA's file, to name on start-up (None for the user's own certificate).
    generated_ca: Option<PathBuf>,
}

/// A certificate authority and a certificate for `names` signed by it, generated once and
/// kept in the cache (again when the names change).
fn self_signed(names: &[String]) -> anyhow::Result<Tls> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let base = match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(x), _) if !x.is_empty() => PathBuf::from(x),
        (_, Some(h)) => PathBuf::from(h).join(".cache"),
        _ => std::env::temp_dir(),
    };
    let dir = base.join("parlor/demo-tls");
    let (ca, cert, key, stamp) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("names.txt"),
    );
    let wanted = names.join("\n");
    let fresh = [&ca, &cert, &key].iter().all(|p| p.exists())
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted);
    if !fresh {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Parlor demo CA (this machine)");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate()?;
        let leaf = CertificateParams::new(names.to_vec())?.signed_by(&leaf_key, &issuer)?;
        std::fs::write(&ca, ca_cert.pem())?;
        std::fs::write(&cert, format!("{}{}", leaf.pem(), ca_cert.pem()))?;
        std::fs::write(&key, leaf_key.serialize_pem())?;
        std::fs::write(&stamp, &wanted)?;
    }
    Ok(Tls {
        roots_pem: std::fs::read(&ca)?,
        config: parlor_server::tls::TlsConfig {
            cert_file: cert,
            key_file: key,
        },
        generated_ca: Some(ca),
    })
}

/// This machine's name, for the certificate and the start-up line.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

fn choose_tls(args: &DemoArgs) -> anyhow::Result<Option<Tls>> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok(Some(Tls {
            roots_pem: std::fs::read(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?,
            config: parlor_server::tls::TlsConfig {
                cert_file: cert.clone(),
                key_file: key.clone(),
            },
            generated_ca: None,
        }));
    }
    if args.no_tls || args.listen.ip().is_loopback() {
        return Ok(None);
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !args.listen.ip().is_unspecified() {
        names.push(args.listen.ip().to_string());
    }
    names.extend(hostname());
    self_signed(&names).map(Some)
}

/// Which engines the demo's agent runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engines {
    /// Whisper, Piper, Silero VAD, smart-turn.
    Neural,
    /// PocketSphinx, eSpeak NG, an energy detector.
    Basic,
    /// Silero VAD alone: the agent hears when a human speaks and where each utterance ends,
    /// and transcribes and says nothing (what a listening session costs; `parlor bench
    /// agent`).
    Listen,
}

/// The recognizer of [`Engines::Listen`]: counts utterances, recognizes nothing.
#[derive(Debug, Default)]
pub(crate) struct ListenOnly {
    /// Utterances the agents' VAD cut, every stream together.
    pub(crate) utterances: Arc<std::sync::atomic::AtomicU64>,
}

impl parlor_agent::SpeechToText for ListenOnly {
    fn recognizer(&self) -> Result<Box<dyn parlor_agent::Recognizer>, parlor_agent::HookError> {
        Ok(Box::new(ListenOnlyStream(self.utterances.clone())))
    }
}

struct ListenOnlyStream(Arc<std::sync::atomic::AtomicU64>);

impl parlor_agent::Recognizer for ListenOnlyStream {
    fn start(&mut self) -> Result<(), parlor_agent::HookError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn feed(&mut self, _pcm: &[i16]) -> Result<Option<String>, parlor_agent::HookError> {
        Ok(None)
    }
    fn finish(&mut self) -> Result<String, parlor_agent::HookError> {
        Ok(String::new())
    }
}

/// A switch given as `on` or `off`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// The loaded engines (shared: `parlor worker` runs many agents on one set), and what the
/// page says they are.
pub(crate) struct Loaded {
    pub(crate) stt: Arc<dyn SpeechToText>,
    pub(crate) tts: Arc<dyn TextToSpeech>,
    pub(crate) activity: Option<parlor_voice::silero::SileroActivity>,
    pub(crate) end_of_turn: Option<Arc<parlor_voice::smart_turn::SmartTurn>>,
    pub(crate) words_end_of_turn: Option<Arc<parlor_voice::text_turn::TextTurn>>,
    pub(crate) names: serde_json::Value,
    /// With [`Engines::Listen`]: utterances heard by every agent so far.
    pub(crate) utterances: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Loaded {
    /// An agent on these engines speaking through `peer`.
    pub(crate) fn agent(&self, peer: RoomPeer, llm: Arc<dyn Llm>, options: AgentOptions) -> Agent {
        let mut agent = Agent::new(peer, self.stt.clone(), llm, self.tts.clone(), options);
        if let Some(vad) = &self.activity {
            agent = agent.with_voice_activity(vad.clone());
        }
        if let Some(eot) = &self.end_of_turn {
            agent = agent.with_end_of_turn(eot.clone());
        }
        if let Some(words) = &self.words_end_of_turn {
            agent = agent.with_text_end_of_turn(words.clone());
        }
        agent
    }

    /// The turn-taking that goes with these engines.
    pub(crate) fn turn_options(&self) -> TurnOptions {
        if self.end_of_turn.is_some() {
            TurnOptions::with_end_of_turn_model()
        } else {
            TurnOptions::hangover()
        }
    }
}

/// How Whisper runs, as `parlor demo` and `parlor worker` take it.
#[derive(Args, Debug)]
pub(crate) struct SttArgs {
    /// The Whisper model of the neural engines: `whisper-tiny.en` (75 MB) or `whisper-base`
    /// (145 MB, fetched on first use; slower).
    #[arg(long = "stt", default_value = "whisper-tiny.en", value_parser = ["whisper-tiny.en", "whisper-base"])]
    pub model: String,
    /// Text Whisper is given as what came before each turn, to lean it towards a domain's
    /// words: `rules` (the rule reply's keywords), `none`, or any text (at most 223 tokens
    /// are used).
    #[arg(long, default_value = "none")]
    stt_prompt: String,
    /// Words Whisper's decoder leans towards (their tokens' logits raised by
    /// `--stt-boost-by` while decoding): `rules` (the rule reply's keywords; the default
    /// with the rule reply), `none` (the default with an OpenAI-compatible model), or
    /// comma-separated words.
    #[arg(long)]
    stt_boost: Option<String>,
    /// The bonus `--stt-boost` gives its words, in logits (0–10).
    #[arg(long, default_value_t = parlor_voice::whisper::DEFAULT_BOOST)]
    stt_boost_by: f32,
    /// Hypotheses Whisper's decoder keeps (a beam search; 1: greedy). Each is a row of
    /// the same batch: more cost decoder time per pass (1–8).
    #[arg(long, default_value_t = parlor_voice::whisper::DEFAULT_BEAMS)]
    stt_beams: usize,
    /// Read the words of a pause with a small language model (Gemma 3 270M, 253 MB, fetched
    /// on first use) besides the hand-written endings, so that a first half the audio model
    /// hears as finished ("Could you find out …") is not answered: `on` or `off`.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    turn_words: OnOff,
}

/// How Whisper is run besides the model: `--stt-prompt`, `--stt-boost` and `--stt-beams`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SttHints {
    /// Text as what came before each turn (empty: none).
    pub prompt: String,
    /// Words the decoder leans towards (empty: none), and by how much.
    pub boost: Vec<String>,
    pub boost_by: f32,
    /// Hypotheses the decoder keeps (1: greedy).
    pub beams: usize,
    /// The words' end-of-turn model runs (`--turn-words`).
    pub turn_words: bool,
}

impl SttHints {
    /// The hints the flags name: `rules`, `none` or text (the prompt) or comma-separated
    /// words (the boost). With no `--stt-boost`, the rule reply's keywords are boosted when
    /// `rules` answer (an OpenAI-compatible model answers any words: no boost).
    pub(crate) fn from_args(args: &SttArgs, rules: bool) -> anyhow::Result<SttHints> {
        let (boost_by, beams) = (args.stt_boost_by, args.stt_beams);
        anyhow::ensure!(
            boost_by.is_finite() && (0.0..=10.0).contains(&boost_by),
            "--stt-boost-by must be between 0 and 10 (logits)"
        );
        anyhow::ensure!(
            (1..=8).contains(&beams),
            "--stt-beams must be between 1 and 8 (hypotheses)"
        );
        let prompt = match args.stt_prompt.as_str() {
            "none" => String::new(),
            "rules" => RuleReply::vocabulary(),
            text => text.to_owned(),
        };
        let boost = match args
            .stt_boost
            .as_deref()
            .unwrap_or(if rules { "rules" } else { "none" })
        {
            "none" => Vec::new(),
            "rules" => RuleReply::keywords()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            words => words
                .split(',')
                .map(|w| w.trim().to_owned())
                .filter(|w| !w.is_empty())
                .collect(),
        };
        Ok(SttHints {
            prompt,
            boost,
            boost_by,
            beams,
            turn_words: args.turn_words == OnOff::On,
        })
    }
}

/// The reply hook: an OpenAI-compatible model when `PARLOR_LLM_BASE_URL` is set, else the
/// rules; with its name for the page and whether it is the rules (which have replies
/// prepared in pauses and Whisper leaning towards their keywords by default; a paid model
/// would be asked for replies never said, and answers any words).
pub(crate) fn reply_hook() -> (Arc<dyn Llm>, &'static str, bool) {
    match OpenAiLlm::from_env() {
        Some(llm) => {
            tracing::info!(?llm, "replies from an OpenAI-compatible endpoint");
            (Arc::new(llm), "an OpenAI-compatible model", false)
        }
        None => (Arc::new(RuleReply), "simple rules", true),
    }
}

pub(crate) fn load_engines(
    engines: Engines,
    stt: &str,
    stt_window: f32,
    hints: &SttHints,
) -> anyhow::Result<Loaded> {
    match engines {
        Engines::Basic => Ok(Loaded {
            stt: Arc::new(SphinxStt::new().context("speech-to-text (PocketSphinx)")?),
            tts: Arc::new(EspeakTts::new().context("text-to-speech (eSpeak NG)")?),
            activity: None,
            end_of_turn: None,
            words_end_of_turn: None,
            names: serde_json::json!({
                "stt": "PocketSphinx", "tts": "eSpeak NG", "turn": "500 ms of silence",
            }),
            utterances: None,
        }),
        Engines::Listen => {
            let cache = ModelCache::from_env()?;
            crate::models::fetch(&cache, &[Model::OnnxRuntime, Model::SileroVad])?;
            let vad = parlor_voice::silero::SileroVad::load(&cache).context("Silero VAD")?;
            let listen = ListenOnly::default();
            let utterances = listen.utterances.clone();
            Ok(Loaded {
                stt: Arc::new(listen),
                tts: Arc::new(EspeakTts::new().context("text-to-speech (eSpeak NG)")?),
                activity: Some(parlor_voice::silero::SileroActivity(vad)),
                end_of_turn: None,
                words_end_of_turn: None,
                names: serde_json::json!({
                    "stt": "none (listening only)", "tts": "none (listening only)",
                    "turn": "Silero VAD",
                }),
                utterances: Some(utterances),
            })
        }
        Engines::Neural => {
            let cache = ModelCache::from_env()?;
            // The first run fetches the models (a few hundred MB, pinned by sha256).
            let whisper = Model::from_name(stt).context("no such Whisper model")?;
            let mut models = Model::DEFAULT.to_vec();
            models.retain(|m| !matches!(m, Model::WhisperTinyEn | Model::WhisperBase));
            models.push(whisper);
            if !hints.turn_words {
                models.retain(|m| *m != Model::Gemma270m);
            }
            crate::models::fetch(&cache, &models)?;
            let t0 = std::time::Instant::now();
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let stt_name = match whisper {
                Model::WhisperBase => "Whisper base",
                _ => "Whisper tiny.en",
            };
            let mut stt_label = stt_name.to_owned();
            if !hints.prompt.is_empty() {
                stt_label.push_str(", prompted");
            }
            if !hints.boost.is_empty() && hints.boost_by > 0.0 {
                stt_label.push_str(", keywords boosted");
            }
            if hints.beams > 1 {
                stt_label.push_str(&format!(", beam of {}", hints.beams));
            }
            let stt = parlor_voice::whisper::WhisperModel::load(&cache, whisper)
                .map(|m| {
                    let m = m.with_min_window(stt_window).with_beams(hints.beams);
                    parlor_voice::whisper::WhisperStt::new(m)
                        .with_prompt(&hints.prompt)
                        .with_boost(&hints.boost, hints.boost_by)
                })
                .with_context(|| format!("speech-to-text ({stt_name})"))?;
            let tts = parlor_voice::piper::PiperTts::joe(&cache, threads)
                .context("text-to-speech (Piper)")?;
            let vad = parlor_voice::silero::SileroVad::load(&cache).context("Silero VAD")?;
            let eot = parlor_voice::smart_turn::SmartTurn::load(&cache, 1).context("smart-turn")?;
            let words = if hints.turn_words {
                let m = parlor_voice::text_turn::TextTurn::load(&cache)
                    .context("the words' end-of-turn model (Gemma 3 270M)")?;
                Some(Arc::new(m))
            } else {
                None
            };
            let turn = if words.is_some() {
                "Silero VAD, smart-turn v3.2 and Gemma 3 270M on the words"
            } else {
                "Silero VAD and smart-turn v3.2"
            };
            tracing::info!(
                ms = t0.elapsed().as_millis() as u64,
                "neural engines loaded"
            );
            Ok(Loaded {
                stt: Arc::new(stt),
                tts: Arc::new(tts),
                activity: Some(parlor_voice::silero::SileroActivity(vad)),
                end_of_turn: Some(Arc::new(eot)),
                words_end_of_turn: words,
                names: serde_json::json!({
                    "stt": stt_label,
                    "tts": "Piper (en_US joe)",
                    "turn": turn,
                }),
                utterances: None,
            })
        }
    }
}

struct Site {
    web: PathBuf,
    sdk: PathBuf,
    config: String,
}

fn default_web() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    if repo.join("index.html").exists() {
        repo
    } else {
        PathBuf::from("web")
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.stt_window.is_finite() && (0.0..=30.0).contains(&args.stt_window),
        "--stt-window must be between 0 and 30 (seconds)"
    );
    // An OpenAI-compatible model when PARLOR_LLM_BASE_URL is set, else the rules.
    let (llm, reply_name, rules) = reply_hook();
    let hints = SttHints::from_args(&args.stt, rules)?;
    let web = args.web.clone().unwrap_or_else(default_web);
    anyhow::ensure!(
        web.join("index.html").exists(),
        "no demo page at {} (pass --web DIR)",
        web.display()
    );
    let sdk = web.join("node_modules/@metered-ca/realtime/dist/index.mjs");
    anyhow::ensure!(
        sdk.exists(),
        "the browser SDK is not installed at {}: run `npm ci --prefix {}` (scripts/demo.sh does)",
        sdk.display(),
        web.display()
    );
    // The engines load first, so a missing package or model fails before anything listens.
    let (engines, stt, window) = (args.engines, args.stt.model.clone(), args.stt_window);
    if !hints.prompt.is_empty() {
        tracing::info!(prompt = hints.prompt, "Whisper is prompted");
    }
    if !hints.boost.is_empty() {
        tracing::info!(words = ?hints.boost, by = hints.boost_by, "Whisper leans towards words");
    }
    let loaded =
        tokio::task::spawn_blocking(move || load_engines(engines, &stt, window, &hints)).await??;
    let preemptive = args.preemptive.map_or(rules, |o| o == OnOff::On);
    let mut names = loaded.names.clone();
    names["reply"] = reply_name.into();

    let tls = choose_tls(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut config = parlor_server::config::Config::default();
    config.add_dev_key(&args.key);
    config.tls = tls.as_ref().map(|t| t.config.clone());
    let site = Arc::new(Site {
        web,
        sdk,
        // No "url": the page connects back to where it was loaded from (ws or wss).
        config: serde_json::json!({
            "apiKey": args.key,
            "room": args.room,
            "engines": names,
        })
        .to_string(),
    });
    let pages = Router::new()
        .route("/", get(index))
        .route("/config.json", get(config_json))
        .route("/sdk/index.mjs", get(sdk_bundle))
        .route("/{file}", get(file))
        .with_state(site);
    let server = parlor_server::spawn_with(listener, config, pages)?;

    // The agent reaches its own server on this machine; over TLS it trusts the certificate
    // the server presents (the generated CA, or the user's chain).
    let mut builder = SignallingClient::builder();
    if let Some(t) = &tls {
        let host = if t.generated_ca.is_some() {
            "127.0.0.1"
        } else {
            "localhost"
        };
        builder = builder
            .url(format!("wss://{host}:{}", addr.port()))
            .tls_root_certificates_pem(&t.roots_pem);
    } else {
        builder = builder.url(server.url());
    }
    let client = builder
        .api_key(args.key.clone())
        // A daemon: retry forever, at most a minute apart.
        .reconnect(Some(ReconnectOptions {
            max_attempts: None,
            max_delay: Duration::from_secs(60),
            ..ReconnectOptions::default()
        }))
        .build()?;
    let options = AgentOptions {
        greeting: args.greeting.clone(),
        echo_gate: !args.no_echo_gate,
        echo_cancel: args.echo_cancel,
        preemptive,
        turn: loaded.turn_options(),
        ..AgentOptions::default()
    };
    let agent = loaded.agent(RoomPeer::new(client), llm, options);
    let events = agent
        .join(&args.room)
        .await
        .context("the agent cannot join")?;
    println!(
        "demo: agent joined room {} as {}",
        args.room,
        agent.peer().peer_id().unwrap_or_default()
    );
    match &tls {
        None => {
            let host = if addr.ip().is_unspecified() {
                format!("127.0.0.1:{}", addr.port())
            } else {
                addr.to_string()
            };
            println!("demo: open http://{host}/");
        }
        Some(t) => {
            let host = match addr.ip() {
                ip if ip.is_unspecified() || ip.is_loopback() => {
                    hostname().unwrap_or_else(|| "THIS-MACHINE".into())
                }
                ip => ip.to_string(),
            };
            println!("demo: open https://{host}:{}/", addr.port());
            match &t.generated_ca {
                Some(ca) => println!(
                    "demo: the page is served over TLS so that browsers on other machines give it \
                     the microphone; its certificate is signed by a CA generated on this machine \
                     ({}): the browser warns once (accept it, or import that CA), then asks for \
                     the microphone",
                    ca.display()
                ),
                None => println!("demo: served over TLS with your certificate"),
            }
        }
    }
    let result = tokio::select! {
        r = agent.serve(events) => r.context("the agent stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    server.shutdown().await.ok();
    result
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

async fn send_file(path: &Path, name: &str) -> Response {
    let path = path.to_owned();
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, content_type(name)),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn index(State(site): State<Arc<Site>>) -> Response {
    send_file(&site.web.join("index.html"), "index.html").await
}

async fn config_json(State(site): State<Arc<Site>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        site.config.clone(),
    )
        .into_response()
}

async fn sdk_bundle(State(site): State<Arc<Site>>) -> Response {
    send_file(&site.sdk, "index.mjs").await
}

/// Files directly in the page's directory; nothing else (no dot files, no subdirectories).
async fn file(State(site): State<Arc<Site>>, UrlPath(name): UrlPath<String>) -> Response {
    let plain = !name.starts_with('.')
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !plain {
        return StatusCode::NOT_FOUND.into_response();
    }
    send_file(&site.web.join(&name), &name).await
}
