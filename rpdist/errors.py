"""Errors that mean "the user's input is wrong" rather than "rpdist has a bug".

The CLI turns an :class:`InputError` into one line on stderr and exit status 2; anything else
is a bug and keeps its traceback.
"""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none): errors stay one line."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def whole_message(exc: BaseException, limit: int = 200) -> str:
    """All of an exception's message on one line (a YAML or OS error spreads its context over several lines)."""
    return " ".join(str(exc).split())[:limit]


class InputError(ValueError):
    """Bad input from the user: a parameter, a file, a dataset or a model."""


class ClusterLostError(RuntimeError):
    """The Ray cluster lost what a run needs: its head, or every model replica.

    The finished chunks of a run directory are on disk; the CLI says so in one line, exits with
    status 3, and rerunning the same command (against a working cluster) resumes the run.
    """


class ModelError(InputError):
    """The user's model raised while the engine ran it on a batch of noisy inputs.

    Raised on the replica, re-raised as itself on the driver, so the CLI prints one line.
    """
