"""Progress in samples, with a samples/s readout, for every engine job."""

from __future__ import annotations

import time


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
