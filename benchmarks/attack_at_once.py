"""What does attacking fewer target classes at a time cost? Attack time at each ``--targets-at-once``, as a ratio.

Usage::

    python benchmarks/attack_at_once.py [--dataset mnist5k] [--sigma 1] [--n 100 1000] [--targets 4]
                                        [--restarts 5] [--query-budget 400] [--at-once 2 1] [--rounds 2] [--json PATH]

An attack saves each class when its restarts finish, so running K classes at a time bounds what a stop loses
(README, "Interrupted attacks resume"); fewer classes in flight leave the replicas idle between a class's
rounds. For each N this runs the same RP PREDICT attack (same seed, fresh noise) with every class at once
and with each K, ``--rounds`` times in interleaved order, and reports each K's attack time (the configs'
``seconds``, utility and setup excluded) over the all-at-once time of the same round: the median ratio
and its range. The tables must be identical across K (each attack draws from streams of its own); the
script checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--targets", type=int, default=4, help="classes 0..T-1")
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--query-budget", type=int, default=400)
    parser.add_argument("--at-once", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from rpdist.attacks.inversion import InversionSpec, run_inversion

    targets = list(range(args.targets))
    out = {"settings": vars(args), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        def attack(n: int, at_once: int, name: str) -> tuple[float, pd.DataFrame]:
            spec = InversionSpec(dataset=args.dataset, defense="rp", sigmas=[args.sigma], ns=[n], releases=["predict"],
                                 targets=targets, restarts=args.restarts, query_budget=args.query_budget,
                                 judge_threshold=0.9, seed=0, targets_at_once=at_once, out=tmp, run_id=name)
            outcome = run_inversion(spec)
            return sum(outcome.manifest["details"]["config_seconds"]), outcome.table().drop(columns="seconds")

        attack(args.n[0], len(targets), "warm-up")  # Ray, replicas and the role models, once
        for n in args.n:
            ratios: dict[int, list[float]] = {k: [] for k in args.at_once}
            reference = None
            for r in range(args.rounds):
                order = [len(targets), *args.at_once]
                order = order if r % 2 == 0 else order[::-1]
                seconds = {}
                for k in order:
                    seconds[k], table = attack(n, k, f"n{n}-k{k}-r{r}")
                    if reference is None:
                        reference = table
                    pd.testing.assert_frame_equal(table, reference)
                for k in args.at_once:
                    ratios[k].append(seconds[k] / seconds[len(targets)])
            for k, values in ratios.items():
                row = {"n": n, "targets_at_once": k, "of": len(targets), "median_ratio": float(np.median(values)),
                       "min_ratio": float(min(values)), "max_ratio": float(max(values)), "rounds": len(values)}
                out["results"].append(row)
                print(f"N = {n:>6,}: {k} of {len(targets)} classes at a time takes {row['median_ratio']:.2f}x the "
                      f"all-at-once attack time (range {row['min_ratio']:.2f}–{row['max_ratio']:.2f}, "
                      f"{len(values)} rounds); tables identical", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
