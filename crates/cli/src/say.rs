//! `parlor say`: speak text into a WAV file with one of the agent's voices (to hear a voice,
//! or to make test speech for a microphone).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use parlor_agent::offline::EspeakTts;
use parlor_agent::{Flow, TextToSpeech};
use parlor_voice::models::{Model, ModelCache};

#[derive(Args, Debug)]
pub(crate) struct SayArgs {
    /// What to say.
    text: String,
    /// The WAV file to write (16-bit mono, at the voice's rate).
    #[arg(long, short)]
    out: PathBuf,
    /// `piper` (the demo's neural voice; fetched into the model cache if missing) or
    /// `espeak` (eSpeak NG; `--espeak-voice` picks the variant).
    #[arg(long, value_enum, default_value_t = Voice::Piper)]
    voice: Voice,
    /// Speed, 1 = the voice's own (0.5..=2).
    #[arg(long, default_value_t = 1.0)]
    speed: f32,
    /// eSpeak NG voice name (`en-us`, `en-gb`, `en-us+f3`, …).
    #[arg(long, default_value = "en-us")]
    espeak_voice: String,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Voice {
    /// Piper `en_US-joe-medium`.
    Piper,
    /// eSpeak NG.
    Espeak,
}

pub(crate) fn run(args: SayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.speed.is_finite() && (0.5..=2.0).contains(&args.speed),
        "--speed must be between 0.5 and 2"
    );
    let tts: Box<dyn TextToSpeech> = match args.voice {
        Voice::Piper => {
            let cache = ModelCache::from_env()?;
            crate::models::fetch(&cache, &[Model::OnnxRuntime, Model::PiperJoe])?;
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            Box::new(
                parlor_voice::piper::PiperTts::joe(&cache, threads)
                    .context("text-to-speech (Piper)")?
                    .with_speed(args.speed),
            )
        }
        Voice::Espeak => Box::new(
            EspeakTts::with_voice(&args.espeak_voice, (175.0 * args.speed) as u32)
                .context("text-to-speech (eSpeak NG)")?,
        ),
    };
    let mut pcm = Vec::new();
    tts.speak(&args.text, &mut |chunk| {
        pcm.extend_from_slice(chunk);
        Flow::Continue
    })?;
    std::fs::write(
        &args.out,
        parlor_media::wav::write_mono(tts.sample_rate(), &pcm),
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "say: {:.2} s at {} Hz → {}",
        pcm.len() as f64 / f64::from(tts.sample_rate()),
        tts.sample_rate(),
        args.out.display()
    );
    Ok(())
}
