"""Model extraction: the attack is real (a linear target is copied), abstentions are never labels, and bad
input is refused."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from rpdist.analyses.extraction import mean_interval
from rpdist.attacks.extraction import attack_setting, extraction_spec, training_set
from rpdist.cli.main import main
from rpdist.models.refs import ModelRef


def test_abstentions_are_dropped_not_used_as_labels():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    labels = np.array([1, -1, 0, -1, 1, 0])
    X_train, y_train, abstained = training_set(X, labels)
    assert abstained == 2 and (y_train >= 0).all()
    np.testing.assert_array_equal(X_train, X[[0, 2, 4, 5]])


def test_mean_interval_is_the_student_t_interval_clipped_to_shares():
    values = np.array([0.8, 0.85, 0.9, 0.82, 0.88])
    mean, low, high = mean_interval(values)
    ref_low, ref_high = sps.t.interval(0.95, 4, loc=values.mean(), scale=sps.sem(values))
    assert mean == pytest.approx(values.mean()) and (low, high) == pytest.approx((ref_low, ref_high))
    assert mean_interval([0.99, 1.0, 0.97])[2] == 1.0


def _linear_setup(linear_model, rng, count):
    X = rng.normal(size=(count, len(linear_model.w))).astype(np.float32)
    example = X[:1]
    import torch

    ref = ModelRef.from_module(linear_model.module, torch.from_numpy(example))
    return X, ref


@pytest.mark.slow
def test_student_of_the_undefended_linear_release_recovers_its_boundary(linear_model):
    rng = np.random.default_rng(0)
    queries, ref = _linear_setup(linear_model, rng, 800)
    X_test = rng.normal(size=(500, len(linear_model.w))).astype(np.float32)
    spec = extraction_spec(dataset="insurance", defense="none", student="linear", seeds=1, query_budgets=(10, 800))
    setting = dict(sigma=float("nan"), n=0, epsilon=float("nan"), release="label")
    rows = attack_setting(spec, setting, ref, linear_model.module, (X_test, linear_model.label(X_test)), 0, queries)
    small, large = rows
    assert large["fidelity_target"] >= 0.95 and large["fidelity_release"] == large["fidelity_target"]
    assert large["fidelity_target"] > small["fidelity_target"] - 0.02
    assert large["abstained"] == 0 and large["utility_accuracy"] == 1.0


@pytest.mark.slow
def test_rp_predict_release_abstains_and_the_student_never_sees_an_abstain(ray_session, linear_model, monkeypatch):
    import rpdist.attacks.extraction as extraction

    seen = []
    original = extraction.train_student
    monkeypatch.setattr(extraction, "train_student", lambda arch, X, y, classes, seed: seen.append(y.copy())
                        or original(arch, X, y, classes, seed))
    rng = np.random.default_rng(1)
    queries, ref = _linear_setup(linear_model, rng, 300)
    queries = queries * 0.2  # near the boundary: PREDICT at N = 50 abstains often
    X_test = rng.normal(size=(200, len(linear_model.w))).astype(np.float32)
    spec = extraction_spec(dataset="insurance", defense="rp", student="linear", seeds=1, query_budgets=(300,),
                           workers=1)
    setting = dict(sigma=1.0, n=50, epsilon=float("nan"), release="predict")
    (row,) = attack_setting(spec, setting, ref, linear_model.module, (X_test, linear_model.label(X_test)), 0,
                            queries)
    assert row["abstained"] > 30 and row["forward_passes"] == 300 * 50
    assert len(seen[0]) == 300 - row["abstained"] and (seen[0] >= 0).all()


@pytest.mark.parametrize("args, message", [
    (["--query-budget", "0"], "--query-budget: a query budget must be >= 1"),
    (["--query-source", "web"], "--query-source: unknown query source 'web'"),
    (["--student", "resnet"], "--student: unknown student architecture 'resnet'"),
    (["--query-budget", "100000"], "exceeds the public pool"),
])
def test_bad_input_is_one_line_exit_two_and_writes_nothing(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["attack", "extraction", "--dataset", "insurance", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_student_weights_do_not_depend_on_the_thread_count():
    """Students train on one thread: with torch's default (the core count) a 64-feature MLP's weights
    differed by up to 1e-3 between 1 and 2 threads, so results depended on the machine."""
    import torch

    from rpdist.attacks.extraction import train_student

    rng = np.random.default_rng(0)
    X, y = rng.random((300, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 300)
    before = torch.get_num_threads()
    weights = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model = train_student("mlp", X, y, 10, seed=0)
        assert torch.get_num_threads() == threads  # the caller's setting is restored
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])
