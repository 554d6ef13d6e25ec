//! A small rule-based reply hook: keyword rules, one sentence at a time, no model needed.

use crate::hooks::{Flow, HookError, Llm, Role, Turn};

/// Replies by keyword (weather, time, name, greetings, goodbye), else echoes what it heard.
#[derive(Debug, Clone, Default)]
pub struct RuleReply;

/// The words each rule answers to, in the order the rules are tried.
const WEATHER: &[&str] = &["weather", "rain", "sunny", "forecast", "temperature"];
const TIME: &[&str] = &["time", "clock", "late", "hour"];
const BYE: &[&str] = &["bye", "goodbye"];
const NAME: &[&str] = &["name", "who"];
const HELLO: &[&str] = &["hello", "hi", "hey"];

impl RuleReply {
    /// A prompt for the recognizer: the words the rules answer to, as one comma-separated
    /// line ("Weather, rain, …"), as `parlor demo --stt-prompt rules` gives
    /// Whisper (`WhisperStt::with_prompt`), so a voice it mishears still lands on them.
    pub fn vocabulary() -> String {
        let line = RuleReply::keywords().join(", ");
        let mut c = line.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect::<String>() + ".")
            .unwrap_or_default()
    }

    /// The words the rules answer to, for a recognizer to lean towards (as
    /// `parlor demo --stt-boost rules` does): two-letter words and "bye" (in "goodbye") left
    /// out, which would only pull it towards them.
    pub fn keywords() -> Vec<&'static str> {
        [WEATHER, TIME, NAME, HELLO, BYE]
            .concat()
            .into_iter()
            .filter(|w| w.len() > 2 && *w != "bye")
            .collect()
    }

    /// The reply to `said`, as sentences.
    pub fn sentences(said: &str) -> Vec<String> {
        let lower = said.to_lowercase();
        let has = |words: &[&str]| {
            lower
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| words.contains(&w))
        };
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect();
        if has(WEATHER) {
            s(&[
                "Here it is sunny and twenty one degrees, with a light wind from the west.",
                "Tomorrow looks the same, so it is a good week for a long walk.",
                "Ask me about the time, or say goodbye when you are done.",
            ])
        } else if has(TIME) {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let (h, m) = ((secs / 3_600) % 24, (secs / 60) % 60);
            vec![
                format!("It is {h} {m:02} in universal time."),
                "Ask me about the weather, or say goodbye.".to_owned(),
            ]
        } else if has(BYE) {
            s(&["Goodbye, and thank you for talking with me."])
        } else if has(NAME) {
            s(&[
                "I am the Parlor demo agent.",
                "Everything I hear and say is worked out on this machine.",
            ])
        } else if has(HELLO) {
            s(&[
                "Hello! I am the Parlor demo agent.",
                "Ask me about the weather or the time.",
            ])
        } else if said.trim().is_empty() {
            Vec::new()
        } else {
            vec![
                format!("I heard you say: {}.", said.trim()),
                "Ask me about the weather or the time.".to_owned(),
            ]
        }
    }
}

impl Llm for RuleReply {
    fn reply(&self, history: &[Turn], sink: &mut dyn FnMut(&str) -> Flow) -> Result<(), HookError> {
        let said = history
            .iter()
            .rev()
            .find(|t| t.role == Role::Human)
            .map_or("", |t| t.text.as_str());
        for sentence in RuleReply::sentences(said) {
            if sink(&sentence) == Flow::Stop {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_pick_the_reply_and_stop_is_honoured() {
        assert!(RuleReply::sentences("what is the weather like")[0].contains("sunny"));
        assert!(RuleReply::sentences("what time is it")[0].starts_with("It is"));
        assert!(RuleReply::sentences("the ah")[0].contains("the ah"));
        assert!(RuleReply::sentences("  ").is_empty());
        assert_eq!(
            RuleReply::vocabulary(),
            "Weather, rain, sunny, forecast, temperature, time, clock, late, hour, name, who, \
             hello, hey, goodbye."
        );
        let history = vec![Turn {
            role: Role::Human,
            text: "weather".into(),
        }];
        let mut got = Vec::new();
        RuleReply
            .reply(&history, &mut |s| {
                got.push(s.to_owned());
                Flow::Stop
            })
            .expect("reply");
        assert_eq!(got.len(), 1);
    }
}
