"""Sequential certification: the confidence sequence's validity and the engine's sequential rounds.

The stats tests run on numpy alone. Validity is checked where it is hardest: p_A exactly at the
threshold Φ(r/σ), where every "certified" is false; the assertion uses the Clopper–Pearson upper
bound of the observed false-certify rate, so it fails only if the data show a rate above α.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import beta, norm

from rpdist.errors import InputError
from rpdist.smoothing import sequential as seq
from rpdist.smoothing import stats

SIGMA = 0.5


def _upper(count: int, total: int, confidence_alpha: float = 1e-3) -> float:
    return stats.clopper_pearson(count, total, confidence_alpha)[1]


@pytest.mark.parametrize("k, n, p", [(3, 10, 0.2), (40, 50, 0.6), (0, 7, 0.3), (12, 12, 0.9), (500, 900, 0.52)])
def test_log_mixture_is_the_beta_mixture_likelihood_ratio(k, n, p):
    """log M_n(p) against numerical integration of the Jeffreys mixture (scipy quad)."""
    prior = beta(0.5, 0.5)

    def ratio(q):  # the likelihood ratio q vs p, in logs so that n = 900 does not underflow
        return math.exp(k * math.log(q / p) + (n - k) * math.log((1 - q) / (1 - p))) * prior.pdf(q)

    mixture, _ = integrate.quad(ratio, 0, 1, limit=500, points=[k / n], epsabs=0, epsrel=1e-10)
    expected = math.log(mixture)
    assert seq.log_mixture(k, n, p) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_bounds_are_the_ends_of_the_confidence_set():
    """M ≥ 1/α just outside (L, U), < 1/α just inside, and decide() agrees with comparing θ to (L, U)."""
    rng = np.random.default_rng(3)
    n = rng.integers(1, 5000, 300)
    k = rng.binomial(n, rng.uniform(0, 1, 300))
    alpha = 0.001
    lower, upper = seq.cs_bounds(k, n, alpha)
    level = math.log(1 / alpha)
    inside = (lower + 1e-9 < k / n) & (upper - 1e-9 > k / n)
    assert (seq.log_mixture(k, n, np.maximum(lower - 1e-9, 1e-300))[k > 0] >= level).all()
    assert (seq.log_mixture(k, n, lower + 1e-9)[inside] < level).all()
    assert (seq.log_mixture(k, n, np.minimum(upper + 1e-9, 1 - 1e-16))[k < n] >= level).all()
    radii = np.array([0.1, 0.25, 0.5])
    theta = norm.cdf(radii / SIGMA)
    for i in range(len(k)):
        got = seq.decide(k[i : i + 1], n[i], radii, SIGMA, alpha)[0]
        want = np.where(lower[i] > theta, 1, np.where(upper[i] < theta, -1, 0))
        near = (np.abs(lower[i] - theta) < 1e-9) | (np.abs(upper[i] - theta) < 1e-9)
        assert (got == want)[~near].all(), (k[i], n[i], got, want)


@pytest.mark.parametrize("mode, alpha", [(seq.SEQUENTIAL, 0.01), (seq.SEQUENTIAL, 0.001), (seq.STAGED, 0.01)])
def test_false_certify_rate_at_the_threshold_is_at_most_alpha(mode, alpha):
    """10^5 streams with p_A exactly Φ(r/σ) for the middle of three target radii: certifying it (or
    the larger one) is false. The upper 99.9% Clopper–Pearson bound of the rate must stay ≤ α."""
    radii = [0.1, 0.25, 0.5]
    p = norm.cdf(0.25 / SIGMA)
    looks = seq.look_points(10_000, 32, mode)
    state, used, _ = seq.simulate(np.full(100_000, p), radii, SIGMA, alpha, looks, mode,
                                  rng=np.random.default_rng(7))
    false = int((state[:, 1] == 1).sum())
    assert (state[:, 2] == 1).sum() <= false  # certifying r = 0.5 implies certifying r = 0.25
    assert _upper(false, len(state)) <= alpha, (false, len(state))


@pytest.mark.slow
def test_false_certify_rate_of_the_adaptive_radius_is_at_most_alpha():
    """Adaptive mode's certified radius σΦ⁻¹(L) exceeds the true radius with probability ≤ α."""
    alpha, true_radius = 0.01, 0.25
    p = np.full(100_000, norm.cdf(true_radius / SIGMA))
    looks = seq.look_points(4_000, 32, seq.ADAPTIVE)
    rng = np.random.default_rng(11)
    k = np.zeros(len(p))
    best = np.zeros(len(p))
    previous = 0
    for look in looks:  # the running max of L over every look: the largest radius ever reported
        k += rng.binomial(look - previous, p)
        best = np.maximum(best, seq.cs_bounds(k, look, alpha)[0])
        previous = look
    false = int((seq.radius_of(best, SIGMA) > true_radius).sum())
    assert _upper(false, len(p)) <= alpha, false


def test_easy_inputs_decide_within_a_few_looks():
    """Power: p_A = 0.999 against θ = Φ(0.5) ≈ 0.69 is certified at the first or second look, and
    p_A = 0.3 is futile as fast; p_A near θ runs longer (the price of the gap, not of the method)."""
    looks = seq.look_points(100_000, 32, seq.SEQUENTIAL)
    for p, want in ((0.999, 1), (0.3, -1)):
        state, used, stopped = seq.simulate(np.full(2000, p), [0.25], SIGMA, 0.001, looks)
        assert (state[:, 0] == want).mean() == 1.0 and stopped.all()
        assert np.median(used) <= 64, np.median(used)
    _, used_near, _ = seq.simulate(np.full(2000, norm.cdf(0.5) + 0.02), [0.25], SIGMA, 0.001, looks)
    assert np.median(used_near) > 1000


def test_bounds_of_repeated_pairs_equal_each_pairs_own_bounds():
    """cs_bounds bisects each distinct (k, n) once and scatters back: the result must be the
    element-wise one, in the input's shape."""
    rng = np.random.default_rng(3)
    n = rng.choice([32, 64, 96], size=(40, 3))
    k = rng.binomial(n, 0.8)
    lower, upper = seq.cs_bounds(k, n, 0.01)
    assert lower.shape == upper.shape == (40, 3)
    for i, j in np.ndindex(*k.shape):
        one = seq.cs_bounds(k[i, j], n[i, j], 0.01)
        assert (lower[i, j], upper[i, j]) == (float(one[0]), float(one[1]))


def test_staged_bounds_are_clopper_pearson_at_alpha_over_k():
    k, n = np.array([5, 90, 100]), np.array([100, 100, 100])
    lower, upper = seq.staged_bounds(k, n, 0.001, 4)
    np.testing.assert_allclose(lower, stats.cp_lower(k, n, 0.001 / 4))
    np.testing.assert_allclose(upper, 1 - stats.cp_lower(n - k, n, 0.001 / 4))
    assert seq.look_points(100_000, 100, seq.STAGED) == [100, 1000, 10_000, 100_000]


def test_looks_are_geometric_block_boundaries():
    looks = seq.look_points(100_000, 32, seq.SEQUENTIAL)
    assert looks[0] == 32 and looks[-1] == 100_000
    assert all(b % 32 == 0 for b in looks[:-1]) and all(b > a for a, b in zip(looks, looks[1:]))
    assert all(b / a <= seq.LOOK_GROWTH + 32 / a for a, b in zip(looks[:-1], looks[1:-1]))


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(target_radius=[0.0]), "target radius must be"),
    (dict(target_radius=[-0.1]), "target radius must be"),
    (dict(target_radius=[1.5], max_n=100), "can never certify radius 1.5"),
    (dict(mode="adaptive", radius_tolerance=0.0), "radius tolerance must be"),
    (dict(mode="adaptive", radius_tolerance=-1.0), "radius tolerance must be"),
    (dict(mode="adaptive"), "needs --radius-tolerance"),
    (dict(target_radius=[0.25], n=1000, max_n=2000), "disagree"),
    (dict(target_radius=[0.25], mode="bogus"), "mode must be"),
    (dict(mode="staged"), "needs at least one --target-radius"),
    (dict(target_radius=[0.25], look_growth=1.0), "look growth must be > 1"),
    (dict(look_growth=1.1), "applies to sequential runs"),
])
def test_bad_sequential_input_is_refused_before_any_work(kwargs, fragment):
    from rpdist.smoothing.job import certify

    with pytest.raises(InputError, match=fragment):
        certify(None, np.zeros((2, 3), dtype=np.float32), sigma=SIGMA, **kwargs)


# --- the engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle():
    from tests.oracle import LinearOracle

    return LinearOracle(dim=5, seed=0)


def _sequential(oracle, X, workers, **kwargs):
    from rpdist.smoothing.job import certify

    return certify(oracle.module, X, oracle.label(X), sigma=SIGMA, alpha=0.001, seed=4, batch_size=512,
                   workers=workers, **kwargs)


@pytest.mark.slow  # 8-11 s: the full suite runs it, the fast subset stays under a minute
def test_no_input_is_certified_beyond_its_true_radius(ray_session, oracle):
    """On the linear oracle p_A = Φ(d/σ) exactly: no certified radius (decided or reported) exceeds d,
    easy inputs stop early, and the samples column matches the counts."""
    d = np.concatenate([np.linspace(0.02, 1.0, 30), -np.linspace(0.02, 1.0, 30)]) * SIGMA
    X = oracle.inputs_at_distances(d, seed=5)
    radii = [0.125, 0.25]
    df = _sequential(oracle, X, 1, target_radius=radii, max_n=4000)
    true = np.abs(oracle.signed_distance(X))
    certified = df["prediction"].to_numpy() >= 0
    assert (df["prediction"][certified] == oracle.label(X)[certified]).all()
    assert (df["radius"].to_numpy() <= true + 1e-12).all()
    assert (df["radius_decided"].to_numpy() <= true + 1e-12).all()
    assert (df["radius_decided"] <= df["radius"] + 1e-12).all()
    assert (df["counts"].map(sum) + df["nonfinite"] == df["samples_used"]).all()
    far = true > 0.9 * SIGMA
    assert (df["decision"][far] == "certified").all() and (df["samples_used"][far] <= 512).all()
    assert set(df["decision"]) <= {"certified", "not_certified", "undecided"}


@pytest.mark.slow
def test_sequential_results_are_identical_for_one_and_two_workers(ray_session, oracle):
    d = np.linspace(-0.8, 0.8, 40) * SIGMA
    X = oracle.inputs_at_distances(d, seed=6)
    for kwargs in (dict(target_radius=[0.1, 0.2], max_n=3000), dict(mode="adaptive", radius_tolerance=0.1,
                                                                     max_n=3000)):
        one = _sequential(oracle, X, 1, **kwargs)
        two = _sequential(oracle, X, 2, **kwargs)
        assert one.equals(two), kwargs


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["--target-radius", "0"], "target radius must be"),
    (["--target-radius", "-0.2"], "target radius must be"),
    (["--target-radius", "2", "--max-n", "50"], "can never certify radius 2"),
    (["--mode", "adaptive", "--radius-tolerance", "0"], "radius tolerance must be"),
    (["--target-radius", "0.25", "--n", "1000", "--max-n", "5000"], "disagree"),
    (["--target-radius", "0.25", "--radius-tolerance", "0.1"], "only to --mode adaptive"),
    (["--target-radius", "0.25", "--look-growth", "0.9"], "look growth must be > 1"),
    (["--look-growth", "1.1"], "applies to sequential runs"),
])
def test_bad_sequential_options_exit_2_with_one_line_and_no_output(tmp_path, capsys, args, fragment):
    from tests.test_cli import run_cli

    code, out, err = run_cli(["certify", "--dataset", "insurance", "--sigma", "0.5", "--out", str(tmp_path / "out"),
                              *args], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rpdist: error:") and fragment in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_sequential_run_writes_table_and_manifest(ray_session, tmp_path, capsys):
    import json

    import pyarrow.parquet as pq

    from tests.test_cli import run_cli

    args = ["certify", "--dataset", "insurance", "--sigma", "0.5", "--target-radius", "0.125", "--max-n", "2000",
            "--limit", "24", "--workers", "1", "--out", str(tmp_path), "--run-id", "seq", "--quiet"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    table = pq.read_table(tmp_path / "seq" / "sequential-certificates.parquet").to_pandas()
    manifest = json.loads((tmp_path / "seq" / "manifest.json").read_text())
    samples = manifest["details"]["samples"]
    assert manifest["analysis"] == "certify-sequential" and manifest["status"] == "complete"
    assert samples["used"] == table["samples_used"].sum() + 24 * 100
    assert samples["naive_at_max_n"] == 24 * (100 + 2000) and samples["waste"] >= 0
    assert samples["forward_samples"] == samples["used"] + samples["waste"]  # rounds span looks: blocks past a stop
    assert "mean samples per input" in out
    assert manifest["config"]["sequential"]["growth"] == seq.LOOK_GROWTH
    again = run_cli(args, capsys)  # a finished run is returned as it is
    assert again[0] == 0
    code, _, err = run_cli([*args, "--look-growth", "1.1"], capsys)  # another look schedule: not the same run
    assert code == 2 and "growth" in err, err
