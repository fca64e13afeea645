"""``rpdist attack extraction``: train a student on the release's answers; fidelity against query budget."""

from __future__ import annotations

from typing import List, Optional

import typer

from rpdist.analyses.attack import AttackAnalysis
from rpdist.analyses.extraction import ExtractionAnalysis
from rpdist.cli.options import ADDRESS, BATCH, DEVICE, QUIET, RUN_ID, WORKERS
from rpdist.cli.printing import print_outcome
from rpdist.attacks.extraction import RELEASES


def register(app: typer.Typer) -> None:
    """Adds ``extraction`` to the ``attack`` group (registered before this module)."""
    attack_app = next(group.typer_instance for group in app.registered_groups if group.name == AttackAnalysis.name)

    @attack_app.command(ExtractionAnalysis.name)
    def extraction_cmd(
        dataset: str = typer.Option("insurance", "--dataset", "-d", help="insurance or digits (built-in)."),
        defense: str = typer.Option("none", "--defense", help="none, rp, dpsgd or rr."),
        sigma: Optional[List[float]] = typer.Option(None, "--sigma", "-s", help="rp: σ (repeatable). Default 0.5."),
        n: Optional[List[int]] = typer.Option(None, "--n", help="rp: samples per query (repeatable). Default 1000."),
        release: Optional[List[str]] = typer.Option(None, "--release", help="rp: predict, majority or certify "
                                                    "(repeatable). Default predict."),
        epsilon: Optional[List[float]] = typer.Option(None, "--epsilon", help="dpsgd/rr: ε (repeatable)."),
        query_budget: Optional[List[int]] = typer.Option(None, "--query-budget", help="Queries (repeatable). "
                                                         "Default 30, 100, 300."),
        query_source: str = typer.Option("public", "--query-source", help="public (the public half of the "
                                         "train split) or synthetic (public inputs plus noise)."),
        student: str = typer.Option("mlp", "--student", help="Student architecture: mlp or linear."),
        seeds: int = typer.Option(5, "--seeds", help="Seeds (query order, release noise, student init)."),
        alpha: float = typer.Option(0.001, "--alpha", help="rp: PREDICT/CERTIFY level."),
        train_sigma: float = typer.Option(0.25, "--train-sigma", help="The target's training noise."),
        batch_size: Optional[int] = BATCH,
        workers: Optional[int] = WORKERS,
        address: Optional[str] = ADDRESS,
        device: Optional[str] = DEVICE,
        out: str = typer.Option("results", "--out", "-o", help="Writes OUT/RUN_ID/extraction.parquet."),
        run_id: Optional[str] = RUN_ID,
        quiet: bool = QUIET,
    ) -> None:
        """Copy the released model by distillation: fidelity to the target and student accuracy per budget."""
        from rpdist.attacks.extraction import extraction_spec, run_extraction

        spec = extraction_spec(dataset=dataset, defense=defense, sigmas=tuple(sigma or (0.5,)), ns=tuple(n or (1000,)),
                               releases=tuple(release or (RELEASES[0],)), epsilons=tuple(epsilon) if epsilon else None,
                               query_budgets=tuple(query_budget or (30, 100, 300)), query_source=query_source,
                               student=student, seeds=seeds, alpha=alpha, train_sigma=train_sigma,
                               batch_size=batch_size, workers=workers, address=address, device=device, out=out,
                               run_id=run_id)
        print_outcome(run_extraction(spec, progress=not quiet), title=f"model extraction from {dataset}")
