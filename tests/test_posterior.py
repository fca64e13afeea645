"""The attribute adversary's posterior (pure numpy) and the bootstrap intervals of summaries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap, gaussian_kde, norm

from rpdist.errors import InputError
from rpdist.privacy.mechanisms import Predict
from rpdist.privacy.posterior import KdePrior, cells, check_level, hdi_length, posterior_summary, predict_likelihood
from rpdist.smoothing.stats import bootstrap_interval


def test_kde_prior_matches_scipy_and_integrates_exactly():
    sample = np.random.default_rng(0).normal(30, 6, size=800)
    prior = KdePrior(sample)
    ref = gaussian_kde(sample)  # Scott's rule: the same bandwidth
    assert prior.bandwidth == pytest.approx(float(np.sqrt(ref.covariance[0, 0])), rel=1e-12)
    for a, b in [(20.0, 21.0), (29.9, 30.0), (10.0, 50.0)]:
        assert prior.cdf(np.array([b]))[0] - prior.cdf(np.array([a]))[0] == pytest.approx(
            ref.integrate_box_1d(a, b), abs=1e-12)
    edges = np.linspace(15, 45, 31)
    masses = prior.cell_masses(edges)
    assert masses.sum() == pytest.approx(1.0)
    assert masses[15] / masses[0] == pytest.approx(ref.integrate_box_1d(30, 31) / ref.integrate_box_1d(15, 16))


def test_hdi_length_of_known_densities():
    edges = np.linspace(0, 10, 1001)
    uniform = np.full(1000, 1e-3)
    assert hdi_length(edges, uniform, 0.9) == pytest.approx(9.0, abs=1e-9)
    centres = 0.5 * (edges[1:] + edges[:-1])
    gauss = norm.pdf(centres, 5, 1) * 0.01
    # Highest-density region of N(5, 1) at 90%: ±1.645; the grid's resolution is 0.01.
    assert hdi_length(edges, gauss, 0.9) == pytest.approx(2 * norm.ppf(0.95), abs=0.02)
    # Two separated bumps: the region is their union, not the hull.
    two = norm.pdf(centres, 2, 0.3) + norm.pdf(centres, 8, 0.3)
    assert hdi_length(edges, two, 0.9) == pytest.approx(2 * 2 * 0.3 * norm.ppf(0.95), abs=0.02)
    # Fraction of the last cell: mass 0.5 on [0, 1] and 0.5 on [1, 3] at level 0.75 -> 1 + 0.5·2.
    assert hdi_length(np.array([0.0, 1.0, 3.0]), np.array([0.5, 0.5]), 0.75) == pytest.approx(2.0)


def test_base_posterior_is_the_prior_restricted_to_the_compatible_cells():
    prior = KdePrior(np.random.default_rng(1).normal(30, 6, size=600))
    grid = np.arange(16.0, 50.0, 0.5)
    s = 33.3
    values = np.append(grid, s)
    releases = (values >= 30).astype(float)
    post = posterior_summary(values, releases, len(values) - 1, prior, 0.9)
    order, edges = cells(values)
    masses = prior.cell_masses(edges)
    inside = values[order] >= 30
    centres = 0.5 * (edges[1:] + edges[:-1])
    expected_mean = (masses * centres)[inside].sum() / masses[inside].sum()
    assert post["mean"] == pytest.approx(expected_mean, rel=1e-12)
    assert post["abs_error"] == pytest.approx(abs(expected_mean - s))
    assert post["true_ratio"] == pytest.approx(1 / masses[inside].sum())
    assert post["hdi_length"] < 50 - 30  # less than the compatible length (20 BMI)


def test_predict_likelihood_is_the_exact_output_probability_at_the_plug_in():
    mech = Predict(1000, 0.001)
    counts = np.array([[1000, 0], [560, 440], [500, 500], [300, 700]])
    for label, column in [(0, 0), (1, 1), (-1, 2)]:
        got = predict_likelihood(mech, counts, label)
        assert np.allclose(got, mech.probabilities(counts[:, 0] / 1000)[:, column])
    assert predict_likelihood(mech, counts, 0)[0] == 1.0 and predict_likelihood(mech, counts, 0)[3] < 1e-50
    with pytest.raises(InputError):
        predict_likelihood(mech, np.ones((2, 3)), 0)


@pytest.mark.parametrize("level", [0, 1, -0.1, 1.5, float("nan"), True, "0.9"])
def test_level_outside_the_unit_interval_is_refused(level):
    with pytest.raises(InputError, match="posterior level"):
        check_level(level)


def test_bootstrap_interval_against_scipy_and_its_coverage():
    rng = np.random.default_rng(2)
    x = rng.exponential(size=150)
    ours = bootstrap_interval(x, np.median, resamples=4000, seed=3)
    ref = bootstrap((x,), np.median, n_resamples=4000, method="percentile", random_state=4).confidence_interval
    # Two independent 4,000-resample estimates of the same percentiles: they agree to a few
    # hundredths of the sample's spread (the Monte Carlo error of a 2.5% quantile of 4,000 draws).
    assert ours[0] == pytest.approx(ref.low, abs=0.04) and ours[1] == pytest.approx(ref.high, abs=0.04)
    assert bootstrap_interval(x, np.median, resamples=1000, seed=3) == bootstrap_interval(x, np.median,
                                                                                          resamples=1000, seed=3)
    # Coverage of the true median 0 of N(0, 1), n = 100, over 300 samples: ~95%; the binomial sd of
    # the rate is 1.3%, and the percentile interval of a median runs a little wide at this n.
    hits = 0
    for _ in range(300):
        low, high = bootstrap_interval(rng.normal(size=100), np.median, resamples=1000, seed=int(rng.integers(1 << 30)))
        hits += low <= 0 <= high
    assert 0.90 <= hits / 300 <= 0.99
    assert np.isnan(bootstrap_interval(np.array([np.nan]))[0])
    with pytest.raises(InputError):
        bootstrap_interval(x, level=1.0)
