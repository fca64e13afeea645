"""Where do RP's abstentions fall? PREDICT on the attacker's prior samples against the test split.

Usage::

    python benchmarks/prior_abstention.py [--datasets digits,mnist5k] [--sigmas 0.5,1] [--ns 100,1000]
                                          [--samples 2000] [--json PATH]

BREP-MI's first phase draws latents from N(0, I), decodes them with the attacker's public VAE and
queries them until the release labels one as the target class. Random abstention at RP's test-split
rate leaves the attack's ASR near the undefended one, RP PREDICT does not (results/mia/README.md,
finding 2). This script measures why, on ``--samples`` decoded prior draws (the attack's own
generator and judge, seed 0): PREDICT's abstain rate there and on the test split, and per class the
share of draws released as the class (the attack's raw material) and of draws released as the class
that the judge also accepts (what makes the start succeed), for the undefended label, RP PREDICT and
random abstention at RP's test-split rate (expected shares: the undefended ones times 1 − rate), beside
each class's recall on the test split (the utility the release keeps for that class). Rates get 95%
Clopper–Pearson intervals.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rpdist.attacks import roles
from rpdist.attacks.inversion import verdicts
from rpdist.defenses.releases import ABSTAIN, LabelRelease, SmoothedRelease
from rpdist.smoothing.stats import clopper_pearson

RESULTS = Path(__file__).resolve().parents[1] / "results" / "mia"
REPRODUCTION = {"digits": RESULTS, "mnist5k": RESULTS / "mnist5k"}  # whose judge threshold this script uses


def judge_threshold(dataset: str) -> float:
    """The judge threshold of the committed reproduction on ``dataset`` (its undefended sweep file)."""
    from rpdist.pipelines.sweep import load_sweeps

    [(sweep, _)] = load_sweeps([REPRODUCTION[dataset] / "none.yaml"])
    return sweep.judge_threshold


def rate(hits: int, total: int) -> dict:
    low, high = clopper_pearson(int(hits), int(total), 0.05)
    return {"rate": hits / total, "low": low, "high": high, "count": int(total)}


def prior_images(dataset: str, samples: int, seed: int) -> np.ndarray:
    import torch

    vae = roles.generator(dataset=dataset)
    z = np.random.default_rng(seed).standard_normal((samples, vae.latent)).astype(np.float32)
    with torch.inference_mode():
        return vae.decode(torch.from_numpy(z)).numpy()


def judged(dataset: str, images: np.ndarray, threshold: float) -> np.ndarray:
    """The attack's judge on each image: its class, or UNJUDGED."""
    import torch

    evaluator = roles.eval_model(dataset=dataset).load("cpu")
    with torch.inference_mode():
        return verdicts(torch.softmax(evaluator(torch.from_numpy(images)), 1).numpy(), threshold)


def per_class(released: np.ndarray, judge: np.ndarray, test_released: np.ndarray, y_test: np.ndarray) -> dict:
    """Per class c: prior draws released as c, those the judge also calls c, and the test recall of c."""
    out = {}
    for c in range(roles.NUM_CLASSES):
        as_c, judged_c, members = released == c, (released == c) & (judge == c), y_test == c
        out[c] = {"test_recall": float((test_released[members] == c).mean()) if members.any() else float("nan"),
                  "released": int(as_c.sum()), "released_and_judged": int(judged_c.sum()),
                  "share": float(as_c.mean()), "share_judged": float(judged_c.mean())}
    return out


def measure(dataset: str, sigmas: list[float], ns: list[int], samples: int, seed: int) -> dict:
    images = prior_images(dataset, samples, seed)
    threshold = judge_threshold(dataset)
    judge = judged(dataset, images, threshold)
    target_ref = roles.target_model(dataset=dataset)
    X_test, y_test = roles.role_data("test", dataset)
    undefended = LabelRelease(target_ref)
    base = undefended.labels(images)
    # The role models (retrained per machine) decide every count here: record them, as attack manifests do.
    models = {"target": {"sha256": target_ref.sha256}, "eval": {"sha256": roles.eval_model(dataset=dataset).sha256}}
    out = {"dataset": dataset, "samples": samples, "judge_threshold": threshold, "models": models,
           "undefended": per_class(base, judge, undefended.labels(X_test), y_test), "rp": {}}
    prior_ids = np.arange(samples, dtype=np.int64) + len(X_test)  # noise ids apart from the test split's
    for sigma, n in ((s, n) for s in sigmas for n in ns):
        release = SmoothedRelease(target_ref, sigma, n, release="predict", seed=seed)
        on_prior = release(images, prior_ids)
        on_test = release(X_test, np.arange(len(X_test), dtype=np.int64))
        test_rate = float((on_test == ABSTAIN).mean())
        classes = per_class(on_prior, judge, on_test, y_test)
        for c, row in classes.items():
            u = out["undefended"][c]
            row["random_abstention_share"] = u["share"] * (1 - test_rate)
            row["random_abstention_share_judged"] = u["share_judged"] * (1 - test_rate)
            row["random_abstention_test_recall"] = u["test_recall"] * (1 - test_rate)
        out["rp"][f"sigma={sigma:g}, N={n}"] = {"sigma": sigma, "n": n,
            "abstain_prior": rate(int((on_prior == ABSTAIN).sum()), samples),
            "abstain_test": rate(int((on_test == ABSTAIN).sum()), len(X_test)),
            "agree_with_undefended_prior": rate(int((on_prior == base).sum()), samples),
            "classes": classes}
    return out


def show(result: dict) -> None:
    ds = result["dataset"]
    for r in result["rp"].values():
        p, t = r["abstain_prior"], r["abstain_test"]
        print(f"{ds} σ = {r['sigma']:g}, N = {r['n']}: PREDICT abstains on {p['rate']:.1%} [{p['low']:.1%}, {p['high']:.1%}] "
              f"of {p['count']} prior draws, {t['rate']:.1%} [{t['low']:.1%}, {t['high']:.1%}] of {t['count']} test inputs")
        print("  class: released as the class (judge also accepts) per 1,000 prior draws; test recall: "
              "undefended | RP PREDICT | random abstention at RP's rate (expected)")
        for c, row in r["classes"].items():
            u = result["undefended"][c]
            print(f"  {c}: {1000 * u['share']:6.1f} ({1000 * u['share_judged']:6.1f}) {u['test_recall']:6.1%} | "
                  f"{1000 * row['share']:6.1f} ({1000 * row['share_judged']:6.1f}) {row['test_recall']:6.1%} | "
                  f"{1000 * row['random_abstention_share']:6.1f} ({1000 * row['random_abstention_share_judged']:6.1f}) "
                  f"{row['random_abstention_test_recall']:6.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist5k")
    parser.add_argument("--sigmas", default="0.5,1")
    parser.add_argument("--ns", default="100,1000")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    results = []
    for dataset in args.datasets.split(","):
        results.append(measure(dataset, [float(s) for s in args.sigmas.split(",")],
                               [int(n) for n in args.ns.split(",")], args.samples, args.seed))
        show(results[-1])
    print(f"{time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
