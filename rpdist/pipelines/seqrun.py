"""A sequential certify run on a dataset: like :func:`rpdist.pipelines.run.execute`, with rounds.

The inputs are cut into chunks of consecutive inputs (``details.plan.chunk_inputs``, from
:meth:`~rpdist.smoothing.seqjob.SequentialRun.chunk_inputs`, fixed when the run starts). Each chunk
runs its rounds to the end and is written whole as ``parts/chunk-NNNNNN.parquet``; two chunks run
at once, so they may finish out of order. At the end the chunk files, in chunk order, become
``sequential-certificates.parquet``. Resume works as for plain runs:
rerunning with the same run id skips the chunks on disk, and a different configuration is refused
with one line (:meth:`~rpdist.io.rundir.RunDir.claim`). An input's decision depends only on its own
counter-based noise blocks and the looks, so a resumed run's table is the uninterrupted one's.

``details.samples`` says what sequential stopping saved. ``used``: selection + estimation samples
of every input (read from the rows written); ``naive_at_max_n``: every input at max N;
``saved_factor``: their ratio. ``forward_samples``: samples computed, summed over sessions. A chunk
counts each time it is computed to its end (the manifest is written just before the chunk file, so
a session killed between the two computes and counts that chunk again); work on a chunk
interrupted before its end is not counted. ``waste`` = forward − used (blocks a round drew past an
input's stop, chunks computed twice, units recomputed after a replica failure). ``rounds`` counts the engine rounds of the counted
chunks, and ``details.rounds`` sums them per look.
"""

from __future__ import annotations

import datetime as dt
import time

import pyarrow.compute as pc

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
    before = (existing or {}).get("details", {})
    # The chunk size it was started with: chunk files are named by index, and the results do not depend on it.
    chunk_inputs = before.get("plan", {}).get("chunk_inputs") or run.chunk_inputs()
    m = len(run.X)
    n0 = 0 if sequential.against_label else config.n0
    spent_before = before.get("samples", {})
    samples = {"inputs": m, "forward_samples": spent_before.get("forward_samples", 0),
               "rounds": spent_before.get("rounds", 0), "naive_at_max_n": m * (n0 + sequential.max_n)}
    per_look = {r["look"]: r for r in before.get("rounds", [])}
    started = existing["timings"]["started"] if existing else dt.datetime.now(dt.timezone.utc).isoformat()
    manifest = new_manifest(
        NAME, identity, dataset=identity["dataset"], models={"model": identity["model"]},
        device={"type": job.pool.device, "workers": job.pool.workers, "batch_size": job.plan.batch_size},
        details={"looks": run.looks, "noise_block": config.noise_block, "samples": samples,
                 "plan": {"chunk_inputs": chunk_inputs, "chunks": -(-m // chunk_inputs)}, "rounds": []},
        timings={"started": started})
    samples = manifest["details"]["samples"]  # new_manifest copies: update the manifest's own
    run_dir.write_manifest(manifest)
    done = run_dir.finished_chunks()
    session = 0
    clock = time.perf_counter()
    for chunk, table, spent in run.chunks(chunk_inputs, skip=done, on_unit=on_unit):
        for r in spent["rounds"]:
            total = per_look.setdefault(r["look"], {"look": r["look"], "inputs": 0, "stopped": 0, "seconds": 0.0})
            for key in ("inputs", "stopped", "seconds"):
                total[key] += r[key]
        samples["rounds"] += spent["engine_rounds"]
        samples["forward_samples"] += spent["forward_samples"]
        session += spent["forward_samples"]
        manifest["details"]["rounds"] = [per_look[look] for look in sorted(per_look)]
        run_dir.write_manifest(manifest)  # before the chunk file: a chunk is never written uncounted
        run_dir.write_chunk(chunk, table)
    seconds = time.perf_counter() - clock
    schema = sequential_schema()
    used = n0 * m + sum(pc.sum(run_dir.store.read_table(path, columns=["samples_used"])["samples_used"]).as_py() or 0
                        for path in run_dir.chunk_paths())
    samples.update(used=used, waste=samples["forward_samples"] - used,
                   saved_factor=samples["naive_at_max_n"] / max(used, 1))
    manifest["details"]["rounds"] = [per_look[look] for look in sorted(per_look)]
    manifest["status"] = "complete"
    manifest["timings"].update({
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "seconds_this_session": seconds,
        "samples_this_session": session,
        "samples_per_second": session / max(seconds, 1e-9),
        "resumed_chunks": len(done),
    })
    run_dir.finish(schema, manifest)
    return _outcome(run_dir, manifest, len(done))
