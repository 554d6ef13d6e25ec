//! What nodes tell each other over NATS: batches of [`Event`]s, JSON-encoded.
//!
//! A batch is `{"from":"<node id>","ev":[…]}`. Payloads (`data`, metadata, presence entries)
//! are carried as raw JSON, byte for byte, exactly as the origin node validated them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A node's identity for one process lifetime (random at startup; a restarted node is new).
pub type NodeId = u64;

/// One cluster event. Field names are short (presence and messages are the hot path) and
/// mean the same everywhere: `t` tenant, `c` channel, `p` peer (the sender, for messages),
/// `e` presence entry, `m` sender metadata, `d` data, `w` quota window, `n` count.
#[allow(missing_docs)] // the fields, named above
#[derive(Debug, Serialize, Deserialize)]
pub enum Event<'a> {
    /// Liveness beacon on the shared subject; also how nodes discover each other.
    #[serde(rename = "hb")]
    Heartbeat,
    /// The sender stops (graceful shutdown): forget its peers now.
    #[serde(rename = "bye")]
    Bye,
    /// "Send me your full state" (the sender lost or never had it).
    #[serde(rename = "rs")]
    Resync,
    /// Start of the sender's full state: `Up`, `Join` and `Usage` events until `DumpEnd`.
    #[serde(rename = "ds")]
    DumpStart,
    /// End of the full state: it replaces everything known about the sender.
    #[serde(rename = "de")]
    DumpEnd,
    /// Peer `p` of tenant `t` connected to the sender; `e` is its presence entry; `j` the
    /// job it runs as an agent (its job token), `g` the agent its token asks for (dispatch).
    #[serde(rename = "up")]
    Up {
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(borrow)]
        p: Cow<'a, str>,
        #[serde(borrow)]
        e: &'a RawValue,
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        j: Option<Cow<'a, str>>,
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        g: Option<Cow<'a, str>>,
    },
    /// Peer `p` disconnected.
    #[serde(rename = "down")]
    Down {
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(borrow)]
        p: Cow<'a, str>,
    },
    /// Peer `p` subscribed to channel `c`.
    #[serde(rename = "join")]
    Join {
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(borrow)]
        c: Cow<'a, str>,
        #[serde(borrow)]
        p: Cow<'a, str>,
    },
    /// Peer `p` left channel `c`.
    #[serde(rename = "leave")]
    Leave {
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(borrow)]
        c: Cow<'a, str>,
        #[serde(borrow)]
        p: Cow<'a, str>,
    },
    /// Peer `p` published `d` on `c`; `m` is its peerMetadata (stamped per subscriber).
    #[serde(rename = "msg")]
    Msg {
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(borrow)]
        c: Cow<'a, str>,
        #[serde(borrow)]
        p: Cow<'a, str>,
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        m: Option<&'a RawValue>,
        #[serde(borrow)]
        d: &'a RawValue,
    },
    /// Peer `p` sent `d` to peer `to`, which lives on the receiving node.
    #[serde(rename = "dm")]
    Dm {
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(borrow)]
        to: Cow<'a, str>,
        #[serde(borrow)]
        p: Cow<'a, str>,
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        m: Option<&'a RawValue>,
        #[serde(borrow)]
        d: &'a RawValue,
    },
    /// The sender's message count for tenant `t` in quota window `w`.
    #[serde(rename = "use")]
    Usage {
        #[serde(borrow)]
        t: Cow<'a, str>,
        w: u64,
        n: u64,
    },
    /// Operator kick: close peer `p` (on the receiving node) with 4020.
    #[serde(rename = "kick")]
    Kick {
        #[serde(borrow)]
        p: Cow<'a, str>,
    },
    /// Dispatch: the sender's workers (the whole list, replacing the last one) and when the
    /// sender started (`s`, ms; the oldest node leads dispatch).
    #[serde(rename = "disp")]
    Dispatch { s: u64, w: Vec<WorkerAd> },
    /// Dispatch, leader → the worker's node: offer job `j` (room `t`/`c`/`a`, attempt `n`,
    /// job token `k`) to worker `w`.
    #[serde(rename = "offer")]
    Offer {
        w: u64,
        #[serde(borrow)]
        j: Cow<'a, str>,
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(borrow)]
        c: Cow<'a, str>,
        #[serde(borrow)]
        a: Cow<'a, str>,
        n: u32,
        #[serde(borrow)]
        k: Cow<'a, str>,
    },
    /// Dispatch, leader → the worker's node: worker `w` ends job `j`.
    #[serde(rename = "cancel")]
    Cancel {
        w: u64,
        #[serde(borrow)]
        j: Cow<'a, str>,
    },
    /// Dispatch, the worker's node → the leader: worker `w` answered about job `j`.
    #[serde(rename = "ans")]
    Answer {
        w: u64,
        #[serde(borrow)]
        j: Cow<'a, str>,
        r: JobAnswer,
    },
    /// Dispatch, to every node: an explicit request for agent `a` in `t`/`c` (admin API).
    #[serde(rename = "req")]
    Request {
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(borrow)]
        c: Cow<'a, str>,
        #[serde(borrow)]
        a: Cow<'a, str>,
    },
}

/// A worker connected to a node, as the node announces it ([`Event::Dispatch`]).
#[allow(missing_docs)] // short names: id, agents, capacity, load, draining, jobs
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerAd {
    pub id: u64,
    pub a: Vec<String>,
    pub c: u32,
    pub l: f32,
    pub d: bool,
    /// The jobs it holds: offered to it or accepted, not yet refused, ended or cancelled.
    pub j: Vec<JobAd>,
}

/// A job a worker holds: id, tenant, channel, agent.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAd {
    pub j: String,
    pub t: String,
    pub c: String,
    pub a: String,
}

/// What a worker said about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobAnswer {
    /// It took the job.
    Accept,
    /// It turned the job down (or is gone).
    Refuse,
    /// The job ended at the worker.
    Ended,
}

impl Event<'_> {
    /// The event as JSON (infallible for these types: strings and already-valid raw JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A batch as received.
#[derive(Debug, Deserialize)]
pub struct Batch<'a> {
    /// The sending node, as 16 hex digits.
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    /// Its events, in the order it produced them.
    #[serde(borrow)]
    pub ev: Vec<Event<'a>>,
}

/// Parse a node id from its 16-hex-digit form.
pub fn parse_node(s: &str) -> Option<NodeId> {
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// The 16-hex-digit form of a node id.
pub fn node_str(n: NodeId) -> String {
    format!("{n:016x}")
}

/// Build batch payloads from already-encoded events, each at most `max_bytes` (an event
/// larger than that gets a batch of its own).
pub fn batches<'e>(
    from: NodeId,
    events: impl IntoIterator<Item = &'e str>,
    max_bytes: usize,
) -> Vec<Vec<u8>> {
    let head = format!(r#"{{"from":"{}","ev":["#, node_str(from));
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for e in events {
        if !cur.is_empty() && cur.len() + e.len() + 2 > max_bytes {
            cur.extend_from_slice(b"]}");
            out.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur.extend_from_slice(head.as_bytes());
        } else {
            cur.push(b',');
        }
        cur.extend_from_slice(e.as_bytes());
    }
    if !cur.is_empty() {
        cur.extend_from_slice(b"]}");
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_raw_payloads() {
        let d = RawValue::from_string(r#"{"n":12345678901234567890,"s":"\u00e9"}"#.into())
            .expect("raw");
        let ev = [
            Event::Heartbeat.to_json(),
            Event::Msg {
                t: "acct".into(),
                c: "a.b c".into(),
                p: "p_1".into(),
                m: None,
                d: &d,
            }
            .to_json(),
        ];
        let payloads = batches(0xabc, ev.iter().map(String::as_str), 1 << 20);
        assert_eq!(payloads.len(), 1);
        let b: Batch<'_> = serde_json::from_slice(&payloads[0]).expect("parse");
        assert_eq!(parse_node(&b.from), Some(0xabc));
        assert!(matches!(b.ev[0], Event::Heartbeat));
        match &b.ev[1] {
            Event::Msg { c, d, m, .. } => {
                assert_eq!(c, "a.b c");
                assert_eq!(d.get(), r#"{"n":12345678901234567890,"s":"\u00e9"}"#);
                assert!(m.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batches_split_at_the_cap_and_keep_order() {
        let ev: Vec<String> = (0..10)
            .map(|i| {
                Event::Kick {
                    p: format!("p_{i}").into(),
                }
                .to_json()
            })
            .collect();
        let payloads = batches(1, ev.iter().map(String::as_str), 80);
        assert!(payloads.len() > 1);
        let mut seen = Vec::new();
        for p in &payloads {
            assert!(
                p.len() <= 80
                    || serde_json::from_slice::<Batch<'_>>(p)
                        .expect("parse")
                        .ev
                        .len()
                        == 1
            );
            for e in serde_json::from_slice::<Batch<'_>>(p).expect("parse").ev {
                match e {
                    Event::Kick { p } => seen.push(p.into_owned()),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(seen, (0..10).map(|i| format!("p_{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn node_ids_are_sixteen_hex_digits() {
        assert_eq!(node_str(1), "0000000000000001");
        assert_eq!(parse_node("00000000000000ff"), Some(255));
        assert_eq!(parse_node("ff"), None);
        assert_eq!(parse_node("zzzzzzzzzzzzzzzz"), None);
    }
}
