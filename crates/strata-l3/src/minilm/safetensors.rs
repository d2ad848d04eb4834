//! Reading `f32` tensors out of a `.safetensors` file: an 8-byte header length, a JSON header
//! naming each tensor's dtype, shape and byte range, then the raw little-endian data.

use std::collections::HashMap;

use serde_json::Value;

use crate::Error;

/// The parsed header of a safetensors file, over its bytes.
pub(crate) struct SafeTensors {
    bytes: Vec<u8>,
    /// Where the data section starts in `bytes`.
    data_start: usize,
    tensors: HashMap<String, Entry>,
}

struct Entry {
    dtype: String,
    shape: Vec<usize>,
    /// Byte range within the data section.
    begin: usize,
    end: usize,
}

/// The header may not be larger than this (the format's own limit is 100 MB; real headers of
/// this model are a few kilobytes).
const MAX_HEADER_BYTES: u64 = 100 << 20;

impl SafeTensors {
    /// Parses the header of `bytes`; an error names `file` when it is not a safetensors file.
    pub(crate) fn parse(bytes: Vec<u8>, file: &str) -> Result<Self, Error> {
        let corrupt = |what: &str| Error::config(format!("{file} is not a valid safetensors file: {what}"));
        let len_bytes: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("shorter than its header"))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || header_len > (bytes.len() - 8) as u64 {
            return Err(corrupt("header length past the end of the file"));
        }
        let data_start = 8 + header_len as usize;
        let header: Value = serde_json::from_slice(&bytes[8..data_start])
            .map_err(|e| corrupt("header is not JSON").with_source(e))?;
        let Value::Object(fields) = header else {
            return Err(corrupt("header is not a JSON object"));
        };
        let data_len = bytes.len() - data_start;
        let mut tensors = HashMap::new();
        for (name, info) in fields {
            if name == "__metadata__" {
                continue;
            }
            let bad = || corrupt(&format!("tensor `{name}` has a malformed entry"));
            let dtype = info.get("dtype").and_then(Value::as_str).ok_or_else(bad)?.to_owned();
            let shape = info
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(bad)?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(bad)?;
            let offsets = info.get("data_offsets").and_then(Value::as_array).ok_or_else(bad)?;
            let offset =
                |i: usize| offsets.get(i).and_then(Value::as_u64).and_then(|v| usize::try_from(v).ok());
            let (Some(begin), Some(end)) = (offset(0), offset(1)) else {
                return Err(bad());
            };
            if begin > end || end > data_len {
                return Err(corrupt(&format!("tensor `{name}` lies outside the file")));
            }
            tensors.insert(name, Entry { dtype, shape, begin, end });
        }
        Ok(Self { bytes, data_start, tensors })
    }

    /// Whether the file holds a tensor called `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The `f32` tensor `name`, which must have exactly `shape`.
    pub(crate) fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::config(format!("model.safetensors has no tensor `{name}`")))?;
        if entry.dtype != "F32" {
            return Err(Error::config(format!(
                "model.safetensors: tensor `{name}` is {}, expected F32",
                entry.dtype
            )));
        }
        if entry.shape != shape {
            return Err(Error::config(format!(
                "model.safetensors: tensor `{name}` has shape {:?}, expected {shape:?} (from config.json)",
                entry.shape
            )));
        }
        let count: usize = shape.iter().product();
        let data = &self.bytes[self.data_start + entry.begin..self.data_start + entry.end];
        if data.len() != count * 4 {
            return Err(Error::config(format!(
                "model.safetensors: tensor `{name}` holds {} bytes, expected {}",
                data.len(),
                count * 4
            )));
        }
        Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn reads_a_tensor_and_checks_its_dtype_shape_and_range() {
        let data: Vec<u8> = [1.5f32, -2.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = r#"{"__metadata__":{"format":"pt"},
            "a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},
            "ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
        let st =
            SafeTensors::parse(file(header, &data), "model.safetensors").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st.f32_tensor("a", &[3]).ok(), Some(vec![1.5, -2.0, 0.25]));
        let wrong_shape = st.f32_tensor("a", &[1, 3]).err().map(|e| e.to_string());
        assert_eq!(
            wrong_shape.as_deref(),
            Some("config: model.safetensors: tensor `a` has shape [3], expected [1, 3] (from config.json)")
        );
        assert!(st.f32_tensor("ids", &[1]).is_err());
        assert!(st.f32_tensor("missing", &[3]).is_err());

        let past_end = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
        assert!(SafeTensors::parse(file(past_end, &data), "m").is_err());
    }

    #[test]
    fn rejects_what_is_not_a_safetensors_file() {
        for bytes in
            [vec![], vec![1, 2, 3], file("not json", b""), file("[1]", b""), u64::MAX.to_le_bytes().to_vec()]
        {
            let err = SafeTensors::parse(bytes, "model.safetensors").err();
            assert!(err.is_some_and(|e| e.kind() == crate::ErrorKind::Config));
        }
    }
}
