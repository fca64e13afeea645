"""Errors that mean "the user's input is wrong" rather than "rpdist has a bug".

The CLI turns an :class:`InputError` into one line on stderr and exit status 2; anything else
is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a parameter, a file, a dataset or a model."""
