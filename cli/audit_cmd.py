"""``rpdist audit distinguish``: draw releases at x and at close partners x', score a distinguisher."""

from __future__ import annotations

from typing import List, Optional

import typer

from rpdist.analyses.audit import AuditAnalysis
from rpdist.cli.options import ADDRESS, BATCH, DEVICE, QUIET, RUN_ID, WORKERS
from rpdist.cli.printing import print_outcome
from rpdist.privacy.audit import DIRECTIONS, RELEASES, SELECTIONS


def register(app: typer.Typer) -> None:
    audit_app = typer.Typer(help="Audit what the deployed release lets an observer tell apart.", no_args_is_help=True)
    app.add_typer(audit_app, name=AuditAnalysis.name)

    @audit_app.command("distinguish")
    def distinguish_cmd(
        dataset: str = typer.Option(..., "--dataset", "-d", help="insurance, digits or a data file."),
        model: Optional[str] = typer.Option(None, "--model", help="TorchScript file or state dict (with --arch). "
                                            "Default: the dataset's built-in model."),
        arch: Optional[str] = typer.Option(None, "--arch", help="mlp, cnn or linear, for a state dict."),
        train_sigma: Optional[float] = typer.Option(None, "--train-sigma", help="Built-in model's training noise. "
                                                    "Default: --sigma."),
        sigma: float = typer.Option(..., "--sigma", "-s", help="Smoothing noise σ."),
        n: List[int] = typer.Option([1000], "--n", help="Samples per release (repeatable; each N reuses the "
                                                        "largest's samples)."),
        n0: int = typer.Option(100, "--n0", help="Selection samples (the certificate at x, and the certify release)."),
        alpha: float = typer.Option(0.001, "--alpha", help="The releases' and the certificate's α."),
        release: List[str] = typer.Option([RELEASES[0]], "--release", help=f"{', '.join(RELEASES)} (repeatable)."),
        distances: List[float] = typer.Option([0.0, 0.1, 0.25, 0.5, 1.0], "--distance",
                                              help="Partner distance in units of σ (repeatable)."),
        radius_fractions: List[float] = typer.Option([0.5, 1.0], "--radius-fraction",
                                                     help="Partner distance as a fraction of x's certified radius "
                                                          "(repeatable)."),
        trials: int = typer.Option(1000, "--trials", help="Observations at x and at each partner (half fit the "
                                                          "distinguisher, half score it)."),
        repeat: int = typer.Option(1, "--repeat", help="Releases per observation, each with fresh noise."),
        direction: str = typer.Option(DIRECTIONS[0], "--direction", help=f"{' or '.join(DIRECTIONS)}: how partners "
                                                                         "are placed."),
        select: str = typer.Option(SELECTIONS[0], "--select", help="first: the first LIMIT inputs of the split; "
                                                                   "boundary: the LIMIT certified inputs with the "
                                                                   "smallest radius (chosen on separate noise)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the noise streams."),
        split: str = typer.Option("test", "--split", help="train, test or all."),
        limit: int = typer.Option(20, "--limit", help="Audit the first LIMIT inputs of the split."),
        batch_size: Optional[int] = BATCH,
        noise_block: Optional[int] = typer.Option(None, "--noise-block", help="Samples per noise block; must divide "
                                                  "every N. Default: gcd(1000, every N)."),
        workers: Optional[int] = WORKERS,
        address: Optional[str] = ADDRESS,
        device: Optional[str] = DEVICE,
        out: str = typer.Option("results", "--out", "-o", help="Output root; writes OUT/RUN_ID/audit.parquet."),
        run_id: Optional[str] = RUN_ID,
        quiet: bool = QUIET,
    ) -> None:
        """Empirical distinguishing advantage between x and partners x', against the sound bound."""
        from rpdist.privacy.audit import audit_spec, run_audit

        spec = audit_spec(dataset=dataset, model=model, arch=arch, train_sigma=train_sigma, sigma=sigma, n=tuple(n),
                          n0=n0, alpha=alpha, releases=tuple(release), distances=tuple(distances),
                          radius_fractions=tuple(radius_fractions), trials=trials, repeat=repeat, direction=direction, select=select,
                          seed=seed, split=split, limit=limit, batch_size=batch_size, noise_block=noise_block,
                          workers=workers, address=address, device=device, out=out, run_id=run_id)
        print_outcome(run_audit(spec, progress=not quiet), title=f"distinguishing audit of {dataset}")
