"""Sound bounds on what one adversary learns from the release users actually deploy (torch-free).

The question
    An adversary sees the release M(z) at an input z that is either x or some x' with ‖x − x'‖₂ ≤ d
    (uniform prior) and guesses which. Its *advantage* is Pr[correct guess] − 1/2. The best guess
    achieves exactly TV(M(x), M(x'))/2, so throughout: **advantage = TV/2** (the convention of the
    Robust Privacy paper; an advantage of 1/2 means the release gives the input away).

Why α/2 is not it
    Robust Privacy's theorem is about the smoothed classifier g: if g is constant on the ball of
    radius R around x with confidence 1 − α, the label of g reveals nothing inside the ball. What
    rpdist deploys is a Monte Carlo estimate of g — PREDICT, which abstains when its binomial test
    does not reject — and its output distribution changes inside the ball: at the ball's edge p_A
    can be as low as 1/2, where PREDICT mostly abstains. At N = 1,000, α = 0.001, x at 0.32σ from a
    linear boundary (CERTIFY count 626/1000, certified radius 0.195σ), PREDICT returns the label
    with probability 1.000 at x and 0.426 at the edge x': TV 0.574, advantage 0.287, not 0.0005.

Route 1 — the certificate, made Lipschitz (holds with probability ≥ 1 − α)
    For any base classifier f and class c, u_c(x) = Φ⁻¹(P[f(x + ε) = c]) is (1/σ)-Lipschitz in x
    (Salman et al., 2019, "Provably robust deep learning via adversarially trained smoothed
    classifiers", NeurIPS, Lemma 2; the same Neyman–Pearson fact gives Cohen et al.'s Theorem 1;
    also Levine et al., 2020, "Certifiably robust interpretation in deep learning"). So if
    p_A(x) ∈ [p̲, p̄] then for every x' within d,

        Φ(Φ⁻¹(p_A(x)) − d/σ) ≤ p_A(x') ≤ Φ(Φ⁻¹(p_A(x)) + d/σ),

    and p_A(x) itself lies in [p̲, p̄]. A confidence interval [p̲, p̄] at x (a :class:`Certificate`:
    CERTIFY's one-sided p̲ with p̄ = 1, or a two-sided Clopper–Pearson interval) therefore bounds
    every pair (p_A(x), p_A(x')) the adversary could face, and TV(M(x), M(x')) ≤
    sup { TV(M_p, M_p') : Φ⁻¹p ∈ [Φ⁻¹p̲, Φ⁻¹p̄], |Φ⁻¹p' − Φ⁻¹p| ≤ d/σ }.

    *Two classes.* The outputs are A, B, abstain, with P[A] nondecreasing and P[B] nonincreasing in
    p (:mod:`rpdist.privacy.mechanisms`). For p' ≤ p the differences are ΔA ≥ 0, ΔB ≤ 0 and
    Δabstain = −ΔA − ΔB, so TV = (sum of positive parts) = max(ΔA, −ΔB); symmetrically for p' ≥ p.
    Each term only grows as p' moves away from p, so for fixed p the worst p' is at u ± d/σ. The
    remaining supremum over u ∈ [Φ⁻¹p̲, Φ⁻¹p̄] is taken by branch and bound with interval
    arithmetic: on a cell [a, c] monotonicity gives A(Φ(u)) − A(Φ(u − δ)) ≤ A(Φ(c)) − A(Φ(a − δ)),
    and likewise for the other three terms, so the returned value is a certified upper bound of the
    supremum (within ``tol`` of it). The bound is exact for a linear classifier when p̲ = p̄ = p_A(x),
    since there every p' in the band is reached.

    *More classes.* Only P[A] is controlled: ``a_lower`` bounds it from below for any split of the
    other classes. For any two distributions TV(P, Q) ≤ 1 − min(P(A), Q(A)) (the mass off A is at
    most 1 − P(A) resp. 1 − Q(A)), and both P_x(A) and P_x'(A) are ≥ a_lower(Φ(Φ⁻¹p̲ − d/σ)), so
    TV ≤ 1 − a_lower(Φ(Φ⁻¹p̲ − d/σ)). This is an upper bound of TV, looser than the two-class one.

    *α.* The interval at x is random (CERTIFY's estimation samples, drawn once, independent of the
    deployed release's noise). The advantage itself is a fixed number, so α cannot be added to it;
    the result is a confidence statement, reported as the pair (bound, α): with probability
    ≥ 1 − α over the certificate's samples, every x' within d has advantage ≤ bound. When route 2
    is the smaller one, the bound holds outright (``AdvantageBound.route == "gaussian"``).

Route 2 — the Gaussian mechanism (holds always, for any classifier and any release)
    One query draws N noisy copies x + ε_i: jointly one Gaussian mechanism on R^{N·dim} whose means
    differ by d·√N between x and x'. TV between isotropic Gaussians with means Δ apart is
    2Φ(Δ/(2σ)) − 1, and every release is a post-processing of those samples (data processing), so
    TV(M(x), M(x')) ≤ 2Φ(d·√N/(2σ)) − 1 (CERTIFY draws n0 + N). More samples mean *weaker* privacy
    on this route, the opposite of route 1.

k queries with fresh noise
    The k answers are i.i.d., so route 2 simply counts k·N samples. On route 1, coupling each of the
    k answer pairs maximally gives P[all k equal] = (1 − TV)^k, hence TV(P^k, Q^k) ≤ 1 − (1 − TV)^k
    (the per-query supremum is used, which is ≥ every pair's TV). ``exact_product_tv`` computes the
    exact k-fold TV of two finite distributions for checking. With keyed noise a repeated query
    returns the same answer, so k keyed queries are one query.

The per-input bound is the smaller of the two routes (``advantage_bound``); ``privacy_radius(tau)``
is the largest d at which it is ≤ τ (both routes are nondecreasing in d, because the balls nest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln
from scipy.special import ndtr, ndtri
from scipy.stats import norm

from rpdist.errors import InputError
from rpdist.privacy.mechanisms import Mechanism
from rpdist.smoothing import stats

_U_CORE = 12.0  # probit range split finely; beyond it Φ is within 1e-32 of 0 or 1
_FLOAT_SLACK = 1e-9  # added to route 1: covers rounding in the binomial tails and probit round trips


def cp_upper(count, n, alpha: float) -> np.ndarray:
    """One-sided (1−α) Clopper–Pearson upper bound: 1 − cp_lower(n − count)."""
    count = np.asarray(count, dtype=np.float64)
    return 1.0 - stats.cp_lower(np.asarray(n, dtype=np.float64) - count, n, alpha)


@dataclass(frozen=True)
class Certificate:
    """p_A(x) ∈ [lower, upper] with probability ≥ 1 − alpha (alpha = 0: known exactly)."""

    lower: float
    upper: float = 1.0
    alpha: float = 0.0

    def __post_init__(self):
        if not (0 <= self.lower <= self.upper <= 1) or not (0 <= self.alpha < 1):
            raise InputError(f"a certificate needs 0 <= lower <= upper <= 1 and 0 <= alpha < 1, got {self}")

    @classmethod
    def from_radius(cls, radius: float, sigma: float, alpha: float) -> Certificate:
        """CERTIFY's certificate as reported: p̲ = Φ(R/σ) at level α, no upper bound."""
        return cls(float(norm.cdf(radius / stats.check_sigma(sigma))), 1.0, stats.check_alpha(alpha))

    @classmethod
    def from_counts(cls, count: int, n: int, alpha: float, two_sided: bool = True) -> Certificate:
        """From estimation counts: two-sided Clopper–Pearson at α/2 per side (total α), or
        CERTIFY's one-sided p̲ at α with upper bound 1."""
        alpha = stats.check_alpha(alpha)
        if not two_sided:
            return cls(float(stats.cp_lower(count, n, alpha)), 1.0, alpha)
        return cls(float(stats.cp_lower(count, n, alpha / 2)), float(cp_upper(count, n, alpha / 2)), alpha)

    @classmethod
    def exact(cls, p: float) -> Certificate:
        return cls(float(p), float(p), 0.0)


def gaussian_tv(d: float, sigma: float, samples: int) -> float:
    """Route 2: TV between the ``samples`` noisy copies of x and of x' at distance d."""
    return float(2 * ndtr(d * math.sqrt(samples) / (2 * sigma)) - 1)


def compose_tv(tv: float, k: int) -> float:
    """Sound TV of k i.i.d. answers from a one-answer bound: 1 − (1 − TV)^k (maximal coupling)."""
    return float(1 - (1 - tv) ** k)


def exact_tv(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum())


def exact_product_tv(p, q, k: int) -> float:
    """Exact TV between the k-fold products of two distributions on a few outputs.

    The output counts are sufficient, so TV = ½ Σ over count vectors of the multinomial
    coefficient times |Π p_i^c_i − Π q_i^c_i|. Cost O(k^(m−1)) for m outputs.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = len(p)
    grids = np.meshgrid(*[np.arange(k + 1)] * (m - 1), indexing="ij")
    counts = [g.ravel() for g in grids]
    last = k - sum(counts)
    ok = last >= 0
    counts = [c[ok] for c in counts] + [last[ok]]
    log_coef = gammaln(k + 1) - sum(gammaln(c + 1) for c in counts)

    def log_prob(dist):
        with np.errstate(divide="ignore"):
            logs = np.log(dist)
        total = np.zeros(len(counts[0]))
        for c, lg in zip(counts, logs):
            if c.any():  # 0·log 0 = 0: only counts > 0 meet a log
                total[c > 0] += c[c > 0] * lg
        return total

    return float(0.5 * np.abs(np.exp(log_coef + log_prob(p)) - np.exp(log_coef + log_prob(q))).sum())


# ---------------------------------------------------------------------------------------------
# Route 1


def _two_class_sup_tv(mech: Mechanism, u_lo: float, u_hi: float, delta: float, tol: float,
                      max_cells: int = 200_000) -> float:
    """Certified upper bound (within ``tol``) of sup over u ∈ [u_lo, u_hi], |u' − u| ≤ δ of TV."""
    if delta <= 0:
        return 0.0

    def ab(u):
        pr = mech.probabilities(ndtr(u))
        return pr[..., 0], pr[..., 1]

    def bounds(lo, hi):
        """(upper bound over each cell [lo, hi], exact TV at every finite edge): cells share edges, so
        the mechanism is evaluated once per distinct edge and its two δ-shifts (the expensive part)."""
        edges, where = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        a, b = ab(edges)
        a_dn, b_dn = ab(edges - delta)
        a_up, b_up = ab(edges + delta)
        at_lo, at_hi = where[: len(lo)], where[len(lo):]
        ub = np.maximum.reduce([a[at_hi] - a_dn[at_lo], b_dn[at_lo] - b[at_hi],
                                a_up[at_hi] - a[at_lo], b[at_lo] - b_up[at_hi]])
        exact = np.maximum.reduce([a - a_dn, b_dn - b, a_up - a, b - b_up])[np.isfinite(edges)]
        return ub, exact

    core_lo, core_hi = max(u_lo, -_U_CORE), min(u_hi, _U_CORE)
    edges = np.linspace(core_lo, core_hi, 257) if core_lo < core_hi else np.array([core_lo, core_lo])
    if u_lo < core_lo:
        edges = np.concatenate([[u_lo], edges])
    if u_hi > edges[-1]:
        edges = np.concatenate([edges, [u_hi]])
    lo, hi = edges[:-1], edges[1:]
    finite = np.isfinite(lo) & np.isfinite(hi)
    ends = np.array([x for x in (u_lo, u_hi) if math.isfinite(x)] or [0.0])
    best = float(bounds(ends, ends)[1].max())
    settled = 0.0
    for _ in range(80):
        ub, exact = bounds(lo, hi)
        best = max(best, float(exact.max()) if len(exact) else best)
        width = hi - lo
        split = (ub > best + tol) & finite & (width > 1e-12)
        settled = max(settled, float(ub[~split].max()) if (~split).any() else 0.0)
        if not split.any() or 2 * split.sum() > max_cells:
            if split.any():
                settled = max(settled, float(ub[split].max()))
            break
        mid = 0.5 * (lo[split] + hi[split])
        lo, hi = np.concatenate([lo[split], mid]), np.concatenate([mid, hi[split]])
        finite = np.ones(len(lo), dtype=bool)
    else:
        settled = max(settled, float(bounds(lo, hi)[0].max()))
    return float(min(1.0, max(settled, best) + _FLOAT_SLACK))


def lipschitz_tv(mech: Mechanism, cert: Certificate, d: float, sigma: float, classes: int = 2,
                 tol: float = 1e-4) -> float:
    """Route 1: upper bound on TV(M(x), M(x')) over every x' within d, given the certificate at x."""
    sigma = stats.check_sigma(sigma)
    if d < 0:
        raise InputError(f"distance must be >= 0, got {d!r}")
    delta = d / sigma
    u_lo, u_hi = float(ndtri(cert.lower)), float(ndtri(cert.upper))  # norm.ppf, without its per-call overhead
    if classes == 2:
        return _two_class_sup_tv(mech, u_lo, u_hi, delta, tol)
    if classes < 2:
        raise InputError(f"classes must be >= 2, got {classes!r}")
    return float(min(1.0, 1 - mech.a_lower(ndtr(u_lo - delta)) + _FLOAT_SLACK))


@dataclass(frozen=True)
class AdvantageBound:
    """advantage ≤ ``advantage`` (= tv/2) for every x' within ``d``; holds with prob ≥ 1 − ``alpha``
    (``alpha`` is 0 when the Gaussian route, which needs no certificate, is the smaller)."""

    advantage: float
    tv: float
    lipschitz_tv: float
    gaussian_tv: float
    alpha: float
    route: str  # "lipschitz" or "gaussian": the smaller one
    d: float
    k: int
    release: str
    certified: bool  # the release's own flag: False for the majority vote


def advantage_bound(mech: Mechanism, cert: Certificate, d: float, sigma: float, k: int = 1, classes: int = 2,
                    tol: float = 1e-4) -> AdvantageBound:
    """Per-input bound: the smaller of the Lipschitz and Gaussian routes, for k fresh-noise queries."""
    k = stats.check_count(k, "k")
    lip = compose_tv(lipschitz_tv(mech, cert, d, sigma, classes, tol), k)
    gauss = gaussian_tv(d, sigma, k * mech.samples)
    route = "lipschitz" if lip <= gauss else "gaussian"
    tv = min(lip, gauss)
    return AdvantageBound(tv / 2, tv, lip, gauss, cert.alpha if route == "lipschitz" else 0.0, route, float(d), k,
                          mech.name, mech.certified)


def privacy_radius(mech: Mechanism, cert: Certificate, sigma: float, tau: float, k: int = 1, classes: int = 2,
                   rtol: float = 1e-4, tol: float = 1e-4) -> float:
    """Largest d (to ``rtol``, rounded down) whose advantage bound is ≤ τ; inf when τ ≥ 1/2."""
    if not (0 <= tau):
        raise InputError(f"tau must be >= 0, got {tau!r}")
    if tau >= 0.5:
        return math.inf

    def ok(d):
        return advantage_bound(mech, cert, d, sigma, k, classes, tol).advantage <= tau

    lo, hi = 0.0, sigma / math.sqrt(k * mech.samples)
    while ok(hi):  # route 2 alone exceeds any τ < 1/2 eventually
        lo, hi = hi, 2 * hi
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo
