"""Atomic writes to a results root, local or remote: rpdist's one writer.

Every file appears whole or not at all (write to a temporary name, then rename), so a run killed
at any moment leaves either finished chunk files or nothing, and a rerun skips what exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rpdist.errors import InputError, whole_message


def atomic_write(path: Path, write, mode: int = 0o644) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place with ``mode`` (the
    temporary file is 0600 until then, so a secret written with mode 0o600 is never readable by others)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # by default 0644: mkstemp's 0600 would hide results from other users of a shared disk
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r} must be letters, digits, '.', '_', '=' or '-' (at most 128)")
    return run_id


class Store:
    """A results root: a local directory or any filesystem URI pyarrow knows (s3://, gs://, hdfs://).

    Local files are written to a temporary name and renamed; object stores publish an object only
    when its upload completes, so a reader sees every file whole or not at all either way.
    """

    def __init__(self, root: str | Path, filesystem: pafs.FileSystem | None = None):
        if filesystem is not None:
            self.fs, self.root = filesystem, str(root).rstrip("/")
        elif "://" in str(root):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(str(root))
            except (pa.ArrowException, ValueError, OSError) as exc:
                raise InputError(f"cannot use results location {root}: {whole_message(exc)}") from None
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.display = str(root).rstrip("/") if "://" in str(root) else str(root)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def show(self, *parts: str) -> str:
        """How a user should see this location: as given, with the relative parts appended."""
        return "/".join([self.display, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def files(self, *parts: str, recursive: bool = False) -> list[str]:
        """Paths of the visible files below a directory (names starting with '.' are temporaries)."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True, recursive=recursive)
        return sorted(info.path for info in self.fs.get_file_info(selector)
                      if info.type == pafs.FileType.File and not info.base_name.startswith("."))

    def publish(self, rel: tuple[str, ...], write) -> None:
        """Make ``rel`` appear whole: ``write(target)`` writes it; local targets are renamed into place."""
        if self.local:
            atomic_write(Path(self.path(*rel)), write)
            return
        target = self.path(*rel)
        try:
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            write(target)
        except OSError as exc:
            raise InputError(f"cannot write {self.show(*rel)}: {exc}") from None

    def write_parquet(self, table: pa.Table, *rel: str) -> None:
        self.publish(rel, lambda target: pq.write_table(table, target, filesystem=None if self.local else self.fs))

    def write_json(self, data: dict, *rel: str) -> None:
        self.write_bytes((json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode(), *rel)

    def write_bytes(self, body: bytes, *rel: str) -> None:
        if self.local:
            self.publish(rel, lambda target: Path(target).write_bytes(body))
        else:
            self.publish(rel, lambda target: self._upload(target, body))

    def _upload(self, target: str, body: bytes) -> None:
        with self.fs.open_output_stream(target) as stream:
            stream.write(body)

    def read_json(self, *rel: str) -> dict | None:
        if not self.exists(*rel):
            return None
        try:
            with self.fs.open_input_stream(self.path(*rel)) as stream:
                return json.loads(stream.read())
        except (OSError, ValueError):
            raise InputError(f"{self.show(*rel)} is unreadable; choose another run id") from None

    def read_table(self, path: str, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(path, schema=schema, columns=columns, filesystem=self.fs)

    def delete_dir(self, *rel: str) -> None:
        if self.exists(*rel):
            self.fs.delete_dir(self.path(*rel))

    def check_writable(self) -> None:
        """Fail before any work if the root cannot be written: try it, leaving nothing behind."""
        if self.local:
            check_writable(Path(self.root))
            return
        probe = f".rpdist-probe-{os.getpid()}"
        try:
            self.fs.create_dir(self.root, recursive=True)
            self._upload(self.path(probe), b"")
            self.fs.delete_file(self.path(probe))
        except OSError as exc:
            raise InputError(f"cannot write results under {self.display}: {whole_message(exc)}") from None

    def claim(self, run_id: str, config: dict, id_flag: str = "run id",
              compare: Callable[[dict], dict] | None = None) -> dict | None:
        """A run directory may be resumed only by the configuration that started it; a refusal names
        the first setting that changed (model, dataset, batch size, device type, noise generator...).
        ``compare`` maps both configurations to what must match (default: all of them)."""
        existing = self.read_json(run_id, "manifest.json")
        compare = compare or (lambda c: c)
        if existing is not None and compare(existing.get("config") or {}) != compare(config):
            raise InputError(f"{self.show(run_id)} holds a run with a different configuration: it was "
                             f"{describe_change(compare(existing.get('config') or {}), compare(config), id_flag)}")
        if existing is None and self.files(run_id, recursive=True):
            raise InputError(f"{self.show(run_id)} exists and is not an rpdist run; choose another run id")
        return existing


_MISSING = object()


def first_change(old, new, path: tuple = ()) -> tuple[tuple, object, object] | None:
    """The first leaf ``(path, old value, new value)`` where two nested configurations differ; an
    absent key reads as ``_MISSING``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*new, *(k for k in old if k not in new)]:
            found = first_change(old.get(key, _MISSING), new.get(key, _MISSING), (*path, key))
            if found is not None:
                return found
        return None
    return None if old == new else (path, old, new)


def _show_value(value) -> str:
    if value is _MISSING:
        return "nothing recorded"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a sha256
    return repr(value) if isinstance(value, str) else str(value)


_LABELS = {"sha256": "sha256", "batch_size": "batch size", "device": "device type", "noise": "noise generator",
           "noise_block": "noise block"}
_REMEDY = {"sha256": "restore the {what}", "batch_size": "set the batch size back to {old}",
           "device": "resume on a {old} device", "noise": "rerun with the rpdist version that started it"}


def describe_change(old, new, id_flag: str = "run id", where: str = "") -> str:
    """One line: what changed between the configuration a run was started with and this one."""
    found = first_change(old, new)
    if found is None:
        return f"no change; choose another {id_flag}"
    path, before, after = found
    key = path[-1] if path else "configuration"
    owner = next((p for p in reversed(path[:-1]) if p in ("model", "dataset")), None)
    what = f"{owner} sha256" if key == "sha256" and owner else _LABELS.get(key, ".".join(map(str, path)))
    remedy = _REMEDY.get(key, "").format(what=owner or "input", old=_show_value(before))
    return (f"started with {what} {_show_value(before)}{where}, now {_show_value(after)}; "
            f"choose another {id_flag}" + (f" or {remedy}" if remedy else ""))


def check_writable(out: Path) -> None:
    """Fail before any work if ``out`` cannot be created or written: try it, leaving nothing behind."""
    probe = Path(out)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".rpdist-probe-", dir=probe))
    except OSError:
        raise InputError(f"cannot write results under {out}: {probe} is not a writable directory") from None


def open_run(out: str | Path | Store, run_id: str) -> Store:
    """The store for ``OUT/RUN_ID``, checked to be writable before any work starts."""
    check_run_id(run_id)
    store = out if isinstance(out, Store) else Store(out)
    store.check_writable()
    return store
