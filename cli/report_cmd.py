"""``rpdist report DIR``: a markdown summary with PNG plots of a run, a sweep, or a folder of runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        directory: Path = typer.Argument(..., help="A run directory (certify, predict, rap, attack, audit), a sweep "
                                                   "directory, or a folder holding several of them."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Markdown file to write; the PNG plots go next "
                                                                     "to it. Default: DIR/report.md."),
    ) -> None:
        """Write a markdown report with tables and PNG plots (certified accuracy, abstain rate, RAP, ASR, distinguishing advantage)."""
        from rpdist.reporting.report import write_report

        path = write_report(directory, out=out)
        typer.echo(f"report: {path}")
