"""The shape of the code that issue 9 promised: checked on the source, so a regression fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from rpdist import analyses

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "rpdist").rglob("*.py"))
# Where an analysis name may appear as a string with another meaning: the public API's function
# names, release mechanisms called "predict" and "certify" (releases, not analyses), and the verb
# in stats' "can never certify" message.
OTHER_MEANINGS = {("rpdist/__init__.py", "certify"), ("rpdist/__init__.py", "predict"),
                  ("rpdist/defenses/releases.py", "predict"), ("rpdist/pipelines/sweep.py", "predict"),
                  ("rpdist/privacy/mechanisms.py", "predict"), ("rpdist/privacy/mechanisms.py", "certify"),
                  ("rpdist/smoothing/stats.py", "certify")}


def _strings(path: Path) -> list[str]:
    return [node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
            and isinstance(node.value, str)]


def test_no_library_module_imports_the_cli():
    for path in LIBRARY:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "rpdist.cli" or n.startswith("rpdist.cli.") for n in names), path


@pytest.mark.parametrize("name", analyses.NAMES)
def test_each_analysis_name_is_a_literal_in_one_place(name):
    sources = LIBRARY + sorted((ROOT / "cli").rglob("*.py"))
    places = [str(p.relative_to(ROOT)) for p in sources if name in _strings(p)
              and (str(p.relative_to(ROOT)), name) not in OTHER_MEANINGS]
    assert len(places) == 1, places


def test_every_analysis_prints_its_own_summary_rows():
    """The CLI's one printer works from each analysis' columns; a missing key would fail here."""
    rows = {
        "certify": {"sigma": 0.5, "n": 100, "alpha": 0.001, "seed": 0, "inputs": 3, "abstain_rate": 0.0,
                    "accuracy": 1.0, "mean_radius": 0.1, "median_radius_certified": 0.1,
                    "certified_accuracy": {f"{m * 0.5:g}": 1.0 for m in (0, 0.25, 0.5, 1, 2)}},
        "predict": {"sigma": 0.5, "n": 100, "alpha": 0.001, "seed": 0, "inputs": 3, "abstain_rate": 0.0,
                    "accuracy": 1.0},
    }
    files = [a.final_file for a in analyses.all_analyses()]
    assert len(set(files)) == len(files)
    for analysis in analyses.all_analyses():
        assert analysis.summary_columns and analysis.required_columns
        for row in [rows[analysis.name]] if analysis.name in rows else []:
            assert all(isinstance(c.cell(row), str) for c in analysis.summary_columns)


def test_of_table_names_the_analysis_of_a_result_table():
    cert = pd.DataFrame(columns=["prediction", "radius", "correct", "sigma", "n", "alpha"])
    pred = pd.DataFrame(columns=["prediction", "correct", "sigma", "n", "alpha"])
    assert analyses.of_table(cert).name == "certify" and analyses.of_table(pred).name == "predict"
    with pytest.raises(analyses.InputError):
        analyses.of_table(pd.DataFrame(columns=["x"]))
