"""Paired comparison of two model-inversion results (``rpdist attack compare``).

Two attack results pair attack by attack: the same seed, target class and restart start from the same
prior draw and are judged by the same evaluator, so their verdicts are paired 0/1 outcomes and the
difference of ASRs gets Tango's paired score interval, much narrower than two separate intervals.
That holds only when both ran on the same role models: retrained models differ between machines, and
two results of different models are two independent experiments. So the comparison reads every
manifest's target and evaluator sha256 and refuses to pair results whose models differ or are not
recorded. Several results per side (one seed each, say) pool into one comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rpdist.analyses.attack import SETTING
from rpdist.errors import InputError
from rpdist.smoothing.stats import clopper_pearson, paired_difference

ATTACK_FILE = "attack.parquet"
PAIR_KEYS = ("seed", "target", "restart")  # one attack: its prior draw and its target
ROLES = ("target", "eval")  # the models whose weights decide a verdict (the prior is trained with them)


@dataclass
class Side:
    """The attacks of one side, read from one or more result directories."""

    table: pd.DataFrame
    models: set[tuple[str, ...]] = field(default_factory=set)  # (target sha256, eval sha256) of each point


@dataclass
class Comparison:
    """A's attacks against B's, pooled over every pair, with one row per seed beside the pooled one."""

    rows: list[dict]  # one per seed, then the pooled one when there are several seeds
    models: tuple[str, ...]
    settings: tuple[dict, dict]  # the settings columns that are constant on each side

    @property
    def pooled(self) -> dict:
        return self.rows[-1]


def _manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{path} is missing or unreadable: without it the models behind {directory} are "
                         "unknown") from None
    return data if isinstance(data, dict) else {}


def _models(manifest: dict, where: Path) -> tuple[str, ...]:
    models = manifest.get("models") or {}
    hashes = tuple((models.get(role) or {}).get("sha256") for role in ROLES)
    if not all(isinstance(h, str) and h for h in hashes):
        raise InputError(f"{where} records no sha256 of its {' and '.join(ROLES)} models, so whether it "
                         "shares models with the other side is unknown; rerun it with this rpdist")
    return hashes


def _read_side(directory: Path) -> Side:
    """A run directory (or one sweep point) holding attack.parquet, or a sweep of attack runs."""
    import pyarrow.parquet as pq

    from rpdist.pipelines.sweep import read_sweep

    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    if (directory / ATTACK_FILE).is_file():
        manifest = _manifest(directory)
        try:
            table = pq.read_table(directory / ATTACK_FILE).to_pandas()
        except Exception as exc:  # noqa: BLE001 — an unreadable file is the user's input
            raise InputError(f"cannot read {directory / ATTACK_FILE}: {str(exc).splitlines()[0]}") from None
        if "seed" not in table.columns:  # the seed used (drawn from os.urandom when none was given)
            seed = (manifest.get("details") or {}).get("seed", (manifest.get("config") or {}).get("seed"))
            if seed is None:
                raise InputError(f"{directory / 'manifest.json'} records no seed: its attacks cannot be paired")
            table["seed"] = seed
        return Side(table, {_models(manifest, directory)})
    points = sorted(p.parent for p in directory.glob(f"sigma=*/n=*/alpha=*/seed=*/{ATTACK_FILE}"))
    if not points:
        raise InputError(f"{directory} holds no attack results ({ATTACK_FILE}, or a sweep of them)")
    return Side(read_sweep(directory).to_pandas(), {_models(_manifest(p), p) for p in points})


def _matches(column: pd.Series, value: str) -> pd.Series:
    """Rows whose value equals ``value`` as written on the command line (numbers compared as numbers)."""
    if pd.api.types.is_numeric_dtype(column):
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"{column.name} is numeric, got {value!r}") from None
        return column.isna() if np.isnan(number) else np.isclose(column.astype(float), number)
    return column.astype(str) == value


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


def _settings(table: pd.DataFrame) -> dict:
    return {c: table[c].iloc[0] for c in SETTING if c in table and c != "seed" and table[c].nunique(dropna=False) == 1}


def _one_setting(table: pd.DataFrame, label: str, option: str) -> None:
    """Each attack may appear once per side: several settings would pair one attack with many."""
    if table.duplicated(list(PAIR_KEYS)).any():
        varying = [c for c in SETTING if c in table and c != "seed" and table[c].nunique(dropna=False) > 1]
        hint = (f"; choose one with {option} {varying[0]}=VALUE "
                f"({varying[0]} takes {', '.join(str(v) for v in sorted(table[varying[0]].unique()))})"
                if varying else "")
        raise InputError(f"{label} holds the same attack (seed, target, restart) more than once{hint}")


def _row(label, x: np.ndarray, y: np.ndarray, ua: float, ub: float) -> dict:
    n = len(x)
    diff, low, high = paired_difference(x, y, 0.05)
    a_low, a_high = clopper_pearson(int(x.sum()), n)
    b_low, b_high = clopper_pearson(int(y.sum()), n)
    return {"seed": label, "pairs": n, "asr_a": x.mean(), "asr_a_low": a_low, "asr_a_high": a_high,
            "asr_b": y.mean(), "asr_b_low": b_low, "asr_b_high": b_high,
            "a_only": int((x & ~y).sum()), "b_only": int((~x & y).sum()),
            "difference": diff, "difference_low": low, "difference_high": high,
            "utility_a": ua, "utility_b": ub}


def compare_attacks(a: list[str | Path], b: list[str | Path], where: list[str] = (), where_a: list[str] = (),
                    where_b: list[str] = ()) -> Comparison:
    """Pair the attacks of results ``a`` with those of ``b`` (same seed, target, restart) and compare ASRs.

    ``where`` selects rows of both sides, ``where_a``/``where_b`` of one (``KEY=VALUE`` on a setting column
    such as ``sigma=1``), until each side holds one setting per attack. Raises :class:`InputError` when the
    sides' models differ or are unrecorded, or when their attacks are not the same set.
    """
    if not a or not b:
        raise InputError("compare needs results on both sides (A ... --against B ...)")
    sides = []
    for label, dirs, own, option in (("side A", a, where_a, "--where-a"), ("side B", b, where_b, "--where-b")):
        read = [_read_side(Path(d)) for d in dirs]
        table = _select(pd.concat([s.table for s in read], ignore_index=True), [*where, *own], label)
        _one_setting(table, label, option)
        sides.append(Side(table, set().union(*(s.models for s in read))))
    models = sides[0].models | sides[1].models
    if len(models) > 1:
        shown = "; ".join(" ".join(f"{r} {h[:8]}" for r, h in zip(ROLES, m)) for m in sorted(models))
        raise InputError(f"the results ran on {len(models)} sets of models ({shown}): their attacks do not pair; "
                         "compare the two ASRs with their own intervals")
    keys = list(PAIR_KEYS)
    merged = sides[0].table.merge(sides[1].table, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    lone = merged[merged["_merge"] != "both"]
    if len(lone):
        first = lone.iloc[0]
        where_lone = "A" if first["_merge"] == "left_only" else "B"
        raise InputError(f"the two sides hold different attacks: {len(lone)} have no counterpart (e.g. seed "
                         f"{first['seed']}, target {first['target']}, restart {first['restart']} only in {where_lone})")
    rows = []
    groups = list(merged.groupby("seed", sort=True))
    for label, part in [*groups, ("pooled", merged)] if len(groups) > 1 else groups:
        rows.append(_row(label, part["success_a"].to_numpy(bool), part["success_b"].to_numpy(bool),
                         float(part["utility_accuracy_a"].mean()), float(part["utility_accuracy_b"].mean())))
    return Comparison(rows, next(iter(models)), (_settings(sides[0].table), _settings(sides[1].table)))
