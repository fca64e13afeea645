"""Robust Attribute Privacy: compatible sets, adversary, certificate containment, units, bad input, streaming."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta, norm

from rpdist import certify

from rpdist.models import zoo as models
from rpdist.cli.main import main
from rpdist.datasets.catalog import load_dataset
from rpdist.errors import InputError
from rpdist.privacy.adversary import restricted_mean
from rpdist.privacy.rap import COLUMNS, attribute_grid, compatible_set, containment, rap_analysis, resolve_attribute
from rpdist.privacy.runner import RapSpec, l1_values, run_rap
from tests.oracle import LinearOracle


# --- compatible sets on hand-made release vectors (no Ray) ----------------------------------------


def test_compatible_set_midpoint_convention():
    values = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 2.2])  # grid 0..5, true value 2.2 last
    releases = np.array([1, 0, 1, 1, 0, 1, 1])
    cs = compatible_set(values, releases, 6)
    # Sorted: 0 1 2 2.2 3 4 5 -> releases 1 0 1 1 1 0 1; cells from midpoints, clipped to [0, 5].
    np.testing.assert_allclose(cs["edges"], [0, 0.5, 1.5, 2.1, 2.6, 3.5, 4.5, 5])
    assert cs["low"] == pytest.approx(1.5) and cs["high"] == pytest.approx(3.5)
    # Compatible cells: [0,0.5], [1.5,3.5] and [4.5,5]: total 3.0, the run around 2.2 gives 2.0.
    assert cs["length"] == pytest.approx(3.0)


def test_compatible_set_edges_and_abstain_as_release():
    values = np.array([10.0, 11.0, 12.0, 13.0, 10.0])
    releases = np.array([-1, -1, 1, -1, -1])  # abstain is a release value of its own
    cs = compatible_set(values, releases, 4)
    assert cs["low"] == 10.0 and cs["high"] == pytest.approx(11.5)
    assert cs["length"] == pytest.approx(1.5 + 0.5)
    whole = compatible_set(values, np.zeros(5, dtype=int), 4)
    assert whole["length"] == pytest.approx(3.0) and (whole["low"], whole["high"]) == (10.0, 13.0)
    # The true value duplicates grid point 10 (a zero-width cell) and owns the cell [10, 10.5].
    alone = compatible_set(values, np.array([0, 1, 1, 1, 2]), 4)
    assert alone["length"] == pytest.approx(0.5) and (alone["low"], alone["high"]) == (10.0, 10.5)


def test_abstain_cells_rule_out_no_label():
    values = np.array([10.0, 11.0, 12.0, 13.0, 14.0, 12.0])
    releases = np.array([0, -1, 1, -1, 0, 1])  # true value 12 released as 1
    strict = compatible_set(values, releases, 5)
    assert (strict["low"], strict["high"]) == (11.5, 12.5) and strict["length"] == pytest.approx(1.0)
    open_ = compatible_set(values, releases, 5, neutral=-1)
    assert (open_["low"], open_["high"]) == (10.5, 13.5) and open_["length"] == pytest.approx(3.0)
    # An abstain release stays compatible with abstain cells only.
    abstained = compatible_set(values, np.array([0, -1, -1, -1, 0, -1]), 5, neutral=-1)
    assert (abstained["low"], abstained["high"]) == (10.5, 13.5) and abstained["length"] == pytest.approx(3.0)
    other = compatible_set(values, np.array([-1, 0, -1, 1, 0, -1]), 5, neutral=-1)
    assert (other["low"], other["high"]) == (11.5, 12.5) and other["length"] == pytest.approx(1.5)


def test_adversary_estimate_on_known_distribution():
    rng = np.random.default_rng(0)
    prior = rng.uniform(0, 10, 200_000)
    edges = np.arange(0, 11, 1.0)
    mask = np.zeros(10, dtype=bool)
    mask[[2, 3, 7]] = True  # [2,4) and [7,8): uniform mass 2:1, mean (3*2 + 7.5)/3 = 4.5
    assert restricted_mean(prior, edges, mask) == pytest.approx(4.5, abs=0.02)
    assert restricted_mean(prior, edges, np.ones(10, dtype=bool)) == pytest.approx(prior.mean())
    # No prior mass in the set: uniform on the set instead.
    assert restricted_mean(np.array([0.1, 0.2]), edges, mask) == pytest.approx((3 * 2 + 7.5) / 3)
    assert np.isnan(restricted_mean(prior, edges, np.zeros(10, dtype=bool)))


def test_l1_values_always_include_the_unpenalised_model():
    assert l1_values(0.01) == [0.0, 0.01] and l1_values(0) == [0.0]
    assert l1_values([1, 0.01, 0, 0.01]) == [0.0, 0.01, 1.0]
    for bad in (-1, float("nan"), float("inf"), [0.01, -0.5], True, "0.01"):
        with pytest.raises(InputError, match="^--l1-non-sensitive must be a finite number >= 0, got "):
            RapSpec(l1_non_sensitive=bad)


def test_grid_and_attribute_refusals():
    train = load_dataset("insurance", split="train")
    raw = train.raw_features()
    assert resolve_attribute(train.feature_names, raw, "bmi") == 1
    with pytest.raises(InputError, match="unknown attribute 'weight'"):
        resolve_attribute(train.feature_names, raw, "weight")
    with pytest.raises(InputError, match="'sex' is not numeric"):
        resolve_attribute(train.feature_names, raw, "sex")
    with pytest.raises(InputError, match="'smoker_yes' is not numeric"):
        resolve_attribute(train.feature_names, raw, "smoker_yes")
    for step in (0, -0.1, float("nan")):
        with pytest.raises(InputError, match="grid step must be"):
            attribute_grid(15.96, 53.13, step)
    with pytest.raises(InputError, match="points per input"):
        attribute_grid(15.96, 53.13, 1e-9)
    grid = attribute_grid(15.96, 53.13, 0.1)
    assert len(grid) == 372 and grid[0] == 15.96 and grid[-1] <= 53.13


@pytest.mark.parametrize("args, fragment", [
    (["--attribute", "height"], "unknown attribute 'height'"),
    (["--attribute", "sex"], "'sex' is not numeric"),
    (["--grid-step", "0"], "grid step must be"),
    (["--grid-step", "-1"], "grid step must be"),
    (["--abstain-rule", "sometimes"], "--abstain-rule must be"),
    (["--posterior-level", "1"], "posterior level must lie strictly between 0 and 1"),
    (["--posterior-level", "0"], "posterior level must lie strictly between 0 and 1"),
    (["--posterior-level", "-0.5"], "posterior level must lie strictly between 0 and 1"),
    (["--dataset", "insurance-recommended"], "built-in dataset with a default model"),
    (["--pilot", "-1"], "--pilot must be a whole number of samples >= 0"),
])
def test_cli_bad_input_exit_2_one_line(tmp_path, capsys, args, fragment):
    with pytest.raises(SystemExit) as info:
        main(["rap", "--sigma", "1", "--n", "100", "--out", str(tmp_path), "--run-id", "bad", "--quiet", *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_insurance_recommend_is_the_bmi_threshold_task():
    plain, task = load_dataset("insurance", split="all"), load_dataset("insurance-recommend", split="all")
    assert np.array_equal(plain.X, task.X) and task.feature_names == plain.feature_names
    bmi = task.raw_features()[:, 1]
    assert np.array_equal(task.y, (bmi >= 30 - 1e-4).astype(np.int64))  # float32 storage: 30.0 reads 29.99999…
    assert (bmi.min(), bmi.max()) == pytest.approx((15.96, 53.13), abs=1e-5)  # the grid's range in run_rap
    assert task.sha256 != plain.sha256  # another label: no run of one resumes as the other
    assert "insurance-recommend" in models.DEFAULTS


def test_summary_has_bootstrap_intervals_on_medians_and_maes():
    from rpdist.privacy.rap import summarize
    from rpdist.smoothing.stats import bootstrap_interval

    rng = np.random.default_rng(4)
    rows = pd.DataFrame({"release_model": "base", "sigma": 1.0, "n": 100, "alpha": 0.001, "radius": np.nan,
                         "attribute_scale": 6.0, "compatible_length": rng.uniform(10, 30, 200),
                         "abs_error": rng.exponential(3, 200), "posterior_hdi_length": rng.uniform(5, 15, 200),
                         "posterior_abs_error": rng.exponential(2, 200), "posterior_true_ratio": 1.5,
                         "correct": True, "released_label": 1, "certified_low": np.nan, "grid_step": 0.1})
    record = summarize(rows).iloc[0]
    for key, column, statistic in [("median_compatible_length", "compatible_length", np.median),
                                   ("adversary_mae", "abs_error", np.mean),
                                   ("median_hdi_length", "posterior_hdi_length", np.median),
                                   ("posterior_mae", "posterior_abs_error", np.mean)]:
        assert record[key] == pytest.approx(statistic(rows[column]))
        low, high = bootstrap_interval(rows[column], statistic, resamples=2000, seed=0)
        assert (record[f"{key}_low"], record[f"{key}_high"]) == (low, high)
        assert low < record[key] < high
    assert record["median_true_ratio"] == 1.5


# --- the l1 penalty -----------------------------------------------------------------------------


def test_l1_penalty_shrinks_non_sensitive_columns():
    names = load_dataset("insurance", split="train").feature_names
    assert "l1_non_sensitive" not in models.recipe("insurance", 1.0, 0)  # old cache keys unchanged
    assert models.recipe("insurance", 1.0, 0, 0.0, "bmi") == models.recipe("insurance", 1.0, 0)
    rec = models.recipe("insurance", 1.0, 0, 0.01, "bmi")
    assert rec["l1_non_sensitive"] == 0.01 and rec["sensitive"] == "bmi"
    with pytest.raises(InputError, match="sensitive feature"):
        models.recipe("insurance", 1.0, 0, 0.01, None)
    norms = {}
    for lam in (0.0, 0.01):
        short = {**models.recipe("insurance", 1.0, 0, lam, "bmi"), "epochs": 15}
        state = models.train_state_dict(short)
        weight = state["layers.0.weight"].abs().sum(dim=0)
        bmi = names.index("bmi")
        norms[lam] = (float(weight.sum() - weight[bmi]), float(weight[bmi]))
    assert norms[0.01][0] < 0.2 * norms[0.0][0]  # non-sensitive columns much smaller
    assert norms[0.01][1] > norms[0.01][0] / (len(names) - 1)  # bmi's column is left larger than the average other


# --- real runs on the engine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(ray_session):
    """Few inputs, a coarse grid and small N; the unpenalised model only."""
    train = load_dataset("insurance", split="train")
    data = load_dataset("insurance", split="test", limit=12)
    ref = models.default_model("insurance", train_sigma=1.0)
    kwargs = dict(prior=train.raw_features()[:, 1], column=1, attribute="bmi", mean=float(train.feature_mean[1]),
                  scale=float(train.feature_std[1]), sigma=1.0, n=500, n0=50, alpha=0.001, grid_step=2.0, seed=3)
    table, curve = rap_analysis(ref, data.X, data.y, data.input_ids, **kwargs)
    return dict(table=table, curve=curve, ref=ref, data=data, kwargs=kwargs, train=train)


def test_certified_segment_inside_interval(small_run):
    table = small_run["table"]
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS
    assert len(table) == 2 * 12 and set(table["release_model"]) == {"base", "smoothed"}
    smoothed = table[table["release_model"] == "smoothed"]
    assert smoothed["certified_low"].notna().sum() >= 6  # enough certified rows to make the check mean something
    assert containment(table) >= 0.95
    base = table[table["release_model"] == "base"]
    assert base["radius"].isna().all() and base["certified_low"].isna().all()
    # The interval always holds the true value, and lies inside the compatible length.
    assert ((table["interval_low"] <= table["attribute_value"]) & (table["attribute_value"] <= table["interval_high"])).all()
    assert (table["interval_high"] - table["interval_low"] <= table["compatible_length"] + 1e-9).all()
    assert np.allclose(table["abs_error"], (table["adversary_estimate"] - table["attribute_value"]).abs())


def test_certificate_is_for_the_released_label(small_run):
    smoothed = small_run["table"][small_run["table"]["release_model"] == "smoothed"]
    certified = smoothed[smoothed["certified_low"].notna()]
    assert (certified["certified_label"] == certified["released_label"]).all()
    assert (smoothed.loc[smoothed["released_label"] == -1, "certified_low"]).isna().all()
    # The bound comes from CERTIFY's estimation counts for the released label (an independent phase).
    data, kw = small_run["data"], small_run["kwargs"]
    cert = certify(small_run["ref"], data.X, data.y, sigma=kw["sigma"], n0=kw["n0"], n=kw["n"], alpha=kw["alpha"],
                   seed=kw["seed"], input_ids=data.input_ids).set_index("input_id")
    for _, row in certified.iterrows():
        count = cert.loc[row["input_id"], "counts"][row["released_label"]]
        expected = kw["sigma"] * norm.ppf(beta.ppf(kw["alpha"], count, kw["n"] - count + 1))
        assert row["radius"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_certified_segments_stop_at_a_linear_models_true_boundary(ray_session):
    """A linear model's smoothed classifier has the model's own boundary, so along the attribute
    line every input has a known crossing s*; a sound certificate never reaches across it."""
    oracle = LinearOracle(weights=[2.0, 0.3, -0.2, 0.1], bias=0.1)
    mean, scale, step = 30.0, 6.0, 0.25
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 4)).astype(np.float32)
    rest = X[:, 1:].astype(np.float64) @ oracle.w[1:] + oracle.b
    crossing = mean + scale * (-rest / oracle.w[0])  # raw attribute value where w·x + b = 0
    prior = np.linspace(15.0, 50.0, 1001)
    table, _ = rap_analysis(oracle.module, X, oracle.label(X), np.arange(30), prior=prior, column=0, attribute="a",
                            mean=mean, scale=scale, sigma=0.5, n=2000, n0=100, alpha=0.001, grid_step=step, seed=1)
    inside = (crossing > 15.5) & (crossing < 49.5)
    assert inside.sum() >= 20
    for model_name in ("base", "smoothed"):
        rows = table[table["release_model"] == model_name].set_index("input_id").loc[np.flatnonzero(inside)]
        s_star, s = crossing[inside], rows["attribute_value"].to_numpy()
        edge = np.where(s < s_star, rows["interval_high"], rows["interval_low"])
        if model_name == "base":  # the argmax flips exactly at s*, seen to within a grid step
            assert np.abs(edge - s_star).max() <= step
            continue
        released = rows["released_label"].to_numpy()
        assert (released[released >= 0] == oracle.label(X[inside])[released >= 0]).all()
        # The abstain band around s* is compatible with the released label, so the interval ends
        # beyond s*, never short of it.
        assert (np.where(s < s_star, edge - s_star, s_star - edge) >= -step)[released >= 0].all()
        certified = rows["certified_low"].notna().to_numpy()
        assert certified.sum() >= 15
        low, high = rows["certified_low"].to_numpy()[certified], rows["certified_high"].to_numpy()[certified]
        assert not ((low < s_star[certified]) & (s_star[certified] < high)).any()
        reach = rows["radius"].to_numpy()[certified] * scale / np.abs(s - s_star)[certified]
        assert np.median(reach) > 0.5 and reach.max() <= 1.0  # tight, yet never past the boundary
    assert containment(table) >= 0.95

    # The literal rule (abstain is one more label) stops each interval at or before s*: the same
    # releases, smaller sets, and base rows untouched.
    some = np.flatnonzero(inside)[:12]
    strict, _ = rap_analysis(oracle.module, X[some], oracle.label(X[some]), some, prior=prior, column=0,
                             attribute="a", mean=mean, scale=scale, sigma=0.5, n=2000, n0=100, alpha=0.001,
                             grid_step=step, seed=1, abstain_rule="distinct")
    reference = table[table["input_id"].isin(some)].reset_index(drop=True)
    assert (strict["released_label"] == reference["released_label"]).all()
    base = strict["release_model"] == "base"
    assert np.array_equal(strict.loc[base, "compatible_length"], reference.loc[base, "compatible_length"])
    assert (strict["compatible_length"] <= reference["compatible_length"] + 1e-9).all()
    assert (strict["compatible_length"] < reference["compatible_length"] - step / 2).sum() >= 3
    rows = strict[~base & (strict["released_label"] >= 0)]
    s_star, s = crossing[rows["input_id"]], rows["attribute_value"].to_numpy()
    edge = np.where(s < s_star, rows["interval_high"], rows["interval_low"])
    assert (np.where(s < s_star, edge - s_star, s_star - edge) <= step).all()


def test_units_are_raw_bmi(small_run):
    table, train = small_run["table"], small_run["train"]
    bmi = train.raw_features()[:, 1]
    assert np.allclose(table["attribute_scale"], bmi.std(ddof=0))
    assert table["attribute_scale"].iloc[0] == pytest.approx(6.1, abs=0.15)
    truth = small_run["data"].raw_features()[:, 1]
    assert np.allclose(table.groupby("input_id")["attribute_value"].first().to_numpy(), truth)
    low, high = min(bmi.min(), truth.min()), max(bmi.max(), truth.max())
    assert (table["interval_low"] >= low - 1e-9).all() and (table["interval_high"] <= high + 1e-9).all()
    assert (table["compatible_length"] <= high - low + 1e-9).all()
    certified = table[table["certified_low"].notna()]
    half = certified["radius"] * certified["attribute_scale"]
    assert (certified["certified_low"] >= np.maximum(certified["attribute_value"] - half, low) - 1e-9).all()


@pytest.mark.slow
def test_tiny_grid_batch_streams_to_the_same_result(small_run):
    data, kwargs = small_run["data"], small_run["kwargs"]
    first = slice(0, 3)
    reference = small_run["table"][small_run["table"]["input_id"].isin(data.input_ids[first])].reset_index(drop=True)
    streamed, curve = rap_analysis(small_run["ref"], data.X[first], data.y[first], data.input_ids[first],
                                   grid_batch=7, **kwargs)  # 7 points per engine call: slices split inputs
    pd.testing.assert_frame_equal(streamed.reset_index(drop=True), reference)
    assert curve["inputs"].max() == 3


@pytest.mark.slow
def test_cli_writes_rap_parquet(ray_session, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["rap", "--dataset", "insurance", "--attribute", "bmi", "--sigma", "1", "--n", "200", "--n0", "20",
              "--alpha", "0.01", "--limit", "3", "--grid-step", "4", "--l1-non-sensitive", "0",
              "--out", str(tmp_path), "--run-id", "cli", "--quiet"])
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    df = pd.read_parquet(tmp_path / "cli" / "rap.parquet")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS and len(df) == 6
    assert (df["sigma"] == 1.0).all() and (df["n"] == 200).all() and (df["alpha"] == 0.01).all()
    assert "median" in captured.out and "MAE" in captured.out and "abstain" in captured.out
    assert (tmp_path / "cli" / "manifest.json").is_file() and (tmp_path / "cli" / "rap_curve.parquet").is_file()


@pytest.mark.slow
def test_cli_takes_several_penalties(ray_session, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["rap", "--sigma", "1", "--n", "100", "--n0", "10", "--alpha", "0.01", "--limit", "2", "--grid-step", "10",
              "--l1-non-sensitive", "0.01", "--l1-non-sensitive", "1", "--out", str(tmp_path), "--run-id", "l1s",
              "--quiet"])
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    df = pd.read_parquet(tmp_path / "l1s" / "rap.parquet")
    assert sorted(df["l1_non_sensitive"].unique()) == [0.0, 0.01, 1.0] and len(df) == 3 * 2 * 2
    assert "λ=1 " in captured.out


@pytest.mark.slow
def test_run_rap_reports_both_models(ray_session, tmp_path, monkeypatch):
    calls = []
    real = models.default_model

    def tracking(dataset, **kwargs):
        calls.append(kwargs["l1_non_sensitive"])
        return real(dataset, **{**kwargs, "l1_non_sensitive": 0.0, "sensitive": None})  # skip slow training

    monkeypatch.setattr(models, "default_model", tracking)
    outcome = run_rap(RapSpec(sigma=1.0, n=100, n0=10, alpha=0.01, grid_step=10, l1_non_sensitive=0.05, limit=2,
                              out=str(tmp_path), run_id="both"))
    assert calls == [0.0, 0.05]
    assert sorted(outcome.table()["l1_non_sensitive"].unique()) == [0.0, 0.05]
    assert len(outcome.summary) == 4


def test_summary_reports_a_sound_release_bound_not_alpha_over_two():
    """No α/2 'advantage bound'; instead the median sound bound for PREDICT at each certified radius."""
    from rpdist.privacy.bounds import Certificate, advantage_bound
    from rpdist.privacy.mechanisms import Predict
    from rpdist.privacy.rap import summarize

    radii = [norm.ppf(float(beta.ppf(0.001, 626, 1000 - 626 + 1))), 0.05, 0.0]  # the certificate, a small one, none
    rows = pd.DataFrame({"release_model": "smoothed", "sigma": 1.0, "n": 1000, "alpha": 0.001, "radius": radii,
                         "attribute_scale": 1.0, "compatible_length": 1.0, "abs_error": 0.0, "correct": True,
                         "released_label": 1, "certified_low": [0.0, 0.0, np.nan], "certified_high": [1.0, 1.0, np.nan],
                         "interval_low": 0.0, "interval_high": 1.0, "grid_step": 0.1})
    summary = summarize(rows)
    assert "advantage_bound" not in summary.columns
    each = [advantage_bound(Predict(1000, 0.001), Certificate.from_radius(r, 1.0, 0.001), r, 1.0).advantage
            for r in radii[:2]]
    assert summary["median_release_advantage"].iloc[0] == pytest.approx(np.median(each), abs=1e-3)
    assert summary["median_release_advantage"].iloc[0] > 0.287 / 2  # nowhere near α/2 = 0.0005


# --- the adversary's posterior against a linear model's exact one ------------------------------------


def _delta_budget(a, prior, exact_lik, bias, var):
    """First-order (delta-method) mean shift and sd of R̂ = Σπ·a·L̂ / Σπ·L̂ around R = Σπ·a·L / Σπ·L
    when each cell's L̂ has the given bias and variance, independently across cells."""
    evidence = (prior * exact_lik).sum()
    r = (prior * a * exact_lik).sum() / evidence
    gradient = prior * (a - r) / evidence
    return r, float(gradient @ bias), float(np.sqrt(gradient**2 @ var))


@pytest.mark.slow
def test_posterior_matches_a_linear_models_exact_posterior(ray_session):
    """Along the attribute a linear model's smoothed class probability is exactly Φ(d/σ), so PREDICT's
    output probability, and with it the posterior, is known at every cell.

    Error budget: the posterior uses the plug-in P(k/N) with k ~ Bin(N, p) independently per cell.
    Its exact mean and variance per cell are sums over the binomial, and the delta method carries
    them to each statistic R (posterior mean, far-side mass): R̂ − R should lie within its
    first-order bias ± 4 sd (|z| > 4 has probability 6e-5 per check under the normal approximation,
    about 0.005 over the 72 checks here). Measured with this seed: max |z| = 2.6, the z's look
    standard normal, so the neglected second-order terms are small. Far-side cells (where the
    smoothed label is the other class) have an exact likelihood ≤ α/2, and their estimated posterior
    mass is held to the exact one by the same budget: the `neutral` artifact is gone. Mutations: the
    neutral likelihood (abstain counted with the label) gives z = 649; a plug-in p̂ shifted by 0.02, z = 13.7.
    """
    from rpdist import predict
    from rpdist.privacy.mechanisms import Predict
    from rpdist.privacy.posterior import KdePrior, cell_posterior, predict_likelihood
    from scipy.stats import binom

    oracle = LinearOracle(weights=[2.0, 0.3, -0.2, 0.1], bias=0.1)
    mean, scale, step, sigma, n, alpha = 30.0, 6.0, 0.25, 0.5, 1000, 0.001
    rng = np.random.default_rng(7)
    X = rng.normal(size=(36, 4)).astype(np.float32)
    rest = X[:, 1:].astype(np.float64) @ oracle.w[1:] + oracle.b
    X[-6:, 0] = (-rest[-6:] / oracle.w[0]).astype(np.float32)  # six inputs on the boundary: PREDICT abstains
    X[:, 0] = np.clip(X[:, 0], -2.2, 2.8)
    sample = np.random.default_rng(8).normal(31.0, 6.0, size=1200)
    sample = sample[(sample > 17) & (sample < 48)]
    ids = np.arange(len(X))
    table, _ = rap_analysis(oracle.module, X, oracle.label(X), ids, prior=sample, column=0, attribute="a", mean=mean,
                            scale=scale, sigma=sigma, n=n, n0=100, alpha=alpha, grid_step=step, seed=2)
    smoothed = table[table["release_model"] == "smoothed"].set_index("input_id")
    grid = attribute_grid(float(sample.min()), float(sample.max()), step)
    G, mech, prior = len(grid), Predict(n, alpha), KdePrior(sample)
    k = np.arange(n + 1)
    outputs = mech.probabilities(k / n)  # the plug-in likelihood as a function of the count k0
    checks, far_neutral = [], []
    # The run's own grid points (same ids, so the same noise), PREDICTed again here to see their counts.
    values_all = np.concatenate([np.append(grid, mean + scale * float(X[i, 0])) for i in ids])
    points_all = np.repeat(X, G + 1, axis=0)
    points_all[:, 0] = ((values_all - mean) / scale).astype(np.float32)
    pred_all = predict(oracle.module, points_all, sigma=sigma, n=n, alpha=alpha, seed=2,
                       input_ids=np.arange(len(ids) * (G + 1)))
    for i in ids:
        part = slice(i * (G + 1), (i + 1) * (G + 1))
        values, points, pred = values_all[part], points_all[part], pred_all.iloc[part]
        released = int(pred["prediction"].iloc[-1])
        assert released == smoothed.loc[i, "released_label"]
        column = 2 if released == -1 else released
        counts = np.stack(pred["counts"].to_numpy())
        got = cell_posterior(values, predict_likelihood(mech, counts, released), prior)
        # The run's column is this posterior's mean (the wiring), and its mass sums to one.
        assert smoothed.loc[i, "posterior_mean"] == pytest.approx(got["posterior"] @ got["centres"], rel=1e-12)
        p1 = norm.cdf(oracle.signed_distance(points) / sigma)[got["order"]]
        p0 = 1 - p1
        exact_lik = mech.probabilities(p0)[:, column]
        pmf = binom.pmf(k[None, :], n, p0[:, None])
        mean_lik = pmf @ outputs[:, column]
        var_lik = np.clip(pmf @ outputs[:, column] ** 2 - mean_lik**2, 0, None)
        far = (p1 < 0.5) if released == 1 else (p1 > 0.5) if released == 0 else np.abs(p1 - 0.5) > 0.45
        for a, slack, estimate in [(got["centres"], 1e-6, got["posterior"] @ got["centres"]),  # slack: rounding
                                   (far.astype(float), 1e-9, got["posterior"][far].sum())]:
            r, bias, sd = _delta_budget(a, got["prior"], exact_lik, mean_lik - exact_lik, var_lik)
            checks.append((estimate - r - bias) / max(sd, 1e-12) if abs(estimate - r - bias) > slack else 0.0)
        if released >= 0:
            # The far side's exact likelihood is at most α/2 (PREDICT's error rate at p_L ≤ 1/2) ...
            assert exact_lik[far].max() <= alpha / 2
            # ... while the neutral compatible set counts the far side's abstain cells as compatible.
            widths = np.diff(got["edges"])
            far_neutral.append(widths[far & (counts[got["order"], 0] + counts[got["order"], 1] > 0)
                                      & (pred["prediction"].to_numpy()[got["order"]] == -1)].sum())
    assert np.abs(checks).max() <= 4, np.round(checks, 2)
    # The plotting helper recomputes an input's per-cell posterior with the run's own noise.
    from rpdist.privacy.rap import input_posterior

    one = input_posterior(oracle.module, X[3], 3, prior=sample, column=0, mean=mean, scale=scale, grid=grid,
                          sigma=sigma, n=n, alpha=alpha, seed=2)
    assert one["posterior"] @ one["centres"] == pytest.approx(smoothed.loc[3, "posterior_mean"], rel=1e-12)
    assert (smoothed["released_label"] == -1).sum() >= 5  # the boundary inputs: abstain has its own posterior
    assert np.median(far_neutral) > 0 and max(far_neutral) >= 2 * step  # the artifact the posterior removes


def test_summary_pairs_the_smoothed_release_with_the_base_model_by_input():
    """The smoothed rows carry mean(smoothed − base) over the same inputs with a bootstrap interval:
    rows in another order, and an input only one release has, must not change it."""
    from rpdist.privacy.rap import summarize
    from rpdist.smoothing.stats import bootstrap_interval

    rng = np.random.default_rng(8)
    common = dict(sigma=1.0, n=100, alpha=0.001, radius=np.nan, attribute_scale=6.0, compatible_length=20.0,
                  abs_error=1.0, posterior_true_ratio=1.0, correct=True, released_label=1, certified_low=np.nan,
                  grid_step=0.1)
    ids = np.arange(150)
    base_err, base_hdi = rng.exponential(3, 150), rng.uniform(8, 12, 150)
    shift = rng.normal(0.5, 1.0, 150)
    base = pd.DataFrame({"input_id": ids, "release_model": "base", "posterior_abs_error": base_err,
                         "posterior_hdi_length": base_hdi, **common})
    smoothed = pd.DataFrame({"input_id": ids[::-1], "release_model": "smoothed",
                             "posterior_abs_error": (base_err + shift)[::-1], "posterior_hdi_length": base_hdi[::-1] - 1.0,
                             **common})
    extra = smoothed.iloc[:1].assign(input_id=999, posterior_abs_error=100.0)  # no base row: not paired
    table = pd.concat([smoothed, extra, base.sample(frac=1.0, random_state=0)], ignore_index=True)
    records = summarize(table).set_index("release_model")
    row = records.loc["smoothed"]
    assert row["posterior_mae_vs_base"] == pytest.approx(shift.mean())
    assert (row["posterior_mae_vs_base_low"], row["posterior_mae_vs_base_high"]) == pytest.approx(
        bootstrap_interval(shift, np.mean, resamples=2000, seed=0), abs=1e-12)
    assert row["hdi_length_vs_base"] == pytest.approx(-1.0)
    assert np.isnan(records.loc["base"]["posterior_mae_vs_base"])
