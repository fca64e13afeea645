"""Model inversion per dataset: roles and recipes, image side, the judge's KNN distance, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rpdist import analyses
from rpdist.attacks import roles
from rpdist.datasets.catalog import load_dataset
from rpdist.errors import InputError
from rpdist.models import architectures, zoo
from rpdist.pipelines.sweep import parse_sweep


def test_roles_split_per_dataset_is_disjoint_and_covers_train():
    for dataset in roles.DATASETS:
        split = roles.roles_split(dataset)
        train = load_dataset(dataset, split="train")
        assert not set(split["private"]) & set(split["public"])
        assert np.array_equal(np.sort(np.concatenate([split["private"], split["public"]])), np.arange(len(train)))
        X, y = roles.role_data("public", dataset)
        assert X.shape[1:] == (1, roles.side(dataset), roles.side(dataset))
        assert np.array_equal(y, train.y[split["public"]])
    assert (roles.side("digits"), roles.side("mnist5k")) == (8, 28)
    with pytest.raises(InputError, match="digits, mnist5k"):
        roles.role_data("private", "cifar10")


def test_digits_recipes_are_unchanged_so_their_cached_models_are_reused():
    """The recipes (hence hashes, hence cache files) digits had before the roles took a dataset."""
    def bare(rec):
        return {k: v for k, v in rec.items() if k not in ("torch", "dataset_sha256")}

    common = {"role_version": 1, "dataset": "digits", "split_seed": 0, "test_fraction": 0.2, "role_seed": 1234}
    assert bare(roles.target_recipe()) == {**common, "role": "target", "data": "private", "arch": "cnn",
                                           "arch_kwargs": {"num_classes": 10, "channels": 1, "side": 8}, "epochs": 40,
                                           "lr": 2e-3, "batch_size": 64, "seed": 11, "train_sigma": 0.25}
    assert bare(roles.eval_recipe()) == {**common, "role": "eval", "data": "private", "arch": "mlp",
                                         "arch_kwargs": {"in_features": 64, "num_classes": 10, "hidden": [256, 128]},
                                         "epochs": 80, "lr": 2e-3, "batch_size": 64, "seed": 29, "train_sigma": 0.1}
    assert bare(roles.generator_recipe()) == {**common, "role": "generator", "data": "public", "arch": "vae",
                                              "latent": 8, "hidden": 128, "epochs": 400, "lr": 2e-3, "batch_size": 64,
                                              "seed": 5, "beta": 1.0}
    key = zoo._recipe_key
    assert key(roles.generator_recipe(dataset="digits", latent=8)) == key(roles.generator_recipe())
    assert key(roles.generator_recipe(exclude=3)) != key(roles.generator_recipe())  # its own model
    assert roles.generator_recipe(exclude=3)["exclude_class"] == 3
    assert key(roles.target_recipe(dataset="mnist5k")) != key(roles.target_recipe())
    assert roles.target_recipe(dataset="mnist5k")["arch_kwargs"]["side"] == 28


RESULTS = Path(__file__).resolve().parents[1] / "results" / "mia"


def test_committed_role_models_are_used_as_cached_and_are_those_the_latest_results_ran_on(tmp_path, monkeypatch):
    """``make role-models`` copies results/mia/models into the cache: under today's recipes they must be found
    there (a renamed recipe would silently retrain), load as weights only, and hash to what the committed
    manifests of their set record, so that new points pair with the committed ones."""
    for path in (RESULTS / "models").glob("*.pt"):
        shutil.copy(path, tmp_path)
    monkeypatch.setenv("RPDIST_CACHE", str(tmp_path))

    def no_training(*args, **kwargs):
        raise AssertionError("a committed role model was not found under its recipe's cache name")

    monkeypatch.setattr(roles, "_fit", no_training)
    monkeypatch.setattr(roles, "_train_vae", no_training)
    monkeypatch.setattr("rpdist.defenses.dpsgd.train_dpsgd", no_training)
    for dataset, point in (("mnist5k", RESULTS / "mnist5k" / "sweeps" / "rp-n1000-rerun"),
                           ("digits", RESULTS / "sweeps" / "rp-n1000-rerun")):
        manifest = json.loads((point / "sigma=1.0" / "n=1000" / "alpha=0.001" / "seed=0" / "manifest.json").read_text())
        assert roles.target_model(dataset=dataset).sha256 == manifest["models"]["target"]["sha256"]
        assert roles.eval_model(dataset=dataset).sha256 == manifest["models"]["eval"]["sha256"]
        assert isinstance(roles.generator(dataset=dataset), torch.nn.Module)
    roles.dpsgd_model(1.0, dataset="mnist5k")
    assert len(list(tmp_path.iterdir())) == 7  # nothing trained, nothing rewritten


def test_class_disjoint_generator_never_sees_the_class(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(roles, "_train_vae", lambda rec, X, side, progress: seen.update(X=X) or
                        roles.VAE(rec["latent"], rec["hidden"], side).state_dict())
    vae = roles.generator(cache_dir=tmp_path, dataset="digits", exclude=3, epochs=1)
    X, y = roles.role_data("public", "digits")
    assert len(seen["X"]) == int((y != 3).sum()) and 0 < (y == 3).sum()
    assert np.array_equal(seen["X"], X[y != 3])
    assert vae.decode(torch.zeros(2, vae.latent)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("side", [8, 28])
def test_vae_decodes_images_of_the_dataset_side(side):
    vae = roles.VAE(latent=4, hidden=16, side=side)
    assert vae.decode(torch.zeros(3, 4)).shape == (3, 1, side, side)
    mu, logvar = vae(torch.rand(3, 1, side, side))
    assert mu.shape == logvar.shape == (3, 4)


def _features_by_hook(model, x: np.ndarray) -> np.ndarray:
    """The input of the model's last linear layer, captured by a forward hook: an independent oracle."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    got = []
    handle = last.register_forward_hook(lambda module, inputs, output: got.append(inputs[0].detach().numpy()))
    with torch.inference_mode():
        model(torch.from_numpy(x))
    handle.remove()
    return got[0].astype(np.float64)


@pytest.mark.parametrize("arch,kwargs,side", [
    ("mlp", {"in_features": 64, "num_classes": 10, "hidden": [32, 16]}, 8),
    ("cnn", {"num_classes": 10, "channels": 1, "side": 28, "stride": 2}, 28),
])
def test_knn_distance_is_the_nearest_private_image_of_the_class_in_penultimate_features(arch, kwargs, side):
    torch.manual_seed(0)
    model = architectures.build(arch, **kwargs).eval()
    rng = np.random.default_rng(0)
    images = rng.random((12, 1, side, side), dtype=np.float32)
    targets = rng.integers(0, 4, 12)
    private_X = rng.random((40, 1, side, side), dtype=np.float32)
    private_y = rng.integers(0, 4, 40)
    got = roles.knn_distance(model, images, targets, private_X, private_y)
    q, m = _features_by_hook(model, images), _features_by_hook(model, private_X)
    brute = [min(np.sqrt(((q[i] - m[j]) ** 2).sum()) for j in range(40) if private_y[j] == targets[i])
             for i in range(12)]
    np.testing.assert_allclose(got, brute, rtol=1e-6)
    # the class matters: the nearest image of any class is nearer for some query
    anywhere = [min(np.sqrt(((q[i] - m[j]) ** 2).sum()) for j in range(40)) for i in range(12)]
    assert np.any(np.array(anywhere) < np.array(brute) - 1e-9)


def test_knn_distance_without_private_images_of_the_class_is_nan():
    model = architectures.build("linear", in_features=4, num_classes=3)
    with pytest.raises(InputError, match="penultimate"):
        roles.knn_distance(model, np.zeros((1, 4), np.float32), [0], np.zeros((2, 4), np.float32), np.array([1, 1]))
    mlp = architectures.build("mlp", in_features=4, num_classes=3, hidden=[5])
    out = roles.knn_distance(mlp, np.zeros((2, 4), np.float32), [0, 1], np.ones((2, 4), np.float32), np.array([1, 1]))
    assert np.isnan(out[0]) and out[1] >= 0


def test_judge_applies_the_threshold_to_ends_and_starts_alike(monkeypatch):
    from rpdist.attacks.brep import BrepAttack, BrepConfig
    from rpdist.attacks.inversion import judge

    class Flat:
        """A generator whose image is flat at 0.5 + 0.1·z₀: the evaluator below reads its confidence off it."""
        latent, side = 2, 8

        def decode(self, z):
            return (0.5 + 0.1 * z[:, :1]).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()

    class MeanPixel(torch.nn.Module):
        """Two classes; confidence in class 0 = the image's mean pixel."""

        def forward(self, x):
            p = torch.flatten(x, 1).mean(1)
            return torch.stack([p.log(), (1 - p).log()], 1)

    attacks = []
    for restart, z0 in enumerate((1.0, 2.0, 3.0, 4.0, -3.0)):  # end confidences 0.6, 0.7, 0.8, 0.9, 0.2
        a = BrepAttack(0, restart, 2, BrepConfig(), seed=0)
        a.z, a.start = np.array([z0, 0.0]), np.array([2.0, 0.0])  # every start at 0.7
        attacks.append(a)
    private = (np.zeros((3, 1, 8, 8), np.float32), np.zeros(3, np.int64))
    monkeypatch.setattr(roles, "penultimate", lambda model, x: torch.flatten(x, 1))
    for threshold, ends, start in ((0.0, [1, 1, 1, 1, 0], 1), (0.75, [0, 0, 1, 1, 0], 0), (0.65, [0, 1, 1, 1, 0], 1)):
        v = judge(MeanPixel(), Flat(), attacks, threshold, private)
        np.testing.assert_allclose(v["eval_confidence"], [0.6, 0.7, 0.8, 0.9, 0.2], rtol=1e-5)
        np.testing.assert_allclose(v["start_eval_confidence"], 0.7, rtol=1e-5)
        assert v["success"].tolist() == [bool(e) for e in ends]
        assert v["start_success"].tolist() == [bool(start)] * 5
        assert v["images"].shape == (5, 1, 8, 8)
    attacks[0].z = None  # an attack that found no start fails whatever its fallback image looks like
    assert not judge(MeanPixel(), Flat(), attacks, 0.0, private)["success"][0]


@pytest.mark.parametrize("args,message", [
    (["--dataset", "cifar10"], "--dataset must be one of digits, mnist5k"),
    (["--prior", "private"], "--prior must be one of public, disjoint"),
    (["--judge-threshold", "1"], "--judge-threshold must be a number in [0, 1)"),
])
def test_cli_refuses_bad_inversion_input_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    from rpdist.cli.main import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["attack", "inversion", *args, "--out", str(out), "--run-id", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


@pytest.mark.slow
def test_mnist5k_run_writes_28_pixel_reconstructions_and_knn_columns(ray_session, tmp_path, monkeypatch):
    """The plumbing on mnist5k with small untrained stand-ins for the three role models (the real ones
    train for minutes): the grid gets the dataset's side, and every row its KNN distances."""
    from rpdist.attacks import inversion
    from rpdist.models.refs import ModelRef

    def tiny(arch, kwargs, seed):
        torch.manual_seed(seed)
        return ModelRef.from_state_dict(arch, kwargs, architectures.build(arch, **kwargs).state_dict())

    cnn = {"num_classes": 10, "channels": 1, "side": 28, "stride": 2}
    monkeypatch.setattr(roles, "target_model", lambda **kw: tiny("cnn", cnn, 0))
    monkeypatch.setattr(roles, "eval_model", lambda **kw: tiny("mlp", {"in_features": 784, "num_classes": 10,
                                                                      "hidden": [16]}, 1))
    monkeypatch.setattr(roles, "generator", lambda **kw: roles.VAE(4, 16, 28).eval())
    grids = []
    real = inversion.save_grid
    monkeypatch.setattr(inversion, "save_grid", lambda grid, *a: grids.append(grid.shape) or real(grid, *a))
    outcome = inversion.run_inversion(inversion.InversionSpec(
        dataset="mnist5k", targets=[0, 1], restarts=2, query_budget=64, seed=0, judge_threshold=0.2,
        out=str(tmp_path), run_id="m"))
    df = outcome.table()
    assert grids == [(1, 4, 28, 28)]
    assert {"knn_distance", "start_knn_distance", "start_eval_confidence"} <= set(df.columns)
    found = df[df.found]
    assert (found.knn_distance >= 0).all() and (found.start_knn_distance >= 0).all()
    assert (df.success == (df.found & (df.eval_prediction == df.target) & (df.eval_confidence >= 0.2))).all()
    (row,) = outcome.summary
    assert row["median_knn_distance"] == pytest.approx(df.knn_distance.median())
    assert row["median_start_knn_distance"] == pytest.approx(df.start_knn_distance.median())
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["details"]["judge_threshold"] == 0.2 and manifest["config"]["dataset"] == "mnist5k"
    assert manifest["models"]["target"]["recipe"]["dataset"] == "mnist5k"


class Stop(Exception):
    """Stands for a run killed mid-way."""


@pytest.mark.slow
def test_manifest_hashes_every_model_a_verdict_depends_on(ray_session, tmp_path, monkeypatch):
    """Target, evaluator, the attacker's generator and each released DP-SGD model, by sha256 (a stand-in DP-SGD
    model here: the real ones train for minutes); a run stopped after one class does not resume where another
    DP-SGD model would answer (another machine retrains it)."""
    from rpdist.attacks import inversion
    from rpdist.attacks.parts import AttackParts
    from rpdist.errors import InputError
    from rpdist.models.refs import ModelRef, state_dict_sha256

    kwargs = roles.RECIPES["digits"]["target"]["arch_kwargs"]
    torch.manual_seed(0)
    stand_in = ModelRef.from_state_dict("cnn", kwargs, architectures.build("cnn", **kwargs).state_dict())
    other = ModelRef.from_state_dict("cnn", kwargs, architectures.build("cnn", **kwargs).state_dict())
    assert other.sha256 != stand_in.sha256
    spec = inversion.InversionSpec(dataset="digits", defense="dpsgd", epsilons=[8.0], targets=[0, 1],
                                   targets_at_once=1, restarts=1, query_budget=20, seed=0, out=str(tmp_path),
                                   run_id="d")
    real_save = AttackParts.save

    def stopping(self, *args):
        real_save(self, *args)
        raise Stop

    monkeypatch.setattr(roles, "dpsgd_model", lambda epsilon, **kw: stand_in)
    monkeypatch.setattr(AttackParts, "save", stopping)
    with pytest.raises(Stop):
        inversion.run_inversion(spec)
    monkeypatch.setattr(AttackParts, "save", real_save)
    monkeypatch.setattr(roles, "dpsgd_model", lambda epsilon, **kw: other)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(InputError, match="another dpsgd eps=8 model"):
        inversion.run_inversion(spec)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written
    monkeypatch.setattr(roles, "dpsgd_model", lambda epsilon, **kw: stand_in)
    inversion.run_inversion(spec)
    models = json.loads((tmp_path / "d" / "manifest.json").read_text())["models"]
    assert models["target"]["sha256"] == roles.target_model(dataset="digits").sha256
    assert models["eval"]["sha256"] == roles.eval_model(dataset="digits").sha256
    assert models["generator"]["sha256"] == state_dict_sha256(roles.generator(dataset="digits").state_dict())
    assert models["dpsgd eps=8"]["sha256"] == stand_in.sha256
    # A sweep adding points checks the same models, the released DP-SGD one included.
    sweep = parse_sweep({"dataset": "digits", "analysis": "attack", "defense": "dpsgd", "epsilon": [8.0],
                         "targets": [0, 1], "restarts": 1, "query_budget": 20})
    point_models = analyses.get("attack").point_models(sweep, sweep.points[0])
    assert point_models == {name: m["sha256"] for name, m in models.items()}


@pytest.mark.slow
def test_setting_benchmark_reports_the_commands_paired_interval(benchmark_script):
    """The README's ASR − start ASR intervals come from the same Tango interval as `rpdist attack inversion`,
    on discordant counts the rows keep: ASR − start ASR = (walk only − start only) / attacks."""
    from rpdist.smoothing.stats import paired_difference

    setting = benchmark_script("inversion_setting")
    assert setting.paired_difference is paired_difference
    target = roles.target_model(dataset="digits")
    rows = setting.attack("digits", "public", None, None, None, 60, 2, 0, target, roles.eval_model(dataset="digits")
                          .load("cpu"), roles.role_data("private", "digits"), [0.0, 0.99])
    assert [r["threshold"] for r in rows] == [0.0, 0.99]
    for r in rows:
        n, b, c = r["attacks"], r["walk_only"], r["start_only"]
        assert n == roles.NUM_CLASSES * 2 and r["diff"] == pytest.approx((b - c) / n)
        assert r["diff"] == pytest.approx(r["asr"] - r["start_asr"])
        walk = np.arange(n) < b  # the interval depends on the discordant counts alone
        start = (np.arange(n) >= b) & (np.arange(n) < b + c)
        assert (r["diff"], *r["diff_ci"]) == pytest.approx(paired_difference(walk, start))
