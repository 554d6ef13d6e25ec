//! Inbound audio: a remote track's Opus frames put in order by a jitter buffer and decoded
//! to 48 kHz stereo PCM, with FEC and loss concealment; a converter to 16 kHz mono for
//! speech-to-text; and the clock that places frames by their RTP times.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parlor_peer::{RemoteTrack, TrackKind};

use crate::MediaError;
use crate::codec::{Decoder, SAMPLE_RATE};
use crate::jitter::{JitterBuffer, JitterStats, Playout};
use crate::resample::StreamResampler;

/// Decoded PCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    /// Interleaved s16 samples.
    pub samples: Vec<i16>,
    /// Channels (2 for decoded WebRTC audio).
    pub channels: u16,
    /// Sample rate (48 000 for decoded WebRTC audio).
    pub sample_rate: u32,
    /// RTP timestamp of the first sample (48 kHz clock).
    pub rtp_time: u64,
    /// Whether this frame was synthesized to cover a lost packet.
    pub concealed: bool,
}

impl AudioFrame {
    /// Samples per channel.
    pub fn len(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    /// No samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Decoded frames of one remote audio track (the `iter_frames` equivalent), in RTP order:
/// packets pass through a [`JitterBuffer`] (reordered, a late one waited for as long as the
/// link's jitter says, duplicates dropped), and a lost one comes back from the next packet's
/// in-band FEC or is concealed (PLC). Ends (`None`) when the track ends.
#[derive(Debug)]
pub struct AudioFrames {
    track: RemoteTrack,
    decoder: Decoder,
    jitter: JitterBuffer,
    ended: bool,
    ready: VecDeque<AudioFrame>,
    concealed: u64,
}

impl AudioFrames {
    /// Decode `track` (an audio track; video is refused).
    pub fn new(track: RemoteTrack) -> Result<AudioFrames, MediaError> {
        if track.kind() != TrackKind::Audio {
            return Err(MediaError::NotAudio);
        }
        Ok(AudioFrames {
            track,
            decoder: Decoder::new()?,
            jitter: JitterBuffer::new(),
            ended: false,
            ready: VecDeque::new(),
            concealed: 0,
        })
    }

    /// The track being decoded.
    pub fn track(&self) -> &RemoteTrack {
        &self.track
    }

    /// Frames synthesized for lost packets so far.
    pub fn concealed_frames(&self) -> u64 {
        self.concealed
    }

    /// What the jitter buffer did so far (late, lost, duplicates…) and how long it waits for
    /// a missing packet now.
    pub fn jitter_stats(&self) -> (JitterStats, Duration) {
        (self.jitter.stats(), self.jitter.target_delay())
    }

    /// Decode what the jitter buffer hands out at `now` into `ready`.
    fn play_out(&mut self, now: Instant) {
        while let Some(p) = self.jitter.pop(now) {
            match p {
                Playout::Packet(packet) => match self.decoder.decode(&packet.data) {
                    Ok(samples) => self.ready.push_back(AudioFrame {
                        samples,
                        channels: 2,
                        sample_rate: SAMPLE_RATE,
                        rtp_time: packet.rtp_time,
                        concealed: false,
                    }),
                    Err(e) => tracing::debug!(error = %e, "undecodable Opus packet dropped"),
                },
                Playout::Lost {
                    rtp_time,
                    samples,
                    fec,
                } => match self.decoder.conceal(samples as usize, fec.as_deref()) {
                    Ok(samples) => {
                        self.concealed += 1;
                        self.ready.push_back(AudioFrame {
                            samples,
                            channels: 2,
                            sample_rate: SAMPLE_RATE,
                            rtp_time,
                            concealed: true,
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "concealment failed"),
                },
            }
        }
    }

    /// The next decoded frame; `None` once the track has ended. Cancel-safe: a frame
    /// decoded and not yet returned stays for the next call.
    pub async fn next(&mut self) -> Option<AudioFrame> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Some(f);
            }
            self.play_out(Instant::now());
            if !self.ready.is_empty() {
                continue;
            }
            if self.ended {
                return None;
            }
            let deadline = self.jitter.poll_timeout();
            tokio::select! {
                packet = self.track.recv() => match packet {
                    Some(packet) => self.jitter.push(Instant::now(), packet),
                    None => {
                        self.ended = true;
                        self.jitter.drain();
                    }
                },
                () = sleep_until(deadline), if deadline.is_some() => {}
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

/// Converts decoded 48 kHz stereo frames to 16 kHz mono (what most speech-to-text engines
/// take), keeping the resampler's state across frames.
#[derive(Debug)]
pub struct SpeechDownsampler {
    resampler: StreamResampler,
    mono: Vec<i16>,
}

impl SpeechDownsampler {
    /// A converter from 48 kHz to 16 kHz mono.
    pub fn new() -> Result<SpeechDownsampler, MediaError> {
        Ok(SpeechDownsampler {
            resampler: StreamResampler::new(SAMPLE_RATE, 16_000, 1)?,
            mono: Vec::new(),
        })
    }

    /// Append `frame` (any channel count, 48 kHz) as 16 kHz mono samples to `out`.
    pub fn process(&mut self, frame: &AudioFrame, out: &mut Vec<i16>) -> Result<(), MediaError> {
        if frame.sample_rate != SAMPLE_RATE {
            return Err(MediaError::UnsupportedRate(frame.sample_rate));
        }
        let ch = usize::from(frame.channels.max(1));
        self.mono.clear();
        self.mono.extend(frame.samples.chunks_exact(ch).map(|f| {
            let sum: i32 = f.iter().map(|s| i32::from(*s)).sum();
            (sum / ch as i32) as i16
        }));
        self.resampler.process(&self.mono, out)
    }
}

/// Places a remote track's frames on this machine's clock by their RTP times: a frame is put
/// at the earliest arrival its stream has shown (the smallest arrival − media time seen), so
/// a burst of frames delivered late (a busy scheduler, network jitter) keeps the spacing they
/// were sent with. Comparing a microphone's audio with what was played into the room (echo
/// gating, echo cancellation) needs that spacing: arrival times smear a 20 ms envelope by as
/// much as the burst.
///
/// Sans-IO: arrival times are passed in. The anchor follows a sender whose clock runs slow by
/// up to 500 ppm (it may move later by that much of the media time passed), and starts over
/// on a jump (a restarted stream; a frame more than [`MediaClock::RESET`] late).
///
/// ```
/// use std::time::{Duration, Instant};
/// use parlor_media::frames::MediaClock;
///
/// let t0 = Instant::now();
/// let mut clock = MediaClock::new(48_000);
/// assert_eq!(clock.place(0, t0), t0);
/// // The next two frames arrive together, 30 ms late: they keep their 20 ms spacing.
/// let late = t0 + Duration::from_millis(70);
/// assert_eq!(clock.place(960, late), t0 + Duration::from_millis(20));
/// assert_eq!(clock.place(1920, late), t0 + Duration::from_millis(40));
/// ```
#[derive(Debug, Clone)]
pub struct MediaClock {
    rate: u32,
    /// (RTP time, instant) of the anchor.
    anchor: Option<(u64, std::time::Instant)>,
}

impl MediaClock {
    /// A frame arriving this much later than its place starts the clock over (a stream
    /// restarted with earlier RTP times, a sender that paused its clock). One placed later
    /// than its arrival (a restart with later RTP times) becomes the anchor anyway.
    pub const RESET: std::time::Duration = std::time::Duration::from_secs(2);
    /// How fast the anchor may move later: a sender's clock this slow is followed (ppm).
    pub const DRIFT_PPM: u64 = 500;

    /// A clock for RTP times at `rate` Hz.
    pub fn new(rate: u32) -> MediaClock {
        MediaClock {
            rate: rate.max(1),
            anchor: None,
        }
    }

    fn media(&self, ticks: u64) -> std::time::Duration {
        std::time::Duration::from_micros(ticks.saturating_mul(1_000_000) / u64::from(self.rate))
    }

    /// Where a frame with `rtp_time` belongs on the current anchor, without moving it;
    /// `None` before the first frame.
    pub fn at(&self, rtp_time: u64) -> Option<std::time::Instant> {
        let (rtp0, t0) = self.anchor?;
        if rtp_time >= rtp0 {
            t0.checked_add(self.media(rtp_time - rtp0))
        } else {
            t0.checked_sub(self.media(rtp0 - rtp_time))
        }
    }

    /// Where the frame with `rtp_time` that `arrived` now belongs: never later than its
    /// arrival.
    pub fn place(&mut self, rtp_time: u64, arrived: std::time::Instant) -> std::time::Instant {
        let Some((rtp0, t0)) = self.anchor else {
            self.anchor = Some((rtp_time, arrived));
            return arrived;
        };
        let placed = if rtp_time >= rtp0 {
            t0.checked_add(self.media(rtp_time - rtp0))
        } else {
            t0.checked_sub(self.media(rtp0 - rtp_time))
        };
        // Beyond any call's length from the anchor (2 h): a restart, whatever the direction.
        let far = self.media(rtp_time.abs_diff(rtp0)) > 3600 * Self::RESET;
        let Some(placed) = placed.filter(|_| !far) else {
            self.anchor = Some((rtp_time, arrived));
            return arrived;
        };
        if arrived <= placed {
            // Earlier than any frame so far: the new anchor.
            self.anchor = Some((rtp_time, arrived));
            return arrived;
        }
        let late = arrived - placed;
        if late > Self::RESET {
            self.anchor = Some((rtp_time, arrived));
            return arrived;
        }
        // A slow sender's clock: the anchor creeps later, by at most DRIFT_PPM of the media
        // time since it was set, in steps of a millisecond or more (a burst of late frames
        // moves it by next to nothing).
        let creep = self.media(rtp_time.saturating_sub(rtp0)) * Self::DRIFT_PPM as u32 / 1_000_000;
        if creep >= std::time::Duration::from_millis(1) {
            let step = late.min(creep);
            self.anchor = Some((rtp_time, placed + step));
            return placed + step;
        }
        placed
    }
}

#[cfg(test)]
mod clock_tests {
    use super::MediaClock;
    use std::time::{Duration, Instant};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_late_burst_keeps_its_spacing() {
        let t0 = Instant::now();
        let mut c = MediaClock::new(48_000);
        for k in 0..10u64 {
            let jitter = ms(k % 3 * 4);
            assert_eq!(c.place(k * 960, t0 + ms(20 * k) + jitter), t0 + ms(20 * k));
        }
        // 200 ms stalled, then ten frames at once.
        let burst = t0 + ms(400);
        for k in 10..20u64 {
            assert_eq!(c.place(k * 960, burst), t0 + ms(20 * k));
        }
    }

    #[test]
    fn an_earlier_arrival_becomes_the_anchor() {
        let t0 = Instant::now();
        let mut c = MediaClock::new(48_000);
        assert_eq!(c.place(0, t0 + ms(30)), t0 + ms(30));
        assert_eq!(c.place(960, t0 + ms(21)), t0 + ms(21));
        assert_eq!(c.place(1920, t0 + ms(60)), t0 + ms(41));
    }

    #[test]
    fn a_slow_sender_is_followed_and_a_jump_starts_over() {
        let t0 = Instant::now();
        let mut c = MediaClock::new(48_000);
        // The sender's clock runs 200 ppm slow: 60 s of its media arrives over 60.012 s.
        let mut last = t0;
        for k in 0..3000u64 {
            let media = ms(20 * k);
            let arrived = t0 + media + media / 5000;
            last = c.place(k * 960, arrived);
            assert!(
                arrived - last < ms(2),
                "{:?} behind at frame {k}",
                arrived - last
            );
        }
        assert!(last > t0 + ms(59_980));
        // A restarted stream: far RTP times start over at the arrival.
        let t = t0 + ms(61_000);
        assert_eq!(c.place(1 << 40, t), t);
        assert_eq!(c.place((1 << 40) + 960, t + ms(20)), t + ms(20));
        // So does a stall longer than RESET (the sender paused its clock).
        let t = t + ms(5_000);
        assert_eq!(c.place((1 << 40) + 1920, t), t);
    }
}
