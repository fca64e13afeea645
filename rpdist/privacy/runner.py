"""``rpdist rap`` as an importable function: resolve data and models, sweep both, write Parquet.

Both the ℓ1-penalised model (the paper's, most favourable case) and the unpenalised one are
always analysed when a penalty is given, because an honest audit shows both.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict
from typing import Annotated, Literal

import pandas as pd
import pyarrow as pa
from pydantic import model_validator

from rpdist.analyses import REGISTRY
from rpdist.analyses.rap import CURVE_FILE, POSTERIORS_FILE, RapAnalysis
from rpdist.analyses.base import Outcome
from rpdist.errors import InputError
from rpdist.io.manifest import new_manifest
from rpdist.privacy.rap import (DEFAULT_GRID_BATCH, DISTINCT, NEUTRAL, rap_analysis, resolve_attribute,
                                typical_posteriors)
from rpdist.io.rundir import RunDir
from rpdist.privacy.posterior import DEFAULT_LEVEL, LIKELIHOOD_KIND, PRIOR_KIND, KdePrior, check_level
from rpdist.privacy.staged import DEFAULT_PILOT, SETTLE_BETA, SETTLE_EPSILON, STAGE_GROWTH, stage_sizes
from rpdist.smoothing import stats
from rpdist.specs import Alpha, Count, Must, NonNegative, OutRoot, Pilot, Seed, Sigma, spec

DEFAULT_L1 = 0.01
RAP = REGISTRY[RapAnalysis.name]


@spec
class RapSpec:
    """Everything a user chooses for one RAP run; validated when built."""

    dataset: str = "insurance"
    attribute: str = "bmi"
    sigma: Sigma = 1.0
    n: Count = 1000
    n0: Count = 100
    alpha: Alpha = 0.001
    grid_step: Annotated[Sigma, Must(name="grid step")] = 0.1
    # several λ: one penalised model each
    l1_non_sensitive: Annotated[NonNegative | list[NonNegative], Must(name="--l1-non-sensitive")] = DEFAULT_L1
    train_sigma: Sigma | None = None
    seed: Seed = 0
    split: str = "test"
    limit: Count | None = None
    batch_size: Annotated[Count | None, Must(name="batch size")] = None
    workers: Count | None = None
    address: str | None = None
    device: str | None = None
    grid_batch: Count = DEFAULT_GRID_BATCH
    # distinct: an abstain cell rules a released label out
    abstain_rule: Annotated[Literal[NEUTRAL, DISTINCT], Must(f"must be {NEUTRAL!r} or {DISTINCT!r}",
                                                             "--abstain-rule")] = NEUTRAL
    out: OutRoot = "results"
    run_id: str | None = None
    posterior_level: float = DEFAULT_LEVEL  # credible level of the adversary posterior's HDI length, in (0, 1)
    pilot: Annotated[Pilot, Must(name="--pilot")] = DEFAULT_PILOT  # first stage settling far grid cells; 0: N everywhere

    @model_validator(mode="after")
    def _feasible(self):
        stats.check_feasible(self.n, self.alpha)
        return self


def l1_values(l1: float | list[float]) -> list[float]:
    """The unpenalised model always, plus one penalised model per distinct λ > 0 (a number or a list)."""
    values = l1 if isinstance(l1, list) else [l1]
    return [0.0] + sorted({float(lam) for lam in values if lam > 0})


def rap_model(spec: RapSpec, lam: float, progress: bool = False):
    """The model RAP analyses at ℓ1 penalty λ: the dataset's default model, trained (or read from the cache)
    at the run's training σ (default: its smoothing σ)."""
    from rpdist.models.zoo import default_model

    return default_model(spec.dataset, train_sigma=rap_train_sigma(spec), seed=spec.seed, progress=progress,
                         l1_non_sensitive=lam, sensitive=spec.attribute if lam > 0 else None)


def rap_train_sigma(spec: RapSpec) -> float:
    return spec.sigma if spec.train_sigma is None else spec.train_sigma


def run_rap(spec: RapSpec, progress: bool = False) -> Outcome:
    """Run the RAP analysis for each model and write ``rap.parquet``, ``rap_curve.parquet``, the posteriors
    of a few typical inputs (``rap_posteriors.parquet``, for the report's plot) and a manifest."""
    from rpdist.datasets.catalog import load_dataset
    from rpdist.models.zoo import DEFAULTS

    lambdas = l1_values(spec.l1_non_sensitive)
    check_level(spec.posterior_level)
    if spec.dataset not in DEFAULTS:
        raise InputError(f"rap needs a built-in dataset with a default model ({', '.join(DEFAULTS)}), got {spec.dataset!r}")
    train = load_dataset(spec.dataset, split="train")
    train_raw = train.raw_features()
    column = resolve_attribute(train.feature_names, train_raw, spec.attribute)
    from rpdist.privacy.rap import attribute_grid

    observed = load_dataset(spec.dataset, split="all").raw_features()[:, column]  # the grid spans all of it
    grid_range = (float(observed.min()), float(observed.max()))
    grid = attribute_grid(*grid_range, spec.grid_step)
    data = load_dataset(spec.dataset, split=spec.split, limit=spec.limit)
    run_id = spec.run_id or f"rap-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    run_dir = RunDir(spec.out, run_id, "rap.parquet")
    config = {**asdict(spec), "run_id": run_id, "dataset_sha256": data.sha256}
    config.pop("out")
    run_dir.claim(config)

    started = time.perf_counter()
    tables, curves, posteriors, models = [], [], [], {}
    for lam in lambdas:
        ref = rap_model(spec, lam, progress)
        models[str(lam)] = {"sha256": ref.sha256, "train_sigma": rap_train_sigma(spec), "l1_non_sensitive": lam}
        table, curve = rap_analysis(
            ref, data.X, data.y, data.input_ids, prior=train_raw[:, column], column=column, attribute=spec.attribute,
            mean=float(train.feature_mean[column]), scale=float(train.feature_std[column]), sigma=spec.sigma,
            n=spec.n, alpha=spec.alpha, n0=spec.n0, grid_step=spec.grid_step, seed=spec.seed,
            batch_size=spec.batch_size, workers=spec.workers, address=spec.address, device=spec.device,
            grid_batch=spec.grid_batch, abstain_rule=spec.abstain_rule, posterior_level=spec.posterior_level,
            grid_range=grid_range, pilot=spec.pilot, progress=progress)
        typical = typical_posteriors(
            ref, table, data.X, data.input_ids, grid=grid, prior=train_raw[:, column], column=column,
            mean=float(train.feature_mean[column]), scale=float(train.feature_std[column]), sigma=spec.sigma,
            n=spec.n, alpha=spec.alpha, seed=spec.seed, pilot=spec.pilot, batch_size=spec.batch_size,
            workers=spec.workers, address=spec.address, device=spec.device)
        table.insert(len(table.columns), "l1_non_sensitive", lam)
        curve["l1_non_sensitive"] = lam
        typical["l1_non_sensitive"] = lam
        tables.append(table)
        curves.append(curve)
        posteriors.append(typical)
    seconds = time.perf_counter() - started
    table = pd.concat(tables, ignore_index=True)
    curve = pd.concat(curves, ignore_index=True)
    summary = RAP.summarize(table)
    smoothed = table[table["release_model"] == "smoothed"]
    run_dir.write_table(pa.Table.from_pandas(curve, preserve_index=False), CURVE_FILE)
    typical = pd.concat(posteriors, ignore_index=True)
    for key, value in (("sigma", float(spec.sigma)), ("n", int(spec.n)), ("alpha", float(spec.alpha)),
                       ("seed", int(spec.seed)), ("attribute", spec.attribute), ("grid_step", float(spec.grid_step))):
        typical[key] = value
    run_dir.write_table(pa.Table.from_pandas(typical, preserve_index=False), POSTERIORS_FILE)
    run_dir.write_table(pa.Table.from_pandas(table, preserve_index=False), run_dir.final_name)
    manifest = new_manifest(
        RAP.name, config, status="complete", models=models,
        dataset={"spec": spec.dataset, "split": spec.split, "rows": len(data), "sha256": data.sha256},
        device={"batch_size": spec.batch_size},
        timings={"seconds": seconds, "finished": dt.datetime.now(dt.timezone.utc).isoformat()},
        details={"attribute": {"name": spec.attribute, "column": column, "mean": float(train.feature_mean[column]),
                               "scale": float(train.feature_std[column]),
                               "train_min": float(train_raw[:, column].min()),
                               "train_max": float(train_raw[:, column].max()),
                               "grid_min": grid_range[0], "grid_max": grid_range[1]},
                 "posterior": {"prior": PRIOR_KIND, "bandwidth": KdePrior(train_raw[:, column]).bandwidth,
                               "likelihood": LIKELIHOOD_KIND, "level": spec.posterior_level},
                 "staging": {"stages": stage_sizes(spec.pilot, spec.n), "growth": STAGE_GROWTH,
                             "beta": SETTLE_BETA, "epsilon": SETTLE_EPSILON,
                             "grid_samples": int(smoothed["grid_samples"].sum()),
                             "unstaged_samples": int(spec.n * (smoothed["grid_points"] + 1).sum())},
                 "summary": summary})
    run_dir.write_manifest(manifest)
    reader = lambda columns=None: run_dir.read_final(columns=columns).to_pandas()  # noqa: E731
    return Outcome(RAP.name, run_dir.path, manifest, summary, reader=reader)
