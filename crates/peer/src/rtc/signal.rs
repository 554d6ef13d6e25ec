//! WebRTC signals over `send`/`direct` (spec §2.1–§2.3): classifying inbound payloads and
//! encoding outbound ones. Pure; no IO.

use serde::Serialize;
use serde_json::{Map, Value};

/// An SDP description type. There is no `pranswer` or `rollback` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    /// An offer.
    Offer,
    /// An answer.
    Answer,
}

impl SdpKind {
    fn as_str(self) -> &'static str {
        match self {
            SdpKind::Offer => "offer",
            SdpKind::Answer => "answer",
        }
    }
}

/// A trickled ICE candidate (`RTCIceCandidateInit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateInit {
    /// The `candidate:` line (without `a=`).
    pub candidate: String,
    /// Media id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// m-line index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    /// ICE ufrag of the generation it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Track metadata control message (`__meteredTrackMeta`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrackMeta {
    /// The sender's track id.
    pub track_id: String,
    /// `Some` sets the metadata, `None` clears it.
    pub metadata: Option<Map<String, Value>>,
    /// Track kind, when known (`audio`/`video`).
    pub kind: Option<String>,
    /// The sender's stream id, when the track belongs to a stream.
    pub stream_id: Option<String>,
}

/// What an inbound `direct` payload is, in the priority order of spec §2.2.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// An SDP offer or answer.
    Description {
        /// Offer or answer.
        kind: SdpKind,
        /// The SDP text.
        sdp: String,
    },
    /// A trickled candidate; `None` is end-of-candidates (`null` or `{"candidate":""}`).
    Candidate(Option<CandidateInit>),
    /// Track metadata (never surfaced as data).
    TrackMeta(TrackMeta),
    /// Application data.
    Data,
    /// rtc-shaped but unusable (e.g. a candidate object without a string `candidate`): dropped
    /// silently, counted against the candidate cap.
    Malformed,
}

/// The reserved data key for track metadata.
pub const TRACK_META_KEY: &str = "__meteredTrackMeta";

fn opt_string(v: Option<&Value>, max: usize) -> Result<Option<String>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if (1..=max).contains(&s.chars().count()) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

/// Classify one inbound direct payload.
pub fn classify(data: &Value) -> Inbound {
    let Some(obj) = data.as_object() else {
        return Inbound::Data;
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("rtc-description") => {
            if let Some(desc) = obj.get("description").and_then(Value::as_object) {
                let kind = match desc.get("type").and_then(Value::as_str) {
                    Some("offer") => Some(SdpKind::Offer),
                    Some("answer") => Some(SdpKind::Answer),
                    _ => None,
                };
                if let (Some(kind), Some(sdp)) = (kind, desc.get("sdp").and_then(Value::as_str)) {
                    return Inbound::Description {
                        kind,
                        sdp: sdp.to_owned(),
                    };
                }
            }
        }
        Some("rtc-ice") => match obj.get("candidate") {
            Some(Value::Null) => return Inbound::Candidate(None),
            Some(Value::Object(c)) => {
                return match c.get("candidate") {
                    Some(Value::String(s)) if s.is_empty() => Inbound::Candidate(None),
                    Some(Value::String(s)) => Inbound::Candidate(Some(CandidateInit {
                        candidate: s.clone(),
                        sdp_mid: c.get("sdpMid").and_then(Value::as_str).map(str::to_owned),
                        sdp_m_line_index: c
                            .get("sdpMLineIndex")
                            .and_then(Value::as_u64)
                            .and_then(|n| u16::try_from(n).ok()),
                        username_fragment: c
                            .get("usernameFragment")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    })),
                    _ => Inbound::Malformed,
                };
            }
            _ => {}
        },
        _ => {}
    }
    if let Some(tm) = obj.get(TRACK_META_KEY).and_then(parse_track_meta) {
        return Inbound::TrackMeta(tm);
    }
    Inbound::Data
}

fn parse_track_meta(v: &Value) -> Option<TrackMeta> {
    let o = v.as_object()?;
    let track_id = o.get("trackId")?.as_str().filter(|s| !s.is_empty())?;
    let metadata = match o.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return None,
    };
    Some(TrackMeta {
        track_id: track_id.to_owned(),
        metadata,
        kind: opt_string(o.get("kind"), 256).ok()?,
        stream_id: opt_string(o.get("streamId"), 256).ok()?,
    })
}

/// `{"type":"rtc-description","description":{"type":K,"sdp":S}}`.
pub fn description(kind: SdpKind, sdp: &str) -> Value {
    serde_json::json!({"type": "rtc-description", "description": {"type": kind.as_str(), "sdp": sdp}})
}

/// `{"type":"rtc-ice","candidate":C}`; `None` is end-of-candidates (`null`).
pub fn candidate(c: Option<&CandidateInit>) -> Value {
    serde_json::json!({"type": "rtc-ice", "candidate": c})
}

/// A track-metadata message. A clear carries only `trackId` — never `"metadata": null`,
/// which the browser SDK would surface as application data (spec §2.3).
pub fn track_meta(meta: &TrackMeta) -> Value {
    let mut body = Map::new();
    body.insert("trackId".into(), Value::String(meta.track_id.clone()));
    if let Some(m) = &meta.metadata {
        body.insert("metadata".into(), Value::Object(m.clone()));
        if let Some(k) = &meta.kind {
            body.insert("kind".into(), Value::String(k.clone()));
        }
        if let Some(s) = &meta.stream_id {
            body.insert("streamId".into(), Value::String(s.clone()));
        }
    }
    let mut outer = Map::new();
    outer.insert(TRACK_META_KEY.into(), Value::Object(body));
    Value::Object(outer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn descriptions() {
        assert_eq!(
            classify(&json!({"type":"rtc-description","description":{"type":"offer","sdp":"v=0"}})),
            Inbound::Description {
                kind: SdpKind::Offer,
                sdp: "v=0".into()
            }
        );
        // pranswer / rollback / missing sdp are not rtc signals: they are data.
        for v in [
            json!({"type":"rtc-description","description":{"type":"pranswer","sdp":"v=0"}}),
            json!({"type":"rtc-description","description":{"type":"answer"}}),
            json!({"type":"rtc-description","description":"x"}),
        ] {
            assert_eq!(classify(&v), Inbound::Data, "{v}");
        }
        let round = description(SdpKind::Answer, "v=0\r\n");
        assert!(matches!(
            classify(&round),
            Inbound::Description {
                kind: SdpKind::Answer,
                ..
            }
        ));
    }

    #[test]
    fn candidates_and_end_of_candidates() {
        assert_eq!(
            classify(&json!({"type":"rtc-ice","candidate":null})),
            Inbound::Candidate(None)
        );
        assert_eq!(
            classify(&json!({"type":"rtc-ice","candidate":{"candidate":""}})),
            Inbound::Candidate(None)
        );
        let c = classify(&json!({"type":"rtc-ice","candidate":{
            "candidate":"candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host",
            "sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}}));
        let Inbound::Candidate(Some(init)) = c else {
            panic!("{c:?}")
        };
        assert_eq!(init.sdp_mid.as_deref(), Some("0"));
        assert_eq!(init.sdp_m_line_index, Some(0));
        assert_eq!(
            candidate(Some(&init)),
            json!({"type":"rtc-ice","candidate":{
                "candidate":"candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host",
                "sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}})
        );
        assert_eq!(candidate(None), json!({"type":"rtc-ice","candidate":null}));
        assert_eq!(
            classify(&json!({"type":"rtc-ice","candidate":{"candidate":5}})),
            Inbound::Malformed
        );
        assert_eq!(classify(&json!({"type":"rtc-ice"})), Inbound::Data);
    }

    #[test]
    fn track_metadata() {
        let set = TrackMeta {
            track_id: "t1".into(),
            metadata: json!({"role":"voice"}).as_object().cloned(),
            kind: Some("audio".into()),
            stream_id: Some("s1".into()),
        };
        let wire = track_meta(&set);
        assert_eq!(
            wire,
            json!({"__meteredTrackMeta":{"trackId":"t1","metadata":{"role":"voice"},"kind":"audio","streamId":"s1"}})
        );
        assert_eq!(classify(&wire), Inbound::TrackMeta(set));
        let clear = TrackMeta {
            track_id: "t1".into(),
            metadata: None,
            kind: None,
            stream_id: None,
        };
        let wire = track_meta(&clear);
        assert_eq!(wire, json!({"__meteredTrackMeta":{"trackId":"t1"}}));
        assert!(!wire.to_string().contains("null"));
        assert_eq!(classify(&wire), Inbound::TrackMeta(clear));
        // Invalid control messages are plain data.
        for v in [
            json!({"__meteredTrackMeta":{"trackId":""}}),
            json!({"__meteredTrackMeta":{"trackId":"t","metadata":[1]}}),
            json!({"__meteredTrackMeta":{"trackId":"t","kind":""}}),
            json!({"__meteredTrackMeta":{"trackId":"t","streamId":"s".repeat(257)}}),
            json!({"__meteredTrackMeta":"x"}),
        ] {
            assert_eq!(classify(&v), Inbound::Data, "{v}");
        }
    }

    #[test]
    fn anything_else_is_data() {
        for v in [
            json!(null),
            json!(5),
            json!("x"),
            json!([1]),
            json!({"type":"chat"}),
        ] {
            assert_eq!(classify(&v), Inbound::Data, "{v}");
        }
    }
}
