//! Words of a transcript, as the agent compares them (echo, backchannels) and as the
//! recognizers' guards do: lower case, split at spaces and hyphens, letters, digits and
//! apostrophes only.

/// The words of `text`, normalized.
///
/// ```
/// assert_eq!(parlor_agent::text::words("Uh-huh. It's FINE!"), ["uh", "huh", "it's", "fine"]);
/// ```
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '-')
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .flat_map(char::to_lowercase)
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}
