"""BREP-MI (Kahla et al., CVPR 2022): label-only model inversion by boundary repulsion.

In a generator's latent space, start from a latent the target labels as the target class; query
labels on a sphere of radius r around it; step away from the sphere points labelled otherwise and
keep the step only if its point is still labelled as the target; when every sphere point agrees,
grow r (the point is deep inside the class region). The budget is a number of queries.

The plain attacker reads an abstention (−1) as "another class". The *abstain-aware* attacker
(``BrepConfig(abstain_aware=True)``) knows the release is PREDICT at some σ and N, so −1 means "the
vote here is split": the point lies in a band around a decision boundary, not past it. Its rule:

- sphere: an abstaining point repels with weight ``abstain_weight`` (0.5) instead of 1, since it marks
  the boundary band, while a point labelled otherwise lies beyond it; the sphere grows only when every
  point is the target (as plain);
- check: an abstaining candidate is rejected (it is not known to be the target), but it shows the step
  reached the band, so the radius, and with it the step, shrinks by ``abstain_shrink`` (not below
  ``min_radius``); a candidate labelled otherwise is rejected with the radius kept (as plain).

σ and N enter only through what an abstention means; the rule uses no numeric σ or N (the band's
width in latent units is unknown to the attacker). Against releases that never abstain it is the
plain attacker.

Each attack is a small state machine (:class:`BrepAttack`: ``propose`` points, ``observe`` labels),
so many target classes can share one release call: their sphere points × N samples then fill one
forward batch on the engine's replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rpdist.errors import InputError

ABSTAIN = -1
EXACT, ULP = "0", "ulp"  # nudges: exact repeats, and every pixel moved one ulp; else δ as a multiple of σ
PUBLIC, DISJOINT = "public", "disjoint"  # the attacker's prior: every public image, or none of the target's class
PRIORS = (PUBLIC, DISJOINT)
PLAIN, ABSTAIN_AWARE = "plain", "abstain-aware"  # the attackers: abstain read as another class, or as the boundary
STREAM_SHIFT = 32  # query id = (stream << 32) | counter: unique per attack and per query


@dataclass(frozen=True)
class BrepConfig:
    points: int = 16         # sphere points per step
    init_batch: int = 32     # random latents per initialisation round
    radius: float = 0.5      # initial sphere radius in latent units
    growth: float = 1.3      # radius factor when the whole sphere agrees
    step: float = 0.5        # step length as a fraction of the radius
    max_radius: float = 6.0
    budget: int = 400        # released labels (queries) per attack, repetitions included
    repeat: int = 1          # adaptive attacker: ask each point k times, keep the majority
    nudge: float = 0.0       # nudged repeats: repetitions 2..k move δ (ℓ2, input units) in a random direction
    nudge_ulp: bool = False  # ... or move every pixel one ulp up or down at random
    abstain_aware: bool = False  # read −1 as "near the boundary", not "another class" (module docstring)
    abstain_weight: float = 0.5  # abstain-aware: repulsion of an abstaining sphere point (other class: 1)
    abstain_shrink: float = 0.7  # abstain-aware: radius factor after an abstaining candidate
    min_radius: float = 0.05     # abstain-aware: the radius never shrinks below this


class BrepAttack:
    """One (target class, restart) attack; counts its queries exactly."""

    def __init__(self, target: int, restart: int, latent: int, config: BrepConfig, seed: int):
        self.target, self.restart, self.config = int(target), int(restart), config
        self.rng = np.random.default_rng([seed, target, restart])
        self.nudge_rng = np.random.default_rng([seed, target, restart, 1])  # apart, so nudging leaves the walk's draws alone
        self.stream = 1 + target * 4096 + restart
        self.counter = 0
        self.latent = latent
        self.z = None                      # current latent, labelled as the target
        self.start = None                  # the first latent labelled as the target
        self.radius = config.radius
        self.phase = "init"
        self.queries = 0
        self.steps = 0
        self.accepted = 0
        self.shrunk = 0                    # abstain-aware: radius shrinks after abstaining candidates
        self._pending = None
        self._candidate = None

    @property
    def found(self) -> bool:
        return self.z is not None

    @property
    def done(self) -> bool:
        return self.next_size() * self.config.repeat > self.config.budget - self.queries

    def next_size(self) -> int:
        return {"init": self.config.init_batch, "sphere": self.config.points, "check": 1}[self.phase]

    def propose(self) -> np.ndarray:
        """Latents to ask about next: [m, latent]."""
        if self.phase == "init":
            pts = self.rng.standard_normal((self.config.init_batch, self.latent))
        elif self.phase == "sphere":
            u = self.rng.standard_normal((self.config.points, self.latent))
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            self._pending = u
            pts = self.z + self.radius * u
        else:
            pts = self._candidate[None]
        return pts.astype(np.float32)

    def ids(self, m: int) -> np.ndarray:
        """Fresh query ids for m queries (repetitions get ids of their own)."""
        out = (np.int64(self.stream) << STREAM_SHIFT) + self.counter + np.arange(m, dtype=np.int64)
        self.counter += m
        return out

    def repeat_images(self, images: np.ndarray) -> np.ndarray:
        """Each image ``repeat`` times in a row: the first as is, the others nudged when the config says so
        (an attacker against keyed noise, which answers exact repeats identically)."""
        k = self.config.repeat
        out = np.repeat(np.asarray(images, dtype=np.float32), k, axis=0)
        if k == 1 or not (self.config.nudge > 0 or self.config.nudge_ulp):
            return out
        view = out.reshape(len(images), k, -1)
        view[:, 1:] = nudged(view[:, 1:], self.config.nudge, self.config.nudge_ulp, self.nudge_rng)
        return out

    def observe(self, labels: np.ndarray, points: np.ndarray) -> None:
        """Take the released labels (already the majority of repetitions) of the proposed points."""
        self.queries += len(labels) * self.config.repeat
        inside = labels == self.target
        if self.phase == "init":
            if inside.any():
                self.z = points[int(np.argmax(inside))].astype(np.float64)
                self.start = self.z.copy()
                self.phase = "sphere"
            return
        if self.phase == "sphere":
            self.steps += 1
            if inside.all():
                self.radius = min(self.radius * self.config.growth, self.config.max_radius)
                return
            # Repel from the points labelled otherwise: mean of ±u, outside points count −1.
            phi = np.where(inside, 1.0, -1.0)
            if self.config.abstain_aware:
                phi[labels == ABSTAIN] = -self.config.abstain_weight
            direction = (phi[:, None] * self._pending).mean(axis=0)
            norm = np.linalg.norm(direction)
            if norm == 0:
                return
            self._candidate = self.z + self.config.step * self.radius * direction / norm
            self.phase = "check"
            return
        if inside[0]:
            self.z = self._candidate
            self.accepted += 1
        elif self.config.abstain_aware and labels[0] == ABSTAIN:
            self.radius = max(self.radius * self.config.abstain_shrink, self.config.min_radius)
            self.shrunk += 1
        self.phase = "sphere"

    def result(self) -> np.ndarray:
        """The reconstruction latent (the last accepted point; a prior draw if none was ever found)."""
        if self.z is not None:
            return self.z.astype(np.float32)
        return self._fallback()

    def starting_point(self) -> np.ndarray:
        """Where the walk began: judging it too shows what the walk added to mere sampling from the prior."""
        return self.start.astype(np.float32) if self.start is not None else self._fallback()

    def _fallback(self) -> np.ndarray:
        return np.random.default_rng([7, self.target, self.restart]).standard_normal(self.latent).astype(np.float32)


def nudge_name(value) -> str:
    """Canonical name of a nudge: "0" (exact repeats), "ulp", or δ/σ as a number ("0.001")."""
    if isinstance(value, str) and value.strip().lower() == ULP:
        return ULP
    try:
        d = float(value)
    except (TypeError, ValueError):
        d = float("nan")
    if isinstance(value, bool) or not math.isfinite(d) or d < 0:
        raise InputError(f"--nudge must be 0, ulp or a number > 0 (δ in units of σ), got {value!r}")
    return EXACT if d == 0 else f"{d:g}"


def nudged(x: np.ndarray, delta: float, ulp: bool, rng: np.random.Generator) -> np.ndarray:
    """``x`` (float32, [..., features]) moved by δ in ℓ2 in a uniformly random direction per row, or,
    with ``ulp``, every feature moved one ulp up or down at random."""
    x = np.asarray(x, dtype=np.float32)
    if ulp:
        up = rng.random(x.shape) < 0.5
        return np.nextafter(x, np.where(up, np.inf, -np.inf).astype(np.float32))
    u = rng.standard_normal(x.shape)
    u *= delta / np.linalg.norm(u, axis=-1, keepdims=True)
    return (x + u).astype(np.float32)


def majority(labels: np.ndarray, repeat: int) -> np.ndarray:
    """Majority over each group of ``repeat`` consecutive labels; −1 (abstain) is a label too; ties go
    to the smallest label."""
    groups = labels.reshape(-1, repeat) + 1
    width = int(groups.max()) + 1
    counts = np.zeros((len(groups), width), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(groups)), repeat), groups.ravel()), 1)
    return counts.argmax(axis=1) - 1


def run_lockstep(attacks: list[BrepAttack], decode, release, on_round=None) -> None:
    """Advance all attacks together; each round's points from every attack go in one release call.
    ``on_round(queries)``, when given, hears how many queries each round spent (for progress)."""
    while True:
        active = [a for a in attacks if not a.done]
        if not active:
            return
        proposals = [(a, a.propose()) for a in active]
        images, ids = [], []
        for a, pts in proposals:
            images.append(a.repeat_images(decode(pts)))
            ids.append(a.ids(len(pts) * a.config.repeat))
        labels = release(np.concatenate(images), np.concatenate(ids))
        start = 0
        for a, pts in proposals:
            m = len(pts) * a.config.repeat
            a.observe(majority(labels[start:start + m], a.config.repeat), pts)
            start += m
        if on_round is not None:
            on_round(len(labels))
