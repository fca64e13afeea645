"""Markdown formatting shared by every report section: percentages, numbers, tables."""

from __future__ import annotations

import numpy as np

# What one unit of the ℓ2 radius means for the built-in datasets; anything else is "input units".
UNITS = {"insurance": "standardised units", "insurance-recommend": "standardised units",
         "digits": "input units, pixels in [0, 1]", "mnist5k": "input units, pixels in [0, 1]"}


def _missing(value) -> bool:
    """None or NaN of any float type (NaN alone is unequal to itself: numpy float32 included)."""
    return value is None or value != value


def pct(value, missing: str = "n/a", digits: int = 1) -> str:
    """A rate as a percentage (one decimal unless told); ``missing`` says why there is none (None or NaN)."""
    return missing if _missing(value) else f"{100 * value:.{digits}f}%"


def pct_interval(value, interval, missing: str = "n/a", digits: int = 1) -> str:
    """A rate with its 95% interval, "83.1% [80.6, 85.4]" (every rate interval of the project prints this way);
    the bare rate when there is no interval (None, or bounds that are missing)."""
    text = pct(value, missing, digits)
    if interval is None or text == missing or any(_missing(bound) for bound in interval):
        return text
    low, high = interval
    return f"{text} [{100 * low:.{digits}f}, {100 * high:.{digits}f}]"


def rate_with_interval(record: dict, key: str, digits: int = 1, missing: str = "—") -> str:
    """A rate and its 95% interval read from ``key``, ``key_low`` and ``key_high`` of one summary record, as
    ``pct_interval`` prints them (the rate counterpart of ``with_interval``)."""
    return pct_interval(record[key], (record.get(f"{key}_low"), record.get(f"{key}_high")), missing, digits)


def points_interval(value, low, high) -> str:
    """A difference of two rates in signed percentage points with its 95% interval, "+2 pp [-7, +12]"."""
    return "—" if _missing(value) else f"{100 * value:+.0f} pp [{100 * low:+.0f}, {100 * high:+.0f}]"


def with_interval(record: dict, key: str, digits: int = 3, sign: str = "") -> str:
    """A summary value and its 95% interval from ``key``, ``key_low`` and ``key_high``: "0.412 [0.388, 0.436]";
    ``sign="+"`` signs a difference; "—" when there is no value, the bare value when there is no interval."""
    value, low, high = record.get(key), record.get(f"{key}_low"), record.get(f"{key}_high")
    spec = f"{sign}.{digits}f"
    if _missing(value):
        return "—"
    if _missing(low):
        return f"{value:{spec}}"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def num(value, digits: int = 4) -> str:
    if _missing(value):
        return "—"
    return f"{value:.{digits}f}"


def fmt(value) -> str:
    if _missing(value):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return f"{int(value):,}" if value.is_integer() and abs(value) >= 1000 else f"{value:g}"
    return str(value)


def duration(seconds: float | None) -> str:
    """A length of time as people read it: "45 s", "12 min", "32 h 40 min"; "—" when unknown."""
    if seconds is None:
        return "—"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def md_cell(value) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(v) if not isinstance(v, str) else v.replace("|", "\\|") for v in row) + " |"
              for row in rows]
    return lines + [""]


def flatten(data, prefix: str = ""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}{key}.")
    elif isinstance(data, list) and all(not isinstance(v, (dict, list)) for v in data):
        yield prefix[:-1], ", ".join(fmt(v) for v in data)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from flatten(value, f"{prefix}{i}.")
    else:
        yield prefix[:-1], data


def dataset_name(source) -> str | None:
    config = (source.manifest or {}).get("config", {})
    for candidate in (config.get("dataset"), (config.get("sweep") or {}).get("dataset")):
        if isinstance(candidate, dict):
            candidate = candidate.get("spec")
        if isinstance(candidate, str):
            return candidate
    return None


def radius_label(source) -> str:
    return f"ℓ2 radius ({UNITS.get(dataset_name(source) or '', 'input units')})"
