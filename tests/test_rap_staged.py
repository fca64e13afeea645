"""Staged PREDICT over the RAP grid: pilots settle far cells soundly, and change no summary."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta as beta_dist

from rpdist.errors import InputError
from rpdist.privacy.mechanisms import Predict
from rpdist.privacy.rap import rap_analysis
from rpdist.privacy.staged import ABSTAIN, UNSETTLED, settle, stage_sizes
from tests.oracle import LinearOracle


def test_stages_grow_tenfold_below_n_and_refuse_nonsense():
    assert stage_sizes(1000, 100_000) == [1000, 10_000]
    assert stage_sizes(1000, 10_000) == [1000]
    assert stage_sizes(1000, 1000) == [] and stage_sizes(0, 100_000) == []  # no pilot can save anything
    assert stage_sizes(300, 100_000) == [300, 3000, 30_000]
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(InputError, match="pilot must be"):
            stage_sizes(bad, 1000)


def test_settled_cells_hold_their_output_at_their_true_probability():
    """Draw pilot counts at known p, settle, and check the exact P_N[settled output](p) ≥ 1 − ε.

    A settled cell can be wrong only if p lies outside its two-sided Clopper–Pearson interval, an
    event of probability ≤ β per cell. With β = 0.02 over 60,000 cells concentrated on the band
    where PREDICT's outputs switch (|p − ½| ≤ 0.12 at N = 100,000), at most 1,200 misses are
    expected and far fewer land where it matters; the test allows 2β of the settled cells (the
    binomial upper tail beyond that is < 1e-30). Mutation: settling on the plug-in p̂ alone (an
    interval of width 0) gives thousands of cells whose output has probability < 1 − ε.
    """
    n, pilot, beta, epsilon = 100_000, 1000, 0.02, 1e-6
    mechanism = Predict(n, 0.001)
    rng = np.random.default_rng(11)
    p = 0.5 + rng.uniform(-0.12, 0.12, size=60_000)
    k = rng.binomial(pilot, p)
    settled = settle(mechanism, np.stack([k, pilot - k], axis=1), beta, epsilon)
    exact = mechanism.probabilities(p)
    column = np.where(settled == ABSTAIN, 2, np.clip(settled, 0, 1))
    held = exact[np.arange(len(p)), column] >= 1 - epsilon
    done = settled != UNSETTLED
    assert done.sum() > 10_000  # the pilot does settle cells far enough out
    assert (~held[done]).sum() <= 2 * beta * done.sum()
    # At the default β = 1e-6, cells inside the switching band are never settled (5 sd away; about
    # 0.002 expected among these 5,000), and settled cells lie on their own side.
    settled = settle(mechanism, np.stack([k, pilot - k], axis=1))
    done = settled != UNSETTLED
    assert not done[np.abs(p - 0.5) < 0.01].any()
    assert np.all(settled[done & (p > 0.5)] == 0) and np.all(settled[done & (p < 0.5)] == 1)
    # No sample, no decision; a count far from ½ settles at the defaults too.
    assert settle(mechanism, np.array([[0, 0], [990, 10], [10, 990], [500, 500]])).tolist() == [UNSETTLED, 0, 1,
                                                                                                  UNSETTLED]


def test_settling_with_the_true_interval_not_the_plug_in(monkeypatch):
    """The interval, not p̂, decides: at p̂ = 0.56 from 1,000 samples the 1e-6 interval reaches below
    0.5 + PREDICT's margin at N = 100,000, so the cell must stay open; at 0.60 it is settled."""
    mechanism = Predict(100_000, 0.001)
    low = beta_dist.ppf(0.5e-6, 560, 441)
    assert low < 0.5 and mechanism.probabilities(0.56)[0] == pytest.approx(1.0)
    assert settle(mechanism, np.array([[560, 440], [600, 400]])).tolist() == [UNSETTLED, 0]


@pytest.mark.slow  # 8-11 s: the full suite runs it, the fast subset stays under a minute
def test_selection_counts_are_disjoint_stages_not_predict_samples(ray_session):
    """Consecutive stages add up to one longer selection phase, and none of it is PREDICT's noise."""
    from rpdist import predict
    from rpdist.smoothing.job import selection_counts

    oracle = LinearOracle(weights=[1.0, 0.0], bias=0.0)
    X = np.zeros((20, 2), dtype=np.float32)  # on the boundary: every count is a fair coin's
    ids = np.arange(100, 120)
    first = selection_counts(oracle.module, X, sigma=1.0, n=1000, input_ids=ids, seed=4)
    second = selection_counts(oracle.module, X, sigma=1.0, n=1000, first_block=1, input_ids=ids, seed=4)
    both = selection_counts(oracle.module, X, sigma=1.0, n=2000, input_ids=ids, seed=4)
    assert np.array_equal(first + second, both) and first.shape == (20, 3) and not both[:, 2].any()
    pred = predict(oracle.module, X, sigma=1.0, n=1000, input_ids=ids, seed=4)
    # Two independent Bin(1000, ½) agree with probability 0.025; 20 agreeing inputs out of 20 would
    # mean shared noise (ids sharing streams would agree on all).
    assert (np.stack(pred["counts"].to_numpy())[:, 0] == first[:, 0]).sum() <= 4
    assert (first[:, 0] == second[:, 0]).sum() <= 4
    with pytest.raises(InputError, match="first block"):
        selection_counts(oracle.module, X, sigma=1.0, n=10, first_block=-1, input_ids=ids)


@pytest.mark.slow
def test_staged_run_matches_the_unstaged_run_on_a_linear_model(ray_session):
    """Every cell no pilot settles, and every true value, gets the unstaged run's own N samples, and a
    settled cell's likelihood is within ε = 1e-6 of 0 or 1: so releases, compatible sets and posteriors
    agree with the unstaged run (posteriors to 1e-4 BMI, far below their Monte Carlo error), on a
    fraction of the samples. Mutation: settling on the plug-in p̂ (a zero-width interval) changes
    released cells inside the band, and the compatible lengths with them."""
    oracle = LinearOracle(weights=[2.0, 0.3, -0.2, 0.1], bias=0.1)
    rng = np.random.default_rng(7)
    X = rng.normal(size=(12, 4)).astype(np.float32)
    X[:, 0] = np.clip(X[:, 0], -2.2, 2.8)
    sample = np.random.default_rng(8).normal(31.0, 6.0, size=1200)
    kwargs = dict(prior=sample, column=0, attribute="a", mean=30.0, scale=6.0, sigma=0.5, n=20_000, n0=100,
                  alpha=0.001, grid_step=0.5, seed=2)
    ids = np.arange(len(X))
    staged, curve_s = rap_analysis(oracle.module, X, oracle.label(X), ids, pilot=200, **kwargs)
    full, curve_f = rap_analysis(oracle.module, X, oracle.label(X), ids, pilot=0, **kwargs)
    s = staged[staged["release_model"] == "smoothed"].set_index("input_id")
    f = full[full["release_model"] == "smoothed"].set_index("input_id")
    assert (s["released_label"] == f["released_label"]).all()
    assert np.array_equal(s["compatible_length"], f["compatible_length"])
    for column in ("posterior_mean", "posterior_hdi_length", "posterior_true_ratio"):
        assert np.allclose(s[column], f[column], rtol=0, atol=1e-4), column
    assert np.array_equal(curve_s["positive_rate"], curve_f["positive_rate"])
    grid_points = int(s["grid_points"].iloc[0])
    assert (f["settled_cells"] == 0).all() and (f["grid_samples"] == 20_000 * (grid_points + 1)).all()
    assert (s["settled_cells"] > grid_points / 2).all()  # most of the grid is far from the boundary
    assert s["grid_samples"].sum() < 0.15 * f["grid_samples"].sum()  # measured: 6.1%
    assert (staged.loc[staged["release_model"] == "base", "grid_samples"] == 0).all()


@pytest.mark.slow
def test_a_model_with_more_than_two_classes_is_not_staged(ray_session):
    """No posterior is served for three classes, so nothing is settled: every point gets the unstaged
    run's N samples (the same releases), after one wasted pilot on the first slice only."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Linear(3, 3)
    X = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    kwargs = dict(prior=np.random.default_rng(2).normal(30.0, 6.0, size=500), column=0, attribute="a", mean=30.0,
                  scale=6.0, sigma=0.5, n=3000, n0=100, alpha=0.001, grid_step=4.0, seed=1, grid_batch=20)
    staged, _ = rap_analysis(module, X, None, np.arange(4), pilot=1000, **kwargs)
    full, _ = rap_analysis(module, X, None, np.arange(4), pilot=0, **kwargs)
    assert np.array_equal(staged["released_label"], full["released_label"])
    smoothed = staged[staged["release_model"] == "smoothed"]
    assert smoothed["posterior_hdi_length"].isna().all() and (smoothed["settled_cells"] == 0).all()
    grid_points = int(smoothed["grid_points"].iloc[0])
    assert grid_points + 1 == 10  # so the first slice of 20 points holds two inputs' grids, and one pilot each
    assert smoothed["grid_samples"].sum() == 4 * 3000 * (grid_points + 1) + 1000 * 2 * grid_points
