"""A sequential certify run on a dataset: like :func:`rpdist.pipelines.run.execute`, with rounds.

The run writes its table and a manifest whose ``details.samples`` says what sequential stopping
saved: samples used (selection + estimation), forward samples computed (waste included: units
recomputed after a replica failure) and the naive cost of every input at max N.

Resume: a finished run is returned as it is. An interrupted one keeps no partial state yet (the
rounds are short and decisions need every earlier block of an input), so it is run again from the
start under the same identity; the counter-based noise makes the rerun's results identical.
"""

from __future__ import annotations

import datetime as dt
import time

from rpdist import analyses
from rpdist.analyses.sequential import NAME
from rpdist.io.manifest import new_manifest
from rpdist.io.rundir import RunDir
from rpdist.io.schemas import sequential_schema
from rpdist.smoothing.seqjob import SequentialRun


def execute_sequential(spec, progress: bool = True, on_unit=None):
    from rpdist.datasets.catalog import load_dataset
    from rpdist.pipelines.run import _outcome, default_run_id, engine_identity, resolve_model
    from rpdist.smoothing.job import SmoothingJob

    config = spec.config
    sequential = spec.sequential.validated(config.sigma, config.alpha, config.noise_block)
    run_dir = RunDir(spec.out, spec.run_id or default_run_id(NAME), analyses.get(NAME).final_file)
    data = load_dataset(spec.dataset, split=spec.split, label_column=spec.label_column, limit=spec.limit,
                        stream=True)
    model_ref, model_info = resolve_model(spec, data.name, progress)
    job = SmoothingJob(model_ref, data.X, data.y, config=config, input_ids=data.input_ids,
                       workers=spec.workers, address=spec.address, device=spec.device)
    run = SequentialRun(job, sequential)
    identity = {
        "analysis": NAME,
        "smoothing": {**config.as_dict(), "batch_size": job.plan.batch_size},
        "sequential": {**{k: getattr(sequential, k) for k in sequential.__dataclass_fields__},
                       "target_radius": list(sequential.radii)},
        "dataset": {"spec": str(spec.dataset), "split": spec.split, "label_column": spec.label_column,
                    "limit": spec.limit, "sha256": data.sha256, "rows": len(data)},
        "model": {**model_info, "sha256": model_ref.sha256, "kind": model_ref.kind},
        "engine": engine_identity(job.pool),
    }
    existing = run_dir.claim(identity, "--run-id")
    if existing is not None and run_dir.complete:
        return _outcome(run_dir, existing)
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    manifest = new_manifest(
        NAME, identity, dataset=identity["dataset"], models={"model": identity["model"]},
        device={"type": job.pool.device, "workers": job.pool.workers, "batch_size": job.plan.batch_size},
        details={"looks": run.looks, "noise_block": config.noise_block}, timings={"started": started})
    run_dir.write_manifest(manifest)
    clock = time.perf_counter()
    table = run.run(on_unit=on_unit)
    seconds = time.perf_counter() - clock
    cost = run.cost()
    manifest["status"] = "complete"
    manifest["details"]["samples"] = {k: v for k, v in cost.items() if k != "looks"}
    manifest["details"]["samples"]["saved_factor"] = cost["naive_at_max_n"] / max(cost["used"], 1)
    manifest["details"]["rounds"] = run.rounds
    manifest["timings"].update({
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "seconds_this_session": seconds,
        "samples_this_session": cost["forward_samples"],
        "samples_per_second": cost["forward_samples"] / max(seconds, 1e-9),
    })
    run_dir.write_table(table.cast(sequential_schema()), analyses.get(NAME).final_file)
    run_dir.write_manifest(manifest)
    return _outcome(run_dir, manifest)
