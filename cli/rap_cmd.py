"""``rpdist rap``: compatible intervals of a sensitive attribute, base model against smoothed."""

from __future__ import annotations

from typing import List, Optional

import typer

from rpdist.analyses.rap import RapAnalysis
from rpdist.cli.options import ADDRESS, BATCH, DEVICE, QUIET, RUN_ID, WORKERS
from rpdist.cli.printing import print_outcome
from rpdist.privacy.rap import DEFAULT_GRID_BATCH, NEUTRAL
from rpdist.privacy.runner import DEFAULT_L1
from rpdist.privacy.staged import DEFAULT_PILOT


def register(app: typer.Typer) -> None:
    @app.command(RapAnalysis.name)
    def rap_cmd(
        dataset: str = typer.Option("insurance", "--dataset", "-d", help="Built-in dataset with a default model."),
        attribute: str = typer.Option("bmi", "--attribute", help="Sensitive numeric column to sweep."),
        sigma: float = typer.Option(..., "--sigma", "-s", help="Smoothing noise σ (standardised units)."),
        n: int = typer.Option(1000, "--n", help="Monte Carlo samples per PREDICT and CERTIFY."),
        n0: int = typer.Option(100, "--n0", help="CERTIFY selection samples (drawn, but the certificate is for the "
                                                 "label PREDICT released at the true value)."),
        alpha: float = typer.Option(0.001, "--alpha", help="Failure probability of each decision."),
        grid_step: float = typer.Option(0.1, "--grid-step", help="Grid step in raw units of the attribute."),
        l1_non_sensitive: List[float] = typer.Option([DEFAULT_L1], "--l1-non-sensitive",
                                                     help="λ of the ℓ1 penalty on non-sensitive first-layer weights "
                                                          "(repeat for several models); the unpenalised model is "
                                                          "always reported too (0: only it)."),
        train_sigma: Optional[float] = typer.Option(None, "--train-sigma", help="Training noise. Default: --sigma."),
        seed: int = typer.Option(0, "--seed", help="Seed of the noise streams and of training."),
        split: str = typer.Option("test", "--split", help="train, test or all."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Only the first LIMIT inputs of the split."),
        batch_size: Optional[int] = BATCH,
        workers: Optional[int] = WORKERS,
        address: Optional[str] = ADDRESS,
        device: Optional[str] = DEVICE,
        grid_batch: int = typer.Option(DEFAULT_GRID_BATCH, "--grid-batch",
                                       help="Grid points per engine call; larger grids stream."),
        abstain_rule: str = typer.Option(NEUTRAL, "--abstain-rule",
                                         help="neutral: a grid point where PREDICT abstains rules no label out; "
                                              "distinct: abstain is one more label (smaller compatible sets)."),
        posterior_level: float = typer.Option(0.9, "--posterior-level",
                                              help="Credible level of the adversary posterior's highest-density "
                                                   "length, in (0, 1)."),
        pilot: int = typer.Option(DEFAULT_PILOT, "--pilot",
                                  help="Samples of the first pilot stage (then 10×, … below N) that settles grid "
                                       "cells far from the boundary before they would get N; 0: N everywhere."),
        out: str = typer.Option("results", "--out", "-o", help="Output root (a directory or a pyarrow URI such as s3://bucket/x); writes OUT/RUN_ID/rap.parquet."),
        run_id: Optional[str] = RUN_ID,
        quiet: bool = QUIET,
    ) -> None:
        """Sweep a sensitive attribute: compatible sets, certified segments, adversary error and utility."""
        from rpdist.privacy.runner import RapSpec, run_rap

        spec = RapSpec(dataset=dataset, attribute=attribute, sigma=sigma, n=n, n0=n0, alpha=alpha,
                       grid_step=grid_step, l1_non_sensitive=list(l1_non_sensitive), train_sigma=train_sigma, seed=seed,
                       split=split, limit=limit, batch_size=batch_size, workers=workers, address=address,
                       device=device, grid_batch=grid_batch, abstain_rule=abstain_rule, out=str(out), run_id=run_id,
                       posterior_level=posterior_level, pilot=pilot)
        print_outcome(run_rap(spec, progress=not quiet), title=f"RAP of {attribute!r}")
