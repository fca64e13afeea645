"""Arrow schemas of the certificate and prediction tables (DESIGN §3): the columns users rely on."""

from __future__ import annotations

import pyarrow as pa


_COMMON = [
    ("input_id", pa.int64()),
    ("label", pa.int64()),
    ("prediction", pa.int64()),
    ("top_class", pa.int64()),
    ("count_top", pa.int64()),
]


def certificate_schema(privacy_columns: list[str] | tuple[str, ...] = ()) -> pa.Schema:
    """The certificate columns, then the per-input release-privacy columns the run asked for
    (:mod:`rpdist.privacy.per_input`)."""
    return pa.schema(_COMMON + [
        ("counts", pa.list_(pa.int64())),
        ("selection_counts", pa.list_(pa.int64())),
        ("nonfinite", pa.int64()),
        ("n", pa.int64()),
        ("n0", pa.int64()),
        ("alpha", pa.float64()),
        ("sigma", pa.float64()),
        ("seed", pa.int64()),
        ("pa_lower", pa.float64()),
        ("radius", pa.float64()),
        ("correct", pa.bool_()),
    ] + [(name, pa.float64()) for name in privacy_columns])


def prediction_schema() -> pa.Schema:
    return pa.schema(_COMMON + [
        ("count_second", pa.int64()),
        ("counts", pa.list_(pa.int64())),
        ("nonfinite", pa.int64()),
        ("n", pa.int64()),
        ("alpha", pa.float64()),
        ("sigma", pa.float64()),
        ("seed", pa.int64()),
        ("p_value", pa.float64()),
        ("correct", pa.bool_()),
    ])


def sequential_schema() -> pa.Schema:
    """Sequential CERTIFY: the certificate columns (``n`` is max N) plus how each input was decided."""
    return pa.schema(list(certificate_schema()) + [
        ("mode", pa.string()),
        ("against_label", pa.bool_()),
        ("samples_used", pa.int64()),
        ("stop_block", pa.int64()),
        ("decision", pa.string()),
        ("target_radius", pa.list_(pa.float64())),
        ("decisions", pa.list_(pa.string())),
        ("radius_decided", pa.float64()),
        ("pa_upper", pa.float64()),
    ])
