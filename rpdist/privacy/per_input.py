"""Per-input privacy of the deployed release, from each certificate: the columns ``rpdist certify`` adds.

For every certified input x, with the release a user deploys (PREDICT by default, at the run's N
and α), :mod:`rpdist.privacy.bounds` gives
- ``advantage_at_radius``: a sound bound on a distinguisher's advantage between x and any x' within
  x's certified radius R (with confidence 1 − α over the certificate, or outright on the Gaussian
  route) — the figure the paper's α/2 was meant to be, and generally far above it;
- ``privacy_radius_tau{τ}``: the largest distance d at which that bound is ≤ τ (``--advantage τ``).
With k queries of fresh noise (``--queries k``, k > 1) the same columns end in ``_k{k}``.

The bound depends on an input only through its estimation count of the top class and its radius,
so it is computed once per distinct pair: a large audit has far fewer of them than inputs.
"""

from __future__ import annotations


import numpy as np

from rpdist.privacy.bounds import Certificate, advantage_bound, privacy_radius
from rpdist.privacy.mechanisms import Predict, mechanism

DEFAULT_RELEASE = Predict.name
DEFAULT_ADVANTAGE = (0.05,)
DEFAULT_QUERIES = (1,)


def column_names(advantage, queries) -> list[str]:
    names = []
    for k in queries:
        suffix = "" if k == 1 else f"_k{k}"
        names.append(f"advantage_at_radius{suffix}")
        names += [f"privacy_radius_tau{tau:g}{suffix}" for tau in advantage]
    return names


def release_privacy(count_top, radius, *, n: int, alpha: float, sigma: float, classes: int, release: str,
                    advantage, queries, n0: int | None = None) -> dict[str, np.ndarray]:
    """The per-input columns, from CERTIFY's estimation counts of the top class and its radii."""
    mech = mechanism(release, n=n, alpha=alpha, n0=n0 or 100, sigma=sigma)
    names = column_names(advantage, queries)
    out = {name: np.empty(len(count_top), dtype=np.float64) for name in names}
    cache: dict[tuple[int, float], list[float]] = {}
    for i, (count, r) in enumerate(zip(np.asarray(count_top), np.asarray(radius, dtype=np.float64))):
        key = (int(count), float(r))
        if key not in cache:
            cert = Certificate.from_counts(key[0], n, alpha, two_sided=False)
            values = []
            for k in queries:
                values.append(advantage_bound(mech, cert, key[1], sigma, k, classes).advantage)
                values += [privacy_radius(mech, cert, sigma, tau, k, classes) for tau in advantage]
            cache[key] = values
        for name, value in zip(names, cache[key]):
            out[name][i] = value
    return out
