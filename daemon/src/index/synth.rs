//! Synthetic embeddings for tests and benchmarks.
//!
//! Real sentence and image embeddings are not isotropic Gaussian clouds: their variance is
//! concentrated in a few directions (a decaying spectrum), they share a common mean direction
//! (so unrelated items still have cosine ~0.2), and they form semantic clusters of very uneven
//! size. [`Clustered`] reproduces those three traits; [`gaussian`] is the structureless worst
//! case for graph indexes, kept to report it honestly.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use sotalign_engine::Matrix;

/// A mixture of anisotropic Gaussian clusters around a shared mean direction.
#[derive(Debug, Clone)]
pub struct Clustered {
    dim: usize,
    centres: Matrix,
    /// Cumulative cluster probabilities (Zipf-like, exponent 0.7).
    cumulative: Vec<f64>,
    /// Per-dimension scale: variance of dimension j falls as 1 / (j + 1).
    scales: Vec<f32>,
    mean: Vec<f32>,
    noise: f32,
}

impl Clustered {
    /// `n_clusters` centres in `dim` dimensions, drawn from `seed`. Within-cluster noise of 0.75
    /// (relative to the centre spread) gives cosines of ~0.7 inside a cluster and ~0.2 across.
    pub fn new(dim: usize, n_clusters: usize, seed: u64) -> Self {
        let n_clusters = n_clusters.max(1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scales: Vec<f32> = (0..dim).map(|j| (1.0 / (j as f32 + 1.0)).sqrt()).collect();
        let spread: f32 = scales.iter().map(|s| s * s).sum::<f32>().sqrt();
        let mut mean: Vec<f32> = (0..dim)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let mn = mean
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        mean.iter_mut().for_each(|v| *v *= 0.6 * spread / mn);
        let mut centres = Matrix::zeros(n_clusters, dim);
        for c in 0..n_clusters {
            for (j, v) in centres.row_mut(c).iter_mut().enumerate() {
                *v = rng.sample::<f32, _>(StandardNormal) * scales[j];
            }
        }
        let w: Vec<f64> = (0..n_clusters)
            .map(|c| (c as f64 + 1.0).powf(-0.7))
            .collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let cumulative = w
            .iter()
            .map(|x| {
                acc += x / total;
                acc
            })
            .collect();
        Self {
            dim,
            centres,
            cumulative,
            scales,
            mean,
            noise: 0.75,
        }
    }

    /// `n` points drawn with `seed` (different seeds give disjoint samples of the same mixture,
    /// e.g. a collection and held-out queries).
    pub fn sample(&self, n: usize, seed: u64) -> Matrix {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Matrix::zeros(n, self.dim);
        for i in 0..n {
            let u: f64 = rng.random();
            let c = self
                .cumulative
                .partition_point(|&p| p < u)
                .min(self.centres.rows - 1);
            let centre = self.centres.row(c);
            for (j, v) in out.row_mut(i).iter_mut().enumerate() {
                let e: f32 = rng.sample(StandardNormal);
                *v = self.mean[j] + centre[j] + self.noise * e * self.scales[j];
            }
        }
        out
    }
}

/// iid standard Gaussian vectors: no structure for a graph index to exploit.
pub fn gaussian(n: usize, dim: usize, seed: u64) -> Matrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..n * dim)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    Matrix {
        rows: n,
        cols: dim,
        data,
    }
}
