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
/// FEC on and adaptive (see [`fec_loss_percent`]), DTX off (frames keep flowing, so the far
/// end's jitter buffer stays primed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// 1 (mono, the default for a voice) or 2.
    pub channels: u8,
    /// 0–10.
    pub complexity: u8,
    /// Target bitrate in bit/s.
    pub bitrate: u32,
    /// In-band forward error correction. The encoder starts at 0 % expected loss (no FEC data,
    /// no cost) and an [`AudioSource`](crate::AudioSource) raises it as the far ends report
    /// loss in RTCP, as libwebrtc does; off, it never protects.
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

    /// Tell the encoder how much packet loss to expect (percent, 0–100). With in-band FEC on,
    /// above 0 each packet also carries a low-bitrate copy of the previous frame (LBRR), which
    /// the far end decodes when that frame is lost; at 0 none is coded.
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), MediaError> {
        self.inner
            .set_packet_loss_perc(i32::from(percent.min(100)))
            .map_err(opus_err)
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

/// Loss steps (percent) the encoder is told, each with the margin (percent) a report must
/// clear to move onto it from below or off it from above: libwebrtc's for Opus.
const LOSS_STEPS: [(u8, f32); 4] = [(20, 2.0), (10, 1.0), (5, 1.0), (1, 0.0)];

/// The expected loss (percent) to give an encoder with in-band FEC, from the highest loss the
/// far ends report (`reported`, 0.0–1.0; `None` keeps `current`). Reports are mapped onto
/// libwebrtc's steps (0, 1, 5, 10 and 20 %) with a margin around each step, so a loss that
/// hovers at a step does not flip the encoder back and forth.
///
/// ```
/// use parlor_media::codec::fec_loss_percent;
/// assert_eq!(fec_loss_percent(None, 0), 0);
/// assert_eq!(fec_loss_percent(Some(0.0), 10), 0);
/// assert_eq!(fec_loss_percent(Some(0.2), 0), 10); // 20 % needs 22 % to step up to 20
/// assert_eq!(fec_loss_percent(Some(0.19), 20), 20); // and falls back below 18 %
/// ```
pub fn fec_loss_percent(reported: Option<f32>, current: u8) -> u8 {
    let Some(fraction) = reported else {
        return current;
    };
    let pct = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0) * 100.0
    } else {
        0.0
    };
    for (step, margin) in LOSS_STEPS {
        let threshold = if current >= step {
            f32::from(step) - margin
        } else {
            f32::from(step) + margin
        };
        if pct >= threshold {
            return step;
        }
    }
    0
}

/// Whether an Opus packet carries in-band FEC (an LBRR copy of the previous frame): the SILK
/// header's LBRR flag (RFC 6716 §4.2.3, as libopus' `opus_packet_has_lbrr`). CELT-only
/// packets never do.
pub fn packet_has_fec(packet: &[u8]) -> bool {
    let Some(&toc) = packet.first() else {
        return false;
    };
    let config = toc >> 3;
    if config >= 16 {
        return false; // CELT-only
    }
    // Frame duration per config (SILK-only 0–11: 10/20/40/60 ms; hybrid 12–15: 10/20 ms).
    let ms = if config < 12 {
        [10, 20, 40, 60][usize::from(config & 3)]
    } else {
        [10, 20][usize::from(config & 1)]
    };
    let silk_frames = if ms <= 20 { 1 } else { ms / 20 };
    let stereo = toc & 0x04 != 0;
    // The first frame's first byte: code 0 and 1 start right after the TOC; code 2 after a
    // one- or two-byte length; code 3 after the frame-count byte and any padding/lengths,
    // which we only follow in its simplest (CBR, unpadded) form.
    let first = match toc & 0x03 {
        0 | 1 => packet.get(1),
        2 => match packet.get(1) {
            Some(&l) if l < 252 => packet.get(2),
            Some(_) => packet.get(3),
            None => None,
        },
        _ => match packet.get(1) {
            Some(&fc) if fc & 0xC0 == 0 => packet.get(2),
            _ => None,
        },
    };
    let Some(&b) = first else {
        return false;
    };
    let mut lbrr = (b >> (7 - silk_frames)) & 1 == 1;
    if stereo {
        lbrr |= (b >> (6 - 2 * silk_frames)) & 1 == 1;
    }
    lbrr
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 s of a voiced sound (140 Hz and its harmonics, a slow syllable envelope) at `rate`.
    fn voice(rate: u32) -> Vec<i16> {
        (0..rate as usize * 2)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                let env = 0.6 + 0.4 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
                let s: f64 = (1..=12)
                    .map(|h| (2.0 * std::f64::consts::PI * 140.0 * h as f64 * t).sin() / h as f64)
                    .sum();
                (s * env * 6_000.0) as i16
            })
            .collect()
    }

    /// Packets (of 2 s) carrying FEC, encoding at `rate` with `loss` % expected.
    fn fec_packets(rate: u32, loss: Option<u8>) -> usize {
        let mut enc = Encoder::with_rate(OpusSettings::default(), rate).expect("encoder");
        if let Some(l) = loss {
            enc.set_expected_loss(l).expect("loss");
        }
        voice(rate)
            .chunks_exact(enc.frame_samples())
            .map(|f| enc.encode(f).expect("encode"))
            .filter(|p| packet_has_fec(p))
            .count()
    }

    #[test]
    fn fec_is_coded_only_when_loss_is_expected() {
        for rate in [16_000, 24_000, 48_000] {
            assert_eq!(fec_packets(rate, None), 0, "{rate} Hz, default");
            assert_eq!(fec_packets(rate, Some(0)), 0, "{rate} Hz, 0 %");
            // SILK codes LBRR for active speech frames, so not in every packet.
            let with = fec_packets(rate, Some(10));
            assert!(
                with >= 50,
                "{rate} Hz, 10 %: {with} of 100 packets carry FEC"
            );
        }
        // FEC off: never, whatever the expected loss.
        let mut enc = Encoder::new(OpusSettings {
            fec: false,
            ..OpusSettings::default()
        })
        .expect("encoder");
        enc.set_expected_loss(20).expect("loss");
        assert!(
            voice(48_000)
                .chunks_exact(960)
                .all(|f| !packet_has_fec(&enc.encode(f).expect("encode")))
        );
    }

    /// 4 s of a voice whose pitch glides between 100 and 250 Hz and whose loudness comes
    /// and goes four times a second: harder for concealment, which extrapolates the last
    /// pitch period, than the steady [`voice`].
    fn gliding_voice() -> Vec<i16> {
        let mut phase = 0.0f64;
        (0..48_000 * 4)
            .map(|i| {
                let t = f64::from(i) / 48_000.0;
                let pitch = 175.0 + 75.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
                phase += 2.0 * std::f64::consts::PI * pitch / 48_000.0;
                let env = (2.0 * std::f64::consts::PI * 4.0 * t).sin().max(0.0);
                let s: f64 = (1..=12).map(|h| (phase * h as f64).sin() / h as f64).sum();
                (s * env * 8_000.0) as i16
            })
            .collect()
    }

    /// SNR (dB) over the lost frames when every 5th packet of `settings`' encoding of a voice
    /// is lost and concealed as `AudioFrames` does (`conceal` with the next packet), against
    /// the same packets decoded without loss.
    fn snr_of_lost_frames(settings: OpusSettings, expected_loss: u8) -> f64 {
        let mut enc = Encoder::new(settings).expect("encoder");
        enc.set_expected_loss(expected_loss).expect("loss");
        let packets: Vec<_> = gliding_voice()
            .chunks_exact(960)
            .map(|f| enc.encode(f).expect("encode"))
            .collect();
        let (mut clean, mut lossy) = (Decoder::new().expect("dec"), Decoder::new().expect("dec"));
        let (mut signal, mut noise) = (0.0f64, 0.0f64);
        for (i, p) in packets.iter().enumerate() {
            let reference = clean.decode(p).expect("decode");
            if i % 5 == 2 && i + 1 < packets.len() {
                let got = lossy.conceal(960, Some(&packets[i + 1])).expect("conceal");
                for (r, g) in reference.iter().zip(&got) {
                    signal += f64::from(*r).powi(2);
                    noise += (f64::from(*r) - f64::from(*g)).powi(2);
                }
            } else {
                lossy.decode(p).expect("decode");
            }
        }
        10.0 * (signal / noise.max(1.0)).log10()
    }

    #[test]
    fn fec_recovers_lost_frames_better_than_concealment() {
        let fec = snr_of_lost_frames(OpusSettings::default(), 20);
        let plc = snr_of_lost_frames(
            OpusSettings {
                fec: false,
                ..OpusSettings::default()
            },
            20,
        );
        println!("lost frames: {fec:.1} dB with FEC, {plc:.1} dB by concealment alone");
        assert!(fec > plc + 6.0, "FEC {fec:.1} dB, PLC {plc:.1} dB");
    }

    #[test]
    fn packet_has_fec_reads_only_silk_headers() {
        assert!(!packet_has_fec(&[]));
        assert!(!packet_has_fec(&[0x08])); // a TOC alone
        assert!(!packet_has_fec(&[0xF8, 0xFF, 0xFF])); // CELT-only, whatever follows
        assert!(packet_has_fec(&[0x08, 0x40])); // SILK NB 20 ms mono, LBRR bit set
        assert!(!packet_has_fec(&[0x08, 0x80])); // VAD bit only
        assert!(packet_has_fec(&[0x0C, 0x10])); // stereo: the side channel's LBRR bit
        assert!(packet_has_fec(&[0x1B, 0x01, 0x10])); // code 3, one 60 ms frame: LBRR bit
        assert!(!packet_has_fec(&[0x1B, 0x01, 0x20])); // ... and the 3rd frame's VAD bit
    }

    #[test]
    fn loss_steps_follow_reports_with_hysteresis() {
        let steps = |reports: &[f32]| {
            let mut cur = 0;
            reports
                .iter()
                .map(|r| {
                    cur = fec_loss_percent(Some(*r), cur);
                    cur
                })
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            steps(&[
                0.0, 0.005, 0.01, 0.03, 0.061, 0.055, 0.045, 0.12, 0.095, 0.3, 0.19, 0.17, 0.0
            ]),
            [0, 0, 1, 1, 5, 5, 5, 10, 10, 20, 20, 10, 0]
        );
        assert_eq!(fec_loss_percent(None, 5), 5);
        assert_eq!(fec_loss_percent(Some(f32::NAN), 10), 0);
        assert_eq!(fec_loss_percent(Some(7.0), 0), 20);
    }
}
