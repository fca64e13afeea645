"""Reproduce the RAP experiment (RP paper, first experiment) and write results/rap/.

Default = the full grid of issue 12: datasets insurance-recommend (BMI >= 30, the paper's kind of
task) then insurance (charges), base against smoothed, σ ∈ {0.5, 1, 2, 3}, N ∈ {1,000, 10,000,
100,000}, the whole test split, grid step 0.1 BMI over the whole dataset's range, λ ∈ {0, 0.01, 1}.
Options shrink it to what a machine can afford; whatever was run is recorded in OUT/runs.json.

    .venv/bin/python scripts/reproduce_rap.py                                  # the full grid
    .venv/bin/python scripts/reproduce_rap.py --ns 1000 --grid-step 0.5 --out /tmp/rap-small
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["insurance-recommend", "insurance"])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--ns", type=int, nargs="+", default=[1000, 10000, 100000])
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
    for dataset in args.datasets:
        for n in args.ns:
            limit = args.limit_large_n if n >= 10000 else args.limit
            for sigma in args.sigmas:
                run_id = (f"{dataset}-s{sigma:g}-n{n}-step{args.grid_step:g}-l1{'-'.join(f'{v:g}' for v in l1)}"
                          f"-lim{limit or 'all'}")
                clock = time.perf_counter()
                outcome = run_rap(RapSpec(dataset=dataset, sigma=sigma, n=n, grid_step=args.grid_step,
                                          l1_non_sensitive=l1, limit=limit, out=args.runs, run_id=run_id))
                seconds = time.perf_counter() - clock
                table = outcome.table().assign(dataset=dataset)
                tables.append(table)
                curves.append(pd.read_parquet(f"{outcome.path}/rap_curve.parquet").assign(n=n, dataset=dataset))
                log.append({"run_id": run_id, "dataset": dataset, "sigma": sigma, "n": n, "limit": limit,
                            "grid_step": args.grid_step, "l1": l1, "inputs": int(table["input_id"].nunique()),
                            "seconds": round(seconds, 1), "path": outcome.path})
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
    for dataset in args.datasets:
        rows = table[table["dataset"] == dataset]
        plot_lengths(rows, out / f"compatible_lengths-{dataset}.png")
        plot_rates(curve[curve["dataset"] == dataset], out / f"positive_rate_vs_bmi-{dataset}.png")
        plot_hdi(rows, out / f"hdi_length_vs_sigma-{dataset}.png")
        plot_posteriors(rows, dataset, args.grid_step, out / f"posteriors-{dataset}.png")
    print(f"total {total:.0f} s; wrote {out}")


def _ci(r, key: str) -> str:
    value, low, high = getattr(r, key), getattr(r, f"{key}_low"), getattr(r, f"{key}_high")
    return "-" if value != value else f"{value:.2f} [{low:.2f}, {high:.2f}]"


def markdown(summary: pd.DataFrame, log: list[dict]) -> str:
    """One line per (dataset, λ, σ, N, release model); brackets: 95% bootstrap intervals over inputs."""
    lines = ["| dataset | λ (l1) | σ | N | release | inputs | median 90% HDI length (BMI) | posterior MAE (BMI) | "
             "median posterior/prior of the true cell | median compatible length, neutral rule (BMI) | "
             "accuracy | abstain | certified | release advantage at R (median bound) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.sort_values(["dataset", "l1_non_sensitive", "n", "sigma", "release_model"]).itertuples():
        smoothed = r.release_model == "smoothed"
        lines.append(
            f"| {r.dataset} | {r.l1_non_sensitive:g} | {r.sigma:g} | {r.n} | {r.release_model} | {r.inputs} | "
            f"{_ci(r, 'median_hdi_length')} | {_ci(r, 'posterior_mae')} | {r.median_true_ratio:.2f} | "
            f"{_ci(r, 'median_compatible_length')} | {100 * r.accuracy:.1f}% | "
            f"{100 * r.abstain_rate:.1f}% | {f'{100 * r.certified_rate:.1f}%' if smoothed else '-'} | "
            f"{f'{r.median_release_advantage:.3f}' if smoothed else '-'} |")
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
    _save(plt, fig, "Positive recommendation rate over the test split against BMI", path)


def plot_hdi(table: pd.DataFrame, path: Path) -> None:
    """Median posterior HDI length against σ, one panel per model (λ), one line per N, base dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lambdas = sorted(table["l1_non_sensitive"].unique())
    fig, axes = plt.subplots(1, len(lambdas), figsize=(6 * len(lambdas), 4.5), squeeze=False, sharey=True)
    for ax, lam in zip(axes[0], lambdas):
        rows = table[table["l1_non_sensitive"] == lam]
        for i, n in enumerate(sorted(rows["n"].unique())):
            for model, style in (("smoothed", "-o"), ("base", "--")):
                part = rows[(rows["n"] == n) & (rows["release_model"] == model)]
                med = part.groupby("sigma")["posterior_hdi_length"].median()
                ax.plot(med.index, med.to_numpy(), style, color=f"C{i}", label=f"{model}, N={n:,}")
        ax.set_title(f"λ = {lam:g}")
        ax.set_xlabel("σ (standardised units)")
        ax.set_ylabel("median 90% HDI length of BMI (kg/m²)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, "The adversary's posterior: median HDI length against σ", path)


def plot_posteriors(table: pd.DataFrame, dataset: str, grid_step: float, path: Path, inputs: int = 3) -> None:
    """Posterior densities of a few typical inputs (median smoothed HDI length at the largest λ, smallest N,
    σ = 1 or the nearest), base against smoothed, recomputed with each run's own noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rpdist.datasets.catalog import load_dataset
    from rpdist.models.zoo import default_model
    from rpdist.privacy.rap import attribute_grid, input_posterior

    lam, n = table["l1_non_sensitive"].max(), table["n"].min()
    sigma = min(table["sigma"].unique(), key=lambda s: abs(s - 1.0))
    rows = table[(table["l1_non_sensitive"] == lam) & (table["n"] == n) & (table["sigma"] == sigma)]
    smoothed = rows[rows["release_model"] == "smoothed"].sort_values("posterior_hdi_length")
    picks = smoothed.iloc[np.linspace(len(smoothed) // 4, 3 * len(smoothed) // 4, inputs).astype(int)]
    train, test = load_dataset(dataset, split="train"), load_dataset(dataset, split="test")
    column = list(train.feature_names).index("bmi")
    observed = load_dataset(dataset, split="all").raw_features()[:, column]
    grid = attribute_grid(float(observed.min()), float(observed.max()), grid_step)
    model = default_model(dataset, train_sigma=float(sigma), l1_non_sensitive=float(lam),
                          sensitive="bmi" if lam > 0 else None)
    fig, axes = plt.subplots(1, inputs, figsize=(5.5 * inputs, 4.2), squeeze=False)
    for ax, row in zip(axes[0], picks.itertuples()):
        x = test.X[np.flatnonzero(test.input_ids == row.input_id)[0]]
        for model_name, colour in (("base", "C0"), ("smoothed", "C1")):
            post = input_posterior(model, x, row.input_id, prior=train.raw_features()[:, column], column=column,
                                   mean=float(train.feature_mean[column]), scale=float(train.feature_std[column]),
                                   grid=grid, sigma=float(sigma), n=int(n), alpha=float(row.alpha), seed=int(row.seed),
                                   release_model=model_name)
            widths = np.diff(post["edges"])
            density = np.divide(post["posterior"], widths, out=np.zeros_like(widths), where=widths > 0)
            ax.stairs(density, post["edges"], color=colour, label=f"{model_name} (released {post['released']})")
        ax.stairs(np.divide(post["prior"], widths, out=np.zeros_like(widths), where=widths > 0), post["edges"],
                  color="grey", ls=":", label="prior (KDE)")
        ax.axvline(post["true_value"], color="k", lw=1, label="true BMI")
        ax.set_title(f"input {row.input_id}, smoothed HDI {row.posterior_hdi_length:.1f}")
        ax.set_xlabel("BMI (kg/m²)")
        ax.set_ylabel("posterior density")
        ax.legend(fontsize=8)
    _save(plt, fig, f"Posterior of BMI given the release ({dataset}, λ={lam:g}, σ={sigma:g}, N={n:,})", path)


if __name__ == "__main__":
    main()
