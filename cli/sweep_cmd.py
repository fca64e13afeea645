"""``rpdist sweep SWEEP.yaml``: a resumable (σ, N, α, seed) grid written to one partitioned dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep_cmd(
        sweep_file: Path = typer.Argument(..., help="YAML file: dataset, model, analysis and lists of sigma, n, alpha, seed."),
        out: str = typer.Option("results", "--out", "-o", help="Output root: a directory or a pyarrow URI (s3://bucket/x); the sweep writes OUT/SWEEP_ID/."),
        sweep_id: Optional[str] = typer.Option(None, "--sweep-id", help="Default: the YAML file's name, so rerunning resumes."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Model replicas. Default: one per CPU or GPU."),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join. Default: an embedded local Ray."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda. Default: cuda when the cluster has GPUs."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Run a sweep; one run at the largest N per (σ, seed) serves every N and α of the grid."""
        from rpdist.pipelines.sweep import load_sweep, run_sweep

        spec = load_sweep(sweep_file)
        outcome = run_sweep(spec, out=out, sweep_id=sweep_id or sweep_file.stem, workers=workers, address=address,
                            device=device, progress=not quiet)
        print_sweep_summary(outcome, spec.analysis)


def print_sweep_summary(outcome, analysis: str) -> None:
    console = Console()
    if analysis in POINT_COLUMNS:
        print_point_sweep(console, outcome, analysis)
        return
    table = Table(title=f"sweep {outcome.path.rsplit('/', 1)[-1]}")
    for column in ("σ", "N", "α", "seed", "accuracy" if analysis == "predict" else "cert. acc @0", "abstain",
                   *(["mean radius"] if analysis == "certify" else [])):
        table.add_column(column, justify="right")
    for row in outcome.summary:
        acc = row["accuracy"] if analysis == "predict" else next(iter(row["certified_accuracy"].values()))
        cells = [f"{row['sigma']:g}", f"{row['n']:,}", f"{row['alpha']:g}", str(row["seed"]), f"{100 * acc:.1f}%",
                 f"{100 * row['abstain_rate']:.1f}%"]
        if analysis == "certify":
            cells.append(f"{row['mean_radius']:.4f}")
        table.add_row(*cells)
    console.print(table)
    samples = outcome.manifest["forward_samples"]
    console.print(f"forward samples: {samples['used']:,} used, {samples['naive_grid']:,} for a naive grid "
                  f"({100 * samples['saved_fraction']:.0f}% saved)")
    console.print(f"results: {outcome.path}")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


# Per-point sweeps (RAP, attack): columns as (header, cell formatter of a summary row).
POINT_COLUMNS = {
    "rap": ("RAP sweep", [
        ("λ", lambda r: f"{r['l1_non_sensitive']:g}"), ("σ", lambda r: f"{r['sigma']:g}"),
        ("N", lambda r: f"{r['n']:,}"), ("α", lambda r: f"{r['alpha']:g}"), ("release", lambda r: r["release_model"]),
        ("median length", lambda r: f"{r['median_compatible_length']:.2f}"),
        ("adversary MAE", lambda r: f"{r['adversary_mae']:.2f}"), ("accuracy", lambda r: _pct(r["accuracy"])),
        ("abstain", lambda r: _pct(r["abstain_rate"]))]),
    "attack": ("attack sweep (BREP-MI against RP)", [
        ("σ", lambda r: f"{r['sigma']:g}"), ("N", lambda r: f"{r['n']:,}"), ("α", lambda r: f"{r['alpha']:g}"),
        ("seed", lambda r: str(r["seed"])), ("release", lambda r: r["release"]), ("ASR", lambda r: _pct(r["asr"])),
        ("utility", lambda r: _pct(r["utility_accuracy"])), ("queries", lambda r: f"{r['queries']:,}"),
        ("forward passes", lambda r: f"{r['forward_passes']:,}")]),
}


def print_point_sweep(console: Console, outcome, analysis: str) -> None:
    title, columns = POINT_COLUMNS[analysis]
    table = Table(title=f"{title}: {outcome.path.rsplit('/', 1)[-1]}")
    for header, _ in columns:
        table.add_column(header, justify="right")
    for row in outcome.summary:
        table.add_row(*(cell(row) for _, cell in columns))
    console.print(table)
    console.print(f"results: {outcome.path}")
