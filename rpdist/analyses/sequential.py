"""Sequential CERTIFY as an analysis: certificates plus how many samples each input needed.

Written by ``rpdist certify --target-radius … --max-n …`` (or ``--mode adaptive|staged``); the run is
:func:`rpdist.pipelines.seqrun.execute_sequential`. The summary adds mean and median samples per
input, the share left undecided at max N, and certified accuracy at each target radius as decided.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rpdist.analyses.base import Column
from rpdist.analyses.smoothing import CertifyAnalysis, labelled
from rpdist.reporting.format import pct
from pydantic import BaseModel, ConfigDict

from rpdist.smoothing.sequential import CERTIFIED, UNDECIDED

NAME = "certify-sequential"


class SequentialAnalysis(CertifyAnalysis):
    name = NAME
    final_file = "sequential-certificates.parquet"
    title = "Sequential certification (CERTIFY until decided)"
    required_columns = ("prediction", "radius", "correct", "sigma", "n", "alpha", "samples_used", "decision",
                        "radius_decided", "target_radius")
    per_point = True
    summary_columns = (
        Column("σ", lambda r: f"{r['sigma']:g}", key=True), Column("max N", lambda r: f"{r['n']:,}", key=True),
        Column("α", lambda r: f"{r['alpha']:g}", key=True), Column("seed", lambda r: str(r["seed"]), key=True),
        Column("inputs", lambda r: f"{r['inputs']:,}"),
        Column("mean samples per input", lambda r: f"{r['mean_samples']:,.0f}"),
        Column("median samples per input", lambda r: f"{r['median_samples']:,.0f}"),
        Column("undecided at max N", lambda r: pct(r['undecided_rate'])),
        Column("certified accuracy at target radii", lambda r: ", ".join(
            f"r={k}: {pct(v)}" for k, v in r["certified_at_target"].items())),
        Column("mean radius", lambda r: f"{r['mean_radius']:.4f}"),
    )

    def _summarize_group(self, df: pd.DataFrame, sigma: float) -> dict:
        out = super()._summarize_group(df, sigma)
        used = df["samples_used"].to_numpy()
        out["mean_samples"] = float(used.mean()) if len(df) else float("nan")
        out["median_samples"] = float(np.median(used)) if len(df) else float("nan")
        out["undecided_rate"] = float((df["decision"].to_numpy() == UNDECIDED).mean()) if len(df) else float("nan")
        radii = sorted({float(r) for rs in df["target_radius"] for r in rs})
        decided = df["radius_decided"].to_numpy()
        correct = df["correct"].fillna(False).to_numpy(dtype=bool) if labelled(df) else None
        out["certified_at_target"] = {
            f"{r:g}": float("nan") if correct is None else float(np.mean(correct & (decided >= r)))
            for r in radii}
        out["certified_share"] = float((df["decision"].to_numpy() == CERTIFIED).mean()) if len(df) else float("nan")
        return out

    def _run_section(self, w, source, slug: str) -> None:
        super()._run_section(w, source, slug)
        s = self.summarize(source.table)
        for row in s:
            w.add(f"Sequential decisions (σ = {row['sigma']:g}, max N = {row['n']:,}): mean "
                  f"{row['mean_samples']:,.0f} and median {row['median_samples']:,.0f} estimation samples per input; "
                  f"{100 * row['undecided_rate']:.1f}% undecided at max N; certified accuracy at the target radii "
                  + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in row["certified_at_target"].items()) + ".", "")

    def run(self, spec, progress: bool = False):
        from rpdist.pipelines.run import execute

        return execute(spec, progress=progress)

    def sweep_spec_model(self):
        return SequentialSweepKeys

    def point_spec(self, sweep, point: dict, **fixed):
        """One sequential certify run per (σ, max N, α, seed): the grid's ``n`` is the run's max N."""
        from rpdist.pipelines.run import run_spec
        from rpdist.smoothing.job import CERTIFY

        keys = SequentialSweepKeys(**sweep.settings).model_dump()
        spec = run_spec(CERTIFY, sigma=point["sigma"], max_n=point["n"], alpha=point["alpha"], seed=point["seed"],
                        dataset=sweep.dataset, **keys, **fixed)
        spec.sequential.validated(spec.config.sigma, spec.config.alpha, spec.config.noise_block)  # refused now
        return spec

    def point_models(self, sweep, point: dict) -> dict[str, str]:
        """The model the point certifies with: the dataset's default at the point's σ (trained and cached on
        first use) or the file given."""
        from rpdist.pipelines.run import model_sha256

        return {"model": model_sha256(self.point_spec(sweep, point, out=".", run_id="models"))}


class SequentialSweepKeys(BaseModel):
    """The keys of a ``certify-sequential`` sweep file besides the grid: ``rpdist certify``'s options
    (the grid's ``n`` is each point's max N)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_radius: tuple[float, ...] = ()
    mode: str | None = None
    radius_tolerance: float | None = None
    against_label: bool = False
    look_growth: float | None = None
    model: str | None = None
    arch: str | None = None
    train_sigma: float | None = None
    split: str = "test"
    label_column: str = "label"
    limit: int | None = None
    n0: int = 100
    batch_size: int | None = None
    noise_block: int | None = None
