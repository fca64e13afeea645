"""Resuming a sequential certify run: finished chunks are kept, skipped and never written twice.

The run is interrupted the way plain runs' resume tests do it: an ``on_unit`` callback raises once
some chunk files exist. Chunks are made small (8 inputs) by patching the chunk size, so a 40-input
run has 5 of them. Chunks against one group of rounds for every input are checked on a model whose
counts cannot depend on how rows are packed into forward batches (a Linear layer's matmul may round
a row differently in another batch; a resumed run repeats the uninterrupted run's packing exactly).
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rpdist.errors import InputError

ROWS, CHUNK = 40, 8


def _spec(tmp_path, run_id: str, radius: float = 0.125):
    from rpdist.pipelines.run import RunSpec
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig
    from rpdist.smoothing.seqjob import SEQUENTIAL_BLOCK, SequentialConfig

    config = SmoothingConfig(CERTIFY, sigma=0.5, n=2000, alpha=0.01, n0=50, batch_size=512,
                             noise_block=SEQUENTIAL_BLOCK)
    sequential = SequentialConfig.build(max_n=2000, target_radius=(radius,))
    return RunSpec(config=config, dataset="insurance", limit=ROWS, workers=1, out=str(tmp_path), run_id=run_id,
                   sequential=sequential)


@pytest.mark.slow
def test_interrupted_sequential_run_resumes_to_the_uninterrupted_table(ray_session, tmp_path, monkeypatch):
    from rpdist.pipelines.run import execute
    from rpdist.smoothing.seqjob import SequentialRun

    monkeypatch.setattr(SequentialRun, "chunk_inputs", lambda self: CHUNK)
    whole = execute(_spec(tmp_path, "whole"), progress=False)  # uninterrupted, from scratch
    reference = pq.read_table(tmp_path / "whole" / "sequential-certificates.parquet")
    parts = tmp_path / "r" / "parts"

    def interrupt(unit, samples):
        if len(list(parts.glob("chunk-*.parquet"))) >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(_spec(tmp_path, "r"), progress=False, on_unit=interrupt)
    written = sorted(p.name for p in parts.glob("chunk-*.parquet"))
    assert 2 <= len(written) < 5  # two chunks run at once: which finished first may vary
    assert not (tmp_path / "r" / "sequential-certificates.parquet").exists()
    first = json.loads((tmp_path / "r" / "manifest.json").read_text())["details"]["samples"]

    with pytest.raises(InputError, match=r"it was started with sequential\.target_radius \[0\.125\], now \[0\.25\]; "
                                         r"choose another --run-id"):
        execute(_spec(tmp_path, "r", radius=0.25), progress=False)
    assert sorted(p.name for p in parts.glob("chunk-*.parquet")) == written  # nothing computed for the refused run

    resumed = execute(_spec(tmp_path, "r"), progress=False)
    table = pq.read_table(tmp_path / "r" / "sequential-certificates.parquet")
    assert table.equals(reference)  # bit-identical: every count, bound and decision
    ids = table.column("input_id").to_pylist()
    assert len(ids) == ROWS and len(set(ids)) == ROWS
    assert not parts.exists()

    full, spent = whole.manifest["details"]["samples"], resumed.manifest["details"]["samples"]
    assert resumed.resumed_chunks == len(written) and resumed.manifest["details"]["plan"] == {"chunk_inputs": CHUNK, "chunks": 5}
    this_session = resumed.manifest["timings"]["samples_this_session"]
    assert 0 < this_session < full["forward_samples"]  # the finished chunks were not computed again
    # Over both sessions: each chunk counted once, when it was computed to its end.
    assert spent["forward_samples"] == first["forward_samples"] + this_session == full["forward_samples"]
    assert spent["used"] == full["used"] and spent["waste"] == full["waste"] >= 0
    assert spent["forward_samples"] == spent["used"] + spent["waste"]
    assert spent["naive_at_max_n"] == ROWS * (50 + 2000)
    assert spent["saved_factor"] == pytest.approx(full["saved_factor"])
    assert sum(r["inputs"] for r in resumed.manifest["details"]["rounds"]) == sum(
        r["inputs"] for r in whole.manifest["details"]["rounds"])  # each input's looks counted once

    again = execute(_spec(tmp_path, "r"), progress=False)  # a finished run is returned as it is
    assert again.manifest == resumed.manifest


@pytest.fixture(scope="module")
def centre_run(ray_session):
    """SequentialRuns on NearestCentre (its logits never depend on the other rows of a batch, so any
    packing gives the same counts) for 24 inputs whose coordinate 0 is ``x0`` (the boundary is 0.5)."""
    import numpy as np
    import torch

    from rpdist.models.refs import ModelRef
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig, SmoothingJob
    from rpdist.smoothing.seqjob import SEQUENTIAL_BLOCK, SequentialConfig, SequentialRun
    from tests.oracle import NearestCentre

    config = SmoothingConfig(CERTIFY, sigma=0.25, n=500, alpha=0.01, n0=32, batch_size=256,
                             noise_block=SEQUENTIAL_BLOCK)
    model = ModelRef.from_module(NearestCentre((0.0, 1.0)), torch.zeros(1, 4))
    jobs = {}

    def make(x0):
        if x0 not in jobs:
            X = np.zeros((24, 4), dtype=np.float32)
            X[:, 0] = np.linspace(*x0, 24)
            jobs[x0] = SmoothingJob(model, X, config=config, workers=1)
        return SequentialRun(jobs[x0], SequentialConfig.build(max_n=500, target_radius=(0.05,)))

    return make


SPREAD = (-0.05, 1.2)  # easy and hard inputs: some stop at the first look, some run to max N
HARD = (0.49, 0.51)  # p_A ≤ Φ(0.04) < Φ(0.05 / 0.25): none certifies, most run to max N


@pytest.mark.slow
def test_chunks_are_the_whole_runs_rows_and_skip_what_is_done(centre_run):
    import pyarrow as pa

    whole = centre_run(SPREAD).run()
    run = centre_run(SPREAD)
    parts = sorted(run.chunks(5, skip={1, 3}), key=lambda part: part[0])
    assert [chunk for chunk, _, _ in parts] == [0, 2, 4]
    for chunk, table, spent in parts:
        rows = whole.slice(chunk * 5, 5 if chunk < 4 else 4)
        assert table.equals(rows)
        used = pa.compute.sum(table["samples_used"]).as_py() + len(table) * 32
        assert spent["forward_samples"] >= used  # blocks past a stop within a round are waste
    assert run.forward_samples == sum(spent["forward_samples"] for _, _, spent in parts)


@pytest.mark.slow
def test_rounds_over_several_looks_give_the_rows_of_one_round_per_look(centre_run, monkeypatch):
    """A round that spans several looks decides each input at the same look, on the same blocks, as
    one round per look; the blocks it drew past an input's stop are counted as forward samples only."""
    from rpdist.smoothing import seqjob

    monkeypatch.setattr(seqjob, "ROUND_MIN_BATCHES", 0)  # every round ends at the next look
    per_look = centre_run(SPREAD)
    reference = per_look.run()
    used = sum(reference["samples_used"].to_pylist()) + 24 * 32
    assert per_look.forward_samples == used  # nothing drawn past a stop
    monkeypatch.setattr(seqjob, "ROUND_MIN_BATCHES", 16)  # 16 batches of 256: ~170 samples per input a round
    wide = centre_run(SPREAD)
    table = wide.run()
    assert table.equals(reference)  # bit-identical: counts, bounds, decisions, stop blocks
    decided = [(r["look"], r["inputs"], r["stopped"]) for r in wide.rounds]
    assert decided == [(r["look"], r["inputs"], r["stopped"]) for r in per_look.rounds]
    engine = [r for r in wide.rounds if r["samples"]]
    assert len(engine) < len(per_look.rounds) / 2  # fewer rounds ...
    assert wide.forward_samples > used  # ... at the cost of blocks past some inputs' stops
    assert wide.forward_samples == 24 * 32 + sum(r["samples"] for r in engine)


@pytest.mark.slow
def test_a_failing_chunk_stops_the_chunk_running_beside_it(centre_run):
    """An exception in one chunk's thread (here an interrupt from on_unit) ends the run: the chunk
    beside it stops at its next unit, and no chunk thread is left behind."""
    import threading

    units = []

    def interrupt(unit, samples):
        units.append(unit)
        if len(units) == 3:
            raise KeyboardInterrupt

    every = []  # two chunks of 12, about 16 rounds of one unit each
    list(centre_run(HARD).chunks(12, on_unit=lambda unit, samples: every.append(unit)))
    with pytest.raises(KeyboardInterrupt):
        list(centre_run(HARD).chunks(12, on_unit=interrupt))
    assert not [t for t in threading.enumerate() if t.name.startswith("rpdist-chunk")]
    # Had the other chunk gone on, it would have added all of its ~16 units.
    assert len(units) < 3 + len(every) / 4, (len(units), len(every))
