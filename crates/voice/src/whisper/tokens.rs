//! Whisper's vocabulary (`vocabulary.txt`: one token per line, in GPT-2's byte-level form)
//! and the special tokens decoding needs.

use std::collections::HashMap;

/// The size of a multilingual model's vocabulary (OpenAI's `is_multilingual`).
const MULTILINGUAL_VOCAB: usize = 51_865;
/// The most context tokens a prompt carries (OpenAI's `n_text_ctx // 2 - 1`).
pub(crate) const MAX_CONTEXT: usize = 223;

/// The vocabulary and its special tokens.
#[derive(Debug)]
pub(crate) struct Vocabulary {
    tokens: Vec<String>,
    /// GPT-2's printable stand-ins for bytes, reversed.
    bytes: HashMap<char, u8>,
    pub(crate) eot: u32,
    pub(crate) sot: u32,
    pub(crate) no_timestamps: u32,
    /// `<|startofprev|>`: what comes before it is context, the text before this audio.
    pub(crate) start_of_prev: Option<u32>,
    /// Text tokens by their byte-level form, for [`Vocabulary::encode`].
    ids: HashMap<String, u32>,
    /// The longest text token, in characters.
    longest: usize,
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
        let eot = id("<|endoftext|>")?;
        let ids: HashMap<String, u32> = tokens[..eot as usize]
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let longest = ids.keys().map(|t| t.chars().count()).max().unwrap_or(1);
        Ok(Vocabulary {
            start_of_prev: id("<|startofprev|>").ok(),
            ids,
            longest,
            eot,
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

    /// The decoder's prompt after `context` (text tokens from [`Vocabulary::encode`]):
    /// `<|startofprev|>`, the context, then [`Vocabulary::prompt`]. Whisper takes what
    /// follows `<|startofprev|>` as the text spoken before this audio, and leans towards its
    /// words and spelling. Only the last [`MAX_CONTEXT`] tokens are kept (OpenAI's limit).
    pub(crate) fn prompt_after(&self, context: &[u32]) -> Vec<u32> {
        let mut p = Vec::new();
        if let (Some(prev), false) = (self.start_of_prev, context.is_empty()) {
            p.push(prev);
            p.extend(&context[context.len().saturating_sub(MAX_CONTEXT)..]);
        }
        p.extend(self.prompt());
        p
    }

    /// `text` as text tokens: GPT-2's byte-level form, cut greedily into the longest tokens
    /// the vocabulary has (the vocabulary file carries no merge rules, so this is not always
    /// the tokenization BPE would pick, but it decodes to the same text).
    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        let forward: HashMap<u8, char> = self.bytes.iter().map(|(&c, &b)| (b, c)).collect();
        let chars: Vec<char> = text
            .bytes()
            .filter_map(|b| forward.get(&b).copied())
            .collect();
        let mut out = Vec::new();
        let mut at = 0;
        while at < chars.len() {
            let found = (1..=self.longest.min(chars.len() - at))
                .rev()
                .find_map(|n| {
                    let piece: String = chars[at..at + n].iter().collect();
                    self.ids.get(&piece).map(|&id| (id, n))
                });
            match found {
                Some((id, n)) => {
                    out.push(id);
                    at += n;
                }
                // Every byte is a token in a byte-level vocabulary; skip one that is not.
                None => at += 1,
            }
        }
        out
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
        // No `<|startofprev|>`: context is left out.
        assert_eq!(vocab.prompt_after(&[0]), vec![5, 6]);
    }

    #[test]
    fn text_encodes_to_the_longest_tokens_and_back() {
        let vocab = Vocabulary::parse(
            "H\ne\nl\no\nĠ\nw\nr\nd\nHel\nHello\nĠwor\nĠworld\nc\na\nf\nÃ\n©\n<|endoftext|>\n<|startoftranscript|>\n<|notimestamps|>\n<|startofprev|>\n",
        )
        .expect("vocab");
        assert_eq!(vocab.encode("Hello world"), vec![9, 11]);
        assert_eq!(
            vocab.decode(&vocab.encode("Hello world café")),
            "Hello world café"
        );
        assert_eq!(vocab.encode("Hel"), vec![8]);
        let prev = vocab.start_of_prev.expect("startofprev");
        assert_eq!(vocab.prompt_after(&[9]), vec![prev, 9, 18, 19]);
        assert_eq!(vocab.prompt_after(&[]), vec![18, 19]);
        let long: Vec<u32> = (0..300).map(|i| i % 10).collect();
        assert_eq!(vocab.prompt_after(&long).len(), 1 + MAX_CONTEXT + 2);
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
