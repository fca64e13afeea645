"""Parquet schemas, atomic writes, manifests and resumable run directories: rpdist's one writer.

Every file appears whole or not at all (write to a temporary name, then rename), so a run killed
at any moment leaves either finished chunk files or nothing, and a rerun skips what exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rpdist.errors import InputError

_COMMON = [
    ("input_id", pa.int64()),
    ("label", pa.int64()),
    ("prediction", pa.int64()),
    ("top_class", pa.int64()),
    ("count_top", pa.int64()),
]


def certificate_schema() -> pa.Schema:
    return pa.schema(_COMMON + [
        ("counts", pa.list_(pa.int64())),
        ("selection_counts", pa.list_(pa.int64())),
        ("n", pa.int64()),
        ("n0", pa.int64()),
        ("alpha", pa.float64()),
        ("sigma", pa.float64()),
        ("seed", pa.int64()),
        ("pa_lower", pa.float64()),
        ("radius", pa.float64()),
        ("correct", pa.bool_()),
    ])


def prediction_schema() -> pa.Schema:
    return pa.schema(_COMMON + [
        ("count_second", pa.int64()),
        ("counts", pa.list_(pa.int64())),
        ("n", pa.int64()),
        ("alpha", pa.float64()),
        ("sigma", pa.float64()),
        ("seed", pa.int64()),
        ("p_value", pa.float64()),
        ("correct", pa.bool_()),
    ])


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users of a shared disk
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(table: pa.Table, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_json(data: dict, path: Path) -> None:
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")

    atomic_write(Path(path), write)


def read_manifest(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{path} is unreadable; choose another run id") from None


def claim(directory: Path, existing: dict | None, config: dict) -> dict | None:
    """A run directory may be resumed only by the configuration that started it."""
    if existing is not None and existing.get("config") != config:
        raise InputError(f"{directory} holds a run with a different configuration; choose another run id")
    if existing is None and directory.exists() and any(directory.iterdir()):
        raise InputError(f"{directory} exists and is not an rpdist run; choose another run id")
    return existing


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r} must be letters, digits, '.', '_', '=' or '-' (at most 128)")
    return run_id


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


def check_writable(out: Path) -> None:
    """Fail before any work if ``out`` cannot be created or written: try it, leaving nothing behind."""
    probe = Path(out)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".rpdist-probe-", dir=probe))
    except OSError:
        raise InputError(f"cannot write results under {out}: {probe} is not a writable directory") from None


class RunDir:
    """``OUT/RUN_ID/``: chunk files while running, one final Parquet file and a manifest when done."""

    def __init__(self, out: str | Path, run_id: str, final_name: str):
        check_run_id(run_id)
        check_writable(Path(out))
        self.path = Path(out) / run_id
        self.final = self.path / final_name
        self.parts = self.path / "parts"
        self.manifest_path = self.path / "manifest.json"

    def manifest(self) -> dict | None:
        return read_manifest(self.manifest_path)

    def claim(self, config: dict) -> dict | None:
        """Start or resume: returns the existing manifest, refusing a different configuration."""
        return claim(self.path, self.manifest(), config)

    @property
    def complete(self) -> bool:
        return self.final.exists() and (self.manifest() or {}).get("status") == "complete"

    def chunk_path(self, chunk: int) -> Path:
        return self.parts / f"chunk-{chunk:06d}.parquet"

    def finished_chunks(self) -> set[int]:
        if not self.parts.is_dir():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.parts.glob("chunk-*.parquet")}

    def write_chunk(self, chunk: int, table: pa.Table) -> None:
        write_parquet(table, self.chunk_path(chunk))

    def finish(self, schema: pa.Schema, manifest: dict) -> pa.Table:
        """Merge chunk files in order into the final file, then drop them."""
        chunks = sorted(self.finished_chunks())
        tables = [pq.read_table(self.chunk_path(c), schema=schema) for c in chunks]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        write_parquet(table, self.final)
        write_json(manifest, self.manifest_path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return table
