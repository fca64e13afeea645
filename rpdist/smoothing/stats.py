"""The statistics of randomized smoothing, free of torch and Ray so it can be checked on its own.

Everything here maps integer vote counts to decisions: Clopper–Pearson lower bounds for CERTIFY,
the exact binomial test for PREDICT, and the radius R = σ·Φ⁻¹(p̲A) (Cohen et al., 2019).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, binomtest, norm

from rpdist.errors import InputError

ABSTAIN = -1


def _is_real(value) -> bool:
    """A plain or NumPy real scalar; ``bool`` is an ``int`` subclass but never a valid parameter."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_sigma(sigma: float) -> float:
    if not (_is_real(sigma) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def check_alpha(alpha: float) -> float:
    if not (_is_real(alpha) and 0 < alpha < 1):
        raise InputError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _smallest_n(alpha: float, decisive) -> int:
    """The smallest N for which a unanimous vote of N samples is ``decisive`` at level α."""
    alpha = check_alpha(alpha)
    n = 1
    while not decisive(n, alpha):
        n += 1
    return n


def min_samples_to_certify(alpha: float) -> int:
    """Smallest N at which N unanimous votes give p̲A = α^(1/N) > 1/2, i.e. any radius at all."""
    return _smallest_n(alpha, lambda n, a: a ** (1 / n) > 0.5)


def min_samples_to_predict(alpha: float) -> int:
    """Smallest N at which a unanimous vote passes PREDICT's two-sided test: 2·(1/2)^N ≤ α."""
    return _smallest_n(alpha, lambda n, a: 2 * 0.5**n <= a)


def _check_reachable(n: int, alpha: float, need: int, what: str) -> None:
    n = check_count(n, "n")
    if n < need:
        raise InputError(f"n={n} can never {what} at alpha={alpha}: it needs n >= {need}")


def check_feasible(n: int, alpha: float) -> None:
    """Refuse an (N, α) that can never certify anything, rather than return only abstentions."""
    _check_reachable(n, alpha, min_samples_to_certify(alpha), "certify")


def check_predict_feasible(n: int, alpha: float) -> None:
    """Refuse an (N, α) at which PREDICT could only ever abstain."""
    _check_reachable(n, alpha, min_samples_to_predict(alpha), "pass PREDICT's test")


def cp_lower(count: np.ndarray | int, n: np.ndarray | int, alpha: float) -> np.ndarray:
    """One-sided (1−α) Clopper–Pearson lower bound on a binomial proportion: Beta(α; k, n−k+1)."""
    count = np.asarray(count, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), count.shape)
    out = np.zeros(count.shape, dtype=np.float64)
    positive = count > 0
    out[positive] = beta.ppf(alpha, count[positive], n[positive] - count[positive] + 1)
    return out


def clopper_pearson(count: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided (1 − α) Clopper–Pearson interval for a binomial proportion (each tail α/2)."""
    low = 0.0 if count == 0 else float(beta.ppf(alpha / 2, count, n - count + 1))
    high = 1.0 if count == n else float(beta.ppf(1 - alpha / 2, count + 1, n - count))
    return low, high


def discordant(x, y) -> tuple[int, int]:
    """The discordant pairs of paired 0/1 outcomes: (x only, y only), all a paired difference depends on."""
    x, y = np.asarray(x, dtype=bool).ravel(), np.asarray(y, dtype=bool).ravel()
    if x.shape != y.shape:
        raise InputError(f"paired outcomes need equal lengths, got {x.size} and {y.size}")
    return int((x & ~y).sum()), int((~x & y).sum())


def paired_difference(x, y, alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean of x − y for paired 0/1 outcomes, with Tango's (1998) (1 − α) score interval.

    Only discordant pairs (b: x only, c: y only) move the difference (b − c)/n. The interval inverts
    the score test of Δ with the nuisance P(y only) at its restricted maximum likelihood, as
    Fagerland, Lydersen and Laake (2013) recommend for paired proportions. With no discordant pair it
    is ±z²/(n + z²), a function of n alone: a Wald or bootstrap interval collapses to a point there,
    and Newcombe's square-and-add interval narrows with the marginal rate (±2 points at 13 of 30 both
    ways, ±11 at 30 of 30). Returns (difference, low, high); NaNs for no pairs.
    """
    from scipy.optimize import brentq

    b, c = discordant(x, y)
    n = np.size(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    check_alpha(alpha)
    z = float(norm.ppf(1 - alpha / 2))
    diff = (b - c) / n

    def excess(delta: float) -> float:
        """Score statistic of H0: Δ = delta (it decreases in Δ)."""
        w = -(b + c) + delta * (2 * n - b + c)
        q = (math.sqrt(max(0.0, w * w + 8 * n * c * delta * (1 - delta))) - w) / (4 * n)  # restricted MLE of P(y only)
        var = n * (2 * q + delta * (1 - delta))
        gap = b - c - n * delta
        if gap == 0:
            return 0.0
        return gap / math.sqrt(var) if var > 0 else math.copysign(math.inf, gap)

    edge = 1 - 1e-12
    low = -1.0 if excess(-edge) <= z else brentq(lambda d: excess(d) - z, -edge, diff, xtol=1e-12)
    high = 1.0 if excess(edge) >= -z else brentq(lambda d: excess(d) + z, diff, edge, xtol=1e-12)
    return diff, float(max(-1.0, low)), float(min(1.0, high))


def radius(pa_lower: np.ndarray | float, sigma: float) -> np.ndarray:
    """Certified ℓ2 radius σ·Φ⁻¹(p̲A), and 0 where p̲A ≤ 1/2 (abstain)."""
    pa_lower = np.asarray(pa_lower, dtype=np.float64)
    out = np.zeros(pa_lower.shape, dtype=np.float64)
    certified = pa_lower > 0.5
    out[certified] = sigma * norm.ppf(pa_lower[certified])
    return out


def max_radius(n: int, alpha: float, sigma: float = 1.0) -> float:
    """The largest radius (N, α) can certify: all N votes agree, so p̲A = α^(1/N)."""
    return float(radius(alpha ** (1.0 / n), sigma))


def certify_decision(selection_counts: np.ndarray, counts: np.ndarray, n: int, alpha: float, sigma: float):
    """CERTIFY from count matrices [inputs × classes].

    The top class comes from the selection counts only; its lower bound from the independent
    estimation counts only — reusing selection samples would bias p̲A upwards.
    Returns (top_class, count_top, pa_lower, radius, prediction).
    """
    top = np.asarray(selection_counts).argmax(axis=1)
    return (top, *certify_label(top, counts, n, alpha, sigma))


def certify_label(labels: np.ndarray, counts: np.ndarray, n: int, alpha: float, sigma: float):
    """Certify labels chosen beforehand (−1 = none) from estimation counts that played no part in the choice.

    Any selection rule is valid so long as its samples are independent of ``counts``: CERTIFY's
    n0 draws, or a PREDICT release that must be certified as released.
    Returns (count_top, pa_lower, radius, prediction).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.asarray(counts)
    chosen = labels >= 0
    count_top = np.where(chosen, counts[np.arange(len(labels)), np.maximum(labels, 0)], 0)
    pa = cp_lower(count_top, n, alpha)  # 0 where nothing was chosen (count 0)
    r = radius(pa, sigma)
    prediction = np.where(pa > 0.5, labels, ABSTAIN)
    return count_top, pa, r, prediction


def predict_pvalue(c1: int, c2: int) -> float:
    """Two-sided exact binomial test of c1 successes in c1+c2 trials at p = 1/2."""
    if c1 + c2 == 0:
        return 1.0
    return float(binomtest(int(c1), int(c1 + c2), 0.5, alternative="two-sided").pvalue)


def predict_decision(counts: np.ndarray, alpha: float):
    """PREDICT from count matrices: the top class if the top-two test rejects at level α.

    Returns (top_class, count_top, count_second, p_value, prediction). Ties go to the lower
    class index and can never be significant.
    """
    counts = np.asarray(counts)
    order = np.argsort(-counts, axis=1, kind="stable")
    top = order[:, 0]
    rows = np.arange(len(top))
    c1 = counts[rows, top]
    c2 = counts[rows, order[:, 1]] if counts.shape[1] > 1 else np.zeros_like(c1)
    cache: dict[tuple[int, int], float] = {}
    pvalues = np.empty(len(top), dtype=np.float64)
    for i, key in enumerate(zip(c1.tolist(), c2.tolist())):
        if key not in cache:
            cache[key] = predict_pvalue(*key)
        pvalues[i] = cache[key]
    prediction = np.where(pvalues <= alpha, top, ABSTAIN)
    return top, c1, c2, pvalues, prediction


def bootstrap_interval(values, statistic=np.median, *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows of ``values`` (NaNs dropped).

    ``resamples`` resamples with replacement, drawn from ``numpy.random.default_rng(seed)`` so a
    summary is reproducible; ``statistic`` must accept an ``axis=1`` keyword (np.median, np.mean).
    Returns (NaN, NaN) for an empty sample.
    """
    check_alpha(1 - level)
    resamples = check_count(resamples, "resamples")
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats_ = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // values.size)  # bounded memory: chunk × n indices at a time
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        stats_[start:start + size] = statistic(values[rng.integers(0, values.size, size=(size, values.size))], axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(stats_, [tail, 1 - tail])
    return float(low), float(high)
