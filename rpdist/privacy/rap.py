"""Robust Attribute Privacy: how well a sensitive attribute can be inferred, base model against smoothed.

For each input x with sensitive attribute s, every other feature is held fixed and s is swept over
a grid in raw units (by default the range of the training data; ``run_rap`` uses the whole
dataset's), plus the true value itself. The headline measure is the Bayes adversary's posterior
over the grid (:mod:`rpdist.privacy.posterior`): prior times the release's probability at each
cell, abstain being a release like any other.

The *compatible set*, kept as a reference column, is every swept value whose release equals the
release at the true value: the base model's argmax label, or the smoothed model's PREDICT. Under
the ``neutral`` rule an abstain cell counts as compatible with a released label (an abstain release
is compatible with abstain cells only). That overstates the adversary's uncertainty: beyond the
boundary PREDICT returns the label with probability ≤ α/2, so an observer can all but rule those
cells out; the posterior weighs them by exactly that probability. Without the rule the interval of
a certified label stops at the first abstention inside its certified segment, which happens near
the segment's edge however large N is; whether the segment lies inside the interval is therefore
a check of the certificate machinery, not a privacy measure.

A CERTIFY radius R (standardised units) at x guarantees, with probability ≥ 1−α, that the
smoothed classifier is constant on [s − R·scale_s, s + R·scale_s] in raw units.

What is certified is the *released* label: PREDICT's answer at the true value plays the part of
CERTIFY's selection step, and CERTIFY's estimation counts (an independent noise phase) bound its
probability. Cohen's own selection (n0 draws) could pick another class than the one released,
and a certificate for a label nobody saw says nothing about the compatible set; an abstaining
release gets no certificate.

Discretisation convention (documented in the README): swept values are sorted and each owns the
cell between the midpoints to its neighbours; the ends of the sweep range close the first and last
cells. The compatible length is the total length of compatible cells, and the interval is the union
of the run of compatible cells around the true value. A boundary between two grid points is thus
known to within half a grid step, so certificate containment is checked with that tolerance.
Certified segments are clipped to the swept range, since nothing outside it is looked at.

Grid points are ordinary engine inputs with their own ids (``input_id · (G+1) + k``, k < G for grid
point k and k = G for the true value), so each has its own counter-based noise stream; they are fed
in bounded slices to :class:`rpdist.privacy.staged.StagedPredict` (pilot stages that settle the cells
far from the boundary, then :func:`rpdist.smoothing.job.predict` with N samples for the rest), so a
huge grid streams through memory.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rpdist.smoothing import stats
from rpdist.errors import InputError
from rpdist.privacy.adversary import restricted_mean
from rpdist.privacy.posterior import DEFAULT_LEVEL, KdePrior, check_level, posterior_summary, predict_likelihood
from rpdist.privacy.staged import DEFAULT_PILOT, StagedPredict, check_pilot

ABSTAIN = -1
BASE, SMOOTHED = "base", "smoothed"
NEUTRAL, DISTINCT = "neutral", "distinct"  # abstain rules no label out | abstain is one more label
DEFAULT_GRID_BATCH = 50_000  # grid points per PREDICT call: bounds the driver's memory
MAX_GRID_POINTS = 100_000_000  # per input: one int8 release each must fit in memory

COLUMNS = [
    "input_id", "release_model", "sigma", "n", "alpha", "attribute", "attribute_value", "attribute_scale",
    "released_label", "compatible_length", "interval_low", "interval_high", "radius", "certified_low",
    "certified_high", "adversary_estimate", "abs_error", "posterior_hdi_length", "posterior_mean",
    "posterior_abs_error", "posterior_true_ratio",
]
EXTRA_COLUMNS = ["label", "correct", "certified_label", "n0", "seed", "grid_step", "grid_points", "abstain_rule",
                 "posterior_level", "pilot", "settled_cells", "grid_samples"]


# ---------------------------------------------------------------------------------------------
# Attribute and grid


def numeric_attributes(feature_names, train_raw: np.ndarray) -> list[str]:
    """Features with more than two distinct training values: a one-hot or binary column cannot be swept."""
    return [name for j, name in enumerate(feature_names) if len(np.unique(train_raw[:, j])) > 2]


def resolve_attribute(feature_names, train_raw: np.ndarray, attribute: str) -> int:
    """Column index of a numeric ``attribute``; one clear InputError for unknown or non-numeric ones."""
    names = list(feature_names)
    numeric = numeric_attributes(names, train_raw)
    if attribute not in names:
        encoded = [f for f in names if f.startswith(f"{attribute}_")]
        if encoded:
            raise InputError(
                f"attribute {attribute!r} is not numeric (it is one-hot encoded as {', '.join(encoded)}); "
                f"numeric attributes: {', '.join(numeric)}"
            )
        raise InputError(f"unknown attribute {attribute!r}; numeric attributes: {', '.join(numeric)}")
    if attribute not in numeric:
        raise InputError(
            f"attribute {attribute!r} is not numeric (a binary/one-hot column); numeric attributes: {', '.join(numeric)}"
        )
    return names.index(attribute)


def check_abstain_rule(rule: str) -> str:
    if rule not in (NEUTRAL, DISTINCT):
        raise InputError(f"--abstain-rule must be {NEUTRAL!r} or {DISTINCT!r}, got {rule!r}")
    return rule


def attribute_grid(low: float, high: float, step: float) -> np.ndarray:
    """low, low+step, … ≤ high in raw units; refuses a step ≤ 0 and grids beyond MAX_GRID_POINTS."""
    if isinstance(step, bool) or not isinstance(step, (int, float, np.floating)) or not math.isfinite(step) or step <= 0:
        raise InputError(f"grid step must be a finite number > 0, got {step!r}")
    count = math.floor((high - low) / step + 1e-9) + 1
    if count > MAX_GRID_POINTS:
        raise InputError(
            f"grid step {step!r} gives {count:,} points per input over [{low:g}, {high:g}]; "
            f"at most {MAX_GRID_POINTS:,} are supported"
        )
    return low + step * np.arange(count, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Compatible sets (pure numpy: testable on hand-made release vectors)


def compatible_set(values: np.ndarray, releases: np.ndarray, true_index: int, neutral: int | None = None) -> dict:
    """Compatible length, the interval around the true value, and the cells, for one input.

    ``values`` are the swept raw values (any order, the true value among them at ``true_index``),
    ``releases`` the release at each. A ``neutral`` release (the smoothed model's abstain) rules no
    label out: its cells are compatible with any released label, and only with a neutral release
    among themselves. Returns ``length``, ``low``, ``high``, ``edges`` (cell boundaries of the
    sorted values) and ``mask`` (compatible cells, sorted order).
    """
    values = np.asarray(values, dtype=np.float64)
    releases = np.asarray(releases)
    order = np.argsort(values, kind="stable")
    v, r = values[order], releases[order]
    t = int(np.flatnonzero(order == true_index)[0])
    edges = np.concatenate([v[:1], 0.5 * (v[1:] + v[:-1]), v[-1:]])
    released = releases[true_index]
    mask = r == released
    if neutral is not None and released != neutral:
        mask |= r == neutral
    widths = np.diff(edges)
    a = t
    while a > 0 and mask[a - 1]:
        a -= 1
    b = t
    while b < len(mask) - 1 and mask[b + 1]:
        b += 1
    return {"length": float(widths[mask].sum()), "low": float(edges[a]), "high": float(edges[b + 1]),
            "edges": edges, "mask": mask}


def containment(df: pd.DataFrame, tolerance: float | None = None) -> float:
    """Share of certified smoothed rows whose certified segment lies inside their interval.

    ``tolerance`` defaults to half of each row's grid step (the grid's resolution). NaN when no
    row is certified.
    """
    rows = df[(df["release_model"] == SMOOTHED) & df["certified_low"].notna()]
    if rows.empty:
        return float("nan")
    tol = rows["grid_step"].to_numpy() / 2 if tolerance is None else tolerance
    inside = (rows["certified_low"].to_numpy() >= rows["interval_low"].to_numpy() - tol) & (
        rows["certified_high"].to_numpy() <= rows["interval_high"].to_numpy() + tol)
    return float(inside.mean())


# ---------------------------------------------------------------------------------------------
# The sweep


class _BaseReleases:
    """The base model's argmax label: one noise-free forward pass on the driver, in slices."""

    def __init__(self, model_ref, input_shape):
        import torch

        self.torch = torch
        self.model = model_ref.load("cpu")
        self.shape = tuple(input_shape)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        out = np.empty(len(X), dtype=np.int64)
        with self.torch.inference_mode():
            for start in range(0, len(X), 65536):
                part = self.torch.from_numpy(np.ascontiguousarray(X[start:start + 65536]).reshape(-1, *self.shape))
                out[start:start + len(part)] = self.model(part).argmax(dim=1).numpy()
        return out


def rap_analysis(model, X: np.ndarray, y, input_ids, *, prior: np.ndarray, column: int, attribute: str,
                 mean: float, scale: float, sigma: float, n: int, alpha: float, n0: int = 100,
                 grid_step: float = 0.1, seed: int = 0, batch_size: int | None = None,
                 workers: int | None = None, address: str | None = None, device: str | None = None,
                 grid_batch: int = DEFAULT_GRID_BATCH, abstain_rule: str = NEUTRAL,
                 posterior_level: float = DEFAULT_LEVEL, grid_range: tuple[float, float] | None = None,
                 pilot: int = DEFAULT_PILOT, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RAP rows (one per input and release model) and the release-rate curve over the grid.

    ``X`` is what the model sees (standardised); ``column`` the attribute's index in the flattened
    features; ``mean``/``scale`` its standardisation (raw = X·scale + mean); ``prior`` the training
    values of the attribute in raw units, the adversary's prior; they also set the grid's range unless
    ``grid_range`` = (low, high) in raw units is given (``run_rap`` passes the range observed in the
    whole dataset).
    ``abstain_rule`` = ``distinct`` makes an abstain cell incompatible with a released label: the
    literal reading, with smaller compatible sets, under which certified segments may end short.
    ``posterior_level`` is the credible level of the posterior's highest-density length
    (:mod:`rpdist.privacy.posterior`; the posterior columns are NaN for models with more than two classes).
    ``pilot``: samples of the first pilot stage that settles grid cells far from the boundary before
    they would get N (:mod:`rpdist.privacy.staged`; 0: every cell gets N). Rows record the cells
    settled and the PREDICT samples drawn per input (``settled_cells``, ``grid_samples``).
    """
    from rpdist.privacy.mechanisms import Predict
    from rpdist.smoothing.job import as_model_ref, certify, check_inputs

    X, y, input_ids = check_inputs(X, y, input_ids)
    check_abstain_rule(abstain_rule)
    pilot = check_pilot(pilot)
    posterior_level = check_level(posterior_level)
    if isinstance(grid_batch, bool) or not isinstance(grid_batch, (int, np.integer)) or grid_batch < 1:
        raise InputError(f"grid batch must be a whole number >= 1, got {grid_batch!r}")
    prior = np.asarray(prior, dtype=np.float64)
    posterior = _Posterior(KdePrior(prior), Predict(n, alpha), posterior_level)
    low, high = (float(prior.min()), float(prior.max())) if grid_range is None else map(float, grid_range)
    grid = attribute_grid(low, high, grid_step)
    G = len(grid)
    stride = G + 1
    if int(input_ids.max()) >= (2**63 - 1) // stride - 1:
        raise InputError(f"input ids up to {int(input_ids.max())} times {stride} grid points overflow 64-bit ids")
    shape = X.shape[1:]
    flat = X.reshape(len(X), -1)
    true_raw = flat[:, column].astype(np.float64) * scale + mean
    model_ref = as_model_ref(model, X)
    base_release = _BaseReleases(model_ref, shape)
    staged = StagedPredict(model_ref, sigma=sigma, n=n, alpha=alpha, seed=seed, pilot=pilot, batch_size=batch_size,
                           workers=workers, address=address, device=device, progress=progress)

    # CERTIFY's estimation counts at the true inputs bound the released label's probability.
    cert = certify(model_ref, X, y, sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, batch_size=batch_size,
                   workers=workers, address=address, input_ids=input_ids, device=device, progress=progress)

    estimation = np.stack(cert["counts"].to_numpy()) if len(cert) else np.zeros((0, 1), dtype=np.int64)
    certificate = _ReleasedCertificate(estimation, n=n, alpha=alpha, sigma=sigma)
    rows: list[dict] = []
    curve = {m: np.zeros((G, 3), dtype=np.int64) for m in (BASE, SMOOTHED)}  # class-1, abstain, total
    buffers: dict[int, dict[str, np.ndarray]] = {}
    total = len(X) * stride
    for start in range(0, total, grid_batch):
        index = np.arange(start, min(start + grid_batch, total), dtype=np.int64)
        i, k = index // stride, index % stride
        on_grid = k < G
        raw = np.where(on_grid, grid[np.minimum(k, G - 1)], true_raw[i])
        points = flat[i].copy()
        points[:, column] = ((raw - mean) / scale).astype(np.float32)
        points = points.reshape(len(points), *shape)
        ids = input_ids[i] * stride + k
        released = {BASE: base_release(points)}
        released[SMOOTHED], counts, spent, settled = staged(points, ids, on_grid)
        for model_name, values in released.items():
            g = k[on_grid]
            np.add.at(curve[model_name][:, 0], g, values[on_grid] == 1)
            np.add.at(curve[model_name][:, 1], g, values[on_grid] == ABSTAIN)
            np.add.at(curve[model_name][:, 2], g, 1)
        for row in np.unique(i):
            sel = i == row
            if int(row) not in buffers:
                buffers[int(row)] = {m: np.full(stride, -2, dtype=np.int64) for m in (BASE, SMOOTHED)}
                buffers[int(row)]["counts"] = np.zeros((stride, counts.shape[1]), dtype=np.int64)
                buffers[int(row)]["spent"] = np.zeros(stride, dtype=np.int64)
                buffers[int(row)]["settled"] = np.zeros(stride, dtype=bool)
            buf = buffers[int(row)]
            for model_name, values in released.items():
                buf[model_name][k[sel]] = values[sel]
            buf["counts"][k[sel]] = counts[sel]
            buf["spent"][k[sel]], buf["settled"][k[sel]] = spent[sel], settled[sel]
            if k[sel][-1] == stride - 1:  # slices run in order, so this input is complete
                rows.extend(_input_rows(int(row), buffers.pop(int(row)), grid, true_raw, prior, certificate, y,
                                         input_ids, scale, abstain_rule, posterior))

    table = pd.DataFrame(rows)
    params = {"sigma": float(sigma), "n": int(n), "alpha": float(alpha), "attribute": attribute,
              "attribute_scale": float(scale), "n0": int(n0), "seed": int(seed), "grid_step": float(grid_step),
              "grid_points": int(G), "abstain_rule": abstain_rule, "posterior_level": posterior_level,
              "pilot": pilot}
    for key, value in params.items():
        table[key] = value
    table = table[COLUMNS + EXTRA_COLUMNS]
    curves = []
    for model_name, c in curve.items():
        curves.append(pd.DataFrame({
            "release_model": model_name, "attribute_value": grid, "positive_rate": c[:, 0] / np.maximum(c[:, 2], 1),
            "abstain_rate": c[:, 1] / np.maximum(c[:, 2], 1), "inputs": c[:, 2], "sigma": float(sigma),
            "n": int(n), "alpha": float(alpha), "attribute": attribute}))
    return table, pd.concat(curves, ignore_index=True)


def input_posterior(model, x: np.ndarray, input_id: int, *, prior: np.ndarray, column: int, mean: float,
                    scale: float, grid: np.ndarray, sigma: float, n: int, alpha: float, seed: int = 0,
                    release_model: str = SMOOTHED, pilot: int = DEFAULT_PILOT, batch_size: int | None = None,
                    workers: int | None = None, address: str | None = None, device: str | None = None) -> dict:
    """The per-cell posterior of one input of a run, recomputed (for plots): same grid, same ids and
    pilot stages, so the smoothed release sees the run's own noise. Returns :func:`rpdist.privacy.posterior.cell_posterior`'s
    dict plus ``released`` and ``true_value``."""
    from rpdist.privacy.mechanisms import Predict
    from rpdist.privacy.posterior import cell_posterior
    from rpdist.smoothing.job import as_model_ref

    x = np.asarray(x, dtype=np.float32)
    shape = x.shape
    flat = x.reshape(1, -1)
    G = len(grid)
    values = np.append(grid, float(flat[0, column]) * scale + mean)
    points = np.repeat(flat, G + 1, axis=0)
    points[:, column] = ((values - mean) / scale).astype(np.float32)
    points = points.reshape(G + 1, *shape)
    ref = as_model_ref(model, points)
    if release_model == BASE:
        releases = _BaseReleases(ref, shape)(points)
        likelihood = (releases == releases[-1]).astype(np.float64)
    else:
        staged = StagedPredict(ref, sigma=sigma, n=n, alpha=alpha, seed=seed, pilot=pilot, batch_size=batch_size,
                               workers=workers, address=address, device=device)
        ids = int(input_id) * (G + 1) + np.arange(G + 1, dtype=np.int64)
        releases, counts, _, _ = staged(points, ids, np.arange(G + 1) < G)
        likelihood = predict_likelihood(Predict(n, alpha), counts, int(releases[-1]), ABSTAIN)
    out = cell_posterior(values, likelihood, KdePrior(prior))
    out.update({"released": int(releases[-1]), "true_value": float(values[-1])})
    return out


TYPICAL_QUANTILES = (0.25, 0.5, 0.75)  # of the smoothed HDI length: the inputs whose posteriors are kept


def typical_inputs(table: pd.DataFrame, quantiles=TYPICAL_QUANTILES) -> list[tuple[float, int]]:
    """(quantile, input id) of the smoothed rows at those quantiles of the HDI length (ties broken by
    input id, so the choice is deterministic); an input picked twice is kept once, at its first quantile."""
    rows = table[(table["release_model"] == SMOOTHED) & table["posterior_hdi_length"].notna()]
    rows = rows.sort_values(["posterior_hdi_length", "input_id"], kind="stable")
    picks: list[tuple[float, int]] = []
    for q in quantiles:
        if len(rows):
            input_id = int(rows["input_id"].iloc[int(math.floor(q * (len(rows) - 1) + 0.5))])
            if input_id not in {i for _, i in picks}:
                picks.append((float(q), input_id))
    return picks


def typical_posteriors(model, table: pd.DataFrame, X: np.ndarray, input_ids: np.ndarray, *, grid: np.ndarray,
                       **options) -> pd.DataFrame:
    """Per-cell prior, likelihood and posterior of the :func:`typical_inputs` of one model's ``table``, base
    and smoothed, recomputed by :func:`input_posterior` with the run's own noise ids, so a report can draw
    them without running a model. ``options``: :func:`input_posterior`'s keywords but the input's own."""
    X = np.asarray(X)
    frames = []
    rows = table.set_index(["input_id", "release_model"])
    for quantile, input_id in typical_inputs(table):
        x = X[int(np.flatnonzero(np.asarray(input_ids) == input_id)[0])]
        for model_name in (BASE, SMOOTHED):
            post = input_posterior(model, x, input_id, grid=grid, release_model=model_name, **options)
            frames.append(pd.DataFrame({
                "quantile": quantile, "input_id": input_id, "release_model": model_name,
                "released_label": post["released"], "true_value": post["true_value"],
                "posterior_hdi_length": float(rows.loc[(input_id, model_name), "posterior_hdi_length"]),
                "cell": np.arange(len(post["prior"]), dtype=np.int64), "cell_low": post["edges"][:-1],
                "cell_high": post["edges"][1:], "prior": post["prior"], "likelihood": post["likelihood"],
                "posterior": post["posterior"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class _ReleasedCertificate:
    """Radius of the label released at each true value, from CERTIFY's estimation counts."""

    def __init__(self, estimation: np.ndarray, *, n: int, alpha: float, sigma: float):
        self.estimation, self.n, self.alpha, self.sigma = estimation, n, alpha, sigma

    def __call__(self, row: int, released: int) -> tuple[int, float]:
        _, _, radius, label = stats.certify_label(np.array([released]), self.estimation[row:row + 1], self.n,
                                                  self.alpha, self.sigma)
        return int(label[0]), float(radius[0])


class _Posterior:
    """The Bayes adversary's posterior for one input and release model (:mod:`rpdist.privacy.posterior`)."""

    def __init__(self, prior: KdePrior, mechanism, level: float):
        self.prior, self.mechanism, self.level = prior, mechanism, level

    def __call__(self, values, releases, counts, model_name: str) -> dict:
        true_index = len(values) - 1
        label = int(releases[true_index])
        if model_name == BASE:
            likelihood = (releases == label).astype(np.float64)
        elif counts.shape[1] == 2:
            likelihood = predict_likelihood(self.mechanism, counts, label, ABSTAIN)
        else:
            return {key: float("nan") for key in ("hdi_length", "mean", "abs_error", "true_ratio")}
        return posterior_summary(values, likelihood, true_index, self.prior, self.level)


def _input_rows(row, releases, grid, true_raw, prior, certificate, y, input_ids, scale, abstain_rule,
                posterior) -> list[dict]:
    """The base and smoothed rows of one input whose sweep is complete."""
    s = float(true_raw[row])
    values = np.append(grid, s)
    G = len(grid)
    out = []
    for model_name in (BASE, SMOOTHED):
        rel = releases[model_name]
        neutral = ABSTAIN if model_name == SMOOTHED and abstain_rule == NEUTRAL else None
        cs = compatible_set(values, rel, G, neutral=neutral)
        estimate = restricted_mean(prior, cs["edges"], cs["mask"])
        label = int(rel[G])
        record = {
            "input_id": int(input_ids[row]), "release_model": model_name, "attribute_value": s,
            "released_label": label, "compatible_length": cs["length"], "interval_low": cs["low"],
            "interval_high": cs["high"], "radius": float("nan"), "certified_low": float("nan"),
            "certified_high": float("nan"), "certified_label": None, "adversary_estimate": estimate,
            "abs_error": abs(estimate - s), "label": None if y is None else int(y[row]),
            "correct": None if y is None else bool(label == int(y[row])),
            "settled_cells": int(releases["settled"].sum()) if model_name == SMOOTHED else 0,
            "grid_samples": int(releases["spent"].sum()) if model_name == SMOOTHED else 0,
        }
        post = posterior(values, rel, releases["counts"], model_name)
        record.update({"posterior_hdi_length": post["hdi_length"], "posterior_mean": post["mean"],
                       "posterior_abs_error": post["abs_error"], "posterior_true_ratio": post["true_ratio"]})
        if model_name == SMOOTHED:
            record["certified_label"], record["radius"] = certificate(row, label)
            if record["certified_label"] != ABSTAIN:
                half = record["radius"] * float(scale)
                record["certified_low"] = max(s - half, float(cs["edges"][0]))
                record["certified_high"] = min(s + half, float(cs["edges"][-1]))
        out.append(record)
    return out


def release_advantage(rows: pd.DataFrame) -> float:
    """Median over certified smoothed rows of a sound bound on the PREDICT release's single-query
    advantage (TV/2) against any input within the row's certified radius (each with confidence
    1 − α; :mod:`rpdist.privacy.bounds`). NaN when no row is certified.

    This replaces the α/2 once reported here: α/2 is a statement about the smoothed classifier, not
    about PREDICT, whose abstain probability changes inside the certified ball.
    """
    from rpdist.privacy.bounds import Certificate, advantage_bound
    from rpdist.privacy.mechanisms import Predict

    rows = rows[(rows["release_model"] == SMOOTHED) & (rows["radius"] > 0)]
    if rows.empty:
        return float("nan")
    values = []
    for (n, alpha), part in rows.groupby(["n", "alpha"]):
        mech = Predict(int(n), float(alpha))
        for r, s in zip(part["radius"].to_numpy(), part["sigma"].to_numpy()):
            values.append(advantage_bound(mech, Certificate.from_radius(r, s, alpha), r, s, tol=1e-3).advantage)
    return float(np.median(values))


BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 2000, 0
# summary key -> (row column, statistic): each gets a 95% percentile bootstrap interval over inputs
_WITH_INTERVALS = {
    "median_compatible_length": ("compatible_length", np.median),
    "adversary_mae": ("abs_error", np.mean),
    "median_hdi_length": ("posterior_hdi_length", np.median),
    "posterior_mae": ("posterior_abs_error", np.mean),
}


def _estimate(record: dict, key: str, values, statistic) -> None:
    """``record[key]`` = the statistic of the non-NaN values, with its seeded bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    record[key] = float(statistic(values)) if values.size else float("nan")
    record[f"{key}_low"], record[f"{key}_high"] = stats.bootstrap_interval(
        values, statistic, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)


def _with_interval(record: dict, part: pd.DataFrame, key: str) -> None:
    column, statistic = _WITH_INTERVALS[key]
    # rows written before the posterior existed have no such column: NaN, without an interval
    _estimate(record, key, part[column] if column in part.columns else [], statistic)


# Smoothed minus base, paired by input (same person, same side information): > 0 means the smoothed
# release leaves the adversary less precise. Per-row intervals of two releases overlap long before a
# paired difference stops excluding 0, so the comparison gets an interval of its own.
_VERSUS_BASE = {"posterior_mae_vs_base": "posterior_abs_error", "hdi_length_vs_base": "posterior_hdi_length"}


def _versus_base(record: dict, part: pd.DataFrame, base: pd.DataFrame | None) -> None:
    """Mean paired difference (smoothed − base) with its percentile bootstrap interval over inputs."""
    for key, column in _VERSUS_BASE.items():
        diff = []
        if base is not None and column in part.columns and "input_id" in part.columns:
            pairs = part[["input_id", column]].merge(base[["input_id", column]], on="input_id", suffixes=("", "_base"))
            pairs = pairs.sort_values("input_id", kind="stable")  # the interval must not depend on row order
            diff = pairs[column] - pairs[f"{column}_base"]
        _estimate(record, key, diff, np.mean)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per (l1 penalty, release model): median compatible length, adversary MAE, the posterior's median
    HDI length and MAE (each with a seeded 95% percentile bootstrap interval over inputs), utility, the
    median posterior/prior ratio of the true cell, and the median sound advantage bound of the smoothed
    release at its certified radius; on smoothed rows, the posterior's MAE and HDI length minus the base
    model's, paired by input, with bootstrap intervals. ``containment`` is a check of the certificate
    machinery (a certified segment should lie in its interval), not a privacy measure."""
    keys = [c for c in ("dataset", "l1_non_sensitive", "sigma", "n", "alpha", "grid_step", "abstain_rule",
                        "posterior_level")
            if c in df.columns] + ["release_model"]
    groups = dict(iter(df.groupby(keys, sort=True, dropna=False)))
    out = []
    for key, part in groups.items():
        record = dict(zip(keys, key))
        record["inputs"] = int(len(part))
        for name in _WITH_INTERVALS:
            _with_interval(record, part, name)
        record.update({
            "mean_compatible_length": float(part["compatible_length"].mean()),
            "median_true_ratio": float(part["posterior_true_ratio"].median())
            if "posterior_true_ratio" in part.columns else float("nan"),
            "accuracy": float(part["correct"].fillna(False).astype(bool).mean()),
            "abstain_rate": float((part["released_label"] == ABSTAIN).mean()),
            "certified_rate": float(part["certified_low"].notna().mean()) if record["release_model"] == SMOOTHED else float("nan"),
            "median_certified_half_width": _median_half_width(part) if record["release_model"] == SMOOTHED else float("nan"),
            "containment": containment(part) if record["release_model"] == SMOOTHED else float("nan"),
            "median_release_advantage": release_advantage(part) if record["release_model"] == SMOOTHED else float("nan"),
        })
        if record["release_model"] == SMOOTHED:
            _versus_base(record, part, groups.get((*key[:-1], BASE)))
        out.append(record)
    return pd.DataFrame(out)


def _median_half_width(part: pd.DataFrame) -> float:
    """Median of radius × the attribute's scale over the certified rows (raw units of the attribute)."""
    certified = part["certified_low"].notna()
    return float((part["radius"] * part["attribute_scale"])[certified].median()) if certified.any() else float("nan")
