"""A certify or predict run on a dataset: resolve data and model, resume, write Parquet and manifest.

This is what ``rpdist certify`` and ``rpdist predict`` call; it is importable, so scripts and
sweeps run exactly what the CLI runs.
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable

import pyarrow as pa

from rpdist.errors import InputError
from rpdist.io.rundir import RunDir
from rpdist.io.schemas import certificate_schema, prediction_schema
from rpdist.smoothing.job import CERTIFY, SmoothingConfig, SmoothingJob
from rpdist.reporting.summary import summarize

FINAL_NAMES = {"certify": "certificates.parquet", "predict": "predictions.parquet"}
VERSIONED = ("rpdist", "torch", "ray", "numpy", "scipy", "pyarrow", "pandas")


@dataclass
class RunSpec:
    """Everything a user chooses for one run."""

    config: SmoothingConfig
    dataset: str
    split: str = "test"
    label_column: str = "label"
    limit: int | None = None
    model: str | None = None
    arch: str | None = None
    train_sigma: float | None = None
    workers: int | None = None
    address: str | None = None
    device: str | None = None
    out: str = "results"
    run_id: str | None = None


SUMMARY_COLUMNS = ["prediction", "radius", "correct", "nonfinite"]


@dataclass
class RunOutcome:
    path: str
    run_dir: RunDir
    manifest: dict
    summary: dict = field(default_factory=dict)
    resumed_chunks: int = 0

    @property
    def table(self) -> pa.Table:
        """The whole result file, read on demand: a large audit's rows need not fit in memory."""
        return self.run_dir.read_final()


def _summary(run_dir: RunDir, analysis: str, sigma: float) -> dict:
    columns = [c for c in SUMMARY_COLUMNS if analysis == CERTIFY or c != "radius"]
    return summarize(run_dir.read_final(columns=columns).to_pandas(), analysis, sigma)


def default_run_id(analysis: str) -> str:
    return f"{analysis}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def resolve_model(spec: RunSpec, dataset_name: str, progress: bool):
    """A built-in default model (trained and cached on first use) or a safely loaded file."""
    from rpdist.datasets.catalog import BUILTINS
    from rpdist.models.refs import load_model_file
    from rpdist.models.zoo import default_model

    if spec.model in (None, "default"):
        if dataset_name not in BUILTINS:
            raise InputError(f"dataset {dataset_name!r} has no default model; pass --model PATH")
        train_sigma = spec.config.sigma if spec.train_sigma is None else spec.train_sigma
        ref = default_model(dataset_name, train_sigma=train_sigma, progress=progress)
        return ref, {"source": "default", "dataset": dataset_name, "train_sigma": train_sigma}
    ref = load_model_file(spec.model, arch=spec.arch)
    return ref, {"source": str(spec.model), "arch": spec.arch}


def execute(spec: RunSpec, progress: bool = True, on_unit: Callable | None = None) -> RunOutcome:
    """Run (or resume, or return a finished) certify/predict job and write its results atomically."""
    from rpdist.datasets.catalog import load_dataset

    config = spec.config.validated()
    run_dir = RunDir(spec.out, spec.run_id or default_run_id(config.analysis), FINAL_NAMES[config.analysis])
    data = load_dataset(spec.dataset, split=spec.split, label_column=spec.label_column, limit=spec.limit,
                        stream=True)
    model_ref, model_info = resolve_model(spec, data.name, progress)
    job = SmoothingJob(model_ref, data.X, data.y, config=config, input_ids=data.input_ids,
                       workers=spec.workers, address=spec.address, device=spec.device)
    identity = {
        "analysis": config.analysis,
        "smoothing": {**config.as_dict(), "batch_size": job.plan.batch_size},
        "dataset": {"spec": str(spec.dataset), "split": spec.split, "label_column": spec.label_column,
                    "limit": spec.limit, "sha256": data.sha256, "rows": len(data)},
        "model": {**model_info, "sha256": model_ref.sha256, "kind": model_ref.kind},
    }
    existing = run_dir.claim(identity)
    schema = certificate_schema() if config.analysis == CERTIFY else prediction_schema()
    if existing is not None and run_dir.complete:
        return RunOutcome(run_dir.path, run_dir, existing, _summary(run_dir, config.analysis, config.sigma))

    started = existing["timings"]["started"] if existing else dt.datetime.now(dt.timezone.utc).isoformat()
    manifest = {
        "status": "running",
        "config": identity,
        "command": sys.argv,
        "versions": versions(),
        "device": {"type": job.pool.device, "workers": job.pool.workers, "platform": platform.platform()},
        "plan": {"chunks": job.plan.num_chunks, "chunk_inputs": job.plan.chunk_inputs,
                 "unit_inputs": job.plan.unit_inputs, "noise_block": job.plan.block_size},
        "timings": {"started": started},
    }
    run_dir.write_manifest(manifest)
    done = run_dir.finished_chunks()
    clock = time.perf_counter()
    for chunk, table in job.tables(skip=done, progress=progress, on_unit=on_unit):
        run_dir.write_chunk(chunk, table)
    seconds = time.perf_counter() - clock
    manifest["status"] = "complete"
    manifest["timings"].update({
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "seconds_this_session": seconds,
        "samples_this_session": job.progress.done,
        "samples_per_second": job.progress.done / max(seconds, 1e-9),
        "resumed_chunks": len(done),
    })
    run_dir.finish(schema, manifest)
    summary = _summary(run_dir, config.analysis, config.sigma)
    summary["samples_per_second"] = manifest["timings"]["samples_per_second"]
    return RunOutcome(run_dir.path, run_dir, manifest, summary, len(done))


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
