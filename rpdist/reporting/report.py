"""``rpdist report``: a markdown summary with PNG plots of a run, a sweep, or a folder of runs.

What is read, detected by file name in DIR (or, when DIR holds none, in each of its sub-folders):

- ``certificates.parquet`` / ``predictions.parquet`` (+ ``manifest.json``): a certify/predict run;
- ``sigma=S/n=N/alpha=A/seed=K/chunk-*.parquet`` (+ ``manifest.json``): a sweep;
- ``rap.parquet``: a Robust Attribute Privacy analysis (``rpdist rap``);
- ``attack.parquet``: an attack benchmark (attack success rate against utility).

The numbers come from :func:`rpdist.reporting.summary.summarize` and :func:`rpdist.pipelines.sweep.summarize_sweep`,
so the report agrees with what the commands print. Plots are drawn on matplotlib's Agg canvas
directly (no pyplot, so a caller's backend is left alone). Every file is written to a temporary
name and renamed; the markdown is written last, so it never links a PNG that is not there.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rpdist.errors import InputError
from rpdist.io.store import atomic_write

DPI = 120
RUN_FILES = {"certificates.parquet": "certify", "predictions.parquet": "predict", "rap.parquet": "rap",
             "attack.parquet": "attack"}
SWEEP_GLOB = "sigma=*/n=*/alpha=*/seed=*/chunk-*.parquet"
REQUIRED = {
    "certify": ("prediction", "radius", "correct", "sigma", "n", "alpha"),
    "predict": ("prediction", "correct", "sigma", "n", "alpha"),
    "rap": ("release_model", "compatible_length"),
    "attack": ("defense", "success", "utility_accuracy"),
}
TITLES = {"certify": "Certified robustness (CERTIFY)", "predict": "Smoothed predictions (PREDICT)",
          "sweep": "Sweep", "rap": "Robust attribute privacy (RAP)", "attack": "Attack benchmark"}
# What one unit of the ℓ2 radius means for the built-in datasets; anything else is "input units".
UNITS = {"insurance": "standardised units", "digits": "input units, pixels in [0, 1]"}
ABSTAIN = -1


@dataclass
class Source:
    """One result set found under the report's directory."""

    kind: str  # certify | predict | sweep | rap | attack
    path: Path  # the run or sweep directory
    table: pd.DataFrame
    manifest: dict | None

    @property
    def name(self) -> str:
        return self.path.name


# ---------------------------------------------------------------------------------------------
# Finding and reading results


def _kinds_in(directory: Path) -> list[str]:
    kinds = [kind for name, kind in RUN_FILES.items() if (directory / name).is_file()]
    if next(directory.glob(SWEEP_GLOB), None) is not None:
        kinds.append("sweep")
    return kinds


def _unfinished(directory: Path) -> str | None:
    """A note for a run directory that has a manifest but no results yet."""
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return None
    status = (_manifest(directory) or {}).get("status", "unknown")
    return f"{directory} holds an unfinished run (status {status}, no results yet); rerun its command to finish it"


def _read_table(path: Path, kind: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 — any unreadable file is the user's input
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read {path}: {first}") from None
    missing = [c for c in REQUIRED[kind] if c not in df.columns]
    if missing:
        raise InputError(f"{path} is not an rpdist {kind} table: column {missing[0]!r} is missing")
    if df.empty:
        raise InputError(f"{path} has no rows")
    return df


def _manifest(directory: Path) -> dict | None:
    path = directory / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"cannot read {path}: it is unreadable or not valid JSON") from None
    if not isinstance(data, dict):
        raise InputError(f"cannot read {path}: expected a JSON object")
    return data


def _load(directory: Path, kind: str) -> Source:
    manifest = _manifest(directory)
    if kind == "sweep":
        from rpdist.pipelines.sweep import read_sweep

        try:
            df = read_sweep(directory).to_pandas()
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot read the sweep in {directory}: {first}") from None
        missing = [c for c in REQUIRED["predict"] if c not in df.columns]
        if missing:
            raise InputError(f"{directory} is not an rpdist sweep: column {missing[0]!r} is missing")
        if df.empty:
            raise InputError(f"{directory} holds no sweep rows")
        return Source(kind, directory, df, manifest)
    name = next(name for name, k in RUN_FILES.items() if k == kind)
    return Source(kind, directory, _read_table(directory / name, kind), manifest)


def find_sources(directory: str | Path) -> tuple[list[Source], list[str]]:
    """Results in ``directory`` itself or else in its immediate sub-folders, and notes on skipped ones."""
    directory = Path(directory)
    if not directory.exists():
        raise InputError(f"{directory} does not exist")
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    kinds = _kinds_in(directory)
    if kinds:
        return [_load(directory, kind) for kind in kinds], []
    notes: list[str] = []
    sources: list[Source] = []
    try:
        children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise InputError(f"cannot read {directory}: {exc.strerror or exc}") from None
    for child in children:
        child_kinds = _kinds_in(child)
        sources.extend(_load(child, kind) for kind in child_kinds)
        if not child_kinds and (note := _unfinished(child)):
            notes.append(note)
    if sources:
        return sources, notes
    if note := _unfinished(directory):
        raise InputError(note)
    if notes:
        raise InputError(notes[0])
    if not any(directory.iterdir()):
        raise InputError(f"{directory} is empty; expected an rpdist run or sweep directory")
    raise InputError(f"{directory} holds no rpdist results (certificates.parquet, predictions.parquet, rap.parquet, "
                     "attack.parquet or a sweep), neither directly nor in a sub-folder")


# ---------------------------------------------------------------------------------------------
# Formatting


def pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _g(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return f"{int(value):,}" if value.is_integer() and abs(value) >= 1000 else f"{value:g}"
    return str(value)


def _cell(value) -> str:
    return _g(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) if not isinstance(v, str) else v.replace("|", "\\|") for v in row) + " |"
              for row in rows]
    return lines + [""]


def _flatten(data, prefix: str = ""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(data, list) and all(not isinstance(v, (dict, list)) for v in data):
        yield prefix[:-1], ", ".join(_g(v) for v in data)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _flatten(value, f"{prefix}{i}.")
    else:
        yield prefix[:-1], data


def _dataset_name(source: Source) -> str | None:
    config = (source.manifest or {}).get("config", {})
    for candidate in (config.get("dataset"), (config.get("sweep") or {}).get("dataset")):
        if isinstance(candidate, dict):
            candidate = candidate.get("spec")
        if isinstance(candidate, str):
            return candidate
    return None


def radius_label(source: Source) -> str:
    return f"ℓ2 radius ({UNITS.get(_dataset_name(source) or '', 'input units')})"


def _labelled(df: pd.DataFrame) -> bool:
    return bool(len(df)) and not df["correct"].isna().all()


# ---------------------------------------------------------------------------------------------
# Plotting helpers


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def certified_curve(df: pd.DataFrame, radii: np.ndarray) -> np.ndarray:
    """Share of inputs that are correct (or, without labels, certified) at radius ≥ r, for each r."""
    if _labelled(df):
        ok = df["correct"].fillna(False).astype(bool).to_numpy()
    else:
        ok = df["prediction"].to_numpy() != ABSTAIN
    good = np.sort(df["radius"].to_numpy(dtype=np.float64)[ok])
    return (len(good) - np.searchsorted(good, radii, side="left")) / max(len(df), 1)


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _curves_plot(curves: list[tuple[str, pd.DataFrame, float | None]], title: str, xlabel: str):
    """Certified accuracy against radius, one step curve per (label, table, max radius)."""
    from matplotlib.lines import Line2D

    fig = _figure()
    ax = fig.add_subplot()
    # The axis ends a little after the largest radius reached; a cap far beyond it would squash the curves.
    top = max(max(float(df["radius"].max()) for _, df, _ in curves), 1e-6) * 1.12
    radii = np.linspace(0.0, top, 800)
    labelled = all(_labelled(df) for _, df, _ in curves)
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
    _style(ax, title, xlabel, "certified accuracy (%)" if labelled else "inputs certified (%)")
    return fig


def _caps_note(curves) -> str:
    caps = "; ".join(f"{label}: {cap:.3f}" for label, _, cap in curves if cap)
    return (f"Largest radius each N and α can certify (all N votes agree; dotted where inside the axis): {caps}."
            if caps else "")


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class _Writer:
    out: Path
    lines: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    def save(self, fig, name: str) -> str:
        """Save a figure next to the report; returns its relative link."""
        fig.tight_layout()
        path = self.out.parent / f"{self.out.stem}-{name}.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
        self.plots.append(path)
        return path.name

    def image(self, fig, name: str, alt: str, caption: str) -> None:
        link = self.save(fig, name)
        self.lines += [f"![{alt}]({link})", "", f"*{caption}*", ""]

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)


def _config_section(w: _Writer, source: Source) -> None:
    w.add("### Configuration", "")
    manifest = source.manifest
    if manifest is None:
        w.add("No `manifest.json` was found; the parameters below come from the table itself.", "")
        rows = [[c, ", ".join(_g(v) for v in sorted(source.table[c].dropna().unique()))]
                for c in ("sigma", "n", "n0", "alpha", "seed", "attribute", "defense") if c in source.table.columns]
        w.add(*_table(["setting", "value"], rows))
        return
    rows = [[key, value] for key, value in _flatten(manifest.get("config", {})) if value is not None]
    for key in ("status", "device", "models", "attribute", "plan", "timings", "started", "finished",
                "forward_samples"):
        if key in manifest:
            rows += [[k, v] for k, v in _flatten({key: manifest[key]}) if v is not None]
    versions = manifest.get("versions") or {}
    rows += [[f"versions.{k}", versions[k]] for k in ("rpdist", "python", "torch", "ray") if versions.get(k)]
    if isinstance(manifest.get("command"), list):
        rows.append(["command", "`" + " ".join(map(str, manifest["command"])) + "`"])
    w.add(*_table(["setting", "value"], [[k, v if isinstance(v, str) and v.startswith("`") else _g(v)]
                                         for k, v in rows]))


def _multiples_header(m: float) -> str:
    return "r = 0" if m == 0 else f"r ≥ {m:g}σ"


def _run_section(w: _Writer, source: Source, slug: str) -> None:
    from rpdist.smoothing.stats import max_radius
    from rpdist.reporting.summary import RADIUS_MULTIPLES, summarize

    df = source.table
    w.add("### Summary", "")
    groups = list(df.groupby(["sigma", "n", "alpha"], sort=True))
    timings = (source.manifest or {}).get("timings", {})
    for (sigma, n, alpha), part in groups:
        s = summarize(part, source.kind, float(sigma))
        if len(groups) > 1:
            w.add(f"σ = {sigma:g}, N = {n:,}, α = {alpha:g}:", "")
        rows = [["inputs", s["inputs"]]]
        if source.kind == "certify":
            for m in RADIUS_MULTIPLES:
                value = s["certified_accuracy"][f"{m * sigma:g}"]
                rows.append(["smoothed accuracy (certified at radius ≥ 0)" if m == 0 else
                             f"certified accuracy at radius ≥ {m * sigma:g} ({m:g}σ)", pct(value)])
            rows += [["abstain rate", pct(s["abstain_rate"])],
                     ["mean radius (abstain = 0)", num(s["mean_radius"])],
                     ["median radius of certified inputs", num(s["median_radius_certified"])],
                     ["largest certifiable radius at this N, α", num(max_radius(int(n), float(alpha), float(sigma)))]]
        else:
            rows += [["accuracy (abstain = wrong)", pct(s["accuracy"])], ["abstain rate", pct(s["abstain_rate"])]]
        if len(groups) == 1 and timings.get("samples_per_second"):
            rows.append(["samples/s (forward samples per second of wall time)",
                         f"{timings['samples_per_second']:,.0f}"])
        w.add(*_table(["metric", "value"], rows))
    if source.kind == "certify":
        w.add(f"Radii are ℓ2 distances in {UNITS.get(_dataset_name(source) or '', 'input units')} (the model's input "
              "space); certified accuracy at radius r is the share of inputs predicted correctly and certified at "
              "radius ≥ r, abstentions counting as wrong.", "")
    if source.kind == "certify" and not _labelled(df):
        w.add("The table has no labels, so accuracy is n/a and the plot shows the share of inputs certified.", "")
    if source.kind != "certify":
        w.add("PREDICT releases labels without radii, so this run has no radius plot.", "")
        return
    w.add("### Plots", "")
    curves = [(f"σ = {sigma:g}, N = {n:,}, α = {alpha:g}", part, max_radius(int(n), float(alpha), float(sigma)))
              for (sigma, n, alpha), part in groups]
    fig = _curves_plot(curves, f"Certified accuracy vs radius — {source.name} ({len(df):,} inputs)",
                       radius_label(source))
    w.image(fig, f"{slug}certified-accuracy", "certified accuracy against radius",
            "Certified accuracy: share of inputs whose smoothed prediction is correct and certified at ℓ2 "
            "radius ≥ r (abstentions count as wrong). " + _caps_note(curves))


def _sweep_section(w: _Writer, source: Source, slug: str) -> None:
    from rpdist.smoothing.stats import max_radius
    from rpdist.reporting.summary import RADIUS_MULTIPLES
    from rpdist.pipelines.sweep import summarize_sweep

    df = source.table
    analysis = "certify" if "radius" in df.columns else "predict"
    summary = pd.DataFrame(summarize_sweep(df, analysis))
    manifest = source.manifest or {}
    w.add("### Summary", "")
    if manifest and manifest.get("status") != "complete":
        w.add(f"**The sweep is not complete (status {manifest.get('status', 'unknown')}); the numbers cover the "
              "chunks written so far.**", "")
    if analysis == "certify":
        header = ["σ", "N", "α", "seed", "inputs", *[_multiples_header(m) for m in RADIUS_MULTIPLES], "abstain",
                  "mean radius"]
        rows = [[r.sigma, r.n, r.alpha, r.seed, r.inputs,
                 *[pct(r.certified_accuracy[f"{m * r.sigma:g}"]) for m in RADIUS_MULTIPLES], pct(r.abstain_rate),
                 num(r.mean_radius)] for r in summary.itertuples()]
        w.add(*_table(header, rows))
        w.add("r ≥ kσ: certified accuracy at ℓ2 radius k·σ of that row (r = 0 is the smoothed accuracy); "
              "abstain: "
              "abstain rate; mean radius: over all inputs, abstentions counted as 0, in "
              f"{UNITS.get(_dataset_name(source) or '', 'input units')}.", "")
    else:
        rows = [[r.sigma, r.n, r.alpha, r.seed, r.inputs, pct(r.accuracy), pct(r.abstain_rate)]
                for r in summary.itertuples()]
        w.add(*_table(["σ", "N", "α", "seed", "inputs", "accuracy (abstain = wrong)", "abstain"], rows))
    samples = manifest.get("forward_samples")
    if samples:
        w.add(f"Forward samples: {samples['used']:,} used, against {samples['naive_grid']:,} for a naive grid of "
              f"separate runs ({100 * samples['saved_fraction']:.0f}% saved by reusing the largest N's noise "
              "prefixes across N and α).", "")

    sigmas = sorted(df["sigma"].unique())
    n_max, alpha_min = int(df["n"].max()), float(df["alpha"].min())
    seeds = sorted(df["seed"].unique())
    seed_note = f"pooled over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    w.add("### Plots", "")
    if analysis == "certify":
        curves = []
        for sigma in sigmas:
            part = df[(df["sigma"] == sigma) & (df["n"] == n_max) & (df["alpha"] == alpha_min)]
            if len(part):
                curves.append((f"σ = {sigma:g}", part, max_radius(n_max, alpha_min, float(sigma))))
        fig = _curves_plot(curves, f"Certified accuracy vs radius (N = {n_max:,}, α = {alpha_min:g})",
                           radius_label(source))
        w.image(fig, f"{slug}certified-accuracy", "certified accuracy against radius per sigma",
                f"Certified accuracy against ℓ2 radius, one curve per σ, at the sweep's largest N ({n_max:,}) and "
                f"smallest α ({alpha_min:g}), {seed_note}. " + _caps_note(curves))
    ns = sorted(df["n"].unique())
    if len(ns) < 2:
        w.add("The grid has a single N, so there is no plot against N.", "")
        return
    fig = _versus_n(summary, analysis, source)
    w.image(fig, f"{slug}versus-n", "abstain rate and mean radius against N",
            "Abstain rate and " + ("mean radius (abstentions count as 0)" if analysis == "certify"
                                   else "accuracy (abstain = wrong)")
            + f" against the number of samples N (log scale); colour: σ, line style: α; {seed_note}.")


def _versus_n(summary: pd.DataFrame, analysis: str, source: Source):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    metric, label = (("mean_radius", f"mean {radius_label(source)}") if analysis == "certify"
                     else ("accuracy", "accuracy (%)"))
    mean = summary.groupby(["sigma", "alpha", "n"], sort=True)[["abstain_rate", metric]].mean().reset_index()
    sigmas, alphas, ns = sorted(mean["sigma"].unique()), sorted(mean["alpha"].unique()), sorted(mean["n"].unique())
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    fig = _figure(11.5, 4.4)
    axes = fig.subplots(1, 2)
    for ax, column, ylabel, scale in ((axes[0], "abstain_rate", "abstain rate (%)", 100),
                                      (axes[1], metric, label, 100 if analysis == "predict" else 1)):
        for i, sigma in enumerate(sigmas):
            for j, alpha in enumerate(alphas):
                part = mean[(mean["sigma"] == sigma) & (mean["alpha"] == alpha)]
                ax.plot(part["n"], scale * part[column], color=f"C{i}", ls=styles[j % 4], marker=markers[j % 6],
                        lw=1.8, ms=5)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ns))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{int(n):,}" for n in ns])
        ax.set_xlim(ns[0] / 1.5, ns[-1] * 1.5)
        high = max(float(scale * mean[column].max()), 1e-9)
        ax.set_ylim(-0.04 * high, 1.1 * high)  # points at 0 stay visible above the axis
        title = "Abstain rate vs N" if column == "abstain_rate" else (
            "Mean radius vs N (abstentions count as 0)" if analysis == "certify" else "Accuracy vs N (abstain = wrong)")
        _style(ax, title, "N (samples per input, log scale)", ylabel)
    handles = [Line2D([], [], color=f"C{i}", lw=2.5) for i in range(len(sigmas))]
    labels = [f"σ = {s:g}" for s in sigmas]
    if len(alphas) > 1:
        handles += [Line2D([], [], color="black", ls=styles[j % 4], marker=markers[j % 6], ms=5)
                    for j in range(len(alphas))]
        labels += [f"α = {a:g}" for a in alphas]
    axes[1].legend(handles, labels, loc="best", fontsize=9)
    if len(alphas) == 1:
        fig.suptitle(f"α = {alphas[0]:g}", fontsize=10)
    return fig


def _rap_section(w: _Writer, source: Source, slug: str) -> None:
    df = source.table.copy()
    attribute = str(df["attribute"].iloc[0]) if "attribute" in df.columns else "attribute"
    by = [c for c in ("l1_non_sensitive", "sigma", "n", "alpha") if c in df.columns and df[c].nunique() > 1]
    w.add("### Summary", "")
    rows = []
    for key, part in df.groupby(by + ["release_model"], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        smoothed = key[-1] == "smoothed"
        certified = part["certified_low"].notna() if "certified_low" in part.columns else None
        half = (part["radius"] * part["attribute_scale"])[certified] if (
            smoothed and certified is not None and {"radius", "attribute_scale"} <= set(part.columns)) else None
        rows.append([*key, len(part), num(part["compatible_length"].median(), 2),
                     num(part["compatible_length"].mean(), 2),
                     num(part["abs_error"].mean(), 2) if "abs_error" in part.columns else "—",
                     pct(float(part["correct"].fillna(False).astype(bool).mean()))
                     if "correct" in part.columns and not part["correct"].isna().all() else "n/a",
                     pct(float((part["released_label"] == ABSTAIN).mean())) if "released_label" in part.columns
                     else "—",
                     pct(float(certified.mean())) if smoothed and certified is not None else "—",
                     num(float(half.median()), 2) if half is not None and len(half) else "—"])
    names = {"l1_non_sensitive": "ℓ1 penalty λ", "sigma": "σ", "n": "N", "alpha": "α"}
    w.add(*_table([*(names[c] for c in by), "release", "inputs", f"median compatible length ({attribute})",
                   "mean compatible length", "adversary MAE", "accuracy", "abstain", "certified",
                   "median certified half-width"], rows))
    params = ", ".join(f"{names[c]} = {_g(df[c].iloc[0])}" for c in ("sigma", "n", "alpha")
                       if c in df.columns and c not in by)
    in_params = f" ({params})" if params else ""
    w.add(f"Lengths, adversary error and half-widths are in raw units of {attribute}{in_params}."
          " The compatible set holds every value of the attribute whose release equals the release at the true "
          "value; the adversary estimates the attribute from it (MAE: mean absolute error). Certified: share of "
          "smoothed releases with a certificate; half-width: radius × the attribute's scale.", "")
    w.add("### Plots", "")
    from matplotlib.ticker import MaxNLocator

    panels = list(df.groupby(by, sort=True)) if by else [((), df)]
    # The grid's own span (low .. low + (G-1)·step) is the longest compatible set a grid point can give.
    span = None
    grid = ["grid_step", "grid_points"]
    if set(grid) <= set(df.columns) and len(df[grid].drop_duplicates()) == 1:
        span = float(df["grid_step"].iloc[0]) * (int(df["grid_points"].iloc[0]) - 1)
    fig = _figure(6.4 * min(len(panels), 3), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    bins = np.histogram_bin_edges(df["compatible_length"].dropna(), bins=min(40, max(10, int(np.sqrt(len(df))))))
    for ax, (key, part) in zip(axes, panels):
        for i, release in enumerate(sorted(part["release_model"].unique())):
            lengths = part.loc[part["release_model"] == release, "compatible_length"].dropna()
            median = float(lengths.median())
            ax.hist(lengths, bins=bins, color=f"C{i}", alpha=0.45, edgecolor=f"C{i}", linewidth=1.0,
                    label=f"{release} (median {median:.2f})")
            ax.axvline(median, color=f"C{i}", ls="--", lw=1.5)
        if span:
            ax.axvline(span, color="grey", ls=":", lw=1.5, label=f"whole grid range ({span:.2f})")
        key = key if isinstance(key, tuple) else (key,)
        sub = ", ".join(f"{names[c]} = {_g(v)}" for c, v in zip(by, key))
        _style(ax, sub if len(panels) > 1 else f"Compatible lengths of {attribute}{in_params}",
               f"compatible length ({attribute}, raw units)", "inputs")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best", fontsize=9)
    if len(panels) > 1:
        fig.suptitle(f"Compatible lengths of {attribute}{in_params}", fontsize=11)
    caption = (f"Distribution of the compatible-set length of {attribute} per input, base model against the "
               f"smoothed release{in_params}"
               + (f", one panel per {', '.join(names[c] for c in by)}" if by else "") + "; dashed: medians"
               + ("; dotted: the span of the attribute grid, the longest possible set" if span else "")
               + ". Longer = the adversary pins the attribute down less precisely.")
    w.image(fig, f"{slug}rap-lengths", "compatible lengths base against smoothed", caption)


def _attack_section(w: _Writer, source: Source, slug: str) -> None:
    df = source.table.copy()
    df["success"] = df["success"].astype(float)
    keys = [c for c in ("defense", "sigma", "n", "epsilon", "release") if c in df.columns]
    aggs = {"targets": ("success", "size"), "asr": ("success", "mean"), "accuracy": ("utility_accuracy", "mean")}
    for column, how in (("eval_confidence", "mean"), ("queries", "mean"), ("forward_passes", "sum")):
        if column in df.columns:
            aggs[column] = (column, how)
    g = df.groupby(keys, dropna=False, sort=True).agg(**aggs).reset_index()
    as_fraction = float(g["accuracy"].max()) <= 1.0
    g["accuracy_pct"] = 100 * g["accuracy"] if as_fraction else g["accuracy"]
    names = {"defense": "defense", "sigma": "σ", "n": "N", "epsilon": "ε", "release": "release"}
    w.add("### Summary", "")
    header = [names[k] for k in keys] + ["targets", "ASR", "utility accuracy"]
    extra = [c for c in ("eval_confidence", "queries", "forward_passes") if c in g.columns]
    extra_names = {"eval_confidence": "mean eval. confidence", "queries": "mean queries",
                   "forward_passes": "forward passes"}
    header += [extra_names[c] for c in extra]
    rows = [[*(r[k] for k in keys), int(r["targets"]), pct(r["asr"]), f"{r['accuracy_pct']:.1f}%",
             *(num(r[c], 3) if c == "eval_confidence" else (f"{r[c]:,.0f}") for c in extra)]
            for _, r in g.iterrows()]
    w.add(*_table(header, rows))
    w.add("ASR (attack success rate): share of attacked targets whose reconstruction the independent evaluation "
          "classifier labels as the target. Utility accuracy: the released model's accuracy.", "")
    w.add("### Plots", "")
    fig = _figure(7.2, 4.8)
    ax = fig.add_subplot()
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    # Each point names its defense's own knobs (σ, ε) and any other parameter that varies.
    varying = [k for k in keys if k != "defense" and (k in ("sigma", "epsilon") or g[k].nunique(dropna=True) > 1)]
    for i, (defense, part) in enumerate(g.groupby("defense", sort=True)):
        part = part.sort_values("accuracy_pct")
        ax.plot(part["accuracy_pct"], 100 * part["asr"], color=f"C{i}", marker=markers[i % len(markers)], ms=7,
                lw=1, ls="-" if len(part) > 1 else "none", label=str(defense))
        for _, r in part.iterrows():
            text = ", ".join(f"{names[k]}={_g(r[k])}" for k in varying if pd.notna(r[k]))
            if text:
                ax.annotate(text, (r["accuracy_pct"], 100 * r["asr"]), textcoords="offset points", xytext=(5, 5),
                            fontsize=8, color=f"C{i}")
    ax.set_ylim(-3, 103)
    ax.margins(x=0.12)
    _style(ax, "Attack success rate vs utility accuracy", "utility accuracy (%)", "attack success rate (%)")
    ax.legend(title="defense", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    w.image(fig, f"{slug}attack-asr", "attack success rate against accuracy",
            "Attack success rate against the released model's accuracy, one point per defense setting; lower "
            "right is better (accurate and hard to attack).")


SECTIONS = {"certify": _run_section, "predict": _run_section, "sweep": _sweep_section, "rap": _rap_section,
            "attack": _attack_section}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name) + "-"


def _rows(source: Source) -> str:
    return f"{len(source.table):,}"


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write a markdown report (default ``DIR/report.md``) and its PNG plots next to it; returns its path.

    ``directory`` is a run directory (certify, predict, ``rpdist rap``, attack benchmark), a sweep
    directory, or a folder holding several of them. Raises :class:`InputError` when it holds none.
    """
    from rpdist import __version__
    from rpdist.io.store import check_writable

    directory = Path(directory)
    sources, notes = find_sources(directory)
    out = Path(out) if out is not None else directory / "report.md"
    if out.is_dir():
        out = out / "report.md"
    check_writable(out.parent)
    w = _Writer(out)
    name = directory.resolve().name
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    w.add(f"# rpdist report: {name}", "",
          f"Generated by rpdist {__version__} on {stamp} from `{directory}`.", "")
    several = len(sources) > 1
    if several:
        w.add("| result | kind | rows | σ | N | α |", "|---|---|---|---|---|---|")
        for s in sources:
            params = [", ".join(_g(v) for v in sorted(s.table[c].dropna().unique())) if c in s.table.columns else "—"
                      for c in ("sigma", "n", "alpha")]
            w.add("| " + " | ".join([f"`{s.name}`", s.kind, _rows(s), *params]) + " |")
        w.add("")
    for note in notes:
        w.add(f"Skipped: {note}.", "")
    certify_runs = [s for s in sources if s.kind == "certify"]
    if len(certify_runs) > 1:
        from rpdist.smoothing.stats import max_radius

        w.add("## All certify runs", "")
        curves = []
        for s in certify_runs:
            for (sigma, n, alpha), part in s.table.groupby(["sigma", "n", "alpha"], sort=True):
                curves.append((f"{s.name}: σ = {sigma:g}, N = {n:,}, α = {alpha:g}", part,
                               max_radius(int(n), float(alpha), float(sigma))))
        units = {radius_label(s) for s in certify_runs}
        fig = _curves_plot(curves, "Certified accuracy vs radius, all certify runs",
                           units.pop() if len(units) == 1 else "ℓ2 radius (input units of each run's model)")
        w.image(fig, "all-certified-accuracy", "certified accuracy against radius for every run",
                "Certified accuracy against ℓ2 radius, one curve per certify run. " + _caps_note(curves))
    for source in sources:
        w.add(f"## {TITLES[source.kind]}: `{source.name}`", "")
        # Plots of runs in sub-folders carry the run's name; in one folder each kind's plot names differ already.
        slug = _slug(source.name) if source.path != directory else ""
        if source.kind == "sweep" and any(o.kind == "certify" and o.path == source.path for o in sources):
            slug += "sweep-"
        SECTIONS[source.kind](w, source, slug)
        _config_section(w, source)
    text = "\n".join(w.lines).rstrip() + "\n"

    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(out, write)
    return out
