"""Models with exactly known smoothed probabilities, for checking certificates against the truth."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm


class LinearOracle:
    """f(x) = 1 if w·x + b > 0 else 0, as a two-logit torch module, with its exact geometry."""

    def __init__(self, dim: int = 5, seed: int = 0, weights=None, bias: float | None = None):
        rng = np.random.default_rng(seed)
        w = rng.normal(size=dim) if weights is None else np.asarray(weights, dtype=np.float64)
        b = float(rng.normal()) if bias is None else float(bias)
        self.module = torch.nn.Linear(len(w), 2).double()
        with torch.no_grad():
            self.module.weight.copy_(torch.tensor(np.stack([-w, w]) / 2))
            self.module.bias.copy_(torch.tensor([-b / 2, b / 2]))
        self.module = self.module.float()
        # The geometry of the float32 module actually evaluated (logit difference = w32·x + b32),
        # not of the float64 draw it was rounded from: ±w/2 round symmetrically, so this is exact.
        with torch.no_grad():
            weight = self.module.weight.double().numpy()
            bias = self.module.bias.double().numpy()
        self.w = weight[1] - weight[0]
        self.b = float(bias[1] - bias[0])

    def inputs_at_distances(self, distances: np.ndarray, seed: int = 1) -> np.ndarray:
        """Random points whose signed distances to the hyperplane are ``distances``."""
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(len(distances), len(self.w)))
        unit = self.w / np.linalg.norm(self.w)
        x -= np.outer(self.signed_distance(x), unit)  # project onto the hyperplane
        return (x + np.outer(distances, unit)).astype(np.float32)

    def signed_distance(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) @ self.w + self.b) / np.linalg.norm(self.w)

    def label(self, x: np.ndarray) -> np.ndarray:
        return (self.signed_distance(x) > 0).astype(np.int64)

    def smoothed_top_probability(self, x: np.ndarray, sigma: float) -> np.ndarray:
        return norm.cdf(np.abs(self.signed_distance(x)) / sigma)


class NearestCentre(torch.nn.Module):
    """Class k wins where coordinate 0 is nearest ``centres[k]``: a K-class model computed element
    by element, so a row's logits never depend on the other rows of its forward batch.

    (A ``Linear`` layer's matmul may round a row differently at another batch size, which can flip
    an argmax at float precision; this model cannot, so it tests packing bit for bit.)
    """

    def __init__(self, centres):
        super().__init__()
        self.register_buffer("centres", torch.tensor(list(centres), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(x[:, :1] - self.centres) ** 2
