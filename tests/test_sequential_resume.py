"""Resuming a sequential certify run: finished chunks are kept, skipped and never written twice.

The run is interrupted the way plain runs' resume tests do it: an ``on_unit`` callback raises once
some chunk files exist. Chunks are made small (8 inputs) by patching the chunk size, so a 40-input
run has 5 of them; the reference run keeps the default size (one chunk), so the check also covers
"chunked equals whole".
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


def test_interrupted_sequential_run_resumes_to_the_uninterrupted_table(ray_session, tmp_path, monkeypatch):
    from rpdist.pipelines.run import execute
    from rpdist.smoothing.seqjob import SequentialRun

    whole = execute(_spec(tmp_path, "whole"), progress=False)  # default chunk size: one chunk of 40
    assert whole.manifest["details"]["plan"]["chunks"] == 1
    reference = pq.read_table(tmp_path / "whole" / "sequential-certificates.parquet")

    monkeypatch.setattr(SequentialRun, "chunk_inputs", lambda self: CHUNK)
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
    assert spent["used"] == full["used"] == spent["forward_samples"] and spent["waste"] == 0
    assert spent["naive_at_max_n"] == ROWS * (50 + 2000)
    assert spent["saved_factor"] == pytest.approx(full["saved_factor"])
    assert sum(r["inputs"] for r in resumed.manifest["details"]["rounds"]) == sum(
        r["inputs"] for r in whole.manifest["details"]["rounds"])  # each input's looks counted once

    again = execute(_spec(tmp_path, "r"), progress=False)  # a finished run is returned as it is
    assert again.manifest == resumed.manifest
