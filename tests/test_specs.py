"""Analysis specs are pydantic dataclasses: refusals are one line that names the option, numpy
scalars are taken as numbers, and the config dicts (a run's resume identity) are what they were."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rpdist.attacks.inversion import InversionSpec
from rpdist.errors import InputError
from rpdist.pipelines.run import RunSpec
from rpdist.privacy.runner import RapSpec
from rpdist.smoothing.job import CERTIFY, PREDICT, SmoothingConfig

REFUSED = [
    (lambda: SmoothingConfig(CERTIFY, -1, 100, 0.01, 10), "sigma must be a finite number > 0, got -1"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, True, 0.01, 10), "n must be a whole number >= 1, got True"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, np.float64(100), 0.01, 10), "n must be a whole number >= 1, got 100.0"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 100, float("nan"), 10), "alpha must lie strictly between 0 and 1, got nan"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 100, 0.01), "n0 must be a whole number >= 1, got None"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 100, 0.01, 10, batch_size=0), "batch size must be a whole number >= 1"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 100, 0.01, 10, noise_block=2.5), "noise block must be a whole number"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 100, 0.01, 10, seed=2**63), "seed must be a whole number in [0, 2^63)"),
    (lambda: SmoothingConfig("certfy", 0.5, 100, 0.01, 10), "analysis must be certify or predict, got 'certfy'"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 5, 0.001, 10), "n=5 can never certify at alpha=0.001: it needs n >= 10"),
    (lambda: SmoothingConfig(PREDICT, 0.5, 10, 0.001), "n=10 can never pass PREDICT's test at alpha=0.001"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 100), "alpha is required"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 100, 0.01, 10, sigmaa=1), "SmoothingConfig has no field 'sigmaa'"),
    (lambda: RunSpec(SmoothingConfig(PREDICT, 0.5, 100, 0.1), "insurance", limit=0), "limit must be a whole number"),
    (lambda: RunSpec(SmoothingConfig(PREDICT, 0.5, 100, 0.1), "insurance", workers=0), "workers must be a whole"),
    (lambda: RapSpec(grid_step=0), "grid step must be a finite number > 0, got 0"),
    (lambda: RapSpec(abstain_rule="sometimes"), "--abstain-rule must be 'neutral' or 'distinct', got 'sometimes'"),
    (lambda: RapSpec(n=9), "n=9 can never certify"),
    (lambda: InversionSpec(releases=["majority", "loud"]), "--release must be one of predict, majority, certify, got 'loud'"),
    (lambda: InversionSpec(targets=[3, 3]), "--targets must be distinct classes in [0, 10), got [3, 3]"),
    (lambda: InversionSpec(targets=[10]), "--targets must be distinct classes in [0, 10), got 10"),
    (lambda: InversionSpec(defense="rr", epsilons=[float("inf")]), "--epsilon must be a finite number > 0 for rr"),
    (lambda: InversionSpec(epsilons=[float("nan")]), "--epsilon must be a number > 0, got nan"),
    (lambda: InversionSpec(query_budget=0), "--query-budget must be a whole number >= 1, got 0"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 100, 0.01, 10, advantage=[0.5]), "--advantage must lie strictly between 0"),
    (lambda: SmoothingConfig(CERTIFY, 0.5, 100, 0.01, 10, queries=[0]), "--queries must be a whole number >= 1, got 0"),
]


@pytest.mark.parametrize("build, message", REFUSED, ids=[m[:40] for _, m in REFUSED])
def test_refusals_are_one_line_that_name_the_option(build, message):
    with pytest.raises(InputError) as info:
        build()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_numpy_scalars_are_numbers():
    """Array code hands over numpy scalars; they are validated and stored as the Python numbers."""
    config = SmoothingConfig(CERTIFY, np.float32(0.5), np.int64(1000), np.float64(0.001), np.int32(100),
                             seed=np.uint64(7), batch_size=np.int64(512))
    assert config.as_dict() == {"analysis": "certify", "sigma": 0.5, "n": 1000, "alpha": 0.001, "n0": 100, "seed": 7,
                                "batch_size": 512, "noise_block": 1000, "release": "predict", "advantage": [0.05],
                                "queries": [1]}
    assert all(type(v) in (str, float, int) for v in config.as_dict().values() if not isinstance(v, list))


def test_specs_stay_dataclasses():
    """Positional construction, replace and asdict work as they did for the plain dataclasses, and
    the config is frozen, so a validated config cannot be made invalid afterwards."""
    config = SmoothingConfig(CERTIFY, 0.5, 1000, 0.001, 100)
    assert dataclasses.replace(config, n=2000).n == 2000
    with pytest.raises(InputError, match="n must be"):
        dataclasses.replace(config, n=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n = 0


def test_config_dicts_are_unchanged():
    """These dicts are (part of) each run's resume identity: written by the hand-validated
    dataclasses before, they must come out equal, keys in the same order, for the same input."""
    assert list(SmoothingConfig(PREDICT, 0.25, 100, 0.01).as_dict().items()) == [
        ("analysis", "predict"), ("sigma", 0.25), ("n", 100), ("alpha", 0.01), ("n0", None), ("seed", 0),
        ("batch_size", None), ("noise_block", 1000), ("release", "predict"), ("advantage", [0.05]), ("queries", [1])]
    # τ and k values are sets: held sorted and unique, as the hand check before held them
    assert SmoothingConfig(CERTIFY, 0.5, 1000, 0.001, 100, advantage=[0.1, 0.05, 0.1], queries=(5, 1)).as_dict()[
        "advantage"] == [0.05, 0.1]
    rap = dataclasses.asdict(RapSpec(sigma=0.5, n=1000, l1_non_sensitive=[0.01, 1.0], out="x", run_id="r"))
    assert list(rap) == ["dataset", "attribute", "sigma", "n", "n0", "alpha", "grid_step", "l1_non_sensitive",
                         "train_sigma", "seed", "split", "limit", "batch_size", "workers", "address", "device",
                         "grid_batch", "abstain_rule", "out", "run_id", "posterior_level", "pilot"]  # issue 12 added the last two
    assert rap["l1_non_sensitive"] == [0.01, 1.0] and rap["abstain_rule"] == "neutral" and rap["grid_batch"] == 50_000
    attack = dataclasses.asdict(InversionSpec(defense="rp", sigmas=[0.5], ns=[100]))
    assert attack["sigmas"] == [0.5] and attack["releases"] == ["majority"] and attack["epsilons"] is None
    assert list(attack)[:5] == ["dataset", "attack", "defense", "sigmas", "ns"]
