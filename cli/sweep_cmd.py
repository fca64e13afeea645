"""``rpdist sweep SWEEP.yaml``: a resumable (σ, N, α, seed) grid written to one partitioned dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rpdist.cli.options import ADDRESS, DEVICE, QUIET, WORKERS
from rpdist.cli.printing import print_outcome


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep_cmd(
        sweep_file: Path = typer.Argument(..., help="YAML file: dataset, model, analysis and lists of sigma, n, alpha, seed."),
        out: str = typer.Option("results", "--out", "-o", help="Output root: a directory or a pyarrow URI (s3://bucket/x); the sweep writes OUT/SWEEP_ID/."),
        sweep_id: Optional[str] = typer.Option(None, "--sweep-id", help="Default: the YAML file's name, so rerunning resumes."),
        workers: Optional[int] = WORKERS,
        address: Optional[str] = ADDRESS,
        device: Optional[str] = DEVICE,
        quiet: bool = QUIET,
    ) -> None:
        """Run a sweep; one run at the largest N per (σ, seed) serves every N and α of the grid."""
        from rpdist.pipelines.sweep import load_sweep, run_sweep

        spec = load_sweep(sweep_file)
        outcome = run_sweep(spec, out=out, sweep_id=sweep_id or sweep_file.stem, workers=workers, address=address,
                            device=device, progress=not quiet)
        print_outcome(outcome, title=f"{spec.analysis} sweep: {outcome.path.rsplit('/', 1)[-1]}")
