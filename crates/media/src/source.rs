//! `AudioSource`: PCM in at any rate, a paced Opus track out. `push` resamples to the encoder's
//! rate ([`codec_rate_for`]: the smallest Opus rate keeping the input's bandwidth) and
//! buffers (suspending at the cap); a pacer task encodes one 20 ms frame every 20 ms onto the
//! source's [`LocalTrack`], sending silence on underrun so the track stays live (after
//! waiting up to `LATE_GRACE`, 10 ms, for a producer a few ms late mid-stream), and re-anchoring
//! its clock after a stall instead of bursting.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use parlor_peer::{EncodedFrame, LocalTrack};
use tokio::sync::Notify;

use crate::MediaError;
use crate::codec::{Encoder, OpusSettings, codec_rate_for, fec_loss_percent};
use crate::resample::StreamResampler;

/// Channel layout of pushed PCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One channel.
    Mono,
    /// Two channels, interleaved L R.
    Stereo,
}

impl Layout {
    fn channels(self) -> usize {
        match self {
            Layout::Mono => 1,
            Layout::Stereo => 2,
        }
    }

    /// `"mono"` or `"stereo"` (anything else is an error).
    pub fn parse(s: &str) -> Result<Layout, MediaError> {
        match s {
            "mono" => Ok(Layout::Mono),
            "stereo" => Ok(Layout::Stereo),
            other => Err(MediaError::UnknownLayout(other.to_owned())),
        }
    }
}

/// Default buffering cap of a source.
pub const DEFAULT_MAX_BUFFERED: Duration = Duration::from_secs(5);
/// Input is converted in pieces of this many input frames, so one large push suspends at the
/// cap instead of buffering all of it.
const PUSH_PIECE_MS: u32 = 20;

/// What a source sent lately: when each 20 ms frame left the pacer, its level (RMS, s16 units;
/// 0 for silence) and the frame itself (mono). An agent compares it with what its microphones
/// hear to tell its own voice coming back from a human's (`parlor_agent::echo`) and cancels it
/// (`parlor_agent::aec`; only a record made [`with_pcm`](OutputLevels::with_pcm) keeps the
/// samples). Cheap to clone (one shared ring); several sources (one per utterance) may share
/// one. Bounded: the last [`OutputLevels::KEEP`] frames (~380 KB of samples at 48 kHz); the
/// oldest is dropped.
#[derive(Debug, Clone, Default)]
pub struct OutputLevels {
    ring: Arc<Mutex<VecDeque<SentFrame>>>,
    pcm: bool,
}

/// One frame a source sent: see [`OutputLevels`].
#[derive(Debug, Clone)]
pub struct SentFrame {
    /// When it left the pacer.
    pub at: tokio::time::Instant,
    /// Its level: RMS in s16 units.
    pub level: f32,
    /// Its sample rate.
    pub rate: u32,
    /// Its samples, mixed to mono (empty unless the record keeps them).
    pub pcm: Arc<[i16]>,
}

impl OutputLevels {
    /// Frames kept (4 s).
    pub const KEEP: usize = 200;

    /// An empty record of levels.
    pub fn new() -> OutputLevels {
        OutputLevels::default()
    }

    /// An empty record of levels and samples (a mono copy of every frame sent).
    pub fn with_pcm() -> OutputLevels {
        OutputLevels {
            pcm: true,
            ..OutputLevels::default()
        }
    }

    fn record(&self, frame: SentFrame) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.push_back(frame);
        while ring.len() > Self::KEEP {
            ring.pop_front();
        }
    }

    /// The levels of the frames sent after `since`, oldest first.
    pub fn since(&self, since: tokio::time::Instant) -> Vec<(tokio::time::Instant, f32)> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .filter(|f| f.at > since)
            .map(|f| (f.at, f.level))
            .collect()
    }

    /// The frames sent after `since`, oldest first.
    pub fn frames_since(&self, since: tokio::time::Instant) -> Vec<SentFrame> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().filter(|f| f.at > since).cloned().collect()
    }
}

/// Options of an [`AudioSource`].
#[derive(Debug, Clone)]
pub struct AudioSourceOptions {
    /// Sample rate of pushed PCM.
    pub input_rate: u32,
    /// Layout of pushed PCM.
    pub layout: Layout,
    /// `push` suspends while this much audio is buffered.
    pub max_buffered: Duration,
    /// Encoder settings.
    pub opus: OpusSettings,
    /// Where to record the level of each frame sent, if anywhere.
    pub levels: Option<OutputLevels>,
}

impl AudioSourceOptions {
    /// Options for PCM at `input_rate` in `layout`, with the defaults otherwise.
    pub fn new(input_rate: u32, layout: Layout) -> AudioSourceOptions {
        AudioSourceOptions {
            input_rate,
            layout,
            max_buffered: DEFAULT_MAX_BUFFERED,
            opus: OpusSettings::default(),
            levels: None,
        }
    }

    /// Record the level of each frame sent into `levels`.
    pub fn levels(mut self, levels: OutputLevels) -> Self {
        self.levels = Some(levels);
        self
    }

    /// Set the buffering cap.
    pub fn max_buffered(mut self, d: Duration) -> Self {
        self.max_buffered = d;
        self
    }

    /// Set the encoder settings.
    pub fn opus(mut self, s: OpusSettings) -> Self {
        self.opus = s;
        self
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Live,
    /// `end()` called: drain, then stop.
    Ending,
    /// Drained or stopped.
    Done,
}

struct State {
    /// Interleaved samples at the encoder's rate, in its channel count.
    buf: VecDeque<i16>,
    /// A trailing partial sample frame of the last push.
    carry: Vec<u8>,
    resampler: StreamResampler,
    phase: Phase,
    /// Paused: the pacer sends silence and keeps the buffer.
    paused: bool,
    started: bool,
    underruns: u64,
    frames: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Space in the buffer, or the source finished.
    space: Notify,
    /// Audio pushed, or the source ending or finished (for a pacer waiting out
    /// [`LATE_GRACE`]).
    pushed: Notify,
    /// The source finished (drained after `end`, or stopped).
    done: Notify,
    input_channels: usize,
    out_channels: usize,
    input_rate: u32,
    /// The encoder's rate, which the buffer holds.
    rate: u32,
    cap: usize,
    /// In-band FEC is on: the pacer follows the far ends' loss reports.
    fec: bool,
    /// The loss (percent) the encoder currently expects.
    expected_loss: AtomicU8,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A paced audio source feeding one [`LocalTrack`]. Add [`track`](AudioSource::track) to a
/// room (or one remote peer), then `push` PCM as it is produced (e.g. by text-to-speech).
/// One source per utterance makes barge-in simple: [`stop`](AudioSource::stop) silences it at
/// once. Dropping the source stops it.
pub struct AudioSource {
    shared: Arc<Shared>,
    track: LocalTrack,
}

impl std::fmt::Debug for AudioSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioSource")
            .field("track", &self.track.id())
            .field("buffered_seconds", &self.buffered_seconds())
            .finish()
    }
}

impl AudioSource {
    /// A source with a fresh audio track. Needs a tokio runtime (the pacer is a task).
    pub fn new(options: AudioSourceOptions) -> Result<AudioSource, MediaError> {
        AudioSource::with_track(options, LocalTrack::audio())
    }

    /// A source feeding `track`.
    pub fn with_track(
        options: AudioSourceOptions,
        track: LocalTrack,
    ) -> Result<AudioSource, MediaError> {
        // The encoder runs at the smallest Opus rate that keeps the input's bandwidth.
        let rate = codec_rate_for(options.input_rate);
        let input_channels = options.layout.channels();
        let resampler = StreamResampler::new(options.input_rate, rate, input_channels)?;
        let mut encoder = Encoder::with_rate(options.opus, rate)?;
        // A track that already carried an utterance knows the far ends' loss: the next
        // utterance starts protected instead of waiting for the pacer's first look.
        let expected_loss = if options.opus.fec {
            fec_loss_percent(track.reported_loss(), 0)
        } else {
            0
        };
        if expected_loss > 0 {
            encoder.set_expected_loss(expected_loss)?;
        }
        let out_channels = encoder.channels();
        let cap_frames = (options.max_buffered.as_secs_f64() * f64::from(rate)) as usize;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: VecDeque::new(),
                carry: Vec::new(),
                resampler,
                phase: Phase::Live,
                paused: false,
                started: false,
                underruns: 0,
                frames: 0,
            }),
            space: Notify::new(),
            pushed: Notify::new(),
            done: Notify::new(),
            input_channels,
            out_channels,
            input_rate: options.input_rate,
            rate,
            cap: cap_frames.max(encoder.frame_samples()) * out_channels,
            fec: options.opus.fec,
            expected_loss: AtomicU8::new(expected_loss),
        });
        tokio::spawn(pace(shared.clone(), encoder, track.clone(), options.levels));
        Ok(AudioSource { shared, track })
    }

    /// The track this source feeds.
    pub fn track(&self) -> &LocalTrack {
        &self.track
    }

    /// Seconds of audio buffered and not yet sent.
    pub fn buffered_seconds(&self) -> f64 {
        let st = self.shared.lock();
        st.buf.len() as f64 / self.shared.out_channels as f64 / f64::from(self.shared.rate)
    }

    /// 20 ms ticks that found the buffer short (silence or a partial frame was sent) since
    /// the first push.
    pub fn underruns(&self) -> u64 {
        self.shared.lock().underruns
    }

    /// Frames sent so far.
    pub fn frames_sent(&self) -> u64 {
        self.shared.lock().frames
    }

    /// The packet loss (percent) the encoder's in-band FEC currently protects against: the
    /// worst loss the far ends report in RTCP ([`LocalTrack::reported_loss`]), in steps of 0,
    /// 1, 5, 10 and 20 ([`fec_loss_percent`]). 0 on a clean link, where FEC costs nothing;
    /// always 0 with FEC off. A source made [`with_track`](AudioSource::with_track) on a
    /// track that already has a report (the next utterance) starts at that level.
    pub fn expected_loss_percent(&self) -> u8 {
        self.shared.expected_loss.load(Ordering::Relaxed)
    }

    /// Push s16 little-endian interleaved PCM in the source's input format. Any length: a
    /// trailing partial sample frame is carried into the next push. Suspends while the
    /// buffer is at its cap, also inside one large push. After `end`/`stop` it is a no-op.
    pub async fn push(&self, pcm: &[u8]) -> Result<(), MediaError> {
        let frame_bytes = 2 * self.shared.input_channels;
        let piece = (self.shared.input_rate * PUSH_PIECE_MS / 1000) as usize * frame_bytes;
        let mut bytes: Vec<u8> = {
            let mut st = self.shared.lock();
            if st.phase != Phase::Live {
                return Ok(());
            }
            st.started = true;
            let mut b = std::mem::take(&mut st.carry);
            b.extend_from_slice(pcm);
            b
        };
        let whole = bytes.len() / frame_bytes * frame_bytes;
        let carry = bytes.split_off(whole);
        let mut resampled = Vec::new();
        for chunk in bytes.chunks(piece.max(frame_bytes)) {
            loop {
                let notified = self.shared.space.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut st = self.shared.lock();
                    if st.phase != Phase::Live {
                        return Ok(());
                    }
                    if st.buf.len() < self.shared.cap {
                        self.absorb(&mut st, chunk, &mut resampled)?;
                        break;
                    }
                }
                notified.await;
            }
        }
        let mut st = self.shared.lock();
        if st.phase == Phase::Live {
            st.carry = carry;
        }
        Ok(())
    }

    /// [`push`](AudioSource::push) without waiting: when all of `pcm` fits under the
    /// buffering cap now it is taken (`Ok(true)`, exactly as `push` would take it);
    /// otherwise nothing is taken (`Ok(false)`: call `push`, which waits for room). For
    /// callers that would rather not suspend (a Python binding: no awaitable per push).
    pub fn try_push(&self, pcm: &[u8]) -> Result<bool, MediaError> {
        let frame_bytes = 2 * self.shared.input_channels;
        let piece = (self.shared.input_rate * PUSH_PIECE_MS / 1000) as usize * frame_bytes;
        let mut st = self.shared.lock();
        if st.phase != Phase::Live {
            return Ok(true);
        }
        // At most this many frames come out of the resampler for this input (its rate
        // ratio, rounded up, plus what it may hold back and release).
        let in_frames = ((st.carry.len() + pcm.len()) / frame_bytes) as u64;
        let out_frames = (in_frames * u64::from(self.shared.rate))
            .div_ceil(u64::from(self.shared.input_rate)) as usize
            + 256;
        if st.buf.len() + out_frames * self.shared.out_channels > self.shared.cap {
            return Ok(false);
        }
        st.started = true;
        let mut bytes = std::mem::take(&mut st.carry);
        bytes.extend_from_slice(pcm);
        let whole = bytes.len() / frame_bytes * frame_bytes;
        let carry = bytes.split_off(whole);
        let mut resampled = Vec::new();
        for chunk in bytes.chunks(piece.max(frame_bytes)) {
            self.absorb(&mut st, chunk, &mut resampled)?;
        }
        st.carry = carry;
        Ok(true)
    }

    /// Resample one piece of input (whole s16 sample frames) into the send buffer.
    fn absorb(
        &self,
        st: &mut State,
        chunk: &[u8],
        resampled: &mut Vec<i16>,
    ) -> Result<(), MediaError> {
        let samples: Vec<i16> = chunk
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        resampled.clear();
        st.resampler.process(&samples, resampled)?;
        let out = convert_channels(
            resampled,
            self.shared.input_channels,
            self.shared.out_channels,
        );
        st.buf.extend(out);
        self.shared.pushed.notify_one();
        Ok(())
    }

    /// Finish the utterance: what is buffered is sent, then the source stops (the track goes
    /// quiet). Idempotent; resolves once drained.
    pub async fn end(&self) {
        loop {
            let notified = self.shared.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.shared.lock();
                match st.phase {
                    Phase::Done => return,
                    Phase::Live => {
                        st.phase = Phase::Ending;
                        let mut tail = Vec::new();
                        let _ = st.resampler.flush(&mut tail);
                        let out = convert_channels(
                            &tail,
                            self.shared.input_channels,
                            self.shared.out_channels,
                        );
                        st.buf.extend(out);
                    }
                    Phase::Ending => {}
                }
            }
            self.shared.space.notify_waiters();
            self.shared.pushed.notify_one();
            notified.await;
        }
    }

    /// Stop at once (barge-in): the buffer is dropped and no further frame is sent.
    pub fn stop(&self) {
        finish(&self.shared, true);
    }

    /// Hold the voice at once, keeping what is buffered: the pacer sends silence (the
    /// stream's timing goes on) until [`resume`](AudioSource::resume). `push` still fills the
    /// buffer up to its cap, then waits. For a possible interruption that may turn out not
    /// to be one (a cough, "uh-huh").
    pub fn pause(&self) {
        self.shared.lock().paused = true;
    }

    /// Go on from where [`pause`](AudioSource::pause) held the voice.
    pub fn resume(&self) {
        self.shared.lock().paused = false;
    }

    /// Whether the voice is paused.
    pub fn is_paused(&self) -> bool {
        self.shared.lock().paused
    }
}

impl Drop for AudioSource {
    fn drop(&mut self) {
        finish(&self.shared, true);
    }
}

fn finish(shared: &Shared, clear: bool) {
    {
        let mut st = shared.lock();
        st.phase = Phase::Done;
        if clear {
            st.buf.clear();
        }
    }
    shared.space.notify_waiters();
    shared.pushed.notify_one();
    shared.done.notify_waiters();
}

fn convert_channels(input: &[i16], from: usize, to: usize) -> Vec<i16> {
    match (from, to) {
        (2, 1) => input
            .chunks_exact(2)
            .map(|f| ((i32::from(f[0]) + i32::from(f[1])) / 2) as i16)
            .collect(),
        (1, 2) => input.iter().flat_map(|s| [*s, *s]).collect(),
        _ => input.to_vec(),
    }
}

/// Frame period of every source.
const FRAME_PERIOD: Duration = Duration::from_millis(20);

/// The next tick of the process-wide 20 ms frame clock strictly after `now`.
///
/// Every source in the process ticks on the same grid, so N sources cost one timer
/// wake-up per 20 ms instead of N at scattered phases (and their packets leave, and
/// wake the far ends, together). After a stall the next frame is simply the next grid
/// point: the clock re-anchors instead of bursting to catch up.
fn next_tick(now: tokio::time::Instant) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    let Some(since) = now.checked_duration_since(epoch) else {
        // A runtime whose clock is behind the epoch (a paused test clock): no grid.
        return now + FRAME_PERIOD;
    };
    let period = FRAME_PERIOD.as_nanos();
    let k = since.as_nanos() / period + 1;
    epoch + Duration::from_nanos(u64::try_from(k * period).unwrap_or(u64::MAX))
}

/// How long the pacer waits, at a tick that finds less than a frame in the middle of a
/// stream (the tick before had a whole one), for the producer's next push before it sends
/// what there is padded with silence (an underrun). A producer a few ms late is common: an
/// asyncio or GC pause, or a push that lands just after the tick it was meant for while the
/// resampler still holds part of the last one (up to 10 ms of input, until the next push
/// completes its chunk). The frame then leaves up to this late, with its RTP time
/// unchanged (a jitter buffer absorbs it), instead of a gap that also leaves the rest of the
/// stream a frame later. The clock's grid is kept: the next tick is the one after.
const LATE_GRACE: Duration = Duration::from_millis(10);

/// Frames between two looks at the far ends' loss reports (which come every few seconds).
const LOSS_CHECK_FRAMES: u64 = 25;

/// The pacer: one frame per tick of the shared frame clock.
async fn pace(
    shared: Arc<Shared>,
    mut encoder: Encoder,
    track: LocalTrack,
    levels: Option<OutputLevels>,
) {
    let frame_len = encoder.frame_samples() * shared.out_channels;
    let mut pcm: Vec<i16> = Vec::with_capacity(frame_len);
    let mut ticks: u64 = 0;
    // Whether the last tick sent a whole frame of audio (the stream is flowing).
    let mut flowing = false;
    // The tick whose frame waited out part of the grace: the next tick follows it.
    let mut graced: Option<tokio::time::Instant> = None;
    loop {
        ticks += 1;
        if shared.fec && ticks.is_multiple_of(LOSS_CHECK_FRAMES) {
            let current = shared.expected_loss.load(Ordering::Relaxed);
            let wanted = fec_loss_percent(track.reported_loss(), current);
            if wanted != current {
                match encoder.set_expected_loss(wanted) {
                    Ok(()) => {
                        tracing::debug!(
                            track = track.id(),
                            from = current,
                            to = wanted,
                            "opus FEC retuned to the reported loss"
                        );
                        shared.expected_loss.store(wanted, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "opus expected-loss setting failed"),
                }
            }
        }
        let now = tokio::time::Instant::now();
        let base = match graced.take() {
            Some(t) if now < t + FRAME_PERIOD => t,
            _ => now,
        };
        let tick = next_tick(base);
        tokio::time::sleep_until(tick).await;
        if flowing {
            let deadline = tick + LATE_GRACE;
            loop {
                let pushed = shared.pushed.notified();
                tokio::pin!(pushed);
                pushed.as_mut().enable();
                let short = {
                    let st = shared.lock();
                    st.phase == Phase::Live && !st.paused && st.buf.len() < frame_len
                };
                if !short {
                    break;
                }
                graced = Some(tick);
                if tokio::time::timeout_at(deadline, pushed).await.is_err() {
                    break;
                }
            }
        }
        {
            let mut st = shared.lock();
            if st.phase == Phase::Done {
                return;
            }
            let have = if st.paused {
                0
            } else {
                st.buf.len().min(frame_len)
            };
            if have < frame_len && st.started && st.phase == Phase::Live && !st.paused {
                st.underruns += 1;
            }
            if have == 0 && st.phase == Phase::Ending && !st.paused {
                drop(st);
                finish(&shared, false);
                return;
            }
            flowing = have == frame_len;
            pcm.clear();
            pcm.extend(st.buf.drain(..have));
            pcm.resize(frame_len, 0);
            st.frames += 1;
        }
        shared.space.notify_waiters();
        if let Some(levels) = &levels {
            let energy: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
            let ch = shared.out_channels.max(1);
            let mono: Arc<[i16]> = if levels.pcm {
                pcm.chunks_exact(ch)
                    .map(|f| (f.iter().map(|&s| i32::from(s)).sum::<i32>() / ch as i32) as i16)
                    .collect()
            } else {
                Arc::from([])
            };
            levels.record(SentFrame {
                at: tokio::time::Instant::now(),
                level: (energy / pcm.len().max(1) as f64).sqrt() as f32,
                rate: encoder.rate(),
                pcm: mono,
            });
        }
        match encoder.encode(&pcm) {
            Ok(packet) => match EncodedFrame::opus(packet) {
                Ok(f) => track.push(f),
                Err(e) => tracing::warn!(error = %e, "encoder produced an invalid packet"),
            },
            Err(e) => tracing::warn!(error = %e, "opus encode failed"),
        }
    }
}
