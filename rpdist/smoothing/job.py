"""CERTIFY and PREDICT of Cohen et al. on the engine: the public ``certify()`` / ``predict()`` API.

Workers return vote counts; this module turns them into certificates with :mod:`rpdist.smoothing.stats`.
Selection (n0) and estimation (n) samples come from different noise phases, so they are
independent by construction.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import AfterValidator, model_validator

from rpdist.privacy import per_input
from rpdist.privacy.mechanisms import mechanism
from rpdist.privacy.per_input import DEFAULT_ADVANTAGE, DEFAULT_QUERIES, DEFAULT_RELEASE
from rpdist.smoothing import stats
from rpdist.distributed.plan import PhaseSpec, Plan
from rpdist.distributed.pool import default_batch_size, ensure_ray, get_pool
from rpdist.reporting.progress import SampleProgress
from rpdist.distributed.scheduler import run_plan
from rpdist.errors import InputError, first_line
from rpdist.models.refs import ModelRef, load_model_file
from rpdist.smoothing.noise import DEFAULT_BLOCK, MAX_BLOCKS, Phase, num_blocks
from rpdist.io.schemas import certificate_schema, prediction_schema
from rpdist.specs import Advantage, Alpha, Count, Must, Seed, Sigma, sorted_unique, spec

CERTIFY, PREDICT = "certify", "predict"


@spec(frozen=True)
class SmoothingConfig:
    """Every parameter that determines the counts and the decisions of a run; validated when built."""

    analysis: Annotated[Literal[CERTIFY, PREDICT], Must(f"must be {CERTIFY} or {PREDICT}")]
    sigma: Sigma
    n: Count
    alpha: Alpha
    n0: Count | None = None
    seed: Seed = 0
    batch_size: Annotated[Count | None, Must(name="batch size")] = None
    noise_block: Annotated[Count, Must(name="noise block")] = DEFAULT_BLOCK
    release: str = DEFAULT_RELEASE  # CERTIFY only: the release whose per-input privacy is reported
    # τ values of the privacy radius columns, and k values (k queries with fresh noise); held sorted and unique
    advantage: Annotated[tuple[Advantage, ...], AfterValidator(sorted_unique), Must(name="--advantage")] = \
        DEFAULT_ADVANTAGE
    queries: Annotated[tuple[Count, ...], AfterValidator(sorted_unique), Must(name="--queries")] = DEFAULT_QUERIES

    @model_validator(mode="after")
    def _decidable(self):
        """CERTIFY needs selection samples; an (n, α) that can never decide, or more noise blocks than
        a stream has, is refused before any work."""
        if self.analysis == CERTIFY:
            stats.check_count(self.n0, "n0")
            stats.check_feasible(self.n, self.alpha)
            mechanism(self.release, n=1000)  # refuses an unknown release in one line
        else:
            stats.check_predict_feasible(self.n, self.alpha)
        for n in (self.n, self.n0 or 0):
            if num_blocks(n, self.noise_block) > MAX_BLOCKS:
                raise InputError(f"n = {n} needs more than {MAX_BLOCKS} noise blocks of {self.noise_block}; "
                                 "use a larger --noise-block")
        return self

    @property
    def phases(self) -> tuple[PhaseSpec, ...]:
        if self.analysis == CERTIFY:
            return (PhaseSpec(Phase.SELECTION, self.n0), PhaseSpec(Phase.ESTIMATION, self.n))
        return (PhaseSpec(Phase.PREDICT, self.n),)

    def as_dict(self) -> dict:
        """JSON-shaped (lists, not tuples), so a config read back from a manifest compares equal."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def privacy_columns(self) -> list[str]:
        return per_input.column_names(self.advantage, self.queries) if self.analysis == CERTIFY else []

    @property
    def schema(self) -> pa.Schema:
        return certificate_schema(self.privacy_columns) if self.analysis == CERTIFY else prediction_schema()


def as_model_ref(model, example: np.ndarray) -> ModelRef:
    """Accept a ModelRef, an in-memory ``nn.Module`` or the path of a TorchScript file."""
    if isinstance(model, ModelRef):
        return model
    if isinstance(model, (str, Path)):
        return load_model_file(model)
    import torch

    if isinstance(model, torch.nn.Module):
        return ModelRef.from_module(model, torch.as_tensor(example[:1], dtype=torch.float32))
    raise InputError(f"model must be a torch.nn.Module, a ModelRef or a TorchScript path, got {type(model).__name__}")


def check_inputs(X, y=None, input_ids=None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Refuse what would make a certificate meaningless: non-finite features, ragged labels or ids.

    A streamed source (:class:`rpdist.datasets.sources.ParquetRows`) was validated when it was scanned and
    is left on disk.
    """
    from rpdist.datasets.sources import ParquetRows

    if isinstance(X, ParquetRows):
        return (X, *_check_labels_and_ids(len(X), y, input_ids))
    X = np.asarray(X.detach().cpu().numpy() if hasattr(X, "detach") else X)
    if X.ndim < 2 or len(X) == 0:
        raise InputError(f"X must be a non-empty batch [inputs, features...], got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise InputError(f"X must be numeric, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
    if bad.any():
        raise InputError(f"X has non-finite values (NaN or inf) in {int(bad.sum())} rows, first at row {int(bad.argmax())}")
    return X, *_check_labels_and_ids(len(X), y, input_ids)


def _check_labels_and_ids(rows: int, y, input_ids) -> tuple[np.ndarray | None, np.ndarray]:
    if y is not None:
        y = np.asarray(y)
        if y.shape != (rows,):
            raise InputError(f"y must have shape ({rows},), got {y.shape}")
        y = y.astype(np.int64)
    if input_ids is None:
        input_ids = np.arange(rows, dtype=np.int64)
    else:
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if input_ids.shape != (rows,) or len(np.unique(input_ids)) != rows:
            raise InputError("input_ids must be unique, one per row of X")
    return y, input_ids


_PROBED: dict[tuple, int] = {}  # (model sha256, input shape, batch) -> classes, for models that passed


def probe_model(model_ref: ModelRef, X: np.ndarray) -> int:
    """Run one input through the model on the driver; returns the number of classes.

    A model that passed for this input shape is not loaded again: attacks and RAP call the API
    thousands of times with one model.
    """
    key = (model_ref.sha256, tuple(X.shape[1:]), min(2, len(X)))
    if key not in _PROBED:
        _PROBED[key] = _probe(model_ref, X)
    return _PROBED[key]


def _probe(model_ref: ModelRef, X: np.ndarray) -> int:
    import torch

    try:
        model = model_ref.load("cpu")
        with torch.inference_mode():
            logits = model(torch.as_tensor(X[:2]))
    except Exception as exc:
        raise InputError(f"the model does not accept inputs of shape {list(X.shape[1:])}: {first_line(exc)}") from None
    if logits.ndim != 2 or logits.shape[0] != min(2, len(X)) or logits.shape[1] < 1:
        raise InputError(f"the model must map [B, ...] to logits [B, classes], got output shape {list(logits.shape)}")
    return int(logits.shape[1])


class SmoothingJob:
    """One certify/predict job: validated inputs, a plan and a pool, producing Arrow tables per chunk."""

    def __init__(self, model, X, y=None, *, config: SmoothingConfig, input_ids=None, workers=None,
                 address=None, device=None, shared_pool=None):
        self.config = config
        self.X, self.y, self.input_ids = check_inputs(X, y, input_ids)
        self.model_ref = as_model_ref(model, self.X)
        self.num_classes = probe_model(self.model_ref, self.X)
        if self.y is not None and len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise InputError(f"labels must lie in [0, {self.num_classes}) for this model")
        if workers is not None:
            stats.check_count(workers, "workers")
        ensure_ray(address)
        self.pool = get_pool(self.model_ref, workers, device, shared_pool)
        batch = self.config.batch_size or default_batch_size(self.pool.device)
        self.plan = Plan(len(self.X), self.config.phases, self.config.noise_block, batch)

    def meter(self, skip: Iterable[int] = (), enabled: bool = False) -> SampleProgress:
        """A progress meter sized for the chunks not in ``skip``; pass it to :meth:`block_counts`."""
        skip = set(skip)
        chunks = [c for c in range(self.plan.num_chunks) if c not in skip]
        return SampleProgress(self.plan.samples(chunks), f"{self.config.analysis} σ={self.config.sigma}", enabled)

    def block_counts(self, skip: Iterable[int] = (), meter: SampleProgress | None = None,
                     on_unit: Callable | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Yield (chunk, {phase: counts [inputs, noise blocks, classes + 1]}) as chunks finish.

        Per-block counts are what make sample reuse possible: the first k blocks are exactly the
        counts of a run with N = k·noise_block. ``skip`` lists chunks done in an earlier run;
        ``meter`` (from :meth:`meter`) counts the samples drawn, and is closed at the end. The
        last slot counts samples whose logits were not all finite; :meth:`table` strips it.
        """
        skip = set(skip)
        chunks = [c for c in range(self.plan.num_chunks) if c not in skip]
        meter = meter or self.meter(skip)

        def advance(unit, samples):
            meter.advance(samples)
            if on_unit is not None:
                on_unit(unit, samples)

        try:
            yield from run_plan(self.pool, self.X, self.input_ids, self.plan, sigma=self.config.sigma,
                                seed=self.config.seed, num_classes=self.num_classes, chunks=chunks, on_unit=advance)
        finally:
            meter.close()

    def tables(self, skip: Iterable[int] = (), meter: SampleProgress | None = None,
               on_unit: Callable | None = None) -> Iterator[tuple[int, pa.Table]]:
        """Yield (chunk index, certificate or prediction table) as chunks finish."""
        for chunk, counts in self.block_counts(skip, meter, on_unit):
            summed = {phase: c.sum(axis=1) for phase, c in counts.items()}
            yield chunk, self.table(self.plan.chunk_rows(chunk), summed, self.config)

    def table(self, rows: tuple[int, int], counts: dict[int, np.ndarray], config: SmoothingConfig) -> pa.Table:
        """Decide rows [start, stop) from summed counts [inputs, classes + 1] under ``config`` (its n
        must match the counts); the last slot, non-finite samples over all phases, becomes ``nonfinite``."""
        rows = slice(*rows)
        labels = None if self.y is None else self.y[rows]
        nonfinite = sum(c[:, -1] for c in counts.values())
        counts = {phase: c[:, :-1] for phase, c in counts.items()}
        if config.analysis == CERTIFY:
            return certificate_table(self.input_ids[rows], labels, counts[Phase.SELECTION], counts[Phase.ESTIMATION],
                                     config, nonfinite)
        return prediction_table(self.input_ids[rows], labels, counts[Phase.PREDICT], config, nonfinite)

    def run(self, progress: bool = False) -> pd.DataFrame:
        parts = sorted(self.tables(meter=self.meter(enabled=progress)), key=lambda item: item[0])
        schema = self.config.schema
        table = pa.concat_tables([t for _, t in parts]) if parts else schema.empty_table()
        return table.to_pandas()


def _count_lists(counts: np.ndarray) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(counts, dtype=np.int64).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, counts.shape[1]).cast(pa.list_(pa.int64()))


def _common_columns(input_ids, labels, prediction, config: SmoothingConfig) -> dict:
    k = len(input_ids)
    correct = None if labels is None else pa.array(prediction == labels, type=pa.bool_())
    return {
        "input_id": pa.array(input_ids, type=pa.int64()),
        "label": pa.nulls(k, pa.int64()) if labels is None else pa.array(labels, type=pa.int64()),
        "prediction": pa.array(prediction, type=pa.int64()),
        "correct": pa.nulls(k, pa.bool_()) if correct is None else correct,
        "n": pa.array(np.full(k, config.n), type=pa.int64()),
        "alpha": pa.array(np.full(k, config.alpha), type=pa.float64()),
        "sigma": pa.array(np.full(k, config.sigma), type=pa.float64()),
        "seed": pa.array(np.full(k, config.seed), type=pa.int64()),
    }


def _abstain_where_nonfinite(nonfinite, k: int, prediction, *zeroed) -> tuple[np.ndarray, ...]:
    """A model that gave non-finite logits on any noisy sample of an input says nothing reliable
    about f near it: that input abstains (and its radius is 0), whatever its votes."""
    nonfinite = np.zeros(k, dtype=np.int64) if nonfinite is None else np.asarray(nonfinite, dtype=np.int64)
    bad = nonfinite > 0
    return (nonfinite, np.where(bad, -1, prediction), *(np.where(bad, 0.0, z) for z in zeroed))


def certificate_table(input_ids, labels, selection_counts, counts, config: SmoothingConfig,
                      nonfinite=None) -> pa.Table:
    top, count_top, pa_lower, radius, prediction = stats.certify_decision(
        selection_counts, counts, config.n, config.alpha, config.sigma)
    nonfinite, prediction, radius = _abstain_where_nonfinite(nonfinite, len(input_ids), prediction, radius)
    columns = _common_columns(input_ids, labels, prediction, config)
    columns.update({
        "top_class": pa.array(top, type=pa.int64()),
        "count_top": pa.array(count_top, type=pa.int64()),
        "counts": _count_lists(counts),
        "selection_counts": _count_lists(selection_counts),
        "nonfinite": pa.array(nonfinite, type=pa.int64()),
        "n0": pa.array(np.full(len(input_ids), config.n0), type=pa.int64()),
        "pa_lower": pa.array(pa_lower, type=pa.float64()),
        "radius": pa.array(radius, type=pa.float64()),
    })
    privacy = per_input.release_privacy(count_top, radius, n=config.n, alpha=config.alpha, sigma=config.sigma,
                                        classes=counts.shape[1], release=config.release, advantage=config.advantage,
                                        queries=config.queries, n0=config.n0)
    columns.update({name: pa.array(values, type=pa.float64()) for name, values in privacy.items()})
    schema = config.schema
    return pa.table([columns[name] for name in schema.names], schema=schema)


def prediction_table(input_ids, labels, counts, config: SmoothingConfig, nonfinite=None) -> pa.Table:
    top, c1, c2, pvalues, prediction = stats.predict_decision(counts, config.alpha)
    nonfinite, prediction = _abstain_where_nonfinite(nonfinite, len(input_ids), prediction)
    columns = _common_columns(input_ids, labels, prediction, config)
    columns.update({
        "top_class": pa.array(top, type=pa.int64()),
        "count_top": pa.array(c1, type=pa.int64()),
        "count_second": pa.array(c2, type=pa.int64()),
        "counts": _count_lists(counts),
        "nonfinite": pa.array(nonfinite, type=pa.int64()),
        "p_value": pa.array(pvalues, type=pa.float64()),
    })
    schema = prediction_schema()
    return pa.table([columns[name] for name in schema.names], schema=schema)


def certify(model, X, y=None, *, sigma: float, n0: int = 100, n: int | None = None, alpha: float = 0.001,
            seed: int = 0, batch_size: int | None = None, workers: int | None = None, address: str | None = None,
            input_ids=None, noise_block: int | None = None, device: str | None = None,
            progress: bool = False, release: str = DEFAULT_RELEASE, advantage=DEFAULT_ADVANTAGE,
            queries=DEFAULT_QUERIES, target_radius=None, max_n: int | None = None, mode: str | None = None,
            radius_tolerance: float | None = None, against_label: bool = False,
            look_growth: float | None = None, shared_pool=None) -> pd.DataFrame:
    """CERTIFY every row of X: one row per input with the columns of DESIGN §3.

    ``prediction`` is −1 where the smoothed classifier abstains (then ``radius`` is 0). With
    probability ≥ 1−α per input, a non-abstaining prediction is the smoothed classifier's and is
    constant on the ℓ2 ball of ``radius``. N defaults to 100,000. That is not a privacy statement
    about a release: the columns ``advantage_at_radius`` and ``privacy_radius_tau…`` bound what the
    deployed ``release`` (at this N and α, k ∈ ``queries`` queries) lets an observer tell apart
    (:mod:`rpdist.privacy.per_input`).

    Sequential certification (:mod:`rpdist.smoothing.seqjob`): ``target_radius`` (one or several),
    ``max_n``, ``mode`` (sequential, adaptive with ``radius_tolerance``, staged), ``against_label`` or
    ``look_growth`` (the look schedule's factor)
    draw estimation samples per input only until its anytime-valid test decides; the table gains
    ``samples_used``, ``decision`` and the other sequential columns. ``shared_pool`` as for :func:`predict`.
    """
    from rpdist.smoothing.seqjob import SEQUENTIAL_BLOCK, SequentialRun, sequential_config

    sequential = sequential_config(target_radius=target_radius, max_n=max_n, n=n, mode=mode,
                                   radius_tolerance=radius_tolerance, against_label=against_label,
                                   look_growth=look_growth)
    block = noise_block if noise_block is not None else DEFAULT_BLOCK if sequential is None else SEQUENTIAL_BLOCK
    n = (100_000 if n is None else n) if sequential is None else sequential.max_n
    config = SmoothingConfig(CERTIFY, sigma, n, alpha, n0, seed, batch_size, block, release, tuple(advantage),
                             tuple(queries))
    if sequential is not None:
        sequential.validated(sigma, alpha, block)
    job = SmoothingJob(model, X, y, config=config, input_ids=input_ids, workers=workers, address=address, device=device,
                       shared_pool=shared_pool)
    if sequential is not None:
        return SequentialRun(job, sequential).run().to_pandas()
    return job.run(progress)


def predict(model, X, y=None, *, sigma: float, n: int = 100_000, alpha: float = 0.001, seed: int = 0,
            batch_size: int | None = None, workers: int | None = None, address: str | None = None,
            input_ids=None, noise_block: int = DEFAULT_BLOCK, device: str | None = None,
            progress: bool = False, shared_pool=None) -> pd.DataFrame:
    """PREDICT every row of X: the smoothed label, or −1 (abstain) when the top two classes are not
    separated by the exact binomial test at level α.

    ``shared_pool`` (``rpdist.distributed.pool.SharedPool``) lets a Ray task query replicas its driver created.
    """
    config = SmoothingConfig(PREDICT, sigma, n, alpha, None, seed, batch_size, noise_block)
    job = SmoothingJob(model, X, y, config=config, input_ids=input_ids, workers=workers, address=address, device=device,
                       shared_pool=shared_pool)
    return job.run(progress)


def selection_counts(model, X, *, sigma: float, n: int, first_block: int = 0, seed: int = 0,
                     batch_size: int | None = None, workers: int | None = None, address: str | None = None,
                     input_ids=None, noise_block: int = DEFAULT_BLOCK, device: str | None = None,
                     progress: bool = False, shared_pool=None) -> np.ndarray:
    """Class counts [rows, classes + 1] of ``n`` selection-phase samples per row, from noise block
    ``first_block`` on; the last slot counts samples whose logits were not all finite.

    For callers that screen inputs before spending PREDICT samples on them: the selection phase
    never shares a sample with PREDICT (or estimation) samples of the same ids, and successive
    screens that start past each other's blocks draw disjoint noise, so no decision reuses the
    samples that selected it.
    """
    if isinstance(first_block, bool) or not isinstance(first_block, (int, np.integer)) or first_block < 0:
        raise InputError(f"first block must be a whole number >= 0, got {first_block!r}")
    config = SmoothingConfig(PREDICT, sigma, n, 0.5, None, seed, batch_size, noise_block)  # α plays no part here
    job = SmoothingJob(model, X, config=config, input_ids=input_ids, workers=workers, address=address, device=device,
                       shared_pool=shared_pool)
    spec = PhaseSpec(Phase.SELECTION, first_block * noise_block + n, first_block)
    if num_blocks(spec.n, noise_block) > MAX_BLOCKS:
        raise InputError(f"selection blocks up to {num_blocks(spec.n, noise_block)} exceed {MAX_BLOCKS}")
    plan = Plan(len(job.X), (spec,), noise_block, job.plan.batch_size)
    out = np.zeros((len(job.X), job.num_classes + 1), dtype=np.int64)
    meter = SampleProgress(plan.samples(range(plan.num_chunks)), f"selection σ={sigma}", progress)
    try:
        for chunk, counts in run_plan(job.pool, job.X, job.input_ids, plan, sigma=sigma, seed=seed,
                                      num_classes=job.num_classes, chunks=range(plan.num_chunks),
                                      on_unit=lambda unit, samples: meter.advance(samples)):
            start, stop = plan.chunk_rows(chunk)
            out[start:stop] = counts[Phase.SELECTION].sum(axis=1)
    finally:
        meter.close()
    return out
