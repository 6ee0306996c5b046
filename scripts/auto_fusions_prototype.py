"""numpy prototype behind `auto`'s fusion candidates (docs/RESULTS.md, "How this was arrived at").

Re-implements the closed-form methods of tests/fixtures/reference/PROTOCOL.md (Procrustes, ridge
CCA, ASIF, centred ASIF) and spread-normalised score fusions of them, then prints
  1. each method's and fusion's mean test R@1 per pair budget (3 seeds), and
  2. what choosing among fusions by 5-fold validation on the pairs gives, for 5 fold assignments.
Part 1 looks at the test split on purpose: it is the exploration that picked the candidate set,
reported as such. Part 2's choices use the paired rows only.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install numpy
    /tmp/v/bin/python scripts/auto_fusions_prototype.py      # about 5 min on 2 cores
"""
import json
import os

import numpy as np

REF = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "reference")
X = np.load(os.path.join(REF, "tuxpaint_img.npy")).astype(np.float64)
Y = np.load(os.path.join(REF, "tuxpaint_txt.npy")).astype(np.float64)
X /= np.linalg.norm(X, axis=1, keepdims=True)
Y /= np.linalg.norm(Y, axis=1, keepdims=True)
CAPS = [r["caption"] for r in json.load(open(os.path.join(REF, "tuxpaint_index.json")))["rows"]]
SPLITS = json.load(open(os.path.join(REF, "tuxpaint_splits.json")))
TEST = np.array(SPLITS["test"])
BUDGETS = [25, 50, 100, 200, 400]


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(w)) @ v.T


def procrustes(xp, yp, xall, yall):
    mx, my = xall.mean(0), yall.mean(0)
    u, s, vt = np.linalg.svd((xp - mx).T @ (yp - my), full_matrices=False)
    r = int((s > 1e-6 * s[0]).sum())
    q = u[:, :r] @ vt[:r]
    return lambda x, y: unit((x - mx) @ q) @ unit(y - my).T


def cca(xp, yp, lam=0.1):
    mx, my, n = xp.mean(0), yp.mean(0), len(xp)
    zx, zy = xp - mx, yp - my
    ax = inv_sqrt(zx.T @ zx / n + lam * np.eye(zx.shape[1]))
    ay = inv_sqrt(zy.T @ zy / n + lam * np.eye(zy.shape[1]))
    u, s, vt = np.linalg.svd(ax @ (zx.T @ zy / n) @ ay, full_matrices=False)
    k = min(int((s > 1e-6 * s[0]).sum()), n - 1)
    a, b = ax @ u[:, :k], ay @ vt[:k].T
    return lambda x, y: unit((x - mx) @ a) @ unit((y - my) @ b).T


def asif(xp, yp, p=8.0, centre=False, k=800):
    mx = xp.mean(0) if centre else np.zeros(xp.shape[1])
    my = yp.mean(0) if centre else np.zeros(yp.shape[1])
    ax, ay = unit(xp - mx), unit(yp - my)
    k = min(k, len(xp))

    def rel(q, anchors, m):
        c = np.maximum(unit(q - m) @ anchors.T, 0.0)
        if k < c.shape[1]:
            c = np.where(c >= -np.sort(-c, axis=1)[:, k - 1 : k], c, 0.0)
        c = c**p
        nr = np.linalg.norm(c, axis=1, keepdims=True)
        return c / np.where(nr == 0, 1, nr)

    return lambda x, y: rel(x, ax, mx) @ rel(y, ay, my).T


def fuse(parts, xp, yp):
    sds = [f(xp, yp).std() for f in parts]
    return lambda x, y: sum(f(x, y) / sd for f, sd in zip(parts, sds)) / len(parts)


def models(xp, yp, xall, yall):
    m = {
        "procrustes": procrustes(xp, yp, xall, yall),
        "cca": cca(xp, yp),
        "asif": asif(xp, yp),
        "asif_c": asif(xp, yp, centre=True),
    }
    combos = [
        ("procrustes", "cca"), ("cca", "asif_c"), ("cca", "asif"), ("procrustes", "asif_c"),
        ("procrustes", "cca", "asif_c"), ("procrustes", "cca", "asif"),
        ("procrustes", "cca", "asif", "asif_c"),
    ]
    out = dict(m)
    for c in combos:
        out[" + ".join(c)] = fuse([m[k] for k in c], xp, yp)
    return out


CANDIDATES = ["cca + asif_c", "procrustes + cca + asif_c", "procrustes + cca + asif + asif_c"]


def first_correct_rank(s, eq):
    best = np.where(eq, s, -np.inf).max(1, keepdims=True)
    return ((~eq) & (s >= best)).sum(1)


def test_r1(f):
    s = f(X[TEST], Y[TEST])
    c = np.array([CAPS[i] for i in TEST])
    eq = c[:, None] == c[None, :]
    return 50.0 * ((first_correct_rank(s, eq) < 1).mean() + (first_correct_rank(s.T, eq) < 1).mean())


def fold_scores(p, ui, ut, fold_seed, k=5):
    """Mean MRR of each candidate on each fold: held-out pairs among the unpaired pool."""
    perm = np.random.default_rng(1234 + fold_seed).permutation(len(p))
    out = {c: [] for c in CANDIDATES}
    for f in range(k):
        va = np.sort(perm[f * len(p) // k : (f + 1) * len(p) // k])
        tr = np.setdiff1d(np.arange(len(p)), va)
        xp, yp = X[p[tr]], Y[p[tr]]
        ms = models(xp, yp, np.vstack([xp, X[ui]]), np.vstack([yp, Y[ut]]))
        cq = np.array([CAPS[i] for i in p[va]])
        cy = np.concatenate([cq, [CAPS[i] for i in ut]])
        eq_i2t = cq[:, None] == cy[None, :]
        eq_t2i = np.zeros((len(va), len(va) + len(ui)), bool)
        eq_t2i[:, : len(va)] = cq[:, None] == cq[None, :]
        xg, yg = np.vstack([X[p[va]], X[ui]]), np.vstack([Y[p[va]], Y[ut]])
        for c in CANDIDATES:
            i2t = (1.0 / (1 + first_correct_rank(ms[c](X[p[va]], yg), eq_i2t))).mean()
            t2i = (1.0 / (1 + first_correct_rank(ms[c](xg, Y[p[va]]).T, eq_t2i))).mean()
            out[c].append((i2t + t2i) / 2)
    return out


def main():
    test, chosen = {}, {}
    for n in BUDGETS:
        for seed in range(3):
            run = SPLITS["runs"][f"{seed}_{n}"]
            p, ui, ut = (np.array(run[k]) for k in ("paired", "unpaired_img", "unpaired_txt"))
            xp, yp = X[p], Y[p]
            ms = models(xp, yp, np.vstack([xp, X[ui]]), np.vstack([yp, Y[ut]]))
            for name, f in ms.items():
                test.setdefault(name, {}).setdefault(n, []).append(test_r1(f))
            for fs in range(5):
                v = fold_scores(p, ui, ut, fs)
                pick = max(CANDIDATES, key=lambda c: np.mean(v[c]))
                chosen.setdefault(fs, {}).setdefault(n, []).append(test[pick][n][-1])
        print(f"n = {n} done", flush=True)
    singles = ["procrustes", "cca", "asif", "asif_c"]
    best = {n: max(np.mean(test[m][n]) for m in singles) for n in BUDGETS}
    print("\n1. mean test R@1 (percent, 3 seeds); last column: worst difference to the best single")
    print(f"{'method':36s}" + "".join(f"{n:>8d}" for n in BUDGETS))
    for name, v in test.items():
        means = [np.mean(v[n]) for n in BUDGETS]
        worst = min(m - best[n] for m, n in zip(means, BUDGETS))
        print(f"{name:36s}" + "".join(f"{m:8.2f}" for m in means) + f"   {worst:+.2f}")
    print("\n2. argmax of 5-fold validation among the three fusions: test R@1 minus the best single")
    for fs, per_n in chosen.items():
        print(f"fold assignment {fs}: " + " ".join(f"{np.mean(per_n[n]) - best[n]:+.2f}" for n in BUDGETS))


if __name__ == "__main__":
    main()
