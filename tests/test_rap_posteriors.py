"""The posteriors of typical inputs that ``rpdist rap`` writes beside its table (``rap_posteriors.parquet``),
and the report's plots drawn from them and from the summary: the report runs no model, so what it draws
must be what the run computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rpdist.privacy.rap import typical_inputs

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_typical_inputs_are_the_quartiles_and_median_of_the_smoothed_hdi_length():
    hdi = [5.0, 1.0, 4.0, 2.0, 3.0, np.nan]  # input ids 10..15; id 15's NaN (no posterior) is left out
    table = pd.DataFrame({"input_id": list(range(10, 16)) * 2, "release_model": ["smoothed"] * 6 + ["base"] * 6,
                          "posterior_hdi_length": hdi + [0.0] * 6})  # base rows must not count
    # sorted by length: 11 (1), 13 (2), 14 (3), 12 (4), 10 (5); positions round(q·4) = 1, 2, 3
    assert typical_inputs(table) == [(0.25, 13), (0.5, 14), (0.75, 12)]
    ties = table.assign(posterior_hdi_length=[1.0] * 5 + [np.nan] + [0.0] * 6)  # ties go by input id
    assert typical_inputs(ties) == [(0.25, 11), (0.5, 12), (0.75, 13)]
    one = table[table["input_id"] == 10]  # one input picked at every quantile is kept once
    assert typical_inputs(one) == [(0.25, 10)]


@pytest.fixture(scope="module")
def tiny_sweep(ray_session, tmp_path_factory):
    """The committed insurance-recommend sweep file, shrunk: 2 σ, N = 3,000 (a pilot stage of 1,000 before it),
    4 inputs, grid step 4, λ ∈ {0, 1}."""
    from rpdist.pipelines.sweep import parse_sweep, run_sweep

    path = RESULTS / "rap" / "posterior-full" / "insurance-recommend.yaml"
    spec = parse_sweep({**yaml.safe_load(path.read_text()), "sigma": [1.0, 2.0], "n": [3000], "limit": 4,
                        "grid_step": 4.0, "l1_non_sensitive": [1.0]}, str(path))
    return run_sweep(spec, out=tmp_path_factory.mktemp("rap"), sweep_id="tiny", progress=False).path


@pytest.mark.slow
def test_report_of_a_rap_sweep_draws_hdi_against_sigma_and_the_posteriors(tiny_sweep):
    from rpdist.reporting.report import write_report

    report = write_report(tiny_sweep)
    text = report.read_text()
    for plot in ("report-rap-hdi-sigma.png", "report-rap-mae-vs-base.png", "report-rap-posteriors.png"):
        assert plot in text
        assert (report.parent / plot).stat().st_size > 1000
    assert "median posterior HDI length against σ" in text and "posteriors of typical inputs" in text


@pytest.mark.slow
def test_stored_posteriors_are_the_runs_own_and_sum_to_one(tiny_sweep):
    """Each stored posterior sums to 1, equals what ``input_posterior`` recomputes for that input (same
    noise ids), and its HDI length is the one the run's table holds for that input: the main pass and
    the stored file saw the same releases."""
    from rpdist.datasets.catalog import load_dataset
    from rpdist.models.zoo import default_model
    from rpdist.pipelines.sweep import read_points, read_sweep
    from rpdist.privacy.posterior import hdi_length
    from rpdist.privacy.rap import attribute_grid, input_posterior

    post = read_points(tiny_sweep, "rap_posteriors.parquet").to_pandas()
    table = read_sweep(tiny_sweep).to_pandas()
    groups = post.groupby(["sigma", "l1_non_sensitive", "input_id", "release_model"])
    for (sigma, lam), part in table.groupby(["sigma", "l1_non_sensitive"]):  # each point and λ: its picks, both models
        stored = post[(post["sigma"] == sigma) & (post["l1_non_sensitive"] == lam)]
        picks = stored[["quantile", "input_id"]].drop_duplicates().sort_values("quantile")
        assert [tuple(p) for p in picks.itertuples(index=False)] == typical_inputs(part) and len(picks) >= 2
        assert (stored.groupby("input_id")["release_model"].unique().map(sorted) == pd.Series(
            [["base", "smoothed"]] * len(picks), index=sorted(picks["input_id"]))).all()
    assert len(table.groupby(["sigma", "l1_non_sensitive"])) == 4
    train, test = load_dataset("insurance-recommend", split="train"), load_dataset("insurance-recommend", split="test")
    column = list(train.feature_names).index("bmi")
    observed = load_dataset("insurance-recommend", split="all").raw_features()[:, column]
    grid = attribute_grid(float(observed.min()), float(observed.max()), 4.0)
    for (sigma, lam, input_id, release), cells in groups:
        cells = cells.sort_values("cell")
        assert cells["posterior"].sum() == pytest.approx(1.0, abs=1e-12)
        edges = np.append(cells["cell_low"].to_numpy(), cells["cell_high"].to_numpy()[-1])
        row = table[(table["sigma"] == sigma) & (table["l1_non_sensitive"] == lam) & (table["input_id"] == input_id)
                    & (table["release_model"] == release)]
        assert len(row) == 1
        assert hdi_length(edges, cells["posterior"].to_numpy(), float(row["posterior_level"].iloc[0])) \
            == pytest.approx(float(row["posterior_hdi_length"].iloc[0]), rel=1e-12)
        assert int(cells["released_label"].iloc[0]) == int(row["released_label"].iloc[0])
        if sigma != 1.0:
            continue  # one σ is enough for the recomputation (it runs the model again)
        model = default_model("insurance-recommend", train_sigma=float(sigma), l1_non_sensitive=float(lam),
                              sensitive="bmi" if lam > 0 else None)
        again = input_posterior(model, test.X[np.flatnonzero(test.input_ids == input_id)[0]], int(input_id),
                                prior=train.raw_features()[:, column], column=column,
                                mean=float(train.feature_mean[column]), scale=float(train.feature_std[column]),
                                grid=grid, sigma=float(sigma), n=3000, alpha=0.001, seed=0, release_model=release)
        np.testing.assert_array_equal(cells["posterior"].to_numpy(), again["posterior"])
        np.testing.assert_array_equal(cells["prior"].to_numpy(), again["prior"])
        assert float(cells["true_value"].iloc[0]) == again["true_value"]
