"""Model extraction (``rpdist attack extraction``) as an analysis: fidelity per budget, report section.

Every figure (fidelity, student accuracy, utility, with 95% intervals over seeds) comes from
:meth:`ExtractionAnalysis.summarize`; the CLI, the manifest and the report read it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from rpdist.analyses.attack import RP
from rpdist.analyses.base import Analysis, Column, Outcome
from rpdist.errors import InputError
from rpdist.reporting.format import fmt, pct, with_interval
from rpdist.reporting.plots import figure, style

SETTING = ("defense", "sigma", "n", "epsilon", "release", "query_source", "student")
METRICS = ("fidelity_target", "fidelity_release", "student_accuracy", "utility_accuracy")


def mean_interval(values) -> tuple[float, float, float]:
    """Mean over seeds and its two-sided 95% Student-t interval, clipped to [0, 1] (NaNs dropped; one
    value: no width)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = float(student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, max(0.0, mean - half), min(1.0, mean + half)  # the metrics are shares: clip to [0, 1]


def setting_label(r: dict) -> str:
    if r["defense"] == "rp":
        tail = "" if r["certified_release"] else " (uncertified)"
        return f"rp σ={fmt(r['sigma'])} N={fmt(r['n'])} {r['release']}{tail}"
    if r["defense"] in ("dpsgd", "rr"):
        return f"{r['defense']} ε={fmt(r['epsilon'])}"
    return str(r["defense"])


class ExtractionAnalysis(Analysis):
    name = "extraction"
    final_file = "extraction.parquet"
    title = "Model extraction through the release"
    required_columns = ("defense", "budget", "seed", "fidelity_target", "fidelity_release", "student_accuracy",
                        "utility_accuracy")
    summary_columns = (
        Column("setting", setting_label, key=True), Column("queries", lambda r: f"{r['budget']:,}", key=True),
        Column("seeds", lambda r: str(r["seeds"])),
        Column("fidelity to target [95% CI]", lambda r: with_interval(r, "fidelity_target")),
        Column("fidelity to release", lambda r: with_interval(r, "fidelity_release")),
        Column("student accuracy", lambda r: with_interval(r, "student_accuracy")),
        Column("release utility", lambda r: with_interval(r, "utility_accuracy")),
        Column("abstained", lambda r: pct(r['abstain_share'])),
    )

    def run(self, spec, progress: bool = False) -> Outcome:
        from rpdist.attacks.extraction import run_extraction

        return run_extraction(spec, progress=progress)

    def smoothing_grid(self, options: dict) -> bool:
        return options.get("defense", "none") == RP

    def sweep_spec_model(self):
        from rpdist.attacks.extraction import ExtractionSpec

        return ExtractionSpec

    def point_spec(self, sweep, point: dict, **fixed):
        """One extraction run per (σ, N, α) of an ``rp`` sweep, or per α for the other defenses; the sweep
        file's other keys are ExtractionSpec fields. Students repeat over ``seeds``, so no seed grid."""
        given = [k for k in ("sigmas", "ns") if k in sweep.settings]
        if given:
            raise InputError(f"key {given[0]!r}: a sweep takes σ and N from its 'sigma' and 'n' lists")
        if sweep.seed != (0,):
            raise InputError("seed: extraction has no noise seed to sweep; its students repeat over the key 'seeds'")
        grid = dict(sigmas=(point["sigma"],), ns=(point["n"],)) if self.smoothing_grid(sweep.settings) else {}
        return self.sweep_spec_model()(dataset=sweep.dataset, alpha=point["alpha"], **grid, **sweep.settings, **fixed)

    def point_models(self, sweep, point: dict) -> dict[str, str]:
        """The targets the point attacks, as this machine trains (or cached) them."""
        from rpdist.attacks.extraction import target_models

        spec = self.point_spec(sweep, point, out=".", run_id="models")
        return {name: ref.sha256 for name, ref in target_models(spec).items()}

    def summarize(self, table: pd.DataFrame) -> list[dict]:
        """Per (defense setting, budget): each metric's mean over seeds with a 95% t-interval, the
        share of queries that abstained and the forward passes of one seed's queries."""
        keys = [c for c in SETTING if c in table.columns]
        rows = []
        for key, part in table.groupby([*keys, "budget"], dropna=False, sort=True):
            row = dict(zip([*keys, "budget"], key))
            row["certified_release"] = bool(part["certified_release"].iloc[0]) if "certified_release" in part else False
            row["seeds"] = int(part["seed"].nunique())
            for metric in METRICS:
                row[metric], row[metric + "_low"], row[metric + "_high"] = mean_interval(part[metric])
            row["abstain_share"] = float(part["abstained"].sum() / part["queries"].sum()) if "queries" in part else 0.0
            row["forward_passes"] = int(part["forward_passes"].mean()) if "forward_passes" in part else 0
            rows.append(row)
        return rows

    def report(self, w, source, slug: str) -> None:
        summary = self.summarize(source.table)
        w.add("### Summary", "")
        w.add(*self.summary_table(summary))
        w.add("A student trained on the release's answers to the attacker's queries (abstentions dropped) is "
              "scored on the held-out test split: fidelity to target is its agreement with the undefended model "
              "(the function the attacker wants), fidelity to release its agreement with the release where the "
              "release answered. Means over seeds with 95% Student-t intervals.", "")
        g = pd.DataFrame(summary)
        fig = figure(11.0, 4.2)
        axes = fig.subplots(1, 2)
        for i, (label, part) in enumerate(g.assign(label=[setting_label(r) for r in summary]).groupby("label", sort=True)):
            part = part.sort_values("budget")
            for ax, metric in zip(axes, ("fidelity_target", "student_accuracy")):
                ax.plot(part["budget"], part[metric], "o-", color=f"C{i % 10}", label=label)
                ax.fill_between(part["budget"], part[metric + "_low"], part[metric + "_high"], color=f"C{i % 10}",
                                alpha=0.15)
        for ax, title in zip(axes, ("Fidelity to the undefended target", "Student test accuracy")):
            ax.set_xscale("log")
            style(ax, title, "queries (log scale)", title.split(" to ")[0].lower())
        axes[0].legend(fontsize=8, loc="lower right")
        w.image(fig, f"{slug}extraction-fidelity", "fidelity against query budget",
                "Fidelity of the student to the undefended target and the student's test accuracy against the "
                "number of queries, one curve per defense setting, with 95% intervals over seeds.")
