"""Sequential CERTIFY on the engine: each input draws estimation blocks until its test decides.

The job runs in rounds. Round 0 draws the n0 selection samples of every input (unless the test runs
against the true label). Round j then gives every still-undecided input the estimation blocks
between look j−1 and look j, through the ordinary plan and scheduler, so forward batches carry
only undecided inputs, packed across inputs as always. After a round each input's bounds are
updated from its own cumulative counts; decided inputs drop out. Looks sit at block boundaries
and depend only on the configuration, and a block's noise depends only on (seed, input id, phase,
block), so every decision is bit-identical for any number of workers and after replica restarts.
A round smaller than ROUND_MIN_BATCHES forward batches reaches on to later looks (fewer rounds, each
a Ray round trip and a barrier); its looks are then walked in order on each input's cumulative
per-block counts, so every input stops where one round per look would stop it, and the blocks
drawn past its stop count only as waste in the forward samples (as do units recomputed after a
replica failure). A resumable run
(:mod:`rpdist.pipelines.seqrun`) takes the inputs chunk by chunk (:meth:`SequentialRun.chunks`), each
chunk's rounds run to the end: the same rows, since no input's decision depends on another's.
"""

from __future__ import annotations

import math
import time
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
import pyarrow as pa
from pydantic import ValidationError
from pydantic.dataclasses import dataclass

from rpdist.distributed.plan import UNIT_BATCHES, PhaseSpec, Plan
from rpdist.distributed.scheduler import run_plan
from rpdist.errors import InputError
from rpdist.specs import input_error
from rpdist.io.schemas import sequential_schema
from rpdist.smoothing import sequential as seq
from rpdist.smoothing import stats
from rpdist.smoothing.noise import MAX_BLOCKS, Phase, num_blocks

SEQUENTIAL_BLOCK = 32  # noise block of sequential runs: looks can come every 32 samples
CHUNK_UNITS = 4  # units of full forward batches in the first look of a resumable run's chunk
CHUNK_WINDOW = 2  # chunks of a resumable run in flight at once
ROUND_UNITS = 16  # a round is cut into at least this many units while they hold one forward batch or more
ROUND_MIN_BATCHES = 8  # a round spans further looks until it holds this many forward batches


class _Halted(Exception):
    """Raised in a chunk's thread to stop it when the run stops."""


@dataclass(frozen=True)
class SequentialConfig:
    """The sequential decision parameters; the smoothing ones (σ, α, n0, seed, …) stay in SmoothingConfig."""

    max_n: int
    target_radius: tuple[float, ...] = ()
    mode: str = seq.SEQUENTIAL
    radius_tolerance: float | None = None
    against_label: bool = False
    first_look: int = 32
    growth: float = seq.LOOK_GROWTH

    @classmethod
    def build(cls, **fields) -> SequentialConfig:
        """Construct, turning pydantic's type errors into one-line :class:`InputError`."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise input_error(exc, cls) from None

    def validated(self, sigma: float, alpha: float, block: int) -> SequentialConfig:
        if self.mode not in seq.MODES:
            raise InputError(f"mode must be one of {', '.join(seq.MODES)}, got {self.mode!r}")
        stats.check_count(self.max_n, "max N")
        stats.check_count(self.first_look, "first look")
        if not (math.isfinite(self.growth) and self.growth > 1):
            raise InputError(f"look growth must be > 1, got {self.growth}")
        for r in self.target_radius:
            if not (math.isfinite(r) and r > 0):
                raise InputError(f"target radius must be a finite number > 0, got {r:g}")
        if self.mode == seq.ADAPTIVE:
            if self.radius_tolerance is None:
                raise InputError("--mode adaptive needs --radius-tolerance T (T > 0)")
            if not (math.isfinite(self.radius_tolerance) and self.radius_tolerance > 0):
                raise InputError(f"radius tolerance must be a finite number > 0, got {self.radius_tolerance:g}")
        else:
            if not self.target_radius:
                raise InputError(f"--mode {self.mode} needs at least one --target-radius")
            if self.radius_tolerance is not None:
                raise InputError("--radius-tolerance applies only to --mode adaptive")
        if num_blocks(self.max_n, block) > MAX_BLOCKS:
            raise InputError(f"max N = {self.max_n} needs more than {MAX_BLOCKS} noise blocks of {block}")
        radii = self.target_radius or (1e-12 * sigma,)  # adaptive without targets: any radius at all
        seq.check_target_feasible(radii, sigma, alpha, self.looks(block), self.mode)
        return self

    def looks(self, block: int) -> list[int]:
        return seq.look_points(self.max_n, block, self.mode, self.first_look, self.growth)

    @property
    def radii(self) -> tuple[float, ...]:
        return tuple(sorted(self.target_radius))


def sequential_config(*, target_radius=None, max_n: int | None = None, n: int | None = None,
                      mode: str | None = None, radius_tolerance: float | None = None,
                      against_label: bool = False, look_growth: float | None = None) -> SequentialConfig | None:
    """The sequential options of a certify call, or None for a fixed-N run (none of them given).

    ``n`` and ``max_n`` name the same thing in a sequential run, so both given must agree.
    """
    radii = () if target_radius is None else (
        (target_radius,) if isinstance(target_radius, (int, float, np.integer, np.floating)) else tuple(target_radius))
    if not radii and max_n is None and mode is None and radius_tolerance is None and not against_label:
        if look_growth is not None:
            raise InputError("--look-growth applies to sequential runs (give --target-radius or --mode)")
        return None
    if n is not None and max_n is not None and n != max_n:
        raise InputError(f"--n {n} and --max-n {max_n} disagree: a sequential run's --max-n is its largest N; "
                         "give --max-n alone")
    max_n = max_n if max_n is not None else n if n is not None else 100_000
    return SequentialConfig.build(max_n=max_n, target_radius=radii, mode=mode or seq.SEQUENTIAL,
                                  radius_tolerance=radius_tolerance, against_label=against_label,
                                  growth=seq.LOOK_GROWTH if look_growth is None else look_growth)


def round_unit_batches(samples: int, batch_size: int) -> int:
    """Forward batches per unit of a round of ``samples``: UNIT_BATCHES, or fewer (down to one) so that
    the round has ROUND_UNITS units. A round cut into few large units leaves replicas idle while one
    of them computes the last; most rounds of a run are small (few inputs left, or early looks 32
    samples apart). A constant, not the number of replicas, so the plan stays a function of the job."""
    return max(1, min(UNIT_BATCHES, -(-samples // (ROUND_UNITS * batch_size))))


class SequentialRun:
    """Sequential decisions for every input of a :class:`~rpdist.smoothing.job.SmoothingJob` (its pool,
    inputs and batch size; its own plan is not used)."""

    def __init__(self, job, sequential: SequentialConfig):
        self.job = job
        config = job.config
        self.seq = sequential.validated(config.sigma, config.alpha, config.noise_block)
        if self.seq.against_label and job.y is None:
            raise InputError("--against-label needs labels")
        X = job.X
        self.X = X if isinstance(X, np.ndarray) else np.asarray(X[0 : len(X)], dtype=np.float32)
        self.looks = self.seq.looks(config.noise_block)
        self.forward_samples = 0
        self.rounds: list[dict] = []
        self._lock = threading.Lock()

    def _counts(self, rows: np.ndarray, spec: PhaseSpec, on_unit: Callable | None, spent: dict) -> np.ndarray:
        """Counts [len(rows), blocks, classes + 1] of ``spec``'s blocks for ``rows`` (positions in X)."""
        job = self.job
        plan = Plan(len(rows), (spec,), job.config.noise_block, job.plan.batch_size,
                    round_unit_batches(len(rows) * spec.samples(job.config.noise_block), job.plan.batch_size))
        first, stop = spec.block_range(job.config.noise_block)
        out = np.zeros((len(rows), stop - first, job.num_classes + 1), dtype=np.int64)

        def unit_done(unit, samples):
            spent["forward_samples"] += samples
            with self._lock:  # chunks in flight share the run's total
                self.forward_samples += samples
            if on_unit is not None:
                on_unit(unit, samples)

        for chunk, counts in run_plan(job.pool, self.X[rows], job.input_ids[rows], plan, sigma=job.config.sigma,
                                      seed=job.config.seed, num_classes=job.num_classes,
                                      chunks=range(plan.num_chunks), on_unit=unit_done):
            start, stop = plan.chunk_rows(chunk)
            out[start:stop] = counts[spec.phase]
        return out

    def run(self, on_unit: Callable | None = None) -> pa.Table:
        """Every input in one group of rounds (the API's ``certify()``)."""
        return self.decide(np.arange(len(self.X)), on_unit)

    def chunk_inputs(self) -> int:
        """Inputs per chunk file of a resumable run: the first look of a full chunk packs CHUNK_UNITS
        units of full forward batches, so later looks, with fewer inputs left, still fill some. Fewer
        inputs per chunk would mean more rounds (a Ray round trip each) for the same samples."""
        return max(1, CHUNK_UNITS * self.job.plan.unit_samples // self.looks[0])

    def chunks(self, chunk_inputs: int, skip=(), on_unit: Callable | None = None
               ) -> Iterator[tuple[int, pa.Table, dict]]:
        """Yield (chunk, table, spent) for each chunk of ``chunk_inputs`` consecutive inputs not in
        ``skip``, its rounds run to the end, as chunks finish. ``spent`` holds that chunk's forward
        samples and rounds. An input's rows depend only on its own blocks, so the tables are those
        of :meth:`run`, cut at the chunk boundaries.

        CHUNK_WINDOW chunks run at once, each in a driver thread with its own scheduler on the
        shared replicas: a chunk's last rounds, with few inputs left, would leave replicas idle
        and batches part-empty; the next chunk's rounds fill them. When this generator stops
        (closed, or a chunk failed), the other chunks stop at their next unit.
        """
        m = len(self.X)
        todo = deque(c for c in range(-(-m // chunk_inputs)) if c not in skip)
        halt = threading.Event()

        def one(chunk: int):
            def unit_done(unit, samples):
                if halt.is_set():
                    raise _Halted
                if on_unit is not None:
                    on_unit(unit, samples)

            spent = {"forward_samples": 0, "rounds": []}
            rows = np.arange(chunk * chunk_inputs, min(m, (chunk + 1) * chunk_inputs))
            return chunk, self.decide(rows, unit_done, spent), spent

        executor = ThreadPoolExecutor(CHUNK_WINDOW, thread_name_prefix="rpdist-chunk")
        running: set = set()
        try:
            while todo or running:
                while todo and len(running) < CHUNK_WINDOW:
                    running.add(executor.submit(one, todo.popleft()))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            halt.set()
            executor.shutdown(wait=True, cancel_futures=True)

    def decide(self, rows: np.ndarray, on_unit: Callable | None = None, spent: dict | None = None) -> pa.Table:
        """Run the rounds of the inputs at positions ``rows`` until each decides or reaches max N;
        add their forward samples and rounds to ``spent``."""
        spent = {"forward_samples": 0, "rounds": []} if spent is None else spent
        job, cfg, sq = self.job, self.job.config, self.seq
        m, classes = len(rows), job.num_classes
        if sq.against_label:
            top = job.y[rows].astype(np.int64)
            selection = np.zeros((m, classes + 1), dtype=np.int64)
        else:
            selection = self._counts(rows, PhaseSpec(Phase.SELECTION, cfg.n0), on_unit, spent).sum(axis=1)
            top = selection[:, :classes].argmax(axis=1)
        radii = np.asarray(sq.radii, dtype=np.float64)
        counts = np.zeros((m, classes + 1), dtype=np.int64)
        used = np.zeros(m, dtype=np.int64)
        blocks = np.zeros(m, dtype=np.int64)
        state = np.zeros((m, len(radii)), dtype=np.int8)
        best_lower, best_upper = np.zeros(m), np.ones(m)
        stopped = selection[:, -1] > 0  # non-finite logits already: abstain without estimation
        state[stopped] = -1
        block, stages, looks = cfg.noise_block, len(self.looks), self.looks
        minimum = ROUND_MIN_BATCHES * job.plan.batch_size
        spent.setdefault("engine_rounds", 0)
        previous_block, first = 0, 0  # blocks drawn so far by every active input; its next look
        while first < len(looks):
            active = np.flatnonzero(~stopped)
            if not len(active):
                break
            # A round reaches at least look `first`, and further while it is too small to keep the replicas
            # busy; an input that stops at an earlier look of the round discards its later blocks (waste).
            last = first
            while last + 1 < len(looks) and len(active) * (looks[last] - previous_block * block) < minimum:
                last += 1
            stop_block = num_blocks(looks[last], block)
            started, before = time.perf_counter(), spent["forward_samples"]
            spec = PhaseSpec(Phase.ESTIMATION, sq.max_n, previous_block, stop_block)
            cumulative = np.cumsum(self._counts(rows[active], spec, on_unit, spent), axis=1)
            cumulative += counts[active][:, None, :]
            spent["engine_rounds"] += 1
            seconds, samples = time.perf_counter() - started, spent["forward_samples"] - before
            live = np.ones(len(active), dtype=bool)  # undecided so far in this round
            for index in range(first, last + 1):  # every look in order, as one round per look would
                look = looks[index]
                now = np.flatnonzero(live)
                if not len(now):
                    break
                ids, at = active[now], cumulative[now, num_blocks(look, block) - previous_block - 1]
                counts[ids], used[ids], blocks[ids] = at, look, num_blocks(look, block)
                k = at[np.arange(len(ids)), top[ids]]
                lower, upper = seq.bounds(k, look, cfg.alpha, sq.mode, stages)
                best_lower[ids] = np.maximum(best_lower[ids], lower)
                best_upper[ids] = np.minimum(best_upper[ids], upper)
                done = seq.update(state, ids, k, look, radii, cfg.sigma, cfg.alpha, sq.mode, stages,
                                  sq.radius_tolerance)
                bad = at[:, -1] > 0  # a non-finite sample: f is undefined near x, stop and abstain
                state[ids[bad]] = -1
                stopped[ids[done | bad]] = True
                live[now[done | bad]] = False
                record = {"look": look, "inputs": int(len(ids)), "stopped": int((done | bad).sum()),
                          "seconds": seconds if index == first else 0.0, "samples": samples if index == first else 0}
                spent["rounds"].append(record)  # one per look; an engine round's time and samples on its first
                self.rounds.append(record)
            previous_block, first = stop_block, last + 1
        return self._table(rows, top, selection, counts, used, blocks, state, stopped, best_lower, best_upper)

    def _table(self, rows, top, selection, counts, used, blocks, state, stopped, best_lower, best_upper) -> pa.Table:
        job, cfg, sq = self.job, self.job.config, self.seq
        m, classes = len(top), job.num_classes
        nonfinite = selection[:, -1] + counts[:, -1]
        bad = nonfinite > 0
        radius = np.where(bad, 0.0, seq.radius_of(best_lower, cfg.sigma))
        decision, decided = seq.summarize_decision(state, sq.radii, stopped)
        if sq.mode == seq.ADAPTIVE:  # the estimate is the certified radius itself
            decided = radius.copy()
            decision = np.where(~stopped, seq.UNDECIDED, np.where(radius > 0, seq.CERTIFIED, seq.NOT_CERTIFIED))
        radius = np.maximum(radius, np.where(bad, 0.0, decided))
        decision = np.where(bad, seq.NOT_CERTIFIED, decision)
        prediction = np.where(radius > 0, top, stats.ABSTAIN)
        labels = None if job.y is None else job.y[rows]
        names = {1: seq.CERTIFIED, -1: seq.NOT_CERTIFIED, 0: seq.UNDECIDED}
        per_radius = [[names[int(v)] for v in row] for row in state]

        def ints(v):
            return pa.array(np.asarray(v, dtype=np.int64), type=pa.int64())

        def floats(v):
            return pa.array(np.asarray(v, dtype=np.float64), type=pa.float64())

        def lists(c):
            flat = pa.array(np.ascontiguousarray(c[:, :classes], dtype=np.int64).ravel())
            return pa.FixedSizeListArray.from_arrays(flat, classes).cast(pa.list_(pa.int64()))

        columns = {
            "input_id": ints(job.input_ids[rows]),
            "label": pa.nulls(m, pa.int64()) if labels is None else ints(labels),
            "prediction": ints(prediction),
            "top_class": ints(top),
            "count_top": ints(counts[np.arange(m), top]),
            "counts": lists(counts),
            "selection_counts": lists(selection),
            "nonfinite": ints(nonfinite),
            "n": ints(np.full(m, sq.max_n)),
            "n0": ints(np.full(m, 0 if sq.against_label else cfg.n0)),
            "alpha": floats(np.full(m, cfg.alpha)),
            "sigma": floats(np.full(m, cfg.sigma)),
            "seed": ints(np.full(m, cfg.seed)),
            "pa_lower": floats(best_lower),
            "radius": floats(radius),
            "correct": (pa.nulls(m, pa.bool_()) if labels is None
                        else pa.array(prediction == labels, type=pa.bool_())),
            "mode": pa.array([sq.mode] * m, type=pa.string()),
            "against_label": pa.array(np.full(m, sq.against_label), type=pa.bool_()),
            "samples_used": ints(used),
            "stop_block": ints(blocks),
            "decision": pa.array(decision.tolist(), type=pa.string()),
            "target_radius": pa.array([list(sq.radii)] * m, type=pa.list_(pa.float64())),
            "decisions": pa.array(per_radius, type=pa.list_(pa.string())),
            "radius_decided": floats(np.where(bad, 0.0, decided)),
            "pa_upper": floats(best_upper),
        }
        schema = sequential_schema()
        return pa.table([columns[name] for name in schema.names], schema=schema)
