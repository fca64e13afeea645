"""Does a replica's vote count cost more at small σ? Counting time at each σ against σ = 1, side by side in one run.

Usage::

    python benchmarks/sigma_forward.py [--rounds 7] [--n 10000] [--images 4]

On the mnist5k attack's own parts (the target CNN and decoded draws of the public VAE's prior, both
from the role-model cache, trained on first use) it times one replica's ``VoteCounter.count`` of
PREDICT's noise blocks at σ ∈ {0.1, 0.25, 0.5, 1} on one thread, the σ order rotated round by round.
It prints, per σ, the median [min–max] over rounds of the ratio time(σ) ÷ time(σ = 1) within the
round, and the spread of σ = 1's own times across rounds (max ÷ min). The mnist5k attack points
at N = 10,000 took 43 to 120 min for the same 2.0 × 10⁸ forward passes at different σ; ratios near 1
mean that σ did not set those times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prior_abstention import prior_images  # noqa: E402  (a sibling script: python puts benchmarks/ on the path)

from rpdist.attacks import roles  # noqa: E402
from rpdist.smoothing.noise import DEFAULT_BLOCK, Phase, num_blocks  # noqa: E402
from rpdist.smoothing.votes import VoteCounter  # noqa: E402

SIGMAS = (0.1, 0.25, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = prior_images("mnist5k", args.images, seed=0)
    counter = VoteCounter(roles.target_model(dataset="mnist5k"), "cpu")
    ids = np.arange(args.images, dtype=np.int64)
    blocks = num_blocks(args.n, DEFAULT_BLOCK)
    seconds: dict[float, list[float]] = {s: [] for s in SIGMAS}
    for r in range(args.rounds):
        for s in SIGMAS[r % len(SIGMAS):] + SIGMAS[: r % len(SIGMAS)]:
            start = time.perf_counter()
            counter.count(x, ids, phase=Phase.PREDICT, n=args.n, block_start=0, block_stop=blocks, sigma=s,
                          seed=r, block_size=DEFAULT_BLOCK, batch_size=4 * DEFAULT_BLOCK, num_classes=10)
            seconds[s].append(time.perf_counter() - start)
    print(f"{args.images} images x N = {args.n:,} per count, {args.rounds} rounds, one thread")
    print("| σ | time ÷ time at σ = 1, same round: median [min–max] |")
    print("|---|---|")
    for s in SIGMAS:
        ratios = [a / b for a, b in zip(seconds[s], seconds[1.0])]
        print(f"| {s:g} | {statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}] |")
    ones = seconds[1.0]
    print(f"σ = 1 across rounds: slowest ÷ fastest = {max(ones) / min(ones):.2f}")


if __name__ == "__main__":
    main()
