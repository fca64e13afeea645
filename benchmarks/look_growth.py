"""How the look schedule's growth factor trades samples against Voráček & Hein's per-sample test.

Usage::

    python benchmarks/look_growth.py [--growth 1.1 1.02 1.01] [--repeats 4]

For each model and σ of ``sample_efficiency.py`` (one N = 10,000 pilot each), its simulation is run
once per growth factor on the same streams (same seed). Printed per (model, σ, growth): the number
of looks up to max N, the largest ratio of our mean samples to theirs over r ∈ {0.25σ, 0.5σ, σ} ×
{against the label, with selection}, the smallest certified-accuracy difference (ours − theirs),
and our mean samples per case. Looks cost no α (the confidence sequence holds at every n), only
engine rounds; ``sequential_time.py`` measures what they cost in time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sample_efficiency as se  # noqa: E402

from rpdist.smoothing import sequential as seq  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--growth", type=float, nargs="+", default=[1.1, 1.02, 1.01])
    parser.add_argument("--block", type=int, nargs="+", default=[32], help="noise blocks (first look = one block)")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    cases = [(r, selection) for r in se.MULTIPLES for selection in (False, True)]
    for name, sigmas in se.SIGMAS.items():
        for sigma in sigmas:
            p_hat, labels, _, _ = se.pilot(name, sigma)
            for block, growth in [(b, g) for b in args.block for g in args.growth]:
                se.GROWTH, se.BLOCK, se.FIRST = growth, block, block
                sim = se.simulate_methods(p_hat, labels, sigma, args.repeats)
                ours = {c: sim[("sequential", *c)] for c in cases}
                theirs = {c: sim[("voracek_hein", *c)] for c in cases}
                worst = max(ours[c]["mean_samples"] / theirs[c]["mean_samples"] for c in cases)
                accuracy = min(ours[c]["certified_accuracy"] - theirs[c]["certified_accuracy"] for c in cases)
                looks = len(seq.look_points(se.MAX_N, block, seq.SEQUENTIAL, block, growth))
                means = {f"{r:g}σ/{'selection' if s else 'label'}": round(ours[(r, s)]["mean_samples"])
                         for r, s in cases}
                print(f"{name} σ={sigma:g} block={block} growth={growth:g}: {looks} looks, ours/theirs at most {worst:.4f}, "
                      f"accuracy difference at least {accuracy:+.4f}; ours {json.dumps(means, ensure_ascii=False)}", flush=True)


if __name__ == "__main__":
    main()
