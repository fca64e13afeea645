"""Sweeps: YAML validation, sample reuse equal to separate runs, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rpdist import analyses
from rpdist.cli.main import main
from rpdist.errors import InputError
from rpdist.pipelines.sweep import (SweepSpec, comparable, load_sweep, parse_sweep, partition_dir, read_sweep,
                                   run_sweep)

BASE = {"dataset": "insurance", "sigma": [0.5], "n": [1000]}


@pytest.mark.parametrize("change, key, fragment", [
    ({"sigmas": [0.5]}, "sigmas", "unknown key"),
    ({"sigma": []}, "sigma", "empty list"),
    ({"n": []}, "n", "empty list"),
    ({"sigma": [0.5, -1.0]}, "sigma", "sigma must be"),
    ({"sigma": [0.0]}, "sigma", "sigma must be"),
    ({"sigma": 0.5}, "sigma", "must be a list"),
    ({"alpha": 0.001}, "alpha", "must be a list"),
    ({"alpha": [1.5]}, "alpha", "alpha must"),
    ({"n": [1000.5]}, "n", "whole numbers"),
    ({"n": [0]}, "n", "n must be"),
    ({"n": [1500, 2000], "noise_block": 1000}, "n", "multiple of noise_block"),
    ({"seed": ["a"]}, "seed", "numbers"),
    ({"analysis": "magic"}, "analysis", "must be one of"),
    ({"n0": 0}, "n0", "greater than or equal to 1"),
    ({"limit": "ten"}, "limit", "must be a whole number, got 'ten'"),
    ({"limit": 2.5}, "limit", "must be a whole number, got 2.5"),
    ({"train_sigma": "0.1"}, "train_sigma", "must be a number, got '0.1'"),
    ({"model": 3}, "model", "must be a string, got 3"),
    ({"analysis": "attack", "defense": "dpsgd"}, "sigma", "applies only to defenses with a σ grid, not to defense 'dpsgd'"),
    ({"analysis": "attack", "noise": ["fresh", "loud"]}, "noise", "'fresh' or 'keyed', got 'loud'"),
    ({"analysis": "attack", "epsilon": [0.0]}, "epsilon", "greater than 0"),
    ({"analysis": "rap", "l1_non_sensitive": [0.01, -1]}, "l1_non_sensitive", "greater than or equal to 0"),
])
def test_bad_sweep_files_name_the_key(change, key, fragment):
    with pytest.raises(InputError) as info:
        parse_sweep({**BASE, **change}, "s.yaml")
    message = str(info.value)
    assert f"'{key}'" in message and fragment in message and "\n" not in message


def test_missing_key_and_non_mapping():
    with pytest.raises(InputError, match="key 'sigma' is required"):
        parse_sweep({"dataset": "insurance", "n": [10]})
    with pytest.raises(InputError, match="mapping"):
        parse_sweep([1, 2])


def test_noise_block_defaults_keep_prefixes_whole():
    assert SweepSpec(dataset="x", sigma=(0.5,), n=(1000, 10000, 100000)).block == 1000
    assert SweepSpec(dataset="x", sigma=(0.5,), n=(1500, 3000)).block == 1500
    assert SweepSpec(dataset="x", sigma=(0.5,), n=(2000,)).block == 1000
    assert SweepSpec(dataset="x", sigma=(0.5,), n=(500,)).block == 500


def test_bad_yaml_via_cli_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "sigma": "0.5"}))
    with pytest.raises(SystemExit) as info:
        main(["sweep", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "'sigma'" in err
    assert not (tmp_path / "out").exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("sigma: [0.5\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_sweep(broken)


@pytest.mark.parametrize("names, extra, fragment", [
    (["good.yaml", "bad.yaml"], [], "'sigma'"),  # the last file's error, though the first is fine
    (["good.yaml", "other.yaml"], ["--sweep-id", "x"], "--sweep-id names one sweep"),
    (["good.yaml", "sub/good.yaml"], [], "same sweep id: good"),
    (["good.yaml"], ["--targets-at-once", "2"], "--targets-at-once applies to attack sweeps, not to certify"),
])
def test_several_sweep_files_are_all_checked_before_any_runs(tmp_path, capsys, names, extra, fragment):
    contents = {"bad.yaml": {**BASE, "sigma": "0.5"}}
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(contents.get(name, BASE)))
    with pytest.raises(SystemExit) as info:
        main(["sweep", *(str(tmp_path / name) for name in names), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and fragment in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_reuse_equals_separate_runs_with_fewer_forward_samples(ray_session, tmp_path):
    import rpdist
    from rpdist.datasets.catalog import load_dataset
    from rpdist.models.zoo import default_model

    spec = parse_sweep({"dataset": "insurance", "sigma": [0.5], "n": [1000, 3000], "alpha": [0.01, 0.001],
                        "limit": 15, "batch_size": 2048})
    outcome = run_sweep(spec, out=tmp_path, sweep_id="reuse", progress=False)
    swept = read_sweep(outcome.path).to_pandas()
    assert len(swept) == 15 * 4 and set(swept["n"]) == {1000, 3000}

    data = load_dataset("insurance", limit=15)
    model = default_model("insurance", train_sigma=0.5)
    for n in (1000, 3000):
        for alpha in (0.01, 0.001):
            single = rpdist.certify(model, data.X, data.y, sigma=0.5, n=n, alpha=alpha, input_ids=data.input_ids,
                                    batch_size=2048)
            part = swept[(swept["n"] == n) & (swept["alpha"] == alpha)].reset_index(drop=True)
            np.testing.assert_array_equal(part["input_id"], single["input_id"])
            np.testing.assert_array_equal(np.stack(part["counts"]), np.stack(single["counts"]))
            np.testing.assert_array_equal(np.stack(part["selection_counts"]), np.stack(single["selection_counts"]))
            np.testing.assert_array_equal(part["radius"], single["radius"])
            np.testing.assert_array_equal(part["prediction"], single["prediction"])
    samples = outcome.manifest["details"]["forward_samples"]
    assert samples["used"] == 15 * (100 + 3000)
    assert samples["naive_grid"] == 15 * ((100 + 1000) + (100 + 3000)) * 2
    assert samples["used"] < samples["naive_grid"]


def _sweep_command(path: Path, out: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("rpdist")), "sweep", str(path), "--out", str(out), "--quiet"]


@pytest.mark.slow
def test_sweep_killed_by_sigkill_resumes_to_the_same_dataset(ray_session, tmp_path):
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(yaml.safe_dump({"dataset": "insurance", "sigma": [0.25, 0.5], "n": [1000, 2000],
                                          "alpha": [0.001], "limit": 60}))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(_sweep_command(sweep_file, tmp_path), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    root = tmp_path / "grid"
    try:
        deadline = time.monotonic() + 240
        while not list(root.glob("sigma=*/n=*/alpha=*/seed=*/chunk-*.parquet")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sweep wrote nothing in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-sweep, no cleanup of any kind
        proc.wait(timeout=30)
    finally:
        _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    written = list(root.glob("sigma=*/n=*/alpha=*/seed=*/chunk-*.parquet"))
    assert 0 < len(written) < 4, "the kill must land mid-sweep"

    spec = load_sweep(sweep_file)
    resumed = run_sweep(spec, out=tmp_path, sweep_id="grid", progress=False)
    fresh = run_sweep(spec, out=tmp_path / "fresh", sweep_id="grid", progress=False)
    a, b = read_sweep(resumed.path).to_pandas(), read_sweep(fresh.path).to_pandas()
    assert len(a) == 60 * 2 * 2 and not a.duplicated(["sigma", "n", "alpha", "seed", "input_id"]).any()
    pd.testing.assert_frame_equal(a, b)
    assert resumed.manifest["status"] == "complete"
    again = run_sweep(spec, out=tmp_path, sweep_id="grid", progress=False)
    assert again.manifest["timings"] == resumed.manifest["timings"], "nothing ran: the work's end time stays"


def _kill_group(proc: subprocess.Popen) -> None:
    """End whatever the killed driver left in its own session (its local Ray), by the group we created."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def assert_points_record_their_models(spec, root: Path) -> None:
    """What the analysis' point_models reproduces on this machine is what every finished point recorded, so
    the check that refuses to add points beside another machine's models compares like with like."""
    analysis = analyses.get(spec.analysis)
    for point in spec.points:
        recorded = json.loads(root.joinpath(*partition_dir(**point), "manifest.json").read_text())["models"]
        assert analysis.point_models(spec, point) == {name: m["sha256"] for name, m in recorded.items()}


@pytest.mark.slow
def test_rap_sweep_runs_each_point_and_resumes(ray_session, tmp_path):
    spec = parse_sweep({"dataset": "insurance", "analysis": "rap", "sigma": [0.5], "n": [100, 200], "n0": 20,
                        "alpha": [0.01], "limit": 2, "grid_step": 4.0, "l1_non_sensitive": 0.0})
    outcome = run_sweep(spec, out=tmp_path, sweep_id="rap", progress=False)
    table = read_sweep(outcome.path).to_pandas()
    assert sorted(set(table["n"])) == [100, 200] and (table["sigma"] == 0.5).all()
    assert len(table) == 2 * 2 * 2  # (input, release model) rows at each of the two N
    assert {row["release_model"] for row in outcome.summary} == {"base", "smoothed"}
    assert all(row["median_hdi_length_low"] <= row["median_hdi_length"] <= row["median_hdi_length_high"]
               for row in outcome.summary)  # the one summarize, intervals included
    first = tmp_path / "rap" / "sigma=0.5" / "n=100" / "alpha=0.01" / "seed=0" / "rap.parquet"
    stamp = first.stat().st_mtime_ns
    again = run_sweep(spec, out=tmp_path, sweep_id="rap", progress=False)
    assert first.stat().st_mtime_ns == stamp, "a finished grid point is not recomputed"
    pd.testing.assert_frame_equal(read_sweep(again.path).to_pandas(), table)
    assert again.manifest["timings"] == outcome.manifest["timings"], "nothing ran: the work's end time stays"
    # The models a point records are the ones RAP's point_models reproduces from the cache on this machine ...
    assert_points_record_their_models(spec, tmp_path / "rap")
    manifest_path = first.parent / "manifest.json"
    recorded = json.loads(manifest_path.read_text())["models"]
    # ... so a resume that would add points beside a finished point of other models (another machine's) is refused.
    (tmp_path / "rap" / "sigma=0.5" / "n=200" / "alpha=0.01" / "seed=0" / "rap.parquet").unlink()
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()),
                                         "models": {lam: {**m, "sha256": "f" * 64} for lam, m in recorded.items()}}))
    with pytest.raises(InputError, match=r"finished points ran on other models \(0.0 ffffffff\)"):
        run_sweep(spec, out=tmp_path, sweep_id="rap", progress=False)
    assert not (tmp_path / "rap" / "sigma=0.5" / "n=200" / "alpha=0.01" / "seed=0" / "rap.parquet").exists()


def test_rap_keys_are_checked():
    with pytest.raises(InputError, match="'grid_step'"):
        parse_sweep({**BASE, "analysis": "rap", "grid_step": 0})
    for level in (0, 1, 1.5):
        with pytest.raises(InputError, match="'posterior_level'"):
            parse_sweep({**BASE, "analysis": "rap", "posterior_level": level})
    assert parse_sweep({**BASE, "analysis": "rap", "posterior_level": 0.5}).posterior_level == 0.5


@pytest.mark.slow
def test_attack_sweep_runs_brep_against_each_rp_point(ray_session, tmp_path):
    spec = parse_sweep({"dataset": "digits", "analysis": "attack", "sigma": [0.1], "n": [20, 40], "alpha": [0.001],
                        "targets": [0, 1], "query_budget": 60, "generator_epochs": 40, "release": "majority"})
    outcome = run_sweep(spec, out=tmp_path, sweep_id="atk", progress=False)
    assert_points_record_their_models(spec, tmp_path / "atk")  # target, evaluator and the prior's generator
    table = read_sweep(outcome.path).to_pandas()
    assert sorted(set(table["n"])) == [20, 40] and set(table["target"]) == {0, 1}
    assert (table["queries"] <= 60).all() and (table["alpha"] == 0.001).all() and (table["seed"] == 0).all()
    by_n = table.groupby("n")["forward_passes"].sum()
    assert by_n[40] > by_n[20]  # forward passes scale with N for the same kind of attack
    assert {(row["n"], row["release"]) for row in outcome.summary} == {(20, "majority"), (40, "majority")}


def test_attack_keys_are_checked():
    with pytest.raises(InputError, match="'release'"):
        parse_sweep({**BASE, "analysis": "attack", "release": "loud"})
    with pytest.raises(InputError, match="'targets'"):
        parse_sweep({**BASE, "analysis": "attack", "targets": 3})
    with pytest.raises(InputError, match="'attacker'"):
        parse_sweep({**BASE, "analysis": "attack", "attacker": ["clever"]})
    with pytest.raises(InputError, match="'nudge'.*must be 0, ulp or a number"):
        parse_sweep({**BASE, "analysis": "attack", "repeat": [3], "nudge": [-1]})


def test_noise_baseline_sweeps_take_n_1_which_smoothing_refuses():
    """One noisy pass per query (N = 1) makes no PREDICT test, so its grid has no (N, α) to refuse; rp's has."""
    grid = {"dataset": "digits", "analysis": "attack", "sigma": [0.5], "n": [1]}
    assert parse_sweep({**grid, "defense": "noise"}).n == (1,)
    with pytest.raises(InputError, match="n=1 can never certify"):
        parse_sweep({**grid, "defense": "rp"})


def test_attack_sweep_points_carry_attackers_and_nudges():
    from rpdist import analyses

    spec = parse_sweep({**BASE, "dataset": "digits", "analysis": "attack", "defense": "abstain", "repeat": [3], "noise": ["keyed"],
                        "nudge": ["ulp", 0.001], "attacker": ["plain", "abstain-aware"], "prior": "disjoint",
                        "judge_threshold": 0.9})
    point = {"sigma": spec.sigma[0], "n": spec.n[0], "alpha": 0.001, "seed": 0}
    inversion = analyses.get("attack").point_spec(spec, point, out="o", run_id="r")
    assert inversion.defense == "abstain" and inversion.attackers == ["plain", "abstain-aware"]
    assert inversion.nudges == ["ulp", "0.001"] and inversion.sigmas == [spec.sigma[0]]
    assert (inversion.prior, inversion.judge_threshold) == ("disjoint", 0.9)
    with pytest.raises(InputError, match="'judge_threshold'"):
        parse_sweep({**BASE, "dataset": "digits", "analysis": "attack", "judge_threshold": 1.5})


AUDIT = {"dataset": "insurance", "analysis": "audit", "sigma": [0.5, 1.0], "n": [100], "releases": ["predict"],
         "distances": [0.5], "radius_fractions": [1.0], "trials": 20, "limit": 1, "n0": 20}


@pytest.mark.parametrize("change, fragment", [
    ({"trials": 1}, "'trials'"),
    ({"releases": ["loud"]}, "'releases'"),
    ({"distances": [-1.0]}, "'distances'"),
    ({"trails": 10}, "unknown key 'trails'"),
    ({"workers": 2}, "option of rpdist sweep (--workers)"),
    ({"run_id": "x"}, "option of rpdist sweep (--run-id)"),
    ({"settings": {"trials": 10}}, "unknown key 'settings'"),
])
def test_audit_sweep_keys_are_checked_by_the_audit_spec(change, fragment):
    with pytest.raises(InputError) as info:
        parse_sweep({**AUDIT, **change}, "a.yaml")
    assert str(info.value).startswith("a.yaml: ") and fragment in str(info.value) and "\n" not in str(info.value)


def test_own_spec_keys_become_settings_and_identity_keeps_old_sweeps():
    spec = parse_sweep(AUDIT)
    assert spec.settings["trials"] == 20 and spec.settings["limit"] == 1 and spec.limit == 1
    assert spec.as_dict()["settings"]["releases"] == ["predict"]  # as the manifest's JSON holds it
    assert "settings" not in parse_sweep(BASE).as_dict()  # sweeps from before settings resume
    point = {"sigma": 1.0, "n": 100, "alpha": 0.001, "seed": 0}
    from rpdist import analyses

    audit = analyses.get("audit").point_spec(spec, point, out="o", run_id="r")
    assert (audit.sigma, audit.n, audit.trials, audit.n0, audit.releases) == (1.0, (100,), 20, 20, ("predict",))


@pytest.mark.parametrize("change, fragment", [
    ({"seed": [1]}, "no noise seed to sweep"),
    ({"sigmas": [1.0]}, "'sigmas'"),
    ({"query_budgets": [0]}, "'query_budgets'"),
    ({"defense": "none"}, "'sigma': applies only to defenses with a σ grid, not to defense 'none'"),
])
def test_extraction_sweep_keys_are_checked(change, fragment):
    with pytest.raises(InputError, match=fragment):
        parse_sweep({"dataset": "insurance", "analysis": "extraction", "defense": "rp", "sigma": [0.5], "n": [100],
                     **change})


@pytest.mark.slow
def test_audit_sweep_point_equals_a_single_audit(ray_session, tmp_path):
    """A sweep runs each grid point as the audit CLI would: the same rows, plus the grid columns."""
    from rpdist.privacy.audit import AuditSpec, run_audit

    outcome = run_sweep(parse_sweep(AUDIT), out=tmp_path, sweep_id="aud", progress=False)
    assert_points_record_their_models(parse_sweep(AUDIT), tmp_path / "aud")
    table = read_sweep(outcome.path).to_pandas()
    assert sorted(set(table["sigma"])) == [0.5, 1.0] and (table["n"] == 100).all()
    assert {(r["sigma"], r["release"], r["n"]) for r in outcome.summary} == {(0.5, "predict", 100),
                                                                              (1.0, "predict", 100)}
    single = run_audit(AuditSpec(dataset="insurance", sigma=1.0, n=(100,), n0=20, releases=("predict",),
                                 distances=(0.5,), radius_fractions=(1.0,), trials=20, limit=1,
                                 out=str(tmp_path), run_id="single")).table()
    point = table[table["sigma"] == 1.0].drop(columns=["seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(point[single.columns], single.sort_values(["input_id"], kind="stable")
                                  .reset_index(drop=True), check_like=True)


@pytest.mark.slow
def test_extraction_sweep_keeps_each_students_seed(ray_session, tmp_path):
    spec = parse_sweep({"dataset": "insurance", "analysis": "extraction", "defense": "rp", "sigma": [0.5],
                        "n": [100], "query_budgets": [10], "seeds": 2})
    outcome = run_sweep(spec, out=tmp_path, sweep_id="ext", progress=False)
    assert_points_record_their_models(spec, tmp_path / "ext")
    table = read_sweep(outcome.path).to_pandas()
    assert sorted(table["seed"]) == [0, 1], "the grid's seed must not overwrite the students' own"
    assert [r["seeds"] for r in outcome.summary] == [2]


SEQUENTIAL = {"dataset": "insurance", "analysis": "certify-sequential", "sigma": [0.5], "n": [2000],
              "target_radius": [0.125, 0.25], "limit": 8, "n0": 50}


@pytest.mark.parametrize("change, fragment", [
    ({"mode": "adaptive"}, "needs --radius-tolerance"),
    ({"target_radius": [-1.0]}, "target radius must be a finite number > 0"),
    ({"target_radius": []}, "needs at least one --target-radius"),
    ({"mode": "wild"}, "mode must be one of"),
    ({"max_n": 100}, "unknown key 'max_n'"),
    ({"n": [10]}, "can never certify radius 0.25"),
])
def test_sequential_sweep_keys_are_checked_before_it_runs(change, fragment):
    with pytest.raises(InputError) as info:
        parse_sweep({**SEQUENTIAL, **change}, "q.yaml")
    assert str(info.value).startswith("q.yaml: ") and fragment in str(info.value)


@pytest.mark.slow
def test_sequential_sweep_point_equals_a_single_sequential_run(ray_session, tmp_path):
    from rpdist import analyses
    from rpdist.pipelines.run import execute

    spec = parse_sweep(SEQUENTIAL)
    outcome = run_sweep(spec, out=tmp_path, sweep_id="seq", progress=False)
    assert_points_record_their_models(spec, tmp_path / "seq")
    table = read_sweep(outcome.path).to_pandas()
    point = {"sigma": 0.5, "n": 2000, "alpha": 0.001, "seed": 0}
    single = execute(analyses.get("certify-sequential").point_spec(spec, point, out=str(tmp_path), run_id="one"),
                     progress=False).table()
    assert set(table["decision"]) <= {"certified", "not_certified", "undecided"} and len(table) == 8
    pd.testing.assert_frame_equal(table[single.columns].reset_index(drop=True), single.reset_index(drop=True))
    assert outcome.summary[0]["mean_samples"] < 2000  # sequential stopping spent less than max N per input


def _committed_sweeps():
    """(sweep file, its manifest) for every reproduction committed under results/."""
    root = Path(__file__).resolve().parents[1] / "results"
    for path in sorted(root.rglob("*.yaml")):
        for manifest in (path.parent / "sweeps" / path.stem / "manifest.json", path.parent / path.stem / "manifest.json"):
            if manifest.is_file():
                yield path, manifest


def test_every_committed_sweep_resumes_under_its_file():
    """A key added for one analysis (RAP's pilot) must not strand the other analyses' finished sweeps."""
    import json

    pairs = list(_committed_sweeps())
    assert len(pairs) >= 25
    for path, manifest in pairs:
        recorded = json.loads(manifest.read_text())["config"]
        assert comparable(recorded) == comparable({**recorded, "sweep": load_sweep(path).as_dict()}), path


def test_pilot_counts_only_in_rap_sweeps():
    rap, attack = {**BASE, "analysis": "rap"}, {**BASE, "dataset": "digits", "analysis": "attack", "defense": "rp"}
    identity = lambda data: comparable({"sweep": parse_sweep(data).as_dict()})  # noqa: E731
    before = lambda data: {"sweep": {k: v for k, v in parse_sweep(data).as_dict().items() if k != "pilot"}}  # noqa: E731
    assert comparable(before(rap)) == identity({**rap, "pilot": 0})  # before pilots, RAP used N in every cell
    assert comparable(before(rap)) != identity(rap)  # so staging on is another configuration
    assert comparable(before(attack)) == identity(attack) == identity({**attack, "pilot": 0})


def test_attack_sweep_refuses_to_add_points_on_other_role_models(tmp_path, monkeypatch):
    """An interrupted attack sweep resumed on a machine whose retrained role models differ must not add its
    points beside the old ones; on the same models it runs only the unfinished point."""
    import pyarrow as pa

    attack = type(analyses.get("attack"))
    machine = {"target": "a" * 64, "eval": "b" * 64, "generator": "d" * 64}
    # The points record no generator (as before manifests hashed it): a model a point did not record is not compared.
    models = lambda: {role: {"sha256": machine[role]} for role in ("target", "eval")}  # noqa: E731
    ran = []

    class Killed(Exception):
        pass

    def run_point(self, sweep, point, out, run_id, options, progress):  # the sweep loop under test, not BREP-MI
        if ran and ran[-1] == "interrupt":
            raise Killed
        ran.append(point["seed"])
        out.write_json({"status": "running", "models": models()}, run_id, "manifest.json")
        table = pa.table({"defense": ["rp"], "target": [0], "restart": [0], "success": [True], "utility_accuracy": [0.5]})
        out.write_parquet(table, run_id, "attack.parquet")
        out.write_json({"status": "complete", "models": models()}, run_id, "manifest.json")
        ran.append("interrupt")

    monkeypatch.setattr(attack, "run_point", run_point)
    monkeypatch.setattr(attack, "point_models", lambda self, sweep, point: dict(machine))
    spec = parse_sweep({"dataset": "digits", "analysis": "attack", "sigma": [0.5], "n": [20], "seed": [0, 1]})
    with pytest.raises(Killed):
        run_sweep(spec, out=tmp_path, sweep_id="sw", progress=False)
    assert ran == [0, "interrupt"]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    machine["eval"] = "c" * 64  # another machine retrained the evaluator
    with pytest.raises(InputError, match=r"ran on other models \(target aaaaaaaa, eval bbbbbbbb\) than this "
                                         r"machine's \(target aaaaaaaa, eval cccccccc\)"):
        run_sweep(spec, out=tmp_path, sweep_id="sw", progress=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written
    machine["eval"] = "b" * 64
    ran.clear()
    run_sweep(spec, out=tmp_path, sweep_id="sw", progress=False)
    assert ran == [1, "interrupt"]
    # A point killed between its result file and its complete manifest is not finished: it runs again.
    point_manifest = tmp_path / "sw" / "sigma=0.5" / "n=20" / "alpha=0.001" / "seed=1" / "manifest.json"
    point_manifest.write_text(json.dumps({"status": "running", "models": models()}))
    ran.clear()
    run_sweep(spec, out=tmp_path, sweep_id="sw", progress=False)
    assert ran == [1, "interrupt"]
