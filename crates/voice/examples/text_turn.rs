//! Read transcripts (one per line) on standard input; print the text end-of-turn model's
//! probability that each is a finished turn, its decision and the time it took.
//!
//! ```text
//! printf 'Could you find out\nWhat time is it?\n' | cargo run --release -p parlor-voice --example text_turn
//! ```

use std::io::BufRead;
use std::time::Instant;

use parlor_voice::models::ModelCache;
use parlor_voice::text_turn::TextTurn;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let model = TextTurn::load(&ModelCache::from_env()?)?;
    eprintln!("loaded in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let t = Instant::now();
        let p = model.probability(&line)?;
        let verdict = if p < model.threshold() {
            "unfinished"
        } else {
            "finished"
        };
        println!(
            "{p:.3}\t{verdict}\t{:.0} ms\t{line}",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
