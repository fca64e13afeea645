"""The reproductions are sweep files plus ``rpdist report``: the committed files validate, and small
versions of them run and are reported by the one code path every run and sweep goes through."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from rpdist.pipelines.sweep import load_sweep, parse_sweep, read_sweep, run_sweep
from rpdist.reporting.report import write_report

RESULTS = Path(__file__).resolve().parents[1] / "results"
MIA = ("none", "rp", "abstain", "noise", "dpsgd", "rr", "repeat", "nudge")


def _small(path: Path, **changes):
    """A reproduction's sweep file with a smaller grid: what it runs stays, only how much of it shrinks."""
    return parse_sweep({**yaml.safe_load(path.read_text()), **changes}, str(path))


def test_reproduction_sweep_files_hold_the_documented_grids():
    # issue 12's reproduction: its full grid, at grid step 0.5 with pilot stages, and two points at grid step 0.1
    for dataset in ("insurance-recommend", "insurance"):
        post = load_sweep(RESULTS / "rap" / "posterior-full" / f"{dataset}.yaml")
        assert (post.analysis, post.dataset, post.attribute, post.sigma, post.n, post.alpha, post.seed,
                post.l1_non_sensitive, post.grid_step, post.pilot, post.limit) == (
            "rap", dataset, "bmi", (0.5, 1.0, 2.0, 3.0), (1000, 10000, 100000), (0.001,), (0,), (0.01, 1.0), 0.5,
            1000, None)
    fine = load_sweep(RESULTS / "rap" / "posterior-step01" / "insurance-recommend.yaml")
    assert (fine.sigma, fine.n, fine.l1_non_sensitive, fine.grid_step, fine.limit) == ((1.0, 3.0), (100000,), 0.0, 0.1,
                                                                                        None)
    mia = {name: load_sweep(RESULTS / "mia" / f"{name}.yaml") for name in MIA}
    assert {name: (s.defense, len(s.points)) for name, s in mia.items()} == {
        "none": ("none", 1), "rp": ("rp", 4), "abstain": ("abstain", 4), "noise": ("noise", 4), "dpsgd": ("dpsgd", 1),
        "rr": ("rr", 1), "repeat": ("rp", 1), "nudge": ("rp", 1)}
    assert all((s.restarts, s.dataset) == (5, "digits") for s in mia.values())
    assert mia["rp"].release == ("predict", "certify", "majority") and mia["dpsgd"].epsilon == (1.0, 3.0, 8.0)
    assert mia["rp"].sigma == mia["abstain"].sigma == mia["noise"].sigma == (0.1, 0.25, 0.5, 1.0)
    for adaptive, noise, nudge in (("repeat", ("fresh",), ("0",)), ("nudge", ("keyed",), ("0.001",))):
        assert (mia[adaptive].query_budget, mia[adaptive].repeat) == (5 * mia["rp"].query_budget, (5,))
        assert (mia[adaptive].noise, mia[adaptive].nudge) == (noise, nudge)


@pytest.mark.slow
def test_small_rap_reproduction_runs_and_is_reported(ray_session, tmp_path):
    spec = _small(RESULTS / "rap" / "posterior-full" / "insurance.yaml", sigma=[1.0], n=[100], limit=3, grid_step=5.0)
    outcome = run_sweep(spec, out=tmp_path, sweep_id="rap", progress=False)
    table = read_sweep(outcome.path).to_pandas()
    assert sorted(table["l1_non_sensitive"].unique()) == [0.0, 0.01, 1.0]  # the list of λ reached every point
    assert len(table) == 3 * 2 * 3  # inputs × (base, smoothed) × λ
    report = write_report(outcome.path)
    text = report.read_text()
    assert "HDI length" in text and "report-rap-release-rate.png" in text  # the posterior, not containment
    assert (report.parent / "report-rap-release-rate.png").stat().st_size > 1000


@pytest.mark.slow
def test_small_mia_reproduction_runs_and_is_reported_together(ray_session, tmp_path):
    """Every experiment but DP-SGD (its four models take minutes to train) at 2 targets and a small
    budget; the rp sweep's rows are those of one `attack inversion` run over the same grid."""
    from rpdist.attacks.inversion import InversionSpec, run_inversion

    quick = dict(targets=[0, 1], generator_epochs=40, query_budget=60, restarts=1)
    for name in ("none", "rp", "rr", "nudge"):
        grid = dict(sigma=[0.5, 1.0], n=[20]) if name == "rp" else {}
        run_sweep(_small(RESULTS / "mia" / f"{name}.yaml", **quick, **grid), out=tmp_path / "sweeps", sweep_id=name,
                  progress=False)
    rows = read_sweep(tmp_path / "sweeps" / "rp").to_pandas()
    one = run_inversion(InversionSpec(defense="rp", sigmas=[0.5, 1.0], ns=[20], releases=["predict", "certify", "majority"],
                                      query_budget=60, targets=[0, 1], generator_epochs=40, seed=0, out=str(tmp_path),
                                      run_id="one")).table()
    keys = ["sigma", "release", "target"]
    same = [c for c in one.columns if c != "seconds"]
    pd.testing.assert_frame_equal(rows[same].sort_values(keys).reset_index(drop=True),
                                  one[same].sort_values(keys).reset_index(drop=True))
    assert set(read_sweep(tmp_path / "sweeps" / "rr").to_pandas()["epsilon"]) == {1.0, 3.0, 5.0}
    assert set(read_sweep(tmp_path / "sweeps" / "nudge").to_pandas()["nudge"]) == {"0.001"}
    text = write_report(tmp_path / "sweeps").read_text()
    overview = text[text.index("## All attack results"):text.index("## Sweep of")]
    results = {line.split("|")[1].strip() for line in overview.splitlines() if line.startswith("| ")}
    assert {"none", "rp", "rr", "nudge"} <= results  # the first column names the sweep of each row
    assert "report-all-attack-asr.png" in overview and "### Reconstructions" in text
