"""Shared fixtures: one local Ray per test session, and a private model cache."""

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Keep default-model training inside the test session's temporary directory."""
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
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture
def linear_model():
    """A binary linear classifier with an exactly known smoothed probability Φ(d/σ)."""
    from tests.oracle import LinearOracle

    return LinearOracle(dim=5, seed=0)
