"""Where one small ``rpdist.certify`` call spends its driver time: cProfile of a warm call.

Usage::

    python benchmarks/certify_profile.py [--inputs 48] [--n 10000] [--top 20]

The insurance MLP (σ = 0.5, n0 = 100, one worker), its first ``--inputs`` test rows. The pool is started
and the call repeated twice (the second finds the release-privacy columns remembered), then, with them
forgotten, one call runs under cProfile as a fresh audit would; the table is sorted by cumulative time.
Used for the README's account of throughput ratio 1b (the per-input release-privacy columns).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import rpdist  # noqa: E402
from rpdist.datasets.catalog import load_dataset  # noqa: E402
from rpdist.models.zoo import default_model  # noqa: E402
from rpdist.privacy import per_input  # noqa: E402

SIGMA, N0 = 0.5, 100

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=48)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    data = load_dataset("insurance", split="test")
    ref = default_model("insurance", train_sigma=SIGMA)
    X, y, ids = data.X[: args.inputs], data.y[: args.inputs], data.input_ids[: args.inputs]

    def call():
        return rpdist.certify(ref, X, y, sigma=SIGMA, n0=N0, n=args.n, alpha=0.001, workers=1, input_ids=ids)

    for _ in range(2):
        started = time.perf_counter()
        call()
        print(f"warm-up call: {time.perf_counter() - started:.2f} s")
    per_input.forget()
    profile = cProfile.Profile()
    profile.enable()
    call()
    profile.disable()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
