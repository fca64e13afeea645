"""``rpdist report``: a markdown summary with PNG plots of a run, a sweep, or a folder of runs.

What is read is detected by file name in DIR (or, when DIR holds none, in each of its
sub-folders): each analysis of :mod:`rpdist.analyses` names its final file (``certificates.parquet``,
``predictions.parquet``, ``rap.parquet``, ``attack.parquet``), and a sweep is recognised by its
``sigma=S/n=N/alpha=A/seed=K/`` partitions (chunk files, or a RAP or attack run in each). Each analysis writes its own section
from its one ``summarize``, so the report agrees with what the commands print. Plots are drawn on
matplotlib's Agg canvas directly (no pyplot, so a caller's backend is left alone). Every file is
written to a temporary name and renamed; the markdown is written last, so it never links a PNG
that is not there.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from rpdist import analyses
from rpdist.errors import InputError, first_line
from rpdist.io.rundir import CHUNK_GLOB, PARTS
from rpdist.io.store import atomic_write
from rpdist.reporting.format import duration, flatten, fmt, md_table
from rpdist.reporting.plots import DPI

POINT_GLOB = "sigma=*/n=*/alpha=*/seed=*"
SWEEP_GLOB = f"{POINT_GLOB}/{CHUNK_GLOB}"


@dataclass
class Source:
    """One result set found under the report's directory."""

    analysis: analyses.Analysis
    path: Path  # the run or sweep directory
    table: pd.DataFrame
    manifest: dict | None
    sweep: bool = False  # a (σ, N, α, seed) sweep with shared counts, rather than a single run

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        return self.analysis.name

    @cached_property
    def point_manifests(self) -> list[dict]:
        """A sweep's per-point manifests (attack and RAP sweeps write one per point), read once; none for a run."""
        if not self.sweep:
            return []
        return [_manifest(p.parent) or {} for p in sorted(self.path.glob(f"{POINT_GLOB}/manifest.json"))]


# ---------------------------------------------------------------------------------------------
# Finding and reading results


def _found_in(directory: Path) -> list[tuple[analyses.Analysis, bool]]:
    """(analysis, is a sweep) for each result set directly in ``directory``."""
    found = [(analysis, False) for analysis in analyses.all_analyses()
             if (directory / analysis.final_file).is_file()]
    # A sweep holds chunk files in its partition directories, or a per-point analysis' result file in each.
    results = [SWEEP_GLOB] + [f"{POINT_GLOB}/{a.final_file}" for a in analyses.all_analyses() if a.per_point]
    if any(next(directory.glob(pattern), None) is not None for pattern in results):
        found.append((None, True))
    return found


def _unfinished(directory: Path) -> str | None:
    """A note for a run directory that has a manifest but no final results yet, with the chunks it saved."""
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return None
    status = (_manifest(directory) or {}).get("status", "unknown")
    chunks = sum(1 for _ in directory.glob(f"**/{PARTS}/{CHUNK_GLOB}"))  # a run's or a sweep's points' saved work
    saved = f"{chunks} chunk{'s' * (chunks != 1)} saved, no final table yet" if chunks else "no results yet"
    return f"{directory} holds an unfinished run (status {status}, {saved}); rerun its command to finish it"


def _point_notes(sources: list[Source]) -> list[str]:
    """Notes for the grid points of per-point sweeps that hold a manifest but no result yet: their tables lack them."""
    return [note for s in sources if s.sweep and s.analysis.per_point
            for manifest in sorted(s.path.glob(f"{POINT_GLOB}/manifest.json"))
            if not (manifest.parent / s.analysis.final_file).is_file() and (note := _unfinished(manifest.parent))]


def _read_table(path: Path, analysis: analyses.Analysis) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 — any unreadable file is the user's input
        raise InputError(f"cannot read {path}: {first_line(exc)}") from None
    missing = [c for c in analysis.required_columns if c not in df.columns]
    if missing:
        raise InputError(f"{path} is not an rpdist {analysis.name} table: column {missing[0]!r} is missing")
    if df.empty:
        raise InputError(f"{path} has no rows")
    return df


def _manifest(directory: Path) -> dict | None:
    path = directory / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"cannot read {path}: it is unreadable or not valid JSON") from None
    if not isinstance(data, dict):
        raise InputError(f"cannot read {path}: expected a JSON object")
    return data


def _load(directory: Path, analysis: analyses.Analysis | None, sweep: bool) -> Source:
    manifest = _manifest(directory)
    if not sweep:
        return Source(analysis, directory, _read_table(directory / analysis.final_file, analysis), manifest)
    from rpdist.pipelines.sweep import read_sweep

    try:
        df = read_sweep(directory).to_pandas()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read the sweep in {directory}: {first_line(exc)}") from None
    analysis = analyses.of_table(df)
    missing = [c for c in analysis.required_columns if c not in df.columns]
    if missing:
        raise InputError(f"{directory} is not an rpdist sweep: column {missing[0]!r} is missing")
    if df.empty:
        raise InputError(f"{directory} holds no sweep rows")
    return Source(analysis, directory, df, manifest, sweep=True)


def find_sources(directory: str | Path) -> tuple[list[Source], list[str]]:
    """Results in ``directory`` itself or else in its immediate sub-folders, and notes on skipped ones."""
    directory = Path(directory)
    if not directory.exists():
        raise InputError(f"{directory} does not exist")
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    found = _found_in(directory)
    if found:
        sources = [_load(directory, *item) for item in found]
        return sources, _point_notes(sources)
    notes: list[str] = []
    sources: list[Source] = []
    try:
        children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise InputError(f"cannot read {directory}: {exc.strerror or exc}") from None
    for child in children:
        child_found = _found_in(child)
        sources.extend(_load(child, *item) for item in child_found)
        if not child_found and (note := _unfinished(child)):
            notes.append(note)
    if sources:
        return sources, notes + _point_notes(sources)
    if note := _unfinished(directory):
        raise InputError(note)
    if notes:
        raise InputError(notes[0])
    if not any(directory.iterdir()):
        raise InputError(f"{directory} is empty; expected an rpdist run or sweep directory")
    files = ", ".join(a.final_file for a in analyses.all_analyses())
    raise InputError(f"{directory} holds no rpdist results ({files} or a sweep), neither directly nor in a "
                     "sub-folder")


# ---------------------------------------------------------------------------------------------
# Formatting


@dataclass
class Writer:
    out: Path
    lines: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    def save(self, fig, name: str) -> str:
        """Save a figure next to the report; returns its relative link."""
        fig.tight_layout()
        # a legend kept out of the layout (placed beside the axes) still belongs in the image
        legends = [legend for ax in fig.axes if (legend := ax.get_legend()) is not None]
        path = self.out.parent / f"{self.out.stem}-{name}.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", bbox_extra_artists=legends))
        self.plots.append(path)
        return path.name

    def image(self, fig, name: str, alt: str, caption: str) -> None:
        link = self.save(fig, name)
        self.lines += [f"![{alt}]({link})", "", f"*{caption}*", ""]

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)


def _config_section(w: Writer, source: Source) -> None:
    w.add("### Configuration", "")
    manifest = source.manifest
    if manifest is None:
        w.add("No `manifest.json` was found; the parameters below come from the table itself.", "")
        rows = [[c, ", ".join(fmt(v) for v in sorted(source.table[c].dropna().unique()))]
                for c in ("sigma", "n", "n0", "alpha", "seed", "attribute", "defense") if c in source.table.columns]
        w.add(*md_table(["setting", "value"], rows))
        return
    rows = [[key, value] for key, value in flatten(manifest.get("config", {})) if value is not None]
    for key in ("manifest_version", "analysis", "status", "dataset", "device", "models", "details", "timings"):
        if key in manifest:
            rows += [[k, v] for k, v in flatten({key: manifest[key]}) if v is not None]
    versions = manifest.get("versions") or {}
    rows += [[f"versions.{k}", versions[k]] for k in ("rpdist", "python", "torch", "ray") if versions.get(k)]
    if isinstance(manifest.get("command"), list):
        rows.append(["command", "`" + " ".join(map(str, manifest["command"])) + "`"])
    w.add(*md_table(["setting", "value"], [[k, v if isinstance(v, str) and v.startswith("`") else fmt(v)]
                                         for k, v in rows]))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name) + "-"


def _rows(source: Source) -> str:
    return f"{len(source.table):,}"


def _models(source: Source) -> dict[str, str]:
    """The models behind a result, name → the first 8 hex digits of their sha256, from its manifest and, for
    a sweep, its points' manifests: retrained role models can differ between machines, and results of
    different models do not pair."""
    found: dict[str, set[str]] = {}
    for manifest in [source.manifest or {}, *source.point_manifests]:
        for key, value in flatten({k: manifest.get(k) for k in ("models", "config")}):
            if key.endswith(".sha256") and key.split(".")[-2] != "dataset" and isinstance(value, str):
                found.setdefault(key.split(".")[-2], set()).add(value[:8])
    return {name: "/".join(sorted(hashes)) for name, hashes in sorted(found.items())}


def compute_seconds(source: Source) -> float | None:
    """The seconds a result took by its own manifests: a run's, or the sum of a sweep's points' (each point
    records its own, so a resumed sweep still adds up). None when any of them records none, as a resumed
    certify run, which times only its last session, or a certify sweep, whose points share one manifest."""
    manifests = source.point_manifests if source.sweep else [source.manifest or {}]
    total = 0.0
    for manifest in manifests:
        timings = manifest.get("timings") or {}
        seconds = timings.get("seconds")
        if seconds is None and timings.get("resumed_chunks") == 0:
            seconds = timings.get("seconds_this_session")
        if not isinstance(seconds, (int, float)):
            return None
        total += seconds
    return total if manifests else None


def _show_models(models: dict[str, str]) -> str:
    return ", ".join(f"{name} {sha256}" for name, sha256 in models.items()) or "—"


def model_sets(results: list[dict[str, str]]) -> int:
    """How many different sets of models stand behind ``results`` (each name → sha256). Two results share a
    set when every model both record is the same: a later manifest may record more models (the attacker's
    prior, a DP-SGD target) than an earlier one of the same models."""
    groups: list[dict[str, str]] = []
    for models in sorted((m for m in results if m), key=len, reverse=True):
        group = next((g for g in groups if all(g.get(name, sha) == sha for name, sha in models.items())), None)
        if group is None:
            groups.append(dict(models))
        else:
            group.update(models)
    return len(groups)


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write a markdown report (default ``DIR/report.md``) and its PNG plots next to it; returns its path.

    ``directory`` is a run directory (certify, predict, ``rpdist rap``, attack benchmark), a sweep
    directory, or a folder holding several of them. Raises :class:`InputError` when it holds none.
    """
    from rpdist import __version__
    from rpdist.io.store import check_writable

    directory = Path(directory)
    sources, notes = find_sources(directory)
    out = Path(out) if out is not None else directory / "report.md"
    if out.is_dir():
        out = out / "report.md"
    check_writable(out.parent)
    w = Writer(out)
    name = directory.resolve().name
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    w.add(f"# rpdist report: {name}", "",
          f"Generated by rpdist {__version__} on {stamp} from `{directory}`.", "")
    several = len(sources) > 1
    if several:
        w.add("| result | kind | rows | σ | N | α | time | models (sha256) |", "|---|---|---|---|---|---|---|---|")
        models = {s.name: _models(s) for s in sources}
        seconds = {s.name: compute_seconds(s) for s in sources}
        for s in sources:
            params = [", ".join(fmt(v) for v in sorted(s.table[c].dropna().unique())) if c in s.table.columns else "—"
                      for c in ("sigma", "n", "alpha")]
            kind = f"{s.kind} sweep" if s.sweep else s.kind
            w.add("| " + " | ".join([f"`{s.name}`", kind, _rows(s), *params, duration(seconds[s.name]),
                                     _show_models(models[s.name])]) + " |")
        w.add("")
        timed = [t for t in seconds.values() if t is not None]
        if timed:
            w.add(f"Time the manifests record: {duration(sum(timed))} for {len(timed)} of {len(sources)} results "
                  "(each result's own time, summed; results that ran side by side overlap on the clock).", "")
        if (sets := model_sets(list(models.values()))) > 1:
            w.add(f"**These results come from {sets} different sets of models** (last column): compare "
                  "results, and pair their attacks or inputs, only where the models are the same.", "")
    for note in notes:
        w.add(f"Skipped: {note}.", "")
    for analysis in analyses.all_analyses():
        analysis.overview(w, [s for s in sources if s.analysis is analysis])
    for source in sources:
        title = f"Sweep of {source.analysis.title}" if source.sweep else source.analysis.title
        w.add(f"## {title}: `{source.name}`", "")
        # Plots of runs in sub-folders carry the run's name; in one folder each kind's plot names differ already.
        slug = _slug(source.name) if source.path != directory else ""
        if source.sweep and any(not o.sweep and o.path == source.path for o in sources):
            slug += "sweep-"
        source.analysis.report(w, source, slug)
        _config_section(w, source)
    text = "\n".join(w.lines).rstrip() + "\n"

    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(out, write)
    return out
