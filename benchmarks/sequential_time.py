"""Does wall-clock follow samples? Fixed-N CERTIFY against sequential certification, end to end on the replicas.

Usage::

    python benchmarks/sequential_time.py [--inputs 8192] [--fixed-inputs 256] [--fixed-n 100000]
                                         [--repeats 3] [--profile] [--json PATH]

The insurance MLP at σ = 0.5, α = 0.001, on the 268 test rows tiled to ``--inputs`` inputs with
distinct input ids (so distinct noise). Sequential: max N = 100,000, against the label, one target
radius r ∈ {0.25σ, 0.5σ} per run, run as ``rpdist certify`` runs it (the resumable path,
:meth:`SequentialRun.chunks` at the default chunk size). Fixed N: ``rpdist.certify``'s engine at
N = ``--fixed-n`` with n0 = 100 on the first ``--fixed-inputs`` of the same inputs (its time per
input does not depend on how many inputs there are once they fill the units; it would take minutes
per repeat on all of them). Time per input and samples per input (fixed: n0 + N; sequential: the
estimation samples used, waste excluded) give the two ratios; the goal of issue 14 is
(time ratio) / (samples ratio) ≥ 0.5. The methods are taken in rotation over the repeats, so that
machine load hits each alike; ratios pair each sequential run with the fixed run of its repeat.
Reported: median [min–max] over repeats.

``--profile`` runs one more sequential pass (r = 0.5σ, all inputs in one group of rounds, as
``rpdist.certify()`` runs it) under cProfile on the driver and prints the
top functions and the per-look rounds (inputs, samples/s).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SIGMA, ALPHA, MAX_N, N0 = 0.5, 0.001, 100_000, 100
MULTIPLES = (0.25, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=8192)
    parser.add_argument("--fixed-inputs", type=int, default=256)
    parser.add_argument("--fixed-n", type=int, default=MAX_N)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from rpdist.datasets.catalog import load_dataset
    from rpdist.models.zoo import default_model
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig, SmoothingJob
    from rpdist.smoothing.noise import DEFAULT_BLOCK
    from rpdist.smoothing.seqjob import SEQUENTIAL_BLOCK, SequentialConfig, SequentialRun

    data = load_dataset("insurance", split="test")
    tile = np.resize(np.arange(len(data.X)), args.inputs)
    X, y = np.asarray(data.X, dtype=np.float32)[tile], np.asarray(data.y)[tile]
    ids = np.arange(args.inputs)
    model = default_model("insurance", train_sigma=SIGMA)
    engine = dict(workers=args.workers, device=args.device)
    seq_config = SmoothingConfig(CERTIFY, SIGMA, MAX_N, ALPHA, N0, noise_block=SEQUENTIAL_BLOCK)
    seq_job = SmoothingJob(model, X, y, config=seq_config, input_ids=ids, **engine)
    k = args.fixed_inputs
    fixed_config = SmoothingConfig(CERTIFY, SIGMA, args.fixed_n, ALPHA, N0, noise_block=DEFAULT_BLOCK)
    fixed_job = SmoothingJob(model, X[:k], y[:k], config=fixed_config, input_ids=ids[:k], **engine)
    sequentials = {m: SequentialConfig.build(max_n=MAX_N, target_radius=(m * SIGMA,), against_label=True)
                   for m in MULTIPLES}
    SequentialRun(seq_job, sequentials[0.5]).decide(np.arange(min(512, args.inputs)))  # warm the replicas up

    def fixed():
        started = time.perf_counter()
        fixed_job.run()
        return {"seconds": time.perf_counter() - started, "samples_per_input": N0 + args.fixed_n,
                "forward_samples": k * (N0 + args.fixed_n), "inputs": k}

    def sequential(multiple):
        run = SequentialRun(seq_job, sequentials[multiple])
        started = time.perf_counter()
        parts = list(run.chunks(run.chunk_inputs()))
        seconds = time.perf_counter() - started
        used = sum(int(table.column("samples_used").to_numpy().sum()) for _, table, _ in parts)
        return {"seconds": seconds, "samples_per_input": used / args.inputs, "forward_samples": run.forward_samples,
                "waste": run.forward_samples - used, "inputs": args.inputs,
                "engine_rounds": sum(spent["engine_rounds"] for _, _, spent in parts)}

    methods = {"fixed": fixed, **{f"r={m}σ": (lambda m=m: sequential(m)) for m in MULTIPLES}}
    names = list(methods)
    runs: dict = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            result = methods[name]()
            runs[name].append(result)
            print(f"  repeat {repeat} {name}: {result['seconds']:.2f} s, {result['samples_per_input']:,.0f} "
                  f"samples/input, {result['forward_samples'] / result['seconds']:,.0f} forward samples/s"
                  + (f", waste {result['waste'] / result['forward_samples']:.1%}, "
                     f"{result['engine_rounds']} rounds" if "waste" in result else ""), flush=True)

    def spread(values):
        v = np.asarray(values, dtype=np.float64)
        return f"{np.median(v):.2f} [{v.min():.2f}–{v.max():.2f}]"

    report = {"inputs": args.inputs, "fixed_inputs": k, "fixed_n": args.fixed_n, "device": str(seq_job.pool.device),
              "workers": seq_job.pool.workers, "batch_size": seq_job.plan.batch_size, "runs": runs, "ratios": {}}
    print(f"\ndevice {seq_job.pool.device}, {seq_job.pool.workers} workers, batch {seq_job.plan.batch_size}; "
          f"fixed N = {args.fixed_n:,} (+ n0 {N0}) on {k} inputs, sequential on {args.inputs}; "
          f"median [min–max] of {args.repeats}:")
    for name in names[1:]:
        samples, times, follow, rate = [], [], [], []
        for f, s in zip(runs["fixed"], runs[name]):
            samples.append(f["samples_per_input"] / s["samples_per_input"])
            times.append((f["seconds"] / f["inputs"]) / (s["seconds"] / s["inputs"]))
            follow.append(times[-1] / samples[-1])
            rate.append((s["forward_samples"] / s["seconds"]) / (f["forward_samples"] / f["seconds"]))
        report["ratios"][name] = {"samples": samples, "time": times, "time_over_samples": follow,
                                  "throughput_vs_fixed": rate}
        print(f"  {name}: samples ratio {spread(samples)}, time ratio {spread(times)}, "
              f"time/samples {spread(follow)} (goal ≥ 0.5); forward samples/s vs fixed {spread(rate)}")

    if args.profile:
        run = SequentialRun(seq_job, sequentials[0.5])
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        run.run()  # one group of rounds in this thread, so that cProfile sees the driver's code
        profiler.disable()
        seconds = time.perf_counter() - started
        print(f"\nprofile, r = 0.5σ: {seconds:.2f} s, {run.forward_samples / seconds:,.0f} forward samples/s; "
              "driver functions by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        print("rounds (look: inputs, seconds, forward samples/s of the round):")
        for r in run.rounds:
            if not r["samples"]:
                continue  # a look decided inside an earlier look's engine round
            print(f"  {r['look']:>7}: {r['inputs']:>5} inputs, {r['seconds']:.3f} s, "
                  f"{r.get('samples', 0) / max(r['seconds'], 1e-9):,.0f}/s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
