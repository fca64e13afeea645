"""What the attacker sees: one released label per query, under each defense.

Every release takes a batch of images and one *query id* per image and returns labels. The ids
decide the randomness: the attack hands out a fresh id for every query (fresh noise), while a
*keyed* release ignores them and derives the id from a keyed hash of the image's cell in a grid,
so asking the same question twice, or a question nudged by less than the grid resolves, returns
the same answer (query-consistent noise). Randomness of RP comes from the engine's counter-based
noise streams, that of randomized response from a hash of (seed, id); so the answers never depend
on how queries are batched or spread over Ray tasks.

The key is a secret: it comes from a key file, from ``$RPDIST_NOISE_KEY``, or from ``os.urandom``
(:func:`noise_key`; an attack run keeps such a key under the cache directory until it completes,
:func:`stored_key`). No key is built into the code.

``forward_passes`` counts model evaluations exactly as they are run.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rpdist.errors import InputError
from rpdist.io.store import atomic_write
from rpdist.models.refs import ModelRef
from rpdist.privacy.mechanisms import Certify, Majority, Predict

_MASK63 = (1 << 63) - 1
FRESH, KEYED = "fresh", "keyed"
PREDICT, MAJORITY, CERTIFY = Predict.name, Majority.name, Certify.name
SMOOTHED_RELEASES = (PREDICT, MAJORITY, CERTIFY)
CERTIFY_N0 = 100  # the certify release's selection samples, charged to its forward passes
ABSTAIN = -1
KEY_ENV = "RPDIST_NOISE_KEY"
MIN_KEY_BYTES = 16
# A key's check value is 24 bits of PBKDF2-SHA256 of the key at this many rounds: enough for a resumed run to tell
# another key from the one it started with (two keys share a check value with probability 2^-24), too few bits to
# single out a random key, and slow to compute (about 0.1 s on one core), so that guessing a weak key from it is slow.
KEY_CHECK_ROUNDS = 200_000
# Width of a keyed-grid cell, in units of the release's σ. Over keys, a nudge δ moves a point into another
# cell with probability ≤ ‖Rδ‖₁ / width (R: the grid's secret rotation; its offset is uniform), about
# 0.8·√d·‖δ‖₂ / width: at 4σ a 1e-3σ nudge leaves its cell in 0.07% of queries on insurance, 0.16% on 8x8
# digits and 0.56% on 28x28 MNIST.
# Points in one cell share their noise streams; that does not bias any single answer (for a random
# key each answer still sees fresh N(0, σ²) noise), it only correlates the answers to nearby queries.
KEY_GRID_SIGMAS = 4.0
# Releases without a σ (randomized response) use this width in input units (pixels span [0, 1]).
KEY_GRID_UNITS = 1.0


@dataclass(frozen=True)
class NoiseKey:
    """A secret key for keyed noise and where it came from; only ``source`` and ``check`` may be recorded."""

    secret: bytes = field(repr=False)
    source: str  # "file", "environment", "random", or "generated" / "stored" (see stored_key)

    @functools.cached_property
    def check(self) -> str:
        """The key's check value (6 hex digits; see ``KEY_CHECK_ROUNDS``), the manifest's way to name a key."""
        return hashlib.pbkdf2_hmac("sha256", self.secret, b"rpdist noise key check", KEY_CHECK_ROUNDS)[:3].hex()

    def describe(self) -> dict:
        """What a manifest may say about the key: its source and check value, never the key."""
        text = {"file": "read from --noise-key-file", "environment": f"read from ${KEY_ENV}",
                "random": "drawn from os.urandom for this run only (not stored)",
                "generated": "drawn from os.urandom and kept (mode 0600) under the cache directory until the run "
                             "completes",
                "stored": "read back from the cache directory, where this run kept the key it drew"}[self.source]
        return {"source": self.source, "description": text, "check": self.check}


def _key_from(material: bytes, source: str, where: str) -> NoiseKey:
    material = material.rstrip(b"\r\n")  # `echo secret > file` and RPDIST_NOISE_KEY=secret agree
    if len(material) < MIN_KEY_BYTES:
        raise InputError(f"the noise key {where} has {len(material)} bytes; use at least {MIN_KEY_BYTES} "
                         "(e.g. 32 random bytes: head -c 32 /dev/urandom > KEYFILE)")
    # blake2b takes keys of at most 64 bytes; hashing maps any length to 32.
    return NoiseKey(hashlib.blake2b(material, digest_size=32).digest(), source)


def noise_key(key_file: str | os.PathLike | None = None, environ=None) -> NoiseKey:
    """The secret for keyed noise: ``key_file``, else ``$RPDIST_NOISE_KEY``, else 32 bytes of
    ``os.urandom`` for this process only (answers then hold within a run, not across runs; a run
    keeps such a key with :func:`stored_key`)."""
    environ = os.environ if environ is None else environ
    if key_file is not None:
        path = Path(key_file)
        try:
            material = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the noise key file {str(path)!r}: {exc.strerror or exc}") from None
        return _key_from(material, "file", f"in {str(path)!r}")
    value = environ.get(KEY_ENV)
    if value is not None:
        return _key_from(value.encode("utf-8"), "environment", f"in ${KEY_ENV}")
    return NoiseKey(os.urandom(32), "random")


def stored_key(path: Path) -> NoiseKey:
    """The key kept at ``path``, or, when there is none, 32 ``os.urandom`` bytes written there first (hex, mode
    0600, atomically): a run given no key of its own resumes under the key it started with."""
    path = Path(path)

    def write(tmp: str) -> None:  # ``material`` is drawn below, only when no key is kept yet
        with open(tmp, "wb") as handle:
            handle.write(material)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        if path.is_file():
            return _key_from(path.read_bytes(), "stored", f"in {str(path)!r}")
        material = os.urandom(32).hex().encode()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, write, mode=0o600)
    except (OSError, InputError) as exc:
        raise InputError(f"cannot keep the noise key at {str(path)!r}: {getattr(exc, 'strerror', None) or exc} (give one with "
                         f"--noise-key-file or ${KEY_ENV})") from None
    return _key_from(material, "generated", f"in {str(path)!r}")


def random_seed() -> int:
    """A 63-bit seed from os.urandom: fresh noise an attacker cannot predict from the code."""
    return int.from_bytes(os.urandom(8), "little") & _MASK63


@functools.lru_cache(maxsize=8)
def _grid(key: bytes, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """The grid's secret rotation (orthogonal, [dims, dims]) and offset (uniform in [0, 1) cells per
    axis), both functions of the key."""
    seed = int.from_bytes(hashlib.blake2b(b"grid", key=key, digest_size=32).digest(), "little")
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    q *= np.sign(np.diag(r))  # Haar-distributed
    q.setflags(write=False)
    return q, rng.random(dims)


def keyed_ids(images: np.ndarray, key: bytes, cell: float) -> np.ndarray:
    """63-bit ids from blake2b(key, the image's cell in a secretly rotated and offset grid of width ``cell``).

    Images in one cell get equal ids, hence equal noise; ids of different cells look random. The
    rotation matters for pixels and one-hot features, which take few distinct values: on axis-aligned
    cells a boundary that falls next to a common value (all images with pixel 12 at 1.0, say) moves
    many queries at once; rotated, each query's distance to the boundaries is its own.
    """
    if not (isinstance(cell, (int, float)) and math.isfinite(cell) and cell > 0):
        raise InputError(f"the keyed grid needs a finite cell width > 0, got {cell!r}")
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    rotation, offset = _grid(bytes(key), flat.shape[1])
    # + 0.0 turns −0.0 into 0.0, so one cell has one byte string.
    cells = np.ascontiguousarray(np.floor(flat @ rotation / cell + offset) + 0.0)
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), key=key, digest_size=8).digest(), "little")
                     & _MASK63 for row in cells], dtype=np.int64)


def _uniforms(seed: int, ids: np.ndarray, salt: int) -> np.ndarray:
    """One U[0,1) per id, a hash of (seed, id, salt)."""
    out = np.empty(len(ids))
    for i, q in enumerate(ids.tolist()):
        h = hashlib.blake2b(struct.pack("<3q", seed, q, salt), digest_size=8).digest()
        out[i] = (int.from_bytes(h, "little") >> 11) / float(1 << 53)
    return out


def _occurrence(ids: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same id (0 for the first)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.r_[0, np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    out = np.empty(len(ids), dtype=np.int64)
    out[order] = np.arange(len(ids)) - run_start
    return out


class Release:
    """Base class: counts forward passes, handles keyed ids and deduplicates repeated keyed queries.

    ``key`` (a :class:`NoiseKey`) is the secret of keyed noise; without one, :func:`noise_key`
    supplies it (key file none, so ``$RPDIST_NOISE_KEY`` or a random key). ``cell`` is the keyed
    grid's width in input units.
    """

    default_cell = KEY_GRID_UNITS

    def __init__(self, noise: str = FRESH, key: NoiseKey | None = None, cell: float | None = None):
        if noise not in (FRESH, KEYED):
            raise InputError(f"noise must be {FRESH!r} or {KEYED!r}, got {noise!r}")
        if key is not None and not isinstance(key, NoiseKey):
            raise InputError("key must be an rpdist NoiseKey (see rpdist.defenses.releases.noise_key)")
        self.noise, self.cell = noise, cell
        self.key = key if key is not None or noise == FRESH else noise_key()
        self.forward_passes = 0

    @property
    def grid(self) -> float:
        return float(self.cell if self.cell is not None else self.default_cell)

    def __call__(self, images: np.ndarray, ids: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.noise == FRESH:
            return self._release(images, np.asarray(ids, dtype=np.int64))
        # Keyed: each distinct image is answered once, with its cell's id; the answer to an image
        # is then a function of (image, key) alone, whatever else shares its batch.
        flat = images.reshape(len(images), -1)
        _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
        distinct = images[first]
        kid = keyed_ids(distinct, self.key.secret, self.grid)
        # Distinct images of one cell share an id; the engine wants unique ids per call, so they go
        # in rounds (rare: it needs two distinct queries within one cell in one batch).
        labels = np.empty(len(distinct), dtype=np.int64)
        rounds = _occurrence(kid)
        for r in range(int(rounds.max()) + 1 if len(kid) else 0):
            rows = np.flatnonzero(rounds == r)
            labels[rows] = self._release(distinct[rows], kid[rows])
        return labels[inverse.reshape(-1)]

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

    def __init__(self, model_ref: ModelRef, epsilon: float, num_classes: int, seed: int | None = None, **kw):
        super().__init__(model_ref, **kw)
        if not math.isfinite(epsilon) or epsilon <= 0:
            raise InputError(f"randomized response needs a finite epsilon > 0, got {epsilon!r}")
        self.epsilon, self.k = float(epsilon), int(num_classes)
        self.seed = random_seed() if seed is None else int(seed)

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
    target"); ``certify`` releases CERTIFY's label (n0 = ``CERTIFY_N0`` selection samples, then N),
    −1 where it abstains; ``majority`` always releases the Monte-Carlo majority label, as the paper
    does, with no certificate behind it.
    Without a ``seed`` the noise seed comes from os.urandom. Keyed cells are ``KEY_GRID_SIGMAS`` σ wide.
    """

    def __init__(self, model_ref: ModelRef, sigma: float, n: int, release: str = MAJORITY, alpha: float = 0.001,
                 seed: int | None = None, batch_size: int | None = None, workers: int | None = None,
                 address: str | None = None, device: str | None = None, **kw):
        super().__init__(**kw)
        if release not in SMOOTHED_RELEASES:
            raise InputError(f"release must be one of {', '.join(SMOOTHED_RELEASES)}, got {release!r}")
        self.model_ref, self.sigma, self.n, self.release, self.alpha = model_ref, sigma, n, release, alpha
        self.seed = random_seed() if seed is None else int(seed)
        self.options = dict(batch_size=batch_size, workers=workers, address=address, device=device)
        self.shared = None

    @property
    def default_cell(self) -> float:
        return KEY_GRID_SIGMAS * self.sigma

    def share(self) -> None:
        """Start (or reuse) the replicas here, so that copies of this release in Ray tasks query them."""
        from rpdist.distributed.pool import ensure_ray, get_pool

        ensure_ray(self.options["address"])
        self.shared = get_pool(self.model_ref, self.options["workers"], self.options["device"]).share()

    def _release(self, images, ids):
        from rpdist.smoothing.job import certify, predict

        common = dict(sigma=self.sigma, n=self.n, alpha=self.alpha, seed=self.seed, input_ids=ids, **self.options)
        if self.release == CERTIFY:
            df = certify(self.model_ref, images, n0=CERTIFY_N0, shared_pool=self.shared, **common)
            self.forward_passes += len(images) * (CERTIFY_N0 + self.n)
        else:
            df = predict(self.model_ref, images, progress=False, shared_pool=self.shared, **common)
            self.forward_passes += len(images) * self.n
        column = "top_class" if self.release == MAJORITY else "prediction"
        return df[column].to_numpy(dtype=np.int64)


class RandomAbstention(LabelRelease):
    """Baseline for RP's PREDICT release: the undefended label, replaced by −1 (abstain) with probability
    ``rate`` per query, independently of the image. The coin is a hash of (seed, query id), as for
    randomized response, so keyed noise answers a repeated query alike. Abstention without a
    certificate: if RP's abstentions protect only through their rate, this does as well."""

    def __init__(self, model_ref: ModelRef, rate: float, seed: int | None = None, **kw):
        super().__init__(model_ref, **kw)
        if not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
            raise InputError(f"the abstain rate must lie in [0, 1], got {rate!r}")
        self.rate = float(rate)
        self.seed = random_seed() if seed is None else int(seed)

    def _release(self, images, ids):
        labels = self.labels(images)
        return np.where(_uniforms(self.seed, ids, 2) < self.rate, ABSTAIN, labels)


class NoisyInputRelease(SmoothedRelease):
    """Baseline without a certificate: the label of one forward pass on x + N(0, σ²I) (N = 1), never abstaining
    (except on non-finite logits, as everywhere in the engine).

    The pass runs on the engine's replicas with its counter-based noise (stream (seed, query id),
    PREDICT phase, block 0), so answers do not depend on batching and keyed ids give keyed noise. It
    bypasses :func:`rpdist.predict` only because PREDICT's config refuses N = 1 (no N < 11 can pass
    its test at α = 0.001); the counts come from the same scheduler and replicas.
    """

    def __init__(self, model_ref: ModelRef, sigma: float, **kw):
        super().__init__(model_ref, sigma, 1, release=MAJORITY, **kw)

    def _release(self, images, ids):
        counts = engine_votes(self.model_ref, images, ids, sigma=self.sigma, n=self.n, seed=self.seed,
                              shared=self.shared, **self.options)
        self.forward_passes += len(images) * self.n
        return np.where(counts[:, -1] > 0, ABSTAIN, counts[:, :-1].argmax(axis=1))


def engine_votes(model_ref: ModelRef, images: np.ndarray, ids: np.ndarray, *, sigma: float, n: int, seed: int,
                 shared=None, batch_size: int | None = None, workers: int | None = None, address: str | None = None,
                 device: str | None = None) -> np.ndarray:
    """Vote counts [images, classes + 1] (last slot: non-finite samples) of n noisy samples per image, in
    the PREDICT phase of stream (seed, id), from the engine's scheduler and replicas, with no decision."""
    from rpdist.distributed.plan import PhaseSpec, Plan
    from rpdist.distributed.pool import default_batch_size, ensure_ray, get_pool
    from rpdist.distributed.scheduler import run_plan
    from rpdist.smoothing.job import check_inputs, probe_model
    from rpdist.smoothing.noise import DEFAULT_BLOCK, Phase

    X, _, ids = check_inputs(images, None, ids)
    classes = probe_model(model_ref, X)
    ensure_ray(address)
    pool = get_pool(model_ref, workers, device, shared)
    plan = Plan(len(X), (PhaseSpec(Phase.PREDICT, n),), DEFAULT_BLOCK, batch_size or default_batch_size(pool.device))
    out = np.zeros((len(X), classes + 1), dtype=np.int64)
    for chunk, counts in run_plan(pool, X, ids, plan, sigma=sigma, seed=seed, num_classes=classes,
                                  chunks=range(plan.num_chunks)):
        start, stop = plan.chunk_rows(chunk)
        out[start:stop] = counts[Phase.PREDICT].sum(axis=1)
    return out
