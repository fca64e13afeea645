"""``rpdist datasets``: what the built-in datasets are."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command("datasets")
    def datasets() -> None:
        """List the built-in datasets (a .csv/.parquet/.npz file works anywhere a name does)."""
        from rpdist.datasets.catalog import list_datasets

        table = Table(title="built-in datasets")
        for column in ("name", "rows", "input shape", "classes", "label", "description"):
            table.add_column(column)
        for info in list_datasets():
            table.add_row(info["name"], str(info["rows"]), str(tuple(info["input_shape"])), str(info["classes"]),
                          info["label"], info["description"])
        Console().print(table)
