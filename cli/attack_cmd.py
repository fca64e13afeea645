"""``rpdist attack inversion``: label-only model inversion (BREP-MI) against a defense; ``rpdist attack compare``:
A's attacks paired with B's, refused across different models."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rpdist.analyses.attack import AttackAnalysis
from rpdist.cli.options import ADDRESS, BATCH, DEVICE, QUIET, RUN_ID, TARGETS_AT_ONCE, WORKERS
from rpdist.cli.printing import print_outcome


def register(app: typer.Typer) -> None:
    attack_app = typer.Typer(help="Benchmark privacy attacks against released labels.", no_args_is_help=True)
    app.add_typer(attack_app, name=AttackAnalysis.name)

    @attack_app.command("inversion")
    def inversion_cmd(
        dataset: str = typer.Option("digits", "--dataset", "-d", help="Built-in image dataset: digits or mnist5k."),
        attack: str = typer.Option("brep", "--attack", help="Attack: brep (label-only BREP-MI)."),
        defense: str = typer.Option("none", "--defense", help="none, rp, dpsgd, rr, abstain (random "
                                     "abstention at rp PREDICT's abstain rate) or noise (one pass on x + N(0, σ²I))."),
        sigma: Optional[List[float]] = typer.Option(None, "--sigma", "-s", help="rp, abstain: σ (repeatable; default "
                                                    "0.1, 0.25, 0.5); noise: required."),
        n: Optional[List[int]] = typer.Option(None, "--n", help="rp, abstain: Monte Carlo samples per query "
                                              "(repeatable; default 200)."),
        epsilon: Optional[List[float]] = typer.Option(None, "--epsilon", help="dpsgd/rr: ε (repeatable; inf = "
                                                      "DP-SGD clip-only)."),
        release: Optional[List[str]] = typer.Option(None, "--release", help="rp: predict or certify (abstain = not "
                                                    "the target), or majority (no certificate) (repeatable)."),
        repeat: Optional[List[int]] = typer.Option(None, "--repeat", help="Ask each query k times, keep the "
                                                   "majority (repeatable)."),
        noise: Optional[List[str]] = typer.Option(None, "--noise", help="fresh or keyed (query-consistent) "
                                                  "randomness (repeatable)."),
        nudge: Optional[List[str]] = typer.Option(None, "--nudge", help="Nudged repeats: move repetitions 2..k by "
                                                  "δ = this × σ in a random direction, or 'ulp' (every pixel one "
                                                  "ulp); 0 = exact repeats (repeatable)."),
        attacker: Optional[List[str]] = typer.Option(None, "--attacker", help="plain (abstain = another class) or "
                                                     "abstain-aware (abstain = near the boundary; repeatable)."),
        noise_key_file: Optional[Path] = typer.Option(None, "--noise-key-file", help="Secret key of keyed noise "
                                                      "(else $RPDIST_NOISE_KEY, else a random key, kept at 0600 in the cache until the run completes)."),
        targets: Optional[str] = typer.Option(None, "--targets", help="Comma-separated classes; default all."),
        restarts: int = typer.Option(1, "--restarts", help="Attacks per target class."),
        query_budget: int = typer.Option(400, "--query-budget", help="Released labels per attack."),
        alpha: float = typer.Option(0.001, "--alpha", help="rp PREDICT level."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Secret noise seed of the release and attack seed; "
                                           "default: drawn from os.urandom and recorded in the manifest."),
        batch_size: Optional[int] = BATCH,
        workers: Optional[int] = WORKERS,
        address: Optional[str] = ADDRESS,
        device: Optional[str] = DEVICE,
        out: Path = typer.Option(Path("results"), "--out", "-o", help="Writes OUT/RUN_ID/attack.parquet."),
        run_id: Optional[str] = RUN_ID,
        prior: str = typer.Option("public", "--prior", help="Generator per target: public (all public images) or "
                                  "disjoint (none of the target's class)."),
        judge_threshold: float = typer.Option(0.0, "--judge-threshold", help="Success needs the evaluator's top-1 "
                                              "to be the target with at least this confidence (0: top-1 alone)."),
        targets_at_once: Optional[int] = TARGETS_AT_ONCE,
        quiet: bool = QUIET,
    ) -> None:
        """Reconstruct each class from labels only; ASR (judged by an independent classifier) and utility."""
        from rpdist.attacks.inversion import InversionSpec, run_inversion
        from rpdist.errors import InputError

        try:
            target_list = [int(t) for t in targets.split(",")] if targets else None
        except ValueError:
            raise InputError(f"--targets must be comma-separated class numbers, got {targets!r}") from None
        spec = InversionSpec(dataset=dataset, attack=attack, defense=defense, sigmas=sigma or None,
                             ns=n or None, attackers=attacker or ["plain"], epsilons=epsilon or None, releases=release or ["majority"],
                             repeats=repeat or [1], noises=noise or ["fresh"], nudges=nudge or ["0"],
                             noise_key_file=str(noise_key_file) if noise_key_file else None, targets=target_list,
                             restarts=restarts, query_budget=query_budget, alpha=alpha, seed=seed,
                             batch_size=batch_size, workers=workers, address=address, device=device,
                             prior=prior, judge_threshold=judge_threshold, targets_at_once=targets_at_once,
                             out=str(out), run_id=run_id)
        print_outcome(run_inversion(spec, progress=not quiet), title="BREP-MI model inversion")

    @attack_app.command("compare")
    def compare_cmd(
        a: List[Path] = typer.Argument(..., metavar="A", help="Side A: attack runs, sweeps or folders inside a sweep (pooled)."),
        against: List[Path] = typer.Option(..., "--against", "-b", metavar="B",
                                           help="Side B, the same way: one path per --against."),
        where: Optional[List[str]] = typer.Option(None, "--where", help="KEY=VALUE on a setting column (sigma, n, "
                                                  "release, noise, attacker, …) for both sides (repeatable)."),
        where_a: Optional[List[str]] = typer.Option(None, "--where-a", help="KEY=VALUE for side A only."),
        where_b: Optional[List[str]] = typer.Option(None, "--where-b", help="KEY=VALUE for side B only."),
    ) -> None:
        """Pair A's attacks with B's (same seed, target, restart): ASR difference with Tango's paired interval.

        Refused when the two sides ran on different role models (their manifests' sha256 differ)."""
        from rpdist.analyses.attack_pairs import compare_attacks
        from rpdist.cli.printing import print_comparison

        print_comparison(compare_attacks(a, against, where or [], where_a or [], where_b or []))
