"""Model inversion: data roles, the BREP-MI state machine, and the end-to-end runner on 2 classes."""

import re
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import binomtest
import torch

from rpdist.attacks import roles
from rpdist.attacks.brep import BrepAttack, BrepConfig, majority, run_lockstep
from rpdist.datasets.catalog import load_dataset


def test_roles_split_is_disjoint_deterministic_and_covers_train():
    a, b = roles.roles_split(), roles.roles_split()
    assert np.array_equal(a["private"], b["private"])
    assert not set(a["private"]) & set(a["public"])
    train = load_dataset(roles.DATASET, split="train")
    assert np.array_equal(np.sort(np.concatenate([a["private"], a["public"]])), np.arange(len(train)))
    assert abs(len(a["private"]) - len(a["public"])) <= 1
    for role in ("private", "public"):  # role_data returns exactly those rows of the train split
        X, y = roles.role_data(role)
        assert np.array_equal(X, train.X[a[role]]) and np.array_equal(y, train.y[a[role]])


def test_majority_counts_abstain_and_breaks_ties_low():
    labels = np.array([3, 3, 1, -1, -1, 2, 5, 4, 4])
    assert majority(labels, 3).tolist() == [3, -1, 4]
    assert majority(np.array([2, 1]), 2).tolist() == [1]
    assert majority(np.array([7, -1, 0]), 1).tolist() == [7, -1, 0]


class HalfSpace:
    """Labels 1 where the first latent coordinate (carried in pixel 0) is > 1, else 0; counts queries."""

    def __init__(self):
        self.forward_passes = 0
        self.ids = []

    def __call__(self, images, ids):
        self.forward_passes += len(images)
        self.ids.extend(ids.tolist())
        return (images[:, 0] > 1.0).astype(np.int64)


def test_brep_moves_away_from_the_boundary_and_counts_queries_exactly():
    release = HalfSpace()
    attacks = [BrepAttack(1, r, 4, BrepConfig(budget=200, points=8, radius=0.3), seed=0) for r in range(2)]
    run_lockstep(attacks, lambda z: z.copy(), release)
    assert sum(a.queries for a in attacks) == release.forward_passes  # undefended: one pass per query
    assert len(set(release.ids)) == len(release.ids)  # fresh: every query has its own id
    for a in attacks:
        assert a.found and a.queries <= 200
        assert a.queries > 200 - 8  # stops only when the next round would exceed the budget
        assert a.accepted > 0
        assert a.result()[0] > 1.5  # pushed deep into the class region, away from the boundary at 1
        assert 1.0 < a.starting_point()[0] < a.result()[0]  # the walk began inside, nearer the boundary


def test_repeat_spends_k_queries_per_point():
    release = HalfSpace()
    a = BrepAttack(1, 0, 4, BrepConfig(budget=150, points=8, repeat=3), seed=1)
    run_lockstep([a], lambda z: z.copy(), release)
    assert a.queries == release.forward_passes and a.queries % 3 == 0 and a.queries <= 150


def test_rounds_report_every_query_they_spend():
    release, rounds = HalfSpace(), []
    attacks = [BrepAttack(1, r, 4, BrepConfig(budget=150, points=8, repeat=3), seed=r) for r in range(2)]
    run_lockstep(attacks, lambda z: z.copy(), release, rounds.append)
    assert len(rounds) > 2 and all(q > 0 for q in rounds)  # one report per release call
    assert sum(rounds) == sum(a.queries for a in attacks) == release.forward_passes  # repetitions included


@pytest.mark.slow
def test_as_finished_tracks_the_tally_bounds_the_tasks_running_and_returns_their_results(ray_session):
    from rpdist.distributed.tally import Tally, as_finished, tally_flush
    from rpdist.reporting.progress import SampleProgress

    @ray_session.remote(num_cpus=0)
    def work(tally, steps: list[int]) -> int:
        for q in steps:
            tally.add.remote(q)
        tally_flush(tally)
        return sum(steps)

    for total, expected in ((100, 21), (10, 10)):  # the bar stops at its total, whatever the tasks add
        tally = ray_session.remote(num_cpus=0)(Tally).remote()
        meter = SampleProgress(total, "walks", enabled=False, unit="queries")
        starts = [lambda s=s, tally=tally: work.remote(tally, s) for s in ([1, 2, 3], [4, 5, 6])]
        assert dict(as_finished(starts, 2, tally, meter, 0.05)) == {0: 6, 1: 15}
        assert meter.done == expected

    @ray_session.remote(num_cpus=0)
    class Running:
        def __init__(self):
            self.now = self.most = 0

        def change(self, by: int) -> int:
            self.now += by
            self.most = max(self.most, self.now)
            return self.most

    @ray_session.remote(num_cpus=0)
    def held(running) -> None:
        ray_session.get(running.change.remote(1))
        time.sleep(0.2)
        ray_session.get(running.change.remote(-1))

    for at_once in (1, 2):
        running = Running.remote()
        finished = [i for i, _ in as_finished([lambda running=running: held.remote(running)] * 4, at_once)]
        assert sorted(finished) == [0, 1, 2, 3]
        assert ray_session.get(running.change.remote(0)) <= at_once


def test_unreachable_class_is_a_failure_with_the_budget_spent():
    class Never(HalfSpace):
        def __call__(self, images, ids):
            super().__call__(images, ids)
            return np.zeros(len(images), dtype=np.int64)

    a = BrepAttack(3, 0, 4, BrepConfig(budget=100, init_batch=32), seed=0)
    run_lockstep([a], lambda z: z.copy(), Never())
    assert not a.found and a.queries == 96


@pytest.fixture(scope="module")
def quick():
    """Few generator epochs keep the session's (empty) model cache cheap to fill."""
    return dict(targets=[0, 1], generator_epochs=40, points=8)


@pytest.mark.slow
def test_undefended_inversion_writes_rows_grid_and_exact_counts(ray_session, tmp_path, quick, monkeypatch):
    from rpdist.attacks import inversion
    from rpdist.attacks.inversion import InversionSpec, run_inversion

    captured = []  # the attacks as the runner got them back, to judge their points independently
    real_attack_release = inversion.attack_release

    def recording(*args, **kwargs):
        out = real_attack_release(*args, **kwargs)
        captured.append(out[0])
        return out

    monkeypatch.setattr(inversion, "attack_release", recording)
    # Class 4: the judge rejects the walk's start but accepts its end, so the verdicts below tell the two apart.
    outcome = run_inversion(InversionSpec(defense="none", query_budget=120, out=str(tmp_path), run_id="none", seed=0,
                                          **{**quick, "targets": [0, 4]}))
    df = pq.read_table(tmp_path / "none" / "attack.parquet").to_pandas()
    for column in ("defense", "sigma", "n", "epsilon", "release", "target", "success", "eval_confidence", "queries",
                   "forward_passes", "utility_accuracy"):
        assert column in df.columns
    assert sorted(df.target) == [0, 4]
    assert (df.queries <= 120).all() and (df.forward_passes == df.queries).all()
    assert df.found.all()
    assert df.utility_accuracy.iloc[0] > 0.9
    tests = len(roles.role_data("test")[1])  # utility is measured on the whole test split, and says on how many
    assert (df.utility_tests == tests).all()
    assert df.utility_accuracy.iloc[0] * tests == pytest.approx(round(df.utility_accuracy.iloc[0] * tests), abs=1e-9)
    # The manifest names the grid relative to itself, so a committed or moved run still points at it.
    assert outcome.manifest["details"]["reconstructions"] == "reconstructions.png"
    assert (tmp_path / "none" / "reconstructions.png").stat().st_size > 1000
    assert (df.success == (df.eval_prediction == df.target)).all()
    # eval_prediction and start_success are the judge's verdicts on the final and on the starting latent.
    (attacks,) = captured
    assert [(a.target, a.restart) for a in attacks] == list(zip(df.target, df["restart"]))
    judge = roles.eval_model().load("cpu")
    decode = inversion._decoder(roles.generator(epochs=quick["generator_epochs"]))
    with torch.inference_mode():
        final = judge(torch.from_numpy(decode(np.stack([a.result() for a in attacks])))).argmax(1).numpy()
        start = judge(torch.from_numpy(decode(np.stack([a.starting_point() for a in attacks])))).argmax(1).numpy()
    assert df.eval_prediction.tolist() == final.tolist()
    assert df.start_success.tolist() == [bool(a.found and s == a.target) for a, s in zip(attacks, start)]
    assert all(not np.array_equal(a.starting_point(), a.result()) for a in attacks)  # the walk moved
    pd.testing.assert_frame_equal(outcome.table(), df)
    (row,) = outcome.summary  # one defense setting: ASR and its Clopper–Pearson interval over the 2 targets
    assert row["asr"] == df.success.mean() and row["targets"] == 2
    assert row["asr_low"] <= row["asr"] <= row["asr_high"]
    exact = binomtest(int(df.success.sum()), 2).proportion_ci(0.95, method="exact")  # scipy's Clopper–Pearson
    assert (row["asr_low"], row["asr_high"]) == pytest.approx((exact.low, exact.high), abs=1e-9)


@pytest.mark.slow
def test_rp_inversion_goes_through_the_engine_with_both_releases(ray_session, tmp_path, quick, capsys):
    from rpdist.attacks.inversion import InversionSpec, run_inversion

    df = run_inversion(InversionSpec(defense="rp", sigmas=[0.25], ns=[20], releases=["predict", "majority"],
                                     query_budget=60, workers=1, out=str(tmp_path), run_id="rp", seed=0, **quick),
                       progress=True).table()
    # The walks report their queries as they go, against the whole budget: 60 for each attack of a release.
    budget = len(df) // 2 * 60
    shown = [int(q) for q in re.findall(rf"(\d+)/{budget} queries", capsys.readouterr().out)]
    assert sorted(shown) == sorted(df.groupby("release").queries.sum().tolist())
    assert set(df.release) == {"predict", "majority"}
    assert (df.forward_passes == df.queries * 20).all()  # fresh noise: N evaluations per released label
    assert (df.queries <= 60).all()
    # Utility is measured on the test split with query ids 0..len-1: both releases see the same votes;
    # majority releases their top class, predict the same class where the vote is significant, else −1.
    from rpdist.smoothing.job import predict

    X, y = roles.role_data("test")
    votes = predict(roles.target_model(), X, sigma=0.25, n=20, alpha=0.001, seed=0,
                    input_ids=np.arange(len(X), dtype=np.int64), workers=1)
    significant = votes.p_value.to_numpy() <= 0.001
    assert 0 < significant.sum() < len(X)  # N=20 leaves some votes undecided, so the releases differ
    assert np.array_equal(votes.prediction, np.where(significant, votes.top_class, -1))
    util = df.groupby("release").utility_accuracy.first()
    assert util["majority"] == pytest.approx((votes.top_class.to_numpy() == y).mean())
    assert util["predict"] == pytest.approx((votes.prediction.to_numpy() == y).mean())  # abstain = wrong
    assert util["predict"] < util["majority"]


class Stop(Exception):
    """Stands in for a kill: raised once a given number of classes has been saved."""


@pytest.mark.slow
def test_an_interrupted_attack_resumes_with_the_classes_left_and_writes_what_one_session_writes(
        ray_session, tmp_path, quick, monkeypatch):
    """Two configs × three classes, one class at a time, stopped after four were saved: the rerun attacks
    only the two classes left, with the seed and the keyed-noise key the first session drew (the key kept
    at 0600 in the cache until the run completes), and its table is that of an uninterrupted run; a finished
    run is returned as it is; a run started on other models is refused."""
    import json
    import stat

    from rpdist.attacks import inversion
    from rpdist.attacks.parts import AttackParts
    from rpdist.defenses.releases import KEY_ENV
    from rpdist.errors import InputError
    from rpdist.io.rundir import RunDir

    spec = dict(defense="rr", epsilons=[1.0, 8.0], query_budget=60, restarts=2, targets_at_once=1, noises=["keyed"],
                **{**quick, "targets": [0, 1, 2]})
    real_save, real_attack = AttackParts.save, inversion.attack_release
    saved, attacked = [], []

    def stopping(self, config, target, *args):
        real_save(self, config, target, *args)
        saved.append((config, target))
        if len(saved) == 4:
            raise Stop

    def recording(release, targets, *args, **kwargs):
        attacked.append(list(targets))
        return real_attack(release, targets, *args, **kwargs)

    monkeypatch.setattr(AttackParts, "save", stopping)
    monkeypatch.setattr(inversion, "attack_release", recording)
    with pytest.raises(Stop):
        inversion.run_inversion(inversion.InversionSpec(out=str(tmp_path), run_id="cut", **spec))
    first = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert first["status"] == "running" and first["details"]["seed_source"] == "random"
    assert first["details"]["noise_key"]["source"] == "generated" and first["details"]["random_noise_keys"] == 1
    kept = inversion.key_store(RunDir(str(tmp_path), "cut", "attack.parquet"))
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_bytes() not in json.dumps(first).encode()
    (tmp_path / "key").write_bytes(kept.read_bytes())
    assert not (tmp_path / "cut" / "attack.parquet").exists()
    assert saved == [(0, 0), (0, 1), (0, 2), (1, 0)]

    # Another model under the saved classes: refused, and nothing written.
    moved = {**first, "models": {**first["models"], "eval": {"sha256": "0" * 64}}}
    (tmp_path / "cut" / "manifest.json").write_text(json.dumps(moved))
    before = sorted(p.name for p in (tmp_path / "cut" / "parts").iterdir())
    with pytest.raises(InputError, match="another eval model"):
        inversion.run_inversion(inversion.InversionSpec(out=str(tmp_path), run_id="cut", **spec))
    assert sorted(p.name for p in (tmp_path / "cut" / "parts").iterdir()) == before
    (tmp_path / "cut" / "manifest.json").write_text(json.dumps(first))
    # Another key than the kept one it drew: refused, and nothing written.
    monkeypatch.setenv(KEY_ENV, "another key of enough length")
    with pytest.raises(InputError, match=f"another noise key \\(check value {first['details']['noise_key']['check']}"):
        inversion.run_inversion(inversion.InversionSpec(out=str(tmp_path), run_id="cut", **spec))
    monkeypatch.delenv(KEY_ENV)
    assert sorted(p.name for p in (tmp_path / "cut" / "parts").iterdir()) == before
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text()) == first

    attacked.clear()
    resumed = inversion.run_inversion(inversion.InversionSpec(out=str(tmp_path), run_id="cut",
                                                              **{**spec, "targets_at_once": 2}))
    assert attacked == [[1, 2]]  # config 0 was done; of config 1, class 0 was
    assert resumed.manifest["details"]["seed"] == first["details"]["seed"]
    assert resumed.manifest["details"]["noise_key"]["source"] == "stored"
    assert resumed.manifest["details"]["random_noise_keys"] == 1
    assert not (tmp_path / "cut" / "parts").exists() and not kept.exists()
    whole = inversion.run_inversion(inversion.InversionSpec(out=str(tmp_path), run_id="whole", **{
        **spec, "seed": first["details"]["seed"], "noise_key_file": str(tmp_path / "key")}))
    same = [c for c in whole.table().columns if c != "seconds"]
    pd.testing.assert_frame_equal(resumed.table()[same], whole.table()[same])
    assert (resumed.table().seconds > 0).all()

    attacked.clear()
    again = inversion.run_inversion(inversion.InversionSpec(out=str(tmp_path), run_id="cut", **spec))
    assert attacked == []
    pd.testing.assert_frame_equal(pd.DataFrame(again.summary), pd.DataFrame(resumed.summary))


@pytest.mark.slow
def test_an_attack_sweep_point_stopped_midway_resumes_to_the_rows_of_an_uninterrupted_sweep(
        ray_session, tmp_path, quick, monkeypatch):
    from rpdist.attacks.parts import AttackParts
    from rpdist.pipelines.sweep import parse_sweep, read_sweep, run_sweep

    spec = parse_sweep({"dataset": "digits", "analysis": "attack", "defense": "rp", "release": "predict",
                        "sigma": [0.5], "n": [20], "seed": [0], "query_budget": 60, "restarts": 2,
                        "targets": [0, 1, 2, 3], "generator_epochs": quick["generator_epochs"]})
    real_save, saved = AttackParts.save, []

    def stopping(self, *args):
        real_save(self, *args)
        saved.append(args[:2])
        if len(saved) == 2:
            raise Stop

    monkeypatch.setattr(AttackParts, "save", stopping)
    with pytest.raises(Stop):
        run_sweep(spec, out=tmp_path, sweep_id="cut", progress=False, targets_at_once=1)
    monkeypatch.setattr(AttackParts, "save", real_save)
    run_sweep(spec, out=tmp_path, sweep_id="cut", progress=False, targets_at_once=2)
    run_sweep(spec, out=tmp_path, sweep_id="whole", progress=False)
    cut, whole = (read_sweep(tmp_path / name).to_pandas().drop(columns="seconds") for name in ("cut", "whole"))
    assert saved == [(0, 0), (0, 1)] and len(cut) == 8
    pd.testing.assert_frame_equal(cut, whole)


def test_cli_refuses_unknown_defense(tmp_path):
    from rpdist.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["attack", "inversion", "--defense", "nope", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_judge_takes_the_evaluators_top1_only_when_confident():
    from rpdist.attacks.inversion import UNJUDGED, verdicts

    prob = np.array([[0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.34, 0.33, 0.33]])
    assert verdicts(prob, 0.0).tolist() == [0, 1, 0]
    assert verdicts(prob, 0.5).tolist() == [0, 1, UNJUDGED]  # the threshold itself is enough
    assert verdicts(prob, 0.6).tolist() == [UNJUDGED, 1, UNJUDGED]


def test_prior_abstention_counts_each_class_released_and_judged(benchmark_script):
    """benchmarks/prior_abstention.py: a draw counts for class c when released as c, and as judged only when the
    judge also says c (−2 = below its threshold); test recall is per true class, abstentions (−1) count as misses."""
    module = benchmark_script("prior_abstention")
    released = np.array([0, 0, 1, -1, 2, 0, -1, 1])
    judge = np.array([0, -2, 1, 1, 0, 0, -2, 2])
    y_test = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3, 3])
    test_released = np.array([0, -1, 1, 1, 2, -1, 0, 3, 3, -1])
    out = module.per_class(released, judge, test_released, y_test)
    assert [out[c]["released"] for c in range(4)] == [3, 2, 1, 0]
    assert [out[c]["released_and_judged"] for c in range(4)] == [2, 1, 0, 0]
    assert out[0]["share"] == pytest.approx(3 / 8) and out[1]["share_judged"] == pytest.approx(1 / 8)
    assert [out[c]["test_recall"] for c in range(4)] == pytest.approx([1 / 2, 1.0, 1 / 3, 2 / 3])
    # the judge is the committed reproductions': top-1 on digits, confidence 0.9 on mnist5k
    assert (module.judge_threshold("digits"), module.judge_threshold("mnist5k")) == (0.0, 0.9)
