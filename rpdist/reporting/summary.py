"""The few numbers a user reads first after a run: certified accuracy, abstentions, radii, speed."""

from __future__ import annotations

import numpy as np
import pandas as pd

RADIUS_MULTIPLES = (0.0, 0.25, 0.5, 1.0, 2.0)  # radii reported, in units of σ


def certified_accuracy(df: pd.DataFrame, radius: float) -> float:
    """Share of inputs that are correct and certified at ``radius`` (radius 0: smoothed accuracy)."""
    if len(df) == 0 or df["correct"].isna().all():
        return float("nan")
    correct = df["correct"].fillna(False).to_numpy(dtype=bool)
    return float(np.mean(correct & (df["radius"].to_numpy() >= radius)))


def summarize(df: pd.DataFrame, analysis: str, sigma: float) -> dict:
    """Summary statistics of a certificates or predictions table."""
    abstain = df["prediction"].to_numpy() == -1
    labelled = not df["correct"].isna().all() if len(df) else False
    out = {
        "inputs": int(len(df)),
        "abstain_rate": float(abstain.mean()) if len(df) else float("nan"),
        "accuracy": float(df["correct"].fillna(False).mean()) if labelled else float("nan"),
    }
    if "nonfinite" in df:  # inputs that abstain because the model gave NaN/inf logits on some sample
        out["nonfinite_inputs"] = int((df["nonfinite"].to_numpy() > 0).sum())
    if analysis == "certify":
        radii = df["radius"].to_numpy()
        out["mean_radius"] = float(radii.mean()) if len(df) else float("nan")
        out["median_radius_certified"] = float(np.median(radii[~abstain])) if (~abstain).any() else 0.0
        out["certified_accuracy"] = {
            f"{m * sigma:g}": certified_accuracy(df, m * sigma) for m in RADIUS_MULTIPLES
        }
    return out
