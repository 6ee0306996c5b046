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
    pub fn check_finite(&self, what: &str) -> Result<(), AlignError> {
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
