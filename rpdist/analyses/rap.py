"""Robust Attribute Privacy (``rpdist rap``) as an analysis: summary, printed columns, report section."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from rpdist.analyses.base import Analysis, Column, Outcome
from rpdist.reporting.format import fmt, md_table, num, pct, with_interval
from rpdist.reporting.plots import figure, style

SMOOTHED = "smoothed"
CURVE_FILE = "rap_curve.parquet"  # release rates over the grid, written beside rap.parquet
POSTERIORS_FILE = "rap_posteriors.parquet"  # per-cell posteriors of a few typical inputs, beside rap.parquet
_ci = partial(with_interval, digits=2)  # lengths and errors in the attribute's units: two decimals


def _paired(record: dict, key: str) -> str:
    """A smoothed − base difference paired by input, signed, with its interval; — on base rows."""
    return _ci(record, key, sign="+") if record.get("release_model") == SMOOTHED else "—"


class RapAnalysis(Analysis):
    name = "rap"
    final_file = "rap.parquet"
    title = "Robust attribute privacy (RAP)"
    required_columns = ("release_model", "compatible_length", "abs_error", "correct", "released_label", "radius",
                        "certified_low", "attribute_scale", "grid_step")
    summary_columns = (
        Column("λ", lambda r: f"{r['l1_non_sensitive']:g}", key=True), Column("σ", lambda r: f"{r['sigma']:g}", key=True),
        Column("N", lambda r: f"{r['n']:,}", key=True), Column("α", lambda r: f"{r['alpha']:g}", key=True),
        Column("release", lambda r: r["release_model"], key=True), Column("inputs", lambda r: f"{r['inputs']:,}"),
        Column("median HDI length", lambda r: _ci(r, "median_hdi_length")),
        Column("posterior MAE", lambda r: _ci(r, "posterior_mae")),
        Column("MAE − base (paired)", lambda r: _paired(r, "posterior_mae_vs_base")),
        Column("HDI length − base (paired)", lambda r: _paired(r, "hdi_length_vs_base")),
        Column("median compatible length", lambda r: _ci(r, "median_compatible_length")),
        Column("compatible-set MAE", lambda r: _ci(r, "adversary_mae")),
        Column("accuracy", lambda r: pct(r['accuracy'])),
        Column("abstain", lambda r: pct(r['abstain_rate'])),
        Column("certified", lambda r: pct(r['certified_rate']) if r["release_model"] == SMOOTHED else "—"),
        Column("release advantage at R ≤ (median)",
               lambda r: f"{r['median_release_advantage']:.3f}" if r["release_model"] == SMOOTHED else "—"),
    )

    def spec(self, **options):
        from rpdist.privacy.runner import RapSpec

        return RapSpec(**options)

    def run(self, spec, progress: bool = False) -> Outcome:
        from rpdist.privacy.runner import run_rap

        return run_rap(spec, progress=progress)

    def summarize(self, table: pd.DataFrame) -> list[dict]:
        from rpdist.privacy.rap import summarize

        return summarize(table).to_dict(orient="records")

    def report(self, writer, source, slug: str) -> None:
        report_rap(writer, source, self.summarize(source.table), slug)

    def point_models(self, sweep, point: dict) -> dict[str, str]:
        """The default model at each ℓ1 penalty, as this machine trains (or cached) it for the point."""
        from rpdist.privacy.runner import l1_values, rap_model

        spec = self.point_spec(sweep, point, out=".", run_id="models")
        return {str(lam): rap_model(spec, lam).sha256 for lam in l1_values(spec.l1_non_sensitive)}

    def point_spec(self, sweep, point: dict, **fixed):
        from rpdist.privacy.runner import RapSpec

        return RapSpec(dataset=sweep.dataset, attribute=sweep.attribute, sigma=point["sigma"], n=point["n"],
                       n0=sweep.n0, alpha=point["alpha"], seed=point["seed"], grid_step=sweep.grid_step,
                       train_sigma=sweep.train_sigma, l1_non_sensitive=sweep.l1_non_sensitive, split=sweep.split,
                       posterior_level=sweep.posterior_level, pilot=sweep.pilot, limit=sweep.limit,
                       batch_size=sweep.batch_size, **fixed)


def report_rap(w, source, summary: list[dict], slug: str) -> None:
    from rpdist.privacy.rap import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

    df = source.table.copy()
    attribute = str(df["attribute"].iloc[0]) if "attribute" in df.columns else "attribute"
    by = [c for c in ("l1_non_sensitive", "sigma", "n", "alpha") if c in df.columns and df[c].nunique() > 1]
    w.add("### Summary", "")
    rows = [[*(r[c] for c in by), r["release_model"], r["inputs"], _ci(r, "median_hdi_length"), _ci(r, "posterior_mae"),
             _paired(r, "posterior_mae_vs_base"), _paired(r, "hdi_length_vs_base"),
             num(r.get("median_true_ratio", float("nan")), 2), _ci(r, "median_compatible_length"),
             num(r["mean_compatible_length"], 2), _ci(r, "adversary_mae"), pct(r["accuracy"]),
             pct(r["abstain_rate"]), pct(r["certified_rate"]) if r["release_model"] == SMOOTHED else "—",
             num(r["median_certified_half_width"], 2) if r["release_model"] == SMOOTHED else "—",
             num(r["median_release_advantage"], 3) if r["release_model"] == SMOOTHED else "—"]
            for r in summary]
    names = {"l1_non_sensitive": "ℓ1 penalty λ", "sigma": "σ", "n": "N", "alpha": "α"}
    level = df["posterior_level"].iloc[0] if "posterior_level" in df.columns else 0.9
    w.add(*md_table([*(names[c] for c in by), "release", "inputs",
                   f"median {100 * level:g}% HDI length ({attribute})", "posterior MAE",
                   "posterior MAE, smoothed − base (paired)", "HDI length, smoothed − base (paired mean)",
                   "median posterior/prior of the true cell", "median compatible length",
                   "mean compatible length", "compatible-set MAE", "accuracy", "abstain", "certified",
                   "median certified half-width", "PREDICT's advantage at R ≤ (median)"], rows))
    params = ", ".join(f"{names[c]} = {fmt(df[c].iloc[0])}" for c in ("sigma", "n", "alpha")
                       if c in df.columns and c not in by)
    in_params = f" ({params})" if params else ""
    w.add(f"Lengths, errors and half-widths are in raw units of {attribute}{in_params}; brackets: 95% percentile "
          f"bootstrap intervals over inputs ({BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED})."
          " The posterior is the Bayes adversary's, who knows every other feature and the release mechanism: "
          "a kernel-density prior from the training values times the release's probability at each value "
          "(the indicator for the base model; PREDICT's exact output probability at each grid cell's plug-in "
          "class probability for the smoothed one, abstain included). HDI length: the total length of its "
          "highest-density region; MAE: mean absolute error of its mean; smoothed − base (paired): the mean "
          "over inputs of the smoothed release's value minus the base model's on the same input (> 0: "
          "smoothing leaves the adversary less precise), with its bootstrap interval; posterior/prior of the true cell: "
          "above 1, the release makes the true value more likely. The compatible set (every value whose "
          "release equals the release at the true value, with the run's abstain rule) and the error of the "
          "training mean inside it are kept for reference; under the neutral rule it also counts abstain "
          "cells beyond the boundary that an observer of the label can all but rule out. Certified: share of "
          "smoothed releases with a certificate; half-width: radius × the attribute's scale. PREDICT's advantage: "
          "the median over certified inputs of a sound bound (rpdist.privacy.bounds, each with confidence 1 − α) on "
          "a one-query distinguisher's advantage between the input and any point within its certified radius; it "
          "is far above the α/2 that holds only for the smoothed classifier itself.", "")
    w.add("### Plots", "")
    from matplotlib.ticker import MaxNLocator

    panels = list(df.groupby(by, sort=True)) if by else [((), df)]
    # The grid's own span (low .. low + (G-1)·step) is the longest compatible set a grid point can give.
    span = None
    grid = ["grid_step", "grid_points"]
    if set(grid) <= set(df.columns) and len(df[grid].drop_duplicates()) == 1:
        span = float(df["grid_step"].iloc[0]) * (int(df["grid_points"].iloc[0]) - 1)
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    fig = figure(6.4 * min(len(panels), 3) if rows == 1 else 4.8 * columns, 4.2 if rows == 1 else 3.6 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    bins = np.histogram_bin_edges(df["compatible_length"].dropna(), bins=min(40, max(10, int(np.sqrt(len(df))))))
    for ax, (key, part) in zip(axes, panels):
        for i, release in enumerate(sorted(part["release_model"].unique())):
            lengths = part.loc[part["release_model"] == release, "compatible_length"].dropna()
            median = float(lengths.median())
            ax.hist(lengths, bins=bins, color=f"C{i}", alpha=0.45, edgecolor=f"C{i}", linewidth=1.0,
                    label=f"{release} (median {median:.2f})")
            ax.axvline(median, color=f"C{i}", ls="--", lw=1.5)
        if span:
            ax.axvline(span, color="grey", ls=":", lw=1.5, label=f"whole grid range ({span:.2f})")
        key = key if isinstance(key, tuple) else (key,)
        sub = ", ".join(f"{names[c]} = {fmt(v)}" for c, v in zip(by, key))
        style(ax, sub if len(panels) > 1 else f"Compatible lengths of {attribute}{in_params}",
               f"compatible length ({attribute}, raw units)", "inputs")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best", fontsize=9)
    if len(panels) > 1:
        fig.suptitle(f"Compatible lengths of {attribute}{in_params}", fontsize=11)
    caption = (f"Distribution of the compatible-set length of {attribute} per input, base model against the "
               f"smoothed release{in_params}"
               + (f", one panel per {', '.join(names[c] for c in by)}" if by else "") + "; dashed: medians"
               + ("; dotted: the span of the attribute grid, the longest possible set" if span else "")
               + ". Longer = the adversary pins the attribute down less precisely.")
    w.image(fig, f"{slug}rap-lengths", "compatible lengths base against smoothed", caption)
    curve = _beside(source, CURVE_FILE)
    if curve is not None:
        release_rates(w, curve, attribute, slug)
    if "sigma" in df.columns and df["sigma"].nunique() > 1:
        hdi_against_sigma(w, summary, attribute, level, slug)
        paired_against_sigma(w, summary, attribute, slug)
    posteriors = _beside(source, POSTERIORS_FILE)
    if posteriors is not None and len(posteriors):
        typical_posteriors(w, posteriors, attribute, slug)


def _beside(source, name: str) -> pd.DataFrame | None:
    """A file ``rpdist rap`` writes beside its table (for a sweep: every point's, with its σ, N, α and seed)."""
    if source.sweep:
        from rpdist.pipelines.sweep import read_points

        table = read_points(source.path, name)
        return None if table is None else table.to_pandas()
    path = source.path / name
    return pd.read_parquet(path) if path.is_file() else None


def _against_sigma(summary: list[dict], key: str, releases: tuple[tuple[str, str, float], ...], ylabel: str):
    """A figure of the summary ``key`` (with its bootstrap interval) against σ: one panel per λ, one colour
    per N, one line style per release in ``releases`` = ((release, style, dodge in σ-range units), …), at the
    smallest α when several were run."""
    frame = pd.DataFrame(summary)
    if "alpha" in frame.columns:
        frame = frame[frame["alpha"] == frame["alpha"].min()]
    if "l1_non_sensitive" not in frame.columns:
        frame = frame.assign(l1_non_sensitive=0.0)
    lambdas = sorted(frame["l1_non_sensitive"].unique())
    spread = float(frame["sigma"].max() - frame["sigma"].min())
    fig = figure(5.2 * len(lambdas), 4.2)
    axes = fig.subplots(1, len(lambdas), squeeze=False, sharey=True)[0]
    for ax, lam in zip(axes, lambdas):
        part = frame[frame["l1_non_sensitive"] == lam]
        for i, n in enumerate(sorted(part["n"].unique())):
            for release, line, dodge in releases:
                c = part[(part["n"] == n) & (part["release_model"] == release)].sort_values("sigma")
                y = c[key].to_numpy(dtype=float)
                errors = np.abs(np.vstack([y - c[f"{key}_low"].to_numpy(dtype=float),
                                           c[f"{key}_high"].to_numpy(dtype=float) - y]))
                ax.errorbar(c["sigma"] + dodge * spread, y, yerr=np.nan_to_num(errors), fmt=line, color=f"C{i}",
                            lw=1.4, ms=4, capsize=3, label=f"{release}, N = {n:,}" if len(releases) > 1 else f"N = {n:,}")
        style(ax, f"ℓ1 penalty λ = {fmt(lam)}", "σ (the model's input units)", ylabel)
        ax.legend(fontsize=8)
    return fig, axes


def hdi_against_sigma(w, summary: list[dict], attribute: str, level: float, slug: str) -> None:
    """Median posterior HDI length against σ with its bootstrap interval; base dashed, smoothed solid."""
    fig, _ = _against_sigma(summary, "median_hdi_length", (("base", "--", -0.01), (SMOOTHED, "-o", 0.01)),
                            f"median {100 * level:g}% HDI length ({attribute})")
    w.image(fig, f"{slug}rap-hdi-sigma", "median posterior HDI length against σ",
            f"Median length of the Bayes adversary's {100 * level:g}% highest-density region of {attribute} "
            "against σ, with its 95% bootstrap interval over inputs (base and smoothed drawn a little apart); dashed: base model, solid: smoothed (PREDICT); "
            "one colour per N, one panel per ℓ1 penalty λ. Shorter = the adversary pins the attribute down more "
            "precisely. The base model changes with σ too when it is trained at σ.")


def paired_against_sigma(w, summary: list[dict], attribute: str, slug: str) -> None:
    """The paired smoothed − base posterior MAE against σ, one colour per N, with a line at 0."""
    fig, axes = _against_sigma(summary, "posterior_mae_vs_base", ((SMOOTHED, "-o", 0.0),),
                               f"posterior MAE, smoothed − base ({attribute})")
    for ax in axes:
        ax.axhline(0, color="grey", ls=":", lw=1.2)
    w.image(fig, f"{slug}rap-mae-vs-base", "posterior MAE, smoothed − base, against σ",
            f"Mean over inputs of the Bayes adversary's absolute error on {attribute} against the smoothed release "
            "minus that against the base model on the same input, with its 95% bootstrap interval, against σ; one "
            "colour per N, one panel per ℓ1 penalty λ. Above 0: smoothing leaves the adversary less precise; below "
            "0: the smoothed release (its abstentions) tells the adversary more than the base model.")


def typical_posteriors(w, posteriors: pd.DataFrame, attribute: str, slug: str) -> None:
    """The posterior densities of the inputs at the quartiles and median of the smoothed HDI length, base
    against smoothed, with the prior and the true value: one row per λ, at one (σ, N, α, seed) — σ nearest 1,
    then the smallest N, α and seed."""
    df = posteriors
    keys = {}
    for key in ("sigma", "n", "alpha", "seed"):
        if key in df.columns:
            values = sorted(df[key].unique())
            keys[key] = min(values, key=lambda v: abs(v - 1.0)) if key == "sigma" else values[0]
            df = df[df[key] == keys[key]]
    if "l1_non_sensitive" not in df.columns:
        df = df.assign(l1_non_sensitive=0.0)
    lambdas = sorted(df["l1_non_sensitive"].unique())
    columns = max(df.groupby("l1_non_sensitive")["input_id"].nunique())
    fig = figure(4.6 * columns, 3.6 * len(lambdas))
    axes = fig.subplots(len(lambdas), columns, squeeze=False)
    for row, lam in zip(axes, lambdas):
        part = df[df["l1_non_sensitive"] == lam]
        picks = part[["quantile", "input_id"]].drop_duplicates().sort_values("quantile")
        for ax in row[len(picks):]:
            ax.set_visible(False)
        for ax, pick in zip(row, picks.itertuples()):
            cells = part[part["input_id"] == pick.input_id]
            notes = []
            for i, release in enumerate(("base", SMOOTHED)):
                c = cells[cells["release_model"] == release].sort_values("cell")
                widths = (c["cell_high"] - c["cell_low"]).to_numpy()
                ok = widths > 0  # the true value's cell has zero width where it repeats a grid value
                ax.stairs(c["posterior"].to_numpy()[ok] / widths[ok], _edges(c, ok), color=f"C{i}", lw=1.4,
                          label=release)
                notes.append(f"{release} released {_label(c['released_label'].iloc[0])}, "
                             f"HDI {float(c['posterior_hdi_length'].iloc[0]):.2f}")
            ax.stairs(c["prior"].to_numpy()[ok] / widths[ok], _edges(c, ok), color="grey", ls=":", lw=1.2,
                      label="prior (KDE)")
            ax.axvline(float(cells["true_value"].iloc[0]), color="k", lw=1, label=f"true {attribute}")
            style(ax, f"λ = {fmt(lam)}, input {pick.input_id} (q = {pick.quantile:g})\n" + "; ".join(notes),
                  f"{attribute} (raw units)", "posterior density")
            ax.title.set_fontsize(9)
    axes[0][0].legend(fontsize=7)
    setting = ", ".join(f"{ {'sigma': 'σ', 'n': 'N', 'alpha': 'α'}.get(k, k)} = {fmt(v)}" for k, v in keys.items())
    w.image(fig, f"{slug}rap-posteriors", "posteriors of typical inputs",
            f"The Bayes adversary's posterior density of {attribute} for the inputs at the quartiles and the median "
            f"of the smoothed HDI length ({setting}; one row per ℓ1 penalty λ), base model against the smoothed "
            "release, with the kernel-density prior (dotted) and the true value (black); each title gives the "
            "released label and the HDI length of both. They were computed by `rpdist rap` with the run's own "
            "noise (`rap_posteriors.parquet`), not by this report.")


def _edges(cells: pd.DataFrame, ok: np.ndarray) -> np.ndarray:
    """Edges of the cells of positive width (a zero-width cell only repeats an edge)."""
    low, high = cells["cell_low"].to_numpy()[ok], cells["cell_high"].to_numpy()[ok]
    return np.append(low, high[-1])


def _label(label) -> str:
    return "abstain" if int(label) == -1 else str(int(label))


def release_rates(w, curve: pd.DataFrame, attribute: str, slug: str) -> None:
    """Share of inputs released as class 1 at each swept value of the attribute, base (dotted) and
    smoothed (solid), one colour per σ and one panel per other setting that varies."""
    by = [c for c in ("l1_non_sensitive", "n", "alpha") if c in curve.columns and curve[c].nunique() > 1]
    names = {"l1_non_sensitive": "ℓ1 penalty λ", "n": "N", "alpha": "α"}
    panels = list(curve.groupby(by, sort=True)) if by else [((), curve)]
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    fig = figure(5.6 * columns, 4.2 * rows)
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    sigmas = sorted(curve["sigma"].unique())
    for ax, (key, part) in zip(axes, panels):
        for i, sigma in enumerate(sigmas):
            for release, line in (("base", ":"), (SMOOTHED, "-")):
                c = part[(part["sigma"] == sigma) & (part["release_model"] == release)].sort_values("attribute_value")
                ax.plot(c["attribute_value"], 100 * c["positive_rate"], line, color=f"C{i}", lw=1.4,
                        label=f"{release}, σ = {fmt(sigma)}")
        key = key if isinstance(key, tuple) else (key,)
        style(ax, ", ".join(f"{names[c]} = {fmt(v)}" for c, v in zip(by, key)) or "Release rate",
              f"{attribute} set to (raw units), other features held fixed", "released as class 1 (%)")
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=7, ncol=2)
    w.image(fig, f"{slug}rap-release-rate", "release rate against the attribute",
            f"Share of inputs whose release is class 1 when {attribute} is set to each swept value (abstain counts "
            "as not class 1); dotted: base model, solid: smoothed (PREDICT)"
            + (f"; one panel per {', '.join(names[c] for c in by)}" if by else "") + ".")




