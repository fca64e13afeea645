"""Shared fixtures: one local Ray per test session, a private model cache, and the benchmark scripts."""

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Keep default-model training inside the test session's temporary directory. Under pytest-xdist
    the workers share one (the root of their temp dirs), so each default model is trained once;
    the cache's writes are atomic, so two workers training the same model both end well."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.getbasetemp().parent / "model-cache"
        path.mkdir(exist_ok=True)
    else:
        path = tmp_path_factory.mktemp("model-cache")
    previous = os.environ.get("RPDIST_CACHE")
    os.environ["RPDIST_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("RPDIST_CACHE", None)
    else:
        os.environ["RPDIST_CACHE"] = previous


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once for the whole session; cold starts cost seconds each."""
    ray = pytest.importorskip("ray")  # absent on some GPU images: the Ray tests skip, the rest run

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture
def benchmark_script():
    """Import a script of ``benchmarks/`` by name: they are scripts, not a package, and some hold the
    arithmetic a README table rests on."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture
def linear_model():
    """A binary linear classifier with an exactly known smoothed probability Φ(d/σ)."""
    from tests.oracle import LinearOracle

    return LinearOracle(dim=5, seed=0)


@pytest.fixture(scope="session")
def engine_device():
    """The device the device-sensitive tests run the engine on: ``$RPDIST_TEST_DEVICE``, default
    ``cpu``. ``RPDIST_TEST_DEVICE=cuda`` (scripts/gpu_check.sh sets it) runs them on the GPU, and
    fails them, rather than skipping, when torch sees no GPU: a skipped GPU check would look green."""
    import torch

    device = os.environ.get("RPDIST_TEST_DEVICE", "").strip() or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"RPDIST_TEST_DEVICE={device} but torch {torch.__version__} sees no CUDA device "
                    f"(torch.version.cuda = {torch.version.cuda})", pytrace=False)
    return device
