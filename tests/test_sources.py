"""Streamed Parquet inputs: the same rows as an in-memory load, read chunk by chunk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rpdist.datasets import sources
from rpdist.datasets.catalog import load_dataset
from rpdist.errors import InputError


def _write(path, rows=200, nan_row=None, row_group_size=17):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 4))
    if nan_row is not None:
        X[nan_row, 2] = np.nan
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "d": X[:, 3],
                             "label": rng.integers(0, 3, size=rows)}), path, row_group_size=row_group_size)
    return X


@pytest.mark.parametrize("split", ["all", "train", "test"])
def test_streamed_rows_equal_the_in_memory_load(tmp_path, monkeypatch, split):
    monkeypatch.setattr(sources, "READ_BATCH", 11)  # many batches per chunk and chunks across batches
    path = tmp_path / "x.parquet"
    _write(path)
    eager = load_dataset(path, split=split)
    lazy = load_dataset(path, split=split, stream=True)
    assert isinstance(lazy.X, sources.ParquetRows) and lazy.X.shape == eager.X.shape
    np.testing.assert_array_equal(lazy.input_ids, eager.input_ids)
    np.testing.assert_array_equal(lazy.y, eager.y)
    assert lazy.sha256 == eager.sha256 and lazy.feature_names == eager.feature_names
    pieces = [lazy.X[i : i + 7] for i in range(0, len(lazy), 7)]
    np.testing.assert_array_equal(np.concatenate(pieces), eager.X)
    np.testing.assert_array_equal(lazy.X[3:9], eager.X[3:9])  # going back restarts the reader


def test_streamed_scan_refuses_non_finite_values_and_text(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_BATCH", 16)
    path = tmp_path / "nan.parquet"
    _write(path, nan_row=150)
    with pytest.raises(InputError, match="row 150 .*column 'c'"):
        load_dataset(path, split="all", stream=True)
    text = tmp_path / "text.parquet"
    pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"], "label": [0, 1]}).to_parquet(text)
    with pytest.raises(InputError, match="not numeric: 'b'"):
        load_dataset(text, split="all", stream=True)


@pytest.mark.slow
def test_certify_on_a_streamed_file_equals_in_memory(ray_session, tmp_path, monkeypatch):
    import torch

    import rpdist
    from rpdist.distributed import plan as engine_plan
    from rpdist.pipelines import run as runs
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig

    monkeypatch.setattr(engine_plan, "CHUNK_SAMPLES", 30 * 600)  # 30 inputs per chunk → several chunks
    monkeypatch.setattr(sources, "READ_BATCH", 13)
    path = tmp_path / "x.parquet"
    X = _write(path, rows=90)
    model = tmp_path / "m.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), model)
    config = SmoothingConfig(CERTIFY, sigma=0.5, n=500, alpha=0.01, n0=100, batch_size=1024)
    outcome = runs.execute(runs.RunSpec(config=config, dataset=str(path), split="all", model=str(model),
                                        out=str(tmp_path), run_id="s"), progress=False)
    assert outcome.manifest["details"]["plan"]["chunks"] >= 3
    direct = rpdist.certify(str(model), X.astype(np.float32), sigma=0.5, n0=100, n=500, alpha=0.01,
                            batch_size=1024)
    streamed = outcome.table()
    np.testing.assert_array_equal(np.stack(streamed["counts"]), np.stack(direct["counts"]))
    np.testing.assert_array_equal(streamed["radius"], direct["radius"])
