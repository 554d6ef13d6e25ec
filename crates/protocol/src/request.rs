//! Client → server frames (spec §1.4, §1.5, §1.10): parsing and validation, no IO.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::validate;

/// A validated client frame. `data` payloads borrow from the input text so they can be
/// forwarded byte for byte (spec §1.9 "payload transparency").
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame<'a> {
    /// The request id, when the client wants an ack. Never set for `Ping`.
    pub request_id: Option<String>,
    /// What the client asks for.
    pub request: ClientRequest<'a>,
}

/// The five requests a client can make.
#[derive(Debug, Clone)]
pub enum ClientRequest<'a> {
    /// Join a channel; the server answers with ack, then the roster snapshot.
    Subscribe {
        /// A valid, non-reserved channel name.
        channel: String,
        /// Stamp broadcasts on this channel with the sender's `peerMetadata`.
        include_sender_metadata: bool,
    },
    /// Leave a channel (idempotent).
    Unsubscribe {
        /// A valid, non-reserved channel name.
        channel: String,
    },
    /// Broadcast `data` to the channel's subscribers.
    Publish {
        /// A valid, non-reserved channel name.
        channel: String,
        /// Any JSON value, including `null`, exactly as sent.
        data: &'a RawValue,
    },
    /// Deliver `data` to one peer of the same tenant.
    Send {
        /// The target peer id.
        to: String,
        /// Any JSON value, including `null`, exactly as sent.
        data: &'a RawValue,
    },
    /// App-level keepalive; answered with `pong`, never acked.
    Ping,
}

impl PartialEq for ClientRequest<'_> {
    /// Payloads compare by their exact JSON text.
    fn eq(&self, other: &Self) -> bool {
        use ClientRequest::*;
        match (self, other) {
            (
                Subscribe {
                    channel: a,
                    include_sender_metadata: x,
                },
                Subscribe {
                    channel: b,
                    include_sender_metadata: y,
                },
            ) => a == b && x == y,
            (Unsubscribe { channel: a }, Unsubscribe { channel: b }) => a == b,
            (
                Publish {
                    channel: a,
                    data: d,
                },
                Publish {
                    channel: b,
                    data: e,
                },
            ) => a == b && d.get() == e.get(),
            (Send { to: a, data: d }, Send { to: b, data: e }) => a == b && d.get() == e.get(),
            (Ping, Ping) => true,
            _ => false,
        }
    }
}

impl ClientRequest<'_> {
    /// The wire `type` of this request.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientRequest::Subscribe { .. } => "subscribe",
            ClientRequest::Unsubscribe { .. } => "unsubscribe",
            ClientRequest::Publish { .. } => "publish",
            ClientRequest::Send { .. } => "send",
            ClientRequest::Ping => "ping",
        }
    }
}

/// A frame the server must refuse, with the error the protocol prescribes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    /// The error code to send.
    pub code: ErrorCode,
    /// The request id to correlate with, when the frame carried a valid one.
    pub request_id: Option<String>,
    /// A short human-readable explanation (never contains client input).
    pub message: &'static str,
}

impl FrameError {
    fn new(code: ErrorCode, request_id: Option<&str>, message: &'static str) -> Self {
        FrameError {
            code,
            request_id: request_id.map(str::to_owned),
            message,
        }
    }
}

/// Every field as raw JSON, so that presence, type and value are checked by our rules rather
/// than serde's (a `null` `data` must stay distinguishable from a missing one).
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(rename = "requestId", default, borrow, deserialize_with = "present")]
    request_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    to: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(
        rename = "includeSenderMetadata",
        default,
        borrow,
        deserialize_with = "present"
    )]
    include_sender_metadata: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The value of a raw JSON string, or `None` if it is not a string.
fn as_string(raw: &RawValue) -> Option<String> {
    if raw.get().starts_with('"') {
        serde_json::from_str::<String>(raw.get()).ok()
    } else {
        None
    }
}

/// Parse and validate one text frame from a client.
///
/// Checks run in the order of spec §1.10: JSON shape → type → requestId → field validity →
/// reserved prefix. Authorization, permissions, quotas and limits are the server's job.
///
/// ```
/// use parlor_protocol::{parse_client_frame, ClientRequest, ErrorCode};
///
/// let f = parse_client_frame(r#"{"type":"publish","channel":"room","data":null,"requestId":"r1"}"#)
///     .unwrap();
/// assert_eq!(f.request_id.as_deref(), Some("r1"));
/// assert!(matches!(f.request, ClientRequest::Publish { ref data, .. } if data.get() == "null"));
///
/// let e = parse_client_frame(r#"{"type":"publish","channel":"room","requestId":"r2"}"#).unwrap_err();
/// assert_eq!((e.code, e.request_id.as_deref()), (ErrorCode::MissingData, Some("r2")));
/// ```
pub fn parse_client_frame(text: &str) -> Result<ClientFrame<'_>, FrameError> {
    // serde would accept a JSON array for a struct (positional fields); the protocol wants
    // exactly one object.
    if !text.trim_start().starts_with('{') {
        return Err(FrameError::new(
            ErrorCode::MalformedMessage,
            None,
            "frame must be a JSON object",
        ));
    }
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|_| {
        FrameError::new(
            ErrorCode::MalformedMessage,
            None,
            "frame is not a valid JSON object",
        )
    })?;

    // A request id is echoed only when it is valid.
    let request_id: Result<Option<String>, ()> = match raw.request_id {
        None => Ok(None),
        Some(r) => match as_string(r) {
            Some(s) if validate::is_valid_request_id(&s) => Ok(Some(s)),
            _ => Err(()),
        },
    };
    let valid_rid = request_id.as_ref().ok().and_then(|r| r.as_deref());

    let Some(ty) = raw.ty.and_then(as_string) else {
        return Err(FrameError::new(
            ErrorCode::MalformedMessage,
            valid_rid,
            "type must be a string",
        ));
    };
    if ty == "ping" {
        // Never acked; a requestId on a ping is ignored.
        return Ok(ClientFrame {
            request_id: None,
            request: ClientRequest::Ping,
        });
    }
    let Ok(request_id) = request_id else {
        return Err(FrameError::new(
            ErrorCode::MalformedMessage,
            None,
            "requestId must be a non-empty string of at most 128 characters",
        ));
    };
    let rid = request_id.as_deref();

    let channel = |raw_channel: Option<&RawValue>| -> Result<String, FrameError> {
        let c = raw_channel.and_then(as_string).ok_or_else(|| {
            FrameError::new(ErrorCode::InvalidChannel, rid, "channel must be a string")
        })?;
        if !validate::is_valid_channel(&c) {
            return Err(FrameError::new(
                ErrorCode::InvalidChannel,
                rid,
                "channel must be 1-256 characters without control characters",
            ));
        }
        if validate::is_reserved_channel(&c) {
            return Err(FrameError::new(
                ErrorCode::ChannelReserved,
                rid,
                "channel prefix is reserved",
            ));
        }
        Ok(c)
    };
    let missing_data = || FrameError::new(ErrorCode::MissingData, rid, "data is required");

    let request = match ty.as_str() {
        "subscribe" => {
            let include_sender_metadata = match raw.include_sender_metadata.map(RawValue::get) {
                None | Some("null") | Some("false") => false,
                Some("true") => true,
                Some(_) => {
                    return Err(FrameError::new(
                        ErrorCode::MalformedMessage,
                        rid,
                        "includeSenderMetadata must be a boolean",
                    ));
                }
            };
            ClientRequest::Subscribe {
                channel: channel(raw.channel)?,
                include_sender_metadata,
            }
        }
        "unsubscribe" => ClientRequest::Unsubscribe {
            channel: channel(raw.channel)?,
        },
        "publish" => {
            let channel = channel(raw.channel)?;
            ClientRequest::Publish {
                channel,
                data: raw.data.ok_or_else(missing_data)?,
            }
        }
        "send" => {
            let to = raw.to.and_then(as_string).ok_or_else(|| {
                FrameError::new(ErrorCode::InvalidPeerId, rid, "to must be a string")
            })?;
            if !validate::is_valid_peer_id(&to) {
                return Err(FrameError::new(
                    ErrorCode::InvalidPeerId,
                    rid,
                    "to must be 1-128 characters without control characters",
                ));
            }
            ClientRequest::Send {
                to,
                data: raw.data.ok_or_else(missing_data)?,
            }
        }
        _ => {
            return Err(FrameError::new(
                ErrorCode::UnknownType,
                rid,
                "unknown frame type",
            ));
        }
    };
    Ok(ClientFrame {
        request_id,
        request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (ErrorCode, Option<String>) {
        let e = parse_client_frame(text).expect_err("frame should be refused");
        (e.code, e.request_id)
    }

    fn rid(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn parses_what_the_clients_emit() {
        let f = parse_client_frame(
            r#"{"type":"subscribe","channel":"room-42","requestId":"0b6f","includeSenderMetadata":true}"#,
        )
        .expect("valid");
        assert_eq!(
            f,
            ClientFrame {
                request_id: rid("0b6f"),
                request: ClientRequest::Subscribe {
                    channel: "room-42".into(),
                    include_sender_metadata: true
                }
            }
        );
        let f = parse_client_frame(r#"{"type":"unsubscribe","channel":"room-42","requestId":"x"}"#)
            .expect("valid");
        assert_eq!(
            f.request,
            ClientRequest::Unsubscribe {
                channel: "room-42".into()
            }
        );
        let f = parse_client_frame(r#"{"type":"ping"}"#).expect("valid");
        assert_eq!((f.request, f.request_id), (ClientRequest::Ping, None));
    }

    #[test]
    fn data_is_forwarded_byte_for_byte() {
        let text = r#"{"type":"send","to":"p_1","data":{"n":123456789012345678901234567890,"s":"\u00e9\ud83d\ude00"},"requestId":"r"}"#;
        let f = parse_client_frame(text).expect("valid");
        let ClientRequest::Send { to, data } = f.request else {
            panic!("not a send")
        };
        assert_eq!(to, "p_1");
        assert_eq!(
            data.get(),
            r#"{"n":123456789012345678901234567890,"s":"\u00e9\ud83d\ude00"}"#
        );
    }

    #[test]
    fn null_data_is_valid_and_missing_data_is_not() {
        let f = parse_client_frame(r#"{"type":"publish","channel":"c","data":null}"#).expect("ok");
        assert!(matches!(f.request, ClientRequest::Publish { data, .. } if data.get() == "null"));
        assert_eq!(
            err(r#"{"type":"publish","channel":"c","requestId":"r"}"#),
            (ErrorCode::MissingData, rid("r"))
        );
        assert_eq!(
            err(r#"{"type":"send","to":"p","requestId":"r"}"#),
            (ErrorCode::MissingData, rid("r"))
        );
    }

    #[test]
    fn shape_errors_are_malformed_and_uncorrelated() {
        for bad in [
            "",
            "nope",
            "[]",
            r#"["subscribe","c"]"#,
            "5",
            "null",
            r#"{"type":"publish""#,
            r#"{"type":"ping","type":"ping"}"#,
        ] {
            assert_eq!(err(bad), (ErrorCode::MalformedMessage, None), "{bad}");
        }
    }

    #[test]
    fn type_errors() {
        assert_eq!(
            err(r#"{"channel":"c"}"#),
            (ErrorCode::MalformedMessage, None)
        );
        assert_eq!(
            err(r#"{"type":5,"requestId":"r"}"#),
            (ErrorCode::MalformedMessage, rid("r"))
        );
        assert_eq!(
            err(r#"{"type":"shout","requestId":"r"}"#),
            (ErrorCode::UnknownType, rid("r"))
        );
        assert_eq!(err(r#"{"type":"shout"}"#), (ErrorCode::UnknownType, None));
    }

    #[test]
    fn bad_request_ids_are_uncorrelated_malformed() {
        for bad in [
            r#""""#.to_string(),
            "5".to_string(),
            "null".to_string(),
            "{}".to_string(),
            format!("\"{}\"", "r".repeat(129)),
        ] {
            let text = format!(r#"{{"type":"subscribe","channel":"c","requestId":{bad}}}"#);
            assert_eq!(err(&text), (ErrorCode::MalformedMessage, None), "{text}");
        }
        let ok = format!(
            r#"{{"type":"subscribe","channel":"c","requestId":"{}"}}"#,
            "r".repeat(128)
        );
        assert!(parse_client_frame(&ok).is_ok());
    }

    #[test]
    fn channel_and_peer_errors_are_correlated() {
        assert_eq!(
            err(r#"{"type":"subscribe","requestId":"r"}"#),
            (ErrorCode::InvalidChannel, rid("r"))
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":7,"requestId":"r"}"#),
            (ErrorCode::InvalidChannel, rid("r"))
        );
        assert_eq!(
            err(r#"{"type":"publish","channel":"","data":1,"requestId":"r"}"#),
            (ErrorCode::InvalidChannel, rid("r"))
        );
        assert_eq!(
            err(r#"{"type":"unsubscribe","channel":"a\u0000","requestId":"r"}"#),
            (ErrorCode::InvalidChannel, rid("r"))
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"_Metered/x","requestId":"r"}"#),
            (ErrorCode::ChannelReserved, rid("r"))
        );
        assert_eq!(
            err(r#"{"type":"send","data":1,"requestId":"r"}"#),
            (ErrorCode::InvalidPeerId, rid("r"))
        );
        assert_eq!(
            err(&format!(
                r#"{{"type":"send","to":"{}","data":1,"requestId":"r"}}"#,
                "p".repeat(129)
            )),
            (ErrorCode::InvalidPeerId, rid("r"))
        );
        assert_eq!(
            err(
                r#"{"type":"subscribe","channel":"c","includeSenderMetadata":"yes","requestId":"r"}"#
            ),
            (ErrorCode::MalformedMessage, rid("r"))
        );
    }

    #[test]
    fn unknown_fields_and_key_order_do_not_matter() {
        let f = parse_client_frame(
            r#"{"extra":[1,2],"data":{"a":1},"channel":"c","type":"publish","requestId":"r"}"#,
        )
        .expect("valid");
        assert!(matches!(f.request, ClientRequest::Publish { ref channel, .. } if channel == "c"));
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let f = parse_client_frame(r#"{"type":"subscribe","channel":"caf\u00e9","requestId":"r"}"#)
            .expect("valid");
        assert!(
            matches!(f.request, ClientRequest::Subscribe { ref channel, .. } if channel == "café")
        );
    }
}
