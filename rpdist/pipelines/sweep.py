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
from functools import reduce
from pathlib import Path
from typing import Annotated, Any, Literal
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rpdist import analyses
from rpdist.smoothing import stats
from rpdist.errors import InputError, whole_message
from rpdist.specs import input_error
from rpdist.smoothing.noise import DEFAULT_BLOCK, NOISE_SCHEME, Phase
from rpdist.analyses.base import Outcome
from rpdist.analyses.attack import AttackAnalysis
from rpdist.analyses.rap import RapAnalysis
from rpdist.attacks.brep import ABSTAIN_AWARE, EXACT, PLAIN, PRIORS, PUBLIC, nudge_name
from rpdist.defenses import DEFENSES
from rpdist.defenses.releases import FRESH, KEYED, SMOOTHED_RELEASES
from rpdist.io.manifest import new_manifest, recorded_models
from rpdist.io.rundir import chunk_name
from rpdist.io.store import Store, describe_change, open_run
from rpdist.privacy.staged import DEFAULT_PILOT
from rpdist.smoothing.job import CERTIFY, PREDICT, SmoothingConfig, SmoothingJob

PARTITIONS = (("sigma", pa.float64()), ("n", pa.int64()), ("alpha", pa.float64()), ("seed", pa.int64()))
GRID = ("sigma", "n", "alpha", "seed")  # the list keys whose product is the grid

Count = Annotated[int, Field(ge=1)]
# absent from the identity of sweeps that keep the default
LATER_KEYS = ("defense", "noise", "repeat", "epsilon", "settings")
# Added later and read by one analysis: (that analysis, the value that means what its sweeps did before).
# Resuming compares such a key only in that analysis' sweeps, reading it as that value where none was
# recorded: an attack sweep resumes whatever its recorded pilot, a RAP sweep from before pilots (N in every
# cell) resumes with pilot 0 and is refused with staging on.
ONE_ANALYSIS_KEYS = {"pilot": (RapAnalysis.name, 0)}
# Keys of every sweep file, whatever the analysis; an analysis with its own sweep spec gets every other key.
SHARED_KEYS = ("dataset", "analysis", *GRID)
# What the sweep keeps too (for its manifest), though an own-spec analysis also reads it from its settings.
DATA_KEYS = ("split", "label_column", "limit")
CLI_ONLY = ("out", "run_id", "workers", "address", "device")  # options of rpdist sweep, never sweep-file keys


class SweepSpec(BaseModel):
    """A validated sweep file: the grid and everything shared by its points."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    dataset: str
    # Required wherever the analysis smooths; None for an attack on a defense without σ and N.
    sigma: tuple[float, ...] | None
    n: tuple[int, ...] | None
    alpha: tuple[float, ...] = (0.001,)
    seed: tuple[int, ...] = (0,)
    analysis: str = CERTIFY
    model: str | None = None
    arch: str | None = None
    split: str = "test"
    limit: Count | None = None
    label_column: str = "label"
    n0: Count = 100
    train_sigma: float | None = None
    batch_size: Count | None = None
    noise_block: Count | None = None
    attribute: str = "bmi"  # rap only
    grid_step: float = Field(0.1, gt=0)  # rap only
    # rap only: λ of one penalised model, or a list of them (one model each, all in each point's table)
    l1_non_sensitive: Annotated[float, Field(ge=0)] | tuple[Annotated[float, Field(ge=0)], ...] = 0.01
    posterior_level: float = Field(0.9, gt=0, lt=1)  # rap only: credible level of the posterior's HDI length
    pilot: int = Field(DEFAULT_PILOT, ge=0)  # rap only: first pilot stage settling far grid cells (0: N everywhere)
    defense: Literal[DEFENSES] = "rp"  # attack only; none, dpsgd and rr have no (σ, N) grid
    # attack only: the smoothed release(s) the attacker queries
    release: Literal[SMOOTHED_RELEASES] | tuple[Literal[SMOOTHED_RELEASES], ...] = "majority"
    noise: tuple[Literal[FRESH, KEYED], ...] = (FRESH,)  # attack only: fresh or query-keyed randomness
    repeat: tuple[Count, ...] = (1,)  # attack only: each query asked k times, majority kept
    nudge: tuple[str | float, ...] = (EXACT,)  # attack only: repeats moved by δ (0, ulp or a multiple of σ)
    attacker: tuple[Literal[PLAIN, ABSTAIN_AWARE], ...] = (PLAIN,)  # attack only
    prior: Literal[PRIORS] = PUBLIC  # attack only: the generator's public data (disjoint: without the target's class)
    judge_threshold: float = Field(0.0, ge=0, le=1)  # attack only: the evaluator's confidence a success needs
    epsilon: tuple[Annotated[float, Field(gt=0)], ...] | None = None  # attack, dpsgd or rr: ε (default: its grid)
    query_budget: Count = 400  # attack only
    restarts: Count = 1  # attack only
    targets: tuple[int, ...] | None = Field(None, min_length=1)  # attack only: classes to reconstruct (default: all)
    generator_epochs: Count | None = None  # attack only
    # audit, extraction, …: the analysis' own keys, checked by its spec (Analysis.sweep_spec_model)
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _grid_or_none(cls, data):
        """σ and N make the grid of every smoothing analysis; an attack on another defense has none, so
        there they must be left out (and are None), while elsewhere pydantic reports them missing."""
        if not isinstance(data, dict) or data.get("analysis", CERTIFY) not in analyses.NAMES:
            return data
        options = {**data, **data.get("settings", {})}
        if analyses.get(data.get("analysis", CERTIFY)).smoothing_grid(options):
            return data
        given = [key for key in ("sigma", "n") if data.get(key) is not None]
        if given:
            raise ValueError(f"{given[0]}: applies only to defenses with a σ grid, not to defense "
                             f"{options.get('defense')!r}")
        return {**data, "sigma": None, "n": None}

    @field_validator("sigma", "n", "alpha", "seed", mode="before")
    @classmethod
    def _grid_list(cls, items, info):
        if items is None:
            return items
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"must be a list, got {type(items).__name__} {items!r}")
        if not items:
            raise ValueError("is an empty list; the grid would be empty")
        whole = info.field_name in ("n", "seed")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or (whole and v != int(v)) for v in items):
            raise ValueError(f"must list {'whole ' if whole else ''}numbers, got {list(items)!r}")
        if len(set(items)) != len(items):
            raise ValueError(f"lists a value twice: {list(items)!r}")
        return tuple(int(v) if whole else float(v) for v in items)

    @field_validator("nudge")
    @classmethod
    def _nudges(cls, values):
        return tuple(nudge_name(v) for v in values)

    @field_validator("sigma")
    @classmethod
    def _sigmas(cls, values):
        return values and tuple(stats.check_sigma(v) for v in values)

    @field_validator("alpha")
    @classmethod
    def _alphas(cls, values):
        return tuple(stats.check_alpha(v) for v in values)

    @field_validator("n")
    @classmethod
    def _ns(cls, values):
        return values and tuple(stats.check_count(v, "n") for v in values)

    @field_validator("seed")
    @classmethod
    def _seeds(cls, values):
        if any(s < 0 or s >= 2**63 for s in values):
            raise ValueError("must hold whole numbers in [0, 2^63)")
        return values

    @field_validator("analysis")
    @classmethod
    def _known_analysis(cls, name):
        if name not in analyses.NAMES:
            raise ValueError(f"must be one of {', '.join(analyses.NAMES)} in a sweep, got {name!r}")
        return name

    @model_validator(mode="after")
    def _prefixes_and_feasibility(self):
        analysis = analyses.get(self.analysis)
        if self.sigma is None or self.n is None:
            if analysis.smoothing_grid({**self.model_dump(), **self.settings}):
                raise ValueError(f"{'sigma' if self.sigma is None else 'n'}: is required")
            return self
        if analysis.sweep_spec_model() is not None:
            return self  # its points are checked by its own spec (parse_sweep)
        if not analysis.grid_decides({**self.model_dump(), **self.settings}):
            return self  # no PREDICT/CERTIFY test at these points: no (N, α) to refuse
        bad = [n for n in self.n if n % self.block]
        if bad:
            raise ValueError(f"n: {bad[0]} is not a multiple of noise_block {self.block}, so it is no prefix of the "
                             "shared noise stream")
        try:
            self.configs(self.sigma[0], self.seed[0])  # each is validated when built
        except InputError as exc:
            raise ValueError(f"n/alpha: {exc}") from None
        return self

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
        """The sweep's identity in its manifest. Keys added after sweeps were first run appear only when
        they differ from their default, so a sweep started before still resumes."""
        plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731  (as JSON holds it)
        return {k: {s: plain(x) for s, x in v.items()} if k == "settings" else plain(v)
                for k, v in self.model_dump().items()
                if k not in LATER_KEYS or v != SweepSpec.model_fields[k].get_default(call_default_factory=True)}

    @property
    def points(self) -> list[dict]:
        """Every (σ, N, α, seed) of the grid; without a (σ, N) grid, σ is NaN and N is 0 (as the rows say)."""
        return [{"sigma": sigma, "n": n, "alpha": alpha, "seed": seed} for sigma in self.sigma or (math.nan,)
                for seed in self.seed for n in self.n or (0,) for alpha in self.alpha]


def parse_sweep(data, source: str = "sweep file") -> SweepSpec:
    """Validate a parsed YAML mapping; every error is one line that names the offending key."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    # An empty YAML value means the default; lists are held as tuples (the spec is frozen).
    data = {k: tuple(v) if k not in GRID and isinstance(v, list) else v for k, v in data.items() if v is not None}
    if "settings" in data:
        raise InputError(f"{source}: unknown key 'settings' (an analysis' own keys go at the top level)")
    name = data.get("analysis", CERTIFY)
    model = analyses.get(name).sweep_spec_model() if name in analyses.NAMES else None
    if model is not None:
        for key in CLI_ONLY:
            if key in data:
                raise InputError(f"{source}: key {key!r} is an option of rpdist sweep "
                                 f"(--{key.replace('_', '-')}), not a sweep-file key")
        own = {k: v for k, v in data.items() if k not in SHARED_KEYS}
        data = {**{k: v for k, v in data.items() if k in SHARED_KEYS or k in DATA_KEYS}, "settings": own}
    try:
        spec = SweepSpec(**data)
    except ValidationError as exc:
        raise input_error(exc, SweepSpec, source) from None
    if model is not None:
        check_points(spec, model, source)
    return spec


def check_points(spec: SweepSpec, model, source: str) -> None:
    """Build every grid point's spec now, so a bad key or value of an own-spec analysis is refused
    (one line naming the key) before anything runs."""
    analysis = analyses.get(spec.analysis)
    unknown = sorted(set(spec.settings) - set(model.model_fields))
    if unknown:
        known = ", ".join(sorted((set(model.model_fields) | set(SHARED_KEYS)) - set(CLI_ONLY)))
        raise InputError(f"{source}: unknown key {unknown[0]!r} (known: {known})")
    for point in spec.points:
        try:
            analysis.point_spec(spec, point, out=".", run_id="check")
        except ValidationError as exc:
            raise input_error(exc, model, source) from None
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None


def load_sweep(path: str | Path) -> SweepSpec:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({whole_message(exc)})") from None
    return parse_sweep(data, str(path))


def load_sweeps(paths: list[str | Path], sweep_id: str | None = None) -> list[tuple[SweepSpec, str]]:
    """Every file validated before any runs, each with its sweep id (the file's name by default).

    A reproduction is a list of sweep files; checking them all first means a typo in the last one
    costs nothing instead of hours. Two files with one sweep id would write into one run: refused.
    """
    if not paths:
        raise InputError("no sweep file given")
    if sweep_id is not None and len(paths) > 1:
        raise InputError(f"--sweep-id names one sweep, but {len(paths)} sweep files were given")
    ids = [sweep_id or Path(path).stem for path in paths]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InputError(f"two sweep files would write the same sweep id: {', '.join(repeated)}")
    return [(load_sweep(path), i) for path, i in zip(paths, ids)]


def comparable(config: dict) -> dict:
    """A sweep's recorded configuration as resuming compares it (:data:`ONE_ANALYSIS_KEYS`)."""
    sweep = dict(config.get("sweep") or {})
    for key, (reader, legacy) in ONE_ANALYSIS_KEYS.items():
        if sweep.get("analysis", CERTIFY) == reader:
            sweep.setdefault(key, legacy)
        else:
            sweep.pop(key, None)
    return {**config, "sweep": sweep}


def check_targets_at_once(spec: SweepSpec, targets_at_once: int | None) -> None:
    """--targets-at-once is a count of an attack's target classes; other analyses have none."""
    if targets_at_once is None:
        return
    if spec.analysis != AttackAnalysis.name:
        raise InputError(f"--targets-at-once applies to attack sweeps, not to {spec.analysis}")
    if isinstance(targets_at_once, bool) or not isinstance(targets_at_once, int) or targets_at_once < 1:
        raise InputError(f"--targets-at-once must be a whole number >= 1, got {targets_at_once!r}")


def partition_dir(sigma: float, n: int, alpha: float, seed: int) -> tuple[str, ...]:
    return (f"sigma={sigma!r}", f"n={n}", f"alpha={alpha!r}", f"seed={seed}")


_SWEEP_FILE = re.compile(r"/sigma=[^/]+/n=[^/]+/alpha=[^/]+/seed=[^/]+/chunk-\d+\.parquet$")
_POINT_DIR = r"/sigma=([^/]+)/n=([^/]+)/alpha=([^/]+)/seed=([^/]+)/"
_POINT_FILE = re.compile(_POINT_DIR + "(" + "|".join(
    re.escape(a.final_file) for a in analyses.all_analyses() if a.per_point) + ")$")


def run_sweep(spec: SweepSpec, *, out: str | Path = "results", sweep_id: str, workers: int | None = None,
              address: str | None = None, device: str | None = None, progress: bool = True,
              on_unit: Callable | None = None, targets_at_once: int | None = None) -> Outcome:
    """Run the whole grid, or resume it: chunks whose files all exist are skipped. ``targets_at_once``
    (attack sweeps only) bounds the classes a point attacks at a time, each saved as it finishes."""
    from rpdist.datasets.catalog import load_dataset
    from rpdist.pipelines.run import RunSpec, engine_identity, resolve_model

    check_targets_at_once(spec, targets_at_once)
    store = open_run(out, sweep_id)
    data = load_dataset(spec.dataset, split=spec.split, label_column=spec.label_column, limit=spec.limit,
                        stream=True)
    config = {"sweep": spec.as_dict(), "dataset_sha256": data.sha256, "rows": len(data), "noise": NOISE_SCHEME}
    existing = store.claim(sweep_id, config, "--sweep-id", compare=comparable)
    manifest = existing or new_manifest(spec.analysis, config, dataset={"spec": spec.dataset, "split": spec.split,
                                                                       "rows": len(data), "sha256": data.sha256},
                                        timings={"started": dt.datetime.now(dt.timezone.utc).isoformat()})
    manifest["status"] = "running"
    resume = manifest["details"].setdefault("resume", {})
    analysis = analyses.get(spec.analysis)
    if analysis.per_point:
        options = dict(workers=workers, address=address, device=device)
        if targets_at_once is not None:
            options["targets_at_once"] = targets_at_once
        return _run_each_point(analysis, spec, store, sweep_id, manifest, options, progress)
    # Forward samples computed for this sweep, summed over its sessions: a chunk counts when its files
    # are written, so chunks skipped on resume are not counted again and a chunk computed twice (its
    # session killed between its files) counts twice. Work lost in flight at an interruption is not counted.
    forward = manifest["details"].setdefault("forward_samples", {})
    computed = forward.setdefault("used", 0)
    session = naive = 0
    for sigma in spec.sigma:
        for seed in spec.seed:
            largest = dataclasses.replace(spec.configs(sigma, seed)[0], n=max(spec.n), alpha=max(spec.alpha))
            run_spec = RunSpec(config=largest, dataset=spec.dataset, model=spec.model, arch=spec.arch,
                               train_sigma=spec.train_sigma)
            model_ref, model_info = resolve_model(run_spec, data.name, progress)
            job = SmoothingJob(model_ref, data.X, data.y, config=largest, input_ids=data.input_ids,
                               workers=workers, address=address, device=device)
            point = f"sigma={sigma!r}"
            check_resume(store.show(sweep_id), resume, point, {
                "model": {"sha256": model_ref.sha256}, "batch_size": job.plan.batch_size,
                "noise_block": job.plan.block_size, **engine_identity(job.pool)})
            manifest["models"][point] = {**model_info, "sha256": model_ref.sha256}
            manifest["device"].update({"type": job.pool.device, "workers": job.pool.workers,
                                       "batch_size": job.plan.batch_size})
            store.write_json(manifest, sweep_id, "manifest.json")
            configs = spec.configs(sigma, seed)
            dirs = [(sweep_id, *partition_dir(sigma, c.n, c.alpha, seed)) for c in configs]
            done = {c for c in range(job.plan.num_chunks)
                    if all(store.exists(*d, chunk_name(c)) for d in dirs)}
            meter = job.meter(done, enabled=progress)
            for chunk, counts in job.block_counts(skip=done, meter=meter, on_unit=on_unit):
                rows = job.plan.chunk_rows(chunk)
                for config, directory in zip(configs, dirs):
                    table = job.table(rows, prefix_counts(counts, config.n, spec.block), config)
                    store.write_parquet(table.drop_columns([name for name, _ in PARTITIONS]),
                                        *directory, chunk_name(chunk))
                samples = job.plan.samples([chunk])
                computed, session = computed + samples, session + samples
                forward["used"] = computed
                store.write_json(manifest, sweep_id, "manifest.json")
            per_input = (spec.n0 if spec.analysis == CERTIFY else 0)
            naive += len(data) * sum(per_input + n for n in spec.n) * len(spec.alpha)
    _finish(manifest, session > 0)
    forward.update({"used": computed, "used_this_session": session, "naive_grid": naive,
                    "saved_fraction": 1 - computed / naive})
    store.write_json(manifest, sweep_id, "manifest.json")
    return _outcome(analysis, store, sweep_id, manifest)


def _finish(manifest: dict, worked: bool) -> None:
    """Mark the sweep complete; a resume that found nothing left to do keeps the time the work ended."""
    manifest["status"] = "complete"
    if worked or "finished" not in manifest["timings"]:
        manifest["timings"]["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()


def _outcome(analysis, store: Store, sweep_id: str, manifest: dict) -> Outcome:
    root = Store(store.path(sweep_id), filesystem=store.fs)
    reader = lambda columns=None: read_sweep(root).to_pandas()[columns or slice(None)]  # noqa: E731
    return Outcome(analysis.name, store.show(sweep_id), manifest, analysis.summarize(reader()), reader=reader)


def check_resume(path: str, recorded: dict, point: str, key: dict) -> None:
    """Resume a grid point only with the model, batch size, noise block and device type it was
    started with: each changes the noise or the chunk boundaries, and a mix would be reported as one
    sweep. A point not started before is recorded (the caller writes the manifest before any work)."""
    if point in recorded and recorded[point] != key:
        raise InputError(f"{path} was {describe_change(recorded[point], key, '--sweep-id', f' for {point}')}")
    recorded[point] = key


def _point_done(analysis, store: Store, sweep_id: str, point: dict) -> bool:
    """A point is done when its result file and a complete manifest exist (a run killed between writing the
    two is rerun, as a single run would be)."""
    where = (sweep_id, *partition_dir(**point))
    return (store.exists(*where, analysis.final_file)
            and (store.read_json(*where, "manifest.json") or {}).get("status") == "complete")


def check_point_models(analysis, spec, store: Store, sweep_id: str, point: dict) -> None:
    """Refuse to add grid points when this machine's models for a finished point differ from those it
    recorded: models trained on demand (role models, RAP's default models) are retrained on each new
    machine and differ, and results of different models would sit in one sweep as if comparable. Models the
    point did not record are not compared."""
    models = analysis.point_models(spec, point)
    if models is None:
        return
    before = recorded_models(store.read_json(sweep_id, *partition_dir(**point), "manifest.json"), models)
    mine = {name: models[name] for name in before}
    if before != mine:
        raise InputError(f"{store.show(sweep_id)}: its finished points ran on other models ({_short(before)}) "
                         f"than this machine's ({_short(mine)}); a sweep does not mix models: write the rest "
                         "to a new sweep, or run with the $RPDIST_CACHE that made them")


def _short(models: dict[str, str]) -> str:
    return ", ".join(f"{role} {sha256[:8]}" for role, sha256 in models.items())


def _run_each_point(analysis, spec, store, sweep_id, manifest, options: dict, progress) -> Outcome:
    """A per-point analysis (RAP, a model-inversion attack) at every grid point, each a run of its own
    in its partition directory; a finished point is skipped on resume, and new points are added only on the
    models the finished ones ran on.

    Both release PREDICT decisions at inputs that depend on the (σ, N, α) point, so no counts are
    shared between points.
    """
    done = [_point_done(analysis, store, sweep_id, point) for point in spec.points]
    if any(done) and not all(done):
        check_point_models(analysis, spec, store, sweep_id, spec.points[done.index(True)])
    store.write_json(manifest, sweep_id, "manifest.json")
    ran = False
    for point, finished in zip(spec.points, done):
        *parent, leaf = (sweep_id, *partition_dir(**point))
        if finished:
            continue
        out = Store(store.path(*parent), filesystem=store.fs)
        analysis.run_point(spec, point, out, leaf, options, progress)
        ran = True
    _finish(manifest, ran)
    store.write_json(manifest, sweep_id, "manifest.json")
    return _outcome(analysis, store, sweep_id, manifest)


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
        return _concat_points(store, points, _POINT_FILE)
    if not files:
        raise InputError(f"{store.display} holds no sweep results")
    partitioning = ds.partitioning(pa.schema(list(PARTITIONS)), flavor="hive")
    table = ds.dataset(files, format="parquet", partitioning=partitioning, partition_base_dir=store.root,
                       filesystem=store.fs).to_table()
    keys = [(name, "ascending") for name, _ in PARTITIONS] + [("input_id", "ascending")]
    return table.sort_by(keys)


def read_points(root: str | Path | Store, name: str) -> pa.Table | None:
    """Another file that each grid point's run wrote beside its result (RAP's ``rap_curve.parquet``), all
    points concatenated with their partition values; None when no point wrote one."""
    store = root if isinstance(root, Store) else Store(root)
    pattern = re.compile(_POINT_DIR + re.escape(name) + "$")
    files = [f for f in store.files(recursive=True) if pattern.search(f)]
    return _concat_points(store, files, pattern) if files else None


def _concat_points(store: Store, files: list[str], pattern: re.Pattern) -> pa.Table:
    """Concatenate per-point tables, adding sigma/n/alpha/seed from the directory names where a table
    lacks them (a table's own column wins: extraction's ``seed`` is its student's, not the grid's)."""
    tables = []
    for path in files:
        table = store.read_table(path)
        values = pattern.search(path).groups()[:4]
        for (name, kind), value in zip(PARTITIONS, values):
            if name not in table.schema.names:
                column = pa.array([float(value) if kind == pa.float64() else int(value)] * len(table), type=kind)
                table = table.append_column(name, column)
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="default")
    keys = [name for name, _ in PARTITIONS] + [k for k in ("input_id", "target", "restart") if k in table.schema.names]
    return table.sort_by([(k, "ascending") for k in keys])
