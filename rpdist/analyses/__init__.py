"""The analysis registry: every analysis kind rpdist runs, looked up by name.

Adding an analysis is one module with an :class:`~rpdist.analyses.base.Analysis` subclass plus one
line in ``_ALL`` below; the CLI's printers, ``rpdist sweep``, ``rpdist report`` and the sweep
file's ``analysis`` key all find it here.
"""

from __future__ import annotations

from rpdist.analyses.attack import AttackAnalysis
from rpdist.analyses.audit import AuditAnalysis
from rpdist.analyses.base import Analysis, Column, Outcome
from rpdist.analyses.rap import RapAnalysis
from rpdist.analyses.sequential import SequentialAnalysis
from rpdist.analyses.smoothing import CertifyAnalysis, PredictAnalysis
from rpdist.errors import InputError

# SequentialAnalysis first: its tables also hold every certify column (of_table takes the first match).
_ALL: tuple[Analysis, ...] = (SequentialAnalysis(), CertifyAnalysis(), PredictAnalysis(), RapAnalysis(), AttackAnalysis(),
                              AuditAnalysis())
REGISTRY: dict[str, Analysis] = {analysis.name: analysis for analysis in _ALL}
NAMES = tuple(REGISTRY)

__all__ = ["Analysis", "Column", "Outcome", "REGISTRY", "NAMES", "get", "all_analyses", "of_table"]


def get(name: str) -> Analysis:
    if name not in REGISTRY:
        raise InputError(f"unknown analysis {name!r}; one of {', '.join(NAMES)}")
    return REGISTRY[name]


def all_analyses() -> tuple[Analysis, ...]:
    return _ALL


def of_table(df) -> Analysis:
    """The analysis whose result columns ``df`` holds (sweeps: certify when it has radii, else predict)."""
    for analysis in _ALL:
        if all(c in df.columns for c in analysis.required_columns):
            return analysis
    raise InputError(f"a table with columns {', '.join(map(str, df.columns[:8]))}… is no rpdist result")
