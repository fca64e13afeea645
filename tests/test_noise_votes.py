"""Counter-based noise, in-process vote counting and the work plan: everything below Ray."""

from __future__ import annotations

import dataclasses
import inspect
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import norm

from rpdist.distributed import plan as engine_plan
from rpdist.distributed.plan import PhaseSpec, Plan
from rpdist.models.refs import ModelRef
from rpdist.smoothing.noise import MAX_BLOCKS, Phase, block_lengths, block_seed, fill_block, num_blocks
from rpdist.smoothing.votes import VoteCounter
from tests.oracle import LinearOracle, NearestCentre

# --- seeds and blocks -------------------------------------------------------------------------


def test_block_seed_distinct_across_every_coordinate():
    base = (7, 11, int(Phase.ESTIMATION), 3)
    seen = {}
    values = [(0, 1, 2, 3, 12, 1000, 2**40, 2**62)] * 2 + [tuple(Phase)] + [(0, 1, 2, 3, 12, 1000, 2**20, MAX_BLOCKS - 1)]
    for axis in range(4):
        for value in values[axis]:
            coords = list(base)
            coords[axis] = value
            seen[tuple(coords)] = block_seed(*coords)
    assert len(set(seen.values())) == len(seen)  # every distinct coordinate tuple, a distinct seed
    # Swapping coordinates must not collide either (a plain sum or xor of them would).
    assert block_seed(1, 2, 0, 0) != block_seed(2, 1, 0, 0)
    assert block_seed(0, 0, 1, 0) != block_seed(0, 0, 0, 1)
    grid = [block_seed(s, i, p, b) for s, i, p, b in itertools.product(range(3), range(20), range(3), range(20))]
    assert len(set(grid)) == len(grid)
    assert all(0 <= v < 2**32 for v in grid)  # what torch's CPU generator keeps, made explicit
    # Pinned values: the seed is a fixed function of the coordinates, the same in every process,
    # on every machine and in every release (a salted hash() or a changed packing would break resume).
    assert block_seed(*base) == 2829032147
    assert block_seed(0, 0, 0, 0) == 128274514
    assert block_seed(7, 11, Phase.ESTIMATION, 3) == block_seed(7, 11, 1, 3)


def _block(seed, input_id, phase, block, shape=(1000, 5), generator=None):
    out = torch.empty(shape)
    fill_block(out, generator or torch.Generator(), seed, input_id, phase, block)
    return out


def test_run_seeds_differing_only_above_bit_32_give_different_noise():
    """torch's CPU generator keeps the low 32 bits of manual_seed: the run seed must not reach it raw."""
    for s in (0, 5, 2**31 + 3):
        noise = [_block(seed, 4, Phase.ESTIMATION, 2) for seed in (s, s + 2**32, s + 7 * 2**40, s + 2**62)]
        for a, b in itertools.combinations(noise, 2):
            assert not torch.equal(a, b)
    # The same for input ids: ids 3 and 3 + 2^32 are different inputs with different noise.
    assert not torch.equal(_block(1, 3, Phase.PREDICT, 0), _block(1, 3 + 2**32, Phase.PREDICT, 0))


@pytest.mark.slow
def test_two_blocks_of_one_input_never_coincide():
    """The binomial model needs every block of an input (all phases) to be a fresh stream. Checked on
    the real generator: 3 phases × 40,000 blocks for each of three inputs, each block fingerprinted by
    its first two draws. (With a seed that is a 63-bit hash cut to 32 bits by torch, about 1.7 of these
    120,000 blocks per input would coincide with another.)"""
    gen = torch.Generator()
    out = torch.empty(1, 2)
    for input_id in (0, 1, 2**40 + 17):
        seen = {}
        for phase in Phase:
            for block in range(40_000):
                fill_block(out, gen, 9, input_id, phase, block)
                key = tuple(out.view(-1).tolist())
                assert key not in seen, (input_id, phase, block, seen.get(key))
                seen[key] = (phase, block)


def test_fill_block_is_deterministic_and_ignores_generator_state():
    a = _block(1, 2, Phase.SELECTION, 0)
    gen = torch.Generator()
    gen.manual_seed(999)
    torch.randn(123, generator=gen)  # whatever state the generator is in, the block resets it
    b = _block(1, 2, Phase.SELECTION, 0, generator=gen)
    assert torch.equal(a, b)
    for other in [(2, 2, 0, 0), (1, 3, 0, 0), (1, 2, 1, 0), (1, 2, 0, 1)]:
        assert not torch.equal(a, _block(*other))


def test_fill_block_writes_into_a_view_of_a_larger_buffer():
    buffer = torch.zeros(2500, 5)
    gen = torch.Generator()
    fill_block(buffer[700:1700], gen, 4, 5, Phase.ESTIMATION, 6)
    assert torch.equal(buffer[700:1700], _block(4, 5, Phase.ESTIMATION, 6))
    assert not buffer[:700].any() and not buffer[1700:].any()


def test_fill_block_is_standard_normal():
    # 200,000 draws: mean and std within 5 standard errors (≈0.011 and ≈0.008) of N(0, 1),
    # and the 1%/99% quantiles within 0.05 of ∓2.326.
    x = torch.cat([_block(0, i, Phase.PREDICT, 0).ravel() for i in range(40)]).double().numpy()
    assert abs(x.mean()) < 5 / np.sqrt(x.size)
    assert abs(x.std() - 1) < 5 / np.sqrt(2 * x.size)
    np.testing.assert_allclose(np.quantile(x, [0.01, 0.99]), norm.ppf([0.01, 0.99]), atol=0.05)
    # Different blocks are uncorrelated: |r| of two 5,000-draw blocks ≲ 5/sqrt(5000) = 0.07.
    r = np.corrcoef(_block(0, 0, 0, 0).ravel(), _block(0, 0, 0, 1).ravel())[0, 1]
    assert abs(r) < 0.07


def test_block_lengths_and_num_blocks():
    assert num_blocks(1, 1000) == 1
    assert num_blocks(1000, 1000) == 1
    assert num_blocks(1001, 1000) == 2
    assert num_blocks(0, 1000) == 0
    assert block_lengths(2500, 1000) == [1000, 1000, 500]
    assert block_lengths(2000, 1000) == [1000, 1000]
    assert block_lengths(999, 1000) == [999]
    assert block_lengths(1, 1000) == [1]
    assert block_lengths(2500, 1000, 1) == [1000, 500]
    assert block_lengths(2500, 1000, 2, 3) == [500]
    assert block_lengths(2500, 1000, 1, 1) == []
    assert block_lengths(7, 1) == [1] * 7
    for n, size in [(1, 1), (10, 3), (100_000, 1000), (12345, 1000), (999, 1000)]:
        lengths = block_lengths(n, size)
        assert sum(lengths) == n and len(lengths) == num_blocks(n, size)
        assert all(0 < length <= size for length in lengths) and all(length == size for length in lengths[:-1])


# --- VoteCounter ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle():
    return LinearOracle(dim=5, seed=0)


@pytest.fixture(scope="module")
def linear_counter(oracle):
    return VoteCounter(ModelRef.from_module(oracle.module, torch.zeros(1, 5)), device="cpu")


CENTRES = (-1.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def centre_counter():
    return VoteCounter(ModelRef.from_module(NearestCentre(CENTRES), torch.zeros(1, 4)), device="cpu")


def _x_centre(n_inputs=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_inputs, 4)).astype(np.float32)
    x[:, 0] = np.linspace(-1.2, 1.2, n_inputs)  # every input straddles at least one boundary
    return x


def _count(counter, x, ids, *, n=5000, start=0, stop=None, phase=Phase.ESTIMATION, sigma=0.5, seed=3,
           block_size=1000, batch_size=2048, num_classes=2):
    stop = num_blocks(n, block_size) if stop is None else stop
    return counter.count(x, np.asarray(ids), phase=phase, n=n, block_start=start, block_stop=stop, sigma=sigma,
                         seed=seed, block_size=block_size, batch_size=batch_size, num_classes=num_classes)


def test_counts_shape_dtype_and_sum_to_block_lengths(linear_counter, oracle):
    x = oracle.inputs_at_distances(np.array([0.0, 0.2, -0.4, 1.0]))
    n, size = 2500, 1000
    counts = _count(linear_counter, x, [0, 1, 2, 3], n=n, block_size=size)
    assert counts.shape == (4, 3, 3) and counts.dtype == np.int64  # 2 classes + the non-finite slot
    assert not counts[..., 2].any()
    np.testing.assert_array_equal(counts.sum(axis=2), np.tile(block_lengths(n, size), (4, 1)))
    # Votes follow the oracle: P[class 1] = Φ(d/σ); 5 binomial standard errors at n = 2500 is < 0.05.
    share = counts.sum(axis=1)[:, 1] / n
    np.testing.assert_allclose(share, norm.cdf(oracle.signed_distance(x) / 0.5), atol=0.05)


def test_counts_bit_identical_for_the_same_call(linear_counter, oracle):
    """The design's promise: same inputs, plan and batch size ⇒ the same counts, on any replica."""
    x = oracle.inputs_at_distances(np.linspace(-0.3, 0.3, 6))
    args = dict(n=4000, batch_size=1500)
    a = _count(linear_counter, x, np.arange(6), **args)
    fresh = VoteCounter(ModelRef.from_module(oracle.module, torch.zeros(1, 5)), device="cpu")
    assert np.array_equal(a, _count(fresh, x, np.arange(6), **args))
    assert np.array_equal(a, _count(linear_counter, x, np.arange(6), **args))


def test_packing_does_not_change_counts_of_a_rowwise_model(centre_counter):
    """Counting inputs one by one or all together (same batch size, so different batch
    compositions) must give bit-identical counts for a model whose rows are computed independently:
    this checks the owner/offset bookkeeping of the packed batches, including 3 classes and a short
    last block."""
    x = _x_centre(6)
    ids = np.array([10, 4, 99, 0, 7, 123456])
    args = dict(n=2300, block_size=500, batch_size=1700, num_classes=3)  # 500 × 3 per batch, 300 tail
    together = _count(centre_counter, x, ids, **args)
    alone = np.concatenate([_count(centre_counter, x[i : i + 1], ids[i : i + 1], **args) for i in range(len(x))])
    assert np.array_equal(together, alone)
    reversed_ = _count(centre_counter, x[::-1], ids[::-1], **args)[::-1]
    assert np.array_equal(together, reversed_)
    # Batch sizes that pack 1, 3 or all pairs per forward pass: still identical for this model.
    for batch_size in (1, 1500, 10**6):
        assert np.array_equal(together, _count(centre_counter, x, ids, **{**args, "batch_size": batch_size}))
    assert (together > 0).sum(axis=2).min() >= 2  # no input is trivially unanimous: the test can fail


class _CallSizes(torch.nn.Module):
    """NearestCentre that records how many rows each call gets (a plain module: the counter keeps it)."""

    def __init__(self):
        super().__init__()
        self.inner, self.calls = NearestCentre(CENTRES), []

    def forward(self, x):
        self.calls.append(len(x))
        return self.inner(x)


def test_cpu_calls_the_model_on_bounded_slices_of_the_packed_batch(centre_counter):
    """On CPU a packed batch reaches the model in slices of at most ``forward_rows`` rows (the CNNs'
    activations stay in cache); the counts are the same bits as whole-batch calls."""
    from rpdist.smoothing.votes import CPU_FORWARD_ROWS

    assert centre_counter.forward_rows == CPU_FORWARD_ROWS
    x, ids = _x_centre(6), np.arange(6)
    args = dict(n=2300, block_size=500, batch_size=1700, num_classes=3)
    sliced = _count(centre_counter, x, ids, **args)
    counter = VoteCounter(ModelRef.from_module(NearestCentre(CENTRES), torch.zeros(1, 4)), device="cpu")
    recorder = _CallSizes()
    counter.model = recorder
    for rows in (None, 1700, 640, 7):
        counter.forward_rows, recorder.calls = rows, []
        assert np.array_equal(_count(counter, x, ids, **args), sliced)
        assert max(recorder.calls) == (1500 if rows is None or rows >= 1500 else rows)  # 3 blocks of 500 a batch
        assert sum(recorder.calls) == 6 * 2300


_FAULTS_PER_CALL = """
import resource, statistics, sys, torch
from rpdist.distributed.allocator import keep_freed_memory
from rpdist.models.architectures import build
torch.set_num_threads(1)
kept = sys.argv[1] == "kept" and keep_freed_memory()
model, x = build("cnn", num_classes=10, channels=1, side=8).eval(), torch.randn(1024, 1, 8, 8)
with torch.inference_mode():
    for _ in range(3):
        model(x)
    faults = []
    for _ in range(11):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, statistics.median(faults))
"""


def test_a_replica_that_keeps_freed_memory_stops_page_faulting_its_activations():
    """With glibc's defaults every forward of 1,024 digits-sized rows through the CNN maps and faults in
    its activations anew (a median of 5,600 to 6,100 page faults a call here); with the thresholds a CPU replica sets,
    the freed blocks are reused and a warm call faults in nothing. Each setting in a fresh process; the median
    of 11 warm calls, because one full-suite run counted 1,025 faults in a 10-call window (a one-off heap growth, not
    what the setting is about)."""
    import subprocess
    import sys

    faults = {}
    for setting in ("defaults", "kept"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL, setting], check=True, capture_output=True,
                             text=True).stdout.split()
        if setting == "kept" and out[0] != "True":
            pytest.skip("the C library has no mallopt")
        faults[setting] = float(out[1])
    assert faults["kept"] <= 10
    assert faults["defaults"] >= 1000  # what the setting removes: the test can fail


def test_noise_follows_the_input_id_not_the_row(centre_counter):
    x = np.repeat(_x_centre(1), 3, axis=0)
    same = _count(centre_counter, x, [5, 5, 6], num_classes=3)
    assert np.array_equal(same[0], same[1])  # same id, same input, same noise
    assert not np.array_equal(same[0], same[2])  # same input, another id: fresh noise


def test_packing_of_a_linear_model_agrees_up_to_float_rounding(linear_counter, oracle):
    """A Linear layer's matmul rounds a row differently at some batch sizes (≈1e-7), which can flip
    f only for noise within ~1e-6 of the hyperplane: a chance of ≈1e-6 per sample, so ≈0.02 flips
    expected over these 20,000 samples. Exact identity is only promised for identical calls; here
    any disagreement must stay at that scale (≤ 1 vote per input), while a packing bug would move
    hundreds."""
    x = oracle.inputs_at_distances(np.array([0.0, 0.1, -0.2, 0.05]))
    ids = np.arange(4)
    together = _count(linear_counter, x, ids, batch_size=2048)
    alone = np.concatenate([_count(linear_counter, x[i : i + 1], ids[i : i + 1], batch_size=2048) for i in range(4)])
    assert np.abs(together - alone).max() <= 1
    np.testing.assert_array_equal(together.sum(axis=2), alone.sum(axis=2))


def test_block_ranges_are_slices_of_the_whole(centre_counter):
    x, ids = _x_centre(4), np.arange(4)
    args = dict(n=7300, block_size=1000, batch_size=2500, num_classes=3)
    whole = _count(centre_counter, x, ids, start=0, stop=8, **args)
    for a, b in [(0, 3), (3, 8), (2, 5), (7, 8), (0, 8), (5, 6)]:
        assert np.array_equal(_count(centre_counter, x, ids, start=a, stop=b, **args), whole[:, a:b])
    # Nested prefixes: N = 3000 uses exactly the first three blocks of N = 7300.
    prefix = _count(centre_counter, x, ids, **{**args, "n": 3000})
    assert np.array_equal(prefix, whole[:, :3])


def test_phases_and_seeds_give_independent_votes(centre_counter):
    x, ids = _x_centre(5), np.arange(5)
    args = dict(n=3000, num_classes=3)
    estimation = _count(centre_counter, x, ids, phase=Phase.ESTIMATION, **args)
    selection = _count(centre_counter, x, ids, phase=Phase.SELECTION, **args)
    predict = _count(centre_counter, x, ids, phase=Phase.PREDICT, **args)
    other_seed = _count(centre_counter, x, ids, phase=Phase.ESTIMATION, **{**args, "seed": 4})
    for other in (selection, predict, other_seed):
        assert not np.array_equal(estimation, other)
        # Same distribution: a class total is Binomial(3000, p), so the difference of two independent
        # totals has sd ≤ sqrt(2·3000/4) ≈ 39; 200 is > 5 sd for each of the 45 comparisons.
        assert np.abs(estimation.sum(axis=1) - other.sum(axis=1)).max() < 200


def test_sigma_scales_the_noise(centre_counter):
    x, ids = _x_centre(1), np.arange(1)
    x[0, 0] = -1.0  # on the centre of class 0, whose region is x0 < −0.5
    tiny = _count(centre_counter, x, ids, sigma=1e-3, num_classes=3).sum(axis=1)
    np.testing.assert_array_equal(tiny, [[5000, 0, 0, 0]])
    big = _count(centre_counter, x, ids, sigma=10.0, num_classes=3).sum(axis=1)
    # At σ = 10 class 0 keeps P[−1 + 10ε < −0.5] = Φ(0.05) ≈ 0.52, ≈2600 ± 35 of 5000 votes.
    assert 2300 < big[0, 0] < 2900


# --- the plan ---------------------------------------------------------------------------------

PLANS = [
    # (num_inputs, phases, block_size, batch_size, unit_inputs, chunk_inputs)
    (10, ((Phase.SELECTION, 100), (Phase.ESTIMATION, 20_000)), 1000, 4096, 1, 834),
    (5000, ((Phase.PREDICT, 1000),), 1000, 4096, 32, 2048),
    (100, ((Phase.SELECTION, 100), (Phase.ESTIMATION, 100_000)), 1000, 1000, 1, 167),
    (10, ((Phase.PREDICT, 1),), 1000, 4096, 32768, 32768),
    (3000, ((Phase.SELECTION, 64), (Phase.ESTIMATION, 2500)), 500, 700, 2, 2048),
    (37, ((Phase.SELECTION, 10), (Phase.ESTIMATION, 12345)), 1000, 100, 1, 1357),  # 2^24 // 12355
    (1, ((Phase.ESTIMATION, 1),), 1, 1, 8, 2048),  # capped at MAX_CHUNK_INPUTS
]


def _plan(num_inputs, phases, block_size, batch_size):
    return Plan(num_inputs, tuple(PhaseSpec(int(p), n) for p, n in phases), block_size, batch_size)


def test_plan_sizes_by_hand():
    for num_inputs, phases, block_size, batch_size, unit_inputs, chunk_inputs in PLANS:
        plan = _plan(num_inputs, phases, block_size, batch_size)
        assert plan.unit_samples == engine_plan.UNIT_BATCHES * batch_size
        assert (plan.unit_inputs, plan.chunk_inputs) == (unit_inputs, chunk_inputs), (num_inputs, phases, batch_size)
        assert plan.chunk_inputs % plan.unit_inputs == 0
        assert plan.num_chunks == -(-num_inputs // chunk_inputs)


@pytest.mark.parametrize("case", PLANS, ids=lambda case: f"{case[0]}x{[n for _, n in case[1]]}-b{case[3]}")
def test_plan_units_cover_every_row_phase_block_exactly_once(case):
    num_inputs, phases, block_size, batch_size, *_ = case
    plan = _plan(num_inputs, phases, block_size, batch_size)
    seen = {}
    rows_by_chunk = [plan.chunk_rows(c) for c in range(plan.num_chunks)]
    assert rows_by_chunk[0][0] == 0 and rows_by_chunk[-1][1] == num_inputs
    assert all(a[1] == b[0] for a, b in zip(rows_by_chunk, rows_by_chunk[1:]))  # contiguous, no gap/overlap
    samples = 0
    for chunk in range(plan.num_chunks):
        start, stop = plan.chunk_rows(chunk)
        for unit in plan.units(chunk):
            assert unit.chunk == chunk and start <= unit.row_start < unit.row_stop <= stop
            assert unit.row_stop - unit.row_start <= plan.unit_inputs
            assert 0 <= unit.block_start < unit.block_stop <= num_blocks(unit.n, block_size)
            assert dict((int(p), n) for p, n in phases)[unit.phase] == unit.n
            for row in range(unit.row_start, unit.row_stop):
                for block in range(unit.block_start, unit.block_stop):
                    key = (row, unit.phase, block)
                    assert key not in seen, key
                    seen[key] = unit
            lengths = block_lengths(unit.n, block_size, unit.block_start, unit.block_stop)
            assert plan.unit_samples_of(unit) == (unit.row_stop - unit.row_start) * sum(lengths)
            # A unit stays within its sample budget, or is a single block/input that cannot shrink.
            assert (plan.unit_samples_of(unit) <= plan.unit_samples
                    or (unit.row_stop - unit.row_start == 1 and unit.block_stop - unit.block_start == 1))
            samples += plan.unit_samples_of(unit)
    expected = {(row, int(p), b) for row in range(num_inputs) for p, n in phases for b in range(num_blocks(n, block_size))}
    assert set(seen) == expected
    assert samples == plan.samples(range(plan.num_chunks)) == num_inputs * sum(n for _, n in phases)


def test_plan_has_no_worker_dimension():
    """Bit-identical results for any number of workers rest on the plan being a pure function of
    the job: it has no worker argument, and equal jobs give equal units."""
    fields = {f.name for f in dataclasses.fields(Plan)}
    assert fields == {"num_inputs", "phases", "block_size", "batch_size", "unit_batches"}  # unit_batches: set by the job
    assert "workers" not in inspect.signature(Plan).parameters
    a = _plan(*PLANS[4][:4])
    b = _plan(*PLANS[4][:4])
    assert [a.units(c) for c in range(a.num_chunks)] == [b.units(c) for c in range(b.num_chunks)]
