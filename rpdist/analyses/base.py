"""What every analysis provides, and the one outcome type every run returns.

An analysis (certify, predict, rap, attack, …) is a small object: its final file, how to run it
from a validated spec, its one ``summarize``, how to print a summary row, its report section and
how a sweep runs one grid point. The CLI, ``sweep``, ``report`` and ``submit`` look analyses up
in :mod:`rpdist.analyses` and never test for a kind by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable

import pandas as pd


@dataclass(frozen=True)
class Column:
    """One column of a printed summary: its header and how to format a summary row's cell."""

    header: str
    cell: Callable[[dict], str]
    key: bool = False  # identifies the row (σ, N, release, …) rather than measuring it


@dataclass
class Outcome:
    """What a run or a sweep of any analysis returns.

    ``summary`` holds the rows of the analysis' :meth:`Analysis.summarize`, the same numbers the CLI
    prints and the report shows. ``table()`` reads the results on demand, so a large audit's rows
    need not fit in memory.
    """

    analysis: str
    path: str
    manifest: dict
    summary: list[dict] = field(default_factory=list)
    resumed_chunks: int = 0
    reader: Callable[[list[str] | None], pd.DataFrame] | None = field(default=None, repr=False)

    def table(self, columns: list[str] | None = None) -> pd.DataFrame:
        if self.reader is None:
            raise ValueError(f"{self.path} has no result table")
        return self.reader(columns)


class Analysis:
    """The interface of one analysis kind; subclasses fill in the class attributes and methods."""

    name: str  # the CLI command and the sweep file's ``analysis`` value
    final_file: str  # written last: its presence (with a complete manifest) marks a finished run
    title: str  # heading of its report section
    required_columns: tuple[str, ...]  # what a table must hold to be read as this analysis' result
    optional_columns: tuple[str, ...] = ()  # read for the summary when a table has them (newer columns)
    summary_columns: tuple[Column, ...] = ()  # how the CLI and sweeps print a summary row
    per_point: bool = True  # sweeps run it once per grid point (False: sweeps share counts across N and α)

    def summarize(self, table: pd.DataFrame) -> list[dict]:
        """The analysis' summary rows: the one definition the CLI, sweeps and the report use."""
        raise NotImplementedError

    def summary_table(self, summary: list[dict]) -> list[str]:
        """The summary rows as a markdown table with the CLI's columns, for a report section."""
        from rpdist.reporting.format import md_table

        return md_table([c.header for c in self.summary_columns],
                        [[c.cell(r) for c in self.summary_columns] for r in summary])

    def report(self, writer, source, slug: str) -> None:
        """Write this analysis' section (tables and plots) of an ``rpdist report``."""
        raise NotImplementedError

    def overview(self, writer, sources: list) -> None:
        """An optional report section across several runs of this analysis (before their own sections)."""

    def smoothing_grid(self, options: dict) -> bool:
        """Whether a sweep of this analysis with these (already validated) options has a (σ, N) grid."""
        return True

    def grid_decides(self, options: dict) -> bool:
        """Whether the grid's (N, α) points make PREDICT/CERTIFY decisions, so that an (N, α) that can never
        certify is refused; a baseline without a test (one noisy pass, N = 1) has none to refuse."""
        return True

    def sweep_spec_model(self):
        """The spec class that checks this analysis' own keys in a sweep file (every key but the grid and
        ``dataset``), or None where its keys are fields of the sweep file itself (certify, predict, rap, attack)."""
        return None

    def point_spec(self, sweep, point: dict, **fixed):
        """The validated spec of one sweep grid point (per-point analyses only); ``fixed`` holds ``out``,
        ``run_id`` and the engine options of ``rpdist sweep``."""
        raise NotImplementedError(f"{self.name} has no per-point sweep")

    def point_models(self, sweep, point: dict) -> dict[str, str] | None:
        """The sha256 of each model the grid point runs on, by the name its manifest's ``models`` records it
        under, where this machine decides them (models trained on demand and cached); a sweep refuses to add
        points when a finished point's differ. None where the analysis trains no models of its own."""
        return None

    def run_point(self, sweep, point: dict, out, run_id: str, options: dict, progress: bool) -> None:
        """Run one sweep grid point into ``out/run_id``: the point's spec, run like a single run."""
        self.run(self.point_spec(sweep, point, out=out, run_id=run_id, **options), progress=progress)
