"""rpdist's inference layers (``MaxPool2x2``, ``InPlaceReLU``) against torch's, side by side in one run.

Usage::

    python benchmarks/inference_layers.py [--repeats 15] [--batch 4000]

For the digits CNN (8x8), the mnist5k CNN (28x28, stride-2 first convolution) and the insurance
MLP it times one forward pass of the whole model at the replicas' batch, on one thread in inference
mode, built with rpdist's layers and with ``nn.MaxPool2d(2)`` / ``nn.ReLU()`` in their place,
alternating the two pass by pass. It prints the median [min-max] over repeats of the time ratio
torch layers ÷ rpdist layers (above 1: rpdist's are faster) and checks that both give the same
logits. A replica serving an attack on these models spends nearly all its time in this forward pass
(py-spy on a digits replica before the change: convolutions 53%, pooling 27%, ReLU 9%; on mnist5k
with the new pool: convolutions 59%, ReLU 18%, pooling 10%), so the ratio is close to the replicas'
own speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rpdist.models.architectures import MLP, DigitsCNN, with_torch_layers  # noqa: E402

MODELS = {"digits CNN (8x8)": (lambda: DigitsCNN(side=8), (1, 8, 8)),
          "mnist5k CNN (28x28)": (lambda: DigitsCNN(side=28, stride=2), (1, 28, 28)),
          "insurance MLP (11 features)": (lambda: MLP(11, 2), (11,))}


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
    print("| model | torch layers ÷ rpdist layers, forward time | same logits |")
    print("|---|---|---|")
    for name, (build, shape) in MODELS.items():
        fast = build().eval()
        reference = with_torch_layers(fast)
        x = (torch.rand(args.batch, *shape) + 0.3 * torch.randn(args.batch, *shape)).clamp(0, 1)
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
