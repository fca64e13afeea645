"""``rpdist certify`` and ``rpdist predict``: run on a dataset, write Parquet, print a summary."""

from __future__ import annotations

from typing import List, Optional

import typer
from rpdist.cli.options import ADDRESS, BATCH, DEVICE, QUIET, RUN_ID, WORKERS
from rpdist.cli.printing import print_outcome
from rpdist.smoothing.job import CERTIFY, PREDICT
from rpdist.privacy.per_input import DEFAULT_ADVANTAGE, DEFAULT_QUERIES, DEFAULT_RELEASE
from rpdist.smoothing.noise import DEFAULT_BLOCK
from rpdist.smoothing import sequential as seq
from rpdist.smoothing.seqjob import SEQUENTIAL_BLOCK

DATASET = typer.Option(..., "--dataset", "-d", help="Built-in name (see `rpdist datasets`) or a .csv/.parquet/.npz file.")
MODEL = typer.Option(None, "--model", "-m", help="TorchScript file, or a state dict with --arch. Default: the dataset's built-in model.")
ARCH = typer.Option(None, "--arch", help="Architecture of a state-dict --model (mlp, cnn, linear); loaded with weights_only=True.")
TRAIN_SIGMA = typer.Option(None, "--train-sigma", help="Noise level for training the built-in model. Default: --sigma.")
SIGMA = typer.Option(..., "--sigma", "-s", help="Smoothing noise level σ (in the model's input units).")
N = typer.Option(None, "--n", help="Monte Carlo samples for estimation (CERTIFY) or for the test (PREDICT). Default 100000.")
N0 = typer.Option(100, "--n0", help="Selection samples (CERTIFY only); never reused for estimation.")
ALPHA = typer.Option(0.001, "--alpha", help="Failure probability of each certificate.")
SEED = typer.Option(0, "--seed", help="Seed of the counter-based noise streams.")
SPLIT = typer.Option("test", "--split", help="train, test or all.")
LIMIT = typer.Option(None, "--limit", help="Only the first LIMIT inputs of the split.")
LABEL = typer.Option("label", "--label-column", help="Label column of a .csv/.parquet dataset.")
OUT = typer.Option("results", "--out", "-o", help="Output root: a directory or a pyarrow URI (s3://bucket/x); the run writes OUT/RUN_ID/.")
NOISE_BLOCK = typer.Option(None, "--noise-block", help=f"Samples per counter-based noise block. Default {DEFAULT_BLOCK}; "
                           f"{SEQUENTIAL_BLOCK} for sequential runs.")
TARGET = typer.Option(None, "--target-radius", help="Decide each input sequentially: certified at this ℓ2 radius or "
                      "not (repeatable; one α for all).")
MAX_N = typer.Option(None, "--max-n", help="Sequential runs: most estimation samples per input. Default --n, or 100000.")
MODE = typer.Option(None, "--mode", help="sequential (default with --target-radius), adaptive (with "
                    "--radius-tolerance) or staged (Bonferroni baseline).")
TOLERANCE = typer.Option(None, "--radius-tolerance", help="Adaptive mode: stop once the radius is known to within this.")
AGAINST_LABEL = typer.Option(False, "--against-label", help="Sequential runs: test the true label's probability, "
                             "without selection samples (certified accuracy only).")
LOOK_GROWTH = typer.Option(None, "--look-growth", help=f"Sequential runs: looks grow by this factor (default "
                           f"{seq.LOOK_GROWTH}; larger: fewer engine rounds, a little more samples).")
RELEASE = typer.Option(DEFAULT_RELEASE, "--release", help="The release you deploy (predict, majority or certify), "
                                                          "at this N and α: its per-input privacy columns.")
ADVANTAGE = typer.Option(list(DEFAULT_ADVANTAGE), "--advantage", help="τ: report the largest distance at which "
                                                                      "the release's advantage bound is ≤ τ "
                                                                      "(repeatable).")
QUERIES = typer.Option(list(DEFAULT_QUERIES), "--queries", help="k: the same columns for k queries with fresh "
                                                                "noise (repeatable).")


def register(app: typer.Typer) -> None:
    @app.command(CERTIFY)
    def certify_cmd(dataset: str = DATASET, model: Optional[str] = MODEL, arch: Optional[str] = ARCH,
                    train_sigma: Optional[float] = TRAIN_SIGMA, sigma: float = SIGMA, n: int = N, n0: int = N0,
                    alpha: float = ALPHA, seed: int = SEED, batch_size: Optional[int] = BATCH,
                    workers: Optional[int] = WORKERS, address: Optional[str] = ADDRESS, split: str = SPLIT,
                    limit: Optional[int] = LIMIT, label_column: str = LABEL, out: str = OUT,
                    run_id: Optional[str] = RUN_ID, noise_block: Optional[int] = NOISE_BLOCK,
                    device: Optional[str] = DEVICE, release: str = RELEASE, advantage: List[float] = ADVANTAGE,
                    queries: List[int] = QUERIES, quiet: bool = QUIET,
                    target_radius: Optional[List[float]] = TARGET, max_n: Optional[int] = MAX_N,
                    mode: Optional[str] = MODE, radius_tolerance: Optional[float] = TOLERANCE,
                    against_label: bool = AGAINST_LABEL, look_growth: Optional[float] = LOOK_GROWTH) -> None:
        """CERTIFY each input: smoothed prediction and certified ℓ2 radius (Cohen et al.); with --target-radius
        or --mode, sequentially, with as few samples per input as its decision needs."""
        _run(CERTIFY, locals())

    @app.command(PREDICT)
    def predict_cmd(dataset: str = DATASET, model: Optional[str] = MODEL, arch: Optional[str] = ARCH,
                    train_sigma: Optional[float] = TRAIN_SIGMA, sigma: float = SIGMA, n: int = N,
                    alpha: float = ALPHA, seed: int = SEED, batch_size: Optional[int] = BATCH,
                    workers: Optional[int] = WORKERS, address: Optional[str] = ADDRESS, split: str = SPLIT,
                    limit: Optional[int] = LIMIT, label_column: str = LABEL, out: str = OUT,
                    run_id: Optional[str] = RUN_ID, noise_block: Optional[int] = NOISE_BLOCK,
                    device: Optional[str] = DEVICE, quiet: bool = QUIET) -> None:
        """PREDICT each input: the smoothed label, or -1 (abstain) when the vote is not significant."""
        _run(PREDICT, locals())


# What rpdist.pipelines.run.run_spec takes from a command's options (predict has no n0 or sequential ones).
SPEC_OPTIONS = ("sigma", "n", "alpha", "n0", "seed", "batch_size", "noise_block", "target_radius", "max_n", "mode",
                "radius_tolerance", "against_label", "look_growth", "dataset", "split", "label_column", "limit", "model", "arch",
                "train_sigma", "workers", "address", "device", "run_id")


def _run(analysis: str, options: dict) -> None:
    from rpdist.pipelines.run import execute, run_spec

    o = options
    privacy = ({"release": o["release"], "advantage": tuple(o["advantage"]), "queries": tuple(o["queries"])}
               if analysis == CERTIFY else {})
    spec = run_spec(analysis, privacy=privacy, out=str(o["out"]), **{k: o[k] for k in SPEC_OPTIONS if k in o})
    print_outcome(execute(spec, progress=not o["quiet"]))
