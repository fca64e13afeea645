"""What the attacker sees: one released label per query, under each defense.

Every release takes a batch of images and one *query id* per image and returns labels. The ids
decide the randomness: the attack hands out a fresh id for every query (fresh noise), while a
*keyed* release ignores them and derives the id from a keyed hash of the image, so asking the same
question twice returns the same answer (query-consistent noise). Randomness of RP comes from the
engine's counter-based noise streams, that of randomized response from a hash of (seed, id); so
the answers never depend on how queries are batched or spread over Ray tasks.

``forward_passes`` counts model evaluations exactly as they are run.
"""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np

from rpdist.errors import InputError
from rpdist.models.refs import ModelRef

_MASK63 = (1 << 63) - 1
FRESH, KEYED = "fresh", "keyed"
PREDICT, MAJORITY = "predict", "majority"


def keyed_ids(images: np.ndarray, key: bytes) -> np.ndarray:
    """63-bit ids from blake2b(key, image bytes): equal images get equal ids, others look random."""
    flat = np.ascontiguousarray(images, dtype=np.float32).reshape(len(images), -1)
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), key=key, digest_size=8).digest(), "little")
                     & _MASK63 for row in flat], dtype=np.int64)


def _uniforms(seed: int, ids: np.ndarray, salt: int) -> np.ndarray:
    """One U[0,1) per id, a hash of (seed, id, salt)."""
    out = np.empty(len(ids))
    for i, q in enumerate(ids.tolist()):
        h = hashlib.blake2b(struct.pack("<3q", seed, q, salt), digest_size=8).digest()
        out[i] = (int.from_bytes(h, "little") >> 11) / float(1 << 53)
    return out


class Release:
    """Base class: counts forward passes, handles keyed ids and deduplicates repeated keyed queries.

    The default ``key`` is public and only makes benchmarks reproducible; a deployment must pass
    a secret key of its own, or an attacker could predict the keyed noise.
    """

    def __init__(self, noise: str = FRESH, key: bytes = b"rpdist-secret-key"):
        if noise not in (FRESH, KEYED):
            raise InputError(f"noise must be {FRESH!r} or {KEYED!r}, got {noise!r}")
        self.noise, self.key = noise, key
        self.forward_passes = 0

    def __call__(self, images: np.ndarray, ids: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.noise == FRESH:
            return self._release(images, np.asarray(ids, dtype=np.int64))
        # Keyed: identical images share one id, hence one answer; query each distinct image once.
        kid = keyed_ids(images, self.key)
        uniq, first, inverse = np.unique(kid, return_index=True, return_inverse=True)
        return self._release(images[first], uniq)[inverse]

    def share(self) -> None:
        """Prepare copies of this release to answer from Ray tasks; label releases need nothing."""

    def _release(self, images: np.ndarray, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LabelRelease(Release):
    """The model's argmax label: the undefended target, and the DP-SGD targets."""

    def __init__(self, model_ref: ModelRef, **kw):
        super().__init__(**kw)
        self.model_ref = model_ref
        self._model = None

    def labels(self, images: np.ndarray) -> np.ndarray:
        import torch

        if self._model is None:
            self._model = self.model_ref.load("cpu")
        with torch.inference_mode():
            out = self._model(torch.from_numpy(images)).argmax(1).numpy().astype(np.int64)
        self.forward_passes += len(images)
        return out

    def _release(self, images, ids):
        return self.labels(images)

    def __getstate__(self):  # ship the reference, not a loaded module, to Ray tasks
        return {**self.__dict__, "_model": None}


class RandomizedResponse(LabelRelease):
    """k-ary randomized response on the released label: keep it with probability e^ε/(e^ε+k−1), else
    release one of the k−1 other labels uniformly. ε-local-DP for the label of each query."""

    def __init__(self, model_ref: ModelRef, epsilon: float, num_classes: int, seed: int = 0, **kw):
        super().__init__(model_ref, **kw)
        if not math.isfinite(epsilon) or epsilon <= 0:
            raise InputError(f"randomized response needs a finite epsilon > 0, got {epsilon!r}")
        self.epsilon, self.k, self.seed = float(epsilon), int(num_classes), int(seed)

    @property
    def keep_probability(self) -> float:
        return math.exp(self.epsilon) / (math.exp(self.epsilon) + self.k - 1)

    def respond(self, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
        keep = _uniforms(self.seed, ids, 0) < self.keep_probability
        other = np.minimum((_uniforms(self.seed, ids, 1) * (self.k - 1)).astype(np.int64), self.k - 2)
        flipped = other + (other >= labels)  # uniform over the k−1 labels ≠ the true one
        return np.where(keep, labels, flipped)

    def _release(self, images, ids):
        return self.respond(self.labels(images), ids)


class SmoothedRelease(Release):
    """RP: the smoothed classifier through :func:`rpdist.predict` on the engine's warm replicas.

    ``predict`` releases PREDICT's answer (−1 = abstain, which the attacker reads as "not the
    target"); ``majority`` always releases the Monte-Carlo majority label, as the paper does.
    """

    def __init__(self, model_ref: ModelRef, sigma: float, n: int, release: str = MAJORITY, alpha: float = 0.001,
                 seed: int = 0, batch_size: int | None = None, workers: int | None = None,
                 address: str | None = None, device: str | None = None, **kw):
        super().__init__(**kw)
        if release not in (PREDICT, MAJORITY):
            raise InputError(f"release must be {PREDICT!r} or {MAJORITY!r}, got {release!r}")
        self.model_ref, self.sigma, self.n, self.release, self.alpha = model_ref, sigma, n, release, alpha
        self.seed, self.options = seed, dict(batch_size=batch_size, workers=workers, address=address, device=device)
        self.shared = None

    def share(self) -> None:
        """Start (or reuse) the replicas here, so that copies of this release in Ray tasks query them."""
        from rpdist.distributed.pool import ensure_ray, get_pool

        ensure_ray(self.options["address"])
        self.shared = get_pool(self.model_ref, self.options["workers"], self.options["device"]).share()

    def _release(self, images, ids):
        from rpdist.smoothing.job import predict

        df = predict(self.model_ref, images, sigma=self.sigma, n=self.n, alpha=self.alpha, seed=self.seed,
                     input_ids=ids, progress=False, shared_pool=self.shared, **self.options)
        self.forward_passes += len(images) * self.n
        column = "prediction" if self.release == PREDICT else "top_class"
        return df[column].to_numpy(dtype=np.int64)
