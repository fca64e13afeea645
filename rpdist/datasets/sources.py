"""Inputs read from a Parquet file chunk by chunk, so that a batch audit never holds the whole file.

The engine asks for the rows of one chunk at a time, in increasing order; a forward-only reader
over the file's record batches serves that with memory bounded by a chunk plus one batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rpdist.errors import InputError, whole_message

READ_BATCH = 16_384  # rows decoded at a time


class ParquetRows:
    """The feature columns of selected rows (sorted source row numbers) of a Parquet file.

    Indexing with a slice of positions returns a float32 array; positions must be read in
    increasing order for the reader to stream (going back restarts it, which is correct but slow).
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, path: str | Path, columns: tuple[str, ...], rows: np.ndarray):
        self.path = str(path)
        self.columns = list(columns)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._restart()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), len(self.columns))

    def _restart(self) -> None:
        self._batches = pq.ParquetFile(self.path).iter_batches(batch_size=READ_BATCH, columns=self.columns)
        self._buffer = np.empty((0, len(self.columns)), dtype=np.float32)
        self._buffer_start = 0  # source row number of the buffer's first row

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ParquetRows supports contiguous slices only")
        wanted = self.rows[key]
        if len(wanted) == 0:
            return np.empty((0, len(self.columns)), dtype=np.float32)
        first, last = int(wanted[0]), int(wanted[-1])
        if first < self._buffer_start:
            self._restart()
        self._trim(first)
        while self._buffer_start + len(self._buffer) <= last:
            batch = next(self._batches, None)
            if batch is None:
                raise InputError(f"{self.path} changed while being read: row {last} is missing")
            self._buffer = np.concatenate([self._buffer, _to_float32(batch)])
            self._trim(first)
        return np.ascontiguousarray(self._buffer[wanted - self._buffer_start])

    def _trim(self, first: int) -> None:
        """Forget buffered rows before source row ``first``: they will not be asked for again."""
        cut = min(first - self._buffer_start, len(self._buffer))
        self._buffer, self._buffer_start = self._buffer[cut:], self._buffer_start + cut


def _to_float32(batch: pa.RecordBatch) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.column_stack([np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
                                for col in batch.columns]).astype(np.float32)


def scan_parquet(path: str | Path, label_column: str) -> tuple[tuple[str, ...], np.ndarray | None, int]:
    """One streaming pass: feature names, labels and the row count, refusing non-finite features.

    Nothing but the labels is kept, so validation costs one batch of memory, not the file.
    """
    try:
        reader = pq.ParquetFile(str(path))
    except Exception as exc:
        raise InputError(f"cannot read {path}: {whole_message(exc)}") from None
    schema = reader.schema_arrow
    names = [n for n in schema.names if n != label_column]
    if not names:
        raise InputError(f"{path}: no feature columns besides the label column {label_column!r}")
    non_numeric = [n for n in names if not (pa.types.is_integer(schema.field(n).type)
                                            or pa.types.is_floating(schema.field(n).type)
                                            or pa.types.is_boolean(schema.field(n).type))]
    if non_numeric:
        raise InputError(f"{path}: feature columns must be numeric; not numeric: {', '.join(map(repr, non_numeric))}")
    labels = [] if label_column in schema.names else None
    row = 0
    columns = names + ([label_column] if labels is not None else [])
    for batch in reader.iter_batches(batch_size=READ_BATCH, columns=columns):
        features = _to_float32(batch.select(names))
        bad = ~np.isfinite(features)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise InputError(f"{path}: {int(bad.sum())}+ feature values are NaN, infinite or beyond float32 range; "
                             f"first in row {row + int(r)} (column {names[int(c)]!r})")
        if labels is not None:
            labels.append(batch.column(label_column).to_numpy(zero_copy_only=False))
        row += batch.num_rows
    y = None if labels is None else (np.concatenate(labels) if labels else np.empty(0))
    return tuple(names), y, row
