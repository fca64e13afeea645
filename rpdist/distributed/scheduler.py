"""Runs a plan's units on a replica pool and sums their counts chunk by chunk.

Losing replicas: a replica process that dies on a live node is restarted by Ray on that node, and
Ray retries its units there. A replica whose node dies cannot come back (its restart would wait
for a CPU elsewhere, possibly forever), so when a unit fails with a ``RayActorError`` the unit goes
back to the queue, the replica gets no more work, and a probe (``info()``) brings it back into
service if it answers. A replica that Ray reports dead, or whose node is dead, or that stays
unreachable for ``RESTART_GRACE`` seconds, is dropped from the pool and its units go to the
others. Counts are counter-based, so a unit rerun anywhere returns the same counts. Without the
head (its GCS) nothing can go on: after ``HEAD_GRACE`` seconds the run stops with
:class:`ClusterLostError`, as it does when no replica is left.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from rpdist.distributed.plan import Plan, Unit
from rpdist.distributed.pool import ReplicaPool
from rpdist.errors import ClusterLostError, InputError

POLL = 5.0  # seconds without any answer before the replicas' and the head's health is checked
RESTART_GRACE = 120.0  # seconds a replica may stay unreachable (restarting) before it is dropped
HEAD_GRACE = 15.0  # seconds the head may stay unreachable; Ray itself ends a driver after 60
RERUN = "finished chunks are saved; rerun the same command to resume"


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
        self.first_block = {spec.phase: spec.first_block for spec in plan.phases}  # counts start at this block
        self.totals: dict[int, dict[int, np.ndarray]] = {}  # chunk -> phase -> [inputs, blocks, classes]
        self.remaining: dict[int, int] = {}  # chunk -> units not yet returned
        self.inputs: dict[int, np.ndarray] = {}  # the rows of chunks in flight; X itself may live on disk
        self.actors = list(pool.actors)  # indices stay valid when the pool drops a lost replica
        self.load = {i: 0 for i in range(pool.workers)}
        self.healthy = set(self.load)  # replicas that get new units
        self.suspect: dict[int, dict] = {}  # worker -> {"since": monotonic time, "probe": info() ref or None}
        self.retry: deque[Unit] = deque()  # units whose replica failed, sent again before new ones
        self.head_down_since: float | None = None
        self.head_misses = 0  # consecutive unanswered questions to the head
        # Ties go to a random replica: callers that each send a single unit (Ray tasks sharing one
        # pool) would otherwise all pick replica 0. Counts never depend on which replica computes a unit.
        offset = int(np.random.default_rng().integers(pool.workers))
        self.rank = {i: (i - offset) % pool.workers for i in self.load}

    def run(self, chunks: Iterable[int], on_unit: Callable[[Unit, int], None] | None = None
            ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Yield (chunk, {phase: counts [inputs, blocks, classes + 1]}) as each chunk's last unit returns;
        the last slot counts samples with non-finite logits."""
        import ray

        pending: dict = {}  # ref -> (unit, worker)
        queue = self._units(chunks)
        exhausted = False
        while True:
            while True:
                free = [w for w in self.healthy if self.load[w] < 2]
                if not free:
                    break
                unit = self.retry.popleft() if self.retry else None if exhausted else next(queue, None)
                if unit is None:
                    exhausted = True
                    break
                worker = min(free, key=lambda i: (self.load[i], self.rank[i]))
                pending[self._send(unit, worker)] = (unit, worker)
                self.load[worker] += 1
            if not pending and not self.retry and exhausted:
                return
            if not self.healthy and not self.suspect:
                self._every_replica_lost()
            probes = {s["probe"]: w for w, s in self.suspect.items() if s["probe"] is not None}
            waiting = list(pending) + list(probes)
            if waiting:
                done, _ = ray.wait(waiting, num_returns=1, timeout=POLL)
            else:  # only suspects whose last probe failed: probe them again after a pause
                time.sleep(1)
                done = []
            if not done:
                self._check(pending)
                continue
            if done[0] in probes:
                self._probed(probes[done[0]], done[0], pending)
                continue
            unit, worker = pending.pop(done[0])
            self.load[worker] -= 1
            try:
                counts = _result(done[0])
            except InputError:
                _drain(pending)
                raise
            except ray.exceptions.RayActorError:
                self.retry.appendleft(unit)  # the actor's error, not the model's: any replica gives the same counts
                self._suspect(worker)
                self._check(pending)
                continue
            finished = self._receive(unit, counts)
            if on_unit is not None:
                on_unit(unit, self.plan.unit_samples_of(unit))
            if finished:
                yield unit.chunk, self.totals.pop(unit.chunk)

    def _suspect(self, worker: int) -> None:
        """Send ``worker`` no more units until a probe of it answers."""
        self.healthy.discard(worker)
        if worker not in self.suspect:
            self.suspect[worker] = {"since": time.monotonic(), "probe": None}
        if self.suspect[worker]["probe"] is None:
            self.suspect[worker]["probe"] = self.actors[worker].info.remote()

    def _probed(self, worker: int, probe, pending: dict) -> None:
        import ray

        try:
            ray.get(probe)
        except ray.exceptions.ActorDiedError:
            self._lose(worker, pending)
        except ray.exceptions.RayActorError:
            self.suspect[worker]["probe"] = None  # unreachable for now: probed again at the next check
        else:
            del self.suspect[worker]  # it answers (restarted on its node, say): back in service
            self.healthy.add(worker)

    def _check(self, pending: dict) -> None:
        """Drop replicas that are dead, on a dead node, or unreachable for too long; stop without the head."""
        nodes = self._alive_nodes()
        if nodes is None:
            return
        now = time.monotonic()
        busy = {worker for _, worker in pending.values()}
        for worker in sorted(busy | set(self.suspect)):
            state, node = _actor_state(self.actors[worker])
            if state == "DEAD" or (node is not None and node not in nodes):
                self._lose(worker, pending)
            elif state == "RESTARTING":  # its units wait for it; new ones go elsewhere
                self._suspect(worker)
            if worker in self.suspect:
                if now - self.suspect[worker]["since"] > RESTART_GRACE:
                    self._lose(worker, pending)
                elif self.suspect[worker]["probe"] is None:
                    self._suspect(worker)  # probe again

    def _lose(self, worker: int, pending: dict) -> None:
        """Give ``worker``'s units to the other replicas and drop it from the pool for good."""
        self.healthy.discard(worker)
        self.suspect.pop(worker, None)
        for ref, (unit, owner) in list(pending.items()):
            if owner == worker:
                del pending[ref]
                self.load[worker] -= 1
                self.retry.appendleft(unit)
        self.pool.forget(self.actors[worker])

    def _every_replica_lost(self) -> None:
        """Stop the run, naming the head when it is the one that went: a replica on the head's node
        dies with it, often before a health check notices the head is gone."""
        while self._alive_nodes() is None:  # raises once the head has been silent for HEAD_GRACE
            time.sleep(1)
        raise ClusterLostError(f"every model replica was lost (their nodes died or they kept failing); {RERUN}")

    def _alive_nodes(self) -> set[str] | None:
        """Hex ids of the alive nodes; None while the head does not answer, an error once it has
        not answered for HEAD_GRACE seconds."""
        import ray

        asked = time.monotonic()
        try:
            info = ray._private.worker.global_worker.gcs_client.get_all_node_info(timeout=5)
        except Exception:  # a busy head may miss one: lost is three misses over HEAD_GRACE seconds
            if self.head_down_since is None:
                self.head_down_since = asked
            self.head_misses += 1
            if self.head_misses >= 3 and time.monotonic() - self.head_down_since > HEAD_GRACE:
                raise ClusterLostError(f"lost the Ray cluster's head (no answer for {HEAD_GRACE:g} s); {RERUN}") from None
            return None
        self.head_down_since, self.head_misses = None, 0
        return {node_id.hex() for node_id, node in info.items() if node.state == 0}  # 0: ALIVE

    def _send(self, unit: Unit, worker: int):
        first = self.plan.chunk_rows(unit.chunk)[0]
        x = self.inputs[unit.chunk][unit.row_start - first : unit.row_stop - first]
        params = dict(phase=unit.phase, n=unit.n, block_start=unit.block_start, block_stop=unit.block_stop,
                      **self.params)
        return self.actors[worker].count.remote(x, self.input_ids[unit.row_start : unit.row_stop], params)

    def _receive(self, unit: Unit, counts: np.ndarray) -> bool:
        """Store a unit's counts; True when that completes its chunk."""
        first = unit.row_start - self.plan.chunk_rows(unit.chunk)[0]
        offset = self.first_block[unit.phase]
        self.totals[unit.chunk][unit.phase][first : first + len(counts),
                                            unit.block_start - offset : unit.block_stop - offset] = counts
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
                spec.phase: np.zeros((stop - start, _width(spec, self.plan.block_size), self.num_classes + 1),
                                     dtype=np.int64)  # + 1: the replicas' slot for non-finite logits
                for spec in self.plan.phases
            }
            units = self.plan.units(chunk)
            self.remaining[chunk] = len(units)
            yield from units


def _width(spec, block_size: int) -> int:
    first, stop = spec.block_range(block_size)
    return stop - first


def _actor_state(actor) -> tuple[str | None, str | None]:
    """(state, hex node id) of an actor from the head's actor table, (None, None) when unknown."""
    from ray._private.state import state

    try:
        info = state.actor_table(actor._actor_id.hex())
    except Exception:
        return None, None
    node = info.get("Address", {}).get("NodeID")
    return info.get("State"), (node if node and node.strip("0f") else None)


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
