"""The distinguishing audit (``rpdist audit distinguish``) as an analysis: summary, columns, report section.

Every figure about how well an observer tells x from a close x' through the release is computed in
:meth:`AuditAnalysis.summarize`; the CLI, the manifest and the report read it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rpdist.analyses.base import Analysis, Column, Outcome
from rpdist.reporting.format import fmt, num, with_interval
from rpdist.reporting.plots import figure, style
from rpdist.privacy.distinguish import family_lower
from rpdist.smoothing.stats import bootstrap_interval

KEYS = ("release", "n", "k")
POINT = ("sigma", "alpha", "seed")  # a sweep's grid point (single runs from before these columns lack them)
AT_RADIUS = "r1"  # the partner on the edge of x's certified ball


def _release(r: dict) -> str:
    return r["release"] if r["certified_release"] else f"{r['release']} (uncertified)"


def group_keys(table: pd.DataFrame) -> list[str]:
    """What one summary row or plot panel holds fixed: the grid point's σ, α and seed where the table
    has them (a sweep's several points), then release, N and k."""
    return [c for c in POINT if c in table.columns] + list(KEYS)


class AuditAnalysis(Analysis):
    name = "audit"
    final_file = "audit.parquet"
    title = "Distinguishing audit of the release"
    required_columns = ("release", "n", "k", "point", "distance", "empirical_advantage", "empirical_low",
                        "empirical_high", "bound", "alpha_half", "certified_release", "input_id", "correct", "scored")
    summary_columns = (
        Column("σ", lambda r: fmt(r["sigma"]) if "sigma" in r else "—", key=True),
        Column("α", lambda r: fmt(r["alpha"]) if "alpha" in r else "—", key=True),
        Column("release", _release, key=True), Column("N", lambda r: f"{r['n']:,}", key=True),
        Column("k", lambda r: f"{r['k']}", key=True), Column("inputs", lambda r: f"{r['inputs']:,}"),
        Column("advantage at R, median [95% CI]", lambda r: with_interval(r, "median_advantage_at_radius")),
        Column("bound at R, median", lambda r: num(r["median_bound_at_radius"], 3)),
        Column("largest advantage [95% CI]", lambda r: with_interval(r, "max_advantage")),
        Column("pairs above bound (family-wise 95%)", lambda r: f"{r['pairs_above_bound']} / {r['pairs']}"),
        Column("pairs above α/2 (family-wise 95%)", lambda r: f"{r['pairs_above_alpha_half']} / {r['pairs']}"),
    )

    def run(self, spec, progress: bool = False) -> Outcome:
        from rpdist.privacy.audit import run_audit

        return run_audit(spec, progress=progress)

    def sweep_spec_model(self):
        from rpdist.privacy.audit import AuditSpec

        return AuditSpec

    def point_spec(self, sweep, point: dict, **fixed):
        """One audit per (σ, N, α, seed): the sweep file's other keys are AuditSpec fields."""
        return self.sweep_spec_model()(dataset=sweep.dataset, sigma=point["sigma"], n=(point["n"],),
                                       alpha=point["alpha"], seed=point["seed"], **sweep.settings, **fixed)

    def point_models(self, sweep, point: dict) -> dict[str, str]:
        """The model the point audits: the dataset's default at the point's σ (trained and cached on first
        use) or the file given."""
        from rpdist.pipelines.run import model_sha256
        from rpdist.privacy.audit import model_choice

        return {"model": model_sha256(model_choice(self.point_spec(sweep, point, out=".", run_id="models")))}

    def outcome(self, run_dir, manifest: dict, resumed_chunks: int = 0) -> Outcome:
        reader = lambda columns=None: run_dir.read_final(columns=columns).to_pandas()  # noqa: E731
        return Outcome(self.name, run_dir.path, manifest, self.summarize(reader()), resumed_chunks, reader)

    def summarize(self, table: pd.DataFrame) -> list[dict]:
        """Per (release, N, k): the advantage at the certified radius (median over inputs, percentile
        bootstrap interval), the largest scored advantage with its Clopper–Pearson interval, and how
        many pairs lie above the sound bound (should be none) and above α/2 — judged by lower bounds
        that hold for every pair of the run at once (95%, Bonferroni), so chance alone flags none."""
        rows = []
        family = family_lower(table["correct"], table["scored"], len(table)) if len(table) else np.array([])
        table = table.assign(family_low=family)
        keys = group_keys(table)
        for key, part in table.groupby(keys, sort=True):
            key = dict(zip(keys, key))
            edge = part[part["point"] == AT_RADIUS]
            worst = part.loc[part["empirical_advantage"].idxmax()]
            advantages = edge["empirical_advantage"].to_numpy()
            median = float(np.median(advantages)) if len(advantages) else float("nan")
            low, high = bootstrap_interval(advantages)
            rows.append({
                **{c: (int if c == "seed" else float)(key[c]) for c in POINT if c in key},
                "release": str(key["release"]), "n": int(key["n"]), "k": int(key["k"]),
                "certified_release": bool(part["certified_release"].iloc[0]),
                "inputs": int(part["input_id"].nunique()), "pairs": len(part),
                "inputs_at_radius": len(edge),
                "median_advantage_at_radius": median, "median_advantage_at_radius_low": low,
                "median_advantage_at_radius_high": high,
                "median_bound_at_radius": float(edge["bound"].median()) if len(edge) else float("nan"),
                "max_advantage": float(worst["empirical_advantage"]), "max_advantage_low": float(worst["empirical_low"]),
                "max_advantage_high": float(worst["empirical_high"]), "max_advantage_distance": float(worst["distance"]),
                "pairs_above_bound": int((part["family_low"] > part["bound"]).sum()),
                "pairs_above_alpha_half": int((part["family_low"] > part["alpha_half"]).sum()),
                "alpha_half": float(part["alpha_half"].iloc[0]),
            })
        return rows

    def report(self, w, source, slug: str) -> None:
        table = source.table
        summary = self.summarize(table)
        w.add("### Summary", "")
        w.add(*self.summary_table(summary))
        w.add("Each pair is an audited input x and a partner x' at a given distance, moved in the direction that "
              "lowers x's top-class probability fastest that the audit found. The empirical advantage (Pr[correct "
              "guess] − 1/2) is that of a distinguisher fitted on half of the trials and scored on the other half, "
              "with a 95% Clopper–Pearson interval; R is x's certified radius. A pair counts as above the bound (or "
              "α/2) only when a lower bound that holds for all pairs of the run at once (95%, Bonferroni) exceeds "
              "it. The bound is the sound per-input "
              "bound of rpdist.privacy.bounds (confidence 1 − α over x's certificate). α/2 is the paper's bound for "
              "the smoothed classifier g, shown for comparison: it is not a bound on these releases.", "")
        w.add("### Plots", "")
        keys = group_keys(table)
        groups = list(table.groupby(keys, sort=True))
        fig = figure(5.0 * min(len(groups), 3), 4.2 * -(-len(groups) // 3))
        axes = fig.subplots(-(-len(groups) // 3), min(len(groups), 3), squeeze=False).ravel()
        for ax, (key, part) in zip(axes, groups):
            key = dict(zip(keys, key))
            release, n, k = key["release"], key["n"], key["k"]
            several = "sigma" in key and table["sigma"].nunique() > 1
            sigma = f"σ = {fmt(key['sigma'])}, " if several else ""
            fixed = part[part["radius_fraction"].isna()]  # partners at fixed multiples of σ
            mean = fixed.groupby("distance_sigma")[["empirical_advantage", "empirical_low", "empirical_high",
                                                    "bound"]].mean()
            ax.plot(mean.index, mean["bound"], color="C3", lw=2, label="sound bound (mean over inputs)")
            ax.errorbar(mean.index, mean["empirical_advantage"], fmt="o-", color="C0", lw=1.5,
                        yerr=[mean["empirical_advantage"] - mean["empirical_low"],
                              mean["empirical_high"] - mean["empirical_advantage"]],
                        label="empirical advantage (mean, mean 95% CI)")
            edge = part[part["radius_fraction"].notna()]  # partners at fractions of each input's radius
            ax.plot(edge["distance_sigma"], edge["bound"], "x", color="C3", alpha=0.6,
                    label="bound, partner at a fraction of R")
            ax.plot(edge["distance_sigma"], edge["empirical_advantage"], "s", mfc="none", color="C0", alpha=0.7,
                    label="empirical, partner at a fraction of R")
            ax.axhline(float(part["alpha_half"].iloc[0]), color="grey", ls=":", lw=1.5, label="α/2 (the paper's, for g)")
            certified = bool(part["certified_release"].iloc[0])
            ax.set_ylim(-0.05, 0.55)
            style(ax, f"{sigma}{release}{'' if certified else ' (uncertified)'}, N = {fmt(n)}, k = {k}",
                  "distance ‖x − x'‖ / σ", "advantage")
        for ax in axes[len(groups):]:
            ax.set_visible(False)
        axes[0].legend(loc="upper left", fontsize=8)
        w.image(fig, f"{slug}audit-advantage", "empirical advantage and bound against distance",
                "Empirical distinguishing advantage against the distance between x and x' (in σ), with the sound "
                "per-input bound and the paper's α/2 line, one panel per release, N and k. Points where the "
                "empirical interval lies above the bound would refute the bound.")
