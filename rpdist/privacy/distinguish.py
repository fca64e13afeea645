"""The empirical distinguisher of the audit: fitted on half the trials, scored on the other (torch-free).

The adversary sees one observation — k releases at an input z that is x or x' (uniform prior) —
and guesses which. Its advantage is Pr[correct] − 1/2. The best guess for a known pair of output
laws is the likelihood-ratio rule, with advantage TV/2, which :mod:`rpdist.privacy.bounds` bounds.

Estimating the best rule and its success on the same trials would be optimistic (a rule fitted to
noise scores above chance even when x and x' are indistinguishable). So the rule is fitted on the
first half of the trials of each side — guess x' for an observation seen more often at x' than at
x, x otherwise (ties and unseen observations: x) — and scored on the second half. The scored
success count is then a sum of independent Bernoulli trials given the fitted rule, and its
two-sided Clopper–Pearson interval covers the rule's true success probability with the stated
confidence. The fitted rule is one distinguisher, so its true advantage is ≤ TV/2: an interval
that lies wholly above a sound bound refutes the bound.

k releases with fresh noise are i.i.d., so their multiset (the sorted k outputs) is a sufficient
statistic: observations are compared as sorted tuples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rpdist.errors import InputError
from rpdist.smoothing import stats


@dataclass(frozen=True)
class Distinguished:
    """The fitted rule's scored advantage (Pr[correct] − 1/2) and its two-sided interval."""

    advantage: float
    low: float
    high: float
    correct: int  # scored trials the rule got right, over both sides
    scored: int  # scored trials, over both sides
    level: float


def family_lower(correct, scored, pairs: int, level: float = 0.95) -> np.ndarray:
    """Advantage lower bounds that hold for all ``pairs`` scored rules at once (Bonferroni, one-sided).

    A run audits many pairs; with one 95% interval each, about 2.5% of them would lie above any
    true value by chance alone. Comparing these family-wise bounds with the sound bound instead
    makes "an interval above the bound" evidence against the bound at the stated level.
    """
    alpha = (1 - level) / max(int(pairs), 1)
    return stats.cp_lower(np.asarray(correct), np.asarray(scored), alpha) - 0.5


def observations(outputs: np.ndarray) -> np.ndarray:
    """Rows of k outputs → their multisets as sorted rows (the sufficient statistic of k i.i.d. releases)."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    return np.sort(outputs, axis=1)


def _codes(*sides: np.ndarray) -> list[np.ndarray]:
    """One integer code per distinct observation row, shared across the sides."""
    stacked = np.concatenate(sides)
    _, inverse = np.unique(stacked, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    cuts = np.cumsum([len(s) for s in sides])[:-1]
    return np.split(inverse, cuts)


def fit_and_score(at_x: np.ndarray, at_other: np.ndarray, level: float = 0.95) -> Distinguished:
    """Fit the count rule on the first half of each side's trials, score it on the second half.

    ``at_x`` and ``at_other`` are [trials, k] outputs (or [trials] for k = 1), in trial order; each
    side needs at least 2 trials.
    """
    at_x, at_other = observations(at_x), observations(at_other)
    if min(len(at_x), len(at_other)) < 2 or at_x.shape[1] != at_other.shape[1]:
        raise InputError("the distinguisher needs >= 2 trials of the same k on each side")
    if not 0 < level < 1:
        raise InputError(f"level must lie in (0, 1), got {level!r}")
    hx, ho = len(at_x) // 2, len(at_other) // 2
    fit_x, score_x, fit_o, score_o = _codes(at_x[:hx], at_x[hx:], at_other[:ho], at_other[ho:])
    size = 1 + max(int(c.max(initial=0)) for c in (fit_x, score_x, fit_o, score_o))
    says_other = np.bincount(fit_o, minlength=size) > np.bincount(fit_x, minlength=size)
    correct = int((~says_other[score_x]).sum() + says_other[score_o].sum())
    scored = len(score_x) + len(score_o)
    low, high = stats.clopper_pearson(correct, scored, 1 - level)
    return Distinguished(correct / scored - 0.5, float(low) - 0.5, float(high) - 0.5, correct, scored, level)
