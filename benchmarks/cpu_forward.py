"""How a CPU replica should run the model: glibc's allocator defaults or freed memory kept, whole packed
batches or slices of ``CPU_FORWARD_ROWS``; the certification kernel in each setting, side by side.

Usage::

    python benchmarks/cpu_forward.py [--repeats 3] [--models insurance,digits,mnist5k]

Allocator settings are per process and depend on what the process allocated before, so every
measurement runs in a fresh child process: one thread, as a replica runs; a
:class:`rpdist.smoothing.votes.VoteCounter` counts the estimation samples of three test inputs (σ = 0.5,
N = 10,000; 4,000 on mnist5k; batch 4,096 packed to 4,000; noise block 1,000), once untimed, then three
times timed. The four settings run in rotated order within each repeat; each repeat's speeds are divided
by the old setting's (glibc defaults, whole batches), and the table gives the median [min–max] over
repeats. It also checks that the four settings give bit-identical counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time

SETTINGS = (("defaults", "whole"), ("defaults", "slices"), ("kept", "whole"), ("kept", "slices"))
SIGMA, TIMED_CALLS = 0.5, 3


def child(model: str, allocator: str, forward: str) -> None:
    import torch

    from rpdist.datasets.catalog import load_dataset
    from rpdist.distributed.allocator import keep_freed_memory
    from rpdist.distributed.pool import CPU_BATCH
    from rpdist.models.zoo import default_model
    from rpdist.smoothing.noise import DEFAULT_BLOCK, Phase
    from rpdist.smoothing.votes import VoteCounter

    torch.set_num_threads(1)
    if allocator == "kept" and not keep_freed_memory():
        raise SystemExit("this C library has no mallopt: nothing to compare")
    data = load_dataset(model, split="test")
    counter = VoteCounter(default_model(model, train_sigma=SIGMA), "cpu")
    if forward == "whole":
        counter.forward_rows = None
    X, ids = data.X[:3], data.input_ids[:3]
    n = 4000 if model == "mnist5k" else 10_000

    def count():
        return counter.count(X, ids, phase=Phase.ESTIMATION, n=n, block_start=0, block_stop=n // DEFAULT_BLOCK,
                             sigma=SIGMA, seed=0, block_size=DEFAULT_BLOCK, batch_size=CPU_BATCH,
                             num_classes=data.num_classes)

    counts = count()
    started = time.perf_counter()
    for _ in range(TIMED_CALLS):
        count()
    rate = TIMED_CALLS * len(X) * n / (time.perf_counter() - started)
    print(json.dumps({"rate": rate, "counts": hashlib.sha256(counts.tobytes()).hexdigest()}))


def measure(model: str, repeats: int) -> None:
    rates: dict = {s: [] for s in SETTINGS}
    hashes = set()
    for repeat in range(repeats):
        order = SETTINGS[repeat % 4:] + SETTINGS[: repeat % 4]
        for setting in order if repeat % 2 == 0 else order[::-1]:
            out = subprocess.run([sys.executable, __file__, "--child", model, *setting], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            rates[setting].append(result["rate"])
            hashes.add(result["counts"])
    old = rates[SETTINGS[0]]
    cells = []
    for setting in SETTINGS[1:]:
        speed = [r / o for r, o in zip(rates[setting], old)]
        cells.append(f"{' + '.join(setting)}: {statistics.median(speed):.2f} [{min(speed):.2f}–{max(speed):.2f}]")
    print(f"{model}: speed ÷ (defaults + whole)  " + "  ".join(cells)
          + f"  (counts identical: {len(hashes) == 1})", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="insurance,digits,mnist5k")
    args = parser.parse_args()
    for name in args.models.split(","):
        measure(name, args.repeats)
