//! Inbound audio: a remote track's Opus frames decoded to 48 kHz stereo PCM, with loss
//! concealment, and a converter to 16 kHz mono for speech-to-text.

use std::collections::VecDeque;

use parlor_peer::{RemoteTrack, TrackKind};

use crate::MediaError;
use crate::codec::{Decoder, SAMPLE_RATE};
use crate::resample::StreamResampler;

/// Longest gap (in 48 kHz samples) concealed; a longer gap (a pause in the sender's stream,
/// a restart) just resumes.
const MAX_CONCEALED: u64 = 3 * 960;

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

/// Decoded frames of one remote audio track (the `iter_frames` equivalent). Ends (`None`)
/// when the track ends.
#[derive(Debug)]
pub struct AudioFrames {
    track: RemoteTrack,
    decoder: Decoder,
    next_rtp: Option<u64>,
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
            next_rtp: None,
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

    /// The next decoded frame; `None` once the track has ended.
    pub async fn next(&mut self) -> Option<AudioFrame> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Some(f);
            }
            let packet = self.track.recv().await?;
            if let Some(expected) = self.next_rtp {
                let gap = packet.rtp_time.wrapping_sub(expected);
                if gap > 0 && gap <= MAX_CONCEALED {
                    // One lost frame comes back from the next packet's FEC; more are PLC.
                    let mut at = expected;
                    let mut left = gap;
                    while left > 0 {
                        let n = left.min(960);
                        let fec = (left == n).then_some(&packet.data[..]);
                        match self.decoder.conceal(n as usize, fec) {
                            Ok(samples) => {
                                self.concealed += 1;
                                self.ready.push_back(AudioFrame {
                                    samples,
                                    channels: 2,
                                    sample_rate: SAMPLE_RATE,
                                    rtp_time: at,
                                    concealed: true,
                                });
                            }
                            Err(e) => tracing::debug!(error = %e, "concealment failed"),
                        }
                        at += n;
                        left -= n;
                    }
                }
            }
            match self.decoder.decode(&packet.data) {
                Ok(samples) => {
                    self.next_rtp = Some(packet.rtp_time + (samples.len() / 2) as u64);
                    self.ready.push_back(AudioFrame {
                        samples,
                        channels: 2,
                        sample_rate: SAMPLE_RATE,
                        rtp_time: packet.rtp_time,
                        concealed: false,
                    });
                }
                Err(e) => tracing::debug!(error = %e, "undecodable Opus packet dropped"),
            }
        }
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
