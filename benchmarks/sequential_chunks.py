"""Throughput of a resumable (chunked) sequential run against one group of rounds for every input.

Usage::

    python benchmarks/sequential_chunks.py [--inputs 8192] [--repeats 3] [--chunks 0,1024] [--json PATH]

A resumable sequential run (:mod:`rpdist.pipelines.seqrun`) runs its rounds chunk by chunk, so a
chunk's later rounds carry fewer inputs and the run makes more rounds (a Ray round trip each) than
one group of rounds over every input. This measures what that costs: the insurance MLP at σ = 0.5,
α = 0.001, max N = 100,000, one target radius 0.5σ with n0 = 100 selection samples, on the 1,338
rows of the whole dataset tiled to ``--inputs`` inputs with distinct input ids (so distinct noise).
Chunk sizes: "whole" (every input in one group, as ``rpdist.certify()`` runs), the default
(:meth:`SequentialRun.chunk_inputs`: 4,096 inputs at the CPU batch of 4,096) and those in
``--chunks`` (0 = the default). Forward samples per second and wall-clock seconds, as the median
[min–max] over repeats, taken in rotation so that machine load hits every size alike, and the
number of rows that differ from the whole run's (forward batches pack other rows together, and a
Linear layer's matmul may round a row differently in another batch).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pyarrow as pa

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SIGMA, ALPHA, MAX_N, N0 = 0.5, 0.001, 100_000, 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", default="0,1024", help="chunk sizes besides whole; 0 = the default")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from rpdist.datasets.catalog import load_dataset
    from rpdist.models.zoo import default_model
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig, SmoothingJob
    from rpdist.smoothing.seqjob import SEQUENTIAL_BLOCK, SequentialConfig, SequentialRun

    data = load_dataset("insurance", split="all")
    tile = np.resize(np.arange(len(data.X)), args.inputs)
    X, y = np.asarray(data.X, dtype=np.float32)[tile], np.asarray(data.y)[tile]
    config = SmoothingConfig(CERTIFY, SIGMA, MAX_N, ALPHA, N0, noise_block=SEQUENTIAL_BLOCK)
    sequential = SequentialConfig.build(max_n=MAX_N, target_radius=(0.5 * SIGMA,))
    job = SmoothingJob(default_model("insurance", train_sigma=SIGMA), X, y, config=config,
                       input_ids=np.arange(args.inputs), workers=args.workers, device=args.device)
    default = SequentialRun(job, sequential).chunk_inputs()
    sizes = {"whole": args.inputs}
    for value in (int(v) for v in args.chunks.split(",") if v.strip()):
        sizes[f"chunks of {value or default}" + (" (default)" if value in (0, default) else "")] = value or default
    SequentialRun(job, sequential).decide(np.arange(min(256, args.inputs)))  # warm the replicas up

    results: dict = {name: {"seconds": [], "samples_per_second": [], "rounds": []} for name in sizes}
    tables: dict = {}
    names = list(sizes)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            run = SequentialRun(job, sequential)
            started = time.perf_counter()
            parts = [table for _, table, _ in sorted(run.chunks(sizes[name]), key=lambda part: part[0])]
            seconds = time.perf_counter() - started
            results[name]["seconds"].append(seconds)
            results[name]["samples_per_second"].append(run.forward_samples / seconds)
            results[name]["rounds"].append(len(run.rounds))
            table = pa.concat_tables(parts)
            if name in tables:
                assert table.equals(tables[name]), "a repeat changed the results"
            tables[name] = table
            print(f"  repeat {repeat} {name}: {seconds:.2f} s, {run.forward_samples / seconds:,.0f} samples/s, "
                  f"{len(run.rounds)} rounds", flush=True)
    first = tables[names[0]]
    for name in names[1:]:  # packing differs between chunk sizes; a Linear layer may round a row differently
        differing = sum(a != b for a, b in zip(first.to_pylist(), tables[name].to_pylist()))
        print(f"  {name}: {differing} of {len(first)} rows differ from whole")
    mean_samples = float(np.mean(first.column("samples_used").to_numpy())) + N0
    print(f"\n{args.inputs} inputs, mean {mean_samples:,.0f} samples per input, device {job.pool.device}, "
          f"{job.pool.workers} workers, batch {job.plan.batch_size}; median [min–max] of {args.repeats}:")
    for name in names:
        r = results[name]
        rate, secs = np.asarray(r["samples_per_second"]), np.asarray(r["seconds"])
        ratio = rate / np.asarray(results["whole"]["samples_per_second"])  # paired: same repeat, same load
        print(f"  {name:>28}: {np.median(rate):>12,.0f} [{rate.min():,.0f}–{rate.max():,.0f}] samples/s, "
              f"{np.median(secs):.2f} s, {int(np.median(r['rounds']))} rounds; / whole in the same repeat "
              f"{np.median(ratio):.2f} [{ratio.min():.2f}–{ratio.max():.2f}]")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"inputs": args.inputs, "mean_samples": mean_samples, "device": str(job.pool.device),
                       "workers": job.pool.workers, "batch_size": job.plan.batch_size, "sizes": sizes,
                       "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
