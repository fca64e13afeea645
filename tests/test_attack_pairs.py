"""``rpdist attack compare``: attacks pair by (seed, target, restart), only on the same role models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rpdist.analyses.attack_pairs import compare_attacks
from rpdist.cli.main import main
from rpdist.errors import InputError
from rpdist.smoothing.stats import clopper_pearson, paired_difference

MODELS = {"target": "aa" * 32, "eval": "bb" * 32}
COMMITTED = Path(__file__).resolve().parents[1] / "results" / "mia" / "mnist5k" / "sweeps"


def attacks(success, *, seed=0, utility=0.8, **setting) -> pd.DataFrame:
    """One attack per (target, restart): 10 targets, len(success) / 10 restarts, in row order."""
    success = np.asarray(success, dtype=bool)
    frame = pd.DataFrame({"target": np.arange(success.size) // (success.size // 10),
                          "restart": np.arange(success.size) % (success.size // 10), "success": success,
                          "utility_accuracy": utility, "defense": "rp", "sigma": 1.0, "n": 100, "release": "predict"})
    for key, value in setting.items():
        frame[key] = value
    return frame


def write_run(path: Path, frame: pd.DataFrame, *, seed=0, models=MODELS) -> Path:
    path.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path / "attack.parquet")
    manifest = {"config": {"seed": seed, "alpha": 0.001}, "models": {role: {"sha256": h} for role, h in models.items()}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def write_sweep(root: Path, frames: dict[int, pd.DataFrame], models=MODELS, sigma: float = 1.0) -> Path:
    for seed, frame in frames.items():
        write_run(root / f"sigma={sigma}" / "n=100" / "alpha=0.001" / f"seed={seed}", frame, seed=seed, models=models)
    return root


def test_pairs_by_attack_not_by_row_order(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.random(50) < 0.8, rng.random(50) < 0.6
    a = write_run(tmp_path / "a", attacks(x))
    b_frame = attacks(y).sample(frac=1.0, random_state=1)  # B's rows shuffled: pairing must follow the keys
    b = write_run(tmp_path / "b", b_frame)
    row = compare_attacks([a], [b]).pooled
    assert row["pairs"] == 50 and row["a_only"] == int((x & ~y).sum()) and row["b_only"] == int((~x & y).sum())
    assert (row["difference"], row["difference_low"], row["difference_high"]) == pytest.approx(paired_difference(x, y))
    assert (row["asr_b_low"], row["asr_b_high"]) == pytest.approx(clopper_pearson(int(y.sum()), 50))
    assert row["asr_a"] == pytest.approx(x.mean()) and row["utility_a"] == pytest.approx(0.8)


def test_sweeps_pool_over_seeds_and_select_a_setting(tmp_path):
    rng = np.random.default_rng(4)
    xs = {seed: rng.random(50) < 0.9 for seed in (0, 1, 2)}
    ys = {seed: rng.random(50) < 0.6 for seed in (0, 1, 2)}
    # Side A: one sweep of seeds 0-1 plus a run of seed 2; side B: a sweep holding two releases per attack.
    a = [write_sweep(tmp_path / "a", {s: attacks(xs[s]) for s in (0, 1)}), write_run(tmp_path / "a2", attacks(xs[2]), seed=2)]
    b = write_sweep(tmp_path / "b", {s: pd.concat([attacks(ys[s]), attacks(~ys[s], release="certify")]) for s in ys})
    with pytest.raises(InputError, match=r"side B holds several settings \(release takes certify, predict\); keep one "
                                         "with --where-b release=VALUE"):
        compare_attacks(a, [b])
    comparison = compare_attacks(a, [b], where_b=["release=predict"])
    assert [r["seed"] for r in comparison.rows] == [0, 1, 2, "pooled"]
    for row, seed in zip(comparison.rows, (0, 1, 2)):
        assert row["difference"] == pytest.approx(paired_difference(xs[seed], ys[seed])[0])
    x, y = np.concatenate(list(xs.values())), np.concatenate(list(ys.values()))
    assert comparison.pooled["pairs"] == 150
    assert comparison.pooled["difference_low"] == pytest.approx(paired_difference(x, y)[1])
    assert comparison.settings[1]["release"] == "predict"
    flipped = compare_attacks(a, [b], where_b=["release=certify"], where=["sigma=1"]).pooled
    assert flipped["asr_b"] == pytest.approx(1 - y.mean())


def test_a_folder_inside_a_sweep_is_the_sweep_at_its_grid_values(tmp_path):
    rng = np.random.default_rng(5)
    xs = {sigma: rng.random(50) < 0.8 for sigma in (0.5, 1.0)}
    y = rng.random(50) < 0.6
    for sigma, x in xs.items():
        write_sweep(tmp_path / "a", {0: attacks(x, sigma=sigma)}, sigma=sigma)
    b = write_run(tmp_path / "b", attacks(y))
    expected = compare_attacks([tmp_path / "a"], [b], where_a=["sigma=0.5"]).pooled
    assert expected["asr_a"] == pytest.approx(xs[0.5].mean())
    for folder in ("sigma=0.5", "sigma=0.5/n=100", "sigma=0.5/n=100/alpha=0.001", "sigma=0.5/n=100/alpha=0.001/seed=0"):
        assert compare_attacks([tmp_path / "a" / folder], [b]).pooled == expected, folder
    (tmp_path / "a" / "sigma=0.5" / "n=200").mkdir()  # a point begun and never finished
    with pytest.raises(InputError, match="sigma=0.5/n=200 holds no attack results"):
        compare_attacks([tmp_path / "a" / "sigma=0.5" / "n=200"], [b])


def test_refuses_results_of_different_models(tmp_path):
    x = np.arange(50) % 3 > 0
    a = write_run(tmp_path / "a", attacks(x))
    b = write_run(tmp_path / "b", attacks(x), models={"target": "cc" * 32, "eval": "bb" * 32})
    with pytest.raises(InputError, match=r"2 sets of models \(target aaaaaaaa, eval bbbbbbbb; target cccccccc"):
        compare_attacks([a], [b])
    # A side that mixes models is refused too, even when the other side matches one of them.
    with pytest.raises(InputError, match="sets of models"):
        compare_attacks([a, write_run(tmp_path / "a1", attacks(x), seed=1, models=MODELS | {"eval": "dd" * 32})],
                        [a])
    unknown = write_run(tmp_path / "old", attacks(x), models={"eval": "bb" * 32})
    with pytest.raises(InputError, match="records no sha256"):
        compare_attacks([a], [unknown])
    strict = write_run(tmp_path / "strict", attacks(x))
    manifest = json.loads((strict / "manifest.json").read_text())
    (strict / "manifest.json").write_text(json.dumps({**manifest, "config": {**manifest["config"], "judge_threshold": 0.9}}))
    with pytest.raises(InputError, match=r"2 priors or judges .*other verdicts as successes"):
        compare_attacks([a], [strict])
    # The attacker's generator is compared where recorded: runs that do not record it still pair.
    vae_e = write_run(tmp_path / "vae-e", attacks(x), models=MODELS | {"generator": "ee" * 32})
    vae_f = write_run(tmp_path / "vae-f", attacks(x), models=MODELS | {"generator": "ff" * 32})
    assert compare_attacks([vae_e], [a]).pooled["pairs"] == 50
    assert compare_attacks([vae_e], [vae_e]).pooled["pairs"] == 50
    with pytest.raises(InputError, match=r"2 attacker priors \(generator eeeeeeee; generator ffffffff\).*other draws"):
        compare_attacks([vae_e], [vae_f])


def test_refuses_different_attacks_and_bad_selections(tmp_path):
    x = np.arange(50) % 2 > 0
    a = write_run(tmp_path / "a", attacks(x))
    with pytest.raises(InputError, match="50 have no counterpart .*restart 5 only in B"):
        compare_attacks([a], [write_run(tmp_path / "b", attacks(x.repeat(2)))])  # 10 restarts against 5
    with pytest.raises(InputError, match="no attack of side A has sigma=0.5"):
        compare_attacks([a], [a], where=["sigma=0.5"])
    with pytest.raises(InputError, match="has no column 'colour'"):
        compare_attacks([a], [a], where_a=["colour=red"])
    with pytest.raises(InputError, match="holds no attack results"):
        compare_attacks([a], [tmp_path])
    with pytest.raises(InputError, match="side A holds seed 0 more than once"):
        compare_attacks([a, a], [a])
    # One side may not pool two defenses; a selection keeps one, numbers matched as numbers even where the
    # column holds objects (a run without σ beside one with it).
    none = write_run(tmp_path / "none", attacks(x, sigma=None, defense="none"), seed=1)
    rp1 = write_run(tmp_path / "rp1", attacks(x), seed=1)
    with pytest.raises(InputError, match=r"side A holds several settings \(defense takes none, rp\)"):
        compare_attacks([a, none], [a, rp1])
    assert compare_attacks([a, none, rp1], [a, rp1], where_a=["sigma=1"]).pooled["pairs"] == 100
    # A run without --seed used a seed drawn from os.urandom, recorded in details.seed: that is what pairs.
    drawn = write_run(tmp_path / "drawn", attacks(x), seed=None)
    manifest = json.loads((drawn / "manifest.json").read_text())
    (drawn / "manifest.json").write_text(json.dumps({**manifest, "details": {"seed": 0}}))
    assert compare_attacks([a], [drawn]).pooled["pairs"] == 50
    with pytest.raises(InputError, match="records no seed"):
        compare_attacks([a], [write_run(tmp_path / "unseeded", attacks(x), seed=None)])


def test_cli_one_line_and_status_2(tmp_path, capsys):
    x = np.arange(50) % 3 > 0
    a = write_run(tmp_path / "a", attacks(x))
    b = write_run(tmp_path / "b", attacks(x), models={"target": "cc" * 32, "eval": "bb" * 32})
    with pytest.raises(SystemExit) as exit_:
        main(["attack", "compare", str(a), "--against", str(b)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "do not pair" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "attack.parquet", "attack.parquet", "b",
                                                           "manifest.json", "manifest.json"]
    with pytest.raises(SystemExit) as exit_:
        main(["attack", "compare", str(a), "--against", str(a)])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "A − B +0 pp" in out and "models (both sides): target aaaaaaaa" in out


@pytest.mark.skipif(not COMMITTED.is_dir(), reason="committed mnist5k results absent")
def test_committed_claims_reproduce():
    """The mnist5k README's five-seed claim (RP PREDICT at σ = 1, N = 100, against random abstention at its
    rate: +24 [+18, +30]) and its refusal to pair the seed-0 nudger with a baseline of other models."""
    rp = [COMMITTED / d for d in ("rp-seed0-rerun", "rp-seed1", "rp-seeds2-4")]
    abstain = [COMMITTED / d for d in ("abstain-seed0-rerun", "abstain-seed1", "abstain-seeds2-4")]
    row = compare_attacks(rp, abstain).pooled
    assert (row["pairs"], row["a_only"], row["b_only"]) == (250, 65, 5)
    assert [round(100 * row[k]) for k in ("asr_a", "asr_b", "difference", "difference_low", "difference_high")] == \
        [90, 66, 24, 18, 30]
    with pytest.raises(InputError, match="do not pair"):
        compare_attacks([COMMITTED / "nudge-n1000"], [COMMITTED / "keyed-n1000"], where_b=["release=predict"])
