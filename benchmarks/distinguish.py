"""Distinguishing-audit benchmark: what the audit costs beyond the releases it draws.

Side by side in one run, on the same machine state and the same engine inputs:
- plain PREDICT (``rpdist.predict``) on every release point of the audit (x and its partners,
  each repeated once per trial), i.e. exactly the releases the audit draws;
- the audit itself (``run_audit``, PREDICT release only), which also certifies each input,
  finds the partner directions, writes per-trial Parquet and scores the distinguishers.

Printed: releases/s of both and their ratio (audit ÷ plain PREDICT; 1.0 = free bookkeeping).
Absolute rates depend on the machine and its load; the ratio is the figure to quote.

Usage: ``python benchmarks/distinguish.py [--dataset insurance] [--n 1000] [--trials 1000] [--limit 5]``
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="insurance")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=5)
    args = parser.parse_args()

    import rpdist
    from rpdist.datasets.catalog import load_dataset
    from rpdist.models.zoo import default_model
    from rpdist.privacy.audit import audit_spec, directions, release_rows, run_audit

    with tempfile.TemporaryDirectory() as out:
        spec = audit_spec(dataset=args.dataset, sigma=args.sigma, n=(args.n,), trials=args.trials,
                          limit=args.limit, out=out, run_id="bench")
        data = load_dataset(args.dataset, split="test", limit=args.limit)
        ref = default_model(args.dataset, train_sigma=args.sigma)
        certificate = rpdist.certify(ref, data.X, data.y, sigma=args.sigma, n=args.n,
                                     input_ids=data.input_ids).set_index("input_id")
        unit = directions(ref.load("cpu"), data.X, certificate["top_class"].to_numpy(), spec.direction, 0,
                          args.sigma)
        _, X, keys = release_rows(spec, data.X, data.input_ids, certificate, unit, args.n)
        rpdist.predict(ref, X[:64], sigma=args.sigma, n=args.n)  # warm the pool and the model
        clock = time.perf_counter()
        rpdist.predict(ref, X, sigma=args.sigma, n=args.n, input_ids=keys)
        plain = len(keys) / (time.perf_counter() - clock)
        clock = time.perf_counter()
        run_audit(spec)
        audit = len(keys) / (time.perf_counter() - clock)
    print(f"{args.dataset}, N = {args.n}, {args.trials} trials, {args.limit} inputs, {len(keys):,} releases")
    print(f"plain PREDICT on the release points: {plain:,.0f} releases/s")
    print(f"rpdist audit distinguish (all of it):  {audit:,.0f} releases/s")
    print(f"audit ÷ plain PREDICT: {audit / plain:.2f}")
    np.testing.assert_array_equal(len(np.unique(keys)), len(keys))


if __name__ == "__main__":
    main()
