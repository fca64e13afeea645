"""rpdist.smoothing.stats against scipy and against simulation: bounds, radii, feasibility and decisions."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import beta, binomtest, norm

from rpdist.smoothing import stats
from rpdist.errors import InputError

# --- Clopper–Pearson --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 10, 100, 1000, 100_000])
@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.001])
def test_cp_lower_is_the_beta_quantile(n, alpha):
    k = np.unique(np.linspace(1, n, 25).astype(np.int64))
    expected = beta.ppf(alpha, k, n - k + 1)
    np.testing.assert_array_equal(stats.cp_lower(k, n, alpha), expected)
    assert stats.cp_lower(0, n, alpha) == 0.0
    # k = n: Beta(n, 1) has CDF p^n, so its α-quantile is α^(1/n).
    assert stats.cp_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)


def test_cp_lower_is_monotone_in_k_and_below_the_estimate():
    n, alpha = 1000, 0.001
    k = np.arange(n + 1)
    lower = stats.cp_lower(k, n, alpha)
    assert lower[0] == 0.0
    assert np.all(np.diff(lower) > 0)
    assert np.all(lower[1:] < k[1:] / n)  # a lower bound sits below the point estimate
    assert np.all((lower >= 0) & (lower < 1))


def test_cp_lower_broadcasts_counts_against_n():
    counts = np.array([[5, 50], [500, 999]])
    n = np.array([1000, 1000])
    out = stats.cp_lower(counts, n, 0.01)
    assert out.shape == (2, 2)
    np.testing.assert_array_equal(out, beta.ppf(0.01, counts, 1000 - counts + 1))


CASES = [(p, n) for p in (0.05, 0.3, 0.5, 0.8, 0.99) for n in (50, 1000)]


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_cp_lower_coverage_by_simulation(alpha):
    """P[lower bound > p] ≤ α at every true p: CP is exact-conservative, so a higher observed
    failure rate than α plus sampling noise means a broken bound.

    With M draws, the failure count is Binomial(M, q) with q ≤ α, so its rate exceeds
    α + 4·sqrt(α(1−α)/M) with probability ≲ 3e-5 (4 standard deviations) per case; over the 10
    cases × 2 alphas the family-wise false-alarm chance stays below 1e-3 (and the seed is fixed).
    """
    rng = np.random.default_rng(20240501)
    draws = 40_000
    margin = 4 * math.sqrt(alpha * (1 - alpha) / draws)
    for p, n in CASES:
        bound = stats.cp_lower(np.arange(n + 1), n, alpha)  # the bound for every possible count
        k = rng.binomial(n, p, size=draws)
        failure = np.mean(bound[k] > p)
        assert failure <= alpha + margin, (p, n, failure)

    # The check has teeth: the Wald bound p̂ − z·sqrt(p̂(1−p̂)/n) badly under-covers near p = 0.99
    # at n = 50 (it is ≥ p whenever all 50 votes agree, which happens with probability 0.99^50 ≈ 0.6).
    n, p = 50, 0.99
    k = rng.binomial(n, p, size=draws)
    phat = k / n
    wald = phat - norm.ppf(1 - alpha) * np.sqrt(phat * (1 - phat) / n)
    assert np.mean(wald > p) > alpha + margin


# --- radius -----------------------------------------------------------------------------------


def test_radius_is_sigma_times_probit_and_zero_at_or_below_half():
    pa = np.array([0.0, 0.3, 0.5, 0.5000001, 0.7, 0.99, 0.999999])
    sigma = 0.37
    r = stats.radius(pa, sigma)
    certified = pa > 0.5
    np.testing.assert_array_equal(r[~certified], 0.0)
    np.testing.assert_array_equal(r[certified], sigma * norm.ppf(pa[certified]))
    assert np.all(r[certified] > 0)
    assert r.dtype == np.float64


@pytest.mark.parametrize("n, expected", [(1000, 2.46), (10_000, 3.20), (100_000, 3.81)])
def test_max_radius_matches_design_table(n, expected):
    # α^(1/N) at α = 0.001: N=1k → Φ⁻¹(0.993116) = 2.4633; 10k → 3.1986 (3.20 to two decimals,
    # as DESIGN states); 100k → 3.8115.
    assert round(stats.max_radius(n, 0.001), 2) == expected
    assert stats.max_radius(n, 0.001, sigma=0.25) == pytest.approx(0.25 * stats.max_radius(n, 0.001), rel=1e-15)
    assert stats.max_radius(n, 0.001) == float(norm.ppf(0.001 ** (1 / n)))


# --- feasibility ------------------------------------------------------------------------------


def test_min_samples_to_certify_at_design_alpha():
    assert stats.min_samples_to_certify(0.001) == 10
    with pytest.raises(InputError, match="n >= 10"):
        stats.check_feasible(9, 0.001)
    stats.check_feasible(10, 0.001)
    assert stats.cp_lower(10, 10, 0.001) > 0.5 >= stats.cp_lower(9, 9, 0.001)


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.25, 0.1, 0.05, 0.01, 0.001, 2.0**-9, 2.0**-10, 1e-6, 1e-9])
def test_min_samples_are_the_exact_thresholds(alpha):
    """Smallest N whose unanimous vote certifies (CP) or passes PREDICT's test (binomtest)."""
    n = stats.min_samples_to_certify(alpha)
    assert stats.cp_lower(n, n, alpha) > 0.5
    assert n == 1 or stats.cp_lower(n - 1, n - 1, alpha) <= 0.5
    m = stats.min_samples_to_predict(alpha)
    assert binomtest(m, m, 0.5).pvalue <= alpha
    assert m == 1 or binomtest(m - 1, m - 1, 0.5).pvalue > alpha
    stats.check_predict_feasible(m, alpha)
    if m > 1:
        with pytest.raises(InputError, match="PREDICT"):
            stats.check_predict_feasible(m - 1, alpha)


def test_min_samples_to_predict_at_design_alpha():
    # A unanimous vote of N has two-sided p-value 2·2^−N: 2/1024 > 0.001 ≥ 2/2048.
    assert stats.min_samples_to_predict(0.001) == 11


# --- PREDICT ----------------------------------------------------------------------------------


def test_predict_pvalues_are_scipy_binomtest():
    rng = np.random.default_rng(3)
    counts = rng.multinomial(200, [0.5, 0.3, 0.15, 0.05], size=50)
    counts[:5] = [[100, 100, 0, 0], [0, 0, 0, 200], [120, 80, 0, 0], [0, 7, 190, 3], [1, 1, 1, 197]]
    top, c1, c2, pvalues, prediction = stats.predict_decision(counts, 0.01)
    for row, p_value in zip(counts, pvalues):
        a, b = np.sort(row)[::-1][:2]
        assert p_value == binomtest(int(a), int(a + b), 0.5).pvalue
    np.testing.assert_array_equal(c1, counts.max(axis=1))
    np.testing.assert_array_equal(counts[np.arange(len(counts)), top], c1)
    np.testing.assert_array_equal(prediction, np.where(pvalues <= 0.01, top, stats.ABSTAIN))
    assert prediction[1] == 3 and prediction[3] == 2 and prediction[4] == 3
    assert (prediction != stats.ABSTAIN).any() and (prediction == stats.ABSTAIN).any()


def test_predict_ties_abstain_and_go_to_the_lower_class():
    counts = np.array([[50, 50, 0], [10, 45, 45], [0, 0, 1000], [500, 0, 500]])
    top, c1, c2, pvalues, prediction = stats.predict_decision(counts, 0.5)
    np.testing.assert_array_equal(top, [0, 1, 2, 0])
    np.testing.assert_array_equal(prediction, [stats.ABSTAIN, stats.ABSTAIN, 2, stats.ABSTAIN])
    assert pvalues[0] == pvalues[1] == pvalues[3] == 1.0
    assert stats.predict_pvalue(0, 0) == 1.0


def test_predict_single_class_model():
    top, c1, c2, pvalues, prediction = stats.predict_decision(np.array([[20], [5]]), 0.001)
    np.testing.assert_array_equal(c2, [0, 0])
    np.testing.assert_array_equal(prediction, [0, stats.ABSTAIN])  # 2·2^−20 ≤ 0.001 < 2·2^−5


# --- CERTIFY ----------------------------------------------------------------------------------


def test_certify_decision_uses_selection_for_the_class_and_estimation_for_the_bound():
    n, alpha, sigma = 1000, 0.001, 0.5
    selection = np.array([[60, 40], [3, 97], [100, 0]])
    estimation = np.array([[10, 990], [2, 998], [990, 10]])
    top, count_top, pa, r, prediction = stats.certify_decision(selection, estimation, n, alpha, sigma)
    # Row 0: selection says class 0, estimation overwhelmingly says class 1. The class must come
    # from selection and its bound from estimation's count for *that* class (10 of 1000): abstain.
    # Using estimation for the class would certify class 1; using selection's 60 for the bound
    # would give a different p̲A. Either mistake changes these values.
    np.testing.assert_array_equal(top, [0, 1, 0])
    np.testing.assert_array_equal(count_top, [10, 998, 990])
    np.testing.assert_array_equal(pa, beta.ppf(alpha, count_top, n - count_top + 1))
    np.testing.assert_array_equal(r, np.where(pa > 0.5, sigma * norm.ppf(pa), 0.0))
    np.testing.assert_array_equal(prediction, [stats.ABSTAIN, 1, 0])
    assert r[0] == 0.0 and r[1] > r[2] > 0


def test_certify_label_certifies_the_given_label_against_scipy():
    counts = np.array([[880, 120], [300, 700], [500, 500], [10, 990]])
    labels = np.array([0, 0, -1, 1])  # the second asks for the minority class, the third for nothing
    count_top, pa, r, prediction = stats.certify_label(labels, counts, 1000, 0.001, 0.5)
    assert count_top.tolist() == [880, 300, 0, 990]
    assert pa[0] == pytest.approx(beta.ppf(0.001, 880, 121), abs=1e-12)
    assert r[0] == pytest.approx(0.5 * norm.ppf(pa[0]), abs=1e-12)
    assert prediction.tolist() == [0, -1, -1, 1] and r[1] == 0 and r[2] == 0
    # With the selection's argmax as the label it is CERTIFY itself.
    assert np.array_equal(stats.certify_decision(counts, counts, 1000, 0.001, 0.5)[3],
                          stats.certify_label(counts.argmax(axis=1), counts, 1000, 0.001, 0.5)[2])


def test_certify_decision_abstains_at_exactly_one_half():
    # One unanimous vote at α = 1/2: p̲A = α^(1/1) = 0.5 exactly, which is not > 1/2.
    top, count_top, pa, r, prediction = stats.certify_decision(np.array([[1, 0]]), np.array([[1, 0]]), 1, 0.5, 1.0)
    assert pa[0] == 0.5 and r[0] == 0.0 and prediction[0] == stats.ABSTAIN
    *_, prediction = stats.certify_decision(np.array([[0, 2]]), np.array([[0, 2]]), 2, 0.5, 1.0)
    assert prediction[0] == 1  # p̲A = 0.5^(1/2) ≈ 0.707


def test_certify_decision_selection_ties_go_to_the_lower_class():
    top, *_ = stats.certify_decision(np.array([[5, 5, 0], [0, 7, 7]]), np.array([[900, 100, 0], [0, 100, 900]]),
                                     1000, 0.01, 1.0)
    np.testing.assert_array_equal(top, [0, 1])


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, True, "0.5", None, np.float32("nan")])
def test_check_sigma_refuses(sigma):
    with pytest.raises(InputError, match="sigma"):
        stats.check_sigma(sigma)


@pytest.mark.parametrize("sigma", [0.25, 1, np.float64(0.5), np.float32(0.5), np.int64(2)])
def test_check_sigma_accepts_real_scalars(sigma):
    assert stats.check_sigma(sigma) == float(sigma)
    assert type(stats.check_sigma(sigma)) is float


@pytest.mark.parametrize("alpha", [0, 0.0, 1, 1.0, -0.1, 1.5, math.nan, math.inf, True, False, "0.01", None])
def test_check_alpha_refuses(alpha):
    with pytest.raises(InputError, match="alpha"):
        stats.check_alpha(alpha)


@pytest.mark.parametrize("alpha", [1e-12, 0.001, np.float64(0.05), np.float32(0.01), 0.999])
def test_check_alpha_accepts(alpha):
    assert stats.check_alpha(alpha) == float(alpha)


@pytest.mark.parametrize("n", [0, -1, True, False, 1.0, 10.5, "10", None, np.float64(10)])
def test_check_count_refuses(n):
    with pytest.raises(InputError, match="n must be a whole number"):
        stats.check_count(n, "n")
    with pytest.raises(InputError):
        stats.check_feasible(n, 0.001)


def test_check_count_accepts_integers():
    assert stats.check_count(1, "n") == 1
    assert stats.check_count(np.int64(7), "n") == 7
    assert type(stats.check_count(np.int32(7), "n")) is int


def test_feasibility_validates_alpha_too():
    for bad in (0, 1, math.nan):
        with pytest.raises(InputError, match="alpha"):
            stats.check_feasible(100, bad)
        with pytest.raises(InputError, match="alpha"):
            stats.check_predict_feasible(100, bad)


def test_stats_imports_neither_torch_nor_ray():
    code = "import sys, rpdist.smoothing.stats; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("count, n", [(0, 1), (0, 10), (3, 10), (10, 10), (17, 40), (999, 1000)])
def test_two_sided_clopper_pearson_matches_scipy(count, n):
    from scipy.stats import binomtest

    exact = binomtest(count, n).proportion_ci(0.95, method="exact")
    assert stats.clopper_pearson(count, n, 0.05) == pytest.approx((exact.low, exact.high), abs=1e-9)
