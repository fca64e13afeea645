"""How the CLI shows an outcome: the analysis' own summary rows and columns, one code path for all."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rpdist import analyses
from rpdist.reporting.format import pct, points_interval, rate_with_interval


def print_outcome(outcome, title: str | None = None) -> None:
    """A metric/value table for a single summary row, else one row per summary row; then notes and the path."""
    console = Console()
    analysis = analyses.get(outcome.analysis)
    columns = analysis.summary_columns
    rows = outcome.summary
    table = Table(title=title or f"{analysis.name} summary: {outcome.path.rsplit('/', 1)[-1]}")
    if len(rows) == 1:
        table.add_column("metric")
        table.add_column("value", justify="right")
        for column in columns:
            table.add_row(column.header, column.cell(rows[0]))
        if rows[0].get("samples_per_second"):
            table.add_row("samples/s", f"{rows[0]['samples_per_second']:,.0f}")
        console.print(table)
    else:  # plain lines, one per row: readable at any terminal width and easy to grep
        console.print(table.title)
        for row in rows:
            keys = " ".join(f"{c.header}={c.cell(row)}" for c in columns if c.key)
            console.print(f"  {keys} | " + " | ".join(f"{c.header} {c.cell(row)}" for c in columns if not c.key),
                          soft_wrap=True, highlight=False)
    nonfinite = sum(row.get("nonfinite_inputs", 0) for row in rows)
    if nonfinite:
        console.print(f"warning: the model gave NaN or inf logits on noisy samples of {nonfinite} input(s); they "
                      "abstain (column nonfinite)", style="yellow", soft_wrap=True)
    samples = outcome.manifest.get("details", {}).get("forward_samples")
    if samples:
        console.print(f"forward samples: {samples['used']:,} used, {samples['naive_grid']:,} for a naive grid "
                      f"({100 * samples['saved_fraction']:.0f}% saved)")
    spent = outcome.manifest.get("details", {}).get("samples")
    if spent:  # a sequential run: what stopping early saved
        console.print(f"samples: {spent['used']:,} used, {spent['forward_samples']:,} computed (waste "
                      f"{spent['waste']:,}), {spent['naive_at_max_n']:,} at max N for every input "
                      f"({spent['saved_factor']:.1f}x fewer)")
    if outcome.resumed_chunks:
        console.print(f"resumed: {outcome.resumed_chunks} chunk(s) were already done")
    console.print(f"results: {outcome.path}")


def print_comparison(comparison) -> None:
    """A paired attack comparison as plain lines: one per seed when there are several, then the pooled one."""
    console = Console()
    console.print("A against B, attack by attack (95% intervals: Clopper–Pearson per side, Tango for A − B)",
                  soft_wrap=True)
    for r in comparison.rows:
        label = "pooled" if r["seed"] == "pooled" else f"seed {r['seed']}"
        console.print(f"  {label}: {r['pairs']} pairs | ASR A {rate_with_interval(r, 'asr_a', digits=0)} | ASR B {rate_with_interval(r, 'asr_b', digits=0)} | "
                      f"discordant {r['a_only']} A / {r['b_only']} B | A − B "
                      f"{points_interval(r['difference'], r['difference_low'], r['difference_high'])} | utility "
                      f"{pct(r['utility_a'])} / {pct(r['utility_b'])}", soft_wrap=True, highlight=False)
    for name, settings in zip("AB", comparison.settings):
        shown = ", ".join(f"{k}={v}" for k, v in settings.items() if v == v)  # NaN: not this defense's knob
        console.print(f"{name}: {shown}", soft_wrap=True, highlight=False)
    console.print("models (both sides): " + ", ".join(f"{role} {sha256[:8]}" for role, sha256 in comparison.models.items()),
                  highlight=False)
