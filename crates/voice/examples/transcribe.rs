//! Transcribe WAV files with the Whisper engine, as the agent does a finished turn.
//!
//! ```text
//! cargo run --release -p parlor-voice --example transcribe -- [--model whisper-base] \
//!     [--window SECS] [--f32] [--prompt TEXT] [--boost WORD,WORD --by LOGITS] [--beams N] \
//!     FILE.wav...
//! ```
//!
//! Each file (mono 16-bit PCM, any rate) is brought to 16 kHz and
//! transcribed in one pass; prints the time the pass took and the text. `--window` sets the
//! fewest seconds the encoder sees (default: the audio plus 1 s; Whisper's own is 30);
//! `--f32` keeps the decoder's weights in f32 instead of 8 bits; `--prompt` gives Whisper text
//! as what was said before (the domain's words); `--boost` makes the decoder lean towards
//! words (by `--by` logits, default 2); `--beams` decodes with a beam of N hypotheses
//! (default 1: greedy).
//! Models come from the cache `parlor models fetch` fills.

use std::time::Instant;

use parlor_media::StreamResampler;
use parlor_voice::models::{Model, ModelCache};
use parlor_voice::whisper::WhisperModel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let (mut model, mut window, mut files) = (Model::WhisperTinyEn, None, Vec::new());
    let mut prompt = String::new();
    let (mut boost, mut by) = (String::new(), parlor_voice::whisper::DEFAULT_BOOST);
    let mut weights = parlor_voice::whisper::DecoderWeights::Q8;
    let mut beams = 1;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => {
                let name = args.next().ok_or("--model needs a name")?;
                model = Model::from_name(&name).ok_or_else(|| format!("no model {name}"))?;
            }
            "--prompt" => prompt = args.next().ok_or("--prompt needs text")?,
            "--boost" => boost = args.next().ok_or("--boost needs words")?,
            "--by" => by = args.next().ok_or("--by needs logits")?.parse()?,
            "--beams" => beams = args.next().ok_or("--beams needs a count")?.parse()?,
            "--f32" => weights = parlor_voice::whisper::DecoderWeights::F32,
            "--window" => window = Some(args.next().ok_or("--window needs seconds")?.parse()?),
            _ => files.push(a),
        }
    }
    if files.is_empty() {
        return Err("usage: transcribe [--model NAME] [--window SECS] FILE.wav...".into());
    }
    let cache = ModelCache::from_env()?;
    let mut whisper = WhisperModel::load_with(&cache, model, weights)?.with_beams(beams);
    if let Some(secs) = window {
        whisper = whisper.with_min_window(secs);
    }
    let prompt = whisper.prompt(&prompt);
    let words: Vec<&str> = boost.split(',').filter(|w| !w.trim().is_empty()).collect();
    let boost = whisper.boost(&words, by);
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| format!("{file}: {e}"))?;
        let (pcm, rate) =
            parlor_media::wav::read_mono(&bytes).map_err(|e| format!("{file}: {e}"))?;
        let mut pcm16 = Vec::new();
        let mut r = StreamResampler::new(rate, 16_000, 1)?;
        r.process(&pcm, &mut pcm16)?;
        r.process(&vec![0; rate as usize / 5], &mut pcm16)?;
        let t = Instant::now();
        let text = whisper.transcribe_with(&pcm16, &prompt, &boost)?;
        println!(
            "{:>6.0} ms  {file}  {text}",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
