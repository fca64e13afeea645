"""Keyed noise that holds: a secret key from the user (or os.urandom), a key-offset grid that nudges
do not leave, unpredictable fresh seeds, and the nudged-repeat attacker."""

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from rpdist.attacks.brep import BrepAttack, BrepConfig, nudged, run_lockstep
from rpdist.datasets.catalog import load_dataset
from rpdist.defenses.releases import (KEY_ENV, KEY_GRID_SIGMAS, KEYED, NoiseKey, RandomizedResponse, SmoothedRelease,
                                      keyed_ids, noise_key)
from rpdist.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SIGMA = {"insurance": 0.5, "digits": 0.25}  # the σ each built-in model is trained and smoothed at here


def test_grid_offset_is_uniform_so_a_nudge_leaves_its_cell_with_probability_delta_over_width():
    """Oracle, one feature: with an offset uniform over keys, a nudge δ < h changes the cell with
    probability exactly δ/h; 0.37 of 3,000 keys here (a fixed grid would give 0 or 1)."""
    x = np.array([[0.2]], dtype=np.float32)
    changed = sum(keyed_ids(x, k, 2.0)[0] != keyed_ids(x + np.float32(0.74), k, 2.0)[0]
                  for k in (bytes([i % 256, i // 256]) * 16 for i in range(3000)))
    assert binomtest(int(changed), 3000, 0.37).pvalue > 1e-3


def test_grid_is_a_haar_rotation_with_uniform_offset():
    """Oracle, three features: over keys, the cell changes with probability E_R[1 − Π(1 − |(Rδ)_i|/h)] for a
    Haar-random rotation R, estimated with scipy's ortho_group (an independent sampler)."""
    from scipy.stats import ortho_group

    delta = np.array([0.3, -0.1, 0.0])
    R = ortho_group.rvs(3, size=20000, random_state=np.random.default_rng(0))
    expected = float(np.mean(1 - np.prod(1 - np.minimum(np.abs(R @ delta), 1.0), axis=1)))
    x = np.array([[0.2, -1.3, 5.0]], dtype=np.float32)
    moved = (x + delta).astype(np.float32)
    changed = sum(keyed_ids(x, k, 1.0)[0] != keyed_ids(moved, k, 1.0)[0]
                  for k in (bytes([i % 256, i // 256]) * 16 for i in range(3000)))
    assert binomtest(int(changed), 3000, expected).pvalue > 1e-3
    assert abs(expected - (1 - 0.7 * 0.9)) > 0.04  # an axis-aligned grid would be told apart


@pytest.mark.parametrize("dataset", ["insurance", "digits"])
def test_ulp_and_small_nudges_keep_the_noise_id_on_real_inputs(dataset):
    """The noise id (hence the noise) of a test input survives 1-ulp and 1e-3σ nudges in ≥ 99% of
    queries, for 3 fixed keys. Expected change rate ≈ 0.8·√d·‖δ‖₂/(4σ): 0.07% (insurance), 0.16% (digits) at
    1e-3σ, ~0 at 1 ulp; ≥ 1% (4 of 268, 4 of 359) is then a Poisson tail below 1e-3 per key. Hashing the exact
    bytes (the old scheme) changes it in 100%."""
    X = load_dataset(dataset, split="test").X
    flat = X.reshape(len(X), -1)
    cell = KEY_GRID_SIGMAS * SIGMA[dataset]
    for r in range(3):
        key, rng = bytes([r + 1]) * 32, np.random.default_rng(r)
        base = keyed_ids(X, key, cell)
        for delta, ulp in ((0.0, True), (1e-3 * SIGMA[dataset], False)):
            moved = nudged(flat, delta, ulp, rng).reshape(X.shape)
            assert not np.array_equal(moved, X)
            assert (keyed_ids(moved, key, cell) == base).mean() >= 0.99
            assert (keyed_ids(moved, key, 1e-9) != keyed_ids(X, key, 1e-9)).mean() > 0.99  # a bytes-like grid moves


def test_key_comes_from_file_or_environment_else_random(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"correct horse battery staple\n")
    from_file = noise_key(path, environ={})
    from_env = noise_key(None, environ={KEY_ENV: "correct horse battery staple"})
    assert from_file.secret == from_env.secret and len(from_file.secret) == 32  # the trailing newline is not key
    assert (from_file.source, from_env.source) == ("file", "environment")
    assert noise_key(path, environ={KEY_ENV: "another secret of enough length"}).secret == from_file.secret
    a, b = noise_key(None, environ={}), noise_key(None, environ={})
    assert a.source == b.source == "random" and a.secret != b.secret
    for k in (from_file, a):  # what may be recorded never holds the key
        assert k.secret.hex() not in json.dumps(k.describe()) + repr(k)
        assert "correct horse" not in json.dumps(k.describe()) + repr(k)
    with pytest.raises(InputError, match="at least 16"):
        noise_key(None, environ={KEY_ENV: "short"})
    with pytest.raises(InputError, match="cannot read"):
        noise_key(tmp_path / "missing", environ={})


def test_a_resumed_run_refuses_a_key_other_than_the_one_its_saved_classes_ran_under(tmp_path):
    """The manifest's check value names a key without holding it: the same material from a file or the
    environment gives one check value, other material another, so a resume under a changed key file or
    $RPDIST_NOISE_KEY, or without the key it was given, is refused; a run that drew its own key may draw again."""
    from rpdist.attacks.inversion import check_resumed_key
    from rpdist.io.rundir import RunDir

    (tmp_path / "key").write_bytes(b"correct horse battery staple\n")
    given = noise_key(tmp_path / "key", environ={})
    same = noise_key(None, environ={KEY_ENV: "correct horse battery staple"})
    other = noise_key(None, environ={KEY_ENV: "correct horse battery stapler"})
    drawn = noise_key(None, environ={})
    assert given.check == same.check != other.check and len(given.check) == 6
    assert given.check not in given.secret.hex() and "correct" not in json.dumps(given.describe())
    run = RunDir(str(tmp_path), "cut", "attack.parquet")
    check_resumed_key(run, given.describe(), same)  # the same key, now from the environment: resumes
    check_resumed_key(run, {"source": "environment"}, same)  # a manifest from before check values: resumes
    with pytest.raises(InputError, match=f"another noise key \\(check value {given.check}, this key's is {other.check}"):
        check_resumed_key(run, given.describe(), other)
    with pytest.raises(InputError, match="from --noise-key-file; give the same key.*a sweep, another --sweep-id or --out"):
        check_resumed_key(run, given.describe(), drawn)
    with pytest.raises(InputError, match="another noise key"):  # a kept key exists, another is given
        check_resumed_key(run, {**drawn.describe(), "source": "generated"}, given)
    check_resumed_key(run, {**drawn.describe(), "source": "generated"}, noise_key(None, environ={}))  # kept key lost


def test_a_run_without_a_key_keeps_the_one_it_draws_private_and_reads_it_back(tmp_path):
    """stored_key: drawn once, written 0600 even under a permissive umask, the same secret when read back (as a
    --noise-key-file of it gives), and one clear line when it cannot be kept."""
    import os
    import stat

    from rpdist.defenses.releases import stored_key

    path = tmp_path / "keys" / "run.key"
    old = os.umask(0)
    try:
        drawn = stored_key(path)
    finally:
        os.umask(old)
    assert drawn.source == "generated" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0 and [p.name for p in path.parent.iterdir()] == ["run.key"]
    again = stored_key(path)
    assert again.source == "stored" and again.secret == drawn.secret == noise_key(path, environ={}).secret
    assert stored_key(tmp_path / "other.key").secret != drawn.secret
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(InputError, match="cannot keep the noise key"):
        stored_key(tmp_path / "file" / "run.key")


def _constant_keys(tree: ast.AST) -> list[int]:
    """Lines where a key is a literal: key=<constant>, a parameter named *key* defaulting to a string
    or bytes, or an assignment of a literal to a name containing KEY."""
    def literal(node):
        return isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) and node.value != ""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg and "key" in node.arg.lower() and literal(node.value):
            found.append(node.value.lineno)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
            found += [d.lineno for a, d in zip(args, defaults) if d is not None and "key" in a.arg.lower() and literal(d)]
        elif isinstance(node, ast.Assign) and literal(node.value) and isinstance(node.value.value, bytes):
            found += [node.lineno for t in node.targets if isinstance(t, ast.Name) and "key" in t.id.lower()]
    return found


def test_no_constant_key_in_the_library():
    hits = []
    for path in sorted([*ROOT.joinpath("rpdist").rglob("*.py"), *ROOT.joinpath("cli").rglob("*.py")]):
        text = path.read_text()
        assert "rpdist-secret" not in text, path
        hits += [f"{path.relative_to(ROOT)}:{line}" for line in _constant_keys(ast.parse(text))]
    assert hits == []
    # The checker finds the forms a constant key would take.
    assert len(_constant_keys(ast.parse('f(key=b"k")\ndef g(noise_key=b"s"): pass\nKEY = b"x"'))) == 3


def test_fresh_seeds_are_unpredictable_unless_fixed(constant_ref):
    assert RandomizedResponse(constant_ref, 1.0, 4).seed != RandomizedResponse(constant_ref, 1.0, 4).seed
    assert RandomizedResponse(constant_ref, 1.0, 4, seed=3).seed == 3
    assert SmoothedRelease(constant_ref, 0.5, 10).seed != SmoothedRelease(constant_ref, 0.5, 10).seed
    from rpdist.attacks.inversion import InversionSpec, defense_configs, run_secrets

    spec = InversionSpec(defense="rr", epsilons=[1.0])
    configs = defense_configs(spec)
    (s1, src, key), (s2, _, _) = run_secrets(spec, configs), run_secrets(spec, configs)
    assert src == "random" and s1 != s2 and key is None  # no keyed config, no key file: no key
    assert run_secrets(InversionSpec(seed=7, noises=["keyed"]), configs)[:2] == (7, "--seed")


@pytest.fixture(scope="module")
def constant_ref():
    import torch

    from rpdist.models.refs import ModelRef

    return ModelRef.from_state_dict("linear", {"in_features": 4, "num_classes": 4},
                                    {"linear.weight": torch.zeros(4, 4), "linear.bias": torch.tensor([0., 0., 5., 0.])})


class Recorder:
    """A keyed randomized response that also records the images it was asked about."""

    def __init__(self, release):
        self.release, self.images, self.forward_passes = release, [], 0

    def __call__(self, images, ids):
        self.images.append(images.copy())
        self.forward_passes += len(images)
        return self.release(images, ids)


@pytest.mark.parametrize("nudge, ulp", [(0.01, False), (0.0, True)])
def test_nudged_repeats_ask_k_distinct_points_within_delta(nudge, ulp):
    rec = Recorder(lambda images, ids: (images[:, 0] > 1.0).astype(np.int64))
    a = BrepAttack(1, 0, 4, BrepConfig(budget=120, points=8, repeat=3, nudge=nudge, nudge_ulp=ulp), seed=0)
    run_lockstep([a], lambda z: z.copy(), rec)
    assert a.queries == rec.forward_passes and a.queries <= 120 and a.found
    groups = np.concatenate(rec.images).reshape(-1, 3, 4)
    first, others = groups[:, :1], groups[:, 1:]
    assert (others != first).any(axis=2).all()  # every repetition is a different point
    if ulp:
        assert np.array_equal(np.abs(np.nextafter(first, np.inf) - first) >= np.abs(others - first), np.ones_like(others, bool))
    else:
        assert np.allclose(np.linalg.norm(others - first, axis=2), nudge, rtol=1e-3)


def test_nudged_repeats_do_not_average_keyed_noise_out(constant_ref):
    """Against keyed randomized response (cell 1), 9 nudged repeats at δ = 1e-3 get one answer per point
    (the keyed one) almost always; nudges of 20 cells get independent flips, which the vote averages out."""
    rr = RandomizedResponse(constant_ref, 1.5, 4, seed=1, noise=KEYED, key=NoiseKey(bytes(range(32)), "random"))
    x = 50 * np.random.default_rng(0).random((200, 4)).astype(np.float32)  # spread: one point per cell
    one = rr(x, np.zeros(200, dtype=np.int64))
    rng = np.random.default_rng(1)
    votes = {}
    for delta in (1e-3, 20.0):
        copies = np.concatenate([x[:, None], nudged(np.repeat(x[:, None], 8, axis=1), delta, False, rng)], axis=1)
        labels = rr(copies.reshape(-1, 4), np.zeros(200 * 9, dtype=np.int64)).reshape(200, 9)
        votes[delta] = np.array([np.bincount(row, minlength=4).argmax() for row in labels])
    assert (votes[1e-3] == one).mean() >= 0.97  # expected change ≤ 8 × ‖δ‖₁ ≈ 1.3% of the points
    # Keep probability 0.60 (binomial sd 0.035 over 200 points); the vote of 9 fresh answers recovers the label (≈ 0.85).
    assert (one == 2).mean() < 0.7 < (votes[20.0] == 2).mean()


def test_defense_configs_take_nudges():
    from rpdist.attacks.inversion import InversionSpec, defense_configs, nudge_config

    cfgs = defense_configs(InversionSpec(defense="rp", sigmas=[0.5], repeats=[1, 5], noises=["keyed"],
                                         nudges=["ulp", 0.001, "0.1"]))
    assert [(c["repeat"], c["nudge"]) for c in cfgs] == [(1, "0"), (5, "ulp"), (5, "0.001"), (5, "0.1")]
    assert nudge_config(cfgs[2]) == {"nudge": pytest.approx(0.0005)} and nudge_config(cfgs[1]) == {"nudge_ulp": True}
    with pytest.raises(InputError, match="needs --repeat"):
        defense_configs(InversionSpec(nudges=["ulp"]))
    for bad in ("-1", "nan", "tiny", True):
        with pytest.raises(InputError, match="--nudge"):
            defense_configs(InversionSpec(repeats=[3], nudges=[bad]))


def near_boundary(model, X, sigma, count, seed):
    """Points between two test inputs where the base classifier's vote under noise is split."""
    import torch

    rng = np.random.default_rng(seed)
    module = model.load("cpu")
    out = []
    while sum(len(o) for o in out) < count:
        a, b = rng.integers(len(X), size=(2, 128))
        t = rng.random(128).astype(np.float32).reshape(-1, *([1] * (X.ndim - 1)))
        pts = (1 - t) * X[a] + t * X[b]
        noisy = np.repeat(pts, 64, axis=0) + sigma * rng.standard_normal((len(pts) * 64, *X.shape[1:])).astype(np.float32)
        with torch.inference_mode():
            labels = module(torch.from_numpy(noisy)).argmax(1).numpy().reshape(len(pts), 64)
        out.append(pts[np.array([np.bincount(row).max() for row in labels]) < 0.7 * 64])
    return np.concatenate(out)[:count]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["insurance", "digits"])
def test_nudged_repeats_get_the_exact_repeats_answer(ray_session, dataset):
    """What must hold: under keyed noise (majority release, N = 100), 1-ulp and 1e-3σ nudged repeats get
    the exact repeat's answer in ≥ 99% of 200 queries (100 test inputs, 100 near the boundary).
    Error budget: a nudge changes the answer only if it leaves its cell (≤ 0.2%, then fresh noise) or
    moves one of 100 samples across f's boundary while the vote is tied; expected ≤ 0.5% of queries,
    so ≥ 3 of 200 has probability ≈ 8% for a random key; this key and seed are fixed. Power: under
    fresh noise (the old scheme for nudges) the near-boundary half disagrees in ≥ 5%."""
    from rpdist.models.zoo import default_model

    sigma = SIGMA[dataset]
    model = default_model(dataset, train_sigma=sigma)
    test = load_dataset(dataset, split="test").X
    X = np.concatenate([test[:100], near_boundary(model, test, sigma, 100, 0)])
    rng = np.random.default_rng(2)
    flat = X.reshape(len(X), -1)
    moved = [nudged(flat, 0.0, True, rng).reshape(X.shape), nudged(flat, 1e-3 * sigma, False, rng).reshape(X.shape)]
    rel = SmoothedRelease(model, sigma, 100, release="majority", seed=5, noise=KEYED, workers=1,
                          key=NoiseKey(bytes(range(100, 132)), "random"))
    answers = rel(np.concatenate([X, X, *moved]), np.zeros(4 * len(X), dtype=np.int64)).reshape(4, -1)
    assert np.array_equal(answers[0], answers[1])  # the exact repeat
    for nudged_answers in answers[2:]:
        assert (nudged_answers == answers[0]).mean() >= 0.99
    fresh = SmoothedRelease(model, sigma, 100, release="majority", seed=5, workers=1)
    plain = fresh(np.concatenate([X[100:], moved[1][100:]]), np.arange(200, dtype=np.int64)).reshape(2, -1)
    assert (plain[0] != plain[1]).mean() >= 0.05


def test_cli_passes_nudges_key_file_and_no_default_seed(tmp_path, monkeypatch):
    from rpdist.attacks import inversion
    from rpdist.cli.main import main

    seen = []
    monkeypatch.setattr(inversion, "run_inversion", lambda spec, progress=False: seen.append(spec) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["attack", "inversion", "--noise", "keyed", "--repeat", "3", "--nudge", "ulp", "--nudge", "0.001",
              "--noise-key-file", str(tmp_path / "key"), "--out", str(tmp_path)])
    (spec,) = seen
    assert spec.nudges == ["ulp", "0.001"] and spec.noise_key_file == str(tmp_path / "key") and spec.seed is None
    monkeypatch.undo()
    with pytest.raises(SystemExit) as exc:  # a key file that cannot be read: one line, exit 2
        main(["attack", "inversion", "--noise", "keyed", "--noise-key-file", str(tmp_path / "missing"),
              "--out", str(tmp_path)])
    assert exc.value.code == 2 and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_nudged_attacker_against_keyed_noise_records_settings_and_no_key(ray_session, tmp_path):
    from rpdist.attacks.inversion import InversionSpec, run_inversion

    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    outcome = run_inversion(InversionSpec(defense="rr", epsilons=[3.0], noises=["keyed"], repeats=[3],
                                          nudges=["ulp", "0.1"], noise_key_file=str(key), targets=[0],
                                          query_budget=60, points=8, generator_epochs=40, out=str(tmp_path / "o"),
                                          run_id="nudge"))
    df = outcome.table()
    assert sorted(df.nudge) == ["0.1", "ulp"] and (df.noise == "keyed").all() and (df.queries <= 60).all()
    assert df.nudge_distance.dropna().tolist() == [pytest.approx(0.1 * 0.25)]  # rr: δ in the target's σ units
    assert sorted(r["nudge"] for r in outcome.summary) == ["0.1", "ulp"]  # nudge is part of the setting
    text = (tmp_path / "o" / "nudge" / "manifest.json").read_text()
    details = json.loads(text)["details"]
    assert details["noise_key"]["source"] == "file" and details["seed_source"] == "random"
    assert isinstance(details["seed"], int)
    assert key.read_bytes().hex() not in text
