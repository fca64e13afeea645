"""Issue 13's baselines and measures for model inversion: random abstention, Gaussian input noise (N = 1),
the abstain-aware attacker, the paper-protocol ASR and ASR − start ASR with Tango's paired score interval."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binomtest, norm

from rpdist.attacks.brep import ABSTAIN, BrepAttack, BrepConfig, run_lockstep
from rpdist.defenses.releases import KEYED, NoiseKey, RandomAbstention
from rpdist.errors import InputError
from rpdist.models.refs import ModelRef
from rpdist.smoothing.stats import paired_difference

KEY = NoiseKey(bytes(range(32)), "random")  # a fixed key for tests only; the library has none


@pytest.fixture(scope="module")
def constant_ref():
    """A linear model that always says class 2 of 4 (bias only)."""
    return ModelRef.from_state_dict("linear", {"in_features": 4, "num_classes": 4},
                                    {"linear.weight": torch.zeros(4, 4), "linear.bias": torch.tensor([0., 0., 5., 0.])})


# --- random abstention ------------------------------------------------------------------------------------------


def test_random_abstention_abstains_at_its_rate_and_otherwise_gives_the_label(constant_ref):
    rel = RandomAbstention(constant_ref, 0.3, seed=5)
    labels = rel(np.zeros((20000, 4), np.float32), np.arange(20000))
    assert set(labels.tolist()) == {2, ABSTAIN}
    # Exact binomial test of the abstain count against the rate (false alarm 1e-3 for a correct release).
    assert binomtest(int((labels == ABSTAIN).sum()), 20000, 0.3).pvalue > 1e-3
    assert rel.forward_passes == 20000
    order = np.random.default_rng(0).permutation(20000)[:500]  # a function of (seed, id), not of batching
    assert np.array_equal(rel(np.zeros((500, 4), np.float32), order), labels[order])
    assert (RandomAbstention(constant_ref, 0.0, seed=5)(np.zeros((100, 4), np.float32), np.arange(100)) == 2).all()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="abstain rate"):
            RandomAbstention(constant_ref, bad)


def test_keyed_random_abstention_answers_a_repeated_query_alike(constant_ref):
    x = np.random.default_rng(1).random((400, 4)).astype(np.float32) * 50  # about one point per cell
    keyed = RandomAbstention(constant_ref, 0.5, seed=0, noise=KEYED, key=KEY)
    first = keyed(x, np.arange(400))
    assert np.array_equal(keyed(x, np.arange(400, 800)), first)  # the caller's ids are ignored
    assert binomtest(int((first == ABSTAIN).sum()), 400, 0.5).pvalue > 1e-3  # still the rate over cells
    fresh = RandomAbstention(constant_ref, 0.5, seed=0)
    assert not np.array_equal(fresh(x, np.arange(400, 800)), fresh(x, np.arange(400)))


# --- Gaussian input noise, N = 1 ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_noisy_input_release_gives_label_one_with_probability_phi_d_over_sigma(ray_session, linear_model):
    """One forward pass on x + N(0, σ²I) of a linear classifier says 1 with probability Φ(d/σ) exactly."""
    from rpdist.defenses.releases import NoisyInputRelease

    ref = ModelRef.from_module(linear_model.module, torch.zeros(1, 5))
    sigma, m = 0.5, 3000
    x = linear_model.inputs_at_distances(np.array([0.2]))
    rel = NoisyInputRelease(ref, sigma, seed=11, workers=1)
    labels = rel(np.repeat(x, m, axis=0), np.arange(m))
    assert set(labels.tolist()) <= {0, 1} and rel.forward_passes == m
    p = float(norm.cdf(0.2 / sigma))
    assert binomtest(int((labels == 1).sum()), m, p).pvalue > 1e-3
    assert abs((labels == 1).mean() - 0.5) > 0.1  # and it is not a fair coin (p = 0.655; sd 0.009)
    # Counter-based noise: the answer to a query id does not depend on its batch.
    some = np.array([5, 2999, 17, 0])
    assert np.array_equal(rel(np.repeat(x, 4, axis=0), some), labels[some])
    keyed = NoisyInputRelease(ref, sigma, seed=11, workers=1, noise=KEYED, key=KEY)
    answers = [keyed(np.repeat(x, 3, axis=0), np.arange(k, k + 3)) for k in (0, 100)]
    assert len(set(np.concatenate(answers).tolist())) == 1 and keyed.forward_passes == 2  # one pass per call


@pytest.mark.slow
def test_certify_release_is_certify_output_and_charges_selection_samples(ray_session, linear_model):
    """The certify release answers with CERTIFY's prediction (−1 where it abstains) for the query's own
    noise stream, and costs n0 + N forward passes per query."""
    from rpdist.defenses.releases import CERTIFY_N0, SmoothedRelease
    from rpdist.smoothing.job import certify

    ref = ModelRef.from_module(linear_model.module, torch.zeros(1, 5))
    sigma, n = 0.5, 200
    x = linear_model.inputs_at_distances(np.array([0.0, 0.0, 1.5, -1.5]) * sigma)
    ids = np.array([3, 4, 5, 6])
    rel = SmoothedRelease(ref, sigma, n, release="certify", seed=9, workers=1)
    labels = rel(x, ids)
    direct = certify(ref, x, sigma=sigma, n0=CERTIFY_N0, n=n, seed=9, input_ids=ids, workers=1)
    assert np.array_equal(labels, direct["prediction"].to_numpy())
    assert labels[0] == labels[1] == ABSTAIN  # p_A = 1/2 on the boundary: certified only by an α-event
    assert labels[2] == linear_model.label(x[2:3])[0] and labels[3] == linear_model.label(x[3:4])[0]
    assert rel.forward_passes == 4 * (CERTIFY_N0 + n)


# --- the abstain-aware attacker -----------------------------------------------------------------------------------


class Band:
    """Class 1 where the first coordinate is > 1.2, abstain in (0.8, 1.2], class 0 below (a PREDICT-like band)."""

    def __init__(self, band=True):
        self.band, self.forward_passes = band, 0

    def __call__(self, images, ids):
        self.forward_passes += len(images)
        v = images[:, 0]
        out = np.where(v > 1.2, 1, 0)
        return np.where((v > 0.8) & (v <= 1.2), ABSTAIN, out) if self.band else out


def _walk(aware: bool, release, seed=0):
    a = BrepAttack(1, 0, 4, BrepConfig(budget=300, points=8, radius=0.6, abstain_aware=aware), seed=seed)
    run_lockstep([a], lambda z: z.copy(), release)
    return a


def test_abstain_aware_attacker_equals_plain_without_abstentions():
    plain, aware = _walk(False, Band(band=False)), _walk(True, Band(band=False))
    assert np.array_equal(plain.result(), aware.result()) and plain.queries == aware.queries
    assert aware.shrunk == 0


def test_abstain_aware_attacker_shrinks_after_abstaining_candidates_and_weights_abstentions():
    aware = _walk(True, Band())
    assert aware.found and aware.result()[0] > 1.2  # the walk still ends inside the class, past the band
    # Sphere rule: an abstaining point repels with weight abstain_weight, one labelled otherwise with 1.
    a = BrepAttack(1, 0, 2, BrepConfig(abstain_aware=True, abstain_weight=0.25), seed=0)
    a.z, a.phase = np.zeros(2), "sphere"
    a.propose()
    a._pending = np.array([[1.0, 0.0], [0.0, 1.0]] * 4)
    a.observe(np.array([ABSTAIN, 0] * 4), None)
    direction = (a._candidate - a.z) / np.linalg.norm(a._candidate - a.z)
    assert direction == pytest.approx(-np.array([0.25, 1.0]) / np.hypot(0.25, 1.0))
    # Check rule: an abstaining candidate shrinks the radius (not below min_radius); another class keeps it.
    before = a.radius
    a.observe(np.array([ABSTAIN]), None)
    assert a.radius == pytest.approx(before * a.config.abstain_shrink) and a.phase == "sphere"
    a.phase = "check"
    a.observe(np.array([0]), None)
    assert a.radius == pytest.approx(before * a.config.abstain_shrink)


# --- summary: paired difference and the paper protocol ------------------------------------------------------------


def _tango_independently(x, y, alpha=0.05, step=1e-4):
    """Tango's score interval by brute force: on a grid of Δ, the restricted MLE of P(y only) by numeric
    maximisation of the multinomial likelihood, the score statistic, and the extremes of |T| ≤ z."""
    from scipy.optimize import minimize_scalar

    n, b, c = len(x), int((x & ~y).sum()), int((~x & y).sum())
    m, z = n - b - c, norm.ppf(1 - alpha / 2)

    def restricted_q(delta):
        lo, hi = max(0.0, -delta), (1 - delta) / 2
        if hi - lo < 1e-12:
            return lo
        nll = lambda q: -(b * np.log(max(q + delta, 1e-300)) + c * np.log(max(q, 1e-300))  # noqa: E731
                          + m * np.log(max(1 - 2 * q - delta, 1e-300)))
        return minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x

    def accepted(grid):
        out = []
        for delta in grid:
            var = n * (2 * restricted_q(delta) + delta * (1 - delta))
            gap = b - c - n * delta
            out.append(abs(gap) <= z * np.sqrt(var) if var > 0 else abs(gap) < 1e-9)
        return grid[np.array(out)]

    coarse = accepted(np.linspace(-1 + 1e-9, 1 - 1e-9, 201))  # a 0.01 grid, then 1e-4 steps across each end
    lows = accepted(np.arange(coarse.min() - 0.01, coarse.min() + step / 2, step).clip(-1 + 1e-9))
    highs = accepted(np.arange(coarse.max(), coarse.max() + 0.01 + step / 2, step).clip(None, 1 - 1e-9))
    return (b - c) / n, lows.min(), highs.max()


@pytest.mark.parametrize("a, b, c, d", [(10, 15, 5, 20), (25, 4, 0, 1), (0, 0, 0, 30), (13, 0, 0, 17), (3, 0, 7, 0)])
def test_paired_difference_matches_an_independent_computation(a, b, c, d):
    x = np.array([1] * a + [1] * b + [0] * c + [0] * d, dtype=bool)
    y = np.array([1] * a + [0] * b + [1] * c + [0] * d, dtype=bool)
    diff, low, high = paired_difference(x, y)
    ref = _tango_independently(x, y)
    assert diff == ref[0] and low == pytest.approx(ref[1], abs=2e-4) and high == pytest.approx(ref[2], abs=2e-4)
    assert low < diff < high or (diff == 0 and low < 0 < high)
    if b == c == 0:  # no discordant pair: ±z²/(n + z²), whatever the marginal rate
        z2 = norm.ppf(0.975) ** 2
        assert (low, high) == pytest.approx((-z2 / (len(x) + z2), z2 / (len(x) + z2)), abs=1e-6)


def test_paired_difference_covers_at_its_level():
    """Coverage over 4000 simulated data sets of 30 correlated pairs (p1 = 0.8, p2 = 0.7, 60% agreeing by
    construction): close to nominal, 0.95 ± 3 binomial sd (0.010) either way, as Fagerland et al. (2013) report
    for Tango's interval."""
    rng = np.random.default_rng(0)
    cells = np.array([0.65, 0.15, 0.05, 0.15])  # (1,1), (1,0), (0,1), (0,0): p1 = 0.8, p2 = 0.7
    covered = 0
    for _ in range(4000):
        draw = rng.choice(4, size=30, p=cells)
        x, y = np.isin(draw, (0, 1)), np.isin(draw, (0, 2))
        _, low, high = paired_difference(x, y)
        covered += low <= 0.1 <= high
    assert 0.92 <= covered / 4000 <= 0.98


def _table(rows):
    return pd.DataFrame(rows, columns=["defense", "target", "restart", "found", "success", "start_success",
                                       "eval_confidence", "utility_accuracy", "abstain_rate", "queries",
                                       "forward_passes"])


def test_summary_has_paper_protocol_and_asr_gain():
    from rpdist.analyses.attack import AttackAnalysis, paper_protocol

    rows = [  # target, restart, found, success, start_success, confidence
        (0, 0, True, False, False, 0.40), (0, 1, True, True, False, 0.90), (0, 2, True, False, True, 0.30),
        (1, 0, True, True, True, 0.70), (1, 1, False, False, False, 0.99), (1, 2, True, False, False, 0.20),
        (2, 0, True, False, False, 0.80), (2, 1, True, True, True, 0.60), (2, 2, True, True, True, 0.60),
        (3, 0, False, False, False, 0.10), (3, 1, False, False, False, 0.50), (3, 2, True, True, False, 0.05),
    ]
    table = _table([("rp", t, r, f, s, s0, c, 0.8, 0.1, 100, 100) for t, r, f, s, s0, c in rows])
    # Best confidence per target, among restarts that found a start: 0 → restart 1 (win), 1 → restart 0 (win;
    # restart 1 never found one), 2 → restart 0 (loss), 3 → restart 2 (win).
    assert paper_protocol(table).tolist() == [True, True, False, True]
    (row,) = AttackAnalysis().summarize(table)
    assert row["paper_asr"] == 0.75 and row["paper_classes"] == 4
    exact = binomtest(3, 4).proportion_ci(0.95, method="exact")
    assert (row["paper_asr_low"], row["paper_asr_high"]) == pytest.approx((exact.low, exact.high))
    assert row["asr"] == 5 / 12 and row["start_asr"] == 4 / 12
    assert (row["asr_gain"], row["asr_gain_low"], row["asr_gain_high"]) == pytest.approx(
        _tango_independently(table.success.to_numpy(bool), table.start_success.to_numpy(bool)), abs=2e-4)
    assert row["abstain_rate"] == pytest.approx(0.1)
    assert np.isnan([row["utility_low"], row["utility_high"]]).all()  # no test split size recorded: no interval


def test_summary_gives_utility_its_interval_over_the_test_split():
    """Utility 0.8 over a 359-input test split is 287 correct: the interval is scipy's exact one for 287 of 359,
    and the CLI column shows it."""
    from rpdist.analyses.attack import AttackAnalysis

    table = _table([("rp", t, 0, True, True, True, 0.9, 287 / 359, 0.1, 100, 100) for t in range(4)])
    (row,) = AttackAnalysis().summarize(table.assign(utility_tests=359))
    exact = binomtest(287, 359).proportion_ci(0.95, method="exact")
    assert (row["utility_low"], row["utility_high"]) == pytest.approx((exact.low, exact.high))
    shown = {c.header: c.cell(row) for c in AttackAnalysis.summary_columns}["utility"]
    assert shown == f"79.9% [{100 * exact.low:.1f}, {100 * exact.high:.1f}]"


# --- configs and bad input ------------------------------------------------------------------------------------------


def test_configs_of_the_baselines_and_attackers():
    from rpdist.attacks.inversion import InversionSpec, defense_configs

    abst = defense_configs(InversionSpec(defense="abstain", sigmas=[0.25, 0.5], ns=[100],
                                         attackers=["plain", "abstain-aware"]))
    assert [(c["sigma"], c["n"], c["attacker"]) for c in abst] == [
        (0.25, 100, "plain"), (0.25, 100, "abstain-aware"), (0.5, 100, "plain"), (0.5, 100, "abstain-aware")]
    noise = defense_configs(InversionSpec(defense="noise", sigmas=[0.5]))
    assert [(c["sigma"], c["n"]) for c in noise] == [(0.5, 1)]
    assert len(defense_configs(InversionSpec(defense="rp"))) == 3  # defaults: σ ∈ {0.1, 0.25, 0.5}, N = 200
    with pytest.raises(InputError, match="--defense noise needs --sigma"):
        defense_configs(InversionSpec(defense="noise"))
    with pytest.raises(InputError, match="--n does not apply"):
        defense_configs(InversionSpec(defense="noise", sigmas=[0.5], ns=[100]))


@pytest.mark.parametrize("argv, message", [
    (["--defense", "noise"], "--defense noise needs --sigma"),
    (["--defense", "noise", "--sigma", "0.5", "--n", "100"], "--n does not apply"),
    (["--attacker", "clever"], "--attacker"),
    (["--attacker", "plain", "--attacker", "plain"], "--attacker"),
])
def test_cli_bad_baseline_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, message):
    from rpdist.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["attack", "inversion", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --- end to end (digits) -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_abstain_baseline_matches_the_rp_predict_abstain_rate_end_to_end(ray_session, tmp_path):
    from rpdist.attacks.inversion import InversionSpec, run_inversion

    common = dict(sigmas=[0.5], ns=[20], targets=[0, 1], query_budget=48, points=8, generator_epochs=40, seed=3,
                  workers=1, out=str(tmp_path))
    rp = run_inversion(InversionSpec(defense="rp", releases=["predict", "majority"], run_id="rp", **common)).table()
    ab = run_inversion(InversionSpec(defense="abstain", attackers=["plain", "abstain-aware"], run_id="ab",
                                     **common)).table()
    rate = rp[rp.release == "predict"].abstain_rate.iloc[0]
    assert 0.05 < rate < 0.95 and (rp[rp.release == "majority"].abstain_rate == 0).all()
    n_test = 360  # digits test split: the abstention coin's count is Binomial(360, rate)
    measured = ab.abstain_rate.iloc[0]
    assert binomtest(round(measured * n_test), n_test, rate).pvalue > 1e-3
    assert sorted(set(ab.attacker)) == ["abstain-aware", "plain"] and (ab.forward_passes == ab.queries).all()
    noise = run_inversion(InversionSpec(defense="noise", run_id="noise", **{**common, "ns": None})).table()
    assert (noise.n == 1).all() and (noise.forward_passes == noise.queries).all() and (noise.abstain_rate == 0).all()


class Stop(Exception):
    pass


@pytest.mark.slow
def test_resumed_abstain_baseline_keeps_the_rate_its_saved_classes_ran_at(ray_session, tmp_path, monkeypatch):
    """The matched abstain rate is measured once and recorded in the run's manifest: a resumed run reads it
    rather than measuring again (under a new random noise key it would come out otherwise, and one config's
    classes would run at two rates)."""
    from rpdist.attacks import inversion
    from rpdist.attacks.parts import AttackParts

    spec = inversion.InversionSpec(defense="abstain", sigmas=[0.5], ns=[20], targets=[0, 1], targets_at_once=1,
                                   restarts=1, query_budget=20, points=8, generator_epochs=40, seed=3, workers=1,
                                   out=str(tmp_path), run_id="ab")
    real_save = AttackParts.save

    def stopping(self, *args):
        real_save(self, *args)
        raise Stop

    monkeypatch.setattr(AttackParts, "save", stopping)
    with pytest.raises(Stop):
        inversion.run_inversion(spec)
    manifest = tmp_path / "ab" / "manifest.json"
    recorded = json.loads(manifest.read_text())["details"]["matched_abstain_rates"]
    assert list(recorded) == ["sigma=0.5 n=20 noise=fresh"] and 0 < recorded["sigma=0.5 n=20 noise=fresh"] < 1

    def no_measuring(*args, **kwargs):
        raise AssertionError("the resumed run measured the abstain rate again")

    monkeypatch.setattr(AttackParts, "save", real_save)
    monkeypatch.setattr(inversion, "SmoothedRelease", no_measuring)  # the rate's only source in this run
    inversion.run_inversion(spec)
    assert json.loads(manifest.read_text())["details"]["matched_abstain_rates"] == recorded
