"""A certify or predict run on a dataset: resolve data and model, resume, write Parquet and manifest.

This is what ``rpdist certify`` and ``rpdist predict`` call; it is importable, so scripts and
sweeps run exactly what the CLI runs.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

from rpdist import analyses
from rpdist.analyses.base import Outcome
from rpdist.errors import InputError
from rpdist.io.manifest import new_manifest
from rpdist.io.rundir import RunDir
from rpdist.smoothing.job import CERTIFY, SmoothingConfig, SmoothingJob
from rpdist.smoothing.noise import DEFAULT_BLOCK, NOISE_SCHEME
from rpdist.smoothing.seqjob import SEQUENTIAL_BLOCK, SequentialConfig, sequential_config
from rpdist.specs import Count, OutRoot, Sigma, spec


@spec
class RunSpec:
    """Everything a user chooses for one run; validated when built."""

    config: SmoothingConfig
    dataset: str | Path
    split: str = "test"
    label_column: str = "label"
    limit: Count | None = None
    model: str | Path | None = None
    arch: str | None = None
    train_sigma: Sigma | None = None
    workers: Count | None = None
    address: str | None = None
    device: str | None = None
    out: OutRoot = "results"
    run_id: str | None = None
    sequential: SequentialConfig | None = None  # set: decide each input sequentially (rpdist.pipelines.seqrun)


def run_spec(analysis: str, *, sigma: float, n: int | None = None, alpha: float = 0.001, n0: int | None = None,
             seed: int = 0, batch_size: int | None = None, noise_block: int | None = None, privacy: dict | None = None,
             target_radius=None, max_n: int | None = None, mode: str | None = None,
             radius_tolerance: float | None = None, against_label: bool = False, look_growth: float | None = None,
             **where) -> RunSpec:
    """A certify or predict run from the options of ``rpdist certify``/``predict`` (the CLI and sweeps of
    sequential certification build it here). N defaults to 100,000; any sequential option (certify only)
    makes a sequential run whose N is its max N; the noise block defaults to 1,000, or to 32 for a
    sequential run. ``privacy`` holds certify's release, advantage and queries; ``where`` the
    dataset, model and engine fields of :class:`RunSpec`."""
    sequential = None if analysis != CERTIFY else sequential_config(
        target_radius=target_radius or None, max_n=max_n, n=n, mode=mode, radius_tolerance=radius_tolerance,
        against_label=against_label, look_growth=look_growth)
    n = sequential.max_n if sequential is not None else 100_000 if n is None else n
    block = noise_block if noise_block is not None else DEFAULT_BLOCK if sequential is None else SEQUENTIAL_BLOCK
    config = SmoothingConfig(analysis, sigma, n, alpha, n0, seed, batch_size, block, **(privacy or {}))
    return RunSpec(config=config, sequential=sequential, **where)


def _outcome(run_dir: RunDir, manifest: dict, resumed_chunks: int = 0) -> Outcome:
    """The run's outcome; its summary reads only the columns it needs, so a large audit stays cheap."""
    analysis = analyses.get(manifest["analysis"])
    reader = lambda columns=None: run_dir.read_final(columns=columns).to_pandas()  # noqa: E731
    present = set(run_dir.final_columns())
    wanted = [*analysis.required_columns, "seed", "nonfinite", *analysis.optional_columns]
    summary = analysis.summarize(reader([c for c in wanted if c in present]))
    rate = manifest.get("timings", {}).get("samples_per_second")
    for row in summary:
        row["samples_per_second"] = rate
    return Outcome(analysis.name, run_dir.path, manifest, summary, resumed_chunks, reader)


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


def model_sha256(spec: RunSpec) -> str:
    """The sha256 of the model a run of ``spec`` would use on this machine, trained and cached if it is a
    default model not built yet: what a sweep compares before adding points beside finished ones."""
    return resolve_model(spec, str(spec.dataset), progress=False)[0].sha256


def device_type(pool) -> str:
    """cpu or cuda: the generator, and so the noise, differs between device types."""
    return str(pool.device).split(":")[0]


def engine_identity(pool) -> dict:
    """What decides the noise besides the smoothing config: the device type and the noise scheme."""
    return {"device": device_type(pool), "noise": NOISE_SCHEME}


def execute(spec: RunSpec, progress: bool = True, on_unit: Callable | None = None) -> Outcome:
    """Run (or resume, or return a finished) certify/predict job and write its results atomically."""
    from rpdist.datasets.catalog import load_dataset

    if spec.sequential is not None:
        from rpdist.pipelines.seqrun import execute_sequential

        return execute_sequential(spec, progress, on_unit)
    config = spec.config
    run_dir = RunDir(spec.out, spec.run_id or default_run_id(config.analysis), analyses.get(config.analysis).final_file)
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
        "engine": engine_identity(job.pool),
    }
    existing = run_dir.claim(identity, "--run-id")
    schema = config.schema
    if existing is not None and run_dir.complete:
        return _outcome(run_dir, existing)

    started = existing["timings"]["started"] if existing else dt.datetime.now(dt.timezone.utc).isoformat()
    manifest = new_manifest(
        config.analysis, identity, dataset=identity["dataset"], models={"model": identity["model"]},
        device={"type": job.pool.device, "workers": job.pool.workers, "batch_size": job.plan.batch_size},
        details={"plan": {"chunks": job.plan.num_chunks, "chunk_inputs": job.plan.chunk_inputs,
                          "unit_inputs": job.plan.unit_inputs, "noise_block": job.plan.block_size}},
        timings={"started": started})
    run_dir.write_manifest(manifest)
    done = run_dir.finished_chunks()
    clock = time.perf_counter()
    meter = job.meter(done, enabled=progress)
    for chunk, table in job.tables(skip=done, meter=meter, on_unit=on_unit):
        run_dir.write_chunk(chunk, table)
    seconds = time.perf_counter() - clock
    manifest["status"] = "complete"
    manifest["timings"].update({
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "seconds_this_session": seconds,
        "samples_this_session": meter.done,
        "samples_per_second": meter.done / max(seconds, 1e-9),
        "resumed_chunks": len(done),
    })
    run_dir.finish(schema, manifest)
    return _outcome(run_dir, manifest, len(done))
