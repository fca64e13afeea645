"""CERTIFY and PREDICT as analyses: their summary, their printed columns and their report sections.

The runs themselves are :func:`rpdist.pipelines.run.execute`; sweeps of these two share counts
across N and α (:mod:`rpdist.pipelines.sweep`) rather than running each grid point.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rpdist.analyses.base import Analysis, Column
from rpdist.reporting.format import UNITS, dataset_name, md_table, num, pct_interval, radius_label
from rpdist.reporting.plots import caps_note, curves_plot, figure, labelled, style
from rpdist.smoothing.job import CERTIFY, PREDICT
from rpdist.smoothing.stats import clopper_pearson

INTERVALS = ("Brackets: 95% Clopper–Pearson intervals over the inputs, which say how far the rate on the data "
             "these inputs were drawn from may lie; they do not cover the Monte Carlo error of each input's outcome.")
NO_LABELS = "n/a (no labels)"  # a rate over true labels, of a dataset that has none

RADIUS_MULTIPLES = (0.0, 0.25, 0.5, 1.0, 2.0)  # radii reported, in units of σ
PARAMETERS = ("sigma", "n", "alpha", "seed")


def share(hits: np.ndarray) -> tuple[float, tuple[float, float] | None]:
    """A rate over inputs and its 95% Clopper–Pearson interval (the inputs a sample of the data they came from);
    NaN and no interval over no inputs."""
    return (float(hits.mean()), clopper_pearson(int(hits.sum()), hits.size)) if hits.size else (float("nan"), None)


def rate(row: dict, key: str, radius: str | None = None, missing: str = "n/a") -> str:
    """A summary row's rate with its interval when the row has one (certified accuracy: at ``radius``)."""
    value, ci = row[key], row.get(f"{key}_interval")
    if radius is not None:
        value, ci = value[radius], (ci or {}).get(radius)
    return pct_interval(value, ci, missing)


def multiples_header(m: float) -> str:
    return "r = 0" if m == 0 else f"r ≥ {m:g}σ"


class SmoothingAnalysis(Analysis):
    """What CERTIFY and PREDICT share; ``certifies`` tells them apart (radii or not)."""

    certifies: bool
    per_point = False

    def summarize(self, table: pd.DataFrame) -> list[dict]:
        """One row per (σ, N, α, seed): accuracy, abstain rate, and for CERTIFY radii and certified accuracy."""
        keys = [c for c in PARAMETERS if c in table.columns]
        return [{**dict(zip(keys, key)), **self._summarize_group(part, float(key[0]))}
                for key, part in table.groupby(keys, sort=True)]

    def _summarize_group(self, df: pd.DataFrame, sigma: float) -> dict:
        abstain = df["prediction"].to_numpy() == -1
        labels = labelled(df)
        correct = df["correct"].fillna(False).to_numpy(dtype=bool) if labels else np.zeros(0, dtype=bool)
        (abstain_rate, abstain_ci), (accuracy, accuracy_ci) = share(abstain), share(correct)
        out = {"inputs": int(len(df)), "abstain_rate": abstain_rate, "abstain_rate_interval": abstain_ci,
               "accuracy": accuracy, "accuracy_interval": accuracy_ci}
        if "nonfinite" in df:  # inputs that abstain because the model gave NaN/inf logits on some sample
            out["nonfinite_inputs"] = int((df["nonfinite"].to_numpy() > 0).sum())
        if self.certifies:
            radii = df["radius"].to_numpy()
            out["mean_radius"] = float(radii.mean()) if len(df) else float("nan")
            out["median_radius_certified"] = float(np.median(radii[~abstain])) if (~abstain).any() else 0.0
            # Correct and certified at radius ≥ mσ (radius 0: the smoothed accuracy); no labels, no rate.
            at = {f"{m * sigma:g}": share(correct & (radii >= m * sigma) if labels else correct) for m in RADIUS_MULTIPLES}
            out["certified_accuracy"] = {radius: value for radius, (value, _) in at.items()}
            out["certified_accuracy_interval"] = {radius: ci for radius, (_, ci) in at.items()}
            if "advantage_at_radius" in df and (~abstain).any():  # the deployed release, not g: see privacy.bounds
                out["median_advantage_at_radius"] = float(np.median(df["advantage_at_radius"].to_numpy()[~abstain]))
        return out

    def report(self, writer, source, slug: str) -> None:
        (self._sweep_section if source.sweep else self._run_section)(writer, source, slug)

    def _run_section(self, w, source, slug: str) -> None:
        from rpdist.smoothing.stats import max_radius

        df = source.table
        w.add("### Summary", "")
        groups = list(df.groupby(["sigma", "n", "alpha"], sort=True))
        timings = (source.manifest or {}).get("timings", {})
        for s in self.summarize(df):
            sigma, n, alpha = s["sigma"], s["n"], s["alpha"]
            if len(groups) > 1:
                w.add(f"σ = {sigma:g}, N = {n:,}, α = {alpha:g}:", "")
            rows = [["inputs", s["inputs"]]]
            if self.certifies:
                for m in RADIUS_MULTIPLES:
                    rows.append(["smoothed accuracy (certified at radius ≥ 0)" if m == 0 else
                                 f"certified accuracy at radius ≥ {m * sigma:g} ({m:g}σ)",
                                 rate(s, "certified_accuracy", f"{m * sigma:g}")])
                rows += [["abstain rate", rate(s, "abstain_rate")],
                         ["mean radius (abstain = 0)", num(s["mean_radius"])],
                         ["median radius of certified inputs", num(s["median_radius_certified"])],
                         ["largest certifiable radius at this N, α", num(max_radius(int(n), float(alpha), float(sigma)))]]
            else:
                rows += [["accuracy (abstain = wrong)", rate(s, "accuracy")], ["abstain rate", rate(s, "abstain_rate")]]
            if len(groups) == 1 and timings.get("samples_per_second"):
                rows.append(["samples/s (forward samples per second of wall time)",
                             f"{timings['samples_per_second']:,.0f}"])
            w.add(*md_table(["metric", "value"], rows))
        if self.certifies:
            w.add(f"Radii are ℓ2 distances in {UNITS.get(dataset_name(source) or '', 'input units')} (the model's input "
                  "space); certified accuracy at radius r is the share of inputs predicted correctly and certified at "
                  "radius ≥ r, abstentions counting as wrong.", "")
        w.add(INTERVALS, "")
        if self.certifies and not labelled(df):
            w.add("The table has no labels, so accuracy is n/a and the plot shows the share of inputs certified.", "")
        if not self.certifies:
            w.add("PREDICT releases labels without radii, so this run has no radius plot.", "")
            return
        w.add("### Plots", "")
        curves = [(f"σ = {sigma:g}, N = {n:,}, α = {alpha:g}", part, max_radius(int(n), float(alpha), float(sigma)))
                  for (sigma, n, alpha), part in groups]
        fig = curves_plot(curves, f"Certified accuracy vs radius — {source.name} ({len(df):,} inputs)",
                           radius_label(source))
        w.image(fig, f"{slug}certified-accuracy", "certified accuracy against radius",
                "Certified accuracy: share of inputs whose smoothed prediction is correct and certified at ℓ2 "
                "radius ≥ r (abstentions count as wrong). " + caps_note(curves))


    def _sweep_section(self, w, source, slug: str) -> None:
        from rpdist.smoothing.stats import max_radius

        df = source.table
        rows_of = self.summarize(df)
        summary = pd.DataFrame(rows_of)
        manifest = source.manifest or {}
        w.add("### Summary", "")
        if manifest and manifest.get("status") != "complete":
            w.add(f"**The sweep is not complete (status {manifest.get('status', 'unknown')}); the numbers cover the "
                  "chunks written so far.**", "")
        if self.certifies:
            header = ["σ", "N", "α", "seed", "inputs", *[multiples_header(m) for m in RADIUS_MULTIPLES], "abstain",
                      "mean radius"]
            rows = [[r["sigma"], r["n"], r["alpha"], r["seed"], r["inputs"],
                     *[rate(r, "certified_accuracy", f"{m * r['sigma']:g}") for m in RADIUS_MULTIPLES],
                     rate(r, "abstain_rate"), num(r["mean_radius"])] for r in rows_of]
            w.add(*md_table(header, rows))
            w.add("r ≥ kσ: certified accuracy at ℓ2 radius k·σ of that row (r = 0 is the smoothed accuracy); "
                  "abstain: abstain rate; mean radius: over all inputs, abstentions counted as 0, in "
                  f"{UNITS.get(dataset_name(source) or '', 'input units')}. {INTERVALS}", "")
        else:
            rows = [[r["sigma"], r["n"], r["alpha"], r["seed"], r["inputs"], rate(r, "accuracy"), rate(r, "abstain_rate")]
                    for r in rows_of]
            w.add(*md_table(["σ", "N", "α", "seed", "inputs", "accuracy (abstain = wrong)", "abstain"], rows))
            w.add(INTERVALS, "")
        samples = manifest.get("details", {}).get("forward_samples")
        if samples:
            w.add(f"Forward samples: {samples['used']:,} used, against {samples['naive_grid']:,} for a naive grid of "
                  f"separate runs ({100 * samples['saved_fraction']:.0f}% saved by reusing the largest N's noise "
                  "prefixes across N and α).", "")

        sigmas = sorted(df["sigma"].unique())
        n_max, alpha_min = int(df["n"].max()), float(df["alpha"].min())
        seeds = sorted(df["seed"].unique())
        seed_note = f"pooled over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
        w.add("### Plots", "")
        if self.certifies:
            curves = []
            for sigma in sigmas:
                part = df[(df["sigma"] == sigma) & (df["n"] == n_max) & (df["alpha"] == alpha_min)]
                if len(part):
                    curves.append((f"σ = {sigma:g}", part, max_radius(n_max, alpha_min, float(sigma))))
            fig = curves_plot(curves, f"Certified accuracy vs radius (N = {n_max:,}, α = {alpha_min:g})",
                               radius_label(source))
            w.image(fig, f"{slug}certified-accuracy", "certified accuracy against radius per sigma",
                    f"Certified accuracy against ℓ2 radius, one curve per σ, at the sweep's largest N ({n_max:,}) and "
                    f"smallest α ({alpha_min:g}), {seed_note}. " + caps_note(curves))
        ns = sorted(df["n"].unique())
        if len(ns) < 2:
            w.add("The grid has a single N, so there is no plot against N.", "")
            return
        fig = versus_n(summary, self.certifies, source)
        w.image(fig, f"{slug}versus-n", "abstain rate and mean radius against N",
                "Abstain rate and " + ("mean radius (abstentions count as 0)" if self.certifies
                                       else "accuracy (abstain = wrong)")
                + f" against the number of samples N (log scale); colour: σ, line style: α; {seed_note}.")


class CertifyAnalysis(SmoothingAnalysis):
    name = CERTIFY
    final_file = "certificates.parquet"
    title = "Certified robustness (CERTIFY)"
    required_columns = ("prediction", "radius", "correct", "sigma", "n", "alpha")
    optional_columns = ("advantage_at_radius",)
    certifies = True
    summary_columns = (
        Column("σ", lambda r: f"{r['sigma']:g}", key=True), Column("N", lambda r: f"{r['n']:,}", key=True),
        Column("α", lambda r: f"{r['alpha']:g}", key=True), Column("seed", lambda r: str(r["seed"]), key=True),
        Column("inputs", lambda r: f"{r['inputs']:,}"),
        *(Column(f"certified accuracy @ r ≥ {m:g}σ [95% CI]",
                 lambda r, m=m: rate(r, "certified_accuracy", f"{m * r['sigma']:g}", missing=NO_LABELS))
          for m in RADIUS_MULTIPLES),
        Column("abstain rate [95% CI]", lambda r: rate(r, "abstain_rate")), Column("mean radius", lambda r: f"{r['mean_radius']:.4f}"),
        Column("release advantage at R ≤ (median)",
               lambda r: "—" if r.get("median_advantage_at_radius") is None else f"{r['median_advantage_at_radius']:.3f}"),
    )

    def overview(self, w, sources) -> None:
        """One plot with every certify run's curve, when a report covers several."""
        sources = [s for s in sources if not s.sweep]
        if len(sources) < 2:
            return
        from rpdist.smoothing.stats import max_radius

        w.add("## All certify runs", "")
        curves = []
        for s in sources:
            for (sigma, n, alpha), part in s.table.groupby(["sigma", "n", "alpha"], sort=True):
                curves.append((f"{s.name}: σ = {sigma:g}, N = {n:,}, α = {alpha:g}", part,
                               max_radius(int(n), float(alpha), float(sigma))))
        units = {radius_label(s) for s in sources}
        fig = curves_plot(curves, "Certified accuracy vs radius, all certify runs",
                          units.pop() if len(units) == 1 else "ℓ2 radius (input units of each run's model)")
        w.image(fig, "all-certified-accuracy", "certified accuracy against radius for every run",
                "Certified accuracy against ℓ2 radius, one curve per certify run. " + caps_note(curves))


class PredictAnalysis(SmoothingAnalysis):
    name = PREDICT
    final_file = "predictions.parquet"
    title = "Smoothed predictions (PREDICT)"
    required_columns = ("prediction", "correct", "sigma", "n", "alpha")
    certifies = False
    summary_columns = (
        Column("σ", lambda r: f"{r['sigma']:g}", key=True), Column("N", lambda r: f"{r['n']:,}", key=True),
        Column("α", lambda r: f"{r['alpha']:g}", key=True), Column("seed", lambda r: str(r["seed"]), key=True),
        Column("inputs", lambda r: f"{r['inputs']:,}"),
        Column("accuracy (abstain = wrong) [95% CI]", lambda r: rate(r, "accuracy", missing=NO_LABELS)),
        Column("abstain rate [95% CI]", lambda r: rate(r, "abstain_rate")),
    )


def versus_n(summary: pd.DataFrame, certified: bool, source):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    metric, label = (("mean_radius", f"mean {radius_label(source)}") if certified
                     else ("accuracy", "accuracy (%)"))
    mean = summary.groupby(["sigma", "alpha", "n"], sort=True)[["abstain_rate", metric]].mean().reset_index()
    sigmas, alphas, ns = sorted(mean["sigma"].unique()), sorted(mean["alpha"].unique()), sorted(mean["n"].unique())
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    fig = figure(11.5, 4.4)
    axes = fig.subplots(1, 2)
    for ax, column, ylabel, scale in ((axes[0], "abstain_rate", "abstain rate (%)", 100),
                                      (axes[1], metric, label, 1 if certified else 100)):
        for i, sigma in enumerate(sigmas):
            for j, alpha in enumerate(alphas):
                part = mean[(mean["sigma"] == sigma) & (mean["alpha"] == alpha)]
                ax.plot(part["n"], scale * part[column], color=f"C{i}", ls=styles[j % 4], marker=markers[j % 6],
                        lw=1.8, ms=5)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ns))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{int(n):,}" for n in ns])
        ax.set_xlim(ns[0] / 1.5, ns[-1] * 1.5)
        high = max(float(scale * mean[column].max()), 1e-9)
        ax.set_ylim(-0.04 * high, 1.1 * high)  # points at 0 stay visible above the axis
        title = "Abstain rate vs N" if column == "abstain_rate" else (
            "Mean radius vs N (abstentions count as 0)" if certified else "Accuracy vs N (abstain = wrong)")
        style(ax, title, "N (samples per input, log scale)", ylabel)
    handles = [Line2D([], [], color=f"C{i}", lw=2.5) for i in range(len(sigmas))]
    labels = [f"σ = {s:g}" for s in sigmas]
    if len(alphas) > 1:
        handles += [Line2D([], [], color="black", ls=styles[j % 4], marker=markers[j % 6], ms=5)
                    for j in range(len(alphas))]
        labels += [f"α = {a:g}" for a in alphas]
    axes[1].legend(handles, labels, loc="best", fontsize=9)
    if len(alphas) == 1:
        fig.suptitle(f"α = {alphas[0]:g}", fontsize=10)
    return fig


