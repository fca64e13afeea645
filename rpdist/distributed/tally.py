"""Following Ray tasks' progress from the driver: a counter actor the tasks add to, and their results as they finish."""

from __future__ import annotations

from rpdist.reporting.progress import SampleProgress


class Tally:
    """A running count that Ray tasks add to while the driver reads it (run as a Ray actor with
    num_cpus=0, so it never waits for a CPU the replicas hold)."""

    def __init__(self):
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n

    def total(self) -> int:
        return self.count


def tally_flush(tally) -> None:
    """Wait until the tally has counted every ``add`` this caller sent: a Ray actor runs one caller's calls
    in order, so an empty add returning means the earlier ones have run (call it before a task returns)."""
    import ray

    ray.get(tally.add.remote(0))


def as_finished(starts: list, at_once: int, tally=None, meter: SampleProgress | None = None, poll: float = 1.0):
    """Yield ``(index, result)`` of each Ray task as it finishes, keeping at most ``at_once`` running; each of
    ``starts`` is a function that starts one task and returns its ref. ``meter`` follows the tally's count
    every ``poll`` seconds (capped at its total: a retried task counts its work twice); the final count is
    exact when each task calls :func:`tally_flush` before it returns."""
    import ray

    waiting, running = list(enumerate(starts)), {}
    while waiting or running:
        while waiting and len(running) < at_once:
            index, start = waiting.pop(0)
            running[start()] = index
        ready, _ = ray.wait(list(running), num_returns=1, timeout=None if meter is None else poll)
        if meter is not None:
            meter.advance(min(ray.get(tally.total.remote()), meter.total) - meter.done)
        for ref in ready:
            yield running.pop(ref), ray.get(ref)
