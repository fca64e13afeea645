"""``OUT/RUN_ID/``: a resumable run directory of chunk files, one final Parquet file and a manifest."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from rpdist.io.store import open_run

PARTS = "parts"  # the run directory's folder of chunk files, there only while the run is unfinished
CHUNK_GLOB = "chunk-*.parquet"


def chunk_name(chunk: int) -> str:
    """A chunk's file name, zero-padded so that names sort in chunk order."""
    return f"chunk-{chunk:06d}.parquet"


class RunDir:
    """``OUT/RUN_ID/``: chunk files while running, one final Parquet file and a manifest when done."""

    def __init__(self, out: str | Path, run_id: str, final_name: str):
        self.store = open_run(out, run_id)
        self.run_id = run_id
        self.final_name = final_name
        self.path = self.store.show(run_id)

    def manifest(self) -> dict | None:
        return self.store.read_json(self.run_id, "manifest.json")

    def claim(self, config: dict, id_flag: str = "run id", compare: Callable[[dict], dict] | None = None) -> dict | None:
        """Start or resume: returns the existing manifest, refusing a different configuration (as
        ``compare`` sees it; default all of it)."""
        return self.store.claim(self.run_id, config, id_flag, compare)

    @property
    def complete(self) -> bool:
        return self.store.exists(self.run_id, self.final_name) and (self.manifest() or {}).get("status") == "complete"

    def write_manifest(self, manifest: dict) -> None:
        self.store.write_json(manifest, self.run_id, "manifest.json")

    def write_table(self, table: pa.Table, name: str) -> None:
        self.store.write_parquet(table, self.run_id, name)

    def read_final(self, columns: list[str] | None = None) -> pa.Table:
        return self.store.read_table(self.store.path(self.run_id, self.final_name), columns=columns)

    def final_columns(self) -> list[str]:
        """The final file's column names, read from its footer only."""
        return pq.read_schema(self.store.path(self.run_id, self.final_name), filesystem=self.store.fs).names

    def finished_chunks(self) -> set[int]:
        return {int(path.rsplit("/", 1)[1].split("-")[1].split(".")[0])
                for path in self.store.files(self.run_id, PARTS) if path.endswith(".parquet")}

    def chunk_path(self, chunk: int) -> str:
        return self.store.path(self.run_id, PARTS, chunk_name(chunk))

    def chunk_paths(self) -> list[str]:
        """The finished chunk files, in chunk order."""
        return [self.chunk_path(c) for c in sorted(self.finished_chunks())]

    def write_chunk(self, chunk: int, table: pa.Table) -> None:
        self.store.write_parquet(table, self.run_id, PARTS, chunk_name(chunk))

    def drop_chunks(self) -> None:
        """Delete the chunk files once the final table holds their rows."""
        self.store.delete_dir(self.run_id, PARTS)

    def finish(self, schema: pa.Schema, manifest: dict) -> None:
        """Stream the chunk files, in order, into the final file; then drop them.

        One chunk is in memory at a time, so finishing a large audit costs no more than running it.
        """
        paths = self.chunk_paths()

        def merge(target: str) -> None:
            with pq.ParquetWriter(target, schema, filesystem=None if self.store.local else self.store.fs) as writer:
                for path in paths:
                    writer.write_table(self.store.read_table(path, schema=schema))

        self.store.publish((self.run_id, self.final_name), merge)
        self.write_manifest(manifest)
        self.drop_chunks()
