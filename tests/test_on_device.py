"""The engine on the device named by ``$RPDIST_TEST_DEVICE`` (default cpu; ``cuda`` on a GPU box).

These are the device-sensitive checks that ``scripts/gpu_check.sh`` runs on CUDA: noise blocks
drawn by the device's generator, vote counts of the packed forward batches against an exact
oracle computed from that very noise, and ``certify()`` end to end on the device against the
linear oracle's exact geometry. On CPU they repeat, more briefly, what test_noise_votes.py and
test_engine.py check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from rpdist.models.refs import ModelRef
from rpdist.smoothing.noise import Phase, block_lengths, fill_block, num_blocks
from rpdist.smoothing.votes import VoteCounter
from tests.oracle import LinearOracle, NearestCentre

CENTRES = (-1.0, 0.0, 1.0)


def _block(device, seed, input_id, phase, block, shape=(1000, 5), generator=None):
    out = torch.empty(shape, device=device)
    fill_block(out, generator or torch.Generator(device=device), seed, input_id, phase, block)
    return out


def test_noise_blocks_are_deterministic_on_device(engine_device):
    a = _block(engine_device, 1, 2, Phase.SELECTION, 0)
    assert a.device.type == torch.device(engine_device).type
    generator = torch.Generator(device=engine_device)
    generator.manual_seed(999)
    torch.randn(123, generator=generator, device=engine_device)  # any state: the block reseeds it
    assert torch.equal(a, _block(engine_device, 1, 2, Phase.SELECTION, 0, generator=generator))
    for other in [(2, 2, 0, 0), (1, 3, 0, 0), (1, 2, 1, 0), (1, 2, 0, 1)]:
        assert not torch.equal(a, _block(engine_device, *other))
    # A block written into a view of a larger buffer equals the block drawn alone.
    buffer = torch.zeros(2500, 5, device=engine_device)
    fill_block(buffer[700:1700], generator, 4, 5, Phase.ESTIMATION, 6)
    assert torch.equal(buffer[700:1700], _block(engine_device, 4, 5, Phase.ESTIMATION, 6))
    assert not buffer[:700].any() and not buffer[1700:].any()
    # Standard normal: 200,000 draws, mean and sd within 5 standard errors.
    x = torch.cat([_block(engine_device, 0, i, Phase.PREDICT, 0).ravel() for i in range(40)]).double().cpu().numpy()
    assert abs(x.mean()) < 5 / np.sqrt(x.size)
    assert abs(x.std() - 1) < 5 / np.sqrt(2 * x.size)


def _centre_votes(device, x, ids, *, n, block_size, sigma, seed, phase):
    """The exact votes of NearestCentre on the device's own noise, recomputed block by block
    outside the engine with the same float32 operations; the model is elementwise, so no batched
    rounding can make the packed forward passes differ."""
    lengths = block_lengths(n, block_size)
    out = np.zeros((len(x), len(lengths), len(CENTRES)), dtype=np.int64)
    generator = torch.Generator(device=device)
    centres = torch.tensor(CENTRES, device=device)
    for i in range(len(x)):
        xi = torch.tensor(x[i], device=device)
        for j, length in enumerate(lengths):
            piece = torch.empty((length, *x.shape[1:]), device=device)
            fill_block(piece, generator, seed, int(ids[i]), phase, j)
            noisy = piece.mul_(sigma).add_(xi)
            nearest = (-(noisy[:, :1] - centres) ** 2).argmax(dim=1).cpu().numpy()
            out[i, j] = np.bincount(nearest, minlength=len(CENTRES))
    return out


def test_vote_counts_match_an_exact_oracle_on_device(engine_device):
    counter = VoteCounter(ModelRef.from_module(NearestCentre(CENTRES), torch.zeros(1, 4)), device=engine_device)
    assert counter.device.type == torch.device(engine_device).type
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    x[:, 0] = np.linspace(-1.2, 1.2, 5)
    ids = np.array([10, 4, 99, 0, 7])
    args = dict(phase=int(Phase.ESTIMATION), n=2300, block_size=500, sigma=0.5, seed=3)
    expected = _centre_votes(engine_device, x, ids, **args)
    assert (expected > 0).sum(axis=2).min() >= 2  # no input is unanimous: the comparison can fail
    # Batch sizes that pack one block, three blocks, or every pair into one forward pass.
    for batch_size in (500, 1700, 10**6):
        counts = counter.count(x, ids, block_start=0, block_stop=num_blocks(2300, 500), batch_size=batch_size,
                               num_classes=len(CENTRES), **args)
        assert counts.dtype == np.int64 and counts.shape == (*expected.shape[:2], expected.shape[2] + 1)
        np.testing.assert_array_equal(counts[..., :-1], expected)
        assert not counts[..., -1].any()  # the slot for samples with non-finite logits stays empty


def test_linear_votes_follow_the_exact_probability_on_device(engine_device):
    oracle = LinearOracle(dim=5, seed=0)
    counter = VoteCounter(ModelRef.from_module(oracle.module, torch.zeros(1, 5)), device=engine_device)
    x = oracle.inputs_at_distances(np.array([0.0, 0.2, -0.4, 1.0]))
    n, size = 20_000, 1000
    kwargs = dict(phase=int(Phase.ESTIMATION), n=n, block_start=0, block_stop=num_blocks(n, size), sigma=0.5, seed=3,
                  block_size=size, batch_size=4096, num_classes=2)
    counts = counter.count(x, np.arange(4), **kwargs)
    np.testing.assert_array_equal(counts.sum(axis=2), np.tile(block_lengths(n, size), (4, 1)))
    # P[class 1] = Φ(d/σ) exactly; 5 binomial standard errors at N = 20,000 are ≤ 0.018.
    share = counts.sum(axis=1)[:, 1] / n
    np.testing.assert_allclose(share, norm.cdf(oracle.signed_distance(x) / 0.5), atol=0.018)
    # The same call on a fresh replica gives the same counts, bit for bit.
    fresh = VoteCounter(ModelRef.from_module(oracle.module, torch.zeros(1, 5)), device=engine_device)
    np.testing.assert_array_equal(fresh.count(x, np.arange(4), **kwargs), counts)


@pytest.fixture(scope="module")
def _release_replicas():
    yield
    from rpdist.distributed import pool as engine_pool

    engine_pool.shutdown()


@pytest.mark.slow
def test_certify_end_to_end_on_device(ray_session, engine_device, _release_replicas):
    """certify() through Ray replicas on the device, against the linear oracle's exact geometry."""
    from rpdist.smoothing.job import certify

    sigma, n, alpha = 0.5, 10_000, 0.001
    oracle = LinearOracle(dim=5, seed=0)
    ratio = np.linspace(0.1, 2.5, 30)
    X = oracle.inputs_at_distances(np.where(np.arange(30) % 2 == 0, 1.0, -1.0) * ratio * sigma, seed=1)
    y = oracle.label(X)
    ref = ModelRef.from_module(oracle.module, torch.zeros(1, 5))
    kwargs = dict(sigma=sigma, n0=100, n=n, alpha=alpha, seed=5, batch_size=4096, workers=1, device=engine_device)
    df = certify(ref, X, y, **kwargs)
    d = np.abs(oracle.signed_distance(X))
    radius, prediction = df["radius"].to_numpy(), df["prediction"].to_numpy()
    counts = np.stack([np.asarray(c) for c in df["counts"]])
    np.testing.assert_array_equal(counts.sum(axis=1), n)
    # Soundness: a radius beyond the truth |d| has probability ≤ α per input; allow 1 of 30.
    assert np.sum(radius > d) <= 1
    certified = prediction != -1
    np.testing.assert_array_equal(prediction[certified], y[certified])
    # Tightness: for 0.5 ≤ |d|/σ ≤ 2.5, R/|d| is ≈ 0.92–0.96 at N = 10,000.
    band = d / sigma >= 0.5
    assert np.all(certified[band]) and np.mean(radius[band] / d[band]) >= 0.85
    # Deterministic on the device: the same call gives the same counts.
    again = certify(ref, X, y, **kwargs)
    np.testing.assert_array_equal(np.stack([np.asarray(c) for c in again["counts"]]), counts)
