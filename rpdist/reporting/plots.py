"""Plot helpers shared by report sections, drawn on matplotlib's Agg canvas (no pyplot, no display)."""

from __future__ import annotations

import numpy as np
import pandas as pd

DPI = 120
ABSTAIN = -1


def labelled(df: pd.DataFrame) -> bool:
    return bool(len(df)) and not df["correct"].isna().all()


def figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def certified_curve(df: pd.DataFrame, radii: np.ndarray) -> np.ndarray:
    """Share of inputs that are correct (or, without labels, certified) at radius ≥ r, for each r."""
    if labelled(df):
        ok = df["correct"].fillna(False).astype(bool).to_numpy()
    else:
        ok = df["prediction"].to_numpy() != ABSTAIN
    good = np.sort(df["radius"].to_numpy(dtype=np.float64)[ok])
    return (len(good) - np.searchsorted(good, radii, side="left")) / max(len(df), 1)


def style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def curves_plot(curves: list[tuple[str, pd.DataFrame, float | None]], title: str, xlabel: str):
    """Certified accuracy against radius, one step curve per (label, table, max radius)."""
    from matplotlib.lines import Line2D

    fig = figure()
    ax = fig.add_subplot()
    # The axis ends a little after the largest radius reached; a cap far beyond it would squash the curves.
    top = max(max(float(df["radius"].max()) for _, df, _ in curves), 1e-6) * 1.12
    radii = np.linspace(0.0, top, 800)
    all_labelled = all(labelled(df) for _, df, _ in curves)
    shown = False
    for i, (label, df, cap) in enumerate(curves):
        ax.plot(radii, 100 * certified_curve(df, radii), color=f"C{i}", lw=2, label=label)
        if cap and cap <= top:
            ax.axvline(cap, color=f"C{i}", ls=":", lw=1.2)
            shown = True
    handles, labels = ax.get_legend_handles_labels()
    if shown:
        handles.append(Line2D([], [], color="grey", ls=":", lw=1.2))
        labels.append("largest certifiable radius")
    ax.legend(handles, labels, loc="upper right", fontsize=9)
    ax.set_xlim(0, radii[-1])
    ax.set_ylim(0, 102)
    style(ax, title, xlabel, "certified accuracy (%)" if all_labelled else "inputs certified (%)")
    return fig


def caps_note(curves) -> str:
    caps = "; ".join(f"{label}: {cap:.3f}" for label, _, cap in curves if cap)
    return (f"Largest radius each N and α can certify (all N votes agree; dotted where inside the axis): {caps}."
            if caps else "")
