"""``rpdist sweep SWEEP.yaml...``: resumable (σ, N, α, seed) grids, each written to one partitioned dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rpdist.cli.options import ADDRESS, DEVICE, QUIET, TARGETS_AT_ONCE, WORKERS
from rpdist.cli.printing import print_outcome


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep_cmd(
        sweep_files: list[Path] = typer.Argument(..., help="YAML files: dataset, model, analysis and lists of sigma, n, alpha, seed; run in the order given, all validated first."),
        out: str = typer.Option("results", "--out", "-o", help="Output root: a directory or a pyarrow URI (s3://bucket/x); the sweep writes OUT/SWEEP_ID/."),
        sweep_id: Optional[str] = typer.Option(None, "--sweep-id", help="Default: each YAML file's name, so rerunning resumes (one file only)."),
        workers: Optional[int] = WORKERS,
        address: Optional[str] = ADDRESS,
        device: Optional[str] = DEVICE,
        targets_at_once: Optional[int] = TARGETS_AT_ONCE,
        quiet: bool = QUIET,
    ) -> None:
        """Run sweeps; one run at the largest N per (σ, seed) serves every N and α of a grid."""
        from rpdist.pipelines.sweep import check_targets_at_once, load_sweeps, run_sweep

        sweeps = load_sweeps(sweep_files, sweep_id)
        for spec, _ in sweeps:
            check_targets_at_once(spec, targets_at_once)
        for spec, name in sweeps:
            outcome = run_sweep(spec, out=out, sweep_id=name, workers=workers, address=address, device=device,
                                progress=not quiet, targets_at_once=targets_at_once)
            print_outcome(outcome, title=f"{spec.analysis} sweep: {outcome.path.rsplit('/', 1)[-1]}")
