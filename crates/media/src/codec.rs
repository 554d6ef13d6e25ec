//! Opus settings for voice and thin wrappers over libopus (through the `opus` crate).

use crate::MediaError;

/// Samples per channel in one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// WebRTC's Opus clock.
pub const SAMPLE_RATE: u32 = 48_000;
/// The sample rates libopus encodes natively.
pub const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];

/// The rate an encoder fed from `input_rate` audio runs at: the smallest rate libopus
/// takes that keeps all of the input's bandwidth (16 kHz TTS → 16 kHz, 22.05 kHz → 24 kHz,
/// 44.1 kHz → 48 kHz). Upsampling to 48 kHz first adds nothing the codec could keep and
/// costs a resampler plus a larger encoder analysis (`docs/performance.md`).
///
/// ```
/// use parlor_media::codec::codec_rate_for;
/// assert_eq!(codec_rate_for(16_000), 16_000);
/// assert_eq!(codec_rate_for(22_050), 24_000);
/// assert_eq!(codec_rate_for(44_100), 48_000);
/// ```
pub fn codec_rate_for(input_rate: u32) -> u32 {
    OPUS_RATES
        .into_iter()
        .find(|r| *r >= input_rate)
        .unwrap_or(SAMPLE_RATE)
}

/// Largest encoded packet we accept from the encoder.
const MAX_PACKET: usize = 1500;

/// Encoder settings. The defaults are for speech: mono, complexity 5, 32 kbit/s VBR, in-band
/// FEC on (10 % expected loss), DTX off (frames keep flowing, so the far end's jitter buffer
/// stays primed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// 1 (mono, the default for a voice) or 2.
    pub channels: u8,
    /// 0–10.
    pub complexity: u8,
    /// Target bitrate in bit/s.
    pub bitrate: u32,
    /// In-band forward error correction.
    pub fec: bool,
    /// Discontinuous transmission in silence.
    pub dtx: bool,
}

impl Default for OpusSettings {
    fn default() -> Self {
        OpusSettings {
            channels: 1,
            complexity: 5,
            bitrate: 32_000,
            fec: true,
            dtx: false,
        }
    }
}

fn opus_err(e: opus::Error) -> MediaError {
    MediaError::Opus(e.to_string())
}

/// An Opus encoder for 20 ms frames (at 48 kHz unless made [`with_rate`](Encoder::with_rate)).
/// The RTP clock stays 48 kHz whatever the encoder's input rate.
pub struct Encoder {
    inner: opus::Encoder,
    channels: usize,
    rate: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("channels", &self.channels)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder with these settings, taking 48 kHz audio.
    pub fn new(s: OpusSettings) -> Result<Encoder, MediaError> {
        Encoder::with_rate(s, SAMPLE_RATE)
    }

    /// An encoder with these settings taking audio at `rate`, one of [`OPUS_RATES`].
    pub fn with_rate(s: OpusSettings, rate: u32) -> Result<Encoder, MediaError> {
        if !OPUS_RATES.contains(&rate) {
            return Err(MediaError::UnsupportedRate(rate));
        }
        let channels = match s.channels {
            1 => opus::Channels::Mono,
            2 => opus::Channels::Stereo,
            n => return Err(MediaError::UnsupportedLayout(usize::from(n))),
        };
        let mut inner =
            opus::Encoder::new(rate, channels, opus::Application::Voip).map_err(opus_err)?;
        inner
            .set_complexity(i32::from(s.complexity.min(10)))
            .map_err(opus_err)?;
        let bitrate = i32::try_from(s.bitrate.clamp(6_000, 510_000)).unwrap_or(32_000);
        inner
            .set_bitrate(opus::Bitrate::Bits(bitrate))
            .map_err(opus_err)?;
        inner.set_inband_fec(s.fec).map_err(opus_err)?;
        if s.fec {
            inner.set_packet_loss_perc(10).map_err(opus_err)?;
        }
        inner.set_dtx(s.dtx).map_err(opus_err)?;
        inner.set_signal(opus::Signal::Voice).map_err(opus_err)?;
        Ok(Encoder {
            inner,
            channels: usize::from(s.channels),
            rate,
            buf: vec![0; MAX_PACKET],
        })
    }

    /// Channels the encoder takes.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The input sample rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Samples per channel in one 20 ms frame at the input rate.
    pub fn frame_samples(&self) -> usize {
        self.rate as usize / 50
    }

    /// Encode one 20 ms frame (`frame_samples() × channels` interleaved samples).
    pub fn encode(&mut self, pcm: &[i16]) -> Result<std::sync::Arc<[u8]>, MediaError> {
        let n = self.inner.encode(pcm, &mut self.buf).map_err(opus_err)?;
        Ok(std::sync::Arc::from(&self.buf[..n]))
    }
}

/// An Opus decoder to 48 kHz stereo, with loss concealment.
pub struct Decoder {
    inner: opus::Decoder,
    out: Vec<i16>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder to 48 kHz stereo (mono streams come out duplicated).
    pub fn new() -> Result<Decoder, MediaError> {
        Ok(Decoder {
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Stereo).map_err(opus_err)?,
            out: vec![0; 5760 * 2],
        })
    }

    /// Decode one packet into interleaved stereo.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, MediaError> {
        let n = self
            .inner
            .decode(packet, &mut self.out, false)
            .map_err(opus_err)?;
        Ok(self.out[..n * 2].to_vec())
    }

    /// Conceal `samples` lost samples per channel: from `next`'s in-band FEC when given, else
    /// by packet-loss concealment.
    pub fn conceal(&mut self, samples: usize, next: Option<&[u8]>) -> Result<Vec<i16>, MediaError> {
        let samples = samples.min(5760);
        let out = &mut self.out[..samples * 2];
        let n = match next {
            Some(p) => self.inner.decode(p, out, true),
            None => self.inner.decode(&[], out, false),
        }
        .map_err(opus_err)?;
        Ok(self.out[..n * 2].to_vec())
    }
}
