"""Reproduce the model-inversion benchmark at CPU scale: writes results/mia/.

Runs BREP-MI against none, rp (σ × N grid × both releases), dpsgd (ε ∈ {1,3,8} + clip-only), rr
(ε ∈ {1,3,5}) and the repeated-query attacker against fresh and keyed RP noise (k = 5 gets 5x the
query budget of k = 1, so both take the same number of sphere steps), then writes the summary
table, the reconstruction grids and the privacy–utility plot.

    .venv/bin/python scripts/reproduce_mia.py [--budget 300] [--out results/mia]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd

from rpdist.attacks import roles
from rpdist.attacks.inversion import InversionSpec, run_inversion

REPEAT = dict(defense="rp", sigmas=[1.0], ns=[100], releases=["predict"], noises=["fresh", "keyed"])
RUNS = {  # name: (InversionSpec options, query budget as a multiple of --budget)
    "none": (dict(defense="none"), 1),
    "rp": (dict(defense="rp", sigmas=[0.1, 0.5, 1.0, 2.0], ns=[100, 1000], releases=["predict", "majority"]), 1),
    "dpsgd": (dict(defense="dpsgd"), 1),
    "rr": (dict(defense="rr"), 1),
    "repeat-k1": (dict(REPEAT, repeats=[1]), 1),
    "repeat-k5": (dict(REPEAT, repeats=[5]), 5),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--out", default="results/mia")
    args = parser.parse_args()
    out = Path(args.out)
    runs = out / "runs"
    started = time.perf_counter()
    t = time.perf_counter()
    target, evaluator = roles.target_model(), roles.eval_model()
    roles.generator()
    for eps in (1.0, 3.0, 8.0, None):
        roles.dpsgd_model(eps)
    roles_seconds = time.perf_counter() - t
    tables, summaries, timings = [], [], {}
    for name, (kw, scale) in RUNS.items():
        t = time.perf_counter()
        if (runs / name).exists():
            shutil.rmtree(runs / name)
        outcome = run_inversion(InversionSpec(query_budget=scale * args.budget, out=str(runs), run_id=name, seed=0, **kw),
                                progress=True)
        table = outcome.table()
        table.insert(0, "experiment", name)
        summaries.append(pd.DataFrame(outcome.summary).assign(experiment=name))
        tables.append(table)
        timings[name] = time.perf_counter() - t
        print(f"{name}: {timings[name]:.0f}s", flush=True)
    table = pd.concat(tables, ignore_index=True)
    table.to_parquet(out / "attack.parquet", index=False)
    summary = pd.concat(summaries, ignore_index=True)  # AttackAnalysis.summarize: ASR with its 95% interval
    summary = summary[["experiment", *(c for c in summary.columns if c != "experiment")]]
    summary.to_csv(out / "summary.csv", index=False)
    with open(out / "summary.md", "w") as fh:
        fh.write(f"target clean accuracy (test): {roles.accuracy(target):.3f}; "
                 f"evaluation classifier (MLP) clean accuracy (test): {roles.accuracy(evaluator):.3f}\n\n")
        fh.write(markdown(summary) + "\n\n")
        total = time.perf_counter() - started
        fh.write(f"query budget {args.budget} per class; roles (cached if present) {roles_seconds:.0f}s; "
                 + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s\n")
    for old in out.glob("reconstructions-*.png"):
        old.unlink()
    for name in ("none", "rp", "repeat-k1", "repeat-k5"):
        shutil.copy(runs / name / "reconstructions.png", out / f"reconstructions-{name}.png")
    plot(summary[~summary.experiment.str.startswith("repeat")], out / "privacy-utility.png")
    print(open(out / "summary.md").read())


def markdown(df: pd.DataFrame) -> str:
    """A GitHub table without extra dependencies."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def plot(summary: pd.DataFrame, path: Path) -> None:
    """ASR against utility, one curve per defense family (rp: one per release and N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6))
    families = []
    for defense, part in summary.groupby("defense", sort=False):
        if defense == "rp":
            families += [(f"rp ({r}, N={n})", p) for (r, n), p in part.groupby(["release", "n"])]
        else:
            families.append((defense, part))
    for i, (name, part) in enumerate(families):
        part = part.sort_values("utility_accuracy")
        ax.plot(100 * part.utility_accuracy, 100 * part.asr, marker="osD^v<>p"[i % 8], label=name, color=f"C{i}")
        for r in part.itertuples():
            knob = f"σ={r.sigma:g}" if r.defense == "rp" else (f"ε={r.epsilon:g}" if r.defense in ("rr", "dpsgd") else "")
            if knob:
                ax.annotate(knob, (100 * r.utility_accuracy, 100 * r.asr), xytext=(4, 4), textcoords="offset points",
                            fontsize=7, color=f"C{i}")
    ax.set_xlabel("utility: accuracy of released labels on test (%)")
    ax.set_ylabel("BREP-MI attack success rate (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Label-only model inversion on digits: privacy vs utility")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
