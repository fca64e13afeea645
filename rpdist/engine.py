"""Plans work units, runs them on a pool of ``ModelReplica`` actors and sums their counts.

A *unit* is (rows of a chunk of inputs, phase, range of noise blocks). The plan depends only on
the number of inputs, the sample sizes, the noise block and the batch size — never on the number
of workers — so every split of the work yields bit-identical counts. A *chunk* is the group of
inputs whose results are written together; the driver only ever holds the chunks in flight.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from rpdist.errors import InputError
from rpdist.modelref import ModelRef
from rpdist.noise import num_blocks

CPU_BATCH = 4096
GPU_BATCH = 32768
UNIT_BATCHES = 8  # forward batches per unit: enough work to hide Ray's per-call cost
CHUNK_SAMPLES = 1 << 24  # samples per written chunk: bounds what a crash can lose
MAX_CHUNK_INPUTS = 2048


@dataclass(frozen=True)
class PhaseSpec:
    phase: int
    n: int


@dataclass(frozen=True)
class Unit:
    chunk: int
    row_start: int
    row_stop: int
    phase: int
    n: int
    block_start: int
    block_stop: int


@dataclass(frozen=True)
class Plan:
    """How a job is cut into units and chunks; a pure function of the job, not of the cluster."""

    num_inputs: int
    phases: tuple[PhaseSpec, ...]
    block_size: int
    batch_size: int

    @property
    def unit_samples(self) -> int:
        return UNIT_BATCHES * self.batch_size

    def blocks_per_unit(self, spec: PhaseSpec) -> int:
        return max(1, min(num_blocks(spec.n, self.block_size), self.unit_samples // self.block_size))

    @property
    def unit_inputs(self) -> int:
        per_input = min(max(spec.n for spec in self.phases), self.unit_samples)
        return max(1, self.unit_samples // per_input)

    @property
    def chunk_inputs(self) -> int:
        per_input = sum(spec.n for spec in self.phases)
        units = max(1, CHUNK_SAMPLES // (self.unit_inputs * per_input))
        return max(self.unit_inputs, min(MAX_CHUNK_INPUTS // self.unit_inputs, units) * self.unit_inputs)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_inputs // self.chunk_inputs)

    def chunk_rows(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_inputs
        return start, min(start + self.chunk_inputs, self.num_inputs)

    def units(self, chunk: int) -> list[Unit]:
        start, stop = self.chunk_rows(chunk)
        out = []
        for row in range(start, stop, self.unit_inputs):
            row_stop = min(row + self.unit_inputs, stop)
            for spec in self.phases:
                total, step = num_blocks(spec.n, self.block_size), self.blocks_per_unit(spec)
                for block in range(0, total, step):
                    out.append(Unit(chunk, row, row_stop, spec.phase, spec.n, block, min(block + step, total)))
        return out

    def unit_samples_of(self, unit: Unit) -> int:
        first = unit.block_start * self.block_size
        last = min(unit.n, unit.block_stop * self.block_size)
        return (unit.row_stop - unit.row_start) * (last - first)

    def samples(self, chunks: Iterable[int]) -> int:
        per_input = sum(spec.n for spec in self.phases)
        return sum(stop - start for start, stop in map(self.chunk_rows, chunks)) * per_input


def ensure_ray(address: str | None = None) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``, which Ray sets inside jobs), else start an embedded
    local Ray; reuse one already running."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        else:
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise InputError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


@dataclass(frozen=True)
class SharedPool:
    """Handles to a pool's replicas, picklable into Ray tasks so that they query the same warm actors.

    Tasks cannot make pools of their own on a small cluster: the driver's replicas already hold
    every CPU, and a task waiting for CPUs it holds none of would wait forever.
    """

    model_sha256: str
    device: str
    actors: tuple


class ReplicaPool:
    """A set of ``ModelReplica`` actors holding one model; on GPUs each takes a share of a device."""

    owned = True  # False for a pool attached from a SharedPool: its creator decides when it ends

    def __init__(self, model_ref: ModelRef, workers: int | None = None, device: str | None = None):
        import ray

        from rpdist.replica import ModelReplica

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = device != "cpu" and gpus > 0
        if workers is None:
            workers = gpus if use_gpu else max(1, int(resources.get("CPU", 1)))
        if workers < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        if not use_gpu and workers > resources.get("CPU", 0) and not _autoscaling():
            raise InputError(f"{workers} workers need {workers} CPUs but the Ray cluster has {resources.get('CPU', 0):g}")
        options = {"num_cpus": 1}
        if use_gpu:
            options["num_gpus"] = min(1.0, gpus / workers)
        self.device = device or ("cuda" if use_gpu else "cpu")
        self.model_sha256 = model_ref.sha256
        # Passed by value: Ray keeps an actor's creation arguments for its restarts, and a small model
        # travels inline (an explicit ray.put would make Ray warn on every pool).
        self.actors = [ModelReplica.options(**options).remote(model_ref, self.device) for _ in range(workers)]

    @property
    def workers(self) -> int:
        return len(self.actors)

    def info(self) -> list[dict]:
        import ray

        return ray.get([actor.info.remote() for actor in self.actors])

    def share(self) -> SharedPool:
        return SharedPool(self.model_sha256, self.device, tuple(self.actors))

    @classmethod
    def attach(cls, shared: SharedPool) -> ReplicaPool:
        pool = cls.__new__(cls)
        pool.device, pool.model_sha256, pool.owned = shared.device, shared.model_sha256, False
        pool.actors = list(shared.actors)
        return pool

    def close(self) -> None:
        import ray

        if self.owned:
            for actor in self.actors:
                ray.kill(actor)
        self.actors = []


def _autoscaling() -> bool:
    """A cluster started by the launcher may grow, so its current size is no limit."""
    return bool(os.environ.get("RPDIST_AUTOSCALING"))


_POOLS: OrderedDict[tuple, ReplicaPool] = OrderedDict()


def get_pool(model_ref: ModelRef, workers: int | None, device: str | None,
             shared: SharedPool | None = None) -> ReplicaPool:
    """Reuse warm replicas across calls (attacks query the same model thousands of times).

    Only one pool is kept: its actors hold CPUs or GPUs that a new pool would wait for forever.
    Inside a Ray task, ``shared`` (from the driver's ``pool.share()``) attaches to the driver's
    replicas instead of creating any.
    """
    if shared is not None:
        if shared.model_sha256 != model_ref.sha256:
            raise ValueError("the shared pool holds another model")
        for pool in _POOLS.values():
            if tuple(pool.actors) == shared.actors:  # the driver itself, or a task's second call
                return pool
    key = (model_ref.sha256, workers, device) if shared is None else ("shared", shared.actors)
    if key not in _POOLS:
        while _POOLS:
            _POOLS.popitem()[1].close()
        _POOLS[key] = ReplicaPool(model_ref, workers, device) if shared is None else ReplicaPool.attach(shared)
    return _POOLS[key]


def default_batch_size(device: str) -> int:
    return GPU_BATCH if device.startswith("cuda") else CPU_BATCH


def run_plan(
    pool: ReplicaPool,
    X: np.ndarray,
    input_ids: np.ndarray,
    plan: Plan,
    *,
    sigma: float,
    seed: int,
    num_classes: int,
    chunks: Iterable[int],
    on_unit: Callable[[Unit, int], None] | None = None,
) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Run the units of ``chunks``; yield (chunk, {phase: counts [inputs, blocks, classes]}) as each ends.

    At most two units per actor are in flight, so the driver's memory is bounded by the chunks
    being worked on, not by the size of the job.
    """
    import ray

    pending: dict = {}
    load = {i: 0 for i in range(pool.workers)}
    # Ties go to a random replica: callers that each send a single unit (Ray tasks sharing one pool)
    # would otherwise all pick replica 0. Counts never depend on which replica computes a unit.
    offset = int(np.random.default_rng().integers(pool.workers))
    rank = {i: (i - offset) % pool.workers for i in load}
    totals: dict[int, dict[int, np.ndarray]] = {}
    remaining: dict[int, int] = {}
    inputs: dict[int, np.ndarray] = {}  # the rows of chunks in flight; X itself may live on disk
    queue = _unit_stream(plan, chunks, totals, remaining, num_classes, X, inputs)
    exhausted = False
    while True:
        while not exhausted and len(pending) < 2 * pool.workers:
            unit = next(queue, None)
            if unit is None:
                exhausted = True
                break
            worker = min(load, key=lambda i: (load[i], rank[i]))
            params = dict(phase=unit.phase, n=unit.n, block_start=unit.block_start, block_stop=unit.block_stop,
                          sigma=sigma, seed=seed, block_size=plan.block_size, batch_size=plan.batch_size,
                          num_classes=num_classes)
            first = plan.chunk_rows(unit.chunk)[0]
            x = inputs[unit.chunk][unit.row_start - first : unit.row_stop - first]
            ref = pool.actors[worker].count.remote(x, input_ids[unit.row_start : unit.row_stop], params)
            pending[ref] = (unit, worker)
            load[worker] += 1
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1)
        unit, worker = pending.pop(done[0])
        load[worker] -= 1
        counts = ray.get(done[0])
        first = unit.row_start - plan.chunk_rows(unit.chunk)[0]
        totals[unit.chunk][unit.phase][first : first + len(counts), unit.block_start : unit.block_stop] = counts
        remaining[unit.chunk] -= 1
        if on_unit is not None:
            on_unit(unit, plan.unit_samples_of(unit))
        if remaining[unit.chunk] == 0:
            del remaining[unit.chunk], inputs[unit.chunk]
            yield unit.chunk, totals.pop(unit.chunk)


def _unit_stream(plan, chunks, totals, remaining, num_classes, X, inputs) -> Iterator[Unit]:
    """Units chunk by chunk; a chunk's inputs are read and its count buffers allocated only when
    it is reached."""
    for chunk in chunks:
        start, stop = plan.chunk_rows(chunk)
        inputs[chunk] = np.ascontiguousarray(X[start:stop], dtype=np.float32)
        totals[chunk] = {
            spec.phase: np.zeros((stop - start, num_blocks(spec.n, plan.block_size), num_classes), dtype=np.int64)
            for spec in plan.phases
        }
        units = plan.units(chunk)
        remaining[chunk] = len(units)
        yield from units


class SampleProgress:
    """A rich progress bar in samples with a samples/s readout; silent when disabled."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self._progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("samples"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, rate="")
            self._progress.start()

    def advance(self, samples: int) -> None:
        self.done += samples
        if self._progress is not None:
            self._progress.update(self._task, advance=samples, rate=f"{self.rate:,.0f} samples/s")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.done / max(self.elapsed, 1e-9)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
