//! NumPy `.npz` volumes (the RAD-ChestCT release: one `ct` array of Hounsfield units per
//! scan). An `.npz` is a zip of `.npy` files; the `.npy` format is a magic string, a version,
//! a header that is a Python dict literal (`descr`, `fortran_order`, `shape`) and the raw
//! array. The zip is read by the `zip` crate (already in the tree for PyTorch checkpoints);
//! the `.npy` header is parsed here: the format is small and fixed, and a crate for it would
//! bring its own zip version.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The keys looked for, in order: the raw release's `ct`, and `volume`, which the official
/// preprocessing writes beside it.
pub const KEYS: [&str; 2] = ["ct", "volume"];

/// A 3D array from an `.npz`, as float32 in C order, with the key it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct NpzVolume {
    pub key: String,
    pub dims: [usize; 3],
    pub data: Vec<f32>,
}

/// Whether `path` is named like an `.npz`.
pub fn is_npz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// Reads the first of [`KEYS`] that `path` holds. Every problem names the file: not a zip,
/// none of the keys (the keys found are listed), an unsupported dtype, not 3D, truncated.
pub fn read_npz_volume(path: &Path) -> Result<NpzVolume> {
    let bad = |why: String| Error::data(path, why);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a readable .npz (zip) file: {e}")))?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok()).map(|n| n.to_string()).collect();
    let Some(key) = KEYS.iter().find(|k| names.iter().any(|n| n == &format!("{k}.npy"))) else {
        let found: Vec<&str> = names.iter().map(|n| n.trim_end_matches(".npy")).collect();
        return Err(bad(format!(
            "holds no `ct` or `volume` array (it holds: {})",
            if found.is_empty() { "nothing".to_string() } else { found.join(", ") }
        )));
    };
    let mut entry = zip.by_name(&format!("{key}.npy")).map_err(|e| bad(format!("{key}.npy: {e}")))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).map_err(|e| bad(format!("{key}.npy: cannot be read: {e}")))?;
    let (dims, data) = parse_npy(&bytes).map_err(|why| bad(format!("{key}.npy: {why}")))?;
    Ok(NpzVolume { key: key.to_string(), dims, data })
}

/// An element type of an `.npy` array.
#[derive(Debug, Clone, Copy)]
struct Dtype {
    kind: u8,
    size: usize,
    big_endian: bool,
}

/// Parses an `.npy` file holding a 3D numeric array into its dims and float32 values in C order.
fn parse_npy(bytes: &[u8]) -> std::result::Result<([usize; 3], Vec<f32>), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (no NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = bytes.get(start..start + header_len).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = parse_descr(descr)?;
    let fortran = match dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")? {
        "True" => true,
        "False" => false,
        other => return Err(format!("fortran_order is {other}")),
    };
    let shape_text = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("shape {shape_text} is not a list of sizes")))
        .collect::<std::result::Result<_, _>>()?;
    let [a, b, c] = shape[..] else {
        return Err(format!("a {}D array of shape {shape_text}; a CT volume is 3D", shape.len()));
    };
    let n = a * b * c;
    if n == 0 {
        return Err(format!("an empty array of shape {shape_text}"));
    }
    let body = &bytes[start + header_len..];
    if body.len() < n * dtype.size {
        return Err(format!(
            "truncated: shape {shape_text} of {descr} needs {} bytes, the file holds {}",
            n * dtype.size,
            body.len()
        ));
    }
    let values: Vec<f32> = body[..n * dtype.size].chunks_exact(dtype.size).map(|e| dtype.read(e)).collect();
    let dims = [a, b, c];
    if !fortran {
        return Ok((dims, values));
    }
    // Fortran order: element (i, j, k) at i + a·(j + b·k).
    let mut data = vec![0f32; n];
    for i in 0..a {
        for j in 0..b {
            for k in 0..c {
                data[(i * b + j) * c + k] = values[i + a * (j + b * k)];
            }
        }
    }
    Ok((dims, data))
}

/// The text of `key`'s value in a Python dict literal (`{'descr': '<f4', 'fortran_order':
/// False, 'shape': (2, 3, 4), }`), up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn parse_descr(descr: &str) -> std::result::Result<Dtype, String> {
    let unsupported = || format!("unsupported dtype {descr} (numbers only: float, int, uint, bool)");
    let mut chars = descr.chars();
    let order = chars.next().ok_or_else(unsupported)?;
    let big_endian = match order {
        '<' | '|' | '=' => cfg!(target_endian = "big") && order == '=',
        '>' => true,
        _ => return Err(unsupported()),
    };
    let kind = chars.next().ok_or_else(unsupported)? as u8;
    let size: usize = chars.as_str().parse().map_err(|_| unsupported())?;
    let ok = matches!((kind, size), (b'f', 2 | 4 | 8) | (b'i' | b'u', 1 | 2 | 4 | 8) | (b'b', 1));
    if !ok {
        return Err(unsupported());
    }
    Ok(Dtype { kind, size, big_endian })
}

impl Dtype {
    fn read(self, e: &[u8]) -> f32 {
        let mut b = [0u8; 8];
        b[..self.size].copy_from_slice(e);
        if self.big_endian {
            b[..self.size].reverse();
        }
        let u = u64::from_le_bytes(b);
        match (self.kind, self.size) {
            (b'f', 2) => half::f16::from_bits(u as u16).to_f32(),
            (b'f', 4) => f32::from_bits(u as u32),
            (b'f', 8) => f64::from_bits(u) as f32,
            (b'i', 1) => u as u8 as i8 as f32,
            (b'i', 2) => u as u16 as i16 as f32,
            (b'i', 4) => u as u32 as i32 as f32,
            (b'i', 8) => u as i64 as f32,
            _ => u as f32, // unsigned and bool
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, body: &[u8]) -> Vec<u8> {
        let mut h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn reads_dtypes_orders_and_endianness() {
        let ints: Vec<u8> = [-1000i16, 0, 40, 1200, -3, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let (dims, data) = parse_npy(&npy("<i2", false, "(1, 2, 3)", &ints)).unwrap();
        assert_eq!((dims, data), ([1, 2, 3], vec![-1000.0, 0.0, 40.0, 1200.0, -3.0, 7.0]));
        // Fortran order: the same values laid out column-major.
        let f: Vec<u8> = [1f64, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let (dims, data) = parse_npy(&npy(">f8", true, "(2, 2, 1)", &f)).unwrap();
        assert_eq!((dims, data), ([2, 2, 1], vec![1.0, 3.0, 2.0, 4.0]));
    }

    #[test]
    fn rejects_what_is_not_a_3d_number_array() {
        let e = parse_npy(&npy("<f4", false, "(4, 4)", &[0; 64])).unwrap_err();
        assert!(e.contains("2D"), "{e}");
        let e = parse_npy(&npy("<f4", false, "(1, 2, 2, 2)", &[0; 32])).unwrap_err();
        assert!(e.contains("4D"), "{e}");
        let e = parse_npy(&npy("|O", false, "(1, 1, 1)", &[0; 8])).unwrap_err();
        assert!(e.contains("unsupported dtype"), "{e}");
        let e = parse_npy(&npy("<f4", false, "(2, 2, 2)", &[0; 16])).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        assert!(parse_npy(b"PK\x03\x04 not npy").unwrap_err().contains("magic"));
    }
}
