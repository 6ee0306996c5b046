//! A plain row-major f32 matrix: the interchange type between the engine's stages.
//!
//! Why not a candle Tensor or a faer Mat everywhere: the closed-form methods want f64 faer
//! matrices, the heads want candle tensors and the Sinkhorn kernel wants a raw slice. This type
//! is the neutral, validated currency; each stage converts at its edge.
use crate::AlignError;

#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Row-major, `rows * cols` entries.
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Build from row-major data; errors when the length does not match.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, AlignError> {
        if data.len() != rows * cols {
            return Err(AlignError::DimensionMismatch {
                what: format!("matrix data for {rows}x{cols}"),
                expected: rows * cols,
                got: data.len(),
            });
        }
        Ok(Self { rows, cols, data })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let c = self.cols;
        &mut self.data[i * c..(i + 1) * c]
    }

    /// Rows selected by index, in the given order.
    pub fn select_rows(&self, idx: &[usize]) -> Self {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Self {
            rows: idx.len(),
            cols: self.cols,
            data,
        }
    }

    /// Error naming the first row with a NaN or Inf.
    /// `f` over consecutive blocks of at most `chunk` rows, on the rayon pool, the results
    /// stacked in row order. For row-wise maps (a row's output depends on that row alone, as
    /// every method's `embed_x` / `embed_y`): the same matrix as `f(self)`, in parallel.
    pub fn par_map_rows(
        &self,
        chunk: usize,
        f: &(dyn Fn(&Matrix) -> Result<Matrix, AlignError> + Sync),
    ) -> Result<Matrix, AlignError> {
        use rayon::prelude::*;
        let chunk = chunk.max(1);
        if self.rows <= chunk || self.cols == 0 {
            return f(self);
        }
        let parts: Vec<Matrix> = self
            .data
            .par_chunks(chunk * self.cols)
            .map(|block| {
                let rows = block.len() / self.cols;
                f(&Matrix::from_vec(rows, self.cols, block.to_vec())?)
            })
            .collect::<Result<_, _>>()?;
        let cols = parts.first().map_or(0, |p| p.cols);
        if let Some(p) = parts.iter().find(|p| p.cols != cols) {
            return Err(AlignError::DimensionMismatch {
                what: "columns of a row block's output".into(),
                expected: cols,
                got: p.cols,
            });
        }
        let mut data = Vec::with_capacity(self.rows * cols);
        for p in &parts {
            data.extend_from_slice(&p.data);
        }
        Matrix::from_vec(self.rows, cols, data)
    }

    pub fn check_finite(&self, what: &str) -> Result<(), AlignError> {
        // Fast path: a branch-free OR over the exponent bits of every value (all ones = inf or
        // NaN), which the compiler vectorises; `Iterator::any` exits early per value and does
        // not. Pools of 100k x 1280 values are checked at every fit, so this matters. The row
        // is looked for only when something is wrong.
        const EXP: u32 = 0x7f80_0000;
        let bad = self.data.chunks(1 << 14).any(|c| {
            c.iter()
                .fold(0u32, |acc, v| acc | u32::from(v.to_bits() & EXP == EXP))
                != 0
        });
        if !bad {
            return Ok(());
        }
        for r in 0..self.rows {
            if self.row(r).iter().any(|v| !v.is_finite()) {
                return Err(AlignError::NonFinite {
                    what: what.to_string(),
                    row: r,
                });
            }
        }
        Ok(())
    }

    /// Copy with every row scaled to unit L2 norm (zero rows stay zero).
    pub fn l2_normalized(&self) -> Self {
        let mut out = self.clone();
        for r in 0..out.rows {
            let row = out.row_mut(r);
            let n = row
                .iter()
                .map(|v| (*v as f64) * (*v as f64))
                .sum::<f64>()
                .sqrt();
            if n > 0.0 {
                let inv = (1.0 / n) as f32;
                row.iter_mut().for_each(|v| *v *= inv);
            }
        }
        out
    }

    /// `self * other^T` (rows x other.rows), f32 with f32 accumulation, rayon over rows.
    pub fn matmul_t(&self, other: &Matrix) -> Matrix {
        use rayon::prelude::*;
        assert_eq!(self.cols, other.cols, "matmul_t inner dimension");
        let mut out = Matrix::zeros(self.rows, other.rows);
        let n = other.rows;
        out.data
            .par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(i, orow)| {
                let a = self.row(i);
                for (j, o) in orow.iter_mut().enumerate() {
                    let b = other.row(j);
                    *o = a.iter().zip(b).map(|(x, y)| x * y).sum();
                }
            });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_finite_names_the_first_bad_row_and_passes_extremes() {
        let mut m = Matrix::zeros(5, 3);
        m.row_mut(0)
            .copy_from_slice(&[f32::MAX, f32::MIN, f32::MIN_POSITIVE]);
        m.row_mut(1).copy_from_slice(&[-0.0, 1e-45, -1e38]);
        assert!(m.check_finite("m").is_ok());
        m.row_mut(3)[2] = f32::INFINITY;
        m.row_mut(2)[1] = f32::NAN;
        match m.check_finite("m") {
            Err(AlignError::NonFinite { what, row }) => assert_eq!((what.as_str(), row), ("m", 2)),
            other => panic!("{other:?}"),
        }
        m.row_mut(2)[1] = 0.0;
        m.row_mut(3)[2] = f32::NEG_INFINITY;
        assert!(matches!(
            m.check_finite("m"),
            Err(AlignError::NonFinite { row: 3, .. })
        ));
        // A bad value past the first chunk of the fast path is found too.
        let mut big = Matrix::zeros(1000, 40);
        big.row_mut(999)[39] = f32::NAN;
        assert!(matches!(
            big.check_finite("big"),
            Err(AlignError::NonFinite { row: 999, .. })
        ));
    }
}
