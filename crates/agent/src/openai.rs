//! The reply hook over any OpenAI-compatible chat-completions endpoint (OpenAI, or a local
//! server such as llama.cpp, Ollama or vLLM), streamed: tokens arrive as server-sent events
//! and are handed to the agent a sentence at a time, so speech starts before the model is done.
//!
//! Selected by environment variables ([`OpenAiLlm::from_env`]):
//! `PARLOR_LLM_BASE_URL` (e.g. `https://api.openai.com/v1`, `http://127.0.0.1:11434/v1`),
//! `PARLOR_LLM_MODEL` (default `gpt-4o-mini`), `PARLOR_LLM_API_KEY` (or `OPENAI_API_KEY`;
//! optional for local servers), `PARLOR_LLM_SYSTEM` (the system prompt).

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::{Value, json};

use crate::hooks::{Flow, HookError, Llm, Role, Turn};

const DEFAULT_SYSTEM: &str = "You are a friendly voice assistant. Answer in one to three short \
spoken sentences, without lists or markup.";

/// A streaming chat-completions client as an [`Llm`] hook.
pub struct OpenAiLlm {
    base_url: String,
    api_key: Option<String>,
    model: String,
    system: String,
    http: ureq::Agent,
}

impl std::fmt::Debug for OpenAiLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("OpenAiLlm")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl OpenAiLlm {
    /// A client for `base_url` (the part before `/chat/completions`).
    pub fn new(base_url: &str, model: &str, api_key: Option<String>) -> OpenAiLlm {
        let http = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        OpenAiLlm {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: api_key.filter(|k| !k.is_empty()),
            model: model.to_owned(),
            system: DEFAULT_SYSTEM.to_owned(),
            http,
        }
    }

    /// Replace the system prompt.
    pub fn with_system(mut self, system: &str) -> OpenAiLlm {
        system.clone_into(&mut self.system);
        self
    }

    /// The client the environment asks for, or `None` when `PARLOR_LLM_BASE_URL` is unset.
    pub fn from_env() -> Option<OpenAiLlm> {
        let base = std::env::var("PARLOR_LLM_BASE_URL").ok()?;
        let model = std::env::var("PARLOR_LLM_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
        let key = std::env::var("PARLOR_LLM_API_KEY")
            .or_else(|_| std::env::var("OPENAI_API_KEY"))
            .ok();
        let llm = OpenAiLlm::new(&base, &model, key);
        Some(match std::env::var("PARLOR_LLM_SYSTEM") {
            Ok(s) => llm.with_system(&s),
            Err(_) => llm,
        })
    }

    fn body(&self, history: &[Turn]) -> Value {
        let mut messages = vec![json!({"role": "system", "content": self.system})];
        messages.extend(history.iter().map(|t| {
            let role = match t.role {
                Role::Human => "user",
                Role::Agent => "assistant",
            };
            json!({"role": role, "content": t.text})
        }));
        json!({"model": self.model, "messages": messages, "stream": true})
    }
}

/// Splits streamed text into sentences (pure; unit tested).
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buf: String,
}

impl SentenceSplitter {
    /// Add streamed text; returns the sentences it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            let cut = self.buf.char_indices().find_map(|(i, c)| {
                let next = self.buf[i + c.len_utf8()..].chars().next();
                (matches!(c, '.' | '!' | '?' | '\n') && next.is_some_and(char::is_whitespace))
                    .then_some(i + c.len_utf8())
            });
            let Some(cut) = cut else { break };
            let sentence = self.buf[..cut].trim().to_owned();
            self.buf.drain(..cut);
            if !sentence.is_empty() {
                out.push(sentence);
            }
        }
        out
    }

    /// The rest, at the end of the stream.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf).trim().to_owned();
        (!rest.is_empty()).then_some(rest)
    }
}

impl Llm for OpenAiLlm {
    fn reply(&self, history: &[Turn], sink: &mut dyn FnMut(&str) -> Flow) -> Result<(), HookError> {
        let url = format!("{}/chat/completions", self.base_url);
        let mut req = self
            .http
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", &format!("Bearer {key}"));
        }
        let err = |m: String| HookError::new("llm", m);
        let mut resp = req
            .send(self.body(history).to_string())
            .map_err(|e| err(format!("POST {url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp
                .body_mut()
                .with_config()
                .limit(4_096)
                .read_to_string()
                .unwrap_or_default();
            let snippet: String = text.chars().take(300).collect();
            return Err(err(format!("POST {url}: HTTP {status}: {snippet}")));
        }
        let reader = BufReader::new(resp.body_mut().with_config().limit(16 << 20).reader());
        let mut split = SentenceSplitter::default();
        for line in reader.lines() {
            let line = line.map_err(|e| err(format!("reading the stream: {e}")))?;
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                break;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let piece = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            for sentence in split.push(piece) {
                if sink(&sentence) == Flow::Stop {
                    return Ok(());
                }
            }
        }
        if let Some(rest) = split.finish() {
            sink(&rest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_cut_at_terminal_punctuation_followed_by_space() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("It is 3.5 deg").is_empty());
        assert_eq!(s.push("rees. Nice"), vec!["It is 3.5 degrees."]);
        assert_eq!(s.push("! Really? Yes"), vec!["Nice!", "Really?"]);
        assert_eq!(s.finish().as_deref(), Some("Yes"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let llm = OpenAiLlm::new("http://127.0.0.1:1/v1", "m", Some("sk-secret".into()));
        assert!(!format!("{llm:?}").contains("sk-secret"));
    }
}
