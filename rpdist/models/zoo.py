"""Built-in default models: trained deterministically with Gaussian noise augmentation, cached.

Randomized smoothing certifies a classifier f evaluated on x + N(0, sigma^2 I); f must therefore
be accurate on noisy inputs, which is why the defaults are trained with the same kind of noise
(``train_sigma``). Training is seeded end to end, so the same :func:`recipe` always yields the
same weights and the cache is merely a speed-up: it holds only a state dict (loaded with
``weights_only=True``), keyed by a hash of the recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rpdist.models import architectures
from rpdist.datasets.catalog import SPLIT_SEED, TEST_FRACTION, load_dataset
from rpdist.reporting.progress import SampleProgress
from rpdist.errors import InputError, first_line
from rpdist.models.refs import ModelRef
from rpdist.io.store import atomic_write

__all__ = ["default_model", "cache_dir", "cache_path", "recipe", "train_state_dict", "DEFAULTS"]

log = logging.getLogger(__name__)

# Bump when the training procedure changes in a way the recipe fields do not capture.
RECIPE_VERSION = 1

# Per built-in dataset: architecture and the optimisation schedule. Chosen so that a 2-core CPU
# trains insurance in about a second and digits in a few seconds.
DEFAULTS: dict[str, dict] = {
    "insurance": dict(
        arch="mlp",
        arch_kwargs={"in_features": 11, "num_classes": 2, "hidden": [64, 64]},
        epochs=60,
        lr=3e-3,
        batch_size=64,
    ),
    "insurance-recommend": dict(  # the same MLP and schedule as insurance
        arch="mlp",
        arch_kwargs={"in_features": 11, "num_classes": 2, "hidden": [64, 64]},
        epochs=60,
        lr=3e-3,
        batch_size=64,
    ),
    "digits": dict(
        arch="cnn",
        arch_kwargs={"num_classes": 10, "channels": 1, "side": 8},
        epochs=30,
        lr=2e-3,
        batch_size=64,
    ),
    # The digits CNN at 28x28 (first convolution at stride 2): about 1M multiply-adds per image.
    "mnist5k": dict(
        arch="cnn",
        arch_kwargs={"num_classes": 10, "channels": 1, "side": 28, "stride": 2},
        epochs=15,
        lr=2e-3,
        batch_size=64,
    ),
}


def cache_dir() -> Path:
    """Where default models are cached: ``$RPDIST_CACHE`` if set, else ``~/.cache/rpdist``."""
    env = os.environ.get("RPDIST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rpdist"


_default_cache_dir = cache_dir  # default_model's keyword argument shadows the function name


def _check_args(dataset: str, train_sigma: float, seed: int) -> tuple[str, float, int]:
    if dataset not in DEFAULTS:
        raise InputError(
            f"no built-in model for dataset {dataset!r}; built-in models exist for {', '.join(DEFAULTS)}"
        )
    if isinstance(train_sigma, bool) or not isinstance(train_sigma, (int, float)) or not math.isfinite(train_sigma) or train_sigma < 0:
        raise InputError(f"train_sigma must be a finite number >= 0, got {train_sigma!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise InputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return dataset, float(train_sigma), int(seed)


def _check_l1(dataset: str, l1_non_sensitive: float, sensitive: str | None) -> tuple[float, str | None]:
    """The l1 option needs a sensitive feature of the dataset to exempt from the penalty."""
    if isinstance(l1_non_sensitive, bool) or not isinstance(l1_non_sensitive, (int, float)) \
            or not math.isfinite(l1_non_sensitive) or l1_non_sensitive < 0:
        raise InputError(f"l1_non_sensitive must be a finite number >= 0, got {l1_non_sensitive!r}")
    if l1_non_sensitive == 0:
        return 0.0, sensitive
    names = load_dataset(dataset, split="train").feature_names
    if sensitive not in names:
        raise InputError(
            f"l1_non_sensitive > 0 needs a sensitive feature of {dataset!r} to exempt; got {sensitive!r} "
            f"(features: {', '.join(names)})"
        )
    return float(l1_non_sensitive), sensitive


def recipe(dataset: str, train_sigma: float, seed: int, l1_non_sensitive: float = 0.0,
           sensitive: str | None = None) -> dict:
    """Everything that determines the default model's weights, as a JSON-able dict.

    Its hash names the cache file, so changing the data, the schedule, the seed or the torch
    version (whose kernels and initialisers may change) never serves stale weights. The l1 keys
    appear only when the penalty is on, so the cache keys of unpenalised models never change.
    """
    dataset, train_sigma, seed = _check_args(dataset, train_sigma, seed)
    l1_non_sensitive, sensitive = _check_l1(dataset, l1_non_sensitive, sensitive)
    spec = DEFAULTS[dataset]
    rec = {
        "recipe_version": RECIPE_VERSION,
        "dataset": dataset,
        "dataset_sha256": load_dataset(dataset, split="train").sha256,
        "split": "train",
        "split_seed": SPLIT_SEED,
        "test_fraction": TEST_FRACTION,
        "arch": spec["arch"],
        "arch_kwargs": json.loads(json.dumps(spec["arch_kwargs"])),
        "epochs": spec["epochs"],
        "lr": spec["lr"],
        "batch_size": spec["batch_size"],
        "optimizer": "adam",
        "train_sigma": train_sigma,
        "seed": seed,
        "torch": torch.__version__,
    }
    if l1_non_sensitive > 0:
        rec["l1_non_sensitive"] = l1_non_sensitive
        rec["sensitive"] = sensitive
    return rec


def _recipe_key(rec: dict) -> str:
    canonical = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def train_state_dict(rec: dict, progress: bool = False) -> dict[str, torch.Tensor]:
    """Train the built-in model that ``rec`` describes on its dataset's train split."""
    data = load_dataset(rec["dataset"], split="train")
    penalised = [j for j, name in enumerate(data.feature_names) if name != rec.get("sensitive")]
    return fit_classifier(rec, data.X, data.y, penalised=penalised,
                          description=f"training {rec['dataset']} model", progress=progress)


def fit_classifier(rec: dict, X: np.ndarray, y: np.ndarray, *, penalised: list[int] | None = None,
                   description: str = "training", progress: bool = False) -> dict[str, torch.Tensor]:
    """Adam on noise-augmented minibatches, as ``rec`` says; returns the state dict (CPU tensors).

    Parameter initialisation uses ``torch.manual_seed(seed)`` inside a forked RNG scope (so the
    caller's global RNG state is left untouched); shuffling and augmentation noise come from a
    dedicated seeded ``torch.Generator``. Every minibatch is perturbed with fresh
    N(0, train_sigma^2) noise, the distribution the smoothed classifier will query. With
    ``l1_non_sensitive`` > 0, the first-layer weights of the ``penalised`` inputs pay an ℓ1 cost.
    """
    X, y = torch.from_numpy(np.asarray(X)), torch.from_numpy(np.asarray(y))
    sigma, batch_size = float(rec.get("train_sigma", 0.0)), int(rec["batch_size"])
    l1 = float(rec.get("l1_non_sensitive", 0.0))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rec["seed"])
        model = architectures.build(rec["arch"], **rec["arch_kwargs"])
        generator = torch.Generator().manual_seed(rec["seed"])
        optimizer = torch.optim.Adam(model.parameters(), lr=rec["lr"])
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        with epoch_meter(rec["epochs"], description, progress) as meter:
            for _ in range(rec["epochs"]):
                order = torch.randperm(X.shape[0], generator=generator)
                for start in range(0, X.shape[0], batch_size):
                    index = order[start : start + batch_size]
                    inputs = X[index]
                    if sigma > 0:
                        inputs = inputs + sigma * torch.randn(inputs.shape, generator=generator)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model(inputs), y[index])
                    if l1 > 0:
                        loss = loss + l1 * first_layer_weight(model)[:, penalised].abs().sum()
                    loss.backward()
                    optimizer.step()
                meter.advance(1)
    model.eval()
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def first_layer_weight(model: nn.Module) -> torch.Tensor:
    """The weight [hidden, in_features] of the first linear layer: one column per input feature."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return module.weight
    raise InputError("the l1 penalty on input features needs a model with a linear first layer")


def epoch_meter(total: int, description: str, enabled: bool) -> SampleProgress:
    """Epochs as progress on stderr (a bar on a terminal, a line a minute and a last one in a log)."""
    console = None
    if enabled:
        from rich.console import Console

        console = Console(stderr=True)
    return SampleProgress(total, description, enabled, unit="epochs", console=console)


def cached_state(path: Path, build, train) -> dict[str, torch.Tensor]:
    """The state dict cached at ``path`` (weights only, checked against ``build()``), else ``train()``'s,
    written atomically. A cache that cannot be read or written costs a warning, never the result."""
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ValueError("not a state dict of tensors")
            build().load_state_dict(state, strict=True)
            return state
        except Exception as exc:  # a truncated or foreign file is just a cache miss
            log.warning("ignoring unreadable cached model %s (%s); retraining", path, first_line(exc))
    state = train()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        atomic_write(path, write)
    except (OSError, InputError) as exc:
        log.warning("could not cache %s (%s)", path, first_line(exc))
    return state


def _cache_file(rec: dict, cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    return root / f"{rec['dataset']}-{_recipe_key(rec)}.pt"


def cache_path(dataset: str, train_sigma: float, seed: int = 0, cache_dir: str | Path | None = None,
               l1_non_sensitive: float = 0.0, sensitive: str | None = None) -> Path:
    """The cache file for a recipe: ``<cache_dir>/<dataset>-<sha256(recipe json)[:16]>.pt``."""
    return _cache_file(recipe(dataset, train_sigma, seed, l1_non_sensitive, sensitive), cache_dir)


def default_model(
    dataset: str,
    *,
    train_sigma: float,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    l1_non_sensitive: float = 0.0,
    sensitive: str | None = None,
) -> ModelRef:
    """The built-in model for ``dataset`` trained with noise ``train_sigma``: cached, else trained.

    ``insurance`` gets an MLP (11 inputs, 2 classes), ``digits`` a small CNN, ``mnist5k`` the same CNN
    with a stride-2 first convolution. A cache file that
    cannot be read is retrained and overwritten; a cache directory that cannot be written only
    costs a warning, since the weights are reproducible anyway.

    ``l1_non_sensitive`` = λ > 0 adds λ·Σ_j |W1[:, j]| over the first-layer weight columns of every
    feature except ``sensitive``: the model then leans on the sensitive feature, the most
    favourable case for attribute privacy analyses (and the setting of the RP paper).
    """
    rec = recipe(dataset, train_sigma, seed, l1_non_sensitive, sensitive)
    state = cached_state(_cache_file(rec, cache_dir), lambda: architectures.build(rec["arch"], **rec["arch_kwargs"]),
                         lambda: train_state_dict(rec, progress=progress))
    return ModelRef.from_state_dict(rec["arch"], rec["arch_kwargs"], state)
