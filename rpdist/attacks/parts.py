"""An attack run's finished work, saved as it finishes, so an interrupted run resumes where it stopped.

The unit is one (defense config, target class): that class's restarts walk in lockstep in one Ray task.
Each finished unit is ``parts/chunk-NNNNNN.parquet`` in the run directory, its rows with their
reconstructions, chunk ``config × classes + class``. Every attack draws from streams of its own (the
walk's from (seed, target, restart), the release's noise from its query ids or keyed cells), so a unit
computed in a later session is the one an uninterrupted run computes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from rpdist.io.rundir import RunDir

IMAGE = "reconstruction"  # a chunk's column of flattened reconstructions, not part of attack.parquet


class AttackParts:
    """The saved units of a run over ``targets`` (class numbers, in the run's order)."""

    def __init__(self, run_dir: RunDir, targets: list[int]):
        self.run_dir, self.targets = run_dir, list(targets)
        self.done = run_dir.finished_chunks()

    def chunk(self, config: int, target: int) -> int:
        return config * len(self.targets) + self.targets.index(target)

    def left(self, config: int) -> list[int]:
        """The config's classes not saved yet, in the run's order."""
        return [t for t in self.targets if self.chunk(config, t) not in self.done]

    def save(self, config: int, target: int, rows: list[dict], images: np.ndarray) -> None:
        """One unit's rows and their reconstructions ([rows, side, side]), written atomically."""
        table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
        flat = [np.asarray(image, dtype=np.float32).ravel() for image in images]
        table = table.append_column(IMAGE, pa.array(flat, type=pa.list_(pa.float32())))
        chunk = self.chunk(config, target)
        self.run_dir.write_chunk(chunk, table)
        self.done.add(chunk)

    def rows(self, config: int) -> pd.DataFrame | None:
        """The config's saved rows (without reconstructions), in class order; None before any is saved."""
        chunks = [self.chunk(config, t) for t in self.targets if self.chunk(config, t) in self.done]
        return self._read(chunks)[0] if chunks else None

    def collect(self, configs: int) -> tuple[pd.DataFrame, np.ndarray]:
        """Every config's rows in (config, class, restart) order, a ``config`` column numbering them, and the
        reconstructions [rows, side × side]."""
        missing = sorted(set(range(configs * len(self.targets))) - self.done)
        if missing:
            raise RuntimeError(f"{self.run_dir.path}: chunks {missing[:5]} are not saved yet")
        return self._read(range(configs * len(self.targets)))

    def _read(self, chunks) -> tuple[pd.DataFrame, np.ndarray]:
        frames, images = [], []
        for chunk in chunks:
            table = self.run_dir.store.read_table(self.run_dir.chunk_path(chunk))
            images += [np.asarray(image, dtype=np.float32) for image in table.column(IMAGE).to_pylist()]
            frames.append(table.drop_columns([IMAGE]).to_pandas().assign(config=chunk // len(self.targets)))
        return pd.concat(frames, ignore_index=True), np.stack(images)
