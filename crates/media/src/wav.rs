//! 16-bit mono PCM WAV files: reading what TTS engines and tools write (also a streamed file
//! whose sizes are unset, as `espeak-ng --stdout` writes it) and writing them.
//!
//! ```
//! let bytes = parlor_media::wav::write_mono(16_000, &[1, -2, 3]);
//! assert_eq!(parlor_media::wav::read_mono(&bytes)?, (vec![1, -2, 3], 16_000));
//! # Ok::<(), parlor_media::MediaError>(())
//! ```

use crate::MediaError;

fn bad(why: impl Into<String>) -> MediaError {
    MediaError::Wav(why.into())
}

/// The samples and rate of a mono 16-bit PCM WAV.
pub fn read_mono(wav: &[u8]) -> Result<(Vec<i16>, u32), MediaError> {
    if wav.len() < 12 || &wav[..4] != b"RIFF" || &wav[8..12] != b"WAVE" {
        return Err(bad("not a WAV file"));
    }
    let (mut pos, mut rate) = (12usize, None);
    while pos + 8 <= wav.len() {
        let id = &wav[pos..pos + 4];
        let len = u32::from_le_bytes([wav[pos + 4], wav[pos + 5], wav[pos + 6], wav[pos + 7]]);
        let body = pos + 8;
        if id == b"fmt " {
            let f = wav
                .get(body..body + 16)
                .ok_or_else(|| bad("short fmt chunk"))?;
            let (format, channels) = (
                u16::from_le_bytes([f[0], f[1]]),
                u16::from_le_bytes([f[2], f[3]]),
            );
            let bits = u16::from_le_bytes([f[14], f[15]]);
            if !(format == 1 && channels == 1 && bits == 16) {
                return Err(bad(format!(
                    "want mono 16-bit PCM, got format {format}, {channels} channels, {bits} bits"
                )));
            }
            rate = Some(u32::from_le_bytes([f[4], f[5], f[6], f[7]]));
        } else if id == b"data" {
            let end = body.saturating_add(len as usize).min(wav.len());
            let samples = wav[body..end]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            return Ok((samples, rate.ok_or_else(|| bad("data before fmt"))?));
        }
        pos = body.saturating_add(len as usize + (len as usize & 1));
    }
    Err(bad("no data chunk"))
}

/// A mono 16-bit PCM WAV of `pcm` at `rate`.
pub fn write_mono(rate: u32, pcm: &[i16]) -> Vec<u8> {
    let data = (pcm.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + pcm.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, samples: &[i16], data_len: u32) -> Vec<u8> {
        let mut w = b"RIFF\xff\xff\xff\xffWAVEfmt ".to_vec();
        w.extend(16u32.to_le_bytes());
        w.extend(1u16.to_le_bytes());
        w.extend(channels.to_le_bytes());
        w.extend(rate.to_le_bytes());
        w.extend((rate * 2).to_le_bytes());
        w.extend(2u16.to_le_bytes());
        w.extend(16u16.to_le_bytes());
        w.extend(b"data");
        w.extend(data_len.to_le_bytes());
        w.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        w
    }

    #[test]
    fn reads_streamed_and_sized_files_and_refuses_others() {
        // espeak-ng --stdout leaves the sizes unset (0xffffffff): read to the end.
        let (s, r) = read_mono(&wav(22_050, 1, &[1, -2, 3], u32::MAX)).expect("streamed");
        assert_eq!((s, r), (vec![1, -2, 3], 22_050));
        let (s, _) = read_mono(&wav(16_000, 1, &[1, -2, 3], 4)).expect("sized");
        assert_eq!(s, vec![1, -2]);
        assert!(read_mono(&wav(16_000, 2, &[1, 2], 4)).is_err());
        assert!(read_mono(b"RIFF").is_err());
        assert!(read_mono(&[0; 64]).is_err());
        assert_eq!(
            read_mono(&write_mono(8_000, &[7, 8])).expect("ours"),
            (vec![7, 8], 8_000)
        );
    }

    #[test]
    fn a_written_header_describes_its_samples() {
        let w = write_mono(22_050, &[1, -2, 3]);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([w[4], w[5], w[6], w[7]]), 36 + 6);
        assert_eq!(u32::from_le_bytes([w[24], w[25], w[26], w[27]]), 22_050);
        assert_eq!(&w[44..], &[1, 0, 0xfe, 0xff, 3, 0]);
    }
}
