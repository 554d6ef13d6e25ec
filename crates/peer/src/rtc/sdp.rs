//! Small, bounded SDP readers (spec §2.5, §2.8): ICE ufrag, DTLS fingerprint, and the
//! msid → track mapping per media section. Input comes from the network: every read is capped.
//! One writer: [`answer_video_receive_only`] adjusts our own answers (we send no video).

use std::collections::HashMap;

/// Most msid entries read from one SDP.
pub const MAX_MSID_ENTRIES: usize = 256;
/// Longest accepted stream/track id or ufrag.
pub const MAX_ID_LEN: usize = 256;

fn attribute<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(name))
        .map(str::trim)
}

/// The first `a=ice-ufrag:` value (session or media level).
pub fn ice_ufrag(sdp: &str) -> Option<String> {
    attribute(sdp, "a=ice-ufrag:")
        .filter(|u| !u.is_empty() && u.len() <= MAX_ID_LEN)
        .map(str::to_owned)
}

/// The first `a=fingerprint:` value (`sha-256 AB:CD:…`).
pub fn fingerprint(sdp: &str) -> Option<String> {
    attribute(sdp, "a=fingerprint:")
        .filter(|f| !f.is_empty() && f.len() <= 512)
        .map(str::to_owned)
}

/// The first `a=mid:` value.
pub fn first_mid(sdp: &str) -> Option<String> {
    attribute(sdp, "a=mid:")
        .filter(|m| !m.is_empty() && m.len() <= MAX_ID_LEN)
        .map(str::to_owned)
}

/// The mids of the `m=audio` sections, in order (at most [`MAX_MSID_ENTRIES`]).
pub fn audio_mids(sdp: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_audio = false;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio ");
        } else if let Some(mid) = line.strip_prefix("a=mid:")
            && in_audio
            && !mid.is_empty()
            && mid.len() <= MAX_ID_LEN
            && out.len() < MAX_MSID_ENTRIES
        {
            out.push(mid.trim().to_owned());
        }
    }
    out
}

/// `(stream id, track id)` announced for a media section; stream `-` means none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msid {
    /// Stream id, `None` for `-`.
    pub stream_id: Option<String>,
    /// Track id.
    pub track_id: String,
}

/// msid by `mid`, from `a=msid:` or the ssrc-level `a=ssrc:N msid:` form, read before the
/// description is applied (spec §2.8). At most [`MAX_MSID_ENTRIES`] entries.
pub fn msids_by_mid(sdp: &str) -> HashMap<String, Msid> {
    let mut out = HashMap::new();
    let mut mid: Option<String> = None;
    let mut pending: Option<Msid> = None;
    let flush =
        |mid: &Option<String>, pending: &mut Option<Msid>, out: &mut HashMap<String, Msid>| {
            if let (Some(m), Some(p)) = (mid, pending.take())
                && out.len() < MAX_MSID_ENTRIES
            {
                out.entry(m.clone()).or_insert(p);
            }
        };
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("m=") {
            flush(&mid, &mut pending, &mut out);
            mid = None;
            continue;
        }
        if let Some(m) = line.strip_prefix("a=mid:") {
            if m.len() <= MAX_ID_LEN {
                mid = Some(m.trim().to_owned());
            }
            continue;
        }
        let value = line.strip_prefix("a=msid:").or_else(|| {
            line.strip_prefix("a=ssrc:")
                .and_then(|r| r.split_once(" msid:").map(|(_, v)| v))
        });
        if let (Some(v), None) = (value, &pending) {
            let mut parts = v.split_whitespace();
            if let (Some(stream), Some(track)) = (parts.next(), parts.next())
                && stream.len() <= MAX_ID_LEN
                && track.len() <= MAX_ID_LEN
            {
                pending = Some(Msid {
                    stream_id: (stream != "-").then(|| stream.to_owned()),
                    track_id: track.to_owned(),
                });
            }
        }
    }
    flush(&mid, &mut pending, &mut out);
    out
}

/// Our own description with the msid of some media sections replaced (`mid` → the stream and
/// track we send there): str0m announces, on an m-line a remote's offer created, the remote's
/// msid, so a track of a named stream sent on it would reach receivers under another stream
/// id. Both the `a=msid:` and the ssrc-level `a=ssrc:N msid:` forms are rewritten. Applied to
/// our own descriptions, never to remote input.
pub fn set_msids(sdp: &str, overrides: &HashMap<String, Msid>) -> String {
    if overrides.is_empty() {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len() + 64);
    // One media section at a time: its mid may come after its msid lines.
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, out: &mut String| {
        let msid = section
            .iter()
            .find_map(|l| l.trim_end_matches(['\r', '\n']).strip_prefix("a=mid:"))
            .and_then(|mid| overrides.get(mid.trim()));
        for line in section.drain(..) {
            let body = line.trim_end_matches(['\r', '\n']);
            let eol = &line[body.len()..];
            let Some(m) = msid else {
                out.push_str(line);
                continue;
            };
            let stream = m.stream_id.as_deref().unwrap_or("-");
            if body.starts_with("a=msid:") {
                out.push_str(&format!("a=msid:{stream} {}{eol}", m.track_id));
            } else if let Some((ssrc, _)) = body
                .strip_prefix("a=ssrc:")
                .and_then(|r| r.split_once(" msid:"))
            {
                out.push_str(&format!("a=ssrc:{ssrc} msid:{stream} {}{eol}", m.track_id));
            } else {
                out.push_str(line);
            }
        }
    };
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("m=") {
            flush(&mut section, &mut out);
        }
        section.push(line);
    }
    flush(&mut section, &mut out);
    out
}

/// The SDK sends audio only. In an answer of ours, every `m=video` section that says we send
/// (`a=sendrecv`, `a=sendonly`) is made receive-only (`a=recvonly`, `a=inactive`), so a
/// remote that offered its camera sees no video track from us that would never carry frames
/// (aiortc answers the same way). Applied to our own answer, never to remote input. Returns
/// the rewritten answer and, for each changed section, its mid and whether we still receive.
pub fn answer_video_receive_only(answer: &str) -> (String, Vec<(String, bool)>) {
    /// The `m=video` section being read: its mid, and whether we still receive once its
    /// direction line was rewritten (`None`: not rewritten).
    #[derive(Default)]
    struct Video {
        mid: Option<String>,
        receiving: Option<bool>,
    }
    let mut out = String::with_capacity(answer.len());
    let mut changed = Vec::new();
    let mut video: Option<Video> = None;
    let mut close = |video: Option<Video>| {
        if let Some(Video {
            mid: Some(mid),
            receiving: Some(r),
        }) = video
        {
            changed.push((mid, r));
        }
    };
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if let Some(m) = body.strip_prefix("m=") {
            close(video.take());
            video = m.starts_with("video ").then(Video::default);
        } else if let Some(v) = video.as_mut() {
            if let Some(mid) = body.strip_prefix("a=mid:") {
                v.mid = Some(mid.trim().to_owned());
            }
            let rewrite = match body {
                "a=sendrecv" => Some(("a=recvonly", true)),
                "a=sendonly" => Some(("a=inactive", false)),
                _ => None,
            };
            if let Some((direction, receiving)) = rewrite {
                out.push_str(direction);
                out.push_str(&line[body.len()..]);
                v.receiving = Some(receiving);
                continue;
            }
        }
        out.push_str(line);
    }
    close(video);
    (out, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_mids_and_first_mid() {
        let sdp = "v=0\r\nm=audio 9 UDP 111\r\na=mid:0\r\nm=application 9 x\r\na=mid:1\r\nm=audio 9 UDP 111\r\na=mid:a2\r\n";
        assert_eq!(audio_mids(sdp), vec!["0".to_string(), "a2".to_string()]);
        assert_eq!(first_mid(sdp), Some("0".into()));
    }

    const CHROME: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\na=group:BUNDLE 0 1\r\na=msid-semantic: WMS s1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:AbCd\r\na=ice-pwd:xyz\r\na=fingerprint:sha-256 AA:BB\r\na=mid:0\r\na=msid:s1 t-audio\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ssrc:42 msid:- t-video\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";

    #[test]
    fn reads_ufrag_fingerprint_and_msids() {
        assert_eq!(ice_ufrag(CHROME).as_deref(), Some("AbCd"));
        assert_eq!(fingerprint(CHROME).as_deref(), Some("sha-256 AA:BB"));
        let m = msids_by_mid(CHROME);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m["0"],
            Msid {
                stream_id: Some("s1".into()),
                track_id: "t-audio".into()
            }
        );
        assert_eq!(m["1"].stream_id, None);
        assert!(!m.contains_key("2"));
    }

    #[test]
    fn msids_of_chosen_sections_are_replaced_in_both_forms() {
        let sdp = "v=0\r\nm=audio 9 UDP 111\r\na=msid:remote-s remote-t\r\na=mid:0\r\na=ssrc:7 msid:remote-s remote-t\r\n\
m=audio 9 UDP 111\r\na=mid:1\r\na=msid:s1 t1\r\n";
        let mut overrides = HashMap::new();
        overrides.insert(
            "0".to_owned(),
            Msid {
                stream_id: Some("agent-voice".into()),
                track_id: "utterance-1".into(),
            },
        );
        let out = set_msids(sdp, &overrides);
        let m = msids_by_mid(&out);
        assert_eq!(m["0"].stream_id.as_deref(), Some("agent-voice"));
        assert_eq!(m["0"].track_id, "utterance-1");
        assert!(out.contains("a=ssrc:7 msid:agent-voice utterance-1\r\n"));
        assert_eq!(m["1"].stream_id.as_deref(), Some("s1"));
        assert!(!out.contains("remote-s"));
        assert_eq!(set_msids(sdp, &HashMap::new()), sdp);
    }

    #[test]
    fn bounded_against_hostile_input() {
        assert_eq!(ice_ufrag(&format!("a=ice-ufrag:{}", "u".repeat(300))), None);
        let mut big = String::new();
        for i in 0..1000 {
            big.push_str(&format!(
                "m=audio 9 RTP 0\r\na=mid:{i}\r\na=msid:s t{i}\r\n"
            ));
        }
        assert_eq!(msids_by_mid(&big).len(), MAX_MSID_ENTRIES);
        assert!(msids_by_mid("garbage\nwithout\nstructure").is_empty());
    }

    #[test]
    fn answers_never_offer_to_send_video() {
        let answer = "v=0\r\ns=-\r\na=group:BUNDLE 0 1 2 3\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=recvonly\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\na=sendrecv\r\n";
        let (out, changed) = answer_video_receive_only(answer);
        assert_eq!(
            changed,
            vec![("1".to_owned(), true), ("2".to_owned(), false)]
        );
        let expected = answer
            .replacen("a=sendrecv\r\na=mid:1", "a=recvonly\r\na=mid:1", 1)
            .replacen("a=mid:2\r\na=sendonly", "a=mid:2\r\na=inactive", 1);
        assert_eq!(out, expected);
        // Audio, data and already receive-only video are untouched; so is an answer
        // without video, byte for byte (line endings included).
        assert!(out.contains("a=mid:0\r\na=sendrecv\r\n"));
        assert!(out.contains("a=mid:4\r\na=sendrecv\r\n"));
        let audio_only = "v=0\nm=audio 9 RTP 111\na=mid:0\na=sendrecv";
        assert_eq!(
            answer_video_receive_only(audio_only),
            (audio_only.to_owned(), vec![])
        );
    }
}
