"""Parameter sweeps over (σ, N, α, seed) with sample reuse, streamed to one partitioned dataset.

For each (σ, seed) the engine runs once at the largest N and returns counts per noise block.
Because noise is counter-based, the first N/noise_block blocks are exactly the samples of a run at
that N, so every smaller N — and every α — is derived from the same counts at no extra forward
cost. Each (σ, N, α) certificate is still a valid certificate on its own; nothing is selected per
input after the fact.

Layout: ``OUT/SWEEP_ID/sigma=S/n=N/alpha=A/seed=K/chunk-000000.parquet`` (hive partitions; the
partition columns live only in the directory names) and ``OUT/SWEEP_ID/manifest.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from rpdist.smoothing import stats
from rpdist.errors import InputError
from rpdist.smoothing.noise import DEFAULT_BLOCK, Phase
from rpdist.io.store import Store, open_run
from rpdist.smoothing.job import CERTIFY, PREDICT, SmoothingConfig, SmoothingJob

PARTITIONS = (("sigma", pa.float64()), ("n", pa.int64()), ("alpha", pa.float64()), ("seed", pa.int64()))
RAP, ATTACK = "rap", "attack"
ANALYSES = (CERTIFY, PREDICT, RAP, ATTACK)
LIST_KEYS = {"sigma": float, "n": int, "alpha": float, "seed": int}
SCALAR_KEYS = {"dataset": str, "analysis": str, "model": str, "arch": str, "split": str, "limit": int,
               "label_column": str, "n0": int, "train_sigma": float, "batch_size": int, "noise_block": int,
               "attribute": str, "grid_step": float, "l1_non_sensitive": float,
               "release": str, "query_budget": int, "restarts": int, "generator_epochs": int}
KIND_NAMES = {int: "a whole number", float: "a number", str: "a string"}  # for messages
OTHER_LIST_KEYS = {"targets"}  # lists that are options, not grid axes
REQUIRED = ("dataset", "sigma", "n")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file: the grid and everything shared by its points."""

    dataset: str
    sigma: tuple[float, ...]
    n: tuple[int, ...]
    alpha: tuple[float, ...] = (0.001,)
    seed: tuple[int, ...] = (0,)
    analysis: str = CERTIFY
    model: str | None = None
    arch: str | None = None
    split: str = "test"
    limit: int | None = None
    label_column: str = "label"
    n0: int = 100
    train_sigma: float | None = None
    batch_size: int | None = None
    noise_block: int | None = None
    attribute: str = "bmi"  # rap only
    grid_step: float = 0.1  # rap only
    l1_non_sensitive: float = 0.01  # rap only
    release: str = "majority"  # attack only: the smoothed release the attacker queries
    query_budget: int = 400  # attack only
    restarts: int = 1  # attack only
    targets: tuple[int, ...] | None = None  # attack only: classes to reconstruct (default: all)
    generator_epochs: int | None = None  # attack only

    @property
    def block(self) -> int:
        """Noise block: the given one; else the default when it divides every N (so results equal
        single runs'), else the gcd of the N values so that each N is a whole prefix."""
        if self.noise_block:
            return self.noise_block
        common = reduce(math.gcd, self.n)
        return DEFAULT_BLOCK if common % DEFAULT_BLOCK == 0 else common

    def configs(self, sigma: float, seed: int) -> list[SmoothingConfig]:
        """The smoothing configurations of the grid at (σ, seed); RAP certifies, so it checks as CERTIFY."""
        analysis = PREDICT if self.analysis == PREDICT else CERTIFY
        return [SmoothingConfig(analysis, sigma, n, alpha, self.n0 if analysis == CERTIFY else None, seed,
                                self.batch_size, self.block) for n in self.n for alpha in self.alpha]

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def parse_sweep(data, source: str = "sweep file") -> SweepSpec:
    """Validate a parsed YAML mapping; every error names the offending key."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    unknown = sorted(set(data) - set(LIST_KEYS) - set(SCALAR_KEYS) - OTHER_LIST_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted({**LIST_KEYS, **SCALAR_KEYS}))})")
    for key in REQUIRED:
        if data.get(key) is None:
            raise InputError(f"{source}: key {key!r} is required")
    values: dict = {}
    for key, kind in LIST_KEYS.items():
        if key not in data:
            continue
        items = data[key]
        if not isinstance(items, list):
            raise InputError(f"{source}: key {key!r} must be a list, got {type(items).__name__} {items!r}")
        if not items:
            raise InputError(f"{source}: key {key!r} is an empty list; the grid would be empty")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)) for v in items):
            raise InputError(f"{source}: key {key!r} must list {'whole ' if kind is int else ''}numbers, got {items!r}")
        if len(set(items)) != len(items):
            raise InputError(f"{source}: key {key!r} lists a value twice: {items!r}")
        values[key] = tuple(kind(v) for v in items)
    for key, kind in SCALAR_KEYS.items():
        if key in data and data[key] is not None:
            value = data[key]
            ok = isinstance(value, str) if kind is str else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or value == int(value)))
            if not ok:
                raise InputError(f"{source}: key {key!r} must be {KIND_NAMES[kind]}, got {value!r}")
            values[key] = kind(value)
    if data.get("targets") is not None:
        targets = data["targets"]
        if not isinstance(targets, list) or not targets or any(isinstance(t, bool) or not isinstance(t, int) for t in targets):
            raise InputError(f"{source}: key 'targets' must be a non-empty list of class numbers, got {targets!r}")
        values["targets"] = tuple(targets)
    spec = SweepSpec(**values)
    _check_values(spec, source)
    return spec


def _check_values(spec: SweepSpec, source: str) -> None:
    if spec.analysis not in ANALYSES:
        raise InputError(f"{source}: key 'analysis' must be one of {', '.join(ANALYSES)} in a sweep, got "
                         f"{spec.analysis!r}")
    if spec.analysis == ATTACK and spec.release not in ("predict", "majority"):
        raise InputError(f"{source}: key 'release' must be predict or majority, got {spec.release!r}")
    if spec.grid_step <= 0 or spec.l1_non_sensitive < 0:
        key = "grid_step" if spec.grid_step <= 0 else "l1_non_sensitive"
        raise InputError(f"{source}: key {key!r} must be {'> 0' if key == 'grid_step' else '>= 0'}")
    checks = {"sigma": stats.check_sigma, "alpha": stats.check_alpha, "n": lambda v: stats.check_count(v, "n")}
    for key, check in checks.items():
        for value in getattr(spec, key):
            try:
                check(value)
            except InputError as exc:
                raise InputError(f"{source}: key {key!r}: {exc}") from None
    if any(s < 0 or s >= 2**63 for s in spec.seed):
        raise InputError(f"{source}: key 'seed' must hold whole numbers in [0, 2^63)")
    for key in ("n0", "batch_size", "noise_block", "limit", "query_budget", "restarts", "generator_epochs"):
        value = getattr(spec, key)
        if value is not None and value < 1:
            raise InputError(f"{source}: key {key!r} must be >= 1, got {value}")
    bad = [n for n in spec.n if n % spec.block]
    if bad:
        raise InputError(f"{source}: key 'n': {bad[0]} is not a multiple of noise_block {spec.block}, so it is no "
                         "prefix of the shared noise stream")
    for config in spec.configs(spec.sigma[0], spec.seed[0]):
        try:
            config.validated()
        except InputError as exc:
            raise InputError(f"{source}: key 'n'/'alpha': {exc}") from None


def load_sweep(path: str | Path) -> SweepSpec:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    return parse_sweep(data, str(path))


def partition_dir(sigma: float, n: int, alpha: float, seed: int) -> tuple[str, ...]:
    return (f"sigma={sigma!r}", f"n={n}", f"alpha={alpha!r}", f"seed={seed}")


_SWEEP_FILE = re.compile(r"/sigma=[^/]+/n=[^/]+/alpha=[^/]+/seed=[^/]+/chunk-\d+\.parquet$")
_POINT_FILE = re.compile(r"/sigma=([^/]+)/n=([^/]+)/alpha=([^/]+)/seed=([^/]+)/(rap|attack)\.parquet$")


@dataclass
class SweepOutcome:
    path: str
    manifest: dict
    summary: list[dict] = field(default_factory=list)


def run_sweep(spec: SweepSpec, *, out: str | Path = "results", sweep_id: str, workers: int | None = None,
              address: str | None = None, device: str | None = None, progress: bool = True,
              on_unit: Callable | None = None) -> SweepOutcome:
    """Run the whole grid, or resume it: chunks whose files all exist are skipped."""
    from rpdist.datasets.catalog import load_dataset
    from rpdist.pipelines.run import RunSpec, resolve_model, versions

    store = open_run(out, sweep_id)
    data = load_dataset(spec.dataset, split=spec.split, label_column=spec.label_column, limit=spec.limit,
                        stream=True)
    config = {"sweep": spec.as_dict(), "dataset_sha256": data.sha256, "rows": len(data)}
    existing = store.claim(sweep_id, config)
    manifest = existing or {"config": config, "status": "running", "versions": versions(),
                            "started": dt.datetime.now(dt.timezone.utc).isoformat(), "models": {}}
    manifest["status"] = "running"
    if spec.analysis in (RAP, ATTACK):
        return _run_each_point(spec, store, sweep_id, manifest, workers, address, device, progress)
    used = naive = 0
    for sigma in spec.sigma:
        for seed in spec.seed:
            largest = dataclasses.replace(spec.configs(sigma, seed)[0], n=max(spec.n), alpha=max(spec.alpha))
            run_spec = RunSpec(config=largest, dataset=spec.dataset, model=spec.model, arch=spec.arch,
                               train_sigma=spec.train_sigma)
            model_ref, model_info = resolve_model(run_spec, data.name, progress)
            job = SmoothingJob(model_ref, data.X, data.y, config=largest, input_ids=data.input_ids,
                               workers=workers, address=address, device=device)
            manifest["models"][f"sigma={sigma!r}"] = {**model_info, "sha256": model_ref.sha256}
            manifest["device"] = {"type": job.pool.device, "workers": job.pool.workers}
            store.write_json(manifest, sweep_id, "manifest.json")
            configs = spec.configs(sigma, seed)
            dirs = [(sweep_id, *partition_dir(sigma, c.n, c.alpha, seed)) for c in configs]
            done = {c for c in range(job.plan.num_chunks)
                    if all(store.exists(*d, f"chunk-{c:06d}.parquet") for d in dirs)}
            for chunk, counts in job.block_counts(skip=done, progress=progress, on_unit=on_unit):
                rows = job.plan.chunk_rows(chunk)
                for config, directory in zip(configs, dirs):
                    table = job.table(rows, prefix_counts(counts, config.n, spec.block), config)
                    store.write_parquet(table.drop_columns([name for name, _ in PARTITIONS]),
                                        *directory, f"chunk-{chunk:06d}.parquet")
            per_input = (spec.n0 if spec.analysis == CERTIFY else 0)
            used += len(data) * (per_input + max(spec.n))
            naive += len(data) * sum(per_input + n for n in spec.n) * len(spec.alpha)
    manifest.update({
        "status": "complete",
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "forward_samples": {"used": used, "naive_grid": naive, "saved_fraction": 1 - used / naive},
    })
    store.write_json(manifest, sweep_id, "manifest.json")
    table = read_sweep(Store(store.path(sweep_id), filesystem=store.fs))
    return SweepOutcome(store.show(sweep_id), manifest, summarize_sweep(table.to_pandas(), spec.analysis))


def _run_each_point(spec, store, sweep_id, manifest, workers, address, device, progress) -> SweepOutcome:
    """RAP or a model-inversion attack at every grid point, each a run of its own in its partition
    directory; a point whose result file exists is done and skipped on resume.

    Both release PREDICT decisions at inputs that depend on the (σ, N, α) point, so no counts are
    shared between points.
    """
    store.write_json(manifest, sweep_id, "manifest.json")
    final = "rap.parquet" if spec.analysis == RAP else "attack.parquet"
    for sigma in spec.sigma:
        for seed in spec.seed:
            for n in spec.n:
                for alpha in spec.alpha:
                    *parent, leaf = (sweep_id, *partition_dir(sigma, n, alpha, seed))
                    if store.exists(*parent, leaf, final):
                        continue
                    out = Store(store.path(*parent), filesystem=store.fs)
                    options = dict(seed=seed, batch_size=spec.batch_size, workers=workers, address=address,
                                   device=device, out=out, run_id=leaf)
                    if spec.analysis == RAP:
                        from rpdist.privacy.runner import RapSpec, run_rap

                        run_rap(RapSpec(dataset=spec.dataset, attribute=spec.attribute, sigma=sigma, n=n, n0=spec.n0,
                                        alpha=alpha, grid_step=spec.grid_step, train_sigma=spec.train_sigma,
                                        l1_non_sensitive=spec.l1_non_sensitive, split=spec.split, limit=spec.limit,
                                        **options), progress=progress)
                    else:
                        from rpdist.attacks.inversion import InversionSpec, run_inversion

                        run_inversion(InversionSpec(dataset=spec.dataset, defense="rp", sigmas=[sigma], ns=[n],
                                                    alpha=alpha, releases=[spec.release], restarts=spec.restarts,
                                                    query_budget=spec.query_budget, generator_epochs=spec.generator_epochs,
                                                    targets=list(spec.targets) if spec.targets else None, **options),
                                      progress=progress)
    manifest.update({"status": "complete", "finished": dt.datetime.now(dt.timezone.utc).isoformat()})
    store.write_json(manifest, sweep_id, "manifest.json")
    table = read_sweep(Store(store.path(sweep_id), filesystem=store.fs)).to_pandas()
    return SweepOutcome(store.show(sweep_id), manifest, _point_summary(table, spec.analysis))


def _point_summary(table, analysis: str) -> list[dict]:
    if analysis == RAP:
        from rpdist.privacy.rap import summarize as summarize_rap

        return summarize_rap(table).to_dict(orient="records")
    grouped = table.groupby(["sigma", "n", "alpha", "seed", "release"], sort=True)
    return [{"sigma": k[0], "n": k[1], "alpha": k[2], "seed": k[3], "release": k[4], "asr": float(g["success"].mean()),
             "utility_accuracy": float(g["utility_accuracy"].mean()), "queries": int(g["queries"].sum()),
             "forward_passes": int(g["forward_passes"].sum())} for k, g in grouped]


def prefix_counts(counts: dict[int, np.ndarray], n: int, block: int) -> dict[int, np.ndarray]:
    """Summed counts of the first n samples: all selection blocks, the first n/block of the rest."""
    return {phase: c.sum(axis=1) if phase == Phase.SELECTION else c[:, : n // block].sum(axis=1)
            for phase, c in counts.items()}


def read_sweep(root: str | Path | Store) -> pa.Table:
    """The whole sweep as one table, partition columns included, in a stable row order."""
    import pyarrow.dataset as ds

    store = root if isinstance(root, Store) else Store(root)
    everything = store.files(recursive=True)
    files = [f for f in everything if _SWEEP_FILE.search(f)]
    points = [f for f in everything if _POINT_FILE.search(f)]
    if points:  # RAP and attack tables: one run per partition directory, partition values added
        return _concat_points(store, points)
    if not files:
        raise InputError(f"{store.display} holds no sweep results")
    partitioning = ds.partitioning(pa.schema(list(PARTITIONS)), flavor="hive")
    table = ds.dataset(files, format="parquet", partitioning=partitioning, partition_base_dir=store.root,
                       filesystem=store.fs).to_table()
    keys = [(name, "ascending") for name, _ in PARTITIONS] + [("input_id", "ascending")]
    return table.sort_by(keys)


def _concat_points(store: Store, files: list[str]) -> pa.Table:
    """Concatenate per-point tables, taking sigma/n/alpha/seed from the directory names."""
    tables = []
    for path in files:
        table = store.read_table(path)
        values = _POINT_FILE.search(path).groups()[:4]
        for (name, kind), value in zip(PARTITIONS, values):
            column = pa.array([float(value) if kind == pa.float64() else int(value)] * len(table), type=kind)
            table = (table.set_column(table.schema.get_field_index(name), name, column) if name in table.schema.names
                     else table.append_column(name, column))
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="default")
    keys = [name for name, _ in PARTITIONS] + [k for k in ("input_id", "target", "restart") if k in table.schema.names]
    return table.sort_by([(k, "ascending") for k in keys])


def summarize_sweep(df, analysis: str) -> list[dict]:
    from rpdist.reporting.summary import summarize

    rows = []
    for (sigma, n, alpha, seed), group in df.groupby(["sigma", "n", "alpha", "seed"], sort=True):
        rows.append({"sigma": sigma, "n": n, "alpha": alpha, "seed": seed, **summarize(group, analysis, sigma)})
    return rows

