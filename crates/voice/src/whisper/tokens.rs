//! Whisper's vocabulary (`vocabulary.txt`: one token per line, in GPT-2's byte-level form)
//! and the special tokens decoding needs.

use std::collections::HashMap;

/// The size of a multilingual model's vocabulary (OpenAI's `is_multilingual`).
const MULTILINGUAL_VOCAB: usize = 51_865;

/// The vocabulary and its special tokens.
#[derive(Debug)]
pub(crate) struct Vocabulary {
    tokens: Vec<String>,
    /// GPT-2's printable stand-ins for bytes, reversed.
    bytes: HashMap<char, u8>,
    pub(crate) eot: u32,
    pub(crate) sot: u32,
    pub(crate) no_timestamps: u32,
    /// `<|en|>` and `<|transcribe|>` on multilingual models.
    pub(crate) english: Option<(u32, u32)>,
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the rest map to 256+.
fn byte_table() -> HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut table = HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{fffd}');
            next += 1;
            c
        };
        table.insert(c, b);
    }
    table
}

impl Vocabulary {
    pub(crate) fn parse(text: &str) -> Result<Vocabulary, String> {
        let tokens: Vec<String> = text.lines().map(str::to_owned).collect();
        let id = |t: &str| {
            tokens
                .iter()
                .position(|x| x == t)
                .map(|i| i as u32)
                .ok_or_else(|| format!("vocabulary has no {t}"))
        };
        // Only a multilingual model takes a language and a task after the start token (its
        // vocabulary is one token longer, 51 865); the English-only models' vocabulary lists
        // the language tokens too, but they were trained on `<|startoftranscript|>` alone.
        let english = match (id("<|en|>"), id("<|transcribe|>")) {
            (Ok(en), Ok(tr)) if tokens.len() >= MULTILINGUAL_VOCAB => Some((en, tr)),
            _ => None,
        };
        Ok(Vocabulary {
            eot: id("<|endoftext|>")?,
            sot: id("<|startoftranscript|>")?,
            no_timestamps: id("<|notimestamps|>")?,
            english,
            tokens,
            bytes: byte_table(),
        })
    }

    /// The decoder's prompt: start of transcript, (English, transcribe on multilingual
    /// models,) no timestamps.
    pub(crate) fn prompt(&self) -> Vec<u32> {
        let mut p = vec![self.sot];
        if let Some((en, transcribe)) = self.english {
            p.extend([en, transcribe]);
        }
        p.push(self.no_timestamps);
        p
    }

    /// Whether `id` is text (not a special or timestamp token).
    pub(crate) fn is_text(&self, id: u32) -> bool {
        id < self.eot
    }

    /// The text of `ids` (special tokens skipped).
    pub(crate) fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if !self.is_text(id) {
                continue;
            }
            if let Some(t) = self.tokens.get(id as usize) {
                bytes.extend(t.chars().filter_map(|c| self.bytes.get(&c)));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_tokens_decode_to_text() {
        let vocab = Vocabulary::parse(
            "Hello\nĠworld\nĠcaf\nÃ©\n<|endoftext|>\n<|startoftranscript|>\n<|notimestamps|>\n",
        )
        .expect("vocab");
        assert_eq!((vocab.eot, vocab.sot, vocab.no_timestamps), (4, 5, 6));
        assert_eq!(vocab.prompt(), vec![5, 6]);
        assert_eq!(vocab.decode(&[0, 1, 2, 3, 4]), "Hello world café");
        assert!(Vocabulary::parse("a\nb\n").is_err());
    }

    /// A vocabulary of `n` tokens with Whisper's special tokens where OpenAI's put them.
    fn whisper_vocab(n: usize) -> Vocabulary {
        let multilingual = n >= MULTILINGUAL_VOCAB;
        let mut lines: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let (eot, sot) = (50_256, 50_257);
        lines[eot] = "<|endoftext|>".into();
        lines[sot] = "<|startoftranscript|>".into();
        lines[50_258] = "<|en|>".into();
        lines[50_259] = "<|ja|>".into();
        let transcribe = if multilingual { 50_359 } else { 50_358 };
        lines[transcribe] = "<|transcribe|>".into();
        let nots = if multilingual { 50_363 } else { 50_362 };
        lines[nots] = "<|notimestamps|>".into();
        Vocabulary::parse(&lines.join("\n")).expect("vocab")
    }

    #[test]
    fn an_english_only_model_is_prompted_with_the_start_token_alone() {
        // tiny.en's vocabulary lists the language tokens too; given `<|en|><|transcribe|>`
        // as well, it heard eSpeak's "What is the weather like today?" as "to the world." on
        // Whisper's 30 s window (and "Will it rain tomorrow?" as "We'll train tomorrow" on
        // the short one).
        assert_eq!(whisper_vocab(51_864).prompt(), vec![50_257, 50_362]);
        assert_eq!(
            whisper_vocab(51_865).prompt(),
            vec![50_257, 50_258, 50_359, 50_363]
        );
    }
}
