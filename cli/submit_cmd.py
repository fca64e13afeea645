"""``rpdist submit``: run an rpdist command on a Ray cluster as a Ray job (see rpdist.pipelines.submit)."""

from __future__ import annotations

from typing import List, Optional

import click
import typer

ADDRESS = typer.Option(None, "--address", envvar="RAY_ADDRESS", show_envvar=True,
                       help="The cluster's job API, e.g. http://127.0.0.1:8265 through `ray dashboard cluster.yaml`.")
FOLLOW = typer.Option(False, "--follow/--no-follow",
                      help="Stream the job's logs until it ends; exit 0 if it succeeded, else 1.")
NO_WAIT = typer.Option(False, "--no-wait", help="Return as soon as the job is accepted, without waiting for it to start.")
ARGS = typer.Argument(None, metavar="-- COMMAND [ARGS]", help="The rpdist command to run on the cluster.")


def register(app: typer.Typer) -> None:
    @app.command("submit", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    def submit_cmd(rpdist_args: Optional[List[str]] = ARGS, address: Optional[str] = ADDRESS,
                   follow: bool = FOLLOW, no_wait: bool = NO_WAIT) -> None:
        """Run `rpdist COMMAND [ARGS]` on a Ray cluster as a job; local files named in ARGS travel with it."""
        from rpdist.cli.main import root_command
        from rpdist.errors import InputError
        from rpdist.pipelines.submit import JobFailedError, submit

        if follow and no_wait:
            raise InputError("--follow and --no-wait exclude each other")
        try:
            submit(address, list(rpdist_args or []), root_command(), follow=follow, wait=not no_wait, echo=click.echo)
        except JobFailedError as exc:
            click.echo(f"rpdist: {exc}", err=True)
            raise typer.Exit(1) from exc
        except KeyboardInterrupt:
            click.echo("rpdist: stopped following; the job keeps running on the cluster", err=True)
            raise typer.Exit(130) from None
