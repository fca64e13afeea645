"""Data roles of the model-inversion benchmark and their cached models.

A dataset's train split is cut once (seeded) into a *private* half, on which the target and the
independent evaluation classifier train, and a *public* half, on which the attacker's generator
(a small VAE) trains. With the class-disjoint prior (``exclude``), the generator for target class
t never sees a public image of class t, as in BREP-MI's threat model where the public identities
are not the private ones. Every model is a deterministic function of a recipe and is cached by
the recipe's hash, exactly like :mod:`rpdist.models.zoo` (whose helpers are reused).
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
DATASET = "digits"  # the default (and fast) benchmark
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

# Per dataset: image side and the recipes of the three roles. digits' recipes are the ones the
# benchmark has always used (same hashes, same cached models). mnist5k's target is the dataset's
# built-in CNN (rpdist.models.zoo), its evaluator an MLP (another architecture, seed and noise).
RECIPES: dict[str, dict] = {
    "digits": dict(side=8, target=TARGET, eval=EVAL, generator=GENERATOR),
    "mnist5k": dict(
        side=28,
        target=dict(arch="cnn", arch_kwargs={"num_classes": 10, "channels": 1, "side": 28, "stride": 2}, epochs=15,
                    lr=2e-3, batch_size=64, seed=11),
        eval=dict(arch="mlp", arch_kwargs={"in_features": 784, "num_classes": 10, "hidden": [512, 256]}, epochs=40,
                  lr=1e-3, batch_size=64, seed=29, train_sigma=0.1),
        generator=dict(arch="vae", latent=16, hidden=256, epochs=60, lr=1e-3, batch_size=64, seed=5, beta=1.0),
    ),
}
DATASETS = tuple(RECIPES)


def _recipes(dataset: str) -> dict:
    if dataset not in RECIPES:
        raise InputError(f"model inversion supports the datasets {', '.join(DATASETS)}, got {dataset!r}")
    return RECIPES[dataset]


def side(dataset: str = DATASET) -> int:
    """Image side in pixels (images are [1, side, side])."""
    return int(_recipes(dataset)["side"])


def roles_split(dataset: str = DATASET) -> dict[str, np.ndarray]:
    """Row positions (into the train split) of the private and public halves."""
    n = len(load_dataset(_checked(dataset), split="train"))
    order = np.random.default_rng(ROLE_SEED).permutation(n)
    half = n // 2
    return {"private": np.sort(order[:half]), "public": np.sort(order[half:])}


def _checked(dataset: str) -> str:
    _recipes(dataset)
    return dataset


def role_data(role: str, dataset: str = DATASET) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of ``private``, ``public`` or ``test``."""
    if role == "test":
        data = load_dataset(_checked(dataset), split="test")
        return data.X, data.y
    if role not in ("private", "public"):
        raise InputError(f"unknown data role {role!r}")
    data = load_dataset(_checked(dataset), split="train")
    rows = roles_split(dataset)[role]
    return data.X[rows], data.y[rows]


def _base(role: str, spec: dict, data_role: str, dataset: str) -> dict:
    return {"role_version": ROLE_VERSION, "role": role, "dataset": dataset,
            "dataset_sha256": load_dataset(dataset, split="train").sha256, "split_seed": SPLIT_SEED,
            "test_fraction": TEST_FRACTION, "role_seed": ROLE_SEED, "data": data_role,
            "torch": torch.__version__, **json_clean(spec)}


def json_clean(spec: dict) -> dict:
    import json

    return json.loads(json.dumps(spec))


def target_recipe(train_sigma: float = TARGET_TRAIN_SIGMA, dataset: str = DATASET) -> dict:
    return {**_base("target", _recipes(dataset)["target"], "private", dataset), "train_sigma": float(train_sigma)}


def eval_recipe(dataset: str = DATASET) -> dict:
    return _base("eval", _recipes(dataset)["eval"], "private", dataset)


def generator_recipe(epochs: int | None = None, dataset: str = DATASET, exclude: int | None = None,
                     **overrides) -> dict:
    """``epochs`` overrides the schedule (tests use a short one; the benchmark the default); ``exclude``
    leaves one class out of the public data (the class-disjoint prior); ``overrides`` replace other
    generator fields (``latent``, ``hidden``, …; the tuning benchmark uses them). Defaults add no key,
    so the default recipes, and their cached models, stay what they were."""
    spec = {**_recipes(dataset)["generator"], **overrides}
    if epochs is not None:
        spec["epochs"] = int(epochs)
    rec = _base("generator", spec, "public", dataset)
    if exclude is not None:
        if not 0 <= int(exclude) < NUM_CLASSES:
            raise InputError(f"the class left out of the prior must be in [0, {NUM_CLASSES}), got {exclude!r}")
        rec["exclude_class"] = int(exclude)
    return rec


def dpsgd_recipe(epsilon: float | None, delta: float = 1e-5, clip: float = 1.0, dataset: str = DATASET) -> dict:
    """``epsilon=None`` is the clip-only control: per-sample clipping, no noise."""
    if epsilon is not None and (not math.isfinite(epsilon) or epsilon <= 0):
        raise InputError(f"DP-SGD epsilon must be a finite number > 0, got {epsilon!r}")
    return {**_base("dpsgd", _recipes(dataset)["target"], "private", dataset), "epsilon": epsilon,
            "delta": float(delta), "clip": float(clip), "epochs": 30, "lr": 2e-3, "batch_size": 64}


class VAE(nn.Module):
    """A small fully connected VAE; the decoder is the attacker's generator G(z) → [B,1,side,side] in [0,1]."""

    def __init__(self, latent: int = LATENT, hidden: int = 128, side: int = 8):
        super().__init__()
        self.latent, self.side = latent, side
        pixels = side * side
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, pixels))

    @property
    def hidden(self) -> int:
        return self.decoder[0].out_features

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z)).view(-1, 1, self.side, self.side)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encoder(torch.flatten(x, 1)).chunk(2, dim=1)
        return mu, logvar


def _cached(rec: dict, build, train, cache_dir=None) -> dict[str, torch.Tensor]:
    """The state dict for ``rec``: read from the cache (weights only), else trained and written atomically."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else models.cache_dir()
    path = root / f"mia-{rec['role']}-{models._recipe_key(rec)}.pt"
    return models.cached_state(path, build, train)


def _one_thread():
    """Role models train on one thread: their steps are too small to split, and on a busy 2-core machine
    two spinning threads made an mnist5k epoch 30x slower (68 s against 2.1 s at load average 17)."""
    from rpdist.attacks.extraction import _one_thread as one_thread

    return one_thread()


def training(rec: dict) -> str:
    """How a role model's training is named in progress output."""
    role = {"eval": "evaluator", "dpsgd": "DP-SGD target"}.get(rec["role"], rec["role"])
    if "exclude_class" in rec:
        role += f" without class {rec['exclude_class']}"
    if rec["role"] == "dpsgd":
        role += " (clip only)" if rec["epsilon"] is None else f" at ε={rec['epsilon']:g}"
    return f"training the {rec['dataset']} {role}"


def _train_vae(rec: dict, X: np.ndarray, side: int, progress: bool = False) -> dict[str, torch.Tensor]:
    Xt = torch.from_numpy(X).flatten(1)
    with (_one_thread(), torch.random.fork_rng(devices=[]),
          models.epoch_meter(rec["epochs"], training(rec), progress) as meter):
        torch.manual_seed(rec["seed"])
        vae = VAE(rec["latent"], rec["hidden"], side)
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
            meter.advance(1)
    vae.eval()
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def _classifier(rec: dict, dataset: str, cache_dir, progress: bool) -> ModelRef:
    X, y = role_data("private", dataset)
    state = _cached(rec, lambda: architectures.build(rec["arch"], **rec["arch_kwargs"]),
                    lambda: _fit(rec, X, y, progress), cache_dir)
    return ModelRef.from_state_dict(rec["arch"], rec["arch_kwargs"], state)


def _fit(rec: dict, X: np.ndarray, y: np.ndarray, progress: bool) -> dict[str, torch.Tensor]:
    with _one_thread():
        return models.fit_classifier(rec, X, y, description=training(rec), progress=progress)


def target_model(train_sigma: float = TARGET_TRAIN_SIGMA, cache_dir=None, dataset: str = DATASET,
                 progress: bool = False) -> ModelRef:
    """The attacked CNN, trained on the private half (on a cache miss, with ``progress``, its epochs on stderr)."""
    return _classifier(target_recipe(train_sigma, dataset), dataset, cache_dir, progress)


def eval_model(cache_dir=None, dataset: str = DATASET, progress: bool = False) -> ModelRef:
    """The judge: an MLP (another architecture and seed) trained on the same private half."""
    return _classifier(eval_recipe(dataset), dataset, cache_dir, progress)


def generator(cache_dir=None, epochs: int | None = None, dataset: str = DATASET, exclude: int | None = None,
              progress: bool = False, **overrides) -> VAE:
    """The attacker's prior: a VAE trained on the public half only (without class ``exclude``, if given)."""
    rec = generator_recipe(epochs, dataset, exclude, **overrides)
    X, y = role_data("public", dataset)
    if exclude is not None:
        X = X[y != int(exclude)]
    size = side(dataset)
    state = _cached(rec, lambda: VAE(rec["latent"], rec["hidden"], size), lambda: _train_vae(rec, X, size, progress),
                    cache_dir)
    vae = VAE(rec["latent"], rec["hidden"], size)
    vae.load_state_dict(state)
    return vae.eval()


def dpsgd_model(epsilon: float | None, delta: float = 1e-5, clip: float = 1.0, cache_dir=None,
                dataset: str = DATASET, progress: bool = False) -> ModelRef:
    """The target CNN trained with Opacus DP-SGD at (ε, δ), or clip-only when ``epsilon`` is None."""
    from rpdist.defenses.dpsgd import train_dpsgd

    rec = dpsgd_recipe(epsilon, delta, clip, dataset)
    X, y = role_data("private", dataset)
    state = _cached(rec, lambda: architectures.build(rec["arch"], **rec["arch_kwargs"]),
                    lambda: train_dpsgd(rec, X, y, training(rec), progress), cache_dir)
    return ModelRef.from_state_dict(rec["arch"], rec["arch_kwargs"], state)


def accuracy(ref: ModelRef, role: str = "test", dataset: str = DATASET) -> float:
    """Clean top-1 accuracy of a model on a data role."""
    X, y = role_data(role, dataset)
    with torch.inference_mode():
        pred = ref.load("cpu")(torch.from_numpy(X)).argmax(1).numpy()
    return float((pred == y).mean())


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The evaluator's features: its input to the last linear layer (the space of the KNN distance)."""
    if isinstance(model, architectures.MLP):
        return model.layers[:-1](torch.flatten(x, 1))
    if isinstance(model, architectures.DigitsCNN):
        return model.classifier[:-1](torch.flatten(model.features(x), 1))
    raise InputError(f"no penultimate layer known for {type(model).__name__}")


def knn_distance(model: nn.Module, images: np.ndarray, targets, private_X: np.ndarray,
                 private_y: np.ndarray) -> np.ndarray:
    """Per image, the ℓ2 distance in ``model``'s penultimate features to the nearest private image of its
    target class (the KNN distance of the model-inversion literature: small = close to a real member)."""
    targets = np.asarray(targets)
    with torch.inference_mode():
        query = penultimate(model, torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        members = penultimate(model, torch.from_numpy(np.ascontiguousarray(private_X, dtype=np.float32)))
    out = np.full(len(targets), np.nan)
    for t in np.unique(targets):
        mine = targets == t
        pool = members[torch.from_numpy(private_y == t)]
        if len(pool):
            out[mine] = torch.cdist(query[torch.from_numpy(mine)].double(), pool.double()).min(1).values.numpy()
    return out
