"""Reproduce the RAP experiment (RP paper, first experiment) and write results/rap/.

Default = the full grid of the issue: σ ∈ {0.5, 1, 2, 3}, N ∈ {1000, 10000}, the whole insurance
test split, grid step 0.1 BMI, the unpenalised model and λ ∈ {0.01, 1}. Options shrink it to what a
machine can afford; whatever was run is recorded in results/rap/runs.json.

    .venv/bin/python scripts/reproduce_rap.py                    # what results/rap holds (75 min on 2 cores)
    .venv/bin/python scripts/reproduce_rap.py --grid-step 0.5    # the same picture in 14 min
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--ns", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--grid-step", type=float, default=0.1)
    parser.add_argument("--l1", type=float, nargs="+", default=None,
                        help="λ of each penalised model (default: the CLI's, and 1.0 for a near-univariate BMI rule)")
    parser.add_argument("--limit", type=int, default=None, help="inputs of the test split for N below 10000")
    parser.add_argument("--limit-large-n", type=int, default=None, help="inputs of the test split for N >= 10000")
    parser.add_argument("--out", default="results/rap")
    parser.add_argument("--runs", default="results/rap-runs", help="per-run directories (git-ignored)")
    args = parser.parse_args()

    from rpdist.privacy.rap import summarize
    from rpdist.privacy.runner import DEFAULT_L1, RapSpec, run_rap
    from rpdist.io.store import Store

    l1 = [DEFAULT_L1, 1.0] if args.l1 is None else args.l1
    out = Path(args.out)
    tables, curves, log = [], [], []
    started = time.perf_counter()
    for n in args.ns:
        limit = args.limit_large_n if n >= 10000 else args.limit
        for sigma in args.sigmas:
            run_id = f"s{sigma:g}-n{n}-step{args.grid_step:g}-l1{'-'.join(f'{v:g}' for v in l1)}-lim{limit or 'all'}"
            clock = time.perf_counter()
            outcome = run_rap(RapSpec(sigma=sigma, n=n, grid_step=args.grid_step, l1_non_sensitive=l1, limit=limit,
                                      out=args.runs, run_id=run_id))
            seconds = time.perf_counter() - clock
            table = outcome.table()
            tables.append(table)
            curves.append(pd.read_parquet(f"{outcome.path}/rap_curve.parquet").assign(n=n))
            log.append({"run_id": run_id, "sigma": sigma, "n": n, "limit": limit, "grid_step": args.grid_step,
                        "l1": l1, "inputs": int(table["input_id"].nunique()), "seconds": round(seconds, 1)})
            print(json.dumps(log[-1]), flush=True)
    total = time.perf_counter() - started
    table = pd.concat(tables, ignore_index=True)
    curve = pd.concat(curves, ignore_index=True)
    summary = summarize(table)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out)
    store.write_parquet(pa.Table.from_pandas(table, preserve_index=False), "rap_rows.parquet")
    store.write_parquet(pa.Table.from_pandas(summary, preserve_index=False), "rap_summary.parquet")
    store.write_parquet(pa.Table.from_pandas(curve, preserve_index=False), "rap_curve.parquet")
    store.write_json({"runs": log, "total_seconds": round(total, 1), "args": vars(args)}, "runs.json")
    (out / "rap_summary.md").write_text(markdown(summary, log))
    plot_lengths(table, out / "compatible_lengths.png")
    plot_rates(curve, out / "positive_rate_vs_bmi.png")
    print(f"total {total:.0f} s; wrote {out}")


def markdown(summary: pd.DataFrame, log: list[dict]) -> str:
    """One line per (λ, σ, N, release model); inputs says how much of the test split each covers."""
    lines = ["| λ (l1) | σ | N | release | inputs | median compatible length (BMI) | adversary MAE (BMI) | "
             "accuracy | abstain | certified | segment in interval (machinery check) | release advantage at R (median bound) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.sort_values(["l1_non_sensitive", "n", "sigma", "release_model"]).itertuples():
        smoothed = r.release_model == "smoothed"
        lines.append(
            f"| {r.l1_non_sensitive:g} | {r.sigma:g} | {r.n} | {r.release_model} | {r.inputs} | "
            f"{r.median_compatible_length:.2f} | {r.adversary_mae:.2f} | {100 * r.accuracy:.1f}% | "
            f"{100 * r.abstain_rate:.1f}% | {f'{100 * r.certified_rate:.1f}%' if smoothed else '-'} | "
            f"{f'{100 * r.containment:.1f}%' if smoothed else '-'} | {f'{r.median_release_advantage:.3f}' if smoothed else '-'} |")
    return "\n".join(lines) + "\n"


def _model_panels(frame: pd.DataFrame):
    """One panel per model (λ) at the smallest N, each titled: returns (plt, fig, [(ax, rows)], σs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = frame["n"].min()
    part = frame[frame["n"] == n]
    lambdas = sorted(part["l1_non_sensitive"].unique())
    fig, axes = plt.subplots(1, len(lambdas), figsize=(6 * len(lambdas), 4.5), squeeze=False, sharey=True)
    for ax, lam in zip(axes[0], lambdas):
        ax.set_title(f"{'ℓ1-penalised' if lam > 0 else 'unpenalised'} model (λ={lam:g}), N={n}")
    panels = [(ax, part[part["l1_non_sensitive"] == lam]) for ax, lam in zip(axes[0], lambdas)]
    return plt, fig, panels, sorted(part["sigma"].unique())


def _save(plt, fig, title: str, path: Path) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lengths(table: pd.DataFrame, path: Path) -> None:
    """Compatible lengths, base against smoothed, one panel per model (λ), N = the smallest run."""
    plt, fig, panels, sigmas = _model_panels(table)
    for ax, rows in panels:
        data, labels = [], []
        for sigma in sigmas:
            for model in ("base", "smoothed"):
                data.append(rows[(rows["sigma"] == sigma) & (rows["release_model"] == model)]["compatible_length"])
                labels.append(f"{model}\nσ={sigma:g}")
        box = ax.boxplot(data, patch_artist=True, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        for i, patch in enumerate(box["boxes"]):
            patch.set_facecolor("#9ecae1" if i % 2 == 0 else "#fdae6b")
        ax.set_ylabel("compatible length of BMI (kg/m²)")
        ax.legend([box["boxes"][0], box["boxes"][1]], ["base (argmax)", "smoothed (PREDICT)"], loc="lower left")
        ax.grid(axis="y", alpha=0.3)
    _save(plt, fig, "Compatible BMI set per test input: base against smoothed", path)


def plot_rates(curve: pd.DataFrame, path: Path) -> None:
    """Share of inputs recommended the high-cost plan at each swept BMI, base and smoothed, per σ."""
    plt, fig, panels, sigmas = _model_panels(curve)
    colours = plt.cm.viridis([i / max(1, len(sigmas) - 1) for i in range(len(sigmas))])
    for ax, rows in panels:
        for colour, sigma in zip(colours, sigmas):
            for model, style in (("base", ":"), ("smoothed", "-")):
                c = rows[(rows["sigma"] == sigma) & (rows["release_model"] == model)]
                ax.plot(c["attribute_value"], c["positive_rate"], style, color=colour,
                        label=f"{model}, σ={sigma:g}")
        ax.set_xlabel("BMI set to (kg/m²), other features held fixed")
        ax.set_ylabel("positive-recommendation rate (abstain = not positive)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    _save(plt, fig, "Positive recommendation rate over the insurance test split against BMI", path)


if __name__ == "__main__":
    main()
