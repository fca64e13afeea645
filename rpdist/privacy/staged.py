"""Staged PREDICT over an attribute grid: settle the cells far from the boundary on small pilots.

The Bayes adversary's posterior needs, at every grid cell, PREDICT's probability of each output at
that cell's class probability p (:mod:`rpdist.privacy.posterior`). Away from the decision boundary
that probability is 0 or 1 to many digits, and N = 100,000 samples there only confirm it. So a
cell first gets a pilot of ``pilot`` samples, then 10× that, … (each stage below N, each from
fresh selection-phase noise: no stage reuses the samples that sent a cell on to it). After each
stage the two-sided Clopper–Pearson interval [p̲, p̄] of p (miscoverage ``beta``) either *settles*
the cell, when one output o has P_N[o] ≥ 1 − ``epsilon`` at every p in the interval, or passes it
on. A cell no stage settles gets N PREDICT samples, exactly those of an unstaged run (same ids,
same PREDICT-phase noise), so its release and counts are bit-identical to one.

A settled cell's release is o, and its counts are its last pilot's, whose plug-in p̂ lies in the
interval: its likelihood P_N[L](p̂) for any released L is within ``epsilon`` of the true one
(P[A] rises and P[B] falls with p; P[abstain] is unimodal in p, so its minimum over an interval is
at an end). Each settled cell is wrong with probability ≤ beta per stage it went through; with the
defaults (10⁻⁶ each) the staged posterior differs from the unstaged one far less than the plug-in
error of the cells near the boundary (tests/test_rap_staged.py measures both).

Only two-class models are staged: with more classes the posterior is not computed.
"""

from __future__ import annotations

import numpy as np

from rpdist.errors import InputError
from rpdist.smoothing import stats

DEFAULT_PILOT = 1000  # samples of the first stage; 0 turns staging off
STAGE_GROWTH = 10  # each stage draws this many times the previous one's samples, while below N
SETTLE_BETA = 1e-6  # miscoverage of each stage's two-sided Clopper–Pearson interval
SETTLE_EPSILON = 1e-6  # a settled cell's output has probability ≥ 1 − ε over that interval
ABSTAIN = stats.ABSTAIN
UNSETTLED = -2


def check_pilot(pilot) -> int:
    if isinstance(pilot, bool) or not isinstance(pilot, (int, np.integer)) or pilot < 0:
        raise InputError(f"pilot must be a whole number of samples >= 0 (0: no staging), got {pilot!r}")
    return int(pilot)


def stage_sizes(pilot: int, n: int) -> list[int]:
    """Samples of each pilot stage: pilot, 10·pilot, … while below N (none when pilot is 0 or ≥ N)."""
    sizes = []
    size = check_pilot(pilot)
    while 0 < size < n:
        sizes.append(size)
        size *= STAGE_GROWTH
    return sizes


def settle(mechanism, counts: np.ndarray, beta: float = SETTLE_BETA, epsilon: float = SETTLE_EPSILON) -> np.ndarray:
    """The release each cell is settled on (0, 1 or ABSTAIN), or UNSETTLED, from two-class pilot counts.

    ``mechanism`` gives exact [P[A], P[B], P[abstain]] at p = p_A (:class:`rpdist.privacy.mechanisms.Predict`);
    ``counts`` is [cells, 2], A = class 0. A cell with no samples stays unsettled.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[1] != 2:
        raise InputError("settling a cell needs two-class counts")
    k, total = counts[:, 0], counts.sum(axis=1)
    drawn = total > 0
    low = stats.cp_lower(k, np.maximum(total, 1), beta / 2)
    high = 1 - stats.cp_lower(total - k, np.maximum(total, 1), beta / 2)
    at_low, at_high = mechanism.probabilities(low), mechanism.probabilities(high)
    a, b = at_low[:, 0], at_high[:, 1]  # P[A] is smallest at p̲, P[B] at p̄
    abstain = np.minimum(at_low[:, 2], at_high[:, 2])
    out = np.full(len(counts), UNSETTLED, dtype=np.int64)
    out[drawn & (a >= 1 - epsilon)] = 0
    out[drawn & (b >= 1 - epsilon)] = 1
    out[drawn & (abstain >= 1 - epsilon)] = ABSTAIN
    return out


class StagedPredict:
    """PREDICT releases and counts of grid points, settling cells on pilots where it can.

    Called with ``points``, their noise ``ids`` and ``grid`` (True where a point is a grid cell, False
    for the true values, which are always PREDICTed with N samples: they are the release). Returns
    (releases, counts, spent, settled): ``spent`` is the samples each point drew over all its stages and
    ``settled`` marks the points a pilot settled.
    """

    def __init__(self, model_ref, *, sigma: float, n: int, alpha: float, seed: int, pilot: int = DEFAULT_PILOT,
                 beta: float = SETTLE_BETA, epsilon: float = SETTLE_EPSILON, **engine):
        from rpdist.privacy.mechanisms import Predict

        self.model_ref, self.sigma, self.n, self.alpha, self.seed = model_ref, sigma, n, alpha, seed
        self.sizes = stage_sizes(pilot, n)  # emptied on meeting a model with more than two classes
        self.beta, self.epsilon, self.engine = beta, epsilon, engine
        self.mechanism = Predict(n, alpha)

    def __call__(self, points: np.ndarray, ids: np.ndarray, grid: np.ndarray):
        from rpdist.smoothing.job import predict, selection_counts
        from rpdist.smoothing.noise import DEFAULT_BLOCK, num_blocks

        m = len(points)
        releases = np.full(m, UNSETTLED, dtype=np.int64)
        spent = np.zeros(m, dtype=np.int64)
        counts = None
        open_ = np.flatnonzero(grid)
        first_block = 0
        for size in self.sizes:
            if not len(open_):
                break
            got = selection_counts(self.model_ref, points[open_], sigma=self.sigma, n=size, first_block=first_block,
                                   seed=self.seed, input_ids=ids[open_], **self.engine)
            first_block += num_blocks(size, DEFAULT_BLOCK)
            spent[open_] += size
            if got.shape[1] != 3:  # more than two classes: no posterior to serve, nothing to settle
                self.sizes = []
                break
            if counts is None:
                counts = np.zeros((m, 2), dtype=np.int64)
            finite = got[:, -1] == 0  # a non-finite sample would be an abstention PREDICT must see
            decided = np.where(finite, settle(self.mechanism, got[:, :2], self.beta, self.epsilon), UNSETTLED)
            done = decided != UNSETTLED
            releases[open_[done]] = decided[done]
            counts[open_[done]] = got[done, :2]
            open_ = open_[~done]
        settled = releases != UNSETTLED
        full = np.flatnonzero(~settled)
        if len(full):
            pred = predict(self.model_ref, points[full], sigma=self.sigma, n=self.n, alpha=self.alpha, seed=self.seed,
                           input_ids=ids[full], **self.engine)
            if not np.array_equal(pred["input_id"].to_numpy(), ids[full]):
                pred = pred.set_index("input_id").loc[ids[full]].reset_index()
            spent[full] += self.n
            releases[full] = pred["prediction"].to_numpy()
            full_counts = np.stack(pred["counts"].to_numpy()).astype(np.int64)
            if counts is None:  # no pilot ran, or the model has more than two classes
                counts = np.zeros((m, full_counts.shape[1]), dtype=np.int64)
            counts[full] = full_counts
        return releases, counts, spent, settled
