"""The Ray engine end to end: certificates against an exact oracle, determinism, actor failure.

One certify configuration (60 inputs of a linear oracle, σ = 0.5, N = 20,000, α = 0.001) is run
once as the reference and reused; every other run is compared with it bit for bit.
"""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from scipy.stats import beta, binom, binomtest, norm

from rpdist.distributed import plan as engine_plan
from rpdist.distributed import pool as engine_pool
from rpdist.errors import InputError
from rpdist.models.refs import ModelRef
from rpdist.smoothing.job import CERTIFY, SmoothingConfig, SmoothingJob, certify, predict
from tests.oracle import LinearOracle

SIGMA, N, N0, ALPHA, SEED = 0.5, 20_000, 100, 0.001, 7
# Small forward batches: 8 × 2,000 samples per unit, so each input's estimation phase is two units
# (blocks [0, 16) and [16, 20)) plus one selection unit: 180 units for 60 inputs.
BATCH = 2000
WORKERS = 2  # always the same, so that the pool of warm replicas is reused across tests

DESIGN_COLUMNS = {"input_id", "label", "prediction", "top_class", "count_top", "counts", "selection_counts", "n",
                  "n0", "alpha", "sigma", "seed", "pa_lower", "radius", "correct", "nonfinite",
                  "advantage_at_radius", "privacy_radius_tau0.05"}  # the release's privacy, default τ = 0.05


@pytest.fixture(scope="module", autouse=True)
def _release_replicas():
    """Hand the CPUs held by the cached replica pool back when this module is done, so later tests
    that build pools of their own never wait for them."""
    yield
    engine_pool.shutdown()


@pytest.fixture(scope="module")
def oracle():
    return LinearOracle(dim=5, seed=0)


@pytest.fixture(scope="module")
def model_ref(oracle):
    return ModelRef.from_module(oracle.module, torch.zeros(1, 5))


@pytest.fixture(scope="module")
def inputs(oracle):
    """60 inputs with |d|/σ spread over [0.05, 3], alternating sides of the hyperplane."""
    ratio = np.linspace(0.05, 3.0, 60)
    signs = np.where(np.arange(60) % 2 == 0, 1.0, -1.0)
    X = oracle.inputs_at_distances(signs * ratio * SIGMA, seed=1)
    return X, oracle.label(X)


def _certify(model_ref, inputs, **overrides):
    X, y = inputs
    kwargs = dict(sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, seed=SEED, batch_size=BATCH, workers=WORKERS)
    kwargs.update(overrides)
    return certify(model_ref, X, y, **kwargs)


@pytest.fixture(scope="module")
def reference(ray_session, model_ref, inputs):
    return _certify(model_ref, inputs)


def _matrix(column) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=np.int64) for v in column])


def _assert_same_counts(a, b):
    np.testing.assert_array_equal(_matrix(a["counts"]), _matrix(b["counts"]))
    np.testing.assert_array_equal(_matrix(a["selection_counts"]), _matrix(b["selection_counts"]))
    np.testing.assert_array_equal(a["input_id"].to_numpy(), b["input_id"].to_numpy())
    np.testing.assert_array_equal(a["radius"].to_numpy(), b["radius"].to_numpy())
    np.testing.assert_array_equal(a["pa_lower"].to_numpy(), b["pa_lower"].to_numpy())
    np.testing.assert_array_equal(a["prediction"].to_numpy(), b["prediction"].to_numpy())


# --- bad input ----------------------------------------------------------------------------------


def _bad_x(oracle, what):
    X = oracle.inputs_at_distances(np.array([0.5, -0.5, 1.0]))
    if what == "nan":
        X[1, 2] = np.nan
    elif what == "inf":
        X[2, 0] = np.inf
    elif what == "features":
        X = X[:, :4]
    return X


BAD = [
    ("nan", {}, "non-finite"),
    ("inf", {}, "non-finite"),
    ("features", {}, "does not accept inputs of shape"),
    (None, {"sigma": 0}, "sigma"),
    (None, {"sigma": -0.5}, "sigma"),
    (None, {"sigma": float("nan")}, "sigma"),
    (None, {"alpha": 0}, "alpha"),
    (None, {"alpha": 1}, "alpha"),
    (None, {"alpha": 1.5}, "alpha"),
    (None, {"n": 0}, "n must be"),
    (None, {"n": True}, "n must be"),
    (None, {"n0": 0}, "n0 must be"),
    (None, {"n": 5}, "can never certify"),
    (None, {"batch_size": 0}, "batch size"),
    (None, {"workers": 0}, "workers"),
    (None, {"seed": -1}, "seed"),
]


@pytest.mark.parametrize("what, overrides, message", BAD, ids=[f"{w}-{o}" for w, o, _ in BAD])
def test_bad_input_raises_input_error(ray_session, oracle, what, overrides, message):
    # ray_session: if validation ever let one through, the job runs on the session's Ray instead of
    # starting its own. An in-memory module goes through the same path as users' models.
    kwargs = {**dict(sigma=SIGMA, n0=N0, n=1000, alpha=ALPHA, workers=WORKERS), **overrides}
    with pytest.raises(InputError, match=message):
        certify(oracle.module, _bad_x(oracle, what), **kwargs)


def test_bad_predict_input_raises_input_error(ray_session, oracle):
    X = _bad_x(oracle, None)
    with pytest.raises(InputError, match="PREDICT"):  # 2·2^−10 > 0.001: N = 10 can only abstain
        predict(oracle.module, X, sigma=SIGMA, n=10, alpha=ALPHA, workers=WORKERS)
    with pytest.raises(InputError, match="y must have shape"):
        predict(oracle.module, X, [0, 1], sigma=SIGMA, n=1000, alpha=ALPHA, workers=WORKERS)
    with pytest.raises(InputError, match="labels must lie"):
        predict(oracle.module, X, [0, 1, 2], sigma=SIGMA, n=1000, alpha=ALPHA, workers=WORKERS)


# --- certificates against the oracle ------------------------------------------------------------


def test_certificates_agree_with_the_oracle(reference, oracle, inputs):
    X, y = inputs
    df = reference
    d = np.abs(oracle.signed_distance(X))
    radius, prediction, top = df["radius"].to_numpy(), df["prediction"].to_numpy(), df["top_class"].to_numpy()
    certified = prediction != -1

    # Soundness. Each input's radius exceeds the truth |d| only if p̲A > Φ(|d|/σ), an event of
    # probability ≤ α = 0.001, so the number of violations among 60 inputs is ≤ Binomial(60, 0.001):
    # P[≥ 3] ≈ C(60,3)·1e-9 ≈ 3.4e-5. Allow 2.
    assert np.sum(radius > d) <= 2

    # p̲A bounds the true probability of the *selected* class (selection is independent of the
    # estimation samples): same Binomial(60, α) argument.
    p_true_top = np.where(top == y, norm.cdf(d / SIGMA), norm.cdf(-d / SIGMA))
    assert np.sum(df["pa_lower"].to_numpy() > p_true_top) <= 2

    # A certified wrong side needs the minority class (p ≤ Φ(−0.05) = 0.48 here) to reach p̲A > 1/2:
    # at N = 20,000 that is p̂ ≥ 0.511, > 8 standard errors above 0.48 (≈1e-16 per input). Strict.
    np.testing.assert_array_equal(prediction[certified], y[certified])
    np.testing.assert_array_equal(df["correct"].to_numpy(), prediction == y)

    # Tightness. For 0.5 ≤ |d|/σ ≤ 2.5, p̲A ≈ p − 3.09·sqrt(p(1−p)/N) gives R/|d| between 0.94 (at
    # 0.5σ) and 0.97 (at 2σ); the per-input spread of R/|d| is ≲ 0.02, so the mean over ~40 inputs
    # has sd ≲ 0.004 and 0.88 is > 15 sd below its expectation. A bound that wasted samples or used
    # the wrong quantile (e.g. α/100) would fall below.
    band = (d / SIGMA >= 0.5) & (d / SIGMA <= 2.5)
    assert band.sum() >= 35
    assert np.all(certified[band])
    assert np.mean(radius[band] / d[band]) >= 0.88
    # Far inputs certify large radii, bounded by what N = 20,000 can ever certify.
    assert radius.max() <= SIGMA * norm.ppf(ALPHA ** (1 / N))
    assert np.all(radius[d / SIGMA >= 1] > 0.8 * SIGMA)


def test_certificates_are_exactly_rederivable_from_counts(reference, inputs):
    X, y = inputs
    df = reference
    assert set(df.columns) == DESIGN_COLUMNS
    counts, selection = _matrix(df["counts"]), _matrix(df["selection_counts"])
    assert counts.shape == selection.shape == (len(X), 2)
    np.testing.assert_array_equal(counts.sum(axis=1), N)
    np.testing.assert_array_equal(selection.sum(axis=1), N0)
    np.testing.assert_array_equal(df["input_id"].to_numpy(), np.arange(len(X)))
    np.testing.assert_array_equal(df["label"].to_numpy(), y)
    for column, value in [("n", N), ("n0", N0), ("alpha", ALPHA), ("sigma", SIGMA), ("seed", SEED)]:
        assert (df[column] == value).all(), column
    assert df["radius"].dtype == np.float64 and df["pa_lower"].dtype == np.float64

    top = selection.argmax(axis=1)
    np.testing.assert_array_equal(df["top_class"].to_numpy(), top)
    np.testing.assert_array_equal(df["count_top"].to_numpy(), counts[np.arange(len(X)), top])
    for k, pa_lower, r, prediction, t in zip(df["count_top"], df["pa_lower"], df["radius"], df["prediction"], top):
        expected_pa = beta.ppf(ALPHA, k, N - k + 1) if k > 0 else 0.0
        assert pa_lower == pytest.approx(expected_pa, rel=1e-12, abs=0)
        expected_r = SIGMA * norm.ppf(expected_pa) if expected_pa > 0.5 else 0.0
        assert r == pytest.approx(expected_r, rel=1e-12, abs=0)
        assert prediction == (t if expected_pa > 0.5 else -1)
        # Re-deriving at another α needs no new samples: a stricter α can only shrink the radius.
        stricter = beta.ppf(ALPHA / 10, k, N - k + 1) if k > 0 else 0.0
        assert stricter <= pa_lower


@pytest.mark.slow  # 8-11 s: the full suite runs it, the fast subset stays under a minute
def test_predict_abstains_at_the_boundary_and_never_far_from_it(ray_session, model_ref, oracle):
    n = 1000
    near = oracle.inputs_at_distances(np.zeros(200), seed=2)
    ratio = np.linspace(2.0, 3.0, 40) * np.where(np.arange(40) % 2 == 0, 1.0, -1.0)
    far = oracle.inputs_at_distances(ratio * SIGMA, seed=3)
    X = np.concatenate([near, far])
    df = predict(model_ref, X, oracle.label(X), sigma=SIGMA, n=n, alpha=ALPHA, seed=SEED, batch_size=BATCH,
                 workers=WORKERS)
    prediction = df["prediction"].to_numpy()

    # At d = 0 (up to float32 rounding, |d| ~ 1e-7) the votes are Binomial(1000, 1/2), the exact
    # test's null: it rejects with probability `size` ≤ α (≈ 0.0007 at N = 1000, being discrete).
    # Non-abstentions among 200 are Binomial(200, size); allowing 3 fails with probability < 1e-4.
    k = np.arange(n + 1)
    rejects = np.array([binomtest(int(i), n, 0.5).pvalue <= ALPHA for i in k])
    size = binom.pmf(k[rejects], n, 0.5).sum()
    assert size <= ALPHA
    assert binom.sf(3, 200, size) < 1e-4
    assert np.sum(prediction[:200] != -1) <= 3

    # At |d|/σ ≥ 2 the top class has p ≥ Φ(2) = 0.977; abstaining needs c1 ≤ 552 of 1000,
    # > 90 standard errors below 977: never. And the prediction is the true side.
    np.testing.assert_array_equal(prediction[200:], oracle.label(far))

    counts = _matrix(df["counts"])
    np.testing.assert_array_equal(counts.sum(axis=1), n)
    np.testing.assert_array_equal(df["count_top"] + df["count_second"], n)
    for c1, c2, p_value in zip(df["count_top"][195:205], df["count_second"][195:205], df["p_value"][195:205]):
        assert p_value == binomtest(int(c1), int(c1 + c2), 0.5).pvalue


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.slow
def test_chunking_does_not_change_counts(reference, model_ref, inputs, monkeypatch):
    """Nine chunks of 7 inputs instead of one chunk: the same units, so the same counts."""
    monkeypatch.setattr(engine_plan, "CHUNK_SAMPLES", 7 * (N + N0))
    X, y = inputs
    job = SmoothingJob(model_ref, X, y, config=SmoothingConfig(CERTIFY, SIGMA, N, ALPHA, N0, SEED, BATCH),
                       workers=WORKERS)
    assert (job.plan.chunk_inputs, job.plan.num_chunks) == (7, 9)
    parts = sorted(job.tables(), key=lambda item: item[0])
    assert [chunk for chunk, _ in parts] == list(range(9))
    assert [len(table) for _, table in parts] == [7] * 8 + [4]
    _assert_same_counts(pa.concat_tables([table for _, table in parts]).to_pandas(), reference)


@pytest.mark.slow
def test_another_seed_gives_other_counts(reference, model_ref, inputs):
    other = _certify(model_ref, inputs, seed=SEED + 1)
    a, b = _matrix(reference["counts"]), _matrix(other["counts"])
    assert not np.array_equal(a, b)
    assert (a != b).any(axis=1).mean() > 0.9  # fresh noise for (nearly) every input
    # Same distribution: the difference of two independent Binomial(20000, p) counts has sd ≤ 100.
    assert np.abs(a - b).max() < 500


@pytest.mark.slow
def test_killed_replica_does_not_change_counts(reference, model_ref, inputs):
    """SIGKILL one replica after the first unit; Ray restarts it and retries its units, which draw
    the same counter-based noise, so every count equals the uninterrupted run's."""
    _assert_same_counts(_certify_killing_one_replica(model_ref, inputs), reference)


class _Padded(torch.nn.Module):
    """The oracle with 256 KiB of weights it never reads: the same logits from a model too big to travel
    inline as one Ray argument."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.unused = torch.nn.Parameter(torch.zeros(64 * 1024))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@pytest.mark.slow
def test_model_over_rays_inline_limit_reaches_restarted_replicas(reference, oracle, inputs, capfd):
    """A model over Ray's 100 KiB inline-argument limit goes to each replica in pieces inside the creation task,
    which Ray keeps for restarts; as one argument it would sit in the object store, where a restart may not
    find it, and Ray logs an error for every such replica (ray-project/ray#53727)."""
    big = ModelRef.from_module(_Padded(oracle.module), torch.zeros(1, 5))
    assert len(big.payload) > 2 * 100 * 1024
    counts = _certify_killing_one_replica(big, inputs)
    engine_pool.shutdown()  # the next tests' pool is the oracle's own again
    _assert_same_counts(counts, reference)  # the killed replica rebuilt the whole model from its pieces
    assert "constructor arguments in the object store" not in capfd.readouterr().err


def _certify_killing_one_replica(model_ref, inputs) -> pd.DataFrame:
    """The reference configuration, with one replica SIGKILLed after the first unit."""
    X, y = inputs
    job = SmoothingJob(model_ref, X, y, config=SmoothingConfig(CERTIFY, SIGMA, N, ALPHA, N0, SEED, BATCH),
                       workers=WORKERS)
    total = sum(len(job.plan.units(c)) for c in range(job.plan.num_chunks))
    assert total == 180
    info = job.pool.info()
    victim = info[0]["pid"]
    assert victim != os.getpid() and len({i["pid"] for i in info}) == WORKERS
    assert all(i["keeps_freed_memory"] for i in info)  # CPU replicas reuse their freed activations (glibc)
    done = []

    def on_unit(unit, samples):
        done.append(unit)
        if len(done) == 1:
            os.kill(victim, signal.SIGKILL)

    tables = [table for _, table in job.tables(on_unit=on_unit)]
    assert len(done) == total  # the kill came with 179 units still to run, and all of them ran
    pids = {i["pid"] for i in job.pool.info()}
    assert victim not in pids and len(pids) == WORKERS  # the replica really died and was restarted
    return pa.concat_tables(tables).to_pandas()


@pytest.mark.slow
def test_one_worker_equals_two_workers(reference, model_ref, inputs):
    """The plan has no worker dimension: one replica runs the very same units."""
    one = _certify(model_ref, inputs, workers=1)
    _assert_same_counts(one, reference)


def _predict_in_task(model_ref, X, ids, shared):
    """Body of a Ray task: PREDICT through the driver's replicas, three inputs a call (one unit each);
    report whether it made any replicas of its own."""
    parts = [predict(model_ref, X[i:i + 3], sigma=SIGMA, n=500, alpha=ALPHA, seed=SEED, input_ids=ids[i:i + 3],
                     workers=WORKERS, shared_pool=shared) for i in range(0, len(X), 3)]
    pools = [engine_pool.WARM.pool]
    return np.concatenate([p["prediction"].to_numpy() for p in parts]), [p.owned for p in pools], \
        [a for p in pools for a in p.actors]


@pytest.mark.slow
def test_ray_tasks_query_the_drivers_replicas(ray_session, model_ref, inputs):
    import ray

    X, _ = inputs
    ids = np.arange(len(X), dtype=np.int64)
    pool = engine_pool.get_pool(model_ref, WORKERS, None)
    shared = pool.share()
    assert engine_pool.get_pool(model_ref, WORKERS, None, shared) is pool  # the driver keeps its own pool
    here = predict(model_ref, X, sigma=SIGMA, n=500, alpha=ALPHA, seed=SEED, input_ids=ids, workers=WORKERS)
    before = [info["units"] for info in pool.info()]
    # Both CPUs are held by the replicas: a task that built a pool of its own would wait forever.
    task = ray.remote(num_cpus=0)(_predict_in_task)
    runs = ray.get([task.remote(model_ref, X[part], ids[part], shared) for part in (slice(0, 30), slice(30, 60))],
                   timeout=300)
    assert np.array_equal(np.concatenate([r[0] for r in runs]), here["prediction"].to_numpy())
    for _, owned, actors in runs:
        assert owned == [False] and actors == pool.actors
    # 20 one-unit calls: ties between idle replicas are broken at random, so both serve some
    # (all on one replica has probability 2·2^-20).
    served = [info["units"] - b for info, b in zip(pool.info(), before)]
    assert sum(served) == 20 and min(served) > 0
    other = ModelRef.from_module(torch.nn.Linear(5, 2), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="another model"):
        engine_pool.get_pool(other, WORKERS, None, shared)


class _Clock:
    """time for the scheduler: sleeping moves it on, so waiting out HEAD_GRACE takes no real time."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class _Head:
    """The driver's GCS client: down (every question fails after its 5 s timeout) or up with no nodes."""

    def __init__(self, clock, up):
        self.clock, self.up, self.asked = clock, up, 0

    def get_all_node_info(self, timeout):
        self.asked += 1
        if not self.up:
            self.clock.now += timeout
            raise ConnectionError("the head does not answer")
        return {}


@pytest.mark.parametrize("up, message", [
    (False, "lost the Ray cluster's head (no answer for 15 s)"),
    (True, "every model replica was lost (their nodes died or they kept failing)"),
])
def test_losing_every_replica_names_the_head_when_it_is_gone(monkeypatch, up, message):
    """A lone replica on the head's node dies with it, often before a health check has seen the head
    go: the run's one line must still say it lost the head, and say replicas only while the head answers."""
    import ray

    from rpdist.distributed import scheduler
    from rpdist.errors import ClusterLostError

    clock = _Clock()
    head = _Head(clock, up)
    monkeypatch.setattr(scheduler, "time", clock)
    monkeypatch.setattr(ray._private.worker.global_worker, "gcs_client", head, raising=False)
    lost = scheduler.Scheduler.__new__(scheduler.Scheduler)
    lost.head_down_since, lost.head_misses = None, 0
    with pytest.raises(ClusterLostError, match=re.escape(message)):
        lost._every_replica_lost()
    assert head.asked == (1 if up else 3)
