"""The ``rpdist`` command: a thin typer shell over the Python API.

Bad input of any kind — an :class:`rpdist.InputError` or a usage error — becomes one line on
stderr and exit status 2, with no traceback. A run that lost its Ray cluster's head, or every
model replica (:class:`rpdist.errors.ClusterLostError`), is one line and exit status 3: the
finished chunks are saved, and rerunning the same command resumes.
"""

from __future__ import annotations

import logging
import sys

import click
import typer

from rpdist.errors import ClusterLostError, InputError, first_line

CLUSTER_LOST = 3  # exit status of a run that lost its cluster: rerun to resume

app = typer.Typer(
    name="rpdist",
    help="Certify Robust Privacy with randomized smoothing and benchmark privacy attacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Each command lives in its own module; importing them here keeps ``--help`` complete."""
    from rpdist.cli import attack_cmd, audit_cmd, datasets_cmd, extraction_cmd, rap_cmd, report_cmd, smoothing_cmds, submit_cmd, sweep_cmd

    for module in (smoothing_cmds, rap_cmd, attack_cmd, extraction_cmd, audit_cmd, sweep_cmd, report_cmd, submit_cmd, datasets_cmd):
        module.register(app)


def root_command():
    """The click command of the whole CLI, every subcommand registered (``submit`` reads its options)."""
    if not app.registered_commands:
        _register()
    return typer.main.get_command(app)


class _StderrLines(logging.Handler):
    """The package's log records as ``rpdist: warning: …`` lines on whatever stderr is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"rpdist: {record.levelname.lower()}: {record.getMessage()}", err=True)
        except Exception:  # noqa: BLE001 — logging must never end the run
            self.handleError(record)


def configure_logging() -> None:
    """Warnings from the library (a cache it cannot read or write) reach the user in the CLI's own voice, once."""
    logger = logging.getLogger("rpdist")
    if not any(isinstance(handler, _StderrLines) for handler in logger.handlers):
        logger.addHandler(_StderrLines(logging.WARNING))


def fail(message: str) -> None:
    click.echo(f"rpdist: error: {message}", err=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    command = root_command()
    try:
        code = command.main(args=argv, prog_name="rpdist", standalone_mode=False)
    except InputError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else "invalid input")
    except ClusterLostError as exc:
        click.echo(f"rpdist: error: {first_line(exc, limit=1000)}", err=True)
        sys.exit(CLUSTER_LOST)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        click.echo("rpdist: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown option, unparsable value, …
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        fail(" ".join(message.split()))
    except KeyboardInterrupt:
        click.echo("rpdist: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
