"""The attribute-inference adversary's Bayes posterior over the swept grid (torch-free).

An adversary who knows every feature but the sensitive one, sees the release L and knows the
mechanism M has the posterior π(s' | L) ∝ π(s') · P[M(s', x₋s) = L] over the swept values s'.
Compatible sets keep only the support of that posterior (and, under the ``neutral`` abstain rule,
not even that: they keep far-side abstain cells that the likelihood all but rules out); the
posterior also weighs each cell by how likely it makes what was seen.

* Prior: a Gaussian kernel density estimate of the training values of the attribute (Scott's
  bandwidth), integrated exactly over each cell, renormalised to the swept range. A histogram on a
  0.1-wide grid of ~1,000 training values would be mostly empty cells, and the HDI would then
  measure the gaps of the sample rather than the release.
* Likelihood: the base model is deterministic, so P[M = L] is the indicator of its release. For
  the smoothed release it is the exact two-class output probability of the mechanism
  (:mod:`rpdist.privacy.mechanisms`) at the *plug-in* class probability p̂ = k/N of each cell's own
  PREDICT counts (for a cell a pilot settled far from the boundary, its pilot's counts, which pin
  the likelihood to within 10⁻⁶ unless the pilot's interval missed p, an event of probability
  ≤ 10⁻⁶ per stage: :mod:`rpdist.privacy.staged`). This is an estimate, not a bound: in the band
  where P[M = L] rises from 0 to 1
  (|p − ½| of a few 1/√N) one cell's value can be off by tenths, and these errors are independent
  across cells and average out in the posterior's summaries (``tests/test_rap.py`` works the
  budget out against a linear model's exact likelihood).
* Cells: each swept value owns the cell between the midpoints to its neighbours (the convention of
  :func:`rpdist.privacy.rap.compatible_set`); the posterior density is constant on a cell.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from rpdist.errors import InputError

DEFAULT_LEVEL = 0.9
PRIOR_KIND = "gaussian-kde-scott"
LIKELIHOOD_KIND = "plug-in"


def check_level(level) -> float:
    """A posterior credible level strictly inside (0, 1)."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)) \
            or not math.isfinite(level) or not 0 < level < 1:
        raise InputError(f"posterior level must lie strictly between 0 and 1, got {level!r}")
    return float(level)


class KdePrior:
    """Gaussian KDE of a sample with Scott's bandwidth h = std · n^(−1/5); cell masses are exact."""

    def __init__(self, sample: np.ndarray):
        sample = np.asarray(sample, dtype=np.float64).ravel()
        if sample.size < 2 or not np.all(np.isfinite(sample)):
            raise InputError("the prior needs at least two finite training values of the attribute")
        spread = float(sample.std(ddof=1))
        self.sample = np.sort(sample)
        self.bandwidth = (spread if spread > 0 else 1.0) * sample.size ** (-0.2)

    def cdf(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        out = np.empty(points.shape, dtype=np.float64)
        flat = points.ravel()
        for start in range(0, flat.size, 256):  # bounded memory: 256 points × the sample at a time
            part = flat[start:start + 256]
            out.flat[start:start + len(part)] = ndtr((part[:, None] - self.sample[None, :]) / self.bandwidth).mean(axis=1)
        return out

    def cell_masses(self, edges: np.ndarray) -> np.ndarray:
        """The KDE's mass on each cell [edges[k], edges[k+1]], renormalised to sum to 1 over them."""
        mass = np.clip(np.diff(self.cdf(edges)), 0, None)
        total = mass.sum()
        return mass / total if total > 0 else np.full(len(mass), 1.0 / len(mass))


def cells(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort order of the swept values and the edges of their cells (midpoints, the ends closing)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    v = values[order]
    return order, np.concatenate([v[:1], 0.5 * (v[1:] + v[:-1]), v[-1:]])


def hdi_length(edges: np.ndarray, mass: np.ndarray, level: float) -> float:
    """Length of the highest-density region holding ``level`` of a piecewise-constant density.

    Cells are taken in order of decreasing density (mass / width); the last one only in the
    fraction needed, which is exact for a density constant on each cell. Zero-width cells with
    mass (a point mass) count as zero length. The region need not be one interval.
    """
    mass = np.asarray(mass, dtype=np.float64)
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    total = mass.sum()
    if not total > 0:
        return float("nan")
    mass = mass / total
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(widths > 0, mass / np.where(widths > 0, widths, 1.0), np.inf)
    order = np.argsort(-density, kind="stable")
    cumulative = np.cumsum(mass[order])
    last = int(np.searchsorted(cumulative, level - 1e-12))
    last = min(last, len(order) - 1)
    before = cumulative[last - 1] if last > 0 else 0.0
    full = widths[order[:last]].sum()
    cell = order[last]
    fraction = 0.0 if mass[cell] <= 0 else min(1.0, (level - before) / mass[cell])
    return float(full + fraction * widths[cell])


def cell_posterior(values: np.ndarray, likelihood: np.ndarray, prior: KdePrior) -> dict:
    """Per-cell prior mass, likelihood and posterior mass, in sorted order of ``values``.

    Returns ``order``, ``edges``, ``centres``, ``prior``, ``likelihood``, ``posterior`` (NaN when
    the likelihood vanishes on every cell) and ``evidence`` = Σ π(s')·P[M(s') = L].
    """
    order, edges = cells(values)
    lik = np.asarray(likelihood, dtype=np.float64)[order]
    prior_mass = prior.cell_masses(edges)
    joint = prior_mass * lik
    evidence = float(joint.sum())
    post = joint / evidence if evidence > 0 else np.full(len(joint), np.nan)
    return {"order": order, "edges": edges, "centres": 0.5 * (edges[:-1] + edges[1:]), "prior": prior_mass,
            "likelihood": lik, "posterior": post, "evidence": evidence}


def posterior_summary(values: np.ndarray, likelihood: np.ndarray, true_index: int, prior: KdePrior,
                      level: float) -> dict:
    """The posterior of one input: HDI length, mean, its error, and the true cell's posterior/prior.

    ``values`` are the swept raw values with the true one at ``true_index``; ``likelihood`` is
    P[M(s') = L] at each. The ratio posterior/prior of the true cell is L(s) / Σ π(s')L(s'), which
    stays defined when the true value's cell has zero width (it duplicates a grid point).
    """
    cp = cell_posterior(values, likelihood, prior)
    nan = float("nan")
    if not cp["evidence"] > 0:
        return {"hdi_length": nan, "mean": nan, "abs_error": nan, "true_ratio": nan}
    mean = float(cp["posterior"] @ cp["centres"])
    s = float(values[true_index])
    return {"hdi_length": hdi_length(cp["edges"], cp["posterior"], level), "mean": mean, "abs_error": abs(mean - s),
            "true_ratio": float(likelihood[true_index] / cp["evidence"])}


def predict_likelihood(mechanism, counts: np.ndarray, released: int, abstain: int = -1) -> np.ndarray:
    """Plug-in P[M = released] at each cell from its two-class counts [cells × 2].

    ``mechanism.probabilities(p)`` with p = p̂₀ = k₀/(k₀ + k₁) gives [P[0], P[1], P[abstain]]
    exactly for that p; the plug-in replaces the unknown p by p̂₀.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != 2:
        raise InputError("the posterior of a smoothed release needs two-class counts")
    total = counts.sum(axis=1)
    p0 = np.where(total > 0, counts[:, 0] / np.maximum(total, 1), 0.5)
    probs = mechanism.probabilities(p0)
    column = 2 if released == abstain else int(released)
    return probs[:, column]
