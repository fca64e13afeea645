"""How many rows a CPU replica should pass to the model per call: the certification kernel, side by side.

Usage::

    python benchmarks/cpu_batch.py [--rows 256,512,1024,2048] [--repeats 5] [--models insurance,digits,mnist5k]

For each built-in model (σ = 0.5, noise block 1,000, default batch 4,096 packed to 4,000, one thread, as a
replica runs) a :class:`rpdist.smoothing.votes.VoteCounter` counts the estimation samples of three test
inputs (N = 10,000; 4,000 on mnist5k) with the packed batch passed to the model whole and in slices of
each ``--rows``, interleaved in alternating order within every repeat. It prints each setting's speed
relative to the whole batch as the median [min–max] over repeats, and checks that the counts are
bit-identical in every setting (the slices change the model calls, never the noise or the packing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from rpdist.datasets.catalog import load_dataset
from rpdist.distributed.pool import CPU_BATCH
from rpdist.models.zoo import default_model
from rpdist.smoothing.noise import DEFAULT_BLOCK, Phase
from rpdist.smoothing.votes import VoteCounter

SIGMA = 0.5
WHOLE = None


def measure(name: str, rows: list[int], repeats: int) -> None:
    data = load_dataset(name, split="test")
    counter = VoteCounter(default_model(name, train_sigma=SIGMA), "cpu")
    X, ids = data.X[:3], data.input_ids[:3]
    n = 4000 if name == "mnist5k" else 10_000
    settings = [WHOLE, *rows]

    def count(forward_rows) -> np.ndarray:
        counter.forward_rows = forward_rows
        return counter.count(X, ids, phase=Phase.ESTIMATION, n=n, block_start=0, block_stop=n // DEFAULT_BLOCK,
                             sigma=SIGMA, seed=0, block_size=DEFAULT_BLOCK, batch_size=CPU_BATCH,
                             num_classes=data.num_classes)

    whole = count(WHOLE)  # also the warm-up
    identical = all(np.array_equal(count(r), whole) for r in rows)
    seconds: dict = {r: [] for r in settings}
    for repeat in range(repeats):
        for r in settings if repeat % 2 else settings[::-1]:
            started = time.perf_counter()
            count(r)
            seconds[r].append(time.perf_counter() - started)
    cells = []
    for r in rows:
        speed = [w / s for w, s in zip(seconds[WHOLE], seconds[r])]
        cells.append(f"{r}: {statistics.median(speed):.2f} [{min(speed):.2f}–{max(speed):.2f}]")
    print(f"{name}: speed ÷ whole {CPU_BATCH}-row batch, by rows per call  " + "  ".join(cells)
          + f"  (counts identical: {identical})", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="256,512,1024,2048")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="insurance,digits,mnist5k")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for model in args.models.split(","):
        measure(model, sorted({int(r) for r in args.rows.split(",")}), args.repeats)
