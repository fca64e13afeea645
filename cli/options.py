"""Options every command that runs the engine shares: declared once, so their names and help agree."""

from __future__ import annotations

import typer

BATCH = typer.Option(None, "--batch-size", help="Samples per forward pass. Default 4096 on CPU, 32768 on CUDA.")
WORKERS = typer.Option(None, "--workers", "-w", help="Model replicas. Default: one per CPU (or GPU) of the Ray cluster.")
ADDRESS = typer.Option(None, "--address", help="Ray cluster to join (e.g. auto or ray://host:10001). Default: an embedded local Ray.")
DEVICE = typer.Option(None, "--device", help="cpu or cuda. Default: cuda when the cluster has GPUs.")
RUN_ID = typer.Option(None, "--run-id", help="Run directory name. Rerunning an interrupted run id resumes it.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress output.")
TARGETS_AT_ONCE = typer.Option(None, "--targets-at-once", help="Attacks: classes attacked at a time (default all). Each "
                               "is saved when it finishes, so rerunning an interrupted run resumes from it.")
