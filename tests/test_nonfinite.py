"""Models that misbehave: non-finite logits never become votes, and a model that raises ends the
run with one line (issue 10).

NaN logits used to vote for class 0 (``argmax`` of a NaN row is 0), so a model that returned NaN
everywhere was certified at the largest radius on every input. Now such samples are counted in the
``nonfinite`` column and an input with any of them abstains.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import rpdist
from rpdist.cli.main import main
from rpdist.distributed import pool as engine_pool
from rpdist.errors import InputError, ModelError
from rpdist.models.refs import ModelRef
from rpdist.pipelines.sweep import prefix_counts
from rpdist.smoothing.job import CERTIFY, SmoothingConfig, SmoothingJob, certify, predict
from rpdist.smoothing.noise import Phase
from rpdist.smoothing.votes import VoteCounter, model_error
from tests.oracle import LinearOracle

SIGMA, N0, N, ALPHA, BATCH = 0.5, 100, 1000, 0.001, 1024


@pytest.fixture(scope="module", autouse=True)
def _release_replicas():
    yield
    engine_pool.shutdown()


class AllNaN(torch.nn.Module):
    """A two-class model whose logits are NaN for every input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2), float("nan"), dtype=x.dtype, device=x.device)


class NaNHalfSpace(torch.nn.Module):
    """``inner`` where x0 ≤ 0; NaN logits where x0 > 0."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return torch.where((x[:, 0] > 0).unsqueeze(1), torch.full_like(logits, float("nan")), logits)


class InfOnOneLogit(torch.nn.Module):
    """Class 0 wins where x0 < 0; where x0 ≥ 0 the class-1 logit is +inf (argmax would say 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(x[:, 0])
        one = torch.where(x[:, 0] >= 0, torch.full_like(zero, float("inf")), zero - 1)
        return torch.stack([zero, one], dim=1)


class RaisesFarOut(torch.nn.Module):
    """A linear model that raises on any batch holding a sample with x0 > 50."""

    def __init__(self, features: int):
        super().__init__()
        self.linear = torch.nn.Linear(features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 50).any()):
            raise ValueError("feature 0 out of range")
        return self.linear(x)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def oracle():
    return LinearOracle(dim=5, seed=0)


@pytest.fixture(scope="module")
def half_space_inputs():
    """12 inputs ≥ 6σ inside the clean half-space (no noisy sample reaches x0 > 0 but with
    probability ~1e-6 over all of them) and 12 within σ of its edge (NaN samples are certain)."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(24, 5)).astype(np.float32)
    X[:12, 0] = rng.uniform(-6.0, -3.0, 12)
    X[12:, 0] = rng.uniform(-0.5, 0.5, 12)
    return X


# --- the vote counter ---------------------------------------------------------------------------


def test_nonfinite_logits_vote_for_no_class():
    counter = VoteCounter(ModelRef.from_module(InfOnOneLogit(), torch.zeros(1, 3)), device="cpu")
    x = np.array([[-1.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0]], dtype=np.float32)
    counts = counter.count(x, np.arange(3), phase=Phase.ESTIMATION, n=3000, block_start=0, block_stop=3, sigma=1e-3,
                           seed=0, block_size=1000, batch_size=2048, num_classes=2).sum(axis=1)
    assert counts.shape == (3, 3)
    np.testing.assert_array_equal(counts[:2], [[3000, 0, 0], [0, 0, 3000]])  # slot 2: non-finite
    assert counts[2, 1] == 0 and counts[2, 0] + counts[2, 2] == 3000 and counts[2, 2] > 1000


def test_a_raising_model_becomes_one_model_error():
    counter = VoteCounter(ModelRef.from_module(RaisesFarOut(4), torch.zeros(1, 4)), device="cpu")
    x = np.array([[100.0, 0, 0, 0]], dtype=np.float32)
    with pytest.raises(ModelError) as info:
        counter.count(x, np.arange(1), phase=Phase.ESTIMATION, n=1000, block_start=0, block_stop=1, sigma=0.5, seed=0,
                      block_size=1000, batch_size=2048, num_classes=2)
    assert str(info.value) == "the model raised ValueError on a batch of shape [1000, 4]: feature 0 out of range"
    assert isinstance(info.value, InputError)
    # A plain (eager) exception keeps its own type name and the first line of its message.
    plain = model_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore detail"), torch.Size([8, 3]))
    assert str(plain) == "the model raised RuntimeError on a batch of shape [8, 3]: mat1 and mat2 shapes cannot be multiplied"


# --- the engine -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_all_nan_model_abstains_everywhere(ray_session):
    X = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    y = np.arange(10) % 2
    ref = ModelRef.from_module(AllNaN(), torch.zeros(1, 5))
    cert = certify(ref, X, y, sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, batch_size=BATCH, workers=1)
    assert (cert["prediction"] == -1).all() and (cert["radius"] == 0).all() and not cert["correct"].any()
    assert (cert["nonfinite"] == N0 + N).all()
    assert all(sum(c) == 0 for c in cert["counts"]) and all(sum(c) == 0 for c in cert["selection_counts"])
    pred = predict(ref, X, y, sigma=SIGMA, n=N, alpha=ALPHA, batch_size=BATCH, workers=1)
    assert (pred["prediction"] == -1).all() and (pred["nonfinite"] == N).all()
    assert all(sum(c) == 0 for c in pred["counts"])


@pytest.mark.slow
def test_nan_on_a_half_space_abstains_only_where_it_was_sampled(ray_session, oracle, half_space_inputs):
    X = half_space_inputs
    y = oracle.label(X)
    clean_ref = ModelRef.from_module(oracle.module, torch.zeros(1, 5))
    nan_ref = ModelRef.from_module(NaNHalfSpace(oracle.module), torch.zeros(1, 5))
    args = dict(sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, batch_size=BATCH, workers=1)
    clean = certify(clean_ref, X, y, **args)
    nan = certify(nan_ref, X, y, **args)

    assert (clean["nonfinite"] == 0).all()
    hit = nan["nonfinite"].to_numpy() > 0
    np.testing.assert_array_equal(hit, np.arange(24) >= 12)
    # Every sample is either a vote or non-finite.
    totals = [sum(c) + sum(s) for c, s in zip(nan["counts"], nan["selection_counts"])]
    np.testing.assert_array_equal(np.asarray(totals) + nan["nonfinite"], N0 + N)
    # Untouched inputs keep the clean model's certificates exactly; touched ones abstain,
    # although the clean model certifies most of them.
    pd.testing.assert_frame_equal(nan[~hit].reset_index(drop=True), clean[~hit].reset_index(drop=True))
    assert (nan.loc[hit, "prediction"] == -1).all() and (nan.loc[hit, "radius"] == 0).all()
    assert (clean.loc[hit, "prediction"] != -1).sum() >= 6

    # PREDICT: the same split between touched and untouched inputs.
    p_args = dict(sigma=SIGMA, n=N, alpha=ALPHA, batch_size=BATCH, workers=1)
    p_clean, p_nan = predict(clean_ref, X, y, **p_args), predict(nan_ref, X, y, **p_args)
    p_hit = p_nan["nonfinite"].to_numpy() > 0
    np.testing.assert_array_equal(p_hit, np.arange(24) >= 12)
    pd.testing.assert_frame_equal(p_nan[~p_hit].reset_index(drop=True), p_clean[~p_hit].reset_index(drop=True))
    assert (p_nan.loc[p_hit, "prediction"] == -1).all()
    np.testing.assert_array_equal(p_nan["counts"].map(sum) + p_nan["nonfinite"], N)


@pytest.mark.slow
def test_nonfinite_counts_are_bit_identical_across_workers_and_under_sample_reuse(ray_session, oracle,
                                                                                  half_space_inputs):
    X = half_space_inputs
    nan_ref = ModelRef.from_module(NaNHalfSpace(oracle.module), torch.zeros(1, 5))
    args = dict(sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, batch_size=BATCH, noise_block=250)
    one = certify(nan_ref, X, workers=1, **args)
    two = certify(nan_ref, X, workers=2, **args)
    pd.testing.assert_frame_equal(one, two)

    # A sweep derives N = 500 from the first blocks of the N = 1000 counts: non-finite samples too.
    job = SmoothingJob(nan_ref, X, config=SmoothingConfig(CERTIFY, **args), workers=2)
    small = SmoothingConfig(CERTIFY, SIGMA, 500, ALPHA, N0, batch_size=BATCH, noise_block=250)
    derived = pd.concat([job.table(job.plan.chunk_rows(chunk), prefix_counts(counts, 500, 250), small).to_pandas()
                         for chunk, counts in job.block_counts()])
    direct = certify(nan_ref, X, workers=2, **{**args, "n": 500})
    pd.testing.assert_frame_equal(derived.sort_values("input_id").reset_index(drop=True), direct)
    assert (direct["nonfinite"] < one["nonfinite"]).any() and (direct["nonfinite"] <= one["nonfinite"]).all()


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_all_nan_model_abstains_and_warns(ray_session, tmp_path, capsys):
    path = tmp_path / "nan.pt"
    torch.jit.save(torch.jit.script(AllNaN()), str(path))
    code, out, err = run_cli(["certify", "--dataset", "insurance", "--model", str(path), "--sigma", "0.5",
                              "--n", "1000", "--n0", "100", "--limit", "30", "--out", str(tmp_path),
                              "--run-id", "nan", "--quiet"], capsys)
    assert code == 0, err
    df = pq.read_table(tmp_path / "nan" / "certificates.parquet").to_pandas()
    assert len(df) == 30 and (df["prediction"] == -1).all() and (df["radius"] == 0).all()
    assert (df["nonfinite"] == 1100).all()
    flat = " ".join(out.split())
    assert "warning: the model gave NaN or inf logits on noisy samples of 30 input(s)" in flat


@pytest.mark.slow
def test_a_model_that_raises_stops_the_run_with_one_line_and_keeps_finished_chunks(ray_session, tmp_path,
                                                                                   monkeypatch, capsys):
    from rpdist.distributed import plan as engine_plan

    # 120 inputs, 20 per chunk (4 per unit, 10 units per chunk): the last chunk's inputs sit at
    # x0 = 100, where the model raises; noise at σ = 0.5 never takes the others near x0 = 50.
    monkeypatch.setattr(engine_plan, "CHUNK_SAMPLES", 20 * 1100)
    X = np.zeros((120, 4), dtype=np.float32)
    X[100:, 0] = 100.0
    data = tmp_path / "data.npz"
    np.savez(data, X=X, y=np.zeros(120, dtype=np.int64))
    model = tmp_path / "raises.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(RaisesFarOut(4)), str(model))

    code, out, err = run_cli(["certify", "--dataset", str(data), "--split", "all", "--model", str(model),
                              "--sigma", "0.5", "--n", "1000", "--n0", "100", "--batch-size", "512",
                              "--workers", "1", "--out", str(tmp_path), "--run-id", "boom", "--quiet"], capsys)
    assert code == 2
    assert re.fullmatch(r"rpdist: error: the model raised ValueError on a batch of shape \[\d+, 4\]: "
                        r"feature 0 out of range\n", err), err
    run = tmp_path / "boom"
    parts = sorted(p.name for p in (run / "parts").glob("chunk-*.parquet"))
    assert "chunk-000000.parquet" in parts and "chunk-000005.parquet" not in parts
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    assert not (run / "certificates.parquet").exists()

    # The Python API raises the same error.
    with pytest.raises(rpdist.ModelError, match=r"^the model raised ValueError on a batch of shape \[\d+, 4\]: "
                                                r"feature 0 out of range$"):
        rpdist.certify(str(model), X[95:105], sigma=0.5, n0=100, n=1000, batch_size=512, workers=1)


@pytest.mark.slow
def test_the_console_prints_only_the_error_line_for_a_raising_model(tmp_path):
    """In a process of its own (so Ray's own logging reaches stderr): one line, exit 2, no Ray
    report of the other failed units left in flight."""
    import subprocess
    import sys
    from pathlib import Path

    X = np.zeros((120, 4), dtype=np.float32)
    X[60:, 0] = 100.0  # most units fail, several at once on two replicas
    np.savez(tmp_path / "data.npz", X=X, y=np.zeros(120, dtype=np.int64))
    torch.jit.save(torch.jit.script(RaisesFarOut(4)), str(tmp_path / "raises.pt"))
    exe = Path(sys.executable).with_name("rpdist")
    done = subprocess.run([str(exe), "certify", "--dataset", str(tmp_path / "data.npz"), "--split", "all", "--model",
                           str(tmp_path / "raises.pt"), "--sigma", "0.5", "--n", "1000", "--workers", "2",
                           "--out", str(tmp_path), "--run-id", "boom", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(r"rpdist: error: the model raised ValueError on a batch of shape \[\d+, 4\]: "
                        r"feature 0 out of range\n", done.stderr), done.stderr
