//! Synthetic "platonic" data: two modalities that are different non-linear views of one shared
//! latent, the setting in which SOTAlign's premise (unpaired data carries the geometry a few
//! pairs cannot) holds by construction.
//!
//! A latent `z ~ N(0, I_k)` is drawn per item. Each modality has its own random two-layer map,
//! `x = A2 phi(A1 z + c) + noise` with a different non-linearity per modality (tanh for images,
//! a shifted softplus for texts), then rows are L2-normalised like real encoder features.
//! Pairs share their `z`; unpaired images and texts are drawn from independent latents (no
//! correspondence), and the held-out test pairs from fresh latents.
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};

use crate::{AlignData, AlignError, Matrix};

/// Shape of a platonic data set.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatonicSpec {
    /// Dimension of the shared latent.
    pub latent: usize,
    /// Hidden width of each view's map.
    pub hidden: usize,
    /// Image and text feature dimensions.
    pub dx: usize,
    pub dy: usize,
    /// Standard deviation of the per-feature Gaussian noise (before L2 normalisation; the
    /// noiseless features have per-coordinate scale about 1).
    pub noise: f32,
    /// Seed of the two views' random maps (the "encoders").
    pub seed: u64,
}

impl Default for PlatonicSpec {
    fn default() -> Self {
        Self {
            latent: 16,
            hidden: 128,
            dx: 96,
            dy: 64,
            noise: 0.3,
            seed: 7,
        }
    }
}

/// One view: x = A2 phi(A1 z + c).
#[derive(Debug, Clone)]
struct View {
    a1: Vec<f32>, // hidden x latent
    c: Vec<f32>,
    a2: Vec<f32>, // d x hidden
    d: usize,
    softplus: bool,
}

/// A fixed pair of random views; draws items from it.
#[derive(Debug, Clone)]
pub struct Platonic {
    spec: PlatonicSpec,
    vx: View,
    vy: View,
}

impl Platonic {
    pub fn new(spec: PlatonicSpec) -> Result<Self, AlignError> {
        if spec.latent == 0 || spec.hidden == 0 || spec.dx == 0 || spec.dy == 0 {
            return Err(AlignError::InvalidConfig(
                "platonic dimensions must be >= 1".into(),
            ));
        }
        if !(spec.noise.is_finite() && spec.noise >= 0.0) {
            return Err(AlignError::InvalidConfig(
                "platonic noise must be >= 0".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let vx = View::random(&mut rng, spec.latent, spec.hidden, spec.dx, false)?;
        let vy = View::random(&mut rng, spec.latent, spec.hidden, spec.dy, true)?;
        Ok(Self { spec, vx, vy })
    }

    pub fn spec(&self) -> &PlatonicSpec {
        &self.spec
    }

    fn latents(&self, n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n * self.spec.latent)
            .map(|_| StandardNormal.sample(rng))
            .collect()
    }

    fn render(&self, view: &View, z: &[f32], rng: &mut ChaCha8Rng) -> Matrix {
        let k = self.spec.latent;
        let n = z.len() / k;
        let mut out = Matrix::zeros(n, view.d);
        let mut h = vec![0f32; view.c.len()];
        for i in 0..n {
            view.apply(&z[i * k..(i + 1) * k], &mut h, out.row_mut(i));
            if self.spec.noise > 0.0 {
                for v in out.row_mut(i) {
                    let e: f32 = StandardNormal.sample(rng);
                    *v += self.spec.noise * e;
                }
            }
        }
        out.l2_normalized()
    }

    /// `n` pairs (row i of both matrices share a latent).
    pub fn pairs(&self, n: usize, rng: &mut ChaCha8Rng) -> (Matrix, Matrix) {
        let z = self.latents(n, rng);
        let x = self.render(&self.vx, &z, rng);
        let y = self.render(&self.vy, &z, rng);
        (x, y)
    }

    /// `n` images from their own latents.
    pub fn images(&self, n: usize, rng: &mut ChaCha8Rng) -> Matrix {
        let z = self.latents(n, rng);
        self.render(&self.vx, &z, rng)
    }

    /// `n` texts from their own latents.
    pub fn texts(&self, n: usize, rng: &mut ChaCha8Rng) -> Matrix {
        let z = self.latents(n, rng);
        self.render(&self.vy, &z, rng)
    }

    /// A training set (`n_pairs` pairs, `n_unpaired` images and texts from independent latents)
    /// and a held-out test set of `n_test` pairs, all drawn with `seed`.
    pub fn split(
        &self,
        n_pairs: usize,
        n_unpaired: usize,
        n_test: usize,
        seed: u64,
    ) -> (AlignData, Matrix, Matrix) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Pairs and test pairs first, so they do not change with the pool size.
        let (xp, yp) = self.pairs(n_pairs, &mut rng);
        let (xt, yt) = self.pairs(n_test, &mut rng);
        let xu = self.images(n_unpaired, &mut rng);
        let yu = self.texts(n_unpaired, &mut rng);
        let mut data = AlignData::from_pairs(xp, yp);
        data.xu = xu;
        data.yu = yu;
        (data, xt, yt)
    }
}

impl View {
    fn random(
        rng: &mut ChaCha8Rng,
        k: usize,
        hidden: usize,
        d: usize,
        softplus: bool,
    ) -> Result<Self, AlignError> {
        let g1 = Normal::new(0.0f32, (2.0 / k as f32).sqrt())
            .map_err(|e| AlignError::InvalidConfig(e.to_string()))?;
        let g2 = Normal::new(0.0f32, (1.0 / hidden as f32).sqrt())
            .map_err(|e| AlignError::InvalidConfig(e.to_string()))?;
        let gc = Normal::new(0.0f32, 0.5).map_err(|e| AlignError::InvalidConfig(e.to_string()))?;
        Ok(Self {
            a1: (0..hidden * k).map(|_| g1.sample(rng)).collect(),
            c: (0..hidden).map(|_| gc.sample(rng)).collect(),
            a2: (0..d * hidden).map(|_| g2.sample(rng)).collect(),
            d,
            softplus,
        })
    }

    fn apply(&self, z: &[f32], h: &mut [f32], out: &mut [f32]) {
        let k = z.len();
        for (j, hj) in h.iter_mut().enumerate() {
            let pre: f32 = self.a1[j * k..(j + 1) * k]
                .iter()
                .zip(z)
                .map(|(a, b)| a * b)
                .sum::<f32>()
                + self.c[j];
            *hj = if self.softplus {
                // softplus centred so the feature mean is not dominated by a constant offset
                (1.0 + pre.exp()).ln() - 0.7
            } else {
                pre.tanh()
            };
        }
        let hd = h.len();
        for (o, row) in out.iter_mut().zip(self.a2.chunks_exact(hd)) {
            *o = row.iter().zip(h.iter()).map(|(a, b)| a * b).sum();
        }
    }
}

/// Mean of image->text and text->image R@1 for a square score matrix whose diagonal holds the
/// correct pairs (each test pair its own caption). Ties count against the method.
pub fn mean_r1(scores: &Matrix) -> f64 {
    let n = scores.rows.min(scores.cols);
    if n == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    for i in 0..n {
        let row = scores.row(i);
        let s = row[i];
        if row.iter().enumerate().all(|(j, &v)| j == i || v < s) {
            hits += 1;
        }
        if (0..n)
            .all(|r| r == i || scores.data[r * scores.cols + i] < scores.data[i * scores.cols + i])
        {
            hits += 1;
        }
    }
    hits as f64 / (2 * n) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_share_their_latent_and_views_differ() {
        let p = Platonic::new(PlatonicSpec::default()).unwrap();
        let (data, xt, yt) = p.split(50, 200, 100, 1);
        assert_eq!(
            (data.xp.rows, data.xu.rows, data.yu.rows, xt.rows),
            (50, 200, 200, 100)
        );
        assert_eq!((data.dx(), data.dy()), (96, 64));
        data.validate().unwrap();
        for r in 0..xt.rows {
            let n: f32 = xt.row(r).iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
        // Same seed, same data; different seed, different data.
        let (again, _, _) = p.split(50, 200, 100, 1);
        assert_eq!(again.xp, data.xp);
        let (other, _, _) = p.split(50, 200, 100, 2);
        assert_ne!(other.xp, data.xp);
        // The views are related: a pair's nearest-latent structure is shared, so the within-
        // modality similarity of paired items correlates across modalities.
        let sx = xt.matmul_t(&xt);
        let sy = yt.matmul_t(&yt);
        let (mut sxy, mut sxx, mut syy) = (0f64, 0f64, 0f64);
        let n = (xt.rows * xt.rows) as f64;
        let mx = sx.data.iter().map(|&v| v as f64).sum::<f64>() / n;
        let my = sy.data.iter().map(|&v| v as f64).sum::<f64>() / n;
        for (a, b) in sx.data.iter().zip(&sy.data) {
            let (a, b) = (*a as f64 - mx, *b as f64 - my);
            sxy += a * b;
            sxx += a * a;
            syy += b * b;
        }
        let corr = sxy / (sxx * syy).sqrt();
        assert!(corr > 0.5, "cross-modal similarity correlation {corr}");
    }

    #[test]
    fn mean_r1_counts_ties_against() {
        let s = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.5, 0.5]).unwrap();
        // i2t: row 0 correct, row 1 tie -> wrong; t2i: col 0 correct (1 > 0.5), col 1 (0.5 vs 0.0) correct
        assert!((mean_r1(&s) - 0.75).abs() < 1e-12);
    }
}
