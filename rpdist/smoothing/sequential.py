"""Sequential certification statistics: decide each input with as few samples as it needs.

Free of torch and Ray, like :mod:`rpdist.smoothing.stats`; the engine (:mod:`rpdist.smoothing.seqjob`) feeds
it one input's cumulative counts at a time, at block boundaries, in the input's own block order.

**The confidence sequence.** For k successes (votes for the selected class) in n Bernoulli(p) draws,
Robbins' beta-binomial mixture martingale is

    M_n(p) = ∫ q^k (1−q)^(n−k) dBeta(q; a, b) / (p^k (1−p)^(n−k))
           = B(a + k, b + n − k) / B(a, b) / (p^k (1−p)^(n−k)).

Under the true p it is a nonnegative martingale with M_0 = 1 (a mixture of likelihood ratios), so
by Ville's inequality P(∃ n: M_n(p) ≥ 1/α) ≤ α. The set C_n = {p : M_n(p) < 1/α} is therefore a
(1−α) confidence sequence, valid simultaneously at every n, and so at any data-dependent stopping
time. log M_n is convex in p and below 0 at p = k/n, so C_n is an interval (L_n, U_n) around k/n.
Both ends come from the same event, so the lower and the upper bound share one α with no split.
The running max of L_n and running min of U_n are valid too (the event is the same), and the
engine reports those. We use Jeffreys' prior a = b = 1/2, for which the mixture equals the
Krichevsky–Trofimov sequential predictor that Voráček & Hein's test uses; they charge α/2 to each
side, which the shared event shows to be unnecessary.

**Decisions.** For target radius r the threshold is θ = Φ(r/σ) (Cohen et al., 2019): certified at
r when L > θ, futile (not certified) when U < θ, undecided otherwise. Several target radii use the
same (L, U), so one α covers all of them: a false certificate at any radius needs L > p_A, the
one miscoverage event. *Adaptive* mode stops when the radius interval σ·[Φ⁻¹(L), Φ⁻¹(U)] is
narrower than a tolerance t, or when U ≤ 1/2 (nothing can be certified), and certifies σ·Φ⁻¹(L).

**The staged baseline** (Horváth et al., ICLR 2022): K looks at fixed sample sizes n_1 < … < n_K
(default: powers of ten up to max N, the last being max N), each with a one-sided Clopper–Pearson
bound at level α/K (Bonferroni). P(some stage's lower bound exceeds p_A) ≤ K·α/K = α. The upper
bound for the futility stop uses α/K too; a futility error only loses a certificate, it cannot make a
false one.

References: J. Ville, Étude critique de la notion de collectif (1939); H. Robbins, Statistical
methods related to the law of the iterated logarithm, Ann. Math. Stat. 41 (1970); S. Howard, A.
Ramdas, J. McAuliffe, J. Sekhon, Time-uniform, nonparametric, nonasymptotic confidence sequences,
Ann. Stat. 49 (2021); V. Voráček, M. Hein, Treatment of statistical estimation problems in randomized
smoothing for adversarial robustness, NeurIPS 2024; M. Horváth, M. Müller, M. Fischer, M. Vechev,
Boosting randomized smoothing with variance reduced classifiers, ICLR 2022.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betaln, ndtri
from scipy.stats import beta as beta_dist, norm

from rpdist.errors import InputError

SEQUENTIAL, ADAPTIVE, STAGED = "sequential", "adaptive", "staged"
MODES = (SEQUENTIAL, ADAPTIVE, STAGED)
CERTIFIED, NOT_CERTIFIED, UNDECIDED = "certified", "not_certified", "undecided"
PRIOR = (0.5, 0.5)  # Jeffreys: the Krichevsky–Trofimov mixture
_BISECT = 60  # halvings of the search interval: below 1e-17 in p
# Looks grow geometrically by this factor (rounded to whole noise blocks). 1.02 matches Voráček & Hein's
# look-after-every-sample test in mean samples on the insurance MLP (benchmarks/look_growth.py); 1.1 cuts the
# engine rounds about 3.7× for a few percent more samples.
LOOK_GROWTH = 1.02


def log_mixture(k, n, p, prior: tuple[float, float] = PRIOR) -> np.ndarray:
    """log M_n(p) of the beta-binomial mixture martingale (arrays broadcast)."""
    a, b = prior
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = np.where(k > 0, k * np.log(p), 0.0) + np.where(n - k > 0, (n - k) * np.log1p(-p), 0.0)
    return betaln(a + k, b + n - k) - betaln(a, b) - loglik


def cs_bounds(k, n, alpha: float, prior: tuple[float, float] = PRIOR) -> tuple[np.ndarray, np.ndarray]:
    """(L, U) of the (1−α) confidence sequence at (k, n), by bisection on each side of k/n.

    Each end is returned on its rejected side (M ≥ 1/α there), so L and U are never narrower than
    the exact interval: rounding can only make a decision more conservative. n = 0 gives (0, 1).
    """
    k, n = np.broadcast_arrays(np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64))
    shape = k.shape
    # Many inputs share a (k, n), all-agreeing ones above all: bisect each distinct pair once.
    pairs, inverse = np.unique(np.stack([k.ravel(), n.ravel()]), axis=1, return_inverse=True)
    k, n = pairs
    level = math.log(1.0 / alpha)
    mle = np.divide(k, n, out=np.full(k.shape, 0.5), where=n > 0)
    # lower end: rejected at lo (or lo = 0), accepted at hi = mle
    lo, hi = np.zeros(k.shape), mle.copy()
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        rejected = log_mixture(k, n, mid, prior) >= level
        lo, hi = np.where(rejected, mid, lo), np.where(rejected, hi, mid)
    lower = np.where(k > 0, lo, 0.0)
    lo, hi = mle.copy(), np.ones(k.shape)
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        rejected = log_mixture(k, n, mid, prior) >= level
        lo, hi = np.where(rejected, lo, mid), np.where(rejected, mid, hi)
    upper = np.where(k < n, hi, 1.0)
    inverse = inverse.reshape(-1)
    return lower[inverse].reshape(shape), upper[inverse].reshape(shape)


def staged_bounds(k, n, alpha: float, stages: int) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper–Pearson lower and upper bounds at level α/K each (the staged baseline)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    level = alpha / stages
    with np.errstate(invalid="ignore"):
        lower = np.where(k > 0, beta_dist.ppf(level, np.maximum(k, 1), n - k + 1), 0.0)
        upper = np.where(k < n, beta_dist.ppf(1 - level, k + 1, np.maximum(n - k, 1)), 1.0)
    return lower, upper


def thresholds(radii, sigma: float) -> np.ndarray:
    """θ = Φ(r/σ): the p_A that certifies radius r."""
    return norm.cdf(np.asarray(radii, dtype=np.float64) / sigma)


def radius_of(p, sigma: float) -> np.ndarray:
    """σ·Φ⁻¹(p), 0 where p ≤ 1/2, +inf at p = 1."""
    p = np.asarray(p, dtype=np.float64)
    out = np.zeros(p.shape)
    above = p > 0.5
    out[above] = sigma * ndtri(p[above])
    return out


def decide(k, n, radii, sigma: float, alpha: float, mode: str = SEQUENTIAL, stages: int = 1) -> np.ndarray:
    """Per (input, target radius) at counts (k, n): 1 certified (L > θ), −1 futile (U < θ), 0 undecided.

    Tested at each θ directly, without locating L and U: L > θ exactly when θ < k/n and M_n(θ) ≥ 1/α
    (C_n is an interval around k/n), and likewise for U < θ. Staged mode compares its
    Clopper–Pearson bounds at α/K with θ.
    """
    theta = thresholds(radii, sigma)[None, :]
    k = np.asarray(k, dtype=np.float64)[:, None]
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape[:1])[:, None]
    if mode == STAGED:
        lower, upper = staged_bounds(k, n, alpha, stages)
        return np.where(lower > theta, 1, np.where(upper < theta, -1, 0)).astype(np.int8)
    rejected = log_mixture(k, n, theta) >= math.log(1.0 / alpha)
    return np.where(rejected & (k > theta * n), 1, np.where(rejected & (k < theta * n), -1, 0)).astype(np.int8)


def pinned(lower, upper, sigma: float, tolerance: float) -> np.ndarray:
    """Adaptive mode's stop: the radius is known to within ``tolerance``, or nothing can be certified."""
    lower, upper = np.asarray(lower), np.asarray(upper)
    low, high = radius_of(lower, sigma), radius_of(upper, sigma)
    with np.errstate(invalid="ignore"):
        return (upper <= 0.5) | (high - low <= tolerance)


def look_points(max_n: int, block: int, mode: str, first: int = 32, growth: float = LOOK_GROWTH) -> list[int]:
    """Cumulative sample counts at which an input's bounds are checked, each at a block boundary.

    Sequential and adaptive: geometric from ``first`` (rounded up to whole blocks), factor ``growth``;
    looks cost no α (the confidence sequence holds at every n), only the overshoot past the best
    stopping point and one round of the engine each. Staged: 100, 1,000, … and max N.
    """
    total_blocks = -(-max_n // block)
    if mode == STAGED:
        sizes, n = [], 100
        while n < max_n:
            sizes.append(n)
            n *= 10
        sizes.append(max_n)
    else:
        sizes, n = [], float(first)
        while n < max_n:
            sizes.append(int(math.ceil(n)))
            n *= growth
        sizes.append(max_n)
    blocks = sorted({min(total_blocks, -(-s // block)) for s in sizes})
    return [min(b * block, max_n) for b in blocks]


def bounds(k, n, alpha: float, mode: str, stages: int) -> tuple[np.ndarray, np.ndarray]:
    """The mode's (lower, upper) bounds on p_A at (k, n)."""
    return staged_bounds(k, n, alpha, stages) if mode == STAGED else cs_bounds(k, n, alpha)


def check_target_feasible(radii, sigma: float, alpha: float, looks: list[int], mode: str) -> None:
    """Refuse a max N (through its looks) at which even unanimous votes cannot certify the largest target."""
    looks_arr = np.asarray(looks, dtype=np.float64)
    lower, _ = bounds(looks_arr, looks_arr, alpha, mode, len(looks))
    best = float(lower.max())
    need = float(thresholds(max(radii), sigma))
    if not best > need:
        top = float(radius_of(best, sigma))
        raise InputError(f"max N = {looks[-1]} can never certify radius {max(radii):g} at alpha={alpha} in {mode} mode "
                         f"(the most it can certify is {top:.4g}); raise --max-n or lower --target-radius")


def simulate(p, radii, sigma: float, alpha: float, looks: list[int], mode: str = SEQUENTIAL,
             tolerance: float | None = None, rng: np.random.Generator | None = None):
    """Run the decision rule on simulated Bernoulli(p) streams, one per entry of ``p`` (vectorised).

    The same :func:`update` as the engine, on binomial increments between looks. Returns (decisions
    per radius [inputs, radii] in {1, −1, 0}, samples used, whether the rule stopped before max N).
    """
    p = np.asarray(p, dtype=np.float64)
    rng = rng or np.random.default_rng(0)
    m = len(p)
    k = np.zeros(m)
    used = np.zeros(m, dtype=np.int64)
    state = np.zeros((m, len(radii)), dtype=np.int8)
    stopped = np.zeros(m, dtype=bool)
    previous = 0
    for n in looks:
        idx = np.flatnonzero(~stopped)
        if not len(idx):
            break
        k[idx] += rng.binomial(n - previous, p[idx])
        used[idx] = n
        stopped[idx[update(state, idx, k[idx], n, radii, sigma, alpha, mode, len(looks), tolerance)]] = True
        previous = n
    return state, used, stopped


def update(state: np.ndarray, idx: np.ndarray, k, n: int, radii, sigma: float, alpha: float, mode: str,
           stages: int, tolerance: float | None = None) -> np.ndarray:
    """Record the first decision per radius for rows ``idx`` of ``state`` at counts (k, n); True where
    the input stops (every radius decided; adaptive: the radius pinned)."""
    if len(radii):
        fresh = decide(k, n, radii, sigma, alpha, mode, stages)
        state[idx] = np.where(state[idx] == 0, fresh, state[idx])
    if mode == ADAPTIVE:
        lower, upper = cs_bounds(k, np.full(len(idx), n), alpha)
        return pinned(lower, upper, sigma, tolerance)
    return (state[idx] != 0).all(axis=1)


def summarize_decision(state: np.ndarray, radii, stopped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(decision label, largest certified target radius, 0 if none) per input from per-radius states.

    An input stopped by its rule is certified when some target radius is, else not certified; one
    that reached max N with a radius still open is undecided.
    """
    radii = np.asarray(radii, dtype=np.float64)
    certified = state == 1
    largest = (np.max(np.where(certified, radii[None, :], 0.0), axis=1) if len(radii)
               else np.zeros(len(state)))
    label = np.where(~stopped, UNDECIDED, np.where(largest > 0, CERTIFIED, NOT_CERTIFIED))
    return label, largest
