"""The distinguishing audit: the distinguisher is honest, and on a linear model the audit measures the exact
advantage, never exceeds the sound bound, and is an ordinary resumable engine job."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from rpdist.cli.main import main
from rpdist.errors import InputError
from rpdist.privacy.audit import audit_spec, directions, release_key, run_audit
from rpdist.privacy.bounds import exact_tv
from rpdist.privacy.distinguish import family_lower, fit_and_score
from rpdist.privacy.mechanisms import mechanism

SIGMA = 0.5


def test_fitted_distinguisher_is_not_optimistic_on_identical_laws():
    """Two sides drawn from one law: the scored advantage's interval covers 0 in ~95% of repetitions
    (fitting and scoring on the same trials would sit well above 0)."""
    rng = np.random.default_rng(0)
    covered, in_sample = 0, []
    for _ in range(200):
        a, b = rng.integers(0, 3, size=400), rng.integers(0, 3, size=400)
        scored = fit_and_score(a, b)
        covered += scored.low <= 0 <= scored.high
        says_b = np.bincount(b, minlength=3) > np.bincount(a, minlength=3)
        in_sample.append(((~says_b[a]).sum() + says_b[b].sum()) / 800 - 0.5)
    # 95% two-sided interval: P[≥ 180 of 200 cover] is ≈ 0.99 even at the nominal 0.95 coverage
    assert covered >= 180
    assert np.mean(in_sample) > 0.01  # the optimism that the split removes is real


def test_fitted_distinguisher_recovers_tv_over_two_for_known_laws():
    rng = np.random.default_rng(1)
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.3, 0.3, 0.4])
    scored = fit_and_score(rng.choice(3, 4000, p=p), rng.choice(3, 4000, p=q))
    assert scored.low <= exact_tv(p, q) / 2 <= scored.high
    # k = 2: observations are multisets; the exact 2-fold TV of i.i.d. pairs is larger
    pairs = fit_and_score(rng.choice(3, (4000, 2), p=p), rng.choice(3, (4000, 2), p=q))
    assert pairs.advantage > scored.advantage


def test_release_keys_depend_on_every_part_and_nothing_else():
    keys = {release_key(i, p, n, r) for i in (0, 1) for p in ("x", "s0.5") for n in (100, 1000) for r in (0, 1)}
    assert len(keys) == 16 and all(0 <= k < 2**63 for k in keys)
    assert release_key(5, "r1", 1000, 7) == release_key(5, "r1", 1000, 7)


def test_gradient_direction_is_the_normal_on_a_linear_model(linear_model):
    X = linear_model.inputs_at_distances(np.array([0.4, -0.7, 1.5]))
    classes = linear_model.label(X)
    unit = directions(linear_model.module, X, classes, "gradient", seed=0, sigma=SIGMA)
    normal = linear_model.w / np.linalg.norm(linear_model.w)
    towards_boundary = -np.where(classes == 1, 1.0, -1.0)[:, None] * normal
    np.testing.assert_allclose(unit, towards_boundary, atol=1e-5)


def _linear_setup(tmp_path, linear_model, distances):
    X = linear_model.inputs_at_distances(np.asarray(distances))
    np.savez(tmp_path / "points.npz", X=X, y=linear_model.label(X))
    torch.jit.save(torch.jit.script(linear_model.module), str(tmp_path / "linear.pt"))
    return X


def _exact_advantage(row, linear_model, x):
    """On the linear model p_A(x) = Φ(|dist|/σ) and x' lies d closer to the boundary (may cross it)."""
    dist = abs(float(linear_model.signed_distance(x[None])[0]))
    mech = mechanism(row.release, n=int(row.n), alpha=0.001)
    p, p_other = norm.cdf(dist / SIGMA), norm.cdf((dist - row.distance) / SIGMA)
    return exact_tv(mech.probabilities(p), mech.probabilities(p_other)) / 2


@pytest.mark.slow
def test_audit_on_linear_model_measures_exact_advantage_within_the_bound(ray_session, tmp_path, linear_model):
    distances = [0.16, 0.4, -0.6, 1.2]  # in input units: 0.32σ (the example), 0.8σ, 1.2σ, 2.4σ
    X = _linear_setup(tmp_path, linear_model, distances)
    spec = audit_spec(dataset=str(tmp_path / "points.npz"), model=str(tmp_path / "linear.pt"), sigma=SIGMA,
                      n=(100, 1000), releases=("predict", "majority", "certify"), distances=(0.0, 0.25, 0.5, 1.0),
                      radius_fractions=(0.5, 1.0), trials=1000, split="all", limit=None, out=str(tmp_path / "out"),
                      run_id="lin", workers=1)
    table = run_audit(spec).table()
    assert len(table) > 60
    exact = np.array([_exact_advantage(r, linear_model, X[r.input_id]) for r in table.itertuples()])
    # the bound is sound for the true advantage (its certificate holds with prob ≥ 1 − α at every input)
    assert (table["bound"] >= exact - 1e-9).all()
    # and the audit never refutes it (family-wise: per-pair 95% intervals would flag ~2.5% by chance)
    assert not (family_lower(table["correct"], table["scored"], len(table)) > table["bound"]).any()
    # the audit measures the truth: 1000 scored trials give SD ≤ 0.016; 0.07 is > 4 SD plus fitting loss
    np.testing.assert_allclose(table["empirical_advantage"], exact, atol=0.07)
    # the example: PREDICT at N = 1,000 on the edge of a 0.32σ input's certified ball is far above α/2
    edge = table[(table["release"] == "predict") & (table["n"] == 1000) & (table["point"] == "r1")
                 & (table["input_id"] == 0)].iloc[0]
    assert edge["empirical_low"] > 0.15 > 100 * edge["alpha_half"]
    # distance 0 (a partner equal to x): nothing to tell apart
    null = table[table["point"] == "s0"]
    assert (null["empirical_low"] <= 0).mean() >= 0.9 and (null["bound"] < 1e-6).all()


@pytest.mark.slow
def test_interrupted_audit_resumes_to_the_same_result(ray_session, tmp_path, linear_model):
    _linear_setup(tmp_path, linear_model, [0.2, 0.5])
    options = dict(dataset=str(tmp_path / "points.npz"), model=str(tmp_path / "linear.pt"), sigma=SIGMA, n=(200,),
                   releases=("predict",), distances=(0.5,), radius_fractions=(1.0,), trials=1000, split="all",
                   limit=None, batch_size=500, workers=1)
    whole = run_audit(audit_spec(**options, out=str(tmp_path / "a"), run_id="whole"))
    parts = tmp_path / "b" / "cut" / "parts"

    def stop(unit, samples):  # interrupt once a chunk is on disk
        if list(parts.glob("*.parquet")):
            raise KeyboardInterrupt

    spec = audit_spec(**options, out=str(tmp_path / "b"), run_id="cut")
    with pytest.raises(KeyboardInterrupt):
        run_audit(spec, on_unit=stop)
    assert whole.manifest["details"]["chunks"] > len(list(parts.glob("*.parquet"))) > 0
    resumed = run_audit(spec)
    assert resumed.resumed_chunks > 0
    pd.testing.assert_frame_equal(resumed.table(), whole.table())
    with pytest.raises(InputError, match="trials 1000, now 300"):
        run_audit(audit_spec(**{**options, "trials": 300}, out=str(tmp_path / "b"), run_id="cut"))


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials: trials must be >= 2"),
    (["--distance", "-0.5"], "--distance: distances must be finite and >= 0"),
    (["--release", "argmax"], "--release: unknown release 'argmax'"),
    (["--direction", "up"], "--direction: unknown direction 'up'"),
    (["--n", "5"], "n=5 can never pass PREDICT's test"),
])
def test_bad_input_is_one_line_exit_two_and_writes_nothing(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "distinguish", "--dataset", "insurance", "--sigma", "0.5", "--out", str(tmp_path / "o"),
              *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_certify_reports_release_privacy_per_input_and_it_holds_on_a_linear_model(ray_session, linear_model):
    """advantage_at_radius and privacy_radius_tau… are the bounds of rpdist.privacy.bounds at each input's
    certificate, and on the linear model the exact advantage at the privacy radius is ≤ τ."""
    from rpdist.privacy.bounds import Certificate, advantage_bound
    from rpdist.smoothing.job import certify

    X = linear_model.inputs_at_distances(np.array([0.05, 0.16, 0.3, -0.5, 1.0]))
    df = certify(linear_model.module, X, sigma=SIGMA, n=1000, alpha=0.001, advantage=(0.1, 0.05), queries=(1, 4),
                 workers=1)
    assert {"advantage_at_radius", "privacy_radius_tau0.05", "privacy_radius_tau0.1", "advantage_at_radius_k4",
            "privacy_radius_tau0.05_k4"} <= set(df.columns)
    mech = mechanism("predict", n=1000, alpha=0.001)
    for (_, row), x in zip(df.iterrows(), X):
        cert = Certificate.from_counts(row["count_top"], 1000, 0.001, two_sided=False)
        assert row["advantage_at_radius"] == advantage_bound(mech, cert, row["radius"], SIGMA).advantage
        r05, r10 = row["privacy_radius_tau0.05"], row["privacy_radius_tau0.1"]
        assert r05 <= r10  # a larger τ allows a larger distance
        assert row["privacy_radius_tau0.05_k4"] <= r05  # more queries, less privacy
        dist = abs(float(linear_model.signed_distance(x[None])[0]))
        for d, tau in ((r05, 0.05), (r10, 0.1)):
            p, p_other = norm.cdf(dist / SIGMA), norm.cdf((dist - d) / SIGMA)
            assert exact_tv(mech.probabilities(p), mech.probabilities(p_other)) / 2 <= tau + 1e-9
