//! The client side of the protocol: request builders (spec §1.4) and strict parsing of server
//! frames (spec §1.6), with the same acceptance rules as the real SDKs: a frame that fails a
//! check is dropped whole, never half-applied.

use serde::Serialize;
use serde::de::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// One presence entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PresencePeer {
    /// The peer's id.
    pub peer_id: String,
    /// Its public metadata, when it is an object.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A parsed server → client frame.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerEvent {
    /// The first frame of every connection.
    Welcome {
        /// Our peer id for this connection.
        peer_id: String,
        /// Token expiry, Unix seconds (`None` for keys).
        expires_at: Option<f64>,
        /// Server clock (milliseconds since the epoch).
        server_time: f64,
        /// Cap on a serialized `data` value.
        max_message_size: usize,
        /// Private metadata (e.g. `iceServers`), when it is an object.
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// A request succeeded.
    Ack {
        /// The request it answers.
        request_id: String,
    },
    /// A request failed, or an uncorrelated server error.
    Error {
        /// The protocol error code (unknown codes pass through verbatim).
        code: String,
        /// The request it answers, if any.
        request_id: Option<String>,
        /// Human-readable detail.
        message: Option<String>,
    },
    /// A channel broadcast.
    Message {
        /// The channel.
        channel: String,
        /// The sender's peer id (stamped by the server).
        from: String,
        /// The payload, verbatim.
        data: Box<RawValue>,
        /// The sender's public metadata, when opted in and an object.
        from_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// A direct message.
    Direct {
        /// The sender's peer id.
        from: String,
        /// The payload, verbatim.
        data: Box<RawValue>,
        /// The sender's public metadata, when an object.
        from_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// Roster snapshot or delta.
    Presence {
        /// The channel.
        channel: String,
        /// Peers that joined (or the whole roster, for the first frame after a subscribe ack).
        joined: Vec<PresencePeer>,
        /// Peers that left.
        left: Vec<PresencePeer>,
    },
    /// The server is shutting down; advisory reconnect delay (defaults to 1000, ≤ 300000).
    GoingAway {
        /// Milliseconds.
        retry_after_ms: u64,
    },
    /// Answer to a `ping`.
    Pong,
}

/// Why a server frame was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed server frame: {0}")]
pub struct MalformedFrame(pub &'static str);

#[derive(serde::Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(rename = "peerId", default, borrow, deserialize_with = "present")]
    peer_id: Option<&'a RawValue>,
    #[serde(rename = "expiresAt", default, borrow, deserialize_with = "present")]
    expires_at: Option<&'a RawValue>,
    #[serde(rename = "serverTime", default, borrow, deserialize_with = "present")]
    server_time: Option<&'a RawValue>,
    #[serde(
        rename = "maxMessageSize",
        default,
        borrow,
        deserialize_with = "present"
    )]
    max_message_size: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    metadata: Option<&'a RawValue>,
    #[serde(rename = "requestId", default, borrow, deserialize_with = "present")]
    request_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    code: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    message: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    from: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(rename = "fromMetadata", default, borrow, deserialize_with = "present")]
    from_metadata: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    joined: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    left: Option<&'a RawValue>,
    #[serde(rename = "retryAfterMs", default, borrow, deserialize_with = "present")]
    retry_after_ms: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn string(raw: Option<&RawValue>) -> Option<String> {
    raw.filter(|r| r.get().starts_with('"'))
        .and_then(|r| serde_json::from_str(r.get()).ok())
}

/// A finite JSON number (booleans are not numbers).
fn number(raw: Option<&RawValue>) -> Option<f64> {
    let r = raw?;
    let first = r.get().as_bytes().first()?;
    if !(first.is_ascii_digit() || *first == b'-') {
        return None;
    }
    serde_json::from_str::<f64>(r.get())
        .ok()
        .filter(|n| n.is_finite())
}

fn object(raw: Option<&RawValue>) -> Option<serde_json::Map<String, serde_json::Value>> {
    raw.filter(|r| r.get().starts_with('{'))
        .and_then(|r| serde_json::from_str(r.get()).ok())
}

fn peers(raw: Option<&RawValue>) -> Result<Vec<PresencePeer>, MalformedFrame> {
    let raw = raw.ok_or(MalformedFrame("presence needs joined and left arrays"))?;
    let items: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| MalformedFrame("presence list not an array"))?;
    items
        .into_iter()
        .map(|item| {
            #[derive(serde::Deserialize)]
            struct Entry<'a> {
                #[serde(rename = "peerId", default, borrow, deserialize_with = "present")]
                peer_id: Option<&'a RawValue>,
                #[serde(default, borrow, deserialize_with = "present")]
                metadata: Option<&'a RawValue>,
            }
            if !item.get().starts_with('{') {
                return Err(MalformedFrame("presence entry not an object"));
            }
            let e: Entry<'_> = serde_json::from_str(item.get())
                .map_err(|_| MalformedFrame("presence entry not an object"))?;
            Ok(PresencePeer {
                peer_id: string(e.peer_id).ok_or(MalformedFrame("presence peerId not a string"))?,
                metadata: object(e.metadata),
            })
        })
        .collect()
}

/// Parse one text frame from the server, with the real clients' strictness (spec §1.6).
///
/// ```
/// use parlor_protocol::client::{parse_server_frame, ServerEvent};
/// let ev = parse_server_frame(r#"{"type":"ack","requestId":"r1"}"#).unwrap();
/// assert!(matches!(ev, ServerEvent::Ack { request_id } if request_id == "r1"));
/// // A welcome without expiresAt is dropped, as the browser SDK does.
/// assert!(parse_server_frame(r#"{"type":"welcome","peerId":"p","serverTime":1,"maxMessageSize":1}"#).is_err());
/// ```
pub fn parse_server_frame(text: &str) -> Result<ServerEvent, MalformedFrame> {
    if !text.trim_start().starts_with('{') {
        return Err(MalformedFrame("not a JSON object"));
    }
    let raw: Raw<'_> = serde_json::from_str(text).map_err(|_| MalformedFrame("invalid JSON"))?;
    let ty = string(raw.ty).ok_or(MalformedFrame("type not a string"))?;
    let boxed = |r: &RawValue| r.to_owned();
    Ok(match ty.as_str() {
        "welcome" => {
            let expires_at = match raw.expires_at {
                None => return Err(MalformedFrame("welcome without expiresAt")),
                Some(r) if r.get() == "null" => None,
                Some(r) => Some(number(Some(r)).ok_or(MalformedFrame("expiresAt not a number"))?),
            };
            let max = number(raw.max_message_size)
                .filter(|n| *n > 0.0)
                .ok_or(MalformedFrame("maxMessageSize not a positive number"))?;
            ServerEvent::Welcome {
                peer_id: string(raw.peer_id).ok_or(MalformedFrame("peerId not a string"))?,
                expires_at,
                server_time: number(raw.server_time)
                    .ok_or(MalformedFrame("serverTime not a number"))?,
                max_message_size: max as usize,
                metadata: object(raw.metadata),
            }
        }
        "ack" => ServerEvent::Ack {
            request_id: string(raw.request_id).ok_or(MalformedFrame("ack without requestId"))?,
        },
        "error" => ServerEvent::Error {
            code: string(raw.code)
                .filter(|c| !c.is_empty())
                .ok_or(MalformedFrame("error code not a non-empty string"))?,
            request_id: string(raw.request_id),
            message: string(raw.message),
        },
        "message" => ServerEvent::Message {
            channel: string(raw.channel).ok_or(MalformedFrame("message channel not a string"))?,
            from: string(raw.from).ok_or(MalformedFrame("message from not a string"))?,
            data: raw
                .data
                .map(boxed)
                .ok_or(MalformedFrame("message without data"))?,
            from_metadata: object(raw.from_metadata),
        },
        "direct" => ServerEvent::Direct {
            from: string(raw.from).ok_or(MalformedFrame("direct from not a string"))?,
            data: raw
                .data
                .map(boxed)
                .ok_or(MalformedFrame("direct without data"))?,
            from_metadata: object(raw.from_metadata),
        },
        "presence" => ServerEvent::Presence {
            channel: string(raw.channel).ok_or(MalformedFrame("presence channel not a string"))?,
            joined: peers(raw.joined)?,
            left: peers(raw.left)?,
        },
        "going_away" => ServerEvent::GoingAway {
            retry_after_ms: number(raw.retry_after_ms)
                .filter(|n| *n > 0.0)
                .map_or(1000, |n| n.min(300_000.0) as u64),
        },
        "pong" => ServerEvent::Pong,
        _ => return Err(MalformedFrame("unknown type")),
    })
}

#[derive(Serialize)]
struct Req<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(
        rename = "includeSenderMetadata",
        skip_serializing_if = "std::ops::Not::not"
    )]
    include_sender_metadata: bool,
}

fn encode(req: &Req<'_>) -> String {
    serde_json::to_string(req).unwrap_or_default()
}

const EMPTY: Req<'static> = Req {
    ty: "",
    channel: None,
    to: None,
    data: None,
    request_id: None,
    include_sender_metadata: false,
};

/// `{"type":"subscribe","channel":C,"requestId":R,"includeSenderMetadata":true?}`.
pub fn subscribe(channel: &str, request_id: &str, include_sender_metadata: bool) -> String {
    encode(&Req {
        ty: "subscribe",
        channel: Some(channel),
        request_id: Some(request_id),
        include_sender_metadata,
        ..EMPTY
    })
}

/// `{"type":"unsubscribe","channel":C,"requestId":R}`.
pub fn unsubscribe(channel: &str, request_id: &str) -> String {
    encode(&Req {
        ty: "unsubscribe",
        channel: Some(channel),
        request_id: Some(request_id),
        ..EMPTY
    })
}

/// `{"type":"publish","channel":C,"data":D,"requestId":R}`.
pub fn publish(channel: &str, data: &RawValue, request_id: &str) -> String {
    encode(&Req {
        ty: "publish",
        channel: Some(channel),
        data: Some(data),
        request_id: Some(request_id),
        ..EMPTY
    })
}

/// `{"type":"send","to":P,"data":D,"requestId":R}`.
pub fn send(to: &str, data: &RawValue, request_id: &str) -> String {
    encode(&Req {
        ty: "send",
        to: Some(to),
        data: Some(data),
        request_id: Some(request_id),
        ..EMPTY
    })
}

/// `{"type":"ping"}`.
pub const PING: &str = r#"{"type":"ping"}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientRequest, event, parse_client_frame};

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("json")
    }

    #[test]
    fn builders_round_trip_through_the_server_parser() {
        let d = raw(r#"{"a":[1,null]}"#);
        let text = subscribe("room", "r1", true);
        let f = parse_client_frame(&text).expect("valid");
        assert_eq!(
            f.request,
            ClientRequest::Subscribe {
                channel: "room".into(),
                include_sender_metadata: true
            }
        );
        assert_eq!(
            subscribe("room", "r1", false),
            r#"{"type":"subscribe","channel":"room","requestId":"r1"}"#
        );
        assert_eq!(
            publish("room", &d, "r2"),
            r#"{"type":"publish","channel":"room","data":{"a":[1,null]},"requestId":"r2"}"#
        );
        assert_eq!(
            send("p_1", &raw("null"), "r3"),
            r#"{"type":"send","to":"p_1","data":null,"requestId":"r3"}"#
        );
        assert_eq!(
            unsubscribe("room", "r4"),
            r#"{"type":"unsubscribe","channel":"room","requestId":"r4"}"#
        );
        assert!(parse_client_frame(PING).is_ok());
    }

    #[test]
    fn parses_every_server_frame_we_encode() {
        let meta = raw(r#"{"iceServers":[]}"#);
        let w = event::welcome(&event::Welcome {
            peer_id: "p_1",
            expires_at: None,
            server_time: 5,
            max_message_size: 65536,
            metadata: Some(&meta),
        });
        match parse_server_frame(&w).expect("welcome") {
            ServerEvent::Welcome {
                peer_id,
                expires_at,
                max_message_size,
                metadata,
                ..
            } => {
                assert_eq!(peer_id, "p_1");
                assert_eq!(expires_at, None);
                assert_eq!(max_message_size, 65536);
                assert!(metadata.is_some_and(|m| m.contains_key("iceServers")));
            }
            other => panic!("{other:?}"),
        }
        let m = event::message("c", "p", &raw("null"), Some(&raw(r#"{"n":1}"#)));
        assert!(matches!(
            parse_server_frame(&m).expect("message"),
            ServerEvent::Message { data, from_metadata: Some(_), .. } if data.get() == "null"
        ));
        let e = event::presence_entry("p_a", Some(&raw(r#"{"x":1}"#)));
        let p = event::presence("c", [e.as_str()], []);
        match parse_server_frame(&p).expect("presence") {
            ServerEvent::Presence { joined, left, .. } => {
                assert_eq!(joined[0].peer_id, "p_a");
                assert!(joined[0].metadata.is_some());
                assert!(left.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_server_frame(&event::going_away(0)).expect("ga"),
            ServerEvent::GoingAway {
                retry_after_ms: 1000
            }
        ));
        assert!(matches!(
            parse_server_frame(event::PONG).expect("pong"),
            ServerEvent::Pong
        ));
    }

    #[test]
    fn drops_what_the_real_clients_drop() {
        for bad in [
            r#"{"type":"welcome","peerId":"p","serverTime":1,"maxMessageSize":1}"#,
            r#"{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":1,"maxMessageSize":0}"#,
            r#"{"type":"welcome","peerId":5,"expiresAt":null,"serverTime":1,"maxMessageSize":1}"#,
            r#"{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":true,"maxMessageSize":1}"#,
            r#"{"type":"ack"}"#,
            r#"{"type":"error","code":""}"#,
            r#"{"type":"message","channel":"c","from":"p"}"#,
            r#"{"type":"direct","data":1}"#,
            r#"{"type":"presence","channel":"c","joined":[]}"#,
            r#"{"type":"presence","channel":"c","joined":[{"peerId":1}],"left":[]}"#,
            r#"{"type":"presence","channel":"c","joined":["p"],"left":[]}"#,
            r#"{"type":"nope"}"#,
            "[]",
        ] {
            assert!(parse_server_frame(bad).is_err(), "{bad}");
        }
        // Non-string message/requestId on errors are ignored, not fatal.
        assert!(matches!(
            parse_server_frame(r#"{"type":"error","code":"x","requestId":5,"message":[]}"#),
            Ok(ServerEvent::Error {
                request_id: None,
                message: None,
                ..
            })
        ));
    }
}
