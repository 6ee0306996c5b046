#!/usr/bin/env python3
"""Reference KLOT step (two log-domain Sinkhorns + KL + gradient) in numpy and jax-jit.

The same computation as the Rust `klot_step` criterion benchmark (daemon/benches/align.rs):
cosine affinities of random unit vectors (dim 64), eps_s = 0.05, eps_t = 0.01, 100 iterations
of (u then v) in the log domain, then the symmetric finish u <- (u + u_next) / 2, then
KL(P* || P) and (P - P*) / eps_s. f32 throughout, as in the Rust code.

Usage: bench_reference.py [--sizes 256,1024,2048,4096] [--numpy-max 2048] [--reps 3]
                          [--criterion target/criterion] [--json out.json]
With --criterion, reads the Rust timings criterion wrote in the same run and prints the
ratio table for docs/BENCHMARKS.md.

--cca-fixtures DIR also times the ridge-CCA teacher fit (the Rust `cca_fit/n` benchmark) in
numpy f64 on the first n rows of the Tux Paint embeddings: L2-normalise, centre on the pair
means, C + 0.1 I, inverse square roots by eigh of the d x d covariances, SVD of the whitened
cross-covariance, projections of the components with S > 1e-6 S_1 (at most n - 1).
"""
import argparse
import json
import os
import platform
import time

import numpy as np

EPS_S, EPS_T, ITERS, DIM = 0.05, 0.01, 100, 64


def affinity(rng, b):
    x = rng.standard_normal((b, DIM)).astype(np.float32)
    y = rng.standard_normal((b, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x @ y.T


# ---- numpy ----
def np_lse(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_sinkhorn(k, eps, iters):
    n, m = k.shape
    la, lb = np.float32(-np.log(n)), np.float32(-np.log(m))
    eps = np.float32(eps)
    f = np.zeros(n, np.float32)
    g = np.zeros(m, np.float32)
    for _ in range(iters):
        f = eps * la - eps * np_lse((k + g[None, :]) / eps, 1)
        g = eps * lb - eps * np_lse((k + f[:, None]) / eps, 0)
    fn = eps * la - eps * np_lse((k + g[None, :]) / eps, 1)
    return 0.5 * (f + fn), g


def np_klot(ks, kt):
    fs, gs = np_sinkhorn(ks, EPS_S, ITERS)
    ft, gt = np_sinkhorn(kt, EPS_T, ITERS)
    lp = (ks + fs[:, None] + gs[None, :]) / np.float32(EPS_S)
    lq = (kt + ft[:, None] + gt[None, :]) / np.float32(EPS_T)
    q = np.exp(lq)
    kl = float((q * (lq - lp)).sum(dtype=np.float64))
    grad = (np.exp(lp) - q) / np.float32(EPS_S)
    return kl, grad


# ---- jax ----
def make_jax():
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    def sinkhorn(k, eps, iters):
        n, m = k.shape
        la, lb = -jnp.log(n).astype(jnp.float32), -jnp.log(m).astype(jnp.float32)

        def body(_, fg):
            f, g = fg
            f = eps * la - eps * logsumexp((k + g[None, :]) / eps, axis=1)
            g = eps * lb - eps * logsumexp((k + f[:, None]) / eps, axis=0)
            return f, g

        f, g = jax.lax.fori_loop(0, iters, body, (jnp.zeros(n, jnp.float32), jnp.zeros(m, jnp.float32)))
        fn = eps * la - eps * logsumexp((k + g[None, :]) / eps, axis=1)
        return 0.5 * (f + fn), g

    @jax.jit
    def klot(ks, kt):
        fs, gs = sinkhorn(ks, EPS_S, ITERS)
        ft, gt = sinkhorn(kt, EPS_T, ITERS)
        lp = (ks + fs[:, None] + gs[None, :]) / EPS_S
        lq = (kt + ft[:, None] + gt[None, :]) / EPS_T
        q = jnp.exp(lq)
        return jnp.sum(q * (lq - lp)), (jnp.exp(lp) - q) / EPS_S

    def run(ks, kt):
        kl, grad = klot(ks, kt)
        grad.block_until_ready()
        return float(kl), grad

    return run, jax.__version__


# ---- ridge-CCA teacher (numpy, f64) ----
def np_cca_fit(x, y, lam=0.1, rel_tol=1e-6):
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    n = x.shape[0]
    zx = x - x.mean(0)
    zy = y - y.mean(0)

    def inv_sqrt(z):
        c = z.T @ z / n + lam * np.eye(z.shape[1])
        w, v = np.linalg.eigh(c)
        return (v / np.sqrt(w)) @ v.T

    ix, iy = inv_sqrt(zx), inv_sqrt(zy)
    t = ix @ (zx.T @ zy / n) @ iy
    u, sv, vt = np.linalg.svd(t, full_matrices=False)
    k = min(int((sv > rel_tol * sv[0]).sum()), n - 1)
    return ix @ u[:, :k], iy @ vt[:k].T, sv[:k]


def criterion_group_estimate(root, group, key):
    path = os.path.join(root, group, str(key), "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)["median"]["point_estimate"] / 1e9


def best_of(fn, reps):
    times = []
    out = None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times)), out


def criterion_estimate(root, b):
    path = os.path.join(root, "klot_step", str(b), "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        est = json.load(fh)
    return est["median"]["point_estimate"] / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,1024,2048,4096")
    ap.add_argument("--numpy-max", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--criterion", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cca-fixtures", default=None)
    ap.add_argument("--cca-sizes", default="100,400")
    ap.add_argument("--skip-klot", action="store_true")
    args = ap.parse_args()
    sizes = [] if args.skip_klot else [int(s) for s in args.sizes.split(",")]
    jax_run, jax_version = make_jax()
    rng = np.random.default_rng(0)
    rows = []
    for b in sizes:
        ks, kt = affinity(rng, b), affinity(rng, b)
        jax_run(ks, kt)  # compile
        jt_min, jt_med, (jkl, _) = best_of(lambda: jax_run(ks, kt), args.reps)
        row = {"B": b, "jax_s": jt_min, "jax_median_s": jt_med, "jax_kl": jkl}
        if b <= args.numpy_max:
            nt_min, nt_med, (nkl, _) = best_of(lambda: np_klot(ks, kt), max(1, args.reps - 1))
            row.update({"numpy_s": nt_min, "numpy_median_s": nt_med, "numpy_kl": nkl})
        if args.criterion:
            row["rust_s"] = criterion_estimate(args.criterion, b)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "jax": jax_version,
    }
    print(json.dumps(meta))
    print()
    print("| B | Rust (criterion median) | jax-jit (best of %d) | numpy | jax / Rust | numpy / Rust |" % args.reps)
    print("|---|---|---|---|---|---|")
    for r in rows:
        rust = r.get("rust_s")
        def fmt(v):
            return "-" if v is None else ("%.1f ms" % (v * 1e3) if v < 1 else "%.2f s" % v)
        ratio_j = "-" if not rust else "%.1fx" % (r["jax_s"] / rust)
        ratio_n = "-" if not rust or "numpy_s" not in r else "%.1fx" % (r["numpy_s"] / rust)
        print("| %d | %s | %s | %s | %s | %s |" % (r["B"], fmt(rust), fmt(r["jax_s"]), fmt(r.get("numpy_s")), ratio_j, ratio_n))
    cca_rows = []
    if args.cca_fixtures:
        xi = np.load(os.path.join(args.cca_fixtures, "tuxpaint_img.npy"))
        yt = np.load(os.path.join(args.cca_fixtures, "tuxpaint_txt.npy"))
        print()
        print("| n | Rust cca_fit (criterion median) | numpy f64 (best of %d) | numpy / Rust |" % args.reps)
        print("|---|---|---|---|")
        for n in [int(v) for v in args.cca_sizes.split(",")]:
            t_min, t_med, (_, _, rho) = best_of(lambda: np_cca_fit(xi[:n], yt[:n]), args.reps)
            rust = criterion_group_estimate(args.criterion, "cca_fit", n) if args.criterion else None
            row = {"n": n, "numpy_s": t_min, "numpy_median_s": t_med, "rho0": float(rho[0]), "k": len(rho), "rust_s": rust}
            cca_rows.append(row)
            ratio = "-" if not rust else "%.1fx" % (t_min / rust)
            print("| %d | %s | %s | %s |" % (n, "-" if rust is None else "%.1f ms" % (rust * 1e3), "%.1f ms" % (t_min * 1e3), ratio))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "cca_rows": cca_rows, "meta": meta}, fh, indent=1)


if __name__ == "__main__":
    main()
