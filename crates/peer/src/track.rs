//! Media tracks of a room peer, as encoded frames: [`LocalTrack`] (what we send, fanned out to
//! every connection it is attached to) and [`RemoteTrack`] (what a remote peer sends us).
//! Frames are Opus packets for audio; PCM sources and decoders sit on top (issue #4).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Opus' RTP clock rate.
pub const OPUS_CLOCK_RATE: u32 = 48_000;
/// Samples (at 48 kHz) in a 20 ms frame, assumed when a packet's duration can't be read.
pub const DEFAULT_FRAME_SAMPLES: u32 = 960;
/// Frames buffered per remote track before the oldest unread ones are dropped (~5 s of audio).
pub const REMOTE_TRACK_BUFFER: usize = 256;
/// Frames buffered per connection for outbound tracks before new ones are dropped.
pub const OUTBOUND_BUFFER: usize = 256;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Audio (Opus).
    Audio,
    /// Video (received only; frames are passed through as depacketized by the stack).
    Video,
}

impl TrackKind {
    /// `"audio"` or `"video"`, as in SDP and `__meteredTrackMeta`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        }
    }
}

/// One encoded media frame (an Opus packet for audio).
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// The payload.
    pub data: Arc<[u8]>,
    /// Duration in samples at 48 kHz.
    pub samples: u32,
    /// Inbound: the frame's RTP timestamp (48 kHz for audio). Outbound: ignored, the
    /// connection numbers frames itself.
    pub rtp_time: u64,
}

impl EncodedFrame {
    /// An Opus packet; its duration is read from the TOC byte (RFC 6716 §3.1).
    pub fn opus(packet: impl Into<Arc<[u8]>>) -> Result<EncodedFrame, TrackError> {
        let data: Arc<[u8]> = packet.into();
        let samples = opus_packet_samples(&data).ok_or(TrackError::InvalidOpus)?;
        Ok(EncodedFrame {
            data,
            samples,
            rtp_time: 0,
        })
    }
}

/// Errors of track calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// Not a valid Opus packet (empty, bad frame count, over 120 ms).
    #[error("invalid Opus packet")]
    InvalidOpus,
}

/// Duration of an Opus packet in samples at 48 kHz, from its TOC byte and frame count
/// (RFC 6716 §3.1); `None` for a malformed packet.
pub fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let per_frame: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames: u32 = match toc & 0x3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let total = per_frame * frames;
    (frames > 0 && total <= 5760).then_some(total)
}

fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // Uniqueness within this process is all that matters here.
        static N: AtomicU64 = AtomicU64::new(1);
        b = N.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}-{hex}")
}

pub(crate) type FrameSink = mpsc::Sender<(Arc<str>, EncodedFrame)>;

struct LocalShared {
    id: Arc<str>,
    stream_id: String,
    /// The stream id was given ([`LocalTrack::audio_with`]), not made up.
    named_stream: bool,
    kind: TrackKind,
    metadata: Option<Map<String, Value>>,
    sinks: Mutex<HashMap<u64, FrameSink>>,
    /// Fraction lost in each connection's latest RTCP receiver report for this track.
    loss: Mutex<HashMap<u64, f32>>,
    dropped: AtomicU64,
}

/// A track we send. Attach it to the room ([`crate::room::RoomPeer::add_track`], every current
/// and future remote peer) or to one remote ([`crate::room::RemotePeer::add_track`]), then
/// [`push`](LocalTrack::push) encoded frames in real time. Cheap to clone.
#[derive(Clone)]
pub struct LocalTrack {
    inner: Arc<LocalShared>,
}

impl std::fmt::Debug for LocalTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTrack")
            .field("id", &self.id())
            .field("stream_id", &self.inner.stream_id)
            .field("kind", &self.inner.kind)
            .field("connections", &self.connections())
            .finish()
    }
}

impl LocalTrack {
    /// A new audio (Opus) track with random track and stream ids.
    pub fn audio() -> LocalTrack {
        LocalTrack::new(
            TrackKind::Audio,
            random_id("track"),
            random_id("stream"),
            None,
            false,
        )
    }

    /// An audio track with the given ids (they appear in SDP `a=msid`) and optional metadata
    /// (sent to remotes as `__meteredTrackMeta`).
    pub fn audio_with(
        track_id: impl Into<String>,
        stream_id: impl Into<String>,
        metadata: Option<Map<String, Value>>,
    ) -> LocalTrack {
        LocalTrack::new(
            TrackKind::Audio,
            track_id.into(),
            stream_id.into(),
            metadata,
            true,
        )
    }

    fn new(
        kind: TrackKind,
        id: String,
        stream_id: String,
        metadata: Option<Map<String, Value>>,
        named_stream: bool,
    ) -> LocalTrack {
        LocalTrack {
            inner: Arc::new(LocalShared {
                id: id.into(),
                stream_id,
                named_stream,
                kind,
                metadata,
                sinks: Mutex::new(HashMap::new()),
                loss: Mutex::new(HashMap::new()),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Whether the stream id was given ([`LocalTrack::audio_with`]) rather than made up. A
    /// track of a named stream is sent on an m-line announcing that stream (so receivers
    /// group it under that id), never on one a remote's offer created with another stream.
    pub fn has_named_stream(&self) -> bool {
        self.inner.named_stream
    }

    /// The track id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The stream (MediaStream) id.
    pub fn stream_id(&self) -> &str {
        &self.inner.stream_id
    }

    /// Audio or video.
    pub fn kind(&self) -> TrackKind {
        self.inner.kind
    }

    /// The metadata announced with the track.
    pub fn metadata(&self) -> Option<&Map<String, Value>> {
        self.inner.metadata.as_ref()
    }

    /// Connections the track is attached to.
    pub fn connections(&self) -> usize {
        self.sinks().len()
    }

    /// Frames dropped because a connection's outbound buffer was full.
    pub fn dropped_frames(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Send one frame to every attached connection. Never blocks: a connection that is
    /// [`OUTBOUND_BUFFER`] frames behind drops the frame (counted in
    /// [`dropped_frames`](LocalTrack::dropped_frames)). Pace calls in real time (one 20 ms
    /// frame every 20 ms).
    pub fn push(&self, frame: EncodedFrame) {
        let sinks = self.sinks();
        for sink in sinks.values() {
            if sink
                .try_send((self.inner.id.clone(), frame.clone()))
                .is_err()
            {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The highest fraction of packets lost (0.0–1.0) that any far end currently receiving
    /// this track reported in its latest RTCP receiver report; `None` before the first report.
    /// One encoding feeds every connection, so an encoder protects against the worst of them
    /// (the `AudioSource` of `parlor-media` tunes its in-band FEC by it).
    pub fn reported_loss(&self) -> Option<f32> {
        let loss = self.inner.loss.lock().unwrap_or_else(|e| e.into_inner());
        loss.values().copied().reduce(f32::max)
    }

    pub(crate) fn report_loss(&self, conn: u64, fraction: f32) {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.inner
            .loss
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conn, fraction);
    }

    fn sinks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, FrameSink>> {
        self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn attach(&self, conn: u64, sink: FrameSink) {
        self.sinks().insert(conn, sink);
    }

    pub(crate) fn detach(&self, conn: u64) {
        self.sinks().remove(&conn);
        self.inner
            .loss
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&conn);
    }

    pub(crate) fn same(&self, other: &LocalTrack) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// Every remote peer's track-metadata cache, shared by the room and its tracks.
pub(crate) type MetaCaches = Arc<Mutex<HashMap<String, crate::rtc::track_cache::TrackMetaCache>>>;

struct RemoteShared {
    peer_id: String,
    id: String,
    stream_id: Option<String>,
    kind: TrackKind,
    meta: Option<MetaCaches>,
    rx: tokio::sync::Mutex<mpsc::Receiver<EncodedFrame>>,
    dropped: Arc<AtomicU64>,
}

/// A track a remote peer sends us, as a stream of encoded frames. The stream ends when the
/// track, its connection or the peer goes away. Cheap to clone; clones share one stream.
///
/// Audio frames come as the network delivers them: a reordered packet comes out of order and
/// a duplicate twice (each with its RTP time); `parlor_media::AudioFrames` puts them back in
/// order through its jitter buffer. Video frames are reassembled and ordered by the stack.
#[derive(Clone)]
pub struct RemoteTrack {
    inner: Arc<RemoteShared>,
}

impl std::fmt::Debug for RemoteTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTrack")
            .field("peer_id", &self.inner.peer_id)
            .field("id", &self.inner.id)
            .field("stream_id", &self.inner.stream_id)
            .field("kind", &self.inner.kind)
            .finish_non_exhaustive()
    }
}

pub(crate) struct RemoteTrackSink {
    pub(crate) tx: mpsc::Sender<EncodedFrame>,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl RemoteTrackSink {
    /// Deliver a frame; when the reader is [`REMOTE_TRACK_BUFFER`] frames behind, it is dropped.
    pub(crate) fn deliver(&self, frame: EncodedFrame) {
        if self.tx.try_send(frame).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl RemoteTrack {
    pub(crate) fn new(
        peer_id: String,
        id: String,
        stream_id: Option<String>,
        kind: TrackKind,
        meta: Option<MetaCaches>,
    ) -> (RemoteTrack, RemoteTrackSink) {
        let (tx, rx) = mpsc::channel(REMOTE_TRACK_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let track = RemoteTrack {
            inner: Arc::new(RemoteShared {
                peer_id,
                id,
                stream_id,
                kind,
                meta,
                rx: tokio::sync::Mutex::new(rx),
                dropped: dropped.clone(),
            }),
        };
        (track, RemoteTrackSink { tx, dropped })
    }

    /// The next frame; `None` once the track has ended.
    pub async fn recv(&self) -> Option<EncodedFrame> {
        self.inner.rx.lock().await.recv().await
    }

    /// The sending peer.
    pub fn peer_id(&self) -> &str {
        &self.inner.peer_id
    }

    /// The sender's track id (from SDP `a=msid`).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The sender's stream id, when it grouped the track in a stream.
    pub fn stream_id(&self) -> Option<&str> {
        self.inner.stream_id.as_deref()
    }

    /// Audio or video.
    pub fn kind(&self) -> TrackKind {
        self.inner.kind
    }

    /// The metadata the sender currently announces for the track (`__meteredTrackMeta`,
    /// looked up in the spec §2.3 order at each call, so a late or updated announcement shows).
    pub fn metadata(&self) -> Option<Map<String, Value>> {
        let caches = self.inner.meta.as_ref()?;
        let caches = caches.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.inner.id.as_str();
        caches
            .get(&self.inner.peer_id)?
            .lookup(
                Some(id),
                id,
                self.inner.stream_id.as_deref(),
                self.inner.kind.as_str(),
                &Default::default(),
            )
            .cloned()
    }

    /// Frames dropped because the reader fell behind.
    pub fn dropped_frames(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_durations() {
        // config 1 (SILK NB 20 ms), code 0: one frame.
        assert_eq!(opus_packet_samples(&[1 << 3]), Some(960));
        // config 31 (CELT FB 20 ms) code 0 — the usual WebRTC packet.
        assert_eq!(opus_packet_samples(&[(31 << 3), 0xff]), Some(960));
        // config 16 (CELT 2.5 ms) code 1: two frames.
        assert_eq!(opus_packet_samples(&[(16 << 3) | 1]), Some(240));
        // code 3 with 3 frames of 20 ms.
        assert_eq!(opus_packet_samples(&[(31 << 3) | 3, 3]), Some(2880));
        // code 3 with 0 frames, or over 120 ms, or truncated: malformed.
        assert_eq!(opus_packet_samples(&[(31 << 3) | 3, 0]), None);
        assert_eq!(opus_packet_samples(&[(3 << 3) | 3, 3]), None);
        assert_eq!(opus_packet_samples(&[(31 << 3) | 3]), None);
        assert_eq!(opus_packet_samples(&[]), None);
    }

    #[tokio::test]
    async fn local_track_fans_out_and_counts_drops() {
        let t = LocalTrack::audio();
        let (tx1, mut rx1) = mpsc::channel(1);
        let (tx2, mut rx2) = mpsc::channel(4);
        t.attach(1, tx1);
        t.attach(2, tx2);
        for _ in 0..2 {
            t.push(EncodedFrame::opus(vec![31 << 3, 0]).expect("opus"));
        }
        assert_eq!(t.dropped_frames(), 1);
        assert!(rx1.recv().await.is_some());
        assert!(rx2.recv().await.is_some());
        assert!(rx2.recv().await.is_some());
        t.detach(1);
        assert_eq!(t.connections(), 1);
    }

    #[tokio::test]
    async fn remote_track_ends_when_sink_drops() {
        let (t, sink) = RemoteTrack::new("p".into(), "t".into(), None, TrackKind::Audio, None);
        sink.deliver(EncodedFrame::opus(vec![31 << 3]).expect("opus"));
        drop(sink);
        assert!(t.recv().await.is_some());
        assert!(t.recv().await.is_none());
    }
}
