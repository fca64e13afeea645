"""Certification throughput of rpdist, as ratios measured side by side in one run.

Usage::

    python benchmarks/throughput.py [--quick] [--json PATH] [--no-ray] [--models insurance,digits]

For each built-in model (the insurance MLP and the digits CNN, sigma = 0.5, n0 = 100, N = 10,000
estimation samples per input, default noise block and batch size) it prints:

1. **cert / raw forward** (goal >= 0.85). Certification samples/s divided by the bare model's
   forward samples/s on the same single thread at the same batch size. 1.0 means certification
   costs nothing beyond the forward passes it must run.

   * *kernel*: the engine's own work units (selection n0 + estimation N per input, cut by
     :class:`rpdist.distributed.plan.Plan` exactly as :func:`rpdist.certify` cuts them) executed by a
     :class:`rpdist.smoothing.votes.VoteCounter` in this process with ``torch.set_num_threads(1)`` and freed
     memory kept (:mod:`rpdist.distributed.allocator`), as in a replica: noise
     generation + scale/add + forward + argmax + ``bincount``, without Ray. The denominator is
     ``VoteCounter.forward_throughput`` at the batch the kernel actually forwards: the default
     batch size rounded down to whole noise blocks (4096 -> 4000), passed to the model as the kernel
     passes it (in slices of ``CPU_FORWARD_ROWS`` = 1,024 rows on CPU). Reported twice: per second of
     wall clock, and per second of this thread's CPU time (``time.thread_time``), which does not
     count the time the thread was preempted by other processes on a shared machine.
   * *end to end* (1b): :func:`rpdist.certify` with ``workers=1`` (Ray scheduling, driver-side
     validation, model probe, statistics and Arrow tables included) divided by
     ``ModelReplica.forward_throughput`` measured inside that very actor right before and right
     after the timed call (wall clock only: the work spans processes).

2. **cert / naive loop**. Kernel certification samples/s divided by the samples/s of the loop a
   user would write (as in Cohen et al.'s reference code): one input at a time, ``x.repeat`` into
   batches of the same batch size, ``torch.randn_like`` noise, forward of the whole batch, argmax, and a
   Python ``collections.Counter`` over the labels. Same process, same single thread. Above 1 means
   rpdist's counter-based, reproducible sampling is also faster than the naive loop.

3. **2 workers / 1 worker**. End-to-end :func:`rpdist.certify` samples/s with ``workers=2``
   divided by ``workers=1`` (ideal 2.0; with only 2 cores the driver and Ray's own processes
   compete with the workers for CPU, so expect less).

How noise is kept out: the kernel, raw and naive measurements are interleaved at the granularity
of one work unit (a few tens of milliseconds), in a rotating order, and summed per repeat; the
1-worker and 2-worker certify calls alternate (1,2,2,1,1,2), with the untimed pool start-ups in
between. Every ratio is the median of per-repeat ratios [min–max]. Absolute samples/s are printed
only next to the ratios, for orientation. A last table times each stage of the kernel on full
packed batches (noise, scale/add, forward, argmax + bincount) to show where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from rpdist.datasets.catalog import load_dataset  # noqa: E402
from rpdist.distributed.allocator import keep_freed_memory  # noqa: E402
from rpdist.distributed.plan import PhaseSpec, Plan  # noqa: E402
from rpdist.distributed.pool import CPU_BATCH  # noqa: E402
from rpdist.models.zoo import default_model  # noqa: E402
from rpdist.smoothing.noise import DEFAULT_BLOCK, Phase, block_seed, fill_block  # noqa: E402
from rpdist.smoothing.votes import VoteCounter  # noqa: E402

SIGMA = 0.5
N0 = 100
SEED = 0
# VoteCounter.count packs whole noise blocks, so its full forward batches hold this many samples.
PACKED_BATCH = max(1, CPU_BATCH // DEFAULT_BLOCK) * DEFAULT_BLOCK


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does, per model."""

    n: int  # estimation samples per input (plus n0 = 100 selection samples)
    kernel_inputs: int  # inputs per kernel-certification repeat
    naive_inputs: int  # inputs per naive-loop repeat
    kernel_repeats: int
    e2e_inputs: int  # inputs per rpdist.certify call
    e2e_workers: tuple[int, ...]  # worker counts of the timed certify calls, in order
    actor_forward_batches: int  # batches timed by ModelReplica.forward_throughput, before and after


# A Ray pool is rebuilt (seconds, untimed) whenever the worker count changes, hence the orders:
# 1,2,2,1,1,2 alternates with 4 pools; the quick 1,1,2,2 needs only 2.
FULL = {
    "insurance": Sizes(n=10_000, kernel_inputs=96, naive_inputs=16, kernel_repeats=5,
                       e2e_inputs=96, e2e_workers=(1, 2, 2, 1, 1, 2), actor_forward_batches=120),
    "digits": Sizes(n=10_000, kernel_inputs=6, naive_inputs=2, kernel_repeats=3,
                    e2e_inputs=12, e2e_workers=(1, 2, 2, 1, 1, 2), actor_forward_batches=6),
}
QUICK = {
    "insurance": Sizes(n=10_000, kernel_inputs=48, naive_inputs=8, kernel_repeats=3,
                       e2e_inputs=48, e2e_workers=(1, 1, 2, 2), actor_forward_batches=60),
    "digits": Sizes(n=10_000, kernel_inputs=3, naive_inputs=1, kernel_repeats=3,
                    e2e_inputs=6, e2e_workers=(1, 1, 2, 2), actor_forward_batches=2),
}


@dataclass
class ModelResult:
    name: str
    sizes: Sizes
    raw: list[float] = field(default_factory=list)  # samples/s, in-process forward_throughput
    kernel: list[float] = field(default_factory=list)  # samples/s, VoteCounter over plan units
    naive: list[float] = field(default_factory=list)  # samples/s, one-input-at-a-time loop
    raw_cpu: list[float] = field(default_factory=list)  # the same three per second of thread CPU time
    kernel_cpu: list[float] = field(default_factory=list)
    naive_cpu: list[float] = field(default_factory=list)
    e2e1: list[float] = field(default_factory=list)  # samples/s, certify(workers=1)
    e2e2: list[float] = field(default_factory=list)  # samples/s, certify(workers=2)
    actor_raw: list[float] = field(default_factory=list)  # samples/s, forward_throughput in the actor
    breakdown: dict = field(default_factory=dict)  # ns/sample per stage of VoteCounter.count

    def ratios(self) -> dict[str, list[float]]:
        return {
            "kernel_vs_raw": [k / r for k, r in zip(self.kernel, self.raw)],
            "kernel_vs_raw_cpu_time": [k / r for k, r in zip(self.kernel_cpu, self.raw_cpu)],
            "e2e1_vs_actor_raw": [e / r for e, r in zip(self.e2e1, self.actor_raw)],
            "kernel_vs_naive": [k / v for k, v in zip(self.kernel, self.naive)],
            "kernel_vs_naive_cpu_time": [k / v for k, v in zip(self.kernel_cpu, self.naive_cpu)],
            "w2_vs_w1": [b / a for a, b in zip(self.e2e1, self.e2e2)],  # k-th 1-worker run with k-th 2-worker run
        }


# --------------------------------------------------------------------------------------------
# Single-thread, in-process measurements


def certify_plan(num_inputs: int, n: int) -> Plan:
    """The plan rpdist.certify makes for CERTIFY on CPU with default block and batch sizes."""
    return Plan(num_inputs, (PhaseSpec(Phase.SELECTION, N0), PhaseSpec(Phase.ESTIMATION, n)), DEFAULT_BLOCK, CPU_BATCH)


def run_units(counter: VoteCounter, plan: Plan, units, X, ids, num_classes: int) -> int:
    """Execute ``units`` of ``plan`` on ``counter`` as a ModelReplica would; returns samples."""
    samples = 0
    for unit in units:
        rows = slice(unit.row_start, unit.row_stop)
        counter.count(X[rows], ids[rows], phase=unit.phase, n=unit.n, block_start=unit.block_start,
                      block_stop=unit.block_stop, sigma=SIGMA, seed=SEED, block_size=plan.block_size,
                      batch_size=plan.batch_size, num_classes=num_classes)
        samples += plan.unit_samples_of(unit)
    return samples


@torch.no_grad()
def naive_certify(model, X, n: int, batch_size: int, device=None) -> int:
    """What a user writes: per input, repeat into batches, add noise, forward, Counter the labels."""
    for x in X:
        x = torch.as_tensor(x, device=device)
        votes: Counter = Counter()
        remaining = n
        while remaining:
            size = min(batch_size, remaining)
            batch = x.unsqueeze(0).repeat(size, *([1] * x.dim()))
            noise = torch.randn_like(batch) * SIGMA
            predictions = model(batch + noise).argmax(dim=1)
            votes.update(predictions.tolist())
            remaining -= size
    return len(X) * n


@torch.inference_mode()
def stage_breakdown(counter: VoteCounter, X, ids, num_classes: int, rounds: int = 7) -> dict:
    """Thread-CPU ns per sample of each stage of ``VoteCounter.count`` on full packed batches.

    Rebuilt from the same primitives (``block_seed`` + ``fill_block`` per block, one scale per batch, an
    add per input's run of blocks and the owner vector, the model's forward, argmax + ``bincount``) and timed in rotation, ``rounds``
    times; the median of each stage is reported, and each stage's share of their sum.
    """
    per_batch = CPU_BATCH // DEFAULT_BLOCK
    samples = per_batch * DEFAULT_BLOCK
    buffer = torch.empty((CPU_BATCH, *X.shape[1:]))
    owner = torch.zeros(CPU_BATCH, dtype=torch.int64)
    xs = torch.as_tensor(X)
    generator = torch.Generator()
    reps = max(1, round(2e5 / samples)) if X[0].size < 32 else 1  # keep the CNN's forward short

    def seeds(r):
        for j in range(per_batch):
            block_seed(SEED, int(ids[r % len(ids)]), Phase.ESTIMATION, j)

    def noise(r):
        for j in range(per_batch):
            fill_block(buffer[j * DEFAULT_BLOCK:(j + 1) * DEFAULT_BLOCK], generator, SEED, int(ids[r % len(ids)]),
                       Phase.ESTIMATION, j)

    def shift(r):
        # as VoteCounter._batch: one scale per batch, one add per run of an input's blocks (here the
        # batch's blocks split over two inputs), one owner vector
        samples_ = buffer[:samples]
        samples_.mul_(SIGMA)
        half = (per_batch // 2) * DEFAULT_BLOCK
        samples_[:half].add_(xs[r % len(xs)])
        samples_[half:].add_(xs[(r + 1) % len(xs)])
        sizes = torch.full((per_batch,), DEFAULT_BLOCK)
        owner[:samples] = torch.repeat_interleave(torch.arange(0, per_batch * num_classes, num_classes), sizes,
                                                  output_size=samples)

    noise(0)
    logits = counter.logits(buffer[:samples])

    def forward(r):
        counter.logits(buffer[:samples])  # as the kernel calls the model: in slices of forward_rows on CPU

    def count(r):
        votes = logits.argmax(dim=1).add_(owner[:samples])
        torch.bincount(votes, minlength=1)

    stages = {"noise_fill": noise, "of_which_seed_hash": seeds, "scale_add_owner": shift, "forward": forward,
              "argmax_bincount": count}
    times: dict[str, list[float]] = {name: [] for name in stages}
    for fn in stages.values():
        fn(0)
    for round_ in range(rounds):
        names = list(stages)[round_ % len(stages):] + list(stages)[: round_ % len(stages)]
        for name in names:
            started = time.thread_time()
            for r in range(reps):
                stages[name](r)
            times[name].append((time.thread_time() - started) / (reps * samples) * 1e9)
    out = {name: statistics.median(v) for name, v in times.items()}
    out["sum_of_stages"] = sum(v for k, v in out.items() if k != "of_which_seed_hash")
    return out


def measure_kernel(name: str, sizes: Sizes, result: ModelResult, log) -> tuple:
    """Kernel certification, raw forward and naive loop, interleaved finely.

    The work is cut into the engine's row groups (the inputs of one unit, 3 at N=10k); for each
    group the three measurements run back to back in a rotating order: the group's units on the
    VoteCounter, the same number of samples of raw forward, and the naive loop on one input. A
    repeat sums samples and seconds over all groups, so each repeat's ratios compare measurements
    taken within a second of each other.
    """
    ref = default_model(name, train_sigma=SIGMA)
    data = load_dataset(name, split="test")
    counter = VoteCounter(ref, "cpu")
    X, ids = data.X[: sizes.kernel_inputs], data.input_ids[: sizes.kernel_inputs]
    plan = certify_plan(len(X), sizes.n)
    groups: dict[int, list] = {}
    for chunk in range(plan.num_chunks):
        for unit in plan.units(chunk):
            groups.setdefault(unit.row_start, []).append(unit)
    groups_list = list(groups.values())
    naive_every = max(1, len(groups_list) // sizes.naive_inputs)

    def raw(units):
        batches = max(1, round(sum(plan.unit_samples_of(u) for u in units) / PACKED_BATCH))
        cpu = time.thread_time()
        samples, seconds = counter.forward_throughput(X, PACKED_BATCH, batches)
        # forward_throughput runs one untimed warm-up forward: take its share off the CPU time
        return samples, seconds, (time.thread_time() - cpu) * batches / (batches + 1)

    def kernel(units):
        started, cpu = time.perf_counter(), time.thread_time()
        samples = run_units(counter, plan, units, X, ids, data.num_classes)
        return samples, time.perf_counter() - started, time.thread_time() - cpu

    def naive(units):
        started, cpu = time.perf_counter(), time.thread_time()
        samples = naive_certify(counter.model, X[units[0].row_start : units[0].row_start + 1], sizes.n, CPU_BATCH)
        return samples, time.perf_counter() - started, time.thread_time() - cpu

    # warm-up: one call of each path (allocator, oneDNN primitive caches)
    for fn in (raw, kernel, naive):
        fn(groups_list[0])
    kinds = [("raw", raw, result.raw, result.raw_cpu), ("kernel", kernel, result.kernel, result.kernel_cpu),
             ("naive", naive, result.naive, result.naive_cpu)]
    for repeat in range(sizes.kernel_repeats):
        totals = {kind[0]: [0, 0.0, 0.0] for kind in kinds}
        for g, units in enumerate(groups_list):
            shift = (g + repeat) % len(kinds)
            order = kinds[shift:] + kinds[:shift]
            if (g + repeat) % 2:
                order = order[::-1]
            for label, fn, _, _ in order:
                if label == "naive" and g % naive_every:
                    continue
                for i, value in enumerate(fn(units)):
                    totals[label][i] += value
        for label, _, wall, cpu in kinds:
            samples, seconds, cpu_seconds = totals[label]
            wall.append(samples / seconds)
            cpu.append(samples / cpu_seconds)
        log(f"  {name} kernel repeat {repeat + 1}/{sizes.kernel_repeats}: raw {result.raw[-1]:,.0f}  "
            f"cert {result.kernel[-1]:,.0f}  naive {result.naive[-1]:,.0f} samples/s")
    result.breakdown = stage_breakdown(counter, data.X, data.input_ids, data.num_classes)
    return ref, data


# --------------------------------------------------------------------------------------------
# End to end through rpdist.certify on Ray


def measure_end_to_end(name: str, ref, data, sizes: Sizes, result: ModelResult, log) -> list[dict]:
    import rpdist
    from rpdist.distributed.pool import get_pool
    from rpdist.privacy import per_input

    X, y, ids = data.X[: sizes.e2e_inputs], data.y[: sizes.e2e_inputs], data.input_ids[: sizes.e2e_inputs]
    samples = len(X) * (N0 + sizes.n)
    infos = []
    current = None

    def ready(workers: int):
        """Bring up (or keep) the pool for ``workers``; its start-up is not timed."""
        nonlocal current
        if current != workers:
            rpdist.certify(ref, X[:2], sigma=SIGMA, n0=N0, n=DEFAULT_BLOCK, alpha=0.001, workers=workers)
            infos.extend(get_pool(ref, workers, None).info())
            current = workers
            log(f"  {name}: pool of {workers} worker(s) ready")

    def run(workers: int) -> float:
        ready(workers)
        per_input.forget()  # each timed call pays for its release-privacy columns, as a fresh audit does
        started = time.perf_counter()
        frame = rpdist.certify(ref, X, y, sigma=SIGMA, n0=N0, n=sizes.n, alpha=0.001, workers=workers,
                               input_ids=ids)
        rate = samples / (time.perf_counter() - started)
        assert len(frame) == len(X)
        return rate

    def actor_raw() -> tuple[int, float]:
        import ray

        actor = get_pool(ref, 1, None).actors[0]
        return ray.get(actor.forward_throughput.remote(X, PACKED_BATCH, sizes.actor_forward_batches))

    for index, workers in enumerate(sizes.e2e_workers):
        if workers == 1:
            # the actor's raw forward right before and right after the timed call, pooled
            ready(1)
            before = actor_raw()
            rate = run(1)
            after = actor_raw()
            result.e2e1.append(rate)
            result.actor_raw.append((before[0] + after[0]) / (before[1] + after[1]))
            log(f"  {name} end to end {index + 1}/{len(sizes.e2e_workers)}: 1 worker {rate:,.0f} samples/s "
                f"(actor raw forward {result.actor_raw[-1]:,.0f})")
        else:
            result.e2e2.append(run(workers))
            log(f"  {name} end to end {index + 1}/{len(sizes.e2e_workers)}: 2 workers {result.e2e2[-1]:,.0f} samples/s")
    return infos


# --------------------------------------------------------------------------------------------
# Reporting


def summary(values: list[float]) -> dict:
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def environment(ray_infos: list[dict]) -> dict:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_threads_driver": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "actor_threads": sorted({info["threads"] for info in ray_infos}) or None,
        "batch_size": CPU_BATCH,
        "packed_batch": PACKED_BATCH,
        "noise_block": DEFAULT_BLOCK,
        "sigma": SIGMA,
        "n0": N0,
    }


def print_report(results: list[ModelResult], env: dict, elapsed: float) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(f"[bold]Environment[/]: {env['cpu_count']} CPUs (affinity {env['cpu_affinity']}), "
                  f"torch {env['torch']} with {env['torch_threads_driver']} thread(s) in the benchmark process, "
                  f"actor threads {env['actor_threads']}, mkldnn {env['mkldnn']}, load {env['loadavg_1m']:.2f}; "
                  f"batch {env['batch_size']} (packed {env['packed_batch']}), noise block {env['noise_block']}, σ={env['sigma']}, n0={env['n0']}; "
                  f"{elapsed:.0f} s in all")
    if env["loadavg_1m"] is not None and env["cpu_count"] and env["loadavg_1m"] > env["cpu_count"]:
        console.print(f"[yellow]The machine was busy (load {env['loadavg_1m']:.1f} on {env['cpu_count']} CPUs): other "
                      "processes preempt the benchmark, so trust the thread-CPU-time columns over wall clock.[/]")

    table = Table(title="rpdist certification throughput (ratios: median of paired repeats \\[min–max])")
    table.add_column("model")
    table.add_column("N / input", justify="right")
    table.add_column("1. cert ÷ raw fwd\nkernel, 1 thread\nwall clock", justify="right")
    table.add_column("1. cert ÷ raw fwd\nkernel, 1 thread\nthread CPU time", justify="right")
    table.add_column("1b. certify(w=1)\n÷ actor raw fwd\nend to end, Ray", justify="right")
    table.add_column("2. cert ÷ naive\n1 thread\nwall clock", justify="right")
    table.add_column("2. cert ÷ naive\n1 thread\nthread CPU time", justify="right")
    table.add_column("3. certify\nw=2 ÷ w=1\nend to end", justify="right")
    goal = 0.85

    def cell(values, mark_goal=False):
        if not values:
            return "—"
        med = statistics.median(values)
        text = escape(f"{med:.2f} [{min(values):.2f}–{max(values):.2f}]")
        if mark_goal:
            text = f"[{'green' if med >= goal else 'red'}]{text}[/]"
        return text

    for r in results:
        ratios = r.ratios()
        table.add_row(r.name, f"{r.sizes.n:,}", cell(ratios["kernel_vs_raw"], True),
                      cell(ratios["kernel_vs_raw_cpu_time"], True), cell(ratios["e2e1_vs_actor_raw"], True),
                      cell(ratios["kernel_vs_naive"]), cell(ratios["kernel_vs_naive_cpu_time"]),
                      cell(ratios["w2_vs_w1"]))
    console.print(table)

    rates = Table(title="for orientation only: median samples/s (noisy machine)")
    for column in ("model", "raw fwd", "kernel cert", "naive loop", "actor raw fwd", "certify w=1", "certify w=2"):
        rates.add_column(column, justify="right" if column != "model" else "left")
    med = lambda v: f"{statistics.median(v):,.0f}" if v else "—"  # noqa: E731
    for r in results:
        rates.add_row(r.name, med(r.raw), med(r.kernel), med(r.naive), med(r.actor_raw), med(r.e2e1), med(r.e2e2))
    console.print(rates)

    stages = Table(title="where kernel time goes: thread-CPU ns per sample on full packed batches, 1 thread "
                         "(share of the stages' sum)")
    stages.add_column("model")
    keys = ["noise_fill", "of_which_seed_hash", "scale_add_owner", "forward", "argmax_bincount"]
    for key in keys + ["sum_of_stages"]:
        stages.add_column(key.replace("_", " "), justify="right")
    stages.add_column("forward share\n= ratio-1 ceiling", justify="right")
    for r in results:
        b = r.breakdown
        total = b["sum_of_stages"]
        stages.add_row(r.name, *(f"{b[k]:,.0f} ({100 * b[k] / total:.0f}%)" for k in keys), f"{total:,.0f}",
                       f"{b['forward'] / total:.2f}")
    console.print(stages)
    console.print(f"The forward share is the ratio-1 ceiling implied by the stages; the measured kernel also pays for "
                  f"selection units (n0={N0}: 300-sample batches), partial last batches and Python packing per "
                  f"{DEFAULT_BLOCK}-sample block.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (about 40 s)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    parser.add_argument("--no-ray", action="store_true", help="skip the end-to-end rpdist.certify measurements")
    parser.add_argument("--models", default="insurance,digits", help="comma-separated built-in models")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    keep_freed_memory()  # as every CPU replica does: the in-process kernel, raw forward and naive loop alike
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.1f} s] {message}", file=sys.stderr, flush=True)

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    results, prepared = [], []
    for name in names:
        result = ModelResult(name, sizes[name])
        log(f"{name}: single-thread kernel / raw forward / naive loop")
        prepared.append(measure_kernel(name, sizes[name], result, log))
        results.append(result)

    ray_infos: list[dict] = []
    if not args.no_ray:
        import ray

        from rpdist.distributed.pool import ensure_ray

        log("starting Ray")
        ensure_ray()
        try:
            for result, (ref, data) in zip(results, prepared):
                log(f"{result.name}: end to end through rpdist.certify (1 and 2 workers)")
                ray_infos += measure_end_to_end(result.name, ref, data, result.sizes, result, log)
        finally:
            ray.shutdown()

    elapsed = time.perf_counter() - started
    env = environment(ray_infos)
    print_report(results, env, elapsed)
    if args.json:
        payload = {
            "environment": env,
            "elapsed_s": elapsed,
            "quick": args.quick,
            "models": {
                r.name: {
                    "sizes": r.sizes.__dict__,
                    "ratios": {k: summary(v) for k, v in r.ratios().items()},
                    "samples_per_s": {k: summary(getattr(r, k)) for k in
                                      ("raw", "kernel", "naive", "raw_cpu", "kernel_cpu", "naive_cpu",
                                       "actor_raw", "e2e1", "e2e2")},
                    "breakdown_ns_per_sample": r.breakdown,
                }
                for r in results
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
