//! Minimal `.npy` (format 1.0) for 2-D little-endian f32 matrices: written atomically, read
//! back through a memory map so a large cache costs no copy until rows are gathered.
use std::fs;
use std::io::Write;
use std::path::Path;

use memmap2::Mmap;

use super::IngestError;
use crate::align::Matrix;

/// Write `m` as `<f4` C-order `.npy`, via a temporary file renamed into place.
pub fn write_f32(path: &Path, m: &Matrix) -> Result<(), IngestError> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows, m.cols
    );
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let tmp = path.with_extension("npy.tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| IngestError::io(&tmp, e))?;
    let mut buf = Vec::with_capacity(10 + header.len() + m.data.len() * 4);
    buf.extend_from_slice(b"\x93NUMPY\x01\x00");
    buf.extend_from_slice(&(header.len() as u16).to_le_bytes());
    buf.extend_from_slice(header.as_bytes());
    for v in &m.data {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    f.write_all(&buf).map_err(|e| IngestError::io(&tmp, e))?;
    f.sync_all().map_err(|e| IngestError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| IngestError::io(path, e))?;
    Ok(())
}

/// A memory-mapped 2-D f32 `.npy`.
pub struct NpyF32 {
    map: Mmap,
    offset: usize,
    pub rows: usize,
    pub cols: usize,
}

impl NpyF32 {
    /// Map a file and validate its header (`<f4`, C order, 2-D, size consistent).
    pub fn open(path: &Path) -> Result<Self, IngestError> {
        let f = fs::File::open(path).map_err(|e| IngestError::io(path, e))?;
        // SAFETY: read-only map; cache shards are written once and only ever renamed into place.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| IngestError::io(path, e))?;
        let bad = |what: &str| IngestError::Format {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        if map.len() < 10 || &map[..6] != b"\x93NUMPY" {
            return Err(bad("not an .npy file"));
        }
        let (hlen, hstart) = match map[6] {
            1 => (u16::from_le_bytes([map[8], map[9]]) as usize, 10),
            2 | 3 if map.len() >= 12 => (
                u32::from_le_bytes([map[8], map[9], map[10], map[11]]) as usize,
                12,
            ),
            _ => return Err(bad("unsupported .npy version")),
        };
        let header = std::str::from_utf8(
            map.get(hstart..hstart + hlen)
                .ok_or_else(|| bad("truncated header"))?,
        )
        .map_err(|_| bad("header is not UTF-8"))?;
        if !header.contains("'descr': '<f4'") {
            return Err(bad("dtype is not little-endian f32"));
        }
        if header.contains("'fortran_order': True") {
            return Err(bad("Fortran order is not supported"));
        }
        let shape = header
            .split("'shape':")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .map(|s| s.trim().trim_start_matches('('))
            .ok_or_else(|| bad("no shape"))?;
        let dims: Vec<usize> = shape
            .split(',')
            .map(|d| d.trim())
            .filter(|d| !d.is_empty())
            .map(|d| d.parse::<usize>().map_err(|_| bad("bad shape")))
            .collect::<Result<_, _>>()?;
        let (rows, cols) = match dims.as_slice() {
            [r, c] => (*r, *c),
            [r] => (*r, 1),
            _ => return Err(bad("not a 2-D array")),
        };
        let offset = hstart + hlen;
        if map.len() != offset + rows * cols * 4 {
            return Err(bad("file size does not match its shape (truncated?)"));
        }
        Ok(Self {
            map,
            offset,
            rows,
            cols,
        })
    }

    /// Copy row `i` into `out` (length `cols`).
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

/// Read a whole 2-D f32 `.npy` into a matrix.
pub fn read_f32(path: &Path) -> Result<Matrix, IngestError> {
    Ok(NpyF32::open(path)?.to_matrix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let m = Matrix::from_vec(3, 2, vec![1.0, -2.0, 3.5, 0.0, f32::MIN_POSITIVE, 7.0]).unwrap();
        write_f32(&p, &m).unwrap();
        let bytes = fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(read_f32(&p).unwrap(), m);
        fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_f32(&p).is_err());
    }

    /// The reference fixture (written by numpy) reads with the expected shape.
    #[test]
    fn reads_numpy_written_file() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/reference/tuxpaint_txt.npy");
        let a = NpyF32::open(&p).unwrap();
        assert_eq!((a.rows, a.cols), (785, 384));
    }
}
