//! Server → client frames (spec §1.6): encoding, no IO.
//!
//! Every function returns the complete JSON text of one frame. Payloads (`data`, metadata)
//! are `RawValue`s and are copied byte for byte.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;

/// The hard cap on any frame the server sends: both clients close with 1009 above 1 MiB.
pub const MAX_OUTBOUND_FRAME: usize = 1 << 20;
/// The `maxMessageSize` both clients fall back to.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65536;
/// The advisory reconnect delay sent in `going_away`.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 1000;
/// The `pong` frame.
pub const PONG: &str = r#"{"type":"pong"}"#;

/// The fields of a `welcome` frame.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome<'a> {
    /// The server-assigned peer id.
    pub peer_id: &'a str,
    /// Token expiry in Unix seconds; `null` for keys. Always present on the wire.
    pub expires_at: Option<u64>,
    /// Server clock in milliseconds since the Unix epoch.
    pub server_time: u64,
    /// The cap on a serialized `data` value, in bytes.
    pub max_message_size: usize,
    /// Private pass-through bag (e.g. `iceServers`), omitted when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs (strings, integers, RawValue) cannot fail.
    serde_json::to_string(value)
        .unwrap_or_else(|_| String::from(r#"{"type":"error","code":"internal_error"}"#))
}

/// `{"type":"welcome",…}`.
pub fn welcome(w: &Welcome<'_>) -> String {
    to_json(&Tagged {
        ty: "welcome",
        body: w,
    })
}

/// `{"type":"ack","requestId":R}`.
pub fn ack(request_id: &str) -> String {
    #[derive(Serialize)]
    struct Ack<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        #[serde(rename = "requestId")]
        request_id: &'a str,
    }
    to_json(&Ack {
        ty: "ack",
        request_id,
    })
}

/// `{"type":"error","code":C,"requestId":R?,"message":M?}`.
pub fn error(code: ErrorCode, request_id: Option<&str>, message: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        code: &'static str,
        #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
    }
    to_json(&Error {
        ty: "error",
        code: code.as_str(),
        request_id,
        message,
    })
}

#[derive(Serialize)]
struct Routed<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    from: &'a str,
    data: &'a RawValue,
    #[serde(rename = "fromMetadata", skip_serializing_if = "Option::is_none")]
    from_metadata: Option<&'a RawValue>,
}

/// `{"type":"message","channel":C,"from":P,"data":D,"fromMetadata":M?}`.
pub fn message(
    channel: &str,
    from: &str,
    data: &RawValue,
    from_metadata: Option<&RawValue>,
) -> String {
    to_json(&Routed {
        ty: "message",
        channel: Some(channel),
        from,
        data,
        from_metadata,
    })
}

/// `{"type":"direct","from":P,"data":D,"fromMetadata":M?}`.
pub fn direct(from: &str, data: &RawValue, from_metadata: Option<&RawValue>) -> String {
    to_json(&Routed {
        ty: "direct",
        channel: None,
        from,
        data,
        from_metadata,
    })
}

/// One presence entry, `{"peerId":P,"metadata":M?}`, encoded once per connection and reused
/// in every snapshot and delta.
pub fn presence_entry(peer_id: &str, metadata: Option<&RawValue>) -> String {
    #[derive(Serialize)]
    struct Entry<'a> {
        #[serde(rename = "peerId")]
        peer_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<&'a RawValue>,
    }
    to_json(&Entry { peer_id, metadata })
}

/// `{"type":"presence","channel":C,"joined":[…],"left":[…]}` from pre-encoded entries
/// (see [`presence_entry`]). Both arrays are always present.
pub fn presence<'e>(
    channel: &str,
    joined: impl IntoIterator<Item = &'e str>,
    left: impl IntoIterator<Item = &'e str>,
) -> String {
    let mut out = String::with_capacity(64 + channel.len());
    out.push_str(r#"{"type":"presence","channel":"#);
    out.push_str(&to_json(&channel));
    out.push_str(r#","joined":["#);
    push_list(&mut out, joined);
    out.push_str(r#"],"left":["#);
    push_list(&mut out, left);
    out.push_str("]}");
    out
}

fn push_list<'e>(out: &mut String, entries: impl IntoIterator<Item = &'e str>) {
    for (i, e) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(e);
    }
}

/// A presence snapshot within `max` bytes. Spec §1.8.2 wants the whole roster in one frame:
/// clients diff their roster against the first presence after a subscribe, so a roster split
/// across frames would make the members in the later frames look like departures.
///
/// The subscribe path's roster cap keeps every snapshot within the cap; a cluster's view of
/// remote members is eventually consistent, so concurrent joins on several nodes can
/// overshoot it. Then the snapshot stays one frame and drops the optional `metadata` of as
/// few entries as it must, from the end (every peer id stays). Only a roster whose bare ids
/// exceed `max` is split into further `joined` frames, as a last resort. An entry not made
/// by [`presence_entry`] is kept whole.
pub fn presence_snapshot_frames<'e>(
    channel: &str,
    joined: impl IntoIterator<Item = &'e str>,
    max: usize,
) -> Vec<String> {
    let entries: Vec<&str> = joined.into_iter().collect();
    let overhead = presence_overhead(channel);
    let commas = entries.len().saturating_sub(1);
    let full: usize = entries.iter().map(|e| e.len()).sum::<usize>() + commas;
    if overhead + full <= max {
        return vec![presence(channel, entries, [])];
    }
    // The same entries without metadata.
    #[derive(Deserialize)]
    struct Id<'a> {
        #[serde(rename = "peerId", borrow)]
        peer_id: &'a str,
    }
    let bare: Vec<Option<String>> = entries
        .iter()
        .map(|e| {
            serde_json::from_str::<Id<'_>>(e)
                .ok()
                .map(|id| presence_entry(id.peer_id, None))
                .filter(|b| b.len() < e.len())
        })
        .collect();
    let len = |i: usize| bare[i].as_ref().map_or(entries[i].len(), String::len);
    let bare_total: usize = (0..entries.len()).map(len).sum::<usize>() + commas;
    if overhead + bare_total <= max {
        // Keep metadata for the leading entries while the rest still fit bare.
        let mut budget = max - overhead - bare_total;
        let mut out: Vec<&str> = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            match &bare[i] {
                Some(b) if e.len() - b.len() > budget => out.push(b),
                Some(b) => {
                    budget -= e.len() - b.len();
                    out.push(e);
                }
                None => out.push(e),
            }
        }
        return vec![presence(channel, out, [])];
    }
    // Last resort: bare entries in frames of at most `max` bytes.
    let mut frames = Vec::new();
    let mut chunk: Vec<&str> = Vec::new();
    let mut bytes = overhead;
    for i in 0..entries.len() {
        let e = bare[i].as_deref().unwrap_or(entries[i]);
        if !chunk.is_empty() && bytes + 1 + e.len() > max {
            frames.push(presence(channel, chunk.drain(..), []));
            bytes = overhead;
        }
        bytes += e.len() + usize::from(!chunk.is_empty());
        chunk.push(e);
    }
    frames.push(presence(channel, chunk, []));
    frames
}

/// The bytes a presence frame for `channel` needs besides its entries (the envelope), used to
/// bound snapshots below [`MAX_OUTBOUND_FRAME`].
pub fn presence_overhead(channel: &str) -> usize {
    presence(channel, [], []).len()
}

/// `{"type":"going_away","retryAfterMs":N}`.
pub fn going_away(retry_after_ms: u64) -> String {
    format!(r#"{{"type":"going_away","retryAfterMs":{retry_after_ms}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("valid json")
    }

    #[test]
    fn welcome_always_carries_expires_at() {
        let w = Welcome {
            peer_id: "p_1",
            expires_at: None,
            server_time: 1767225600000,
            max_message_size: 65536,
            metadata: None,
        };
        assert_eq!(
            welcome(&w),
            r#"{"type":"welcome","peerId":"p_1","expiresAt":null,"serverTime":1767225600000,"maxMessageSize":65536}"#
        );
        let m = raw(r#"{"iceServers":[{"urls":"stun:x"}]}"#);
        let w = Welcome {
            expires_at: Some(1767229200),
            metadata: Some(&m),
            ..w
        };
        assert_eq!(
            welcome(&w),
            r#"{"type":"welcome","peerId":"p_1","expiresAt":1767229200,"serverTime":1767225600000,"maxMessageSize":65536,"metadata":{"iceServers":[{"urls":"stun:x"}]}}"#
        );
    }

    #[test]
    fn ack_and_error() {
        assert_eq!(ack("r\"1"), r#"{"type":"ack","requestId":"r\"1"}"#);
        assert_eq!(
            error(ErrorCode::PeerNotFound, Some("r"), Some("no such peer")),
            r#"{"type":"error","code":"peer_not_found","requestId":"r","message":"no such peer"}"#
        );
        assert_eq!(
            error(ErrorCode::MalformedMessage, None, None),
            r#"{"type":"error","code":"malformed_message"}"#
        );
    }

    #[test]
    fn routed_frames_keep_payload_bytes() {
        let d = raw(r#"{"n":123456789012345678901234567890,"e":"\u00e9"}"#);
        let m = raw(r#"{"name":"alice"}"#);
        assert_eq!(
            message("room", "p_a", &d, Some(&m)),
            r#"{"type":"message","channel":"room","from":"p_a","data":{"n":123456789012345678901234567890,"e":"\u00e9"},"fromMetadata":{"name":"alice"}}"#
        );
        let null = raw("null");
        assert_eq!(
            direct("p_a", &null, None),
            r#"{"type":"direct","from":"p_a","data":null}"#
        );
    }

    #[test]
    fn presence_has_both_arrays() {
        let a = presence_entry("p_a", None);
        let m = raw(r#"{"n":1}"#);
        let b = presence_entry("p_b", Some(&m));
        assert_eq!(
            presence("room", [a.as_str(), b.as_str()], []),
            r#"{"type":"presence","channel":"room","joined":[{"peerId":"p_a"},{"peerId":"p_b","metadata":{"n":1}}],"left":[]}"#
        );
        assert_eq!(
            presence("r\"x", [], [a.as_str()]),
            r#"{"type":"presence","channel":"r\"x","joined":[],"left":[{"peerId":"p_a"}]}"#
        );
        assert_eq!(presence_overhead("room"), presence("room", [], []).len());
    }

    #[test]
    fn snapshots_stay_one_frame_dropping_metadata_before_splitting() {
        let meta = raw(r#"{"name":"someone with a long name"}"#);
        let entries: Vec<String> = (0..50)
            .map(|i| presence_entry(&format!("p_{i:02}"), Some(&meta)))
            .collect();
        let all = || entries.iter().map(String::as_str);
        let ids = |f: &str| -> Vec<(String, bool)> {
            let v: serde_json::Value = serde_json::from_str(f).expect("json");
            assert_eq!(v["left"], serde_json::json!([]));
            v["joined"]
                .as_array()
                .expect("joined")
                .iter()
                .map(|e| {
                    (
                        e["peerId"].as_str().expect("id").to_owned(),
                        e.get("metadata").is_some(),
                    )
                })
                .collect()
        };
        let want: Vec<String> = (0..50).map(|i| format!("p_{i:02}")).collect();
        // Everything fits: the plain snapshot; nothing at all: one empty frame.
        let whole = presence("room", all(), []);
        assert_eq!(
            presence_snapshot_frames("room", all(), whole.len()),
            vec![whole.clone()]
        );
        assert_eq!(
            presence_snapshot_frames("room", [], 10),
            vec![presence("room", [], [])]
        );

        // One byte short: still one frame, every id, metadata dropped from the last entry only.
        let frames = presence_snapshot_frames("room", all(), whole.len() - 1);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].len() < whole.len());
        let got = ids(&frames[0]);
        assert_eq!(got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), want);
        assert!(got[..49].iter().all(|g| g.1) && !got[49].1, "{got:?}");

        // Room for the bare ids only: one frame, no metadata.
        let bare: Vec<String> = want.iter().map(|id| presence_entry(id, None)).collect();
        let bare_whole = presence("room", bare.iter().map(String::as_str), []);
        let frames = presence_snapshot_frames("room", all(), bare_whole.len());
        assert_eq!(frames, vec![bare_whole.clone()]);

        // Not even that: split (last resort), every frame within the cap, in order, greedy.
        for max in [
            bare_whole.len() - 1,
            presence_overhead("room") + 3 * bare[0].len() + 2,
        ] {
            let frames = presence_snapshot_frames("room", all(), max);
            assert!(frames.len() > 1, "{max}");
            let mut got = Vec::new();
            for f in &frames {
                assert!(f.len() <= max, "{} > {max}", f.len());
                got.extend(ids(f).into_iter().map(|g| g.0));
            }
            assert_eq!(got, want);
            for f in &frames[..frames.len() - 1] {
                assert!(f.len() + 1 + bare[0].len() > max);
            }
        }
    }

    #[test]
    fn going_away_and_pong() {
        assert_eq!(
            going_away(1000),
            r#"{"type":"going_away","retryAfterMs":1000}"#
        );
        let v: serde_json::Value = serde_json::from_str(PONG).expect("json");
        assert_eq!(v["type"], "pong");
    }
}
