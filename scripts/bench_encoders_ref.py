#!/usr/bin/env python3
"""Reference throughput for `sotalign bench encoders`: the same two encoders in plain numpy.

An independent implementation (numpy + OpenBLAS), reading the same fetched files:
EfficientNet-Lite0 from the legacy .pth (own unpickler, honouring strides) and all-MiniLM-L6-v2
from model.safetensors (header parsed by hand). It checks itself against the golden features
before timing, then prints one JSON line: images/s and texts/s at the requested batch.

Usage: python bench_encoders_ref.py --assets DIR --golden DIR --batch 32 --images N --texts N
(needs numpy only; `sotalign bench encoders --reference` creates a venv with it).
"""
import argparse, json, math, pickle, struct, sys, time
import numpy as np


# ---------------------------------------------------------------- EfficientNet-Lite0
def load_pth(path):
    f = open(path, "rb")
    for _ in range(3):
        pickle.load(f)  # magic, protocol, sys info

    class U(pickle.Unpickler):
        def persistent_load(self, pid):
            return pid  # ('storage', type, key, location, numel, view)

        def find_class(self, mod, name):
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return lambda storage, off, size, stride, *rest: ("T", storage, off, size, stride)
            if mod == "torch":
                return name
            return super().find_class(mod, name)

    sd = U(f).load()
    keys = pickle.load(f)
    dtypes = {"FloatStorage": np.float32, "LongStorage": np.int64}
    kinds = {v[1][2]: v[1][1] for v in sd.values()}
    data = {}
    for k in keys:
        (n,) = struct.unpack("<q", f.read(8))
        dt = np.dtype(dtypes[kinds[k]])
        data[k] = np.frombuffer(f.read(n * dt.itemsize), dtype=dt)
    out = {}
    for name, (_, st, off, size, stride) in sd.items():
        buf = data[st[2]]
        out[name] = np.lib.stride_tricks.as_strided(
            buf[off:], shape=size, strides=[s * buf.itemsize for s in stride]
        ).copy()
    return out


def same_pad(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class EffNet:
    def __init__(self, sd):
        def bn(p, c):
            scale = sd[p + ".weight"] / np.sqrt(sd[p + ".running_var"] + 1e-3)
            return scale.astype(np.float32), (sd[p + ".bias"] - sd[p + ".running_mean"] * scale).astype(np.float32)

        s, b = bn("_bn0", 32)
        self.stem = (sd["_conv_stem.weight"] * s[:, None, None, None], b)
        self.blocks = []
        cin, stage, i = 32, 0, 0
        strides = [1, 2, 2, 2, 1, 2, 1]
        while f"_blocks.{i}._depthwise_conv.weight" in sd:
            p = f"_blocks.{i}."
            exp = None
            if p + "_expand_conv.weight" in sd:
                s, b = bn(p + "_bn0", 0)
                exp = (sd[p + "_expand_conv.weight"][:, :, 0, 0] * s[:, None], b)
            dw = sd[p + "_depthwise_conv.weight"]
            s, b = bn(p + "_bn1", 0)
            dwf = (dw[:, 0] * s[:, None, None], b)
            s, b = bn(p + "_bn2", 0)
            pw = sd[p + "_project_conv.weight"][:, :, 0, 0] * s[:, None]
            cout = pw.shape[0]
            opens = cout != cin or i == 0
            if opens and i > 0:
                stage += 1
            stride = strides[stage] if opens else 1
            self.blocks.append((exp, dwf, (pw, b), stride, stride == 1 and cin == cout))
            cin, i = cout, i + 1
        s, b = bn("_bn1", 0)
        self.head = (sd["_conv_head.weight"][:, :, 0, 0] * s[:, None], b)

    @staticmethod
    def pw(x, wb):  # x (n, c, h, w)
        w, b = wb
        n, c, h, ww = x.shape
        y = np.matmul(w, x.reshape(n, c, h * ww)) + b[None, :, None]
        return y.reshape(n, -1, h, ww)

    @staticmethod
    def dw(x, wb, s):
        w, b = wb
        n, c, h, ww = x.shape
        k = w.shape[-1]
        pt, pb = same_pad(h, k, s)
        pl, pr = same_pad(ww, k, s)
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        oh, ow = -(-h // s), -(-ww // s)
        y = np.zeros((n, c, oh, ow), np.float32)
        for ky in range(k):
            for kx in range(k):
                y += xp[:, :, ky:ky + s * oh:s, kx:kx + s * ow:s] * w[None, :, ky, kx, None, None]
        return y + b[None, :, None, None]

    def features(self, x):
        w, b = self.stem
        n, _, h, ww = x.shape
        pt, pb = same_pad(h, 3, 2)
        pl, pr = same_pad(ww, 3, 2)
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        oh, ow = -(-h // 2), -(-ww // 2)
        cols = np.stack([xp[:, :, ky:ky + 2 * oh:2, kx:kx + 2 * ow:2] for ky in range(3) for kx in range(3)], 2)
        cols = cols.reshape(n, 27, oh * ow)  # (c, ky, kx) order matches w.reshape(32, 27)
        y = np.matmul(w.reshape(32, 27), cols) + b[None, :, None]
        x = np.clip(y.reshape(n, 32, oh, ow), 0, 6)
        for exp, dwf, pw, s, res in self.blocks:
            h = x
            if exp is not None:
                h = np.clip(self.pw(h, exp), 0, 6)
            h = np.clip(self.dw(h, dwf, s), 0, 6)
            h = self.pw(h, pw)
            x = h + x if res else h
        x = np.clip(self.pw(x, self.head), 0, 6)
        return x.mean(axis=(2, 3))


# ---------------------------------------------------------------- MiniLM
def load_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        out[k] = np.frombuffer(raw[base + a:base + b], dtype=dt).reshape(v["shape"])
    return out


def gelu(x):  # erf GELU; math.erf vectorised through numpy's frompyfunc is slow, use the identity
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def erf(x):  # Abramowitz-Stegun 7.1.26 (|err| < 1.5e-7), vectorised
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-a * a)
    return (s * y).astype(np.float32)


def layer_norm(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b


class MiniLM:
    def __init__(self, w, layers=6, heads=12):
        self.w, self.layers, self.heads = w, layers, heads

    def forward(self, ids, mask):
        w = self.w
        n, L = ids.shape
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L][None] \
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        d = x.shape[-1]
        hd = d // self.heads
        bias = ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]
            q = lin(x, "attention.self.query").reshape(n, L, self.heads, hd).transpose(0, 2, 1, 3)
            k = lin(x, "attention.self.key").reshape(n, L, self.heads, hd).transpose(0, 2, 3, 1)
            v = lin(x, "attention.self.value").reshape(n, L, self.heads, hd).transpose(0, 2, 1, 3)
            a = q @ k / math.sqrt(hd) + bias
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(0, 2, 1, 3).reshape(n, L, d)
            x = layer_norm(lin(ctx, "attention.output.dense") + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = gelu(lin(x, "intermediate.dense"))
            x = layer_norm(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        return (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", required=True)
    ap.add_argument("--golden", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--text-tokens", type=int, default=10, help="tokens per caption incl. [CLS]/[SEP]")
    ap.add_argument("--check-input", help=".npy (1, 3*224*224): preprocessed golden/chelsea.png to verify features")
    args = ap.parse_args()
    golden = json.load(open(f"{args.golden}/minilm.json"))
    geff = json.load(open(f"{args.golden}/effnet_lite0.json"))

    # Text: check on the golden ids, then time batches of fixed-length random ids.
    lm = MiniLM(load_safetensors(f"{args.assets}/minilm/model.safetensors"))
    it = golden["items"][0]
    ids = np.array([it["token_ids"]])
    e = lm.forward(ids, np.ones(ids.shape, np.float32))[0]
    text_cos = cosine(e, np.array(it["embedding"], np.float32))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(args.batch, args.text_tokens))
    mask = np.ones(ids.shape, np.float32)
    lm.forward(ids, mask)
    t0, done = time.perf_counter(), 0
    while done < args.texts:
        lm.forward(ids, mask)
        done += args.batch
    texts_per_s = done / (time.perf_counter() - t0)

    # Image: verify on the golden cat (input preprocessed by the caller, no PIL here), then time.
    net = EffNet(load_pth(f"{args.assets}/effnet-lite0/efficientnet-lite0-57934424.pth"))
    image_cos = None
    if args.check_input:
        inp = np.load(args.check_input).reshape(1, 3, 224, 224).astype(np.float32)
        g = [i for i in geff["items"] if i["image"] == "chelsea.png"][0]
        image_cos = cosine(net.features(inp)[0], np.array(g["feature"], np.float32))
    x = rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32) * 0.5
    t0, done = time.perf_counter(), 0
    while done < args.images:
        net.features(x)
        done += args.batch
    images_per_s = done / (time.perf_counter() - t0)
    print(json.dumps({"impl": f"numpy {np.__version__}", "images_per_s": images_per_s, "texts_per_s": texts_per_s,
                      "text_tokens": args.text_tokens, "batch": args.batch, "golden_text_cosine": text_cos, "golden_image_cosine": image_cos}))


if __name__ == "__main__":
    sys.exit(main())
