"""Validated specs: the pydantic field types the analysis specs share, and the one place where a
pydantic ``ValidationError`` becomes the one-line :class:`InputError` the CLI prints.

A field type carries, next to the constraint pydantic checks, what it must be in words
(:class:`Must`), so a refusal reads ``sigma must be a finite number > 0, got -1`` and names the
key or option the user wrote, not pydantic's wording.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from rpdist.errors import InputError


@dataclasses.dataclass(frozen=True)
class Must:
    """What a value must be, as the rest of the sentence "<name> …, got <value>"; ``name`` is what
    the user calls the field (a CLI option such as ``--sigma``) when it is not the field's name."""

    what: str | None = None
    name: str | None = None


def _python_scalar(value):
    """numpy scalars come from array code; pydantic's strict numbers take Python ones only."""
    return value.item() if isinstance(value, np.generic) else value


def _number(kind, must: str, **constraints):
    return Annotated[kind, BeforeValidator(_python_scalar), Field(strict=True, **constraints), Must(must)]


Sigma = _number(float, "must be a finite number > 0", gt=0, allow_inf_nan=False)
Alpha = _number(float, "must lie strictly between 0 and 1", gt=0, lt=1)
Count = _number(int, "must be a whole number >= 1", ge=1)
Seed = _number(int, "must be a whole number in [0, 2^63)", ge=0, lt=2**63)
Pilot = _number(int, "must be a whole number of samples >= 0 (0: no staging)", ge=0)
NonNegative = _number(float, "must be a finite number >= 0", ge=0, allow_inf_nan=False)
# Where results go: a directory, a pyarrow URI (s3://…) or an open rpdist.io.store.Store; open_run checks it.
OutRoot = Any
Advantage = _number(float, "must lie strictly between 0 and 0.5", gt=0, lt=0.5)  # a distinguisher's τ
Positive = _number(float, "must be a number > 0", gt=0)  # inf allowed: a privacy ε of "no noise"


def sorted_unique(values: tuple) -> tuple:
    """A set of values held as a sorted tuple, so equal sets give equal configs."""
    return tuple(sorted(set(values)))


# pydantic's error types, said the way a user thinks of the value
KIND_NAMES = {"int_type": "must be a whole number", "int_from_float": "must be a whole number",
              "float_type": "must be a number", "string_type": "must be a string", "bool_type": "must be true or false"}


def spec(cls=None, /, *, frozen: bool = False):
    """A pydantic dataclass (positional construction, ``dataclasses.asdict`` and ``replace`` work as
    before) that is validated when it is built and refuses bad values with one :class:`InputError`."""

    def wrap(cls):
        cls = pydantic_dataclass(cls, frozen=frozen, config=ConfigDict(extra="forbid"))
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise input_error(exc, cls) from None

        cls.__init__ = __init__
        return cls

    return wrap if cls is None else wrap(cls)


def _musts(annotation) -> list[Must]:
    """Every Must in a (possibly nested) annotation, innermost last."""
    found = []
    if typing.get_origin(annotation) is Annotated:
        found += [m for m in reversed(annotation.__metadata__) if isinstance(m, Must)]
    for arg in typing.get_args(annotation):
        found += _musts(arg)
    return found


def input_error(exc: ValidationError, cls, source: str | None = None, option=None) -> InputError:
    """The first error of ``exc`` as one line that names the key.

    For a file (``source``): ``SOURCE: key 'k': …``. For a spec built in code or from the command
    line: ``<name> must …, got <value>``, where ``option(key)`` (if given) says what the user calls a
    key, for example its command-line option. Unknown keys are reported before missing ones, so a
    misspelt required key is named as the typo.
    """
    fields = getattr(cls, "__pydantic_fields__", None) or cls.model_fields
    errors = exc.errors()
    error = min(errors, key=lambda e: _FIRST.get(e["type"], 2))
    # Of one key's errors, the deepest names the offending item (a list element, a union's member).
    error = max((e for e in errors if e["loc"][:1] == error["loc"][:1] and e["type"] not in _FIRST),
                key=lambda e: len(e["loc"]), default=error)
    kind, loc = error["type"], list(error["loc"])
    if loc and isinstance(loc[0], int):  # a positional argument of a dataclass
        loc[0] = list(fields)[loc[0]] if loc[0] < len(fields) else f"argument {loc[0] + 1}"
    key = str(loc[0]) if loc else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    cause = (error.get("ctx") or {}).get("error")
    if _FIRST.get(kind) == 0:
        known = ", ".join(sorted(fields))
        message = (f"unknown key {key!r} (known: {known})" if source
                   else f"{cls.__name__} has no field {key!r} (known: {known})")
        return InputError(f"{source}: {message}" if source else message)
    if _FIRST.get(kind) == 1:
        return InputError(f"{source}: key {key!r} is required" if source else f"{key} is required")
    if isinstance(cause, InputError):  # a check that already says it in one line (feasibility, …)
        where = f"{source}: key {key!r}: " if source and key else f"{source}: " if source else ""
        return InputError(f"{where}{cause}")
    if not key:  # a check across keys: its message starts with the key it blames
        key, _, message = message.partition(": ")
    field = fields.get(key)
    musts = [m for m in reversed(field.metadata) if isinstance(m, Must)] + _musts(field.annotation) if field else []
    name = next((m.name for m in musts if m.name), option(key) if option and key in fields else key)
    what = next((m.what for m in musts if m.what), None)
    if what is not None:
        message = f"{name} {what}, got {error.get('input')!r}"
    else:
        message = KIND_NAMES.get(kind, message)
        if kind in KIND_NAMES or kind in ("literal_error", "tuple_type"):
            message = f"{message}, got {error.get('input')!r}"
        if not source:
            message = f"{name} {message}" if message.startswith("must") else f"{name}: {message}"
    return InputError(f"{source}: key {key!r}: {message}" if source else message)


# Errors reported first: unknown keys (0), then missing ones (1), then the rest in order.
_FIRST = {"extra_forbidden": 0, "unexpected_keyword_argument": 0, "unexpected_positional_argument": 0,
          "missing": 1, "missing_argument": 1}


def cli_option(key: str) -> str:
    """The command-line option of a spec key: ``query_budgets`` → ``--query-budget`` (lists are
    given one value per repeated option, named in the singular)."""
    name = key[:-1] if key.endswith("s") and key not in ("seeds", "trials", "workers") else key
    return "--" + name.replace("_", "-")


def one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``choices``; else the ValueError a spec validator raises, naming them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; one of {', '.join(choices)}")
    return value
