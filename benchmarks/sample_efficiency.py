"""Samples per input and certified accuracy: fixed N, staged, sequential, and Voráček & Hein's test.

Usage::

    python benchmarks/sample_efficiency.py [--models insurance,digits] [--repeats 4] [--engine-limit 100]
                                           [--json PATH]

Part 1, simulation on the model's own class probabilities (as the issue's anchor does): an engine
run at N = 10,000 per (model, σ) estimates each test input's class probabilities p̂. Each input then
gets ``--repeats`` Bernoulli(p̂) streams of 100,000 samples, and every method reads the *same*
streams: fixed-N CERTIFY (one-sided Clopper–Pearson at N = 100,000), staged (looks at 100, 1k,
10k, 100k, each at α/4), ours (the beta-binomial mixture confidence sequence at α, looks every 32
samples growing by LOOK_GROWTH, 1.02×), and Voráček & Hein's test as published (Jeffreys/KT mixture likelihood
ratio at level α/2 per side, checked after every single sample, against the true label). "with
selection" first draws n0 = 100 selection samples from p̂ (multinomial), tests the selected class
and charges the 100 samples; "against label" tests the true label's probability.

Part 2, the engine: ``rpdist.certify`` sequential runs at max N = 100,000 on the first
``--engine-limit`` test inputs of the insurance MLP at σ = 0.5, against a fixed-N run at N =
100,000 on the same inputs: mean samples per input and wall-clock seconds, so that "time follows
samples" is measured end to end on the replicas.

α = 0.001 and r ∈ {0.25σ, 0.5σ, σ} throughout; each r is its own run (one target radius).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
from scipy.special import betaln
from scipy.stats import norm

from rpdist.smoothing import sequential as seq
from rpdist.smoothing import stats

ALPHA, MAX_N, N0, PILOT = 0.001, 100_000, 100, 10_000
GROWTH = seq.LOOK_GROWTH
BLOCK = FIRST = 32  # the sequential noise block and first look (set by look_growth.py)
MULTIPLES = (0.25, 0.5, 1.0)
SIGMAS = {"insurance": (0.5, 1.0), "digits": (0.25, 0.5)}


def pilot(name: str, sigma: float):
    """Per-input class probabilities p̂ [inputs, classes] and labels from an N = 10,000 engine run."""
    import rpdist

    data = rpdist.load_dataset(name, split="test")
    model = rpdist.default_model(name, train_sigma=sigma)
    df = rpdist.certify(model, data.X, data.y, sigma=sigma, n=PILOT, alpha=ALPHA)
    counts = np.stack(df["counts"].to_numpy()).astype(np.float64)
    return counts / counts.sum(axis=1, keepdims=True), data.y, data, model


def _first_hit(hit: np.ndarray) -> np.ndarray:
    """Index of the first True per row, -1 if none."""
    first = hit.argmax(axis=1)
    return np.where(hit[np.arange(len(hit)), first], first, -1)


def simulate_methods(p_hat: np.ndarray, labels: np.ndarray, sigma: float, repeats: int, seed: int = 0) -> dict:
    """Mean samples and certified accuracy per (method, r, selection) on shared Bernoulli streams."""
    rng = np.random.default_rng(seed)
    looks = np.asarray(seq.look_points(MAX_N, BLOCK, seq.SEQUENTIAL, FIRST, GROWTH))
    stages = np.asarray(seq.look_points(MAX_N, 100, seq.STAGED))
    results: dict = {}
    for selection in (False, True):
        tops, correct, ps = [], [], []
        for _ in range(repeats):
            if selection:
                draws = np.stack([rng.multinomial(N0, row) for row in p_hat])
                top = draws.argmax(axis=1)
            else:
                top = labels.copy()
            tops.append(top)
            correct.append(top == labels)
            ps.append(p_hat[np.arange(len(top)), top])
        p = np.concatenate(ps)
        correct = np.concatenate(correct)
        extra = N0 if selection else 0
        outcome = {m: {r: {"samples": np.zeros(len(p)), "certified": np.zeros(len(p), bool)} for r in MULTIPLES}
                   for m in ("fixed", "staged", "sequential", "voracek_hein")}
        ns = np.arange(1, MAX_N + 1, dtype=np.float64)
        for start in range(0, len(p), 16):
            rows = slice(start, start + 16)
            path = np.cumsum(rng.random((len(p[rows]), MAX_N)) < p[rows, None], axis=1, dtype=np.int32)
            mixture = betaln(0.5 + path, 0.5 + ns[None, :] - path) - betaln(0.5, 0.5)  # shared by every r
            for r in MULTIPLES:
                theta = float(norm.cdf(r))  # r is in units of σ
                # fixed N: Clopper–Pearson at N
                k = path[:, -1]
                outcome["fixed"][r]["samples"][rows] = MAX_N
                outcome["fixed"][r]["certified"][rows] = stats.cp_lower(k, MAX_N, ALPHA) > theta
                for method, points, mode in (("staged", stages, seq.STAGED), ("sequential", looks, seq.SEQUENTIAL)):
                    kk = path[:, points - 1]
                    dec = np.stack([seq.decide(kk[:, j], points[j], [r * sigma], sigma, ALPHA, mode, len(points))[:, 0]
                                    for j in range(len(points))], axis=1)
                    first = _first_hit(dec != 0)
                    idx = np.where(first >= 0, first, len(points) - 1)
                    outcome[method][r]["samples"][rows] = points[idx]
                    outcome[method][r]["certified"][rows] = dec[np.arange(len(idx)), idx] == 1
                # Voráček & Hein: every sample, Jeffreys mixture LR ≥ 2/α (α/2 per side)
                level = math.log(2 / ALPHA)
                loglik = path * math.log(theta) + (ns[None, :] - path) * math.log1p(-theta)
                lm = mixture - loglik >= level
                first = _first_hit(lm)
                idx = np.where(first >= 0, first, MAX_N - 1)
                outcome["voracek_hein"][r]["samples"][rows] = idx + 1
                outcome["voracek_hein"][r]["certified"][rows] = (first >= 0) & (path[np.arange(len(idx)), idx]
                                                                               > theta * (idx + 1))
        for method, per_r in outcome.items():
            for r, o in per_r.items():
                results[(method, r, selection)] = {
                    "mean_samples": float(o["samples"].mean() + extra),
                    "median_samples": float(np.median(o["samples"]) + extra),
                    "certified_accuracy": float((o["certified"] & correct).mean()),
                }
    return results


def engine(data, model, sigma: float, limit: int) -> dict:
    """End to end on the replicas: sequential runs per r (against the label and with selection) and one
    fixed-N run at 100,000, on the first ``limit`` test inputs; mean samples and wall seconds."""
    import rpdist

    X, y = data.X[:limit], data.y[:limit]
    out = {}
    rpdist.certify(model, X[:4], y[:4], sigma=sigma, n=1000)  # start Ray and the pool outside the clock
    started = time.perf_counter()
    fixed = rpdist.certify(model, X, y, sigma=sigma, n=MAX_N, alpha=ALPHA)
    out["fixed"] = {"seconds": time.perf_counter() - started, "mean_samples": N0 + MAX_N,
                    "certified_accuracy": {m: float(((fixed["radius"] >= m * sigma) & fixed["correct"]).mean())
                                           for m in MULTIPLES}}
    for label in (True, False):
        for mode in (seq.SEQUENTIAL, seq.STAGED):
            for m in MULTIPLES:
                started = time.perf_counter()
                df = rpdist.certify(model, X, y, sigma=sigma, alpha=ALPHA, target_radius=[m * sigma], max_n=MAX_N,
                                    mode=mode, against_label=label)
                seconds = time.perf_counter() - started
                used = df["samples_used"].to_numpy() + (0 if label else N0)
                out[f"{mode}/{'label' if label else 'selection'}/{m}"] = {
                    "seconds": seconds, "mean_samples": float(used.mean()),
                    "certified_accuracy": float(((df["decision"] == "certified") & df["correct"]).mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="insurance")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--engine-limit", type=int, default=100, help="0: skip the engine part")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    report = {}
    for name in args.models.split(","):
        for sigma in SIGMAS[name]:
            p_hat, labels, data, model = pilot(name, sigma)
            sim = simulate_methods(p_hat, labels, sigma, args.repeats)
            print(f"\n{name} σ={sigma:g}: {len(labels)} test inputs × {args.repeats} streams, α={ALPHA}, max N={MAX_N:,}")
            print("| selection | r | fixed N | staged | sequential (ours) | Voráček & Hein (per sample, α/2) |")
            print("|---|---|---|---|---|---|")
            for selection in (False, True):
                for m in MULTIPLES:
                    cells = []
                    for method in ("fixed", "staged", "sequential", "voracek_hein"):
                        o = sim[(method, m, selection)]
                        cells.append(f"{o['mean_samples']:,.0f} ({o['median_samples']:,.0f}) · "
                                     f"{100 * o['certified_accuracy']:.1f}%")
                    print(f"| {'n0=100' if selection else 'label'} | {m:g}σ | " + " | ".join(cells) + " |")
            report[f"{name}/{sigma}"] = {f"{k[0]}/{k[1]}/{'selection' if k[2] else 'label'}": v for k, v in sim.items()}
            if args.engine_limit and name == "insurance" and sigma == 0.5:
                eng = engine(data, model, sigma, args.engine_limit)
                report[f"{name}/{sigma}/engine"] = eng
                print(f"\nengine, first {args.engine_limit} inputs: " + json.dumps(eng, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
