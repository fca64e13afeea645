"""Progress in samples, queries or epochs, with a rate readout: a bar on a terminal, plain lines in a log."""

from __future__ import annotations

import time

from rpdist.reporting.format import duration


class SampleProgress:
    """Progress in ``unit`` (samples, queries) with a rate readout; silent when disabled. On a terminal it is a
    rich bar; elsewhere (a log file, a batch job) a bar shows nothing until it stops, so it prints one plain
    line every ``log_every`` seconds and a last one when it closes."""

    def __init__(self, total: int, description: str, enabled: bool, unit: str = "samples",
                 console=None, log_every: float = 60.0):
        self.total = total
        self.description = description
        self.unit = unit
        self.done = 0
        self.started = time.perf_counter()
        self._progress = self._log = None
        if not enabled:
            return
        from rich.console import Console

        console = console or Console()
        if not console.is_terminal:
            self._log, self._log_every, self._logged_at = console, log_every, self.started
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        # The count keeps its room on an 80-column log: a long description wraps, then the bar shrinks.
        self._progress = Progress(
            TextColumn("{task.description}", table_column=Column(max_width=28)),
            BarColumn(bar_width=None, table_column=Column(ratio=1)),
            TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            transient=False,
            console=console,
        )
        self._task = self._progress.add_task(description, total=total, rate="")
        self._progress.start()

    def advance(self, samples: int) -> None:
        self.done += samples
        if self._progress is not None:
            self._progress.update(self._task, advance=samples, rate=self._rate_text())
        if self._log is not None and time.perf_counter() - self._logged_at >= self._log_every:
            self._logged_at = time.perf_counter()
            left = (self.total - self.done) / self.rate if self.rate > 0 else None
            self._print(f"({self.done * 100 // max(self.total, 1)}%), {self._rate_text()}, {duration(left)} left")

    def _print(self, tail: str) -> None:
        self._log.print(f"{self.description}: {self.done:,}/{self.total:,} {self.unit} {tail}",
                        markup=False, highlight=False, soft_wrap=True)

    def _rate_text(self) -> str:
        """Whole units a second, or two significant digits below ten (epochs take seconds each)."""
        rate = self.rate
        return f"{rate:,.0f}/s" if rate >= 10 else f"{rate:.2g}/s"

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.done / max(self.elapsed, 1e-9)

    def __enter__(self) -> SampleProgress:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._log is not None:
            self._print(f"in {duration(self.elapsed)}, {self._rate_text()}")
            self._log = None
