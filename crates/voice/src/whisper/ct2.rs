//! Reading CTranslate2's `model.bin` (the format the Whisper packages ship), without
//! CTranslate2: the layout of `python/ctranslate2/specs/model_spec.py` `_serialize` and
//! `src/models/model.cc` `Model::load`, little-endian, no padding:
//!
//! ```text
//! u32 binary_version (6); str spec ("WhisperSpec"); u32 revision; u32 n_vars
//! n_vars × { str name; u8 rank; u32 dims[rank]; u8 dtype; u32 nbytes; bytes }
//! u32 n_aliases; n_aliases × { str alias; str target }
//! str = u16 length (with the NUL) + bytes + NUL
//! ```

use std::collections::HashMap;

/// One variable's data type (CTranslate2's `DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl DType {
    fn from_code(code: u8) -> Option<DType> {
        Some(match code {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }
}

/// A variable: its shape, type and raw little-endian bytes.
#[derive(Debug, Clone)]
pub(crate) struct Variable {
    pub(crate) dims: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) data: Vec<u8>,
}

impl Variable {
    /// The values as f32 (floats converted; integers cast).
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        let d = &self.data;
        match self.dtype {
            DType::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => d
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::I8 => d.iter().map(|&b| f32::from(b as i8)).collect(),
            DType::I16 => d
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
                .collect(),
            DType::I32 => d
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
        }
    }

    /// A scalar's value as an integer.
    pub(crate) fn scalar(&self) -> Option<i64> {
        if !self.dims.is_empty() {
            return None;
        }
        self.to_f32().first().map(|&v| v as i64)
    }
}

/// Why a `model.bin` could not be read.
#[derive(Debug, thiserror::Error)]
#[error("model.bin: {0}")]
pub(crate) struct FormatError(String);

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| FormatError(format!("truncated at byte {}", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, FormatError> {
        let n = usize::from(self.u16()?);
        let b = self.take(n)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec()).map_err(|_| FormatError("a name is not UTF-8".into()))
    }
}

/// Every variable of a `model.bin`, aliases resolved, and its spec name.
pub(crate) fn read(bytes: &[u8]) -> Result<(String, HashMap<String, Variable>), FormatError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u32()?;
    if !(5..=6).contains(&version) {
        return Err(FormatError(format!(
            "binary version {version}, expected 5 or 6"
        )));
    }
    let spec = r.string()?;
    let _revision = r.u32()?;
    let n = r.u32()? as usize;
    let mut vars = HashMap::with_capacity(n.min(4096));
    for _ in 0..n {
        let name = r.string()?;
        let rank = usize::from(r.u8()?);
        let dims = (0..rank)
            .map(|_| r.u32().map(|d| d as usize))
            .collect::<Result<Vec<_>, _>>()?;
        let code = r.u8()?;
        let dtype = DType::from_code(code)
            .ok_or_else(|| FormatError(format!("{name}: unknown data type {code}")))?;
        let nbytes = r.u32()? as usize;
        let count: usize = dims.iter().product();
        if count * dtype.size() != nbytes {
            return Err(FormatError(format!(
                "{name}: {nbytes} bytes for shape {dims:?} of {dtype:?}"
            )));
        }
        let data = r.take(nbytes)?.to_vec();
        vars.insert(name, Variable { dims, dtype, data });
    }
    let aliases = r.u32()?;
    for _ in 0..aliases {
        let (alias, target) = (r.string()?, r.string()?);
        if let Some(v) = vars.get(&target).cloned() {
            vars.insert(alias, v);
        }
    }
    Ok((spec, vars))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend(((s.len() + 1) as u16).to_le_bytes());
        out.extend(s.as_bytes());
        out.push(0);
    }

    #[test]
    fn reads_variables_scalars_and_aliases() {
        let mut b = Vec::new();
        b.extend(6u32.to_le_bytes());
        string(&mut b, "WhisperSpec");
        b.extend(3u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        string(&mut b, "w");
        b.push(2);
        b.extend(2u32.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        b.push(4); // f16
        b.extend(4u32.to_le_bytes());
        b.extend(half::f16::from_f32(1.5).to_le_bytes());
        b.extend(half::f16::from_f32(-2.0).to_le_bytes());
        string(&mut b, "heads");
        b.push(0);
        b.push(2); // i16
        b.extend(2u32.to_le_bytes());
        b.extend(6i16.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        string(&mut b, "alias");
        string(&mut b, "w");
        let (spec, vars) = read(&b).expect("read");
        assert_eq!(spec, "WhisperSpec");
        assert_eq!(vars["w"].dims, vec![2, 1]);
        assert_eq!(vars["w"].to_f32(), vec![1.5, -2.0]);
        assert_eq!(vars["alias"].to_f32(), vec![1.5, -2.0]);
        assert_eq!(vars["heads"].scalar(), Some(6));
        // Truncated and inconsistent files are errors, not panics.
        assert!(read(&b[..b.len() - 3]).is_err());
        assert!(read(&b[..10]).is_err());
        let mut bad = b.clone();
        bad[0] = 9;
        assert!(read(&bad).is_err());
    }
}
