"""The CNN's 2x2 max-pool: rpdist's ``MaxPool2x2`` against ``nn.MaxPool2d(2)``, side by side in one run.

Usage::

    python benchmarks/cnn_pool.py [--repeats 15] [--batch 4000]

For the digits CNN (8x8) and the mnist5k CNN (28x28, stride-2 first convolution) it times one
forward pass of the whole model at the replicas' batch, on one thread in inference mode, with each
pool, alternating the two pass by pass; it prints the median [min-max] over repeats of the time
ratio torch pool ÷ rpdist pool (above 1: rpdist's is faster) and checks that both give the same
logits. A replica serving an attack on these models spends nearly all its time in this forward pass
(py-spy: convolutions 53%, pooling 27%, ReLU 9% on digits before the change), so the ratio is close
to the attack's own speed-up.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rpdist.models.architectures import DigitsCNN  # noqa: E402

MODELS = {"digits (8x8)": dict(side=8, stride=1), "mnist5k (28x28)": dict(side=28, stride=2)}


def _seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| model | torch pool ÷ rpdist pool, forward time | same logits |")
    print("|---|---|---|")
    for name, kwargs in MODELS.items():
        fast = DigitsCNN(**kwargs).eval()
        reference = copy.deepcopy(fast)
        reference.features[4] = torch.nn.MaxPool2d(2)
        side = kwargs["side"]
        x = (torch.rand(args.batch, 1, side, side) + 0.3 * torch.randn(args.batch, 1, side, side)).clamp(0, 1)
        with torch.inference_mode():
            same = torch.equal(fast(x), reference(x))
            ratios = []
            for repeat in range(args.repeats):
                pair = (reference, fast) if repeat % 2 == 0 else (fast, reference)
                times = {id(m): _seconds(m, x) for m in pair}
                ratios.append(times[id(reference)] / times[id(fast)])
        print(f"| {name} | {statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}] | {same} |")


if __name__ == "__main__":
    main()
