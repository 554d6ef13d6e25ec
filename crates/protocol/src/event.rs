//! Server → client frames (spec §1.6): encoding, no IO.
//!
//! Every function returns the complete JSON text of one frame. Payloads (`data`, metadata)
//! are `RawValue`s and are copied byte for byte.

use serde::Serialize;
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

/// A presence snapshot as frames of at most `max` bytes each: the first is the snapshot
/// (clients replace their roster with it), the rest carry the remaining entries as `joined`
/// deltas, which clients add. One frame, possibly empty, when everything fits. An entry too
/// big for any frame still gets a frame of its own (bounded by the caller's limits).
pub fn presence_snapshot_frames<'e>(
    channel: &str,
    joined: impl IntoIterator<Item = &'e str>,
    max: usize,
) -> Vec<String> {
    let overhead = presence_overhead(channel);
    let mut frames = Vec::new();
    let mut chunk: Vec<&str> = Vec::new();
    let mut bytes = overhead;
    for e in joined {
        let add = e.len() + usize::from(!chunk.is_empty());
        if !chunk.is_empty() && bytes + add > max {
            frames.push(presence(channel, chunk.drain(..), []));
            bytes = overhead;
        }
        bytes += e.len() + usize::from(!chunk.is_empty());
        chunk.push(e);
    }
    if !chunk.is_empty() || frames.is_empty() {
        frames.push(presence(channel, chunk, []));
    }
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
    fn snapshots_split_at_the_cap_in_order() {
        let entries: Vec<String> = (0..50)
            .map(|i| presence_entry(&format!("p_{i:02}"), None))
            .collect();
        let all = || entries.iter().map(String::as_str);
        // Everything fits: one frame, the plain snapshot; nothing at all: one empty frame.
        let whole = presence("room", all(), []);
        assert_eq!(
            presence_snapshot_frames("room", all(), whole.len()),
            vec![whole.clone()]
        );
        assert_eq!(
            presence_snapshot_frames("room", [], 10),
            vec![presence("room", [], [])]
        );
        // A frame one byte short of the whole roster and a small cap: every frame within the
        // cap, each as full as the cap allows, the entries in order, none lost or repeated.
        for max in [
            whole.len() - 1,
            presence_overhead("room") + 3 * entries[0].len() + 2,
        ] {
            let frames = presence_snapshot_frames("room", all(), max);
            assert!(frames.len() > 1, "{max}");
            let mut ids = Vec::new();
            for f in &frames {
                assert!(f.len() <= max, "{} > {max}", f.len());
                let v: serde_json::Value = serde_json::from_str(f).expect("json");
                assert_eq!(v["left"], serde_json::json!([]));
                for e in v["joined"].as_array().expect("joined") {
                    ids.push(e["peerId"].as_str().expect("id").to_owned());
                }
            }
            let want: Vec<String> = (0..50).map(|i| format!("p_{i:02}")).collect();
            assert_eq!(ids, want);
            // Greedy: no frame but the last could have taken the next entry.
            for f in &frames[..frames.len() - 1] {
                assert!(f.len() + 1 + entries[0].len() > max);
            }
        }
        // An entry bigger than the cap still goes out alone (the caller's limits bound it).
        let big = presence_entry(&"p".repeat(100), None);
        let frames = presence_snapshot_frames("room", [entries[0].as_str(), big.as_str()], 40);
        assert_eq!(frames.len(), 2);
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
