"""Label-only model inversion (``rpdist attack inversion``) as an analysis: ASR with intervals, report section.

ASR is aggregated here and only here: the CLI, sweeps and the report all read :meth:`summarize`.
"""

from __future__ import annotations

import pandas as pd

from rpdist.analyses.base import Analysis, Column, Outcome
from rpdist.attacks.brep import EXACT, PLAIN
from rpdist.defenses.releases import FRESH
from rpdist.reporting.format import fmt, md_table, num, pct, pct_interval, points_interval, rate_with_interval
from rpdist.reporting.plots import figure, style
from rpdist.smoothing.stats import clopper_pearson, paired_difference

# A defense setting is identified by these columns (those present); sweeps add their partition values.
SETTING = ("defense", "sigma", "n", "epsilon", "release", "noise", "repeat", "nudge", "attacker", "alpha", "seed")
NAMES = {"defense": "defense", "sigma": "σ", "n": "N", "alpha": "α", "seed": "seed", "epsilon": "ε",
         "release": "release", "noise": "noise", "repeat": "k", "nudge": "δ/σ", "attacker": "attacker"}
# Settings of the plain attacker against the plain release; plot labels name only what differs from these.
PLAIN_ATTACK = {"noise": FRESH, "repeat": 1, "nudge": EXACT, "attacker": PLAIN}
PAPER = "ASR, paper protocol (best of restarts per class)"
DIFF = "ASR − start ASR [95% CI]"


RECONSTRUCTIONS = "reconstructions.png"  # each attack run's grid of reconstructed images
RP = "rp"  # the one defense that smooths
NOISE = "noise"  # the Gaussian-input-noise baseline: one noisy pass per query, no test
GRID_DEFENSES = (RP, "abstain", NOISE)  # defenses with a σ (and N) grid in sweeps: rp, its abstain-matched
# random-abstention baseline, and the Gaussian-input-noise baseline (N = 1)


def release_name(release) -> str:
    """The majority release has no certificate behind it, so it is never shown as plain RP."""
    return f"{release} (uncertified)" if release == "majority" else str(release)


def _utility(r: dict) -> str:
    """Utility accuracy with its Clopper–Pearson interval over the test split (none for tables written before
    rows recorded the split's size)."""
    return pct_interval(r["utility_accuracy"], (r.get("utility_low"), r.get("utility_high")), missing="—")


def utility_interval(part: pd.DataFrame) -> tuple[float, float]:
    """95% Clopper–Pearson interval of a setting's utility accuracy: its correct answers out of the test split's
    ``utility_tests`` inputs (every attack of a setting shares one utility measurement)."""
    nan = float("nan")
    if "utility_tests" not in part or part["utility_tests"].isna().any():
        return nan, nan
    tests = int(part["utility_tests"].iloc[0])
    return clopper_pearson(round(float(part["utility_accuracy"].iloc[0]) * tests), tests, 0.05)


def paper_protocol(part: pd.DataFrame) -> pd.Series:
    """Per target, the success of the restart whose reconstruction the evaluator is most confident in
    (the paper's protocol: its best image per class). Restarts that never found a start point made no
    reconstruction and lose to any that did; ties go to the lowest restart."""
    order = part.assign(_found=part["found"] if "found" in part else True,
                        restart=part["restart"] if "restart" in part else 0)
    order = order.sort_values(["target", "_found", "eval_confidence", "restart"],
                              ascending=[True, False, False, True], kind="stable")
    return order.groupby("target", sort=True)["success"].first()


class AttackAnalysis(Analysis):
    name = "attack"
    final_file = "attack.parquet"
    title = "Attack benchmark"
    required_columns = ("defense", "success", "utility_accuracy")
    summary_columns = (
        Column("defense", lambda r: str(r["defense"]), key=True), Column("σ", lambda r: fmt(r.get("sigma")), key=True),
        Column("N", lambda r: fmt(r.get("n")), key=True), Column("ε", lambda r: fmt(r.get("epsilon")), key=True),
        Column("release", lambda r: release_name(r.get("release")), key=True), Column("noise", lambda r: str(r.get("noise", "—")), key=True),
        Column("k", lambda r: fmt(r.get("repeat")), key=True),
        Column("δ/σ", lambda r: str(r.get("nudge", "—")), key=True),
        Column("attacker", lambda r: str(r.get("attacker", PLAIN)), key=True),
        Column("ASR [95% CI]", lambda r: rate_with_interval(r, "asr", digits=0)),
        Column("start ASR", lambda r: pct(r["start_asr"], missing="—", digits=0)),
        Column(DIFF, lambda r: points_interval(r["asr_gain"], r["asr_gain_low"], r["asr_gain_high"])),
        Column(PAPER, lambda r: rate_with_interval(r, "paper_asr", digits=0)),
        Column("utility", _utility),
        Column("abstain rate", lambda r: pct(r["abstain_rate"], missing="—")),
        Column("mean queries", lambda r: f"{r['mean_queries']:.0f}"),
        Column("forward passes", lambda r: f"{r['forward_passes']:,}"),
    )

    def run(self, spec, progress: bool = False) -> Outcome:
        from rpdist.attacks.inversion import run_inversion

        return run_inversion(spec, progress=progress)

    def smoothing_grid(self, options: dict) -> bool:
        return options.get("defense", RP) in GRID_DEFENSES

    def grid_decides(self, options: dict) -> bool:
        return options.get("defense", RP) != NOISE

    def point_models(self, sweep, point: dict) -> dict[str, str]:
        """The models this machine has for the point (trained and cached on first use, as the run would):
        retrained on another machine they differ, and attacks on other models do not pair."""
        from rpdist.attacks import roles
        from rpdist.attacks.inversion import RoleModels, defense_configs

        spec = self.point_spec(sweep, point, out=".", run_id="models")
        targets = spec.targets or list(range(roles.NUM_CLASSES))
        return RoleModels.load(spec, targets, defense_configs(spec)).hashes()

    def point_spec(self, sweep, point: dict, **fixed):
        """One attack run per grid point: every release × repeat × noise (× ε for dpsgd and rr) of the sweep."""
        from rpdist.attacks.inversion import InversionSpec

        grid = dict(sigmas=[point["sigma"]], ns=[point["n"]]) if sweep.defense in GRID_DEFENSES else {}
        releases = [sweep.release] if isinstance(sweep.release, str) else list(sweep.release)
        return InversionSpec(dataset=sweep.dataset, defense=sweep.defense, **grid, alpha=point["alpha"],
                             seed=point["seed"], releases=releases, repeats=list(sweep.repeat),
                             noises=list(sweep.noise), nudges=list(sweep.nudge), attackers=list(sweep.attacker),
                             prior=sweep.prior, judge_threshold=sweep.judge_threshold,
                             epsilons=list(sweep.epsilon) if sweep.epsilon else None,
                             restarts=sweep.restarts, query_budget=sweep.query_budget,
                             generator_epochs=sweep.generator_epochs,
                             targets=list(sweep.targets) if sweep.targets else None,
                             batch_size=sweep.batch_size, **fixed)

    def summarize(self, table: pd.DataFrame) -> list[dict]:
        """Per defense setting: ASR with its 95% Clopper–Pearson interval over targets × restarts, the
        starting points' ASR and ASR − start ASR with Tango's paired score interval (each attack is a pair:
        its verdict and its start's), the paper-protocol ASR (best restart per target, Clopper–Pearson
        over targets), the median KNN distances of ends and starts, utility with its Clopper–Pearson interval
        over the test split, abstain rate, queries and forward passes."""
        keys = [c for c in SETTING if c in table.columns]
        rows = []
        for key, part in table.groupby(keys, dropna=False, sort=True):
            wins, total = int(part["success"].sum()), len(part)
            low, high = clopper_pearson(wins, total, 0.05)
            row = dict(zip(keys, key))
            nan = float("nan")
            gain = (paired_difference(part["success"], part["start_success"], 0.05) if "start_success" in part
                    else (nan, nan, nan))
            paper = (paper_protocol(part) if {"target", "eval_confidence"} <= set(part.columns)
                     else pd.Series(dtype=bool))
            paper_ci = clopper_pearson(int(paper.sum()), len(paper), 0.05) if len(paper) else (nan, nan)
            row.update({
                "targets": total, "asr": wins / total, "asr_low": low, "asr_high": high,
                "start_asr": float(part["start_success"].mean()) if "start_success" in part else float("nan"),
                "asr_gain": gain[0], "asr_gain_low": gain[1], "asr_gain_high": gain[2],
                "paper_classes": len(paper), "paper_asr": float(paper.mean()) if len(paper) else nan,
                "paper_asr_low": paper_ci[0], "paper_asr_high": paper_ci[1],
                "abstain_rate": float(part["abstain_rate"].mean()) if "abstain_rate" in part else nan,
                "found_rate": float(part["found"].mean()) if "found" in part else float("nan"),
                "utility_accuracy": float(part["utility_accuracy"].mean()),
                **dict(zip(("utility_low", "utility_high"), utility_interval(part))),
                "eval_confidence": float(part["eval_confidence"].mean()) if "eval_confidence" in part else float("nan"),
                **{f"median_{c}": float(part[c].median()) if c in part else float("nan")
                   for c in ("knn_distance", "start_knn_distance")},
                "mean_queries": float(part["queries"].mean()) if "queries" in part else float("nan"),
                "forward_passes": int(part["forward_passes"].sum()) if "forward_passes" in part else 0,
            })
            rows.append(row)
        return rows

    def report(self, w, source, slug: str) -> None:
        self._section(w, source.table, [], f"{slug}attack-asr")
        grids = sorted(source.path.glob(f"**/{RECONSTRUCTIONS}"))
        if grids:
            import os

            w.add("### Reconstructions", "", "One row per defense setting, one column per target class, as each run "
                  "drew them:", "")
            for path in grids:
                where = path.parent.relative_to(source.path).as_posix()
                w.add(f"![reconstructions {where}]({os.path.relpath(path, w.out.parent)})", "",
                      f"*{source.name}{'' if where == '.' else ': ' + where}*", "")

    def overview(self, w, sources: list) -> None:
        """Every attack run and sweep of the report in one table and on one privacy–utility plane, so
        defenses run separately (one sweep file each) are compared where they can be."""
        if len(sources) < 2:
            return
        w.add("## All attack results", "")
        table = pd.concat([s.table.assign(result=s.name) for s in sources], ignore_index=True)
        self._section(w, table, ["result"], "all-attack-asr")

    def _section(self, w, table: pd.DataFrame, first: list[str], plot: str) -> None:
        """The summary table (ASR with its interval per setting) and ASR against utility."""
        names = {**NAMES, "result": "result"}
        groups = table.groupby(first, sort=False) if first else [((), table)]
        summary = [dict(zip(first, key)) | row for key, part in groups for row in self.summarize(part)]
        g = pd.DataFrame(summary)
        keys = first + [c for c in SETTING if c in g.columns and (c == "defense" or g[c].nunique(dropna=True) > 1
                                                                 or c in ("sigma", "n", "epsilon", "release"))]
        w.add("### Summary", "")
        header = [names[k] for k in keys] + ["attacks", "ASR [95% CI]", "start ASR", DIFF, PAPER,
                                            "utility accuracy", "abstain rate", "mean eval. confidence",
                                            "mean queries", "forward passes"]
        rows = [[*(r[k] for k in keys), int(r["targets"]),
                 rate_with_interval(r, "asr"), pct(r["start_asr"]),
                 points_interval(r["asr_gain"], r["asr_gain_low"], r["asr_gain_high"]),
                 rate_with_interval(r, "paper_asr"),
                 _utility(r), pct(r["abstain_rate"]), num(r["eval_confidence"], 3),
                 f"{r['mean_queries']:,.0f}", f"{r['forward_passes']:,}"] for r in summary]
        w.add(*md_table(header, rows))
        w.add("ASR (attack success rate): share of attacks (targets × restarts) whose reconstruction the independent "
              "evaluation classifier labels as the target, with a 95% Clopper–Pearson interval. Start ASR: the same "
              "verdict on the walk's starting points; ASR − start ASR has Tango's paired 95% score interval (each attack pairs its verdict with its start's). "
              "Paper protocol: per target class, only the restart whose reconstruction the evaluator is most "
              "confident in is judged (Clopper–Pearson over classes). Utility accuracy: the released labels' "
              "accuracy on the held-out test split, with its Clopper–Pearson interval over that split's inputs; "
              "abstain rate: their share of −1 there.", "")
        w.add("### Plots", "")
        w.image(privacy_utility(g), plot, "attack success rate against accuracy",
                "Attack success rate against the released model's accuracy, one point per defense setting, one line "
                "per defense and per setting other than its own knob (σ, ε) that varies; lower right is better "
                "(accurate and hard to attack).")


def privacy_utility(g: pd.DataFrame):
    """ASR against utility: each line is a defense at fixed other settings, its points labelled by the
    defense's own knob (σ for rp, ε for dpsgd and rr). Every other setting that varies (N, release, k, δ,
    attacker, ...) splits the line, so no line joins two attackers or two nudges."""
    fig = figure(7.8, 5.0)
    ax = fig.add_subplot()
    markers = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p"]
    families = []
    for defense, part in g.groupby("defense", sort=True):
        others = [k for k in SETTING if k not in ("defense", "sigma", "epsilon")  # the knob is along the line
                  and k in part.columns and part[k].nunique(dropna=True) > 1]
        for key, family in (part.groupby(others, sort=True, dropna=False) if others else [((), part)]):
            key = key if isinstance(key, tuple) else (key,)
            shown = [f"{NAMES[k]}={fmt(v)}" for k, v in zip(others, key) if PLAIN_ATTACK.get(k) != v]
            label = str(defense) + (f" ({', '.join(shown)})" if shown else "")
            families.append((label, family))
    for i, (label, family) in enumerate(families):
        family = family.sort_values("utility_accuracy")
        ax.plot(100 * family["utility_accuracy"], 100 * family["asr"], color=f"C{i % 10}",
                marker=markers[i % len(markers)], ms=6, lw=1, ls="-" if len(family) > 1 else "none", label=label)
        for _, r in family.iterrows():
            knob = next((f"{NAMES[k]}={fmt(r[k])}" for k in ("sigma", "epsilon") if k in r and pd.notna(r[k])), "")
            if knob:
                ax.annotate(knob, (100 * r["utility_accuracy"], 100 * r["asr"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=f"C{i % 10}")
    ax.set_ylim(-3, 103)
    ax.margins(x=0.12)
    style(ax, "Attack success rate vs utility accuracy", "utility accuracy (%)", "attack success rate (%)")
    # outside the axes and out of the layout, so a long legend grows the saved image instead of shrinking the plot
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8).set_in_layout(False)
    return fig
