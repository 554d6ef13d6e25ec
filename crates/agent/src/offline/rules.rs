//! A small rule-based reply hook: keyword rules, one sentence at a time, no model needed.

use crate::hooks::{Flow, HookError, Llm, Role, Turn};

/// Replies by keyword (weather, time, name, greetings, goodbye), else echoes what it heard.
#[derive(Debug, Clone, Default)]
pub struct RuleReply;

impl RuleReply {
    /// The reply to `said`, as sentences.
    pub fn sentences(said: &str) -> Vec<String> {
        let lower = said.to_lowercase();
        let has = |words: &[&str]| {
            lower
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| words.contains(&w))
        };
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect();
        if has(&["weather", "rain", "sunny", "forecast", "temperature"]) {
            s(&[
                "Here it is sunny and twenty one degrees, with a light wind from the west.",
                "Tomorrow looks the same, so it is a good week for a long walk.",
                "Ask me about the time, or say goodbye when you are done.",
            ])
        } else if has(&["time", "clock", "late", "hour"]) {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let (h, m) = ((secs / 3_600) % 24, (secs / 60) % 60);
            vec![
                format!("It is {h} {m:02} in universal time."),
                "Ask me about the weather, or say goodbye.".to_owned(),
            ]
        } else if has(&["bye", "goodbye"]) {
            s(&["Goodbye, and thank you for talking with me."])
        } else if has(&["name", "who"]) {
            s(&[
                "I am the Parlor demo agent.",
                "Everything I hear and say is worked out on this machine.",
            ])
        } else if has(&["hello", "hi", "hey"]) {
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
