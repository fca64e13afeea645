"""Does keyed noise hold against nudged repeats? Agreement of nudged and exact repeats, measured.

Usage::

    python benchmarks/keyed_noise.py [--datasets insurance,digits] [--n 100] [--keys 3] [--boundary 200]
                                     [--json PATH]

For every test input x of each built-in model, and for ``--boundary`` points between two test
inputs where the base classifier's vote under noise is split (where fresh noise flips answers), (σ = the model's training σ), a nudged copy x' is
x moved by δ ∈ {1 ulp per feature, 1e-3σ, 0.1σ} (ℓ2, random direction). Under keyed noise
(a random key per repetition, ``--keys`` of them; all copies in one release call, which keyed
answers do not depend on) the script counts how often the release answers
x' as it answers x, for the PREDICT and majority releases at N = ``--n``, and how often x' leaves
x's grid cell (its noise id changes). "Fresh" is the old behaviour, where a hash of the exact bytes
gave a nudged query fresh noise: the answers to x and x' under independent noise. Intervals are
95% Clopper–Pearson over queries (inputs × keys).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from rpdist.attacks.brep import nudged
from rpdist.datasets.catalog import load_dataset
from rpdist.defenses.releases import KEY_GRID_SIGMAS, KEYED, NoiseKey, SmoothedRelease, keyed_ids
from rpdist.models.zoo import default_model
from rpdist.smoothing.stats import clopper_pearson

SIGMA = {"insurance": 0.5, "digits": 0.25, "mnist5k": 0.25}
NUDGES = (("ulp", None), ("1e-3σ", 1e-3), ("0.1σ", 0.1))


def rate(agree: np.ndarray) -> dict:
    low, high = clopper_pearson(int(agree.sum()), len(agree), 0.05)
    return {"rate": float(agree.mean()), "low": low, "high": high, "queries": int(len(agree))}


def near_boundary(model, X: np.ndarray, sigma: float, count: int, seed: int) -> np.ndarray:
    """Points between two test inputs where the base classifier's vote under N(0, σ²) noise is split
    (top share < 0.7 over 64 draws): the queries where fresh noise changes answers most often."""
    import torch

    rng = np.random.default_rng(seed)
    module = model.load("cpu")
    out = []
    while sum(len(o) for o in out) < count:
        a, b = rng.integers(len(X), size=(2, 256))
        t = rng.random(256).astype(np.float32).reshape(-1, *([1] * (X.ndim - 1)))
        pts = (1 - t) * X[a] + t * X[b]
        noisy = np.repeat(pts, 64, axis=0) + sigma * rng.standard_normal((len(pts) * 64, *X.shape[1:])).astype(np.float32)
        with torch.inference_mode():
            labels = module(torch.from_numpy(noisy)).argmax(1).numpy().reshape(len(pts), 64)
        top = np.array([np.bincount(row).max() for row in labels]) / 64
        out.append(pts[top < 0.7])
    return np.concatenate(out)[:count]


def measure(dataset: str, n: int, keys: int, limit: int | None, boundary: int) -> list[dict]:
    sigma = SIGMA[dataset]
    data = load_dataset(dataset, split="test", limit=limit)
    model = default_model(dataset, train_sigma=sigma)
    sets = {"test inputs": data.X, "near the boundary": near_boundary(model, data.X, sigma, boundary, 0)}
    rows = []
    for queries, X in sets.items():
        flat = X.reshape(len(X), -1)
        m = len(X)
        for release in ("predict", "majority"):
            agree = {name: ([], [], []) for name, _ in NUDGES}
            for r in range(keys):
                rng = np.random.default_rng([r, 7])
                moved = [nudged(flat, 0.0 if f is None else f * sigma, f is None, rng).reshape(X.shape) for _, f in NUDGES]
                allx = np.concatenate([X, *moved])
                key = NoiseKey(os.urandom(32), "random")
                rel = SmoothedRelease(model, sigma, n, release=release, noise=KEYED, key=key, seed=r)
                keyed = rel(allx, np.zeros(len(allx), dtype=np.int64)).reshape(-1, m)  # one answer per image
                kid = keyed_ids(allx, key.secret, rel.grid).reshape(-1, m)
                fresh = SmoothedRelease(model, sigma, n, release=release, seed=r)
                plain = fresh(allx, np.arange(len(allx), dtype=np.int64)).reshape(-1, m)  # a fresh id per query
                for j, (name, _) in enumerate(NUDGES):
                    agree[name][0].append(keyed[0] == keyed[j + 1])
                    agree[name][1].append(kid[0] == kid[j + 1])
                    agree[name][2].append(plain[0] == plain[j + 1])
            for name, (same_answer, same_cell, fresh_same) in agree.items():
                rows.append({"dataset": dataset, "queries": queries, "features": flat.shape[1], "sigma": sigma,
                             "n": n, "release": release, "nudge": name,
                             "keyed_same_answer": rate(np.concatenate(same_answer)),
                             "keyed_same_cell": rate(np.concatenate(same_cell)),
                             "fresh_same_answer": rate(np.concatenate(fresh_same))})
                print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    def f(x):
        return f"{100 * x['rate']:.2f}% [{100 * x['low']:.2f}, {100 * x['high']:.2f}]"
    return (f"{r['dataset']:9s} {r['queries']:17s} {r['release']:8s} δ={r['nudge']:6s} keyed same answer {f(r['keyed_same_answer'])}"
            f"  same cell {f(r['keyed_same_cell'])}  fresh same answer {f(r['fresh_same_answer'])}"
            f"  ({r['keyed_same_answer']['queries']} queries)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="insurance,digits")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--boundary", type=int, default=200, help="near-boundary queries per dataset")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"keyed grid: cells {KEY_GRID_SIGMAS:g}σ wide, secret rotation and offset", flush=True)
    rows = [r for d in args.datasets.split(",") for r in measure(d, args.n, args.keys, args.limit, args.boundary)]
    print(f"{time.perf_counter() - started:.0f}s", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
