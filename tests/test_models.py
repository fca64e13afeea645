"""Tests for rpdist.models.architectures and rpdist.models.zoo: scriptable factories, deterministic cached training."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
import torch

from rpdist.models import architectures

from rpdist.models import zoo as models
from rpdist.datasets.catalog import load_dataset
from rpdist.errors import InputError
from rpdist.models.refs import ModelRef


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never write to the real ~/.cache from tests."""
    monkeypatch.setenv("RPDIST_CACHE", str(tmp_path / "env-cache"))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


def _accuracy(ref: ModelRef, dataset: str) -> float:
    test = load_dataset(dataset, split="test")
    model = ref.load()
    with torch.no_grad():
        predictions = model(torch.from_numpy(test.X)).argmax(dim=1).numpy()
    return float((predictions == test.y).mean())


def _state(ref: ModelRef) -> dict:
    return torch.load(io.BytesIO(ref.payload), weights_only=True)


# --- architectures ------------------------------------------------------------------------------

CASES = [
    ("mlp", {"in_features": 11, "num_classes": 2}, (11,), 2),
    ("mlp", {"in_features": 6, "num_classes": 3, "hidden": [8, 4, 5]}, (6,), 3),  # list, as from JSON
    ("cnn", {}, (1, 8, 8), 10),
    ("cnn", {"num_classes": 4, "channels": 3, "side": 6}, (3, 6, 6), 4),
    ("linear", {"in_features": 64, "num_classes": 10}, (1, 8, 8), 10),
]


@pytest.mark.parametrize("name, kwargs, shape, classes", CASES)
def test_architectures_are_scriptable_and_output_logits(name, kwargs, shape, classes):
    torch.manual_seed(0)
    module = architectures.build(name, **kwargs).eval()
    x = torch.randn(5, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        reloaded = torch.jit.load(buffer)
    with torch.no_grad():
        eager = module(x)
        assert eager.shape == (5, classes) and eager.dtype == torch.float32
        assert torch.allclose(scripted(x), eager, atol=1e-6)
        assert torch.allclose(reloaded(x), eager, atol=1e-6)


def test_architecture_layout():
    mlp = architectures.build("mlp", in_features=11, num_classes=2, hidden=(64, 64))
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(11, 64), (64, 64), (64, 2)]
    cnn = architectures.build("cnn")
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (3, 3), (1, 1)),
        (16, 32, (3, 3), (1, 1)),
    ]
    linears = [m for m in cnn.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32 * 4 * 4, 64), (64, 10)]
    assert architectures.names() == ["cnn", "linear", "mlp"]


@pytest.mark.parametrize("shape", [(64, 32, 8, 8), (64, 32, 14, 14), (16, 3, 7, 9)])  # digits, mnist5k, odd sides
def test_fast_max_pool_gives_max_pool2d_values(shape):
    """The CNN's pool is max_pool2d's numbers, NaN included, in inference and with gradients."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).relu()
    x[0, 0, 1, 1] = float("nan")
    pool = architectures.MaxPool2x2()
    reference = torch.nn.functional.max_pool2d(x, 2)
    with torch.inference_mode():
        fast = pool(x)
    assert torch.equal(fast.isnan(), reference.isnan()) and fast.isnan().any()
    assert torch.equal(fast.nan_to_num(), reference.nan_to_num())
    leaf = x.nan_to_num().requires_grad_()
    pool(leaf).sum().backward()  # with gradients on: max_pool2d's backward, a tie's gradient to one input
    assert set(leaf.grad.unique().tolist()) == {0.0, 1.0} and leaf.grad.sum() == reference.numel()


def test_in_place_relu_gives_relu_values_and_keeps_training_out_of_place():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    expected = torch.relu(x)
    relu = architectures.InPlaceReLU()
    with torch.inference_mode():
        y = x.clone()
        out = relu(y)
    assert torch.equal(out, expected) and out.data_ptr() == y.data_ptr()  # no new tensor at inference
    leaf = x.clone().requires_grad_()
    trained = relu(leaf)
    assert trained.data_ptr() != leaf.data_ptr() and torch.equal(leaf.detach(), x)  # with gradients: a new tensor
    trained.sum().backward()
    assert torch.equal(leaf.grad, (x > 0).float())


def test_built_in_models_use_the_fast_layers_with_the_same_logits():
    """Every ReLU and pool of the built-in models is rpdist's, and the logits are torch's layers' to the bit."""
    for name, kwargs, shape, _ in CASES:
        model = architectures.build(name, **kwargs).eval()
        assert not any(type(m) in (torch.nn.ReLU, torch.nn.MaxPool2d) for m in model.modules())
        reference = architectures.with_torch_layers(model)
        x = torch.rand(256, *shape, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            assert torch.equal(model(x), reference(x))


def test_architecture_refusals():
    with pytest.raises(InputError, match="unknown architecture 'resnet'.*cnn, linear, mlp"):
        architectures.build("resnet")
    with pytest.raises(InputError, match="does not take depth"):
        architectures.build("mlp", in_features=3, num_classes=2, depth=4)
    with pytest.raises(InputError, match="needs in_features"):
        architectures.build("linear", num_classes=2)
    with pytest.raises(InputError, match="in_features"):
        architectures.build("mlp", in_features=0, num_classes=2)
    with pytest.raises(InputError, match="hidden"):
        architectures.build("mlp", in_features=3, num_classes=2, hidden=64)


def test_modelref_round_trip_through_registry():
    module = architectures.build("mlp", in_features=11, num_classes=2)
    ref = ModelRef.from_state_dict("mlp", {"in_features": 11, "num_classes": 2, "hidden": [64, 64]}, module.state_dict())
    x = torch.randn(3, 11)
    with torch.no_grad():
        assert torch.equal(ref.load()(x), module.eval()(x))


# --- default models -----------------------------------------------------------------------------


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RPDIST_CACHE", str(tmp_path / "somewhere"))
    assert models.cache_dir() == tmp_path / "somewhere"
    monkeypatch.delenv("RPDIST_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "rpdist"


def test_recipe_contents():
    rec = models.recipe("insurance", 0.25, 0)
    assert rec["arch"] == "mlp" and rec["arch_kwargs"]["in_features"] == 11 and rec["arch_kwargs"]["num_classes"] == 2
    assert rec["dataset_sha256"] == load_dataset("insurance").sha256
    assert rec["train_sigma"] == 0.25 and rec["seed"] == 0 and rec["torch"] == torch.__version__
    for key in ("epochs", "lr", "batch_size"):
        assert key in rec
    assert models.recipe("digits", 0.25, 0)["arch"] == "cnn"
    assert models.recipe("insurance", 0.5, 0) != rec


@pytest.mark.slow
def test_default_model_is_deterministic_and_cached(tmp_path, monkeypatch, shared_cache):
    first = models.default_model("insurance", train_sigma=0.25, cache_dir=shared_cache)
    path = models.cache_path("insurance", 0.25, 0, shared_cache)
    assert path.is_file() and path.name.startswith("insurance-") and len(path.stem) == len("insurance-") + 16
    assert not [p for p in shared_cache.iterdir() if p.suffix == ".tmp"]  # temp file was renamed

    # The cache holds only a plain state dict.
    stored = torch.load(path, weights_only=True)
    assert isinstance(stored, dict) and all(isinstance(v, torch.Tensor) for v in stored.values())
    assert first.kind == "state_dict" and first.arch == "mlp"

    # Retraining from scratch elsewhere gives bit-identical weights (progress bar on for coverage).
    rerun = models.default_model("insurance", train_sigma=0.25, cache_dir=tmp_path / "fresh", progress=True)
    assert rerun.sha256 == first.sha256
    a, b = _state(first), _state(rerun)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # A second call is served from the cache: training would fail here.
    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache was valid")

    monkeypatch.setattr(models, "train_state_dict", no_training)
    mtime = path.stat().st_mtime_ns
    again = models.default_model("insurance", train_sigma=0.25, cache_dir=shared_cache)
    assert again.sha256 == first.sha256 and path.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_default_model_uses_env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RPDIST_CACHE", str(tmp_path / "env"))
    models.default_model("insurance", train_sigma=0.0)
    assert [p.name for p in (tmp_path / "env").iterdir()] == [models.cache_path("insurance", 0.0).name]


@pytest.mark.slow
def test_train_sigma_and_seed_change_the_cache_file(shared_cache):
    p25 = models.cache_path("insurance", 0.25, 0, shared_cache)
    p50 = models.cache_path("insurance", 0.5, 0, shared_cache)
    assert p25 != p50 and p25 != models.cache_path("insurance", 0.25, 1, shared_cache)
    ref50 = models.default_model("insurance", train_sigma=0.5, cache_dir=shared_cache)
    ref25 = models.default_model("insurance", train_sigma=0.25, cache_dir=shared_cache)
    assert p50.is_file() and p25.is_file()
    assert ref50.sha256 != ref25.sha256


@pytest.mark.slow
def test_unreadable_cache_is_retrained_and_overwritten(tmp_path, shared_cache):
    good = models.default_model("insurance", train_sigma=0.25, cache_dir=shared_cache)
    path = models.cache_path("insurance", 0.25, 0, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a torch file")
    ref = models.default_model("insurance", train_sigma=0.25, cache_dir=tmp_path)
    assert ref.sha256 == good.sha256
    stored = torch.load(path, weights_only=True)
    assert torch.equal(stored["layers.0.weight"], _state(good)["layers.0.weight"])

    # A readable state dict of the wrong shape is no better than garbage.
    torch.save({"layers.0.weight": torch.zeros(2, 2)}, path)
    assert models.default_model("insurance", train_sigma=0.25, cache_dir=tmp_path).sha256 == good.sha256


def test_training_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    models.default_model("insurance", train_sigma=1.0, cache_dir=tmp_path)
    assert torch.equal(torch.get_rng_state(), state)


def test_default_model_refusals(tmp_path):
    with pytest.raises(InputError, match="no built-in model for dataset 'mnist'.*insurance, insurance-recommend, digits"):
        models.default_model("mnist", train_sigma=0.25, cache_dir=tmp_path)
    for sigma in (-0.1, float("nan"), float("inf"), "0.5"):
        with pytest.raises(InputError, match="train_sigma"):
            models.default_model("insurance", train_sigma=sigma, cache_dir=tmp_path)
    with pytest.raises(InputError, match="seed"):
        models.default_model("insurance", train_sigma=0.25, seed=-1, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_insurance_accuracy(shared_cache):
    ref = models.default_model("insurance", train_sigma=0.25, cache_dir=shared_cache)
    assert _accuracy(ref, "insurance") >= 0.85


@pytest.mark.slow
def test_digits_accuracy(shared_cache):
    ref = models.default_model("digits", train_sigma=0.25, cache_dir=shared_cache)
    assert ref.arch == "cnn"
    model = ref.load()
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert _accuracy(ref, "digits") >= 0.95


def test_cnn_stride_adapts_the_digits_cnn_to_28x28_and_leaves_8x8_as_it_was():
    wide = architectures.build("cnn", num_classes=10, channels=1, side=28, stride=2)
    assert wide(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert wide.classifier[0].in_features == 32 * 7 * 7  # 28 → 14 (stride 2) → 7 (pool)
    torch.jit.script(wide)
    small = architectures.build("cnn", num_classes=10, channels=1, side=8)
    assert small.classifier[0].in_features == 32 * 4 * 4 and small.features[0].stride == (1, 1)
    assert "stride" not in models.DEFAULTS["digits"]["arch_kwargs"]  # digits' recipe, hence its cache key, is unchanged
    with pytest.raises(InputError, match="stride"):
        architectures.build("cnn", side=2, stride=0)


@pytest.mark.slow
def test_mnist5k_model_is_accurate_and_certifies(shared_cache, ray_session):
    """Training takes about 95 s on the loaded 2-core machine (15 epochs over 4,000 images)."""
    import rpdist

    ref = models.default_model("mnist5k", train_sigma=0.25, cache_dir=shared_cache)
    assert _accuracy(ref, "mnist5k") >= 0.95  # measured 0.968
    data = load_dataset("mnist5k", split="test", limit=2)
    df = rpdist.certify(ref, data.X, data.y, sigma=0.25, n0=20, n=200, alpha=0.001, workers=1)
    assert len(df) == 2 and set(df.columns) >= {"prediction", "radius", "counts"}
    assert all(sum(c) == 200 for c in df["counts"])
