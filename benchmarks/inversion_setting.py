"""When does BREP-MI's walk add to sampling the prior? ASR and start ASR over settings, measured.

Usage::

    python benchmarks/inversion_setting.py [--dataset mnist5k] [--restarts 5] [--seed 0]
        [--priors public,disjoint] [--generators 16x256] [--budgets 400] [--thresholds 0,0.9,0.99]
        [--json PATH]

The undefended release (the target's argmax label) is attacked in process, by the same state
machine (:func:`rpdist.attacks.brep.run_lockstep`) and judged by the same function
(:func:`rpdist.attacks.inversion.judge`) as ``rpdist attack inversion --defense none``, without Ray
(no replicas are needed for an argmax). Per setting: every target class × ``--restarts`` attacks;
ASR and start ASR with 95% Clopper–Pearson intervals, and their paired difference with Tango's 95%
score interval, as ``rpdist attack inversion`` reports it (the two verdicts are on the same attack);
the rows keep the discordant counts it is computed from. The judge threshold only changes
the verdict, so every threshold is read off the same attacks. Generators are ``LATENTxHIDDEN``
(MLP VAE); ``disjoint`` trains one per target class on the public images of the other classes.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from rpdist.attacks import roles
from rpdist.attacks.brep import BrepAttack, BrepConfig, run_lockstep
from rpdist.attacks.brep import DISJOINT
from rpdist.attacks.inversion import _decoder, judge
from rpdist.defenses.releases import LabelRelease
from rpdist.smoothing.stats import clopper_pearson, discordant, paired_difference


def attack(dataset: str, prior: str, latent: int, hidden: int, epochs: int | None, budget: int, restarts: int,
           seed: int, target_ref, evaluator, private, thresholds) -> list[dict]:
    """All target classes × restarts against the undefended release; one summary row per threshold."""
    overrides = {} if (latent, hidden) == (None, None) else dict(latent=latent, hidden=hidden)
    gens, attacks = {}, []
    t0 = time.perf_counter()
    release = LabelRelease(target_ref)
    for t in range(roles.NUM_CLASSES):
        gens[t] = roles.generator(epochs=epochs, dataset=dataset, exclude=t if prior == DISJOINT else None,
                                  **overrides)
    trained = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in range(roles.NUM_CLASSES):
        mine = [BrepAttack(t, r, gens[t].latent, BrepConfig(budget=budget), seed) for r in range(restarts)]
        run_lockstep(mine, _decoder(gens[t]), release)
        attacks += mine
    seconds = time.perf_counter() - t0
    rows = []
    for threshold in thresholds:
        v = judge(evaluator, gens, attacks, threshold, private)
        n = len(attacks)
        asr, start = v["success"], v["start_success"]
        diff, low, high = paired_difference(asr, start)
        walk_only, start_only = discordant(asr, start)
        rows.append(dict(dataset=dataset, prior=prior, latent=gens[0].latent, hidden=gens[0].hidden,
                         budget=budget, threshold=threshold, attacks=n, found=float(np.mean([a.found for a in attacks])),
                         asr=float(asr.mean()), asr_ci=clopper_pearson(int(asr.sum()), n, 0.05),
                         start_asr=float(start.mean()), start_ci=clopper_pearson(int(start.sum()), n, 0.05),
                         diff=diff, diff_ci=(low, high), walk_only=walk_only, start_only=start_only,
                         knn=float(np.nanmedian(v["knn_distance"])), start_knn=float(np.nanmedian(v["start_knn_distance"])),
                         confidence=float(np.mean(v["eval_confidence"])),
                         start_confidence=float(np.mean(v["start_eval_confidence"])),
                         attack_seconds=seconds, generator_seconds=trained))
    return rows


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--priors", default="public,disjoint")
    parser.add_argument("--generators", default="default", help="comma-separated LATENTxHIDDEN, or default")
    parser.add_argument("--generator-epochs", type=int, default=None)
    parser.add_argument("--budgets", default="400")
    parser.add_argument("--thresholds", default="0,0.9,0.99")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    target_ref = roles.target_model(dataset=args.dataset)
    eval_ref = roles.eval_model(dataset=args.dataset)
    evaluator = eval_ref.load("cpu")
    private = roles.role_data("private", args.dataset)
    print(f"{args.dataset}: target test accuracy {roles.accuracy(target_ref, dataset=args.dataset):.3f}, "
          f"evaluator {roles.accuracy(eval_ref, dataset=args.dataset):.3f}", flush=True)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    generators = [(None, None)] if args.generators == "default" else \
        [tuple(int(v) for v in g.split("x")) for g in args.generators.split(",")]
    rows = []
    for prior in args.priors.split(","):
        for latent, hidden in generators:
            for budget in (int(b) for b in args.budgets.split(",")):
                for r in attack(args.dataset, prior, latent, hidden, args.generator_epochs, budget, args.restarts,
                                args.seed, target_ref, evaluator, private, thresholds):
                    rows.append(r)
                    print(f"{r['prior']:8s} z={r['latent']:<3d} h={r['hidden']:<4d} budget={r['budget']:<5d} "
                          f"τ={r['threshold']:<5g} found {r['found']:.0%}  ASR {r['asr']:.0%} "
                          f"[{r['asr_ci'][0]:.0%}, {r['asr_ci'][1]:.0%}]  start {r['start_asr']:.0%} "
                          f"[{r['start_ci'][0]:.0%}, {r['start_ci'][1]:.0%}]  diff {100 * r['diff']:+.0f} "
                          f"[{100 * r['diff_ci'][0]:+.0f}, {100 * r['diff_ci'][1]:+.0f}]  conf {r['start_confidence']:.2f}"
                          f"→{r['confidence']:.2f}  knn {r['start_knn']:.2f}→{r['knn']:.2f}  "
                          f"{r['attack_seconds']:.0f}s (+{r['generator_seconds']:.0f}s gen)", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
