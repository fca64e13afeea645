"""Errors that mean "the user's input is wrong" rather than "rpdist has a bug".

The CLI turns an :class:`InputError` into one line on stderr and exit status 2; anything else
is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a parameter, a file, a dataset or a model."""


class ModelError(InputError):
    """The user's model raised while the engine ran it on a batch of noisy inputs.

    Raised on the replica, re-raised as itself on the driver, so the CLI prints one line.
    """
