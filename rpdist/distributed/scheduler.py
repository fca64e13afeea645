"""Runs a plan's units on a replica pool and sums their counts chunk by chunk."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from rpdist.distributed.plan import Plan, Unit
from rpdist.distributed.pool import ReplicaPool
from rpdist.errors import InputError
from rpdist.smoothing.noise import num_blocks


class Scheduler:
    """Keeps every replica busy with at most two units in flight and owns the chunk buffers.

    The driver's memory is bounded by the chunks being worked on, not by the size of the job: a
    chunk's inputs are read and its count buffers allocated only when its first unit is sent, and
    both are released when its last unit returns.
    """

    def __init__(self, pool: ReplicaPool, X, input_ids: np.ndarray, plan: Plan, *, sigma: float, seed: int,
                 num_classes: int):
        self.pool, self.X, self.input_ids, self.plan = pool, X, input_ids, plan
        self.params = dict(sigma=sigma, seed=seed, block_size=plan.block_size, batch_size=plan.batch_size,
                           num_classes=num_classes)
        self.num_classes = num_classes
        self.totals: dict[int, dict[int, np.ndarray]] = {}  # chunk -> phase -> [inputs, blocks, classes]
        self.remaining: dict[int, int] = {}  # chunk -> units not yet returned
        self.inputs: dict[int, np.ndarray] = {}  # the rows of chunks in flight; X itself may live on disk
        self.load = {i: 0 for i in range(pool.workers)}
        # Ties go to a random replica: callers that each send a single unit (Ray tasks sharing one
        # pool) would otherwise all pick replica 0. Counts never depend on which replica computes a unit.
        offset = int(np.random.default_rng().integers(pool.workers))
        self.rank = {i: (i - offset) % pool.workers for i in self.load}

    def run(self, chunks: Iterable[int], on_unit: Callable[[Unit, int], None] | None = None
            ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Yield (chunk, {phase: counts [inputs, blocks, classes + 1]}) as each chunk's last unit returns;
        the last slot counts samples with non-finite logits."""
        import ray

        pending: dict = {}
        queue = self._units(chunks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * self.pool.workers:
                unit = next(queue, None)
                if unit is None:
                    exhausted = True
                    break
                worker = min(self.load, key=lambda i: (self.load[i], self.rank[i]))
                pending[self._send(unit, worker)] = (unit, worker)
                self.load[worker] += 1
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            unit, worker = pending.pop(done[0])
            self.load[worker] -= 1
            try:
                counts = _result(done[0])
            except InputError:
                _drain(pending)
                raise
            finished = self._receive(unit, counts)
            if on_unit is not None:
                on_unit(unit, self.plan.unit_samples_of(unit))
            if finished:
                yield unit.chunk, self.totals.pop(unit.chunk)

    def _send(self, unit: Unit, worker: int):
        first = self.plan.chunk_rows(unit.chunk)[0]
        x = self.inputs[unit.chunk][unit.row_start - first : unit.row_stop - first]
        params = dict(phase=unit.phase, n=unit.n, block_start=unit.block_start, block_stop=unit.block_stop,
                      **self.params)
        return self.pool.actors[worker].count.remote(x, self.input_ids[unit.row_start : unit.row_stop], params)

    def _receive(self, unit: Unit, counts: np.ndarray) -> bool:
        """Store a unit's counts; True when that completes its chunk."""
        first = unit.row_start - self.plan.chunk_rows(unit.chunk)[0]
        self.totals[unit.chunk][unit.phase][first : first + len(counts), unit.block_start : unit.block_stop] = counts
        self.remaining[unit.chunk] -= 1
        if self.remaining[unit.chunk]:
            return False
        del self.remaining[unit.chunk], self.inputs[unit.chunk]
        return True

    def _units(self, chunks: Iterable[int]) -> Iterator[Unit]:
        for chunk in chunks:
            start, stop = self.plan.chunk_rows(chunk)
            self.inputs[chunk] = np.ascontiguousarray(self.X[start:stop], dtype=np.float32)
            self.totals[chunk] = {
                spec.phase: np.zeros((stop - start, num_blocks(spec.n, self.plan.block_size), self.num_classes + 1),
                                     dtype=np.int64)  # + 1: the replicas' slot for non-finite logits
                for spec in self.plan.phases
            }
            units = self.plan.units(chunk)
            self.remaining[chunk] = len(units)
            yield from units


def _result(ref) -> np.ndarray:
    """A unit's counts; the user's model raising on a replica is re-raised here as its one-line
    :class:`~rpdist.errors.ModelError`, not as a Ray traceback (Ray does not retry it: the actor
    methods do not set ``retry_exceptions``)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, InputError):
            raise exc.cause from None
        raise


def _drain(pending) -> None:
    """Cancel the units still queued and collect every outstanding result, failed ones included, so
    that Ray has no unretrieved errors left to print when the user's model has already failed."""
    import ray

    for ref in pending:
        ray.cancel(ref)
    for ref in pending:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - cancelled, or the same model error again
            pass


def run_plan(pool: ReplicaPool, X, input_ids: np.ndarray, plan: Plan, *, sigma: float, seed: int, num_classes: int,
             chunks: Iterable[int], on_unit: Callable[[Unit, int], None] | None = None
             ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Run the units of ``chunks`` on ``pool``; see :meth:`Scheduler.run`."""
    scheduler = Scheduler(pool, X, input_ids, plan, sigma=sigma, seed=seed, num_classes=num_classes)
    return scheduler.run(chunks, on_unit)
