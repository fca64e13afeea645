"""Data roles of the model-inversion benchmark and their cached models.

The digits train split is cut once (seeded) into a *private* half, on which the target and the
independent evaluation classifier train, and a *public* half, on which the attacker's generator
(a small VAE) trains. Every model is a deterministic function of a recipe and is cached by the
recipe's hash, exactly like :mod:`rpdist.models.zoo` (whose helpers are reused).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rpdist.models import architectures

from rpdist.models import zoo as models
from rpdist.datasets.catalog import SPLIT_SEED, TEST_FRACTION, load_dataset
from rpdist.errors import InputError
from rpdist.models.refs import ModelRef

ROLE_VERSION = 1
ROLE_SEED = 1234  # seeds the private/public cut, independent of the train/test split
DATASET = "digits"
NUM_CLASSES = 10
LATENT = 8

TARGET = dict(arch="cnn", arch_kwargs={"num_classes": 10, "channels": 1, "side": 8}, epochs=40, lr=2e-3,
              batch_size=64, seed=11)
EVAL = dict(arch="mlp", arch_kwargs={"in_features": 64, "num_classes": 10, "hidden": [256, 128]}, epochs=80,
            lr=2e-3, batch_size=64, seed=29, train_sigma=0.1)
GENERATOR = dict(arch="vae", latent=LATENT, hidden=128, epochs=400, lr=2e-3, batch_size=64, seed=5, beta=1.0)
# Target training noise: one model serves the undefended release and every RP release, so the
# comparison isolates the release mechanism; mild augmentation keeps it accurate under noise.
TARGET_TRAIN_SIGMA = 0.25


def roles_split() -> dict[str, np.ndarray]:
    """Row positions (into the train split) of the private and public halves."""
    n = len(load_dataset(DATASET, split="train"))
    order = np.random.default_rng(ROLE_SEED).permutation(n)
    half = n // 2
    return {"private": np.sort(order[:half]), "public": np.sort(order[half:])}


def role_data(role: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of ``private``, ``public`` or ``test``."""
    if role == "test":
        data = load_dataset(DATASET, split="test")
        return data.X, data.y
    if role not in ("private", "public"):
        raise InputError(f"unknown data role {role!r}")
    data = load_dataset(DATASET, split="train")
    rows = roles_split()[role]
    return data.X[rows], data.y[rows]


def _base(role: str, spec: dict, data_role: str) -> dict:
    return {"role_version": ROLE_VERSION, "role": role, "dataset": DATASET,
            "dataset_sha256": load_dataset(DATASET, split="train").sha256, "split_seed": SPLIT_SEED,
            "test_fraction": TEST_FRACTION, "role_seed": ROLE_SEED, "data": data_role,
            "torch": torch.__version__, **json_clean(spec)}


def json_clean(spec: dict) -> dict:
    import json

    return json.loads(json.dumps(spec))


def target_recipe(train_sigma: float = TARGET_TRAIN_SIGMA) -> dict:
    return {**_base("target", TARGET, "private"), "train_sigma": float(train_sigma)}


def eval_recipe() -> dict:
    return _base("eval", EVAL, "private")


def generator_recipe(epochs: int | None = None) -> dict:
    """``epochs`` overrides the schedule (tests use a short one; the benchmark the default)."""
    spec = dict(GENERATOR) if epochs is None else {**GENERATOR, "epochs": int(epochs)}
    return _base("generator", spec, "public")


def dpsgd_recipe(epsilon: float | None, delta: float = 1e-5, clip: float = 1.0) -> dict:
    """``epsilon=None`` is the clip-only control: per-sample clipping, no noise."""
    if epsilon is not None and (not math.isfinite(epsilon) or epsilon <= 0):
        raise InputError(f"DP-SGD epsilon must be a finite number > 0, got {epsilon!r}")
    return {**_base("dpsgd", TARGET, "private"), "epsilon": epsilon, "delta": float(delta), "clip": float(clip),
            "epochs": 30, "lr": 2e-3, "batch_size": 64}


class VAE(nn.Module):
    """A small fully connected VAE; the decoder is the attacker's generator G(z) → [B,1,8,8] in [0,1]."""

    def __init__(self, latent: int = LATENT, hidden: int = 128):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 64))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z)).view(-1, 1, 8, 8)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encoder(torch.flatten(x, 1)).chunk(2, dim=1)
        return mu, logvar


def _cached(rec: dict, build, train, cache_dir=None) -> dict[str, torch.Tensor]:
    """The state dict for ``rec``: read from the cache (weights only), else trained and written atomically."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else models.cache_dir()
    path = root / f"mia-{rec['role']}-{models._recipe_key(rec)}.pt"
    return models.cached_state(path, build, train)


def _train_vae(rec: dict, X: np.ndarray) -> dict[str, torch.Tensor]:
    Xt = torch.from_numpy(X).flatten(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rec["seed"])
        vae = VAE(rec["latent"], rec["hidden"])
        gen = torch.Generator().manual_seed(rec["seed"])
        opt = torch.optim.Adam(vae.parameters(), lr=rec["lr"])
        for _ in range(rec["epochs"]):
            order = torch.randperm(len(Xt), generator=gen)
            for start in range(0, len(Xt), rec["batch_size"]):
                x = Xt[order[start:start + rec["batch_size"]]]
                mu, logvar = vae(x)
                z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
                logits = vae.decoder(z)
                rec_loss = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
                kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
                opt.zero_grad(set_to_none=True)
                (rec_loss + rec["beta"] * kl).backward()
                opt.step()
    vae.eval()
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def target_model(train_sigma: float = TARGET_TRAIN_SIGMA, cache_dir=None) -> ModelRef:
    """The attacked CNN, trained on the private half."""
    rec = target_recipe(train_sigma)
    X, y = role_data("private")
    state = _cached(rec, lambda: architectures.build(rec["arch"], **rec["arch_kwargs"]),
                    lambda: models.fit_classifier(rec, X, y), cache_dir)
    return ModelRef.from_state_dict(rec["arch"], rec["arch_kwargs"], state)


def eval_model(cache_dir=None) -> ModelRef:
    """The judge: an MLP (another architecture and seed) trained on the same private half."""
    rec = eval_recipe()
    X, y = role_data("private")
    state = _cached(rec, lambda: architectures.build(rec["arch"], **rec["arch_kwargs"]),
                    lambda: models.fit_classifier(rec, X, y), cache_dir)
    return ModelRef.from_state_dict(rec["arch"], rec["arch_kwargs"], state)


def generator(cache_dir=None, epochs: int | None = None) -> VAE:
    """The attacker's prior: a VAE trained on the public half only."""
    rec = generator_recipe(epochs)
    X, _ = role_data("public")
    state = _cached(rec, lambda: VAE(rec["latent"], rec["hidden"]), lambda: _train_vae(rec, X), cache_dir)
    vae = VAE(rec["latent"], rec["hidden"])
    vae.load_state_dict(state)
    return vae.eval()


def dpsgd_model(epsilon: float | None, delta: float = 1e-5, clip: float = 1.0, cache_dir=None) -> ModelRef:
    """The target CNN trained with Opacus DP-SGD at (ε, δ), or clip-only when ``epsilon`` is None."""
    from rpdist.defenses.dpsgd import train_dpsgd

    rec = dpsgd_recipe(epsilon, delta, clip)
    X, y = role_data("private")
    state = _cached(rec, lambda: architectures.build(rec["arch"], **rec["arch_kwargs"]),
                    lambda: train_dpsgd(rec, X, y), cache_dir)
    return ModelRef.from_state_dict(rec["arch"], rec["arch_kwargs"], state)


def accuracy(ref: ModelRef, role: str = "test") -> float:
    """Clean top-1 accuracy of a model on a data role."""
    X, y = role_data(role)
    with torch.inference_mode():
        pred = ref.load("cpu")(torch.from_numpy(X)).argmax(1).numpy()
    return float((pred == y).mean())
