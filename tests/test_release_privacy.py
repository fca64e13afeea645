"""Privacy of the deployed release (issue 11): exact output laws and sound advantage bounds, checked
against a linear oracle whose smoothed probability is known in closed form. Torch- and Ray-free.

On a linear classifier with x at signed distance b from the boundary (class A on the positive side),
p_A(x) = Φ(b/σ), and moving x by t along the normal gives p_A = Φ((b − t)/σ): every x' within d
reaches exactly the band Φ((b ± d)/σ). The exact advantage against the worst x' is the largest
TV/2 between the mechanism's exact output laws at x and at such an x'.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from rpdist.errors import InputError
from rpdist.privacy import bounds
from rpdist.privacy.bounds import Certificate, advantage_bound, exact_product_tv, exact_tv, privacy_radius
from rpdist.privacy.mechanisms import Certify, Majority, Predict, mechanism
from rpdist.smoothing import stats


def exact_linear_advantage(mech, b, d, sigma, k=1, points=41):
    """max over x' within d of TV(M(x)^k, M(x')^k)/2 on the linear oracle (a grid of x' on the
    normal through x, endpoints included: the worst x' lies on it, and for k = 1 at an endpoint)."""
    law_x = mech.probabilities(norm.cdf(b / sigma))
    shifts = np.linspace(-d, d, points)
    laws = mech.probabilities(norm.cdf((b - shifts) / sigma))
    if k == 1:
        return max(exact_tv(law_x, q) for q in laws) / 2
    return max(exact_product_tv(law_x, q, k) for q in laws) / 2


def certificates(mech_n, p, alpha):
    """What a deployment could hold at x: the truth, CERTIFY's one-sided p̲, a two-sided interval.

    The counts are round(N·p), for which the intervals cover p (asserted): the 1 − α event."""
    count = round(mech_n * p)
    out = [Certificate.exact(p), Certificate.from_counts(count, mech_n, alpha, two_sided=False),
           Certificate.from_counts(count, mech_n, alpha)]
    for c in out:
        assert c.lower <= p <= c.upper
    return out


# --- the issue's worked example --------------------------------------------------------------------


def test_issue_example_reproduces_and_alpha_over_two_is_false():
    n, alpha, sigma = 1000, 0.001, 1.0
    mech = Predict(n, alpha)
    p = norm.cdf(0.32)  # x at 0.32σ from a linear boundary
    cert = Certificate.from_counts(626, n, alpha, two_sided=False)  # CERTIFY count round(N·p) = 626
    r = stats.radius(cert.lower, sigma).item()  # x's certified radius
    assert r == pytest.approx(0.1955, abs=1e-4)
    at_x, at_edge = mech.probabilities(p), mech.probabilities(norm.cdf(0.32 - r / sigma))
    assert round(at_x[0], 3) == 1.000 and round(at_edge[0], 3) == 0.426
    assert exact_tv(at_x, at_edge) == pytest.approx(0.574, abs=5e-4)
    exact = exact_linear_advantage(mech, 0.32, r, sigma)
    assert exact == pytest.approx(0.287, abs=5e-4)
    assert alpha / 2 < exact  # the number rpdist used to print
    # The sound bound dominates it; with p known exactly it is tight.
    assert advantage_bound(mech, cert, r, sigma).advantage >= exact
    tight = advantage_bound(mech, Certificate.exact(p), r, sigma)
    assert exact <= tight.advantage <= exact + 1e-4 and tight.route == "lipschitz"


# --- soundness on the oracle -------------------------------------------------------------------------


CASES = [  # (mechanism, σ, b/σ): N and α through the mechanism
    (Predict(100, 0.01), 0.5, 0.8),
    (Predict(1000, 0.001), 1.0, 0.32),
    (Predict(1000, 0.001), 2.0, 1.0),
    (Predict(10_000, 0.001), 1.0, 0.1),
    (Predict(1000, 0.001), 1.0, -0.25),  # x on B's side: the worst x' moves B's output, not A's
    (Majority(100), 1.0, 0.2),
    (Majority(1000), 0.5, 0.05),
    (Certify(100, 1000, 0.001, sigma=1.0), 1.0, 0.5),
    (Certify(20, 200, 0.01, radius=0.2, sigma=0.5), 0.5, 0.9),
]


@pytest.mark.parametrize("mech, sigma, b_over_sigma", CASES, ids=lambda v: repr(v) if not isinstance(v, float) else None)
def test_bound_dominates_exact_advantage_on_linear_oracle(mech, sigma, b_over_sigma):
    b = b_over_sigma * sigma
    p = norm.cdf(b_over_sigma)
    for cert in certificates(mech.n, p, 0.001):
        for d in (0.003 * sigma, 0.03 * sigma, 0.15 * sigma, 0.6 * sigma):
            for k in (1, 3):
                exact = exact_linear_advantage(mech, b, d, sigma, k)
                got = advantage_bound(mech, cert, d, sigma, k=k)
                assert got.advantage >= exact - 1e-12, (cert, d, k, got, exact)
                assert got.gaussian_tv / 2 >= exact - 1e-12  # route 2 alone is sound too
                assert got.certified == mech.certified and got.k == k
                if cert.alpha == 0 and k == 1 and got.route == "lipschitz":
                    assert got.advantage <= exact + 1e-4  # tight when p_A(x) is known


def test_lipschitz_route_dominates_a_dense_search_over_the_interval():
    """Route 1 takes a supremum over every p_A(x) the certificate allows: it must not fall below a
    brute-force maximum over a dense grid of them (a grid maximiser without interval arithmetic would).
    The second case puts the supremum inside the interval, on a peak narrower than the search's first
    cells: only sound cell bounds make it split there."""
    for mech, cert, delta in ((Predict(10_000, 0.001), Certificate(0.52, 1.0, 0.001), 0.01),
                              (Predict(10_000, 0.001), Certificate(0.3, 1.0, 0.001), 0.01),
                              (Predict(1000, 0.001), Certificate(0.55, 0.7, 0.001), 0.02),
                              (Majority(2000), Certificate(0.45, 0.6, 0.001), 0.005)):
        u = np.linspace(norm.ppf(cert.lower), min(norm.ppf(cert.upper), 6.0), 20_001)
        at = mech.probabilities(norm.cdf(u))
        dense = max(np.abs(at - mech.probabilities(norm.cdf(u + s))).sum(-1).max() / 2 for s in (-delta, delta))
        got = bounds.lipschitz_tv(mech, cert, delta, 1.0)
        assert dense <= got <= dense + 2e-4


def test_gaussian_route_is_used_and_sound_when_the_certificate_is_weak():
    mech, sigma = Predict(1000, 0.001), 1.0
    weak = Certificate(0.5, 1.0, 0.001)  # certifies nothing
    d, k = 0.005, 20  # 20 queries: the coupling bound grows like k, route 2 like √k
    got = advantage_bound(mech, weak, d, sigma, k=k)
    assert got.route == "gaussian" and got.alpha == 0.0 and got.lipschitz_tv > got.gaussian_tv
    assert got.gaussian_tv == pytest.approx(2 * norm.cdf(d * math.sqrt(k * 1000) / 2) - 1)
    for b_over_sigma in (0.05, 0.09, 0.12):
        assert got.advantage >= exact_linear_advantage(mech, b_over_sigma, d, sigma, k=k, points=9)
    # More samples, weaker privacy on this route; k queries count k·N samples.
    assert bounds.gaussian_tv(0.01, 1.0, 10_000) > bounds.gaussian_tv(0.01, 1.0, 100)
    assert advantage_bound(mech, weak, 0.005, sigma, k=4).gaussian_tv == pytest.approx(bounds.gaussian_tv(0.005, 1, 4000))


def test_multiclass_bound_holds_for_any_split_of_the_other_classes():
    """Three classes, A = class 1 (so majority ties go against it): exact laws by enumerating every
    count vector through rpdist's own decision functions."""
    n, alpha, sigma, d = 30, 0.01, 1.0, 0.3
    counts = np.array([c for c in itertools.product(range(n + 1), repeat=2) if sum(c) <= n])
    counts = np.column_stack([counts[:, 0], counts[:, 1], n - counts.sum(1)])  # columns: B, A, C

    def log_pmf(probs):
        from scipy.special import gammaln

        lp = np.log(np.where(probs > 0, probs, 1.0))
        impossible = ((counts > 0) & (probs == 0)).any(1)
        total = gammaln(n + 1) - gammaln(counts + 1).sum(1) + (counts * lp).sum(1)
        return np.where(impossible, -np.inf, total)

    _, _, _, _, predicted = stats.predict_decision(counts, alpha)
    top = stats.predict_decision(counts, alpha)[0]

    def laws(probs):
        w = np.exp(log_pmf(probs))
        return ({o: w[predicted == o].sum() for o in (-1, 0, 1, 2)}, {o: w[top == o].sum() for o in (0, 1, 2)})

    p_a = 0.9
    cert = Certificate(p_a, 1.0, 0.0)
    for mech, which in ((Predict(n, alpha), 0), (Majority(n, a_is_lower=False), 1)):
        bound = bounds.lipschitz_tv(mech, cert, d, sigma, classes=3)
        edge = norm.cdf(norm.ppf(p_a) - d / sigma)
        for split_x, split_y in itertools.product((0.0, 0.5, 1.0), repeat=2):
            px = np.array([(1 - p_a) * split_x, p_a, (1 - p_a) * (1 - split_x)])
            py = np.array([(1 - edge) * split_y, edge, (1 - edge) * (1 - split_y)])
            lx, ly = laws(px)[which], laws(py)[which]
            tv = 0.5 * sum(abs(lx[o] - ly[o]) for o in lx)
            assert tv <= bound + 1e-12
            assert lx[1] >= mech.a_lower(p_a) - 1e-12 and ly[1] >= mech.a_lower(edge) - 1e-12


def test_k_fold_composition_is_sound_and_exact_for_one():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(3))
        assert exact_product_tv(p, q, 1) == pytest.approx(exact_tv(p, q))
        for k in (2, 5, 12):
            assert exact_product_tv(p, q, k) <= bounds.compose_tv(exact_tv(p, q), k) + 1e-12
            assert exact_product_tv(p, q, k) >= exact_tv(p, q) - 1e-12
    # Bernoulli check against a direct binomial computation.
    assert exact_product_tv([0.3, 0.7, 0], [0.5, 0.5, 0], 7) == pytest.approx(
        0.5 * np.abs(binom.pmf(range(8), 7, 0.3) - binom.pmf(range(8), 7, 0.5)).sum())


# --- exact output laws -------------------------------------------------------------------------------


def _simulate(mech, p, reps, rng, a_index):
    """Run the mechanism literally through rpdist's decision functions on sampled counts (2 classes);
    returns empirical [P[A], P[B], P[abstain]]."""
    def two_class(n, size):
        k_a = rng.binomial(n, p, size)
        return np.column_stack([k_a, n - k_a]) if a_index == 0 else np.column_stack([n - k_a, k_a])

    if isinstance(mech, Certify):
        top, _, pa, r, out = stats.certify_decision(two_class(mech.n0, reps), two_class(mech.n, reps), mech.n,
                                                    mech.alpha, mech.sigma)
        out = np.where(r >= mech.radius, out, -1) if mech.radius > 0 else out
    else:
        top, _, _, _, pred = stats.predict_decision(two_class(mech.n, reps), mech.alpha if isinstance(mech, Predict) else 0.5)
        out = pred if isinstance(mech, Predict) else top
    b_index = 1 - a_index
    return np.array([(out == a_index).mean(), (out == b_index).mean(), (out == -1).mean()])


@pytest.mark.parametrize("a_index", [0, 1])
def test_exact_probabilities_agree_with_monte_carlo(a_index):
    rng = np.random.default_rng(11 + a_index)
    reps = 20_000
    mechs = [Predict(50, 0.05), Majority(10, a_is_lower=a_index == 0), Majority(11, a_is_lower=a_index == 0),
             Certify(6, 60, 0.05, a_is_lower=a_index == 0), Certify(6, 60, 0.05, radius=0.3, sigma=1.0,
                                                                    a_is_lower=a_index == 0)]
    for mech in mechs:
        for p in (0.5, 0.62, 0.75, 0.35):
            exact = mech.probabilities(p)
            seen = _simulate(mech, p, reps, rng, a_index)
            budget = 5 * np.sqrt(exact * (1 - exact) / reps) + 1e-3
            assert np.all(np.abs(seen - exact) <= budget), (mech, p, seen, exact)


def test_exact_probabilities_agree_with_an_independent_scipy_sum():
    """Sum binomial pmfs over every count, deciding each count with stats' own rules (no thresholds)."""
    for n, alpha in ((40, 0.05), (1000, 0.001)):
        ks = np.arange(n + 1)
        pred = np.array([stats.predict_pvalue(k, n - k) <= alpha for k in ks])
        cert = stats.cp_lower(ks, n, alpha) > 0.5
        cert_r = stats.radius(stats.cp_lower(ks, n, alpha), 0.5) >= 0.1
        for p in (0.3, 0.5, 0.55, 0.6, 0.9):
            w = binom.pmf(ks, n, p)
            a, b = w[pred & (ks > n / 2)].sum(), w[pred & (ks < n / 2)].sum()
            np.testing.assert_allclose(Predict(n, alpha).probabilities(p), [a, b, 1 - a - b], atol=1e-12)
            maj = w[ks > n / 2].sum() + w[ks == n / 2].sum()  # ties to A (the lower index)
            np.testing.assert_allclose(Majority(n).probabilities(p), [maj, 1 - maj, 0], atol=1e-12)
            n0 = 10
            w0 = binom.pmf(np.arange(n0 + 1), n0, p)
            sel_a = w0[np.arange(n0 + 1) >= n0 / 2].sum()
            for mech, ok in ((Certify(n0, n, alpha), cert), (Certify(n0, n, alpha, radius=0.1, sigma=0.5), cert_r)):
                ca = sel_a * w[ok].sum()
                cb = (1 - sel_a) * w[ok[::-1]].sum()  # B's count is n − K_A
                np.testing.assert_allclose(mech.probabilities(p), [ca, cb, 1 - ca - cb], atol=1e-12)


def test_output_probabilities_are_monotone_in_p():
    grid = np.linspace(0, 1, 2001)
    for mech in (Predict(1000, 0.001), Predict(7, 0.05), Majority(100), Majority(7, a_is_lower=False),
                 Certify(100, 1000, 0.001), Certify(9, 100, 0.01, radius=0.5, sigma=1.0, a_is_lower=False)):
        pr = mech.probabilities(grid)
        assert np.all(np.diff(pr[:, 0]) >= -1e-12) and np.all(np.diff(pr[:, 1]) <= 1e-12)
        np.testing.assert_allclose(pr.sum(1), 1, atol=1e-12)
        assert np.all(mech.a_lower(grid) <= pr[:, 0] + 1e-12)
        assert np.all(np.diff(mech.a_lower(grid)) >= -1e-12)


# --- monotonicity, inversion, flags --------------------------------------------------------------------


def test_bounds_are_monotone_in_distance_and_radius_inverts_them():
    sigma = 1.0
    for mech, cert in ((Predict(1000, 0.001), Certificate.from_counts(626, 1000, 0.001, two_sided=False)),
                       (Majority(1000), Certificate.from_counts(700, 1000, 0.001)),
                       (Predict(100, 0.01), Certificate.from_counts(90, 100, 0.01))):
        ds = np.linspace(0, 0.5, 11)
        for k in (1, 5):
            values = [advantage_bound(mech, cert, d, sigma, k=k).advantage for d in ds]
            assert np.all(np.diff(values) >= -1e-4)  # the branch-and-bound tolerance
            assert values[0] == 0.0
            for tau in (0.02, 0.2):
                r = privacy_radius(mech, cert, sigma, tau, k=k, rtol=1e-3)
                assert 0 < r < math.inf
                assert advantage_bound(mech, cert, r, sigma, k=k).advantage <= tau
                assert advantage_bound(mech, cert, r * 1.01, sigma, k=k).advantage > tau
        assert privacy_radius(mech, cert, sigma, 0.5) == math.inf


def test_flags_and_bad_input():
    assert Predict(100, 0.01).certified and Certify(10, 100, 0.01).certified and not Majority(100).certified
    assert mechanism("majority", n=100).certified is False
    assert advantage_bound(Majority(100), Certificate(0.9), 0.1, 1.0).certified is False
    assert Certify(10, 100, 0.01).samples == 110 and Predict(100, 0.01).samples == 100
    # An (N, α) that can never decide releases nothing: no A, no B.
    assert Predict(5, 0.001).threshold is None
    np.testing.assert_allclose(Predict(5, 0.001).probabilities(0.99), [0, 0, 1])
    for bad in (lambda: Certificate(0.7, 0.6), lambda: mechanism("argmax", n=10), lambda: Predict(10, 0.0),
                lambda: Predict(10, 0.1).probabilities(1.5), lambda: advantage_bound(Predict(10, 0.1), Certificate(0.9), -1, 1),
                lambda: privacy_radius(Predict(10, 0.1), Certificate(0.9), 1.0, -0.1)):
        with pytest.raises(InputError):
            bad()


def test_per_input_columns_are_remembered_per_run_configuration():
    """``rpdist certify`` decides chunk by chunk; the columns of a count already seen under the same run
    configuration are reused, and a run that differs in any setting gets its own (checked against a
    direct computation for each)."""
    from rpdist.privacy import per_input

    counts = np.array([930, 990, 930, 1000])
    radius = np.array([0.5, 0.9, 0.5, 1.2])
    runs = [dict(n=1000, alpha=0.001, sigma=0.5, classes=2, release="predict"),
            dict(n=1000, alpha=0.001, sigma=1.0, classes=2, release="predict"),
            dict(n=1000, alpha=0.01, sigma=0.5, classes=2, release="predict"),
            dict(n=1000, alpha=0.001, sigma=0.5, classes=3, release="predict"),
            dict(n=1000, alpha=0.001, sigma=0.5, classes=2, release="majority")]
    for run in runs:
        mech = mechanism(run["release"], n=run["n"], alpha=run["alpha"], sigma=run["sigma"])
        before = per_input._columns.cache_info()
        got = per_input.release_privacy(counts, radius, advantage=(0.1,), queries=(1, 2), **run)
        middle = per_input._columns.cache_info()
        again = per_input.release_privacy(counts[:2], radius[:2], advantage=(0.1,), queries=(1, 2), **run)
        assert per_input._columns.cache_info().misses == middle.misses  # nothing recomputed
        assert middle.misses - before.misses <= 3  # the repeated (930, 0.5) computed once
        for name in again:
            assert np.array_equal(again[name], got[name][:2])
        for i, (count, r) in enumerate(zip(counts, radius)):
            cert = Certificate.from_counts(int(count), run["n"], run["alpha"], two_sided=False)
            assert got["advantage_at_radius_k2"][i] == advantage_bound(mech, cert, r, run["sigma"], 2,
                                                                       run["classes"]).advantage
            assert got["privacy_radius_tau0.1"][i] == privacy_radius(mech, cert, run["sigma"], 0.1, 1, run["classes"])
