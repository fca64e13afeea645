"""Paired comparison of two model-inversion results (``rpdist attack compare``).

Two attack results pair attack by attack: the same seed, target class and restart start from the same
prior draw and are judged by the same evaluator, so their verdicts are paired 0/1 outcomes and the
difference of ASRs gets Tango's paired score interval, much narrower than two separate intervals.
That holds only when both ran on the same role models, prior and judge: retrained models differ between
machines, and two results of different models are two independent experiments. So the comparison reads
every manifest's target and evaluator sha256, prior and judge threshold, and refuses to pair results
where they differ or are not recorded; the prior's generator sha256 is compared where recorded. Several
results per side (one seed each, say) pool into one comparison; a side must hold one defense setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rpdist.analyses.attack import SETTING, AttackAnalysis
from rpdist.errors import InputError, first_line
from rpdist.smoothing.stats import clopper_pearson, discordant, paired_difference

ATTACK_FILE = AttackAnalysis.final_file
GRID = ("sigma=*", "n=*", "alpha=*", "seed=*")  # a sweep's point folders, outermost first
PAIR_KEYS = ("seed", "target", "restart")  # one attack: its prior draw and its target
# The models every attack's verdict depends on, whatever the defense (a DP-SGD release's own model is the setting
# under test; manifests hash it too, under rpdist.io.manifest.dpsgd_name).
ROLES = ("target", "eval")
# The attacker's prior decides the start draws; manifests hash it since 4 December 2026 and it is compared
# where recorded (earlier runs trained it with their role models, on the same machine).
PRIOR = "generator"
JUDGING = ("prior", "judge_threshold")  # run options that change the start draws or the verdicts


@dataclass
class Side:
    """The attacks of one side, read from one or more result directories."""

    table: pd.DataFrame
    models: set[tuple[str, ...]] = field(default_factory=set)  # (target sha256, eval sha256) of each point
    judging: set[tuple] = field(default_factory=set)  # (prior, judge threshold) of each point
    priors: set[str] = field(default_factory=set)  # the generator sha256 of each point that records one


@dataclass
class Comparison:
    """A's attacks against B's, with one row per seed and then the pooled row when there are several seeds."""

    rows: list[dict]
    models: dict[str, str]  # role: sha256, the same on both sides
    settings: tuple[dict, dict]  # each side's defense setting

    @property
    def pooled(self) -> dict:
        return self.rows[-1]


def _point(directory: Path) -> tuple[dict, tuple[str, ...], tuple, str | None]:
    """A run's manifest, its models, how it judged and its prior's hash (None where unrecorded); refuses a
    run that does not record its target and evaluator."""
    from rpdist.reporting.report import _manifest

    manifest = _manifest(directory)
    if manifest is None:
        raise InputError(f"{directory} has no manifest.json: the models behind its attacks are unknown")
    models = manifest.get("models") or {}
    hashes = tuple((models.get(role) or {}).get("sha256") for role in ROLES)
    if not all(isinstance(h, str) and h for h in hashes):
        raise InputError(f"{directory} records no sha256 of its {' and '.join(ROLES)} models, so whether it "
                         "shares models with the other side is unknown; rerun it with this rpdist")
    config = manifest.get("config") or {}
    return manifest, hashes, tuple(config.get(key) for key in JUDGING), (models.get(PRIOR) or {}).get("sha256")


def _read_side(directory: Path) -> Side:
    """A run directory (or one sweep point) holding attack.parquet, or a sweep of attack runs."""
    import pyarrow.parquet as pq

    from rpdist.pipelines.sweep import read_sweep

    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    if (directory / ATTACK_FILE).is_file():
        manifest, *point = _point(directory)
        try:
            table = pq.read_table(directory / ATTACK_FILE).to_pandas()
        except Exception as exc:  # noqa: BLE001 — an unreadable file is the user's input
            raise InputError(f"cannot read {directory / ATTACK_FILE}: {first_line(exc)}") from None
        if "seed" not in table.columns:  # the seed used (drawn from os.urandom when none was given)
            seed = (manifest.get("details") or {}).get("seed", (manifest.get("config") or {}).get("seed"))
            if seed is None:
                raise InputError(f"{directory / 'manifest.json'} records no seed: its attacks cannot be paired")
            table["seed"] = seed
        if "alpha" not in table.columns and "alpha" in (manifest.get("config") or {}):  # a sweep adds it from its path
            table["alpha"] = manifest["config"]["alpha"]
        points = [tuple(point)]
    else:
        root, fixed = _sweep_root(directory)
        found = sorted(p.parent for p in directory.glob("/".join([*GRID[len(fixed):], ATTACK_FILE])))
        if not found:
            raise InputError(f"{directory} holds no attack results: give a run directory, a sweep directory "
                             f"or one of its folders (…/sigma=S, …, …/seed=K) holding {ATTACK_FILE}")
        points = [_point(p)[1:] for p in found]
        try:
            table = read_sweep(root).to_pandas()
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot read the sweep in {root}: {first_line(exc)}") from None
        for key, value in fixed.items():  # a folder inside the sweep: its grid values, as the path gives them
            table = table[_matches(table[key], value)]
    missing = [c for c in (*AttackAnalysis.required_columns, *PAIR_KEYS) if c not in table.columns]
    if missing:
        raise InputError(f"{directory} is not an rpdist attack result: column {missing[0]!r} is missing")
    return Side(table, {m for m, _, _ in points}, {j for _, j, _ in points}, {g for _, _, g in points if g})


def _sweep_root(directory: Path) -> tuple[Path, dict[str, str]]:
    """The sweep a folder belongs to and the grid values its path fixes: ``…/sw/sigma=1.0/n=100`` gives
    ``…/sw`` and {sigma: 1.0, n: 100}; any other directory gives itself and none."""
    names = [folder.split("=")[0] for folder in GRID]
    level = next((i for i, name in enumerate(names) if directory.name.startswith(f"{name}=")), None)
    if level is None:
        return directory, {}
    fixed, root = {}, directory
    for name in reversed(names[: level + 1]):
        if not root.name.startswith(f"{name}="):  # not laid out as a sweep: read it as given
            return directory, {}
        fixed[name] = root.name.partition("=")[2]
        root = root.parent
    return root, fixed


def _matches(column: pd.Series, value: str) -> pd.Series:
    """Rows whose value equals ``value`` as written on the command line: numbers compared as numbers
    (exactly; a column mixing runs of several defenses may hold them as objects), anything else as text."""
    try:
        number = float(value)
    except ValueError:
        return column.astype(str) == value
    numeric = pd.to_numeric(column, errors="coerce")
    if np.isnan(number):
        return numeric.isna()
    if pd.api.types.is_integer_dtype(column) and number.is_integer():
        return column == int(number)
    return numeric == number


def _select(table: pd.DataFrame, where: list[str], label: str) -> pd.DataFrame:
    for condition in where:
        key, sep, value = condition.partition("=")
        if not sep or not key:
            raise InputError(f"a selection is KEY=VALUE, got {condition!r}")
        if key not in table.columns:
            raise InputError(f"{label} has no column {key!r}; settings: {', '.join(c for c in SETTING if c in table)}")
        table = table[_matches(table[key], value)]
        if table.empty:
            raise InputError(f"no attack of {label} has {condition}")
    return table


def _one_setting(table: pd.DataFrame, label: str, option: str) -> dict:
    """The side's one defense setting; several would pool different defenses, or pair one attack with many."""
    settings = [c for c in SETTING if c in table and c != "seed"]
    for column in settings:
        values = table[column].drop_duplicates()
        if len(values) > 1:
            shown = ", ".join(sorted({str(v) for v in values}))
            raise InputError(f"{label} holds several settings ({column} takes {shown}); keep one with "
                             f"{option} {column}=VALUE")
    twice = table[table.duplicated(list(PAIR_KEYS), keep=False)]
    if len(twice):
        raise InputError(f"{label} holds seed {twice['seed'].iloc[0]} more than once (the same attacks twice): "
                         "give each seed's result once")
    return {c: table[c].iloc[0] for c in settings}


def _row(label, x: np.ndarray, y: np.ndarray, utility_a: float, utility_b: float) -> dict:
    n = len(x)
    diff, low, high = paired_difference(x, y, 0.05)
    a_low, a_high = clopper_pearson(int(x.sum()), n)
    b_low, b_high = clopper_pearson(int(y.sum()), n)
    a_only, b_only = discordant(x, y)
    return {"seed": label, "pairs": n, "asr_a": x.mean(), "asr_a_low": a_low, "asr_a_high": a_high,
            "asr_b": y.mean(), "asr_b_low": b_low, "asr_b_high": b_high,
            "a_only": a_only, "b_only": b_only,
            "difference": diff, "difference_low": low, "difference_high": high,
            "utility_a": utility_a, "utility_b": utility_b}


def _same(what: str, values: set[tuple], names: tuple[str, ...], advice: str) -> tuple:
    if len(values) > 1:
        shown = "; ".join(", ".join(f"{n} {str(v)[:8]}" for n, v in zip(names, vs)) for vs in sorted(values, key=str))
        raise InputError(f"the results ran on {len(values)} {what} ({shown}): their attacks do not pair; {advice}")
    return next(iter(values), None)


def compare_attacks(a: list[str | Path], b: list[str | Path], where: list[str] = (), where_a: list[str] = (),
                    where_b: list[str] = ()) -> Comparison:
    """Pair the attacks of results ``a`` with those of ``b`` (same seed, target, restart) and compare ASRs.

    ``where`` selects rows of both sides, ``where_a``/``where_b`` of one (``KEY=VALUE`` on a setting column
    such as ``sigma=1``), until each side holds one defense setting. Raises :class:`InputError` when the
    sides' models, prior or judge differ or are unrecorded, or when their attacks are not the same set.
    """
    if not a or not b:
        raise InputError("compare needs results on both sides (A ... --against B ...)")
    sides, settings = [], []
    for label, dirs, own, option in (("side A", a, where_a, "--where-a"), ("side B", b, where_b, "--where-b")):
        read = [_read_side(Path(d)) for d in dirs]
        table = _select(pd.concat([s.table for s in read], ignore_index=True), [*where, *own], label)
        settings.append(_one_setting(table, label, option))
        sides.append(Side(table, *(set().union(*(getattr(s, part) for s in read)) for part in ("models", "judging",
                                                                                                  "priors"))))
    models = _same("sets of models", sides[0].models | sides[1].models, ROLES,
                   "compare the two ASRs with their own intervals")
    _same("attacker priors", {(g,) for g in sides[0].priors | sides[1].priors}, (PRIOR,),
          "they start from other draws; compare the two ASRs with their own intervals")
    _same("priors or judges", sides[0].judging | sides[1].judging, JUDGING,
          "they start from other draws or count other verdicts as successes")
    merged = sides[0].table.merge(sides[1].table, on=list(PAIR_KEYS), how="outer", suffixes=("_a", "_b"),
                                  indicator=True)
    lone = merged[merged["_merge"] != "both"]
    if len(lone):
        first = lone.iloc[0]
        where_lone = "A" if first["_merge"] == "left_only" else "B"
        raise InputError(f"the two sides hold different attacks: {len(lone)} have no counterpart (e.g. seed "
                         f"{first['seed']}, target {first['target']}, restart {first['restart']} only in {where_lone})")
    groups = list(merged.groupby("seed", sort=True))
    rows = [_row(label, part["success_a"].to_numpy(bool), part["success_b"].to_numpy(bool),
                 float(part["utility_accuracy_a"].mean()), float(part["utility_accuracy_b"].mean()))
            for label, part in ([*groups, ("pooled", merged)] if len(groups) > 1 else groups)]
    return Comparison(rows, dict(zip(ROLES, models)), (settings[0], settings[1]))
