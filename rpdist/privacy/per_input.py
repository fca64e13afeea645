"""Per-input privacy of the deployed release, from each certificate: the columns ``rpdist certify`` adds.

For every certified input x, with the release a user deploys (PREDICT by default, at the run's N
and α), :mod:`rpdist.privacy.bounds` gives
- ``advantage_at_radius``: a sound bound on a distinguisher's advantage between x and any x' within
  x's certified radius R (with confidence 1 − α over the certificate, or outright on the Gaussian
  route) — the figure the paper's α/2 was meant to be, and generally far above it;
- ``privacy_radius_tau{τ}``: the largest distance d at which that bound is ≤ τ (``--advantage τ``).
With k queries of fresh noise (``--queries k``, k > 1) the same columns end in ``_k{k}``.

The bound depends on an input only through its estimation count of the top class and its radius,
so it is computed once per distinct pair and run configuration, and remembered (the 65,536 most recently
used) for the life of the process: a streaming audit decides its inputs chunk by chunk, and its chunks share
most counts.
"""

from __future__ import annotations

from functools import lru_cache

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
    names = column_names(advantage, queries)
    out = {name: np.empty(len(count_top), dtype=np.float64) for name in names}
    run = (release, int(n), float(alpha), int(n0 or 100), float(sigma), int(classes),
           tuple(float(t) for t in advantage), tuple(int(k) for k in queries))
    for i, (count, r) in enumerate(zip(np.asarray(count_top), np.asarray(radius, dtype=np.float64))):
        for name, value in zip(names, _columns(run, int(count), float(r))):
            out[name][i] = value
    return out


def forget() -> None:
    """Drop the remembered columns, so that the next call computes them cold (benchmarks time that)."""
    _columns.cache_clear()


@lru_cache(maxsize=1 << 16)
def _columns(run: tuple, count: int, radius: float) -> tuple[float, ...]:
    """One input's column values (in ``column_names`` order) for one run configuration."""
    release, n, alpha, n0, sigma, classes, advantage, queries = run
    mech = _mechanism(release, n, alpha, n0, sigma)
    cert = Certificate.from_counts(count, n, alpha, two_sided=False)
    values = []
    for k in queries:
        values.append(advantage_bound(mech, cert, radius, sigma, k, classes).advantage)
        values += [privacy_radius(mech, cert, sigma, tau, k, classes) for tau in advantage]
    return tuple(values)


@lru_cache(maxsize=64)
def _mechanism(release: str, n: int, alpha: float, n0: int, sigma: float):
    return mechanism(release, n=n, alpha=alpha, n0=n0, sigma=sigma)
