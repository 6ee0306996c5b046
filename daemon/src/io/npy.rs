//! NumPy `.npy` files (format versions 1-3): read f32 / f16 / f64 little-endian C-order 2-D
//! arrays into a [`Matrix`], write f32. Anything else (Fortran order, big-endian, integer dtypes,
//! other ranks) is refused with a message that says what was found.
use std::path::Path;

use super::{IoError, read_bytes, write_atomic};
use sotalign_engine::Matrix;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Read a 2-D `.npy` file as f32 (f16 and f64 are converted).
pub fn read_npy(path: &Path) -> Result<Matrix, IoError> {
    let bytes = read_bytes(path)?;
    parse_npy(&bytes).map_err(|msg| IoError::Npy {
        path: path.to_path_buf(),
        msg,
    })
}

/// What a `.npy` header says, after validation against the bytes that follow it.
struct Header<'a> {
    descr: &'a str,
    rows: usize,
    cols: usize,
    /// Bytes per element (4, 2 or 8).
    width: usize,
    /// Where the data starts.
    data_start: usize,
}

/// Parse and validate the header: a 2-D, C-order, little-endian float array whose data is
/// exactly as long as its shape says (errors are plain messages; callers add the path).
fn parse_header(bytes: &[u8]) -> Result<Header<'_>, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing \\x93NUMPY magic".into());
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unknown format version {v}")),
    };
    let header = bytes.get(start..start + hlen).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not UTF-8")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        return Err(
            "Fortran-order arrays are not supported (save with np.ascontiguousarray)".into(),
        );
    }
    let shape = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry `{s}`"))
        })
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match dims.as_slice() {
        [r, c] => (*r, *c),
        _ => return Err(format!("expected a 2-D array, got shape {dims:?}")),
    };
    let n = rows.checked_mul(cols).ok_or("shape overflows")?;
    let width = match descr {
        "<f4" => 4,
        "<f2" => 2,
        "<f8" => 8,
        other => {
            return Err(format!(
                "dtype `{other}` is not supported (little-endian float32, float16 or float64 only)"
            ));
        }
    };
    let data_start = start + hlen;
    let body = bytes.len() - data_start;
    if Some(body) != n.checked_mul(width) {
        return Err(format!(
            "data is {body} bytes, shape ({rows}, {cols}) of `{descr}` needs {} (truncated?)",
            n.saturating_mul(width)
        ));
    }
    Ok(Header {
        descr,
        rows,
        cols,
        width,
        data_start,
    })
}

/// Parse `.npy` bytes (errors are plain messages; [`read_npy`] adds the path).
pub fn parse_npy(bytes: &[u8]) -> Result<Matrix, String> {
    let Header {
        rows,
        cols,
        width,
        data_start,
        ..
    } = parse_header(bytes)?;
    let body = &bytes[data_start..];
    let data: Vec<f32> = match width {
        4 => body
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        2 => body
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        _ => body
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
    };
    Ok(Matrix { rows, cols, data })
}

/// The raw text of `'key': value` in a Python dict literal (value up to the next top-level
/// comma; tuples are kept whole).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let k1 = format!("'{key}'");
    let k2 = format!("\"{key}\"");
    let pos = header
        .find(&k1)
        .map(|p| p + k1.len())
        .or_else(|| header.find(&k2).map(|p| p + k2.len()))?;
    let rest = header[pos..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        Some(&rest[..=end])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

/// A memory-mapped 2-D little-endian f32 `.npy`: the ingest cache's shards are read through it,
/// so a large cache costs no copy until rows are gathered.
pub struct NpyF32 {
    map: memmap2::Mmap,
    offset: usize,
    pub rows: usize,
    pub cols: usize,
}

impl NpyF32 {
    /// Map a file and validate its header (`<f4`, C order, 2-D, size consistent).
    pub fn open(path: &Path) -> Result<Self, IoError> {
        let f = std::fs::File::open(path).map_err(|e| IoError::fs(path, e))?;
        // SAFETY: read-only map; cache shards are written once and only ever renamed into place.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| IoError::fs(path, e))?;
        let bad = |msg: String| IoError::Npy {
            path: path.to_path_buf(),
            msg,
        };
        let h = parse_header(&map).map_err(bad)?;
        if h.descr != "<f4" {
            return Err(bad(format!(
                "dtype `{}`: memory-mapped reading needs little-endian float32",
                h.descr
            )));
        }
        let (offset, rows, cols) = (h.data_start, h.rows, h.cols);
        Ok(Self {
            map,
            offset,
            rows,
            cols,
        })
    }

    /// Copy row `i` (< `rows`) into `out` (length `cols`).
    pub fn read_row(&self, i: usize, out: &mut [f32]) {
        let start = self.offset + i * self.cols * 4;
        for (o, c) in out
            .iter_mut()
            .zip(self.map[start..start + self.cols * 4].chunks_exact(4))
        {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }

    /// The whole array as a [`Matrix`].
    pub fn to_matrix(&self) -> Matrix {
        let mut m = Matrix::zeros(self.rows, self.cols);
        for i in 0..self.rows {
            self.read_row(i, m.row_mut(i));
        }
        m
    }
}

/// IEEE 754 half to single precision (exact: every f16 is representable in f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24.
            let v = m as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Encode a matrix as `.npy` (version 1.0, `<f4`, C order).
pub fn encode_npy(m: &Matrix) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows, m.cols
    );
    // Pad so that magic(6) + version(2) + len(2) + header is a multiple of 64, ending in '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + m.data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &m.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Write a matrix as a float32 `.npy` file (atomically).
pub fn write_npy(path: &Path, m: &Matrix) -> Result<(), IoError> {
    write_atomic(path, &encode_npy(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_f32() {
        let m = Matrix::from_vec(2, 3, vec![1.0, -2.5, 3.25, 0.0, f32::MIN_POSITIVE, 7.0]).unwrap();
        let bytes = encode_npy(&m);
        assert_eq!(
            (bytes.len() - m.data.len() * 4) % 64,
            0,
            "header aligned to 64"
        );
        assert_eq!(parse_npy(&bytes).unwrap(), m);
    }

    #[test]
    fn f16_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
    }

    fn with_header(h: &str, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reads_f16_and_refuses_the_rest() {
        let b = with_header(
            "{'descr': '<f2', 'fortran_order': False, 'shape': (1, 2), }\n",
            &[0, 0x3c, 0, 0xc0],
        );
        assert_eq!(parse_npy(&b).unwrap().data, vec![1.0, -2.0]);
        let f = with_header(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1), }\n",
            &[0; 4],
        );
        assert!(parse_npy(&f).unwrap_err().contains("Fortran"));
        let i = with_header(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 1), }\n",
            &[0; 8],
        );
        assert!(parse_npy(&i).unwrap_err().contains("<i8"));
        let be = with_header(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 1), }\n",
            &[0; 4],
        );
        assert!(parse_npy(&be).is_err());
        let one_d = with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n",
            &[0; 12],
        );
        assert!(parse_npy(&one_d).unwrap_err().contains("2-D"));
        let short = with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n",
            &[0; 12],
        );
        assert!(parse_npy(&short).unwrap_err().contains("needs 16"));
        assert!(parse_npy(b"garbage").is_err());
    }

    #[test]
    fn mapped_reader_round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let m = Matrix::from_vec(3, 2, vec![1.0, -2.0, 3.5, 0.0, f32::MIN_POSITIVE, 7.0]).unwrap();
        write_npy(&p, &m).unwrap();
        assert_eq!(NpyF32::open(&p).unwrap().to_matrix(), m);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let err = NpyF32::open(&p).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    /// A file numpy wrote (the reference fixture) maps with its shape and the same values as
    /// the copying reader.
    #[test]
    fn mapped_reader_reads_numpy_written_file() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/reference/tuxpaint_txt.npy");
        let a = NpyF32::open(&p).unwrap();
        assert_eq!((a.rows, a.cols), (785, 384));
        assert_eq!(a.to_matrix(), read_npy(&p).unwrap());
    }
}
