"""Release mechanisms: randomized response, keyed (query-consistent) noise, DP-SGD training."""

import math

import numpy as np
import pytest
import torch

from rpdist.defenses.releases import KEYED, LabelRelease, NoiseKey, RandomizedResponse, keyed_ids
from rpdist.errors import InputError
from rpdist.models.refs import ModelRef

KEY = NoiseKey(bytes(range(32)), "random")  # a fixed key for tests only; the library has none


@pytest.fixture(scope="module")
def constant_ref():
    """A linear model that always says class 2 of 4 (bias only)."""
    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    return ModelRef.from_state_dict("linear", {"in_features": 4, "num_classes": 4},
                                    {"linear.weight": model.weight, "linear.bias": model.bias})


def test_randomized_response_keeps_with_the_right_probability_and_flips_uniformly(constant_ref):
    rr = RandomizedResponse(constant_ref, epsilon=1.0, num_classes=4, seed=3)
    p = math.e / (math.e + 3)
    assert rr.keep_probability == pytest.approx(p)
    labels = rr(np.zeros((20000, 4), np.float32), np.arange(20000))
    assert abs((labels == 2).mean() - p) < 0.015
    flipped = labels[labels != 2]
    assert set(flipped.tolist()) == {0, 1, 3}
    assert np.allclose(np.bincount(flipped, minlength=4)[[0, 1, 3]] / len(flipped), 1 / 3, atol=0.02)
    assert rr.forward_passes == 20000
    again = RandomizedResponse(constant_ref, epsilon=1.0, num_classes=4, seed=3)(np.zeros((50, 4), np.float32),
                                                                                  np.arange(50))
    assert np.array_equal(again, labels[:50])  # randomness is a function of (seed, query id)


def test_randomized_response_refuses_bad_epsilon(constant_ref):
    with pytest.raises(InputError):
        RandomizedResponse(constant_ref, epsilon=0.0, num_classes=4)


def test_keyed_ids_depend_on_image_and_key():
    x = np.random.default_rng(0).random((3, 4)).astype(np.float32) * 10
    a = keyed_ids(np.concatenate([x, x[:1]]), b"k1" * 16, 1.0)
    assert a[0] == a[3] and len(set(a[:3].tolist())) == 3
    assert not np.array_equal(keyed_ids(x, b"k2" * 16, 1.0), a[:3])


def test_keyed_release_answers_repeats_identically_and_runs_each_image_once(constant_ref):
    x = np.zeros((1, 4), np.float32)
    repeated = np.repeat(x, 200, axis=0)
    fresh = RandomizedResponse(constant_ref, epsilon=0.5, num_classes=4, seed=0)
    assert len(set(fresh(repeated, np.arange(200)).tolist())) > 1  # fresh: repetition averages the noise out
    keyed = RandomizedResponse(constant_ref, epsilon=0.5, num_classes=4, seed=0, noise=KEYED, key=KEY)
    out = keyed(repeated, np.arange(200))
    assert len(set(out.tolist())) == 1 and keyed.forward_passes == 1
    assert np.array_equal(keyed(repeated[:3], np.arange(500, 503)), out[:3])  # ids given by the attacker are ignored


def test_label_release_counts_one_pass_per_query(constant_ref):
    rel = LabelRelease(constant_ref)
    assert rel(np.zeros((7, 4), np.float32), np.arange(7)).tolist() == [2] * 7
    assert rel.forward_passes == 7


@pytest.mark.slow
def test_keyed_smoothed_release_is_query_consistent(ray_session, constant_ref):
    from rpdist.defenses.releases import SmoothedRelease

    rel = SmoothedRelease(constant_ref, sigma=50.0, n=20, release="majority", seed=1, noise=KEYED, workers=1, key=KEY)
    x = np.random.default_rng(1).random((4, 4)).astype(np.float32)
    first = rel(np.concatenate([x, x]), np.arange(8))
    assert np.array_equal(first[:4], first[4:]) and rel.forward_passes == 4 * 20
    assert np.array_equal(rel(x, np.arange(4)), first[:4])


def test_dpsgd_meets_its_epsilon_and_clip_only_learns():
    from rpdist.defenses.dpsgd import train_dpsgd

    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    base = dict(arch="linear", arch_kwargs={"in_features": 4, "num_classes": 2}, seed=0, lr=0.05, batch_size=32,
                epochs=5, delta=1e-5, clip=1.0)
    model = ModelRef.from_state_dict("linear", base["arch_kwargs"], train_dpsgd({**base, "epsilon": None}, X, y))
    acc = (model.load()(torch.from_numpy(X)).argmax(1).numpy() == y).mean()
    assert acc > 0.9
    state = train_dpsgd({**base, "epsilon": 1.0}, X, y)  # raises if the accountant overspends
    assert set(state) == {"linear.weight", "linear.bias"}
