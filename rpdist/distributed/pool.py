"""Ray set-up and the pool of ``ModelReplica`` actors that hold one model each."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

from rpdist.errors import InputError, first_line
from rpdist.models.refs import ModelRef

INLINE_PIECE = 64 * 1024  # bytes per creation argument: under Ray's inline limit (max_direct_call_object_size)
CPU_BATCH = 4096
GPU_BATCH = 32768


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
        raise InputError(f"cannot reach the Ray cluster at {address}: {first_line(exc)}") from None


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
    lost = False  # True once a replica was dropped: the warm pool is then rebuilt on its next use

    def __init__(self, model_ref: ModelRef, workers: int | None = None, device: str | None = None):
        import ray

        from rpdist.distributed.replica import ModelReplica

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
        # Passed by value, in pieces: Ray sends an argument under 100 KiB inside the creation task, which
        # it keeps for the actor's restarts, but puts a larger one in the object store, where a restart may
        # not find it (ray-project/ray#53727, logged as an error for every replica). Ray also caps a task's
        # inline arguments in all (measured: 8.5 MB inline, 9 MB not), so a larger model still goes there.
        empty = replace(model_ref, payload=b"")
        pieces = [model_ref.payload[i:i + INLINE_PIECE] for i in range(0, len(model_ref.payload), INLINE_PIECE)]
        self.actors = [ModelReplica.options(**options).remote(empty, self.device, *pieces) for _ in range(workers)]

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

    def forget(self, actor) -> None:
        """Drop a replica that was lost (its node died, or it stopped answering) for good; a warm
        pool that lost one is rebuilt, for the cluster as it is then, on its next use."""
        import ray

        if actor in self.actors:
            self.actors.remove(actor)
            self.lost = True
        if self.owned:
            try:
                ray.kill(actor, no_restart=True)  # a restart pending somewhere would take a CPU later
            except Exception:
                pass

    def shutdown(self) -> None:
        """Kill the replicas this pool created; an attached pool leaves them to their creator."""
        import ray

        if self.owned:
            for actor in self.actors:
                ray.kill(actor)
        self.actors = []


def _autoscaling() -> bool:
    """A cluster started by the launcher may grow, so its current size is no limit."""
    return bool(os.environ.get("RPDIST_AUTOSCALING"))


class WarmPool:
    """The one pool kept warm between calls (attacks query the same model thousands of times).

    Only one is kept: its actors hold CPUs or GPUs that a second pool would wait for forever.
    """

    def __init__(self):
        self.key: tuple | None = None
        self.pool: ReplicaPool | None = None

    def get(self, model_ref: ModelRef, workers: int | None, device: str | None,
            shared: SharedPool | None = None) -> ReplicaPool:
        """The warm pool for this model, else a new one; inside a Ray task, ``shared`` (from the
        driver's ``pool.share()``) attaches to the driver's replicas instead of creating any."""
        if shared is not None:
            if shared.model_sha256 != model_ref.sha256:
                raise ValueError("the shared pool holds another model")
            if self.pool is not None and tuple(self.pool.actors) == shared.actors:
                return self.pool  # the driver itself, or a task's second call
        key = (model_ref.sha256, workers, device) if shared is None else ("shared", shared.actors)
        if key != self.key or (self.pool is not None and self.pool.lost):
            self.shutdown()
            self.pool = ReplicaPool(model_ref, workers, device) if shared is None else ReplicaPool.attach(shared)
            self.key = key
        return self.pool

    def shutdown(self) -> None:
        """End the warm pool's actors (those it owns) and forget it."""
        if self.pool is not None:
            self.pool.shutdown()
        self.key, self.pool = None, None


WARM = WarmPool()


def get_pool(model_ref: ModelRef, workers: int | None, device: str | None,
             shared: SharedPool | None = None) -> ReplicaPool:
    return WARM.get(model_ref, workers, device, shared)


def shutdown() -> None:
    """End the warm replicas, for a caller that is done with the model (tests, long scripts)."""
    WARM.shutdown()


def default_batch_size(device: str) -> int:
    return GPU_BATCH if device.startswith("cuda") else CPU_BATCH
