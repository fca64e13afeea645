"""The releases rpdist deploys, as mechanisms with exact output probabilities (torch-free).

A smoothed release answers one query at x by drawing Monte Carlo samples f(x + ε), ε ~ N(0, σ²I),
and post-processing their class counts. Its output distribution depends on x only through the
class probabilities p_c(x) = P[f(x + ε) = c] of the base classifier f under noise. This module
gives that distribution for each release rpdist offers:

* :class:`Predict` — Cohen et al.'s PREDICT, what ``rpdist predict`` and ``--release predict``
  return: the top class of N counts if the two-sided exact binomial test of the top two counts at
  p = 1/2 rejects at level α (``stats.predict_decision``), else abstain. ``certified = True``:
  it returns the smoothed classifier's label or abstains, with probability ≥ 1 − α.
* :class:`Majority` — ``--release majority``: the top class of N counts, no test, never abstains.
  Ties go to the lower class index (``predict_decision`` sorts with a stable argsort and reports
  ``top_class``, which is what the majority release returns). ``certified = False``: no
  certificate is attached to it.
* :class:`Certify` — release the label only when CERTIFY certifies it: n0 selection samples pick
  ĉ (argmax, ties to the lower index, as ``stats.certify_decision``), then N fresh samples give the
  one-sided Clopper–Pearson bound p̲ = cp_lower(count of ĉ, N, α); the label is released iff
  p̲ > 1/2 (``stats.certify_label``), or, with a target radius r > 0, iff σ·Φ⁻¹(p̲) ≥ r; otherwise
  abstain. ``certified = True``.

Two classes (exact)
    With classes A and B and p = p_A(x), the outputs are A, B and abstain (Majority: A and B only),
    and ``probabilities(p)`` returns their exact probabilities (columns ``OUTPUTS``) as binomial
    sums: every release above is a threshold rule on the count K_A ~ Bin(N, p) (and, for Certify, on
    the independent selection count ~ Bin(n0, p)). In particular P[A] is nondecreasing and P[B]
    nonincreasing in p (sums of binomial tails, products of nonnegative nondecreasing factors);
    :mod:`rpdist.privacy.bounds` relies on this and the tests check it.

More than two classes (one-sided bound)
    The distribution then depends on how 1 − p_A splits among the other classes, which a
    certificate about p_A does not pin down. ``a_lower(p)`` is a *lower* bound on P[output = A]
    valid for any number of classes and any split, given p_A = p: PREDICT releases A whenever
    K_A > N/2 and the test of (K_A, N − K_A) rejects, since the runner-up count is ≤ N − K_A and
    the two-sided p-value 2·P[Bin(K_A + c₂, ½) ≥ K_A] only falls as c₂ falls; the majority
    releases A whenever K_A > N/2; CERTIFY selects A whenever the selection count of A exceeds n0/2.
    For two classes ``a_lower`` is at most the exact P[A] (equal up to the tie term).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import bdtrc
from scipy.stats import binom, norm

from rpdist.errors import InputError
from rpdist.smoothing import stats

OUTPUTS = ("A", "B", "abstain")  # column order of ``probabilities``


def _first_true(lo: int, hi: int, test) -> int | None:
    """Smallest k in [lo, hi] with ``test(k)`` for a test that is monotone (False … True); None if none."""
    if lo > hi or not test(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if test(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _tail(k: int | None, n: int, p: np.ndarray) -> np.ndarray:
    """P[Bin(n, p) ≥ k]; 0 when k is None (the threshold is never reached)."""
    if k is None:
        return np.zeros_like(p)
    return bdtrc(k - 1, n, p)


def _as_p(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InputError("class probabilities must lie in [0, 1]")
    return p


def _majority_prob(n: int, p: np.ndarray, wins_ties: bool) -> np.ndarray:
    """P[the class with probability p wins an n-sample two-class vote]; ties count iff ``wins_ties``."""
    strict = bdtrc(n // 2, n, p)  # K > n/2
    if n % 2 == 0 and wins_ties:
        strict = strict + binom.pmf(n // 2, n, p)
    return strict


class Mechanism:
    """A release computed from the counts of Monte Carlo samples at one query."""

    name: str
    certified: bool
    n: int

    @property
    def samples(self) -> int:
        """Noisy copies of the input one query draws (what the Gaussian-mechanism route charges)."""
        return self.n

    def probabilities(self, p) -> np.ndarray:
        """Exact [P[A], P[B], P[abstain]] for two classes with p_A = p (shape p.shape + (3,))."""
        raise NotImplementedError

    def a_lower(self, p) -> np.ndarray:
        """Lower bound on P[output = A] for any number of classes, given p_A = p."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Predict(Mechanism):
    """PREDICT: the top class if the two-sided binomial test of the top two counts rejects at α."""

    name, certified = "predict", True

    def __init__(self, n: int, alpha: float):
        self.n, self.alpha = stats.check_count(n, "n"), stats.check_alpha(alpha)
        # The p-value of (k, n − k) falls as k grows past n/2; ties are never significant.
        self.threshold = _first_true(n // 2 + 1, n, lambda k: stats.predict_pvalue(k, n - k) <= self.alpha)

    def probabilities(self, p) -> np.ndarray:
        p = _as_p(p)
        a = _tail(self.threshold, self.n, p)
        b = _tail(self.threshold, self.n, 1 - p)
        return np.stack([a, b, np.clip(1 - a - b, 0, 1)], axis=-1)

    def a_lower(self, p) -> np.ndarray:
        return _tail(self.threshold, self.n, _as_p(p))


class Majority(Mechanism):
    """The Monte Carlo majority label, always released; ties to the lower class index."""

    name, certified = "majority", False

    def __init__(self, n: int, a_is_lower: bool = True):
        self.n, self.a_is_lower = stats.check_count(n, "n"), bool(a_is_lower)

    def probabilities(self, p) -> np.ndarray:
        p = _as_p(p)
        a = _majority_prob(self.n, p, self.a_is_lower)
        return np.stack([a, 1 - a, np.zeros_like(a)], axis=-1)

    def a_lower(self, p) -> np.ndarray:
        return bdtrc(self.n // 2, self.n, _as_p(p))  # a strict majority wins whatever the ties


class Certify(Mechanism):
    """CERTIFY as a release: ĉ from n0 selection samples, released iff its N-sample certificate holds.

    ``radius = 0``: released iff p̲ > 1/2 (any radius at all, rpdist's rule); ``radius = r > 0``:
    released iff σ·Φ⁻¹(p̲) ≥ r, i.e. p̲ ≥ Φ(r/σ).
    """

    name, certified = "certify", True

    def __init__(self, n0: int, n: int, alpha: float, radius: float = 0.0, sigma: float = 1.0,
                 a_is_lower: bool = True):
        self.n0, self.n = stats.check_count(n0, "n0"), stats.check_count(n, "n")
        self.alpha, self.sigma = stats.check_alpha(alpha), stats.check_sigma(sigma)
        if not (math.isfinite(radius) and radius >= 0):
            raise InputError(f"target radius must be a finite number >= 0, got {radius!r}")
        self.radius, self.a_is_lower = float(radius), bool(a_is_lower)
        if self.radius == 0:
            passes = lambda k: float(stats.cp_lower(k, n, self.alpha)) > 0.5  # noqa: E731
        else:
            need = norm.cdf(self.radius / self.sigma)
            passes = lambda k: float(stats.cp_lower(k, n, self.alpha)) >= need  # noqa: E731
        self.threshold = _first_true(1, n, passes)  # cp_lower grows with the count

    @property
    def samples(self) -> int:
        return self.n0 + self.n

    def probabilities(self, p) -> np.ndarray:
        p = _as_p(p)
        select_a = _majority_prob(self.n0, p, self.a_is_lower)
        select_b = _majority_prob(self.n0, 1 - p, not self.a_is_lower)
        a = select_a * _tail(self.threshold, self.n, p)
        b = select_b * _tail(self.threshold, self.n, 1 - p)
        return np.stack([a, b, np.clip(1 - a - b, 0, 1)], axis=-1)

    def a_lower(self, p) -> np.ndarray:
        p = _as_p(p)
        return bdtrc(self.n0 // 2, self.n0, p) * _tail(self.threshold, self.n, p)


def mechanism(release: str, *, n: int, alpha: float = 0.001, n0: int = 100, radius: float = 0.0,
              sigma: float = 1.0) -> Mechanism:
    """The mechanism of a release name: ``predict``, ``majority`` or ``certify``."""
    if release == Predict.name:
        return Predict(n, alpha)
    if release == Majority.name:
        return Majority(n)
    if release == Certify.name:
        return Certify(n0, n, alpha, radius=radius, sigma=sigma)
    raise InputError(f"release must be 'predict', 'majority' or 'certify', got {release!r}")
