//! Just enough of the GGUF header to read a model's transformer block count
//! (`<arch>.block_count`), which a CPU split host needs to keep its share of the layers
//! (`mesh_core::launch::Placement::SplitHost::layer_count`).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
/// More key/value pairs than any real model has: a corrupt header, not a model.
const MAX_KV: u64 = 1 << 20;
const MAX_STRING: u64 = 1 << 24;

/// The model's `<arch>.block_count`, or `None` when the header has none.
pub fn block_count(path: &Path) -> io::Result<Option<u32>> {
    block_count_from(BufReader::new(File::open(path)?))
}

fn block_count_from<R: Read>(mut r: R) -> io::Result<Option<u32>> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a GGUF file"));
    }
    let version = read_u32(&mut r)?;
    if !(2..=3).contains(&version) {
        return Err(bad(&format!("unsupported GGUF version {version}")));
    }
    let _tensors = read_u64(&mut r)?;
    let kv_count = read_u64(&mut r)?;
    if kv_count > MAX_KV {
        return Err(bad("implausible key count"));
    }
    for _ in 0..kv_count {
        let key = read_string(&mut r)?;
        let ty = read_u32(&mut r)?;
        if key.ends_with(".block_count") {
            let n = match ty {
                4 => u64::from(read_u32(&mut r)?),
                5 => u64::try_from(read_u32(&mut r)? as i32)
                    .map_err(|_| bad("negative block_count"))?,
                10 | 11 => read_u64(&mut r)?,
                _ => return Err(bad("block_count is not an integer")),
            };
            return Ok(u32::try_from(n).ok());
        }
        skip_value(&mut r, ty)?;
    }
    Ok(None)
}

fn skip_value<R: Read>(r: &mut R, ty: u32) -> io::Result<()> {
    match ty {
        8 => {
            read_string(r)?;
        }
        9 => {
            let item = read_u32(r)?;
            let n = read_u64(r)?;
            if item == 8 {
                for _ in 0..n {
                    read_string(r)?;
                }
            } else {
                let size = scalar_size(item).ok_or_else(|| bad("nested GGUF arrays"))?;
                skip(
                    r,
                    n.checked_mul(size).ok_or_else(|| bad("array too large"))?,
                )?;
            }
        }
        t => skip(
            r,
            scalar_size(t).ok_or_else(|| bad("unknown GGUF value type"))?,
        )?,
    }
    Ok(())
}

fn scalar_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn skip<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied == n {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

fn read_u32<R: Read>(r: &mut R) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64<R: Read>(r: &mut R) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string<R: Read>(r: &mut R) -> io::Result<String> {
    let len = read_u64(r)?;
    if len > MAX_STRING {
        return Err(bad("string too long"));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn header(kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut v = b"GGUF".to_vec();
        v.extend(3u32.to_le_bytes());
        v.extend(0u64.to_le_bytes());
        v.extend((kvs.len() as u64).to_le_bytes());
        for (k, ty, value) in kvs {
            v.extend(string(k));
            v.extend(ty.to_le_bytes());
            v.extend(value);
        }
        v
    }

    #[test]
    fn block_count_is_found_after_strings_arrays_and_scalars() {
        let mut tokens = 8u32.to_le_bytes().to_vec();
        tokens.extend(2u64.to_le_bytes());
        tokens.extend(string("<s>"));
        tokens.extend(string("hello"));
        let mut scores = 6u32.to_le_bytes().to_vec();
        scores.extend(3u64.to_le_bytes());
        scores.extend([0u8; 12]);
        let h = header(&[
            ("general.architecture", 8, string("llama")),
            ("tokenizer.ggml.tokens", 9, tokens),
            ("tokenizer.ggml.scores", 9, scores),
            ("general.file_type", 4, 3u32.to_le_bytes().to_vec()),
            ("llama.block_count", 4, 30u32.to_le_bytes().to_vec()),
        ]);
        assert_eq!(block_count_from(&h[..]).unwrap(), Some(30));
    }

    #[test]
    fn no_block_count_and_non_gguf_files() {
        let h = header(&[("general.name", 8, string("x"))]);
        assert_eq!(block_count_from(&h[..]).unwrap(), None);
        assert!(block_count_from(&b"GGML...."[..]).is_err());
        assert!(block_count_from(&h[..h.len() - 1]).is_err());
    }
}
