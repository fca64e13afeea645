"""The attribute-inference adversary of the RAP experiment.

Advantage bounds for the deployed release live in :mod:`rpdist.privacy.bounds` (α/2 is not one).

The adversary knows every feature but the sensitive one and sees the release. Its best guess
under the training-data prior is the prior's mean restricted to the values compatible with the
release, so this module only needs the prior's sample and the compatible set as a cell mask.
"""

from __future__ import annotations

import numpy as np


def restricted_mean(prior: np.ndarray, edges: np.ndarray, compatible: np.ndarray) -> float:
    """Mean of the ``prior`` sample over the compatible cells.

    ``edges`` has one more entry than ``compatible``: cell k is [edges[k], edges[k+1]) (the last
    cell is closed). Prior values outside [edges[0], edges[-1]] fall in the nearest end cell. When
    no prior value lies in the compatible set, the adversary falls back to a uniform prior on the
    set and returns its midpoint-weighted mean; with no compatible cell at all it returns NaN.
    """
    prior = np.asarray(prior, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    compatible = np.asarray(compatible, dtype=bool)
    if compatible.shape != (len(edges) - 1,):
        raise ValueError("edges must have one more entry than the compatible mask")
    if not compatible.any():
        return float("nan")
    cell = np.clip(np.searchsorted(edges, prior, side="right") - 1, 0, len(compatible) - 1)
    inside = prior[compatible[cell]]
    if inside.size:
        return float(inside.mean())
    widths = np.diff(edges)[compatible]
    centres = (0.5 * (edges[:-1] + edges[1:]))[compatible]
    if widths.sum() <= 0:
        return float(centres.mean())
    return float(np.average(centres, weights=widths))
