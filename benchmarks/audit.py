"""Batch-audit benchmark: certify many tabular inputs at N = 1,000 through the CLI's run path.

It builds a Parquet file of ``--inputs`` insurance-like rows (test rows resampled with a little
jitter, in the model's standardised units), exports the built-in insurance MLP as TorchScript, and
runs ``rpdist.pipelines.run.execute`` exactly as ``rpdist certify --dataset FILE --model FILE`` would.

Printed figures:
- throughput in samples/s and inputs/s (absolute, so quote it with the machine's load in mind);
- the driver's peak resident memory (``ru_maxrss``) against its memory after start-up, so the
  cost of the audit itself shows apart from torch and Ray's import footprint.

Usage: ``python benchmarks/audit.py [--inputs 100000] [--n 1000] [--out /tmp/rpdist-audit]``
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_inputs(path: Path, count: int, seed: int = 0) -> None:
    from rpdist.datasets.catalog import load_dataset

    test = load_dataset("insurance", split="test")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(test), size=count)
    rows = test.X[picks] + rng.normal(scale=0.05, size=(count, test.X.shape[1])).astype(np.float32)
    labels = test.y[picks]
    columns = {name: rows[:, j] for j, name in enumerate(test.feature_names)}
    pq.write_table(pa.table({**columns, "label": labels}), path, row_group_size=8192)


def export_model(path: Path, sigma: float) -> None:
    import torch

    from rpdist.models.zoo import default_model

    module = default_model("insurance", train_sigma=sigma).load()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    path.write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rpdist-audit")
    args = parser.parse_args()

    from rpdist.distributed.pool import ensure_ray
    from rpdist.pipelines.run import RunSpec, execute
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig

    args.out.mkdir(parents=True, exist_ok=True)
    data_path, model_path = args.out / "audit-inputs.parquet", args.out / "insurance-mlp.pt"
    build_inputs(data_path, args.inputs)
    export_model(model_path, args.sigma)
    ensure_ray(None)
    baseline = peak_rss_mib()

    config = SmoothingConfig(CERTIFY, args.sigma, args.n, 0.001, 100)
    run_id = f"audit-{args.inputs}-{int(time.time())}"
    spec = RunSpec(config=config, dataset=str(data_path), split="all", model=str(model_path), out=str(args.out),
                   run_id=run_id)
    started = time.perf_counter()
    outcome = execute(spec, progress=True)
    seconds = time.perf_counter() - started
    samples = args.inputs * (args.n + 100)
    print(f"inputs: {args.inputs:,}  N: {args.n:,}  workers: {outcome.manifest['device']['workers']}  "
          f"chunks: {outcome.manifest['details']['plan']['chunks']}")
    print(f"throughput: {samples / seconds:,.0f} samples/s, {args.inputs / seconds:,.0f} inputs/s")
    print(f"driver peak RSS: {peak_rss_mib():,.0f} MiB (after imports and Ray start: {baseline:,.0f} MiB; "
          f"the inputs alone are {args.inputs * 11 * 4 / 2**20:.1f} MiB)")
    print(f"certified accuracy @0: {outcome.summary[0]['certified_accuracy']['0']:.3f}  "
          f"abstain: {outcome.summary[0]['abstain_rate']:.3f}  results: {outcome.path}")


if __name__ == "__main__":
    main()
